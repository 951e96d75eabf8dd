"""Tests for celery_memguard.pace: the kernel thresholds a configuration asks for, and adaptive polling."""

from __future__ import annotations

import pytest

from celery_memguard.config import MemGuardConfig
from celery_memguard.pace import ADAPTIVE_FLOOR, LADDER, AdaptivePace, PressurePlan
from celery_memguard.samples import SystemSample

MiB = 1024 * 1024
GiB = 1024 * MiB


def reading(available_mib: float, at: float) -> SystemSample:
    available = int(available_mib * MiB)
    return SystemSample(available=available, total=GiB, used=GiB - available, at=at)


class TestPressurePlan:
    """PressurePlan.from_config and the thresholds it derives."""

    def test_levels_from_the_settings(self) -> None:
        """min_available is an available level; the pool budgets are used levels; psi_threshold passes through."""
        cfg = MemGuardConfig.from_mapping({"memguard_min_available": "256MiB", "memguard_pool_limit": "600MiB",
                                           "memguard_pool_hard_limit": "700MiB", "memguard_psi_threshold": 20},
                                          GiB)
        plan = PressurePlan.from_config(cfg)
        assert (256 * MiB,) == plan.available_levels
        assert (600 * MiB, 700 * MiB) == plan.used_levels
        assert 20.0 == plan.psi_threshold and "auto" == plan.mode
        assert plan.wants_events and plan.adaptive

    def test_no_pressure_setting_wants_nothing(self) -> None:
        """Without any pressure setting there is nothing to be woken for, nor to poll faster for."""
        plan = PressurePlan.from_config(MemGuardConfig.from_mapping({"memguard_soft_limit": "100MiB"}, GiB))
        assert not plan.wants_events and not plan.adaptive

    @pytest.mark.parametrize("mode, events, adaptive", [("auto", True, True), ("adaptive", False, True),
                                                         ("interval", False, False)])
    def test_modes(self, mode: str, events: bool, adaptive: bool) -> None:
        """memguard_pressure_wake switches the kernel notifications, then adaptive polling, off."""
        cfg = MemGuardConfig.from_mapping({"memguard_min_available": "25%", "memguard_pressure_wake": mode}, GiB)
        plan = PressurePlan.from_config(cfg)
        assert (events, adaptive) == (plan.wants_events, plan.adaptive)

    def test_usage_thresholds_are_a_ladder_below_the_limit(self) -> None:
        """For a 256 MiB level in a 1 GiB cgroup: usage where 384, 256, 128 and 64 MiB remain, ascending."""
        plan = PressurePlan(available_levels=(256 * MiB,))
        assert [GiB - int(256 * MiB * m) for m in sorted(LADDER, reverse=True)] == plan.usage_thresholds(GiB)
        assert [640, 768, 896, 960] == [t // MiB for t in plan.usage_thresholds(GiB)]

    def test_thresholds_outside_the_limit_are_dropped(self) -> None:
        """A level above the limit's 2/3 has rungs at or below 0; a pool budget at or above the limit never fires."""
        plan = PressurePlan(available_levels=(800 * MiB,), used_levels=(300 * MiB, GiB, 2 * GiB))
        assert [224, 300, 624, 824] == [t // MiB for t in plan.usage_thresholds(GiB)]

    def test_duplicate_thresholds_registered_once(self) -> None:
        """Two levels whose rungs coincide give one threshold each."""
        plan = PressurePlan(available_levels=(256 * MiB, 128 * MiB))
        thresholds = plan.usage_thresholds(GiB)
        # rungs where 384, 256, 128, 64 and 192, 128, 64, 32 MiB remain: 128 and 64 are shared
        assert [GiB - r * MiB for r in (384, 256, 192, 128, 64, 32)] == thresholds

    @pytest.mark.parametrize("threshold, window, expected", [(None, 1_000_000, (100_000, 1_000_000)),
                                                             (25.0, 2_000_000, (500_000, 2_000_000)),
                                                             (0.00001, 1_000_000, (1, 1_000_000))])
    def test_psi_trigger(self, threshold: float | None, window: int, expected: tuple[int, int]) -> None:
        """The stall share of the window is psi_threshold (10 % without it), at least 1 µs."""
        assert expected == PressurePlan(psi_threshold=threshold).psi_trigger(window)


class TestAdaptivePace:
    """AdaptivePace.observe: the delay until the next reading."""

    def test_first_reading_and_stable_memory_keep_the_interval(self) -> None:
        """No rate yet, then no fall: the configured interval."""
        pace = AdaptivePace([256 * MiB], 1.0)
        assert 1.0 == pace.observe(reading(800, 0.0))
        assert 1.0 == pace.observe(reading(800, 1.0))
        assert 1.0 == pace.observe(reading(900, 2.0))  # rising

    def test_falling_memory_shortens_the_delay_in_proportion_to_time_to_the_level(self) -> None:
        """Falling 100 MiB/s with 300 MiB above the level: half the 3 s to it is still above 1 s; at 100 MiB
        above the level it is 0.5 s; at 10 MiB above, the 0.05 s floor."""
        pace = AdaptivePace([256 * MiB], 1.0)
        pace.observe(reading(656, 0.0))
        assert 1.0 == pace.observe(reading(556, 1.0))
        assert pytest.approx(0.5) == pace.observe(reading(356, 3.0))
        assert ADAPTIVE_FLOOR == pace.observe(reading(266, 3.9))

    def test_below_every_level_the_target_is_running_out(self) -> None:
        """Below the level, the delay is half the time left until nothing is available."""
        pace = AdaptivePace([256 * MiB], 1.0)
        pace.observe(reading(200, 0.0))
        assert pytest.approx(0.25) == pace.observe(reading(100, 0.5))  # 200 MiB/s, 100 MiB left: half of 0.5 s

    def test_nearest_level_below_is_the_target(self) -> None:
        """With two levels, the next one below the current reading counts."""
        pace = AdaptivePace([256 * MiB, 512 * MiB], 10.0)
        pace.observe(reading(700, 0.0))
        assert pytest.approx(0.44) == pace.observe(reading(600, 1.0))  # 88 MiB above 512 at 100 MiB/s: half 0.88 s
        assert pytest.approx(1.22) == pace.observe(reading(500, 2.0))  # 244 MiB above 256: half 2.44 s

    def test_a_reading_already_seen_keeps_the_delay(self) -> None:
        """The same (cached) reading again: the delay chosen for it."""
        pace = AdaptivePace([256 * MiB], 1.0)
        pace.observe(reading(656, 0.0))
        first = pace.observe(reading(356, 1.0))
        assert first == pace.observe(reading(356, 1.0))

    def test_back_to_the_interval_once_stable(self) -> None:
        """After a fall, a stable reading restores the configured interval."""
        pace = AdaptivePace([256 * MiB], 1.0)
        pace.observe(reading(600, 0.0))
        assert pace.observe(reading(300, 0.5)) < 1.0
        assert 1.0 == pace.observe(reading(300, 1.5))

    def test_invalid(self) -> None:
        with pytest.raises(ValueError):
            AdaptivePace([], 0.0)

    def test_a_notification_brings_the_next_reading_forward_once(self) -> None:
        """After notified(), the next delay is at most LOOK_AGAIN (0.05 s); then the rate decides again."""
        from celery_memguard.pace import LOOK_AGAIN

        pace = AdaptivePace([256 * MiB], 5.0)
        pace.observe(reading(600, 0.0))
        pace.notified()
        assert LOOK_AGAIN == pace.observe(reading(600, 5.0))
        assert 5.0 == pace.observe(reading(600, 5.1))
