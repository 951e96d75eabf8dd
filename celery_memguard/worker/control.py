"""Remote control: the ``memguard`` inspect command, and the live status it returns.

``celery -A proj inspect memguard`` (or ``celery -A proj memguard status``, which
renders the same replies as a table) asks every worker what MemGuard sees right
now: each pool child's memory (exact, or an upper bound marked as such), its
current task, task count, age and any order already given to it; the master's
memory and the system's available memory when they are read; the limits; the
current leak suspects, heavy tasks and master growth; the decisions taken
so far by action and reason; and where events go and how many were dropped
because they could not be written.

The command runs in the worker's consumer thread while the monitor thread
polls: it reads only what the monitor publishes whole after each poll
(:class:`~celery_memguard.monitor.PollView`) and the guard's finding tables
(:class:`~celery_memguard.guard.Guard`, replaced whole), never the detectors' or the engine's working state (except one
dict lookup per child for its pending order). It reads only the Guard's public view and costs no reading of its own.
It is registered when this module is imported, which happens when the app
module imports ``celery_memguard.MemGuard`` (so the client's ``celery inspect``
knows the command too). A failure is returned as ``{"error": ...}`` and logged
as ``memguard.error`` once per cause; it never reaches the worker.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from celery.worker.control import inspect_command

from .. import events
from ..monitor import PollView
from ..units import mib

if TYPE_CHECKING:
    from ..guard import Guard

__all__ = ["COMMAND", "status_of", "memguard_status", "load_app"]

#: The remote-control command name: ``celery inspect memguard``, ``app.control.broadcast("memguard")``.
COMMAND = "memguard"
NOT_ENABLED = ("MemGuard is not running in this worker: add it with app.steps['worker'].add(MemGuard) "
               "and keep memguard_enabled = True")


def status_of(guard: "Guard | None", now: float) -> dict[str, Any]:
    """The JSON-able status of a worker's MemGuard (its :class:`Guard`); ``now`` on the monitor's clock."""
    if guard is None:
        return {"active": False, "reason": "MemGuard has not started yet", "events": _events_status()}
    cfg = guard.config
    status: dict[str, Any] = {
        "pool": guard.pool_name,
        "active": guard.active,
        "metric": cfg.metric,
        "dry_run": cfg.dry_run,
        "limits": {
            "soft_limit_mib": mib(cfg.soft_limit),
            "hard_limit_mib": mib(cfg.hard_limit),
            "pool_limit_mib": mib(cfg.pool_limit),
            "min_available_mib": mib(cfg.min_available),
            "psi_threshold": cfg.psi_threshold,
            "pause_below_mib": mib(cfg.pause_below),
            "pause_pool_above_mib": mib(cfg.pause_pool_above),
        },
        "suspects": sorted(guard.suspects.values(), key=lambda s: -float(s.get("kib_per_call") or 0.0)),
        "heavy_tasks": guard.heavy,
        "master_growth": guard.master_growth,
        "intake": guard.intake_status(now),
        "events": _events_status(),
    }
    if not guard.active:
        status["reason"] = ("the pool has no child processes to police" if guard.board is None
                            else "the monitor did not start (see memguard.error)")
        return status
    view = guard.last_poll
    status["polls"] = guard.polls
    status["unreadable_children"] = guard.unreadable_children
    status["decisions"] = {f"{action}:{reason}": count for (action, reason), count in sorted(guard.decided.items())}
    if view is None:
        status["children"] = []
        return status
    status["children"] = _children_status(guard, view)
    status["pool_mib"] = mib(sum(child.mem for child in view.children))
    status["pool_exact"] = all(child.exact for child in view.children)
    status["poll_age_s"] = round(max(0.0, now - view.at), 3)
    master = view.master
    if master is not None:
        status["master"] = {"pid": master.pid, "mem_mib": mib(master.mem), "rss_mib": mib(master.rss),
                            "age_s": round(max(0.0, now - master.at), 1)}
    if view.system is not None:
        system = view.system
        status["system"] = {"available_mib": mib(system.available), "total_mib": mib(system.total),
                            "psi_some_avg10": system.psi_some_avg10}
    return status


def _children_status(guard: "Guard", view: PollView) -> list[dict[str, Any]]:
    """Each pool child as the latest poll saw it, with any order already given to it."""
    cfg = guard.config
    children: list[dict[str, Any]] = []
    for child in view.children:
        pending = guard.pending(child.pid)
        children.append({
            "pid": child.pid,
            "mem_mib": mib(child.mem),
            "exact": child.exact,  # False: mem_mib is an upper bound (the exact reading was not needed)
            "metric": child.fallback or cfg.metric,  # "rss" when the configured metric cannot be read for it
            "rss_mib": mib(child.rss),
            "task": child.task,
            "task_id": child.task_id,
            "tasks_run": child.tasks_run,
            "age_s": round(view.at - child.spawned_at, 1) if child.spawned_at else None,
            "leaving": pending.value if pending is not None else None,
        })
    return children


def _events_status() -> dict[str, Any]:
    """Where events go, and how many could not be written (all processes of this worker)."""
    log = events.get()
    return {"log": log.describe(), "dropped": log.dropped}


@inspect_command(name=COMMAND, help="MemGuard: pool children's memory, limits, leak suspects, decisions")
def memguard_status(state: Any, **_kwargs: Any) -> dict[str, Any]:
    """The ``memguard`` inspect command: this worker's MemGuard status, or ``{"error": ...}``."""
    step = getattr(getattr(getattr(state, "consumer", None), "controller", None), "memguard", None)
    if step is None:
        return {"error": NOT_ENABLED}
    try:
        return step.status()
    except Exception as exc:  # fail open: the reply says what went wrong, the worker carries on
        events.error("control.status", exc)
        return {"error": f"{type(exc).__name__}: {exc}"}


def load_app(name: str) -> Any:
    """The Celery app named like ``celery -A NAME`` (module, ``module:attr`` or package; found from the cwd)."""
    from celery.app.utils import find_app

    return find_app(name)
