"""Workers of the test project (``celery -A tests.integration.proj worker``) and a client wired to each.

:func:`launch_worker` builds the environment that configures :mod:`tests.integration.proj`
(broker, backend, the worker's own queue, ``memguard_*`` settings with JSON events to a file),
starts the worker as a :class:`~tests.harness.processes.WorkerProcess` and, unless told not
to, waits until it is ready: ``memguard.started`` is in the event log and a no-op task made a
round trip. The :class:`Worker` it returns sends tasks to that queue, collects their outcomes,
reads the events, and stops the worker (process group included) and deletes its queue on
:meth:`Worker.close`. The integration tests' ``start_worker`` fixture and the benchmarks that
run the test project's scenarios use it alike.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

from celery import Celery
from celery.result import AsyncResult

from .brokers import BACKEND_URL, delete_queue
from .events import read_events, tail, wait_until
from .processes import WorkerProcess

REPO = Path(__file__).resolve().parents[2]
#: The Celery app every test worker loads.
PROJECT = "tests.integration.proj"
#: Generous: the machine is shared with other jobs, and a worker's start is mostly imports.
READY_TIMEOUT = 60.0


def worker_env(*, broker: str, queue: str, conf: dict[str, Any], memguard: bool = True, table_mib: int = 0,
               backend: str = BACKEND_URL) -> dict[str, str]:
    """The environment variables that configure :mod:`tests.integration.proj` (this process's, ``MG_*`` replaced)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MG_")}
    env.update(
        MG_BROKER=broker,
        MG_BACKEND=backend,
        MG_QUEUE=queue,
        MG_CONF=json.dumps(conf),
        MG_MEMGUARD="1" if memguard else "0",
        MG_TABLE_MIB=str(table_mib),
        PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")])),
        PYTHONUNBUFFERED="1",
        PYTHONDONTWRITEBYTECODE="1",
    )
    return env


def worker_command(*, app: str = PROJECT, pool: str = "prefork", concurrency: int = 2, hostname: str = "it",
                   loglevel: str = "warning", args: Iterable[str] = ()) -> list[str]:
    """The ``celery worker`` command line (``args``: extra options, e.g. ``--autoscale=4,1`` or ``-Q bench``)."""
    return [
        sys.executable, "-m", "celery", "-A", app, "worker",
        f"--pool={pool}", "-c", str(concurrency), "-l", loglevel, "-n", f"{hostname}@%h",
        "--without-gossip", "--without-mingle", "--without-heartbeat", *args,
    ]


@dataclass
class Outcome:
    """A finished task as the client sees it."""

    task_id: str
    state: str
    value: Any
    traceback: str | None


@dataclass
class Worker:
    """One test-project worker subprocess and a client app wired to the same broker, backend and queue."""

    process: WorkerProcess
    env: dict[str, str]
    app: Celery
    queue: str
    pool: str
    concurrency: int
    event_file: Path

    # -- the process ----------------------------------------------------------
    @property
    def proc(self) -> subprocess.Popen[bytes]:
        return self.process.proc

    @property
    def stdout_path(self) -> Path:
        return self.process.stdout_path

    @property
    def stderr_path(self) -> Path:
        return self.process.stderr_path

    @property
    def known_pids(self) -> set[int]:
        return self.process.known_pids

    def child_pids(self) -> set[int]:
        """Pids of the worker's live pool children (no zombies)."""
        return self.process.child_pids()

    def assert_alive(self) -> None:
        """Fail at once, with the worker's output, if the worker process has exited."""
        self.process.assert_running(self.diagnostics)

    def diagnostics(self) -> str:
        """The tails of the worker's stderr, stdout and event log, for failure messages."""
        return f"{self.process.output()}\n--- events ---\n{tail(self.event_file, 60)}"

    def stop(self) -> None:
        """Stop the worker: SIGTERM (warm shutdown), then SIGKILL its whole process group; no process may remain."""
        self.process.stop()

    def close(self, *, warm: bool = True) -> None:
        """Stop the worker, then delete its queue and close the client (also when the stop failed).

        ``warm=False``: no warm shutdown first, the process group is SIGKILLed at once (see
        :meth:`WorkerProcess.stop`); the check that no process is left is the same.
        """
        try:
            self.process.stop(warm=warm)
        finally:
            delete_queue(self.app, self.queue, self.env["MG_BROKER"])
            self.app.close()

    def __enter__(self) -> "Worker":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- events -----------------------------------------------------------
    def events(self, name: str | None = None) -> list[dict[str, Any]]:
        """MemGuard's JSON events so far (optionally only ``name``)."""
        return read_events(self.event_file, name)

    def report(self, timeout: float = 60.0) -> dict[str, Any]:
        """``python -m celery_memguard report EVENTS --format json`` on this worker's event log, parsed."""
        proc = subprocess.run([sys.executable, "-m", "celery_memguard", "report", str(self.event_file),
                               "--format", "json"], cwd=REPO, capture_output=True, text=True, timeout=timeout)
        assert proc.returncode == 0, proc.stderr
        report: dict[str, Any] = json.loads(proc.stdout)
        return report

    def wait_for_event(self, name: str, timeout: float = 30.0,
                       where: Callable[[dict[str, Any]], bool] = lambda e: True) -> dict[str, Any]:
        """The first ``name`` event matching ``where``, waiting up to ``timeout`` seconds."""
        def find() -> dict[str, Any] | None:
            self.assert_alive()
            return next((e for e in self.events(name) if where(e)), None)

        event: dict[str, Any] = wait_until(find, timeout, what=f"event {name}\n{self.diagnostics()}")
        return event

    def started_at(self) -> float:
        """Wall-clock time of ``memguard.started`` (the monitor starts right after it)."""
        return datetime.fromisoformat(self.wait_for_event("memguard.started")["ts"]).timestamp()

    # -- tasks --------------------------------------------------------------
    def send(self, task: str, *args: Any, **kwargs: Any) -> AsyncResult:
        """Send ``task`` to this worker's queue."""
        return self.app.send_task(task, args=args, kwargs=kwargs, queue=self.queue)

    def send_at(self, when: float, task: str, *args: Any, **kwargs: Any) -> AsyncResult:
        """Send ``task`` to this worker's queue with an ETA: it starts at wall-clock time ``when``."""
        eta = datetime.fromtimestamp(when, tz=timezone.utc)
        return self.app.send_task(task, args=args, kwargs=kwargs, queue=self.queue, eta=eta)

    def collect(self, results: Iterable[AsyncResult], timeout: float = 60.0) -> list[Outcome]:
        """Wait for every result (never raising the task's exception) and return the outcomes in order."""
        deadline = time.monotonic() + timeout
        outcomes = []
        for result in results:
            remaining = max(1.0, deadline - time.monotonic())
            try:
                result.get(timeout=remaining, propagate=False, interval=0.05)
            except Exception as exc:  # a timeout: say which task and show the worker's state
                raise AssertionError(f"task {result.id} did not finish: {exc!r}\n{self.diagnostics()}") from exc
            outcomes.append(Outcome(result.id, result.state, result.result, result.traceback))
        return outcomes

    def run(self, calls: Sequence[tuple[str, tuple[Any, ...]]], timeout: float = 600.0) -> list[Any]:
        """Send ``calls`` (name, args) at once and wait for all; returns their values (a failed call raises)."""
        outcomes = self.collect([self.send(name, *args) for name, args in calls], timeout)
        failed = [o for o in outcomes if o.state != "SUCCESS"]
        if failed:
            raise AssertionError(f"{len(failed)} of {len(outcomes)} tasks failed, first: {failed[0]}")
        return [o.value for o in outcomes]

    def ping(self, timeout: float = 30.0) -> int:
        """Round-trip a no-op task; return the pid of the process that ran it."""
        (outcome,) = self.collect([self.send("it.ping")], timeout)
        assert outcome.state == "SUCCESS", outcome
        return int(outcome.value)

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> None:
        """Wait until ``memguard.started`` is logged and a no-op task made a round trip."""
        self.wait_for_event("memguard.started", timeout)
        self.ping(timeout)


def launch_worker(run_dir: Path, broker: str, *, tag: str = "0", conf: Mapping[str, Any] | None = None,
                  pool: str = "prefork", concurrency: int = 2, table_mib: int = 0, memguard: bool = True,
                  ready: bool = True, args: Iterable[str] = (), extra_env: Mapping[str, str] | None = None,
                  wrapper: Sequence[str] = (), backend: str = BACKEND_URL) -> Worker:
    """Start a test-project worker on a queue of its own, its files in ``run_dir`` named after ``tag``.

    ``conf`` is merged into ``app.conf`` after ``memguard_log_format="json"`` and ``memguard_log_file``
    (``events-TAG.jsonl``); ``args`` are extra ``celery worker`` options; ``wrapper`` goes before the command
    (e.g. :meth:`~tests.harness.cgroups.MemoryCgroup.join_command`). With ``ready=False`` it returns at once
    (then call :meth:`Worker.wait_ready`); a worker that does not get ready is closed before the error is raised.
    """
    from tests.integration.proj import make_app  # the driver imports the project (and memguard) only here

    queue = f"mg-it-{uuid.uuid4().hex[:12]}"
    event_file = run_dir / f"events-{tag}.jsonl"
    full_conf = {"memguard_log_format": "json", "memguard_log_file": str(event_file), **(conf or {})}
    env = worker_env(broker=broker, queue=queue, conf=full_conf, memguard=memguard, table_mib=table_mib,
                     backend=backend)
    env.update(extra_env or {})
    client = make_app(env)
    client.control.purge()  # declares the worker's queue and empties it
    command = [*wrapper, *worker_command(pool=pool, concurrency=concurrency, hostname=queue, args=args)]
    process = WorkerProcess.launch(command, env=env, cwd=REPO, stdout_path=run_dir / f"worker-{tag}.out",
                                   stderr_path=run_dir / f"worker-{tag}.err")
    worker = Worker(process=process, env=env, app=client, queue=queue, pool=pool, concurrency=concurrency,
                    event_file=event_file)
    if ready:
        try:
            worker.wait_ready()
        except BaseException:
            worker.close(warm=False)
            raise
    return worker
