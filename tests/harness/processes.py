"""A ``celery worker`` subprocess in a session of its own: launch, readiness, its children, and its stop.

The worker leads its own process group (``start_new_session=True``), so a stop can reach every
process it forked, and the stop checks that none is left: a stray pool child would skew the next
test's or benchmark's memory and CPU readings. Used by :mod:`tests.harness.workers` (the test
project's workers) and by the benchmarks' own apps.
"""

from __future__ import annotations

import os
import signal
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import psutil

from .events import tail, wait_until

#: Seconds a worker gets for its warm shutdown (SIGTERM) before its process group is SIGKILLed.
STOP_TIMEOUT = 15.0
#: Seconds the processes of a SIGKILLed group get to disappear before the stop reports them.
LEFTOVER_TIMEOUT = 10.0


class WorkerExited(AssertionError):
    """The worker process exited while it was expected to run (the message has its output)."""


@dataclass
class WorkerProcess:
    """One worker subprocess leading its own process group, and the files its output goes to."""

    proc: subprocess.Popen[bytes]
    stdout_path: Path
    stderr_path: Path
    #: Every pid seen in the group (children included), so the stop can check each of them is gone.
    known_pids: set[int] = field(default_factory=set)

    @classmethod
    def launch(cls, command: Sequence[str], *, env: Mapping[str, str], cwd: Path, stdout_path: Path,
               stderr_path: Path | None = None) -> "WorkerProcess":
        """Start ``command`` in a new session; stdin is /dev/null, stderr goes to stdout's file unless given."""
        with open(stdout_path, "wb") as out:
            if stderr_path is None:
                proc = subprocess.Popen(list(command), cwd=cwd, env=dict(env), stdin=subprocess.DEVNULL, stdout=out,
                                        stderr=subprocess.STDOUT, start_new_session=True)
            else:
                with open(stderr_path, "wb") as err:
                    proc = subprocess.Popen(list(command), cwd=cwd, env=dict(env), stdin=subprocess.DEVNULL,
                                            stdout=out, stderr=err, start_new_session=True)
        return cls(proc, stdout_path, stderr_path or stdout_path)

    @property
    def pid(self) -> int:
        """The master's pid (also the process group id)."""
        return self.proc.pid

    def running(self) -> bool:
        """Whether the master has not exited."""
        return self.proc.poll() is None

    def assert_running(self, details: Callable[[], str] | None = None) -> None:
        """Raise :class:`WorkerExited` with the output (or ``details()``) if the master has exited."""
        if self.proc.poll() is not None:
            raise WorkerExited(f"worker exited with status {self.proc.returncode}\n"
                               f"{details() if details else self.output()}")

    def wait_ready(self, ready: Callable[[], Any], timeout: float, what: str = "the worker to be ready",
                   details: Callable[[], str] | None = None) -> Any:
        """Poll ``ready`` (returned once truthy) while the worker runs; fail at once if it exits."""
        def check() -> Any:
            self.assert_running(details)
            return ready()

        return wait_until(check, timeout, interval=0.05, what=what)

    def child_pids(self) -> set[int]:
        """Pids of the master's live children (no zombies)."""
        try:
            children = psutil.Process(self.proc.pid).children()
        except psutil.NoSuchProcess:
            return set()
        live = set()
        for child in children:
            try:
                if child.status() != psutil.STATUS_ZOMBIE:
                    live.add(child.pid)
            except psutil.NoSuchProcess:
                pass
        return live

    def pids(self) -> list[int]:
        """The master's pid followed by its children's (zombies included), or ``[]`` once it is gone."""
        try:
            master = psutil.Process(self.proc.pid)
            return [master.pid] + [c.pid for c in master.children()]
        except psutil.NoSuchProcess:
            return []

    def cpu_seconds(self) -> tuple[float, float]:
        """User + system CPU seconds of (the master, its current children)."""
        master, children = 0.0, 0.0
        for i, pid in enumerate(self.pids()):
            try:
                times = psutil.Process(pid).cpu_times()
            except psutil.NoSuchProcess:
                continue
            if i == 0:
                master += times.user + times.system
            else:
                children += times.user + times.system
        return master, children

    def output(self, lines: int = 40) -> str:
        """The tails of the worker's stderr and stdout (one of them if they share a file)."""
        if self.stderr_path == self.stdout_path:
            return f"--- worker output ---\n{tail(self.stdout_path, lines)}"
        return (f"--- worker stderr ---\n{tail(self.stderr_path, lines)}\n"
                f"--- worker stdout ---\n{tail(self.stdout_path, lines)}")

    def stop(self, timeout: float = STOP_TIMEOUT, *, warm: bool = True) -> None:
        """SIGTERM to the master (warm shutdown), then SIGKILL to the whole group; no process of it may remain.

        ``warm=False`` skips the warm shutdown (which takes Celery 2-3 s even with an empty pool): for a clean-up
        that asserts nothing about how the worker ends.
        """
        pgid = self.proc.pid  # start_new_session=True: the worker leads its own process group
        try:
            self.known_pids |= {p.pid for p in psutil.Process(self.proc.pid).children(recursive=True)}
        except psutil.NoSuchProcess:
            pass
        if warm and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        if self.proc.poll() is None:
            self.proc.wait(LEFTOVER_TIMEOUT)
        wait_until(lambda: not self.leftovers(), LEFTOVER_TIMEOUT,
                   what=f"the worker's processes to exit: {self.leftovers()}")

    def leftovers(self) -> list[int]:
        """Known pids still alive (not zombies) in the worker's process group."""
        pgid = self.proc.pid
        left = []
        for pid in self.known_pids | {self.proc.pid}:
            try:
                proc = psutil.Process(pid)
                if proc.status() != psutil.STATUS_ZOMBIE and os.getpgid(pid) == pgid:
                    left.append(pid)
            except (psutil.NoSuchProcess, ProcessLookupError):
                pass
        return left
