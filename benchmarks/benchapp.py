"""The Celery app the benchmark's workers run (``celery -A benchapp worker`` from ``benchmarks/``).

One module, configured by environment variables the driver
(:mod:`bench_foundation`) sets per worker, so every variant (plain, MemGuard,
``worker_max_memory_per_child``) runs the very same task code:

* ``BENCH_BROKER``: broker and result backend URL (a dedicated Redis DB).
* ``BENCH_DIR``: the run directory; tasks write their counters/records there.
* ``BENCH_CONF``: JSON object ``{"memguard": bool, "conf": {...}}``; ``conf`` is
  merged into ``app.conf`` (``memguard_*`` keys, ``worker_max_memory_per_child``).
* ``BENCH_READY``: a file the worker master creates once it is ready.

Tasks:

* ``bench.noop(mark)``: does nothing but count itself in a per-child shared
  file (an 8-byte mmap increment and one ``time.monotonic()``, well under 1 µs),
  so completions are counted exactly without a result backend or a Redis round
  trip per task. ``mark=True`` on one task records when the warm-up ended.
* ``bench.grow(...)``: allocates memory at a given rate (pages touched) and
  records, after every chunk, its own peak USS estimate in a small binary file,
  so the driver knows how far the task got even when it is stopped or killed.
* ``bench.whoami()``: returns the child's pid.
"""

from __future__ import annotations

import json
import mmap
import os
import time
from typing import Any

from celery import Celery, signals

from _common import COUNTER, RECORD

MiB = 1024 * 1024


BROKER = os.environ.get("BENCH_BROKER", "redis://127.0.0.1:6379/12")
RUN_DIR = os.environ.get("BENCH_DIR", "/tmp")
_SETTINGS: dict[str, Any] = json.loads(os.environ.get("BENCH_CONF", "{}") or "{}")

app = Celery("benchapp", broker=BROKER, backend=BROKER)
app.conf.update(
    task_default_queue="bench",
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
    result_expires=600,
)
app.conf.update(_SETTINGS.get("conf", {}))
if _SETTINGS.get("memguard"):
    from celery_memguard import MemGuard

    app.steps["worker"].add(MemGuard)


@signals.worker_ready.connect
def _ready(**_: Any) -> None:
    path = os.environ.get("BENCH_READY")
    if path:
        with open(path, "w") as f:
            f.write(str(os.getpid()))


# -- no-op with an exact, nearly free completion counter ------------------------

_counter_pid = 0
_counter_map: mmap.mmap | None = None
_count = 0
_mark = 0.0


def _counter() -> mmap.mmap:
    global _counter_pid, _counter_map, _count, _mark
    pid = os.getpid()
    if _counter_map is None or _counter_pid != pid:
        fd = os.open(os.path.join(RUN_DIR, f"count.{pid}"), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            os.ftruncate(fd, COUNTER.size)
            _counter_map = mmap.mmap(fd, COUNTER.size)
        finally:
            os.close(fd)
        _counter_pid, _count, _mark = pid, 0, 0.0
    return _counter_map


@app.task(name="bench.noop", ignore_result=True)
def noop(mark: bool = False) -> None:
    global _count, _mark
    m = _counter()
    _count += 1
    now = time.monotonic()
    if mark:
        _mark = now
    COUNTER.pack_into(m, 0, _count, now, _mark)


# -- a task that grows at a given rate ------------------------------------------


@app.task(name="bench.grow")
def grow(rate_mib_s: float, chunk_mib: int, cap_mib: int, limit_bytes: int, record: str) -> dict[str, Any]:
    """Grow by ``chunk_mib`` MiB chunks at ``rate_mib_s`` (0 = as fast as possible) up to ``cap_mib``.

    After every chunk the task writes its peak USS estimate (USS at start from
    psutil plus the RSS growth since, from /proc/self/statm) to ``record``; a
    ``finally`` clause records when the task stopped (not reached on SIGKILL).
    """
    import psutil

    pid = os.getpid()
    page = os.sysconf("SC_PAGE_SIZE")
    statm = os.open("/proc/self/statm", os.O_RDONLY)
    out = os.open(record, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)

    def rss() -> int:
        return int(os.pread(statm, 128, 0).split(None, 2)[1]) * page

    uss0 = int(psutil.Process().memory_full_info().uss)
    rss0 = rss()
    chunk = chunk_mib * MiB
    hold: list[bytes] = []
    peak, t_cross, t_last, chunks = uss0, 0.0, 0.0, 0
    t0 = time.monotonic()

    def write(t_stop: float) -> None:
        os.pwrite(out, RECORD.pack(pid, peak, uss0, t0, t_cross, t_last, t_stop, chunks, chunks * chunk), 0)

    write(0.0)
    try:
        for i in range(max(1, cap_mib // chunk_mib)):
            hold.append(b"\x01" * chunk)  # memset: every page touched
            t_last = time.monotonic()
            est = uss0 + rss() - rss0
            chunks = i + 1
            if est > peak:
                peak = est
            if not t_cross and est > limit_bytes:
                t_cross = t_last
            write(0.0)
            if rate_mib_s > 0:
                delay = t0 + (i + 1) * chunk_mib / rate_mib_s - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
        return {"pid": pid, "peak": peak, "chunks": chunks}
    finally:
        write(time.monotonic())
        hold.clear()
        os.close(statm)
        os.close(out)


@app.task(name="bench.whoami")
def whoami() -> int:
    return os.getpid()
