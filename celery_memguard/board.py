"""Shared-memory board between the master and its pool children (no Celery imports).

The master maps an anonymous shared region before the pool forks; every child
inherits it. Slot ``i`` belongs to the child with pool index ``i``:

* the child writes its *current task* (name, id, start, RSS before) and appends
  each finished task's measurement to a small ring (the per-task path: a few
  ``struct.pack_into`` calls, no syscalls, no pipes);
* the master reads which task each child runs and drains finished-task records
  at every poll, and writes *orders* (recycle, stop this task) that the child
  reads when its order watcher receives ``ORDER_SIGNAL`` (the child records that
  thread's id in its slot, see :mod:`celery_memguard.orders`), and at each task
  boundary.

The board cannot grow once children have mapped it, so it is sized at start for
more children than the pool is likely ever to hold (:func:`board_slots`: at least
:data:`MIN_SLOTS`, and four times the largest configured concurrency): children
added later by ``celery control pool_grow``, ``--autoscale`` or ``control
autoscale`` take free slots too (billiard gives a new child the lowest free
index, so an index never exceeds the number of children alive at once). A slot
costs about 60 KiB of address space but no memory until a child uses it (the
mapping's pages are allocated on first touch). A child whose index is beyond the
board anyway is reported once by the master (``memguard.child_unguarded``).

Each region is guarded by a sequence counter (a seqlock: odd while being
written); readers retry a torn read and give up after a few tries.
"""

from __future__ import annotations

import functools
import mmap
import os
import select
import signal
import struct
from dataclasses import dataclass
from typing import Callable

from .probes.base import close_fds
from .samples import TaskSample

__all__ = ["Board", "board_slots", "MIN_SLOTS", "CurrentTask", "Order", "ORDER_SIGNAL", "ORDER_RECYCLE", "ORDER_KILL", "RING_SIZE"]

#: Sent by the master to tell a child to read its order (to the child's order watcher thread where the
#: platform allows). SIGURG is ignored by default, so a child without MemGuard is unharmed.
ORDER_SIGNAL = getattr(signal, "SIGURG", signal.SIGTERM)

ORDER_NONE, ORDER_RECYCLE, ORDER_KILL = 0, 1, 2
RING_SIZE = 256

_SEQ = struct.Struct("<Q")
# pid, busy, started, rss_before, tasks_run, spawned_at, task_id, task_name
_HEAD = struct.Struct("<qBxxxxxxxdqQd40s128s")
# order_seq, action, mem, limit, task_id, reason
_ORDER = struct.Struct("<QBxxxxxxxqq40s24s")
# pid, started, duration, rss_before, rss_after, peak, heap_retained, ok, task_id, task_name
_REC = struct.Struct("<qddqqqqBxxxxxxx40s128s")
#: ``heap_retained`` of a task the child did not measure it for.
_NOT_MEASURED = -(1 << 63)
_COUNT = struct.Struct("<Q")
#: Trace list (after the slots): generation, number of names, names of suspected tasks to trace and of
#: watched task names (prefixed with WATCH_MARK) whose every call children measure with the heap probe.
TRACE_MAX = 16
#: Prefix of a trace-list entry that asks children to measure (not trace) the task (see worker/child_trace.py).
WATCH_MARK = "\x1f"
#: Bit of a record's ``ok`` byte: the heap reading was settled (cyclic garbage collected, see worker/child_heap.py).
_SETTLED = 2
_TRACE_HEAD = struct.Struct("<QB7x")
_TRACE_NAME = struct.Struct("<128s")
#: Activity counter (after the trace list): every task start bumps it, so the master can see in one read
#: whether any child started a task since it last looked (it then polls at once; see Monitor._sleep).
_ACTIVITY = struct.Struct("<Q")
#: Set (non-zero) by the master while it sleeps on the wake pipe: a child starting a task then writes a byte.
_WAITING = struct.Struct("<Q")

