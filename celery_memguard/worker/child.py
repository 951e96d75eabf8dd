"""Pool-child side: per-task measurement, and the collaborators a pool child runs.

The master connects a ``worker_process_init`` receiver before the pool forks, so
every prefork child runs it once at start: it builds the child's
:class:`ChildRuntime`, which claims the child's board slot and wires one
collaborator per concern:

* measurement, here: around each task, reset the kernel's peak, read RSS, write
  the current task to the board, run, then read RSS and the peak and append the
  finished-task record (the per-task path: a few reads and two board writes);
* :class:`~celery_memguard.worker.child_orders.ChildOrders`: the master's orders
  (recycle, stop this task), through the order watcher thread and the main
  thread's signal handler;
* :class:`~celery_memguard.worker.job_hook.JobHook`: billiard's ``wait_for_job``,
  wrapped so each job's function is measured and orders are obeyed between jobs;
* :class:`~celery_memguard.worker.child_heap.HeapMeter`: what a task really
  retained, from the allocators, armed by RSS growth and settled for watched names;
* :class:`~celery_memguard.worker.child_trace.TraceList`: the master's trace list
  (suspects to trace with the leak-site tracer, names to measure on every call).

Fail-open: each receiver catches everything and reports ``memguard.error`` once
per cause; a task never fails because of MemGuard's bookkeeping. The only
exception MemGuard raises inside a task is :class:`MemoryLimitExceeded`, and only
for the task the master ordered stopped.
"""

from __future__ import annotations

import os
import time
from typing import Any

from .. import events
from ..board import Board
from ..probes import HeapProbe, SelfProbe
from .child_heap import HEAP_ARM_GROWTH, HeapMeter
from .child_orders import ChildOrders
from .child_trace import TraceList
from .job_hook import JobHook

__all__ = ["install", "ChildRuntime", "runtime"]

_board: Board | None = None
_metric = "uss"
_diagnostics = "off"
_heap: HeapProbe | None = None
_installed = False
_runtime: "ChildRuntime | None" = None


def runtime() -> "ChildRuntime | None":
    """This child's runtime (None in the master or before ``worker_process_init``)."""
    return _runtime


class ChildRuntime:
    """One pool child's MemGuard: measures each task, and wires the collaborators of the other concerns."""

    def __init__(self, board: Board, index: int, worker: Any, diagnostics: str = "off",
                 heap: HeapProbe | None = None, *, metric: str = "uss") -> None:
        self.board = board
        self.index = index
        self.pid = os.getpid()
        self.probe = SelfProbe()
        self.spawned_at = time.monotonic()
        self.tasks_run = 0
        self.task: str | None = None
        self.task_id: str | None = None
        self.started = 0.0
        self.rss_before = 0
        self.traces = TraceList(board, diagnostics)
        self.heap_meter = HeapMeter(heap)
        board.claim(index, self.pid, self.spawned_at)
        self.job_hook = JobHook(self)
        self.orders = ChildOrders(board, index, self.pid, metric=metric, running_task=lambda: self.task,
                                  leave_if_idle=self.job_hook.leave_if_idle)
        self.hooked = self.job_hook.install(worker)

    # -- per task (hot path: the collaborators are called only when they have work) --
    def before(self, task: str, task_id: str) -> None:
        """A task starts: read the trace list (outside the measurement), then take the before-readings."""
        meter = self.heap_meter
        if meter.settling:  # the previous task's after() never matched (it cannot stay frozen)
            meter.unfreeze()
        traces = self.traces
        if traces.tracer is not None or meter.probe is not None:
            # Before the measurement starts, so the tracer's own work is not counted in the task.
            if self.board.trace_generation() != traces.generation:
                traces.refresh()
            if traces.tracer is not None and task in traces.traced:
                traces.tracer.before(task)
        probe = self.probe
        probe.reset_peak()
        self.rss_before = rss = probe.rss()
        self.started = now = time.monotonic()
        self.task, self.task_id = task, task_id
        self.board.task_started(self.index, self.pid, task, task_id, now, rss, self.tasks_run, self.spawned_at)
        if meter.probe is not None:
            watched = task in traces.watched
            if watched or meter.armed > 0:
                meter.start(watched)

    def after(self, task_id: str, ok: bool) -> None:
        """The task has returned: take the after-readings and append the finished-task record."""
        if task_id != self.task_id or self.task is None:
            return
        orders = self.orders
        if not orders.handler_warned and not orders.handler_in_place():
            orders.handler_replaced(self.task, task_id)
        meter = self.heap_meter
        heap_retained, settled = meter.finish() if meter.settling or meter.before is not None else (None, False)
        probe = self.probe
        rss = probe.rss()
        peak = probe.peak()
        task = self.task
        self.task = self.task_id = None
        self.tasks_run += 1
        self.board.task_finished(self.index, self.pid, task, task_id, self.started, time.monotonic() - self.started,
                                 self.rss_before, rss, peak, ok, self.tasks_run, self.spawned_at, heap_retained,
                                 settled and heap_retained is not None)
        if meter.probe is not None and rss >= meter.mark + HEAP_ARM_GROWTH:
            meter.arm(rss)
        tracer = self.traces.tracer
        if tracer is not None and tracer.task == task:
            tracer.after(task, self.pid, task_id)


# -- signal receivers -------------------------------------------------------


def _on_process_init(**_: Any) -> None:
    global _runtime
    try:
        if _board is None:
            return
        from billiard.process import current_process

        proc = current_process()
        index = getattr(proc, "index", None)
        if index is None or not 0 <= index < _board.slots:
            raise LookupError(f"pool index {index!r} has no board slot ({_board.slots} slots)")
        _runtime = ChildRuntime(_board, index, getattr(proc, "_target", None), _diagnostics, _heap, metric=_metric)
        if not _runtime.hooked:
            # Measure through Celery's task signals instead (connected in this child only), and say
            # that recycles cannot happen between tasks here.
            from celery import signals

            signals.task_prerun.connect(_on_prerun, weak=False, dispatch_uid="memguard.prerun")
            signals.task_postrun.connect(_on_postrun, weak=False, dispatch_uid="memguard.postrun")
            raise RuntimeError("billiard worker has no wait_for_job; soft recycles will not happen")
    except Exception as exc:
        events.error("child.init", exc)


def _on_prerun(sender: Any = None, task_id: str | None = None, task: Any = None, **_: Any) -> None:
    rt = _runtime
    if rt is None:
        return
    try:
        rt.before(str(getattr(task, "name", None) or getattr(sender, "name", None) or "?"), task_id or "")
        rt.orders.arm(task_id or "")
    except Exception as exc:
        events.error("child.task_prerun", exc)


def _on_postrun(sender: Any = None, task_id: str | None = None, state: str | None = None, **_: Any) -> None:
    rt = _runtime
    if rt is None:
        return
    try:
        rt.orders.disarm()
        rt.after(task_id or "", state == "SUCCESS")
    except Exception as exc:
        events.error("child.task_postrun", exc)


def install(board: Board, metric: str, diagnostics: str = "off", heap: HeapProbe | None = None) -> None:
    """Connect the child-side receivers (call in the master, before the pool forks).

    ``heap``: measure the allocators with it around tasks after RSS growth (for the leak detector).
    """
    global _board, _metric, _diagnostics, _heap, _installed
    _board, _metric, _diagnostics, _heap = board, metric, diagnostics, heap
    if _installed:
        return
    from celery import signals

    signals.worker_process_init.connect(_on_process_init, weak=False, dispatch_uid="memguard.process_init")
    _installed = True
