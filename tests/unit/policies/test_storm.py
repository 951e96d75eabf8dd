"""Tests for the recycle storm guard: the rate limit holds, hard kills pass, one finding per episode."""

from __future__ import annotations

import itertools

import pytest

from celery_memguard.policies import HardLimit, SoftLimit
from celery_memguard.policies.storm import LIMIT_UNREACHABLE, RECYCLE_STORM, Restart, StormGuard, describe_cause
from celery_memguard.samples import Action, Decision

from .helpers import MiB, acts, child, engine

SOFT = 150 * MiB
HARD = 400 * MiB


def restart(at: float, pid: int = 1, reason: str = "soft_limit", mem_mib: float = 180, tasks_run: int = 1,
            limit: int = SOFT, unit: str = "bytes") -> Restart:
    """A Restart record with memory in MiB."""
    return Restart(at, pid, reason, int(mem_mib * MiB), limit, unit, tasks_run)


class TestStormGuard:
    """StormGuard on its own."""

    def test_unlimited_always_allows(self) -> None:
        """Without a cap every recycle is allowed and the guard is disabled."""
        guard = StormGuard()
        for t in range(100):
            guard.record(float(t), restart(float(t)))
        assert (False, True) == (guard.enabled, guard.allow(100.0, 4))

    def test_cap_and_sliding_window(self) -> None:
        """At the cap a recycle is refused until the oldest restart leaves the window."""
        guard = StormGuard(max_recycles_per_minute=3)
        for t in (0.0, 10.0, 20.0):
            assert guard.allow(t, 4)
            guard.record(t, restart(t))
        assert (False, False, True) == (guard.allow(30.0, 4), guard.allow(59.9, 4), guard.allow(60.0, 4))
        assert 2.0 == guard.rate(60.0)

    def test_at_least_one_per_window(self) -> None:
        """A cap below one per minute still lets one recycle through per window."""
        guard = StormGuard(max_recycles_per_minute=0.2)
        assert guard.allow(0.0, 1)
        guard.record(0.0, restart(0.0))
        assert not guard.allow(1.0, 1)

    def test_throughput_share_cap(self) -> None:
        """max_throughput_loss caps the rate at loss * 60 * concurrency / spawn_time; the tighter cap wins."""
        guard = StormGuard(max_throughput_loss=0.1)
        assert None is guard.cap(4)
        guard.observe_spawn(2.0)
        assert pytest.approx(12.0) == guard.cap(4)
        both = StormGuard(max_recycles_per_minute=5, max_throughput_loss=0.1)
        both.observe_spawn(2.0)
        assert 5 == both.cap(4)  # the tighter of the two

    def test_spawn_time_is_the_median(self) -> None:
        """The spawn time is the median of the recent measurements (robust to one slow start)."""
        guard = StormGuard()
        assert None is guard.spawn_time
        for seconds in (1.0, 1.2, 9.0):
            guard.observe_spawn(seconds)
        assert 1.2 == guard.spawn_time

    def test_throughput_lost(self) -> None:
        """Throughput lost is recycles per minute times the spawn time over 60 s and the concurrency."""
        guard = StormGuard(max_recycles_per_minute=10)
        guard.observe_spawn(1.5)
        for t in range(8):
            guard.record(float(t), restart(float(t)))
        assert pytest.approx(8 * 1.5 / 60 / 4) == guard.throughput_lost(10.0, 4)

    def test_one_finding_per_episode(self) -> None:
        """The first deferral of an episode yields a finding; later ones do not, until a quiet window passes."""
        guard = StormGuard(max_recycles_per_minute=1)
        first = guard.deferred(0.0, [restart(0.0)], 4)
        assert first is not None and RECYCLE_STORM == first.event
        assert None is guard.deferred(30.0, [restart(30.0)], 4)
        guard.tick(89.9)
        assert guard.storming
        guard.tick(90.0)
        assert not guard.storming
        assert guard.deferred(91.0, [restart(91.0)], 4) is not None
        assert 2 == guard.episodes

    def test_no_deferral_no_finding(self) -> None:
        """An empty deferral list is not a storm."""
        assert None is StormGuard(max_recycles_per_minute=1).deferred(0.0, [], 4)

    @pytest.mark.parametrize("options", [{"max_recycles_per_minute": 0}, {"max_throughput_loss": 0.0},
                                         {"max_throughput_loss": 1.5}, {"window": 0.0}])
    def test_invalid_options_rejected(self, options: dict) -> None:
        """A positive cap, a loss fraction in (0, 1] and a positive window."""
        with pytest.raises(ValueError):
            StormGuard(**options)


