"""Reading event logs: plain, gzip/bz2/xz (detected by content), rotated, several at once, or stdin.

:func:`read_events` yields ``(source, event dict)`` for every MemGuard JSON event
and counts everything else in the source's :class:`SourceStats` instead of
failing: *foreign* lines (Celery's own log lines, other programs' JSON),
*corrupt* ones (a MemGuard line cut short or garbled, undecodable bytes, absurdly
long lines) and *console* ones (MemGuard events rendered with
``memguard_log_format="console"``, which this reader cannot use). A line may
carry a prefix before its JSON object (a Celery log prefix, a container log
timestamp); parsing starts at the first ``{``.

:func:`order_sources` puts rotated files oldest first (``worker.log.3.gz``,
``worker.log.2``, ``worker.log.1``, ``worker.log``), which keeps the output
stable; the aggregator itself orders by each event's ``ts``.
"""

from __future__ import annotations

import bz2
import gzip
import json
import lzma
import re
import sys
import zlib
from typing import IO, Any, BinaryIO, Iterable, Iterator

from .model import SourceStats

__all__ = ["parse_line", "read_events", "order_sources", "MAX_LINE"]

#: Longer lines are counted corrupt and skipped without being held in memory.
MAX_LINE = 1024 * 1024
_CHUNK = 64 * 1024

_decoder = json.JSONDecoder()
_ROTATED = re.compile(r"^(?P<base>.*?)(?:\.(?P<n>\d+)|-(?P<date>\d{8,14}))?(?P<ext>\.(?:gz|bz2|xz))?$")


def parse_line(text: str) -> tuple[str, dict[str, Any] | None]:
    """Classify one line: ``("event", obj)``, or ``(kind, None)`` with kind blank/foreign/corrupt/console."""
    stripped = text.strip()
    if not stripped:
        return "blank", None
    brace = stripped.find("{")
    prefix = stripped if brace < 0 else stripped[:brace]
    if "memguard." in prefix:
        return "console", None
    if brace < 0:
        return "foreign", None
    try:
        obj, _end = _decoder.raw_decode(stripped, brace)
    except (ValueError, RecursionError):  # RecursionError: arrays or objects nested thousands deep
        # A line that is nothing but (broken) JSON, or broken JSON that names our events, is
        # corrupt; text with braces in it (a Celery log line printing a dict) is foreign.
        ours = brace == 0 or "memguard." in stripped or '"event"' in stripped
        return ("corrupt" if ours else "foreign"), None
    if not isinstance(obj, dict):
        return "foreign", None
    event = obj.get("event")
    if not isinstance(event, str) or not event.startswith("memguard."):
        return "foreign", None
    return "event", obj


def _open(path: str, stats: SourceStats) -> BinaryIO:
    if path == "-":
        return sys.stdin.buffer
    raw = open(path, "rb")
    magic = raw.read(6)
    raw.seek(0)
    if magic[:2] == b"\x1f\x8b":
        stats.compressed = "gzip"
        return gzip.GzipFile(fileobj=raw)  # type: ignore[return-value]
    if magic[:3] == b"BZh":
        stats.compressed = "bzip2"
        return bz2.BZ2File(raw)  # type: ignore[return-value]
    if magic == b"\xfd7zXZ\x00":
        stats.compressed = "xz"
        return lzma.LZMAFile(raw)  # type: ignore[return-value]
    return raw


def _lines(stream: IO[bytes], stats: SourceStats) -> Iterator[bytes | None]:
    """Lines of ``stream``; ``None`` stands for a line longer than :data:`MAX_LINE` (skipped)."""
    while True:
        line = stream.readline(MAX_LINE + 1)
        if not line:
            return
        if len(line) > MAX_LINE and not line.endswith(b"\n"):
            while True:  # discard the rest of the overlong line
                rest = stream.readline(_CHUNK)
                if not rest or rest.endswith(b"\n"):
                    break
            yield None
            continue
        yield line


def read_events(paths: Iterable[str], stats_out: list[SourceStats]) -> Iterator[tuple[SourceStats, dict[str, Any]]]:
    """Yield ``(source stats, event)`` for each MemGuard event in ``paths``; never raises on bad input.

    A :class:`SourceStats` per path is appended to ``stats_out`` as reading starts.
    """
    for path in paths:
        stats = SourceStats(path=path)
        stats_out.append(stats)
        try:
            stream = _open(path, stats)
        except OSError as exc:
            stats.readable = False
            stats.error = f"{type(exc).__name__}: {exc.strerror or exc}"
            continue
        try:
            for raw in _lines(stream, stats):
                stats.lines += 1
                if raw is None:
                    stats.corrupt += 1
                    continue
                kind, obj = parse_line(raw.decode("utf-8", "replace"))
                if kind == "event" and obj is not None:
                    stats.events += 1
                    yield stats, obj
                elif kind == "foreign":
                    stats.foreign += 1
                elif kind == "corrupt":
                    stats.corrupt += 1
                elif kind == "console":
                    stats.console += 1
        except (OSError, EOFError, zlib.error, lzma.LZMAError, ValueError) as exc:
            # A truncated or damaged compressed file: keep what was read before the damage.
            stats.error = f"{type(exc).__name__}: {exc}"
            if stats.lines == 0:
                stats.readable = False
        finally:
            if path != "-":
                try:
                    stream.close()
                except Exception:
                    pass


def _rotation_key(path: str) -> tuple[str, int, str]:
    match = _ROTATED.match(path)
    if match is None:  # pragma: no cover - the pattern matches every string
        return path, 0, ""
    base = match.group("base")
    if match.group("n") is not None:
        return base, -int(match.group("n")), ""
    if match.group("date") is not None:
        return base, -1, match.group("date")
    return base, 0, ""


def order_sources(paths: Iterable[str]) -> list[str]:
    """``paths`` with each rotated family oldest first; families keep their first-seen order; no duplicates."""
    unique: list[str] = []
    for path in paths:
        if path not in unique:
            unique.append(path)
    families: dict[str, list[str]] = {}
    for path in unique:
        families.setdefault(_rotation_key(path)[0], []).append(path)
    ordered: list[str] = []
    for members in families.values():
        ordered.extend(sorted(members, key=lambda p: _rotation_key(p)[1:]))
    return ordered
