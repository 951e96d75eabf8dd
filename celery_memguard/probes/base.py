"""The probe interface, the two errors probes translate OS failures into, and closing the fds they keep."""

from __future__ import annotations

import os
from typing import Protocol

__all__ = ["ProcessProbe", "ProbeError", "ProcessGone", "close_fds"]


def close_fds(*fds: int | None) -> None:
    """Close each fd that is set (not None, not negative); one that fails to close is let go."""
    for fd in fds:
        if fd is not None and fd >= 0:
            try:
                os.close(fd)
            except OSError:
                pass


class ProbeError(OSError):
    """The reading is not available (permission, unsupported kernel, ...)."""


class ProcessGone(ProbeError):
    """The process exited; its probe should be closed and forgotten."""


class ProcessProbe(Protocol):
    """Memory readings for one process. Sizes are bytes."""

    pid: int

    def cheap(self) -> tuple[int, int]:
        """``(rss, minor_faults)``: a few microseconds."""
        ...

    def exact(self, metric: str) -> int:
        """The process's ``"uss"``, ``"pss"`` or ``"rss"``: may cost milliseconds for USS/PSS."""
        ...

    def close(self) -> None:
        ...
