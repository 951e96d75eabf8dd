"""Tests for Lifetime and MaxTasks: jittered per-child limits, spread so children never restart together."""

from __future__ import annotations

import itertools
import random

import pytest

from celery_memguard.policies import Lifetime, MaxTasks
from celery_memguard.policies.lifetime import spread_draw
from celery_memguard.samples import Action

from .helpers import child, engine

LIFE = 600.0
JITTER = 0.2


def min_gap(values: list[float]) -> float:
    """The smallest distance between two of ``values``."""
    ordered = sorted(values)
    return min(b - a for a, b in itertools.pairwise(ordered))


class TestSpreadDraw:
    """spread_draw(rng, lo, hi, others)."""

    def test_without_others_uniform_in_window(self) -> None:
        """With nothing to avoid, draws cover the window."""
        rng = random.Random(1)
        draws = [spread_draw(rng, 10.0, 20.0, []) for _ in range(200)]
        assert 10.0 <= min(draws) < 10.5 and 19.5 < max(draws) <= 20.0

    @pytest.mark.parametrize("seed", range(20))
    def test_floor_from_others(self, seed: int) -> None:
        """Each draw is at least (hi - lo) / (4 n) away from the n - 1 values drawn before it."""
        rng = random.Random(seed)
        values: list[float] = []
        for n in range(1, 13):
            value = spread_draw(rng, 0.0, 1.0, values)
            assert 0.0 <= value <= 1.0
            if values:
                assert min(abs(value - v) for v in values) >= 1.0 / (4 * n) - 1e-12
            values.append(value)

    @pytest.mark.parametrize("seed", range(50))
    def test_floor_with_others_anywhere(self, seed: int) -> None:
        """With others inside and outside the window, the draw keeps (hi - lo) / (4 (k + 1)) from each, k inside."""
        rng = random.Random(seed)
        others = [rng.uniform(-0.5, 1.5) for _ in range(rng.randint(1, 12))]
        inside = sum(1 for p in others if 0.0 <= p <= 1.0)
        value = spread_draw(rng, 0.0, 1.0, others)
        assert 0.0 <= value <= 1.0
        assert min(abs(value - p) for p in others) >= 1.0 / (4 * (inside + 1)) - 1e-12

    def test_others_outside_the_window_count_near_its_edge(self) -> None:
        """A value just outside the window still pushes the draw away."""
        rng = random.Random(3)
        draws = [spread_draw(rng, 0.0, 1.0, [-0.01]) for _ in range(100)]
        assert min(draws) >= 0.49

    def test_seeded_draws_repeat(self) -> None:
        """The same seed gives the same draws."""
        first = [spread_draw(random.Random(7), 0.0, 1.0, [0.5]) for _ in range(3)]
        assert first[0] == first[1] == first[2]

    def test_empty_window(self) -> None:
        """A window of zero width (jitter 0) gives its only point."""
        assert 5.0 == spread_draw(random.Random(1), 5.0, 5.0, [5.0])


class TestLifetime:
    """Lifetime(max_lifetime=..., jitter=..., rng=...)."""

    def test_children_started_together_restart_apart(self) -> None:
        """Eight children spawned at once restart at spread times inside [L (1 - j), L], never together."""
        e = engine([Lifetime(max_lifetime=LIFE, jitter=JITTER, rng=random.Random(42))])
        pids = range(1, 9)
        restarted: dict[int, float] = {}
        for t in range(int(LIFE) + 2):
            live = [child(p, 100, spawned_at=0.0) for p in pids if p not in restarted]
            for decision in e.decide(live, float(t)):
                assert (Action.RECYCLE, "lifetime", "seconds") == (decision.action, decision.reason, decision.unit)
                restarted[decision.pid] = float(t)
        assert set(pids) == set(restarted)
        times = list(restarted.values())
        assert LIFE * (1 - JITTER) <= min(times) and max(times) <= LIFE + 1
        floor = LIFE * JITTER / (4 * 8)
        assert min_gap(times) >= floor - 1.0  # polls every second

    def test_recycled_exactly_at_its_deadline(self) -> None:
        """A child is left alone before its own deadline and recycled from it on."""
        policy = Lifetime(max_lifetime=LIFE, jitter=JITTER, rng=random.Random(5))
        assert None is policy.check(child(1, 100, spawned_at=100.0), 100.0)
        deadline = policy.deadline(1)
        assert deadline is not None and 100.0 + LIFE * (1 - JITTER) <= deadline <= 100.0 + LIFE
        assert None is policy.check(child(1, 100, spawned_at=100.0), deadline - 0.01)
        violation = policy.check(child(1, 100, spawned_at=100.0), deadline)
        assert violation is not None and round(deadline - 100.0) == violation.limit

    def test_no_jitter_means_the_configured_maximum(self) -> None:
        """jitter=0 gives every child exactly max_lifetime."""
        policy = Lifetime(max_lifetime=LIFE, jitter=0.0)
        for pid in (1, 2, 3):
            policy.check(child(pid, 100, spawned_at=0.0), 0.0)
        assert [LIFE] * 3 == [policy.deadline(p) for p in (1, 2, 3)]

    def test_seeded_draws_repeat(self) -> None:
        """The same seed gives the same deadlines."""

        def deadlines(seed: int) -> list[float | None]:
            policy = Lifetime(max_lifetime=LIFE, jitter=JITTER, rng=random.Random(seed))
            for pid in range(1, 5):
                policy.check(child(pid, 100, spawned_at=0.0), 0.0)
            return [policy.deadline(p) for p in range(1, 5)]

        assert deadlines(9) == deadlines(9)
        assert deadlines(9) != deadlines(10)

    def test_replacement_avoids_the_others(self) -> None:
        """A replacement child spawned later gets a deadline away from those of the children alive."""
        policy = Lifetime(max_lifetime=LIFE, jitter=JITTER, rng=random.Random(2))
        for pid in (1, 2, 3):
            policy.check(child(pid, 100, spawned_at=0.0), 0.0)
        policy.child_exited(1)
        policy.check(child(4, 100, spawned_at=60.0), 60.0)
        others = [policy.deadline(2), policy.deadline(3)]
        new = policy.deadline(4)
        assert new is not None and all(d is not None for d in others)
        assert min(abs(new - d) for d in others if d is not None) >= LIFE * JITTER / (4 * 3)

    def test_unknown_spawn_time_counts_from_first_sight(self) -> None:
        """Without spawned_at the lifetime counts from the first poll that saw the child."""
        policy = Lifetime(max_lifetime=LIFE, jitter=0.0)
        policy.check(child(1, 100), 50.0)
        assert 50.0 + LIFE == policy.deadline(1)

    def test_reused_pid_gets_a_new_deadline(self) -> None:
        """A new child with a reused pid (another spawned_at) is judged afresh."""
        policy = Lifetime(max_lifetime=LIFE, jitter=0.0)
        policy.check(child(1, 100, spawned_at=0.0), 0.0)
        assert None is policy.check(child(1, 100, spawned_at=LIFE), LIFE + 1)
        assert 2 * LIFE == policy.deadline(1)

    @pytest.mark.parametrize(("life", "jitter"), [(0.0, 0.1), (10.0, -0.1), (10.0, 1.0)])
    def test_invalid_options_rejected(self, life: float, jitter: float) -> None:
        """A positive lifetime and a jitter fraction in [0, 1)."""
        with pytest.raises(ValueError):
            Lifetime(max_lifetime=life, jitter=jitter)


