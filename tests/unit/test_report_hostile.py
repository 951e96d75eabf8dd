"""The report command on adversarial logs (issue 13.8): real files, no traceback, bounded memory.

Every case writes its log into ``tmp_path`` and runs the command's own entry point
(:func:`celery_memguard.cli.run_report`) or :func:`build_report` on it. Malformed
values are skipped and counted (per field) and never printed as ``nan``; a log
with a new hostname, task, cause or event name on every line keeps at most the
documented number of keys and says how much it did not itemise; a seeded fuzz
run feeds random JSON-ish lines built from real events.
"""

from __future__ import annotations

import io
import json
import random
import tracemalloc
from pathlib import Path
from typing import Any

import pytest

from celery_memguard.cli import run_report
from celery_memguard.report import Aggregator, build_report, render_json, render_text
from celery_memguard.report.aggregate import MAX_ENTRIES, MAX_HOSTS, MAX_KEY, MAX_KEYS, OTHER, OTHER_HOSTS

TS = "2026-11-26T10:00:00.000+00:00"


def line(name: str, host: str = "celery@a", **fields: Any) -> str:
    return json.dumps({"event": name, "ts": TS, "hostname": host, **fields})


def report_of(tmp_path: Path, lines: list[str], fmt: str = "text") -> tuple[int, str, str]:
    path = tmp_path / "worker.log"
    path.write_text("\n".join(lines) + "\n")
    out, err = io.StringIO(), io.StringIO()
    code = run_report([str(path)], fmt, out=out, err=err)
    return code, out.getvalue(), err.getvalue()


def strict_json(text: str) -> Any:
    """Parse ``text`` refusing NaN and infinities (which json.dumps would write, and no other parser reads)."""
    def refuse(constant: str) -> None:
        raise ValueError(f"non-standard JSON constant {constant}")

    return json.loads(text, parse_constant=refuse)


GOOD = line("memguard.leak_suspected", task="app.leak", kib_per_call=512.0, confidence=0.9, calls_observed=40)


class TestMalformedValues:
    """Each value the issue found (and its relatives) is skipped, counted under its field, never raised."""

    @pytest.mark.parametrize(("bad", "field"), [
        ('{"event": "memguard.leak_suspected", "hostname": "h", "task": "t", "kib_per_call": 1, '
         '"calls_observed": "1e400"}', "calls_observed"),
        ('{"event": "memguard.heavy_task", "hostname": "h", "task": "t", "peak_mib": 1, "occurrences": NaN}',
         "occurrences"),
        ('{"event": "memguard.leak_suspected", "hostname": "h", "task": "t", "kib_per_call": NaN}', "kib_per_call"),
        ('{"event": "memguard.leak_suspected", "hostname": "h", "task": "t", "kib_per_call": -Infinity}',
         "kib_per_call"),
        ('{"event": "memguard.leak_suspected", "hostname": "h", "task": "t", "kib_per_call": "nan"}', "kib_per_call"),
        ('{"event": "memguard.master_growth", "hostname": "h", "growth_mib": 1, "reserved": 1e300}', "reserved"),
        ('{"event": "memguard.master_growth", "hostname": "h", "growth_mib": ' + "9" * 400 + "}", "growth_mib"),
        ('{"event": "memguard.leak_sites", "hostname": "h", "task": "t", "sites": [{"file": "f", "line": 1e400}]}',
         "line"),
        ('{"event": "memguard.started", "hostname": "h", "pool": "prefork", "soft_limit_mib": NaN}',
         "soft_limit_mib"),
        ('{"event": "memguard.child_lost", "hostname": "h", "signal": "SIGKILL", "likely_oom": "yes"}',
         "likely_oom"),
        ('{"event": "memguard.error", "hostname": "h", "where": NaN, "error": "x"}', "where"),
    ])
    def test_value_skipped_and_counted(self, tmp_path: Path, bad: str, field: str) -> None:
        """The bad event is counted corrupt (under its field); the good one next to it is reported."""
        code, text, err = report_of(tmp_path, [GOOD, bad])
        assert (0, "") == (code, err)
        assert "Read 1 file, 2 lines: 1 MemGuard event, 0 foreign lines and 1 corrupt line skipped." in text
        assert f"by field: {field} 1." in text, text
        assert "nan" not in text.lower().replace("financ", "") and "inf " not in text
        data = strict_json(report_of(tmp_path, [GOOD, bad], "json")[1])
        assert {field: 1} == data["invalid"] and 1 == data["corrupt"]

    def test_nested_100000_deep(self, tmp_path: Path) -> None:
        """100,000 nested ``[`` (RecursionError in the JSON decoder) is one corrupt line."""
        deep = '{"event": "memguard.error", "hostname": "h", "x": ' + "[" * 100_000
        code, text, _ = report_of(tmp_path, [deep, GOOD, '{"event": "memguard.error", "x": ' + "{\"a\":" * 50_000])
        assert 0 == code
        assert "3 lines: 1 MemGuard event, 0 foreign lines and 2 corrupt lines skipped" in text

    def test_nan_never_printed(self, tmp_path: Path) -> None:
        """kib_per_call NaN used to print "~nan KiB per call"; now the event is skipped and the verdict says OK."""
        bad = '{"event": "memguard.leak_suspected", "hostname": "h", "task": "t", "kib_per_call": NaN}'
        code, text, _ = report_of(tmp_path, [line("memguard.started", pool="prefork"), bad])
        assert 0 == code and "nan" not in text and "Verdict: OK" in text

    def test_control_characters_and_long_strings(self, tmp_path: Path) -> None:
        """Terminal escapes in a logged string are not passed to the terminal; a 100 KB task name is cut."""
        evil = line("memguard.heavy_task", task="\x1b]0;owned\x07" + "t" * 100_000, peak_mib=900.0)
        code, text, _ = report_of(tmp_path, [evil])
        assert 0 == code and "\x1b" not in text and "\x07" not in text
        assert max(len(row) for row in text.splitlines()) < 2 * MAX_KEY


