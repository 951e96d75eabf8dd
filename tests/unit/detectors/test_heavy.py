"""Tests for celery_memguard.detectors.heavy.HeavyTaskDetector: thresholds, typical peaks, rate limiting."""

from __future__ import annotations

import pytest

from celery_memguard.detectors import HEAVY_TASK, HeavyTaskDetector
from celery_memguard.detectors.heavy import advice

from .scenarios import SCENARIOS, MiB, named, run

BASE = 200 * MiB


def _call(task: str, peak: int | None, retained: int = 0, *, n: int = 0, pid: int = 11) -> tuple:
    from celery_memguard.samples import TaskSample

    return TaskSample(pid=pid, task=task, task_id=f"{task}-{n}", started=float(n), duration=0.1,
                      mem_before=BASE, mem_after=BASE + retained,
                      per_task_peak=None if peak is None else BASE + peak, succeeded=True), float(n)


def _feed(detector: HeavyTaskDetector, calls: list[tuple]) -> list:
    found = []
    for sample, now in calls:
        found += detector.observe_task(sample, now)
    return found


class TestThresholds:
    def test_fixed_threshold(self) -> None:
        """A call whose own peak reaches the threshold is heavy, below it is not."""
        detector = HeavyTaskDetector(threshold=100 * MiB, multiple=None)
        assert _feed(detector, [_call("t", 99 * MiB)]) == []
        found = _feed(detector, [_call("big", 100 * MiB, retained=3 * MiB, n=1)])
        assert [f.event for f in found] == [HEAVY_TASK]
        fields = found[0].fields
        assert fields["task"] == "big" and fields["task_id"] == "big-1" and fields["pid"] == 11
        assert fields["peak_mib"] == 100.0 and fields["retained_mib"] == 3.0
        assert "chunk" in str(fields["advice"]).lower() and "queue" in str(fields["advice"])

    def test_multiple_of_typical_peak(self) -> None:
        """After enough calls, a peak above ``multiple`` x the median peak of all tasks is heavy."""
        detector = HeavyTaskDetector(threshold=None, multiple=8.0, floor=16 * MiB)
        _feed(detector, [_call("small", 4 * MiB, n=n) for n in range(40)])
        assert detector.typical == 4 * MiB
        assert _feed(detector, [_call("medium", 31 * MiB, n=50)]) == []
        found = _feed(detector, [_call("large", 33 * MiB, n=51)])
        assert found and found[0].fields["typical_peak_mib"] == 4.0

    def test_floor_protects_tiny_tasks(self) -> None:
        """Twenty times a tiny typical peak is still below the floor: not heavy."""
        detector = HeavyTaskDetector(threshold=None, multiple=8.0, floor=16 * MiB)
        _feed(detector, [_call("tiny", MiB // 10, n=n) for n in range(40)])
        assert _feed(detector, [_call("t", 2 * MiB, n=99)]) == []

    def test_multiple_needs_history(self) -> None:
        """Before ``min_history`` calls there is no typical peak, so only a fixed threshold applies."""
        detector = HeavyTaskDetector(threshold=None, multiple=8.0, min_history=20)
        assert _feed(detector, [_call("t", 500 * MiB)]) == []

    def test_missing_peak_uses_retained(self) -> None:
        """Without a kernel peak, the retained memory is the own-peak lower bound."""
        detector = HeavyTaskDetector(threshold=50 * MiB, multiple=None)
        found = _feed(detector, [_call("t", None, retained=60 * MiB)])
        assert found and found[0].fields["peak_mib"] == 60.0

    def test_needs_a_threshold(self) -> None:
        """With neither a threshold nor a multiple there is nothing to detect."""
        with pytest.raises(ValueError):
            HeavyTaskDetector(threshold=None, multiple=None)
        with pytest.raises(ValueError):
            HeavyTaskDetector(threshold=None, multiple=1.0)


class TestRateLimit:
    def test_repeats_are_counted_not_logged(self) -> None:
        """The same task is reported again only after ``repeat_after``, counting the heavy calls since the last report."""
        detector = HeavyTaskDetector(threshold=100 * MiB, multiple=None, repeat_after=600.0)
        found = _feed(detector, [_call("t", 200 * MiB, n=n) for n in range(0, 500, 50)])
        assert len(found) == 1 and found[0].fields["occurrences"] == 1
        later = _feed(detector, [_call("t", 200 * MiB, n=700)])
        assert len(later) == 1 and later[0].fields["occurrences"] == 10  # 9 suppressed + this one

    def test_much_bigger_peak_is_reported_at_once(self) -> None:
        """A peak ``worse_factor`` times the last reported one is reported without waiting."""
        detector = HeavyTaskDetector(threshold=100 * MiB, multiple=None)
        _feed(detector, [_call("t", 200 * MiB, n=0)])
        assert _feed(detector, [_call("t", 250 * MiB, n=1)]) == []
        assert len(_feed(detector, [_call("t", 301 * MiB, n=2)])) == 1

    def test_other_tasks_are_not_rate_limited(self) -> None:
        """Rate limiting is per task name."""
        detector = HeavyTaskDetector(threshold=100 * MiB, multiple=None)
        found = _feed(detector, [_call("a", 200 * MiB, n=0), _call("b", 200 * MiB, n=1)])
        assert [f.task for f in found] == ["a", "b"]

    def test_remembered_names_are_bounded(self) -> None:
        """Only ``max_tasks`` task names are remembered for rate limiting."""
        detector = HeavyTaskDetector(threshold=100 * MiB, multiple=None, max_tasks=5)
        _feed(detector, [_call(f"t{n}", 200 * MiB, n=n) for n in range(20)])
        assert len(detector._reported) == 5


class TestScenarios:
    @pytest.mark.parametrize("scenario", SCENARIOS, ids=[s.name for s in SCENARIOS])
    def test_heavy_names_exactly_the_heavy_tasks(self, scenario) -> None:  # type: ignore[no-untyped-def]
        """Spikes and huge buffers are named heavy; leaks, caches and clean tasks are not."""
        found = run(HeavyTaskDetector(threshold=None, multiple=8.0), scenario.samples(seed=0))
        assert named(found, HEAVY_TASK) == set(scenario.heavy)

    def test_advice_text(self) -> None:
        """The advice names the task, its peak and the typical peak."""
        text = advice("app.import", 600 * MiB, 2 * MiB)
        assert "app.import needed 600 MiB" in text and "typical task: 2.0 MiB" in text
        assert "own queue" in text
