"""Pool-child side: what a task really retained, from the allocators' counters (for the leak detector).

With leak detection on, a child whose RSS has grown by :data:`HEAP_ARM_GROWTH`
since it last looked also measures what its allocators hold in use
(:mod:`celery_memguard.probes.heap`) around each of its next
:data:`HEAP_ARMED_TASKS` tasks, whatever their names: the leak detector charges
each task what it really retained, not the RSS growth it happened to trigger. A
child whose RSS is steady pays nothing for this.

The master also publishes, on the board's trace list, the task names it
*watches* (see :mod:`celery_memguard.worker.child_trace`): the child measures
every call of those, whatever its RSS does, so the detector sees the flat calls
of a cache that has filled. Those readings are *settled*: the objects that exist
before the task are frozen (``gc.freeze()``, O(1)), so no collection during the
task frees older garbage (which would charge this task negative memory), and the
task's own cyclic garbage is collected after it (only the task's objects are
scanned) before the after-reading, so garbage the GC would free later is not
charged to it; the objects are unfrozen right after (``gc.unfreeze()``).

A failing probe is reported once as ``memguard.error`` and switched off: the
child carries on with RSS deltas.
"""

from __future__ import annotations

import gc
import tracemalloc

from .. import events
from ..probes import HeapProbe

__all__ = ["HeapMeter", "HEAP_ARM_GROWTH", "HEAP_ARMED_TASKS"]

#: RSS growth of a child (since it last armed) that makes it measure its allocators around the next tasks.
HEAP_ARM_GROWTH = 64 * 1024
#: Tasks measured with the heap probe after each such growth.
HEAP_ARMED_TASKS = 32
#: Objects already in the permanent generation when MemGuard is imported (before the application can
#: have called ``gc.freeze()``): 0 on most Pythons, a few hundred of the interpreter's own on 3.12. More
#: than this later means the application froze objects itself, and settled readings are then skipped.
_INTERPRETER_FROZEN = gc.get_freeze_count()


class HeapMeter:
    """Heap readings around one child's tasks: armed by RSS growth, settled for watched names."""

    __slots__ = ("probe", "armed", "mark", "before", "tracer_mem_before", "settling")

    def __init__(self, probe: HeapProbe | None) -> None:
        #: Found (and checked) once in the master; its ctypes binding survives the fork. None: off.
        self.probe = probe
        self.armed = 0  # tasks left to measure with the heap probe
        self.mark = 0  # RSS when the heap probe was last armed
        self.before: int | None = None  # the reading before the current task, if it is measured
        self.tracer_mem_before = 0
        self.settling = False  # objects frozen for this task's settled reading

    def start(self, watched: bool) -> None:
        """A task starts that is measured: its name is watched (settled reading) or the meter is armed."""
        if watched:
            self._settle_start()
        self._read_before()

    def finish(self) -> tuple[int | None, bool]:
        """The task has returned: (bytes it retained or None if not measured, whether the reading is settled)."""
        settled = self.settling
        if settled:
            self._settle_end()
        retained = self._retained() if self.before is not None else None
        if settled:
            self.unfreeze()
        return retained, settled

    def arm(self, rss: int) -> None:
        """The child's RSS grew by HEAP_ARM_GROWTH since the meter last armed: measure the next tasks."""
        self.mark = rss
        self.armed = HEAP_ARMED_TASKS

    def unfreeze(self) -> None:
        """End a settled reading: the frozen objects go back to the oldest generation (a list splice)."""
        self.settling = False
        try:
            gc.unfreeze()
        except Exception as exc:
            events.error("child.heap_settle", exc)

    def _read_before(self) -> None:
        try:
            # tracemalloc's own bookkeeping (a traced call of a suspect) is not the task's.
            self.tracer_mem_before = tracemalloc.get_tracemalloc_memory() if tracemalloc.is_tracing() else 0
            self.before = self.probe.in_use()  # type: ignore[union-attr]
        except Exception as exc:
            self._failed(exc)

    def _retained(self) -> int | None:
        before, self.before = self.before, None
        try:
            retained = self.probe.in_use() - before  # type: ignore[union-attr, operator]
            if tracemalloc.is_tracing() or self.tracer_mem_before:
                retained -= tracemalloc.get_tracemalloc_memory() - self.tracer_mem_before
            if self.armed > 0:
                self.armed -= 1
            return retained
        except Exception as exc:
            self._failed(exc)
            return None

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

    def _failed(self, exc: Exception) -> None:
        self.probe = None
        self.before = None
        self.armed = 0
        events.error("child.heap_probe", exc)
