"""Collecting the advisor's evidence from event logs: one :class:`~celery_memguard.advice.Evidence` per worker.

:class:`EvidenceCollector` is fed the event dicts :func:`~.reader.read_events` yields
(any order, several files and workers) and keeps, per host, what the advisor sizes
settings from: the latest ``memguard.started`` (concurrency, effective memory), every
``memguard.sample`` (children's sizes, the master, the pool, the tasks finished since
the previous sample, the spawn time), recycles, kills, lost children (task ids lost
more than once: redelivery loops), heavy tasks and leak suspects.

Hostile input never raises and never grows memory without bound: a malformed event is
skipped and counted in :attr:`EvidenceCollector.invalid` (the same field checks as the
report's aggregator), at most :data:`~.aggregate.MAX_HOSTS` hosts and
:data:`~.aggregate.MAX_KEYS` tasks per host are kept (the rest counted in
:attr:`EvidenceCollector.not_itemised`), and size readings are thinned to every other
one once :data:`MAX_READINGS` are held (the maximum stays exact). An implausible value
is malformed too: a size or a duration below zero (except the signed ``retained_mib`` and
``kib_per_call``), a size above :data:`MAX_MIB` (8 PiB, the config's largest size) or a
duration above :data:`MAX_SECONDS`; what the advisor computes from the rest stays finite.
"""

from __future__ import annotations

from typing import Any, Callable

from .. import events
from ..advice import Evidence, TaskEvidence
from ..config import MAX_SIZE
from ..units import KiB, MiB
from .aggregate import MAX_HOSTS, MAX_KEYS, OTHER_HOSTS, UNKNOWN_HOST, _int, _Invalid, _num, _str
from .timeline import parse_ts

__all__ = ["EvidenceCollector", "MAX_READINGS", "MAX_TASK_IDS", "MAX_MIB", "MAX_SECONDS"]

#: Size readings kept per host and list (children's sizes, fresh children, spawn times).
MAX_READINGS = 20_000
#: Lost task ids remembered per task (to find the ones lost again).
MAX_TASK_IDS = 1_000
#: The largest size (MiB) a field may hold: 8 PiB, as the config's largest size; above it the event is malformed.
MAX_MIB = MAX_SIZE / MiB
#: The longest duration (seconds) a field may hold: ten years; above it the event is malformed.
MAX_SECONDS = 10 * 365 * 86400.0


def _mib(event: dict[str, Any], key: str, required: bool = False, signed: bool = False) -> float | None:
    """A size in MiB: :func:`_num`, refused (malformed) below zero unless ``signed``, or beyond 8 PiB."""
    value = _num(event, key, required)
    if value is not None and not (-MAX_MIB if signed else 0.0) <= value <= MAX_MIB:
        raise _Invalid(key)
    return value


def _kib(event: dict[str, Any], key: str, required: bool = False) -> float | None:
    """A signed size in KiB (a growth per call), refused beyond 8 PiB either way."""
    value = _num(event, key, required)
    if value is not None and not abs(value) <= MAX_SIZE / KiB:
        raise _Invalid(key)
    return value


def _seconds(event: dict[str, Any], key: str) -> float | None:
    """A duration: :func:`_num`, refused (malformed) below zero or beyond :data:`MAX_SECONDS`."""
    value = _num(event, key)
    if value is not None and not 0.0 <= value <= MAX_SECONDS:
        raise _Invalid(key)
    return value


def _keep(values: list[float], value: float) -> None:
    values.append(value)
    if len(values) > MAX_READINGS:
        del values[::2]


def _max(current: float | None, value: float | None) -> float | None:
    if value is None:
        return current
    return value if current is None else max(current, value)


class _Host:
    def __init__(self, hostname: str) -> None:
        self.evidence = Evidence(hostname=hostname)
        self.first: float | None = None
        self.last: float | None = None
        self.started_ts = ""
        self.lost_ids: dict[str, dict[str, int]] = {}


