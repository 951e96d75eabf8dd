"""Leak-site diagnostics, run inside a pool child only for a suspected task.

When the master suspects task ``T`` of leaking, it puts ``T`` on the board's trace
list. A child that then starts ``T`` traces the next few calls of ``T`` only:

* ``tracemalloc`` with one frame per allocation, started just before the first
  traced call; after the last one, the allocations still alive are grouped by
  ``file:line`` and the largest are emitted as ``memguard.leak_sites``;
* ``pympler``: a summary of all live objects by type before the first call and
  after the last; the types that grew most are emitted as ``memguard.leak_types``.

Then tracing stops. Nothing is traced while no task is suspected; a task is
traced at most once per child per suspicion. Costs (documented in docs/detection.md):
tracemalloc slows allocations in traced calls by roughly 2-4x and holds ~40 bytes
per live traced block; a pympler summary walks every live object twice per traced
task per child (0.3 s for a 200k-object heap, seconds for millions of objects).
Known limit: allocations of other tasks the child runs between the first and last
traced call are included in the sites.
"""

from __future__ import annotations

import gc
import os
import tracemalloc
from typing import Any, Callable

__all__ = ["LeakSiteTracer", "MODES"]

MODES = ("off", "tracemalloc", "pympler", "both")
def _pympler_dir() -> str:
    try:
        import pympler

        return os.path.dirname(pympler.__file__)
    except Exception:  # pragma: no cover
        return "<no pympler>"


#: Allocation sites that are the tracer's own doing, or import machinery, never the task's leak.
_IGNORED = (f"{os.path.dirname(__file__)}*", f"{tracemalloc.__file__}*", f"{_pympler_dir()}*", "<frozen *")


class LeakSiteTracer:
    """Traces ``calls`` consecutive calls of one suspected task at a time."""

    def __init__(self, mode: str, *, calls: int = 3, top: int = 10,
                 emit: Callable[..., None] | None = None) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}")
        self.mode = mode
        self.calls = calls
        self.top = top
        self._emit = emit
        self.task: str | None = None
        self._count = 0
        self._snapshot: tracemalloc.Snapshot | None = None
        self._started_tracemalloc = False
        self._summary: list[Any] | None = None
        self.done: set[str] = set()

    @property
    def active(self) -> bool:
        return self.task is not None

    def before(self, task: str) -> None:
        """Call at task start; begins tracing if ``task`` is suspected and not traced yet here."""
        if self.mode == "off" or task in self.done or (self.task is not None and self.task != task):
            return
        if self.task is None:
            self.task, self._count = task, 0
            if self.mode in ("tracemalloc", "both"):
                if not tracemalloc.is_tracing():
                    tracemalloc.start(1)
                    self._started_tracemalloc = True
                self._snapshot = tracemalloc.take_snapshot()
            if self.mode in ("pympler", "both"):
                self._summary = self._type_summary()

    def after(self, task: str, pid: int, task_id: str) -> None:
        """Call at task end; after the last traced call, emits the findings and stops tracing."""
        if task != self.task:
            return
        self._count += 1
        if self._count < self.calls:
            return
        try:
            self._report(task, pid, task_id)
        finally:
            self.stop()
            self.done.add(task)

    def stop(self) -> None:
        if self._started_tracemalloc and tracemalloc.is_tracing():
            tracemalloc.stop()
        self._started_tracemalloc = False
        self._snapshot = None
        self._summary = None
        self.task = None

    def _report(self, task: str, pid: int, task_id: str) -> None:
        emit = self._emit
        if emit is None:
            from . import events

            emit = events.emit
        if self._summary is not None:
            # First, so the type summary does not count the tracemalloc snapshot taken below.
            growth = self._type_growth(self._summary, self._type_summary())
            emit("memguard.leak_types", "warning", task=task, task_id=task_id, pid=pid, calls_traced=self._count,
                 types=growth[: self.top])
        if self._snapshot is not None and tracemalloc.is_tracing():
            ignored = [tracemalloc.Filter(False, pattern) for pattern in _IGNORED]
            after = tracemalloc.take_snapshot().filter_traces(ignored)
            before = self._snapshot.filter_traces(ignored)
            stats = [s for s in after.compare_to(before, "lineno") if s.size_diff > 0][: self.top]
            if stats:  # drop crumbs: sites under 1% of the largest (and under 64 KiB)
                floor = min(64 * 1024, stats[0].size_diff // 100)
                stats = [s for s in stats if s.size_diff >= floor]
            sites = [
                {
                    "file": s.traceback[0].filename,
                    "line": s.traceback[0].lineno,
                    "size_kib": round(s.size_diff / 1024, 1),
                    "count": s.count_diff,
                }
                for s in stats
            ]
            emit("memguard.leak_sites", "warning", task=task, task_id=task_id, pid=pid, calls_traced=self._count,
                 sites=sites)

    @staticmethod
    def _type_summary() -> list[Any]:
        from pympler import muppy, summary

        gc.collect()
        objects = muppy.get_objects()
        try:
            return summary.summarize(objects)
        finally:
            del objects

    @staticmethod
    def _type_growth(before: list[Any], after: list[Any]) -> list[dict[str, Any]]:
        from pympler import summary

        rows = [r for r in summary.get_diff(before, after) if r[2] > 0 and r[1] > 0]
        rows.sort(key=lambda r: r[2], reverse=True)
        own = ("list", "dict", "tuple", "frame", "cell", "function")
        result = []
        for name, count, size in rows:
            result.append({"type": str(name), "count": int(count), "size_kib": round(size / 1024, 1)})
        # The summaries themselves add a few lists/dicts/tuples; report them only if they grew materially.
        return [r for r in result if not (r["type"] in own and r["size_kib"] < 64)]
