"""Tests for celery_memguard.engine.Engine, driven by synthetic sample series.

No processes, no clock and no sleeping: every test builds ChildSample values and
passes ``now`` explicitly, including the overshoot simulations, which advance a
simulated clock by the engine's own ``next_delay``.
"""

from __future__ import annotations

import pytest

from celery_memguard.engine import ASSUMED_TASK_GROWTH, FIRST_LOOK, Engine
from celery_memguard.policies import HardLimit, SoftLimit
from celery_memguard.samples import Action, ChildSample, Decision

MiB = 1024 * 1024
SOFT = 200 * MiB
HARD = 400 * MiB
GRACE = 2.0
POLL = 1.0


def engine(*, soft: int | None = SOFT, hard: int | None = HARD, grace: float = GRACE, poll: float = POLL) -> Engine:
    policies = []
    if hard is not None:
        policies.append(HardLimit(limit=hard))
    if soft is not None:
        policies.append(SoftLimit(limit=soft))
    return Engine(policies, kill_grace=grace, poll_interval=poll)


def child(pid: int, mem: int, task_id: str | None = None, *, exact: bool = True, rss: int | None = None,
          tasks_run: int = 3, spawned_at: float = 0.0) -> ChildSample:
    return ChildSample(pid=pid, mem=mem, exact=exact, rss=mem if rss is None else rss,
                       task=f"app.tasks.{task_id}" if task_id else None, task_id=task_id,
                       tasks_run=tasks_run, spawned_at=spawned_at)


def actions(decisions: list[Decision]) -> list[tuple[Action, int, str | None]]:
    return [(d.action, d.pid, d.task_id) for d in decisions]


