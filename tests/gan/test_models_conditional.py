"""Class-conditional GAN models: conditional BN in G, projection D, and the unconditional models unchanged."""

from __future__ import annotations

import functools
import importlib.metadata
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gan import models

NUM_CLASSES = 5
Z_DIM = 4


def _path(path) -> str:
    return "/".join(str(getattr(k, "key", k)) for k in path)


def _flat(tree) -> dict[str, np.ndarray]:
    return {_path(p): np.asarray(v) for p, v in jax.tree_util.tree_leaves_with_path(tree)}


def _checksum(tree) -> float:
    """A position-sensitive number for a pytree: leaves sorted by path, each weighted by cos(index)."""
    total = 0.0
    leaves = sorted(jax.tree_util.tree_leaves_with_path(tree), key=lambda t: jax.tree_util.keystr(t[0]))
    for i, (_, leaf) in enumerate(leaves):
        weights = np.cos(np.arange(leaf.size, dtype=np.float64)).reshape(leaf.shape)
        total += (i + 1) * float(np.sum(np.asarray(leaf, np.float64) * weights))
    return total


def _tiny_generator(**kwargs) -> models.Generator:
    return models.Generator(channels=(8, 6), kernel="C2sp", norm="batch", bottom_size=4, **kwargs)


def _tiny_discriminator(**kwargs) -> models.Discriminator:
    return models.Discriminator(channels=(4, 6), downsample=(True, False), **kwargs)


Z = functools.partial(jax.random.normal, jax.random.key(1), (3, Z_DIM))
X = functools.partial(jax.random.normal, jax.random.key(2), (3, 8, 8, 3))
LABELS = np.array([0, 4, 2], np.int32)


# ----------------------------------------------------------------------------------------------
# num_classes=0: the models of main before the conditional ones, same tree, init and outputs.
# The numbers were computed with main's gan/models.py (commit b3b7f3c) by this file's _checksum,
# with jax 0.10 and flax 0.12. They catch a change, not an error (the models' values are checked
# against NumPy below). Those versions give them to rounding; another minor version of jax or flax
# may compile other roundings, so it is held to a looser tolerance rather than skipped. If its random
# stream or initializers draw other weights, nothing matches: recompute the pins with _checksum.

PINNED_WITH = {"jax": "0.10", "flax": "0.12"}
_versions = {name: ".".join(importlib.metadata.version(name).split(".")[:2]) for name in PINNED_WITH}


def _assert_pinned(value: float, pinned: float) -> None:
    rtol = 1e-4 if _versions == PINNED_WITH else 1e-3
    np.testing.assert_allclose(value, pinned, rtol=rtol, err_msg=f"pinned with {PINNED_WITH}, this is {_versions}")


def _unconditional_generators():
    return (models.Generator(channels=(8, 6), kernel="C2sp", norm="none", bottom_size=4), _tiny_generator())


def test_unconditional_trees_unchanged():
    z, x = Z(), X()
    plain, batch_norm = _unconditional_generators()
    v = jax.eval_shape(plain.init, jax.random.key(0), z)
    assert sorted(_flat(v["params"])) == sorted(
        [f"block1/{c}/{p}" for c in ("conv1", "conv2", "shortcut") for p in ("bias", "kernel")]
        + ["dense/bias", "dense/kernel", "final_conv/bias", "final_conv/kernel"])
    v = jax.eval_shape(batch_norm.init, jax.random.key(0), z)
    norms = [f"{n}/BatchNorm_0" for n in ("block1/norm1", "block1/norm2", "final_norm")]
    assert sorted(_flat(v["batch_stats"])) == sorted(f"{n}/{s}" for n in norms for s in ("mean", "var"))
    assert {f"{n}/{s}" for n in norms for s in ("scale", "bias")} <= set(_flat(v["params"]))
    assert len(_flat(v["params"])) == 16
    v = jax.eval_shape(_tiny_discriminator().init, jax.random.key(0), x)
    convs = [f"block{b}/{c}" for b in (1, 2) for c in ("conv1", "conv2", "shortcut")]
    assert sorted(_flat(v["params"])) == sorted(
        [f"{c}/conv/{p}" for c in convs for p in ("bias", "kernel")] + ["dense/bias", "dense/kernel"])
    assert sorted(_flat(v["batch_stats"])) == sorted(
        [f"{c}/sn/conv/kernel/{s}" for c in convs for s in ("sigma", "u")]
        + ["sn_dense/dense/kernel/sigma", "sn_dense/dense/kernel/u"])


