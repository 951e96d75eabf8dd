"""Machine-level facts: effective memory (physical vs. cgroup v1/v2 limit), and probe choice.

``effective_memory`` is the smaller of ``MemTotal`` and the memory limit of the
cgroup this process is in (cgroup v2 ``memory.max`` up the hierarchy, or v1
``memory.limit_in_bytes``); it is what percentage sizes such as ``"20%"`` mean.
"""

from __future__ import annotations

import os
import sys

from typing import TYPE_CHECKING

from .base import ProcessProbe

if TYPE_CHECKING:
    from ..samples import SystemSample
from .procfs import ProcfsProbe
from .psutil_probe import PsutilProbe

__all__ = [
    "effective_memory",
    "open_process_probe",
    "cgroup_limit",
    "memory_cgroup_dirs",
    "oom_kill_count",
    "read_system",
    "physical_memory",
    "HAVE_PROCFS",
    "cgroup_memory_limit",
]

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


def cgroup_memory_limit(version: int, directory: str, total: int) -> int | None:
    """The memory limit of one cgroup ``directory``; None for none, or for one not below ``total`` (the host's
    ``MemTotal``): such a cgroup can never run short before the host does, the host's memory is what counts."""
    limit = _read_int(f"{directory}/{'memory.max' if version == 2 else 'memory.limit_in_bytes'}")
    return limit if limit is not None and limit < total else None


def memory_cgroup_dirs(proc_root: str = "/proc", cgroup_root: str = "/sys/fs/cgroup") -> list[tuple[int, str]]:
    """(version, directory) of this process's memory cgroup and its ancestors, innermost first."""
    try:
        with open(f"{proc_root}/self/cgroup") as f:
            lines = f.read().splitlines()
    except OSError:
        return []
    dirs: list[tuple[int, str]] = []
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _hid, controllers, path = parts
        if controllers == "" and os.path.exists(f"{cgroup_root}/cgroup.controllers"):
            version, base = 2, cgroup_root
        elif "memory" in controllers.split(","):
            version, base = 1, f"{cgroup_root}/memory"
        else:
            continue
        path = path.strip("/")
        while True:
            directory = f"{base}/{path}" if path else base
            if os.path.isdir(directory):
                dirs.append((version, directory))
            if not path:
                break
            path = path.rpartition("/")[0]
    return dirs


def cgroup_limit(proc_root: str = "/proc", cgroup_root: str = "/sys/fs/cgroup") -> int | None:
    """The tightest memory limit of this process's cgroup and its ancestors, or None."""
    limits: list[int] = []
    for version, directory in memory_cgroup_dirs(proc_root, cgroup_root):
        value = _read_int(f"{directory}/{'memory.max' if version == 2 else 'memory.limit_in_bytes'}")
        if value is not None:
            limits.append(value)
    return min(limits) if limits else None


def _read_counter(path: str, name: str) -> int | None:
    try:
        with open(path, "rb") as f:
            for line in f:
                parts = line.split()
                if len(parts) == 2 and parts[0] == name.encode():
                    return int(parts[1])
    except (OSError, ValueError):
        return None
    return None


def oom_kill_count(proc_root: str = "/proc", cgroup_root: str = "/sys/fs/cgroup") -> int | None:
    """OOM kills so far in this process's memory cgroup (v2 memory.events, v1 memory.oom_control),
    else machine-wide (/proc/vmstat), else None."""
    for version, directory in memory_cgroup_dirs(proc_root, cgroup_root):
        name = "memory.events" if version == 2 else "memory.oom_control"
        value = _read_counter(f"{directory}/{name}", "oom_kill")
        if value is not None:
            return value
    return _read_counter(f"{proc_root}/vmstat", "oom_kill")


def effective_memory(proc_root: str = "/proc", cgroup_root: str = "/sys/fs/cgroup") -> int:
    """min(physical memory, cgroup limit) in bytes."""
    physical = physical_memory(proc_root)
    limit = cgroup_limit(proc_root, cgroup_root)
    return min(physical, limit) if limit else physical


def _meminfo(proc_root: str) -> dict[str, int]:
    out: dict[str, int] = {}
    try:
        with open(f"{proc_root}/meminfo", "rb") as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 2:
                    out[parts[0].rstrip(b":").decode()] = int(parts[1]) * 1024
    except (OSError, ValueError):
        pass
    return out


def _psi_some_avg10(path: str) -> float | None:
    try:
        with open(path, "rb") as f:
            for line in f:
                if line.startswith(b"some "):
                    for field in line.split()[1:]:
                        if field.startswith(b"avg10="):
                            return float(field[6:])
    except (OSError, ValueError):
        return None
    return None


def read_system(at: float, proc_root: str = "/proc", cgroup_root: str = "/sys/fs/cgroup") -> "SystemSample":
    """Memory of the worker's cgroup (v2 or v1) and of the host, whichever is tighter, plus PSI.

    ``available`` is the smaller of the host's ``MemAvailable`` and the innermost limited cgroup's
    ``limit - working set``, the working set being usage minus inactive page cache, which the
    kernel reclaims first (v2 ``memory.current - inactive_file``, v1 ``usage_in_bytes -
    total_inactive_file``).
    """
    from ..samples import SystemSample

    info = _meminfo(proc_root)
    total = info.get("MemTotal") or physical_memory(proc_root)
    available = info.get("MemAvailable", total)
    used = total - available
    psi: float | None = None
    for version, directory in memory_cgroup_dirs(proc_root, cgroup_root):
        if version == 2:
            limit = cgroup_memory_limit(2, directory, total)
            current = _read_int(f"{directory}/memory.current")
            if current is not None:  # the working set, as kubelet counts it: minus reclaimable page cache
                inactive = _read_counter(f"{directory}/memory.stat", "inactive_file") or 0
                current = max(0, current - inactive)
            if psi is None:
                psi = _psi_some_avg10(f"{directory}/memory.pressure")
        else:
            limit = cgroup_memory_limit(1, directory, total)
            current = _read_int(f"{directory}/memory.usage_in_bytes")
            if current is not None:
                inactive = _read_counter(f"{directory}/memory.stat", "total_inactive_file") or 0
                current = max(0, current - inactive)
        if limit is not None and current is not None:
            if limit - current < available:
                available, total, used = max(0, limit - current), limit, current
            break
    if psi is None:
        psi = _psi_some_avg10(f"{proc_root}/pressure/memory")
    return SystemSample(available=available, total=total, used=used, psi_some_avg10=psi,
                        oom_kill_count=oom_kill_count(proc_root, cgroup_root), at=at)
