"""flax.nnx module: :class:`SymPadConv`, a drop-in for ``flax.nnx.Conv``, and a :func:`conv` factory."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from flax.nnx.nn.dtypes import promote_dtype

from sympad._flax_shared import check_positive, flatten_batch, kernel_tuple, restore_batch
from sympad.kinds import parse_kind
from sympad.ops import Implementation, sym_pad_conv

__all__ = ["SymPadConv", "conv"]


class SymPadConv(nnx.Module):
    """Drop-in for ``flax.nnx.Conv`` with symmetric padding (C2sp, C4sp).

    Holds ``kernel`` (``nnx.Param`` of shape ``(*kernel_size, in_features //
    feature_group_count, out_features)``) and ``bias`` (``(out_features,)`` or
    None), the same names and shapes as ``nnx.Conv``.

    Args:
      in_features: input channels ``C``.
      out_features: output channels ``F``.
      kernel_size: kernel extent per spatial axis; an int means 1D (as in flax).
      strides: int or one per spatial axis; output size is ``ceil(in / stride)``.
      kernel_dilation: int or one per spatial axis.
      feature_group_count: grouped convolution (``C`` for depthwise).
      use_bias: add a learned bias.
      dtype: computation dtype (default: inferred).
      param_dtype: parameter dtype.
      precision: passed to ``lax.conv_general_dilated``.
      kernel_init: kernel initializer (flax's default: LeCun normal).
      bias_init: bias initializer.
      implementation: formulation of the op, one of :data:`sympad.IMPLEMENTATIONS`.
      rngs: ``nnx.Rngs`` for parameter initialization.

    Example:

    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> from sympad import nnx as spnnx
    >>> layer = spnnx.SymPadConv(16, 32, (2, 2), rngs=nnx.Rngs(0))
    >>> layer.kernel.shape, layer.bias.shape
    ((2, 2, 16, 32), (32,))
    >>> layer(jnp.ones((4, 8, 8, 16))).shape
    (4, 8, 8, 32)
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        kernel_size: int | Sequence[int],
        strides: int | Sequence[int] = 1,
        *,
        kernel_dilation: int | Sequence[int] = 1,
        feature_group_count: int = 1,
        use_bias: bool = True,
        dtype: Any = None,
        param_dtype: Any = jnp.float32,
        precision: Any = None,
        kernel_init: nnx.initializers.Initializer = nnx.initializers.lecun_normal(),
        bias_init: nnx.initializers.Initializer = nnx.initializers.zeros_init(),
        implementation: Implementation = "auto",
        rngs: nnx.Rngs,
    ):
        check_positive("in_features", in_features)
        check_positive("out_features", out_features)
        if not isinstance(rngs, nnx.Rngs):
            raise ValueError(f"rngs must be an nnx.Rngs (e.g. nnx.Rngs(0)), got {rngs!r}")
        if in_features % feature_group_count:
            raise ValueError(
                f"in_features ({in_features}) must be divisible by feature_group_count ({feature_group_count})"
            )
        self.kernel_size = kernel_tuple(kernel_size)
        self.in_features = in_features
        self.out_features = out_features
        self.strides = strides
        self.kernel_dilation = kernel_dilation
        self.feature_group_count = feature_group_count
        self.dtype = dtype
        self.precision = precision
        self.implementation = implementation
        shape = self.kernel_size + (in_features // feature_group_count, out_features)
        self.kernel = nnx.Param(kernel_init(rngs.params(), shape, param_dtype))
        self.bias = nnx.Param(bias_init(rngs.params(), (out_features,), param_dtype)) if use_bias else None

    def __call__(self, inputs: jax.Array) -> jax.Array:
        """Input ``(*batch, *spatial, C)``; output ``(*batch, *ceil(spatial / strides), F)``."""
        inputs, batch_shape = flatten_batch(jnp.asarray(inputs), len(self.kernel_size))
        if inputs.shape[-1] != self.in_features:
            raise ValueError(f"inputs have {inputs.shape[-1]} channels, the layer expects in_features={self.in_features}")
        bias = self.bias[...] if self.bias is not None else None
        inputs, kernel, bias = promote_dtype((inputs, self.kernel[...], bias), dtype=self.dtype)
        y = sym_pad_conv(
            inputs,
            kernel,
            self.strides,
            kernel_dilation=self.kernel_dilation,
            feature_group_count=self.feature_group_count,
            precision=self.precision,
            implementation=self.implementation,
        )
        if bias is not None:
            y = y + bias
        return restore_batch(y, batch_shape)


def conv(kind: str, in_features: int, out_features: int, *, spatial_dims: int = 2, rngs: nnx.Rngs, **kwargs: Any) -> nnx.Module:
    """nnx counterpart of :func:`sympad.linen.conv`: ``nnx.Conv`` for ``C<k>``, :class:`SymPadConv` for ``C<k>sp``.

    Args:
      kind: ``'C<k>'`` (``nnx.Conv`` with ``padding='SAME'``) or ``'C<k>sp'``
        (:class:`SymPadConv`), e.g. ``'C3'``, ``'C2'``, ``'C2sp'``, ``'C4sp'``.
      in_features: input channels.
      out_features: output channels.
      spatial_dims: number of spatial axes (2 for images).
      rngs: ``nnx.Rngs`` for parameter initialization.
      **kwargs: passed to the module (strides, use_bias, feature_group_count, ...).

    Raises:
      ValueError: for an unknown kind (the message gives the valid form).

    Example:

    >>> from flax import nnx
    >>> from sympad import nnx as spnnx
    >>> layer = spnnx.conv("C2sp", 16, 32, rngs=nnx.Rngs(0))
    >>> type(layer).__name__, layer.kernel.shape
    ('SymPadConv', (2, 2, 16, 32))
    >>> type(spnnx.conv("C2", 16, 32, rngs=nnx.Rngs(0))).__name__
    'Conv'
    """
    parsed = parse_kind(kind)
    check_positive("in_features", in_features)
    check_positive("out_features", out_features)
    check_positive("spatial_dims", spatial_dims)
    kernel_size = (parsed.size,) * spatial_dims
    if parsed.symmetric:
        return SymPadConv(in_features, out_features, kernel_size, rngs=rngs, **kwargs)
    if "padding" in kwargs:
        raise ValueError(f"conv(kind={kind!r}) fixes padding='SAME'; pass no padding argument")
    return nnx.Conv(in_features, out_features, kernel_size, padding="SAME", rngs=rngs, **kwargs)