class TestEngineLimits:
    """Which decisions the engine issues, and how often."""

    def test_below_limits_nothing(self) -> None:
        """Children below every limit get no decision."""
        e = engine()
        assert [] == e.decide([child(1, 100 * MiB, "a"), child(2, 150 * MiB)], 0.0)

    def test_soft_limit_recycles_once(self) -> None:
        """A child above the soft limit gets one RECYCLE, not one per poll."""
        e = engine()
        decisions = [e.decide([child(1, 250 * MiB, "a", spawned_at=10.0)], 100.0 + n * 0.5) for n in range(10)]
        assert [Decision(Action.RECYCLE, 1, "soft_limit", 250 * MiB, SOFT, "app.tasks.a", "a", 3, 90.0)] == decisions[0]
        assert [[]] * 9 == decisions[1:]
        assert Action.RECYCLE is e.pending(1)

    def test_soft_recycle_once_across_tasks(self) -> None:
        """A pending recycle is not repeated when the child moves on to another task."""
        e = engine()
        assert [(Action.RECYCLE, 1, "a")] == actions(e.decide([child(1, 250 * MiB, "a")], 0.0))
        assert [] == e.decide([child(1, 250 * MiB, "b")], 1.0)
        assert [] == e.decide([child(1, 250 * MiB)], 2.0)

    def test_hard_limit_busy_kills_once_per_task(self) -> None:
        """A busy child above the hard limit gets one KILL for its task while within the grace."""
        e = engine()
        first = e.decide([child(1, 500 * MiB, "a")], 0.0)
        assert [Decision(Action.KILL, 1, "hard_limit", 500 * MiB, HARD, "app.tasks.a", "a", 3, 0.0)] == first
        assert [[], [], []] == [e.decide([child(1, 500 * MiB, "a")], t) for t in (0.5, 1.0, 1.9)]
        assert Action.KILL is e.pending(1)

    def test_hard_limit_supersedes_pending_recycle(self) -> None:
        """A child already told to recycle is still killed when it crosses the hard limit."""
        e = engine()
        assert [(Action.RECYCLE, 1, "a")] == actions(e.decide([child(1, 250 * MiB, "a")], 0.0))
        assert [(Action.KILL, 1, "a")] == actions(e.decide([child(1, 450 * MiB, "a")], 1.0))

    def test_hard_over_soft_is_most_severe(self) -> None:
        """A busy child above both limits gets only the KILL."""
        e = engine()
        assert [(Action.KILL, 1, "a")] == actions(e.decide([child(1, 450 * MiB, "a")], 0.0))

    def test_escalates_after_kill_grace(self) -> None:
        """The same task still running kill_grace after its KILL gets one FORCE_KILL."""
        e = engine()
        e.decide([child(1, 500 * MiB, "a")], 10.0)
        assert [] == e.decide([child(1, 500 * MiB, "a")], 10.0 + GRACE - 0.01)
        forced = e.decide([child(1, 510 * MiB, "a")], 10.0 + GRACE)
        assert [Decision(Action.FORCE_KILL, 1, "hard_limit", 510 * MiB, HARD, "app.tasks.a", "a", 3, 0.0)] == forced
        assert [[], []] == [e.decide([child(1, 510 * MiB, "a")], 10.0 + GRACE + d) for d in (0.5, 5.0)]
        assert Action.FORCE_KILL is e.pending(1)

    def test_grace_counts_from_when_the_stop_was_sent(self) -> None:
        """Issue 13.1: a stop sent 0.8 s after its poll began is escalated kill_grace after it was sent."""
        e = engine()
        assert [(Action.KILL, 1, "a")] == actions(e.decide([child(1, 500 * MiB, "a")], 10.0))
        e.order_sent(1, 10.8)
        assert [] == e.decide([child(1, 500 * MiB, "a")], 10.0 + GRACE)
        assert [] == e.decide([child(1, 500 * MiB, "a")], 10.8 + GRACE - 0.01)
        assert [(Action.FORCE_KILL, 1, "a")] == actions(e.decide([child(1, 500 * MiB, "a")], 10.8 + GRACE))

    def test_order_sent_ignores_recycles_and_earlier_times(self) -> None:
        """order_sent only moves a KILL's start later; a recycle or an unknown child is left alone."""
        e = engine()
        e.decide([child(1, 500 * MiB, "a"), child(2, 300 * MiB)], 10.0)
        e.order_sent(1, 9.0)
        e.order_sent(2, 11.0)
        e.order_sent(3, 11.0)
        assert [(Action.FORCE_KILL, 1, "a")] == actions(e.decide([child(1, 500 * MiB, "a")], 10.0 + GRACE))

    def test_escalates_even_if_memory_dropped(self) -> None:
        """A task that swallowed MemoryLimitExceeded is force-killed even after freeing memory."""
        e = engine()
        e.decide([child(1, 500 * MiB, "a")], 0.0)
        assert [(Action.FORCE_KILL, 1, "a")] == actions(e.decide([child(1, 50 * MiB, "a")], GRACE))

    def test_no_escalation_when_task_finished(self) -> None:
        """A child idle after its KILL is not force-killed (it exits on its own) nor recycled again."""
        e = engine()
        e.decide([child(1, 500 * MiB, "a")], 0.0)
        assert [[], []] == [e.decide([child(1, 500 * MiB)], t) for t in (GRACE, 2 * GRACE)]

    def test_no_escalation_when_task_changed(self) -> None:
        """A child that moved on to a task below the limit is not force-killed."""
        e = engine(soft=None)
        e.decide([child(1, 500 * MiB, "a")], 0.0)
        assert [[], []] == [e.decide([child(1, 300 * MiB, "b")], t) for t in (GRACE, 2 * GRACE)]

    def test_new_task_above_hard_limit_gets_new_kill(self) -> None:
        """A new task on the same child above the hard limit gets its own KILL, then its own grace."""
        e = engine()
        assert [(Action.KILL, 1, "a")] == actions(e.decide([child(1, 500 * MiB, "a")], 0.0))
        assert [(Action.KILL, 1, "b")] == actions(e.decide([child(1, 500 * MiB, "b")], 1.5))
        assert [] == e.decide([child(1, 500 * MiB, "b")], 1.5 + GRACE - 0.01)
        assert [(Action.FORCE_KILL, 1, "b")] == actions(e.decide([child(1, 500 * MiB, "b")], 1.5 + GRACE))

    def test_idle_child_above_hard_limit_recycled(self) -> None:
        """An idle child above the hard limit is recycled once with reason hard_limit."""
        e = engine()
        first = e.decide([child(1, 500 * MiB, spawned_at=4.0)], 5.0)
        assert [Decision(Action.RECYCLE, 1, "hard_limit", 500 * MiB, HARD, None, None, 3, 1.0)] == first
        assert [] == e.decide([child(1, 500 * MiB)], 6.0)

    def test_idle_recycled_child_killed_when_it_takes_a_task(self) -> None:
        """A child ordered to recycle while idle is killed if it still starts a task above the hard limit."""
        e = engine()
        e.decide([child(1, 500 * MiB)], 0.0)
        assert [(Action.KILL, 1, "a")] == actions(e.decide([child(1, 500 * MiB, "a")], 1.0))

    @pytest.mark.parametrize("task_id", [None, "a"])
    def test_inexact_samples_never_trigger(self, task_id: str | None) -> None:
        """Upper bounds (exact=False) far above every limit never produce a decision."""
        e = engine()
        assert [[]] * 5 == [e.decide([child(1, 5000 * MiB, task_id, exact=False)], t) for t in range(5)]

    def test_orders_forgotten_when_pid_disappears(self) -> None:
        """A pid missing from a poll loses its pending order; if it comes back it is judged afresh."""
        e = engine()
        e.decide([child(1, 250 * MiB, "a"), child(2, 500 * MiB, "b")], 0.0)
        assert (Action.RECYCLE, Action.KILL) == (e.pending(1), e.pending(2))
        e.decide([], 1.0)
        assert (None, None) == (e.pending(1), e.pending(2))
        assert [(Action.RECYCLE, 1, "a"), (Action.KILL, 2, "b")] == actions(
            e.decide([child(1, 250 * MiB, "a"), child(2, 500 * MiB, "b")], 2.0))

    def test_children_are_independent(self) -> None:
        """One child's orders do not affect another's."""
        e = engine()
        assert [(Action.KILL, 1, "a")] == actions(e.decide([child(1, 500 * MiB, "a"), child(2, 10 * MiB, "x")], 0.0))
        assert [(Action.KILL, 2, "y")] == actions(e.decide([child(1, 500 * MiB, "a"), child(2, 500 * MiB, "y")], 1.0))
        assert [(Action.FORCE_KILL, 1, "a")] == actions(
            e.decide([child(1, 500 * MiB, "a"), child(2, 500 * MiB, "y")], GRACE))

    def test_no_policies(self) -> None:
        """Without policies there is nothing to decide and no threshold."""
        e = Engine([], kill_grace=GRACE, poll_interval=POLL)
        assert (None, None) == (e.threshold, e.hard_limit)
        assert [] == e.decide([child(1, 10_000 * MiB, "a")], 0.0)

    def test_threshold_and_hard_limit(self) -> None:
        """threshold is the smallest policy threshold; hard_limit the HardLimit's limit."""
        assert (SOFT, HARD) == (engine().threshold, engine().hard_limit)
        assert (HARD, HARD) == (engine(soft=None).threshold, engine(soft=None).hard_limit)
        assert (SOFT, None) == (engine(hard=None).threshold, engine(hard=None).hard_limit)


