"""Tests for the engine's strikes: soft actions need N consecutive violating polls, hard ones none."""

from __future__ import annotations

import pytest

from celery_memguard.policies import HardLimit, LeakProjection, Lifetime, PoolLimit, SoftLimit
from celery_memguard.samples import Action

from .helpers import MiB, acts, child, engine

SOFT = 200 * MiB
HARD = 400 * MiB


def limits(**options: object):  # type: ignore[no-untyped-def]
    """An engine with both per-child limits and the given options."""
    return engine([HardLimit(limit=HARD), SoftLimit(limit=SOFT)], **options)


class TestStrikes:
    """Engine(strikes=N)."""

    def test_soft_recycle_on_the_nth_consecutive_poll(self) -> None:
        """With strikes=3 a child above the soft limit is recycled on the third violating poll, not before."""
        e = limits(strikes=3)
        out = [acts(e.decide([child(1, 250, "a")], float(t))) for t in range(4)]
        assert [[], [], [(Action.RECYCLE, 1, "soft_limit")], []] == out

    def test_clean_reading_resets(self) -> None:
        """A poll below the limit resets the count: the strikes must be consecutive."""
        e = limits(strikes=3)
        mems = [250, 250, 150, 250, 250, 250]
        out = [acts(e.decide([child(1, m, "a")], float(t))) for t, m in enumerate(mems)]
        assert [[]] * 5 + [[(Action.RECYCLE, 1, "soft_limit")]] == out

    def test_inexact_reading_resets(self) -> None:
        """An upper bound (no violation) between two violating polls breaks the run."""
        e = limits(strikes=2)
        e.decide([child(1, 250, "a")], 0.0)
        e.decide([child(1, 250, "a", exact=False)], 1.0)
        assert [] == e.decide([child(1, 250, "a")], 2.0)
        assert [(Action.RECYCLE, 1, "soft_limit")] == acts(e.decide([child(1, 250, "a")], 3.0))

    @pytest.mark.parametrize("strikes", [0, 1])
    def test_zero_and_one_act_at_once(self, strikes: int) -> None:
        """strikes=0 and strikes=1 both act on the first violating poll."""
        assert [(Action.RECYCLE, 1, "soft_limit")] == acts(limits(strikes=strikes).decide([child(1, 250, "a")], 0.0))

    def test_hard_kill_never_delayed(self) -> None:
        """A busy child above the hard limit is killed on the first poll whatever the strikes."""
        assert [(Action.KILL, 1, "hard_limit")] == acts(limits(strikes=5).decide([child(1, 500, "a")], 0.0))

    def test_hard_idle_recycle_never_delayed(self) -> None:
        """An idle child above the hard limit is recycled on the first poll whatever the strikes."""
        assert [(Action.RECYCLE, 1, "hard_limit")] == acts(limits(strikes=5).decide([child(1, 500)], 0.0))

    def test_kill_after_soft_strikes_started(self) -> None:
        """A child counting soft strikes that crosses the hard limit is killed at once."""
        e = limits(strikes=3)
        e.decide([child(1, 250, "a")], 0.0)
        assert [(Action.KILL, 1, "hard_limit")] == acts(e.decide([child(1, 450, "a")], 1.0))

    def test_strikes_per_child(self) -> None:
        """Each child counts its own strikes."""
        e = limits(strikes=2)
        e.decide([child(1, 250, "a"), child(2, 100, "b")], 0.0)
        out = acts(e.decide([child(1, 250, "a"), child(2, 250, "b")], 1.0))
        assert [(Action.RECYCLE, 1, "soft_limit")] == out
        assert [(Action.RECYCLE, 2, "soft_limit")] == acts(e.decide([child(1, 250, "a"), child(2, 250, "b")], 2.0))

    def test_gone_child_forgets_its_strikes(self) -> None:
        """A pid missing from a poll starts from zero when it comes back."""
        e = limits(strikes=2)
        e.decide([child(1, 250, "a")], 0.0)
        e.decide([], 1.0)
        assert [] == e.decide([child(1, 250, "a")], 2.0)

    def test_pool_victim_needs_strikes_too(self) -> None:
        """A pool-limit recycle is a soft action: it waits for the strikes."""
        e = engine([PoolLimit(limit=500 * MiB)], strikes=2)
        pool = [child(1, 300, "a"), child(2, 250, "b")]
        assert [[], [(Action.RECYCLE, 1, "pool_limit")]] == [acts(e.decide(pool, float(t))) for t in range(2)]

    def test_leak_projection_not_debounced(self) -> None:
        """A leak projection (confirmed upstream, acted on only when idle) goes at its first idle poll."""
        e = engine([SoftLimit(limit=SOFT), LeakProjection(limit=SOFT, horizon=100.0)], strikes=3)
        leaker = dict(leak_per_call=1 * MiB, calls_per_second=1.0)
        out = [acts(e.decide([child(1, 150, task, **leaker)], float(t)))  # type: ignore[arg-type]
               for t, task in enumerate(["a", None, "b", None])]
        assert [[], [(Action.RECYCLE, 1, "leak_projection")], [], []] == out

    def test_lifetime_not_debounced(self) -> None:
        """A lifetime that has run out does not flicker: it is acted on at once."""
        e = engine([Lifetime(max_lifetime=10.0, jitter=0.0)], strikes=3)
        e.decide([child(1, 100, spawned_at=0.0)], 0.0)
        assert [(Action.RECYCLE, 1, "lifetime")] == acts(e.decide([child(1, 100, spawned_at=0.0)], 10.0))

    def test_negative_strikes_rejected(self) -> None:
        """strikes must be >= 0."""
        with pytest.raises(ValueError):
            limits(strikes=-1)
