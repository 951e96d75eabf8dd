"""The leak report: read MemGuard's JSON event logs and tell the operator what they mean.

``build_report(paths)`` reads the files (see :mod:`.reader`), aggregates the
events per worker into a :class:`~.model.Report` (see :mod:`.aggregate`), and
:func:`render_text` / :func:`render_json` print it. Used by
``python -m celery_memguard report`` and ``celery memguard report``.
"""

from __future__ import annotations

from typing import Iterable

from .aggregate import Aggregator, verdict
from .model import Report, SourceStats
from .reader import order_sources, parse_line, read_events
from .render import render_json, render_text, to_dict

__all__ = [
    "Report",
    "Aggregator",
    "build_report",
    "order_sources",
    "parse_line",
    "read_events",
    "render_json",
    "render_text",
    "to_dict",
    "verdict",
]


def build_report(paths: Iterable[str]) -> Report:
    """Read every path (``-`` is standard input) and aggregate its MemGuard events."""
    sources: list[SourceStats] = []
    aggregator = Aggregator()
    for source, event in read_events(order_sources(paths), sources):
        aggregator.feed(event, source)
    return aggregator.build(sources)
