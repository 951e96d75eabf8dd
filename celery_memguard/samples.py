"""Value types passed between probes, the decision core and the Celery glue.

Everything here is an immutable, slotted dataclass with no behaviour beyond a few
derived properties: the decision core takes these in and hands :class:`Decision`
out, so tests can drive it with synthetic series and no processes at all.
Sizes are bytes, times are seconds (``now`` is ``time.monotonic()`` in the worker).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

__all__ = ["Action", "ChildSample", "TaskSample", "MasterSample", "Violation", "Decision", "MiB"]

MiB = 1024 * 1024


class Action(enum.Enum):
    """What the master does to a pool child."""

    #: Let the current task finish (result and ack go out), then the child exits and is replaced.
    RECYCLE = "recycle"
    #: Stop the running task now: MemoryLimitExceeded is raised inside it; the child is replaced.
    KILL = "kill"
    #: The task did not stop within ``kill_grace``: SIGKILL the child.
    FORCE_KILL = "force_kill"

    @property
    def severity(self) -> int:
        return _SEVERITY[self]


_SEVERITY = {Action.RECYCLE: 1, Action.KILL: 2, Action.FORCE_KILL: 3}


@dataclass(frozen=True, slots=True)
class ChildSample:
    """One poll's view of one pool child.

    ``mem`` is in the configured metric when ``exact`` is true; otherwise it is an
    upper bound for it (the prober skips the costly exact reading while the bound
    is below every limit, see :class:`celery_memguard.estimate.MetricEstimate`).
    """

    pid: int
    mem: int
    exact: bool
    rss: int
    task: str | None = None
    task_id: str | None = None
    tasks_run: int = 0
    spawned_at: float = 0.0

    @property
    def busy(self) -> bool:
        return self.task_id is not None


@dataclass(frozen=True, slots=True)
class TaskSample:
    """One finished task as measured inside its pool child (RSS figures).

    ``per_task_peak`` is the child's resident high-watermark reached during this task
    (the kernel's peak is reset before the task starts), or ``None`` where that
    reset is not permitted.
    """

    pid: int
    task: str
    task_id: str
    started: float
    duration: float
    mem_before: int
    mem_after: int
    per_task_peak: int | None
    succeeded: bool

    @property
    def retained(self) -> int:
        return self.mem_after - self.mem_before


@dataclass(frozen=True, slots=True)
class MasterSample:
    """The worker's main process at one poll."""

    pid: int
    mem: int
    rss: int
    at: float


@dataclass(frozen=True, slots=True)
class Violation:
    """A policy's verdict on one child: which action, why, and against which limit."""

    action: Action
    reason: str
    limit: int


@dataclass(frozen=True, slots=True)
class Decision:
    """An action the master must carry out (or, in dry run, only log)."""

    action: Action
    pid: int
    reason: str
    mem: int
    limit: int
    task: str | None
    task_id: str | None
    tasks_run: int
    lifetime: float
