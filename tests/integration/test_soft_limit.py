"""Soft limit on a real prefork worker: a leaking child is recycled after its task, and no task is lost.

Each ``it.retain`` task keeps 20 MiB alive in its pool child, so every child crosses
``memguard_soft_limit`` (100 MiB USS) after a few tasks. MemGuard must let the task
finish, replace the child, and every task must still succeed exactly once.
"""

from __future__ import annotations

import time
from typing import Any

from .conftest import StartWorker, wait_until

SOFT_LIMIT_MIB = 100
POLL = 0.2
RETAIN_MIB = 20
TASKS = 16
CONCURRENCY = 2


def test_soft_limit_recycles_the_leaking_child_and_every_task_succeeds(start_worker: StartWorker,
                                                                       broker_url: str) -> None:
    """Children over the soft limit are recycled after their task; all tasks succeed and none is lost."""
    worker = start_worker(broker_url, concurrency=CONCURRENCY,
                          conf={"memguard_soft_limit": f"{SOFT_LIMIT_MIB}MiB", "memguard_poll_interval": POLL})

    results = [worker.send("it.retain", RETAIN_MIB, 0.05) for _ in range(TASKS)]
    outcomes = worker.collect(results, timeout=120)

    assert [o.state for o in outcomes] == ["SUCCESS"] * TASKS, [(o.state, o.traceback) for o in outcomes]
    assert len({o.task_id for o in outcomes}) == TASKS
    by_id: dict[str, dict[str, Any]] = {o.task_id: o.value for o in outcomes}
    ran_on = {v["pid"] for v in by_id.values()}

    # A child that crossed the limit with the last tasks is ordered out at the next poll (0.2 s): wait until
    # no order has come for five polls before taking the list (taken at once, a late order raced the pings).
    def no_new_order() -> bool:
        before = len(worker.events("memguard.child_recycled"))
        time.sleep(5 * POLL)
        return len(worker.events("memguard.child_recycled")) == before

    wait_until(no_new_order, 20, what="the recycle orders to stop")
    recycled = worker.events("memguard.child_recycled")
    assert recycled, worker.diagnostics()
    for event in recycled:
        assert event["reason"] == "soft_limit", event
        assert event["metric"] == "uss", event
        assert event["limit_mib"] == SOFT_LIMIT_MIB, event
        assert event["mem_mib"] >= SOFT_LIMIT_MIB, event  # rounded to 0.1 MiB
        assert event["pid"] in ran_on, (event, ran_on)
        if event.get("task_id"):
            # The task the child was running when the order came finished normally, on that child.
            assert by_id[event["task_id"]]["pid"] == event["pid"], event
    recycled_pids = {e["pid"] for e in recycled}
    assert len(recycled_pids) == len(recycled), "a child was ordered to recycle twice"

    # The recycled children leave the pool and fresh ones take their places.
    wait_until(lambda: not recycled_pids & worker.child_pids(), 20,
               what=f"recycled children {recycled_pids} to leave the pool")
    wait_until(lambda: len(worker.child_pids()) == CONCURRENCY, 20, what="the pool to be refilled")
    assert len(ran_on) > CONCURRENCY, "no replacement child ran any task"
    later = {worker.ping() for _ in range(2 * CONCURRENCY)}
    assert not later & recycled_pids
    assert later <= worker.child_pids()
    assert worker.events("memguard.error") == []
