"""Per-child memory limits: the soft limit (recycle after the task) and the hard limit (stop it now).

The hard limit's violations are ``hard``: strikes never debounce them and the
recycle rate limit never defers them.
"""

from __future__ import annotations

from typing import ClassVar

from ..samples import Action, ChildSample, Violation
from .base import Policy

__all__ = ["SoftLimit", "HardLimit"]


class SoftLimit(Policy):
    """A child above ``limit`` finishes its current task, then exits and is replaced."""

    reason: ClassVar[str] = "soft_limit"

    def __init__(self, *, limit: int) -> None:
        if limit <= 0:
            raise ValueError("limit must be > 0")
        self.limit = self.threshold = limit

    def check(self, child: ChildSample, now: float) -> Violation | None:
        if child.exact and child.mem > self.limit:
            return Violation(Action.RECYCLE, self.reason, self.limit)
        return None


class HardLimit(Policy):
    """A child above ``limit`` has its running task stopped; an idle one is recycled at once."""

    reason: ClassVar[str] = "hard_limit"

    def __init__(self, *, limit: int) -> None:
        if limit <= 0:
            raise ValueError("limit must be > 0")
        self.limit = self.threshold = limit

    def check(self, child: ChildSample, now: float) -> Violation | None:
        if not (child.exact and child.mem > self.limit):
            return None
        action = Action.KILL if child.busy else Action.RECYCLE
        return Violation(action, self.reason, self.limit, hard=True)
