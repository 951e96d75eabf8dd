"""Benchmark of leak and heavy-task detection (issue 3) on real prefork workers.

Run from the repository root::

    .venv/bin/python benchmarks/bench_detection.py           # full run, ~10 minutes
    .venv/bin/python benchmarks/bench_detection.py --quick   # smoke test, ~2.5 minutes

It prints Markdown tables for:

1. **The labelled scenario suite** of ``tests/integration/detect_tasks.py``: each
   scenario on its own ``celery worker --pool=prefork -c 2`` (Redis, MemGuard defaults
   except a 0.2 s poll interval and 2/3 GiB soft/hard limits), repeated with
   different seeds. Per scenario: precision and recall of ``memguard.leak_suspected``
   against the labels, top-1 attribution accuracy (the report command's first-ranked
   suspect is a leaking task), detection latency (``calls_observed`` of the leaking
   task in its first ``leak_suspected``: calls the master had seen, warm-up included;
   and, from the tasks' own finish times, calls that had finished when the event was
   logged), the first estimate against the true KiB/call, heavy-task findings, and
   true leaks later reported cleared.
2. **False positives per 10,000 clean tasks**: >= 10,000 non-leaking tasks of six
   names (four clean ones, the bounded cache, the fragmenting workload) on one worker.
3. **Child-side overhead while no suspect exists**: ``ChildRuntime.before() + after()``
   with the issue-2 code (commit ``--baseline``, exported with ``git archive``) against
   the current code with diagnostics off, with the default diagnostics and an empty
   trace list, and with another task on the trace list; each in a fresh process,
   interleaved round by round.
4. **Share of tasks measured with the heap probe**: the clean, cache and fragmenting
   tasks of section 2 replayed in one process through the child runtime; how many
   of them followed an RSS growth and so were measured.
5. **Caches, deferred frees and master speed** (issue 9) on the simulated pool of
   ``tests/unit/detectors/heap_sim.py``: precision, recall, latency and false
   positives per 10,000 clean calls per scenario, and the master-growth detector's
   time to report on defaults for fast, slow and one-step masters.

Needs Redis on 127.0.0.1:6379; uses DB 11 (``--broker``) for broker and results and
flushes it before and after. Sections can be picked with ``--only``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(REPO))

from _common import export_commit, flush_db, fmt, machine, median, redis_up, source_description, table  # noqa: E402
from tests.harness import HarnessTimeout, Worker, launch_worker, wait_until  # noqa: E402

SECTIONS = ("scenarios", "fp", "overhead", "armed", "synthetic")
#: The last commit of issue 2 (the foundation), before leak detection and leak-site tracing.
BASELINE_COMMIT = "b42fad3"
POLL_INTERVAL = 0.2
FOLLOW_UP_CALLS = 12


def say(text: str = "") -> None:
    print(text, flush=True)


def progress(text: str) -> None:
    print(f"  .. {text}", file=sys.stderr, flush=True)


def _ts(text: str) -> float:
    return dt.datetime.fromisoformat(text).timestamp()


# =================================================================================
# a worker running tests/integration/proj.py with the scenario tasks
# =================================================================================


def scenario_worker(run_dir: Path, broker: str, conf: dict[str, Any], table_mib: int = 0) -> Worker:
    """A ready ``celery -A tests.integration.proj worker --pool=prefork -c 2`` with the scenario tasks (harness)."""
    return launch_worker(run_dir, broker, tag=uuid.uuid4().hex[:10], backend=broker, table_mib=table_mib,
                         conf={"imports": ["tests.integration.detect_tasks"], **conf})


def wait_for(predicate: Callable[[], bool], timeout: float) -> bool:
    """Whether ``predicate`` came true within ``timeout`` seconds (a benchmark goes on either way)."""
    try:
        return bool(wait_until(predicate, timeout))
    except HarnessTimeout:
        return False


# =================================================================================
# 1. the scenario suite
# =================================================================================


@dataclass
class ScenarioResult:
    """One run of one scenario."""

    name: str
    diagnostics: str
    seed: int
    leaking: frozenset[str]
    heavy_expected: frozenset[str]
    named: set[str]
    heavy: set[str]
    top1: str | None
    latency: dict[str, int]
    finished_by_then: dict[str, int]
    first_kib: dict[str, float]
    cleared: dict[str, int]
    master_growth: int
    errors: int
    tasks: int
    wall: float


def _traced(worker: Worker, task: str) -> Callable[[], bool]:
    """Whether a child has logged ``memguard.leak_sites`` for ``task`` (or the master cleared it)."""
    def done() -> bool:
        if any(e.get("task") == task for e in worker.events("memguard.leak_sites")):
            return True
        verdicts = [e["event"] for e in worker.events() if e.get("task") == task
                    and e.get("event") in ("memguard.leak_suspected", "memguard.leak_cleared")]
        return bool(verdicts) and verdicts[-1] == "memguard.leak_cleared"  # cleared: nobody will trace it

    return done


def run_scenario(name: str, seed: int, diagnostics: str, run_dir: Path, broker: str,
                 scale: float = 1.0) -> ScenarioResult:
    """Run one scenario on a fresh worker and score it against its labels."""
    from tests.integration import detect_tasks as d

    scenario = d.SCENARIOS[name]
    flush_db(broker)
    started = time.monotonic()
    worker = scenario_worker(run_dir, broker, {"memguard_poll_interval": POLL_INTERVAL, "memguard_soft_limit": "2GiB",
                                               "memguard_hard_limit": "3GiB", "memguard_diagnostics": diagnostics},
                             table_mib=scenario.table_mib)
    results: list[tuple[str, Any]] = []
    try:
        for phase in scenario.plan(seed, scale):
            results += zip([n for n, _ in phase], worker.run(phase))
            time.sleep(5 * POLL_INTERVAL)
        named = {e["task"] for e in worker.events("memguard.leak_suspected")}
        if diagnostics != "off":  # let the children trace the suspects (and see what tracing does to the estimate)
            for task in sorted(named & scenario.leaking):
                calls = d.follow_up(task, FOLLOW_UP_CALLS)
                results += zip([n for n, _ in calls], worker.run(calls))
                wait_for(_traced(worker, task), 120)
            time.sleep(5 * POLL_INTERVAL)
    finally:
        worker.close()
    wall = time.monotonic() - started
    suspected = worker.events("memguard.leak_suspected")
    named = {e["task"] for e in suspected}
    latency: dict[str, int] = {}
    finished: dict[str, int] = {}
    first_kib: dict[str, float] = {}
    for task in scenario.leaking:
        first = next((e for e in suspected if e["task"] == task), None)
        if first is None:
            continue
        latency[task] = int(first["calls_observed"])
        first_kib[task] = float(first["kib_per_call"])
        at = _ts(first["ts"])
        finished[task] = sum(1 for n, value in results if n == task and value["t"] <= at)
    cleared: dict[str, int] = {}
    for event in worker.events("memguard.leak_cleared"):
        cleared[event["task"]] = cleared.get(event["task"], 0) + 1
    ranked = [s["task"] for h in worker.report(timeout=120)["hosts"] for s in h["suspects"]]
    top1 = ranked[0] if ranked else None
    return ScenarioResult(
        name=name, diagnostics=diagnostics, seed=seed, leaking=scenario.leaking, heavy_expected=scenario.heavy,
        named=named, heavy={e["task"] for e in worker.events("memguard.heavy_task")}, top1=top1, latency=latency,
        finished_by_then=finished, first_kib=first_kib, cleared=cleared,
        master_growth=len(worker.events("memguard.master_growth")), errors=len(worker.events("memguard.error")),
        tasks=len(results), wall=wall)


def _ratio(num: int, den: int) -> str:
    return "-" if den == 0 else f"{num / den:.2f}"


def _range(values: list[float]) -> str:
    if not values:
        return "-"
    lo, hi = min(values), max(values)
    mid = median(values)
    return f"{mid:g}" if lo == hi else f"{mid:g} ({lo:g}-{hi:g})"


def section_scenarios(quick: bool, run_dir: Path, broker: str, reps: int, names: Sequence[str]) -> None:
    from tests.integration import detect_tasks as d

    variants: list[tuple[str, str]] = [(name, "tracemalloc") for name in names]
    if not quick:  # contrasts: whole-heap diagnostics on a leak; no diagnostics with two leaks
        for name, diagnostics in (("large_buffers", "both"), ("two_leaks", "off")):
            if name in names:
                variants.insert(variants.index((name, "tracemalloc")) + 1, (name, diagnostics))
    say("## 1. Labelled scenarios on real prefork workers\n")
    say(f"Method: each scenario of `tests/integration/detect_tasks.py` on a fresh `celery worker --pool=prefork -c 2` "
        f"(Redis broker, MemGuard defaults except poll interval {POLL_INTERVAL} s, soft/hard limits 2/3 GiB, "
        f"diagnostics as shown), {reps} run(s) with seeds 0..{reps - 1}. The calls of a phase are sent at once "
        f"(shuffled where the scenario interleaves names); after the plan, each named leaking task gets "
        f"{FOLLOW_UP_CALLS} more calls so the children trace it. Precision = leaking names named / all names "
        f"named, recall = leaking names named / leaking names, both summed over runs ('-' where undefined: "
        f"nothing named, or nothing leaking). Top-1 = runs whose report ranks a leaking task first. Latency = "
        f"`calls_observed` of the leaking task in its first `leak_suspected` (warm-up calls included); 'done "
        f"by then' = calls of it that had finished (their own clock) when that event was logged, which includes "
        f"calls finished but not yet polled. Per-run wall time includes worker start and stop.\n")
    rows = []
    results: list[ScenarioResult] = []
    for name, diagnostics in variants:
        scenario = d.SCENARIOS[name]
        runs = []
        for seed in range(reps):
            progress(f"scenario {name} ({diagnostics}) seed {seed}")
            result = run_scenario(name, seed, diagnostics, run_dir, broker)
            runs.append(result)
            results.append(result)
        tp = sum(len(r.named & r.leaking) for r in runs)
        fp = sum(len(r.named - r.leaking) for r in runs)
        fn = sum(len(r.leaking - r.named) for r in runs)
        leak_rows = [(task, r) for r in runs for task in sorted(r.leaking)]
        latency = [float(r.latency[t]) for t, r in leak_rows if t in r.latency]
        done = [float(r.finished_by_then[t]) for t, r in leak_rows if t in r.finished_by_then]
        kib = [r.first_kib[t] for t, r in leak_rows if t in r.first_kib]
        false_names = sorted({n for r in runs for n in r.named - r.leaking})
        heavy_ok = sum(1 for r in runs if r.heavy == set(r.heavy_expected))
        cleared_true = sum(v for r in runs for t, v in r.cleared.items() if t in r.leaking)
        rows.append([
            name + ("" if diagnostics == "tracemalloc" else f" [{diagnostics}]"),
            "leak" if scenario.leaking else "control",
            len(runs),
            _ratio(tp, tp + fp),
            _ratio(tp, tp + fn),
            _ratio(sum(1 for r in runs if r.top1 in r.leaking), len(runs)) if scenario.leaking else "-",
            _range(latency) if len(scenario.leaking) == 1 else (f"{median(latency):g} (median of {len(latency)})"
                                                                if latency else "-"),
            _range(done) if len(scenario.leaking) == 1 else "-",
            (_range([round(k) for k in kib]) if len(scenario.leaking) == 1 else "-"),
            ", ".join(n.removeprefix("det.") for n in false_names) or "-",
            f"{heavy_ok}/{len(runs)}",
            cleared_true,
            sum(r.master_growth for r in runs) + sum(r.errors for r in runs),
            fmt(median([r.wall for r in runs]), 1),
        ])
    say(table(["scenario", "kind", "runs", "precision", "recall", "top-1", "latency (calls)", "done by then",
               "first KiB/call", "falsely named", "heavy as labelled", "true leaks cleared",
               "master growth + errors", "s/run"], rows))
    say("")
    say("True KiB/call: large_buffers 2,048; small_objects ~3,400 (50,000 str + list); dict_by_args ~95 (~120 per "
        "new key, 80 % new keys); slow_leak 50; one_of_four* 512. Heavy as labelled = runs whose "
        "`memguard.heavy_task` names are exactly the scenario's spikes (none elsewhere).\n")
    multi = [r for r in results if len(r.leaking) > 1]
    if multi:
        say("Per leaking task, in the scenarios with several leaks:\n")
        per_task = []
        for name in dict.fromkeys(r.name for r in multi):
            runs = [r for r in multi if r.name == name]
            for task in sorted(runs[0].leaking):
                named_in = [r for r in runs if task in r.named]
                per_task.append([
                    name, task.removeprefix("det."), f"{len(named_in)}/{len(runs)}",
                    _range([float(r.latency[task]) for r in named_in]),
                    _range([round(r.first_kib[task]) for r in named_in]),
                    sum(r.cleared.get(task, 0) for r in runs),
                ])
        say(table(["scenario", "leaking task", "named in", "latency (calls)", "first KiB/call", "cleared"], per_task))
        say("")
    all_tp = sum(len(r.named & r.leaking) for r in results)
    all_fp = sum(len(r.named - r.leaking) for r in results)
    all_fn = sum(len(r.leaking - r.named) for r in results)
    say(f"Over all {len(results)} runs: precision {_ratio(all_tp, all_tp + all_fp)}, recall "
        f"{_ratio(all_tp, all_tp + all_fn)} ({all_tp} true, {all_fp} false, {all_fn} missed names).\n")


# =================================================================================
# 2. false positives per 10,000 clean tasks
# =================================================================================


def section_fp(quick: bool, run_dir: Path, broker: str, tasks: int) -> None:
    import random

    from tests.integration import detect_tasks as d

    say("## 2. False positives per 10,000 clean tasks\n")
    rng = random.Random(42)
    names = list(d.CLEAN) + [d.BOUNDED_CACHE, d.FRAGMENT, d.CACHE_LRU, d.CACHE_DICT, d.CYCLIC]
    calls: list[tuple[str, tuple[Any, ...]]] = []
    for i in range(tasks):
        name = names[i % len(names)]
        if name == d.CLEAN_D:
            args: tuple[Any, ...] = (20_000, rng.randrange(1 << 30))
        elif name in (d.BOUNDED_CACHE, d.FRAGMENT):
            args = (rng.randrange(1 << 30) if name == d.FRAGMENT else rng.randrange(10_000),)
        elif name == d.CACHE_LRU:
            args = (rng.randrange(d.LRU_KEYS),)
        elif name == d.CACHE_DICT:
            args = (rng.randrange(d.DICT_CACHE_KEYS),)
        elif name == d.CYCLIC:
            args = (200,)
        else:
            args = ()
        calls.append((name, args))
    rng.shuffle(calls)
    say(f"Method: {tasks:,} non-leaking tasks of {len(names)} names ({', '.join(names)}), shuffled, sent at once "
        f"to one worker (same settings as section 1, default diagnostics); every `leak_suspected` is a false "
        f"positive.\n")
    flush_db(broker)
    started = time.monotonic()
    worker = scenario_worker(run_dir, broker, {"memguard_poll_interval": POLL_INTERVAL, "memguard_soft_limit": "2GiB",
                                               "memguard_hard_limit": "3GiB"})
    try:
        progress(f"false positives: {tasks:,} tasks")
        worker.run(calls, timeout=1800)
        time.sleep(5 * POLL_INTERVAL)
    finally:
        worker.close()
    wall = time.monotonic() - started
    suspects = worker.events("memguard.leak_suspected")
    false_names = sorted({e["task"] for e in suspects})
    heavy = worker.events("memguard.heavy_task")
    per_10k = len(false_names) * 10_000 / tasks
    rows: list[list[Any]] = [
        ["tasks run", f"{tasks:,}"],
        ["leak_suspected events", len(suspects)],
        ["task names falsely named", ", ".join(false_names) or "none"],
        ["false positives (names) per 10,000 tasks", fmt(per_10k, 2)],
        ["heavy_task events (none expected)", len(heavy)],
        ["master_growth / error events", f"{len(worker.events('memguard.master_growth'))} / "
                                         f"{len(worker.events('memguard.error'))}"],
        ["wall time (s)", fmt(wall, 0)],
    ]
    say(table(["measure", "value"], rows))
    say("")


# =================================================================================
# 3. child-side overhead while no suspect exists
# =================================================================================

_CHILD_COST = r"""
import gc, json, signal, statistics, sys, time, uuid
variant, n, reps = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
import celery.app.trace, celery.worker.consumer  # a pool child's heap: the heap probe's cost grows with it
from celery_memguard.board import ORDER_SIGNAL, Board
from celery_memguard.probes import heap_probe
from celery_memguard.worker.child import ChildRuntime
board = Board(4)
if variant == "baseline":
    rt = ChildRuntime(board, 0, None)
