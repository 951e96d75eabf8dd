"""Dry run on a real prefork worker: MemGuard logs what it would do and does nothing.

With ``memguard_dry_run=True`` and both limits set, a child that retains memory
above the soft limit and a task that grows to 1.5 x the hard limit produce
``memguard.would_recycle`` and ``memguard.would_kill``, never ``child_recycled``
or ``task_killed``; the task succeeds and the pool keeps its children.
"""

from __future__ import annotations

import json
from pathlib import Path

from .conftest import StartWorker

MiB = 1024 * 1024
SOFT_LIMIT_MIB = 100
HARD_LIMIT_MIB = 200
CONCURRENCY = 2


def test_dry_run_logs_would_recycle_and_would_kill_and_changes_nothing(start_worker: StartWorker, redis_url: str,
                                                                       tmp_path: Path) -> None:
    """Both limits crossed in dry run: would_* events only, every task succeeds, the same children remain."""
    worker = start_worker(redis_url, concurrency=CONCURRENCY, conf={
        "memguard_dry_run": True,
        "memguard_soft_limit": f"{SOFT_LIMIT_MIB}MiB",
        "memguard_hard_limit": f"{HARD_LIMIT_MIB}MiB",
        "memguard_poll_interval": 0.2,
    })
    children = worker.child_pids()
    assert worker.events("memguard.started")[0]["dry_run"] is True

    # A child that keeps 130 MiB: above the soft limit, below the hard one.
    (kept,) = worker.collect([worker.send("it.retain", 130)])
    assert kept.state == "SUCCESS"
    would_recycle = worker.wait_for_event("memguard.would_recycle", where=lambda e: e["pid"] == kept.value["pid"])
    assert would_recycle["reason"] == "soft_limit" and would_recycle["limit_mib"] == SOFT_LIMIT_MIB

    # A task that grows to 1.5 x the hard limit, holds it briefly, and returns.
    peak_file = tmp_path / "peak.json"
    (grown,) = worker.collect([worker.send("it.grow", 200, int(1.5 * HARD_LIMIT_MIB), str(peak_file), hold=0.3)])
    assert grown.state == "SUCCESS", grown.traceback
    assert grown.value["grown_mib"] == int(1.5 * HARD_LIMIT_MIB)
    assert grown.value["peak_uss"] > HARD_LIMIT_MIB * MiB
    would_kill = worker.wait_for_event("memguard.would_kill", where=lambda e: e["task_id"] == grown.task_id)
    assert would_kill["task"] == "it.grow"
    assert would_kill["pid"] == grown.value["pid"] == json.loads(peak_file.read_text())["pid"]
    assert would_kill["limit_mib"] == HARD_LIMIT_MIB and would_kill["mem_mib"] >= HARD_LIMIT_MIB

    pings = worker.collect([worker.send("it.ping") for _ in range(10)])
    assert [o.state for o in pings] == ["SUCCESS"] * 10
    assert {o.value for o in pings} <= children
    assert worker.child_pids() == children
    assert worker.events("memguard.child_recycled") == []
    assert worker.events("memguard.task_killed") == []
    assert worker.events("memguard.error") == []


def test_dry_run_would_kill_once_per_child_and_task(start_worker: StartWorker, redis_url: str,
                                                    tmp_path: Path) -> None:
    """A task held above the hard limit for several kill_grace periods: one would_kill (MemoryLimitExceeded),
    not a second one (SIGKILL) when the engine escalates the task nothing stopped."""
    worker = start_worker(redis_url, concurrency=CONCURRENCY, conf={
        "memguard_dry_run": True,
        "memguard_hard_limit": f"{HARD_LIMIT_MIB}MiB",
        "memguard_kill_grace": 0.5,
        "memguard_poll_interval": 0.2,
    })
    peak_file = tmp_path / "peak.json"
    (grown,) = worker.collect([worker.send("it.grow", 200, int(1.5 * HARD_LIMIT_MIB), str(peak_file), hold=3.0)])
    assert grown.state == "SUCCESS", grown.traceback
    worker.wait_for_event("memguard.would_kill", where=lambda e: e["task_id"] == grown.task_id)
    pings = worker.collect([worker.send("it.ping") for _ in range(4)])  # a few more polls after the task
    assert [o.state for o in pings] == ["SUCCESS"] * 4
    mine = [e for e in worker.events("memguard.would_kill") if e["task_id"] == grown.task_id]
    assert [e["signal"] for e in mine] == ["MemoryLimitExceeded"], mine
    assert worker.events("memguard.task_killed") == []
