"""``report --format html``: the self-contained page, its timelines and markers, and its bounds.

Logs are a recorded demo run (``fixtures/report_timeline.log``: a real prefork worker with a leak recycled
at the soft limit and a runaway task stopped at the hard limit, ``memguard_sample_interval`` 0.25 s) and
a synthetic day of an 8-child worker (:mod:`tests.unit.timeline_logs`). The page is checked as text
(SVG elements, hover titles, escaping, no external reference); the browser check is
``scripts/browser_check.py`` (headless Chromium).
"""

from __future__ import annotations

import io
import json
import random
import re
import tracemalloc
from pathlib import Path
from typing import Any

import pytest

from celery_memguard.cli import main, run_report
from celery_memguard.report import Timelines, build_report, render_html
from celery_memguard.report.timeline import (MAX_MARKERS, MAX_PIDS, MAX_POINTS, MAX_SERIES, MAX_SLOTS,
                                             MAX_TIMELINE_HOSTS, Series, parse_ts)

from .timeline_logs import write_day_log

RECORDED = Path(__file__).parent / "fixtures" / "report_timeline.log"


def html_of(paths: list[Path]) -> tuple[str, Timelines]:
    timelines = Timelines()
    report = build_report([str(p) for p in paths], timelines)
    return render_html(report, timelines), timelines


def polylines(page: str) -> list[list[str]]:
    return [m.split() for m in re.findall(r'<polyline points="([^"]*)"', page)]


def titles(page: str) -> list[str]:
    return re.findall(r"<title>([^<]*)</title>", page)


def assert_self_contained(page: str) -> None:
    assert "<script" not in page.lower()
    refs = re.findall(r'(?:src|href)\s*=\s*"([^"]*)"', page) + re.findall(r"url\(([^)]*)\)", page)
    assert [] == refs
    # The only URL is the SVG namespace (a name, never fetched).
    assert set(re.findall(r"https?://[^\s\"'<]+", page)) <= {"http://www.w3.org/2000/svg"}


class TestRecordedRun:
    """The demo's real log: a chart per slot and the master, limits, recycle and kill markers."""

    def test_page(self) -> None:
        page, timelines = html_of([RECORDED])
        assert_self_contained(page)
        host = next(iter(timelines.hosts.values()))
        assert host.samples > 10 and len(host.slots) >= 2 and host.master is not None
        assert page.count('class="chart mini"') == len(host.slots)
        assert "soft limit" in page and "hard limit" in page
        hover = titles(page)
        assert any(t.startswith("20") and "recycled (soft_limit)" in t for t in hover), hover
        assert any("task stopped (hard_limit)" in t and "demoapp.runaway" in t for t in hover), hover
        assert any(t.startswith("slot 0") for t in hover) and any(t.startswith("master") for t in hover)
        assert 'class="marker recycle"' in page and 'class="marker kill"' in page
        assert "demoapp.leaky" in page or "recycled" in page  # the verdict names what was done

    def test_markers_sit_on_their_slots_chart(self) -> None:
        """A recycle is drawn on the chart of the slot its child held (pid looked up in the samples)."""
        _page, timelines = html_of([RECORDED])
        host = next(iter(timelines.hosts.values()))
        recycles = [m for m in host.markers if m.kind == "recycle"]
        assert recycles and all(host.slot_of(m) in host.slots for m in recycles)


class TestDay:
    """A day of an 8-child worker: every kind of marker, suspects with sites, heavy tasks, bounded size."""

    @pytest.fixture
    def day(self, tmp_path: Path) -> Path:
        path = tmp_path / "day.log"
        write_day_log(path)
        return path

    def test_everything_drawn(self, day: Path) -> None:
        page, timelines = html_of([day])
        assert_self_contained(page)
        for kind in ("recycle", "kill", "lost", "leak", "growth"):
            assert f'class="marker {kind}"' in page, kind
        assert page.count('class="chart mini"') == 8
        assert "app/tasks.py:42" in page and "app.leaky" in page  # the suspect and its site
        assert "app.render_pdf" in page  # heavy task
        assert "LEAK: 1 task retains memory on every call." in page
        assert "available memory" in page and "pool total" in page
        assert "pool limit 3,000 MiB" in page and "min available 1,024 MiB" in page  # from memguard.started
        assert all(len(line) <= MAX_POINTS for line in polylines(page))

    def test_size_does_not_grow_with_the_sample_rate(self, day: Path, tmp_path: Path) -> None:
        """A day at 60 s and a day at 10 s give pages of about the same size, both well under a few MB."""
        dense = tmp_path / "dense.log"
        write_day_log(dense, interval=10.0)
        small, large = (len(html_of([p])[0].encode()) for p in (day, dense))
        assert small < 1_000_000 and large < 1_000_000, (small, large)
        assert large < small * 1.5, (small, large)

    def test_order_of_inputs_does_not_matter(self, day: Path, tmp_path: Path) -> None:
        """Rotated logs are read in any order: the lines reversed give the same timelines."""
        reverse = tmp_path / "reversed.log"
        reverse.write_text("".join(reversed(day.read_text().splitlines(keepends=True))))
        a, b = html_of([day])[1], html_of([reverse])[1]
        ha, hb = next(iter(a.hosts.values())), next(iter(b.hosts.values()))
        assert ha.slots[1].points() == hb.slots[1].points()
        assert ha.master.points() == hb.master.points()  # type: ignore[union-attr]


