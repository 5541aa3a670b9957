"""DenseNet-BC (Huang et al. 2017) with any kernel kind: CIFAR (Figure 4 middle, Table 2) and ImageNet (Table 3).

Dense layer: BN-ReLU-1x1 conv (``bottleneck * growth``)-BN-ReLU-k x k conv
(``growth``), concatenated to its input. Transition: BN-ReLU-1x1 conv
(``floor(compression * C)``)-2x2 average pool. Head: BN-ReLU, global average
pool, linear. Only the k x k convs of the dense layers change kind.

Choices where the paper is silent (all fields):

* CIFAR stem: a ``2 * growth``-channel conv of kind ``stem_kernel``, C3 by
  default (as in the authors' code and the CIFAR ResNets, whose Table 1 FLOPs
  only match with a C3 stem); ``None`` means ``kernel``. ImageNet stem: 7x7
  stride-2 conv (``stem_kernel='C7'``), BN-ReLU, 3x3 stride-2 max pool, as in
  Huang et al. and the authors' code.
* Wide-DenseNet "K = 48, L = 50" (Table 2): three blocks of 8 dense layers
  (``L = 6n + 2``: 48 convs in the blocks, the stem and the classifier), growth
  48, bottleneck 4, compression 0.5. With C2sp this has 3.00M parameters, the
  paper's text says "approximately 3M" and Table 2 lists 3.2M; 9 layers per
  block (the authors' released CIFAR config) would give 3.64M.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

from classify.models.blocks import batch_norm, conv1x1, head, spatial_conv

__all__ = [
    "DenseNet",
    "DenseNet121",
    "WideDenseNet",
    "densenet_cifar",
    "densenet_imagenet",
    "wide_densenet",
]


class DenseNet(nn.Module):
    """DenseNet-BC.

    Attributes:
      stage_sizes: dense layers per block.
      growth: growth rate ``K`` (channels each layer adds).
      kernel: kind of the k x k convs in the dense layers.
      stem: ``'cifar'`` (stride-1 conv, ``2 * growth`` channels) or
        ``'imagenet'`` (stride-2 conv with ``2 * growth`` channels, BN-ReLU,
        3x3 stride-2 max pool).
      stem_kernel: kind of the stem conv (``'C3'``); ``None`` means ``kernel``.
      bottleneck: width factor of the 1x1 bottleneck (4 in DenseNet-BC).
      compression: channel factor of the transitions (0.5 in DenseNet-BC).
      num_classes: classifier outputs.
      dtype: computation dtype.

    Input ``(N, H, W, 3)``; output logits ``(N, num_classes)`` float32.
    """

    stage_sizes: Sequence[int]
    growth: int = 12
    kernel: str = "C3"
    stem: str = "cifar"
    stem_kernel: str | None = "C3"
    bottleneck: int = 4
    compression: float = 0.5
    num_classes: int = 10
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = True) -> jax.Array:
        if self.stem not in ("cifar", "imagenet"):
            raise ValueError(f"stem must be 'cifar' or 'imagenet', got {self.stem!r}")
        x = jnp.asarray(x, self.dtype)
        stem_kind = self.stem_kernel or self.kernel
        if self.stem == "cifar":
            x = spatial_conv(x, stem_kind, 2 * self.growth, dtype=self.dtype, name="stem")
        else:
            x = spatial_conv(
                x, stem_kind, 2 * self.growth, strides=2, downsample="stride", dtype=self.dtype, name="stem"
            )
            x = nn.relu(batch_norm(train, dtype=self.dtype, name="bn_stem")(x))
            x = nn.max_pool(x, (3, 3), strides=(2, 2), padding="SAME")
        for block, num_layers in enumerate(self.stage_sizes):
            for i in range(num_layers):
                layer = f"block{block + 1}_layer{i + 1}"
                y = nn.relu(batch_norm(train, dtype=self.dtype, name=f"{layer}_bn1")(x))
                y = conv1x1(self.bottleneck * self.growth, dtype=self.dtype, name=f"{layer}_conv1")(y)
                y = nn.relu(batch_norm(train, dtype=self.dtype, name=f"{layer}_bn2")(y))
                y = spatial_conv(y, self.kernel, self.growth, dtype=self.dtype, name=f"{layer}_conv2")
                x = jnp.concatenate([x, y], axis=-1)
            if block < len(self.stage_sizes) - 1:
                transition = f"transition{block + 1}"
                x = nn.relu(batch_norm(train, dtype=self.dtype, name=f"{transition}_bn")(x))
                x = conv1x1(int(x.shape[-1] * self.compression), dtype=self.dtype, name=f"{transition}_conv")(x)
                x = nn.avg_pool(x, (2, 2), strides=(2, 2), padding="SAME")
        return head(x, train, num_classes=self.num_classes, dtype=self.dtype)


def _layers_per_block(depth: int) -> int:
    if not isinstance(depth, int) or depth < 10 or (depth - 4) % 6:
        raise ValueError(f"depth must be 6n+4 with n >= 1 (e.g. 22, 40, 58, 76, 94, 100, 112), got {depth!r}")
    return (depth - 4) // 6


def densenet_cifar(*, depth: int = 100, growth: int = 12, kernel: str = "C3", **kwargs: Any) -> DenseNet:
    """DenseNet-BC of depth ``6n + 4`` for 32x32 inputs (``n`` dense layers per block, 3 blocks)."""
    n = _layers_per_block(depth)
    return DenseNet(stage_sizes=(n, n, n), growth=growth, kernel=kernel, stem="cifar", **kwargs)


WideDenseNet = functools.partial(DenseNet, stage_sizes=(8, 8, 8), growth=48, stem="cifar")


def wide_densenet(*, kernel: str = "C2sp", layers_per_block: int = 8, growth: int = 48, **kwargs: Any) -> DenseNet:
    """Table 2's Wide-DenseNet (K = 48, L = 50; see the module docstring)."""
    return DenseNet(stage_sizes=(layers_per_block,) * 3, growth=growth, kernel=kernel, stem="cifar", **kwargs)


DenseNet121 = functools.partial(
    DenseNet, stage_sizes=(6, 12, 24, 16), growth=32, stem="imagenet", stem_kernel="C7", num_classes=1000
)


def densenet_imagenet(
    *, kernel: str = "C3", stem_kernel: str = "C7", num_classes: int = 1000, **kwargs: Any
) -> DenseNet:
    """DenseNet-121 (Table 3): growth 32, blocks 6/12/24/16, 7x7 stride-2 stem."""
    return DenseNet121(kernel=kernel, stem_kernel=stem_kernel, num_classes=num_classes, **kwargs)
