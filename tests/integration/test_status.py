"""The ``memguard`` remote-control command on a real prefork worker (Redis and RabbitMQ).

* ``celery -A proj memguard status --format json`` (a separate client process, as an
  operator would run it) lists exactly the worker's live pool children with their memory,
  the task each is running, the leak suspect the workload produced, and the recycle
  MemGuard ordered, counted by reason; the text format renders the same reply.
* ``celery -A proj inspect memguard`` (Celery's own command) returns the same data, and
  ``celery -A proj inspect stats`` carries a compact ``memguard`` section (limits, per-child
  memory, recycles by reason, suspects) read from the same Guard.
* On a solo worker the command answers that MemGuard is not policing, with the reason.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from .conftest import REPO, StartWorker, Worker, wait_until

SOFT_LIMIT_MIB = 100
LEAK_MIB = 4
#: The harness turns remote control off (workers of other tests share the broker); these workers need it.
REMOTE = {"worker_enable_remote_control": True}


def celery_cli(worker: Worker, *args: str) -> subprocess.CompletedProcess[str]:
    """``celery -A tests.integration.proj ARGS`` as a separate client process, with the worker's settings."""
    return subprocess.run([sys.executable, "-m", "celery", "-A", "tests.integration.proj", *args], cwd=REPO,
                          env=worker.env, capture_output=True, text=True, timeout=60)


def status_json(worker: Worker, hostname: str) -> dict[str, Any]:
    proc = celery_cli(worker, "memguard", "status", "--format", "json", "-d", hostname, "--timeout", "5")
    assert proc.returncode == 0, (proc.stdout, proc.stderr)
    replies: dict[str, Any] = json.loads(proc.stdout)
    assert list(replies) == [hostname], replies
    return replies[hostname]  # type: ignore[no-any-return]


def test_status_lists_live_children_suspects_and_decisions(start_worker: StartWorker, broker_url: str,
                                                           tmp_path: Path) -> None:
    worker = start_worker(broker_url, concurrency=2, conf={**REMOTE, "memguard_soft_limit": f"{SOFT_LIMIT_MIB}MiB",
                                                           "memguard_poll_interval": 0.1})
    hostname = worker.events("memguard.started")[0]["hostname"]
    outcomes = worker.collect([worker.send("it.retain", LEAK_MIB) for _ in range(40)])
    assert [o.state for o in outcomes] == ["SUCCESS"] * len(outcomes)
    worker.wait_for_event("memguard.leak_suspected", where=lambda e: e["task"] == "it.retain")
    worker.wait_for_event("memguard.child_recycled")

    def settled() -> bool:  # every recycled child replaced (no task runs now, so no further recycle comes)
        recycled = {e["pid"] for e in worker.events("memguard.child_recycled")}
        pids = worker.child_pids()
        return len(pids) == 2 and not pids & recycled

    wait_until(settled, 20, what="the recycled children replaced")
    time.sleep(0.3)  # a few polls of the settled pool

    status = status_json(worker, hostname)
    assert status["active"] is True and status["pool"] == "prefork" and status["metric"] == "uss", status
    assert status["limits"]["soft_limit_mib"] == SOFT_LIMIT_MIB and status["limits"]["hard_limit_mib"] is None
    assert {c["pid"] for c in status["children"]} == worker.child_pids(), status["children"]
    for child in status["children"]:
        assert child["mem_mib"] > 0 and child["rss_mib"] > 0 and child["task"] is None, child
        assert child["age_s"] is not None and child["age_s"] >= 0, child
    assert status["poll_age_s"] < 2 and status["polls"] > 0, status
    assert status["pool_mib"] >= sum(c["mem_mib"] for c in status["children"]) - 0.2, status
    (suspect,) = status["suspects"]
    assert suspect["task"] == "it.retain" and suspect["kib_per_call"] > 0.5 * LEAK_MIB * 1024, suspect
    recycled = len(worker.events("memguard.child_recycled"))
    assert status["decisions"].get("recycle:soft_limit") == recycled, (status["decisions"], recycled)
    assert status["master"]["pid"] == worker.proc.pid and status["master"]["mem_mib"] > 0, status

    text = celery_cli(worker, "memguard", "status", "-d", hostname, "--timeout", "5")
    assert text.returncode == 0, text.stderr
    print(text.stdout)
    assert text.stdout.startswith(f"{hostname}  (pool prefork, metric uss, soft {SOFT_LIMIT_MIB:.1f} MiB)"), text.stdout
    assert "it.retain: " in text.stdout and "recycle:soft_limit" in text.stdout, text.stdout
    for pid in worker.child_pids():
        assert f"\n    {pid} " in text.stdout, text.stdout

    raw = celery_cli(worker, "inspect", "memguard", "-d", hostname, "--json", "--timeout", "5")
    assert raw.returncode == 0, raw.stderr
    assert json.loads(raw.stdout)[hostname]["suspects"][0]["task"] == "it.retain", raw.stdout

    # `celery inspect stats` (and Flower's worker page) carry the same knowledge, compactly.
    stats = celery_cli(worker, "inspect", "stats", "-d", hostname, "--json", "--timeout", "5")
    assert stats.returncode == 0, stats.stderr
    section = json.loads(stats.stdout)[hostname]["memguard"]
    print(json.dumps(section, indent=1))
    assert section["active"] is True and section["metric"] == "uss", section
    assert section["limits_mib"] == {"soft": SOFT_LIMIT_MIB, "hard": None, "pool": None}, section
    assert {int(pid) for pid in section["children_mib"]} == worker.child_pids(), section
    assert all(mem > 0 for mem in section["children_mib"].values()), section
    assert section["recycles"] == {"soft_limit": recycled} and section["kills"] == {}, (section, recycled)
    assert section["suspects_kib_per_call"]["it.retain"] > 0.5 * LEAK_MIB * 1024, section
    assert worker.events("memguard.error") == []


def test_status_on_a_solo_worker_says_it_is_not_policing(start_worker: StartWorker, redis_url: str) -> None:
    worker = start_worker(redis_url, pool="solo", concurrency=1, conf={**REMOTE, "memguard_soft_limit": "100MiB"})
    hostname = worker.events("memguard.started")[0]["hostname"]
    status = status_json(worker, hostname)
    assert status["active"] is False and status["pool"] == "solo", status
    assert "no child processes" in status["reason"], status
    stats = celery_cli(worker, "inspect", "stats", "-d", hostname, "--json", "--timeout", "5")
    assert stats.returncode == 0, stats.stderr
    section = json.loads(stats.stdout)[hostname]["memguard"]
    assert section["active"] is False and section["children_mib"] == {} and section["recycles"] == {}, section


def test_status_without_a_reply_exits_2(start_worker: StartWorker, redis_url: str) -> None:
    worker = start_worker(redis_url, concurrency=1, conf=REMOTE)
    proc = celery_cli(worker, "memguard", "status", "-d", "nobody@nowhere", "--timeout", "0.5")
    assert proc.returncode == 2 and "no worker replied within 0.5 s" in proc.stderr, (proc.stdout, proc.stderr)
