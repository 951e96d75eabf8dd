"""Synthetic MemGuard event logs with memory samples: a worker's day, as the HTML report tests and the
``bench_report_html`` benchmark read it.

:func:`day_events` yields the events a worker with ``children`` pool children logs over ``hours``
hours with a sample every ``interval`` seconds: every child leaks slowly and is recycled at the soft
limit (a new pid in the same slot), slot 1 runs a heavy task now and then and once has it stopped at
the hard limit, one child is lost to the OOM killer, a leak is suspected and the master grows. The
samples have the shape :func:`celery_memguard.sampling.sample_fields` gives them.
"""

from __future__ import annotations

import datetime as dt
import json
import random
from pathlib import Path
from typing import Any, Iterator

START = dt.datetime(2026, 11, 25, 0, 0, tzinfo=dt.timezone.utc)
HOST = "celery@day"
SOFT, HARD = 300.0, 500.0


def _ts(seconds: float) -> str:
    return (START + dt.timedelta(seconds=seconds)).isoformat(timespec="milliseconds")


def day_events(children: int = 8, interval: float = 60.0, hours: float = 24.0, seed: int = 1) -> Iterator[dict[str, Any]]:
    rng = random.Random(seed)
    base = {"hostname": HOST, "level": "info", "source_pid": 100}
    yield {**base, "event": "memguard.started", "ts": _ts(0), "pool": "prefork", "concurrency": children,
           "metric": "uss", "soft_limit_mib": SOFT, "hard_limit_mib": HARD, "poll_interval": 1.0, "dry_run": False,
           "pool_limit_mib": 3000.0, "min_available_mib": 1024.0, "sample_interval": interval}
    pids = {slot: 1000 + slot for slot in range(children)}
    mem = {slot: 80.0 + rng.random() * 20 for slot in range(children)}
    tasks = {slot: 0 for slot in range(children)}
    next_pid = 2000
    master = 60.0
    steps = int(hours * 3600 / interval)
    leak_said = False
    for step in range(steps):
        now = step * interval
        for slot in range(children):
            tasks[slot] += rng.randint(5, 30)
            mem[slot] += rng.random() * 0.4 * interval / 60
            if slot == 1 and rng.random() < 0.02:
                mem[slot] += 120  # a heavy task's peak
                yield {**base, "event": "memguard.heavy_task", "ts": _ts(now + 0.1), "task": "app.render_pdf",
                       "task_id": f"pdf-{step}", "peak_mib": 121.0, "retained_mib": 120.0, "pid": pids[slot],
                       "occurrences": 1, "typical_peak_mib": 8.0, "advice": "chunk the input"}
            if step == steps // 2 and slot == 1:
                mem[slot] = HARD + 12
                yield {**base, "event": "memguard.task_killed", "ts": _ts(now + 0.5), "task": "app.runaway",
                       "task_id": "t-runaway", "pid": pids[slot], "mem_mib": mem[slot], "limit_mib": HARD,
                       "metric": "uss", "reason": "hard_limit", "signal": "MemoryLimitExceeded"}
            if step == steps // 3 and slot == 2:
                yield {**base, "event": "memguard.child_lost", "ts": _ts(now + 0.3), "pid": pids[slot],
                       "signal": "SIGKILL", "exitcode": -9, "task": "app.import_csv", "likely_oom": True,
                       "last_mem_mib": mem[slot], "reason": "the kernel's OOM killer"}
            if mem[slot] >= SOFT or (step == steps // 2 and slot == 1) or (step == steps // 3 and slot == 2):
                if mem[slot] >= SOFT and not (step == steps // 2 and slot == 1):
                    yield {**base, "event": "memguard.child_recycled", "ts": _ts(now + 0.2), "pid": pids[slot],
                           "reason": "soft_limit", "mem_mib": round(mem[slot], 2), "limit_mib": SOFT, "metric": "uss",
                           "tasks_run": tasks[slot], "lifetime_s": 3600.0, "task": None, "task_id": None}
                next_pid += 1
                pids[slot], mem[slot], tasks[slot] = next_pid, 80.0 + rng.random() * 10, 0
        master += 0.002 * interval
        if not leak_said and now >= 3 * 3600:
            leak_said = True
            yield {**base, "event": "memguard.leak_suspected", "ts": _ts(now), "task": "app.leaky",
                   "kib_per_call": 48.0, "confidence": 0.93, "calls_observed": 4000, "children": children,
                   "projected_calls_to_soft_limit": 3000, "since_calls": 1000}
            yield {**base, "event": "memguard.leak_sites", "ts": _ts(now + 5), "task": "app.leaky", "task_id": "t1",
                   "pid": pids[0], "calls_traced": 20,
                   "sites": [{"file": "app/tasks.py", "line": 42, "size_kib": 960.0, "count": 20}]}
        if step == steps * 3 // 4:
            yield {**base, "event": "memguard.master_growth", "ts": _ts(now), "mem_mib": round(master, 2),
                   "mib_per_hour": 7.2, "since_s": now, "growth_mib": round(master - 60, 2), "reserved": 4,
                   "note": "the master grows"}
        kids = [{"slot": slot, "pid": pids[slot], "mem_mib": round(mem[slot], 2),
                 "rss_mib": round(mem[slot] + 35, 2), "tasks": tasks[slot]} for slot in range(children)]
        pool = sum(mem.values())
        yield {**base, "event": "memguard.sample", "ts": _ts(now), "metric": "uss", "children": kids,
               "pool_mib": round(pool, 2), "pool_rss_mib": round(pool + 35 * children, 2),
               "master_mib": round(master, 2), "master_rss_mib": round(master + 20, 2),
               "available_mib": round(16000 - pool - master, 2)}


def write_day_log(path: Path, **kwargs: Any) -> int:
    """Write :func:`day_events` as JSON lines to ``path``; returns the number of lines."""
    count = 0
    with open(path, "w") as handle:
        for event in day_events(**kwargs):
            handle.write(json.dumps(event) + "\n")
            count += 1
    return count
