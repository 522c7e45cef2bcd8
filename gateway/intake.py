"""Intake: an adapter's inbound event -> its session and user -> the dispatcher's inbox.

``Intake.submit`` is what ``GatewayContext.submit`` does for every adapter: find (or make) the
session the event belongs to, resolve the platform user once (the turn reuses it), bind the
attachments to their adapter (a prompt's answer skips the turn, so it happens here too), and
record the event durably. It returns once the event is safe to acknowledge.
"""

from __future__ import annotations

from collections.abc import Callable

from gateway.dispatch import Dispatcher
from gateway.inbound import Accepted, Inbound
from gateway.store import Store
from gateway.types import Attachment, UserInfo

ResolveAttachment = Callable[[str, Attachment], Attachment]


class Intake:
    def __init__(self, store: Store, dispatcher: Dispatcher, resolve_attachment: ResolveAttachment) -> None:
        self._store = store
        self._dispatcher = dispatcher
        self._resolve_attachment = resolve_attachment

    async def submit(self, inbound: Inbound) -> Accepted:
        sender: UserInfo | None = None
        if inbound.session_id:
            session_id = inbound.session_id  # its existence is checked as the event is recorded
        else:
            sender = await self._store.users.resolve(inbound.user)
            session_id = (await self._store.sessions.for_address(inbound.channel, sender)).id
        message = inbound.message
        if message is not None and message.attachments:
            channel_type = message.channel_type or inbound.channel.type
            message.attachments = [self._resolve_attachment(channel_type, a) for a in message.attachments]
        return await self._dispatcher.submit(inbound, session_id, sender=sender)