_HEAD_SEQ = 0
_HEAD_AT = _HEAD_SEQ + _SEQ.size
_ORDER_AT = _HEAD_AT + _HEAD.size
_RING_SEQ = _ORDER_AT + _ORDER.size
_COUNT_AT = _RING_SEQ + _SEQ.size
_READY = struct.Struct("<d")  # seconds from fork to ready for the first job, written once by the child
_READY_AT = _COUNT_AT + _COUNT.size
# kernel thread id of the child's order watcher (0: none), and whether its main thread's handler for ORDER_SIGNAL is
# still MemGuard's (the master then signals the main thread too: on most Pythons its handler is the quickest path)
_WATCHER = struct.Struct("<qq")
_WATCHER_AT = _READY_AT + _READY.size
_RING_AT = _WATCHER_AT + _WATCHER.size
#: The previous occupant's head, copied by ``claim`` before a new child overwrites it, so the task a
#: child was running when it died survives its replacement (read by ``task_of`` for child_lost).
_PREV_AT = _RING_AT + RING_SIZE * _REC.size
SLOT_SIZE = (_PREV_AT + _HEAD.size + 63) // 64 * 64


#: The fewest slots a board is made with: room for ``pool_grow``/``autoscale`` far beyond the start.
MIN_SLOTS = 256


def board_slots(max_concurrency: int) -> int:
    """Slots for a pool that starts with at most ``max_concurrency`` children (autoscale max included)."""
    return max(MIN_SLOTS, 4 * max(1, max_concurrency) + 1)


def _text(raw: bytes) -> str:
    return raw.rstrip(b"\0").decode("utf-8", "replace")


@dataclass(frozen=True, slots=True)
class CurrentTask:
    pid: int
    busy: bool
    task: str | None
    task_id: str | None
    started: float
    rss_before: int
    tasks_run: int
    spawned_at: float


@dataclass(frozen=True, slots=True)
class Order:
    seq: int
    action: int
    mem: int
    limit: int
    task_id: str
    reason: str


