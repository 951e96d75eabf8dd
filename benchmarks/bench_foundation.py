"""Benchmark of the foundation (issue 2): throughput, per-task and per-poll cost, hard-limit overshoot.

Run from the repository root::

    .venv/bin/python benchmarks/bench_foundation.py           # full run, < 10 minutes
    .venv/bin/python benchmarks/bench_foundation.py --quick   # smoke test, < 2 minutes

It prints Markdown tables (plain text readable) for:

1. Throughput of no-op tasks through a real ``celery worker --pool=prefork -c 2``
   on Redis: plain worker vs. MemGuard (soft 512 MiB, hard 1 GiB, uss, poll 1 s)
   vs. Celery's ``worker_max_memory_per_child`` set too high to trigger, paired
   and interleaved in one run (A B C A B C ...). The queue is filled *before*
   each worker starts, so the producer is not running while throughput is measured.
2. Child-side cost per task: ``ChildRuntime.before() + after()`` in a loop, and
   the full ``task_prerun``/``task_postrun`` signal dispatch with and without
   MemGuard's receivers.
3. Master poll cost per child at 2, 8 and 32 forked idle children, for limits far
   above the children, limits below them, and a copy-on-write case.
4. Hard-limit overshoot at 100, 400 and 1000 MiB/s growth with
   ``memguard_hard_limit=300MiB`` and defaults otherwise.
5. The same growth with Celery's ``worker_max_memory_per_child`` = 300 MiB.

Needs Redis on 127.0.0.1:6379 (``--broker`` to change); uses DB 12 and flushes
it before every worker run. Sections can be picked with ``--only``, throughput
variants with ``--variants``; ``--commit SHA`` benchmarks ``celery_memguard`` as
of a commit (exported with ``git archive``, the working tree is not touched),
which keeps a run reproducible while the working tree changes.
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import itertools
import json
import os
import shutil
import signal
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (COUNTER, RECORD, MiB, Worker, export_commit, flush_db, fmt, machine, median,  # noqa: E402
                     redis_up, source_description, table)

SECTIONS = ("child", "poll", "throughput", "overshoot")


def say(text: str = "") -> None:
    print(text, flush=True)


def progress(text: str) -> None:
    print(f"  .. {text}", file=sys.stderr, flush=True)


# =================================================================================
# 2. child-side cost per task
# =================================================================================


def _per_call_us(fn: Callable[[], None], n: int, reps: int) -> tuple[float, float]:
    """(median, min) over ``reps`` runs of the per-call time of ``fn`` in µs."""
    results: list[float] = []
    rng = range(n)
    for _ in range(reps):
        gc.disable()
        try:
            t = time.perf_counter()
            for _i in rng:
                fn()
            results.append((time.perf_counter() - t) / n * 1e6)
        finally:
            gc.enable()
    return median(results), min(results)


def _runtime_options() -> dict[str, Any]:
    """Extra ChildRuntime arguments the bootstep passes with default settings (if this version has any)."""
    import inspect

    from celery_memguard.config import MemGuardConfig
    from celery_memguard.probes import effective_memory
    from celery_memguard.worker.child import ChildRuntime

    cfg = MemGuardConfig.from_mapping({}, effective_memory())
    params = inspect.signature(ChildRuntime).parameters
    return {name: getattr(cfg, name) for name in ("diagnostics",) if name in params and hasattr(cfg, name)}


def _child_runtime_costs(n: int, reps: int) -> dict[str, tuple[float, float]]:
    """Time the child's per-task operations in this process."""
    from celery_memguard.board import ORDER_SIGNAL, Board
    from celery_memguard.worker.child import ChildRuntime

    board = Board(4)
    rt = ChildRuntime(board, 0, None, **_runtime_options())
    try:
        tid = str(uuid.uuid4())
        name = "bench.noop"
        probe = rt.probe

        def both() -> None:
            rt.before(name, tid)
            rt.after(tid, True)

        now = time.monotonic()
        out = {
            "empty loop (baseline, not subtracted)": _per_call_us(lambda: None, n, reps),
            "before() + after() (the whole per-task cost)": _per_call_us(both, n, reps),
            "  SelfProbe.reset_peak() (pwrite clear_refs)": _per_call_us(probe.reset_peak, n, reps),
            "  SelfProbe.rss() (pread statm)": _per_call_us(lambda: probe.rss() and None, n, reps),
            "  SelfProbe.peak() (getrusage)": _per_call_us(lambda: probe.peak() and None, n, reps),
            "  Board.task_started()": _per_call_us(
                lambda: board.task_started(0, rt.pid, name, tid, now, 1, 0, now), n, reps),
            "  Board.task_finished()": _per_call_us(
                lambda: board.task_finished(0, rt.pid, name, tid, now, 0.001, 1, 2, 3, True, 1, now), n, reps),
        }
        return out
    finally:
        signal.signal(ORDER_SIGNAL, signal.SIG_DFL)
        board.close()


