"""``celery memguard advise`` on a real worker's log: the advice is consistent with what the run did.

A prefork worker (2 children, Redis) logs ``memguard.sample`` every 0.5 s with a 160 MiB soft
limit, and runs a leaking task (``it.retain``: 8 MiB kept per call, so children are recycled
at the soft limit), a heavy one (``it.grow``: 120 MiB for the call's duration, freed after) and
no-op pings. After a warm shutdown (which logs the last sample), the real command
``python -m celery memguard advise --format json`` reads the event log, and:

* concurrency x hard limit + the master's largest RSS fits the effective memory the worker
  reported (with the headroom the advisor keeps);
* the hard limit leaves a fresh child room for the largest call measured here (it.grow's own
  peak as the task itself measured it), and the soft limit is below it by that room;
* ``worker_max_tasks_per_child`` keeps a fresh child plus 8 MiB per call under the soft limit;
* it.grow is named a task to route to its own queue; the recycles it counts are the
  ``memguard.child_recycled`` events of the log.

A second worker (Redis and RabbitMQ) runs ``at.explode`` (:mod:`tests.integration.advise_tasks`) with ``acks_late`` and
``reject_on_worker_lost``: the task SIGKILLs its own child on its first 3 deliveries, so the same task
id loses a child 3 times before it succeeds; ``advise`` names the redelivery loop (celery#5641).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from .conftest import REPO, StartWorker

LEAK_MIB = 8
HEAVY_MIB = 120


def _mib(value: object) -> float:
    assert isinstance(value, str) and value.endswith("MiB"), value
    return float(value[:-3])


def test_advice_on_a_real_run_is_consistent_with_it(start_worker: StartWorker, redis_url: str,
                                                    tmp_path: Path) -> None:
    worker = start_worker(redis_url, concurrency=2, conf={"memguard_sample_interval": 0.5,
                                                          "memguard_soft_limit": "160MiB"})
    peaks = []
    results = []
    for i in range(3):
        for _ in range(10):
            results.append(worker.send("it.retain", LEAK_MIB))
            results.append(worker.send("it.ping"))
        peak_file = tmp_path / f"grow-{i}.json"
        peaks.append(peak_file)
        results.append(worker.send("it.grow", 600.0, HEAVY_MIB, str(peak_file), 8))
    outcomes = worker.collect(results, timeout=120)
    assert all(o.state == "SUCCESS" for o in outcomes), [o for o in outcomes if o.state != "SUCCESS"][:3]
    worker.wait_for_event("memguard.child_recycled")
    worker.stop()  # warm shutdown: the last sample carries the tasks that finished after the previous one

    proc = subprocess.run([sys.executable, "-m", "celery", "memguard", "advise", "--format", "json",
                           str(worker.event_file)], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    (host,) = json.loads(proc.stdout)["hosts"]
    evidence = host["evidence"]
    advice = {r["key"]: r for r in host["recommendations"]}
    assert evidence["calls"] == len(outcomes) + 1  # and the harness's readiness ping

    concurrency = advice["worker_concurrency"]["value"]
    hard, soft = _mib(advice["memguard_hard_limit"]["value"]), _mib(advice["memguard_soft_limit"]["value"])
    effective, master = evidence["effective_memory_mib"], evidence["master_rss_max_mib"]
    assert 1 <= concurrency <= 2
    assert concurrency * hard + master <= effective * 0.9 + 1

    grow_own = max(json.loads(p.read_text())["peak_uss"] - json.loads(p.read_text())["uss0"] for p in peaks) / 2**20
    logged_own = evidence["tasks"]["it.grow"]["own_peak_max_mib"]
    assert logged_own >= HEAVY_MIB * 0.9 and abs(logged_own - grow_own) <= 16, (logged_own, grow_own)
    assert hard >= soft + logged_own and soft > 0
    assert advice["memguard_hard_limit"]["config"] == f'app.conf.memguard_hard_limit = "{int(hard)}MiB"'
    assert advice["memguard_soft_limit"]["cli"] == f"--memguard-soft-limit {int(soft)}MiB"

    per_child = advice["worker_max_tasks_per_child"]["value"]
    assert isinstance(per_child, int) and per_child >= 1
    fresh_plus_leak = per_child * LEAK_MIB
    assert fresh_plus_leak <= soft
    assert "it.grow" in " ".join(advice) and any(k.startswith("task_routes[") for k in advice)
    recycled = worker.events("memguard.child_recycled")
    assert evidence["recycles"] == len(recycled) >= 1


def test_advise_names_a_redelivery_loop(start_worker: StartWorker, broker_url: str, tmp_path: Path) -> None:
    worker = start_worker(broker_url, concurrency=2, conf={"imports": ["tests.integration.advise_tasks"],
                                                           "memguard_sample_interval": 0.5})
    counter = tmp_path / "deliveries"
    result = worker.send("at.explode", str(counter), 3)
    (outcome,) = worker.collect([result], timeout=120)
    assert outcome.state == "SUCCESS" and outcome.value == 4, outcome
    worker.stop()
    lost = worker.events("memguard.child_lost")
    assert [e["task_id"] for e in lost] == [result.id] * 3, lost

    proc = subprocess.run([sys.executable, "-m", "celery_memguard", "advise", "--format", "json",
                           str(worker.event_file)], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    (host,) = json.loads(proc.stdout)["hosts"]
    advice = {r["key"]: r for r in host["recommendations"]}
    loop = advice["at.explode.reject_on_worker_lost"]
    assert loop["value"] is False and loop["confidence"] == "high"
    assert f"{result.id} 3 times" in loop["evidence"][0] and "5641" in loop["note"]
    assert loop["config"].startswith("@app.task(acks_late=True, reject_on_worker_lost=False)")