class EvidenceCollector:
    """Feed events with :meth:`feed`; :meth:`build` returns each worker's evidence, by host name."""

    def __init__(self) -> None:
        self._hosts: dict[str, _Host] = {}
        self.events = 0
        self.invalid: dict[str, int] = {}
        self.not_itemised: dict[str, int] = {}

    def feed(self, event: dict[str, Any]) -> bool:
        """Take one event; False (counted under the bad field) when it is malformed."""
        try:
            self._feed(event)
        except Exception as exc:  # _Invalid, or a value no check foresaw
            name = str(exc.args[0]) if isinstance(exc, _Invalid) and exc.args else f"({type(exc).__name__})"
            self.invalid[name] = self.invalid.get(name, 0) + 1
            return False
        self.events += 1
        return True

    def _refuse(self, table: str) -> None:
        self.not_itemised[table] = self.not_itemised.get(table, 0) + 1

    def _host(self, event: dict[str, Any]) -> _Host:
        name = _str(event, "hostname") or UNKNOWN_HOST
        host = self._hosts.get(name)
        if host is None:
            if len(self._hosts) >= MAX_HOSTS:
                self._refuse("hosts")
                name = OTHER_HOSTS
                host = self._hosts.get(name)
            if host is None:
                host = self._hosts[name] = _Host(name)
        return host

    def _task(self, host: _Host, name: str) -> TaskEvidence | None:
        tasks = host.evidence.tasks
        task = tasks.get(name)
        if task is None:
            if len(tasks) >= MAX_KEYS:
                self._refuse("tasks")
                return None
            task = tasks[name] = TaskEvidence(task=name)
        return task

    def _feed(self, event: dict[str, Any]) -> None:
        name = _str(event, "event", required=True) or ""
        handler = _HANDLERS.get(name)
        if handler is None:
            return
        ts_text = _str(event, "ts", limit=64)
        ts = parse_ts(ts_text)
        handler(self, event, None, ts_text or "")  # validate before any state changes
        host = self._host(event)
        handler(self, event, host, ts_text or "")
        if ts is not None:
            host.first = ts if host.first is None else min(host.first, ts)
            host.last = ts if host.last is None else max(host.last, ts)

    # -- handlers: with host None they only validate --------------------------------------------
    def _started(self, event: dict[str, Any], host: _Host | None, ts: str) -> None:
        values = (_int(event, "concurrency"), _mib(event, "effective_memory_mib"), _str(event, "metric"),
                  _mib(event, "soft_limit_mib"), _mib(event, "hard_limit_mib"))
        if host is None:
            return
        e = host.evidence
        e.starts += 1
        if ts >= host.started_ts:
            host.started_ts = ts
            concurrency, effective, e.metric, e.soft_limit_mib, e.hard_limit_mib = values
            e.concurrency = concurrency if concurrency is not None and concurrency > 0 else None
            e.effective_memory_mib = effective if effective is not None and effective > 0 else None

    def _sample(self, event: dict[str, Any], host: _Host | None, ts: str) -> None:
        children = event.get("children")
        tasks = event.get("tasks") or {}
        if not isinstance(children, list) or not isinstance(tasks, dict):
            raise _Invalid("children" if not isinstance(children, list) else "tasks")
        sizes = []
        for child in children:
            if not isinstance(child, dict):
                raise _Invalid("children")
            mem = _mib(child, "mem_mib", required=True)
            sizes.append((mem, _int(child, "tasks")))
        rows = []
        for name, row in tasks.items():
            if not isinstance(row, dict) or not isinstance(name, str):
                raise _Invalid("tasks")
            rows.append((_str({"task": name}, "task") or "?", _int(row, "calls") or 0, _int(row, "failed") or 0,
                         _mib(row, "own_peak_mib") or 0.0, _mib(row, "peak_mib") or 0.0,
                         _mib(row, "retained_mib", signed=True) or 0.0, _seconds(row, "max_s") or 0.0,
                         _seconds(row, "total_s") or 0.0))
        readings = [_mib(event, key) for key in ("master_rss_mib", "master_mib", "pool_mib", "available_mib")]
        readings.append(_seconds(event, "spawn_time_s"))
        raw_gaps = event.get("replace_gaps_s") or []
        if not isinstance(raw_gaps, list):
            raise _Invalid("replace_gaps_s")
        gaps = [_seconds({"replace_gaps_s": g}, "replace_gaps_s") for g in raw_gaps[:64]]
        if host is None:
            return
        self._take_sample(host, sizes, rows, readings)
        for gap in gaps:
            if gap is not None and gap >= 0:
                _keep(host.evidence.replace_gaps_s, gap)

    def _take_sample(self, host: _Host, sizes: list[tuple[float | None, int | None]], rows: list[tuple[Any, ...]],
                     readings: list[float | None]) -> None:
        e = host.evidence
        e.samples += 1
        for mem, tasks_run in sizes:
            if mem is None or mem < 0:
                continue
            _keep(e.child_mib, mem)
            e.child_max_mib = _max(e.child_max_mib, mem)
            if tasks_run is not None and tasks_run <= 1:
                _keep(e.fresh_mib, mem)
        for name, calls, failed, own, peak, retained, max_s, total_s in rows:
            task = self._task(host, name)
            if task is None or calls <= 0:
                continue
            task.calls += calls
            task.failed += max(failed, 0)
            task.own_peak_max_mib = max(task.own_peak_max_mib, own)
            task.peak_max_mib = max(task.peak_max_mib, peak)
            task.retained_mib += retained
            task.max_s = max(task.max_s, max_s)
            task.total_s += max(total_s, 0.0)
        master_rss, master, pool, available, spawn = readings
        e.master_rss_max_mib = _max(e.master_rss_max_mib, master_rss)
        e.master_max_mib = _max(e.master_max_mib, master)
        e.pool_max_mib = _max(e.pool_max_mib, pool)
        if available is not None:
            e.available_min_mib = available if e.available_min_mib is None else min(e.available_min_mib, available)
        if spawn is not None and spawn > 0:
            _keep(e.spawn_times_s, spawn)

    def _recycled(self, event: dict[str, Any], host: _Host | None, ts: str) -> None:
        reason = _str(event, "reason") or "unknown"
        if host is None:
            return
        e = host.evidence
        e.recycles += 1
        if reason in e.recycle_reasons or len(e.recycle_reasons) < MAX_KEYS:
            e.recycle_reasons[reason] = e.recycle_reasons.get(reason, 0) + 1

    def _killed(self, event: dict[str, Any], host: _Host | None, ts: str) -> None:
        name = _str(event, "task")
        if host is None:
            return
        host.evidence.kills += 1
        task = self._task(host, name) if name else None
        if task is not None:
            task.killed += 1

    def _lost(self, event: dict[str, Any], host: _Host | None, ts: str) -> None:
        name, task_id = _str(event, "task"), _str(event, "task_id")
        mem = _mib(event, "last_mem_mib")
        likely = event.get("likely_oom")
        if likely is not None and not isinstance(likely, bool):
            raise _Invalid("likely_oom")
        if host is None:
            return
        e = host.evidence
        e.lost += 1
        e.lost_oom += bool(likely)
        e.lost_max_mem_mib = _max(e.lost_max_mem_mib, mem)
        task = self._task(host, name) if name else None
        if task is None:
            return
        task.lost += 1
        if task_id:
            ids = host.lost_ids.setdefault(name or "", {})
            if task_id in ids or len(ids) < MAX_TASK_IDS:
                ids[task_id] = ids.get(task_id, 0) + 1
                if ids[task_id] > 1:
                    task.lost_again[task_id] = ids[task_id]
            else:
                self._refuse("lost task ids")

    def _heavy(self, event: dict[str, Any], host: _Host | None, ts: str) -> None:
        name = _str(event, "task", required=True) or ""
        peak = _mib(event, "peak_mib") or 0.0
        occurrences = _int(event, "occurrences") or 1
        if host is None:
            return
        task = self._task(host, name)
        if task is not None:
            task.heavy_calls += max(occurrences, 1)
            task.own_peak_max_mib = max(task.own_peak_max_mib, peak)

    def _leak(self, event: dict[str, Any], host: _Host | None, ts: str) -> None:
        name = _str(event, "task", required=True) or ""
        kib, confidence = _kib(event, "kib_per_call", required=True), _num(event, "confidence")
        if host is None:
            return
        task = self._task(host, name)
        if task is not None:
            task.leak_kib_per_call, task.leak_confidence = kib, confidence

    def _leak_cleared(self, event: dict[str, Any], host: _Host | None, ts: str) -> None:
        name = _str(event, "task", required=True) or ""
        if host is not None and name in host.evidence.tasks:
            host.evidence.tasks[name].leak_kib_per_call = None

    def _storm(self, event: dict[str, Any], host: _Host | None, ts: str) -> None:
        spawn = _seconds(event, "spawn_time_s")
        if host is not None and spawn is not None and spawn > 0:
            _keep(host.evidence.spawn_times_s, spawn)

    def _master_growth(self, event: dict[str, Any], host: _Host | None, ts: str) -> None:
        rate = _mib(event, "mib_per_hour", signed=True)
        if host is not None:
            host.evidence.master_growth_mib_per_hour = _max(host.evidence.master_growth_mib_per_hour, rate)

    # -- result -------------------------------------------------------------------------------------
    def build(self) -> list[Evidence]:
        out = []
        for name in sorted(self._hosts):
            host = self._hosts[name]
            if host.first is not None and host.last is not None:
                host.evidence.span_s = host.last - host.first
            out.append(host.evidence)
        return out


_Handler = Callable[[EvidenceCollector, dict[str, Any], "_Host | None", str], None]
_HANDLERS: dict[str, _Handler] = {
    events.STARTED: EvidenceCollector._started,
    events.SAMPLE: EvidenceCollector._sample,
    events.CHILD_RECYCLED: EvidenceCollector._recycled,
    events.TASK_KILLED: EvidenceCollector._killed,
    events.CHILD_LOST: EvidenceCollector._lost,
    events.HEAVY_TASK: EvidenceCollector._heavy,
    events.LEAK_SUSPECTED: EvidenceCollector._leak,
    events.LEAK_CLEARED: EvidenceCollector._leak_cleared,
    events.MASTER_GROWTH: EvidenceCollector._master_growth,
    events.RECYCLE_STORM: EvidenceCollector._storm,
}
