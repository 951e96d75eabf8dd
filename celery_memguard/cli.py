"""Command-line entry points for the leak report.

Two front ends over one function, :func:`run_report`:

* ``python -m celery_memguard report FILE... [--format text|json]`` (argparse,
  :func:`main`);
* ``celery [-A proj] memguard report FILE... [--format text|json]``: the click
  group :data:`memguard`, which Celery adds to its CLI through the
  ``celery.commands`` entry-point group (``memguard = "celery_memguard.cli:memguard"``).

``-`` reads standard input. The exit status is 0 when at least one input could be
read, whatever it contained (foreign and corrupt lines are counted in the report,
not fatal), and 2 when none could (or on a usage error).
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any, Sequence, TextIO

import click

from .report import build_report, render_json, render_text

__all__ = ["run_report", "build_parser", "main", "memguard", "FORMATS"]

FORMATS = ("text", "json")
EXIT_OK = 0
EXIT_NO_INPUT = 2


def run_report(files: Sequence[str], fmt: str = "text", out: TextIO | None = None, err: TextIO | None = None) -> int:
    """Build and print the report of ``files``; returns the exit status."""
    out = out if out is not None else sys.stdout
    err = err if err is not None else sys.stderr
    report = build_report(files)
    for source in report.sources:
        if not source.readable:
            err.write(f"memguard report: cannot read {source.path}: {source.error}\n")
    if report.readable_sources == 0:
        err.write("memguard report: no input could be read\n")
        return EXIT_NO_INPUT
    out.write(render_json(report) if fmt == "json" else render_text(report))
    out.flush()
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m celery_memguard", description="celery-memguard tools")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    report = commands.add_parser(
        "report",
        help="summarise MemGuard JSON event logs: leak suspects, heavy tasks, recycles, kills, master growth",
        description="Read MemGuard JSON event logs (plain, gzip'd or rotated; several workers at once; '-' for "
                    "standard input) and print a leak report.",
    )
    report.add_argument("files", nargs="+", metavar="FILE", help="event log(s); '-' reads standard input")
    report.add_argument("--format", choices=FORMATS, default="text", help="output format (default: text)")
    return parser


def _quiet_broken_pipe() -> None:
    # The reader of our output went away (``| head``): do not print a traceback on exit.
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m celery_memguard``; returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        return run_report(args.files, args.format)
    except BrokenPipeError:
        _quiet_broken_pipe()
        return EXIT_OK


@click.group(name="memguard", help="celery-memguard tools (memory limits, leak detection).")
def memguard(**_preload_options: Any) -> None:
    """The ``celery memguard`` command group (accepts and ignores the app's preload options)."""


@memguard.command(name="report")
@click.argument("files", nargs=-1, required=True, metavar="FILE...")
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="text", show_default=True,
              help="output format")
def report_command(files: tuple[str, ...], fmt: str) -> None:
    """Summarise MemGuard JSON event logs (plain, gzip'd or rotated, several workers; '-' for stdin)."""
    try:
        code = run_report(list(files), fmt)
    except BrokenPipeError:
        _quiet_broken_pipe()
        code = EXIT_OK
    if code:
        raise SystemExit(code)
