"""Pure policies: each is one concern that may return a :class:`Violation` for a child.

A per-child :class:`Policy` looks at one child sample (``check(child, now)``); a
:class:`PoolPolicy` looks at every child at once and at the system's memory
(``check_pool(children, now, system)``). Each takes its options as keyword-only
constructor arguments, does no I/O and never reads a clock: ``now`` is passed in.

Built in: :class:`HardLimit`, :class:`SoftLimit` (``limits``), :class:`LeakProjection`
(``leak``), :class:`Lifetime` and :class:`MaxTasks` (``lifetime``), :class:`PoolLimit`
(``pool``), :class:`SystemPressure` (``pressure``), and the intake pause decision
:class:`IntakePause` (``intake``: not a child policy; the Guard owns it, the pressure policy reads it); the recycle rate limit lives in
``storm`` and is applied by the engine. :func:`build_policies` composes them from a
:class:`MemGuardConfig` (the one home of every default), and :func:`load_policy` turns
a custom entry (class, instance or dotted path) into a policy under the one contract
of :func:`~.base.as_policy`.
"""

from __future__ import annotations

import importlib
import random
from typing import TYPE_CHECKING, Any, Iterable

from .base import AnyPolicy, Policy, PoolPolicy, Verdict, as_policy
from .leak import LeakProjection
from .intake import IntakeChange, IntakePause
from .lifetime import Lifetime, MaxTasks
from .limits import HardLimit, SoftLimit
from .pool import PoolLimit
from .pressure import SystemPressure

if TYPE_CHECKING:
    from ..config import MemGuardConfig

__all__ = [
    "Policy",
    "PoolPolicy",
    "AnyPolicy",
    "Verdict",
    "SoftLimit",
    "HardLimit",
    "LeakProjection",
    "Lifetime",
    "MaxTasks",
    "PoolLimit",
    "SystemPressure",
    "IntakePause",
    "IntakeChange",
    "build_policies",
    "build_intake",
    "load_policy",
]


def build_policies(
    config: "MemGuardConfig", *, extra: Iterable[Any] = (), rng: random.Random | None = None,
    intake: IntakePause | None = None,
) -> list[AnyPolicy]:
    """The policies ``config`` enables: per-child limits most severe first, then pool policies, then custom.

    Every value (and every default) comes from the :class:`MemGuardConfig`; build one
    with ``MemGuardConfig(soft_limit=..., ...)`` in code (no validation) or
    ``MemGuardConfig.from_mapping`` (validated). ``recycle_on_leak`` projects towards
    the soft limit (the hard limit if there is no soft one). Custom entries
    (``config.policies``, then ``extra``) go through :func:`load_policy` with the
    config. ``rng`` feeds the jitter draws (seed it in tests). ``intake`` is the worker's intake pause
    decision (see :func:`build_intake`): while it holds intake paused, the pressure policy recycles.
    """
    policies: list[AnyPolicy] = []
    soft, hard = config.soft_limit, config.hard_limit
    if hard is not None:
        policies.append(HardLimit(limit=hard))
    if soft is not None:
        policies.append(SoftLimit(limit=soft))
    if config.recycle_on_leak:
        target = soft if soft is not None else hard
        if target is None:
            raise ValueError("recycle_on_leak needs a soft_limit or a hard_limit to project towards")
        policies.append(LeakProjection(limit=target, horizon=config.leak_horizon))
    aged = config.max_child_lifetime is not None or config.max_child_tasks is not None
    if aged and rng is None:
        rng = random.Random()
    if config.max_child_lifetime is not None:
        policies.append(Lifetime(max_lifetime=config.max_child_lifetime, jitter=config.jitter, rng=rng))
    if config.max_child_tasks is not None:
        policies.append(MaxTasks(max_tasks=config.max_child_tasks, jitter=config.jitter, rng=rng))
    if config.pool_limit is not None:
        policies.append(PoolLimit(limit=config.pool_limit, hard_limit=config.pool_hard_limit,
                                  grace=config.kill_grace))
    if config.min_available is not None or config.psi_threshold is not None or intake is not None:
        policies.append(SystemPressure(min_available=config.min_available, psi_threshold=config.psi_threshold,
                                       min_relief=config.pressure_min_relief,
                                       retry_unrelieved=config.pressure_retry,
                                       critical_available=config.critical_available, intake=intake))
    policies.extend(load_policy(entry, config) for entry in (*config.policies, *extra))
    return policies


def build_intake(config: "MemGuardConfig") -> IntakePause | None:
    """The intake pause decision the configuration asks for (``memguard_pause_*``), or None."""
    if config.pause_below is None and config.pause_pool_above is None:
        return None
    return IntakePause(pause_below=config.pause_below, pool_above=config.pause_pool_above,
                       resume_after=config.pause_resume_after)


def load_policy(entry: Any, config: Any = None) -> AnyPolicy:
    """A policy from a custom entry: an instance, a class, or a dotted path to a class.

    A path is ``"package.module:Class"`` or ``"package.module.Class"``. A class is
    instantiated with ``Class.from_config(config)`` when it defines that and a
    configuration is given, else with ``Class()``; the result is put under the one policy
    contract (:func:`~.base.as_policy`). Raises :class:`TypeError` when the result has
    neither ``check`` nor ``check_pool``, :class:`ImportError` or
    :class:`AttributeError` when a path does not resolve.
    """
    if isinstance(entry, str):
        module_name, sep, attr = entry.partition(":")
        if not sep:
            module_name, _, attr = entry.rpartition(".")
        if not module_name or not attr:
            raise ImportError(f"not a dotted path to a policy class: {entry!r}")
        obj: Any = importlib.import_module(module_name)
        for part in attr.split("."):
            obj = getattr(obj, part)
        entry = obj
    if isinstance(entry, type):
        factory = getattr(entry, "from_config", None)
        entry = factory(config) if callable(factory) and config is not None else entry()
    return as_policy(entry)
