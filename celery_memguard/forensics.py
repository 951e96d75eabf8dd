"""OOM forensics: explain a pool child that died by a signal MemGuard did not send. Pure.

Celery reports such a death as a bare ``WorkerLostError: signal 9``. The monitor
keeps each child's last few samples; when a child disappears with a negative exit
code (killed by a signal) or an unexpected exit code, and MemGuard had not sent
``SIGKILL`` itself, :func:`explain_loss` turns what is known into one
``memguard.child_lost`` event: which task it was running, its last memory and its
growth just before death, the change of the cgroup's ``oom_kill`` counter, and a
``likely_oom`` verdict with the reason. A :class:`LossExplainer` is that concern
for one worker: built once from the settings (hard limit, effective memory) and
the readers it needs (OOM-kill counter, available memory), it keeps the counter's
baseline between losses, so the monitor only says "this child is gone".

The task comes from what the child itself wrote on the board when the task started
(``task_source="board"``; it survives the child, even once a replacement has taken
its slot), not from the master's last poll, which may predate the task: a child
killed a fraction of a second into a task is still named with it. The memory fields
say what they are: ``last_mem_mib``/``last_rss_mib`` are the master's last poll of the
child, ``last_poll_s_before`` how long before the loss was noticed that poll was
taken, ``last_poll_during_task`` whether it was taken while the fatal task ran (if
not, the reading predates the task and says nothing about it), and
``rss_at_task_start_mib`` is the child's own RSS reading when the task started.
"""

from __future__ import annotations

import signal as _signal
from collections import deque
from dataclasses import dataclass
from typing import Callable, Protocol

from . import events
from .events import CHILD_LOST
from .samples import ChildSample
from .units import MiB, mib

__all__ = ["ChildHistory", "LossExplainer", "LossReport", "explain_loss", "EX_RECYCLE", "CLEAN_EXITS", "CHILD_LOST"]

#: billiard's exit code for a planned recycle; 0 is a clean exit.
EX_RECYCLE = 0x9B
CLEAN_EXITS = (0, EX_RECYCLE)


class ChildHistory:
    """The last few (time, sample) pairs of one child."""

    __slots__ = ("samples",)

    def __init__(self, size: int = 8) -> None:
        self.samples: deque[tuple[float, ChildSample]] = deque(maxlen=size)

    def add(self, now: float, sample: ChildSample) -> None:
        self.samples.append((now, sample))

    @property
    def last(self) -> ChildSample | None:
        return self.samples[-1][1] if self.samples else None

    @property
    def last_at(self) -> float | None:
        """When the last sample was taken."""
        return self.samples[-1][0] if self.samples else None

    def growth_rate(self) -> float | None:
        """RSS growth in bytes/s over the kept window (None with fewer than two samples)."""
        if len(self.samples) < 2:
            return None
        (t0, s0), (t1, s1) = self.samples[0], self.samples[-1]
        if t1 <= t0:
            return None
        return (s1.rss - s0.rss) / (t1 - t0)


class RecordedTask(Protocol):
    """What a child recorded about itself on the board (``board.CurrentTask``)."""

    busy: bool
    task: str | None
    task_id: str | None
    started: float
    rss_before: int


@dataclass(frozen=True, slots=True)
class LossReport:
    event: str
    fields: dict[str, object]


def _signal_name(signum: int) -> str:
    try:
        return _signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def _oom_verdict(signum: int | None, exitcode: int, oom_delta: int | None, last: ChildSample | None,
                 rate: float | None, available: int | None, effective_memory: int) -> tuple[bool, str]:
    """Whether the loss was likely the kernel's OOM killer, and why (the first sign that holds)."""
    if signum != _signal.SIGKILL:
        return False, "not killed by SIGKILL" if signum is not None else f"exited with code {exitcode}"
    if oom_delta:
        return True, f"the cgroup's oom_kill counter rose by {oom_delta}"
    if last is not None and last.rss >= 0.8 * effective_memory:
        return True, "its memory was near the effective memory limit"
    if last is not None and rate is not None and rate > 50 * MiB:
        return True, f"it was growing at {rate / MiB:.0f} MiB/s just before death"
    if available is not None and available < 0.05 * effective_memory:
        return True, "the system had under 5% of memory available"
    if oom_delta == 0:
        return False, ("SIGKILL, but the cgroup's oom_kill counter did not change: likely an operator, a time limit "
                       "or another process")
    return False, "SIGKILL with no memory pressure seen (oom_kill counter not readable)"


