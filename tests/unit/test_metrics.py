"""The Prometheus exporter (celery_memguard.metrics): the collector on a synthetic Guard, and its HTTP server.

The collector is scraped through prometheus_client's own text exposition and parser, so what is
checked is what Prometheus would read. The server tests bind real sockets on localhost.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import urllib.request
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Iterator

import pytest

pytest.importorskip("prometheus_client", reason="the prometheus extra (pip install 'celery-memguard[prometheus]')")
from prometheus_client import CollectorRegistry, generate_latest  # noqa: E402
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from celery_memguard import __version__, events, metrics  # noqa: E402
from celery_memguard.config import MemGuardConfig  # noqa: E402
from celery_memguard.detectors.base import Finding  # noqa: E402
from celery_memguard.guard import Guard, IntakeState  # noqa: E402
from celery_memguard.metrics import METRICS, GuardCollector, MetricsServer, MetricsUnavailable  # noqa: E402
from celery_memguard.monitor import PollView, PoolHooks  # noqa: E402
from celery_memguard.samples import Action, ChildSample, MasterSample, SystemSample  # noqa: E402
from tests.harness import free_ports  # noqa: E402

MiB = 1024 * 1024
MEM = 8 * 1024 * MiB


def make_guard(**conf: Any) -> Guard:
    config = MemGuardConfig.from_mapping({"memguard_soft_limit": "512MiB", "memguard_hard_limit": "1GiB", **conf}, MEM)
    return Guard(config, pool_name="prefork", board=None, node="w1@host")


def scrape(collector: GuardCollector) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of one scrape, as Prometheus parses the text: (name, sorted labels) -> value."""
    registry = CollectorRegistry(auto_describe=True)
    registry.register(collector)
    text = generate_latest(registry).decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def populated(monkeypatch: pytest.MonkeyPatch) -> Guard:
    """A guard with two children in slots 0 and 1 (one leaving), decisions, losses, findings and readings."""
    monkeypatch.setattr(events, "emit", lambda *a, **k: None)
    guard = make_guard(memguard_pool_limit="2GiB", memguard_min_available="1GiB")
    view = PollView(at=10.0,
                    children=(ChildSample(pid=11, mem=300 * MiB, exact=True, rss=320 * MiB, task="t.a", task_id="x",
                                          tasks_run=7),
                              ChildSample(pid=12, mem=50 * MiB, exact=False, rss=60 * MiB, tasks_run=2)),
                    system=SystemSample(available=3000 * MiB, total=MEM, used=MEM - 3000 * MiB),
                    master=MasterSample(pid=1, mem=80 * MiB, rss=120 * MiB, at=9.0), slots={11: 0, 12: 1})
    guard.monitor = SimpleNamespace(  # type: ignore[assignment]
        last_poll=view, polls=42, lost={"SIGKILL": 2},
        decided={("recycle", "soft_limit"): 3, ("kill", "hard_limit"): 1, ("force_kill", "hard_limit"): 1})
    guard.engine = SimpleNamespace(pending=lambda pid: Action.RECYCLE if pid == 12 else None)  # type: ignore[assignment]
    guard.record(Finding(events.LEAK_SUSPECTED, {"task": "t.leak", "kib_per_call": 4.0, "confidence": 0.8}, task="t.leak"))
    guard.record(Finding(events.HEAVY_TASK, {"task": "t.big"}, task="t.big"))
    guard.record(Finding(events.HEAVY_TASK, {"task": "t.big"}, task="t.big"))
    guard.record(Finding(events.MASTER_GROWTH, {"mib_per_hour": 36.0, "growth_mib": 70.0}))
    return guard


