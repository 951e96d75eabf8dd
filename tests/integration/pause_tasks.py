"""Tasks for the intake-pause integration tests (loaded through Celery's ``imports`` setting).

* ``pz.big``: allocate ``mib`` MiB (every page touched), hold it ``hold`` seconds, free it: the pool's
  total goes above ``memguard_pause_pool_above`` while it runs, and back below when it returns.
* ``pz.record``: count this execution of the task id in Redis (``pz-runs:<id>``) and note the wall-clock
  time it started (``pz-start:<id>``), then stay busy ``sleep`` seconds: the test finds tasks run twice
  or started during a pause.
"""

from __future__ import annotations

import os
import time

from tests.integration.proj import app

MODULE = "tests.integration.pause_tasks"
MiB = 1024 * 1024
PAGE = 4096
_redis = None


def _client():  # type: ignore[no-untyped-def]
    global _redis
    if _redis is None:
        import redis

        _redis = redis.Redis.from_url(app.conf.result_backend)
    return _redis


@app.task(name="pz.big")
def big(mib: int, hold: float) -> int:
    buf = bytearray(mib * MiB)
    buf[::PAGE] = b"\x01" * len(range(0, len(buf), PAGE))
    time.sleep(hold)
    del buf
    return os.getpid()


@app.task(name="pz.record", bind=True)
def record(self, sleep: float = 0.0) -> int:  # type: ignore[no-untyped-def]
    client = _client()
    client.incr(f"pz-runs:{self.request.id}")
    client.set(f"pz-start:{self.request.id}", repr(time.time()))
    time.sleep(sleep)
    return os.getpid()


def runs(backend: str, task_ids: list[str]) -> list[int]:
    """How many times each task ran (test side)."""
    import redis

    client = redis.Redis.from_url(backend)
    try:
        return [int(v or 0) for v in client.mget([f"pz-runs:{t}" for t in task_ids])]
    finally:
        client.close()


def starts(backend: str, task_ids: list[str]) -> list[float | None]:
    """When each task started (wall clock; None: never)."""
    import redis

    client = redis.Redis.from_url(backend)
    try:
        return [None if v is None else float(v) for v in client.mget([f"pz-start:{t}" for t in task_ids])]
    finally:
        client.close()
