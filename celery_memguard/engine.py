"""The decision core: child samples in, decisions out. No I/O, no clock, no Celery.

Each poll the master hands :meth:`Engine.decide` one :class:`ChildSample` per live
pool child and the current monotonic time. The engine asks every policy, keeps
the most severe violation per child, and remembers what it has already ordered so
that an order is issued once, not at every poll:

* ``RECYCLE`` is ordered once per child; the child exits after its current task.
* ``KILL`` is ordered once per (child, task). If the same task is still running
  ``kill_grace`` seconds later (it swallowed the exception, or is stuck in C
  code), the engine escalates to ``FORCE_KILL`` (SIGKILL).

It also picks the delay until the next poll: the configured interval, shortened
while some child is growing towards its hard limit so the limit is not overshot
by more than a few percent at hundreds of MiB/s.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

from .policies import Policy
from .policies.limits import HardLimit
from .samples import Action, ChildSample, Decision, Violation

__all__ = ["Engine"]

#: Poll again before a growing child can use this fraction of its remaining headroom.
HEADROOM_FRACTION = 0.25
#: Seconds until the second look at a child seen for the first time (its growth rate is unknown).
FIRST_LOOK = 0.1


@dataclass(slots=True)
class _Order:
    action: Action
    task_id: str | None
    at: float
    violation: Violation


@dataclass(slots=True)
class _Last:
    rss: int
    at: float
    rate: float = 0.0


class Engine:
    """Composes policies and turns violations into de-duplicated, escalating decisions."""

    def __init__(
        self,
        policies: Iterable[Policy],
        *,
        kill_grace: float,
        poll_interval: float,
        min_interval: float = 0.02,
    ) -> None:
        self.policies: list[Policy] = list(policies)
        self.kill_grace = kill_grace
        self.poll_interval = poll_interval
        self.min_interval = min(min_interval, poll_interval)
        self._orders: dict[int, _Order] = {}
        self._last: dict[int, _Last] = {}
        self._next_delay = poll_interval
        thresholds = [p.threshold for p in self.policies if p.threshold is not None]
        #: Smallest memory at which any policy can act; below it no exact reading is needed.
        self.threshold: int | None = min(thresholds) if thresholds else None
        hard = [p.limit for p in self.policies if isinstance(p, HardLimit)]
        self.hard_limit: int | None = min(hard) if hard else None

    @property
    def next_delay(self) -> float:
        """Seconds until the next poll, as chosen by the last :meth:`decide`."""
        return self._next_delay

    def pending(self, pid: int) -> Action | None:
        """The action already ordered for ``pid``, if any."""
        order = self._orders.get(pid)
        return order.action if order else None

    def decide(self, children: Sequence[ChildSample], now: float) -> list[Decision]:
        """Decisions for this poll; call once per poll with every live child."""
        live = {c.pid for c in children}
        for pid in [p for p in self._orders if p not in live]:
            del self._orders[pid]
        for pid in [p for p in self._last if p not in live]:
            del self._last[pid]

        decisions: list[Decision] = []
        delay = self.poll_interval
        for child in children:
            delay = min(delay, self._track_growth(child, now))
            violation = self._worst(child, now)
            order = self._orders.get(child.pid)
            if order is not None and order.action is Action.KILL:
                decision = self._maybe_escalate(child, order, now)
                if decision is not None:
                    decisions.append(decision)
                    continue
            if violation is None:
                continue
            if self._already_ordered(order, violation, child):
                continue
            self._orders[child.pid] = _Order(violation.action, child.task_id, now, violation)
            decisions.append(self._decision(violation.action, child, violation, now))
        self._next_delay = delay
        return decisions

    def _worst(self, child: ChildSample, now: float) -> Violation | None:
        worst: Violation | None = None
        for policy in self.policies:
            violation = policy.check(child, now)
            if violation is not None and (worst is None or violation.action.severity > worst.action.severity):
                worst = violation
        return worst

    @staticmethod
    def _already_ordered(order: _Order | None, violation: Violation, child: ChildSample) -> bool:
        if order is None:
            return False
        if order.action is Action.FORCE_KILL:
            return True
        if order.action is Action.KILL:
            # A new task on a child told to stop an earlier one is a new decision.
            return violation.action is not Action.KILL or order.task_id == child.task_id
        # A recycle is pending: only a kill supersedes it.
        return violation.action.severity <= order.action.severity

    def _maybe_escalate(self, child: ChildSample, order: _Order, now: float) -> Decision | None:
        if child.task_id is None or child.task_id != order.task_id:
            return None  # the task stopped; the child exits on its own
        if now - order.at < self.kill_grace:
            return None
        self._orders[child.pid] = _Order(Action.FORCE_KILL, child.task_id, now, order.violation)
        return self._decision(Action.FORCE_KILL, child, order.violation, now)

    def _track_growth(self, child: ChildSample, now: float) -> float:
        """Update the child's growth rate; return how soon it should be looked at again."""
        last = self._last.get(child.pid)
        if last is None:
            # Growth rate unknown: look again soon, so a child that is already growing fast is not
            # left alone for a whole interval.
            self._last[child.pid] = _Last(child.rss, now)
            return min(self.poll_interval, FIRST_LOOK)
        dt = now - last.at
        if dt > 0:
            last.rate = max(0.0, (child.rss - last.rss) / dt)
            last.rss, last.at = child.rss, now
        if self.hard_limit is None or last.rate <= 0 or self.pending(child.pid) is Action.FORCE_KILL:
            return self.poll_interval
        headroom = self.hard_limit - child.mem
        if headroom <= 0:
            return self.min_interval
        return max(self.min_interval, min(self.poll_interval, HEADROOM_FRACTION * headroom / last.rate))

    @staticmethod
    def _decision(action: Action, child: ChildSample, violation: Violation, now: float) -> Decision:
        return Decision(
            action=action,
            pid=child.pid,
            reason=violation.reason,
            mem=child.mem,
            limit=violation.limit,
            task=child.task,
            task_id=child.task_id,
            tasks_run=child.tasks_run,
            lifetime=max(0.0, now - child.spawned_at) if child.spawned_at else 0.0,
        )
