"""memguard.sample: the monitor's polls logged every memguard_sample_interval seconds, with no extra reading.

The monitor runs with fake probes and a fake clock (see test_monitor's Harness); the sampler is the
real :class:`celery_memguard.sampling.SampleLog` on the monitor's ``on_poll`` hook, writing to a JSON log.
"""

from __future__ import annotations

from pathlib import Path

from celery_memguard import events
from celery_memguard.board import Board
from celery_memguard.config import DEFAULTS, MemGuardConfig
from celery_memguard.events import EVENT_KEYS
from celery_memguard.monitor import PollView
from celery_memguard.samples import ChildSample, MasterSample, SystemSample
from celery_memguard.sampling import SampleLog, sample_fields

from .test_monitor import MiB, FakeProbe, Harness, event_records


class CountingProbe(FakeProbe):
    """Counts every reading, so a test can tell the sampler made none of its own."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.cheap_calls = 0

    def cheap(self) -> tuple[int, int]:
        self.cheap_calls += 1
        return super().cheap()


def samples(path: Path) -> list[dict[str, object]]:
    return [r for r in event_records(path) if r["event"] == events.SAMPLE]


def test_default_interval_and_key() -> None:
    """On by default every 60 s; None turns it off; below 0.1 s is refused."""
    assert 60.0 == DEFAULTS["sample_interval"]
    assert MemGuardConfig.from_mapping({"memguard_sample_interval": None}, 8 << 30).sample_interval is None
    assert 5.0 == MemGuardConfig.from_mapping({"memguard_sample_interval": "5"}, 8 << 30).sample_interval
    import pytest

    from celery_memguard.exceptions import ConfigError
    with pytest.raises(ConfigError, match="memguard_sample_interval"):
        MemGuardConfig.from_mapping({"memguard_sample_interval": 0.05}, 8 << 30)


def test_samples_every_interval_from_the_polls_own_readings(logged: Path, tmp_path: Path) -> None:
    """One sample per interval (the first poll, then the first poll >= interval later), each child by slot with
    its memory, RSS and task count, the pool total; the probes are read exactly as often as without sampling."""
    board = Board(slots=4)
    try:
        h = Harness(board=board)
        a = h.world.add(CountingProbe(11, rss=150 * MiB), 1)
        b = h.world.add(CountingProbe(12, rss=90 * MiB), 0)
        sampler = SampleLog(10.0, "uss")
        h.monitor.on_poll = sampler.offer
        for _ in range(25):  # 25 polls 1 s apart: samples at polls 1, 11, 21
            h.poll(advance=1.0)
        assert 25 == a.cheap_calls == b.cheap_calls  # one reading per poll: none added by the sampler
        logged_samples = samples(logged)
        assert 3 == len(logged_samples) == sampler.logged
        first = logged_samples[0]
        assert set(first) - {"event", "ts", "level", "source_pid", "hostname"} == set(EVENT_KEYS[events.SAMPLE])
        assert [0, 1] == [c["slot"] for c in first["children"]]  # sorted by pool slot
        child = first["children"][1]
        assert {"slot": 1, "pid": 11, "mem_mib": 150.0, "rss_mib": 150.0, "tasks": 0, "exact": False} == child
        assert 240.0 == first["pool_mib"] == first["pool_rss_mib"]
        assert first["master_mib"] is None and first["available_mib"] is None  # not read by this monitor
        a.rss = 180 * MiB
        h.poll(advance=10.0)
        assert 180.0 == samples(logged)[-1]["children"][1]["rss_mib"]
    finally:
        board.close()


def test_master_system_fallback_and_unknown_slot() -> None:
    """The master's reading, the available memory, an RSS stand-in and a child without a slot."""
    view = PollView(
        at=5.0,
        children=(ChildSample(pid=7, mem=3 * MiB, exact=True, rss=5 * MiB, tasks_run=4, fallback="rss"),
                  ChildSample(pid=8, mem=2 * MiB, exact=True, rss=4 * MiB, tasks_run=1)),
        system=SystemSample(available=1024 * MiB, total=4096 * MiB, used=3072 * MiB),
        master=MasterSample(pid=1, mem=40 * MiB, rss=60 * MiB, at=4.0),
        slots={7: None, 8: 2},
    )
    fields = sample_fields(view, "pss")
    assert [{"slot": 2, "pid": 8, "mem_mib": 2.0, "rss_mib": 4.0, "tasks": 1},
            {"slot": None, "pid": 7, "mem_mib": 3.0, "rss_mib": 5.0, "tasks": 4, "metric": "rss"}] == fields["children"]
    assert (40.0, 60.0, 1024.0, 5.0, 9.0, "pss") == (fields["master_mib"], fields["master_rss_mib"],
                                                    fields["available_mib"], fields["pool_mib"],
                                                    fields["pool_rss_mib"], fields["metric"])