def _child_cost_in_big_process(n: int, reps: int, big_mib: int) -> tuple[float, float]:
    """before()+after() per-call µs measured in a forked process holding ``big_mib`` MiB."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        code = 0
        try:
            os.close(r)
            ballast = b"\x05" * (big_mib * MiB)  # noqa: F841 - kept resident on purpose
            costs = _child_runtime_costs(n, reps)
            os.write(w, json.dumps(costs["before() + after() (the whole per-task cost)"]).encode())
        except BaseException:
            code = 1
        finally:
            os._exit(code)
    os.close(w)
    data = b""
    while chunk := os.read(r, 4096):
        data += chunk
    os.close(r)
    os.waitpid(pid, 0)
    med, low = json.loads(data or b"[NaN, NaN]")
    return med, low


def _job_hook_costs(n: int, reps: int) -> dict[str, tuple[float, float]]:
    """Cost of one job through billiard's wait_for_job + the job function, without and with MemGuard's hook.

    In a pool child MemGuard wraps ``wait_for_job`` and the job's function (Celery's trace function);
    this runs the same path with a stand-in worker whose ``wait_for_job`` returns a job message at once
    and a trace function that returns at once, so the difference is MemGuard's whole per-task cost.
    """
    from celery_memguard.board import ORDER_SIGNAL, Board
    from celery_memguard.worker.child import ChildRuntime

    tid = str(uuid.uuid4())

    def trace(name: str, task_id: str, request: object, body: object, *rest: object) -> tuple[int, None, float]:
        return (0, None, 0.0)

    job = (2, (1, 0, trace, ("bench.noop", tid, {}, b"", "application/json", "utf-8"), {}))

    class StandIn:
        def wait_for_job(self) -> object:
            return job

    def run(worker: StandIn) -> Callable[[], None]:
        def one() -> None:
            _type, (_job, _i, fun, args, kwargs) = worker.wait_for_job()  # type: ignore[misc]
            fun(*args, **kwargs)
        return one

    out: dict[str, tuple[float, float]] = {}
    out["wait_for_job + job function, no MemGuard"] = _per_call_us(run(StandIn()), n, reps)
    board = Board(4)
    hooked = StandIn()
    rt = ChildRuntime(board, 0, hooked, **_runtime_options())
    try:
        getattr(rt, "job_hook", rt).ready_reported = True  # (on the runtime itself before its split)
        out["wait_for_job + job function, MemGuard hook"] = _per_call_us(run(hooked), n, reps)
    finally:
        signal.signal(ORDER_SIGNAL, signal.SIG_DFL)
        board.close()
    return out


def section_child(quick: bool) -> None:
    n, reps = (20_000, 3) if quick else (100_000, 7)
    say("## 2. Child-side cost per task\n")
    say(f"Method: a Board and a ChildRuntime built directly in this process (as worker_process_init does in a "
        f"pool child); each figure is the median (and min) over {reps} runs of {n:,} calls, in µs per call, "
        f"GC disabled during the loop. Budget: <= 15 µs per task.\n")
    costs = _child_runtime_costs(n, reps)
    from celery_memguard.probes import SelfProbe

    probe = SelfProbe()
    say(f"Per-task peak via /proc/self/clear_refs supported here: {probe.peak_supported}. ChildRuntime built with "
        f"the default settings' options: {_runtime_options() or 'none'}.\n")
    probe.close()
    big = _child_cost_in_big_process(n // 2, reps, 300)
    rows = [[k, fmt(v[0], 2), fmt(v[1], 2)] for k, v in costs.items() if v[0] == v[0]]
    rows.append(["before() + after() in a process holding 300 MiB", fmt(big[0], 2), fmt(big[1], 2)])
    say(table(["operation", "µs median", "µs min"], rows))
    hook = _job_hook_costs(n, reps)
    say("")
    say("The whole per-task path as a pool child runs it: billiard's wait_for_job and the job function, "
        "with and without MemGuard's hook (MemGuard uses no Celery task signals; their dispatch would add "
        "~8 µs). The difference is what MemGuard adds per task.\n")
    rows = [[k, fmt(v[0], 2), fmt(v[1], 2)] for k, v in hook.items()]
    plain, with_hook = hook["wait_for_job + job function, no MemGuard"], hook["wait_for_job + job function, MemGuard hook"]
    rows.append(["added by MemGuard", fmt(with_hook[0] - plain[0], 2), fmt(with_hook[1] - plain[1], 2)])
    say(table(["path", "µs median", "µs min"], rows))
    say("")


# =================================================================================
# 3. master poll cost per child
# =================================================================================


class IdleChildren:
    """``n`` forked idle processes, each holding ``private_mib`` MiB it wrote itself."""

    def __init__(self, n: int, private_mib: int) -> None:
        self.pids: list[int] = []
        stop_r, self._stop_w = os.pipe()
        ready_r, ready_w = os.pipe()
        for _ in range(n):
            pid = os.fork()
            if pid == 0:  # child: allocate, report ready, block until the parent closes the pipe
                try:
                    os.close(self._stop_w)
                    os.close(ready_r)
                    ballast = b"\x02" * (private_mib * MiB)  # noqa: F841
                    os.write(ready_w, b"1")
                    os.read(stop_r, 1)
                finally:
                    os._exit(0)
            self.pids.append(pid)
        os.close(stop_r)
        os.close(ready_w)
        got = 0
        while got < n:
            chunk = os.read(ready_r, n - got)
            if not chunk:
                break
            got += len(chunk)
        os.close(ready_r)

    def close(self) -> None:
        try:
            os.close(self._stop_w)
        except OSError:
            pass
        for pid in self.pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for pid in self.pids:
            try:
                os.waitpid(pid, 0)
            except ChildProcessError:
                pass
        self.pids = []


def _proc_mem(pid: int) -> tuple[int, int]:
    """(rss, uss) of ``pid`` from smaps_rollup."""
    from celery_memguard.probes import ProcfsProbe

    probe = ProcfsProbe(pid)
    try:
        return probe.rss(), probe.exact("uss")
    finally:
        probe.close()


def _time_polls(pids: Sequence[int], soft: str | None, hard: str | None, polls: int) -> dict[str, float]:
    from celery_memguard import events
    from celery_memguard.actions import Actuator
    from celery_memguard.board import Board
    from celery_memguard.config import MemGuardConfig
    from celery_memguard.engine import Engine
    from celery_memguard.monitor import HostReaders, Monitor, PoolHooks
    from celery_memguard.policies import build_policies
    from celery_memguard.probes import effective_memory

    cfg = MemGuardConfig.from_mapping({"memguard_soft_limit": soft, "memguard_hard_limit": hard},
                                      effective_memory())
    board = Board(len(pids) + 1)
    for i, pid in enumerate(pids):
        board.claim(i, pid, time.monotonic())
    listing = [(pid, i) for i, pid in enumerate(pids)]
    # Simulated clock: each poll is one poll_interval (1 s) later, so the periodic exact refresh
    # (every 60 s) happens as often as in a real worker.
    ticks = itertools.count(1000.0, cfg.poll_interval)
    # The real Actuator, with signals replaced by a no-op and events written to /dev/null.
    sent: list[tuple[int, int]] = []
    events.configure(fmt="json", log_file=os.devnull)
    actuator = Actuator(board, metric=cfg.metric, dry_run=False, kill=lambda pid, sig: sent.append((pid, sig)))
    monitor = Monitor(pool=PoolHooks(children=lambda: listing), engine=Engine(build_policies(cfg),
                      kill_grace=cfg.kill_grace, poll_interval=cfg.poll_interval), actuator=actuator, board=board,
                      metric=cfg.metric, host=HostReaders(clock=lambda: next(ticks)))
    n = len(pids)
    try:
        t = time.perf_counter()
        monitor.poll()
        first = (time.perf_counter() - t) / n * 1e6
        times: list[float] = []
        gc.disable()
        try:
            for _ in range(polls):
                t = time.perf_counter()
                monitor.poll()
                times.append((time.perf_counter() - t) / n * 1e6)
        finally:
            gc.enable()
    finally:
        monitor.stop()
        board.close()
    times.sort()
    return {"first": first, "mean": sum(times) / len(times), "median": median(times),
            "p99": times[min(len(times) - 1, int(len(times) * 0.99))], "max": times[-1],
            "decisions": float(monitor.decisions), "signals": float(len(sent))}


def _path_costs(pid: int, reps: int) -> dict[str, float]:
    """µs per cheap reading, exact reading and board read for one child."""
    from celery_memguard.board import Board
    from celery_memguard.probes import ProcfsProbe

    probe = ProcfsProbe(pid)
    board = Board(2)
    board.claim(0, pid, 0.0)
    try:
        cheap = _per_call_us(lambda: probe.cheap() and None, 2000, reps)[0]
        exact = _per_call_us(lambda: probe.exact("uss") and None, 50, reps)[0]
        cur = _per_call_us(lambda: board.current(0) and None, 2000, reps)[0]
    finally:
        probe.close()
        board.close()
    return {"cheap": cheap, "exact": exact, "board": cur}


def section_poll(quick: bool) -> None:
    counts = (2, 8) if quick else (2, 8, 32)
    polls_cheap, polls_exact = (60, 20) if quick else (600, 120)
    private = 30
    say("## 3. Master poll cost per child\n")
    say(f"Method: fork N idle processes from this benchmark, each writing {private} MiB of its own; build a real "
        f"Monitor (ProcfsProbe, MetricEstimate, Engine(build_policies(cfg)), a Board with one claimed slot per "
        f"child, the real Actuator with its signal function replaced by a no-op and events to /dev/null, metric uss) and call poll() directly. A simulated clock advances 1 s "
        f"(poll_interval) per poll, so the 60 s periodic exact refresh happens as often as in a real worker. "
        f"'first' is the first poll (opens the /proc fds, first exact readings); mean/median/p99/max are "
        f"over the following {polls_cheap} polls ({polls_exact} for case b), in µs per child per poll. "
        f"Budget: <= 50 µs per child per poll.\n")
    say("Cases: (a) soft 512 MiB / hard 1 GiB, far above the children: cheap readings only. "
        "(b) soft 8 MiB / hard 16 MiB, below the children's USS: an exact smaps_rollup reading every poll "
        "(decisions are made once, then de-duplicated). (c) the parent holds 300 MiB (written) before forking, "
        "so each child's RSS is ~300 MiB more than its USS; soft 200 MiB (above USS, below RSS), hard 1 GiB: "
        "one exact reading proves the child is below, then the cheap bound suffices until the 60 s refresh.\n")
    rows: list[list[str]] = []
    paths: list[list[str]] = []
    for case, soft, hard, cow in (("a", "512MiB", "1GiB", False), ("b", "8MiB", "16MiB", False),
                                  ("c", "200MiB", "1GiB", True)):
        shared = b"\x03" * (300 * MiB) if cow else b""
        try:
            for n in counts:
                progress(f"poll cost case {case}, {n} children")
                kids = IdleChildren(n, private)
                try:
                    rss, uss = _proc_mem(kids.pids[0])
                    res = _time_polls(kids.pids, soft, hard, polls_exact if case == "b" else polls_cheap)
                    if n == counts[0]:
                        pc = _path_costs(kids.pids[0], 3 if quick else 5)
                        paths.append([case, fmt(rss / MiB), fmt(uss / MiB), fmt(pc["cheap"], 1),
                                      fmt(pc["exact"], 0), fmt(pc["board"], 2)])
                finally:
                    kids.close()
                rows.append([case, str(n), fmt(rss / MiB), fmt(uss / MiB), fmt(res["first"], 1),
                             fmt(res["mean"], 1), fmt(res["median"], 1), fmt(res["p99"], 1), fmt(res["max"], 1),
                             "yes" if res["mean"] <= 50 else "NO", fmt(int(res["decisions"]))])
        finally:
            del shared
    say(table(["case", "children", "child RSS MiB", "child USS MiB", "first µs", "mean µs", "median µs",
               "p99 µs", "max µs", "mean <= 50", "decisions"], rows))
    say("")
    say("Where the time goes, per child (µs per call, median; one child of each case):\n")
    say(table(["case", "child RSS MiB", "child USS MiB", "cheap reading (statm+stat)", "exact (smaps_rollup)",
               "Board.current()"], paths))
    say("")


# =================================================================================
# 1 and 5. throughput
# =================================================================================

ARMS: dict[str, dict[str, Any]] = {
    "plain": {"memguard": False, "conf": {}},
    "memguard": {"memguard": True, "conf": {"memguard_soft_limit": "512MiB", "memguard_hard_limit": "1GiB",
                                            "memguard_metric": "uss", "memguard_poll_interval": 1.0}},
    "maxmem": {"memguard": False, "conf": {"worker_max_memory_per_child": 10 * 1024 * 1024}},  # KiB: 10 GiB
}


def _driver_app(broker: str) -> Any:
    from celery import Celery

    app = Celery("bench-driver", broker=broker, backend=broker, set_as_current=False)
    app.conf.update(task_default_queue="bench", broker_connection_retry_on_startup=True)
    return app


def _publish_noops(app: Any, n: int, warm: int) -> float:
    """Publish ``n`` bench.noop messages (the one at index ``warm`` marked); returns seconds taken."""
    t = time.perf_counter()
    with app.producer_or_acquire() as producer:
        for i in range(n):
            app.send_task("bench.noop", args=(i == warm,), queue="bench", ignore_result=True, producer=producer)
    return time.perf_counter() - t


def _read_counters(run_dir: Path) -> tuple[int, float, float]:
    """(total count, latest completion, warm-up mark) over all per-child counter files."""
    total, last, mark = 0, 0.0, 0.0
    for path in run_dir.glob("count.*"):
        try:
            data = path.read_bytes()
        except OSError:
            continue
        if len(data) < COUNTER.size:
            continue
        count, t_last, t_mark = COUNTER.unpack_from(data, 0)
        total += count
        last = max(last, t_last)
        mark = max(mark, t_mark)
    return total, last, mark


def _throughput_round(arm: str, rnd: int, n: int, warm: int, base_dir: Path, broker: str,
                      app: Any) -> dict[str, Any]:
    run_dir = base_dir / f"tp-{arm}-{rnd}"
    run_dir.mkdir()
    flush_db(broker)
    publish_s = _publish_noops(app, n, warm)
    spec = ARMS[arm]
    worker = Worker(tag=f"tp-{arm}-{rnd}", run_dir=run_dir, broker=broker, memguard=spec["memguard"],
                    conf=dict(spec["conf"]))
    worker.start()
    try:
        deadline = time.monotonic() + 60 + n / 200
        cpu0: tuple[float, float] | None = None
        count0 = 0
        while True:
            total, last, mark = _read_counters(run_dir)
            if mark and cpu0 is None:
                cpu0, count0 = worker.cpu_seconds(), total
            if total >= n:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"{arm} round {rnd}: only {total}/{n} tasks done:\n{worker.log_tail()}")
            if worker.proc is not None and worker.proc.poll() is not None:
                raise RuntimeError(f"{arm} round {rnd}: worker died:\n{worker.log_tail()}")
            time.sleep(0.1)
        cpu1 = worker.cpu_seconds()
    finally:
        worker.stop()
    total, last, mark = _read_counters(run_dir)
    rate = (n - warm - 1) / (last - mark) if last > mark > 0 else float("nan")
    done = n - count0
    if cpu0 is not None and done > 0:
        master_us = (cpu1[0] - cpu0[0]) / done * 1e6
        children_us = (cpu1[1] - cpu0[1]) / done * 1e6
    else:
        master_us = children_us = float("nan")
    events = worker.memguard_events() if spec["memguard"] else []
    names = [e.get("event") for e in events]
    stopped = [e for e in events if e.get("event") == "memguard.stopped"]
    return {"rate": rate, "cpu_us": master_us + children_us, "master_us": master_us, "children_us": children_us,
            "publish_rate": n / publish_s, "seconds": last - mark,
            "started": "memguard.started" in names, "errors": names.count("memguard.error"),
            "polls": stopped[-1].get("polls") if stopped else None,
            "actions": sum(1 for x in names if x in ("memguard.child_recycled", "memguard.task_killed"))}


def section_throughput(quick: bool, base_dir: Path, broker: str, n: int, rounds: int,
                       variants: Sequence[str]) -> None:
    arms = ["plain"] + [v for v in variants if v != "plain"]
    others = arms[1:]
    warm = max(100, n // 20)
    app = _driver_app(broker)
    say("## 1 and 5. Throughput of no-op tasks (prefork -c 2, Redis)\n")
    say(f"Method: for each round and each variant, flush Redis DB, publish {n:,} `bench.noop` messages "
        f"(app.send_task in a loop on one producer) *before* the worker starts, then start "
        f"`celery -A benchapp worker --pool=prefork -c 2 --without-gossip --without-mingle --without-heartbeat`, "
        f"wait until all {n:,} have run and stop it (SIGTERM, then SIGKILL to its process group). The producer is not "
        f"running during the measurement, so it cannot be the bottleneck. Each task counts itself in a "
        f"per-child mmap'd file (no Redis round trip, no result); tasks/s is measured inside the children, "
        f"from the completion of task #{warm:,} (after start-up and warm-up) to the last completion "
        f"(CLOCK_MONOTONIC, {n - warm:,} tasks). CPU µs/task is user+sys of the master and of the children over "
        f"the same span (sampled by the driver every 0.1 s), which is less sensitive to other load on the "
        f"machine than wall time. Variants ({', '.join(arms)}), interleaved round by round for {rounds} rounds: "
        f"plain = no MemGuard; memguard = MemGuard with soft 512MiB, hard 1GiB, metric uss, poll 1 s (other "
        f"settings default); maxmem = Celery's worker_max_memory_per_child = 10 GiB (never triggers; shows "
        f"its per-task check cost).\n")
    results: dict[str, list[dict[str, Any]]] = {arm: [] for arm in arms}
    for rnd in range(1, rounds + 1):
        for arm in arms:
            progress(f"throughput round {rnd}/{rounds}: {arm}")
            results[arm].append(_throughput_round(arm, rnd, n, warm, base_dir, broker, app))
    plain = results["plain"]
    rows = []
    for i in range(rounds):
        rows.append([str(i + 1)] + [fmt(results[a][i]["rate"], 0) for a in arms]
                    + [fmt(results[a][i]["rate"] / plain[i]["rate"], 3) for a in others])
    med = {a: median(r["rate"] for r in results[a]) for a in arms}
    rows.append(["median"] + [fmt(med[a], 0) for a in arms]
                + [fmt(median(results[a][i]["rate"] / plain[i]["rate"] for i in range(rounds)), 3) for a in others])
    say(table(["round"] + [f"{a} tasks/s" for a in arms] + [f"{a}/plain" for a in others], rows))
    say("")
    say("Ratio of medians: " + ", ".join(f"{a}/plain = {med[a] / med['plain']:.3f}" for a in others)
        + ". Goal: memguard/plain >= 0.99.\n")
    rows = []
    for i in range(rounds):
        rows.append([str(i + 1)] + [f"{fmt(results[a][i]['cpu_us'], 0)} ({fmt(results[a][i]['master_us'], 0)}"
                                    f" + {fmt(results[a][i]['children_us'], 0)})" for a in arms]
                    + [fmt(results[a][i]["cpu_us"] - plain[i]["cpu_us"], 0) for a in others])
    cmed = {a: {k: median(r[k] for r in results[a]) for k in ("cpu_us", "master_us", "children_us")} for a in arms}
    rows.append(["median"] + [f"{fmt(cmed[a]['cpu_us'], 0)} ({fmt(cmed[a]['master_us'], 0)} + "
                              f"{fmt(cmed[a]['children_us'], 0)})" for a in arms]
                + [fmt(median(results[a][i]["cpu_us"] - plain[i]["cpu_us"] for i in range(rounds)), 0)
                   for a in others])
    say(table(["round"] + [f"{a} CPU µs/task (master + children)" for a in arms]
              + [f"{a} - plain" for a in others], rows))
    say("")
    mg = results.get("memguard", [])
    if mg:
        say(f"Sanity: memguard.started logged in {sum(r['started'] for r in mg)}/{rounds} memguard rounds; "
            f"monitor polls per round (memguard.stopped): {[r['polls'] for r in mg]}; memguard.error events: "
            f"{sum(r['errors'] for r in mg)}; recycles/kills: {sum(r['actions'] for r in mg)}.")
    say(f"Publishing rate (not part of the measurement): "
        f"{fmt(median(r['publish_rate'] for a in arms for r in results[a]), 0)} msgs/s; measured span per "
        f"round: {fmt(median(r['seconds'] for a in arms for r in results[a]), 1)} s.\n")


# =================================================================================
# 4 and 5. hard-limit overshoot
# =================================================================================


def _read_record(path: Path) -> dict[str, float] | None:
    try:
        data = path.read_bytes()
    except OSError:
        return None
    if len(data) < RECORD.size:
        return None
    pid, peak, uss0, t0, t_cross, t_last, t_stop, chunks, grown = RECORD.unpack_from(data, 0)
    return {"pid": pid, "peak": peak, "uss0": uss0, "t0": t0, "t_cross": t_cross, "t_last": t_last,
            "t_stop": t_stop, "chunks": chunks, "grown": grown}


def _overshoot_arm(arm: str, base_dir: Path, broker: str, rates: Sequence[int], reps: int, cap_mib: int,
                   limit_mib: int) -> list[dict[str, Any]]:
    run_dir = base_dir / f"os-{arm}"
    run_dir.mkdir()
    flush_db(broker)
    if arm == "memguard":
        worker = Worker(tag="os-memguard", run_dir=run_dir, broker=broker, memguard=True,
                        conf={"memguard_hard_limit": f"{limit_mib}MiB"})
    else:
        worker = Worker(tag="os-maxmem", run_dir=run_dir, broker=broker,
                        conf={"worker_max_memory_per_child": limit_mib * 1024})
    app = _driver_app(broker)
    out: list[dict[str, Any]] = []
    worker.start()
    try:
        time.sleep(1.5)  # let the pool settle (the monitor's first looks at fresh children)
        for rate in rates:
            for rep in range(reps):
                progress(f"overshoot {arm} {rate} MiB/s rep {rep + 1}/{reps}")
                _wait_pool(worker)
                record = run_dir / f"grow-{rate}-{rep}.bin"
                chunk = 8 if rate >= 1000 else 4
                res = app.send_task("bench.grow", args=(rate, chunk, cap_mib, limit_mib * MiB, str(record)),
                                    queue="bench")
                t_sent = time.monotonic()
                try:
                    res.get(timeout=cap_mib / max(rate, 50) + 60, propagate=False)
                except Exception as exc:  # timeout: report it instead of hiding it
                    progress(f"{arm} {rate} MiB/s: {exc!r}")
                state = res.state
                error = type(res.result).__name__ if isinstance(res.result, BaseException) else ""
                rec = _read_record(record) or {}
                pid = int(rec.get("pid", 0))
                replaced = _wait_gone(worker, pid, 5.0)
                killed = [e for e in worker.memguard_events()
                          if e.get("event") == "memguard.task_killed" and e.get("task_id") == res.id]
                out.append({"arm": arm, "rate": rate, "rep": rep + 1, "state": state, "error": error,
                            "replaced": replaced, "killed": killed, "sent": t_sent, **rec})
                res.forget()
    finally:
        worker.stop()
    return out


def _wait_pool(worker: Worker, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while len(worker.pids()) < 1 + worker.concurrency and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)


def _wait_gone(worker: Worker, pid: int, timeout: float) -> bool:
    """Whether ``pid`` left the worker's pool within ``timeout`` seconds."""
    if not pid:
        return False
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pid not in worker.pids()[1:]:
            return True
        time.sleep(0.05)
    return False


