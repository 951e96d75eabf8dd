"""``celery memguard advise``: the pure advisor on evidence, the collector and command on recorded logs.

Fixtures (tests/unit/fixtures/):

* ``advise_overload.log``: a real worker's log, recorded by benchmarks/bench_advise.py's naive run
  (4 children in a 1 GiB cgroup v1 memory cgroup, 200 tasks keeping 20 MiB each, MemGuard logging
  only): 8 children OOM-killed.
* ``advise_steady.log``: a 4-child worker over 20 minutes in 2 GiB (made by hand from real event
  shapes): steady children, a heavy task, a long task, a task id lost twice (a redelivery loop),
  foreign and garbled lines.
"""

from __future__ import annotations

import io
import json
import math
import random
from pathlib import Path
from typing import Any

import pytest

from celery_memguard.advice import Evidence, TaskEvidence, advise, percentile
from celery_memguard.cli import main, run_advise
from celery_memguard.report.advise import (AdviceReport, HostAdvice, build_advice, render_advice_json,
                                           render_advice_text)
from celery_memguard.report.evidence import MAX_READINGS, EvidenceCollector

FIXTURES = Path(__file__).parent / "fixtures"
OVERLOAD = FIXTURES / "advise_overload.log"
STEADY = FIXTURES / "advise_steady.log"


def recs(paths: list[Path]) -> dict[str, Any]:
    (host,) = build_advice([str(p) for p in paths]).hosts
    return {r.key: r for r in host.recommendations}


def mib(value: object) -> float:
    assert isinstance(value, str) and value.endswith("MiB")
    return float(value[:-3])


def test_overload_log_advice_fits_the_effective_memory() -> None:
    """The recorded OOM run: concurrency x hard limit + master + headroom within the cgroup; the hard limit
    leaves a fresh child room for the largest call; the leak is bounded by worker_max_tasks_per_child."""
    (host,) = build_advice([str(OVERLOAD)]).hosts
    e = host.evidence
    r = {x.key: x for x in host.recommendations}
    assert e.lost >= 2 and e.effective_memory_mib == 1024.0
    n = r["worker_concurrency"].value
    hard, soft = mib(r["memguard_hard_limit"].value), mib(r["memguard_soft_limit"].value)
    assert n * hard + (e.master_rss_max_mib or 0) <= e.effective_memory_mib * 0.9
    own = max(t.own_peak_max_mib for t in e.tasks.values())
    fresh = percentile(e.fresh_mib, 0.5) or 0
    assert soft + own <= hard and fresh < soft
    per_child = r["worker_max_tasks_per_child"].value
    assert isinstance(per_child, int) and fresh + per_child * 20 <= soft + 1  # 20 MiB kept per call
    for key in ("worker_concurrency", "memguard_hard_limit", "memguard_soft_limit", "worker_max_tasks_per_child"):
        assert r[key].config and r[key].cli and r[key].evidence and r[key].confidence


def test_steady_log_heavy_task_long_task_and_redelivery_loop() -> None:
    r = recs([STEADY])
    assert r["worker_concurrency"].value == 3  # import_csv's 410 MiB call needs room in every child
    assert mib(r["memguard_hard_limit"].value) >= 32 + 410 * 1.2
    assert "task_routes['app.tasks.import_csv']" in r
    route = r["task_routes['app.tasks.import_csv']"]
    assert "'queue': 'heavy'" in route.config and "fit" in route.note
    assert r["worker_prefetch_multiplier"].value == 1 and r["task_acks_late"].value is True
    assert "app.tasks.report" in r["worker_prefetch_multiplier"].evidence[0]
    loop = r["app.tasks.explode.reject_on_worker_lost"]
    assert loop.value is False and "loop-1 2 times" in loop.evidence[0] and "5641" in loop.note
    assert r["worker_max_tasks_per_child"].value is None  # children do not grow
    assert "resize" not in " ".join(k for k in r if k.startswith("task_routes"))


def test_not_enough_evidence_says_what_is_missing() -> None:
    e = Evidence(hostname="w", span_s=30.0, concurrency=4, effective_memory_mib=None, samples=1, child_mib=[40.0])
    out = {r.key: r for r in advise(e)}
    for key in ("worker_concurrency", "memguard_hard_limit", "memguard_soft_limit", "worker_max_tasks_per_child"):
        assert out[key].value is None and out[key].config is None
        assert "effective memory" in (out[key].missing or "") and "10 minutes" in (out[key].missing or "")
        assert "found 1" in (out[key].missing or "") and "found 0" in (out[key].missing or "")


