"""FID, IS, KID, precision/recall against closed forms and literal NumPy loops; feature extraction."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gan import metrics
from gan.metrics import features, offline, offline_train, scores
from sympad.train import data


def _samples_with_exact_stats(rng, mu, sigma, n):
    """n samples whose unbiased sample mean/covariance are exactly mu/sigma (up to round-off)."""
    z = rng.normal(size=(n, len(mu)))
    z -= z.mean(0)
    z = z @ np.linalg.inv(np.linalg.cholesky(np.cov(z, rowvar=False))).T  # sample cov = I
    return z @ np.linalg.cholesky(sigma).T + mu


def _commuting_covariances(rng, d):
    q, _ = np.linalg.qr(rng.normal(size=(d, d)))
    a, b = rng.uniform(0.1, 3.0, d), rng.uniform(0.1, 3.0, d)
    return q, a, b, (q * a) @ q.T, (q * b) @ q.T


@pytest.mark.parametrize("method", ["sqrtm", "eigh"])
def test_fid_of_a_set_with_itself_is_zero(method):
    x = np.random.default_rng(0).normal(size=(400, 24))
    mu, sigma = scores.feature_statistics(x)
    assert abs(scores.frechet_distance(mu, sigma, mu, sigma, method=method)) < 1e-8


@pytest.mark.parametrize("method", ["sqrtm", "eigh"])
def test_fid_between_gaussians_matches_closed_form(method):
    # Commuting covariances Q diag(a) Q^T, Q diag(b) Q^T: tr((S1 S2)^1/2) = sum sqrt(a b), so
    # FID = |mu1 - mu2|^2 + sum (sqrt(a) - sqrt(b))^2.
    rng = np.random.default_rng(1)
    d = 16
    _, a, b, s1, s2 = _commuting_covariances(rng, d)
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    closed = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    assert scores.frechet_distance(mu1, s1, mu2, s2, method=method) == pytest.approx(closed, rel=1e-9)
    # The same through sample statistics (checks the unbiased N-1 covariance and the mean).
    x1 = _samples_with_exact_stats(rng, mu1, s1, 200)
    x2 = _samples_with_exact_stats(rng, mu2, s2, 300)
    got = scores.frechet_distance(*scores.feature_statistics(x1), *scores.feature_statistics(x2), method=method)
    assert got == pytest.approx(closed, rel=1e-8)


def test_fid_rank_deficient_covariances_sqrtm_and_eigh_agree():
    # Fewer samples than dimensions: singular covariances (the offset fallback's case).
    rng = np.random.default_rng(2)
    x, y = rng.normal(size=(20, 64)), rng.normal(0.3, 1.2, size=(25, 64))
    sx, sy = scores.feature_statistics(x), scores.feature_statistics(y)
    a = scores.frechet_distance(*sx, *sy, method="sqrtm")
    b = scores.frechet_distance(*sx, *sy, method="eigh")
    assert np.isfinite(a) and a == pytest.approx(b, rel=1e-4)


def test_fid_rejects_bad_input():
    with pytest.raises(ValueError, match="method"):
        scores.frechet_distance(np.zeros(2), np.eye(2), np.zeros(2), np.eye(2), method="svd")
    with pytest.raises(ValueError, match="shapes"):
        scores.frechet_distance(np.zeros(2), np.eye(2), np.zeros(3), np.eye(3))
    with pytest.raises(ValueError, match="features"):
        scores.feature_statistics(np.zeros((1, 4)))


def _is_loop(logits, splits):
    n = len(logits)
    out = []
    for i in range(splits):
        part = logits[i * n // splits : (i + 1) * n // splits].astype(np.float64)
        p = np.exp(part - part.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        py = p.mean(0)
        kl = [sum(p[j, k] * np.log(p[j, k] / py[k]) for k in range(p.shape[1]) if p[j, k] > 0)
              for j in range(len(p))]
        out.append(np.exp(np.mean(kl)))
    return np.mean(out), np.std(out)


def test_inception_score_uniform_and_confident():
    assert scores.inception_score(np.zeros((100, 10)), splits=10) == pytest.approx((1.0, 0.0), abs=1e-12)
    k = 7
    confident = 50.0 * np.eye(k)[np.arange(140) % k]  # each split holds every class equally often
    mean, std = scores.inception_score(confident, splits=10)
    assert mean == pytest.approx(k, rel=1e-9) and std == pytest.approx(0.0, abs=1e-9)
    # Logits so confident that p(y) underflows to exactly 0 for the classes no sample picks
    # (3 of 10 used): the score is still the number of classes used, not NaN.
    mean, _ = scores.inception_score(1e4 * np.eye(10)[np.arange(30) % 3], splits=1)
    assert mean == pytest.approx(3, rel=1e-9)


def test_inception_score_matches_loop_reference():
    logits = np.random.default_rng(3).normal(scale=3.0, size=(103, 6))  # uneven splits on purpose
    for splits in (1, 10):
        np.testing.assert_allclose(scores.inception_score(logits, splits=splits), _is_loop(logits, splits),
                                   rtol=1e-10, atol=1e-12)
    with pytest.raises(ValueError, match="splits"):
        scores.inception_score(logits, splits=0)


def _mmd2_unbiased_loop(x, y):
    d = x.shape[1]
    k = lambda a, b: (a @ b / d + 1.0) ** 3
    m = len(x)
    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(m)) / (m * m)
    return xx + yy - 2 * xy


def test_kid_matches_loop_and_separates_distributions():
    rng = np.random.default_rng(4)
    x, y = rng.normal(size=(15, 5)), rng.normal(0.5, 1.0, size=(15, 5))
    # One subset of all rows: a permutation, to which the unbiased MMD^2 is invariant.
    kid, std = scores.kernel_inception_distance(x, y, num_subsets=1, subset_size=15)
    assert kid == pytest.approx(_mmd2_unbiased_loop(x, y), rel=1e-10) and std == 0.0
    a, b = rng.normal(size=(600, 8)), rng.normal(size=(600, 8))
    same, same_std = scores.kernel_inception_distance(a, b, num_subsets=20, subset_size=200)
    diff, _ = scores.kernel_inception_distance(a, b + 0.5, num_subsets=20, subset_size=200)
    assert abs(same) < 3 * same_std + 1e-3
    assert diff > 10 * max(abs(same), same_std)


def test_precision_recall_matches_brute_force():
    rng = np.random.default_rng(5)
    real, fake = rng.normal(size=(40, 3)), rng.normal(0.7, 0.8, size=(30, 3))
    k = 3

    def radius(x, i):
        return sorted(np.sum((x - x[i]) ** 2, axis=1))[k]  # index 0 is the point itself

    def covered(points, centres):
        r = [radius(centres, i) for i in range(len(centres))]
        return np.mean([any(np.sum((p - c) ** 2) <= r[j] for j, c in enumerate(centres)) for p in points])

    p, r = scores.precision_recall(real, fake, k=k, block=7)
    assert p == pytest.approx(covered(fake, real)) and r == pytest.approx(covered(real, fake))
    assert scores.precision_recall(real, real, k=k) == (1.0, 1.0)
    assert scores.precision_recall(real, real + 100.0, k=k) == (0.0, 0.0)


# ---------------------------------------------------------------- feature networks


@pytest.fixture(scope="module")
def random_offline_network():
    variables = offline.random_variables(0)  # random BN statistics too: eval-mode BN is exercised
    return features.FeatureNetwork("random_cnn", offline.offline_apply_fn(variables), {"sha256": "0" * 64})


def test_features_do_not_depend_on_batch_size(random_offline_network):
    images = np.random.default_rng(6).integers(0, 256, (11, 32, 32, 3), dtype=np.uint8)
    a = features.extract_features(random_offline_network, images, batch_size=4)
    b = features.extract_features(random_offline_network, images, batch_size=11)
    single = features.extract_features(random_offline_network, images[5:6], batch_size=4)
    assert a["pool"].shape == (11, 256) and a["logits"].shape == (11, 10)
    for key in ("pool", "logits"):
        np.testing.assert_allclose(a[key], b[key], rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(single[key][0], b[key][5], rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="uint8"):
        features.extract_features(random_offline_network, images.astype(np.float32))


def test_reference_features_are_cached(random_offline_network, tmp_path):
    images = np.random.default_rng(7).integers(0, 256, (12, 32, 32, 3), dtype=np.uint8)
    kw = dict(dataset="toy", split="test", image_size=32, num_examples=12, cache_dir=tmp_path, batch_size=4)
    first = features.reference_features(random_offline_network, images=images, **kw)
    files = list(tmp_path.glob("*.npz"))
    assert len(files) == 1 and "toy-test-32px-n12-random_cnn-000000000000" in files[0].name
    mu, sigma = scores.feature_statistics(first["pool"])
    np.testing.assert_allclose(first["mu"], mu)
    np.testing.assert_allclose(first["sigma"], sigma)

    def fail(_):
        raise AssertionError("the cache should have been used")

    cached = features.reference_features(features.FeatureNetwork("random_cnn", fail, {"sha256": "0" * 64}), **kw)
    np.testing.assert_array_equal(cached["pool"], first["pool"])
    np.testing.assert_array_equal(cached["sigma"], first["sigma"])


def test_eval_settings_protocols_and_network_choice(tmp_path):
    s = metrics.eval_settings(None)
    assert (s.protocol, s.reference_split, s.num_reference, s.num_samples) == ("test10k", "test", 10000, 10000)
    assert s.reference_dataset == "cifar10" and s.feature_network == "auto"
    s = metrics.eval_settings({"eval": {"protocol": "train50k"}, "data": {"name": "digits"}})
    assert (s.reference_split, s.num_reference, s.num_samples, s.reference_dataset) == ("train", 50000, 50000, "digits")
    assert metrics.eval_settings({"data": "folder:/x"}).reference_dataset == "folder:/x"
    with pytest.raises(ValueError, match="protocol"):
        metrics.eval_settings({"eval": {"protocol": "fid5k"}})
    with pytest.raises(ValueError, match="inception_weights"):
        features.get_feature_network("inception")
    with pytest.raises(FileNotFoundError, match="pytorch-fid/releases"):
        features.get_feature_network("auto", inception_weights=tmp_path / "missing.pth")
    with pytest.raises(ValueError, match="feature_network"):
        features.get_feature_network("vgg")


def test_evaluator_keys_name_the_network(random_offline_network, tmp_path):
    rng = np.random.default_rng(8)
    ref = rng.integers(0, 256, (40, 32, 32, 3), dtype=np.uint8)
    settings = metrics.eval_settings({"eval": {"num_reference": 40, "cache_dir": str(tmp_path), "batch_size": 20,
                                               "kid_subset_size": 20, "kid_subsets": 4, "is_splits": 2,
                                               "pr_num_samples": 40}})
    ev = metrics.Evaluator(settings, network=random_offline_network, reference_images=ref, reference_name="toy")
    same = ev(ref)
    assert set(same) == {"fid_random_cnn", "kid_random_cnn", "kid_random_cnn_std", "is_random_cnn",
                         "is_random_cnn_std", "is_random_cnn_1split", "precision_random_cnn", "recall_random_cnn"}
    assert abs(same["fid_random_cnn"]) < 1e-6 * (1 + np.trace(ev.reference(32)["sigma"]))
    assert same["precision_random_cnn"] == same["recall_random_cnn"] == 1.0
    other = ev(np.clip(ref.astype(int) // 3, 0, 255).astype(np.uint8))
    assert other["fid_random_cnn"] > 0.1 * np.trace(ev.reference(32)["sigma"])
    assert other["kid_random_cnn"] > same["kid_random_cnn"]


# ---------------------------------------------------------------- shipped offline network


def test_shipped_offline_weights():
    path = offline.OFFLINE_WEIGHTS
    if not path.is_file():
        pytest.skip(f"{path} not built yet (python -m gan.metrics.offline_train ...)")
    assert path.stat().st_size <= 5 * 2**20
    variables, meta = offline.load_offline_weights(path)
    assert meta["name"] == "offline_cifar10" and "command" in meta and 0.0 < meta["test_accuracy"] <= 1.0
    shapes = jax.eval_shape(lambda: offline.OfflineCNN().init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3))))
    jax.tree.map(lambda want, got: np.testing.assert_equal(got.shape, want.shape), shapes, variables)
    net = features.get_feature_network("auto")
    assert net.name == "offline_cifar10" and net.identity["test_accuracy"] == meta["test_accuracy"]


def test_offline_weights_round_trip_as_float16(tmp_path):
    variables = offline.random_variables(3)
    offline.save_offline_weights(tmp_path / "w.npz", variables, metadata={"name": "x"})
    loaded, meta = offline.load_offline_weights(tmp_path / "w.npz")
    assert meta == {"name": "x"}
    with np.load(tmp_path / "w.npz") as f:
        assert {f[k].dtype for k in f.files if k != "__metadata__"} == {np.dtype(np.float16)}
    for want, got in zip(jax.tree_util.tree_leaves(variables), jax.tree_util.tree_leaves(loaded)):
        assert got.dtype == jnp.float32
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want, np.float16).astype(np.float32))


@pytest.mark.slow  # the 10k-JPEG archive (extracted once per run by the fixture), a CNN on 500 images
def test_shipped_offline_weights_accuracy_on_cifar10_test(cifar10_test_root, tmp_path):
    """Re-measures the recorded test accuracy on 500 CIFAR-10 test images."""
    if not offline.OFFLINE_WEIGHTS.is_file():
        pytest.skip("offline weights not built yet")
    root = cifar10_test_root
    # Every 20th of the class-sorted 10,000: 50 per class.
    test = data.load(f"folder:{root}", "test", max_examples=500, cache_dir=tmp_path / "cache")
    images, labels = test.images, test.labels
    assert len(images) == 500 and np.bincount(labels).tolist() == [50] * 10
    variables, meta = offline.load_offline_weights()
    acc = offline_train.evaluate_accuracy(variables, images, labels, batch_size=250)
    # 500 images: binomial std about 2%, so 4 std around the recorded 10k-image accuracy.
    assert abs(acc - meta["test_accuracy"]) < 0.08 and acc > 0.5


# ---------------------------------------------------------------- intra-class (conditional) metrics


def _colour_features(images):
    """A stand-in network with 9-d features (per-channel mean, std and mean |horizontal gradient|):
    few dimensions, so per-class covariances are full rank and scipy's sqrtm is well posed."""
    x = images.astype(jnp.float32) / 255.0
    grad = jnp.abs(x[:, :, 1:] - x[:, :, :-1]).mean(axis=(1, 2))
    return jnp.concatenate([x.mean(axis=(1, 2)), x.std(axis=(1, 2)), grad], axis=-1)


