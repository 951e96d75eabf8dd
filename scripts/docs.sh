#!/usr/bin/env bash
# The documentation site: `mkdocs build --strict` into build/site, in its own venv (.venv-docs, the `docs`
# extra of pyproject.toml plus the package itself, editable). Any warning fails the build: a broken link or
# anchor inside the site, an external link of bad form or naming a repository file or site page that does
# not exist (checked offline by scripts/docs_hooks.py), a docstring mkdocstrings cannot render.
#
#   bash scripts/docs.sh          # build (what scripts/test.sh runs)
#   bash scripts/docs.sh serve    # serve at http://127.0.0.1:8000, rebuilt on every edit
#
# Environment: PYTHON (the interpreter the venv is made with, default python3).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
VENV=.venv-docs
if [ ! -x "$VENV/bin/mkdocs" ] || ! "$VENV/bin/python" -c 'import celery_memguard, mkdocstrings_handlers.python, material' 2>/dev/null \
   || [ pyproject.toml -nt "$VENV/.installed" ]; then
  [ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -e ".[docs]" \
    2> >(grep -v "^WARNING: Location 'file:" >&2)
  touch "$VENV/.installed"
fi
# Material's banner about MkDocs 2 is advice, not a problem with this site.
export NO_MKDOCS_2_WARNING=1
if [ "${1:-}" = serve ]; then
  exec "$VENV/bin/mkdocs" serve --strict
fi
exec "$VENV/bin/mkdocs" build --strict --site-dir build/site
