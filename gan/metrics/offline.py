"""Offline feature network: a small CIFAR-10 classifier whose weights ship with the project.

FID/KID in this network's feature space need no download, so every run (CI, a laptop with no
network) can track sample quality. The numbers are NOT comparable with Inception FID: reports name
the network (``fid_offline_cifar10``) so nobody mistakes one for the other.

The network is a compact VGG-style CNN (every spatial conv through ``sympad.linen.conv('C3', ...)``),
defined here because the classification suite's models did not exist when the weights were
trained. Features are the penultimate layer: the global average of the last conv stage (256-d).

Reproduce the shipped weights (``gan/metrics/weights/offline_cifar10.npz``)::

    mkdir -p /tmp/cifar10 && tar xzf ../shared/data/cifar10-train.tar.gz -C /tmp/cifar10
    tar xzf ../shared/data/cifar10-test.tar.gz -C /tmp/cifar10
    python -m gan.metrics.offline_train --data_dir=/tmp/cifar10/cifar10-jpeg \\
        --out=gan/metrics/weights/offline_cifar10.npz --epochs=5

Shipped file: 576k parameters stored as float16 (1.07 MB; computed in float32), 81.4% top-1 on the
10k CIFAR-10 test JPEGs after 5 epochs (81.39% with the float16 weights, 81.38% before rounding;
training took 69 min wall-clock on a shared, heavily loaded 2-core CPU). The file records its own test accuracy, epochs
and command (``load_offline_weights`` returns them). Images of other sizes are resized to 32 px
(antialiased) first, so for non-CIFAR data the features are only a rough, offline proxy.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn
from flax import traverse_util

from sympad.linen import conv

__all__ = [
    "OFFLINE_WEIGHTS",
    "OfflineCNN",
    "load_offline_weights",
    "offline_apply_fn",
    "random_variables",
    "save_offline_weights",
]

OFFLINE_WEIGHTS = Path(__file__).resolve().parent / "weights" / "offline_cifar10.npz"
# Name used in metric keys and reports ('fid_offline_cifar10').
OFFLINE_NAME = "offline_cifar10"


class OfflineCNN(nn.Module):
    """VGG-style CIFAR classifier: conv stages with BN-ReLU, 2x2 max-pool between stages.

    Attributes:
      stage_features: channels per stage; stage i has ``stage_depths[i]`` convs.
      stage_depths: convs per stage.
      num_classes: classifier outputs.
      kind: conv kind for ``sympad.linen.conv`` (the shipped weights use 'C3').

    Input float (B, H, W, 3) in [-1, 1]; returns ``(features (B, stage_features[-1]), logits (B,
    num_classes))``.
    """

    stage_features: Sequence[int] = (32, 64, 128, 256)
    stage_depths: Sequence[int] = (1, 2, 2, 1)
    num_classes: int = 10
    kind: str = "C3"

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> tuple[jax.Array, jax.Array]:
        norm = functools.partial(nn.BatchNorm, use_running_average=not train, momentum=0.9)
        for stage, (features, depth) in enumerate(zip(self.stage_features, self.stage_depths)):
            if stage > 0:
                x = nn.max_pool(x, (2, 2), strides=(2, 2))
            for i in range(depth):
                x = conv(self.kind, features, use_bias=False, name=f"conv{stage}_{i}")(x)
                x = nn.relu(norm(name=f"bn{stage}_{i}")(x))
        features = jnp.mean(x, axis=(1, 2))
        logits = nn.Dense(self.num_classes, name="head")(features)
        return features, logits


def preprocess(images: jax.Array, *, image_size: int = 32) -> jax.Array:
    """uint8 (B, H, W, 3) → float32 [-1, 1] at ``image_size`` (antialiased bilinear if resized)."""
    x = images.astype(jnp.float32) / 127.5 - 1.0
    if x.shape[1:3] != (image_size, image_size):
        x = jax.image.resize(x, (x.shape[0], image_size, image_size, 3), "bilinear", antialias=True)
    return x


def offline_apply_fn(variables: Any, *, model: OfflineCNN | None = None):
    """Returns ``f(uint8 (B,H,W,3)) -> {'pool': (B, D), 'logits': (B, 10)}`` (jit-compiled, eval mode)."""
    model = model or OfflineCNN()

    @jax.jit  # variables as an argument so they are not baked into the program as constants
    def apply(variables: Any, images: jax.Array) -> dict[str, jax.Array]:
        features, logits = model.apply(variables, preprocess(images), train=False)
        return {"pool": features, "logits": logits}

    return functools.partial(apply, variables)


def random_variables(seed: int = 0, *, model: OfflineCNN | None = None) -> dict:
    """Untrained variables drawn with NumPy (He-normal kernels, random BN statistics).

    For tests and smoke runs: no XLA compilation (flax's jitted ``init`` of this network takes
    seconds on a small CPU), and activations keep unit scale through the layers.
    """
    model = model or OfflineCNN()
    shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3))))
    rng = np.random.default_rng(seed)

    def draw(path, leaf):
        name = path[-1].key
        if name == "kernel":
            return rng.normal(0.0, np.sqrt(2.0 / np.prod(leaf.shape[:-1])), leaf.shape).astype(np.float32)
        if name in ("scale", "var"):
            return rng.uniform(0.5, 1.5, leaf.shape).astype(np.float32)
        return rng.normal(0.0, 0.1, leaf.shape).astype(np.float32)  # bias, mean

    return jax.tree_util.tree_map_with_path(draw, shapes)


# ---------------------------------------------------------------- weights file


def save_offline_weights(
    path: str | os.PathLike, variables: Any, *, metadata: dict, dtype: Any = np.float16
) -> None:
    """Writes flattened variables ('params/conv0_0/kernel', ...) and JSON metadata to ``path``.

    Stored as ``dtype`` (float16 by default: half the file, which ships in the repository;
    :func:`load_offline_weights` computes in float32 either way).
    """
    flat = traverse_util.flatten_dict(jax.device_get(variables), sep="/")
    arrays = {k: np.asarray(v, dtype) for k, v in flat.items()}
    arrays["__metadata__"] = np.frombuffer(json.dumps(metadata).encode(), np.uint8)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, **arrays)


def load_offline_weights(path: str | os.PathLike = OFFLINE_WEIGHTS) -> tuple[dict, dict]:
    """Reads a file written by :func:`save_offline_weights`. Returns ``(variables, metadata)``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"offline feature network weights not found at {path}; they ship with the project "
            "(gan/metrics/weights/offline_cifar10.npz) and are rebuilt with "
            "`python -m gan.metrics.offline_train --data_dir=... --out=...`"
        )
    with np.load(path) as f:
        metadata = json.loads(f["__metadata__"].tobytes().decode()) if "__metadata__" in f else {}
        flat = {k: jnp.asarray(f[k], jnp.float32) for k in f.files if k != "__metadata__"}
    return traverse_util.unflatten_dict(flat, sep="/"), metadata


# ---------------------------------------------------------------- training
