"""Input-pipeline throughput (images/s) for CIFAR-sized data; prints JSON.

    python -m benchmarks.data [--steps=50] [--batch_size=128] [--cifar_dir=DIR]

Measures, on the default JAX backend (CPU here):

* ``device_get_batch``: :func:`sympad.train.data.get_batch` under jit on a 50,000 x
  32 x 32 x 3 uint8 split held on the device, plain and with pad-4 crop + flip
  (+ cutout), compile time excluded;
* ``host_loader``: :class:`sympad.train.data.HostLoader` batches from a host array
  (grain gather + ``device_put``), consumed as fast as possible;
* ``--loaders_only``: images/s of :class:`sympad.train.data.HostLoader` per grain
  reader-thread count (``--threads``) over the CIFAR-10 train JPEG folder
  (``paper.shared_data.cifar10_folder()``, decoded once), median of ``--repeats``;
* ``folder_decode``: :func:`sympad.train.data.load` of an image folder, first load
  (decode + cache write, per thread count) and cached reload. Uses the shared
  CIFAR-10 JPEG archives (``$SYMPAD_SHARED_DATA``, else ``../shared/data`` beside
  the checkout, extracted to a temporary folder, train + test = 60,000 files) when
  present, else 10,000 generated 32 x 32 JPEGs.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from paper import shared_data
from sympad.train import data


def _device_get_batch(images, labels, *, batch_size, steps, **kwargs) -> float:
    key = jax.random.key(0)
    fn = jax.jit(lambda s: data.get_batch(images, labels, key, s, batch_size=batch_size, **kwargs))
    jax.block_until_ready(fn(0))  # Compile.
    start = time.perf_counter()
    for step in range(1, steps + 1):
        out = fn(step)
    jax.block_until_ready(out)
    return batch_size * steps / (time.perf_counter() - start)


def _host_loader(images, labels, *, batch_size, steps, num_threads=2) -> float:
    key = jax.random.key(0)
    with data.HostLoader(images, labels, batch_size=batch_size, key=key, num_steps=steps + 1,
                         num_threads=num_threads) as it:
        jax.block_until_ready(next(it))  # Compile the permutation, start the readers.
        start = time.perf_counter()
        for batch in it:
            jax.block_until_ready(batch)
    return batch_size * steps / (time.perf_counter() - start)


def _loaders_on_cifar10_folder(*, batch_size: int, steps: int, threads: list[int], repeats: int) -> dict:
    """HostLoader per reader-thread count over the CIFAR-10 train JPEG folder (decoded once into the cache).

    The thread counts take turns, ``repeats`` rounds, so load from other processes hits them alike.
    """
    root = shared_data.cifar10_folder(("train",))
    ds = data.load(f"folder:{root}", "train")
    runs = {n: [] for n in threads}
    for _ in range(repeats):
        for n in threads:
            runs[n].append(_host_loader(ds.images, ds.labels, batch_size=batch_size, steps=steps, num_threads=n))
    result = {"source": f"cifar10 train JPEG folder ({len(ds)} images, decoded cache)", "repeats": repeats}
    for n, values in runs.items():
        result[f"host_loader_threads_{n}"] = {"median": round(statistics.median(values)),
                                              "all": [round(v) for v in values]}
    return result


def _prepare_folder(tmp: Path, cifar_dir: str | None) -> tuple[Path, str]:
    if cifar_dir:
        return Path(cifar_dir), f"cifar10 folder {cifar_dir}"
    if shared_data.shared_data_file("cifar10-train.tar.gz") and shared_data.shared_data_file("cifar10-test.tar.gz"):
        extracted = shared_data.cifar10_folder(cache_dir=tmp)
        # Both splits as one folder of class subfolders: 60,000 JPEGs.
        root = tmp / "all"
        for split in ("train", "test"):
            for cls in (extracted / split).iterdir():
                target = root / cls.name
                target.mkdir(parents=True, exist_ok=True)
                for f in cls.iterdir():
                    f.rename(target / f"{split}-{f.name}")
        return root, "cifar10 train+test JPEGs (shared archives)"
    from PIL import Image

    rng = np.random.default_rng(0)
    root = tmp / "generated"
    for i in range(10_000):
        path = root / f"c{i % 10}" / f"{i}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(path, quality=90)
    return root, "10,000 generated 32x32 JPEGs"


def _folder_decode(cifar_dir: str | None, thread_counts: list[int]) -> dict:
    result = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        root, what = _prepare_folder(tmp, cifar_dir)
        result["source"] = what
        for threads in thread_counts:
            cache = tmp / f"cache-{threads}"
            start = time.perf_counter()
            ds = data.load(f"folder:{root}", cache_dir=cache, decode_threads=threads)
            seconds = time.perf_counter() - start
            result[f"first_load_threads_{threads}"] = {
                "images": len(ds),
                "seconds": round(seconds, 2),
                "images_per_s": round(len(ds) / seconds),
            }
        start = time.perf_counter()
        ds = data.load(f"folder:{root}", cache_dir=cache)
        seconds = time.perf_counter() - start
        result["cached_load"] = {
            "images": len(ds),
            "seconds": round(seconds, 3),
            "images_per_s": round(len(ds) / seconds),
        }
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--batch_size", type=int, default=128)
    parser.add_argument("--cifar_dir", default=None, help="an extracted class-folder split")
    parser.add_argument("--threads", default="1,2", help="thread counts for the folder decode and the host loader")
    parser.add_argument("--skip_folder", action="store_true")
    parser.add_argument("--loaders_only", action="store_true",
                        help="only HostLoader (per --threads) on the CIFAR-10 train JPEG folder")
    parser.add_argument("--repeats", type=int, default=5, help="rounds of --loaders_only")
    args = parser.parse_args()
    if args.loaders_only:
        print(json.dumps(_loaders_on_cifar10_folder(
            batch_size=args.batch_size, steps=args.steps, threads=[int(t) for t in args.threads.split(",")],
            repeats=args.repeats), indent=1))
        return

    rng = np.random.default_rng(0)
    host_images = rng.integers(0, 256, (50_000, 32, 32, 3), dtype=np.uint8)
    host_labels = rng.integers(0, 10, 50_000).astype(np.int32)
    images, labels = jnp.asarray(host_images), jnp.asarray(host_labels)
    b, steps = args.batch_size, args.steps
    report = {
        "device": str(jax.devices()[0]),
        "batch_size": b,
        "steps": steps,
        "device_get_batch_images_per_s": {
            "plain": round(_device_get_batch(images, labels, batch_size=b, steps=steps)),
            "crop_flip": round(
                _device_get_batch(images, labels, batch_size=b, steps=steps, augment=True)
            ),
            "crop_flip_cutout16": round(
                _device_get_batch(
                    images, labels, batch_size=b, steps=steps, augment=True, cutout_size=16
                )
            ),
        },
        "host_loader_images_per_s": round(
            _host_loader(host_images, host_labels, batch_size=b, steps=steps)
        ),
    }
    if not args.skip_folder:
        report["folder_decode"] = _folder_decode(
            args.cifar_dir, [int(t) for t in args.threads.split(",")]
        )
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
