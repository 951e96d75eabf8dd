"""Tests for PoolLimit: the children's total budget, largest child first, one victim at a time."""

from __future__ import annotations

from dataclasses import replace

import pytest

from celery_memguard.policies import PoolLimit
from celery_memguard.samples import Action, Violation

from .helpers import GRACE, MiB, acts, child, engine

LIMIT = 1000 * MiB
HARD = 1200 * MiB


def pool(*mems: float, busy: bool = True) -> list:
    """Children pid 1..n with the given MiB, busy (task t<pid>) unless ``busy`` is false."""
    return [child(i + 1, m, f"t{i + 1}" if busy else None) for i, m in enumerate(mems)]


class TestPoolLimit:
    """PoolLimit(limit=..., hard_limit=..., grace=...) on its own."""

    def test_under_budget_nothing(self) -> None:
        """A total at or below the budget gives no verdict and needs no exact readings."""
        policy = PoolLimit(limit=LIMIT)
        assert [] == policy.check_pool(pool(300, 300, 400), 0.0, None)
        assert None is policy.threshold

    def test_over_budget_picks_largest_with_ranking(self) -> None:
        """Over the budget the largest child is recycled; the ranking (largest first) comes with it."""
        policy = PoolLimit(limit=LIMIT)
        [(pid, violation)] = policy.check_pool(pool(300, 450, 200, 100), 0.0, None)
        assert 2 == pid
        assert Violation(Action.RECYCLE, "pool_limit", LIMIT) == replace(violation, ranking=(), detail=())
        assert ((2, 450 * MiB), (1, 300 * MiB), (3, 200 * MiB), (4, 100 * MiB)) == violation.ranking
        assert 1050 * MiB == dict(violation.detail)["total"]
        assert not violation.hard

    def test_ties_broken_by_lowest_pid(self) -> None:
        """Equal children rank by pid, so the choice is deterministic."""
        [(pid, _)] = PoolLimit(limit=LIMIT).check_pool(pool(600, 600), 0.0, None)
        assert 1 == pid

    def test_upper_bounds_are_no_evidence(self) -> None:
        """A total over budget built from upper bounds asks for exact readings and acts on nothing."""
        policy = PoolLimit(limit=LIMIT)
        children = [child(1, 700), child(2, 700, exact=False)]
        assert [] == policy.check_pool(children, 0.0, None)
        assert 0 == policy.threshold

    def test_victim_is_sticky(self) -> None:
        """While the victim lives no other child is chosen, even one that grew larger."""
        policy = PoolLimit(limit=LIMIT)
        assert 1 == policy.check_pool(pool(600, 500), 0.0, None)[0][0]
        verdicts = policy.check_pool(pool(600, 900), 1.0, None)
        assert [1] == [pid for pid, _ in verdicts]
        assert ((1, 600 * MiB), (2, 500 * MiB)) == verdicts[0][1].ranking  # the ranking of the choice

    def test_next_victim_after_the_first_left(self) -> None:
        """Once the victim is gone, the largest remaining child is chosen if the pool is still over."""
        policy = PoolLimit(limit=LIMIT)
        policy.check_pool(pool(600, 500, 450), 0.0, None)
        policy.child_exited(1)
        children = [child(2, 500, "t2"), child(3, 450, "t3"), child(4, 100, "t4")]
        assert [2] == [pid for pid, _ in policy.check_pool(children, 1.0, None)]

    def test_released_when_back_under_budget(self) -> None:
        """Back under the budget the victim is released and exact readings are no longer needed."""
        policy = PoolLimit(limit=LIMIT)
        policy.check_pool(pool(600, 500), 0.0, None)
        assert [] == policy.check_pool(pool(400, 500), 1.0, None)
        assert None is policy.threshold
        assert [2] == [pid for pid, _ in policy.check_pool(pool(400, 700), 2.0, None)]

    def test_children_already_leaving_count(self) -> None:
        """No victim while children already ordered out bring the pool back within budget."""
        policy = PoolLimit(limit=LIMIT)
        children = [replace(child(1, 500, "t1"), pending=Action.RECYCLE), child(2, 400, "t2"), child(3, 200)]
        assert [] == policy.check_pool(children, 0.0, None)

    def test_leaving_children_not_chosen(self) -> None:
        """A child already leaving is not picked; the largest of the others is."""
        policy = PoolLimit(limit=LIMIT)
        children = [replace(child(1, 600, "t1"), pending=Action.RECYCLE), child(2, 550, "t2"), child(3, 500)]
        [(pid, violation)] = policy.check_pool(children, 0.0, None)
        assert 2 == pid
        assert ((2, 550 * MiB), (3, 500 * MiB)) == violation.ranking

    def test_kill_only_after_grace_above_hard_budget(self) -> None:
        """Above the hard budget the victim is recycled, and its task killed once the grace has passed."""
        policy = PoolLimit(limit=LIMIT, hard_limit=HARD, grace=GRACE)
        assert Action.RECYCLE is policy.check_pool(pool(700, 600), 10.0, None)[0][1].action
        assert Action.RECYCLE is policy.check_pool(pool(700, 600), 10.0 + GRACE - 0.1, None)[0][1].action
        [(pid, violation)] = policy.check_pool(pool(700, 600), 10.0 + GRACE, None)
        assert (1, Action.KILL, HARD, True) == (pid, violation.action, violation.limit, violation.hard)

    def test_dip_below_hard_budget_restarts_grace(self) -> None:
        """The total must stay above the hard budget for the whole grace period."""
        policy = PoolLimit(limit=LIMIT, hard_limit=HARD, grace=GRACE)
        policy.check_pool(pool(700, 600), 0.0, None)
        policy.check_pool(pool(600, 500), 1.0, None)  # 1100: over the budget, under the hard budget
        assert Action.RECYCLE is policy.check_pool(pool(700, 600), 2.5, None)[0][1].action
        assert Action.KILL is policy.check_pool(pool(700, 600), 2.5 + GRACE, None)[0][1].action

    def test_idle_victim_above_hard_budget_is_recycled_hard(self) -> None:
        """An idle victim has no task to kill: it gets a hard recycle."""
        policy = PoolLimit(limit=LIMIT, hard_limit=HARD, grace=0.0)
        [(_, violation)] = policy.check_pool(pool(700, 600, busy=False), 0.0, None)
        assert (Action.RECYCLE, True) == (violation.action, violation.hard)

    @pytest.mark.parametrize(("limit", "hard", "grace"), [(0, None, 1.0), (100, 100, 1.0), (100, 50, 1.0),
                                                          (100, None, -1.0)])
    def test_invalid_options_rejected(self, limit: int, hard: int | None, grace: float) -> None:
        """A non-positive budget, a hard budget not above it, or a negative grace is refused."""
        with pytest.raises(ValueError):
            PoolLimit(limit=limit, hard_limit=hard, grace=grace)


