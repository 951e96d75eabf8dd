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
        policy = SystemPressure(min_available=MIN, min_relief=None)  # every child a candidate: the ranking alone
        (pid, violation), _swept = policy.check_pool(mixed(), 0.0, system(100))
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
        """While the victims live the policy names only them, even if another child becomes a better pick."""
        policy = SystemPressure(min_available=MIN)
        assert [2, 3] == [pid for pid, _ in policy.check_pool(mixed(), 0.0, system(100))]
        bigger_idle = [child(1, 900), child(2, 400), child(3, 300), child(4, 200, "d")]
        assert [2, 3] == [pid for pid, _ in policy.check_pool(bigger_idle, 1.0, system(100))]

    def test_next_victim_after_the_first_left(self) -> None:
        """Still under pressure once a reading shows the victim's memory freed, the next idle child is chosen."""
        policy = SystemPressure(min_available=MIN)
        policy.check_pool(mixed(), 0.0, system(50))
        without_2 = [c for c in mixed() if c.pid != 2] + [child(5, 60)]
        assert [3] == [pid for pid, _ in policy.check_pool(without_2, 1.0, system(300, at=1.0))]

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
        """Low available memory picks the next victim at once, PSI settle or not."""
        policy = SystemPressure(min_available=MIN, psi_threshold=20.0)
        policy.check_pool(mixed(), 0.0, system(50, psi=40.0))
        rest = [c for c in mixed() if c.pid != 2]
        assert [3] == [pid for pid, _ in policy.check_pool(rest, 1.0, system(300, psi=40.0, at=1.0))]

    def test_stale_reading_does_not_pick_the_next_victim(self) -> None:
        """A system reading taken before the last victim left cannot name the next one, even if it shows a drop."""
        policy = SystemPressure(min_available=MIN)
        policy.check_pool(mixed(), 0.0, system(50, at=0.0))
        rest = [c for c in mixed() if c.pid != 2]
        assert [] == policy.check_pool(rest, 1.0, system(460, at=0.9))  # other memory freed, the victim's not yet
        assert [3] == [pid for pid, _ in policy.check_pool(rest, 1.5, system(460, at=1.5))]  # taken after: all shown

    @pytest.mark.parametrize(("min_available", "psi"), [(None, None), (0, None), (None, 0.0), (None, 100.0)])
    def test_invalid_options_rejected(self, min_available: int | None, psi: float | None) -> None:
        """At least one trigger, a positive minimum and a PSI percentage strictly inside (0, 100)."""
        with pytest.raises(ValueError):
            SystemPressure(min_available=min_available, psi_threshold=psi)

    def test_negative_relief_settle_rejected(self) -> None:
        """relief_settle is a duration: >= 0."""
        with pytest.raises(ValueError):
            SystemPressure(min_available=MIN, relief_settle=-1.0)


