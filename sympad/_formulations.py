"""The formulations of :func:`sympad.sym_pad_conv`: ways to compute one C*sp conv.

Each is ``f(x, kernel, geometry, conv) -> y`` on channels-last operands, where
``geometry`` (:class:`Geometry`) holds the call's stride-1 pads, strides and
per-channel shift directions, and ``conv`` is ``lax.conv_general_dilated`` with
strides, dilation, layout and precision bound. They all compute the same
result; the tests run every one against a NumPy reference, values and
gradients. What the op means, and which formulation a call gets, is
:mod:`sympad.ops`; the measurements behind the choice are in BENCHMARKS.md.

A private module of the package: :mod:`sympad.ops` runs these, and
:mod:`sympad.experimental` builds its formulations on the same interface and
padding helpers.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

# ----------------------------------------------------------------------------
# The interface.
# ----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Geometry:
    """What a formulation needs besides the operands (stride-1 pads per axis)."""

    totals: tuple[int, ...]  # k_eff - 1 per spatial axis
    strides: tuple[int, ...]
    dirs: np.ndarray  # shift_directions: (C, ndim) in {-1, 0, +1}
    feature_group_count: int
    preferred_element_type: Any = None


Conv = Callable[..., jax.Array]  # lax.conv_general_dilated with all but (lhs, rhs, padding, groups) bound
Formulation = Callable[[jax.Array, jax.Array, Geometry, Conv], jax.Array]


# ----------------------------------------------------------------------------
# Padded copies: every channel padded ``k_eff - 1`` zeros per axis, the odd extra
# zero on the side of its direction.
# ----------------------------------------------------------------------------


def pads_from(totals: Sequence[int], dirs: np.ndarray, axes: Sequence[int] | None = None) -> np.ndarray:
    """``(low, high)`` per channel and axis, shape ``(C, ndim, 2)``; ``(0, 0)`` on axes not in ``axes``."""
    totals = np.asarray(totals)
    keep = np.ones(len(totals), bool) if axes is None else np.isin(np.arange(len(totals)), list(axes))
    dirs = dirs.astype(np.int64)
    low = np.where(keep, totals // 2 + (dirs < 0), 0)
    high = np.where(keep, totals // 2 + (dirs > 0), 0)
    return np.stack([low, high], axis=-1)


def _pad_axis(x: jax.Array, axis: int, low: int, high: int) -> jax.Array:
    if low == high == 0:
        return x
    pads = [(0, 0)] * x.ndim
    pads[axis] = (low, high)
    return jnp.pad(x, pads)


def select_pad(x: jax.Array, totals: Sequence[int], dirs: np.ndarray, axes: Sequence[int]) -> jax.Array:
    """Pads the spatial ``axes`` (0-based) of a channels-last ``x`` by ``totals``.

    On an odd axis each channel takes one of two padded copies, ``(h+1, h)`` or
    ``(h, h+1)``, by a select on its direction. Written as pads and a select
    (no slices) so that XLA fuses it into one pass and its transpose, under
    reverse-mode autodiff, is two slices and a select of the cotangent.
    """
    for a in axes:
        t = totals[a]
        half = t // 2
        if t % 2 == 0:
            x = _pad_axis(x, a + 1, half, half)
            continue
        take_low = jnp.asarray(dirs[:, a] < 0)
        x = jnp.where(take_low, _pad_axis(x, a + 1, half + 1, half), _pad_axis(x, a + 1, half, half + 1))
    return x


#: Above this many runs of equal pads (rotating directions), concat_pad selects instead.
_MAX_CONCAT_RUNS = 16


def concat_pad(
    x: jax.Array,
    totals: Sequence[int],
    dirs: np.ndarray,
    axes: Sequence[int],
    max_runs: int | None = _MAX_CONCAT_RUNS,
) -> jax.Array:
    """``select_pad``'s result as pads of channel runs, concatenated.

    XLA:CPU runs the per-channel select slowly, the concatenate of a few
    contiguous runs fast (BENCHMARKS.md, "concat_crop"). With more than
    ``max_runs`` runs (directions rotating over single channels) it selects
    instead.
    """
    pads = pads_from(totals, dirs, axes)
    runs = channel_runs(pads)
    if max_runs is not None and len(runs) > max_runs:
        return select_pad(x, totals, dirs, axes)
    pieces = []
    for a, b in runs:
        spatial = [tuple(int(v) for v in p) for p in pads[a]]
        pieces.append(jnp.pad(lax.slice_in_dim(x, a, b, axis=x.ndim - 1), [(0, 0)] + spatial + [(0, 0)]))
    return jnp.concatenate(pieces, axis=-1) if len(pieces) > 1 else pieces[0]


def channel_runs(pads: np.ndarray) -> list[tuple[int, int]]:
    """``[start, stop)`` of the maximal runs of channels with equal pads."""
    runs, start = [], 0
    for _, run in itertools.groupby(range(len(pads)), key=lambda c: pads[c].tobytes()):
        stop = start + len(list(run))
        runs.append((start, stop))
        start = stop
    return runs


# ----------------------------------------------------------------------------
# The formulations ``'auto'`` picks from.
# ----------------------------------------------------------------------------


def conv_pad_select(x: jax.Array, kernel: jax.Array, geo: Geometry, conv: Conv) -> jax.Array:
    """Pad every channel on its own sides (one fused select), then a VALID conv."""
    xp = select_pad(x, geo.totals, geo.dirs, range(len(geo.totals)))
    return conv(xp, kernel, padding="VALID", feature_group_count=geo.feature_group_count)


def conv_pad_concat(x: jax.Array, kernel: jax.Array, geo: Geometry, conv: Conv) -> jax.Array:
    """The paper's Figure 1: pad each channel group, concatenate, a VALID conv."""
    xp = concat_pad(x, geo.totals, geo.dirs, range(len(geo.totals)), max_runs=None)
    return conv(xp, kernel, padding="VALID", feature_group_count=geo.feature_group_count)


