"""Pressure benchmark: children growing together toward an effective-memory limit, memguard vs Celery's own limit.

Several prefork children run tasks that each keep ``--keep-mib`` MiB for good (a leak, or
a cache that is never trimmed), so the children grow together. The worker runs inside a
1 GiB memory cgroup (cgroup v1, or v2 with ``memory.peak``; a fresh one per variant, created
under this process's own by the integration harness, ``tests/harness/cgroups.py``, and removed
after): the kernel OOM-kills a process when the cgroup reaches its limit, as it would in a container.
Each variant gets the same queue of tasks:

* Celery with no limit;
* Celery's ``worker_max_memory_per_child`` at the "fair share" (1 GiB / concurrency) and at
  a conservative value (a per-child limit cannot see the other children, so it has to
  assume they all peak at once);
* memguard's ``memguard_min_available="25%"`` (system pressure, read from the cgroup), alone and
  with ``memguard_pause_below="35%"`` (task intake paused under pressure, see docs/policies.md);
* memguard's ``memguard_pool_limit="75%"`` (the children's total), at the default 1 s poll
  and at a 0.25 s poll.

Per variant: the cgroup's ``oom_kill`` counter change, tasks lost (``WorkerLostError`` or
never finished), tasks run more than once (each execution counts itself in Redis), children replaced, the cgroup's peak usage, and throughput (successful
tasks per second, and as a share of the ideal ``concurrency / task duration``).

Where no memory cgroup can be created (no memory controller, not root) ``--simulate`` is
implied: the workers run unconfined, memguard's pool limit is given in MiB (768), the
pressure variant is left out (host memory is not the limit), and instead of kernel OOM kills
the driver samples the worker's total PSS every 0.1 s and counts the samples above 1 GiB.

This file is also the Celery app the workers run (``celery -A bench_pressure worker`` from
``benchmarks/``), configured through ``BP_*`` environment variables; the driver runs only
under ``__main__``. Broker and results: Redis DB 11 (flushed before each variant and at the
end; give ``--broker`` another DB if 11 is in use).

    .venv/bin/python benchmarks/bench_pressure.py            # ~2 minutes
    .venv/bin/python benchmarks/bench_pressure.py --rounds 3 # interleaved repetitions
    # the fast overload of issue 12 (20 MiB kept per task, ~10 ms tasks), with and without pausing:
    .venv/bin/python benchmarks/bench_pressure.py --tasks 200 --keep-mib 20 --sleep 0.01 \
        --only "no limit" --only min_available
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from celery import Celery

from _common import HERE, REPO, MiB, flush_db, read_events, machine as machine_facts
from tests.harness import CgroupUnavailable, MemoryCgroup, WorkerProcess, worker_command

PAGE = 4096

# -- the worker side: app and task ------------------------------------------------------------------

BROKER = os.environ.get("BP_BROKER", "redis://127.0.0.1:6379/11")
app = Celery("bench_pressure", broker=BROKER, backend=BROKER)
app.conf.update(
    task_default_queue=os.environ.get("BP_QUEUE", "bench_pressure"),
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
    worker_redirect_stdouts=False,
    worker_send_task_events=False,
    worker_enable_remote_control=False,
    result_expires=600,
)
app.conf.update(json.loads(os.environ.get("BP_CONF") or "{}"))
if os.environ.get("BP_MEMGUARD") == "1":
    from celery_memguard import MemGuard

    app.steps["worker"].add(MemGuard)

#: What each pool child keeps across tasks.
KEPT: list[bytearray] = []


_RUNS: Any = None


def _record_run(task_id: str | None) -> None:
    """Count this execution of ``task_id`` in Redis (the driver finds tasks run twice, or never)."""
    global _RUNS
    if task_id is None:
        return
    if _RUNS is None:
        import redis

        _RUNS = redis.Redis.from_url(BROKER)
    _RUNS.incr(f"bp-runs:{task_id}")


@app.task(name="bp.retain", bind=True)
def retain(self: Any, mib: int, sleep: float) -> int:
    """Keep ``mib`` MiB (every page touched) in this child for good, stay busy ``sleep`` s; return the pid."""
    _record_run(self.request.id)
    buf = bytearray(mib * MiB)
    buf[::PAGE] = b"\x01" * len(range(0, len(buf), PAGE))
    KEPT.append(buf)
    time.sleep(sleep)
    return os.getpid()


# -- the driver -------------------------------------------------------------------------------------


@dataclass
class Variant:
    """One configuration of the worker."""

    name: str
    memguard: bool
    conf: dict[str, Any]


@dataclass
class Outcome:
    """What one run of one variant did."""

    variant: str
    sent: int
    succeeded: int = 0
    worker_lost: int = 0
    unfinished: int = 0
    other_failures: int = 0
    duplicates: int = 0
    never_run: int = 0
    oom_kills: int | None = None
    over_budget_samples: int | None = None
    replaced: int = 0
    peak_mib: float | None = None
    seconds: float = 0.0
    memguard_actions: dict[str, int] = field(default_factory=dict)
    master_alive: bool = True

    @property
    def lost(self) -> int:
        return self.sent - self.succeeded

    @property
    def throughput(self) -> float:
        return self.succeeded / self.seconds if self.seconds > 0 else 0.0


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def total_pss(pid: int) -> int:
    """PSS of the worker master and its children (what they cost the machine together)."""
    import psutil

    total = 0
    try:
        procs = [psutil.Process(pid)] + psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return 0
    for proc in procs:
        try:
            total += proc.memory_full_info().pss
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return total


def run_variant(variant: Variant, args: argparse.Namespace, simulate: bool, run_dir: Path) -> Outcome:
    """Start the worker (in a fresh memory cgroup unless simulating), queue the tasks, wait, stop it; measure."""
    flush_db(args.broker)
    queue = f"bp-{uuid.uuid4().hex[:8]}"
    events = run_dir / f"{variant.name.replace(' ', '_')}-{queue}.jsonl"
    conf = dict(variant.conf)
    if variant.memguard:
        conf.update(memguard_log_format="json", memguard_log_file=str(events))
    env = dict(os.environ, BP_BROKER=args.broker, BP_QUEUE=queue, BP_CONF=json.dumps(conf),
               BP_MEMGUARD="1" if variant.memguard else "0",
               PYTHONPATH=os.pathsep.join(p for p in [str(HERE), str(REPO), os.environ.get("PYTHONPATH", "")] if p))
    command = worker_command(app="bench_pressure", concurrency=args.concurrency, hostname=queue, loglevel="error")
    cgroup = None if simulate else MemoryCgroup.create(args.limit_mib * MiB, prefix="mg-bench")
    client = Celery("bench_pressure_client", broker=args.broker, backend=args.broker)
    client.conf.update(task_default_queue=queue, result_expires=600)
    outcome = Outcome(variant.name, args.tasks)
    try:
        oom_before = cgroup.oom_kills() if cgroup is not None else 0
        worker = WorkerProcess.launch([*(cgroup.join_command() if cgroup else ()), *command], env=env, cwd=HERE,
                                      stdout_path=run_dir / f"worker-{queue}.log")
        try:
            client.send_task("bp.retain", args=(0, 0.0)).get(timeout=60)  # up (its import and fork are not timed)
            _drive(worker, client, args, outcome, simulate)
            if cgroup is not None:
                outcome.oom_kills = cgroup.oom_kills() - oom_before
                outcome.peak_mib = cgroup.peak() / MiB
        finally:
            worker.stop()
    finally:
        client.close()
        if cgroup is not None:
            cgroup.remove()
    if variant.memguard:
        outcome.memguard_actions = _actions(read_events(events))
    return outcome


def _drive(worker: WorkerProcess, client: Celery, args: argparse.Namespace, outcome: Outcome, simulate: bool) -> None:
    """Queue the tasks and follow them to the end (or the timeout); fills ``outcome``."""
    first_children = worker.child_pids()
    results = [client.send_task("bp.retain", args=(args.keep_mib, args.sleep)) for _ in range(args.tasks)]
    start = time.monotonic()
    pending = dict(enumerate(results))
    pids: set[int] = set(first_children)
    last_done = start
    over = 0
    peak_pss = 0
    while pending and time.monotonic() - start < args.timeout:
        if simulate:
            pss = total_pss(worker.pid)
            peak_pss = max(peak_pss, pss)
            over += pss > args.limit_mib * MiB
        for i, result in list(pending.items()):
            if result.ready():
                del pending[i]
                last_done = time.monotonic()
                if result.successful():
                    outcome.succeeded += 1
                    pids.add(int(result.result))
                elif "WorkerLostError" in repr(result.result):
                    outcome.worker_lost += 1
                else:
                    outcome.other_failures += 1
        if not worker.running():
            break
        time.sleep(0.1)
    outcome.unfinished = len(pending)
    outcome.duplicates, outcome.never_run = _runs(args.broker, [r.id for r in results])
    outcome.seconds = last_done - start
    outcome.replaced = max(0, len(pids) - args.concurrency)
    outcome.master_alive = worker.running()
    if simulate:
        outcome.over_budget_samples = over
        outcome.peak_mib = peak_pss / MiB


def _runs(broker: str, task_ids: list[str]) -> tuple[int, int]:
    """(executions beyond the first, tasks never executed), as the tasks counted themselves in Redis."""
    import redis

    client = redis.Redis.from_url(broker)
    try:
        counts = [int(c or 0) for c in client.mget([f"bp-runs:{t}" for t in task_ids])]
    finally:
        client.close()
    return sum(max(0, c - 1) for c in counts), sum(1 for c in counts if c == 0)


def _actions(events: list[dict[str, Any]]) -> dict[str, int]:
    """memguard's recycles, kills and lost children, counted by kind and reason."""
    actions: dict[str, int] = {}
    for event in events:
        name = event.get("event", "")
        if name in ("memguard.child_recycled", "memguard.task_killed"):
            key = f"{name.split('.')[1]}:{event.get('reason')}"
        elif name == "memguard.paused":
            key = "paused"
        elif name == "memguard.child_lost":
            key = f"child_lost(likely_oom={event.get('likely_oom')})"
        else:
            continue
        actions[key] = actions.get(key, 0) + 1
    return actions


