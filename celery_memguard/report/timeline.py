"""Memory timelines for the HTML report: ``memguard.sample`` series and event markers, bounded in memory.

:class:`Timelines` is fed the same event dicts as the
:class:`~.aggregate.Aggregator`, in any order (several files, rotated logs). Per
host it keeps one series per pool slot (the child's memory in the configured
metric, and its RSS), one for the master, one for the pool total and one for the
available memory, plus markers: recycles, kills, children lost, leak suspicions
and master growth, each with the text shown when the pointer rests on it.

Memory is bounded whatever the input:

* a series keeps at most ``2 * MAX_POINTS`` points; when full it is downsampled
  to ``MAX_POINTS`` equal time buckets over its whole span, keeping each
  bucket's highest reading (a peak is never averaged away), so a day of
  one-second samples and a minute of them draw the same number of points;
* at most :data:`MAX_SERIES` series over all hosts (:data:`MAX_SLOTS` slots per
  host) and :data:`MAX_MARKERS` markers are kept; what does not fit is counted
  in :attr:`Timelines.not_drawn` and the report says so;
* a malformed value skips that reading (counted in :attr:`Timelines.invalid`),
  never raises.

Times are seconds since the epoch (the events' ``ts``, ISO 8601 UTC); memory is MiB.
"""

from __future__ import annotations

import datetime as _dt
import math
from array import array
from dataclasses import dataclass, field
from typing import Any

from .. import events

__all__ = ["Timelines", "Series", "Marker", "HostTimeline", "MAX_POINTS", "MAX_SERIES", "MAX_SLOTS", "MAX_MARKERS",
           "MAX_TIMELINE_HOSTS", "MAX_PIDS", "parse_ts"]

#: Points drawn per series at most (a series buffers up to twice this between downsamplings).
MAX_POINTS = 600
#: Series kept over all hosts (a slot, the master, the pool total, the available memory: one each).
MAX_SERIES = 256
#: Hosts whose timelines are drawn.
MAX_TIMELINE_HOSTS = 32
#: Pool slots drawn per host.
MAX_SLOTS = 64
#: Markers kept over all hosts.
MAX_MARKERS = 2000
#: Child pids whose pool slot is remembered (to draw a recycle on its slot's own chart), over all hosts.
MAX_PIDS = 10_000
#: Characters kept of a marker's hover text.
MAX_LABEL = 300
#: The finest time bucket: 2**-10 s (about a millisecond, the events' ``ts`` resolution).
_FINEST = -10
#: Largest memory value drawn (MiB): 8 PiB, as the config's largest size.
_MAX_MIB = float(2**33)

#: Marker kinds, in drawing order (later on top).
KINDS = ("leak", "growth", "recycle", "lost", "kill")


def parse_ts(value: Any) -> float | None:
    """``ts`` (ISO 8601) as seconds since the epoch (UTC when no offset is given); None if unusable."""
    if type(value) is not str or not 10 <= len(value) <= 40:
        return None
    text = value[:-1] + "+00:00" if value.endswith(("Z", "z")) else value
    try:
        moment = _dt.datetime.fromisoformat(text)
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=_dt.timezone.utc)
    try:
        return moment.timestamp()
    except (OverflowError, OSError, ValueError):
        return None


