"""Sizes and units: the one home of ``KiB``/``MiB``, the kernel's page size and the MiB conversions.

Every module takes these from here, so an event's ``*_mib`` field, a log message
and the limit in ``MemoryLimitExceeded`` round the same way, and so the page size
is the kernel's own: 4 KiB on x86-64, but 16 KiB or 64 KiB on some arm64 servers,
where counting a minor fault as 4 KiB would undercount a child's growth 4-16x.
Imports nothing from the package (the configuration, the probes and the pure
core all use it).
"""

from __future__ import annotations

import os

__all__ = ["KiB", "MiB", "GiB", "PAGE_SIZE", "mib", "format_mib"]

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB


def _page_size() -> int:
    try:
        size = os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):  # no sysconf (Windows) or no such name
        return 4096
    return size if size > 0 else 4096


#: The kernel's page size in bytes (``sysconf(SC_PAGE_SIZE)``; 4096 where it cannot be asked).
PAGE_SIZE: int = _page_size()


def mib(size: float | None) -> float | None:
    """``size`` bytes in MiB rounded to 0.1, as events carry sizes (``None`` stays ``None``)."""
    return None if size is None else round(size / MiB, 1)


def format_number(value: float | int | None, digits: int = 1) -> str:
    """A count or measure for people: thousands separated, ``digits`` decimals for floats, ``?`` if unknown."""
    if value is None:
        return "?"
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:,.{digits}f}"


def format_mib(size: float) -> str:
    """``size`` bytes for a message: ``"3.5 MiB"`` below 10 MiB, ``"512 MiB"`` from there on."""
    return f"{size / MiB:.1f} MiB" if abs(size) < 10 * MiB else f"{size / MiB:.0f} MiB"
