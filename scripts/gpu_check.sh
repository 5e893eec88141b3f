#!/usr/bin/env bash
# GPU check (issue 15): GRPO steps on one GPU with the torch engine and the colocated vLLM engine on a
# randomly initialised ~100M-parameter Qwen2 built locally (no downloads), log-probs and the weight push
# checked against the trainer, tokens/s printed. Under 8 minutes; exit 0 all checks pass, 1 a check
# failed, 2 no CUDA GPU / no vLLM. Details: src/reasonloop/bench/gpu_check.py and docs/engines.md.
#
#   scripts/gpu_check.sh [--size 100m|tiny] [--steps 4] [--out DIR] [--skip-vllm]
#
# Python: $PYTHON, else ./.venv/bin/python, else python3 (it needs reasonloop's dependencies, and vLLM:
# pip install -e '.[vllm]').
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
exec env PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" "$PY" -m reasonloop.bench.gpu_check "$@"