def variants(args: argparse.Namespace, simulate: bool) -> list[Variant]:
    """The configurations compared."""
    fair_kib = args.limit_mib * 1024 // args.concurrency
    careful_kib = int(fair_kib * 0.6)
    out = [
        Variant("celery, no limit", False, {}),
        Variant(f"celery max_memory_per_child={fair_kib // 1024} MiB (limit/{args.concurrency})", False,
                {"worker_max_memory_per_child": fair_kib}),
        Variant(f"celery max_memory_per_child={careful_kib // 1024} MiB", False,
                {"worker_max_memory_per_child": careful_kib}),
    ]
    if not simulate:
        out.append(Variant('memguard min_available="25%"', True, {"memguard_min_available": "25%"}))
        out.append(Variant('memguard min_available="25%", pause_below="35%"', True,
                           {"memguard_min_available": "25%", "memguard_pause_below": "35%"}))
    pool = f"{int(args.limit_mib * 0.75)}MiB" if simulate else "75%"
    out.append(Variant(f'memguard pool_limit="{pool}"', True, {"memguard_pool_limit": pool}))
    out.append(Variant(f'memguard pool_limit="{pool}", poll 0.25 s', True,
                       {"memguard_pool_limit": pool, "memguard_poll_interval": 0.25}))
    return out