class TestExpectedRelief:
    """After a victim leaves, readings that do not show its memory freed yet are credited with it.

    Victim 2 (400 MiB, the only idle child) is chosen at 100 MiB available (MIN is 500 MiB) and seen gone at
    t=1.0; the next victim is then the largest busy child, 1.
    """

    @staticmethod
    def one_idle() -> list:
        return [child(1, 900, "a"), child(2, 400), child(3, 300, "c"), child(4, 200, "d")]

    @classmethod
    def after_first_victim(cls, **options: float) -> tuple[SystemPressure, list]:
        policy = SystemPressure(min_available=MIN, **options)
        assert [2] == [pid for pid, _ in policy.check_pool(cls.one_idle(), 0.0, system(100, at=0.0))]
        return policy, [c for c in cls.one_idle() if c.pid != 2]

    def test_reading_taken_as_the_victim_exits_takes_no_second_child(self) -> None:
        """The flaky case: a reading taken at the poll that sees the exit, before the kernel freed the pages."""
        policy, rest = self.after_first_victim()
        assert [] == policy.check_pool(rest, 1.0, system(100, at=1.0))  # 100 + 400 credited: no pressure
        assert [] == policy.check_pool(rest, 1.5, system(500, at=1.5))  # the relief shows: pressure is over
        assert [] == policy.check_pool(rest + [child(5, 60)], 3.0, system(520, at=3.0))

    def test_pressure_that_outlasts_the_relief_acts_at_once(self) -> None:
        """A reading under pressure even with the victim's memory credited needs no waiting."""
        policy, rest = self.after_first_victim()
        [(pid, violation)] = policy.check_pool(rest, 1.0, system(50, at=1.0))  # 50 + 400 < 500
        assert 1 == pid
        assert 50 * MiB == dict(violation.detail)["available"]  # the event shows the reading, not the credit

    def test_partly_freed_reading_is_credited_with_the_rest(self) -> None:
        """The cgroup's usage falls gradually as the exited victim is unmapped: only the part shown is not credited."""
        policy, rest = self.after_first_victim()
        assert [] == policy.check_pool(rest, 1.0, system(350, at=1.0))  # 250 of 400 MiB shown: 150 credited
        assert [] == policy.check_pool(rest, 1.1, system(420, at=1.1))  # 320 shown: 80 credited
        assert [1] == [pid for pid, _ in policy.check_pool(rest, 1.2, system(300, at=1.2))]  # others grew: 380 < 500

    def test_pressure_hidden_only_by_the_credit_acts_after_relief_settle(self) -> None:
        """The victim's sampled memory may overstate what it frees (shared pages): the credit ends at relief_settle."""
        policy, rest = self.after_first_victim(relief_settle=1.0)
        assert [] == policy.check_pool(rest, 1.0, system(480, at=1.0))  # 380 of 400 MiB freed: 20 credited
        assert [] == policy.check_pool(rest, 1.5, system(480, at=1.5))
        assert [1] == [pid for pid, _ in policy.check_pool(rest, 2.0, system(480, at=2.0))]

    def test_drop_hidden_by_growth_counts_after_relief_settle(self) -> None:
        """If others used the freed memory (no drop shows), the reading counts as is relief_settle after the exit."""
        policy, rest = self.after_first_victim(relief_settle=1.0)
        assert [] == policy.check_pool(rest, 1.0, system(150, at=1.0))
        assert [] == policy.check_pool(rest, 1.9, system(150, at=1.9))
        assert [1] == [pid for pid, _ in policy.check_pool(rest, 2.0, system(150, at=2.0))]

    def test_relief_settle_zero_takes_readings_after_the_exit_as_they_are(self) -> None:
        """relief_settle=0 credits only readings taken before the exit was seen (the old stale-reading rule)."""
        policy, rest = self.after_first_victim(relief_settle=0.0)
        assert [] == policy.check_pool(rest, 1.0, system(100, at=0.5))
        assert [1] == [pid for pid, _ in policy.check_pool(rest, 1.1, system(100, at=1.1))]

    def test_leaving_victim_stays_expected_through_a_pressure_free_reading(self) -> None:
        """A victim already ordered out is still expected to free its memory after pressure briefly lifted."""
        policy = SystemPressure(min_available=MIN)
        policy.check_pool(self.one_idle(), 0.0, system(100, at=0.0))
        ordered = [replace(c, pending=Action.RECYCLE) if c.pid == 2 else c for c in self.one_idle()]
        assert [] == policy.check_pool(ordered, 0.5, system(600, at=0.5))  # e.g. page cache reclaimed
        rest = [c for c in self.one_idle() if c.pid != 2]
        assert [] == policy.check_pool(rest, 1.0, system(300, at=1.0))  # 300 + 400 credited

    def test_victim_not_ordered_out_is_chosen_afresh(self) -> None:
        """A victim named but never ordered out is dropped when pressure ends; the next pressure re-ranks."""
        policy = SystemPressure(min_available=MIN)
        policy.check_pool(self.one_idle(), 0.0, system(100, at=0.0))
        assert [] == policy.check_pool(self.one_idle(), 0.5, system(600, at=0.5))
        bigger_idle = [child(1, 900), child(2, 400), child(3, 300, "c"), child(4, 200, "d")]
        assert [1] == [pid for pid, _ in policy.check_pool(bigger_idle, 1.0, system(100, at=1.0))]

    def test_relief_is_credited_once(self) -> None:
        """After the relief has shown, a later drop in available memory is pressure again at once."""
        policy, rest = self.after_first_victim()
        assert [] == policy.check_pool(rest, 1.0, system(500, at=1.0))
        assert [1] == [pid for pid, _ in policy.check_pool(rest, 5.0, system(400, at=5.0))]


