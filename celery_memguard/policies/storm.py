"""The recycle storm guard: a sliding-window rate limit on soft recycles, and the storm finding.

Every restart costs a child's spawn time (importing the app, warming caches):
recycling once per task with a one-second spawn caps a child at about sixty tasks
a minute. The guard counts the orders that make a child leave (a recycle or a
task kill: the first order per child) over the last ``window`` seconds and lets a
*soft* recycle through only while that count stays below the cap:

* ``max_recycles_per_minute``, and/or
* ``max_throughput_loss``: the share of the pool's capacity restarts may take,
  ``rate * spawn_time / 60 / concurrency``; usable once a spawn time is known.

Hard actions (a KILL, a hard-limit violation) are counted but never deferred. The
first deferral of an episode produces one ``memguard.recycle_storm`` finding with
the measured spawn time, the recycle rate, the estimated throughput lost and a
cause in plain words; the episode ends after a whole window without a deferral.
On defaults ``max_throughput_loss`` is 0.25: restarts may take at most a quarter
of the pool's capacity at the measured spawn time (a 1 s spawn, 4 children: 60
restarts a minute).

:class:`UnreachableLimits` stops the other kind of storm before it starts: a soft
limit that a freshly forked child is already above (measured at the engine's
first look at the child, before it ran more than one task) cannot be met by
recycling; every replacement would be over it again. One
``memguard.limit_unreachable`` finding says so (the limit, the fresh child's and
the master's memory, and the fix), and recycles for that limit stop until a fresh
child is measured below it again. Hard limits are never affected.
Pure: no I/O, no clock.
"""

from __future__ import annotations

import statistics
from collections import Counter, deque
from dataclasses import dataclass
from typing import Sequence

from ..detectors.base import Finding
from ..events import LIMIT_UNREACHABLE, RECYCLE_STORM
from ..samples import Violation
from ..units import format_mib, mib

__all__ = ["StormGuard", "RECYCLE_STORM", "LIMIT_UNREACHABLE", "UnreachableLimits", "Restart", "restart_of",
           "describe_cause", "UNREACHABLE_REASONS"]

#: Soft violations a fresh child can make unreachable (per-child memory limits).
UNREACHABLE_REASONS = frozenset({"soft_limit"})
#: Spawn-time measurements kept (the median is used).
SPAWN_SAMPLES = 16
_LIMIT_NAMES = {"soft_limit": "soft limit", "hard_limit": "hard limit"}


@dataclass(frozen=True, slots=True)
class Restart:
    """One ordered (or deferred) restart: what the child was and why it had to go."""

    at: float
    pid: int
    reason: str
    mem: int
    limit: int
    unit: str
    tasks_run: int


def _amount(value: float, unit: str) -> str:
    if unit == "bytes":
        return format_mib(value)
    if unit == "seconds":
        return f"{value:.0f} s"
    return f"{value:.0f} {unit}"


