"""What MemGuard knows right now, and the loop that keeps it current. No Celery imports.

A :class:`Guard` is the one object a worker's MemGuard is: the bootstep
(:mod:`celery_memguard.worker.bootstep`) builds it, starts it with the pool's
hooks (:class:`~celery_memguard.monitor.PoolHooks`) and stops it, like Celery's
``Heart`` step builds a ``Heart``. It owns

* the engine and the detectors the settings enable, and the monitor thread that
  polls the children and carries out the engine's decisions;
* what the findings said so far: the current leak suspects, heavy-task counts and
  the latest master growth. Each finding reaches :meth:`Guard.record` once: it is
  logged there (the only place), remembered, and the children's trace list on the
  board (suspects to trace, watched names to measure) is republished when it changed;
* whether task intake is paused (``memguard_pause_below`` / ``memguard_pause_pool_above``): the
  :class:`~celery_memguard.policies.intake.IntakePause` decision judges every fresh reading handed
  to :meth:`Guard.observe_intake` (the monitor's polls, and any other source of readings), the
  guard logs ``memguard.paused`` / ``memguard.resumed``, tells the worker's
  :class:`IntakeSwitch` (the Celery glue, :mod:`celery_memguard.worker.intake`) and publishes the
  state as :attr:`Guard.intake_state`;
* read-only views for whoever asks: the ``memguard`` status command, the
  ``inspect stats`` summary (:meth:`Guard.summary`), and the Prometheus exporter
  (:mod:`celery_memguard.metrics`), which it starts and stops with the monitor
  when ``memguard_metrics_port`` is set.

Tables read by other threads are replaced whole, never changed in place, so a
reader sees one consistent version without locks.
"""

from __future__ import annotations

import dataclasses
import functools
import random
import threading
import time
from typing import TYPE_CHECKING, Any, Protocol, Sequence

from . import events
from .actions import Actuator
from .board import TRACE_MAX, WATCH_MARK, Board
from .config import MemGuardConfig
from .detectors import HeavyTaskDetector, LeakDetector, MasterGrowthDetector
from .detectors.base import Detector, Finding
from .engine import Engine
from .forensics import LossExplainer
from .monitor import SYSTEM_EVERY, HostReaders, Listeners, Monitor, PollView, PoolHooks
from .pace import ADAPTIVE_FLOOR, AdaptivePace, PressurePlan
from .probes import HeapProbe, ProcessProbe, heap_probe, open_process_probe
from .probes.pressure_events import PressureWatch, PressureWatchError, open_pressure_watch, refused
from .probes.system import oom_kill_count, read_system
from .policies import IntakeChange, IntakePause, build_intake
from .samples import Action, ChildSample, MasterSample, SystemSample
from .sampling import SampleLog
from .units import mib

if TYPE_CHECKING:  # pragma: no cover
    from .metrics import MetricsServer

__all__ = ["Guard", "IntakeState", "IntakeSwitch", "build_detectors", "heap_attribution"]

#: Seconds a reading taken for a reader (a metrics scrape) serves later readers: scrapes never read more often.
READING_REUSE = 5.0

_UNSUPPORTED = {
    "can": "validate its settings and log memguard.started",
    "cannot": (
        "measure tasks per child, recycle or stop anything: the {pool} pool runs tasks inside the worker "
        "process itself, so a limit could only kill the whole worker. Use --pool=prefork for memory limits, "
        "or rely on the container's limit"
    ),
}


class IntakeSwitch(Protocol):
    """What stops and restarts a worker's task intake (the Celery glue); callable from any thread."""

    def set_paused(self, paused: bool) -> None:
        """Stop (True) or restart (False) fetching messages and starting tasks."""

    @property
    def held(self) -> int:
        """Tasks received but held back (not started) by the pause."""


