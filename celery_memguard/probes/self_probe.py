"""A pool child's view of itself, read around every task (the hot path).

Before a task: reset the kernel's resident high-watermark (write ``5`` to
``/proc/self/clear_refs``) and read RSS. After it: read RSS and the watermark
(``getrusage().ru_maxrss``, which the reset lowers too). Each is one syscall on
an fd opened once: under 1 µs. Where the reset is not permitted or /proc is
missing, ``per_task_peak`` is ``None`` and RSS comes from psutil.
"""

from __future__ import annotations

import os
import resource
import sys

from ..units import PAGE_SIZE
from .base import close_fds

__all__ = ["SelfProbe"]

_KIB = 1024 if sys.platform != "darwin" else 1  # macOS reports ru_maxrss in bytes


class SelfProbe:
    __slots__ = ("_statm", "_clear_refs", "_page", "_psutil_proc", "peak_supported")

    def __init__(self, proc_root: str = "/proc") -> None:
        self._page = PAGE_SIZE
        self._psutil_proc = None
        self._clear_refs: int | None = None
        try:
            self._statm: int | None = os.open(f"{proc_root}/self/statm", os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            self._statm = None
            import psutil

            self._psutil_proc = psutil.Process()
        try:
            fd = os.open(f"{proc_root}/self/clear_refs", os.O_WRONLY | os.O_CLOEXEC)
            os.pwrite(fd, b"5", 0)
            self._clear_refs = fd
        except OSError:
            self._clear_refs = None
        self.peak_supported = self._clear_refs is not None

    def rss(self) -> int:
        if self._statm is not None:
            return int(os.pread(self._statm, 128, 0).split(None, 2)[1]) * self._page
        return int(self._psutil_proc.memory_info().rss)  # type: ignore[union-attr]

    def reset_peak(self) -> None:
        if self._clear_refs is not None:
            os.pwrite(self._clear_refs, b"5", 0)

    def peak(self) -> int | None:
        if self._clear_refs is None:
            return None
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * _KIB

    @staticmethod
    def age(proc_root: str = "/proc") -> float | None:
        """Seconds since this process was forked (from its start time in /proc), or None."""
        try:
            with open(f"{proc_root}/self/stat", "rb") as f:
                stat = f.read()
            with open(f"{proc_root}/uptime", "rb") as f:
                uptime = float(f.read().split()[0])
            ticks = int(stat[stat.rindex(b")") + 2 :].split()[19])
            return max(0.0, uptime - ticks / os.sysconf("SC_CLK_TCK"))
        except (OSError, ValueError, IndexError):
            return None

    def close(self) -> None:
        close_fds(self._statm, self._clear_refs)
        self._statm = self._clear_refs = None
