"""Hard limit on a real prefork worker: a task growing at ~400 MiB/s is stopped, nothing else is touched.

Only ``memguard_hard_limit`` is set (default metric USS, default poll interval), as
a user would. The growing task (``it.grow``) measures its own peak USS
independently of MemGuard and writes it to a file after every 4 MiB chunk (and
once more, exactly, when it is interrupted), so the peak survives the task's
failure. The issue asks for that peak to stay within 110 % of the limit; it is
checked for a grower among 100 other tasks on a running worker, for growers that
start at the worst moment of a fixed poll schedule and at a sweep of other
moments, and for a grower already queued when the worker starts.
"""

from __future__ import annotations

import json
import math
import time
import warnings
from pathlib import Path
from typing import Any

import pytest

from celery_memguard import MemoryLimitExceeded

from .conftest import StartWorker, Worker, wait_until

MiB = 1024 * 1024
HARD_LIMIT_MIB = 300
PEAK_BOUND_MIB = 1.10 * HARD_LIMIT_MIB
GROWTH_MIB_S = 400
OTHER_TASKS = 100
CONCURRENCY = 3
#: memguard_poll_interval's default, and the engine's second look at children it sees for the first time.
DEFAULT_POLL_INTERVAL = 1.0
FIRST_LOOK = 0.1
#: A worst-case run proves something only if the grower started on time and grew fast enough to pass the
#: bound within one poll interval (a busy machine delays the start or slows the growth); else it is retried.
MIN_RATE = 0.85 * GROWTH_MIB_S
MAX_LATENESS = 0.1
ATTEMPTS = 3


def _settle(worker: Worker) -> None:
    """Wait until the monitor has made its first polls (see the startup test for why that matters)."""
    remaining = worker.started_at() + DEFAULT_POLL_INTERVAL + 2 * FIRST_LOOK - time.time()
    if remaining > 0:
        time.sleep(remaining)


def test_hard_limit_stops_the_growing_task_and_no_other(start_worker: StartWorker, broker_url: str,
                                                         tmp_path: Path) -> None:
    """The grower fails with MemoryLimitExceeded at <= 1.10x the limit; 100 concurrent tasks all succeed."""
    worker = start_worker(broker_url, concurrency=CONCURRENCY, conf={"memguard_hard_limit": f"{HARD_LIMIT_MIB}MiB"})
    _settle(worker)
    peak_file = tmp_path / "peak.json"

    grower = worker.send("it.grow", GROWTH_MIB_S, 3 * HARD_LIMIT_MIB, str(peak_file))
    others = [worker.send("it.ping", 0.01) for _ in range(OTHER_TASKS)]
    (grown,) = worker.collect([grower], timeout=60)
    rest = worker.collect(others, timeout=120)

    assert grown.state == "FAILURE", (grown.state, grown.value)
    assert grown.traceback and "MemoryLimitExceeded" in grown.traceback and "memguard" in grown.traceback
    assert isinstance(grown.value, MemoryLimitExceeded), repr(grown.value)
    assert "memguard_hard_limit" in str(grown.value) and f"{HARD_LIMIT_MIB}.0 MiB" in str(grown.value)
    assert [o.state for o in rest] == ["SUCCESS"] * OTHER_TASKS, [o.traceback for o in rest if o.state != "SUCCESS"]

    peak = json.loads(peak_file.read_text())
    assert peak.get("interrupted") and not peak["done"], peak
    killed = worker.events("memguard.task_killed")
    assert len(killed) == 1, killed
    (event,) = killed
    assert event["task"] == "it.grow"
    assert event["task_id"] == grower.id
    assert event["pid"] == peak["pid"]
    assert event["limit_mib"] == HARD_LIMIT_MIB
    assert event["mem_mib"] >= HARD_LIMIT_MIB  # mem_mib is rounded to 0.1 MiB
    assert event["metric"] == "uss"
    assert event["signal"] == "MemoryLimitExceeded", "the polite stop did not work; SIGKILL was needed"
    assert HARD_LIMIT_MIB < peak["peak_uss"] / MiB <= PEAK_BOUND_MIB, (
        f"own peak USS {peak['peak_uss'] / MiB:.1f} MiB; task_killed said {event['mem_mib']} MiB")

    # The stopped child is replaced; the rest of the pool was not disturbed.
    wait_until(lambda: peak["pid"] not in worker.child_pids() and len(worker.child_pids()) == CONCURRENCY, 20,
               what="the killed child to be replaced")
    assert worker.events("memguard.child_recycled") == []
    assert worker.events("memguard.error") == []


# -- worst cases ---------------------------------------------------------------


