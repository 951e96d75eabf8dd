"""Value types passed between probes, the decision core and the Celery glue.

Everything here is an immutable, slotted dataclass with no behaviour beyond a few
derived properties: the decision core takes these in and hands :class:`Decision`
out, so tests can drive it with synthetic series and no processes at all.
Sizes are bytes, times are seconds (``now`` is ``time.monotonic()`` in the worker).
:class:`SystemSample` is the machine's (or the cgroup's) memory at one poll, the
input of pool-level policies such as system pressure.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

__all__ = [
    "Action",
    "ChildSample",
    "TaskSample",
    "MasterSample",
    "SystemSample",
    "Violation",
    "Decision",
    "Ranking",
    "Detail",
    "MiB",
]

from .units import MiB  # re-exported: sizes have one home, units.py


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

    ``leak_bytes_per_call`` is the memory a confirmed leak retains per task call in
    this child (0: no confirmed leak) and ``calls_per_second`` the child's call rate
    (0: unknown; policies then use ``tasks_run`` over the child's lifetime).
    ``pending`` is set by the engine, not by probes: the order memguard has already
    given this child (it is leaving), so policies can skip it.
    ``fallback`` names the metric ``mem`` is really in when the configured one could
    not be read for this child (``"rss"``: e.g. a non-dumpable child's smaps_rollup),
    else None; the engine orders no memory-based soft recycle on such a reading.
    """

    pid: int
    mem: int
    exact: bool
    rss: int
    task: str | None = None
    task_id: str | None = None
    tasks_run: int = 0
    spawned_at: float = 0.0
    leak_bytes_per_call: float = 0.0
    calls_per_second: float = 0.0
    pending: Action | None = None
    fallback: str | None = None

    @property
    def busy(self) -> bool:
        return self.task_id is not None

    @property
    def leaving(self) -> bool:
        """Whether memguard has already ordered this child out (recycle or kill)."""
        return self.pending is not None


@dataclass(frozen=True, slots=True)
class TaskSample:
    """One finished task as measured inside its pool child (RSS figures).

    ``per_task_peak`` is the child's resident high-watermark reached during this task
    (the kernel's peak is reset before the task starts), or ``None`` where that
    reset is not permitted. ``heap_retained`` is the change, across the task, of the
    bytes the child's allocators hold in use (malloc and pymalloc, see
    :mod:`celery_memguard.probes.heap`), or ``None`` when the child did not measure
    it for this task. ``heap_settled`` says that reading was *settled*: the child
    collected the task's own cyclic garbage before the after-reading and let no
    collection free older garbage during the task (see
    :mod:`celery_memguard.worker.child_heap`), so deferred frees do not move it.
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
    heap_retained: int | None = None
    heap_settled: bool = False

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
class SystemSample:
    """The memory of the machine, or of the worker's cgroup, at one poll.

    ``total`` is the effective memory (cgroup limit or ``MemTotal``), ``available``
    what can still be allocated without reclaim pressure (``total - current`` in a
    cgroup, ``MemAvailable`` on the host). ``psi_some_avg10`` is the memory PSI
    ``some avg10`` percentage and ``oom_kill_count`` the cgroup's ``oom_kill``
    counter, each ``None`` where not readable.
    """

    available: int
    total: int
    used: int
    psi_some_avg10: float | None = None
    oom_kill_count: int | None = None
    at: float = 0.0


#: Children in the order a policy would pick them: ``((pid, mem), ...)``, the victim first.
Ranking = tuple[tuple[int, int], ...]
#: Extra facts a policy reports with a violation, as ``((key, value), ...)`` (log them with ``dict(detail)``).
Detail = tuple[tuple[str, object], ...]


@dataclass(frozen=True, slots=True)
class Violation:
    """A policy's verdict on one child: which action, why, and against which limit.

    ``limit`` is in ``unit``: ``"bytes"`` for memory policies, ``"seconds"`` for
    the lifetime, ``"tasks"`` for the task count. ``ranking`` is how a pool-level
    policy ranked the children when it chose this one. A ``hard`` violation is
    never debounced by strikes nor deferred by the recycle rate limit (a KILL never
    is either); it does not take part in equality.
    """

    action: Action
    reason: str
    limit: int
    ranking: Ranking = ()
    detail: Detail = ()
    unit: str = "bytes"
    hard: bool = field(default=False, compare=False)


@dataclass(frozen=True, slots=True)
class Decision:
    """An action the master must carry out (or, in dry run, only log).

    ``reason``, ``limit``, ``unit``, ``ranking`` and ``detail`` are copied from the
    violation that caused it, so the event logged for it can say why.
    """

    action: Action
    pid: int
    reason: str
    mem: int
    limit: int
    task: str | None
    task_id: str | None
    tasks_run: int
    lifetime: float
    ranking: Ranking = ()
    detail: Detail = ()
    unit: str = "bytes"
    #: The metric ``mem`` is in when it is not the configured one (a fallback reading), else None.
    metric: str | None = None
