"""Periodic memory samples in the event log (``memguard.sample``): the data behind the report's timelines.

Every ``memguard_sample_interval`` seconds (default 60; None turns it off) the
monitor's latest poll is written as one ``memguard.sample`` event: each pool
child's memory in the configured metric and its RSS, its task count and pool
slot, the master, the pool total and the available memory. Nothing is measured
for it: :class:`SampleLog` is handed each poll's
:class:`~celery_memguard.monitor.PollView` and only formats what the poll has
already read, so a sample costs one log line (~95 bytes per child plus ~260: a
16-child worker logs ~1.8 KB a minute, ~2.6 MB a day at the default interval).

What a sample holds, and where it comes from:

* ``children``: one ``{"slot", "pid", "mem_mib", "rss_mib", "tasks"}`` per live
  child, sorted by slot; ``"exact": false`` marks a ``mem_mib`` that is the
  monitor's upper bound (the exact reading was not due, see
  :mod:`celery_memguard.estimate`), ``"metric": "rss"`` a child whose configured
  metric could not be read.
* ``master_mib`` / ``master_rss_mib``: the latest reading of the worker's main
  process (read for the detectors every few seconds; null when none runs).
* ``pool_mib`` / ``pool_rss_mib``: the sums over the children.
* ``available_mib``: the machine's or cgroup's available memory when the monitor
  reads it (the pressure policies, ``memguard_min_available`` /
  ``memguard_psi_threshold``); null otherwise, as no extra probe is made.
* ``tasks``: the tasks that finished since the previous sample, by name (at most
  :data:`MAX_SAMPLE_TASKS` names, the rest under ``"(other)"``): ``calls``,
  ``failed``, ``own_peak_mib`` (the largest memory one call needed above the
  child's RSS when it started: the kernel's high-watermark minus that RSS, or the
  retained delta where the peak cannot be reset), ``peak_mib`` (the child's largest
  RSS high-watermark during a call), ``retained_mib`` (the RSS kept after the calls,
  summed), ``max_s`` and ``total_s`` (run time). The records are the ones the
  children already write to the board for the detectors; the advisor
  (``celery memguard advise``) sizes limits from them.
* ``spawn_time_s``: the median measured time from fork to a ready pool child, null
  before the first is measured.
* ``replace_gaps_s``: for each child replaced since the previous sample (at most
  :data:`MAX_GAPS`), the time its pool slot had no child: from the old child's last
  finished task to the new child's start, on the monotonic clock the children stamp both
  with (:class:`ReplacementGaps`). With ``spawn_time_s`` it is what a recycle costs a slot:
  the old child's exit, the master noticing it, its ``gc.collect()`` and fork.

No Celery imports: :class:`~celery_memguard.guard.Guard` wires :meth:`SampleLog.offer` to
:class:`~celery_memguard.monitor.Monitor`'s ``on_poll``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Iterable

from . import events
from .units import MiB

if TYPE_CHECKING:  # pragma: no cover
    from .monitor import PollView
    from .samples import TaskSample

__all__ = ["SampleLog", "sample_fields", "TaskTally", "ReplacementGaps", "MAX_SAMPLE_TASKS", "MAX_GAPS"]

#: Task names itemised per sample; later names are summed under ``"(other)"``.
MAX_SAMPLE_TASKS = 64
OTHER_TASKS = "(other)"
#: Replacement gaps logged per sample.
MAX_GAPS = 32
#: A longer gap is not a replacement's cost (an idle child recycled long after its last task).
MAX_GAP_S = 60.0


def _mib(value: int | float) -> float:
    return round(value / MiB, 2)


def sample_fields(view: "PollView", metric: str) -> dict[str, Any]:
    """The ``memguard.sample`` fields of one poll (everything already read by it)."""
    children: list[dict[str, Any]] = []
    pool = pool_rss = 0
    for child in view.children:
        item: dict[str, Any] = {"slot": view.slots.get(child.pid), "pid": child.pid, "mem_mib": _mib(child.mem),
                                "rss_mib": _mib(child.rss), "tasks": child.tasks_run}
        if not child.exact:
            item["exact"] = False
        if child.fallback is not None:
            item["metric"] = child.fallback
        children.append(item)
        pool += child.mem
        pool_rss += child.rss
    children.sort(key=lambda c: (c["slot"] is None, c["slot"] if c["slot"] is not None else 0, c["pid"]))
    master = view.master
    system = view.system
    return {
        "metric": metric,
        "children": children,
        "pool_mib": _mib(pool),
        "pool_rss_mib": _mib(pool_rss),
        "master_mib": _mib(master.mem) if master is not None else None,
        "master_rss_mib": _mib(master.rss) if master is not None else None,
        "available_mib": _mib(system.available) if system is not None else None,
    }


class TaskTally:
    """Finished tasks since the last sample, per task name: what ``memguard.sample``'s ``tasks`` holds."""

    def __init__(self) -> None:
        self._by_task: dict[str, list[float]] = {}

    def add(self, records: "Iterable[TaskSample]") -> None:
        for record in records:
            name = record.task or "?"
            row = self._by_task.get(name)
            if row is None:
                if len(self._by_task) >= MAX_SAMPLE_TASKS:
                    name = OTHER_TASKS
                    row = self._by_task.get(name)
                if row is None:
                    # calls, failed, own peak, peak, retained, max s, total s
                    row = self._by_task[name] = [0, 0, 0.0, 0.0, 0.0, 0.0, 0.0]
            peak = record.per_task_peak
            own = max(record.retained, 0) if peak is None else max(peak - record.mem_before, record.retained, 0)
            row[0] += 1
            row[1] += not record.succeeded
            row[2] = max(row[2], own)
            row[3] = max(row[3], peak if peak is not None else record.mem_after)
            row[4] += record.retained
            row[5] = max(row[5], record.duration)
            row[6] += record.duration

    def take(self) -> dict[str, dict[str, float | int]]:
        """The tally as event fields, and start a new one."""
        rows, self._by_task = self._by_task, {}
        return {name: {"calls": int(r[0]), "failed": int(r[1]), "own_peak_mib": _mib(r[2]), "peak_mib": _mib(r[3]),
                       "retained_mib": _mib(r[4]), "max_s": round(r[5], 3), "total_s": round(r[6], 3)}
                for name, r in rows.items()}


