"""Leak projection: recycle a leaking child while it is idle, before it reaches its limit mid-burst.

A child holding a confirmed leak grows by ``leak_bytes_per_call`` per task call
(the caller fills that field from the leak detector's suspects; 0 means no
confirmed leak). At ``calls_per_second`` (or, when that is unknown, its average
call rate ``tasks_run / lifetime``) it grows by ``rate = leak_bytes_per_call *
calls_per_second`` bytes per second. If ``mem + rate * horizon`` exceeds
``limit`` (normally the soft limit), the child would reach the limit within the
horizon; it is recycled now if it is idle, and at a later idle poll otherwise,
so the restart happens in a quiet moment rather than at the limit in the middle
of a burst of tasks.

The leak is already confirmed upstream and the policy acts only at idle polls, so
strikes do not apply to it (``debounce = False``): an idle poll is rare in a busy
pool, and requiring several in a row would postpone the recycle to the limit.
Only exact readings are evidence. The policy's ``threshold`` follows the lowest
memory at which it could act on any leaking child, so the prober reads those
children exactly from there on.
"""

from __future__ import annotations

from typing import ClassVar

from ..config import DEFAULTS
from ..samples import Action, ChildSample, Violation
from .base import Policy

__all__ = ["LeakProjection", "leak_rate"]


def leak_rate(child: ChildSample, now: float) -> float:
    """Bytes per second ``child`` is projected to grow by its confirmed leak (0.0 if none or unknown)."""
    if child.leak_bytes_per_call <= 0:
        return 0.0
    calls = child.calls_per_second
    if calls <= 0 and child.spawned_at and child.tasks_run > 0 and now > child.spawned_at:
        calls = child.tasks_run / (now - child.spawned_at)
    return child.leak_bytes_per_call * calls if calls > 0 else 0.0


class LeakProjection(Policy):
    """Recycle an idle child whose leak would take it past ``limit`` within ``horizon`` seconds."""

    reason: ClassVar[str] = "leak_projection"
    debounce: ClassVar[bool] = False  # not a noisy reading: strikes would only delay it

    def __init__(self, *, limit: int, horizon: float = DEFAULTS["leak_horizon"], idle_only: bool = True) -> None:
        if limit <= 0:
            raise ValueError("limit must be > 0")
        if horizon <= 0:
            raise ValueError("horizon must be > 0")
        self.limit = limit
        self.horizon = horizon
        self.idle_only = idle_only
        self.threshold: int | None = None
        self._acts_above: dict[int, int] = {}  # pid -> memory from which this policy would act

    def check(self, child: ChildSample, now: float) -> Violation | None:
        rate = leak_rate(child, now)
        if rate <= 0:
            if self._acts_above.pop(child.pid, None) is not None:
                self._update_threshold()
            return None
        acts_above = max(0, int(self.limit - rate * self.horizon))
        if self._acts_above.get(child.pid) != acts_above:
            self._acts_above[child.pid] = acts_above
            self._update_threshold()
        if not child.exact or child.mem <= acts_above:
            return None
        if self.idle_only and child.busy:
            return None  # wait for an idle moment
        eta = max(0.0, (self.limit - child.mem) / rate)
        detail = (("leak_bytes_per_second", round(rate, 1)), ("eta_s", round(eta, 1)), ("horizon_s", self.horizon))
        return Violation(Action.RECYCLE, self.reason, self.limit, detail=detail)

    def child_exited(self, pid: int) -> None:
        if self._acts_above.pop(pid, None) is not None:
            self._update_threshold()

    def _update_threshold(self) -> None:
        self.threshold = min(self._acts_above.values()) if self._acts_above else None

    def __repr__(self) -> str:
        return f"LeakProjection(limit={self.limit}, horizon={self.horizon})"
