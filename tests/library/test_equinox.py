"""sympad.equinox: the drop-in for eqx.nn.Conv and its conv(kind) factory."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

eqx = pytest.importorskip("equinox", reason="the equinox extra is not installed (pip install -e '.[equinox]')")

import sympad  # noqa: E402
from sympad import equinox as speqx  # noqa: E402
from tests.reference import reference_conv, reference_pads  # noqa: E402


def _x(shape, seed=0):
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), jnp.float32)


def _channels_last(a):
    return np.moveaxis(np.asarray(a), 0, -1)


def _hwio(weight):
    """eqx weight (O, I, *k) -> the channels-last kernel (*k, I, O) of the op and the reference."""
    w = np.asarray(weight)
    return np.transpose(w, tuple(range(2, w.ndim)) + (1, 0))


def _reference(layer, x):
    """NumPy reference of an unbatched eqx-layout call: (C, *spatial) -> (F, *spatial_out)."""
    y = reference_conv(_channels_last(x)[None], _hwio(layer.weight), layer.stride, layer.dilation, layer.groups)[0]
    y = np.moveaxis(y, -1, 0)
    return y + np.asarray(layer.bias) if layer.bias is not None else y


def test_parameters_are_equinox_conv_parameters():
    ours = speqx.SymPadConv(2, 6, 5, 2, key=jax.random.key(0))
    theirs = eqx.nn.Conv(2, 6, 5, 2, padding="SAME", key=jax.random.key(0))
    assert ours.weight.shape == theirs.weight.shape == (5, 6, 2, 2)
    assert ours.bias.shape == theirs.bias.shape == (5, 1, 1)
    # Same key, same initialization: a C2 model's init is reproduced exactly.
    np.testing.assert_array_equal(ours.weight, theirs.weight)
    np.testing.assert_array_equal(ours.bias, theirs.bias)
    grouped = speqx.SymPadConv(3, 8, 4, (2, 2, 2), groups=4, use_bias=False, key=jax.random.key(1))
    assert grouped.weight.shape == (4, 2, 2, 2, 2) and grouped.bias is None


@pytest.mark.parametrize("num_spatial_dims,kernel_size", [(1, 3), (2, 3), (2, (3, 5)), (3, 3)])
def test_odd_kernels_equal_equinox_same(num_spatial_dims, kernel_size):
    ours = speqx.SymPadConv(num_spatial_dims, 4, 3, kernel_size, key=jax.random.key(2))
    theirs = eqx.nn.Conv(num_spatial_dims, 4, 3, kernel_size, padding="SAME", key=jax.random.key(2))
    x = _x((4,) + (7,) * num_spatial_dims)
    np.testing.assert_allclose(ours(x), theirs(x), atol=1e-5)


CASES = [
    # num_spatial_dims, in, out, kernel_size, stride, dilation, groups
    (2, 6, 5, 2, 1, 1, 1),  # C mod 4 = 2: the first two direction groups one channel larger
    (2, 8, 4, 2, 2, 1, 1),
    (2, 8, 6, 4, 1, 1, 2),
    (2, 6, 6, 2, 1, 1, 6),  # depthwise: directions rotate over the feature groups
    (2, 4, 3, (2, 3), 1, (1, 2), 1),
    (1, 5, 3, 4, 3, 1, 1),
    (3, 8, 2, 2, 1, 1, 1),
    (4, 4, 3, (2, 2, 3, 1), (1, 2, 1, 1), 1, 1),  # beyond sym_pad_conv's 3 axes: the symmetric_pad path
]


@pytest.mark.parametrize("case", CASES)
def test_equals_reference_and_pure_op(case):
    ndim, cin, cout, kernel_size, stride, dilation, groups = case
    layer = speqx.SymPadConv(ndim, cin, cout, kernel_size, stride, dilation=dilation, groups=groups,
                             key=jax.random.key(3))
    x = _x((cin,) + tuple(range(5, 5 + ndim)))
    y = layer(x)
    np.testing.assert_allclose(y, _reference(layer, x), atol=1e-4)
    if ndim <= 3:
        direct = sympad.sym_pad_conv(_channels_last(x)[None], _hwio(layer.weight), stride,
                                     kernel_dilation=dilation, feature_group_count=groups)[0]
        np.testing.assert_allclose(y, np.moveaxis(np.asarray(direct), -1, 0) + layer.bias, atol=1e-5)


def test_four_odd_axes_cancel_the_shift():
    """4 spatial axes, all with an even kernel (16 direction groups, beyond the reference's table):
    with 16 channels the response to a centre impulse stays centred, while eqx's 'SAME' moves it."""
    def centroid(layer):
        x = np.zeros((16,) + (5,) * 4, np.float32)
        x[(slice(None),) + (2,) * 4] = 1.0
        y = np.asarray(layer(x)).sum(axis=0)
        return np.array([np.sum(g * y) / np.sum(y) for g in np.indices(y.shape)])

    ones = lambda m: eqx.tree_at(lambda conv: conv.weight, m, jnp.ones_like(m.weight))
    sym = ones(speqx.SymPadConv(4, 16, 1, 2, use_bias=False, key=jax.random.key(0)))
    same = ones(eqx.nn.Conv(4, 16, 1, 2, padding="SAME", use_bias=False, key=jax.random.key(0)))
    np.testing.assert_allclose(centroid(sym), [2.0] * 4, atol=1e-5)
    np.testing.assert_allclose(centroid(same), [1.5] * 4, atol=1e-5)


def _padded_conv(weight, bias, x):
    """Independent differentiable form: every channel padded by the reference rule, one VALID conv."""
    pads = reference_pads(x.shape[0], weight.shape[2:], (1, 1), 1)
    padded = jnp.stack([jnp.pad(x[c], pads[c]) for c in range(x.shape[0])])
    return lax_valid(padded, weight) + bias


def lax_valid(x, weight):
    return jax.lax.conv_general_dilated(x[None], weight, (1, 1), "VALID")[0]


def test_filter_grad_equals_reference_gradients():
    layer = speqx.SymPadConv(2, 6, 4, 2, key=jax.random.key(4))
    x = _x((6, 8, 8))
    target = _x((4, 8, 8), seed=1)

    @eqx.filter_jit
    @eqx.filter_grad
    def grads(model, a):
        return jnp.sum((model(a) - target) ** 2)

    ours = grads(layer, x)
    expected = jax.jit(jax.grad(lambda w, b: jnp.sum((_padded_conv(w, b, x) - target) ** 2), argnums=(0, 1)))(
        layer.weight, layer.bias)
    np.testing.assert_allclose(ours.weight, expected[0], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(ours.bias, expected[1], rtol=1e-4, atol=1e-4)
    grad_x = jax.jit(jax.grad(lambda a: jnp.sum(layer(a) ** 2)))(x)
    expected_x = jax.jit(jax.grad(lambda a: jnp.sum(_padded_conv(layer.weight, layer.bias, a) ** 2)))(x)
    np.testing.assert_allclose(grad_x, expected_x, rtol=1e-4, atol=1e-4)


def test_filter_vmap_and_jit_batch():
    layer = speqx.SymPadConv(2, 4, 3, 2, stride=2, key=jax.random.key(5))
    batch = _x((3, 4, 7, 7))
    y = eqx.filter_jit(eqx.filter_vmap(layer))(batch)
    assert y.shape == (3, 3, 4, 4)
    for i in range(3):
        np.testing.assert_allclose(y[i], layer(batch[i]), atol=1e-5)


@pytest.mark.parametrize("implementation", ["pad_select", "pad_concat", "embed", "im2col"])
def test_implementation_is_forwarded(implementation):
    layer = speqx.SymPadConv(2, 8, 4, 2, implementation=implementation, key=jax.random.key(6))
    x = _x((8, 6, 6))
    np.testing.assert_allclose(layer(x), _reference(layer, x), atol=1e-4)
    with sympad.use_implementation(implementation):
        assert sympad.choose_implementation(_x((1, 6, 6, 8)), _hwio(layer.weight)) == implementation


def test_dtype_sets_the_parameter_dtype():
    layer = speqx.SymPadConv(2, 8, 4, 2, dtype=jnp.bfloat16, key=jax.random.key(9))
    assert layer.weight.dtype == layer.bias.dtype == jnp.bfloat16
    x = _x((8, 6, 6)).astype(jnp.bfloat16)
    y = layer(x)
    assert y.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(y, np.float32), _reference(layer, np.asarray(x, np.float32)), atol=5e-2)


def test_tiny_model_trains():
    """A two-layer C2sp network fits a fixed target: the loss falls under optax Adam."""
    optax = pytest.importorskip("optax")
    keys = jax.random.split(jax.random.key(7), 2)
    model = eqx.nn.Sequential([
        speqx.conv("C2sp", 1, 8, key=keys[0]),
        eqx.nn.Lambda(jax.nn.relu),
        speqx.conv("C2sp", 8, 1, key=keys[1]),
    ])
    images = _x((16, 1, 8, 8))
    target = jnp.roll(images, 1, axis=-1)  # a one-pixel shift: learnable by a 2x2 kernel
    optimizer = optax.adam(1e-2)
    state = optimizer.init(eqx.filter(model, eqx.is_array))

    @eqx.filter_jit
    def step(model, state):
        loss, grads = eqx.filter_value_and_grad(lambda m: jnp.mean((jax.vmap(m)(images) - target) ** 2))(model)
        updates, state = optimizer.update(grads, state, eqx.filter(model, eqx.is_array))
        return eqx.apply_updates(model, updates), state, loss

    losses = []
    for _ in range(30):
        model, state, loss = step(model, state)
        losses.append(float(loss))
    assert np.all(np.isfinite(losses))
    assert losses[-1] < 0.5 * losses[0]


@pytest.mark.parametrize("kind,module_type,size", [("C3", eqx.nn.Conv, 3), ("C2", eqx.nn.Conv, 2),
                                                   ("C2sp", speqx.SymPadConv, 2), ("C4sp", speqx.SymPadConv, 4)])
def test_factory_kinds(kind, module_type, size):
    layer = speqx.conv(kind, 6, 7, key=jax.random.key(0), stride=2, use_bias=False)
    assert type(layer) is module_type
    assert layer.weight.shape == (7, 6, size, size) and layer.bias is None
    assert layer(_x((6, 8, 8))).shape == (7, 4, 4)
    assert speqx.conv(kind, 6, 7, spatial_dims=1, key=jax.random.key(0)).weight.shape == (7, 6, size)


def test_factory_c2_pads_bottom_right_and_shares_weights_with_c2sp():
    c2 = speqx.conv("C2", 6, 4, key=jax.random.key(8))
    c2sp = speqx.conv("C2sp", 6, 4, key=jax.random.key(8))
    np.testing.assert_array_equal(c2.weight, c2sp.weight)
    x = _x((6, 8, 8))
    expected = reference_conv(_channels_last(x)[None], _hwio(c2.weight), (1, 1), (1, 1),
                              pads=[[(0, 1), (0, 1)]] * 6)[0]
    np.testing.assert_allclose(c2(x), np.moveaxis(expected, -1, 0) + c2.bias, atol=1e-5)
    assert not np.allclose(c2(x), c2sp(x))


@pytest.mark.parametrize("kwargs,match", [
    ({"padding_mode": "REFLECT"}, "padding_mode"),  # 'VALID' and explicit pads: test_dropin.py
    ({"implementation": "fastest"}, "implementation"),
    ({"groups": 4}, "groups"),
    ({"kernel_size": (2, 2, 2)}, "kernel_size"),
    ({"stride": 0}, "stride"),
])
def test_bad_arguments(kwargs, match):
    args = {"kernel_size": 2, **kwargs}
    with pytest.raises(ValueError, match=match):
        speqx.SymPadConv(2, 6, 3, key=jax.random.key(0), **args)


def test_bad_input_and_factory_errors():
    layer = speqx.SymPadConv(2, 6, 3, 2, key=jax.random.key(0))
    with pytest.raises(ValueError, match="in_channels=6"):
        layer(_x((2, 6, 8, 8)))  # batched input: eqx layers are unbatched
    with pytest.raises(ValueError, match="C<k>"):
        speqx.conv("C2SP", 6, 3, key=jax.random.key(0))
    with pytest.raises(ValueError, match="padding"):
        speqx.conv("C2", 6, 3, key=jax.random.key(0), padding="VALID")
