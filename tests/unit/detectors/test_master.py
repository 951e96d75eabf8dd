"""Tests for celery_memguard.detectors.master.MasterGrowthDetector on synthetic master readings."""

from __future__ import annotations

import random

import pytest

from celery_memguard.config import MemGuardConfig
from celery_memguard.detectors import MASTER_GROWTH, Finding, MasterGrowthDetector
from celery_memguard.detectors.master import MAX_SAMPLE_INTERVAL, MIN_SAMPLE_INTERVAL
from celery_memguard.samples import MasterSample
from celery_memguard.worker.bootstep import build_detectors

MiB = 1024 * 1024
HOUR = 3600.0


def _feed(detector: MasterGrowthDetector, hours: float, mem, reserved=None, step: float = 10.0,  # type: ignore[no-untyped-def]
          seed: int = 0) -> list[Finding]:
    """Readings every ``step`` seconds; ``mem(t)`` and ``reserved(t)`` give the values at time t."""
    rng = random.Random(seed)
    found: list[Finding] = []
    t = 0.0
    while t <= hours * HOUR:
        value = int(mem(t) + rng.uniform(-1, 1) * MiB)
        count = None if reserved is None else int(reserved(t, rng))
        found += detector.observe_master(MasterSample(pid=1, mem=value, rss=value + 50 * MiB, at=t), count)
        t += step
    return found


def detector(*, threshold: int = 64 * MiB, min_span: float = 1800.0, grace: float = 60.0,
             max_points: int = 240) -> MasterGrowthDetector:
    return MasterGrowthDetector(threshold=threshold, min_span=min_span, grace=grace, max_points=max_points)


class TestGrowth:
    def test_steady_growth_is_reported(self) -> None:
        """A master growing 40 MiB/h is reported once it grew what its history asks for, with rate and span."""
        master = detector()
        found = _feed(master, 3, lambda t: 200 * MiB + 40 * MiB * t / HOUR)
        assert found and found[0].event == MASTER_GROWTH
        fields = found[0].fields
        assert fields["mib_per_hour"] == pytest.approx(40, rel=0.1)
        since = float(fields["since_s"])  # type: ignore[arg-type]
        assert since >= 1800
        assert float(fields["growth_mib"]) * MiB >= master.required_growth(since) * 0.98  # type: ignore[arg-type]
        assert {"mem_mib", "mib_per_hour", "since_s", "growth_mib", "note"} <= set(fields)

    def test_flat_master_with_big_cow_table(self) -> None:
        """A master that loaded a big table before the fork (inside the grace) and stays flat is not reported."""
        assert _feed(detector(), 4, lambda t: (150 * MiB if t < 30 else 900 * MiB)) == []

    def test_startup_growth_then_flat(self) -> None:
        """Growth during start-up only (the grace period) is the baseline, not growth."""
        assert _feed(detector(grace=300.0), 4, lambda t: 100 * MiB + min(t, 250.0) * MiB) == []

    def test_levelled_off_growth(self) -> None:
        """Memory that rose early then stayed flat for hours does not 'keep growing'."""
        found = _feed(detector(min_span=2 * HOUR), 4, lambda t: 200 * MiB + min(t, 1800.0) / 1800.0 * 100 * MiB)
        assert found == []

    def test_noise_without_trend(self) -> None:
        """Swings of ±20 MiB around a level are not growth."""
        rng = random.Random(4)
        assert _feed(detector(threshold=16 * MiB), 4, lambda t: 300 * MiB + rng.uniform(-20, 20) * MiB) == []

    def test_below_threshold(self) -> None:
        """Steady growth that stays under a quarter of the threshold (the least ever needed) is not reported."""
        assert _feed(detector(), 3, lambda t: 200 * MiB + 4 * MiB * t / HOUR) == []

    def test_reported_again_only_when_materially_worse(self) -> None:
        """Each later finding is at least ``worse_factor`` times the previous growth."""
        found = _feed(detector(), 12, lambda t: 200 * MiB + 40 * MiB * t / HOUR, step=30.0)
        growths = [float(f.fields["growth_mib"]) for f in found]  # type: ignore[arg-type]
        assert 2 <= len(growths) <= 8
        assert all(b >= 1.5 * a for a, b in zip(growths, growths[1:]))

    def test_history_is_bounded(self) -> None:
        """Days of one-second readings keep at most ``max_points`` points."""
        master = detector(max_points=64)
        _feed(master, 24, lambda t: 200 * MiB, step=1.0)
        assert len(master._points) <= 65
        assert master.baseline is not None

    def test_invalid_settings_are_rejected(self) -> None:
        """A zero threshold is refused."""
        with pytest.raises(ValueError):
            MasterGrowthDetector(threshold=0, min_span=1.0)


