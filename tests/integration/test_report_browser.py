"""memguard.sample on a real prefork worker, and its HTML report rendered in headless Chromium.

A worker with ``memguard_sample_interval`` 0.5 s runs a leaking task until the soft limit recycles
its children (and a runaway task into the hard limit): the samples must name the live children by
pool slot, with memory, RSS and task counts, the master and the pool total; the HTML report of the
run must render in Chromium (``scripts/browser_check.py``: charts in the DOM, no console error,
the charts' colours in the screenshot, saved as ``report.png`` beside the log). Without Chromium the
browser part is skipped with the reason (``scripts/test.sh`` installs Debian's ``chromium`` where
apt-get is available).
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import REPO, StartWorker, wait_until

pytestmark = pytest.mark.integration

SOFT, HARD, POLL, SAMPLE = 100, 300, 0.2, 0.5


def _browser_check() -> object:
    spec = importlib.util.spec_from_file_location("browser_check", REPO / "scripts" / "browser_check.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_samples_and_html_report_of_a_real_run(start_worker: StartWorker, redis_url: str, tmp_path: Path) -> None:
    worker = start_worker(redis_url, concurrency=2, conf={
        "memguard_soft_limit": f"{SOFT}MiB", "memguard_hard_limit": f"{HARD}MiB",
        "memguard_poll_interval": POLL, "memguard_sample_interval": SAMPLE})
    first = worker.wait_for_event("memguard.sample", timeout=60)
    assert worker.events("memguard.started")[0]["sample_interval"] == SAMPLE
    children = worker.child_pids()
    assert {c["pid"] for c in first["children"]} <= children | worker.known_pids, (first, children)
    assert sorted(c["slot"] for c in first["children"]) == [0, 1], first
    for child in first["children"]:
        assert child["mem_mib"] > 0 and child["rss_mib"] >= child["mem_mib"] and child["tasks"] >= 0, child
    assert first["metric"] == "uss"
    assert abs(first["pool_mib"] - sum(c["mem_mib"] for c in first["children"])) < 0.1, first

    results = [worker.send("it.retain", 20, 0.05) for _ in range(16)]
    outcomes = worker.collect(results, timeout=120)
    assert [o.state for o in outcomes] == ["SUCCESS"] * 16
    wait_until(lambda: worker.events("memguard.child_recycled"), 30, what="a soft recycle")
    count = len(worker.events("memguard.sample"))
    wait_until(lambda: len(worker.events("memguard.sample")) >= count + 4, 30, what="four more samples")
    samples = worker.events("memguard.sample")
    # About one sample per interval (polls may be stretched while idle, never more often than the interval).
    assert len(samples) >= 5
    masters = [s["master_mib"] for s in samples if s["master_mib"] is not None]
    assert masters and all(m > 0 for m in masters), samples[-1]
    assert max(c["tasks"] for s in samples for c in s["children"]) >= 1

    page = tmp_path / "report.html"
    done = subprocess.run([sys.executable, "-m", "celery_memguard", "report", "--format", "html", "-o", str(page),
                           str(worker.event_file)], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    html = page.read_text()
    assert 'class="marker recycle"' in html and html.count('class="chart mini"') >= 2

    check = _browser_check()
    if check.chromium() is None:  # type: ignore[attr-defined]
        pytest.skip("no Chromium at /usr/bin/chromium (scripts/test.sh installs Debian's chromium with apt-get)")
    ok, lines = check.check(page, tmp_path / "report.png", height=1400)  # type: ignore[attr-defined]
    assert ok, "\n".join(lines)
    assert (tmp_path / "report.png").stat().st_size > 10_000
