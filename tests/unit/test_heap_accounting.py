"""Tests for the heap attribution path: the heap probe, the child arming it, the board carrying it.

The probe reads this very process (glibc's ``mallinfo2`` plus pymalloc's live blocks);
the tests skip where the C library has no ``mallinfo2``. The child runtime is driven
in-process like bench_detection.py's overhead section drives it: ``before()``, the
task body, ``after()``; records come back through a real (anonymous, in-process) board.
"""

from __future__ import annotations

import ctypes
import mmap
import signal
import uuid
from typing import Callable, Iterator

import pytest

from celery_memguard.board import ORDER_SIGNAL, Board
from celery_memguard.probes import heap as heap_module
from celery_memguard.probes.heap import BLOCK_BYTES, heap_probe
from celery_memguard.samples import TaskSample
from celery_memguard.worker import child_heap
from celery_memguard.worker.child import ChildRuntime
from celery_memguard.worker.child_heap import HEAP_ARM_GROWTH, HEAP_ARMED_TASKS

MiB = 1024 * 1024
KEPT: list[object] = []

needs_mallinfo2 = pytest.mark.skipif(heap_probe() is None, reason="the C library has no mallinfo2")


@pytest.fixture(autouse=True)
def restore() -> Iterator[None]:
    handler = signal.getsignal(ORDER_SIGNAL)
    yield
    KEPT.clear()
    signal.signal(ORDER_SIGNAL, handler)


