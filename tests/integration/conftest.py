"""Fixtures for the integration tests: real ``celery worker`` subprocesses against real brokers.

Thin fixtures over :mod:`tests.harness` (which the benchmarks share). :func:`start_worker` (a
fixture returning a factory) runs ``python -m celery -A tests.integration.proj worker`` in its
own session (so its whole process group can be killed), with the broker, the test's own queue
and the ``memguard_*`` settings passed as environment variables (see
:mod:`tests.integration.proj`). MemGuard's events go as JSON lines to a file in ``tmp_path``.
The factory returns once the worker is ready: ``memguard.started`` is in the event log and a
no-op task made a round trip. Teardown kills every worker it started that is still running
(SIGKILL to its process group: a test that cares how its worker ends stops it itself, with
``Worker.stop()``'s warm shutdown), checks that no process of the group is left, and deletes the
test's queue.

The ``broker_url`` fixture is parametrized over Redis and RabbitMQ and skips a broker whose
port is not reachable; results always go to Redis. ``memory_cgroup`` gives a fresh memory
cgroup (skipping where none can be made).

The harness's names are re-exported here, so tests import them ``from .conftest``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from tests.harness import (BACKEND_URL, RABBIT_BROKER_URL, RABBIT_HOST, RABBIT_PORT, READY_TIMEOUT,
                           REDIS_BROKER_URL, REDIS_HOST, REDIS_PORT, REPO, STOP_TIMEOUT, CgroupUnavailable,
                           MemoryCgroup, Outcome, Worker, delete_queue, launch_worker, port_open, read_events,
                           wait_until, worker_command, worker_env)

__all__ = [
    "BACKEND_URL", "RABBIT_BROKER_URL", "RABBIT_HOST", "RABBIT_PORT", "READY_TIMEOUT", "REDIS_BROKER_URL",
    "REDIS_HOST", "REDIS_PORT", "REPO", "STOP_TIMEOUT", "Outcome", "StartWorker", "Worker", "read_events",
    "require_port", "wait_until", "worker_command", "worker_env",
]


def require_port(name: str, host: str, port: int) -> None:
    """Skip the calling test when the broker/backend ``name`` is not reachable."""
    if not port_open(host, port):
        pytest.skip(f"{name} is not reachable on {host}:{port} (start it with scripts/services.sh)")


def _delete_queue(worker: Any) -> None:
    """Remove a worker's queue (anything with ``app``, ``queue`` and ``env["MG_BROKER"]``) from its broker."""
    delete_queue(worker.app, worker.queue, worker.env["MG_BROKER"])


StartWorker = Callable[..., Worker]


@pytest.fixture
def start_worker(tmp_path: Path) -> Iterator[StartWorker]:
    """Factory: ``start_worker(broker, conf=..., pool=..., concurrency=..., table_mib=..., memguard=..., ready=True,
    args=(), extra_env=..., wrapper=())`` (``args``: extra ``celery worker`` options; ``extra_env``: extra
    environment; ``wrapper``: a command prefix, e.g. ``MemoryCgroup.join_command()``).

    ``conf`` is merged into ``app.conf`` after the harness's own
    ``memguard_log_format="json"`` and ``memguard_log_file`` (in ``tmp_path``). With
    ``ready=False`` it returns at once (for workers expected to refuse to start, or to
    queue tasks before the worker consumes anything; then call ``Worker.wait_ready()``).
    Every worker started is killed (process group), and its queue deleted, at teardown.
    """
    workers: list[Worker] = []

    def start(broker: str, *, ready: bool = True, **options: Any) -> Worker:
        require_port("Redis (result backend)", REDIS_HOST, REDIS_PORT)
        worker = launch_worker(tmp_path, broker, tag=str(len(workers)), ready=False, **options)
        workers.append(worker)
        if ready:
            worker.wait_ready()
        return worker

    yield start

    failures: list[BaseException] = []
    for worker in reversed(workers):
        try:
            # The test is over: its assertions about shutdown (test_shutdown.py, Worker.stop() in a test) are made;
            # a warm shutdown here would only add Celery's 2-3 s per worker.
            worker.close(warm=False)
        except BaseException as exc:  # stop the others anyway, then report the first failure
            failures.append(exc)
    if failures:
        raise failures[0]


@pytest.fixture(params=["redis", "rabbitmq"])
def broker_url(request: pytest.FixtureRequest) -> str:
    """The broker URL, once per broker; skips a broker that is not reachable."""
    if request.param == "redis":
        require_port("Redis", REDIS_HOST, REDIS_PORT)
        return REDIS_BROKER_URL
    require_port("RabbitMQ", RABBIT_HOST, RABBIT_PORT)
    return RABBIT_BROKER_URL


@pytest.fixture
def redis_url() -> str:
    """The Redis broker URL, for scenarios one broker proves; skips when Redis is not reachable."""
    require_port("Redis", REDIS_HOST, REDIS_PORT)
    return REDIS_BROKER_URL


def make_memory_cgroup(limit: int, versions: tuple[int, ...] = (1, 2)) -> Iterator[MemoryCgroup]:
    """A fresh memory cgroup limited to ``limit`` bytes (skipping the test where none can be made); removed after.

    For fixtures: ``yield from make_memory_cgroup(600 * MiB, versions=(1,))``. Stop the workers in it first
    (``start_worker``'s teardown runs before a fixture the test requested ahead of it is finalized).
    """
    try:
        cgroup = MemoryCgroup.create(limit, versions=versions)
    except CgroupUnavailable as exc:
        pytest.skip(str(exc))
    with cgroup:
        yield cgroup
