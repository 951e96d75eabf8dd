"""Suite-wide pytest setup: the repository root on ``sys.path``, the ``integration`` and ``slow`` markers.

Every test under ``tests/integration/`` is marked ``integration`` automatically
(they start real Celery workers against real brokers), so
``pytest -m "not integration"`` runs only the fast unit tests.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

_INTEGRATION = REPO / "tests" / "integration"

#: Integration test files that bound a real-time reaction (growth between MemGuard's reading and the stop of a
#: 400 MiB/s task, a reaction within a fraction of a poll, a pause while a task holds memory for seconds). They
#: are marked ``timing``: scripts/test.sh runs them on their own, after the other files ran two at a time,
#: because a second test file's workers on the same 2 cores stretch exactly those bounds.
TIMING_FILES = frozenset({
    "test_cgroup.py", "test_docs_getting_started.py", "test_grown_pool.py", "test_hard_limit.py", "test_hard_stop.py",
    "test_pause.py", "test_pressure_wake.py", "test_shutdown.py", "test_smoke.py", "test_unreadable_proc.py",
})


def pytest_configure(config: pytest.Config) -> None:
    """Register the suite's markers (``integration`` is also declared in pyproject.toml)."""
    config.addinivalue_line("markers", "integration: starts real celery workers against a broker")
    config.addinivalue_line("markers", "slow: a long-running test (deselect with -m 'not slow')")
    config.addinivalue_line("markers", "timing: bounds a real-time reaction; run alone, not beside another test file")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark every test collected from tests/integration/ as ``integration``, those of TIMING_FILES ``timing``."""
    for item in items:
        path = Path(str(item.fspath))
        if _INTEGRATION in path.parents:
            item.add_marker(pytest.mark.integration)
            if path.name in TIMING_FILES:
                item.add_marker(pytest.mark.timing)
