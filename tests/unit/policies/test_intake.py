"""Tests for IntakePause: pause below a threshold at once, resume past it by the margin after a quiet spell."""

from __future__ import annotations

import pytest

from celery_memguard.config import MemGuardConfig
from celery_memguard.exceptions import ConfigError
from celery_memguard.policies import IntakePause, SystemPressure, build_intake, build_policies

from .helpers import MiB, child, system

BELOW = 256 * MiB


def series(decision: IntakePause, readings: list[tuple[float, float | None, float | None]]) -> list[tuple[float, bool]]:
    """Feed (time, available MiB, pool MiB) readings; the (time, paused) of every change."""
    changes = []
    for at, available, pool in readings:
        change = decision.observe(at, available=None if available is None else int(available * MiB),
                                  pool=None if pool is None else int(pool * MiB))
        if change is not None:
            changes.append((at, change.paused))
    return changes


class TestPause:
    def test_pauses_on_the_first_reading_below(self) -> None:
        """One reading below pause_below pauses, with trigger, readings and threshold."""
        decision = IntakePause(pause_below=BELOW)
        assert decision.observe(0.0, available=300 * MiB) is None
        change = decision.observe(0.1, available=200 * MiB, pool=700 * MiB)
        assert change is not None and change.paused and decision.paused
        assert ("available", 200 * MiB, 700 * MiB, BELOW) == (change.trigger, change.available, change.pool,
                                                               change.threshold)
        assert {"trigger": "available", "available_mib": 200.0, "pool_mib": 700.0, "threshold_mib": 256.0,
                "paused_s": None} == change.fields()

    def test_at_the_threshold_is_not_below(self) -> None:
        """Exactly pause_below available is not below it."""
        assert IntakePause(pause_below=BELOW).observe(0.0, available=BELOW) is None

    def test_pool_above(self) -> None:
        """The pool's total above pool_above pauses (trigger "pool"); at it does not."""
        decision = IntakePause(pool_above=800 * MiB)
        assert decision.observe(0.0, pool=800 * MiB) is None
        change = decision.observe(1.0, pool=801 * MiB)
        assert change is not None and ("pool", True) == (change.trigger, change.paused)

    def test_unknown_readings_never_pause(self) -> None:
        """No system reading and no pool: nothing is known, nothing changes."""
        decision = IntakePause(pause_below=BELOW, pool_above=800 * MiB)
        assert decision.observe(0.0) is None and not decision.paused


class TestResume:
    def test_resumes_past_the_margin_after_resume_after(self) -> None:
        """Resume needs available >= 1.25 x pause_below held for resume_after seconds."""
        decision = IntakePause(pause_below=BELOW, resume_after=1.0)
        changes = series(decision, [(0.0, 100, None), (0.5, 300, None), (1.0, 319, None), (1.5, 320, None),
                                    (2.0, 400, None), (2.4, 330, None), (2.5, 330, None)])
        assert [(0.0, True), (2.5, False)] == changes

    def test_a_dip_restarts_the_wait(self) -> None:
        """A reading below the resume level in the quiet spell restarts it: no flapping on the edge."""
        decision = IntakePause(pause_below=BELOW, resume_after=1.0)
        changes = series(decision, [(0.0, 100, None), (1.0, 400, None), (1.9, 300, None), (2.0, 400, None),
                                    (2.9, 400, None), (3.0, 400, None)])
        assert [(0.0, True), (3.0, False)] == changes

    def test_oscillation_around_the_threshold_does_not_flap(self) -> None:
        """Available memory swinging around pause_below (every 0.1 s) pauses once and never resumes."""
        decision = IntakePause(pause_below=BELOW, resume_after=0.5)
        readings = [(i / 10, 250.0 if i % 2 else 262.0, None) for i in range(100)]
        assert [(0.1, True)] == series(decision, readings)

    def test_resume_reports_how_long(self) -> None:
        """The resume carries trigger "recovered", the resume threshold and the pause's length."""
        decision = IntakePause(pause_below=BELOW, resume_after=0.0)
        decision.observe(10.0, available=10 * MiB)
        change = decision.observe(13.5, available=500 * MiB)
        assert change is not None and not change.paused
        assert ("recovered", 320 * MiB, 3.5) == (change.trigger, change.threshold, change.paused_s)
        assert decision.paused_at is None and decision.trigger is None

    def test_both_thresholds_must_clear(self) -> None:
        """With both set, resume needs available past its margin and the pool below its margin."""
        decision = IntakePause(pause_below=BELOW, pool_above=800 * MiB, resume_after=0.0)
        changes = series(decision, [(0.0, 500, 900), (1.0, 500, 601), (2.0, 300, 600), (3.0, 320, 600)])
        assert [(0.0, True), (3.0, False)] == changes  # resume at pool <= 800 x 0.75 and available >= 320

    def test_unknown_reading_does_not_resume(self) -> None:
        """A reading without the system's memory cannot show recovery."""
        decision = IntakePause(pause_below=BELOW, resume_after=0.0)
        decision.observe(0.0, available=1)
        assert decision.observe(1.0, pool=10 * MiB) is None and decision.paused

    def test_pauses_again_after_resuming(self) -> None:
        """A new crossing after a resume pauses again."""
        decision = IntakePause(pause_below=BELOW, resume_after=0.0)
        assert [(0.0, True), (1.0, False), (2.0, True)] == series(decision, [(0.0, 1, None), (1.0, 999, None),
                                                                             (2.0, 1, None)])


