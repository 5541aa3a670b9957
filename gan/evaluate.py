"""Evaluates saved GAN samples and writes every metric to JSON.

    python -m gan.metrics.fetch                               # once: Inception weights into the cache
    python -m gan.evaluate --workdir=DIR                      # DIR/samples.npz, settings from DIR/config.json
    python -m gan.evaluate --samples=FILE.npz --reference=cifar10 --protocol=test10k
    python -m gan.evaluate --samples=FILE.npz --reference=folder:../cifar10-jpeg --resize=tf1
    python -m gan.evaluate --workdir=DIR --no_intra_class                # conditional run, overall only
    python -m gan.evaluate --workdir=DIR [--seed_index=0,1]              # a run of several seeds: mean ± std

Samples: an .npz with key 'images', uint8 (N, H, W, 3), as ``python -m gan.sample --workdir=DIR
--num=10000`` writes (to ``DIR/samples.npz`` unless --out says otherwise), and for a class-conditional
generator 'labels', int (N,). Reference: a ``sympad.train.data`` dataset name ('cifar10' from TFDS,
``folder:PATH`` for an image folder, classes from its subfolders), or ``npz:PATH`` for an .npz of
uint8 'images' (and optional int 'labels'); its features and labels are cached per dataset, split,
size, resize mode and weights digest. Intra-class metrics (``--intra_class``; default: when the
samples have labels): per class FID of that class's samples against that class's reference images
(``fid_class<c>_<net>``), their mean ``fid_intra_<net>`` and ``kid_intra_<net>``, with the per-class
counts under ``intra_class``. Settings come from the run's config.json (its ``eval`` and
``data`` blocks, see ``gan.metrics.evaluator``); flags override them. With weights fetched
(``python -m gan.metrics.fetch``) or named, metrics are Inception FID/KID/precision/recall
(``*_inception``, plus IS when the weights have logits); otherwise the shipped offline CIFAR-10
network is the fallback and the JSON says so (keys ``*_offline_cifar10``).

Output (default ``<samples dir>/eval_<network>_<protocol>.json``, also printed): ``metrics``,
``unavailable`` (metric → reason), ``feature_network`` (name, weights, sha256 = content digest
of the pool3 weights, source, resize), ``protocol``, ``num_samples``, ``num_reference``,
``reference``, ``settings``, ``notes``, ``samples_file``; then a short summary.

A run of several seeds (``config.num_seeds > 1``; ``gan.sample`` writes ``DIR/samples_seed<k>.npz``
per seed): ``--workdir=DIR`` scores the seeds ``--seed_index`` picks (default all), writes each
seed's JSON (``..._seed<k>.json``) and ``eval_<network>_<protocol>_seeds.json`` with every seed's
metrics and their mean and standard deviation over the seeds (``ddof=1``), and prints
``metric = mean ± std``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from gan.metrics.evaluator import (
    PROTOCOLS,
    Evaluator,
    default_eval_config,
    eval_settings,
)
from gan.metrics.features import FEATURE_NETWORKS
from gan.metrics.inception import RESIZE_MODES
from gan.state import parse_seed_indices, run_seeds, seed_path
from sympad.train import errors
from sympad.train.config import read_config

__all__ = ["evaluate_samples", "find_samples", "load_labels", "load_samples", "main", "over_seeds"]


def find_samples(workdir: str | Path, *, seed: int | None = None) -> Path:
    """``workdir/samples.npz``, else the newest ``samples*.npz`` below ``workdir``.

    ``seed``: the samples of that seed of a several-seed run, ``workdir/samples_seed<seed>.npz``.
    """
    workdir = Path(workdir)
    if seed is not None:
        path = seed_path(workdir / "samples.npz", seed)
        if not path.is_file():
            raise FileNotFoundError(f"workdir: no {path.name} in {workdir}; write it with "
                                    f"`python -m gan.sample --workdir={workdir}`")
        return path
    if (workdir / "samples.npz").is_file():
        return workdir / "samples.npz"
    found = sorted(workdir.rglob("samples*.npz"), key=lambda p: p.stat().st_mtime)
    if not found:
        raise FileNotFoundError(f"workdir: no samples*.npz under {workdir}; write them with `python -m gan.sample`")
    return found[-1]


def load_samples(path: str | Path) -> np.ndarray:
    """uint8 (N, H, W, 3) images from the .npz's 'images' key."""
    with np.load(path, allow_pickle=False) as f:
        if "images" not in f.files:
            raise errors.ConfigError(f"samples: {path} has no 'images' array (keys: {f.files})")
        images = f["images"]
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise errors.ConfigError(f"samples: 'images' must be uint8 (N, H, W, 3), got {images.dtype} {images.shape}")
    return images


