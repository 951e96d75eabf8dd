#!/usr/bin/env bash
# The test matrix (what CI runs, through .ci/run, on a clean clone):
#   bash scripts/test.sh [pytest args]
#
#   package   build the wheel and the sdist (python -m build), check what the sdist carries, install the
#             wheel in a fresh venv (.venv-wheel) and run it from outside the checkout: import,
#             celery-memguard --help, python -m celery_memguard --help, celery memguard --help; then the
#             wheel's prometheus extra (prometheus_client, celery_memguard.metrics importable)
#   docs      the documentation site: mkdocs build --strict (scripts/docs.sh, in its own venv .venv-docs),
#             in the background while the main suite runs; any warning (a broken link or anchor, a docstring
#             that does not render) fails the leg
#   main      the whole suite on the main Python ($PYTHON, default python3) in .venv (editable install with
#             the test and prometheus extras: the exporter's tests run), in $PYTEST_PROCESSES (default 2)
#             pytest processes, a test file per process at a time (pytest-xdist, --dist loadfile): the
#             real-worker tests mostly wait on workers' timers (each has its own worker, queue and tmp_path);
#             then the files that bound real-time reactions (marker `timing`, tests/conftest.py) on their own
#   legs      on every other Python of $MATRIX_PYTHONS (default 3.10 3.11 3.12 3.13), each in its own venv
#             (.venv-3.10, ...) with the built wheel's dependencies: the unit tests (in the background under
#             nice 19, while the main suite runs) and, after the main suite, the real-worker smoke set
#             (pytest -m smoke); on the oldest Python twice: the oldest Celery (celery==5.3.*,
#             kombu==5.3.*, billiard==4.2.*, in .venv-3.10-celery5.3) and the latest
#
# An interpreter is found as python3.X on PATH, else as pyenv's newest 3.X.*; one that is missing is
# reported as MISSING in the summary and the rest runs. The summary table comes last; the exit status is
# non-zero when any leg that ran failed.
#
# Environment: PYTHON (the main interpreter), MATRIX_PYTHONS, OLDEST_CELERY (the pins of the oldest-Celery
# leg), TEST_MATRIX=main (only the package check, the docs and the main suite, for a quick local run),
# PYTEST_PROCESSES (the main suite's pytest processes; 1 runs it in one process, in file order).
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)

PYTHON="${PYTHON:-python3}"
MATRIX_PYTHONS="${MATRIX_PYTHONS:-3.10 3.11 3.12 3.13}"
OLDEST_CELERY="${OLDEST_CELERY:-celery==5.3.* kombu==5.3.* billiard==4.2.*}"
LATEST_CELERY="celery kombu billiard"   # with --upgrade: the newest releases, also in a venv kept from an earlier run
TEST_MATRIX="${TEST_MATRIX:-all}"
PYTEST_PROCESSES="${PYTEST_PROCESSES:-2}"
LOGS="$ROOT/build/matrix"
PIP_QUIET=(--quiet --disable-pip-version-check)
rm -rf "$LOGS" && mkdir -p "$LOGS"

ROWS=()      # "python|celery|what ran|result|seconds"
FAILED=0
T0=$SECONDS

say() { printf '\n=== %s\n' "$*"; }

# pip prints one warning per missing local index directory on some machines: keep the logs readable.
pipq() { "$@" 2> >(grep -v "^WARNING: Location 'file:" >&2); }

# A pytest summary line ("890 passed, 2 skipped in 38.05s") from a log, without its duration.
outcome() {
  local line
  line=$(grep -E '^(=+ )?[0-9]+ (passed|failed|error|errors|skipped|deselected|xfailed|xpassed)|no tests ran' "$1" \
         | tail -n 1 | sed -E 's/^=+ //; s/ =+$//; s/ in [0-9.]+s.*$//; s/,? [0-9]+ deselected//; s/^, //')
  echo "${line:-no summary}"
}

