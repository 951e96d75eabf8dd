"""The ``MemGuard`` worker bootstep: the only wiring a project needs.

``app.steps['worker'].add(MemGuard)``. The step runs in the worker's main
process. At construction it validates the ``memguard_*`` settings (a bad value
stops the worker before it starts), after the Pool step is created and before it
forks it maps the shared board and connects the child-side receivers, and when
the worker starts it launches the monitor thread. In a warm shutdown the monitor
keeps enforcing the hard limit until the pool has drained (see :meth:`MemGuard.stop`);
in a cold shutdown it stops at once.

On pools other than prefork there are no child processes to measure, recycle or
stop: MemGuard logs one ``memguard.pool_unsupported`` warning saying so and
stays idle.
"""

from __future__ import annotations

import functools
import os
import random
import time
from typing import Any

import click
from celery import bootsteps

from .. import events
from ..actions import Actuator
from ..board import TRACE_MAX, WATCH_MARK, Board, board_slots
from ..config import MemGuardConfig, key_name
from ..detectors import HeavyTaskDetector, LeakDetector, MasterGrowthDetector
from ..detectors.base import GROWTH_WATCH, HEAVY_TASK, LEAK_CLEARED, LEAK_SUSPECTED, MASTER_GROWTH, Finding
from ..engine import Engine
from ..exceptions import ConfigError
from ..monitor import Monitor
from ..policies import build_policies
from ..probes import HeapProbe, effective_memory, heap_probe
from ..probes.system import oom_kill_count, read_system
from . import child
from .control import status_of
from .options import option_name, overrides_from, register
from ..units import mib

register()  # the --memguard-* options of `celery worker`, when Celery's command line is what imports us

__all__ = ["MemGuard", "WorkerConfigError"]


class WorkerConfigError(ConfigError, click.ClickException):
    """A :class:`ConfigError` that Celery's command line prints as one clean ``Error:`` line."""

    exit_code = 1

    def __init__(self, key: str, value: object, accepted: str, given_as: str | None = None) -> None:
        shown = f"{key} (given as {given_as})" if given_as else key
        click.ClickException.__init__(self, f"celery-memguard: invalid {shown}={value!r}: expected {accepted}")
        self.key, self.value, self.accepted = key, value, accepted

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.key, self.value, self.accepted))

_UNSUPPORTED = {
    "can": "validate its settings and log memguard.started",
    "cannot": (
        "measure tasks per child, recycle or stop anything: the {pool} pool runs tasks inside the worker "
        "process itself, so a limit could only kill the whole worker. Use --pool=prefork for memory limits, "
        "or rely on the container's limit"
    ),
}