class TestExactReadings:
    """Under pressure the victim is chosen from exact readings: upper bounds (RSS) hide copy-on-write copies."""

    def test_first_pressured_poll_asks_for_exact_readings(self) -> None:
        policy = SystemPressure(min_available=MIN, min_relief=None)
        bounds = [child(1, 300, exact=False), child(2, 300, exact=False)]
        assert [] == policy.check_pool(bounds, 0.0, system(100)) and policy.threshold == 0
        exact = [child(1, 120), child(2, 250)]  # the next poll, at once: child 2 holds more of its own
        assert 2 == policy.check_pool(exact, 0.01, system(100, at=0.01))[0][0]  # the victim (1 swept with it)
        assert policy.threshold == 0
        assert [] == policy.check_pool(exact, 1.0, system(900, at=1.0)) and policy.threshold is None

    def test_does_not_wait_twice_for_a_reading_that_failed(self) -> None:
        policy = SystemPressure(min_available=MIN, min_relief=None)
        stuck = [child(1, 300, exact=False), child(2, 200)]
        assert [] == policy.check_pool(stuck, 0.0, system(100))
        assert 1 == policy.check_pool(stuck, 0.01, system(100, at=0.01))[0][0]

    def test_engine_polls_again_at_once(self) -> None:
        e = engine([SystemPressure(min_available=MIN, min_relief=None)])
        assert [] == e.decide([child(1, 300, exact=False)], 0.0, system=system(100))
        assert e.next_delay == 0.0 and e.threshold_for(1) == 0


