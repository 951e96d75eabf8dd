"""Tests for celery_memguard.actions.Actuator with a fake kill function and a real Board.

No signal is ever sent: the fake records ``(pid, signum)``. Events go to a JSON
log file in tmp_path, swapped in as the process-wide event log.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import Any, Iterator

import pytest

from celery_memguard import events
from celery_memguard.actions import Actuator
from celery_memguard.board import ORDER_KILL, ORDER_NONE, ORDER_RECYCLE, ORDER_SIGNAL, Board, Order
from celery_memguard.samples import Action, Decision

MiB = 1024 * 1024


class FakeKill:
    """Records signals instead of sending them; optionally raises."""

    def __init__(self, raises: BaseException | None = None) -> None:
        self.calls: list[tuple[int, int]] = []
        self.raises = raises

    def __call__(self, pid: int, signum: int) -> None:
        self.calls.append((pid, signum))
        if self.raises is not None:
            raise self.raises


class EventFile:
    """The process-wide event log, redirected to a JSON file."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def records(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines()]

    def names(self) -> list[str]:
        return [r["event"] for r in self.records()]


@pytest.fixture
def logged(event_log: Path) -> EventFile:
    return EventFile(event_log)


def decision(action: Action, *, pid: int = 4242, task_id: str | None = "id-7", reason: str = "hard_limit",
             mem: int = 530 * MiB, limit: int = 512 * MiB) -> Decision:
    return Decision(action=action, pid=pid, reason=reason, mem=mem, limit=limit,
                    task="app.tasks.grow" if task_id else None, task_id=task_id, tasks_run=12, lifetime=33.33)


