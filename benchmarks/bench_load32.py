"""A 32-child prefork worker under a steady task stream, with and without MemGuard (one paired run).

The test project's worker (``tests/integration/proj.py``, on the shared harness) runs ``--children``
children on Redis. For ``--seconds`` a producer sends ``--rate`` tasks per second: ``it.ping`` sleeping
``--task-s``, and every ``--leak-every``-th one ``it.retain`` keeping ``--leak-mib`` MiB in its child
(a leaking task). With MemGuard the soft limit (``--soft-limit-mib``) recycles the children the leak
accumulates in. Variants, one after the other on the same machine:

* ``plain``: no MemGuard;
* ``memguard``: MemGuard with the soft limit, everything else at its defaults (poll 1 s, metric USS).

Per variant: tasks sent, succeeded, failed, results missing or duplicated; the master's CPU seconds
per minute over the stream (user + system, from /proc: the monitor runs in the master); with MemGuard
the children recycled and whether each of them ran the leak, polls made (``memguard.stopped``) per
second of the run, ``memguard.error`` and ``memguard.child_unguarded`` lines.

Usage::

    .venv/bin/python benchmarks/bench_load32.py                          # 32 children, 60 s per variant
    .venv/bin/python benchmarks/bench_load32.py --children 4 --seconds 10  # smoke
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any, Sequence

from _common import fmt, machine, table

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.harness import REDIS_BROKER_URL, launch_worker, redis_up  # noqa: E402


def run_variant(name: str, run_dir: Path, args: argparse.Namespace) -> dict[str, Any]:
    memguard = name == "memguard"
    conf = {"memguard_soft_limit": f"{args.soft_limit_mib}MiB"} if memguard else {}
    worker = launch_worker(run_dir, REDIS_BROKER_URL, tag=name, conf=conf, concurrency=args.children,
                           memguard=memguard, ready=False)
    try:
        if memguard:
            worker.wait_ready(120)
        else:
            worker.ping(120)
        worker.collect([worker.send("it.ping", 0.01) for _ in range(2 * args.children)], 120)  # warm-up
        sent: list[tuple[str, Any]] = []
        cpu0, _ = worker.process.cpu_seconds()
        t0 = time.monotonic()
        n = 0
        while time.monotonic() - t0 < args.seconds:
            due = t0 + n / args.rate
            pause = due - time.monotonic()
            if pause > 0:
                time.sleep(pause)
            n += 1
            if n % args.leak_every == 0:
                sent.append(("it.retain", worker.send("it.retain", args.leak_mib, args.task_s)))
            else:
                sent.append(("it.ping", worker.send("it.ping", args.task_s)))
        outcomes = worker.collect([r for _, r in sent], timeout=300)
        elapsed = time.monotonic() - t0
        cpu1, _ = worker.process.cpu_seconds()
        states = Counter(o.state for o in outcomes)
        leak_pids = {o.value["pid"] for (task, _), o in zip(sent, outcomes)
                     if task == "it.retain" and o.state == "SUCCESS"}
        row: dict[str, Any] = {
            "variant": name, "sent": len(sent), "succeeded": states.get("SUCCESS", 0),
            "failed": len(sent) - states.get("SUCCESS", 0), "unique_ids": len({o.task_id for o in outcomes}),
            "master_cpu_s_per_min": 60.0 * (cpu1 - cpu0) / elapsed, "elapsed_s": elapsed,
        }
    finally:
        worker.close()
    if memguard:
        recycled = worker.events("memguard.child_recycled")
        stopped = worker.events("memguard.stopped")
        started = worker.events("memguard.started")
        row.update(
            recycled=len(recycled),
            recycled_not_leakers=len({e["pid"] for e in recycled} - leak_pids),
            reasons=dict(Counter(e["reason"] for e in recycled)),
            polls=stopped[-1]["polls"] if stopped else None,
            errors=len(worker.events("memguard.error")),
            unguarded=len(worker.events("memguard.child_unguarded")),
            run_s=_span(started, stopped),
        )
    return row


def _span(started: list[dict[str, Any]], stopped: list[dict[str, Any]]) -> float | None:
    from datetime import datetime

    if not started or not stopped:
        return None
    return (datetime.fromisoformat(stopped[-1]["ts"]) - datetime.fromisoformat(started[0]["ts"])).total_seconds()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--children", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--rate", type=float, default=20.0, help="tasks sent per second")
    parser.add_argument("--task-s", type=float, default=0.2, help="each task sleeps this long")
    parser.add_argument("--leak-every", type=int, default=10)
    parser.add_argument("--leak-mib", type=int, default=10)
    parser.add_argument("--soft-limit-mib", type=int, default=60)
    parser.add_argument("--variants", default="plain,memguard")
    args = parser.parse_args(argv)
    if not redis_up(REDIS_BROKER_URL):
        print("Redis is not reachable on 127.0.0.1:6379 (bash scripts/services.sh)", file=sys.stderr)
        return 2
    print(" ".join(f"{k} {v};" for k, v in machine().items()))
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-load32-") as tmp:
        for name in args.variants.split(","):
            rows.append(run_variant(name, Path(tmp), args))
    print(f"\n{args.children} children, {args.seconds:.0f} s at {args.rate:g} tasks/s (it.ping {args.task_s} s; "
          f"every {args.leak_every}th it.retain {args.leak_mib} MiB), soft limit {args.soft_limit_mib} MiB\n")
    print(table(["variant", "sent", "ok", "failed", "unique ids", "master CPU s/min", "recycled",
                 "recycled w/o leak", "polls/s", "errors", "unguarded"],
                [[r["variant"], r["sent"], r["succeeded"], r["failed"], r["unique_ids"],
                  fmt(r["master_cpu_s_per_min"], 2), r.get("recycled", "-"), r.get("recycled_not_leakers", "-"),
                  fmt(r["polls"] / r["run_s"], 2) if r.get("polls") and r.get("run_s") else "-",
                  r.get("errors", "-"), r.get("unguarded", "-")] for r in rows]))
    base = next((r for r in rows if r["variant"] == "plain"), None)
    guarded = next((r for r in rows if r["variant"] == "memguard"), None)
    if base and guarded:
        extra = guarded["master_cpu_s_per_min"] - base["master_cpu_s_per_min"]
        print(f"\nMemGuard's master CPU: {extra:+.2f} s per minute ({100 * extra / 60:+.2f} % of a core)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