class TestConstruction:
    @pytest.mark.parametrize("kwargs", [{}, {"pause_below": 0}, {"pool_above": -1},
                                        {"pause_below": 1, "resume_after": -1}, {"pause_below": 1, "margin": 1.0}])
    def test_refused(self, kwargs: dict) -> None:
        """Nothing to watch, non-positive thresholds, a negative wait or a margin of 100 % are refused."""
        with pytest.raises(ValueError):
            IntakePause(**kwargs)

    def test_from_config(self) -> None:
        """memguard_pause_* build the decision; sizes may be percentages of effective memory."""
        cfg = MemGuardConfig.from_mapping({"memguard_pause_below": "25%", "memguard_pause_pool_above": "600MiB",
                                           "memguard_pause_resume_after": 2}, 1024 * MiB)
        decision = build_intake(cfg)
        assert decision is not None
        assert (256 * MiB, 600 * MiB, 2.0) == (decision.pause_below, decision.pool_above, decision.resume_after)
        assert build_intake(MemGuardConfig.from_mapping({}, 1024 * MiB)) is None

    @pytest.mark.parametrize("key, value", [("memguard_pause_below", "81%"), ("memguard_pause_below", "nope"),
                                            ("memguard_pause_pool_above", 0), ("memguard_pause_resume_after", -1)])
    def test_bad_config(self, key: str, value: object) -> None:
        """A resume level beyond the effective memory, a bad size or a negative wait stop the worker."""
        with pytest.raises(ConfigError) as err:
            MemGuardConfig.from_mapping({key: value}, 1024 * MiB)
        assert key == err.value.key


class TestPressureWhilePaused:
    def test_recycles_the_largest_idle_child_while_paused(self) -> None:
        """Paused with plenty available to the pressure policy: it still recycles (trigger "paused")."""
        intake = IntakePause(pause_below=BELOW)
        policy = SystemPressure(intake=intake, min_relief=None)
        children = [child(1, 300, "busy"), child(2, 200), child(3, 100)]
        assert [] == policy.check_pool(children, 0.0, system(1000))
        intake.observe(0.0, available=100 * MiB)
        [(pid, violation)] = policy.check_pool(children, 1.0, system(1000))
        assert 2 == pid and ("trigger", "paused") in violation.detail

    def test_built_with_the_intake_even_without_min_available(self) -> None:
        """Pause settings alone bring the pressure policy in, bound to the guard's decision."""
        cfg = MemGuardConfig.from_mapping({"memguard_pause_pool_above": "600MiB"}, 1024 * MiB)
        intake = build_intake(cfg)
        [pressure] = [p for p in build_policies(cfg, intake=intake) if isinstance(p, SystemPressure)]
        assert pressure.intake is intake

    def test_paused_sweeps_idle_children_only_below_min_available(self) -> None:
        """Paused above min_available: one idle child at a time; below it, idle children go together until
        their relief covers the shortfall (a fork storm of replacements costs memory too)."""
        children = [child(1, 150), child(2, 120), child(3, 100), child(4, 90), child(5, 10)]  # 5: fresh
        for available, expected in ((300, [1]), (100, [1, 2])):
            intake = IntakePause(pause_below=400 * MiB)
            policy = SystemPressure(intake=intake, min_available=320 * MiB, min_relief=None)
            intake.observe(0.0, available=available * MiB)
            named = [pid for pid, _ in policy.check_pool(children, 0.0, system(available))]
            assert expected == named  # at 100 MiB: 140 + 110 MiB beyond a fresh child cover 220 MiB short


