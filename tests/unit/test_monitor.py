"""Tests for celery_memguard.monitor.Monitor.poll with fake probes, fake children and a fake clock.

The engine is real (wrapped to record the samples it receives); probes, the list
of children, the actuator and the clock are fakes, so no process is measured or
signalled. Events go to a JSON log file swapped in as the process-wide log.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Iterator, Sequence

import pytest

from celery_memguard import events
from celery_memguard.board import Board
from celery_memguard.detectors.base import Detector, Finding
from celery_memguard.engine import ASSUMED_TASK_GROWTH, Engine
from celery_memguard.forensics import LossExplainer
from celery_memguard.estimate import PAGE_SIZE
from celery_memguard.monitor import EXACT_REFRESH, TASK_START_SPACING, HostReaders, Monitor, PoolHooks
from celery_memguard.policies import HardLimit, IntakePause, SoftLimit, SystemPressure
from celery_memguard.probes import ProbeError, ProcessGone
from celery_memguard.samples import Action, ChildSample, Decision, TaskSample

MiB = 1024 * 1024
SOFT = 200 * MiB
HARD = 400 * MiB


class FakeProbe:
    """A scripted process: tests set rss/faults/exact values and may make readings fail."""

    def __init__(self, pid: int, rss: int, faults: int = 1000, uss: int | None = None) -> None:
        self.pid = pid
        self.rss = rss
        self.faults = faults
        self.values: dict[str, int] = {"uss": rss if uss is None else uss, "pss": rss, "rss": rss}
        self.cheap_error: BaseException | None = None
        self.exact_error: BaseException | None = None
        self.exact_calls: list[str] = []
        self.closed = False

    def cheap(self) -> tuple[int, int]:
        if self.cheap_error is not None:
            raise self.cheap_error
        return self.rss, self.faults

    def exact(self, metric: str) -> int:
        self.exact_calls.append(metric)
        if self.exact_error is not None:
            raise self.exact_error
        return self.values[metric]

    def close(self) -> None:
        self.closed = True


def wait_for(predicate: Any, timeout: float = 3.0) -> None:
    """Wait until ``predicate()`` is true (polled every 5 ms); fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


def one_child_on_a_board(engine: Engine, wake: bool) -> tuple[Board, "World", Monitor]:
    """A monitor (not started) over one child (pid 11, 10 MiB, pool index 0) that claimed slot 0 of a 2-slot board."""
    board = Board(2, wake=wake)
    board.claim(0, 11, time.monotonic())
    world = World()
    world.add(FakeProbe(11, rss=10 * MiB), 0)
    monitor = Monitor(pool=PoolHooks(children=world.children), engine=engine, actuator=RecordingActuator(),  # type: ignore[arg-type]
                      board=board, metric="uss", host=HostReaders(open_probe=world.open_probe))  # type: ignore[arg-type]
    return board, world, monitor


class World:
    """Fake pool children: what the bootstep's children() callable and open_probe would see."""

    def __init__(self) -> None:
        self.probes: dict[int, FakeProbe] = {}
        self.indexes: dict[int, int | None] = {}
        self.open_errors: dict[int, BaseException] = {}
        self.opened: list[int] = []

    def add(self, probe: FakeProbe, index: int | None) -> FakeProbe:
        self.probes[probe.pid] = probe
        self.indexes[probe.pid] = index
        return probe

    def remove(self, pid: int) -> None:
        del self.indexes[pid]

    def children(self) -> list[tuple[int, int | None]]:
        return list(self.indexes.items())

    def open_probe(self, pid: int) -> FakeProbe:
        self.opened.append(pid)
        if pid in self.open_errors:
            raise self.open_errors[pid]
        return self.probes[pid]


