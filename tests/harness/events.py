"""Reading MemGuard's JSON event log and waiting for things, for tests and benchmarks alike.

Nothing here imports pytest: a benchmark run as ``python benchmarks/bench_x.py`` uses the same
functions. A wait that runs out raises :class:`HarnessTimeout`, an ``AssertionError``, so a test
that waited in vain fails with the message saying what it waited for.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable


class HarnessTimeout(AssertionError):
    """A wait of the harness ran out (the message says what for)."""


def read_events(path: Path, name: str | None = None) -> list[dict[str, Any]]:
    """Every JSON event in ``path`` (non-JSON lines skipped), optionally only those named ``name``."""
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return []
    events: list[dict[str, Any]] = []
    for line in text.splitlines():
        line = line.strip()
        if not line.startswith("{"):
            continue
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if isinstance(event, dict) and (name is None or event.get("event") == name):
            events.append(event)
    return events


def wait_until(predicate: Callable[[], Any], timeout: float, interval: float = 0.1, what: str = "condition") -> Any:
    """Poll ``predicate`` until it returns something truthy (returned); :class:`HarnessTimeout` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise HarnessTimeout(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def tail(path: Path, lines: int = 40) -> str:
    """The last ``lines`` lines of a text file, ``<missing>`` if there is none (for failure messages)."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "<missing>"
