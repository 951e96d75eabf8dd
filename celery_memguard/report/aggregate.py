"""Turning a stream of MemGuard events into a :class:`~.model.Report`.

:class:`Aggregator` takes event dicts in any order (several files, several
workers, rotated logs read in any order): per host it keeps each suspect's
*latest* estimate by the event's ``ts`` (ISO 8601 UTC strings compare in time
order), counts recycles and kills by reason, keeps the worst heavy call per
task and the latest master-growth finding, and groups errors by cause. An event
whose fields have the wrong types is counted as corrupt, never raised.
:func:`verdict` then writes the short conclusion and advice.
"""

from __future__ import annotations

from typing import Any

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

__all__ = ["Aggregator", "verdict", "UNKNOWN_HOST"]

UNKNOWN_HOST = "(unknown host)"
#: Top entries kept per diagnostics list.
_TOP = 10


class _Invalid(Exception):
    """An event field is missing or of the wrong type."""


def _count(by_reason: dict[str, int], event: dict[str, Any], by_task: dict[str, int] | None = None) -> None:
    """Count one intervention event under its reason (and, with ``by_task``, under its task)."""
    reason = _str(event, "reason") or "unknown"
    by_reason[reason] = by_reason.get(reason, 0) + 1
    task = _str(event, "task")
    if by_task is not None and task:
        by_task[task] = by_task.get(task, 0) + 1


def _episode(episodes: Episodes, event: dict[str, Any], ts: str | None) -> None:
    """Count one once-per-episode event; keep the latest one's cause."""
    cause = _str(event, "cause")
    episodes.count += 1
    if _later(ts, episodes.last_seen):
        episodes.last_seen, episodes.cause = ts, cause or episodes.cause


def _str(event: dict[str, Any], key: str, required: bool = False) -> str | None:
    value = event.get(key)
    if value is None:
        if required:
            raise _Invalid(key)
        return None
    if isinstance(value, (dict, list)):
        raise _Invalid(key)
    return str(value)


def _num(event: dict[str, Any], key: str, required: bool = False) -> float | None:
    value = event.get(key)
    if value is None:
        if required:
            raise _Invalid(key)
        return None
    if isinstance(value, bool):
        raise _Invalid(key)
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            raise _Invalid(key) from None
    raise _Invalid(key)


def _int(event: dict[str, Any], key: str, required: bool = False) -> int | None:
    value = _num(event, key, required)
    return None if value is None else int(value)


def _later(ts: str | None, than: str | None) -> bool:
    """Whether ``ts`` is at least as late as ``than`` (missing timestamps count as oldest)."""
    return (ts or "") >= (than or "")


class _Host:
    """Mutable per-host state while events stream in."""

    def __init__(self, hostname: str) -> None:
        self.report = HostReport(hostname=hostname)
        self.suspects: dict[str, Suspect] = {}
        self.suspect_ts: dict[str, str | None] = {}
        self.cleared_ts: dict[str, str | None] = {}
        self.sites_ts: dict[str, str | None] = {}
        self.types_ts: dict[str, str | None] = {}
        self.heavy: dict[str, HeavyTask] = {}
        self.errors: dict[tuple[str, str], ErrorItem] = {}
        self.config_ts: str | None = None

    def suspect(self, task: str) -> Suspect:
        found = self.suspects.get(task)
        if found is None:
            found = self.suspects[task] = Suspect(task=task)
        return found


