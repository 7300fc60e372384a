#!/usr/bin/env bash
# cellpipe's two set-up commands (README):
#   ./run.sh pipeline   create/reuse .venv, install everything, run the default DAG (dvc repro)
#   ./run.sh test       create/reuse .venv, install everything, run the test suite
# Both are idempotent: the environment is reinstalled only when pyproject.toml or
# requirements.lock changed.
set -euo pipefail
cd "$(dirname "$0")"

PY=${PYTHON:-python3}
VENV=.venv
STAMP=$VENV/.cellpipe-installed

setup() {
  if [ ! -x "$VENV/bin/python" ]; then
    echo "== creating $VENV with $($PY --version)"
    "$PY" -m venv "$VENV"
  fi
  local want
  want=$(cat pyproject.toml requirements.lock | sha256sum | cut -d' ' -f1)
  if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$want" ]; then
    echo "== installing cellpipe and its dependencies into $VENV (torch takes a few minutes the first time)"
    "$VENV/bin/python" -m pip install --quiet --upgrade pip
    "$VENV/bin/python" -m pip install --quiet -c requirements.lock -e ".[test]"
    echo "$want" > "$STAMP"
  fi
  # stage commands (`cellpipe ...`) must be on PATH for dvc
  export PATH="$PWD/$VENV/bin:$PATH"
  export VIRTUAL_ENV="$PWD/$VENV"
}

case "${1:-}" in
  pipeline)
    setup
    shift
    dvc repro "$@"
    dvc metrics show 2>/dev/null || true
    ;;
  profile)
    # dvc exp run with every "key: value" line of profiles/NAME.yaml as -S key=value, read by
    # `cellpipe profile` (the one reader of profiles: comments, CRLF, indentation, quoting).
    # $DVC is the dvc command to run (default: dvc).
    setup
    name=${2:?usage: $0 profile NAME (see profiles/)}
    shift 2
    list=$(mktemp)
    trap 'rm -f "$list"' EXIT
    # a queued or temporary experiment runs in a copy of the repo (.dvc/tmp/exps/): paths leaving the repo
    # must be absolute there
    absolute=()
    for arg in "$@"; do
      case "$arg" in --queue|--temp) absolute=(--absolute) ;; esac
    done
    cellpipe profile "$name" --null "${absolute[@]}" > "$list"
    args=()
    while IFS= read -r -d '' override; do
      args+=(-S "$override")
    done < "$list"
    "${DVC:-dvc}" exp run "${args[@]}" "$@"
    "${DVC:-dvc}" metrics show 2>/dev/null || true
    ;;
  test)
    setup
    shift
    echo "== ruff check, ruff format --check"
    ruff check .
    ruff format --check .
    python -m pytest -n 2 --dist loadfile --no-loadscope-reorder --durations=20 "$@"
    ;;
  *)
    echo "usage: $0 pipeline|test|profile NAME [extra args for dvc repro / pytest / dvc exp run]" >&2
    exit 2
    ;;
esac
