"""Building blocks shared by the classification models (flax.linen, channels-last).

Every spatial convolution goes through :func:`sympad.linen.conv`, so one
``kind`` string ('C3', 'C2', 'C2sp', 'C4', 'C4sp') switches a whole model.
1x1 convolutions are not spatial and use ``nn.Conv`` directly.

Choices where the paper is silent (each is a field of the modules below):

* ``downsample``: where a stride-2 block downsamples. ``'stride'`` is the usual
  stride-2 spatial conv; ``'pool'`` is 2x2 average pooling followed by a
  stride-1 spatial conv (what the authors' released ``resnet50_c2sp.py`` does
  for C2sp); ``'auto'`` (default) picks ``'pool'`` for even kernels and
  ``'stride'`` for odd ones. A stride-2 2x2 (or 4x4) conv on an even-sized map
  needs no odd padding at all, so C2 and C2sp would be the same layer there;
  pooling first keeps the conv stride-1 and symmetric-padded.
* Shortcuts: identity when shape is kept; otherwise the projection follows the
  authors' code ("Bag of Tricks" ResNet-D): 2x2 average pooling for the stride,
  then a 1x1 conv for the channels, applied to the pre-activated input.
* Residual blocks are pre-activation (He et al. 2016, "Identity mappings"):
  BN-ReLU-conv, as in the authors' code.
* Depthwise convolutions are named ``depthwise*``; the optimizer excludes them
  from weight decay by that name (paper 4.5).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

import sympad.linen
from sympad.kinds import parse_kind

__all__ = [
    "DOWNSAMPLE_MODES",
    "BasicBlock",
    "BottleneckBlock",
    "InvertedBlock",
    "SepBlock",
    "ShiftBlock",
    "batch_norm",
    "conv1x1",
    "head",
    "resolve_downsample",
    "shift2d",
    "spatial_conv",
]

DOWNSAMPLE_MODES: tuple[str, ...] = ("auto", "pool", "stride")
ModuleDef = Any

# He et al. (2015) init (fan_out, as torchvision's ResNets): keeps activations O(1) with ReLU.
conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def resolve_downsample(kind: str, downsample: str) -> str:
    """Returns ``'pool'`` or ``'stride'`` for a spatial conv of ``kind``.

    Raises:
      ValueError: if ``downsample`` is not one of :data:`DOWNSAMPLE_MODES`.
    """
    if downsample not in DOWNSAMPLE_MODES:
        raise ValueError(f"downsample must be one of {DOWNSAMPLE_MODES}, got {downsample!r}")
    if downsample != "auto":
        return downsample
    return "pool" if parse_kind(kind).size % 2 == 0 else "stride"


def avg_pool2(x: jax.Array) -> jax.Array:
    """2x2 average pooling with stride 2; output ``ceil(in / 2)`` like a stride-2 'SAME' conv."""
    return nn.avg_pool(x, (2, 2), strides=(2, 2), padding="SAME")


def spatial_conv(
    x: jax.Array,
    kind: str,
    features: int,
    *,
    strides: int = 1,
    downsample: str = "auto",
    feature_group_count: int = 1,
    dtype: Any = jnp.float32,
    name: str,
) -> jax.Array:
    """A bias-free k x k conv of ``kind`` through the factory, downsampling per ``downsample``.

    Must be called inside a compact ``__call__`` (the conv is created there with ``name``).

    Args:
      x: ``(N, H, W, C)``.
      kind: kernel kind, e.g. ``'C2sp'``.
      features: output channels ``F``.
      strides: 1 or 2.
      downsample: ``'auto'`` | ``'pool'`` | ``'stride'`` (see module docstring).
      feature_group_count: ``C`` for a depthwise conv.
      dtype: computation dtype.
      name: submodule name.

    Returns:
      ``(N, ceil(H / strides), ceil(W / strides), F)``.
    """
    if strides not in (1, 2):
        raise ValueError(f"strides must be 1 or 2, got {strides!r}")
    if strides == 2 and resolve_downsample(kind, downsample) == "pool":
        x = avg_pool2(x)
        strides = 1
    conv = sympad.linen.conv(
        kind,
        features,
        strides=strides,
        use_bias=False,
        feature_group_count=feature_group_count,
        kernel_init=conv_init,
        dtype=dtype,
        name=name,
    )
    return conv(x)


def conv1x1(features: int, *, dtype: Any = jnp.float32, name: str) -> nn.Conv:
    """Pointwise conv (not spatial, so plain ``nn.Conv``), bias-free: a BN follows it."""
    return nn.Conv(features, (1, 1), use_bias=False, kernel_init=conv_init, dtype=dtype, name=name)


def batch_norm(train: bool, *, dtype: Any = jnp.float32, name: str) -> nn.BatchNorm:
    """BatchNorm with PyTorch-style constants (momentum 0.9, eps 1e-5), as in most CIFAR ResNets."""
    return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, dtype=dtype, name=name)


def shift2d(x: jax.Array, *, kernel_size: int = 3) -> jax.Array:
    """ShiftNet's parameter-free grouped shift (Wu et al. 2017), zero fill.

    The channels are split into ``kernel_size**2`` contiguous groups (sizes as
    even as possible, earlier groups larger) and group ``g`` is shifted by the
    ``g``-th offset of the ``kernel_size x kernel_size`` window (row-major,
    centre included), so ``y[n, i, j, c] = x[n, i + dy_g, j + dx_g, c]``.

    Args:
      x: ``(N, H, W, C)``.
      kernel_size: odd window size.

    Returns:
      ``(N, H, W, C)``.
    """
    if kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"kernel_size must be a positive odd int, got {kernel_size!r}")
    r = kernel_size // 2
    _, h, w, c = x.shape
    groups = kernel_size * kernel_size
    sizes = [c // groups + (1 if g < c % groups else 0) for g in range(groups)]
    bounds = np.concatenate([[0], np.cumsum(sizes)])
    xp = jnp.pad(x, ((0, 0), (r, r), (r, r), (0, 0)))
    parts = []
    for g in range(groups):
        if sizes[g] == 0:
            continue
        dy, dx = divmod(g, kernel_size)
        parts.append(xp[:, dy : dy + h, dx : dx + w, bounds[g] : bounds[g + 1]])
    return jnp.concatenate(parts, axis=-1)


class _ResidualBase(nn.Module):
    """Fields shared by the residual blocks. Call: ``(x (N,H,W,C), train) -> (N,H',W',features)``."""

    features: int
    strides: int = 1
    kind: str = "C3"
    downsample: str = "auto"
    dtype: Any = jnp.float32

    def preact_and_shortcut(self, x: jax.Array, train: bool) -> tuple[jax.Array, jax.Array]:
        """Pre-activation BN-ReLU and the (possibly projected) shortcut."""
        y = nn.relu(batch_norm(train, dtype=self.dtype, name="bn0")(x))
        shortcut = x
        if self.strides != 1 or x.shape[-1] != self.features:
            # Projection after the first BN-ReLU, average pool for the stride (authors' code, ResNet-D).
            shortcut = y
            if self.strides != 1:
                shortcut = avg_pool2(shortcut)
            if x.shape[-1] != self.features:
                shortcut = conv1x1(self.features, dtype=self.dtype, name="shortcut")(shortcut)
        return y, shortcut

    def conv(self, x: jax.Array, features: int, *, strides: int = 1, groups: int = 1, name: str) -> jax.Array:
        return spatial_conv(
            x,
            self.kind,
            features,
            strides=strides,
            downsample=self.downsample,
            feature_group_count=groups,
            dtype=self.dtype,
            name=name,
        )

    def bn_relu(self, x: jax.Array, train: bool, name: str) -> jax.Array:
        return nn.relu(batch_norm(train, dtype=self.dtype, name=name)(x))


class BasicBlock(_ResidualBase):
    """Two k x k convs, expansion 1-1-1 (He et al. 2016; Table 1's 'C2sp' row with kind C2sp).

    Parameters ~ ``2 k^2 n^2`` for ``n`` channels (``8 n^2`` for C2sp).
    """

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = True) -> jax.Array:
        y, shortcut = self.preact_and_shortcut(x, train)
        y = self.conv(y, self.features, strides=self.strides, name="conv1")
        y = self.bn_relu(y, train, "bn1")
        y = self.conv(y, self.features, name="conv2")
        return y + shortcut


class BottleneckBlock(_ResidualBase):
    """1x1 - k x k - 1x1 bottleneck (ResNet-50).

    ``features`` is the output width, the inner one is ``features / expansion``.
    """

    expansion: int = 4

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = True) -> jax.Array:
        inner = self.features // self.expansion
        y, shortcut = self.preact_and_shortcut(x, train)
        y = conv1x1(inner, dtype=self.dtype, name="conv1")(y)
        y = self.bn_relu(y, train, "bn1")
        # Stride on the spatial conv (fb.resnet.torch / ResNet v1.5).
        y = self.conv(y, inner, strides=self.strides, name="conv2")
        y = self.bn_relu(y, train, "bn2")
        return conv1x1(self.features, dtype=self.dtype, name="conv3")(y) + shortcut


class ShiftBlock(_ResidualBase):
    """ShiftNet block (Wu et al. 2017), expansion 1-3-1: 1x1 expand, 3x3 shift, 1x1 project.

    Parameters ~ ``6 n^2``. The hidden width is ``expansion * features`` (the
    output width, so a downsampling block expands to ``3 * 2 n``) and a
    downsampling block reduces its input first (2x2 average pool for
    ``'auto'``/``'pool'``, strided subsampling for ``'stride'``), then expands:
    this reproduces both Table 1 columns for Shift (0.49/1.48/2.97M parameters,
    70.0/213.4/428.3M multiply-adds). The shift has no parameters and is not a
    convolution, so ``kind`` does not apply to it (it still sets the model's
    stem if asked to).
    """

    expansion: int = 3
    shift_size: int = 3

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = True) -> jax.Array:
        y, shortcut = self.preact_and_shortcut(x, train)
        if self.strides == 2:
            resolve_downsample("C3", self.downsample)  # validates the name
            y = y[:, ::2, ::2] if self.downsample == "stride" else avg_pool2(y)
        y = conv1x1(self.expansion * self.features, dtype=self.dtype, name="expand")(y)
        y = self.bn_relu(y, train, "bn1")
        y = shift2d(y, kernel_size=self.shift_size)
        return conv1x1(self.features, dtype=self.dtype, name="project")(y) + shortcut


class InvertedBlock(_ResidualBase):
    """Inverted bottleneck (Sandler et al. 2018), expansion 1-6-1: 1x1 expand, k x k depthwise, 1x1 project.

    Parameters ~ ``12 n^2 + 6 k^2 n``. Pre-activation like the other Table-1
    blocks, so the comparison is about the residual branch only.
    """

    expansion: int = 6

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = True) -> jax.Array:
        hidden = self.expansion * x.shape[-1]
        y, shortcut = self.preact_and_shortcut(x, train)
        y = conv1x1(hidden, dtype=self.dtype, name="expand")(y)
        y = self.bn_relu(y, train, "bn1")
        y = self.conv(y, hidden, strides=self.strides, groups=hidden, name="depthwise")
        y = self.bn_relu(y, train, "bn2")
        return conv1x1(self.features, dtype=self.dtype, name="project")(y) + shortcut


class SepBlock(_ResidualBase):
    """Two depthwise-separable convs (Chollet 2017): (k x k depthwise, 1x1) twice, expansion 2-2-2.

    Parameters ~ ``2 (n^2 + k^2 n)`` for ``n`` channels; Table 1 doubles the
    width relative to the C2sp model to match it. No BN between a depthwise conv
    and its pointwise conv (Xception).
    """

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = True) -> jax.Array:
        y, shortcut = self.preact_and_shortcut(x, train)
        c = x.shape[-1]
        y = self.conv(y, c, strides=self.strides, groups=c, name="depthwise1")
        y = conv1x1(self.features, dtype=self.dtype, name="pointwise1")(y)
        y = self.bn_relu(y, train, "bn1")
        y = self.conv(y, self.features, groups=self.features, name="depthwise2")
        return conv1x1(self.features, dtype=self.dtype, name="pointwise2")(y) + shortcut


def head(x: jax.Array, train: bool, *, num_classes: int, dtype: Any, preact: bool = True) -> jax.Array:
    """Final BN-ReLU (pre-activation nets), global average pool, linear classifier → float32 logits.

    Must be called inside a compact ``__call__``.
    """
    if preact:
        x = nn.relu(batch_norm(train, dtype=dtype, name="bn_final")(x))
    x = jnp.mean(x, axis=(1, 2))
    x = nn.Dense(num_classes, dtype=dtype, name="classifier")(x)
    return jnp.asarray(x, jnp.float32)

