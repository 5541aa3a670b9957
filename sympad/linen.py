"""flax.linen modules: :class:`Conv`, a drop-in for ``flax.linen.Conv`` with symmetric padding,
the :func:`conv` factory every model uses, and two ways to convert a model written for
``nn.Conv`` with one change (:func:`conv_class`, :func:`use_kind`)."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
from collections.abc import Iterator
from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

from sympad._flax_shared import check_positive, flatten_batch, is_unit, kernel_tuple, restore_batch
from sympad._modules import converted_kernel_size, converts, factory_arguments, module_for, own_rule
from sympad.kinds import parse_kind
from sympad.ops import Implementation, padded_conv

__all__ = ["Conv", "SymPadConv", "conv", "conv_class", "use_kind"]

# The fields of nn.Conv that Conv's own (symmetric) path implements; tests/library/test_dropin.py
# holds this to the installed flax's fields, and a field flax adds later is refused there unless
# it keeps its default (the framework's path, for every other padding, takes it as flax does).
_OWN_PATH_FIELDS = frozenset({
    "features", "kernel_size", "strides", "padding", "input_dilation", "kernel_dilation",
    "feature_group_count", "use_bias", "mask", "dtype", "param_dtype", "precision", "kernel_init",
    "bias_init", "promote_dtype", "conv_general_dilated", "conv_general_dilated_cls",
    "preferred_element_type", "implementation", "parent", "name",
})


class Conv(nn.Conv):
    """Drop-in for ``flax.linen.Conv``: even kernels get symmetric padding (C2sp, C4sp).

    A subclass of ``nn.Conv`` with every one of its fields and defaults, and
    one more, ``implementation``. Its class name is ``Conv``, so a model that
    swaps ``nn.Conv`` for it keeps its auto-generated names (``Conv_0``, ...)
    and parameter shapes, and a checkpoint of the one loads into the other.
    It differs from ``nn.Conv`` in one place, ``padding='SAME'`` (the default)
    with an even kernel: there the padding is symmetric
    (:func:`sympad.sym_pad_conv`; a strided output is the stride-1 output
    sampled at ``0, s, 2s, ...``). Odd kernels (``'SAME'``, any strides) and
    every other padding (``'VALID'``, explicit pads, ``'CIRCULAR'``,
    ``'REFLECT'``, ``'CAUSAL'``) are ``nn.Conv``'s own computation.
    ``padding='SYMMETRIC'`` (what :func:`conv` passes for ``C<k>sp``) is the
    same function, through :func:`sympad.padded_conv` for every kernel.

    Attributes:
      features: number of output channels ``F``.
      kernel_size: kernel extent per spatial axis; an int means 1D (as in flax).
      strides: int or one per spatial axis; output size is ``ceil(in / stride)``
        with ``'SAME'``.
      padding: ``'SAME'`` (symmetric for even kernels), ``'SYMMETRIC'``, or
        any padding ``nn.Conv`` takes (computed by ``nn.Conv``).
      input_dilation: as ``nn.Conv``; with symmetric padding only 1.
      kernel_dilation: int or one per spatial axis.
      feature_group_count: grouped convolution (``C`` for depthwise).
      use_bias: add a learned bias.
      mask: a weight mask of the kernel's shape, as ``nn.Conv``.
      dtype: computation dtype (default: inferred from inputs and params).
      param_dtype: parameter dtype.
      precision: passed to ``lax.conv_general_dilated``.
      kernel_init: kernel initializer (flax's default: LeCun normal).
      bias_init: bias initializer.
      promote_dtype: as ``nn.Conv``.
      conv_general_dilated: as ``nn.Conv``; with symmetric padding only None.
      conv_general_dilated_cls: as ``nn.Conv``; with symmetric padding only None.
      implementation: formulation of the symmetric op, one of :data:`sympad.IMPLEMENTATIONS`.

    Input ``(*batch, *spatial, C)``; output ``(*batch, *ceil(spatial / strides), F)``
    with ``'SAME'``. ``SymPadConv`` is another name for this class.

    Example:

    >>> import jax, jax.numpy as jnp
    >>> from sympad.linen import Conv
    >>> layer = Conv(features=32, kernel_size=(2, 2))
    >>> x = jnp.ones((4, 8, 8, 16))
    >>> variables = layer.init(jax.random.key(0), x)
    >>> jax.tree.map(jnp.shape, variables["params"])
    {'bias': (32,), 'kernel': (2, 2, 16, 32)}
    >>> layer.apply(variables, x).shape
    (4, 8, 8, 32)
    >>> Conv(32, (2, 2), strides=2).apply(variables, x).shape
    (4, 4, 4, 32)
    >>> Conv(32, (2, 2), padding="VALID").apply(variables, x).shape   # nn.Conv's VALID
    (4, 7, 7, 32)
    """

    implementation: Implementation = "auto"

    @nn.compact
    def __call__(self, inputs: jax.Array) -> jax.Array:
        kernel_size = kernel_tuple(self.kernel_size)
        check_positive("features", self.features)
        rule = own_rule(self.padding, kernel_size, self.kernel_dilation)
        if rule is None:
            return super().__call__(inputs)
        _check_own_path(self)
        inputs, batch_shape = flatten_batch(jnp.asarray(inputs), len(kernel_size))
        in_features = inputs.shape[-1]
        if in_features % self.feature_group_count:
            raise ValueError(
                f"input channels ({in_features}) must be divisible by feature_group_count ({self.feature_group_count})"
            )
        kernel_shape = kernel_size + (in_features // self.feature_group_count, self.features)
        if self.mask is not None and self.mask.shape != kernel_shape:
            raise ValueError(f"mask must have the kernel's shape {kernel_shape}, got {self.mask.shape}")
        kernel = self.param("kernel", self.kernel_init, kernel_shape, self.param_dtype)
        if self.mask is not None:
            kernel = kernel * self.mask
        bias = self.param("bias", self.bias_init, (self.features,), self.param_dtype) if self.use_bias else None
        inputs, kernel, bias = self.promote_dtype(inputs, kernel, bias, dtype=self.dtype)
        y = padded_conv(
            inputs,
            kernel,
            1 if self.strides is None else self.strides,
            padding=rule,
            kernel_dilation=1 if self.kernel_dilation is None else self.kernel_dilation,
            feature_group_count=self.feature_group_count,
            precision=self.precision,
            # Not a field of nn.Conv in every flax version (nnx.Conv has it).
            preferred_element_type=getattr(self, "preferred_element_type", None),
            implementation=self.implementation,
        )
        if bias is not None:
            y = y + bias
        return restore_batch(y, batch_shape)


#: Another name for :class:`Conv` (its name before it took ``nn.Conv``'s).
SymPadConv = Conv


def _check_own_path(module: Conv) -> None:
    """Refuses, naming the field, what the symmetric path does not implement."""
    if not is_unit(module.input_dilation):
        raise ValueError(
            f"input_dilation must be 1 with symmetric padding (padding={module.padding!r} and kernel "
            f"{tuple(module.kernel_size)}), got {module.input_dilation!r}; use nn.ConvTranspose, or an explicit padding"
        )
    for name in ("conv_general_dilated", "conv_general_dilated_cls"):
        if getattr(module, name) is not None:
            raise ValueError(
                f"{name} must be None with symmetric padding (sympad computes the convolution), got "
                f"{getattr(module, name)!r}; use nn.Conv, or pass implementation= to choose a formulation"
            )
    for field in dataclasses.fields(module):
        if field.name not in _OWN_PATH_FIELDS and field.init and not _is_default(field, getattr(module, field.name)):
            raise ValueError(
                f"{field.name}={getattr(module, field.name)!r} is a field of this flax's nn.Conv that "
                f"sympad's symmetric padding does not implement yet; leave it at its default or use nn.Conv"
            )


def _is_default(field: dataclasses.Field, value: Any) -> bool:
    if field.default is not dataclasses.MISSING:
        default = field.default
    elif field.default_factory is not dataclasses.MISSING:
        default = field.default_factory()
    else:
        return False
    try:
        return value is default or bool(value == default)
    except Exception:  # e.g. arrays, whose == is elementwise
        return False


def conv(kind: str, features: int, *, spatial_dims: int = 2, **kwargs: Any) -> nn.Module:
    """The one factory for spatial convolutions, in the paper's notation.

    Args:
      kind: ``'C3'`` (3x3 'SAME'), ``'C2'``/``'C4'`` (even kernel, XLA's
        asymmetric 'SAME': the extra zero goes bottom/right), ``'C2sp'``/
        ``'C4sp'`` (symmetric padding); generally ``'C<k>'`` or ``'C<k>sp'``.
      features: output channels.
      spatial_dims: number of spatial axes (2 for images).
      **kwargs: passed to the module (strides, use_bias, kernel_init, dtype,
        feature_group_count, name, ...); not ``padding``, which the kind fixes.

    Returns:
      ``nn.Conv`` with ``padding='SAME'`` for ``C<k>`` and :class:`Conv` with
      ``padding='SYMMETRIC'`` for ``C<k>sp``, both with parameters ``kernel``
      ``(k,)*spatial_dims + (C/groups, features)`` and ``bias``.

    Raises:
      ValueError: for an unknown kind (the message gives the valid form).

    Example:

    >>> import jax, jax.numpy as jnp
    >>> from sympad import linen as splinen
    >>> from flax import linen as nn
    >>> splinen.conv("C2sp", 32).padding, type(splinen.conv("C3", 32)) is nn.Conv
    ('SYMMETRIC', True)
    >>> layer = splinen.conv("C4sp", 8, spatial_dims=1, use_bias=False)
    >>> x = jnp.ones((2, 10, 3))   # (N, W, C)
    >>> layer.init(jax.random.key(0), x)["params"]["kernel"].shape
    (4, 3, 8)
    """
    parsed, kernel_size = factory_arguments(kind, spatial_dims, kwargs)
    check_positive("features", features)
    return module_for(parsed, host=nn.Conv, sympad=Conv)(features, kernel_size, padding=parsed.padding, **kwargs)


@functools.cache
def conv_class(kind: str) -> type[nn.Conv]:
    """The conv class that makes a model written for ``nn.Conv`` a model of ``kind``.

    Pass it where the model takes its conv class (``conv: ModuleDef =
    nn.Conv`` in flax's ResNet examples). Every conv with ``padding='SAME'``
    and an extent > 1 (a spatial conv) gets the kind's padding, and each odd
    extent > 1 of its kernel becomes the kind's size (3x3 and 7x7 become 2x2
    for ``'C2sp'``; even kernels keep their size). Pointwise (1x1) convs,
    convs with any other padding (an explicit stem padding, ``'VALID'``, ...)
    and masked convs stay as they are. The class is named ``Conv``, so the
    model's parameter paths stay; for ``C<k>`` it is an ``nn.Conv``, for
    ``C<k>sp`` a :class:`Conv`. The same kind gives the same class.

    Args:
      kind: ``'C<k>'`` or ``'C<k>sp'``, e.g. ``'C2sp'``.

    Returns:
      A subclass of ``nn.Conv`` named ``Conv``, constructed as ``nn.Conv``.

    Raises:
      ValueError: for an unknown kind.

    Example:

    >>> import jax, jax.numpy as jnp
    >>> from sympad import linen as splinen
    >>> C2sp = splinen.conv_class("C2sp")
    >>> C2sp(16, (3, 3)).kernel_size, C2sp(16, (1, 1)).kernel_size, C2sp(16, (7, 7), padding=3).kernel_size
    ((2, 2), (1, 1), (7, 7))
    >>> C2sp(16, (3, 3)).init(jax.random.key(0), jnp.ones((1, 8, 8, 4)))["params"]["kernel"].shape
    (2, 2, 4, 16)
    """
    parsed = parse_kind(kind)
    base = module_for(parsed, host=nn.Conv, sympad=Conv)

    def __post_init__(self) -> None:
        # Rewritten before flax binds the module; a clone sees the kind's padding, not 'SAME',
        # and keeps what it is given.
        kernel_size = kernel_tuple(self.kernel_size)
        if converts(parsed, self.padding, kernel_size, plain=self.mask is None):
            self.kernel_size = converted_kernel_size(parsed, kernel_size)
            self.padding = parsed.padding
        super(converted, self).__post_init__()

    doc = f"``{base.__module__}.{base.__qualname__}`` converted to {parsed.name}: see :func:`sympad.linen.conv_class`."
    converted = type("Conv", (base,), {"__post_init__": __post_init__, "__module__": __name__, "__doc__": doc})
    return converted


@contextlib.contextmanager
def use_kind(kind: str) -> Iterator[None]:
    """Converts, inside the block, every ``nn.Conv`` a model calls as :func:`conv_class` would.

    For models that call ``nn.Conv`` directly rather than take a conv class:
    with ``flax.linen.intercept_methods``, each call of an ``nn.Conv`` (the
    class itself, not subclasses) that :func:`conv_class` would convert runs
    as that conv of ``conv_class(kind)``, in the same scope, so its
    parameters keep their path (their shapes change with the kernel). The
    choice is made when a function is traced, as with
    :func:`sympad.use_implementation`: wrap ``init`` and every ``apply``
    (and the ``jax.jit`` trace of one) in the block.

    Args:
      kind: ``'C<k>'`` or ``'C<k>sp'``, e.g. ``'C2sp'``.

    Raises:
      ValueError: for an unknown kind.

    Example:

    >>> import jax, jax.numpy as jnp
    >>> from flax import linen as nn
    >>> from sympad import linen as splinen
    >>> class Net(nn.Module):
    ...     @nn.compact
    ...     def __call__(self, x):
    ...         x = nn.relu(nn.Conv(8, (3, 3))(x))
    ...         return nn.Conv(8, (1, 1))(x)
    >>> x = jnp.ones((1, 8, 8, 4))
    >>> with splinen.use_kind("C2sp"):
    ...     variables = Net().init(jax.random.key(0), x)
    ...     y = Net().apply(variables, x)
    >>> jax.tree.map(jnp.shape, variables["params"])
    {'Conv_0': {'bias': (8,), 'kernel': (2, 2, 4, 8)}, 'Conv_1': {'bias': (8,), 'kernel': (1, 1, 8, 8)}}
    """
    parsed, converted = parse_kind(kind), conv_class(kind)

    def interceptor(next_fun, args, kwargs, context):
        module = context.module
        if (
            context.method_name != "__call__"
            or type(module) is not nn.Conv
            or not converts(parsed, module.padding, kernel_tuple(module.kernel_size), plain=module.mask is None)
        ):
            return next_fun(*args, **kwargs)
        fields = {f.name: getattr(module, f.name) for f in dataclasses.fields(module)
                  if f.init and f.name not in ("parent", "name")}
        # Bound to the intercepted conv's own scope: the parameters keep its path.
        return converted(**fields, parent=module.scope)(*args, **kwargs)

    with nn.intercept_methods(interceptor):
        yield
