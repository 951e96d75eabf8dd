"""Prometheus metrics from the worker's main process: a collector that reads the Guard, and its HTTP server.

Optional: ``pip install 'celery-memguard[prometheus]'`` (prometheus_client) and
``memguard_metrics_port`` set. :class:`~celery_memguard.guard.Guard` starts the
server with its monitor and stops it with it; everything served is read from the
Guard's public views at scrape time (:class:`GuardCollector`), never from the
bootstep, the engine or the detectors' working state. No Celery imports, and
prometheus_client is imported only when a server starts or a scrape runs, so the
metric table (:data:`METRICS`, the one list of what is served: the docs and the
Grafana dashboard are checked against it) is importable without the extra.

Conventions: names start ``celery_memguard_``, sizes are ``_bytes``, counters end
``_total``, times are seconds. Label values are bounded: ``slot`` is the pool
index (a replacement child takes its predecessor's slot: one series per slot, not
per pid), ``reason`` a policy name, ``signal`` a signal name, ``where`` a place in
MemGuard's code, ``task`` only a task MemGuard already tracks (leak suspects, heavy
tasks; at most :data:`MAX_TASK_LABELS` names).

Ports: ``memguard_metrics_port`` is one port or a range ``"9300-9315"``; the
server binds the first free port of the range (the kernel refuses a port another
worker listens on, so workers starting together cannot collide) and logs
``memguard.metrics_serving`` with the URL. A busy range or a missing extra is one
``memguard.error`` (``where="metrics.start"``) and the worker runs on without
metrics. A scrape runs in a request thread of the server: each metric group is
read on its own, and a group that raises is left out of that scrape and logged
as ``memguard.error`` once per cause (``where="metrics.<group>"``), never
failing the scrape or the worker.

Pool children are forks of the main process and would inherit the listening
socket; they close their copy right after the fork (:func:`os.register_at_fork`),
so a port is free again as soon as the worker's main process is gone.
"""

from __future__ import annotations

import errno
import os
import socket
import threading
import time
import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator

from . import __version__, events
from .samples import Action

if TYPE_CHECKING:  # pragma: no cover
    from .guard import Guard

__all__ = ["METRICS", "MAX_TASK_LABELS", "MetricSpec", "MetricsUnavailable", "GuardCollector", "MetricsServer",
           "served_names", "start_exporter"]

#: Most task names a ``task``-labelled metric carries (the first tracked; the tables behind them are bounded too).
MAX_TASK_LABELS = 200
#: Seconds a scrape connection may stay silent before the server drops it (a stalled client holds one thread).
REQUEST_TIMEOUT = 5.0
#: Seconds between the serving thread's checks for a stop request.
SERVE_POLL = 0.25
INSTALL_HINT = "pip install 'celery-memguard[prometheus]'"


@dataclass(frozen=True, slots=True)
class MetricSpec:
    """One metric the collector serves: its sample name, type (``gauge``/``counter``), labels and meaning."""

    name: str
    kind: str
    labels: tuple[str, ...]
    help: str

    @property
    def family_name(self) -> str:
        """The name prometheus_client's family takes (a counter's without ``_total``: it adds it back)."""
        return self.name[: -len("_total")] if self.kind == "counter" else self.name


def _g(name: str, help_text: str, *labels: str) -> MetricSpec:
    return MetricSpec("celery_memguard_" + name, "gauge", labels, help_text)


def _c(name: str, help_text: str, *labels: str) -> MetricSpec:
    return MetricSpec("celery_memguard_" + name + "_total", "counter", labels, help_text)


