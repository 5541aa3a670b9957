"""Independent NumPy reference for symmetric-padding convolution.

Written from the specification in DESIGN.md section 3 (the authors' 2D table,
written out literally), not from sympad's code, so the tests can catch a wrong
table or a wrong channel split in the library.
"""

from __future__ import annotations

import itertools

import numpy as np

# Side of the extra zero per direction group and odd axis: +1 high (bottom/right), -1 low (top/left).
# 2D: the authors' table, pads [top, bottom, left, right]:
#   group 0 [0,1,0,1], group 1 [1,0,1,0], group 2 [0,1,1,0], group 3 [1,0,0,1].
TABLES = {
    0: [[]],
    1: [[+1], [-1]],
    2: [[+1, +1], [-1, -1], [+1, -1], [-1, +1]],
    # 3D: group 2j puts the extra zero high on the first odd axis and, on odd axis i >= 1, low iff
    # bit i-1 of j is set; group 2j+1 mirrors group 2j (the documented generalisation).
    3: [
        [+1, +1, +1], [-1, -1, -1],
        [+1, -1, +1], [-1, +1, -1],
        [+1, +1, -1], [-1, -1, +1],
        [+1, -1, -1], [-1, +1, +1],
    ],
}


def direction_group(channel: int, channels: int, groups: int, feature_group_count: int) -> int:
    """Direction group of one input channel (DESIGN section 3 rule)."""
    per_fg = channels // feature_group_count
    f, j = divmod(channel, per_fg)
    if per_fg < groups:
        return (f * per_fg + j) % groups
    base, extra = divmod(per_fg, groups)
    bounds = []
    start = 0
    for g in range(groups):
        size = base + (1 if g < extra else 0)
        bounds.append((start, start + size))
        start += size
    for g, (lo, hi) in enumerate(bounds):
        if lo <= j < hi:
            return g
    raise AssertionError("unreachable")


def reference_pads(channels, kernel_size, dilation, feature_group_count):
    """(low, high) zero padding per channel and axis, a Python list."""
    totals = [d * (k - 1) for k, d in zip(kernel_size, dilation)]
    odd = [i for i, t in enumerate(totals) if t % 2]
    table = TABLES[len(odd)]
    pads = []
    for c in range(channels):
        g = direction_group(c, channels, len(table), feature_group_count)
        row = []
        for axis, t in enumerate(totals):
            low = high = t // 2
            if axis in odd:
                side = table[g][odd.index(axis)]
                if side > 0:
                    high += 1
                else:
                    low += 1
            row.append((low, high))
        pads.append(row)
    return pads


def reference_conv(x, w, strides, dilation, feature_group_count=1, pads=None):
    """Convolution with per-channel zero padding, by loops over channels and taps.

    Args:
      x: (N, *spatial, C) float64.
      w: (*k, C // groups, F).
      strides, dilation: per-axis tuples.
      pads: per-channel list of per-axis (low, high); defaults to the symmetric rule.

    Returns:
      (N, *ceil(spatial / strides), F) float64.
    """
    x = np.asarray(x, np.float64)
    w = np.asarray(w, np.float64)
    ndim = x.ndim - 2
    channels = x.shape[-1]
    kernel_size = w.shape[:ndim]
    features = w.shape[-1]
    if pads is None:
        pads = reference_pads(channels, kernel_size, dilation, feature_group_count)
    out_shape = [-(-n // s) for n, s in zip(x.shape[1:-1], strides)]
    out = np.zeros([x.shape[0], *out_shape, features])
    per_in = channels // feature_group_count
    per_out = features // feature_group_count
    for c in range(channels):
        f = c // per_in
        xc = np.pad(x[..., c], [(0, 0)] + list(pads[c]))
        for tap in itertools.product(*[range(k) for k in kernel_size]):
            index = [slice(None)]
            for axis, t in enumerate(tap):
                start = t * dilation[axis]
                index.append(slice(start, start + (out_shape[axis] - 1) * strides[axis] + 1, strides[axis]))
            window = xc[tuple(index)]
            outs = slice(f * per_out, (f + 1) * per_out)
            out[..., outs] += window[..., None] * w[tap + (c - f * per_in, outs)]
    return out
