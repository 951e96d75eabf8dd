"""Master-growth detection on real prefork workers: ``memguard.master_growth`` from a master that really grows.

The worker loads :mod:`tests.integration.master_tasks`, whose
``task_received`` handler runs in the worker's main process and, when
switched on, keeps :data:`GROW_KIB` KiB alive per message received. A steady
stream of ``it.ping`` (:data:`RATE` messages per second) then makes the master
grow ~2.5 MiB/s. MemGuard runs with a short window
(``memguard_master_growth_grace`` 2 s, ``memguard_master_growth_min_span``
20 s, ``memguard_master_growth_threshold`` 16 MiB); with that span the monitor
reads the master every 0.67 s (``MasterGrowthDetector.sample_interval``: the span
over 30, at most 10 s).

* Growth: exactly one ``memguard.master_growth`` whose ``mem_mib`` matches the
  master's USS measured here with psutil, whose ``mib_per_hour`` matches the
  growth rate measured here, with ``since_s`` >= the minimum span and
  ``growth_mib`` >= the threshold; ``python -m celery_memguard report EVENTS
  --format json`` shows the master growth and an "attention" verdict.
* Control: the same settings and stream with the handler off (the master does
  not grow): no ``memguard.master_growth``, and the report's master is empty.

The growth test takes ~25 s here (the event comes ~22 s after the worker starts), the control ~40 s.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import psutil
from celery.result import AsyncResult

from .conftest import StartWorker, Worker

MiB = 1024 * 1024
GRACE = 2.0
MIN_SPAN = 20.0
THRESHOLD_MIB = 16
#: KiB the master keeps per message received, in the growth test.
GROW_KIB = 512
#: Messages sent per second.
RATE = 5.0
#: The growth test fails if no event came within this many seconds of stream; the control streams this long.
STREAM_TIMEOUT = 50.0
CONTROL_STREAM = 35.0
MASTER_GROWTH = "memguard.master_growth"


def _conf(grow_kib: int) -> dict[str, Any]:
    return {
        "imports": ["tests.integration.master_tasks"],
        "memguard_master_growth_threshold": f"{THRESHOLD_MIB}MiB",
        "memguard_master_growth_grace": GRACE,
        "memguard_master_growth_min_span": MIN_SPAN,
        "it_master_grow_kib": grow_kib,
    }


@dataclass
class Stream:
    """What a steady stream of messages did: results, and the master's USS as measured here (time, bytes)."""

    started: float = 0.0
    results: list[AsyncResult] = field(default_factory=list)
    uss: list[tuple[float, int]] = field(default_factory=list)
    event_at: float | None = None

    def uss_near(self, when: float) -> int:
        """The measured USS closest in time to ``when``."""
        return min(self.uss, key=lambda p: abs(p[0] - when))[1]

    def mib_per_hour(self, start: float, end: float) -> float:
        """Least-squares growth rate of the measured USS between ``start`` and ``end`` (MiB/h)."""
        points = [(t, m / MiB) for t, m in self.uss if start <= t <= end]
        assert len(points) >= 5, points
        mean_t = sum(t for t, _ in points) / len(points)
        mean_m = sum(m for _, m in points) / len(points)
        slope = sum((t - mean_t) * (m - mean_m) for t, m in points) / sum((t - mean_t) ** 2 for t, _ in points)
        return slope * 3600


def _stream(worker: Worker, seconds: float, *, until_event: bool) -> Stream:
    """Send ``it.ping`` at RATE per second for ``seconds`` (or until the first master_growth event)."""
    master = psutil.Process(worker.proc.pid)
    stream = Stream(started=time.time())
    sent = 0
    while time.time() - stream.started < seconds:
        worker.assert_alive()
        now = time.time()
        due = int((now - stream.started) * RATE) + 1
        for _ in range(due - sent):
            stream.results.append(worker.send("it.ping"))
        sent = max(sent, due)
        stream.uss.append((time.time(), int(master.memory_full_info().uss)))
        if until_event and worker.events(MASTER_GROWTH):
            stream.event_at = time.time()
            break
        time.sleep(1.0 / RATE)
    return stream


def _wall_clock(ts: str) -> float:
    """Wall-clock seconds of an event's ISO ``ts``."""
    return datetime.fromisoformat(ts).timestamp()


def _all_succeeded(worker: Worker, stream: Stream) -> None:
    outcomes = worker.collect(stream.results, timeout=60)
    failed = [(o.state, o.traceback) for o in outcomes if o.state != "SUCCESS"]
    assert not failed, failed[:3]