@dataclasses.dataclass(frozen=True, slots=True)
class IntakeState:
    """Whether task intake is paused, since when (monitor clock) and why; how often it was, for how long."""

    enabled: bool = False
    paused: bool = False
    since: float | None = None
    trigger: str | None = None
    pauses: int = 0
    paused_s_total: float = 0.0

    def as_dict(self, now: float, held: int | None = None) -> dict[str, Any]:
        """JSON-able (``since`` as seconds ago)."""
        return {"enabled": self.enabled, "paused": self.paused, "trigger": self.trigger,
                "paused_for_s": None if self.since is None else round(max(0.0, now - self.since), 3),
                "pauses": self.pauses, "paused_s_total": round(self.paused_s_total, 3), "held": held}


class Guard:
    """One worker's MemGuard: engine, detectors, monitor, and the live tables the findings fill."""

    def __init__(self, config: MemGuardConfig, *, pool_name: str, board: Board | None,
                 node: str | None = None) -> None:
        """``board`` is None when the pool has no child processes to police (MemGuard then stays idle);
        ``node`` is the worker's node name (``w1@host``), shown by the metrics."""
        self.config = config
        self.pool_name = pool_name
        self.board = board
        self.node = node
        self.monitor: Monitor | None = None
        #: Logs ``memguard.sample`` (with the tasks finished since the last one); None when sampling is off.
        self.sampler: SampleLog | None = None
        self.exporter: MetricsServer | None = None
        self._master_pid: int | None = None
        self._reading_lock = threading.Lock()
        self._master_probe: ProcessProbe | None = None
        self._read: tuple[float, MasterSample | None, SystemSample | None] | None = None
        #: The current leak suspects' latest ``memguard.leak_suspected`` fields, by task.
        self.suspects: dict[str, dict[str, Any]] = {}
        #: How many ``memguard.heavy_task`` findings each task has had.
        self.heavy: dict[str, int] = {}
        #: The latest ``memguard.master_growth`` fields, or None.
        self.master_growth: dict[str, Any] | None = None
        #: The trace list as last published on the board.
        self.published: list[str] = []
        self.intake: IntakePause | None = None
        try:
            self.intake = build_intake(config)
        except Exception as exc:
            events.error("guard.intake", exc)
        #: Whether task intake is paused (replaced whole on each change: read it from any thread).
        self.intake_state = IntakeState(enabled=self.intake is not None)
        self._intake_lock = threading.Lock()
        self._switch: IntakeSwitch | None = None
        self.engine: Engine | None = None
        try:
            self.engine = Engine.from_config(config, rng=random.Random(), intake=self.intake)
        except Exception as exc:
            events.error("guard.engine", exc)
        self.detectors: list[Detector] = []
        try:
            self.detectors = build_detectors(config)
        except Exception as exc:  # limits still apply without detection
            events.error("guard.detectors", exc)
        self._leak = next((d for d in self.detectors if isinstance(d, LeakDetector)), None)

    # -- life cycle -----------------------------------------------------
    def announce(self, concurrency: object) -> None:
        """Log ``memguard.started`` (and, without pool children, why nothing will be policed)."""
        cfg = self.config
        events.emit(
            events.STARTED,
            pool=self.pool_name,
            concurrency=concurrency,
            metric=cfg.metric,
            soft_limit_mib=mib(cfg.soft_limit),
            hard_limit_mib=mib(cfg.hard_limit),
            pool_limit_mib=mib(cfg.pool_limit),
            min_available_mib=mib(cfg.min_available),
            poll_interval=cfg.poll_interval,
            sample_interval=cfg.sample_interval,
            dry_run=cfg.dry_run,
            kill_grace=cfg.kill_grace,
            effective_memory_mib=mib(cfg.effective_memory),
            policies=[p.reason for p in self.engine.policies] if self.engine else [],
            leak_attribution=("rss" if heap_attribution(cfg) is None else "heap") if cfg.leak_detection else None,
            log=events.get().describe(),
        )
        if self.board is None:
            events.emit(events.POOL_UNSUPPORTED, "warning", pool=self.pool_name, can=_UNSUPPORTED["can"],
                        cannot=_UNSUPPORTED["cannot"].format(pool=self.pool_name))

    def start(self, pool: PoolHooks, switch: IntakeSwitch | None = None) -> None:
        """Start the metrics exporter (when configured) and the monitor thread on the pool the hooks
        describe (no monitor without a board or an engine). ``switch`` pauses and resumes the worker's
        intake when ``memguard_pause_*`` ask for it."""
        cfg = self.config
        self._master_pid = pool.master_pid
        self._start_exporter()
        if self.board is None or self.engine is None:
            return
        self._switch = switch
        try:
            wants_system = (cfg.min_available is not None or cfg.psi_threshold is not None
                            or cfg.pause_below is not None)
            plan = PressurePlan.from_config(cfg)
            pace = AdaptivePace(plan.available_levels, cfg.poll_interval) if plan.adaptive and wants_system else None
            watch = self._pressure_watch(plan, pace)
            engine = self.engine
            sampler = SampleLog(cfg.sample_interval, cfg.metric,
                                spawn_time=lambda: engine.storm.spawn_time) if cfg.sample_interval else None
            monitor = Monitor(
                pool=pool, engine=self.engine, board=self.board, metric=cfg.metric, detectors=self.detectors,
                actuator=Actuator(self.board, metric=cfg.metric, dry_run=cfg.dry_run),
                host=HostReaders(system=read_system if wants_system else None,
                                 system_every=0.0 if cfg.pause_below is not None else SYSTEM_EVERY),
                listeners=Listeners(finding=self.record,
                                    poll=sampler.offer if sampler is not None else None,
                                    tasks=sampler.observe_tasks if sampler is not None else None,
                                    reading=self.observe_intake if self.intake is not None else None),
                explainer=LossExplainer(hard_limit=cfg.hard_limit, effective_memory=cfg.effective_memory,
                                        oom_kills=oom_kill_count, available=_available_now),
                pace=pace, watch=watch,
            )
            self.sampler = sampler
            monitor.start()
            self.monitor = monitor
        except Exception as exc:
            events.error("guard.start", exc)

    def _pressure_watch(self, plan: PressurePlan, pace: AdaptivePace | None) -> PressureWatch | None:
        """Arm the kernel's pressure notifications the plan wants (None where none can be) and log
        ``memguard.pressure_watch`` saying what wakes the monitor, and why not more."""
        if not plan.active:
            return None  # no policy acts on memory pressure
        watch: PressureWatch | None = None
        fallback: str | None = None
        if not plan.wants_events:
            fallback = f"memguard_pressure_wake={plan.mode!r}"
        else:
            failures: list[BaseException] = []
            try:
                watch = open_pressure_watch(plan.usage_thresholds, plan.psi_trigger,
                                            host_psi=plan.psi_threshold is not None)
                fallback, failures = "; ".join(watch.notes) or None, list(watch.failures)
            except PressureWatchError as exc:  # nothing armed: adaptive polling alone
                fallback, failures = str(exc), list(exc.failures)
            except Exception as exc:  # fail open: a bug here costs the notifications, nothing else
                fallback, failures = f"{type(exc).__name__}: {exc}", [exc]
            faults = [f for f in failures if not refused(f)]  # a refusal is only a fallback, said below
            if faults:
                events.error("guard.pressure_watch", faults[0])
        armed = watch.armed if watch is not None else []
        events.emit(
            events.PRESSURE_WATCH,
            wake=[a.source for a in armed],
            detail=[a.detail for a in armed],
            thresholds_mib=[mib(t) for a in armed for t in a.thresholds],
            psi_trigger=next((a.trigger for a in armed if a.trigger), None),
            adaptive_poll=pace is not None,
            adaptive_floor_s=ADAPTIVE_FLOOR if pace is not None else None,
            poll_interval=self.config.poll_interval,
            mode=plan.mode,
            fallback=fallback,
        )
        return watch

    def drain(self) -> None:
        """Warm shutdown: the monitor keeps enforcing the hard limit while the pool drains."""
        monitor = self.monitor
        if monitor is None:
            return
        monitor.drain()
        last = monitor.last_poll
        events.emit(events.DRAINING, children=len(last.children) if last is not None else None,
                    busy=sum(1 for c in last.children if c.task_id) if last is not None else None,
                    enforcing="hard_limit")

    def stop(self, how: str) -> None:
        """Stop the metrics exporter and the monitor (once; later calls do nothing); log ``memguard.stopped``."""
        self._stop_exporter()
        monitor, self.monitor = self.monitor, None
        if monitor is None:
            return
        try:
            monitor.stop()
            if self.sampler is not None:
                self.sampler.flush()  # the tasks that finished since the last sample
            drained = monitor.draining_since
            events.emit(events.STOPPED, polls=monitor.polls, decisions=monitor.decisions, shutdown=how,
                        drained_s=None if drained is None else round(monitor.clock() - drained, 1),
                        events_dropped=events.get().dropped)
        except Exception as exc:
            events.error("guard.stop", exc)

    def _start_exporter(self) -> None:
        if self.config.metrics_port is None or self.exporter is not None:
            return
        try:
            from .metrics import start_exporter  # imports prometheus_client only when a server starts

            self.exporter = start_exporter(self)
        except Exception as exc:
            events.error("metrics.start", exc)

    def _stop_exporter(self) -> None:
        exporter, self.exporter = self.exporter, None
        try:
            if exporter is not None:
                exporter.stop()
            with self._reading_lock:
                probe, self._master_probe = self._master_probe, None
                if probe is not None:
                    probe.close()
        except Exception as exc:
            events.error("metrics.stop", exc)

    # -- task intake ----------------------------------------------------
    def observe_intake(self, now: float, system: SystemSample | None, children: Sequence[ChildSample]) -> None:
        """Judge a fresh reading for the intake pause (any thread); on a change, log it and flip the switch."""
        intake = self.intake
        if intake is None:
            return
        try:
            pool = sum(c.mem for c in children) if children else None
            with self._intake_lock:
                change = intake.observe(now, available=system.available if system is not None else None, pool=pool,
                                        pool_exact=all(c.exact for c in children))
                if change is None:
                    return
                self.intake_state = self._next_state(change)
        except Exception as exc:
            events.error("guard.intake", exc)
            return
        self._flip(change, children)

    def _next_state(self, change: IntakeChange) -> IntakeState:
        state = self.intake_state
        if change.paused:
            return dataclasses.replace(state, paused=True, since=change.at, trigger=change.trigger,
                                       pauses=state.pauses + 1)
        return dataclasses.replace(state, paused=False, since=None, trigger=None,
                                   paused_s_total=state.paused_s_total + (change.paused_s or 0.0))

    def _flip(self, change: IntakeChange, children: Sequence[ChildSample]) -> None:
        """Tell the worker's switch (a failure is logged; the state stays as decided) and log the change."""
        switch = None if self.config.dry_run else self._switch  # dry run: log what would happen, only
        held: int | None = None
        if switch is not None:
            try:
                switch.set_paused(change.paused)
                held = switch.held
            except Exception as exc:
                events.error("guard.intake_switch", exc)
        loud = change.paused or change.trigger == "unreachable"  # a pause given up is a warning too
        events.emit(events.PAUSED if change.paused else events.RESUMED, "warning" if loud else "info",
                    **change.fields(), held=held, running=sum(1 for c in children if c.task_id),
                    dry_run=self.config.dry_run)

    @property
    def paused(self) -> bool | None:
        """Whether task intake is paused under memory pressure; None while no pause feature runs."""
        return self.intake_state.paused if self.intake_state.enabled else None

    def intake_status(self, now: float) -> dict[str, Any]:
        """The intake state as JSON (status command, stats summary)."""
        switch = self._switch
        try:
            held = switch.held if switch is not None else None
        except Exception:
            held = None
        return self.intake_state.as_dict(now, held)

    # -- findings -------------------------------------------------------
    def record(self, finding: Finding) -> None:
        """A detector's finding: log it, remember what it says, republish the trace list if it changed."""
        events.log_finding(finding)
        try:
            self._remember(finding)
        except Exception as exc:
            events.error("guard.findings", exc)
            return
        if finding.event in (events.LEAK_SUSPECTED, events.LEAK_CLEARED, events.GROWTH_WATCH):
            self._publish_trace_list()

    def _remember(self, finding: Finding) -> None:
        task = finding.task or str(finding.fields.get("task") or "")
        if finding.event == events.LEAK_SUSPECTED and task:
            self.suspects = {**self.suspects, task: dict(finding.fields)}
        elif finding.event == events.LEAK_CLEARED and task in self.suspects:
            self.suspects = {k: v for k, v in self.suspects.items() if k != task}
        elif finding.event == events.HEAVY_TASK and task:
            self.heavy = {**self.heavy, task: self.heavy.get(task, 0) + 1}
        elif finding.event == events.MASTER_GROWTH:
            self.master_growth = dict(finding.fields)

    def _publish_trace_list(self) -> None:
        """Suspects (oldest first) for the children to trace, then the leak detector's watched names
        (marked) for them to measure every call of."""
        if self.board is None:
            return
        try:
            traced = list(self.suspects)[-TRACE_MAX:] if self.config.diagnostics != "off" else []
            leak = self._leak
            watched = sorted(leak.watched - set(traced)) if leak is not None and leak.heap_deltas else []
            published = traced + [WATCH_MARK + name for name in watched][: TRACE_MAX - len(traced)]
            if published != self.published:
                self.board.set_trace(published)
                self.published = published
        except Exception as exc:
            events.error("guard.trace_list", exc)

    # -- what it knows now (read by other threads) ------------------------
    @property
    def active(self) -> bool:
        """Whether the monitor is running."""
        return self.monitor is not None

    @property
    def last_poll(self) -> PollView | None:
        monitor = self.monitor
        return monitor.last_poll if monitor is not None else None

    @property
    def polls(self) -> int:
        """Polls done so far by the running monitor (0 when it is not running)."""
        monitor = self.monitor
        return monitor.polls if monitor is not None else 0

    @property
    def unreadable_children(self) -> int:
        """Live children whose configured metric cannot be read (RSS stands in for them)."""
        monitor = self.monitor
        return monitor.unreadable_children if monitor is not None else 0

    @property
    def decided(self) -> dict[tuple[str, str], int]:
        """Decisions taken so far by ``(action, reason)`` (in dry run: what would have been done)."""
        monitor = self.monitor
        return dict(monitor.decided) if monitor is not None else {}

    @property
    def lost(self) -> dict[str, int]:
        """Children lost by a signal MemGuard did not send (``memguard.child_lost``), by signal name."""
        monitor = self.monitor
        return dict(monitor.lost) if monitor is not None else {}

    @property
    def errors(self) -> dict[str, int]:
        """``memguard.error`` occurrences in this process (logged once per cause, all counted), by ``where``."""
        counts: dict[str, int] = {}
        for (where, _kind), count in events.get().error_counts.items():
            counts[where] = counts.get(where, 0) + count
        return counts

    def host_readings(self) -> tuple[MasterSample | None, SystemSample | None]:
        """The master's memory and the memory available: the latest poll's readings, and for what the poll
        does not read (no detector reads the master, no pressure policy the system) one reading taken now,
        reused for READING_REUSE seconds. For readers other than the monitor (metrics scrapes)."""
        view = self.last_poll
        master = view.master if view is not None else None
        system = view.system if view is not None else None
        if (master is not None or self._master_pid is None) and system is not None:
            return master, system
        now = time.monotonic()
        with self._reading_lock:
            if self._read is None or now - self._read[0] >= READING_REUSE:
                self._read = (now, self._read_master(now) if master is None else None,
                              self._read_system(now) if system is None else None)
            _, read_master, read_sys = self._read
        return master or read_master, system or read_sys

    def _read_master(self, now: float) -> MasterSample | None:
        if self._master_pid is None:
            return None
        try:
            if self._master_probe is None:
                self._master_probe = open_process_probe(self._master_pid)
            rss, _faults = self._master_probe.cheap()
            return MasterSample(pid=self._master_pid, mem=self._master_probe.exact(self.config.metric), rss=rss, at=now)
        except Exception as exc:
            events.error("guard.read_master", exc)
            return None

    @staticmethod
    def _read_system(now: float) -> SystemSample | None:
        try:
            return read_system(now)
        except Exception as exc:
            events.error("guard.read_system", exc)
            return None

    def pending(self, pid: int) -> Action | None:
        """The order already given to child ``pid`` and not yet carried out, if any."""
        engine = self.engine
        return engine.pending(pid) if engine is not None else None

    def summary(self) -> dict[str, Any]:
        """A compact JSON-able summary (the ``memguard`` section of ``celery inspect stats``)."""
        cfg = self.config
        view = self.last_poll
        by_action: dict[str, dict[str, int]] = {}
        for (action, reason), count in sorted(self.decided.items()):
            by_action.setdefault(action, {})[reason] = count
        return {
            "active": self.active,
            "metric": cfg.metric,
            "dry_run": cfg.dry_run,
            "limits_mib": {"soft": mib(cfg.soft_limit), "hard": mib(cfg.hard_limit), "pool": mib(cfg.pool_limit)},
            "children_mib": {} if view is None else {str(c.pid): mib(c.mem) for c in view.children},
            "recycles": by_action.get(Action.RECYCLE.value, {}),
            "kills": by_action.get(Action.KILL.value, {}),
            "sigkills": by_action.get(Action.FORCE_KILL.value, {}),
            "suspects_kib_per_call": {task: s.get("kib_per_call") for task, s in self.suspects.items()},
            "metrics_url": self.exporter.url if self.exporter is not None else None,
            "intake": self.intake_status(time.monotonic()),
        }