class TestReservedNote:
    def test_prefetched_messages_account_for_growth(self) -> None:
        """Reserved messages rising with memory are named as the likely cause."""
        found = _feed(detector(), 3, lambda t: 200 * MiB + 40 * MiB * t / HOUR,
                      reserved=lambda t, rng: 10 + 300 * t / HOUR + rng.uniform(-3, 3))
        note = str(found[0].fields["note"])
        assert "likely account" in note
        assert found[0].fields["reserved"] > 100  # type: ignore[operator]

    def test_flat_reserved_messages_do_not_explain_growth(self) -> None:
        """Reserved messages that do not follow memory are ruled out."""
        found = _feed(detector(), 3, lambda t: 200 * MiB + 40 * MiB * t / HOUR,
                      reserved=lambda t, rng: 8 + rng.randint(-2, 2))
        assert "do not explain" in str(found[0].fields["note"])

    def test_without_reserved_counts(self) -> None:
        """Without reserved counts the note says they were not measured."""
        found = _feed(detector(), 3, lambda t: 200 * MiB + 40 * MiB * t / HOUR)
        assert "not measured" in str(found[0].fields["note"])
        assert "reserved" not in found[0].fields


def _first_finding_at(master: MasterGrowthDetector, step: float, mib_per_s: float, until: float = 600.0
                      ) -> tuple[float, Finding] | None:
    """Feed readings every ``step`` s of a master growing ``mib_per_s`` (±0.3 MiB noise); the first finding."""
    rng = random.Random(1)
    t = 0.0
    while t <= until:
        value = int(80 * MiB + mib_per_s * MiB * t + rng.uniform(-0.3, 0.3) * MiB)
        found = master.observe_master(MasterSample(pid=1, mem=value, rss=value, at=t), 0)
        if found:
            return t, found[0]
        t += step
    return None


class TestShortWindow:
    """A short grace and span (what ``memguard_master_growth_grace``/``_min_span`` set) and the reading spacing."""

    def test_short_span_reported_soon_with_frequent_readings(self) -> None:
        """grace 2 s, min_span 20 s, 16 MiB, readings every second: reported ~20 s after the baseline."""
        master = MasterGrowthDetector(threshold=16 * MiB, grace=2.0, min_span=20.0)
        first = _first_finding_at(master, 1.0, 2.0)
        assert first is not None
        at, finding = first
        assert 20.0 <= at <= 30.0
        assert float(finding.fields["since_s"]) >= 20.0  # type: ignore[arg-type]
        assert float(finding.fields["mib_per_hour"]) == pytest.approx(2.0 * 3600, rel=0.1)  # type: ignore[arg-type]

    def test_ten_second_readings_need_about_two_minutes(self) -> None:
        """With readings 10 s apart the trend tests need ~11 readings after the grace, whatever min_span says."""
        master = MasterGrowthDetector(threshold=16 * MiB, grace=2.0, min_span=20.0)
        first = _first_finding_at(master, 10.0, 2.0)
        assert first is not None and first[0] >= 100.0

    def test_grace_is_ignored(self) -> None:
        """Readings within ``grace`` seconds of the first are neither baseline nor history."""
        master = MasterGrowthDetector(threshold=16 * MiB, grace=30.0, min_span=20.0)
        for t in range(0, 30):
            assert master.observe_master(MasterSample(pid=1, mem=(100 + t) * MiB, rss=0, at=float(t)), 0) == []
        assert master.baseline is None

    @pytest.mark.parametrize(("min_span", "interval"), [
        (600.0, MAX_SAMPLE_INTERVAL), (3600.0, MAX_SAMPLE_INTERVAL), (150.0, 5.0), (20.0, 20.0 / 30),
        (1.0, MIN_SAMPLE_INTERVAL), (0.0, MIN_SAMPLE_INTERVAL)])
    def test_sample_interval_follows_min_span(self, min_span: float, interval: float) -> None:
        """The spacing of readings the detector asks for: min_span / 30, between 0.5 s and 10 s."""
        master = MasterGrowthDetector(threshold=MiB, min_span=min_span)
        assert master.sample_interval == pytest.approx(interval)