@pytest.fixture(scope="module")
def colour_network():
    return features.FeatureNetwork("colour", lambda images: {"pool": _colour_features(images)},
                                   {"sha256": "c" * 64}, is_logits=None)


def _fid_scipy(x, y):
    """FID from its definition with NumPy/SciPy: |mu_x - mu_y|^2 + tr(Sx + Sy - 2 (Sx Sy)^1/2)."""
    import scipy.linalg

    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    sx, sy = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
    covmean = scipy.linalg.sqrtm(sx @ sy).real
    return float(np.sum((x.mean(0) - y.mean(0)) ** 2) + np.trace(sx + sy - 2 * covmean))


def _intra_evaluator(network, ref, ref_labels, tmp_path, **overrides):
    settings = metrics.eval_settings({"eval": {"num_reference": len(ref), "cache_dir": str(tmp_path),
                                               "batch_size": 50, "kid_subset_size": 1000, "kid_subsets": 3,
                                               "precision_recall": False, **overrides}})
    return metrics.Evaluator(settings, network=network, reference_images=ref, reference_labels=ref_labels,
                             reference_name="synthetic-ref")


def test_intra_class_fid_is_small_for_the_reference_distribution_and_large_for_shuffled_labels(
        colour_network, tmp_path):
    ref = data.load("synthetic", "test", max_examples=400)  # 40 per class; the hue tells the classes apart
    fresh = data.load("synthetic", "train", max_examples=400)  # other images, same class-conditionals
    ev = _intra_evaluator(colour_network, ref.images, ref.labels, tmp_path)
    same = ev.report(ref.images, ref.labels)
    m = same["metrics"]
    assert {f"fid_class{c}_colour" for c in range(10)} | {"fid_intra_colour", "kid_intra_colour"} <= set(m)
    assert max(m[f"fid_class{c}_colour"] for c in range(10)) < 1e-8
    assert same["intra_class"]["num_samples"] == {c: 40 for c in range(10)}
    assert same["intra_class"]["num_reference"] == {c: 40 for c in range(10)}
    assert any("biased upward" in n for n in same["notes"])
    good = ev(fresh.images, fresh.labels)
    shuffled = ev(fresh.images, np.random.default_rng(0).permutation(fresh.labels))
    assert shuffled["fid_intra_colour"] > 20 * good["fid_intra_colour"] > 0
    assert shuffled["kid_intra_colour"] > 20 * max(good["kid_intra_colour"], 1e-6)
    # Labels change only the intra-class keys: the overall FID is the unlabelled one.
    assert good["fid_colour"] == pytest.approx(ev(fresh.images)["fid_colour"], rel=1e-12)
    assert "fid_intra_colour" not in ev(fresh.images)


