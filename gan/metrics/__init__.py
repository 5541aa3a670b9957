"""GAN sample-quality metrics: FID, Inception Score, KID, precision/recall.

Feature networks: the FID Inception-v3 port (``inception``; weights obtained once by
``python -m gan.metrics.fetch`` into a per-user cache, see ``inception_weights``, and used by
default from then on) and a small offline CIFAR-10 classifier shipped with the project
(``offline``), the fallback when no Inception weights are available. Every metric key names the
network that produced it (``fid_inception``, ``fid_offline_cifar10``).

    from gan.metrics import build_evaluator
    evaluate = build_evaluator(config)          # config.eval fields: see gan.metrics.evaluator
    metrics = evaluate(samples_uint8)           # {'fid_offline_cifar10': ..., ...}
"""

from gan.metrics.evaluator import (
    METRICS,
    PROTOCOLS,
    Evaluator,
    Features,
    Metric,
    MetricResult,
    Protocol,
    build_evaluator,
    default_eval_config,
    eval_settings,
)
from gan.metrics.features import FeatureNetwork, extract_features, get_feature_network, reference_features
from gan.metrics.scores import (
    feature_statistics,
    frechet_distance,
    inception_score,
    kernel_inception_distance,
    precision_recall,
)

__all__ = [
    "METRICS",
    "PROTOCOLS",
    "Evaluator",
    "FeatureNetwork",
    "Features",
    "Metric",
    "MetricResult",
    "Protocol",
    "build_evaluator",
    "default_eval_config",
    "eval_settings",
    "extract_features",
    "feature_statistics",
    "frechet_distance",
    "get_feature_network",
    "inception_score",
    "kernel_inception_distance",
    "precision_recall",
    "reference_features",
]
