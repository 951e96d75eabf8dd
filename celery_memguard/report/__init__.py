"""The leak report: read MemGuard's JSON event logs and tell the operator what they mean.

``build_report(paths)`` reads the files (see :mod:`.reader`), aggregates the
events per worker into a :class:`~.model.Report` (see :mod:`.aggregate`), and
:func:`render_text` / :func:`render_json` print it. Given a
:class:`~.timeline.Timelines`, it also collects the memory timelines and event
markers that :func:`render_html` draws (``--format html``). Used by
``python -m celery_memguard report`` and ``celery memguard report``.
"""

from __future__ import annotations

from typing import Iterable

from .aggregate import Aggregator, verdict
from .model import Report, SourceStats
from .reader import order_sources, parse_line, read_events
from .html import render_html
from .render import render_json, render_text, to_dict
from .timeline import Timelines

__all__ = [
    "Report",
    "Aggregator",
    "build_report",
    "order_sources",
    "parse_line",
    "read_events",
    "render_html",
    "render_json",
    "render_text",
    "to_dict",
    "Timelines",
    "verdict",
]


def build_report(paths: Iterable[str], timelines: Timelines | None = None) -> Report:
    """Read every path (``-`` is standard input) and aggregate its MemGuard events (and, with ``timelines``,
    collect their memory timelines too)."""
    sources: list[SourceStats] = []
    aggregator = Aggregator()
    for source, event in read_events(order_sources(paths), sources):
        aggregator.feed(event, source)
        if timelines is not None:
            timelines.feed(event)
    return aggregator.build(sources)
