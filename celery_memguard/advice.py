"""The advisor: what one worker's measurements say its settings should be (``celery memguard advise``).

Pure: an :class:`Evidence` in (what the event log of one worker holds, collected by
:mod:`celery_memguard.report.evidence`), a list of :class:`Recommendation` out. No I/O,
no Celery import. Every recommendation carries the numbers it rests on, the exact
configuration line, and either a confidence or the reason there is not enough evidence
(then no value is suggested: the advisor never guesses).

The sizing, all in MiB of the configured metric (USS by default), the master by its RSS
(the cgroup charges the pages children share with the master once, to the master):

* ``headroom`` = max(10 % of the effective memory, 32 MiB): page cache, the kernel,
  a child being replaced while its successor starts;
* ``task room`` = 1.2 x the largest *own peak* (the most one call needed above its
  child's size when it started) + 4 MiB;
* a child's floor = 1.2 x a fresh child + 4 MiB: a soft limit below it would recycle
  a child that has run nothing (``memguard.limit_unreachable``);
* ``concurrency`` = the most children whose hard limit (floor + task room) fits in
  effective memory - master - headroom, never above the observed concurrency;
* ``soft limit``: what the children ask for: 1.25 x their p95 size when they are steady;
  when they grow per call, a fresh child plus the calls between recycles that cost
  :data:`RECYCLE_LOSS_SHARE` of ``memguard_max_throughput_loss`` (the measured spawn time
  over the work done between recycles); never above the children's share of the memory
  minus the task room, never below the child floor;
* ``hard limit`` = soft limit + task room, within the children's share, so *concurrency x
  hard limit + master + headroom <= effective memory*: children held at their hard limit
  cannot exhaust the machine, and a child recycled at its soft limit has room for a call;
* when children grow per call (retained memory, or a leak suspect), ``worker_max_tasks_per_child``
  = the calls that take a fresh child to the soft limit; it is checked by the child
  itself after every task, so no poll can be too late. Its cost is at least the spawn
  time (fork to ready) over the work a child does between recycles; above
  ``memguard_max_throughput_loss`` (0.25) the advice says so and names the growth to fix.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from .config import DEFAULTS

__all__ = ["TaskEvidence", "Evidence", "Recommendation", "advise", "percentile", "MIN_SAMPLES", "MIN_CALLS",
           "LONG_TASK_S", "HEADROOM_SHARE", "HEADROOM_MIN_MIB"]

#: Below these a worker's log is not evidence enough for sizes.
MIN_SAMPLES = 3
MIN_CALLS = 20
#: Spans and counts from which a recommendation is 'high' confidence rather than 'medium'.
HIGH_SPAN_S = 600.0
HIGH_CALLS = 500
#: Memory kept free of the pool: the larger of this share of effective memory and HEADROOM_MIN_MIB.
HEADROOM_SHARE = 0.10
HEADROOM_MIN_MIB = 32.0
#: Margin on a task's own peak, and on a fresh child's size.
PEAK_MARGIN = 1.2
PEAK_SLACK_MIB = 4.0
#: A task whose mean run time reaches this (or whose longest call reaches LONG_TASK_MAX_S) is long.
LONG_TASK_S = 10.0
LONG_TASK_MAX_S = 60.0
#: Retained MiB per call (child average) from which children are taken to grow.
GROWTH_MIB_PER_CALL = 0.05
#: The steady children's p95 size times this is the soft limit they ask for.
STEADY_MARGIN = 1.25
#: Growing children: recycles by count may take this share of ``memguard_max_throughput_loss``.
RECYCLE_LOSS_SHARE = 0.2
#: A task is heavy when one call needs this share of a child's hard limit, or HEAVY_MULTIPLE x the typical call.
HEAVY_SHARE = 0.5
HEAVY_MULTIPLE = 10.0
HEAVY_MIN_MIB = 32.0


@dataclass
class TaskEvidence:
    """One task's measured calls (from ``memguard.sample``'s ``tasks``, ``heavy_task``, kills and losses)."""

    task: str
    calls: int = 0
    failed: int = 0
    own_peak_max_mib: float = 0.0
    peak_max_mib: float = 0.0
    retained_mib: float = 0.0
    max_s: float = 0.0
    total_s: float = 0.0
    heavy_calls: int = 0
    leak_kib_per_call: float | None = None
    leak_confidence: float | None = None
    killed: int = 0
    lost: int = 0
    #: Task ids lost (child killed by a signal MemGuard did not send) more than once, with the count.
    lost_again: dict[str, int] = field(default_factory=dict)

    @property
    def mean_s(self) -> float | None:
        return self.total_s / self.calls if self.calls else None


@dataclass
class Evidence:
    """What one worker's event log holds (the advisor's whole input). Sizes are MiB, times seconds."""

    hostname: str
    span_s: float = 0.0
    starts: int = 0
    concurrency: int | None = None
    effective_memory_mib: float | None = None
    metric: str | None = None
    soft_limit_mib: float | None = None
    hard_limit_mib: float | None = None
    samples: int = 0
    #: Each child's size at each sample (bounded; ``child_max_mib`` is exact).
    child_mib: list[float] = field(default_factory=list)
    child_max_mib: float | None = None
    #: Sizes of children that had run at most one task (what a recycle brings a child back to).
    fresh_mib: list[float] = field(default_factory=list)
    master_rss_max_mib: float | None = None
    master_max_mib: float | None = None
    pool_max_mib: float | None = None
    available_min_mib: float | None = None
    spawn_times_s: list[float] = field(default_factory=list)
    #: Seconds a pool slot had no child when its child was replaced (``memguard.sample`` ``replace_gaps_s``).
    replace_gaps_s: list[float] = field(default_factory=list)
    tasks: dict[str, TaskEvidence] = field(default_factory=dict)
    recycles: int = 0
    recycle_reasons: dict[str, int] = field(default_factory=dict)
    kills: int = 0
    lost: int = 0
    lost_oom: int = 0
    lost_max_mem_mib: float | None = None
    master_growth_mib_per_hour: float | None = None

    @property
    def calls(self) -> int:
        return sum(t.calls for t in self.tasks.values())

    @property
    def recycle_cost_s(self) -> float | None:
        """What one recycle costs a pool slot: the median replacement gap plus the median spawn time (fork to
        ready); the spawn time alone (a lower bound) when no replacement was measured; None without either."""
        spawn = percentile(self.spawn_times_s, 0.5)
        if spawn is None:
            return None
        return spawn + (percentile(self.replace_gaps_s, 0.5) or 0.0)

    def recycle_cost_text(self) -> str:
        spawn, gap = percentile(self.spawn_times_s, 0.5), percentile(self.replace_gaps_s, 0.5)
        if spawn is None:
            return "recycle cost unknown (no spawn time measured)"
        if gap is None:
            return (f"a recycle costs at least {spawn:.2f} s (fork to ready, median of {len(self.spawn_times_s)}; "
                    f"no replacement measured for the rest)")
        return (f"a recycle costs {spawn + gap:.2f} s of a slot: {gap:.2f} s from the old child's last task to "
                f"the new child's start (median of {len(self.replace_gaps_s)} replacements) + {spawn:.2f} s fork "
                f"to ready")


@dataclass
class Recommendation:
    """One setting: ``value`` None means not enough evidence (``missing`` says what is missing)."""

    key: str
    value: object | None
    config: str | None
    cli: str | None
    evidence: list[str]
    confidence: str | None
    missing: str | None = None
    note: str | None = None


def percentile(values: list[float], share: float) -> float | None:
    """The ``share`` (0..1) percentile of ``values`` (nearest rank), None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(share * len(ordered)) - 1))]


