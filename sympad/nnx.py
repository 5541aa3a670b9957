"""flax.nnx modules: :class:`Conv`, a drop-in for ``flax.nnx.Conv`` with symmetric padding, a
:func:`conv` factory, and :func:`convert`, which converts a built model with one call."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from flax.nnx.nn.dtypes import promote_dtype as _promote_dtype
from jax import lax

from sympad._flax_shared import check_positive, flatten_batch, is_unit, kernel_tuple, restore_batch
from sympad._modules import converted_kernel_size, converts, factory_arguments, module_for, own_rule
from sympad.kinds import parse_kind
from sympad.ops import IMPLEMENTATIONS, Implementation, padded_conv

__all__ = ["Conv", "SymPadConv", "conv", "convert"]

# One instance each, built at import as flax's nnx.Conv builds its defaults: an initializer is a
# pure function, so every layer may share it.
_DEFAULT_KERNEL_INIT = nnx.initializers.lecun_normal()
_DEFAULT_BIAS_INIT = nnx.initializers.zeros_init()


class Conv(nnx.Conv):
    """Drop-in for ``flax.nnx.Conv``: even kernels get symmetric padding (C2sp, C4sp).

    A subclass of ``nnx.Conv`` with every one of its arguments and defaults
    (tests/library/test_dropin.py compares the signatures), plus
    ``implementation``. It holds ``kernel`` (``nnx.Param`` of shape
    ``(*kernel_size, in_features // feature_group_count, out_features)``) and
    ``bias`` (``(out_features,)`` or None), initialized by ``nnx.Conv``
    itself: with the same ``rngs`` the weights are ``nnx.Conv``'s. It differs
    from ``nnx.Conv`` in one place, ``padding='SAME'`` (the default) with an
    even kernel: there the padding is symmetric (:func:`sympad.sym_pad_conv`).
    Odd kernels and every other padding are ``nnx.Conv``'s own computation.
    ``padding='SYMMETRIC'`` (what :func:`conv` passes for ``C<k>sp``) is the
    same function, through :func:`sympad.padded_conv` for every kernel.

    Args:
      in_features: input channels ``C``.
      out_features: output channels ``F``.
      kernel_size: kernel extent per spatial axis; an int means 1D (as in flax).
      strides: int or one per spatial axis; output size is ``ceil(in / stride)``.
      padding: ``'SAME'`` (symmetric for even kernels), ``'SYMMETRIC'``, or any
        padding ``nnx.Conv`` takes (computed by ``nnx.Conv``).
      input_dilation: as ``nnx.Conv``; with symmetric padding only 1.
      kernel_dilation: int or one per spatial axis.
      feature_group_count: grouped convolution (``C`` for depthwise).
      use_bias: add a learned bias.
      mask: a weight mask of the kernel's shape, as ``nnx.Conv``.
      dtype: computation dtype (default: inferred).
      param_dtype: parameter dtype.
      precision: passed to ``lax.conv_general_dilated``.
      kernel_init: kernel initializer (flax's default: LeCun normal).
      bias_init: bias initializer.
      conv_general_dilated: as ``nnx.Conv``; with symmetric padding only
        ``lax.conv_general_dilated``.
      promote_dtype: as ``nnx.Conv``.
      preferred_element_type: accumulation/output dtype, as ``nnx.Conv``.
      implementation: formulation of the symmetric op, one of :data:`sympad.IMPLEMENTATIONS`.
      rngs: ``nnx.Rngs`` for parameter initialization.
      kernel_metadata: as ``nnx.Conv``.
      bias_metadata: as ``nnx.Conv``.

    ``SymPadConv`` is another name for this class.

    Example:

    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> from sympad.nnx import Conv
    >>> layer = Conv(16, 32, (2, 2), rngs=nnx.Rngs(0))
    >>> layer.kernel.shape, layer.bias.shape
    ((2, 2, 16, 32), (32,))
    >>> layer(jnp.ones((4, 8, 8, 16))).shape
    (4, 8, 8, 32)
    >>> bool((layer.kernel[...] == nnx.Conv(16, 32, (2, 2), rngs=nnx.Rngs(0)).kernel[...]).all())
    True
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        kernel_size: int | Sequence[int],
        strides: None | int | Sequence[int] = 1,
        *,
        padding: Any = "SAME",
        input_dilation: None | int | Sequence[int] = 1,
        kernel_dilation: None | int | Sequence[int] = 1,
        feature_group_count: int = 1,
        use_bias: bool = True,
        mask: jax.Array | None = None,
        dtype: Any = None,
        param_dtype: Any = jnp.float32,
        precision: Any = None,
        kernel_init: nnx.initializers.Initializer = _DEFAULT_KERNEL_INIT,
        bias_init: nnx.initializers.Initializer = _DEFAULT_BIAS_INIT,
        conv_general_dilated: Any = lax.conv_general_dilated,
        promote_dtype: Any = _promote_dtype,
        preferred_element_type: Any = None,
        implementation: Implementation = "auto",
        rngs: nnx.Rngs,
        kernel_metadata: Mapping[str, Any] = MappingProxyType({}),
        bias_metadata: Mapping[str, Any] = MappingProxyType({}),
    ):
        check_positive("in_features", in_features)
        check_positive("out_features", out_features)
        if not isinstance(rngs, nnx.Rngs):
            raise ValueError(f"rngs must be an nnx.Rngs (e.g. nnx.Rngs(0)), got {rngs!r}")
        if in_features % feature_group_count:
            raise ValueError(
                f"in_features ({in_features}) must be divisible by feature_group_count ({feature_group_count})"
            )
        if implementation not in IMPLEMENTATIONS:
            raise ValueError(f"implementation must be one of {IMPLEMENTATIONS}, got {implementation!r}")
        kernel_size = kernel_tuple(kernel_size)
        if own_rule(padding, kernel_size, kernel_dilation) is not None:
            _check_own_path(padding, kernel_size, input_dilation, conv_general_dilated)
        super().__init__(
            in_features, out_features, kernel_size, strides, padding=padding, input_dilation=input_dilation,
            kernel_dilation=kernel_dilation, feature_group_count=feature_group_count, use_bias=use_bias,
            mask=mask, dtype=dtype, param_dtype=param_dtype, precision=precision, kernel_init=kernel_init,
            bias_init=bias_init, conv_general_dilated=conv_general_dilated, promote_dtype=promote_dtype,
            preferred_element_type=preferred_element_type, rngs=rngs, kernel_metadata=kernel_metadata,
            bias_metadata=bias_metadata,
        )
        self.implementation = implementation

    def __call__(self, inputs: jax.Array, out_sharding: Any = None) -> jax.Array:
        """Input ``(*batch, *spatial, C)``; output ``(*batch, *ceil(spatial / strides), F)`` with ``'SAME'``.

        ``out_sharding`` as ``nnx.Conv``'s; with symmetric padding only None.
        """
        rule = own_rule(self.padding, self.kernel_size, self.kernel_dilation)
        if rule is None:
            if out_sharding is None:  # passed on only when given: not every flax's nnx.Conv takes it
                return super().__call__(inputs)
            return super().__call__(inputs, out_sharding=out_sharding)
        if out_sharding is not None:
            raise ValueError(
                f"out_sharding must be None with symmetric padding, got {out_sharding!r}; "
                "constrain the output with jax.lax.with_sharding_constraint instead"
            )
        inputs, batch_shape = flatten_batch(jnp.asarray(inputs), len(self.kernel_size))
        if inputs.shape[-1] != self.in_features:
            raise ValueError(
                f"inputs have {inputs.shape[-1]} channels, the layer expects in_features={self.in_features}"
            )
        kernel = self.kernel[...]
        if self.mask is not None:
            if self.mask.shape != kernel.shape:
                raise ValueError(f"mask must have the kernel's shape {kernel.shape}, got {self.mask.shape}")
            kernel = kernel * self.mask
        bias = self.bias[...] if self.bias is not None else None
        inputs, kernel, bias = self.promote_dtype((inputs, kernel, bias), dtype=self.dtype)
        y = padded_conv(
            inputs,
            kernel,
            1 if self.strides is None else self.strides,
            padding=rule,
            kernel_dilation=1 if self.kernel_dilation is None else self.kernel_dilation,
            feature_group_count=self.feature_group_count,
            precision=self.precision,
            preferred_element_type=self.preferred_element_type,
            implementation=self.implementation,
        )
        if bias is not None:
            y = y + bias
        return restore_batch(y, batch_shape)


#: Another name for :class:`Conv` (its name before it took ``nnx.Conv``'s).
SymPadConv = Conv


def _check_own_path(padding: Any, kernel_size: tuple[int, ...], input_dilation: Any, conv_general_dilated: Any) -> None:
    """Refuses, naming the argument, what the symmetric path does not implement."""
    if not is_unit(input_dilation):
        raise ValueError(
            f"input_dilation must be 1 with symmetric padding (padding={padding!r} and kernel {kernel_size}), "
            f"got {input_dilation!r}; use nnx.ConvTranspose, or an explicit padding"
        )
    if conv_general_dilated is not lax.conv_general_dilated:
        raise ValueError(
            f"conv_general_dilated must be lax.conv_general_dilated with symmetric padding (sympad computes the "
            f"convolution), got {conv_general_dilated!r}; use nnx.Conv, or pass implementation= to choose a formulation"
        )


def conv(
    kind: str, in_features: int, out_features: int, *, spatial_dims: int = 2, rngs: nnx.Rngs, **kwargs: Any
) -> nnx.Module:
    """nnx counterpart of :func:`sympad.linen.conv`: ``nnx.Conv`` for ``C<k>``, :class:`Conv` for ``C<k>sp``.

    Args:
      kind: ``'C<k>'`` (``nnx.Conv`` with ``padding='SAME'``) or ``'C<k>sp'``
        (:class:`Conv` with ``padding='SYMMETRIC'``), e.g. ``'C3'``, ``'C2'``,
        ``'C2sp'``, ``'C4sp'``.
      in_features: input channels.
      out_features: output channels.
      spatial_dims: number of spatial axes (2 for images).
      rngs: ``nnx.Rngs`` for parameter initialization.
      **kwargs: passed to the module (strides, use_bias, feature_group_count,
        ...); not ``padding``, which the kind fixes.

    Raises:
      ValueError: for an unknown kind (the message gives the valid form).

    Example:

    >>> from flax import nnx
    >>> from sympad import nnx as spnnx
    >>> layer = spnnx.conv("C2sp", 16, 32, rngs=nnx.Rngs(0))
    >>> layer.padding, layer.kernel.shape
    ('SYMMETRIC', (2, 2, 16, 32))
    >>> type(spnnx.conv("C2", 16, 32, rngs=nnx.Rngs(0))) is nnx.Conv
    True
    """
    parsed, kernel_size = factory_arguments(kind, spatial_dims, kwargs)
    check_positive("in_features", in_features)
    check_positive("out_features", out_features)
    cls = module_for(parsed, host=nnx.Conv, sympad=Conv)
    return cls(in_features, out_features, kernel_size, padding=parsed.padding, rngs=rngs, **kwargs)


def convert(model: Any, kind: str, *, rngs: nnx.Rngs, **kwargs: Any) -> Any:
    """A copy of a built nnx model whose ``nnx.Conv`` layers are of ``kind``.

    The nnx counterpart of :func:`sympad.linen.conv_class`, by the same rule:
    every ``nnx.Conv`` (the class itself, not subclasses) with
    ``padding='SAME'``, no mask and an extent > 1 gets the kind's padding,
    and each odd extent > 1 of its kernel becomes the kind's size; pointwise
    convs, convs with any other padding and masked convs stay. Walks the
    graph with ``nnx.recursive_map``, so the copy shares every variable it
    keeps with ``model``, as that function does. A conv whose kernel keeps
    its shape (``C2`` to ``C2sp``) keeps its ``kernel`` and ``bias``; one
    whose kernel changes gets new ones, drawn from ``rngs``.

    Args:
      model: an nnx graph (a Module, or a list or dict of them).
      kind: ``'C<k>'`` or ``'C<k>sp'``, e.g. ``'C2sp'``.
      rngs: ``nnx.Rngs`` for the new kernels.
      **kwargs: passed to every new conv's constructor, e.g. ``kernel_init``
        (``nnx.Conv`` does not keep the initializers it was built with).

    Returns:
      The converted copy.

    Raises:
      ValueError: for an unknown kind.

    Example:

    >>> from flax import nnx
    >>> from sympad import nnx as spnnx
    >>> model = nnx.Sequential(nnx.Conv(4, 8, (3, 3), rngs=nnx.Rngs(0)), nnx.Conv(8, 8, (1, 1), rngs=nnx.Rngs(1)))
    >>> converted = spnnx.convert(model, "C2sp", rngs=nnx.Rngs(2))
    >>> [(type(layer).__name__, layer.kernel.shape) for layer in converted.layers]
    [('Conv', (2, 2, 4, 8)), ('Conv', (1, 1, 8, 8))]
    >>> converted.layers[0].padding, converted.layers[1].kernel is model.layers[1].kernel
    ('SYMMETRIC', True)
    """
    parsed = parse_kind(kind)
    cls = module_for(parsed, host=nnx.Conv, sympad=Conv)

    def swap(path: Any, node: Any) -> Any:
        del path
        if type(node) is not nnx.Conv or not converts(parsed, node.padding, node.kernel_size, plain=node.mask is None):
            return node
        kernel_size = converted_kernel_size(parsed, node.kernel_size)
        new = cls(
            node.in_features, node.out_features, kernel_size, node.strides, padding=parsed.padding,
            input_dilation=node.input_dilation, kernel_dilation=node.kernel_dilation,
            feature_group_count=node.feature_group_count, use_bias=node.use_bias, dtype=node.dtype,
            param_dtype=node.param_dtype, precision=node.precision, conv_general_dilated=node.conv_general_dilated,
            promote_dtype=node.promote_dtype, preferred_element_type=node.preferred_element_type, rngs=rngs,
            **kwargs,
        )
        if kernel_size == tuple(node.kernel_size):
            new.kernel, new.bias = node.kernel, node.bias
        return new

    return nnx.recursive_map(swap, model)
