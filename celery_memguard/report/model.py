"""The report's data model: plain dataclasses the aggregator fills and the renderers read.

Nothing here parses or prints. ``dataclasses.asdict(report)`` is the ``--format
json`` output, so field names are part of the command's public interface
(``schema`` is bumped on incompatible changes).
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = [
    "SCHEMA",
    "SourceStats",
    "Site",
    "TypeGrowth",
    "Suspect",
    "HeavyTask",
    "Interventions",
    "LostChildren",
    "Episodes",
    "MasterGrowth",
    "ErrorItem",
    "HostReport",
    "Verdict",
    "Report",
]

SCHEMA = 1


@dataclass
class SourceStats:
    """One input file (or ``-`` for standard input) and what was found in it."""

    path: str
    lines: int = 0
    events: int = 0
    foreign: int = 0
    corrupt: int = 0
    console: int = 0
    compressed: str | None = None
    error: str | None = None
    readable: bool = True


@dataclass
class Site:
    """A source line where memory grew while a suspect ran (from ``memguard.leak_sites``)."""

    file: str
    line: int | None
    size_kib: float
    count: int | None


@dataclass
class TypeGrowth:
    """An object type that grew while a suspect ran (from ``memguard.leak_types``)."""

    type: str
    count: int | None
    size_kib: float


@dataclass
class Suspect:
    """A task named by ``memguard.leak_suspected`` on one host: its latest estimate and diagnostics."""

    task: str
    kib_per_call: float | None = None
    confidence: float | None = None
    calls_observed: int | None = None
    children: int | None = None
    projected_calls_to_soft_limit: int | None = None
    first_seen: str | None = None
    last_seen: str | None = None
    reports: int = 0
    cleared: bool = False
    cleared_reason: str | None = None
    sites: list[Site] = field(default_factory=list)
    types: list[TypeGrowth] = field(default_factory=list)

    @property
    def score(self) -> float:
        """Ranking key: KiB per call weighted by confidence (unknowns last)."""
        return (self.kib_per_call or 0.0) * (self.confidence if self.confidence is not None else 0.5)


@dataclass
class HeavyTask:
    """A task named by ``memguard.heavy_task`` on one host."""

    task: str
    occurrences: int = 0
    max_peak_mib: float = 0.0
    max_retained_mib: float = 0.0
    last_task_id: str | None = None
    last_pid: int | None = None
    last_seen: str | None = None
    advice: str | None = None


@dataclass
class Interventions:
    """What MemGuard did (or, in dry run, would have done) to pool children, counted by reason."""

    recycled: dict[str, int] = field(default_factory=dict)
    killed: dict[str, int] = field(default_factory=dict)
    would_recycle: dict[str, int] = field(default_factory=dict)
    would_kill: dict[str, int] = field(default_factory=dict)
    killed_tasks: dict[str, int] = field(default_factory=dict)
    recycled_during: dict[str, int] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(self.recycled.values()) + sum(self.killed.values())


@dataclass
class LostChildren:
    """Pool children killed by a signal MemGuard did not send (``memguard.child_lost``): OOM kills and others."""

    count: int = 0
    likely_oom: int = 0
    by_signal: dict[str, int] = field(default_factory=dict)
    tasks: dict[str, int] = field(default_factory=dict)  #: the task each child was running when it died
    max_last_mem_mib: float | None = None
    last_reason: str | None = None
    last_seen: str | None = None


@dataclass
class Episodes:
    """Events logged once per episode (``memguard.recycle_storm``, ``memguard.pressure_unrelieved``)."""

    count: int = 0
    cause: str | None = None  #: the latest episode's ``cause``
    last_seen: str | None = None


@dataclass
class MasterGrowth:
    """The latest ``memguard.master_growth`` of a host."""

    mem_mib: float | None = None
    mib_per_hour: float | None = None
    since_s: float | None = None
    growth_mib: float | None = None
    reserved: int | None = None
    note: str | None = None
    last_seen: str | None = None
    reports: int = 0


@dataclass
class ErrorItem:
    """``memguard.error`` lines with the same cause."""

    where: str
    error: str
    count: int = 0
    first_seen: str | None = None


@dataclass
class HostReport:
    """Everything found for one worker (Celery node name)."""

    hostname: str
    events: int = 0
    first_seen: str | None = None
    last_seen: str | None = None
    starts: int = 0
    config: dict[str, object] = field(default_factory=dict)
    suspects: list[Suspect] = field(default_factory=list)
    heavy: list[HeavyTask] = field(default_factory=list)
    interventions: Interventions = field(default_factory=Interventions)
    lost: LostChildren = field(default_factory=LostChildren)
    #: ``memguard.recycle_storm``: recycles held back by the rate limit.
    recycle_storms: Episodes = field(default_factory=Episodes)
    #: ``memguard.pressure_unrelieved``: memory pressure no pool child could relieve for good.
    pressure_unrelieved: Episodes = field(default_factory=Episodes)
    master: MasterGrowth | None = None
    errors: list[ErrorItem] = field(default_factory=list)
    unsupported_pools: list[str] = field(default_factory=list)
    other_events: dict[str, int] = field(default_factory=dict)

    @property
    def active_suspects(self) -> list[Suspect]:
        return [s for s in self.suspects if not s.cleared and s.kib_per_call is not None]


@dataclass
class Verdict:
    """The short conclusion: ``status`` is one of ``leak``, ``attention``, ``ok``, ``no-data``."""

    status: str
    headline: str
    findings: list[str] = field(default_factory=list)
    advice: list[str] = field(default_factory=list)


@dataclass
class Report:
    """The whole report over every input."""

    sources: list[SourceStats] = field(default_factory=list)
    hosts: list[HostReport] = field(default_factory=list)
    verdict: Verdict = field(default_factory=lambda: Verdict("no-data", "No MemGuard events found."))
    lines: int = 0
    events: int = 0
    foreign: int = 0
    corrupt: int = 0
    console: int = 0
    #: Events skipped as corrupt, by the field whose value was unusable (NaN, infinite, wrong type, ...).
    invalid: dict[str, int] = field(default_factory=dict)
    #: Occurrences not itemised because a table was full (``hosts``, ``suspects``, ``reasons``, ...): they are
    #: counted under ``(other)`` or ``(other hosts)``, or only here (suspects, heavy tasks, errors, sites).
    not_itemised: dict[str, int] = field(default_factory=dict)
    schema: int = SCHEMA

    @property
    def readable_sources(self) -> int:
        return sum(1 for s in self.sources if s.readable)
