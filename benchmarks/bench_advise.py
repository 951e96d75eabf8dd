"""Advisor benchmark: does ``celery memguard advise`` on a real overload's log keep a replay inside the memory?

1. **Naive run**: a prefork worker (``--concurrency 4``) in a 1 GiB cgroup v1 memory cgroup
   runs ``--tasks`` tasks that each keep ``--keep-mib`` MiB in their child for good (a leak)
   and stay busy ``--sleep`` s. MemGuard is installed but sets no limit: it only logs
   (``memguard_sample_interval`` 0.5 s). The kernel OOM-kills children.
2. **Advise**: ``celery memguard advise --format json`` on that run's event log.
3. **Replay**: the same load with the advised ``worker_concurrency``, ``memguard_soft_limit``,
   ``memguard_hard_limit`` and ``worker_max_tasks_per_child`` (nothing else changed).

Per run: the cgroup's ``oom_kill`` counter change, tasks lost, children replaced, the
cgroup's peak usage and throughput. The worker side (app, task, cgroup, the run itself)
is :mod:`bench_pressure`'s; Redis DB 12 (``--broker``) is flushed before each run and at the end.

    .venv/bin/python benchmarks/bench_advise.py                    # ~1-2 minutes
    .venv/bin/python benchmarks/bench_advise.py --rounds 3         # repeated naive -> advise -> replay
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _common import flush_db  # noqa: E402
from bench_pressure import Outcome, Variant, log, machine, run_variant  # noqa: E402
from tests.harness import CgroupUnavailable, MemoryCgroup  # noqa: E402

#: The advised settings the replay applies (everything else stays as in the naive run).
APPLIED = ("worker_concurrency", "memguard_soft_limit", "memguard_hard_limit", "worker_max_tasks_per_child")


def advise(events: Path) -> dict[str, object]:
    """Run the real command on the log; the advised values by key (None: not enough evidence)."""
    out = subprocess.run([sys.executable, "-m", "celery_memguard", "advise", "--format", "json", str(events)],
                         capture_output=True, text=True, check=True, cwd=HERE.parent).stdout
    hosts = json.loads(out)["hosts"]
    if len(hosts) != 1:
        raise RuntimeError(f"expected one worker in {events}, found {len(hosts)}")
    return {r["key"]: r["value"] for r in hosts[0]["recommendations"]}


def one_round(args: argparse.Namespace, run_dir: Path) -> tuple[Outcome, dict[str, object], Outcome]:
    naive = Variant(f"naive (no limits, c={args.concurrency})", True, {"memguard_sample_interval": 0.5})
    before = set(run_dir.glob("*.jsonl"))
    first = run_variant(naive, args, False, run_dir)
    (events,) = set(run_dir.glob("*.jsonl")) - before
    advised = advise(events)
    log(f"  advised: {advised}")
    conf: dict[str, object] = {"memguard_sample_interval": 0.5}
    replay_args = copy.copy(args)
    for key in APPLIED:
        value = advised.get(key)
        if value is None:
            continue
        if key == "worker_concurrency":
            replay_args.concurrency = int(value)  # type: ignore[call-overload]
        else:
            conf[key] = value
    label = ", ".join(f"{k}={advised.get(k)}" for k in APPLIED)
    second = run_variant(Variant(f"replay ({label})", True, conf), replay_args, False, run_dir)
    return first, advised, second


def row(o: Outcome, concurrency: int, ideal_per_child: float) -> str:
    actions = ", ".join(f"{k} {v}" for k, v in sorted(o.memguard_actions.items())) or "-"
    return "| " + " | ".join(str(c) for c in [
        o.variant, o.oom_kills, o.worker_lost, o.lost, o.replaced, actions,
        f"{o.peak_mib:.0f}" if o.peak_mib is not None else "-", f"{o.throughput:.1f}",
        f"{100 * o.throughput / (concurrency * ideal_per_child):.0f}%"]) + " |"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--broker", default="redis://127.0.0.1:6379/12")
    parser.add_argument("--limit-mib", type=int, default=1024, help="the cgroup's memory limit")
    parser.add_argument("--concurrency", type=int, default=4, help="the naive run's concurrency")
    parser.add_argument("--tasks", type=int, default=200)
    parser.add_argument("--keep-mib", type=int, default=20, help="MiB each task keeps in its child")
    parser.add_argument("--sleep", type=float, default=0.01, help="seconds each task stays busy")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--timeout", type=float, default=120.0)
    args = parser.parse_args()
    try:  # each run gets a fresh memory cgroup (bench_pressure.run_variant): check one can be made
        MemoryCgroup.create(64 * 2**20, prefix="mg-bench").remove()
    except CgroupUnavailable as exc:
        log(f"needs a cgroup v1 memory controller and root: {exc}")
        return 2
    run_dir = Path(f"/tmp/bench-advise-{os.getpid()}")
    run_dir.mkdir(parents=True, exist_ok=True)
    started = datetime.now(timezone.utc)
    rows: list[str] = []
    try:
        for round_ in range(args.rounds):
            log(f"round {round_ + 1}/{args.rounds} ...")
            naive, advised, replay = one_round(args, run_dir)
            log(f"  naive: {naive}\n  replay: {replay}")
            rows.append(row(naive, args.concurrency, 1 / args.sleep))
            rows.append(row(replay, int(advised.get("worker_concurrency") or args.concurrency), 1 / args.sleep))
    finally:
        flush_db(args.broker)
    print(f"# Advisor benchmark, {started:%Y-%m-%d %H:%M} UTC\n")
    print(f"machine: {machine()}")
    print(f"scenario: a {args.limit_mib} MiB cgroup v1 memory cgroup; {args.tasks} tasks, each keeping "
          f"{args.keep_mib} MiB in its child for good and busy {args.sleep} s; naive concurrency "
          f"{args.concurrency}; {args.rounds} round(s) of naive -> advise -> replay\n")
    head = ["run", "kernel OOM kills", "WorkerLostError", "tasks lost", "children replaced", "memguard actions",
            "cgroup peak MiB", "tasks/s", "% of ideal"]
    print("| " + " | ".join(head) + " |")
    print("|" + "|".join("---" for _ in head) + "|")
    print("\n".join(rows))
    print(f"\nworker logs and memguard events: {run_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
