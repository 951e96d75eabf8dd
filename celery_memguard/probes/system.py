"""Machine-level facts: effective memory (physical vs. cgroup v1/v2 limit), and probe choice.

``effective_memory`` is the smaller of ``MemTotal`` and the memory limit of the
cgroup this process is in (cgroup v2 ``memory.max`` up the hierarchy, or v1
``memory.limit_in_bytes``); it is what percentage sizes such as ``"20%"`` mean.
"""

from __future__ import annotations

import os
import sys

from .base import ProcessProbe
from .procfs import ProcfsProbe
from .psutil_probe import PsutilProbe

__all__ = ["effective_memory", "open_process_probe", "cgroup_limit", "physical_memory", "HAVE_PROCFS"]

HAVE_PROCFS = sys.platform.startswith("linux") and os.path.exists("/proc/self/statm")
_UNLIMITED = 1 << 60


def open_process_probe(pid: int, proc_root: str = "/proc") -> ProcessProbe:
    """A probe for ``pid``: /proc on Linux, psutil elsewhere."""
    if HAVE_PROCFS:
        return ProcfsProbe(pid, proc_root)
    return PsutilProbe(pid)


def physical_memory(proc_root: str = "/proc") -> int:
    try:
        with open(f"{proc_root}/meminfo", "rb") as f:
            for line in f:
                if line.startswith(b"MemTotal:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    import psutil

    return int(psutil.virtual_memory().total)


def _read_int(path: str) -> int | None:
    try:
        with open(path, "rb") as f:
            text = f.read().strip()
    except OSError:
        return None
    if text == b"max":
        return None
    try:
        value = int(text)
    except ValueError:
        return None
    return value if value < _UNLIMITED else None


def cgroup_limit(proc_root: str = "/proc", cgroup_root: str = "/sys/fs/cgroup") -> int | None:
    """The tightest memory limit of this process's cgroup and its ancestors, or None."""
    try:
        with open(f"{proc_root}/self/cgroup") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    limits: list[int] = []
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _hid, controllers, path = parts
        if controllers == "" and os.path.exists(f"{cgroup_root}/cgroup.controllers"):
            base, filename = cgroup_root, "memory.max"
        elif "memory" in controllers.split(","):
            base, filename = f"{cgroup_root}/memory", "memory.limit_in_bytes"
        else:
            continue
        path = path.strip("/")
        while True:
            value = _read_int(f"{base}/{path}/{filename}" if path else f"{base}/{filename}")
            if value is not None:
                limits.append(value)
            if not path:
                break
            path = path.rpartition("/")[0]
    return min(limits) if limits else None


def effective_memory(proc_root: str = "/proc", cgroup_root: str = "/sys/fs/cgroup") -> int:
    """min(physical memory, cgroup limit) in bytes."""
    physical = physical_memory(proc_root)
    limit = cgroup_limit(proc_root, cgroup_root)
    return min(physical, limit) if limit else physical
