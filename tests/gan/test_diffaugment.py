"""DiffAugment: each policy against a NumPy loop reference given the same drawn parameters, the
parameter ranges of the paper, key handling, gradients, parse_policy, jit / batch 1 / dtypes."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gan import diffaugment
from gan.diffaugment import POLICIES, diff_augment, parse_policy


def _images(shape=(3, 8, 8, 3), seed=0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-1.0, 1.0, shape).astype(np.float32)


# ----------------------------------------------------------------------------------------------
# NumPy references, written from the paper's description, one image and one pixel at a time.


def ref_color(x, brightness, saturation, contrast):
    out = np.empty_like(x, dtype=np.float64)
    for b in range(x.shape[0]):
        img = x[b].astype(np.float64) + brightness[b]
        for i in range(img.shape[0]):
            for j in range(img.shape[1]):
                mean = img[i, j].mean()
                img[i, j] = (img[i, j] - mean) * saturation[b] + mean
        mean = img.mean()
        out[b] = (img - mean) * contrast[b] + mean
    return out


def ref_translate(x, dy, dx):
    n, h, w, _ = x.shape
    out = np.zeros_like(x)
    for b in range(n):
        for i in range(h):
            for j in range(w):
                si, sj = i - dy[b], j - dx[b]
                if 0 <= si < h and 0 <= sj < w:
                    out[b, i, j] = x[b, si, sj]
    return out


def ref_cutout(x, cy, cx):
    n, h, w, _ = x.shape
    sh, sw = int(np.floor(h / 2 + 0.5)), int(np.floor(w / 2 + 0.5))
    out = x.copy()
    for b in range(n):
        top, left = cy[b] - sh // 2, cx[b] - sw // 2
        out[b, max(top, 0) : max(top + sh, 0), max(left, 0) : max(left + sw, 0)] = 0
    return out


def _np(params):
    return [np.asarray(p) for p in params]


def _policy_keys(key):
    return dict(zip(POLICIES, jax.random.split(key, len(POLICIES))))


# ----------------------------------------------------------------------------------------------
# Each op given its parameters.


def test_color_matches_reference():
    x = _images((4, 5, 6, 3))
    params = _np(diffaugment._color_params(jax.random.key(1), 4))
    got = diffaugment._color(jnp.asarray(x), *params)
    np.testing.assert_allclose(got, ref_color(x, *params), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("shape", [(3, 8, 8, 2), (2, 7, 12, 3)])
def test_translate_matches_reference(shape):
    x = _images(shape)
    n = shape[0]
    # Hand-picked shifts (both signs, zero, past the border) and drawn ones.
    for dy, dx in [
        (np.array([1, -2, 0][:n]), np.array([-1, 3, 0][:n])),
        (np.array([9, -9, 0][:n]), np.array([0, 0, 20][:n])),
        _np(diffaugment._translation_params(jax.random.key(2), n, *shape[1:3])),
    ]:
        got = diffaugment._translate(jnp.asarray(x), jnp.asarray(dy, jnp.int32), jnp.asarray(dx, jnp.int32))
        np.testing.assert_array_equal(got, ref_translate(x, dy, dx))


@pytest.mark.parametrize("shape", [(3, 8, 8, 2), (2, 7, 12, 3), (2, 6, 5, 1)])
def test_cutout_matches_reference(shape):
    x = _images(shape)
    n, h, w = shape[:3]
    for cy, cx in [
        (np.array([0, h, 3][:n]), np.array([w, 0, 2][:n])),
        _np(diffaugment._cutout_params(jax.random.key(3), n, h, w)),
    ]:
        got = diffaugment._cutout(jnp.asarray(x), jnp.asarray(cy, jnp.int32), jnp.asarray(cx, jnp.int32))
        np.testing.assert_array_equal(got, ref_cutout(x, cy, cx))


def test_cutout_square_is_half_the_side_and_clipped_at_the_border():
    x = np.ones((3, 32, 32, 1), np.float32)
    got = np.asarray(diffaugment._cutout(jnp.asarray(x), jnp.array([16, 0, 32]), jnp.array([16, 0, 32])))
    assert (got[0] == 0).sum() == 16 * 16  # inside: the whole 16 x 16 square
    assert (got[1] == 0).sum() == 8 * 8 and (got[1, :8, :8] == 0).all()  # centred on the corner
    assert (got[2] == 0).sum() == 8 * 8 and (got[2, 24:, 24:] == 0).all()


def test_sizes_round_half_up_like_the_paper():
    assert [diffaugment._max_shift(s) for s in (3, 4, 8, 28, 32, 128)] == [0, 1, 1, 4, 4, 16]
    assert [diffaugment._cutout_size(s) for s in (5, 7, 28, 32, 128)] == [3, 4, 14, 16, 64]


# ----------------------------------------------------------------------------------------------
# Parameter draws: the paper's ranges, per image.


def test_color_params_ranges():
    brightness, saturation, contrast = _np(diffaugment._color_params(jax.random.key(0), 4000))
    for values, low, high in [(brightness, -0.5, 0.5), (saturation, 0.0, 2.0), (contrast, 0.5, 1.5)]:
        assert values.shape == (4000,)
        assert low <= values.min() < low + 0.01 and high - 0.01 < values.max() <= high
        assert abs(values.mean() - (low + high) / 2) < 0.05


def test_translation_params_cover_the_range():
    dy, dx = _np(diffaugment._translation_params(jax.random.key(0), 2000, 32, 16))
    assert dy.dtype == np.int32 and dx.dtype == np.int32
    assert set(dy.tolist()) == set(range(-4, 5)) and set(dx.tolist()) == set(range(-2, 3))


def test_cutout_params_cover_the_range():
    cy, cx = _np(diffaugment._cutout_params(jax.random.key(0), 2000, 32, 6))
    # Even square side 16: centres 0..32 (symmetric overhang); odd side 3: centres 0..5.
    assert set(cy.tolist()) == set(range(33)) and set(cx.tolist()) == set(range(6))


# ----------------------------------------------------------------------------------------------
# diff_augment: composition, keys.


def test_diff_augment_composes_the_references_with_keys_by_policy_position():
    x = _images((4, 8, 8, 3))
    key = jax.random.key(7)
    keys = _policy_keys(key)
    color = _np(diffaugment._color_params(keys["color"], 4))
    shift = _np(diffaugment._translation_params(keys["translation"], 4, 8, 8))
    centre = _np(diffaugment._cutout_params(keys["cutout"], 4, 8, 8))
    tol = {"rtol": 1e-5, "atol": 1e-5}
    np.testing.assert_allclose(diff_augment(x, key, policy=("color",)), ref_color(x, *color), **tol)
    np.testing.assert_array_equal(diff_augment(x, key, policy=("translation",)), ref_translate(x, *shift))
    np.testing.assert_array_equal(diff_augment(x, key, policy=("cutout",)), ref_cutout(x, *centre))
    np.testing.assert_allclose(
        diff_augment(x, key, policy=("color", "translation")), ref_translate(ref_color(x, *color), *shift), **tol
    )
    expected = ref_cutout(ref_translate(ref_color(x, *color), *shift), *centre)
    np.testing.assert_allclose(diff_augment(x, key, policy=POLICIES), expected, **tol)
    # Order of the names does not matter: always POLICIES order.
    np.testing.assert_allclose(diff_augment(x, key, policy=("cutout", "translation", "color")), expected, **tol)


def test_same_key_reproduces_and_different_keys_differ():
    x = _images((4, 16, 16, 3))
    for policy in [(p,) for p in POLICIES] + [POLICIES]:
        a = diff_augment(x, jax.random.key(0), policy=policy)
        np.testing.assert_array_equal(a, diff_augment(x, jax.random.key(0), policy=policy))
        assert not np.array_equal(a, diff_augment(x, jax.random.key(1), policy=policy)), policy


def test_parameters_differ_between_images():
    x = np.tile(_images((1, 16, 16, 3)), (8, 1, 1, 1))
    for policy in POLICIES:
        out = np.asarray(diff_augment(x, jax.random.key(0), policy=(policy,)))
        distinct = {out[b].tobytes() for b in range(8)}
        assert len(distinct) > 2, policy


@pytest.mark.parametrize("policy", [(), "", [], " "])
def test_empty_policy_is_the_identity(policy):
    x = _images()
    out = diff_augment(x, jax.random.key(0), policy=policy)
    assert out.dtype == x.dtype
    np.testing.assert_array_equal(out, x)


# ----------------------------------------------------------------------------------------------
# Gradients.


def _single_policy_op(policy, key, shape):
    """The policy as a NumPy function of the images, with the parameters diff_augment draws from key."""
    n, h, w, _ = shape
    k = _policy_keys(key)[policy]
    if policy == "color":
        params = _np(diffaugment._color_params(k, n))
        return lambda x: ref_color(x, *params)
    if policy == "translation":
        params = _np(diffaugment._translation_params(k, n, h, w))
        return lambda x: ref_translate(x, *params)
    params = _np(diffaugment._cutout_params(k, n, h, w))
    return lambda x: ref_cutout(x, *params)


@pytest.mark.parametrize("policy", POLICIES)
def test_gradient_wrt_images_is_the_adjoint_of_the_reference(policy):
    # Given its parameters each policy is affine, f(x) = A x + b, so the gradient g of <f(x), w>
    # is A^T w: check <g, v> = <f(v) - f(0), w> for random v, with f the NumPy reference.
    shape = (3, 8, 8, 3)
    x, w, v = _images(shape, 0), _images(shape, 1), _images(shape, 2)
    key = jax.random.key(5)
    grad = np.asarray(jax.grad(lambda x: jnp.sum(diff_augment(x, key, policy=(policy,)) * w))(jnp.asarray(x)))
    assert np.isfinite(grad).all() and np.abs(grad).sum() > 0
    f = _single_policy_op(policy, key, shape)
    expected = np.sum((f(v.astype(np.float64)) - f(np.zeros(shape))) * w)
    np.testing.assert_allclose(np.sum(grad.astype(np.float64) * v), expected, rtol=1e-4)


def test_gradient_reaches_generator_parameters_through_all_policies():
    z_dim, shape = 4, (2, 8, 8, 3)
    z = jnp.asarray(np.random.default_rng(0).normal(size=(shape[0], z_dim)), jnp.float32)
    weights = jnp.asarray(np.random.default_rng(1).normal(size=(z_dim, int(np.prod(shape[1:])))), jnp.float32)
    critic = jnp.asarray(_images(shape, 3))
    key = jax.random.key(11)

    @jax.jit
    def loss(weights):
        fake = jnp.tanh(z @ weights).reshape(shape)
        return jnp.sum(diff_augment(fake, key, policy=POLICIES) * critic)

    grad = jax.grad(loss)(weights)
    assert np.isfinite(grad).all() and np.abs(grad).sum() > 0
    # Directional derivative against a central difference of the loss itself.
    direction = jnp.asarray(np.random.default_rng(4).normal(size=weights.shape), jnp.float32)
    eps = 1e-2
    numeric = (loss(weights + eps * direction) - loss(weights - eps * direction)) / (2 * eps)
    np.testing.assert_allclose(jnp.sum(grad * direction), numeric, rtol=1e-2)


# ----------------------------------------------------------------------------------------------
# jit, batch 1, shapes and dtypes, key kinds.


@pytest.mark.parametrize("shape", [(1, 8, 8, 3), (1, 12, 20, 1), (5, 32, 32, 3)])
def test_jit_matches_eager_and_preserves_shape(shape):
    x = _images(shape)
    jitted = jax.jit(diff_augment, static_argnames="policy")
    got = jitted(x, jax.random.key(3), policy=POLICIES)
    assert got.shape == shape and got.dtype == jnp.float32
    np.testing.assert_allclose(got, diff_augment(x, jax.random.key(3), policy=POLICIES), rtol=1e-6, atol=1e-6)


def test_bfloat16_stays_bfloat16():
    x = jnp.asarray(_images(), jnp.bfloat16)
    assert diff_augment(x, jax.random.key(0), policy=POLICIES).dtype == jnp.bfloat16


def test_raw_uint32_keys_work_like_typed_keys():
    x = _images()
    np.testing.assert_array_equal(
        diff_augment(x, jax.random.PRNGKey(3), policy=POLICIES),
        diff_augment(x, jax.random.wrap_key_data(jax.random.key_data(jax.random.key(3))), policy=POLICIES),
    )


def test_vmap_over_keys():
    x = _images((2, 8, 8, 3))
    keys = jax.random.split(jax.random.key(0), 3)
    out = jax.vmap(functools.partial(diff_augment, x, policy=POLICIES))(keys)
    assert out.shape == (3, 2, 8, 8, 3)
    np.testing.assert_allclose(out[1], diff_augment(x, keys[1], policy=POLICIES), rtol=1e-6, atol=1e-6)


# ----------------------------------------------------------------------------------------------
# parse_policy and bad input.


@pytest.mark.parametrize(
    "text, expected",
    [
        ("", ()),
        ("color", ("color",)),
        ("color,translation,cutout", POLICIES),
        ("cutout+color", ("color", "cutout")),
        (" translation , color ,", ("color", "translation")),
        ("color,color+color", ("color",)),
        (["cutout", "translation", "cutout"], ("translation", "cutout")),
        ((), ()),
    ],
)
def test_parse_policy(text, expected):
    assert parse_policy(text) == expected


@pytest.mark.parametrize("text", ["flip", "color,flip", ["color", "Color"], "color;cutout"])
def test_parse_policy_unknown_name_lists_the_allowed(text):
    with pytest.raises(ValueError, match="allowed") as info:
        parse_policy(text)
    assert all(repr(p) in str(info.value) for p in POLICIES)


@pytest.mark.parametrize("text", [3, None, ["color", 1]])
def test_parse_policy_rejects_non_strings(text):
    with pytest.raises(TypeError, match="policy"):
        parse_policy(text)


def test_diff_augment_rejects_bad_input():
    with pytest.raises(ValueError, match="'translation'"):
        diff_augment(_images(), jax.random.key(0), policy=("flip",))
    with pytest.raises(ValueError, match=r"images must be \(B, H, W, C\)"):
        diff_augment(_images()[0], jax.random.key(0), policy=POLICIES)
    with pytest.raises(ValueError, match="floating"):
        diff_augment(np.zeros((1, 4, 4, 3), np.uint8), jax.random.key(0), policy=POLICIES)
