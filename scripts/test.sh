#!/usr/bin/env bash
# Install everything into .venv (Python 3.11+) and run the whole test suite:
#   bash scripts/test.sh [pytest args]
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip >/dev/null 2>&1 || true
.venv/bin/python -m pip install --quiet -e ".[test]"
bash scripts/services.sh
exec .venv/bin/python -m pytest -p no:cacheprovider -ra "$@"