def _mib(value: Any) -> float | None:
    """A finite, non-negative MiB value, else None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        number = float(value)
    except OverflowError:
        return None
    if not math.isfinite(number) or number < 0 or number > _MAX_MIB:
        return None
    return number


class Series:
    """One line of a chart: (time, value, second value) points, downsampled to stay bounded.

    Points are grouped in time buckets of ``2**k`` seconds on a grid fixed to the epoch; each bucket keeps
    its reading with the highest value (the earliest of equal ones). ``k`` starts below a millisecond and
    grows by one (buckets pairwise merged, as the grid nests) whenever more than :data:`MAX_POINTS` buckets
    are occupied. The result is the same whatever order the points come in: ``k`` ends as the smallest
    for which all the points fit, as a subset never needs a larger one.
    """

    __slots__ = ("name", "_t", "_v", "_w", "_k", "merged")

    def __init__(self, name: str) -> None:
        self.name = name
        self._t = array("d")
        self._v = array("d")
        self._w = array("d")  # RSS beside a child's metric or the master's; unused (0) elsewhere
        self._k = _FINEST
        self.merged = 0  # readings folded into a bucket's peak by downsampling

    def add(self, t: float, value: float, second: float = 0.0) -> None:
        self._t.append(t)
        self._v.append(value)
        self._w.append(second)
        if len(self._t) >= 2 * MAX_POINTS:
            self._downsample()

    def __len__(self) -> int:
        return len(self._t)

    def _downsample(self) -> None:
        """One point per occupied bucket, coarsening the grid until at most MAX_POINTS buckets are occupied."""
        t, v = self._t, self._v
        while True:
            width = 2.0 ** self._k
            best: dict[int, int] = {}
            for i in range(len(t)):
                bucket = math.floor(t[i] / width)
                kept = best.get(bucket)
                if kept is None or v[i] > v[kept] or (v[i] == v[kept] and t[i] < t[kept]):
                    best[bucket] = i
            if len(best) <= MAX_POINTS:
                break
            self._k += 1
        if len(best) == len(t):
            return
        keep = sorted(best.values(), key=t.__getitem__)
        self.merged += len(t) - len(keep)
        self._t = array("d", (t[i] for i in keep))
        self._v = array("d", (v[i] for i in keep))
        self._w = array("d", (self._w[i] for i in keep))

    def points(self) -> list[tuple[float, float, float]]:
        """The points in time order, at most :data:`MAX_POINTS` of them."""
        self._downsample()
        return sorted(zip(self._t, self._v, self._w))


@dataclass
class Marker:
    """An event drawn on a timeline: ``kind`` is one of :data:`KINDS`; ``mib`` its height (None: on the top edge)."""

    t: float
    kind: str
    label: str
    mib: float | None = None
    chart: str = "pool"  #: ``pool`` (the children's chart) or ``master``
    pid: int | None = None  #: the pool child the event is about (its slot is looked up in the samples)


@dataclass
class HostTimeline:
    """One host's series and markers."""

    hostname: str
    slots: dict[int, Series] = field(default_factory=dict)  #: pool slot -> its children's memory (and RSS)
    master: Series | None = None
    pool: Series | None = None
    available: Series | None = None
    markers: list[Marker] = field(default_factory=list)
    samples: int = 0
    metric: str | None = None
    soft_limit_mib: float | None = None
    hard_limit_mib: float | None = None
    pool_limit_mib: float | None = None  #: memguard_pool_limit (drawn on the pool total's chart)
    min_available_mib: float | None = None  #: memguard_min_available (drawn on the available memory's line)
    limits_ts: str = ""
    #: Pool slot of each child pid seen in the samples (at most :data:`MAX_PIDS` over all hosts).
    pid_slots: dict[int, int] = field(default_factory=dict)

    def slot_of(self, marker: Marker) -> int | None:
        return self.pid_slots.get(marker.pid) if marker.pid is not None else None

    def span(self) -> tuple[float, float] | None:
        """First and last time over every series and marker, or None when there is nothing to draw."""
        times: list[float] = [m.t for m in self.markers]
        for series in (*self.slots.values(), self.master, self.pool, self.available):
            if series is not None and len(series):
                pts = series.points()
                times += [pts[0][0], pts[-1][0]]
        return (min(times), max(times)) if times else None


def _text(value: Any, limit: int = 120) -> str:
    text = value if isinstance(value, str) else ("" if value is None else str(value))
    text = "".join(c if c.isprintable() else "?" for c in text[:limit])
    return text


