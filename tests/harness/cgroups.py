"""A memory cgroup of its own for a worker: created under this process's cgroup, joined, read, removed.

:meth:`MemoryCgroup.create` makes a child of this process's memory cgroup (cgroup v1's memory
controller, or a cgroup v2 unified hierarchy) with a memory limit, so a worker started inside it
sees that limit as its effective memory and the kernel OOM-kills inside it as it would in a
container. A worker joins it from its first byte through :meth:`MemoryCgroup.join_command`: a
``sh`` that writes its own pid to ``cgroup.procs`` and then ``exec``\\s the worker, so the master
and every child it forks are charged there. :meth:`MemoryCgroup.remove` waits until the last
member has left (stop the worker first) and removes the directory.

Where no such cgroup can be made (no memory controller, not root, a read-only cgroupfs, a v2
parent that holds processes itself) :class:`CgroupUnavailable` says why; tests skip with it and
benchmarks fall back. The v1 paths are what CI exercises; the v2 paths follow the kernel's
cgroup-v2 documentation (``memory.max``, ``memory.events``, ``memory.peak`` from Linux 5.19).
"""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path
from typing import Sequence

#: The files that differ between the two versions: limit, counters (file, key), peak usage.
_FILES = {
    1: {"limit": "memory.limit_in_bytes", "oom_kill": ("memory.oom_control", "oom_kill"),
        "failcnt": ("memory.failcnt", None), "peak": "memory.max_usage_in_bytes"},
    2: {"limit": "memory.max", "oom_kill": ("memory.events", "oom_kill"),
        "failcnt": ("memory.events", "max"), "peak": "memory.peak"},
}


class CgroupUnavailable(Exception):
    """No memory cgroup can be created here; the message says why."""


class MemoryCgroup:
    """A memory cgroup with a limit, a child of this process's own (see the module docstring)."""

    def __init__(self, version: int, path: Path, limit: int) -> None:
        self.version = version
        self.path = path
        self.limit = limit

    @classmethod
    def create(cls, limit: int, *, prefix: str = "mg-it", versions: Sequence[int] = (1, 2)) -> "MemoryCgroup":
        """A fresh cgroup limited to ``limit`` bytes, of one of ``versions``; :class:`CgroupUnavailable` if none."""
        from celery_memguard.probes.system import memory_cgroup_dirs  # which cgroup is ours, as MemGuard sees it

        dirs = memory_cgroup_dirs()
        if not dirs:
            raise CgroupUnavailable("no memory cgroup found for this process (/proc/self/cgroup)")
        version, parent = dirs[0]
        if version not in versions:
            raise CgroupUnavailable(f"cgroup v{'/v'.join(map(str, versions))} wanted; {parent} is cgroup v{version}")
        if version == 2:
            _enable_memory_controller(Path(parent))
        path = Path(parent) / f"{prefix}-{uuid.uuid4().hex[:10]}"
        try:
            path.mkdir()
        except OSError as exc:
            raise CgroupUnavailable(f"cannot create a memory cgroup under {parent}: {exc}") from exc
        cgroup = cls(version, path, limit)
        try:
            limit_file = path / _FILES[version]["limit"]
            limit_file.write_text(str(limit))
            if int(limit_file.read_text()) != limit:
                raise CgroupUnavailable(f"{path} did not take a limit of {limit} bytes")
        except (OSError, ValueError, CgroupUnavailable) as exc:
            cgroup.remove()
            if isinstance(exc, CgroupUnavailable):
                raise
            raise CgroupUnavailable(f"cannot limit the memory of {path}: {exc}") from exc
        return cgroup

    def join_command(self) -> list[str]:
        """A command prefix that moves itself into this cgroup and then ``exec``\\s the rest of the command line."""
        return ["/bin/sh", "-c", 'echo $$ > "$0" && exec "$@"', str(self.path / "cgroup.procs")]

    def move(self, pid: int) -> None:
        """Move the process ``pid`` (not its existing children) into this cgroup."""
        (self.path / "cgroup.procs").write_text(str(pid))

    def members(self) -> set[int]:
        """Pids of the processes in this cgroup."""
        return {int(p) for p in (self.path / "cgroup.procs").read_text().split()}

    def oom_kills(self) -> int:
        """The kernel's count of OOM kills in this cgroup (v1 needs Linux 4.13+)."""
        return self._counter("oom_kill")

    def failcnt(self) -> int:
        """How often usage hit the limit (v1 ``memory.failcnt``, v2 ``max`` in ``memory.events``)."""
        return self._counter("failcnt")

    def peak(self) -> int:
        """The highest usage so far, in bytes (v2 needs Linux 5.19+ for ``memory.peak``)."""
        return int((self.path / _FILES[self.version]["peak"]).read_text())

    def _counter(self, what: str) -> int:
        filename, key = _FILES[self.version][what]
        text = (self.path / filename).read_text()
        if key is None:
            return int(text)
        for line in text.splitlines():
            name, _, value = line.partition(" ")
            if name == key:
                return int(value)
        raise OSError(f"no {key} in {self.path / filename}")

    def remove(self, timeout: float = 20.0) -> None:
        """Remove the cgroup once its processes are gone (retrying ``rmdir`` for up to ``timeout`` seconds)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.path.rmdir()
                return
            except FileNotFoundError:
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def __enter__(self) -> "MemoryCgroup":
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()


def _enable_memory_controller(parent: Path) -> None:
    """Make sure children of the v2 cgroup ``parent`` get the memory controller (its ``cgroup.subtree_control``)."""
    control = parent / "cgroup.subtree_control"
    try:
        if "memory" in control.read_text().split():
            return
        with open(control, "w") as f:
            f.write("+memory")
    except OSError as exc:
        # EBUSY: the parent holds processes itself (cgroup v2's no-internal-process rule); EACCES/EROFS: no right.
        raise CgroupUnavailable(f"cannot enable the memory controller below {parent}: {os.strerror(exc.errno or 0)}"
                                ) from exc
