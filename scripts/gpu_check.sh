#!/usr/bin/env bash
# The one-GPU check, at most 8 minutes on a machine with one CUDA GPU and no internet:
#   scripts/gpu_check.sh             -> benchmarks/results/gpu.md, collected into BENCHMARKS.md
#   scripts/gpu_check.sh --dry-run   -> the same parts on CPU at tiny sizes (out/gpu_check_dry/gpu.md)
# What it runs: benchmarks/gpu_check.py. Needs the project's Python packages (make venv, or
# pip install -c constraints.txt -e .); deepspeed is optional (its parts are skipped without it).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${PYTHON:-}" ]; then
  if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"  # this tree's code, whatever the venv has installed
export HF_HUB_OFFLINE=1 TQDM_DISABLE=1
exec timeout --signal=TERM --kill-after=10 480 "$PYTHON" benchmarks/gpu_check.py "$@"
