"""A worker with an invalid ``memguard_*`` setting refuses to start, saying which key, which value, and why."""

from __future__ import annotations

import pytest

from .conftest import StartWorker

EXIT_TIMEOUT = 30.0  # a bound against hanging, not a timing assertion: the worker exits during its start-up


@pytest.mark.parametrize(("key", "value"), [("memguard_hard_limit", "lots"), ("memguard_metric", "vss")])
def test_invalid_setting_stops_the_worker_with_a_clear_message(start_worker: StartWorker, redis_url: str,
                                                               key: str, value: str) -> None:
    """The worker exits non-zero before consuming anything; stderr names the key, the value and what is expected."""
    worker = start_worker(redis_url, conf={key: value}, ready=False)

    status = worker.proc.wait(EXIT_TIMEOUT)

    stderr = worker.stderr_path.read_text(errors="replace")
    assert status != 0, worker.diagnostics()
    assert key in stderr and repr(value) in stderr and "expected" in stderr, stderr
    assert "Traceback" not in stderr, stderr
    assert worker.events("memguard.started") == []
