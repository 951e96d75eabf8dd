"""The probe interface and the two errors probes translate OS failures into."""

from __future__ import annotations

from typing import Protocol

__all__ = ["ProcessProbe", "ProbeError", "ProcessGone"]


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
