"""PRNG streams: one independent key per purpose, each a pure function of the run's seed.

A suite names its streams once, in a fixed order, e.g. ``("init", "train", "data", "grid")``;
:func:`stream` is ``fold_in(key(seed), index of the name)``. A run's randomness thus depends on the
seed alone, so a resumed run draws what an uninterrupted one does, and a stream added at the end
of the names changes none of the others.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax

__all__ = ["stream"]


def stream(seed: int, name: str, names: Sequence[str]) -> jax.Array:
    """The key of stream ``name``: ``jax.random.fold_in(jax.random.key(seed), names.index(name))``.

    Args:
      seed: the run's ``config.seed``.
      name: the purpose, one of ``names``.
      names: the suite's streams, in their fixed order.

    Raises:
      ValueError: ``name`` is not one of ``names``.
    """
    if name not in names:
        raise ValueError(f"name must be one of {tuple(names)}, got {name!r}")
    return jax.random.fold_in(jax.random.key(seed), list(names).index(name))
