"""Typed settings: ``chatgate.toml`` plus the environment (pydantic-settings).

Precedence, highest first: values passed in code, ``CHATGATE_<SECTION>__<KEY>`` variables, the
conventional variables (``DATABASE_URL``, ``REDIS_URL``, ``PORT``, and those adapters declare, such
as ``TELEGRAM_BOT_TOKEN``), the TOML file, defaults. Every option is documented in
``config.example.toml``; a bad value raises :class:`ConfigError` with one line naming the key.

:class:`Settings` holds the core's sections. Each installed adapter (:mod:`gateway.plugins`) adds
its own section under its name, so :func:`load_settings` returns an instance of
:func:`settings_class`, a subclass with ``settings.telegram``, ``settings.slack``... as fields.
"""

from __future__ import annotations

import functools
import json
import os
import re
import secrets
import typing
import zoneinfo
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
    TomlConfigSettingsSource,
)

from gateway.plugins import OWN_DISTRIBUTION, Discovery, discover

DEFAULT_CONFIG_FILE = "chatgate.toml"
MIN_SECRET_KEY_BYTES = 32
"""HMAC keys shorter than the hash's output weaken it (RFC 2104 §3); SHA-256 gives 32 bytes."""
SECRET_OPTIONS = ("secret", "key", "token", "password")
"""Options whose values an error message never repeats."""


class ConfigError(Exception):
    """A configuration value is missing or invalid. The message is one line for a person."""


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def absolute_http_url(url: str) -> str:
    """A field validator's check: an absolute http(s) URL (the API URLs of platforms)."""
    scheme, _, rest = url.partition("://")
    if scheme not in ("http", "https") or not rest.strip("/"):
        raise ValueError("use an absolute http:// or https:// URL")
    return url


def route_path(path: str) -> str:
    """A field validator's check: a path on the gateway's HTTP server (webhooks)."""
    if not path.startswith("/") or any(c.isspace() for c in path):
        raise ValueError("use a path starting with '/', without spaces")
    return path


class ServerSettings(Section):
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    public_url: str | None = None
    """The URL users reach the gateway at (links in Telegram/Slack, OAuth callbacks)."""
    max_request_bytes: int = Field(1 << 20, ge=1024)
    header_timeout: float = Field(15.0, ge=0)
    """Seconds a client has to send a request's line and headers (0: no limit); then 408, closed."""
    body_timeout: float = Field(30.0, ge=0)
    """Longest pause, in seconds, while a client sends a request body (0: no limit); then 408."""
    keepalive_timeout: float = Field(75.0, ge=0)
    """Seconds an idle kept-alive HTTP connection stays open."""
    max_connections_per_ip: int = Field(256, ge=0)
    """Open connections (sockets included) one client address may hold (0: no cap); more get 429.
    Behind a reverse proxy every connection comes from the proxy: raise it, or 0 and cap there."""
    max_header_line_bytes: int = Field(8190, ge=1024)
    """Longest request line or header line; longer gets a JSON 400."""
    metrics_token: str | None = None
    """Bearer token ``/metrics`` asks for. Unset: it answers direct loopback requests only."""
    probe_timeout: float = Field(2.0, gt=0, le=60)
    """Seconds each ``/readyz`` check (and the ``/metrics`` inbox query) may take."""
    event_loop: Literal["auto", "uvloop", "asyncio"] = "auto"
    """``chatgate run``'s event loop: ``auto`` is uvloop when installed (``chatgate[fast]``)."""

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
    sqlite_writes: Literal["loop", "thread"] = "loop"
    """Where SQLite's write transactions run: on the event loop (fastest, for a local disk) or on
    a thread of their own (for a disk whose writes can take milliseconds: a network file system)."""

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
    """Prefix of chatgate's names in Redis: the bus's channels and the shared platform budgets'
    keys. Deployments that share one Redis server use different prefixes (pub/sub channels ignore
    the database number); a deployment's web and worker processes use the same one."""

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
    history_prefetch: Literal["auto", "always"] = "auto"
    """PostgreSQL: ``auto`` fetches a turn's history before its handler runs while handlers read
    it, and stops after 200 turns in a row that did not (the next handler to read it holds the
    event loop up for one round trip); ``always`` fetches it for every turn."""
    lease_ttl: float = Field(15.0, gt=0)
    """``chatgate worker``: seconds a worker's hold on a session lasts unless renewed (every
    ttl/3). A killed worker's sessions run on another worker at most this long after it died."""


