"""Shared plumbing for the benchmarks: worker processes, Redis, statistics, tables.

Kept apart from the scenarios so that :mod:`bench_foundation` reads as the list
of measurements. A :class:`Worker` is a real ``celery -A benchapp worker
--pool=prefork`` subprocess in its own session (process group), started against
a dedicated Redis DB and stopped with SIGTERM, then SIGKILL for the whole group.
"""

from __future__ import annotations

import json
import os
import platform
import signal
import statistics
import struct
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
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


# -- Redis ------------------------------------------------------------------------


def flush_db(url: str) -> None:
    import redis

    client = redis.Redis.from_url(url)
    try:
        client.flushdb()
    finally:
        client.close()


def redis_up(url: str) -> bool:
    import redis

    client = redis.Redis.from_url(url, socket_connect_timeout=1)
    try:
        return bool(client.ping())
    except Exception:
        return False
    finally:
        client.close()


# -- workers ---------------------------------------------------------------------


@dataclass
class Worker:
    """A real ``celery worker --pool=prefork`` subprocess running :mod:`benchapp`."""

    tag: str
    run_dir: Path
    broker: str
    memguard: bool = False
    conf: dict[str, Any] = field(default_factory=dict)
    concurrency: int = 2
    proc: subprocess.Popen[bytes] | None = None

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
        cmd = [sys.executable, "-m", "celery", "-A", "benchapp", "worker", "--pool=prefork",
               "-c", str(self.concurrency), "-Q", "bench", "-l", "warning", "-n", f"bench-{self.tag}@%h",
               "--without-gossip", "--without-mingle", "--without-heartbeat"]
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(cmd, cwd=HERE, env=env, stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + timeout
        while not self.ready_file.exists():
            if self.proc.poll() is not None:
                raise RuntimeError(f"worker {self.tag} exited with {self.proc.returncode}:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"worker {self.tag} not ready after {timeout}s:\n{self.log_tail()}")
            time.sleep(0.05)
        return self

    def pids(self) -> list[int]:
        """The master's pid followed by its pool children's."""
        import psutil

        if self.proc is None:
            return []
        try:
            master = psutil.Process(self.proc.pid)
            return [master.pid] + [c.pid for c in master.children()]
        except psutil.NoSuchProcess:
            return []

    def cpu_seconds(self) -> tuple[float, float]:
        """User + system CPU seconds of (the master, its current children)."""
        import psutil

        master, children = 0.0, 0.0
        for i, pid in enumerate(self.pids()):
            try:
                t = psutil.Process(pid).cpu_times()
            except psutil.NoSuchProcess:
                continue
            if i == 0:
                master += t.user + t.system
            else:
                children += t.user + t.system
        return master, children

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM the worker's process group (warm shutdown), SIGKILL it if still there."""
        proc = self.proc
        if proc is None:
            return
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            pass
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            pass
        self.proc = None

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def memguard_events(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        try:
            text = self.events.read_text(errors="replace")
        except OSError:
            return out
        for line in text.splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                pass
        return out

    def __enter__(self) -> "Worker":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
