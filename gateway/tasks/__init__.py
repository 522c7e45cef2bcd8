"""Background tasks: ``api`` is what an app sees (``@app.task``, ``TaskDescriptor``,
``TaskHandle``, ``app.tasks``), ``engine`` the service that runs them."""

from __future__ import annotations

from gateway.tasks.api import (
    TaskDescriptor,
    TaskFailed,
    TaskHandle,
    TaskOptions,
    TaskQuery,
    parse_duration,
    task_decorator,
)
from gateway.tasks.engine import TaskService, synthetic_session

__all__ = [
    "TaskDescriptor",
    "TaskFailed",
    "TaskHandle",
    "TaskOptions",
    "TaskQuery",
    "TaskService",
    "parse_duration",
    "synthetic_session",
    "task_decorator",
]