class TestMinRelief:
    """Only a child holding min_relief more RSS than a freshly forked one is worth recycling under pressure."""

    def test_children_near_fresh_are_not_candidates(self) -> None:
        """Children first seen at 60 MiB; the one grown to 400 MiB goes, an idle one at 80 MiB is not ranked."""
        policy = SystemPressure(min_available=MIN)
        policy.check_pool([child(1, 60, "a"), child(2, 61), child(3, 62)], 0.0, system(900))
        grown = [child(1, 400, "a"), child(2, 80), child(3, 62)]
        [(pid, violation)] = policy.check_pool(grown, 1.0, system(100))
        assert (1, ((1, 400 * MiB),)) == (pid, violation.ranking)  # busy, but the only one worth recycling
        assert policy.fresh_rss == 60 * MiB and policy.findings() == []

    def test_pressure_no_child_can_relieve_recycles_nothing_and_is_reported_once_per_episode(self) -> None:
        """Permanent pressure from outside the pool: no recycle at any poll, one finding per episode."""
        policy = SystemPressure(min_available=MIN)
        lean = [child(1, 60), child(2, 70, "b"), child(3, 85)]
        for poll in range(5):
            assert [] == policy.check_pool(lean, float(poll), system(100, at=float(poll)))
        [finding] = policy.findings()
        assert finding.event == "memguard.pressure_unrelieved"
        fields = finding.fields
        assert (fields["trigger"], fields["available"], fields["min_available"]) == ("available", 100 * MiB, MIN)
        assert (fields["children"], fields["children_rss_mib"], fields["fresh_rss_mib"]) == (3, 215.0, 60.0)
        assert (fields["largest_pid"], fields["largest_relief_mib"], fields["min_relief_mib"]) == (3, 25.0, 32.0)
        assert "outside the children" in str(fields["cause"])
        assert [] == policy.check_pool(lean, 5.0, system(900, at=5.0)) and policy.findings() == []  # episode over
        assert [] == policy.check_pool(lean, 6.0, system(100, at=6.0))
        assert ["memguard.pressure_unrelieved"] == [f.event for f in policy.findings()]  # a new episode

    def test_after_retry_unrelieved_the_largest_goes_anyway_then_once_per_interval(self) -> None:
        """Copy-on-write copies (USS, not RSS) may be all there is to free: one fallback recycle per 30 s."""
        policy = SystemPressure(min_available=MIN)
        lean = [child(1, 60, "a"), child(2, 70), child(3, 65)]
        assert [] == policy.check_pool(lean, 0.0, system(100, at=0.0))
        assert [] == policy.check_pool(lean, 29.0, system(100, at=29.0))
        [(pid, violation)] = policy.check_pool(lean, 30.0, system(100, at=30.0))
        assert pid == 2 and dict(violation.detail)["lasting_relief"] is False  # the largest idle one
        policy.child_exited(2)
        rest = [child(1, 60, "a"), child(3, 65), child(4, 60)]
        assert [] == policy.check_pool(rest, 45.0, system(100, at=45.0))  # relief settled; next fallback at 60
        assert [3] == [p for p, _ in policy.check_pool(rest, 60.0, system(100, at=60.0))]
        assert ["memguard.pressure_unrelieved"] == [f.event for f in policy.findings()]  # one per episode

    def test_a_lasting_candidate_is_marked_so(self) -> None:
        policy = SystemPressure(min_available=MIN)
        policy.check_pool([child(1, 60), child(2, 60)], 0.0, system(900))
        [(_, violation)] = policy.check_pool([child(1, 300), child(2, 60)], 1.0, system(100, at=1.0))
        assert dict(violation.detail)["lasting_relief"] is True

    def test_the_end_of_an_episode_resets_the_fallback_clock(self) -> None:
        policy = SystemPressure(min_available=MIN)
        lean = [child(1, 60), child(2, 62)]
        policy.check_pool(lean, 0.0, system(100, at=0.0))
        policy.check_pool(lean, 20.0, system(900, at=20.0))  # pressure gone
        assert [] == policy.check_pool(lean, 35.0, system(100, at=35.0))  # a new episode: 30 s from 35
        assert [] == policy.check_pool(lean, 64.0, system(100, at=64.0))
        assert [2] == [p for p, _ in policy.check_pool(lean, 65.0, system(100, at=65.0))]

    def test_a_replacement_child_is_fresh(self) -> None:
        """After the grown victim left, its replacement (first seen small) is not the next victim."""
        policy = SystemPressure(min_available=MIN, relief_settle=0.0)
        policy.check_pool([child(1, 60), child(2, 60)], 0.0, system(900, at=0.0))
        assert [1] == [pid for pid, _ in policy.check_pool([child(1, 300), child(2, 60)], 1.0, system(100, at=1.0))]
        policy.child_exited(1)
        after = [child(2, 60), child(3, 61)]
        for poll in (2.0, 3.0, 4.0):
            assert [] == policy.check_pool(after, poll, system(100, at=poll))
        assert ["memguard.pressure_unrelieved"] == [f.event for f in policy.findings()]

    def test_fresh_rss_follows_the_latest_children(self) -> None:
        """The fresh reference is the smallest first reading of the last 8 children: it rises with the master."""
        policy = SystemPressure(min_available=MIN)
        policy.check_pool([child(1, 50)], 0.0, system(900))
        for pid in range(2, 10):
            policy.child_exited(pid - 1)
            policy.check_pool([child(pid, 120)], float(pid), system(900))
        assert policy.fresh_rss == 120 * MiB

    def test_a_leaving_child_defers_the_report(self) -> None:
        """While another order is on its way out, no unrelieved finding yet (its exit may end the pressure)."""
        policy = SystemPressure(min_available=MIN)
        leaving = replace(child(2, 300), pending=Action.RECYCLE)
        policy.check_pool([child(1, 60), child(2, 60)], 0.0, system(900))
        assert [] == policy.check_pool([child(1, 60), leaving], 1.0, system(100))
        assert policy.findings() == []

    def test_min_relief_must_be_positive(self) -> None:
        with pytest.raises(ValueError, match="min_relief"):
            SystemPressure(min_available=MIN, min_relief=0)
        with pytest.raises(ValueError, match="retry_unrelieved"):
            SystemPressure(min_available=MIN, retry_unrelieved=-1.0)


