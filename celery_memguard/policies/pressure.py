"""System memory pressure: recycle a child before the kernel's OOM killer picks one.

On Kubernetes with cgroup v2 one child's OOM kill takes the whole container down,
master included, so memguard acts first. The input is a
:class:`~celery_memguard.samples.SystemSample` measured by the caller (cgroup v2,
v1 or the host). The system is under pressure when the available memory is
below ``min_available``, or when the memory PSI ``some avg10`` is above
``psi_threshold``. Under pressure the policy recycles the largest *idle* child
first (it leaves at once and loses no work), else the largest busy one (after its
task). One victim at a time: while it is alive no other is chosen.

PSI ``avg10`` is a ten-second average, so it stays high for a while after memory
has been freed: when PSI alone signals pressure, the next victim is chosen only
``psi_settle`` seconds after the previous one has gone. Low available memory is
acted on at once.
"""

from __future__ import annotations

from typing import ClassVar, Sequence

from ..samples import Action, ChildSample, SystemSample, Violation
from .base import PoolPolicy, Verdict

__all__ = ["SystemPressure", "rank_idle_first"]


def rank_idle_first(children: Sequence[ChildSample]) -> list[ChildSample]:
    """Idle children from the largest to the smallest, then busy ones likewise."""
    return sorted(children, key=lambda c: (c.busy, -c.mem, c.pid))


class SystemPressure(PoolPolicy):
    """Under memory pressure, recycle the largest idle child, else the largest busy one; one at a time."""

    reason: ClassVar[str] = "pressure"

    def __init__(
        self,
        *,
        min_available: int | None = None,
        psi_threshold: float | None = None,
        psi_settle: float = 10.0,
    ) -> None:
        if min_available is None and psi_threshold is None:
            raise ValueError("set min_available, psi_threshold or both")
        if min_available is not None and min_available <= 0:
            raise ValueError("min_available must be > 0")
        if psi_threshold is not None and not 0 < psi_threshold < 100:
            raise ValueError("psi_threshold must be a percentage between 0 and 100")
        self.min_available = min_available
        self.psi_threshold = psi_threshold
        self.psi_settle = psi_settle
        self._victim: int | None = None
        self._ranking: tuple[tuple[int, int], ...] = ()
        self._gone_at: float | None = None
        self._victim_gone = False

    def trigger(self, system: SystemSample | None) -> str | None:
        """``"available"`` or ``"psi"`` if ``system`` is under pressure, else ``None``."""
        if system is None:
            return None
        if self.min_available is not None and system.available < self.min_available:
            return "available"
        psi = system.psi_some_avg10
        if self.psi_threshold is not None and psi is not None and psi > self.psi_threshold:
            return "psi"
        return None

    def check_pool(self, children: Sequence[ChildSample], now: float, system: SystemSample | None) -> list[Verdict]:
        by_pid = {c.pid: c for c in children}
        if self._victim is not None and self._victim not in by_pid:
            self.child_exited(self._victim)
        if self._victim_gone:
            self._victim_gone, self._gone_at = False, now
        trigger = self.trigger(system)
        if trigger is None or system is None:
            self._victim = None
            return []
        if self._victim is None and self._gone_at is not None and system.at < self._gone_at:
            return []  # a reading from before the last victim left: wait for one that shows its relief
        if self._victim is None:
            if trigger == "psi" and self._gone_at is not None and now - self._gone_at < self.psi_settle:
                return []  # PSI still reflects the pressure the last recycle relieved
            ranked = rank_idle_first([c for c in children if not c.leaving])
            if not ranked:
                return []
            self._victim = ranked[0].pid
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
