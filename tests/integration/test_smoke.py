"""The smoke set every Python of the CI matrix runs: soft recycle, then a hard stop on a replacement child.

``scripts/test.sh`` runs the whole suite on the main Python and, on every other
Python of the matrix (and on the oldest Celery), the unit tests plus the tests
marked ``smoke`` (``pytest -m smoke``). This module is that set's core, once per
transport:

* Redis, an event-loop transport: billiard replaces children from the worker's
  event loop (the main thread);
* kombu's filesystem transport (the README's demo; no broker server), a polling
  transport: billiard replaces children from its supervisor *thread*, and on some
  Pythons (CPython 3.13.0) a process forked from a non-main thread never runs
  Python-level signal handlers.

Each run first leaks memory in every original child until the soft limit
recycles all of them (every task succeeds, each ``child_recycled`` names a
child that ran the leak), and then sends a task growing at ~400 MiB/s, which
must therefore run on a *replacement* child and fail with
``MemoryLimitExceeded`` (``task_killed`` with ``signal="MemoryLimitExceeded"``,
not a SIGKILL escalation), while the tasks beside it succeed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from celery_memguard import MemoryLimitExceeded

from tests.harness import filesystem_broker

from .conftest import REDIS_BROKER_URL, StartWorker, Worker, require_port, wait_until

pytestmark = pytest.mark.smoke

MiB = 1024 * 1024
SOFT_LIMIT_MIB = 100
HARD_LIMIT_MIB = 300
PEAK_BOUND_MIB = 1.10 * HARD_LIMIT_MIB
RETAIN_MIB = 30
GROWTH_MIB_S = 400
CONCURRENCY = 2
POLL = 0.2
OTHER_TASKS = 20


@pytest.fixture(params=["redis", "filesystem"])
def transport(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, dict[str, Any]]:
    """(broker URL, extra app.conf) for an event-loop transport (Redis) and a polling one (filesystem)."""
    if request.param == "redis":
        require_port("Redis", "127.0.0.1", 6379)
        return REDIS_BROKER_URL, {}
    return filesystem_broker(tmp_path / "fs-broker", polling_interval=0.1)


def _replace_every_original_child(worker: Worker) -> set[int]:
    """Leak in every child until the soft limit has recycled all the original ones; returns their pids."""
    originals = worker.child_pids()
    assert len(originals) == CONCURRENCY, originals
    ran_on: set[int] = set()

    def all_replaced() -> bool:
        outcomes = worker.collect([worker.send("it.retain", RETAIN_MIB, 0.05) for _ in range(CONCURRENCY)],
                                  timeout=120)
        assert [o.state for o in outcomes] == ["SUCCESS"] * CONCURRENCY, [(o.state, o.traceback) for o in outcomes]
        ran_on.update(o.value["pid"] for o in outcomes)
        live = worker.child_pids()
        return not originals & live and len(live) == CONCURRENCY

    wait_until(all_replaced, 120, interval=0.0, what=f"the soft limit to recycle every original child {originals}")
    recycled = worker.events("memguard.child_recycled")
    assert originals <= {e["pid"] for e in recycled}, (originals, recycled)
    for event in recycled:
        assert event["reason"] == "soft_limit", event
        # mem_mib is rounded to 0.1 MiB: a child 40 KiB over the limit reads 100.0.
        assert event["limit_mib"] == SOFT_LIMIT_MIB and event["mem_mib"] >= SOFT_LIMIT_MIB, event
        assert event["pid"] in ran_on, (event, ran_on)
    return originals


def test_soft_recycle_then_hard_stop_on_a_replacement_child(start_worker: StartWorker,
                                                            transport: tuple[str, dict[str, Any]],
                                                            tmp_path: Path) -> None:
    """Soft limit recycles every leaking child; a runaway task on a replacement child ends in MemoryLimitExceeded."""
    broker, extra = transport
    worker = start_worker(broker, concurrency=CONCURRENCY, conf={
        **extra,
        "memguard_soft_limit": f"{SOFT_LIMIT_MIB}MiB",
        "memguard_hard_limit": f"{HARD_LIMIT_MIB}MiB",
        "memguard_poll_interval": POLL,
    })
    originals = _replace_every_original_child(worker)
    replacements = worker.child_pids()

    peak_file = tmp_path / "peak.json"
    grower = worker.send("it.grow", GROWTH_MIB_S, 3 * HARD_LIMIT_MIB, str(peak_file))
    others = [worker.send("it.ping", 0.01) for _ in range(OTHER_TASKS)]
    (grown,) = worker.collect([grower], timeout=60)
    rest = worker.collect(others, timeout=120)

    peak = json.loads(peak_file.read_text())
    assert peak["pid"] not in originals and peak["pid"] in replacements, (peak["pid"], originals, replacements)
    killed = [e for e in worker.events("memguard.task_killed") if e["task_id"] == grower.id]
    assert grown.state == "FAILURE", (grown.state, grown.value, killed, worker.diagnostics())
    assert isinstance(grown.value, MemoryLimitExceeded), (repr(grown.value), killed, worker.diagnostics())
    assert "memguard_hard_limit" in str(grown.value) and f"{HARD_LIMIT_MIB}.0 MiB" in str(grown.value)
    assert [o.state for o in rest] == ["SUCCESS"] * OTHER_TASKS, [o.traceback for o in rest if o.state != "SUCCESS"]

    assert len(killed) == 1, killed
    (event,) = killed
    assert event["task"] == "it.grow" and event["pid"] == peak["pid"], event
    assert event["limit_mib"] == HARD_LIMIT_MIB and event["mem_mib"] >= HARD_LIMIT_MIB, event  # rounded
    assert event["signal"] == "MemoryLimitExceeded", "the polite stop did not reach the task; SIGKILL was needed"
    assert peak.get("interrupted") and not peak["done"], peak
    assert peak["peak_uss"] / MiB <= PEAK_BOUND_MIB, f"own peak USS {peak['peak_uss'] / MiB:.1f} MiB"

    # The stopped child is replaced too, and the pool keeps working.
    wait_until(lambda: peak["pid"] not in worker.child_pids() and len(worker.child_pids()) == CONCURRENCY, 30,
               what="the stopped child to be replaced")
    assert worker.ping() in worker.child_pids()
    assert worker.events("memguard.error") == []
