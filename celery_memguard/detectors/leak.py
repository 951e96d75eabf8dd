"""Leak detection with per-task attribution, aggregated over every pool child.

The master sees, for every finished task, what the task retained in its child,
and charges it to that task name in that child only. Which measure that is:

* **heap** (``heap_deltas=True``, where the C library has ``mallinfo2``): the
  change of the bytes the child's allocators hold in use across the task
  (:attr:`TaskSample.heap_retained`). The child measures it around the tasks that
  follow a growth of its RSS; tasks it did not measure are not in the series. A
  clean task that shares a child with a leaking one keeps a flat series even when
  it is the one that touches fresh pages.
* **rss** (elsewhere): ``mem_after - mem_before``. Memory a task frees stays
  resident, a leaking task refills it without RSS growing, and a clean task that
  runs next is charged the fresh pages: with interleaved task names the growth can
  be named on the wrong task (see docs/detection.md).

Per ``(task, child)`` the detector keeps a fixed window of the latest retained
deltas (after a per-child warm-up) and, every few calls of the task, recomputes:

* the **Theil–Sen slope** of the task's cumulative retained memory against its
  call number, per child, combined as the call-weighted median over children;
* the **Mann–Kendall** trend of that cumulative series (tie-corrected: RSS moves
  in whole pages, so flat stretches tie), per child, combined by summing S and
  the variances over children (the seasonal Kendall test);
* a **sign test** on the deltas themselves (ignoring moves of a page or two):
  fragmentation gives as many shrinking calls as growing ones, a leak does not;
* a **one-off step** check: if one or two calls carry most of the growth (a
  high-watermark step, a single huge payload) it is not a per-call leak;
* a **saturating-versus-linear** check: the slope in the second half of the
  window must not have collapsed against the first half (a bounded cache fills,
  then flattens);
* a **consecutive-growth** rule in the spirit of CPython's refleak hunter: the
  window is cut into (up to) four blocks and most blocks must have grown.

A task becomes a suspect when all of these agree, enough calls were seen and
enough memory was retained per child; :class:`LeakEstimate` says which check
failed otherwise. Each suspect is reported once, then again only when its
per-call estimate moves by more than half or its confidence changes band; a
reported suspect that stops growing for several analyses is reported cleared.

Memory is bounded (``window`` deltas per series, 8 bytes each, ``max_children`` series per
task, ``max_tasks`` task names, least recently seen evicted) and the per-call
path is an append; the statistics run on at most ``_POINTS`` points per child,
every call at first and every ``cadence`` calls of the task later on.
"""

from __future__ import annotations

import math
from array import array
from collections import OrderedDict
from dataclasses import dataclass
from typing import Sequence

from ..samples import TaskSample
from ..units import MiB
from .base import GROWTH_WATCH, LEAK_CLEARED, LEAK_SUSPECTED, Detector, Finding
from .stats import Kendall, downsample, mann_kendall, normal_sf, sign_test_p, theil_sen, weighted_median

__all__ = ["LeakDetector", "LeakEstimate"]

KiB = 1024

#: Most points one child contributes to the pairwise statistics (O(points²)).
_POINTS = 32
#: Confidence bands; a change of band re-reports a suspect.
_BANDS = (0.5, 0.7, 0.9)
#: Reasons a reported suspect may be cleared for (not: "still warming up").
#: A band change re-reports only if confidence also moved this much since the last report.
_HYSTERESIS = 0.1
#: Exited pids remembered (only to tell a reused pid from its predecessor).
_MAX_PIDS = 4096
_CLEARING = frozenset({"no growth", "no trend", "growth and shrink balanced", "saturating", "not growing lately"})
#: Reasons that do not rule growth out: a task with a per-call slope and these is watched (children measure
#: every call of it, settled) until it is judged.
_UNJUDGED = frozenset({"too little growth yet", "weak evidence", "freed in other tasks", "saturating",
                       "not growing lately", "no trend", "filling like a cache", "leak"})
#: The largest bounded cache (per child) a growing task is given the benefit of the doubt for.
CACHE_BOUND = 96 * MiB
#: Log-likelihood (nats) by which a constant rate of repeated calls must beat every cache of at most
#: CACHE_BOUND before a growing task is named (a likelihood ratio of ~20).
_CACHE_EVIDENCE = 3.0
#: Repeats coming significantly more often as entries grow (one-sided z) still mean "could be a cache".
_CACHE_TREND_Z = 1.0
#: Bins of a series' repeat history (see _Series.count).
_BINS = 64
#: Fewest keys a cache of CACHE_BOUND must have (at the task's entry size) for the cache model to apply.
_CACHE_MIN_KEYS = 64
#: Growing calls (over both halves of the windows) needed before the fill ratio is judged.
_FILL_MIN = 12


