"""Synthetic samples and small drivers shared by the policy tests (no processes, no clock)."""

from __future__ import annotations

from typing import Sequence

from celery_memguard.engine import Engine
from celery_memguard.samples import Action, ChildSample, Decision, SystemSample

MiB = 1024 * 1024
GiB = 1024 * MiB
GRACE = 2.0
POLL = 1.0


def child(pid: int, mem_mib: float, task_id: str | None = None, *, exact: bool = True, tasks_run: int = 3,
          spawned_at: float = 0.0, leak_per_call: float = 0.0, calls_per_second: float = 0.0) -> ChildSample:
    """A ChildSample with memory in MiB; busy when ``task_id`` is given."""
    mem = int(mem_mib * MiB)
    return ChildSample(pid=pid, mem=mem, exact=exact, rss=mem, task=f"app.{task_id}" if task_id else None,
                       task_id=task_id, tasks_run=tasks_run, spawned_at=spawned_at,
                       leak_bytes_per_call=leak_per_call, calls_per_second=calls_per_second)


def system(available_mib: float, *, psi: float | None = None, total_mib: float = 4096, at: float = 0.0) -> SystemSample:
    """A SystemSample with sizes in MiB."""
    available = int(available_mib * MiB)
    total = int(total_mib * MiB)
    return SystemSample(available=available, total=total, used=total - available, psi_some_avg10=psi, at=at)


def engine(policies: Sequence[object], **options: object) -> Engine:
    """An Engine with the test grace and poll interval."""
    return Engine(policies, kill_grace=GRACE, poll_interval=POLL, **options)  # type: ignore[arg-type]


def acts(decisions: list[Decision]) -> list[tuple[Action, int, str]]:
    """(action, pid, reason) of each decision."""
    return [(d.action, d.pid, d.reason) for d in decisions]
