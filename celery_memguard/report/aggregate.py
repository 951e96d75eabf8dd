"""Turning a stream of MemGuard events into a :class:`~.model.Report`.

:class:`Aggregator` takes event dicts in any order (several files, several
workers, rotated logs read in any order): per host it keeps each suspect's
*latest* estimate by the event's ``ts`` (ISO 8601 UTC strings compare in time
order), counts recycles and kills by reason, keeps the worst heavy call per
task and the latest master-growth finding, and groups errors by cause. An event
whose fields have the wrong types or values (wrong type, NaN, infinite, a count
beyond 2**53) is counted as corrupt under the field that was wrong, never raised.

Memory is bounded whatever the input (:class:`_Budget`): at most :data:`MAX_HOSTS`
hosts, :data:`MAX_KEYS` distinct keys per table of a host (suspects, heavy tasks,
errors, reasons, tasks, signals, pools, other event names) and :data:`MAX_ENTRIES`
over everything, strings cut to :data:`MAX_KEY` / :data:`MAX_TEXT` characters.
What does not fit is still counted (under ``(other)`` in a count table, under
``(other hosts)`` for a host) and the report says how much was not itemised.
:func:`verdict` then writes the short conclusion and advice.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any, Hashable, Mapping

from .. import events
from .model import (
    ErrorItem,
    HeavyTask,
    Episodes,
    HostReport,
    LostChildren,
    MasterGrowth,
    Report,
    Site,
    SourceStats,
    Suspect,
    TypeGrowth,
    Verdict,
)

__all__ = ["Aggregator", "verdict", "UNKNOWN_HOST", "OTHER", "OTHER_HOSTS", "MAX_HOSTS", "MAX_KEYS",
           "MAX_ENTRIES", "MAX_KEY", "MAX_TEXT"]

UNKNOWN_HOST = "(unknown host)"
#: Where the events of hosts beyond :data:`MAX_HOSTS` are counted.
OTHER_HOSTS = "(other hosts)"
#: The key a count table counts everything under once it holds :data:`MAX_KEYS` keys.
OTHER = "(other)"
#: Hosts itemised in the report.
MAX_HOSTS = 256
#: Distinct keys kept per table of a host (suspects, heavy tasks, errors, reasons, tasks, ...).
MAX_KEYS = 256
#: Distinct keys kept over all tables and hosts together (a diagnostics site or type counts as one).
MAX_ENTRIES = 10_000
#: Characters kept of a string used as a key (task, host, reason, cause, file) and of a message (advice, note).
MAX_KEY = 200
MAX_TEXT = 1000
#: Top entries kept per diagnostics list.
_TOP = 10
#: Counts above this are not counts (and would not survive a float): the value is malformed.
_MAX_COUNT = 2**53
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


class _Invalid(Exception):
    """An event field is missing, of the wrong type, or not a finite number."""


class _Budget:
    """Admits new keys into the report's tables while they fit; counts, per table, what did not."""

    def __init__(self) -> None:
        self.used = 0
        self.dropped: dict[str, int] = {}

    def admit(self, table: Mapping[Any, Any], key: Hashable, name: str, cost: int = 1) -> bool:
        """Whether ``key`` is (or may now be) in ``table``; a refusal is counted under ``name``."""
        if key in table:
            return True
        if len(table) < MAX_KEYS and self.used + cost <= MAX_ENTRIES:
            self.used += cost
            return True
        self.refuse(name)
        return False

    def refuse(self, name: str, count: int = 1) -> None:
        self.dropped[name] = self.dropped.get(name, 0) + count

    def count(self, counts: dict[str, int], key: str, name: str) -> None:
        """Count one occurrence of ``key``, under :data:`OTHER` once the table is full."""
        if key in counts:
            counts[key] += 1
            return
        if not self.admit(counts, key, name):
            key = OTHER
        counts[key] = counts.get(key, 0) + 1


