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

Inference only, arranged for speed (BENCHMARKS.md, "FID Inception on a CPU"); each change is exact
in real arithmetic and moves the features by about 1e-6 relative in float32:

- every BatchNorm is folded into its convolution's kernel and bias when the weights are loaded
  (``gan.metrics.inception_formats.variables_from_state_dict``), so a layer is conv + bias + ReLU;
- the 1x1 convolutions of a block that read the block's input run as one wider convolution;
- the average-pool branch convolves first and pools after (both are linear and per position; the
  bias commutes because a ``count_include_pad=False`` average of a constant is that constant), so
  its 1x1 convolution joins the merged one and the pool runs on 32-192 channels instead of 192-1280;
- on a CPU the program is compiled with :data:`CPU_COMPILER_OPTIONS`.

The parameters keep pytorch-fid's layer names (``Mixed_6b/branch7x7_2/{kernel,bias}``); the
convolutions are plain ``lax`` convolutions rather than ``sympad.linen.conv``: this is a frozen
reference network (VALID and 1x7 convolutions), not a model with a conv kind. Weight files and
their formats: ``gan.metrics.inception_formats``; fetching them: ``gan.metrics.inception_weights``.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

__all__ = [
    "CPU_COMPILER_OPTIONS",
    "INPUT_SIZE",
    "NUM_CLASSES",
    "RESIZE_MODES",
    "FIDInceptionV3",
    "has_logits",
    "inception_apply_fn",
    "preprocess",
    "resize_bilinear",
    "tf1_bilinear_matrix",
    "torch_bilinear_matrix",
]

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


def _conv(x: jax.Array, kernel: jax.Array, bias: jax.Array, *, strides: int = 1, padding: int | Sequence[int] = 0,
          precision: Any = jax.lax.Precision.HIGHEST) -> jax.Array:
    """NHWC convolution with torch's explicit symmetric padding, plus the (folded) bias."""
    ph, pw = _pair(padding)
    y = jax.lax.conv_general_dilated(x, kernel, (strides, strides), ((ph, ph), (pw, pw)),
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"), precision=precision)
    return y + bias


def _declare_conv(module: nn.Module, features: int, kernel_size: int | Sequence[int],
                  in_features: int) -> tuple[jax.Array, jax.Array]:
    # Every layer's parameters sit at <block>/<layer>/{kernel,bias}, merged or not.
    kernel = module.param("kernel", nn.initializers.lecun_normal(), (*_pair(kernel_size), in_features, features))
    return kernel, module.param("bias", nn.initializers.zeros, (features,))


class ConvParams(nn.Module):
    """Kernel (kh, kw, in, out) and bias (out,) of one convolution with its BatchNorm folded in."""

    features: int
    kernel_size: int | Sequence[int] = 1

    @nn.compact
    def __call__(self, in_features: int) -> tuple[jax.Array, jax.Array]:
        return _declare_conv(self, self.features, self.kernel_size, in_features)


class BasicConv(nn.Module):
    """Conv → BatchNorm (inference, eps 1e-3; folded into the conv's kernel and bias) → ReLU."""

    features: int
    kernel_size: int | Sequence[int]
    strides: int = 1
    padding: int | Sequence[int] = 0
    precision: Any = jax.lax.Precision.HIGHEST

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kernel, bias = _declare_conv(self, self.features, self.kernel_size, x.shape[-1])
        return nn.relu(_conv(x, kernel, bias, strides=self.strides, padding=self.padding, precision=self.precision))


def _merged_1x1(x: jax.Array, layers: Sequence[ConvParams], precision: Any) -> list[jax.Array]:
    """The 1x1 convolutions ``layers`` over the same input as one convolution; their outputs (before ReLU)."""
    kernels, biases = zip(*(layer(x.shape[-1]) for layer in layers))
    y = _conv(x, jnp.concatenate(kernels, axis=-1), jnp.concatenate(biases), precision=precision)
    return jnp.split(y, np.cumsum([b.shape[0] for b in biases])[:-1], axis=-1)


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
        b1, b5, b3, bp = _merged_1x1(x, [ConvParams(64, name="branch1x1"), ConvParams(48, name="branch5x5_1"),
                                         ConvParams(64, name="branch3x3dbl_1"),
                                         ConvParams(self.pool_features, name="branch_pool")], self.precision)
        b5 = c(64, 5, padding=2, name="branch5x5_2")(nn.relu(b5))
        b3 = c(96, 3, padding=1, name="branch3x3dbl_3")(c(96, 3, padding=1, name="branch3x3dbl_2")(nn.relu(b3)))
        return jnp.concatenate([nn.relu(b1), b5, b3, nn.relu(_avg_pool_3x3(bp))], axis=-1)


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
        b1, b7, bd, bp = _merged_1x1(x, [ConvParams(192, name="branch1x1"), ConvParams(c7, name="branch7x7_1"),
                                         ConvParams(c7, name="branch7x7dbl_1"), ConvParams(192, name="branch_pool")],
                                     self.precision)
        b7 = c(c7, (1, 7), padding=(0, 3), name="branch7x7_2")(nn.relu(b7))
        b7 = c(192, (7, 1), padding=(3, 0), name="branch7x7_3")(b7)
        bd = c(c7, (7, 1), padding=(3, 0), name="branch7x7dbl_2")(nn.relu(bd))
        bd = c(c7, (1, 7), padding=(0, 3), name="branch7x7dbl_3")(bd)
        bd = c(c7, (7, 1), padding=(3, 0), name="branch7x7dbl_4")(bd)
        bd = c(192, (1, 7), padding=(0, 3), name="branch7x7dbl_5")(bd)
        return jnp.concatenate([nn.relu(b1), b7, bd, nn.relu(_avg_pool_3x3(bp))], axis=-1)


class InceptionD(nn.Module):
    """Mixed_7a (grid reduction 17 → 8): 1x1-3x3/2 | 1x1-1x7-7x1-3x3/2 | maxpool/2."""

    precision: Any = jax.lax.Precision.HIGHEST

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c = functools.partial(BasicConv, precision=self.precision)
        b3, b7 = _merged_1x1(x, [ConvParams(192, name="branch3x3_1"), ConvParams(192, name="branch7x7x3_1")],
                             self.precision)
        b3 = c(320, 3, strides=2, name="branch3x3_2")(nn.relu(b3))
        b7 = c(192, (1, 7), padding=(0, 3), name="branch7x7x3_2")(nn.relu(b7))
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
        if self.pool not in ("avg", "max"):
            raise ValueError(f"pool must be 'avg' or 'max', got {self.pool!r}")
        c = functools.partial(BasicConv, precision=self.precision)
        layers = [ConvParams(320, name="branch1x1"), ConvParams(384, name="branch3x3_1"),
                  ConvParams(448, name="branch3x3dbl_1")]
        if self.pool == "avg":  # a max-pool does not commute with the convolution: its branch stays apart
            layers.append(ConvParams(192, name="branch_pool"))
        b1, b3, bd, *bp = _merged_1x1(x, layers, self.precision)
        b3 = nn.relu(b3)
        b3 = jnp.concatenate([
            c(384, (1, 3), padding=(0, 1), name="branch3x3_2a")(b3),
            c(384, (3, 1), padding=(1, 0), name="branch3x3_2b")(b3),
        ], axis=-1)
        bd = c(384, 3, padding=1, name="branch3x3dbl_2")(nn.relu(bd))
        bd = jnp.concatenate([
            c(384, (1, 3), padding=(0, 1), name="branch3x3dbl_3a")(bd),
            c(384, (3, 1), padding=(1, 0), name="branch3x3dbl_3b")(bd),
        ], axis=-1)
        if self.pool == "avg":
            bp = nn.relu(_avg_pool_3x3(bp[0]))
        else:
            pooled = nn.max_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)))
            bp = c(192, 1, name="branch_pool")(pooled)
        return jnp.concatenate([nn.relu(b1), b3, bd, bp], axis=-1)


