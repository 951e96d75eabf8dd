"""Tasks for test_advise's redelivery loop (celery#5641): a task whose child dies under it, redelivered.

Loaded by the worker through Celery's ``imports`` setting. ``at.explode`` runs with ``acks_late=True`` and
``reject_on_worker_lost=True``: when its child is SIGKILLed (as the OOM killer would), the message goes
back to the queue and is delivered again, to a new child. It SIGKILLs its own child on the first
``deaths`` deliveries (counted in a file, so the loop ends) and returns the number of deliveries after.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from tests.integration.proj import app


@app.task(name="at.explode", acks_late=True, reject_on_worker_lost=True)
def explode(counter: str, deaths: int) -> int:
    path = Path(counter)
    seen = int(path.read_text() or "0") if path.exists() else 0
    path.write_text(str(seen + 1))
    if seen < deaths:
        # Die half a second into the task, as a task the kernel OOM-kills does: a child that dies within
        # milliseconds of its first task start can be reaped before MemGuard ever reads it, and then it is
        # not reported (a known gap, see CHANGELOG "Fixed"); this test is about advise naming the loop.
        time.sleep(0.5)
        os.kill(os.getpid(), signal.SIGKILL)
    return seen + 1
