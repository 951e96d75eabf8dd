"""Every recycling policy of issue 4 on a real prefork worker: the right child, the right reason, no task lost.

One test per policy (pool budget, system pressure, leak projection, task count and
lifetime with jitter, the recycle-storm guard, strikes, a custom policy, dry run).
Each starts a worker with the harness's ``start_worker`` and loads
:mod:`tests.integration.policy_tasks` through Celery's ``imports`` setting. Every
scenario counts its tasks' results: every task that memguard did not kill must end
in ``SUCCESS`` (a recycle is graceful: the child finishes its task first).

System pressure is produced without exhausting anything: ``memguard_min_available`` is set
4 GiB above the host's current ``MemAvailable``, so the worker is "under pressure" from start
to end and recycles one child after another; the test checks whom it picks (idle ones before
a larger busy one) and that no task is lost to the churn. The transition into pressure, and
acting before the kernel's OOM killer, are shown inside a real memory cgroup in
``test_cgroup.py``, where the worker's own allocations are the only ones that count.

Tests marked ``xfail(strict=True, reason="BUG: ...")`` pin down defects found here (the
reason names file and cause); they start passing, and must then lose the mark, once fixed.

Sizes are small and polls short (0.1 s) so the file runs in about two minutes; the
machine is shared, so nothing asserts on durations (timeouts only bound hangs).
"""

from __future__ import annotations

import time
from collections import Counter
from datetime import datetime
from typing import Any, Iterable

import pytest

from .conftest import Outcome, StartWorker, Worker, wait_until
from .policy_tasks import MARKER_REASON, MARKER_TASK, MODULE

MiB = 1024 * 1024
POLL = 0.1


def conf(**memguard: Any) -> dict[str, Any]:
    """Worker settings: the policy task module, a short poll, and ``memguard_<key>`` for each keyword."""
    settings: dict[str, Any] = {"imports": [MODULE], "memguard_poll_interval": POLL}
    settings.update({f"memguard_{key}": value for key, value in memguard.items()})
    return settings


def all_succeeded(outcomes: Iterable[Outcome]) -> None:
    """Fail with the tracebacks unless every outcome is SUCCESS."""
    bad = [(o.task_id, o.state, o.traceback) for o in outcomes if o.state != "SUCCESS"]
    assert not bad, bad


def ts(event: dict[str, Any]) -> float:
    """An event's timestamp in seconds."""
    return datetime.fromisoformat(event["ts"]).timestamp()


def pings(worker: Worker, count: int, sleep: float = 0.0) -> list[Outcome]:
    """Send ``count`` it.ping tasks and wait for them all."""
    return worker.collect([worker.send("it.ping", sleep) for _ in range(count)], timeout=120)


def polls_of(events: Iterable[dict[str, Any]], gap: float = 0.05) -> int:
    """How many distinct polls ``events`` came from: groups of timestamps less than ``gap`` s apart."""
    times = sorted(ts(e) for e in events)
    return (1 + sum(b - a > gap for a, b in zip(times, times[1:]))) if times else 0


def pids_of(outcomes: Iterable[Outcome]) -> list[int]:
    """The pool child that ran each task (tasks return it, or a dict with ``pid``)."""
    return [o.value["pid"] if isinstance(o.value, dict) else int(o.value) for o in outcomes]


# -- 1. pool budget ----------------------------------------------------------------------------------

#: What the three children keep (MiB) and the budget. A child's baseline USS is 40-60 MiB here, so the pool
#: crosses 360 MiB only once the 400 MiB child holds at least ~100 MiB: by then it is the largest, whatever the
#: baselines. Without it the pool (3 baselines + 80 MiB) is well within the budget.
POOL_KEEP_MIB = (20, 60, 400)
POOL_LIMIT_MIB = 360


