#!/usr/bin/env bash
# Install into .venv (Python 3.10+) and run the demo: a real prefork worker on kombu's filesystem
# transport (no broker server) showing a soft recycle, a hard kill and the report.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet -e .
exec .venv/bin/python demo/run.py
