"""linechat: a chatgate channel over plain TCP, one JSON object per line (see ``adapter.py``).

This module is the ``chatgate.adapters`` entry point. It imports no more than the settings model,
so a gateway where linechat is off never imports the adapter itself.
"""

from __future__ import annotations

from adapters.base import AdapterSpec
from chatgate_linechat.settings import LineChatSettings

spec = AdapterSpec(
    name="linechat",
    adapter="chatgate_linechat.adapter:LineChatAdapter",
    settings=LineChatSettings,
    environment={"LINECHAT_PORT": "port"},
    enabled=lambda settings: settings.linechat.port is not None,
    off_hint="set LINECHAT_PORT or [linechat] port to enable",
)