row() { ROWS+=("$1|$2|$3|$4|$5"); case "$4" in PASS*|MISSING*) ;; *) FAILED=1 ;; esac; }

# The interpreter for version X.Y: python3.X on PATH, else pyenv's newest X.Y.* (pyenv on PATH, $PYENV_ROOT or
# ~/.pyenv); each candidate must run and be X.Y (a pyenv shim for a version not selected does not). Empty if none.
find_python() {
  local v="$1" root exe
  local candidates=("$(command -v "python$v" 2>/dev/null || true)")
  for root in "$(pyenv root 2>/dev/null || true)" "${PYENV_ROOT:-}" "$HOME/.pyenv"; do
    [ -n "$root" ] && candidates+=("$(ls -d "$root"/versions/"$v".*/bin/python3 2>/dev/null | sort -V | tail -n 1)")
  done
  for exe in "${candidates[@]}"; do
    if [ -n "$exe" ] && [ "$("$exe" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null)" = "$v" ]; then
      echo "$exe"
      return
    fi
  done
}

pyver() { "$1" -c 'import platform; print(platform.python_version())'; }
celery_of() { "$1" -c 'import celery; print(celery.__version__)' 2>/dev/null || echo '?'; }

bash scripts/services.sh

# -- headless Chromium for the HTML report's browser test (tests/integration/test_report_browser.py) ------
# Debian's package; without apt-get (or the right to use it) the browser part of that test is skipped, with
# the reason in its output.
if [ ! -x /usr/bin/chromium ] && command -v apt-get >/dev/null 2>&1; then
  say "installing chromium (Debian package) for the HTML report's browser test"
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo -n"
  if ! { DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y --no-install-recommends chromium \
         || { $SUDO apt-get update && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y --no-install-recommends chromium; }; \
       } >"$LOGS/chromium.log" 2>&1; then
    echo "chromium could not be installed (see $LOGS/chromium.log): the browser test will be skipped"
  fi
fi

# -- main venv (editable) -------------------------------------------------------------------------------
say "main: $PYTHON in .venv"
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv || { echo "cannot create .venv with $PYTHON"; exit 2; }
fi
pipq .venv/bin/python -m pip install "${PIP_QUIET[@]}" --upgrade pip >/dev/null 2>&1 || true
if ! pipq .venv/bin/python -m pip install "${PIP_QUIET[@]}" -e ".[test,prometheus]"; then
  echo "cannot install the package into .venv"; exit 2
fi
MAIN_VER=$(.venv/bin/python -c 'import sys; print("%d.%d" % sys.version_info[:2])')

