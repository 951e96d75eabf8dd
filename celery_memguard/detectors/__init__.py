"""Pure detectors fed by the master's monitor: leaks per task name, memory-heavy tasks, master growth.

Nothing here does I/O, reads a clock or imports Celery; each detector turns
measurements into :class:`~celery_memguard.detectors.base.Finding` values that
the caller logs as ``memguard.*`` events.
"""

from __future__ import annotations

from .base import GROWTH_WATCH, HEAVY_TASK, LEAK_CLEARED, LEAK_SUSPECTED, MASTER_GROWTH, Detector, Finding
from .heavy import HeavyTaskDetector
from .leak import LeakDetector, LeakEstimate
from .master import MasterGrowthDetector

__all__ = [
    "Detector",
    "Finding",
    "LeakDetector",
    "LeakEstimate",
    "HeavyTaskDetector",
    "MasterGrowthDetector",
    "LEAK_SUSPECTED",
    "LEAK_CLEARED",
    "GROWTH_WATCH",
    "HEAVY_TASK",
    "MASTER_GROWTH",
]
