"""Paired child-side cost per task: ``celery_memguard`` of a commit against the working tree, interleaved.

Run from the repository root::

    .venv/bin/python benchmarks/bench_child_paired.py 545c1f9          # 7 rounds
    .venv/bin/python benchmarks/bench_child_paired.py 545c1f9 --rounds 3

For each variant of bench_detection.py section 3 (``default-empty``: default diagnostics, nothing on the
trace list; ``off``: diagnostics off; ``heap-armed``: every task measured with the heap probe) it runs
``ChildRuntime.before() + after()`` in a loop (50,000 calls, median of 5 loops, GC off) in a fresh process
with the commit's code (exported with ``git archive``) and with the working tree, alternating, for
``--rounds`` rounds, and prints the median over rounds (µs per task), the difference, the median of the
rounds' paired ratios (working tree / commit: the figure to quote on a noisy machine) and the fastest loop
of each side.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(REPO))

from _common import export_commit  # noqa: E402
from bench_detection import _CHILD_COST  # noqa: E402

VARIANTS = ("default-empty", "off", "heap-armed")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("commit", help="the code to compare the working tree with")
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="memguard-paired-") as tmp:
        src = Path(tmp) / "src"
        sha = export_commit(args.commit, src)
        sources = {f"commit {sha[:10]}": str(src), "working tree": str(REPO)}
        results: dict[tuple[str, str], list[float]] = {(s, v): [] for s in sources for v in VARIANTS}
        fastest: dict[tuple[str, str], list[float]] = {(s, v): [] for s in sources for v in VARIANTS}
        for _ in range(args.rounds):
            for variant in VARIANTS:
                for label, path in sources.items():
                    out = subprocess.run([sys.executable, "-c", _CHILD_COST, variant, "50000", "5"],
                                         env=dict(os.environ, PYTHONPATH=path), cwd=tmp, capture_output=True,
                                         text=True, timeout=600, check=True)
                    result = json.loads(out.stdout)
                    assert result["source"].startswith(path), result
                    results[(label, variant)].append(result["median"])
                    fastest[(label, variant)].append(result["min"])
        before, after = sources
        print(f"| variant | {before} (µs) | {after} (µs) | difference (µs) | paired ratio | fastest loops (µs) |")
        print("|---|---|---|---|---|---|")
        for variant in VARIANTS:
            b = statistics.median(results[(before, variant)])
            a = statistics.median(results[(after, variant)])
            ratio = statistics.median(y / x for x, y in zip(results[(before, variant)], results[(after, variant)]))
            best = f"{min(fastest[(before, variant)]):.2f} / {min(fastest[(after, variant)]):.2f}"
            print(f"| {variant} | {b:.2f} | {a:.2f} | {a - b:+.2f} | {ratio:.3f} | {best} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
