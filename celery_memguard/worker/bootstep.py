"""The ``MemGuard`` worker bootstep: the only wiring a project needs.

``app.steps['worker'].add(MemGuard)``. The step runs in the worker's main
process and only wires MemGuard to Celery, like Celery's own ``Heart`` step: at
construction it validates the ``memguard_*`` settings (a bad value stops the
worker before it starts); after the Pool step is created and before it forks it
maps the shared board, connects the child-side receivers and builds the
:class:`~celery_memguard.guard.Guard` (engine, detectors, monitor, and what the
findings said: everything MemGuard knows lives there, not in the step); when the
worker starts it starts the guard with the pool's hooks. ``status()`` (the
``memguard`` inspect command) and ``info()`` (``celery inspect stats``) read the guard. In a warm shutdown the monitor
keeps enforcing the hard limit until the pool has drained (see :meth:`MemGuard.stop`);
in a cold shutdown it stops at once.

On pools other than prefork there are no child processes to measure, recycle or
stop: MemGuard logs one ``memguard.pool_unsupported`` warning saying so and
stays idle.
"""

from __future__ import annotations

import os
import time
from typing import Any

import click
from celery import bootsteps

from .. import events
from ..board import Board, board_slots
from ..config import MemGuardConfig, conf_keys, key_name
from ..exceptions import ConfigError
from ..guard import Guard, build_detectors, heap_attribution
from ..monitor import PoolHooks
from ..policies import build_policies
from ..probes import effective_memory
from . import child
from .control import status_of
from .intake import IntakeValve
from .options import option_name, overrides_from, register

register()  # the --memguard-* options of `celery worker`, when Celery's command line is what imports us

__all__ = ["MemGuard", "WorkerConfigError", "build_detectors", "heap_attribution"]


class WorkerConfigError(ConfigError, click.ClickException):
    """A :class:`ConfigError` that Celery's command line prints as one clean ``Error:`` line."""

    exit_code = 1

    def __init__(self, key: str, value: object, accepted: str, given_as: str | None = None) -> None:
        shown = f"{key} (given as {given_as})" if given_as else key
        click.ClickException.__init__(self, f"celery-memguard: invalid {shown}={value!r}: expected {accepted}")
        self.key, self.value, self.accepted = key, value, accepted

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.key, self.value, self.accepted))

