"""Cheap upper bounds for USS/PSS, so the master rarely pays for an exact reading.

An exact USS/PSS reading (``/proc/PID/smaps_rollup``) walks the child's page
tables: about 40 ns per resident page, 3-4 ms for a child mapping 300 MiB. RSS and
the minor-fault count (``statm``, ``stat``) cost about 1.5 µs each. Between two
exact readings a child's private memory can only grow by pages it newly maps
(RSS grows) or by shared pages it copies on write (each is one minor fault), so

    bound = exact + max(0, rss - rss_then) + PAGE * (faults - faults_then)

is an upper bound, and RSS itself always is one (``PAGE``: the kernel's page size,
:data:`celery_memguard.units.PAGE_SIZE`, 16 or 64 KiB on some arm64 kernels). Conversely ``exact - max(0,
rss_then - rss)`` is a lower bound: a child known to be above a limit stays known
above it without a new exact reading while that bound is above the limit. Pages can also become private
without a fault in the child, when every other sharer drops or copies them; an
exact reading every ``refresh`` seconds bounds how long that can go unseen. That
refresh is stretched to ``cost_ratio`` times the last exact reading's cost (40,000:
a 3.4 ms reading of a 300 MiB child is refreshed every 136 s), so it averages
under 25 µs per child per second.
Pure: no I/O, no clock.
"""

from __future__ import annotations

import math

from .units import PAGE_SIZE

__all__ = ["MetricEstimate", "PAGE_SIZE"]


class MetricEstimate:
    """Tracks one child's last exact reading and bounds the metric from cheap readings."""

    __slots__ = ("refresh", "cost_ratio", "page_size", "exact", "rss_then", "faults_then", "at", "refresh_after")

    def __init__(self, *, refresh: float = 60.0, cost_ratio: float = 40_000.0, page_size: int = PAGE_SIZE) -> None:
        self.refresh = refresh
        self.page_size = page_size
        self.cost_ratio = cost_ratio
        self.refresh_after = refresh
        self.exact: int | None = None
        self.rss_then = 0
        self.faults_then = 0
        self.at = -math.inf

    def bound(self, rss: int, faults: int) -> int:
        """An upper bound for the metric given the current RSS and minor-fault count."""
        if self.exact is None:
            return rss
        grown = max(0, rss - self.rss_then) + self.page_size * max(0, faults - self.faults_then)
        return min(rss, self.exact + grown)

    def known_above(self, rss: int, threshold: int | None, now: float) -> int | None:
        """A lower bound for the metric if it proves the metric is still above ``threshold``, else None.

        Private pages only stop being private when the process frees them (RSS falls), so
        ``exact - max(0, rss_then - rss)`` is a lower bound until the next refresh is due.
        """
        if self.exact is None or threshold is None or now - self.at >= self.refresh_after:
            return None
        low = self.exact - max(0, self.rss_then - rss)
        return low if low > threshold else None

    def needs_exact(self, rss: int, bound: int, threshold: int | None, now: float) -> bool:
        """Whether the prober must take an exact reading now to compare against ``threshold``."""
        if threshold is None or rss <= threshold:
            return False
        return bound > threshold or now - self.at >= self.refresh_after

    def record_exact(self, value: int, rss: int, faults: int, now: float, cost: float = 0.0) -> None:
        """Remember an exact reading that took ``cost`` seconds; costly readings are refreshed less often."""
        self.exact, self.rss_then, self.faults_then, self.at = value, rss, faults, now
        self.refresh_after = max(self.refresh, cost * self.cost_ratio)
