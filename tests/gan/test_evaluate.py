"""``python -m gan.evaluate`` end to end: saved samples → JSON with metrics, protocol, counts, network."""

from __future__ import annotations

import json

import jax.numpy as jnp
import numpy as np
import pytest

from gan import evaluate
from gan.metrics import offline, scores


@pytest.fixture(scope="module")
def offline_weights(tmp_path_factory):
    """A randomly initialised offline network saved like the shipped one (the test must not depend
    on trained weights, and random features still tell identical sets from different ones)."""
    variables = offline.random_variables(1)
    path = tmp_path_factory.mktemp("weights") / "random_offline.npz"
    offline.save_offline_weights(path, variables, metadata={"name": "offline_cifar10", "test_accuracy": 0.1})
    return path


SMALL = ["--batch_size=16", "--kid_subsets=3", "--kid_subset_size=16", "--is_splits=2", "--pr_num_samples=16"]


def test_samples_file_end_to_end(tmp_path, offline_weights):
    rng = np.random.default_rng(0)
    reference = rng.integers(0, 256, (32, 32, 32, 3), dtype=np.uint8)
    np.savez(tmp_path / "reference.npz", images=reference)
    np.savez(tmp_path / "samples.npz", images=reference)  # samples == reference: FID must vanish
    out = tmp_path / "eval.json"
    argv = [f"--samples={tmp_path / 'samples.npz'}", f"--reference=npz:{tmp_path / 'reference.npz'}",
            f"--offline_weights={offline_weights}", f"--cache_dir={tmp_path / 'cache'}", "--num_reference=32",
            f"--out={out}", *SMALL, "--pr_num_samples=32"]
    evaluate.main(argv)
    report = json.loads(out.read_text())
    m = report["metrics"]
    assert report["feature_network"]["name"] == "offline_cifar10"
    assert report["feature_network"]["weights"] == str(offline_weights)
    assert report["protocol"]["name"] == "test10k" and "compare_gan" in report["protocol"]["description"]
    assert report["num_samples"] == 32 and report["num_reference"] == 32
    assert report["reference"]["image_size"] == 32 and report["reference"]["split"] == "test"
    assert any("not comparable" in n for n in report["notes"])
    assert {"fid_offline_cifar10", "kid_offline_cifar10", "is_offline_cifar10", "precision_offline_cifar10",
            "recall_offline_cifar10"} <= set(m)
    with np.load(report["reference"]["cache_file"]) as f:
        trace = np.trace(f["sigma"])
    assert abs(m["fid_offline_cifar10"]) < 1e-6 * trace
    assert m["precision_offline_cifar10"] == m["recall_offline_cifar10"] == 1.0

    # Different samples, same cached reference: a positive FID equal to one computed by hand.
    shifted = np.clip(reference.astype(int) + 60, 0, 255).astype(np.uint8)
    np.savez(tmp_path / "samples.npz", images=shifted)
    evaluate.main(argv)
    report = json.loads(out.read_text())
    net = offline.offline_apply_fn(offline.load_offline_weights(offline_weights)[0])
    fake = np.asarray(net(jnp.asarray(shifted))["pool"], np.float64)
    real = np.asarray(net(jnp.asarray(reference))["pool"], np.float64)
    want = scores.frechet_distance(*scores.feature_statistics(fake), *scores.feature_statistics(real))
    assert report["metrics"]["fid_offline_cifar10"] == pytest.approx(want, rel=1e-3)
    assert want > 0.1 * trace


def test_workdir_with_config_and_sympad_data_reference(tmp_path, offline_weights):
    samples = np.random.default_rng(1).integers(0, 256, (24, 32, 32, 3), dtype=np.uint8)
    np.savez(tmp_path / "samples.npz", images=samples)
    config = {"data": {"name": "synthetic"},
              "eval": {"protocol": "train50k", "num_reference": 40, "offline_weights": str(offline_weights),
                       "cache_dir": str(tmp_path / "cache")}}
    (tmp_path / "config.json").write_text(json.dumps(config))
    report = evaluate.main([f"--workdir={tmp_path}", *SMALL])
    written = tmp_path / "eval_offline_cifar10_train50k.json"
    assert json.loads(written.read_text()) == json.loads(json.dumps(report))
    assert report["reference"]["dataset"] == "synthetic" and report["reference"]["split"] == "train"
    assert report["num_reference"] == 40 and report["protocol"]["name"] == "train50k"
    assert any("24 samples instead of the protocol's 50000" in n for n in report["notes"])
    assert np.isfinite(report["metrics"]["fid_offline_cifar10"])


