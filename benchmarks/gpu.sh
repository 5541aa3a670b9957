#!/usr/bin/env bash
# The GPU measurement in one command (H100/H200-class, about 5 minutes):
#
#   bash benchmarks/gpu.sh OUT_DIR [SECONDS]
#
# Runs `python -m benchmarks.all --gpu` from the repository root with a
# wall-clock budget (default 210 s, so that the group in flight ends inside
# 5 minutes; what does not fit is recorded as skipped), and writes
# OUT_DIR/results.jsonl, OUT_DIR/results.md and OUT_DIR/log.txt.
# Needs jax with CUDA, flax and optax importable by `python3` (or $PYTHON);
# the repository itself need not be installed. SIZE_FLAG=--tiny runs the same
# script on the tiny set (how it is tested on a CPU).
set -euo pipefail
out="${1:?usage: bash benchmarks/gpu.sh OUT_DIR [SECONDS]}"
budget="${2:-210}"
mkdir -p "$out"
out="$(cd "$out" && pwd)"
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
# Let XLA take most of the GPU memory up front, as a training run would.
export XLA_PYTHON_CLIENT_MEM_FRACTION="${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.9}"
py="${PYTHON:-python3}"
"$py" -c 'import jax; print("devices:", jax.devices())' 2>&1 | tee "$out/log.txt"
"$py" -m benchmarks.all "${SIZE_FLAG:---gpu}" --out "$out" --deadline "$budget" 2>&1 | tee -a "$out/log.txt"
tail -n 80 "$out/results.md"
