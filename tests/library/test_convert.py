"""An existing model switches kind with one change, in every framework: the same parameter paths,
the expected parameter count, forward and gradient under jit, and the impulse response of the
converted stack centred for C2sp and drifting for C2 (sympad.demo's measure).

The linen model is written here in the shape of flax's ResNet examples (examples/imagenet):
the conv class is a field, the stem has an explicit padding, and a block whose shape changes
has a 1x1 projection shortcut.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import linen as nn
from flax import nnx

from sympad import demo
from sympad import linen as splinen
from sympad import nnx as spnnx

try:
    import equinox as eqx

    from sympad import equinox as speqx
except ImportError:  # the equinox extra is optional; its cases skip below
    eqx = speqx = None

needs_equinox = pytest.mark.skipif(
    eqx is None, reason="the equinox extra is not installed (pip install -e '.[equinox]')"
)
X = jnp.asarray(np.random.default_rng(0).standard_normal((2, 16, 16, 3)), jnp.float32)


class ResNetBlock(nn.Module):
    filters: int
    conv: Any
    norm: Any
    act: Callable
    strides: tuple[int, int] = (1, 1)

    @nn.compact
    def __call__(self, x):
        residual = x
        y = self.conv(self.filters, (3, 3), self.strides)(x)
        y = self.act(self.norm()(y))
        y = self.conv(self.filters, (3, 3))(y)
        y = self.norm(scale_init=nn.initializers.zeros_init())(y)
        if residual.shape != y.shape:
            residual = self.conv(self.filters, (1, 1), self.strides, name="conv_proj")(residual)
            residual = self.norm(name="norm_proj")(residual)
        return self.act(residual + y)


class ResNet(nn.Module):
    stage_sizes: Sequence[int] = (1, 1)
    num_classes: int = 10
    num_filters: int = 8
    conv: Any = nn.Conv

    @nn.compact
    def __call__(self, x, train: bool = True):
        conv = functools.partial(self.conv, use_bias=False, dtype=jnp.float32)
        norm = functools.partial(nn.BatchNorm, use_running_average=not train, momentum=0.9, epsilon=1e-5)
        x = conv(self.num_filters, (7, 7), (2, 2), padding=[(3, 3), (3, 3)], name="conv_init")(x)
        x = nn.relu(norm(name="bn_init")(x))
        x = nn.max_pool(x, (3, 3), strides=(2, 2), padding="SAME")
        for i, block_size in enumerate(self.stage_sizes):
            for j in range(block_size):
                strides = (2, 2) if i > 0 and j == 0 else (1, 1)
                x = ResNetBlock(self.num_filters * 2**i, conv=conv, norm=norm, act=nn.relu, strides=strides)(x)
        return nn.Dense(self.num_classes)(jnp.mean(x, axis=(1, 2)))


def _shapes(tree) -> dict[str, tuple[int, ...]]:
    return {jax.tree_util.keystr(path): tuple(leaf.shape) for path, leaf in jax.tree_util.tree_leaves_with_path(tree)}


def _check_counts(before: dict, after: dict, size: int) -> None:
    """Same paths; every 3x3 kernel became size x size (a fraction size**2 / 9 of its weights), the rest stayed."""
    assert before.keys() == after.keys()
    spatial = {path: shape for path, shape in before.items() if shape[:2] == (3, 3) and len(shape) == 4}
    assert len(spatial) >= 4, "a multi-block model"
    for path, shape in before.items():
        assert after[path] == ((size, size) + shape[2:] if path in spatial else shape), path
    weights = lambda shapes, paths: sum(int(np.prod(shapes[p])) for p in paths)
    assert weights(after, spatial) * 9 == weights(before, spatial) * size**2
    others = before.keys() - spatial.keys()
    assert weights(after, others) == weights(before, others)


# --- linen: the same paths, a checkpoint across kinds --------------------------------------------


def _init(model, seed=0):
    return jax.jit(model.init)(jax.random.key(seed), X)


def _shapes_of(model) -> dict[str, tuple[int, ...]]:
    return _shapes(jax.eval_shape(model.init, jax.random.key(0), X))


def test_linen_conv_in_place_of_nn_conv_keeps_paths_and_function():
    reference = _init(ResNet())
    dropin = ResNet(conv=splinen.Conv)
    assert _shapes_of(dropin) == _shapes(reference)
    assert "['params']['ResNetBlock_0']['Conv_0']['kernel']" in _shapes(reference)
    # Odd kernels and the explicit stem: nn.Conv's computation.
    apply = lambda model: jax.jit(functools.partial(model.apply, train=False))(reference, X)
    np.testing.assert_array_equal(apply(dropin), apply(ResNet()))


def test_a_c2_checkpoint_saved_by_orbax_restores_into_the_c2sp_model(tmp_path):
    ocp = pytest.importorskip("orbax.checkpoint")
    c2 = ResNet(conv=splinen.conv_class("C2"))
    c2sp = ResNet(conv=splinen.conv_class("C2sp"))
    variables = jax.tree.map(lambda a: a + 0.01, _init(c2, seed=1))  # not the initial values of either model
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(tmp_path / "c2", variables)
    checkpointer.wait_until_finished()
    restored = checkpointer.restore(tmp_path / "c2", jax.eval_shape(c2sp.init, jax.random.key(0), X))
    jax.tree.map(np.testing.assert_array_equal, restored, variables)
    y_sp = jax.jit(functools.partial(c2sp.apply, train=False))(restored, X)
    y_c2 = jax.jit(functools.partial(c2.apply, train=False))(variables, X)
    assert y_sp.shape == (2, 10) and np.isfinite(y_sp).all()
    assert not np.allclose(y_sp, y_c2, atol=1e-4)  # the same weights, padded another way


# --- one change converts a model -----------------------------------------------------------------


def _train_step(model, variables):
    """One jitted SGD step; returns the new params' finite loss and gradient norm."""

    def loss_fn(params):
        logits, updates = model.apply({**variables, "params": params}, X, mutable=["batch_stats"])
        return optax.softmax_cross_entropy_with_integer_labels(logits, jnp.arange(2)).mean(), updates

    (loss, _), grads = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(variables["params"])
    return float(loss), float(optax.tree.norm(grads))