class SpyEngine(Engine):
    """The real engine, remembering the samples of each poll."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.seen: list[list[ChildSample]] = []

    def decide(self, children: Sequence[ChildSample], now: float, *, system: Any = None) -> list[Decision]:
        self.seen.append(list(children))
        return super().decide(children, now, system=system)

    def last(self, pid: int) -> ChildSample | None:
        return next((c for c in self.seen[-1] if c.pid == pid), None)


class RecordingActuator:
    """Stands in for Actuator: records what it is asked to do."""

    def __init__(self, raises: BaseException | None = None) -> None:
        self.applied: list[tuple[Decision, int | None]] = []
        self.reminded: list[int] = []
        self.raises = raises

    def apply(self, decision: Decision, index: int | None) -> None:
        self.applied.append((decision, index))
        if self.raises is not None:
            raise self.raises

    def remind(self, pid: int, index: int | None = None) -> None:
        self.reminded.append(pid)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class TaskRecorder(Detector):
    """A detector that only keeps the finished-task records it is given."""

    def __init__(self, received: list[TaskSample]) -> None:
        self.received = received

    def observe_task(self, sample: TaskSample, now: float) -> list[Finding]:
        self.received.append(sample)
        return []


class Harness:
    def __init__(self, *, metric: str = "uss", soft: int | None = SOFT, hard: int | None = HARD,
                 board: Board | None = None, actuator: RecordingActuator | None = None,
                 detectors: Sequence[Detector] = ()) -> None:
        policies = ([HardLimit(limit=hard)] if hard else []) + ([SoftLimit(limit=soft)] if soft else [])
        self.engine = SpyEngine(policies, kill_grace=2.0, poll_interval=1.0)
        self.world = World()
        self.actuator = actuator or RecordingActuator()
        self.clock = Clock()
        self.board = board
        self.monitor = Monitor(pool=PoolHooks(children=self.world.children), engine=self.engine,
                               actuator=self.actuator, board=board, metric=metric,  # type: ignore[arg-type]
                               host=HostReaders(open_probe=self.world.open_probe, clock=self.clock),  # type: ignore[arg-type]
                               detectors=detectors)

    def poll(self, advance: float = 1.0) -> float:
        self.clock.now += advance
        return self.monitor.poll()

    def decisions(self) -> list[tuple[Action, int, str | None, int | None]]:
        return [(d.action, d.pid, d.task_id, index) for d, index in self.actuator.applied]


def event_records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


class TestMonitorExactReadings:
    """When the monitor pays for an exact USS/PSS reading."""

    def test_below_threshold_no_exact(self, logged: Path) -> None:
        """A child whose RSS is below every limit is never read exactly; its sample is an inexact bound."""
        h = Harness()
        probe = h.world.add(FakeProbe(11, rss=150 * MiB), 0)
        for _ in range(3):
            h.poll()
        assert [] == probe.exact_calls
        assert ChildSample(pid=11, mem=150 * MiB, exact=False, rss=150 * MiB) == h.engine.last(11)
        assert [] == h.actuator.applied

    def test_child_above_every_limit_is_not_reread(self, logged: Path) -> None:
        """An idle child proven above the hard limit (told to recycle) is judged on its lower bound, not re-read each poll."""
        h = Harness()
        probe = h.world.add(FakeProbe(11, rss=600 * MiB, uss=500 * MiB), 0)
        for _ in range(4):
            h.poll(advance=0.5)
        assert ["uss"] == probe.exact_calls
        assert (500 * MiB, True) == (h.engine.last(11).mem, h.engine.last(11).exact)
        assert [(Action.RECYCLE, 11, None, 0)] == h.decisions()

    def test_child_between_limits_is_reread_when_it_may_cross_the_hard_limit(self, logged: Path) -> None:
        """A child above the soft limit only is read exactly again once its upper bound passes the hard limit."""
        h = Harness()
        probe = h.world.add(FakeProbe(11, rss=260 * MiB, uss=250 * MiB), 0)
        h.poll(advance=0.5)
        probe.rss, probe.values["uss"] = 420 * MiB, 410 * MiB  # grew past the hard limit (400 MiB)
        h.poll(advance=0.5)
        assert ["uss", "uss"] == probe.exact_calls
        assert (410 * MiB, True) == (h.engine.last(11).mem, h.engine.last(11).exact)
        # Idle, so the pending recycle already covers it; a busy child would now get a KILL.
        assert ["soft_limit"] == [d.reason for d, _index in h.actuator.applied]

    def test_exact_only_when_bound_exceeds_threshold(self, logged: Path) -> None:
        """RSS above the threshold triggers one exact reading; while the bound stays below, no more are taken."""
        h = Harness()
        # 300 MiB resident, mostly shared copy-on-write with the master: 50 MiB unique.
        probe = h.world.add(FakeProbe(11, rss=300 * MiB, faults=1000, uss=50 * MiB), 0)
        h.poll()
        assert ["uss"] == probe.exact_calls
        assert ChildSample(pid=11, mem=50 * MiB, exact=True, rss=300 * MiB) == h.engine.last(11)
        h.poll()
        h.poll()
        assert ["uss"] == probe.exact_calls
        assert ChildSample(pid=11, mem=50 * MiB, exact=False, rss=300 * MiB) == h.engine.last(11)
        assert [] == h.actuator.applied

    def test_cow_growth_brings_exact_reading_back(self, logged: Path) -> None:
        """Enough new faults push the bound over the threshold and an exact reading is taken again."""
        h = Harness()
        probe = h.world.add(FakeProbe(11, rss=300 * MiB, faults=1000, uss=50 * MiB), 0)
        h.poll()
        probe.faults += (100 * MiB) // PAGE_SIZE  # bound 150 MiB: still below the soft limit
        h.poll()
        assert 1 == len(probe.exact_calls)
        assert (150 * MiB, False) == (h.engine.last(11).mem, h.engine.last(11).exact)  # type: ignore[union-attr]
        probe.faults += (60 * MiB) // PAGE_SIZE  # bound 210 MiB > 200 MiB
        probe.values["uss"] = 205 * MiB
        h.poll()
        assert 2 == len(probe.exact_calls)
        assert [(Action.RECYCLE, 11, None, 0)] == h.decisions()

    def test_refresh_after_exact_refresh_seconds(self, logged: Path) -> None:
        """A child above the threshold in RSS is re-read exactly every EXACT_REFRESH seconds."""
        h = Harness()
        probe = h.world.add(FakeProbe(11, rss=300 * MiB, uss=50 * MiB), 0)
        h.poll()
        h.poll(advance=EXACT_REFRESH - 1)
        assert 1 == len(probe.exact_calls)
        h.poll(advance=1)
        assert 2 == len(probe.exact_calls)

    @pytest.mark.parametrize("metric", ["uss", "pss"])
    def test_configured_metric_is_read(self, logged: Path, metric: str) -> None:
        """The exact reading is taken in the configured metric."""
        h = Harness(metric=metric)
        probe = h.world.add(FakeProbe(11, rss=300 * MiB), 0)
        h.poll()
        assert [metric] == probe.exact_calls

    def test_rss_metric_never_reads_exactly(self, logged: Path) -> None:
        """With metric rss the cheap reading is exact and decides."""
        h = Harness(metric="rss")
        probe = h.world.add(FakeProbe(11, rss=300 * MiB, uss=10 * MiB), 0)
        h.poll()
        assert [] == probe.exact_calls
        assert ChildSample(pid=11, mem=300 * MiB, exact=True, rss=300 * MiB) == h.engine.last(11)
        assert [(Action.RECYCLE, 11, None, 0)] == h.decisions()

    def test_no_limits_never_reads_exactly(self, logged: Path) -> None:
        """Without any limit there is no threshold and no exact reading."""
        h = Harness(soft=None, hard=None)
        probe = h.world.add(FakeProbe(11, rss=3000 * MiB), 0)
        h.poll()
        assert [] == probe.exact_calls

    def test_exact_probe_error_falls_back_to_rss(self, logged: Path) -> None:
        """Issue 13.4: an unreadable smaps_rollup makes RSS stand in, labelled 'rss'; said once with the fix;
        no soft recycle on it, no retry of the unreadable file each poll; the hard limit still holds."""
        h = Harness()
        probe = h.world.add(FakeProbe(11, rss=300 * MiB), 0)
        other = h.world.add(FakeProbe(12, rss=250 * MiB), 1)
        probe.exact_error = other.exact_error = ProbeError(13, "smaps_rollup not permitted")
        h.poll()
        assert ChildSample(pid=11, mem=300 * MiB, exact=True, rss=300 * MiB, fallback="rss") == h.engine.last(11)
        for _ in range(3):
            h.poll()
        assert [] == h.decisions()  # 300 MiB RSS is above the 200 MiB soft limit: not acted on
        assert len(probe.exact_calls) == 1 and h.monitor.unreadable_children == 2
        records = event_records(logged)
        assert ["memguard.metric_unavailable"] == [r["event"] for r in records]
        assert records[0]["metric"] == "uss" and records[0]["used"] == "rss" and "PR_SET_DUMPABLE" in records[0]["fix"]
        probe.rss = 500 * MiB  # a task grows past the 400 MiB hard limit (on RSS)
        h.poll()
        assert [(Action.RECYCLE, 11, None, 0)] == h.decisions()  # idle: a hard recycle
        assert h.actuator.applied[0][0].metric == "rss"

    def test_fallback_child_born_over_the_hard_limit_is_left_alone(self, logged: Path) -> None:
        """A child whose RSS (shared pages counted) is over the hard limit at first sight: every task would be
        stopped, so the fallback reading does not drive the hard limit either."""
        h = Harness()
        probe = h.world.add(FakeProbe(11, rss=450 * MiB), 0)
        probe.exact_error = ProbeError(13, "smaps_rollup not permitted")
        for _ in range(3):
            h.poll()
        assert [] == h.decisions() and h.engine.fallback_blocked >= 3


class TestMonitorFailures:
    """Children that vanish or misbehave do not stop the poll."""

    def test_process_gone_drops_child(self, logged: Path) -> None:
        """A probe raising ProcessGone leaves that child out of the poll; its probe closes once the pool drops it."""
        h = Harness()
        gone = h.world.add(FakeProbe(11, rss=900 * MiB), 0)
        other = h.world.add(FakeProbe(12, rss=300 * MiB), 1)
        gone.cheap_error = ProcessGone(3, "exited")
        h.poll()
        assert [12] == [c.pid for c in h.engine.seen[-1]]
        assert not gone.closed
        h.world.remove(11)
        h.poll()
        assert gone.closed and not other.closed
        assert [(Action.RECYCLE, 12, None, 1)] == h.decisions()
        assert [] == event_records(logged)

    def test_process_gone_during_exact_reading(self, logged: Path) -> None:
        """ProcessGone from the exact reading also leaves the child out; the probe closes once it is unlisted."""
        h = Harness()
        probe = h.world.add(FakeProbe(11, rss=900 * MiB), 0)
        probe.exact_error = ProcessGone(3, "exited")
        h.poll()
        assert [[]] == h.engine.seen
        h.world.remove(11)
        h.poll()
        assert probe.closed
        assert [] == event_records(logged)

    def test_process_gone_at_open(self, logged: Path) -> None:
        """A child that exits before its probe opens is skipped; it is retried if still listed."""
        h = Harness()
        h.world.add(FakeProbe(11, rss=900 * MiB), 0)
        h.world.open_errors[11] = ProcessGone(3, "exited")
        h.poll()
        assert [[]] == h.engine.seen
        del h.world.open_errors[11]
        h.poll()
        assert [11, 11] == h.world.opened
        assert [11] == [c.pid for c in h.engine.seen[-1]]

    def test_other_error_logged_and_poll_continues(self, logged: Path) -> None:
        """Any other probe error is logged as memguard.error (once) and the other children are still handled."""
        h = Harness()
        broken = h.world.add(FakeProbe(11, rss=900 * MiB), 0)
        h.world.add(FakeProbe(12, rss=500 * MiB), 1)
        broken.cheap_error = RuntimeError("parse failure")
        delay = h.poll()
        h.poll()
        assert [12] == [c.pid for c in h.engine.seen[-1]]
        assert [(Action.RECYCLE, 12, None, 1)] == h.decisions()
        assert [("memguard.error", "monitor.sample", "RuntimeError: parse failure")] == [
            (r["event"], r["where"], r["error"]) for r in event_records(logged)]
        assert h.engine.next_delay == h.poll() and delay > 0

    def test_actuator_error_logged_and_other_decisions_applied(self, logged: Path) -> None:
        """An exception while acting is logged as memguard.error and the remaining decisions still run."""
        actuator = RecordingActuator(raises=OSError(1, "not permitted"))
        h = Harness(actuator=actuator)
        h.world.add(FakeProbe(11, rss=900 * MiB), 0)
        h.world.add(FakeProbe(12, rss=900 * MiB), 1)
        h.poll()
        assert [(Action.RECYCLE, 11, None, 0), (Action.RECYCLE, 12, None, 1)] == h.decisions()
        assert [("memguard.error", "actions.apply")] == [(r["event"], r["where"]) for r in event_records(logged)]

    def test_vanished_child_forgotten(self, logged: Path) -> None:
        """A child no longer listed has its probe closed and its estimate dropped."""
        h = Harness()
        probe = h.world.add(FakeProbe(11, rss=300 * MiB, uss=50 * MiB), 0)
        h.poll()
        h.world.remove(11)
        h.poll()
        assert probe.closed
        assert [[]] == h.engine.seen[-1:]
        h.world.add(probe, 0)
        h.poll()
        assert 2 == len(probe.exact_calls)  # a returning pid is measured afresh

    def test_transient_probe_error_keeps_pending_order(self, logged: Path) -> None:
        """One failed reading of a child already told to stop its task does not repeat the order."""
        board = Board(1)
        h = Harness(board=board)
        board.claim(0, 11, 1.0)
        board.task_started(0, 11, "app.tasks.grow", "id-9", 99.0, 0, 0, 1.0)
        probe = h.world.add(FakeProbe(11, rss=600 * MiB), 0)
        h.poll(advance=0.5)
        probe.cheap_error = RuntimeError("transient")
        h.poll(advance=0.5)
        probe.cheap_error = None
        h.poll(advance=0.5)
        assert [(Action.KILL, 11, "id-9", 0)] == h.decisions()
        h.poll(advance=1.5)  # kill_grace (2 s) after the KILL: the grace timer survived the failed reading
        assert (Action.FORCE_KILL, 11, "id-9", 0) == h.decisions()[-1]

    def test_kill_grace_runs_from_when_the_stop_was_sent(self, logged: Path) -> None:
        """Issue 13.1: a poll that spends 0.8 s before sending the stop does not shorten kill_grace."""
        board = Board(1)
        slow = RecordingActuator()
        h = Harness(board=board, actuator=slow)
        original_apply = slow.apply

        def apply_slowly(decision: Decision, index: int | None) -> None:
            h.clock.now += 0.8  # the poll's readings and decisions took 0.8 s before this stop went out
            original_apply(decision, index)
        slow.apply = apply_slowly  # type: ignore[method-assign]
        board.claim(0, 11, 1.0)
        board.task_started(0, 11, "app.tasks.grow", "id-9", 99.0, 0, 0, 1.0)
        h.world.add(FakeProbe(11, rss=600 * MiB), 0)
        h.poll(advance=0.5)  # poll at 100.5, stop sent at 101.3
        assert [(Action.KILL, 11, "id-9", 0)] == h.decisions()
        slow.apply = original_apply  # type: ignore[method-assign]
        h.poll(advance=1.5)  # 102.8: 2.3 s after the poll began, only 1.5 s after the stop was sent
        h.poll(advance=0.49)  # 103.29
        assert [(Action.KILL, 11, "id-9", 0)] == h.decisions()
        h.poll(advance=0.01)  # 103.3: the full 2 s after the stop was sent
        assert (Action.FORCE_KILL, 11, "id-9", 0) == h.decisions()[-1]

    @pytest.mark.parametrize("pid", [0, None])
    def test_empty_pids_skipped(self, logged: Path, pid: Any) -> None:
        """Pool entries without a pid (a child still starting) are skipped."""
        h = Harness()
        h.world.indexes[pid] = 0
        h.poll()
        assert [] == h.world.opened
        assert [[]] == h.engine.seen


class TestMonitorDecisions:
    """Samples built from the board, and decisions handed to the actuator."""

    def test_busy_child_killed_with_task_and_index(self, logged: Path) -> None:
        """The board's current task makes a child busy, so the hard limit's KILL names the task and pool index."""
        board = Board(4)
        h = Harness(board=board)
        board.claim(3, 11, 50.0)
        board.task_started(3, 11, "app.tasks.grow", "id-9", 99.0, 100 * MiB, 5, 50.0)
        h.world.add(FakeProbe(11, rss=600 * MiB, uss=500 * MiB), 3)
        h.poll()
        ((d, index),) = h.actuator.applied
        assert (Action.KILL, 11, "app.tasks.grow", "id-9", 500 * MiB, HARD, 5, 3) == (
            d.action, d.pid, d.task, d.task_id, d.mem, d.limit, d.tasks_run, index)
        assert pytest.approx(51.0) == d.lifetime

    def test_board_slot_of_another_pid_ignored(self, logged: Path) -> None:
        """A slot still holding the previous child's pid does not lend its task to the new child."""
        board = Board(1)
        h = Harness(board=board)
        board.claim(0, 10, 50.0)
        board.task_started(0, 10, "app.tasks.old", "id-old", 99.0, 0, 0, 50.0)
        h.world.add(FakeProbe(11, rss=600 * MiB), 0)
        h.poll()
        assert [(Action.RECYCLE, 11, None, 0)] == h.decisions()

    def test_index_outside_board_ignored(self, logged: Path) -> None:
        """A child whose pool index has no slot is measured without task information, and said so once."""
        h = Harness(board=Board(1))
        h.world.add(FakeProbe(11, rss=600 * MiB), 5)
        h.world.add(FakeProbe(12, rss=60 * MiB), 0)
        h.poll()
        h.poll()
        assert [(Action.RECYCLE, 11, None, 5)] == h.decisions()
        unguarded = [r for r in event_records(logged) if r["event"] == "memguard.child_unguarded"]
        assert [(11, 5, 1)] == [(r["pid"], r["index"], r["board_slots"]) for r in unguarded]
        assert "hard limit" in unguarded[0]["effect"] and unguarded[0]["fix"]

    def test_decision_once_and_counters(self, logged: Path) -> None:
        """Decisions reach the actuator once (the engine de-duplicates) and are counted."""
        h = Harness()
        h.world.add(FakeProbe(11, rss=300 * MiB), 0)
        for _ in range(4):
            h.poll()
        assert [(Action.RECYCLE, 11, None, 0)] == h.decisions()
        assert (4, 1) == (h.monitor.polls, h.monitor.decisions)

    def test_idle_leaving_child_reminded_every_poll(self, logged: Path) -> None:
        """An idle child with a pending recycle is re-signalled at every poll until it has gone; a busy one is not."""
        board = Board(2)
        h = Harness(board=board)
        board.claim(0, 11, 1.0)
        board.claim(1, 12, 1.0)
        board.task_started(1, 12, "app.tasks.busy", "id-b", 99.0, 0, 0, 1.0)
        first = h.world.add(FakeProbe(11, rss=100 * MiB), 0), h.world.add(FakeProbe(12, rss=100 * MiB), 1)
        h.poll()  # both start below the soft limit (a fresh child above it would make the limit unreachable)
        for probe in first:
            probe.rss = probe.values["uss"] = 300 * MiB
        h.poll()
        h.poll()
        assert [(Action.RECYCLE, 11, None, 0), (Action.RECYCLE, 12, "id-b", 1)] == h.decisions()
        assert [11, 11] == h.actuator.reminded
        h.world.remove(11)
        h.poll()
        assert [11, 11] == h.actuator.reminded

    def test_poll_returns_engine_delay(self, logged: Path) -> None:
        """poll() returns the engine's next delay: soon for a new child, then paced by its headroom to the hard limit."""
        h = Harness()
        h.world.add(FakeProbe(11, rss=100 * MiB), 0)
        assert 0.1 == h.poll()
        assert pytest.approx(0.25 * (HARD - 100 * MiB) / ASSUMED_TASK_GROWTH) == h.poll()

    def test_detectors_receive_drained_records(self, logged: Path) -> None:
        """Finished-task records on the board reach the detectors once each, and restart for a new pid in the slot."""
        received: list[TaskSample] = []
        board = Board(1)
        h = Harness(board=board, detectors=[TaskRecorder(received)])
        board.claim(0, 11, 1.0)
        for n in range(3):
            board.task_finished(0, 11, "app.tasks.t", f"id-{n}", 2.0, 0.1, MiB, 2 * MiB, 3 * MiB, True, n + 1, 1.0)
        h.world.add(FakeProbe(11, rss=10 * MiB), 0)
        h.poll()
        h.poll()
        assert ["id-0", "id-1", "id-2"] == [r.task_id for r in received]
        h.world.remove(11)
        board.claim(0, 12, 5.0)
        board.task_finished(0, 12, "app.tasks.t", "id-new", 6.0, 0.1, MiB, 2 * MiB, None, False, 1, 5.0)
        h.world.add(FakeProbe(12, rss=10 * MiB), 0)
        h.poll()
        assert ["id-0", "id-1", "id-2", "id-new"] == [r.task_id for r in received]
        assert (12, None, False) == (received[-1].pid, received[-1].per_task_peak, received[-1].succeeded)


    def test_on_tasks_gets_the_records_without_any_detector(self, logged: Path) -> None:
        """The sampler's hook (memguard.sample's task tally) is fed the drained records even with leak detection
        off; a hook that raises is one memguard.error and the detectors still get the records."""
        batches: list[list[TaskSample]] = []
        board = Board(1)
        h = Harness(board=board)
        h.monitor.on_tasks = batches.append
        board.claim(0, 11, 1.0)
        board.task_finished(0, 11, "app.tasks.t", "id-0", 2.0, 0.1, MiB, 2 * MiB, 3 * MiB, True, 1, 1.0)
        h.world.add(FakeProbe(11, rss=10 * MiB), 0)
        h.poll()
        assert [["id-0"]] == [[r.task_id for r in batch] for batch in batches]
        received: list[TaskSample] = []
        h2 = Harness(board=board, detectors=[TaskRecorder(received)])

        def broken(records: list[TaskSample]) -> None:
            raise RuntimeError("boom")

        h2.monitor.on_tasks = broken
        h2.world.add(FakeProbe(11, rss=10 * MiB), 0)
        h2.poll()
        assert ["id-0"] == [r.task_id for r in received]
        assert ["monitor.on_tasks"] == [e["where"] for e in event_records(logged) if e["event"] == "memguard.error"]

    def test_records_of_exited_child_are_drained(self, logged: Path) -> None:
        """Tasks a child finished after the last poll still reach the detectors after the child has exited."""
        received: list[TaskSample] = []
        board = Board(1)
        h = Harness(board=board, detectors=[TaskRecorder(received)])
        board.claim(0, 11, 1.0)
        h.world.add(FakeProbe(11, rss=10 * MiB), 0)
        h.poll()
        for n in range(2):
            board.task_finished(0, 11, "app.tasks.t", f"id-{n}", 2.0, 0.1, MiB, 2 * MiB, 3 * MiB, True, n + 1, 1.0)
        h.world.remove(11)  # the child recycled right after its last task
        h.poll()
        assert ["id-0", "id-1"] == [r.task_id for r in received]