def heap_attribution(cfg: MemGuardConfig) -> HeapProbe | None:
    """The probe the children attribute leaks with (allocator counters), or None: RSS deltas.

    The children are forks of this process, so the probe found (and checked) here serves them too.
    """
    return _heap_probe() if cfg.leak_detection else None


@functools.cache
def _heap_probe() -> HeapProbe | None:
    return heap_probe()


def _available_now() -> int:
    """Memory available right now, for a lost child's verdict (a child is rarely lost: ~0.5 ms)."""
    return read_system(time.monotonic()).available


def build_detectors(cfg: MemGuardConfig) -> list[Detector]:
    """The detectors the configuration enables (leaks, heavy tasks, master growth)."""
    detectors: list[Detector] = []
    if not cfg.leak_detection:
        return detectors
    detectors.append(LeakDetector(soft_limit=cfg.soft_limit, heap_deltas=heap_attribution(cfg) is not None))
    heavy_size, heavy_multiple = cfg.heavy_task_threshold
    if heavy_size is not None or heavy_multiple is not None:
        detectors.append(HeavyTaskDetector(threshold=heavy_size, multiple=heavy_multiple))
    if cfg.master_growth_threshold is not None:
        detectors.append(MasterGrowthDetector(threshold=cfg.master_growth_threshold,
                                              grace=cfg.master_growth_grace,
                                              min_span=cfg.master_growth_min_span))
    return detectors