@pytest.mark.slow
def test_unconditional_generator_pinned_to_b3b7f3c():
    z = Z()
    plain, batch_norm = _unconditional_generators()
    v = jax.jit(plain.init)(jax.random.key(0), z)
    _assert_pinned(_checksum(v["params"]), -0.2773364829051861)
    _assert_pinned(_checksum(jax.jit(plain.apply)(v, z)), 0.548361345400546)
    v = jax.jit(batch_norm.init)(jax.random.key(0), z)
    _assert_pinned(_checksum(v["params"]), 29.75678920154094)
    _assert_pinned(_checksum(v["batch_stats"]), 12.501496348116525)
    _assert_pinned(_checksum(jax.jit(batch_norm.apply)(v, z)), 0.5483435770995788)
    out, new = jax.jit(lambda v, z: batch_norm.apply(v, z, train=True, mutable=["batch_stats"]))(v, z)
    _assert_pinned(_checksum(out), 3.733691634953007)
    _assert_pinned(_checksum(new), 14.331683556596282)


@pytest.mark.slow
def test_unconditional_discriminator_pinned_to_b3b7f3c():
    x = X()
    d = _tiny_discriminator()
    v = jax.jit(d.init)(jax.random.key(0), x)
    _assert_pinned(_checksum(v["params"]), 12.998698774909219)
    _assert_pinned(_checksum(v["batch_stats"]), 99.11621764715176)
    _assert_pinned(_checksum(jax.jit(d.apply)(v, x)), 0.33361104428874094)
    out, new = jax.jit(lambda v, x: d.apply(v, x, update_stats=True, mutable=["batch_stats"]))(v, x)
    _assert_pinned(_checksum(out), 0.33361104428874094)
    _assert_pinned(_checksum(new), 80.34083341362917)


# ----------------------------------------------------------------------------------------------
# Conditional BatchNorm


# The shared-embedding variants compile a second model each: full suite only.
SHARED_SLOW = [pytest.param(e, marks=pytest.mark.slow) if e == "shared" else e for e in models.CLASS_EMBEDDINGS]


def _bn_reference(x, gamma, beta):
    """NumPy: batch statistics over (B, H, W), then a per-sample gain and bias."""
    mean, var = x.mean(axis=(0, 1, 2)), x.var(axis=(0, 1, 2))
    x_hat = (x - mean) / np.sqrt(var + 1e-5)
    return (1 + gamma[:, None, None, :]) * x_hat + beta[:, None, None, :], mean, var


@pytest.mark.parametrize("class_embedding", models.CLASS_EMBEDDINGS)
def test_conditional_batch_norm_against_numpy(class_embedding):
    rng = np.random.default_rng(0)
    x = rng.normal(2.0, 3.0, size=(4, 3, 3, 6)).astype(np.float32)
    labels = np.array([1, 3, 1, 0], np.int32)
    norm = models.ConditionalBatchNorm(NUM_CLASSES, class_embedding)
    if class_embedding == "per_class":
        condition = labels
    else:
        condition = rng.normal(size=(NUM_CLASSES, 7)).astype(np.float32)[labels]
    variables = norm.init(jax.random.key(0), x, condition, train=False)
    # Fresh: gain 1, bias 0 for every class.
    assert all(not np.any(leaf) for leaf in jax.tree_util.tree_leaves(variables["params"]))
    params = jax.tree_util.tree_map(lambda p: rng.normal(size=p.shape).astype(np.float32), variables["params"])
    if class_embedding == "per_class":
        gamma, beta = params["gamma"]["embedding"][labels], params["beta"]["embedding"][labels]
    else:
        gamma = condition @ params["gamma"]["kernel"] + params["gamma"]["bias"]
        beta = condition @ params["beta"]["kernel"] + params["beta"]["bias"]
    expected, mean, var = _bn_reference(x, gamma, beta)
    apply = jax.jit(lambda v, x, c: norm.apply(v, x, c, train=True, mutable=["batch_stats"]))
    out, new = apply({"params": params, "batch_stats": variables["batch_stats"]}, x, condition)
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-4)
    # Running averages: momentum 0.9 as the unconditional BN (flax stores the biased batch variance).
    np.testing.assert_allclose(new["batch_stats"]["bn"]["mean"], 0.1 * mean, rtol=1e-5)
    np.testing.assert_allclose(new["batch_stats"]["bn"]["var"], 0.9 + 0.1 * var, rtol=1e-5)