class MemGuard(bootsteps.StartStopStep):
    """Per-child memory measurement and limits for Celery prefork workers."""

    #: The leak detector (its watched names are published for the children) and the trace list as last
    #: published (class defaults; set per instance in start()).
    _leak: LeakDetector | None = None
    _published: list[str] = []

    label = "MemGuard"
    requires = ("celery.worker.components:Pool",)

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        overrides = self._overrides = overrides_from(kwargs)  # the worker's --memguard-* options
        try:
            self.config = MemGuardConfig.from_mapping(parent.app.conf, effective_memory(), overrides=overrides,
                                                      namespace=getattr(parent.app, "namespace", None))
        except ConfigError as exc:
            # The worker does not start; `celery worker` prints "Error: invalid memguard_...: expected ..."
            # and exits with status 1 instead of a traceback.
            given_as = option_name(exc.key) if exc.key in overrides else None
            raise WorkerConfigError(exc.key, exc.value, exc.accepted, given_as) from None
        try:
            build_policies(self.config)  # imports custom policies: a bad path stops the worker here
        except Exception as exc:  # whatever importing a bad path raises, the worker stops with one clean line
            raise WorkerConfigError(
                "memguard_policies", list(self.config.policies),
                f"importable policy classes with check(child, now) or check_pool(children, now, system) ({exc})",
            ) from None
        self.monitor: Monitor | None = None
        self.board: Board | None = None
        self.prefork = False
        self.pool_name = "?"
        # What the findings said so far, for the ``memguard`` inspect command and the trace list (written
        # by the monitor thread, replaced whole, never mutated in place: the command's thread reads them).
        self._live_suspects: dict[str, dict[str, Any]] = {}
        self._live_heavy: dict[str, int] = {}
        self._live_master: dict[str, Any] | None = None
        if self.config.enabled:
            self._open_event_log(parent)

    def _open_event_log(self, parent: Any) -> None:
        """Point the events where the settings say, before anything is emitted; a bad target stops the worker.

        ``memguard_log_file`` unset means the worker's ``--logfile`` (where Celery's own lines go), else
        standard error, else (standard error is /dev/null: a detached worker) ``memguard-<node>.log`` in
        the working directory; see :func:`celery_memguard.events.default_log_file`.
        """
        cfg = self.config
        hostname = getattr(parent, "hostname", None)
        path, explicit = cfg.log_file, cfg.log_file is not None
        if cfg.log_target != "logging" and not explicit:
            path = events.default_log_file(_worker_logfile(parent, hostname), _node_name(hostname))
        try:
            events.configure(fmt=cfg.log_format, log_file=path, hostname=hostname, target=cfg.log_target)
            return
        except (OSError, ValueError) as exc:
            if explicit:
                reason = getattr(exc, "strerror", None) or str(exc)
                given = "memguard_log_file" in self._overrides
                given_as = option_name("memguard_log_file") if given else None
                namespace = getattr(parent.app, "namespace", None)
                key = "memguard_log_file" if given else key_name("memguard_log_file", namespace,
                                                                 set(_conf_keys(parent.app.conf)))
                raise WorkerConfigError(key, cfg.log_file,
                                        f"a file MemGuard can open for appending ({reason})", given_as) from None
        # The default file could not be opened: fall back to standard error, which is all there is.
        events.configure(fmt=cfg.log_format, log_file=None, hostname=hostname, target=cfg.log_target)

    def include_if(self, parent: Any) -> bool:
        return self.config.enabled

    def create(self, parent: Any) -> "MemGuard":
        cfg = self.config
        parent.memguard = self  # the ``memguard`` inspect command finds the step here (worker/control.py)
        try:
            from celery.concurrency.prefork import TaskPool as PreforkPool

            pool_cls = getattr(parent, "pool_cls", None)
            self.prefork = isinstance(pool_cls, type) and issubclass(pool_cls, PreforkPool)
            if self.prefork:
                concurrency = max(int(parent.concurrency or 1), int(getattr(parent, "max_concurrency", 0) or 0))
                self.board = Board(board_slots(concurrency), wake=True)
                child.install(self.board, cfg.metric, cfg.diagnostics, heap=heap_attribution(cfg))
        except Exception as exc:
            events.error("bootstep.create", exc)
            self.prefork = False
        return self

    def start(self, parent: Any) -> None:
        cfg = self.config
        pool_name = self.pool_name = _pool_name(parent)
        engine: Engine | None = None
        try:
            engine = Engine.from_config(cfg, rng=random.Random())
        except Exception as exc:
            events.error("bootstep.engine", exc)
        events.emit(
            events.STARTED,
            pool=pool_name,
            concurrency=parent.concurrency,
            metric=cfg.metric,
            soft_limit_mib=mib(cfg.soft_limit),
            hard_limit_mib=mib(cfg.hard_limit),
            poll_interval=cfg.poll_interval,
            dry_run=cfg.dry_run,
            kill_grace=cfg.kill_grace,
            effective_memory_mib=mib(cfg.effective_memory),
            policies=[p.reason for p in engine.policies] if engine else [],
            leak_attribution=("rss" if heap_attribution(cfg) is None else "heap") if cfg.leak_detection else None,
            log=events.get().describe(),
        )
        if not self.prefork:
            events.emit(events.POOL_UNSUPPORTED, "warning", pool=pool_name, can=_UNSUPPORTED["can"],
                        cannot=_UNSUPPORTED["cannot"].format(pool=pool_name))
            return
        if engine is None:
            return
        try:
            actuator = Actuator(self.board, metric=cfg.metric, dry_run=cfg.dry_run)
            view = _PoolView(parent)
            try:
                detectors = build_detectors(cfg)
                self._leak = next((d for d in detectors if isinstance(d, LeakDetector)), None)
            except Exception as exc:  # limits still apply without detection
                events.error("bootstep.detectors", exc)
                detectors = []
            self.monitor = Monitor(
                children=view.children,
                engine=engine,
                actuator=actuator,
                board=self.board,
                metric=cfg.metric,
                detectors=detectors,
                master_pid=os.getpid(),
                reserved=_reserved_count,
                on_finding=self._on_finding,
                exit_code=view.exit_code,
                oom_kills=oom_kill_count,
                hard_limit=cfg.hard_limit,
                effective_memory=cfg.effective_memory,
                system=read_system if (cfg.min_available is not None or cfg.psi_threshold is not None) else None,
                leak_rates=_leak_rates(detectors),
                shutting_down=_shutting_down,
            )
            self.monitor.start()
        except Exception as exc:
            events.error("bootstep.start", exc)

    def stop(self, parent: Any) -> None:
        """Warm shutdown: keep enforcing the hard limit until the pool's last child has exited.

        Celery stops the steps in reverse start order, so this runs *before* the Pool step's stop,
        which closes the pool and joins it (waits for every running task, then for every child).
        The monitor therefore keeps polling through that join (hard limit and its SIGKILL escalation
        only; see :meth:`Monitor.drain`) and is stopped by a wrapper around the pool's own ``stop``
        once the join has returned; ``memguard.stopped`` follows. Without a running prefork pool it
        stops at once.
        """
        monitor = self.monitor
        if monitor is None:
            return
        try:
            if self._hold_until_drained(getattr(parent, "pool", None), monitor):
                return
        except Exception as exc:
            events.error("bootstep.drain", exc)
        self._finish("warm")

    def terminate(self, parent: Any) -> None:
        """Cold shutdown: stop the monitor at once (the pool is about to kill its children)."""
        self._finish("cold")

    def _hold_until_drained(self, pool: Any, monitor: Monitor) -> bool:
        """Wrap the pool's ``stop``/``terminate`` so the monitor stops when the pool has drained."""
        if pool is None or getattr(pool, "_pool", None) is None or getattr(pool, "_memguard_held", False):
            return False
        original_stop, original_terminate = pool.stop, pool.terminate

        def stop_after_drain() -> Any:
            try:
                return original_stop()
            finally:
                self._finish("warm")

        def terminate_now() -> Any:
            self._finish("cold")
            return original_terminate()

        pool.stop, pool.terminate, pool._memguard_held = stop_after_drain, terminate_now, True
        monitor.drain()
        last = monitor.last_poll
        events.emit(events.DRAINING, children=len(last.children) if last is not None else None,
                    busy=sum(1 for c in last.children if c.task_id) if last is not None else None,
                    enforcing="hard_limit")
        return True

    def _finish(self, how: str) -> None:
        """Stop the monitor (once) and log ``memguard.stopped``."""
        monitor, self.monitor = self.monitor, None
        if monitor is None:
            return
        try:
            monitor.stop()
            drained = monitor.draining_since
            events.emit(events.STOPPED, polls=monitor.polls, decisions=monitor.decisions, shutdown=how,
                        drained_s=None if drained is None else round(monitor.clock() - drained, 1),
                        events_dropped=events.get().dropped)
        except Exception as exc:
            events.error("bootstep.stop", exc)

    def status(self) -> dict[str, Any]:
        """What MemGuard sees right now (the ``memguard`` inspect command's reply)."""
        return status_of(self, time.monotonic())

    def live_suspects(self) -> dict[str, dict[str, Any]]:
        """The current leak suspects' latest ``memguard.leak_suspected`` fields, by task."""
        return self._live_suspects

    def live_heavy(self) -> dict[str, int]:
        """How many ``memguard.heavy_task`` findings each task has had."""
        return self._live_heavy

    def live_master_growth(self) -> dict[str, Any] | None:
        """The latest ``memguard.master_growth`` fields, or None."""
        return self._live_master

    def _remember(self, finding: Finding) -> None:
        """Keep what the status command shows (and, for the suspects, the children's trace list); each
        table is replaced, never changed in place."""
        task = finding.task or str(finding.fields.get("task") or "")
        if finding.event == LEAK_SUSPECTED and task:
            self._live_suspects = {**self._live_suspects, task: dict(finding.fields)}
        elif finding.event == LEAK_CLEARED and task in self._live_suspects:
            self._live_suspects = {k: v for k, v in self._live_suspects.items() if k != task}
        elif finding.event == HEAVY_TASK and task:
            self._live_heavy = {**self._live_heavy, task: self._live_heavy.get(task, 0) + 1}
        elif finding.event == MASTER_GROWTH:
            self._live_master = dict(finding.fields)

    def _on_finding(self, finding: Finding) -> None:
        """Log a detector's finding; publish leak suspects so children trace their allocation sites, and
        the watched names so children measure every call of them (settled readings)."""
        level = "error" if finding.event == events.ERROR else "info" if finding.event == GROWTH_WATCH else "warning"
        events.emit(finding.event, level, **finding.fields)
        try:
            self._remember(finding)
        except Exception as exc:
            events.error("bootstep.status", exc)
            return
        if self.board is None or finding.event not in (LEAK_SUSPECTED, LEAK_CLEARED, GROWTH_WATCH):
            return
        try:
            traced = list(self._live_suspects)[-TRACE_MAX:] if self.config.diagnostics != "off" else []
            watched = sorted(self._leak.watched - set(traced)) if self._leak is not None and self._leak.heap_deltas \
                else []
            published = traced + [WATCH_MARK + name for name in watched][: TRACE_MAX - len(traced)]
            if published != self._published:
                self.board.set_trace(published)
                self._published = published
        except Exception as exc:
            events.error("bootstep.trace_list", exc)

    def shutdown(self, parent: Any) -> None:
        self._finish("warm")