@dataclass(frozen=True, slots=True)
class LeakEstimate:
    """The outcome of one analysis of one task name.

    ``reason`` is ``"leak"`` for a suspect, otherwise the first check that
    failed. Sizes are bytes; ``slope`` is bytes retained per call in a child.
    """

    task: str
    suspect: bool
    reason: str
    slope: float
    recent_slope: float
    confidence: float
    calls_observed: int
    calls_analysed: int
    children: int
    growth_per_child: float
    trend_p: float
    sign_p: float
    efficiency: float
    step_share: float
    saturation: float | None
    block_fraction: float
    #: Whether the analysis used settled readings only (cyclic garbage collected within each call).
    settled: bool = False
    #: Growing calls in the latest half of the windows over those in the first half (a cache's new-key
    #: rate falls as it fills; a leak's does not), or None with too few growing calls.
    fill_ratio: float | None = None

    @property
    def kib_per_call(self) -> float:
        return self.slope / KiB


@dataclass(slots=True)
class _ChildStats:
    n: int
    slope: float
    gross: int
    kendall: Kendall
    first: float | None
    second: float | None
    growth: int
    positive_growth: int
    top: tuple[int, int]
    growing: int
    shrinking: int
    blocks: int
    growing_blocks: int
    growing_first: int = 0
    growing_second: int = 0


class _Series:
    """One task name in one child: its window of retained deltas and a stats cache.

    The deltas live in a flat array of 8-byte ints (1.6 KiB for a window of 200, against
    ~7 KiB as a deque of int objects); it is trimmed back to the window when it reaches
    twice that, so appending stays O(1) amortised.
    """

    __slots__ = ("deltas", "settled", "window", "seen", "last_mem_after", "first_seen", "last_seen", "alive",
                 "stats", "stats_seen", "settled_stats", "settled_seen", "settled_count", "total", "child_first",
                 "child_last", "entries", "bins", "bin_width")

    def __init__(self, window: int) -> None:
        self.deltas = array("q")
        self.settled = array("q")  # only the settled readings (see TaskSample.heap_settled)
        self.window = window
        self.seen = 0
        self.last_mem_after = 0
        self.first_seen: float | None = None
        self.last_seen = 0.0
        self.alive = True
        self.stats: _ChildStats | None = None
        self.stats_seen = -1
        self.settled_stats: _ChildStats | None = None
        self.settled_seen = -1
        self.settled_count = 0
        self.total = 0  # every delta appended, ever (not only the window)
        self.child_first: int | None = None  # the child's measured total before this series' first delta
        self.child_last = 0  # ... and after its latest one
        # Every measured call since the first, as "did it add an entry or repeat one?", binned by the
        # entries added before it (bins of ``bin_width`` entries, doubled when _BINS are used): the
        # cache-versus-leak test's evidence, over the whole history, in at most 2 * _BINS ints.
        self.entries = 0
        self.bins = array("l")
        self.bin_width = 1

    def count(self, delta: int, noise: int, history: bool = True) -> None:
        """Bin one measured call: it added an entry (grew by more than ``noise``) or repeated one (flat)."""
        if delta < -noise:
            return
        if not history:
            if delta > noise:
                self.entries += 1
            return
        index = self.entries // self.bin_width
        while index >= _BINS:
            merged = array("l")
            for b in range(0, len(self.bins), 4):
                merged.extend((self.bins[b] + (self.bins[b + 2] if b + 2 < len(self.bins) else 0),
                               self.bins[b + 1] + (self.bins[b + 3] if b + 3 < len(self.bins) else 0)))
            self.bins = merged
            self.bin_width *= 2
            index = self.entries // self.bin_width
        while len(self.bins) < 2 * (index + 1):
            self.bins.extend((0, 0))
        self.bins[2 * index] += 1
        if delta > noise:
            self.entries += 1
        else:
            self.bins[2 * index + 1] += 1

    def append(self, delta: int, settled: bool = False) -> None:
        self.deltas.append(delta)
        if len(self.deltas) >= 2 * self.window:
            del self.deltas[: -self.window]
        self.total += delta
        if settled:
            self.settled.append(delta)
            self.settled_count += 1
            if len(self.settled) >= 2 * self.window:
                del self.settled[: -self.window]

    @property
    def size(self) -> int:
        return min(len(self.deltas), self.window)

    @property
    def settled_size(self) -> int:
        return min(len(self.settled), self.window)

    def latest(self, settled: bool = False) -> list[int]:
        return (self.settled if settled else self.deltas)[-self.window:].tolist()


class _TaskState:
    __slots__ = ("series", "calls", "pending", "reported", "misses", "estimate", "watched", "watch_misses")

    def __init__(self) -> None:
        self.series: OrderedDict[tuple[int, int], _Series] = OrderedDict()
        self.calls = 0
        self.pending = 0
        self.reported: tuple[float, float, int] | None = None  # kib_per_call, confidence, calls when first reported
        self.misses = 0
        self.estimate: LeakEstimate | None = None
        self.watched: int | None = None  # calls when the growth watch started (children measure every call)
        self.watch_misses = 0


