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

No Celery imports: :class:`~celery_memguard.guard.Guard` wires :meth:`SampleLog.offer` to
:class:`~celery_memguard.monitor.Monitor`'s ``on_poll``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

from . import events
from .units import MiB

if TYPE_CHECKING:  # pragma: no cover
    from .monitor import PollView

__all__ = ["SampleLog", "sample_fields"]


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


class SampleLog:
    """Logs ``memguard.sample`` from the monitor's polls, at most once per ``interval`` seconds.

    :meth:`offer` is the monitor's ``on_poll`` hook: the first poll is logged, then the first poll at least
    ``interval`` seconds (on the monitor's clock) after the previous sample.
    """

    def __init__(self, interval: float, metric: str,
                 emit: Callable[..., None] | None = None) -> None:
        self.interval = interval
        self.metric = metric
        self._emit = emit
        self._last: float | None = None
        self.logged = 0

    def offer(self, view: "PollView") -> bool:
        """Log ``view`` if a sample is due; returns whether it was logged."""
        if self._last is not None and view.at - self._last < self.interval:
            return False
        self._last = view.at
        fields = sample_fields(view, self.metric)
        if self._emit is not None:
            self._emit(events.SAMPLE, "info", **fields)
        else:
            events.emit(events.SAMPLE, "info", metric=fields["metric"], children=fields["children"],
                        pool_mib=fields["pool_mib"], pool_rss_mib=fields["pool_rss_mib"],
                        master_mib=fields["master_mib"], master_rss_mib=fields["master_rss_mib"],
                        available_mib=fields["available_mib"])
        self.logged += 1
        return True
