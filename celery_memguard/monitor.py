"""The master's poll loop: read children, ask the engine, act. No Celery imports.

A daemon thread in the worker's main process. Each poll it lists the live pool
children (a callable supplied by the bootstep), takes a cheap reading of each
(RSS and minor faults, ~3 µs), takes an exact USS/PSS reading only when the
cheap upper bound could be above a limit (see :mod:`celery_memguard.estimate`),
reads each child's current task from the board, and hands the samples to the
:class:`~celery_memguard.engine.Engine`. Finished-task records drained from the
board, and readings of the master itself, go to the detectors; their findings
are logged (and leak suspects are published for leak-site tracing). A child
that leaves the pool by a signal MemGuard did not send is explained as
``memguard.child_lost`` (see :mod:`celery_memguard.forensics`). It sleeps for
the delay the engine chose: ``memguard_poll_interval``, shorter while a child grows towards its hard
limit. Anything that goes wrong is logged as ``memguard.error`` and the loop
carries on.

Memory pressure wakes it early: a kernel notification (a cgroup v1 usage threshold or a PSI trigger,
armed by :mod:`celery_memguard.probes.pressure_events` and waited on by its own thread) calls
:meth:`Monitor.pressure_event`, and the monitor polls at once with a fresh system reading (at most one
such poll per ``EVENT_SPACING``). While available memory falls, :class:`~celery_memguard.pace.AdaptivePace`
shortens the delay until the next poll (see :mod:`celery_memguard.pace`).
"""

from __future__ import annotations

import dataclasses
import threading
import time
from typing import TYPE_CHECKING, Callable, Iterable, Sequence

from . import events
from .actions import Actuator
from .board import Board
from .engine import Engine
from .estimate import MetricEstimate
from .forensics import CLEAN_EXITS, ChildHistory, LossExplainer
from .probes import ProbeError, ProcessGone, ProcessProbe, open_process_probe
from .detectors.base import Detector, Finding
from .detectors.leak import LeakDetector
from .pace import AdaptivePace
from .samples import Action, ChildSample, Decision, MasterSample, SystemSample, TaskSample

if TYPE_CHECKING:
    from .probes.pressure_events import PressureWatch

__all__ = ["HostReaders", "Listeners", "Monitor", "PollView", "PoolHooks"]

#: Seconds between exact readings even when the cheap bound says "well below" (at least; longer for
#: children whose exact reading is costly, see MetricEstimate).
EXACT_REFRESH = 60.0
_LEAVING = (Action.RECYCLE, Action.KILL)
#: Seconds from the monitor's start to its first poll.
FIRST_POLL = 0.02
#: Longest spacing of exact readings of the master's own memory (it changes slowly); a detector
#: that needs readings more often says so with its ``sample_interval``.
MASTER_EXACT_EVERY = 10.0
#: While it waits for the next poll, the monitor looks this often (one read of the board's activity
#: counter, ~1 µs) whether a child started a task, and polls at once if one did.
ACTIVITY_TICK = 0.04
#: While nothing changes (every child idle at the same RSS), the poll interval doubles up to this factor.
IDLE_STRETCH = 4
#: RSS change (bytes) of an idle child still counted as "nothing changed".
QUIET_RSS_CHANGE = 256 * 1024
#: Seconds between system readings (cgroup/host memory, PSI) for the pressure policy: ~0.5 ms each (every
#: poll when the intake pause reads available memory: it must judge fresh readings).
SYSTEM_EVERY = 0.5
#: Shortest spacing (seconds) of polls brought forward by kernel pressure notifications (a usage hovering
#: around a threshold signals at every crossing).
EVENT_SPACING = 0.02
#: With recycling policies only, a task start brings the next poll forward to this share of the poll interval
#: after the last poll (not at once, not a whole interval later): a child that leaks fast is still looked at
#: every few of its tasks, while a steady stream of tasks at 32 children cannot make the master poll once per
#: task start.
TASK_START_SPACING = 0.25
#: Decisions taken within this many seconds of a kernel pressure notification say so in their event
#: (``woken_by``, ``since_wake_ms``): the notification's poll may first ask for exact readings, then decide.
WAKE_NOTE_S = 1.0


