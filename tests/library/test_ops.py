"""sym_pad_conv against an independent NumPy reference, and its properties."""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

import sympad
from tests.library.checks import check as _check
from tests.library.checks import check_gradients
from tests.library.checks import random as _random
from tests.reference import TABLES, reference_conv, reference_pads

#: The core formulations, those ``'auto'`` picks from (the experimental ones: test_experimental.py).
#: depthwise_taps is tested with the depthwise convs it is for.
FORMULATIONS = ["pad_select", "pad_concat", "select_crop", "concat_crop", "embed"]


# The grid of the issue: k {2,4} x strides {1,2} x dilation {1,2} x channels {3,4,5,8,13} x odd/even size.
GRID_2D = list(itertools.product([2, 4], [1, 2], [1, 2], [3, 4, 5, 8, 13], [7, 8]))


@pytest.mark.parametrize("k,stride,dilation,channels,size", GRID_2D)
def test_2d_matches_numpy_reference(k, stride, dilation, channels, size):
    x = _random((2, size, size + 1, channels), seed=channels * 31 + size)
    w = _random((k, k, channels, 3), seed=k * 7 + stride)
    _check(x, w, stride, dilation)


@pytest.mark.parametrize("implementation", FORMULATIONS)
@pytest.mark.parametrize("k,stride,dilation,channels", [
    (2, 1, 1, 5), (4, 2, 1, 13), (2, 2, 1, 8), (4, 1, 2, 3), (3, 1, 1, 4), (2, 1, (1, 2), 6), (2, 1, 3, 5),
    (4, 1, (3, 1), 4),
])
def test_every_formulation_matches_reference(implementation, k, stride, dilation, channels):
    x = _random((2, 9, 8, channels), seed=3)
    w = _random((k, k, channels, 4), seed=4)
    _check(x, w, stride, dilation, implementation=implementation)


@pytest.mark.parametrize(
    "k,stride,dilation,channels,size", list(itertools.product([2, 4], [1, 2], [1, 2], [3, 4, 5], [9, 10]))
)
def test_1d_matches_numpy_reference(k, stride, dilation, channels, size):
    x = _random((3, size, channels), seed=size)
    w = _random((k, channels, 2), seed=k)
    _check(x, w, stride, dilation)


@pytest.mark.parametrize("k,stride,channels", [(2, 1, 8), (2, 2, 13), (4, 1, 5), (4, 2, 3)])
def test_3d_matches_numpy_reference(k, stride, channels):
    x = _random((1, 6, 5, 7, channels), seed=k + channels)
    w = _random((k, k, k, channels, 2), seed=stride)
    _check(x, w, stride, 1)


@pytest.mark.parametrize("implementation", FORMULATIONS)
@pytest.mark.parametrize("ndim,k,stride,channels", [(1, 2, 1, 5), (1, 4, 2, 3), (3, 2, 1, 9), (3, 4, 2, 8)])
def test_1d_and_3d_every_formulation(implementation, ndim, k, stride, channels):
    x = _random((2,) + (7, 6, 5)[:ndim] + (channels,), seed=ndim + k)
    w = _random((k,) * ndim + (channels, 3), seed=channels)
    _check(x, w, stride, 1, implementation=implementation)