class WorkerSettings(Section):
    """``chatgate worker``: its small HTTP port and how it stops."""

    port: int = Field(8001, ge=0, le=65535)
    """Where the worker serves ``/healthz``, ``/readyz`` and ``/metrics`` (on ``server.host``)."""
    shutdown_grace: float = Field(30.0, ge=0)
    """Seconds running handlers get to finish after SIGTERM; then they are cancelled, and every
    session lease is released so other workers run what is left at once."""


class FileSettings(Section):
    dir: str = "chatgate-data/files"
    max_upload_bytes: int = Field(20 * 1024 * 1024, ge=1)
    accepted_types: list[str] = Field(default_factory=lambda: ["*/*"])
    url_ttl_seconds: int = Field(7 * 24 * 3600, ge=60)


RATE_EXAMPLE = "30/minute"


def _rate(value: Any) -> Any:
    """A rate in the `limits` library's notation ("30/minute", "10 per hour", "1000/day");
    "" or 0 turns the limit off, as 0 does for the counts beside it. Anything else that is not
    text is left to the field's own type check."""
    if value == 0 and type(value) is int:
        return ""
    if not isinstance(value, str):
        return value
    value = value.strip()
    if value in ("", "0"):
        return ""
    from limits import parse  # imported here: the core's settings stay light to load

    try:
        parse(value)
    except ValueError:
        raise ValueError(f'use a rate such as "{RATE_EXAMPLE}" or "100/hour" (or "" or 0 for no limit)') from None
    return value


class WebLimits(Section):
    """What one client IP and one widget identity (a visitor or a host-site user) may use.

    Rates are moving windows ("30/minute"); counts are how many at once; 0 or "" turns one off.
    Exceeding one answers HTTP 429 with ``Retry-After`` or a ``rate_limited`` error frame.
    """

    sockets_per_ip: int = Field(40, ge=0)
    """Widget sockets open at once from one IP (offices and phone carriers share IPs)."""
    sockets_per_visitor: int = Field(8, ge=0)
    """Widget sockets open at once for one visitor (one per tab)."""
    new_sessions_per_ip: str = "60/hour"
    new_sessions_per_visitor: str = "20/hour"
    messages_per_ip: str = "120/minute"
    """Message, button and action frames from one IP."""
    messages_per_visitor: str = "30/minute"
    upload_bytes_per_ip: str = "500000000/hour"
    """Bytes of uploaded files from one IP (a moving window, counted as they arrive)."""
    upload_bytes_per_visitor: str = "200000000/hour"
    uploads_per_ip: int = Field(6, ge=0)
    """Uploads in progress at once from one IP."""
    uploads_per_visitor: int = Field(3, ge=0)

    @field_validator(
        "new_sessions_per_ip",
        "new_sessions_per_visitor",
        "messages_per_ip",
        "messages_per_visitor",
        "upload_bytes_per_ip",
        "upload_bytes_per_visitor",
        mode="before",
    )
    @classmethod
    def _valid_rate(cls, value: Any) -> Any:
        return _rate(value)


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
    socket_compression: bool = False
    """Accept a browser's offer of ``permessage-deflate`` on the widget socket. Off by default:
    every browser makes the offer, and zlib's state, kept for the socket's life, costs about
    110 KiB per open socket (an idle one is otherwise about 15 KiB), for frames that are mostly a
    few hundred bytes."""
    stream_interval: float = Field(0.05, ge=0)
    """Least seconds between two streamed frames sent to a browser or SSE client."""
    frame_ancestors: list[str] = Field(default_factory=list)
    """Sites that may show the full-page chat (``/``) in a frame (CSP ``frame-ancestors``), e.g.
    ``["https://shop.example.com"]``; empty: only the gateway's own pages."""
    visitor_ttl_seconds: int = Field(30 * 24 * 3600, ge=3600)
    """How long an anonymous visitor token (cookie or ``?visitor=``) stays valid unused; a token
    in use is renewed (re-issued) once it is older than a tenth of this."""
    legacy_visitor_tokens: bool = True
    """Accept visitor tokens issued before they carried a time (chatgate before expiring tokens),
    replacing each with an expiring one on first use. Turn off once visitors have come back."""
    identity_token_max_lifetime: int = Field(24 * 3600, ge=60)
    """Seconds ahead a host identity token's ``exp`` may lie; a token valid for longer is refused."""
    client_ip_header: str | None = None
    """Header a reverse proxy puts the client's address in (``X-Forwarded-For``, ``X-Real-IP``);
    its last address is the client IP the limits count. Unset: the TCP peer's address."""
    limits: WebLimits = Field(default_factory=WebLimits)

    @field_validator("frame_ancestors")
    @classmethod
    def _frame_sources(cls, sources: list[str]) -> list[str]:
        for source in sources:
            if source == "'self'":
                continue
            scheme, sep, host = source.partition("://")
            if (not sep or scheme not in ("http", "https") or not host.strip("/")
                    or any(c.isspace() or c in ";,'\"" for c in source)):
                raise ValueError(
                    f"{source!r} is not a frame source: use origins such as \"https://shop.example.com\" "
                    "(\"https://*.example.com\" for subdomains) or \"'self'\""
                )
        return sources


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
    """The variables every platform-as-a-service sets (and those adapters declare), mapped onto
    chatgate's sections: ``Settings.conventional_env``."""

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        out: dict[str, dict[str, Any]] = {}
        for var, (section, key) in _conventional_env(self.settings_cls).items():
            value = os.environ.get(var)
            if value:
                out.setdefault(section, {})[key] = value
        return out