@dataclasses.dataclass(frozen=True, slots=True)
class PollView:
    """What the latest poll saw, published whole after each poll so another thread (the ``memguard``
    remote-control command) can read it without locks. ``master`` is the latest reading of the
    worker's main process, or None when it is not read. ``slots`` is each child's pool index (by pid),
    None for a child whose index is unknown."""

    at: float
    children: tuple[ChildSample, ...]
    system: SystemSample | None
    master: MasterSample | None
    slots: dict[int, int | None] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True, slots=True)
class PoolHooks:
    """What the monitor asks the worker about its pool (supplied by the Celery glue, worker/bootstep.py).

    ``children`` lists the live pool children as ``(pid, pool index)``; ``exit_code`` gives the exit
    code the pool recorded for a child that left (never reaps it); ``reserved`` counts the messages the
    worker has prefetched but not finished; ``shutting_down`` says whether the worker is stopping its
    children on purpose; ``master_pid`` is the worker's main process (None: the master is not read).
    """

    children: Callable[[], Iterable[tuple[int, int | None]]]
    exit_code: Callable[[int], int | None] | None = None
    reserved: Callable[[], int | None] | None = None
    shutting_down: Callable[[], bool] | None = None
    master_pid: int | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class HostReaders:
    """How the monitor reads the machine: a probe per process, the system's memory for the pressure
    policies (None: not read) and how often (``system_every`` seconds at most; 0: every poll, as the
    intake pause needs), and the clock (tests pass fakes)."""

    open_probe: Callable[[int], ProcessProbe] = open_process_probe
    system: Callable[[float], SystemSample] | None = None
    clock: Callable[[], float] = time.monotonic
    system_every: float = SYSTEM_EVERY


@dataclasses.dataclass(frozen=True, slots=True)
class Listeners:
    """Who the monitor tells what it saw; each is called in the monitor's thread, and one that raises is a
    ``memguard.error`` (the poll goes on).

    ``finding``: each detector's and the engine's finding (the Guard logs it once and keeps it);
    ``poll``: each poll's :class:`PollView` (``memguard.sample``, see :mod:`celery_memguard.sampling`);
    ``tasks``: each batch of finished-task records (the sample's task tally); ``reading``: each poll's
    fresh readings before the engine decides (the intake pause decision).
    """

    finding: Callable[[Finding], None] = events.log_finding
    poll: Callable[[PollView], None] | None = None
    tasks: Callable[[list[TaskSample]], None] | None = None
    reading: Callable[[float, SystemSample | None, Sequence[ChildSample]], None] | None = None


def _leak_rates(detectors: Sequence[Detector]) -> Callable[[int], tuple[float, float]] | None:
    """(leak bytes per call, calls per second) of a child, from the leak detector if one runs."""
    leak = next((d for d in detectors if isinstance(d, LeakDetector)), None)
    return leak.child_leak_rates if leak is not None else None


class _Tracked:
    """What the monitor keeps about one child between polls."""

    __slots__ = ("probe", "estimate", "history", "spawn_seen", "slot_checked", "index", "unreadable")

    def __init__(self, probe: ProcessProbe) -> None:
        self.probe = probe
        self.estimate = MetricEstimate(refresh=EXACT_REFRESH)
        self.history = ChildHistory()
        self.spawn_seen = False
        self.slot_checked = False
        self.index: int | None = None
        self.unreadable = False  # the configured metric cannot be read for this child: RSS stands in

    def close(self) -> None:
        self.probe.close()


def _history_of(tracked: _Tracked | None) -> ChildHistory | None:
    return tracked.history if tracked is not None else None


