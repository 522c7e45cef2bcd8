"""Slack's platform limits and rate budgets, each with where the number comes from."""

from __future__ import annotations

from dataclasses import dataclass

# --- message size (docs.slack.dev/reference/methods/chat.postMessage, Block Kit reference) ---
MAX_TEXT = 4_000
"""Characters of ``text`` we send in one message (Slack truncates at 40,000; chat.update caps at 4,000)."""
MAX_BLOCKS = 50
"""Blocks per message (Block Kit reference: "up to 50 blocks in each message")."""
MAX_SECTION_TEXT = 3_000
"""Characters in a section block's text (Block Kit reference, section block)."""
MAX_MARKDOWN_BLOCK_TOTAL = 12_000
"""Cumulative characters of ``markdown`` blocks in one payload (Block Kit reference, markdown block)."""
MAX_BUTTON_TEXT = 75
"""Characters in a button label (Block Kit reference, button element)."""
MAX_BUTTON_VALUE = 2_000
"""Characters in a button value (Block Kit reference, button element)."""
MAX_ACTIONS_ELEMENTS = 25
"""Elements in one actions block (Block Kit reference, actions block)."""
MAX_CONTEXT_TEXT = 3_000
"""Characters in a context block text element (Block Kit reference, text object)."""
MAX_STREAM_APPEND = 12_000
"""Characters of ``markdown_text`` per chat.startStream/appendStream/stopStream call (method reference)."""
MAX_STREAM_MESSAGE = 12_000
"""Characters we put in one streamed message before rolling over into a new one. Slack documents only the
per-call limit; we keep a whole streamed message within the markdown block's 12,000 so it stays renderable."""
MAX_STATUS = 250
"""Characters we send as an assistant thread status (a one-line indicator; longer is cut with an ellipsis)."""

# --- timing ---
ACK_DEADLINE = 3.0
"""Seconds Slack waits for an Events API / Socket Mode acknowledgement (docs.slack.dev, "Acknowledge events")."""
SIGNATURE_WINDOW = 300
"""Seconds a request timestamp may differ from now (slack_sdk SignatureVerifier default; Slack docs)."""
RATE_WINDOW = 60.0
"""Slack evaluates rate limits per method and workspace over one-minute windows (Web API rate-limit docs)."""


@dataclass(frozen=True)
class Budget:
    """At most ``calls`` calls in any ``window`` seconds."""

    calls: int
    window: float = RATE_WINDOW


# Rate-limit tiers (docs.slack.dev/apis/web-api/rate-limits): "Tier 2: 20+ per minute", "Tier 3: 50+",
# "Tier 4: 100+". We budget the documented floor, so a burst of our traffic never earns a 429.
TIER_1 = Budget(1)
TIER_2 = Budget(20)
TIER_3 = Budget(50)
TIER_4 = Budget(100)
POST_MESSAGE_PER_CHANNEL = Budget(3, 3.0)
"""chat.postMessage special tier: "1 message per second per channel", short bursts allowed (method reference);
we allow a burst of 3 (a message split in parts) and keep the 1/s average."""
POST_MESSAGE_PER_WORKSPACE = Budget(300)
"""chat.postMessage's workspace-wide cap ("several hundred messages per minute", rate-limit docs)."""

METHOD_BUDGETS: dict[str, Budget] = {
    "auth.test": TIER_4,  # method reference: Special/Tier 4
    "chat.postMessage": POST_MESSAGE_PER_WORKSPACE,
    "chat.update": TIER_3,  # method reference: Tier 3
    "chat.delete": TIER_3,  # method reference: Tier 3
    "chat.startStream": TIER_2,  # peers.md: start/stop Tier 2 (secondary source)
    "chat.appendStream": TIER_4,  # method reference: Tier 4
    "chat.stopStream": TIER_2,  # peers.md: start/stop Tier 2 (secondary source)
    "assistant.threads.setStatus": TIER_3,  # method reference: Tier 3
    "files.getUploadURLExternal": TIER_4,  # method reference: Tier 4
    "files.completeUploadExternal": TIER_4,  # method reference: Tier 4
    "users.info": TIER_4,  # method reference: Tier 4
}
PER_CHANNEL_BUDGETS: dict[str, Budget] = {"chat.postMessage": POST_MESSAGE_PER_CHANNEL}
