"""System memory pressure: recycle a child before the kernel's OOM killer picks one.

On Kubernetes with cgroup v2 one child's OOM kill takes the whole container down,
master included, so memguard acts first. The input is a
:class:`~celery_memguard.samples.SystemSample` measured by the caller (cgroup v2,
v1 or the host). The system is under pressure when the available memory is
below ``min_available``, or when the memory PSI ``some avg10`` is above
``psi_threshold``. Under pressure the policy recycles the largest *idle* child
first (it leaves at once and loses no work), else the largest busy one (after its
task). One victim at a time: while it is alive no other is chosen.

A victim's memory is freed a little *after* it looks gone: its ``/proc`` entry
reads RSS 0 as soon as the kernel detaches its address space, while the cgroup's
usage starts to drop ~15 ms later and falls gradually (300 MiB over ~40 ms,
measured on cgroup v1), and a reading cached from before the exit shows it all.
So once a victim has left, its last sampled memory is an *expected relief*, and
each reading is judged with the part of it the reading does not show yet added to
``available``: all of it for a reading taken before the exit was seen, else the
victim's memory minus the drop of ``used`` since the last reading taken while it
was alive. The relief is settled, and readings are taken at face value again, once
a reading shows all of it freed, or ``relief_settle`` seconds after the exit
(other children may have used the freed memory meanwhile, and the victim's sampled
memory may count pages shared with the master, which stay). One recycle that ends
the pressure thus never costs a second child; pressure that persists with the
relief credited takes the next victim at once, and pressure hidden only by the
credit does so ``relief_settle`` seconds after the exit.

A recycle relieves for good only what the child holds beyond what its replacement
will hold: a child just forked from the master. So the candidates are the
children resident at least ``min_relief`` bytes more than a fresh child, where a
fresh child's RSS is the smallest first reading of the last 8 children seen. RSS,
not the limit metric: copy-on-write copies of the master's pages raise USS but
not RSS, and a replacement makes them again. When no child is such a candidate
the pressure comes from elsewhere (the master, other processes in the container,
tmpfs, unreclaimable page cache) or from copy-on-write copies only: one
``memguard.pressure_unrelieved`` finding is logged per episode, and instead of a
fresh child every poll, the largest child (idle first) is recycled once the
episode has lasted ``retry_unrelieved`` seconds (30) with no candidate, then at
most once per ``retry_unrelieved``: that still frees copy-on-write copies in
time (they come back slowly), without a recycle storm. ``min_relief=None`` makes
every child a candidate.

Under pressure the policy asks for exact readings of every child (``threshold = 0``,
as the pool budget does; the engine then polls again at once) and picks its victim
from them: between exact readings a child's memory is only an upper bound (its RSS,
when no per-child limit asks for more), which cannot tell copy-on-write copies from
shared pages. The choice waits for that one extra poll, no longer.

The victim goes at once when idle; so may other idle candidates: when the pressure is low available
memory (also while intake is paused, see below, when available memory is below ``min_available``), the idle candidates after the victim (largest first) are ordered out together with it until
what they are expected to free (each one's RSS beyond a fresh child's) covers the shortfall
(``min_available`` minus available memory and the relief already expected). An idle child loses no
work, and memory that fills in under a second is not relieved one poll at a time. Busy candidates still
go one at a time, after their task. The victims' memory is credited as relief as each of them leaves.

With ``critical_available`` (``memguard_critical_available``, below ``min_available``), available memory
below it, relief credited, means the worker is about to be OOM-killed: the running task of the
fastest-growing busy child (its RSS grew since the previous poll, and it holds ``min_relief`` more than
a fresh child; the largest among equals) is stopped at once (``KILL``, hard: never debounced nor
deferred; trigger ``critical``), one at a time. A child whose task is not growing is never stopped for
it: memory held outside the tasks cannot be freed by stopping them. The stopped child's memory is credited
as relief when it leaves; if available memory is still below ``critical_available`` once that relief has
settled, stopping tasks does not free the memory: no task is stopped for ``retry_unrelieved`` seconds (one
``memguard.pressure_unrelieved`` finding, trigger ``critical``, each time).

While task intake is paused (:mod:`celery_memguard.policies.intake`, given as ``intake``) the
system counts as under pressure too (trigger ``"paused"``): the policy recycles as above until the
pause ends, so the memory the idle children hold comes back and intake can resume. Without that, a
pause threshold above ``min_available`` (or a pool threshold with no pool limit) would hold the worker
paused for good while its idle children keep their memory. When no child holds ``min_relief`` more
than a fresh one, recycling cannot reach the pause's resume level: nothing is recycled for the pause, one
``memguard.pressure_unrelieved`` finding names the setting, and after ``retry_unrelieved`` seconds the
pause is given up (:meth:`IntakePause.give_up`: intake resumes, that threshold disarmed until a reading
clears its resume level) instead of recycling a child every ``retry_unrelieved`` for good.

PSI ``avg10`` is a ten-second average, so it stays high for a while after memory
has been freed: when PSI alone signals pressure, the next victim is chosen only
``psi_settle`` seconds after the previous one has gone. Low available memory does
not wait for ``psi_settle``.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import ClassVar, Sequence

from ..config import DEFAULTS
from ..detectors.base import Finding
from ..events import PRESSURE_UNRELIEVED
from ..samples import Action, ChildSample, SystemSample, Violation
from ..units import mib
from .base import PoolPolicy, Verdict
from .intake import IntakePause

__all__ = ["SystemPressure", "rank_idle_first", "PRESSURE_UNRELIEVED"]

#: How many of the latest children's first RSS readings a fresh child's RSS is the smallest of.
FRESH_READINGS = 8

_UNRELIEVED = ("no pool child holds min_relief more than a freshly forked child: the memory is held outside the "
               "children (the master, other processes, tmpfs or page cache) or is copy-on-write copies a "
               "replacement makes again")


def rank_idle_first(children: Sequence[ChildSample]) -> list[ChildSample]:
    """Idle children from the largest to the smallest, then busy ones likewise."""
    return sorted(children, key=lambda c: (c.busy, -c.mem, c.pid))


@dataclass(slots=True)
class _Relief:
    """Memory a departed victim is expected to free, until readings show it freed."""

    mem: int  #: the victim's last sampled memory
    gone_at: float  #: the poll at which its exit was seen
    used_before: int | None  #: ``used`` in the last reading taken while it was alive (None: none seen)
    freed: int = 0  #: the largest drop of ``used`` a reading taken after the exit has shown

    def unseen(self, system: SystemSample, settle: float) -> int | None:
        """The part of the relief ``system`` does not show yet; None once it has had ``settle`` seconds to.

        Memory a reading showed freed stays freed: a later rise of ``used`` is other children's growth.
        """
        if system.at < self.gone_at:
            return self.mem - self.freed  # taken while the victim was still there
        if system.at >= self.gone_at + settle:
            return None
        if self.used_before is not None:
            self.freed = min(self.mem, max(self.freed, self.used_before - system.used))
        return self.mem - self.freed


class SystemPressure(PoolPolicy):
    """Under memory pressure, recycle the largest idle child, else the largest busy one; one at a time."""

    reason: ClassVar[str] = "pressure"

    def __init__(
        self,
        *,
        min_available: int | None = None,
        psi_threshold: float | None = None,
        psi_settle: float = 10.0,
        relief_settle: float = 1.0,
        min_relief: int | None = DEFAULTS["pressure_min_relief"],
        retry_unrelieved: float = DEFAULTS["pressure_retry"],
        critical_available: int | None = None,
        intake: IntakePause | None = None,
    ) -> None:
        if min_available is None and psi_threshold is None and intake is None:
            raise ValueError("set min_available, psi_threshold, intake or several")
        if critical_available is not None and (critical_available <= 0 or (
                min_available is not None and critical_available >= min_available)):
            raise ValueError("critical_available must be > 0 and below min_available")
        if min_available is not None and min_available <= 0:
            raise ValueError("min_available must be > 0")
        if psi_threshold is not None and not 0 < psi_threshold < 100:
            raise ValueError("psi_threshold must be a percentage between 0 and 100")
        if relief_settle < 0:
            raise ValueError("relief_settle must be >= 0")
        if min_relief is not None and min_relief <= 0:
            raise ValueError("min_relief must be > 0 (or None)")
        if retry_unrelieved < 0:
            raise ValueError("retry_unrelieved must be >= 0")
        self.min_available = min_available
        self.psi_threshold = psi_threshold
        self.psi_settle = psi_settle
        self.relief_settle = relief_settle
        self.min_relief = min_relief
        self.retry_unrelieved = retry_unrelieved
        self.critical_available = critical_available
        self._extra: dict[int, int] = {}  # idle children ordered out with the victim: pid -> last memory
        self._stopping: int | None = None  # the child whose task a critical shortage stopped, until it leaves
        self._stopping_mem = 0  # its last sampled memory: credited as relief when it leaves
        self._stop_gone_at: float | None = None  # when the last stopped child left (None: its relief showed)
        self._critical_hold: float | None = None  # a stop freed too little: no stop until retry_unrelieved after
        self._rss_seen: dict[int, tuple[int, float]] = {}  # pid -> (RSS, poll time) at the previous poll
        self.intake = intake
        self._victim: int | None = None
        self._victim_mem = 0
        self._ranking: tuple[tuple[int, int], ...] = ()
        self._gone_at: float | None = None
        self._victim_gone = False
        self._relief: _Relief | None = None
        self._last_system: SystemSample | None = None
        self._first_rss: deque[int] = deque(maxlen=FRESH_READINGS)  # first RSS of the latest children seen
        self._seen: set[int] = set()
        self._unrelieved_reported = False
        self._unrelieved_since: float | None = None  # no candidate since (reset by a fallback recycle)
        self._lasting = True  # whether the current victim was a candidate (else a fallback recycle)
        self._asked_exact = False  # exact readings asked for in this episode (threshold 0)
        self.threshold: int | None = None
        self._findings: list[Finding] = []

    @property
    def fresh_rss(self) -> int | None:
        """RSS of a child just forked (the smallest first reading of the latest children), None before any."""
        return min(self._first_rss) if self._first_rss else None

    def worth_recycling(self, child: ChildSample) -> bool:
        """Whether recycling ``child`` frees at least ``min_relief`` (always, before any child has been seen)."""
        fresh = self.fresh_rss
        return self.min_relief is None or fresh is None or child.rss - fresh >= self.min_relief

    def findings(self) -> list[Finding]:
        found, self._findings = self._findings, []
        return found

    def trigger(self, system: SystemSample | None, relief: int = 0) -> str | None:
        """``"available"``, ``"psi"`` or ``"paused"`` (intake paused) if under pressure, else ``None``.

        ``relief`` is memory about to be freed that ``system`` does not show yet: it counts as available.
        """
        if self.intake is not None and self.intake.paused:
            return "paused"
        if system is None:
            return None
        if self.min_available is not None and system.available + relief < self.min_available:
            return "available"
        psi = system.psi_some_avg10
        if self.psi_threshold is not None and psi is not None and psi > self.psi_threshold:
            return "psi"
        return None

    def pending_relief(self, system: SystemSample) -> int:
        """Memory of the last departed victim that ``system`` does not show freed yet (0 once settled)."""
        if self._relief is None:
            return 0
        unseen = self._relief.unseen(system, self.relief_settle)
        if not unseen:
            self._relief = None  # all of it shown, or had time to show: readings count as they are
            return 0
        return unseen

    def _expect_relief(self, children: dict[int, ChildSample], now: float) -> None:
        """Credit the memory of every victim (and child whose task was stopped) that left since the last poll as
        relief (one sum)."""
        gone = 0
        if self._stopping is not None:
            if self._stopping in children:
                self._stopping_mem = children[self._stopping].mem
            else:  # the child whose task a critical shortage stopped has left: its memory is a relief too
                if self._stopping != self._victim and self._stopping not in self._extra:  # else credited below
                    gone = self._stopping_mem
                self._stopping, self._stop_gone_at = None, now
        if self._victim is not None and self._victim not in children:
            self.child_exited(self._victim)
        if self._victim is not None:
            self._victim_mem = children[self._victim].mem
        for pid in [p for p in self._extra if p not in children]:
            gone += self._extra.pop(pid)
        for pid in self._extra:
            self._extra[pid] = children[pid].mem
        if self._victim_gone:
            gone += self._victim_mem
        if not gone:
            return
        used_before = self._last_system.used if self._last_system is not None else None
        if self._relief is not None:  # a relief still expected: the new one adds to what is still unseen
            gone += self._relief.mem - self._relief.freed
        self._victim_gone, self._gone_at = False, now
        self._relief = _Relief(gone, now, used_before)

    def check_pool(self, children: Sequence[ChildSample], now: float, system: SystemSample | None) -> list[Verdict]:
        by_pid = {c.pid: c for c in children}
        for child in children:
            if child.pid not in self._seen:
                self._seen.add(child.pid)
                self._first_rss.append(child.rss)
        self._expect_relief(by_pid, now)
        if system is not None:
            self._last_system = system
        relief = self.pending_relief(system) if system is not None else 0
        trigger = self.trigger(system, relief)
        stop = self._critical(children, now, system, relief)
        if trigger is None:
            self._unrelieved_reported, self._unrelieved_since = False, None
            # The intake pause judges its pool threshold on exact readings only: ask for them when it needs them.
            self.threshold = 0 if self.intake is not None and self.intake.wants_exact else None
            self._asked_exact = False
            if self._victim is not None and not by_pid[self._victim].leaving:
                self._victim = None  # named but not ordered out: choose afresh at the next pressure
            self._extra = {pid: mem for pid, mem in self._extra.items() if by_pid[pid].leaving}
            return stop  # a victim already leaving stays tracked, so its relief is expected when it goes
        if self._victim is None and not self._extra:
            if trigger == "psi" and self._gone_at is not None and now - self._gone_at < self.psi_settle:
                return []  # PSI still reflects the pressure the last recycle relieved
            staying = [c for c in children if not c.leaving]
            self.threshold = 0  # exact readings of every child while the pressure lasts
            if not self._asked_exact and not all(c.exact for c in staying):
                self._asked_exact = True
                return []  # choose from exact readings, taken at the next poll (at once)
            ranked = rank_idle_first([c for c in staying if self.worth_recycling(c)])
            self._lasting = bool(ranked)
            if not ranked:
                if not staying or any(c.leaving for c in children):
                    return []  # nothing to choose, or a departure may still end the pressure
                self._report_unrelieved(staying, system, trigger)
                if self._unrelieved_since is None:
                    self._unrelieved_since = now
                if now - self._unrelieved_since < self.retry_unrelieved:
                    return []
                self._unrelieved_since = now  # the next fallback no sooner than retry_unrelieved from now
                if trigger == "paused" and self.intake is not None:
                    # Fresh children cannot bring the pause's reading to its resume level: recycling would go on
                    # for nothing, so the pause is given up (resumed at the next reading, threshold disarmed).
                    self.intake.give_up()
                    return []
                ranked = rank_idle_first(staying)
            self._victim, self._victim_mem = ranked[0].pid, ranked[0].mem
            self._ranking = tuple((c.pid, c.mem) for c in ranked)
            target = self._sweep_target(trigger)
            if target is not None and system is not None and self._lasting:
                self._extra = self._idle_sweep(ranked, system, relief, target)
        named = ([self._victim] if self._victim is not None else []) + list(self._extra)
        return stop + [(pid, self._violation(trigger, system, by_pid[pid])) for pid in named
                       if pid in by_pid and pid != self._stopping]

    def _violation(self, trigger: str, system: SystemSample | None, child: ChildSample) -> Violation:
        detail = (
            ("trigger", trigger),
            ("available", system.available if system is not None else None),
            ("min_available", self.min_available),
            ("psi_some_avg10", system.psi_some_avg10 if system is not None else None),
            ("psi_threshold", self.psi_threshold),
            ("idle", not child.busy),
            ("lasting_relief", self._lasting),
        )
        return Violation(Action.RECYCLE, self.reason, self.min_available or 0, ranking=self._ranking, detail=detail)

    def _expected(self, child: ChildSample) -> int:
        """What recycling ``child`` frees for good: its RSS beyond a fresh child's (all of it before any is known)."""
        return max(0, child.rss - (self.fresh_rss or 0))

    def _sweep_target(self, trigger: str) -> int | None:
        """The available memory an idle sweep aims for: ``min_available`` (also while intake is paused: above
        it a paused worker recycles one idle child at a time, as each replacement's start costs memory and CPU
        too; sweeping 8 children at 35 % available forked a storm that ran an overload out of memory)."""
        return self.min_available if trigger in ("available", "paused") else None

    def _idle_sweep(self, ranked: Sequence[ChildSample], system: SystemSample, relief: int,
                    target: int) -> dict[int, int]:
        """Idle candidates after the (idle) victim, largest first, until their expected relief covers the
        shortfall of available memory below ``target``."""
        if ranked[0].busy:
            return {}
        shortfall = target - system.available - relief - self._expected(ranked[0])
        sweep: dict[int, int] = {}
        for child in ranked[1:]:
            if shortfall <= 0 or child.busy:
                break
            sweep[child.pid] = child.mem
            shortfall -= self._expected(child)
        return sweep

    def _critical(self, children: Sequence[ChildSample], now: float, system: SystemSample | None,
                  relief: int) -> list[Verdict]:
        """Below ``critical_available``: stop the task of the fastest-growing busy child (see module doc)."""
        seen, self._rss_seen = self._rss_seen, {c.pid: (c.rss, now) for c in children}
        if self.critical_available is None or system is None or self._stopping is not None:
            return []
        if system.available >= self.critical_available:
            self._stop_gone_at = None  # the last stop's relief showed
        if system.available + relief >= self.critical_available or self._held_critical(children, now, system):
            return []
        growing = []
        for child in children:
            before = seen.get(child.pid)
            if not child.busy or child.pending is Action.KILL or before is None or now <= before[1]:
                continue
            rate = (child.rss - before[0]) / (now - before[1])
            if rate > 0 and self.worth_recycling(child):
                growing.append((rate, child.rss, child))
        if not growing:
            return []
        rate, _, victim = max(growing, key=lambda g: (g[0], g[1]))
        self._stopping, self._stopping_mem = victim.pid, victim.mem
        detail = (("trigger", "critical"), ("available", system.available),
                  ("critical_available", self.critical_available), ("growth_mib_per_s", round(rate / 2**20, 1)),
                  ("idle", False), ("lasting_relief", True))
        return [(victim.pid, Violation(Action.KILL, self.reason, self.critical_available, detail=detail, hard=True))]

    def _held_critical(self, children: Sequence[ChildSample], now: float, system: SystemSample) -> bool:
        """Whether no task may be stopped now: the last stop's memory had ``relief_settle`` seconds to show
        and available memory is still below ``critical_available`` (stopping tasks does not free the memory:
        it is held outside them), so none is stopped for ``retry_unrelieved`` seconds (one finding each time)."""
        if self._critical_hold is not None and now - self._critical_hold < self.retry_unrelieved:
            return True
        if self._stop_gone_at is None or self._relief is not None:
            return False  # no stop, or its relief is still expected (it settles once shown or relief_settle after)
        self._critical_hold, self._stop_gone_at = now, None
        self._report_unrelieved(children, system, "critical", cause=(
            f"available memory ({mib(system.available)} MiB) is still below memguard_critical_available "
            f"({mib(self.critical_available)} MiB) {self.relief_settle:g} s after a stopped task's child left: "
            f"the memory is held outside the worker's tasks; no task is stopped for retry_s seconds"))
        return True

    def _report_unrelieved(self, children: Sequence[ChildSample], system: SystemSample | None, trigger: str,
                           cause: str | None = None) -> None:
        """One finding per episode: under pressure, and no child holds ``min_relief`` more than a fresh one
        (with ``cause``: a critical stop that freed too little, reported at each hold)."""
        if cause is None:
            if self._unrelieved_reported:
                return
            self._unrelieved_reported = True
            cause = _UNRELIEVED
            if trigger == "paused" and self.intake is not None:
                cause = self._unreachable_cause(children, system) + "; " + cause
        fresh = self.fresh_rss or 0
        largest = max(children, key=lambda c: c.rss)
        self._findings.append(Finding(PRESSURE_UNRELIEVED, {
            "trigger": trigger,
            "available": system.available if system is not None else None,
            "min_available": self.min_available,
            "psi_some_avg10": system.psi_some_avg10 if system is not None else None,
            "psi_threshold": self.psi_threshold,
            "children": len(children),
            "children_rss_mib": mib(sum(c.rss for c in children)),
            "fresh_rss_mib": mib(fresh),
            "largest_pid": largest.pid,
            "largest_relief_mib": mib(largest.rss - fresh),
            "min_relief_mib": mib(self.min_relief or 0),
            "cause": cause,
            "retry_s": self.retry_unrelieved,
        }))

    def _unreachable_cause(self, children: Sequence[ChildSample], system: SystemSample | None) -> str:
        """Why a paused worker cannot resume by recycling: the setting, its value, the reading, the resume level."""
        intake = self.intake
        assert intake is not None
        if intake.trigger == "available":
            setting, value, level = "memguard_pause_below", intake.pause_below, intake.resume_available
            reading = f"available {mib(system.available) if system is not None else None} MiB"
        else:
            setting, value, level = "memguard_pause_pool_above", intake.pool_above, intake.resume_pool
            reading = f"pool {mib(sum(c.mem for c in children))} MiB"
        return (f"intake is paused on {setting}={mib(value)} MiB ({reading}) and its resume level "
                f"({mib(level)} MiB) cannot be reached with fresh children: intake resumes in retry_s seconds "
                f"with {setting} disarmed until a reading is clear of the resume level")

    def child_exited(self, pid: int) -> None:
        if pid == self._stopping and (pid == self._victim or pid in self._extra):
            self._stopping_mem = 0  # credited as the recycle victim's relief
        self._seen.discard(pid)
        self._rss_seen.pop(pid, None)
        if pid == self._victim:
            self._victim, self._victim_gone = None, True

    def __repr__(self) -> str:
        return (f"SystemPressure(min_available={self.min_available}, psi_threshold={self.psi_threshold}, "
                f"min_relief={self.min_relief}, intake={self.intake!r})")
