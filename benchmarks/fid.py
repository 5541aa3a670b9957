"""FID Inception features: this project against pytorch-fid, side by side in one process.

    python -m benchmarks.fid --markdown /tmp/fid.md            # CPU: 200 images, 5 rounds, e2e on 2 x 200
    python -m benchmarks.fid --short                           # 50 images, 2 rounds, e2e on 2 x 50 (minutes)
    python -m benchmarks.fid --gpu --out results/fid.jsonl     # on a GPU (jax on the GPU, torch on CUDA)

Two measurements, each interleaved (round r runs every side once, so load from other processes
hits both alike), with the median images/s over rounds and the median of the per-round ratios:

1. **network**: the same decoded CIFAR-10 test images through ``gan.metrics.extract_features``
   (the project's FID Inception: resize, network, pool3 to host, its default batch) and through
   pytorch-fid's ``InceptionV3([3])`` (its resize and network, batch 50 as its CLI), both with the
   same weights: the ones ``python -m gan.metrics.fetch`` cached (or ``--inception_weights``),
   loaded into pytorch-fid's network the way ``tests/gan/make_fid_reference.py`` does (pytorch-fid's
   own download is not needed). The features' difference is reported too.
2. **end to end**: the FID between two folders of JPEGs, from the files: pytorch-fid's
   ``calculate_fid_given_paths`` (its CLI's batch 50 and data-loader workers) against what
   ``python -m gan.evaluate`` runs, a ``gan.metrics.Evaluator`` report, on the first folder's
   images decoded by ``sympad.train.data`` with the second as ``folder:`` reference (decode,
   resize, network, statistics; fresh caches in every round, so each round decodes, loads the
   weights and compiles again, as a new command would; KID on one subset and no precision/recall,
   which pytorch-fid does not compute).

Needs the reference extra (torch, pytorch-fid) beside jax. Writes JSON lines (``--out``, else
stdout: an environment record with the versions and the load average, then one record per
measurement) and a markdown table (``--markdown``, appended, else printed).
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import common
from paper import shared_data
from sympad.train import data, errors

__all__ = ["main", "pytorch_fid_network", "torch_weights"]

#: pytorch-fid's CLI batch size.
TORCH_BATCH = 50
REFERENCE_HELP = ("needs the reference extra beside jax: pip install torch==2.14.1 torchvision==0.29.1 pytorch-fid "
                  "(or pip install -e '.[reference]')")


def _versions() -> dict[str, str]:
    names = ("jax", "jaxlib", "flax", "torch", "torchvision", "pytorch-fid", "numpy", "scipy", "pillow")
    out = {}
    for name in names:
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            out[name] = importlib.metadata.version(name)
    return out


def _load() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def torch_weights(state: dict[str, np.ndarray]) -> dict[str, Any]:
    """A complete state dict for pytorch-fid's FID network from pytorch-fid-named weights.

    Entries the weights lack (the 1008-way ``fc`` of the pool3-only TorchScript weights) keep
    torchvision's initial values: pool3 never reads them.
    """
    import pytorch_fid.inception as pfi
    import torch

    template = pfi._inception_v3(num_classes=1008, aux_logits=False, weights=None).state_dict()
    return {k: torch.from_numpy(np.ascontiguousarray(state[k])) if k in state else v for k, v in template.items()}


def pytorch_fid_network(weights: dict[str, Any], device: str) -> Any:
    """pytorch-fid's ``InceptionV3([3])`` (pool3) with ``weights`` (:func:`torch_weights`).

    pytorch-fid builds the network and loads its weights through ``load_state_dict_from_url``;
    it gets ``weights`` instead, as ``tests/gan/make_fid_reference.py`` does.
    """
    import pytorch_fid.inception as pfi

    original = pfi.load_state_dict_from_url
    pfi.load_state_dict_from_url = lambda *args, **kwargs: weights
    try:
        return pfi.InceptionV3([pfi.InceptionV3.BLOCK_INDEX_BY_DIM[2048]]).eval().to(device)
    finally:
        pfi.load_state_dict_from_url = original


@contextlib.contextmanager
def _patched_pytorch_fid(weights: dict[str, Any], device: str) -> Iterator[None]:
    """``pytorch_fid.fid_score`` builds its network with these weights while the context is open."""
    from pytorch_fid import fid_score

    original = fid_score.InceptionV3
    fid_score.InceptionV3 = type("InceptionV3", (), {
        "BLOCK_INDEX_BY_DIM": original.BLOCK_INDEX_BY_DIM,
        "__new__": lambda cls, blocks: pytorch_fid_network(weights, device),
    })
    try:
        yield
    finally:
        fid_score.InceptionV3 = original


def _cifar_test_jpegs(cache: Path) -> list[Path]:
    root = shared_data.cifar10_folder("test", cache_dir=cache)  # its one resolver finds the archive
    return sorted((root / "test").rglob("*.jpg"))


def _decode(files: Sequence[Path]) -> np.ndarray:
    from PIL import Image

    return np.stack([np.asarray(Image.open(f).convert("RGB")) for f in files])


def _rounds(calls: dict[str, Callable[[], Any]], *, repeats: int, report: common.Report, what: str,
            images: int) -> dict[str, common.Timing]:
    """Each call once untimed (warm-up, compile), then ``repeats`` interleaved timed rounds."""
    for name, fn in calls.items():
        start = time.perf_counter()
        fn()
        report.write({"record": "warmup", "what": what, "side": name, "seconds": time.perf_counter() - start})
    times: dict[str, list[float]] = {k: [] for k in calls}
    cpu: dict[str, list[float]] = {k: [] for k in calls}
    for r in range(repeats):
        for name, fn in calls.items():
            start, start_cpu = time.perf_counter(), time.process_time()
            fn()
            times[name].append(time.perf_counter() - start)
            cpu[name].append(time.process_time() - start_cpu)
            report.write({"record": "round", "what": what, "side": name, "round": r, "seconds": times[name][-1],
                          "images_per_s": images / times[name][-1], "loadavg": _load()})
    return {k: common.Timing(tuple(times[k]), tuple(cpu[k])) for k in calls}


def _network(weights: dict[str, Any], network: Any, images: np.ndarray, *, device: str, repeats: int,
             report: common.Report) -> dict[str, Any]:
    import torch

    from gan.metrics import extract_features

    torch_net = pytorch_fid_network(weights, device)
    batches = [torch.from_numpy(images[i : i + TORCH_BATCH]).permute(0, 3, 1, 2).float().div(255.0).to(device)
               for i in range(0, len(images), TORCH_BATCH)]  # what pytorch-fid's loader hands its network

    def torch_features() -> np.ndarray:
        with torch.no_grad():
            return np.concatenate([torch_net(b)[0].squeeze(-1).squeeze(-1).cpu().numpy() for b in batches])

    def project_features() -> np.ndarray:
        return extract_features(network, images, keys=("pool",), desc="benchmark")["pool"]

    ours, theirs = project_features(), torch_features()
    difference = float(np.max(np.abs(ours - theirs)) / np.max(np.abs(theirs)))
    timing = _rounds({"pytorch-fid": torch_features, "sympad": project_features}, repeats=repeats, report=report,
                     what="network", images=len(images))
    return _summary("network", timing, len(images), max_relative_difference=difference)


def _end_to_end(torch_state: dict[str, Any], weights: Path, files: Sequence[Path], *, device: str, repeats: int,
                workers: int, tmp: Path, report: common.Report) -> dict[str, Any]:
    from pytorch_fid import fid_score

    from gan import metrics

    half = len(files) // 2
    folders = [tmp / "samples", tmp / "reference"]
    for folder, part in zip(folders, (files[:half], files[half : 2 * half])):
        folder.mkdir()
        for i, f in enumerate(part):  # flat: pytorch-fid reads the files directly in the folder
            shutil.copyfile(f, folder / f"{i:05d}.jpg")
    fids: dict[str, float] = {}

    def torch_fid() -> None:
        with _patched_pytorch_fid(torch_state, device):
            fids["pytorch-fid"] = float(fid_score.calculate_fid_given_paths(
                [str(f) for f in folders], TORCH_BATCH, device, 2048, workers))

    def project_fid() -> None:
        with tempfile.TemporaryDirectory(dir=tmp) as cache:  # nothing decoded or computed survives a round
            os.environ["SYMPAD_CACHE"] = cache
            images = np.asarray(data.load(f"folder:{folders[0]}", "test").images)
            settings = metrics.eval_settings({"eval": {
                "feature_network": "inception", "inception_weights": str(weights), "cache_dir": cache,
                "reference_dataset": f"folder:{folders[1]}", "num_reference": half, "kid_subsets": 1,
                "precision_recall": False}})
            evaluator = metrics.Evaluator(settings)
            fids["sympad"] = evaluator.report(images)["metrics"][evaluator.fid_key]

    timing = _rounds({"pytorch-fid": torch_fid, "sympad": project_fid}, repeats=repeats, report=report,
                     what="end_to_end", images=2 * half)
    return _summary("end_to_end", timing, 2 * half, fid=fids, fid_relative_difference=abs(
        fids["sympad"] - fids["pytorch-fid"]) / abs(fids["pytorch-fid"]))


def _summary(what: str, timing: dict[str, common.Timing], images: int, **extra: Any) -> dict[str, Any]:
    base, ours = timing["pytorch-fid"], timing["sympad"]
    return {
        "record": "result", "what": what, "images": images, "rounds": len(base.times),
        "pytorch_fid_images_per_s": images / base.median, "sympad_images_per_s": images / ours.median,
        "ratio": common.ratio(base, ours), "ratio_cpu_time": common.ratio(base, ours, cpu=True),
        "pytorch_fid_cpu_s_per_image": base.cpu_median / images, "sympad_cpu_s_per_image": ours.cpu_median / images,
        "loadavg": _load(), **extra,
    }


def _markdown(results: Sequence[dict[str, Any]], env: dict[str, Any], versions: dict[str, str]) -> str:
    rows = [[r["what"], r["images"], r["rounds"], r["pytorch_fid_images_per_s"], r["sympad_images_per_s"],
             f"{r['ratio']:.2f}x", f"{r['ratio_cpu_time']:.2f}x", r["loadavg"]] for r in results]
    table = common.markdown_table(
        ["measurement", "images", "rounds", "pytorch-fid images/s", "sympad images/s", "ratio (median of rounds)",
         "ratio, CPU time", "load after"], rows)
    head = (f"{env['date']}, {env['device']} ({env['backend']}), {env.get('cpu', '')}, {env.get('cpu_count')} CPUs, "
            f"load at start {env.get('loadavg')}; " + ", ".join(f"{k} {v}" for k, v in versions.items()))
    return head + "\n\n" + table


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    parser = common.size_parser("benchmarks.fid", __doc__, gpu="GPU sizes: 2000 images, 5 rounds, e2e 2 x 2000",
                                tiny="smallest: 10 images, 1 round, e2e 2 x 10 (a smoke test)")
    parser.add_argument("--short", action="store_true", help="50 images, 2 rounds, e2e 2 x 50: minutes on a CPU")
    parser.add_argument("--images", type=int, default=None, help="network-only images (default 200; GPU 2000)")
    parser.add_argument("--e2e-images", type=int, default=None, help="images per folder end to end (0 skips it)")
    parser.add_argument("--repeats", type=int, default=None, help="timed rounds (default 5)")
    parser.add_argument("--inception_weights", default="", help="weights file (default: the fetched cache)")
    parser.add_argument("--torch-device", default=None, help="pytorch-fid's device (default: cuda if available)")
    parser.add_argument("--torch-workers", type=int, default=None,
                        help="pytorch-fid's data-loader workers end to end (default: its CLI's, min(CPUs, 8))")
    parser.add_argument("--out", default=None, help="append JSON lines here (default: stdout)")
    parser.add_argument("--markdown", default=None, help="append the markdown table here (default: print it)")
    args = parser.parse_args(argv)
    try:
        import pytorch_fid  # noqa: F401
        import torch
    except ImportError as e:
        raise errors.ConfigError(f"benchmarks.fid: {e}; {REFERENCE_HELP}") from None
    from gan.metrics import features, inception_formats

    size = "gpu" if args.gpu else "tiny" if args.tiny else "short" if args.short else "cpu"
    images_n = args.images or {"gpu": 2000, "tiny": 10, "short": 50, "cpu": 200}[size]
    e2e_n = args.e2e_images if args.e2e_images is not None else {"gpu": 2000, "tiny": 10, "short": 50, "cpu": 200}[size]
    repeats = args.repeats or {"tiny": 1, "short": 2}.get(size, 5)
    device = args.torch_device or ("cuda" if torch.cuda.is_available() else "cpu")
    workers = args.torch_workers if args.torch_workers is not None else min(len(os.sched_getaffinity(0)), 8)
    weights = features.resolve_inception_weights(args.inception_weights)
    if weights is None:
        raise errors.ConfigError(f"--inception_weights: none named or cached. {inception_formats.WEIGHTS_HELP}")
    torch.set_grad_enabled(False)
    torch_state = torch_weights(inception_formats.load_state_dict(weights)[0])

    report = common.Report(args.out, stream=None if args.out else sys.stdout)
    env, versions = common.environment(), _versions()
    report.write({"record": "environment", **env, "versions": versions, "torch_threads": torch.get_num_threads(),
                  "torch_device": device, "weights": str(weights)})
    results = []
    saved_cache = os.environ.get("SYMPAD_CACHE")
    with tempfile.TemporaryDirectory(prefix="sympad-fid-bench-") as tmp_name:
        tmp = Path(tmp_name)
        files = _cifar_test_jpegs(tmp / "cifar")
        if len(files) < max(images_n, 2 * e2e_n):
            raise errors.ConfigError(f"--images/--e2e-images: the CIFAR-10 test split has {len(files)} images")
        network = features.get_feature_network("inception", inception_weights=weights)
        results.append(_network(torch_state, network, _decode(files[:images_n]), device=device, repeats=repeats,
                                report=report))
        report.write(results[-1])
        if e2e_n:
            try:
                results.append(_end_to_end(torch_state, weights, files[: 2 * e2e_n], device=device, repeats=repeats,
                                           workers=workers, tmp=tmp, report=report))
            finally:
                if saved_cache is None:
                    os.environ.pop("SYMPAD_CACHE", None)
                else:
                    os.environ["SYMPAD_CACHE"] = saved_cache
            report.write(results[-1])
    common.emit_markdown(_markdown(results, env, versions), args.markdown)
    report.close()
    return results


if __name__ == "__main__":
    errors.run_cli(main)