def test_errors_are_clear(tmp_path):
    np.savez(tmp_path / "bad.npz", images=np.zeros((2, 8, 8, 3), np.float32))
    with pytest.raises(ValueError, match="uint8"):
        evaluate.main([f"--samples={tmp_path / 'bad.npz'}"])
    np.savez(tmp_path / "samples.npz", images=np.zeros((2, 8, 8, 3), np.uint8))
    with pytest.raises(FileNotFoundError, match="pt_inception-2015-12-05-6726825d.pth"):
        evaluate.main([f"--samples={tmp_path / 'samples.npz'}", f"--inception_weights={tmp_path / 'x.pth'}"])
    with pytest.raises(FileNotFoundError, match="samples"):
        evaluate.main([f"--workdir={tmp_path / 'empty'}"])


def test_labelled_samples_get_intra_class_metrics(tmp_path, offline_weights):
    from sympad.train import data

    ref = data.load("synthetic", "test", max_examples=60)  # 6 per class
    np.savez(tmp_path / "reference.npz", images=ref.images, labels=ref.labels)
    np.savez(tmp_path / "reference_unlabelled.npz", images=ref.images)
    np.savez(tmp_path / "samples.npz", images=ref.images, labels=ref.labels)
    base = [f"--samples={tmp_path / 'samples.npz'}", f"--offline_weights={offline_weights}",
            f"--cache_dir={tmp_path / 'cache'}", "--num_reference=60", f"--out={tmp_path / 'eval.json'}", *SMALL]
    report = evaluate.main([*base, f"--reference=npz:{tmp_path / 'reference.npz'}"])
    m = report["metrics"]
    assert {f"fid_class{c}_offline_cifar10" for c in range(10)} <= set(m)
    assert {"fid_intra_offline_cifar10", "kid_intra_offline_cifar10", "fid_offline_cifar10"} <= set(m)
    written = json.loads((tmp_path / "eval.json").read_text())
    assert written["intra_class"]["num_samples"] == {str(c): 6 for c in range(10)}
    # Samples == reference: every class's FID vanishes (relative to the class's feature spread).
    net = offline.offline_apply_fn(offline.load_offline_weights(offline_weights)[0])
    feats = np.asarray(net(jnp.asarray(ref.images))["pool"], np.float64)
    spread = min(np.trace(np.cov(feats[ref.labels == c], rowvar=False)) for c in range(10))
    assert max(m[f"fid_class{c}_offline_cifar10"] for c in range(10)) < 1e-3 * spread
    # Shuffled labels: the same images, a large intra-class FID, the same overall FID.
    np.savez(tmp_path / "samples.npz", images=ref.images, labels=np.roll(ref.labels, 1))
    shuffled = evaluate.main([*base, f"--reference=npz:{tmp_path / 'reference.npz'}"])["metrics"]
    assert shuffled["fid_intra_offline_cifar10"] > 0.1 * spread
    assert shuffled["fid_offline_cifar10"] == pytest.approx(m["fid_offline_cifar10"], abs=1e-6 * spread)
    # --no_intra_class: overall metrics only; an unlabelled reference then works too.
    plain = evaluate.main([*base, "--no_intra_class", f"--reference=npz:{tmp_path / 'reference_unlabelled.npz'}"])
    assert not any("intra" in k or "class" in k for k in plain["metrics"]) and "intra_class" not in plain
    with pytest.raises(ValueError, match="reference labels"):
        evaluate.main([*base, f"--reference=npz:{tmp_path / 'reference_unlabelled.npz'}"])


def test_intra_class_flag_errors(tmp_path):
    np.savez(tmp_path / "samples.npz", images=np.zeros((4, 8, 8, 3), np.uint8))
    with pytest.raises(ValueError, match="intra_class: .* has no 'labels'"):
        evaluate.main([f"--samples={tmp_path / 'samples.npz'}", "--intra_class"])
    np.savez(tmp_path / "bad.npz", images=np.zeros((4, 8, 8, 3), np.uint8), labels=np.zeros(3, np.int32))
    with pytest.raises(ValueError, match=r"'labels' .* must be integers of shape \(4,\)"):
        evaluate.main([f"--samples={tmp_path / 'bad.npz'}"])
    with pytest.raises(SystemExit):
        evaluate.main([f"--samples={tmp_path / 'samples.npz'}", "--intra_class", "--no_intra_class"])