class TestBuildDetectors:
    """build_detectors passes the memguard_master_growth_* settings to the detector."""

    @staticmethod
    def master_of(conf: dict[str, object]) -> MasterGrowthDetector | None:
        cfg = MemGuardConfig.from_mapping(conf, 8 * 1024 * MiB)
        found = [d for d in build_detectors(cfg) if isinstance(d, MasterGrowthDetector)]
        assert len(found) <= 1
        return found[0] if found else None

    def test_defaults(self) -> None:
        master = self.master_of({})
        assert master is not None
        assert (master.threshold, master.grace, master.min_span) == (64 * MiB, 20.0, 60.0)

    def test_configured(self) -> None:
        master = self.master_of({"memguard_master_growth_threshold": "16MiB", "memguard_master_growth_grace": 2,
                                 "memguard_master_growth_min_span": "20"})
        assert master is not None
        assert (master.threshold, master.grace, master.min_span) == (16 * MiB, 2.0, 20.0)

    def test_off(self) -> None:
        """No threshold, or no detection at all: no master detector."""
        assert self.master_of({"memguard_master_growth_threshold": None}) is None
        assert self.master_of({"memguard_leak_detection": False, "memguard_master_growth_grace": 1}) is None


def _on_defaults() -> MasterGrowthDetector:
    cfg = MemGuardConfig.from_mapping({}, 8 * 1024 * MiB)
    found = [d for d in build_detectors(cfg) if isinstance(d, MasterGrowthDetector)]
    assert len(found) == 1
    return found[0]


def _first_at(master: MasterGrowthDetector, mem, until: float, seed: int = 0,  # type: ignore[no-untyped-def]
              noise: float = 1.0) -> float | None:
    """Readings every ``master.sample_interval`` s (what the monitor does) of ``mem(t)`` ± ``noise`` MiB."""
    rng = random.Random(seed)
    t = 0.0
    while t <= until:
        value = int(mem(t) + rng.uniform(-noise, noise) * MiB)
        if master.observe_master(MasterSample(pid=1, mem=value, rss=value, at=t), 0):
            return t
        t += master.sample_interval
    return None


class TestSpeedOnDefaults:
    """Issue 9: time to report scales with the evidence, on the default settings."""

    @pytest.mark.parametrize("mib_per_s", [1.0, 2.0, 8.0])
    def test_fast_growth_named_within_two_minutes(self, mib_per_s: float) -> None:
        """>= 1 MiB/s (55 MiB at start) is named within 120 s of the first reading."""
        for seed in range(3):
            at = _first_at(_on_defaults(), lambda t: 55 * MiB + mib_per_s * MiB * t, 300.0, seed)
            assert at is not None and at <= 120.0, (mib_per_s, seed, at)

    @pytest.mark.parametrize("mib_per_hour", [20.0, 40.0, 200.0])
    def test_slow_growth_named_within_three_hours(self, mib_per_hour: float) -> None:
        """20 MiB/h (and faster) is named within its first 3 hours, with ±1 MiB of noise."""
        for seed in range(3):
            at = _first_at(_on_defaults(), lambda t: 120 * MiB + mib_per_hour * MiB * t / HOUR, 3 * HOUR, seed)
            assert at is not None and at <= 3 * HOUR, (mib_per_hour, seed, at)

    @pytest.mark.parametrize("step_at", [25.0, 40.0, 90.0, 600.0, 3600.0])
    @pytest.mark.parametrize("step_mib", [20.0, 100.0, 400.0])
    def test_one_step_then_flat_never_named(self, step_at: float, step_mib: float) -> None:
        """A prefetch fill / cache warm-up / big import (over 5 s) then flat: never named in 6 hours."""
        def mem(t: float) -> float:
            return 80 * MiB + step_mib * MiB * min(1.0, max(0.0, (t - step_at) / 5.0))
        for seed in range(2):
            assert _first_at(_on_defaults(), mem, 6 * HOUR, seed) is None

    def test_warm_up_over_a_minute_then_flat_not_named(self) -> None:
        """Growth over one minute (30 MiB/min) that then stays flat is not named once it has levelled off."""
        def mem(t: float) -> float:
            return 80 * MiB + 30 * MiB * min(1.0, max(0.0, (t - 30.0) / 60.0))
        assert _first_at(_on_defaults(), mem, 3 * HOUR) is None

    def test_flat_noisy_master_never_named(self) -> None:
        for seed in range(3):
            assert _first_at(_on_defaults(), lambda t: 150 * MiB, 6 * HOUR, seed, noise=3.0) is None

    def test_required_growth_falls_with_the_history(self) -> None:
        master = _on_defaults()
        assert master.required_growth(60.0) == 64 * MiB
        assert master.required_growth(1200.0) == 32 * MiB
        assert master.required_growth(10 * HOUR) == 16 * MiB