#: Every metric served, by group (each group is read at scrape time by the GuardCollector method of that name).
GROUPS: dict[str, tuple[MetricSpec, ...]] = {
    "identity": (
        _g("info", "Always 1: this worker's node name, pool, configured memory metric and MemGuard version",
           "node", "pool", "metric", "version"),
        _g("active", "1 while MemGuard's monitor polls the pool children, else 0 (not prefork, stopped, failed)"),
        _g("dry_run", "1 when decisions are only logged (memguard_dry_run): the action counters count would-be actions"),
        _g("paused", "1 while task intake is paused under memory pressure, else 0 (only with the pause feature on)"),
    ),
    "limits": (
        _g("limit_bytes", "Configured limits: soft, hard (per child, configured metric), pool, pool_hard (children "
                          "together), min_available (available memory floor), pause_below and pause_pool_above (intake pause "
                          "thresholds); a limit not set is absent", "limit"),
        _g("effective_memory_bytes", "Memory percentages refer to: the smaller of physical memory and the cgroup limit"),
    ),
    "children": (
        _g("child_memory_bytes", "Each pool child's memory in the configured metric (uss/pss/rss) at the latest poll; "
                                 "an upper bound when child_memory_exact is 0", "slot"),
        _g("child_memory_exact", "1 when child_memory_bytes is an exact reading, 0 when it is the monitor's upper bound "
                                 "(the exact reading was not needed)", "slot"),
        _g("child_rss_bytes", "Each pool child's resident set size at the latest poll", "slot"),
        _g("child_tasks", "Tasks run by the child now in the slot (restarts from 0 in a replacement child)", "slot"),
        _g("child_busy", "1 while the child in the slot runs a task", "slot"),
        _g("child_leaving", "1 when MemGuard has ordered the child in the slot out (recycle or stop)", "slot"),
        _g("children", "Live pool children at the latest poll"),
        _g("pool_memory_bytes", "Sum of the pool children's memory in the configured metric"),
        _g("pool_rss_bytes", "Sum of the pool children's resident set sizes"),
        _g("poll_age_seconds", "Seconds since the latest poll (grows when the monitor is stuck)"),
    ),
    "host": (
        _g("master_memory_bytes", "The worker's main process, in the configured metric"),
        _g("master_rss_bytes", "The worker's main process, resident set size"),
        _g("available_memory_bytes", "Memory available (cgroup limit minus usage in a cgroup, else MemAvailable)"),
    ),
    "decisions": (
        _c("recycles", "Children ordered to exit after their current task, by reason (policy)", "reason"),
        _c("kills", "Running tasks stopped with MemoryLimitExceeded, by reason (policy)", "reason"),
        _c("force_kills", "Children SIGKILLed after a stop was ignored for memguard_kill_grace, by reason", "reason"),
        _c("children_lost", "Children that died by a signal MemGuard did not send (memguard.child_lost), by signal",
           "signal"),
        _c("polls", "Polls of the pool children by the monitor"),
    ),
    "findings": (
        _g("leak_suspect_bytes_per_call", "Memory a leak suspect keeps per call (memguard.leak_suspected)", "task"),
        _g("leak_suspect_confidence", "Confidence (0-1) of a leak suspicion", "task"),
        _g("leak_suspects", "Tasks currently suspected of leaking"),
        _c("heavy_tasks", "memguard.heavy_task findings (a task's own peak far above the typical), by task", "task"),
        _g("master_growth_bytes_per_second", "Growth rate of the main process at the latest memguard.master_growth"),
        _g("master_growth_bytes", "Growth of the main process above its baseline at the latest memguard.master_growth"),
    ),
    "health": (
        _c("errors", "memguard.error causes in the main process (fail-open internal errors), by where", "where"),
        _c("events_dropped", "Events that could not be written to the event log (all processes of the worker)"),
    ),
}
METRICS: tuple[MetricSpec, ...] = tuple(spec for specs in GROUPS.values() for spec in specs)
_SPECS = {spec.name: spec for spec in METRICS}

_Row = tuple[str, tuple[str, ...], float]
_ACTION_METRIC = {Action.RECYCLE.value: "celery_memguard_recycles_total", Action.KILL.value: "celery_memguard_kills_total",
                  Action.FORCE_KILL.value: "celery_memguard_force_kills_total"}


class MetricsUnavailable(Exception):
    """The exporter cannot run: prometheus_client is missing, or no port of the range is free."""


def served_names() -> set[str]:
    """Every sample name the exporter can serve (what a dashboard may query)."""
    return {spec.name for spec in METRICS}


def _row(name: str, value: float | int | bool, *labels: object) -> _Row:
    assert name in _SPECS, name
    return (name, tuple(str(label) for label in labels), float(value))