class FIDInceptionV3(nn.Module):
    """The FID Inception-v3 (TF 2015-12-05 graph) with folded BatchNorm; layer names follow pytorch-fid.

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


#: XLA:CPU compile options for the network: its convolutions through XLA's own (Eigen) kernels
#: instead of the YNNPACK library fusions jax 0.10 emits by default, which ran the FID Inception
#: at about half the speed on a 2-core AVX2 CPU (BENCHMARKS.md, "FID Inception on a CPU").
CPU_COMPILER_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type": ""}


@functools.cache
def compiler_options(backend: str) -> dict[str, Any]:
    """:data:`CPU_COMPILER_OPTIONS` on a CPU when this XLA knows them; none elsewhere."""
    if backend != "cpu":
        return {}
    try:  # an XLA without the option refuses it: compile as it would by default
        jax.jit(lambda x: x + 1, compiler_options=CPU_COMPILER_OPTIONS).lower(np.float32(0)).compile()
    except Exception:  # the option's error type is XLA's, not a stable one
        return {}
    return dict(CPU_COMPILER_OPTIONS)


def inception_apply_fn(variables: Any, *, model: FIDInceptionV3 | None = None, resize: str = "pytorch_fid"):
    """Returns jit-compiled ``f(uint8 (B,H,W,3)) -> {'pool'[, 'logits', 'logits_unbiased']}``.

    Decoding-free from there on: the cast, the resize to 299 and the normalisation run inside the
    compiled program. ``variables``: from ``gan.metrics.inception_formats.load_inception_weights``
    (folded BatchNorm). ``resize``: one of :data:`RESIZE_MODES` (see :func:`preprocess`). Without
    ``model`` the network has the logits layer exactly when ``variables`` do.
    """
    if resize not in RESIZE_MODES:
        raise ValueError(f"resize: must be one of {RESIZE_MODES}, got {resize!r}")
    model = model or FIDInceptionV3(num_classes=NUM_CLASSES if has_logits(variables) else 0)

    # Variables are an argument, not a closure: closed-over arrays would be baked into the
    # compiled program as ~95 MB of constants.
    @functools.partial(jax.jit, compiler_options=compiler_options(jax.default_backend()))
    def apply(variables: Any, images: jax.Array) -> dict[str, jax.Array]:
        return model.apply(variables, preprocess(images, resize=resize))

    return functools.partial(apply, variables)
