"""celery-memguard: keeps Celery prefork workers' memory honest.

``app.steps['worker'].add(MemGuard)`` measures every pool child per task, applies
soft and hard memory limits that do not count pages shared copy-on-write with
the master, and reports what it did as structured ``memguard.*`` events.
"""

from __future__ import annotations

from typing import Any

from .config import MemGuardConfig, parse_size
from .exceptions import ConfigError, MemoryLimitExceeded
from .samples import Action, ChildSample, Decision, MasterSample, TaskSample, Violation

__version__ = "0.1.0"

__all__ = [
    "MemGuard",
    "MemGuardConfig",
    "ConfigError",
    "MemoryLimitExceeded",
    "parse_size",
    "Action",
    "ChildSample",
    "TaskSample",
    "MasterSample",
    "Decision",
    "Violation",
    "__version__",
]


def __getattr__(name: str) -> Any:
    # Import the Celery glue lazily so the pure core stays importable without Celery loaded.
    if name == "MemGuard":
        from .worker.bootstep import MemGuard

        return MemGuard
    raise AttributeError(name)