class TestMonitorThread:
    """start() / stop()."""

    def test_thread_polls_and_stops(self, logged: Path) -> None:
        """The thread polls at the engine's delay until stopped; stop() joins it and closes the probes."""
        engine = Engine([SoftLimit(limit=SOFT)], kill_grace=2.0, poll_interval=0.01)
        world = World()
        probe = world.add(FakeProbe(11, rss=10 * MiB), 0)
        monitor = Monitor(pool=PoolHooks(children=world.children), engine=engine, actuator=RecordingActuator(),  # type: ignore[arg-type]
                          board=None, metric="uss", host=HostReaders(open_probe=world.open_probe))  # type: ignore[arg-type]
        monitor.start()
        deadline = time.monotonic() + 5.0
        while monitor.polls < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        monitor.stop()
        assert monitor.polls >= 3
        assert monitor._thread is not None and not monitor._thread.is_alive()
        assert probe.closed

    @pytest.mark.parametrize("wake", [True, False], ids=["wake-pipe", "activity-ticks"])
    def test_task_start_brings_the_next_poll_forward(self, logged: Path, wake: bool) -> None:
        """Issue 13.9: idle children are polled at the interval (10 s here), but a task start on the board
        wakes the monitor at once (wake pipe) or within an activity tick."""
        engine = Engine([HardLimit(limit=HARD)], kill_grace=2.0, poll_interval=10.0)
        board, world, monitor = one_child_on_a_board(engine, wake)
        assert engine.idle_watched
        monitor.start()
        try:
            deadline = time.monotonic() + 5.0
            while monitor.polls < 2 and time.monotonic() < deadline:  # first poll, first look at 0.1 s
                time.sleep(0.01)
            time.sleep(0.3)
            settled = monitor.polls
            assert settled == 2  # idle: the next poll is 10 s away
            board.task_started(0, 11, "app.grow", "tid-1", time.monotonic(), 10 * MiB, 0, 1.0)
            deadline = time.monotonic() + 2.0
            while monitor.polls == settled and time.monotonic() < deadline:
                time.sleep(0.005)
            assert monitor.polls > settled
        finally:
            started = time.monotonic()
            monitor.stop()
            assert time.monotonic() - started < 1.0  # stop wakes a sleeping monitor
            board.close()

    @pytest.mark.parametrize("wake", [True, False], ids=["wake-pipe", "activity-ticks"])
    def test_task_starts_without_a_stopping_policy_do_not_poll_faster_than_the_interval(
            self, logged: Path, wake: bool) -> None:
        """Only a policy that stops tasks needs a task start looked at at once: with recycling policies only, a
        steady stream of task starts (one every 10 ms for 1.5 s) is polled at a quarter of the interval (0.5 s),
        not per start (before: ~one poll per start, ~150 polls)."""
        engine = Engine([SoftLimit(limit=SOFT)], kill_grace=2.0, poll_interval=0.5)
        assert not engine.stops_tasks and Engine([SoftLimit(limit=SOFT), HardLimit(limit=HARD)], kill_grace=2.0,
                                                 poll_interval=0.5).stops_tasks
        board, world, monitor = one_child_on_a_board(engine, wake)
        monitor.start()
        try:
            time.sleep(0.3)
            before = monitor.polls
            started = time.monotonic()
            n = 0
            while time.monotonic() - started < 1.5:
                n += 1
                board.task_started(0, 11, "app.t", f"tid-{n}", time.monotonic(), 10 * MiB, n, 1.0)
                board.task_finished(0, 11, "app.t", f"tid-{n}", time.monotonic(), 0.001, 10 * MiB, 10 * MiB,
                                    10 * MiB, True, n, 1.0)
                time.sleep(0.01)
            polls = monitor.polls - before
            assert 1.5 / 0.5 + 1 < polls <= 1.5 / (0.5 * TASK_START_SPACING) + 2, (polls, n)
        finally:
            monitor.stop()
            board.close()

    @pytest.mark.parametrize("wake", [True, False], ids=["wake-pipe", "activity-ticks"])
    def test_a_task_start_on_a_child_no_poll_has_read_is_looked_at_at_once(self, logged: Path, wake: bool) -> None:
        """A replacement child's first task is read at once, spacing or not: a child that dies early in it (a
        redelivered task that OOM-kills it) must be known, with its task, when it goes."""
        engine = Engine([SoftLimit(limit=SOFT)], kill_grace=2.0, poll_interval=5.0)
        board, world, monitor = one_child_on_a_board(engine, wake)
        monitor.start()
        try:
            wait_for(lambda: monitor.polls >= 1)
            time.sleep(0.2)
            before = monitor.polls
            world.add(FakeProbe(12, rss=10 * MiB), 1)  # the replacement, not read yet
            board.claim(1, 12, time.monotonic())
            board.task_started(1, 12, "app.t", "tid-1", time.monotonic(), 10 * MiB, 1, 1.0)
            wait_for(lambda: monitor.polls > before, timeout=1.0)  # not 0.25 x 5 s later
            assert 12 in monitor._tracked
        finally:
            monitor.stop()
            board.close()

    def test_quiet_idle_pool_stretches_the_interval(self, logged: Path) -> None:
        """Every child idle at the same RSS: the delay doubles up to IDLE_STRETCH x; any change resets it."""
        h = Harness(board=Board(2))
        h.board.claim(0, 11, 1.0)  # type: ignore[union-attr]
        probe = h.world.add(FakeProbe(11, rss=10 * MiB), 0)
        delays = [h.poll() for _ in range(5)]
        assert delays[-1] == 4.0 and delays[-2] == 4.0, delays
        probe.rss += MiB
        assert h.poll() == 1.0

    def test_no_stretch_while_intake_is_paused_on_the_pool(self, logged: Path) -> None:
        """Intake paused on memguard_pause_pool_above (no system reader), every child idle at the same RSS: the
        pressure policy asks for exact readings of every child (threshold 0), and the delay stays at the
        interval, so the resume is judged in time. Was: stretched to 4 x the interval."""
        intake = IntakePause(pool_above=20 * MiB, resume_after=0.0)
        h = Harness(board=Board(2))
        h.engine = SpyEngine([SystemPressure(intake=intake)], kill_grace=2.0, poll_interval=1.0)
        h.monitor = Monitor(pool=PoolHooks(children=h.world.children), engine=h.engine, actuator=h.actuator,
                            board=h.board, metric="uss",  # type: ignore[arg-type]
                            host=HostReaders(open_probe=h.world.open_probe, clock=h.clock))  # type: ignore[arg-type]
        h.board.claim(0, 11, 1.0)  # type: ignore[union-attr]
        h.world.add(FakeProbe(11, rss=30 * MiB, uss=30 * MiB), 0)
        assert intake.observe(0.0, pool=30 * MiB) is not None and intake.paused
        delays = [h.poll() for _ in range(6)]
        assert max(delays) <= 1.0 and 0 == h.engine.threshold, delays

    def test_thread_survives_poll_errors(self, logged: Path) -> None:
        """An exception escaping poll() is logged and the loop keeps running."""
        engine = Engine([], kill_grace=2.0, poll_interval=0.01)
        calls = []

        def children() -> list[tuple[int, int | None]]:
            calls.append(1)
            raise RuntimeError("pool gone strange")

        monitor = Monitor(pool=PoolHooks(children=children), engine=engine, actuator=RecordingActuator(),  # type: ignore[arg-type]
                          board=None, metric="uss")
        monitor.start()
        deadline = time.monotonic() + 5.0
        while len(calls) < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        monitor.stop()
        assert len(calls) >= 3
        assert [("memguard.error", "monitor.poll")] == [(r["event"], r["where"]) for r in event_records(logged)]


