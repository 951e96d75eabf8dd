"""Shared-memory board between the master and its pool children (no Celery imports).

The master maps an anonymous shared region before the pool forks; every child
inherits it. Slot ``i`` belongs to the child with pool index ``i``:

* the child writes its *current task* (name, id, start, RSS before) and appends
  each finished task's measurement to a small ring (the per-task path: a few
  ``struct.pack_into`` calls, no syscalls, no pipes);
* the master reads which task each child runs and drains finished-task records
  at every poll, and writes *orders* (recycle, stop this task) that the child
  reads when it receives ``ORDER_SIGNAL``.

Each region is guarded by a sequence counter (a seqlock: odd while being
written); readers retry a torn read and give up after a few tries.
"""

from __future__ import annotations

import mmap
import signal
import struct
from dataclasses import dataclass

from .samples import TaskSample

__all__ = ["Board", "CurrentTask", "Order", "ORDER_SIGNAL", "ORDER_RECYCLE", "ORDER_KILL", "RING_SIZE"]

#: Sent by the master to tell a child to read its order. SIGURG is ignored by
#: default, so a child that has not installed MemGuard's handler is unharmed.
ORDER_SIGNAL = getattr(signal, "SIGURG", signal.SIGTERM)

ORDER_NONE, ORDER_RECYCLE, ORDER_KILL = 0, 1, 2
RING_SIZE = 256

_SEQ = struct.Struct("<Q")
# pid, busy, started, rss_before, tasks_run, spawned_at, task_id, task_name
_HEAD = struct.Struct("<qBxxxxxxxdqQd40s128s")
# order_seq, action, mem, limit, task_id, reason
_ORDER = struct.Struct("<QBxxxxxxxqq40s24s")
# started, duration, rss_before, rss_after, peak, ok, task_id, task_name
_REC = struct.Struct("<ddqqqBxxxxxxx40s128s")
_COUNT = struct.Struct("<Q")

_HEAD_SEQ = 0
_HEAD_AT = _HEAD_SEQ + _SEQ.size
_ORDER_AT = _HEAD_AT + _HEAD.size
_RING_SEQ = _ORDER_AT + _ORDER.size
_COUNT_AT = _RING_SEQ + _SEQ.size
_RING_AT = _COUNT_AT + _COUNT.size
SLOT_SIZE = (_RING_AT + RING_SIZE * _REC.size + 63) // 64 * 64


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

    def __init__(self, slots: int) -> None:
        if slots <= 0:
            raise ValueError("slots must be > 0")
        self.slots = slots
        self._map = mmap.mmap(-1, slots * SLOT_SIZE)
        self._names: dict[str, bytes] = {}
        self._order_seq = 0

    # -- child side -------------------------------------------------------
    def claim(self, index: int, pid: int, now: float) -> None:
        """Reset slot ``index`` for a newly started child."""
        base = self._base(index)
        self._bump(base + _HEAD_SEQ)
        _HEAD.pack_into(self._map, base + _HEAD_AT, pid, 0, 0.0, 0, 0, now, b"", b"")
        _ORDER.pack_into(self._map, base + _ORDER_AT, 0, ORDER_NONE, 0, 0, b"", b"")
        _COUNT.pack_into(self._map, base + _COUNT_AT, 0)
        self._bump(base + _HEAD_SEQ)

    def task_started(self, index: int, pid: int, task: str, task_id: str, started: float, rss: int,
                     tasks_run: int, spawned_at: float) -> None:
        base = self._base(index)
        self._bump(base + _HEAD_SEQ)
        _HEAD.pack_into(self._map, base + _HEAD_AT, pid, 1, started, rss, tasks_run, spawned_at,
                        task_id.encode()[:40], self._name(task))
        self._bump(base + _HEAD_SEQ)

    def task_finished(self, index: int, pid: int, task: str, task_id: str, started: float, duration: float,
                      rss_before: int, rss_after: int, peak: int | None, ok: bool, tasks_run: int,
                      spawned_at: float) -> None:
        base = self._base(index)
        m = self._map
        self._bump(base + _RING_SEQ)
        (count,) = _COUNT.unpack_from(m, base + _COUNT_AT)
        name = self._name(task)
        tid = task_id.encode()[:40]
        _REC.pack_into(m, base + _RING_AT + (count % RING_SIZE) * _REC.size, started, duration, rss_before,
                       rss_after, -1 if peak is None else peak, 1 if ok else 0, tid, name)
        _COUNT.pack_into(m, base + _COUNT_AT, count + 1)
        self._bump(base + _RING_SEQ)
        self._bump(base + _HEAD_SEQ)
        _HEAD.pack_into(m, base + _HEAD_AT, pid, 0, 0.0, 0, tasks_run, spawned_at, b"", b"")
        self._bump(base + _HEAD_SEQ)

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

    def drain(self, index: int, since: int) -> tuple[int, list[TaskSample]]:
        """Records appended since count ``since``: ``(new_count, samples)``; older ones may be lost."""
        base = self._base(index)
        for _ in range(4):
            (s1,) = _SEQ.unpack_from(self._map, base + _RING_SEQ)
            if s1 & 1:
                continue
            (count,) = _COUNT.unpack_from(self._map, base + _COUNT_AT)
            (pid,) = struct.unpack_from("<q", self._map, base + _HEAD_AT)
            start = max(since, count - RING_SIZE)
            raw = [
                _REC.unpack_from(self._map, base + _RING_AT + (n % RING_SIZE) * _REC.size)
                for n in range(start, count)
            ]
            (s2,) = _SEQ.unpack_from(self._map, base + _RING_SEQ)
            if s1 == s2:
                return count, [
                    TaskSample(pid, _text(name), _text(tid), started, duration, before, after,
                               None if peak < 0 else peak, bool(ok))
                    for started, duration, before, after, peak, ok, tid, name in raw
                ]
        return since, []

    def write_order(self, index: int, action: int, mem: int, limit: int, task_id: str | None, reason: str) -> int:
        self._order_seq += 1
        _ORDER.pack_into(self._map, self._base(index) + _ORDER_AT, self._order_seq, action, mem, limit,
                         (task_id or "").encode()[:40], reason.encode()[:24])
        return self._order_seq

    # -- helpers ----------------------------------------------------------
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
