"""Synthetic, labelled task workloads for the detector tests (no processes, seeded randomness).

A workload is a mix of task names, each with a *model* that says, for one call in
one pool child, how much RSS the call retains and how high it peaks above its
starting RSS. :func:`workload` schedules calls on a few simulated children and
returns the :class:`TaskSample` stream the master would receive. RSS moves in
whole pages, as the kernel reports it.

The labelled scenarios mirror the issue's real-worker suite: true leaks (large
buffers, many small objects with arena-step quantisation, a dict keyed by task
args, a slow ~50 KiB/call leak, a leak in one of several interleaved task names)
and negative controls (a bounded cache, a one-off 250 MiB spike, a 600 MiB single
buffer, allocator fragmentation, a clean workload).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Callable

from celery_memguard.detectors.base import Detector, Finding
from celery_memguard.samples import TaskSample

KiB = 1024
MiB = 1024 * 1024
PAGE = 4096


def pages(size: float) -> int:
    """``size`` rounded to whole pages."""
    return int(round(size / PAGE)) * PAGE


@dataclass
class Child:
    """A simulated pool child: its RSS and per-task model state."""

    pid: int
    rss: int
    calls: dict[str, int] = field(default_factory=dict)
    state: dict[str, float] = field(default_factory=dict)


#: (rng, child, task name) -> (retained bytes, own peak bytes above mem_before)
Model = Callable[[random.Random, Child, str], tuple[int, int]]


def _page_jitter(rng: random.Random, p: float = 0.1) -> int:
    roll = rng.random()
    if roll < p / 2:
        return -PAGE
    if roll < p:
        return PAGE
    return 0


def lazy_init(model: Model, calls: int = 2, size: int = 256 * KiB) -> Model:
    """Wrap ``model`` so the first ``calls`` calls in each child also import/initialise ``size`` bytes."""

    def run(rng: random.Random, child: Child, task: str) -> tuple[int, int]:
        retained, peak = model(rng, child, task)
        if child.calls.get(task, 0) < calls:
            retained += size
            peak += size
        return retained, peak

    return run


def clean(temp: int = 2 * MiB) -> Model:
    """Allocates ``temp`` bytes of temporaries that are freed; RSS moves a page now and then."""

    def run(rng: random.Random, child: Child, task: str) -> tuple[int, int]:
        return _page_jitter(rng), pages(temp * rng.uniform(0.5, 1.5))

    return lazy_init(run)


def large_buffers(size: int = 2 * MiB) -> Model:
    """Appends a ``size``-byte buffer to a module-level list on every call."""

    def run(rng: random.Random, child: Child, task: str) -> tuple[int, int]:
        retained = pages(size) + _page_jitter(rng)
        return retained, retained + pages(256 * KiB)

    return lazy_init(run)


def arena_steps(per_call: int = 50 * KiB, step: int = MiB) -> Model:
    """Keeps many small objects: RSS only grows when a new arena is touched (``step`` every step/per_call calls)."""

    def run(rng: random.Random, child: Child, task: str) -> tuple[int, int]:
        key = task + ".pending"
        pending = child.state.get(key, rng.uniform(0, step)) + per_call * rng.uniform(0.8, 1.2)
        retained = _page_jitter(rng)
        if pending >= step:
            pending -= step
            retained += step
        child.state[key] = pending
        return retained, max(retained, 0) + pages(512 * KiB)

    return lazy_init(run)


def dict_by_args(entry: int = 96 * KiB, repeat: float = 0.15) -> Model:
    """Memoises results in a dict keyed by the task's args; a repeated arg adds nothing, the table resizes."""

    def run(rng: random.Random, child: Child, task: str) -> tuple[int, int]:
        key = task + ".entries"
        entries = int(child.state.get(key, 0))
        if rng.random() < repeat:
            return _page_jitter(rng), pages(entry)
        entries += 1
        child.state[key] = entries
        retained = pages(entry * rng.uniform(0.7, 1.3))
        if entries & (entries - 1) == 0 and entries >= 8:  # the hash table doubled
            retained += pages(entries * 3 * 8 * 2)
        return retained, retained + pages(entry)

    return lazy_init(run)