@pytest.mark.parametrize("class_embedding", SHARED_SLOW)
def test_fresh_conditional_generator_equals_batch_norm_generator(class_embedding):
    z = Z()
    cond = _tiny_generator(num_classes=NUM_CLASSES, class_embedding=class_embedding, shared_dim=3)
    plain = _tiny_generator()
    cond_vars = jax.jit(cond.init)(jax.random.key(0), z, LABELS)
    plain_vars = jax.jit(plain.init)(jax.random.key(3), z)
    # Same convs and dense in both; the plain BNs keep their init (scale 1, bias 0).
    cond_params = _flat(cond_vars["params"])
    plain_params = jax.tree_util.tree_map_with_path(
        lambda p, v: v if "BatchNorm_0" in _path(p) else cond_params[_path(p)], plain_vars["params"])
    for train in (False, True):
        expected = plain.apply({"params": plain_params, "batch_stats": plain_vars["batch_stats"]}, z, train=train,
                               mutable=["batch_stats"])[0]
        out = cond.apply(cond_vars, z, LABELS, train=train, mutable=["batch_stats"])[0]
        np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)


def _perturbed(params, key, *, names=("gamma", "beta", "shared_embedding")):
    """params with every leaf under one of ``names`` replaced by N(0, 0.5) noise."""
    keys = iter(jax.random.split(key, len(jax.tree_util.tree_leaves(params))))
    return jax.tree_util.tree_map_with_path(
        lambda p, v: 0.5 * jax.random.normal(next(keys), v.shape) if any(n in _path(p) for n in names) else v,
        params)


@pytest.mark.parametrize("class_embedding", SHARED_SLOW)
def test_generator_output_depends_on_label(class_embedding):
    g = _tiny_generator(num_classes=NUM_CLASSES, class_embedding=class_embedding, shared_dim=3)
    z = jnp.repeat(Z()[:1], 4, axis=0)  # one z, four labels
    labels = jnp.array([2, 2, 3, 0], jnp.int32)
    variables = jax.jit(g.init)(jax.random.key(0), z, labels)
    variables = {**variables, "params": _perturbed(variables["params"], jax.random.key(5))}
    images = np.asarray(jax.jit(g.apply)(variables, z, labels))  # eval mode: per-sample, running stats
    np.testing.assert_allclose(images[0], images[1], rtol=1e-6, atol=1e-6)
    for a, b in [(0, 2), (0, 3), (2, 3)]:
        assert np.max(np.abs(images[a] - images[b])) > 1e-3