class StormGuard:
    """Counts restarts in a sliding window, says whether a soft recycle may go now, and reports storms."""

    def __init__(
        self,
        *,
        max_recycles_per_minute: float | None = None,
        max_throughput_loss: float | None = None,
        window: float = 60.0,
    ) -> None:
        if max_recycles_per_minute is not None and max_recycles_per_minute <= 0:
            raise ValueError("max_recycles_per_minute must be > 0")
        if max_throughput_loss is not None and not 0 < max_throughput_loss <= 1:
            raise ValueError("max_throughput_loss must be a fraction in (0, 1]")
        if window <= 0:
            raise ValueError("window must be > 0")
        self.max_recycles_per_minute = max_recycles_per_minute
        self.max_throughput_loss = max_throughput_loss
        self.window = window
        self._restarts: deque[Restart] = deque()
        self._spawns: deque[float] = deque(maxlen=SPAWN_SAMPLES)
        self._last_deferral: float | None = None
        self.episodes = 0

    # -- inputs ---------------------------------------------------------
    def observe_spawn(self, seconds: float) -> None:
        """A child took ``seconds`` from fork to ready."""
        if seconds >= 0:
            self._spawns.append(seconds)

    def record(self, now: float, restart: Restart) -> None:
        """An order that makes a child leave was issued."""
        self._restarts.append(restart)
        self._expire(now)

    # -- queries --------------------------------------------------------
    @property
    def enabled(self) -> bool:
        return self.max_recycles_per_minute is not None or self.max_throughput_loss is not None

    @property
    def spawn_time(self) -> float | None:
        """The median of the recent spawn-time measurements, or ``None`` before the first."""
        return statistics.median(self._spawns) if self._spawns else None

    @property
    def storming(self) -> bool:
        """Whether a storm episode is under way (a deferral in the last window)."""
        return self._last_deferral is not None

    def rate(self, now: float) -> float:
        """Restarts per minute over the window ending at ``now``."""
        self._expire(now)
        return len(self._restarts) * 60.0 / self.window

    def cap(self, concurrency: int) -> float | None:
        """Most restarts per minute allowed now, or ``None`` if unlimited."""
        caps: list[float] = []
        if self.max_recycles_per_minute is not None:
            caps.append(self.max_recycles_per_minute)
        spawn = self.spawn_time
        if self.max_throughput_loss is not None and spawn and concurrency > 0:
            caps.append(self.max_throughput_loss * 60.0 * concurrency / spawn)
        return min(caps) if caps else None

    def allow(self, now: float, concurrency: int) -> bool:
        """Whether one more soft recycle fits under the cap now (at least one per window always does)."""
        cap = self.cap(concurrency)
        if cap is None:
            return True
        self._expire(now)
        return len(self._restarts) + 1 <= max(1.0, cap * self.window / 60.0)

    def throughput_lost(self, now: float, concurrency: int) -> float | None:
        """Estimated share of the pool's capacity spent restarting children at the current rate."""
        spawn = self.spawn_time
        if spawn is None or concurrency <= 0:
            return None
        return self.rate(now) * spawn / 60.0 / concurrency

    # -- deferrals ------------------------------------------------------
    def tick(self, now: float) -> None:
        """End a storm episode that saw no deferral for a whole window."""
        if self._last_deferral is not None and now - self._last_deferral >= self.window:
            self._last_deferral = None

    def deferred(self, now: float, deferred: Sequence[Restart], concurrency: int) -> Finding | None:
        """Recycles were held back this poll; the storm finding if this starts an episode."""
        if not deferred:
            return None
        starts = self._last_deferral is None
        self._last_deferral = now
        if not starts:
            return None
        self.episodes += 1
        self._expire(now)
        seen = list(self._restarts) + list(deferred)
        spawn = self.spawn_time
        lost = self.throughput_lost(now, concurrency)
        cap = self.cap(concurrency)
        fields: dict[str, object] = {
            "spawn_time_s": None if spawn is None else round(spawn, 3),
            "recycles_per_minute": round(self.rate(now), 1),
            "max_recycles_per_minute": None if cap is None else round(cap, 1),
            "throughput_lost": None if lost is None else round(lost, 3),
            "concurrency": concurrency,
            "deferred": len(deferred),
            "reasons": dict(Counter(r.reason for r in seen).most_common()),
            "cause": describe_cause(seen, spawn, self.window),
        }
        return Finding(RECYCLE_STORM, fields)

    def _expire(self, now: float) -> None:
        while self._restarts and now - self._restarts[0].at >= self.window:
            self._restarts.popleft()


@dataclass(frozen=True, slots=True)
class _Unreachable:
    limit: int
    pid: int
    mem: int
    since: float