def _band(confidence: float) -> int:
    return sum(1 for edge in _BANDS if confidence >= edge)


@dataclass(frozen=True, slots=True)
class _Pooled:
    """A task's children's statistics pooled (weighted by their calls), as :meth:`LeakDetector._combine`
    judges them."""

    n: int
    slope: float
    recent_slope: float
    trend_z: float
    trend_p: float
    growing: int
    sign_p: float
    efficiency: float
    step_share: float
    saturation: float | None
    block_fraction: float
    growth_per_child: float
    typical_n: float
    fill_ratio: float | None


def _pool(stats: list[_ChildStats]) -> _Pooled:
    """Pool the children's statistics (at least one)."""
    weights = [float(s.n) for s in stats]
    slope = weighted_median([s.slope for s in stats], weights)
    kendall = Kendall(0, 0.0)
    for s in stats:
        kendall = kendall + s.kendall
    growing = sum(s.growing for s in stats)
    gross = sum(s.gross for s in stats)
    saturation, recent_slope = _saturation(stats, slope)
    blocks = sum(s.blocks for s in stats)
    first_growing = sum(s.growing_first for s in stats)
    return _Pooled(
        n=sum(s.n for s in stats),
        slope=slope,
        recent_slope=recent_slope,
        trend_z=kendall.z,
        trend_p=normal_sf(kendall.z),
        growing=growing,
        sign_p=sign_test_p(growing, sum(s.shrinking for s in stats)),
        efficiency=sum(s.growth for s in stats) / gross if gross else 0.0,
        step_share=_step_share(stats),
        saturation=saturation,
        block_fraction=sum(s.growing_blocks for s in stats) / blocks if blocks else 0.0,
        growth_per_child=sum(s.growth for s in stats) / len(stats),
        typical_n=weighted_median([float(s.n) for s in stats], weights),
        fill_ratio=sum(s.growing_second for s in stats) / first_growing if first_growing >= _FILL_MIN else None,
    )


def _step_share(stats: list[_ChildStats]) -> float:
    """The share of the growth the two largest calls carry: pooled over all children, or within a child
    (only children with enough calls to tell; pooled over them, weighted by their growth), the larger."""
    positive_growth = sum(s.positive_growth for s in stats)
    tops = sorted((t for s in stats for t in s.top), reverse=True)
    pooled_share = (tops[0] + tops[1]) / positive_growth if positive_growth > 0 else 1.0
    long_enough = [s for s in stats if s.n >= 6 and s.positive_growth > 0]
    child_positive = sum(s.positive_growth for s in long_enough)
    child_share = sum(s.top[0] + s.top[1] for s in long_enough) / child_positive if child_positive else 0.0
    return max(pooled_share, child_share)


def _saturation(stats: list[_ChildStats], slope: float) -> tuple[float | None, float]:
    """(second half's slope over the first's, or None; the recent slope: the second half's, else ``slope``)."""
    halves = [s for s in stats if s.first is not None and s.second is not None]
    if not halves:
        return None, slope
    half_weights = [float(s.n) for s in halves]
    first = weighted_median([s.first for s in halves if s.first is not None], half_weights)
    second = weighted_median([s.second for s in halves if s.second is not None], half_weights)
    return (second / first if first > 0 else None), second