class TestMaxTasks:
    """MaxTasks(max_tasks=..., jitter=..., rng=...)."""

    def test_children_started_together_restart_apart(self) -> None:
        """Eight children running tasks in step get distinct limits spread inside [M (1 - j), M]."""
        e = engine([MaxTasks(max_tasks=1000, jitter=JITTER, rng=random.Random(42))])
        restarted: dict[int, int] = {}
        for n in range(1002):
            live = [child(p, 100, tasks_run=n) for p in range(1, 9) if p not in restarted]
            for decision in e.decide(live, float(n)):
                assert (Action.RECYCLE, "max_tasks", "tasks") == (decision.action, decision.reason, decision.unit)
                assert decision.tasks_run == decision.limit
                restarted[decision.pid] = n
        counts = [float(v) for v in restarted.values()]
        assert 8 == len(counts)
        assert 800 <= min(counts) and max(counts) <= 1000
        assert min_gap(counts) >= 1000 * JITTER / (4 * 8) - 1

    def test_recycled_when_limit_reached(self) -> None:
        """A child is left alone below its limit and recycled once it has run that many tasks."""
        policy = MaxTasks(max_tasks=100, jitter=0.0)
        assert None is policy.check(child(1, 100, tasks_run=99), 0.0)
        violation = policy.check(child(1, 100, tasks_run=100), 1.0)
        assert violation is not None and (100, "tasks") == (violation.limit, violation.unit)

    def test_spread_counts_tasks_left(self) -> None:
        """A new child's limit avoids the tasks the older children have left, not their limits."""
        policy = MaxTasks(max_tasks=100, jitter=0.5, rng=random.Random(1))
        policy.check(child(1, 100, tasks_run=0), 0.0)
        limit_1 = policy.limit_of(1)
        assert limit_1 is not None
        policy.check(child(1, 100, tasks_run=40), 1.0)
        policy.check(child(2, 100, tasks_run=0), 1.0)
        limit_2 = policy.limit_of(2)
        assert limit_2 is not None
        assert abs(limit_2 - (limit_1 - 40)) >= 50 / (4 * 2) - 1

    def test_reused_pid_detected_by_tasks_run_dropping(self) -> None:
        """A child whose task count went down is a new child with a reused pid."""
        policy = MaxTasks(max_tasks=10, jitter=0.0)
        assert policy.check(child(1, 100, tasks_run=10), 0.0) is not None
        assert None is policy.check(child(1, 100, tasks_run=0), 1.0)

    def test_limit_at_least_one(self) -> None:
        """Even max_tasks=1 with jitter keeps a limit of at least one task."""
        policy = MaxTasks(max_tasks=1, jitter=0.9, rng=random.Random(1))
        policy.check(child(1, 100, tasks_run=0), 0.0)
        assert 1 == policy.limit_of(1)

    @pytest.mark.parametrize(("tasks", "jitter"), [(0, 0.1), (10, 1.5)])
    def test_invalid_options_rejected(self, tasks: int, jitter: float) -> None:
        """A positive task count and a jitter fraction in [0, 1)."""
        with pytest.raises(ValueError):
            MaxTasks(max_tasks=tasks, jitter=jitter)

