"""Pool-child side: per-task measurement and obeying the master's orders.

The master connects a ``worker_process_init`` receiver before the pool forks, so
every prefork child runs it once at start: it opens the child's own /proc fds,
claims its board slot, starts the child's **order watcher** thread (see
:mod:`celery_memguard.orders`) and wraps billiard's ``wait_for_job``.

Orders (recycle, stop this task) are written by the master to the child's board
slot and announced with ``ORDER_SIGNAL`` aimed at the watcher thread, which waits
for it in ``sigwait``: no Python signal handler has to run, so orders reach children
on which CPython cannot run one (3.13.0, children forked from billiard's supervisor
thread on transports without an event loop) and tasks that installed their own
handler for the signal. The watcher

* stops a task by raising :class:`MemoryLimitExceeded` in the task's thread
  (``PyThreadState_SetAsyncExc``), only while that very task's function runs: the
  job wrapper *arms* the stop just before calling it and *disarms* it (withdrawing
  an exception not raised yet) right after, under one lock with the watcher's check,
  so the exception can never land in billiard's or MemGuard's code between tasks;
* marks a recycle; the child leaves where billiard's own ``max_tasks_per_child``
  recycle does: after the finished task's result went to the master, before the
  next job is taken. Each task boundary also compares the slot's order number with
  the last one obeyed, so an order whose signal was lost is obeyed there;
* for an idle child, and to interrupt a task blocked in a system call, forwards the
  signal to the main thread, whose handler (where CPython can run it) leaves at
  once if the child is blocked before the first byte of its next job (nothing has
  been read, so nothing is lost; the master repeats the signal each poll until the
  child has left), or raises the pending stop at once. Where the handler cannot run
  (CPython 3.13.0 as above, or a task replaced it, which is reported once as
  ``memguard.order_signal_replaced`` naming the task) an idle child leaves after its
  next job instead, and a stop lands when the blocking call returns.

Each job's function (Celery's trace function) is wrapped to measure the task: reset
the kernel's peak, read RSS, write the current task to the board, run, then read RSS
and the peak and append the finished-task record. This costs less than Celery's
``task_prerun``/``task_postrun`` dispatch, which MemGuard therefore does not use (it
falls back to them only if the hook is impossible).

With leak detection on, a child whose RSS has grown by :data:`HEAP_ARM_GROWTH`
since it last looked also measures what its allocators hold in use
(:mod:`celery_memguard.probes.heap`) around each of its next
:data:`HEAP_ARMED_TASKS` tasks, whatever their names: the leak detector charges
each task what it really retained, not the RSS growth it happened to trigger. A
child whose RSS is steady pays nothing for this.

The master also publishes, on the board's trace list, the task names it
*watches* (growing, not yet judged; and the suspects): the child measures every
call of those, whatever its RSS does, so the detector sees the flat calls of a
cache that has filled. Those readings are *settled*: the objects that exist
before the task are frozen (``gc.freeze()``, O(1)), so no collection during the
task frees older garbage (which would charge this task negative memory), and
the task's own cyclic garbage is collected after it (only the task's objects
are scanned) before the after-reading, so garbage the GC would free later is
not charged to it; the objects are unfrozen right after (``gc.unfreeze()``).

Fail-open: each receiver catches everything and reports ``memguard.error`` once
per cause; a task never fails because of MemGuard's bookkeeping. The only
exception MemGuard raises inside a task is :class:`MemoryLimitExceeded`, and only
for the task the master ordered stopped.
"""

from __future__ import annotations

import gc
import os
import signal
import sys
import threading
import time
import tracemalloc
from types import FrameType
from typing import Any

from .. import events
from ..board import ORDER_KILL, ORDER_RECYCLE, ORDER_SIGNAL, WATCH_MARK, Board, Order
from ..diagnostics import LeakSiteTracer
from ..exceptions import MemoryLimitExceeded
from ..forensics import EX_RECYCLE
from ..orders import OrderWatcher, cancel_in_thread, delivering, raise_in_thread
from ..probes import HeapProbe, SelfProbe

__all__ = ["install", "ChildRuntime", "runtime"]


siginterrupt = getattr(signal, "siginterrupt", lambda _sig, _flag: None)
try:  # the C function: signal.getsignal maps the result to an enum, ~10 us for a Python handler
    from _signal import getsignal as _getsignal
except ImportError:  # pragma: no cover
    _getsignal = signal.getsignal