class TestCollector:
    def test_a_scrape_reports_what_the_guard_knows(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Children by slot, master, pool, available memory, limits, decisions by reason, findings."""
        guard = populated(monkeypatch)
        got = scrape(GuardCollector(guard, clock=lambda: 12.5))
        expected = {
            ("celery_memguard_info", (("metric", "uss"), ("node", "w1@host"), ("pool", "prefork"),
                                      ("version", __version__))): 1.0,
            ("celery_memguard_active", ()): 1.0,
            ("celery_memguard_dry_run", ()): 0.0,
            ("celery_memguard_limit_bytes", (("limit", "soft"),)): 512.0 * MiB,
            ("celery_memguard_limit_bytes", (("limit", "hard"),)): 1024.0 * MiB,
            ("celery_memguard_limit_bytes", (("limit", "pool"),)): 2048.0 * MiB,
            ("celery_memguard_limit_bytes", (("limit", "min_available"),)): 1024.0 * MiB,
            ("celery_memguard_effective_memory_bytes", ()): float(MEM),
            ("celery_memguard_child_memory_bytes", (("slot", "0"),)): 300.0 * MiB,
            ("celery_memguard_child_memory_bytes", (("slot", "1"),)): 50.0 * MiB,
            ("celery_memguard_child_memory_exact", (("slot", "0"),)): 1.0,
            ("celery_memguard_child_memory_exact", (("slot", "1"),)): 0.0,
            ("celery_memguard_child_rss_bytes", (("slot", "0"),)): 320.0 * MiB,
            ("celery_memguard_child_rss_bytes", (("slot", "1"),)): 60.0 * MiB,
            ("celery_memguard_child_tasks", (("slot", "0"),)): 7.0,
            ("celery_memguard_child_tasks", (("slot", "1"),)): 2.0,
            ("celery_memguard_child_busy", (("slot", "0"),)): 1.0,
            ("celery_memguard_child_busy", (("slot", "1"),)): 0.0,
            ("celery_memguard_child_leaving", (("slot", "0"),)): 0.0,
            ("celery_memguard_child_leaving", (("slot", "1"),)): 1.0,
            ("celery_memguard_children", ()): 2.0,
            ("celery_memguard_pool_memory_bytes", ()): 350.0 * MiB,
            ("celery_memguard_pool_rss_bytes", ()): 380.0 * MiB,
            ("celery_memguard_poll_age_seconds", ()): 2.5,
            ("celery_memguard_master_memory_bytes", ()): 80.0 * MiB,
            ("celery_memguard_master_rss_bytes", ()): 120.0 * MiB,
            ("celery_memguard_available_memory_bytes", ()): 3000.0 * MiB,
            ("celery_memguard_recycles_total", (("reason", "soft_limit"),)): 3.0,
            ("celery_memguard_kills_total", (("reason", "hard_limit"),)): 1.0,
            ("celery_memguard_force_kills_total", (("reason", "hard_limit"),)): 1.0,
            ("celery_memguard_children_lost_total", (("signal", "SIGKILL"),)): 2.0,
            ("celery_memguard_polls_total", ()): 42.0,
            ("celery_memguard_leak_suspect_bytes_per_call", (("task", "t.leak"),)): 4096.0,
            ("celery_memguard_leak_suspect_confidence", (("task", "t.leak"),)): 0.8,
            ("celery_memguard_leak_suspects", ()): 1.0,
            ("celery_memguard_heavy_tasks_total", (("task", "t.big"),)): 2.0,
            ("celery_memguard_master_growth_bytes_per_second", ()): 36.0 * MiB / 3600,
            ("celery_memguard_master_growth_bytes", ()): 70.0 * MiB,
            ("celery_memguard_events_dropped_total", ()): float(events.get().dropped),
        }
        got_errors = {k: v for k, v in got.items() if k[0] == "celery_memguard_errors_total"}
        assert expected == {k: v for k, v in got.items() if k[0] != "celery_memguard_errors_total"}
        assert {(k[1][0][1]) for k in got_errors} == set(guard.errors)

    def test_before_the_monitor_starts(self) -> None:
        """Identity and limits are served at once; no child series, no poll age; counters at zero."""
        got = scrape(GuardCollector(make_guard()))
        assert got[("celery_memguard_active", ())] == 0.0 and got[("celery_memguard_polls_total", ())] == 0.0
        assert not any(name.startswith("celery_memguard_child_") or name == "celery_memguard_poll_age_seconds"
                       for name, _ in got)
        assert got[("celery_memguard_limit_bytes", (("limit", "soft"),))] == 512.0 * MiB
        assert ("celery_memguard_paused", ()) not in got  # no pause feature: no gauge

    def test_paused_gauge_follows_the_guard(self) -> None:
        """With the pause feature on, the gauge is the guard's intake state."""
        guard = make_guard()
        guard.intake_state = IntakeState(enabled=True, paused=True, since=1.0, trigger="available", pauses=1)
        assert scrape(GuardCollector(guard))[("celery_memguard_paused", ())] == 1.0
        guard.intake_state = IntakeState(enabled=True, paused=False, pauses=1)
        assert scrape(GuardCollector(guard))[("celery_memguard_paused", ())] == 0.0

    def test_a_group_that_raises_leaves_the_others_served_and_is_logged_once(
            self, monkeypatch: pytest.MonkeyPatch, logged: Path) -> None:
        guard = make_guard()
        broken = PollView(at=1.0, children=("not a sample",), system=None, master=None)  # type: ignore[arg-type]
        guard.monitor = SimpleNamespace(last_poll=broken, polls=5, lost={}, decided={})  # type: ignore[assignment]
        collector = GuardCollector(guard)
        for _ in range(3):
            got = scrape(collector)
            assert got[("celery_memguard_polls_total", ())] == 5.0 and got[("celery_memguard_active", ())] == 1.0
        errors = [json.loads(line) for line in logged.read_text().splitlines() if "memguard.error" in line]
        assert [e["where"] for e in errors] == ["metrics.children"], errors
        assert scrape(collector)[("celery_memguard_errors_total", (("where", "metrics.children"),))] == 4.0

    def test_one_series_per_slot_and_children_without_a_slot_only_in_totals(self) -> None:
        """Two children reporting the same slot never make a duplicate series (Prometheus would drop the scrape)."""
        guard = make_guard()
        view = PollView(at=1.0, children=(ChildSample(pid=1, mem=10 * MiB, exact=True, rss=10 * MiB),
                                          ChildSample(pid=2, mem=20 * MiB, exact=True, rss=20 * MiB),
                                          ChildSample(pid=3, mem=40 * MiB, exact=True, rss=40 * MiB)),
                        system=None, master=None, slots={1: 0, 2: 0, 3: None})
        guard.monitor = SimpleNamespace(last_poll=view, polls=1, lost={}, decided={})  # type: ignore[assignment]
        got = scrape(GuardCollector(guard))
        assert [k for k in got if k[0] == "celery_memguard_child_memory_bytes"] == [
            ("celery_memguard_child_memory_bytes", (("slot", "0"),))]
        assert got[("celery_memguard_child_memory_bytes", (("slot", "0"),))] == 10.0 * MiB
        assert got[("celery_memguard_pool_memory_bytes", ())] == 70.0 * MiB

    def test_hostile_task_names_are_escaped_and_bounded(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setattr(events, "emit", lambda *a, **k: None)
        guard = make_guard()
        names = ['a"b', "new\nline", "back\\slash", "ünï{code}", ""] + [f"t{i}" for i in range(500)]
        for name in names:
            guard.record(Finding(events.HEAVY_TASK, {"task": name}, task=name))
        got = scrape(GuardCollector(guard))
        served = {dict(labels)["task"] for name, labels in got if name == "celery_memguard_heavy_tasks_total"}
        assert {'a"b', "new\nline", "back\\slash", "ünï{code}"} <= served  # "" is no task: never recorded
        assert len(served) == metrics.MAX_TASK_LABELS

    def test_bad_values_in_finding_tables_do_not_break_the_scrape(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setattr(events, "emit", lambda *a, **k: None)
        guard = make_guard()
        guard.suspects = {"t": {"kib_per_call": "many", "confidence": None}}
        got = scrape(GuardCollector(guard))
        assert got[("celery_memguard_active", ())] == 0.0 and ("celery_memguard_leak_suspects", ()) not in got

    def test_available_and_master_are_read_at_scrape_time_when_the_poll_does_not(self) -> None:
        """Without pressure policies the monitor reads no system memory: the scrape reads it (and the master)."""
        guard = make_guard()
        guard.start(PoolHooks(children=lambda: [], master_pid=os.getpid()))  # no board: no monitor
        try:
            got = scrape(GuardCollector(guard))
        finally:
            guard.stop("warm")
        assert got[("celery_memguard_available_memory_bytes", ())] > 0
        assert got[("celery_memguard_master_rss_bytes", ())] > 0 and got[("celery_memguard_master_memory_bytes", ())] > 0


class TestServedNames:
    def test_describe_and_collect_serve_exactly_the_table(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """describe() names every metric; a fully populated scrape serves only names of the table."""
        collector = GuardCollector(populated(monkeypatch))
        described = {s.name for f in collector.describe() for s in
                     [SimpleNamespace(name=f.name + ("_total" if f.type == "counter" else ""))]}
        assert described == metrics.served_names()
        guard = populated(monkeypatch)
        guard.intake_state = IntakeState(enabled=True, paused=False)
        assert {name for name, _ in scrape(GuardCollector(guard))} == metrics.served_names()

    def test_names_follow_prometheus_conventions(self) -> None:
        for spec in METRICS:
            assert spec.name.startswith("celery_memguard_"), spec
            assert spec.name.endswith("_total") == (spec.kind == "counter"), spec
            assert spec.kind in ("gauge", "counter") and spec.help, spec
            assert not any(word in spec.name for word in ("_mib", "_kib", "_mb", "_ms")), spec
            assert "pid" not in spec.labels, spec


def fetch(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as response:
        return str(response.read().decode())


@pytest.fixture
def occupied() -> Iterator[list[socket.socket]]:
    sockets: list[socket.socket] = []
    yield sockets
    for s in sockets:
        s.close()


def listen(port: int, sockets: list[socket.socket]) -> None:
    s = socket.socket()
    s.bind(("127.0.0.1", port))
    s.listen()
    sockets.append(s)


def memguard_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "memguard-metrics"]


class TestServer:
    def test_serves_metrics_and_stops_without_leaving_a_thread(self) -> None:
        low, high = free_ports(1)
        server, busy = MetricsServer.bind(GuardCollector(make_guard()), "127.0.0.1", (low, high))
        try:
            assert busy == [] and server.url == f"http://127.0.0.1:{low}/metrics"
            assert "celery_memguard_active 0.0" in fetch(server.url)
        finally:
            server.stop()
        assert not server.thread.is_alive() and memguard_threads() == []
        with pytest.raises(ConnectionRefusedError):  # nothing listens there any more
            socket.create_connection(("127.0.0.1", low), timeout=5).close()
        with socket.socket() as s:  # and a new server can listen there (the scrape's TIME_WAIT needs SO_REUSEADDR,
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # which every server sets)
            s.bind(("127.0.0.1", low))
            s.listen()

    def test_a_range_takes_the_first_free_port(self, occupied: list[socket.socket]) -> None:
        low, high = free_ports(3)
        listen(low, occupied)
        first, busy1 = MetricsServer.bind(GuardCollector(make_guard()), "127.0.0.1", (low, high))
        second, busy2 = MetricsServer.bind(GuardCollector(make_guard()), "127.0.0.1", (low, high))
        try:
            assert (first.port, busy1, second.port, busy2) == (low + 1, [low], low + 2, [low, low + 1])
            with pytest.raises(MetricsUnavailable, match=f"no free port in 127.0.0.1:{low}-{high}"):
                MetricsServer.bind(GuardCollector(make_guard()), "127.0.0.1", (low, high))
        finally:
            first.stop()
            second.stop()

    def test_a_busy_port_is_one_error_and_the_guard_runs_on(self, occupied: list[socket.socket], logged: Path) -> None:
        low, _ = free_ports(1)
        listen(low, occupied)
        guard = make_guard(memguard_metrics_port=low)
        for _ in range(2):
            guard.start(PoolHooks(children=lambda: []))
            assert guard.exporter is None and guard.summary()["metrics_url"] is None
            guard.stop("warm")
        errors = [json.loads(line) for line in logged.read_text().splitlines() if "memguard.error" in line]
        assert [(e["where"], e["error"].split(":")[0]) for e in errors] == [("metrics.start", "MetricsUnavailable")]
        assert f"no free port in 127.0.0.1:{low}" in errors[0]["error"]

    def test_without_prometheus_client_one_error_names_the_extra(self, monkeypatch: pytest.MonkeyPatch,
                                                                  logged: Path) -> None:
        monkeypatch.setitem(__import__("sys").modules, "prometheus_client", None)
        low, _ = free_ports(1)
        guard = make_guard(memguard_metrics_port=low)
        guard.start(PoolHooks(children=lambda: []))
        guard.stop("warm")
        (error,) = [json.loads(line) for line in logged.read_text().splitlines() if "memguard.error" in line]
        assert error["where"] == "metrics.start" and "pip install 'celery-memguard[prometheus]'" in error["error"]

    def test_guard_starts_logs_and_stops_the_exporter(self, logged: Path) -> None:
        low, high = free_ports(2)
        guard = make_guard(memguard_metrics_port=f"{low}-{high}", memguard_metrics_addr="127.0.0.1")
        guard.start(PoolHooks(children=lambda: []))
        try:
            assert guard.exporter is not None and guard.summary()["metrics_url"] == f"http://127.0.0.1:{low}/metrics"
            assert "celery_memguard_info{" in fetch(guard.exporter.url)
        finally:
            guard.stop("warm")
        assert guard.exporter is None and memguard_threads() == []
        (serving,) = [json.loads(line) for line in logged.read_text().splitlines() if "metrics_serving" in line]
        assert {k: serving[k] for k in ("addr", "port", "port_range", "busy_ports")} == {
            "addr": "127.0.0.1", "port": low, "port_range": f"{low}-{high}", "busy_ports": []}

    @pytest.mark.filterwarnings("ignore::DeprecationWarning")  # fork with threads running (3.12+ warns)
    def test_a_forked_child_closes_its_copy_of_the_listening_socket(self) -> None:
        low, _ = free_ports(1)
        server, _ = MetricsServer.bind(GuardCollector(make_guard()), "127.0.0.1", (low, low))
        try:
            pid = os.fork()
            if pid == 0:  # the child: its copy must be closed by the at-fork hook
                os._exit(0 if server.httpd.socket.fileno() == -1 else 1)
            _, status = os.waitpid(pid, 0)
            assert os.waitstatus_to_exitcode(status) == 0
            assert server.httpd.socket.fileno() != -1 and "celery_memguard_active" in fetch(server.url)
        finally:
            server.stop()

    def test_a_silent_client_does_not_block_scrapes(self) -> None:
        low, _ = free_ports(1)
        server, _ = MetricsServer.bind(GuardCollector(make_guard()), "127.0.0.1", (low, low))
        try:
            with socket.create_connection(("127.0.0.1", low)) as silent:
                silent.sendall(b"GET /metr")  # never finishes its request
                assert "celery_memguard_active" in fetch(server.url)
        finally:
            server.stop()


def test_the_metrics_module_imports_neither_celery_nor_prometheus_client() -> None:
    """The exporter is Celery-free, and its metric table is importable without the extra."""
    import subprocess
    import sys

    code = ("import sys, celery_memguard.metrics as m; assert m.served_names(); "
            "print(sorted(n for n in sys.modules if n.split('.')[0] in ('celery', 'prometheus_client')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "[]" == out.strip()
