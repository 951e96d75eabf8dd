"""Pool-child side: the master's trace list as this child last read it.

The master publishes on the board the current leak suspects (traced with the
leak-site tracer, :mod:`celery_memguard.diagnostics`, when diagnostics are on)
and, marked with ``WATCH_MARK``, the names it watches (growing, not yet judged):
the child measures every call of those and of the suspects with settled heap
readings (:mod:`celery_memguard.worker.child_heap`). The list is re-read only
when its generation on the board changed (one read per task otherwise; the
child's per-task path checks that itself, see :class:`~celery_memguard.worker.child.ChildRuntime`).
"""

from __future__ import annotations

from ..board import WATCH_MARK, Board
from ..diagnostics import LeakSiteTracer

__all__ = ["TraceList"]


class TraceList:
    """Suspects to trace and names to measure on every call, as last read from the board."""

    __slots__ = ("board", "tracer", "generation", "traced", "watched")

    def __init__(self, board: Board, diagnostics: str = "off") -> None:
        self.board = board
        #: The leak-site tracer (None: diagnostics off); the child starts it before a suspect's call and has
        #: it report after the call (``tracer.task`` is the name it traces).
        self.tracer = LeakSiteTracer(diagnostics) if diagnostics != "off" else None
        #: The list's generation on the board when last read: the child re-reads it when that changed.
        self.generation = 0
        self.traced: frozenset[str] = frozenset()  # suspects: traced with the leak-site tracer
        self.watched: frozenset[str] = frozenset()  # watched names and suspects: measured every call, settled

    def refresh(self) -> None:
        """Read the list again (the child calls this when its generation on the board changed)."""
        names = self.board.trace_tasks()
        if names is None:
            return  # being written; look again at the next task
        self.generation = self.board.trace_generation()
        self.traced = frozenset(n for n in names if not n.startswith(WATCH_MARK))
        # Watched names (and suspects) are measured on every call, with settled readings.
        self.watched = frozenset(n[len(WATCH_MARK):] if n.startswith(WATCH_MARK) else n for n in names)
        if self.tracer is not None and self.tracer.task is not None and self.tracer.task not in names:
            self.tracer.stop()
