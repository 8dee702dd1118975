#!/usr/bin/env bash
# kafka-relay: the one entry point. See README.md.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$ROOT"
VENV="$ROOT/.venv"
PY="$VENV/bin/python"

usage() {
  cat <<'USAGE'
usage: ./build.sh <command> [args]

  demo     the main job end to end: build, local broker + feed fixtures, both producers in
           the local Lambda sandbox with the extension, then what arrived on each topic
  test     install pinned deps into .venv, run ruff, mypy and the default pytest run
  build    dist/: kafka-relay-layer-<arch>.zip, producer-functions.zip, manifest.json
           [--arch x86_64 arm64] [--python-version 3.12 ...] [--for-sandbox] [--out dist]
  deploy   publish the layer and deploy both producers with boto3
           [--env-file .env] [--dry-run] [--arch x86_64] [--region R] [--prefix kafka-relay]
  bench    benchmarks against the baselines: table + ratios, bench/results/*.json
  faults   the slow fault-injection and soak suite (real broker, fault proxy, sandbox)
  lock     regenerate constraints.txt from requirements-dev.txt
USAGE
}

# Create .venv and install the pinned dependencies when the pins changed.
ensure_venv() {
  if [[ ! -x "$PY" ]]; then
    "${PYTHON:-python3}" -c 'import sys; assert sys.version_info >= (3, 10), "kafka-relay needs Python >= 3.10"'
    "${PYTHON:-python3}" -m venv "$VENV"
  fi
  local stamp="$VENV/.deps-stamp" want
  want="$(cat requirements-dev.txt constraints.txt | sha256sum | cut -d' ' -f1)"
  if [[ ! -f "$stamp" || "$(cat "$stamp")" != "$want" ]]; then
    echo "==> installing pinned dependencies into .venv"
    "$PY" -m pip install --disable-pip-version-check -q -r requirements-dev.txt -c constraints.txt
    echo "$want" > "$stamp"
  fi
}

run_checks() {
  echo "==> ruff"
  "$VENV/bin/ruff" check .
  echo "==> mypy"
  "$VENV/bin/mypy"
  echo "==> import rules"
  PYTHONPATH="$ROOT/extension:$ROOT" "$VENV/bin/lint-imports" --no-cache
}

# demo and bench import the extension's package (its log parsing) from the source tree.
export PYTHONPATH="$ROOT/extension${PYTHONPATH:+:$PYTHONPATH}"

cmd="${1:-}"
[[ $# -gt 0 ]] && shift
case "$cmd" in
  test)
    ensure_venv
    run_checks
    echo "==> pytest"
    "$PY" -m pytest -m "not slow" "$@"
    ;;
  demo)
    ensure_venv
    "$PY" -m layer_build.build --arch x86_64 --for-sandbox
    "$PY" -m devtools.demo "$@"
    ;;
  bench)
    ensure_venv
    "$PY" -m layer_build.build --arch x86_64 --for-sandbox
    "$PY" -m bench "$@"
    ;;
  faults)
    ensure_venv
    "$PY" -m pytest -m slow "$@"
    ;;
  build)
    ensure_venv
    "$PY" -m layer_build.build "$@"
    ;;
  deploy)
    ensure_venv
    "$PY" -m layer_build.deploy "$@"
    ;;
  lock)
    ensure_venv
    "$PY" -m pip install --disable-pip-version-check -q -r requirements-dev.txt
    "$PY" -m pip freeze --exclude-editable > constraints.txt
    ;;
  -h|--help|help)
    usage
    ;;
  *)
    usage >&2
    exit 2
    ;;
esac
