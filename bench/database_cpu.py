"""The CPU of this machine's PostgreSQL, for the benches that drive chatgate on it: what a turn
costs the database, beside what it costs the gateway's processes."""

from __future__ import annotations

import contextlib

import psutil


def is_local_postgres(url: str | None) -> bool:
    """A PostgreSQL on this machine: on loopback, or on its Unix socket (``user@/db?host=/dir``)."""
    if not url or not url.startswith("postgresql"):
        return False
    return any(f"@{host}" in url for host in ("127.0.0.1", "localhost", "[::1]", "/"))


def database_cpu_seconds() -> float:
    """The CPU of this machine's PostgreSQL processes (the server and its backends), where
    they can be read. A backend that exits within the measure takes its share with it; the
    gateway's pools keep their connections open, so under load that is next to none."""
    total = 0.0
    for process in psutil.process_iter(["name"]):
        if process.info["name"] != "postgres":
            continue
        with contextlib.suppress(psutil.Error):
            times = process.cpu_times()
            total += times.user + times.system
    return total
