"""Tests for custom policies: the same interface as the built-in ones, guarded in the engine.

The classes at the top are the examples of docs/policies.md (also loaded by dotted path in test_build.py).
"""

from __future__ import annotations

from typing import Any, ClassVar, Sequence

from celery_memguard.policies import HardLimit, Policy, PoolPolicy, SoftLimit
from celery_memguard.policies.base import Verdict
from celery_memguard.samples import Action, ChildSample, SystemSample, Violation

from .helpers import MiB, acts, child, engine


class IdleAbove(Policy):
    """Recycle an idle child holding more than ``limit`` (it is not working, so it costs nothing)."""

    reason: ClassVar[str] = "idle_above"

    def __init__(self, *, limit: int = 300 * MiB) -> None:
        self.limit = self.threshold = limit

    def check(self, child: ChildSample, now: float) -> Violation | None:
        if child.exact and not child.busy and child.mem > self.limit:
            return Violation(Action.RECYCLE, self.reason, self.limit)
        return None


class OldestOverBudget(PoolPolicy):
    """When the children together exceed ``budget``, recycle the oldest one (one at a time)."""

    reason: ClassVar[str] = "oldest_over_budget"

    def __init__(self, *, budget: int = 1000 * MiB) -> None:
        self.budget = budget

    @classmethod
    def from_config(cls, config: Any) -> "OldestOverBudget":
        return cls(budget=getattr(config, "oldest_budget", 1000 * MiB))

    def check_pool(self, children: Sequence[ChildSample], now: float, system: SystemSample | None) -> list[Verdict]:
        if sum(c.mem for c in children) <= self.budget or any(c.leaving for c in children):
            return []
        oldest = min(children, key=lambda c: (c.spawned_at, c.pid))
        return [(oldest.pid, Violation(Action.RECYCLE, self.reason, self.budget))]


class Broken(Policy):
    """A custom policy with a bug: it raises on every child."""

    reason: ClassVar[str] = "broken"

    def check(self, child: ChildSample, now: float) -> Violation | None:
        raise RuntimeError("oops")


class DuckTyped:
    """A policy that does not subclass Policy: check() is enough."""

    reason = "duck"

    def check(self, child: ChildSample, now: float) -> Violation | None:
        return Violation(Action.RECYCLE, self.reason, 0) if child.tasks_run > 10 else None


