"""Leak-site diagnostics, run inside a pool child only for a suspected task.

When the master suspects task ``T`` of leaking, it puts ``T`` on the board's trace
list. A child that then starts ``T`` traces the next few calls of ``T`` only, and
nothing in between: other tasks the child runs between two traced calls are never
traced and never counted.

* ``tracemalloc`` (modes ``"tracemalloc"`` and ``"both"``), for each of the next
  ``calls`` calls of ``T``: tracemalloc is started with one frame per allocation
  just before the call and stopped right after it, once a snapshot of the blocks
  still alive has been taken (after a ``gc.collect()``, so cyclic garbage does not
  count). Every block in that snapshot was allocated during the call and is still
  alive at its end: that is what the call retained. The sizes and block counts are
  summed per ``file:line`` over the traced calls, and after the last one the largest
  sites are emitted as ``memguard.leak_sites``. If the application already runs
  tracemalloc itself, it is left running: a baseline snapshot is taken before each
  traced call and the per-line growth over the call is summed instead.
* ``pympler`` (modes ``"pympler"`` and ``"both"``): a summary of all live objects by
  type before the first traced call and one after it (one call, two walks); the
  types that grew most are emitted as ``memguard.leak_types`` right after that call
  (``calls_traced`` is 1); the first summary, alive during the second walk, is
  taken out of the growth. In ``"both"``, the first walk runs before tracemalloc
  starts and the second after its snapshot was taken, reduced and dropped, so
  neither tool sees the other's work.

Then tracing of ``T`` stops; a task is traced to the end at most once per child.
Nothing is traced while no task is suspected, and every error path leaves
tracemalloc off (unless the application had started it) and gives up on the task.

Costs: tracemalloc is on only during the traced
calls; it slows their allocations by roughly 2-4x and holds ~40 bytes per live
traced block until it is stopped after the call. After each traced call come one
``gc.collect()`` (~20 ms for 200k tracked objects on a 2-core test machine) and a
snapshot whose cost grows with the number of blocks the call left alive. A pympler
summary walks every live object: twice per traced task per child (0.3 s for a
200k-object heap, seconds for millions of objects).
Known limit: a call that allocates new memory while freeing memory allocated before
it (a bounded cache replacing its entries) shows the new allocations as retained,
because tracemalloc did not see the older ones (with the application's own
tracemalloc, the net growth is reported instead).
"""

from __future__ import annotations

import gc
import os
import tracemalloc
import types
from typing import Any, Callable

from . import events

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

#: Sites under 1% of the largest one (and under 64 KiB) are crumbs, not reported.
_CRUMB_FLOOR = 64 * 1024


