"""flax.linen modules: :class:`SymPadConv` and the :func:`conv` factory every model uses."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn
from flax.linen.dtypes import promote_dtype

from sympad._flax_shared import check_positive, flatten_batch, kernel_tuple, restore_batch
from sympad.kinds import parse_kind
from sympad.ops import Implementation, sym_pad_conv

__all__ = ["SymPadConv", "conv"]


class SymPadConv(nn.Module):
    """Drop-in for ``flax.linen.Conv`` with symmetric padding (C2sp, C4sp).

    Parameters are ``kernel`` of shape ``(*kernel_size, C // feature_group_count,
    features)`` and ``bias`` of shape ``(features,)``, exactly as in
    ``nn.Conv``, so weights move unchanged between a C2 and a C2sp model. For
    odd kernels at stride 1 the result equals ``nn.Conv(..., padding='SAME')``;
    strided outputs are the stride-1 output sampled at ``0, s, 2s, ...`` (XLA's
    strided 'SAME' may pad less and sample other positions).

    Attributes:
      features: number of output channels ``F``.
      kernel_size: kernel extent per spatial axis; an int means 1D (as in flax).
      strides: int or one per spatial axis; output size is ``ceil(in / stride)``.
      kernel_dilation: int or one per spatial axis.
      feature_group_count: grouped convolution (``C`` for depthwise).
      use_bias: add a learned bias.
      dtype: computation dtype (default: inferred from inputs and params).
      param_dtype: parameter dtype.
      precision: passed to ``lax.conv_general_dilated``.
      kernel_init: kernel initializer (flax's default: LeCun normal).
      bias_init: bias initializer.
      implementation: formulation of the op, one of :data:`sympad.IMPLEMENTATIONS`.

    Input ``(*batch, *spatial, C)``; output ``(*batch, *ceil(spatial / strides), F)``.

    Example:

    >>> import jax, jax.numpy as jnp
    >>> from sympad import linen as splinen
    >>> layer = splinen.SymPadConv(features=32, kernel_size=(2, 2))
    >>> x = jnp.ones((4, 8, 8, 16))
    >>> variables = layer.init(jax.random.key(0), x)
    >>> jax.tree.map(jnp.shape, variables["params"])
    {'bias': (32,), 'kernel': (2, 2, 16, 32)}
    >>> layer.apply(variables, x).shape
    (4, 8, 8, 32)
    >>> splinen.SymPadConv(32, (2, 2), strides=2).apply(variables, x).shape
    (4, 4, 4, 32)
    """

    features: int
    kernel_size: int | Sequence[int]
    strides: int | Sequence[int] = 1
    kernel_dilation: int | Sequence[int] = 1
    feature_group_count: int = 1
    use_bias: bool = True
    dtype: Any = None
    param_dtype: Any = jnp.float32
    precision: Any = None
    kernel_init: nn.initializers.Initializer = nn.initializers.lecun_normal()
    bias_init: nn.initializers.Initializer = nn.initializers.zeros_init()
    implementation: Implementation = "auto"

    @nn.compact
    def __call__(self, inputs: jax.Array) -> jax.Array:
        kernel_size = kernel_tuple(self.kernel_size)
        check_positive("features", self.features)
        inputs, batch_shape = flatten_batch(jnp.asarray(inputs), len(kernel_size))
        in_features = inputs.shape[-1]
        if in_features % self.feature_group_count:
            raise ValueError(
                f"input channels ({in_features}) must be divisible by feature_group_count ({self.feature_group_count})"
            )
        kernel = self.param(
            "kernel",
            self.kernel_init,
            kernel_size + (in_features // self.feature_group_count, self.features),
            self.param_dtype,
        )
        bias = self.param("bias", self.bias_init, (self.features,), self.param_dtype) if self.use_bias else None
        inputs, kernel, bias = promote_dtype(inputs, kernel, bias, dtype=self.dtype)
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


def conv(kind: str, features: int, *, spatial_dims: int = 2, **kwargs: Any) -> nn.Module:
    """The one factory for spatial convolutions, in the paper's notation.

    Args:
      kind: ``'C3'`` (3x3 'SAME'), ``'C2'``/``'C4'`` (even kernel, XLA's
        asymmetric 'SAME': the extra zero goes bottom/right), ``'C2sp'``/
        ``'C4sp'`` (symmetric padding); generally ``'C<k>'`` or ``'C<k>sp'``.
      features: output channels.
      spatial_dims: number of spatial axes (2 for images).
      **kwargs: passed to the module (strides, use_bias, kernel_init, dtype,
        feature_group_count, name, ...).

    Returns:
      ``nn.Conv`` for ``C<k>`` and :class:`SymPadConv` for ``C<k>sp``, both
      with parameters ``kernel`` ``(k,)*spatial_dims + (C/groups, features)``
      and ``bias``.

    Raises:
      ValueError: for an unknown kind (the message gives the valid form).

    Example:

    >>> import jax, jax.numpy as jnp
    >>> from sympad import linen as splinen
    >>> type(splinen.conv("C2sp", 32)).__name__, type(splinen.conv("C3", 32)).__name__
    ('SymPadConv', 'Conv')
    >>> layer = splinen.conv("C4sp", 8, spatial_dims=1, use_bias=False)
    >>> x = jnp.ones((2, 10, 3))   # (N, W, C)
    >>> layer.init(jax.random.key(0), x)["params"]["kernel"].shape
    (4, 3, 8)
    """
    parsed = parse_kind(kind)
    check_positive("features", features)
    check_positive("spatial_dims", spatial_dims)
    kernel_size = (parsed.size,) * spatial_dims
    if parsed.symmetric:
        return SymPadConv(features, kernel_size, **kwargs)
    if "padding" in kwargs:
        raise ValueError(f"conv(kind={kind!r}) fixes padding='SAME'; pass no padding argument")
    return nn.Conv(features, kernel_size, padding="SAME", **kwargs)