def test_pool_limit_recycles_the_largest_child_with_its_ranking(start_worker: StartWorker, redis_url: str) -> None:
    """Three children keep 20, 60 and 400 MiB; over the pool budget the 400 MiB one is recycled, ranked first."""
    worker = start_worker(redis_url, concurrency=3, conf=conf(pool_limit=f"{POOL_LIMIT_MIB}MiB"))

    # All three run at once (each stays busy 2 s), so they land on three different children; the big one
    # starts allocating last.
    small, medium, big = (worker.send("pt.hold", mib, 2.0, 0.6 if mib == max(POOL_KEEP_MIB) else 0.0)
                          for mib in POOL_KEEP_MIB)
    held = worker.collect([small, medium, big])
    after = pings(worker, 20)

    all_succeeded(held + after)
    small_pid, medium_pid, big_pid = pids_of(held)
    assert len({small_pid, medium_pid, big_pid}) == 3, held
    recycled = worker.wait_for_event("memguard.child_recycled")
    wait_until(lambda: big_pid not in worker.child_pids(), 20, what="the largest child to leave")
    events = worker.events("memguard.child_recycled")
    assert len(events) == 1, events  # one victim, and the pool is back within budget without it
    assert recycled["reason"] == "pool_limit"
    assert recycled["pid"] == big_pid
    assert recycled["task_id"] == big.id  # chosen while busy: it finished its task (SUCCESS above), then left
    ranking = recycled["ranking"]
    assert [r["pid"] for r in ranking] == [big_pid, medium_pid, small_pid], ranking
    assert ranking[0]["mem_mib"] > ranking[1]["mem_mib"] > ranking[2]["mem_mib"], ranking
    assert recycled["total"] > POOL_LIMIT_MIB * MiB and recycled["limit_mib"] == POOL_LIMIT_MIB
    assert {small_pid, medium_pid} <= worker.child_pids()
    assert worker.events("memguard.error") == []


# -- 2. system pressure -------------------------------------------------------------------------------

#: Added to the machine's available memory to make min_available: far more than other jobs on a shared machine
#: free in a minute, so the worker stays "under pressure" from start to end without anything being exhausted.
PRESSURE_MARGIN = 4 * 1024 * MiB


def available_memory() -> int:
    """MemAvailable of the host (the worker's cgroup here has no limit, so this is what memguard reads)."""
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no MemAvailable in /proc/meminfo")


def permanent_pressure_floor() -> int:
    """A ``min_available`` the host never meets: far above what it has now, yet below its effective memory.

    MemGuard refuses a floor at or above the effective memory (it could never be met); available memory is
    always below that, so one MiB under it still means "under pressure" from start to end.
    """
    from celery_memguard.probes import effective_memory

    return min(available_memory() + PRESSURE_MARGIN, effective_memory() - MiB)


def test_pressure_recycles_only_the_child_holding_memory_and_reports_pressure_it_cannot_relieve(
        start_worker: StartWorker, redis_url: str) -> None:
    """Permanent pressure from outside the pool: the child that took 200 MiB goes, the fresh ones never do.

    min_available is set far above what the host has (4 GiB, or just under its total), so the worker is under pressure from start to end and
    nothing the pool does can end it. Only a child resident at least memguard_pressure_min_relief (32 MiB) more
    than a freshly forked child is worth recycling: the busy 200 MiB holder is recycled after its task (its
    result goes out), its replacement and the idle children are left alone through 20 more tasks, and
    ``memguard.pressure_unrelieved`` says the memory is held outside the children.
    """
    min_available = permanent_pressure_floor()
    worker = start_worker(redis_url, concurrency=3, conf=conf(min_available=min_available))

    busy = worker.send("pt.hold", 200, 3.0)
    (held,) = worker.collect([busy])
    busy_pid = held.value["pid"]
    wait_until(lambda: busy_pid not in worker.child_pids(), 20, what="the 200 MiB child to leave")
    after = pings(worker, 20, sleep=0.05)
    time.sleep(1.0)  # ten more polls under pressure: room for (wrong) recycles of fresh children

    all_succeeded([held] + after)  # recycles under pressure are graceful: no task is lost to them
    recycled = worker.events("memguard.child_recycled")
    assert [e["pid"] for e in recycled] == [busy_pid], recycled
    (event,) = recycled
    assert event["reason"] == "pressure" and event["trigger"] == "available", event
    assert event["min_available"] == min_available and event["available"] < min_available, event
    assert event["lasting_relief"] is True, event
    assert event["task_id"] == busy.id and not event["idle"], event  # chosen while busy, left after its task
    assert [r["pid"] for r in event["ranking"]] == [busy_pid], event  # the fresh children were not candidates
    assert busy_pid not in pids_of(after)

    unrelieved = worker.events("memguard.pressure_unrelieved")
    assert unrelieved, worker.diagnostics()
    for report in unrelieved:
        assert report["level"] == "warning" and report["trigger"] == "available", report
        assert report["min_relief_mib"] == 32.0 and report["largest_relief_mib"] < 32.0, report
        assert report["children"] == 3 and "outside the children" in report["cause"], report
        assert report["retry_s"] == 30.0, report  # the test ends well before a fallback recycle
    assert worker.events("memguard.error") == []
    (host,) = worker.report()["hosts"]  # the report command counts the episode(s)
    assert host["pressure_unrelieved"]["count"] == len(unrelieved) and host["interventions"]["recycled"] == {"pressure": 1}
    print("pressure_unrelieved (fresh_rss_mib, largest_relief_mib, children_rss_mib):",
          [(r["fresh_rss_mib"], r["largest_relief_mib"], r["children_rss_mib"]) for r in unrelieved],
          "recycled mem_mib:", event["mem_mib"])


