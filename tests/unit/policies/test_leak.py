"""Tests for LeakProjection: a leaking child projected past its limit is recycled while idle."""

from __future__ import annotations

import pytest

from celery_memguard.policies import LeakProjection, SoftLimit
from celery_memguard.policies.leak import leak_rate
from celery_memguard.samples import Action

from .helpers import MiB, acts, child, engine

SOFT = 500 * MiB
HORIZON = 300.0
LEAK = 1 * MiB  # per call; at 1 call/s: 300 MiB over the horizon, so the policy acts above 200 MiB


class TestLeakRate:
    """leak_rate(child, now)."""

    def test_no_leak_no_rate(self) -> None:
        """A child without a confirmed leak does not grow."""
        assert 0.0 == leak_rate(child(1, 100, calls_per_second=5.0), 10.0)

    def test_per_call_times_call_rate(self) -> None:
        """The growth rate is the leak per call times the calls per second."""
        assert 2 * MiB == leak_rate(child(1, 100, leak_per_call=LEAK, calls_per_second=2.0), 10.0)

    def test_call_rate_from_lifetime_when_unknown(self) -> None:
        """Without a call rate, the child's average over its lifetime is used."""
        assert 0.5 * MiB == leak_rate(child(1, 100, leak_per_call=LEAK, tasks_run=50, spawned_at=100.0), 200.0)

    def test_unknown_call_rate_and_spawn_no_rate(self) -> None:
        """With neither a call rate nor a spawn time the rate is unknown: 0."""
        assert 0.0 == leak_rate(child(1, 100, leak_per_call=LEAK, tasks_run=50), 200.0)


class TestLeakProjection:
    """LeakProjection(limit=..., horizon=...) on its own."""

    def test_idle_child_projected_past_limit_is_recycled(self) -> None:
        """An idle leaker that would cross the limit within the horizon is recycled."""
        policy = LeakProjection(limit=SOFT, horizon=HORIZON)
        violation = policy.check(child(1, 250, leak_per_call=LEAK, calls_per_second=1.0), 0.0)
        assert violation is not None
        assert (Action.RECYCLE, "leak_projection", SOFT) == (violation.action, violation.reason, violation.limit)
        assert 250.0 == dict(violation.detail)["eta_s"]

    def test_busy_child_waits_for_idle(self) -> None:
        """The same child while busy is left alone: it is recycled only at an idle moment."""
        policy = LeakProjection(limit=SOFT, horizon=HORIZON)
        assert None is policy.check(child(1, 250, "a", leak_per_call=LEAK, calls_per_second=1.0), 0.0)

    def test_projection_within_limit_nothing(self) -> None:
        """A leaker that stays below the limit over the horizon is left alone."""
        policy = LeakProjection(limit=SOFT, horizon=HORIZON)
        assert None is policy.check(child(1, 150, leak_per_call=LEAK, calls_per_second=1.0), 0.0)

    def test_no_leak_nothing(self) -> None:
        """A large idle child without a confirmed leak is not this policy's business."""
        assert None is LeakProjection(limit=SOFT, horizon=HORIZON).check(child(1, 490), 0.0)

    def test_upper_bound_no_evidence(self) -> None:
        """An inexact reading never triggers a projection recycle."""
        policy = LeakProjection(limit=SOFT, horizon=HORIZON)
        assert None is policy.check(child(1, 450, exact=False, leak_per_call=LEAK, calls_per_second=1.0), 0.0)

    def test_threshold_follows_leakers(self) -> None:
        """The threshold is the lowest memory at which a leaker would be acted on, None without leakers."""
        policy = LeakProjection(limit=SOFT, horizon=HORIZON)
        assert None is policy.threshold
        policy.check(child(1, 100, leak_per_call=LEAK, calls_per_second=1.0), 0.0)
        assert 200 * MiB == policy.threshold
        policy.check(child(2, 100, leak_per_call=LEAK, calls_per_second=0.5), 0.0)
        assert 200 * MiB == policy.threshold
        policy.child_exited(1)
        assert 350 * MiB == policy.threshold
        policy.check(child(2, 100), 1.0)
        assert None is policy.threshold

    def test_busy_recycle_when_idle_only_is_off(self) -> None:
        """With idle_only=False a busy leaker is recycled too (after its task)."""
        policy = LeakProjection(limit=SOFT, horizon=HORIZON, idle_only=False)
        assert policy.check(child(1, 250, "a", leak_per_call=LEAK, calls_per_second=1.0), 0.0) is not None

    @pytest.mark.parametrize(("limit", "horizon"), [(0, 10.0), (100, 0.0)])
    def test_invalid_options_rejected(self, limit: int, horizon: float) -> None:
        """A limit and a horizon must be positive."""
        with pytest.raises(ValueError):
            LeakProjection(limit=limit, horizon=horizon)


class TestLeakProjectionInEngine:
    """LeakProjection with the soft limit in the Engine, over a synthetic burst."""

    def test_recycled_at_first_idle_poll_before_the_limit(self) -> None:
        """A leaker busy through a burst is recycled at its first idle poll, before reaching the soft limit."""
        e = engine([SoftLimit(limit=SOFT), LeakProjection(limit=SOFT, horizon=HORIZON)])
        series = [(240, "a"), (260, "b"), (280, "c"), (300, None)]
        out = [e.decide([child(1, mem, task, leak_per_call=LEAK, calls_per_second=1.0)], float(t))
               for t, (mem, task) in enumerate(series)]
        assert [[], [], []] == out[:3]
        assert [(Action.RECYCLE, 1, "leak_projection")] == acts(out[3])

    def test_soft_limit_wins_above_the_limit(self) -> None:
        """Above the soft limit the soft limit's reason is recorded (it comes first)."""
        e = engine([SoftLimit(limit=SOFT), LeakProjection(limit=SOFT, horizon=HORIZON)])
        assert [(Action.RECYCLE, 1, "soft_limit")] == acts(
            e.decide([child(1, 600, leak_per_call=LEAK, calls_per_second=1.0)], 0.0))

    def test_engine_threshold_lowered_for_leakers(self) -> None:
        """The engine's threshold drops below the soft limit while a leaker is projected to cross it."""
        e = engine([SoftLimit(limit=SOFT), LeakProjection(limit=SOFT, horizon=HORIZON)])
        assert SOFT == e.threshold
        e.decide([child(1, 100, "a", leak_per_call=LEAK, calls_per_second=1.0)], 0.0)
        assert 200 * MiB == e.threshold
