"""A simulated prefork pool measured the way the children measure it (heap attribution), for issue 9.

:mod:`scenarios` models RSS deltas. Here each task call has a heap model instead
(what it keeps, what cyclic garbage it leaves for the collector), and each
simulated child follows the child runtime's rules (``celery_memguard/worker/child_heap.py``):

* it measures the heap around the next :data:`HEAP_ARMED_TASKS` calls after its RSS
  grew by :data:`HEAP_ARM_GROWTH` (RSS follows the heap's high-water mark: freed
  memory stays resident);
* it measures every call of a name the master *watches* (``LeakDetector.watched``,
  seen by the children one "poll" late), and those readings are settled: no
  collection during the call frees older garbage, and the call's own cyclic garbage
  is collected before the after-reading;
* otherwise the cyclic collector runs now and then (every ``gc_every`` calls on
  average) and frees all pending garbage during whichever call runs, which is then
  charged negative memory if it is measured.

Seeded; no processes. Used by ``test_saturation.py`` and ``benchmarks/bench_detection.py``.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Callable

from celery_memguard.detectors.base import Finding
from celery_memguard.detectors.leak import LeakDetector
from celery_memguard.samples import TaskSample
from celery_memguard.worker.child_heap import HEAP_ARM_GROWTH, HEAP_ARMED_TASKS

KiB = 1024
MiB = 1024 * 1024


@dataclass
class SimChild:
    pid: int
    heap: int = 60 * MiB
    rss: int = 90 * MiB
    garbage: int = 0  # cyclic garbage waiting for the collector
    armed: int = 0
    mark: int = 0
    state: dict[str, object] = field(default_factory=dict)


#: (rng, child, task name) -> (bytes kept, bytes of cyclic garbage left for the collector)
HeapModel = Callable[[random.Random, SimChild, str], tuple[int, int]]


def constant_leak(per_call: int) -> HeapModel:
    def run(rng: random.Random, child: SimChild, task: str) -> tuple[int, int]:
        return per_call + rng.randint(-256, 256), 0
    return run


def clean() -> HeapModel:
    def run(rng: random.Random, child: SimChild, task: str) -> tuple[int, int]:
        return rng.choice((-64, 0, 0, 64, 128)), 0
    return run


def lru_cache(maxsize: int, entry: int, keys: int) -> HeapModel:
    """functools.lru_cache(maxsize) of ``entry``-byte results, args drawn at random from ``keys`` values."""
    def run(rng: random.Random, child: SimChild, task: str) -> tuple[int, int]:
        cache = child.state.setdefault(task, {})
        assert isinstance(cache, dict)
        key = rng.randrange(keys)
        if key in cache:
            cache[key] = cache.pop(key)  # move to the end
            return 0, 0
        cache[key] = True
        if len(cache) > maxsize:
            cache.pop(next(iter(cache)))
            return rng.randint(-512, 512), 0  # one result in, one out
        return entry + rng.randint(-2048, 2048), 0
    return run


def dict_cache(cap: int, entry: int) -> HeapModel:
    """A dict cache of at most ``cap`` bytes (cap / entry keys), filled by random keys (no eviction)."""
    keys = max(1, cap // entry)

    def run(rng: random.Random, child: SimChild, task: str) -> tuple[int, int]:
        cache = child.state.setdefault(task, set())
        assert isinstance(cache, set)
        key = rng.randrange(keys)
        if key in cache:
            return 0, 0
        cache.add(key)
        extra = 0
        if len(cache) & (len(cache) - 1) == 0 and len(cache) >= 8:
            extra = len(cache) * 3 * 8 * 2  # the table doubled
        return entry + extra, 0
    return run


def unbounded_dict(entry: int, repeat: float = 0.2) -> HeapModel:
    """A dict keyed by the task's args (new keys keep coming): a leak with repeats."""
    def run(rng: random.Random, child: SimChild, task: str) -> tuple[int, int]:
        if rng.random() < repeat:
            return 0, 0
        return int(entry * rng.uniform(0.7, 1.3)), 0
    return run


def cyclic_garbage(size: int) -> HeapModel:
    """Creates ``size`` bytes of objects in reference cycles per call and drops them: net flat."""
    def run(rng: random.Random, child: SimChild, task: str) -> tuple[int, int]:
        return 0, int(size * rng.uniform(0.9, 1.1))
    return run


def leak_with_garbage(per_call: int, garbage: int) -> HeapModel:
    def run(rng: random.Random, child: SimChild, task: str) -> tuple[int, int]:
        return per_call, garbage
    return run


def simulate(mix: dict[str, tuple[float, HeapModel]], *, calls: int, children: int = 2, seed: int = 0,
             detector: LeakDetector | None = None, gc_every: float = 8.0, poll_calls: int = 8,
             watch: bool = True) -> tuple[LeakDetector, list[tuple[int, Finding]]]:
    """Run ``calls`` calls of ``mix`` over ``children`` simulated children; the findings with the calls of
    their task so far. ``poll_calls``: calls between the master's polls (the watch list lags by one)."""
    rng = random.Random(seed)
    detector = detector or LeakDetector(heap_deltas=True, soft_limit=2048 * MiB)
    kids = [SimChild(pid=2000 + i) for i in range(children)]
    names = list(mix)
    weights = [mix[n][0] for n in names]
    watched: frozenset[str] = frozenset()
    found: list[tuple[int, Finding]] = []
    per_task: dict[str, int] = {}
    pending: list[TaskSample] = []
    now = 100.0
    for number in range(calls):
        task = rng.choices(names, weights)[0]
        child = rng.choice(kids)
        kept, garbage = mix[task][1](rng, child, task)
        settled = watch and task in watched
        measured = settled or child.armed > 0
        freed = 0
        if not settled and rng.random() < 1.0 / gc_every:
            freed, child.garbage = child.garbage, 0  # the collector runs during this call
        if settled:
            retained = kept  # its own garbage collected before the after-reading; nothing older freed
        else:
            retained = kept + garbage - freed
            child.garbage += garbage
        if settled:
            pass  # the call's garbage was collected at its end
        child.heap += retained if not settled else kept
        before = child.rss
        child.rss = max(child.rss, child.heap + 30 * MiB)
        if measured and child.armed > 0:
            child.armed -= 1
        if child.rss >= child.mark + HEAP_ARM_GROWTH:
            child.mark = child.rss
            child.armed = HEAP_ARMED_TASKS
        per_task[task] = per_task.get(task, 0) + 1
        pending.append(TaskSample(pid=child.pid, task=task, task_id=f"{task}-{number}", started=now, duration=0.01,
                                  mem_before=before, mem_after=child.rss, per_task_peak=child.rss, succeeded=True,
                                  heap_retained=retained if measured else None, heap_settled=settled))
        now += 0.01
        if len(pending) >= poll_calls or number == calls - 1:
            counted: dict[str, int] = {}
            for sample in pending:
                counted[sample.task] = counted.get(sample.task, 0) + 1
            seen = {t: per_task[t] - counted.get(t, 0) for t in per_task}
            for sample in pending:
                seen[sample.task] += 1
                for finding in detector.observe_task(sample, sample.started):
                    found.append((seen[finding.task or ""], finding))
            pending = []
            watched = detector.watched
    return detector, found


def first(found: list[tuple[int, Finding]], event: str, task: str) -> int | None:
    """Calls of ``task`` when ``event`` first named it, or None."""
    return next((calls for calls, f in found if f.event == event and f.task == task), None)