class Board:
    """Fixed-size table of slots in an anonymous shared mapping."""

    def __init__(self, slots: int, *, wake: bool = False) -> None:
        """``wake``: make a pipe (before the fork) on which the master can sleep until a child starts a task."""
        if slots <= 0:
            raise ValueError("slots must be > 0")
        self.slots = slots
        self._trace_at = slots * SLOT_SIZE
        self._activity_at = self._trace_at + _TRACE_HEAD.size + TRACE_MAX * _TRACE_NAME.size
        self._waiting_at = self._activity_at + _ACTIVITY.size
        self._map = mmap.mmap(-1, self._waiting_at + _WAITING.size)
        self._wake_r = self._wake_w = -1
        if wake:
            self._wake_r, self._wake_w = os.pipe()
            for fd in (self._wake_r, self._wake_w):
                os.set_blocking(fd, False)  # a child never blocks on it; the master reads what is there
        self._names: dict[str, bytes] = {}
        self._order_seq = 0

    # -- child side -------------------------------------------------------
    def claim(self, index: int, pid: int, now: float) -> None:
        """Take slot ``index`` for a newly started child.

        The previous child may have been killed mid-write, leaving a sequence counter odd: both
        counters are forced back to even. The ring is kept (records carry their pid), so records the
        previous child wrote just before exiting can still be drained.
        """
        base = self._base(index)
        m = self._map
        (seq,) = _SEQ.unpack_from(m, base + _HEAD_SEQ)
        odd = seq | 1
        _SEQ.pack_into(m, base + _HEAD_SEQ, odd)
        (previous,) = struct.unpack_from("<q", m, base + _HEAD_AT)
        if previous and previous != pid:
            m[base + _PREV_AT:base + _PREV_AT + _HEAD.size] = m[base + _HEAD_AT:base + _HEAD_AT + _HEAD.size]
        _HEAD.pack_into(m, base + _HEAD_AT, pid, 0, 0.0, 0, 0, now, b"", b"")
        _ORDER.pack_into(m, base + _ORDER_AT, 0, ORDER_NONE, 0, 0, b"", b"")
        _SEQ.pack_into(m, base + _HEAD_SEQ, odd + 1)
        _READY.pack_into(m, base + _READY_AT, 0.0)
        _WATCHER.pack_into(m, base + _WATCHER_AT, 0, 0)
        (ring_seq,) = _SEQ.unpack_from(m, base + _RING_SEQ)
        if ring_seq & 1:
            _SEQ.pack_into(m, base + _RING_SEQ, ring_seq + 1)

    def task_started(self, index: int, pid: int, task: str, task_id: str, started: float, rss: int,
                     tasks_run: int, spawned_at: float) -> None:
        base = self._base(index)
        self._bump(base + _HEAD_SEQ)
        _HEAD.pack_into(self._map, base + _HEAD_AT, pid, 1, started, rss, tasks_run, spawned_at,
                        task_id.encode()[:40], self._name(task))
        self._bump(base + _HEAD_SEQ)
        # Not atomic across children: two concurrent starts may count once, but the value still changes.
        self._bump(self._activity_at)
        if self._wake_w >= 0 and _WAITING.unpack_from(self._map, self._waiting_at)[0]:
            self.wake()

    # -- waking the master -------------------------------------------------
    @property
    def can_wake(self) -> bool:
        """Whether the master can sleep until a task starts (:meth:`sleep_until_task`)."""
        return self._wake_r >= 0

    def wake(self) -> None:
        """Wake the master if it sleeps in :meth:`sleep_until_task` (a child's task start, or a stop)."""
        try:
            os.write(self._wake_w, b"\0")
        except OSError:
            pass  # full (the master has plenty to read already) or closed

    def sleep_until_task(self, since: int, timeout: float) -> None:
        """Sleep up to ``timeout`` seconds, less if a task starts (activity moves from ``since``) or
        :meth:`wake` is called. One ``select``: no wake-up at all while nothing happens."""
        _WAITING.pack_into(self._map, self._waiting_at, 1)
        try:
            # A start just before the flag was set did not write to the pipe, but moved the counter.
            if self.activity() == since:
                ready, _, _ = select.select([self._wake_r], [], [], timeout)
                if ready:
                    try:
                        while os.read(self._wake_r, 4096):
                            pass
                    except BlockingIOError:
                        pass
        finally:
            _WAITING.pack_into(self._map, self._waiting_at, 0)

    def activity(self) -> int:
        """A counter every task start changes (compare for inequality only)."""
        return _ACTIVITY.unpack_from(self._map, self._activity_at)[0]

    def task_finished(self, index: int, pid: int, task: str, task_id: str, started: float, duration: float,
                      rss_before: int, rss_after: int, peak: int | None, ok: bool, tasks_run: int,
                      spawned_at: float, heap_retained: int | None = None, heap_settled: bool = False) -> None:
        base = self._base(index)
        m = self._map
        self._bump(base + _RING_SEQ)
        (count,) = _COUNT.unpack_from(m, base + _COUNT_AT)
        name = self._name(task)
        tid = task_id.encode()[:40]
        _REC.pack_into(m, base + _RING_AT + (count % RING_SIZE) * _REC.size, pid, started, duration, rss_before,
                       rss_after, -1 if peak is None else peak,
                       _NOT_MEASURED if heap_retained is None else heap_retained,
                       (1 if ok else 0) | (_SETTLED if heap_settled else 0), tid, name)
        _COUNT.pack_into(m, base + _COUNT_AT, count + 1)
        self._bump(base + _RING_SEQ)
        self._bump(base + _HEAD_SEQ)
        _HEAD.pack_into(m, base + _HEAD_AT, pid, 0, 0.0, 0, tasks_run, spawned_at, b"", b"")
        self._bump(base + _HEAD_SEQ)

    def set_spawn_time(self, index: int, seconds: float) -> None:
        """Record how long this child took from fork to ready (read by the master's storm guard)."""
        _READY.pack_into(self._map, self._base(index) + _READY_AT, seconds)

    def spawn_time(self, index: int) -> float:
        """The slot's child's fork-to-ready seconds, or 0.0 if not known yet."""
        return _READY.unpack_from(self._map, self._base(index) + _READY_AT)[0]

    def set_watcher(self, index: int, tid: int, main_handler: bool) -> None:
        """Record the slot's child's order-watcher thread id (see :mod:`celery_memguard.orders`) and whether
        its main thread's ORDER_SIGNAL handler is MemGuard's."""
        _WATCHER.pack_into(self._map, self._base(index) + _WATCHER_AT, tid, 1 if main_handler else 0)

    def watcher(self, index: int) -> tuple[int, bool]:
        """The slot's child's order-watcher thread id (0 if it has none yet) and whether its main thread's
        ORDER_SIGNAL handler is MemGuard's."""
        tid, main_handler = _WATCHER.unpack_from(self._map, self._base(index) + _WATCHER_AT)
        return tid, bool(main_handler)

    def order_seq(self, index: int) -> int:
        """The sequence number of the slot's latest order (one unpack: cheap enough for every task)."""
        return _SEQ.unpack_from(self._map, self._base(index) + _ORDER_AT)[0]

    def order_seq_reader(self, index: int) -> Callable[[], tuple[int]]:
        """A callable returning ``(order_seq,)`` for slot ``index``: the per-task check without lookups."""
        return functools.partial(_SEQ.unpack_from, self._map, self._base(index) + _ORDER_AT)

    def read_order(self, index: int) -> Order:
        seq, action, mem, limit, tid, reason = _ORDER.unpack_from(self._map, self._base(index) + _ORDER_AT)
        return Order(seq, action, mem, limit, _text(tid), _text(reason))

    # -- master side ------------------------------------------------------
    def current(self, index: int) -> CurrentTask | None:
        """The slot's current task, or None if a consistent read was not possible."""
        base = self._base(index)
        for _ in range(4):
            (s1,) = _SEQ.unpack_from(self._map, base + _HEAD_SEQ)
            if s1 & 1:
                continue
            pid, busy, started, rss, tasks_run, spawned, tid, name = _HEAD.unpack_from(self._map, base + _HEAD_AT)
            (s2,) = _SEQ.unpack_from(self._map, base + _HEAD_SEQ)
            if s1 == s2:
                return CurrentTask(pid, bool(busy), _text(name) if busy else None, _text(tid) if busy else None,
                                   started, rss, tasks_run, spawned)
        return None

    def task_of(self, index: int, pid: int) -> CurrentTask | None:
        """What child ``pid`` last recorded in slot ``index`` (its task if it was busy), also after a
        replacement child claimed the slot; None if ``pid`` is not (or no longer) known there."""
        base = self._base(index)
        for _ in range(4):
            (s1,) = _SEQ.unpack_from(self._map, base + _HEAD_SEQ)
            if s1 & 1:
                continue
            heads = [_HEAD.unpack_from(self._map, base + at) for at in (_HEAD_AT, _PREV_AT)]
            (s2,) = _SEQ.unpack_from(self._map, base + _HEAD_SEQ)
            if s1 != s2:
                continue
            for head_pid, busy, started, rss, tasks_run, spawned, tid, name in heads:
                if head_pid == pid:
                    return CurrentTask(pid, bool(busy), _text(name) if busy else None, _text(tid) if busy else None,
                                       started, rss, tasks_run, spawned)
            return None
        return None

    def drain(self, index: int, since: int) -> tuple[int, list[TaskSample]]:
        """Records appended to slot ``index`` since count ``since`` (by any child that held the slot):
        ``(new_count, samples)``; beyond RING_SIZE unread records the oldest are lost."""
        base = self._base(index)
        for _ in range(4):
            (s1,) = _SEQ.unpack_from(self._map, base + _RING_SEQ)
            if s1 & 1:
                continue
            (count,) = _COUNT.unpack_from(self._map, base + _COUNT_AT)
            start = max(since, count - RING_SIZE)
            raw = [
                _REC.unpack_from(self._map, base + _RING_AT + (n % RING_SIZE) * _REC.size)
                for n in range(start, count)
            ]
            (s2,) = _SEQ.unpack_from(self._map, base + _RING_SEQ)
            if s1 == s2:
                return count, [
                    TaskSample(pid, _text(name), _text(tid), started, duration, before, after,
                               None if peak < 0 else peak, bool(ok & 1), None if heap == _NOT_MEASURED else heap,
                               bool(ok & _SETTLED) and heap != _NOT_MEASURED)
                    for pid, started, duration, before, after, peak, heap, ok, tid, name in raw
                ]
        return since, []

    def write_order(self, index: int, action: int, mem: int, limit: int, task_id: str | None, reason: str) -> int:
        self._order_seq += 1
        _ORDER.pack_into(self._map, self._base(index) + _ORDER_AT, self._order_seq, action, mem, limit,
                         (task_id or "").encode()[:40], reason.encode()[:24])
        return self._order_seq

    # -- trace list (master writes, children read) ------------------------
    def set_trace(self, tasks: list[str]) -> None:
        """Publish the suspected task names children should trace, and (prefixed with WATCH_MARK) the names
        they should measure (at most TRACE_MAX)."""
        names = [t.encode()[:128] for t in tasks[:TRACE_MAX]]
        (gen, _n) = _TRACE_HEAD.unpack_from(self._map, self._trace_at)
        _TRACE_HEAD.pack_into(self._map, self._trace_at, gen | 1, 0)  # odd: being written
        for i, name in enumerate(names):
            _TRACE_NAME.pack_into(self._map, self._trace_at + _TRACE_HEAD.size + i * _TRACE_NAME.size, name)
        _TRACE_HEAD.pack_into(self._map, self._trace_at, (gen | 1) + 1, len(names))

    def trace_generation(self) -> int:
        """Changes whenever the trace list changes (one unpack: cheap enough for every task)."""
        return _TRACE_HEAD.unpack_from(self._map, self._trace_at)[0]

    def trace_tasks(self) -> frozenset[str] | None:
        """The published trace list, or None while it is being written."""
        gen, count = _TRACE_HEAD.unpack_from(self._map, self._trace_at)
        if gen & 1:
            return None
        names = frozenset(
            _text(_TRACE_NAME.unpack_from(self._map, self._trace_at + _TRACE_HEAD.size + i * _TRACE_NAME.size)[0])
            for i in range(count)
        )
        return names if self.trace_generation() == gen else None

    # -- helpers ----------------------------------------------------------
    def has_slot(self, index: int | None) -> bool:
        """Whether pool index ``index`` has a slot on this board."""
        return index is not None and 0 <= index < self.slots

    def _base(self, index: int) -> int:
        if not 0 <= index < self.slots:
            raise IndexError(f"pool index {index} outside the board's {self.slots} slots")
        return index * SLOT_SIZE

    def _bump(self, offset: int) -> None:
        (seq,) = _SEQ.unpack_from(self._map, offset)
        _SEQ.pack_into(self._map, offset, seq + 1)

    def _name(self, task: str) -> bytes:
        raw = self._names.get(task)
        if raw is None:
            raw = self._names[task] = task.encode()[:128]
        return raw

    def close(self) -> None:
        try:
            self._map.close()
        except Exception:
            pass
        close_fds(self._wake_r, self._wake_w)
        self._wake_r = self._wake_w = -1