def load_labels(path: str | Path, num: int) -> np.ndarray | None:
    """int32 (num,) class labels from the .npz's 'labels' key; None when it has none."""
    with np.load(path, allow_pickle=False) as f:
        if "labels" not in f.files:
            return None
        labels = f["labels"]
    if labels.shape != (num,) or not np.issubdtype(labels.dtype, np.integer):
        raise errors.ConfigError(f"samples: 'labels' in {path} must be integers of shape ({num},) (one per image), "
                                 f"got {labels.dtype} {labels.shape}")
    return labels.astype(np.int32)


def _load_config(workdir: Path | None) -> dict[str, Any]:
    if workdir is None:
        return {}
    try:
        return read_config(workdir).to_dict()
    except FileNotFoundError:  # samples without a run's config: the flags and the defaults
        return {}


def evaluate_samples(
    images: np.ndarray, *, config: dict[str, Any], reference: str | None = None, labels: np.ndarray | None = None,
) -> dict[str, Any]:
    """Runs the evaluator configured by ``config`` ({'eval': ..., 'data': ...}) on ``images``.

    ``reference``: a ``sympad.train.data`` name, or ``npz:PATH`` (uint8 'images', optional int 'labels'),
    overriding the config. ``labels``: the samples' classes (N,); adds the intra-class metrics.
    """
    return _evaluator(config, reference).report(images, labels)


def _evaluator(config: dict[str, Any], reference: str | None) -> Evaluator:
    """The evaluator of ``config`` against ``reference`` (see :func:`evaluate_samples`)."""
    reference_images, reference_name, reference_labels = None, None, None
    if reference and reference.startswith("npz:"):
        path = Path(reference[4:])
        reference_images = load_samples(path)
        reference_labels = load_labels(path, len(reference_images))
        # Name the set by content so a changed file never hits a stale cache entry.
        digest = hashlib.sha256(reference_images.tobytes()).hexdigest()[:12]
        reference_name = f"npz-{path.stem}-{digest}"
    elif reference:
        config = {**config, "eval": {**config.get("eval", {}), "reference_dataset": reference}}
    return Evaluator(eval_settings(config), reference_images=reference_images, reference_name=reference_name,
                     reference_labels=reference_labels)