#: The master's table (shared copy-on-write after the fork) and how much of it one child makes its own.
COW_TABLE_MIB = 300
COW_DIRTY_MIB = 200
#: memguard_pressure_retry (default 30 s): the first fallback recycle comes this long into the episode.
PRESSURE_RETRY = 10.0


def test_pressure_frees_copy_on_write_copies_once_no_child_offers_lasting_relief(
        start_worker: StartWorker, redis_url: str) -> None:
    """A child whose growth is copy-on-write copies (USS up, RSS not) is recycled, but only after 10 s.

    The copies come back in a replacement, so they are no lasting relief and no child is a candidate at once
    (no storm); they are still memory the kernel would OOM-kill for, so after memguard_pressure_retry the child holding
    the most of its own (by exact USS, not by RSS, which is the same for both children) is recycled.
    """
    min_available = permanent_pressure_floor()
    worker = start_worker(redis_url, concurrency=2, table_mib=COW_TABLE_MIB,
                          conf=conf(min_available=min_available, pressure_retry=PRESSURE_RETRY))
    started = ts(worker.events("memguard.started")[0])
    (dirtied,) = worker.collect([worker.send("pt.dirty_table", COW_DIRTY_MIB)])
    dirty_pid = dirtied.value
    event = worker.wait_for_event("memguard.child_recycled", timeout=PRESSURE_RETRY + 30)
    wait_until(lambda: dirty_pid not in worker.child_pids(), 20, what="the dirty child to leave")
    after = pings(worker, 6)

    all_succeeded([dirtied] + after)
    assert event["reason"] == "pressure" and event["pid"] == dirty_pid, event
    assert event["lasting_relief"] is False and event["idle"] is True, event
    assert event["mem_mib"] >= 0.9 * COW_DIRTY_MIB, event  # its own copies, read exactly
    assert ts(event) - started >= PRESSURE_RETRY - 1.0, (ts(event) - started, event)
    assert len(worker.events("memguard.child_recycled")) == 1  # the next fallback is 10 s away
    (unrelieved,) = worker.events("memguard.pressure_unrelieved")
    assert unrelieved["largest_relief_mib"] < 32.0, unrelieved
    assert worker.events("memguard.error") == []


# -- 3. leak projection -------------------------------------------------------------------------------

LEAK_SOFT_LIMIT_MIB = 400
LEAK_MIB_PER_CALL = 2