class TestEngineNextDelay:
    """Adaptive poll delay."""

    def test_first_look_is_soon(self) -> None:
        """A child seen for the first time is looked at again after FIRST_LOOK."""
        e = engine()
        e.decide([child(1, 10 * MiB)], 0.0)
        assert FIRST_LOOK == e.next_delay

    def test_first_look_never_longer_than_interval(self) -> None:
        """With a poll interval below FIRST_LOOK, the interval wins."""
        e = engine(poll=0.05)
        e.decide([child(1, 10 * MiB)], 0.0)
        assert 0.05 == e.next_delay

    def test_flat_idle_child_uses_poll_interval(self) -> None:
        """Without a hard limit, a child whose memory does not grow is polled at poll_interval."""
        e = engine(hard=None)
        e.decide([child(1, 300 * MiB)], 0.0)
        assert [POLL, POLL, POLL] == [(e.decide([child(1, 300 * MiB)], t), e.next_delay)[1] for t in (0.1, 1.1, 2.1)]

    @pytest.mark.parametrize("task_id", ["a", None])
    def test_flat_child_assumes_fast_growth(self, task_id: str | None) -> None:
        """With a hard limit, a busy or idle child that has not grown yet is looked at before it could use a quarter of its headroom at ASSUMED_TASK_GROWTH."""
        e = engine(soft=None, hard=1000 * MiB)
        e.decide([child(1, 300 * MiB, task_id)], 0.0)
        e.decide([child(1, 300 * MiB, task_id)], 0.1)
        assert pytest.approx(0.25 * 700 * MiB / ASSUMED_TASK_GROWTH) == e.next_delay

    def test_flat_busy_child_without_hard_limit_uses_poll_interval(self) -> None:
        """Without a hard limit nothing needs fast polls."""
        e = Engine([SoftLimit(limit=SOFT)], kill_grace=GRACE, poll_interval=POLL)
        e.decide([child(1, 300 * MiB, "a")], 0.0)
        e.decide([child(1, 300 * MiB, "a")], 0.1)
        assert POLL == e.next_delay

    def test_idle_shrinking_child_uses_poll_interval(self) -> None:
        """Without a hard limit, an idle child giving memory back is polled at poll_interval."""
        e = engine(hard=None)
        e.decide([child(1, 300 * MiB)], 0.0)
        e.decide([child(1, 200 * MiB)], 0.1)
        assert POLL == e.next_delay

    def test_no_decisions_yet_default(self) -> None:
        """Before any poll the delay is poll_interval."""
        assert POLL == engine().next_delay

    def test_delay_shrinks_towards_hard_limit(self) -> None:
        """At a constant growth rate the delay shrinks as the headroom to the hard limit shrinks."""
        e = engine(soft=None, hard=1000 * MiB)
        rate = 400 * MiB  # per second
        t, mem, delays = 0.0, 100 * MiB, []
        e.decide([child(1, mem, "a")], t)
        for _ in range(8):
            t += 0.1
            mem += int(rate * 0.1)
            e.decide([child(1, mem, "a")], t)
            delays.append(e.next_delay)
        assert sorted(delays, reverse=True) == delays
        assert delays[0] > delays[-1]
        assert all(d < POLL for d in delays)
        # A quarter of the remaining headroom at the measured rate, or at ASSUMED_TASK_GROWTH if faster.
        assert pytest.approx(0.25 * (1000 * MiB - mem) / max(rate, ASSUMED_TASK_GROWTH), rel=1e-6) == delays[-1]

    def test_delay_uses_fastest_growing_child(self) -> None:
        """The delay is the minimum over children, so a quiet child does not slow a growing one's polls."""
        e = engine(soft=None, hard=2000 * MiB)
        e.decide([child(1, 100 * MiB), child(2, 900 * MiB)], 0.0)
        e.decide([child(1, 100 * MiB), child(2, 1000 * MiB)], 0.05)  # 2000 MiB/s, 1000 MiB left
        assert pytest.approx(0.25 * 1000 / 2000) == e.next_delay

    def test_delay_floor_is_min_interval(self) -> None:
        """However fast the growth, the delay never drops below min_interval."""
        e = engine(soft=None)
        e.decide([child(1, 390 * MiB, "a")], 0.0)
        e.decide([child(1, 399 * MiB, "a")], 0.001)
        assert e.min_interval == e.next_delay
        assert 0.02 == e.min_interval

    def test_delay_above_limit_is_min_interval(self) -> None:
        """A growing child already above the hard limit is polled at min_interval."""
        e = engine(soft=None)
        e.decide([child(1, 450 * MiB, "a")], 0.0)
        e.decide([child(1, 460 * MiB, "a")], 0.1)
        assert e.min_interval == e.next_delay

    def test_no_hard_limit_uses_poll_interval(self) -> None:
        """With only a soft limit growth does not shorten the interval."""
        e = engine(hard=None)
        e.decide([child(1, 100 * MiB, "a")], 0.0)
        e.decide([child(1, 190 * MiB, "a")], 0.1)
        assert POLL == e.next_delay

    def test_force_killed_child_uses_poll_interval(self) -> None:
        """A child already sent SIGKILL no longer shortens the interval."""
        e = engine(soft=None)
        e.decide([child(1, 500 * MiB, "a")], 0.0)
        e.decide([child(1, 600 * MiB, "a")], GRACE)
        assert Action.FORCE_KILL is e.pending(1)
        e.decide([child(1, 700 * MiB, "a")], GRACE + 0.1)
        assert POLL == e.next_delay

    def test_min_interval_never_above_poll_interval(self) -> None:
        """A poll interval below the default floor lowers the floor."""
        assert 0.01 == Engine([HardLimit(limit=HARD)], kill_grace=GRACE, poll_interval=0.01).min_interval


