"""Renderers for a :class:`~.model.Report`: plain text for people, JSON for machines.

Both read only the model; the text layout is fixed-width and colourless so it
survives e-mail, tickets and ``less``.
"""

from __future__ import annotations

import dataclasses
import json
import textwrap
from typing import Any

from .aggregate import MAX_ENTRIES, MAX_HOSTS, MAX_KEYS, OTHER, OTHER_HOSTS
from ..units import format_number as _n
from .model import HostReport, Report

__all__ = ["render_text", "render_json", "to_dict", "table", "duration"]

_WIDTH = 100


def to_dict(report: Report) -> dict[str, Any]:
    """The report as plain JSON-compatible data (the ``--format json`` document)."""
    data = dataclasses.asdict(report)
    data["readable_sources"] = report.readable_sources
    schema = data.pop("schema")
    return {"schema": schema, **data}


def render_json(report: Report) -> str:
    return json.dumps(to_dict(report), indent=2, sort_keys=False) + "\n"


def _plural(count: int, word: str) -> str:
    return f"{count:,} {word}{'' if count == 1 else 's'}"


def _wrap(text: str, indent: str, bullet: str = "") -> list[str]:
    return textwrap.wrap(text, width=_WIDTH, initial_indent=indent + bullet,
                         subsequent_indent=indent + " " * len(bullet)) or [indent + bullet]


def table(rows: list[list[str]], header: list[str], indent: str, right: set[int]) -> list[str]:
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]

    def line(row: list[str]) -> str:
        cells = [c.rjust(widths[i]) if i in right else c.ljust(widths[i]) for i, c in enumerate(row)]
        return (indent + "  ".join(cells)).rstrip()

    return [line(header), *(line(r) for r in rows)]


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} h"
    if seconds >= 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds:.0f} s"


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{reason} {count:,}" for reason, count in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def _host(host: HostReport) -> list[str]:
    """One host's section: its settings, then one block per table (suspects, heavy tasks, interventions, ...)."""
    return [*_host_header(host), "", *_suspects(host), *_heavy(host), *_interventions(host), *_lost(host),
            *_episodes(host), *_master(host), *_errors_and_other(host)]


def _host_header(host: HostReport) -> list[str]:
    """The host's name, event count and span, and the settings its last start logged."""
    span = f"{host.first_seen or '?'} .. {host.last_seen or '?'}"
    out = [f"{host.hostname}  ({_plural(host.events, 'event')}, {span})"]
    if host.config or host.starts:
        c = host.config
        parts = [_plural(host.starts, "start")]
        if "pool" in c:
            parts.append(f"pool {c.get('pool')} x{c.get('concurrency', '?')}")
        if "metric" in c:
            parts.append(f"metric {c.get('metric')}")
        if c.get("soft_limit_mib") is not None:
            parts.append(f"soft limit {c.get('soft_limit_mib')} MiB")
        if c.get("hard_limit_mib") is not None:
            parts.append(f"hard limit {c.get('hard_limit_mib')} MiB")
        if c.get("dry_run"):
            parts.append("DRY RUN")
        out.append("  " + ", ".join(parts))
    return out


def _suspects(host: HostReport) -> list[str]:
    """The leak suspects' table, each row followed by its top allocation sites and growing types."""
    suspects = host.suspects
    if not suspects:
        return ["  Leak suspects: none"]
    rows = []
    for rank, s in enumerate(suspects, 1):
        state = f"cleared ({s.cleared_reason})" if s.cleared else ""
        rows.append([str(rank), s.task, _n(s.kib_per_call), _n(s.confidence, 2), _n(s.calls_observed),
                     _n(s.children), _n(s.projected_calls_to_soft_limit), state])
    lines = table(rows, ["#", "task", "KiB/call", "confidence", "calls", "children", "calls to soft limit", ""],
                  "    ", right={0, 2, 3, 4, 5, 6})
    out = ["  Leak suspects (ranked by KiB/call x confidence)", lines[0]]
    for s, row in zip(suspects, lines[1:]):
        out.append(row)
        for i, site in enumerate(s.sites[:5]):
            label = "sites:" if i == 0 else ""
            where = f"{site.file}:{site.line if site.line is not None else '?'}"
            count = f" in {_plural(site.count, 'block')}" if site.count is not None else ""
            out.append(f"         {label:6s} {where}  +{_n(site.size_kib)} KiB{count}")
        for i, kind in enumerate(s.types[:5]):
            label = "types:" if i == 0 else ""
            count = f" ({_plural(kind.count, 'object')})" if kind.count is not None else ""
            out.append(f"         {label:6s} {kind.type}  +{_n(kind.size_kib)} KiB{count}")
    return out


def _heavy(host: HostReport) -> list[str]:
    if not host.heavy:
        return ["  Heavy tasks: none"]
    rows = [[h.task, _n(h.occurrences), _n(h.max_peak_mib), _n(h.max_retained_mib),
             str(h.last_pid) if h.last_pid is not None else "?", h.last_task_id or "?"] for h in host.heavy]
    return ["  Heavy tasks", *table(rows, ["task", "heavy calls", "peak MiB", "retained MiB", "pid", "last task_id"],
                                    "    ", right={1, 2, 3, 4})]


