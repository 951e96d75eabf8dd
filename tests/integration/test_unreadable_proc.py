"""An unreadable ``/proc/PID/smaps_rollup`` (issue 13.4), on a real prefork worker.

The children make themselves non-dumpable at start (:mod:`tests.integration.undumpable`), and the
worker runs without ``CAP_SYS_PTRACE`` (as root, under ``setpriv`` with every capability dropped; as
another user it has none anyway), so the master cannot read their USS. The soft limit (40 MiB) lies
between a fresh child's USS (~25 MiB) and its RSS (~50 MiB): acting on RSS as if it were USS
recycled every fresh child at birth, forever (18 recycles against 1 in the issue's run).

Now: no child is recycled while idle; ``memguard.metric_unavailable`` is logged once, with the fix;
a task growing past the hard limit is still stopped, and both ``memguard.task_killed`` and the
task's ``MemoryLimitExceeded`` say the metric compared was ``rss``; every other task succeeds.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest

from celery_memguard import MemoryLimitExceeded

from .conftest import StartWorker

MODULE = "tests.integration.undumpable"
HARD_LIMIT_MIB = 300


def _without_ptrace() -> list[str]:
    if os.geteuid() != 0:
        return []  # an ordinary user cannot read a non-dumpable process's smaps_rollup
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("running as root and setpriv (util-linux) is missing: cannot drop CAP_SYS_PTRACE")
    return [setpriv, "--bounding-set=-all", "--inh-caps=-all"]


def test_unreadable_uss_falls_back_to_rss_honestly(start_worker: StartWorker, redis_url: str, tmp_path: Path) -> None:
    worker = start_worker(redis_url, concurrency=2, wrapper=_without_ptrace(), conf={
        "imports": [MODULE], "memguard_soft_limit": "40MiB", "memguard_hard_limit": f"{HARD_LIMIT_MIB}MiB",
        "memguard_poll_interval": 0.1,
    })
    pings = [worker.send("it.ping", 0.05) for _ in range(20)]
    assert [o.state for o in worker.collect(pings)] == ["SUCCESS"] * len(pings)
    time.sleep(5)  # idle: were fresh children recycled at birth, there would be dozens of recycles by now
    (unavailable,) = worker.events("memguard.metric_unavailable")
    assert unavailable["metric"] == "uss" and unavailable["used"] == "rss", unavailable
    assert "CAP_SYS_PTRACE" in unavailable["fix"] and "PR_SET_DUMPABLE" in unavailable["fix"], unavailable
    assert worker.events("memguard.child_recycled") == []

    peak_file = tmp_path / "peak.json"
    grower = worker.send("it.grow", 50, 3 * HARD_LIMIT_MIB, str(peak_file))
    others = [worker.send("it.ping", 0.05) for _ in range(20)]
    (grown,) = worker.collect([grower], timeout=90)
    assert grown.state == "FAILURE" and isinstance(grown.value, MemoryLimitExceeded), (grown, worker.diagnostics())
    assert "(rss)" in str(grown.value), grown.value
    (killed,) = worker.events("memguard.task_killed")
    assert killed["task_id"] == grower.id and killed["metric"] == "rss", killed
    assert [o.state for o in worker.collect(others)] == ["SUCCESS"] * len(others)
    assert len(worker.events("memguard.metric_unavailable")) == 1
    assert [e for e in worker.events("memguard.child_recycled") if e["reason"] != "hard_limit"] == []
    assert worker.events("memguard.error") == []
