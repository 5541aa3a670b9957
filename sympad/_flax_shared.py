"""What the Flax modules (:mod:`sympad.linen`, :mod:`sympad.nnx`) share: flax's argument and batch conventions.

A private module of the package: one home for the checks and reshapes both
modules apply the same way, so that neither takes the other's private helpers.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


def kernel_tuple(kernel_size: int | Sequence[int]) -> tuple[int, ...]:
    """``kernel_size`` as a tuple of positive ints."""
    # Same convention as flax: an int means a 1D kernel.
    sizes = (kernel_size,) if isinstance(kernel_size, int) else tuple(kernel_size)
    if not sizes or any(isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1 for k in sizes):
        raise ValueError(f"kernel_size must be a positive int or a sequence of them, got {kernel_size!r}")
    return sizes


def check_positive(name: str, value: Any) -> None:
    """Raises a ValueError naming ``name`` unless ``value`` is a positive int."""
    # Here rather than as a ZeroDivisionError from deep inside the initializer.
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")


def is_unit(value: None | int | Sequence[int]) -> bool:
    """Whether a dilation argument (None, an int, or one per spatial axis) is 1 on every axis."""
    return value is None or all(v == 1 for v in ((value,) if isinstance(value, (int, np.integer)) else value))


def flatten_batch(inputs: jax.Array, num_spatial: int) -> tuple[jax.Array, tuple[int, ...] | None]:
    """Reshapes ``(*batch, *spatial, C)`` to one batch axis, as flax's Conv does.

    Returns the reshaped input and the original batch shape (None if unchanged).
    """
    num_batch = inputs.ndim - (num_spatial + 1)
    if num_batch < 0:
        raise ValueError(
            f"inputs must have shape (*batch, *spatial, C) with {num_spatial} spatial dims, got {inputs.shape}"
        )
    if num_batch == 1:
        return inputs, None
    batch_shape = inputs.shape[:num_batch]
    return jnp.reshape(inputs, (-1,) + inputs.shape[num_batch:]), batch_shape


def restore_batch(y: jax.Array, batch_shape: tuple[int, ...] | None) -> jax.Array:
    """Undoes :func:`flatten_batch` on the output ``y``."""
    if batch_shape is None:
        return y
    return jnp.reshape(y, batch_shape + y.shape[1:])
