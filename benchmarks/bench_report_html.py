"""The HTML report of a day of samples: log size, page size, time to build it and to open it in Chromium.

Writes a synthetic day of a worker's events (``tests/unit/timeline_logs.py``: every child leaking
slowly and recycled at the soft limit, a stopped task, a lost child, a leak suspect, master growth)
for 8 children at the default sample interval (60 s) and at 10 s, and for 16 children at 60 s; runs
``python -m celery_memguard report --format html -o`` on each in a subprocess and, where Debian's
Chromium is installed, ``scripts/browser_check.py`` on the page (its load+render time is the
``--dump-dom`` wall time minus that of an empty page). Prints a Markdown table.

Usage: ``.venv/bin/python benchmarks/bench_report_html.py [--keep]``.
"""

from __future__ import annotations

import argparse
import importlib.util
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.unit.timeline_logs import write_day_log  # noqa: E402

CASES = ((8, 60.0), (8, 10.0), (16, 60.0))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", action="store_true", help="keep the logs and pages")
    args = parser.parse_args(argv)
    spec = importlib.util.spec_from_file_location("browser_check", REPO / "scripts" / "browser_check.py")
    assert spec is not None and spec.loader is not None
    browser = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(browser)
    run_dir = Path(tempfile.mkdtemp(prefix="memguard-bench-html-"))
    rows = []
    try:
        for children, interval in CASES:
            log = run_dir / f"day-{children}x{int(interval)}s.log"
            lines = write_day_log(log, children=children, interval=interval)
            page = log.with_suffix(".html")
            started = time.perf_counter()
            subprocess.run([sys.executable, "-m", "celery_memguard", "report", "--format", "html", "-o", str(page),
                            str(log)], cwd=REPO, check=True, capture_output=True)
            build = time.perf_counter() - started
            render = "no chromium"
            if browser.chromium() is not None:
                ok, out = browser.check(page, page.with_suffix(".png"), height=1400)
                timing = next((line for line in out if line.startswith("TIME")), "")
                render = timing.split("~")[1].split(" s")[0] + " s" if "~" in timing else "?"
                if not ok:
                    render += " (FAILED: " + "; ".join(line for line in out if line.startswith("FAIL")) + ")"
            rows.append([f"{children} children, sample every {interval:.0f} s", f"{lines:,}",
                         f"{log.stat().st_size / 1e6:.2f} MB", f"{page.stat().st_size / 1e3:.0f} KB",
                         f"{build:.2f} s", render])
    finally:
        if args.keep:
            print(f"kept {run_dir}", file=sys.stderr)
        else:
            shutil.rmtree(run_dir, ignore_errors=True)
    print("| a day of | lines | log | HTML | report --format html | Chromium load+render |")
    print("|---|---:|---:|---:|---:|---:|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
