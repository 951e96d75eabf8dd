"""Reaction time to memory pressure: from the moment available memory crosses ``memguard_min_available``
to MemGuard's action, with kernel notifications, adaptive polling and plain polling (issue 12.2).

A real ``celery worker --pool=prefork -c 2`` (the integration tests' project, started by the shared harness
``tests/harness``) runs inside a 600 MiB cgroup v1 memory cgroup with ``memguard_min_available="250MiB"``.
Each round one task (``pw.fill_below``, tests/integration/pressure_tasks.py) keeps memory in its child,
4 MiB at a time, until the cgroup's available memory, read the way MemGuard reads it, is below 250 MiB,
notes the wall-clock time of that crossing and returns (its child idle, holding ~400 MiB). MemGuard's
pressure policy then recycles that child; the reaction time is the ``memguard.child_recycled`` event's
``ts`` (milliseconds) minus the crossing. A recycle that followed a kernel notification also says how long
after it the decision came (``since_wake_ms``): the rest of the reaction is the kernel's and the
scheduler's (crossing to the notification reaching the monitor's thread). Between rounds the recycled child's memory is given 2.5 s to go.

Variants (``memguard_pressure_wake`` and ``memguard_poll_interval``):

* ``auto``, 1 s and 5 s poll: cgroup v1 usage thresholds wake the monitor (``memguard.pressure_watch``);
* ``adaptive``, 1 s poll: no kernel notification, polling speeds up while available memory falls;
* ``interval``, 1 s poll: MemGuard's behaviour before: a poll every second (the system reading cached
  for 0.5 s).

and two fill speeds: ``fast`` (no pause between 4 MiB steps: the whole fill takes ~0.1-0.3 s) and ``slow``
(``--slow-sleep`` s between steps, default 0.02 s: ~150 MiB/s, the fill takes ~2-3 s).

Needs root and a cgroup v1 memory controller (the harness's ``MemoryCgroup``); Redis on 127.0.0.1:6379
(``--broker``; queues are per worker, nothing is flushed).

    .venv/bin/python benchmarks/bench_pressure_wake.py                 # ~4 minutes
    .venv/bin/python benchmarks/bench_pressure_wake.py --rounds 10 --only auto
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(REPO))

from _common import fmt, machine, median, table  # noqa: E402
from tests.harness import CgroupUnavailable, HarnessTimeout, MemoryCgroup, launch_worker, wait_until  # noqa: E402

MiB = 1024 * 1024
LIMIT_MIB = 600
LEVEL_MIB = 250
SETTLE = 2.5
MODULE = "tests.integration.pressure_tasks"


@dataclass
class Variant:
    name: str
    wake: str
    poll: float


@dataclass
class Result:
    variant: str
    speed: str
    wake_sources: list[str] = field(default_factory=list)
    reactions_ms: list[float] = field(default_factory=list)
    after_wake_ms: list[float] = field(default_factory=list)  #: kernel notification -> decision (since_wake_ms)
    fill_ms: list[float] = field(default_factory=list)
    missed: int = 0
    errors: int = 0


VARIANTS = [
    Variant("auto, poll 1 s", "auto", 1.0),
    Variant("auto, poll 5 s", "auto", 5.0),
    Variant("adaptive, poll 1 s", "adaptive", 1.0),
    Variant("interval, poll 1 s", "interval", 1.0),
]


def _ts(event: dict[str, Any]) -> float:
    return dt.datetime.fromisoformat(str(event["ts"])).timestamp()


def run(variant: Variant, speed: str, args: argparse.Namespace, cgroup: MemoryCgroup, run_dir: Path) -> Result:
    """One worker, ``args.rounds`` crossings; the reaction to each."""
    result = Result(variant.name, speed)
    worker = launch_worker(run_dir, args.broker, tag=f"{variant.wake}-{variant.poll}-{speed}", backend=args.broker,
                           concurrency=2, wrapper=cgroup.join_command(), conf={
                               "imports": [MODULE], "memguard_min_available": f"{LEVEL_MIB}MiB",
                               "memguard_poll_interval": variant.poll, "memguard_pressure_wake": variant.wake,
                               "memguard_sample_interval": None, "memguard_leak_detection": False})
    try:
        (watch,) = worker.events("memguard.pressure_watch")
        result.wake_sources = watch["wake"] or ["none: " + str(watch["fallback"])]
        step_sleep = 0.0 if speed == "fast" else args.slow_sleep
        for _ in range(args.rounds):
            time.sleep(SETTLE)
            (outcome,) = worker.collect([worker.send("pw.fill_below", LEVEL_MIB * MiB, 4, 0.0, 2048, step_sleep)],
                                        timeout=60)
            value = outcome.value if outcome.state == "SUCCESS" else None
            if not value or not value.get("crossed"):
                result.missed += 1
                continue
            result.fill_ms.append((value["crossed"] - value["started"]) * 1000)
            try:
                recycled = wait_until(lambda: next((e for e in worker.events("memguard.child_recycled")
                                                    if e["pid"] == value["pid"]), None), 10)
            except HarnessTimeout:
                result.missed += 1
                continue
            result.reactions_ms.append((_ts(recycled) - value["crossed"]) * 1000)
            if recycled.get("since_wake_ms") is not None:
                result.after_wake_ms.append(recycled["since_wake_ms"])
        result.errors = len(worker.events("memguard.error"))
    finally:
        worker.close()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=8, help="crossings per variant and speed")
    parser.add_argument("--only", help="run only the variants whose name contains this")
    parser.add_argument("--speeds", default="fast,slow")
    parser.add_argument("--slow-sleep", type=float, default=0.02, help="seconds between 4 MiB steps (slow fill)")
    parser.add_argument("--broker", default="redis://127.0.0.1:6379/10")
    args = parser.parse_args()
    try:
        cgroup = MemoryCgroup.create(LIMIT_MIB * MiB, prefix="mg-bench", versions=(1,))
    except CgroupUnavailable as exc:
        sys.exit(f"needs a cgroup v1 memory cgroup: {exc}")
    variants = [v for v in VARIANTS if not args.only or args.only in v.name]
    results: list[Result] = []
    started = dt.datetime.now(dt.timezone.utc)
    with cgroup, tempfile.TemporaryDirectory(prefix="bench-wake-") as tmp:
        for speed in args.speeds.split(","):
            for variant in variants:
                print(f"  .. {variant.name}, {speed} fill", file=sys.stderr, flush=True)
                results.append(run(variant, speed, args, cgroup, Path(tmp)))
    info = machine()
    print(f"Run {started:%Y-%m-%d %H:%M} UTC, {args.rounds} crossings per row; cgroup v1 {LIMIT_MIB} MiB, "
          f"memguard_min_available={LEVEL_MIB}MiB, -c 2. {info['cpus']} CPUs ({info['cpu model']}), "
          f"kernel {info['kernel']}, Python {info['python']}, Celery {info['celery']}; "
          f"load {os.getloadavg()[0]:.2f}")
    rows = []
    for r in results:
        rs = sorted(r.reactions_ms)
        rows.append([r.variant, r.speed, ",".join(r.wake_sources)[:40], fmt(median(r.fill_ms), 0) if r.fill_ms else "-",
                     fmt(median(rs), 0) if rs else "-", fmt(rs[0], 0) if rs else "-",
                     fmt(rs[-1], 0) if rs else "-",
                     f"{fmt(median(r.after_wake_ms), 1)} ({len(r.after_wake_ms)})" if r.after_wake_ms else "-",
                     len(rs), r.missed, r.errors])
    print(table(["variant", "fill", "wake", "fill ms (median)", "crossing→recycle ms (median)", "min", "max",
                 "notification→decision ms (median, n)", "n", "missed", "memguard.error"], rows))


if __name__ == "__main__":
    main()