def test_a_failing_sampler_never_stops_the_poll(logged: Path) -> None:
    """on_poll raising is one memguard.error (once per cause); the monitor keeps polling and deciding."""
    h = Harness()
    h.world.add(FakeProbe(11, rss=150 * MiB), 0)

    def broken(view: PollView) -> None:
        raise RuntimeError("boom")

    h.monitor.on_poll = broken
    for _ in range(3):
        h.poll()
    errors = [r for r in event_records(logged) if r["event"] == events.ERROR]
    assert [("monitor.on_poll", "RuntimeError: boom")] == [(e["where"], e["error"]) for e in errors]
    assert 3 == h.monitor.polls and h.monitor.last_poll is not None


def test_tasks_finished_since_the_last_sample_are_tallied_per_name(logged: Path) -> None:
    """memguard.sample's ``tasks``: calls, failures, own peak (kernel peak minus RSS at start, or the retained
    delta without a peak), largest peak, retained sum, run times; the tally starts afresh after each sample,
    and flush() logs what finished after the last one (at stop)."""
    from celery_memguard.samples import TaskSample

    def rec(task: str, before: int, after: int, peak: int | None, ok: bool = True, s: float = 0.5) -> TaskSample:
        return TaskSample(pid=7, task=task, task_id="t", started=0.0, duration=s, mem_before=before * MiB,
                          mem_after=after * MiB, per_task_peak=None if peak is None else peak * MiB, succeeded=ok)

    view = PollView(at=1.0, children=(ChildSample(pid=7, mem=30 * MiB, exact=True, rss=40 * MiB, tasks_run=3),),
                    system=None, master=None, slots={7: 0})
    sampler = SampleLog(10.0, "uss", spawn_time=lambda: 0.4321)
    sampler.observe_tasks([rec("a", 40, 45, 140), rec("a", 45, 45, 60, ok=False, s=2.0), rec("b", 40, 52, None)])
    assert sampler.offer(view)
    sampler.observe_tasks([rec("b", 40, 41, 50)])
    assert not sampler.offer(PollView(at=2.0, children=view.children, system=None, master=None, slots={7: 0}))
    assert sampler.flush() and not sampler.flush()  # nothing new after the flush
    first, last = samples(logged)
    assert {"calls": 2, "failed": 1, "own_peak_mib": 100.0, "peak_mib": 140.0, "retained_mib": 5.0,
            "max_s": 2.0, "total_s": 2.5} == first["tasks"]["a"]
    assert 12.0 == first["tasks"]["b"]["own_peak_mib"] == first["tasks"]["b"]["retained_mib"]
    assert 0.432 == first["spawn_time_s"]
    assert ["b"] == list(last["tasks"]) and 10.0 == last["tasks"]["b"]["own_peak_mib"]


def test_task_names_beyond_the_cap_are_summed_under_other() -> None:
    from celery_memguard.samples import TaskSample
    from celery_memguard.sampling import MAX_SAMPLE_TASKS, TaskTally

    tally = TaskTally()
    tally.add(TaskSample(pid=1, task=f"t{i}", task_id="x", started=0.0, duration=0.1, mem_before=0, mem_after=0,
                         per_task_peak=MiB, succeeded=True) for i in range(MAX_SAMPLE_TASKS + 5))
    rows = tally.take()
    assert MAX_SAMPLE_TASKS + 1 == len(rows) and 5 == rows["(other)"]["calls"]
    assert {} == tally.take()


def test_replacement_gaps_from_the_old_childs_last_task_to_the_new_childs_start() -> None:
    """A slot whose child is replaced: the gap is the new child's spawned_at minus the old child's last finish
    (both monotonic); a first sight, a child without a slot and an idle recycle a minute later give none."""
    from celery_memguard.samples import TaskSample
    from celery_memguard.sampling import ReplacementGaps

    def rec(pid: int, started: float, duration: float) -> TaskSample:
        return TaskSample(pid=pid, task="t", task_id="x", started=started, duration=duration, mem_before=0,
                          mem_after=0, per_task_peak=None, succeeded=True)

    def view(*children: tuple[int, int | None, float]) -> PollView:
        return PollView(at=0.0, children=tuple(ChildSample(pid=p, mem=MiB, exact=True, rss=MiB, spawned_at=s)
                                               for p, _, s in children), system=None, master=None,
                        slots={p: slot for p, slot, _ in children})

    gaps = ReplacementGaps()
    gaps.poll(view((10, 0, 1.0), (20, 1, 1.0), (30, None, 1.0)))
    gaps.tasks([rec(10, 5.0, 0.5), rec(10, 6.0, 0.25), rec(20, 5.0, 1.0)])
    assert [] == gaps.take()
    gaps.poll(view((11, 0, 6.65), (21, 1, 90.0), (31, None, 7.0)))
    assert [0.4] == gaps.take()  # 6.65 - (6.0 + 0.25); slot 1's 84 s is no replacement cost
    gaps.poll(view((12, 0, 0.0)))  # 12 has not taken its board slot yet: its start is unknown, wait
    assert [] == gaps.take()
    gaps.poll(view((12, 0, 9.0)))  # 11's records have not arrived yet: resolved at the next sample
    assert [] == gaps.take()
    gaps.tasks([rec(11, 7.0, 1.5)])
    assert [0.5] == gaps.take()