def test_per_class_fid_and_kid_match_independent_computations(colour_network, tmp_path):
    ref = data.load("synthetic", "test", max_examples=300)
    fake = data.load("synthetic", "train", max_examples=300)
    # Uneven fake classes: 3 classes only, one of them with 5 samples; the others are left out.
    keep = np.concatenate([np.flatnonzero(fake.labels == c)[:n] for c, n in ((1, 30), (4, 5), (7, 30))])
    images, labels = fake.images[keep], fake.labels[keep]
    ev = _intra_evaluator(colour_network, ref.images, ref.labels, tmp_path)
    report = ev.report(images, labels)
    real_f = np.asarray(_colour_features(jnp.asarray(ref.images)))
    fake_f = np.asarray(_colour_features(jnp.asarray(images)))
    want = {c: _fid_scipy(fake_f[labels == c], real_f[ref.labels == c]) for c in (1, 4, 7)}
    got = {c: report["metrics"][f"fid_class{c}_colour"] for c in (1, 4, 7)}
    assert got == pytest.approx(want, rel=1e-6)
    assert report["metrics"]["fid_intra_colour"] == pytest.approx(np.mean(list(want.values())), rel=1e-6)
    assert report["intra_class"]["classes"] == [1, 4, 7]
    assert report["intra_class"]["missing_classes"] == [0, 2, 3, 5, 6, 8, 9]
    assert report["intra_class"]["num_samples"] == {1: 30, 4: 5, 7: 30}
    # KID: classes whose sets differ in size draw subsets; equal sizes use the whole sets once,
    # which is the unbiased MMD^2 of the loop reference. Classes 2 and 3 swapped: a KID far from
    # 0, so float32 round-off in the features does not dominate the comparison.
    equal = np.concatenate([np.flatnonzero(fake.labels == c)[:30] for c in (2, 3)])
    swapped = 5 - fake.labels[equal]
    kid_report = ev.report(fake.images[equal], swapped)
    assert report["intra_class"]["kid_subsets"] == {1: 1, 4: 3, 7: 1}
    assert kid_report["intra_class"]["kid_subsets"] == {2: 1, 3: 1}
    eq_f = np.asarray(_colour_features(jnp.asarray(fake.images[equal])), np.float64)
    real_64 = real_f.astype(np.float64)
    loop = [_mmd2_unbiased_loop(real_64[ref.labels == c], eq_f[swapped == c]) for c in (2, 3)]
    assert kid_report["metrics"]["kid_intra_colour"] == pytest.approx(np.mean(loop), rel=1e-5)
    assert np.mean(loop) > 1e-3


