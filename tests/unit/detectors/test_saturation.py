"""Issue 9: saturation-aware leak judgement and deferred frees, on a pool simulated the way the children
measure it (``heap_sim.py``: heap attribution, arming by RSS growth, watched names measured every call
with settled readings, a cyclic collector that frees garbage during whichever call runs).

* bounded caches filled by random keys (an ``lru_cache(maxsize=256)`` of 50 KiB results, dict caches
  capped at 24, 48 and 64 MiB per child) are never named ``memguard.leak_suspected``; they are
  watched (``memguard.growth_watch``) and settle;
* a cache named before its knee (an LRU whose keys never repeat: indistinguishable from a leak until
  it stops) is cleared with ``memguard.leak_cleared`` once its flat calls are seen;
* constant leaks are named: 2 MiB/call within 32 calls, 20 KiB/call within 400 calls (2 and 4
  children), a dict keyed by args with 20 % repeats;
* a task that leaves cyclic garbage (freed later by the collector, net flat) is never named, and a
  leak next to it still is.
"""

from __future__ import annotations

import pytest

from celery_memguard.detectors import GROWTH_WATCH, LEAK_CLEARED, LEAK_SUSPECTED

from .heap_sim import (
    KiB,
    MiB,
    clean,
    constant_leak,
    cyclic_garbage,
    dict_cache,
    first,
    leak_with_garbage,
    lru_cache,
    simulate,
    unbounded_dict,
)

CLEANS = {"clean": (3.0, clean())}

CACHES = {
    "lru_cache(256) x 50 KiB, 400 keys": lru_cache(256, 50 * KiB, 400),
    "dict cache 24 MiB": dict_cache(24 * MiB, 128 * KiB),
    "dict cache 48 MiB": dict_cache(48 * MiB, 128 * KiB),
    "dict cache 64 MiB": dict_cache(64 * MiB, 128 * KiB),
    "dict cache 64 MiB of 256 KiB": dict_cache(64 * MiB, 256 * KiB),
}


@pytest.mark.parametrize("children", [2, 4])
@pytest.mark.parametrize("name", list(CACHES))
def test_bounded_caches_are_never_named(name: str, children: int) -> None:
    for seed in (0, 1):
        detector, found = simulate({"cache": (1.0, CACHES[name]), **CLEANS}, calls=7200, children=children,
                                   seed=seed)
        assert first(found, LEAK_SUSPECTED, "cache") is None, (seed, [(c, f.event) for c, f in found][:6])
        assert first(found, GROWTH_WATCH, "cache") is not None  # watched: growing, not yet judged
        assert detector.suspects == frozenset()


@pytest.mark.parametrize("children", [2, 4])
def test_a_cache_that_seldom_repeats_is_at_worst_named_then_cleared(children: int) -> None:
    """An lru_cache(256) over 1,000 keys repeats only ~3 % of calls while it fills: sometimes it cannot be told
    from a leak before it is full (1 run in 6 here). It is then cleared; at the end nothing is a suspect."""
    for seed in (0, 1):
        detector, found = simulate({"cache": (1.0, lru_cache(256, 50 * KiB, 1000)), **CLEANS}, calls=7200,
                                   children=children, seed=seed)
        named = first(found, LEAK_SUSPECTED, "cache")
        assert named is None or (first(found, LEAK_CLEARED, "cache") or 0) > named
        assert detector.suspects == frozenset()


@pytest.mark.parametrize("children", [2, 4])
def test_a_cache_named_before_its_knee_is_cleared(children: int) -> None:
    """An LRU whose keys never repeat grows like a leak until it is full; its flat calls then clear it."""
    detector, found = simulate({"cache": (1.0, lru_cache(256, 50 * KiB, 100_000)), **CLEANS}, calls=7200,
                               children=children)
    named = first(found, LEAK_SUSPECTED, "cache")
    cleared = first(found, LEAK_CLEARED, "cache")
    assert named is not None and cleared is not None and cleared > named
    assert detector.suspects == frozenset()


@pytest.mark.parametrize("children", [1, 2, 4])
@pytest.mark.parametrize(("per_call", "within"), [(2 * MiB, 32), (20 * KiB, 400)])
def test_constant_leaks_are_named_in_time(per_call: int, within: int, children: int) -> None:
    for seed in (0, 1, 2):
        _, found = simulate({"leak": (1.0, constant_leak(per_call)), **CLEANS}, calls=8 * within, children=children,
                            seed=seed)
        at = first(found, LEAK_SUSPECTED, "leak")
        assert at is not None and at <= within, (seed, at)
        assert first(found, LEAK_SUSPECTED, "clean") is None


@pytest.mark.parametrize("children", [2, 4])
def test_dict_keyed_by_args_is_named(children: int) -> None:
    _, found = simulate({"leak": (1.0, unbounded_dict(110 * KiB)), **CLEANS}, calls=3200, children=children)
    assert first(found, LEAK_SUSPECTED, "leak") is not None


@pytest.mark.parametrize("children", [2, 4])
def test_cyclic_garbage_is_never_named_and_does_not_hide_a_leak(children: int) -> None:
    for seed in (0, 1):
        detector, found = simulate({"engine": (1.0, cyclic_garbage(100 * KiB)),
                                    "leak": (1.0, leak_with_garbage(200 * KiB, 300 * KiB)), **CLEANS},
                                   calls=4000, children=children, seed=seed)
        assert first(found, LEAK_SUSPECTED, "engine") is None, seed
        assert first(found, LEAK_SUSPECTED, "clean") is None, seed
        assert first(found, LEAK_SUSPECTED, "leak") is not None, seed
        estimate = detector.estimate("leak")
        assert estimate is not None and estimate.kib_per_call == pytest.approx(200, rel=0.25)


def test_without_watching_the_creator_of_cyclic_garbage_is_charged() -> None:
    """The failure this fixes: with no settled readings the creator carries the garbage the collector frees
    while its neighbour runs (growth), and the neighbour the frees."""
    detector, _ = simulate({"engine": (1.0, cyclic_garbage(100 * KiB)), **CLEANS}, calls=2400, watch=False)
    engine = detector.estimate("engine")
    assert engine is not None and engine.slope > 8 * KiB