def conv_select_crop(x: jax.Array, kernel: jax.Array, geo: Geometry, conv: Conv, pad=None) -> jax.Array:
    """Like ``pad_select``, but the conv itself pads one axis.

    XLA:CPU's convolution runs several times slower with no padding at all
    than with some (same output), so when no axis has an even non-zero pad to
    leave to the conv, the conv appends zeros to the high end of one odd axis
    (the one that wastes least), which adds at most one output row there; it
    is cropped. The low side is untouched, so the kept outputs are exact.
    ``pad`` builds the per-channel padded copy (default: the select).
    """
    pad = pad or select_pad
    ndim = len(geo.totals)
    odd = [a for a, t in enumerate(geo.totals) if t % 2]
    even = [a for a, t in enumerate(geo.totals) if t % 2 == 0 and t > 0]
    if even:
        xp = pad(x, geo.totals, geo.dirs, odd)
        padding = [(t // 2, t // 2) if a in even else (0, 0) for a, t in enumerate(geo.totals)]
        return conv(xp, kernel, padding=padding, feature_group_count=geo.feature_group_count)
    xp = pad(x, geo.totals, geo.dirs, range(ndim))
    sizes = x.shape[1:-1]
    # Least waste first, then the longest axis (smallest relative overhang).
    _, extra, axis = min((_overhang(sizes[a], geo.strides[a]) + (a,) for a in odd), key=lambda r: (r[0], -sizes[r[2]]))
    padding = [(0, 0)] * ndim
    padding[axis] = (0, extra)
    y = conv(xp, kernel, padding=padding, feature_group_count=geo.feature_group_count)
    keep = -(-sizes[axis] // geo.strides[axis])
    return lax.slice_in_dim(y, 0, keep, axis=axis + 1)


def conv_concat_crop(x: jax.Array, kernel: jax.Array, geo: Geometry, conv: Conv) -> jax.Array:
    """``select_crop`` with the padded copy built by concatenating channel runs."""
    return conv_select_crop(x, kernel, geo, conv, pad=concat_pad)


def _overhang(size: int, stride: int) -> tuple[float, int]:
    """(wasted fraction, zeros to append) for padding one axis at its high end.

    Appending ``e`` zeros adds ``floor((size-1+e)/stride) - floor((size-1)/stride)``
    outputs; ``e = stride - 1 - (size-1) % stride`` adds none when positive.
    """
    room = stride - 1 - (size - 1) % stride
    if room > 0:
        return 0.0, room
    return 1.0 / (-(-size // stride)), 1


def conv_embed(x: jax.Array, kernel: jax.Array, geo: Geometry, conv: Conv) -> jax.Array:
    """Every channel's taps inside a kernel one larger on each odd axis; one conv.

    On an odd axis (total ``k - 1`` at dilation 1) a channel whose extra zero
    is on the low side sees ``x[i - k/2 + a]`` for tap ``a``, one on the high
    side ``x[i - k/2 + 1 + a]``: both are taps of a ``k + 1`` kernel with
    ``k/2`` zeros on either side, the first at positions ``0..k-1``, the
    second at ``1..k``. So the result is one conv with symmetric padding and a
    kernel whose taps are shifted per input channel (per output feature group
    too, where directions rotate over feature groups). Dilated odd axes cannot
    be embedded (the one-pixel offset is not on the dilated grid) and fall
    back to ``pad_select``.
    """
    kernel_size = kernel.shape[:-2]
    odd = [a for a, t in enumerate(geo.totals) if t % 2]
    if any(geo.totals[a] != kernel_size[a] - 1 for a in odd):
        return conv_pad_select(x, kernel, geo, conv)
    dirs = _kernel_dirs(geo.dirs, kernel.shape[-2], kernel.shape[-1], geo.feature_group_count)
    for a in odd:
        low = jnp.asarray(dirs[..., a] < 0)  # (I, O): taps at 0..k-1, else 1..k
        kernel = jnp.where(low, _pad_axis(kernel, a, 0, 1), _pad_axis(kernel, a, 1, 0))
    padding = [((t + 1) // 2, (t + 1) // 2) if t % 2 else (t // 2, t // 2) for t in geo.totals]
    return conv(x, kernel, padding=padding, feature_group_count=geo.feature_group_count)


def _kernel_dirs(dirs: np.ndarray, in_per_group: int, features: int, groups: int) -> np.ndarray:
    """Directions per kernel entry ``(I, O, ndim)``: input channel ``f * I + i`` for output ``o`` of group ``f``."""
    group_of_output = np.arange(features) // (features // groups)
    channel = group_of_output[None, :] * in_per_group + np.arange(in_per_group)[:, None]
    return dirs[channel]


def conv_depthwise_taps(x: jax.Array, kernel: jax.Array, geo: Geometry, conv: Conv) -> jax.Array:
    """Depthwise convs as a sum of shifted, per-channel-scaled slices: no conv.

    ``y[..., c*m + j] = sum_taps xp[shifted window, c] * kernel[tap, 0, c*m + j]``
    with ``xp`` the select-padded input (``m`` output channels per input
    channel). One elementwise loop nest that XLA fuses, where XLA:CPU's
    depthwise convolution is slow. Other convs fall back to ``pad_select``.
    """
    channels, features = x.shape[-1], kernel.shape[-1]
    if geo.feature_group_count != channels or kernel.shape[-2] != 1:
        return conv_pad_select(x, kernel, geo, conv)
    xp = select_pad(x, geo.totals, geo.dirs, range(len(geo.totals)))
    if features != channels:
        xp = jnp.repeat(xp, features // channels, axis=-1)  # output c*m + j reads input c
    wide = jnp.issubdtype(x.dtype, jnp.floating) and jnp.finfo(x.dtype).bits < 32
    acc_dtype = geo.preferred_element_type or (jnp.float32 if wide else jnp.result_type(x.dtype, kernel.dtype))
    y = None
    for tap, window in tap_windows(xp, kernel.shape[:-2], geo, x.shape[1:-1]):
        term = window.astype(acc_dtype) * kernel[tap + (0,)].astype(acc_dtype)
        y = term if y is None else y + term
    return y.astype(geo.preferred_element_type or jnp.result_type(x.dtype, kernel.dtype))


def tap_windows(
    xp: jax.Array, kernel_size: Sequence[int], geo: Geometry, in_sizes: Sequence[int]
) -> list[tuple[tuple[int, ...], jax.Array]]:
    """``(tap, window)`` for every kernel tap: the strided slice of the padded
    input ``xp`` that the tap multiplies, shape ``(N, *ceil(in_sizes / strides), C)``."""
    dilation = [t // (k - 1) if k > 1 else 1 for t, k in zip(geo.totals, kernel_size)]
    out_sizes = [-(-n // s) for n, s in zip(in_sizes, geo.strides)]
    windows = []
    for tap in itertools.product(*(range(k) for k in kernel_size)):
        start = (0,) + tuple(a * d for a, d in zip(tap, dilation)) + (0,)
        limit = (
            (xp.shape[0],)
            + tuple(st + (o - 1) * s + 1 for st, o, s in zip(start[1:-1], out_sizes, geo.strides))
            + (xp.shape[-1],)
        )
        windows.append((tap, lax.slice(xp, start, limit, (1,) + tuple(geo.strides) + (1,))))
    return windows


#: The formulations ``'auto'`` picks from (``select_crop`` as the base of ``concat_crop``).
CORE: dict[str, Formulation] = {
    "pad_select": conv_pad_select,
    "pad_concat": conv_pad_concat,
    "select_crop": conv_select_crop,
    "concat_crop": conv_concat_crop,
    "embed": conv_embed,
    "depthwise_taps": conv_depthwise_taps,
}