@pytest.mark.parametrize("kind,size", [("C2sp", 2), ("C4sp", 4), ("C2", 2)])
def test_linen_conv_class_converts_the_3x3_layers_only(kind, size):
    _check_counts(_shapes_of(ResNet()), _shapes_of(ResNet(conv=splinen.conv_class(kind))), size)


def test_linen_conv_class_model_trains_under_jit():
    model = ResNet(conv=splinen.conv_class("C2sp"))
    loss, grad_norm = _train_step(model, _init(model))
    assert np.isfinite(loss) and np.isfinite(grad_norm) and grad_norm > 0


def test_linen_use_kind_converts_a_model_that_calls_nn_conv_as_conv_class_does():
    before = _shapes_of(ResNet())
    with splinen.use_kind("C2sp"):
        variables = _init(ResNet())
        intercepted = jax.jit(functools.partial(ResNet().apply, train=False))(variables, X)
        loss, grad_norm = _train_step(ResNet(), variables)
    _check_counts(before, _shapes(variables), 2)
    assert np.isfinite(loss) and grad_norm > 0
    classed = jax.jit(functools.partial(ResNet(conv=splinen.conv_class("C2sp")).apply, train=False))(variables, X)
    np.testing.assert_allclose(intercepted, classed, atol=1e-5)
    # Outside the block the model is what it was.
    assert _shapes_of(ResNet()) == before


def test_conv_class_is_one_class_per_kind_named_conv():
    c2sp = splinen.conv_class("C2sp")
    assert c2sp is splinen.conv_class("C2sp") and c2sp.__name__ == "Conv"
    assert issubclass(c2sp, splinen.Conv) and issubclass(splinen.conv_class("C2"), nn.Conv)
    assert not issubclass(splinen.conv_class("C2"), splinen.Conv)
    layer = c2sp(4, (5, 3), padding="same")
    assert (layer.kernel_size, layer.padding) == ((2, 2), "SYMMETRIC")
    assert layer.clone().kernel_size == (2, 2)
    assert c2sp(4, (1, 7)).kernel_size == (1, 2)  # a factorized conv: its pointwise axis stays
    assert c2sp(4, (4, 4)).padding == "SYMMETRIC"  # an even kernel keeps its size
    masked = c2sp(4, (3, 3), mask=jnp.ones((3, 3, 2, 4)))
    assert (masked.kernel_size, masked.padding) == ((3, 3), "SAME")
    with pytest.raises(ValueError, match="C<k>"):
        splinen.conv_class("C2SP")


