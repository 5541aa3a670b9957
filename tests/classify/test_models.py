"""Classification models: shapes for every family x kind, parameter counts vs the paper and closed forms."""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sympad
from classify import models
from classify.models.blocks import shift2d, spatial_conv

# Tiny members of every family (built from the same builders the configs use).
TINY = {
    "resnet_cifar": dict(depth=8, width=4),
    "blocks_cifar/shift": dict(block="shift", depth=8, width=6, num_classes=7),
    "blocks_cifar/invert": dict(block="invert", depth=8, width=4, num_classes=7),
    "blocks_cifar/sep": dict(block="sep", depth=8, width=4, num_classes=7),
    "blocks_cifar/c2sp": dict(block="c2sp", depth=8, width=4, num_classes=7),
    "densenet_cifar": dict(depth=10, growth=4),
    "wide_densenet": dict(layers_per_block=1, growth=4),
    "resnet_imagenet": dict(stage_sizes=(1, 1, 1, 1), width=1 / 16, stem_width=8, num_classes=5),
    "densenet_imagenet": dict(stage_sizes=(1, 1, 1, 1), growth=4, num_classes=5),
    "mobilenetv2": dict(width=0.25, stages=((1, 8, 1, 1), (6, 8, 2, 2), (6, 16, 1, 2)), num_classes=5),
}


def _build(family: str, kind: str) -> tuple[models.nn.Module, int]:
    kwargs = dict(TINY[family])
    name = family.split("/")[0]
    model = models.create_model(name, kernel=kind, **kwargs)
    return model, kwargs.get("num_classes", 10)


@pytest.mark.parametrize("family,kind", list(itertools.product(TINY, sympad.KINDS)))
def test_forward_shapes_every_family_and_kind(family, kind):
    model, num_classes = _build(family, kind)
    images = jax.ShapeDtypeStruct((2, 32, 32, 3), jnp.float32)

    def run(x):
        variables = model.init({"params": jax.random.key(0), "dropout": jax.random.key(1)}, x, train=False)
        logits, updates = model.apply(
            variables, x, train=True, mutable=["batch_stats"], rngs={"dropout": jax.random.key(2)}
        )
        return variables, logits, updates

    variables, logits, updates = jax.eval_shape(run, images)
    assert logits.shape == (2, num_classes) and logits.dtype == jnp.float32
    assert jax.tree.structure(updates["batch_stats"]) == jax.tree.structure(variables["batch_stats"])
    # The kind reached every spatial conv: all kernels are 1x1, k x k, or a stem of fixed kind
    # (C3 on CIFAR and MobileNet, C7 on the ImageNet ResNet/DenseNet).
    k = sympad.parse_kind(kind).size
    sizes = {leaf.shape[:2] for leaf in jax.tree.leaves(variables["params"]) if leaf.ndim == 4}
    allowed = {(1, 1), (k, k), (3, 3) if "imagenet" not in family else (7, 7)}
    assert sizes <= allowed
    if family != "blocks_cifar/shift":  # the shift block has no spatial conv besides the stem
        assert (k, k) in sizes


def test_symmetric_kinds_change_the_function_not_the_parameters():
    c2 = models.resnet_cifar(depth=8, width=4, kernel="C2")
    c2sp = models.resnet_cifar(depth=8, width=4, kernel="C2sp")

    @jax.jit  # one compilation for all three calls
    def run(x):
        # rbg: a threefry init of ~20 parameters takes ~10 s to compile on CPU.
        variables = c2.init(jax.random.key(1, impl="rbg"), x, train=False)
        return variables, c2.apply(variables, x, train=False), c2sp.apply(variables, x, train=False)

    x = jax.random.normal(jax.random.key(0), (2, 8, 8, 3))
    variables, y2, y2sp = run(x)
    assert jax.tree.structure(variables) == jax.tree.structure(
        jax.eval_shape(lambda x: c2sp.init(jax.random.key(1), x, train=False), x)
    )
    assert np.all(np.isfinite(y2sp))
    assert not np.allclose(y2, y2sp, atol=1e-4)


