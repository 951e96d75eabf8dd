"""Pool-child side: obeying the master's orders (recycle, stop this task).

Orders are written by the master to the child's board slot and announced with
``ORDER_SIGNAL`` aimed at the child's **order watcher** thread (see
:mod:`celery_memguard.orders`), which waits for it in ``sigwait``: no Python
signal handler has to run, so orders reach children on which CPython cannot run
one (3.13.0, children forked from billiard's supervisor thread on transports
without an event loop) and tasks that installed their own handler for the
signal. The watcher

* stops a task by raising :class:`MemoryLimitExceeded` in the task's thread
  (``PyThreadState_SetAsyncExc``), only while that very task's function runs: the
  job hook (:mod:`celery_memguard.worker.job_hook`) *arms* the stop just before
  calling it and *disarms* it (withdrawing an exception not raised yet) right
  after, under one lock with the watcher's check, so the exception can never land
  in billiard's or MemGuard's code between tasks;
* marks a recycle; the child leaves where billiard's own ``max_tasks_per_child``
  recycle does: after the finished task's result went to the master, before the
  next job is taken. Each task boundary also compares the slot's order number with
  the last one obeyed (:meth:`ChildOrders.check`), so an order whose signal was
  lost is obeyed there;
* for an idle child, and to interrupt a task blocked in a system call, forwards the
  signal to the main thread, whose handler (where CPython can run it) leaves at
  once if the child is blocked before the first byte of its next job (nothing has
  been read, so nothing is lost; the master repeats the signal each poll until the
  child has left), or raises the pending stop at once. Blocked before its next job
  means in the pipe read of a job header with nothing read, or, in the pool of
  transports without an event loop (one job pipe shared behind a read lock), still
  waiting for that lock (see :mod:`celery_memguard.worker.job_hook`). The interrupted
  system call runs the handler itself, also on CPython 3.13.0 in a child forked from
  a non-main thread. Where the handler cannot run (a task replaced it, which is
  reported once as ``memguard.order_signal_replaced`` naming the task) an idle child
  leaves after its next job instead, and a stop lands when the blocking call returns.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType
from typing import Any, Callable

from .. import events
from ..board import ORDER_KILL, ORDER_RECYCLE, ORDER_SIGNAL, Board, Order
from ..exceptions import MemoryLimitExceeded
from ..orders import OrderWatcher, cancel_in_thread, delivering, raise_in_thread

__all__ = ["ChildOrders", "siginterrupt"]

siginterrupt = getattr(signal, "siginterrupt", lambda _sig, _flag: None)
try:  # the C function: signal.getsignal maps the result to an enum, ~10 us for a Python handler
    from _signal import getsignal as _getsignal
except ImportError:  # pragma: no cover
    _getsignal = signal.getsignal


class ChildOrders:
    """One child's side of the orders: the watcher thread, the main thread's handler, the armed stop.

    ``running_task`` gives the name of the task now running (for the stop's message); ``leave_if_idle``
    is called with the interrupted frame when the main thread's handler finds a recycle ordered and no
    task running (the job hook leaves if the child is blocked before its next job).
    """

    def __init__(self, board: Board, index: int, pid: int, *, metric: str,
                 running_task: Callable[[], str | None],
                 leave_if_idle: Callable[[FrameType | None], None]) -> None:
        self.board = board
        self.index = index
        self.pid = pid
        self.metric = metric
        self._running_task = running_task
        self._leave_if_idle = leave_if_idle
        self.main_ident = threading.get_ident()
        self._lock = threading.RLock()  # re-entrant: the main thread's handler may run inside disarm()
        self.armed: str | None = None  # id of the task whose function is running (a stop may be raised in it)
        self.stop_pending: MemoryLimitExceeded | None = None  # scheduled in the main thread, not raised yet
        self.obeying = False  # obey() is running (see disarm())
        self.handler_warned = False
        self.last_order = 0
        self.recycle_requested = False
        self._order_seq = board.order_seq_reader(index)
        self._handler = self._on_signal
        signal.signal(ORDER_SIGNAL, self._handler)
        siginterrupt(ORDER_SIGNAL, False)
        self.watcher = OrderWatcher(self._on_watcher_signal, self._on_watcher_error)
        try:
            board.set_watcher(index, self.watcher.start(), main_handler=True)
        except Exception as exc:  # no watcher: orders reach the child by its signal handler and task boundaries
            events.error("child.order_watcher", exc)

    # -- the task's function (per task) ------------------------------------
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
            with self._lock:
                if self.stop_pending is not None:
                    self.stop_pending = None
                    cancel_in_thread(self.main_ident)

    def check(self) -> None:
        """At a task boundary: obey an order whose signal never arrived (lost, or no watcher)."""
        if self._order_seq()[0] != self.last_order:
            self.obey(self.board.read_order(self.index))

    # -- obeying ----------------------------------------------------------------
    def obey(self, order: Order) -> bool:
        """Take the slot's latest order into account; True if a stop was scheduled in the task's thread.

        Called by the watcher thread, by the main thread's handler and at task boundaries; under the
        orders lock, so a stop is scheduled at most once, and only while the ordered task's function runs.
        """
        with self._lock:
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
        metric = order.reason.partition("|")[2] or self.metric  # "hard_limit|rss": a fallback reading
        stop = MemoryLimitExceeded(self._running_task() or "?", order.mem, order.limit, metric, self.pid)
        self.stop_pending = stop
        raise_in_thread(self.main_ident, delivering(stop, self._stop_delivered))
        return True

    def _stop_delivered(self) -> None:
        # Runs in the task's thread as CPython raises the stop (no lock: the thread may hold it already).
        self.stop_pending = None

    # -- signals ----------------------------------------------------------------
    def _on_watcher_signal(self) -> None:
        """The order watcher received ORDER_SIGNAL (watcher thread)."""
        stopping = self.obey(self.board.read_order(self.index))
        if (stopping or (self.recycle_requested and self.armed is None)) and self.handler_in_place():
            # Interrupt a system call the main thread may be blocked in: its handler leaves (idle child
            # before its next job) or raises the stop at once (task in a blocking call).
            signal.pthread_kill(self.main_ident, ORDER_SIGNAL)

    def _on_watcher_error(self, exc: Exception) -> None:
        events.error("child.order_watcher", exc)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        """ORDER_SIGNAL in the main thread: forwarded by the watcher, or sent to the process."""
        self.obey(self.board.read_order(self.index))
        with self._lock:
            stop = self.stop_pending if self.armed is not None else None
            if stop is not None:
                self.stop_pending = None
                cancel_in_thread(self.main_ident)  # raised here instead, interrupting a blocking call
        if stop is not None:
            raise stop
        if self.recycle_requested:
            self._leave_if_idle(frame)

    def handler_in_place(self) -> bool:
        """Whether the main thread's ORDER_SIGNAL handler is still this child's."""
        return _getsignal(ORDER_SIGNAL) is self._handler

    def handler_replaced(self, task: str | None, task_id: str) -> None:
        """A task replaced the handler: say so once, and have the master stop signalling the main thread."""
        self.handler_warned = True
        handler = signal.getsignal(ORDER_SIGNAL)
        try:
            self.board.set_watcher(self.index, self.watcher.native_id, main_handler=False)
            events.emit(events.ORDER_SIGNAL_REPLACED, "warning", pid=self.pid, task=task, task_id=task_id,
                        signal=signal.Signals(ORDER_SIGNAL).name, handler=_describe(handler),
                        effect="orders still reach this child through its order watcher; an idle child "
                               "asked to leave does so after its next task")
        except Exception as exc:
            events.error("child.order_signal_replaced", exc)


def _on_board(task_id: str) -> str:
    """``task_id`` as the board stores it (orders carry at most 40 bytes of it)."""
    return task_id.encode()[:40].decode("utf-8", "replace")


def _describe(handler: Any) -> str:
    if handler is None:
        return "installed outside Python"
    if isinstance(handler, int):
        return {int(signal.SIG_DFL): "SIG_DFL", int(signal.SIG_IGN): "SIG_IGN"}.get(int(handler), str(handler))
    return str(getattr(handler, "__qualname__", None) or repr(handler))[:200]