def test_short_log_of_a_real_worker_gives_no_sizes(tmp_path: Path) -> None:
    """The first two lines of the overload (started + one sample): not enough evidence, no guess."""
    log = tmp_path / "short.log"
    log.write_text("\n".join(OVERLOAD.read_text().splitlines()[:2]) + "\n")
    r = recs([log])
    assert r["worker_concurrency"].value is None and "at least 3 memguard.sample" in r["worker_concurrency"].missing
    text = render_advice_text(build_advice([str(log)]))
    assert "NOT ENOUGH EVIDENCE" in text and text.count("not enough evidence: needs") == 1  # said once


def _evidence(**over: Any) -> Evidence:
    e = Evidence(hostname="w", span_s=1200.0, concurrency=8, effective_memory_mib=4096.0, samples=20,
                 child_mib=[100.0 + i % 10 for i in range(160)], child_max_mib=110.0, fresh_mib=[90.0],
                 master_rss_max_mib=120.0, spawn_times_s=[1.0],
                 tasks={"t": TaskEvidence("t", calls=1000, own_peak_max_mib=50.0, total_s=100.0, max_s=0.5)})
    for key, value in over.items():
        setattr(e, key, value)
    return e


def test_growth_recycling_cost_against_the_throughput_cap() -> None:
    """A leak of 5 MiB/call with 0.1 s calls and 1 s spawns: recycling every ~N calls costs more than 25%."""
    e = _evidence(tasks={"t": TaskEvidence("t", calls=1000, own_peak_max_mib=50.0, retained_mib=5000.0,
                                           total_s=100.0, max_s=0.5, leak_kib_per_call=5120.0)})
    r = {x.key: x for x in advise(e)}
    per_child = r["worker_max_tasks_per_child"].value
    soft = mib(r["memguard_soft_limit"].value)
    assert per_child == int((soft - 90.0) / 5.0)
    cost = 1.0 / (per_child * 0.1 + 1.0)
    assert f"{cost:.0%}" in " ".join(r["worker_max_tasks_per_child"].evidence)
    assert (cost > 0.25) == ("fix the growth" in (r["worker_max_tasks_per_child"].note or ""))
    assert r["worker_max_tasks_per_child"].cli == f"--max-tasks-per-child {per_child}"


def test_concurrency_never_raised_and_not_even_one_child() -> None:
    r = {x.key: x for x in advise(_evidence(concurrency=2))}
    assert r["worker_concurrency"].value == 2 and "would fit" in r["worker_concurrency"].note
    huge = _evidence(tasks={"t": TaskEvidence("t", calls=100, own_peak_max_mib=5000.0, total_s=10.0)})
    r = {x.key: x for x in advise(huge)}
    assert r["worker_concurrency"].value == 1 and r["worker_concurrency"].confidence == "low"
    assert "not even one child fits" in r["worker_concurrency"].note
    assert r["memguard_hard_limit"].confidence == r["memguard_soft_limit"].confidence == "low"
    assert mib(r["memguard_soft_limit"].value) < mib(r["memguard_hard_limit"].value)
    tiny = _evidence(effective_memory_mib=100.0)  # less than master + headroom: nothing is usable
    r = {x.key: x for x in advise(tiny)}
    assert 1 <= mib(r["memguard_soft_limit"].value) < mib(r["memguard_hard_limit"].value)


def test_cli_three_ways_and_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["advise", "--format", "json", str(STEADY)]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["schema"] == 1 and data["hosts"][0]["hostname"] == "celery@steady-1"
    keys = [r["key"] for r in data["hosts"][0]["recommendations"]]
    assert keys[:4] == ["worker_concurrency", "memguard_hard_limit", "memguard_soft_limit",
                        "worker_max_tasks_per_child"]
    assert data["hosts"][0]["evidence"]["calls"] > 0 and "child_readings" in data["hosts"][0]["evidence"]
    assert main(["advise", "/nonexistent/log"]) == 2
    assert "cannot read /nonexistent/log" in capsys.readouterr().err
    from click.testing import CliRunner
    from celery.bin.celery import celery

    result = CliRunner().invoke(celery, ["memguard", "advise", str(STEADY)])
    assert result.exit_code == 0 and "worker_concurrency = 3" in result.output