def test_leak_projection_recycles_the_leaking_child_while_idle_before_its_soft_limit(
        start_worker: StartWorker, redis_url: str) -> None:
    """A child leaking 2 MiB per call is recycled at an idle moment, far below its 400 MiB soft limit.

    Only children that ran the leaking task are recycled. The recycle is decided at a poll during a pause,
    which can fall after the test's check and before its next burst: the replacement child then runs leaking
    calls too and is (rightly) recycled at its own idle moment, so one recycle or more is correct here.
    """
    worker = start_worker(redis_url, concurrency=1, conf=conf(soft_limit=f"{LEAK_SOFT_LIMIT_MIB}MiB",
                                                              recycle_on_leak=True))
    leak_outcomes: list[Outcome] = []
    for _batch in range(12):  # bursts of calls with idle pauses between them
        leak_outcomes += worker.collect([worker.send("pt.leak", LEAK_MIB_PER_CALL, 0.02) for _ in range(10)])
        time.sleep(0.5)
        if worker.events("memguard.child_recycled"):
            break
    event = worker.wait_for_event("memguard.child_recycled", timeout=10)
    leaker = event["pid"]
    wait_until(lambda: leaker not in worker.child_pids(), 20, what="the leaking child to leave")
    outcomes = leak_outcomes + pings(worker, 5)

    all_succeeded(outcomes)
    assert worker.events("memguard.leak_suspected"), worker.diagnostics()
    assert event["reason"] == "leak_projection", event
    assert leaker in pids_of(outcomes)
    assert event["task"] is None and event["task_id"] is None, event  # chosen while idle, not mid-task
    assert event["mem_mib"] < LEAK_SOFT_LIMIT_MIB and event["limit_mib"] == LEAK_SOFT_LIMIT_MIB, event
    assert event["leak_bytes_per_second"] > 0 and event["eta_s"] > 0 and event["horizon_s"] == 300.0, event
    assert max(o.value["kept_mib"] for o in outcomes if o.value.__class__ is dict) < LEAK_SOFT_LIMIT_MIB
    recycled = worker.events("memguard.child_recycled")
    assert {e["pid"] for e in recycled} <= set(pids_of(leak_outcomes)), recycled  # only children that leaked
    assert all(e["reason"] == "leak_projection" and e["task_id"] is None for e in recycled), recycled
    assert worker.events("memguard.error") == []


# -- 4. task count and lifetime, with jitter ------------------------------------------------------------

MAX_TASKS = 20
JITTER = 0.5


def test_max_tasks_recycles_children_at_spread_jittered_counts(start_worker: StartWorker,
                                                                               redis_url: str) -> None:
    """max_child_tasks=20, jitter 0.5, 4 children: recycled for max_tasks at spread counts in [10, 20]."""
    worker = start_worker(redis_url, concurrency=4, conf=conf(max_child_tasks=MAX_TASKS, jitter=JITTER))
    first_generation = worker.child_pids()

    # Each task outlasts a poll, so the master sees every child's count as it moves.
    outcomes = pings(worker, 160, 0.15)

    all_succeeded(outcomes)
    ran = Counter(pids_of(outcomes))
    events = worker.events("memguard.child_recycled")
    assert len(events) >= 6, events
    low = MAX_TASKS * (1 - JITTER)
    for event in events:
        assert event["reason"] == "max_tasks", event
        assert low <= event["limit_tasks"] <= MAX_TASKS, event
        # Decided while the child runs its limit-th task (counted), or after it when idle.
        assert event["tasks_run"] + (1 if event["task_id"] else 0) >= event["limit_tasks"], event
    for event in events:
        wait_until(lambda: event["pid"] not in worker.child_pids(), 20, what=f"child {event['pid']} to leave")
    # The ready check ran one it.ping on some child before `outcomes`: count it too.
    for event in events:
        assert ran[event["pid"]] <= event["tasks_run"] + 2, (event, ran[event["pid"]])
    first = [e for e in events if e["pid"] in first_generation]
    assert len(first) == len(first_generation), (first, first_generation)
    # Jitter: children started together get different limits, so they do not restart together.
    assert len({e["limit_tasks"] for e in first}) >= 3, first


def test_max_tasks_never_lets_a_child_run_more_than_its_own_limit(start_worker: StartWorker,
                                                                  redis_url: str) -> None:
    """A child recycled for max_tasks ran at most its own drawn limit of tasks (hence never above the maximum)."""
    worker = start_worker(redis_url, concurrency=4, conf=conf(max_child_tasks=MAX_TASKS, jitter=JITTER))
    worker.ping()
    outcomes = pings(worker, 120, 0.15)

    all_succeeded(outcomes)
    ran = Counter(pids_of(outcomes))
    events = worker.events("memguard.child_recycled")
    assert events
    over = [(e["pid"], e["limit_tasks"], ran[e["pid"]]) for e in events if ran[e["pid"]] > e["limit_tasks"]]
    assert not over, f"children that ran more tasks than their limit (pid, limit, ran): {over}"


LIFETIME_S = 3.0