class NnxNet(nnx.Module):
    """Two residual blocks of 3x3 convs, an explicit-padding stem and a 1x1 projection."""

    def __init__(self, rngs: nnx.Rngs):
        self.stem = nnx.Conv(3, 8, (7, 7), strides=2, padding=3, use_bias=False, rngs=rngs)
        self.blocks = nnx.List([
            nnx.List([nnx.Conv(8, 8, (3, 3), rngs=rngs), nnx.Conv(8, 8, (3, 3), rngs=rngs)]) for _ in range(2)
        ])
        self.norm = nnx.BatchNorm(8, rngs=rngs)
        self.proj = nnx.Conv(8, 16, (1, 1), strides=2, rngs=rngs)
        self.head = nnx.Linear(16, 10, rngs=rngs)

    def __call__(self, x):
        x = nnx.relu(self.norm(self.stem(x)))
        for conv1, conv2 in self.blocks:
            x = nnx.relu(x + conv2(nnx.relu(conv1(x))))
        return self.head(self.proj(x).mean(axis=(1, 2)))


def _nnx_shapes(model) -> dict[str, tuple[int, ...]]:
    return _shapes(nnx.state(model, nnx.Param))


def test_nnx_convert_converts_the_3x3_layers_only():
    original = NnxNet(nnx.Rngs(0))
    model = spnnx.convert(original, "C2sp", rngs=nnx.Rngs(1))
    _check_counts(_nnx_shapes(original), _nnx_shapes(model), 2)
    assert type(model.blocks[0][0]) is spnnx.Conv and type(original.blocks[0][0]) is nnx.Conv
    assert model.stem.kernel is original.stem.kernel  # what stays is shared, as nnx.recursive_map does

    @nnx.jit
    def step(m):
        def loss_fn(m):
            return optax.softmax_cross_entropy_with_integer_labels(m(X), jnp.arange(2)).mean()

        return nnx.value_and_grad(loss_fn)(m)

    loss, grads = step(model)
    assert np.isfinite(float(loss)) and float(optax.tree.norm(jax.tree.leaves(grads))) > 0


def test_nnx_convert_keeps_weights_whose_shape_stays():
    c2 = spnnx.convert(NnxNet(nnx.Rngs(0)), "C2", rngs=nnx.Rngs(1))
    c2sp = spnnx.convert(c2, "C2sp", rngs=nnx.Rngs(2))
    np.testing.assert_array_equal(c2sp.blocks[1][0].kernel[...], c2.blocks[1][0].kernel[...])
    assert c2sp.blocks[1][0].padding == "SYMMETRIC" and c2.blocks[1][0].padding == "SAME"
    assert not np.allclose(c2sp(X), c2(X), atol=1e-4)


def _eqx_net(key):
    k = jax.random.split(key, 6)
    return eqx.nn.Sequential([
        eqx.nn.Conv2d(3, 8, 7, stride=2, padding=3, key=k[0]),
        eqx.nn.Conv2d(8, 8, 3, padding="SAME", key=k[1]),
        eqx.nn.Lambda(jax.nn.relu),
        eqx.nn.Conv2d(8, 8, 3, padding="SAME", key=k[2]),
        eqx.nn.Lambda(jax.nn.relu),
        eqx.nn.Conv(2, 8, 8, 3, padding="SAME", key=k[3]),
        eqx.nn.Conv2d(8, 8, 3, padding="SAME", key=k[4]),
        eqx.nn.Conv2d(8, 4, 1, stride=2, key=k[5]),
    ])


