"""Idle cost of the worker's main process with MemGuard (issue 13.9), and the hard-limit reaction after it.

For each pool size (default 2, 32, 64 children) the variants run one after another on the same machine,
in one paired run:

* ``plain``: no MemGuard;
* ``before``: MemGuard as of ``--before COMMIT`` (exported with ``git archive``, put first on PYTHONPATH);
* ``after``: MemGuard from the working tree.

MemGuard variants use ``memguard_hard_limit=500MiB`` and ``memguard_soft_limit=300MiB`` (defaults
otherwise: metric USS, poll interval 1 s). Each worker starts, is left idle for ``--settle`` seconds,
then the master's CPU time (user + system, from ``/proc``) is measured over ``--seconds`` seconds of
idleness. Then (MemGuard variants) ``--grow-runs`` tasks grow at 400 MiB/s on the otherwise idle pool,
each sent at a random moment of the poll schedule, and their peak USS (the task's own estimate: USS
at start + RSS growth) is reported as a ratio to the 500 MiB hard limit (goal <= 1.10): idle
children polled less often must not make the reaction to a child that starts growing slower.

Usage::

    .venv/bin/python benchmarks/bench_idle.py --before <commit>            # the docs/benchmarks.md table
    .venv/bin/python benchmarks/bench_idle.py --before <commit> --sizes 2 --seconds 5 --grow-runs 1  # smoke
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

from _common import MiB, Worker, export_commit, flush_db, fmt, machine, redis_up, table

from bench_foundation import _driver_app, _read_record, _wait_gone, _wait_pool

HARD_MIB = 500
CONF = {"memguard_hard_limit": f"{HARD_MIB}MiB", "memguard_soft_limit": "300MiB"}
GROW_RATE = 400


def _master_cpu(worker: Worker, seconds: float) -> float:
    """Percent of one core the worker's main process used over ``seconds`` of idleness."""
    first, _ = worker.cpu_seconds()
    started = time.monotonic()
    time.sleep(seconds)
    second, _ = worker.cpu_seconds()
    return 100.0 * (second - first) / (time.monotonic() - started)


def _grow(worker: Worker, run_dir: Path, broker: str, runs: int) -> list[float]:
    """Peak / hard limit of ``runs`` tasks growing at GROW_RATE MiB/s on an idle pool."""
    app = _driver_app(broker)
    ratios = []
    for n in range(runs):
        _wait_pool(worker, timeout=60)
        time.sleep(random.uniform(0.0, 1.0))  # any moment of the poll schedule
        record = run_dir / f"grow-{n}.bin"
        res = app.send_task("bench.grow", args=(GROW_RATE, 4, 3 * HARD_MIB, HARD_MIB * MiB, str(record)),
                            queue="bench")
        try:
            res.get(timeout=60, propagate=False)
        except Exception as exc:
            print(f"  grow run {n}: {exc!r}", file=sys.stderr)
        rec = _read_record(record) or {}
        ratios.append(rec.get("peak", 0) / (HARD_MIB * MiB))
        _wait_gone(worker, int(rec.get("pid", 0)), 10.0)
        res.forget()
    return ratios


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", required=True, help="commit of the 'before' variant")
    parser.add_argument("--sizes", default="2,32,64", help="pool sizes (comma-separated)")
    parser.add_argument("--seconds", type=float, default=20.0, help="idle seconds measured per worker")
    parser.add_argument("--settle", type=float, default=8.0, help="idle seconds before measuring")
    parser.add_argument("--grow-runs", type=int, default=3, help="400 MiB/s growers per MemGuard worker")
    parser.add_argument("--broker", default="redis://127.0.0.1:6379/12", help="Redis URL with a dedicated DB")
    args = parser.parse_args(argv)
    if not redis_up(args.broker):
        print(f"Redis not reachable at {args.broker} (bash scripts/services.sh)", file=sys.stderr)
        return 2
    sizes = [int(s) for s in args.sizes.split(",")]
    base = Path(tempfile.mkdtemp(prefix="memguard-idle-"))
    snapshot = base / "before"
    sha = export_commit(args.before, snapshot)
    info = machine()
    print(f"# Idle master CPU ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})\n")
    print(f"before = {sha[:10]}, after = working tree; {info}; load average at start "
          f"{os.getloadavg()[0]:.1f}\n")
    rows: list[list[Any]] = []
    original_path = os.environ.get("PYTHONPATH", "")
    for size in sizes:
        for variant in ("plain", "before", "after"):
            os.environ["PYTHONPATH"] = (os.pathsep.join(p for p in (str(snapshot), original_path) if p)
                                        if variant == "before" else original_path)
            run_dir = base / f"{variant}-{size}"
            run_dir.mkdir()
            flush_db(args.broker)
            worker = Worker(tag=f"{variant}-{size}", run_dir=run_dir, broker=args.broker,
                            memguard=variant != "plain", conf=dict(CONF) if variant != "plain" else {},
                            concurrency=size)
            print(f"  {variant} -c {size}: starting", file=sys.stderr)
            worker.start(timeout=180)
            try:
                _wait_pool(worker, timeout=120)
                time.sleep(args.settle)
                cpu = _master_cpu(worker, args.seconds)
                ratios = _grow(worker, run_dir, args.broker, args.grow_runs) if variant != "plain" else []
            finally:
                worker.stop()
            polls = [e.get("polls") for e in worker.memguard_events() if e.get("event") == "memguard.stopped"]
            errors = sum(1 for e in worker.memguard_events() if e.get("event") == "memguard.error")
            rows.append([size, variant, fmt(cpu, 2), fmt(max(ratios), 2) if ratios else "-",
                         ", ".join(fmt(r, 2) for r in ratios) or "-", polls[0] if polls else "-", errors])
            print(f"  {variant} -c {size}: {cpu:.2f} % of a core; peaks/limit {ratios}", file=sys.stderr)
    os.environ["PYTHONPATH"] = original_path
    print(table(["children", "variant", "master CPU % (idle)", "worst peak/limit @400 MiB/s",
                 "peaks/limit", "polls (whole run)", "memguard.error"], rows))
    print(f"\nGoal: 'after' <= 0.5 % of a core at 64 idle children; peak/limit <= 1.10. Logs: {base}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