_board: Board | None = None
_metric = "uss"
_diagnostics = "off"
_heap: HeapProbe | None = None
_installed = False

#: RSS growth of a child (since it last armed) that makes it measure its allocators around the next tasks.
HEAP_ARM_GROWTH = 64 * 1024
#: Tasks measured with the heap probe after each such growth.
HEAP_ARMED_TASKS = 32
_runtime: "ChildRuntime | None" = None
#: Objects already in the permanent generation when MemGuard is imported (before the application can
#: have called ``gc.freeze()``): 0 on most Pythons, a few hundred of the interpreter's own on 3.12. More
#: than this later means the application froze objects itself, and settled readings are then skipped.
_INTERPRETER_FROZEN = gc.get_freeze_count()


def runtime() -> "ChildRuntime | None":
    """This child's runtime (None in the master or before ``worker_process_init``)."""
    return _runtime


class ChildRuntime:
    """Everything one pool child keeps between tasks."""

    def __init__(self, board: Board, index: int, worker: Any, diagnostics: str = "off",
                 heap: HeapProbe | None = None) -> None:
        self.board = board
        self.index = index
        self.pid = os.getpid()
        self.probe = SelfProbe()
        self.spawned_at = time.monotonic()
        self.tasks_run = 0
        self.recycle_requested = False
        self.task: str | None = None
        self.task_id: str | None = None
        self.started = 0.0
        self.rss_before = 0
        self.last_order = 0
        self.ready_reported = False
        self._wrappers: dict[Any, Any] = {}
        self._wait_code: object = None
        self.tracer = LeakSiteTracer(diagnostics) if diagnostics != "off" else None
        self.trace_gen = 0
        self.trace_tasks: frozenset[str] = frozenset()
        self.heap = heap  # found (and checked) once in the master; its ctypes binding survives the fork
        self.heap_armed = 0  # tasks left to measure with the heap probe
        self.heap_mark = 0  # RSS when the heap probe was last armed
        self.heap_before: int | None = None
        self.tracer_mem_before = 0
        self.watch_tasks: frozenset[str] = frozenset()  # names the master watches: measured every call, settled
        self.settling = False  # objects frozen for this task's settled reading
        # -- orders (see the module docstring) --
        self.main_ident = threading.get_ident()
        self._orders_lock = threading.RLock()  # re-entrant: the main thread's handler may run inside disarm()
        self.armed: str | None = None  # id of the task whose function is running (a stop may be raised in it)
        self.stop_pending: MemoryLimitExceeded | None = None  # scheduled in the main thread, not raised yet
        self.obeying = False  # obey() is running (see disarm())
        self.handler_warned = False
        board.claim(index, self.pid, self.spawned_at)
        self._order_seq = board.order_seq_reader(index)
        self._handler = self._on_signal
        signal.signal(ORDER_SIGNAL, self._handler)
        siginterrupt(ORDER_SIGNAL, False)
        self.watcher = OrderWatcher(self._on_watcher_signal, self._on_watcher_error)
        try:
            board.set_watcher(index, self.watcher.start(), main_handler=True)
        except Exception as exc:  # no watcher: orders reach the child by its signal handler and task boundaries
            events.error("child.order_watcher", exc)
        self.hooked = self._hook_wait_for_job(worker)

    # -- per task (hot path) ---------------------------------------------
    def before(self, task: str, task_id: str) -> None:
        if self.settling:  # the previous task's after() never matched (it cannot stay frozen)
            self._settle_done()
        if self.tracer is not None or self.heap is not None:
            # Before the measurement starts, so the tracer's own work is not counted in the task.
            if self.board.trace_generation() != self.trace_gen:
                self._refresh_trace_list()
            if self.tracer is not None and task in self.trace_tasks:
                self.tracer.before(task)
        probe = self.probe
        probe.reset_peak()
        self.rss_before = rss = probe.rss()
        self.started = now = time.monotonic()
        self.task, self.task_id = task, task_id
        self.board.task_started(self.index, self.pid, task, task_id, now, rss, self.tasks_run, self.spawned_at)
        if self.heap is not None:
            if self.watch_tasks and task in self.watch_tasks:
                self._settle_start()
                self._heap_start()
            elif self.heap_armed > 0:
                self._heap_start()

    def arm(self, task_id: str) -> None:
        """The task's function starts: a stop ordered for ``task_id`` may be raised in it from now."""
        self.armed = task_id

    def disarm(self) -> None:
        """The task's function has returned: no stop is raised from now on; one scheduled is withdrawn.

        Lock-free unless a stop is pending or :meth:`obey` is running (the per-task path): ``armed`` is
        cleared before ``obeying`` is read, and :meth:`obey` sets ``obeying`` before it reads ``armed``;
        under the GIL one of the two sees the other's write, so a stop is never scheduled unseen.
        """
        self.armed = None
        if self.obeying or self.stop_pending is not None:
            with self._orders_lock:
                if self.stop_pending is not None:
                    self.stop_pending = None
                    cancel_in_thread(self.main_ident)

    def after(self, task_id: str, ok: bool) -> None:
        if task_id != self.task_id or self.task is None:
            return
        if not self.handler_warned and not self._handler_in_place():
            self._handler_replaced(self.task, task_id)
        settled = self.settling
        if settled:
            self._settle_end()
        heap_retained = self._heap_retained() if self.heap_before is not None else None
        if settled:
            self._settle_done()
        probe = self.probe
        rss = probe.rss()
        peak = probe.peak()
        task = self.task
        self.task = self.task_id = None
        self.tasks_run += 1
        self.board.task_finished(self.index, self.pid, task, task_id, self.started, time.monotonic() - self.started,
                                 self.rss_before, rss, peak, ok, self.tasks_run, self.spawned_at, heap_retained,
                                 settled and heap_retained is not None)
        if self.heap is not None and rss >= self.heap_mark + HEAP_ARM_GROWTH:
            self.heap_mark = rss
            self.heap_armed = HEAP_ARMED_TASKS
        if self.tracer is not None and self.tracer.task == task:
            self.tracer.after(task, self.pid, task_id)

    # -- heap accounting (armed by RSS growth) ---------------------------------
    def _heap_start(self) -> None:
        try:
            # tracemalloc's own bookkeeping (a traced call of a suspect) is not the task's.
            self.tracer_mem_before = tracemalloc.get_tracemalloc_memory() if tracemalloc.is_tracing() else 0
            self.heap_before = self.heap.in_use()  # type: ignore[union-attr]
        except Exception as exc:
            self._heap_failed(exc)

    def _heap_retained(self) -> int | None:
        before, self.heap_before = self.heap_before, None
        try:
            retained = self.heap.in_use() - before  # type: ignore[union-attr, operator]
            if tracemalloc.is_tracing() or self.tracer_mem_before:
                retained -= tracemalloc.get_tracemalloc_memory() - self.tracer_mem_before
            if self.heap_armed > 0:
                self.heap_armed -= 1
            return retained
        except Exception as exc:
            self._heap_failed(exc)
            return None

    # -- settled readings (watched task names) -----------------------------------
    def _settle_start(self) -> None:
        """Freeze the objects that exist now, so no collection during the task frees older garbage.

        ``gc.freeze()`` moves every tracked object to the permanent generation (a list splice: O(1));
        the automatic collections during the task then see only the task's own objects. Not done
        when the application froze objects itself (more frozen than the interpreter's own, see
        :data:`_INTERPRETER_FROZEN`) or disabled the collector (its choice stands).
        """
        try:
            if gc.isenabled() and gc.get_freeze_count() <= _INTERPRETER_FROZEN:
                gc.freeze()
                self.settling = True
                # A full collection also clears the interpreter's free lists; do it now too (it scans
                # nothing: everything is frozen), so both readings follow one.
                gc.collect()
        except Exception as exc:
            events.error("child.heap_settle", exc)

    def _settle_end(self) -> None:
        """Collect the task's own cyclic garbage (only objects created during the task are scanned)."""
        try:
            gc.collect()
        except Exception as exc:
            events.error("child.heap_settle", exc)

    def _settle_done(self) -> None:
        self.settling = False
        try:
            gc.unfreeze()  # back into the oldest generation (a list splice)
        except Exception as exc:
            events.error("child.heap_settle", exc)

    def _heap_failed(self, exc: Exception) -> None:
        self.heap = None
        self.heap_before = None
        self.heap_armed = 0
        events.error("child.heap_probe", exc)

    def _refresh_trace_list(self) -> None:
        names = self.board.trace_tasks()
        if names is None:
            return  # being written; look again at the next task
        self.trace_gen = self.board.trace_generation()
        self.trace_tasks = frozenset(n for n in names if not n.startswith(WATCH_MARK))
        # Watched names (and suspects) are measured on every call, with settled readings.
        self.watch_tasks = frozenset(n[len(WATCH_MARK):] if n.startswith(WATCH_MARK) else n for n in names)
        if self.tracer is not None and self.tracer.task is not None and self.tracer.task not in names:
            self.tracer.stop()

    # -- orders -------------------------------------------------------------
    def obey(self, order: Order) -> bool:
        """Take the slot's latest order into account; True if a stop was scheduled in the task's thread.

        Called by the watcher thread, by the main thread's handler and at task boundaries; under the
        orders lock, so a stop is scheduled at most once, and only while the ordered task's function runs.
        """
        with self._orders_lock:
            self.obeying = True
            try:
                return self._obey(order)
            finally:
                self.obeying = False

    def _obey(self, order: Order) -> bool:
        if order.seq == self.last_order:
            return False
        self.last_order = order.seq
        if order.action not in (ORDER_RECYCLE, ORDER_KILL):
            return False
        # A child that crossed its hard limit is not reused, whatever happens to the task.
        self.recycle_requested = True
        armed = self.armed
        if order.action != ORDER_KILL or armed is None or order.task_id != _on_board(armed):
            return False
        metric = order.reason.partition("|")[2] or _metric  # "hard_limit|rss": a fallback reading
        stop = MemoryLimitExceeded(self.task or "?", order.mem, order.limit, metric, self.pid)
        self.stop_pending = stop
        raise_in_thread(self.main_ident, delivering(stop, self._stop_delivered))
        return True

    def _stop_delivered(self) -> None:
        # Runs in the task's thread as CPython raises the stop (no lock: the thread may hold it already).
        self.stop_pending = None

    def _on_watcher_signal(self) -> None:
        """The order watcher received ORDER_SIGNAL (watcher thread)."""
        stopping = self.obey(self.board.read_order(self.index))
        if (stopping or (self.recycle_requested and self.armed is None)) and self._handler_in_place():
            # Interrupt a system call the main thread may be blocked in: its handler leaves (idle child
            # before its next job) or raises the stop at once (task in a blocking call).
            signal.pthread_kill(self.main_ident, ORDER_SIGNAL)

    def _on_watcher_error(self, exc: Exception) -> None:
        events.error("child.order_watcher", exc)

    def _handler_in_place(self) -> bool:
        return _getsignal(ORDER_SIGNAL) is self._handler

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        """ORDER_SIGNAL in the main thread: forwarded by the watcher, or sent to the process."""
        self.obey(self.board.read_order(self.index))
        with self._orders_lock:
            stop = self.stop_pending if self.armed is not None else None
            if stop is not None:
                self.stop_pending = None
                cancel_in_thread(self.main_ident)  # raised here instead, interrupting a blocking call
        if stop is not None:
            raise stop
        # Leave now only if the child is blocked before the first byte of its next job: nothing has been
        # read, so nothing is lost.
        if self.recycle_requested and self.task_id is None and self._waiting_for_job(frame):
            self._exit()

    def _check_orders(self) -> None:
        """At a task boundary: obey an order whose signal never arrived (lost, or no watcher)."""
        if self._order_seq()[0] != self.last_order:
            self.obey(self.board.read_order(self.index))

    def _handler_replaced(self, task: str | None, task_id: str) -> None:
        self.handler_warned = True
        handler = signal.getsignal(ORDER_SIGNAL)
        try:
            # The master stops signalling the main thread: the task's handler is not bothered with orders.
            self.board.set_watcher(self.index, self.watcher.native_id, main_handler=False)
            events.emit(events.ORDER_SIGNAL_REPLACED, "warning", pid=self.pid, task=task, task_id=task_id,
                        signal=signal.Signals(ORDER_SIGNAL).name, handler=_describe(handler),
                        effect="orders still reach this child through its order watcher; an idle child "
                               "asked to leave does so after its next task")
        except Exception as exc:
            events.error("child.order_signal_replaced", exc)

    def _waiting_for_job(self, frame: FrameType | None) -> bool:
        """True if ``frame`` is billiard's pipe read of a job header with no byte consumed yet."""
        if frame is None or frame.f_code.co_name != "_recv":
            return False
        local = frame.f_locals
        if local.get("size") != 4 or local.get("remaining") != 4:
            return False
        caller = frame.f_back
        if caller is None or caller.f_code.co_name != "_recv_bytes" or "buf" in caller.f_locals:
            return False
        while caller is not None:
            if caller.f_code is self._wait_code:
                return True
            caller = caller.f_back
        return False

    def _hook_wait_for_job(self, worker: Any) -> bool:
        original = getattr(worker, "wait_for_job", None)
        if original is None or not callable(original):
            return False

        def wait_for_job() -> Any:
            if not self.recycle_requested:
                self._check_orders()
            if self.recycle_requested:
                self._exit()
            if not self.ready_reported:
                self._report_ready()
            # While waiting for a job the order signal interrupts the blocking read (so an idle child
            # can leave); while a task runs it restarts interrupted system calls, so C code in the
            # task never sees EINTR because of MemGuard.
            siginterrupt(ORDER_SIGNAL, True)
            try:
                job = original()
            finally:
                siginterrupt(ORDER_SIGNAL, False)
            if job is None:
                if self.recycle_requested:
                    self._exit()
                return job
            return self._measured(job)

        worker.wait_for_job = wait_for_job
        self._wait_code = wait_for_job.__code__
        return True

    def _measured(self, req: Any) -> Any:
        """The job message with its function wrapped so the task is measured around its whole run."""
        try:
            type_, (job, i, fun, args, kwargs) = req
        except (TypeError, ValueError):
            return req
        wrapped = self._wrappers.get(fun)
        if wrapped is None:
            wrapped = self._wrappers[fun] = self._wrap(fun)
        return (type_, (job, i, wrapped, args, kwargs))

    def _wrap(self, fun: Any) -> Any:
        runtime = self

        def measured(*args: Any, **kwargs: Any) -> Any:
            # Celery's trace functions take (task name, task id, request, body, ...) and return
            # (0, result, runtime) on success, (1, ...) on failure.
            name = args[0] if args and isinstance(args[0], str) else "?"
            task_id = args[1] if len(args) > 1 and isinstance(args[1], str) else ""
            try:
                runtime.before(name, task_id)
            except Exception as exc:
                events.error("child.before_task", exc)
            returned: list[Any] = []
            try:
                _call_armed(runtime, task_id, fun, args, kwargs, returned)
            except MemoryLimitExceeded:
                if not returned:
                    raise
                # The stop landed after the task's function had returned: the task's own outcome stands.
                runtime.disarm()
            finally:
                result = returned[0] if returned else None
                ok = isinstance(result, tuple) and bool(result) and result[0] == 0
                try:
                    runtime.after(task_id, ok)
                except Exception as exc:
                    events.error("child.after_task", exc)
            return result

        return measured

    def _report_ready(self) -> None:
        self.ready_reported = True
        try:
            age = SelfProbe.age()
            if age is not None:
                self.board.set_spawn_time(self.index, age)
        except Exception as exc:
            events.error("child.spawn_time", exc)

    def _exit(self) -> None:
        # billiard replaced sys.exit in the child to record the exit code it reports.
        sys.exit(EX_RECYCLE)


