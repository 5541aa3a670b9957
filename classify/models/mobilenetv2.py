"""MobileNet-v2 (Sandler et al. 2018), Table 3's compact baseline, with any kind for its depthwise convs.

Standard definition (post-activation, ReLU6, linear bottlenecks): stem 3x3
stride-2 conv to ``32 * width`` channels; inverted residual stages (t, c, n, s)
= (1,16,1,1), (6,24,2,2), (6,32,3,2), (6,64,4,2), (6,96,3,1), (6,160,3,2),
(6,320,1,1); 1x1 conv to ``1280 * max(1, width)``; global average pool;
dropout 0.2; linear. Channel counts are rounded to multiples of 8 as in the
reference implementation. Width 1.0 has 3.50M parameters, 1.4 has 6.11M.

Choices: ``kernel`` is the kind of the depthwise convs (C3 in the original);
``stem_kernel`` (default ``'C3'``) the stem's. A stride-2 depthwise conv
downsamples per ``downsample`` (see :mod:`classify.models.blocks`).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

from classify.models.blocks import batch_norm, conv1x1, spatial_conv

__all__ = ["STAGES", "MobileNetV2", "make_divisible", "mobilenetv2"]

#: Sandler et al.'s stages: (expansion t, output channels c, repeats n, first stride s).
STAGES = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))


def make_divisible(value: float, divisor: int = 8) -> int:
    """Rounds to the nearest multiple of ``divisor`` without going 10% below ``value`` (reference impl.)."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


class MobileNetV2(nn.Module):
    """MobileNet-v2.

    Attributes:
      width: width multiplier (1.0, 1.4 in Table 3).
      stages: (t, c, n, s) rows; :data:`STAGES` by default.
      kernel: kind of the depthwise convs.
      stem_kernel: kind of the stride-2 stem conv.
      downsample: ``'auto'`` | ``'pool'`` | ``'stride'`` for stride-2 depthwise convs.
      dropout_rate: dropout before the classifier (needs a ``'dropout'`` rng in training).
      num_classes: classifier outputs.
      dtype: computation dtype.

    Input ``(N, H, W, 3)``; output logits ``(N, num_classes)`` float32.
    """

    width: float = 1.0
    stages: Sequence[tuple[int, int, int, int]] = STAGES
    kernel: str = "C3"
    stem_kernel: str = "C3"
    downsample: str = "auto"
    dropout_rate: float = 0.2
    num_classes: int = 1000
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = True) -> jax.Array:
        bn = functools.partial(batch_norm, train, dtype=self.dtype)
        x = jnp.asarray(x, self.dtype)
        channels = make_divisible(32 * self.width)
        x = spatial_conv(
            x, self.stem_kernel, channels, strides=2, downsample=self.downsample, dtype=self.dtype, name="stem"
        )
        x = nn.relu6(bn(name="bn_stem")(x))
        index = 0
        for t, c, n, s in self.stages:
            out = make_divisible(c * self.width)
            for i in range(n):
                index += 1
                stride = s if i == 0 else 1
                y = x
                hidden = x.shape[-1] * t
                if t != 1:
                    y = conv1x1(hidden, dtype=self.dtype, name=f"block{index}_expand")(y)
                    y = nn.relu6(bn(name=f"block{index}_bn1")(y))
                y = spatial_conv(
                    y,
                    self.kernel,
                    hidden,
                    strides=stride,
                    downsample=self.downsample,
                    feature_group_count=hidden,
                    dtype=self.dtype,
                    name=f"block{index}_depthwise",
                )
                y = nn.relu6(bn(name=f"block{index}_bn2")(y))
                y = conv1x1(out, dtype=self.dtype, name=f"block{index}_project")(y)
                y = bn(name=f"block{index}_bn3")(y)  # linear bottleneck: no activation
                x = x + y if stride == 1 and x.shape[-1] == out else y
        last = make_divisible(1280 * max(1.0, self.width))
        x = conv1x1(last, dtype=self.dtype, name="head_conv")(x)
        x = nn.relu6(bn(name="bn_head")(x))
        x = jnp.mean(x, axis=(1, 2))
        x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
        x = nn.Dense(self.num_classes, dtype=self.dtype, name="classifier")(x)
        return jnp.asarray(x, jnp.float32)


def mobilenetv2(*, width: float = 1.0, kernel: str = "C3", **kwargs: Any) -> MobileNetV2:
    """MobileNet-v2 at ``width`` (Table 3: 1.0 → 3.5M, 1.4 → 6.1M parameters)."""
    if width <= 0:
        raise ValueError(f"width must be positive, got {width!r}")
    return MobileNetV2(width=width, kernel=kernel, **kwargs)
