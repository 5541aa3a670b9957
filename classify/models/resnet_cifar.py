"""ResNets for 32x32 images: the paper's Figure 4 (left) backbone and the Table 1 block comparison.

:class:`CifarResNet` is a pre-activation ResNet (He et al. 2016) with three
stages of widths ``width * (1, 2, 4)`` at 32/16/8 px. With :class:`BasicBlock`
(no bottleneck) and ``width=16`` it is the depth ``6n + 2`` ResNet of
section 4.1. Table 1 (section 4.2) keeps the backbone and swaps the block.

Choices where the paper is silent (all fields):

* ``stem_kernel``: kind of the stem conv, ``'C3'`` by default whatever
  ``kernel`` is (``None`` means "same as ``kernel``"). Evidence: with a C3
  stem the multiply-adds of the convolutions equal Table 1's MFLOPs for all
  twelve models (C2sp 73.2/224.2/450.7, Sep 73.6/218.0/434.4, Invert
  76.7/240.1/485.1, Shift 70.0/213.4/428.3, to 0.1M); a C2sp stem would give
  0.5M less for C2sp. The authors' code also hard-codes a 3x3 stem.
* ``downsample``: see :mod:`classify.models.blocks` (``'auto'``: 2x2 average
  pool then a stride-1 conv for even kernels, stride-2 conv for odd ones).
* Table 1 widths (stage-1 width ``n``; blocks per stage ``(depth - 2) / 6``,
  two thirds of that for the inverted bottleneck), chosen so parameter counts
  are within 5% of Table 1 at depths 20, 56 and 110 with 100 classes — see
  :data:`TABLE1_WIDTHS`.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

from classify.models.blocks import (
    BasicBlock,
    InvertedBlock,
    ModuleDef,
    SepBlock,
    ShiftBlock,
    head,
    spatial_conv,
)

__all__ = [
    "BLOCKS",
    "TABLE1_DEFAULT_KERNEL",
    "TABLE1_WIDTHS",
    "CifarResNet",
    "ResNet20",
    "ResNet56",
    "ResNet110",
    "blocks_cifar",
    "blocks_per_stage",
    "resnet_cifar",
]


class CifarResNet(nn.Module):
    """Pre-activation ResNet for 32x32 inputs.

    Attributes:
      stage_sizes: blocks per stage (three stages; the first block of stages 2
        and 3 downsamples by 2).
      block_cls: residual block (see :mod:`classify.models.blocks`).
      width: channels of stage 1 (stages: ``width``, ``2 width``, ``4 width``).
      kernel: kind of every spatial conv, e.g. ``'C2sp'``.
      stem_kernel: kind of the stem conv (``'C3'``); ``None`` means ``kernel``.
      downsample: ``'auto'`` | ``'pool'`` | ``'stride'``.
      num_classes: classifier outputs.
      dtype: computation dtype (parameters stay float32; logits are float32).

    Input ``(N, H, W, 3)`` float; output logits ``(N, num_classes)``.
    """

    stage_sizes: Sequence[int]
    block_cls: ModuleDef = BasicBlock
    width: int = 16
    kernel: str = "C3"
    stem_kernel: str | None = "C3"
    downsample: str = "auto"
    num_classes: int = 10
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = True) -> jax.Array:
        x = jnp.asarray(x, self.dtype)
        stem = self.stem_kernel or self.kernel
        x = spatial_conv(x, stem, self.width, dtype=self.dtype, name="stem")
        for stage, num_blocks in enumerate(self.stage_sizes):
            for i in range(num_blocks):
                x = self.block_cls(
                    features=self.width * 2**stage,
                    strides=2 if stage > 0 and i == 0 else 1,
                    kind=self.kernel,
                    downsample=self.downsample,
                    dtype=self.dtype,
                    name=f"stage{stage + 1}_block{i + 1}",
                )(x, train)
        return head(x, train, num_classes=self.num_classes, dtype=self.dtype)


def blocks_per_stage(depth: int) -> int:
    """``n`` of a depth ``6n + 2`` ResNet.

    Raises:
      ValueError: if ``depth`` is not ``6n + 2`` with ``n >= 1``.
    """
    if not isinstance(depth, int) or depth < 8 or (depth - 2) % 6:
        raise ValueError(f"depth must be 6n+2 with n >= 1 (8, 14, 20, 26, ..., 56, 110, 146), got {depth!r}")
    return (depth - 2) // 6


ResNet20 = functools.partial(CifarResNet, stage_sizes=(3, 3, 3))
ResNet56 = functools.partial(CifarResNet, stage_sizes=(9, 9, 9))
ResNet110 = functools.partial(CifarResNet, stage_sizes=(18, 18, 18))


def resnet_cifar(*, depth: int = 20, width: int = 16, kernel: str = "C3", **kwargs: Any) -> CifarResNet:
    """The section 4.1 ResNet without bottleneck: depth ``6n + 2``, widths 16/32/64 by default."""
    n = blocks_per_stage(depth)
    return CifarResNet(stage_sizes=(n, n, n), block_cls=BasicBlock, width=width, kernel=kernel, **kwargs)


#: Table 1 blocks: name → (block class, fraction of the blocks kept, expansion label).
BLOCKS: dict[str, tuple[ModuleDef, float, str]] = {
    "shift": (ShiftBlock, 1.0, "1-3-1"),
    "invert": (InvertedBlock, 2 / 3, "1-6-1"),
    "sep": (SepBlock, 1.0, "2-2-2"),
    "c2sp": (BasicBlock, 1.0, "1-1-1"),
}

#: Stage-1 width per Table 1 block. C2sp: 8n^2 per block; Shift 6n^2 → about n x sqrt(4/3) (36 also
#: splits 3 x 36 evenly into the 9 shift groups); Invert 12n^2 on 2/3 of the blocks → same n;
#: Sep 2-2-2 → about twice n (paper 4.2). All within 1% of Table 1 at depths 20/56/110.
TABLE1_WIDTHS: dict[str, int] = {"shift": 36, "invert": 32, "sep": 60, "c2sp": 32}

#: Kind of the spatial convs per Table 1 block (3x3 depthwise for Invert and Sep).
TABLE1_DEFAULT_KERNEL: dict[str, str] = {"shift": "C3", "invert": "C3", "sep": "C3", "c2sp": "C2sp"}


def blocks_cifar(
    *,
    block: str = "c2sp",
    depth: int = 20,
    width: int | None = None,
    kernel: str | None = None,
    num_classes: int = 100,
    **kwargs: Any,
) -> CifarResNet:
    """A Table 1 model: the CIFAR ResNet backbone with one of the compared blocks.

    Args:
      block: ``'shift'`` | ``'invert'`` | ``'sep'`` | ``'c2sp'``.
      depth: nominal depth ``6n + 2`` (20, 56, 110 in the paper); the inverted
        bottleneck keeps ``round(2n / 3)`` blocks per stage.
      width: stage-1 width; ``None`` uses :data:`TABLE1_WIDTHS`.
      kernel: spatial kind; ``None`` uses :data:`TABLE1_DEFAULT_KERNEL`.
      num_classes: 100 for CIFAR-100.
      **kwargs: other :class:`CifarResNet` fields.

    Raises:
      ValueError: for an unknown ``block`` or a bad ``depth``.
    """
    if block not in BLOCKS:
        raise ValueError(f"block must be one of {sorted(BLOCKS)}, got {block!r}")
    block_cls, fraction, _ = BLOCKS[block]
    n = max(1, round(blocks_per_stage(depth) * fraction))
    return CifarResNet(
        stage_sizes=(n, n, n),
        block_cls=block_cls,
        width=TABLE1_WIDTHS[block] if width is None else width,
        kernel=TABLE1_DEFAULT_KERNEL[block] if kernel is None else kernel,
        num_classes=num_classes,
        **kwargs,
    )
