"""Pool-child side: billiard's ``wait_for_job``, wrapped to measure each task and obey orders between tasks.

Each job's function (Celery's trace function) is wrapped to measure the task
around its whole run (:meth:`ChildRuntime.before` / :meth:`~ChildRuntime.after`,
see :mod:`celery_memguard.worker.child`), with the task's stop armed only while
the function itself runs. This costs less than Celery's ``task_prerun`` /
``task_postrun`` dispatch, which MemGuard therefore does not use (it falls back
to them only if the hook is impossible).

Between jobs the hook obeys an order whose signal was lost, leaves where
billiard's own ``max_tasks_per_child`` recycle does when a recycle was ordered
(after the finished task's result went to the master, before the next job is
taken), and lets the order signal interrupt the blocking read of the next job
(only there: while a task runs, interrupted system calls are restarted, so C code
in the task never sees EINTR because of MemGuard).
"""

from __future__ import annotations

import dis
import sys
from types import CodeType, FrameType
from typing import TYPE_CHECKING, Any

from .. import events
from ..board import ORDER_SIGNAL
from ..exceptions import MemoryLimitExceeded
from ..forensics import EX_RECYCLE
from ..probes import SelfProbe
from .child_orders import ChildOrders, siginterrupt

if TYPE_CHECKING:
    from .child import ChildRuntime

__all__ = ["JobHook", "leave"]


class JobHook:
    """Wraps one billiard worker's ``wait_for_job`` for a child's runtime."""

    def __init__(self, runtime: "ChildRuntime") -> None:
        self.runtime = runtime
        self.ready_reported = False
        self._wrappers: dict[Any, Any] = {}
        self._wait_code: object = None

    def install(self, worker: Any) -> bool:
        """Wrap ``worker.wait_for_job``; False if the worker has none (MemGuard then uses task signals)."""
        original = getattr(worker, "wait_for_job", None)
        if original is None or not callable(original):
            return False
        orders = self.runtime.orders

        def wait_for_job() -> Any:
            if not orders.recycle_requested:
                orders.check()
            if orders.recycle_requested:
                leave()
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
                if orders.recycle_requested:
                    leave()
                return job
            return self._measured(job)

        worker.wait_for_job = wait_for_job
        self._wait_code = wait_for_job.__code__
        return True

    def leave_if_idle(self, frame: FrameType | None) -> None:
        """Leave now if the child is blocked before the first byte of its next job (nothing is lost)."""
        if self.runtime.task_id is None and self.waiting_for_job(frame):
            leave()

    def waiting_for_job(self, frame: FrameType | None) -> bool:
        """True if ``frame`` waits for the next job with no byte of it consumed yet.

        Two places: billiard's pipe read of a job header (``_recv``, nothing read), and, in the pool of
        transports without an event loop (one job pipe shared by the children behind a read lock),
        ``SimpleQueue.get_payload`` still acquiring that lock: an idle child that is not the one holding
        the lock waits there, and would otherwise stay until another child takes a job.
        """
        if frame is None:
            return False
        if frame.f_code.co_name == "__enter__" and frame.f_back is not None:  # the lock's own __enter__
            frame = frame.f_back
        if frame.f_code.co_name == "get_payload":
            # Before the read, and the lock not acquired (leaving inside its __enter__ would keep it held).
            if frame.f_lasti >= _read_offset(frame.f_code) or _holds_read_lock(frame):
                return False
            caller = frame.f_back
        else:
            if frame.f_code.co_name != "_recv":
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
        runtime = self.runtime
        orders = runtime.orders

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
                _call_armed(orders, task_id, fun, args, kwargs, returned)
            except MemoryLimitExceeded:
                if not returned:
                    raise
                # The stop landed after the task's function had returned: the task's own outcome stands.
                orders.disarm()
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
                self.runtime.board.set_spawn_time(self.runtime.index, age)
        except Exception as exc:
            events.error("child.spawn_time", exc)


def _call_armed(orders: ChildOrders, task_id: str, fun: Any, args: Any, kwargs: Any, returned: list[Any]) -> None:
    """Run the task's function with its stop armed; its return value goes to ``returned``.

    A frame of its own, so a stop landing in it is handled by the caller: CPython 3.13.0 can skip the
    handlers of the very frame an asynchronous exception is raised in (python/cpython#139622), never
    its callers'. The return value is stored with no check for pending exceptions in between.
    """
    orders.armed = task_id
    try:
        returned.append(fun(*args, **kwargs))
    finally:
        orders.disarm()


def leave() -> None:
    """Leave the pool now, as a planned recycle (billiard replaced sys.exit in the child to record the
    exit code it reports)."""
    sys.exit(EX_RECYCLE)


_read_offsets: dict[CodeType, int] = {}


def _read_offset(code: CodeType) -> int:
    """Bytecode offset in billiard's ``get_payload`` where the pipe read starts (0 if not found: never idle)."""
    offset = _read_offsets.get(code)
    if offset is None:
        offset = next((i.offset for i in dis.get_instructions(code) if i.argval == "recv_bytes"), 0)
        _read_offsets[code] = offset
    return offset


def _holds_read_lock(frame: FrameType) -> bool:
    """Whether this thread holds the read lock of the queue whose ``get_payload`` runs in ``frame`` (True if unsure)."""
    lock = getattr(getattr(frame.f_locals.get("self"), "_rlock", None), "_semlock", None)
    is_mine = getattr(lock, "_is_mine", None)
    try:
        return is_mine is None or bool(is_mine())
    except Exception:
        return True
