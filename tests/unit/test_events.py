"""Tests for celery_memguard.events: JSON and console lines, common keys, once-per-cause errors.

Every test writes to its own log file under tmp_path; the process-wide event log
is swapped with monkeypatch where the module-level helpers are exercised.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from pathlib import Path
from typing import Any

import pytest

from celery_memguard import events
from celery_memguard.events import EVENT_KEYS, EventLog


def json_lines(path: Path) -> list[dict[str, Any]]:
    lines = path.read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert all(isinstance(r, dict) for r in records)
    return records


@pytest.fixture
def log_path(tmp_path: Path) -> Path:
    return tmp_path / "memguard.log"


@pytest.fixture
def json_log(log_path: Path) -> Any:
    log = EventLog(fmt="json", log_file=str(log_path), hostname="celery@host")
    yield log
    os.close(log.fd)


class TestEventLogJson:
    """EventLog(fmt="json")."""

    def test_one_json_object_per_line(self, json_log: EventLog, log_path: Path) -> None:
        """Each emit appends one line holding one JSON object with the event and its keys."""
        json_log.emit(events.STARTED, pool="prefork", concurrency=4, metric="uss", soft_limit_mib=None,
                      hard_limit_mib=512.0, poll_interval=1.0, dry_run=False)
        json_log.emit(events.TASK_KILLED, "error", task="app.tasks.grow", task_id="id-1", pid=4242, mem_mib=530.1,
                      limit_mib=512.0)
        first, second = json_lines(log_path)
        assert {"event": "memguard.started", "pool": "prefork", "concurrency": 4, "metric": "uss",
                "soft_limit_mib": None, "hard_limit_mib": 512.0, "poll_interval": 1.0, "dry_run": False,
                "level": "info"} == {k: v for k, v in first.items() if k not in ("ts", "source_pid", "hostname")}
        assert ("memguard.task_killed", "error", 4242, "id-1") == (second["event"], second["level"], second["pid"],
                                                                  second["task_id"])

    def test_common_keys(self, json_log: EventLog, log_path: Path) -> None:
        """Every line carries event, ts (ISO 8601 UTC), level, source_pid and hostname."""
        json_log.emit(events.STOPPED, polls=3, decisions=0)
        (record,) = json_lines(log_path)
        assert {"event", "ts", "level", "source_pid", "hostname"} <= set(record)
        assert (os.getpid(), "celery@host", "info") == (record["source_pid"], record["hostname"], record["level"])
        ts = dt.datetime.fromisoformat(record["ts"])
        assert dt.timedelta(0) == ts.utcoffset()
        assert abs((dt.datetime.now(dt.timezone.utc) - ts).total_seconds()) < 60

    def test_pid_is_the_child_not_the_emitter(self, json_log: EventLog, log_path: Path) -> None:
        """`pid` is the pool child the event is about; the emitter is source_pid."""
        json_log.emit(events.CHILD_RECYCLED, "warning", pid=1, reason="soft_limit")
        (record,) = json_lines(log_path)
        assert (1, os.getpid()) == (record["pid"], record["source_pid"])

    def test_no_hostname_until_known(self, log_path: Path) -> None:
        """Without a hostname the key is left out rather than null."""
        log = EventLog(fmt="json", log_file=str(log_path))
        try:
            log.emit(events.STOPPED, polls=1, decisions=0)
        finally:
            os.close(log.fd)
        assert "hostname" not in json_lines(log_path)[0]

    def test_unserialisable_value_does_not_break_the_line(self, json_log: EventLog, log_path: Path) -> None:
        """A value JSON cannot encode is rendered as text; the line stays valid JSON."""
        json_log.emit(events.ERROR, where="x", error=object())
        (record,) = json_lines(log_path)
        assert record["error"].startswith("<object object")

    def test_appends_to_existing_file(self, log_path: Path) -> None:
        """The log file is opened for appending, so earlier lines are kept."""
        log_path.write_text('{"event": "earlier"}\n')
        log = EventLog(fmt="json", log_file=str(log_path))
        try:
            log.emit(events.STOPPED, polls=0, decisions=0)
        finally:
            os.close(log.fd)
        assert ["earlier", "memguard.stopped"] == [r["event"] for r in json_lines(log_path)]

    def test_lines_from_forked_processes_never_interleave(self, json_log: EventLog, log_path: Path) -> None:
        """Several processes sharing the log fd produce only whole JSON lines."""
        pids = []
        for n in range(4):
            pid = os.fork()
            if pid == 0:  # pragma: no cover - child
                try:
                    for i in range(200):
                        json_log.emit(events.CHILD_RECYCLED, "warning", pid=os.getpid(), reason="soft_limit",
                                      task="x" * 300, n=n, i=i)
                finally:
                    os._exit(0)
            pids.append(pid)
        for pid in pids:
            os.waitpid(pid, 0)
        records = json_lines(log_path)
        assert 800 == len(records)
        assert set(pids) == {r["source_pid"] for r in records}


class TestEventLogConsole:
    """EventLog(fmt="console")."""

    def test_console_line(self, log_path: Path) -> None:
        """The console format is one human-readable line with the level, the event and key=value pairs."""
        log = EventLog(fmt="console", log_file=str(log_path), hostname="celery@host")
        try:
            log.emit(events.STARTED, pool="prefork", concurrency=2)
            log.emit(events.TASK_KILLED, "error", task_id="id-1", pid=9)
        finally:
            os.close(log.fd)
        first, second = log_path.read_text().splitlines()
        assert first.startswith("[info")
        for part in ("memguard.started", "pool=prefork", "concurrency=2", "hostname=celery@host",
                     f"source_pid={os.getpid()}", "ts="):
            assert part in first
        assert second.startswith("[error")
        assert "memguard.task_killed" in second and "task_id=id-1" in second and "pid=9" in second
        assert "\x1b[" not in first + second  # no colour codes in log files


class TestEventLogErrors:
    """EventLog.error: fail-open reporting."""

    def test_once_per_cause_and_counted(self, json_log: EventLog, log_path: Path) -> None:
        """memguard.error is logged once per (where, exception type); repeats are counted."""
        for _ in range(5):
            json_log.error("monitor.sample", ValueError("bad number"))
        json_log.error("monitor.sample", KeyError("k"))
        json_log.error("child.task_prerun", ValueError("other place"))
        records = json_lines(log_path)
        assert [("memguard.error", "error", "monitor.sample", "ValueError: bad number"),
                ("memguard.error", "error", "monitor.sample", "KeyError: 'k'"),
                ("memguard.error", "error", "child.task_prerun", "ValueError: other place")] == [
            (r["event"], r["level"], r["where"], r["error"]) for r in records]
        assert {("monitor.sample", "ValueError"): 5, ("monitor.sample", "KeyError"): 1,
                ("child.task_prerun", "ValueError"): 1} == json_log.error_counts

    def test_error_counts_is_a_copy(self, json_log: EventLog) -> None:
        """error_counts cannot be used to reset the once-per-cause memory."""
        json_log.error("x", ValueError())
        json_log.error_counts.clear()
        assert {("x", "ValueError"): 1} == json_log.error_counts

    def test_unwritable_fd_never_raises(self, tmp_path: Path) -> None:
        """Logging to a closed fd is silently dropped, never an exception in a worker."""
        log = EventLog(fmt="json", log_file=str(tmp_path / "x.log"))
        os.close(log.fd)
        log.emit(events.STOPPED, polls=0, decisions=0)
        log.error("x", ValueError("y"))


class TestModuleHelpers:
    """configure / get / emit / error and the public event table."""

    def test_configure_then_emit_and_error(self, log_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        """The module-level helpers go through the configured process-wide log."""
        monkeypatch.setattr(events, "_current", None)
        log = events.configure(fmt="json", log_file=str(log_path), hostname="w@h")
        try:
            assert log is events.get()
            events.emit(events.WOULD_RECYCLE, "warning", pid=3, reason="soft_limit")
            events.error("where", RuntimeError("x"))
            events.error("where", RuntimeError("x"))
        finally:
            os.close(log.fd)
        assert [("memguard.would_recycle", "w@h"), ("memguard.error", "w@h")] == [
            (r["event"], r["hostname"]) for r in json_lines(log_path)]

    def test_get_without_configure(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """get() before configure() gives a console log on standard error."""
        monkeypatch.setattr(events, "_current", None)
        log = events.get()
        assert ("console", None, "stderr") == (log.fmt, log.log_file, log.describe())

    def test_event_names_are_namespaced(self) -> None:
        """Every public event is memguard.* and documents its keys."""
        assert all(name.startswith("memguard.") for name in EVENT_KEYS)
        assert {events.STARTED, events.CHILD_RECYCLED, events.TASK_KILLED, events.WOULD_RECYCLE, events.WOULD_KILL,
                events.ERROR} <= set(EVENT_KEYS)
        assert ("pool", "concurrency", "metric", "soft_limit_mib", "hard_limit_mib", "poll_interval",
                "dry_run") == EVENT_KEYS[events.STARTED][:7]
        assert {"pid", "reason", "mem_mib", "tasks_run", "lifetime_s"} <= set(EVENT_KEYS[events.CHILD_RECYCLED])
        assert {"task", "task_id", "pid", "mem_mib", "limit_mib"} <= set(EVENT_KEYS[events.TASK_KILLED])
        assert EVENT_KEYS[events.CHILD_RECYCLED] == EVENT_KEYS[events.WOULD_RECYCLE]
        assert EVENT_KEYS[events.TASK_KILLED] == EVENT_KEYS[events.WOULD_KILL]


class TestTargets:
    """Where lines go, and that writing them never blocks or raises (issue 8.3, 13.5)."""

    def test_reopens_a_moved_file(self, log_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        """logrotate renames the file: within REOPEN_CHECK_S later lines go to a new file at the path."""
        monkeypatch.setattr(events, "REOPEN_CHECK_S", 0.0)
        log = EventLog(fmt="json", log_file=str(log_path))
        try:
            log.emit(events.STOPPED, polls=1, decisions=0)
            rotated = log_path.with_name("memguard.log.1")
            log_path.rename(rotated)
            log.emit(events.STOPPED, polls=2, decisions=0)
            log.emit(events.STOPPED, polls=3, decisions=0)
        finally:
            log.close()
        assert [1] == [r["polls"] for r in json_lines(rotated)]
        assert [2, 3] == [r["polls"] for r in json_lines(log_path)]

    def test_checks_for_rotation_at_most_once_per_interval(self, log_path: Path) -> None:
        """Without the check being due, lines keep going to the open file (no stat per line)."""
        log = EventLog(fmt="json", log_file=str(log_path))
        try:
            rotated = log_path.with_name("memguard.log.1")
            log_path.rename(rotated)
            log.emit(events.STOPPED, polls=1, decisions=0)
        finally:
            log.close()
        assert [1] == [r["polls"] for r in json_lines(rotated)]

    def test_fifo_without_reader_never_blocks(self, tmp_path: Path) -> None:
        """A FIFO nobody reads: the open does not hang, lines fill the pipe, then are dropped and counted."""
        fifo = tmp_path / "events.fifo"
        os.mkfifo(fifo)
        log = EventLog(fmt="json", log_file=str(fifo))
        try:
            for n in range(2000):  # ~200 KB: more than a pipe holds
                log.emit(events.STOPPED, polls=n, decisions=0, padding="x" * 60)
            assert log.dropped > 0
        finally:
            log.close()

    def test_dev_full_drops_are_counted_and_warned_once(self, capfd: pytest.CaptureFixture[str]) -> None:
        if not os.path.exists("/dev/full"):
            pytest.skip("no /dev/full")
        log = EventLog(fmt="json", log_file="/dev/full")
        try:
            for n in range(3):
                log.emit(events.STOPPED, polls=n, decisions=0)
        finally:
            log.close()
        assert 3 == log.dropped
        err = capfd.readouterr().err
        assert 1 == err.count("celery-memguard: cannot write events to /dev/full"), err

    def test_drops_in_forked_children_are_counted_in_the_parent(self, tmp_path: Path) -> None:
        if not os.path.exists("/dev/full"):
            pytest.skip("no /dev/full")
        log = EventLog(fmt="json", log_file="/dev/full")
        try:
            pids = []
            for _ in range(2):
                pid = os.fork()
                if pid == 0:  # pragma: no cover - child
                    log.emit(events.STOPPED, polls=0, decisions=0)
                    os._exit(0)
                pids.append(pid)
            for pid in pids:
                os.waitpid(pid, 0)
            assert 2 == log.dropped
        finally:
            log.close()

    def test_unopenable_file_raises_at_construction(self, tmp_path: Path) -> None:
        """The bootstep turns this into the clean start-up error; nothing is half-configured."""
        for bad in (str(tmp_path / "missing" / "x.log"), str(tmp_path), "a\x00b"):
            with pytest.raises((OSError, ValueError)):
                EventLog(fmt="json", log_file=bad)

    def test_logging_target_gives_the_same_line(self, log_path: Path) -> None:
        """target="both": the logger's record message is byte-for-byte the line written to the file."""
        import logging

        records: list[logging.LogRecord] = []

        class Keep(logging.Handler):
            def emit(self, record: logging.LogRecord) -> None:
                records.append(record)

        logger = logging.getLogger(events.LOGGER_NAME)
        handler = Keep()
        logger.addHandler(handler)
        log = EventLog(fmt="json", log_file=str(log_path), target="both", hostname="w@h")
        try:
            log.emit(events.CHILD_RECYCLED, pid=7, reason="soft_limit", mem_mib=1.5)
            log.emit(events.ERROR, "error", where="x", error="100% bad")
        finally:
            logger.removeHandler(handler)
            log.close()
        lines = log_path.read_text().splitlines()
        assert [r.getMessage() for r in records] == lines
        assert [logging.INFO, logging.ERROR] == [r.levelno for r in records]
        assert ("memguard.child_recycled", 7) == (records[0].memguard["event"], records[0].memguard["pid"])  # type: ignore[attr-defined]

    def test_logging_only_target_writes_nothing_itself(self, log_path: Path) -> None:
        import logging

        seen: list[str] = []

        class Keep(logging.Handler):
            def emit(self, record: logging.LogRecord) -> None:
                seen.append(record.getMessage())

        logger = logging.getLogger(events.LOGGER_NAME)
        handler = Keep()
        logger.addHandler(handler)
        try:
            log = EventLog(fmt="json", target="logging")
            log.emit(events.STOPPED, polls=1, decisions=0)
            assert log.fd == -1 and log.describe() == "logging:celery_memguard"
        finally:
            logger.removeHandler(handler)
        assert [1] == [json.loads(line)["polls"] for line in seen]

    def test_a_cut_line_is_ended_before_the_next(self, log_path: Path) -> None:
        """After a line was cut short (full pipe), the next line starts on a line of its own."""
        log = EventLog(fmt="json", log_file=str(log_path))
        try:
            log._cut = True
            log.emit(events.STOPPED, polls=1, decisions=0)
        finally:
            log.close()
        assert log_path.read_text().startswith("\n{")


