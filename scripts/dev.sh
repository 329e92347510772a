#!/usr/bin/env bash
# One entry point for set-up and the two everyday jobs:
#   bash scripts/dev.sh demo [ARGS...]   offline demo (creates .venv on first use)
#   bash scripts/dev.sh test [PYTEST ARGS...]
#   bash scripts/dev.sh setup            only create / update .venv
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${SAFE_ENCODERS_VENV:-.venv}"
# Set-up reruns when pyproject.toml or this script (the --no-deps installs below) changes.
STAMP="$VENV/.installed-$(cat pyproject.toml scripts/dev.sh | sha256sum | cut -c1-16)"

setup() {
  if [ -f "$STAMP" ]; then return; fi
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --upgrade pip
  # torch first and pinned: an unpinned torch requirement would pull a multi-GB CUDA build.
  "$VENV/bin/pip" install --quiet "torch==${SAFE_ENCODERS_TORCH:-2.13.0}"
  # setuptools' "Editable installation ... folders with the same name as your package" note (a warning the user
  # cannot act on: our checkout is laid out that way on purpose) is silenced by its message, nothing else.
  PYTHONWARNINGS="ignore:Editable installation" "$VENV/bin/pip" install --quiet -e ".[dev,train,eval,scan,scale,app,zero-shot,eval-unlearn,vlm-bench]"
  # clip_benchmark without its requirements (they would replace the torch build; see the zero-shot extra).
  "$VENV/bin/pip" install --quiet --no-deps "clip-benchmark==1.6.2"
  # lmms-eval without its requirements (they would replace the torch build; see the vlm-bench extra).
  "$VENV/bin/pip" install --quiet --no-deps "lmms-eval==0.7.3"
  # The original LLaVA code, for the tests of make_safe / the gate on its real classes. Its pins (torch 2.0.1,
  # transformers 4.36.2, gradio, deepspeed, ...) are not needed to build and run its models: not installed.
  "$VENV/bin/pip" install --quiet --no-deps "llava-torch==1.2.2.post1"
  touch "$STAMP"
}

cmd="${1:-}"; shift || true
case "$cmd" in
  setup) setup ;;
  demo)  setup; HF_HUB_OFFLINE=1 exec "$VENV/bin/python" -m train demo --out out/demo "$@" ;;
  test)  setup; HF_HUB_OFFLINE=1 exec "$VENV/bin/python" -m pytest "$@" ;;
  *) echo "usage: bash scripts/dev.sh {setup|demo|test} [ARGS...]" >&2; exit 2 ;;
esac