def test_shift2d_matches_numpy_loop():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 5, 6, 20)).astype(np.float32)
    got = np.asarray(shift2d(jnp.asarray(x), kernel_size=3))
    # 20 channels in 9 groups: the first 20 % 9 = 2 groups get 3 channels, the rest 2.
    sizes = [3, 3] + [2] * 7
    want = np.zeros_like(x)
    c = 0
    for g, size in enumerate(sizes):
        dy, dx = g // 3 - 1, g % 3 - 1
        for ch in range(c, c + size):
            for i in range(5):
                for j in range(6):
                    if 0 <= i + dy < 5 and 0 <= j + dx < 6:
                        want[:, i, j, ch] = x[:, i + dy, j + dx, ch]
        c += size
    np.testing.assert_array_equal(got, want)


def test_pool_downsampling_is_average_pool_then_stride_one_conv():
    from flax import linen as nn

    class One(nn.Module):
        mode: str

        @nn.compact
        def __call__(self, x):
            return spatial_conv(x, "C2sp", 3, strides=2, downsample=self.mode, name="conv")

    x = jax.random.normal(jax.random.key(0), (1, 8, 8, 4))
    pooled = One("pool")
    variables = jax.jit(pooled.init)(jax.random.key(1, impl="rbg"), x)
    kernel = variables["params"]["conv"]["kernel"]
    xp = np.asarray(x).reshape(1, 4, 2, 4, 2, 4).mean(axis=(2, 4))
    want = jax.jit(sympad.sym_pad_conv)(jnp.asarray(xp), kernel)
    np.testing.assert_allclose(jax.jit(pooled.apply)(variables, x), want, atol=1e-5)
    strided = jax.jit(One("stride").apply)(variables, x)
    assert strided.shape == (1, 4, 4, 3) and not np.allclose(strided, want, atol=1e-3)
    with pytest.raises(ValueError, match="downsample"):
        One("avg").init(jax.random.key(1), x)


def _resnet_cifar_closed_form(depth: int, k: int, width: int = 16, classes: int = 10) -> int:
    """Pre-activation ResNet with avg-pool + 1x1 projection shortcuts, counted by hand."""
    n = (depth - 2) // 6
    total = 3 * width * 3 * 3  # C3 stem
    c_in = width
    for stage in range(3):
        c = width * 2**stage
        for _ in range(n):
            total += 2 * c_in + k * k * c_in * c + 2 * c + k * k * c * c
            total += c_in * c if c_in != c else 0
            c_in = c
    return total + 2 * c_in + c_in * classes + classes


@pytest.mark.parametrize("depth,kind", [(20, "C3"), (20, "C2"), (20, "C4sp"), (56, "C2sp"), (110, "C3")])
def test_resnet_cifar_param_count_closed_form(depth, kind):
    k = sympad.parse_kind(kind).size
    assert models.count_params(models.resnet_cifar(depth=depth, kernel=kind), 32) == _resnet_cifar_closed_form(depth, k)


# Table 1 (CIFAR-100): (block, depth) -> params in millions; within 5%.
TABLE1 = {
    ("shift", 20): 0.49, ("shift", 56): 1.48, ("shift", 110): 2.97,
    ("invert", 20): 0.42, ("invert", 56): 1.52, ("invert", 110): 3.17,
    ("sep", 20): 0.51, ("sep", 56): 1.47, ("sep", 110): 2.91,
    ("c2sp", 20): 0.50, ("c2sp", 56): 1.54, ("c2sp", 110): 3.10,
}


@pytest.mark.parametrize("block,depth", list(TABLE1))
def test_table1_param_counts(block, depth):
    got = models.count_params(models.blocks_cifar(block=block, depth=depth, num_classes=100), 32) / 1e6
    assert got == pytest.approx(TABLE1[block, depth], rel=0.05)


