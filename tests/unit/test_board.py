"""Tests for celery_memguard.board.Board: the master/children shared-memory table.

Most tests use one process (the board is plain memory); one forks a real child
that writes through the inherited mapping while the parent reads it.
"""

from __future__ import annotations

import os
import signal

import pytest

from celery_memguard import board as board_module
from celery_memguard.board import (
    ORDER_KILL,
    ORDER_NONE,
    ORDER_RECYCLE,
    ORDER_SIGNAL,
    RING_SIZE,
    SLOT_SIZE,
    Board,
    CurrentTask,
    Order,
)
from celery_memguard.samples import TaskSample

MiB = 1024 * 1024


def finish(b: Board, index: int, pid: int, n: int, *, peak: int | None = 0, ok: bool = True) -> None:
    """Append the finished-task record number ``n`` to slot ``index``."""
    b.task_finished(index, pid, f"app.tasks.t{n}", f"id-{n}", 100.0 + n, 0.5, n * MiB, (n + 1) * MiB,
                    (n + 2) * MiB if peak == 0 else peak, ok, n + 1, 1.0)


class TestBoardCurrentTask:
    """claim / task_started / current."""

    def test_fresh_board_reads_empty(self) -> None:
        """An unclaimed slot reads as pid 0, idle."""
        b = Board(2)
        assert CurrentTask(0, False, None, None, 0.0, 0, 0, 0.0) == b.current(1)

    def test_claim_then_idle(self) -> None:
        """A claimed slot shows the child's pid, idle, and its spawn time."""
        b = Board(4)
        b.claim(2, 4242, 17.5)
        assert CurrentTask(4242, False, None, None, 0.0, 0, 0, 17.5) == b.current(2)

    def test_task_started_round_trip(self) -> None:
        """task_started is read back by current() with every field."""
        b = Board(4)
        b.claim(3, 4242, 17.5)
        b.task_started(3, 4242, "app.tasks.add", "d6f0c1a0-8d58-4f8f-9d4b-2a3f7c1e5b11", 20.25, 80 * MiB, 7, 17.5)
        assert CurrentTask(4242, True, "app.tasks.add", "d6f0c1a0-8d58-4f8f-9d4b-2a3f7c1e5b11", 20.25, 80 * MiB, 7,
                           17.5) == b.current(3)

    def test_task_finished_clears_current(self) -> None:
        """After task_finished the slot is idle again with the new tasks_run."""
        b = Board(1)
        b.claim(0, 11, 1.0)
        b.task_started(0, 11, "app.tasks.add", "id-1", 2.0, MiB, 0, 1.0)
        finish(b, 0, 11, 0)
        assert CurrentTask(11, False, None, None, 0.0, 0, 1, 1.0) == b.current(0)

    def test_slots_are_independent(self) -> None:
        """Writing one slot does not disturb its neighbours."""
        b = Board(3)
        for i in range(3):
            b.claim(i, 100 + i, float(i))
        b.task_started(1, 101, "app.tasks.mid", "id-mid", 5.0, MiB, 0, 1.0)
        finish(b, 1, 101, 0)
        b.task_started(1, 101, "app.tasks.mid", "id-mid2", 6.0, MiB, 1, 1.0)
        assert [100, 101, 102] == [b.current(i).pid for i in range(3)]  # type: ignore[union-attr]
        assert [False, True, False] == [b.current(i).busy for i in range(3)]  # type: ignore[union-attr]
        assert [0, 1, 0] == [b.drain(i, 0)[0] for i in range(3)]

    def test_long_names_truncated(self) -> None:
        """Task ids beyond 40 bytes and names beyond 128 bytes are truncated, not an error."""
        b = Board(1)
        b.claim(0, 1, 0.0)
        b.task_started(0, 1, "n" * 300, "i" * 100, 1.0, 0, 0, 0.0)
        current = b.current(0)
        assert current is not None
        assert ("n" * 128, "i" * 40) == (current.task, current.task_id)

    def test_claim_resets_previous_child(self) -> None:
        """A replacement child claiming a slot wipes the old child's task and order, but keeps its records."""
        b = Board(1)
        b.claim(0, 1, 0.0)
        b.task_started(0, 1, "app.tasks.a", "id-a", 1.0, MiB, 0, 0.0)
        finish(b, 0, 1, 0)
        b.write_order(0, ORDER_KILL, 5, 4, "id-a", "hard_limit")
        b.claim(0, 2, 9.0)
        assert CurrentTask(2, False, None, None, 0.0, 0, 0, 9.0) == b.current(0)
        count, records = b.drain(0, 0)
        assert (1, [1]) == (count, [r.pid for r in records])
        assert ORDER_NONE == b.read_order(0).action

    @pytest.mark.parametrize("index", [-1, 4])
    def test_index_out_of_range(self, index: int) -> None:
        """A pool index outside the board is an IndexError naming the slot count."""
        b = Board(4)
        with pytest.raises(IndexError, match="4 slots"):
            b.current(index)

    def test_zero_slots_rejected(self) -> None:
        """A board needs at least one slot."""
        with pytest.raises(ValueError):
            Board(0)

    def test_torn_write_returns_none(self) -> None:
        """A slot caught mid-write (odd sequence) reads as None rather than garbage."""
        b = Board(1)
        b.claim(0, 1, 0.0)
        b._bump(board_module._HEAD_SEQ)  # a writer is in the middle of an update
        assert None is b.current(0)

    def test_torn_ring_drain_returns_nothing(self) -> None:
        """A ring caught mid-append drains nothing and keeps the caller's position."""
        b = Board(1)
        b.claim(0, 1, 0.0)
        finish(b, 0, 1, 0)
        b._bump(board_module._RING_SEQ)
        assert (0, []) == b.drain(0, 0)

    def test_claim_recovers_slot_left_torn_by_killed_child(self) -> None:
        """A new child claiming a slot whose previous owner died mid-write makes it readable again."""
        b = Board(1)
        b.claim(0, 1, 0.0)
        b._bump(board_module._HEAD_SEQ)  # child 1 SIGKILLed between the two bumps of task_started
        b._bump(board_module._RING_SEQ)  # ... or of task_finished
        b.claim(0, 2, 5.0)
        b.task_started(0, 2, "app.tasks.b", "id-b", 6.0, MiB, 0, 5.0)
        finish(b, 0, 2, 0)
        assert 2 == b.current(0).pid  # type: ignore[union-attr]
        assert 1 == b.drain(0, 0)[0]


