"""The demo's Celery app: kombu's filesystem transport (no broker server) and a file result backend.

The transport is kombu's with whole-file message writes (:mod:`atomic_filesystem`: kombu's own can
hand a consumer a message file before it is written, kombu#1551).

Tasks: ``work`` (well-behaved), ``leaky`` (keeps 8 MiB per call in a module-level list, so its child
grows until memguard's soft limit recycles it) and ``runaway`` (grows ~400 MiB/s until memguard's hard
limit stops it with MemoryLimitExceeded).
"""

from __future__ import annotations

import os
import time

from celery import Celery

from celery_memguard import MemGuard

DATA = os.environ.get("MEMGUARD_DEMO_DIR", "/tmp/memguard-demo")

app = Celery("demoapp")
app.conf.update(
    broker_url="filesystem://",
    broker_transport="atomic_filesystem:Transport",
    broker_transport_options={
        "data_folder_in": f"{DATA}/broker",
        "data_folder_out": f"{DATA}/broker",
        "processed_folder": f"{DATA}/processed",
        "control_folder": f"{DATA}/control",
        "store_processed": False,
    },
    result_backend=f"file://{DATA}/results",
    broker_connection_retry_on_startup=True,
    worker_prefetch_multiplier=1,
    task_acks_late=True,
    memguard_soft_limit="150MiB",
    memguard_hard_limit="300MiB",
    memguard_poll_interval=0.2,
    memguard_sample_interval=0.25,  # a memguard.sample every 0.25 s (default 60 s): timelines for the HTML report
    memguard_log_format=os.environ.get("MEMGUARD_DEMO_FORMAT", "json"),
    memguard_log_file=f"{DATA}/events.log",
)
app.steps["worker"].add(MemGuard)

_kept: list[bytearray] = []


def _touched(size: int) -> bytearray:
    block = bytearray(size)
    for i in range(0, size, 4096):
        block[i] = 1
    return block


@app.task
def work(n: int) -> int:
    """A well-behaved task."""
    return sum(range(n))


@app.task
def leaky() -> dict[str, int]:
    """Keeps 8 MiB per call: a leak."""
    _kept.append(_touched(8 << 20))
    return {"pid": os.getpid(), "kept_mib": 8 * len(_kept)}


@app.task
def runaway(rate_mib_s: int = 400, seconds: float = 5.0) -> int:
    """Grows at ``rate_mib_s`` until stopped (it would reach ~2 GiB)."""
    chunks = []
    start = time.monotonic()
    while time.monotonic() - start < seconds:
        chunks.append(_touched(4 << 20))
        time.sleep(4 / rate_mib_s / 2)
    return len(chunks)

