"""Tests for celery_memguard.detectors.stats: hand-checked values of the robust statistics."""

from __future__ import annotations

import math

import pytest

from celery_memguard.detectors.stats import (
    Kendall,
    downsample,
    kendall_tau_b,
    kendall_z,
    mann_kendall,
    median,
    normal_sf,
    sign_test_p,
    theil_sen,
    weighted_median,
)


class TestMedians:
    def test_median_odd_and_even(self) -> None:
        """The median of an odd count is the middle value, of an even count the mean of the two middle ones."""
        assert median([3, 1, 2]) == 2.0
        assert median([4, 1, 3, 2]) == 2.5

    def test_median_of_nothing_raises(self) -> None:
        """An empty sequence has no median."""
        with pytest.raises(ValueError):
            median([])

    def test_weighted_median_follows_the_weight(self) -> None:
        """A heavily weighted value wins the weighted median."""
        assert weighted_median([1.0, 100.0], [1.0, 10.0]) == 100.0
        assert weighted_median([1.0, 2.0, 3.0], [1.0, 1.0, 1.0]) == 2.0

    def test_weighted_median_exact_half_averages(self) -> None:
        """When the cumulative weight hits exactly half, the two neighbours are averaged."""
        assert weighted_median([1.0, 3.0], [1.0, 1.0]) == 2.0

    def test_weighted_median_ignores_zero_weights(self) -> None:
        """Values with no weight do not count; no positive weight at all is an error."""
        assert weighted_median([1.0, 50.0], [1.0, 0.0]) == 1.0
        with pytest.raises(ValueError):
            weighted_median([1.0], [0.0])


class TestTheilSen:
    def test_exact_line(self) -> None:
        """On a straight line the slope is exact."""
        xs = [0.0, 1.0, 2.0, 3.0, 4.0]
        assert theil_sen(xs, [3 * x + 1 for x in xs]) == 3.0

    def test_one_outlier_does_not_move_it(self) -> None:
        """A single huge value (one big payload) leaves the slope of the rest intact."""
        xs = [float(x) for x in range(11)]
        ys = [2 * x for x in xs]
        ys[5] += 1000
        assert theil_sen(xs, ys) == 2.0

    def test_repeated_x_values_are_skipped(self) -> None:
        """Pairs with equal x have no slope and are left out instead of dividing by zero."""
        assert theil_sen([0.0, 0.0, 1.0], [0.0, 5.0, 1.0]) == -1.5  # median of slopes 1 and -4
        assert theil_sen([1.0, 1.0], [0.0, 5.0]) == 0.0

    def test_too_few_points(self) -> None:
        """Fewer than two points have slope 0."""
        assert theil_sen([1.0], [1.0]) == 0.0


class TestMannKendall:
    def test_increasing_series_without_ties(self) -> None:
        """S counts concordant pairs; var = n(n-1)(2n+5)/18."""
        result = mann_kendall([1, 2, 3, 4])
        assert result.s == 6
        assert result.var == pytest.approx(4 * 3 * 13 / 18)

    def test_tie_correction(self) -> None:
        """A tied group of size t removes t(t-1)(2t+5)/18 from the variance."""
        result = mann_kendall([1, 1, 2])
        assert result.s == 2
        assert result.var == pytest.approx((3 * 2 * 11 - 2 * 1 * 9) / 18)

    def test_flat_series_has_no_trend(self) -> None:
        """A constant series has S = 0, variance 0 and z = 0."""
        result = mann_kendall([5, 5, 5, 5])
        assert (result.s, result.var, result.z) == (0, 0.0, 0.0)

    def test_combining_children_sums_s_and_variance(self) -> None:
        """Kendall results from independent children add up (seasonal Kendall)."""
        combined = mann_kendall([1, 2, 3]) + mann_kendall([3, 2, 1, 0])
        assert combined == Kendall(3 - 6, mann_kendall([1, 2, 3]).var + mann_kendall([3, 2, 1, 0]).var)

    def test_z_has_continuity_correction(self) -> None:
        """z moves S one step towards zero before dividing by the standard deviation."""
        assert kendall_z(10, 25.0) == pytest.approx(9 / 5)
        assert kendall_z(-10, 25.0) == pytest.approx(-9 / 5)
        assert kendall_z(0, 25.0) == 0.0

    def test_normal_tail(self) -> None:
        """normal_sf is the upper tail of the standard normal."""
        assert normal_sf(0.0) == pytest.approx(0.5)
        assert normal_sf(2.326) == pytest.approx(0.01, abs=1e-4)


class TestSignTest:
    def test_exact_small_counts(self) -> None:
        """Three growing calls and none shrinking happen by chance one time in eight."""
        assert sign_test_p(3, 0) == pytest.approx(0.125)
        assert sign_test_p(0, 3) == pytest.approx(1.0)

    def test_no_trials(self) -> None:
        """With no growing or shrinking call there is no evidence."""
        assert sign_test_p(0, 0) == 1.0

    def test_balanced_is_not_significant(self) -> None:
        """Equal counts give p > 0.5."""
        assert sign_test_p(50, 50) > 0.5

    def test_large_counts_use_the_normal_approximation(self) -> None:
        """Above 200 trials the normal approximation is close to the exact tail."""
        approx = sign_test_p(130, 100)
        exact = sum(math.comb(230, k) for k in range(130, 231)) / 2**230
        assert approx == pytest.approx(exact, rel=0.1)


class TestTauAndDownsample:
    def test_tau_b_extremes(self) -> None:
        """Same order gives 1, reversed order -1, a constant series 0."""
        xs = [1.0, 2.0, 3.0, 4.0]
        assert kendall_tau_b(xs, [10.0, 20.0, 30.0, 40.0]) == pytest.approx(1.0)
        assert kendall_tau_b(xs, [4.0, 3.0, 2.0, 1.0]) == pytest.approx(-1.0)
        assert kendall_tau_b(xs, [7.0, 7.0, 7.0, 7.0]) == 0.0

    def test_downsample_keeps_ends_and_size(self) -> None:
        """Downsampling keeps the first and last items and returns exactly ``limit`` items."""
        items = list(range(201))
        picked = downsample(items, 32)
        assert len(picked) == 32
        assert picked[0] == 0 and picked[-1] == 200
        assert picked == sorted(set(picked))

    def test_downsample_short_input_unchanged(self) -> None:
        """A sequence within the limit is returned as is."""
        assert downsample([1, 2, 3], 32) == [1, 2, 3]
        assert downsample([1, 2, 3], 1) == [3]
        assert downsample([1, 2, 3], 0) == []
