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
* ``spawn_time_s``: the median measured time from fork to a ready pool child
  (what a recycle costs), null before the first is measured.

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

__all__ = ["SampleLog", "sample_fields", "TaskTally", "MAX_SAMPLE_TASKS"]

#: Task names itemised per sample; later names are summed under ``"(other)"``.
MAX_SAMPLE_TASKS = 64
OTHER_TASKS = "(other)"


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
        self.logged = 0

    def observe_tasks(self, records: "list[TaskSample]") -> None:
        """The monitor's ``on_tasks`` hook: finished-task records, tallied into the next sample."""
        self.tasks.add(records)

    def flush(self) -> bool:
        """Log the latest poll once more if tasks finished since the last sample (at stop); whether it was."""
        if self._view is None or not self.tasks._by_task:
            return False
        self._log(self._view)
        return True

    def offer(self, view: "PollView") -> bool:
        """Log ``view`` if a sample is due; returns whether it was logged."""
        self._view = view
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
        if self._emit is not None:
            self._emit(events.SAMPLE, "info", **fields)
        else:
            events.emit(events.SAMPLE, "info", metric=fields["metric"], children=fields["children"],
                        pool_mib=fields["pool_mib"], pool_rss_mib=fields["pool_rss_mib"],
                        master_mib=fields["master_mib"], master_rss_mib=fields["master_rss_mib"],
                        available_mib=fields["available_mib"], tasks=fields["tasks"],
                        spawn_time_s=fields["spawn_time_s"])
        self.logged += 1