@needs_mallinfo2
class TestHeapProbe:
    def test_a_kept_buffer_counts_and_a_freed_one_does_not(self) -> None:
        probe = heap_probe()
        assert probe is not None
        before = probe.in_use()
        KEPT.append(bytes(4 * MiB))
        kept = probe.in_use() - before
        temporary = bytes(8 * MiB)
        del temporary
        after_temporary = probe.in_use() - before
        assert 4 * MiB <= kept < 4 * MiB + 64 * 1024
        assert abs(after_temporary - kept) < 64 * 1024

    def test_small_objects_count_as_blocks(self) -> None:
        probe = heap_probe()
        assert probe is not None
        before = probe.in_use()
        KEPT.append([str(1_000_000 + i) for i in range(50_000)])  # 50,000 str + a 400 KB list table
        grown = probe.in_use() - before
        assert 50_000 * BLOCK_BYTES + 400_000 <= grown < 50_000 * BLOCK_BYTES + 400_000 + 256 * 1024

    def test_no_mallinfo2_means_no_probe(self, monkeypatch: pytest.MonkeyPatch) -> None:
        class NoMallinfo2:
            def __init__(self, _name: object) -> None:
                pass

        monkeypatch.setattr(heap_module.ctypes, "CDLL", NoMallinfo2)
        assert heap_probe() is None

    def test_a_malloc_the_reading_does_not_see_means_no_probe(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """jemalloc/tcmalloc through LD_PRELOAD: glibc's mallinfo2 stays flat whatever is allocated."""
        flat = heap_module._MallInfo2()

        class Libc:
            def __init__(self, _name: object) -> None:
                self.mallinfo2 = lambda: flat

        monkeypatch.setattr(heap_module.ctypes, "CDLL", Libc)
        assert heap_probe() is None

    def test_unloadable_libc_means_no_probe(self, monkeypatch: pytest.MonkeyPatch) -> None:
        def broken(_name: object) -> ctypes.CDLL:
            raise OSError("no libc")

        monkeypatch.setattr(heap_module.ctypes, "CDLL", broken)
        assert heap_probe() is None


def _run(rt: ChildRuntime, board: Board, body: Callable[[], None], name: str = "t.task") -> TaskSample:
    tid = str(uuid.uuid4())
    rt.before(name, tid)
    body()
    rt.after(tid, True)
    (record,) = [r for r in board.drain(0, 0)[1] if r.task_id == tid]
    return record


def _noop() -> None:
    pass


def _leave_freed_memory_resident() -> None:
    """Free a 31 MiB mmapped chunk (glibc raises its mmap threshold to it), then 48 MiB of heap chunks (resident)."""
    big = bytearray(31 * MiB)
    del big
    chunks = [bytearray(MiB) for _ in range(48)]
    del chunks


def _fresh_pages(size: int) -> mmap.mmap:
    """``size`` bytes of new anonymous memory, every page written: RSS grows by ``size`` whatever came before.

    A ``bytes`` buffer would not do: glibc may serve it from heap memory an earlier test freed (a freed
    mmapped chunk raises glibc's mmap threshold, up to 32 MiB, and freed heap memory up to twice that stays
    resident), and then RSS does not grow at all (the flake of full runs).
    """
    buf = mmap.mmap(-1, size)
    for offset in range(0, size, mmap.PAGESIZE):
        buf[offset] = 1
    return buf


@needs_mallinfo2
class TestChildArming:
    def test_measures_the_tasks_after_rss_growth_and_only_those(self) -> None:
        _leave_freed_memory_resident()  # as earlier tests of a full run can: the growth below must not use it
        board = Board(1)
        rt = ChildRuntime(board, 0, None, heap=heap_probe())
        first = _run(rt, board, _noop)
        assert first.heap_retained is None  # nothing armed before the first task
        assert rt.heap_meter.armed == HEAP_ARMED_TASKS  # the first task's RSS is growth from 0
        measured = [_run(rt, board, _noop).heap_retained for _ in range(HEAP_ARMED_TASKS)]
        assert all(m is not None and abs(m) < 64 * 1024 for m in measured), measured
        # Steady RSS: the next tasks are not measured.
        assert _run(rt, board, _noop).heap_retained is None
        # A task that grows RSS (a kept buffer, every page written) arms the next ones.
        grow = _run(rt, board, lambda: KEPT.append(_fresh_pages(32 * MiB)))
        assert grow.mem_after - grow.mem_before >= HEAP_ARM_GROWTH
        kept = _run(rt, board, lambda: KEPT.append(b"y" * MiB))
        assert kept.heap_retained is not None and MiB <= kept.heap_retained < MiB + 64 * 1024

    def test_off_without_a_heap_probe(self) -> None:
        board = Board(1)
        rt = ChildRuntime(board, 0, None)
        records = [_run(rt, board, lambda: KEPT.append(b"z" * MiB)) for _ in range(3)]
        assert [r.heap_retained for r in records] == [None, None, None]
        assert rt.heap_meter.probe is None

    def test_a_failing_probe_is_dropped_and_the_task_still_recorded(self, monkeypatch: pytest.MonkeyPatch) -> None:
        errors: list[str] = []
        monkeypatch.setattr(child_heap.events, "error", lambda where, exc: errors.append(where))
        board = Board(1)
        rt = ChildRuntime(board, 0, None, heap=heap_probe())
        _run(rt, board, _noop)
        assert rt.heap_meter.armed

        class Broken:
            def in_use(self) -> int:
                raise RuntimeError("mallinfo2 went away")

        rt.heap_meter.probe = Broken()  # type: ignore[assignment]
        record = _run(rt, board, _noop)
        assert record.heap_retained is None and record.task == "t.task"
        assert rt.heap_meter.probe is None and errors == ["child.heap_probe"]
        assert _run(rt, board, _noop).heap_retained is None


class TestBoardRecord:
    def test_heap_retained_round_trips_including_none_and_negative(self) -> None:
        board = Board(1)
        board.claim(0, 9, 0.0)
        for n, value in enumerate([None, 0, 3 * MiB, -5 * MiB]):
            board.task_finished(0, 9, "t", f"id-{n}", 1.0, 0.1, MiB, MiB, None, True, n + 1, 0.0, value)
        assert [r.heap_retained for r in board.drain(0, 0)[1]] == [None, 0, 3 * MiB, -5 * MiB]


class _Cycle:
    """A node in a reference cycle, holding a payload (garbage only the cyclic collector frees)."""

    def __init__(self, payload: int) -> None:
        self.me = self
        self.payload = bytearray(payload)


def _make_cyclic_garbage() -> None:
    for _ in range(64):
        _Cycle(16 * 1024)  # 1 MiB in cycles, dropped at once


@needs_mallinfo2
class TestWatchedSettledReadings:
    """Issue 9: watched names are measured on every call, settled (deferred frees neutralised)."""

    def runtime(self, watched: list[str]) -> tuple[ChildRuntime, Board]:
        from celery_memguard.board import WATCH_MARK

        board = Board(1)
        rt = ChildRuntime(board, 0, None, heap=heap_probe())
        board.set_trace([WATCH_MARK + name for name in watched])
        return rt, board

    def test_watched_name_measured_every_call_settled(self) -> None:
        import gc

        rt, board = self.runtime(["t.watched"])
        for _ in range(5):
            record = _run(rt, board, _noop, "t.watched")
            assert record.heap_retained is not None and record.heap_settled
            assert abs(record.heap_retained) < 64 * 1024
        assert not _run(rt, board, _noop, "t.other").heap_settled  # not watched: at most armed, never settled
        assert gc.get_freeze_count() == 0 and not rt.heap_meter.settling  # everything unfrozen again

    def test_disabled_collector_is_left_alone(self) -> None:
        """gc.disable() by the application: no settling (its garbage is never collected: a real leak)."""
        import gc

        rt, board = self.runtime(["t.creator"])
        gc.collect()
        enabled = gc.isenabled()
        gc.disable()  # no automatic collection may free the cycles at a random point of this test
        try:
            record = _run(rt, board, _make_cyclic_garbage, "t.creator")
        finally:
            if enabled:
                gc.enable()
        # With the collector disabled by the application, its cycles are never freed: the reading is not
        # settled and the creator is charged what it left (~1 MiB).
        assert not record.heap_settled and (record.heap_retained or 0) >= MiB
        gc.collect()

    def test_settled_creator_and_neighbour(self) -> None:
        """With the collector on: creator ~0 when settled; a neighbour running while old garbage waits is
        not charged negative memory when it is watched too."""
        import gc

        rt, board = self.runtime(["t.creator", "t.neighbour"])
        gc.collect()
        creator = _run(rt, board, _make_cyclic_garbage, "t.creator")
        assert creator.heap_settled and abs(creator.heap_retained or 0) < 256 * 1024
        for _ in range(64):
            _Cycle(16 * 1024)  # garbage left by someone else, unwatched
        neighbour = _run(rt, board, lambda: gc.collect(0), "t.neighbour")  # a young collection in the task
        assert neighbour.heap_settled and (neighbour.heap_retained or 0) > -256 * 1024
        gc.collect()

    def test_frozen_by_the_application_is_left_alone(self) -> None:
        import gc

        rt, board = self.runtime(["t.watched"])
        gc.freeze()
        try:
            record = _run(rt, board, _noop, "t.watched")
            assert record.heap_retained is not None and not record.heap_settled
            assert gc.get_freeze_count() > 0  # still the application's freeze
        finally:
            gc.unfreeze()