class GuardCollector:
    """A prometheus_client collector reading a :class:`~celery_memguard.guard.Guard` at each scrape."""

    def __init__(self, guard: "Guard", *, clock: Callable[[], float] = time.monotonic) -> None:
        self.guard = guard
        self.clock = clock

    def describe(self) -> Iterator[Any]:
        """Every family, without samples (prometheus_client checks registrations with it)."""
        for spec in METRICS:
            yield _family(spec)

    def collect(self) -> Iterator[Any]:
        """One scrape: each group read on its own; a group that raises is left out and logged once per cause."""
        rows: dict[str, dict[tuple[str, ...], float]] = {}
        for group in GROUPS:
            try:
                found = list(getattr(self, "_" + group)())
            except Exception as exc:  # fail open: the other groups are still served
                events.error(f"metrics.{group}", exc)
                continue
            for name, labels, value in found:
                rows.setdefault(name, {}).setdefault(labels, value)  # a label set once (never a duplicate series)
        for spec in METRICS:
            samples = rows.get(spec.name)
            if samples:
                family = _family(spec)
                for labels, value in samples.items():
                    family.add_metric(list(labels), value)
                yield family

    # -- groups (each returns rows: metric name, label values, value) -------------------------
    def _identity(self) -> Iterable[_Row]:
        guard, cfg = self.guard, self.guard.config
        yield _row("celery_memguard_info", 1, guard.node or "", guard.pool_name, cfg.metric, __version__)
        yield _row("celery_memguard_active", guard.active)
        yield _row("celery_memguard_dry_run", cfg.dry_run)
        paused = guard.paused
        if paused is not None:
            yield _row("celery_memguard_paused", paused)

    def _limits(self) -> Iterable[_Row]:
        cfg = self.guard.config
        limits = {"soft": cfg.soft_limit, "hard": cfg.hard_limit, "pool": cfg.pool_limit,
                  "pool_hard": cfg.pool_hard_limit, "min_available": cfg.min_available,
                  "pause_below": cfg.pause_below, "pause_pool_above": cfg.pause_pool_above}
        for limit, value in limits.items():
            if value is not None:
                yield _row("celery_memguard_limit_bytes", value, limit)
        if cfg.effective_memory:
            yield _row("celery_memguard_effective_memory_bytes", cfg.effective_memory)

    def _children(self) -> Iterable[_Row]:
        guard = self.guard
        view = guard.last_poll
        if view is None:
            return
        for child in view.children:
            slot = view.slots.get(child.pid)
            if slot is None:
                continue  # no pool index (not seen on billiard's pools): counted in the pool totals only
            yield _row("celery_memguard_child_memory_bytes", child.mem, slot)
            yield _row("celery_memguard_child_memory_exact", child.exact, slot)
            yield _row("celery_memguard_child_rss_bytes", child.rss, slot)
            yield _row("celery_memguard_child_tasks", child.tasks_run, slot)
            yield _row("celery_memguard_child_busy", child.busy, slot)
            yield _row("celery_memguard_child_leaving", guard.pending(child.pid) is not None, slot)
        yield _row("celery_memguard_children", len(view.children))
        yield _row("celery_memguard_pool_memory_bytes", sum(c.mem for c in view.children))
        yield _row("celery_memguard_pool_rss_bytes", sum(c.rss for c in view.children))
        yield _row("celery_memguard_poll_age_seconds", max(0.0, self.clock() - view.at))

    def _host(self) -> Iterable[_Row]:
        master, system = self.guard.host_readings()
        if master is not None:
            yield _row("celery_memguard_master_memory_bytes", master.mem)
            yield _row("celery_memguard_master_rss_bytes", master.rss)
        if system is not None:
            yield _row("celery_memguard_available_memory_bytes", system.available)

    def _decisions(self) -> Iterable[_Row]:
        guard = self.guard
        for (action, reason), count in sorted(guard.decided.items()):
            name = _ACTION_METRIC.get(action)
            if name is not None:
                yield _row(name, count, reason)
        for signal, count in sorted(guard.lost.items()):
            yield _row("celery_memguard_children_lost_total", count, signal)
        yield _row("celery_memguard_polls_total", guard.polls)

    def _findings(self) -> Iterable[_Row]:
        guard = self.guard
        suspects = guard.suspects
        for task, fields in list(suspects.items())[:MAX_TASK_LABELS]:
            kib = fields.get("kib_per_call")
            if kib is not None:
                yield _row("celery_memguard_leak_suspect_bytes_per_call", float(kib) * 1024, task)
            confidence = fields.get("confidence")
            if confidence is not None:
                yield _row("celery_memguard_leak_suspect_confidence", confidence, task)
        yield _row("celery_memguard_leak_suspects", len(suspects))
        for task, count in list(guard.heavy.items())[:MAX_TASK_LABELS]:
            yield _row("celery_memguard_heavy_tasks_total", count, task)
        growth = guard.master_growth
        if growth is not None:
            if growth.get("mib_per_hour") is not None:
                yield _row("celery_memguard_master_growth_bytes_per_second", float(growth["mib_per_hour"]) * 2**20 / 3600)
            if growth.get("growth_mib") is not None:
                yield _row("celery_memguard_master_growth_bytes", float(growth["growth_mib"]) * 2**20)

    def _health(self) -> Iterable[_Row]:
        for where, count in sorted(self.guard.errors.items()):
            yield _row("celery_memguard_errors_total", count, where)
        yield _row("celery_memguard_events_dropped_total", events.get().dropped)


