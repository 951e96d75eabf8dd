"""Tests for celery_memguard.diagnostics.LeakSiteTracer, driven like the child runtime drives it.

No Celery: a "task" is a plain function called between ``tracer.before(name)`` and
``tracer.after(name, pid, task_id)``; other functions run between traced calls
without before/after, as other tasks do in a pool child. Events go to a list.
"""

from __future__ import annotations

import tracemalloc
from typing import Any, Callable, Iterator

import pytest

from celery_memguard import diagnostics
from celery_memguard.diagnostics import MODES, LeakSiteTracer

MIB = 1024 * 1024

#: What the "leaky" task keeps, and what the other (non-traced) task keeps.
LEAKED: list[bytes] = []
OTHER_KEPT: list[bytearray] = []


def leaky() -> None:
    LEAKED.append(bytes(MIB))  # the leaky line


def leaky_with_garbage() -> None:
    transient = [bytes(4 * MIB)]  # freed when the call returns: not retained
    LEAKED.append(bytes(MIB))  # the leaky line (2)
    del transient


def other_task() -> None:
    OTHER_KEPT.append(bytearray(2 * MIB))  # the other task's line


LEAKY_LINE = leaky.__code__.co_firstlineno + 1
LEAKY_LINE_2 = leaky_with_garbage.__code__.co_firstlineno + 2
OTHER_LINE = other_task.__code__.co_firstlineno + 1


class Events:
    """A fake ``emit``: collects ``(event, level, keys)``."""

    def __init__(self) -> None:
        self.records: list[tuple[str, str, dict[str, Any]]] = []

    def __call__(self, event: str, level: str = "info", **keys: Any) -> None:
        self.records.append((event, level, keys))

    def named(self, event: str) -> list[dict[str, Any]]:
        return [keys for name, _, keys in self.records if name == event]


@pytest.fixture(autouse=True)
def clean_state() -> Iterator[None]:
    was_tracing = tracemalloc.is_tracing()
    yield
    LEAKED.clear()
    OTHER_KEPT.clear()
    if tracemalloc.is_tracing() and not was_tracing:
        tracemalloc.stop()


@pytest.fixture
def events() -> Events:
    return Events()


def traced_call(tracer: LeakSiteTracer, name: str, func: Callable[[], None], task_id: str = "id") -> None:
    """One call of ``name`` as ChildRuntime makes it: before(), the call, after() if the tracer holds ``name``."""
    tracer.before(name)
    func()
    if tracer.task == name:
        tracer.after(name, 1234, task_id)


def sites_here(event: dict[str, Any]) -> list[dict[str, Any]]:
    return [s for s in event["sites"] if s["file"] == __file__]


def test_sites_name_only_the_suspects_line_not_other_tasks(events: Events) -> None:
    tracer = LeakSiteTracer("tracemalloc", calls=3, emit=events)
    for i in range(3):
        traced_call(tracer, "leaky", leaky, task_id=f"id{i}")
        other_task()  # another task in the same child, between traced calls
        other_task()
    (event,) = events.named("memguard.leak_sites")
    assert event["task"] == "leaky" and event["task_id"] == "id2" and event["pid"] == 1234
    assert event["calls_traced"] == 3
    assert [(s["file"], s["line"]) for s in event["sites"]] == [(__file__, LEAKY_LINE)], event["sites"]
    (site,) = event["sites"]
    assert 3 * 1024 <= site["size_kib"] <= 3 * 1024 + 8, site
    assert site["count"] >= 3
    assert not any(s["line"] == OTHER_LINE for s in event["sites"])
    assert tracer.done == {"leaky"} and not tracer.active
    assert events.named("memguard.error") == []


def test_memory_freed_within_the_call_is_not_a_site(events: Events) -> None:
    tracer = LeakSiteTracer("tracemalloc", calls=3, emit=events)
    for _ in range(3):
        traced_call(tracer, "leaky", leaky_with_garbage)
    (event,) = events.named("memguard.leak_sites")
    assert [(s["file"], s["line"]) for s in event["sites"]] == [(__file__, LEAKY_LINE_2)], event["sites"]
    assert 3 * 1024 <= event["sites"][0]["size_kib"] <= 3 * 1024 + 8


def test_tracemalloc_is_off_between_traced_calls_and_after_the_last(events: Events) -> None:
    assert not tracemalloc.is_tracing()
    tracer = LeakSiteTracer("tracemalloc", calls=3, emit=events)
    seen_during: list[bool] = []
    for _ in range(3):
        tracer.before("leaky")
        seen_during.append(tracemalloc.is_tracing())
        leaky()
        tracer.after("leaky", 1, "id")
        assert not tracemalloc.is_tracing()
        other_task()
    assert seen_during == [True, True, True]
    assert not tracemalloc.is_tracing()
    assert len(events.named("memguard.leak_sites")) == 1


