"""docs/getting-started.md, run as written against a real ``celery worker --pool=prefork`` on Redis.

The page marks what a reader types and what they should see with HTML comments (invisible in
the built site) on the line before a fenced block:

* ``<!-- docs-test: install -->``: the ``pip install`` line; not run (the package under test is
  installed from the checkout), only checked to name this project's distribution;
* ``<!-- docs-test: file NAME -->``: the block is saved as ``NAME`` in the reader's directory;
* ``<!-- docs-test: edit NAME -->``: the block replaces the statement of ``NAME`` that starts
  with the block's first line (up to its closing line at the same indentation);
* ``<!-- docs-test: worker -->``: the one command in the block is started as a long-running worker
  (its own session); the step waits for Celery's ``ready.`` line and a new ``memguard.started``;
* ``<!-- docs-test: stop -->`` (no block): the worker is stopped as Ctrl-C would (warm shutdown);
* ``<!-- docs-test: run -->``: each line of the block runs in a shell and must exit 0;
  ``<!-- docs-test: run retry -->`` may be repeated (a live view: ``status``) until the output matches;
* ``<!-- docs-test: output -->``: what the preceding ``run`` printed (its last command's standard
  output and error). Each line of the page's block must match a line of the real output, in order
  (other lines may come between). Numbers, pids, task ids, paths and node names match any value of
  their kind, so the page shows a real run and the test checks that every label, column and line the
  page shows is what the commands print; a line starting with ``...`` marks where the page left lines out.

The page's commands run with ``CELERY_BROKER_URL`` / ``CELERY_RESULT_BACKEND`` pointing at a Redis
database of their own (Celery lets those variables override the app's URLs), flushed before and after,
so ``celery memguard status`` (a broadcast) sees only this worker; two runs at once take turns through a
Redis lock.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest

from .conftest import REDIS_HOST, REDIS_PORT, require_port

REPO = Path(__file__).resolve().parents[2]
PAGE = REPO / "docs" / "getting-started.md"
#: A Redis database no other test or benchmark uses (they use 11-14): the status broadcast reaches only this worker.
DOCS_DB = 10
#: Two runs of this test at once (two checkouts on one machine) would share DOCS_DB, the default queue and the node
#: name: they take turns through this key (in the results database, which is never flushed).
LOCK_DB, LOCK_KEY, LOCK_TTL = 14, "celery-memguard:docs-test-getting-started", 300
MARKER = re.compile(r"^<!--\s*docs-test:\s*(\w[\w-]*)\s*(.*?)\s*-->\s*$")
FENCE = re.compile(r"^(```+|~~~+)")
READY_TIMEOUT = 60.0
COMMAND_TIMEOUT = 120.0
RETRY_FOR = 10.0


@dataclass
class Step:
    kind: str
    arg: str
    body: str
    line: int


def parse_steps(text: str) -> list[Step]:
    """The marked steps of the page, in order; a marker other than ``stop`` takes the next fenced block."""
    lines = text.splitlines()
    steps: list[Step] = []
    i = 0
    while i < len(lines):
        match = MARKER.match(lines[i].strip())
        i += 1
        if not match:
            continue
        kind, arg, at = match.group(1), match.group(2), i
        if kind == "stop":
            steps.append(Step(kind, arg, "", at))
            continue
        while i < len(lines) and not FENCE.match(lines[i].strip()):
            assert not lines[i].strip() or MARKER.match(lines[i].strip()) is None, f"line {i + 1}: marker without block"
            i += 1
        assert i < len(lines), f"line {at}: docs-test marker {kind!r} has no fenced block after it"
        fence = FENCE.match(lines[i].strip()).group(1)  # type: ignore[union-attr]
        i += 1
        body: list[str] = []
        while i < len(lines) and not lines[i].strip().startswith(fence):
            body.append(lines[i])
            i += 1
        i += 1
        steps.append(Step(kind, arg, "\n".join(body) + "\n", at))
    return steps


_TOKEN = re.compile(
    r"(?P<uuid>[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})"
    r"|(?P<node>\b[\w-]+@[\w.-]+)"
    r"|(?P<path>(?<![\w.])/[\w./-]+)"
    r"|(?P<number>\d[\d,]*(?:\.\d+)?)"
    r"|(?P<space>\s+)"
)
_ANY = {"uuid": r"[0-9a-f-]{36}", "node": r"[\w-]+@[\w.-]+", "path": r"\S+", "number": r"\d[\d,]*(?:\.\d+)?",
        "space": r"\s+"}


def line_pattern(line: str) -> re.Pattern[str]:
    """``line`` of the page's output as a pattern: values of each kind match any value of that kind."""
    parts: list[str] = []
    pos = 0
    for match in _TOKEN.finditer(line):
        parts.append(re.escape(line[pos:match.start()]))
        parts.append(_ANY[match.lastgroup or "space"])
        pos = match.end()
    parts.append(re.escape(line[pos:]))
    return re.compile("".join(parts))