def test_growing_master_is_reported(start_worker: StartWorker, redis_url: str) -> None:
    """A master keeping 512 KiB per received message (~2.5 MiB/s): one master_growth with the measured numbers."""
    worker = start_worker(redis_url, conf=_conf(GROW_KIB))
    started = worker.started_at()
    stream = _stream(worker, STREAM_TIMEOUT, until_event=True)
    assert stream.event_at is not None, f"no {MASTER_GROWTH} after {STREAM_TIMEOUT:.0f}s of stream\n" \
                                        f"{worker.diagnostics()}"
    _all_succeeded(worker, stream)
    worker.stop()

    (event,) = worker.events(MASTER_GROWTH)
    assert worker.events("memguard.error") == [], worker.diagnostics()
    emitted = _wall_clock(event["ts"])
    measured_rate = stream.mib_per_hour(stream.started, emitted)
    expected_rate = GROW_KIB / 1024 * RATE * 3600
    print(f"\nmaster_growth event: {json.dumps({k: event[k] for k in event if k not in ('note', 'hostname')})}"
          f"\n  worker start -> event {emitted - started:.1f}s, stream start -> event {emitted - stream.started:.1f}s;"
          f"\n  measured here: USS {stream.uss[0][1] / MiB:.1f} -> {stream.uss_near(emitted) / MiB:.1f} MiB, "
          f"{measured_rate:.0f} MiB/h (expected ~{expected_rate:.0f})")
    assert 0.7 * expected_rate <= measured_rate <= 1.3 * expected_rate, measured_rate  # the harness grows the master
    assert abs(event["mem_mib"] - stream.uss_near(emitted) / MiB) <= 8, (event, stream.uss_near(emitted) / MiB)
    assert event["mib_per_hour"] > 0
    assert 0.6 * measured_rate <= event["mib_per_hour"] <= 1.4 * measured_rate, (event, measured_rate)
    assert MIN_SPAN <= event["since_s"] <= emitted - started, event
    assert event["growth_mib"] >= THRESHOLD_MIB, event
    assert isinstance(event["reserved"], int), event
    assert "the master" in event["note"], event

    report = worker.report()
    (host,) = report["hosts"]
    master = host["master"]
    assert master is not None, host
    assert master["growth_mib"] == event["growth_mib"] and master["mib_per_hour"] == event["mib_per_hour"], master
    assert master["reports"] == 1, master
    assert report["verdict"]["status"] == "attention", report["verdict"]
    assert any("master" in finding for finding in report["verdict"]["findings"]), report["verdict"]


def test_flat_master_is_not_reported(start_worker: StartWorker, redis_url: str) -> None:
    """Control: same settings and stream, the handler keeps nothing: no master_growth."""
    worker = start_worker(redis_url, conf=_conf(0))
    stream = _stream(worker, CONTROL_STREAM, until_event=False)
    _all_succeeded(worker, stream)
    worker.stop()

    growth = (stream.uss[-1][1] - stream.uss[0][1]) / MiB
    print(f"\ncontrol: master USS {stream.uss[0][1] / MiB:.1f} -> {stream.uss[-1][1] / MiB:.1f} MiB "
          f"({growth:+.1f} MiB) over {CONTROL_STREAM:.0f}s, {len(stream.results)} messages")
    assert growth < THRESHOLD_MIB / 2, growth  # the control's master really stays flat
    assert worker.events(MASTER_GROWTH) == [], worker.diagnostics()
    assert worker.events("memguard.error") == [], worker.diagnostics()
    report = worker.report()
    (host,) = report["hosts"]
    assert host["master"] is None, host["master"]


#: Issue 9: on the default settings a master growing >= 1 MiB/s is named within this many seconds of ready.
DEFAULTS_DEADLINE = 120.0


def test_fast_master_leak_is_named_within_two_minutes_on_defaults(start_worker: StartWorker, redis_url: str) -> None:
    """Defaults (grace 20 s, min span 60 s, 64 MiB): a master growing ~2.5 MiB/s is named within 120 s of the
    worker becoming ready, with the growth it really had."""
    worker = start_worker(redis_url, conf={"imports": ["tests.integration.master_tasks"],
                                           "it_master_grow_kib": GROW_KIB})
    started = worker.started_at()
    stream = _stream(worker, DEFAULTS_DEADLINE + 30, until_event=True)
    assert stream.event_at is not None, f"no {MASTER_GROWTH} within {DEFAULTS_DEADLINE + 30:.0f}s of stream\n" \
                                        f"{worker.diagnostics()}"
    _all_succeeded(worker, stream)
    worker.stop()
    (event,) = worker.events(MASTER_GROWTH)
    emitted = _wall_clock(event["ts"])
    print(f"\ndefaults: worker start -> master_growth {emitted - started:.1f}s: "
          f"{json.dumps({k: event[k] for k in event if k not in ('note', 'hostname')})}")
    assert emitted - started <= DEFAULTS_DEADLINE, (emitted - started, event)
    assert event["growth_mib"] >= 64, event
    assert worker.events("memguard.error") == [], worker.diagnostics()
