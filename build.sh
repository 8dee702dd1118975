#!/usr/bin/env bash
# kafka-relay: the one entry point. See README.md and docs/getting-started.md.
set -euo pipefail

# Paths on a command line are relative to where the user stands (CALLER); the Python commands
# run there, with the checkout on PYTHONPATH. This script's own files are read from ROOT.
CALLER="$PWD"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$ROOT"
# KAFKA_RELAY_VENV: another environment (CI runs the demo in one holding the demo set only).
VENV="${KAFKA_RELAY_VENV:-$ROOT/.venv}"
PY="$VENV/bin/python"

usage() {
  cat <<'USAGE'
usage: ./build.sh <command> [args]      (./build.sh <command> --help: that command's options)

  demo           the main job end to end on this machine: build, local broker + feed fixtures,
                 both producers in the local Lambda sandbox with the extension, then what
                 arrived on each topic [--bootstrap host:port --security-protocol SASL_SSL ...]
  sandbox        run YOUR function zip/dir + the layer (+ a local broker) in the local sandbox
                 --function my.zip --handler app.handler [--event '{}'] [--with-broker]
  test           install every pinned dev tool into .venv, run ruff, mypy, the import rules,
                 the docs build (mkdocs --strict) and the default pytest run (all but slow)
                 [--fast: the unit and functional tiers] (KAFKA_RELAY_TEST_WORKERS=N: N
                 parallel pytest workers, default 3)
  build          dist/: kafka-relay-layer-<arch>.zip, producer-functions.zip,
                 views-functions.zip (views + DuckDB), manifest.json
                 [--arch x86_64 arm64] [--python-version 3.12 ...] [--for-sandbox] [--out dist]
  publish-layer  build, then publish only the layer (both architectures) and print the ARNs
                 and the variables to set [--region R] [--prefix kafka-relay] [--dry-run]
  deploy         publish the layer and deploy both producers with boto3
                 [--env-file .env] [--dry-run] [--arch x86_64] [--region R] [--subnet-ids ...]
                 [--security-group-ids ...] [--log-retention-days 30]
  teardown       delete what deploy and publish-layer created [--prefix P] [--dry-run]
  bench          benchmarks against the baselines: table + ratios, bench/results/*.json
  faults         the slow fault-injection and soak suite (real broker, fault proxy, sandbox)
                 [pytest's arguments]; FAULT_SCHEDULES=N seeded fault schedules (default 200),
                 FAULT_SEED=n replays one
  lock           regenerate constraints.txt from requirements-dev.txt

--help installs, builds and writes nothing.
USAGE
}

# Run a long step; whenever its output has been quiet for 3 s, print how long it has run, so
# a first run never looks stuck. Its stdout passes through line by line (stderr as it is);
# the status is the step's own (pipefail).
ticking() {
  local label="$1" started=$SECONDS line
  shift
  PYTHONUNBUFFERED=1 "$@" | while true; do
    if IFS= read -r -t 3 line; then
      printf '%s\n' "$line"
    elif (( $? > 128 )); then
      echo "    ... $label ($((SECONDS - started)) s)"
    else
      [[ -n "$line" ]] && printf '%s' "$line"
      break
    fi
  done
}

# Create .venv and install a pinned requirements set when its pins changed. The demo needs
# only requirements-demo.txt; the dev set (tests, linters, moto) includes it.
ensure_venv() {
  local set="${1:-dev}" file
  shift || true
  file="requirements-$set.txt"
  if [[ ! -x "$PY" ]]; then
    "${PYTHON:-python3}" -c 'import sys; assert sys.version_info >= (3, 10), "kafka-relay needs Python >= 3.10"'
    echo "==> creating $VENV ($("${PYTHON:-python3}" --version))"
    ticking "creating the venv" "${PYTHON:-python3}" -m venv "$VENV"
  fi
  local stamp="$VENV/.deps-stamp" want dev have=""
  want="$set:$(cat "$file" requirements-demo.txt constraints.txt | sha256sum | cut -d' ' -f1)"
  dev="dev:$(cat requirements-dev.txt requirements-demo.txt constraints.txt | sha256sum | cut -d' ' -f1)"
  [[ -f "$stamp" ]] && have="$(cat "$stamp")"
  # The dev set is a superset of the demo set: either satisfies the demo.
  if [[ "$have" == "$want" || ( "$set" == demo && "$have" == "$dev" ) ]]; then
    return
  fi
  echo "==> installing the pinned $set dependencies ($file) into $VENV"
  if ! ticking "installing" pip_install "$file"; then
    echo "error: pip could not install $file (run: $PY -m pip install -r $file -c constraints.txt)" >&2
    exit 1
  fi
  echo "$want" > "$stamp"
}

# No -q: one line per package (pip's own); with the ticks, a first run shows progress.
# --no-compile: Python compiles what is imported when it is first imported; compiling every
# installed module up front (moto's hundreds of services) was a third of the install's CPU.
pip_install() {
  "$PY" -m pip install --disable-pip-version-check --progress-bar off --no-compile \
    -r "$1" -c constraints.txt 2>&1 \
    | { grep -E --line-buffered '^(Collecting|Downloading|Installing|Successfully|ERROR|error)' || true; }
}

run_checks() {
  echo "==> ruff"
  "$VENV/bin/ruff" check .
  echo "==> mypy"
  "$VENV/bin/mypy"
  echo "==> import rules"
  PYTHONPATH="$ROOT/extension:$ROOT" "$VENV/bin/lint-imports" --no-cache --no-logo
  echo "==> docs site (mkdocs build --strict -> build/site)"
  NO_MKDOCS_2_WARNING=1 "$PY" -m mkdocs build --strict --quiet --site-dir "$ROOT/build/site"
}

# True when the command's arguments ask for help: then nothing is installed or built.
wants_help() {
  local arg
  for arg in "$@"; do
    [[ "$arg" == "-h" || "$arg" == "--help" ]] && return 0
  done
  return 1
}

# A command's --help, installing nothing: the module's own options when an interpreter can
# import it (.venv's, else the system's), else this script's summary of the command.
help_for() {
  local cmd="$1" module="${2:-}" python="$PY"
  [[ -x "$python" ]] || python="${PYTHON:-python3}"
  if [[ -n "$module" ]] && PYTHONDONTWRITEBYTECODE=1 in_caller "$python" -m "$module" --help 2>/dev/null; then
    return
  fi
  echo "usage: ./build.sh $cmd [options]"
  usage | awk -v cmd="  $cmd " 'index($0, cmd) == 1 { on = 1; print; next }
                                on && /^                 / { print; next } { on = 0 }'
  [[ -n "$module" ]] && echo "(every option: ./build.sh $cmd --help once .venv exists; ./build.sh demo creates it)"
  return 0
}

# Run a command from the caller's directory.
in_caller() {
  (cd "$CALLER" && "$@")
}

# publish-layer, deploy and teardown need a region: say so before installing or building.
require_region() {
  local python="$PY"
  [[ -x "$python" ]] || python="${PYTHON:-python3}"
  "$python" -m layer_build.region "$@" || exit 2
}

# The demo and the sandbox build a layer for this interpreter only, apart from dist/, and
# reuse it while its sources, pins and build code are unchanged.
local_build() {
  local version
  version="$("$PY" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')"
  "$PY" -m layer_build.build --arch "$(uname -m | sed 's/aarch64/arm64/')" \
    --python-version "$version" --out "$ROOT/build/local" --reuse
}

# The checkout's packages (and the extension's, for its log parsing) from any directory.
export PYTHONPATH="$ROOT/extension:$ROOT${PYTHONPATH:+:$PYTHONPATH}"

cmd="${1:-}"
[[ $# -gt 0 ]] && shift
case "$cmd" in
  test)
    if wants_help "$@"; then help_for test; exit 0; fi
    ensure_venv dev
    tiers="not slow"
    # Three workers on two cores: most broker and sandbox tests wait rather than compute,
    # and in the fast tiers a third worker fills the gaps of the tests that sleep.
    workers=3
    args=()
    for arg in "$@"; do
      if [[ "$arg" == --fast ]]; then
        tiers="(unit or functional) and not slow"  # no broker, no sandbox: a loop in seconds
      else
        args+=("$arg")
      fi
    done
    run_checks
    # A module stays on one worker, so its module fixtures (builds, installs) run once.
    workers="${KAFKA_RELAY_TEST_WORKERS:-$workers}"
    echo "==> pytest -m \"$tiers\" ($workers workers)"
    "$PY" -m pytest -m "$tiers" -n "$workers" --dist loadfile ${args[@]+"${args[@]}"}
    ;;
  demo)
    if wants_help "$@"; then help_for demo devtools.demo; exit 0; fi
    ensure_venv demo
    echo "==> building the layer and the functions (build/local/)"
    ticking "building" local_build
    ticking "demo" in_caller "$PY" -m devtools.demo --dist "$ROOT/build/local" "$@"
    ;;
  sandbox)
    if wants_help "$@"; then help_for sandbox devtools.sandbox; exit 0; fi
    ensure_venv demo
    ticking "building" local_build
    in_caller "$PY" -m devtools.sandbox \
      --layer "$ROOT/build/local/kafka-relay-layer-$(uname -m | sed 's/aarch64/arm64/').zip" "$@"
    ;;
  bench)
    if wants_help "$@"; then help_for bench bench; exit 0; fi
    ensure_venv dev
    "$PY" -m layer_build.build --arch x86_64 --for-sandbox
    in_caller "$PY" -m bench "$@"
    ;;
  faults)
    if wants_help "$@"; then help_for faults; exit 0; fi
    ensure_venv dev
    "$PY" -m pytest -m slow "$@"
    ;;
  build)
    if wants_help "$@"; then help_for build layer_build.build; exit 0; fi
    ensure_venv dev
    ticking "building" in_caller "$PY" -m layer_build.build "$@"
    ;;
  publish-layer)
    if wants_help "$@"; then help_for publish-layer layer_build.publish; exit 0; fi
    require_region "$@"
    ensure_venv dev
    ticking "building" "$PY" -m layer_build.build
    in_caller "$PY" -m layer_build.publish "$@"
    ;;
  deploy)
    if wants_help "$@"; then help_for deploy layer_build.deploy; exit 0; fi
    require_region "$@"
    ensure_venv dev
    in_caller "$PY" -m layer_build.deploy "$@"
    ;;
  teardown)
    if wants_help "$@"; then help_for teardown layer_build.teardown; exit 0; fi
    require_region "$@"
    ensure_venv dev
    in_caller "$PY" -m layer_build.teardown "$@"
    ;;
  lock)
    if wants_help "$@"; then help_for lock; exit 0; fi
    ensure_venv dev
    "$PY" -m pip install --disable-pip-version-check -q -r requirements-dev.txt
    "$PY" -m pip freeze --exclude-editable > constraints.txt
    ;;
  -h|--help|help)
    usage
    ;;
  "")
    usage >&2
    exit 2
    ;;
  *)
    echo "error: unknown command $cmd" >&2
    usage >&2
    exit 2
    ;;
esac