@pytest.mark.parametrize("implementation", FORMULATIONS + ["depthwise_taps"])
@pytest.mark.parametrize(
    "channels,groups,features", [(8, 2, 4), (12, 3, 6), (13 * 2, 2, 4), (6, 6, 6), (5, 5, 10), (12, 4, 8)]
)
def test_grouped_and_depthwise_match_reference(implementation, channels, groups, features):
    x = _random((2, 8, 7, channels), seed=channels)
    w = _random((2, 2, channels // groups, features), seed=groups)
    _check(x, w, 1, 1, groups=groups, implementation=implementation)
    w4 = _random((4, 4, channels // groups, features), seed=groups + 1)
    _check(x, w4, 2, 1, groups=groups, implementation=implementation)


@pytest.mark.parametrize("ndim,k,stride,dilation,multiplier", [
    (2, 2, 1, 1, 1), (2, 2, 2, 1, 2), (2, 4, 1, (1, 3), 1), (2, 4, 2, 1, 3), (1, 2, 2, 3, 2), (3, 2, 1, 1, 1),
])
def test_depthwise_taps_values_and_gradients(ndim, k, stride, dilation, multiplier):
    channels = 6
    x = _random((2,) + (9, 8, 5)[:ndim] + (channels,), seed=ndim * 10 + k)
    w = _random((k,) * ndim + (1, channels * multiplier), seed=stride + multiplier)
    _check(x, w, stride, dilation, groups=channels, implementation="depthwise_taps")
    f = lambda a, b: sympad.sym_pad_conv(
        a, b, stride, kernel_dilation=dilation, feature_group_count=channels, implementation="depthwise_taps"
    )
    # Both gradients equal those of a conv formulation (whose gradients
    # test_gradients checks against finite differences and the adjoint).
    g = _random(f(x, w).shape, seed=5)
    conv = lambda a, b: jnp.vdot(
        sympad.sym_pad_conv(a, b, stride, kernel_dilation=dilation, feature_group_count=channels,
                            implementation="pad_select"), g)
    taps_grads = jax.grad(lambda a, b: jnp.vdot(f(a, b), g), argnums=(0, 1))(x, w)
    for got, want in zip(taps_grads, jax.grad(conv, argnums=(0, 1))(x, w)):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-4, rtol=1e-4)


def test_depthwise_taps_bfloat16_accumulates_in_float32():
    x = _random((1, 16, 16, 8), seed=1)
    w = _random((2, 2, 1, 8), seed=2)
    want = reference_conv(x, w, (1, 1), (1, 1), 8)
    x16, w16 = jnp.asarray(x, jnp.bfloat16), jnp.asarray(w, jnp.bfloat16)
    got = sympad.sym_pad_conv(x16, w16, feature_group_count=8, implementation="depthwise_taps")
    assert got.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(got, np.float32), want, atol=0.1, rtol=0.05)


@pytest.mark.parametrize("backend", ["cpu", "gpu", "tpu"])
@pytest.mark.parametrize("shape,k,groups,dilation,choices", [
    ((2, 6, 7, 8), 2, 1, 1, {"cpu": "pad_concat", "gpu": "embed"}),
    ((1, 6, 5, 40), 2, 1, 1, {"cpu": "concat_crop", "gpu": "embed"}),
    ((1, 5, 4, 128), 2, 1, 1, {"cpu": "concat_crop", "gpu": "pad_concat"}),
    ((1, 5, 6, 8), 4, 1, 1, {"cpu": "concat_crop", "gpu": "pad_select"}),
    ((2, 6, 5, 6), 2, 6, 1, {"cpu": "depthwise_taps", "gpu": "pad_select"}),
    ((1, 7, 6, 4), 2, 1, (1, 3), {"cpu": "pad_concat", "gpu": "embed"}),  # embed falls back: dilated odd axis
])
def test_auto_matches_reference_on_every_backend_branch(monkeypatch, backend, shape, k, groups, dilation, choices):
    # The automatic choice branches on jax.default_backend(); every branch must
    # pick a formulation that is exact for the call (run here on the CPU).
    monkeypatch.setattr(jax, "default_backend", lambda: backend)
    x = _random(shape, seed=k + groups)
    w = _random((k, k, shape[-1] // groups, 6 if groups == 1 else shape[-1]), seed=shape[-1])
    assert sympad.choose_implementation(x, w, feature_group_count=groups) == choices.get(backend, "pad_select")
    _check(x, w, 1, dilation, groups=groups, tol=2e-5)


def test_depthwise_directions_are_balanced_over_the_layer():
    # 10 depthwise channels over 4 directions: 3, 3, 2, 2 channels.
    dirs = sympad.shift_directions(10, (2, 2), feature_group_count=10)
    rows = [tuple(r) for r in dirs.tolist()]
    counts = [rows.count(tuple(t)) for t in TABLES[2]]
    assert sorted(counts) == [2, 2, 3, 3]
    assert np.abs(dirs.sum(axis=0)).max() <= 2


def test_rgb_stem_three_channels():
    # 3 channels over 4 direction groups: groups 0, 1, 2 get one channel each.
    assert reference_pads(3, (2, 2), (1, 1), 1) == [[(0, 1), (0, 1)], [(1, 0), (1, 0)], [(0, 1), (1, 0)]]
    x = _random((1, 32, 32, 3), seed=0)
    w = _random((2, 2, 3, 16), seed=1)
    _check(x, w, 1, 1)


def test_channel_pads_follow_authors_table():
    # C = 8: two channels per group, in the authors' order [top, bottom, left, right].
    pads = sympad.channel_pads(8, (2, 2))
    as_tblr = [[p[0][0], p[0][1], p[1][0], p[1][1]] for p in pads.tolist()]
    assert as_tblr == [[0, 1, 0, 1]] * 2 + [[1, 0, 1, 0]] * 2 + [[0, 1, 1, 0]] * 2 + [[1, 0, 0, 1]] * 2
    assert pads.tolist() == [[list(a) for a in row] for row in reference_pads(8, (2, 2), (1, 1), 1)]


def test_equals_four_convolutions_summed():
    """The per-group formulation written here with lax directly (paper eq. 10)."""
    channels = 12
    x = _random((2, 10, 10, channels), seed=5)
    w = _random((2, 2, channels, 6), seed=6)
    table_pads = [[(0, 1), (0, 1)], [(1, 0), (1, 0)], [(0, 1), (1, 0)], [(1, 0), (0, 1)]]
    total = 0
    for g, pads in enumerate(table_pads):
        sl = slice(3 * g, 3 * g + 3)
        total = total + lax.conv_general_dilated(
            x[..., sl], w[:, :, sl], (1, 1), pads, dimension_numbers=("NHWC", "HWIO", "NHWC")
        )
    got = sympad.sym_pad_conv(x, w)
    np.testing.assert_allclose(got, total, atol=1e-5)


def test_symmetric_pad_then_valid_conv():
    x = _random((2, 8, 8, 5), seed=8)
    w = _random((2, 2, 5, 3), seed=9)
    xp = sympad.symmetric_pad(x, (2, 2))
    assert xp.shape == (2, 9, 9, 5)
    valid = lax.conv_general_dilated(xp, w, (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"))
    np.testing.assert_allclose(valid, sympad.sym_pad_conv(x, w), atol=1e-5)
    # Channel 0 (group 0) has its extra zero at the bottom and right.
    assert float(jnp.abs(xp[:, -1, :, 0]).max()) == 0.0 and float(jnp.abs(xp[:, :-1, -1, 0]).max()) == 0.0
    assert float(jnp.abs(xp[:, 0, :-1, 0]).min()) > 0 and float(jnp.abs(xp[:, :-1, 0, 0]).min()) > 0


@pytest.mark.parametrize("backend", ["cpu", "gpu"])  # concat of channel runs / per-channel select
@pytest.mark.parametrize("channels,k,groups", [(5, 2, 1), (13, 4, 1), (6, 2, 6), (12, 2, 3)])
def test_symmetric_pad_matches_reference_pads(monkeypatch, backend, channels, k, groups):
    monkeypatch.setattr(jax, "default_backend", lambda: backend)
    x = _random((2, 6, 7, channels), seed=channels)
    got = np.asarray(sympad.symmetric_pad(x, (k, k), feature_group_count=groups))
    pads = reference_pads(channels, (k, k), (1, 1), groups)
    for c in range(channels):
        want = np.pad(x[..., c], [(0, 0)] + [tuple(p) for p in pads[c]])
        np.testing.assert_array_equal(got[..., c], want)


@pytest.mark.parametrize("k,dilation", [(3, 1), (5, 1), (3, 2), (2, 2), (4, 2)])
def test_even_total_padding_is_plain_same(k, dilation):
    x = _random((2, 9, 8, 6), seed=k)
    w = _random((k, k, 6, 4), seed=dilation)
    expected = lax.conv_general_dilated(
        x, w, (1, 1), "SAME", rhs_dilation=(dilation, dilation), dimension_numbers=("NHWC", "HWIO", "NHWC")
    )
    np.testing.assert_allclose(sympad.sym_pad_conv(x, w, kernel_dilation=dilation), expected, atol=1e-5)


@pytest.mark.parametrize("size,stride", [(7, 2), (8, 2), (9, 3), (1, 2), (5, 1)])
def test_output_size_is_ceil(size, stride):
    x = jnp.ones((1, size, size, 4))
    y = sympad.sym_pad_conv(x, jnp.ones((2, 2, 4, 1)), stride)
    assert y.shape[1:3] == (-(-size // stride),) * 2


@pytest.mark.parametrize("k,size", [(4, 11), (3, 8), (2, 10)])
def test_strided_output_is_subsampled_stride_one_output(k, size):
    # Also for odd kernels, where XLA's strided 'SAME' would pad (0, 1) on an even size instead.
    x = _random((1, size, size, 8), seed=1)
    w = _random((k, k, 8, 3), seed=2)
    full = sympad.sym_pad_conv(x, w, 1)
    np.testing.assert_allclose(sympad.sym_pad_conv(x, w, 2), full[:, ::2, ::2], atol=1e-5)


def test_channels_first_dimension_numbers():
    x = _random((2, 9, 8, 7), seed=11)
    w = _random((2, 2, 7, 5), seed=12)
    expected = sympad.sym_pad_conv(x, w, 2)
    got = sympad.sym_pad_conv(
        jnp.transpose(x, (0, 3, 1, 2)),
        jnp.transpose(w, (3, 2, 0, 1)),
        2,
        dimension_numbers=("NCHW", "OIHW", "NCHW"),
    )
    np.testing.assert_allclose(got, jnp.transpose(expected, (0, 3, 1, 2)), atol=1e-5)


@pytest.mark.parametrize("implementation", FORMULATIONS)
def test_gradients(implementation):
    check_gradients(implementation)


def test_vmap_matches_batched_call():
    x = _random((3, 2, 6, 6, 5), seed=17)
    w = _random((2, 2, 5, 4), seed=18)
    mapped = jax.vmap(lambda a: sympad.sym_pad_conv(a, w))(x)
    direct = sympad.sym_pad_conv(x.reshape(6, 6, 6, 5), w).reshape(3, 2, 6, 6, 4)
    np.testing.assert_allclose(mapped, direct, atol=1e-5)
    # vmap over kernels too.
    ws = _random((3, 2, 2, 5, 4), seed=19)
    per_kernel = jax.vmap(lambda b: sympad.sym_pad_conv(x[0], b))(ws)
    for i in range(3):
        np.testing.assert_allclose(per_kernel[i], reference_conv(x[0], ws[i], (1, 1), (1, 1)), atol=1e-4)


def test_bfloat16_close_to_float32():
    x = _random((2, 8, 8, 8), seed=20)
    w = _random((2, 2, 8, 8), seed=21)
    y16 = jax.jit(sympad.sym_pad_conv)(x.astype(jnp.bfloat16), w.astype(jnp.bfloat16))
    assert y16.dtype == jnp.bfloat16
    expected = reference_conv(x, w, (1, 1), (1, 1))
    np.testing.assert_allclose(np.asarray(y16, np.float32), expected, atol=0.1, rtol=0.05)
    x16, w16 = x.astype(jnp.bfloat16), w.astype(jnp.bfloat16)
    y32 = sympad.sym_pad_conv(x16, w16, preferred_element_type=jnp.float32)
    assert y32.dtype == jnp.float32
    # bfloat16 operands, float32 accumulation: the float64 reference on the same rounded operands,
    # to float32 rounding, and far closer than the bfloat16 result.
    rounded = reference_conv(np.asarray(x16, np.float64), np.asarray(w16, np.float64), (1, 1), (1, 1))
    np.testing.assert_allclose(np.asarray(y32), rounded, rtol=1e-5, atol=1e-5)
    assert np.max(np.abs(np.asarray(y16, np.float64) - rounded)) > 10 * np.max(np.abs(np.asarray(y32) - rounded))


def _intermediate_dtypes(fn, *args) -> set[str]:
    """Float dtypes of the 4D arrays a traced ``fn`` computes (conversions aside)."""
    closed = jax.make_jaxpr(fn)(*args)
    found: set[str] = set()

    def walk(jaxpr):
        for eqn in jaxpr.eqns:
            for param in eqn.params.values():  # into custom_jvp / pjit bodies
                for inner in param if isinstance(param, (list, tuple)) else [param]:
                    if hasattr(inner, "jaxpr"):
                        walk(inner.jaxpr)
            if eqn.primitive.name != "convert_element_type":
                maps = [v.aval for v in eqn.outvars if v.aval.ndim == 4]
                found.update(str(a.dtype) for a in maps if jnp.issubdtype(a.dtype, jnp.floating))

    walk(closed.jaxpr)
    return found


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
@pytest.mark.parametrize("shape,groups", [((2, 6, 7, 8), 1), ((1, 6, 5, 40), 1), ((2, 6, 5, 6), 6)])
def test_auto_on_cpu_computes_16_bit_convs_in_float32(monkeypatch, dtype, shape, groups):
    # XLA:CPU builds padded copies slowly in 16 bits, so 'auto' converts the
    # operands first; the result is rounded once, to the input dtype.
    monkeypatch.setattr(jax, "default_backend", lambda: "cpu")
    x = _random(shape, seed=3)
    w = _random((2, 2, shape[-1] // groups, 6 if groups == 1 else shape[-1]), seed=4)
    g = _random(shape[:-1] + (w.shape[-1],), seed=5)
    x16, w16, g16 = (jnp.asarray(a, dtype) for a in (x, w, g))

    def conv(a, b, implementation="auto"):
        return sympad.sym_pad_conv(a, b, feature_group_count=groups, implementation=implementation)

    y, pullback = jax.vjp(conv, x16, w16)
    dx, dw = pullback(g16)
    assert (y.dtype, dx.dtype, dw.dtype) == (dtype, dtype, dtype)
    # Against the float64 reference on the same 16-bit operands: one rounding.
    x_in, w_in = np.asarray(x16, np.float64), np.asarray(w16, np.float64)
    want = reference_conv(x_in, w_in, (1, 1), (1, 1), groups)
    np.testing.assert_allclose(np.asarray(y, np.float64), want, rtol=1e-2, atol=1e-2)
    _, pullback32 = jax.vjp(lambda a, b: conv(a, b, "pad_select"), x16.astype(jnp.float32), w16.astype(jnp.float32))
    want_dx, want_dw = pullback32(g16.astype(jnp.float32))
    np.testing.assert_allclose(np.asarray(dx, np.float32), want_dx, rtol=1e-2, atol=2e-2)
    np.testing.assert_allclose(np.asarray(dw, np.float32), want_dw, rtol=1e-2, atol=2e-2)
    assert _intermediate_dtypes(conv, x16, w16) == {"float32"}
    # An explicit formulation computes in the dtype it is given.
    assert jnp.dtype(dtype).name in _intermediate_dtypes(lambda a, b: conv(a, b, "pad_select"), x16, w16)
    y32 = sympad.sym_pad_conv(x16, w16, feature_group_count=groups, preferred_element_type=jnp.float32)
    assert y32.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(y32), want, rtol=1e-5, atol=1e-5)


def _impulse_centroid(kind: str, layers: int, channels: int = 8, size: int = 41) -> np.ndarray:
    """Centroid (row, col) of the response of a stack of all-ones linear layers to a centre impulse."""
    k = sympad.parse_kind(kind)
    x = np.zeros((1, size, size, channels), np.float32)
    x[0, size // 2, size // 2, :] = 1.0
    w = jnp.ones((k.size, k.size, channels, channels)) / (k.size**2 * channels)
    y = jnp.asarray(x)
    for _ in range(layers):
        if k.symmetric:
            y = sympad.sym_pad_conv(y, w)
        else:
            y = lax.conv_general_dilated(y, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
    m = np.asarray(y, np.float64).sum(axis=(0, 3))
    rows, cols = np.indices(m.shape)
    return np.array([(m * rows).sum() / m.sum(), (m * cols).sum() / m.sum()]) - size // 2


@pytest.mark.parametrize("kind", ["C2", "C4"])
@pytest.mark.parametrize("layers", [1, 4, 7])
def test_asymmetric_same_shifts_half_pixel_per_layer(kind, layers):
    # Paper eq. 6: XLA's extra bottom/right zero moves the map n/2 px toward the top-left.
    np.testing.assert_allclose(_impulse_centroid(kind, layers), [-layers / 2, -layers / 2], atol=1e-6)


@pytest.mark.parametrize("kind", ["C2sp", "C4sp"])
@pytest.mark.parametrize("layers,channels", [(1, 4), (4, 8), (7, 12)])
def test_symmetric_padding_keeps_centroid(kind, layers, channels):
    np.testing.assert_allclose(_impulse_centroid(kind, layers, channels), [0.0, 0.0], atol=1e-6)


# --- Bad input: ValueError naming the argument. ---


@pytest.mark.parametrize(
    "x_shape,w_shape,kwargs,match",
    [
        ((2, 8, 8, 4), (2, 2, 4), {}, "kernel must have the rank"),
        ((8, 4), (2, 4, 4), {}, "spatial dims"),
        ((2, 8, 8, 4), (2, 2, 3, 4), {}, "kernel input channels"),
        ((2, 8, 8, 6), (2, 2, 3, 4), {"feature_group_count": 4}, "divisible by feature_group_count"),
        ((2, 8, 8, 6), (2, 2, 3, 5), {"feature_group_count": 2}, "output features"),
        ((2, 8, 8, 4), (2, 2, 4, 4), {"strides": 0}, "strides"),
        ((2, 8, 8, 4), (2, 2, 4, 4), {"strides": (1, 2, 3)}, "strides"),
        ((2, 8, 8, 4), (2, 2, 4, 4), {"kernel_dilation": -1}, "kernel_dilation"),
        ((2, 8, 8, 4), (2, 2, 4, 4), {"feature_group_count": 0}, "feature_group_count"),
        ((2, 8, 8, 4), (2, 2, 4, 4), {"dimension_numbers": "NHWC"}, "dimension_numbers"),
        ((2, 8, 8, 4), (2, 2, 4, 4), {"dimension_numbers": ("NHWC", "HWIO")}, "dimension_numbers"),
        ((2, 8, 8, 4), (2, 2, 4, 4), {"dimension_numbers": ("NHWC", "HWIOX", "NHWC")}, "dimension_numbers"),
        ((2, 8, 8, 4), (2, 2, 4, 4), {"dimension_numbers": ("NHWC", "HWII", "NHWC")}, "dimension_numbers"),
        ((2, 8, 8, 4), (2, 2, 4, 4), {"implementation": "fast"}, "implementation"),
    ],
)
def test_bad_input_raises_value_error(x_shape, w_shape, kwargs, match):
    with pytest.raises(ValueError, match=match):
        sympad.sym_pad_conv(jnp.ones(x_shape), jnp.ones(w_shape), **kwargs)


def test_symmetric_pad_rank_error():
    with pytest.raises(ValueError, match="spatial dims"):
        sympad.symmetric_pad(jnp.ones((8, 8, 4)), (2, 2))