class TestDescribeCause:
    """describe_cause(restarts, spawn, window)."""

    def test_soft_limit_below_baseline(self) -> None:
        """Fresh children over the soft limit mean the limit is below their baseline."""
        restarts = [restart(0.0, mem_mib=m, tasks_run=n) for m, n in ((170, 1), (180, 0), (190, 1))]
        assert ("soft limit 150 MiB is below the children's baseline 180 MiB right after spawn"
                == describe_cause(restarts, 1.0, 60.0))

    def test_seasoned_children_are_not_a_baseline_problem(self) -> None:
        """Children that ran many tasks before crossing the limit get the generic cause."""
        restarts = [restart(0.0, mem_mib=200, tasks_run=50) for _ in range(3)]
        assert ("3 of 3 restarts in the last 60 s were for soft_limit (median 200 MiB against 150 MiB)"
                == describe_cause(restarts, 1.0, 60.0))

    def test_max_tasks_too_low(self) -> None:
        """Restarts dominated by max_tasks name the task limit and the spawn time."""
        restarts = [restart(0.0, reason="max_tasks", limit=5, unit="tasks", tasks_run=5) for _ in range(4)]
        assert ("max_tasks 5 is too low with a 1.5 s spawn time: children are restarted every ~5 tasks"
                == describe_cause(restarts, 1.5, 60.0))

    def test_lifetime_too_short(self) -> None:
        """Restarts dominated by lifetime name the lifetime."""
        restarts = [restart(0.0, reason="lifetime", limit=20, unit="seconds") for _ in range(2)]
        assert "max child lifetime 20 s is too short" == describe_cause(restarts, None, 60.0)


class Pool:
    """A simulated prefork pool: a recycled child is replaced by a fresh pid before the next poll."""

    def __init__(self, size: int, baseline_mib: float) -> None:
        self.baseline = baseline_mib
        self.pids = itertools.count(100)
        self.children = [child(next(self.pids), baseline_mib, f"t{i}", tasks_run=1) for i in range(size)]

    def apply(self, decisions: list[Decision]) -> None:
        gone = {d.pid for d in decisions}
        self.children = [c if c.pid not in gone else child(next(self.pids), self.baseline, "t", tasks_run=1)
                         for c in self.children]


