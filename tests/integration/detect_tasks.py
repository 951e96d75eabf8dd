"""Labelled tasks for the leak/heavy-task detection scenarios on real prefork workers (issue 3).

The worker loads this module through Celery's ``imports`` setting (passed in the
harness's ``conf``: ``{"imports": ["tests.integration.detect_tasks"]}``), so it is
imported in the worker's main process before the pool forks and every child has
the tasks; the test process only sends them by name. Each task name is a label:

* **true leaks** (``LEAKING``): keep memory alive in module-level containers of
  the child, call after call: large buffers, many small ``str`` objects, a dict
  keyed by the task's arguments, a listener list (the one leaking name among
  interleaved clean ones) and a slow ~50 KiB/call leak;
* **negative controls**: a bounded LRU cache (full after a few calls per child,
  under 8 MiB), a one-off 250 MiB spike of small objects, a 600 MiB single buffer,
  a fragmenting workload (a bounded random subset of mixed-size objects), clean
  tasks of several names, and a task that writes into the master's copy-on-write
  table (pages become private: USS grows, RSS does not).

The line where each leak allocates what it keeps carries a ``# LEAK-SITE: <task>``
comment; :func:`leak_site_lines` finds those lines so tests can check that
``memguard.leak_sites`` names them. Every task returns :func:`_done`'s record:
the child's pid, the number of calls of that task in that child so far, and the
wall-clock time the call finished (for detection-latency counts).

:data:`SCENARIOS` are the labelled workloads built from these tasks (which names
leak, which are heavy, the calls in phases), shared by
``tests/integration/test_detection.py`` and ``benchmarks/bench_detection.py``.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import random
import re
import time
from collections import Counter, OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from tests.integration import proj
from tests.integration.proj import app

KiB = 1024
MiB = 1024 * 1024

LEAK_BUFFERS = "det.leak_buffers"
LEAK_OBJECTS = "det.leak_objects"
LEAK_DICT = "det.leak_dict"
LEAK_LISTENERS = "det.leak_listeners"
LEAK_SLOW = "det.leak_slow"
BOUNDED_CACHE = "det.bounded_cache"
SPIKE_OBJECTS = "det.spike_objects"
BIG_BUFFER = "det.big_buffer"
FRAGMENT = "det.fragment"
CLEAN_A = "det.clean_parse"
CLEAN_B = "det.clean_render"
CLEAN_C = "det.clean_hash"
CLEAN_D = "det.clean_sort"
COW_TOUCH = "det.cow_touch"
CACHE_LRU = "det.cache_lru"
CACHE_DICT = "det.cache_dict"
CYCLIC = "det.cyclic_garbage"
LEAK_BESIDE_CYCLES = "det.leak_beside_cycles"

#: Task names that retain memory on every call.
LEAKING = frozenset({LEAK_BUFFERS, LEAK_OBJECTS, LEAK_DICT, LEAK_LISTENERS, LEAK_SLOW, LEAK_BESIDE_CYCLES})
#: Clean task names (temporaries only).
CLEAN = (CLEAN_A, CLEAN_B, CLEAN_C, CLEAN_D)
#: Calls that need far more memory than usual, once: named heavy, never leaks.
SPIKES = frozenset({SPIKE_OBJECTS, BIG_BUFFER})

# -- per-child state (each pool child has its own copy after the fork) ----------
_calls: Counter[str] = Counter()
_buffers: list[bytes] = []
_objects: list[list[str]] = []
_reports: dict[tuple[str, int], list[str]] = {}
_listeners: list[Callable[[], int]] = []
_slow: list[bytes] = []
_cache: OrderedDict[int, bytes] = OrderedDict()
_fragments: list[object] = []
_dict_cache: dict[int, bytes] = {}
_kept_beside_cycles: list[bytes] = []

#: functools.lru_cache(maxsize=256) of ~50 KiB results (~13 MiB per child once full), keys drawn at random
#: from LRU_KEYS values: the cache's new-key rate falls as it fills, then it evicts one result per miss.
LRU_MAXSIZE = 256
LRU_KEYS = 400
LRU_RESULT = 50 * KiB
#: A dict cache capped at DICT_CACHE_MIB per child: keys drawn at random from DICT_CACHE_KEYS, 128 KiB each.
DICT_CACHE_MIB = 24
DICT_CACHE_ENTRY = 128 * KiB
DICT_CACHE_KEYS = DICT_CACHE_MIB * MiB // DICT_CACHE_ENTRY

#: The bounded cache's capacity: 24 entries of 256 KiB = 6 MiB, full after 6 calls (4 entries per call).
CACHE_ENTRIES = 24
CACHE_ENTRY = 256 * KiB
CACHE_PER_CALL = 4
#: Slots of the fragmenting workload's live set (mixed sizes, 16 B .. 64 KiB, ~8 MiB in all).
FRAGMENT_SLOTS = 1000


def _done(name: str) -> dict[str, Any]:
    """Count this call in this child and say who ran it and when it finished."""
    _calls[name] += 1
    return {"pid": os.getpid(), "n": _calls[name], "t": time.time()}


def leak_site_lines() -> dict[str, int]:
    """Task name -> line number of its ``# LEAK-SITE: <task>`` comment in this file."""
    lines: dict[str, int] = {}
    for number, text in enumerate(Path(__file__).read_text().splitlines(), start=1):
        match = re.search(r"# LEAK-SITE: (\S+)$", text)
        if match and match.group(1) in LEAKING:
            lines[match.group(1)] = number
    return lines


