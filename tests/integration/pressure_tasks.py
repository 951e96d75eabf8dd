"""Tasks for the pressure-wake integration test and benchmark (issue 12.2).

``pw.fill_below(level, step_mib, hold, most_mib, step_sleep)``: keep memory in this child, ``step_mib`` MiB at a time (pages
touched), until the cgroup's available memory, read the way MemGuard reads it
(:func:`celery_memguard.probes.system.read_system`), is below ``level`` bytes: the moment the threshold
is crossed, as wall-clock time. Then stay busy ``hold`` seconds (0: return at once, the child idle and
holding the memory). Returns the pid, the crossing time and the available memory seen then.
"""

from __future__ import annotations

import os
import time
from typing import Any

from celery_memguard.probes.system import read_system
from tests.integration.proj import app

MODULE = "tests.integration.pressure_tasks"
MiB = 1024 * 1024
PAGE = 4096
KEPT: list[bytearray] = []


@app.task(name="pw.fill_below")
def fill_below(level: int, step_mib: int = 4, hold: float = 0.0, most_mib: int = 2048,
               step_sleep: float = 0.0) -> dict[str, Any]:
    """Grow until available memory < ``level``; return when it was crossed (see module doc). ``step_sleep``:
    seconds between steps (a slower fall)."""
    crossed = available = None
    started = time.time()
    for _ in range(most_mib // step_mib):
        if step_sleep and KEPT:
            time.sleep(step_sleep)
        buf = bytearray(step_mib * MiB)
        buf[::PAGE] = b"\x01" * len(range(0, len(buf), PAGE))
        KEPT.append(buf)
        available = read_system(time.monotonic()).available
        if available < level:
            crossed = time.time()
            break
    if hold:
        time.sleep(hold)
    return {"pid": os.getpid(), "crossed": crossed, "started": started, "available": available,
            "kept_mib": sum(len(b) for b in KEPT) // MiB}
