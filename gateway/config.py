"""Typed settings: ``chatgate.toml`` plus the environment (pydantic-settings).

Precedence, highest first: values passed in code, ``CHATGATE_<SECTION>__<KEY>`` variables, the
conventional variables (``DATABASE_URL``, ``REDIS_URL``, ``PORT``, ``TELEGRAM_BOT_TOKEN``,
``SLACK_BOT_TOKEN``, ``SLACK_SIGNING_SECRET``, ``SLACK_APP_TOKEN``), the TOML file, defaults.
Every option is documented in ``config.example.toml``; a bad value raises :class:`ConfigError`
with one line naming the key.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import typing
import zoneinfo
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
    TomlConfigSettingsSource,
)

DEFAULT_CONFIG_FILE = "chatgate.toml"


class ConfigError(Exception):
    """A configuration value is missing or invalid. The message is one line for a person."""


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def _http_url(url: str) -> str:
    scheme, _, rest = url.partition("://")
    if scheme not in ("http", "https") or not rest.strip("/"):
        raise ValueError("use an absolute http:// or https:// URL")
    return url


def _route_path(path: str) -> str:
    if not path.startswith("/") or any(c.isspace() for c in path):
        raise ValueError("use a path starting with '/', without spaces")
    return path


class ServerSettings(Section):
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    public_url: str | None = None
    """The URL users reach the gateway at (links in Telegram/Slack, OAuth callbacks)."""
    max_request_bytes: int = Field(1 << 20, ge=1024)

    @field_validator("public_url")
    @classmethod
    def _absolute_url(cls, url: str | None) -> str | None:
        """Links sent to Telegram/Slack and OAuth callbacks need a scheme and a host."""
        if not url:
            return None
        scheme, _, rest = url.partition("://")
        if scheme not in ("http", "https") or not rest.strip("/"):
            raise ValueError("use an absolute http:// or https:// URL, e.g. https://bot.example.com")
        return url

    def base_url(self) -> str:
        if self.public_url:
            return self.public_url.rstrip("/")
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::", "") else self.host
        return f"http://{host}:{self.port}"


class DatabaseSettings(Section):
    url: str = "sqlite+aiosqlite:///chatgate-data/chatgate.db"
    echo: bool = False
    pool_size: int = Field(10, ge=1)

    @field_validator("url")
    @classmethod
    def _async_driver(cls, url: str) -> str:
        """Accept the conventional URL forms and pick the async driver chatgate uses."""
        for prefix, replacement in (
            ("postgres://", "postgresql+asyncpg://"),
            ("postgresql://", "postgresql+asyncpg://"),
            ("sqlite:///", "sqlite+aiosqlite:///"),
        ):
            if url.startswith(prefix):
                return replacement + url[len(prefix) :]
        if not url.startswith(("sqlite+aiosqlite://", "postgresql+asyncpg://")):
            raise ValueError("use a sqlite:/// or postgresql:// URL")
        return url


class RedisSettings(Section):
    url: str | None = None
    key_prefix: str = Field("chatgate", min_length=1)
    """Prefix of chatgate's keys in Redis (the shared platform budgets); apps that share one Redis
    and must not share budgets use different prefixes."""

    @field_validator("url")
    @classmethod
    def _redis_scheme(cls, url: str | None) -> str | None:
        if not url:
            return None
        if not url.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("use a redis://, rediss:// or unix:// URL")
        return url


class DispatchSettings(Section):
    max_concurrent_sessions: int = Field(64, ge=1)
    handler_timeout: float = Field(600.0, ge=0)
    """Seconds a handler may run (0: no limit). Time spent waiting on a prompt counts too."""
    dedup_retention_hours: float = Field(24.0, gt=0)
    error_message: str = "Sorry, something went wrong on our side. Please try again."
    timeout_message: str = "Sorry, that took too long. Please try again."
    history_limit: int = Field(50, ge=0)


class FileSettings(Section):
    dir: str = "chatgate-data/files"
    max_upload_bytes: int = Field(20 * 1024 * 1024, ge=1)
    accepted_types: list[str] = Field(default_factory=lambda: ["*/*"])
    url_ttl_seconds: int = Field(7 * 24 * 3600, ge=60)


class WebSettings(Section):
    enabled: bool = True
    api_keys: list[str] = Field(default_factory=list)
    """Keys accepted in ``X-API-Key`` by the REST API; empty means the REST API is closed."""
    identity_secret: str | None = None
    """Shared secret a host site signs widget identity tokens with (HS256)."""
    title: str = "chatgate"
    accent_color: str = "#4f46e5"
    allowed_origins: list[str] = Field(default_factory=list)
    send_timeout: float = Field(25.0, gt=0)
    """Seconds ``send_message`` waits for the reply before answering with the user message."""
    dedup_window: float = Field(10.0, ge=0)
    """Seconds after a REST turn ends during which the same content re-POSTed is not run again."""
    max_frame_bytes: int = Field(64 * 1024, ge=1024)
    """Largest WebSocket frame accepted; larger gets a ``too_large`` error frame."""
    stream_interval: float = Field(0.05, ge=0)
    """Least seconds between two streamed frames sent to a browser or SSE client."""


class TelegramSettings(Section):
    bot_token: str | None = None
    mode: Literal["polling", "webhook"] = "polling"
    api_url: str = "https://api.telegram.org"
    webhook_path: str = "/telegram/webhook"
    webhook_secret: str | None = None
    group_trigger: Literal["mention", "all"] = "mention"
    edited_messages: Literal["ignore", "as_new"] = "ignore"
    private_edit_interval: float = Field(1.1, ge=0.1)
    group_edit_interval: float = Field(3.1, ge=0.1)
    draft_interval: float = Field(0.25, ge=0.05)
    global_rate: float = Field(30.0, gt=0)
    use_drafts: bool = True
    rich_messages: bool = True
    """Send replies with ``sendRichMessage`` (Bot API 10.1) where the server has it, else HTML."""
    chat_interval: float = Field(1.0, gt=0)
    """Seconds between messages (sends and edits) to one chat; Telegram allows about one a second."""
    group_messages_per_minute: int = Field(20, ge=1)
    poll_timeout: int = Field(25, ge=0)
    retry_attempts: int = Field(5, ge=1)
    retry_backoff: float = Field(0.5, gt=0)
    rate_scale: float = Field(1.0, gt=0)
    """Multiplies every pacing interval and ``retry_after`` pause; 1.0 against Telegram (tests shrink it)."""

    @field_validator("api_url")
    @classmethod
    def _api_url(cls, url: str) -> str:
        return _http_url(url)

    @field_validator("webhook_path")
    @classmethod
    def _webhook_path(cls, path: str) -> str:
        return _route_path(path)


class SlackSettings(Section):
    bot_token: str | None = None
    signing_secret: str | None = None
    app_token: str | None = None
    mode: Literal["events", "socket"] = "events"
    api_url: str = "https://slack.com/api/"
    events_path: str = "/slack/events"
    slash_command: str = "/chatgate"
    dm_sessions: Literal["per_dm", "per_thread"] = "per_thread"
    update_interval: float = Field(1.0, ge=0.1)

    @field_validator("api_url")
    @classmethod
    def _api_url(cls, url: str) -> str:
        return _http_url(url)

    @field_validator("events_path")
    @classmethod
    def _events_path(cls, path: str) -> str:
        return _route_path(path)

    @field_validator("slash_command")
    @classmethod
    def _slash_command(cls, command: str) -> str:
        if not command.startswith("/") or len(command) < 2 or any(c.isspace() for c in command):
            raise ValueError("a slash command is '/' and a name, e.g. /chatgate")
        return command


class SchedulerSettings(Section):
    enabled: bool = True
    """Run ``@app.schedule`` jobs (in the one elected process). Tasks run either way."""
    timezone: str = "UTC"

    @field_validator("timezone")
    @classmethod
    def _known_timezone(cls, name: str) -> str:
        try:
            zoneinfo.ZoneInfo(name)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise ValueError("not a time zone name; use an IANA name such as UTC or Europe/Berlin") from None
        return name

    misfire_grace_seconds: int = Field(60, ge=1)
    coalesce: bool = True
    owner_id: str = "owner"
    """The user id of the synthetic session schedules and session-less tasks run as."""
    leader_lease_seconds: float = Field(15.0, gt=0)
    """How long the scheduler leader's lease lasts; a standby takes over this long after a crash."""
    task_concurrency: int = Field(16, ge=1)
    task_poll_seconds: float = Field(1.0, gt=0)
    """How often a worker looks for tasks submitted by other processes or due later."""
    task_backoff_initial: float = Field(1.0, ge=0)
    task_backoff_max: float = Field(60.0, ge=0)
    task_backoff_jitter: float = Field(1.0, ge=0)
    broadcast_concurrency: int = Field(16, ge=1)
    """Sessions a broadcast sends to at once (each channel's pacer still paces per chat)."""


