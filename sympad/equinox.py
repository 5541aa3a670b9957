"""Equinox module: :class:`Conv`, a drop-in for ``equinox.nn.Conv`` with symmetric padding, a
:func:`conv` factory, and :func:`convert`, which converts a model with one call.

Needs the optional ``equinox`` package (the project's ``equinox`` extra); the
rest of ``sympad`` does not import it.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
from jax import lax

from sympad._modules import converted_kernel_size, converts, factory_arguments, module_for, own_rule
from sympad.kinds import parse_kind
from sympad.ops import IMPLEMENTATIONS, padded_conv, symmetric_pad

__all__ = ["Conv", "SymPadConv", "conv", "convert"]

# Layouts of eqx.nn.Conv (lax's defaults) for the ranks sympad.padded_conv takes.
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


class Conv(eqx.nn.Conv):
    """Drop-in for ``equinox.nn.Conv``: even kernels get symmetric padding (C2sp, C4sp).

    A subclass of ``eqx.nn.Conv`` with its arguments, fields and parameter
    shapes, plus ``implementation``: ``weight`` ``(out_channels, in_channels //
    groups, *kernel_size)`` and ``bias`` ``(out_channels, 1, ..., 1)`` (or
    None), initialized by ``eqx.nn.Conv`` itself, so that with the same
    ``key`` the parameters equal ``eqx.nn.Conv``'s. The input is unbatched,
    ``(in_channels, *spatial)``; batch with ``jax.vmap``.

    It differs from ``eqx.nn.Conv`` in two places. ``padding='SAME'`` with an
    even kernel is symmetric (:func:`sympad.sym_pad_conv`: output size
    ``ceil(in / stride)``, the odd extra zero of an even kernel on a different
    side for each group of input channels); it takes ``padding_mode='ZEROS'``
    only. And ``padding`` defaults to ``'SAME'`` (``eqx.nn.Conv``: 0), as this
    class always has. Odd kernels and every other padding (``'VALID'``,
    ``'SAME_LOWER'``, ints, pairs, any ``padding_mode``) are ``eqx.nn.Conv``'s
    own computation. ``padding='SYMMETRIC'`` (what :func:`conv` passes for
    ``C<k>sp``) is the same function, through :func:`sympad.padded_conv` for
    every kernel. ``SymPadConv`` is another name for this class.

    Example:

    >>> import jax, jax.numpy as jnp
    >>> from sympad.equinox import Conv
    >>> layer = Conv(2, 16, 32, kernel_size=2, key=jax.random.key(0))
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
        :func:`sympad.padded_conv`, more through :func:`sympad.symmetric_pad`
        and one ``'VALID'`` convolution).
      in_channels: input channels ``C``.
      out_channels: output channels ``F``.
      kernel_size: kernel extent per spatial axis (an int: the same on every axis).
      stride: int or one per spatial axis; output size ``ceil(in / stride)`` with ``'SAME'``.
      dilation: kernel dilation, an int or one per spatial axis.
      groups: feature groups (``in_channels`` for depthwise).
      use_bias: whether ``bias`` exists.
      padding: ``'SAME'`` (symmetric for even kernels), ``'SYMMETRIC'``, or any
        padding ``eqx.nn.Conv`` takes (computed by ``eqx.nn.Conv``).
      padding_mode: as ``eqx.nn.Conv``; with symmetric padding only ``'ZEROS'``.
      implementation: formulation of the symmetric op, one of :data:`sympad.IMPLEMENTATIONS`.

    Raises:
      ValueError: from the constructor, for ``padding_mode`` other than
        ``'ZEROS'`` with symmetric padding, an unknown ``implementation``, bad
        sizes, or channels not divisible by ``groups``; the message names the
        argument.
    """

    implementation: str = eqx.field(static=True)

    def __init__(
        self,
        num_spatial_dims: int,
        in_channels: int,
        out_channels: int,
        kernel_size: int | Sequence[int],
        stride: int | Sequence[int] = 1,
        padding: Any = "SAME",
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
        if implementation not in IMPLEMENTATIONS:
            raise ValueError(f"implementation must be one of {IMPLEMENTATIONS}, got {implementation!r}")
        if not isinstance(groups, int) or groups < 1:
            raise ValueError(f"groups must be a positive int, got {groups!r}")
        if in_channels % groups or out_channels % groups:
            raise ValueError(
                f"in_channels ({in_channels}) and out_channels ({out_channels}) must be divisible by groups ({groups})"
            )
        kernel_size = _ntuple(kernel_size, num_spatial_dims, "kernel_size")
        stride = _ntuple(stride, num_spatial_dims, "stride")
        dilation = _ntuple(dilation, num_spatial_dims, "dilation")
        rule = own_rule(padding, kernel_size, dilation)
        if rule is not None and not (isinstance(padding_mode, str) and padding_mode.upper() == "ZEROS"):
            raise ValueError(
                f"padding_mode must be 'ZEROS' with symmetric padding (padding={padding!r} and kernel "
                f"{kernel_size}), got {padding_mode!r}; use eqx.nn.Conv for that mode's padding"
            )
        # eqx.nn.Conv takes no rule names: it gets 'SAME', and the rule's name goes back after.
        super().__init__(
            num_spatial_dims, in_channels, out_channels, kernel_size, stride,
            "SAME" if rule is not None else padding, dilation, groups, use_bias, padding_mode, dtype, key=key,
        )
        if rule is not None and padding == rule:
            self.padding = rule
        self.implementation = implementation

    def __call__(self, x: jax.Array, *, key: jax.Array | None = None) -> jax.Array:
        """Input ``(in_channels, *spatial)``; output ``(out_channels, *ceil(spatial / stride))`` with ``'SAME'``.

        ``key`` is ignored (Equinox's layer convention).
        """
        rule = own_rule(self.padding, self.kernel_size, self.dilation)
        if rule is None:
            return super().__call__(x, key=key)
        x = jnp.asarray(x)
        if x.ndim != self.num_spatial_dims + 1 or x.shape[0] != self.in_channels:
            raise ValueError(
                f"x must have shape (in_channels={self.in_channels}, *spatial) with num_spatial_dims="
                f"{self.num_spatial_dims} spatial axes (unbatched; use jax.vmap for a batch), got {x.shape}"
            )
        if self.num_spatial_dims in _LAYOUTS:
            y = padded_conv(
                x[None],
                self.weight,
                self.stride,
                padding=rule,
                kernel_dilation=self.dilation,
                feature_group_count=self.groups,
                dimension_numbers=_LAYOUTS[self.num_spatial_dims],
                implementation=self.implementation,
            )[0]
        else:
            # padded_conv stops at 3 spatial axes. Its one rule besides XLA's, 'SYMMETRIC', is here
            # the pad-then-VALID form where the padding is odd (a strided 'VALID' conv of the padded
            # input samples the stride-1 output at 0, s, 2s, ...) and XLA's 'SAME' elsewhere.
            conv = functools.partial(
                lax.conv_general_dilated, rhs=self.weight, window_strides=self.stride,
                rhs_dilation=self.dilation, feature_group_count=self.groups,
            )
            if any(d * (k - 1) % 2 for k, d in zip(self.kernel_size, self.dilation)):
                padded = symmetric_pad(
                    jnp.moveaxis(x, 0, -1)[None], self.kernel_size,
                    kernel_dilation=self.dilation, feature_group_count=self.groups,
                )
                y = conv(jnp.moveaxis(padded, -1, 1), padding="VALID")[0]
            else:
                y = conv(x[None], padding="SAME")[0]
        if self.bias is not None:
            y = y + self.bias
        return y


#: Another name for :class:`Conv` (its name before it took ``eqx.nn.Conv``'s).
SymPadConv = Conv


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
        (:class:`Conv` with ``padding='SYMMETRIC'``); e.g. ``'C3'``, ``'C2'``,
        ``'C2sp'``, ``'C4sp'``.
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
    >>> speqx.conv("C2sp", 8, 16, key=jax.random.key(0)).padding
    'SYMMETRIC'
    >>> speqx.conv("C3", 8, 16, key=jax.random.key(0)).weight.shape
    (16, 8, 3, 3)
    """
    parsed, kernel_size = factory_arguments(kind, spatial_dims, kwargs)
    cls = module_for(parsed, host=eqx.nn.Conv, sympad=Conv)
    return cls(spatial_dims, in_channels, out_channels, kernel_size, padding=parsed.padding, key=key, **kwargs)


def convert(model: Any, kind: str, *, key: jax.Array) -> Any:
    """``model`` with its ``eqx.nn.Conv`` layers of ``kind``, through ``eqx.tree_at``.

    The Equinox counterpart of :func:`sympad.linen.conv_class`, by the same
    rule: every ``eqx.nn.Conv`` (the class itself, not subclasses) with
    ``padding='SAME'``, ``padding_mode='ZEROS'`` and an extent > 1 gets the
    kind's padding, and each odd extent > 1 of its kernel becomes the kind's
    size; pointwise convs and convs with any other padding stay. A conv whose
    kernel keeps its shape (``C2`` to ``C2sp``) keeps its ``weight`` and
    ``bias``; one whose kernel changes gets new ones, initialized as
    ``eqx.nn.Conv`` does, from ``key``.

    Args:
      model: any PyTree of Equinox modules.
      kind: ``'C<k>'`` or ``'C<k>sp'``, e.g. ``'C2sp'``.
      key: PRNG key for the new weights.

    Returns:
      The converted model.

    Raises:
      ValueError: for an unknown kind.

    Example:

    >>> import equinox as eqx, jax
    >>> from sympad import equinox as speqx
    >>> k1, k2 = jax.random.split(jax.random.key(0))
    >>> model = eqx.nn.Sequential([eqx.nn.Conv2d(4, 8, 3, padding="SAME", key=k1), eqx.nn.Conv(2, 8, 8, 1, key=k2)])
    >>> converted = speqx.convert(model, "C2sp", key=jax.random.key(1))
    >>> [(type(layer).__name__, layer.weight.shape) for layer in converted.layers]
    [('Conv', (8, 4, 2, 2)), ('Conv', (8, 8, 1, 1))]
    """
    parsed = parse_kind(kind)
    cls = module_for(parsed, host=eqx.nn.Conv, sympad=Conv)

    def is_conv(node: Any) -> bool:
        # eqx.nn.Conv2d and its siblings only fix num_spatial_dims: they are eqx.nn.Conv.
        return type(node) in (eqx.nn.Conv, eqx.nn.Conv1d, eqx.nn.Conv2d, eqx.nn.Conv3d)

    def targets(tree: Any) -> list[Any]:
        return [
            node for node in jax.tree.leaves(tree, is_leaf=is_conv)
            if is_conv(node) and converts(parsed, node.padding, node.kernel_size, plain=node.padding_mode == "ZEROS")
        ]

    def swap(node: eqx.nn.Conv, node_key: jax.Array) -> eqx.Module:
        kernel_size = converted_kernel_size(parsed, node.kernel_size)
        new = cls(
            node.num_spatial_dims, node.in_channels, node.out_channels, kernel_size, node.stride,
            padding=parsed.padding, dilation=node.dilation, groups=node.groups, use_bias=node.use_bias,
            dtype=node.weight.dtype, key=node_key,
        )
        if kernel_size == node.kernel_size:
            new = eqx.tree_at(lambda c: (c.weight, c.bias), new, (node.weight, node.bias), is_leaf=lambda v: v is None)
        return new

    convs = targets(model)
    new = [swap(node, k) for node, k in zip(convs, jax.random.split(key, max(len(convs), 1)))]
    return eqx.tree_at(targets, model, new)
