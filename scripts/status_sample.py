"""Record docs/status-sample.txt: what ``celery memguard status`` prints for a real worker.

Starts the demo's worker (demo/demoapp.py: ``celery worker --pool=prefork -c 2`` on kombu's filesystem
transport, soft limit 150 MiB, hard limit 300 MiB), sends well-behaved tasks and the leaking task until
MemGuard has recycled a child and names the leak, then asks ``celery -A demoapp memguard status`` and
writes its output (the command line first) to docs/status-sample.txt, which the command-line reference
shows. Run it from a checkout after installing the package (``.venv/bin/python scripts/status_sample.py``);
it takes about half a minute.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "demo"
OUT = ROOT / "docs" / "status-sample.txt"


def main() -> int:
    data = Path("/tmp/memguard-status")  # a fixed path: the status output names the events file
    shutil.rmtree(data, ignore_errors=True)
    for sub in ("broker", "processed", "results", "control"):
        (data / sub).mkdir(parents=True)
    env = dict(os.environ, MEMGUARD_DEMO_DIR=str(data), PYTHONPATH=f"{DEMO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    os.environ["MEMGUARD_DEMO_DIR"] = str(data)
    sys.path.insert(0, str(DEMO))
    from demoapp import leaky, work  # noqa: E402  (reads MEMGUARD_DEMO_DIR)

    worker = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "demoapp", "worker", "--pool=prefork", "-c", "2", "-l", "warning",
         "-n", "celery@web-1"],
        cwd=DEMO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    events = data / "events.log"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not (events.exists() and "memguard.started" in events.read_text()):
            time.sleep(0.2)
        work.delay(10).get(timeout=60)
        for _ in range(3):  # until a child was recycled and the leak is named (usually the first round)
            for result in [leaky.delay() for _ in range(24)]:
                result.get(timeout=60)
            text = events.read_text()
            if "memguard.leak_suspected" in text and "memguard.child_recycled" in text:
                break
        for result in [leaky.delay() for _ in range(4)] + [work.delay(100) for _ in range(4)]:
            result.get(timeout=60)
        time.sleep(1.0)
        command = ["celery", "-A", "demoapp", "memguard", "status"]
        status = subprocess.run([sys.executable, "-m", *command], cwd=DEMO, env=env, capture_output=True, text=True,
                                timeout=60)
        if status.returncode != 0 or not status.stdout.strip():
            print(status.stdout + status.stderr, file=sys.stderr)
            return 1
        OUT.write_text(f"$ {' '.join(command)}\n{status.stdout}")
        print(OUT.read_text())
        return 0
    finally:
        worker.terminate()
        try:
            worker.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(worker.pid, signal.SIGKILL)
            worker.wait()
        shutil.rmtree(data, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
