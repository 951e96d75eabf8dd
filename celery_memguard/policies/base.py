"""The two policy interfaces every built-in (and custom) policy implements.

* :class:`Policy` judges one child at a time: ``check(child, now)``.
* :class:`PoolPolicy` judges the pool as a whole: ``check_pool(children, now,
  system)`` sees every live child at once (and the system's memory, when the
  caller measures it) and names the children to act on.

Both are pure: no I/O, no clock (``now`` is passed in), randomness only from an
injected ``random.Random``. A policy may keep per-child state; the engine calls
:meth:`child_exited` when a child disappears so that state can be dropped (a later
child may reuse the pid). Each sample a policy sees carries ``pending``: the order
the engine has already given that child, so a policy can leave leaving children
alone.

Custom policies need not subclass either: :func:`as_policy` (applied once, when a
policy is loaded or handed to the engine) wraps any object with ``check`` or
``check_pool`` in an adapter that supplies what it leaves out (``threshold`` None,
``debounce`` True, ``reason`` its class name, no-op ``child_exited`` and
``findings``). Everything past that point reads the base-class contract only.
"""

from __future__ import annotations

from typing import Any, ClassVar, Sequence, Union

from ..detectors.base import Finding
from ..samples import ChildSample, SystemSample, Violation

__all__ = ["Policy", "PoolPolicy", "AnyPolicy", "Verdict", "as_policy", "policy_name"]

#: What a pool policy returns: the child to act on and the violation it committed.
Verdict = tuple[int, Violation]


class Policy:
    """Base class for per-child policies: override :meth:`check`; set :attr:`reason`.

    ``threshold`` is the smallest memory (in the configured metric) at which the
    policy could act; the prober uses it to decide when a cheap upper bound is not
    enough and an exact reading is needed. ``None`` means "memory is not my input".
    A policy may change it between polls; the engine reads it after every poll.

    ``debounce`` says whether the engine's strikes apply to this policy's soft
    actions: keep it for policies reading noisy memory; turn it off for inputs that
    do not flicker (a lifetime, a task count, an already confirmed leak).
    """

    reason: ClassVar[str] = "policy"
    """The ``reason`` its recycles and kills are logged with (``memguard.child_recycled``...)."""
    debounce: ClassVar[bool] = True
    """Whether ``memguard_strikes`` applies to its soft actions."""
    threshold: int | None = None
    """Smallest memory (bytes, configured metric) at which it could act; ``None``: memory is not its input."""

    def check(self, child: ChildSample, now: float) -> Violation | None:  # pragma: no cover
        """Return a violation for ``child`` at ``now``, or ``None``."""
        raise NotImplementedError

    def child_exited(self, pid: int) -> None:
        """Child ``pid`` is gone; drop whatever was kept about it."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}(threshold={self.threshold})"


class PoolPolicy:
    """Base class for policies that look at every child at once: override :meth:`check_pool`.

    ``threshold`` has the same meaning as :attr:`Policy.threshold`; a pool policy
    that needs exact readings of every child (to add them up) sets it to ``0``
    until the sum of the cheap upper bounds is back within its budget.
    ``debounce`` as for :class:`Policy`.
    """

    reason: ClassVar[str] = "pool_policy"
    """The ``reason`` its recycles and kills are logged with."""
    debounce: ClassVar[bool] = True
    """Whether ``memguard_strikes`` applies to its soft actions."""
    threshold: int | None = None
    """As :attr:`Policy.threshold`; ``0`` asks for exact readings of every child."""

    def check_pool(
        self, children: Sequence[ChildSample], now: float, system: SystemSample | None
    ) -> list[Verdict]:  # pragma: no cover
        """Return ``[(pid, violation), ...]`` for the children to act on (usually at most one)."""
        raise NotImplementedError

    def child_exited(self, pid: int) -> None:
        """Child ``pid`` is gone; drop whatever was kept about it."""

    def findings(self) -> list[Finding]:
        """Things to log that are not orders (collected by the engine after each ``check_pool``)."""
        return []

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


AnyPolicy = Union[Policy, PoolPolicy]


class _Adapted:
    """The base-class contract for a duck-typed custom policy; every optional member is read from it."""

    inner: Any

    @property
    def threshold(self) -> int | None:  # type: ignore[override]
        try:
            value = getattr(self.inner, "threshold", None)
        except Exception:  # a broken property must not stop the engine: no threshold then
            return None
        return value if isinstance(value, (int, float)) and not isinstance(value, bool) else None

    @property
    def debounce(self) -> bool:  # type: ignore[override]
        return bool(getattr(self.inner, "debounce", True))

    @property
    def reason(self) -> str:  # type: ignore[override]
        return str(getattr(self.inner, "reason", type(self.inner).__name__))

    def child_exited(self, pid: int) -> None:
        exited = getattr(self.inner, "child_exited", None)
        if callable(exited):
            exited(pid)

    def __repr__(self) -> str:
        return repr(self.inner)


class _AdaptedPolicy(_Adapted, Policy):
    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def check(self, child: ChildSample, now: float) -> Violation | None:
        return self.inner.check(child, now)  # type: ignore[no-any-return]


class _AdaptedPoolPolicy(_Adapted, PoolPolicy):
    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def check_pool(self, children: Sequence[ChildSample], now: float, system: SystemSample | None) -> list[Verdict]:
        return list(self.inner.check_pool(children, now, system) or ())

    def findings(self) -> list[Finding]:
        found = getattr(self.inner, "findings", None)
        return list(found() or ()) if callable(found) else []


def as_policy(obj: object) -> AnyPolicy:
    """``obj`` under the one policy contract: itself when it subclasses :class:`Policy` or
    :class:`PoolPolicy`, else an adapter around it. Raises :class:`TypeError` for an object
    with neither ``check(child, now)`` nor ``check_pool(children, now, system)``."""
    if isinstance(obj, (Policy, PoolPolicy)):
        return obj
    if callable(getattr(obj, "check_pool", None)):
        return _AdaptedPoolPolicy(obj)
    if callable(getattr(obj, "check", None)):
        return _AdaptedPolicy(obj)
    raise TypeError(f"{obj!r} is not a policy: it has neither check(child, now) "
                    "nor check_pool(children, now, system)")


def policy_name(policy: object) -> str:
    """The class name of the policy (of the custom object, for an adapted one), for error events."""
    return type(policy.inner if isinstance(policy, _Adapted) else policy).__name__