def _run(worker: Worker, result: Any, peak_file: Path, label: str, due: float) -> dict[str, Any]:
    """Wait for one grower to be killed; return its own peak, MemGuard's reading, its rate and start lateness."""
    (grown,) = worker.collect([result], timeout=60)
    assert grown.state == "FAILURE" and isinstance(grown.value, MemoryLimitExceeded), grown
    peak = json.loads(peak_file.read_text())
    event = worker.wait_for_event("memguard.task_killed", where=lambda e: e["task_id"] == grown.task_id)
    peak_mib = peak["peak_uss"] / MiB
    return {"run": label, "peak_mib": round(peak_mib, 1), "memguard_mib": event["mem_mib"],
            "rate_mib_s": round((peak_mib - peak["uss0"] / MiB) / max(peak["growth_s"], 1e-3)),
            "late_s": round(peak["started"] - due, 3)}


def _counts(run: dict[str, Any]) -> bool:
    """Whether a worst-case run settles the question: it broke the bound, or it really was the worst case."""
    return bool(run["peak_mib"] > PEAK_BOUND_MIB or (
        run["rate_mib_s"] >= MIN_RATE and -0.02 <= run["late_s"] <= MAX_LATENESS))


def _grow_at(worker: Worker, at: float, peak_file: Path, label: str) -> dict[str, Any]:
    """Run one grower that starts at wall-clock time ``at`` (an ETA) to its kill."""
    result = worker.send_at(at, "it.grow", GROWTH_MIB_S, 3 * HARD_LIMIT_MIB, str(peak_file))
    return _run(worker, result, peak_file, label, at)


def _after_a_fixed_schedule_poll(worker: Worker) -> float | None:
    """A wall-clock time just after a poll of a fixed 1 s schedule, or None when it cannot be known.

    A monitor that polls idle children at a fixed ``poll_interval`` (from
    ``memguard.started`` at S: S+1.0, S+1.1 for its first look at the children, then
    every second) first sees a task that starts right after such a poll at the next
    one, a whole interval later. The schedule is predictable only if the readiness
    ping was over before the first poll.
    """
    started = worker.started_at()
    if time.time() > started + 0.8 * DEFAULT_POLL_INTERVAL:
        return None
    first_grid_poll = started + DEFAULT_POLL_INTERVAL + FIRST_LOOK
    k = max(0, math.ceil(time.time() + 0.3 - first_grid_poll))
    return first_grid_poll + k * DEFAULT_POLL_INTERVAL + 0.05


def test_killed_child_peak_stays_within_110_percent_of_the_hard_limit(start_worker: StartWorker, broker_url: str,
                                                                       tmp_path: Path) -> None:
    """Growers starting right after a poll of idle children, and at a sweep of moments, peak <= 1.10x the limit.

    The first grower starts just after the poll a fixed 1 s schedule would make (the
    worst case for a fixed interval; retried on a fresh worker when the machine was too
    busy for the run to count), then a sweep starts at different moments after a kill.
    """
    runs: list[dict[str, Any]] = []
    for attempt in range(ATTEMPTS):
        worker = start_worker(broker_url, concurrency=2, conf={"memguard_hard_limit": f"{HARD_LIMIT_MIB}MiB"})
        at = _after_a_fixed_schedule_poll(worker)
        if at is not None:
            runs.append(_grow_at(worker, at, tmp_path / f"aligned-{attempt}.json", "after-poll"))
            if _counts(runs[-1]):
                break
        if attempt + 1 < ATTEMPTS:
            worker.stop()
    else:
        warnings.warn(f"machine too busy: no grower started right after a poll at ~{GROWTH_MIB_S} MiB/s: {runs}",
                      stacklevel=1)
    for n, countdown in enumerate((0.0, 0.25, 0.5, 0.75)):
        runs.append(_grow_at(worker, time.time() + countdown, tmp_path / f"sweep-{n}.json", f"+{countdown}s"))

    worst = max(run["peak_mib"] for run in runs)
    assert worst <= PEAK_BOUND_MIB, f"own peak USS above 1.10 x {HARD_LIMIT_MIB} MiB: {runs}"


def test_grower_queued_before_the_worker_starts_peaks_within_110_percent(start_worker: StartWorker,
                                                                         broker_url: str, tmp_path: Path) -> None:
    """A grower already in the queue when the worker starts is stopped at <= 1.10x the limit."""
    runs: list[dict[str, Any]] = []
    for attempt in range(ATTEMPTS):
        worker = start_worker(broker_url, concurrency=2, conf={"memguard_hard_limit": f"{HARD_LIMIT_MIB}MiB"},
                              ready=False)
        peak_file = tmp_path / f"startup-{attempt}.json"
        result = worker.send("it.grow", GROWTH_MIB_S, 3 * HARD_LIMIT_MIB, str(peak_file))
        worker.wait_ready()
        # "late" is measured from the monitor's start: the grower should start within MAX_LATENESS of it.
        runs.append(_run(worker, result, peak_file, "queued-before-start", worker.started_at()))
        if _counts(runs[-1]):
            break
        worker.stop()
    else:
        pytest.skip(f"machine too busy: no grower started with the worker at ~{GROWTH_MIB_S} MiB/s: {runs}")

    assert runs[-1]["peak_mib"] <= PEAK_BOUND_MIB, f"own peak USS above 1.10 x {HARD_LIMIT_MIB} MiB: {runs}"
