"""Pausing task intake under memory pressure, on a real prefork worker (Redis and RabbitMQ).

The pressure is made by the pool itself: ``memguard_pause_pool_above`` is 150 MiB and one task
(``pz.big``) holds 220 MiB for a few seconds, then frees it. While it runs the pool's total is
above the threshold, so intake pauses: the test then sends short tasks that record, in Redis, each
execution and when it started. They must not start while paused, must not be fetched beyond the
consumer's prefetch (the rest stay in the broker's queue), and must all run exactly once after the
resume. A warm or cold shutdown while paused must not hang, and the tasks the worker held go back to the
broker: a second worker runs each of them exactly once.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from datetime import datetime
from typing import Any

import pytest

from tests.harness import filesystem_broker

from .conftest import BACKEND_URL, REPO, StartWorker, Worker, wait_until, worker_command
from .pause_tasks import MODULE, runs, starts

BIG_MIB = 220
POOL_ABOVE = "150MiB"
CONCURRENCY = 2
PREFETCH = CONCURRENCY * 4  # Celery's default worker_prefetch_multiplier
SENT = 24


def conf(**extra: Any) -> dict[str, Any]:
    return {"imports": [MODULE], "memguard_pause_pool_above": POOL_ABOVE, "memguard_poll_interval": 0.2,
            "memguard_pause_resume_after": 0.5, "worker_enable_remote_control": True, **extra}


def ts(event: dict[str, Any]) -> float:
    return datetime.fromisoformat(event["ts"]).timestamp()


def queue_length(worker: Worker) -> int:
    """Messages still in the broker's queue (not delivered to any consumer)."""
    with worker.app.connection_for_write() as conn:
        return int(conn.default_channel.queue_declare(worker.queue, passive=True).message_count)