def unmatched(expected: str, actual: str) -> str | None:
    """The first line of ``expected`` not found (in order) in ``actual``; None when all are."""
    real = [line.strip() for line in actual.splitlines()]
    at = 0
    for line in expected.splitlines():
        line = line.strip()
        if not line or line.startswith("..."):
            continue
        pattern = line_pattern(line)
        while at < len(real) and not pattern.fullmatch(real[at]):
            at += 1
        if at == len(real):
            return line
        at += 1
    return None


class Reader:
    """Someone following the page in an empty directory of their own."""

    def __init__(self, home: Path, env: dict[str, str]) -> None:
        self.home, self.env = home, env
        self.worker: subprocess.Popen[bytes] | None = None
        self.worker_log: Path | None = None
        self.workers = 0

    def run(self, script: str) -> str:
        """Each line in a shell, in order; returns the last command's output."""
        output = ""
        for command in _commands(script):
            proc = subprocess.run(command, shell=True, cwd=self.home, env=self.env, capture_output=True, text=True,
                                  timeout=COMMAND_TIMEOUT)
            output = proc.stdout + proc.stderr
            assert proc.returncode == 0, f"`{command}` exited {proc.returncode}:\n{output}\n{self.worker_tail()}"
        return output

    def start_worker(self, script: str) -> None:
        (command,) = _commands(script)
        assert self.worker is None, "the page starts a worker while one runs"
        started = self.started_count()
        self.workers += 1
        self.worker_log = self.home / f".worker-{self.workers}.out"
        with open(self.worker_log, "wb") as out:
            self.worker = subprocess.Popen(shlex.split(command), cwd=self.home, env=self.env, stdin=subprocess.DEVNULL,
                                           stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + READY_TIMEOUT
        while not (" ready." in self.worker_log.read_text(errors="replace") and self.started_count() > started):
            assert self.worker.poll() is None, f"worker exited {self.worker.returncode}:\n{self.worker_tail()}"
            assert time.monotonic() < deadline, f"worker not ready after {READY_TIMEOUT:.0f} s:\n{self.worker_tail()}"
            time.sleep(0.1)

    def started_count(self) -> int:
        log = self.home / "memguard.log"
        return log.read_text(errors="replace").count('"memguard.started"') if log.exists() else 0

    def stop_worker(self) -> None:
        """Ctrl-C in the worker's terminal: a warm shutdown of the whole worker; nothing may be left behind."""
        proc, self.worker = self.worker, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(10)

    def worker_tail(self) -> str:
        if self.worker_log is None or not self.worker_log.exists():
            return ""
        return "--- worker ---\n" + "\n".join(self.worker_log.read_text(errors="replace").splitlines()[-30:])


def _commands(script: str) -> list[str]:
    return [line.strip() for line in script.splitlines() if line.strip() and not line.strip().startswith("#")]


def edit(path: Path, snippet: str) -> None:
    """Replace the statement of ``path`` that starts like ``snippet``'s first line with ``snippet``."""
    text = path.read_text()
    lines = text.splitlines()
    first = snippet.splitlines()[0]
    start = next(i for i, line in enumerate(lines) if line.rstrip() == first.rstrip())
    indent = len(first) - len(first.lstrip())
    end = next(i for i in range(start + 1, len(lines))
               if lines[i].strip() and len(lines[i]) - len(lines[i].lstrip()) == indent)
    lines[start:end + 1] = snippet.rstrip("\n").splitlines()
    path.write_text("\n".join(lines) + "\n")


def _flush(db: int) -> None:
    import redis

    client = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=db)
    try:
        client.flushdb()
    finally:
        client.close()


