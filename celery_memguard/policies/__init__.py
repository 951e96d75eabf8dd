"""Pure policies: each looks at one child sample and may return a :class:`Violation`.

A policy is one concern (one limit), takes its options as keyword-only constructor
arguments, does no I/O and never reads a clock: ``now`` is passed in.
:func:`build_policies` composes the built-in ones from a :class:`MemGuardConfig`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .base import Policy
from .limits import HardLimit, SoftLimit

if TYPE_CHECKING:
    from ..config import MemGuardConfig

__all__ = ["Policy", "SoftLimit", "HardLimit", "build_policies"]


def build_policies(config: "MemGuardConfig") -> list[Policy]:
    """The policies a configuration enables, most severe first."""
    policies: list[Policy] = []
    if config.hard_limit is not None:
        policies.append(HardLimit(limit=config.hard_limit))
    if config.soft_limit is not None:
        policies.append(SoftLimit(limit=config.soft_limit))
    return policies