class LeakSiteTracer:
    """Traces the next ``calls`` calls of one suspected task at a time, and nothing in between.

    ``before(task)`` is called just before a call of a task on the trace list starts,
    ``after(task, pid, task_id)`` right after it ended; ``stop()`` abandons the task
    being traced (it can be traced again later). Findings go to ``emit(event, level,
    **keys)`` (``events.emit`` by default). No exception leaves ``before``/``after``/
    ``stop``: a failure is reported as ``memguard.error`` and the task is given up.
    """

    def __init__(self, mode: str, *, calls: int = 3, top: int = 10,
                 emit: Callable[..., None] | None = None) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}")
        self.mode = mode
        self.calls = calls
        self.top = top
        self._emit = emit
        self._sites_wanted = mode in ("tracemalloc", "both")
        self._types_wanted = mode in ("pympler", "both")
        #: The task being traced, from its first traced call until it is done or stopped.
        self.task: str | None = None
        #: Tasks traced to the end (or given up after an error) in this child.
        self.done: set[str] = set()
        self._reset()

    def _reset(self) -> None:
        """Forget the task being traced (does not touch tracemalloc: see ``_stop_own_tracemalloc``)."""
        self.task = None
        self._in_call = False  # between before() and after() of a traced call
        self._site_calls = 0  # calls traced by tracemalloc so far
        self._site_totals: dict[tuple[str, int], list[int]] = {}  # (file, line) -> [bytes, blocks]
        self._call_traced = False  # this call is traced by tracemalloc
        self._started_tracemalloc = False
        self._baseline: tracemalloc.Snapshot | None = None  # when the application runs tracemalloc
        self._types_pending = self._types_wanted
        self._summary: list[Any] | None = None

    @property
    def active(self) -> bool:
        return self.task is not None

    # -- called by the child runtime --------------------------------------

    def before(self, task: str) -> None:
        """Call just before a call of ``task`` starts; traces it if ``task`` is being (or can start being) traced."""
        if self.mode == "off":
            return
        try:
            if self._in_call:
                # The previous traced call never reached after(): drop it, and never trace past it.
                self._abandon_call()
            if task in self.done or (self.task is not None and self.task != task):
                return
            if self.task is None:
                self.task = task
            if self._types_pending:
                # Before tracemalloc starts, so this walk is not traced.
                self._summary = self._type_summary()
            if self._sites_wanted and self._site_calls < self.calls:
                if tracemalloc.is_tracing():
                    self._baseline = tracemalloc.take_snapshot()
                else:
                    tracemalloc.start(1)
                    self._started_tracemalloc = True
                self._call_traced = True
            self._in_call = True
        except Exception as exc:
            self._give_up(task, "diagnostics.before", exc)

    def after(self, task: str, pid: int, task_id: str) -> None:
        """Call right after a call of ``task`` ended; emits the findings once the last traced call is in."""
        if task != self.task or not self._in_call:
            return
        self._in_call = False
        try:
            if self._call_traced:
                self._call_traced = False
                self._add_call_sites()
                self._site_calls += 1
            if self._types_pending:
                # After the snapshot above is reduced and dropped, so this walk does not count it.
                summary_before, self._summary = self._summary, None
                self._types_pending = False
                if summary_before is not None:
                    growth = self._type_growth(summary_before, self._type_summary())
                    del summary_before
                    self._emitter()(events.LEAK_TYPES, "warning", task=task, task_id=task_id, pid=pid,
                                    calls_traced=1, types=growth[: self.top])
            sites_finished = not self._sites_wanted or self._site_calls >= self.calls
            if sites_finished and not self._types_pending:
                if self._sites_wanted:
                    self._emitter()(events.LEAK_SITES, "warning", task=task, task_id=task_id, pid=pid,
                                    calls_traced=self._site_calls, sites=self._top_sites())
                self._stop_own_tracemalloc()
                self._reset()
                self.done.add(task)
        except Exception as exc:
            self._give_up(task, "diagnostics.after", exc)

    def stop(self) -> None:
        """Abandon the task being traced (not marked done); tracemalloc is left off unless the application runs it."""
        try:
            self._stop_own_tracemalloc()
        except Exception:  # pragma: no cover - tracemalloc.stop() does not raise in practice
            pass
        finally:
            self._reset()

    # -- tracemalloc ------------------------------------------------------

    def _stop_own_tracemalloc(self) -> None:
        """Stop tracemalloc if this tracer started it (never the application's own)."""
        if self._started_tracemalloc:
            self._started_tracemalloc = False
            if tracemalloc.is_tracing():
                tracemalloc.stop()

    def _abandon_call(self) -> None:
        self._in_call = False
        self._call_traced = False
        self._baseline = None
        self._stop_own_tracemalloc()

    def _add_call_sites(self) -> None:
        """Add what the call that just ended retained, per ``file:line``, to the running totals."""
        baseline, self._baseline = self._baseline, None
        try:
            gc.collect()
            snapshot = tracemalloc.take_snapshot() if tracemalloc.is_tracing() else None
        finally:
            self._stop_own_tracemalloc()
        if snapshot is None:
            raise RuntimeError("tracemalloc was stopped during the traced call")
        ignored = [tracemalloc.Filter(False, pattern) for pattern in _IGNORED]
        snapshot = snapshot.filter_traces(ignored)
        if baseline is None:
            # tracemalloc was started just before the call: every block alive now is the call's.
            retained = [(s.traceback[0], s.size, s.count) for s in snapshot.statistics("lineno")]
        else:
            retained = [(d.traceback[0], d.size_diff, max(d.count_diff, 0))
                        for d in snapshot.compare_to(baseline.filter_traces(ignored), "lineno") if d.size_diff > 0]
        for frame, size, count in retained:
            entry = self._site_totals.setdefault((frame.filename, frame.lineno), [0, 0])
            entry[0] += size
            entry[1] += count

    def _top_sites(self) -> list[dict[str, Any]]:
        ranked = sorted(((size, count, site) for site, (size, count) in self._site_totals.items() if size > 0),
                        key=lambda row: (-row[0], row[2]))[: self.top]
        if ranked:  # drop crumbs: sites under 1% of the largest (and under 64 KiB)
            floor = min(_CRUMB_FLOOR, ranked[0][0] // 100)
            ranked = [row for row in ranked if row[0] >= floor]
        return [
            {"file": file, "line": line, "size_kib": round(size / 1024, 1), "count": count}
            for size, count, (file, line) in ranked
        ]

    # -- errors and events ------------------------------------------------

    def _emitter(self) -> Callable[..., None]:
        return self._emit if self._emit is not None else events.emit

    def _give_up(self, task: str, where: str, exc: BaseException) -> None:
        """Leave tracemalloc off, forget the task (never traced again here) and report the error once."""
        try:
            self._stop_own_tracemalloc()
        except Exception:  # pragma: no cover
            pass
        self._reset()
        self.done.add(task)
        try:
            if self._emit is not None:
                self._emit(events.ERROR, "error", where=where, error=f"{type(exc).__name__}: {exc}")
            else:
                events.error(where, exc)
        except Exception:  # pragma: no cover - reporting must not fail the task either
            pass

    # -- pympler ----------------------------------------------------------

    @staticmethod
    def _type_summary() -> list[Any]:
        from pympler import summary

        gc.collect()
        objects = _live_objects()
        try:
            return summary.summarize(objects)
        finally:
            del objects

    @staticmethod
    def _type_growth(before: list[Any], after: list[Any]) -> list[dict[str, Any]]:
        from pympler import summary

        # The first summary is alive during the second walk: take its own rows, type names and sizes out.
        own: dict[int, Any] = {id(before): before}
        for row in before:
            own[id(row)] = row
            for item in row:
                own[id(item)] = item
        growth = summary.get_diff(summary.summarize(list(own.values())), summary.get_diff(before, after))
        # Size, not count: objects of the same type freed during the call (the job's message bytes) can
        # cancel the count of what it kept.
        rows = [r for r in growth if r[2] > 0]
        rows.sort(key=lambda r: r[2], reverse=True)
        containers = ("list", "dict", "tuple", "frame", "cell", "function")
        result = []
        for name, count, size in rows:
            result.append({"type": str(name), "count": int(count), "size_kib": round(size / 1024, 1)})
        # The tracer's own frames and locals add a few lists/dicts/tuples; report them only if they grew materially.
        return [r for r in result if not (r["type"] in containers and r["size_kib"] < 64)]


def _live_objects() -> list[Any]:
    """Every live object the garbage collector knows, plus the untracked objects they refer to, once each.

    The same walk as ``pympler.muppy.get_objects()`` except that frames are recognised by
    ``type(o) is FrameType``: muppy asks ``isinstance(o, FrameType)``, which reads ``o.__class__``
    and so evaluates every lazy proxy it meets (Celery's ``Proxy`` objects, ``shared_task``
    placeholders), which can finalize an app or run arbitrary code in the middle of a task.
    """
    frame_type = types.FrameType
    containers = [o for o in gc.get_objects() if type(o) is not frame_type]
    seen: set[int] = set()
    result: list[Any] = []
    for obj in containers:
        for ref in gc.get_referents(obj):
            if not gc.is_tracked(ref) and id(ref) not in seen:
                seen.add(id(ref))
                result.append(ref)
    for obj in containers:
        if id(obj) not in seen:
            seen.add(id(obj))
            result.append(obj)
    return result