class TestSeries:
    def test_downsampling_keeps_the_peak_and_the_bound(self) -> None:
        series = Series("s")
        for i in range(100_000):
            series.add(float(i), 500.0 if i == 77_777 else 100.0 + (i % 7))
        points = series.points()
        assert len(points) <= MAX_POINTS
        assert 500.0 == max(v for _t, v, _w in points)
        assert points == sorted(points) and points[0][0] < 600 and points[-1][0] > 99_000

    @pytest.mark.parametrize("ts", ["2026-11-26T10:00:00.000+00:00", "2026-11-26T10:00:00Z", "2026-11-26T10:00:00"])
    def test_timestamps(self, ts: str) -> None:
        assert 1795687200.0 == parse_ts(ts)

    @pytest.mark.parametrize("ts", [None, 5, "", "yesterday", "9999-99-99T00:00:00", "x" * 1000, ["2026"]])
    def test_bad_timestamps(self, ts: Any) -> None:
        assert parse_ts(ts) is None


TS = "2026-11-26T10:00:{:02d}.000+00:00"


def sample(host: str = "celery@a", second: int = 0, **fields: Any) -> dict[str, Any]:
    base = {"event": "memguard.sample", "ts": TS.format(second % 60), "hostname": host, "metric": "uss",
            "children": [{"slot": 0, "pid": 10, "mem_mib": 50.0, "rss_mib": 60.0, "tasks": 3}],
            "pool_mib": 50.0, "pool_rss_mib": 60.0, "master_mib": 30.0, "master_rss_mib": 40.0, "available_mib": 900.0}
    return {**base, **fields}


