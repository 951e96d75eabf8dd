"""When to look at the system's memory again. Pure: readings and settings in, numbers out.

Two ways to see memory pressure early, both planned here and carried out elsewhere:

* **Kernel notifications** (:mod:`celery_memguard.probes.pressure_events` arms them): cgroup v1 usage
  thresholds wake the monitor as the cgroup's usage crosses a byte count, PSI triggers as tasks stall
  on memory. :class:`PressurePlan` says which byte counts: for every level of *available* memory a
  policy acts at (``memguard_min_available``, ``memguard_critical_available``, ``memguard_pause_below``),
  the usage at which available
  memory reaches it, at 150 %, 100 %, 50 % and 25 % of the level (a ladder: cgroup usage counts
  page cache, which MemGuard's "available" does not, so the first threshold can fire before the real
  crossing; the next rungs still wake the monitor as usage climbs), and the pool budgets as usage
  (the children cannot hold more than the cgroup: usage above a budget is when it may be exceeded).
  A threshold fires as usage crosses it in either direction, so relief wakes the monitor too.
* **Adaptive polling** (:class:`AdaptivePace`), always on while a policy reads the system's memory:
  from the latest two readings, the rate at which available memory falls; the next poll comes before
  that rate could use half of what is left above the nearest level below (or, already below every
  level, half of what is left at all), never sooner than ``ADAPTIVE_FLOOR`` and never later than the
  configured interval. Stable or rising memory: the configured interval. The reading taken on a kernel
  notification is followed by another within ``LOOK_AGAIN`` (0.05 s), so the rate is current.

The monitor also polls at once on every kernel notification (:mod:`celery_memguard.monitor`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

from .samples import SystemSample

if TYPE_CHECKING:
    from .config import MemGuardConfig

__all__ = ["ADAPTIVE_FLOOR", "AdaptivePace", "LADDER", "PressurePlan", "WAKE_MODES"]

#: The shortest delay adaptive polling chooses (seconds).
ADAPTIVE_FLOOR = 0.05
#: The next poll comes before the current fall could use this fraction of what is left to the level.
LEAD_FRACTION = 0.5
#: Seconds until the next reading after a kernel notification: the reading taken on it has no recent rate
#: (the one before may be a whole interval old), and a notification may come a little before the crossing
#: MemGuard counts (cgroup usage includes the inactive page cache MemGuard's "available" leaves out: the
#: worker's own imported files, tens of MiB), so look again at once with a rate that is current.
LOOK_AGAIN = ADAPTIVE_FLOOR
#: Usage thresholds are registered where available memory is at these multiples of each level.
LADDER = (1.5, 1.0, 0.5, 0.25)
#: ``memguard_pressure_wake``: kernel notifications where possible plus adaptive polling; adaptive polling
#: only; or polling at ``memguard_poll_interval`` only (MemGuard's behaviour before 0.x, for comparison).
WAKE_MODES = ("auto", "adaptive", "interval")
#: The share of a PSI trigger's window stalled that fires it when ``memguard_psi_threshold`` is not set.
PSI_DEFAULT_SHARE = 0.10


@dataclass(frozen=True, slots=True)
class PressurePlan:
    """What the kernel should wake the monitor for, derived from the settings once at start."""

    #: Available memory (bytes) at which some policy acts, highest first.
    available_levels: tuple[int, ...] = ()
    #: Memory used (bytes) at which a pool budget may be exceeded.
    used_levels: tuple[int, ...] = ()
    #: ``memguard_psi_threshold`` (percent), or None.
    psi_threshold: float | None = None
    mode: str = "auto"

    @classmethod
    def from_config(cls, cfg: "MemGuardConfig") -> "PressurePlan":
        levels = {v for v in (cfg.min_available, cfg.critical_available, cfg.pause_below) if v is not None}
        used = {v for v in (cfg.pool_limit, cfg.pool_hard_limit, cfg.pause_pool_above) if v is not None}
        return cls(tuple(sorted(levels, reverse=True)), tuple(sorted(used)), cfg.psi_threshold, cfg.pressure_wake)

    @property
    def active(self) -> bool:
        """Whether any policy acts on memory pressure (else nothing is armed, nothing said)."""
        return bool(self.available_levels or self.used_levels or self.psi_threshold is not None)

    @property
    def wants_events(self) -> bool:
        """Whether the kernel's notifications are to be armed."""
        return self.mode == "auto" and self.active

    @property
    def adaptive(self) -> bool:
        """Whether polling speeds up while available memory falls."""
        return self.mode != "interval" and bool(self.available_levels)

    def usage_thresholds(self, limit: int) -> list[int]:
        """Usage (bytes) of a cgroup limited to ``limit`` at which to be woken, ascending; only those in (0, limit)."""
        out: set[int] = set()
        for level in self.available_levels:
            for multiple in LADDER:
                out.add(limit - int(level * multiple))
        out.update(self.used_levels)
        return sorted(u for u in out if 0 < u < limit)

    def psi_trigger(self, window_us: int) -> tuple[int, int]:
        """(stall µs, window µs) of a PSI ``some`` trigger: the configured threshold's share of the window."""
        share = self.psi_threshold / 100 if self.psi_threshold is not None else PSI_DEFAULT_SHARE
        return max(1, int(window_us * share)), window_us


class AdaptivePace:
    """The delay until the next system reading: shorter while available memory falls towards a level."""

    def __init__(self, levels: Sequence[int], interval: float, floor: float = ADAPTIVE_FLOOR) -> None:
        if interval <= 0 or floor <= 0:
            raise ValueError("interval and floor must be > 0")
        self.levels = sorted(levels)
        self.interval = interval
        self.floor = min(floor, interval)
        self._last: SystemSample | None = None
        self._look_again = False
        self.delay = interval

    def notified(self) -> None:
        """The kernel signalled pressure: the next reading's delay is at most LOOK_AGAIN."""
        self._look_again = True

    def observe(self, system: SystemSample) -> float:
        """Take a reading; return the delay until the next (the previous delay for a reading already seen)."""
        last = self._last
        if last is not None and system.at <= last.at:
            return self.delay
        self._last = system
        self.delay = self.interval if last is None else self.delay_for(last, system)
        if self._look_again:
            self._look_again = False
            self.delay = min(self.delay, max(self.floor, LOOK_AGAIN))
        return self.delay

    def delay_for(self, before: SystemSample, now: SystemSample) -> float:
        """The delay after ``now``, given the reading ``before`` it."""
        rate = (before.available - now.available) / (now.at - before.at)
        if rate <= 0:
            return self.interval
        below = [level for level in self.levels if level < now.available]
        target = below[-1] if below else 0
        return max(self.floor, min(self.interval, LEAD_FRACTION * (now.available - target) / rate))
