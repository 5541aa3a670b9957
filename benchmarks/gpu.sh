#!/usr/bin/env bash
# The GPU measurement (H100/H200-class): one command, under five minutes a call.
#
#   bash benchmarks/gpu.sh OUT_DIR [SECONDS] [more arguments for benchmarks.all]
#
# Runs `python -m benchmarks.all --gpu --resume` from the repository root and
# writes OUT_DIR/results.jsonl, OUT_DIR/results.md and OUT_DIR/log.txt. No group
# starts after SECONDS (default 190) and the run is killed at HARD_LIMIT seconds
# (default 270) whatever it is doing, so one call ends within about 4.5 minutes
# plus jax's start-up. Compiling dominates on a GPU (autotuning: about 1 s per
# layer program, 30 s and more per ResNet-56 train step on an H200), so the whole
# set takes several calls: run the same command again with the same OUT_DIR and
# it measures only what is missing (a group killed mid-way is tried once more,
# then given up) until its last line says "complete". The order puts the targets
# not yet measured on a GPU first. Needs jax with CUDA, flax and optax
# importable by `python3` (or $PYTHON); the repository need not be installed.
# SIZE_FLAG=--tiny runs the same script on the tiny set (how it is tested on a CPU).
set -euo pipefail
out="${1:?usage: bash benchmarks/gpu.sh OUT_DIR [SECONDS] [args for benchmarks.all]}"
budget="${2:-190}"
hard="${HARD_LIMIT:-270}"
shift $(( $# < 2 ? $# : 2 ))
mkdir -p "$out"
out="$(cd "$out" && pwd)"
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
# Let XLA take most of the GPU memory up front, as a training run would.
export XLA_PYTHON_CLIENT_MEM_FRACTION="${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.9}"
py="${PYTHON:-python3}"
size="${SIZE_FLAG:---gpu}"
# log.txt keeps everything; the terminal is spared the autotuner's cuda_timer
# warnings ("Delay kernel timed out", from programs compiled concurrently: a known
# XLA issue that can cost the autotuner accuracy; log.txt shows how many there were).
rc=0
timeout --kill-after=10 "$hard" "$py" -m benchmarks.all "$size" --out "$out" --deadline "$budget" --resume "$@" 2>&1 \
  | tee -a "$out/log.txt" | grep --line-buffered -v 'cuda_timer.cc' || rc=$?
echo "autotuner timer warnings so far: $(grep -c 'cuda_timer.cc' "$out/log.txt" || true)" | tee -a "$out/log.txt"
if [ "$rc" -ne 0 ]; then
  echo "benchmarks.all stopped with status $rc (124: killed at the ${hard} s limit); what it finished is kept" \
    | tee -a "$out/log.txt"
fi
tail -n 60 "$out/results.md" 2>/dev/null || true
# Rewrites results.md from every call's records and says what is left.
"$py" -m benchmarks.all "$size" --out "$out" --summary "$@" 2>&1 | tail -n 1 | tee -a "$out/log.txt"
