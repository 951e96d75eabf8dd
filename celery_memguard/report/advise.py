"""``celery memguard advise``: read event logs, collect each worker's evidence, print the advisor's settings.

:func:`build_advice` reads the files with the report's hostile-input-safe reader
(:mod:`.reader`), collects the evidence (:mod:`.evidence`) and asks the pure advisor
(:func:`celery_memguard.advice.advise`) per worker; :func:`render_advice_text` and
:func:`render_advice_json` print the result. ``--format json`` is
``{"schema": 1, "sources": [...], "hosts": [{"hostname", "evidence", "recommendations"}], ...}``;
its field names are public (``schema`` is bumped on incompatible changes); it is strict JSON (a number
that is not finite is written as null).
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from typing import Any, Iterable

from ..advice import Evidence, Recommendation, advise
from .evidence import EvidenceCollector
from .model import SourceStats
from .reader import order_sources, read_events
from .render import _wrap

__all__ = ["AdviceReport", "HostAdvice", "build_advice", "render_advice_text", "render_advice_json", "ADVICE_SCHEMA"]

ADVICE_SCHEMA = 1


@dataclass
class HostAdvice:
    hostname: str
    evidence: Evidence
    recommendations: list[Recommendation]


@dataclass
class AdviceReport:
    sources: list[SourceStats] = field(default_factory=list)
    hosts: list[HostAdvice] = field(default_factory=list)
    lines: int = 0
    events: int = 0
    foreign: int = 0
    corrupt: int = 0
    invalid: dict[str, int] = field(default_factory=dict)
    not_itemised: dict[str, int] = field(default_factory=dict)

    @property
    def readable_sources(self) -> int:
        return sum(1 for s in self.sources if s.readable)


def build_advice(paths: Iterable[str], max_throughput_loss: float | None = None) -> AdviceReport:
    """Read every path (``-`` is standard input) and advise each worker found in it."""
    sources: list[SourceStats] = []
    collector = EvidenceCollector()
    for _source, event in read_events(order_sources(paths), sources):
        collector.feed(event)
    hosts = [HostAdvice(e.hostname, e, advise(e, max_throughput_loss)) for e in collector.build()]
    return AdviceReport(sources=sources, hosts=hosts, lines=sum(s.lines for s in sources),
                        events=collector.events, foreign=sum(s.foreign for s in sources),
                        corrupt=sum(s.corrupt for s in sources) + sum(collector.invalid.values()),
                        invalid=dict(collector.invalid), not_itemised=dict(collector.not_itemised))


def _evidence_dict(e: Evidence) -> dict[str, Any]:
    data = dataclasses.asdict(e)
    for key in ("child_mib", "fresh_mib", "spawn_times_s", "replace_gaps_s"):  # raw readings: counted, not dumped
        values = data.pop(key)
        data[key.replace("_mib", "").replace("_s", "") + "_readings"] = len(values)
    data["calls"] = e.calls
    data["recycle_cost_s"] = e.recycle_cost_s
    return data


def render_advice_json(report: AdviceReport) -> str:
    data = {
        "schema": ADVICE_SCHEMA,
        "sources": [dataclasses.asdict(s) for s in report.sources],
        "hosts": [{"hostname": h.hostname, "evidence": _evidence_dict(h.evidence),
                   "recommendations": [dataclasses.asdict(r) for r in h.recommendations]} for h in report.hosts],
        "lines": report.lines, "events": report.events, "foreign": report.foreign, "corrupt": report.corrupt,
        "invalid": report.invalid, "not_itemised": report.not_itemised,
    }
    return json.dumps(_finite(data), indent=2, default=str) + "\n"


def _finite(value: Any) -> Any:
    """``value`` with every NaN or infinity replaced by None: strict JSON whatever a sum came to."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def _recommendation(r: Recommendation, said: set[str]) -> list[str]:
    if r.value is None and r.missing:
        out = [f"  {r.key}: NOT ENOUGH EVIDENCE" + (" (as above)" if r.missing in said else "")]
        if r.missing in said:
            return out
        said.add(r.missing)
        out.extend(_wrap(r.missing, "      "))
    else:
        head = f"  {r.key} = {r.value!r}" if not isinstance(r.value, str) else f"  {r.key} = {r.value}"
        out = [head + (f"   [{r.confidence} confidence]" if r.confidence else "")]
        if r.config:
            out.append(f"      config: {r.config}")
        if r.cli:
            out.append(f"      option: {r.cli}")
    for item in r.evidence:
        out.extend(_wrap(item, "      ", "- "))
    if r.note:
        out.extend(_wrap(r.note, "      ", "=> "))
    return out


def render_advice_text(report: AdviceReport) -> str:
    out = [f"MemGuard advice: {report.events:,} events in {report.lines:,} lines of {len(report.sources)} "
           f"file{'s' if len(report.sources) != 1 else ''}"
           + (f" ({report.foreign:,} foreign, {report.corrupt:,} corrupt lines skipped)"
              if report.foreign or report.corrupt else "")]
    if not report.hosts:
        out.append("")
        out.append("No MemGuard events found: nothing to advise on. Install MemGuard "
                   "(app.steps['worker'].add(MemGuard)) "
                   "with memguard_log_format = \"json\", run the worker under load, and advise on its log.")
    for host in report.hosts:
        e = host.evidence
        out.append("")
        out.append(f"{host.hostname}  ({e.samples} samples, {e.calls:,} task calls, {e.lost} children lost, "
                   f"{e.recycles} recycles, {e.kills} kills)")
        said: set[str] = set()
        for r in host.recommendations:
            out.extend(_recommendation(r, said))
    if report.not_itemised:
        out.append("")
        out.append("Not itemised (tables full): " + ", ".join(f"{k} {v:,}" for k, v in report.not_itemised.items()))
    return "\n".join(out) + "\n"
