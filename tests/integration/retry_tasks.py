"""Tasks for test_retry_interplay: how Celery's retry and ack options meet ``MemoryLimitExceeded``.

Loaded by the worker through Celery's ``imports`` setting (``conf={"imports": [MODULE]}``). Each
task grows by touched 8 MiB chunks up to ``max_mib`` (far above the test's hard limit), so MemGuard
stops it; they differ only in their task options.
"""

from __future__ import annotations

import time

from celery_memguard import MemoryLimitExceeded
from tests.integration.proj import _touched, app

CHUNK_MIB = 8


def _grow(max_mib: int) -> int:
    chunks = []
    while len(chunks) * CHUNK_MIB < max_mib:
        chunks.append(_touched(CHUNK_MIB * 1024 * 1024))
        time.sleep(0.01)
    return len(chunks) * CHUNK_MIB


@app.task(name="rt.autoretry", autoretry_for=(Exception,), max_retries=2, default_retry_delay=0)
def autoretry(max_mib: int) -> int:
    """``autoretry_for=(Exception,)``: MemoryLimitExceeded is an Exception, so it is retried."""
    return _grow(max_mib)


@app.task(name="rt.dont_autoretry", autoretry_for=(Exception,), dont_autoretry_for=(MemoryLimitExceeded,),
          max_retries=2, default_retry_delay=0)
def dont_autoretry(max_mib: int) -> int:
    """The same, with ``dont_autoretry_for=(MemoryLimitExceeded,)``: fails at the first stop."""
    return _grow(max_mib)


@app.task(name="rt.acks_late", acks_late=True)
def acks_late(max_mib: int) -> int:
    """``acks_late=True``: a stopped task is a failure, acknowledged like any other (not redelivered)."""
    return _grow(max_mib)