class Aggregator:
    """Feed events with :meth:`feed`; :meth:`build` returns the report."""

    def __init__(self) -> None:
        self._hosts: dict[str, _Host] = {}
        self.events = 0
        self.corrupt = 0

    def feed(self, event: dict[str, Any], source: SourceStats | None = None) -> bool:
        """Add one event; returns False (and counts it corrupt) when its fields are unusable."""
        try:
            self._feed(event)
        except _Invalid:
            self.corrupt += 1
            if source is not None:
                source.events -= 1
                source.corrupt += 1
            return False
        self.events += 1
        return True

    def _feed(self, event: dict[str, Any]) -> None:
        name = _str(event, "event", required=True) or ""
        ts = _str(event, "ts")
        hostname = _str(event, "hostname") or UNKNOWN_HOST
        handler = _HANDLERS.get(name)
        host = self._hosts.get(hostname)
        if host is None:
            probe = _Host(hostname)
            if handler is not None:
                handler(self, probe, event, ts)  # validate before creating the host
            host = self._hosts[hostname] = probe
        elif handler is not None:
            handler(self, host, event, ts)
        if handler is None:
            host.report.other_events[name] = host.report.other_events.get(name, 0) + 1
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
        config = {k: event[k] for k in keys if k in event and not isinstance(event[k], (dict, list))}
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
        reason = _str(event, "reason")
        if task not in host.cleared_ts or _later(ts, host.cleared_ts[task]):
            host.cleared_ts[task] = ts
            host.suspect(task).cleared_reason = reason

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
        if task not in seen or _later(ts, seen[task]):
            seen[task] = ts
            setattr(host.suspect(task), key, items)

    def _heavy_task(self, host: _Host, event: dict[str, Any], ts: str | None) -> None:
        task = _str(event, "task", required=True) or ""
        peak = _num(event, "peak_mib", required=True) or 0.0
        retained = _num(event, "retained_mib") or 0.0
        occurrences = _int(event, "occurrences") or 1
        task_id = _str(event, "task_id")
        pid = _int(event, "pid")
        advice = _str(event, "advice")
        heavy = host.heavy.get(task)
        if heavy is None:
            heavy = host.heavy[task] = HeavyTask(task=task)
        heavy.occurrences += max(1, occurrences)
        heavy.max_peak_mib = max(heavy.max_peak_mib, peak)
        heavy.max_retained_mib = max(heavy.max_retained_mib, retained)
        if _later(ts, heavy.last_seen):
            heavy.last_seen = ts
            heavy.last_task_id = task_id
            heavy.last_pid = pid
            heavy.advice = advice or heavy.advice

    def _recycled(self, host: _Host, event: dict[str, Any], ts: str | None) -> None:
        counts = host.report.interventions
        _count(counts.recycled, event, counts.recycled_during)

    def _killed(self, host: _Host, event: dict[str, Any], ts: str | None) -> None:
        counts = host.report.interventions
        _count(counts.killed, event, counts.killed_tasks)

    def _would_recycle(self, host: _Host, event: dict[str, Any], ts: str | None) -> None:
        _count(host.report.interventions.would_recycle, event)

    def _would_kill(self, host: _Host, event: dict[str, Any], ts: str | None) -> None:
        _count(host.report.interventions.would_kill, event)

    def _child_lost(self, host: _Host, event: dict[str, Any], ts: str | None) -> None:
        lost: LostChildren = host.report.lost
        signal = _str(event, "signal") or f"exit code {_int(event, 'exitcode')}"
        likely = event.get("likely_oom")
        if likely is not None and not isinstance(likely, bool):
            raise _Invalid("likely_oom")
        mem = _num(event, "last_mem_mib")
        reason = _str(event, "reason")
        task = _str(event, "task")
        lost.count += 1
        lost.likely_oom += bool(likely)
        lost.by_signal[signal] = lost.by_signal.get(signal, 0) + 1
        if task:
            lost.tasks[task] = lost.tasks.get(task, 0) + 1
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
            note=_str(event, "note"),
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
            item = host.errors[(where, error)] = ErrorItem(where=where, error=error)
        item.count += 1
        if item.first_seen is None or (ts is not None and ts < item.first_seen):
            item.first_seen = ts

    def _pool_unsupported(self, host: _Host, event: dict[str, Any], ts: str | None) -> None:
        pool = _str(event, "pool") or "?"
        if pool not in host.report.unsupported_pools:
            host.report.unsupported_pools.append(pool)

    def _stopped(self, host: _Host, event: dict[str, Any], ts: str | None) -> None:
        return None

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
        )
        result.verdict = verdict(result)
        return result


