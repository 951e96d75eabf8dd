"""Pure policies: each is one concern that may return a :class:`Violation` for a child.

A per-child :class:`Policy` looks at one child sample (``check(child, now)``); a
:class:`PoolPolicy` looks at every child at once and at the system's memory
(``check_pool(children, now, system)``). Each takes its options as keyword-only
constructor arguments, does no I/O and never reads a clock: ``now`` is passed in.

Built in: :class:`HardLimit`, :class:`SoftLimit` (``limits``), :class:`LeakProjection`
(``leak``), :class:`Lifetime` and :class:`MaxTasks` (``lifetime``), :class:`PoolLimit`
(``pool``), :class:`SystemPressure` (``pressure``); the recycle rate limit lives in
``storm`` and is applied by the engine. :func:`make_policies` composes the built-in
ones from plain keyword values, :func:`build_policies` from a :class:`MemGuardConfig`,
and :func:`load_policy` turns a custom entry (class, instance or dotted path) into a
policy.
"""

from __future__ import annotations

import importlib
import random
from typing import TYPE_CHECKING, Any, Iterable

from ..samples import MiB
from .base import AnyPolicy, Policy, PoolPolicy, Verdict, is_pool_policy
from .leak import LeakProjection
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
    "build_policies",
    "make_policies",
    "load_policy",
]


def make_policies(
    *,
    soft_limit: int | None = None,
    hard_limit: int | None = None,
    pool_limit: int | None = None,
    pool_hard_limit: int | None = None,
    min_available: int | None = None,
    psi_threshold: float | None = None,
    pressure_min_relief: int | None = 32 * MiB,
    pressure_retry: float = 30.0,
    recycle_on_leak: bool = False,
    leak_horizon: float = 300.0,
    max_child_lifetime: float | None = None,
    max_child_tasks: int | None = None,
    jitter: float = 0.0,
    kill_grace: float = 2.0,
    custom: Iterable[Any] = (),
    config: Any = None,
    rng: random.Random | None = None,
) -> list[AnyPolicy]:
    """The policies these values enable: per-child limits most severe first, then pool policies, then custom.

    ``None`` (or ``False``) leaves a policy out. Sizes are bytes, times seconds.
    ``recycle_on_leak`` projects towards the soft limit (the hard limit if there is
    no soft one). ``custom`` entries go through :func:`load_policy` (with ``config``).
    ``rng`` feeds the jitter draws (seed it in tests).
    """
    policies: list[AnyPolicy] = []
    if hard_limit is not None:
        policies.append(HardLimit(limit=hard_limit))
    if soft_limit is not None:
        policies.append(SoftLimit(limit=soft_limit))
    if recycle_on_leak:
        target = soft_limit if soft_limit is not None else hard_limit
        if target is None:
            raise ValueError("recycle_on_leak needs a soft_limit or a hard_limit to project towards")
        policies.append(LeakProjection(limit=target, horizon=leak_horizon))
    if jitter and rng is None and (max_child_lifetime is not None or max_child_tasks is not None):
        rng = random.Random()
    if max_child_lifetime is not None:
        policies.append(Lifetime(max_lifetime=max_child_lifetime, jitter=jitter, rng=rng))
    if max_child_tasks is not None:
        policies.append(MaxTasks(max_tasks=max_child_tasks, jitter=jitter, rng=rng))
    if pool_limit is not None:
        policies.append(PoolLimit(limit=pool_limit, hard_limit=pool_hard_limit, grace=kill_grace))
    if min_available is not None or psi_threshold is not None:
        policies.append(SystemPressure(min_available=min_available, psi_threshold=psi_threshold,
                                       min_relief=pressure_min_relief, retry_unrelieved=pressure_retry))
    policies.extend(load_policy(entry, config) for entry in custom)
    return policies


def build_policies(
    config: "MemGuardConfig | Any", *, extra: Iterable[Any] = (), rng: random.Random | None = None
) -> list[AnyPolicy]:
    """The policies a configuration enables, most severe first (see :func:`make_policies`).

    ``config`` is a :class:`MemGuardConfig` or any object with the same attributes.
    Reads ``soft_limit`` and ``hard_limit``, and, where the configuration has them,
    ``pool_limit``, ``pool_hard_limit``, ``min_available``, ``psi_threshold``, ``pressure_min_relief``, ``pressure_retry``,
    ``recycle_on_leak``, ``leak_horizon``, ``max_child_lifetime``, ``max_child_tasks``,
    ``jitter``, ``kill_grace`` and ``policies`` (custom entries); ``extra`` entries
    are appended after the configured custom ones.
    """

    def opt(name: str, default: Any = None) -> Any:
        value = getattr(config, name, default)
        return default if value is None else value

    return make_policies(
        soft_limit=config.soft_limit,
        hard_limit=config.hard_limit,
        pool_limit=opt("pool_limit"),
        pool_hard_limit=opt("pool_hard_limit"),
        min_available=opt("min_available"),
        psi_threshold=opt("psi_threshold"),
        pressure_min_relief=getattr(config, "pressure_min_relief", 32 * MiB),
        pressure_retry=opt("pressure_retry", 30.0),
        recycle_on_leak=bool(opt("recycle_on_leak", False)),
        leak_horizon=opt("leak_horizon", 300.0),
        max_child_lifetime=opt("max_child_lifetime"),
        max_child_tasks=opt("max_child_tasks"),
        jitter=opt("jitter", 0.0),
        kill_grace=opt("kill_grace", 2.0),
        custom=[*opt("policies", ()), *extra],
        config=config,
        rng=rng,
    )


def load_policy(entry: Any, config: Any = None) -> AnyPolicy:
    """A policy from a custom entry: an instance, a class, or a dotted path to a class.

    A path is ``"package.module:Class"`` or ``"package.module.Class"``. A class is
    instantiated with ``Class.from_config(config)`` when it defines that and a
    configuration is given, else with ``Class()``. Raises :class:`TypeError` when the
    result has neither ``check`` nor ``check_pool``, :class:`ImportError` or
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
    if not (is_pool_policy(entry) or callable(getattr(entry, "check", None))):
        raise TypeError(f"{entry!r} is not a policy: it has neither check(child, now) "
                        "nor check_pool(children, now, system)")
    return entry  # type: ignore[no-any-return]
