"""``chatgate``: run an app, chat with it in the terminal, or start a new one.

    chatgate run APP [--config FILE]     the whole gateway in one process
    chatgate web APP [--config FILE]     scaled out: HTTP and inbound traffic (PostgreSQL + Redis)
    chatgate worker APP [--config FILE]  scaled out: handlers, schedules, tasks, sending
    chatgate chat APP [--config FILE]    a terminal chat with the app
    chatgate init DIR                    a starter app and config
    chatgate integrations ...            list and revoke connected accounts

APP is ``path/to/file.py[:attr]`` or ``package.module:attr``; ``attr`` defaults to ``app``.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import importlib.util
import logging
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

from gateway import loop as event_loop
from gateway import plugins
from gateway.config import ConfigError, Settings, load_settings

EXIT_USAGE = 2
log = logging.getLogger("chatgate")


class AppLoadError(Exception):
    pass


def load_app(target: str) -> Any:
    """Import ``file.py[:attr]`` or ``module:attr`` and return the App it names."""
    from gateway.app import App

    location, _, attr = target.partition(":")
    attr = attr or "app"
    if location.endswith(".py") or os.sep in location or "/" in location:
        path = Path(location)
        if not path.exists():
            raise AppLoadError(f"no such file: {location}")
        taken = sys.modules.get(path.stem)
        taken_file = getattr(taken, "__file__", None)
        if taken is not None and (taken_file is None or Path(taken_file).resolve() != path.resolve()):
            raise AppLoadError(f"{location}: the module name {path.stem!r} is already taken "
                               f"({taken_file or 'a built-in module'}); rename the file")
        sys.path.insert(0, str(path.resolve().parent))
        spec = importlib.util.spec_from_file_location(path.stem, path)
        if spec is None or spec.loader is None:
            raise AppLoadError(f"cannot import {location}")
        module = importlib.util.module_from_spec(spec)
        sys.modules[path.stem] = module
        spec.loader.exec_module(module)
    else:
        # ``module:attr`` names a module importable from the directory chatgate runs in, as with
        # uvicorn or gunicorn (the console script's own sys.path[0] is its bin directory).
        if os.getcwd() not in sys.path and "" not in sys.path:
            sys.path.insert(0, os.getcwd())
        try:
            module = importlib.import_module(location)
        except ModuleNotFoundError as exc:
            raise AppLoadError(f"cannot import module {location!r}: {exc}") from None
    app = getattr(module, attr, None)
    if app is None:
        raise AppLoadError(f"{location} has no attribute {attr!r} (name it with {location}:<attribute>)")
    if not isinstance(app, App):
        raise AppLoadError(f"{target} is a {type(app).__name__}, not a gateway.App")
    return app


def configure_logging(settings: Settings) -> None:
    """One handler on stderr, text or JSON lines (``gateway.logs``)."""
    from gateway.logs import log_formatter

    level = getattr(logging, settings.logging.level)
    handler = logging.StreamHandler()
    handler.setFormatter(log_formatter(settings.logging.format))
    logging.basicConfig(level=level, handlers=[handler], force=True)
    for noisy in ("aiohttp.access", "apscheduler.executors.default", "alembic", *plugins.quiet_loggers()):
        logging.getLogger(noisy).setLevel(max(level, logging.WARNING))


# -- run -------------------------------------------------------------------------------------


async def _serve(app: Any, settings: Settings, role: str = "all") -> None:
    from gateway.heap import tune_collector_after_startup
    from gateway.runtime import Gateway, as_role

    started = time.perf_counter()
    gateway = Gateway(app, settings, role=as_role(role))
    await gateway.start()
    frozen = tune_collector_after_startup()
    ready = time.perf_counter() - started
    log.debug("%d objects of start-up frozen for the garbage collector (gateway.heap)", frozen)
    for line in gateway.describe():
        log.info(line)
    age = _process_age()
    since_start = f" ({age:.2f} s since the process started)" if age is not None else ""
    if role == "worker":
        log.info("worker ready in %.2f s%s; SIGTERM hands its sessions back", ready, since_start)
    else:
        log.info("ready in %.2f s%s — open %s/ to chat; Ctrl-C stops", ready, since_start, gateway.public_url)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        if role == "web":
            log.info("stopping")
        else:
            grace = settings.worker.shutdown_grace if role == "worker" else 5
            log.info("stopping: finishing running handlers (up to %g s)", grace)
        await gateway.stop()
        log.info("stopped")


def _process_age() -> float | None:
    """Seconds since this process started (interpreter and imports included), where /proc says."""
    try:
        with open("/proc/self/stat") as stat:
            start_ticks = int(stat.read().rsplit(")", 1)[1].split()[19])  # field 22, starttime
        with open("/proc/uptime") as uptime:
            return float(uptime.read().split()[0]) - start_ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def cmd_run(args: argparse.Namespace) -> int:
    settings = _settings(args)
    configure_logging(settings)
    app = load_app(args.app)
    event_loop.run(_serve(app, settings), settings.server.event_loop)
    return 0


def cmd_scaled(args: argparse.Namespace) -> int:
    """``chatgate web`` / ``chatgate worker``: refuse at once without PostgreSQL and Redis."""
    from gateway.runtime import check_scale_out

    settings = _settings(args)
    check_scale_out(settings, args.command)
    configure_logging(settings)
    app = load_app(args.app)
    event_loop.run(_serve(app, settings, args.command), settings.server.event_loop)
    return 0


def _settings(args: argparse.Namespace) -> Settings:
    overrides: dict[str, Any] = {}
    server: dict[str, Any] = {}
    if getattr(args, "host", None):
        server["host"] = args.host
    if getattr(args, "port", None) is not None:
        if getattr(args, "command", None) == "worker":
            overrides["worker"] = {"port": args.port}
        else:
            server["port"] = args.port
    if server:
        overrides["server"] = server
    if getattr(args, "database", None):
        overrides["database"] = {"url": args.database}
    settings = load_settings(args.config, **overrides)
    if overrides:  # explicit flags win over the environment too
        for section, values in overrides.items():
            for key, value in values.items():
                setattr(getattr(settings, section), key, value)
    return settings


# -- chat ------------------------------------------------------------------------------------


def cmd_chat(args: argparse.Namespace) -> int:
    from adapters.console import ConsoleAdapter, run_console
    from gateway.runtime import Gateway

    settings = _settings(args)
    settings.logging.level = "WARNING" if not args.verbose else "DEBUG"
    configure_logging(settings)
    settings.server.port = 0
    settings.web.enabled = False
    app = load_app(args.app)
    plain = True if args.plain else None  # None: rendered in a terminal, plain when piped
    console = ConsoleAdapter(settings, plain=plain)
    gateway = Gateway(app, settings, adapters=[console])
    return asyncio.run(
        run_console(gateway, console, app_name=app.name, user=args.user, conversation=args.conversation)
    )


# -- init ------------------------------------------------------------------------------------

STARTER_APP = '''"""A chatgate app. Run it: chatgate run app.py — then open http://127.0.0.1:8000/"""

