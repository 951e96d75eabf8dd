"""Where MemGuard's events go on real workers, and that no log target can kill or hang a worker (issues 8.3, 13.5).

* ``celery worker --detach`` (standard error is /dev/null): with ``--logfile`` the events
  are in the worker's log file; without it, in ``memguard-<node>.log`` in the worker's
  ``--workdir``. A soft recycle's ``memguard.child_recycled`` is there.
* The event log renamed mid-run (logrotate): later events land in a new file at the path.
* ``memguard_log_target = "both"`` / ``"logging"``: a ``logging`` handler configured by the
  project receives the very same lines (the report reads them).
* Bad targets: a missing directory, a directory, a path under a regular file stop the
  worker with the one-line ``Error:``; a FIFO nobody reads and ``/dev/full`` never block
  it: tasks and recycles go on, dropped events are counted in the status reply, and
  ``/dev/full`` prints one warning on standard error.
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
from pathlib import Path
from typing import Any, Iterator

import psutil
import pytest

from .conftest import (REPO, REDIS_HOST, REDIS_PORT, StartWorker, Worker, _delete_queue, read_events,
                       require_port, wait_until, worker_command, worker_env)
from .proj import make_app

SOFT_LIMIT_MIB = 100
RETAIN_MIB = 30
POLL = 0.1
SOFT = {"memguard_soft_limit": f"{SOFT_LIMIT_MIB}MiB", "memguard_poll_interval": POLL}
REMOTE = {"worker_enable_remote_control": True}
EXIT_TIMEOUT = 30.0


def recycle_some(worker: Any, tasks: int = 8) -> None:
    """Run enough leaking tasks that children cross the soft limit; every task must succeed."""
    outcomes = worker.collect([worker.send("it.retain", RETAIN_MIB, 0.05) for _ in range(tasks)], timeout=120)
    assert [o.state for o in outcomes] == ["SUCCESS"] * tasks, [(o.state, o.traceback) for o in outcomes]


# -- detached workers ----------------------------------------------------------------------------------------
class Detached:
    """A ``celery worker --detach`` and a client app on its queue (duck-types the harness Worker for tasks)."""

    def __init__(self, tmp_path: Path, broker: str, conf: dict[str, Any], logfile: bool) -> None:
        self.queue = f"mg-it-{uuid.uuid4().hex[:12]}"
        self.tmp = tmp_path
        self.pidfile = tmp_path / "worker.pid"
        self.logfile = tmp_path / "worker.log" if logfile else None
        self.env = worker_env(broker=broker, queue=self.queue, conf={"memguard_log_format": "json", **conf})
        self.app = make_app(self.env)
        self.app.control.purge()
        command = worker_command(concurrency=2, hostname=self.queue)
        # `celery --workdir DIR`: the detached worker keeps that working directory.
        args = command[:3] + [f"--workdir={tmp_path}"] + command[3:] + ["--detach", f"--pidfile={self.pidfile}"]
        if self.logfile is not None:
            args.append(f"--logfile={self.logfile}")
        launcher = subprocess.run(args, cwd=REPO, env=self.env, capture_output=True, timeout=60)
        assert launcher.returncode == 0, launcher
        try:
            self.pid = int(wait_until(self._pid, 60, what="the detached worker's pidfile"))
            self.pgid = os.getpgid(self.pid)
        except BaseException:
            self._kill_strays()
            raise

    def _kill_strays(self) -> None:
        """No pidfile: kill, by pid, the processes of this test's own worker (its unique queue is on their command line)."""
        for proc in psutil.process_iter(["pid", "cmdline"]):
            if any(self.queue in part for part in proc.info["cmdline"] or ()):
                try:
                    os.kill(proc.info["pid"], signal.SIGKILL)
                except ProcessLookupError:
                    pass
        _delete_queue(self)  # type: ignore[arg-type]
        self.app.close()

    def _pid(self) -> int | None:
        try:
            text = self.pidfile.read_text().strip()
        except FileNotFoundError:
            return None
        return int(text) if text.isdigit() else None

    def send(self, task: str, *args: Any) -> Any:
        return self.app.send_task(task, args=args, queue=self.queue)

    def collect(self, results: list[Any], timeout: float = 60.0) -> list[Any]:
        from .conftest import Outcome

        deadline = time.monotonic() + timeout
        out = []
        for result in results:
            result.get(timeout=max(1.0, deadline - time.monotonic()), propagate=False, interval=0.05)
            out.append(Outcome(result.id, result.state, result.result, result.traceback))
        return out

    def stop(self) -> None:
        try:
            os.kill(self.pid, signal.SIGTERM)
            wait_until(lambda: not psutil.pid_exists(self.pid) or
                       psutil.Process(self.pid).status() == psutil.STATUS_ZOMBIE, 20, what="the worker to exit")
        except (ProcessLookupError, psutil.NoSuchProcess):
            pass
        finally:
            try:
                os.killpg(self.pgid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            _delete_queue(self)  # type: ignore[arg-type]
            self.app.close()


@pytest.fixture
def detached(tmp_path: Path) -> Iterator[Any]:
    started: list[Detached] = []

    def start(broker: str, conf: dict[str, Any], logfile: bool) -> Detached:
        require_port("Redis (result backend)", REDIS_HOST, REDIS_PORT)
        worker = Detached(tmp_path, broker, conf, logfile)
        started.append(worker)
        return worker

    yield start
    for worker in started:
        worker.stop()


@pytest.mark.parametrize("logfile", [True, False], ids=["with-logfile", "without-logfile"])
def test_detached_worker_events_reach_a_file(detached: Any, redis_url: str, tmp_path: Path, logfile: bool) -> None:
    """Standard error is /dev/null: events go to --logfile, else memguard-<node>.log in the workdir."""
    worker = detached(redis_url, SOFT, logfile)
    target = worker.logfile if logfile else tmp_path / f"memguard-{worker.queue}.log"
    started = wait_until(lambda: read_events(target, "memguard.started"), 60,
                         what=f"memguard.started in {target}: {sorted(p.name for p in tmp_path.iterdir())}")
    assert started[0]["log"] == str(target)
    recycle_some(worker)
    recycled = wait_until(lambda: read_events(target, "memguard.child_recycled"), 30, what="a recycle event")
    assert recycled[0]["reason"] == "soft_limit"
    worker.stop()
    stopped = wait_until(lambda: read_events(target, "memguard.stopped"), 30, what="memguard.stopped")
    assert stopped[-1]["events_dropped"] == 0
    if logfile:  # Celery's own lines share the file; the report still reads our events from it
        proc = subprocess.run([sys.executable, "-m", "celery_memguard", "report", str(target), "--format", "json"],
                              cwd=REPO, capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
        assert json.loads(proc.stdout)


# -- logrotate -----------------------------------------------------------------------------------------------
def test_log_file_renamed_mid_run_later_events_land_in_the_new_file(start_worker: StartWorker,
                                                                     redis_url: str) -> None:
    worker = start_worker(redis_url, conf=SOFT)
    rotated = worker.event_file.with_name(worker.event_file.name + ".1")
    worker.event_file.rename(rotated)  # logrotate's default (create) mode
    time.sleep(1.5)  # the master and children notice within a second of their next event
    recycle_some(worker)
    recycled = wait_until(lambda: read_events(worker.event_file, "memguard.child_recycled"), 30,
                          what=f"a recycle event in the new file\n{worker.diagnostics()}")
    assert recycled[0]["reason"] == "soft_limit"
    assert read_events(rotated, "memguard.started") and not read_events(rotated, "memguard.child_recycled")


# -- stdlib logging ------------------------------------------------------------------------------------------
def test_logging_handler_receives_the_same_lines(start_worker: StartWorker, redis_url: str, tmp_path: Path) -> None:
    """target "both": the project's handler gets every event, each message byte-for-byte the file's line."""
    handler_file = tmp_path / "handler.log"
    worker = start_worker(redis_url, conf={**SOFT, "memguard_log_target": "both"},
                          extra_env={"MG_LOGGING_FILE": str(handler_file), "MG_LOGGING_PREFIX": "PROJECT "})
    recycle_some(worker)
    worker.wait_for_event("memguard.child_recycled")
    time.sleep(0.5)
    ours = worker.event_file.read_text().splitlines()
    theirs = handler_file.read_text().splitlines()
    assert all(line.startswith("PROJECT {") for line in theirs), theirs[:3]
    assert [line[len("PROJECT "):] for line in theirs] == ours
    assert {"memguard.started", "memguard.child_recycled"} <= {json.loads(line[len("PROJECT "):])["event"]
                                                               for line in theirs}


def test_logging_only_target(start_worker: StartWorker, redis_url: str, tmp_path: Path) -> None:
    """target "logging": MemGuard writes nothing itself; the project's handler file is a complete event log."""
    via_logging = tmp_path / "via-logging.jsonl"
    worker = start_worker(redis_url, conf={**SOFT, "memguard_log_target": "logging", "memguard_log_file": None},
                          extra_env={"MG_LOGGING_FILE": str(via_logging)}, ready=False)
    worker.event_file = via_logging  # the harness reads the events where the handler writes them
    worker.wait_ready()
    recycle_some(worker)
    recycled = worker.wait_for_event("memguard.child_recycled")
    assert recycled["reason"] == "soft_limit"
    assert worker.events("memguard.started")[0]["log"] == "logging:celery_memguard"
    assert not list(tmp_path.glob("events-*.jsonl")) or not read_events(next(tmp_path.glob("events-*.jsonl")))


# -- bad targets -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("where", ["missing-dir", "a-directory", "under-a-file"])
def test_unusable_log_file_stops_the_worker_with_a_clean_error(start_worker: StartWorker, redis_url: str,
                                                               tmp_path: Path, where: str) -> None:
    (tmp_path / "plain").write_text("")
    path = {"missing-dir": tmp_path / "nope" / "events.log", "a-directory": tmp_path,
            "under-a-file": tmp_path / "plain" / "events.log"}[where]
    worker = start_worker(redis_url, conf={"memguard_log_file": str(path)}, ready=False)
    status = worker.proc.wait(EXIT_TIMEOUT)
    stderr = worker.stderr_path.read_text(errors="replace")
    assert status != 0, worker.diagnostics()
    assert f"Error: celery-memguard: invalid memguard_log_file={str(path)!r}: expected" in stderr, stderr
    assert "Traceback" not in stderr, stderr


def status_of(worker: Worker) -> dict[str, Any]:
    """The worker's ``celery memguard status`` reply (its events can't be read: they go nowhere readable)."""
    hostname = f"{worker.queue}@{socket.gethostname()}"
    proc = subprocess.run([sys.executable, "-m", "celery", "-A", "tests.integration.proj", "memguard", "status",
                           "--format", "json", "-d", hostname, "--timeout", "5"],
                          cwd=REPO, env=worker.env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, (proc.stdout, proc.stderr)
    return json.loads(proc.stdout)[hostname]  # type: ignore[no-any-return]


@pytest.mark.parametrize("kind", ["fifo-nobody-reads", "dev-full"])
def test_log_target_that_cannot_take_lines_never_blocks_the_worker(start_worker: StartWorker, redis_url: str,
                                                                   tmp_path: Path, kind: str) -> None:
    if kind == "fifo-nobody-reads":
        target = tmp_path / "events.fifo"
        os.mkfifo(target)
        tasks = 8
    else:
        if not os.path.exists("/dev/full"):
            pytest.skip("no /dev/full")
        target, tasks = Path("/dev/full"), 8
    worker = start_worker(redis_url, conf={**SOFT, **REMOTE, "memguard_log_file": str(target)}, ready=False)
    worker.ping(60)  # the worker started and runs tasks (a blocking open or write would hang it here)
    recycle_some(worker, tasks)
    status = status_of(worker)
    assert status["events"]["log"] == str(target)
    if kind == "dev-full":
        assert status["events"]["dropped"] >= 1, status
        stderr = worker.stderr_path.read_text(errors="replace")
        assert stderr.count("celery-memguard: cannot write events to /dev/full") == 1, stderr
    assert worker.ping(30)
    worker.stop()
    assert worker.proc.returncode is not None


# -- logrotate on a detached worker's --logfile --------------------------------------------------------------
def test_detached_logfile_copytruncate(detached: Any, redis_url: str, tmp_path: Path) -> None:
    """logrotate ``copytruncate``: the file is copied and truncated in place; later lines start at its new end."""
    worker = detached(redis_url, SOFT, True)
    target = worker.logfile
    wait_until(lambda: read_events(target, "memguard.started"), 60, what="memguard.started")
    rotated = target.with_name(target.name + ".1")
    rotated.write_bytes(target.read_bytes())
    with open(target, "r+b") as f:
        f.truncate(0)
    recycle_some(worker)
    recycled = wait_until(lambda: read_events(target, "memguard.child_recycled"), 30, what="a recycle event")
    assert recycled[0]["reason"] == "soft_limit"
    assert b"\0" not in target.read_bytes(), "a writer kept its old offset: the truncated file has a hole"
    worker.stop()
    wait_until(lambda: read_events(target, "memguard.stopped"), 30, what="memguard.stopped")
    proc = subprocess.run([sys.executable, "-m", "celery_memguard", "report", str(rotated), str(target),
                           "--format", "json"], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr

