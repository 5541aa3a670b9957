"""GAN models and losses: parameter counts, shapes, spectral norm, upsampling, losses."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gan import losses, models
from sympad.kinds import KINDS

Z_DIM = 128


def _init_shapes(module, *args, **kwargs):
    return jax.eval_shape(lambda: module.init(jax.random.key(0), *args, **kwargs))


# ----------------------------------------------------------------------------------------------
# Parameter counts: closed forms written from the architecture description (DESIGN.md section 4),
# not from the model code.


def _conv(k: int, cin: int, cout: int) -> int:
    return k * k * cin * cout + cout


def expected_generator_params(channels, k: int, multiplier: float, *, bottom: int = 4, norm: str = "none") -> int:
    w = [int(round(c * multiplier)) for c in channels]
    bn = (lambda c: 2 * c) if norm == "batch" else (lambda c: 0)
    total = Z_DIM * bottom * bottom * w[0] + bottom * bottom * w[0]  # linear to the seed
    for cin, cout in zip(w[:-1], w[1:]):
        # shortcut conv, conv1, conv2 (all k x k) + BN before each conv of the residual branch
        total += _conv(k, cin, cout) + _conv(k, cin, cout) + _conv(k, cout, cout) + bn(cin) + bn(cout)
    return total + bn(w[-1]) + _conv(k, w[-1], 3)


def expected_discriminator_params(channels) -> int:
    total, cin = 0, 3
    for cout in channels:
        total += 2 * _conv(3, cin, cout) + _conv(3, cout, cout)  # shortcut, conv1, conv2
        cin = cout
    return total + cin + 1


MULTIPLIER = {"C3": 1.0, "C2": 1.5, "C2sp": 1.5, "C4": 0.75, "C4sp": 0.75}


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("arch", ["sngan", "resnet19"])
def test_generator_param_counts(arch, kind):
    make_g, _, size, (paper_g, _) = models.ARCHS[arch]
    generator = make_g(kernel=kind)
    shapes = _init_shapes(generator, jnp.zeros((2, Z_DIM)))
    channels = (256,) * 4 if arch == "sngan" else (512, 512, 256, 256, 128, 64)
    k = int(kind[1])
    assert models.count_params(shapes["params"]) == expected_generator_params(channels, k, MULTIPLIER[kind])
    # The paper: about 6M (SNGAN) / 14M (ResNet19), kept by the width multiplier for every kind.
    assert abs(models.count_params(shapes["params"]) / paper_g - 1) < 0.06
    # Every spatial kernel of G has the kind's size.
    kernels = [leaf.shape for path, leaf in jax.tree_util.tree_leaves_with_path(shapes["params"])
               if len(leaf.shape) == 4]
    assert kernels and all(s[:2] == (k, k) for s in kernels)


@pytest.mark.parametrize("arch", ["sngan", "resnet19"])
def test_discriminator_param_counts_and_output(arch):
    _, make_d, size, (_, paper_d) = models.ARCHS[arch]
    discriminator = make_d()
    shapes = _init_shapes(discriminator, jnp.zeros((2, size, size, 3)))
    channels = (128,) * 4 if arch == "sngan" else (64, 128, 256, 256, 512, 512)
    count = models.count_params(shapes["params"])
    assert count == expected_discriminator_params(channels)
    # SNGAN: 1.48M vs the paper's 1.5M; ResNet19: 15.1M vs "about 14M" (3x3 shortcuts as in compare_gan).
    assert abs(count / paper_d - 1) < (0.02 if arch == "sngan" else 0.08)
    kernels = [leaf.shape for leaf in jax.tree_util.tree_leaves(shapes["params"]) if len(leaf.shape) == 4]
    assert all(s[:2] == (3, 3) for s in kernels)
    # One u (1, C_out) and one sigma per weight matrix.
    stats = jax.tree_util.tree_leaves_with_path(shapes["batch_stats"])
    assert len([p for p, _ in stats if p[-1].key.endswith("/u")]) == 3 * len(channels) + 1
    out = jax.eval_shape(lambda: discriminator.apply(jax.tree_util.tree_map(jnp.zeros_like, shapes),
                                                     jnp.zeros((2, size, size, 3))))
    assert out.shape == (2,)


@pytest.mark.parametrize("arch", ["sngan", "resnet19"])
def test_generator_output_shape(arch):
    make_g, _, size, _ = models.ARCHS[arch]
    generator = make_g(kernel="C2sp")
    shapes = _init_shapes(generator, jnp.zeros((2, Z_DIM)))
    out = jax.eval_shape(lambda: generator.apply(jax.tree_util.tree_map(jnp.zeros_like, shapes), jnp.zeros((3, Z_DIM))))
    assert out.shape == (3, size, size, 3)


def test_batch_norm_generator_params():
    generator = models.SNGANGenerator(kernel="C4sp", norm="batch")
    shapes = _init_shapes(generator, jnp.zeros((2, Z_DIM)))
    assert models.count_params(shapes["params"]) == expected_generator_params((256,) * 4, 4, 0.75, norm="batch")
    assert "batch_stats" in shapes


def test_width_multiplier():
    assert [models.default_width_multiplier(k) for k in KINDS] == [MULTIPLIER[k] for k in KINDS]
    assert models.default_width_multiplier("C5") == 1.0
    assert models.SNGANGenerator(kernel="C2", width_multiplier=1.0).widths == (256,) * 4
    with pytest.raises(ValueError, match="kind"):
        models.default_width_multiplier("C3x")


@pytest.mark.parametrize("kind,norm", [("C2sp", "batch")])  # C3 without BN: see test_gan_train
def test_small_generator_runs(kind, norm):
    generator = models.Generator(channels=(8, 8, 8), kernel=kind, norm=norm, bottom_size=2)
    z = jax.random.normal(jax.random.key(1), (4, Z_DIM))
    variables = jax.jit(generator.init)(jax.random.key(0), z)
    images = jax.jit(lambda v, z: generator.apply(v, z))(variables, z)
    assert images.shape == (4, 8, 8, 3)
    assert bool(jnp.all(jnp.abs(images) <= 1.0)) and float(jnp.std(images)) > 0
    if norm == "batch":
        _, new = jax.jit(lambda v, z: generator.apply(v, z, train=True, mutable=["batch_stats"]))(variables, z)
        changed = jax.tree_util.tree_map(lambda a, b: bool(jnp.any(a != b)), variables["batch_stats"],
                                         new["batch_stats"])
        assert all(jax.tree_util.tree_leaves(changed))


def test_bad_arguments():
    with pytest.raises(ValueError, match="norm"):
        models.Generator(channels=(8, 8), norm="layer").init(jax.random.key(0), jnp.zeros((1, 4)))
    with pytest.raises(ValueError, match="method"):
        models.upsample(jnp.zeros((1, 2, 2, 1)), method="bilinear")
    with pytest.raises(ValueError, match="same length"):
        models.Discriminator(channels=(8, 8), downsample=(True,)).init(jax.random.key(0), jnp.zeros((1, 8, 8, 3)))


def test_upsample_against_numpy():
    x = np.arange(2 * 3 * 2 * 2, dtype=np.float32).reshape(2, 3, 2, 2)
    nearest = np.zeros((2, 6, 4, 2), np.float32)
    unpool = np.zeros((2, 6, 4, 2), np.float32)
    for i in range(6):
        for j in range(4):
            nearest[:, i, j] = x[:, i // 2, j // 2]
            if i % 2 == 0 and j % 2 == 0:
                unpool[:, i, j] = x[:, i // 2, j // 2]
    np.testing.assert_array_equal(models.upsample(jnp.asarray(x)), nearest)
    np.testing.assert_array_equal(models.upsample(jnp.asarray(x), method="unpool"), unpool)


# ----------------------------------------------------------------------------------------------
# Spectral norm


def _l2n(v):
    return v / np.linalg.norm(v)


@pytest.mark.slow
def test_spectral_norm_state_updates_only_in_training():
    discriminator = models.Discriminator(channels=(4, 4), downsample=(True, False))
    x = jax.random.normal(jax.random.key(2), (3, 8, 8, 3))
    variables = jax.jit(discriminator.init)(jax.random.key(0), x)
    stats = variables["batch_stats"]
    apply = jax.jit(lambda v, x, update: discriminator.apply(v, x, update_stats=update, mutable=["batch_stats"]),
                    static_argnums=2)

    frozen, unchanged = apply(variables, x, False)
    jax.tree_util.tree_map(np.testing.assert_array_equal, unchanged["batch_stats"], stats)
    logits, updated = apply(variables, x, True)
    assert logits.shape == (3,)

    # One power iteration per call, checked in NumPy for one conv: W reshaped to (k*k*C_in, C_out),
    # v = normalize(u W^T), u' = normalize(v W), sigma = v W u'^T.
    kernel = np.asarray(variables["params"]["block2"]["conv1"]["conv"]["kernel"]).reshape(-1, 4)
    sn = "block2", "conv1", "sn"
    u0 = np.asarray(stats[sn[0]][sn[1]][sn[2]]["conv/kernel/u"])
    v = _l2n(u0 @ kernel.T)
    u1 = _l2n(v @ kernel)
    sigma = (v @ kernel @ u1.T).item()
    new = updated["batch_stats"][sn[0]][sn[1]][sn[2]]
    np.testing.assert_allclose(new["conv/kernel/u"], u1, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(new["conv/kernel/sigma"], sigma, rtol=1e-5)
    assert not np.allclose(new["conv/kernel/u"], u0)
    # Eval mode uses the stored u (no power iteration): same call twice, same output.
    again, _ = apply(variables, x, False)
    np.testing.assert_array_equal(again, frozen)

    # Iterated, sigma converges to the largest singular value of W (the layer then uses W / sigma_max).
    for _ in range(50):
        _, new_stats = apply({"params": variables["params"], "batch_stats": updated["batch_stats"]}, x, True)
        updated = new_stats
    sigma = updated["batch_stats"]["block2"]["conv1"]["sn"]["conv/kernel/sigma"]
    np.testing.assert_allclose(sigma, np.linalg.svd(kernel, compute_uv=False)[0], rtol=1e-4)



# ----------------------------------------------------------------------------------------------
# Losses against NumPy closed forms


def _sigmoid(x):
    return 1 / (1 + np.exp(-x))


def test_losses_against_numpy():
    rng = np.random.default_rng(0)
    real, fake = rng.normal(size=7) * 3, rng.normal(size=5) * 3
    ns_d = -np.mean(np.log(_sigmoid(real))) - np.mean(np.log(1 - _sigmoid(fake)))
    ns_g = -np.mean(np.log(_sigmoid(fake)))
    hinge_d = np.mean(np.maximum(0, 1 - real)) + np.mean(np.maximum(0, 1 + fake))
    hinge_g = -np.mean(fake)
    d_loss = jax.jit(losses.discriminator_loss, static_argnames="loss")
    g_loss = jax.jit(losses.generator_loss, static_argnames="loss")
    np.testing.assert_allclose(d_loss(real, fake), ns_d, rtol=1e-5)
    np.testing.assert_allclose(g_loss(fake), ns_g, rtol=1e-5)
    np.testing.assert_allclose(d_loss(real, fake, loss="hinge"), hinge_d, rtol=1e-5)
    np.testing.assert_allclose(g_loss(fake, loss="hinge"), hinge_g, rtol=1e-5)
    # Non-saturating: the G gradient stays large where D confidently rejects the fakes.
    assert abs(float(jax.grad(lambda f: losses.generator_loss(f[None]))(-10.0))) > 0.99
    with pytest.raises(ValueError, match="loss"):
        losses.generator_loss(fake, loss="wgan")