class TestBoundedMemory:
    """A new key on every line: at most the documented keys are kept, the rest is counted and said."""

    def test_unique_hosts_are_folded(self, tmp_path: Path) -> None:
        """Hosts beyond MAX_HOSTS are counted under "(other hosts)"; every recycle is still counted."""
        lines = [line("memguard.child_recycled", host=f"celery@h{i}", reason="soft_limit", task="t")
                 for i in range(MAX_HOSTS + 100)]
        data = strict_json(report_of(tmp_path, lines, "json")[1])
        hosts = {h["hostname"]: h for h in data["hosts"]}
        assert MAX_HOSTS + 1 == len(hosts) and OTHER_HOSTS in hosts
        assert {"soft_limit": 100} == hosts[OTHER_HOSTS]["interventions"]["recycled"]
        assert MAX_HOSTS + 100 == sum(sum(h["interventions"]["recycled"].values()) for h in data["hosts"])
        assert 100 == data["not_itemised"]["hosts"]
        code, text, _ = report_of(tmp_path, lines)
        assert f"MemGuard recycled {MAX_HOSTS + 100} pool children" in text
        assert "not itemised: hosts 100." in " ".join(text.split())

    def test_every_table_capped_counts_kept(self, tmp_path: Path) -> None:
        """On one host: new task, cause, reason, signal, pool and event name per line; tables stop at
        MAX_KEYS, count tables put the rest under "(other)", totals stay exact."""
        n = MAX_KEYS + 50
        lines: list[str] = []
        for i in range(n):
            lines += [
                line("memguard.leak_suspected", task=f"leak.{i}", kib_per_call=1.0),
                line("memguard.heavy_task", task=f"heavy.{i}", peak_mib=1.0),
                line("memguard.error", where=f"w{i}", error="E"),
                line("memguard.task_killed", reason=f"r{i}", task=f"k{i}"),
                line("memguard.child_lost", signal=f"SIG{i}", task=f"lost.{i}"),
                line("memguard.pool_unsupported", pool=f"pool{i}"),
                line(f"memguard.custom_{i}"),
            ]
        data = strict_json(report_of(tmp_path, lines, "json")[1])
        (host,) = data["hosts"]
        assert MAX_KEYS == len(host["suspects"]) == len(host["heavy"]) == len(host["errors"])
        assert MAX_KEYS == len(host["unsupported_pools"])
        for counts in (host["interventions"]["killed"], host["interventions"]["killed_tasks"],
                       host["lost"]["by_signal"], host["lost"]["tasks"], host["other_events"]):
            assert MAX_KEYS + 1 == len(counts) and 50 == counts[OTHER]
            assert n == sum(counts.values())
        assert n == host["lost"]["count"] and 7 * n == data["events"] == host["events"]
        assert {"suspects": 50, "heavy tasks": 50, "errors": 50, "reasons": 50, "tasks": 100, "signals": 50,
                "pools": 50, "other event names": 50} == data["not_itemised"]

    def test_total_entries_capped(self) -> None:
        """Over many hosts, the kept keys stop at MAX_ENTRIES (each diagnostics site counting as one)."""
        agg = Aggregator()
        for i in range(MAX_ENTRIES * 2):
            agg.feed({"event": "memguard.error", "hostname": f"h{i % MAX_HOSTS}", "where": f"w{i}", "error": "E"})
        report = agg.build([])
        kept = sum(len(h.errors) for h in report.hosts)
        assert kept <= MAX_ENTRIES and MAX_ENTRIES * 2 - kept == report.not_itemised["errors"]

    def test_memory_does_not_grow_with_unique_keys(self) -> None:
        """Peak traced memory for 20,000 lines of new keys is about that of 10,000 (the tables are full)."""
        def peak(count: int) -> int:
            tracemalloc.start()
            try:
                agg = Aggregator()
                pad = "x" * 150
                for i in range(count):
                    agg.feed({"event": f"memguard.e{i % 3}" if i % 4 else "memguard.error", "hostname": f"h{i}{pad}",
                              "where": f"w{i}{pad}", "error": f"E{i}{pad}", "ts": TS})
                agg.build([])
                return tracemalloc.get_traced_memory()[1]
            finally:
                tracemalloc.stop()

        small, large = peak(10_000), peak(20_000)
        assert large < small * 1.2, (small, large)


