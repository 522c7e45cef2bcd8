"""The app's chats as a channel shows them: which named ``@app.message`` handlers exist and
what a picker calls them (the widget's handler list, REST's ``agent_id``)."""

from __future__ import annotations

from typing import Any, Protocol


class MessageSpecs(Protocol):
    name: str
    message_specs: dict[str | None, Any]


class ChatCatalog:
    def __init__(self, app: MessageSpecs) -> None:
        self._app = app

    @property
    def app_name(self) -> str:
        return self._app.name

    def has(self, name: str | None) -> bool:
        """Whether a message handler is registered under ``name`` (``None``: the unnamed one)."""
        return name in self._app.message_specs

    def names(self) -> list[str | None]:
        """The names of the message handlers (``None``: the unnamed one)."""
        return list(self._app.message_specs)

    def labels(self) -> dict[str | None, str | None]:
        """Handler name -> the label it was registered with (``None`` when it has none)."""
        return {name: spec.label for name, spec in self._app.message_specs.items()}
