"""Convolution with even-sized kernels and symmetric padding (the paper's C2sp, C4sp).

The op is a thin layer over :func:`jax.lax.conv_general_dilated`:

* Per spatial axis the total zero padding is ``k_eff - 1`` with
  ``k_eff = dilation * (k - 1) + 1``, so the output has ``ceil(in / stride)``
  positions, like ``'SAME'``. A strided output is the stride-1 output sampled at
  ``0, s, 2s, ...``.
* Where that total is even (odd kernels, or even kernels with even dilation) it
  is split evenly: plain symmetric ``'SAME'``.
* Where it is odd on ``m`` of the axes, the input channels of every feature
  group are split into ``2**m`` *direction groups*; each direction group gets
  the one extra zero on its own side of each such axis, so that the half-pixel
  shifts cancel when the convolution sums over input channels.

Direction groups (see :func:`shift_directions`), for the paper's 2D case,
follow the authors' released TensorFlow code (pads as [top, bottom, left, right]):

====== ============== =========================
group  pads           extra zero goes
====== ============== =========================
0      [0, 1, 0, 1]   bottom and right
1      [1, 0, 1, 0]   top and left
2      [0, 1, 1, 0]   bottom and left
3      [1, 0, 0, 1]   top and right
====== ============== =========================

In general, group ``2j`` puts the extra zero on the high side (bottom/right) of
the first odd axis and, for the ``i``-th further odd axis, on the low side when
bit ``i - 1`` of ``j`` is set; group ``2j + 1`` is its mirror image. So in 1D
group 0 pads right and group 1 pads left; every consecutive pair cancels.

Channel assignment within a feature group of ``c`` channels and ``G`` direction
groups:

* ``c >= G``: contiguous blocks; sizes ``c // G`` with the first ``c % G``
  groups one channel larger (the authors' code only warns in that case).
* ``c < G`` (for example depthwise convs, ``c == 1``): channel ``j`` of feature
  group ``f`` takes direction ``(f * c + j) % G``, so directions rotate from one
  feature group to the next and every direction holds an equal share (+-1) of
  the layer's channels.

Several formulations compute the same result (see :data:`IMPLEMENTATIONS`); the
tests run every one of them against a NumPy reference, values and gradients.
``'auto'`` picks among these (written in ``sympad/_formulations.py``):

=================== ==============================================================
``pad_select``      pad every channel on its own sides (one fused select), then
                    one VALID conv.
``pad_concat``      the paper's Figure 1: pad each direction group, concatenate,
                    one VALID conv.
``select_crop``     ``pad_select`` whose conv pads one axis itself (one extra
                    output row, cropped): XLA:CPU's unpadded convs are slow.
``concat_crop``     ``select_crop`` whose padded copy concatenates padded channel
                    runs (``pad_concat``'s copy) instead of selecting per channel.
``embed``           each channel's ``k`` taps placed inside a ``k + 1`` kernel on
                    its own side, one conv with plain symmetric padding: no
                    padded copy and no select, at the FLOPs of the ``k + 1``
                    kernel (C3's for C2sp). Dilation 1 on the odd axes only
                    (else ``pad_select``).
``depthwise_taps``  depthwise convs only (else ``pad_select``): a sum over taps of
                    shifted slices of the select-padded input times per-channel
                    weights; no conv at all.
=================== ==============================================================

``group_sum``, ``split_grad``, ``split_dw`` and ``im2col`` are never picked; they
live in :mod:`sympad.experimental` and stay reachable by name.

A kernel kind's padding rule (:data:`sympad.PADDINGS`) is a value that
:func:`padded_conv` dispatches on: ``'SAME'`` is XLA's, ``'SYMMETRIC'`` this op
wherever the padding is odd on some axis. The modules compute through it.

``'auto'`` picks by backend, rank, kernel size, channels and feature groups
(the decision table in ``sympad/_auto.py``; :func:`choose_implementation` tells what it picks
for a call, :func:`use_implementation` forces a formulation; the measurements are
in BENCHMARKS.md): on CPU ``depthwise_taps`` for 2D depthwise convs, and for
ungrouped 2D convs ``pad_concat`` with 2x2 kernels on at most 32 channels, else
``concat_crop``; on GPU, for ungrouped 2D convs with 2x2 kernels, ``pad_concat`` at
128+ channels, below that ``embed`` for small convs and ``pad_select`` for large
ones; ``pad_select`` everywhere else. On CPU, ``'auto'`` also computes
bfloat16/float16 calls in float32 (XLA:CPU's 16-bit elementwise code is slow; its
convs compute in float32 anyway) and rounds the output once, to the input dtype:
faster, and bit-identical to the 16-bit program wherever we compared them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import threading
from collections.abc import Iterator, Sequence
from typing import Any, Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from sympad._arguments import (
    CHANNELS_LAST,
    as_tuple,
    canonical_specs,
    check_channels,
    check_groups,
    is_int,
    parse_dimension_numbers,
    parse_kernel_size,
    to_layout,
)
from sympad._auto import auto_choice, work_dtype
from sympad._formulations import CORE, Formulation, Geometry, concat_pad, pads_from, select_pad

__all__ = [
    "IMPLEMENTATIONS",
    "channel_pads",
    "choose_implementation",
    "padded_conv",
    "shift_directions",
    "sym_pad_conv",
    "symmetric_pad",
    "use_implementation",
]

Implementation = Literal[
    "auto", "pad_select", "pad_concat", "select_crop", "concat_crop", "embed", "depthwise_taps",
    "group_sum", "split_grad", "split_dw", "im2col",
]
#: Formulations of :func:`sym_pad_conv`: ``'auto'`` (picks one per call), the
#: core ones it picks from, then those of :mod:`sympad.experimental`.
IMPLEMENTATIONS: tuple[str, ...] = (
    "auto",
    "pad_select",
    "pad_concat",
    "select_crop",
    "concat_crop",
    "embed",
    "depthwise_taps",
    "group_sum",
    "split_grad",
    "split_dw",
    "im2col",
)


# ----------------------------------------------------------------------------
# Shift directions.
# ----------------------------------------------------------------------------


def _total_pads(kernel_size: Sequence[int], dilation: Sequence[int]) -> tuple[int, ...]:
    """Total zero padding per axis: ``k_eff - 1``."""
    return tuple(d * (k - 1) for k, d in zip(kernel_size, dilation))


def _direction_table(num_odd_axes: int) -> np.ndarray:
    """Sides of the extra zero per direction group, shape ``(2**m, m)``.

    Entries are ``+1`` (high side: bottom/right) or ``-1`` (low side: top/left).
    """
    if num_odd_axes == 0:
        return np.zeros((1, 0), np.int8)
    rows = []
    for j in range(2 ** (num_odd_axes - 1)):
        row = [1] + [(-1 if (j >> (i - 1)) & 1 else 1) for i in range(1, num_odd_axes)]
        rows.append(row)
        rows.append([-s for s in row])
    return np.asarray(rows, np.int8)


def _group_of_channel(channels: int, num_groups: int, feature_group_count: int) -> np.ndarray:
    """Direction group index of every input channel, shape ``(channels,)``."""
    per_group = channels // feature_group_count
    if num_groups == 1:
        return np.zeros(channels, np.int64)
    if per_group >= num_groups:
        base, extra = divmod(per_group, num_groups)
        sizes = [base + (1 if g < extra else 0) for g in range(num_groups)]
        within = np.repeat(np.arange(num_groups), sizes)
        return np.tile(within, feature_group_count)
    # Fewer channels than directions (depthwise): rotate over feature groups.
    return np.arange(channels) % num_groups


@functools.cache
def _shift_directions_cached(
    channels: int, total_pads: tuple[int, ...], feature_group_count: int
) -> np.ndarray:
    odd_axes = [i for i, t in enumerate(total_pads) if t % 2 == 1]
    table = _direction_table(len(odd_axes))
    groups = _group_of_channel(channels, table.shape[0], feature_group_count)
    out = np.zeros((channels, len(total_pads)), np.int8)
    out[:, odd_axes] = table[groups]
    out.setflags(write=False)
    return out


def shift_directions(
    channels: int,
    kernel_size: Sequence[int],
    *,
    kernel_dilation: int | Sequence[int] = 1,
    feature_group_count: int = 1,
) -> np.ndarray:
    """Which side of each spatial axis gets the extra zero, for every input channel.

    Args:
      channels: number of input channels ``C``, a positive int.
      kernel_size: kernel extent per spatial axis, a sequence such as ``(2, 2)``
        (an int is rejected: nothing here says how many axes it would cover).
      kernel_dilation: dilation per spatial axis (int or sequence).
      feature_group_count: feature groups of the convolution; directions are
        assigned within each group (see the module docstring).

    Returns:
      Read-only int8 array of shape ``(C, len(kernel_size))``: ``+1`` where the
      extra zero goes on the high side (bottom/right), ``-1`` on the low side
      (top/left), ``0`` on axes whose padding is even (no extra zero).

    Raises:
      ValueError: on a bad ``channels``, ``kernel_size``, ``kernel_dilation`` or
        ``feature_group_count``; the message names the argument and what is allowed.
    """
    check_channels(channels)
    kernel_size = parse_kernel_size(kernel_size)
    dilation = as_tuple(kernel_dilation, len(kernel_size), "kernel_dilation")
    check_groups(channels, feature_group_count)
    return _shift_directions_cached(int(channels), _total_pads(kernel_size, dilation), int(feature_group_count))


def channel_pads(
    channels: int,
    kernel_size: Sequence[int],
    *,
    kernel_dilation: int | Sequence[int] = 1,
    feature_group_count: int = 1,
) -> np.ndarray:
    """Zero padding ``(low, high)`` per channel and axis, shape ``(C, ndim, 2)``.

    Arguments and errors as for :func:`shift_directions`.
    """
    check_channels(channels)
    kernel_size = parse_kernel_size(kernel_size)
    dilation = as_tuple(kernel_dilation, len(kernel_size), "kernel_dilation")
    dirs = shift_directions(channels, kernel_size, kernel_dilation=dilation, feature_group_count=feature_group_count)
    return pads_from(_total_pads(kernel_size, dilation), dirs)




# ----------------------------------------------------------------------------
# Padding.
# ----------------------------------------------------------------------------


def symmetric_pad(
    x: jax.typing.ArrayLike,
    kernel_size: int | Sequence[int],
    *,
    kernel_dilation: int | Sequence[int] = 1,
    feature_group_count: int = 1,
) -> jax.Array:
    """Pads a channels-last input so that a ``'VALID'`` conv gives the C*sp result.

    Every channel is padded ``k_eff - 1`` zeros per spatial axis, the odd extra
    zero on the side given by :func:`shift_directions`.

    Args:
      x: input of shape ``(N, *spatial, C)``.
      kernel_size: kernel extent per spatial axis, or an int for the same
        extent on every spatial axis of ``x`` (as ``strides`` in :func:`sym_pad_conv`).
      kernel_dilation: dilation per spatial axis.
      feature_group_count: feature groups of the convolution that follows.

    Returns:
      Array of shape ``(N, *(spatial + k_eff - 1), C)`` and the dtype of ``x``.

    Raises:
      ValueError: if ``x`` does not have one spatial axis per ``kernel_size``
        entry, or on a bad ``kernel_size``, ``kernel_dilation`` or
        ``feature_group_count``; the message names the argument.
    """
    x = jnp.asarray(x)
    if is_int(kernel_size):
        if x.ndim < 3:
            raise ValueError(f"x must have shape (N, *spatial, C) with at least one spatial dim, got shape {x.shape}")
        kernel_size = parse_kernel_size(kernel_size, x.ndim - 2)
    else:
        kernel_size = parse_kernel_size(kernel_size)
    ndim = len(kernel_size)
    if x.ndim != ndim + 2:
        raise ValueError(
            f"x must have shape (N, *spatial, C) with {ndim} spatial dims for "
            f"kernel_size={kernel_size}, got shape {x.shape}"
        )
    if x.shape[-1] < 1:
        raise ValueError(f"x must have at least one channel, got shape {x.shape}")
    return _pad_select(x, kernel_size, as_tuple(kernel_dilation, ndim, "kernel_dilation"), feature_group_count)


def _pad_select(x: jax.Array, kernel_size, dilation, feature_group_count) -> jax.Array:
    """Pads every spatial axis; the odd extra zero per channel by a select
    (on CPU by concatenating channel runs, which XLA:CPU runs faster)."""
    totals = _total_pads(kernel_size, dilation)
    dirs = shift_directions(x.shape[-1], kernel_size, kernel_dilation=dilation, feature_group_count=feature_group_count)
    pad = concat_pad if jax.default_backend() == "cpu" else select_pad
    return pad(x, totals, dirs, range(len(totals)))


# ----------------------------------------------------------------------------
# The op.
# ----------------------------------------------------------------------------


def sym_pad_conv(
    x: jax.typing.ArrayLike,
    kernel: jax.typing.ArrayLike,
    strides: int | Sequence[int] = 1,
    *,
    kernel_dilation: int | Sequence[int] = 1,
    feature_group_count: int = 1,
    dimension_numbers: tuple[str, str, str] | None = None,
    precision: lax.PrecisionLike = None,
    preferred_element_type: jax.typing.DTypeLike | None = None,
    implementation: Implementation = "auto",
) -> jax.Array:
    """Convolution with symmetric padding, output size ``ceil(in / stride)``.

    Drop-in for ``lax.conv_general_dilated(x, kernel, strides, 'SAME', ...)``:
    identical for odd kernels at stride 1 (a strided output is always the
    stride-1 output sampled at ``0, s, 2s, ...``, whereas XLA's strided 'SAME'
    may drop padding and sample other positions), and for even kernels the half-pixel shift of
    ``'SAME'`` cancels over the input channels (C2sp, C4sp; see the module
    docstring for the exact channel-to-direction rule).

    Args:
      x: input, ``(N, *spatial, C)`` by default; 1, 2 or 3 spatial dims.
      kernel: ``(*k, C // feature_group_count, F)`` by default.
      strides: window strides, an int or one per spatial axis.
      kernel_dilation: kernel (atrous) dilation, an int or one per spatial axis.
      feature_group_count: grouped convolution; ``C`` and ``F`` must be
        divisible by it (``C`` for depthwise).
      dimension_numbers: ``None`` for channels-last, or three layout strings
        ``(lhs, rhs, out)`` as in ``lax.conv_general_dilated``, e.g.
        ``('NCHW', 'OIHW', 'NCHW')``.
      precision: passed to ``lax.conv_general_dilated``.
      preferred_element_type: accumulation/output dtype, passed through.
      implementation: formulation, one of :data:`IMPLEMENTATIONS`; all give
        the same result within float tolerance. ``'auto'`` picks per call.

    Returns:
      Output of shape ``(N, *ceil(spatial / strides), F)`` in the layout of
      ``dimension_numbers[2]``.

    Raises:
      ValueError: on inconsistent shapes, bad strides/dilation/groups (not
        positive ints: bools, floats and strings are rejected, not rounded), an
        unknown ``implementation`` or unsupported ``dimension_numbers``; the
        message names the argument, the bad value and what is allowed.
    """
    call = _checked_call(x, kernel, strides, kernel_dilation=kernel_dilation, feature_group_count=feature_group_count,
                         dimension_numbers=dimension_numbers, implementation=implementation)
    y = _conv_channels_last(call, feature_group_count=feature_group_count, precision=precision,
                            preferred_element_type=preferred_element_type, implementation=implementation)
    return to_layout(y, call.specs[2], call.out_spec)


class _ConvCall(NamedTuple):
    """A :func:`sym_pad_conv` call after its checks: channels-last operands, one int per spatial axis."""

    x: jax.Array  # (N, *spatial, C)
    kernel: jax.Array  # (*k, C // feature_group_count, F)
    strides: tuple[int, ...]
    dilation: tuple[int, ...]
    specs: tuple[str, str, str]  # the channels-last layouts of x, kernel and the output
    out_spec: str  # the caller's output layout, dimension_numbers[2]


def _checked_call(x: jax.typing.ArrayLike, kernel: jax.typing.ArrayLike, strides: int | Sequence[int], *,
                  kernel_dilation: int | Sequence[int], feature_group_count: int, dimension_numbers: Any,
                  implementation: str) -> _ConvCall:
    """Checks the arguments of :func:`sym_pad_conv` (its errors, in its order) and brings the
    operands channels-last.

    Raises:
      ValueError: as documented for :func:`sym_pad_conv`.
    """
    x = jnp.asarray(x)
    kernel = jnp.asarray(kernel)
    if x.ndim not in (3, 4, 5):
        raise ValueError(f"x must have 1, 2 or 3 spatial dims (rank 3-5), got shape {x.shape}")
    if kernel.ndim != x.ndim:
        raise ValueError(f"kernel must have the rank of x ({x.ndim}), got kernel shape {kernel.shape} "
                         f"for x shape {x.shape}")
    ndim = x.ndim - 2
    lhs, rhs, out_spec = parse_dimension_numbers(dimension_numbers, ndim)
    strides = as_tuple(strides, ndim, "strides")
    dilation = as_tuple(kernel_dilation, ndim, "kernel_dilation")
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(f"implementation must be one of {IMPLEMENTATIONS}, got {implementation!r}")

    # Work channels-last; XLA folds these transposes into the conv.
    specs = canonical_specs(lhs, rhs, out_spec)
    x = to_layout(x, lhs, specs[0])
    kernel = to_layout(kernel, rhs, specs[1])
    channels = x.shape[-1]
    if channels < 1:
        raise ValueError(f"x must have at least one channel, got shape {x.shape} (layout {lhs})")
    check_groups(channels, feature_group_count)
    if kernel.shape[-2] * feature_group_count != channels:
        raise ValueError(
            f"kernel input channels ({kernel.shape[-2]}) times feature_group_count "
            f"({feature_group_count}) must equal the channels of x ({channels})"
        )
    if kernel.shape[-1] % feature_group_count:
        raise ValueError(
            f"kernel output features ({kernel.shape[-1]}) must be divisible by "
            f"feature_group_count ({feature_group_count})"
        )
    if any(k < 1 for k in kernel.shape[:-2]):
        raise ValueError(f"kernel spatial size must be positive, got {kernel.shape}")
    return _ConvCall(x=x, kernel=kernel, strides=strides, dilation=dilation, specs=specs, out_spec=out_spec)


def _conv_channels_last(call: _ConvCall, *, feature_group_count: int, precision: lax.PrecisionLike,
                        preferred_element_type: jax.typing.DTypeLike | None, implementation: str) -> jax.Array:
    """The conv of a checked call, channels-last ``(N, *ceil(spatial / strides), F)``: plain symmetric
    padding where the total is even on every axis, else the formulation :func:`_choose` picks."""
    x, kernel, strides, dilation = call.x, call.kernel, call.strides, call.dilation
    kernel_size = kernel.shape[:-2]
    conv = functools.partial(
        lax.conv_general_dilated,
        window_strides=strides,
        rhs_dilation=dilation,
        dimension_numbers=call.specs,
        precision=precision,
        preferred_element_type=preferred_element_type,
    )
    totals = _total_pads(kernel_size, dilation)
    if all(t % 2 == 0 for t in totals):
        return conv(x, kernel, padding=[(t // 2, t // 2) for t in totals], feature_group_count=feature_group_count)
    impl = _choose(implementation, x, kernel, feature_group_count)
    geometry = Geometry(
        totals=totals,
        strides=strides,
        dirs=shift_directions(x.shape[-1], kernel_size, kernel_dilation=dilation,
                              feature_group_count=feature_group_count),
        feature_group_count=feature_group_count,
        preferred_element_type=preferred_element_type,
    )
    compute_dtype = work_dtype(implementation, x, kernel)
    if compute_dtype is None:
        return _formulation(impl)(x, kernel, geometry, conv)
    out_dtype = preferred_element_type or x.dtype
    geometry = dataclasses.replace(geometry, preferred_element_type=None)
    return _formulation(impl)(
        x.astype(compute_dtype), kernel.astype(compute_dtype), geometry,
        functools.partial(conv, preferred_element_type=None),
    ).astype(out_dtype)


def padded_conv(
    x: jax.typing.ArrayLike,
    kernel: jax.typing.ArrayLike,
    strides: int | Sequence[int] = 1,
    *,
    padding: str,
    kernel_dilation: int | Sequence[int] = 1,
    feature_group_count: int = 1,
    dimension_numbers: tuple[str, str, str] | None = None,
    precision: lax.PrecisionLike = None,
    preferred_element_type: jax.typing.DTypeLike | None = None,
    implementation: Implementation = "auto",
) -> jax.Array:
    """The convolution of a kernel kind: padded by the rule ``padding`` (:data:`sympad.PADDINGS`).

    * ``'SAME'`` (``C<k>``): XLA's ``'SAME'``, the framework convs' own; for
      an even kernel the extra zero goes bottom/right.
    * ``'SYMMETRIC'`` (``C<k>sp``): :func:`sym_pad_conv` where the total
      padding ``k_eff - 1`` is odd on some axis (even kernels at odd
      dilation); elsewhere (odd kernels) XLA's ``'SAME'``, strides included,
      so that ``C3sp`` is ``C3``.

    The modules of :mod:`sympad.linen`, :mod:`sympad.nnx` and
    :mod:`sympad.equinox` compute their kinds' rules through this function.

    Args:
      x: input, ``(N, *spatial, C)`` by default; 1, 2 or 3 spatial dims.
      kernel: ``(*k, C // feature_group_count, F)`` by default.
      strides: window strides, an int or one per spatial axis.
      padding: the rule, one of the values of :data:`sympad.PADDINGS`.
      kernel_dilation: as for :func:`sym_pad_conv`.
      feature_group_count: as for :func:`sym_pad_conv`.
      dimension_numbers: as for :func:`sym_pad_conv`.
      precision: as for :func:`sym_pad_conv`.
      preferred_element_type: as for :func:`sym_pad_conv`.
      implementation: as for :func:`sym_pad_conv`; it matters where that runs.

    Returns:
      Output of shape ``(N, *ceil(spatial / strides), F)`` in the layout of
      ``dimension_numbers[2]``, for every rule.

    Raises:
      ValueError: for an unknown rule, or the errors of :func:`sym_pad_conv`.

    Example:

    >>> import jax.numpy as jnp
    >>> from sympad.ops import padded_conv
    >>> x, kernel = jnp.ones((1, 8, 8, 4)), jnp.ones((2, 2, 4, 1))
    >>> for rule in ("SAME", "SYMMETRIC"):   # top-left and bottom-right corners of the output
    ...     y = padded_conv(x, kernel, padding=rule)
    ...     print(rule, float(y[0, 0, 0, 0]), float(y[0, -1, -1, 0]))
    SAME 16.0 4.0
    SYMMETRIC 9.0 9.0
    """
    rule = _PADDING_RULES.get(padding) if isinstance(padding, str) else None
    if rule is None:
        raise ValueError(f"padding must be one of {tuple(_PADDING_RULES)} (a kind's padding rule), got {padding!r}")
    return rule(
        x, kernel, strides, kernel_dilation=kernel_dilation, feature_group_count=feature_group_count,
        dimension_numbers=dimension_numbers, precision=precision,
        preferred_element_type=preferred_element_type, implementation=implementation,
    )


def _xla_same_conv(x, kernel, strides, *, kernel_dilation, feature_group_count, dimension_numbers, precision,
                   preferred_element_type, implementation) -> jax.Array:
    """XLA's 'SAME', with the argument checks and layout conventions of :func:`sym_pad_conv`."""
    if implementation not in IMPLEMENTATIONS:  # one formulation here, but the same arguments everywhere
        raise ValueError(f"implementation must be one of {IMPLEMENTATIONS}, got {implementation!r}")
    x, kernel = jnp.asarray(x), jnp.asarray(kernel)
    if x.ndim not in (3, 4, 5) or kernel.ndim != x.ndim:
        raise ValueError(f"x and kernel must have the same rank, 3 to 5, got shapes {x.shape} and {kernel.shape}")
    ndim = x.ndim - 2
    return lax.conv_general_dilated(
        x, kernel, as_tuple(strides, ndim, "strides"), "SAME",
        rhs_dilation=as_tuple(kernel_dilation, ndim, "kernel_dilation"),
        dimension_numbers=parse_dimension_numbers(dimension_numbers, ndim),
        feature_group_count=feature_group_count, precision=precision,
        preferred_element_type=preferred_element_type,
    )


def _symmetric_conv(x, kernel, strides, *, kernel_dilation, dimension_numbers, **kwargs) -> jax.Array:
    """Symmetric where the padding is odd on some axis; XLA's 'SAME' (the same at stride 1) elsewhere."""
    kernel = jnp.asarray(kernel)
    ndim = kernel.ndim - 2
    if ndim in CHANNELS_LAST:
        lhs, rhs, _ = parse_dimension_numbers(dimension_numbers, ndim)
        sizes = [kernel.shape[rhs.index(c)] for c in lhs if c not in "NC"]  # in the order dilation is
        dilation = as_tuple(kernel_dilation, ndim, "kernel_dilation")
        if all(t % 2 == 0 for t in _total_pads(sizes, dilation)):
            return _xla_same_conv(x, kernel, strides, kernel_dilation=kernel_dilation,
                                  dimension_numbers=dimension_numbers, **kwargs)
    return sym_pad_conv(x, kernel, strides, kernel_dilation=kernel_dilation, dimension_numbers=dimension_numbers,
                        **kwargs)


#: How each padding rule of :data:`sympad.PADDINGS` convolves (tests/library/test_dropin.py
#: holds the two tables to the same rules).
_PADDING_RULES = {"SAME": _xla_same_conv, "SYMMETRIC": _symmetric_conv}




# ----------------------------------------------------------------------------
# Choosing a formulation.
# ----------------------------------------------------------------------------

#: Formulations that support feature_group_count=1 only.
_UNGROUPED_ONLY = ("group_sum",)


_forced = threading.local()


@contextlib.contextmanager
def use_implementation(name: str | None) -> Iterator[None]:
    """Makes ``implementation='auto'`` resolve to ``name`` inside the block.

    The public way to force a formulation on convs built by other code (a
    model's layers, a training config's ``conv_implementation``), for
    benchmarks and tests alike. ``'auto'`` restores the measured choice
    inside an enclosing block; ``None`` changes nothing (convenient for an
    optional setting). Blocks nest; on exit the enclosing choice is back.
    The setting is per thread.

    The choice is made when a function is traced, so it applies to the calls
    traced inside the block. jax caches the trace of a Python function per
    argument shapes (also across ``jax.jit`` wrappers of the same function), so
    a function traced before, outside the block or in another, keeps the
    formulation of its first trace: set the choice before the first trace
    (as a training config does), or trace a new function. Where ``name`` does not apply to
    a call (``group_sum`` with feature groups), that call keeps the measured
    choice. Explicit ``implementation=`` arguments are not affected, and on
    CPU a forced 16-bit call still computes in float32, as ``'auto'`` does.

    Example::

        with sympad.use_implementation("pad_concat"):
            y = jax.jit(model.apply)(variables, x)   # every C*sp conv uses pad_concat

    Args:
      name: one of :data:`IMPLEMENTATIONS`, or None.

    Raises:
      ValueError: if ``name`` is not one of :data:`IMPLEMENTATIONS` or None.
    """
    if name is not None and name not in IMPLEMENTATIONS:
        raise ValueError(f"implementation must be one of {IMPLEMENTATIONS} or None, got {name!r}")
    previous = getattr(_forced, "name", None)
    if name is not None:
        _forced.name = None if name == "auto" else name
    try:
        yield
    finally:
        _forced.name = previous


def choose_implementation(x: Any, kernel: Any, *, feature_group_count: int = 1) -> str:
    """The formulation ``implementation='auto'`` uses for this call on the default backend.

    Only consulted where the padding is odd on some axis (even kernels at odd
    dilation): a conv whose total padding is even on every axis (odd kernels)
    is a plain ``'SAME'`` conv, whatever this returns.

    Args:
      x: the input or its shape and dtype (anything with ``.shape`` and ``.dtype``, e.g. a
        ``jax.ShapeDtypeStruct``), channels-last ``(N, *spatial, C)``.
      kernel: the kernel or its shape and dtype, ``(*k, C // feature_group_count, F)``.
      feature_group_count: as in :func:`sym_pad_conv`.

    Returns:
      One of :data:`IMPLEMENTATIONS` other than ``'auto'`` (the one forced by
      :func:`use_implementation`, if any).

    Raises:
      ValueError: if ``x`` or ``kernel`` has no shape, ranks or channels that
        :func:`sym_pad_conv` would reject, or a bad ``feature_group_count``.
    """
    x_shape, kernel_shape = getattr(x, "shape", None), getattr(kernel, "shape", None)
    if x_shape is None or len(x_shape) not in (3, 4, 5):
        got = f"shape {tuple(x_shape)}" if x_shape is not None else f"{type(x).__name__!r} object without .shape"
        raise ValueError(f"x must be channels-last (N, *spatial, C) with 1, 2 or 3 spatial dims, got {got}")
    if kernel_shape is None or len(kernel_shape) != len(x_shape):
        got = (f"shape {tuple(kernel_shape)}" if kernel_shape is not None
               else f"{type(kernel).__name__!r} object without .shape")
        raise ValueError(f"kernel must have the rank of x ({len(x_shape)}), got {got}")
    if x_shape[-1] < 1:
        raise ValueError(f"x must have at least one channel, got shape {tuple(x_shape)}")
    check_groups(x_shape[-1], feature_group_count)
    return _choose("auto", x, kernel, feature_group_count)


def _choose(implementation: str, x: jax.Array, kernel: jax.Array, feature_group_count: int) -> str:
    """The formulation for one call: the explicit one, the forced one, or the measured best."""
    if implementation in _UNGROUPED_ONLY and feature_group_count != 1:
        raise ValueError(f"implementation={implementation!r} supports feature_group_count=1 only")
    if implementation != "auto":
        return implementation
    forced = getattr(_forced, "name", None)
    if forced is not None and not (forced in _UNGROUPED_ONLY and feature_group_count != 1):
        return forced
    return auto_choice(jax.default_backend(), x.shape, kernel.shape, feature_group_count)


def _formulation(name: str) -> Formulation:
    """The formulation called ``name``; the experimental ones are imported on first use."""
    if name in CORE:
        return CORE[name]
    # Imported here, not at the top, so that `import sympad` leaves out the formulations
    # 'auto' never picks (tests/library/test_experimental.py holds it to that).
    from sympad import experimental

    return experimental.FORMULATIONS[name]
