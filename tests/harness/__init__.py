"""The integration harness: real ``celery worker`` subprocesses, their events, their stop, their cgroup.

One harness for the integration tests (``tests/integration/conftest.py`` is thin fixtures over
it) and for the benchmarks (``benchmarks/*.py``, run as ``python benchmarks/bench_x.py``, put the
repository on ``sys.path`` and import it from here). It imports nothing of pytest: waits that run
out and workers that exit raise ``AssertionError`` subclasses with the worker's output.

- :mod:`~tests.harness.brokers`: broker and backend URLs, reachability, queue deletion, Redis DB flush.
- :mod:`~tests.harness.events`: reading the JSON event log, waiting for a condition, file tails.
- :mod:`~tests.harness.processes`: a worker subprocess in its own session: launch, readiness, children,
  CPU time, and the stop (SIGTERM, then SIGKILL to the process group, then a check that nothing is left).
- :mod:`~tests.harness.workers`: workers of the test project (``tests.integration.proj``): command and
  environment, launch and readiness, a client to send tasks and collect outcomes.
- :mod:`~tests.harness.cgroups`: a memory cgroup (v1 or v2) with a limit for a worker to run in.
"""

from .brokers import (BACKEND_URL, FILESYSTEM_TRANSPORT, RABBIT_BROKER_URL, RABBIT_HOST, RABBIT_PORT, REDIS_BROKER_URL, REDIS_HOST,
                      REDIS_PORT, delete_queue, filesystem_broker, flush_db, free_ports, port_open, redis_up)
from .cgroups import CgroupUnavailable, MemoryCgroup
from .events import HarnessTimeout, read_events, tail, wait_until
from .processes import STOP_TIMEOUT, WorkerExited, WorkerProcess
from .workers import PROJECT, READY_TIMEOUT, REPO, Outcome, Worker, launch_worker, worker_command, worker_env

__all__ = [
    "BACKEND_URL", "RABBIT_BROKER_URL", "RABBIT_HOST", "RABBIT_PORT", "REDIS_BROKER_URL", "REDIS_HOST", "REDIS_PORT",
    "FILESYSTEM_TRANSPORT", "filesystem_broker", "delete_queue", "flush_db", "free_ports", "port_open", "redis_up", "CgroupUnavailable", "MemoryCgroup", "HarnessTimeout",
    "read_events", "tail", "wait_until", "STOP_TIMEOUT", "WorkerExited", "WorkerProcess", "PROJECT",
    "READY_TIMEOUT", "REPO", "Outcome", "Worker", "launch_worker", "worker_command", "worker_env",
]