@needs_equinox
def test_equinox_convert_converts_the_3x3_layers_only():
    original = _eqx_net(jax.random.key(0))
    model = speqx.convert(original, "C2sp", key=jax.random.key(1))
    flax_layout = lambda m: {p: s[2:] + s[1::-1] for p, s in _shapes(eqx.filter(m, eqx.is_array)).items()
                             if len(s) == 4}
    _check_counts(flax_layout(original), flax_layout(model), 2)
    images = jnp.moveaxis(X, -1, 1)

    @eqx.filter_jit
    def loss_and_grad(m):
        return eqx.filter_value_and_grad(lambda m: jnp.mean(jax.vmap(m)(images) ** 2))(m)

    loss, grads = loss_and_grad(model)
    assert np.isfinite(float(loss)) and float(optax.tree.norm(eqx.filter(grads, eqx.is_array))) > 0


@needs_equinox
def test_equinox_convert_keeps_weights_whose_shape_stays():
    c2 = speqx.convert(_eqx_net(jax.random.key(0)), "C2", key=jax.random.key(1))
    c2sp = speqx.convert(c2, "C2sp", key=jax.random.key(2))
    np.testing.assert_array_equal(c2sp.layers[1].weight, c2.layers[1].weight)
    assert type(c2sp.layers[1]) is speqx.Conv and type(c2.layers[1]) is eqx.nn.Conv
    assert eqx.tree_equal(speqx.convert(c2sp, "C2", key=jax.random.key(3)), c2sp)  # sympad's convs stay


# --- the impulse response of the converted stack -------------------------------------------------

LAYERS, CHANNELS, SIZE = 6, 8, 32
ONES = jax.nn.initializers.ones


class LinenStack(nn.Module):
    conv: Any = nn.Conv

    @nn.compact
    def __call__(self, x):
        for _ in range(LAYERS):
            x = self.conv(CHANNELS, (3, 3), use_bias=False, kernel_init=ONES)(x)
        return x


def _linen_conv_class(kind):
    model = LinenStack(conv=splinen.conv_class(kind))
    impulse = demo.impulse(channels=CHANNELS, size=SIZE)
    return jax.jit(model.apply)(model.init(jax.random.key(0), impulse), impulse)


def _linen_use_kind(kind):
    impulse = demo.impulse(channels=CHANNELS, size=SIZE)
    with splinen.use_kind(kind):
        return jax.jit(LinenStack().apply)(LinenStack().init(jax.random.key(0), impulse), impulse)


def _nnx_convert(kind):
    stack = nnx.Sequential(*[nnx.Conv(CHANNELS, CHANNELS, (3, 3), use_bias=False, kernel_init=ONES, rngs=nnx.Rngs(i))
                             for i in range(LAYERS)])
    stack = spnnx.convert(stack, kind, rngs=nnx.Rngs(0), kernel_init=ONES)
    return nnx.jit(lambda m, a: m(a))(stack, demo.impulse(channels=CHANNELS, size=SIZE))


def _equinox_convert(kind):
    keys = jax.random.split(jax.random.key(0), LAYERS)
    stack = eqx.nn.Sequential([eqx.nn.Conv2d(CHANNELS, CHANNELS, 3, padding="SAME", use_bias=False, key=k)
                               for k in keys])
    stack = speqx.convert(stack, kind, key=jax.random.key(1))
    stack = jax.tree.map(jnp.ones_like, stack)  # all-ones weights, as demo's stacks
    impulse = jnp.moveaxis(demo.impulse(channels=CHANNELS, size=SIZE), -1, 1)
    return jnp.moveaxis(eqx.filter_jit(lambda m, a: jax.vmap(m)(a))(stack, impulse), 1, -1)


@pytest.mark.parametrize("convert", [
    _linen_conv_class, _linen_use_kind, _nnx_convert, pytest.param(_equinox_convert, marks=needs_equinox),
], ids=lambda f: f.__name__.lstrip("_"))
def test_converted_stack_keeps_the_impulse_centred_for_c2sp_and_shifts_it_for_c2(convert):
    dy, dx = demo.response_centroid(convert("C2sp"))
    assert abs(dy) < 1e-3 and abs(dx) < 1e-3
    # XLA's 'SAME' puts each layer's extra zero bottom/right: n layers move it n/2 px up-left.
    np.testing.assert_allclose(demo.response_centroid(convert("C2")), (-LAYERS / 2, -LAYERS / 2), atol=1e-3)
    # The stack before conversion (3x3) does not move it: the drift is the kind's, not the stack's.
    np.testing.assert_allclose(demo.response_centroid(convert("C3")), (0.0, 0.0), atol=1e-3)
