"""The three module APIs (flax.linen, flax.nnx, Equinox) in one place: the same kinds, the same
semantics, and weights moved between them give the same outputs.

Weights move by layout only: linen/nnx keep ``kernel`` ``(*k, C/groups, F)`` and ``bias`` ``(F,)``,
Equinox keeps ``weight`` ``(F, C/groups, *k)`` and ``bias`` ``(F, 1, ..., 1)``; the padding is the
module's business, never the weights'.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn
from flax import nnx

from sympad import KINDS
from sympad import linen as splinen
from sympad import nnx as spnnx
from tests.reference import reference_conv

try:
    import equinox as eqx

    from sympad import equinox as speqx
except ImportError:  # the equinox extra is optional; its cases skip below
    eqx = speqx = None

needs_equinox = pytest.mark.skipif(
    eqx is None, reason="the equinox extra is not installed (pip install -e '.[equinox]')"
)


def _x(shape, seed=0):
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), jnp.float32)


def to_equinox(layer, kernel, bias):
    """Writes a flax-layout kernel (*k, I, O) and bias (O,) into an Equinox conv."""
    ndim = kernel.ndim - 2
    weight = jnp.transpose(kernel, (ndim + 1, ndim) + tuple(range(ndim)))
    return eqx.tree_at(lambda conv: (conv.weight, conv.bias), layer, (weight, jnp.reshape(bias, (-1,) + (1,) * ndim)))


def from_equinox(layer):
    """The flax-layout (kernel, bias) of an Equinox conv."""
    ndim = layer.weight.ndim - 2
    return jnp.transpose(layer.weight, tuple(range(2, ndim + 2)) + (1, 0)), jnp.reshape(layer.bias, (-1,))


def _equinox_apply(layer, x):
    """Channels-last batch through an unbatched channels-first Equinox layer."""
    y = jax.vmap(layer)(jnp.moveaxis(x, -1, 1))
    return jnp.moveaxis(y, 1, -1)


FACTORY_KINDS = list(KINDS) + ["C1", "C5", "C3sp"]


@pytest.mark.parametrize("kind", FACTORY_KINDS)
def test_factories_agree_on_kind(kind):
    """Every factory maps a kind to the same family (framework conv vs SymPadConv) and kernel."""
    size = int(kind[1:].removesuffix("sp"))
    symmetric = kind.endswith("sp")
    linen_layer = splinen.conv(kind, 4)
    nnx_layer = spnnx.conv(kind, 3, 4, rngs=nnx.Rngs(0))
    assert type(linen_layer) is (splinen.SymPadConv if symmetric else nn.Conv)
    assert type(nnx_layer) is (spnnx.SymPadConv if symmetric else nnx.Conv)
    assert tuple(linen_layer.kernel_size) == tuple(nnx_layer.kernel_size) == (size, size)
    if eqx is not None:
        eqx_layer = speqx.conv(kind, 3, 4, key=jax.random.key(0))
        assert type(eqx_layer) is (speqx.SymPadConv if symmetric else eqx.nn.Conv)
        assert eqx_layer.kernel_size == (size, size)


@pytest.mark.parametrize("kind", ["C", "c2sp", "C2SP", "C0", "", None])
def test_factories_reject_unknown_kinds(kind):
    with pytest.raises(ValueError, match="C<k>"):
        splinen.conv(kind, 4)
    with pytest.raises(ValueError, match="C<k>"):
        spnnx.conv(kind, 3, 4, rngs=nnx.Rngs(0))
    if eqx is not None:
        with pytest.raises(ValueError, match="C<k>"):
            speqx.conv(kind, 3, 4, key=jax.random.key(0))


def test_factories_reject_padding():
    with pytest.raises(ValueError, match="padding"):
        splinen.conv("C2", 4, padding="VALID")
    with pytest.raises(ValueError, match="padding"):
        spnnx.conv("C2", 3, 4, rngs=nnx.Rngs(0), padding="VALID")
    if eqx is not None:
        with pytest.raises(ValueError, match="padding"):
            speqx.conv("C2", 3, 4, key=jax.random.key(0), padding="VALID")


# kind, spatial dims, channels in/out, strides, feature groups, dilation (a cross-section, not a
# product: the op's own tests cover the grid; here each API must agree on every axis of it).
CASES = [
    ("C2sp", 2, 6, 5, 1, 1, 1),
    ("C2sp", 2, 8, 4, 2, 1, 1),
    ("C2sp", 2, 8, 8, 1, 2, 1),
    ("C2sp", 2, 6, 6, 1, 6, 1),
    ("C2sp", 2, 4, 3, 1, 1, 3),
    ("C4sp", 2, 4, 3, 1, 1, 1),
    ("C4sp", 1, 5, 3, 2, 1, 1),
    ("C2sp", 3, 8, 2, 1, 1, 1),
    ("C3", 2, 6, 5, 1, 1, 1),
    ("C2", 2, 6, 5, 1, 1, 1),
    ("C4", 2, 4, 3, 1, 1, 1),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(map(str, c)))
def test_weights_moved_between_apis_give_the_same_output(case):
    kind, ndim, cin, cout, strides, groups, dilation = case
    x = _x((2,) + (7,) * ndim + (cin,))
    linen_layer = splinen.conv(kind, cout, spatial_dims=ndim, strides=strides, feature_group_count=groups,
                               kernel_dilation=dilation, bias_init=nn.initializers.normal(1.0))
    params = linen_layer.init(jax.random.key(1), x)["params"]
    expected = linen_layer.apply({"params": params}, x)

    nnx_layer = spnnx.conv(kind, cin, cout, spatial_dims=ndim, strides=strides, feature_group_count=groups,
                           kernel_dilation=dilation, rngs=nnx.Rngs(0))
    nnx_layer.kernel[...] = params["kernel"]
    nnx_layer.bias[...] = params["bias"]
    np.testing.assert_allclose(nnx_layer(x), expected, atol=1e-5)

    if kind.endswith("sp"):  # and the semantics are the specification's, not just shared
        reference = reference_conv(x, params["kernel"], (strides,) * ndim, (dilation,) * ndim, groups)
        np.testing.assert_allclose(expected, reference + np.asarray(params["bias"]), atol=1e-4)

    if eqx is not None:
        eqx_layer = speqx.conv(kind, cin, cout, spatial_dims=ndim, stride=strides, groups=groups,
                               dilation=dilation, key=jax.random.key(2))
        eqx_layer = to_equinox(eqx_layer, params["kernel"], params["bias"])
        np.testing.assert_allclose(_equinox_apply(eqx_layer, x), expected, atol=1e-5)
        # And back: an Equinox model's weights load into linen unchanged but for the layout.
        kernel, bias = from_equinox(eqx_layer)
        np.testing.assert_array_equal(kernel, params["kernel"])
        np.testing.assert_array_equal(bias, params["bias"])


@pytest.mark.parametrize("implementation", ["pad_concat", "group_sum", "embed"])
def test_implementation_argument_in_every_api(implementation):
    x = _x((1, 6, 6, 8))
    linen_layer = splinen.SymPadConv(4, (2, 2), implementation=implementation)
    params = linen_layer.init(jax.random.key(3), x)["params"]
    nnx_layer = spnnx.SymPadConv(8, 4, (2, 2), implementation=implementation, rngs=nnx.Rngs(0))
    nnx_layer.kernel[...] = params["kernel"]
    nnx_layer.bias[...] = params["bias"]
    expected = reference_conv(x, params["kernel"], (1, 1), (1, 1)) + np.asarray(params["bias"])
    np.testing.assert_allclose(linen_layer.apply({"params": params}, x), expected, atol=1e-4)
    np.testing.assert_allclose(nnx_layer(x), expected, atol=1e-4)
    if eqx is not None:
        eqx_layer = to_equinox(speqx.SymPadConv(2, 8, 4, 2, implementation=implementation, key=jax.random.key(0)),
                               params["kernel"], params["bias"])
        np.testing.assert_allclose(_equinox_apply(eqx_layer, x), expected, atol=1e-4)


@needs_equinox
def test_parameter_names_and_shapes_map_one_to_one():
    """linen, nnx and Equinox hold the same numbers: kernel/bias vs weight/bias, by a transpose."""
    x = _x((1, 8, 8, 6))
    linen_shapes = jax.tree.map(jnp.shape, splinen.conv("C2sp", 5).init(jax.random.key(0), x)["params"])
    nnx_layer = spnnx.conv("C2sp", 6, 5, rngs=nnx.Rngs(0))
    eqx_layer = speqx.conv("C2sp", 6, 5, key=jax.random.key(0))
    assert linen_shapes == {"kernel": (2, 2, 6, 5), "bias": (5,)}
    assert (nnx_layer.kernel.shape, nnx_layer.bias.shape) == ((2, 2, 6, 5), (5,))
    assert (eqx_layer.weight.shape, eqx_layer.bias.shape) == ((5, 6, 2, 2), (5, 1, 1))