class Timelines:
    """Collects the timelines of a stream of events; see the module docstring for its bounds."""

    def __init__(self) -> None:
        self.hosts: dict[str, HostTimeline] = {}
        self.series = 0
        self.markers = 0
        self.pids = 0
        #: What could not be drawn because a cap was reached, by what: ``series``, ``slots``, ``markers``.
        self.not_drawn: dict[str, int] = {}
        #: Readings skipped because a value was unusable.
        self.invalid = 0

    def _refuse(self, what: str, count: int = 1) -> None:
        self.not_drawn[what] = self.not_drawn.get(what, 0) + count

    def _host(self, event: dict[str, Any]) -> HostTimeline | None:
        name = _text(event.get("hostname"), 200) or "(unknown host)"
        host = self.hosts.get(name)
        if host is None:
            if len(self.hosts) >= MAX_TIMELINE_HOSTS:
                self._refuse("hosts")
                return None
            host = self.hosts[name] = HostTimeline(hostname=name)
        return host

    def _series(self, host: HostTimeline, attr: str, name: str) -> Series | None:
        found = getattr(host, attr)
        if found is None:
            if self.series >= MAX_SERIES:
                self._refuse("series")
                return None
            self.series += 1
            found = Series(name)
            setattr(host, attr, found)
        return found

    def _slot(self, host: HostTimeline, slot: int) -> Series | None:
        found = host.slots.get(slot)
        if found is None:
            if len(host.slots) >= MAX_SLOTS:
                self._refuse("slots")
                return None
            if self.series >= MAX_SERIES:
                self._refuse("series")
                return None
            self.series += 1
            found = host.slots[slot] = Series(f"slot {slot}")
        return found

    def feed(self, event: dict[str, Any]) -> None:
        """Take one event (any event: those without a timeline role are ignored); never raises."""
        try:
            name = event.get("event")
            handler = _HANDLERS.get(name) if isinstance(name, str) else None
            if handler is None:
                return
            t = parse_ts(event.get("ts"))
            if t is None:
                self.invalid += 1
                return
            host = self._host(event)
            if host is not None:
                handler(self, host, event, t)
        except Exception:  # a value no check foresaw: skip the reading, never a traceback
            self.invalid += 1

    # -- handlers ------------------------------------------------------------------
    def _started(self, host: HostTimeline, event: dict[str, Any], t: float) -> None:
        ts = event.get("ts") if isinstance(event.get("ts"), str) else ""
        if ts >= host.limits_ts:  # the latest start's limits and metric
            host.limits_ts = ts
            host.soft_limit_mib = _mib(event.get("soft_limit_mib"))
            host.hard_limit_mib = _mib(event.get("hard_limit_mib"))
            host.pool_limit_mib = _mib(event.get("pool_limit_mib"))
            host.min_available_mib = _mib(event.get("min_available_mib"))
            metric = event.get("metric")
            host.metric = _text(metric, 10) if isinstance(metric, str) else host.metric

    def _sample(self, host: HostTimeline, event: dict[str, Any], t: float) -> None:
        host.samples += 1
        metric = event.get("metric")
        if isinstance(metric, str) and host.metric is None:
            host.metric = _text(metric, 10)
        for attr, key, second in (("master", "master_mib", "master_rss_mib"), ("pool", "pool_mib", "pool_rss_mib"),
                                  ("available", "available_mib", None)):
            value = _mib(event.get(key))
            if value is None:
                if event.get(key) is not None:
                    self.invalid += 1
                continue
            series = self._series(host, attr, attr)
            if series is not None:
                series.add(t, value, (_mib(event.get(second)) or 0.0) if second else 0.0)
        children = event.get("children")
        if not isinstance(children, list):
            if children is not None:
                self.invalid += 1
            return
        for child in children[: 4 * MAX_SLOTS]:
            if not isinstance(child, dict):
                self.invalid += 1
                continue
            slot, mem = child.get("slot"), _mib(child.get("mem_mib"))
            if isinstance(slot, bool) or not isinstance(slot, int) or not 0 <= slot < 1 << 20 or mem is None:
                if slot is not None:
                    self.invalid += 1
                continue
            series = self._slot(host, slot)
            if series is not None:
                series.add(t, mem, _mib(child.get("rss_mib")) or 0.0)
                pid = child.get("pid")
                if type(pid) is int and pid not in host.pid_slots and self.pids < MAX_PIDS:
                    self.pids += 1
                    host.pid_slots[pid] = slot

    def _marker(self, host: HostTimeline, marker: Marker, event: dict[str, Any] | None = None) -> None:
        if self.markers >= MAX_MARKERS:
            self._refuse("markers")
            return
        self.markers += 1
        marker.label = _text(marker.label, MAX_LABEL)
        pid = event.get("pid") if event is not None else None
        marker.pid = pid if type(pid) is int else None
        host.markers.append(marker)

    def _intervention(self, host: HostTimeline, event: dict[str, Any], t: float) -> None:
        name = event["event"]
        kind = "kill" if name in (events.TASK_KILLED, events.WOULD_KILL) else "recycle"
        verb = {events.CHILD_RECYCLED: "recycled", events.TASK_KILLED: "task stopped",
                events.WOULD_RECYCLE: "would recycle", events.WOULD_KILL: "would stop task"}[name]
        mem, limit = _mib(event.get("mem_mib")), _mib(event.get("limit_mib"))
        label = (f"{verb} ({_text(event.get('reason'))}): pid {_text(event.get('pid'))}"
                 + (f", {mem:,.1f} MiB" if mem is not None else "")
                 + (f" (limit {limit:,.1f} MiB)" if limit is not None else "")
                 + (f", task {_text(event.get('task'))} {_text(event.get('task_id'), 40)}" if event.get("task") else "")
                 + (f", signal {_text(event.get('signal'))}" if event.get("signal") else ""))
        self._marker(host, Marker(t, kind, f"{_clock(t)} {label}", mem), event)

    def _lost(self, host: HostTimeline, event: dict[str, Any], t: float) -> None:
        mem = _mib(event.get("last_mem_mib"))
        label = (f"child lost: pid {_text(event.get('pid'))}, {_text(event.get('signal')) or 'exit code ' + _text(event.get('exitcode'))}"
                 + (" (likely OOM kill)" if event.get("likely_oom") is True else "")
                 + (f", running {_text(event.get('task'))}" if event.get("task") else "")
                 + (f", last reading {mem:,.1f} MiB" if mem is not None else ""))
        self._marker(host, Marker(t, "lost", f"{_clock(t)} {label}", mem), event)

    def _leak(self, host: HostTimeline, event: dict[str, Any], t: float) -> None:
        kib, confidence = _mib(event.get("kib_per_call")), _mib(event.get("confidence"))
        label = (f"leak suspected: {_text(event.get('task'))}"
                 + (f", {kib:,.1f} KiB/call" if kib is not None else "")
                 + (f", confidence {confidence:.2f}" if confidence is not None else ""))
        self._marker(host, Marker(t, "leak", f"{_clock(t)} {label}", None))

    def _growth(self, host: HostTimeline, event: dict[str, Any], t: float) -> None:
        mem, growth, rate = _mib(event.get("mem_mib")), _mib(event.get("growth_mib")), _mib(event.get("mib_per_hour"))
        label = ("master growth"
                 + (f": +{growth:,.1f} MiB" if growth is not None else "")
                 + (f" ({rate:,.1f} MiB/h)" if rate is not None else "")
                 + (f", now {mem:,.1f} MiB" if mem is not None else ""))
        self._marker(host, Marker(t, "growth", f"{_clock(t)} {label}", mem, chart="master"))


def _clock(t: float) -> str:
    return _dt.datetime.fromtimestamp(t, _dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


_HANDLERS = {
    events.STARTED: Timelines._started,
    events.SAMPLE: Timelines._sample,
    events.CHILD_RECYCLED: Timelines._intervention,
    events.TASK_KILLED: Timelines._intervention,
    events.WOULD_RECYCLE: Timelines._intervention,
    events.WOULD_KILL: Timelines._intervention,
    events.CHILD_LOST: Timelines._lost,
    events.LEAK_SUSPECTED: Timelines._leak,
    events.MASTER_GROWTH: Timelines._growth,
}