# -- true leaks ----------------------------------------------------------------


@app.task(name=LEAK_BUFFERS)
def leak_buffers(kib: int = 2048) -> dict[str, Any]:
    """Keep a ``kib`` KiB bytes buffer (every page written) per call: a large-buffer leak."""
    _buffers.append(b"x" * (kib * KiB))  # LEAK-SITE: det.leak_buffers
    return _done(LEAK_BUFFERS)


@app.task(name=LEAK_OBJECTS)
def leak_objects(count: int = 50_000) -> dict[str, Any]:
    """Keep ``count`` small str objects (~3.4 MiB with the list) per call: a many-small-objects leak."""
    seq = _calls[LEAK_OBJECTS]
    _objects.append([f"{seq}-{i}" for i in range(count)])  # LEAK-SITE: det.leak_objects
    return _done(LEAK_OBJECTS)


@app.task(name=LEAK_DICT)
def leak_dict(customer: str, day: int, rows: int = 1500) -> dict[str, Any]:
    """Memoise a rendered report per (customer, day) in an unbounded dict: a leak keyed by task args."""
    key = (customer, day)
    if key not in _reports:
        _reports[key] = [f"{customer}/{day}/{i:06d}" for i in range(rows)]  # LEAK-SITE: det.leak_dict
    return {**_done(LEAK_DICT), "keys": len(_reports)}


@app.task(name=LEAK_LISTENERS)
def leak_listeners(kib: int = 512) -> dict[str, Any]:
    """Register a callback holding a ``kib`` KiB payload on every call and never remove it."""
    payload = b"l" * (kib * KiB)  # LEAK-SITE: det.leak_listeners
    _listeners.append(lambda: len(payload))
    return _done(LEAK_LISTENERS)


@app.task(name=LEAK_SLOW)
def leak_slow(kib: int = 50) -> dict[str, Any]:
    """Keep a ``kib`` KiB buffer per call (default 50 KiB, below glibc's mmap threshold): a slow leak."""
    _slow.append(b"s" * (kib * KiB))  # LEAK-SITE: det.leak_slow
    return _done(LEAK_SLOW)


# -- negative controls ---------------------------------------------------------


