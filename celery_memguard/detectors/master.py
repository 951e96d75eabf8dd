"""Master growth: does the worker's main process itself keep growing?

Celery's own advice for a worker whose memory climbs: check whether the master
grows (a Celery/kombu problem, or code running in the main process) or only the
pool children (a task problem). This detector watches the master's USS/PSS after
a start-up grace, against a baseline taken right after it, and reports when the
memory keeps growing: a positive Theil–Sen slope over time, a significant
Mann–Kendall trend, still rising in the latest half of the history, the growth
spread over the history (not one step), and enough growth above the baseline.
Pages the master shares copy-on-write with its children (a big table loaded
before the fork) are part of the baseline and do not count.

**Time to report scales with the evidence.** A fast leak is named as soon as it is
``threshold`` bytes above the baseline and the trend tests agree (at least
``min_span`` seconds and a dozen readings after the baseline): a master growing
1 MiB/s is named ~90 s after start on defaults. A slow one is named once it has
grown steadily for long enough: the growth needed falls from ``threshold`` in
proportion to the history beyond :data:`PATIENT_SPAN` (or ``min_span`` if longer),
down to a quarter of ``threshold`` (64 → 16 MiB on defaults: 20 MiB/h is named after
~48 minutes). A master that steps up once and stays flat is never named: a step
puts the growth in one short stretch of the history (see ``min_spread``) and the
latest half of the history does not rise.

When the number of reserved (prefetched, unacknowledged) messages is passed in,
the finding's ``note`` says whether they rise and fall with the master's memory
(and so likely account for it) or not.

History is bounded: points are kept at a spacing that doubles whenever the
history is full, so hours of polls fit in ``max_points`` readings.
:attr:`MasterGrowthDetector.sample_interval` is the spacing that fits
:data:`READINGS_PER_SPAN` readings into ``min_span`` (between
:data:`MIN_SAMPLE_INTERVAL` and :data:`MAX_SAMPLE_INTERVAL`).
"""

from __future__ import annotations

from ..config import DEFAULTS
from ..samples import MasterSample
from ..units import mib
from .base import MASTER_GROWTH, Detector, Finding
from .stats import downsample, kendall_tau_b, mann_kendall, median, normal_sf, theil_sen

__all__ = ["MasterGrowthDetector", "MAX_SAMPLE_INTERVAL", "MIN_SAMPLE_INTERVAL", "READINGS_PER_SPAN", "PATIENT_SPAN"]

_POINTS = 48
#: Longest spacing (seconds) of master readings the detector asks for: the master changes slowly.
MAX_SAMPLE_INTERVAL = 10.0
#: Shortest spacing (seconds) it asks for: an exact USS/PSS reading costs ~0.5 ms (measured, 40 MiB process).
MIN_SAMPLE_INTERVAL = 0.5
#: Readings wanted within ``min_span``, so that a span that short can hold a finding.
READINGS_PER_SPAN = 30
#: Seconds of history after which less than ``threshold`` growth suffices (in proportion, down to a quarter).
PATIENT_SPAN = 600.0
#: Fewest readings after the baseline for a finding (the trend tests need about a dozen).
MIN_READINGS = 12


