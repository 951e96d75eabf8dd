"""The master's poll loop: read children, ask the engine, act. No Celery imports.

A daemon thread in the worker's main process. Each poll it lists the live pool
children (a callable supplied by the bootstep), takes a cheap reading of each
(RSS and minor faults, ~3 µs), takes an exact USS/PSS reading only when the
cheap upper bound could be above a limit (see :mod:`celery_memguard.estimate`),
reads each child's current task from the board, and hands the samples to the
:class:`~celery_memguard.engine.Engine`. It sleeps for the delay the engine
chose: ``memguard_poll_interval``, shorter while a child grows towards its hard
limit. Anything that goes wrong is logged as ``memguard.error`` and the loop
carries on.
"""

from __future__ import annotations

import threading
import time
from typing import Callable, Iterable

from . import events
from .actions import Actuator
from .board import Board
from .engine import Engine
from .estimate import MetricEstimate
from .probes import ProbeError, ProcessGone, ProcessProbe, open_process_probe
from .samples import Action, ChildSample, TaskSample

__all__ = ["Monitor"]

#: Seconds between exact readings even when the cheap bound says "well below".
EXACT_REFRESH = 60.0
_LEAVING = (Action.RECYCLE, Action.KILL)


class Monitor:
    def __init__(
        self,
        *,
        children: Callable[[], Iterable[tuple[int, int | None]]],
        engine: Engine,
        actuator: Actuator,
        board: Board | None,
        metric: str,
        open_probe: Callable[[int], ProcessProbe] = open_process_probe,
        clock: Callable[[], float] = time.monotonic,
        on_tasks: Callable[[list[TaskSample]], None] | None = None,
    ) -> None:
        self.children = children
        self.engine = engine
        self.actuator = actuator
        self.board = board
        self.metric = metric
        self.open_probe = open_probe
        self.clock = clock
        self.on_tasks = on_tasks
        self.polls = 0
        self.decisions = 0
        self._probes: dict[int, ProcessProbe] = {}
        self._estimates: dict[int, MetricEstimate] = {}
        self._drained: dict[int, tuple[int, int]] = {}  # index -> (pid, count)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- thread ---------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="memguard-monitor", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)
        for probe in self._probes.values():
            probe.close()
        self._probes.clear()

    def _run(self) -> None:
        delay = self.engine.poll_interval
        while not self._stop.wait(delay):
            try:
                delay = self.poll()
            except Exception as exc:  # fail open: never let the loop die
                events.error("monitor.poll", exc)
                delay = self.engine.poll_interval

    # -- one poll -------------------------------------------------------
    def poll(self) -> float:
        """One poll; returns the delay until the next."""
        now = self.clock()
        self.polls += 1
        samples: list[ChildSample] = []
        index_of: dict[int, int | None] = {}
        for pid, index in list(self.children()):
            if not pid:
                continue
            try:
                sample = self._sample(pid, index, now)
            except ProcessGone:
                self._forget(pid)
                continue
            except Exception as exc:
                events.error("monitor.sample", exc)
                continue
            samples.append(sample)
            index_of[pid] = index
        for pid in [p for p in self._probes if p not in index_of]:
            self._forget(pid)
        for decision in self.engine.decide(samples, now):
            self.decisions += 1
            try:
                self.actuator.apply(decision, index_of.get(decision.pid))
            except Exception as exc:
                events.error("actions.apply", exc)
        for sample in samples:
            # An idle child told to leave is reminded every poll until it has gone (see worker/child.py).
            if sample.task_id is None and self.engine.pending(sample.pid) in _LEAVING:
                try:
                    self.actuator.remind(sample.pid)
                except Exception as exc:
                    events.error("actions.remind", exc)
        return self.engine.next_delay

    def _sample(self, pid: int, index: int | None, now: float) -> ChildSample:
        probe = self._probes.get(pid)
        if probe is None:
            probe = self._probes[pid] = self.open_probe(pid)
        rss, faults = probe.cheap()
        if self.metric == "rss":
            mem, exact = rss, True
        else:
            estimate = self._estimates.get(pid)
            if estimate is None:
                estimate = self._estimates[pid] = MetricEstimate(refresh=EXACT_REFRESH)
            bound = estimate.bound(rss, faults)
            if estimate.needs_exact(rss, bound, self.engine.threshold, now):
                try:
                    mem, exact = probe.exact(self.metric), True
                    estimate.record_exact(mem, rss, faults, now)
                except ProcessGone:
                    raise
                except ProbeError as exc:
                    # No exact reading possible: act on RSS, which over-counts shared pages.
                    events.error("monitor.exact_reading", exc)
                    mem, exact = rss, True
            else:
                mem, exact = bound, False
        task = task_id = None
        tasks_run, spawned_at = 0, 0.0
        if self.board is not None and index is not None and 0 <= index < self.board.slots:
            current = self.board.current(index)
            if current is not None and current.pid == pid:
                task, task_id, tasks_run, spawned_at = current.task, current.task_id, current.tasks_run, current.spawned_at
                if self.on_tasks is not None:
                    self._drain(index, pid)
        return ChildSample(pid=pid, mem=mem, exact=exact, rss=rss, task=task, task_id=task_id,
                           tasks_run=tasks_run, spawned_at=spawned_at)

    def _drain(self, index: int, pid: int) -> None:
        assert self.board is not None and self.on_tasks is not None
        last_pid, since = self._drained.get(index, (pid, 0))
        if last_pid != pid:
            since = 0
        count, records = self.board.drain(index, since)
        self._drained[index] = (pid, count)
        if records:
            self.on_tasks(records)

    def _forget(self, pid: int) -> None:
        probe = self._probes.pop(pid, None)
        if probe is not None:
            probe.close()
        self._estimates.pop(pid, None)