# -- hostile input -------------------------------------------------------------------------------


def test_hostile_lines_never_crash(tmp_path: Path) -> None:
    good = OVERLOAD.read_text().splitlines()
    rnd = random.Random(5)
    lines = list(good)
    bad_values: list[Any] = [None, "x", float("nan"), -1, 10**400, [], {}, {"a": 1}, True, "1e999", [1, [2]]]
    for _ in range(1500):
        event = json.loads(rnd.choice(good))
        key = rnd.choice(list(event))
        event[key] = rnd.choice(bad_values)
        if rnd.random() < 0.3 and isinstance(event.get("children"), list) and event["children"] \
                and isinstance(event["children"][0], dict):
            event["children"][0][rnd.choice(list(event["children"][0]))] = rnd.choice(bad_values)
        if rnd.random() < 0.3 and isinstance(event.get("tasks"), dict):
            event["tasks"] = rnd.choice([{"t": None}, {"t": {"calls": "many"}}, ["t"], {"t": {"own_peak_mib": -5}}])
        try:
            text = json.dumps(event)
        except ValueError:
            text = "{" + str(event)
        lines.append(text[: rnd.randint(1, len(text))] if rnd.random() < 0.2 else text)
    lines += ["", "\x00\xff garbage", "[1,2,3]", '{"event": 5}', "{" * 5000, "plain celery log line"]
    log = tmp_path / "hostile.log"
    log.write_text("\n".join(lines), errors="surrogateescape")
    out, err = io.StringIO(), io.StringIO()
    assert run_advise([str(log)], "text", out, err) == 0
    assert run_advise([str(log)], "json", out, err) == 0
    json.loads(out.getvalue()[out.getvalue().index("\n{") + 1:])