def _conv_macs(model, size: int = 32) -> int:
    """Multiply-adds of every convolution in the inference forward, from the jaxpr's conv shapes."""
    images = jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)
    variables = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), images)
    jaxpr = jax.make_jaxpr(lambda v, x: model.apply(v, x, train=False))(variables, images)
    total = 0
    stack = [jaxpr.jaxpr]
    while stack:
        for eqn in stack.pop().eqns:
            if eqn.primitive.name == "conv_general_dilated":
                out, kernel = eqn.outvars[0].aval.shape, eqn.invars[1].aval.shape
                total += int(np.prod(out)) * int(np.prod(kernel[:-1]))  # HWIO: (k, k, C / groups)
            inner = [p for p in eqn.params.values() if hasattr(p, "eqns") or hasattr(p, "jaxpr")]
            stack += [p.jaxpr if hasattr(p, "jaxpr") else p for p in inner]
    return total


# Table 1's complexity column (MFLOPs, i.e. multiply-adds) at depth 20; the definitions reproduce it to 0.1M.
@pytest.mark.parametrize("block,mflops", [("shift", 70.0), ("invert", 76.7), ("sep", 73.6), ("c2sp", 73.2)])
def test_table1_complexity_depth20(block, mflops):
    # Nominal multiply-adds: pin the pad-then-VALID formulation, because the CPU's automatic choice
    # (concat_crop) computes one extra output row per conv and crops it.
    with sympad.use_implementation("pad_select"):
        assert _conv_macs(models.blocks_cifar(block=block, depth=20)) / 1e6 == pytest.approx(mflops, abs=0.15)


# Table 3 (ImageNet): params in millions; within 3%. Counted at 32 px: the counts do not depend on it.
TABLE3 = {
    "ResNet-50 C3": (models.resnet_imagenet, dict(kernel="C3"), 25.5),
    "ResNet-50 C2sp": (models.resnet_imagenet, dict(kernel="C2sp"), 19.3),
    "DenseNet-121 C3": (models.densenet_imagenet, dict(kernel="C3"), 8.0),
    "DenseNet-121 C2sp": (models.densenet_imagenet, dict(kernel="C2sp"), 6.7),
    "ResNet-50 0.5x C3": (models.resnet_imagenet, dict(kernel="C3", width=0.5), 6.9),
    "ResNet-50 0.5x C2": (models.resnet_imagenet, dict(kernel="C2", width=0.5), 5.3),
    "ResNet-50 0.5x C2sp": (models.resnet_imagenet, dict(kernel="C2sp", width=0.5), 5.3),
    "MobileNet-v2 1.4x": (models.mobilenetv2, dict(width=1.4), 6.1),
    "MobileNet-v2 1.0x": (models.mobilenetv2, dict(width=1.0), 3.5),
}


@pytest.mark.parametrize("name", list(TABLE3))
def test_table3_param_counts(name):
    builder, kwargs, paper = TABLE3[name]
    assert models.count_params(builder(**kwargs), 32) / 1e6 == pytest.approx(paper, rel=0.03)


def test_standard_imagenet_definitions_match_reference_counts():
    # torchvision's densenet121 and mobilenet_v2 (1.0x) parameter counts: an independent implementation.
    assert models.count_params(models.densenet_imagenet(), 32) == 7_978_856
    assert models.count_params(models.mobilenetv2(), 32) == 3_504_872


def test_wide_densenet_is_about_three_million():
    # Paper: "approximately 3M" (text), 3.2M (Table 2); see classify/models/densenet.py.
    assert 3.0 <= models.count_params(models.wide_densenet(kernel="C2sp"), 32) / 1e6 <= 3.2


def test_bad_arguments_name_the_argument():
    with pytest.raises(ValueError, match="depth"):
        models.resnet_cifar(depth=21)
    with pytest.raises(ValueError, match="depth"):
        models.densenet_cifar(depth=41)
    with pytest.raises(ValueError, match="block"):
        models.blocks_cifar(block="ghost")
    with pytest.raises(ValueError, match="model name"):
        models.create_model("vgg")
    with pytest.raises(ValueError, match="unknown kernel kind"):
        models.count_params(models.resnet_cifar(depth=8, kernel="C3x"), 8)