def heap_attribution(cfg: MemGuardConfig) -> HeapProbe | None:
    """The probe the children attribute leaks with (allocator counters), or None: RSS deltas.

    The children are forks of this process, so the probe found (and checked) here serves them too.
    """
    return _heap_probe() if cfg.leak_detection else None


@functools.cache
def _heap_probe() -> HeapProbe | None:
    return heap_probe()


def build_detectors(cfg: MemGuardConfig) -> list[Any]:
    """The detectors the configuration enables (leaks, heavy tasks, master growth)."""
    detectors: list[Any] = []
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


def _leak_rates(detectors: list[Any]) -> Any:
    """A callable giving (leak bytes per call, calls per second) for a child, from the leak detector."""
    for detector in detectors:
        rates = getattr(detector, "child_leak_rates", None)
        if callable(rates):
            return rates
    return None


def _pool_name(parent: Any) -> str:
    """The ``--pool`` name of the worker's pool class (its alias in Celery, e.g. ``threads``), else its module."""
    pool_cls = getattr(parent, "pool_cls", None)
    module = getattr(pool_cls, "__module__", "") or ""
    try:
        from celery.concurrency import ALIASES

        target = f"{module}:{getattr(pool_cls, '__name__', '')}"
        alias = next((name for name, path in ALIASES.items() if path == target and name != "processes"), None)
    except Exception:  # an unusual Celery build: fall back to the module name
        alias = None
    return alias or module.rsplit(".", 1)[-1] or str(pool_cls)