@app.task(name=BOUNDED_CACHE)
def bounded_cache(key: int) -> dict[str, Any]:
    """An LRU cache of CACHE_ENTRIES x 256 KiB: fills within the first calls in a child, then stays flat."""
    hits = 0
    for j in range(CACHE_PER_CALL):
        k = key * CACHE_PER_CALL + j
        if k in _cache:
            _cache.move_to_end(k)
            hits += 1
            continue
        _cache[k] = hashlib.sha256(str(k).encode()).digest() * (CACHE_ENTRY // 32)
        while len(_cache) > CACHE_ENTRIES:
            _cache.popitem(last=False)
    return {**_done(BOUNDED_CACHE), "hits": hits, "entries": len(_cache)}


@functools.lru_cache(maxsize=LRU_MAXSIZE)
def _lru_result(key: int) -> bytes:
    return hashlib.sha256(str(key).encode()).digest() * (LRU_RESULT // 32)


@app.task(name=CACHE_LRU)
def cache_lru(key: int) -> dict[str, Any]:
    """An lru_cache(maxsize=256) of ~50 KiB results: grows while filling (ever more hits), then flat."""
    return {**_done(CACHE_LRU), "size": len(_lru_result(key)), "cached": _lru_result.cache_info().currsize}


@app.task(name=CACHE_DICT)
def cache_dict(key: int) -> dict[str, Any]:
    """A dict cache of at most DICT_CACHE_KEYS x 128 KiB (24 MiB) per child, filled by random keys."""
    if key not in _dict_cache:
        _dict_cache[key] = hashlib.sha256(str(key).encode()).digest() * (DICT_CACHE_ENTRY // 32)
    return {**_done(CACHE_DICT), "entries": len(_dict_cache)}


class _Node:
    """Part of a reference cycle (an engine/session graph created per call and dropped)."""

    def __init__(self, parent: "_Node | None", payload: int) -> None:
        self.parent = parent
        self.children: list[_Node] = []
        self.payload = bytearray(payload)
        if parent is not None:
            parent.children.append(self)


def _cyclic_graph(nodes: int = 200, payload: int = 1024) -> int:
    """Build ~``nodes`` KiB in cycles (every child points at its parent and back) and drop it."""
    root = _Node(None, payload)
    for i in range(nodes - 1):
        _Node(root if i % 10 == 0 else root.children[-1], payload)
    return len(root.children)


@app.task(name=CYCLIC)
def cyclic_garbage(nodes: int = 200) -> dict[str, Any]:
    """Create ~200 KiB of objects in reference cycles and drop them: net flat, freed later by the collector."""
    return {**_done(CYCLIC), "roots": _cyclic_graph(nodes)}


@app.task(name=LEAK_BESIDE_CYCLES)
def leak_beside_cycles(kib: int = 256, nodes: int = 200) -> dict[str, Any]:
    """Keep ``kib`` KiB per call and also leave ~200 KiB of cyclic garbage: a leak the collector must not hide."""
    _kept_beside_cycles.append(b"k" * (kib * KiB))  # LEAK-SITE: det.leak_beside_cycles
    _cyclic_graph(nodes)
    return _done(LEAK_BESIDE_CYCLES)


@app.task(name=SPIKE_OBJECTS)
def spike_objects(mib: int = 250) -> dict[str, Any]:
    """Allocate ~``mib`` MiB of small str objects, then free them all: a one-off spike."""
    count = mib * MiB // 64  # a 7-8 character str is 56 bytes, plus 8 for the list slot
    junk = [str(10_000_000 + i) for i in range(count)]
    size = len(junk)
    del junk
    return {**_done(SPIKE_OBJECTS), "objects": size}


@app.task(name=BIG_BUFFER)
def big_buffer(mib: int = 600) -> dict[str, Any]:
    """Allocate one ``mib`` MiB buffer (every page written), use it, and free it: a one-off big payload."""
    buf = b"b" * (mib * MiB)
    size = len(buf) + buf[-1]
    del buf
    return {**_done(BIG_BUFFER), "size": size}


@app.task(name=FRAGMENT)
def fragment(seed: int, rounds: int = 3000) -> dict[str, Any]:
    """Allocate and free mixed-size objects, keeping a bounded random subset (FRAGMENT_SLOTS) alive."""
    rng = random.Random(seed)
    if not _fragments:
        _fragments.extend([None] * FRAGMENT_SLOTS)
    temporaries: list[object] = []
    for _ in range(rounds):
        size = int(math.exp(rng.uniform(math.log(16), math.log(64 * KiB))))
        obj: object = b"f" * size if rng.random() < 0.7 else [rng.random() for _ in range(max(1, size // 64))]
        if rng.random() < 0.5:
            _fragments[rng.randrange(FRAGMENT_SLOTS)] = obj
        else:
            temporaries.append(obj)
            if len(temporaries) > 64:
                del temporaries[: rng.randrange(1, 64)]
    return _done(FRAGMENT)


@app.task(name=CLEAN_A)
def clean_parse(n: int = 2000) -> dict[str, Any]:
    """Parse a JSON document built on the fly; keeps nothing."""
    doc = json.loads(json.dumps([{"id": i, "name": f"item-{i}", "tags": ["a", "b"]} for i in range(n)]))
    return {**_done(CLEAN_A), "items": len(doc)}


@app.task(name=CLEAN_B)
def clean_render(n: int = 3000) -> dict[str, Any]:
    """Render a text table into a string; keeps nothing."""
    text = "\n".join(f"{i:>8} | {i * i:>12} | {hex(i)}" for i in range(n))
    return {**_done(CLEAN_B), "chars": len(text)}


@app.task(name=CLEAN_C)
def clean_hash(kib: int = 1024) -> dict[str, Any]:
    """Hash a ``kib`` KiB temporary buffer; keeps nothing."""
    digest = hashlib.sha256(b"h" * (kib * KiB)).hexdigest()
    return {**_done(CLEAN_C), "digest": digest[:8]}


@app.task(name=CLEAN_D)
def clean_sort(n: int = 20_000, seed: int = 0) -> dict[str, Any]:
    """Sort random numbers; keeps nothing."""
    rng = random.Random(seed)
    values = sorted(rng.random() for _ in range(n))
    return {**_done(CLEAN_D), "median": values[n // 2]}


@app.task(name=COW_TOUCH)
def cow_touch(mib: int = 2, uss: bool = False) -> dict[str, Any]:
    """Write into ``mib`` MiB of the master's copy-on-write table (``MG_TABLE_MIB``), a new slice each call.

    The pages become private to this child: its USS grows, its RSS does not (they were
    resident, shared, since the fork). With ``uss=True`` the child's USS is returned too.
    """
    table = proj.TABLE
    record = _done(COW_TOUCH)
    if table is None:
        return {**record, "touched_mib": 0}
    size = len(table)
    start = ((record["n"] - 1) * mib * MiB) % size
    stop = min(size, start + mib * MiB)
    table[start:stop:proj.PAGE] = b"\x02" * len(range(start, stop, proj.PAGE))
    out = {**record, "touched_mib": (stop - start) // MiB, "rss": proj._statm_rss()}
    if uss:
        out["uss"] = proj._uss()
    return out


# -- labelled scenarios (shared by tests/integration/test_detection.py and benchmarks/bench_detection.py) ------

#: One task call: (task name, positional args).
Call = tuple[str, tuple[Any, ...]]
#: A scenario's plan: phases run one after the other (the next starts once the previous finished).
Plan = list[list[Call]]


@dataclass(frozen=True)
class Scenario:
    """A labelled workload: which task names leak (must be named) and which are heavy (must be named heavy).

    ``build(rng, scale)`` returns the plan; ``scale`` multiplies the number of calls
    (1.0 is the default run). ``table_mib`` > 0 makes the worker's master hold a
    copy-on-write table of that size.
    """

    name: str
    description: str
    build: Callable[[random.Random, float], Plan]
    leaking: frozenset[str] = frozenset()
    heavy: frozenset[str] = frozenset()
    table_mib: int = 0
    tags: frozenset[str] = field(default_factory=frozenset)

    def plan(self, seed: int = 0, scale: float = 1.0) -> Plan:
        """The phases of calls for ``seed`` (calls within a phase are shuffled)."""
        return self.build(random.Random(seed), scale)

    def calls(self, task: str, seed: int = 0, scale: float = 1.0) -> int:
        """How many calls of ``task`` the plan makes."""
        return sum(1 for phase in self.plan(seed, scale) for name, _ in phase if name == task)


def _n(count: int, scale: float) -> int:
    return max(1, round(count * scale))


def _shuffled(rng: random.Random, calls: list[Call]) -> list[Call]:
    rng.shuffle(calls)
    return calls


def _repeat(task: str, count: int, *args: Any) -> list[Call]:
    return [(task, tuple(args))] * count


def _clean(rng: random.Random, count: int, names: tuple[str, ...] = (CLEAN_A, CLEAN_B, CLEAN_D)) -> list[Call]:
    """``count`` calls spread evenly over clean task ``names``, shuffled."""
    calls: list[Call] = []
    for i in range(count):
        name = names[i % len(names)]
        calls.append((name, (20_000, rng.randrange(1_000_000)) if name == CLEAN_D else ()))
    return _shuffled(rng, calls)


def _dict_calls(rng: random.Random, count: int) -> list[Call]:
    """Calls of LEAK_DICT: 80 % with a (customer, day) not seen before, 20 % repeating an earlier one."""
    keys: list[tuple[str, int]] = []
    calls: list[Call] = []
    for day in range(count):
        if keys and rng.random() < 0.2:
            key = rng.choice(keys)
        else:
            key = (f"customer-{rng.randrange(50)}", day)
            keys.append(key)
        calls.append((LEAK_DICT, key))
    return calls


def follow_up(task: str, count: int) -> list[Call]:
    """``count`` more calls of leaking ``task`` (new keys for the dict leak), e.g. to let children trace it."""
    if task == LEAK_DICT:
        return [(task, ("follow-up", 100_000 + i)) for i in range(count)]
    args = {LEAK_BUFFERS: (2048,), LEAK_OBJECTS: (50_000,), LEAK_LISTENERS: (512,), LEAK_SLOW: (50,),
            LEAK_BESIDE_CYCLES: (256,)}
    return [(task, args[task])] * count


def _spike_plan(task: str, mib: int) -> Callable[[random.Random, float], Plan]:
    def build(rng: random.Random, scale: float) -> Plan:
        # The heavy-task detector needs 20 calls before it knows the typical peak: clean calls first.
        return [_clean(rng, _n(60, scale)), [(task, (mib,))], _clean(rng, _n(60, scale))]
    return build


SCENARIOS: dict[str, Scenario] = {s.name: s for s in [
    Scenario("large_buffers", "2 MiB bytes kept per call", leaking=frozenset({LEAK_BUFFERS}),
             build=lambda rng, k: [_repeat(LEAK_BUFFERS, _n(60, k), 2048)], tags=frozenset({"leak"})),
    Scenario("small_objects", "50,000 small str kept per call (~3.4 MiB)", leaking=frozenset({LEAK_OBJECTS}),
             build=lambda rng, k: [_repeat(LEAK_OBJECTS, _n(60, k), 50_000)], tags=frozenset({"leak"})),
    Scenario("dict_by_args", "a dict keyed by (customer, day) memoising ~110 KiB per new key",
             leaking=frozenset({LEAK_DICT}), build=lambda rng, k: [_dict_calls(rng, _n(700, k))],
             tags=frozenset({"leak"})),
    Scenario("slow_leak", "50 KiB kept per call", leaking=frozenset({LEAK_SLOW}),
             build=lambda rng, k: [_repeat(LEAK_SLOW, _n(400, k), 50)], tags=frozenset({"leak"})),
    Scenario("one_of_four", "512 KiB kept per call by one name, 3 clean names (small temporaries) interleaved",
             leaking=frozenset({LEAK_LISTENERS}),
             build=lambda rng, k: [_shuffled(rng, _repeat(LEAK_LISTENERS, _n(100, k), 512) + _clean(rng, _n(300, k)))],
             tags=frozenset({"leak", "interleaved"})),
    Scenario("one_of_four_big_temporaries",
             "512 KiB kept per call by one name; 3 clean names, one hashing a 1 MiB temporary buffer",
             leaking=frozenset({LEAK_LISTENERS}),
             build=lambda rng, k: [_shuffled(rng, _repeat(LEAK_LISTENERS, _n(100, k), 512)
                                             + _clean(rng, _n(300, k), (CLEAN_A, CLEAN_B, CLEAN_C)))],
             tags=frozenset({"leak", "interleaved"})),
    Scenario("objects_among_clean", "the small-objects leak interleaved with 3 clean names",
             leaking=frozenset({LEAK_OBJECTS}),
             build=lambda rng, k: [_shuffled(rng, _repeat(LEAK_OBJECTS, _n(60, k), 50_000) + _clean(rng, _n(180, k)))],
             tags=frozenset({"leak", "interleaved"})),
    Scenario("slow_among_clean", "the 50 KiB/call leak interleaved with 3 clean names",
             leaking=frozenset({LEAK_SLOW}),
             build=lambda rng, k: [_shuffled(rng, _repeat(LEAK_SLOW, _n(400, k), 50) + _clean(rng, _n(300, k)))],
             tags=frozenset({"leak", "interleaved"})),
    Scenario("two_leaks", "2 MiB buffers (40 calls) and 50,000 small str (120 calls) kept, interleaved",
             leaking=frozenset({LEAK_BUFFERS, LEAK_OBJECTS}),
             build=lambda rng, k: [_shuffled(rng, _repeat(LEAK_BUFFERS, _n(40, k), 2048)
                                             + _repeat(LEAK_OBJECTS, _n(120, k), 50_000))],
             tags=frozenset({"leak", "interleaved"})),
    Scenario("all_leaks_mixed", "the five leaks and three clean names (one with a 1 MiB temporary) in one worker",
             leaking=frozenset(LEAKING - {LEAK_BESIDE_CYCLES}),
             build=lambda rng, k: [_shuffled(rng, _repeat(LEAK_BUFFERS, _n(60, k), 2048)
                                             + _repeat(LEAK_OBJECTS, _n(60, k), 50_000) + _dict_calls(rng, _n(600, k))
                                             + _repeat(LEAK_SLOW, _n(400, k), 50)
                                             + _repeat(LEAK_LISTENERS, _n(100, k), 512)
                                             + _clean(rng, _n(300, k), (CLEAN_A, CLEAN_B, CLEAN_C)))],
             tags=frozenset({"leak", "interleaved", "stress"})),
    Scenario("bounded_cache", f"an LRU cache of {CACHE_ENTRIES} x 256 KiB (6 MiB), full after 6 calls per child",
             build=lambda rng, k: [[(BOUNDED_CACHE, (rng.randrange(10_000),)) for _ in range(_n(300, k))]],
             tags=frozenset({"control"})),
    Scenario("spike_objects", "one call allocating and freeing 250 MiB of small str objects, among clean calls",
             heavy=frozenset({SPIKE_OBJECTS}), build=_spike_plan(SPIKE_OBJECTS, 250), tags=frozenset({"control"})),
    Scenario("big_buffer", "one call allocating and freeing a 600 MiB buffer, among clean calls",
             heavy=frozenset({BIG_BUFFER}), build=_spike_plan(BIG_BUFFER, 600), tags=frozenset({"control"})),
    Scenario("fragmentation", f"mixed sizes 16 B..64 KiB, a bounded random subset ({FRAGMENT_SLOTS} slots) kept",
             build=lambda rng, k: [[(FRAGMENT, (rng.randrange(1 << 30),)) for _ in range(_n(250, k))]],
             tags=frozenset({"control"})),
    Scenario("clean", "4 clean names (JSON parse, text render, 1 MiB hash, sort) interleaved",
             build=lambda rng, k: [_clean(rng, _n(400, k), CLEAN)], tags=frozenset({"control"})),
    Scenario("lru_cache", f"functools.lru_cache(maxsize={LRU_MAXSIZE}) of 50 KiB results, keys at random from "
             f"{LRU_KEYS}, among clean calls (~13 MiB per child once full)",
             build=lambda rng, k: [_shuffled(rng, [(CACHE_LRU, (rng.randrange(LRU_KEYS),)) for _ in range(_n(1200, k))]
                                             + _clean(rng, _n(300, k)))],
             tags=frozenset({"control", "cache"})),
    Scenario("dict_cache", f"a dict cache capped at {DICT_CACHE_MIB} MiB per child filled by random keys",
             build=lambda rng, k: [_shuffled(rng, [(CACHE_DICT, (rng.randrange(DICT_CACHE_KEYS),))
                                                   for _ in range(_n(1000, k))] + _clean(rng, _n(300, k)))],
             tags=frozenset({"control", "cache"})),
    Scenario("deferred_gc", "~200 KiB of cyclic garbage per call (freed later by the collector) among clean calls",
             build=lambda rng, k: [_shuffled(rng, _repeat(CYCLIC, _n(400, k), 200) + _clean(rng, _n(400, k)))],
             tags=frozenset({"control", "gc"})),
    Scenario("leak_beside_gc", "256 KiB kept per call plus ~200 KiB of cyclic garbage, beside the cyclic task "
             "and clean calls", leaking=frozenset({LEAK_BESIDE_CYCLES}),
             build=lambda rng, k: [_shuffled(rng, _repeat(LEAK_BESIDE_CYCLES, _n(150, k), 256)
                                             + _repeat(CYCLIC, _n(300, k), 200) + _clean(rng, _n(300, k)))],
             tags=frozenset({"leak", "interleaved", "gc"})),
    Scenario("cow_table", "a 300 MiB table in the master (copy-on-write); clean calls and one writing 2 MiB of it",
             table_mib=300,
             build=lambda rng, k: [_shuffled(rng, _clean(rng, _n(240, k), CLEAN) + _repeat(COW_TOUCH, _n(100, k), 2))],
             tags=frozenset({"control"})),
]}
