"""Carry decisions out: order a recycle, stop a task, SIGKILL; or, in dry run, only log.

Every action is logged with the task, the memory and the limit. This is the only
module that sends signals to pool children. In dry run a stop is logged once per
child and task: the engine escalates the unstopped task to ``FORCE_KILL`` after
``kill_grace`` as it would for real, but that second ``memguard.would_kill`` is not
logged (nothing was stopped, so it says nothing new).

An order is written to the child's board slot, then ``ORDER_SIGNAL`` goes to the
child's order-watcher thread (see :mod:`celery_memguard.orders`), so no Python
signal handler has to run for it.
"""

from __future__ import annotations

import os
import signal
from typing import Callable

from . import events
from .board import ORDER_KILL, ORDER_RECYCLE, ORDER_SIGNAL, Board
from .orders import signal_thread
from .samples import Action, Decision
from .units import mib

__all__ = ["Actuator"]


class Actuator:
    def __init__(self, board: Board | None, *, metric: str, dry_run: bool,
                 kill: Callable[[int, int], None] = os.kill,
                 notify: Callable[[int, int], object] | None = None) -> None:
        self.board = board
        self.metric = metric
        self.dry_run = dry_run
        self._kill = kill
        #: Dry run: the task each child was last (would-be) stopped in, so the escalation is not logged again.
        self._would_kill: dict[int, str | None] = {}
        #: ``notify(pid, tid)`` sends ORDER_SIGNAL to a child's order watcher (tid 0: to the process).
        if notify is None:
            notify = signal_thread if kill is os.kill else (lambda pid, _tid: kill(pid, ORDER_SIGNAL))
        self._notify = notify

    def apply(self, decision: Decision, index: int | None) -> None:
        d = decision
        if d.action is Action.RECYCLE:
            self._log(events.WOULD_RECYCLE if self.dry_run else events.CHILD_RECYCLED, "warning", d,
                      tasks_run=d.tasks_run, lifetime_s=round(d.lifetime, 1))
            if not self.dry_run:
                self._order(d, index, ORDER_RECYCLE)
        elif self.dry_run:  # KILL or FORCE_KILL: once per child and task
            if d.pid in self._would_kill and self._would_kill[d.pid] == d.task_id:
                return
            self._would_kill[d.pid] = d.task_id
            self._log(events.WOULD_KILL, "error", d,
                      signal="MemoryLimitExceeded" if d.action is Action.KILL else "SIGKILL")
        elif d.action is Action.KILL:
            self._log(events.TASK_KILLED, "error", d, signal="MemoryLimitExceeded")
            self._order(d, index, ORDER_KILL)
        elif d.action is Action.FORCE_KILL:
            self._log(events.TASK_KILLED, "error", d, signal="SIGKILL")
            self._signal(d.pid, signal.SIGKILL)

    def remind(self, pid: int, index: int | None = None) -> None:
        """Repeat the order signal to an idle child that has an order pending (no-op in dry run)."""
        if not self.dry_run and self.board is not None:
            self._send_order_signal(pid, index)

    def _order(self, d: Decision, index: int | None, action: int) -> None:
        if self.board is None or not self.board.has_slot(index):
            # The child never registered (its init failed, or its pool index is beyond the board: see
            # memguard.child_unguarded): it cannot obey orders. Only a kill is possible.
            if action == ORDER_KILL:
                self._signal(d.pid, signal.SIGKILL)
            return
        assert index is not None
        # A fallback reading's metric travels with the reason ("hard_limit|rss"), so the child's
        # MemoryLimitExceeded names the metric really compared with the limit.
        reason = d.reason if d.metric is None else f"{d.reason}|{d.metric}"
        self.board.write_order(index, action, d.mem, d.limit, d.task_id, reason)
        self._send_order_signal(d.pid, index)

    def _send_order_signal(self, pid: int, index: int | None) -> None:
        """ORDER_SIGNAL to the child's order watcher, and to its main thread while MemGuard's handler is there.

        The watcher alone suffices (it needs no Python signal handler); the main thread's handler, where
        CPython can run it, obeys a few milliseconds sooner (no wait for the watcher to get the GIL).
        """
        tid, main_handler = 0, False
        if self.board is not None and index is not None and 0 <= index < self.board.slots:
            tid, main_handler = self.board.watcher(index)
        try:
            self._notify(pid, tid)
            if tid and main_handler:
                self._notify(pid, pid)  # the main thread's id is the process id
        except ProcessLookupError:
            pass  # already gone

    def _signal(self, pid: int, signum: int) -> None:
        try:
            self._kill(pid, signum)
        except ProcessLookupError:
            pass  # already gone

    def _log(self, event: str, level: str, d: Decision, **extra: object) -> None:
        unit = d.unit
        limit: dict[str, object]
        if unit == "seconds":
            limit = {"limit_s": d.limit}
        elif unit == "tasks":
            limit = {"limit_tasks": d.limit}
        else:
            limit = {"limit_mib": mib(d.limit)}
        if d.ranking:
            extra["ranking"] = [{"pid": pid, "mem_mib": mib(mem)} for pid, mem in d.ranking]
        for key, value in d.detail:
            extra.setdefault(key, value)
        events.emit(event, level, pid=d.pid, task=d.task, task_id=d.task_id, reason=d.reason,
                    mem_mib=mib(d.mem), metric=d.metric or self.metric, **limit, **extra)
