"""When to pause task intake under memory pressure, and when to resume it. Pure: readings in, changes out.

Recycling children frees memory only after their current tasks; meanwhile a worker that
keeps fetching and starting tasks fills what is left. :class:`IntakePause` decides when
the worker should stop taking work, and when it may take work again (the Celery side that
carries it out is :mod:`celery_memguard.worker.intake`; the :class:`~celery_memguard.guard.Guard`
owns the paused state):

* **pause** as soon as one reading shows the available memory below ``pause_below``
  (``memguard_pause_below``) or the pool's total memory above ``pool_above``
  (``memguard_pause_pool_above``);
* **resume** once every configured threshold is clear by a margin (hysteresis), and has
  stayed so for ``resume_after`` seconds: available memory at least ``pause_below`` plus
  :data:`RESUME_MARGIN` of it (``pause_below=256MiB``: 320 MiB), the pool total at most
  ``pool_above`` minus :data:`RESUME_MARGIN` of it. A reading that breaks either condition
  restarts the wait, so a worker on the edge does not flap between taking one task and
  pausing again. A reading that says nothing about a threshold (no system reading yet, an
  empty pool) neither pauses nor resumes on that threshold's account.

Only exact readings judge the pool threshold (as :class:`~celery_memguard.policies.pool.PoolLimit`
does): between exact readings a child's memory is an upper bound (its RSS for ``metric=uss``), and
upper bounds above ``pool_above`` are no evidence. Such a reading neither pauses nor (while paused)
resumes; it sets :attr:`IntakePause.wants_exact`, which the pressure policy turns into a request for
exact readings of every child (``threshold = 0``), so the next poll, at once, decides on exact ones.

A pause whose resume level cannot be reached even with fresh children (``pause_pool_above=512MiB``
with 8 fresh children of 60 MiB: 480 MiB, above the 384 MiB resume level; ``pause_below`` a large
share of a container the master and the fresh children already fill) would hold the worker paused for
good: a dead worker. The pressure policy finds it (no child holds ``min_relief`` more than a fresh one,
for ``retry_unrelieved`` seconds) and calls :meth:`IntakePause.give_up`: the next reading resumes intake
(trigger ``"unreachable"``) and that threshold is *disarmed*, no longer pausing, until a reading is clear of
its resume level again (then it is armed as before). The pressure policy logs one
``memguard.pressure_unrelieved`` finding naming the setting, its value and the reading.

The decision takes any fresh reading, from any source (a poll, a kernel notification, an
admission check before a task starts): :meth:`IntakePause.observe` is cheap (a few
comparisons) and returns an :class:`IntakeChange` only when the state flips. It is not
thread-safe; its owner (the Guard) serialises calls.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..config import PAUSE_RESUME_MARGIN as RESUME_MARGIN
from ..units import mib

__all__ = ["IntakeChange", "IntakePause", "RESUME_MARGIN"]


@dataclass(frozen=True, slots=True)
class IntakeChange:
    """The intake state flipped: ``paused`` is the new state, ``trigger`` why.

    ``trigger`` is ``"available"`` or ``"pool"`` for a pause (the threshold crossed), ``"recovered"``
    for a resume (``"unreachable"``: given up, its resume level cannot be reached with fresh children).
    ``available`` and ``pool`` are the readings that decided it (None: not read).
    ``paused_s`` is how long the pause lasted (resume only).
    """

    paused: bool
    trigger: str
    at: float
    available: int | None
    pool: int | None
    threshold: int | None
    paused_s: float | None = None

    def fields(self) -> dict[str, object]:
        """The event's fields (sizes in MiB)."""
        return {"trigger": self.trigger, "available_mib": mib(self.available), "pool_mib": mib(self.pool),
                "threshold_mib": mib(self.threshold), "paused_s": None if self.paused_s is None
                else round(self.paused_s, 3)}


