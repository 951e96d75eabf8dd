"""Unit-test fixtures shared by several modules."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

import pytest

from celery_memguard import events


@pytest.fixture
def event_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """MemGuard's events go as JSON lines to ``tmp_path/events.log`` (returned) for the test's duration."""
    log = events.EventLog(fmt="json", log_file=str(tmp_path / "events.log"))
    monkeypatch.setattr(events, "_current", log)
    yield tmp_path / "events.log"
    os.close(log.fd)


@pytest.fixture
def logged(event_log: Path) -> Path:
    """The event log file of the test (see :func:`event_log`)."""
    return event_log