def _conventional_env(settings_cls: type[BaseSettings]) -> dict[str, tuple[str, str]]:
    return getattr(settings_cls, "conventional_env", Settings.conventional_env)


class Settings(BaseSettings):
    """The core's settings. An instance from :func:`load_settings` also has one section per
    installed adapter, by its name (``settings.telegram``): see :func:`settings_class`."""

    model_config = SettingsConfigDict(
        env_prefix="CHATGATE_",
        env_nested_delimiter="__",
        extra="forbid",
        toml_file=None,
    )

    data_dir: str = "chatgate-data"
    secret_key: str | None = None
    """Signs cookies, file URLs and OAuth state. Generated into ``data_dir`` when unset."""

    @field_validator("secret_key")
    @classmethod
    def _long_enough(cls, key: str | None) -> str | None:
        if key and len(key.encode()) < MIN_SECRET_KEY_BYTES:
            raise ValueError(
                f"is shorter than {MIN_SECRET_KEY_BYTES} bytes; use a random key, e.g. the output of "
                "python -c 'import secrets; print(secrets.token_urlsafe(32))'"
            )
        return key
    server: ServerSettings = Field(default_factory=ServerSettings)
    database: DatabaseSettings = Field(default_factory=DatabaseSettings)
    redis: RedisSettings = Field(default_factory=RedisSettings)
    dispatch: DispatchSettings = Field(default_factory=DispatchSettings)
    worker: WorkerSettings = Field(default_factory=WorkerSettings)
    files: FileSettings = Field(default_factory=FileSettings)
    web: WebSettings = Field(default_factory=WebSettings)
    scheduler: SchedulerSettings = Field(default_factory=SchedulerSettings)
    integrations: IntegrationSettings = Field(default_factory=IntegrationSettings)
    logging: LoggingSettings = Field(default_factory=LoggingSettings)

    conventional_env: ClassVar[dict[str, tuple[str, str]]] = {
        "DATABASE_URL": ("database", "url"),
        "REDIS_URL": ("redis", "url"),
        "PORT": ("server", "port"),
    }
    """Conventional variable -> (section, key); :func:`settings_class` adds the adapters' own."""

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
            key = path.read_text().strip()
            if len(key.encode()) < MIN_SECRET_KEY_BYTES:
                raise ConfigError(
                    f"config error: secret_key: {path} holds a key shorter than {MIN_SECRET_KEY_BYTES} bytes; "
                    "delete the file (a new key is generated) or set secret_key"
                )
            return key
        path.parent.mkdir(parents=True, exist_ok=True)
        key = secrets.token_urlsafe(32)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(key)
        return key