def test_lifetime_recycles_children_at_spread_ages(start_worker: StartWorker, redis_url: str) -> None:
    """max_child_lifetime=3 s, jitter 0.5: children recycled for lifetime, at ages spread over [1.5, 3] s."""
    worker = start_worker(redis_url, concurrency=4, conf=conf(max_child_lifetime=LIFETIME_S, jitter=JITTER))
    first_generation = worker.child_pids()

    outcomes: list[Outcome] = []
    deadline = time.monotonic() + 8.0
    while time.monotonic() < deadline:  # a steady trickle of short tasks while children come and go
        outcomes += worker.collect([worker.send("it.ping", 0.05) for _ in range(8)])

    all_succeeded(outcomes)
    events = worker.events("memguard.child_recycled")
    assert len(events) >= 6, events
    for event in events:
        assert event["reason"] == "lifetime", event
        assert event["limit_s"] in (2, 3), event  # the child's own limit in [1.5, 3] s, in whole seconds
        assert event["max_lifetime_s"] == LIFETIME_S, event
        assert event["lifetime_s"] >= 1.5, event
    first = [e for e in events if e["pid"] in first_generation]
    assert len(first) == len(first_generation), (first, first_generation)
    # Children started together are not restarted together: their recycles fall on different polls
    # (events of one poll are written within a few milliseconds of each other).
    assert polls_of(first) >= 3, [(e["ts"], e["pid"], e["lifetime_s"]) for e in first]
    assert len({e["pid"] for e in events}) == len(events), "a child was ordered out twice"


# -- 5. recycle storms -------------------------------------------------------------------------------

STORM_MAX_PER_MINUTE = 6


def test_storm_guard_caps_recycles_and_reports_the_storm_once(start_worker: StartWorker, redis_url: str) -> None:
    """max_child_tasks=1 (a restart per task): ~20 s of tasks, at most 6 recycles (+1), one recycle_storm."""
    worker = start_worker(redis_url, concurrency=2, conf=conf(max_child_tasks=1, jitter=0,
                                                              max_recycles_per_minute=STORM_MAX_PER_MINUTE))
    outcomes: list[Outcome] = []
    deadline = time.monotonic() + 20.0
    while time.monotonic() < deadline:  # steady tasks
        outcomes += worker.collect([worker.send("it.ping", 0.05) for _ in range(4)])
        time.sleep(0.2)

    all_succeeded(outcomes)
    recycled = worker.events("memguard.child_recycled")
    assert recycled and all(e["reason"] == "max_tasks" for e in recycled), recycled
    # The window is 60 s, so over ~20 s the cap allows 6; one more for a window edge.
    assert len(recycled) <= STORM_MAX_PER_MINUTE + 1, [(e["ts"], e["pid"]) for e in recycled]
    storms = worker.events("memguard.recycle_storm")
    assert len(storms) == 1, storms
    (storm,) = storms
    assert storm["spawn_time_s"] is not None and storm["spawn_time_s"] > 0, storm
    assert storm["recycles_per_minute"] >= STORM_MAX_PER_MINUTE - 1, storm
    assert storm["max_recycles_per_minute"] == STORM_MAX_PER_MINUTE, storm
    # rate x spawn time / 60 / live children, rounded to 3 places (tiny here: these children start in ms).
    expected_loss = storm["recycles_per_minute"] * storm["spawn_time_s"] / 60 / storm["concurrency"]
    assert storm["throughput_lost"] is not None and abs(storm["throughput_lost"] - expected_loss) < 0.002, storm
    assert storm["deferred"] >= 1 and storm["reasons"].get("max_tasks"), storm
    assert "max_tasks 1 is too low" in storm["cause"], storm
    assert worker.events("memguard.error") == []


#: A table the master loads before the fork: with metric rss every fresh child counts it (shared pages).
UNREACHABLE_TABLE_MIB = 300
UNREACHABLE_SOFT_LIMIT_MIB = 200


