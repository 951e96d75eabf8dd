"""Fail-open: MemGuard never masks or alters a task's own outcome."""

from __future__ import annotations

import uuid

from .conftest import StartWorker


def test_task_exception_is_reported_unchanged(start_worker: StartWorker, redis_url: str) -> None:
    """A task raising its own exception fails with that exception; the child is kept and keeps working."""
    worker = start_worker(redis_url, concurrency=2,
                          conf={"memguard_soft_limit": "200MiB", "memguard_hard_limit": "400MiB",
                                "memguard_poll_interval": 0.2})
    children = worker.child_pids()
    marker = uuid.uuid4().hex

    (failed,) = worker.collect([worker.send("it.boom", marker)])

    assert failed.state == "FAILURE"
    assert type(failed.value).__name__ == "TaskFailedOnPurpose"
    assert marker in str(failed.value)
    assert failed.traceback and "TaskFailedOnPurpose" in failed.traceback
    assert "MemoryLimitExceeded" not in failed.traceback and "memguard" not in failed.traceback
    assert worker.ping() in children
    assert worker.child_pids() == children
    assert worker.events("memguard.error") == []
    assert worker.events("memguard.child_recycled") == worker.events("memguard.task_killed") == []
