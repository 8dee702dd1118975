#!/usr/bin/env bash
# kafka-relay: the one entry point. See README.md and docs/getting-started.md.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$ROOT"
VENV="$ROOT/.venv"
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
                 parallel pytest workers, default 2)
  build          dist/: kafka-relay-layer-<arch>.zip, producer-functions.zip, manifest.json
                 [--arch x86_64 arm64] [--python-version 3.12 ...] [--for-sandbox] [--out dist]
  publish-layer  build, then publish only the layer (both architectures) and print the ARNs
                 and the variables to set [--region R] [--prefix kafka-relay] [--dry-run]
  deploy         publish the layer and deploy both producers with boto3
                 [--env-file .env] [--dry-run] [--arch x86_64] [--region R] [--subnet-ids ...]
                 [--security-group-ids ...] [--log-retention-days 30]
  teardown       delete what deploy and publish-layer created [--prefix P] [--dry-run]
  bench          benchmarks against the baselines: table + ratios, bench/results/*.json
  faults         the slow fault-injection and soak suite (real broker, fault proxy, sandbox)
  lock           regenerate constraints.txt from requirements-dev.txt
USAGE
}

# Run a long step, printing a line every few seconds so a first run never looks stuck.
ticking() {
  local label="$1" pid seconds=0
  shift
  "$@" &
  pid=$!
  while kill -0 "$pid" 2>/dev/null; do
    sleep 1
    seconds=$((seconds + 1))
    if (( seconds % 3 == 0 )) && kill -0 "$pid" 2>/dev/null; then
      echo "    ... $label (${seconds} s)"
    fi
  done
  wait "$pid"
}

# Create .venv and install a pinned requirements set when its pins changed. The demo needs
# only requirements-demo.txt; the dev set (tests, linters, moto) includes it.
ensure_venv() {
  local set="${1:-dev}" file
  shift || true
  file="requirements-$set.txt"
  # Asking a command for --help installs nothing once .venv exists.
  if [[ -x "$PY" ]] && wants_help "$@"; then
    return
  fi
  if [[ ! -x "$PY" ]]; then
    "${PYTHON:-python3}" -c 'import sys; assert sys.version_info >= (3, 10), "kafka-relay needs Python >= 3.10"'
    echo "==> creating .venv ($("${PYTHON:-python3}" --version))"
    ticking "creating .venv" "${PYTHON:-python3}" -m venv "$VENV"
  fi
  local stamp="$VENV/.deps-stamp" want dev have=""
  want="$set:$(cat "$file" requirements-demo.txt constraints.txt | sha256sum | cut -d' ' -f1)"
  dev="dev:$(cat requirements-dev.txt requirements-demo.txt constraints.txt | sha256sum | cut -d' ' -f1)"
  [[ -f "$stamp" ]] && have="$(cat "$stamp")"
  # The dev set is a superset of the demo set: either satisfies the demo.
  if [[ "$have" == "$want" || ( "$set" == demo && "$have" == "$dev" ) ]]; then
    return
  fi
  echo "==> installing the pinned $set dependencies ($file) into .venv"
  # No -q: one line per package (pip's own), so a first run shows progress.
  local status=0
  "$PY" -m pip install --disable-pip-version-check --progress-bar off \
    -r "$file" -c constraints.txt 2>&1 \
    | { grep -E --line-buffered '^(Collecting|Downloading|Installing|Successfully|ERROR|error)' || true; } \
    || status=$?
  if [[ "$status" != 0 ]]; then  # pipefail: pip's own status
    echo "error: pip could not install $file (run: $PY -m pip install -r $file -c constraints.txt)" >&2
    exit 1
  fi
  echo "$want" > "$stamp"
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

# True when the command's arguments ask for help: then nothing is built first.
wants_help() {
  local arg
  for arg in "$@"; do
    [[ "$arg" == "-h" || "$arg" == "--help" ]] && return 0
  done
  return 1
}

# The demo and the sandbox build a layer for this interpreter only, apart from dist/.
local_build() {
  local version
  version="$("$PY" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')"
  "$PY" -m layer_build.build --arch "$(uname -m | sed 's/aarch64/arm64/')" \
    --python-version "$version" --out "$ROOT/build/local"
}

# demo, sandbox and bench import the extension's package (its log parsing) from the source tree.
export PYTHONPATH="$ROOT/extension${PYTHONPATH:+:$PYTHONPATH}"

cmd="${1:-}"
[[ $# -gt 0 ]] && shift
case "$cmd" in
  test)
    ensure_venv dev "$@"
    tiers="not slow"
    args=()
    for arg in "$@"; do
      if [[ "$arg" == --fast ]]; then
        tiers="(unit or functional) and not slow"  # no broker, no sandbox: a loop in seconds
      else
        args+=("$arg")
      fi
    done
    run_checks
    # Two workers: most broker and sandbox tests wait rather than compute. A module stays on
    # one worker, so its module fixtures (builds, installs) run once.
    workers="${KAFKA_RELAY_TEST_WORKERS:-2}"
    echo "==> pytest -m \"$tiers\" ($workers workers)"
    "$PY" -m pytest -m "$tiers" -n "$workers" --dist loadfile ${args[@]+"${args[@]}"}
    ;;
  demo)
    ensure_venv demo "$@"
    if ! wants_help "$@"; then
      echo "==> building the layer and the functions (build/local/)"
      ticking "building" local_build
    fi
    "$PY" -m devtools.demo --dist "$ROOT/build/local" "$@"
    ;;
  sandbox)
    ensure_venv demo "$@"
    wants_help "$@" || ticking "building" local_build
    "$PY" -m devtools.sandbox --layer "$ROOT/build/local/kafka-relay-layer-$(uname -m | sed 's/aarch64/arm64/').zip" "$@"
    ;;
  bench)
    ensure_venv dev "$@"
    wants_help "$@" || "$PY" -m layer_build.build --arch x86_64 --for-sandbox
    "$PY" -m bench "$@"
    ;;
  faults)
    ensure_venv dev "$@"
    "$PY" -m pytest -m slow "$@"
    ;;
  build)
    ensure_venv dev "$@"
    "$PY" -m layer_build.build "$@"
    ;;
  publish-layer)
    ensure_venv dev "$@"
    wants_help "$@" || "$PY" -m layer_build.build
    "$PY" -m layer_build.publish "$@"
    ;;
  deploy)
    ensure_venv dev "$@"
    "$PY" -m layer_build.deploy "$@"
    ;;
  teardown)
    ensure_venv dev "$@"
    "$PY" -m layer_build.teardown "$@"
    ;;
  lock)
    ensure_venv dev "$@"
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
