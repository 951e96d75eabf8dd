"""The HTML report: one self-contained file (inline CSS and SVG, no script, nothing fetched).

:func:`render_html` takes the :class:`~.model.Report` and the
:class:`~.timeline.Timelines` of the same events and writes, per worker:

* a memory timeline of the pool children, one line per pool slot (the child's
  memory in the configured metric), the soft and hard limits as dashed lines,
  and markers for recycles, stopped tasks, children lost and leak suspicions;
* a timeline of the master, the pool total and the available memory, with
  master-growth markers;
* the leak suspects with their allocation sites and growing types, heavy tasks,
  interventions by reason, children lost and internal errors;

and the verdict with its findings and advice at the top. Every marker and line
has an SVG ``<title>``: the browser shows the event (or the series) when the
pointer rests on it. Every string from the log is HTML-escaped. Series are
already bounded (:data:`~.timeline.MAX_POINTS` points each), so the file's size
does not grow with the log: a day of 8 children's samples is ~100 KB.
"""

from __future__ import annotations

import datetime as _dt
import html
import math
from typing import Iterable, Sequence

from .aggregate import MAX_ENTRIES, MAX_HOSTS, MAX_KEYS
from ..units import format_number as _n
from .model import HostReport, Report
from .timeline import MAX_MARKERS, MAX_POINTS, MAX_SERIES, MAX_SLOTS, HostTimeline, Marker, Timelines

__all__ = ["render_html"]

WIDTH, HEIGHT = 960, 300
_PAD_L, _PAD_R, _PAD_T, _PAD_B = 64, 16, 18, 30
_PALETTE = ("#1f77b4", "#2ca02c", "#9467bd", "#17becf", "#bcbd22", "#8c564b", "#e377c2", "#7f7f7f",
            "#aec7e8", "#98df8a", "#c5b0d5", "#9edae5")
_MARKER_STYLE = {  # kind -> (colour, legend text)
    "recycle": ("#ff7f0e", "recycle"),
    "kill": ("#d62728", "task stopped"),
    "lost": ("#111111", "child lost (not MemGuard)"),
    "leak": ("#6a1b9a", "leak suspected"),
    "growth": ("#a0522d", "master growth"),
}
_STATUS_COLOUR = {"leak": "#d62728", "attention": "#ff7f0e", "ok": "#2ca02c", "no-data": "#7f7f7f"}
_TIME_STEPS = (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400,
               172800, 604800)

_CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:24px auto;max-width:1000px;color:#222;padding:0 12px}
h1{font-size:22px;margin:0 0 4px}h2{font-size:18px;margin:28px 0 6px;border-bottom:1px solid #ddd;padding-bottom:4px}
h3{font-size:15px;margin:18px 0 6px}.muted{color:#666}.verdict{border-left:6px solid;padding:8px 14px;background:#fafafa;margin:14px 0}
.verdict .head{font-weight:600;font-size:16px}table{border-collapse:collapse;margin:6px 0 10px;font-size:13px}
th,td{border-bottom:1px solid #e5e5e5;padding:3px 10px 3px 0;text-align:left;vertical-align:top}td.n{text-align:right}
svg.chart{display:block;background:#fff;border:1px solid #e5e5e5;max-width:100%;height:auto}
svg.chart text{font:11px system-ui,sans-serif;fill:#555}.legend{font-size:12px;margin:4px 0 12px}
.legend span{display:inline-block;margin-right:12px;white-space:nowrap}.sw{display:inline-block;width:14px;height:3px;vertical-align:middle;margin-right:4px}
.grid{display:flex;flex-wrap:wrap;gap:8px}.grid svg{flex:0 0 auto}
code{font-size:12px;background:#f4f4f4;padding:0 3px}.note{font-size:12px;color:#666}
"""


def _e(value: object) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _nice_step(span: float, ticks: int = 5) -> float:
    raw = span / max(ticks, 1)
    if raw <= 0:
        return 1.0
    power = 10 ** math.floor(math.log10(raw))
    for factor in (1, 2, 2.5, 5, 10):
        if raw <= factor * power:
            return factor * power
    return 10 * power


def _time_step(span: float) -> float:
    for step in _TIME_STEPS:
        if span / step <= 8:
            return float(step)
    return float(_TIME_STEPS[-1]) * math.ceil(span / (8 * _TIME_STEPS[-1]))


def _time_label(t: float, step: float, span: float) -> str:
    moment = _dt.datetime.fromtimestamp(t, _dt.timezone.utc)
    if span > 86400:
        return moment.strftime("%m-%d %H:%M")
    return moment.strftime("%H:%M:%S" if step < 60 else "%H:%M")


class _Frame:
    """Maps (time, MiB) to the coordinates of a chart ``width`` x ``height`` pixels."""

    def __init__(self, t0: float, t1: float, top: float, width: int = WIDTH, height: int = HEIGHT) -> None:
        self.t0, self.t1 = t0, (t1 if t1 > t0 else t0 + 1.0)
        self.top = top if top > 0 else 1.0
        self.width, self.height = width, height
        self.w = width - _PAD_L - _PAD_R
        self.h = height - _PAD_T - _PAD_B

    def x(self, t: float) -> float:
        return _PAD_L + (t - self.t0) / (self.t1 - self.t0) * self.w

    def y(self, mib: float) -> float:
        return _PAD_T + self.h - min(mib, self.top) / self.top * self.h


def _axes(frame: _Frame, unit: str = "MiB") -> list[str]:
    out = [f'<rect x="{_PAD_L}" y="{_PAD_T}" width="{frame.w}" height="{frame.h}" fill="#fcfcfc" stroke="#ccc"/>']
    step = _nice_step(frame.top, 5 if frame.h > 150 else 3)
    value = 0.0
    while value <= frame.top + 1e-9:
        y = frame.y(value)
        out.append(f'<line x1="{_PAD_L}" x2="{_PAD_L + frame.w}" y1="{y:.1f}" y2="{y:.1f}" stroke="#eee"/>'
                   f'<text x="{_PAD_L - 6}" y="{y + 4:.1f}" text-anchor="end">{_n(value, 0 if step >= 1 else 1)}</text>')
        value += step
    out.append(f'<text x="12" y="{_PAD_T + frame.h / 2:.0f}" transform="rotate(-90 12 {_PAD_T + frame.h / 2:.0f})" '
               f'text-anchor="middle">{_e(unit)}</text>')
    span = frame.t1 - frame.t0
    tstep = _time_step(span) if frame.w > 600 else _time_step(span * 2)
    tick = math.ceil(frame.t0 / tstep) * tstep
    while tick <= frame.t1:
        x = frame.x(tick)
        out.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{_PAD_T}" y2="{_PAD_T + frame.h}" stroke="#f0f0f0"/>'
                   f'<text x="{x:.1f}" y="{frame.height - 10}" text-anchor="middle">{_time_label(tick, tstep, span)}</text>')
        tick += tstep
    return out


def _polyline(frame: _Frame, points: Sequence[tuple[float, float, float]], colour: str, title: str,
              width: float = 1.6, dash: str | None = None) -> str:
    """One series as polylines, broken where readings are missing (a gap of 5x the usual spacing)."""
    if not points:
        return ""
    gaps = sorted(b[0] - a[0] for a, b in zip(points, points[1:]))
    usual = gaps[len(gaps) // 2] if gaps else 0.0
    limit = max(usual * 5, (frame.t1 - frame.t0) / MAX_POINTS * 3)
    runs: list[list[str]] = [[]]
    previous: float | None = None
    for t, v, _w in points:
        if previous is not None and t - previous > limit:
            runs.append([])
        runs[-1].append(f"{frame.x(t):.1f},{frame.y(v):.1f}")
        previous = t
    style = f'fill="none" stroke="{colour}" stroke-width="{width}" stroke-linejoin="round"' + (
        f' stroke-dasharray="{dash}"' if dash else "")
    parts = []
    for run in runs:
        if len(run) == 1:
            x, y = run[0].split(",")
            parts.append(f'<circle cx="{x}" cy="{y}" r="1.8" fill="{colour}"/>')
        else:
            parts.append(f'<polyline points="{" ".join(run)}" {style}/>')
    return f'<g class="series"><title>{_e(title)}</title>{"".join(parts)}</g>'


def _hline(frame: _Frame, mib: float, colour: str, label: str) -> str:
    y = frame.y(mib)
    return (f'<g class="limit"><title>{_e(label)}: {_n(mib)} MiB</title>'
            f'<line x1="{_PAD_L}" x2="{_PAD_L + frame.w}" y1="{y:.1f}" y2="{y:.1f}" stroke="{colour}" '
            f'stroke-width="1.4" stroke-dasharray="6 4"/>'
            f'<text x="{_PAD_L + frame.w - 4}" y="{y - 4:.1f}" text-anchor="end" style="fill:{colour}">'
            f'{_e(label)} {_n(mib, 0)} MiB</text></g>')


def _marker(frame: _Frame, marker: Marker) -> str:
    colour = _MARKER_STYLE.get(marker.kind, ("#000", ""))[0]
    x = frame.x(marker.t)
    y = frame.y(marker.mib) if marker.mib is not None else _PAD_T + 6
    if marker.kind == "recycle":
        shape = f'<path d="M{x:.1f},{y - 6:.1f}L{x + 6:.1f},{y + 5:.1f}L{x - 6:.1f},{y + 5:.1f}Z" fill="{colour}"/>'
    elif marker.kind == "kill":
        shape = (f'<path d="M{x - 5:.1f},{y - 5:.1f}L{x + 5:.1f},{y + 5:.1f}M{x + 5:.1f},{y - 5:.1f}L{x - 5:.1f},'
                 f'{y + 5:.1f}" stroke="{colour}" stroke-width="3"/>')
    elif marker.kind == "lost":
        shape = f'<circle cx="{x:.1f}" cy="{y:.1f}" r="5" fill="{colour}"/>'
    elif marker.kind == "leak":
        shape = (f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{_PAD_T}" y2="{_PAD_T + frame.h}" stroke="{colour}" '
                 f'stroke-opacity="0.35" stroke-dasharray="2 3"/>'
                 f'<path d="M{x:.1f},{y - 6:.1f}L{x + 6:.1f},{y:.1f}L{x:.1f},{y + 6:.1f}L{x - 6:.1f},{y:.1f}Z" '
                 f'fill="{colour}"/>')
    else:
        shape = f'<rect x="{x - 5:.1f}" y="{y - 5:.1f}" width="10" height="10" fill="{colour}"/>'
    # A wider transparent target makes the hover text easy to reach.
    return (f'<g class="marker {_e(marker.kind)}"><title>{_e(marker.label)}</title>{shape}'
            f'<circle cx="{x:.1f}" cy="{y:.1f}" r="8" fill="transparent"/></g>')


#: A line: (points, colour, hover title, dash pattern or None).
_Line = tuple[Sequence[tuple[float, float, float]], str, str, "str | None"]


def _chart(title: str, span: tuple[float, float], lines: list[_Line], limits: list[tuple[float, str, str]],
           markers: Iterable[Marker], width: int = WIDTH, height: int = HEIGHT, caption: str | None = None,
           css: str = "chart") -> str:
    markers = list(markers)
    peak = max([v for pts, *_ in lines for _t, v, _w in pts] + [m for m, *_ in limits]
               + [m.mib for m in markers if m.mib is not None] + [1.0])
    frame = _Frame(span[0], span[1], peak * 1.08, width, height)
    body = _axes(frame)
    body += [_hline(frame, mib, colour, label) for mib, colour, label in limits]
    body += [_polyline(frame, pts, colour, label, dash=dash) for pts, colour, label, dash in lines]
    body += [_marker(frame, m) for m in sorted(markers, key=lambda m: _KIND_ORDER.get(m.kind, 0))]
    if caption:
        body.append(f'<text x="{_PAD_L + 6}" y="{_PAD_T + 13}" style="font-weight:600;fill:#222">{_e(caption)}</text>')
    return (f'<svg class="{_e(css)}" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" '
            f'width="{width}" height="{height}" role="img" aria-label="{_e(title)}"><title>{_e(title)}</title>'
            + "".join(body) + "</svg>")


_KIND_ORDER = {kind: i for i, kind in enumerate(("leak", "growth", "recycle", "lost", "kill"))}


def _legend(items: list[tuple[str, str]], markers: Iterable[str] = ()) -> str:
    out = [f'<span><i class="sw" style="background:{c}"></i>{_e(label)}</span>' for label, c in items]
    for kind in markers:
        colour, text = _MARKER_STYLE[kind]
        out.append(f'<span><i class="sw" style="background:{colour};height:8px;width:8px"></i>{_e(text)}</span>')
    return f'<div class="legend">{"".join(out)}</div>'


def _rss(points: Sequence[tuple[float, float, float]]) -> list[tuple[float, float, float]]:
    return [(t, w, 0.0) for t, _v, w in points if w > 0]


def _timelines(host: HostTimeline) -> list[str]:
    span = host.span()
    if span is None:
        return []
    metric = (host.metric or "memory").upper()
    limits = []
    if host.soft_limit_mib is not None:
        limits.append((host.soft_limit_mib, "#ff7f0e", "soft limit"))
    if host.hard_limit_mib is not None:
        limits.append((host.hard_limit_mib, "#d62728", "hard limit"))
    slots = sorted(host.slots.items())
    colours = {slot: _PALETTE[i % len(_PALETTE)] for i, (slot, _s) in enumerate(slots)}
    pool_markers = [m for m in host.markers if m.chart == "pool"]
    out: list[str] = []
    if slots or pool_markers:
        out.append(f"<h3>Pool children: {_e(metric)} of each pool slot's child</h3>")
        lines: list[_Line] = [(series.points(), colours[slot], f"slot {slot} ({metric})", None) for slot, series in slots]
        out.append(_chart(f"{host.hostname}: pool children's {metric}", span, lines, limits, pool_markers))
        kinds = sorted({m.kind for m in pool_markers}, key=lambda k: _KIND_ORDER.get(k, 0))
        out.append(_legend([(f"slot {slot}", colours[slot]) for slot, _s in slots], kinds))
        if not slots:
            out.append('<p class="note">No <code>memguard.sample</code> events for this worker: only the markers '
                       'are drawn (set <code>memguard_sample_interval</code> to log samples).</p>')
    if slots:
        out.append(f'<h3>Each pool slot ({_e(metric)} solid, RSS dotted; a slot\'s child is replaced on '
                   f'recycle)</h3><div class="grid">')
        for slot, series in slots:
            points = series.points()
            own = [m for m in pool_markers if host.slot_of(m) == slot or (m.kind == "leak")]
            out.append(_chart(f"{host.hostname}: slot {slot}", span,
                              [(_rss(points), "#999999", f"slot {slot} RSS", "2 2"),
                               (points, colours[slot], f"slot {slot} ({metric})", None)],
                              limits, own, width=470, height=150, caption=f"slot {slot}", css="chart mini"))
        out.append("</div>")
    if host.master is not None and len(host.master) or any(m.chart == "master" for m in host.markers):
        points = host.master.points() if host.master is not None else []
        out.append(f"<h3>Master ({_e(metric)} solid, RSS dotted)</h3>")
        out.append(_chart(f"{host.hostname}: master", span,
                          [(_rss(points), "#999999", "master RSS", "2 2"), (points, "#000000", f"master ({metric})", None)],
                          [], [m for m in host.markers if m.chart == "master"], height=200))
        out.append(_legend([(f"master ({metric})", "#000000"), ("master RSS", "#999999")],
                           ["growth"] if any(m.chart == "master" for m in host.markers) else []))
    totals: list[_Line] = [(s.points(), colour, label, dash) for s, colour, label, dash in (
        (host.pool, "#1f77b4", f"pool total ({metric})", None),
        (host.available, "#2ca02c", "available memory", "4 3"),
    ) if s is not None and len(s)]
    if totals:
        out.append("<h3>Pool total and available memory</h3>")
        budget = [(value, colour, label) for value, colour, label in (
            (host.pool_limit_mib, "#d62728", "pool limit"), (host.min_available_mib, "#2ca02c", "min available"))
            if value is not None]
        out.append(_chart(f"{host.hostname}: pool total and available memory", span, totals, budget, [], height=200))
        out.append(_legend([(label, colour) for _p, colour, label, _d in totals]))
    merged = sum(s.merged for s in (*host.slots.values(), host.master, host.pool, host.available) if s is not None)
    out.append(f'<p class="note">{_n(host.samples)} samples; {_n(len(host.markers))} markers'
               + (f"; lines downsampled to at most {MAX_POINTS} points each, keeping each interval's peak "
                  f"({_n(merged)} readings folded)" if merged else "") + ".</p>")
    return out


def _table(header: list[str], rows: list[list[str]], numeric: set[int] = frozenset()) -> str:  # type: ignore[assignment]
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f'<td{" class=n" if i in numeric else ""}>{cell}</td>'
                                    for i, cell in enumerate(row)) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{_e(k)} {v:,}" for k, v in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))) or "none"


def _host_details(host: HostReport) -> list[str]:
    out: list[str] = []
    suspects = host.active_suspects
    if suspects:
        out.append("<h3>Leak suspects</h3>")
        rows = []
        for s in suspects:
            sites = "<br>".join(f"<code>{_e(site.file)}:{_e(site.line if site.line is not None else '?')}</code> "
                                f"+{_n(site.size_kib)} KiB" + (f" ({site.count:,} blocks)" if site.count else "")
                                for site in s.sites[:5])
            types = ", ".join(f"{_e(t.type)} +{_n(t.size_kib)} KiB" for t in s.types[:5])
            rows.append([f"<code>{_e(s.task)}</code>", _n(s.kib_per_call), _n(s.confidence, 2),
                         _n(s.calls_observed), _n(s.projected_calls_to_soft_limit),
                         sites or '<span class="muted">no sites traced</span>', types])
        out.append(_table(["task", "KiB/call", "confidence", "calls", "calls to soft limit", "growing sites",
                           "growing types"], rows, {1, 2, 3, 4}))
    cleared = [s for s in host.suspects if s.cleared]
    if cleared:
        out.append('<p class="note">Cleared suspects: ' + ", ".join(
            f"<code>{_e(s.task)}</code> ({_e(s.cleared_reason)})" for s in cleared) + "</p>")
    if host.heavy:
        out.append("<h3>Heavy tasks</h3>")
        out.append(_table(["task", "heavy calls", "max peak MiB", "max retained MiB", "last task id", "advice"], [
            [f"<code>{_e(h.task)}</code>", _n(h.occurrences), _n(h.max_peak_mib), _n(h.max_retained_mib),
             _e(h.last_task_id), _e(h.advice)] for h in host.heavy], {1, 2, 3}))
    iv = host.interventions
    rows = [[label, _counts(counts)] for label, counts in (
        ("recycled", iv.recycled), ("tasks stopped", iv.killed), ("would recycle (dry run)", iv.would_recycle),
        ("would stop (dry run)", iv.would_kill), ("stopped tasks", iv.killed_tasks)) if counts]
    if host.lost.count:
        rows.append(["children lost", f"{host.lost.count:,} ({host.lost.likely_oom:,} likely OOM): "
                                      f"{_counts(host.lost.by_signal)}; running {_counts(host.lost.tasks)}"])
    if host.master is not None:
        m = host.master
        rows.append(["master growth", f"+{_n(m.growth_mib)} MiB ({_n(m.mib_per_hour)} MiB/h), now {_n(m.mem_mib)} MiB"
                                      + (f": {_e(m.note)}" if m.note else "")])
    if host.recycle_storms.count:
        rows.append(["recycle storms", f"{host.recycle_storms.count:,}: {_e(host.recycle_storms.cause)}"])
    if host.pressure_unrelieved.count:
        rows.append(["pressure unrelieved", f"{host.pressure_unrelieved.count:,}: {_e(host.pressure_unrelieved.cause)}"])
    if rows:
        out.append("<h3>What MemGuard did and saw</h3>")
        out.append(_table(["", ""], rows))
    if host.errors:
        out.append("<h3>Internal errors (memguard.error)</h3>")
        out.append(_table(["where", "error", "count"], [[_e(e.where), _e(e.error), _n(e.count)] for e in host.errors],
                          {2}))
    return out


def render_html(report: Report, timelines: Timelines | None = None) -> str:
    """The report as one self-contained HTML document."""
    timelines = timelines if timelines is not None else Timelines()
    v = report.verdict
    colour = _STATUS_COLOUR.get(v.status, "#7f7f7f")
    out = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
           '<meta name="viewport" content="width=device-width, initial-scale=1">',
           "<title>celery-memguard report</title>", f"<style>{_CSS}</style></head><body>",
           "<h1>celery-memguard report</h1>",
           f'<p class="muted">{_n(report.events)} MemGuard events from {_n(report.lines)} lines in '
           f"{len(report.sources)} input{'s' if len(report.sources) != 1 else ''}"
           + (f" ({', '.join(_e(s.path) for s in report.sources[:10])})" if report.sources else "") + "</p>",
           f'<div class="verdict" style="border-color:{colour}"><div class="head">{_e(v.headline)}</div>']
    if v.findings:
        out.append("<ul>" + "".join(f"<li>{_e(f)}</li>" for f in v.findings) + "</ul>")
    if v.advice:
        out.append("<p><b>Advice</b></p><ul>" + "".join(f"<li>{_e(a)}</li>" for a in v.advice) + "</ul>")
    out.append("</div>")
    drawn = set()
    for host in report.hosts:
        out.append(f"<h2>{_e(host.hostname)}</h2>")
        cfg = host.config
        facts = [f"{label} {_e(cfg[k])}{unit}" for k, label, unit in (
            ("pool", "pool", ""), ("concurrency", "concurrency", ""), ("metric", "metric", ""),
            ("soft_limit_mib", "soft limit", " MiB"), ("hard_limit_mib", "hard limit", " MiB"),
            ("poll_interval", "poll every", " s")) if cfg.get(k) is not None]
        if cfg.get("dry_run"):
            facts.append("DRY RUN")
        out.append(f'<p class="muted">{", ".join(facts) or "no memguard.started seen"}; events {_e(host.first_seen)} '
                   f"to {_e(host.last_seen)}</p>")
        line = timelines.hosts.get(host.hostname)
        if line is not None:
            drawn.add(host.hostname)
            out += _timelines(line)
        out += _host_details(host)
    for name, line in timelines.hosts.items():
        if name not in drawn:  # a host the aggregator folded under "(other hosts)"
            out.append(f"<h2>{_e(name)}</h2>")
            out += _timelines(line)
    notes = []
    if report.corrupt or report.foreign or report.console:
        notes.append(f"{_n(report.foreign)} foreign, {_n(report.corrupt)} corrupt and {_n(report.console)} console-format "
                     "lines skipped")
    if report.not_itemised:
        notes.append(f"not itemised (tables full: at most {MAX_HOSTS} hosts, {MAX_KEYS} keys per table, "
                     f"{MAX_ENTRIES:,} entries): {_counts(report.not_itemised)}")
    if timelines.not_drawn:
        notes.append(f"not drawn (at most {MAX_SERIES} series, {MAX_SLOTS} slots per worker, {MAX_MARKERS:,} "
                     f"markers): {_counts(timelines.not_drawn)}")
    if timelines.invalid:
        notes.append(f"{_n(timelines.invalid)} unusable readings skipped on the timelines")
    if notes:
        out.append("<h2>Input</h2><ul>" + "".join(f"<li>{n}</li>" for n in notes) + "</ul>")
    out.append('<p class="note">Generated by celery-memguard; hover a marker or a line for details. '
               "Times are UTC.</p></body></html>")
    return "\n".join(out) + "\n"
