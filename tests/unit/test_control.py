"""The ``memguard`` inspect command and ``celery memguard status`` rendering, on synthetic state (no worker)."""

from __future__ import annotations

from collections import Counter
from types import SimpleNamespace
from typing import Any

import pytest

from celery_memguard import events
from celery_memguard.cli import render_status
from celery_memguard.config import MemGuardConfig
from celery_memguard.guard import IntakeState
from celery_memguard.monitor import PollView
from celery_memguard.samples import Action, ChildSample, MasterSample, SystemSample
from celery_memguard.worker.control import COMMAND, NOT_ENABLED, memguard_status, status_of

MiB = 1024 * 1024


def step(*, monitor: Any = None, prefork: bool = True, **conf: Any) -> Any:
    """A Guard's public view as the status command reads it (config, latest poll, finding tables), synthetic."""
    config = MemGuardConfig.from_mapping({"memguard_soft_limit": "512MiB", **conf}, 8 * 1024 * MiB)
    engine = getattr(monitor, "engine", None)
    pending = engine.pending if engine is not None else (lambda pid: None)
    return SimpleNamespace(
        config=config, active=monitor is not None, board=object() if prefork else None,
        last_poll=getattr(monitor, "last_poll", None), polls=getattr(monitor, "polls", 0),
        decided=dict(getattr(monitor, "decided", {})), unreadable_children=getattr(monitor, "unreadable_children", 0),
        pool_name="prefork" if prefork else "solo", pending=pending,
        suspects={"app.leak": {"task": "app.leak", "kib_per_call": 2048.0, "confidence": 0.9,
                               "calls_observed": 21, "children": 2}},
        heavy={"app.big": 2},
        master_growth=None,
        intake_status=lambda now: IntakeState().as_dict(now),
    )


def monitor() -> Any:
    children = (
        ChildSample(pid=101, mem=300 * MiB, exact=True, rss=340 * MiB, task="app.leak", task_id="t1", tasks_run=9,
                    spawned_at=90.0),
        ChildSample(pid=102, mem=50 * MiB, exact=False, rss=60 * MiB, tasks_run=3, spawned_at=95.0),
    )
    system = SystemSample(available=900 * MiB, total=4096 * MiB, used=3196 * MiB, psi_some_avg10=1.5, at=99.0)
    view = PollView(at=100.0, children=children, system=system,
                    master=MasterSample(pid=100, mem=80 * MiB, rss=120 * MiB, at=98.0))
    pending = {101: Action.RECYCLE}
    return SimpleNamespace(last_poll=view, polls=42, decided=Counter({("recycle", "soft_limit"): 3}),
                           engine=SimpleNamespace(pending=pending.get), master_pid=100)


class TestStatusOf:
    def test_children_master_system_suspects_and_decisions(self) -> None:
        status = status_of(step(monitor=monitor()), now=100.5)
        assert (status["active"], status["pool"], status["metric"], status["polls"]) == (True, "prefork", "uss", 42)
        assert status["limits"]["soft_limit_mib"] == 512.0 and status["limits"]["hard_limit_mib"] is None
        first, second = status["children"]
        assert first == {"pid": 101, "mem_mib": 300.0, "exact": True, "metric": "uss", "rss_mib": 340.0, "task": "app.leak",
                         "task_id": "t1", "tasks_run": 9, "age_s": 10.0, "leaving": "recycle"}
        assert (second["exact"], second["leaving"], second["task"]) == (False, None, None)
        assert (status["pool_mib"], status["pool_exact"], status["poll_age_s"]) == (350.0, False, 0.5)
        assert status["master"] == {"pid": 100, "mem_mib": 80.0, "rss_mib": 120.0, "age_s": 2.5}
        assert status["system"] == {"available_mib": 900.0, "total_mib": 4096.0, "psi_some_avg10": 1.5}
        assert status["suspects"][0]["task"] == "app.leak" and status["heavy_tasks"] == {"app.big": 2}
        assert status["decisions"] == {"recycle:soft_limit": 3}

    def test_before_the_first_poll(self) -> None:
        status = status_of(step(monitor=SimpleNamespace(last_poll=None, polls=0, decided=Counter())), now=1.0)
        assert status["active"] is True and status["children"] == [] and "master" not in status

    def test_not_policing(self) -> None:
        status = status_of(step(prefork=False), now=1.0)
        assert status["active"] is False and "no child processes" in status["reason"]
        assert status_of(step(), now=1.0)["reason"].startswith("the monitor did not start")


class TestInspectCommand:
    def test_registered_with_celery(self) -> None:
        from celery.worker.control import Panel

        assert Panel.data[COMMAND] is memguard_status and Panel.meta[COMMAND].type == "inspect"

    def test_worker_without_memguard(self) -> None:
        state = SimpleNamespace(consumer=SimpleNamespace(controller=SimpleNamespace()))
        assert memguard_status(state) == {"error": NOT_ENABLED}

    def test_failure_is_a_reply_and_one_error_event(self, monkeypatch: pytest.MonkeyPatch) -> None:
        logged: list[tuple[str, BaseException]] = []
        monkeypatch.setattr(events, "error", lambda where, exc: logged.append((where, exc)))

        def broken() -> dict[str, Any]:
            raise RuntimeError("boom")

        state = SimpleNamespace(consumer=SimpleNamespace(controller=SimpleNamespace(
            memguard=SimpleNamespace(status=broken))))
        assert memguard_status(state) == {"error": "RuntimeError: boom"}
        assert [w for w, _ in logged] == ["control.status"]


