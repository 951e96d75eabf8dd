"""The Prometheus exporter on real prefork workers (Redis and RabbitMQ).

* A worker with a leaking task (soft recycles, a leak suspect) and a runaway task (stopped at the hard
  limit) is scraped all through the run: every scrape parses, counters never go back, and at the end
  the numbers match the event log: recycles and kills by reason, each slot's memory against the last
  ``memguard.sample``, the limits as configured, the suspect's bytes per call. The pool children do not
  hold the listening socket.
* A port already taken: one ``memguard.error``, the worker runs tasks as before.
* Without prometheus_client (shadowed on the worker's path): one ``memguard.error`` naming the extra.
* Two workers given one port range listen on two distinct ports of it, each serving its own node.
"""

from __future__ import annotations

import socket
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.harness import free_ports

from .conftest import REPO, StartWorker, Worker, wait_until

pytest.importorskip("prometheus_client", reason="the prometheus extra (pip install 'celery-memguard[prometheus]')")
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

MiB = 1024 * 1024
SOFT_MIB, HARD_MIB = 100, 300
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(url: str) -> Samples:
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def by_label(samples: Samples, name: str, label: str) -> dict[str, float]:
    return {dict(labels)[label]: value for (n, labels), value in samples.items() if n == name}


class Scraper(threading.Thread):
    """Scrapes ``url`` every ``interval`` s until stopped; keeps every scrape (a failed one fails the test)."""

    def __init__(self, url: str, interval: float = 0.2) -> None:
        super().__init__(daemon=True)
        self.url, self.interval = url, interval
        self.scrapes: list[Samples] = []
        self.failures: list[BaseException] = []
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.wait(self.interval):
            try:
                self.scrapes.append(scrape(self.url))
            except BaseException as exc:
                self.failures.append(exc)

    def stop(self) -> None:
        self._stop_event.set()
        self.join(10)


def settled(worker: Worker, poll: float) -> None:
    """Wait until no order came for 10 polls and every child ordered out has been replaced."""
    def quiet() -> bool:
        before = len(worker.events("memguard.child_recycled")) + len(worker.events("memguard.task_killed"))
        time.sleep(10 * poll)
        after = len(worker.events("memguard.child_recycled")) + len(worker.events("memguard.task_killed"))
        left = {e["pid"] for e in worker.events("memguard.child_recycled") + worker.events("memguard.task_killed")}
        pids = worker.child_pids()
        return after == before and len(pids) == worker.concurrency and not pids & left

    wait_until(quiet, 60, what="the orders to stop and the pool to be refilled")