class MasterGrowthDetector(Detector):
    """Reports a master that keeps growing beyond ``threshold`` bytes above its post-start-up baseline.

    * ``threshold`` – growth above the baseline needed for a finding (bytes).
    * ``min_span`` – the shortest post-baseline history (seconds) for a finding; readings are spaced so that
      READINGS_PER_SPAN of them fit in it.
    * ``grace`` – seconds after the first reading that are start-up (imports, pool start, first prefetch).
    * ``baseline_points`` – readings after the grace whose median is the baseline.
    * ``alpha`` – significance level of the trend test.
    * ``worse_factor`` – after a finding, report again once growth reaches this many times the last one.
    * ``max_points`` – readings kept.
    * ``min_spread`` – the growth from a quarter to three quarters of it must take at least this share of
      the history (a linear ramp: 0.5; a step: ~0).
    """

    name = "master"

    def __init__(
        self,
        *,
        threshold: int,
        min_span: float = DEFAULTS["master_growth_min_span"],
        grace: float = DEFAULTS["master_growth_grace"],
        baseline_points: int = 5,
        alpha: float = 0.01,
        worse_factor: float = 1.5,
        max_points: int = 240,
        min_spread: float = 0.2,
    ) -> None:
        if threshold <= 0 or min_span < 0 or grace < 0 or baseline_points < 1 or max_points < 16:
            raise ValueError("threshold > 0, min_span >= 0, grace >= 0, baseline_points >= 1, max_points >= 16")
        self.threshold = threshold
        self.min_span = min_span
        self.grace = grace
        self.baseline_points = baseline_points
        self.alpha = alpha
        self.worse_factor = worse_factor
        self.max_points = max_points
        self.min_spread = min_spread
        self._start: float | None = None
        self._points: list[tuple[float, int, int | None]] = []  # (at, mem, reserved)
        self._spacing = 0.0
        self._baseline: tuple[float, float, float | None] | None = None  # (at, mem, reserved)
        self._pending: list[tuple[float, int, int | None]] = []
        self._latest: tuple[float, int, int | None] | None = None
        self._reported_growth: float | None = None

    @property
    def sample_interval(self) -> float:
        """Seconds between master readings this detector needs: ``min_span`` / READINGS_PER_SPAN, within bounds.

        10 s (MAX_SAMPLE_INTERVAL) for a ``min_span`` of 600 s or more; shorter spans ask for
        readings more often (down to MIN_SAMPLE_INTERVAL).
        """
        return min(MAX_SAMPLE_INTERVAL, max(MIN_SAMPLE_INTERVAL, self.min_span / READINGS_PER_SPAN))

    @property
    def baseline(self) -> int | None:
        """The post-start-up baseline (bytes), once taken."""
        return int(self._baseline[1]) if self._baseline is not None else None

    def observe_master(self, sample: MasterSample, reserved_messages: int | None = None) -> list[Finding]:
        if self._start is None:
            self._start = sample.at
        if sample.at - self._start < self.grace:
            return []
        point = (sample.at, sample.mem, reserved_messages)
        self._latest = point
        if self._baseline is None:
            self._pending.append(point)
            if len(self._pending) >= self.baseline_points:
                reserved = [r for _, _, r in self._pending if r is not None]
                self._baseline = (
                    self._pending[0][0],
                    median([m for _, m, _ in self._pending]),
                    median(reserved) if reserved else None,
                )
                self._points = list(self._pending)
                self._pending = []
            return []
        if self._points and sample.at - self._points[-1][0] < self._spacing:
            return []
        self._points.append(point)
        if len(self._points) > self.max_points:
            self._points = self._points[::2] + ([point] if len(self._points) % 2 == 0 else [])
            self._spacing = max(self._spacing * 2, (self._points[-1][0] - self._points[0][0]) / self.max_points)
        return self._evaluate()

    def required_growth(self, span: float) -> float:
        """Growth above the baseline needed for a finding after ``span`` seconds of history."""
        patient = max(PATIENT_SPAN, self.min_span)
        return self.threshold * min(1.0, max(0.25, patient / span if span > 0 else 1.0))

    def _evaluate(self) -> list[Finding]:
        assert self._baseline is not None and self._latest is not None
        base_at, base_mem, base_reserved = self._baseline
        at, _, reserved_now = self._latest
        span = at - base_at
        if span < self.min_span or len(self._points) < MIN_READINGS:
            return []
        current = median([m for _, m, _ in self._points[-3:]])
        growth = current - base_mem
        if growth < self.required_growth(span):
            return []
        if self._reported_growth is not None and growth < self.worse_factor * self._reported_growth:
            return []
        points = downsample(self._points, _POINTS)
        xs = [p[0] for p in points]
        ys = [float(p[1]) for p in points]
        slope = theil_sen(xs, ys)
        if slope <= 0 or normal_sf(mann_kendall(ys).z) > self.alpha:
            return []
        half = len(points) // 2
        recent = theil_sen(xs[half:], ys[half:])
        average = growth / span if span > 0 else 0.0
        if recent < 0.25 * max(slope, average) or normal_sf(mann_kendall(ys[half:]).z) > self.alpha:
            return []  # grew, but has levelled off: the latest half no longer rises like the whole
        if self._spread(base_mem, growth) < self.min_spread * span:
            return []  # most of the growth came in one short stretch: a step, not a leak
        self._reported_growth = growth
        fields: dict[str, object] = {
            "mem_mib": mib(current),
            "mib_per_hour": mib(slope * 3600),
            "since_s": round(span, 1),
            "growth_mib": mib(growth),
        }
        if reserved_now is not None:
            fields["reserved"] = reserved_now
        fields["note"] = self._note(points, base_reserved, reserved_now)
        return [Finding(MASTER_GROWTH, fields)]

    def _spread(self, base: float, growth: float) -> float:
        """Seconds from the first reading a quarter of ``growth`` above ``base`` to the first three quarters above."""
        quarter = three = None
        for t, mem, _ in self._points:
            if quarter is None and mem >= base + 0.25 * growth:
                quarter = t
            if mem >= base + 0.75 * growth:
                three = t
                break
        return (three - quarter) if quarter is not None and three is not None else 0.0

    def _note(self, points: list[tuple[float, int, int | None]], base: float | None, now: int | None) -> str:
        pairs = [(float(m), float(r)) for _, m, r in points if r is not None]
        if base is None or now is None or len(pairs) < 8:
            return (
                "the master itself grows: suspect Celery/kombu or code running in the main process "
                "(signal handlers, beat, result consumers); reserved messages were not measured."
            )
        tau = kendall_tau_b([m for m, _ in pairs], [r for _, r in pairs])
        if now > base and tau >= 0.5:
            return (
                f"reserved/prefetched messages rose from {base:.0f} to {now} with the master's memory "
                f"(rank correlation {tau:.2f}): unacknowledged prefetched messages are held in the master "
                f"(worker_prefetch_multiplier, acks_late, ETA/countdown tasks) and likely account for this growth."
            )
        return (
            f"reserved/prefetched messages ({base:.0f} -> {now}) do not follow the master's memory "
            f"(rank correlation {tau:.2f}): they do not explain this growth; suspect Celery/kombu or code "
            f"running in the main process."
        )
