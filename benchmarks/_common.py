"""Shared plumbing for the benchmarks: the integration harness, the benchapp worker, statistics, tables.

Kept apart from the scenarios so that :mod:`bench_foundation` reads as the list
of measurements. Worker processes, event logs, Redis and cgroups come from the
integration tests' harness, :mod:`tests.harness` (importing this module puts the
repository on ``sys.path`` for it). A :class:`Worker` is a real ``celery -A benchapp
worker --pool=prefork`` subprocess in its own session (process group), started
against a dedicated Redis DB and stopped like every harness worker: SIGTERM, then
SIGKILL for the whole group, then a check that no process of it is left.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import struct
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
if str(REPO) not in sys.path:
    sys.path.append(str(REPO))  # last: an exported --commit snapshot first on PYTHONPATH keeps precedence

# flush_db, redis_up: the harness's Redis helpers, imported by the benchmarks from here.
from tests.harness import WorkerProcess, flush_db, read_events, redis_up, tail, worker_command  # noqa: E402,F401

MiB = 1024 * 1024

#: benchapp's per-child counter file: count, last completion (monotonic), warm-up mark (monotonic).
COUNTER = struct.Struct("<qdd")
#: benchapp's grow() record: pid, peak estimate, uss0, t_start, t_cross, t_last_chunk, t_stop, chunks, grown bytes.
RECORD = struct.Struct("<qqqddddqq")


# -- statistics and formatting --------------------------------------------------


def median(values: Iterable[float]) -> float:
    vals = list(values)
    return statistics.median(vals) if vals else float("nan")


def fmt(value: float | int | None, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and value != value:  # NaN
        return "-"
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:,.{digits}f}"


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A Markdown table (readable as plain text too), columns padded to equal width."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(cells[0], widths)) + " |",
             "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    for row in cells[1:]:
        lines.append("| " + " | ".join(c.rjust(w) if _numeric(c) else c.ljust(w) for c, w in zip(row, widths)) + " |")
    return "\n".join(lines)


def _numeric(text: str) -> bool:
    t = text.replace(",", "").replace(".", "").replace("%", "").replace("×", "").lstrip("-+")
    return t.isdigit()


def machine() -> dict[str, str]:
    """Facts about the machine the numbers come from."""
    mem = "?"
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    mem = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
                    break
    except OSError:
        pass
    cpu = "?"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    import celery
    import billiard

    return {
        "cpus": str(os.cpu_count()),
        "cpu model": cpu,
        "memory": mem,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "celery": celery.__version__,
        "billiard": billiard.__version__,
        "load average": " ".join(f"{x:.2f}" for x in os.getloadavg()),
    }


def export_commit(commit: str, dest: Path) -> str:
    """Extract ``celery_memguard/`` as of ``commit`` into ``dest`` (read-only git use); returns the full sha."""
    sha = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--verify", commit + "^{commit}"], check=True,
                         capture_output=True, text=True).stdout.strip()
    dest.mkdir(parents=True, exist_ok=True)
    archive = subprocess.run(["git", "-C", str(REPO), "archive", "--format=tar", sha, "celery_memguard"],
                             check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    return sha


def source_description() -> str:
    """Where ``celery_memguard`` is imported from, with the git commit and whether it differs from it."""
    import celery_memguard

    path = Path(celery_memguard.__file__).resolve().parent
    if REPO in path.parents:
        try:
            sha = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], check=True,
                                 capture_output=True, text=True).stdout.strip()
            dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--", "celery_memguard"],
                                   check=True, capture_output=True, text=True).stdout.strip()
            return f"working tree at {sha}" + (" with uncommitted changes" if dirty else "")
        except (OSError, subprocess.CalledProcessError):
            return str(path)
    return str(path)


# -- workers ---------------------------------------------------------------------


@dataclass
class Worker:
    """A real ``celery worker --pool=prefork`` subprocess running :mod:`benchapp` (a harness ``WorkerProcess``)."""

    tag: str
    run_dir: Path
    broker: str
    memguard: bool = False
    conf: dict[str, Any] = field(default_factory=dict)
    concurrency: int = 2
    process: WorkerProcess | None = None

    @property
    def proc(self) -> subprocess.Popen[bytes] | None:
        return self.process.proc if self.process is not None else None

    @property
    def log(self) -> Path:
        return self.run_dir / f"worker-{self.tag}.log"

    @property
    def events(self) -> Path:
        return self.run_dir / f"memguard-{self.tag}.jsonl"

    @property
    def ready_file(self) -> Path:
        return self.run_dir / f"ready-{self.tag}"

    def start(self, timeout: float = 60.0) -> "Worker":
        """Start the worker and wait for its ``worker_ready`` (benchapp writes :attr:`ready_file`)."""
        conf = dict(self.conf)
        if self.memguard:
            conf.setdefault("memguard_log_format", "json")
            conf.setdefault("memguard_log_file", str(self.events))
        env = dict(os.environ)
        env.update(
            BENCH_BROKER=self.broker,
            BENCH_DIR=str(self.run_dir),
            BENCH_CONF=json.dumps({"memguard": self.memguard, "conf": conf}),
            BENCH_READY=str(self.ready_file),
            # benchmarks/ for benchapp; an exported --commit snapshot (in PYTHONPATH) before the repository.
            PYTHONPATH=os.pathsep.join(p for p in [str(HERE), env.get("PYTHONPATH", ""), str(REPO)] if p),
        )
        command = worker_command(app="benchapp", concurrency=self.concurrency, hostname=f"bench-{self.tag}",
                                 args=["-Q", "bench"])
        self.process = WorkerProcess.launch(command, env=env, cwd=HERE, stdout_path=self.log)
        try:
            self.process.wait_ready(self.ready_file.exists, timeout, what=f"worker {self.tag} to be ready")
        except BaseException:
            self.stop()
            raise
        return self

    def pids(self) -> list[int]:
        """The master's pid followed by its pool children's."""
        return self.process.pids() if self.process is not None else []

    def cpu_seconds(self) -> tuple[float, float]:
        """User + system CPU seconds of (the master, its current children)."""
        return self.process.cpu_seconds() if self.process is not None else (0.0, 0.0)

    def stop(self, timeout: float = 15.0) -> None:
        """Warm shutdown (SIGTERM), then SIGKILL to the process group; checks that nothing of it is left."""
        process, self.process = self.process, None
        if process is not None:
            process.stop(timeout)

    def log_tail(self, lines: int = 30) -> str:
        return tail(self.log, lines)

    def memguard_events(self) -> list[dict[str, Any]]:
        return read_events(self.events)

    def __enter__(self) -> "Worker":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
