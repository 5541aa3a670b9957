"""paper.figure3's helpers: the He redraw and the Q summaries, against NumPy."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from paper import figure3


def test_untruncated_he_has_fan_in_variance_and_no_truncation():
    params = {"a": jnp.zeros((3, 3, 64, 64)), "b": jnp.zeros((2, 2, 32, 16))}
    drawn = figure3.untruncated_he(params, jax.random.key(0))
    for name, fan_in in (("a", 9 * 64), ("b", 4 * 32)):
        w = np.asarray(drawn[name]).ravel()
        assert w.std() == pytest.approx(np.sqrt(2 / fan_in), rel=0.05)
        # A normal truncated at 2 sigma has no value beyond it; 36k draws of an untruncated one do.
        assert np.abs(w).max() > 2.5 * np.sqrt(2 / fan_in)


def test_summaries_of_the_last_layer():
    rng = np.random.default_rng(0)
    q = rng.uniform(0.1, 2.0, (4, 3, 55))  # (inits, batches, layers)
    per_init = q.mean(axis=1)
    assert figure3.summary(q, normalize=False, geometric=False) == pytest.approx(per_init[:, -1].mean())
    ratio = per_init[:, -1] / per_init[:, 0]
    assert figure3.summary(q, normalize=True, geometric=True) == pytest.approx(np.exp(np.log(ratio).mean()))
    assert figure3.summary(q, normalize=True, geometric=False, inits=2, batches=1) == pytest.approx(
        (q[:2, 0, -1] / q[:2, 0, 0]).mean())