def _call_armed(runtime: ChildRuntime, task_id: str, fun: Any, args: Any, kwargs: Any, returned: list[Any]) -> None:
    """Run the task's function with its stop armed; its return value goes to ``returned``.

    A frame of its own, so a stop landing in it is handled by the caller: CPython 3.13.0 can skip the
    handlers of the very frame an asynchronous exception is raised in (python/cpython#139622), never
    its callers'. The return value is stored with no check for pending exceptions in between.
    """
    runtime.armed = task_id
    try:
        returned.append(fun(*args, **kwargs))
    finally:
        runtime.disarm()


def _on_board(task_id: str) -> str:
    """``task_id`` as the board stores it (orders carry at most 40 bytes of it)."""
    return task_id.encode()[:40].decode("utf-8", "replace")


def _describe(handler: Any) -> str:
    if handler is None:
        return "installed outside Python"
    if isinstance(handler, int):
        return {int(signal.SIG_DFL): "SIG_DFL", int(signal.SIG_IGN): "SIG_IGN"}.get(int(handler), str(handler))
    return str(getattr(handler, "__qualname__", None) or repr(handler))[:200]


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
        _runtime = ChildRuntime(_board, index, getattr(proc, "_target", None), _diagnostics, _heap)
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
        rt.arm(task_id or "")
    except Exception as exc:
        events.error("child.task_prerun", exc)


def _on_postrun(sender: Any = None, task_id: str | None = None, state: str | None = None, **_: Any) -> None:
    rt = _runtime
    if rt is None:
        return
    try:
        rt.disarm()
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
