"""psutil fallback for platforms without /proc (macOS, BSD): slower, same interface.

USS/PSS come from ``memory_full_info()``; where psutil cannot give PSS it falls
back to USS. Minor faults are not portable, so the cheap bound is plain RSS.
"""

from __future__ import annotations

import errno

import psutil

from .base import ProbeError, ProcessGone

__all__ = ["PsutilProbe"]


class PsutilProbe:
    __slots__ = ("pid", "_proc")

    def __init__(self, pid: int) -> None:
        self.pid = pid
        try:
            self._proc = psutil.Process(pid)
        except psutil.NoSuchProcess:
            raise ProcessGone(errno.ESRCH, f"no process {pid}") from None

    def cheap(self) -> tuple[int, int]:
        try:
            return int(self._proc.memory_info().rss), 0
        except psutil.NoSuchProcess:
            raise ProcessGone(errno.ESRCH, f"process {self.pid} exited") from None
        except psutil.Error as exc:
            raise ProbeError(errno.EIO, str(exc)) from None

    def exact(self, metric: str) -> int:
        if metric == "rss":
            return self.cheap()[0]
        try:
            info = self._proc.memory_full_info()
        except psutil.NoSuchProcess:
            raise ProcessGone(errno.ESRCH, f"process {self.pid} exited") from None
        except psutil.Error as exc:
            raise ProbeError(errno.EIO, str(exc)) from None
        return int(getattr(info, metric, None) or info.uss)

    def close(self) -> None:
        pass