def _interventions(host: HostReport) -> list[str]:
    """Recycles and kills by reason (and, in a dry run, what would have been done)."""
    acts = host.interventions
    kills = _counts(acts.killed) or "none"
    if acts.killed_tasks:
        kills += f"  (tasks: {_counts(acts.killed_tasks)})"
    out = [f"  Recycles by reason: {_counts(acts.recycled) or 'none'}", f"  Kills by reason:    {kills}"]
    if acts.would_recycle or acts.would_kill:
        out.append(f"  Dry run, would recycle: {_counts(acts.would_recycle) or 'none'}; "
                   f"would kill: {_counts(acts.would_kill) or 'none'}")
    return out


def _lost(host: HostReport) -> list[str]:
    """Children killed outside MemGuard: how many, by which signal, what they ran, the latest reason."""
    lost = host.lost
    if not lost.count:
        return ["  Children lost outside MemGuard: none"]
    line = (f"  Children lost outside MemGuard: {lost.count:,} ({lost.likely_oom:,} likely OOM; "
            f"{_counts(lost.by_signal)})")
    if lost.max_last_mem_mib is not None:
        line += f", last memory up to {_n(lost.max_last_mem_mib)} MiB"
    out = [line]
    if lost.tasks:
        out.append(f"    running: {_counts(lost.tasks)}")
    if lost.last_reason:
        out.extend(_wrap(f"latest: {lost.last_reason}", "    "))
    return out


def _episodes(host: HostReport) -> list[str]:
    """Recycle storms and pressure no child could relieve, with their latest cause (nothing if none)."""
    out: list[str] = []
    for label, episodes in (("Recycle storms", host.recycle_storms),
                            ("Pressure no child could relieve", host.pressure_unrelieved)):
        if episodes.count:
            out.append(f"  {label}: {_plural(episodes.count, 'episode')}")
            if episodes.cause:
                out.extend(_wrap(episodes.cause, "    "))
    return out


def _master(host: HostReport) -> list[str]:
    m = host.master
    if m is None:
        return ["  Master growth: none"]
    out = [f"  Master growth: +{_n(m.growth_mib)} MiB over {duration(m.since_s)} "
           f"({_n(m.mib_per_hour)} MiB/h), now {_n(m.mem_mib)} MiB"
           + (f", {m.reserved:,} messages reserved" if m.reserved is not None else "")]
    if m.note:
        out.extend(_wrap(m.note, "    "))
    return out


def _errors_and_other(host: HostReport) -> list[str]:
    """MemGuard's own errors, pools it only partly supports, and events the report does not itemise."""
    out: list[str] = []
    if host.errors:
        out.append(f"  Errors: {sum(e.count for e in host.errors):,}")
        for e in host.errors:
            out.extend(_wrap(f"{e.where}: {e.error} (x{e.count:,})", "    ", "- "))
    else:
        out.append("  Errors: none")
    if host.unsupported_pools:
        out.append(f"  Unsupported pools: {', '.join(host.unsupported_pools)}")
    if host.other_events:
        out.append(f"  Other events: {_counts(host.other_events)}")
    return out


def render_text(report: Report) -> str:
    out: list[str] = ["MemGuard report", "==============="]
    readable = [s for s in report.sources if s.readable]
    out.append(
        f"Read {_plural(len(readable), 'file')}, {_plural(report.lines, 'line')}: "
        f"{_plural(report.events, 'MemGuard event')}, {_plural(report.foreign, 'foreign line')} and "
        f"{_plural(report.corrupt, 'corrupt line')} skipped"
        + (f", {_plural(report.console, 'console-format event')} not readable" if report.console else "")
        + "."
    )
    if report.invalid:
        out.extend(_wrap(f"Skipped {_plural(sum(report.invalid.values()), 'MemGuard event')} with unusable values "
                         f"(counted corrupt above), by field: {_counts(report.invalid)}.", ""))
    if report.not_itemised:
        out.extend(_wrap(
            f"Too many distinct keys to list them all (at most {MAX_HOSTS:,} hosts, {MAX_KEYS:,} keys per table, "
            f"{MAX_ENTRIES:,} in all); not itemised: {_counts(report.not_itemised)}. They are counted under "
            f'"{OTHER}" / "{OTHER_HOSTS}" where a table counts.', ""))
    for source in report.sources:
        if source.error:
            state = "unreadable" if not source.readable else "partly read"
            out.extend(_wrap(f"{source.path}: {state}: {source.error}", "  ", "! "))
    out.append("")
    v = report.verdict
    out.append(f"Verdict: {v.headline}")
    for finding in v.findings:
        out.extend(_wrap(finding, "  ", "- "))
    if v.advice:
        out.append("Advice:")
        for item in v.advice:
            out.extend(_wrap(item, "  ", "- "))
    for host in report.hosts:
        out.append("")
        out.append("-" * min(_WIDTH, max(20, len(host.hostname) + 4)))
        out.extend(_host(host))
    return "\n".join(out).rstrip() + "\n"
