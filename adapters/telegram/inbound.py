"""Telegram updates → chatgate ``Inbound`` events (pure functions of the update and a few settings).

One session per chat, one per topic in forum supergroups: the address is
``SessionChannel("telegram", chat_id, thread_id)`` with ``thread_id`` set only for forum topics.
Groups hear the bot when it is mentioned, replied to or given a command (``group_trigger =
"mention"``), or always (``"all"``); a chat where a file prompt is waiting also hands the bot
its next document or photo. Button presses carry ``"<block_id>|<value>"`` as ``callback_data``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from aiogram.types import CallbackQuery, Message, Update, User

from adapters.base import ButtonPress, Inbound, PlatformUser
from gateway.types import Attachment, SessionChannel
from gateway.types import Message as ChatMessage

CHANNEL_TYPE = "telegram"
FILE_URL_PREFIX = "telegram-file:"
CALLBACK_SEPARATOR = "|"
ALLOWED_UPDATES = ["message", "edited_message", "callback_query", "stopped_message_generation"]


@dataclass(frozen=True)
class BotIdentity:
    id: int
    username: str


@dataclass(frozen=True)
class UpdatePolicy:
    group_trigger: Literal["mention", "all"] = "mention"
    edited_messages: Literal["ignore", "as_new"] = "ignore"


@dataclass
class Converted:
    """What an update means: an inbound event, and a callback query to answer once it is stored."""

    inbound: Inbound | None
    callback_query_id: str | None = None
    callback_text: str | None = None


def dedup_key(bot: BotIdentity, update_id: int) -> str:
    return f"tg:{bot.id}:{update_id}"


def channel_for(message: Message) -> SessionChannel:
    thread = message.message_thread_id if message.is_topic_message else None
    return SessionChannel(CHANNEL_TYPE, chat_id=str(message.chat.id), thread_id=None if thread is None else str(thread))


def platform_user(user: User) -> PlatformUser:
    return PlatformUser(CHANNEL_TYPE, str(user.id), name=user.full_name or user.username)


# Media kinds besides photos: (Message attribute, default name prefix and suffix, default type).
MEDIA_KINDS = (
    ("document", "document_", "", "application/octet-stream"),
    ("voice", "voice_", ".ogg", "audio/ogg"),
    ("audio", "audio_", ".mp3", "audio/mpeg"),
    ("video", "video_", ".mp4", "video/mp4"),
)


def attachments_of(message: Message) -> list[Attachment]:
    """Photos (the largest size), documents, voice, audio and video, downloadable via ``getFile``."""
    found: list[Attachment] = []
    if message.photo:
        largest = max(message.photo, key=lambda p: (p.width * p.height, p.file_size or 0))
        name = f"photo_{largest.file_unique_id}.jpg"
        found.append(Attachment(name, "image/jpeg", FILE_URL_PREFIX + largest.file_id, largest.file_size or 0))
    for attribute, prefix, suffix, default_type in MEDIA_KINDS:
        media = getattr(message, attribute)
        if media is None:
            continue
        name = getattr(media, "file_name", None) or f"{prefix}{media.file_unique_id}{suffix}"
        content_type = media.mime_type or default_type
        found.append(Attachment(name, content_type, FILE_URL_PREFIX + media.file_id, media.file_size or 0))
    return found


def _addressed(message: Message, bot: BotIdentity) -> bool:
    """In a group: does this message speak to the bot (mention, reply, command)?"""
    reply = message.reply_to_message
    # in a forum topic every message "replies" to the topic's creation message, the bot's own
    # when the bot opened the topic: that is not a reply to the bot
    topic_root = reply is not None and message.is_topic_message and reply.message_id == message.message_thread_id
    if reply is not None and not topic_root and reply.from_user is not None and reply.from_user.id == bot.id:
        return True
    text = message.text or message.caption or ""
    mention = f"@{bot.username}".lower()
    for entity in (message.entities or []) + (message.caption_entities or []):
        fragment = entity.extract_from(text)
        if entity.type == "mention" and fragment.lower() == mention:
            return True
        if entity.type == "text_mention" and entity.user is not None and entity.user.id == bot.id:
            return True
        if entity.type == "bot_command" and entity.offset == 0:
            _, _, target = fragment.partition("@")
            if not target or target.lower() == bot.username.lower():
                return True
    # no entities (some clients, forwarded text): the mention as a whole word, not @botname2
    return re.search(rf"(?<![\w@]){re.escape(mention)}(?!\w)", text, re.IGNORECASE) is not None


def _clean_text(text: str, bot: BotIdentity) -> str:
    """Drop the bot's @mention and a command's ``@botname`` suffix: the handler sees what was said."""
    cleaned = re.sub(rf"@{re.escape(bot.username)}\b", "", text, flags=re.IGNORECASE)
    return re.sub(r"[ \t]{2,}", " ", cleaned).strip()


def convert_message(
    update_id: int, message: Message, bot: BotIdentity, policy: UpdatePolicy, *, awaiting_file: bool = False
) -> Inbound | None:
    if message.from_user is None or message.from_user.is_bot:
        return None
    attachments = attachments_of(message)
    text = message.text or message.caption or ""
    if not text and not attachments:
        return None  # service messages, stickers, polls...: nothing a handler reads
    if message.chat.type != "private" and policy.group_trigger == "mention":
        if not (_addressed(message, bot) or (awaiting_file and attachments)):
            return None
    if message.chat.type != "private":
        text = _clean_text(text, bot)
    return Inbound(
        kind="message",
        dedup_key=dedup_key(bot, update_id),
        channel=channel_for(message),
        user=platform_user(message.from_user),
        message=ChatMessage(
            text=text,
            sender="user",
            channel_type=CHANNEL_TYPE,
            timestamp=message.date.timestamp(),
            attachments=attachments or None,
        ),
        platform_ref=str(message.message_id),
    )


def convert_callback(update_id: int, query: CallbackQuery, bot: BotIdentity) -> Converted:
    message = query.message
    if not isinstance(message, Message) or not query.data or CALLBACK_SEPARATOR not in query.data:
        return Converted(None, query.id, "This button is no longer available.")
    block_id, _, value = query.data.partition(CALLBACK_SEPARATOR)
    if not block_id or not value:
        return Converted(None, query.id, "This button is no longer available.")
    inbound = Inbound(
        kind="button",
        dedup_key=dedup_key(bot, update_id),
        channel=channel_for(message),
        user=platform_user(query.from_user),
        button=ButtonPress(block_id, value),
        platform_ref=str(message.message_id),
    )
    return Converted(inbound, query.id)


def convert(
    update: Update, bot: BotIdentity, policy: UpdatePolicy, *, awaiting_file: set[tuple[str, str | None]]
) -> Converted:
    """The one entry point: any update → what to submit (``inbound`` may be ``None``: ignore it)."""
    message = update.message
    if message is None and update.edited_message is not None and policy.edited_messages == "as_new":
        message = update.edited_message
    if message is not None:
        channel = channel_for(message)
        waiting = (channel.chat_id or "", channel.thread_id) in awaiting_file
        return Converted(convert_message(update.update_id, message, bot, policy, awaiting_file=waiting))
    if update.callback_query is not None:
        return convert_callback(update.update_id, update.callback_query, bot)
    stopped = update.stopped_message_generation
    if stopped is not None:
        thread = stopped.message_thread_id
        channel = SessionChannel(
            CHANNEL_TYPE,
            chat_id=str(stopped.chat.id),
            thread_id=None if thread is None or not stopped.chat.is_forum else str(thread),
        )
        return Converted(
            Inbound(
                kind="stop",
                dedup_key=dedup_key(bot, update.update_id),
                channel=channel,
                # a draft's stop button exists only in private chats, whose id is the user's id
                user=PlatformUser(CHANNEL_TYPE, str(stopped.chat.id), name=stopped.chat.full_name),
                payload={"draft_id": stopped.draft_id},
            )
        )
    return Converted(None)
