"""Exceptions MemGuard raises: bad configuration, and a task stopped at its hard limit."""

from __future__ import annotations

from typing import Any

from .units import MiB

__all__ = ["ConfigError", "MemoryLimitExceeded"]



class ConfigError(ValueError):
    """A ``memguard_*`` setting is invalid; the worker refuses to start."""

    def __init__(self, key: str, value: Any, accepted: str) -> None:
        self.key, self.value, self.accepted = key, value, accepted
        super().__init__(f"invalid {key}={value!r}: expected {accepted}")

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.key, self.value, self.accepted))


class MemoryLimitExceeded(Exception):
    """Raised inside a task whose pool child went above ``memguard_hard_limit``.

    Celery records it as the task's failure, so the result and traceback say
    which memory figure crossed which limit. The child is replaced after the task.
    """

    def __init__(self, task: str, mem: int, limit: int, metric: str, pid: int) -> None:
        # args are the constructor's arguments so Celery can rebuild the exception from a result.
        super().__init__(task, mem, limit, metric, pid)
        self.task, self.mem, self.limit, self.metric, self.pid = task, mem, limit, metric, pid

    def __str__(self) -> str:
        return (
            f"memguard: task {self.task} stopped: pool child {self.pid} used {self.mem / MiB:.1f} MiB "
            f"({self.metric}), above memguard_hard_limit {self.limit / MiB:.1f} MiB"
        )
