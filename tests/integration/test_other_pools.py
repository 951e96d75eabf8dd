"""Pools MemGuard cannot police (solo, threads): the worker starts, warns once, and runs tasks."""

from __future__ import annotations

import pytest

from .conftest import StartWorker


@pytest.mark.parametrize("pool", ["solo", "threads"])
def test_unsupported_pool_starts_warns_once_and_runs_tasks(start_worker: StartWorker, redis_url: str,
                                                           pool: str) -> None:
    """With limits configured, a solo/threads worker logs one pool_unsupported warning and round-trips tasks."""
    worker = start_worker(redis_url, pool=pool, concurrency=2,
                          conf={"memguard_soft_limit": "100MiB", "memguard_hard_limit": "200MiB",
                                "memguard_poll_interval": 0.2})

    pids = {worker.ping() for _ in range(3)}

    assert pids == {worker.proc.pid}, "tasks should run inside the worker process itself"
    (started,) = worker.events("memguard.started")
    assert started["pool"] == pool  # the --pool name the operator typed
    (warning,) = worker.events("memguard.pool_unsupported")
    assert warning["level"] == "warning"
    assert warning["pool"] == pool
    assert "prefork" in warning["cannot"]
    assert worker.events("memguard.error") == []
