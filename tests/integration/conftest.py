"""Harness for the integration tests: real ``celery worker`` subprocesses against real brokers.

:func:`start_worker` (a fixture returning a factory) runs
``python -m celery -A tests.integration.proj worker`` in its own session (so its
whole process group can be killed), with the broker, the test's own queue and the
``memguard_*`` settings passed as environment variables (see
:mod:`tests.integration.proj`). MemGuard's events go as JSON lines to a file in
``tmp_path``. The factory returns once the worker is ready: ``memguard.started``
is in the event log and a no-op task made a round trip. Teardown stops every
worker it started (SIGTERM, wait, SIGKILL to the process group), checks that no
process of the group is left, and deletes the test's queue.

The ``broker_url`` fixture is parametrized over Redis and RabbitMQ and skips a
broker whose port is not reachable; results always go to Redis.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import psutil
import pytest
from celery import Celery
from celery.result import AsyncResult

from .proj import make_app

REPO = Path(__file__).resolve().parents[2]

REDIS_HOST, REDIS_PORT = "127.0.0.1", 6379
RABBIT_HOST, RABBIT_PORT = "127.0.0.1", 5672
#: Broker database (Redis) and result backend database; queues are unique per test, so sharing is safe.
REDIS_BROKER_URL = f"redis://{REDIS_HOST}:{REDIS_PORT}/13"
RABBIT_BROKER_URL = f"amqp://guest:guest@{RABBIT_HOST}:{RABBIT_PORT}//"
BACKEND_URL = f"redis://{REDIS_HOST}:{REDIS_PORT}/14"

#: Generous: the machine is shared with other jobs, and a worker's start is mostly imports.
READY_TIMEOUT = 60.0
STOP_TIMEOUT = 15.0


def port_open(host: str, port: int, timeout: float = 1.0) -> bool:
    """Whether something accepts TCP connections on ``host:port``."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def require_port(name: str, host: str, port: int) -> None:
    """Skip the calling test when the broker/backend ``name`` is not reachable."""
    if not port_open(host, port):
        pytest.skip(f"{name} is not reachable on {host}:{port} (start it with scripts/services.sh)")


def read_events(path: Path, name: str | None = None) -> list[dict[str, Any]]:
    """Every JSON event in ``path`` (non-JSON lines skipped), optionally only those named ``name``."""
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return []
    events: list[dict[str, Any]] = []
    for line in text.splitlines():
        line = line.strip()
        if not line.startswith("{"):
            continue
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if isinstance(event, dict) and (name is None or event.get("event") == name):
            events.append(event)
    return events


def wait_until(predicate: Callable[[], Any], timeout: float, interval: float = 0.1, what: str = "condition") -> Any:
    """Poll ``predicate`` until it returns something truthy; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def _tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "<missing>"


@dataclass
class Outcome:
    """A finished task as the client sees it."""

    task_id: str
    state: str
    value: Any
    traceback: str | None


@dataclass
class Worker:
    """One ``celery worker`` subprocess and a client app wired to the same broker, backend and queue."""

    proc: subprocess.Popen[bytes]
    env: dict[str, str]
    app: Celery
    queue: str
    pool: str
    concurrency: int
    event_file: Path
    stdout_path: Path
    stderr_path: Path
    known_pids: set[int] = field(default_factory=set)

    # -- events -----------------------------------------------------------
    def events(self, name: str | None = None) -> list[dict[str, Any]]:
        """MemGuard's JSON events so far (optionally only ``name``)."""
        return read_events(self.event_file, name)

    def report(self) -> dict[str, Any]:
        """``python -m celery_memguard report EVENTS --format json`` on this worker's event log, parsed."""
        proc = subprocess.run([sys.executable, "-m", "celery_memguard", "report", str(self.event_file),
                               "--format", "json"], cwd=REPO, capture_output=True, text=True, timeout=60)
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

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> None:
        """Wait until ``memguard.started`` is logged and a no-op task made a round trip."""
        self.wait_for_event("memguard.started", timeout)
        self.ping(timeout)

    def started_at(self) -> float:
        """Wall-clock time of ``memguard.started`` (the monitor starts right after it)."""
        return datetime.fromisoformat(self.wait_for_event("memguard.started")["ts"]).timestamp()

    def ping(self, timeout: float = 30.0) -> int:
        """Round-trip a no-op task; return the pid of the process that ran it."""
        (outcome,) = self.collect([self.send("it.ping")], timeout)
        assert outcome.state == "SUCCESS", outcome
        return int(outcome.value)

    # -- processes ------------------------------------------------------------
    def child_pids(self) -> set[int]:
        """Pids of the worker's live pool children (no zombies)."""
        try:
            children = psutil.Process(self.proc.pid).children()
        except psutil.NoSuchProcess:
            return set()
        live = set()
        for child in children:
            try:
                if child.status() != psutil.STATUS_ZOMBIE:
                    live.add(child.pid)
            except psutil.NoSuchProcess:
                pass
        return live

    def assert_alive(self) -> None:
        """Fail at once, with the worker's output, if the worker process has exited."""
        if self.proc.poll() is not None:
            pytest.fail(f"worker exited with status {self.proc.returncode}\n{self.diagnostics()}")

    def diagnostics(self) -> str:
        """The tails of the worker's stdout, stderr and event log, for failure messages."""
        return (f"--- worker stderr ---\n{_tail(self.stderr_path)}\n--- worker stdout ---\n{_tail(self.stdout_path)}"
                f"\n--- events ---\n{_tail(self.event_file, 60)}")

    def stop(self) -> None:
        """Stop the worker: SIGTERM (warm shutdown), then SIGKILL its whole process group; no process may remain."""
        pgid = self.proc.pid  # start_new_session=True: the worker leads its own process group
        try:
            self.known_pids |= {p.pid for p in psutil.Process(self.proc.pid).children(recursive=True)}
        except psutil.NoSuchProcess:
            pass
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        if self.proc.poll() is None:
            self.proc.wait(10)
        wait_until(lambda: not self._leftovers(pgid), 10,
                   what=f"the worker's processes to exit: {self._leftovers(pgid)}")

    def _leftovers(self, pgid: int) -> list[int]:
        left = []
        for pid in self.known_pids | {self.proc.pid}:
            try:
                proc = psutil.Process(pid)
                if proc.status() != psutil.STATUS_ZOMBIE and os.getpgid(pid) == pgid:
                    left.append(pid)
            except (psutil.NoSuchProcess, ProcessLookupError):
                pass
        return left