def _mib(value: float) -> str:
    return f"{value:,.1f} MiB" if value < 10 else f"{value:,.0f} MiB"


def _span(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _size_setting(key: str, mib: int) -> tuple[str, str]:
    return f'app.conf.{key} = "{mib}MiB"', f"--{key.replace('_', '-')} {mib}MiB"


@dataclass
class _Sizing:
    """The numbers every size recommendation shares (see the module docstring)."""

    effective: float
    master: float
    headroom: float
    fresh: float
    own_peak: float
    peak_task: str
    growth: float
    concurrency: int
    fits: int
    hard: int
    soft: int
    soft_rule: str
    asked: str = ""

    @property
    def task_room(self) -> float:
        return self.own_peak * PEAK_MARGIN + PEAK_SLACK_MIB

    @property
    def usable(self) -> float:
        return self.effective - self.master - self.headroom


def _confidence(e: Evidence) -> str:
    return "high" if e.span_s >= HIGH_SPAN_S and e.calls >= HIGH_CALLS and e.samples >= 10 else "medium"


def _missing(e: Evidence) -> str | None:
    """Why this log cannot size anything, or None when it can."""
    lacks = []
    if e.effective_memory_mib is None:
        lacks.append("the effective memory (memguard.started with effective_memory_mib)")
    if e.samples < MIN_SAMPLES or not e.child_mib:
        lacks.append(f"at least {MIN_SAMPLES} memguard.sample events with children (found {e.samples})")
    if e.calls < MIN_CALLS:
        lacks.append(f"at least {MIN_CALLS} measured task calls in the samples (found {e.calls})")
    if not lacks:
        return None
    return ("not enough evidence: needs " + "; ".join(lacks) + f" (log spans {_span(e.span_s)}). Run the worker "
            "under its real load for at least 10 minutes with MemGuard installed, memguard_log_format = \"json\" "
            "and memguard_sample_interval at most 60 s (e.g. 10), then advise on that log.")


def _growth(e: Evidence) -> float:
    """MiB a child keeps per call on average (0 when it does not grow)."""
    calls = e.calls
    retained = sum(max(t.retained_mib, 0.0) for t in e.tasks.values())
    per_call = retained / calls if calls else 0.0
    leaks = [t.leak_kib_per_call / 1024 for t in e.tasks.values() if t.leak_kib_per_call]
    best = max([per_call] + leaks)
    return best if best >= GROWTH_MIB_PER_CALL else 0.0


def _sizing(e: Evidence, loss_cap: float) -> _Sizing:
    effective = float(e.effective_memory_mib or 0.0)
    master = float(e.master_rss_max_mib or e.master_max_mib or 0.0)
    headroom = max(HEADROOM_SHARE * effective, HEADROOM_MIN_MIB)
    fresh = percentile(e.fresh_mib, 0.5) or percentile(e.child_mib, 0.05) or 0.0
    peak_task = max(e.tasks.values(), key=lambda t: (t.own_peak_max_mib, t.task))
    own_peak = peak_task.own_peak_max_mib
    sizing = _Sizing(effective, master, headroom, fresh, own_peak, peak_task.task, _growth(e), 0, 0, 0, 0, "")
    floor = fresh * PEAK_MARGIN + PEAK_SLACK_MIB
    need = floor + sizing.task_room
    sizing.fits = int(sizing.usable // need) if sizing.usable > 0 else 0
    current = e.concurrency or sizing.fits
    sizing.concurrency = max(1, min(current, sizing.fits))
    budget = sizing.usable / sizing.concurrency
    if not (math.isfinite(budget) and math.isfinite(sizing.task_room) and math.isfinite(floor)):
        raise ArithmeticError(f"memory budget {budget} MiB, room for a call {sizing.task_room} MiB, "
                              f"child floor {floor} MiB")
    want, sizing.soft_rule = _soft_wanted(e, sizing, loss_cap)
    cap = budget - sizing.task_room
    if want >= cap:
        if sizing.soft_rule and math.isfinite(want):
            sizing.asked = f"the children would ask for {want:.0f} MiB: {sizing.soft_rule}"
        want, sizing.soft_rule = cap, (f"as much as fits: each child's share of the memory {int(budget)} MiB - "
                                       f"room for the largest call {sizing.task_room:.0f} MiB")
    sizing.soft = max(1, min(math.ceil(max(want, min(floor, cap))), int(cap)))
    # hard = soft + room for the largest call, within the children's share; a valid pair even when nothing fits
    sizing.hard = max(sizing.soft + 1, int(min(budget, math.ceil(sizing.soft + sizing.task_room))))
    return sizing


def _soft_wanted(e: Evidence, s: _Sizing, loss_cap: float) -> tuple[float, str]:
    """The soft limit the children's behaviour asks for (before the memory cap), and the rule that gave it.

    Steady children: 1.25 x their p95 size (only outliers are recycled). Growing children: a fresh child
    plus the calls whose recycle costs RECYCLE_LOSS_SHARE of the allowed throughput loss (the rest is left
    for memory-driven recycles); without a measured spawn time, as much as the memory allows.
    """
    if not s.growth:
        p95 = percentile(e.child_mib, 0.95) or 0.0
        return p95 * STEADY_MARGIN, f"{STEADY_MARGIN} x the children's p95 size {p95:.0f} MiB"
    spawn = e.recycle_cost_s
    duration = sum(t.total_s for t in e.tasks.values()) / max(e.calls, 1)
    if spawn is None or duration <= 0:
        return math.inf, ""
    share = loss_cap * RECYCLE_LOSS_SHARE
    wanted = spawn * (1 - share) / (share * duration) if share > 0 else math.inf
    if not math.isfinite(wanted):  # a vanishing mean call (or no loss allowed): as much as the memory allows
        return math.inf, ""
    calls = math.ceil(wanted)
    bound = "" if e.replace_gaps_s else "at least "
    return (s.fresh + s.growth * calls,
            f"a fresh child {s.fresh:.0f} MiB + {calls} calls x {s.growth:.2f} MiB: the fewest calls between "
            f"recycles that keep their cost at {bound}{share:.0%} of throughput ({RECYCLE_LOSS_SHARE:.0%} of "
            f"memguard_max_throughput_loss)")


def _concurrency(e: Evidence, s: _Sizing) -> Recommendation:
    evidence = [
        f"effective memory {_mib(s.effective)}, master up to {_mib(s.master)} RSS, headroom {_mib(s.headroom)}",
        f"a fresh child (<= 1 task run) {_mib(s.fresh)}; largest own peak of one call {_mib(s.own_peak)} "
        f"({s.peak_task}); "
        f"a child needs >= {_mib(s.fresh * PEAK_MARGIN + PEAK_SLACK_MIB + s.task_room)} at its hard limit",
        f"observed: concurrency {e.concurrency if e.concurrency is not None else '?'}, pool up to "
        f"{_mib(e.pool_max_mib) if e.pool_max_mib is not None else '?'}, children up to "
        f"{_mib(e.child_max_mib) if e.child_max_mib is not None else '?'}, {e.samples} samples over {_span(e.span_s)}",
    ]
    if e.lost:
        evidence.append(f"{e.lost} children lost ({e.lost_oom} likely OOM-killed)"
                        + (f", up to {_mib(e.lost_max_mem_mib)} when last read" if e.lost_max_mem_mib else ""))
    if e.master_growth_mib_per_hour:
        evidence.append(f"the master grows {e.master_growth_mib_per_hour:,.1f} MiB/h (memguard.master_growth): "
                        f"the headroom shrinks by that much; restart the worker before it is gone")
    note = (f"{s.concurrency} x hard limit {s.hard} MiB + master {s.master:.0f} MiB + headroom {s.headroom:.0f} MiB "
            f"<= {s.effective:.0f} MiB")
    if s.fits < 1:
        note = (f"not even one child fits: a fresh child plus the largest call ({s.peak_task}) needs more than "
                f"{_mib(s.usable)}; route {s.peak_task} to a machine with more memory or chunk it")
    elif e.concurrency is not None and s.fits > e.concurrency:
        note += f"; up to {s.fits} children would fit (raise it only with CPU to spare)"
    return Recommendation("worker_concurrency", s.concurrency, f"app.conf.worker_concurrency = {s.concurrency}",
                          f"--concurrency {s.concurrency}", evidence, _confidence(e) if s.fits >= 1 else "low",
                          note=note)


def _limits(e: Evidence, s: _Sizing) -> list[Recommendation]:
    p95 = percentile(e.child_mib, 0.95) or 0.0
    shared = (f"{s.concurrency} children x {s.hard} MiB + master {s.master:.0f} MiB + headroom "
              f"{s.headroom:.0f} MiB <= effective memory {s.effective:.0f} MiB")
    hard_cfg, hard_cli = _size_setting("memguard_hard_limit", s.hard)
    soft_cfg, soft_cli = _size_setting("memguard_soft_limit", s.soft)
    confidence = _confidence(e) if s.fits >= 1 else "low"
    hard = Recommendation("memguard_hard_limit", f"{s.hard}MiB", hard_cfg, hard_cli, [
        shared,
        f"largest own peak {_mib(s.own_peak)} ({s.peak_task}); soft limit {s.soft} MiB + that x{PEAK_MARGIN} "
        f"+ {PEAK_SLACK_MIB:.0f} MiB = {s.soft + s.task_room:.0f} MiB <= {s.hard} MiB",
    ] + ([f"observed hard limit {e.hard_limit_mib:.0f} MiB"] if e.hard_limit_mib else []), confidence,
        note=None if s.fits >= 1 else "no child fits with the largest call: see worker_concurrency")
    soft_evidence = [
        s.soft_rule,
    ] + ([s.asked] if s.asked else []) + [
        f"children: median {_mib(percentile(e.child_mib, 0.5) or 0.0)}, p95 {_mib(p95)}, max "
        f"{_mib(e.child_max_mib or 0.0)} over {len(e.child_mib)} readings; fresh child {_mib(s.fresh)}",
    ]
    note = None
    if not s.growth and p95 > s.soft:
        note = (f"children's p95 ({p95:.0f} MiB) is above this soft limit: expect recycles; fewer children or "
                f"routing {s.peak_task} away gives each child more room")
    return [hard, Recommendation("memguard_soft_limit", f"{s.soft}MiB", soft_cfg, soft_cli, soft_evidence,
                                 confidence, note=note)]


def _recycling(e: Evidence, s: _Sizing, loss_cap: float) -> Recommendation:
    """worker_max_tasks_per_child from the growth per call and its measured cost."""
    key = "worker_max_tasks_per_child"
    calls = e.calls
    duration = sum(t.total_s for t in e.tasks.values()) / calls if calls else 0.0
    spawn = e.recycle_cost_s
    bound = "at least " if not e.replace_gaps_s else ""
    evidence = [f"children keep {s.growth:.2f} MiB per call on average over {calls:,} calls"
                + (f"; leak suspects: " + ", ".join(f"{t.task} ({t.leak_kib_per_call:,.0f} KiB/call)"
                                                   for t in e.tasks.values() if t.leak_kib_per_call) if any(
                    t.leak_kib_per_call for t in e.tasks.values()) else ""),
                f"mean call {duration:.3f} s; {e.recycle_cost_text()}"]
    if e.recycles:
        evidence.append(f"observed {e.recycles} recycles (" + ", ".join(
            f"{k} {v}" for k, v in sorted(e.recycle_reasons.items(), key=lambda kv: -kv[1])) + ")")
    if not s.growth:
        return Recommendation(key, None, f"app.conf.{key} = None", None, evidence, _confidence(e),
                              note="children do not grow per call: no task-count recycling needed; the soft "
                                   "limit recycles the rare child that does")
    per_child = max(1, int((s.soft - s.fresh) / s.growth))
    cost = None if spawn is None or duration <= 0 else spawn / (per_child * duration + spawn)
    if cost is None:
        evidence.append("throughput cost unknown: no spawn time measured (memguard.sample spawn_time_s)")
        note = None
    else:
        evidence.append(f"a recycle every {per_child} calls costs {bound}{cost:.0%} of a child's time "
                        f"(recycle / (calls x mean call + recycle)); allowed: {loss_cap:.0%} "
                        f"(memguard_max_throughput_loss)")
        note = None if cost <= loss_cap else (
            f"recycling as often as this memory needs costs {cost:.0%} of throughput, over {loss_cap:.0%}: fix the "
            f"growth (see `celery memguard report`); meanwhile memory comes first")
    evidence.insert(0, f"({s.soft} MiB soft limit - {s.fresh:.0f} MiB fresh child) / {s.growth:.2f} MiB per call")
    return Recommendation(key, per_child, f"app.conf.{key} = {per_child}", f"--max-tasks-per-child {per_child}",
                          evidence, _confidence(e), note=note)


def _long_tasks(e: Evidence) -> list[Recommendation]:
    long = sorted((t for t in e.tasks.values() if t.calls and ((t.mean_s or 0) >= LONG_TASK_S
                                                               or t.max_s >= LONG_TASK_MAX_S)),
                  key=lambda t: -t.max_s)
    if not long:
        return []
    evidence = [f"{t.task}: {t.calls} calls, mean {t.mean_s or 0:.1f} s, longest {t.max_s:.1f} s" for t in long[:5]]
    why = ("long tasks: a prefetched message waits behind them in a busy child, and is lost with it if the child "
           "dies unless acknowledged late")
    return [Recommendation("worker_prefetch_multiplier", 1, "app.conf.worker_prefetch_multiplier = 1",
                           "--prefetch-multiplier 1", evidence, _confidence(e), note=why),
            Recommendation("task_acks_late", True, "app.conf.task_acks_late = True", None, evidence,
                           _confidence(e), note="acknowledged after the call: a task whose child dies is redelivered "
                                                "(see the redelivery-loop advice for tasks that kill their child)")]


def _heavy(e: Evidence, s: _Sizing, loss_cap: float) -> list[Recommendation]:
    peaks = sorted(t.own_peak_max_mib for t in e.tasks.values() if t.calls)
    typical = percentile(peaks, 0.5) or 0.0
    out = []
    for t in sorted(e.tasks.values(), key=lambda t: -t.own_peak_max_mib):
        big = t.own_peak_max_mib >= HEAVY_SHARE * s.hard or (t.own_peak_max_mib >= HEAVY_MULTIPLE * typical
                                                             and len(peaks) > 1)
        if t.own_peak_max_mib < HEAVY_MIN_MIB or not (big or t.heavy_calls):
            continue
        evidence = [f"one call needed {_mib(t.own_peak_max_mib)} of its own (typical task {_mib(typical)}); "
                    f"{t.calls} calls measured, {t.heavy_calls} memguard.heavy_task findings"]
        if t.task == s.peak_task:
            evidence.append(f"it alone sets the room every child keeps for one call ({s.task_room:.0f} MiB of the "
                            f"{s.hard} MiB hard limit)")
            rest = {name: other for name, other in e.tasks.items() if name != t.task and other.calls}
            if rest:
                without = _sizing(replace(e, tasks=rest), loss_cap)
                evidence.append(f"without it this worker fits {without.fits} children (concurrency "
                                f"{without.concurrency}, hard limit {without.hard} MiB, soft {without.soft} MiB)")
        out.append(Recommendation(
            f"task_routes[{t.task!r}]", {"queue": "heavy"},
            f"app.conf.task_routes = {{{t.task!r}: {{'queue': 'heavy'}}}}", "-Q heavy --concurrency 1 (its own worker)",
            evidence, _confidence(e),
            note=f"route {t.task} to its own queue served by a worker with few children and a hard limit above "
                 f"{s.fresh + t.own_peak_max_mib * PEAK_MARGIN:.0f} MiB, or chunk its input; the other workers then "
                 f"fit more children"))
    return out


def _redelivery(e: Evidence) -> list[Recommendation]:
    out = []
    for t in sorted(e.tasks.values(), key=lambda t: t.task):
        if not t.lost_again:
            continue
        worst = max(t.lost_again.items(), key=lambda kv: (kv[1], kv[0]))
        evidence = [f"{len(t.lost_again)} task id(s) of {t.task} lost their child more than once; {worst[0]} "
                    f"{worst[1]} times", f"{t.lost} children lost while running {t.task}"]
        out.append(Recommendation(
            f"{t.task}.reject_on_worker_lost", False,
            f"@app.task(acks_late=True, reject_on_worker_lost=False)  # {t.task}", None, evidence, "high",
            note="acks_late + task_reject_on_worker_lost redelivers a task whose child is OOM-killed, which kills the "
                 "next child too (celery#5641): turn redelivery off for this task, and let memguard_hard_limit stop "
                 "it cleanly (MemoryLimitExceeded fails it once)"))
    return out


def advise(e: Evidence, max_throughput_loss: float | None = None) -> list[Recommendation]:
    """The recommendations for one worker, in a fixed order (sizes first); never raises on odd evidence."""
    loss_cap = max_throughput_loss if max_throughput_loss is not None else float(DEFAULTS["max_throughput_loss"])
    missing = _missing(e)
    out: list[Recommendation] = []
    if missing is not None:
        out.extend(_not_enough(e, _SIZE_KEYS, missing))
    else:
        def sizes() -> list[Recommendation]:
            sizing = _sizing(e, loss_cap)
            return [_concurrency(e, sizing), *_limits(e, sizing), _recycling(e, sizing, loss_cap),
                    *_heavy(e, sizing, loss_cap)]
        out.extend(_guarded(e, _SIZE_KEYS, sizes))
    out.extend(_guarded(e, ("worker_prefetch_multiplier", "task_acks_late"), lambda: _long_tasks(e)))
    out.extend(_guarded(e, ("reject_on_worker_lost",), lambda: _redelivery(e)))
    return out


_SIZE_KEYS = ("worker_concurrency", "memguard_hard_limit", "memguard_soft_limit", "worker_max_tasks_per_child")


def _not_enough(e: Evidence, keys: tuple[str, ...], missing: str) -> list[Recommendation]:
    return [Recommendation(key, None, None, None, [f"{e.samples} samples, {e.calls} task calls over "
                                                   f"{_span(e.span_s)}"], None, missing=missing) for key in keys]


def _guarded(e: Evidence, keys: tuple[str, ...], build: Callable[[], list[Recommendation]]) -> list[Recommendation]:
    """``build()``, or when the evidence's numbers make its arithmetic fail (an overflow, a NaN, a huge value the
    collector let through), 'not enough evidence' for ``keys``: an implausible log gets no advice, never a
    traceback."""
    try:
        return build()
    except (ArithmeticError, ValueError) as exc:
        return _not_enough(e, keys, f"not enough evidence (implausible values: {type(exc).__name__}: {exc}): "
                                    f"the log's numbers cannot be sized from; check it is MemGuard's own, unedited "
                                    f"event log")
