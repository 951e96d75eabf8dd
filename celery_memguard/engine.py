"""The decision core: child samples in, decisions out. No I/O, no clock, no Celery.

Each poll the master hands :meth:`Engine.decide` one :class:`ChildSample` per live
pool child, the current monotonic time and, when it measures it, the system's
memory (:class:`SystemSample`). The engine asks every per-child policy about each
child and every pool policy about the pool as a whole, keeps the most severe
violation per child, and remembers what it has already ordered so that an order
is issued once, not at every poll:

* ``RECYCLE`` is ordered once per child; the child exits after its current task.
* ``KILL`` is ordered once per (child, task). If the same task is still running
  ``kill_grace`` seconds after the stop was sent (the caller reports that time
  with :meth:`Engine.order_sent`; it swallowed the exception, or is stuck in C
  code), the engine escalates to ``FORCE_KILL`` (SIGKILL).

Soft actions (a ``RECYCLE`` that is not ``hard``) pass two more gates; a KILL and
a hard violation pass neither, so a hard limit is never delayed:

* **strikes**: the child must be in violation on ``strikes`` consecutive polls
  (``0`` and ``1`` both mean "act on the first"); a clean poll resets the count.
  Policies whose input is not a noisy reading (``debounce = False``: lifetime,
  task count, leak projection) are exempt.
* **storm guard** (:class:`~celery_memguard.policies.storm.StormGuard`): at most
  ``max_recycles_per_minute`` restarts (or ``max_throughput_loss`` of the pool's
  capacity, given the measured spawn time) per sliding minute; extra recycles
  are deferred to a later poll (longest-deferred first, then the largest child),
  and the first deferral of an episode yields a ``memguard.recycle_storm`` finding.
* **unreachable limits** (:class:`~celery_memguard.policies.storm.UnreachableLimits`):
  a soft limit that a freshly forked child is already above (its first reading)
  is not enforced by recycling until a fresh child starts below it again; one
  ``memguard.limit_unreachable`` finding says why and what to change.

Non-decision output (storm findings, a pool policy's own findings such as
``memguard.pressure_unrelieved``, a custom policy that raised) is collected
and handed out by :meth:`Engine.findings`. A policy that raises is skipped for
that poll, never takes the others down.

It also picks the delay until the next poll: the configured interval, shortened
while some child is growing towards its hard limit so the limit is not overshot
by more than a few percent at hundreds of MiB/s.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Iterable, Sequence

from . import events
from .detectors.base import Finding
from .policies import AnyPolicy, IntakePause, build_policies
from .policies.base import Policy, PoolPolicy, as_policy, policy_name
from .policies.leak import LeakProjection
from .policies.lifetime import Lifetime, MaxTasks
from .policies.limits import HardLimit, SoftLimit
from .policies.pressure import SystemPressure
from .policies.storm import StormGuard, UnreachableLimits, restart_of
from .samples import Action, ChildSample, Decision, SystemSample, Violation

if TYPE_CHECKING:
    from .config import MemGuardConfig

__all__ = ["Engine", "POLICY_ERROR"]

#: The event name of a finding about a policy that raised (same keys as ``memguard.error``).
POLICY_ERROR = events.ERROR

#: Poll again before a growing child can use this fraction of its remaining headroom.
HEADROOM_FRACTION = 0.25
#: Seconds until the second look at a child seen for the first time (its growth rate is unknown).
FIRST_LOOK = 0.1
#: A strike counts once per poll interval (with this tolerance for timer jitter).
STRIKE_SPACING = 0.9
#: Growth rate (bytes/s) assumed for a child that has not been seen growing faster, when a hard limit
#: is set: every child is looked at again before it could use a quarter of its headroom at this rate.
ASSUMED_TASK_GROWTH = 1024 * 1024 * 1024


#: Policies that only ever recycle a child after its task (never stop one).
_RECYCLE_ONLY = (SoftLimit, LeakProjection, Lifetime, MaxTasks)


def _recycle_only(policy: Any) -> bool:
    """Whether ``policy`` only ever recycles a child after its task: ``SystemPressure`` stops a running
    task only below ``critical_available``."""
    if isinstance(policy, SystemPressure):
        return policy.critical_available is None
    return isinstance(policy, _RECYCLE_ONLY)


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
    first: int = 0  #: RSS at the first look (a fresh child's, or as near as the engine saw it)


class Engine:
    """Composes policies and turns violations into de-duplicated, escalating, rate-limited decisions."""

    def __init__(
        self,
        policies: Iterable[AnyPolicy],
        *,
        kill_grace: float,
        poll_interval: float,
        min_interval: float = 0.02,
        strikes: int = 0,
        max_recycles_per_minute: float | None = None,
        max_throughput_loss: float | None = None,
        storm_window: float = 60.0,
        metric: str = "uss",
    ) -> None:
        if strikes < 0:
            raise ValueError("strikes must be >= 0")
        self.policies: list[AnyPolicy] = [as_policy(p) for p in policies]  # one contract from here on
        self._child_policies: list[Policy] = [p for p in self.policies if isinstance(p, Policy)]
        self._pool_policies: list[PoolPolicy] = [p for p in self.policies if isinstance(p, PoolPolicy)]
        self.kill_grace = kill_grace
        self.poll_interval = poll_interval
        self.min_interval = min(min_interval, poll_interval)
        self.strikes = strikes
        self.storm = StormGuard(max_recycles_per_minute=max_recycles_per_minute,
                                max_throughput_loss=max_throughput_loss, window=storm_window)
        self.unreachable = UnreachableLimits(metric)
        self._looked: set[int] = set()  # children whose first reading was taken (fresh-child check)
        self._master_mem: int | None = None
        self._orders: dict[int, _Order] = {}
        self._last: dict[int, _Last] = {}
        self._strikes: dict[int, int] = {}
        self._strike_at: dict[int, float] = {}
        self._deferred_since: dict[int, float] = {}
        self._seen: set[int] = set()
        self._findings: list[Finding] = []
        self._errors: set[tuple[str, str]] = set()
        self._next_delay = poll_interval
        #: Set during a warm shutdown: the pool is draining, every child leaves after its task anyway, so
        #: only hard limits (and their escalation to SIGKILL) are enforced; no soft recycle is ordered.
        self.draining = False
        #: Set by the monitor when it watches the board's task starts between polls (see ``_track_growth``).
        self.idle_watched = False
        #: Actions not taken because they were judged on a fallback reading (see ``_fallback_blocks``).
        self.fallback_blocked = 0
        #: Smallest memory at which any policy can act; below it no exact reading is needed.
        #: Recomputed after every poll (pool and leak policies move theirs).
        self.threshold: int | None = self._threshold()
        hard = [p.limit for p in self.policies if isinstance(p, HardLimit)]
        self.hard_limit: int | None = min(hard) if hard else None
        #: Whether a policy may stop a running task (a custom one counts as one that may): only then must a
        #: task start be looked at at once (see ``Monitor._sleep``); recycles wait for the task's end anyway.
        self.stops_tasks = not all(_recycle_only(p) for p in self.policies)

    @classmethod
    def from_config(cls, config: "MemGuardConfig", *, rng: random.Random | None = None,
                    extra: Iterable[Any] = (), intake: IntakePause | None = None) -> "Engine":
        """The engine a configuration asks for: its policies (see ``build_policies``) and gates."""
        return cls(
            build_policies(config, rng=rng, extra=extra, intake=intake),
            kill_grace=config.kill_grace,
            poll_interval=config.poll_interval,
            strikes=config.strikes,
            max_recycles_per_minute=config.max_recycles_per_minute,
            max_throughput_loss=config.max_throughput_loss,
            metric=config.metric,
        )

    @property
    def next_delay(self) -> float:
        """Seconds until the next poll, as chosen by the last :meth:`decide`."""
        return self._next_delay

    def pending(self, pid: int) -> Action | None:
        """The action already ordered for ``pid``, if any."""
        order = self._orders.get(pid)
        return order.action if order else None

    def order_sent(self, pid: int, at: float) -> None:
        """The stop ordered for ``pid`` was sent at ``at``: its ``kill_grace`` runs from then.

        :meth:`decide` dates an order with the poll's start; sending it may come much later when a poll
        of many children is slow, and the grace must not shrink by that much.
        """
        order = self._orders.get(pid)
        if order is not None and order.action is Action.KILL and at > order.at:
            order.at = at

    def deferred(self, pid: int) -> float | None:
        """Since when a recycle of ``pid`` has been held back by the storm guard, if it is."""
        return self._deferred_since.get(pid)

    def observe_spawn(self, seconds: float) -> None:
        """A pool child took ``seconds`` from fork to ready (feeds the storm guard)."""
        self.storm.observe_spawn(seconds)

    def findings(self) -> list[Finding]:
        """Findings collected since the last call (``memguard.recycle_storm``, pool policies' own, ``memguard.error``)."""
        found, self._findings = self._findings, []
        return found

    def observe_master(self, mem: int) -> None:
        """The master's memory in the configured metric (quoted when a limit is unreachable)."""
        self._master_mem = mem

    def decide(self, children: Sequence[ChildSample], now: float, *,
               system: SystemSample | None = None) -> list[Decision]:
        """Decisions for this poll; call once per poll with every live child (and the system's memory)."""
        live = {c.pid for c in children}
        for pid in (self._seen | set(self._orders) | set(self._last)) - live:
            self._forget(pid)
        self._seen = live
        self.storm.tick(now)
        view = [self._annotate(c) for c in children]
        worst = self._violations(view, now, system)
        self._first_looks(view, worst, now)

        decisions: list[tuple[int, Decision]] = []
        soft: list[tuple[int, ChildSample, Violation]] = []
        delay = self.poll_interval
        for i, child in enumerate(view):
            delay = min(delay, self._track_growth(child, now))
            violation, debounce = worst.get(child.pid, (None, True))
            order = self._orders.get(child.pid)
            if order is not None and order.action is Action.KILL:
                decision = self._maybe_escalate(child, order, now)
                if decision is not None:
                    decisions.append((i, decision))
                    continue
            if violation is None:
                self._strikes.pop(child.pid, None)  # a clean reading resets the strikes
                self._strike_at.pop(child.pid, None)
                self._deferred_since.pop(child.pid, None)
                continue
            strikes = self._strike(child.pid, now)
            if self._already_ordered(order, violation, child):
                continue
            if not _is_hard(violation) and self.unreachable.blocks(violation):
                continue  # a fresh child would be over this limit too: recycling cannot help
            if child.fallback is not None and self._fallback_blocks(child, violation):
                continue
            if _is_hard(violation):
                decisions.append((i, self._order(child, violation, now)))
            elif self.draining:
                continue
            elif strikes >= self.strikes or not debounce:
                soft.append((i, child, violation))
        if soft:
            decisions.extend(self._admit(soft, now, len(view)))
        decisions.sort(key=lambda item: item[0])
        previous, self.threshold = self.threshold, self._threshold()
        if self.threshold is not None and (previous is None or self.threshold < previous) and any(
            not c.exact and c.mem > self.threshold for c in view
        ):
            # A policy just lowered the bar below a child's upper bound (a pool budget now asks for exact
            # readings): read that child exactly at once instead of a poll later.
            delay = 0.0
        self._next_delay = delay
        return [d for _, d in decisions]

    def _fallback_blocks(self, child: ChildSample, violation: Violation) -> bool:
        """Whether a violation judged on a fallback reading (RSS for an unreadable USS/PSS) must not be acted on.

        RSS also counts the pages a child shares copy-on-write with the master, so a fresh child may be
        over a USS soft limit on RSS: a memory-based soft recycle on it could repeat forever. A hard limit
        is still enforced on RSS (an upper bound: no runaway gets past it), unless the child was already
        over it at the engine's first look (its shared pages alone: every task would be stopped).
        """
        if violation.unit != "bytes":
            return False  # lifetime and task-count limits do not depend on the reading
        if not _is_hard(violation):
            self.fallback_blocked += 1
            return True
        last = self._last.get(child.pid)
        if last is not None and last.first >= violation.limit:
            self.fallback_blocked += 1
            return True
        return False

    # -- policies -------------------------------------------------------
    def _annotate(self, child: ChildSample) -> ChildSample:
        """The sample as policies see it: with the order already given to the child."""
        pending = self.pending(child.pid)
        return child if child.pending is pending else replace(child, pending=pending)

    def _violations(self, view: Sequence[ChildSample], now: float,
                    system: SystemSample | None) -> dict[int, tuple[Violation, bool]]:
        """Per pid the most severe violation and whether strikes apply to it (a policy that raises is skipped)."""
        worst: dict[int, tuple[Violation, bool]] = {}
        for policy in self._child_policies:
            debounce = policy.debounce
            for child in view:
                try:
                    violation = policy.check(child, now)
                except Exception as exc:
                    self._error(policy, exc)
                    continue
                if violation is not None:
                    _merge(worst, child.pid, violation, debounce)
        live = {c.pid for c in view}
        for pool_policy in self._pool_policies:
            debounce = pool_policy.debounce
            try:
                verdicts = list(pool_policy.check_pool(view, now, system) or ())
            except Exception as exc:
                self._error(pool_policy, exc)
                continue
            for pid, violation in verdicts:
                if pid in live and violation is not None:
                    _merge(worst, pid, violation, debounce)
            try:
                self._findings.extend(pool_policy.findings())
            except Exception as exc:
                self._error(pool_policy, exc)
        return worst

    def _first_looks(self, view: Sequence[ChildSample], worst: dict[int, tuple[Violation, bool]], now: float) -> None:
        """Feed each fresh child's first reading to the unreachable-limit check."""
        for child in view:
            if child.pid in self._looked:
                continue
            self._looked.add(child.pid)
            if child.fallback is not None or not UnreachableLimits.is_fresh(child.tasks_run, child.busy,
                                                                             child.spawned_at, now):
                continue  # a fallback reading (RSS for USS) says nothing about what a fresh child's USS is
            violation = worst.get(child.pid, (None, True))[0]
            finding = self.unreachable.fresh(now, child.pid, child.mem, child.exact, violation, self._master_mem)
            if finding is not None:
                self._findings.append(finding)

    def _strike(self, pid: int, now: float) -> int:
        """Count a violating poll as a strike, at most one per poll interval (polls come faster near a
        hard limit, but strikes measure how long a violation lasts, in configured intervals)."""
        count = self._strikes.get(pid, 0)
        last = self._strike_at.get(pid)
        if last is None or now - last >= self.poll_interval * STRIKE_SPACING:
            count += 1
            self._strikes[pid], self._strike_at[pid] = count, now
        return count

    def threshold_for(self, pid: int) -> int | None:
        """The memory above which an exact reading of ``pid`` could still change a decision.

        A child already told to recycle can only be escalated by a hard limit (or a pool policy
        asking for exact readings with threshold 0); a child already told to stop needs none.
        """
        order = self._orders.get(pid)
        if order is None:
            return self.threshold
        if order.action is not Action.RECYCLE:
            return None
        hard = [p.threshold for p in self.policies
                if p.threshold is not None and (isinstance(p, HardLimit) or p.threshold == 0)]
        return min(hard) if hard else None

    @property
    def ceiling(self) -> int | None:
        """The highest memory threshold of any policy: a child provably above it cannot be judged
        differently by a new exact reading. None when no policy has one, or when a policy asks for
        exact readings of every child (threshold 0, e.g. a pool budget being checked)."""
        thresholds = [p.threshold for p in self.policies if p.threshold is not None]
        if not thresholds or min(thresholds) == 0:
            return None
        return max(thresholds)

    def _threshold(self) -> int | None:
        thresholds = [p.threshold for p in self.policies if p.threshold is not None]
        return min(thresholds) if thresholds else None

    def _forget(self, pid: int) -> None:
        """Child ``pid`` is gone: drop its orders and state, tell the policies."""
        self._orders.pop(pid, None)
        self._last.pop(pid, None)
        self._strikes.pop(pid, None)
        self._strike_at.pop(pid, None)
        self._deferred_since.pop(pid, None)
        self._looked.discard(pid)
        for policy in self.policies:
            try:
                policy.child_exited(pid)
            except Exception as exc:
                self._error(policy, exc)

    def _error(self, policy: object, exc: Exception) -> None:
        where = f"policy.{policy_name(policy)}"
        cause = (where, type(exc).__name__)
        if cause not in self._errors:
            self._errors.add(cause)
            self._findings.append(Finding(POLICY_ERROR, {"where": where, "error": f"{type(exc).__name__}: {exc}"}))

    # -- orders ---------------------------------------------------------
    def _order(self, child: ChildSample, violation: Violation, now: float) -> Decision:
        """Record an order for ``child`` and return its decision."""
        if child.pid not in self._orders:  # the first order makes the child leave: a restart
            self.storm.record(now, restart_of(now, child.pid, child.mem, child.tasks_run, violation))
        self._orders[child.pid] = _Order(violation.action, child.task_id, now, violation)
        self._deferred_since.pop(child.pid, None)
        return self._decision(violation.action, child, violation, now)

    def _admit(self, soft: list[tuple[int, ChildSample, Violation]], now: float,
               concurrency: int) -> list[tuple[int, Decision]]:
        """Order the soft recycles the storm guard lets through; defer the rest."""
        if not self.storm.enabled:
            return [(i, self._order(child, violation, now)) for i, child, violation in soft]
        soft.sort(key=lambda item: (self._deferred_since.get(item[1].pid, now), -item[1].mem, item[0]))
        admitted: list[tuple[int, Decision]] = []
        held = []
        for i, child, violation in soft:
            if self.storm.allow(now, concurrency):
                admitted.append((i, self._order(child, violation, now)))
            else:
                self._deferred_since.setdefault(child.pid, now)
                held.append(restart_of(now, child.pid, child.mem, child.tasks_run, violation))
        finding = self.storm.deferred(now, held, concurrency)
        if finding is not None:
            self._findings.append(finding)
        return admitted

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
            self._last[child.pid] = _Last(child.rss, now, first=child.rss)
            return min(self.poll_interval, FIRST_LOOK)
        dt = now - last.at
        if dt > 0:
            last.rate = max(0.0, (child.rss - last.rss) / dt)
            last.rss, last.at = child.rss, now
        # A busy child may start growing right after this poll: plan for the fastest growth we promise to
        # catch, so no child can overshoot the hard limit by a whole poll interval. So may an idle child
        # handed a job a moment later, unless the monitor watches the board for task starts between polls
        # (``idle_watched``) and the child reports its tasks there (a board slot: ``spawned_at`` known):
        # then an idle child is only expected to grow as it was seen to, and a task start brings the next
        # poll forward at once.
        if self.idle_watched and not child.busy and child.spawned_at > 0:
            rate = last.rate
        else:
            rate = max(last.rate, ASSUMED_TASK_GROWTH)
        if self.hard_limit is None or rate <= 0 or self.pending(child.pid) is Action.FORCE_KILL:
            return self.poll_interval
        headroom = self.hard_limit - child.mem
        if headroom <= 0:
            return self.min_interval
        return max(self.min_interval, min(self.poll_interval, HEADROOM_FRACTION * headroom / rate))

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
            ranking=violation.ranking,
            detail=violation.detail,
            unit=violation.unit,
            metric=child.fallback if violation.unit == "bytes" else None,
        )


def _is_hard(violation: Violation) -> bool:
    """Hard violations and kills are never debounced nor deferred."""
    return violation.hard or violation.action.severity >= Action.KILL.severity


def _merge(worst: dict[int, tuple[Violation, bool]], pid: int, violation: Violation, debounce: bool) -> None:
    """Keep the most severe violation for ``pid``; on a tie the earlier one, unless only the new one is hard."""
    current = worst.get(pid)
    if current is None or violation.action.severity > current[0].action.severity or (
        violation.action.severity == current[0].action.severity and violation.hard and not current[0].hard
    ):
        worst[pid] = (violation, debounce)
