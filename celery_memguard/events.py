"""Structured events: the names and keys here are MemGuard's public API.

Events are rendered by structlog and written with one ``os.write`` per line to
standard error's file descriptor (or ``memguard_log_file``, opened with
``O_APPEND``), bypassing Celery's stdout/stderr redirection so that, with
``memguard_log_format="json"``, every line is exactly one JSON object with an
``event`` key. Master and pool children share the fd; a line is a single write,
so lines from different processes never interleave mid-line.

Every event carries ``ts`` (ISO 8601 UTC), ``level``, ``source_pid`` (the
emitting process) and ``hostname`` (the Celery node name, once known). ``pid``,
where present, is always the pool child the event is about.

:func:`error` implements fail-open reporting: ``memguard.error`` is logged once
per cause (``where`` + exception type), later repeats are counted, not logged.
"""

from __future__ import annotations

import os
import sys
import threading
from typing import Any, Callable, MutableMapping

import structlog

__all__ = [
    "STARTED",
    "POOL_UNSUPPORTED",
    "CHILD_RECYCLED",
    "TASK_KILLED",
    "WOULD_RECYCLE",
    "WOULD_KILL",
    "ERROR",
    "EventLog",
    "configure",
    "emit",
    "error",
    "get",
]

STARTED = "memguard.started"
POOL_UNSUPPORTED = "memguard.pool_unsupported"
CHILD_RECYCLED = "memguard.child_recycled"
TASK_KILLED = "memguard.task_killed"
WOULD_RECYCLE = "memguard.would_recycle"
WOULD_KILL = "memguard.would_kill"
ERROR = "memguard.error"
STOPPED = "memguard.stopped"
#: Warm shutdown began: the hard limit is enforced until the pool's last child has exited.
DRAINING = "memguard.draining"

#: Every event name and the keys it carries (besides ts, level, source_pid, hostname).
EVENT_KEYS: dict[str, tuple[str, ...]] = {
    STARTED: ("pool", "concurrency", "metric", "soft_limit_mib", "hard_limit_mib", "poll_interval", "dry_run"),
    POOL_UNSUPPORTED: ("pool", "can", "cannot"),
    CHILD_RECYCLED: ("pid", "reason", "mem_mib", "limit_mib", "metric", "tasks_run", "lifetime_s", "task", "task_id"),
    TASK_KILLED: ("task", "task_id", "pid", "mem_mib", "limit_mib", "metric", "reason", "signal"),
    WOULD_RECYCLE: ("pid", "reason", "mem_mib", "limit_mib", "metric", "tasks_run", "lifetime_s", "task", "task_id"),
    WOULD_KILL: ("task", "task_id", "pid", "mem_mib", "limit_mib", "metric", "reason", "signal"),
    ERROR: ("where", "error"),
    STOPPED: ("polls", "decisions", "shutdown", "drained_s"),
    DRAINING: ("children", "busy", "enforcing"),
    "memguard.leak_suspected": ("task", "kib_per_call", "confidence", "calls_observed", "children",
                                "projected_calls_to_soft_limit", "since_calls"),
    "memguard.leak_cleared": ("task", "reason", "kib_per_call", "calls_observed", "since_calls"),
    "memguard.heavy_task": ("task", "task_id", "peak_mib", "retained_mib", "pid", "occurrences",
                            "typical_peak_mib", "advice"),
    "memguard.master_growth": ("mem_mib", "mib_per_hour", "since_s", "growth_mib", "reserved", "note"),
    "memguard.leak_sites": ("task", "task_id", "pid", "calls_traced", "sites"),
    "memguard.leak_types": ("task", "task_id", "pid", "calls_traced", "types"),
    "memguard.child_lost": ("pid", "signal", "exitcode", "task", "task_id", "last_mem_mib", "last_rss_mib",
                            "growth_mib_per_s", "oom_kill_delta", "likely_oom", "reason", "hard_limit_mib"),
    "memguard.recycle_storm": ("spawn_time_s", "recycles_per_minute", "max_recycles_per_minute",
                               "throughput_lost", "concurrency", "deferred", "reasons", "cause"),
    "memguard.pressure_unrelieved": ("trigger", "available", "min_available", "psi_some_avg10", "psi_threshold",
                                     "children", "children_rss_mib", "fresh_rss_mib", "largest_pid",
                                     "largest_relief_mib", "min_relief_mib", "cause", "retry_s"),
}


class _FdLogger:
    """A structlog logger that writes each rendered line with one ``os.write``."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def msg(self, message: str) -> None:
        data = (message + "\n").encode("utf-8", "replace")
        try:
            while data:
                written = os.write(self.fd, data)
                data = data[written:]
        except OSError:
            pass  # logging must never take a worker down

    log = debug = info = warning = warn = error = critical = msg


def _iso_utc(_logger: Any, _name: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    import datetime as _dt

    event_dict.setdefault("ts", _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="milliseconds"))
    return event_dict


class EventLog:
    """Emits MemGuard events; one per process (children inherit the master's)."""

    def __init__(self, *, fmt: str = "console", log_file: str | None = None, hostname: str | None = None) -> None:
        self.fmt = fmt
        self.hostname = hostname
        self._owns_fd = bool(log_file)
        if log_file:
            self.fd = os.open(log_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
        else:
            self.fd = sys.__stderr__.fileno() if sys.__stderr__ is not None else 2
        renderer: Callable[..., Any]
        if fmt == "json":
            renderer = structlog.processors.JSONRenderer(sort_keys=False)
        else:
            renderer = structlog.dev.ConsoleRenderer(colors=False, pad_event_to=0)
        self._logger = structlog.wrap_logger(
            _FdLogger(self.fd),
            processors=[structlog.processors.add_log_level, _iso_utc, self._add_origin, renderer],
            cache_logger_on_first_use=False,
        )
        self._seen_errors: dict[tuple[str, str], int] = {}
        self._lock = threading.Lock()

    def _add_origin(self, _logger: Any, _name: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
        event_dict.setdefault("source_pid", os.getpid())
        if self.hostname:
            event_dict.setdefault("hostname", self.hostname)
        return event_dict

    def emit(self, event: str, level: str = "info", **keys: Any) -> None:
        try:
            getattr(self._logger, level)(event, **keys)
        except Exception:  # pragma: no cover - a renderer failure must not escape
            pass

    def error(self, where: str, exc: BaseException) -> None:
        """Log ``memguard.error`` once per (where, exception type); count repeats."""
        cause = (where, type(exc).__name__)
        with self._lock:
            count = self._seen_errors.get(cause, 0)
            self._seen_errors[cause] = count + 1
        if count == 0:
            self.emit(ERROR, level="error", where=where, error=f"{type(exc).__name__}: {exc}")

    def close(self) -> None:
        """Close the log file (never standard error)."""
        if self._owns_fd:
            try:
                os.close(self.fd)
            except OSError:
                pass
            self._owns_fd = False

    @property
    def error_counts(self) -> dict[tuple[str, str], int]:
        return dict(self._seen_errors)


_current: EventLog | None = None


def configure(*, fmt: str = "console", log_file: str | None = None, hostname: str | None = None) -> EventLog:
    """Create the process-wide event log (called by the bootstep in the master)."""
    global _current
    previous, _current = _current, EventLog(fmt=fmt, log_file=log_file, hostname=hostname)
    if previous is not None:
        previous.close()
    return _current


def get() -> EventLog:
    global _current
    if _current is None:
        _current = EventLog()
    return _current


def emit(event: str, level: str = "info", **keys: Any) -> None:
    get().emit(event, level, **keys)


def error(where: str, exc: BaseException) -> None:
    get().error(where, exc)