def test_metrics_match_the_events_of_a_run_with_recycles_and_a_stopped_task(
        start_worker: StartWorker, broker_url: str, tmp_path: Path) -> None:
    low, high = free_ports(3)
    poll = 0.1
    worker = start_worker(broker_url, concurrency=2, conf={
        "memguard_soft_limit": f"{SOFT_MIB}MiB", "memguard_hard_limit": f"{HARD_MIB}MiB",
        "memguard_poll_interval": poll, "memguard_sample_interval": 0.5,
        "memguard_metrics_port": f"{low}-{high}"})
    serving = worker.wait_for_event("memguard.metrics_serving")
    assert low <= serving["port"] <= high and serving["addr"] == "127.0.0.1", serving
    url = serving["url"]
    first = scrape(url)
    assert by_label(first, "celery_memguard_limit_bytes", "limit") == {"soft": SOFT_MIB * MiB, "hard": HARD_MIB * MiB}
    hostname = worker.events("memguard.started")[0]["hostname"]
    (info,) = [dict(labels) for (name, labels) in first if name == "celery_memguard_info"]
    assert (info["node"], info["pool"], info["metric"]) == (hostname, "prefork", "uss"), info

    scraper = Scraper(url)
    scraper.start()
    try:
        leaks = [worker.send("it.retain", 4) for _ in range(40)]
        assert [o.state for o in worker.collect(leaks, timeout=120)] == ["SUCCESS"] * 40
        runaway = worker.collect([worker.send("it.grow", 400, 600, str(tmp_path / "peak.json"))], timeout=60)
        assert runaway[0].state == "FAILURE" and "MemoryLimitExceeded" in str(runaway[0].traceback), runaway
        settled(worker, poll)
        worker.wait_for_event("memguard.leak_suspected", where=lambda e: e["task"] == "it.retain")
    finally:
        scraper.stop()
    assert scraper.failures == [] and len(scraper.scrapes) > 10, scraper.failures

    # Counters never go back between scrapes.
    for name in ("celery_memguard_recycles_total", "celery_memguard_kills_total", "celery_memguard_polls_total"):
        for before, after in zip(scraper.scrapes, scraper.scrapes[1:]):
            for key, value in before.items():
                if key[0] == name:
                    assert after.get(key, -1) >= value, (key, value, after.get(key))

    # The final numbers against the event log: wait for a sample of the settled pool, then scrape.
    mark = len(worker.events("memguard.sample"))
    worker.wait_for_event("memguard.sample", where=lambda e: worker.events("memguard.sample").index(e) > mark + 1)
    final = scrape(url)
    sample = worker.events("memguard.sample")[-1]

    recycled, killed = worker.events("memguard.child_recycled"), worker.events("memguard.task_killed")
    assert recycled and killed, worker.diagnostics()
    print(f"{len(scraper.scrapes)} scrapes; {len(recycled)} recycles, {len(killed)} stops; final:",
          {k: v for k, v in final.items() if "total" in k[0] or "child_memory" in k[0]})
    want_recycles: dict[str, float] = {}
    for event in recycled:
        want_recycles[event["reason"]] = want_recycles.get(event["reason"], 0) + 1
    assert by_label(final, "celery_memguard_recycles_total", "reason") == want_recycles
    stops = [e for e in killed if e["signal"] == "MemoryLimitExceeded"]
    assert by_label(final, "celery_memguard_kills_total", "reason") == {"hard_limit": len(stops)}, killed
    assert by_label(final, "celery_memguard_force_kills_total", "reason") == (
        {"hard_limit": len(killed) - len(stops)} if len(killed) > len(stops) else {})

    memory = by_label(final, "celery_memguard_child_memory_bytes", "slot")
    rss = by_label(final, "celery_memguard_child_rss_bytes", "slot")
    sampled = {str(c["slot"]): c for c in sample["children"]}
    assert set(memory) == set(sampled) == {"0", "1"}, (memory, sample)
    for slot, child in sampled.items():  # idle children: the scrape's poll and the sample's agree closely
        assert abs(memory[slot] / MiB - child["mem_mib"]) <= max(2.0, 0.1 * child["mem_mib"]), (slot, memory, child)
        assert abs(rss[slot] / MiB - child["rss_mib"]) <= max(2.0, 0.1 * child["rss_mib"]), (slot, rss, child)
    assert final[("celery_memguard_children", ())] == 2
    assert abs(final[("celery_memguard_pool_memory_bytes", ())] / MiB - sample["pool_mib"]) <= max(4.0, 0.1 * sample["pool_mib"])
    assert final[("celery_memguard_master_rss_bytes", ())] > 0 and final[("celery_memguard_available_memory_bytes", ())] > 0

    suspect = [e for e in worker.events("memguard.leak_suspected") if e["task"] == "it.retain"][-1]
    per_call = by_label(final, "celery_memguard_leak_suspect_bytes_per_call", "task")
    assert per_call["it.retain"] == pytest.approx(suspect["kib_per_call"] * 1024), (per_call, suspect)
    assert by_label(final, "celery_memguard_leak_suspect_confidence", "task")["it.retain"] == suspect["confidence"]
    assert final[("celery_memguard_polls_total", ())] > 10 and final[("celery_memguard_active", ())] == 1
    assert by_label(final, "celery_memguard_errors_total", "where") == {} and worker.events("memguard.error") == []

    # Only the worker's main process listens: the pool children closed their inherited copy.
    port = serving["port"]
    for pid in worker.child_pids():
        listening = [c for c in psutil.Process(pid).net_connections("tcp") if c.status == psutil.CONN_LISTEN]
        assert all(c.laddr.port != port for c in listening), (pid, listening)


def occupy(port: int) -> socket.socket:
    s = socket.socket()
    s.bind(("127.0.0.1", port))
    s.listen()
    return s


def test_a_busy_port_is_one_error_and_the_worker_works(start_worker: StartWorker, redis_url: str) -> None:
    port, _ = free_ports(1)
    with occupy(port):
        worker = start_worker(redis_url, concurrency=1, conf={"memguard_metrics_port": port})
        assert worker.ping() in worker.child_pids()
        (error,) = worker.events("memguard.error")
        assert error["where"] == "metrics.start" and f"no free port in 127.0.0.1:{port}" in error["error"], error
        assert worker.events("memguard.metrics_serving") == []
        assert [o.state for o in worker.collect([worker.send("it.retain", 1) for _ in range(4)])] == ["SUCCESS"] * 4


