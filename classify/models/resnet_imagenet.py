"""ResNet-50 for ImageNet (Table 3) with any kind for its k x k convs, full and 0.5x width.

Pre-activation bottleneck ResNet-50 (He et al. 2016) as in the authors' code:
stem 7x7 stride-2 conv with 64 channels, BN-ReLU, 3x3 stride-2 max pool; four
stages of 3/4/6/3 :class:`~classify.models.blocks.BottleneckBlock`\\ s with
output widths ``width * (256, 512, 1024, 2048)`` (inner widths a quarter of
that); head BN-ReLU, global average pool, linear.

Choices where the paper is silent (all fields):

* ``stem_kernel='C7'``: the 7x7 stem is not a 3x3 conv, so it keeps its kind
  (the authors' ``resnet50_c2sp.py`` does the same); only the 3x3 convs change.
* ``width`` scales the stage widths only; the stem stays at 64 channels, as in
  the authors' 0.5x configuration (outputs 128/256/512/1024).
* ``downsample``: ``'auto'`` (2x2 average pool + stride-1 conv for even kinds,
  stride-2 conv for odd ones); the projection shortcut average-pools then
  applies a 1x1 conv (ResNet-D, as in the authors' code). Neither changes the
  parameter count.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

from classify.models.blocks import BottleneckBlock, batch_norm, head, spatial_conv

__all__ = ["ImageNetResNet", "ResNet50", "resnet_imagenet"]


class ImageNetResNet(nn.Module):
    """Pre-activation bottleneck ResNet for 224x224 inputs.

    Attributes:
      stage_sizes: blocks per stage.
      width: multiplier of the stage widths (1.0 or 0.5 in Table 3).
      kernel: kind of the spatial conv in each bottleneck.
      stem_kernel: kind of the stride-2 stem conv.
      stem_width: stem channels.
      downsample: ``'auto'`` | ``'pool'`` | ``'stride'``.
      num_classes: classifier outputs.
      dtype: computation dtype.

    Input ``(N, H, W, 3)``; output logits ``(N, num_classes)`` float32.
    """

    stage_sizes: Sequence[int] = (3, 4, 6, 3)
    width: float = 1.0
    kernel: str = "C3"
    stem_kernel: str = "C7"
    stem_width: int = 64
    downsample: str = "auto"
    num_classes: int = 1000
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = True) -> jax.Array:
        x = jnp.asarray(x, self.dtype)
        x = spatial_conv(
            x, self.stem_kernel, self.stem_width, strides=2, downsample="stride", dtype=self.dtype, name="stem"
        )
        x = nn.relu(batch_norm(train, dtype=self.dtype, name="bn_stem")(x))
        x = nn.max_pool(x, (3, 3), strides=(2, 2), padding="SAME")
        for stage, num_blocks in enumerate(self.stage_sizes):
            for i in range(num_blocks):
                x = BottleneckBlock(
                    features=int(round(256 * 2**stage * self.width)),
                    strides=2 if stage > 0 and i == 0 else 1,
                    kind=self.kernel,
                    downsample=self.downsample,
                    dtype=self.dtype,
                    name=f"stage{stage + 1}_block{i + 1}",
                )(x, train)
        return head(x, train, num_classes=self.num_classes, dtype=self.dtype)


ResNet50 = functools.partial(ImageNetResNet, stage_sizes=(3, 4, 6, 3))


def resnet_imagenet(*, kernel: str = "C3", width: float = 1.0, **kwargs: Any) -> ImageNetResNet:
    """ResNet-50 at ``width`` 1.0 or 0.5 (Table 3)."""
    if width <= 0:
        raise ValueError(f"width must be positive, got {width!r}")
    return ResNet50(kernel=kernel, width=width, **kwargs)
