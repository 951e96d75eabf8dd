"""An idle child over the soft limit leaves at once on a polling transport, also a replacement child.

On transports without an event loop (kombu's filesystem transport) billiard's pool hands jobs out
through one pipe shared by every child behind a read lock: one idle child holds the lock and waits in
the pipe read, the others wait for the lock. A child that finishes a leaking task while another child
is idle therefore waits *for the lock*. Before the fix only a child waiting in the read could leave,
so such a child stayed above the soft limit until the other child took a job (with no traffic:
forever), on every Python. Leaving while waiting for the lock loses nothing: no byte has been read.

The scenario first replaces the original children (so the leak runs on a child billiard forked from
its supervisor thread, the case CPython 3.13.0 treats differently), waits until both children are
replacements under the limit, then runs one task that keeps 120 MiB (over the 100 MiB soft limit) and sends nothing else: the child
must be recycled and leave on its own.
"""

from __future__ import annotations

from pathlib import Path

import psutil
import pytest

from tests.harness import filesystem_broker

from .conftest import StartWorker, wait_until

pytestmark = pytest.mark.smoke

SOFT_LIMIT_MIB = 100
POLL = 0.5
CONCURRENCY = 2


def _uss_mib(pid: int) -> float:
    try:
        return float(psutil.Process(pid).memory_full_info().uss) / (1024 * 1024)
    except psutil.Error:
        return float("inf")  # gone (or going): not a child to keep


def test_an_idle_replacement_child_over_the_soft_limit_leaves_without_more_traffic(
        start_worker: StartWorker, tmp_path: Path) -> None:
    broker, extra = filesystem_broker(tmp_path / "fs-broker")
    worker = start_worker(broker, concurrency=CONCURRENCY, conf={
        **extra, "memguard_soft_limit": f"{SOFT_LIMIT_MIB}MiB", "memguard_poll_interval": POLL,
    })
    originals = worker.child_pids()

    def replacements_under_the_limit() -> bool:
        live = worker.child_pids()
        if live & originals:  # 60 MiB twice puts a child over the limit: the originals are recycled
            outcomes = worker.collect([worker.send("it.retain", 60, 0.3) for _ in range(CONCURRENCY)], 60)
            assert [o.state for o in outcomes] == ["SUCCESS"] * CONCURRENCY, [o.traceback for o in outcomes]
            return False
        # A replacement that ran one of those leaks (~85 MiB) stays, one that ran two is recycled first.
        return len(live) == CONCURRENCY and all(_uss_mib(pid) < 0.9 * SOFT_LIMIT_MIB for pid in live)

    wait_until(replacements_under_the_limit, 120, interval=0.2, what="two replacement children under the limit")
    fresh = worker.child_pids()
    assert worker.events("memguard.error") == []

    (outcome,) = worker.collect([worker.send("it.retain", 120, 0.0)], 60)
    assert outcome.state == "SUCCESS", outcome
    leaker = outcome.value["pid"]
    assert leaker in fresh, (leaker, fresh)

    recycled = worker.wait_for_event("memguard.child_recycled", 30, where=lambda e: e["pid"] == leaker)
    assert recycled["reason"] == "soft_limit" and recycled["mem_mib"] >= SOFT_LIMIT_MIB, recycled
    # No task is sent until it has gone: it must leave while idle (the master repeats its order each poll).
    wait_until(lambda: leaker not in worker.child_pids(), 20 * POLL,
               what=f"the idle child {leaker} over the soft limit to leave\n{worker.diagnostics()}")
    wait_until(lambda: len(worker.child_pids()) == CONCURRENCY, 30, what="its replacement")
    assert worker.ping() in worker.child_pids()
    assert worker.events("memguard.error") == []
