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


def pytest_configure(config: pytest.Config) -> None:
    """Register the suite's markers (``integration`` is also declared in pyproject.toml)."""
    config.addinivalue_line("markers", "integration: starts real celery workers against a broker")
    config.addinivalue_line("markers", "slow: a long-running test (deselect with -m 'not slow')")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark every test collected from tests/integration/ as ``integration``."""
    for item in items:
        if _INTEGRATION in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.integration)
