"""The Celery app every integration-test worker loads: ``celery -A tests.integration.proj worker``.

One module serves every scenario; the harness configures it through environment
variables (see :func:`make_app`), and the test process builds an identical
*client* app with :func:`make_app` on the same mapping to send tasks and read
results:

* ``MG_BROKER`` / ``MG_BACKEND``: broker and result-backend URLs.
* ``MG_QUEUE``: the test's own queue (unique per test, so tests never see each
  other's messages).
* ``MG_CONF``: a JSON object merged into ``app.conf`` (``memguard_*`` keys, Celery's
  ``worker_max_memory_per_child``, ...). Values go in unchanged, so a bad value
  such as ``"lots"`` reaches MemGuard's validation exactly as a user would write it.
* ``MG_MEMGUARD``: ``"0"`` leaves the MemGuard bootstep out (default ``"1"``).
* ``MG_NAMESPACED_CONF``: a JSON object loaded the way Django projects configure Celery,
  ``app.config_from_object(settings, namespace="CELERY")`` (keys like
  ``CELERY_MEMGUARD_SOFT_LIMIT``), before ``MG_CONF``.
* ``MG_LOGGING_FILE``: attach a :class:`logging.FileHandler` writing ``%(message)s`` to that
  file to the ``celery_memguard`` logger, as a project's own logging configuration would
  (for ``memguard_log_target = "logging"``/``"both"``); ``MG_LOGGING_PREFIX`` is put before
  each message (a handler's own format).
* ``MG_TABLE_MIB``: build a table of that many MiB at import, in the worker's main
  process before the pool forks, so every child shares it copy-on-write (the
  situation of celery #4125).

Tasks return the pool child's pid so tests can tell which child ran what, and
which children were replaced.
"""

from __future__ import annotations

import json
import logging
import os
import time
from typing import Any, Mapping

from celery import Celery

from celery_memguard import MemGuard

MiB = 1024 * 1024
PAGE = 4096

#: Memory retained by ``it.retain`` across tasks, per pool child (a deliberate leak).
RETAINED: list[bytearray] = []

#: The copy-on-write table built in the master at import (see ``MG_TABLE_MIB``).
TABLE: bytearray | None = None


class TaskFailedOnPurpose(Exception):
    """Raised by ``it.boom``: a task's own error, which MemGuard must report unchanged."""


def _touched(size: int) -> bytearray:
    """A bytearray of ``size`` bytes with every page written, so it is resident and private."""
    buf = bytearray(size)
    buf[::PAGE] = b"\x01" * len(range(0, size, PAGE))
    return buf


def _statm_rss() -> int:
    with open("/proc/self/statm", "rb") as f:
        return int(f.read().split()[1]) * PAGE


def _uss() -> int:
    import psutil

    return int(psutil.Process().memory_full_info().uss)


def _write_json(path: str, data: dict[str, Any]) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(data, f)
    os.replace(tmp, path)


def _grow_loop(chunks: list[bytearray], record: dict[str, Any], peak_file: str, rate_mib_s: float, max_mib: int,
               chunk_mib: int, start: float, uss0: int, rss0: int) -> None:
    """``it.grow``'s growth: ``chunk_mib`` MiB at a time at ``rate_mib_s``, the peak written after every chunk."""
    chunk = chunk_mib * MiB
    while len(chunks) * chunk_mib < max_mib:
        chunks.append(_touched(chunk))
        record["peak_uss"] = max(record["peak_uss"], uss0 + _statm_rss() - rss0)
        record["chunks"] = len(chunks)
        _write_json(peak_file, record)
        pause = start + len(chunks) * chunk_mib / rate_mib_s - time.monotonic()
        if pause > 0:
            time.sleep(pause)