def slow_leak(per_call: int = 50 * KiB) -> Model:
    """Keeps a ``per_call`` bytes object per call (malloc'd on the heap, so RSS follows page by page)."""

    def run(rng: random.Random, child: Child, task: str) -> tuple[int, int]:
        key = task + ".frac"
        exact = child.state.get(key, 0.0) + per_call
        retained = int(exact // PAGE) * PAGE
        child.state[key] = exact - retained
        retained += _page_jitter(rng)
        return retained, retained + pages(128 * KiB)

    return lazy_init(run)


def bounded_cache(entries: int = 16, size: int = 256 * KiB) -> Model:
    """An LRU cache of ``entries`` items of ``size`` bytes: grows while filling, then flat."""

    def run(rng: random.Random, child: Child, task: str) -> tuple[int, int]:
        key = task + ".filled"
        filled = int(child.state.get(key, 0))
        if filled < entries:
            child.state[key] = filled + 1
            retained = pages(size) + _page_jitter(rng)
        else:
            retained = _page_jitter(rng)
        return retained, max(retained, 0) + pages(size)

    return run


def spike(peak: int = 250 * MiB, first_step: int = 24 * MiB, every: int = 30) -> Model:
    """Usually a small call; about one call in ``every`` gets a huge payload and builds ``peak`` bytes of
    small objects, then drops them. The first such call in a child leaves a high-watermark step of
    ``first_step`` (fragmented arenas the later huge calls reuse)."""

    def run(rng: random.Random, child: Child, task: str) -> tuple[int, int]:
        retained = _page_jitter(rng)
        if rng.random() >= 1 / every:
            return retained, pages(512 * KiB)
        key = task + ".seen"
        if not child.state.get(key):
            child.state[key] = 1
            retained += pages(first_step * rng.uniform(0.5, 1.5))
        return retained, pages(peak * rng.uniform(0.95, 1.05))

    return run


def single_buffer(size: int = 600 * MiB, every: int = 30) -> Model:
    """Usually a small call; about one call in ``every`` allocates one ``size``-byte buffer (mmap'd, freed at once)."""

    def run(rng: random.Random, child: Child, task: str) -> tuple[int, int]:
        if rng.random() >= 1 / every:
            return _page_jitter(rng), pages(256 * KiB)
        return _page_jitter(rng), pages(size)

    return run


def watermark_steps(steps: tuple[int, ...] = (24 * MiB, 12 * MiB), within: int = 60) -> Model:
    """Each child's high-watermark rises a few times (bigger inputs arrive), at random calls, then stays."""

    def run(rng: random.Random, child: Child, task: str) -> tuple[int, int]:
        key = task + ".at"
        if key not in child.state:
            for index, at in enumerate(sorted(rng.sample(range(3, within), len(steps)))):
                child.state[f"{key}{index}"] = at
            child.state[key] = 1
        call = child.calls.get(task, 0)
        retained = _page_jitter(rng)
        for index, size in enumerate(steps):
            if child.state[f"{key}{index}"] == call:
                retained += pages(size)
        return retained, max(retained, 0) + pages(2 * MiB)

    return run


def fragmentation(amplitude: int = 768 * KiB, iid: bool = False) -> Model:
    """Allocates and frees mixed sizes: RSS swings by up to ±``amplitude`` with no trend.

    By default the *level* is noisy (what an allocator does: deltas are differences
    of a stationary level); with ``iid`` the deltas themselves are independent noise.
    """

    def run(rng: random.Random, child: Child, task: str) -> tuple[int, int]:
        if iid:
            retained = pages(rng.uniform(-amplitude, amplitude))
        else:
            key = task + ".level"
            level = child.state.get(key, 0.0)
            new = rng.uniform(-amplitude, amplitude)
            child.state[key] = new
            retained = pages(new - level)
        return retained, max(retained, 0) + pages(amplitude * 2)

    return run


def leak_then_stop(per_call: int, calls: int) -> Model:
    """Leaks ``per_call`` bytes for its first ``calls`` calls in each child, then nothing."""

    def run(rng: random.Random, child: Child, task: str) -> tuple[int, int]:
        if child.calls.get(task, 0) < calls:
            retained = pages(per_call) + _page_jitter(rng)
        else:
            retained = _page_jitter(rng)
        return retained, max(retained, 0) + pages(256 * KiB)

    return run


def workload(
    mix: dict[str, tuple[float, Model]],
    *,
    calls: int,
    children: int = 2,
    seed: int = 0,
    drop: float = 0.0,
    start_rss: int = 90 * MiB,
) -> list[TaskSample]:
    """``calls`` task calls drawn from ``mix`` (name -> (weight, model)) spread over ``children`` children.

    ``drop`` is the share of samples lost on the way to the master.
    """
    rng = random.Random(seed)
    kids = [Child(pid=1000 + i, rss=start_rss + pages(rng.uniform(0, 8 * MiB))) for i in range(children)]
    names = list(mix)
    weights = [mix[name][0] for name in names]
    samples: list[TaskSample] = []
    now = 100.0
    for number in range(calls):
        task = rng.choices(names, weights)[0]
        child = rng.choice(kids)
        retained, peak = mix[task][1](rng, child, task)
        before = child.rss
        after = max(PAGE, before + retained)
        child.calls[task] = child.calls.get(task, 0) + 1
        child.rss = after
        duration = rng.uniform(0.01, 0.2)
        if rng.random() >= drop:
            samples.append(TaskSample(
                pid=child.pid, task=task, task_id=f"{task}-{number}", started=now, duration=duration,
                mem_before=before, mem_after=after, per_task_peak=before + max(peak, retained, 0), succeeded=True,
            ))
        now += duration
    return samples


@dataclass
class Scenario:
    """A labelled workload: which task names truly leak, which are memory-heavy."""

    name: str
    mix: dict[str, tuple[float, Model]]
    calls: int
    leaking: frozenset[str] = frozenset()
    heavy: frozenset[str] = frozenset()
    children: int = 2

    def samples(self, seed: int = 0, children: int | None = None) -> list[TaskSample]:
        return workload(self.mix, calls=self.calls, children=children or self.children, seed=seed)


def run(detector: Detector, samples: list[TaskSample]) -> list[tuple[int, Finding]]:
    """Feed ``samples`` in order; return ``(calls of the finding's task so far, finding)`` pairs."""
    found: list[tuple[int, Finding]] = []
    per_task: dict[str, int] = {}
    for sample in samples:
        per_task[sample.task] = per_task.get(sample.task, 0) + 1
        for finding in detector.observe_task(sample, sample.started + sample.duration):
            found.append((per_task.get(finding.task or "", 0), finding))
    return found


def named(found: list[tuple[int, Finding]], event: str = "memguard.leak_suspected") -> set[str]:
    """Task names that ``event`` findings named."""
    return {f.task for _, f in found if f.event == event and f.task is not None}


CLEAN_MIX: dict[str, tuple[float, Model]] = {
    "app.tasks.add": (5, clean(64 * KiB)),
    "app.tasks.render": (3, clean(4 * MiB)),
    "app.tasks.fetch": (2, clean(1 * MiB)),
}

SCENARIOS: list[Scenario] = [
    # -- true leaks --------------------------------------------------------
    Scenario("large buffers", {"app.tasks.leaky_buffers": (1, large_buffers(2 * MiB)), **CLEAN_MIX}, calls=400,
             leaking=frozenset({"app.tasks.leaky_buffers"})),
    Scenario("many small objects", {"app.tasks.small_objects": (1, arena_steps(50 * KiB, MiB))}, calls=1000,
             leaking=frozenset({"app.tasks.small_objects"})),
    Scenario("dict keyed by args", {"app.tasks.memo": (4, dict_by_args(96 * KiB)), **CLEAN_MIX}, calls=2000,
             leaking=frozenset({"app.tasks.memo"})),
    Scenario("one leak among interleaved tasks",
             {"app.tasks.a": (1, clean(512 * KiB)), "app.tasks.b": (1, large_buffers(512 * KiB)),
              "app.tasks.c": (1, clean(8 * MiB)), "app.tasks.d": (1, fragmentation(256 * KiB))},
             calls=1200, leaking=frozenset({"app.tasks.b"})),
    Scenario("slow leak", {"app.tasks.slow": (1, slow_leak(50 * KiB))}, calls=800,
             leaking=frozenset({"app.tasks.slow"})),
    # -- negative controls ---------------------------------------------------
    Scenario("bounded cache", {"app.tasks.cached": (1, bounded_cache(16, 256 * KiB)), **CLEAN_MIX}, calls=1500),
    Scenario("bounded cache of big entries", {"app.tasks.cached": (1, bounded_cache(8, MiB))}, calls=800),
    Scenario("one-off 250 MiB spike", {"app.tasks.spike": (1, spike(250 * MiB)), **CLEAN_MIX}, calls=1500,
             heavy=frozenset({"app.tasks.spike"})),
    Scenario("600 MiB single buffer", {"app.tasks.big": (1, single_buffer(600 * MiB)), **CLEAN_MIX}, calls=1500,
             heavy=frozenset({"app.tasks.big"})),
    Scenario("high-watermark steps", {"app.tasks.import_csv": (1, watermark_steps()), **CLEAN_MIX}, calls=1200,
             heavy=frozenset({"app.tasks.import_csv"})),
    Scenario("fragmentation", {"app.tasks.frag": (1, fragmentation(768 * KiB))}, calls=1500),
    Scenario("fragmentation, independent deltas", {"app.tasks.frag": (1, fragmentation(768 * KiB, iid=True))},
             calls=1500),
    Scenario("clean workload", dict(CLEAN_MIX), calls=3000),
]
