"""The pool budget: the children together must stay below ``limit``; the largest one goes first.

puma_worker_killer's "kill the largest" is the anchor: when the sum of every
child's memory exceeds the budget, the largest child is recycled (it finishes its
task, then exits and is replaced). One victim at a time: while the chosen child is
alive the policy keeps naming it and picks no other, so a pool a little above the
budget loses one child, not all of them. The ranking at the moment of the choice
travels with the violation so the log can show why this child was picked.

Only exact readings are evidence: while the sum of the children's cheap upper
bounds exceeds the budget the policy asks for exact readings of every child
(``threshold = 0``; the engine then polls again at once) and acts once they confirm the excess. Children the engine has
already ordered out count as leaving: if the pool fits the budget without them, no
new victim is chosen. With ``hard_limit``, a total that stays above it for
``grace`` seconds turns the victim's recycle into a kill of its running task.
"""

from __future__ import annotations

from typing import ClassVar, Sequence

from ..config import DEFAULTS
from ..samples import Action, ChildSample, Detail, Ranking, SystemSample, Violation
from .base import PoolPolicy, Verdict

__all__ = ["PoolLimit", "rank_largest"]

_KILLING = (Action.KILL, Action.FORCE_KILL)


def rank_largest(children: Sequence[ChildSample]) -> list[ChildSample]:
    """Children from the largest to the smallest (ties: lowest pid first, so the order is stable)."""
    return sorted(children, key=lambda c: (-c.mem, c.pid))


class PoolLimit(PoolPolicy):
    """When the children's total exceeds ``limit``, recycle the largest child, one at a time."""

    reason: ClassVar[str] = "pool_limit"

    def __init__(self, *, limit: int, hard_limit: int | None = None, grace: float = DEFAULTS["kill_grace"]) -> None:
        if limit <= 0:
            raise ValueError("limit must be > 0")
        if hard_limit is not None and hard_limit <= limit:
            raise ValueError("hard_limit must be above limit")
        if grace < 0:
            raise ValueError("grace must be >= 0")
        self.limit = limit
        self.hard_limit = hard_limit
        self.grace = grace
        self.threshold: int | None = None
        self._victim: int | None = None
        self._ranking: Ranking = ()
        self._over_hard_since: float | None = None

    def check_pool(self, children: Sequence[ChildSample], now: float, system: SystemSample | None) -> list[Verdict]:
        total = sum(c.mem for c in children)
        by_pid = {c.pid: c for c in children}
        if self._victim not in by_pid:
            self._victim = None
        if total <= self.limit:
            # The upper bounds fit, so the exact values do too.
            self.threshold = None
            self._victim, self._over_hard_since = None, None
            return []
        self.threshold = 0  # read every child exactly until the total is back within the budget
        if not all(c.exact for c in children):
            # Upper bounds above the budget are no evidence; keep naming a victim already chosen.
            if self._victim is None:
                return []
            return [(self._victim, self._violation(by_pid[self._victim], total, now, hard_due=False))]

        if self.hard_limit is not None and total > self.hard_limit:
            if self._over_hard_since is None:
                self._over_hard_since = now
        else:
            self._over_hard_since = None
        hard_due = self._over_hard_since is not None and now - self._over_hard_since >= self.grace

        if self._victim is None:
            if hard_due:
                candidates = [c for c in children if c.pending not in _KILLING]
            else:
                leaving = sum(c.mem for c in children if c.leaving)
                if total - leaving <= self.limit:
                    return []  # children already ordered out bring the pool back within budget
                candidates = [c for c in children if not c.leaving]
            if not candidates:
                return []
            ranked = rank_largest(candidates)
            self._victim = ranked[0].pid
            self._ranking = tuple((c.pid, c.mem) for c in ranked)
        return [(self._victim, self._violation(by_pid[self._victim], total, now, hard_due=hard_due))]

    def _violation(self, victim: ChildSample, total: int, now: float, *, hard_due: bool) -> Violation:
        detail: Detail = (("total", total), ("pool_limit", self.limit), ("pool_hard_limit", self.hard_limit))
        if hard_due:
            assert self.hard_limit is not None and self._over_hard_since is not None
            action = Action.KILL if victim.busy else Action.RECYCLE
            detail += (("over_hard_limit_s", round(now - self._over_hard_since, 3)),)
            return Violation(action, self.reason, self.hard_limit, ranking=self._ranking, detail=detail, hard=True)
        return Violation(Action.RECYCLE, self.reason, self.limit, ranking=self._ranking, detail=detail)

    def child_exited(self, pid: int) -> None:
        if pid == self._victim:
            self._victim = None

    def __repr__(self) -> str:
        return f"PoolLimit(limit={self.limit}, hard_limit={self.hard_limit}, grace={self.grace})"
