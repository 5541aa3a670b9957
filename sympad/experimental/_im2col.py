"""``im2col``: the convolution as one matrix product over the taps' windows."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from sympad._formulations import Conv, Geometry, conv_pad_select, select_pad, tap_windows


def im2col(x: jax.Array, kernel: jax.Array, geo: Geometry, conv: Conv) -> jax.Array:
    """The taps' shifted windows of the select-padded input side by side, one matmul.

    ``cols[..., tap * C + c]`` is channel ``c`` of the window of ``tap``, so
    ``y = cols @ kernel.reshape(-1, F)``: the conv as a single GEMM over
    ``prod(k) * C``, at the cost of a copy ``prod(k)`` times the input's size.
    Ungrouped convs only (grouped ones run ``pad_select``).

    Args:
      x: ``(N, *spatial, C)``.
      kernel: ``(*k, C // feature_group_count, F)``.
      geo: the call's pads, strides and directions.
      conv: ``lax.conv_general_dilated`` with strides, dilation and layout bound.

    Returns:
      ``(N, *ceil(spatial / strides), F)``.
    """
    if geo.feature_group_count != 1:
        return conv_pad_select(x, kernel, geo, conv)
    xp = select_pad(x, geo.totals, geo.dirs, range(len(geo.totals)))
    cols = jnp.concatenate([w for _, w in tap_windows(xp, kernel.shape[:-2], geo, x.shape[1:-1])], axis=-1)
    return lax.dot_general(
        cols,
        kernel.reshape(-1, kernel.shape[-1]),
        (((cols.ndim - 1,), (0,)), ((), ())),
        precision=conv.keywords.get("precision"),
        preferred_element_type=geo.preferred_element_type,
    )
