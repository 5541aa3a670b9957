#!/usr/bin/env bash
# Prepares a GPU run of the campaign, here (PyPI reachable): writes into paper/device/carry/
# (git-ignored) everything the GPU machine lacks, so `bash paper/device/run.sh OUT` works offline:
#   data/     CIFAR-10 JPEG archives (from $SYMPAD_SHARED_DATA or ../shared/data), 19.8 MB
#   wheels/   ml-collections, the one required package its image lacks (the version installed here)
#   fid_inception_f16.npz   the FID Inception weights, float16 byte-shuffled zlib (37.6 MB; fetched once)
#   COMMIT    the commit the run records (the GPU's copy of the tree has no .git)
# Carry paper/device/carry with the run; what travels is checked by tests/paper/test_device.py.
set -euo pipefail
cd "$(dirname "$0")/../.."
py=${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}
carry=paper/device/carry
mkdir -p "$carry/data" "$carry/wheels"

shared=${SYMPAD_SHARED_DATA:-../shared/data}
for name in cifar10-train.tar.gz cifar10-test.tar.gz; do
  if [ ! -f "$shared/$name" ]; then
    echo "error: $shared/$name not found: set SYMPAD_SHARED_DATA to the folder with the CIFAR-10 archives" >&2
    exit 2
  fi
  cp -u --no-preserve=mode "$shared/$name" "$carry/data/"
done

version=$("$py" -c 'import importlib.metadata as m; print(m.version("ml-collections"))')
rm -f "$carry"/wheels/*.whl
"$py" -m pip download --quiet --no-deps --only-binary=:all: --dest "$carry/wheels" "ml-collections==$version"

weights=$("$py" -c 'from gan.metrics.inception_weights import cached_weights as c; print(c() or "")')
if [ -z "$weights" ]; then
  "$py" -m gan.metrics.fetch
  weights=$("$py" -c 'from gan.metrics.inception_weights import cached_weights as c; print(c())')
fi
"$py" -m gan.metrics.convert --pth="$weights" --out="$carry/fid_inception_f16.npz" --half

commit=$(git rev-parse HEAD)
if [ -n "$(git status --porcelain --untracked-files=no)" ]; then
  commit="$commit+uncommitted"
  echo "note: the tree has uncommitted changes; they travel, and the results record $commit" >&2
fi
echo "$commit" > "$carry/COMMIT"
echo "prepared $carry ($(du -sh "$carry" | cut -f1)); commit $commit"