def section_overshoot(quick: bool, base_dir: Path, broker: str) -> None:
    rates = (100, 400, 1000)
    reps = 1 if quick else 3
    cap_mib = 640 if quick else 1536
    limit_mib = 300
    say("## 4 and 5. Hard-limit overshoot\n")
    say(f"Method: a real `celery worker --pool=prefork -c 2` on Redis; a `bench.grow` task allocates 4 MiB "
        f"chunks (8 MiB at 1000 MiB/s; every page written with memset), paced with sleep to the target rate, up to {cap_mib} MiB in total. After "
        f"every chunk it records its peak USS estimate (USS at task start from psutil + RSS growth from "
        f"/proc/self/statm) and the moment the estimate first crossed the limit; a `finally` clause records "
        f"when the task stopped. memguard = MemGuard with memguard_hard_limit={limit_mib}MiB only (metric uss, "
        f"poll 1 s, kill_grace 2 s: defaults). maxmem = no MemGuard, Celery's "
        f"worker_max_memory_per_child={limit_mib * 1024} KiB ({limit_mib} MiB). {reps} run(s) per rate with memguard, "
        f"1 with maxmem, one worker per variant. 'crossing -> stop' is from the chunk that crossed the limit to the "
        f"task's `finally`; 'child replaced' means the child that ran the task left the pool afterwards. "
        f"Goal: peak / limit <= 1.10.\n")
    rows: list[list[str]] = []
    all_results: list[dict[str, Any]] = []
    for arm in ("memguard", "maxmem"):
        # worker_max_memory_per_child never acts during a task, so one run per rate shows it.
        all_results += _overshoot_arm(arm, base_dir, broker, rates, reps if arm == "memguard" else 1, cap_mib,
                                      limit_mib)
    for r in all_results:
        grown = r.get("grown", 0)
        span = r.get("t_last", 0) - r.get("t0", 0)
        achieved = grown / MiB / span if span > 0 else float("nan")
        peak = r.get("peak", 0)
        if r.get("t_cross"):
            if r.get("t_stop"):
                stop = f"{(r['t_stop'] - r['t_cross']) * 1000:,.0f} ms"
            else:
                stop = f"SIGKILL (last chunk +{(r['t_last'] - r['t_cross']) * 1000:,.0f} ms)"
            if r["state"] == "SUCCESS":
                stop = f"never: ran to the cap, {stop} after crossing"
        else:
            stop = "limit not crossed"
        seen = ", ".join(f"{e.get('mem_mib')} MiB/{e.get('signal')}" for e in r["killed"]) or "-"
        rows.append([r["arm"], str(r["rate"]), str(r["rep"]), fmt(achieved, 0), fmt(peak / MiB, 0),
                     fmt(peak / (limit_mib * MiB), 2), stop, seen,
                     r["state"] + (f" ({r['error']})" if r["error"] else ""),
                     "yes" if r["replaced"] else "no"])
    say(table(["variant", "target MiB/s", "run", "achieved MiB/s", "peak MiB", "peak/limit", "crossing -> stop",
               "memguard saw / signal", "task state", "child replaced"], rows))
    say("")
    mg = [r for r in all_results if r["arm"] == "memguard"]
    if mg:
        worst = max(r.get("peak", 0) for r in mg) / (limit_mib * MiB)
        say(f"Worst memguard peak/limit: {worst:.2f} (goal <= 1.10).\n")


