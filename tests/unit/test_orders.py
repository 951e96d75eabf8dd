"""Order delivery without a Python signal handler (celery_memguard/orders.py, worker/child_orders.py, worker/job_hook.py), in-process.

The child runtime is driven in this process as a pool child would drive it: a job
wrapper around a task function, the order watcher thread waiting in ``sigwait``, the
master's part played by writing the board and aiming ``SIGURG`` at the watcher with
``signal_thread``. The main thread's ``SIGURG`` handler is set to ``SIG_IGN`` where a test
must show that no Python handler is involved.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Iterator

import pytest

from celery_memguard import MemoryLimitExceeded, events
from celery_memguard.board import ORDER_KILL, ORDER_RECYCLE, ORDER_SIGNAL, Board
from celery_memguard.orders import OrderWatcher, delivering, raise_in_thread, signal_thread
from celery_memguard.worker.child import ChildRuntime

MiB = 1024 * 1024


@pytest.fixture(autouse=True)
def restore_handler() -> Iterator[None]:
    handler = signal.getsignal(ORDER_SIGNAL)
    yield
    signal.signal(ORDER_SIGNAL, handler)


def records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def spin(seconds: float) -> int:
    """Run Python bytecode for ``seconds`` (in its own frame: see python/cpython#139622 for why)."""
    deadline = time.monotonic() + seconds
    n = 0
    while time.monotonic() < deadline:
        n += 1
    return n


class StandIn:
    """billiard's worker as far as the job hook cares: ``wait_for_job`` returns the next job message."""

    def __init__(self) -> None:
        self.jobs: list[Any] = []

    def wait_for_job(self) -> Any:
        return self.jobs.pop(0) if self.jobs else None


def job(fun: Any, task_id: str) -> Any:
    return (2, (1, 0, fun, ("app.tasks.grow", task_id, {}, b""), {}))


def run_job(worker: StandIn, message: Any) -> Any:
    worker.jobs.append(message)
    _type, (_job, _i, fun, args, kwargs) = worker.wait_for_job()
    return fun(*args, **kwargs)


def order_kill(board: Board, rt: ChildRuntime, task_id: str) -> None:
    board.write_order(rt.index, ORDER_KILL, 310 * MiB, 300 * MiB, task_id, "hard_limit")
    signal_thread(os.getpid(), board.watcher(rt.index)[0])


class TestPrimitives:
    def test_delivering_raises_that_very_exception_in_the_thread(self) -> None:
        exc = MemoryLimitExceeded("t", 310 * MiB, 300 * MiB, "uss", 1)
        delivered: list[bool] = []
        def schedule_and_spin() -> None:
            raise_in_thread(threading.get_ident(), delivering(exc, lambda: delivered.append(True)))
            spin(5.0)

        with pytest.raises(MemoryLimitExceeded) as caught:
            schedule_and_spin()
        assert caught.value is exc and type(caught.value) is MemoryLimitExceeded and delivered == [True]
        assert "310.0 MiB (uss), above memguard_hard_limit 300.0 MiB" in str(caught.value)

    def test_watcher_receives_the_signal_aimed_at_it_and_the_main_thread_does_not(self) -> None:
        main_calls: list[int] = []
        signal.signal(ORDER_SIGNAL, lambda *_: main_calls.append(1))
        got = threading.Event()
        watcher = OrderWatcher(got.set, lambda exc: None)
        tid = watcher.start()
        assert tid and tid != threading.get_native_id()
        assert signal_thread(os.getpid(), tid) is True
        assert got.wait(5.0)
        spin(0.05)
        assert main_calls == []


class TestChildRuntime:
    def make(self, worker: StandIn | None = None) -> tuple[Board, ChildRuntime]:
        board = Board(2)
        rt = ChildRuntime(board, 1, worker)
        rt.job_hook.ready_reported = True
        return board, rt

    def test_stop_reaches_a_busy_task_without_any_python_signal_handler(self, logged: Path) -> None:
        """SIG_IGN in the main thread: the watcher alone raises MemoryLimitExceeded in the running task."""
        worker = StandIn()
        board, rt = self.make(worker)
        signal.signal(ORDER_SIGNAL, signal.SIG_IGN)
        task_id = str(uuid.uuid4())

        def trace(name: str, tid: str, *_: Any) -> Any:
            try:
                order_kill(board, rt, tid)
                spin(5.0)
            except MemoryLimitExceeded as exc:
                return (1, exc, 0.0)
            return (0, "not stopped", 0.0)

        started = time.monotonic()
        state, exc, _ = run_job(worker, job(trace, task_id))
        assert state == 1 and isinstance(exc, MemoryLimitExceeded), exc
        assert time.monotonic() - started < 2.0
        assert (exc.task, exc.mem, exc.limit, exc.metric) == ("app.tasks.grow", 310 * MiB, 300 * MiB, "uss")
        assert rt.orders.recycle_requested and rt.orders.armed is None

    def test_no_stop_outside_the_ordered_task(self, logged: Path) -> None:
        """A kill order for another task, or arriving between tasks, raises nothing; the child still leaves."""
        worker = StandIn()
        board, rt = self.make(worker)
        signal.signal(ORDER_SIGNAL, signal.SIG_IGN)

        def trace(name: str, tid: str, *_: Any) -> Any:
            order_kill(board, rt, "some-other-task")
            return (0, spin(0.3), 0.0)

        assert run_job(worker, job(trace, str(uuid.uuid4())))[0] == 0
        order_kill(board, rt, "a-task-that-finished")
        spin(0.3)  # between tasks: nothing raised here
        assert rt.orders.recycle_requested

    def test_order_whose_signal_was_lost_is_obeyed_at_the_next_task_boundary(self, logged: Path) -> None:
        worker = StandIn()
        board, rt = self.make(worker)
        board.write_order(rt.index, ORDER_RECYCLE, 200 * MiB, 150 * MiB, None, "soft_limit")  # no signal sent
        with pytest.raises(SystemExit):
            worker.wait_for_job()
        assert rt.orders.recycle_requested

    def test_a_task_replacing_the_order_signal_handler_is_named_once(self, logged: Path) -> None:
        worker = StandIn()
        board, rt = self.make(worker)
        assert board.watcher(rt.index)[1] is True

        def trace(name: str, tid: str, *_: Any) -> Any:
            signal.signal(ORDER_SIGNAL, lambda *_: None)
            return (0, None, 0.0)

        first, second = str(uuid.uuid4()), str(uuid.uuid4())
        run_job(worker, job(trace, first))
        run_job(worker, job(trace, second))
        warnings = [r for r in records(logged) if r["event"] == "memguard.order_signal_replaced"]
        assert len(warnings) == 1, warnings
        assert warnings[0]["task"] == "app.tasks.grow" and warnings[0]["task_id"] == first
        assert warnings[0]["signal"] == "SIGURG" and "lambda" in warnings[0]["handler"]
        assert board.watcher(rt.index) == (rt.orders.watcher.native_id, False)  # the master stops signalling main
        # Orders still arrive, through the watcher.
        board.write_order(rt.index, ORDER_RECYCLE, 200 * MiB, 150 * MiB, None, "soft_limit")
        signal_thread(os.getpid(), rt.orders.watcher.native_id)
        deadline = time.monotonic() + 5
        while not rt.orders.recycle_requested and time.monotonic() < deadline:
            time.sleep(0.01)
        assert rt.orders.recycle_requested
