#!/usr/bin/env bash
# Runs the campaign's next entries on the GPU machine, offline, into OUT:
#   bash paper/device/run.sh OUT [python -m paper.reproduce flags, e.g. --budget=smoke]
# Needs paper/device/carry from prepare.sh. The carried wheels go into a temporary folder on
# PYTHONPATH; the run writes OUT/results.jsonl, OUT/log.txt and each GAN entry's first samples.
set -euo pipefail
cd "$(dirname "$0")/../.."
out=${1:?usage: bash paper/device/run.sh OUT [python -m paper.reproduce flags]}
shift
carry=paper/device/carry
if [ ! -f "$carry/COMMIT" ]; then
  echo "error: $carry is not prepared: run bash paper/device/prepare.sh first (on a machine with PyPI)" >&2
  exit 2
fi
site=$(mktemp -d)
trap 'rm -rf "$site"' EXIT
for wheel in "$carry"/wheels/*.whl; do
  [ -e "$wheel" ] && python3 -m zipfile -e "$wheel" "$site"
done
export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
export SYMPAD_SHARED_DATA="$PWD/$carry/data"
python3 -m paper.reproduce --budget=device --out="$out" --commit="$(cat "$carry/COMMIT")" "$@"
