#!/usr/bin/env bash
# The GPU measurement (H100/H200-class), in two commands of about 5 minutes:
#
#   bash benchmarks/gpu.sh OUT_DIR                              # steps 1-5: SNGAN, ResNet-56, Table 1, layers
#   bash benchmarks/gpu.sh OUT_DIR2 210 --steps 6,7,8,9,10      # bfloat16 layers, formulations, the rest
#
# Runs `python -m benchmarks.all --gpu` from the repository root with a
# wall-clock budget in seconds (default 210: a step or network group already
# started finishes, what would start later is recorded as skipped), and writes
# OUT_DIR/results.jsonl, OUT_DIR/results.md and OUT_DIR/log.txt. Arguments after
# the budget go to benchmarks.all. Compiling dominates on a GPU (autotuning: about
# 1 s per layer program, 30 s and more per ResNet-56 train step on an H200), so
# allow the command 420 s. Needs jax with CUDA, flax and optax importable by
# `python3` (or $PYTHON); the repository itself need not be installed.
# SIZE_FLAG=--tiny runs the same script on the tiny set (how it is tested on a CPU).
set -euo pipefail
out="${1:?usage: bash benchmarks/gpu.sh OUT_DIR [SECONDS]}"
budget="${2:-210}"
shift $(( $# < 2 ? $# : 2 ))
mkdir -p "$out"
out="$(cd "$out" && pwd)"
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
# Let XLA take most of the GPU memory up front, as a training run would.
export XLA_PYTHON_CLIENT_MEM_FRACTION="${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.9}"
py="${PYTHON:-python3}"
"$py" -c 'import jax; print("devices:", jax.devices())' 2>&1 | tee "$out/log.txt"
# (cuda_timer warnings: the autotuner's, one per concurrently compiled program.)
"$py" -m benchmarks.all "${SIZE_FLAG:---gpu}" --out "$out" --deadline "$budget" "$@" 2>&1 \
  | grep --line-buffered -v 'cuda_timer.cc' | tee -a "$out/log.txt"
tail -n 80 "$out/results.md"