@pytest.mark.parametrize("concurrency", [2, 4])
def test_soft_limit_below_a_fresh_child_is_unreachable_not_a_storm(start_worker: StartWorker, redis_url: str,
                                                                   concurrency: int) -> None:
    """metric=rss, a 300 MiB pre-fork table, a 200 MiB soft limit, defaults otherwise: ~20 s of tasks end with
    at most 10 children, every task succeeds, and one memguard.limit_unreachable explains why nothing recycles."""
    worker = start_worker(redis_url, concurrency=concurrency, table_mib=UNREACHABLE_TABLE_MIB,
                          conf={"imports": [MODULE], "memguard_metric": "rss",
                                "memguard_soft_limit": f"{UNREACHABLE_SOFT_LIMIT_MIB}MiB"})
    outcomes: list[Outcome] = []
    deadline = time.monotonic() + 20.0
    while time.monotonic() < deadline:
        outcomes += worker.collect([worker.send("it.ping", 0.01) for _ in range(8)])
    all_succeeded(outcomes)
    children = set(pids_of(outcomes))
    assert len(children) <= 10, sorted(children)
    events = worker.events("memguard.limit_unreachable")
    assert len(events) == 1, events
    (event,) = events
    assert event["reason"] == "soft_limit" and event["metric"] == "rss", event
    assert event["limit_mib"] == UNREACHABLE_SOFT_LIMIT_MIB, event
    assert event["fresh_child_mib"] >= UNREACHABLE_TABLE_MIB, event
    assert event["master_mib"] is not None and event["master_mib"] >= UNREACHABLE_TABLE_MIB, event
    assert "'uss' or 'pss'" in event["fix"], event
    recycled = [e for e in worker.events("memguard.child_recycled") if e["reason"] == "soft_limit"]
    assert len(recycled) <= 10 - concurrency, recycled
    assert worker.events("memguard.error") == []


# -- 6. strikes -------------------------------------------------------------------------------------

STRIKES_SOFT_LIMIT_MIB = 100
STRIKES_POLL = 1.0
#: Above the soft limit for 1.5 s: at least one 1 s poll sees it, three consecutive ones cannot (that needs > 2 s).
SPIKE_S = 1.5


def test_strikes_ignore_a_brief_excursion_and_recycle_a_sustained_one(start_worker: StartWorker,
                                                                      redis_url: str) -> None:
    """strikes=3: two 1.5 s excursions above the soft limit recycle nothing (strikes=0 does); a 6 s one recycles."""
    settings = conf(soft_limit=f"{STRIKES_SOFT_LIMIT_MIB}MiB", poll_interval=STRIKES_POLL)
    control = start_worker(redis_url, concurrency=1, conf={**settings, "memguard_strikes": 0})
    worker = start_worker(redis_url, concurrency=1, conf={**settings, "memguard_strikes": 3})
    # A child seen for the first time is looked at again 0.1 s later (engine.FIRST_LOOK): let those
    # first two polls pass, so every later poll is a whole interval apart.
    time.sleep(2 * STRIKES_POLL)

    outcomes: list[Outcome] = []
    for _ in range(2):
        spikes = [w.send("pt.spike", 150, SPIKE_S) for w in (control, worker)]
        outcomes += control.collect(spikes[:1]) + worker.collect(spikes[1:])
        time.sleep(2 * STRIKES_POLL)  # clean polls between excursions reset the strikes

    all_succeeded(outcomes)
    assert control.events("memguard.child_recycled"), "control: strikes=0 did not see the excursion at all"
    assert worker.events("memguard.child_recycled") == [], worker.events("memguard.child_recycled")

    sustained = worker.send("pt.spike", 150, 6 * STRIKES_POLL)
    (held,) = worker.collect([sustained])
    assert held.state == "SUCCESS", held
    event = worker.wait_for_event("memguard.child_recycled")
    assert event["reason"] == "soft_limit" and event["pid"] == held.value, event
    assert event["task_id"] == sustained.id and event["mem_mib"] >= STRIKES_SOFT_LIMIT_MIB, event
    assert len(worker.events("memguard.child_recycled")) == 1


def test_strikes_still_debounce_when_a_hard_limit_makes_polls_faster(start_worker: StartWorker,
                                                                    redis_url: str) -> None:
    """strikes=3, 1 s poll and a hard limit: 0.6 s excursions above the soft limit must not recycle the child."""
    worker = start_worker(redis_url, concurrency=1, conf=conf(
        soft_limit=f"{STRIKES_SOFT_LIMIT_MIB}MiB", hard_limit="500MiB", poll_interval=STRIKES_POLL, strikes=3))
    time.sleep(2 * STRIKES_POLL)

    outcomes: list[Outcome] = []
    for _ in range(2):
        outcomes += worker.collect([worker.send("pt.spike", 150, 0.6)])
        time.sleep(2 * STRIKES_POLL)

    all_succeeded(outcomes)
    assert worker.events("memguard.child_recycled") == []


# -- 7. custom policy ------------------------------------------------------------------------------