# =================================================================================
# main
# =================================================================================


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sizes, a smoke test (< 2 minutes)")
    parser.add_argument("--only", action="append", choices=SECTIONS, help="run only this section (repeatable)")
    parser.add_argument("--broker", default="redis://127.0.0.1:6379/12", help="Redis URL with a dedicated DB")
    parser.add_argument("--tasks", type=int, default=None, help="no-op tasks per throughput round")
    parser.add_argument("--rounds", type=int, default=None, help="throughput rounds per variant")
    parser.add_argument("--variants", default="plain,memguard,maxmem",
                        help="throughput variants, comma-separated (plain is always included)")
    parser.add_argument("--keep", action="store_true", help="keep the run directory (worker logs, records)")
    parser.add_argument("--commit", help="benchmark celery_memguard as of this git commit (exported with "
                        "git archive into the run directory) instead of the working tree")
    args = parser.parse_args(argv)
    sections = args.only or list(SECTIONS)
    n = args.tasks or (3_000 if args.quick else 20_000)
    rounds = args.rounds or (2 if args.quick else 3)

    started = time.monotonic()
    base_dir = Path(tempfile.mkdtemp(prefix="memguard-bench-"))
    source = ""
    if args.commit:
        src = base_dir / "src"
        source = f" (commit {export_commit(args.commit, src)[:10]})"
        sys.path.insert(0, str(src))
        os.environ["PYTHONPATH"] = os.pathsep.join(p for p in [str(src), os.environ.get("PYTHONPATH", "")] if p)
    source = source_description() + source
    command = " ".join([".venv/bin/python", "benchmarks/bench_foundation.py",
                        *(sys.argv[1:] if argv is None else argv)])
    say(f"# celery-memguard foundation benchmark{' (--quick)' if args.quick else ''}\n")
    say(f"Command: `{command}`  ")
    say(f"celery_memguard: {source}  ")
    say(f"Date: {dt.datetime.now(dt.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}  ")
    say("Machine: " + "; ".join(f"{k} {v}" for k, v in machine().items()) + "\n")
    if ("throughput" in sections or "overshoot" in sections) and not redis_up(args.broker):
        say(f"Redis not reachable at {args.broker}; start it (scripts/services.sh) or pass --broker.")
        shutil.rmtree(base_dir, ignore_errors=True)
        return 2
    try:
        if "child" in sections:
            section_child(args.quick)
        if "poll" in sections:
            section_poll(args.quick)
        if "throughput" in sections:
            variants = [v.strip() for v in args.variants.split(",") if v.strip()]
            unknown = [v for v in variants if v not in ARMS]
            if unknown:
                parser.error(f"unknown variant(s) {unknown}; choose from {list(ARMS)}")
            section_throughput(args.quick, base_dir, args.broker, n, rounds, variants)
        if "overshoot" in sections:
            section_overshoot(args.quick, base_dir, args.broker)
    finally:
        if "throughput" in sections or "overshoot" in sections:
            try:
                flush_db(args.broker)
            except Exception:
                pass
        if args.keep:
            progress(f"run directory kept: {base_dir}")
        else:
            shutil.rmtree(base_dir, ignore_errors=True)
    say(f"Total time: {time.monotonic() - started:.0f} s; load average at the end: "
        f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