_HANDLERS = {
    "memguard.started": Aggregator._started,
    "memguard.leak_suspected": Aggregator._leak_suspected,
    "memguard.leak_cleared": Aggregator._leak_cleared,
    "memguard.leak_sites": Aggregator._leak_sites,
    "memguard.leak_types": Aggregator._leak_types,
    "memguard.heavy_task": Aggregator._heavy_task,
    "memguard.child_recycled": Aggregator._recycled,
    "memguard.task_killed": Aggregator._killed,
    "memguard.would_recycle": Aggregator._would_recycle,
    "memguard.would_kill": Aggregator._would_kill,
    "memguard.master_growth": Aggregator._master_growth,
    "memguard.child_lost": Aggregator._child_lost,
    "memguard.recycle_storm": Aggregator._recycle_storm,
    "memguard.pressure_unrelieved": Aggregator._pressure_unrelieved,
    "memguard.error": Aggregator._error,
    "memguard.pool_unsupported": Aggregator._pool_unsupported,
    "memguard.stopped": Aggregator._stopped,
}


def _fmt(value: float) -> str:
    return f"{value:,.1f}"


def _hosts_text(names: list[str]) -> str:
    return names[0] if len(names) == 1 else f"{len(names)} hosts ({', '.join(names)})"


def verdict(report: Report) -> Verdict:
    """The conclusion and advice for ``report``."""
    if report.events == 0:
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

    findings: list[str] = []
    advice: list[str] = []

    leaks: dict[str, list[tuple[str, Suspect]]] = {}
    for host in report.hosts:
        for suspect in host.active_suspects:
            leaks.setdefault(suspect.task, []).append((host.hostname, suspect))
    ranked = sorted(leaks.items(), key=lambda item: -max(s.score for _, s in item[1]))
    for task, found in ranked:
        best = max((s for _, s in found), key=lambda s: s.score)
        confidence = f", confidence {best.confidence:.2f}" if best.confidence is not None else ""
        findings.append(
            f"{task} retains ~{_fmt(best.kib_per_call or 0.0)} KiB per call{confidence} "
            f"on {_hosts_text([h for h, _ in found])}."
        )
        site = next((s.sites[0] for _, s in found if s.sites), None)
        kind = next((s.types[0] for _, s in found if s.types), None)
        where = []
        if site is not None:
            where.append(f"top growing site {site.file}:{site.line if site.line is not None else '?'} "
                         f"(+{_fmt(site.size_kib)} KiB)")
        if kind is not None:
            where.append(f"growing type {kind.type} (+{_fmt(kind.size_kib)} KiB)")
        hint = ("; ".join(where) + ". ") if where else (
            'Enable memguard_diagnostics = "tracemalloc" to get the allocation sites. ')
        projected = [s.projected_calls_to_soft_limit for _, s in found if s.projected_calls_to_soft_limit is not None]
        budget = ""
        if projected:
            budget = (f" A child reaches the soft limit after ~{min(projected):,} more calls of it; until the fix "
                      f"ships, let MemGuard recycle children at the soft limit (or set worker_max_tasks_per_child).")
        advice.append(f"Fix {task}: {hint}Look for module-level lists/dicts, caches without a bound and "
                      f"references kept across calls.{budget}")

    heavy: dict[str, list[tuple[str, HeavyTask]]] = {}
    for host in report.hosts:
        for item in host.heavy:
            heavy.setdefault(item.task, []).append((host.hostname, item))
    for task, calls in sorted(heavy.items(), key=lambda item: -max(h.max_peak_mib for _, h in item[1])):
        peak = max(h.max_peak_mib for _, h in calls)
        count = sum(h.occurrences for _, h in calls)
        findings.append(f"{task} is memory-heavy: one call peaked at {_fmt(peak)} MiB "
                        f"({count} heavy call{'s' if count != 1 else ''}) on {_hosts_text([h for h, _ in calls])}.")
    if heavy:
        advice.append("Heavy tasks: chunk the work (smaller inputs per call, stream instead of loading whole "
                      "payloads) or route them to their own queue served by a dedicated worker with low "
                      "concurrency and its own memory limits; a child keeps its high-watermark until it exits.")

    for host in report.hosts:
        master = host.master
        if master is None:
            continue
        rate = f" ({_fmt(master.mib_per_hour)} MiB/h)" if master.mib_per_hour is not None else ""
        findings.append(f"The master of {host.hostname} grew by {_fmt(master.growth_mib or 0.0)} MiB{rate}.")
        advice.append(f"Master of {host.hostname}: {master.note}" if master.note else
                      f"Master of {host.hostname}: the main process itself grows; suspect Celery/kombu or code "
                      f"running in the main process, not the tasks.")

    killed = sum(sum(h.interventions.killed.values()) for h in report.hosts)
    recycled = sum(sum(h.interventions.recycled.values()) for h in report.hosts)
    if killed or recycled:
        children = "child" if recycled == 1 else "children"
        tasks = "task" if killed == 1 else "tasks"
        findings.append(f"MemGuard recycled {recycled} pool {children} and stopped {killed} {tasks}.")
        if killed:
            advice.append("Tasks were stopped at the hard limit: fix the leak or heavy task named above, or give "
                          "the worker more headroom between the soft and the hard limit.")
    lost_hosts = [h for h in report.hosts if h.lost.count]
    lost = sum(h.lost.count for h in lost_hosts)
    if lost:
        oom = sum(h.lost.likely_oom for h in lost_hosts)
        running_at_death: dict[str, int] = {}
        for h in lost_hosts:
            for task, count in h.lost.tasks.items():
                running_at_death[task] = running_at_death.get(task, 0) + count
        running = ", ".join(f"{task} ({count})" for task, count in
                            sorted(running_at_death.items(), key=lambda kv: (-kv[1], kv[0])))
        findings.append(
            f"{lost} pool {'child was' if lost == 1 else 'children were'} killed outside MemGuard "
            f"({oom} likely by the OOM killer) on {_hosts_text([h.hostname for h in lost_hosts])}"
            + (f", while running {running}." if running else ".")
        )
        if oom:
            advice.append("Children were OOM-killed before MemGuard acted (Celery shows WorkerLostError: signal 9): "
                          "set memguard_hard_limit per child, and memguard_min_available or memguard_pool_limit "
                          "below the container's limit, so MemGuard recycles or stops a task first; the tasks "
                          "named above were running when the kernel struck.")

    unrelieved = [h for h in report.hosts if h.pressure_unrelieved.count]
    if unrelieved:
        episodes = sum(h.pressure_unrelieved.count for h in unrelieved)
        findings.append(f"Memory pressure no pool child could relieve ({episodes} "
                        f"episode{'s' if episodes != 1 else ''}) on {_hosts_text([h.hostname for h in unrelieved])}.")
        advice.append("Pressure came from memory held outside the pool children (the master, other processes in "
                      "the container, tmpfs or page cache that cannot be reclaimed): recycling children cannot "
                      "free it. Find that process, or lower memguard_pressure_min_relief if your children's "
                      "normal size is what fills the memory.")

    storms = sum(h.recycle_storms.count for h in report.hosts)
    if storms:
        cause = next((h.recycle_storms.cause for h in report.hosts if h.recycle_storms.cause), None)
        findings.append(f"Recycles were rate-limited in {storms} storm episode{'s' if storms != 1 else ''}"
                        + (f": {cause}" if cause else "."))

    would = sum(sum(h.interventions.would_recycle.values()) + sum(h.interventions.would_kill.values())
                for h in report.hosts)
    if would:
        findings.append(f"Dry run: MemGuard would have acted {would} times.")

    errors = sum(e.count for h in report.hosts for e in h.errors)
    if errors:
        findings.append(f"MemGuard logged {errors} internal error{'s' if errors != 1 else ''} (memguard.error).")
    unsupported = sorted({p for h in report.hosts for p in h.unsupported_pools})
    if unsupported:
        findings.append(f"Pool(s) {', '.join(unsupported)} are only partly supported (memguard.pool_unsupported).")

    if leaks:
        status = "leak"
        headline = f"LEAK: {len(leaks)} task{'s' if len(leaks) != 1 else ''} retain{'s' if len(leaks) == 1 else ''} " \
                   f"memory on every call."
    elif heavy or any(h.master for h in report.hosts) or killed or lost or unrelieved or storms:
        status = "attention"
        headline = "ATTENTION: no leaking task, but memory problems were found."
    else:
        status = "ok"
        headline = f"OK: no leak, heavy task or master growth in {report.events:,} MemGuard events."
    return Verdict(status, headline, findings, advice)
