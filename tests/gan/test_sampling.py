"""gan.sampling: truncated latents, slerp, interpolation latents, class labels, conditional sampling."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gan import models, sampling
from sympad.train.data import to_uint8

Z_DIM = 8
NUM_CLASSES = 3


def _perturbed(variables, seed=1, scale=0.3):
    """Random weights everywhere: a fresh conditional G's class tables are all zero (same image per class)."""
    leaves, tree = jax.tree_util.tree_flatten(variables)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    return jax.tree_util.tree_unflatten(
        tree, [x + scale * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)])


@pytest.fixture(scope="module", params=["per_class", "shared"])
def conditional(request):
    generator = models.Generator(channels=(8, 8), bottom_size=2, norm="batch", num_classes=NUM_CLASSES,
                                 class_embedding=request.param, shared_dim=4)
    variables = generator.init(jax.random.key(0), jnp.zeros((1, Z_DIM)), jnp.zeros((1,), jnp.int32))
    return generator, _perturbed(variables)


def test_class_labels_are_balanced_and_cycle():
    labels = sampling.class_labels(7, 3)
    assert labels.dtype == np.int32
    np.testing.assert_array_equal(labels, [0, 1, 2, 0, 1, 2, 0])
    with pytest.raises(ValueError, match="num_classes"):
        sampling.class_labels(4, 0)


def test_untruncated_latents_are_todays():
    # Truncation 0 must draw exactly what sampling drew before it existed (the training and
    # every earlier samples.npz depend on it): one normal vector per fold_in(key, i).
    key = jax.random.key(7)
    indices = jnp.array([0, 3, 11], jnp.int32)
    got = np.asarray(sampling.sample_latents(key, indices, z_dim=Z_DIM))
    want = np.stack([np.asarray(jax.random.normal(jax.random.fold_in(key, int(i)), (Z_DIM,))) for i in indices])
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(got, sampling.sample_latents(key, indices, z_dim=Z_DIM, truncation=0.0))


def test_truncated_latents_are_bounded_and_deterministic():
    key = jax.random.key(3)
    indices = jnp.arange(256)
    z = np.asarray(sampling.sample_latents(key, indices, z_dim=Z_DIM, truncation=0.5))
    assert z.shape == (256, Z_DIM)
    assert np.abs(z).max() <= 0.5
    assert np.abs(z).max() > 0.45  # fills the interval rather than shrinking everything
    np.testing.assert_array_equal(z, sampling.sample_latents(key, indices, z_dim=Z_DIM, truncation=0.5))
    # Row j depends only on its index: the same rows drawn on their own.
    np.testing.assert_array_equal(z[[5, 200]], sampling.sample_latents(key, jnp.array([5, 200]), z_dim=Z_DIM,
                                                                        truncation=0.5))
    wide = np.asarray(sampling.sample_latents(key, indices, z_dim=Z_DIM))
    assert np.abs(wide).max() > 2
    with pytest.raises(ValueError, match="truncation"):
        sampling.sample_latents(key, indices, z_dim=Z_DIM, truncation=-1.0)


def _slerp_reference(z0, z1, t):
    z0, z1 = np.asarray(z0, np.float64), np.asarray(z1, np.float64)
    omega = np.arccos(np.dot(z0, z1) / np.linalg.norm(z0) / np.linalg.norm(z1))
    return (np.sin((1 - t) * omega) * z0 + np.sin(t * omega) * z1) / np.sin(omega)


def test_slerp_matches_a_numpy_reference_and_keeps_the_norm():
    rng = np.random.default_rng(0)
    z0, z1 = rng.standard_normal((2, 16)).astype(np.float32)
    z1 = z1 * np.linalg.norm(z0) / np.linalg.norm(z1)  # equal norms: the path stays on the sphere
    t = np.linspace(0, 1, 9, dtype=np.float32)
    got = np.asarray(jax.jit(sampling.slerp)(z0[None], z1[None], t))
    assert got.shape == (9, 16)
    want = np.stack([_slerp_reference(z0, z1, s) for s in t])
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(got, axis=-1), np.linalg.norm(z0), rtol=1e-5)
    linear = (1 - t[:, None]) * z0 + t[:, None] * z1
    assert np.linalg.norm(linear[4]) < 0.9 * np.linalg.norm(z0)  # the line cuts inside the sphere
    np.testing.assert_array_equal(got[0], z0)  # endpoints exactly
    np.testing.assert_array_equal(got[-1], z1)


def test_slerp_falls_back_to_the_line_for_parallel_vectors():
    z = np.array([0.5, -1.0, 2.0, 0.25], np.float32)
    t = np.array([0.0, 0.25, 0.5, 1.0], np.float32)
    for other in (3 * z, -z):  # parallel, anti-parallel
        got = np.asarray(sampling.slerp(z, other, t))
        assert np.isfinite(got).all()
        np.testing.assert_allclose(got, (1 - t[:, None]) * z + t[:, None] * other, rtol=1e-6, atol=1e-6)
    grad = jax.grad(lambda a: sampling.slerp(a, 2 * a, 0.3).sum())(jnp.asarray(z))
    assert np.isfinite(np.asarray(grad)).all()