@pytest.mark.parametrize("class_embedding", SHARED_SLOW)
def test_gradients_reach_class_tables(class_embedding):
    g = _tiny_generator(num_classes=NUM_CLASSES, class_embedding=class_embedding, shared_dim=3)
    z, labels = Z(), jnp.asarray(LABELS)  # classes 1 and 3 unused
    variables = jax.jit(g.init)(jax.random.key(0), z, labels)
    target = jax.random.normal(jax.random.key(7), (3, 8, 8, 3))

    def grads(params):
        def loss(p):
            images, _ = g.apply({"params": p, "batch_stats": variables["batch_stats"]}, z, labels, train=True,
                                mutable=["batch_stats"])
            return jnp.sum(images * target)
        return _flat(jax.jit(jax.grad(loss))(params))

    fresh = grads(variables["params"])
    tables = [p for p in fresh if p.split("/")[-2] in ("gamma", "beta")]
    assert len(tables) == (6 if class_embedding == "per_class" else 12)  # 3 BNs x (gamma, beta) x leaves
    if class_embedding == "per_class":
        for path in tables:
            row_norms = np.abs(fresh[path]).sum(axis=1)
            assert np.all(row_norms[[0, 2, 4]] > 0), path
            np.testing.assert_array_equal(row_norms[[1, 3]], 0)  # only the batch's classes learn
    else:
        assert all(np.any(fresh[p]) for p in tables if p.endswith("kernel"))
        # Zero projections pass no gradient to the shared embedding yet; nonzero ones do.
        assert not np.any(fresh["shared_embedding/embedding"])
        trained = grads(_perturbed(variables["params"], jax.random.key(5), names=("gamma", "beta")))
        row_norms = np.abs(trained["shared_embedding/embedding"]).sum(axis=1)
        assert np.all(row_norms[[0, 2, 4]] > 0)
        np.testing.assert_array_equal(row_norms[[1, 3]], 0)


# ----------------------------------------------------------------------------------------------
# Projection discriminator


@pytest.mark.slow
def test_projection_against_numpy():
    x = X()
    d = _tiny_discriminator(num_classes=NUM_CLASSES)
    variables = jax.jit(d.init)(jax.random.key(0), x, LABELS)
    assert variables["params"]["embed"]["embedding"].shape == (NUM_CLASSES, 6)
    apply = jax.jit(lambda v, x, y, update: d.apply(v, x, y, update_stats=update, mutable=["batch_stats"],
                                                    capture_intermediates=True), static_argnums=3)
    # Eval mode leaves the power-iteration state alone, for the class embedding too.
    _, frozen = apply(variables, x, LABELS, False)
    jax.tree_util.tree_map(np.testing.assert_array_equal, frozen["batch_stats"], variables["batch_stats"])
    stats = variables["batch_stats"]
    for _ in range(100):  # let every u converge to its top singular vector
        _, new = apply({"params": variables["params"], "batch_stats": stats}, x, LABELS, True)
        stats = new["batch_stats"]
    logits, state = apply({"params": variables["params"], "batch_stats": stats}, x, LABELS, False)

    # Reference: pooled features from the last block's output, then both heads with W / sigma_max(W).
    features = np.asarray(state["intermediates"]["block2"]["__call__"][0])
    pooled = np.maximum(features, 0).mean(axis=(1, 2))
    params = jax.tree_util.tree_map(np.asarray, variables["params"])
    kernel, bias = params["dense"]["kernel"], params["dense"]["bias"]
    table = params["embed"]["embedding"]
    unconditional = pooled @ (kernel / np.linalg.norm(kernel)) + bias
    projection = np.sum(table[LABELS] / np.linalg.svd(table, compute_uv=False)[0] * pooled, axis=-1)
    np.testing.assert_allclose(logits, unconditional[:, 0] + projection, rtol=1e-4, atol=1e-5)
    assert np.max(np.abs(projection)) > 0.05  # the class term is not negligible here
    np.testing.assert_allclose(stats["sn_embed"]["embed/embedding/sigma"],
                               np.linalg.svd(table, compute_uv=False)[0], rtol=1e-4)


@pytest.mark.slow
def test_discriminator_gradients_reach_embedding():
    x = X()
    d = _tiny_discriminator(num_classes=NUM_CLASSES)
    variables = jax.jit(d.init)(jax.random.key(0), x, LABELS)
    grad = jax.jit(jax.grad(lambda p: jnp.sum(d.apply({"params": p, "batch_stats": variables["batch_stats"]},
                                                      x, LABELS))))(variables["params"])
    assert np.any(np.asarray(grad["embed"]["embedding"])[LABELS])


# ----------------------------------------------------------------------------------------------
# Architectures and parameter counts