def _task_of(recorded: RecordedTask | None, last: ChildSample | None) -> tuple[str | None, str | None, str | None]:
    """The lost child's task, task id and where they come from: its own board record, else the last poll."""
    if recorded is not None:
        return recorded.task, recorded.task_id, "board"
    if last is not None:
        return last.task, last.task_id, "last_poll"
    return None, None, None


def explain_loss(
    pid: int,
    exitcode: int | None,
    history: ChildHistory | None,
    *,
    oom_kills_before: int | None,
    oom_kills_now: int | None,
    hard_limit: int | None,
    effective_memory: int,
    available: int | None = None,
    recorded: RecordedTask | None = None,
    now: float | None = None,
) -> LossReport | None:
    """A ``memguard.child_lost`` report, or None for a clean exit or an unknown one.

    ``recorded``: what the child last wrote on the board about itself (None if unknown); ``now``: when
    the loss was noticed (same clock as the history and the board's task start).
    """
    if exitcode is None or exitcode in CLEAN_EXITS:
        return None
    signum = -exitcode if exitcode < 0 else None
    last = history.last if history is not None else None
    rate = history.growth_rate() if history is not None else None
    oom_delta = None
    if oom_kills_before is not None and oom_kills_now is not None:
        oom_delta = max(0, oom_kills_now - oom_kills_before)

    likely, reason = _oom_verdict(signum, exitcode, oom_delta, last, rate, available, effective_memory)
    last_at = history.last_at if history is not None else None
    task, task_id, source = _task_of(recorded, last)
    busy = recorded is not None and recorded.busy
    fields: dict[str, object] = {
        "pid": pid,
        "signal": _signal_name(signum) if signum is not None else None,
        "exitcode": exitcode,
        "task": task,
        "task_id": task_id,
        "task_source": source,
        "task_started_s_before": round(now - recorded.started, 3) if busy and now is not None else None,
        "rss_at_task_start_mib": mib(recorded.rss_before) if busy else None,
        "last_mem_mib": mib(last.mem) if last is not None else None,
        "last_rss_mib": mib(last.rss) if last is not None else None,
        "last_poll_s_before": round(now - last_at, 3) if last_at is not None and now is not None else None,
        "last_poll_during_task": (last_at >= recorded.started) if busy and last_at is not None else None,
        "growth_mib_per_s": mib(rate),
        "oom_kill_delta": oom_delta,
        "likely_oom": likely,
        "reason": reason,
    }
    if hard_limit is not None and last is not None:
        fields["hard_limit_mib"] = mib(hard_limit)
    return LossReport(CHILD_LOST, fields)


class LossExplainer:
    """Explains one worker's lost children: its limits, and how to read the machine when a child is lost.

    ``oom_kills`` reads the kernel's OOM-kill counter (None: not read); ``available`` reads the memory
    available right now (None: not read). A reader that raises is one ``memguard.error`` and the
    explanation goes on without it. Built where the settings are known (the Guard); the monitor calls
    :meth:`explain` for a child that left with an exit code MemGuard did not cause.
    """

    def __init__(self, *, hard_limit: int | None = None, effective_memory: int = 0,
                 oom_kills: Callable[[], int | None] | None = None,
                 available: Callable[[], int | None] | None = None) -> None:
        self.hard_limit = hard_limit
        self.effective_memory = effective_memory
        self._oom_kills = oom_kills
        self._available = available
        self._oom_baseline = self._read("oom_kills", oom_kills)

    def explain(self, pid: int, exitcode: int | None, history: ChildHistory | None, *,
                recorded: RecordedTask | None = None, now: float | None = None) -> LossReport | None:
        """The ``memguard.child_lost`` report for child ``pid`` (None for a clean exit); moves the baseline."""
        if exitcode is None or exitcode in CLEAN_EXITS:
            return None
        oom_now = self._read("oom_kills", self._oom_kills)
        report = explain_loss(pid, exitcode, history, oom_kills_before=self._oom_baseline, oom_kills_now=oom_now,
                              hard_limit=self.hard_limit, effective_memory=self.effective_memory,
                              available=self._read("system", self._available), recorded=recorded, now=now)
        self._oom_baseline = oom_now
        return report

    @staticmethod
    def _read(what: str, reader: Callable[[], int | None] | None) -> int | None:
        if reader is None:
            return None
        try:
            return reader()
        except Exception as exc:
            events.error(f"monitor.{what}", exc)
            return None