def test_intra_class_errors_are_clear(colour_network, tmp_path):
    ref = data.load("synthetic", "test", max_examples=100)
    ev = _intra_evaluator(colour_network, ref.images, ref.labels, tmp_path)
    with pytest.raises(ValueError, match=r"labels must be integers of shape \(100,\)"):
        ev(ref.images, ref.labels[:50])
    with pytest.raises(ValueError, match="labels must be integers"):
        ev(ref.images, ref.labels.astype(np.float32))
    one = ref.labels.copy()
    one[np.flatnonzero(one == 3)[1:]] = 4  # class 3 keeps a single sample
    with pytest.raises(ValueError, match="class 3 has 1 sample"):
        ev(ref.images, one)
    with pytest.raises(ValueError, match="class 12 has 0 reference images"):
        ev(ref.images, np.where(ref.labels == 0, 12, ref.labels))
    unlabelled = _intra_evaluator(colour_network, ref.images, None, tmp_path / "u")
    assert "fid_colour" in unlabelled(ref.images)
    with pytest.raises(ValueError, match="need reference labels.*has none"):
        unlabelled(ref.images, ref.labels)


def test_reference_labels_extend_an_old_cache_only_when_needed(colour_network, tmp_path):
    kw = {"dataset": "synthetic", "split": "test", "image_size": 32, "num_examples": 60, "cache_dir": tmp_path}
    ds = data.load("synthetic", "test", max_examples=60)
    pool = np.asarray(_colour_features(jnp.asarray(ds.images)), np.float32)
    mu, sigma = scores.feature_statistics(pool)
    # A cache file as written before labels were stored: pool, mu, sigma only.
    path = features._cache_path(tmp_path, dataset="synthetic", split="test", image_size=32, num_examples=60,
                                network=colour_network)
    np.savez(path, pool=pool, mu=mu, sigma=sigma)

    def fail(_):
        raise AssertionError("the cached features should have been used")

    cached_net = features.FeatureNetwork("colour", fail, {"sha256": "c" * 64})
    old = features.reference_features(cached_net, **kw)
    assert old["labels"] is None
    with np.load(path) as f:
        assert "labels" not in f.files  # unconditional evaluation leaves the old file alone
    extended = features.reference_features(cached_net, with_labels=True, **kw)
    np.testing.assert_array_equal(extended["labels"], ds.labels)
    np.testing.assert_array_equal(extended["pool"], pool)
    with np.load(path) as f:
        np.testing.assert_array_equal(f["labels"], ds.labels)
        np.testing.assert_array_equal(f["pool"], pool)
    # A fresh cache stores the labels at once; an unlabelled set records that it has none.
    fresh = features.reference_features(colour_network, **{**kw, "cache_dir": tmp_path / "fresh"})
    np.testing.assert_array_equal(fresh["labels"], ds.labels)
    images_only = features.reference_features(colour_network, images=ds.images,
                                              **{**kw, "dataset": "toy", "cache_dir": tmp_path / "toy"})
    assert images_only["labels"] is None
    again = features.reference_features(cached_net, images=ds.images, with_labels=True,
                                        **{**kw, "dataset": "toy", "cache_dir": tmp_path / "toy"})
    assert again["labels"] is None