class TestEngineStorm:
    """The storm guard in the Engine, on the classic trap: a soft limit below the children's baseline."""

    def run(self, e, pool: Pool, seconds: int) -> list[tuple[float, Decision]]:  # type: ignore[no-untyped-def]
        out: list[tuple[float, Decision]] = []
        for t in range(seconds):
            decisions = e.decide(pool.children, float(t))
            out.extend((float(t), d) for d in decisions)
            pool.apply(decisions)
        return out

    def test_rate_limit_holds_and_one_finding_with_cause(self) -> None:
        """Over five storming minutes no sliding minute has more than the cap, and one finding names the cause."""
        e = engine([SoftLimit(limit=SOFT)], max_recycles_per_minute=10)
        e.observe_spawn(1.0)
        orders = self.run(e, Pool(4, 180), 300)
        times = [t for t, _ in orders]
        assert all(sum(1 for u in times if s <= u < s + 60) <= 10 for s in range(0, 300))
        assert len(times) >= 45  # the cap is used, not starved
        findings = e.findings()
        assert [RECYCLE_STORM] == [f.event for f in findings]
        fields = findings[0].fields
        assert {"spawn_time_s": 1.0, "recycles_per_minute": 10.0, "max_recycles_per_minute": 10.0,
                "throughput_lost": round(10 * 1.0 / 60 / 4, 3), "concurrency": 4} == {
            k: fields[k] for k in ("spawn_time_s", "recycles_per_minute", "max_recycles_per_minute",
                                   "throughput_lost", "concurrency")}
        assert "soft limit 150 MiB is below the children's baseline 180 MiB right after spawn" == fields["cause"]
        assert [] == e.findings()  # drained

    def test_without_cap_every_recycle_goes(self) -> None:
        """Without a cap the engine orders every recycle and reports no storm."""
        e = engine([SoftLimit(limit=SOFT)])
        orders = self.run(e, Pool(4, 180), 30)
        assert 4 * 30 == len(orders)
        assert [] == e.findings()

    def test_hard_kill_never_deferred(self) -> None:
        """With the window full, a child crossing the hard limit is still killed at once."""
        e = engine([HardLimit(limit=HARD), SoftLimit(limit=SOFT)], max_recycles_per_minute=2)
        e.decide([child(1, 180, "a"), child(2, 180, "b"), child(3, 180, "c")], 0.0)
        assert (Action.RECYCLE, Action.RECYCLE, None) == (e.pending(1), e.pending(2), e.pending(3))
        assert 0.0 == e.deferred(3)
        assert [(Action.KILL, 4, "hard_limit")] == acts(e.decide([child(3, 180, "c"), child(4, 500, "d")], 1.0))

    def test_deferred_recycle_goes_when_the_window_frees(self) -> None:
        """A deferred recycle is ordered once the window has room, the longest-deferred child first."""
        e = engine([SoftLimit(limit=SOFT)], max_recycles_per_minute=1)
        assert [(Action.RECYCLE, 1, "soft_limit")] == acts(e.decide([child(1, 180), child(2, 160)], 0.0))
        e.decide([child(2, 160), child(3, 300)], 1.0)  # 3 is larger but 2 waits longer
        assert [] == e.decide([child(2, 160), child(3, 300)], 59.0)
        assert [(Action.RECYCLE, 2, "soft_limit")] == acts(e.decide([child(2, 160), child(3, 300)], 60.0))

    def test_deferral_forgotten_when_clean(self) -> None:
        """A deferred child that falls back below the limit is no longer deferred."""
        e = engine([SoftLimit(limit=SOFT)], max_recycles_per_minute=1)
        e.decide([child(1, 180), child(2, 160)], 0.0)
        assert e.deferred(2) is not None
        e.decide([child(2, 100)], 1.0)
        assert None is e.deferred(2)

    def test_new_episode_after_a_quiet_window(self) -> None:
        """A second storm after a full quiet window is reported again."""
        e = engine([SoftLimit(limit=SOFT)], max_recycles_per_minute=1)
        e.decide([child(1, 180), child(2, 180)], 0.0)
        e.decide([child(3, 100)], 1.0)
        assert 1 == len(e.findings())
        e.decide([child(3, 100)], 120.0)
        e.decide([child(3, 180), child(4, 180)], 121.0)
        assert [RECYCLE_STORM] == [f.event for f in e.findings()]

    def test_throughput_share_limits_recycles(self) -> None:
        """max_throughput_loss alone caps the rate once a spawn time is measured."""
        e = engine([SoftLimit(limit=SOFT)], max_throughput_loss=0.05)
        e.observe_spawn(3.0)  # 0.05 * 60 * 4 / 3 = 4 per minute
        times = [t for t, _ in self.run(e, Pool(4, 180), 120)]
        assert all(sum(1 for u in times if s <= u < s + 60) <= 4 for s in range(0, 120))
        assert 1 == len(e.findings())


class FreshPool:
    """Like Pool, but each replacement is a freshly forked child (spawned at the poll it first appears)."""

    def __init__(self, size: int, fresh_mib: float, *, at: float = 1.0) -> None:
        self.fresh = fresh_mib
        self.pids = itertools.count(100)
        self.children = [child(next(self.pids), fresh_mib, tasks_run=0, spawned_at=at - 0.5) for _ in range(size)]

    def apply(self, decisions: list[Decision], now: float) -> None:
        gone = {d.pid for d in decisions}
        self.children = [c if c.pid not in gone else child(next(self.pids), self.fresh, tasks_run=0,
                                                           spawned_at=now + 0.5)
                         for c in self.children]