class TestBoardRing:
    """task_finished / drain."""

    def test_records_drained_in_order(self) -> None:
        """Finished tasks come back oldest first with every field."""
        b = Board(2)
        b.claim(1, 77, 1.0)
        for n in range(3):
            finish(b, 1, 77, n)
        count, records = b.drain(1, 0)
        assert 3 == count
        assert [TaskSample(77, f"app.tasks.t{n}", f"id-{n}", 100.0 + n, 0.5, n * MiB, (n + 1) * MiB, (n + 2) * MiB,
                           True) for n in range(3)] == records

    def test_drain_since(self) -> None:
        """Draining from a count returns only newer records; draining again returns nothing."""
        b = Board(1)
        b.claim(0, 5, 0.0)
        for n in range(5):
            finish(b, 0, 5, n)
        count, first = b.drain(0, 0)
        assert (5, 5) == (count, len(first))
        finish(b, 0, 5, 5)
        count, second = b.drain(0, count)
        assert (6, ["id-5"]) == (count, [r.task_id for r in second])
        assert (6, []) == b.drain(0, count)

    def test_peak_none_and_failure(self) -> None:
        """A missing peak (reset not permitted) and a failed task round-trip as None and False."""
        b = Board(1)
        b.claim(0, 5, 0.0)
        finish(b, 0, 5, 0, peak=None, ok=False)
        record = b.drain(0, 0)[1][0]
        assert (None, False) == (record.per_task_peak, record.succeeded)

    def test_wrap_around_loses_only_oldest(self) -> None:
        """Appending more than RING_SIZE records without draining keeps the newest RING_SIZE."""
        b = Board(1)
        b.claim(0, 5, 0.0)
        total = RING_SIZE + 10
        for n in range(total):
            finish(b, 0, 5, n)
        count, records = b.drain(0, 0)
        assert total == count
        assert [f"id-{n}" for n in range(10, total)] == [r.task_id for r in records]

    def test_wrap_around_after_partial_drain(self) -> None:
        """A reader that drained part of the ring then fell behind gets the newest RING_SIZE, in order."""
        b = Board(1)
        b.claim(0, 5, 0.0)
        for n in range(20):
            finish(b, 0, 5, n)
        since, _ = b.drain(0, 0)
        for n in range(20, 20 + RING_SIZE + 5):
            finish(b, 0, 5, n)
        count, records = b.drain(0, since)
        assert [f"id-{n}" for n in range(count - RING_SIZE, count)] == [r.task_id for r in records]

    def test_drain_since_beyond_count(self) -> None:
        """A stale position beyond the count (the slot was re-claimed) returns the current count."""
        b = Board(1)
        b.claim(0, 5, 0.0)
        finish(b, 0, 5, 0)
        assert (1, []) == b.drain(0, 40)

    def test_slot_size_is_cache_aligned(self) -> None:
        """Slots are a multiple of 64 bytes so children do not share cache lines."""
        assert 0 == SLOT_SIZE % 64


class TestBoardOrders:
    """write_order / read_order."""

    def test_fresh_slot_has_no_order(self) -> None:
        """An unwritten order is ORDER_NONE with sequence 0."""
        assert Order(0, ORDER_NONE, 0, 0, "", "") == Board(1).read_order(0)

    def test_round_trip(self) -> None:
        """write_order is read back with every field and a growing sequence."""
        b = Board(2)
        seq1 = b.write_order(1, ORDER_RECYCLE, 300 * MiB, 200 * MiB, None, "soft_limit")
        assert Order(seq1, ORDER_RECYCLE, 300 * MiB, 200 * MiB, "", "soft_limit") == b.read_order(1)
        seq2 = b.write_order(1, ORDER_KILL, 500 * MiB, 400 * MiB, "id-9", "hard_limit")
        assert seq2 > seq1
        assert Order(seq2, ORDER_KILL, 500 * MiB, 400 * MiB, "id-9", "hard_limit") == b.read_order(1)
        assert ORDER_NONE == b.read_order(0).action

    def test_order_signal_is_sigurg(self) -> None:
        """Orders are announced with SIGURG, which is ignored by default."""
        assert signal.SIGURG == ORDER_SIGNAL