class TestPoolLimitInEngine:
    """PoolLimit composed in the Engine: one recycle at a time, kill escalation, exact readings."""

    def test_one_recycle_at_a_time(self) -> None:
        """A pool over budget for many polls while its busy victim finishes gets exactly one recycle."""
        e = engine([PoolLimit(limit=LIMIT)])
        decisions = [e.decide(pool(600, 550, 500), float(t)) for t in range(10)]
        assert [(Action.RECYCLE, 1, "pool_limit")] == acts(decisions[0])
        assert [[]] * 9 == decisions[1:]

    def test_decision_carries_ranking(self) -> None:
        """The decision the glue logs names the ranking the victim was chosen from."""
        e = engine([PoolLimit(limit=LIMIT)])
        [decision] = e.decide(pool(600, 550), 0.0)
        assert ((1, 600 * MiB), (2, 550 * MiB)) == decision.ranking
        assert ("bytes", LIMIT) == (decision.unit, decision.limit)

    def test_next_victim_after_replacement(self) -> None:
        """When the victim is replaced by a small child and the pool is still over, the next largest goes."""
        e = engine([PoolLimit(limit=LIMIT)])
        e.decide(pool(600, 550, 500), 0.0)
        replaced = [child(4, 80, "t4"), child(2, 550, "t2"), child(3, 500, "t3")]
        assert [(Action.RECYCLE, 2, "pool_limit")] == acts(e.decide(replaced, 1.0))

    def test_no_new_victim_when_replacement_fits(self) -> None:
        """A replacement that brings the pool within budget ends the episode."""
        e = engine([PoolLimit(limit=LIMIT)])
        e.decide(pool(600, 300), 0.0)
        assert [] == e.decide([child(3, 80, "t3"), child(2, 300, "t2")], 1.0)

    def test_hard_budget_kill_then_force_kill(self) -> None:
        """Above the hard budget past the grace the victim's task is killed, then SIGKILLed after kill_grace."""
        e = engine([PoolLimit(limit=LIMIT, hard_limit=HARD, grace=GRACE)])
        assert [(Action.RECYCLE, 1, "pool_limit")] == acts(e.decide(pool(700, 600), 0.0))
        assert [] == e.decide(pool(700, 600), 1.0)
        assert [(Action.KILL, 1, "pool_limit")] == acts(e.decide(pool(700, 600), GRACE))
        assert [(Action.FORCE_KILL, 1, "pool_limit")] == acts(e.decide(pool(700, 600), 2 * GRACE))

    def test_engine_asks_for_exact_readings_while_over(self) -> None:
        """Engine.threshold drops to 0 while the pool's upper bounds exceed the budget, and comes back."""
        e = engine([PoolLimit(limit=LIMIT)])
        assert None is e.threshold
        e.decide([child(1, 700, exact=False), child(2, 700, exact=False)], 0.0)
        assert 0 == e.threshold
        e.decide([child(1, 300), child(2, 300)], 1.0)
        assert None is e.threshold
