"""Does the digits demo draw digits? A classifier fitted on scikit-learn's digits judges the samples.

Training on digits logs these figures as ``digits/*`` in ``metrics.jsonl``.

Samples (any size, RGB or grey) are averaged to grey, area-resized to the digits' native 8x8 and
scaled to 0..1; a multinomial logistic regression fitted on the digits train split (1500 images,
given at 16 and 32 px like the demo's data) then classifies them. Reported:

* ``confident``: share of samples whose top class probability exceeds 0.9;
* ``class_entropy``: entropy of the predicted-class histogram over log(10) (1 = all ten classes
  equally often, 0 = a single class: mode collapse);
* ``classes``: how many classes at least 2% of the samples are assigned to;
* ``score``: confident * class_entropy, one number for "recognisable and diverse";
* ``class_agreement`` (conditional models: the requested labels given): share of samples the
  classifier assigns to the class they were generated for (chance: 0.1).
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["CONFIDENCE", "features", "fit_classifier", "score"]

#: A sample counts as a recognisable digit above this top-class probability.
CONFIDENCE = 0.9


def features(images: np.ndarray) -> np.ndarray:
    """uint8 (N, H, W, C) or (N, H, W) -> (N, 64) float: grey, 8x8 area mean, scaled to 0..1."""
    images = np.asarray(images)
    if images.ndim == 4:
        images = images.mean(axis=-1)
    if images.ndim != 3:
        raise ValueError(f"images must be (N, H, W[, C]), got shape {images.shape}")
    n, h, w = images.shape
    if h % 8 or w % 8:
        raise ValueError(f"images: height and width must be multiples of 8, got {h}x{w}")
    small = images.reshape(n, 8, h // 8, 8, w // 8).mean(axis=(2, 4))
    return (small / 255.0).reshape(n, 64)


def fit_classifier(*, sizes: tuple[int, ...] = (16, 32)) -> Any:
    """Logistic regression on the digits train split rendered at ``sizes`` (as sympad.train.data does)."""
    from sklearn.linear_model import LogisticRegression

    from sympad.train import data

    xs, ys = [], []
    for size in sizes:
        ds = data.load("digits", "train", image_size=size)
        xs.append(features(ds.images))
        ys.append(ds.labels)
    # No feature standardization: it would blow up pixels that are always blank in digits, and
    # noise there would then be classified with full confidence. C=10: about 91% test accuracy;
    # above CONFIDENCE: 81% of the real test digits, 1.3% of uniform noise (16 px; 0% at 32 px).
    classifier = LogisticRegression(C=10.0, max_iter=2000)
    return classifier.fit(np.concatenate(xs), np.concatenate(ys))


def score(images: np.ndarray, classifier: Any, labels: np.ndarray | None = None) -> dict[str, float]:
    """The figures of the module docstring for uint8 ``images`` (N, H, W[, C]).

    ``labels`` (N,): the classes the samples were generated for; adds ``class_agreement``.
    """
    if labels is not None and np.shape(labels) != (len(images),):
        raise ValueError(f"labels must have shape ({len(images)},), got {np.shape(labels)}")
    probs = classifier.predict_proba(features(images))
    top = probs.max(axis=1)
    counts = np.bincount(probs.argmax(axis=1), minlength=10).astype(np.float64)
    share = counts / counts.sum()
    nonzero = share[share > 0]
    entropy = float(max(0.0, -(nonzero * np.log(nonzero)).sum() / np.log(10)))
    confident = float((top > CONFIDENCE).mean())
    agreement = {} if labels is None else {"class_agreement": float((probs.argmax(axis=1) == labels).mean())}
    return {
        **agreement,
        "confident": confident,
        "class_entropy": entropy,
        "classes": float((share >= 0.02).sum()),
        "score": confident * entropy,
        "mean_top_prob": float(top.mean()),
    }

