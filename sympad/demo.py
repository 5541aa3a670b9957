"""Shows the shift problem in numbers: ``python -m sympad.demo [--layers=N]``.

A stack of linear layers with all-ones kernels is applied to a centre impulse;
the centroid of the response moves n/2 px toward the top-left with XLA's 'SAME'
(C2, C4) and stays at the centre with symmetric padding (C2sp, C4sp).
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np

from sympad import KINDS
from sympad import linen as splinen


def impulse(*, channels: int = 8, size: int = 64) -> jax.Array:
    """A unit impulse at the centre ``(size // 2, size // 2)`` of every channel, ``(1, size, size, channels)``."""
    return jnp.zeros((1, size, size, channels)).at[0, size // 2, size // 2, :].set(1.0)


def response_centroid(response: jax.typing.ArrayLike) -> tuple[float, float]:
    """Centroid offset (rows, cols) in px of a response ``(N, H, W, C)`` to :func:`impulse`.

    Summed over the batch and the channels; measured from ``(H // 2, W // 2)``,
    negative is up/left. A stack that keeps the impulse in place gives (0, 0).
    """
    m = np.asarray(response, np.float64).sum(axis=(0, 3))
    rows, cols = np.indices(m.shape)
    return (float((m * rows).sum() / m.sum() - m.shape[0] // 2),
            float((m * cols).sum() / m.sum() - m.shape[1] // 2))


def impulse_centroid(kind: str, *, layers: int, channels: int = 8, size: int = 64) -> tuple[float, float]:
    """Centroid offset (rows, cols) in px of a stack's response to a centre impulse.

    Args:
      kind: kernel kind, e.g. 'C2' or 'C2sp'.
      layers: number of stacked convolutions.
      channels: channels per layer (a multiple of 4 makes C*sp exactly symmetric).
      size: square map size; large enough that the edges do not matter.

    Returns:
      (dy, dx): offset of the response centroid from the impulse; negative is up/left.
    """
    conv = splinen.conv(kind, channels, use_bias=False, kernel_init=jax.nn.initializers.ones)
    x = impulse(channels=channels, size=size)
    params = conv.init(jax.random.key(0), x)

    @jax.jit
    def run(v):
        for _ in range(layers):
            v = conv.apply(params, v)
            v = v / v.sum()  # Keep the magnitude bounded; the centroid is scale-free.
        return v

    return response_centroid(run(x))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=10, help="number of stacked convolutions")
    args = parser.parse_args()
    print(f"Impulse-response centroid after {args.layers} layers (px; negative = up/left):")
    for kind in KINDS:
        dy, dx = impulse_centroid(kind, layers=args.layers)
        print(f"  {kind:5s} dy={dy:+.3f} dx={dx:+.3f}")


if __name__ == "__main__":
    main()