def test_callers_own_tracemalloc_stays_on_and_sites_are_right(events: Events) -> None:
    tracemalloc.start(5)
    try:
        tracer = LeakSiteTracer("tracemalloc", calls=3, emit=events)
        other_task()  # traced by the caller's tracemalloc, before the suspect
        for _ in range(3):
            traced_call(tracer, "leaky", leaky)
            assert tracemalloc.is_tracing()
            other_task()
        assert tracemalloc.is_tracing()
        assert tracemalloc.get_traceback_limit() == 5
        (event,) = events.named("memguard.leak_sites")
        assert event["calls_traced"] == 3
        assert [(s["file"], s["line"]) for s in sites_here(event)] == [(__file__, LEAKY_LINE)], event["sites"]
        assert event["sites"][0]["line"] == LEAKY_LINE
        assert 3 * 1024 <= event["sites"][0]["size_kib"] <= 3 * 1024 + 8
    finally:
        tracemalloc.stop()


def test_pympler_reports_bytes_on_top_after_one_call(events: Events) -> None:
    pytest.importorskip("pympler")
    tracer = LeakSiteTracer("pympler", calls=3, emit=events)
    traced_call(tracer, "leaky", leaky, task_id="first")
    (event,) = events.named("memguard.leak_types")
    assert event["task"] == "leaky" and event["task_id"] == "first" and event["calls_traced"] == 1
    top = event["types"][0]
    assert "bytes" in top["type"] and top["size_kib"] >= 1024, event["types"]
    assert events.named("memguard.leak_sites") == []
    assert tracer.done == {"leaky"} and not tracer.active
    assert not tracemalloc.is_tracing()
    traced_call(tracer, "leaky", leaky)  # done: no second walk
    assert len(events.named("memguard.leak_types")) == 1


def test_pympler_walk_never_evaluates_lazy_proxies(events: Events) -> None:
    """A Celery Proxy met during the heap walk stays unevaluated (evaluating it can finalize an app)."""
    pytest.importorskip("pympler")
    from celery.local import Proxy

    evaluated: list[str] = []
    lazy = Proxy(lambda: evaluated.append("evaluated") or object())
    holder = [lazy]  # tracked container referring to the proxy
    tracer = LeakSiteTracer("pympler", calls=1, emit=events)
    traced_call(tracer, "leaky", leaky)
    assert events.named("memguard.leak_types"), events
    assert evaluated == [] and holder[0] is lazy