import gateway

app = gateway.App("{name}")


@app.message()
async def handle(session: gateway.Session, msg: gateway.Message) -> None:
    count = session.data.get("count", 0) + 1
    session.data["count"] = count
    async with session.stream_reply() as reply:
        for word in f"You said: {{msg.text}} (message {{count}} in this conversation)".split(" "):
            reply.write(word + " ")
'''


def cmd_init(args: argparse.Namespace) -> int:
    target = Path(args.dir)
    target.mkdir(parents=True, exist_ok=True)
    app_file, config_file = target / "app.py", target / "chatgate.toml"
    for path in (app_file, config_file):
        if path.exists() and not args.force:
            print(f"chatgate init: {path} exists; use --force to overwrite", file=sys.stderr)
            return EXIT_USAGE
    app_file.write_text(STARTER_APP.format(name=target.resolve().name or "my-bot"))
    example = Path(__file__).resolve().parent.parent / "config.example.toml"
    config_file.write_text(example.read_text() if example.exists() else "# see config.example.toml\n")
    print(f"wrote {app_file} and {config_file}")
    print(f"next: cd {target} && chatgate run app.py   (or: chatgate chat app.py)")
    return 0


# -- main ------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="chatgate",
        description="A self-hosted multi-channel bot gateway: one handler for web, Telegram and Slack.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True

    run = commands.add_parser("run", help="run the gateway (web widget, Telegram, Slack) in one process",
                              description="Run the whole gateway in one process until Ctrl-C or SIGTERM.")
    _app_arguments(run)
    _listen_arguments(run, database="database URL (default: database.url or $DATABASE_URL)")
    run.set_defaults(handler=cmd_run)

    web = commands.add_parser(
        "web", help="scaled out: serve HTTP and take platform traffic in; workers run the handlers",
        description="Serve the widget and its sockets, REST + SSE, webhooks and connect pages, and poll "
        "Telegram (one process at a time, by lease). Each event is stored in PostgreSQL and a worker is "
        "woken; no handler runs here. Needs database.url on PostgreSQL and redis.url, shared with the "
        "workers. Run any number, behind a load balancer (docs/scaling.md).")
    _app_arguments(web)
    _listen_arguments(web, database="PostgreSQL URL (default: database.url or $DATABASE_URL)")
    web.set_defaults(handler=cmd_scaled)

    worker = commands.add_parser(
        "worker", help="scaled out: run handlers, schedules and tasks, and send to the platforms",
        description="Run the handlers of the events the web processes store, one session at a time per "
        "worker under a lease, plus schedules and tasks; send replies to the platforms. Serves /healthz, "
        "/readyz and /metrics on worker.port. SIGTERM lets running handlers finish (worker.shutdown_grace) "
        "and hands the sessions to the other workers. Needs database.url on PostgreSQL and redis.url.")
    _app_arguments(worker)
    worker.add_argument("--host", help="interface of the health port (default: server.host, 127.0.0.1)")
    worker.add_argument("--port", type=int, help="health and metrics port (default: worker.port, 8001)")
    worker.add_argument("--database", help="PostgreSQL URL (default: database.url or $DATABASE_URL)")
    worker.set_defaults(handler=cmd_scaled)

    chat = commands.add_parser("chat", help="chat with an app in this terminal",
                               description="Chat with the app in the terminal. Replies are rendered Markdown "
                               "and stream in place (plain text with --plain or when stdout is not a terminal); "
                               "blocks are shown as text; answer a file prompt with a path. /help lists the commands.")
    _app_arguments(chat)
    chat.add_argument("--user", default=os.environ.get("USER", "you"), help="who you are (default: $USER)")
    chat.add_argument("--conversation", default="console",
                      help="conversation name; the same name continues the same conversation (default: console)")
    chat.add_argument("--database", help="database URL (default: database.url)")
    chat.add_argument("--plain", action="store_true",
                      help="print replies as the Markdown the app wrote, without rendering or redrawing "
                      "(the default when stdout is not a terminal)")
    chat.add_argument("-v", "--verbose", action="store_true", help="show the gateway's log")
    chat.set_defaults(handler=cmd_chat)

    init = commands.add_parser("init", help="write a starter app and config into DIR",
                               description="Write app.py and chatgate.toml into DIR.")
    init.add_argument("dir", metavar="DIR", help="where to write the starter app")
    init.add_argument("--force", action="store_true", help="overwrite existing files")
    init.set_defaults(handler=cmd_init)

    _register_optional(commands)
    return parser


def _register_optional(commands: Any) -> None:
    try:
        integrations = importlib.import_module("gateway.integrations.cli")
    except ModuleNotFoundError:
        return
    integrations.register_cli(commands)


def _listen_arguments(parser: argparse.ArgumentParser, *, database: str) -> None:
    """``--host``, ``--port`` and ``--database`` of the commands that serve HTTP."""
    parser.add_argument("--host", help="interface to listen on (default: server.host, 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port to listen on (default: server.port or $PORT, 8000)")
    parser.add_argument("--database", help=database)


def _app_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("app", metavar="APP", help="the app: path/to/file.py[:attr] or package.module:attr")
    parser.add_argument("--config", metavar="FILE", help="TOML config file (default: ./chatgate.toml if present)")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except ConfigError as exc:
        print(f"chatgate: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except AppLoadError as exc:
        print(f"chatgate: cannot load the app: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130
    except OSError as exc:
        if exc.errno in (98, 48):  # address in use (Linux, macOS)
            print(f"chatgate: the port is already in use ({exc}); pick another with --port", file=sys.stderr)
            return EXIT_USAGE
        raise


if __name__ == "__main__":
    sys.exit(main())
