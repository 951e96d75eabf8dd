"""Small, dependency-free robust statistics used by the detectors.

Pure functions over short sequences (the detectors downsample to a few dozen
points before calling them, so the O(n²) pairwise estimators stay cheap):

* :func:`theil_sen` – median of pairwise slopes; a few outliers (one huge
  payload, one arena step) barely move it, unlike least squares.
* :func:`mann_kendall` – the Mann–Kendall S statistic with the tie-corrected
  variance; RSS moves in whole pages, so flat stretches (ties) are the rule.
  Results from independent series (one per pool child) are combined by summing
  S and the variances, as in the seasonal/regional Kendall test.
* :func:`sign_test_p` – exact one-sided binomial sign test (normal
  approximation above 200 trials).
* :func:`kendall_tau_b` – rank correlation of two series (master memory versus
  reserved messages).
* :func:`median`, :func:`weighted_median`, :func:`downsample`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence, TypeVar

__all__ = [
    "Kendall",
    "median",
    "weighted_median",
    "theil_sen",
    "mann_kendall",
    "kendall_z",
    "normal_sf",
    "sign_test_p",
    "kendall_tau_b",
    "downsample",
]

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Kendall:
    """Mann–Kendall statistic ``s`` and its tie-corrected variance ``var`` under "no trend"."""

    s: int
    var: float

    def __add__(self, other: "Kendall") -> "Kendall":
        return Kendall(self.s + other.s, self.var + other.var)

    @property
    def z(self) -> float:
        return kendall_z(self.s, self.var)


def median(values: Sequence[float]) -> float:
    """The median of a non-empty sequence."""
    ordered = sorted(values)
    n = len(ordered)
    if n == 0:
        raise ValueError("median of an empty sequence")
    mid = n // 2
    if n % 2:
        return float(ordered[mid])
    return (ordered[mid - 1] + ordered[mid]) / 2.0


def weighted_median(values: Sequence[float], weights: Sequence[float]) -> float:
    """The value where the cumulative weight first reaches half the total (lower weighted median)."""
    pairs = sorted((v, w) for v, w in zip(values, weights) if w > 0)
    if not pairs:
        raise ValueError("weighted median needs at least one positive weight")
    total = sum(w for _, w in pairs)
    acc = 0.0
    for index, (value, weight) in enumerate(pairs):
        acc += weight
        if acc * 2 > total:
            return float(value)
        if acc * 2 == total:
            # exactly half: average with the next value, like the ordinary median
            return (value + pairs[index + 1][0]) / 2.0
    return float(pairs[-1][0])  # pragma: no cover - unreachable with positive weights


def theil_sen(xs: Sequence[float], ys: Sequence[float]) -> float:
    """Theil–Sen slope of ``ys`` against ``xs``: the median of all pairwise slopes (0.0 if fewer than 2 points)."""
    n = len(xs)
    slopes: list[float] = []
    if all(xs[i] < xs[i + 1] for i in range(n - 1)):
        for i in range(n - 1):  # fast path: strictly increasing x, no zero divisions
            xi, yi = xs[i], ys[i]
            slopes.extend([(yj - yi) / (xj - xi) for xj, yj in zip(xs[i + 1:], ys[i + 1:])])
    else:
        for i in range(n - 1):
            xi, yi = xs[i], ys[i]
            slopes.extend([(yj - yi) / (xj - xi) for xj, yj in zip(xs[i + 1:], ys[i + 1:]) if xj != xi])
    if not slopes:
        return 0.0
    return median(slopes)


def mann_kendall(ys: Sequence[float]) -> Kendall:
    """Mann–Kendall S of ``ys`` (in order) and its variance corrected for tied values."""
    n = len(ys)
    s = 0
    for i in range(n - 1):
        yi = ys[i]
        rest = ys[i + 1:]
        s += len([y for y in rest if y > yi]) - len([y for y in rest if y < yi])
    counts: dict[float, int] = {}
    for y in ys:
        counts[y] = counts.get(y, 0) + 1
    ties = sum(t * (t - 1) * (2 * t + 5) for t in counts.values() if t > 1)
    var = (n * (n - 1) * (2 * n + 5) - ties) / 18.0
    return Kendall(s, max(var, 0.0))


def kendall_z(s: int, var: float) -> float:
    """Continuity-corrected standard score of a Mann–Kendall S."""
    if var <= 0 or s == 0:
        return 0.0
    if s > 0:
        return (s - 1) / math.sqrt(var)
    return (s + 1) / math.sqrt(var)


def normal_sf(z: float) -> float:
    """P(Z > z) for a standard normal Z."""
    return 0.5 * math.erfc(z / math.sqrt(2.0))


def sign_test_p(positive: int, negative: int) -> float:
    """One-sided p-value that ``positive`` outnumbers ``negative`` by chance (fair coin)."""
    n = positive + negative
    if n == 0:
        return 1.0
    if n <= 200:
        tail = sum(math.comb(n, k) for k in range(positive, n + 1))
        return min(1.0, tail / float(2**n))
    z = (positive - negative - 1) / math.sqrt(n)
    return normal_sf(z)


def kendall_tau_b(xs: Sequence[float], ys: Sequence[float]) -> float:
    """Kendall's tau-b rank correlation (0.0 when either series is constant)."""
    n = len(xs)
    concordant = discordant = ties_x = ties_y = 0
    for i in range(n - 1):
        for j in range(i + 1, n):
            dx = xs[j] - xs[i]
            dy = ys[j] - ys[i]
            if dx == 0 and dy == 0:
                continue
            if dx == 0:
                ties_x += 1
            elif dy == 0:
                ties_y += 1
            elif (dx > 0) == (dy > 0):
                concordant += 1
            else:
                discordant += 1
    denominator = math.sqrt((concordant + discordant + ties_x) * (concordant + discordant + ties_y))
    if denominator == 0:
        return 0.0
    return (concordant - discordant) / denominator


def downsample(items: Sequence[T], limit: int) -> list[T]:
    """At most ``limit`` evenly spaced items, always keeping the first and the last."""
    n = len(items)
    if n <= limit:
        return list(items)
    if limit < 2:
        return [items[-1]] if limit == 1 else []
    step = (n - 1) / (limit - 1)
    return [items[round(k * step)] for k in range(limit)]