_HOSTILE_VALUES: list[Any] = [None, True, 0, -1, 1.5, 1e308, -1e308, 2**70, "", "x" * 3000, "1e400", "nan", "-inf",
                              "\x00\x1b[2J", [], [1, [2]], {}, {"a": {"b": None}}, "memguard.error"]
_HOSTILE_TOKENS = ["NaN", "Infinity", "-Infinity", "1e400", "9" * 500, "[" * 3000, "{", "}", '"', "\\u0000", ","]


def _mutant(rng: random.Random, events: list[dict[str, Any]]) -> str:
    event = dict(rng.choice(events))
    for _ in range(rng.randint(0, 4)):
        key = rng.choice([*event.keys(), "event", "hostname", "ts", "task", "reason", "sites", "types"])
        event[key] = rng.choice(_HOSTILE_VALUES)
    text = json.dumps(event)
    roll = rng.random()
    if roll < 0.3:  # a non-standard constant or broken syntax spliced in
        at = rng.randrange(len(text))
        text = text[:at] + rng.choice(_HOSTILE_TOKENS) + text[at:]
    elif roll < 0.4:
        text = text[: rng.randrange(len(text))]
    elif roll < 0.5:
        text = "[2026-11-26 10:00:00,000: WARNING/MainProcess] " + text
    return text


def test_fuzz_random_event_lines(tmp_path: Path) -> None:
    """Seeded fuzz: 3,000 lines mutated from real events (wrong types, NaN, huge numbers, broken syntax,
    splices, cut lines) and raw random bytes: no exception, strict JSON out, every line accounted for."""
    sample = Path(__file__).parent / "fixtures" / "report_sample.log"
    events = [json.loads(raw[raw.index("{"):]) for raw in sample.read_text().splitlines()
              if '"memguard.' in raw and raw.rstrip().endswith("}")]
    events = [e for e in events if isinstance(e, dict)]
    assert len(events) > 5
    for seed in range(3):
        rng = random.Random(seed)
        lines = [_mutant(rng, events) for _ in range(1000)]
        path = tmp_path / f"fuzz{seed}.log"
        with open(path, "wb") as f:
            for text in lines:
                f.write(text.encode("utf-8", "surrogatepass") + b"\n")
            f.write(bytes(rng.randrange(256) for _ in range(4000)) + b"\n")
        report = build_report([str(path)])
        render_text(report)
        data = strict_json(render_json(report))
        assert report.lines >= report.events + report.foreign + report.corrupt + report.console > 0
        assert sum(report.invalid.values()) <= report.corrupt
        assert data["events"] == report.events


def test_hypothesis_any_json_values_in_known_events() -> None:
    """Property: whatever JSON values the known events' fields hold (any type, NaN, infinities, huge
    numbers, nesting), aggregating and rendering never raises and the JSON output is strict JSON."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    from celery_memguard import events as names

    scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True, allow_infinity=True),
                        st.text(max_size=30), st.sampled_from(["1e400", "nan", "-inf", "memguard.error", "\x1b[2J"]))
    values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                           st.dictionaries(st.text(max_size=8), inner, max_size=4)),
                          max_leaves=12)
    keys = sorted({key for fields in names.EVENT_KEYS.values() for key in fields} | {"hostname", "ts"})
    event = st.builds(lambda name, fields: {"event": name, **fields},
                      st.sampled_from(sorted(names.EVENT_KEYS)), st.dictionaries(st.sampled_from(keys), values))

    @settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(st.lists(event, min_size=1, max_size=8))
    def check(batch: list[dict[str, Any]]) -> None:
        agg = Aggregator()
        for item in batch:
            agg.feed(item)
        report = agg.build([])
        render_text(report)
        strict_json(render_json(report))
        assert report.events + agg.corrupt == len(batch) and sum(report.invalid.values()) == agg.corrupt

    check()
