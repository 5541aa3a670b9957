"""Flax modules and the conv(kind) factory."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn
from flax import nnx

import sympad
from sympad import linen as splinen
from sympad import nnx as spnnx
from tests.reference import reference_conv


def _x(shape=(2, 8, 8, 6), seed=0):
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), jnp.float32)


def test_linen_params_match_flax_conv():
    x = _x()
    ours = splinen.SymPadConv(5, (2, 2)).init(jax.random.key(0), x)
    theirs = nn.Conv(5, (2, 2)).init(jax.random.key(0), x)
    assert jax.tree.map(jnp.shape, ours) == jax.tree.map(jnp.shape, theirs)
    assert jax.tree.map(jnp.shape, ours)["params"] == {"kernel": (2, 2, 6, 5), "bias": (5,)}


def test_linen_equals_pure_function_and_reference():
    x = _x()
    module = splinen.SymPadConv(4, (2, 2), strides=2, bias_init=nn.initializers.normal(1.0))
    params = module.init(jax.random.key(1), x)["params"]
    y = module.apply({"params": params}, x)
    direct = sympad.sym_pad_conv(x, params["kernel"], 2) + params["bias"]
    np.testing.assert_allclose(y, direct, atol=1e-6)
    expected = reference_conv(x, params["kernel"], (2, 2), (1, 1)) + np.asarray(params["bias"])
    np.testing.assert_allclose(y, expected, atol=1e-5)


def test_linen_extra_and_missing_batch_dims():
    module = splinen.SymPadConv(3, (2, 2))
    x = _x((2, 3, 8, 8, 6))
    params = module.init(jax.random.key(0), x)
    y = module.apply(params, x)
    assert y.shape == (2, 3, 8, 8, 3)
    np.testing.assert_allclose(y[1, 2], module.apply(params, x[1, 2]), atol=1e-6)


def test_weights_move_between_c2_and_c2sp():
    x = _x()
    c2 = splinen.conv("C2", 4)
    c2sp = splinen.conv("C2sp", 4)
    params = c2.init(jax.random.key(0), x)
    # The same parameter tree drives both; only the padding differs.
    y_sp = c2sp.apply(params, x)
    y_c2 = c2.apply(params, x)
    assert y_sp.shape == y_c2.shape
    assert not np.allclose(y_sp, y_c2)
    pads = [[(0, 1), (0, 1)]] * 6  # XLA SAME: every channel padded bottom/right.
    want = reference_conv(x, params["params"]["kernel"], (1, 1), (1, 1), pads=pads) + params["params"]["bias"]
    np.testing.assert_allclose(y_c2, want, atol=1e-5)


@pytest.mark.parametrize("kind,module_type,size", [
    ("C3", nn.Conv, 3), ("C2", nn.Conv, 2), ("C4", nn.Conv, 4),
    ("C2sp", splinen.SymPadConv, 2), ("C4sp", splinen.SymPadConv, 4), ("C5", nn.Conv, 5),
])
def test_factory_kinds(kind, module_type, size):
    module = splinen.conv(kind, 7, strides=2, use_bias=False)
    assert type(module) is module_type
    assert tuple(module.kernel_size) == (size, size)
    variables = module.init(jax.random.key(0), _x())
    assert variables["params"]["kernel"].shape == (size, size, 6, 7)
    assert "bias" not in variables["params"]
    assert module.apply(variables, _x()).shape == (2, 4, 4, 7)


def test_factory_c3_is_same_padding():
    x = _x()
    module = splinen.conv("C3", 4)
    params = module.init(jax.random.key(2), x)
    reference = reference_conv(x, params["params"]["kernel"], (1, 1), (1, 1)) + params["params"]["bias"]
    np.testing.assert_allclose(module.apply(params, x), reference, atol=1e-5)


@pytest.mark.parametrize("kind", ["C", "3", "c3", "C2SP", "C0", "C2sym", "", None, "C-2"])
def test_factory_unknown_kind(kind):
    with pytest.raises(ValueError, match="C<k>"):
        splinen.conv(kind, 4)


def test_factory_1d_and_3d():
    y1 = splinen.conv("C2sp", 3, spatial_dims=1)
    v1 = y1.init(jax.random.key(0), _x((2, 9, 4)))
    assert v1["params"]["kernel"].shape == (2, 4, 3)
    y3 = splinen.conv("C4sp", 3, spatial_dims=3)
    v3 = y3.init(jax.random.key(0), _x((1, 5, 5, 5, 4)))
    assert y3.apply(v3, _x((1, 5, 5, 5, 4))).shape == (1, 5, 5, 5, 3)


def test_linen_grouped_channels_error():
    with pytest.raises(ValueError, match="feature_group_count"):
        splinen.SymPadConv(4, (2, 2), feature_group_count=4).init(jax.random.key(0), _x((1, 8, 8, 6)))


def test_nnx_params_match_flax_nnx_conv():
    ours = spnnx.SymPadConv(6, 5, (2, 2), rngs=nnx.Rngs(0))
    theirs = nnx.Conv(6, 5, (2, 2), rngs=nnx.Rngs(0))
    assert ours.kernel.shape == theirs.kernel.shape == (2, 2, 6, 5)
    assert ours.bias.shape == theirs.bias.shape == (5,)
    _, our_state = nnx.split(ours, nnx.Param)
    _, their_state = nnx.split(theirs, nnx.Param)
    assert jax.tree.map(jnp.shape, our_state) == jax.tree.map(jnp.shape, their_state)


def test_nnx_jit_and_grad():
    model = spnnx.conv("C2sp", 6, 3, rngs=nnx.Rngs(0))
    x = _x()

    @nnx.jit
    def loss_and_grad(m, a):
        return nnx.value_and_grad(lambda mm: jnp.mean(mm(a) ** 2))(m)

    loss, grads = loss_and_grad(model, x)
    # Against the NumPy reference: L = mean(y^2) with y = conv(x, W) + b linear in W, so
    # dL/dW[e] = 2/N <y, conv(x, E_e)> for each basis kernel E_e, and dL/db = 2/N sum(y).
    kernel, bias = np.asarray(model.kernel[...], np.float64), np.asarray(model.bias[...], np.float64)
    xs = np.asarray(x, np.float64)
    y = reference_conv(xs, kernel, (1, 1), (1, 1)) + bias
    np.testing.assert_allclose(float(loss), np.mean(y**2), rtol=1e-5)
    want = np.zeros_like(kernel)
    for index in np.ndindex(kernel.shape):
        basis = np.zeros_like(kernel)
        basis[index] = 1.0
        want[index] = 2 / y.size * np.vdot(y, reference_conv(xs, basis, (1, 1), (1, 1)))
    np.testing.assert_allclose(grads.kernel[...], want, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(grads.bias[...], 2 / y.size * y.sum(axis=(0, 1, 2)), rtol=1e-4, atol=1e-6)
    assert isinstance(spnnx.conv("C3", 6, 3, rngs=nnx.Rngs(0)), nnx.Conv)


def test_nnx_channel_mismatch_error():
    model = spnnx.SymPadConv(4, 3, (2, 2), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="in_features"):
        model(_x((1, 8, 8, 6)))


def test_bfloat16_module():
    x = _x().astype(jnp.bfloat16)
    module = splinen.SymPadConv(4, (2, 2), dtype=jnp.bfloat16)
    variables = module.init(jax.random.key(0), x)
    assert variables["params"]["kernel"].dtype == jnp.float32
    assert module.apply(variables, x).dtype == jnp.bfloat16