def make_app(env: Mapping[str, str]) -> Celery:
    """The app configured from ``env`` (worker side: ``os.environ``; client side: the same mapping)."""
    app = Celery(
        "memguard_it",
        broker=env.get("MG_BROKER", "redis://127.0.0.1:6379/13"),
        backend=env.get("MG_BACKEND", "redis://127.0.0.1:6379/14"),
    )
    if env.get("MG_NAMESPACED_CONF"):
        settings = type("DjangoSettings", (), json.loads(env["MG_NAMESPACED_CONF"]))
        app.config_from_object(settings, namespace="CELERY")
    app.conf.update(
        task_default_queue=env.get("MG_QUEUE", "memguard-it"),
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        result_expires=600,
        broker_connection_retry_on_startup=True,
        worker_enable_remote_control=False,
        worker_send_task_events=False,
        worker_hijack_root_logger=False,
        worker_redirect_stdouts=False,
    )
    app.conf.update(json.loads(env.get("MG_CONF") or "{}"))
    if env.get("MG_LOGGING_FILE") and env is os.environ:
        handler = logging.FileHandler(env["MG_LOGGING_FILE"])
        handler.setFormatter(logging.Formatter(env.get("MG_LOGGING_PREFIX", "") + "%(message)s"))
        logging.getLogger("celery_memguard").addHandler(handler)
    if env.get("MG_MEMGUARD", "1") != "0":
        app.steps["worker"].add(MemGuard)
    _register_tasks(app)
    return app


def _register_tasks(app: Celery) -> None:
    @app.task(name="it.ping")
    def ping(sleep: float = 0.0) -> int:
        """No-op (optionally sleeping); returns the pool child's pid."""
        if sleep:
            time.sleep(sleep)
        return os.getpid()

    @app.task(name="it.retain")
    def retain(mib: int, sleep: float = 0.0) -> dict[str, int]:
        """Keep ``mib`` MiB alive in this child after the task returns (a leak)."""
        RETAINED.append(_touched(mib * MiB))
        if sleep:
            time.sleep(sleep)
        return {"pid": os.getpid(), "retained_mib": sum(len(b) for b in RETAINED) // MiB}

    @app.task(name="it.grow")
    def grow(rate_mib_s: float, max_mib: int, peak_file: str, chunk_mib: int = 4, hold: float = 0.0
             ) -> dict[str, Any]:
        """Grow by ``chunk_mib`` chunks at ``rate_mib_s`` up to ``max_mib`` MiB from the task's start; hold ``hold`` s.

        The peak is measured independently of MemGuard: USS once at the start (exact,
        psutil), then after every chunk ``uss0 + (rss_now - rss0)`` (new pages are
        private); the maximum so far goes to ``peak_file`` after every chunk, and once
        more, with an exact USS reading, when anything (MemoryLimitExceeded) interrupts
        the task, so it survives the task's failure.
        """
        started = time.time()
        pid = os.getpid()
        uss0, rss0 = _uss(), _statm_rss()
        record: dict[str, Any] = {"pid": pid, "uss0": uss0, "rss0": rss0, "peak_uss": uss0, "chunks": 0,
                                  "done": False, "started": started}
        _write_json(peak_file, record)
        chunks: list[bytearray] = []
        start = time.monotonic()
        try:
            # The loop runs in its own frame: CPython 3.13.0 can skip the handlers of the very frame an
            # asynchronous exception lands in (python/cpython#139622), never those of its callers.
            _grow_loop(chunks, record, peak_file, rate_mib_s, max_mib, chunk_mib, start, uss0, rss0)
            if hold:
                time.sleep(hold)
        except BaseException:
            # Memory is at its highest now (every chunk is still referenced): take one more exact reading too,
            # which also counts pages that became private without growing RSS (copy-on-write of shared pages).
            record["peak_uss"] = max(record["peak_uss"], uss0 + _statm_rss() - rss0, _uss())
            record["interrupted"] = True
            record["growth_s"] = round(time.monotonic() - start, 3)
            _write_json(peak_file, record)
            raise
        record["done"] = True
        record["growth_s"] = round(time.monotonic() - start, 3)
        _write_json(peak_file, record)
        return {"pid": pid, "grown_mib": len(chunks) * chunk_mib, "peak_uss": record["peak_uss"]}

    @app.task(name="it.boom")
    def boom(marker: str) -> None:
        """Fail with the task's own exception."""
        raise TaskFailedOnPurpose(f"task failed on purpose: {marker}")


_table_mib = int(os.environ.get("MG_TABLE_MIB") or 0)
if _table_mib:
    TABLE = _touched(_table_mib * MiB)

app = make_app(os.environ)
