"""Configuration where Celery users expect it, on real workers (issue 8.4).

* ``celery worker --memguard-soft-limit 100MiB ...`` overrides ``app.conf`` (a soft recycle
  happens at the command line's limit, not the configured one); a bad value stops the
  worker with the same one-line ``Error:`` as a bad setting, naming key and option.
* Django-style ``config_from_object(settings, namespace="CELERY")``:
  ``CELERY_MEMGUARD_SOFT_LIMIT`` is read; a typo under the namespace, or an upper-case
  ``MEMGUARD_*`` key Celery never passes on, stops the worker naming the key.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from .conftest import REPO, StartWorker, worker_env

EXIT_TIMEOUT = 30.0
RETAIN_MIB = 30


def recycle_some(worker: object, tasks: int = 8) -> None:
    outcomes = worker.collect([worker.send("it.retain", RETAIN_MIB, 0.05) for _ in range(tasks)],  # type: ignore[attr-defined]
                              timeout=120)
    assert [o.state for o in outcomes] == ["SUCCESS"] * tasks, [(o.state, o.traceback) for o in outcomes]


def test_command_line_options_override_app_conf(start_worker: StartWorker, redis_url: str) -> None:
    worker = start_worker(redis_url, conf={"memguard_soft_limit": "4GiB", "memguard_hard_limit": "8GiB"},
                          args=["--memguard-soft-limit", "100MiB", "--memguard-hard-limit=none",
                                      "--memguard-poll-interval", "0.1", "--memguard-dry-run=no"])
    started = worker.events("memguard.started")[0]
    assert (started["soft_limit_mib"], started["hard_limit_mib"], started["poll_interval"]) == (100.0, None, 0.1)
    recycle_some(worker)
    recycled = worker.wait_for_event("memguard.child_recycled")
    assert (recycled["reason"], recycled["limit_mib"]) == ("soft_limit", 100.0)


def test_bad_command_line_value_stops_the_worker_cleanly(start_worker: StartWorker, redis_url: str) -> None:
    worker = start_worker(redis_url, args=["--memguard-hard-limit", "lots"], ready=False)
    status = worker.proc.wait(EXIT_TIMEOUT)
    stderr = worker.stderr_path.read_text(errors="replace")
    assert status != 0
    assert ("Error: celery-memguard: invalid memguard_hard_limit (given as --memguard-hard-limit)='lots': expected"
            in stderr), stderr
    assert "Traceback" not in stderr, stderr
    assert worker.events("memguard.started") == []


def test_options_are_listed_in_worker_help() -> None:
    env = worker_env(broker="redis://127.0.0.1:6379/13", queue="help", conf={})
    proc = subprocess.run([sys.executable, "-m", "celery", "-A", "tests.integration.proj", "worker", "--help"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "MemGuard Options" in proc.stdout and "--memguard-soft-limit" in proc.stdout
    assert "--memguard-max-child-tasks" in proc.stdout


def test_django_namespace_keys_are_read(start_worker: StartWorker, redis_url: str) -> None:
    namespaced = {"CELERY_MEMGUARD_SOFT_LIMIT": "100MiB", "CELERY_MEMGUARD_POLL_INTERVAL": 0.1}
    worker = start_worker(redis_url, extra_env={"MG_NAMESPACED_CONF": json.dumps(namespaced)})
    assert worker.events("memguard.started")[0]["soft_limit_mib"] == 100.0
    recycle_some(worker)
    assert worker.wait_for_event("memguard.child_recycled")["limit_mib"] == 100.0


@pytest.mark.parametrize(("key", "value"), [("CELERY_MEMGUARD_SOFT_LIMT", "100MiB"), ("MEMGUARD_SOFT_LIMIT", "100MiB"),
                                            ("CELERY_MEMGUARD_SOFT_LIMIT", "lots")])
def test_django_namespace_typos_stop_the_worker(start_worker: StartWorker, redis_url: str, key: str,
                                                value: str) -> None:
    """A typo, a key Celery never passes on, or a bad value: the one-line error names the key as written."""
    worker = start_worker(redis_url, extra_env={"MG_NAMESPACED_CONF": json.dumps({key: value})}, ready=False)
    status = worker.proc.wait(EXIT_TIMEOUT)
    stderr = worker.stderr_path.read_text(errors="replace")
    assert status != 0
    assert f"Error: celery-memguard: invalid {key}={value!r}: expected" in stderr, stderr
    assert "Traceback" not in stderr, stderr