class IntakePause:
    """Pause intake below ``pause_below`` available / above ``pool_above`` in the pool; resume with hysteresis."""

    def __init__(self, *, pause_below: int | None = None, pool_above: int | None = None,
                 resume_after: float = 1.0, margin: float = RESUME_MARGIN) -> None:
        if pause_below is None and pool_above is None:
            raise ValueError("set pause_below, pool_above or both")
        if any(value is not None and value <= 0 for value in (pause_below, pool_above)):
            raise ValueError("pause_below and pool_above must be > 0 (or None)")
        if resume_after < 0:
            raise ValueError("resume_after must be >= 0")
        if not 0 <= margin < 1:
            raise ValueError("margin must be in [0, 1)")
        self.pause_below = pause_below
        self.pool_above = pool_above
        self.resume_after = resume_after
        self.resume_available = None if pause_below is None else int(pause_below * (1 + margin))
        self.resume_pool = None if pool_above is None else int(pool_above * (1 - margin))
        self.paused = False
        #: When the current pause began (None: not paused).
        self.paused_at: float | None = None
        #: Why the current pause began (``"available"`` or ``"pool"``), None when not paused.
        self.trigger: str | None = None
        self._clear_since: float | None = None  # every resume condition held since
        #: The last reading's pool total was above the level it is judged against (``pool_above``,
        #: ``resume_pool`` while paused) but not exact: exact readings of every child are needed.
        self.wants_exact = False
        self._give_up = False  # the pressure policy found the resume level out of reach: resume at the next reading
        #: The thresholds (``"available"``, ``"pool"``) a given-up pause disarmed, until a reading clears them.
        self.disarmed: set[str] = set()

    def crossed(self, available: int | None, pool: int | None, pool_exact: bool = True) -> str | None:
        """``"available"`` or ``"pool"`` if a reading crosses a pause threshold, else None (a pool total
        made of upper bounds, ``pool_exact=False``, never crosses)."""
        if self.pause_below is not None and available is not None and available < self.pause_below \
                and "available" not in self.disarmed:
            return "available"
        if self.pool_above is not None and pool is not None and pool > self.pool_above and pool_exact \
                and "pool" not in self.disarmed:
            return "pool"
        return None

    def give_up(self) -> None:
        """The current pause's resume level cannot be reached with fresh children: resume at the next
        reading and disarm its threshold until a reading is clear of the resume level (see the module doc)."""
        if self.paused:
            self._give_up = True

    def _rearm(self, available: int | None, pool: int | None) -> None:
        """Arm a disarmed threshold again once a reading is clear of its resume level."""
        if available is not None and self.resume_available is not None and available >= self.resume_available:
            self.disarmed.discard("available")
        if pool is not None and self.resume_pool is not None and pool <= self.resume_pool:
            self.disarmed.discard("pool")

    def recovered(self, available: int | None, pool: int | None) -> bool:
        """Whether a reading is clear of every armed threshold by the margin (nothing known counts as not clear)."""
        if self.resume_available is not None and "available" not in self.disarmed and (
                available is None or available < self.resume_available):
            return False
        if self.resume_pool is not None and "pool" not in self.disarmed and (pool is None or pool > self.resume_pool):
            return False
        return True

    def observe(self, now: float, *, available: int | None = None, pool: int | None = None,
                pool_exact: bool = True) -> IntakeChange | None:
        """Judge one reading; the change of state it causes, if any. ``pool_exact``: every child's
        reading in ``pool`` is exact (else ``pool`` is an upper bound, see the module doc)."""
        level = self.resume_pool if self.paused else self.pool_above
        self.wants_exact = level is not None and pool is not None and pool > level and not pool_exact
        self._rearm(available, pool)
        if self._give_up:
            return self._resume(now, "unreachable", available, pool, disarm=True)
        if not self.paused:
            trigger = self.crossed(available, pool, pool_exact)
            if trigger is None:
                return None
            self.paused, self.paused_at, self.trigger, self._clear_since = True, now, trigger, None
            threshold = self.pause_below if trigger == "available" else self.pool_above
            return IntakeChange(True, trigger, now, available, pool, threshold)
        if not self.recovered(available, pool):
            self._clear_since = None
            return None
        if self._clear_since is None:
            self._clear_since = now
        if now - self._clear_since < self.resume_after:
            return None
        return self._resume(now, "recovered", available, pool)

    def _resume(self, now: float, trigger: str, available: int | None, pool: int | None, *,
                disarm: bool = False) -> IntakeChange:
        since = self.paused_at if self.paused_at is not None else now
        threshold = self.resume_available if self.trigger == "available" else self.resume_pool
        if disarm and self.trigger is not None:
            self.disarmed.add(self.trigger)
        self.paused, self.paused_at, self.trigger, self._clear_since = False, None, None, None
        self._give_up = False
        return IntakeChange(False, trigger, now, available, pool, threshold, paused_s=now - since)

    def __repr__(self) -> str:
        return (f"IntakePause(pause_below={self.pause_below}, pool_above={self.pool_above}, "
                f"resume_after={self.resume_after})")