def simulate(*, limit: int, rate_mib_s: float, base: int, start: float, poll: float = POLL,
             horizon: float = 120.0) -> tuple[float, int]:
    """Grow a busy child linearly from ``start`` and poll at next_delay; ``(peak / limit, polls)`` at the KILL."""
    e = Engine([HardLimit(limit=limit)], kill_grace=GRACE, poll_interval=poll)
    t, polls = 0.0, 0
    while t < horizon:
        mem = base + int(max(0.0, t - start) * rate_mib_s * MiB)
        idle = child(2, 80 * MiB)  # a quiet neighbour, as in a real pool
        polls += 1
        decisions = e.decide([child(1, mem, "grow"), idle], t)
        if decisions:
            assert [(Action.KILL, 1, "grow")] == actions(decisions)
            return mem / limit, polls
        t += e.next_delay
    raise AssertionError("never killed")


class TestEngineOvershoot:
    """Simulated fast growth sampled at the engine's own next_delay (simulated time, no sleeping)."""

    @pytest.mark.parametrize("rate", [400, 1000])
    @pytest.mark.parametrize("limit_mib", [256, 512, 1024, 2048])
    def test_growth_from_first_sight_within_5_percent(self, rate: int, limit_mib: int) -> None:
        """A child growing at 400 or 1000 MiB/s from the first poll is killed within 5% of the limit."""
        ratio, polls = simulate(limit=limit_mib * MiB, rate_mib_s=rate, base=50 * MiB, start=0.0)
        # At most the growth during one min_interval (20 ms) past the limit, and never over 10%.
        assert ratio <= min(1.10, 1.0 + (rate * 0.02 + 1) / limit_mib), (ratio, polls)
        assert ratio > 1.0

    @pytest.mark.parametrize(("rate", "limit_mib"), [(400, 1024), (400, 2048), (1000, 2048)])
    @pytest.mark.parametrize("phase", [0.0, 0.01, 0.25, 0.5, 0.75, 0.99])
    def test_growth_after_idle_within_5_percent(self, rate: int, limit_mib: int, phase: float) -> None:
        """Growth that starts at any moment after flat polls is killed within 5% while one interval of growth fits in the headroom."""
        # Flat polls at t = 0, 0.1, 1.1, 2.1, ...; growth starts `phase` of an interval after the one at 2.1.
        ratio, polls = simulate(limit=limit_mib * MiB, rate_mib_s=rate, base=50 * MiB, start=2.1 + phase * POLL)
        assert ratio <= 1.05, (ratio, polls)

    def test_overshoot_bounded_by_one_floor_interval(self) -> None:
        """Near the limit the overshoot is at most the growth during one min_interval."""
        ratio, _ = simulate(limit=512 * MiB, rate_mib_s=1000, base=50 * MiB, start=0.0)
        assert (ratio - 1.0) * 512 <= 1000 * 0.02 + 1

    def test_growth_right_after_flat_poll_with_default_interval(self) -> None:
        """400 MiB/s growth starting just after a flat poll stays within 10% of a 256 MiB limit with defaults."""
        ratio, polls = simulate(limit=256 * MiB, rate_mib_s=400, base=50 * MiB, start=2.1 + 0.001)
        assert ratio <= 1.10, (ratio, polls)