def test_both_keeps_pympler_walks_out_of_tracemalloc(events: Events, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("pympler")
    tracing_during_walks: list[bool] = []
    real_summary = LeakSiteTracer._type_summary

    def recording_summary() -> list[Any]:
        tracing_during_walks.append(tracemalloc.is_tracing())
        return real_summary()

    monkeypatch.setattr(LeakSiteTracer, "_type_summary", staticmethod(recording_summary))
    tracer = LeakSiteTracer("both", calls=3, emit=events)
    for _ in range(3):
        traced_call(tracer, "leaky", leaky)
        other_task()
    assert tracing_during_walks == [False, False]
    (types,) = events.named("memguard.leak_types")
    assert types["calls_traced"] == 1 and "bytes" in types["types"][0]["type"]
    (sites,) = events.named("memguard.leak_sites")
    assert sites["calls_traced"] == 3
    assert [(s["file"], s["line"]) for s in sites["sites"]] == [(__file__, LEAKY_LINE)], sites["sites"]
    assert [name for name, _, _ in events.records] == ["memguard.leak_types", "memguard.leak_sites"]
    assert not tracemalloc.is_tracing()


def test_stop_midway_leaves_tracemalloc_off_and_task_not_done(events: Events) -> None:
    tracer = LeakSiteTracer("tracemalloc", calls=3, emit=events)
    traced_call(tracer, "leaky", leaky)
    tracer.before("leaky")
    assert tracemalloc.is_tracing()
    tracer.stop()  # e.g. the task left the trace list
    assert not tracemalloc.is_tracing()
    assert not tracer.active and tracer.task is None
    assert tracer.done == set()
    tracer.stop()  # twice is fine
    assert events.records == []
    # It can be traced again from scratch later: 3 new calls, 3 MiB.
    for _ in range(3):
        traced_call(tracer, "leaky", leaky)
    (event,) = events.named("memguard.leak_sites")
    assert event["calls_traced"] == 3
    assert 3 * 1024 <= event["sites"][0]["size_kib"] <= 3 * 1024 + 8


def test_a_task_is_never_traced_twice(events: Events) -> None:
    tracer = LeakSiteTracer("tracemalloc", calls=2, emit=events)
    for _ in range(2):
        traced_call(tracer, "leaky", leaky)
    assert tracer.done == {"leaky"}
    for _ in range(3):
        tracer.before("leaky")
        assert not tracer.active and not tracemalloc.is_tracing()
        leaky()
        tracer.after("leaky", 1, "id")  # ignored, as child.py would not call it
    assert len(events.named("memguard.leak_sites")) == 1


def test_another_task_is_not_traced_while_one_is(events: Events) -> None:
    tracer = LeakSiteTracer("tracemalloc", calls=2, emit=events)
    traced_call(tracer, "leaky", leaky)
    tracer.before("other")  # also suspected, but one task at a time
    assert tracer.task == "leaky" and not tracemalloc.is_tracing()
    other_task()
    traced_call(tracer, "leaky", leaky)
    (event,) = events.named("memguard.leak_sites")
    assert [s["line"] for s in event["sites"]] == [LEAKY_LINE]
    # Now the other one can be traced.
    for _ in range(2):
        traced_call(tracer, "other", other_task)
    assert [e["task"] for e in events.named("memguard.leak_sites")] == ["leaky", "other"]
    assert events.named("memguard.leak_sites")[1]["sites"][0]["line"] == OTHER_LINE


def test_a_call_without_after_is_dropped_not_traced_into_the_next_task(events: Events) -> None:
    tracer = LeakSiteTracer("tracemalloc", calls=2, emit=events)
    tracer.before("leaky")
    leaky()  # after() never comes (e.g. the measurement was lost)
    tracer.before("other")  # the next task in the child
    assert not tracemalloc.is_tracing()
    other_task()
    for _ in range(2):
        traced_call(tracer, "leaky", leaky)
    (event,) = events.named("memguard.leak_sites")
    assert event["calls_traced"] == 2
    assert 2 * 1024 <= event["sites"][0]["size_kib"] <= 2 * 1024 + 8


def test_errors_do_not_escape_and_leave_tracemalloc_off(events: Events, monkeypatch: pytest.MonkeyPatch) -> None:
    tracer = LeakSiteTracer("tracemalloc", calls=3, emit=events)

    def broken_snapshot() -> tracemalloc.Snapshot:
        raise MemoryError("no room for a snapshot")

    monkeypatch.setattr(diagnostics.tracemalloc, "take_snapshot", broken_snapshot)
    traced_call(tracer, "leaky", leaky)  # must not raise
    assert not tracemalloc.is_tracing()
    assert not tracer.active and tracer.done == {"leaky"}
    (error,) = events.named("memguard.error")
    assert error["where"] == "diagnostics.after" and "MemoryError" in error["error"]
    traced_call(tracer, "leaky", leaky)  # given up: no second error
    assert len(events.named("memguard.error")) == 1


def test_failing_pympler_walk_in_before_is_contained(events: Events, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken_summary() -> list[Any]:
        raise ImportError("No module named 'pympler'")

    monkeypatch.setattr(LeakSiteTracer, "_type_summary", staticmethod(broken_summary))
    tracer = LeakSiteTracer("both", calls=3, emit=events)
    traced_call(tracer, "leaky", leaky)
    assert not tracemalloc.is_tracing() and not tracer.active
    (error,) = events.named("memguard.error")
    assert error["where"] == "diagnostics.before"


def test_modes_and_off() -> None:
    assert MODES == ("off", "tracemalloc", "pympler", "both")
    with pytest.raises(ValueError):
        LeakSiteTracer("everything")
    tracer = LeakSiteTracer("off")
    tracer.before("leaky")
    assert not tracer.active and not tracemalloc.is_tracing()


def test_type_growth_keeps_a_type_whose_size_grew_with_no_net_count() -> None:
    """A call that keeps a 2 MiB bytes while a message's bytes is freed: bytes grew by size, count 0."""
    pytest.importorskip("pympler")
    before = [["<class 'bytes'>", 5, 1000], ["<class 'int'>", 10, 280]]
    after = [["<class 'bytes'>", 5, 1000 + 2 * 1024 * 1024], ["<class 'int'>", 9, 252]]
    growth = LeakSiteTracer._type_growth(before, after)
    assert [("bytes" in g["type"], g["count"], g["size_kib"]) for g in growth] == [(True, 0, 2048.0)]