class TestHostile:
    """Malformed, hostile and huge inputs: skipped and counted, escaped, bounded."""

    @pytest.mark.parametrize("fields", [
        {"children": "many"}, {"children": [1, None, "x", [2]]}, {"children": [{"slot": "0", "mem_mib": 1}]},
        {"children": [{"slot": 0, "mem_mib": float("nan")}]}, {"children": [{"slot": 2**70, "mem_mib": 1}]},
        {"children": [{"slot": True, "mem_mib": 1}]}, {"children": [{"slot": -1, "mem_mib": 1}]},
        {"master_mib": float("inf")}, {"pool_mib": -5}, {"available_mib": "lots"}, {"master_mib": 10**400},
        {"ts": "not a time"}, {"ts": None}, {"hostname": ["x"]}, {"metric": {"a": 1}},
    ])
    def test_malformed_sample_is_skipped(self, fields: dict[str, Any]) -> None:
        timelines = Timelines()
        timelines.feed(sample(**fields))
        timelines.feed(sample(second=5))
        html = render_html(build_report([]), timelines)
        assert "nan" not in html.lower().replace("nanosecond", "") and "inf<" not in html

    def test_log_strings_are_escaped(self, tmp_path: Path) -> None:
        evil = '<script>alert("x")</script>'
        path = tmp_path / "evil.log"
        path.write_text("\n".join(json.dumps(e) for e in [
            sample(host=evil),
            {"event": "memguard.child_recycled", "ts": TS.format(1), "hostname": evil, "pid": 10, "reason": evil,
             "mem_mib": 51.0, "limit_mib": 50.0, "task": evil},
            {"event": "memguard.leak_suspected", "ts": TS.format(2), "hostname": evil, "task": evil,
             "kib_per_call": 9.0},
        ]) + "\n")
        page, _ = html_of([path])
        assert "<script" not in page and "&lt;script&gt;" in page
        assert_self_contained(page)

    def test_caps(self) -> None:
        """Hosts, slots, series and markers stop at their caps; what was not drawn is counted and shown."""
        timelines = Timelines()
        for i in range(MAX_TIMELINE_HOSTS * 3):
            timelines.feed(sample(host=f"h{i}", children=[{"slot": s, "pid": 100000 + i * 1000 + s, "mem_mib": 1.0}
                                                          for s in range(MAX_SLOTS * 2)]))
        for i in range(MAX_MARKERS * 2):
            timelines.feed({"event": "memguard.task_killed", "ts": TS.format(i % 60), "hostname": "h0", "pid": i,
                            "reason": "hard_limit", "mem_mib": 5.0})
        assert len(timelines.hosts) <= MAX_TIMELINE_HOSTS
        assert timelines.series <= MAX_SERIES
        assert all(len(h.slots) <= MAX_SLOTS for h in timelines.hosts.values())
        assert MAX_MARKERS == sum(len(h.markers) for h in timelines.hosts.values())
        assert {"hosts", "slots", "series", "markers"} <= set(timelines.not_drawn)
        assert MAX_MARKERS == timelines.not_drawn["markers"]
        page = render_html(build_report([]), timelines)
        assert "not drawn" in page and len(page.encode()) < 20_000_000

    def test_memory_stays_under_the_caps(self) -> None:
        """New hosts, slots, pids and markers on every line: peak traced memory stays under what the caps
        allow (series x 2 x MAX_POINTS x 24 bytes, markers, remembered pids), whatever the log's length."""
        def peak(count: int) -> int:
            tracemalloc.start()
            try:
                timelines = Timelines()
                for i in range(count):
                    timelines.feed(sample(host=f"h{i % 40}", second=i, children=[
                        {"slot": (i + j) % 100, "pid": i * 100 + j, "mem_mib": float(i % 300), "rss_mib": 1.0}
                        for j in range(8)]))
                    timelines.feed({"event": "memguard.child_lost", "ts": TS.format(i % 60), "hostname": f"h{i % 40}",
                                    "pid": i, "signal": "SIGKILL" * 100, "task": "t" * 500, "last_mem_mib": 3.0})
                return tracemalloc.get_traced_memory()[1]
            finally:
                tracemalloc.stop()

        ceiling = MAX_SERIES * 2 * MAX_POINTS * 3 * 8 + MAX_MARKERS * 1500 + MAX_PIDS * 200 + 2_000_000
        assert peak(12_000) < ceiling

    def test_a_series_never_holds_more_than_twice_max_points(self) -> None:
        series = Series("s")
        for i in range(20_000):
            series.add(i * 0.37, float(i % 13))
            assert len(series) < 2 * MAX_POINTS


class TestCommand:
    def test_html_to_a_file(self, tmp_path: Path) -> None:
        out = tmp_path / "report.html"
        assert 0 == main(["report", "--format", "html", "-o", str(out), str(RECORDED)])
        assert out.read_text().startswith("<!DOCTYPE html>")

    def test_html_to_stdout_and_unwritable_output(self, tmp_path: Path) -> None:
        out, err = io.StringIO(), io.StringIO()
        assert 0 == run_report([str(RECORDED)], "html", out=out, err=err)
        assert "<svg" in out.getvalue()
        err = io.StringIO()
        assert 2 == run_report([str(RECORDED)], "html", out=io.StringIO(), err=err,
                               output=str(tmp_path / "missing" / "r.html"))
        assert "cannot write" in err.getvalue()

    def test_text_report_ignores_samples(self) -> None:
        out = io.StringIO()
        assert 0 == run_report([str(RECORDED)], "text", out=out, err=io.StringIO())
        assert "memguard.sample" not in out.getvalue()


def test_fuzz_mutated_samples_and_markers(tmp_path: Path) -> None:
    """Seeded fuzz: lines mutated from the recorded run's events (samples and markers included: wrong types,
    NaN, huge numbers, broken syntax, cut lines) and random bytes give a page, never a traceback, with
    nothing from the log unescaped."""
    from .test_report_hostile import _mutant

    events = [json.loads(raw) for raw in RECORDED.read_text().splitlines()]
    for seed in range(3):
        rng = random.Random(seed)
        path = tmp_path / f"fuzz{seed}.log"
        with open(path, "wb") as f:
            for _ in range(1000):
                f.write(_mutant(rng, events).encode("utf-8", "surrogatepass") + b"\n")
            f.write(bytes(rng.randrange(256) for _ in range(4000)) + b"\n")
        out, err = io.StringIO(), io.StringIO()
        assert 0 == run_report([str(path)], "html", out=out, err=err)
        page = out.getvalue()
        assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
        assert "<script" not in page.lower()
        assert_self_contained(page)