class MemGuard(bootsteps.StartStopStep):
    """Per-child memory measurement and limits for Celery prefork workers: the worker bootstep.

    Add it to the app's worker blueprint; everything else is configuration (``memguard_*`` keys in
    ``app.conf``, or ``celery worker --memguard-*`` options)::

        from celery_memguard import MemGuard

        app.steps["worker"].add(MemGuard)
        app.conf.update(memguard_soft_limit="400MiB", memguard_hard_limit="1GiB")

    Constructing the step validates the settings: an invalid one stops the worker before it consumes a
    message (one ``Error: celery-memguard: invalid KEY=VALUE: expected ...`` line, exit status 1). The
    step only wires MemGuard to Celery; what MemGuard knows lives in its
    :class:`~celery_memguard.guard.Guard`. ``celery -A proj memguard status`` shows :meth:`status`,
    ``celery -A proj inspect stats`` carries :meth:`info`.
    """

    #: What MemGuard knows and does in this worker (built in create(), see celery_memguard/guard.py).
    guard: Guard | None = None

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
        self.board: Board | None = None
        self.prefork = False
        #: Pauses and resumes the worker's task intake (``memguard_pause_*``), else None.
        self.valve: IntakeValve | None = None
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
                                                                 set(conf_keys(parent.app.conf)))
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
        if self.prefork and wants_intake_valve(cfg):
            try:
                valve = IntakeValve(parent)
                valve.install()  # before the Consumer step (created last) takes parent.process_task
                self.valve = valve
            except Exception as exc:
                events.error("bootstep.intake", exc)
            _warn_unbounded_intake(parent)
        self.guard = Guard(cfg, pool_name=_pool_name(parent), board=self.board if self.prefork else None,
                           node=getattr(parent, "hostname", None))
        return self

    def start(self, parent: Any) -> None:
        guard = self.guard
        if guard is None:
            return
        guard.announce(parent.concurrency)
        view = _PoolView(parent)
        guard.start(PoolHooks(children=view.children, exit_code=view.exit_code, reserved=_reserved_count,
                              shutting_down=_shutting_down, master_pid=os.getpid()), switch=self.valve)

    def register_with_event_loop(self, parent: Any, hub: Any) -> None:
        """The event loop (re)starts: the intake valve watches its wake pipe in it."""
        if self.valve is not None:
            try:
                self.valve.register_with_event_loop(hub)
            except Exception as exc:
                events.error("bootstep.intake", exc)

    def stop(self, parent: Any) -> None:
        """Warm shutdown: keep enforcing the hard limit until the pool's last child has exited.

        Celery stops the steps in reverse start order, so this runs *before* the Pool step's stop,
        which closes the pool and joins it (waits for every running task, then for every child).
        The monitor therefore keeps polling through that join (hard limit and its SIGKILL escalation
        only; see :meth:`Monitor.drain`) and is stopped by a wrapper around the pool's own ``stop``
        once the join has returned; ``memguard.stopped`` follows. Without a running prefork pool it
        stops at once.
        """
        guard = self.guard
        if guard is None:
            return
        if not guard.active:
            guard.stop("warm")  # no monitor to drain; the metrics exporter (if any) stops
            return
        try:
            if self._hold_until_drained(getattr(parent, "pool", None), guard):
                return
        except Exception as exc:
            events.error("bootstep.drain", exc)
        self._finish("warm")

    def terminate(self, parent: Any) -> None:
        """Cold shutdown: stop the monitor at once (the pool is about to kill its children)."""
        self._finish("cold")

    def _hold_until_drained(self, pool: Any, guard: Guard) -> bool:
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
        guard.drain()
        return True

    def _finish(self, how: str) -> None:
        """Stop the guard's monitor (once) and log ``memguard.stopped``."""
        if self.guard is not None:
            self.guard.stop(how)

    def status(self) -> dict[str, Any]:
        """What MemGuard sees right now (the ``memguard`` inspect command's reply)."""
        return status_of(self.guard, time.monotonic())

    def info(self, parent: Any) -> dict[str, Any]:
        """The ``memguard`` section of ``celery inspect stats`` (and Flower's worker page)."""
        try:
            return {"memguard": self.guard.summary() if self.guard is not None else {"active": False}}
        except Exception as exc:  # fail open: stats without the section, never a failed reply
            events.error("bootstep.info", exc)
            return {}

    def shutdown(self, parent: Any) -> None:
        self._finish("warm")


def wants_intake_valve(cfg: MemGuardConfig) -> bool:
    """Whether the worker's intake gets a valve: with a ``memguard_pause_*`` threshold, never in dry run
    (which only logs ``memguard.paused``/``resumed`` with ``dry_run`` true: intake goes on)."""
    return not cfg.dry_run and (cfg.pause_below is not None or cfg.pause_pool_above is not None)


def unbounded_intake(use_eventloop: bool, prefetch_multiplier: object) -> bool:
    """Whether a pause would fetch without bound: no event loop (the consumer cannot be cancelled from the
    monitor thread) and no prefetch limit (``worker_prefetch_multiplier = 0``)."""
    return not use_eventloop and prefetch_multiplier == 0


def _warn_unbounded_intake(parent: Any) -> None:
    try:
        prefetch = parent.app.conf.worker_prefetch_multiplier
        if unbounded_intake(bool(getattr(parent, "use_eventloop", False)), prefetch):
            transport = parent.app.connection_for_read().transport_cls
            events.emit(events.INTAKE_UNBOUNDED, "warning", transport=str(transport), prefetch_multiplier=prefetch)
    except Exception as exc:
        events.error("bootstep.intake", exc)


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
        """The exit code billiard recorded for ``pid`` (never reaps it ourselves).

        None also for a child the pool terminated on purpose (billiard marks it ``_controlled_termination``:
        an idle child removed by ``--autoscale`` or ``pool_shrink``, a task revoked with ``terminate=True``):
        billiard does not report those as errors, and they are not lost children either.
        """
        proc = self._current.get(pid) or self._previous.get(pid)
        if getattr(proc, "_controlled_termination", False) is True:
            return None
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
