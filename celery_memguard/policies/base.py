"""The policy interface every built-in (and later, custom) policy implements."""

from __future__ import annotations

from typing import ClassVar

from ..samples import ChildSample, Violation

__all__ = ["Policy"]


class Policy:
    """Base class: override :meth:`check`; set :attr:`reason`.

    ``threshold`` is the smallest memory (in the configured metric) at which the
    policy could act; the prober uses it to decide when a cheap upper bound is not
    enough and an exact reading is needed. ``None`` means "memory is not my input".
    """

    reason: ClassVar[str] = "policy"
    threshold: int | None = None

    def check(self, child: ChildSample, now: float) -> Violation | None:  # pragma: no cover
        """Return a violation for ``child`` at ``now``, or ``None``."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(threshold={self.threshold})"