class _MasterSpy:
    """A detector that records the master readings it is fed (spacing asked: ``sample_interval``)."""

    name = "spy"

    def __init__(self, interval: float | None) -> None:
        self.interval = interval
        self.readings: list[tuple[Any, Any]] = []

    @property
    def sample_interval(self) -> float | None:
        return self.interval

    def observe_task(self, sample: TaskSample, now: float) -> list[Any]:
        return []

    def observe_master(self, sample: Any, reserved: Any = None) -> list[Any]:
        self.readings.append((sample, reserved))
        return []

    def child_exited(self, pid: int) -> None:
        pass


class TestMonitorMaster:
    """The master is read (cheap and exact) only every master_every seconds, and published for the status."""

    def test_read_at_the_detectors_spacing_only(self, logged: Path) -> None:
        world = World()
        master = world.add(FakeProbe(1, rss=90 * MiB, uss=40 * MiB), None)
        world.remove(1)  # the master is not a pool child
        spy = _MasterSpy(interval=5.0)
        clock = Clock()
        cheap_calls: list[float] = []
        real_cheap = master.cheap

        def counted_cheap() -> tuple[int, int]:
            cheap_calls.append(clock.now)
            return real_cheap()

        master.cheap = counted_cheap  # type: ignore[method-assign]
        monitor = Monitor(pool=PoolHooks(children=world.children, master_pid=1, reserved=lambda: 7),
                          engine=SpyEngine([], kill_grace=2.0, poll_interval=1.0),
                          actuator=RecordingActuator(), board=None, metric="uss",  # type: ignore[arg-type]
                          host=HostReaders(open_probe=world.open_probe, clock=clock),  # type: ignore[arg-type]
                          detectors=[spy])  # type: ignore[list-item]
        assert monitor.master_every == 5.0
        for _ in range(11):  # polls at 101 .. 111
            clock.now += 1.0
            monitor.poll()
        assert [s.at for s, _ in spy.readings] == [101.0, 106.0, 111.0]
        assert cheap_calls == [101.0, 106.0, 111.0] and master.exact_calls == ["uss"] * 3
        assert all((s.pid, s.mem, s.rss, r) == (1, 40 * MiB, 90 * MiB, 7) for s, r in spy.readings)
        assert monitor.last_poll is not None and monitor.last_poll.master == spy.readings[-1][0]
        assert (monitor.polls, monitor.decisions, monitor.decided) == (11, 0, {})

    def test_decisions_are_counted_by_action_and_reason(self, logged: Path) -> None:
        h = Harness()
        h.world.add(FakeProbe(11, rss=300 * MiB, uss=250 * MiB), 0)
        h.poll()
        assert h.monitor.decided == {("recycle", "soft_limit"): 1} and h.monitor.decisions == 1


