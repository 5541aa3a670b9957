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