def test_custom_policy_recycles_the_child_that_ran_the_marker_task(start_worker: StartWorker,
                                                                   redis_url: str) -> None:
    """memguard_policies=[policy_tasks:MyPolicy]: the child that ran pt.marker is recycled with reason marker_ran."""
    worker = start_worker(redis_url, concurrency=2, conf=conf(policies=[f"{MODULE}:MyPolicy"]))
    before = pings(worker, 6)
    marker = worker.send(MARKER_TASK, 0.5)
    (marked,) = worker.collect([marker])
    event = worker.wait_for_event("memguard.child_recycled")
    wait_until(lambda: marked.value not in worker.child_pids(), 20, what="the marked child to leave")
    after = pings(worker, 6)

    all_succeeded(before + [marked] + after)
    assert event["reason"] == MARKER_REASON and event["pid"] == marked.value, event
    assert event["task"] == MARKER_TASK and event["task_id"] == marker.id, event  # after its task, not during
    assert event["marker_task"] == MARKER_TASK and event["limit_tasks"] == 1, event
    assert len(worker.events("memguard.child_recycled")) == 1
    assert marked.value not in pids_of(after)
    assert worker.events("memguard.error") == []


def test_check_only_custom_policy_keeps_the_hard_limit(start_worker: StartWorker, redis_url: str) -> None:
    """memguard_policies=[DuckMarker] (only ``check``, no base class) with a hard limit: a child over the hard
    limit is still stopped, and the duck-typed policy still recycles the child that ran pt.marker. Before the
    one policy contract the engine read ``policy.threshold``, the monitor caught AttributeError on every poll
    and no limit was ever applied (one memguard.error line was the only trace)."""
    worker = start_worker(redis_url, concurrency=2,
                          conf=conf(policies=[f"{MODULE}:DuckMarker"], hard_limit="150MiB"))
    marker = worker.send(MARKER_TASK, 0.5)
    (marked,) = worker.collect([marker])
    recycled = worker.wait_for_event("memguard.child_recycled")
    wait_until(lambda: marked.value not in worker.child_pids(), 20, what="the marked child to leave")
    grower = worker.send("pt.hold", 250, 20.0)
    (grown,) = worker.collect([grower], timeout=60)
    after = pings(worker, 6)

    assert recycled["reason"] == "duck_marker" and recycled["pid"] == marked.value, recycled
    assert grown.state == "FAILURE" and "MemoryLimitExceeded" in (grown.traceback or ""), (grown.state, grown.value)
    (killed,) = worker.events("memguard.task_killed")
    assert killed["task_id"] == grower.id and killed["reason"] == "hard_limit" and killed["limit_mib"] == 150, killed
    all_succeeded([marked] + after)
    assert worker.events("memguard.error") == []


@pytest.mark.parametrize("path", [f"{MODULE}:NoSuchPolicy", "tests.integration.no_such_module:MyPolicy"])
def test_a_custom_policy_path_that_does_not_resolve_stops_the_worker(start_worker: StartWorker, redis_url: str,
                                                                     path: str) -> None:
    """A bad dotted path in memguard_policies: the worker exits non-zero at start, stderr names the key."""
    worker = start_worker(redis_url, conf=conf(policies=[path]), ready=False)

    status = worker.proc.wait(30)

    stderr = worker.stderr_path.read_text(errors="replace")
    assert status != 0, worker.diagnostics()
    assert "memguard_policies" in stderr and path in stderr, stderr
    assert worker.events("memguard.started") == []


# -- 8. dry run ------------------------------------------------------------------------------------


def test_dry_run_pool_limit_logs_would_recycle_and_recycles_nothing(start_worker: StartWorker,
                                                                    redis_url: str) -> None:
    """Dry run with a pool budget: would_recycle (pool_limit) names the largest child; no child leaves."""
    worker = start_worker(redis_url, concurrency=2, conf=conf(pool_limit="250MiB", dry_run=True))
    children = worker.child_pids()

    (big,) = worker.collect([worker.send("pt.hold", 300, 0.5)])
    event = worker.wait_for_event("memguard.would_recycle")
    time.sleep(1.0)  # room for a real recycle, had there been one
    after = pings(worker, 10)

    all_succeeded([big] + after)
    assert event["reason"] == "pool_limit" and event["pid"] == big.value["pid"], event
    assert event["ranking"][0]["pid"] == big.value["pid"] and len(event["ranking"]) == 2, event
    assert worker.events("memguard.child_recycled") == [] and worker.events("memguard.task_killed") == []
    assert worker.child_pids() == children
    assert set(pids_of(after)) <= children
