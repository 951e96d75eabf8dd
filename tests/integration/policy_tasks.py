"""Tasks and a custom policy for the policy, child-lost and cgroup integration tests (issue 4).

The worker loads this module through Celery's ``imports`` setting (the tests pass
``conf={"imports": [MODULE], ...}``), so the harness's ``proj.py`` stays as it is. Tasks
are registered on the harness app with explicit ``pt.*`` names and sent by name
(``worker.app.send_task``); every task returns the pool child's pid so a test can tell
which child ran what.

* ``pt.hold``: keep ``mib`` MiB alive in the child (optionally after a delay), then stay
  busy for ``hold`` seconds; the memory stays after the task (a deliberate leak), so
  children hold different, known amounts.
* ``pt.spike``: allocate ``mib`` MiB for ``hold`` seconds and free it (a brief excursion).
* ``pt.leak``: retain ``mib`` MiB per call (a steady leak the leak detector confirms).
* ``pt.dirty_table``: write one byte per page of the first ``mib`` MiB of the table the master
  built before forking (``MG_TABLE_MIB``): copy-on-write copies, so the child's USS grows by
  ``mib`` while its RSS does not.
* ``pt.marker``: a no-op the custom policy :class:`MyPolicy` reacts to.
* ``pt.sleep``: write the child's pid to a file, then sleep (a target for an external SIGKILL).
* ``pt.load``: allocate ``mib`` MiB at once (a big payload), write the pid, then sleep: a target
  for a SIGKILL a fraction of a second into the task, as the OOM killer would send.
* ``pt.stubborn``: grow past a hard limit, then swallow every ``Exception``
  (``MemoryLimitExceeded`` included) while keeping the memory, until SIGKILLed.

:class:`MyPolicy` is a per-child custom policy (``memguard_policies``): it recycles a
child after it ran ``pt.marker``, with reason :data:`MARKER_REASON`.
"""

from __future__ import annotations

import os
import time
from typing import Any, ClassVar

from celery_memguard.policies import Policy
from celery_memguard.samples import Action, ChildSample, Violation
from tests.integration.proj import app

MODULE = "tests.integration.policy_tasks"
MARKER_TASK = "pt.marker"
MARKER_REASON = "marker_ran"
MiB = 1024 * 1024
PAGE = 4096

#: Memory kept alive across tasks in this pool child.
KEPT: list[bytearray] = []


def _touched(size: int) -> bytearray:
    """``size`` bytes with every page written, so they are resident and private to this child."""
    buf = bytearray(size)
    buf[::PAGE] = b"\x01" * len(range(0, size, PAGE))
    return buf


def _write(path: str, text: str) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


@app.task(name="pt.hold")
def hold(mib: int, hold: float = 0.0, delay: float = 0.0) -> dict[str, int]:
    """After ``delay`` s keep ``mib`` MiB in this child for good, then stay busy ``hold`` s."""
    if delay:
        time.sleep(delay)
    KEPT.append(_touched(mib * MiB))
    if hold:
        time.sleep(hold)
    return {"pid": os.getpid(), "kept_mib": sum(len(b) for b in KEPT) // MiB}


@app.task(name="pt.dirty_table")
def dirty_table(mib: int) -> int:
    """Make ``mib`` MiB of the master's table private to this child (copy-on-write); returns the pid."""
    from tests.integration import proj

    table = proj.TABLE
    assert table is not None and len(table) >= mib * MiB, "start the worker with table_mib >= mib"
    for offset in range(0, mib * MiB, PAGE):
        table[offset] = 2
    return os.getpid()


@app.task(name="pt.spike")
def spike(mib: int, hold: float) -> int:
    """Hold ``mib`` MiB for ``hold`` seconds, then free it (large buffers go straight back to the OS)."""
    buf = _touched(mib * MiB)
    time.sleep(hold)
    del buf
    return os.getpid()


@app.task(name="pt.leak")
def leak(mib: float, sleep: float = 0.0) -> dict[str, Any]:
    """Retain ``mib`` MiB per call in this child (a leak), optionally staying busy ``sleep`` s."""
    KEPT.append(_touched(int(mib * MiB)))
    if sleep:
        time.sleep(sleep)
    return {"pid": os.getpid(), "kept_mib": sum(len(b) for b in KEPT) / MiB}


@app.task(name=MARKER_TASK)
def marker(sleep: float = 0.5) -> int:
    """A no-op that lasts ``sleep`` seconds, so the master's polls see it running."""
    time.sleep(sleep)
    return os.getpid()


@app.task(name="pt.sleep")
def sleep(seconds: float, pid_file: str | None = None) -> int:
    """Write this child's pid to ``pid_file`` (when given), then sleep ``seconds``."""
    if pid_file:
        _write(pid_file, str(os.getpid()))
    time.sleep(seconds)
    return os.getpid()


@app.task(name="pt.load")
def load(mib: int, seconds: float, pid_file: str) -> int:
    """Allocate ``mib`` MiB at once, write this child's pid to ``pid_file``, then sleep ``seconds``."""
    payload = _touched(mib * MiB)
    _write(pid_file, str(os.getpid()))
    time.sleep(seconds)
    return len(payload) and os.getpid()


@app.task(name="pt.stubborn")
def stubborn(mib: int, seconds: float, state_file: str) -> dict[str, int]:
    """Grow to ``mib`` MiB, then for ``seconds`` swallow every Exception (MemoryLimitExceeded too).

    ``state_file`` gets ``pid caught`` after every swallowed exception, so the test knows the
    polite stop was ignored even though the child ends up SIGKILLed.
    """
    kept: list[bytearray] = []
    caught = 0
    _write(state_file, f"{os.getpid()} {caught}")
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if len(kept) * 8 < mib:
                kept.append(_touched(8 * MiB))
            time.sleep(0.02)
        except Exception:
            caught += 1
            _write(state_file, f"{os.getpid()} {caught}")
    return {"pid": os.getpid(), "caught": caught}


class MyPolicy(Policy):
    """Recycle a child after it ran ``pt.marker`` (seen running at some poll), with reason ``marker_ran``."""

    reason: ClassVar[str] = MARKER_REASON
    debounce: ClassVar[bool] = False

    def __init__(self) -> None:
        self._marked: set[int] = set()

    def check(self, child: ChildSample, now: float) -> Violation | None:
        if child.task == MARKER_TASK:
            self._marked.add(child.pid)
        if child.pid in self._marked:
            return Violation(Action.RECYCLE, self.reason, 1, unit="tasks",
                             detail=(("marker_task", MARKER_TASK),))
        return None

    def child_exited(self, pid: int) -> None:
        self._marked.discard(pid)


class DuckMarker:
    """A custom policy that subclasses nothing and defines only ``check`` (no threshold, reason
    attribute, debounce or child_exited): recycles a child seen running ``pt.marker``."""

    def check(self, child: ChildSample, now: float) -> Violation | None:
        if child.task == MARKER_TASK:
            return Violation(Action.RECYCLE, "duck_marker", 1, unit="tasks")
        return None