class TestSystemPressureInEngine:
    """SystemPressure in the Engine, fed with decide(..., system=...)."""

    def test_recycles_idle_then_busy_one_at_a_time(self) -> None:
        """Sustained pressure recycles one child per departure: the idle one first, then the busy one."""
        e = engine([SystemPressure(min_available=MIN, min_relief=None)])
        both = [child(1, 900, "a"), child(2, 300)]
        assert [(Action.RECYCLE, 2, "pressure")] == acts(e.decide(both, 0.0, system=system(100)))
        assert [] == e.decide(both, 1.0, system=system(100))
        assert [(Action.RECYCLE, 1, "pressure")] == acts(e.decide([child(1, 900, "a")], 2.0, system=system(100, at=2.0)))

    def test_pressure_gone_nothing_more(self) -> None:
        """When the pressure is relieved no further child is recycled."""
        e = engine([SystemPressure(min_available=MIN)])
        e.decide([child(1, 900, "a"), child(2, 300)], 0.0, system=system(100))
        assert [] == e.decide([child(1, 900, "a"), child(3, 60)], 1.0, system=system(900))

    def test_unrelieved_pressure_reaches_engine_findings(self) -> None:
        """The policy's pressure_unrelieved finding comes out of Engine.findings(); no decision is made."""
        e = engine([SystemPressure(min_available=MIN)])
        lean = [child(1, 60), child(2, 62)]
        assert [] == e.decide(lean, 0.0, system=system(100)) == e.decide(lean, 1.0, system=system(100, at=1.0))
        assert ["memguard.pressure_unrelieved"] == [f.event for f in e.findings()]

    def test_without_system_sample_nothing(self) -> None:
        """decide() without a system sample (the old call form) never triggers pressure."""
        e = engine([SystemPressure(min_available=MIN)])
        assert [] == e.decide(mixed(), 0.0)

    def test_victim_exit_seen_before_its_memory_is_freed_takes_no_second_child(self) -> None:
        """The poll that first misses the victim reads the system before the kernel freed its pages: no decision.

        Two children hold 150 MiB each; recycling one ends the pressure. Then permanent pressure (more memory used
        elsewhere) still takes the next child once a reading has shown the relief.
        """
        e = engine([SystemPressure(min_available=250 * MiB)])
        holders = [child(1, 200), child(2, 197), child(3, 48)]
        assert [(Action.RECYCLE, 1, "pressure")] == acts(e.decide(holders, 0.0, system=system(190, at=0.0)))
        assert [] == e.decide(holders, 0.1, system=system(190, at=0.0))  # the victim is leaving
        fresh = [child(2, 197), child(3, 48), child(4, 47)]
        assert [] == e.decide(fresh, 0.5, system=system(190, at=0.5))  # gone, pages not yet uncharged
        assert [] == e.decide(fresh, 1.0, system=system(345, at=1.0))  # the relief shows: no pressure
        assert [(Action.RECYCLE, 2, "pressure")] == acts(e.decide(fresh, 5.0, system=system(150, at=5.0)))