class TestMonitorChildLost:
    """A child killed by a signal MemGuard did not send: memguard.child_lost with the system's memory."""

    def test_low_available_memory_makes_a_sigkill_likely_oom(self, logged: Path) -> None:
        """SIGKILL with no oom_kill counter, a small child not growing, but under 5 % of memory available
        when it died: likely OOM. explain_loss's ``available`` was never passed, so this branch never ran."""
        gib = 1024 * MiB
        world = World()
        world.add(FakeProbe(11, 50 * MiB), 0)
        engine = SpyEngine([], kill_grace=2.0, poll_interval=1.0)
        clock = Clock()
        monitor = Monitor(pool=PoolHooks(children=world.children, exit_code=lambda pid: -9), engine=engine,
                          actuator=RecordingActuator(), board=None, metric="uss",  # type: ignore[arg-type]
                          host=HostReaders(open_probe=world.open_probe, clock=clock),  # type: ignore[arg-type]
                          explainer=LossExplainer(effective_memory=8 * gib, available=lambda: 100 * MiB))
        monitor.poll()
        world.remove(11)
        clock.now += 1.0
        monitor.poll()
        (lost,) = [r for r in event_records(logged) if r["event"] == "memguard.child_lost"]
        assert lost["likely_oom"] is True and "under 5%" in lost["reason"], lost


