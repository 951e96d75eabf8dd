"""A master holding a large table shared copy-on-write with its children (celery #4125).

``MG_TABLE_MIB=300`` makes :mod:`tests.integration.proj` build a 300 MiB table at
import, in the worker's main process before the pool forks, so every child maps
it. A child's RSS counts those shared pages; its USS does not. MemGuard's soft
limit, set well below the master's RSS, must therefore never fire, while Celery's
own ``worker_max_memory_per_child`` (which looks at the child's RSS) recycles the
children after nearly every task: the reason MemGuard exists.
"""

from __future__ import annotations

import time

import psutil

from .conftest import StartWorker, Worker

MiB = 1024 * 1024
TABLE_MIB = 300
LIMIT_MIB = 150
TASKS = 50
CONTRAST_TASKS = 20
CONCURRENCY = 2


def _rss_mib(pid: int) -> float:
    """RSS of ``pid`` in MiB; 0 for a process that is gone or exiting (a child being recycled)."""
    try:
        return psutil.Process(pid).memory_info().rss / MiB
    except psutil.NoSuchProcess:
        return 0.0


def _assert_table_shared(worker: Worker) -> None:
    """The setup is what it claims: master and children all map the table (RSS above the limit)."""
    assert _rss_mib(worker.proc.pid) > TABLE_MIB
    children = [rss for rss in map(_rss_mib, worker.child_pids()) if rss > 0]
    assert children and all(rss > LIMIT_MIB for rss in children), f"children do not map the table: {children}"


def test_soft_limit_below_master_rss_does_not_recycle_children_sharing_its_table(start_worker: StartWorker,
                                                                                  redis_url: str) -> None:
    """With a 300 MiB table shared copy-on-write and a 150 MiB soft limit, 50 tasks run on the same children."""
    worker = start_worker(redis_url, concurrency=CONCURRENCY, table_mib=TABLE_MIB,
                          conf={"memguard_soft_limit": f"{LIMIT_MIB}MiB", "memguard_poll_interval": 0.2})
    children = worker.child_pids()
    assert len(children) == CONCURRENCY
    _assert_table_shared(worker)

    outcomes = worker.collect([worker.send("it.ping", 0.01) for _ in range(TASKS)])

    assert [o.state for o in outcomes] == ["SUCCESS"] * TASKS
    assert {o.value for o in outcomes} <= children
    time.sleep(1.0)  # several more polls (0.2 s apart) in which a wrong recycle order could still come
    assert worker.child_pids() == children
    worker.stop()  # then check that the monitor really was polling all along
    assert worker.events("memguard.child_recycled") == []
    assert worker.events("memguard.error") == []
    (stopped,) = worker.events("memguard.stopped")
    assert stopped["polls"] >= 5, stopped


def test_celery_max_memory_per_child_recycles_children_sharing_the_table(start_worker: StartWorker,
                                                                         redis_url: str) -> None:
    """Contrast: Celery's worker_max_memory_per_child below the master's RSS recycles after nearly every task."""
    worker = start_worker(redis_url, concurrency=CONCURRENCY, table_mib=TABLE_MIB,
                          conf={"worker_max_memory_per_child": LIMIT_MIB * 1024})  # KiB; no memguard limits
    _assert_table_shared(worker)

    outcomes = worker.collect([worker.send("it.ping", 0.01) for _ in range(CONTRAST_TASKS)])

    assert [o.state for o in outcomes] == ["SUCCESS"] * CONTRAST_TASKS
    pids = {o.value for o in outcomes}
    assert len(pids) >= CONTRAST_TASKS // 2, f"only {len(pids)} distinct children ran {CONTRAST_TASKS} tasks"
    assert worker.events("memguard.child_recycled") == []