class TestUnreachableLimit:
    """A soft limit a freshly forked child is already above: one event, no storm (issue 9)."""

    def run(self, e, pool: FreshPool, start: int, seconds: int) -> list[Decision]:  # type: ignore[no-untyped-def]
        out: list[Decision] = []
        for t in range(start, start + seconds):
            decisions = e.decide(pool.children, float(t))
            out.extend(decisions)
            pool.apply(decisions, float(t))
        return out

    def test_fresh_children_above_the_soft_limit_stop_recycling(self) -> None:
        """metric rss, a 300 MiB table in the master, a 250 MiB soft limit: no recycle, one event with the fix."""
        e = engine([HardLimit(limit=HARD), SoftLimit(limit=250 * MiB)], metric="rss")
        e.observe_master(320 * MiB)
        assert [] == self.run(e, FreshPool(4, 310), 1, 120)
        findings = e.findings()
        assert [LIMIT_UNREACHABLE] == [f.event for f in findings]
        fields = findings[0].fields
        assert (250.0, 310.0, 320.0, "rss", "soft_limit") == (
            fields["limit_mib"], fields["fresh_child_mib"], fields["master_mib"], fields["metric"], fields["reason"])
        assert "'uss' or 'pss'" in str(fields["fix"]) and "raise memguard_soft_limit" in str(fields["fix"])
        assert "hard limit still applies" in str(fields["cause"])
        assert {"soft_limit": 250 * MiB} == e.unreachable.unreachable
        assert e.unreachable.blocked > 0

    def test_hard_limit_still_acts(self) -> None:
        """While the soft limit is unreachable a child crossing the hard limit is still stopped."""
        e = engine([HardLimit(limit=HARD), SoftLimit(limit=250 * MiB)], metric="rss")
        e.decide([child(1, 310, tasks_run=0, spawned_at=0.1)], 0.5)
        assert [(Action.KILL, 1, "hard_limit")] == acts(e.decide([child(1, 450, "busy", tasks_run=9)], 30.0))

    def test_reachable_again_when_a_fresh_child_starts_below(self) -> None:
        """Something changed (a fresh child starts below the limit): children above it are recycled again."""
        e = engine([SoftLimit(limit=250 * MiB)])
        e.decide([child(1, 300, tasks_run=0, spawned_at=0.1), child(2, 300, tasks_run=5, spawned_at=0.1)], 0.5)
        assert [] == e.decide([child(1, 300, tasks_run=4), child(2, 300, tasks_run=9)], 5.0)
        fresh = child(3, 120, tasks_run=0, spawned_at=5.5)
        assert [(Action.RECYCLE, 1, "soft_limit"), (Action.RECYCLE, 2, "soft_limit")] == acts(
            e.decide([child(1, 300, tasks_run=5), child(2, 300, tasks_run=10), fresh], 6.0))
        assert {} == e.unreachable.unreachable

    def test_old_child_over_the_limit_is_recycled(self) -> None:
        """A child seen first after its first tasks and well after its spawn is not a fresh child."""
        e = engine([SoftLimit(limit=250 * MiB)])
        assert [(Action.RECYCLE, 1, "soft_limit")] == acts(
            e.decide([child(1, 300, "busy", tasks_run=7, spawned_at=1.0)], 30.0))
        assert [] == e.findings()

    @pytest.mark.parametrize(("task_id", "tasks_run"), [("busy", 0), (None, 1)], ids=["in-its-first-task", "after-it"])
    def test_a_young_child_that_took_a_job_before_its_first_look_is_not_fresh(self, task_id: str | None,
                                                                             tasks_run: int) -> None:
        """An autoscaled child 0.3 s old, first seen during (or after) a task that took 60 MiB: the reading holds
        the task's memory and says nothing about a fresh child; the child is recycled (before: the soft limit
        was declared unreachable and soft recycling stopped for every child)."""
        e = engine([SoftLimit(limit=60 * MiB)], metric="uss")
        assert [(Action.RECYCLE, 1, "soft_limit")] == acts(
            e.decide([child(1, 85, task_id, tasks_run=tasks_run, spawned_at=0.2)], 0.5))
        assert [] == e.findings() and {} == e.unreachable.unreachable

    def test_child_that_grew_after_a_fresh_start_is_recycled(self) -> None:
        e = engine([SoftLimit(limit=250 * MiB)])
        assert [] == e.decide([child(1, 100, tasks_run=0, spawned_at=0.1)], 0.5)
        assert [(Action.RECYCLE, 1, "soft_limit")] == acts(e.decide([child(1, 300, tasks_run=40)], 10.0))

    def test_uss_fix_text(self) -> None:
        e = engine([SoftLimit(limit=50 * MiB)], metric="uss")
        e.decide([child(1, 80, tasks_run=0, spawned_at=0.1)], 0.5)
        (finding,) = e.findings()
        assert finding.fields["master_mib"] is None
        assert "raise memguard_soft_limit well above 80 MiB" in str(finding.fields["fix"])

    def test_default_rate_guard_backs_it_up(self) -> None:
        """The default spawn-cost guard (0.25 of the pool's capacity) caps a storm of another cause."""
        from celery_memguard.config import MemGuardConfig
        from celery_memguard.engine import Engine

        cfg = MemGuardConfig.from_mapping({"memguard_max_child_tasks": 1}, 8 << 30)
        e = Engine.from_config(cfg)
        e.observe_spawn(1.0)  # 0.25 * 60 * 2 / 1 s = 30 restarts a minute for 2 children
        assert pytest.approx(30.0) == e.storm.cap(2)