class TestRenderStatus:
    def test_table(self) -> None:
        text = render_status([{"celery@a": status_of(step(monitor=monitor()), now=100.5)}])
        lines = text.splitlines()
        assert lines[0] == "celery@a  (pool prefork, metric uss, soft 512.0 MiB)"
        assert "42 polls, last 0.50 s ago" in text
        assert "master pid 100: uss 80.0 MiB, rss 120.0 MiB" in text
        assert "available 900.0 MiB of 4,096.0 MiB, PSI some avg10 1.50" in text
        row = next(line for line in lines if line.strip().startswith("101"))
        assert "300.0" in row and "recycle" in row and "app.leak t1" in row
        assert any(line.strip().startswith("102") and "<=50.0" in line and "idle" in line for line in lines)
        assert "pool total <=350.0 MiB (<= marks an upper bound" in text
        assert "app.leak: 2,048.0 KiB/call, confidence 0.90, 21 calls in 2 children" in text
        assert "heavy tasks: app.big x2" in text and "decisions: recycle:soft_limit 3" in text

    def test_intake_paused_and_open(self) -> None:
        """With the pause on, the header names its thresholds and a line says whether intake is paused."""
        base = {"active": True, "pool": "prefork", "metric": "uss", "polls": 3, "poll_age_s": 0.1,
                "limits": {"pause_below_mib": 256.0}}
        paused = {**base, "intake": {"enabled": True, "paused": True, "trigger": "available", "paused_for_s": 2.5,
                                     "pauses": 1, "paused_s_total": 0.0, "held": 8}}
        text = render_status([{"celery@a": paused}])
        assert "pause below 256.0 MiB" in text and "intake PAUSED (available) for 2.5 s, 8 tasks held" in text
        opened = {**base, "intake": {**paused["intake"], "paused": False, "paused_s_total": 2.5}}
        assert "intake open (1 pauses, 2.5 s paused in all)" in render_status([{"celery@a": opened}])

    def test_errors_and_foreign_replies_are_shown_not_raised(self) -> None:
        text = render_status([{"celery@b": {"error": NOT_ENABLED}}, {"celery@c": ["odd"]},
                              {"celery@d": {"active": False, "pool": "solo", "reason": "no children"}}])
        assert f"celery@b: {NOT_ENABLED}" in text and "celery@c: unexpected reply ['odd']" in text
        assert "not policing: no children" in text and "leak suspects: none" in text


class TestFindingTables:
    """The guard's finding tables: the status command's suspects and the children's trace list."""

    def make(self, monkeypatch: pytest.MonkeyPatch, diagnostics: str = "tracemalloc") -> tuple[Any, list[list[str]]]:
        from celery_memguard.guard import Guard

        monkeypatch.setattr(events, "emit", lambda *a, **k: None)
        traces: list[list[str]] = []
        config = MemGuardConfig.from_mapping({"memguard_diagnostics": diagnostics, "memguard_leak_detection": False},
                                             8 * 1024 * MiB)
        board: Any = SimpleNamespace(set_trace=lambda names: traces.append(list(names)))
        return Guard(config, pool_name="prefork", board=board), traces

    def test_trace_list_follows_suspicions_oldest_first(self, monkeypatch: pytest.MonkeyPatch) -> None:
        from celery_memguard.detectors.base import Finding

        step, traces = self.make(monkeypatch)
        step.record(Finding("memguard.leak_suspected", {"task": "a", "kib_per_call": 1.0}, task="a"))
        step.record(Finding("memguard.leak_suspected", {"task": "a", "kib_per_call": 2.0}, task="a"))  # update
        step.record(Finding("memguard.leak_suspected", {"task": "b", "kib_per_call": 3.0}, task="b"))
        step.record(Finding("memguard.heavy_task", {"task": "c"}, task="c"))
        step.record(Finding("memguard.leak_cleared", {"task": "a"}, task="a"))
        assert traces == [["a"], ["a", "b"], ["b"]]
        assert step.suspects == {"b": {"task": "b", "kib_per_call": 3.0}}
        assert step.heavy == {"c": 1}

    def test_watched_names_published_with_the_watch_mark(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Growing names the leak detector watches are published (marked) so children measure every call."""
        from celery_memguard.board import WATCH_MARK
        from celery_memguard.detectors import LeakDetector
        from celery_memguard.detectors.base import Finding

        for diagnostics, first in (("tracemalloc", ["a"]), ("off", [WATCH_MARK + "a"])):
            step, traces = self.make(monkeypatch, diagnostics)
            step._leak = leak = LeakDetector(heap_deltas=True)
            monkeypatch.setattr(LeakDetector, "watched", property(lambda self: self._names), raising=False)
            leak._names = frozenset({"a", "w"})  # type: ignore[attr-defined]
            step.record(Finding("memguard.growth_watch", {"task": "w", "state": "watching"}, task="w"))
            step.record(Finding("memguard.leak_suspected", {"task": "a", "kib_per_call": 1.0}, task="a"))
            assert traces[-1] == sorted(first + [WATCH_MARK + "w"]) or traces[-1] == first + [WATCH_MARK + "w"]
            leak._names = frozenset()  # type: ignore[attr-defined]
            step.record(Finding("memguard.growth_watch", {"task": "w", "state": "settled"}, task="w"))
            assert traces[-1] == (["a"] if diagnostics != "off" else [])

    def test_no_trace_list_with_diagnostics_off(self, monkeypatch: pytest.MonkeyPatch) -> None:
        from celery_memguard.detectors.base import Finding

        step, traces = self.make(monkeypatch, diagnostics="off")
        step.record(Finding("memguard.leak_suspected", {"task": "a"}, task="a"))
        assert traces == [] and list(step.suspects) == ["a"]