else:
    rt = ChildRuntime(board, 0, None, diagnostics="off" if variant == "off" else "tracemalloc", heap=heap_probe())
    if variant == "other-suspect":
        board.set_trace(["other.task"])
    if variant == "heap-armed":  # every task measured with the heap probe (as in a child whose RSS grows)
        meter = getattr(rt, "heap_meter", None)
        if meter is None:  # code before the child runtime's split into collaborators (paired runs)
            import celery_memguard.worker.child as child_module
            child_module.HEAP_ARMED_TASKS = rt.heap_armed = 1 << 62
        else:
            import celery_memguard.worker.child_heap as heap_module
            heap_module.HEAP_ARMED_TASKS = meter.armed = 1 << 62
tid, name = str(uuid.uuid4()), "bench.noop"
def both():
    rt.before(name, tid)
    rt.after(tid, True)
both()
out = []
for _ in range(reps):
    gc.disable()
    t = time.perf_counter()
    for _i in range(n):
        both()
    out.append((time.perf_counter() - t) / n * 1e6)
    gc.enable()
signal.signal(ORDER_SIGNAL, signal.SIG_DFL)
import celery_memguard
parts = getattr(rt, "traces", rt), getattr(rt, "heap_meter", None)  # (on the runtime itself before its split)
print(json.dumps({"median": statistics.median(out), "min": min(out), "tracer": getattr(parts[0], "tracer", None) is not None,
                  "source": celery_memguard.__file__,
                  "heap_armed": parts[1].armed if parts[1] is not None else getattr(rt, "heap_armed", 0)}))
