"""The Guard: what MemGuard knows right now (finding tables, the ``inspect stats`` summary), on synthetic state."""

from __future__ import annotations

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
            "suspects_kib_per_call": {"a": 4.0},
        }
        assert expected == g.summary()

    def test_before_start(self) -> None:
        """A guard whose monitor never started: inactive, nothing counted."""
        summary = guard().summary()
        assert (False, {}, {}) == (summary["active"], summary["children_mib"], summary["recycles"])


class TestBootstepInfo:
    def test_info_is_the_guards_summary_under_memguard(self) -> None:
        """``celery inspect stats`` merges every step's info(): MemGuard's is one ``memguard`` key."""
        from celery_memguard.worker.bootstep import MemGuard

        step: Any = object.__new__(MemGuard)
        step.guard = guard()
        assert {"memguard": step.guard.summary()} == step.info(None)
        step.guard = None
        assert {"memguard": {"active": False}} == step.info(None)
