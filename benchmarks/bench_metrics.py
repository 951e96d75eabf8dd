"""What a Prometheus scrape of MemGuard's exporter costs (issue 11.1): time and response size.

A Guard in the state of a worker with N children (slots 0..N-1, every decision reason, children lost,
leak suspects and heavy tasks at the label cap) is served by the real exporter (celery_memguard.metrics:
collector and HTTP server on 127.0.0.1) in this process; each row is the median and the 95th percentile
of R scrapes: the collector alone (collect() + text exposition, what runs in the worker per scrape) and a
whole HTTP GET /metrics through the server (client time included). No worker process: a scrape reads
only the Guard's published views, which are the same objects in a real worker.

    .venv/bin/python benchmarks/bench_metrics.py [--rounds R] [--children 2,32,256]

Needs the prometheus extra (pip install 'celery-memguard[prometheus]'). Prints one Markdown table.
"""

from __future__ import annotations

import argparse
import statistics
import time
import urllib.request
from types import SimpleNamespace
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest

from celery_memguard import events
from celery_memguard.config import MemGuardConfig
from celery_memguard.detectors.base import Finding
from celery_memguard.guard import Guard
from celery_memguard.metrics import MAX_TASK_LABELS, GuardCollector, MetricsServer
from celery_memguard.monitor import PollView
from celery_memguard.samples import ChildSample, MasterSample, SystemSample

MiB = 1024 * 1024


def busy_guard(children: int) -> Guard:
    """A guard holding a busy worker's state: N children, every reason, losses, capped suspects and heavy tasks."""
    events.emit = lambda *a, **k: None  # type: ignore[assignment]  # the findings below log nothing
    config = MemGuardConfig.from_mapping({"memguard_soft_limit": "512MiB", "memguard_hard_limit": "1GiB",
                                          "memguard_pool_limit": "8GiB", "memguard_min_available": "1GiB"}, 64 << 30)
    guard = Guard(config, pool_name="prefork", board=None, node="bench@host")
    samples = tuple(ChildSample(pid=1000 + i, mem=(100 + i) * MiB, exact=i % 2 == 0, rss=(150 + i) * MiB,
                                task="t.work" if i % 3 == 0 else None, task_id="x" if i % 3 == 0 else None,
                                tasks_run=i * 7) for i in range(children))
    view = PollView(at=time.monotonic(), children=samples,
                    system=SystemSample(available=20 << 30, total=64 << 30, used=44 << 30),
                    master=MasterSample(pid=1, mem=80 * MiB, rss=120 * MiB, at=time.monotonic()),
                    slots={1000 + i: i for i in range(children)})
    reasons = ("soft_limit", "hard_limit", "pool_limit", "pressure", "leak_projection", "lifetime", "max_tasks")
    decided = {(action, reason): 5 for action in ("recycle", "kill", "force_kill") for reason in reasons}
    guard.monitor = SimpleNamespace(last_poll=view, polls=100_000, lost={"SIGKILL": 3, "SIGSEGV": 1},  # type: ignore[assignment]
                                    decided=decided)
    guard.engine = SimpleNamespace(pending=lambda pid: None)  # type: ignore[assignment]
    for i in range(MAX_TASK_LABELS):
        task = f"proj.tasks.task_number_{i}"
        guard.record(Finding(events.LEAK_SUSPECTED, {"task": task, "kib_per_call": 4.0, "confidence": 0.8}, task=task))
        guard.record(Finding(events.HEAVY_TASK, {"task": task}, task=task))
    return guard


def timed(call: Any, rounds: int) -> tuple[float, float, Any]:
    times, result = [], None
    for _ in range(rounds):
        started = time.perf_counter()
        result = call()
        times.append(time.perf_counter() - started)
    times.sort()
    return statistics.median(times), times[int(0.95 * (len(times) - 1))], result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--children", default="2,32,256")
    args = parser.parse_args()
    print("| children | series | response | collector median | collector p95 | HTTP GET median | HTTP GET p95 |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for n in (int(c) for c in args.children.split(",")):
        collector = GuardCollector(busy_guard(n))
        registry = CollectorRegistry()
        registry.register(collector)
        c_med, c_p95, text = timed(lambda: generate_latest(registry), args.rounds)
        series = sum(1 for line in text.decode().splitlines() if line and not line.startswith("#"))
        server, _ = MetricsServer.bind(collector, "127.0.0.1", (20000, 60000))
        try:
            def get() -> bytes:
                with urllib.request.urlopen(server.url, timeout=10) as response:
                    return bytes(response.read())
            h_med, h_p95, _ = timed(get, args.rounds)
        finally:
            server.stop()
        print(f"| {n} | {series} | {len(text) / 1024:.1f} KiB | {c_med * 1e3:.2f} ms | {c_p95 * 1e3:.2f} ms "
              f"| {h_med * 1e3:.2f} ms | {h_p95 * 1e3:.2f} ms |")


if __name__ == "__main__":
    main()