class IntegrationSettings(Section):
    encryption_key: str | None = None
    """Fernet key(s) encrypting stored credentials; ``chatgate integrations key`` makes one.
    Comma-separated keys rotate: the first encrypts, every one decrypts."""
    providers: dict[str, dict[str, Any]] = Field(default_factory=dict)
    state_ttl_seconds: float = Field(1800.0, gt=0)
    """How long a connect link (its signed ``state``) stays usable."""
    refresh_margin_seconds: float = Field(300.0, ge=0)
    """Refresh an OAuth token when it expires within this many seconds."""
    http_timeout: float = Field(10.0, gt=0)
    """Seconds to wait for a provider's token or revocation endpoint."""


class LoggingSettings(Section):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    format: Literal["text", "json"] = "text"


class ConventionalEnvSource(PydanticBaseSettingsSource):
    """The variables every platform-as-a-service sets, mapped onto chatgate's sections."""

    MAPPING = {
        "DATABASE_URL": ("database", "url"),
        "REDIS_URL": ("redis", "url"),
        "PORT": ("server", "port"),
        "TELEGRAM_BOT_TOKEN": ("telegram", "bot_token"),
        "SLACK_BOT_TOKEN": ("slack", "bot_token"),
        "SLACK_SIGNING_SECRET": ("slack", "signing_secret"),
        "SLACK_APP_TOKEN": ("slack", "app_token"),
    }

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        out: dict[str, dict[str, Any]] = {}
        for var, (section, key) in self.MAPPING.items():
            value = os.environ.get(var)
            if value:
                out.setdefault(section, {})[key] = value
        return out


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="CHATGATE_",
        env_nested_delimiter="__",
        extra="forbid",
        toml_file=None,
    )

    data_dir: str = "chatgate-data"
    secret_key: str | None = None
    """Signs cookies, file URLs and OAuth state. Generated into ``data_dir`` when unset."""
    server: ServerSettings = Field(default_factory=ServerSettings)
    database: DatabaseSettings = Field(default_factory=DatabaseSettings)
    redis: RedisSettings = Field(default_factory=RedisSettings)
    dispatch: DispatchSettings = Field(default_factory=DispatchSettings)
    files: FileSettings = Field(default_factory=FileSettings)
    web: WebSettings = Field(default_factory=WebSettings)
    telegram: TelegramSettings = Field(default_factory=TelegramSettings)
    slack: SlackSettings = Field(default_factory=SlackSettings)
    scheduler: SchedulerSettings = Field(default_factory=SchedulerSettings)
    integrations: IntegrationSettings = Field(default_factory=IntegrationSettings)
    logging: LoggingSettings = Field(default_factory=LoggingSettings)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [
            init_settings,
            env_settings,
            ConventionalEnvSource(settings_cls),
        ]
        if settings_cls.model_config.get("toml_file"):
            sources.append(TomlConfigSettingsSource(settings_cls))
        return tuple(sources)

    def resolved_secret_key(self) -> str:
        """The configured secret, or one generated once and kept in ``data_dir``."""
        if self.secret_key:
            return self.secret_key
        path = Path(self.data_dir) / "secret.key"
        if path.exists():
            return path.read_text().strip()
        path.parent.mkdir(parents=True, exist_ok=True)
        key = secrets.token_urlsafe(32)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(key)
        return key