class _FakeWatch:
    """Stands in for a PressureWatch: the test calls ``fire`` as the kernel would."""

    def __init__(self) -> None:
        self.on_event: Any = None
        self.closed = False

    def start(self, on_event: Any, on_lost: Any) -> None:
        self.on_event = on_event

    def fire(self, source: str = "cgroup1-threshold") -> None:
        self.on_event(source)

    def close(self) -> None:
        self.closed = True


class TestMonitorPressureWake:
    """Kernel pressure notifications (pressure_event) and adaptive polling (pace)."""

    @pytest.mark.parametrize("board_wake", [True, False, None], ids=["wake-pipe", "activity-ticks", "no-board"])
    def test_notification_polls_at_once_with_a_fresh_system_reading(self, logged: Path,
                                                                     board_wake: bool | None) -> None:
        """Polling every 10 s: a notification brings a poll within milliseconds, and its system reading is taken
        then (not the one cached for SYSTEM_EVERY)."""
        from celery_memguard.samples import SystemSample

        board = Board(2, wake=board_wake) if board_wake is not None else None
        if board is not None:
            board.claim(0, 11, time.monotonic())
        reads: list[float] = []

        def system(at: float) -> SystemSample:
            reads.append(time.monotonic())
            return SystemSample(available=900 * MiB, total=1024 * MiB, used=124 * MiB, at=at)

        engine = Engine([HardLimit(limit=HARD)], kill_grace=2.0, poll_interval=10.0)
        world = World()
        world.add(FakeProbe(11, rss=10 * MiB), 0)
        watch = _FakeWatch()
        monitor = Monitor(pool=PoolHooks(children=world.children), engine=engine, actuator=RecordingActuator(),  # type: ignore[arg-type]
                          board=board, metric="uss", host=HostReaders(open_probe=world.open_probe, system=system),  # type: ignore[arg-type]
                          watch=watch)  # type: ignore[arg-type]
        monitor.start()
        try:
            deadline = time.monotonic() + 5.0
            while monitor.polls < 2 and time.monotonic() < deadline:
                time.sleep(0.01)
            time.sleep(0.3)
            settled, read = monitor.polls, len(reads)
            fired = time.monotonic()
            watch.fire()
            while monitor.polls == settled and time.monotonic() < fired + 2.0:
                time.sleep(0.001)
            assert monitor.polls == settled + 1, "no poll after the notification"
            assert len(reads) == read + 1 and reads[-1] - fired < 0.2, (reads, fired)
            assert monitor.pressure_wakes == 1
        finally:
            monitor.stop()
            if board is not None:
                board.close()
        assert watch.closed

    def test_notifications_coalesce(self, logged: Path) -> None:
        """A burst of notifications costs one poll per EVENT_SPACING at most."""
        from celery_memguard.monitor import EVENT_SPACING

        engine = Engine([HardLimit(limit=HARD)], kill_grace=2.0, poll_interval=10.0)
        world = World()
        world.add(FakeProbe(11, rss=10 * MiB), 0)
        watch = _FakeWatch()
        monitor = Monitor(pool=PoolHooks(children=world.children), engine=engine, actuator=RecordingActuator(),  # type: ignore[arg-type]
                          board=None, metric="uss", host=HostReaders(open_probe=world.open_probe), watch=watch)  # type: ignore[arg-type]
        monitor.start()
        try:
            deadline = time.monotonic() + 5.0
            while monitor.polls < 2 and time.monotonic() < deadline:
                time.sleep(0.01)
            time.sleep(0.2)
            settled = monitor.polls
            started = time.monotonic()
            while time.monotonic() - started < 0.2:
                watch.fire()
                time.sleep(0.0005)
            time.sleep(EVENT_SPACING * 2)
            spent = time.monotonic() - started
            assert 1 <= monitor.polls - settled <= spent / EVENT_SPACING + 1, (monitor.polls - settled, spent)
        finally:
            monitor.stop()

    def test_pace_shortens_the_delay_while_memory_falls(self, logged: Path) -> None:
        """With a pace, a falling system reading shortens the delay the poll returns; stable memory restores it."""
        from celery_memguard.pace import AdaptivePace
        from celery_memguard.samples import SystemSample

        available = [900 * MiB]
        h = Harness(hard=None)
        h.monitor.system = lambda at: SystemSample(available=available[0], total=1024 * MiB,
                                                   used=1024 * MiB - available[0], at=at)
        h.monitor.pace = AdaptivePace([256 * MiB], 1.0)
        h.world.add(FakeProbe(11, rss=10 * MiB), None)
        h.poll()
        assert h.poll() == 1.0
        available[0] = 500 * MiB  # 400 MiB/s, 244 MiB to the level: half of 0.61 s
        assert h.poll() == pytest.approx(0.305, abs=0.01)
        available[0] = 400 * MiB  # read again (the pace is faster than SYSTEM_EVERY): 100 MiB in 0.3 s
        assert h.poll(0.3) < 0.5
        assert h.poll(0.3) == 1.0  # stable


class TestWakeNote:
    """Decisions following a kernel notification say which, and how long after."""

    def test_decision_after_a_notification_carries_its_source_and_delay(self, logged: Path) -> None:
        h = Harness()
        h.world.add(FakeProbe(11, rss=10 * MiB), None)
        h.poll()
        h.monitor.pressure_event("cgroup1-threshold")
        h.clock.now += 0.003
        h.world.probes[11].rss = HARD + MiB  # over the hard limit: a decision at this poll
        h.world.probes[11].values["uss"] = HARD + MiB
        h.poll(0.0)
        (decision, _), = h.actuator.applied
        assert {"woken_by": "cgroup1-threshold", "since_wake_ms": 3.0} == dict(decision.detail)
        assert h.monitor._wake_note is None

    def test_note_expires_without_a_decision(self, logged: Path) -> None:
        h = Harness()
        h.world.add(FakeProbe(11, rss=10 * MiB), None)
        h.poll()
        h.monitor.pressure_event("psi")
        h.poll(0.01)
        assert h.monitor._wake_note is not None  # no decision yet: kept for the next poll
        h.poll(2.0)
        assert h.monitor._wake_note is None