class TestIdleSweep:
    """Low available memory: idle candidates leave together until what they free covers the shortfall."""

    def test_idle_children_go_together_until_the_shortfall_is_covered(self) -> None:
        """Fresh child 60 MiB; 400 MiB short: 500 (440 expected) alone covers it; 200 short: one, 600 short: two."""
        children = [child(9, 60), child(1, 500), child(2, 400), child(3, 300), child(4, 800, "busy")]
        policy = SystemPressure(min_available=MIN)
        assert [1, 2] == [pid for pid, _ in policy.check_pool(children, 0.0, system(10))]  # 490 short: 440 + 340
        assert [1] == [pid for pid, _ in SystemPressure(min_available=MIN).check_pool(children, 0.0, system(100))]
        # Everything idle and every candidate needed: the busy child is never swept
        every = SystemPressure(min_available=2000 * MiB).check_pool(children, 0.0, system(10))
        assert [1, 2, 3] == [pid for pid, _ in every]
        assert all(dict(v.detail)["idle"] for _, v in every)

    def test_psi_pressure_takes_one_victim(self) -> None:
        """PSI has no shortfall to cover: one victim at a time, as before."""
        children = [child(9, 60), child(1, 500), child(2, 400), child(3, 300)]
        assert [1] == [pid for pid, _ in SystemPressure(psi_threshold=10.0).check_pool(children, 0.0,
                                                                                      system(3000, psi=50.0))]

    def test_swept_children_are_credited_as_relief_when_they_leave(self) -> None:
        """Both victims gone at the next poll: a reading not showing their 740 MiB yet is not pressure."""
        children = [child(9, 60), child(1, 500), child(2, 400), child(3, 300)]
        policy = SystemPressure(min_available=MIN)
        assert [1, 2] == [pid for pid, _ in policy.check_pool(children, 0.0, system(10, at=0.0))]
        rest = [child(9, 60), child(3, 300)]
        assert [] == policy.check_pool(rest, 1.0, system(10, at=1.0))  # 10 + 900 credited
        assert [] == policy.check_pool(rest, 1.5, system(20, at=1.5))  # still credited (relief_settle 1 s)
        assert [3] == [pid for pid, _ in policy.check_pool(rest, 2.0, system(20, at=2.0))]  # others took it

    def test_engine_orders_them_all_in_one_poll(self) -> None:
        """Through the engine, every swept child gets its recycle in the same decide()."""
        e = engine([SystemPressure(min_available=MIN)])
        children = [child(9, 60), child(1, 500), child(2, 400), child(3, 300)]
        assert [(Action.RECYCLE, 1, "pressure"), (Action.RECYCLE, 2, "pressure")] == acts(
            e.decide(children, 0.0, system=system(10)))