class TestExactReadingAtOnce:
    """A pool budget asking for exact readings gets them in the same instant, not a poll later."""

    def test_pool_budget_over_on_upper_bounds_polls_again_at_once(self) -> None:
        from celery_memguard.policies import PoolLimit

        e = Engine([PoolLimit(limit=1000 * MiB)], kill_grace=GRACE, poll_interval=POLL)
        bounds = [child(1, 600 * MiB, exact=False), child(2, 500 * MiB, exact=False)]
        assert [] == e.decide(bounds, 0.0)  # upper bounds are no evidence
        assert 0 == e.threshold and 0.0 == e.next_delay
        exact = [child(1, 580 * MiB), child(2, 480 * MiB)]
        assert [(Action.RECYCLE, 1, None)] == actions(e.decide(exact, 0.001))
        assert POLL == e.next_delay  # the bar stayed where it was: back to the normal pace

    def test_no_immediate_poll_when_the_bounds_fit(self) -> None:
        from celery_memguard.policies import PoolLimit

        e = Engine([PoolLimit(limit=1000 * MiB)], kill_grace=GRACE, poll_interval=POLL)
        assert [] == e.decide([child(1, 400 * MiB, exact=False), child(2, 500 * MiB, exact=False)], 0.0)
        assert e.threshold is None and e.next_delay == FIRST_LOOK  # new children: the usual first look

    def test_exact_readings_over_the_budget_need_no_second_look(self) -> None:
        from celery_memguard.policies import PoolLimit

        e = Engine([PoolLimit(limit=1000 * MiB)], kill_grace=GRACE, poll_interval=POLL)
        assert [(Action.RECYCLE, 1, None)] == actions(e.decide([child(1, 600 * MiB), child(2, 500 * MiB)], 0.0))
        assert e.next_delay == FIRST_LOOK  # new children: the usual first look, no immediate poll