def _family(spec: MetricSpec) -> Any:
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

    kind = CounterMetricFamily if spec.kind == "counter" else GaugeMetricFamily
    return kind(spec.family_name, spec.help, labels=list(spec.labels))


# -- the HTTP server ---------------------------------------------------------------------------------------

_SERVERS: "weakref.WeakSet[MetricsServer]" = weakref.WeakSet()


def _close_in_child() -> None:
    """In a freshly forked pool child: close the inherited listening sockets (the child serves nothing)."""
    for server in list(_SERVERS):
        server.forget_socket()


os.register_at_fork(after_in_child=_close_in_child)


class MetricsServer:
    """The exporter's HTTP server (``/metrics``, any path) on one thread, started and stopped with the Guard."""

    def __init__(self, httpd: Any, addr: str, port: int) -> None:
        self.httpd = httpd
        self.addr, self.port = addr, port
        self.thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": SERVE_POLL},
                                       name="memguard-metrics", daemon=True)
        self._pid = os.getpid()
        _SERVERS.add(self)
        self.thread.start()

    @property
    def url(self) -> str:
        host = f"[{self.addr}]" if ":" in self.addr else self.addr
        return f"http://{host}:{self.port}/metrics"

    @classmethod
    def bind(cls, collector: GuardCollector, addr: str, ports: tuple[int, int]) -> tuple["MetricsServer", list[int]]:
        """Listen on the first free port of ``ports`` (inclusive); also returns the busy ports passed over.

        Raises :class:`MetricsUnavailable` without prometheus_client or when every port is taken, and
        :class:`OSError` for any other failure to listen (an address not of this host, a privileged port).
        """
        try:
            from prometheus_client import CollectorRegistry, make_wsgi_app
        except ImportError as exc:
            raise MetricsUnavailable(f"prometheus_client is not installed ({INSTALL_HINT}): {exc}") from None
        registry = CollectorRegistry(auto_describe=True)
        registry.register(collector)
        app = make_wsgi_app(registry)
        busy: list[int] = []
        low, high = ports
        for port in range(low, high + 1):
            try:
                return cls(_make_server(addr, port, app), addr, port), busy
            except OSError as exc:
                if exc.errno != errno.EADDRINUSE:
                    raise
                busy.append(port)
        where = f"{addr}:{low}" if low == high else f"{addr}:{low}-{high}"
        raise MetricsUnavailable(f"no free port in {where}: every one is in use (another worker or program "
                                 "listens there; give each worker its own port or a wider range)")

    def forget_socket(self) -> None:
        """Close this process's copy of the listening socket if it is a fork of the server's process."""
        if os.getpid() != self._pid:
            try:
                self.httpd.socket.close()
            except OSError:
                pass

    def stop(self, timeout: float = 5.0) -> None:
        """Stop serving, close the socket and join the serving thread."""
        _SERVERS.discard(self)
        if self.thread.is_alive():
            self.httpd.shutdown()  # returns once serve_forever has stopped (within SERVE_POLL)
        self.httpd.server_close()
        self.thread.join(timeout)


def _make_server(addr: str, port: int, app: Any) -> Any:
    """A threading WSGI server bound to ``addr:port`` (IPv6 when the address is), with quiet request logs."""
    from socketserver import ThreadingMixIn
    from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

    family = socket.getaddrinfo(addr, port, type=socket.SOCK_STREAM)[0][0]

    class Server(ThreadingMixIn, WSGIServer):
        address_family = family
        daemon_threads = True  # a stalled client never delays a worker's shutdown (REQUEST_TIMEOUT ends it)

    class QuietHandler(WSGIRequestHandler):
        timeout = REQUEST_TIMEOUT

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
            pass

    return make_server(addr, port, app, server_class=Server, handler_class=QuietHandler)


def start_exporter(guard: "Guard") -> MetricsServer | None:
    """Start the exporter the Guard's settings ask for; None when off, or after one ``memguard.error``."""
    cfg = guard.config
    if cfg.metrics_port is None:
        return None
    try:
        server, busy = MetricsServer.bind(GuardCollector(guard), cfg.metrics_addr, cfg.metrics_port)
    except Exception as exc:  # a busy range, no prometheus_client, an address not of this host: no metrics
        events.error("metrics.start", exc)
        return None
    low, high = cfg.metrics_port
    events.emit(events.METRICS_SERVING, url=server.url, addr=server.addr, port=server.port,
                port_range=f"{low}-{high}" if high != low else str(low), busy_ports=busy)
    return server
