"""The bytes a pool child's allocators hold in use: the leak detector's attribution measure.

RSS cannot say which task retained memory: memory a task frees stays resident,
the next task refills it without RSS moving, and a later task that needs fresh
pages is charged the growth. The allocators know what is really held:

* glibc's ``mallinfo2()``: ``uordblks + hblkhd``, the bytes of every ``malloc``
  chunk in use (heap arenas and mmapped chunks). Python objects over 512 bytes,
  list and dict tables, ``bytes`` buffers and C extensions' buffers live here;
* ``sys.getallocatedblocks()``: the number of live pymalloc blocks (Python objects
  of 512 bytes or less), counted at :data:`BLOCK_BYTES` each — pymalloc does not
  say their sizes; small objects are 32–80 bytes, so a leak of small objects is
  measured to within roughly ±30 %.

Reading both costs ~1.5 µs (``mallinfo2`` walks malloc's free lists: up to a few
hundred µs on a badly fragmented heap) plus ~12 µs per 280,000 live blocks, too
much for every task; the child measures the tasks that follow a growth of its RSS
only (see :mod:`celery_memguard.worker.child_heap`).

Supported where the C library has ``mallinfo2`` (glibc 2.33 or later) and
``malloc`` is glibc's: :func:`heap_probe` checks that a 64 KiB allocation shows up
in the reading (below glibc's mmap threshold: a freed mmapped chunk would raise that
threshold for the rest of the process), so a replacement allocator (jemalloc or tcmalloc through
``LD_PRELOAD``, whose memory glibc's ``mallinfo2`` does not see) is detected.
Elsewhere (musl, macOS, older glibc, a replaced ``malloc``) it returns ``None``
and the leak detector attributes by RSS deltas, with the weakness above
(documented in docs/detection.md).
"""

from __future__ import annotations

import ctypes
import sys
from typing import Any

__all__ = ["HeapProbe", "heap_probe", "BLOCK_BYTES"]

#: Bytes counted per live pymalloc block (a typical small Python object).
BLOCK_BYTES = 64
#: Size of the allocation :func:`heap_probe` checks the reading with (under glibc's 128 KiB mmap threshold).
_CHECK_BYTES = 64 * 1024


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
                     "fordblks", "keepcost")
    ]


class HeapProbe:
    """Reads the bytes held in use by malloc and pymalloc (one call: :meth:`in_use`)."""

    __slots__ = ("_mallinfo2",)

    def __init__(self, mallinfo2: Any) -> None:
        self._mallinfo2 = mallinfo2

    def in_use(self) -> int:
        info = self._mallinfo2()
        return int(info.uordblks + info.hblkhd) + sys.getallocatedblocks() * BLOCK_BYTES


def heap_probe() -> HeapProbe | None:
    """A :class:`HeapProbe` for this process, or ``None`` where its reading would not see ``malloc``.

    ``None`` where the C library has no ``mallinfo2``, or where a 64 KiB buffer does not show up in
    the reading (``malloc`` replaced by another allocator).
    """
    try:
        libc = ctypes.CDLL(None)
        mallinfo2 = libc.mallinfo2
    except (OSError, AttributeError):
        return None
    mallinfo2.restype = _MallInfo2
    mallinfo2.argtypes = []
    probe = HeapProbe(mallinfo2)
    try:
        before = probe.in_use()
        buffer = bytearray(_CHECK_BYTES)
        seen = probe.in_use() - before
        del buffer
    except Exception:
        return None
    return probe if seen >= _CHECK_BYTES else None
