"""Recycle children by age: a maximum lifetime and a maximum task count, each with jitter.

Children started together (at worker start, or after a deploy) would reach a
fixed lifetime or task count together and restart together, leaving the worker
with no warm child. So each child gets its own limit, drawn once when the policy
first sees it, within ``[max * (1 - jitter), max]`` (the configured maximum is
never exceeded; ``jitter=0`` means no spread).

The draw is random (from an injected ``random.Random``) but not independent: it
is spread away from the *restart points* of the children already alive, so two
children never restart together. For :class:`Lifetime` a restart point is an
absolute deadline (``spawned_at + limit``); for :class:`MaxTasks` it is the number
of tasks a child has left (``limit - tasks_run``), since children of one pool run
tasks at about the same rate. See :func:`spread_draw` for the floor this gives.
Both recycle gracefully: the child finishes its task, then exits.
"""

from __future__ import annotations

import random
from typing import ClassVar, Iterable

from ..config import DEFAULTS
from ..samples import Action, ChildSample, Violation
from .base import Policy

__all__ = ["Lifetime", "MaxTasks", "spread_draw"]


def spread_draw(rng: random.Random, lo: float, hi: float, others: Iterable[float]) -> float:
    """A random value in ``[lo, hi]`` kept well away from every value in ``others``.

    Let ``best`` be the largest distance to the nearest of ``others`` that any point
    of ``[lo, hi]`` has. The value is drawn uniformly among the points whose
    distance to every one of ``others`` is at least ``best / 2``. With ``n - 1``
    others in (or next to) the window, ``best >= (hi - lo) / (2 n)``, so the new
    value is at least ``(hi - lo) / (4 n)`` from each of them: that is the floor.
    Without others the draw is uniform over ``[lo, hi]``.
    """
    if hi <= lo:
        return lo
    points = sorted(others)
    if not points:
        return rng.uniform(lo, hi)

    def clearance(x: float) -> float:
        return min(abs(x - p) for p in points)

    candidates = [lo, hi] + [(a + b) / 2 for a, b in zip(points, points[1:]) if lo < (a + b) / 2 < hi]
    best = max(clearance(x) for x in candidates)
    margin = best / 2
    free = [(lo, hi)]
    for p in points:
        kept: list[tuple[float, float]] = []
        for a, b in free:
            if p + margin <= a or p - margin >= b:
                kept.append((a, b))
                continue
            if a < p - margin:
                kept.append((a, p - margin))
            if p + margin < b:
                kept.append((p + margin, b))
        free = kept
    total = sum(b - a for a, b in free)
    if total <= 0:
        return max(candidates, key=clearance)
    u = rng.uniform(0.0, total)
    for a, b in free:
        if u <= b - a:
            return a + u
        u -= b - a
    return free[-1][1]  # pragma: no cover - float rounding


def _check_jitter(jitter: float) -> None:
    if not 0.0 <= jitter < 1.0:
        raise ValueError("jitter must be a fraction in [0, 1)")


class Lifetime(Policy):
    """Recycle a child once it has lived its own jittered share of ``max_lifetime`` seconds."""

    reason: ClassVar[str] = "lifetime"
    debounce: ClassVar[bool] = False  # not a noisy reading: strikes would only delay it

    def __init__(self, *, max_lifetime: float, jitter: float = DEFAULTS["jitter"], rng: random.Random | None = None) -> None:
        if max_lifetime <= 0:
            raise ValueError("max_lifetime must be > 0")
        _check_jitter(jitter)
        self.max_lifetime = max_lifetime
        self.jitter = jitter
        self.rng = rng if rng is not None else random.Random()
        self._children: dict[int, tuple[float, float]] = {}  # pid -> (born, deadline)

    def deadline(self, pid: int) -> float | None:
        """When child ``pid`` is due for a recycle (``now`` units), once it has been seen."""
        entry = self._children.get(pid)
        return entry[1] if entry else None

    def check(self, child: ChildSample, now: float) -> Violation | None:
        entry = self._children.get(child.pid)
        if entry is None or (child.spawned_at and entry[0] != child.spawned_at):
            # First sight (or a new child with a reused pid). Unknown spawn time: count from now.
            born = child.spawned_at or now
            others = [d for pid, (_b, d) in self._children.items() if pid != child.pid]
            deadline = spread_draw(self.rng, born + self.max_lifetime * (1 - self.jitter),
                                   born + self.max_lifetime, others)
            entry = self._children[child.pid] = (born, deadline)
        born, deadline = entry
        if now < deadline:
            return None
        limit = deadline - born
        detail = (("lifetime_s", round(now - born, 1)), ("max_lifetime_s", self.max_lifetime))
        return Violation(Action.RECYCLE, self.reason, int(round(limit)), detail=detail, unit="seconds")

    def child_exited(self, pid: int) -> None:
        self._children.pop(pid, None)

    def __repr__(self) -> str:
        return f"Lifetime(max_lifetime={self.max_lifetime}, jitter={self.jitter})"


class MaxTasks(Policy):
    """Recycle a child once it has run its own jittered share of ``max_tasks`` tasks."""

    reason: ClassVar[str] = "max_tasks"
    debounce: ClassVar[bool] = False  # not a noisy reading: strikes would only delay it

    def __init__(self, *, max_tasks: int, jitter: float = DEFAULTS["jitter"], rng: random.Random | None = None) -> None:
        if max_tasks <= 0:
            raise ValueError("max_tasks must be > 0")
        _check_jitter(jitter)
        self.max_tasks = max_tasks
        self.jitter = jitter
        self.rng = rng if rng is not None else random.Random()
        self._children: dict[int, tuple[float, int, int]] = {}  # pid -> (spawned_at, limit, last tasks_run)

    def limit_of(self, pid: int) -> int | None:
        """Child ``pid``'s own task limit, once it has been seen."""
        entry = self._children.get(pid)
        return entry[1] if entry else None

    def check(self, child: ChildSample, now: float) -> Violation | None:
        entry = self._children.get(child.pid)
        if entry is None or (child.spawned_at and entry[0] != child.spawned_at) or child.tasks_run < entry[2]:
            # Spread the tasks this child has left away from what the others have left.
            left = [limit - run for pid, (_s, limit, run) in self._children.items() if pid != child.pid]
            lo = self.max_tasks * (1 - self.jitter) - child.tasks_run
            hi = self.max_tasks - child.tasks_run
            limit = max(1, int(round(spread_draw(self.rng, lo, hi, left) + child.tasks_run)))
            entry = (child.spawned_at, limit, child.tasks_run)
        self._children[child.pid] = (entry[0], entry[1], child.tasks_run)
        limit = entry[1]
        # A busy child is running its next task already: count it, so the recycle comes after the
        # limit-th task, not one later.
        if child.tasks_run + (1 if child.busy else 0) < limit:
            return None
        detail = (("tasks_run", child.tasks_run), ("max_tasks", self.max_tasks))
        return Violation(Action.RECYCLE, self.reason, limit, detail=detail, unit="tasks")

    def child_exited(self, pid: int) -> None:
        self._children.pop(pid, None)

    def __repr__(self) -> str:
        return f"MaxTasks(max_tasks={self.max_tasks}, jitter={self.jitter})"
