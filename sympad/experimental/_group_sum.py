"""``group_sum``: one exactly padded conv per direction group, summed (paper eq. 10)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from sympad._formulations import Conv, Geometry, channel_runs, pads_from


def group_sum(x: jax.Array, kernel: jax.Array, geo: Geometry, conv: Conv) -> jax.Array:
    """One conv per run of channels with equal pads, each padding itself; summed.

    No padded copy of the input, but ``2**m`` convs of ``C / 2**m`` channels
    each, which lose to one conv of ``C`` channels on the backends measured.
    Partial sums of 16-bit inputs are kept in float32 (unless an output type
    was asked for), so the result is rounded once, as a single conv's is.

    Args:
      x: ``(N, *spatial, C)``.
      kernel: ``(*k, C, F)``; ``feature_group_count=1`` only (``sym_pad_conv``
        rejects grouped calls with a ValueError).
      geo: the call's pads, strides and directions.
      conv: ``lax.conv_general_dilated`` with strides, dilation and layout bound.

    Returns:
      ``(N, *ceil(spatial / strides), F)``.
    """
    pads = pads_from(geo.totals, geo.dirs)
    wide = (
        geo.preferred_element_type is None
        and jnp.issubdtype(x.dtype, jnp.floating)
        and jnp.finfo(x.dtype).bits < 32
    )
    extra = {"preferred_element_type": jnp.float32} if wide else {}
    y = None
    for start, stop in channel_runs(pads):
        xs = lax.slice_in_dim(x, start, stop, axis=x.ndim - 1)
        ks = lax.slice_in_dim(kernel, start, stop, axis=kernel.ndim - 2)
        part = conv(xs, ks, padding=[tuple(int(v) for v in p) for p in pads[start]], feature_group_count=1, **extra)
        y = part if y is None else y + part
    return y.astype(x.dtype) if wide else y