class TestPoolOnExactReadings:
    def test_upper_bounds_above_pool_above_do_not_pause_but_ask_for_exact(self) -> None:
        """8 children at RSS 150 MiB / USS 40 MiB, pool_above=1GiB: the bounds (1200 MiB) ask for exact
        readings (the pressure policy's threshold 0); the exact total (320 MiB) does not pause. Was: a pause
        on every inexact poll, a resume after the exact ones, every 2 s."""
        intake = IntakePause(pool_above=1024 * MiB, resume_after=0.0)
        policy = SystemPressure(intake=intake, min_relief=None)
        bounds = [child(pid, 150, exact=False) for pid in range(1, 9)]
        exact = [child(pid, 40) for pid in range(1, 9)]
        for at in range(0, 10, 2):
            assert intake.observe(float(at), pool=1200 * MiB, pool_exact=False) is None
            assert intake.wants_exact and not intake.paused
            assert [] == policy.check_pool(bounds, float(at), None) and 0 == policy.threshold
            assert intake.observe(at + 1.0, pool=320 * MiB, pool_exact=True) is None
            assert not intake.wants_exact and not intake.paused
            assert [] == policy.check_pool(exact, at + 1.0, None) and policy.threshold is None

    def test_exact_readings_above_pool_above_pause(self) -> None:
        """An exact total above pool_above pauses; while paused, bounds above the resume level do not resume."""
        intake = IntakePause(pool_above=1024 * MiB, resume_after=0.0)
        change = intake.observe(0.0, pool=1100 * MiB, pool_exact=True)
        assert change is not None and change.paused
        assert intake.observe(1.0, pool=900 * MiB, pool_exact=False) is None and intake.wants_exact
        change = intake.observe(2.0, pool=700 * MiB, pool_exact=False)  # bounds within the resume level
        assert change is not None and not change.paused


class TestUnreachableResume:
    """A pause whose resume level fresh children cannot reach is given up, not recycled against forever."""

    @staticmethod
    def _fresh_pool(pids: range) -> list:
        return [child(pid, 60, tasks_run=0) for pid in pids]

    def test_pool_pause_unreachable_with_fresh_children_resumes_without_recycling(self) -> None:
        """pause_pool_above=512MiB, 8 fresh children of 60 MiB (480 MiB > the 384 MiB resume level): one
        finding naming the setting, no recycle, then intake resumes (trigger "unreachable") after
        retry_unrelieved. Was: paused for good, the largest idle child recycled every 30 s."""
        intake = IntakePause(pool_above=512 * MiB, resume_after=0.0)
        policy = SystemPressure(intake=intake, retry_unrelieved=30.0)
        children = self._fresh_pool(range(1, 9))
        assert [] == policy.check_pool(children, 0.0, None)  # the fresh RSS is learnt
        intake.observe(0.0, pool=570 * MiB)  # a task briefly pushed the pool over
        assert intake.paused
        resumed = None
        for at in range(1, 200):
            change = intake.observe(float(at), pool=480 * MiB)
            if change is not None:
                resumed = resumed or change
            assert [] == policy.check_pool(children, float(at), None)  # never a recycle
        assert resumed is not None and ("unreachable", False) == (resumed.trigger, resumed.paused)
        assert 30.0 <= resumed.paused_s <= 32.0 and not intake.paused
        [finding] = policy.findings()
        assert "paused" == finding.fields["trigger"]
        assert "memguard_pause_pool_above=512.0 MiB" in finding.fields["cause"]
        assert "cannot be reached with fresh children" in finding.fields["cause"]

    def test_available_pause_disarmed_until_clear_of_the_resume_level(self) -> None:
        """pause_below at 75% of 2 GiB (resume at 1920 MiB) with the master and fresh children holding 300 MiB:
        given up, the threshold no longer pauses until a reading clears the resume level, then pauses again."""
        intake = IntakePause(pause_below=1536 * MiB, resume_after=0.0)
        policy = SystemPressure(intake=intake, retry_unrelieved=30.0)
        children = self._fresh_pool(range(1, 5))
        policy.check_pool(children, 0.0, system(1700, total_mib=2048))
        assert intake.observe(0.0, available=1500 * MiB) is not None
        for at in range(1, 32):
            policy.check_pool(children, float(at), system(1700, total_mib=2048))
            intake.observe(float(at), available=1700 * MiB)
        assert not intake.paused and {"available"} == intake.disarmed
        assert intake.observe(40.0, available=1500 * MiB) is None  # disarmed: no pause
        assert intake.observe(41.0, available=1950 * MiB) is None and not intake.disarmed  # clear: armed again
        change = intake.observe(42.0, available=1500 * MiB)
        assert change is not None and change.paused
