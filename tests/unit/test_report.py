"""Tests for celery_memguard.report: reading logs (plain, gz, rotated, stdin, damaged), aggregating, rendering."""

from __future__ import annotations

import gzip
import io
import json
import sys
from pathlib import Path

import pytest

from celery_memguard.report import (
    Aggregator,
    build_report,
    order_sources,
    parse_line,
    render_json,
    render_text,
    to_dict,
)
from celery_memguard.report.reader import MAX_LINE

FIXTURE = Path(__file__).parent / "fixtures" / "report_sample.log"
DOCS = Path(__file__).resolve().parents[2] / "docs" / "detection.md"


def event(name: str, ts: str = "2026-11-21T13:00:00.000+00:00", host: str | None = "celery@a", **fields: object) -> str:
    data: dict[str, object] = {"event": name, "level": "warning", "ts": ts}
    if host is not None:
        data["hostname"] = host
    data.update(fields)
    return json.dumps(data)


def write(path: Path, lines: list[str], *, gz: bool = False) -> Path:
    data = ("\n".join(lines) + "\n").encode()
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


LEAK = event("memguard.leak_suspected", task="app.leak", kib_per_call=2048.0, confidence=0.9, calls_observed=30,
             children=2, projected_calls_to_soft_limit=150)


class TestParseLine:
    @pytest.mark.parametrize(
        ("line", "kind"),
        [
            ("", "blank"),
            ("   \n", "blank"),
            ("[2026-11-21 13:00:00,000: INFO/MainProcess] celery@a ready.", "foreign"),
            ('{"event": "task-succeeded", "uuid": "x"}', "foreign"),
            ("[1, 2, 3]", "foreign"),
            ("[2026-11-21 13:00:00,000: INFO/ForkPoolWorker-1] Task t[x] succeeded: {'a': 1}", "foreign"),
            ('{"event": "memguard.leak_suspected", "task": "t", "kib_per_call": 1.0}', "event"),
            ('[2026-11-21 13:00:00,000: WARNING/MainProcess] {"event": "memguard.error", "where": "x"}', "event"),
            ('2026-11-21T13:00:00Z stderr F {"event": "memguard.started"} trailing', "event"),
            ('{"event": "memguard.leak_suspected", "task": "t", "kib_per', "corrupt"),
            ('{"task": "app.tasks.export_report", "confid', "corrupt"),
            ("2026-11-21T13:00:00Z [info     ] memguard.child_recycled  pid=4 reason=soft_limit", "console"),
        ],
    )
    def test_classification(self, line: str, kind: str) -> None:
        """Each kind of line is classified as blank, foreign, corrupt, console or a MemGuard event."""
        assert parse_line(line)[0] == kind

    def test_event_object_is_returned(self) -> None:
        """A MemGuard line yields its JSON object, parsed from the first brace."""
        kind, obj = parse_line('prefix {"event": "memguard.error", "where": "w", "error": "E"}')
        assert kind == "event" and obj == {"event": "memguard.error", "where": "w", "error": "E"}


class TestFixture:
    def test_counts(self) -> None:
        """The sample log's lines are counted as events, foreign and corrupt lines."""
        report = build_report([str(FIXTURE)])
        assert (report.lines, report.events, report.foreign, report.corrupt) == (27, 16, 10, 1)
        assert [h.hostname for h in report.hosts] == ["celery@web-1", "celery@web-2"]

    def test_suspect_with_sites_and_types(self) -> None:
        """The leaking task carries its latest estimate, allocation sites and growing types."""
        web1 = build_report([str(FIXTURE)]).hosts[0]
        suspect = web1.suspects[0]
        assert suspect.task == "app.tasks.export_report"
        assert suspect.kib_per_call == 2048.0 and suspect.confidence == 0.9 and suspect.reports == 2
        assert suspect.sites[0].file.endswith("reports.py") and suspect.sites[0].line == 88
        assert suspect.types[0].type == "bytes"

    def test_heavy_recycles_kills_master_errors(self) -> None:
        """Heavy tasks, recycles and kills by reason, master growth and errors are all collected."""
        web1, web2 = build_report([str(FIXTURE)]).hosts
        assert [h.task for h in web1.heavy] == ["app.tasks.import_csv"]
        assert web1.interventions.recycled == {"soft_limit": 1, "hard_limit": 1}
        assert web1.interventions.killed == {"hard_limit": 1}
        assert web1.interventions.killed_tasks == {"app.tasks.import_csv": 1}
        assert web2.master is not None and "likely account" in (web2.master.note or "")
        assert web2.master.reports == 2
        assert [(e.where, e.count) for e in web2.errors] == [("monitor.exact_reading", 1)]
        assert (web1.lost.count, web2.lost.count, web2.lost.likely_oom) == (0, 1, 1)
        assert web2.lost.tasks == {"app.tasks.render_pdf": 1} and web2.lost.by_signal == {"SIGKILL": 1}
        assert web2.lost.max_last_mem_mib == 702.4 and "oom_kill" in (web2.lost.last_reason or "")

    def test_verdict(self) -> None:
        """The verdict names the leak first and gives advice for each finding."""
        verdict = build_report([str(FIXTURE)]).verdict
        assert verdict.status == "leak"
        assert verdict.findings[0].startswith("app.tasks.export_report retains ~2,048.0 KiB per call")
        assert any("reports.py:88" in a for a in verdict.advice)
        assert any("own queue" in a for a in verdict.advice)
        assert any("killed outside MemGuard (1 likely by the OOM killer)" in f and "app.tasks.render_pdf (1)" in f
                   for f in verdict.findings), verdict.findings
        assert any("OOM-killed before MemGuard acted" in a for a in verdict.advice)

    def test_docs_show_the_real_output(self) -> None:
        """docs/detection.md's worked example is exactly what the renderer prints for the sample log."""
        rendered = render_text(build_report([str(FIXTURE)]))
        assert rendered in DOCS.read_text()


