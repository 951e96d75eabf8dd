"""Tests for celery_memguard.detectors.master.MasterGrowthDetector on synthetic master readings."""

from __future__ import annotations

import random

import pytest

from celery_memguard.detectors import MASTER_GROWTH, Finding, MasterGrowthDetector
from celery_memguard.samples import MasterSample

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
        """A master growing 40 MiB/h is reported once past the threshold, with rate and span."""
        found = _feed(detector(), 3, lambda t: 200 * MiB + 40 * MiB * t / HOUR)
        assert found and found[0].event == MASTER_GROWTH
        fields = found[0].fields
        assert fields["mib_per_hour"] == pytest.approx(40, rel=0.1)
        assert float(fields["growth_mib"]) >= 64  # type: ignore[arg-type]
        assert float(fields["since_s"]) >= 1800  # type: ignore[arg-type]
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
        """Steady growth that stays under the threshold is not reported."""
        assert _feed(detector(), 3, lambda t: 200 * MiB + 10 * MiB * t / HOUR) == []

    def test_reported_again_only_when_materially_worse(self) -> None:
        """Each later finding is at least ``worse_factor`` times the previous growth."""
        found = _feed(detector(), 12, lambda t: 200 * MiB + 40 * MiB * t / HOUR, step=30.0)
        growths = [float(f.fields["growth_mib"]) for f in found]  # type: ignore[arg-type]
        assert 2 <= len(growths) <= 6
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
