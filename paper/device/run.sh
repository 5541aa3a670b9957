#!/usr/bin/env bash
# Runs the campaign's next entries on the GPU machine, offline, into OUT:
#   bash paper/device/run.sh OUT [python -m paper.reproduce flags, e.g. --budget=smoke]
# Needs paper/device/carry from prepare.sh. The carried wheels go into a temporary folder on
# PYTHONPATH; the run writes OUT/results.jsonl, OUT/log.txt and each GAN entry's first samples.
# It starts with the pre-flight (paper.campaign.preflight: the first group's kinds train one step,
# one Inception batch is scored, disk and GPU memory): a failed check prints one
# "[preflight] FAILED ..." line and exits 3 before the plan starts; a run in which no entry
# finished exits 1.
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
# The pre-flight's first check, before anything imports the runtime (python -m paper.reproduce
# cannot start without it): the packages the GPU image lacks come from the carried wheels. Its
# verdict line is paper.campaign.preflight's, written here because that module cannot load yet.
python3 - "$out" "$carry/wheels" <<'EOF' || exit 3
import importlib, importlib.metadata as md, pathlib, platform, sys

try:
    importlib.import_module("sympad.train")
except ImportError as e:
    def version(name):
        try:
            return md.version(name)
        except md.PackageNotFoundError:
            return "missing"

    wheels = sorted(p.name for p in pathlib.Path(sys.argv[2]).glob("*.whl")) or "none"
    line = (f"[preflight] FAILED after 0 s: imports (carried wheels: {wheels}): {type(e).__name__}: {e} "
            f"(jax {version('jax')}, jaxlib {version('jaxlib')}, flax {version('flax')}, "
            f"Python {platform.python_version()})")
    print(line, flush=True)
    out = pathlib.Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "log.txt", "a", encoding="utf-8") as f:
        f.write(line + "\n")
    sys.exit(3)
EOF
# One persistent compilation cache for every process of the run (runs/jax-cache unless one is
# set), every program however small: the pre-flight's compiles are the run's (the trainers' steps,
# the model inits, the Inception batch).
export JAX_COMPILATION_CACHE_DIR="${JAX_COMPILATION_CACHE_DIR:-$PWD/runs/jax-cache}"
export JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS=0
python3 -m paper.reproduce run device --out="$out" --commit="$(cat "$carry/COMMIT")" "$@"
