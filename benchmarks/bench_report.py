"""The report command on large logs: peak memory and time, on a realistic log and on hostile ones.

Writes event logs of ``--size`` MB (default 200) into a run directory, then runs
``python -m celery_memguard report FILE --format json`` on each in a subprocess
(output to /dev/null) and prints wall time and peak RSS (``ru_maxrss`` of that
process, from ``wait4``) as a Markdown table. With ``--commit SHA`` (repeatable)
the same files are also read by ``celery_memguard`` as of that commit (exported
with ``git archive``, first on ``PYTHONPATH``), so before/after come from one
paired run on the same files. The files:

* ``realistic``: what a busy fleet logs with ``memguard_log_format = "json"``: 4
  workers, 40 task names, recycles and kills for a handful of reasons, heavy
  tasks, leak suspects with their sites, a few error causes, master growth, lost
  children, one ``memguard.started`` per restart.
* ``unique-keys``: every line a MemGuard event with a hostname, task, cause,
  reason, signal, pool or event name never seen before, one in ten with
  kilobyte-long strings: everything the report keys a table by is new each line.
* ``malformed``: MemGuard events whose values are wrong in every way the reader
  can meet (NaN, infinities, ``"1e400"``, huge numbers, wrong types, deep
  nesting, control characters, cut lines), one kind after the other.

Usage: ``.venv/bin/python benchmarks/bench_report.py [--size MB] [--commit SHA]... [--keep]``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterator

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
MB = 1000 * 1000
TS = "2026-11-26T{h:02d}:{m:02d}:{s:02d}.{ms:03d}+00:00"


def _ts(i: int) -> str:
    s = i // 10
    return TS.format(h=(s // 3600) % 24, m=(s // 60) % 60, s=s % 60, ms=(i % 10) * 100)


def realistic(rng: random.Random) -> Iterator[str]:
    hosts = [f"celery@worker-{n}" for n in range(4)]
    tasks = [f"app.tasks.job_{n}" for n in range(40)]
    reasons = ["soft_limit", "soft_limit", "soft_limit", "max_tasks", "lifetime", "pool_limit", "pressure"]
    i = 0
    while True:
        i += 1
        host, task, ts = rng.choice(hosts), rng.choice(tasks), _ts(i)
        base = {"ts": ts, "level": "warning", "source_pid": 1000 + i % 7, "hostname": host}
        roll = rng.random()
        if roll < 0.45:
            event = {"event": "memguard.child_recycled", "pid": 2000 + i % 64, "reason": rng.choice(reasons),
                     "mem_mib": round(rng.uniform(300, 500), 1), "limit_mib": 300.0, "metric": "uss",
                     "tasks_run": rng.randint(1, 900), "lifetime_s": round(rng.uniform(1, 9000), 1),
                     "task": task, "task_id": f"{i:032x}"}
        elif roll < 0.60:
            event = {"event": "memguard.heavy_task", "task": task, "task_id": f"{i:032x}",
                     "peak_mib": round(rng.uniform(100, 900), 1), "retained_mib": round(rng.uniform(0, 50), 1),
                     "pid": 2000 + i % 64, "occurrences": rng.randint(1, 5), "typical_peak_mib": 12.5,
                     "advice": f"{task} needed 400 MiB of its own (typical task: 12.5 MiB); chunk the work."}
        elif roll < 0.72:
            event = {"event": "memguard.leak_suspected", "task": rng.choice(tasks[:5]),
                     "kib_per_call": round(rng.uniform(10, 4000), 1), "confidence": round(rng.random(), 2),
                     "calls_observed": rng.randint(30, 5000), "children": rng.randint(1, 8),
                     "projected_calls_to_soft_limit": rng.randint(10, 10000), "since_calls": 30}
        elif roll < 0.80:
            event = {"event": "memguard.leak_sites", "task": rng.choice(tasks[:5]), "task_id": f"{i:032x}",
                     "pid": 2000 + i % 64, "calls_traced": 3,
                     "sites": [{"file": f"/srv/app/tasks/mod{n}.py", "line": 10 * n + 3,
                                "size_kib": round(rng.uniform(1, 900), 1), "count": rng.randint(1, 999)}
                               for n in range(10)]}
        elif roll < 0.88:
            event = {"event": "memguard.task_killed", "task": task, "task_id": f"{i:032x}", "pid": 2000 + i % 64,
                     "mem_mib": 612.3, "limit_mib": 600.0, "metric": "uss", "reason": "hard_limit",
                     "signal": rng.choice(["MemoryLimitExceeded", "SIGKILL"])}
        elif roll < 0.93:
            event = {"event": "memguard.error", "level": "error", "where": rng.choice(["monitor.sample", "child.after"]),
                     "error": rng.choice(["OSError: [Errno 5] Input/output error", "ValueError: bad"])}
        elif roll < 0.96:
            event = {"event": "memguard.master_growth", "mem_mib": 210.0, "mib_per_hour": 12.5, "since_s": 7200.0,
                     "growth_mib": 80.0, "reserved": 12, "note": "Reserved messages account for part of it."}
        elif roll < 0.99:
            event = {"event": "memguard.child_lost", "pid": 2000 + i % 64, "signal": "SIGKILL", "exitcode": -9,
                     "task": task, "task_id": f"{i:032x}", "last_mem_mib": 800.0, "likely_oom": True,
                     "reason": "killed by SIGKILL while running; the cgroup's oom_kill counter rose"}
        else:
            event = {"event": "memguard.started", "level": "info", "pool": "prefork", "concurrency": 8,
                     "metric": "uss", "soft_limit_mib": 300.0, "hard_limit_mib": 600.0, "poll_interval": 1.0,
                     "dry_run": False}
        base.update(event)
        yield json.dumps(base)


def unique_keys(rng: random.Random) -> Iterator[str]:
    i = 0
    pad = "x" * 1500
    while True:
        i += 1
        long = pad if i % 10 == 0 else ""
        base = {"ts": _ts(i), "level": "warning", "hostname": f"celery@host-{i}{long}"}
        kind = i % 8
        if kind == 0:
            event = {"event": f"memguard.custom_{i}{long}"}
        elif kind == 1:
            event = {"event": "memguard.error", "where": f"where.{i}{long}", "error": f"E{i}: {long}"}
        elif kind == 2:
            event = {"event": "memguard.heavy_task", "task": f"t.{i}{long}", "peak_mib": 1.0, "advice": long}
        elif kind == 3:
            event = {"event": "memguard.leak_suspected", "task": f"t.{i}{long}", "kib_per_call": 1.0}
        elif kind == 4:
            event = {"event": "memguard.child_recycled", "reason": f"r.{i}{long}", "task": f"t.{i}{long}"}
        elif kind == 5:
            event = {"event": "memguard.child_lost", "signal": f"SIG{i}{long}", "task": f"t.{i}{long}"}
        elif kind == 6:
            event = {"event": "memguard.pool_unsupported", "pool": f"pool{i}{long}"}
        else:
            event = {"event": "memguard.leak_sites", "task": f"t.{i}{long}",
                     "sites": [{"file": f"f{i}.{n}{long}", "line": n, "size_kib": 1.0} for n in range(10)]}
        base.update(event)
        yield json.dumps(base)


_MALFORMED = [
    '{"event": "memguard.leak_suspected", "hostname": "h", "task": "t", "kib_per_call": 1, "calls_observed": "1e400"}',
    '{"event": "memguard.heavy_task", "hostname": "h", "task": "t", "peak_mib": 1, "occurrences": NaN}',
    '{"event": "memguard.leak_suspected", "hostname": "h", "task": "t", "kib_per_call": NaN}',
    '{"event": "memguard.leak_suspected", "hostname": "h", "task": "t", "kib_per_call": Infinity}',
    '{"event": "memguard.master_growth", "hostname": "h", "growth_mib": -Infinity, "reserved": 1e999}',
    '{"event": "memguard.child_lost", "hostname": "h", "last_mem_mib": "nan", "likely_oom": "yes"}',
    '{"event": "memguard.leak_sites", "hostname": "h", "task": "t", "sites": [{"file": "f", "line": 1e400}]}',
    '{"event": "memguard.heavy_task", "hostname": "h", "task": {"a": 1}, "peak_mib": [1]}',
    '{"event": "memguard.started", "hostname": "h", "pool": "\\u001b[31mred\\u001b[0m", "soft_limit_mib": NaN}',
    '{"event": "memguard.leak_suspected", "hostname": "h", "task": "t", "kib_per_call": 1, "children": '
    + "9" * 400 + "}",
    '{"event": "memguard.error", "hostname": "h", "where": "w", "error": "' + "[" * 2000 + '"}',
    '{"event": "memguard.leak_suspected", "task": "t", "kib_per_c',
]


def malformed(rng: random.Random) -> Iterator[str]:
    deep = "[" * 100_000
    i = 0
    while True:
        i += 1
        if i % 50 == 0:
            yield '{"event": "memguard.error", "x": ' + deep
        else:
            yield _MALFORMED[i % len(_MALFORMED)]


KINDS: dict[str, Callable[[random.Random], Iterator[str]]] = {
    "realistic": realistic,
    "unique-keys": unique_keys,
    "malformed": malformed,
}


def write_log(path: Path, kind: str, size: int) -> int:
    """Write ``size`` bytes (about) of ``kind`` lines to ``path``; returns the number of lines."""
    rng = random.Random(7)
    lines = 0
    written = 0
    with open(path, "w", encoding="utf-8") as f:
        batch: list[str] = []
        for line in KINDS[kind](rng):
            batch.append(line)
            written += len(line) + 1
            lines += 1
            if len(batch) >= 2000:
                f.write("\n".join(batch) + "\n")
                batch = []
            if written >= size:
                break
        if batch:
            f.write("\n".join(batch) + "\n")
    return lines


def export(commit: str, into: Path) -> Path:
    """``celery_memguard`` as of ``commit``, exported into ``into``; returns the directory for PYTHONPATH."""
    into.mkdir(parents=True, exist_ok=True)
    archive = subprocess.run(["git", "-C", str(REPO), "archive", commit, "celery_memguard"],
                             check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into


def run_report(path: Path, pythonpath: Path) -> tuple[float, float, int]:
    """(seconds, peak RSS MiB, exit status) of ``python -m celery_memguard report path --format json``."""
    env = dict(os.environ, PYTHONPATH=str(pythonpath))
    start = time.perf_counter()
    with open(os.devnull, "wb") as out, tempfile.TemporaryFile() as err:
        proc = subprocess.Popen([sys.executable, "-m", "celery_memguard", "report", str(path), "--format", "json"],
                                stdout=out, stderr=err, env=env, cwd=path.parent)  # not the repo: it would shadow PYTHONPATH
        _pid, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        elapsed = time.perf_counter() - start
        err.seek(0)
        tail = err.read()[-300:].decode(errors="replace").strip().splitlines()
    code = proc.returncode
    return elapsed, usage.ru_maxrss / 1024, code if code == 0 else (code, tail[-1] if tail else "")  # type: ignore[return-value]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=200, help="size of each log in MB (default 200)")
    parser.add_argument("--commit", action="append", default=[], help="also run celery_memguard as of this commit")
    parser.add_argument("--kinds", default=",".join(KINDS), help="comma-separated: " + ", ".join(KINDS))
    parser.add_argument("--keep", action="store_true", help="keep the run directory")
    args = parser.parse_args(argv)
    run_dir = Path(tempfile.mkdtemp(prefix="bench-report-"))
    try:
        versions: list[tuple[str, Path]] = [(c, export(c, run_dir / f"src-{c}")) for c in args.commit]
        versions.append(("working tree", REPO))
        rows = []
        for kind in args.kinds.split(","):
            path = run_dir / f"{kind}.log"
            lines = write_log(path, kind, args.size * MB)
            size_mb = path.stat().st_size / MB
            print(f"wrote {path} ({size_mb:.0f} MB, {lines:,} lines)", file=sys.stderr)
            for label, pythonpath in versions:
                seconds, peak, status = run_report(path, pythonpath)
                outcome = "ok" if status == 0 else f"failed: {status}"
                print(f"  {label}: {seconds:.1f} s, {peak:.1f} MiB, {outcome}", file=sys.stderr)
                rows.append((kind, f"{size_mb:.0f}", f"{lines:,}", label, f"{seconds:.1f}", f"{peak:.1f}", outcome))
            path.unlink()
        print("| log | MB | lines | celery_memguard | time (s) | peak RSS (MiB) | outcome |")
        print("|---|---:|---:|---|---:|---:|---|")
        for row in rows:
            print("| " + " | ".join(row) + " |")
    finally:
        if args.keep:
            print(f"kept {run_dir}", file=sys.stderr)
        else:
            shutil.rmtree(run_dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