class TestBoardAcrossFork:
    """The board is shared between a parent and a forked child."""

    def test_child_writes_parent_reads(self) -> None:
        """A forked child's claim, task and finished records, and its reading of the parent's order, cross the fork."""
        b = Board(2)
        seq = b.write_order(1, ORDER_KILL, 9 * MiB, 8 * MiB, "id-parent", "hard_limit")
        read_fd, write_fd = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - runs in the child
            code = 1
            try:
                os.close(read_fd)
                me = os.getpid()
                order = b.read_order(1)
                b.claim(1, me, 3.0)
                b.task_started(1, me, "app.tasks.first", "id-first", 4.0, MiB, 0, 3.0)
                finish(b, 1, me, 0)
                finish(b, 1, me, 1)
                b.task_started(1, me, "app.tasks.running", "id-running", 5.0, 2 * MiB, 2, 3.0)
                os.write(write_fd, f"{order.seq} {order.action} {order.task_id}".encode())
                code = 0
            finally:
                os._exit(code)
        os.close(write_fd)
        with os.fdopen(read_fd, "rb") as pipe:
            seen_by_child = pipe.read().decode()
        _, status = os.waitpid(pid, 0)
        assert 0 == os.waitstatus_to_exitcode(status)
        assert f"{seq} {ORDER_KILL} id-parent" == seen_by_child
        assert CurrentTask(pid, True, "app.tasks.running", "id-running", 5.0, 2 * MiB, 2, 3.0) == b.current(1)
        count, records = b.drain(1, 0)
        assert (2, ["id-0", "id-1"], {pid}) == (count, [r.task_id for r in records], {r.pid for r in records})


def test_board_is_sized_for_grown_pools() -> None:
    """Room far beyond the start's concurrency (pool_grow, autoscale), at no memory cost until used."""
    from celery_memguard.board import MIN_SLOTS, board_slots

    assert board_slots(2) == MIN_SLOTS >= 256
    assert board_slots(100) == 401
    board = Board(board_slots(2))
    assert board.has_slot(MIN_SLOTS - 1) and not board.has_slot(MIN_SLOTS) and not board.has_slot(None)
    board.claim(MIN_SLOTS - 1, 4242, 1.0)
    assert board.current(MIN_SLOTS - 1) is not None and board.current(MIN_SLOTS - 1).pid == 4242


class TestTaskOfADeadChild:
    """Issue 13.10: the task a child recorded at start survives the child and its replacement's claim."""

    def test_task_of_the_current_occupant(self) -> None:
        b = Board(2)
        b.claim(1, 100, 1.0)
        b.task_started(1, 100, "app.load", "tid-1", 5.0, 40 * MiB, 0, 1.0)
        assert CurrentTask(100, True, "app.load", "tid-1", 5.0, 40 * MiB, 0, 1.0) == b.task_of(1, 100)

    def test_task_of_a_replaced_child(self) -> None:
        b = Board(2)
        b.claim(1, 100, 1.0)
        b.task_started(1, 100, "app.load", "tid-1", 5.0, 40 * MiB, 0, 1.0)
        b.claim(1, 200, 6.0)  # the replacement takes the slot before the master noticed the death
        assert b.task_of(1, 100) == CurrentTask(100, True, "app.load", "tid-1", 5.0, 40 * MiB, 0, 1.0)
        assert b.task_of(1, 200) == CurrentTask(200, False, None, None, 0.0, 0, 0, 6.0)
        assert b.task_of(1, 300) is None

    def test_idle_child_recorded_idle(self) -> None:
        b = Board(2)
        b.claim(0, 100, 1.0)
        b.task_started(0, 100, "app.a", "tid-1", 5.0, 40 * MiB, 0, 1.0)
        b.task_finished(0, 100, "app.a", "tid-1", 5.0, 0.1, 40 * MiB, 41 * MiB, None, True, 1, 1.0)
        b.claim(0, 200, 6.0)
        recorded = b.task_of(0, 100)
        assert recorded is not None and not recorded.busy and recorded.task is None


def test_activity_counter_changes_on_every_task_start() -> None:
    b = Board(2)
    b.claim(0, 100, 1.0)
    before = b.activity()
    b.task_started(0, 100, "app.a", "tid-1", 2.0, MiB, 0, 1.0)
    first = b.activity()
    b.task_finished(0, 100, "app.a", "tid-1", 2.0, 0.1, MiB, MiB, None, True, 1, 1.0)
    assert first != before and b.activity() == first  # a finish is not a start
    b.task_started(0, 100, "app.a", "tid-2", 3.0, MiB, 1, 1.0)
    assert b.activity() != first