class TestDefaultLogFile:
    def test_worker_logfile_first(self) -> None:
        assert "/var/log/w1.log" == events.default_log_file("/var/log/w1.log", "w1")

    def test_stderr_when_it_goes_somewhere(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setattr(events, "stderr_lost", lambda: False)
        assert events.default_log_file(None, "w1") is None

    def test_working_directory_file_when_stderr_is_lost(self, monkeypatch: pytest.MonkeyPatch,
                                                          tmp_path: Path) -> None:
        monkeypatch.setattr(events, "stderr_lost", lambda: True)
        monkeypatch.chdir(tmp_path)
        assert str(tmp_path / "memguard-w1.log") == events.default_log_file(None, "w1")

    def test_stderr_lost_detects_dev_null(self) -> None:
        saved = os.dup(2)
        null = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(null, 2)
            assert events.stderr_lost()
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            os.close(null)
        assert not events.stderr_lost()


def test_forked_child_reopens_a_moved_file_on_its_own(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A pool child (forked, sharing the descriptor) notices the rotation itself; its line lands in the new file."""
    monkeypatch.setattr(events, "REOPEN_CHECK_S", 0.0)
    path = tmp_path / "events.log"
    log = EventLog(fmt="json", log_file=str(path))
    try:
        log.emit(events.STOPPED, polls=0, decisions=0)
        path.rename(tmp_path / "events.log.1")
        pid = os.fork()
        if pid == 0:  # pragma: no cover - child
            log.emit(events.STOPPED, polls=1, decisions=0)
            os._exit(0)
        os.waitpid(pid, 0)
        log.emit(events.STOPPED, polls=2, decisions=0)
    finally:
        log.close()
    assert [0] == [r["polls"] for r in json_lines(tmp_path / "events.log.1")]
    assert [1, 2] == [r["polls"] for r in json_lines(path)]


def _flood_stderr(fd: int) -> "subprocess.CompletedProcess[str]":
    """A process whose standard error is ``fd`` emits 2,000 events of 1 KB; it prints how many it dropped."""
    import subprocess
    import sys

    code = ("from celery_memguard import events\n"
            "log = events.EventLog(fmt='json')\n"
            "for n in range(2000):\n"
            "    log.emit(events.STOPPED, polls=n, decisions=0, pad='x' * 1000)\n"
            "print(log.dropped)\n")
    return subprocess.run([sys.executable, "-c", code], stderr=fd, stdout=subprocess.PIPE, timeout=60, text=True)


def test_stderr_socket_nobody_reads_never_blocks() -> None:
    """Standard error a stream socket (journald) nobody drains: sends are non-blocking, drops counted."""
    import socket

    reader, writer = socket.socketpair()
    try:
        proc = _flood_stderr(writer.fileno())
    finally:
        writer.close()
    reader.close()
    assert proc.returncode == 0
    assert int(proc.stdout) > 0


def test_stderr_pipe_nobody_reads_never_blocks() -> None:
    """Standard error a pipe nobody drains: reopened non-blocking, drops counted, the process carries on."""

    read_end, write_end = os.pipe()
    try:
        proc = _flood_stderr(write_end)
    finally:
        os.close(write_end)
        os.close(read_end)
    assert proc.returncode == 0
    assert int(proc.stdout) > 0


PACKAGE = Path(events.__file__).resolve().parent


def _event_constants(trees: dict[Path, Any]) -> dict[str, str]:
    """Module-level ``NAME = "memguard.x"`` constants of the package, by name."""
    import ast

    names: dict[str, str] = {}
    for tree in trees.values():
        for node in tree.body:
            if (isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant)
                    and isinstance(node.value.value, str) and node.value.value.startswith("memguard.")):
                for target in node.targets:
                    if isinstance(target, ast.Name):
                        names[target.id] = node.value.value
    return names


def emitted_keys() -> dict[str, set[str]]:
    """Event name -> every key the package's code logs with it, read from the source: the keywords of each
    ``events.emit(NAME, ...)`` call, and the keys of the fields dict of each ``Finding(NAME, fields)`` /
    ``LossReport(NAME, fields)`` (a dict literal, or a local variable built from literals and
    ``fields["key"] = ...``). Calls whose event name is not a constant are covered by the events' own
    tests; the keys actions' ``_log`` adds from a decision by decision_extra_keys."""
    import ast

    trees = {path: ast.parse(path.read_text()) for path in PACKAGE.rglob("*.py")}
    constants = _event_constants(trees)

    def name_of(node: Any) -> str | None:
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.startswith("memguard."):
            return node.value
        if isinstance(node, ast.Name):
            return constants.get(node.id)
        if isinstance(node, ast.Attribute):
            return constants.get(node.attr)
        return None

    def dict_keys(node: Any, scope: Any) -> set[str]:
        if isinstance(node, ast.Dict):
            return {k.value for k in node.keys if isinstance(k, ast.Constant) and isinstance(k.value, str)}
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "dict":
            return {k.arg for k in node.keywords if k.arg}
        if not isinstance(node, ast.Name):
            return set()
        keys: set[str] = set()
        for sub in ast.walk(scope):
            if isinstance(sub, (ast.Assign, ast.AnnAssign)):
                targets = sub.targets if isinstance(sub, ast.Assign) else [sub.target]
                for target in targets:
                    if isinstance(target, ast.Name) and target.id == node.id and sub.value is not None:
                        keys |= dict_keys(sub.value, scope) if not isinstance(sub.value, ast.Name) else set()
                    if (isinstance(target, ast.Subscript) and isinstance(target.value, ast.Name)
                            and target.value.id == node.id and isinstance(target.slice, ast.Constant)):
                        keys.add(target.slice.value)
        return keys

    found: dict[str, set[str]] = {}
    for tree in trees.values():
        scopes = [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
        for scope in scopes:
            for call in ast.walk(scope):
                if not isinstance(call, ast.Call) or not call.args:
                    continue
                first = call.args[0]
                options = [first.body, first.orelse] if isinstance(first, ast.IfExp) else [first]  # a if dry else b
                names = [name for name in map(name_of, options) if name is not None]
                if not names:
                    continue
                func = call.func.func if isinstance(call.func, ast.Call) else call.func  # self._emitter()(...)
                callee = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
                if "emit" in callee or callee == "_log":  # emit, self._emit, self._emitter(), actions' _log
                    keys = {k.arg for k in call.keywords if k.arg and k.arg != "level"}  # level: emit's own
                elif callee in ("Finding", "LossReport") and len(call.args) > 1:
                    keys = dict_keys(call.args[1], scope)
                else:
                    continue
                for event in names:
                    found.setdefault(event, set()).update(keys)
    return found


def decision_extra_keys() -> set[str]:
    """Keys a recycle or kill event carries beyond EVENT_KEYS, read from the source: the keys of every
    ``detail`` a policy attaches to its violation (``(("key", value), ...)`` tuples, which actions'
    ``_log`` adds to the event) and of the limit dicts ``_log`` builds (``{"limit_s": ...}``)."""
    import ast

    keys: set[str] = set()
    for path in [*(PACKAGE / "policies").rglob("*.py"), PACKAGE / "actions.py"]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Tuple) and len(node.elts) == 2 and isinstance(node.elts[0], ast.Constant) \
                    and isinstance(node.elts[0].value, str) and path.parent.name == "policies":
                keys.add(node.elts[0].value)
            if isinstance(node, ast.Dict) and path.name == "actions.py":
                keys |= {k.value for k in node.keys if isinstance(k, ast.Constant) and isinstance(k.value, str)}
            if (isinstance(node, ast.Subscript) and isinstance(node.ctx, ast.Store) and path.name == "actions.py"
                    and isinstance(node.slice, ast.Constant) and isinstance(node.slice.value, str)):
                keys.add(node.slice.value)
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "emit"
                    and path.name == "actions.py"):  # _log's own keys: pid, task, reason, mem_mib...
                keys |= {k.arg for k in node.keywords if k.arg}
    return keys


def test_every_emitted_key_is_documented_in_event_keys() -> None:
    """Each key the code logs with an event is listed in EVENT_KEYS (the public API table), or in EXTRA_KEYS
    for keys only some occurrences carry; before, four keys of memguard.started (kill_grace,
    effective_memory_mib, policies, leak_attribution) were not."""
    found = emitted_keys()
    assert {events.STARTED, "memguard.heavy_task", "memguard.child_lost", events.ERROR} <= set(found)
    listed = {name: set(EVENT_KEYS.get(name, ())) | set(events.EXTRA_KEYS.get(name, ())) for name in found}
    missing = {name: sorted(keys - listed[name]) for name, keys in found.items()}
    assert {} == {name: keys for name, keys in missing.items() if keys}, "add these to events.EVENT_KEYS"


def test_every_recycle_and_kill_detail_key_is_documented() -> None:
    """The keys policies' details and the limit in its unit add to recycle and kill events (limit_s,
    ranking, trigger, lasting_relief...) are listed in events.EXTRA_KEYS for each of those events."""
    extra = decision_extra_keys()
    assert {"limit_s", "limit_tasks", "ranking", "lasting_relief", "eta_s", "total", "mem_mib"} <= extra  # it works
    for name in (events.CHILD_RECYCLED, events.WOULD_RECYCLE, events.TASK_KILLED, events.WOULD_KILL):
        listed = set(EVENT_KEYS[name]) | set(events.EXTRA_KEYS.get(name, ()))
        assert sorted(extra - listed) == [], f"add these to events.EXTRA_KEYS[{name!r}] and describe them"


def test_every_event_and_key_has_a_description() -> None:
    """The events reference (generated from events.py) says when each event is logged and what each of
    its keys means: EVENT_DOCS for every event, KEY_DOCS (or EVENT_KEY_DOCS for one event) for every key."""
    assert sorted(set(EVENT_KEYS) - set(events.EVENT_DOCS)) == [], "describe these events in events.EVENT_DOCS"
    assert sorted(set(events.EVENT_DOCS) - set(EVENT_KEYS)) == [], "EVENT_DOCS names events EVENT_KEYS lacks"
    assert set(events.EXTRA_KEYS) <= set(EVENT_KEYS)
    undocumented = sorted(f"{name}: {key}" for name in EVENT_KEYS
                          for key in (*EVENT_KEYS[name], *events.EXTRA_KEYS.get(name, ()))
                          if not (events.EVENT_KEY_DOCS.get((name, key)) or events.KEY_DOCS.get(key)))
    assert undocumented == [], "describe these keys in events.KEY_DOCS (or EVENT_KEY_DOCS for one event)"
    used = {key for name in EVENT_KEYS for key in (*EVENT_KEYS[name], *events.EXTRA_KEYS.get(name, ()))}
    assert sorted(set(events.KEY_DOCS) - used) == [], "KEY_DOCS describes keys no event carries"
    for (name, key) in events.EVENT_KEY_DOCS:
        assert key in (*EVENT_KEYS[name], *events.EXTRA_KEYS.get(name, ())), (name, key)
    assert all(text.strip() for text in (*events.EVENT_DOCS.values(), *events.KEY_DOCS.values()))