@functools.cache
def settings_class(*, distribution: str | None = None) -> type[Settings]:
    """:class:`Settings` plus one field per installed adapter with a settings model, under the
    adapter's name (``settings.telegram``), and the adapters' conventional variables.

    ``distribution`` keeps only the adapters of that package: ``settings_class(distribution=
    "chatgate")`` is every option chatgate ships, the ones ``config.example.toml`` documents.
    Raises :class:`ConfigError` when chatgate's own adapters are not registered (an install older
    than the entry points), an adapter's name is one of the core's sections, or two read the same
    conventional variable.
    """
    found = discover()
    if not any(item.distribution == OWN_DISTRIBUTION for item in found.installed):
        raise ConfigError(
            "config error: chatgate's own adapters (web, telegram, slack) are not registered in this "
            "Python environment: the installed package predates its 'chatgate.adapters' entry points; "
            "reinstall it with scripts/setup (or pip install -e .)"
        )
    if distribution is None:
        return _compose(found)
    own = Discovery(tuple(i for i in found.installed if i.distribution == distribution), ())
    return _compose(own)


def _compose(found: Discovery) -> type[Settings]:
    fields: dict[str, Any] = {}
    env = dict(Settings.conventional_env)
    for item in found.installed:
        spec = item.spec
        if spec.settings is None:
            continue
        if spec.name in Settings.model_fields or hasattr(Settings, spec.name):
            raise ConfigError(f"config error: the adapter {spec.name!r} from package {item.package} is named like "
                              f"chatgate's own [{spec.name}] section; that package must rename its entry point")
        fields[spec.name] = (spec.settings, Field(default_factory=spec.settings))
        for var, key in spec.environment.items():
            if var in env:
                raise ConfigError(f"config error: the adapter {spec.name!r} from package {item.package} reads "
                                  f"{var}, which already sets {'.'.join(env[var])}; that package must drop it")
            env[var] = (spec.name, key)
    for broken in found.broken:  # its section loads unchecked; the adapter is not started
        if broken.name not in Settings.model_fields and not hasattr(Settings, broken.name):
            fields[broken.name] = (dict[str, Any], Field(default_factory=dict))
    composed = create_model("Settings", __base__=Settings, __module__=__name__, **fields)
    composed.conventional_env = env
    return composed


def _describe(error: Mapping[str, Any], settings_cls: type[Settings]) -> str:
    key = ".".join(str(part) for part in error["loc"])
    env = "CHATGATE_" + "__".join(str(p).upper() for p in error["loc"])
    message = error["msg"]
    if error["type"] == "extra_forbidden":
        return f"config error: unknown option {key!r}; see config.example.toml for the options"
    value = error.get("input")
    secret = any(word in str(error["loc"][-1]).lower() for word in SECRET_OPTIONS)
    shown = "" if isinstance(value, dict) or secret else f" (got {value!r})"
    where = f"chatgate.toml or {env}"
    conventional = next((var for var, loc in settings_cls.conventional_env.items()
                         if loc == tuple(error["loc"]) and os.environ.get(var)), None)
    if conventional:
        where = f"chatgate.toml, {env} or {conventional}"
    return f"config error: {key}: {message}{shown}; fix it in {where}"


def _describe_env_parse_error(exc: SettingsError, settings_cls: type[Settings]) -> str:
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
        annotation = _annotation_at(path, settings_cls)
        if annotation is None or not _is_structured(annotation):
            continue
        try:
            json.loads(os.environ[var])
        except ValueError:
            shape = "a JSON object" if _is_mapping(annotation) else 'a JSON list, e.g. ["a", "b"]'
            return f"config error: {'.'.join(path)}: {var} must be {shape}; fix it in the environment"
    return f"config error: cannot read the environment settings for {field or 'a section'}: {exc}"


def _annotation_at(path: list[str], settings_cls: type[Settings]) -> Any:
    model: Any = settings_cls
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
    settings_cls = base = settings_class()
    if path is not None:
        settings_cls = type("FileSettings", (base,), {"model_config": {**base.model_config, "toml_file": path}})
    try:
        return settings_cls(**overrides)
    except ValidationError as exc:
        raise ConfigError(_describe(exc.errors()[0], base)) from None
    except SettingsError as exc:  # an environment variable that is not the JSON its option needs
        raise ConfigError(_describe_env_parse_error(exc, base)) from None
    except (ValueError, OSError) as exc:  # TOML syntax errors arrive as ValueError subclasses
        raise ConfigError(f"config error: {path}: {exc}") from None