"""

OVERHEAD_VARIANTS = {
    "baseline": "issue-2 code (commit {commit}), no tracer",
    "off": "current code, memguard_diagnostics='off'",
    "default-empty": "current code, default diagnostics ('tracemalloc'), trace list empty",
    "other-suspect": "current code, default diagnostics, another task on the trace list",
    "heap-armed": "current code, default diagnostics, every task measured with the heap probe (after RSS growth)",
}


def section_overhead(quick: bool, run_dir: Path, baseline: str) -> None:
    n, reps, rounds = (20_000, 3, 3) if quick else (100_000, 5, 7)
    say("## 3. Child-side cost per task while no suspect exists\n")
    src = run_dir / "baseline-src"
    sha = export_commit(baseline, src)
    say(f"Method: `ChildRuntime.before() + after()` called in a loop ({n:,} calls, median of {reps} loops, GC off "
        f"during the loop, as in bench_foundation.py section 2), each variant in a fresh process, the "
        f"{len(OVERHEAD_VARIANTS)} variants interleaved for {rounds} rounds; the table gives the median and the "
        f"minimum over rounds of the per-round medians, in µs per task. The baseline is `celery_memguard/` of "
        f"commit {sha[:10]} (issue 2's foundation) exported with `git archive`.\n")
    per: dict[str, list[float]] = {v: [] for v in OVERHEAD_VARIANTS}
    for rnd in range(rounds):
        progress(f"overhead round {rnd + 1}/{rounds}")
        for variant in OVERHEAD_VARIANTS:
            path = str(src) if variant == "baseline" else str(REPO)
            env = dict(os.environ, PYTHONPATH=path)
            out = subprocess.run([sys.executable, "-c", _CHILD_COST, variant, str(n), str(reps)], env=env, cwd=run_dir,
                                 capture_output=True, text=True, timeout=600)
            if out.returncode != 0:
                raise RuntimeError(f"overhead variant {variant} failed:\n{out.stderr}")
            result = json.loads(out.stdout)
            if (variant == "baseline") != result["source"].startswith(str(src)):
                raise RuntimeError(f"variant {variant} imported {result['source']}")
            if variant == "default-empty" and not result["tracer"]:
                raise RuntimeError("the default diagnostics built no tracer: the variant measures nothing new")
            per[variant].append(result["median"])
    base = median(per["baseline"])
    rows = []
    for variant, label in OVERHEAD_VARIANTS.items():
        values = per[variant]
        rows.append([label.format(commit=sha[:10]), fmt(median(values), 2), fmt(min(values), 2),
                     "-" if variant == "baseline" else f"{median(values) - base:+.2f}"])
    say(table(["variant", "µs median", "µs min", "vs. issue 2 (µs)"], rows))
    say("")


_ARMED = r"""
import json, random, sys, uuid
from collections import Counter
from celery_memguard.board import Board
from celery_memguard.probes import heap_probe
from celery_memguard.worker.child import ChildRuntime
from tests.integration import detect_tasks as d
names, calls, seed = sys.argv[1].split(","), int(sys.argv[2]), int(sys.argv[3])
rng = random.Random(seed)
bodies = {
    d.CLEAN_A: lambda: d.clean_parse.run(), d.CLEAN_B: lambda: d.clean_render.run(),
    d.CLEAN_C: lambda: d.clean_hash.run(), d.CLEAN_D: lambda: d.clean_sort.run(20_000, rng.randrange(10**6)),
    d.BOUNDED_CACHE: lambda: d.bounded_cache.run(rng.randrange(10_000)),
    d.FRAGMENT: lambda: d.fragment.run(rng.randrange(1 << 30)),
}
rt = ChildRuntime(Board(1), 0, None, heap=heap_probe())
measured, total = Counter(), Counter()
for i in range(calls):
    name, tid = rng.choice(names), str(uuid.uuid4())
    armed = rt.heap_meter.armed > 0
    rt.before(name, tid)
    bodies[name]()
    rt.after(tid, True)
    if i >= calls // 10:  # after warm-up
        total[name] += 1
        measured[name] += armed