def _bn_widths(widths) -> list[int]:
    """Channels of every G BatchNorm: norm1 (block input), norm2 (block output) per block, final."""
    return [c for cin, cout in itertools.pairwise(widths) for c in (cin, cout)] + [widths[-1]]


@pytest.mark.parametrize("arch", ["sngan", "resnet19"])
@pytest.mark.parametrize("class_embedding", models.CLASS_EMBEDDINGS)
def test_conditional_param_counts_and_shapes(arch, class_embedding):
    make_g, make_d, size, _ = models.ARCHS[arch]
    num_classes, shared_dim = 10, 128
    z, x, labels = jnp.zeros((2, 128)), jnp.zeros((2, size, size, 3)), jnp.zeros((2,), jnp.int32)

    def count(module, *args):
        return models.count_params(jax.eval_shape(lambda: module.init(jax.random.key(0), *args))["params"])

    plain = make_g(kernel="C2sp", norm="batch")
    cond = make_g(kernel="C2sp", norm="batch", num_classes=num_classes, class_embedding=class_embedding)
    bn = _bn_widths(plain.widths)
    assert len(bn) == 2 * (len(plain.channels) - 1) + 1
    if class_embedding == "per_class":
        # Each BN's scale and bias (2C) become two (num_classes, C) tables.
        extra = sum(2 * num_classes * c - 2 * c for c in bn)
    else:
        # One shared (num_classes, shared_dim) table; each BN's 2C become two Dense(shared_dim -> C) with bias.
        extra = num_classes * shared_dim + sum(2 * shared_dim * c for c in bn)
    assert count(cond, z, labels) - count(plain, z) == extra
    channels = make_d().channels
    cond_d = make_d(num_classes=num_classes)
    assert count(cond_d, x, labels) - count(make_d(), x) == num_classes * channels[-1]
    # Both build and trace with labels (shapes only: compiling 128 px on CPU takes minutes).
    images = jax.eval_shape(lambda: cond.apply(cond.init(jax.random.key(0), z, labels), z, labels))
    assert images.shape == (2, size, size, 3)
    logits = jax.eval_shape(lambda: cond_d.apply(cond_d.init(jax.random.key(0), x, labels), x, labels))
    assert logits.shape == (2,)


# ----------------------------------------------------------------------------------------------
# Bad arguments


def test_bad_labels_and_fields():
    z, x = jnp.zeros((3, Z_DIM)), jnp.zeros((3, 8, 8, 3))
    g, d = _tiny_generator(num_classes=NUM_CLASSES), _tiny_discriminator(num_classes=NUM_CLASSES)
    key = jax.random.key(0)
    for module, inputs in [(g, z), (d, x)]:
        with pytest.raises(ValueError, match="needs labels"):
            module.init(key, inputs)
        with pytest.raises(ValueError, match=r"in \[0, 5\)"):
            module.init(key, inputs, np.array([0, 5, 1]))
        with pytest.raises(ValueError, match=r"in \[0, 5\)"):
            module.init(key, inputs, jnp.array([-1, 0, 1]))
        with pytest.raises(ValueError, match=r"shape \(3,\)"):
            module.init(key, inputs, jnp.zeros((3, 1), jnp.int32))
        with pytest.raises(ValueError, match="integers"):
            module.init(key, inputs, jnp.zeros((3,)))
    with pytest.raises(ValueError, match="unconditional generator"):
        _tiny_generator().init(key, z, LABELS)
    with pytest.raises(ValueError, match="unconditional discriminator"):
        _tiny_discriminator().init(key, x, LABELS)
    with pytest.raises(ValueError, match="needs norm='batch'"):
        models.Generator(channels=(8, 6), norm="none", num_classes=NUM_CLASSES).init(key, z, LABELS)
    with pytest.raises(ValueError, match="per_class.*shared"):
        _tiny_generator(num_classes=NUM_CLASSES, class_embedding="projection").init(key, z, LABELS)
    with pytest.raises(ValueError, match="num_classes"):
        _tiny_discriminator(num_classes=-1).init(key, x)