class Monitor:
    """Polls the pool children (and the master) and carries out the engine's decisions."""

    def __init__(
        self,
        *,
        pool: PoolHooks,
        engine: Engine,
        actuator: Actuator,
        board: Board | None,
        metric: str,
        detectors: Sequence[Detector] = (),
        host: HostReaders = HostReaders(),
        listeners: Listeners = Listeners(),
        explainer: LossExplainer | None = None,
        pace: AdaptivePace | None = None,
        watch: "PressureWatch | None" = None,
    ) -> None:
        self.children, self.exit_code, self.reserved = pool.children, pool.exit_code, pool.reserved
        self.shutting_down, self.master_pid = pool.shutting_down, pool.master_pid
        self.engine = engine
        self.actuator = actuator
        self.board = board
        self.metric = metric
        self.open_probe, self.clock, self.system = host.open_probe, host.clock, host.system
        self.system_every = host.system_every
        # Attributes, not the frozen Listeners: tests and the sampler's tests swap one in place.
        self.on_finding, self.on_poll = listeners.finding, listeners.poll
        self.on_tasks, self.on_reading = listeners.tasks, listeners.reading
        #: Explains a child lost to a signal MemGuard did not send (None: such losses are not explained).
        self.explainer = explainer
        self.detectors = list(detectors)
        self.master_every = min([MASTER_EXACT_EVERY] + [
            d.sample_interval for d in self.detectors if d.sample_interval is not None
        ])
        self._master_probe: ProcessProbe | None = None
        self.leak_rates = _leak_rates(self.detectors)
        self._system: SystemSample | None = None
        self._tracked: dict[int, _Tracked] = {}  # per child pid: what the monitor keeps between polls
        #: Listed children found dead before any reading (a task killed its child at once): pid -> pool index.
        self._gone_unread: dict[int, int | None] = {}
        self._killed: set[int] = set()  # children MemGuard itself SIGKILLed
        self.polls = 0
        #: Decisions taken so far by ``(action, reason)`` (in dry run: what would have been done); replaced
        #: whole on each decision, never changed in place, so another thread can read it as it is.
        self.decided: dict[tuple[str, str], int] = {}
        #: Children lost by a signal MemGuard did not send (``memguard.child_lost``), by signal name (``"none"``:
        #: an unexpected exit code); replaced whole, like ``decided``.
        self.lost: dict[str, int] = {}
        self.last_poll: PollView | None = None
        #: The latest reading of the master (None before the first, or when no detector needs it).
        self.master_reading: MasterSample | None = None
        self._drained: dict[int, int] = {}  # board slot index -> records read so far
        self._unreadable_reported = False
        self._top_index = -1  # highest pool index seen: slots 0.._top_index are drained (billiard fills the lowest free)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        #: When :meth:`drain` was called (warm shutdown), else None.
        self.draining_since: float | None = None
        self._init_sleep(pace, watch)

    def _init_sleep(self, pace: AdaptivePace | None, watch: "PressureWatch | None") -> None:
        """What decides how long the monitor sleeps between polls, and what wakes it early."""
        # With a board, task starts are watched between polls: idle children need no fast polling.
        self.engine.idle_watched = self.board is not None
        self._activity_mark = self.board.activity() if self.board is not None else 0
        self._signature: dict[int, int] | None = None
        self._quiet = 0
        self.pace = pace
        self.watch = watch
        #: Kernel pressure notifications received so far.
        self.pressure_wakes = 0
        self._woken = threading.Event()  # set by a pressure notification or stop(): end the current sleep
        self._pressure_at: float | None = None  # when the first notification since the last poll came
        self._wake_note: tuple[str, float] | None = None  # (source, time) of the latest notification
        self._polled_at: float | None = None

    # -- thread ---------------------------------------------------------
    @property
    def decisions(self) -> int:
        """Decisions taken so far (all actions and reasons)."""
        return sum(self.decided.values())

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="memguard-monitor", daemon=True)
        self._thread.start()
        if self.watch is not None:
            try:
                self.watch.start(self.pressure_event, self._watch_lost)
            except Exception as exc:
                events.error("monitor.pressure_watch", exc)
                self._close_watch()

    def pressure_event(self, source: str) -> None:
        """The kernel signalled memory pressure (or relief): poll at once (called from the watch's thread)."""
        self.pressure_wakes += 1
        at = self.clock()
        self._wake_note = (source, at)  # the latest: a lower rung may have fired earlier without a decision
        if self._pressure_at is None:
            self._pressure_at = at
        self._woken.set()
        if self.board is not None and self.board.can_wake:
            self.board.wake()

    def _watch_lost(self, source: str, exc: BaseException) -> None:
        """A kernel notification source failed (its cgroup was removed...): adaptive polling carries on."""
        events.error(f"pressure_watch.{source}", exc)

    def _close_watch(self) -> None:
        watch, self.watch = self.watch, None
        if watch is not None:
            try:
                watch.close()
            except Exception as exc:
                events.error("monitor.pressure_watch", exc)

    def drain(self) -> None:
        """The worker is in warm shutdown and its pool drains: keep polling, enforce only the hard limit.

        Each child leaves after its current task anyway, so soft recycles are moot; a task growing past
        the hard limit is still stopped (and SIGKILLed after ``kill_grace``) until :meth:`stop`.
        """
        self.engine.draining = True
        self.draining_since = self.clock()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._woken.set()
        self._close_watch()
        if self.board is not None:
            self.board.wake()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)
        for tracked in self._tracked.values():
            tracked.close()
        self._tracked.clear()
        if self._master_probe is not None:
            self._master_probe.close()
            self._master_probe = None

    def _run(self) -> None:
        # The children exist already and may have picked up a backlog: look at them at once.
        delay = min(FIRST_POLL, self.engine.poll_interval)
        while self._sleep(delay):
            try:
                delay = self.poll()
            except Exception as exc:  # fail open: never let the loop die
                events.error("monitor.poll", exc)
                delay = self.engine.poll_interval

    def _sleep(self, delay: float) -> bool:
        """Wait ``delay`` seconds, or less if a child starts a task meanwhile; False once stopped.

        Idle children are polled at the configured interval (they are not expected to grow), so a child
        handed a job must be looked at soon after it starts: the monitor sleeps on the board's wake pipe
        (a child starting a task writes to it while the master sleeps: no wake-up while nothing happens),
        or, without one, reads the board's activity counter every ACTIVITY_TICK seconds.
        """
        if self._woken.is_set():
            return self._after_pressure_event()
        board = self.board if self.engine.idle_watched else None
        if board is None or delay <= ACTIVITY_TICK:
            if self._woken.wait(delay) and not self._stop.is_set():
                return self._after_pressure_event()
            return not self._stop.is_set()
        end = time.monotonic() + delay
        if board.can_wake:
            board.sleep_until_task(self._activity_mark, delay)
            if self._woken.is_set() and not self._stop.is_set():
                return self._after_pressure_event()
            return self._after_task_start(end)
        while True:
            left = end - time.monotonic()
            if left <= 0:
                return True
            if self._woken.wait(min(ACTIVITY_TICK, left)):
                return self._after_pressure_event() if not self._stop.is_set() else False
            if board.activity() != self._activity_mark:
                return self._after_task_start(end)

    def _after_task_start(self, end: float) -> bool:
        """The sleep (until ``end``, monotonic) ended at a task start: poll now if a policy may stop the task;
        else not before :data:`TASK_START_SPACING` of a poll interval since the last poll (a recycle waits for
        the task's end anyway), so a steady stream of tasks does not make the monitor poll once per task start
        while a fast-leaking child is still seen within a few of its tasks. False once stopped."""
        if self.engine.stops_tasks or self._polled_at is None or self._stop.is_set() or self._unseen_child():
            return not self._stop.is_set()
        spacing = TASK_START_SPACING * self.engine.poll_interval
        wait = min(end - time.monotonic(), self._polled_at + spacing - self.clock())
        if wait > 0 and self._woken.wait(wait):
            return self._after_pressure_event()
        return not self._stop.is_set()

    def _unseen_child(self) -> bool:
        """Whether a busy child on the board is one no poll has read yet (a new or replacement child, likely the
        one whose task just started): it is read at once, so a child that dies early in its first task (a task
        that OOM-kills it, or kills it itself) is known, with its task, when it goes. Read from the board, not
        the pool's listing (listing it here would shift the pool view's window of exit codes)."""
        board = self.board
        if board is None:
            return False
        try:
            for index in range(min(board.slots, self._top_index + 2)):
                current = board.current(index)
                if current is not None and current.busy and current.pid and current.pid not in self._tracked:
                    return True
            return False
        except Exception:
            return True  # cannot tell: look now, as every task start did before the spacing

    def _after_pressure_event(self) -> bool:
        """Woken by a pressure notification: poll now, or after EVENT_SPACING since the last poll; False once stopped."""
        if self._stop.is_set():
            return False
        if self._polled_at is not None:
            wait = EVENT_SPACING - (self.clock() - self._polled_at)
            if wait > 0:
                return not self._stop.wait(wait)
        return True

    def _stretch(self, delay: float, samples: list[ChildSample]) -> float:
        """The delay, doubled (up to IDLE_STRETCH x the interval) while nothing changes: every child idle,
        no order pending, the same children at the same RSS, no system policy that needs readings, no policy
        asking for exact readings of every child (threshold 0: a pool budget being checked, intake paused on the
        pool threshold waiting to resume)."""
        quiet = (delay >= self.engine.poll_interval and self.system is None and self.board is not None
                 and self.engine.idle_watched and self.engine.threshold != 0
                 and all(s.task_id is None and s.spawned_at > 0 and self.engine.pending(s.pid) is None
                         for s in samples))
        signature = {s.pid: s.rss for s in samples}
        previous, self._signature = self._signature, signature
        if quiet and previous is not None and previous.keys() == signature.keys() and all(
            abs(signature[pid] - previous[pid]) <= QUIET_RSS_CHANGE for pid in signature
        ):
            self._quiet = min(self._quiet + 1, IDLE_STRETCH.bit_length() - 1)
        else:
            self._quiet = 0
        stretched = delay * (1 << self._quiet)
        if self.master_pid is not None and self.detectors:
            stretched = min(stretched, max(delay, self.master_every))  # the master is read on its own schedule
        return stretched

    # -- one poll -------------------------------------------------------
    def poll(self) -> float:
        """One poll; returns the delay until the next."""
        now = self.clock()
        self.polls += 1
        self._polled_at = now
        notified, self._pressure_at = self._pressure_at is not None, None
        self._woken.clear()
        if self.board is not None:
            self._activity_mark = self.board.activity()  # a task started after this wakes the next sleep
        samples, index_of = self._read_children(now)
        for pid in [p for p in self._tracked if p not in index_of]:
            self._lost(pid, now)
            self._forget(pid)
        for pid in [p for p in self._gone_unread if p not in index_of]:
            self._lost(pid, now, index=self._gone_unread.pop(pid))
        try:
            self._drain_all(now)
        except Exception as exc:
            events.error("monitor.drain", exc)
        if self.master_pid is not None and self.detectors:
            self._observe_master(now)
        if notified and self.pace is not None:
            self.pace.notified()
        system = self._read_system(now, fresh=notified)
        if self.on_reading is not None:
            try:
                self.on_reading(now, system, samples)
            except Exception as exc:
                events.error("monitor.on_reading", exc)
        self._carry_out(self.engine.decide(samples, now, system=system), index_of)
        for finding in self.engine.findings():
            self._found(finding)
        self._remind_leaving(samples, index_of)
        self.last_poll = PollView(now, tuple(samples), system, self.master_reading, index_of)
        if self.on_poll is not None:
            try:
                self.on_poll(self.last_poll)
            except Exception as exc:
                events.error("monitor.on_poll", exc)
        delay = self._stretch(self.engine.next_delay, samples)
        if self.pace is not None and system is not None:
            delay = min(delay, self.pace.observe(system))
        return delay

    def _read_children(self, now: float) -> tuple[list[ChildSample], dict[int, int | None]]:
        """Sample every listed child; also returns each listed child's pool index (gone ones included)."""
        samples: list[ChildSample] = []
        index_of: dict[int, int | None] = {}
        for pid, index in list(self.children()):
            if not pid:
                continue
            try:
                sample = self._sample(pid, index, now)
            except ProcessGone:
                index_of[pid] = index  # exited, not yet reaped by the pool: dealt with once it is
                if pid not in self._tracked:
                    self._gone_unread[pid] = index  # died before any reading: still a child that left
                continue
            except Exception as exc:
                events.error("monitor.sample", exc)
                # Keep the child known to the engine (so its pending orders and grace timers survive)
                # with its last sample, marked inexact so no new decision is taken on stale data.
                tracked = self._tracked.get(pid)
                if tracked is not None and tracked.history.last is not None:
                    samples.append(dataclasses.replace(tracked.history.last, exact=False))
                index_of[pid] = index
                continue
            samples.append(sample)
            index_of[pid] = index
            tracked = self._tracked[pid]
            tracked.history.add(now, sample)
            if index is not None and index > self._top_index:
                self._top_index = index
            if not tracked.slot_checked:
                tracked.slot_checked = True
                self._check_slot(pid, index)
        return samples, index_of

    def _carry_out(self, decisions: Iterable[Decision], index_of: dict[int, int | None]) -> None:
        """Count each decision and hand it to the actuator (a failure is logged; the others still go)."""
        decisions = self._noted(list(decisions))
        for decision in decisions:
            key = (decision.action.value, decision.reason)
            self.decided = {**self.decided, key: self.decided.get(key, 0) + 1}
            try:
                self.actuator.apply(decision, index_of.get(decision.pid))
                if decision.action is Action.KILL:
                    # The kill grace runs from when the stop was sent, not from the poll's start: a poll of
                    # many children can take most of a second under load.
                    self.engine.order_sent(decision.pid, self.clock())
                if decision.action is Action.FORCE_KILL and not self.actuator.dry_run:
                    self._killed.add(decision.pid)
            except Exception as exc:
                events.error("actions.apply", exc)

    def _noted(self, decisions: list[Decision]) -> list[Decision]:
        """Decisions that follow a kernel notification (within WAKE_NOTE_S) carry its source and the milliseconds
        from it to now; the note is used by the first poll that decides anything, or expires."""
        note = self._wake_note
        if note is None:
            return decisions
        since = self.clock() - note[1]
        if since > WAKE_NOTE_S:
            self._wake_note = None
            return decisions
        if not decisions:
            return decisions
        self._wake_note = None
        extra = (("woken_by", note[0]), ("since_wake_ms", round(since * 1000, 1)))
        return [dataclasses.replace(d, detail=d.detail + extra) for d in decisions]

    def _remind_leaving(self, samples: list[ChildSample], index_of: dict[int, int | None]) -> None:
        """Remind every idle child told to leave, each poll until it has gone (see worker/child_orders.py)."""
        for sample in samples:
            if sample.task_id is None and self.engine.pending(sample.pid) in _LEAVING:
                try:
                    self.actuator.remind(sample.pid, index_of.get(sample.pid))
                except Exception as exc:
                    events.error("actions.remind", exc)

    def _sample(self, pid: int, index: int | None, now: float) -> ChildSample:
        tracked = self._tracked.get(pid)
        if tracked is None:
            tracked = self._tracked[pid] = _Tracked(self.open_probe(pid))
        tracked.index = index  # known even if the child is found dead: its board slot names its task
        probe = tracked.probe
        rss, faults = probe.cheap()
        fallback: str | None = None
        if self.metric == "rss":
            mem, exact = rss, True
        else:
            estimate = tracked.estimate
            bound = estimate.bound(rss, faults)
            threshold = self.engine.threshold_for(pid)
            # Provably still above every limit: a lower bound is evidence enough, no exact reading.
            known_above = estimate.known_above(rss, self.engine.ceiling, now) if threshold is not None else None
            if known_above is not None:
                mem, exact = known_above, True
            elif tracked.unreadable:
                mem, exact, fallback = rss, True, "rss"  # said once; see _metric_unavailable
            elif estimate.needs_exact(rss, bound, threshold, now):
                try:
                    started = time.perf_counter()
                    mem, exact = probe.exact(self.metric), True
                    estimate.record_exact(mem, rss, faults, now, cost=time.perf_counter() - started)
                except ProcessGone:
                    raise
                except ProbeError as exc:
                    # No exact reading possible for this child (a non-dumpable child, another user's): its
                    # RSS stands in, labelled as such; the engine acts on it only for the hard limit.
                    tracked.unreadable = True
                    self._metric_unavailable(pid, exc)
                    mem, exact, fallback = rss, True, "rss"
            else:
                mem, exact = bound, False
        task = task_id = None
        tasks_run, spawned_at = 0, 0.0
        if self.board is not None and index is not None and 0 <= index < self.board.slots:
            current = self.board.current(index)
            if current is not None and current.pid == pid:
                task, task_id, tasks_run, spawned_at = current.task, current.task_id, current.tasks_run, current.spawned_at
                if not tracked.spawn_seen:
                    spawn = self.board.spawn_time(index)
                    if spawn > 0:
                        tracked.spawn_seen = True
                        self.engine.observe_spawn(spawn)
        leak_per_call, calls_per_second = self.leak_rates(pid) if self.leak_rates is not None else (0.0, 0.0)
        return ChildSample(pid=pid, mem=mem, exact=exact, rss=rss, task=task, task_id=task_id,
                           tasks_run=tasks_run, spawned_at=spawned_at, leak_bytes_per_call=leak_per_call,
                           calls_per_second=calls_per_second, fallback=fallback)

    @property
    def unreadable_children(self) -> int:
        """Live children whose configured metric cannot be read (RSS stands in for them)."""
        return sum(1 for tracked in self._tracked.values() if tracked.unreadable)

    def _metric_unavailable(self, pid: int, exc: BaseException) -> None:
        """Tell the operator once that the configured metric could not be read, what is done instead, and
        how to fix it."""
        if self._unreadable_reported:
            return
        self._unreadable_reported = True
        events.emit(
            events.METRIC_UNAVAILABLE, "warning", pid=pid, metric=self.metric, used="rss",
            error=f"{type(exc).__name__}: {exc}",
            effect=(f"{self.metric.upper()} is read from /proc/PID/smaps_rollup, which this worker's main process "
                    f"may not read for this child; RSS (which also counts pages shared with the master) stands "
                    f"in for it, reported as metric 'rss': the hard limit is enforced on RSS, no memory-based "
                    f"soft recycle is ordered on it (a fresh child could be over the limit: endless recycling)"),
            fix=("let the worker's main process read its children's smaps_rollup: run master and children as the "
                 "same user and do not make the children non-dumpable (prctl PR_SET_DUMPABLE 0, setuid in "
                 "worker_process_init), or grant the main process CAP_SYS_PTRACE; or set memguard_metric='rss' "
                 "with limits sized for RSS"),
        )

    def _check_slot(self, pid: int, index: int | None) -> None:
        """Say once per child if it has no board slot: it is measured, but cannot record its tasks nor
        obey orders (a hard limit is enforced by SIGKILL only, a soft recycle is not possible)."""
        if self.board is None or self.board.has_slot(index):
            return
        events.emit(events.CHILD_UNGUARDED, "warning", pid=pid, index=index, board_slots=self.board.slots,
                    effect="measured and SIGKILLed above the hard limit, but no soft recycle, no clean "
                           "MemoryLimitExceeded and no per-task records",
                    fix=f"keep the pool at most {self.board.slots} children (pool_grow/autoscale max)")

    def _drain_all(self, now: float) -> None:
        """Read every slot's new finished-task records (also those of children that just exited)."""
        if self.board is None or (self.on_tasks is None and not self.detectors):
            return
        for index in range(min(self.board.slots, self._top_index + 1)):
            since = self._drained.get(index, 0)
            count, records = self.board.drain(index, since)
            self._drained[index] = count
            if records:
                self._dispatch(records, now)

    def _dispatch(self, records: list[TaskSample], now: float) -> None:
        if self.on_tasks is not None:
            try:
                self.on_tasks(records)
            except Exception as exc:  # fail open: the detectors still get the records
                events.error("monitor.on_tasks", exc)
        for detector in self.detectors:
            for record in records:
                if not self._feed(detector, detector.observe_task, record, now):
                    break

    def _observe_master(self, now: float) -> None:
        """Read the master (exact metric and RSS) every ``master_every`` seconds and feed the detectors."""
        assert self.master_pid is not None
        last = self.master_reading
        if last is not None and now - last.at < self.master_every:
            return
        try:
            if self._master_probe is None:
                self._master_probe = self.open_probe(self.master_pid)
            rss, _faults = self._master_probe.cheap()
            mem = self._master_probe.exact(self.metric)
            reserved = self.reserved() if self.reserved is not None else None
        except Exception as exc:
            events.error("monitor.master", exc)
            return
        sample = self.master_reading = MasterSample(pid=self.master_pid, mem=mem, rss=rss, at=now)
        self.engine.observe_master(mem)
        for detector in self.detectors:
            self._feed(detector, detector.observe_master, sample, reserved)

    def _feed(self, detector: Detector, hook: Callable[..., list[Finding]], *args: object) -> bool:
        """Call one detector hook and log its findings; False (and memguard.error) if it raised."""
        try:
            findings = hook(*args)
        except Exception as exc:
            events.error(f"detector.{detector.name}", exc)
            return False
        for finding in findings:
            self._found(finding)
        return True

    def _found(self, finding: Finding) -> None:
        """Hand a finding to the sink (the Guard: it logs it once and keeps what it says)."""
        try:
            self.on_finding(finding)
        except Exception as exc:
            events.error("monitor.finding", exc)

    def _read_system(self, now: float, fresh: bool = False) -> SystemSample | None:
        """The machine/cgroup reading for pressure policies, refreshed at most every SYSTEM_EVERY s (sooner while
        adaptive polling is fast, and at once after a kernel pressure notification: ``fresh``)."""
        if self.system is None:
            return None
        every = min(self.system_every, self.pace.delay * 0.9) if self.pace is not None else self.system_every
        if fresh or self._system is None or now - self._system.at >= every:
            try:
                self._system = self.system(now)
            except Exception as exc:
                events.error("monitor.system", exc)
                return None
        return self._system

    def _lost(self, pid: int, now: float, index: int | None = None) -> None:
        """A child left the pool: report it if it died in a way MemGuard did not cause (``index``: its pool
        index when the monitor never read it)."""
        if self.exit_code is None or self.explainer is None or pid in self._killed:
            self._killed.discard(pid)
            return
        if self.shutting_down is not None and self.shutting_down():
            return  # the worker is stopping its children
        try:
            exitcode = self.exit_code(pid)
            if exitcode is None or exitcode in CLEAN_EXITS:
                return
            tracked = self._tracked.get(pid)
            index = tracked.index if tracked is not None else index
            recorded = None
            if self.board is not None and index is not None and self.board.has_slot(index):
                recorded = self.board.task_of(index, pid)  # what the child wrote at task start: survives it
            report = self.explainer.explain(pid, exitcode, _history_of(tracked), recorded=recorded, now=now)
            if report is not None:
                signal = str(report.fields.get("signal") or "none")
                self.lost = {**self.lost, signal: self.lost.get(signal, 0) + 1}
                events.emit(report.event, "error", **report.fields)
        except Exception as exc:
            events.error("monitor.child_lost", exc)

    def _forget(self, pid: int) -> None:
        tracked = self._tracked.pop(pid, None)
        if tracked is not None:
            tracked.close()
        for detector in self.detectors:
            try:
                detector.child_exited(pid)
            except Exception as exc:
                events.error(f"detector.{detector.name}", exc)