class ReplacementGaps:
    """How long a pool slot is without a child when its child is replaced (see ``replace_gaps_s``).

    Fed the finished-task records (each child's last finish) and each poll (which pid holds which slot, and
    since when: the child's ``spawned_at``); a replacement is resolved when the sample is logged, by which
    time the old child's last records have been drained.
    """

    MAX_PIDS = 4096

    def __init__(self) -> None:
        self._finished: dict[int, float] = {}
        self._slot_pid: dict[int, int] = {}
        self._pending: list[tuple[int, float, int]] = []  # old pid, new child's start, samples waited

    def tasks(self, records: "Iterable[TaskSample]") -> None:
        for record in records:
            end = record.started + record.duration
            if end > self._finished.get(record.pid, float("-inf")):
                self._finished.pop(record.pid, None)  # re-inserted last: the oldest pids go first
                self._finished[record.pid] = end
        while len(self._finished) > self.MAX_PIDS:
            del self._finished[next(iter(self._finished))]

    def poll(self, view: "PollView") -> None:
        for child in view.children:
            slot = view.slots.get(child.pid)
            if slot is None:
                continue
            old = self._slot_pid.get(slot)
            if old != child.pid and child.spawned_at > 0:  # a new child's start is known once it took its slot
                if old is not None and len(self._pending) < MAX_GAPS:
                    self._pending.append((old, child.spawned_at, 0))
                self._slot_pid[slot] = child.pid

    def take(self) -> list[float]:
        """The gaps of the replacements seen since the last call (seconds, to the millisecond)."""
        pending, self._pending = self._pending, []
        gaps = []
        for old, spawned_at, waited in pending:
            end = self._finished.get(old)
            if end is None and waited < 1:  # the old child's last records may come with the next poll
                self._pending.append((old, spawned_at, waited + 1))
            elif end is not None and 0.0 <= spawned_at - end <= MAX_GAP_S:
                gaps.append(round(spawned_at - end, 3))
        return gaps


class SampleLog:
    """Logs ``memguard.sample`` from the monitor's polls, at most once per ``interval`` seconds.

    :meth:`offer` is the monitor's ``on_poll`` hook: the first poll is logged, then the first poll at least
    ``interval`` seconds (on the monitor's clock) after the previous sample.
    """

    def __init__(self, interval: float, metric: str,
                 emit: Callable[..., None] | None = None,
                 spawn_time: Callable[[], float | None] | None = None) -> None:
        self.interval = interval
        self.metric = metric
        self._emit = emit
        self._spawn_time = spawn_time
        self._last: float | None = None
        self._view: "PollView | None" = None
        self.tasks = TaskTally()
        self.gaps = ReplacementGaps()
        self.logged = 0

    def observe_tasks(self, records: "list[TaskSample]") -> None:
        """The monitor's ``on_tasks`` hook: finished-task records, tallied into the next sample."""
        self.tasks.add(records)
        self.gaps.tasks(records)

    def flush(self) -> bool:
        """Log the latest poll once more if tasks finished since the last sample (at stop); whether it was."""
        if self._view is None or not self.tasks._by_task:
            return False
        self._log(self._view)
        return True

    def offer(self, view: "PollView") -> bool:
        """Log ``view`` if a sample is due; returns whether it was logged."""
        self._view = view
        self.gaps.poll(view)
        if self._last is not None and view.at - self._last < self.interval:
            return False
        self._last = view.at
        self._log(view)
        return True

    def _log(self, view: "PollView") -> None:
        fields = sample_fields(view, self.metric)
        spawn = self._spawn_time() if self._spawn_time is not None else None
        fields["tasks"] = self.tasks.take()
        fields["spawn_time_s"] = None if spawn is None else round(spawn, 3)
        fields["replace_gaps_s"] = self.gaps.take()
        if self._emit is not None:
            self._emit(events.SAMPLE, "info", **fields)
        else:
            events.emit(events.SAMPLE, "info", metric=fields["metric"], children=fields["children"],
                        pool_mib=fields["pool_mib"], pool_rss_mib=fields["pool_rss_mib"],
                        master_mib=fields["master_mib"], master_rss_mib=fields["master_rss_mib"],
                        available_mib=fields["available_mib"], tasks=fields["tasks"],
                        spawn_time_s=fields["spawn_time_s"], replace_gaps_s=fields["replace_gaps_s"])
        self.logged += 1
