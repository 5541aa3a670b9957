"""Feature extraction says how far it is: images done, total, rate and ETA (issue 23)."""

from __future__ import annotations

import io

import numpy as np

from gan.metrics.features import extract_features, get_feature_network
from sympad.train.progress import Progress


def test_extract_features_prints_images_done_total_rate_and_eta(capsys):
    network = get_feature_network("offline")
    images = np.random.default_rng(0).integers(0, 256, (10, 32, 32, 3), dtype=np.uint8)
    feats = extract_features(network, images, batch_size=4, keys=("pool",), desc="samples")
    assert feats["pool"].shape[0] == 10
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("samples (offline_cifar10):")]
    assert lines and lines[-1].startswith("samples (offline_cifar10): 10/10 images (100%), ")
    assert " images/s, ETA " in lines[-1]


def test_progress_counts_other_units_and_moves_its_end():
    out = io.StringIO()
    clock = iter([0.0, 10.0, 20.0, 30.0]).__next__
    progress = Progress(100, desc="features", file=out, unit="images", clock=clock, log_every_frac=0.5)
    progress.update(50)
    progress.set_total(60)  # a run shortened while it trains
    progress.update(60)
    assert out.getvalue().splitlines() == ["features: 50/100 images (50%), 5 images/s, ETA 0:00:10",
                                           "features: 60/60 images (100%), 3 images/s, ETA 0:00:00"]


def test_batches_are_equal_and_only_the_last_is_padded():
    from gan.metrics.features import even_batches

    assert even_batches(10_000, 50) == (50, 200)
    assert even_batches(300, 200) == (150, 2)  # one batch of 200 padded to 400 would waste 100 images
    assert even_batches(7, 200) == (7, 1)
    assert even_batches(201, 200) == (101, 2)  # 1 padded image, not 199
    for num, size in [(1, 1), (13, 4), (999, 50), (10_001, 200)]:
        per, count = even_batches(num, size)
        assert per <= size and count == -(-num // size) and 0 <= per * count - num < count


def test_extract_features_calls_one_shape_and_wastes_less_than_a_batch_count():
    from gan.metrics.features import FeatureNetwork

    seen = []

    def apply(batch):
        seen.append(batch.shape[0])
        return {"pool": np.asarray(batch, np.float32).mean(axis=(1, 2))}

    images = np.random.default_rng(1).integers(0, 256, (201, 4, 4, 3), dtype=np.uint8)
    feats = extract_features(FeatureNetwork("mean", apply, {}), images, batch_size=200, keys=("pool",))
    assert seen == [101, 101]  # equal batches: one compiled program, 1 padded image
    np.testing.assert_allclose(feats["pool"], images.astype(np.float32).mean(axis=(1, 2)))


def test_default_batch_size_by_backend():
    from gan.metrics.features import default_batch_size

    assert default_batch_size("cpu") == 50 and default_batch_size("gpu") == default_batch_size("tpu") == 200
