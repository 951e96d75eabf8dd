"""Limits through a worker's shutdown (issue 13.2), on a real prefork worker.

Warm shutdown (SIGTERM) lets the running tasks finish: Celery closes the pool and joins it, which
can take as long as the longest task. MemGuard must keep enforcing the hard limit, and escalate a
pending stop to SIGKILL after ``memguard_kill_grace``, until the pool's last child has exited; only
then is ``memguard.stopped`` logged. Cold shutdown (SIGQUIT) must stay fast.

* A task growing at 25 MiB/s, started just before SIGTERM, is stopped with ``MemoryLimitExceeded``
  during the drain; its own peak USS stays within 110 % of the limit; a sleeping task on the other
  child finishes with SUCCESS; ``memguard.stopped`` comes after the stop, with ``shutdown="warm"``.
* A task that swallows ``MemoryLimitExceeded`` during the drain is SIGKILLed after the grace, and the
  worker then exits.
* SIGQUIT while a task grows: the worker exits within seconds.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
from datetime import datetime
from pathlib import Path

from celery_memguard import MemoryLimitExceeded

from .conftest import StartWorker, Worker, wait_until
from .policy_tasks import MODULE

MiB = 1024 * 1024
HARD_LIMIT_MIB = 200
POLL = 0.1
KILL_GRACE = 0.5
#: Generous: the drain waits for the tasks; the machine is shared.
EXIT_TIMEOUT = 90.0


def _exit(worker: Worker, timeout: float = EXIT_TIMEOUT) -> int:
    try:
        return worker.proc.wait(timeout)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"worker did not exit within {timeout:.0f}s\n{worker.diagnostics()}") from None


def _ts(event: dict) -> float:
    return datetime.fromisoformat(event["ts"]).timestamp()


def test_warm_shutdown_still_stops_a_task_growing_past_the_hard_limit(start_worker: StartWorker, broker_url: str,
                                                                      tmp_path: Path) -> None:
    worker = start_worker(broker_url, concurrency=2, conf={
        "memguard_hard_limit": f"{HARD_LIMIT_MIB}MiB", "memguard_poll_interval": POLL,
        "memguard_kill_grace": 3.0, "memguard_soft_limit": "60MiB",
    })
    peak_file = tmp_path / "peak.json"
    grower = worker.send("it.grow", 25, 4 * HARD_LIMIT_MIB, str(peak_file))
    sleeper = worker.send("it.ping", 4.0)
    wait_until(peak_file.exists, 30, what="the growing task to start")
    sent_term = time.time()
    worker.proc.send_signal(signal.SIGTERM)
    assert _exit(worker) == 0, worker.diagnostics()

    grown, slept = worker.collect([grower, sleeper], timeout=30)
    peak = json.loads(peak_file.read_text())
    assert grown.state == "FAILURE" and isinstance(grown.value, MemoryLimitExceeded), (grown, worker.diagnostics())
    assert slept.state == "SUCCESS", slept
    assert peak["peak_uss"] <= 1.10 * HARD_LIMIT_MIB * MiB, (peak, worker.diagnostics())
    (killed,) = worker.events("memguard.task_killed")
    assert killed["task_id"] == grower.id and killed["signal"] == "MemoryLimitExceeded", killed
    assert _ts(killed) > sent_term, "the stop came before the shutdown: the test proves nothing"
    (stopped,) = worker.events("memguard.stopped")
    assert stopped["shutdown"] == "warm" and _ts(stopped) >= _ts(killed), (stopped, killed)
    assert stopped["drained_s"] is not None and stopped["drained_s"] > 0, stopped
    # Soft recycles are moot while the pool drains: none is ordered (the grower is above 60 MiB all along).
    (draining,) = worker.events("memguard.draining")
    assert draining["enforcing"] == "hard_limit" and draining["busy"] >= 1, draining
    assert _ts(draining) <= _ts(killed), (draining, killed)
    assert [e for e in worker.events("memguard.child_recycled") if _ts(e) >= _ts(draining)] == []
    assert worker.events("memguard.error") == []


def test_warm_shutdown_escalates_a_stop_the_task_ignores(start_worker: StartWorker, redis_url: str,
                                                         tmp_path: Path) -> None:
    worker = start_worker(redis_url, concurrency=2, conf={
        "imports": [MODULE], "memguard_hard_limit": f"{HARD_LIMIT_MIB}MiB", "memguard_poll_interval": POLL,
        "memguard_kill_grace": KILL_GRACE,
    })
    state_file = tmp_path / "stubborn.state"
    stubborn = worker.send("pt.stubborn", 2 * HARD_LIMIT_MIB, 60, str(state_file))
    wait_until(state_file.exists, 30, what="the stubborn task to start")
    sent_term = time.time()
    worker.proc.send_signal(signal.SIGTERM)
    code = _exit(worker)

    (outcome,) = worker.collect([stubborn], timeout=30)
    assert outcome.state == "FAILURE" and "WorkerLostError" in f"{outcome.value!r}", outcome
    signals = [e["signal"] for e in worker.events("memguard.task_killed")]
    assert signals == ["MemoryLimitExceeded", "SIGKILL"], (signals, worker.diagnostics())
    assert all(_ts(e) > sent_term for e in worker.events("memguard.task_killed"))
    (stopped,) = worker.events("memguard.stopped")
    assert stopped["shutdown"] == "warm", stopped
    assert code in (0, 1), worker.diagnostics()


def test_cold_shutdown_is_fast(start_worker: StartWorker, redis_url: str, tmp_path: Path) -> None:
    worker = start_worker(redis_url, concurrency=2, conf={
        "memguard_hard_limit": f"{HARD_LIMIT_MIB}MiB", "memguard_poll_interval": POLL,
    })
    peak_file = tmp_path / "peak.json"
    worker.send("it.grow", 20, 150, str(peak_file), hold=60)
    wait_until(peak_file.exists, 30, what="the growing task to start")
    started = time.monotonic()
    worker.proc.send_signal(signal.SIGQUIT)
    _exit(worker, 30)
    assert time.monotonic() - started < 10, worker.diagnostics()