class TestDraining:
    """Warm shutdown (issue 13.2): only the hard limit and its escalation while the pool drains."""

    def test_no_soft_recycle_while_draining(self) -> None:
        e = engine()
        e.draining = True
        assert [] == e.decide([child(1, 250 * MiB, "a")], 0.0)
        assert e.pending(1) is None

    def test_hard_limit_and_escalation_while_draining(self) -> None:
        e = engine()
        e.draining = True
        assert [(Action.KILL, 1, "a")] == actions(e.decide([child(1, 450 * MiB, "a")], 0.0))
        assert [(Action.FORCE_KILL, 1, "a")] == actions(e.decide([child(1, 450 * MiB, "a")], GRACE + 0.1))


class TestIdleChildrenWatched:
    """Issue 13.9: with task starts watched on the board, idle children need no fast polling."""

    def _delay(self, *, watched: bool, task_id: str | None, spawned_at: float = 5.0) -> float:
        e = engine(hard=1000 * MiB, soft=None)
        e.idle_watched = watched
        for t in (10.0, 10.5):
            e.decide([child(1, 300 * MiB, task_id, spawned_at=spawned_at)], t)
        return e.next_delay

    def test_idle_child_polled_at_the_interval(self) -> None:
        assert POLL == self._delay(watched=True, task_id=None)

    def test_busy_child_still_assumed_to_grow_fast(self) -> None:
        assert pytest.approx(0.25 * 700 * MiB / ASSUMED_TASK_GROWTH) == self._delay(watched=True, task_id="a")

    def test_unwatched_or_slotless_idle_child_assumed_to_grow_fast(self) -> None:
        fast = pytest.approx(0.25 * 700 * MiB / ASSUMED_TASK_GROWTH)
        assert fast == self._delay(watched=False, task_id=None)
        assert fast == self._delay(watched=True, task_id=None, spawned_at=0.0)  # no board slot: tasks unseen


class TestStopsTasks:
    """Only a policy that may stop a running task makes the monitor look at every task start at once."""

    def test_system_pressure_recycles_only_without_critical_available(self) -> None:
        """SystemPressure recycles idle children; it stops a task only below ``critical_available`` (before:
        any SystemPressure counted as stopping tasks, one poll per task start)."""
        from celery_memguard.policies import SystemPressure

        recycling = [SystemPressure(min_available=512 * MiB), SystemPressure(psi_threshold=10.0)]
        assert not Engine([SoftLimit(limit=1024 * MiB), *recycling], kill_grace=2.0, poll_interval=0.5).stops_tasks
        critical = SystemPressure(min_available=512 * MiB, critical_available=128 * MiB)
        assert Engine([critical], kill_grace=2.0, poll_interval=0.5).stops_tasks
        assert Engine([HardLimit(limit=1024 * MiB)], kill_grace=2.0, poll_interval=0.5).stops_tasks
