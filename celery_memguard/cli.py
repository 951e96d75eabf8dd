"""The command line: one click group, ``memguard``, with ``report``, ``advise`` and ``status``.

The same group is reachable three ways:

* ``celery [-A proj] memguard ...``: Celery adds it to its own CLI through the
  ``celery.commands`` entry-point group (``memguard = "celery_memguard.cli:memguard"``);
* ``celery-memguard ...``: the console script (:func:`main`);
* ``python -m celery_memguard ...``: :mod:`celery_memguard.__main__` (:func:`main`).

``report FILE... [--format text|json|html] [-o OUT]`` summarises MemGuard's JSON
event logs (:func:`run_report`); ``-`` reads standard input. ``html`` is one
self-contained page with memory timelines (see :mod:`celery_memguard.report.html`). Its exit status is 0 when at
least one input could be read, whatever it contained (foreign and corrupt lines
are counted in the report, not fatal), and 2 when none could (or on a usage error).

``advise FILE... [--format text|json]`` turns the same logs into settings (concurrency,
soft/hard limits, recycling, prefetch, routing), each with its evidence and config line
(:func:`run_advise`; the advisor itself is :mod:`celery_memguard.advice`); exit status as
``report``'s.

``status [-d WORKER,...] [--timeout S] [--format text|json]`` broadcasts the
``memguard`` inspect command (:mod:`celery_memguard.worker.control`) and prints each
worker's reply (:func:`render_status`); exit status 2 when no worker replied in
time. It needs the app: ``celery -A proj memguard status``, or outside Celery's
CLI ``celery-memguard -A proj status``.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any, Sequence, TextIO

import click

from . import __version__
from .report import Timelines, build_report, render_html, render_json, render_text
from .report.render import duration, table

__all__ = ["run_report", "run_advise", "main", "memguard", "render_status", "FORMATS", "PROG"]

FORMATS = ("text", "json", "html")
#: ``status`` prints text or JSON (a live reply has no timelines to draw).
STATUS_FORMATS = ("text", "json")
#: ``advise`` prints text or JSON.
ADVISE_FORMATS = ("text", "json")
EXIT_OK = 0
EXIT_NO_INPUT = 2
#: The program name shown in usage lines when run as the console script or ``python -m celery_memguard``.
PROG = "celery-memguard"


def run_report(files: Sequence[str], fmt: str = "text", out: TextIO | None = None, err: TextIO | None = None,
               output: str | None = None) -> int:
    """Build and print the report of ``files`` (to ``output``, a file path, when given); returns the exit status."""
    out = out if out is not None else sys.stdout
    err = err if err is not None else sys.stderr
    timelines = Timelines() if fmt == "html" else None
    report = build_report(files, timelines)
    for source in report.sources:
        if not source.readable:
            err.write(f"memguard report: cannot read {source.path}: {source.error}\n")
    if report.readable_sources == 0:
        err.write("memguard report: no input could be read\n")
        return EXIT_NO_INPUT
    if fmt == "html":
        text = render_html(report, timelines)
    else:
        text = render_json(report) if fmt == "json" else render_text(report)
    if output is not None and output != "-":
        try:
            with open(output, "w", encoding="utf-8") as handle:
                handle.write(text)
        except OSError as exc:
            err.write(f"memguard report: cannot write {output}: {exc}\n")
            return EXIT_NO_INPUT
        err.write(f"memguard report: wrote {output} ({len(text.encode()):,} bytes)\n")
        return EXIT_OK
    out.write(text)
    out.flush()
    return EXIT_OK


def run_advise(files: Sequence[str], fmt: str = "text", out: TextIO | None = None,
               err: TextIO | None = None) -> int:
    """Print the advice for ``files``; returns the exit status (2 when no input could be read)."""
    from .report.advise import build_advice, render_advice_json, render_advice_text

    out = out if out is not None else sys.stdout
    err = err if err is not None else sys.stderr
    advice = build_advice(files)
    for source in advice.sources:
        if not source.readable:
            err.write(f"memguard advise: cannot read {source.path}: {source.error}\n")
    if advice.readable_sources == 0:
        err.write("memguard advise: no input could be read\n")
        return EXIT_NO_INPUT
    out.write(render_advice_json(advice) if fmt == "json" else render_advice_text(advice))
    out.flush()
    return EXIT_OK


def _quiet_broken_pipe() -> None:
    # The reader of our output went away (``| head``): do not print a traceback on exit.
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


@click.group(name="memguard", help="celery-memguard tools: the leak report of event logs, settings advice from "
                                    "them, the live status of workers.")
@click.option("-A", "--app", "app_name", metavar="MODULE",
              help="the Celery app, for 'status' outside Celery's CLI (celery-memguard -A proj status); "
                   "under 'celery -A proj memguard' the app is Celery's")
@click.version_option(__version__, "--version", prog_name=PROG, message="%(prog)s %(version)s")
@click.pass_context
def memguard(ctx: click.Context, app_name: str | None = None, **_preload_options: Any) -> None:
    """The ``memguard`` command group (accepts and ignores the app's preload options under Celery's CLI)."""
    if app_name:
        ctx.meta["celery_memguard.app_name"] = app_name


@memguard.command(name="report")
@click.argument("files", nargs=-1, required=True, metavar="FILE...")
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="text", show_default=True,
              help="output format (html: one self-contained page with memory timelines)")
@click.option("-o", "--output", metavar="PATH", default=None,
              help="write the report to PATH instead of standard output")
@click.pass_context
def report_command(ctx: click.Context, files: tuple[str, ...], fmt: str, output: str | None) -> None:
    """Summarise MemGuard JSON event logs (plain, gzip'd or rotated, several workers; '-' for stdin)."""
    try:
        code = run_report(list(files), fmt, output=output)
    except BrokenPipeError:
        _quiet_broken_pipe()
        code = EXIT_OK
    if code:
        ctx.exit(code)


@memguard.command(name="advise")
@click.argument("files", nargs=-1, required=True, metavar="FILE...")
@click.option("--format", "fmt", type=click.Choice(ADVISE_FORMATS), default="text", show_default=True,
              help="output format")
@click.pass_context
def advise_command(ctx: click.Context, files: tuple[str, ...], fmt: str) -> None:
    """Recommend settings (concurrency, limits, recycling, prefetch, routing) from MemGuard JSON event logs."""
    try:
        code = run_advise(list(files), fmt)
    except BrokenPipeError:
        _quiet_broken_pipe()
        code = EXIT_OK
    if code:
        ctx.exit(code)


def _num(value: Any, unit: str = "", digits: int = 1) -> str:
    if value is None:
        return "?"
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return f"{value:,.{digits}f}{unit}"
    return str(value)


def _worker_status(hostname: str, status: Any) -> list[str]:
    """One worker's reply as text (any shape: a foreign or failing reply is shown, never raised on)."""
    if not isinstance(status, dict):
        return [f"{hostname}: unexpected reply {status!r}"]
    if "error" in status:
        return [f"{hostname}: {status['error']}"]
    metric = status.get("metric", "?")
    return [*_status_header(hostname, status, metric), *_status_host(status, metric),
            *_status_children(status, metric), *_status_findings(status)]


def _status_header(hostname: str, status: dict[str, Any], metric: str) -> list[str]:
    """The worker's pool, metric and limits, and whether (and how recently) it polls."""
    limits = status.get("limits") or {}
    head = [f"pool {status.get('pool', '?')}", f"metric {metric}"]
    for key, label in (("soft_limit_mib", "soft"), ("hard_limit_mib", "hard"), ("pool_limit_mib", "pool budget"),
                       ("min_available_mib", "min available"), ("pause_below_mib", "pause below"),
                       ("pause_pool_above_mib", "pause pool above")):
        if limits.get(key) is not None:
            head.append(f"{label} {_num(limits[key], ' MiB')}")
    if status.get("dry_run"):
        head.append("DRY RUN")
    out = [f"{hostname}  ({', '.join(head)})"]
    if not status.get("active"):
        out.append(f"  not policing: {status.get('reason', '?')}")
    else:
        out.append(f"  {_num(status.get('polls'), digits=0)} polls, last {_num(status.get('poll_age_s'), ' s', 2)} ago")
    intake = status.get("intake")
    if isinstance(intake, dict) and intake.get("enabled"):
        if intake.get("paused"):
            out.append(f"  intake PAUSED ({intake.get('trigger')}) for {_num(intake.get('paused_for_s'), ' s')}, "
                       f"{_num(intake.get('held'), digits=0)} tasks held")
        else:
            out.append(f"  intake open ({_num(intake.get('pauses'), digits=0)} pauses, "
                       f"{_num(intake.get('paused_s_total'), ' s')} paused in all)")
    return out


def _status_host(status: dict[str, Any], metric: str) -> list[str]:
    """The master's memory and the system's available memory, when they were read."""
    out: list[str] = []
    master = status.get("master")
    if isinstance(master, dict):
        out.append(f"  master pid {master.get('pid')}: {metric} {_num(master.get('mem_mib'), ' MiB')}, "
                   f"rss {_num(master.get('rss_mib'), ' MiB')}")
    system = status.get("system")
    if isinstance(system, dict):
        psi = system.get("psi_some_avg10")
        out.append(f"  available {_num(system.get('available_mib'), ' MiB')} of {_num(system.get('total_mib'), ' MiB')}"
                   + (f", PSI some avg10 {psi:.2f}" if isinstance(psi, (int, float)) else ""))
    return out


def _status_children(status: dict[str, Any], metric: str) -> list[str]:
    """The pool children's table (upper bounds marked ``<=``, RSS stand-ins ``(rss)``) and the pool total."""
    children = status.get("children")
    if not isinstance(children, list) or not children:
        return []
    rows = []
    for c in children:
        if not isinstance(c, dict):
            continue
        mem = _num(c.get("mem_mib"))
        age = c.get("age_s")
        if c.get("metric") not in (None, metric):
            mem += f" ({c.get('metric')})"  # the configured metric could not be read for this child
        rows.append([str(c.get("pid")), mem if c.get("exact", True) else "<=" + mem, _num(c.get("rss_mib")),
                     _num(c.get("tasks_run"), digits=0),
                     duration(float(age)) if isinstance(age, (int, float)) else "?", c.get("leaving") or "",
                     f"{c.get('task')} {c.get('task_id')}" if c.get("task") else "idle"])
    out = table(rows, ["pid", f"{metric} MiB", "rss MiB", "tasks", "age", "leaving", "task"], "    ",
                right={1, 2, 3, 4})
    if status.get("unreadable_children"):
        out.append(f"    {status['unreadable_children']} children: {metric} unreadable, RSS stands in (marked "
                   f"'(rss)'); hard limit only, no soft recycles on it (see memguard.metric_unavailable)")
    total = _num(status.get("pool_mib"), " MiB")
    out.append(f"    pool total {total if status.get('pool_exact', True) else '<=' + total}"
               + ("" if all(isinstance(c, dict) and c.get("exact", True) for c in children) else
                  " (<= marks an upper bound: the exact reading was not needed)"))
    return out


def _status_findings(status: dict[str, Any]) -> list[str]:
    """Leak suspects, heavy tasks, master growth, decisions so far, and where events go."""
    out: list[str] = []
    suspects = status.get("suspects") or []
    if suspects:
        out.append("  leak suspects:")
        for item in suspects:
            if isinstance(item, dict):
                out.append(f"    {item.get('task')}: {_num(item.get('kib_per_call'))} KiB/call, confidence "
                           f"{_num(item.get('confidence'), digits=2)}, {_num(item.get('calls_observed'), digits=0)} "
                           f"calls in {_num(item.get('children'), digits=0)} children")
    else:
        out.append("  leak suspects: none")
    heavy = status.get("heavy_tasks") or {}
    if isinstance(heavy, dict) and heavy:
        out.append("  heavy tasks: " + ", ".join(f"{task} x{count}" for task, count in sorted(heavy.items())))
    growth = status.get("master_growth")
    if isinstance(growth, dict):
        out.append(f"  master growth: +{_num(growth.get('growth_mib'), ' MiB')} "
                   f"({_num(growth.get('mib_per_hour'), ' MiB/h')})")
    decisions = status.get("decisions") or {}
    if isinstance(decisions, dict):
        out.append("  decisions: " + (", ".join(f"{k} {v}" for k, v in decisions.items()) or "none"))
    log = status.get("events")
    if isinstance(log, dict):
        dropped = log.get("dropped")
        out.append(f"  events: {log.get('log', '?')}"
                   + (f", {_num(dropped, digits=0)} DROPPED (could not be written)" if dropped else ""))
    return out


def render_status(replies: list[dict[str, Any]]) -> str:
    """``celery memguard status`` text for the broadcast replies (``[{hostname: status}, ...]``)."""
    out: list[str] = []
    for reply in replies:
        for hostname, status in sorted(reply.items()):
            if out:
                out.append("")
            out.extend(_worker_status(hostname, status))
    return "\n".join(out) + "\n"


@memguard.command(name="status")
@click.option("-d", "--destination", help="comma-separated worker names to ask (default: all)")
@click.option("-t", "--timeout", type=float, default=1.0, show_default=True, help="seconds to wait for replies")
@click.option("--format", "fmt", type=click.Choice(STATUS_FORMATS), default="text", show_default=True,
              help="output format")
@click.pass_context
def status_command(ctx: click.Context, destination: str | None, timeout: float, fmt: str) -> None:
    """Ask running workers what MemGuard sees now: children's memory, limits, suspects, decisions."""
    from .worker import control  # registers the command for Celery's broadcast (and needs Celery)

    app = getattr(ctx.obj, "app", None)  # under Celery's CLI: its CLIContext
    app_name = ctx.meta.get("celery_memguard.app_name")
    if app_name:
        try:
            app = control.load_app(app_name)
        except Exception as exc:
            raise click.UsageError(f"cannot load the Celery app {app_name!r}: {exc}") from exc
    if app is None:
        raise click.UsageError(f"needs the app: celery -A proj memguard status, or {PROG} -A proj status")
    replies = app.control.broadcast(control.COMMAND, reply=True, timeout=timeout,
                                    destination=destination.split(",") if destination else None) or []
    if not replies:
        click.echo(f"memguard status: no worker replied within {timeout} s (is the worker running, with "
                   "remote control enabled and MemGuard installed?)", err=True)
        ctx.exit(EXIT_NO_INPUT)
    if fmt == "json":
        merged = {name: status for reply in replies for name, status in reply.items()}
        click.echo(json.dumps(merged, indent=2, sort_keys=True))
    else:
        click.echo(render_status(replies), nl=False)


def main(argv: Sequence[str] | None = None, prog_name: str = PROG) -> int:
    """``celery-memguard`` and ``python -m celery_memguard``: run the group; returns the exit status.

    Usage errors print the usage and return 2, ``--help`` and ``--version`` return 0.
    """
    try:
        result = memguard.main(args=list(argv) if argv is not None else None, prog_name=prog_name,
                               standalone_mode=False)
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except click.Abort:
        click.echo("Aborted!", err=True)
        return 1
    return result if isinstance(result, int) else EXIT_OK