class TestInputs:
    def test_gzip_and_rotated_files_equal_the_plain_file(self, tmp_path: Path) -> None:
        """The sample split into worker.log.2.gz, worker.log.1 and worker.log reports the same."""
        lines = FIXTURE.read_text().splitlines()
        third = len(lines) // 3
        paths = [
            write(tmp_path / "worker.log", lines[2 * third:]),
            write(tmp_path / "worker.log.1", lines[third:2 * third]),
            write(tmp_path / "worker.log.2.gz", lines[:third], gz=True),
        ]
        split = build_report([str(p) for p in paths])
        whole = build_report([str(FIXTURE)])
        assert [s.compressed for s in split.sources] == ["gzip", None, None]
        assert split.sources[0].path.endswith("worker.log.2.gz")
        assert (split.events, split.foreign, split.corrupt) == (whole.events, whole.foreign, whole.corrupt)
        assert to_dict(split)["hosts"] == to_dict(whole)["hosts"]
        assert split.verdict == whole.verdict

    def test_order_of_rotated_names(self) -> None:
        """Rotated files are read oldest first, each family in its first-seen place, duplicates once."""
        given = ["w.log", "a.log", "w.log.1", "w.log.10.gz", "w.log.2", "w.log-20261120.gz", "w.log"]
        assert order_sources(given) == ["w.log.10.gz", "w.log.2", "w.log.1", "w.log-20261120.gz", "w.log", "a.log"]

    def test_latest_estimate_wins_whatever_the_file_order(self, tmp_path: Path) -> None:
        """The suspect shows the estimate with the latest ts even when read first."""
        new = event("memguard.leak_suspected", ts="2026-11-21T14:00:00.000+00:00", task="t", kib_per_call=300.0,
                    confidence=0.95, calls_observed=400, children=2)
        old = event("memguard.leak_suspected", ts="2026-11-21T13:00:00.000+00:00", task="t", kib_per_call=100.0,
                    confidence=0.6, calls_observed=100, children=2)
        report = build_report([str(write(tmp_path / "b.log", [new])), str(write(tmp_path / "a.log", [old]))])
        suspect = report.hosts[0].suspects[0]
        assert (suspect.kib_per_call, suspect.calls_observed, suspect.reports) == (300.0, 400, 2)
        assert suspect.first_seen == "2026-11-21T13:00:00.000+00:00"

    def test_two_workers_in_two_files(self, tmp_path: Path) -> None:
        """Logs of several workers are grouped by hostname; events without one go to an unknown host."""
        a = write(tmp_path / "a.log", [event("memguard.started", host="celery@a", pool="prefork"), LEAK])
        b = write(tmp_path / "b.log", [event("memguard.child_recycled", host="celery@b", reason="soft_limit"),
                                       event("memguard.error", host=None, where="w", error="E")])
        report = build_report([str(a), str(b)])
        assert [h.hostname for h in report.hosts] == ["(unknown host)", "celery@a", "celery@b"]
        assert report.hosts[1].suspects[0].task == "app.leak"
        assert report.hosts[2].interventions.recycled == {"soft_limit": 1}

    def test_stdin(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """'-' reads standard input."""
        fake = io.TextIOWrapper(io.BytesIO((LEAK + "\nnoise\n").encode()))
        monkeypatch.setattr(sys, "stdin", fake)
        report = build_report(["-"])
        assert (report.events, report.foreign) == (1, 1)

    def test_missing_file_is_reported_not_raised(self, tmp_path: Path) -> None:
        """An unreadable path is listed with its error; the others are still read."""
        good = write(tmp_path / "good.log", [LEAK])
        report = build_report([str(tmp_path / "missing.log"), str(good)])
        assert [s.readable for s in report.sources] == [False, True]
        assert "FileNotFoundError" in (report.sources[0].error or "")
        assert report.events == 1

    def test_truncated_gzip_keeps_what_was_read(self, tmp_path: Path) -> None:
        """A gzip file cut short (rotation in progress) yields its complete lines and notes the damage."""
        data = gzip.compress(("\n".join([LEAK] * 2000) + "\n").encode())
        path = tmp_path / "cut.log.gz"
        path.write_bytes(data[: len(data) // 2])
        report = build_report([str(path)])
        source = report.sources[0]
        assert source.readable and source.error is not None
        assert report.events > 0

    def test_binary_garbage_never_crashes(self, tmp_path: Path) -> None:
        """Random bytes, NULs and invalid UTF-8 are counted, not fatal."""
        path = tmp_path / "junk.log"
        path.write_bytes(bytes(range(256)) * 50 + b"\n{\xff\xfe\n" + LEAK.encode() + b"\n")
        report = build_report([str(path)])
        assert report.events == 1 and report.corrupt >= 1

    def test_overlong_line_is_skipped(self, tmp_path: Path) -> None:
        """A line longer than MAX_LINE is counted corrupt without being kept in memory."""
        path = tmp_path / "long.log"
        path.write_bytes(b"{" + b"x" * (MAX_LINE + 10) + b"\n" + LEAK.encode() + b"\n")
        report = build_report([str(path)])
        assert (report.lines, report.corrupt, report.events) == (2, 1, 1)

    def test_wrong_field_types_count_as_corrupt(self, tmp_path: Path) -> None:
        """A MemGuard event whose fields have the wrong types is counted corrupt and ignored."""
        bad = [
            event("memguard.leak_suspected", task="t", kib_per_call="lots"),
            event("memguard.leak_sites", task="t", sites="everywhere"),
            event("memguard.leak_types", task="t", types=[1, 2]),
            event("memguard.heavy_task", task=["t"], peak_mib=1.0),
            event("memguard.master_growth", growth_mib=None),
        ]
        report = build_report([str(write(tmp_path / "bad.log", bad + [LEAK]))])
        assert (report.events, report.corrupt) == (1, 5)
        assert report.sources[0].events == 1 and report.sources[0].corrupt == 5

    def test_console_format_is_explained(self, tmp_path: Path) -> None:
        """A log with only console-format events gets a no-data verdict that says how to fix it."""
        path = write(tmp_path / "console.log", ["2026-11-21 [warning  ] memguard.leak_suspected task=t"])
        report = build_report([str(path)])
        assert report.verdict.status == "no-data" and report.console == 1
        assert "memguard_log_format" in report.verdict.advice[0]


class TestAggregation:
    def test_cleared_suspect_is_not_a_leak(self) -> None:
        """A suspect cleared after its last report is shown cleared and does not make the verdict a leak."""
        aggregator = Aggregator()
        aggregator.feed(json.loads(LEAK))
        aggregator.feed(json.loads(event("memguard.leak_cleared", ts="2026-11-21T15:00:00.000+00:00",
                                         task="app.leak", reason="saturating")))
        report = aggregator.build([])
        suspect = report.hosts[0].suspects[0]
        assert suspect.cleared and suspect.cleared_reason == "saturating"
        assert report.verdict.status == "ok"

    def test_reported_again_after_clearing(self) -> None:
        """A suspect reported again after being cleared is active."""
        aggregator = Aggregator()
        aggregator.feed(json.loads(event("memguard.leak_cleared", ts="2026-11-21T12:00:00.000+00:00", task="app.leak")))
        aggregator.feed(json.loads(LEAK))
        assert not aggregator.build([]).hosts[0].suspects[0].cleared

    def test_suspects_ranked_by_rate_times_confidence(self) -> None:
        """Suspects are ranked by KiB/call x confidence."""
        aggregator = Aggregator()
        for task, kib, confidence in (("slow", 50.0, 1.0), ("fast", 2048.0, 0.6), ("mid", 512.0, 0.9)):
            aggregator.feed(json.loads(event("memguard.leak_suspected", task=task, kib_per_call=kib,
                                             confidence=confidence)))
        assert [s.task for s in aggregator.build([]).hosts[0].suspects] == ["fast", "mid", "slow"]

    def test_dry_run_and_unknown_events(self) -> None:
        """Dry-run would_* events and unknown memguard events are counted per host."""
        aggregator = Aggregator()
        aggregator.feed(json.loads(event("memguard.would_recycle", reason="soft_limit")))
        aggregator.feed(json.loads(event("memguard.would_kill", reason="hard_limit")))
        aggregator.feed(json.loads(event("memguard.from_the_future", x=1)))
        host = aggregator.build([]).hosts[0]
        assert host.interventions.would_recycle == {"soft_limit": 1}
        assert host.interventions.would_kill == {"hard_limit": 1}
        assert host.other_events == {"memguard.from_the_future": 1}

    def test_storms_and_unrelieved_pressure(self) -> None:
        """recycle_storm and pressure_unrelieved episodes are counted per host with the latest cause."""
        aggregator = Aggregator()
        aggregator.feed(json.loads(event("memguard.recycle_storm", cause="old cause")))
        aggregator.feed(json.loads(event("memguard.recycle_storm", ts="2026-11-21T14:00:00.000+00:00",
                                         cause="12 recycles a minute for soft_limit")))
        aggregator.feed(json.loads(event("memguard.pressure_unrelieved", cause="held outside the children")))
        report = aggregator.build([])
        host = report.hosts[0]
        assert (host.recycle_storms.count, host.recycle_storms.cause) == (2, "12 recycles a minute for soft_limit")
        assert (host.pressure_unrelieved.count, host.pressure_unrelieved.cause) == (1, "held outside the children")
        assert report.verdict.status == "attention"
        assert any("no pool child could relieve (1 episode)" in f for f in report.verdict.findings)
        assert any("storm episodes: 12 recycles" in f for f in report.verdict.findings)
        text = render_text(report)
        assert "Recycle storms: 2 episodes" in text and "Pressure no child could relieve: 1 episode" in text

    def test_child_lost_without_oom_and_with_bad_fields(self) -> None:
        """A child killed by an operator is counted, not called an OOM; a non-boolean likely_oom is corrupt."""
        aggregator = Aggregator()
        assert aggregator.feed(json.loads(event("memguard.child_lost", signal="SIGTERM", exitcode=-15,
                                                task=None, likely_oom=False, reason="not killed by SIGKILL")))
        assert not aggregator.feed(json.loads(event("memguard.child_lost", signal="SIGKILL", likely_oom="yes")))
        assert aggregator.feed(json.loads(event("memguard.child_lost", exitcode=3, likely_oom=False)))
        report = aggregator.build([])
        lost = report.hosts[0].lost
        assert (lost.count, lost.likely_oom, lost.tasks) == (2, 0, {})
        assert lost.by_signal == {"SIGTERM": 1, "exit code 3": 1}
        assert (aggregator.corrupt, report.verdict.status) == (1, "attention")
        assert not any("OOM-killed" in a for a in report.verdict.advice)

    def test_heavy_occurrences_add_up(self) -> None:
        """Heavy-task events add their occurrences and keep the largest peak."""
        aggregator = Aggregator()
        aggregator.feed(json.loads(event("memguard.heavy_task", task="t", peak_mib=300.0, occurrences=1)))
        aggregator.feed(json.loads(event("memguard.heavy_task", ts="2026-11-21T14:00:00.000+00:00", task="t",
                                         peak_mib=250.0, occurrences=4, task_id="last")))
        heavy = aggregator.build([]).hosts[0].heavy[0]
        assert (heavy.occurrences, heavy.max_peak_mib, heavy.last_task_id) == (5, 300.0, "last")


class TestRendering:
    def test_text_sections(self) -> None:
        """The text report has the counts line, the verdict, and every section per host."""
        text = render_text(build_report([str(FIXTURE)]))
        for needle in ("Read 1 file, 27 lines: 16 MemGuard events, 10 foreign lines and 1 corrupt line skipped.",
                       "Verdict: LEAK", "Leak suspects (ranked", "sites:", "types:", "Heavy tasks",
                       "Recycles by reason: hard_limit 1, soft_limit 1", "Kills by reason:    hard_limit 1",
                       "Master growth: +", "Errors: 1", "celery@web-2",
                       "Children lost outside MemGuard: 1 (1 likely OOM; SIGKILL 1)", "running: app.tasks.render_pdf 1"):
            assert needle in text

    def test_json_round_trip(self) -> None:
        """--format json is valid JSON with the schema version, sources, hosts and verdict."""
        data = json.loads(render_json(build_report([str(FIXTURE)])))
        assert data["schema"] == 1 and data["readable_sources"] == 1
        assert data["verdict"]["status"] == "leak"
        assert data["hosts"][0]["suspects"][0]["task"] == "app.tasks.export_report"
        assert data["sources"][0]["corrupt"] == 1

    def test_empty_report_renders(self) -> None:
        """A report of nothing still renders in both formats."""
        report = Aggregator().build([])
        assert "No MemGuard events" in render_text(report)
        assert json.loads(render_json(report))["verdict"]["status"] == "no-data"
