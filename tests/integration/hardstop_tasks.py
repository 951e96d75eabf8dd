"""Tasks and a custom policy for the hard-stop integration tests (issues 8.1, 13.1, 13.6).

Loaded by the worker through Celery's ``imports`` setting (``conf={"imports": [MODULE]}``);
tasks are registered on the harness app with ``hs.*`` names and sent by name.

* ``hs.runaway``: grows by 4 MiB chunks at ``rate_mib_s`` like the README's demo task: the
  pages are touched by a plain Python loop and nothing in the loop calls into C code that
  checks for signals (no ``json``, no file objects; short sleeps between chunks). Such a
  task never runs a pending Python signal handler on CPython 3.13.0 in a child forked from
  a non-main thread: the case the order watcher exists for. Its own peak (USS at the start
  plus RSS growth, and an exact USS reading when interrupted) goes to a small binary file
  (:func:`read_peak`) with ``os.pwrite``.
* ``hs.signal_grow``: first does something to ``SIGURG`` (MemGuard's order signal) the
  way a hostile or careless task might: install its own handler, ignore it, or block it
  in its thread; then grows like ``hs.runaway``.
* ``hs.own_handler_retain``: installs its own ``SIGURG`` handler and keeps ``mib`` MiB
  alive in the child (a leak that the soft limit must recycle anyway).
* ``hs.swallow``: allocates ``mib`` MiB at once, then swallows every ``Exception``
  (``MemoryLimitExceeded`` too) while writing a heartbeat (wall-clock time) to a file
  every few milliseconds, until SIGKILLed: the file says when the stop arrived and
  (to within a heartbeat) when the SIGKILL came.

:class:`SlowFirstLook` is a per-child custom policy that never votes but makes the poll
that first sees a child above :data:`SLOW_ABOVE` slow (:data:`SLOW_S` seconds), like a
poll of 32 children under load: the stop it leads to is sent that much after the poll
started.
"""

from __future__ import annotations

import json
import os
import signal
import struct
import time
from typing import Any, ClassVar

from celery_memguard.policies import Policy
from celery_memguard.samples import ChildSample, Violation
from tests.integration.proj import _touched, _uss, _write_json, app

MODULE = "tests.integration.hardstop_tasks"
MiB = 1024 * 1024
SLOW_ABOVE = 300 * MiB
SLOW_S = 0.9
HEARTBEAT_S = 0.005

#: Memory kept alive across tasks in this pool child.
KEPT: list[bytearray] = []
#: Calls of the tasks' own SIGURG handler in this child.
OWN_HANDLER_CALLS: list[float] = []


#: pid, uss0, peak_uss, chunks, growth_s, done, interrupted
_PEAK = struct.Struct("<qqqqdBB")


@app.task(name="hs.runaway")
def runaway(rate_mib_s: float, max_mib: int, peak_file: str, chunk_mib: int = 4) -> dict[str, Any]:
    """Grow at ``rate_mib_s`` up to ``max_mib`` MiB in ``chunk_mib`` chunks touched by a Python loop."""
    return _run_away(rate_mib_s, max_mib, peak_file, chunk_mib)