def _episode(episodes: Episodes, event: dict[str, Any], ts: str | None) -> None:
    """Count one once-per-episode event; keep the latest one's cause."""
    cause = _str(event, "cause", limit=MAX_TEXT)
    episodes.count += 1
    if _later(ts, episodes.last_seen):
        episodes.last_seen, episodes.cause = ts, cause or episodes.cause


def _clean(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters, control characters (terminal escapes) replaced."""
    if len(text) > limit:
        text = text[: limit - 1] + "\u2026"
    return text if text.isprintable() else _CONTROL.sub("?", text)


def _str(event: dict[str, Any], key: str, required: bool = False, limit: int = MAX_KEY) -> str | None:
    value = event.get(key)
    if type(value) is str and len(value) <= limit and value.isprintable():
        return value  # the common case, first
    if value is None:
        if required:
            raise _Invalid(key)
        return None
    if isinstance(value, (dict, list)):
        raise _Invalid(key)
    if isinstance(value, float) and not math.isfinite(value):
        raise _Invalid(key)
    return _clean(value if isinstance(value, str) else str(value), limit)


def _num(event: dict[str, Any], key: str, required: bool = False) -> float | None:
    value = event.get(key)
    if value is None:
        if required:
            raise _Invalid(key)
        return None
    if type(value) is float:
        if value - value == 0.0:  # finite (NaN and infinities give NaN)
            return value
        raise _Invalid(key)
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise _Invalid(key)
    try:
        number = float(value)  # an int beyond a float's range, or "1e400" (inf), or "nan" / NaN
    except (ValueError, OverflowError):
        raise _Invalid(key) from None
    if not math.isfinite(number):
        raise _Invalid(key)
    return number


def _int(event: dict[str, Any], key: str, required: bool = False) -> int | None:
    value = _num(event, key, required)
    if value is None:
        return None
    if abs(value) > _MAX_COUNT:
        raise _Invalid(key)
    return int(value)


def _later(ts: str | None, than: str | None) -> bool:
    """Whether ``ts`` is at least as late as ``than`` (missing timestamps count as oldest)."""
    return (ts or "") >= (than or "")


class _Host:
    """Mutable per-host state while events stream in."""

    def __init__(self, hostname: str, budget: _Budget) -> None:
        self.budget = budget
        self.report = HostReport(hostname=hostname)
        self.suspects: dict[str, Suspect] = {}
        self.suspect_ts: dict[str, str | None] = {}
        self.cleared_ts: dict[str, str | None] = {}
        self.sites_ts: dict[str, str | None] = {}
        self.types_ts: dict[str, str | None] = {}
        self.heavy: dict[str, HeavyTask] = {}
        self.errors: dict[tuple[str, str], ErrorItem] = {}
        self.pools: set[str] = set()
        self.config_ts: str | None = None

    def suspect(self, task: str) -> Suspect | None:
        """The suspect ``task``, made on first sight; None when the suspects table is full."""
        found = self.suspects.get(task)
        if found is None:
            if not self.budget.admit(self.suspects, task, "suspects"):
                return None
            found = self.suspects[task] = Suspect(task=task)
        return found

    def count(self, counts: dict[str, int], key: str, name: str) -> None:
        self.budget.count(counts, key, name)


class Aggregator:
    """Feed events with :meth:`feed`; :meth:`build` returns the report."""

    def __init__(self) -> None:
        self._hosts: dict[str, _Host] = {}
        self._budget = _Budget()
        self.events = 0
        self.corrupt = 0
        #: Events skipped as corrupt, by the field that was wrong.
        self.invalid: dict[str, int] = {}

    def feed(self, event: dict[str, Any], source: SourceStats | None = None) -> bool:
        """Add one event; returns False (and counts it corrupt) when its fields are unusable."""
        try:
            self._feed(event)
        except Exception as exc:  # _Invalid, or a value no check foresaw: never a traceback
            field = str(exc.args[0]) if isinstance(exc, _Invalid) and exc.args else f"({type(exc).__name__})"
            self.invalid[field] = self.invalid.get(field, 0) + 1
            self.corrupt += 1
            if source is not None:
                source.events -= 1
                source.corrupt += 1
            return False
        self.events += 1
        return True

    def _feed(self, event: dict[str, Any]) -> None:
        name = _str(event, "event", required=True) or ""
        ts = _str(event, "ts", limit=64)
        hostname = _str(event, "hostname") or UNKNOWN_HOST
        handler = _HANDLERS.get(name)
        host = self._hosts.get(hostname)
        folded = host is None and len(self._hosts) >= MAX_HOSTS
        if folded:  # one host stands for all the hosts beyond the cap
            hostname = OTHER_HOSTS
            host = self._hosts.get(hostname)
        if host is None:
            probe = _Host(hostname, self._budget)
            if handler is not None:
                handler(self, probe, event, ts)  # validate before creating the host
            host = self._hosts[hostname] = probe
        elif handler is not None:
            handler(self, host, event, ts)
        if folded:
            self._budget.refuse("hosts")
        if handler is None:
            host.count(host.report.other_events, name, "other event names")
        report = host.report
        report.events += 1
        if ts is not None:
            if report.first_seen is None or ts < report.first_seen:
                report.first_seen = ts
            if report.last_seen is None or ts > report.last_seen:
                report.last_seen = ts

    # -- handlers ---------------------------------------------------------------
    def _started(self, host: _Host, event: dict[str, Any], ts: str | None) -> None:
        keys = ("pool", "concurrency", "metric", "soft_limit_mib", "hard_limit_mib", "poll_interval", "dry_run")
        config: dict[str, object] = {}
        for key in keys:
            value = event.get(key)
            if isinstance(value, bool):
                config[key] = value
            elif isinstance(value, int):
                config[key] = _int(event, key)  # a malformed number makes the event corrupt
            elif isinstance(value, float):
                config[key] = _num(event, key)
            elif value is not None:
                config[key] = _str(event, key)
        host.report.starts += 1
        if _later(ts, host.config_ts):
            host.report.config = config
            host.config_ts = ts

    def _leak_suspected(self, host: _Host, event: dict[str, Any], ts: str | None) -> None:
        task = _str(event, "task", required=True) or ""
        kib = _num(event, "kib_per_call", required=True)
        confidence = _num(event, "confidence")
        calls = _int(event, "calls_observed")
        children = _int(event, "children")
        projected = _int(event, "projected_calls_to_soft_limit")
        suspect = host.suspect(task)
        if suspect is None:
            return
        suspect.reports += 1
        if suspect.first_seen is None or (ts is not None and ts < suspect.first_seen):
            suspect.first_seen = ts
        if task not in host.suspect_ts or _later(ts, host.suspect_ts[task]):
            host.suspect_ts[task] = ts
            suspect.last_seen = ts
            suspect.kib_per_call = kib
            suspect.confidence = confidence
            suspect.calls_observed = calls
            suspect.children = children
            suspect.projected_calls_to_soft_limit = projected

    def _leak_cleared(self, host: _Host, event: dict[str, Any], ts: str | None) -> None:
        task = _str(event, "task", required=True) or ""
        reason = _str(event, "reason", limit=MAX_TEXT)
        suspect = host.suspect(task)
        if suspect is not None and (task not in host.cleared_ts or _later(ts, host.cleared_ts[task])):
            host.cleared_ts[task] = ts
            suspect.cleared_reason = reason

    def _leak_sites(self, host: _Host, event: dict[str, Any], ts: str | None) -> None:
        self._latest_list(host, event, ts, "sites", host.sites_ts, lambda item: Site(
            file=_str(item, "file", required=True) or "?",
            line=_int(item, "line"),
            size_kib=_num(item, "size_kib") or 0.0,
            count=_int(item, "count"),
        ))

    def _leak_types(self, host: _Host, event: dict[str, Any], ts: str | None) -> None:
        self._latest_list(host, event, ts, "types", host.types_ts, lambda item: TypeGrowth(
            type=_str(item, "type", required=True) or "?",
            count=_int(item, "count"),
            size_kib=_num(item, "size_kib") or 0.0,
        ))

    @staticmethod
    def _latest_list(host: _Host, event: dict[str, Any], ts: str | None, key: str,
                     seen: dict[str, str | None], build: Any) -> None:
        """Keep the newest ``key`` list (sites or types) of a suspect's diagnostics events."""
        task = _str(event, "task", required=True) or ""
        raw = event.get(key)
        if not isinstance(raw, list) or not all(isinstance(item, dict) for item in raw[:_TOP]):
            raise _Invalid(key)
        items = [build(item) for item in raw[:_TOP]]
        suspect = host.suspect(task)
        if suspect is None or not (task not in seen or _later(ts, seen[task])):
            return
        kept: list[Any] = getattr(suspect, key)
        if host.budget.used + len(items) - len(kept) > MAX_ENTRIES:  # each item is an entry of the budget
            host.budget.refuse(key)
            return
        host.budget.used += len(items) - len(kept)
        seen[task] = ts
        setattr(suspect, key, items)

    def _heavy_task(self, host: _Host, event: dict[str, Any], ts: str | None) -> None:
        task = _str(event, "task", required=True) or ""
        peak = _num(event, "peak_mib", required=True) or 0.0
        retained = _num(event, "retained_mib") or 0.0
        occurrences = _int(event, "occurrences") or 1
        task_id = _str(event, "task_id")
        pid = _int(event, "pid")
        advice = _str(event, "advice", limit=MAX_TEXT)
        heavy = host.heavy.get(task)
        if heavy is None:
            if not host.budget.admit(host.heavy, task, "heavy tasks"):
                return
            heavy = host.heavy[task] = HeavyTask(task=task)
        heavy.occurrences += max(1, occurrences)
        heavy.max_peak_mib = max(heavy.max_peak_mib, peak)
        heavy.max_retained_mib = max(heavy.max_retained_mib, retained)
        if _later(ts, heavy.last_seen):
            heavy.last_seen = ts
            heavy.last_task_id = task_id
            heavy.last_pid = pid
            heavy.advice = advice or heavy.advice

    @staticmethod
    def _count(host: _Host, by_reason: dict[str, int], event: dict[str, Any],
               by_task: dict[str, int] | None = None) -> None:
        """Count one intervention event under its reason (and, with ``by_task``, under its task)."""
        reason = _str(event, "reason") or "unknown"
        task = _str(event, "task")
        host.count(by_reason, reason, "reasons")
        if by_task is not None and task:
            host.count(by_task, task, "tasks")

    def _recycled(self, host: _Host, event: dict[str, Any], ts: str | None) -> None:
        counts = host.report.interventions
        self._count(host, counts.recycled, event, counts.recycled_during)

    def _killed(self, host: _Host, event: dict[str, Any], ts: str | None) -> None:
        counts = host.report.interventions
        self._count(host, counts.killed, event, counts.killed_tasks)

    def _would_recycle(self, host: _Host, event: dict[str, Any], ts: str | None) -> None:
        self._count(host, host.report.interventions.would_recycle, event)

    def _would_kill(self, host: _Host, event: dict[str, Any], ts: str | None) -> None:
        self._count(host, host.report.interventions.would_kill, event)

    def _child_lost(self, host: _Host, event: dict[str, Any], ts: str | None) -> None:
        lost: LostChildren = host.report.lost
        signal = _str(event, "signal") or f"exit code {_int(event, 'exitcode')}"
        likely = event.get("likely_oom")
        if likely is not None and not isinstance(likely, bool):
            raise _Invalid("likely_oom")
        mem = _num(event, "last_mem_mib")
        reason = _str(event, "reason", limit=MAX_TEXT)
        task = _str(event, "task")
        lost.count += 1
        lost.likely_oom += bool(likely)
        host.count(lost.by_signal, signal, "signals")
        if task:
            host.count(lost.tasks, task, "tasks")
        if mem is not None:
            lost.max_last_mem_mib = mem if lost.max_last_mem_mib is None else max(lost.max_last_mem_mib, mem)
        if _later(ts, lost.last_seen):
            lost.last_seen, lost.last_reason = ts, reason or lost.last_reason

    def _recycle_storm(self, host: _Host, event: dict[str, Any], ts: str | None) -> None:
        _episode(host.report.recycle_storms, event, ts)

    def _pressure_unrelieved(self, host: _Host, event: dict[str, Any], ts: str | None) -> None:
        _episode(host.report.pressure_unrelieved, event, ts)

    def _master_growth(self, host: _Host, event: dict[str, Any], ts: str | None) -> None:
        growth = MasterGrowth(
            mem_mib=_num(event, "mem_mib"),
            mib_per_hour=_num(event, "mib_per_hour"),
            since_s=_num(event, "since_s"),
            growth_mib=_num(event, "growth_mib", required=True),
            reserved=_int(event, "reserved"),
            note=_str(event, "note", limit=MAX_TEXT),
            last_seen=ts,
        )
        previous = host.report.master
        if previous is None or _later(ts, previous.last_seen):
            growth.reports = (previous.reports if previous else 0) + 1
            host.report.master = growth
        else:
            previous.reports += 1

    def _error(self, host: _Host, event: dict[str, Any], ts: str | None) -> None:
        where = _str(event, "where") or "?"
        error = _str(event, "error") or "?"
        item = host.errors.get((where, error))
        if item is None:
            if not host.budget.admit(host.errors, (where, error), "errors"):
                return
            item = host.errors[(where, error)] = ErrorItem(where=where, error=error)
        item.count += 1
        if item.first_seen is None or (ts is not None and ts < item.first_seen):
            item.first_seen = ts

    def _pool_unsupported(self, host: _Host, event: dict[str, Any], ts: str | None) -> None:
        pool = _str(event, "pool") or "?"
        if pool not in host.pools and host.budget.admit(host.pools, pool, "pools"):
            host.pools.add(pool)
            host.report.unsupported_pools.append(pool)

    def _stopped(self, host: _Host, event: dict[str, Any], ts: str | None) -> None:
        return None

    def _sample(self, host: _Host, event: dict[str, Any], ts: str | None) -> None:
        return None  # memguard.sample: drawn by the HTML report's timelines (see .timeline)

    # -- result -------------------------------------------------------------------
    def build(self, sources: list[SourceStats]) -> Report:
        hosts = []
        for name in sorted(self._hosts):
            host = self._hosts[name]
            for task, suspect in host.suspects.items():
                cleared_at = host.cleared_ts.get(task, None)
                suspect.cleared = task in host.cleared_ts and _later(cleared_at, host.suspect_ts.get(task))
                if not suspect.cleared:
                    suspect.cleared_reason = None
            report = host.report
            report.suspects = sorted(host.suspects.values(), key=lambda s: (s.cleared, -s.score, s.task))
            report.heavy = sorted(host.heavy.values(), key=lambda h: (-h.max_peak_mib, h.task))
            report.errors = sorted(host.errors.values(), key=lambda e: (-e.count, e.where))
            hosts.append(report)
        result = Report(
            sources=sources,
            hosts=hosts,
            lines=sum(s.lines for s in sources),
            events=self.events,
            foreign=sum(s.foreign for s in sources),
            corrupt=sum(s.corrupt for s in sources),
            console=sum(s.console for s in sources),
            invalid=dict(sorted(self.invalid.items(), key=lambda kv: (-kv[1], kv[0]))),
            not_itemised=dict(self._budget.dropped),
        )
        result.verdict = verdict(result)
        return result


_HANDLERS = {
    events.STARTED: Aggregator._started,
    events.LEAK_SUSPECTED: Aggregator._leak_suspected,
    events.LEAK_CLEARED: Aggregator._leak_cleared,
    events.LEAK_SITES: Aggregator._leak_sites,
    events.LEAK_TYPES: Aggregator._leak_types,
    events.HEAVY_TASK: Aggregator._heavy_task,
    events.CHILD_RECYCLED: Aggregator._recycled,
    events.TASK_KILLED: Aggregator._killed,
    events.WOULD_RECYCLE: Aggregator._would_recycle,
    events.WOULD_KILL: Aggregator._would_kill,
    events.MASTER_GROWTH: Aggregator._master_growth,
    events.CHILD_LOST: Aggregator._child_lost,
    events.RECYCLE_STORM: Aggregator._recycle_storm,
    events.PRESSURE_UNRELIEVED: Aggregator._pressure_unrelieved,
    events.ERROR: Aggregator._error,
    events.POOL_UNSUPPORTED: Aggregator._pool_unsupported,
    events.STOPPED: Aggregator._stopped,
    events.SAMPLE: Aggregator._sample,
}


def _fmt(value: float) -> str:
    return f"{value:,.1f}"


def _hosts_text(names: list[str]) -> str:
    return names[0] if len(names) == 1 else f"{len(names)} hosts ({', '.join(names)})"


def verdict(report: Report) -> Verdict:
    """The conclusion and advice for ``report``: each kind of problem adds its findings and advice in turn."""
    if report.events == 0:
        return _no_data(report)
    notes = _Notes()
    leaks = _leaks(report, notes)
    problems = [
        _heavy_tasks(report, notes),
        _master_growth(report, notes),
        _interventions(report, notes),
        _lost_children(report, notes),
        _unrelieved_pressure(report, notes),
        _recycle_storms(report, notes),
    ]
    _dry_run_and_health(report, notes)
    if leaks:
        return Verdict("leak", f"LEAK: {leaks} task{'s' if leaks != 1 else ''} "
                               f"retain{'s' if leaks == 1 else ''} memory on every call.", notes.findings, notes.advice)
    if any(problems):
        return Verdict("attention", "ATTENTION: no leaking task, but memory problems were found.",
                       notes.findings, notes.advice)
    return Verdict("ok", f"OK: no leak, heavy task or master growth in {report.events:,} MemGuard events.",
                   notes.findings, notes.advice)


@dataclass
class _Notes:
    """What the verdict has found so far, and its advice, in the order the report prints them."""

    findings: list[str] = field(default_factory=list)
    advice: list[str] = field(default_factory=list)


def _no_data(report: Report) -> Verdict:
    """No MemGuard event was read: say so, with the likely reason."""
    hints: list[str] = []
    if report.console:
        hints.append(
            f"{report.console} MemGuard events were logged in console format; set "
            f'memguard_log_format = "json" (and memguard_log_file) so they can be read.'
        )
    elif report.readable_sources:
        hints.append("Is MemGuard installed (app.steps['worker'].add(MemGuard)) and logging JSON to this file?")
    lines = f"{report.lines:,} line{'' if report.lines == 1 else 's'}"
    return Verdict("no-data", f"No MemGuard events found in {lines}.", [], hints)


def _leaks(report: Report, notes: _Notes) -> int:
    """Each leaking task (worst first) across hosts, with where to look; returns how many tasks leak."""
    leaks: dict[str, list[tuple[str, Suspect]]] = {}
    for host in report.hosts:
        for suspect in host.active_suspects:
            leaks.setdefault(suspect.task, []).append((host.hostname, suspect))
    for task, found in sorted(leaks.items(), key=lambda item: -max(s.score for _, s in item[1])):
        best = max((s for _, s in found), key=lambda s: s.score)
        confidence = f", confidence {best.confidence:.2f}" if best.confidence is not None else ""
        notes.findings.append(
            f"{task} retains ~{_fmt(best.kib_per_call or 0.0)} KiB per call{confidence} "
            f"on {_hosts_text([h for h, _ in found])}."
        )
        notes.advice.append(_leak_advice(task, [s for _, s in found]))
    return len(leaks)


def _leak_advice(task: str, found: list[Suspect]) -> str:
    """How to fix one leaking task: its top growing site and type if known, and the calls left to the soft limit."""
    site = next((s.sites[0] for s in found if s.sites), None)
    kind = next((s.types[0] for s in found if s.types), None)
    where = []
    if site is not None:
        where.append(f"top growing site {site.file}:{site.line if site.line is not None else '?'} "
                     f"(+{_fmt(site.size_kib)} KiB)")
    if kind is not None:
        where.append(f"growing type {kind.type} (+{_fmt(kind.size_kib)} KiB)")
    hint = ("; ".join(where) + ". ") if where else (
        'Enable memguard_diagnostics = "tracemalloc" to get the allocation sites. ')
    projected = [s.projected_calls_to_soft_limit for s in found if s.projected_calls_to_soft_limit is not None]
    budget = ""
    if projected:
        budget = (f" A child reaches the soft limit after ~{min(projected):,} more calls of it; until the fix "
                  f"ships, let MemGuard recycle children at the soft limit (or set worker_max_tasks_per_child).")
    return (f"Fix {task}: {hint}Look for module-level lists/dicts, caches without a bound and "
            f"references kept across calls.{budget}")


def _heavy_tasks(report: Report, notes: _Notes) -> int:
    """Each memory-heavy task (highest peak first) across hosts; returns how many."""
    heavy: dict[str, list[tuple[str, HeavyTask]]] = {}
    for host in report.hosts:
        for item in host.heavy:
            heavy.setdefault(item.task, []).append((host.hostname, item))
    for task, calls in sorted(heavy.items(), key=lambda item: -max(h.max_peak_mib for _, h in item[1])):
        peak = max(h.max_peak_mib for _, h in calls)
        count = sum(h.occurrences for _, h in calls)
        notes.findings.append(f"{task} is memory-heavy: one call peaked at {_fmt(peak)} MiB "
                              f"({count} heavy call{'s' if count != 1 else ''}) on "
                              f"{_hosts_text([h for h, _ in calls])}.")
    if heavy:
        notes.advice.append("Heavy tasks: chunk the work (smaller inputs per call, stream instead of loading whole "
                            "payloads) or route them to their own queue served by a dedicated worker with low "
                            "concurrency and its own memory limits; a child keeps its high-watermark until it exits.")
    return len(heavy)


def _master_growth(report: Report, notes: _Notes) -> int:
    """Each host whose master grew; returns how many."""
    grown = [host for host in report.hosts if host.master is not None]
    for host in grown:
        master = host.master
        assert master is not None
        rate = f" ({_fmt(master.mib_per_hour)} MiB/h)" if master.mib_per_hour is not None else ""
        notes.findings.append(f"The master of {host.hostname} grew by {_fmt(master.growth_mib or 0.0)} MiB{rate}.")
        notes.advice.append(f"Master of {host.hostname}: {master.note}" if master.note else
                            f"Master of {host.hostname}: the main process itself grows; suspect Celery/kombu or "
                            f"code running in the main process, not the tasks.")
    return len(grown)


def _interventions(report: Report, notes: _Notes) -> int:
    """Children recycled and tasks stopped by MemGuard; returns the tasks stopped (a problem, recycles are not)."""
    killed = sum(sum(h.interventions.killed.values()) for h in report.hosts)
    recycled = sum(sum(h.interventions.recycled.values()) for h in report.hosts)
    if killed or recycled:
        children = "child" if recycled == 1 else "children"
        tasks = "task" if killed == 1 else "tasks"
        notes.findings.append(f"MemGuard recycled {recycled} pool {children} and stopped {killed} {tasks}.")
        if killed:
            notes.advice.append("Tasks were stopped at the hard limit: fix the leak or heavy task named above, or "
                                "give the worker more headroom between the soft and the hard limit.")
    return killed


def _lost_children(report: Report, notes: _Notes) -> int:
    """Children killed outside MemGuard, how many likely by the OOM killer, and what they ran; returns how many."""
    lost_hosts = [h for h in report.hosts if h.lost.count]
    lost = sum(h.lost.count for h in lost_hosts)
    if not lost:
        return 0
    oom = sum(h.lost.likely_oom for h in lost_hosts)
    running_at_death: dict[str, int] = {}
    for h in lost_hosts:
        for task, count in h.lost.tasks.items():
            running_at_death[task] = running_at_death.get(task, 0) + count
    running = ", ".join(f"{task} ({count})" for task, count in
                        sorted(running_at_death.items(), key=lambda kv: (-kv[1], kv[0])))
    notes.findings.append(
        f"{lost} pool {'child was' if lost == 1 else 'children were'} killed outside MemGuard "
        f"({oom} likely by the OOM killer) on {_hosts_text([h.hostname for h in lost_hosts])}"
        + (f", while running {running}." if running else ".")
    )
    if oom:
        notes.advice.append("Children were OOM-killed before MemGuard acted (Celery shows WorkerLostError: signal 9): "
                            "set memguard_hard_limit per child, and memguard_min_available or memguard_pool_limit "
                            "below the container's limit, so MemGuard recycles or stops a task first; the tasks "
                            "named above were running when the kernel struck.")
    return lost


def _unrelieved_pressure(report: Report, notes: _Notes) -> int:
    """Pressure episodes no pool child could relieve; returns how many hosts had one."""
    unrelieved = [h for h in report.hosts if h.pressure_unrelieved.count]
    if unrelieved:
        episodes = sum(h.pressure_unrelieved.count for h in unrelieved)
        notes.findings.append(f"Memory pressure no pool child could relieve ({episodes} "
                              f"episode{'s' if episodes != 1 else ''}) on "
                              f"{_hosts_text([h.hostname for h in unrelieved])}.")
        notes.advice.append("Pressure came from memory held outside the pool children (the master, other processes "
                            "in the container, tmpfs or page cache that cannot be reclaimed): recycling children "
                            "cannot free it. Find that process, or lower memguard_pressure_min_relief if your "
                            "children's normal size is what fills the memory.")
    return len(unrelieved)


def _recycle_storms(report: Report, notes: _Notes) -> int:
    """Episodes in which recycles were rate-limited, with the first cause given; returns how many."""
    storms = sum(h.recycle_storms.count for h in report.hosts)
    if storms:
        cause = next((h.recycle_storms.cause for h in report.hosts if h.recycle_storms.cause), None)
        notes.findings.append(f"Recycles were rate-limited in {storms} storm episode{'s' if storms != 1 else ''}"
                              + (f": {cause}" if cause else "."))
    return storms


def _dry_run_and_health(report: Report, notes: _Notes) -> None:
    """What a dry run would have done, MemGuard's own errors, and pools it only partly supports (no advice)."""
    would = sum(sum(h.interventions.would_recycle.values()) + sum(h.interventions.would_kill.values())
                for h in report.hosts)
    if would:
        notes.findings.append(f"Dry run: MemGuard would have acted {would} times.")
    errors = sum(e.count for h in report.hosts for e in h.errors)
    if errors:
        notes.findings.append(f"MemGuard logged {errors} internal error{'s' if errors != 1 else ''} (memguard.error).")
    unsupported = sorted({p for h in report.hosts for p in h.unsupported_pools})
    if unsupported:
        notes.findings.append(f"Pool(s) {', '.join(unsupported)} are only partly supported "
                              f"(memguard.pool_unsupported).")
