"""Tests for SystemPressure: under memory pressure the largest idle child goes first, one at a time."""

from __future__ import annotations

from dataclasses import replace

import pytest

from celery_memguard.policies import SystemPressure
from celery_memguard.samples import Action

from .helpers import MiB, acts, child, engine, system

MIN = 500 * MiB


def mixed() -> list:
    """A busy 900 MiB child, an idle 400 MiB child, an idle 300 MiB child, a busy 200 MiB child."""
    return [child(1, 900, "a"), child(2, 400), child(3, 300), child(4, 200, "d")]


class TestSystemPressure:
    """SystemPressure(min_available=..., psi_threshold=...) on its own."""

    def test_no_system_sample_nothing(self) -> None:
        """Without a system reading the policy cannot judge and does nothing."""
        assert [] == SystemPressure(min_available=MIN).check_pool(mixed(), 0.0, None)

    def test_enough_available_nothing(self) -> None:
        """Available memory at or above the minimum is not pressure."""
        assert [] == SystemPressure(min_available=MIN).check_pool(mixed(), 0.0, system(500))

    def test_largest_idle_child_first(self) -> None:
        """Under pressure the largest idle child is chosen over a larger busy one; idle ones rank first."""
        [(pid, violation)] = SystemPressure(min_available=MIN).check_pool(mixed(), 0.0, system(100))
        assert 2 == pid
        assert (Action.RECYCLE, "pressure", MIN) == (violation.action, violation.reason, violation.limit)
        assert ((2, 400 * MiB), (3, 300 * MiB), (1, 900 * MiB), (4, 200 * MiB)) == violation.ranking
        assert {"trigger": "available", "available": 100 * MiB, "idle": True} == {
            k: v for k, v in violation.detail if k in ("trigger", "available", "idle")}

    def test_largest_busy_child_when_none_idle(self) -> None:
        """With every child busy, the largest busy one is recycled (after its task)."""
        children = [child(1, 300, "a"), child(2, 800, "b"), child(3, 500, "c")]
        assert [2] == [pid for pid, _ in SystemPressure(min_available=MIN).check_pool(children, 0.0, system(10))]

    def test_one_victim_at_a_time(self) -> None:
        """While the victim lives the policy names only it, even if another child becomes a better pick."""
        policy = SystemPressure(min_available=MIN)
        policy.check_pool(mixed(), 0.0, system(100))
        bigger_idle = [child(1, 900), child(2, 400), child(3, 300), child(4, 200, "d")]
        assert [2] == [pid for pid, _ in policy.check_pool(bigger_idle, 1.0, system(100))]

    def test_next_victim_after_the_first_left(self) -> None:
        """Still under pressure once the victim is gone, the next idle child is chosen."""
        policy = SystemPressure(min_available=MIN)
        policy.check_pool(mixed(), 0.0, system(100))
        without_2 = [c for c in mixed() if c.pid != 2] + [child(5, 60)]
        assert [3] == [pid for pid, _ in policy.check_pool(without_2, 1.0, system(200, at=1.0))]

    def test_leaving_children_skipped(self) -> None:
        """A child the engine already ordered out is not chosen again."""
        children = [replace(c, pending=Action.RECYCLE) if c.pid == 2 else c for c in mixed()]
        assert [3] == [pid for pid, _ in SystemPressure(min_available=MIN).check_pool(children, 0.0, system(1))]

    def test_psi_above_threshold_is_pressure(self) -> None:
        """PSI some avg10 above the threshold is pressure even with memory available."""
        policy = SystemPressure(psi_threshold=20.0)
        [(pid, violation)] = policy.check_pool(mixed(), 0.0, system(3000, psi=35.0))
        assert (2, "psi") == (pid, dict(violation.detail)["trigger"])
        assert [] == SystemPressure(psi_threshold=20.0).check_pool(mixed(), 0.0, system(3000, psi=20.0))
        assert [] == SystemPressure(psi_threshold=20.0).check_pool(mixed(), 0.0, system(3000, psi=None))

    def test_psi_waits_to_settle_after_a_recycle(self) -> None:
        """PSI-only pressure picks the next victim only psi_settle seconds after the last one left."""
        policy = SystemPressure(psi_threshold=20.0, psi_settle=10.0)
        policy.check_pool(mixed(), 0.0, system(3000, psi=40.0))
        policy.child_exited(2)
        rest = [c for c in mixed() if c.pid != 2]
        assert [] == policy.check_pool(rest, 1.0, system(3000, psi=40.0, at=1.0))
        assert [] == policy.check_pool(rest, 10.9, system(3000, psi=40.0, at=10.9))
        assert [3] == [pid for pid, _ in policy.check_pool(rest, 11.0, system(3000, psi=40.0, at=11.0))]

    def test_low_available_does_not_wait(self) -> None:
        """Low available memory picks the next victim at once, settle or not."""
        policy = SystemPressure(min_available=MIN, psi_threshold=20.0)
        policy.check_pool(mixed(), 0.0, system(100, psi=40.0))
        rest = [c for c in mixed() if c.pid != 2]
        assert [3] == [pid for pid, _ in policy.check_pool(rest, 1.0, system(100, psi=40.0, at=1.0))]

    def test_stale_reading_does_not_pick_the_next_victim(self) -> None:
        """A system reading taken before the last victim left cannot name the next one."""
        policy = SystemPressure(min_available=MIN)
        policy.check_pool(mixed(), 0.0, system(100, at=0.0))
        rest = [c for c in mixed() if c.pid != 2]
        assert [] == policy.check_pool(rest, 1.0, system(100, at=0.0))
        assert [3] == [pid for pid, _ in policy.check_pool(rest, 1.5, system(100, at=1.5))]

    @pytest.mark.parametrize(("min_available", "psi"), [(None, None), (0, None), (None, 0.0), (None, 100.0)])
    def test_invalid_options_rejected(self, min_available: int | None, psi: float | None) -> None:
        """At least one trigger, a positive minimum and a PSI percentage strictly inside (0, 100)."""
        with pytest.raises(ValueError):
            SystemPressure(min_available=min_available, psi_threshold=psi)


class TestSystemPressureInEngine:
    """SystemPressure in the Engine, fed with decide(..., system=...)."""

    def test_recycles_idle_then_busy_one_at_a_time(self) -> None:
        """Sustained pressure recycles one child per departure: the idle one first, then the busy one."""
        e = engine([SystemPressure(min_available=MIN)])
        both = [child(1, 900, "a"), child(2, 300)]
        assert [(Action.RECYCLE, 2, "pressure")] == acts(e.decide(both, 0.0, system=system(100)))
        assert [] == e.decide(both, 1.0, system=system(100))
        assert [(Action.RECYCLE, 1, "pressure")] == acts(e.decide([child(1, 900, "a")], 2.0, system=system(100, at=2.0)))

    def test_pressure_gone_nothing_more(self) -> None:
        """When the pressure is relieved no further child is recycled."""
        e = engine([SystemPressure(min_available=MIN)])
        e.decide([child(1, 900, "a"), child(2, 300)], 0.0, system=system(100))
        assert [] == e.decide([child(1, 900, "a"), child(3, 60)], 1.0, system=system(900))

    def test_without_system_sample_nothing(self) -> None:
        """decide() without a system sample (the old call form) never triggers pressure."""
        e = engine([SystemPressure(min_available=MIN)])
        assert [] == e.decide(mixed(), 0.0)
