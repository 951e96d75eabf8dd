"""Pressure as an event (issue 12.2): a real worker in a cgroup v1 memory cgroup acts on a threshold
crossing within a fraction of its poll interval.

The worker polls every 5 s (``memguard_poll_interval=5``) inside a 600 MiB cgroup with
``memguard_min_available="250MiB"``. MemGuard registers cgroup v1 usage thresholds derived from that
level (``memguard.pressure_watch`` says which); a task then keeps memory in its child until the cgroup's
available memory, read as MemGuard reads it, is below 250 MiB, notes the wall-clock time of the crossing
and returns (the child idle, holding the memory). The kernel's notification wakes the monitor, which
polls at once and recycles that child: the ``memguard.child_recycled`` event comes well within 0.5 s of
the crossing, where polling alone could take up to 5 s.

With ``memguard_pressure_wake="adaptive"`` the same worker arms nothing, says why, and adaptive polling
alone still acts (later: the fall is seen only at the polls). Skipped, with the reason, where a memory
cgroup cannot be created (tests/harness/cgroups.py).
"""

from __future__ import annotations

import time
from datetime import datetime
from typing import Iterator

import pytest

from .conftest import MemoryCgroup, StartWorker, make_memory_cgroup
from .pressure_tasks import MODULE

MiB = 1024 * 1024
LIMIT_MIB = 600
LEVEL_MIB = 250
#: The reaction the kernel notification must achieve: a tenth of the 5 s poll interval.
WITHIN_S = 0.5


@pytest.fixture
def in_cgroup() -> Iterator[MemoryCgroup]:
    """A fresh v1 memory cgroup with a 600 MiB limit (v1: the usage thresholds are what is tested)."""
    yield from make_memory_cgroup(LIMIT_MIB * MiB, versions=(1,))


def _ts(event: dict[str, object]) -> float:
    return datetime.fromisoformat(str(event["ts"])).timestamp()


def test_threshold_crossing_wakes_the_monitor_within_a_fraction_of_the_interval(
        in_cgroup: MemoryCgroup, start_worker: StartWorker, broker_url: str) -> None:
    """Poll interval 5 s; the recycle of the child that crossed the threshold comes within 0.5 s of the crossing
    (on Redis and RabbitMQ: the wake is the master's, whatever the transport)."""
    worker = start_worker(broker_url, concurrency=2, wrapper=in_cgroup.join_command(), conf={
        "imports": [MODULE], "memguard_poll_interval": 5, "memguard_min_available": f"{LEVEL_MIB}MiB",
    })
    (watch,) = worker.events("memguard.pressure_watch")
    assert watch["wake"] == ["cgroup1-threshold"], watch
    assert watch["adaptive_poll"] is True and watch["fallback"] is None, watch
    assert LIMIT_MIB - LEVEL_MIB in watch["thresholds_mib"], watch
    reactions = []
    for _ in range(2):  # twice: the notifications keep working after a relief (crossings both ways)
        seen = len(worker.events("memguard.child_recycled"))
        (outcome,) = worker.collect([worker.send("pw.fill_below", LEVEL_MIB * MiB)], timeout=60)
        assert outcome.state == "SUCCESS" and outcome.value["crossed"], outcome
        recycled = worker.wait_for_event("memguard.child_recycled", 10,
                                         where=lambda e: e["pid"] == outcome.value["pid"])
        assert len(worker.events("memguard.child_recycled")) == seen + 1
        assert recycled["reason"] == "pressure" and recycled["trigger"] == "available", recycled
        reactions.append(_ts(recycled) - outcome.value["crossed"])
        time.sleep(1.5)  # the relief settles (relief_settle 1 s) before the next episode
    assert worker.events("memguard.error") == []
    print(f"crossing -> recycle: {[round(r * 1000) for r in reactions]} ms (poll interval 5 s)")
    assert all(r < WITHIN_S for r in reactions), reactions


def test_without_kernel_notifications_adaptive_polling_says_so_and_still_acts(
        in_cgroup: MemoryCgroup, start_worker: StartWorker, redis_url: str) -> None:
    """memguard_pressure_wake="adaptive": nothing armed, the reason logged, the pressure still relieved."""
    worker = start_worker(redis_url, concurrency=2, wrapper=in_cgroup.join_command(), conf={
        "imports": [MODULE], "memguard_poll_interval": 1, "memguard_min_available": f"{LEVEL_MIB}MiB",
        "memguard_pressure_wake": "adaptive",
    })
    (watch,) = worker.events("memguard.pressure_watch")
    assert watch["wake"] == [] and watch["adaptive_poll"] is True, watch
    assert watch["fallback"] == "memguard_pressure_wake='adaptive'", watch
    (outcome,) = worker.collect([worker.send("pw.fill_below", LEVEL_MIB * MiB, 4, 0.0)], timeout=60)
    assert outcome.state == "SUCCESS", outcome
    recycled = worker.wait_for_event("memguard.child_recycled", 10, where=lambda e: e["pid"] == outcome.value["pid"])
    print(f"adaptive polling: crossing -> recycle {(_ts(recycled) - outcome.value['crossed']) * 1000:.0f} ms")


def test_below_the_critical_floor_the_growing_task_is_stopped_before_the_oom_killer(
        in_cgroup: MemoryCgroup, start_worker: StartWorker, redis_url: str) -> None:
    """A task growing ~400 MiB/s towards 700 MiB in a 600 MiB cgroup: below memguard_critical_available its task is
    stopped (MemoryLimitExceeded, ``memguard.task_killed`` reason pressure, trigger critical, with task, memory and
    limit), the kernel's OOM killer never acts, and the other child's task is untouched."""
    oom_before = in_cgroup.oom_kills()
    worker = start_worker(redis_url, concurrency=2, wrapper=in_cgroup.join_command(), conf={
        "imports": [MODULE], "memguard_min_available": f"{LEVEL_MIB}MiB", "memguard_critical_available": "120MiB",
    })
    (watch,) = worker.events("memguard.pressure_watch")
    assert 600 - 120 in watch["thresholds_mib"], watch
    bystander = worker.send("pw.fill_below", 0, 4, 0.0, 20)  # keeps 20 MiB and returns
    grower = worker.send("pw.fill_below", 0, 4, 0.0, 700, 0.01)  # never "crosses" level 0: grows to 700 MiB
    by, grown = worker.collect([bystander, grower], timeout=60)
    assert by.state == "SUCCESS", by
    assert grown.state == "FAILURE" and "MemoryLimitExceeded" in (grown.traceback or ""), (grown.state, grown.value)
    (killed,) = worker.events("memguard.task_killed")
    assert (killed["reason"], killed["trigger"], killed["task"]) == ("pressure", "critical", "pw.fill_below"), killed
    assert killed["limit_mib"] == 120 and killed["mem_mib"] > 200 and killed["growth_mib_per_s"] > 0, killed
    assert killed["task_id"] == grower.id
    assert in_cgroup.oom_kills() == oom_before
    assert [e for e in worker.events("memguard.child_lost")] == []
    assert worker.events("memguard.error") == []