def _half_slopes(cumulative: list[int]) -> tuple[float, float]:
    """Theil–Sen slopes of the first and the second half of a cumulative series."""
    mid = len(cumulative) // 2
    head = downsample(list(enumerate(cumulative[: mid + 1])), _POINTS // 2)
    tail = downsample([(i + mid, y) for i, y in enumerate(cumulative[mid:])], _POINTS // 2)
    return theil_sen([x for x, _ in head], [y for _, y in head]), theil_sen([x for x, _ in tail], [y for _, y in tail])


def _growing_blocks(cumulative: list[int], blocks: int, noise: int) -> int:
    """Of ``blocks`` equal stretches of a cumulative series, how many grew by more than ``noise``."""
    size = (len(cumulative) - 1) / blocks
    growing = 0
    for b in range(blocks):
        lo, hi = round(b * size), round((b + 1) * size)
        if cumulative[hi] - cumulative[lo] > noise:
            growing += 1
    return growing


def _repeat_cells(state: _TaskState) -> list[tuple[float, int, int]]:
    """Every child's repeat bins as (entries before the calls, calls, repeats)."""
    cells: list[tuple[float, int, int]] = []
    for series in state.series.values():
        w = series.bin_width
        for index in range(len(series.bins) // 2):
            calls, repeats = series.bins[2 * index], series.bins[2 * index + 1]
            if calls:
                cells.append((index * w + (w - 1) / 2, calls, repeats))
    return cells


def _best_cache_fit(cells: list[tuple[float, int, int]], largest: int, bound: float) -> float:
    """The best log-likelihood of the bins under a randomly filled cache, over every key count from half
    the entries seen up to ``bound``."""
    best = -math.inf
    keys = max(1.0, largest / 2)
    while True:
        ll = 0.0
        for e, c, r in cells:
            p = min(0.995, max(1e-6, (e + 0.5) / keys))
            ll += r * math.log(p) + (c - r) * math.log(1 - p)
        best = max(best, ll)
        if keys >= bound:
            return best
        keys = min(bound, keys * 1.05)


def _repeats_trend_z(cells: list[tuple[float, int, int]], n: int, repeats: int) -> float:
    """Mann–Whitney z of repeats coming later (at more entries) than misses; -inf when it cannot tell."""
    misses_total = n - repeats
    if repeats < 3 or misses_total == 0:
        return -math.inf
    u = 0.0
    below = 0
    for _, c, r in sorted(cells):
        u += r * (below + (c - r) / 2)
        below += c - r
    return (u - repeats * misses_total / 2) / math.sqrt(repeats * misses_total * (n + 1) / 12)


class LeakDetector(Detector):
    """Names task names that retain memory per call (see the module docstring for how).

    Keyword arguments (sizes in bytes):

    * ``warmup_calls`` – calls of a task ignored in each new child (imports, lazy init).
    * ``min_calls`` – post-warm-up calls of the task, over all children, before any verdict.
    * ``soft_limit`` – when set, findings project how many more calls the fullest child can take.
    * ``heap_deltas`` – attribute by the allocators' in-use bytes (``TaskSample.heap_retained``) instead of RSS.
    * ``window`` – retained deltas kept per (task, child).
    * ``min_kib_per_call`` – slopes below this are not leaks worth naming.
    * ``min_growth`` – memory a suspect must have retained per child in the window …
    * ``long_calls`` – … unless the typical child has run the task this many times and retained
      at least a quarter of ``min_growth``.
    * ``alpha`` – significance level of the trend and sign tests.
    * ``saturation_ratio`` – second-half slope below this fraction of the first half = saturating.
    * ``max_step_share`` – largest two calls carrying more than this share of all growth = one-off step.
    * ``min_block_fraction`` – share of recent blocks that must have grown.
    * ``min_efficiency`` – net growth / gross movement (sum of |deltas|) below this = churn, not a leak.
    * ``min_confidence`` – suspects below this confidence are not reported.
    * ``noise`` – deltas within ±noise count as "no change" for the sign test and blocks.
    * ``cadence`` – once a task has history, analyse it every this many calls at most.
    * ``clear_after`` – consecutive failed analyses before a reported suspect is cleared.
    * ``max_tasks``, ``max_children`` – bounds on tracked task names and children per task.
    * ``settled_calls`` – settled readings (over all children) from which a task is judged on those alone.
    * ``fill_ratio`` – growing calls in the latest half of the windows below this share of those in the
      first half = saturating (a cache's new-key rate falls as it fills).
    * ``watch_growth`` – retained memory per child from which a growing task is watched
      (``memguard.growth_watch``; children then measure every call of it, settled).
    * ``max_watched`` – most task names watched at once (suspects included).
    * ``cache_bound`` – a growing task is not named while its calls fit a cache of at most this many
      bytes per child filled by random keys as well as a leak (0: no such check).
    """

    name = "leak"

    def __init__(
        self,
        *,
        warmup_calls: int = 2,
        min_calls: int = 12,
        soft_limit: int | None = None,
        heap_deltas: bool = False,
        window: int = 200,
        min_kib_per_call: float = 8.0,
        min_growth: int = 8 * MiB,
        long_calls: int = 64,
        alpha: float = 0.01,
        saturation_ratio: float = 0.5,
        max_step_share: float = 0.5,
        min_block_fraction: float = 0.75,
        min_efficiency: float = 0.3,
        min_confidence: float = 0.5,
        noise: int = 8 * KiB,
        cadence: int = 20,
        clear_after: int = 5,
        max_tasks: int = 256,
        max_children: int = 32,
        settled_calls: int = 8,
        fill_ratio: float = 0.6,
        watch_growth: int = 256 * KiB,
        max_watched: int = 12,
        cache_bound: int = CACHE_BOUND,
    ) -> None:
        if warmup_calls < 0 or min_calls < 2 or window < 8 or cadence < 1 or max_tasks < 1 or max_children < 1:
            raise ValueError("warmup_calls >= 0, min_calls >= 2, window >= 8 and cadence, max_* >= 1 required")
        if soft_limit is not None and soft_limit <= 0:
            raise ValueError("soft_limit must be > 0 or None")
        self.warmup_calls = warmup_calls
        self.min_calls = min_calls
        self.soft_limit = soft_limit
        self.heap_deltas = heap_deltas
        self.window = window
        self.min_slope = min_kib_per_call * KiB
        self.min_growth = min_growth
        self.long_calls = long_calls
        self.alpha = alpha
        self.saturation_ratio = saturation_ratio
        self.max_step_share = max_step_share
        self.min_block_fraction = min_block_fraction
        self.min_efficiency = min_efficiency
        self.min_confidence = min_confidence
        self.noise = noise
        self.cadence = cadence
        self.clear_after = clear_after
        self.max_tasks = max_tasks
        self.max_children = max_children
        self.settled_calls = settled_calls
        self.fill_ratio = fill_ratio
        self.watch_growth = watch_growth
        self.max_watched = max_watched
        self.cache_bound = cache_bound
        self._tasks: OrderedDict[str, _TaskState] = OrderedDict()
        self._generation: dict[int, int] = {}
        self._child_heap: dict[tuple[int, int], int] = {}  # per child: every measured delta, summed

    # -- public ------------------------------------------------------------
    @property
    def suspects(self) -> frozenset[str]:
        """Task names currently reported as leaking (children may trace these)."""
        return frozenset(name for name, state in self._tasks.items() if state.reported is not None)

    @property
    def watched(self) -> frozenset[str]:
        """Task names the children should measure on every call (settled): watched growth and suspects."""
        return frozenset(name for name, state in self._tasks.items()
                         if state.watched is not None or state.reported is not None)

    def estimate(self, task: str) -> LeakEstimate | None:
        """The latest analysis of ``task`` (``None`` before its first)."""
        state = self._tasks.get(task)
        return state.estimate if state is not None else None

    def child_leak_rates(self, pid: int) -> tuple[float, float]:
        """``(leak bytes per call, calls per second)`` of child ``pid`` over the suspected tasks it runs.

        Their product is the child's expected growth per second from confirmed leaks (the input of
        the leak-projection policy); ``(0.0, 0.0)`` when the child runs no suspect.
        """
        key = (pid, self._generation.get(pid, 0))
        growth = rate = 0.0
        for state in self._tasks.values():
            estimate = state.estimate
            if state.reported is None or estimate is None or estimate.slope <= 0:
                continue
            series = state.series.get(key)
            if series is None or series.first_seen is None or series.last_seen <= series.first_seen:
                continue
            task_rate = (series.seen - 1) / (series.last_seen - series.first_seen)
            growth += estimate.slope * task_rate
            rate += task_rate
        return (growth / rate, rate) if rate > 0 else (0.0, 0.0)

    def child_exited(self, pid: int) -> None:
        """Keep the child's history as evidence, but start a new series if the pid comes back."""
        generation = self._generation.get(pid, 0)
        for state in self._tasks.values():
            series = state.series.get((pid, generation))
            if series is not None:
                series.alive = False
        self._generation[pid] = generation + 1
        self._child_heap.pop((pid, generation), None)
        if len(self._generation) > _MAX_PIDS:
            self._generation.pop(next(iter(self._generation)))

    def observe_task(self, sample: TaskSample, now: float) -> list[Finding]:
        state = self._tasks.get(sample.task)
        if state is None:
            state = self._tasks[sample.task] = _TaskState()
            if len(self._tasks) > self.max_tasks:
                self._evict_task(keep=sample.task)
        else:
            self._tasks.move_to_end(sample.task)
        key = (sample.pid, self._generation.get(sample.pid, 0))
        series = state.series.get(key)
        if series is None:
            series = state.series[key] = _Series(self.window)
            if len(state.series) > self.max_children:
                state.series.popitem(last=False)
        else:
            state.series.move_to_end(key)
        series.seen += 1
        series.last_mem_after = sample.mem_after
        if series.first_seen is None:
            series.first_seen = now
        series.last_seen = now
        if not self.heap_deltas:
            delta: int | None = sample.mem_after - sample.mem_before
        else:
            delta = sample.heap_retained
        if delta is not None:
            child_total = self._child_heap.get(key, 0)
            if series.seen > self.warmup_calls:
                if series.child_first is None:
                    series.child_first = child_total
                series.append(delta, settled=sample.heap_settled)
                # The repeat history takes only calls measured whatever they did: settled readings (every call
                # of a watched name). Calls measured because RSS had grown are a biased sample (a cache's
                # repeats seldom grow RSS), so with heap attribution they only count the entries added.
                series.count(delta, self.noise, history=sample.heap_settled or not self.heap_deltas)
            child_total += delta
            self._child_heap[key] = series.child_last = child_total
        state.calls += 1
        state.pending += 1
        if state.pending < self._step(state):
            return []
        state.pending = 0
        estimate = self.analyse(sample.task)
        return self._findings(state, estimate)

    def analyse(self, task: str) -> LeakEstimate:
        """Recompute the statistics of ``task`` now (normally done by :meth:`observe_task`)."""
        state = self._tasks[task]
        stats = [s for s in (self._child_stats(series) for series in state.series.values()) if s is not None]
        estimate = self._combine(task, state, stats)
        if self.heap_deltas and sum(x.settled_size for x in state.series.values()) >= self.settled_calls:
            # The task is watched: its calls are measured settled (own cyclic garbage collected, no older
            # garbage freed). When those disagree with the whole window (much less growth: the rest was
            # garbage freed later, or a cache that has filled), judge on them alone.
            settled = [s for s in (self._child_stats(series, True) for series in state.series.values())
                       if s is not None]
            alone = self._combine(task, state, settled, True)
            if alone.reason not in ("warming up", "leak") and (
                alone.slope < 0.5 * estimate.slope or estimate.reason == "freed in other tasks"
            ):
                estimate = alone
        state.estimate = estimate
        return estimate

    # -- analysis ------------------------------------------------------------
    def _step(self, state: _TaskState) -> int:
        # Every call while the history is short (only the child that changed is recomputed),
        # then every tenth of the calls seen, at most every ``cadence`` calls.
        if state.calls < 64:
            return 1
        step = max(1, min(self.cadence, state.calls // 10))
        last = state.estimate
        if state.reported is None and last is not None and last.reason == "no growth" and last.slope < self.min_slope / 4:
            step *= 4  # clearly flat: look less often
        return step

    def _child_stats(self, series: _Series, settled: bool = False) -> _ChildStats | None:
        """One child's statistics for the task (whole window or settled calls), recomputed only when a
        sixteenth of the window is new (else the cached ones)."""
        if settled:
            fresh = series.settled_count - series.settled_seen
            if series.settled_seen >= 0 and fresh < max(1, series.settled_size // 16):
                return series.settled_stats
        else:
            fresh = series.seen - series.stats_seen
            if series.stats_seen >= 0 and fresh < max(1, series.size // 16):
                return series.stats
        stats = self._series_stats(series.latest(settled))
        if settled:
            series.settled_stats, series.settled_seen = stats, series.settled_count
        else:
            series.stats, series.stats_seen = stats, series.seen
        return stats

    def _series_stats(self, deltas: Sequence[int]) -> _ChildStats | None:
        """Trend, slope and growth counts of one child's per-call deltas (None with fewer than two)."""
        n = len(deltas)
        if n < 2:
            return None
        cumulative = [0]
        total = 0
        for delta in deltas:
            total += delta
            cumulative.append(total)
        points = downsample(list(enumerate(cumulative)), _POINTS)
        ys = [float(y) for _, y in points]
        first, second = _half_slopes(cumulative) if n >= 6 else (None, None)
        noise = self.noise
        positives = sorted((d for d in deltas if d > 0), reverse=True)
        blocks = min(4, n)
        return _ChildStats(
            n=n,
            slope=theil_sen([float(x) for x, _ in points], ys),
            kendall=mann_kendall(ys),
            first=first,
            second=second,
            growth=total,
            gross=sum(abs(d) for d in deltas),
            positive_growth=sum(positives),
            top=(positives[0] if positives else 0, positives[1] if len(positives) > 1 else 0),
            growing=sum(1 for d in deltas if d > noise),
            shrinking=sum(1 for d in deltas if d < -noise),
            blocks=blocks,
            growing_blocks=_growing_blocks(cumulative, blocks, noise),
            growing_first=sum(1 for d in deltas[: n // 2] if d > noise),
            growing_second=sum(1 for d in deltas[n - n // 2:] if d > noise),
        )

    def _combine(self, task: str, state: _TaskState, stats: list[_ChildStats], settled: bool = False) -> LeakEstimate:
        """The task's estimate from its children's statistics: pool them, weigh the evidence, name the
        first check that fails (``"leak"`` if none does)."""
        n_total = sum(s.n for s in stats)
        if not stats or n_total < (self.settled_calls if settled else self.min_calls):
            return LeakEstimate(task, False, "warming up", 0.0, 0.0, 0.0, state.calls, n_total, len(stats),
                                0.0, 1.0, 1.0, 0.0, 0.0, None, 0.0, settled)
        pooled = _pool(stats)
        confidence = self._confidence(pooled)
        reason = self._reason(state, pooled, confidence, settled)
        return LeakEstimate(
            task=task,
            suspect=reason == "leak",
            reason=reason,
            slope=pooled.slope,
            recent_slope=pooled.recent_slope,
            confidence=confidence,
            calls_observed=state.calls,
            calls_analysed=n_total,
            children=len(stats),
            growth_per_child=pooled.growth_per_child,
            trend_p=pooled.trend_p,
            sign_p=pooled.sign_p,
            efficiency=pooled.efficiency,
            step_share=pooled.step_share,
            saturation=pooled.saturation,
            block_fraction=pooled.block_fraction,
            settled=settled,
            fill_ratio=pooled.fill_ratio,
        )

    def _confidence(self, pooled: _Pooled) -> float:
        """How strongly the pooled statistics say "growing on every call", 0..1 (two decimals)."""
        evidence = min(1.0, pooled.n / (4.0 * self.min_calls))
        confidence = (
            0.35 * min(1.0, max(0.0, pooled.trend_z) / 5.0)
            + 0.25 * min(1.0, -math.log10(max(pooled.sign_p, 1e-300)) / 5.0)
            + 0.15 * pooled.block_fraction
            + 0.10 * (min(1.0, pooled.saturation) if pooled.saturation is not None else 0.5)
            + 0.15 * evidence
        )
        return round(max(0.0, min(1.0, confidence)), 2)

    def _reason(self, state: _TaskState, p: _Pooled, confidence: float, settled: bool) -> str:
        """The first check the task fails, in order, or ``"leak"``."""
        if p.slope < self.min_slope:
            return "no growth"
        if p.growing < 3 or p.step_share > self.max_step_share:
            return "one-off step"
        if p.trend_p > self.alpha:
            return "no trend"
        if p.sign_p > self.alpha or p.efficiency < self.min_efficiency:
            return "growth and shrink balanced"
        if (p.saturation is not None and p.saturation < self.saturation_ratio) or (
            p.fill_ratio is not None and p.fill_ratio < self.fill_ratio
        ):
            return "saturating"
        if p.block_fraction < self.min_block_fraction:
            return "not growing lately"
        if p.growth_per_child < self.min_growth and (
            p.typical_n < self.long_calls or p.growth_per_child < self.min_growth / 8
        ):
            return "too little growth yet"
        if confidence < self.min_confidence:
            return "weak evidence"
        if self._freed_elsewhere(state, settled):
            return "freed in other tasks"
        if self._could_be_cache(state, settled):
            return "filling like a cache"
        return "leak"

    def _freed_elsewhere(self, state: _TaskState, settled: bool) -> bool:
        """Whether the children did not keep what this task's series say it kept.

        Deferred frees (cyclic garbage the collector frees while another task runs) charge this task
        with growth the child does not keep. Only with heap deltas, and not for settled readings.
        """
        if not self.heap_deltas or settled:
            return False
        kept = sum(x.total for x in state.series.values() if x.child_first is not None)
        child_net = sum(x.child_last - x.child_first for x in state.series.values() if x.child_first is not None)
        return kept > self.min_growth / 4 and child_net < 0.5 * kept

    def _could_be_cache(self, state: _TaskState, settled: bool = False) -> bool:
        """Whether the task's calls fit a bounded cache filled by random keys as well as a leak.

        A call either adds an entry (it grows by more than ``noise``) or repeats a key (flat). Filled at
        random, a cache of K keys repeats a key with probability (entries so far) / K, which rises as
        it fills; a leak keeps its rate of repeats (none for most leaks). Both models are fitted to every
        measured call of the task so far (binned by the entries before it, per child); the cache over
        every K up to ``cache_bound`` / typical entry size. The task is a leak only when the constant
        rate is ahead by ``_CACHE_EVIDENCE`` nats and repeats do not come significantly more often as
        the entries grow (a Mann–Whitney test on the bins).
        """
        if self.cache_bound <= 0:
            return False
        growing = [d for series in state.series.values() for d in series.latest(settled) if d > self.noise]
        if len(growing) < 3:
            return False
        entry = sorted(growing)[len(growing) // 2]
        cells = _repeat_cells(state)
        n = sum(c for _, c, _ in cells)
        repeats = sum(r for _, _, r in cells)
        largest = max(series.entries for series in state.series.values()) + 1
        bound = self.cache_bound / entry
        if bound <= largest or bound < _CACHE_MIN_KEYS:
            # No cache within the bound holds what this task already kept; or entries so big that such a
            # cache has too few keys to be filled over hundreds of calls (2 MiB per call: 32 keys).
            return False
        if n < self.settled_calls:
            return True  # not enough unbiased calls yet (the name is watched: they are coming)
        rate = min(1 - 1e-6, max(1e-6, repeats / n))
        constant = repeats * math.log(rate) + (n - repeats) * math.log(1 - rate)
        if constant - _best_cache_fit(cells, largest, bound) < _CACHE_EVIDENCE:
            return True
        # The constant rate fits better; but do repeats still come more often as the entries grow (a
        # cache's trend, which the likelihoods can miss by chance)?
        return _repeats_trend_z(cells, n, repeats) > _CACHE_TREND_Z

    # -- reporting -------------------------------------------------------------
    def _findings(self, state: _TaskState, estimate: LeakEstimate) -> list[Finding]:
        found: list[Finding] = []
        if estimate.suspect:
            state.misses = state.watch_misses = 0
            kib = round(estimate.kib_per_call, 1)
            if state.reported is None:
                self._watch(state, estimate, found)
                state.reported = (kib, estimate.confidence, estimate.calls_observed)
                found.append(self._suspected(state, estimate, since=None))
                return found
            last_kib, last_confidence, first_calls = state.reported
            changed = abs(kib - last_kib) > 0.5 * last_kib or (
                _band(estimate.confidence) != _band(last_confidence)
                and abs(estimate.confidence - last_confidence) >= _HYSTERESIS
            )
            if changed:
                state.reported = (kib, estimate.confidence, first_calls)
                found.append(self._suspected(state, estimate, since=first_calls))
            return found
        stopped = estimate.reason in _CLEARING and (
            estimate.reason != "saturating" or estimate.recent_slope < self.min_slope
        )
        if (state.reported is None and not stopped and estimate.reason in _UNJUDGED
                and estimate.slope >= self.min_slope and estimate.growth_per_child >= self.watch_growth):
            self._watch(state, estimate, found)
        if state.reported is not None and stopped:
            state.misses += 1
            if state.misses >= self.clear_after:
                first_calls = state.reported[2]
                state.reported = state.watched = None
                state.misses = state.watch_misses = 0
                found.append(Finding(LEAK_CLEARED, {
                    "task": estimate.task,
                    "reason": estimate.reason,
                    "kib_per_call": round(estimate.kib_per_call, 1),
                    "calls_observed": estimate.calls_observed,
                    "since_calls": first_calls,
                }, task=estimate.task))
        elif state.reported is None and state.watched is not None and stopped:
            state.watch_misses += 1
            if state.watch_misses >= self.clear_after:
                state.watched = None
                state.watch_misses = 0
                found.append(self._growth_watch("settled", estimate))
        else:
            state.misses = state.watch_misses = 0
        return found

    def _watch(self, state: _TaskState, estimate: LeakEstimate, found: list[Finding]) -> None:
        """Start watching a growing task (children measure every call of it, settled readings)."""
        if state.watched is not None or not self.heap_deltas:
            return
        if sum(1 for t in self._tasks.values() if t.watched is not None or t.reported is not None) >= self.max_watched:
            return
        state.watched = estimate.calls_observed
        state.watch_misses = 0
        found.append(self._growth_watch("watching", estimate))

    @staticmethod
    def _growth_watch(phase: str, estimate: LeakEstimate) -> Finding:
        fields: dict[str, object] = {
            "task": estimate.task,
            "state": phase,
            "kib_per_call": round(estimate.kib_per_call, 1),
            "growth_mib_per_child": round(estimate.growth_per_child / MiB, 1),
            "calls_observed": estimate.calls_observed,
            "children": estimate.children,
            "reason": estimate.reason,
        }
        fields["note"] = (
            "growing, not yet judged: children now measure every call of it to tell a leak from a cache "
            "that fills; not a leak finding" if phase == "watching" else
            "stopped growing before it was named: bounded (a cache that filled, a pool that warmed up); "
            "not a leak"
        )
        return Finding(GROWTH_WATCH, fields, task=estimate.task)

    def _suspected(self, state: _TaskState, estimate: LeakEstimate, since: int | None) -> Finding:
        fields: dict[str, object] = {
            "task": estimate.task,
            "kib_per_call": round(estimate.kib_per_call, 1),
            "confidence": estimate.confidence,
            "calls_observed": estimate.calls_observed,
            "children": estimate.children,
        }
        if self.soft_limit is not None:
            fields["projected_calls_to_soft_limit"] = self._projection(state, estimate.slope)
        if since is not None:
            fields["since_calls"] = since
        return Finding(LEAK_SUSPECTED, fields, task=estimate.task)

    def _projection(self, state: _TaskState, slope: float) -> int | None:
        assert self.soft_limit is not None
        alive = [s.last_mem_after for s in state.series.values() if s.alive] or [
            s.last_mem_after for s in state.series.values()
        ]
        if not alive or slope <= 0:
            return None
        return max(0, math.ceil((self.soft_limit - max(alive)) / slope))

    def _evict_task(self, keep: str) -> None:
        # Least recently seen first, but keep reported suspects while others can go; never the name
        # just inserted (``keep``, the most recent): when every other name is a suspect, the least
        # recently seen suspect goes.
        for name, state in self._tasks.items():
            if name != keep and state.reported is None:
                del self._tasks[name]
                return
        for name in self._tasks:
            if name != keep:
                del self._tasks[name]
                return
