"""Equinox module: :class:`SymPadConv`, a drop-in for ``equinox.nn.Conv``, and a :func:`conv` factory.

Needs the optional ``equinox`` package (the project's ``equinox`` extra); the
rest of ``sympad`` does not import it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
from jax import lax

from sympad.kinds import parse_kind
from sympad.ops import IMPLEMENTATIONS, sym_pad_conv, symmetric_pad

__all__ = ["SymPadConv", "conv"]

# Layouts of eqx.nn.Conv (lax's defaults) for the ranks sym_pad_conv takes.
_LAYOUTS = {
    1: ("NCW", "OIW", "NCW"),
    2: ("NCHW", "OIHW", "NCHW"),
    3: ("NCDHW", "OIDHW", "NCDHW"),
}


def _ntuple(value: int | Sequence[int], n: int, name: str) -> tuple[int, ...]:
    # Same convention as eqx.nn.Conv: an int applies to every spatial axis.
    values = (value,) * n if isinstance(value, int) else tuple(value)
    if len(values) != n or not all(isinstance(v, int) and v >= 1 for v in values):
        raise ValueError(f"{name} must be a positive int or a sequence of {n} positive ints, got {value!r}")
    return values


def _uniform(key: jax.Array, shape: tuple[int, ...], dtype: Any, lim: float) -> jax.Array:
    # eqx.nn.Conv's initialization (U(-lim, lim), lim = 1/sqrt(fan_in)), re-declared rather than
    # imported from Equinox's private modules; with the same key the weights are eqx's.
    return jax.random.uniform(key, shape, dtype, minval=-lim, maxval=lim)


class SymPadConv(eqx.Module):
    """Drop-in for ``equinox.nn.Conv`` with symmetric padding (C2sp, C4sp).

    Same argument names, parameter names and shapes as ``eqx.nn.Conv``:
    ``weight`` ``(out_channels, in_channels // groups, *kernel_size)`` and
    ``bias`` ``(out_channels, 1, ..., 1)`` (or None), initialized as Equinox
    does, so that with the same ``key`` the parameters equal ``eqx.nn.Conv``'s
    and weights move unchanged between a C2 and a C2sp model. The input is
    unbatched, ``(in_channels, *spatial)``; batch with ``jax.vmap``.

    Padding is always the symmetric 'SAME' of :func:`sympad.sym_pad_conv`:
    output size ``ceil(in / stride)``, the odd extra zero of an even kernel on a
    different side for each group of input channels; for odd kernels at
    stride 1 the result equals ``eqx.nn.Conv(..., padding='SAME')``. Hence
    ``padding`` accepts only ``'SAME'`` and ``padding_mode`` only ``'ZEROS'``
    (they exist so that an ``eqx.nn.Conv(..., padding='SAME')`` call site
    converts by changing the class name).

    Example:

    >>> import jax, jax.numpy as jnp
    >>> from sympad.equinox import SymPadConv
    >>> layer = SymPadConv(2, 16, 32, kernel_size=2, key=jax.random.key(0))
    >>> layer.weight.shape, layer.bias.shape
    ((32, 16, 2, 2), (32, 1, 1))
    >>> layer(jnp.ones((16, 8, 8))).shape
    (32, 8, 8)
    >>> jax.vmap(layer)(jnp.ones((4, 16, 8, 8))).shape   # a batch
    (4, 32, 8, 8)

    Attributes:
      weight: ``(out_channels, in_channels // groups, *kernel_size)``.
      bias: ``(out_channels,) + (1,) * num_spatial_dims``, or None.
      num_spatial_dims: number of spatial axes (any; 1-3 run through
        :func:`sympad.sym_pad_conv`, more through :func:`sympad.symmetric_pad`
        and one ``'VALID'`` convolution).
      in_channels: input channels ``C``.
      out_channels: output channels ``F``.
      kernel_size: kernel extent per spatial axis (an int: the same on every axis).
      stride: int or one per spatial axis; output size ``ceil(in / stride)``.
      dilation: kernel dilation, an int or one per spatial axis.
      groups: feature groups (``in_channels`` for depthwise).
      use_bias: whether ``bias`` exists.
      padding: ``'SAME'``, the only value (see above).
      padding_mode: ``'ZEROS'``, the only value.
      implementation: formulation of the op, one of :data:`sympad.IMPLEMENTATIONS`.

    Raises:
      ValueError: from the constructor, for ``padding`` other than ``'SAME'``,
        ``padding_mode`` other than ``'ZEROS'``, an unknown ``implementation``,
        bad sizes, or channels not divisible by ``groups``; the message names
        the argument.
    """

    weight: jax.Array
    bias: jax.Array | None
    num_spatial_dims: int = eqx.field(static=True)
    in_channels: int = eqx.field(static=True)
    out_channels: int = eqx.field(static=True)
    kernel_size: tuple[int, ...] = eqx.field(static=True)
    stride: tuple[int, ...] = eqx.field(static=True)
    padding: str = eqx.field(static=True)
    dilation: tuple[int, ...] = eqx.field(static=True)
    groups: int = eqx.field(static=True)
    use_bias: bool = eqx.field(static=True)
    padding_mode: str = eqx.field(static=True)
    implementation: str = eqx.field(static=True)

    def __init__(
        self,
        num_spatial_dims: int,
        in_channels: int,
        out_channels: int,
        kernel_size: int | Sequence[int],
        stride: int | Sequence[int] = 1,
        padding: str = "SAME",
        dilation: int | Sequence[int] = 1,
        groups: int = 1,
        use_bias: bool = True,
        padding_mode: str = "ZEROS",
        dtype: Any = None,
        *,
        implementation: str = "auto",
        key: jax.Array,
    ):
        # Arguments as eqx.nn.Conv's (documented on the class), plus implementation.
        if not isinstance(num_spatial_dims, int) or num_spatial_dims < 1:
            raise ValueError(f"num_spatial_dims must be a positive int, got {num_spatial_dims!r}")
        if not (isinstance(padding, str) and padding.upper() == "SAME"):
            raise ValueError(
                f"padding must be 'SAME' (symmetric padding is this layer's only mode; use eqx.nn.Conv "
                f"for explicit or 'VALID' padding), got {padding!r}"
            )
        if padding_mode != "ZEROS":
            raise ValueError(f"padding_mode must be 'ZEROS' (symmetric padding pads with zeros), got {padding_mode!r}")
        if implementation not in IMPLEMENTATIONS:
            raise ValueError(f"implementation must be one of {IMPLEMENTATIONS}, got {implementation!r}")
        if not isinstance(groups, int) or groups < 1:
            raise ValueError(f"groups must be a positive int, got {groups!r}")
        if in_channels % groups or out_channels % groups:
            raise ValueError(
                f"in_channels ({in_channels}) and out_channels ({out_channels}) must be divisible by groups ({groups})"
            )
        kernel_size = _ntuple(kernel_size, num_spatial_dims, "kernel_size")
        dtype = jax.dtypes.canonicalize_dtype(jnp.float64) if dtype is None else dtype
        wkey, bkey = jax.random.split(key, 2)
        lim = 1 / math.sqrt(in_channels // groups * math.prod(kernel_size))
        self.weight = _uniform(wkey, (out_channels, in_channels // groups) + kernel_size, dtype, lim)
        self.bias = _uniform(bkey, (out_channels,) + (1,) * num_spatial_dims, dtype, lim) if use_bias else None
        self.num_spatial_dims = num_spatial_dims
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = kernel_size
        self.stride = _ntuple(stride, num_spatial_dims, "stride")
        self.padding = "SAME"
        self.dilation = _ntuple(dilation, num_spatial_dims, "dilation")
        self.groups = groups
        self.use_bias = use_bias
        self.padding_mode = padding_mode
        self.implementation = implementation

    def __call__(self, x: jax.Array, *, key: jax.Array | None = None) -> jax.Array:
        """Input ``(in_channels, *spatial)``; output ``(out_channels, *ceil(spatial / stride))``.

        ``key`` is ignored (Equinox's layer convention).
        """
        del key
        x = jnp.asarray(x)
        if x.ndim != self.num_spatial_dims + 1 or x.shape[0] != self.in_channels:
            raise ValueError(
                f"x must have shape (in_channels={self.in_channels}, *spatial) with num_spatial_dims="
                f"{self.num_spatial_dims} spatial axes (unbatched; use jax.vmap for a batch), got {x.shape}"
            )
        if self.num_spatial_dims in _LAYOUTS:
            y = sym_pad_conv(
                x[None],
                self.weight,
                self.stride,
                kernel_dilation=self.dilation,
                feature_group_count=self.groups,
                dimension_numbers=_LAYOUTS[self.num_spatial_dims],
                implementation=self.implementation,
            )[0]
        else:
            # sym_pad_conv stops at 3 spatial axes; the pad-then-VALID form is the op's definition
            # (a strided 'VALID' conv of the padded input samples the stride-1 output at 0, s, 2s, ...).
            padded = symmetric_pad(
                jnp.moveaxis(x, 0, -1)[None], self.kernel_size,
                kernel_dilation=self.dilation, feature_group_count=self.groups,
            )
            y = lax.conv_general_dilated(
                jnp.moveaxis(padded, -1, 1), self.weight, self.stride, "VALID",
                rhs_dilation=self.dilation, feature_group_count=self.groups,
            )[0]
        if self.bias is not None:
            y = y + self.bias
        return y


def conv(
    kind: str,
    in_channels: int,
    out_channels: int,
    *,
    spatial_dims: int = 2,
    key: jax.Array,
    **kwargs: Any,
) -> eqx.Module:
    """Equinox counterpart of :func:`sympad.linen.conv`, in the paper's notation.

    Args:
      kind: ``'C<k>'`` (``eqx.nn.Conv`` with ``padding='SAME'``, whose extra
        zero for an even kernel goes bottom/right, as XLA's) or ``'C<k>sp'``
        (:class:`SymPadConv`); e.g. ``'C3'``, ``'C2'``, ``'C2sp'``, ``'C4sp'``.
      in_channels: input channels.
      out_channels: output channels.
      spatial_dims: number of spatial axes (``num_spatial_dims`` of Equinox).
      key: PRNG key for the initialization.
      **kwargs: passed to the module (stride, dilation, groups, use_bias,
        dtype; ``implementation`` for ``C<k>sp`` only).

    Returns:
      A module with ``weight`` ``(out_channels, in_channels // groups, k, ..., k)``
      and ``bias``; the same ``key`` gives the same parameters for every kind of
      one kernel size.

    Raises:
      ValueError: for an unknown kind (the message gives the valid form) or a
        ``padding`` argument (the kind fixes it).

    Example:

    >>> import jax
    >>> from sympad import equinox as speqx
    >>> type(speqx.conv("C2sp", 8, 16, key=jax.random.key(0))).__name__
    'SymPadConv'
    >>> speqx.conv("C3", 8, 16, key=jax.random.key(0)).weight.shape
    (16, 8, 3, 3)
    """
    parsed = parse_kind(kind)
    if "padding" in kwargs:
        raise ValueError(f"conv(kind={kind!r}) fixes the padding; pass no padding argument")
    if parsed.symmetric:
        return SymPadConv(spatial_dims, in_channels, out_channels, parsed.size, key=key, **kwargs)
    return eqx.nn.Conv(spatial_dims, in_channels, out_channels, parsed.size, padding="SAME", key=key, **kwargs)
