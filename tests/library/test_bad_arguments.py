"""The Flax conv factories name a bad argument instead of failing deep inside an initializer."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest
from flax import nnx

from sympad import linen as splinen
from sympad import nnx as spnnx

X = jnp.ones((1, 8, 8, 4))


@pytest.mark.parametrize(("make", "needle"), [
    (lambda: splinen.conv("C2sp", 0), "features must be a positive int, got 0"),
    (lambda: splinen.conv("C3", -3), "features must be a positive int, got -3"),
    (lambda: splinen.conv("C2sp", 8, spatial_dims=0), "spatial_dims must be a positive int, got 0"),
    (lambda: splinen.conv("C2sp", 8, spatial_dims=2.0), "spatial_dims must be a positive int, got 2.0"),
    (lambda: splinen.SymPadConv(0, (2, 2)).init(jax.random.key(0), X), "features must be a positive int"),
    (lambda: splinen.SymPadConv(8, (0, 2)).init(jax.random.key(0), X), "kernel_size must be a positive int"),
    (lambda: spnnx.conv("C2sp", 0, 8, rngs=nnx.Rngs(0)), "in_features must be a positive int, got 0"),
    (lambda: spnnx.conv("C2", 4, -1, rngs=nnx.Rngs(0)), "out_features must be a positive int, got -1"),
    (lambda: spnnx.conv("C2sp", 4, 8, spatial_dims=-1, rngs=nnx.Rngs(0)), "spatial_dims must be a positive int"),
    (lambda: spnnx.SymPadConv(4, 8, (2, 2), rngs=None), "rngs must be an nnx.Rngs"),
    (lambda: spnnx.SymPadConv(4, 8, (2, -2), rngs=nnx.Rngs(0)), "kernel_size must be a positive int"),
])
def test_bad_argument_is_named(make, needle):
    with pytest.raises(ValueError, match=needle.replace("(", r"\(").replace(".", r"\.")):
        make()


def test_good_arguments_still_build():
    assert splinen.conv("C2sp", 8).init(jax.random.key(0), X)["params"]["kernel"].shape == (2, 2, 4, 8)
    assert spnnx.conv("C4sp", 4, 8, rngs=nnx.Rngs(0)).kernel.shape == (4, 4, 4, 8)
    assert splinen.SymPadConv(8, 2).init(jax.random.key(0), jnp.ones((1, 8, 4)))["params"]["kernel"].shape == (2, 4, 8)