def test_interpolation_latents_rows_run_between_two_latents():
    key = jax.random.key(4)
    z = np.asarray(sampling.interpolation_latents(key, num_rows=3, steps=5, z_dim=Z_DIM))
    assert z.shape == (3, 5, Z_DIM)
    k0, k1 = jax.random.split(key)
    np.testing.assert_array_equal(z[:, 0], sampling.sample_latents(k0, jnp.arange(3), z_dim=Z_DIM))
    np.testing.assert_array_equal(z[:, -1], sampling.sample_latents(k1, jnp.arange(3), z_dim=Z_DIM))
    for row in z:
        np.testing.assert_allclose(row, np.stack([_slerp_reference(row[0], row[-1], s)
                                                  for s in np.linspace(0, 1, 5)]), rtol=1e-4, atol=1e-5)
    more = np.asarray(sampling.interpolation_latents(key, num_rows=4, steps=5, z_dim=Z_DIM))
    np.testing.assert_array_equal(more[:3], z)  # a row does not depend on how many there are
    cut = np.asarray(sampling.interpolation_latents(key, num_rows=3, steps=5, z_dim=Z_DIM, truncation=0.5))
    assert np.abs(cut[:, [0, -1]]).max() <= 0.5
    with pytest.raises(ValueError, match="steps"):
        sampling.interpolation_latents(key, num_rows=3, steps=1, z_dim=Z_DIM)
    with pytest.raises(ValueError, match="num_rows"):
        sampling.interpolation_latents(key, num_rows=0, steps=3, z_dim=Z_DIM)


def test_conditional_samples_follow_their_labels(conditional):
    generator, variables = conditional
    a = sampling.generate_samples(generator, variables, num=7, seed=2, batch_size=3)
    b = sampling.generate_samples(generator, variables, num=7, seed=2, batch_size=4,
                                  labels=sampling.class_labels(7, NUM_CLASSES))
    np.testing.assert_array_equal(a, b)  # default labels i % num_classes; batch size does not matter
    # Sample i is G(z_i, y_i), recomputed directly.
    key = jax.random.key(2)
    labels = np.array([2, 0, 1, 1, 2, 0, 0], np.int32)
    c = sampling.generate_samples(generator, variables, num=7, seed=2, batch_size=5, labels=labels)
    d = sampling.generate_samples(generator, variables, num=7, seed=2, batch_size=2, labels=labels)
    np.testing.assert_array_equal(c, d)
    for i in range(7):
        z = jax.random.normal(jax.random.fold_in(key, i), (1, Z_DIM))
        want = to_uint8(generator.apply(variables, z, jnp.array([labels[i]]), train=False))
        np.testing.assert_array_equal(c[i : i + 1], want)
    assert not np.array_equal(a[1], c[1])  # label 1 vs 0 for the same latent
    np.testing.assert_array_equal(a[6], c[6])  # same index, same label (0)


def test_truncation_reaches_the_samples(conditional):
    generator, variables = conditional
    plain = sampling.generate_samples(generator, variables, num=4, seed=1)
    cut = sampling.generate_samples(generator, variables, num=4, seed=1, truncation=0.5, batch_size=3)
    z = sampling.sample_latents(jax.random.key(1), jnp.arange(4), z_dim=Z_DIM, truncation=0.5)
    want = to_uint8(generator.apply(variables, z, jnp.asarray(sampling.class_labels(4, NUM_CLASSES))))
    np.testing.assert_array_equal(cut, want)
    assert not np.array_equal(plain, cut)


def test_generate_from_latents_batches_any_latents(conditional):
    generator, variables = conditional
    z = np.random.default_rng(0).standard_normal((5, Z_DIM)).astype(np.float32)
    labels = np.array([0, 2, 1, 2, 0], np.int32)
    got = sampling.generate_from_latents(generator, variables, z, labels, batch_size=2)
    want = to_uint8(generator.apply(variables, z, labels))
    np.testing.assert_array_equal(got, want)
    with pytest.raises(ValueError, match="needs labels"):
        sampling.generate_from_latents(generator, variables, z)


def test_bad_labels_are_refused(conditional):
    generator, variables = conditional
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        sampling.generate_samples(generator, variables, num=2, labels=[0, 3])
    with pytest.raises(ValueError, match=r"shape \(2,\)"):
        sampling.generate_samples(generator, variables, num=2, labels=[0, 1, 2])
    with pytest.raises(ValueError, match="truncation"):
        sampling.generate_samples(generator, variables, num=2, truncation=-0.5)
    plain = models.Generator(channels=(8, 8), bottom_size=2)
    plain_vars = plain.init(jax.random.key(0), jnp.zeros((1, Z_DIM)))
    with pytest.raises(ValueError, match="unconditional"):
        sampling.generate_samples(plain, plain_vars, num=2, labels=[0, 1])
