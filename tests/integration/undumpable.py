"""Make every pool child non-dumpable at start (``imports`` this module), as a hardened app or a
library calling ``prctl(PR_SET_DUMPABLE, 0)`` would: the worker's main process can then no longer
open the child's ``/proc/PID/smaps_rollup`` unless it has ``CAP_SYS_PTRACE`` (issue 13.4)."""

from __future__ import annotations

import ctypes
from typing import Any

from celery import signals

PR_SET_DUMPABLE = 4


@signals.worker_process_init.connect(weak=False)
def _undumpable(**_: Any) -> None:
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)