print(json.dumps({"measured": measured, "total": total}))
"""

ARMED_MIXES = {
    "4 clean names": "det.clean_parse,det.clean_render,det.clean_hash,det.clean_sort",
    "4 clean + bounded cache + fragmenting": ("det.clean_parse,det.clean_render,det.clean_hash,det.clean_sort,"
                                             "det.bounded_cache,det.fragment"),
    "fragmenting only": "det.fragment",
}


def section_armed(quick: bool, run_dir: Path) -> None:
    calls, seeds = (1000, 1) if quick else (3000, 3)
    say("## 4. Share of tasks a child measures with the heap probe\n")
    say(f"Method: the tasks of section 2 run in one process through `ChildRuntime.before()` / `after()` with heap "
        f"accounting on ({calls:,} calls per mix, names drawn at random, seeds 0..{seeds - 1}, fresh process each); "
        f"a task is measured when the child's RSS grew by {64} KiB within its previous 32 tasks. Counted after the "
        f"first tenth of the calls (warm-up).\n")
    rows = []
    for label, names in ARMED_MIXES.items():
        measured = total = 0
        for seed in range(seeds):
            progress(f"armed share: {label}, seed {seed}")
            env = dict(os.environ, PYTHONPATH=str(REPO))
            out = subprocess.run([sys.executable, "-c", _ARMED, names, str(calls), str(seed)], env=env, cwd=run_dir,
                                 capture_output=True, text=True, timeout=900)
            if out.returncode != 0:
                raise RuntimeError(f"armed-share run failed:\n{out.stderr}")
            result = json.loads(out.stdout.strip().splitlines()[-1])
            measured += sum(result["measured"].values())
            total += sum(result["total"].values())
        rows.append([label, f"{total:,}", f"{measured:,}", f"{100 * measured / total:.1f} %"])
    say(table(["mix", "calls after warm-up", "measured", "share"], rows))
    say("")


# =================================================================================


# =================================================================================
# 5. issue 9 on the simulated pool: caches, deferred frees, master speed
# =================================================================================


def section_synthetic(quick: bool) -> None:
    """Precision, recall, latency and false positives per 10,000 clean tasks, from one run of the heap
    simulation (tests/unit/detectors/heap_sim.py) and the master-growth detector on synthetic series."""
    import random

    from celery_memguard.config import MemGuardConfig
    from celery_memguard.detectors import LEAK_SUSPECTED, MasterGrowthDetector
    from celery_memguard.samples import MasterSample
    from celery_memguard.worker.bootstep import build_detectors
    from tests.unit.detectors import heap_sim as h

    KiB, MiB = 1024, 1024 * 1024
    seeds = range(2 if quick else 5)
    say("## 5. Caches, deferred frees and master speed (simulated pool, issue 9)\n")
    say("Method: `tests/unit/detectors/heap_sim.py` simulates pool children measured as the child runtime does "
        "(heap attribution; arming after 64 KiB of RSS growth; watched names measured every call with settled "
        "readings, the watch list one poll of 8 calls late; a cyclic collector freeing pending garbage during "
        "a random call, 1 in 8), feeding the default `LeakDetector(heap_deltas=True)`. Each scenario mixes its "
        f"task (weight 1) with a clean task (weight 3); seeds {seeds.start}..{seeds.stop - 1}, 2 and 4 children. "
        "Latency: calls of the leaking task when it was first named (median, max). False positives: names "
        "other than the leak ever named, per 10,000 calls of non-leaking names.\n")
    scenarios: list[tuple[str, dict[str, Any], int, frozenset[str], int | None]] = [
        ("leak 2 MiB/call", {"leak": h.constant_leak(2 * MiB)}, 400, frozenset({"leak"}), 32),
        ("leak 20 KiB/call", {"leak": h.constant_leak(20 * KiB)}, 3200, frozenset({"leak"}), 400),
        ("dict keyed by args (110 KiB, 20 % repeats)", {"leak": h.unbounded_dict(110 * KiB)}, 4000,
         frozenset({"leak"}), None),
        ("leak 200 KiB/call + 300 KiB cyclic garbage, beside a cyclic task",
         {"leak": h.leak_with_garbage(200 * KiB, 300 * KiB), "engine": h.cyclic_garbage(100 * KiB)}, 4000,
         frozenset({"leak"}), None),
        ("lru_cache(256) x 50 KiB, 400 keys", {"cache": h.lru_cache(256, 50 * KiB, 400)}, 7200, frozenset(), None),
        ("lru_cache(256) x 50 KiB, 1000 keys", {"cache": h.lru_cache(256, 50 * KiB, 1000)}, 7200, frozenset(), None),
        ("dict cache 24 MiB (128 KiB entries)", {"cache": h.dict_cache(24 * MiB, 128 * KiB)}, 7200, frozenset(), None),
        ("dict cache 48 MiB", {"cache": h.dict_cache(48 * MiB, 128 * KiB)}, 7200, frozenset(), None),
        ("dict cache 64 MiB", {"cache": h.dict_cache(64 * MiB, 128 * KiB)}, 7200, frozenset(), None),
        ("cyclic garbage 100 KiB/call (net flat)", {"engine": h.cyclic_garbage(100 * KiB)}, 4000, frozenset(), None),
        ("LRU whose keys never repeat (knee at 256)", {"cache": h.lru_cache(256, 50 * KiB, 100_000)}, 7200,
         frozenset(), None),
    ]
    rows: list[list[Any]] = []
    total_clean_calls = total_false = 0
    for name, models, calls, leaking, goal in scenarios:
        latencies: list[int] = []
        hits = misses = false_names = clean_calls = cleared = runs = 0
        for children in (2, 4):
            for seed in seeds:
                mix = {task: (1.0, model) for task, model in models.items()}
                mix["clean"] = (3.0, h.clean())
                detector, found = h.simulate(mix, calls=calls, children=children, seed=seed)
                runs += 1
                named = {f.task for _, f in found if f.event == LEAK_SUSPECTED}
                for task in leaking:
                    at = h.first(found, LEAK_SUSPECTED, task)
                    if at is None:
                        misses += 1
                    else:
                        hits += 1
                        latencies.append(at)
                false = named - leaking
                false_names += len(false)
                cleared += sum(1 for t in false if t not in detector.suspects)
                share = sum(w for t, (w, _) in mix.items() if t not in leaking) / sum(w for w, _ in mix.values())
                clean_calls += int(calls * share)
        total_clean_calls += clean_calls
        total_false += false_names
        precision = hits / (hits + false_names) if hits + false_names else 1.0
        recall = hits / (hits + misses) if leaking else None
        latency = f"{median(latencies):.0f} / {max(latencies)}" if latencies else "-"
        rows.append([name, runs, fmt(precision, 2) if leaking else "-", fmt(recall, 2) if recall is not None else "-",
                     latency + (f" (goal {goal})" if goal else ""), false_names,
                     fmt(false_names * 10_000 / clean_calls, 2), cleared])
    say(table(["scenario", "runs", "precision", "recall", "latency calls (median / max)", "false names",
               "FP per 10,000 clean calls", "false names cleared by the end"], rows))
    say(f"\nOverall: {total_false} false names over {total_clean_calls:,} calls of non-leaking names "
        f"({total_false * 10_000 / total_clean_calls:.2f} per 10,000).\n")

    # -- master growth on defaults
    cfg = MemGuardConfig.from_mapping({}, 8 * 1024 * MiB)

    def master() -> MasterGrowthDetector:
        return next(d for d in build_detectors(cfg) if isinstance(d, MasterGrowthDetector))

    def first_at(mem: Any, until: float, seed: int) -> float | None:
        rng = random.Random(seed)
        det = master()
        t = 0.0
        while t <= until:
            value = int(mem(t) + rng.uniform(-1, 1) * MiB)
            if det.observe_master(MasterSample(pid=1, mem=value, rss=value, at=t), 0):
                return t
            t += det.sample_interval
        return None

    hour = 3600.0
    cases: list[tuple[str, Any, float, str]] = [
        ("8 MiB/s", lambda t: 55 * MiB + 8 * MiB * t, 600, "<= 120 s"),
        ("2 MiB/s", lambda t: 55 * MiB + 2 * MiB * t, 600, "<= 120 s"),
        ("1 MiB/s", lambda t: 55 * MiB + MiB * t, 600, "<= 120 s"),
        ("200 MiB/h", lambda t: 120 * MiB + 200 * MiB * t / hour, 3 * hour, "-"),
        ("20 MiB/h", lambda t: 120 * MiB + 20 * MiB * t / hour, 3 * hour, "<= 3 h"),
        ("5 MiB/h", lambda t: 120 * MiB + 5 * MiB * t / hour, 6 * hour, "-"),
        ("one 100 MiB step at 40 s, then flat", lambda t: 80 * MiB + 100 * MiB * min(1.0, max(0.0, (t - 40) / 5)),
         6 * hour, "never"),
        ("one 400 MiB step at 1 h, then flat", lambda t: 80 * MiB + 400 * MiB * min(1.0, max(0.0, (t - hour) / 5)),
         6 * hour, "never"),
    ]
    rows = []
    for label, mem, until, goal in cases:
        times = [first_at(mem, until, seed) for seed in seeds]
        found = [t for t in times if t is not None]
        shown = "never" if not found else (f"{min(found):.0f}-{max(found):.0f} s" if max(found) < 600
                                           else f"{min(found) / 60:.0f}-{max(found) / 60:.0f} min")
        rows.append([label, f"{len(found)} / {len(times)}", shown, goal])
    say("Master growth on defaults (readings every `sample_interval`, 2 s, ±1 MiB noise), time from the first "
        "reading to `memguard.master_growth`:\n")
    say(table(["master", "named", "after", "goal"], rows))
    say("")


def main(argv: Sequence[str] | None = None) -> int:
    from tests.integration import detect_tasks as d

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="one run per scenario, 2,000 clean tasks (~2.5 minutes)")
    parser.add_argument("--only", action="append", choices=SECTIONS, help="run only this section (repeatable)")
    parser.add_argument("--scenario", action="append", choices=sorted(d.SCENARIOS),
                        help="run only this scenario in section 1 (repeatable)")
    parser.add_argument("--reps", type=int, default=None, help="runs per scenario (default 3, --quick 1)")
    parser.add_argument("--fp-tasks", type=int, default=None, help="clean tasks in section 2 (default 10,000)")
    parser.add_argument("--broker", default="redis://127.0.0.1:6379/11",
                        help="Redis URL with a dedicated DB (flushed before and after)")
    parser.add_argument("--baseline", default=BASELINE_COMMIT, help="commit of the issue-2 code for section 3")
    parser.add_argument("--keep", action="store_true", help="keep the run directory (worker logs, event logs)")
    args = parser.parse_args(argv)
    sections = args.only or list(SECTIONS)
    reps = args.reps or (1 if args.quick else 3)
    fp_tasks = args.fp_tasks or (2_000 if args.quick else 10_000)
    names = args.scenario or list(d.SCENARIOS)

    started = time.monotonic()
    run_dir = Path(tempfile.mkdtemp(prefix="memguard-bench-detection-"))
    command = " ".join([".venv/bin/python", "benchmarks/bench_detection.py",
                        *(sys.argv[1:] if argv is None else argv)])
    say(f"# celery-memguard detection benchmark{' (--quick)' if args.quick else ''}\n")
    say(f"Command: `{command}`  ")
    say(f"celery_memguard: {source_description()}  ")
    say(f"Date: {dt.datetime.now(dt.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}  ")
    say("Machine: " + "; ".join(f"{k} {v}" for k, v in machine().items()) + "\n")
    if ("scenarios" in sections or "fp" in sections) and not redis_up(args.broker):
        say(f"Redis not reachable at {args.broker}; start it (scripts/services.sh) or pass --broker.")
        return 2
    try:
        if "scenarios" in sections:
            section_scenarios(args.quick, run_dir, args.broker, reps, names)
        if "fp" in sections:
            section_fp(args.quick, run_dir, args.broker, fp_tasks)
        if "overhead" in sections:
            section_overhead(args.quick, run_dir, args.baseline)
        if "armed" in sections:
            section_armed(args.quick, run_dir)
        if "synthetic" in sections:
            section_synthetic(args.quick)
    finally:
        if "scenarios" in sections or "fp" in sections:
            try:
                flush_db(args.broker)
            except Exception:
                pass
        if args.keep:
            progress(f"run directory kept: {run_dir}")
        else:
            import shutil

            shutil.rmtree(run_dir, ignore_errors=True)
    say(f"Total time: {time.monotonic() - started:.0f} s; load average at the end: "
        f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}.")
    return 0


if __name__ == "__main__":
    gc.collect()
    sys.exit(main())