class UnreachableLimits:
    """Soft limits a freshly forked child is already above: recycling for them would only storm.

    The engine calls :meth:`fresh` with each child's first reading (only while the child is fresh, see
    :meth:`is_fresh`) and the child's soft violation of a
    per-child memory limit, if any; it asks :meth:`blocks` before ordering a soft recycle.
    """

    def __init__(self, metric: str = "uss") -> None:
        self.metric = metric
        self._limits: dict[str, _Unreachable] = {}
        self.blocked = 0  #: soft recycles not ordered because their limit is unreachable

    @staticmethod
    def is_fresh(tasks_run: int, busy: bool, spawned_at: float, now: float) -> bool:
        """Whether a child's reading is that of a freshly forked child: its spawn is known (board) and it has
        neither finished nor started a task. However young, a child that took a job before its first look (an
        autoscaled or replacement child with a backlog waiting) holds the task's memory too."""
        return spawned_at > 0 and tasks_run == 0 and not busy

    def fresh(self, now: float, pid: int, mem: int, exact: bool, violation: Violation | None,
              master_mem: int | None) -> Finding | None:
        """A fresh child's first reading; the ``memguard.limit_unreachable`` finding if it starts an episode."""
        if violation is not None and exact and violation.reason in UNREACHABLE_REASONS and not violation.hard \
                and violation.unit == "bytes" and mem > violation.limit:
            if violation.reason in self._limits:
                return None
            self._limits[violation.reason] = _Unreachable(violation.limit, pid, mem, now)
            return self._finding(violation.reason, violation.limit, pid, mem, master_mem)
        # A fresh child measured below an unreachable limit (an upper bound below it will do): reachable again.
        for reason, state in list(self._limits.items()):
            if mem <= state.limit:
                del self._limits[reason]
        return None

    def blocks(self, violation: Violation) -> bool:
        """Whether a soft recycle for ``violation`` must not be ordered (its limit is unreachable)."""
        state = self._limits.get(violation.reason)
        if state is None or violation.hard or violation.limit != state.limit:
            return False
        self.blocked += 1
        return True

    @property
    def unreachable(self) -> dict[str, int]:
        """Reason -> limit (bytes) of the limits currently held unreachable."""
        return {reason: state.limit for reason, state in self._limits.items()}

    def _finding(self, reason: str, limit: int, pid: int, mem: int, master_mem: int | None) -> Finding:
        name = _LIMIT_NAMES.get(reason, reason)
        if self.metric == "rss":
            fix = (f"a fresh child's RSS counts the pages it shares copy-on-write with the master"
                   + (f" ({format_mib(master_mem)})" if master_mem is not None else "")
                   + f": set memguard_metric to 'uss' or 'pss' (memory the child really owns), or raise "
                   f"memguard_{reason} well above {format_mib(mem)}")
        else:
            fix = (f"raise memguard_{reason} well above {format_mib(mem)} (a fresh child's {self.metric.upper()} plus "
                   f"the tasks' working memory), or make the children start smaller (less work in "
                   f"worker_process_init)")
        return Finding(LIMIT_UNREACHABLE, {
            "reason": reason,
            "limit_mib": mib(limit),
            "fresh_child_mib": mib(mem),
            "master_mib": mib(master_mem),
            "metric": self.metric,
            "pid": pid,
            "cause": (f"a freshly forked child is already at {format_mib(mem)} {self.metric.upper()}, above the "
                      f"{name} {format_mib(limit)}: every replacement would be over it too; recycling for the {name} "
                      f"stops until a fresh child starts below it (the hard limit still applies)"),
            "fix": fix,
        })


def restart_of(now: float, pid: int, mem: int, tasks_run: int, violation: Violation) -> Restart:
    """The :class:`Restart` record for ``violation`` on a child."""
    return Restart(now, pid, violation.reason, mem, violation.limit, violation.unit, tasks_run)


def describe_cause(restarts: Sequence[Restart], spawn: float | None, window: float) -> str:
    """Why children keep being restarted, in one sentence."""
    if not restarts:
        return "unknown"
    reason, count = Counter(r.reason for r in restarts).most_common(1)[0]
    mine = [r for r in restarts if r.reason == reason]
    limit = min(r.limit for r in mine)
    unit = mine[0].unit
    fresh = [r for r in mine if r.tasks_run <= 1]
    if reason in _LIMIT_NAMES and len(fresh) * 2 >= len(mine):
        baseline = statistics.median(r.mem for r in fresh)
        return (f"{_LIMIT_NAMES[reason]} {format_mib(limit)} is below the children's baseline {format_mib(baseline)} "
                f"right after spawn")
    spawn_note = f" with a {spawn:.1f} s spawn time" if spawn is not None else ""
    if reason == "max_tasks":
        return f"max_tasks {limit} is too low{spawn_note}: children are restarted every ~{limit} tasks"
    if reason == "lifetime":
        return f"max child lifetime {_amount(limit, unit)} is too short{spawn_note}"
    median_mem = statistics.median(r.mem for r in mine)
    return (f"{count} of {len(restarts)} restarts in the last {window:.0f} s were for {reason} "
            f"(median {format_mib(median_mem)} against {_amount(limit, unit)})")