class TestCustomPolicies:
    """Custom per-child and pool policies composed in the Engine."""

    def test_custom_per_child_policy(self) -> None:
        """A custom Policy is asked about every child and its reason reaches the decision."""
        e = engine([IdleAbove(limit=300 * MiB)])
        assert [(Action.RECYCLE, 2, "idle_above")] == acts(e.decide([child(1, 400, "a"), child(2, 400)], 0.0))
        assert 300 * MiB == e.threshold

    def test_custom_pool_policy_one_at_a_time(self) -> None:
        """A custom PoolPolicy sees every child, and .leaving lets it keep to one recycle at a time."""
        e = engine([OldestOverBudget(budget=1000 * MiB)])
        pool = [child(1, 600, "a", spawned_at=5.0), child(2, 600, "b", spawned_at=1.0)]
        assert [(Action.RECYCLE, 2, "oldest_over_budget")] == acts(e.decide(pool, 10.0))
        assert [] == e.decide(pool, 11.0)

    def test_broken_policy_does_not_stop_the_others(self) -> None:
        """A policy that raises is skipped; the hard limit still acts and one error finding is reported."""
        e = engine([Broken(), HardLimit(limit=400 * MiB)])
        assert [(Action.KILL, 1, "hard_limit")] == acts(e.decide([child(1, 500, "a")], 0.0))
        e.decide([child(1, 500, "a")], 1.0)
        findings = e.findings()
        assert [("memguard.error", "policy.Broken", "RuntimeError: oops")] == [
            (f.event, f.fields["where"], f.fields["error"]) for f in findings]

    def test_duck_typed_policy(self) -> None:
        """An object with check() but no base class works as a per-child policy."""
        e = engine([DuckTyped()])
        assert [(Action.RECYCLE, 1, "duck")] == acts(e.decide([child(1, 100, tasks_run=11)], 0.0))
        e.decide([], 1.0)  # child_exited is optional

    def test_duck_typed_policy_keeps_every_limit(self) -> None:
        """A check-only policy beside a hard limit: the engine's thresholds (what the monitor asks before
        every exact reading) work, and a child over the hard limit is stopped. Before the one policy
        contract, ``Engine.ceiling`` raised AttributeError and the monitor never reached the engine."""
        e = engine([DuckTyped(), HardLimit(limit=400 * MiB)])
        assert (400 * MiB, 400 * MiB, 400 * MiB) == (e.ceiling, e.threshold, e.threshold_for(1))
        assert [(Action.KILL, 1, "hard_limit")] == acts(e.decide([child(1, 500, "a")], 0.0))
        assert [(Action.RECYCLE, 2, "duck")] == acts(e.decide([child(1, 500, "a"), child(2, 100, tasks_run=11)], 0.5))
        assert 400 * MiB == e.threshold_for(2)  # a recycling child can still be escalated by the hard limit
        assert [] == e.findings()

    def test_duck_typed_optional_members_are_read(self) -> None:
        """What a duck-typed policy does define (threshold, debounce, child_exited; findings for a pool
        one) is honoured through the adapter; a broken threshold property counts as none."""
        exited: list[int] = []

        class Partial:
            threshold = 300 * MiB
            debounce = False

            def check(self, child: ChildSample, now: float) -> Violation | None:
                return Violation(Action.RECYCLE, "partial", self.threshold) if child.mem > self.threshold else None

            def child_exited(self, pid: int) -> None:
                exited.append(pid)

        class PoolDuck:
            def check_pool(self, children: Sequence[ChildSample], now: float, system: SystemSample | None) -> None:
                return None

            def findings(self) -> list[object]:
                from celery_memguard.detectors.base import Finding
                return [Finding("memguard.custom_note", {"n": 1})]

        class BadThreshold:
            @property
            def threshold(self) -> int:
                raise RuntimeError("no")

            def check(self, child: ChildSample, now: float) -> None:
                return None

        e = engine([Partial(), PoolDuck(), BadThreshold()], strikes=3)
        assert 300 * MiB == e.threshold == e.ceiling
        assert [(Action.RECYCLE, 1, "partial")] == acts(e.decide([child(1, 350)], 0.0))  # no strikes: debounce off
        assert ["memguard.custom_note"] == [f.event for f in e.findings()]
        e.decide([], 1.0)
        assert [1] == exited
        assert ["Partial", "PoolDuck", "BadThreshold"] == [p.reason for p in e.policies]

    def test_custom_hard_violation_never_delayed(self) -> None:
        """A custom violation marked hard passes strikes at once."""

        class HardCustom(Policy):
            reason: ClassVar[str] = "hard_custom"

            def check(self, child: ChildSample, now: float) -> Violation | None:
                return Violation(Action.RECYCLE, self.reason, 0, hard=True)

        assert [(Action.RECYCLE, 1, "hard_custom")] == acts(engine([HardCustom()], strikes=5).decide(
            [child(1, 100)], 0.0))

    def test_pool_verdict_for_unknown_pid_ignored(self) -> None:
        """A pool policy naming a pid that is not a live child produces nothing."""

        class Stray(PoolPolicy):
            def check_pool(self, children: Sequence[ChildSample], now: float,
                           system: SystemSample | None) -> list[Verdict]:
                return [(999, Violation(Action.RECYCLE, "stray", 0))]

        assert [] == engine([Stray()]).decide([child(1, 100)], 0.0)

    def test_most_severe_wins_and_first_on_ties(self) -> None:
        """Across policies the most severe violation wins; on a tie the earlier policy's reason is kept."""
        e = engine([SoftLimit(limit=200 * MiB), IdleAbove(limit=100 * MiB), HardLimit(limit=400 * MiB)])
        assert [(Action.RECYCLE, 1, "soft_limit"), (Action.KILL, 2, "hard_limit")] == acts(
            e.decide([child(1, 250), child(2, 500, "b")], 0.0))

    def test_decision_carries_detail_and_unit(self) -> None:
        """The violation's ranking, detail and unit are copied into the decision."""

        class Detailed(Policy):
            def check(self, child: ChildSample, now: float) -> Violation | None:
                return Violation(Action.RECYCLE, "detailed", 7, ranking=((1, 2),), detail=(("k", "v"),), unit="tasks")

        [d] = engine([Detailed()]).decide([child(1, 100)], 0.0)
        assert (((1, 2),), (("k", "v"),), "tasks", 7) == (d.ranking, d.detail, d.unit, d.limit)

    def test_hard_flag_not_part_of_equality(self) -> None:
        """Violation.hard does not take part in equality, so existing comparisons keep working."""
        assert Violation(Action.KILL, "hard_limit", 1) == Violation(Action.KILL, "hard_limit", 1, hard=True)