def test_empty_foreign_and_huge_logs(tmp_path: Path) -> None:
    empty = tmp_path / "empty.log"
    empty.write_text("")
    foreign = tmp_path / "foreign.log"
    foreign.write_text('{"event": "http.request", "status": 200}\n[2026-11-26 10:00:00] worker ready\n')
    out = io.StringIO()
    assert run_advise([str(empty), str(foreign)], "text", out, io.StringIO()) == 0
    assert "nothing to advise on" in out.getvalue()
    huge = tmp_path / "huge.log"
    sample = json.dumps({"event": "memguard.sample", "ts": "2026-11-26T10:00:00+00:00", "hostname": "h",
                         "children": [{"mem_mib": 50.0, "tasks": 3}] * 4,
                         "tasks": {"t": {"calls": 1, "own_peak_mib": 1.0}}})
    with huge.open("w") as f:
        f.write("x" * (2 * 1024 * 1024) + "\n")  # one overlong line
        for _ in range(MAX_READINGS // 4 + 10):
            f.write(sample + "\n")
    collector = EvidenceCollector()
    from celery_memguard.report.reader import read_events

    for _src, event in read_events([str(huge)], []):
        collector.feed(event)
    (e,) = collector.build()
    assert len(e.child_mib) <= MAX_READINGS and e.samples == MAX_READINGS // 4 + 10


def test_hosts_and_tasks_are_bounded() -> None:
    from celery_memguard.report.aggregate import MAX_HOSTS, MAX_KEYS

    collector = EvidenceCollector()
    for i in range(MAX_HOSTS + 20):
        collector.feed({"event": "memguard.sample", "hostname": f"h{i}", "children": [],
                        "tasks": {f"t{j}": {"calls": 1} for j in range(3)}})
    for j in range(MAX_KEYS + 20):
        collector.feed({"event": "memguard.heavy_task", "hostname": "h0", "task": f"t{j}", "peak_mib": 1.0})
    hosts = collector.build()
    assert len(hosts) == MAX_HOSTS + 1 and collector.not_itemised["hosts"] == 20
    assert len(next(h for h in hosts if h.hostname == "h0").tasks) == MAX_KEYS
    assert collector.not_itemised["tasks"] >= 20


def test_task_names_with_terminal_escapes_are_cleaned() -> None:
    collector = EvidenceCollector()
    assert collector.feed({"event": "memguard.sample", "hostname": "h", "children": [],
                           "tasks": {"evil\x1b[2J": {"calls": 3, "own_peak_mib": 1.0}}})
    (e,) = collector.build()
    assert list(e.tasks) == ["evil?[2J"]


def test_advised_limits_are_always_a_valid_configuration() -> None:
    """Whatever the evidence, the advised soft and hard limits pass MemGuard's own validation, and
    concurrency x hard limit never exceeds what the effective memory leaves after master and headroom."""
    from celery_memguard.config import MemGuardConfig

    rnd = random.Random(11)
    for _ in range(300):
        effective = rnd.choice([64.0, 512.0, 1024.0, 4096.0, 65536.0]) * rnd.uniform(0.5, 2)
        e = _evidence(effective_memory_mib=effective, concurrency=rnd.randint(1, 64),
                      master_rss_max_mib=rnd.uniform(0, effective / 2), fresh_mib=[rnd.uniform(5, 500)],
                      tasks={"t": TaskEvidence("t", calls=100, own_peak_max_mib=rnd.uniform(0, effective),
                                               retained_mib=rnd.uniform(0, 5000), total_s=rnd.uniform(0.1, 500))})
        r = {x.key: x for x in advise(e)}
        soft, hard = r["memguard_soft_limit"].value, r["memguard_hard_limit"].value
        MemGuardConfig.from_mapping({"memguard_soft_limit": soft, "memguard_hard_limit": hard}, int(effective * 2**20))
        if r["worker_concurrency"].confidence != "low":
            usable = effective - e.master_rss_max_mib - max(0.1 * effective, 32.0)
            assert r["worker_concurrency"].value * mib(hard) <= usable


def test_measured_replacement_gaps_make_the_recycle_cost_whole() -> None:
    """With replacement gaps logged, a recycle costs gap + spawn (no 'at least'), so children are recycled
    less often than the spawn time alone would allow; without them the cost is stated as a lower bound."""
    tasks = {"t": TaskEvidence("t", calls=1000, own_peak_max_mib=10.0, retained_mib=2000.0, total_s=100.0)}
    bare = {x.key: x for x in advise(_evidence(tasks=tasks, spawn_times_s=[0.05]))}
    whole = {x.key: x for x in advise(_evidence(tasks=tasks, spawn_times_s=[0.05], replace_gaps_s=[0.4, 0.5, 0.6]))}
    assert "at least" in " ".join(bare["worker_max_tasks_per_child"].evidence)
    text = " ".join(whole["worker_max_tasks_per_child"].evidence)
    assert "at least" not in text and "0.55 s of a slot" in text and "median of 3 replacements" in text
    assert whole["worker_max_tasks_per_child"].value > bare["worker_max_tasks_per_child"].value
    assert mib(whole["memguard_soft_limit"].value) > mib(bare["memguard_soft_limit"].value)


def test_replace_gaps_are_collected_and_checked() -> None:
    collector = EvidenceCollector()
    assert collector.feed({"event": "memguard.sample", "hostname": "h", "children": [], "replace_gaps_s": [0.2, 0.3]})
    assert not collector.feed({"event": "memguard.sample", "hostname": "h", "children": [], "replace_gaps_s": "x"})
    assert not collector.feed({"event": "memguard.sample", "hostname": "h", "children": [],
                               "replace_gaps_s": [float("nan")]})
    (e,) = collector.build()
    assert e.replace_gaps_s == [0.2, 0.3] and e.samples == 1
    assert collector.invalid == {"replace_gaps_s": 2}


# -- implausible numbers (fuzz) ---------------------------------------------------------------------

#: What a corrupt or foreign log may hold where advise reads a number.
ODD_NUMBERS: list[Any] = [0, -1, 1e-320, 1e308, -1e308, "nan", "inf", "-1e400", 10**400, 2**63, 2**53 + 1, 1e15,
                          [], {}, "x", True, None]


def strict_json(text: str) -> Any:
    def refuse(constant: str) -> None:
        raise ValueError(f"non-standard JSON constant {constant}")

    return json.loads(text[text.index("{"):], parse_constant=refuse)


def _mutated(path: Path, change: Any) -> str:
    """``path``'s lines with ``change(event)`` applied to every JSON event."""
    out = []
    for line in path.read_text().splitlines():
        if line.startswith("{"):
            event = json.loads(line)
            change(event)
            line = json.dumps(event)
        out.append(line)
    return "\n".join(out) + "\n"


def _numbers_replaced(value: Any, odd: dict[str, Any], key: str = "") -> Any:
    """``value`` with the numbers under the keys of ``odd`` (at any depth) replaced by their odd value."""
    if isinstance(value, dict):
        return {k: _numbers_replaced(v, odd, k) for k, v in value.items()}
    if isinstance(value, list):
        return [_numbers_replaced(v, odd, key) for v in value]
    if isinstance(value, (int, float)) and not isinstance(value, bool) and key in odd:
        return odd[key]
    return value


def _number_keys(value: Any, key: str = "") -> set[str]:
    if isinstance(value, dict):
        return set().union(*(_number_keys(v, k) for k, v in value.items()))
    if isinstance(value, list):
        return set().union(*(_number_keys(v, key) for v in value))
    return {key} if isinstance(value, (int, float)) and not isinstance(value, bool) else set()


def _commands_survive(log: Path) -> None:
    from celery_memguard.cli import run_report

    for fmt in ("text", "json"):
        out = io.StringIO()
        assert run_advise([str(log)], fmt, out, io.StringIO()) == 0
        if fmt == "json":
            strict_json(out.getvalue())
    for fmt in ("text", "json", "html"):
        out = io.StringIO()
        assert run_report([str(log)], fmt, out, io.StringIO()) == 0
        if fmt == "json":
            strict_json(out.getvalue())


def _set_in_samples(**fields: Any) -> Any:
    def change(event: dict[str, Any]) -> None:
        if event.get("event") == "memguard.sample":
            for key, value in fields.items():
                if key == "total_s":
                    for row in event.get("tasks", {}).values():
                        row[key] = value
                else:
                    event[key] = value
    return change


def _started_and_master(effective: float, master: float) -> Any:
    def change(event: dict[str, Any]) -> None:
        if event.get("event") == "memguard.started":
            event["effective_memory_mib"] = effective
        if "master_rss_mib" in event:
            event["master_rss_mib"] = master
    return change


@pytest.mark.parametrize("change", [
    _set_in_samples(total_s=1e-320, spawn_time_s=0.35),  # a vanishing mean call: the calls between recycles overflowed
    _set_in_samples(spawn_time_s=1e308),
    _set_in_samples(replace_gaps_s=[1e308]),
    _started_and_master(1e308, -1e308),  # their difference overflowed to inf, then NaN
    _started_and_master(1e15, -1e15),
], ids=["tiny-calls", "huge-spawn", "huge-gap", "huge-memory-negative-master", "big-memory-negative-master"])
def test_implausible_numbers_found_by_review_never_crash(tmp_path: Path, change: Any) -> None:
    log = tmp_path / "odd.log"
    log.write_text(_mutated(OVERLOAD, change))
    _commands_survive(log)
    report = build_advice([str(log)])
    (host,) = report.hosts
    r = {x.key: x for x in host.recommendations}
    for key in ("worker_concurrency", "memguard_hard_limit", "memguard_soft_limit", "worker_max_tasks_per_child"):
        assert r[key].value is not None or r[key].missing  # sized, or said why not; never a traceback


def test_negative_and_out_of_range_values_are_counted_corrupt() -> None:
    collector = EvidenceCollector()
    ok = {"event": "memguard.sample", "hostname": "h", "children": [{"mem_mib": 50.0, "tasks": 3}],
          "tasks": {"t": {"calls": 2, "own_peak_mib": 1.0, "retained_mib": -3.0, "total_s": 0.2}}}
    assert collector.feed(ok)
    bad = [({"children": [{"mem_mib": -1}]}, "mem_mib"), ({"master_rss_mib": 2.0**34}, "master_rss_mib"),
           ({"spawn_time_s": -0.1}, "spawn_time_s"), ({"spawn_time_s": 1e308}, "spawn_time_s"),
           ({"tasks": {"t": {"calls": 1, "total_s": 1e12}}}, "total_s"),
           ({"tasks": {"t": {"calls": 1, "retained_mib": -1e308}}}, "retained_mib")]
    for over, _field in bad:
        assert not collector.feed({**ok, **over})
    assert not collector.feed({"event": "memguard.started", "hostname": "h", "effective_memory_mib": 1e308})
    assert not collector.feed({"event": "memguard.leak_suspected", "hostname": "h", "task": "t",
                               "kib_per_call": 1e300})
    (e,) = collector.build()
    assert e.samples == 1 and e.effective_memory_mib is None
    assert collector.invalid == {"mem_mib": 1, "master_rss_mib": 1, "spawn_time_s": 2, "total_s": 1,
                                 "retained_mib": 1, "effective_memory_mib": 1, "kib_per_call": 1}


#: Every number field the advisor reads (memguard.started, .sample and its children and tasks, lost children,
#: heavy tasks, leak suspects, master growth, recycle storms).
ADVISE_READS = ("concurrency", "effective_memory_mib", "soft_limit_mib", "hard_limit_mib", "mem_mib", "tasks",
                "calls", "failed", "own_peak_mib", "peak_mib", "retained_mib", "max_s", "total_s", "master_rss_mib",
                "master_mib", "pool_mib", "available_mib", "spawn_time_s", "replace_gaps_s", "last_mem_mib",
                "occurrences", "kib_per_call", "confidence", "mib_per_hour")


def test_fuzz_each_field_advise_reads_with_each_odd_number(tmp_path: Path) -> None:
    """Every field advise reads, in every event of both recorded logs, set to each odd number in turn:
    advise never raises and its JSON is strict (the review's overflows: a 1e308 spawn time or replacement
    gap, a 1e-320 mean call)."""
    log = tmp_path / "field.log"
    for source in (OVERLOAD, STEADY):
        for key in ADVISE_READS:
            for value in (0, -1, 1e-320, 1e308, -1e308, 10**400, 2**53 + 1, "nan", []):
                log.write_text(_mutated(source, lambda e: e.update(_numbers_replaced(e, {key: value}))))
                report = build_advice([str(log)])
                render_advice_text(report)
                strict_json(render_advice_json(report))


def test_fuzz_numbers_advise_and_report_read_never_crash(tmp_path: Path) -> None:
    """Seeded fuzz over the numbers in both recorded logs: a few fields (by name, in every event, as a
    corrupt or foreign writer would) set to 0, -1, 1e-320, 1e308, 'nan', huge ints, wrong types: advise and
    report (text, json, html) never raise and their JSON is strict."""
    rnd = random.Random(12)
    log = tmp_path / "fuzz.log"
    for _ in range(60):
        source = rnd.choice([OVERLOAD, STEADY])
        keys = sorted(set().union(*(_number_keys(json.loads(line)) for line in source.read_text().splitlines()
                                    if line.startswith("{"))))
        odd = {key: rnd.choice(ODD_NUMBERS) for key in rnd.sample(keys, rnd.randint(1, 3))}
        log.write_text(_mutated(source, lambda e: e.update(_numbers_replaced(e, odd))))
        _commands_survive(log)


def test_advisor_never_raises_on_extreme_evidence() -> None:
    """Evidence the collector would refuse (infinities, NaN, 1e308 against -1e308), handed to the pure advisor:
    each recommendation is given or says 'implausible values', never a traceback."""
    rnd = random.Random(3)
    extremes = [math.inf, -math.inf, math.nan, 1e308, -1e308, 1e-320, 0.0, -1.0]
    said = False
    for _ in range(300):
        e = _evidence(tasks={"t": TaskEvidence("t", calls=1000, own_peak_max_mib=50.0, retained_mib=5000.0,
                                               total_s=100.0, max_s=0.5)})
        for name in ("effective_memory_mib", "master_rss_max_mib", "span_s"):
            if rnd.random() < 0.5:
                setattr(e, name, rnd.choice(extremes))
        for name in ("child_mib", "fresh_mib", "spawn_times_s", "replace_gaps_s"):
            if rnd.random() < 0.5:
                setattr(e, name, [rnd.choice(extremes)])
        task = e.tasks["t"]
        for name in ("own_peak_max_mib", "retained_mib", "total_s", "max_s"):
            if rnd.random() < 0.3:
                setattr(task, name, rnd.choice(extremes))
        out = advise(e)
        assert {"worker_concurrency", "memguard_hard_limit", "memguard_soft_limit"} <= {r.key for r in out}
        said = said or any("implausible values" in (r.missing or "") for r in out)
        render_advice_json(AdviceReport(hosts=[HostAdvice("w", e, out)]))
    assert said
    r = {x.key: x for x in advise(_evidence(effective_memory_mib=1e308, master_rss_max_mib=-1e308))}
    assert r["memguard_soft_limit"].value is None and "implausible values" in (r["memguard_soft_limit"].missing or "")
