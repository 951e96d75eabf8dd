"""A real worker inside a memory-limited cgroup: memguard relieves the pressure before the kernel's OOM killer acts.

The test creates a child cgroup (v1 memory controller) under this process's own memory
cgroup, with ``memory.limit_in_bytes`` = 600 MiB, and starts the worker inside it: the
harness's worker command is wrapped by a ``sh`` that writes its own pid to the cgroup's
``cgroup.procs`` and then ``exec``\\s celery, so the master and every child it forks are
charged there from the first byte. Inside, memguard's effective memory is the cgroup
limit (``memguard.started`` says ``effective_memory_mib`` 600), and
``memguard_min_available="25%"`` means 150 MiB.

Three children then run tasks that each keep 8 MiB for good: 90 of them would hold 720 MiB
on top of the worker's own baseline, well past the limit, so without memguard the kernel
OOM-kills a child (``benchmarks/bench_pressure.py`` shows it). With memguard the pressure
policy recycles the largest idle (else busy) child each time available memory drops
below 150 MiB: every task succeeds, the cgroup's ``oom_kill`` counter does not move, and
no ``memguard.child_lost`` blames an OOM.

Skipped, with the reason, where a memory cgroup cannot be created (no v1 memory
controller, not root, read-only cgroupfs). The cgroup is removed afterwards.
"""

from __future__ import annotations

import time
from typing import Iterator

import pytest

from .conftest import MemoryCgroup, StartWorker, make_memory_cgroup, wait_until
from .policy_tasks import MODULE

MiB = 1024 * 1024
LIMIT_MIB = 600
KEEP_MIB = 8
TASKS = 90
CONCURRENCY = 3


@pytest.fixture
def in_cgroup() -> Iterator[MemoryCgroup]:
    """A fresh v1 memory cgroup with a 600 MiB limit under this process's own; removed afterwards.

    Start the workers with ``wrapper=in_cgroup.join_command()`` to run them inside it.
    """
    yield from make_memory_cgroup(LIMIT_MIB * MiB, versions=(1,))


def test_memguard_relieves_cgroup_pressure_before_the_oom_killer(in_cgroup: MemoryCgroup,
                                                                 start_worker: StartWorker, redis_url: str) -> None:
    """In a 600 MiB cgroup, children keeping 720 MiB in all: pressure recycles, all tasks succeed, no OOM kill."""
    oom_before = in_cgroup.oom_kills()
    worker = start_worker(redis_url, concurrency=CONCURRENCY, wrapper=in_cgroup.join_command(), conf={
        "imports": [MODULE], "memguard_poll_interval": 0.1, "memguard_min_available": "25%",
    })
    members = in_cgroup.members()
    assert worker.proc.pid in members and worker.child_pids() <= members, (members, worker.child_pids())
    (started,) = worker.events("memguard.started")
    assert started["effective_memory_mib"] == LIMIT_MIB, started

    outcomes = worker.collect([worker.send("it.retain", KEEP_MIB, 0.3) for _ in range(TASKS)], timeout=180)

    states = [o.state for o in outcomes]
    assert states == ["SUCCESS"] * TASKS, [(o.state, o.traceback) for o in outcomes if o.state != "SUCCESS"]
    assert in_cgroup.oom_kills() == oom_before
    assert [e for e in worker.events("memguard.child_lost") if e["likely_oom"]] == []
    recycled = worker.events("memguard.child_recycled")
    assert recycled, worker.diagnostics()
    for event in recycled:
        assert event["reason"] == "pressure" and event["trigger"] == "available", event
        assert event["min_available"] == LIMIT_MIB * MiB // 4, event
    peak = in_cgroup.peak()
    assert peak < LIMIT_MIB * MiB, f"the cgroup reached its limit ({peak} bytes)"
    assert worker.events("memguard.error") == []
    wait_until(lambda: len(worker.child_pids()) == CONCURRENCY, 20, what="a full pool at the end")
    print(f"cgroup peak usage {peak / MiB:.0f} MiB of {LIMIT_MIB}; {len(recycled)} pressure recycles; "
          f"failcnt {in_cgroup.failcnt()}")


#: The second scenario: pressure below 250 MiB available, i.e. above 350 MiB used; the worker's own baseline is
#: ~110 MiB, each ``pt.hold`` keeps 150 MiB, so two holders cause pressure and losing one holder ends it.
RELIEF_MIN_AVAILABLE_MIB = 250
HOLD_MIB = 150
#: Seconds after the relieving recycle in which no further child may be recycled: past the policy's relief_settle
#: (1 s after the victim's exit, readings no longer credited with its memory) and one more system reading (0.5 s).
QUIET_AFTER_RELIEF = 2.5


def test_one_recycle_relieves_pressure_and_no_second_child_is_taken(in_cgroup: MemoryCgroup,
                                                                    start_worker: StartWorker, redis_url: str) -> None:
    """When recycling a holder ends the pressure, no second child is recycled (two episodes).

    The reading taken as the victim exits may not show its memory freed yet (the kernel uncharges it 15-60 ms
    after its ``/proc`` entry reads RSS 0): that reading must not cost a second child. Nor is a fresh child taken
    first: one that holds less than memguard_pressure_min_relief (32 MiB) beyond a freshly forked child cannot
    relieve anything, so the first recycle of each episode is a holder.
    """
    worker = start_worker(redis_url, concurrency=CONCURRENCY, wrapper=in_cgroup.join_command(), conf={
        "imports": [MODULE], "memguard_poll_interval": 0.1,
        "memguard_min_available": f"{RELIEF_MIN_AVAILABLE_MIB}MiB",
    })
    episodes: list[list[tuple[int, float, int]]] = []
    for _ in range(2):
        seen = len(worker.events("memguard.child_recycled"))
        for _hold in range(3):  # one holder at a time (idle once done) until memguard steps in
            (held,) = worker.collect([worker.send("pt.hold", HOLD_MIB)])
            assert held.state == "SUCCESS", held
            time.sleep(1.0)
            if len(worker.events("memguard.child_recycled")) > seen:
                break
        time.sleep(QUIET_AFTER_RELIEF)  # room for (wrong) further recycles
        episode = worker.events("memguard.child_recycled")[seen:]
        summary = "(pid, mem_mib, available, idle, ranking): " + repr(
            [(e["pid"], e["mem_mib"], e["available"], e["idle"], e["ranking"]) for e in episode])
        assert episode and episode[0]["mem_mib"] > HOLD_MIB, summary  # a holder first, never a fresh child
        assert episode[0]["lasting_relief"] is True, summary
        episodes.append([(e["pid"], e["mem_mib"], e["available"]) for e in episode])
    assert [e for e in worker.events("memguard.child_recycled") if e["reason"] != "pressure"] == []
    assert all(len(e) == 1 for e in episodes), f"recycles from the relieving one (pid, mem_mib, available): {episodes}"
    print(f"pressure recycles from the relieving one on, per episode (pid, mem_mib, available): {episodes}")
