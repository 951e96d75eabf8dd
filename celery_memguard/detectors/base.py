"""The detector interface and the :class:`Finding` value every detector returns.

A detector is a pure object fed with measurements by the master's monitor: it
does no I/O, reads no clock (``now`` and sample timestamps are passed in) and
imports nothing from Celery. It returns :class:`Finding` values; the caller turns
each into an event with ``events.emit(finding.event, **finding.fields)``. One
concern per detector class, and every hook has a do-nothing default so a
detector overrides only what it needs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from ..events import GROWTH_WATCH, HEAVY_TASK, LEAK_CLEARED, LEAK_SUSPECTED, MASTER_GROWTH
from ..samples import MasterSample, TaskSample

__all__ = ["Finding", "Detector", "LEAK_SUSPECTED", "LEAK_CLEARED", "GROWTH_WATCH", "HEAVY_TASK", "MASTER_GROWTH"]


@dataclass(frozen=True, slots=True)
class Finding:
    """Something a detector wants logged: an event name, its keys, and the task it names (if any)."""

    event: str
    fields: dict[str, object] = field(default_factory=dict)
    task: str | None = None


class Detector:
    """Base class: override the hooks you need; each returns a (usually empty) list of findings."""

    name: ClassVar[str] = "detector"

    @property
    def sample_interval(self) -> float | None:
        """Longest spacing of master readings this detector can work with (None: it takes what comes)."""
        return None

    def observe_task(self, sample: TaskSample, now: float) -> list[Finding]:
        """A pool child finished a task; ``now`` is the master's monotonic clock."""
        return []

    def observe_master(self, sample: MasterSample, reserved_messages: int | None = None) -> list[Finding]:
        """One reading of the worker's main process (``reserved_messages``: prefetched, not yet acked)."""
        return []

    def child_exited(self, pid: int) -> None:
        """Pool child ``pid`` is gone; a later child reusing the pid is a new process."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"