def test_without_the_extra_one_error_names_it(start_worker: StartWorker, redis_url: str, tmp_path: Path) -> None:
    shadow = tmp_path / "shadow" / "prometheus_client"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text('raise ImportError("No module named \'prometheus_client\' (test shadow)")\n')

    port, _ = free_ports(1)
    worker = start_worker(redis_url, concurrency=1, conf={"memguard_metrics_port": port},
                          extra_env={"PYTHONPATH": f"{shadow.parent}:{REPO}"})
    assert worker.ping() in worker.child_pids()
    (error,) = worker.events("memguard.error")
    assert error["where"] == "metrics.start", error
    assert "pip install 'celery-memguard[prometheus]'" in error["error"] and "test shadow" in error["error"], error


def test_two_workers_on_one_range_take_distinct_ports(start_worker: StartWorker, redis_url: str) -> None:
    low, high = free_ports(2)
    conf: dict[str, Any] = {"memguard_metrics_port": f"{low}-{high}"}
    workers = [start_worker(redis_url, concurrency=1, conf=conf, ready=False) for _ in range(2)]
    for worker in workers:  # started together: they race for the first port
        worker.wait_ready()
    serving = [w.wait_for_event("memguard.metrics_serving") for w in workers]
    assert sorted(s["port"] for s in serving) == [low, high], serving
    for worker, event in zip(workers, serving):
        node = worker.events("memguard.started")[0]["hostname"]
        (info,) = [dict(labels) for (name, labels) in scrape(event["url"]) if name == "celery_memguard_info"]
        assert info["node"] == node, (info, node)
    # The worker that found the first port taken says which ports it passed over.
    assert sorted(len(s["busy_ports"]) for s in serving) == [0, 1], serving


def test_thirty_two_children_one_series_per_slot(start_worker: StartWorker, redis_url: str) -> None:
    """At 32 children every slot has its series, once; totals add up; scrapes stay fast."""
    port, _ = free_ports(1)
    worker = start_worker(redis_url, concurrency=32, conf={"memguard_metrics_port": port,
                                                           "memguard_poll_interval": 0.2})
    url = worker.wait_for_event("memguard.metrics_serving")["url"]

    def full() -> Samples | None:
        samples = scrape(url)
        return samples if samples.get(("celery_memguard_children", ())) == 32 else None

    samples = wait_until(full, 60, interval=0.5, what="a poll of all 32 children")
    memory = by_label(samples, "celery_memguard_child_memory_bytes", "slot")
    assert sorted(memory, key=int) == [str(i) for i in range(32)], memory
    assert sum(memory.values()) == samples[("celery_memguard_pool_memory_bytes", ())]
    timings = []
    for _ in range(10):
        started = time.perf_counter()
        scrape(url)
        timings.append(time.perf_counter() - started)
    print(f"scrape of a 32-child worker: median {sorted(timings)[5] * 1000:.1f} ms, max {max(timings) * 1000:.1f} ms")
    assert sorted(timings)[5] < 1.0, timings
    assert worker.events("memguard.error") == []


def test_served_through_a_warm_shutdown_then_gone(start_worker: StartWorker, redis_url: str) -> None:
    """While the pool drains, scrapes still answer (the busy child is seen); once the worker exits, nothing listens."""
    import signal

    port, _ = free_ports(1)
    worker = start_worker(redis_url, concurrency=2, conf={"memguard_metrics_port": port, "memguard_poll_interval": 0.1})
    url = worker.wait_for_event("memguard.metrics_serving")["url"]
    result = worker.send("it.ping", 4.0)
    wait_until(lambda: 1.0 in by_label(scrape(url), "celery_memguard_child_busy", "slot").values(), 20,
               what="the long task to be seen running")
    worker.proc.send_signal(signal.SIGTERM)
    worker.wait_for_event("memguard.draining")
    during = scrape(url)
    assert during[("celery_memguard_active", ())] == 1 and 1.0 in by_label(during, "celery_memguard_child_busy",
                                                                           "slot").values(), during
    assert worker.collect([result], timeout=30)[0].state == "SUCCESS"  # nothing lost: the task finished
    assert worker.proc.wait(30) == 0
    assert [e["shutdown"] for e in worker.events("memguard.stopped")] == ["warm"]
    with pytest.raises(OSError):
        scrape(url)
    assert worker.events("memguard.error") == []