# -- package: wheel + sdist, the wheel in a fresh venv ---------------------------------------------------
say "package: python -m build; the wheel in a fresh venv"
t=$SECONDS
package_check() {
  rm -rf dist .venv-wheel
  pipq .venv/bin/python -m build --outdir dist . >"$LOGS/build.log" 2>&1 || { tail -n 30 "$LOGS/build.log"; return 1; }
  local sdist wheel listing missing=""
  sdist=$(ls dist/*.tar.gz) && wheel=$(ls dist/*.whl) || return 1
  listing=$(tar tzf "$sdist")
  for need in LICENSE CHANGELOG.md README.md pyproject.toml docs/how-it-works.md tests/unit/test_cli.py \
              tests/integration/test_smoke.py tests/unit/fixtures/report_sample.log celery_memguard/py.typed; do
    grep -q "^[^/]*/$need\$" <<<"$listing" || missing="$missing $need"
  done
  [ -z "$missing" ] || { echo "sdist lacks:$missing"; return 1; }
  # grep without -q after a pipe: an early exit would kill the writer with SIGPIPE, and pipefail would fail the check
  unzip -l "$wheel" | grep 'celery_memguard/py.typed' >/dev/null || { echo "wheel lacks py.typed"; return 1; }
  unzip -p "$wheel" '*.dist-info/METADATA' | grep '^Provides-Extra: prometheus' >/dev/null \
    || { echo "wheel lacks the prometheus extra"; return 1; }
  "$PYTHON" -m venv .venv-wheel || return 1
  pipq .venv-wheel/bin/python -m pip install "${PIP_QUIET[@]}" "$wheel" || return 1
  local here version
  here=$(mktemp -d)  # outside the checkout: the installed wheel, not the source tree, is imported
  version=$(cd "$here" && "$ROOT/.venv-wheel/bin/python" -c \
    'import celery_memguard, pathlib; assert "site-packages" in celery_memguard.__file__, celery_memguard.__file__
assert (pathlib.Path(celery_memguard.__file__).parent / "py.typed").exists(); print(celery_memguard.__version__)') \
    || return 1
  grep -q "$version" <<<"$wheel" || { echo "wheel name does not carry the version $version"; return 1; }
  (cd "$here" && "$ROOT/.venv-wheel/bin/celery-memguard" --help | grep -q 'status') || return 1
  (cd "$here" && [ "$("$ROOT/.venv-wheel/bin/celery-memguard" --version)" = "celery-memguard $version" ]) || return 1
  (cd "$here" && "$ROOT/.venv-wheel/bin/python" -m celery_memguard --help | grep -q 'report') || return 1
  (cd "$here" && "$ROOT/.venv-wheel/bin/celery" memguard --help | grep -q 'status') || return 1
  # the prometheus extra installs prometheus_client, and the exporter serves from the installed wheel
  pipq .venv-wheel/bin/python -m pip install "${PIP_QUIET[@]}" "$wheel[prometheus]" || return 1
  (cd "$here" && "$ROOT/.venv-wheel/bin/python" -c 'import prometheus_client, celery_memguard.metrics as m
assert "celery_memguard_recycles_total" in m.served_names()') || { echo "the prometheus extra does not work"; return 1; }
  rm -rf "$here"
  echo "package: $(basename "$sdist") and $(basename "$wheel") built; wheel $version installs and runs"
}
if package_check >"$LOGS/package.log" 2>&1; then
  cat "$LOGS/package.log"; row "$(pyver "$PYTHON")" "$(celery_of .venv-wheel/bin/python)" "build + wheel install smoke" PASS $((SECONDS - t))
else
  cat "$LOGS/package.log"; row "$(pyver "$PYTHON")" "-" "build + wheel install smoke" FAIL $((SECONDS - t))
fi
WHEEL=$(ls "$ROOT"/dist/*.whl 2>/dev/null | head -n 1)

# -- docs: the site, mkdocs build --strict (any warning, a broken link or anchor included, fails) ----------
# In the background while the main suite runs (mostly pip and an 8 s build: little CPU); its result is
# reported after the main suite.
say "docs: mkdocs build --strict (scripts/docs.sh, in .venv-docs), in the background"
t=$SECONDS
( PYTHON="$PYTHON" nice -n 10 bash scripts/docs.sh >"$LOGS/docs.log" 2>&1; echo "$? $((SECONDS - t))" >"$LOGS/docs.status" ) &
DOCS_BG=$!
docs_result() {
  local drc dt
  wait "$DOCS_BG"
  read -r drc dt 2>/dev/null <"$LOGS/docs.status" || { drc=1; dt=0; }
  say "docs: mkdocs build --strict (log build/matrix/docs.log)"
  if [ "$drc" = 0 ]; then
    tail -n 1 "$LOGS/docs.log"; row "$(pyver "$PYTHON")" "-" "docs site (mkdocs build --strict)" PASS "$dt"
  else
    tail -n 40 "$LOGS/docs.log"; row "$(pyver "$PYTHON")" "-" "docs site (mkdocs build --strict)" FAIL "$dt"
  fi
}

# -- other Pythons: venvs and unit tests in the background, at the lowest CPU priority -------------------
# While the main suite runs (mostly real workers waiting on timers), the other Pythons' venvs are set up
# side by side and their unit tests run one after another under `nice -n 19`, so they take only CPU the
# main suite leaves idle. Their real-worker smoke sets, timing-sensitive like the main suite, run after it.
LEGS=()   # "name|interpreter|pins"
MISSING=()
if [ "$TEST_MATRIX" != "main" ]; then
  oldest=""   # the oldest Python found also runs the oldest Celery
  for v in $MATRIX_PYTHONS; do
    exe=$(find_python "$v")
    if [ -z "$exe" ]; then
      MISSING+=("$v")
      continue
    fi
    if [ -z "$oldest" ]; then
      oldest="$v"
      LEGS+=("$v-celery5.3|$exe|$OLDEST_CELERY")
    fi
    [ "$v" = "$MAIN_VER" ] || LEGS+=("$v|$exe|$LATEST_CELERY")
  done
  [ -n "$WHEEL" ] || [ ${#LEGS[@]} = 0 ] || echo "no wheel was built: the other Pythons cannot be set up"
fi

background_legs() {
  local leg name exe pins py t
  for leg in ${LEGS[@]+"${LEGS[@]}"}; do
    IFS='|' read -r name exe pins <<<"$leg"
    (
      [ -x ".venv-$name/bin/python" ] || "$exe" -m venv ".venv-$name" || exit 1
      # shellcheck disable=SC2086 # the pins are separate words
      pipq ".venv-$name/bin/python" -m pip install "${PIP_QUIET[@]}" --upgrade "$WHEEL[test,prometheus]" $pins
    ) >"$LOGS/setup-$name.log" 2>&1 &
  done
  wait
  for leg in ${LEGS[@]+"${LEGS[@]}"}; do
    IFS='|' read -r name exe pins <<<"$leg"
    py=".venv-$name/bin/python"
    if ! "$py" -c 'import celery_memguard, celery, pytest' >/dev/null 2>&1; then
      echo "setup 0" >"$LOGS/$name-unit.status"
      continue
    fi
    t=$SECONDS
    "$py" -m pytest -p no:cacheprovider -ra -m "not integration" "$@" >"$LOGS/$name-unit.log" 2>&1
    echo "$? $((SECONDS - t))" >"$LOGS/$name-unit.status"
  done
}
BG=""
if [ -n "$WHEEL" ] && [ ${#LEGS[@]} -gt 0 ]; then
  ( renice -n 19 -p "$BASHPID" >/dev/null 2>&1; background_legs "$@" ) &
  BG=$!
fi

# -- the main suite ------------------------------------------------------------------------------------
say "main: the whole suite on Python $(pyver .venv/bin/python)"
t=$SECONDS
if [ "$PYTEST_PROCESSES" -gt 1 ]; then
  # Two parts: every file but the timing-bound ones, $PYTEST_PROCESSES at a time; then those (marker `timing`,
  # tests/conftest.py) on their own. Both logs make main.log.
  .venv/bin/python -m pytest -p no:cacheprovider -ra -n "$PYTEST_PROCESSES" --dist loadfile -m "not timing" "$@" 2>&1 \
    | tee "$LOGS/main-parallel.log"
  prc=${PIPESTATUS[0]}
  .venv/bin/python -m pytest -p no:cacheprovider -ra -m timing "$@" 2>&1 | tee "$LOGS/main-timing.log"
  trc=${PIPESTATUS[0]}
  cat "$LOGS/main-parallel.log" "$LOGS/main-timing.log" >"$LOGS/main.log"
  rc=0; { [ "$prc" = 0 ] || [ "$prc" = 5 ]; } && { [ "$trc" = 0 ] || [ "$trc" = 5 ]; } || rc=1
  main_outcome="parallel: $(outcome "$LOGS/main-parallel.log"); timing: $(outcome "$LOGS/main-timing.log")"
else
  .venv/bin/python -m pytest -p no:cacheprovider -ra "$@" 2>&1 | tee "$LOGS/main.log"
  rc=${PIPESTATUS[0]}
  main_outcome=$(outcome "$LOGS/main.log")
fi
row "$(pyver .venv/bin/python)" "$(celery_of .venv/bin/python)" "full suite" \
    "$([ "$rc" = 0 ] && echo PASS || echo FAIL) ($main_outcome)" $((SECONDS - t))
docs_result

# -- the other legs: their unit tests' outcome, then the real-worker smoke set -----------------------------
if [ -n "$BG" ]; then
  say "waiting for the other Pythons' unit tests"
  wait "$BG"
fi
ok() { [ "$1" = 0 ] || [ "$1" = 5 ]; }   # 5: pytest collected nothing (arguments that select no such test)
for leg in ${LEGS[@]+"${LEGS[@]}"}; do
  IFS='|' read -r name exe pins <<<"$leg"
  py=".venv-$name/bin/python"
  say "leg $name: Python $(pyver "$exe") ($exe), $([ "$pins" = "$LATEST_CELERY" ] && echo 'the latest Celery' || echo "$pins")"
  read -r urc ut 2>/dev/null <"$LOGS/$name-unit.status" || { urc=setup; ut=0; }
  if [ "$urc" = setup ]; then
    [ -f "$LOGS/setup-$name.log" ] && tail -n 30 "$LOGS/setup-$name.log"
    row "$(pyver "$exe")" "-" "unit + smoke" "FAIL (setup)" 0
    continue
  fi
  echo "unit tests (run in the background, log build/matrix/$name-unit.log):"
  if ok "$urc"; then tail -n 1 "$LOGS/$name-unit.log"; else tail -n 60 "$LOGS/$name-unit.log"; fi
  echo "smoke set:"
  t=$SECONDS
  "$py" -m pytest -p no:cacheprovider -ra -m smoke "$@" 2>&1 | tee "$LOGS/$name-smoke.log"
  src=${PIPESTATUS[0]}
  result=$(ok "$urc" && ok "$src" && echo PASS || echo FAIL)
  row "$(pyver "$exe")" "$(celery_of "$py")" "unit + smoke" \
      "$result (unit: $(outcome "$LOGS/$name-unit.log"); smoke: $(outcome "$LOGS/$name-smoke.log"))" $((ut + SECONDS - t))
done
for v in ${MISSING[@]+"${MISSING[@]}"}; do
  row "$v" "-" "nothing: interpreter not found (python$v, pyenv)" "MISSING" 0
done

# -- summary ------------------------------------------------------------------------------------------
say "matrix summary (logs in build/matrix/)"
for r in "${ROWS[@]}"; do echo "$r"; done | awk -F'|' '
  { for (i = 1; i <= 4; i++) cell[NR, i] = $i; cell[NR, 5] = sprintf("%dm%02ds", $5 / 60, $5 % 60) }
  END {
    split("Python|Celery|ran|result|time", head, "|")
    for (i = 1; i <= 5; i++) { w[i] = length(head[i]); for (r = 1; r <= NR; r++) if (length(cell[r, i]) > w[i]) w[i] = length(cell[r, i]) }
    line = ""; rule = ""
    for (i = 1; i <= 5; i++) { line = line sprintf("%-" w[i] "s  ", head[i]); rule = rule sprintf("%s  ", substr("----------------------------------------------------------------------------------------------------", 1, w[i])) }
    print line; print rule
    for (r = 1; r <= NR; r++) { line = ""; for (i = 1; i <= 5; i++) line = line sprintf("%-" w[i] "s  ", cell[r, i]); print line }
  }'
total=$((SECONDS - T0))
printf 'total %dm%02ds; %s\n' $((total / 60)) $((total % 60)) "$([ "$FAILED" = 0 ] && echo 'all legs passed' || echo 'FAILED')"
exit "$FAILED"
