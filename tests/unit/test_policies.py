"""Tests for celery_memguard.policies: SoftLimit, HardLimit and build_policies.

Policies are pure functions of one ChildSample; they act only on exact readings.
"""

from __future__ import annotations

import pytest

from celery_memguard.config import MemGuardConfig
from celery_memguard.policies import HardLimit, Policy, SoftLimit, build_policies
from celery_memguard.samples import Action, ChildSample, Violation

MiB = 1024 * 1024


def sample(mem: int, *, exact: bool = True, task_id: str | None = None) -> ChildSample:
    return ChildSample(pid=100, mem=mem, exact=exact, rss=mem, task="t" if task_id else None, task_id=task_id)


class TestSoftLimit:
    """SoftLimit(limit=...)."""

    def test_above_limit_recycles(self) -> None:
        """An exact reading above the limit asks for a recycle, busy or idle."""
        policy = SoftLimit(limit=100 * MiB)
        expected = Violation(Action.RECYCLE, "soft_limit", 100 * MiB)
        assert expected == policy.check(sample(101 * MiB), 0.0)
        assert expected == policy.check(sample(101 * MiB, task_id="a"), 0.0)

    def test_at_or_below_limit_is_fine(self) -> None:
        """Memory equal to or below the limit is not a violation."""
        policy = SoftLimit(limit=100 * MiB)
        assert None is policy.check(sample(100 * MiB), 0.0)
        assert None is policy.check(sample(1), 0.0)

    def test_inexact_reading_never_triggers(self) -> None:
        """An upper bound above the limit is not evidence of a violation."""
        assert None is SoftLimit(limit=100 * MiB).check(sample(10_000 * MiB, exact=False), 0.0)

    def test_threshold_is_limit(self) -> None:
        """The prober needs exact readings from the limit upwards."""
        assert 100 * MiB == SoftLimit(limit=100 * MiB).threshold

    @pytest.mark.parametrize("limit", [0, -1])
    def test_non_positive_limit_rejected(self, limit: int) -> None:
        """A limit must be positive."""
        with pytest.raises(ValueError):
            SoftLimit(limit=limit)


class TestHardLimit:
    """HardLimit(limit=...)."""

    def test_busy_child_above_limit_is_killed(self) -> None:
        """A busy child above the limit has its task stopped."""
        assert Violation(Action.KILL, "hard_limit", 100 * MiB) == HardLimit(limit=100 * MiB).check(
            sample(200 * MiB, task_id="a"), 0.0)

    def test_idle_child_above_limit_is_recycled(self) -> None:
        """An idle child above the limit has nothing to stop and is recycled."""
        assert Violation(Action.RECYCLE, "hard_limit", 100 * MiB) == HardLimit(limit=100 * MiB).check(
            sample(200 * MiB), 0.0)

    def test_at_limit_is_fine(self) -> None:
        """Memory equal to the limit is not a violation."""
        assert None is HardLimit(limit=100 * MiB).check(sample(100 * MiB, task_id="a"), 0.0)

    def test_inexact_reading_never_triggers(self) -> None:
        """An upper bound above the limit is not evidence of a violation."""
        assert None is HardLimit(limit=100 * MiB).check(sample(10_000 * MiB, exact=False, task_id="a"), 0.0)

    def test_is_a_policy(self) -> None:
        """Built-in limits implement the Policy interface and show their threshold."""
        policy = HardLimit(limit=5)
        assert isinstance(policy, Policy)
        assert "HardLimit(threshold=5)" == repr(policy)

    @pytest.mark.parametrize("limit", [0, -1])
    def test_non_positive_limit_rejected(self, limit: int) -> None:
        """A limit must be positive."""
        with pytest.raises(ValueError):
            HardLimit(limit=limit)


class TestBuildPolicies:
    """build_policies(config)."""

    def test_none_configured(self) -> None:
        """No limits, no policies."""
        assert [] == build_policies(MemGuardConfig.from_mapping({}, 1 << 30))

    def test_both_most_severe_first(self) -> None:
        """Both limits give HardLimit then SoftLimit with the configured sizes."""
        config = MemGuardConfig.from_mapping({"memguard_soft_limit": 100, "memguard_hard_limit": 200}, 1 << 30)
        policies = build_policies(config)
        assert [(HardLimit, 200), (SoftLimit, 100)] == [(type(p), p.threshold) for p in policies]

    def test_soft_only(self) -> None:
        """Only the soft limit gives only SoftLimit."""
        config = MemGuardConfig.from_mapping({"memguard_soft_limit": 100}, 1 << 30)
        assert [SoftLimit] == [type(p) for p in build_policies(config)]
