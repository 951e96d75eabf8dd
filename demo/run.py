"""Run the memguard demo: a real prefork worker on kombu's filesystem transport.

It starts ``celery worker --pool=prefork -c 2``, sends well-behaved tasks, a leaking task that the
soft limit recycles, and a runaway task that the hard limit stops, prints memguard's events as they
happen and the outcome of every task, then prints the leak report and writes the HTML report
(memory timelines of every pool slot and the master) beside the events.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
DATA = Path(os.environ.get("MEMGUARD_DEMO_DIR", "/tmp/memguard-demo"))


def main() -> int:
    shutil.rmtree(DATA, ignore_errors=True)
    for sub in ("broker", "processed", "results"):
        (DATA / sub).mkdir(parents=True)
    env = dict(os.environ, MEMGUARD_DEMO_DIR=str(DATA), PYTHONPATH=f"{HERE}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    worker_log = open(DATA / "worker.log", "wb")
    worker = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "demoapp", "worker", "--pool=prefork", "-c", "2", "-l", "warning"],
        cwd=HERE, env=env, stdout=worker_log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    events_path = DATA / "events.log"
    shown = 0
    samples = 0

    def show_events() -> None:
        nonlocal shown, samples
        if not events_path.exists():
            return
        lines = events_path.read_text().splitlines()
        for line in lines[shown:]:
            try:
                ev = json.loads(line)
            except ValueError:
                continue
            if ev.get("event") == "memguard.sample":  # periodic memory readings: drawn in the HTML report
                samples += 1
                continue
            keys = {k: v for k, v in ev.items() if k not in ("event", "ts", "level", "source_pid", "hostname")}
            print(f"  event {ev['event']:<26} " + " ".join(f"{k}={v}" for k, v in keys.items() if v is not None))
        shown = len(lines)

    try:
        sys.path.insert(0, str(HERE))
        os.environ["MEMGUARD_DEMO_DIR"] = str(DATA)
        from demoapp import app, leaky, runaway, work  # noqa: E402

        print("memguard demo: prefork worker (-c 2), soft limit 150 MiB, hard limit 300 MiB, metric uss")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not (events_path.exists() and "memguard.started" in events_path.read_text()):
            time.sleep(0.2)
        work.delay(10).get(timeout=60)
        show_events()

        print("\n1) a leaking task: each call keeps 8 MiB in its child (40 calls)")
        results = [leaky.delay() for _ in range(40)]
        outcomes = [r.get(timeout=60) for r in results]
        pids = sorted({o["pid"] for o in outcomes})
        print(f"  leaky -> 40/40 succeeded, on children {pids}, up to {max(o['kept_mib'] for o in outcomes)} MiB kept")
        time.sleep(1.0)
        show_events()

        print("\n2) a runaway task growing ~400 MiB/s, with 20 normal tasks beside it")
        bad = runaway.delay()
        good = [work.delay(1000) for _ in range(20)]
        try:
            bad.get(timeout=60)
            print("  runaway -> finished (unexpected)")
        except Exception as exc:  # the task's failure, as the caller sees it
            print(f"  runaway -> {type(exc).__name__}: {exc}")
        ok = sum(1 for g in good if g.get(timeout=60) == sum(range(1000)))
        print(f"  normal tasks: {ok}/20 succeeded")
        time.sleep(0.5)
        show_events()
    finally:
        worker.terminate()  # SIGTERM to the worker's main process: a warm shutdown
        try:
            worker.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(worker.pid, signal.SIGKILL)
            worker.wait()
        worker_log.close()
    show_events()

    print("\n3) the report (python -m celery_memguard report events.log)\n")
    report = subprocess.run([sys.executable, "-m", "celery_memguard", "report", str(events_path)], check=False)
    html_path = DATA / "report.html"
    page = subprocess.run([sys.executable, "-m", "celery_memguard", "report", "--format", "html", "-o", str(html_path),
                           str(events_path)], check=False, capture_output=True, text=True)
    print(f"\nevents: {events_path} ({samples} memguard.sample lines, not shown above)\nworker log: {DATA / 'worker.log'}")
    if page.returncode == 0:
        print(f"HTML report (memory timelines; open it in a browser): {html_path}")
    else:
        print(f"HTML report failed: {page.stderr.strip()}")
    return report.returncode or page.returncode


if __name__ == "__main__":
    sys.exit(main())