class TestCriticalFloor:
    """critical_available: below it, the task of the fastest-growing busy child is stopped at once."""

    def test_fastest_growing_task_is_stopped(self) -> None:
        policy = SystemPressure(min_available=MIN, critical_available=100 * MiB)
        first = [child(9, 60), child(1, 500, "a"), child(2, 400, "b")]
        assert [] == [v for _, v in policy.check_pool(first, 0.0, system(200)) if v.action is Action.KILL]
        grown = [child(9, 60), child(1, 520, "a"), child(2, 480, "b")]  # 2 grew 80 MiB in 0.1 s, 1 only 20
        verdicts = policy.check_pool(grown, 0.1, system(50, at=0.1))
        kills = [(pid, v) for pid, v in verdicts if v.action is Action.KILL]
        assert [2] == [pid for pid, _ in kills]
        violation = kills[0][1]
        assert violation.hard and 100 * MiB == violation.limit and "pressure" == violation.reason
        assert {"trigger": "critical", "growth_mib_per_s": 800.0} == {
            k: v for k, v in violation.detail if k in ("trigger", "growth_mib_per_s")}

    def test_one_stop_at_a_time_and_none_without_growth(self) -> None:
        policy = SystemPressure(min_available=MIN, critical_available=100 * MiB)
        policy.check_pool([child(9, 60), child(1, 500, "a"), child(2, 400, "b")], 0.0, system(200))
        grown = [child(9, 60), child(1, 600, "a"), child(2, 480, "b")]
        assert [1] == [pid for pid, v in policy.check_pool(grown, 0.1, system(50, at=0.1)) if v.action is Action.KILL]
        more = [child(9, 60), child(1, 700, "a"), child(2, 600, "b")]
        assert [] == [pid for pid, v in policy.check_pool(more, 0.2, system(20, at=0.2)) if v.action is Action.KILL]
        # once 1 has left, 2 may be stopped, but only while it grows
        flat = [child(9, 60), child(2, 600, "b")]
        assert [] == [pid for pid, v in policy.check_pool(flat, 0.3, system(20, at=0.3)) if v.action is Action.KILL]
        assert [] == [pid for pid, v in policy.check_pool(flat, 0.4, system(20, at=0.4)) if v.action is Action.KILL]

    def test_not_below_the_floor_no_stop(self) -> None:
        policy = SystemPressure(min_available=MIN, critical_available=100 * MiB)
        policy.check_pool([child(9, 60), child(1, 500, "a")], 0.0, system(200))
        verdicts = policy.check_pool([child(9, 60), child(1, 900, "a")], 0.1, system(150, at=0.1))
        assert [] == [v for _, v in verdicts if v.action is Action.KILL]

    def test_engine_stops_the_task_at_once(self) -> None:
        """Through the engine: a KILL decision naming the task, with the floor as its limit."""
        e = engine([SystemPressure(min_available=MIN, critical_available=100 * MiB)])
        e.decide([child(9, 60), child(1, 500, "a")], 0.0, system=system(200))
        decisions = e.decide([child(9, 60), child(1, 700, "a")], 0.1, system=system(50, at=0.1))
        [kill] = [d for d in decisions if d.action is Action.KILL]
        assert (1, "a", 100 * MiB, "pressure") == (kill.pid, kill.task_id, kill.limit, kill.reason)

    @pytest.mark.parametrize("critical", [0, MIN, MIN + 1])
    def test_invalid(self, critical: int) -> None:
        with pytest.raises(ValueError):
            SystemPressure(min_available=MIN, critical_available=critical)


class TestCriticalUnrelieved:
    """Stopping tasks that free nothing (memory held outside the worker) stops no task after task."""

    def test_a_stop_is_credited_and_one_that_frees_nothing_holds_further_stops(self) -> None:
        """Available stuck at 400 MiB below a 512 MiB floor while busy children grow 20 MiB/s: a stopped
        child's memory is credited as relief; once it has had relief_settle to show and has not, no task is
        stopped for retry_unrelieved (one critical pressure_unrelieved finding). Was: 43 stops in 40 s."""
        policy = SystemPressure(min_available=1024 * MiB, critical_available=512 * MiB, relief_settle=1.0,
                                retry_unrelieved=30.0)
        sizes = {pid: 60.0 for pid in range(1, 5)}
        stops, findings, next_pid = [], [], 100
        for step in range(1, 401):
            at = step / 10
            for pid in sizes:
                sizes[pid] += 2
            children = [child(pid, mem, f"t{pid}") for pid, mem in sizes.items()]
            for pid, violation in policy.check_pool(children, at, system(400, at=at)):
                if violation.action is Action.KILL:
                    stops.append(at)
                    sizes.pop(pid)
                    sizes[next_pid], next_pid = 60.0, next_pid + 1
            findings += [f for f in policy.findings() if f.fields["trigger"] == "critical"]
        assert 1 <= len(stops) <= 4, (stops, findings)
        assert not [at for at in stops if 2.0 < at < 31.0], stops  # held for retry_unrelieved after the first stop
        assert findings and "memguard_critical_available" in findings[0].fields["cause"]
