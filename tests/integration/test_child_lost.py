"""OOM forensics on a real prefork worker: ``memguard.child_lost`` for deaths memguard did not cause, and only those.

* A child SIGKILLed from outside (the test plays the operator or the kernel) while it runs
  a sleeping task: memguard names the task, its id, the signal, and says it was likely
  *not* an OOM kill, with the reason (the cgroup's ``oom_kill`` counter did not move).
  Every other task succeeds. Run on Redis and RabbitMQ.
* A child memguard itself SIGKILLs (a task that swallows ``MemoryLimitExceeded`` and keeps
  its memory, until ``memguard_kill_grace`` runs out): ``memguard.task_killed`` with
  ``signal="SIGKILL"``, and no ``child_lost`` for it.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from .conftest import Outcome, StartWorker, wait_until
from .policy_tasks import MODULE

POLL = 0.1
HARD_LIMIT_MIB = 150
KILL_GRACE = 0.5


def _lost(outcome: Outcome) -> bool:
    """Whether the task failed because its pool child died (Celery's WorkerLostError)."""
    return outcome.state == "FAILURE" and "WorkerLostError" in f"{outcome.value!r} {outcome.traceback}"


def test_externally_killed_child_is_reported_with_its_task(start_worker: StartWorker, broker_url: str,
                                                           tmp_path: Path) -> None:
    """SIGKILL from outside: child_lost names pid, task and task_id, signal SIGKILL, likely_oom false with a reason."""
    worker = start_worker(broker_url, concurrency=2, conf={"imports": [MODULE], "memguard_poll_interval": POLL})
    pid_file = tmp_path / "victim.pid"

    victim = worker.send("pt.sleep", 30, str(pid_file))
    pid = int(wait_until(lambda: pid_file.exists() and pid_file.read_text(), 30, what="the sleeping task to start"))
    time.sleep(5 * POLL)  # the monitor has seen the child running the task
    os.kill(pid, signal.SIGKILL)
    event = worker.wait_for_event("memguard.child_lost", where=lambda e: e["pid"] == pid)
    others = [worker.send("it.ping", 0.02) for _ in range(20)]
    (lost,) = worker.collect([victim])
    rest = worker.collect(others)

    assert _lost(lost), (lost.state, lost.value, lost.traceback)
    assert [o.state for o in rest] == ["SUCCESS"] * len(rest), [o.traceback for o in rest if o.state != "SUCCESS"]
    assert event["task"] == "pt.sleep" and event["task_id"] == victim.id, event
    assert event["signal"] == "SIGKILL" and event["exitcode"] == -signal.SIGKILL, event
    assert event["likely_oom"] is False and event["reason"], event
    if event["oom_kill_delta"] is not None:  # the counter is readable here (cgroup v1/v2 or /proc/vmstat)
        assert event["oom_kill_delta"] == 0 and "oom_kill counter did not change" in event["reason"], event
    assert event["last_mem_mib"] is not None and event["last_mem_mib"] > 0, event
    assert len(worker.events("memguard.child_lost")) == 1
    wait_until(lambda: pid not in worker.child_pids() and len(worker.child_pids()) == 2, 20,
               what="the killed child to be replaced")
    assert worker.events("memguard.error") == []

    report = worker.report()  # the report command counts the loss, with the task it was running
    (host,) = report["hosts"]
    assert host["lost"]["count"] == 1 and host["lost"]["likely_oom"] == 0, host["lost"]
    assert host["lost"]["tasks"] == {"pt.sleep": 1} and host["lost"]["by_signal"] == {"SIGKILL": 1}, host["lost"]
    assert report["verdict"]["status"] == "attention", report["verdict"]
    assert any("killed outside MemGuard (0 likely by the OOM killer)" in f for f in report["verdict"]["findings"])


def test_a_child_killed_right_after_its_task_started_is_named(start_worker: StartWorker, redis_url: str,
                                                             tmp_path: Path) -> None:
    """Issue 13.10: a SIGKILL ~0.1 s into a task (within one poll interval of its start): child_lost names
    the task from what the child recorded at task start, and its memory fields say what they are."""
    worker = start_worker(redis_url, concurrency=2, conf={"imports": [MODULE]})  # default 1 s poll interval
    for attempt in range(3):
        pid_file = tmp_path / f"victim-{attempt}.pid"
        victim = worker.send("pt.load", 150, 30, str(pid_file))
        pid = int(wait_until(lambda: pid_file.exists() and pid_file.read_text(), 30, interval=0.01,
                             what="the loading task to start"))
        time.sleep(0.1)
        os.kill(pid, signal.SIGKILL)
        event = worker.wait_for_event("memguard.child_lost", where=lambda e: e["pid"] == pid)
        (lost,) = worker.collect([victim])
        assert _lost(lost), (lost.state, lost.value, lost.traceback)
        assert event["task"] == "pt.load" and event["task_id"] == victim.id, event
        assert event["task_source"] == "board", event
        assert event["task_started_s_before"] is not None and event["task_started_s_before"] >= 0.1, event
        assert event["rss_at_task_start_mib"] is not None and event["rss_at_task_start_mib"] > 0, event
        assert event["last_poll_s_before"] is not None and event["last_poll_s_before"] >= 0, event
        # The last poll's reading predates the task or falls within it, and the event says which.
        assert event["last_poll_during_task"] in (True, False), event
        if event["last_poll_during_task"] is False:
            assert event["last_rss_mib"] < event["rss_at_task_start_mib"] + 150, event
        # The next victim must be a child the monitor has polled at least once (a child born and killed
        # between two polls is never listed by the pool: see docs/how-it-works.md, failure modes).
        wait_until(lambda: pid not in worker.child_pids() and len(worker.child_pids()) == 2, 20,
                   what="the killed child to be replaced")
        time.sleep(2.5)
    assert [o.state for o in worker.collect([worker.send("it.ping") for _ in range(5)])] == ["SUCCESS"] * 5
    assert worker.events("memguard.error") == []


def test_a_child_memguard_sigkills_is_not_reported_lost(start_worker: StartWorker, redis_url: str,
                                                        tmp_path: Path) -> None:
    """A task swallowing MemoryLimitExceeded is SIGKILLed after kill_grace: task_killed (SIGKILL), no child_lost."""
    worker = start_worker(redis_url, concurrency=2, conf={
        "imports": [MODULE], "memguard_poll_interval": POLL,
        "memguard_hard_limit": f"{HARD_LIMIT_MIB}MiB", "memguard_kill_grace": KILL_GRACE,
    })
    state_file = tmp_path / "stubborn.state"

    stubborn = worker.send("pt.stubborn", 2 * HARD_LIMIT_MIB, 60, str(state_file))
    others = [worker.send("it.ping", 0.02) for _ in range(20)]
    (killed,) = worker.collect([stubborn])
    rest = worker.collect(others)
    time.sleep(10 * POLL)  # a child_lost, were one coming, would be out by now

    assert _lost(killed), (killed.state, killed.value, killed.traceback)
    assert [o.state for o in rest] == ["SUCCESS"] * len(rest), [o.traceback for o in rest if o.state != "SUCCESS"]
    pid, caught = (int(x) for x in state_file.read_text().split())
    assert caught >= 1, "the task never saw MemoryLimitExceeded"
    signals = [(e["signal"], e["pid"], e["task_id"]) for e in worker.events("memguard.task_killed")]
    assert signals == [("MemoryLimitExceeded", pid, stubborn.id), ("SIGKILL", pid, stubborn.id)], signals
    for event in worker.events("memguard.task_killed"):
        assert event["reason"] == "hard_limit" and event["task"] == "pt.stubborn", event
        assert event["mem_mib"] >= HARD_LIMIT_MIB, event
    assert worker.events("memguard.child_lost") == []
    wait_until(lambda: pid not in worker.child_pids() and len(worker.child_pids()) == 2, 20,
               what="the killed child to be replaced")
    assert worker.events("memguard.error") == []