class TestActuator:
    """Actuator.apply(decision, pool_index)."""

    def test_dry_run_would_kill_once_per_child_and_task(self, logged: EventFile) -> None:
        """Dry run: the escalation of a task that (of course) was not stopped is not a second would_kill;
        the same child's next task, or another child, is logged again. It used to log a second
        would_kill (signal SIGKILL) after kill_grace for every long task, against the docs."""
        kill = FakeKill()
        act = Actuator(Board(2), metric="uss", dry_run=True, kill=kill)
        act.apply(decision(Action.KILL), 0)
        act.apply(decision(Action.FORCE_KILL), 0)
        act.apply(decision(Action.KILL, task_id="id-8"), 0)
        act.apply(decision(Action.FORCE_KILL, pid=99, task_id="id-8"), 1)
        assert [("id-7", 4242, "MemoryLimitExceeded"), ("id-8", 4242, "MemoryLimitExceeded"),
                ("id-8", 99, "SIGKILL")] == [(r["task_id"], r["pid"], r["signal"]) for r in logged.records()]
        assert ["memguard.would_kill"] * 3 == logged.names()
        assert [] == kill.calls

    def test_recycle_writes_order_and_signals(self, logged: EventFile) -> None:
        """RECYCLE writes ORDER_RECYCLE to the child's slot and sends SIGURG."""
        board, kill = Board(4), FakeKill()
        Actuator(board, metric="uss", dry_run=False, kill=kill).apply(
            decision(Action.RECYCLE, reason="soft_limit", mem=300 * MiB, limit=256 * MiB), 2)
        order = board.read_order(2)
        assert Order(order.seq, ORDER_RECYCLE, 300 * MiB, 256 * MiB, "id-7", "soft_limit") == order
        assert order.seq > 0
        assert [(4242, signal.SIGURG)] == kill.calls
        assert signal.SIGURG == ORDER_SIGNAL
        assert [ORDER_NONE, ORDER_NONE, ORDER_NONE] == [board.read_order(i).action for i in (0, 1, 3)]

    def test_recycle_event(self, logged: EventFile) -> None:
        """A recycle logs memguard.child_recycled with the documented keys."""
        Actuator(Board(1), metric="pss", dry_run=False, kill=FakeKill()).apply(
            decision(Action.RECYCLE, reason="soft_limit", mem=300 * MiB, limit=256 * MiB), 0)
        (record,) = logged.records()
        assert {"event": "memguard.child_recycled", "level": "warning", "pid": 4242, "reason": "soft_limit",
                "mem_mib": 300.0, "limit_mib": 256.0, "metric": "pss", "tasks_run": 12, "lifetime_s": 33.3,
                "task": "app.tasks.grow", "task_id": "id-7"} == {
            k: v for k, v in record.items() if k not in ("ts", "source_pid", "hostname")}

    def test_order_signal_aimed_at_the_watcher_and_the_main_thread(self, logged: EventFile) -> None:
        """With a watcher recorded, ORDER_SIGNAL goes to it (tid) and, while MemGuard's handler is the main
        thread's, to the main thread (tid == pid) too; without one, to the process (tid 0)."""
        board, sent = Board(3), []
        board.set_watcher(1, 777, main_handler=True)
        board.set_watcher(2, 778, main_handler=False)
        actuator = Actuator(board, metric="uss", dry_run=False, notify=lambda pid, tid: sent.append((pid, tid)))
        actuator.apply(decision(Action.KILL), 1)
        actuator.apply(decision(Action.KILL, pid=5151), 2)
        actuator.apply(decision(Action.KILL, pid=6161), 0)
        actuator.remind(4242, 1)
        assert [(4242, 777), (4242, 4242), (5151, 778), (6161, 0), (4242, 777), (4242, 4242)] == sent

    def test_kill_writes_order_with_task_id(self, logged: EventFile) -> None:
        """KILL writes ORDER_KILL naming the task, memory and limit, then sends SIGURG."""
        board, kill = Board(2), FakeKill()
        Actuator(board, metric="uss", dry_run=False, kill=kill).apply(decision(Action.KILL), 1)
        order = board.read_order(1)
        assert (ORDER_KILL, 530 * MiB, 512 * MiB, "id-7", "hard_limit") == (
            order.action, order.mem, order.limit, order.task_id, order.reason)
        assert [(4242, ORDER_SIGNAL)] == kill.calls

    def test_kill_event(self, logged: EventFile) -> None:
        """A kill logs memguard.task_killed with the task, memory and limit."""
        Actuator(Board(1), metric="uss", dry_run=False, kill=FakeKill()).apply(decision(Action.KILL), 0)
        (record,) = logged.records()
        assert ("memguard.task_killed", "error", "app.tasks.grow", "id-7", 4242, 530.0, 512.0, "uss",
                "MemoryLimitExceeded") == (record["event"], record["level"], record["task"], record["task_id"],
                                           record["pid"], record["mem_mib"], record["limit_mib"], record["metric"],
                                           record["signal"])

    def test_force_kill_sends_sigkill(self, logged: EventFile) -> None:
        """FORCE_KILL sends SIGKILL and leaves the board's order alone."""
        board, kill = Board(1), FakeKill()
        seq = board.write_order(0, ORDER_KILL, 1, 1, "id-7", "hard_limit")
        Actuator(board, metric="uss", dry_run=False, kill=kill).apply(decision(Action.FORCE_KILL), 0)
        assert [(4242, signal.SIGKILL)] == kill.calls
        assert seq == board.read_order(0).seq
        assert [("memguard.task_killed", "SIGKILL")] == [(r["event"], r["signal"]) for r in logged.records()]

    @pytest.mark.parametrize(
        ("action", "event", "signal_key"),
        [(Action.RECYCLE, "memguard.would_recycle", None), (Action.KILL, "memguard.would_kill", "MemoryLimitExceeded"),
         (Action.FORCE_KILL, "memguard.would_kill", "SIGKILL")],
    )
    def test_dry_run_only_logs(self, logged: EventFile, action: Action, event: str, signal_key: str | None) -> None:
        """In dry run nothing is signalled or ordered; a would_* event with the same keys is logged."""
        board, kill = Board(1), FakeKill()
        Actuator(board, metric="uss", dry_run=True, kill=kill).apply(decision(action), 0)
        assert [] == kill.calls
        assert Order(0, ORDER_NONE, 0, 0, "", "") == board.read_order(0)
        (record,) = logged.records()
        assert (event, 4242, "id-7", 530.0, 512.0) == (record["event"], record["pid"], record["task_id"],
                                                        record["mem_mib"], record["limit_mib"])
        assert signal_key == record.get("signal")

    @pytest.mark.parametrize("action", [Action.RECYCLE, Action.KILL, Action.FORCE_KILL])
    def test_process_lookup_error_swallowed(self, logged: EventFile, action: Action) -> None:
        """A child that is already gone when signalled is not an error."""
        kill = FakeKill(raises=ProcessLookupError(3, "No such process"))
        Actuator(Board(1), metric="uss", dry_run=False, kill=kill).apply(decision(action), 0)
        assert 1 == len(kill.calls)

    def test_other_kill_errors_propagate(self, logged: EventFile) -> None:
        """A permission error is not hidden by the actuator (the monitor reports it as memguard.error)."""
        kill = FakeKill(raises=PermissionError(1, "Operation not permitted"))
        with pytest.raises(PermissionError):
            Actuator(Board(1), metric="uss", dry_run=False, kill=kill).apply(decision(Action.KILL), 0)

    def test_unregistered_child_kill_is_sigkill(self, logged: EventFile) -> None:
        """A child without a board slot cannot read orders: a KILL becomes SIGKILL."""
        kill = FakeKill()
        Actuator(Board(1), metric="uss", dry_run=False, kill=kill).apply(decision(Action.KILL), None)
        Actuator(None, metric="uss", dry_run=False, kill=kill).apply(decision(Action.KILL, pid=5), 0)
        assert [(4242, signal.SIGKILL), (5, signal.SIGKILL)] == kill.calls

    def test_unregistered_child_recycle_is_logged_only(self, logged: EventFile) -> None:
        """A child without a board slot cannot be asked to recycle; nothing is signalled."""
        kill = FakeKill()
        Actuator(None, metric="uss", dry_run=False, kill=kill).apply(decision(Action.RECYCLE), None)
        assert [] == kill.calls
        assert ["memguard.child_recycled"] == logged.names()

    def test_each_order_gets_a_new_sequence(self, logged: EventFile) -> None:
        """Successive orders to one slot carry increasing sequence numbers, so the child never ignores a new one."""
        board = Board(1)
        actuator = Actuator(board, metric="uss", dry_run=False, kill=FakeKill())
        actuator.apply(decision(Action.RECYCLE, reason="soft_limit"), 0)
        first = board.read_order(0).seq
        actuator.apply(decision(Action.KILL, task_id="id-8"), 0)
        second = board.read_order(0)
        assert (ORDER_KILL, "id-8") == (second.action, second.task_id)
        assert second.seq > first

    def test_remind_resends_order_signal(self, logged: EventFile) -> None:
        """remind() repeats the order signal without writing a new order or logging."""
        board, kill = Board(1), FakeKill()
        actuator = Actuator(board, metric="uss", dry_run=False, kill=kill)
        actuator.apply(decision(Action.RECYCLE, task_id=None, reason="soft_limit"), 0)
        seq = board.read_order(0).seq
        actuator.remind(4242)
        actuator.remind(4242)
        assert [(4242, ORDER_SIGNAL)] * 3 == kill.calls
        assert seq == board.read_order(0).seq
        assert ["memguard.child_recycled"] == logged.names()

    def test_remind_no_op_in_dry_run_or_without_board(self, logged: EventFile) -> None:
        """remind() sends nothing in dry run, or when there is no board to hold an order."""
        kill = FakeKill()
        Actuator(Board(1), metric="uss", dry_run=True, kill=kill).remind(4242)
        Actuator(None, metric="uss", dry_run=False, kill=kill).remind(4242)
        assert [] == kill.calls

    def test_remind_gone_child_swallowed(self, logged: EventFile) -> None:
        """Reminding a child that already exited is not an error."""
        kill = FakeKill(raises=ProcessLookupError(3, "No such process"))
        Actuator(Board(1), metric="uss", dry_run=False, kill=kill).remind(4242)
        assert [(4242, ORDER_SIGNAL)] == kill.calls