def _describe(error: dict[str, Any]) -> str:
    key = ".".join(str(part) for part in error["loc"])
    env = "CHATGATE_" + "__".join(str(p).upper() for p in error["loc"])
    message = error["msg"]
    if error["type"] == "extra_forbidden":
        return f"config error: unknown option {key!r}; see config.example.toml for the options"
    value = error.get("input")
    shown = "" if isinstance(value, dict) else f" (got {value!r})"
    where = f"chatgate.toml or {env}"
    conventional = next((var for var, loc in ConventionalEnvSource.MAPPING.items()
                         if loc == tuple(error["loc"]) and os.environ.get(var)), None)
    if conventional:
        where = f"chatgate.toml, {env} or {conventional}"
    return f"config error: {key}: {message}{shown}; fix it in {where}"


def _describe_env_parse_error(exc: SettingsError) -> str:
    """pydantic-settings reads list, table and section variables as JSON; name the variable
    that is not (its value is not repeated: it may be a secret)."""
    match = re.search(r'field "([^"]+)"', str(exc))
    field = match.group(1) if match else ""
    prefix = f"CHATGATE_{field}".upper()
    for var in sorted(os.environ):
        name = var.upper()
        if not (name == prefix or name.startswith(prefix + "__")):
            continue
        path = [part.lower() for part in name[len("CHATGATE_"):].split("__")]
        annotation = _annotation_at(path)
        if annotation is None or not _is_structured(annotation):
            continue
        try:
            json.loads(os.environ[var])
        except ValueError:
            shape = "a JSON object" if _is_mapping(annotation) else 'a JSON list, e.g. ["a", "b"]'
            return f"config error: {'.'.join(path)}: {var} must be {shape}; fix it in the environment"
    return f"config error: cannot read the environment settings for {field or 'a section'}: {exc}"


