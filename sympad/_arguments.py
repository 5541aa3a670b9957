"""The argument checks and layouts of the ops in :mod:`sympad.ops`.

Apart from :mod:`sympad.ops` because they say nothing about symmetric padding: how an int or a
sequence becomes one positive int per spatial axis (bools, floats and strings rejected, not
rounded), what feature groups and channels are allowed, and how ``dimension_numbers`` layouts are
read and undone (the op works channels-last inside). Each error names the argument, the bad value
and what is allowed; tests/library/test_arguments.py holds the public functions to that.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

#: The channels-last ``dimension_numbers`` per number of spatial axes (the ops' default layout).
CHANNELS_LAST = {
    1: ("NWC", "WIO", "NWC"),
    2: ("NHWC", "HWIO", "NHWC"),
    3: ("NDHWC", "DHWIO", "NDHWC"),
}


def is_int(value: Any) -> bool:
    """An int or numpy integer, not a bool (``True`` would silently mean 1)."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def int_entries(value: Any) -> tuple[int, ...] | None:
    """The entries of a sequence of ints as a tuple, or None if ``value`` is not one.

    A string is not a sequence of ints here ('22' is not (2, 2)), nor is a sequence
    of floats (``int(1.5)`` would silently be 1).
    """
    if isinstance(value, (str, bytes)):
        return None
    try:
        entries = tuple(value)
    except TypeError:
        return None
    return tuple(int(v) for v in entries) if all(is_int(v) for v in entries) else None


def as_tuple(value: int | Sequence[int], ndim: int, name: str) -> tuple[int, ...]:
    """Broadcasts an int to ``ndim`` positive ints and validates a sequence."""
    values = (int(value),) * ndim if is_int(value) else int_entries(value)
    if values is None:
        # sym_pad_conv(x, kernel, 'SAME') as for lax.conv_general_dilated: there is no padding argument.
        hint = (" (the padding is always the symmetric 'SAME'; there is no padding argument)"
                if isinstance(value, str) else "")
        raise ValueError(f"{name} must be an int or a sequence of {ndim} ints, got {value!r}{hint}")
    if len(values) != ndim:
        raise ValueError(f"{name} must have one entry per spatial dimension ({ndim}), got {value!r}")
    if any(v < 1 for v in values):
        raise ValueError(f"{name} must be positive, got {value!r}")
    return values


def parse_kernel_size(value: int | Sequence[int], ndim: int | None = None) -> tuple[int, ...]:
    """``kernel_size`` as one positive int per spatial axis.

    An int means the same extent on every axis, as ``strides`` and
    ``kernel_dilation`` do, where the number of axes ``ndim`` comes from an
    input; without an input (``ndim=None``) an int cannot say how many axes
    there are, and a silent 1D reading would be wrong for the common 2D case.
    """
    if is_int(value) and ndim is not None:
        return as_tuple(value, ndim, "kernel_size")
    values = int_entries(value)
    if values is None or not values or any(v < 1 for v in values):
        allowed = "a non-empty sequence of positive ints, one per spatial axis, e.g. (2, 2)"
        if ndim is not None:
            allowed += f", or a positive int (the same on all {ndim} axes)"
        elif is_int(value):
            allowed += f" (an int does not say how many axes: ({value},) for 1D, ({value}, {value}) for 2D)"
        raise ValueError(f"kernel_size must be {allowed}; got {value!r}")
    return values


def check_channels(channels: Any) -> None:
    """Raises ValueError unless ``channels`` (of a padding helper) is a positive int."""
    if not is_int(channels) or channels < 1:
        raise ValueError(f"channels must be a positive int (the number of input channels), got {channels!r}")


def check_groups(channels: int, feature_group_count: int) -> None:
    """Raises ValueError unless ``feature_group_count`` is a positive int dividing ``channels`` (>= 1)."""
    if not is_int(feature_group_count) or feature_group_count < 1:
        raise ValueError(f"feature_group_count must be a positive int, got {feature_group_count!r}")
    if channels < 1:
        raise ValueError(f"the input must have at least one channel, got {channels}")
    if channels % feature_group_count:
        raise ValueError(
            f"input channels ({channels}) must be divisible by feature_group_count ({feature_group_count})"
        )


def parse_dimension_numbers(dimension_numbers: Any, ndim: int) -> tuple[str, str, str]:
    """``(lhs, rhs, out)`` layout strings of a call with ``ndim`` spatial axes (None: channels-last).

    Raises:
      ValueError: unless three strings of ``ndim + 2`` letters that lax accepts, with the same
        spatial letters in all three.
    """
    if dimension_numbers is None:
        return CHANNELS_LAST[ndim]
    if (
        not isinstance(dimension_numbers, (tuple, list))
        or len(dimension_numbers) != 3
        or not all(isinstance(s, str) for s in dimension_numbers)
    ):
        raise ValueError(
            "dimension_numbers must be None (channels-last) or a tuple of three layout "
            f"strings such as ('NCHW', 'OIHW', 'NCHW'), got {dimension_numbers!r}"
        )
    lhs, rhs, out = dimension_numbers
    if not (len(lhs) == len(rhs) == len(out) == ndim + 2):
        raise ValueError(
            f"dimension_numbers strings must have {ndim + 2} letters for rank-{ndim + 2} "
            f"inputs, got {dimension_numbers!r}"
        )
    try:
        lax.conv_dimension_numbers((1,) * (ndim + 2), (1,) * (ndim + 2), (lhs, rhs, out))
    except Exception as err:  # lax raises TypeError/AssertionError with terse text.
        raise ValueError(f"unsupported dimension_numbers {dimension_numbers!r}: {err}") from None
    spatial = [c for c in lhs if c not in "NC"]
    if sorted(spatial) != sorted(c for c in rhs if c not in "IO") or sorted(spatial) != sorted(
        c for c in out if c not in "NC"
    ):
        raise ValueError("dimension_numbers must use the same spatial letters in all three strings, "
                         f"got {dimension_numbers!r}")
    return lhs, rhs, out


def to_layout(a: jax.Array, src: str, dst: str) -> jax.Array:
    """``a``, laid out as ``src``, transposed to ``dst`` (the same letters in another order)."""
    if src == dst:
        return a
    return jnp.transpose(a, [src.index(c) for c in dst])


def canonical_specs(lhs: str, rhs: str, out: str) -> tuple[str, str, str]:
    """Channels-last specs with the spatial letters in the order of ``lhs``."""
    spatial = "".join(c for c in lhs if c not in "NC")
    return "N" + spatial + "C", spatial + "IO", "N" + spatial + "C"
