"""How Celery's task options meet ``MemoryLimitExceeded`` on a real prefork worker (Redis), for docs/recipes/sentry.md.

* ``autoretry_for=(Exception,)``: ``MemoryLimitExceeded`` subclasses ``Exception``, so a task stopped at
  the hard limit is retried, and stopped again, until ``max_retries``; then it fails with
  ``MemoryLimitExceeded`` (one ``memguard.task_killed`` per attempt, same task id).
* ``dont_autoretry_for=(MemoryLimitExceeded,)`` next to it: one stop, one failure, no retry.
* ``acks_late=True``: the stop is a task failure; Celery acknowledges it (``task_acks_on_failure_or_timeout``
  is on by default), so the message is not redelivered: one stop, whatever the wait.
"""

from __future__ import annotations

import time

from .conftest import StartWorker, Worker

MODULE = "tests.integration.retry_tasks"
HARD_MIB = 150
GROW_MIB = 600
CONF = {"imports": [MODULE], "memguard_hard_limit": f"{HARD_MIB}MiB", "memguard_poll_interval": 0.1}


def kills_of(worker: Worker, task_id: str) -> list[dict]:
    return [e for e in worker.events("memguard.task_killed") if e["task_id"] == task_id]


def test_autoretry_retries_a_stopped_task_and_dont_autoretry_for_stops_that(start_worker: StartWorker,
                                                                             redis_url: str) -> None:
    worker = start_worker(redis_url, conf=CONF, concurrency=2)
    retried, not_retried, late = (worker.send("rt.autoretry", GROW_MIB), worker.send("rt.dont_autoretry", GROW_MIB),
                                  worker.send("rt.acks_late", GROW_MIB))
    outcomes = worker.collect([retried, not_retried, late], timeout=120)
    for outcome in outcomes:
        assert outcome.state == "FAILURE", outcome
        assert type(outcome.value).__name__ == "MemoryLimitExceeded", outcome
        assert outcome.value.limit == HARD_MIB * 1024 * 1024, outcome  # rebuilt with its fields from the result
    time.sleep(3)  # time for a redelivery or a further retry, were there one
    retried_kills = kills_of(worker, retried.id)
    assert len(retried_kills) == 3, retried_kills  # the first run and max_retries=2 retries, each stopped
    assert {e["signal"] for e in retried_kills} == {"MemoryLimitExceeded"}, retried_kills
    assert len({e["pid"] for e in retried_kills}) == 3, retried_kills  # each stop replaced its child
    assert len(kills_of(worker, not_retried.id)) == 1
    assert len(kills_of(worker, late.id)) == 1
    assert worker.ping() > 0  # the pool is whole again