def over_seeds(reports: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """Several seeds' reports as one: every seed's metrics, their mean and std (ddof=1) over the seeds.

    Args:
      reports: seed -> its report (:func:`evaluate_samples`).
    """
    first = next(iter(reports.values()))
    names = [k for k in first["metrics"] if all(k in r["metrics"] for r in reports.values())]
    values = {k: np.asarray([float(r["metrics"][k]) for r in reports.values()]) for k in names}
    return {
        "seeds": {str(seed): r["metrics"] for seed, r in reports.items()},
        "mean": {k: float(v.mean()) for k, v in values.items()},
        "std": {k: float(v.std(ddof=1)) if len(v) > 1 else 0.0 for k, v in values.items()},
        "num_seeds": len(reports),
        "feature_network": first["feature_network"],
        "protocol": first["protocol"],
        "num_reference": first["num_reference"],
        "reference": first["reference"],
        "samples_files": {str(seed): r.get("samples_file") for seed, r in reports.items()},
    }


def _parser() -> argparse.ArgumentParser:
    p = errors.ArgumentParser(prog="python -m gan.evaluate",
                              description="Evaluate GAN samples (FID, IS, KID, precision/recall) → JSON.")
    p.add_argument("--workdir", help="run directory (samples.npz, config.json)")
    p.add_argument("--samples", help="samples .npz (key 'images', uint8 NHWC); default: found in --workdir")
    p.add_argument("--out", help="output JSON (default: next to the samples)")
    p.add_argument("--reference", help="sympad.train.data dataset name (cifar10, folder:PATH, ...) or npz:PATH "
                                       "(default: config data.name / cifar10)")
    p.add_argument("--feature_network", choices=FEATURE_NETWORKS)
    p.add_argument("--inception_weights",
                   help="pytorch-fid .pth, TorchScript .pt or converted .npz (default: the fetched cache)")
    p.add_argument("--resize", choices=RESIZE_MODES,
                   help="Inception input resize: pytorch_fid (default) or tf1 (TF FID, torch-fidelity)")
    p.add_argument("--offline_weights", help="offline network .npz (default: the shipped one)")
    p.add_argument("--protocol", choices=tuple(PROTOCOLS))
    for name in ("num_reference", "batch_size", "is_splits", "kid_subsets", "kid_subset_size", "pr_k",
                 "pr_num_samples"):
        p.add_argument(f"--{name}", type=int)
    p.add_argument("--reference_split", choices=("train", "test"))
    p.add_argument("--cache_dir", help="reference-statistics cache directory")
    p.add_argument("--precision_recall", type=lambda s: s.lower() in ("1", "true", "yes"),
                   help="true/false (default true)")
    p.add_argument("--seed_index", default="",
                   help="--workdir of a run of several seeds: which seeds (comma-separated indices; index i is "
                        "seed config.seed + i; '' = all): each one's samples_seed<k>.npz, then mean ± std")
    intra = p.add_mutually_exclusive_group()
    intra.add_argument("--intra_class", dest="intra_class", action="store_const", const=True, default=None,
                       help="per-class FID/KID against the reference's classes (default: when the samples "
                            "have 'labels')")
    intra.add_argument("--no_intra_class", dest="intra_class", action="store_const", const=False,
                       help="overall metrics only, even for labelled samples")
    return p


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = _parser().parse_args(argv)
    if not args.workdir and not args.samples:
        raise SystemExit("gan.evaluate: give --workdir=DIR or --samples=FILE.npz")
    workdir = Path(args.workdir) if args.workdir else None
    config = _load_config(workdir)
    eval_block = {**default_eval_config().to_dict(), **(config.get("eval") or {})}
    for key in eval_block:
        value = getattr(args, key, None)
        if value is not None:
            eval_block[key] = value
    seeds = run_seeds(config) if config else (0,)
    if args.seed_index and (args.samples or not config):
        raise errors.ConfigError("--seed_index needs --workdir of a gan.main run (not --samples)")
    config = {**config, "eval": eval_block}
    if len(seeds) == 1 or args.samples:
        samples_path = Path(args.samples) if args.samples else find_samples(workdir)
        return _evaluate_file(samples_path, args, config, out=Path(args.out) if args.out else None)
    indices = parse_seed_indices(args.seed_index, config)
    paths = {seeds[i]: find_samples(workdir, seed=seeds[i]) for i in indices}  # all found before any scoring
    evaluator = _evaluator(config, args.reference)
    reports = {seed: _evaluate_file(path, args, config, evaluator=evaluator) for seed, path in paths.items()}
    combined = over_seeds(reports)
    out = Path(args.out) if args.out else (
        workdir / f"eval_{combined['feature_network']['name']}_{combined['protocol']['name']}_seeds.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(combined, indent=2) + "\n")
    print(f"wrote {out}")
    print(seeds_summary(combined))
    return combined


def _evaluate_file(samples_path: Path, args: argparse.Namespace, config: dict[str, Any], *,
                   evaluator: Evaluator | None = None, out: Path | None = None) -> dict[str, Any]:
    """Scores one samples file, writes its JSON (``out``, default next to the samples), prints it."""
    images = load_samples(samples_path)
    labels = load_labels(samples_path, len(images)) if args.intra_class is not False else None
    if args.intra_class and labels is None:
        raise errors.ConfigError(f"intra_class: {samples_path} has no 'labels' (gan.sample writes them for a "
                                 "class-conditional generator); drop --intra_class")
    evaluator = evaluator or _evaluator(config, args.reference)
    report = evaluator.report(images, labels)
    report["samples_file"] = str(samples_path)
    stem = f"eval_{report['feature_network']['name']}_{report['protocol']['name']}"
    seed_suffix = samples_path.stem[len("samples"):] if samples_path.stem.startswith("samples_seed") else ""
    out = out or samples_path.parent / f"{stem}{seed_suffix}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    print(f"wrote {out}")
    print(summary(report))
    return report


def seeds_summary(combined: dict[str, Any]) -> str:
    """One line per metric: ``name = mean ± std`` over the seeds, after the seeds' values."""
    lines = [f"[{combined['num_seeds']} seeds: {', '.join(combined['seeds'])}]"]
    for k, mean in combined["mean"].items():
        each = ", ".join(f"{float(m[k]):.6g}" for m in combined["seeds"].values())
        lines.append(f"  {k} = {mean:.6g} ± {combined['std'][k]:.3g}   ({each})")
    return "\n".join(lines)


def summary(report: dict[str, Any]) -> str:
    """The network, its weights digest and the sample counts, then one line per metric."""
    net = report["feature_network"]
    label = f"{net['name']} sha256:{str(net.get('sha256', '?'))[:12]}"
    if net.get("resize"):
        label += f" resize={net['resize']}"
    counts = f"{report['num_samples']} samples vs {report['num_reference']} {report['reference']['dataset']}" \
             f"/{report['reference']['split']}"
    lines = [f"[{label}; {counts}]"]
    lines += [f"  {k} = {v:.6g}" for k, v in report["metrics"].items()]
    lines += [f"  {k}: unavailable ({why})" for k, why in report.get("unavailable", {}).items()]
    if net["name"] != "inception":
        lines.append("Inception weights not found: these are offline-network numbers. Get the weights once with "
                     "`python -m gan.metrics.fetch`.")
    return "\n".join(lines)


if __name__ == "__main__":
    errors.run_cli(main)
