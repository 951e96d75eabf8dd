"""The Guard: what MemGuard knows right now (finding tables, the ``inspect stats`` summary), on synthetic state."""

from __future__ import annotations

import os

from types import SimpleNamespace
from typing import Any

import pytest

from celery_memguard import events
from celery_memguard.config import MemGuardConfig
from celery_memguard.detectors.base import Finding
from celery_memguard.guard import Guard
from celery_memguard.monitor import PollView
from celery_memguard.samples import ChildSample

MiB = 1024 * 1024


def guard(**conf: Any) -> Guard:
    config = MemGuardConfig.from_mapping({"memguard_soft_limit": "512MiB", "memguard_hard_limit": "1GiB", **conf},
                                         8 * 1024 * MiB)
    return Guard(config, pool_name="prefork", board=None)


class TestRecord:
    def test_each_finding_is_logged_once_at_its_level(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """record() is the one place a finding becomes an event."""
        emitted: list[tuple[str, str]] = []
        monkeypatch.setattr(events, "emit", lambda event, level="info", **keys: emitted.append((event, level)))
        g = guard()
        g.record(Finding(events.LEAK_SUSPECTED, {"task": "a", "kib_per_call": 4.0}, task="a"))
        g.record(Finding(events.GROWTH_WATCH, {"task": "w", "state": "watching"}, task="w"))
        g.record(Finding(events.MASTER_GROWTH, {"mem_mib": 300.0}))
        expected = [(events.LEAK_SUSPECTED, "warning"), (events.GROWTH_WATCH, "info"), (events.MASTER_GROWTH, "warning")]
        assert expected == emitted
        assert {"a": {"task": "a", "kib_per_call": 4.0}} == g.suspects and {"mem_mib": 300.0} == g.master_growth


class TestSummary:
    def test_limits_children_decisions_by_reason_and_suspects(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """The ``inspect stats`` section: limits, per-child memory, recycles/kills by reason, suspects."""
        monkeypatch.setattr(events, "emit", lambda *a, **k: None)
        g = guard()
        view = PollView(at=1.0, children=(ChildSample(pid=11, mem=300 * MiB, exact=True, rss=320 * MiB),
                                          ChildSample(pid=12, mem=50 * MiB, exact=False, rss=60 * MiB)),
                        system=None, master=None)
        g.monitor = SimpleNamespace(last_poll=view, decided={("recycle", "soft_limit"): 3, ("kill", "hard_limit"): 1,
                                                             ("force_kill", "hard_limit"): 1})  # type: ignore[assignment]
        g.record(Finding(events.LEAK_SUSPECTED, {"task": "a", "kib_per_call": 4.0}, task="a"))
        expected = {
            "active": True, "metric": "uss", "dry_run": False,
            "limits_mib": {"soft": 512.0, "hard": 1024.0, "pool": None},
            "children_mib": {"11": 300.0, "12": 50.0},
            "recycles": {"soft_limit": 3}, "kills": {"hard_limit": 1}, "sigkills": {"hard_limit": 1},
            "suspects_kib_per_call": {"a": 4.0}, "metrics_url": None,
            "intake": {"enabled": False, "paused": False, "trigger": None, "paused_for_s": None, "pauses": 0,
                       "paused_s_total": 0.0, "held": None},
        }
        assert expected == g.summary()

    def test_before_start(self) -> None:
        """A guard whose monitor never started: inactive, nothing counted."""
        summary = guard().summary()
        assert (False, {}, {}) == (summary["active"], summary["children_mib"], summary["recycles"])


class TestPublicView:
    """What status, metrics and ``inspect stats`` read: the Guard's own properties, never its monitor."""

    def test_polls_and_unreadable_children_from_the_running_monitor(self) -> None:
        """The monitor's poll count and unreadable children, through the Guard."""
        g = guard()
        g.monitor = SimpleNamespace(polls=7, unreadable_children=2, decided={}, last_poll=None)  # type: ignore[assignment]
        assert (True, 7, 2) == (g.active, g.polls, g.unreadable_children)

    def test_nothing_before_start(self) -> None:
        """Before the monitor starts (or without one): inactive, no poll, no unreadable child, no decision."""
        g = guard()
        assert (False, 0, 0, {}, None) == (g.active, g.polls, g.unreadable_children, g.decided, g.last_poll)


class TestBootstepInfo:
    def test_info_is_the_guards_summary_under_memguard(self) -> None:
        """``celery inspect stats`` merges every step's info(): MemGuard's is one ``memguard`` key."""
        from celery_memguard.worker.bootstep import MemGuard

        step: Any = object.__new__(MemGuard)
        step.guard = guard()
        assert {"memguard": step.guard.summary()} == step.info(None)
        step.guard = None
        assert {"memguard": {"active": False}} == step.info(None)


class TestPressureWatch:
    """Guard._pressure_watch: what is armed is said once in memguard.pressure_watch; arming errors fail open."""

    @staticmethod
    def said(logged: Any) -> list[dict[str, Any]]:
        import json

        return [json.loads(line) for line in logged.read_text().splitlines()]

    def test_no_pressure_setting_arms_and_says_nothing(self, logged: Any) -> None:
        from celery_memguard.pace import PressurePlan

        g = guard()
        assert g._pressure_watch(PressurePlan.from_config(g.config), None) is None
        assert [] == self.said(logged)

    def test_adaptive_mode_says_why_nothing_is_armed(self, logged: Any) -> None:
        from celery_memguard.pace import AdaptivePace, PressurePlan

        g = guard(memguard_min_available="1GiB", memguard_pressure_wake="adaptive")
        plan = PressurePlan.from_config(g.config)
        assert g._pressure_watch(plan, AdaptivePace(plan.available_levels, 1.0)) is None
        [said] = self.said(logged)
        assert ("memguard.pressure_watch", [], True, "memguard_pressure_wake='adaptive'") == (
            said["event"], said["wake"], said["adaptive_poll"], said["fallback"])

    def test_a_refusal_is_a_fallback_not_an_error(self, logged: Any, monkeypatch: pytest.MonkeyPatch) -> None:
        """An unprivileged worker (EACCES on cgroup.event_control, EPERM...) is told why, not alarmed at each start."""
        import errno

        from celery_memguard import guard as guard_module
        from celery_memguard.pace import PressurePlan
        from celery_memguard.probes.pressure_events import PressureWatchError

        for code in (errno.EACCES, errno.EPERM, errno.EROFS, errno.EINVAL, errno.EOPNOTSUPP):
            def refuse(*args: Any, code: int = code, **kwargs: Any) -> Any:
                raise PressureWatchError(f"cgroup.event_control: {os.strerror(code)}", [OSError(code, os.strerror(code))])

            monkeypatch.setattr(guard_module, "open_pressure_watch", refuse)
            logged.write_text("")
            g = guard(memguard_min_available="1GiB")
            assert g._pressure_watch(PressurePlan.from_config(g.config), None) is None
            [said] = self.said(logged)
            assert ("memguard.pressure_watch", []) == (said["event"], said["wake"])
            assert os.strerror(code) in said["fallback"]

    def test_an_unexpected_arming_error_is_one_memguard_error_and_a_fallback(
            self, logged: Any, monkeypatch: pytest.MonkeyPatch) -> None:
        import errno

        from celery_memguard import guard as guard_module
        from celery_memguard.pace import PressurePlan
        from celery_memguard.probes.pressure_events import PressureWatchError

        def fail(*args: Any, **kwargs: Any) -> Any:
            raise PressureWatchError("cgroup.event_control: I/O error", [OSError(errno.EIO, "I/O error")])

        monkeypatch.setattr(guard_module, "open_pressure_watch", fail)
        g = guard(memguard_min_available="1GiB")
        assert g._pressure_watch(PressurePlan.from_config(g.config), None) is None
        error, said = self.said(logged)
        assert ("memguard.error", "guard.pressure_watch") == (error["event"], error["where"])
        assert ([], "cgroup.event_control: I/O error") == (said["wake"], said["fallback"])

    def test_nothing_to_arm_is_no_error(self, logged: Any, monkeypatch: pytest.MonkeyPatch) -> None:
        from celery_memguard import guard as guard_module
        from celery_memguard.pace import PressurePlan
        from celery_memguard.probes.pressure_events import PressureWatchError

        def nothing(*args: Any, **kwargs: Any) -> Any:
            raise PressureWatchError("no memory cgroup limit; /proc/pressure/memory not present")

        monkeypatch.setattr(guard_module, "open_pressure_watch", nothing)
        g = guard(memguard_min_available="1GiB")
        g._pressure_watch(PressurePlan.from_config(g.config), None)
        [said] = self.said(logged)
        assert "memguard.pressure_watch" == said["event"] and "not present" in said["fallback"]

    def test_a_bug_while_arming_fails_open(self, logged: Any, monkeypatch: pytest.MonkeyPatch) -> None:
        from celery_memguard import guard as guard_module
        from celery_memguard.pace import PressurePlan

        monkeypatch.setattr(guard_module, "open_pressure_watch", lambda *a, **k: 1 / 0)
        g = guard(memguard_min_available="1GiB")
        assert g._pressure_watch(PressurePlan.from_config(g.config), None) is None
        error, said = self.said(logged)
        assert "ZeroDivisionError" in error["error"] and "ZeroDivisionError" in said["fallback"]


class _Switch:
    """A stand-in for the worker's intake valve: records the flips."""

    def __init__(self, fail: bool = False) -> None:
        self.flips: list[bool] = []
        self.fail = fail

    def set_paused(self, paused: bool) -> None:
        if self.fail:
            raise OSError("the loop is gone")
        self.flips.append(paused)

    @property
    def held(self) -> int:
        return 3


class TestIntake:
    def reading(self, available_mib: float) -> Any:
        from celery_memguard.samples import SystemSample

        return SystemSample(available=int(available_mib * MiB), total=8192 * MiB,
                            used=int((8192 - available_mib) * MiB), psi_some_avg10=None, at=0.0)

    def test_pause_and_resume_flip_the_switch_log_and_publish_the_state(
            self, monkeypatch: pytest.MonkeyPatch) -> None:
        """A crossing pauses (event, switch, state, paused property); recovery past the margin resumes."""
        emitted: list[tuple[str, str, dict[str, Any]]] = []
        monkeypatch.setattr(events, "emit", lambda event, level="info", **keys: emitted.append((event, level, keys)))
        g = guard(memguard_pause_below="1GiB", memguard_pause_resume_after=0)
        switch = _Switch()
        g._switch = switch
        busy = [ChildSample(pid=1, mem=100 * MiB, exact=True, rss=100 * MiB, task="t", task_id="x")]
        assert g.paused is False
        g.observe_intake(10.0, self.reading(2048), busy)
        g.observe_intake(11.0, self.reading(900), busy)
        assert switch.flips == [True] and g.paused is True
        assert g.intake_status(12.5) == {"enabled": True, "paused": True, "trigger": "available", "paused_for_s": 1.5,
                                         "pauses": 1, "paused_s_total": 0.0, "held": 3}
        g.observe_intake(12.0, self.reading(1200), [])  # above 1 GiB but below the 1.25 GiB resume level
        g.observe_intake(13.0, self.reading(1300), [])
        assert switch.flips == [True, False] and g.paused is False and g.intake_state.paused_s_total == 2.0
        assert [(e, lvl) for e, lvl, _ in emitted] == [(events.PAUSED, "warning"), (events.RESUMED, "info")]
        paused = emitted[0][2]
        assert (paused["trigger"], paused["available_mib"], paused["held"], paused["running"]) == (
            "available", 900.0, 3, 1)
        assert set(emitted[1][2]) == set(events.EVENT_KEYS[events.RESUMED])

    def test_a_failing_switch_is_logged_and_the_state_still_changes(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Fail open: the switch raising is one memguard.error; the event is still logged."""
        errors: list[str] = []
        monkeypatch.setattr(events, "error", lambda where, exc: errors.append(where))
        monkeypatch.setattr(events, "emit", lambda *a, **k: None)
        g = guard(memguard_pause_below="1GiB")
        g._switch = _Switch(fail=True)
        g.observe_intake(1.0, self.reading(100), [])
        assert errors == ["guard.intake_switch"] and g.paused is True

    def test_without_pause_settings_nothing_is_judged(self) -> None:
        """No memguard_pause_*: no decision, paused is None (no gauge), the status says disabled."""
        g = guard()
        g.observe_intake(1.0, self.reading(1), [])
        assert g.intake is None and g.paused is None and g.intake_status(1.0)["enabled"] is False


class TestIntakeDryRun:
    def test_dry_run_logs_pause_and_resume_but_never_flips_the_switch(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """memguard_dry_run: memguard.paused/resumed are logged with dry_run true, intake goes on (before:
        the switch was flipped and the worker really paused)."""
        from celery_memguard.worker.bootstep import wants_intake_valve

        emitted: list[tuple[str, dict[str, Any]]] = []
        monkeypatch.setattr(events, "emit", lambda event, level="info", **keys: emitted.append((event, keys)))
        g = guard(memguard_pause_below="1GiB", memguard_pause_resume_after=0, memguard_dry_run=True)
        switch = _Switch()
        g._switch = switch
        g.observe_intake(1.0, TestIntake().reading(900), [])
        g.observe_intake(2.0, TestIntake().reading(2048), [])
        assert switch.flips == []
        assert [(e, keys["dry_run"], keys["held"]) for e, keys in emitted] == [
            (events.PAUSED, True, None), (events.RESUMED, True, None)]
        assert not wants_intake_valve(g.config)
        assert wants_intake_valve(guard(memguard_pause_below="1GiB").config)
        assert not wants_intake_valve(guard().config)