def test_a_metric_is_one_registry_entry_and_the_fid_key_is_explicit(random_offline_network, tmp_path, monkeypatch):
    ref = np.random.default_rng(9).integers(0, 256, (30, 32, 32, 3), dtype=np.uint8)
    settings = metrics.eval_settings({"eval": {"num_reference": 30, "cache_dir": str(tmp_path), "kid_subset_size": 10,
                                               "kid_subsets": 2, "is_splits": 2, "precision_recall": False}})
    ev = metrics.Evaluator(settings, network=random_offline_network, reference_images=ref, reference_name="toy")
    assert ev.fid_key == "fid_random_cnn" and metrics.PROTOCOLS["test10k"].num_reference == 10_000

    def mean_distance(f, s):  # a new metric: the distance between the two feature means
        return metrics.MetricResult({"mean_distance_{net}": float(np.linalg.norm(f.fake.mean(0) - f.real.mean(0)))},
                                    notes=("a toy metric",))

    monkeypatch.setitem(metrics.METRICS, "mean_distance", metrics.Metric(mean_distance))
    report = ev.report(ref[::-1])
    got = report["metrics"]
    assert set(got) == {"fid_random_cnn", "kid_random_cnn", "kid_random_cnn_std", "is_random_cnn",
                        "is_random_cnn_std", "is_random_cnn_1split", "mean_distance_random_cnn"}
    assert got["mean_distance_random_cnn"] == pytest.approx(0.0, abs=1e-4)  # the same images, reordered
    assert "a toy metric" in report["notes"]
    assert got[ev.fid_key] == pytest.approx(0.0, abs=1e-6 * (1 + np.trace(ev.reference(32)["sigma"])))
