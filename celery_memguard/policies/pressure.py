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

PSI ``avg10`` is a ten-second average, so it stays high for a while after memory
has been freed: when PSI alone signals pressure, the next victim is chosen only
``psi_settle`` seconds after the previous one has gone. Low available memory does
not wait for ``psi_settle``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Sequence

from ..samples import Action, ChildSample, SystemSample, Violation
from .base import PoolPolicy, Verdict

__all__ = ["SystemPressure", "rank_idle_first"]


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
    ) -> None:
        if min_available is None and psi_threshold is None:
            raise ValueError("set min_available, psi_threshold or both")
        if min_available is not None and min_available <= 0:
            raise ValueError("min_available must be > 0")
        if psi_threshold is not None and not 0 < psi_threshold < 100:
            raise ValueError("psi_threshold must be a percentage between 0 and 100")
        if relief_settle < 0:
            raise ValueError("relief_settle must be >= 0")
        self.min_available = min_available
        self.psi_threshold = psi_threshold
        self.psi_settle = psi_settle
        self.relief_settle = relief_settle
        self._victim: int | None = None
        self._victim_mem = 0
        self._ranking: tuple[tuple[int, int], ...] = ()
        self._gone_at: float | None = None
        self._victim_gone = False
        self._relief: _Relief | None = None
        self._last_system: SystemSample | None = None

    def trigger(self, system: SystemSample | None, relief: int = 0) -> str | None:
        """``"available"`` or ``"psi"`` if ``system`` is under pressure, else ``None``.

        ``relief`` is memory about to be freed that ``system`` does not show yet: it counts as available.
        """
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

    def check_pool(self, children: Sequence[ChildSample], now: float, system: SystemSample | None) -> list[Verdict]:
        by_pid = {c.pid: c for c in children}
        if self._victim is not None and self._victim not in by_pid:
            self.child_exited(self._victim)
        if self._victim is not None:
            self._victim_mem = by_pid[self._victim].mem
        if self._victim_gone:
            used_before = self._last_system.used if self._last_system is not None else None
            self._victim_gone, self._gone_at = False, now
            self._relief = _Relief(self._victim_mem, now, used_before)
        if system is not None:
            self._last_system = system
        relief = self.pending_relief(system) if system is not None else 0
        trigger = self.trigger(system, relief)
        if trigger is None or system is None:
            if self._victim is not None and not by_pid[self._victim].leaving:
                self._victim = None  # named but not ordered out: choose afresh at the next pressure
            return []  # a victim already leaving stays tracked, so its relief is expected when it goes
        if self._victim is None:
            if trigger == "psi" and self._gone_at is not None and now - self._gone_at < self.psi_settle:
                return []  # PSI still reflects the pressure the last recycle relieved
            ranked = rank_idle_first([c for c in children if not c.leaving])
            if not ranked:
                return []
            self._victim, self._victim_mem = ranked[0].pid, ranked[0].mem
            self._ranking = tuple((c.pid, c.mem) for c in ranked)
        detail = (
            ("trigger", trigger),
            ("available", system.available),
            ("min_available", self.min_available),
            ("psi_some_avg10", system.psi_some_avg10),
            ("psi_threshold", self.psi_threshold),
            ("idle", not by_pid[self._victim].busy),
        )
        violation = Violation(Action.RECYCLE, self.reason, self.min_available or 0, ranking=self._ranking,
                              detail=detail)
        return [(self._victim, violation)]

    def child_exited(self, pid: int) -> None:
        if pid == self._victim:
            self._victim, self._victim_gone = None, True

    def __repr__(self) -> str:
        return f"SystemPressure(min_available={self.min_available}, psi_threshold={self.psi_threshold})"