class _PoolView:
    """The prefork pool's children as the monitor sees them, and the exit codes of those that left.

    It keeps the process objects of the latest two listings: a child that left since the previous
    listing still has its exit code (recorded by billiard when it reaped the child) readable.
    """

    def __init__(self, parent: Any) -> None:
        self.parent = parent
        self._current: dict[int, Any] = {}
        self._previous: dict[int, Any] = {}

    def children(self) -> list[tuple[int, int | None]]:
        pool = getattr(getattr(self.parent, "pool", None), "_pool", None)
        listed = list(getattr(pool, "_pool", None) or ())
        self._previous, self._current = self._current, {p.pid: p for p in listed if getattr(p, "pid", None)}
        return [(pid, getattr(proc, "index", None)) for pid, proc in self._current.items()]

    def exit_code(self, pid: int) -> int | None:
        """The exit code billiard recorded for ``pid`` (never reaps it ourselves)."""
        proc = self._current.get(pid) or self._previous.get(pid)
        return getattr(getattr(proc, "_popen", None), "returncode", None)


def _worker_logfile(parent: Any, hostname: str | None) -> str | None:
    """The worker's ``--logfile`` as Celery opens it (``%n``/``%h``/``%i`` expanded), or None."""
    logfile = getattr(parent, "logfile", None)
    if not isinstance(logfile, str) or not logfile:
        return None
    try:
        from celery.utils.nodenames import node_format

        return node_format(logfile, hostname) if hostname else logfile
    except Exception:
        return logfile


def _conf_keys(conf: Any) -> list[str]:
    try:
        return [k for k in conf.keys() if isinstance(k, str)]
    except Exception:
        return []


def _node_name(hostname: str | None) -> str:
    """The node's short name (``w1`` of ``w1@host``)."""
    return (hostname or "celery").split("@", 1)[0] or "celery"


def _shutting_down() -> bool:
    """Whether the worker has been told to stop (its children then die by signals on purpose)."""
    try:
        from celery.worker import state

        return state.should_stop is not None or state.should_terminate is not None
    except Exception:
        return False


def _reserved_count() -> int | None:
    """Messages the worker has prefetched but not finished (they occupy the master's memory)."""
    try:
        from celery.worker import state

        return len(state.reserved_requests)
    except Exception:
        return None