def worker_env(*, broker: str, queue: str, conf: dict[str, Any], memguard: bool = True,
               table_mib: int = 0) -> dict[str, str]:
    """The environment variables that configure :mod:`tests.integration.proj`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MG_")}
    env.update(
        MG_BROKER=broker,
        MG_BACKEND=BACKEND_URL,
        MG_QUEUE=queue,
        MG_CONF=json.dumps(conf),
        MG_MEMGUARD="1" if memguard else "0",
        MG_TABLE_MIB=str(table_mib),
        PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")])),
        PYTHONUNBUFFERED="1",
        PYTHONDONTWRITEBYTECODE="1",
    )
    return env


def worker_command(*, pool: str = "prefork", concurrency: int = 2, hostname: str = "it",
                   args: Iterable[str] = ()) -> list[str]:
    """The ``celery worker`` command line the harness runs (``args``: extra options, e.g. ``--autoscale=4,1``)."""
    return [
        sys.executable, "-m", "celery", "-A", "tests.integration.proj", "worker",
        f"--pool={pool}", "-c", str(concurrency), "-l", "warning", "-n", f"{hostname}@%h",
        "--without-gossip", "--without-mingle", "--without-heartbeat", *args,
    ]


StartWorker = Callable[..., Worker]


@pytest.fixture
def start_worker(tmp_path: Path) -> Iterator[StartWorker]:
    """Factory: ``start_worker(broker, conf=..., pool=..., concurrency=..., table_mib=..., memguard=..., ready=True,
    args=(), extra_env=...)`` (``args``: extra ``celery worker`` options; ``extra_env``: extra environment).

    ``conf`` is merged into ``app.conf`` after the harness's own
    ``memguard_log_format="json"`` and ``memguard_log_file`` (in ``tmp_path``). With
    ``ready=False`` it returns at once (for workers expected to refuse to start, or to
    queue tasks before the worker consumes anything; then call ``Worker.wait_ready()``).
    Every worker started is stopped, and its queue deleted, at teardown.
    """
    workers: list[Worker] = []

    def start(broker: str, *, conf: dict[str, Any] | None = None, pool: str = "prefork", concurrency: int = 2,
              table_mib: int = 0, memguard: bool = True, ready: bool = True, args: Iterable[str] = (),
              extra_env: dict[str, str] | None = None, wrapper: Iterable[str] = ()) -> Worker:
        require_port("Redis (result backend)", REDIS_HOST, REDIS_PORT)
        n = len(workers)
        name = f"mg-it-{uuid.uuid4().hex[:12]}"
        event_file = tmp_path / f"events-{n}.jsonl"
        full_conf = {"memguard_log_format": "json", "memguard_log_file": str(event_file), **(conf or {})}
        env = worker_env(broker=broker, queue=name, conf=full_conf, memguard=memguard, table_mib=table_mib)
        env.update(extra_env or {})
        stdout_path, stderr_path = tmp_path / f"worker-{n}.out", tmp_path / f"worker-{n}.err"
        client = make_app(env)
        client.control.purge()  # declares the test's queue and empties it
        with open(stdout_path, "wb") as out, open(stderr_path, "wb") as err:
            command = [*wrapper, *worker_command(pool=pool, concurrency=concurrency, hostname=name, args=args)]
            proc = subprocess.Popen(command,
                                    cwd=REPO, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                    start_new_session=True)
        worker = Worker(proc=proc, env=env, app=client, queue=name, pool=pool, concurrency=concurrency,
                        event_file=event_file, stdout_path=stdout_path, stderr_path=stderr_path)
        workers.append(worker)
        if ready:
            worker.wait_ready()
        return worker

    yield start

    failures: list[BaseException] = []
    for worker in reversed(workers):
        try:
            worker.stop()
        except BaseException as exc:  # stop the others anyway, then report the first failure
            failures.append(exc)
        finally:
            _delete_queue(worker)
            worker.app.close()
    if failures:
        raise failures[0]


def _delete_queue(worker: Worker) -> None:
    """Remove the test's queue and exchange (and kombu's Redis binding keys) so nothing leaks into the broker."""
    try:
        with worker.app.connection_for_write() as conn:
            channel = conn.default_channel
            channel.queue_delete(worker.queue)
            try:
                channel.exchange_delete(worker.queue)
            except Exception:
                pass
        broker = worker.env["MG_BROKER"]
        if broker.startswith("redis://"):
            import redis

            client = redis.Redis.from_url(broker)
            try:
                keys = list(client.scan_iter(match=f"*{worker.queue}*"))
                if keys:
                    client.delete(*keys)
            finally:
                client.close()
    except Exception:
        pass  # the broker went away; nothing to clean up there


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