def status(worker: Worker) -> dict[str, Any]:
    hostname = worker.events("memguard.started")[0]["hostname"]
    proc = subprocess.run([sys.executable, "-m", "celery", "-A", "tests.integration.proj", "memguard", "status",
                           "--format", "json", "-d", hostname, "--timeout", "5"],
                          cwd=REPO, env=worker.env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, (proc.stdout, proc.stderr)
    return json.loads(proc.stdout)[hostname]  # type: ignore[no-any-return]


def pause_with_big_task(worker: Worker, hold: float) -> tuple[Any, dict[str, Any]]:
    big = worker.send("pz.big", BIG_MIB, hold)
    paused = worker.wait_for_event("memguard.paused", timeout=30)
    return big, paused


def test_tasks_sent_during_a_pause_wait_in_the_broker_and_run_once_after_it(start_worker: StartWorker,
                                                                          broker_url: str) -> None:
    worker = start_worker(broker_url, concurrency=CONCURRENCY, conf=conf())
    big, paused = pause_with_big_task(worker, hold=6.0)
    assert paused["trigger"] == "pool" and paused["pool_mib"] > 150, paused
    results = [worker.send("pz.record") for _ in range(SENT)]
    ids = [r.id for r in results]

    time.sleep(1.5)  # the worker had time to fetch and start them, if it would
    assert not worker.events("memguard.resumed"), worker.diagnostics()
    assert sum(runs(BACKEND_URL, ids)) == 0, "a task started during the pause"
    assert queue_length(worker) >= SENT - PREFETCH, "the paused worker kept fetching"
    live = status(worker)["intake"]
    assert live["enabled"] and live["paused"] and live["trigger"] == "pool", live
    assert 0 <= live["held"] <= PREFETCH, live

    outcomes = worker.collect([big, *results], timeout=90)
    assert [o.state for o in outcomes] == ["SUCCESS"] * len(outcomes), outcomes
    resumed = worker.wait_for_event("memguard.resumed")
    assert resumed["trigger"] == "recovered" and resumed["paused_s"] > 0, resumed
    assert runs(BACKEND_URL, ids) == [1] * SENT, "a task ran twice or never"
    started = [s for s in starts(BACKEND_URL, ids) if s is not None]
    assert min(started) >= ts(resumed) - 0.05, "a task started before intake resumed"
    assert status(worker)["intake"]["paused"] is False


@pytest.mark.parametrize("shutdown", ["warm", "cold"])
def test_shutdown_while_paused_returns_held_tasks(start_worker: StartWorker, broker_url: str, shutdown: str) -> None:
    worker = start_worker(broker_url, concurrency=CONCURRENCY, conf=conf())
    big, _ = pause_with_big_task(worker, hold=6.0)
    results = [worker.send("pz.record") for _ in range(10)]
    ids = [r.id for r in results]
    time.sleep(1.0)  # the paused worker holds what it had prefetched
    assert not worker.events("memguard.resumed"), worker.diagnostics()
    started = time.monotonic()
    if shutdown == "cold":
        worker.proc.send_signal(signal.SIGQUIT)  # cold: the running big task is cut short
        worker.proc.wait(15)
    worker.stop()  # warm: SIGTERM while paused, the big task finishes, nothing else starts
    assert time.monotonic() - started < 15, f"{shutdown} shutdown hung while paused"
    if shutdown == "warm":
        assert big.get(timeout=10) > 0
        assert worker.events("memguard.stopped"), worker.diagnostics()
    assert sum(runs(BACKEND_URL, ids)) == 0, "a held task started during the shutdown"

    # The held messages went back to the broker (all of them: none ran, none was acknowledged) ...
    wait_until(lambda: queue_length(worker) == len(ids), 20, what="the held messages back in the queue")
    # ... and a second worker on the same queue (no pause) runs each of them once.
    env = dict(worker.env, MG_CONF=json.dumps({"imports": [MODULE]}), MG_MEMGUARD="0")
    second = subprocess.Popen(worker_command(concurrency=CONCURRENCY, hostname=worker.queue + "-2"), cwd=REPO,
                              env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        outcomes = worker.collect(results, timeout=90)
    finally:
        os.killpg(second.pid, signal.SIGKILL)
        second.wait(10)
    assert [o.state for o in outcomes] == ["SUCCESS"] * len(outcomes), outcomes
    assert runs(BACKEND_URL, ids) == [1] * len(ids)


@pytest.mark.parametrize("acks_late", [False, True])
def test_pause_and_resume_repeat_under_load(start_worker: StartWorker, redis_url: str, acks_late: bool) -> None:
    """Several pauses in a row with tasks flowing throughout (acks_late off and on): each runs once."""
    worker = start_worker(redis_url, concurrency=CONCURRENCY, conf=conf(task_acks_late=acks_late))
    results = []
    for _ in range(3):
        results.append(worker.send("pz.big", BIG_MIB, 1.5))
        results += [worker.send("pz.record", 0.01) for _ in range(15)]
    outcomes = worker.collect(results, timeout=120)
    assert [o.state for o in outcomes] == ["SUCCESS"] * len(outcomes), outcomes
    record_ids = [r.id for i, r in enumerate(results) if i % 16]  # every 16th is the big task
    assert runs(BACKEND_URL, record_ids) == [1] * len(record_ids)
    assert worker.events("memguard.paused") and worker.events("memguard.resumed"), worker.diagnostics()


def test_pause_on_the_filesystem_transport(start_worker: StartWorker, tmp_path: Any) -> None:
    """A polling transport (no event loop): the pause holds tasks; the consumer fetches at most its prefetch
    count, and everything runs once after the resume."""
    broker, extra = filesystem_broker(tmp_path / "fs-broker")
    worker = start_worker(broker, concurrency=CONCURRENCY, conf=conf(worker_enable_remote_control=False, **extra))
    big, paused = pause_with_big_task(worker, hold=5.0)
    results = [worker.send("pz.record") for _ in range(SENT)]
    ids = [r.id for r in results]
    time.sleep(1.5)
    assert not worker.events("memguard.resumed"), worker.diagnostics()
    assert sum(runs(BACKEND_URL, ids)) == 0, "a task started during the pause"
    waiting = len(list((tmp_path / "fs-broker" / "broker").glob("*.msg")))
    assert waiting >= SENT - PREFETCH, f"the paused worker fetched {SENT - waiting} messages"
    outcomes = worker.collect([big, *results], timeout=90)
    assert [o.state for o in outcomes] == ["SUCCESS"] * len(outcomes), outcomes
    resumed = worker.wait_for_event("memguard.resumed")
    assert runs(BACKEND_URL, ids) == [1] * SENT, "a task ran twice or never"
    assert min(s for s in starts(BACKEND_URL, ids) if s is not None) >= ts(resumed) - 0.05


def test_a_lost_broker_connection_during_a_pause(start_worker: StartWorker, redis_url: str) -> None:
    """Redis drops the worker's connections while it is paused: the consumer reconnects, its new task
    consumer is cancelled too (nothing starts before the resume), and every task runs once."""
    import psutil
    import redis

    worker = start_worker(redis_url, concurrency=CONCURRENCY, conf=conf())
    big, _ = pause_with_big_task(worker, hold=8.0)
    results = [worker.send("pz.record") for _ in range(SENT)]
    ids = [r.id for r in results]
    time.sleep(1.0)
    ports = {c.laddr.port for c in psutil.Process(worker.proc.pid).net_connections("tcp")
             if c.raddr and c.raddr.port == 6379}
    admin = redis.Redis.from_url(redis_url)
    try:
        for port in ports:  # only this worker's connections (other tests share the server)
            try:
                admin.client_kill(f"127.0.0.1:{port}")
            except redis.ResponseError:
                pass
    finally:
        admin.close()
    time.sleep(3.0)  # the consumer reconnects (and the result backend with it) while still paused
    assert "Connection to broker lost" in worker.stderr_path.read_text(errors="replace"), worker.diagnostics()
    assert not worker.events("memguard.resumed"), worker.diagnostics()
    assert sum(runs(BACKEND_URL, ids)) == 0, "a task started during the pause after the reconnection"
    outcomes = worker.collect([big, *results], timeout=120)
    assert [o.state for o in outcomes] == ["SUCCESS"] * len(outcomes), outcomes
    resumed = worker.wait_for_event("memguard.resumed")
    assert runs(BACKEND_URL, ids) == [1] * SENT, "a task ran twice or never"
    assert min(s for s in starts(BACKEND_URL, ids) if s is not None) >= ts(resumed) - 0.05


def test_dry_run_logs_the_pause_and_keeps_taking_tasks(start_worker: StartWorker, redis_url: str) -> None:
    """memguard_dry_run: the crossing is logged (memguard.paused, dry_run true) but tasks sent meanwhile are
    fetched and run at once (before: dry run really paused intake)."""
    worker = start_worker(redis_url, concurrency=CONCURRENCY, conf=conf(memguard_dry_run=True))
    big, paused = pause_with_big_task(worker, hold=6.0)
    assert paused["dry_run"] is True and paused["held"] is None, paused
    results = [worker.send("pz.record") for _ in range(4)]
    outcomes = worker.collect(results, timeout=30)
    assert [o.state for o in outcomes] == ["SUCCESS"] * len(outcomes), outcomes
    assert not worker.events("memguard.resumed"), "the tasks waited for the resume"
    worker.collect([big], timeout=60)
    assert worker.wait_for_event("memguard.resumed")["dry_run"] is True


def test_add_consumer_during_a_pause_does_not_restart_fetching(start_worker: StartWorker, redis_url: str) -> None:
    """add_consumer while paused subscribes the task consumer again (Celery's add_task_queue calls consume());
    with no prefetch limit that would fetch the whole queue: the first held arrival has it cancelled again."""
    worker = start_worker(redis_url, concurrency=CONCURRENCY, conf=conf(worker_prefetch_multiplier=0))
    big, paused = pause_with_big_task(worker, hold=8.0)
    results = [worker.send("pz.record") for _ in range(SENT)]
    time.sleep(0.5)
    assert queue_length(worker) == SENT, "the paused worker kept fetching"
    hostname = worker.events("memguard.started")[0]["hostname"]
    replies = worker.app.control.add_consumer(worker.queue, destination=[hostname], reply=True, timeout=5)
    assert replies, "no reply to add_consumer"
    time.sleep(1.5)
    assert not worker.events("memguard.resumed"), worker.diagnostics()
    assert queue_length(worker) >= SENT - 4, f"fetching went on after add_consumer: {queue_length(worker)} left"
    outcomes = worker.collect([big, *results], timeout=90)
    assert [o.state for o in outcomes] == ["SUCCESS"] * len(outcomes), outcomes
    assert runs(BACKEND_URL, [r.id for r in results]) == [1] * SENT, "a task ran twice or never"


def test_unbounded_intake_is_warned_on_the_filesystem_transport(start_worker: StartWorker, tmp_path: Any) -> None:
    """No event loop and worker_prefetch_multiplier=0: a pause cannot bound fetching; said at start."""
    broker, extra = filesystem_broker(tmp_path / "fs-broker")
    worker = start_worker(broker, concurrency=CONCURRENCY,
                          conf=conf(worker_enable_remote_control=False, worker_prefetch_multiplier=0, **extra))
    (warning,) = worker.events("memguard.intake_unbounded")
    assert warning["level"] == "warning" and warning["prefetch_multiplier"] == 0, warning