def _run_away(rate_mib_s: float, max_mib: int, peak_file: str, chunk_mib: int = 4) -> dict[str, Any]:
    pid = os.getpid()
    statm = os.open("/proc/self/statm", os.O_RDONLY)
    out = os.open(peak_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    uss0 = _uss()
    rss0 = int(os.pread(statm, 256, 0).split()[1]) * 4096
    state = [uss0, 0]  # peak_uss, chunks
    start = time.monotonic()
    os.pwrite(out, _PEAK.pack(pid, uss0, uss0, 0, 0.0, 0, 0), 0)
    chunks: list[bytearray] = []
    try:
        _runaway_loop(chunks, state, statm, out, pid, uss0, rss0, rate_mib_s, max_mib, chunk_mib, start)
    except BaseException:
        state[0] = max(state[0], _uss())
        os.pwrite(out, _PEAK.pack(pid, uss0, state[0], state[1], time.monotonic() - start, 0, 1), 0)
        raise
    finally:
        os.close(statm)
        os.close(out)
    return {"pid": pid, "grown_mib": len(chunks) * chunk_mib}


def _runaway_loop(chunks: list[bytearray], state: list[int], statm: int, out: int, pid: int, uss0: int,
                  rss0: int, rate_mib_s: float, max_mib: int, chunk_mib: int, start: float) -> None:
    size = chunk_mib * MiB
    while len(chunks) * chunk_mib < max_mib:
        block = bytearray(size)
        for i in range(0, size, 4096):
            block[i] = 1
        chunks.append(block)
        rss = int(os.pread(statm, 256, 0).split()[1]) * 4096
        state[0] = max(state[0], uss0 + rss - rss0)
        state[1] = len(chunks)
        os.pwrite(out, _PEAK.pack(pid, uss0, state[0], state[1], time.monotonic() - start, 0, 0), 0)
        pause = start + len(chunks) * chunk_mib / rate_mib_s - time.monotonic()
        if pause > 0:
            time.sleep(pause)
    os.pwrite(out, _PEAK.pack(pid, uss0, state[0], state[1], time.monotonic() - start, 1, 0), 0)


def read_peak(path: str) -> dict[str, Any]:
    """What ``hs.runaway`` wrote: pid, uss0, peak_uss, chunks, growth_s, done, interrupted."""
    with open(path, "rb") as f:
        pid, uss0, peak, chunks, growth_s, done, interrupted = _PEAK.unpack(f.read(_PEAK.size))
    return {"pid": pid, "uss0": uss0, "peak_uss": peak, "chunks": chunks, "growth_s": growth_s,
            "done": bool(done), "interrupted": bool(interrupted)}


def _own_handler(_signum: int, _frame: Any) -> None:
    OWN_HANDLER_CALLS.append(time.time())


def _do_to_sigurg(mode: str) -> None:
    if mode == "handler":
        signal.signal(signal.SIGURG, _own_handler)
    elif mode == "ignore":
        signal.signal(signal.SIGURG, signal.SIG_IGN)
    elif mode == "block":
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGURG})
    elif mode:
        raise ValueError(f"unknown mode {mode!r}")


@app.task(name="hs.signal_grow")
def signal_grow(mode: str, rate_mib_s: float, max_mib: int, peak_file: str) -> Any:
    """Do ``mode`` (handler, ignore, block) to SIGURG, then grow like ``hs.runaway``."""
    _do_to_sigurg(mode)
    return _run_away(rate_mib_s, max_mib, peak_file)


@app.task(name="hs.own_handler_retain")
def own_handler_retain(mib: int) -> dict[str, Any]:
    """Install an own SIGURG handler and keep ``mib`` MiB alive in this child."""
    _do_to_sigurg("handler")
    KEPT.append(_touched(mib * MiB))
    return {"pid": os.getpid(), "retained_mib": sum(len(b) for b in KEPT) // MiB,
            "own_handler_calls": len(OWN_HANDLER_CALLS)}


@app.task(name="hs.swallow")
def swallow(mib: int, seconds: float, state_file: str) -> dict[str, Any]:
    """Hold ``mib`` MiB and swallow every Exception for ``seconds``, heartbeating to ``state_file``."""
    state: dict[str, Any] = {"pid": os.getpid(), "caught": [], "last": time.time()}
    kept = [_touched(mib * MiB)]
    _write_json(state_file, state)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            _beat(state, state_file)
        except Exception as exc:
            state["caught"].append([time.time(), type(exc).__name__])
            _write_json(state_file, state)
    return {"pid": os.getpid(), "caught": len(state["caught"]), "kept": len(kept)}


def _beat(state: dict[str, Any], state_file: str) -> None:
    # Its own frame, so the handler above sees an exception landing here on CPython 3.13.0 too.
    time.sleep(HEARTBEAT_S)
    state["last"] = time.time()
    _write_json(state_file, state)


class SlowFirstLook(Policy):
    """Never votes; the poll that first sees a child above SLOW_ABOVE takes SLOW_S seconds longer."""

    reason: ClassVar[str] = "slow_first_look"
    debounce: ClassVar[bool] = False

    def __init__(self) -> None:
        self._seen: set[int] = set()

    def check(self, child: ChildSample, now: float) -> Violation | None:
        if child.mem > SLOW_ABOVE and child.pid not in self._seen:
            self._seen.add(child.pid)
            time.sleep(SLOW_S)
        return None

    def child_exited(self, pid: int) -> None:
        self._seen.discard(pid)


def read_state(path: str) -> dict[str, Any]:
    with open(path) as f:
        data: dict[str, Any] = json.load(f)
    return data