def machine() -> str:
    m = machine_facts()
    return (f"{m['cpus']} CPUs ({m['cpu model']}), {m['memory']}, Linux {m['kernel']}, Python {m['python']}, "
            f"Celery {m['celery']}, billiard {m['billiard']}; load average at start {m['load average']}")


def table(rows: list[Outcome], args: argparse.Namespace, simulate: bool) -> str:
    ideal = args.concurrency / args.sleep
    kills = "samples > 1 GiB (simulated)" if simulate else "kernel OOM kills"
    head = ["variant", kills, "WorkerLostError", "tasks lost", "run twice", "children replaced", "memguard actions",
            "peak MiB", "tasks/s", "% of ideal", "master alive"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for o in rows:
        actions = ", ".join(f"{k} {v}" for k, v in sorted(o.memguard_actions.items())) or "-"
        lost = f"{o.lost}" + (f" ({o.unfinished} unfinished)" if o.unfinished else "")
        kill = o.over_budget_samples if simulate else o.oom_kills
        lines.append("| " + " | ".join(str(c) for c in [
            o.variant, kill, o.worker_lost, lost, o.duplicates, o.replaced, actions,
            f"{o.peak_mib:.0f}" if o.peak_mib is not None else "-", f"{o.throughput:.1f}",
            f"{100 * o.throughput / ideal:.0f}%", "yes" if o.master_alive else "NO"]) + " |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--broker", default="redis://127.0.0.1:6379/11")
    parser.add_argument("--limit-mib", type=int, default=1024, help="the cgroup's memory limit (effective memory)")
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--tasks", type=int, default=240, help="tasks per variant")
    parser.add_argument("--keep-mib", type=int, default=8, help="MiB each task keeps in its child")
    parser.add_argument("--sleep", type=float, default=0.25, help="seconds each task stays busy")
    parser.add_argument("--rounds", type=int, default=1, help="repetitions, interleaved by variant")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for one variant's tasks")
    parser.add_argument("--simulate", action="store_true", help="no cgroup: count samples above the limit")
    parser.add_argument("--only", action="append", default=[], help="run only variants whose name contains this")
    parser.add_argument("--conf", default="{}", help="JSON merged into every memguard variant's settings")
    parser.add_argument("--celery-conf", default="{}",
                        help='JSON merged into every variant\'s settings (e.g. {"task_acks_late": true})')
    args = parser.parse_args()

    simulate = args.simulate
    if not simulate:
        try:
            MemoryCgroup.create(args.limit_mib * MiB, prefix="mg-bench").remove()  # one per variant later
        except CgroupUnavailable as exc:
            log(f"cannot create a memory cgroup ({exc}); simulating with a pool limit instead")
            simulate = True
    run_dir = Path(f"/tmp/bench-pressure-{os.getpid()}")
    run_dir.mkdir(parents=True, exist_ok=True)
    started = datetime.now(timezone.utc)
    rows: list[Outcome] = []
    try:
        for round_ in range(args.rounds):
            for variant in variants(args, simulate):
                if args.only and not any(o in variant.name for o in args.only):
                    continue
                variant.conf.update(json.loads(args.celery_conf))
                if variant.memguard:
                    variant.conf.update(json.loads(args.conf))
                log(f"round {round_ + 1}/{args.rounds}: {variant.name} ...")
                outcome = run_variant(variant, args, simulate, run_dir)
                log(f"  {outcome}")
                rows.append(outcome)
    finally:
        flush_db(args.broker)
    total = args.tasks * args.keep_mib
    print(f"# Pressure benchmark, {started:%Y-%m-%d %H:%M} UTC\n")
    print(f"machine: {machine()}")
    where = (f"a {args.limit_mib} MiB memory cgroup" if not simulate
             else f"no cgroup (simulated {args.limit_mib} MiB budget)")
    print(f"scenario: {args.concurrency} children in {where}; {args.tasks} tasks per variant, each keeping "
          f"{args.keep_mib} MiB for good and busy {args.sleep} s ({total} MiB kept in all if no child were replaced; "
          f"ideal {args.concurrency / args.sleep:.0f} tasks/s); {args.rounds} round(s); "
          f"settings for every variant: {args.celery_conf}\n")
    print(table(rows, args, simulate))
    print(f"\nworker logs and memguard events: {run_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