@contextmanager
def _turn() -> Iterator[None]:
    """Hold the docs test's Redis lock (waiting up to its TTL for another run to finish)."""
    import redis

    client = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=LOCK_DB)
    token = uuid.uuid4().hex
    deadline = time.monotonic() + LOCK_TTL
    try:
        while not client.set(LOCK_KEY, token, nx=True, ex=LOCK_TTL):
            assert time.monotonic() < deadline, "another run of the docs test held its Redis lock too long"
            time.sleep(0.5)
        yield
    finally:
        if client.get(LOCK_KEY) == token.encode():
            client.delete(LOCK_KEY)
        client.close()


@pytest.fixture
def reader(tmp_path: Path) -> Iterator[Reader]:
    require_port("Redis", REDIS_HOST, REDIS_PORT)
    url = f"redis://{REDIS_HOST}:{REDIS_PORT}/{DOCS_DB}"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CELERY_", "MG_", "PYTHONPATH"))}
    env.update(CELERY_BROKER_URL=url, CELERY_RESULT_BACKEND=url, PYTHONUNBUFFERED="1", PYTHONDONTWRITEBYTECODE="1",
               PATH=os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")]))
    home = tmp_path / "myproject"
    home.mkdir()
    with _turn():
        _flush(DOCS_DB)
        person = Reader(home, env)
        try:
            yield person
        finally:
            person.stop_worker()
            _flush(DOCS_DB)


def test_page_parses() -> None:
    """The markers are well formed and every output block follows a command (no worker needed)."""
    steps = parse_steps(PAGE.read_text())
    kinds = [s.kind for s in steps]
    assert set(kinds) <= {"install", "file", "edit", "worker", "stop", "run", "output"}, kinds
    assert kinds.count("worker") == kinds.count("stop") >= 2, kinds
    for before, step in zip(steps, steps[1:]):
        if step.kind == "output":
            assert before.kind == "run", f"line {step.line}: an output block must follow a run block"
    lines = PAGE.read_text().splitlines()
    for i, line in enumerate(lines):  # every command block the reader is told to run is one the test runs
        if line.strip() in ("```bash", "```sh", "```console"):
            assert i > 0 and MARKER.match(lines[i - 1].strip()), f"line {i + 1}: a command block without a docs-test marker"
    assert line_pattern("pid 12464: uss 13.6 MiB").fullmatch("pid 9: uss 1,013.0 MiB")
    assert not line_pattern("decisions: none").fullmatch("decisions: recycle:soft_limit 1")


def test_getting_started_page_runs_as_written(reader: Reader) -> None:
    steps = parse_steps(PAGE.read_text())
    last_run: Step | None = None
    last_output = ""
    for step in steps:
        where = f"docs/getting-started.md line {step.line}"
        began = time.monotonic()
        if step.kind == "install":
            assert re.search(r"\bpip install celery-memguard\b", step.body), where
            name = re.search(r'^name = "([^"]+)"', (REPO / "pyproject.toml").read_text(), re.M)
            assert name and name.group(1) == "celery-memguard", where
        elif step.kind == "file":
            (reader.home / step.arg).write_text(step.body)
        elif step.kind == "edit":
            edit(reader.home / step.arg, step.body)
        elif step.kind == "worker":
            reader.start_worker(step.body)
        elif step.kind == "stop":
            reader.stop_worker()
        elif step.kind == "run":
            last_run, last_output = step, reader.run(step.body)
            print(f"$ {step.body.strip()}\n{last_output}")
        elif step.kind == "output":
            assert last_run is not None, where
            missing = unmatched(step.body, last_output)
            deadline = time.monotonic() + RETRY_FOR
            while missing is not None and last_run.arg == "retry" and time.monotonic() < deadline:
                time.sleep(0.5)
                last_output = reader.run(last_run.body)
                missing = unmatched(step.body, last_output)
            assert missing is None, (f"{where}: the page shows {missing!r}, which the command did not print:\n"
                                     f"{last_output}\n{reader.worker_tail()}")
        print(f"[docs-test] line {step.line} {step.kind} {step.arg}: {time.monotonic() - began:.1f} s")
    assert reader.workers >= 2
