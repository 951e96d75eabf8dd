"""Thin OS probes behind one small interface: how much memory a process uses.

:func:`open_process_probe` returns a :class:`ProcfsProbe` on Linux (fds kept open,
read with ``pread``; about 1.5 µs for a cheap reading) and a :class:`PsutilProbe`
elsewhere. :class:`SelfProbe` is the child's view of itself, used around every
task. :func:`effective_memory` is what ``"20%"`` sizes refer to. :func:`heap_probe`
reads what the child's allocators hold in use (the leak detector's attribution measure).
"""

from __future__ import annotations

from .base import ProbeError, ProcessGone, ProcessProbe
from .heap import HeapProbe, heap_probe
from .procfs import ProcfsProbe, parse_smaps, parse_smaps_rollup, parse_stat_minflt, parse_statm_rss
from .psutil_probe import PsutilProbe
from .self_probe import SelfProbe
from .system import effective_memory, open_process_probe

__all__ = [
    "HeapProbe",
    "ProbeError",
    "ProcessGone",
    "ProcessProbe",
    "ProcfsProbe",
    "PsutilProbe",
    "SelfProbe",
    "effective_memory",
    "heap_probe",
    "open_process_probe",
    "parse_smaps",
    "parse_smaps_rollup",
    "parse_stat_minflt",
    "parse_statm_rss",
]