def _annotation_at(path: list[str]) -> Any:
    model: Any = Settings
    annotation: Any = None
    for part in path:
        fields = getattr(model, "model_fields", None)
        if not fields or part not in fields:
            return annotation if _is_mapping(annotation) else None
        annotation = fields[part].annotation
        model = annotation
    return annotation


def _is_structured(annotation: Any) -> bool:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return True
    return typing.get_origin(annotation) in (list, dict, set, tuple)


def _is_mapping(annotation: Any) -> bool:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return True
    return typing.get_origin(annotation) is dict


def load_settings(config_file: str | None = None, **overrides: Any) -> Settings:
    """Load settings from ``config_file`` (default ``chatgate.toml`` when it exists) and the env.

    Raises :class:`ConfigError` with one line naming the first bad key.
    """
    path = config_file
    if path is None and os.path.exists(DEFAULT_CONFIG_FILE):
        path = DEFAULT_CONFIG_FILE
    if path is not None and not os.path.exists(path):
        raise ConfigError(f"config error: config file {path!r} does not exist")
    if path is not None and not os.path.isfile(path):  # pydantic-settings would skip it silently
        raise ConfigError(f"config error: config file {path!r} is not a file")
    settings_cls = Settings
    if path is not None:
        settings_cls = type("FileSettings", (Settings,), {"model_config": {**Settings.model_config, "toml_file": path}})
    try:
        return settings_cls(**overrides)
    except ValidationError as exc:
        raise ConfigError(_describe(exc.errors()[0])) from None
    except SettingsError as exc:  # an environment variable that is not the JSON its option needs
        raise ConfigError(_describe_env_parse_error(exc)) from None
    except (ValueError, OSError) as exc:  # TOML syntax errors arrive as ValueError subclasses
        raise ConfigError(f"config error: {path}: {exc}") from None
