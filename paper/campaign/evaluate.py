"""Scores of the campaign's GAN samples, through ``gan.metrics``: on the device, and checked on the CPU.

On the device (:func:`score_run`, ``python -m paper.reproduce score``, started by the runner
after each group): every sample set of the run (10k) is scored where it was made and an
``evaluation`` record is written; the pool3 features of the first samples copied back are stored
in their ``.npz`` (``features``). On the CPU (:func:`crosscheck`): the same images' features from
this machine's network, compared with the device's (a ``crosscheck`` record).


The device run's results go into the committed results file first (:func:`merge_run`); then every
'done' GAN result whose samples are in the run directory and that has no evaluation by the same
feature network yet is scored against the CIFAR-10 test split (the paper's protocol: 10k samples
vs the 10k test images) and an ``evaluation`` record is appended, labelled with the network and
its weights digest. Conditional results are scored per class as well (intra-class FID/KID): with
the labels stored beside their samples, or, for sample files without them, the labels of the
sampling contract (sample ``i`` has class ``i % num_classes``, ``gan.sampling.class_labels``).
"""

from __future__ import annotations

import datetime
from collections.abc import Callable, Collection, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from paper.campaign import results as results_lib
from paper.campaign.results import Evaluation, Records, Result

__all__ = ["FEATURE_CHECK", "contract_labels", "crosscheck", "evaluate_samples", "load_labels", "load_samples",
           "merge_run", "network_label", "pending_crosschecks", "pending_evaluations", "score_run"]

#: Returned samples whose device features are stored beside them (float32 (n, 2048): 4 MiB).
FEATURE_CHECK = 512

#: An evaluator: uint8 images (N, H, W, 3) [, labels=int (N,)] -> gan.metrics' report dict
#: (metrics, feature_network, ...); called with ``labels`` only for conditional results.
Scorer = Callable[..., Mapping[str, Any]]

#: Classes of the campaign's conditional runs (CIFAR-10).
NUM_CLASSES = 10

#: What the functions read: typed records, or the results file's dicts (validated on the way in).
RecordsLike = Records | Sequence[Mapping[str, Any]]


def merge_run(run_dir: Path, results_file: Path) -> int:
    """Appends the run's records that ``results_file`` lacks; returns how many. A smoke run's
    records are refused: the committed results hold device runs of the plan only."""
    path = run_dir / "results.jsonl"
    loaded = results_lib.load(path)  # a malformed record never enters the committed file
    smoke = [r for r in [*loaded.runs(), *loaded.results()] if r.campaign == "smoke"]
    if smoke:
        raise ValueError(f"{run_dir} holds a smoke run ({len(smoke)} records): not merged into {results_file}")
    return results_lib.merge(results_file, results_lib.read(path))


def load_samples(run_dir: Path, artifacts: Sequence[str]) -> np.ndarray:
    """The samples of one result: its ``.npz`` files concatenated in order (uint8 (N, H, W, 3))."""
    parts = []
    for name in artifacts:
        with np.load(run_dir / name) as z:
            parts.append(z["images"])
    images = np.concatenate(parts)
    if images.dtype != np.uint8:
        raise ValueError(f"samples of {list(artifacts)} are {images.dtype}, expected uint8")
    return images


def load_labels(run_dir: Path, artifacts: Sequence[str]) -> np.ndarray | None:
    """The int32 class labels stored with one result's samples, in order; None when the files have none."""
    parts = []
    for name in artifacts:
        with np.load(run_dir / name) as z:
            parts.append(z["labels"] if "labels" in z.files else None)
    if all(p is None for p in parts):
        return None
    if any(p is None for p in parts):
        raise ValueError(f"samples {list(artifacts)}: some files have 'labels' and some do not")
    return np.concatenate(parts).astype(np.int32)


def contract_labels(num: int, num_classes: int = NUM_CLASSES) -> np.ndarray:
    """The labels conditional sampling gives by contract: sample ``i`` has class ``i % num_classes``
    (``gan.sampling.class_labels``, restated here: the paper layer reads sample files, not G)."""
    return (np.arange(num) % num_classes).astype(np.int32)


def network_label(identity: Mapping[str, Any]) -> str:
    return f"{identity.get('name', '?')}-{str(identity.get('sha256', 'unknown'))[:12]}"


def _scored(records: Records, result: Result, network: str) -> bool:
    """Whether ``result`` is a finished GAN result with samples that ``network`` has not scored yet."""
    return (result.suite == "gan" and result.status == "done" and bool(result.artifacts)
            and not records.evaluations(result, network=network))


def pending_evaluations(records: RecordsLike, *, network: str, run_dir: Path) -> list[Result]:
    """'done' GAN results with samples in ``run_dir`` and no evaluation labelled ``network`` yet."""
    records = Records.of(records)
    return [r for r in records.results() if _scored(records, r, network)
            and all((run_dir / a).is_file() for a in r.artifacts)]


def evaluate_samples(records: RecordsLike, *, run_dir: Path, scorer: Scorer, network: str,
                     device: str, command: str, conditional: Collection[str] = (),
                     num_classes: int = NUM_CLASSES) -> list[dict[str, Any]]:
    """Evaluation records of every pending result (see :func:`pending_evaluations`).

    Args:
      records: the results so far.
      run_dir: where the device run's sample files are.
      scorer: gan.metrics' ``Evaluator.report`` (or a test's stand-in).
      network: the scorer's label (name and weights digest), to skip what it already scored.
      device: where the scoring runs (recorded).
      command: the command line that runs this (recorded).
      conditional: ids of the plan's conditional entries (results also say so themselves); their
        samples are scored with labels, per class too.
      num_classes: classes of the contract's labels, for sample files stored without labels.
    """
    out = []
    for result in pending_evaluations(records, network=network, run_dir=run_dir):
        images = load_samples(run_dir, result.artifacts)
        labels, labels_from = None, None
        if result.conditional or result.id in conditional:
            labels, labels_from = load_labels(run_dir, result.artifacts), "stored with the samples"
            if labels is None:
                labels = contract_labels(len(images), num_classes)
                labels_from = f"reconstructed by the sampling contract: sample i has class i % {num_classes}"
        report = scorer(images) if labels is None else scorer(images, labels=labels)
        out.append(_evaluation_record(result, report, network=network, device=device, command=command,
                                      num=len(images), labels_from=labels_from if labels is not None else None))
    return out


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")


def _evaluation_record(result: Result, report: Mapping[str, Any], *, network: str, device: str,
                       command: str, num: int, labels_from: str | None) -> dict[str, Any]:
    identity = dict(report.get("feature_network", {}))
    return {
        "record": "evaluation", "id": result.id, "of_run": result.run, "network": network,
        "feature_network": {k: identity.get(k) for k in ("name", "sha256", "description", "form", "float32_sha256")
                            if k in identity},
        "metrics": dict(report["metrics"]), "num_samples": int(report.get("num_samples", num)),
        "num_reference": report.get("num_reference"), "protocol": report.get("protocol", {}).get("name"),
        "reference": {k: v for k, v in report.get("reference", {}).items() if k != "cache_file"},
        "notes": list(report.get("notes", [])), "device": device, "command": command, "date": _now(),
        **({"labels": labels_from, "intra_class": report.get("intra_class")} if labels_from else {}),
    }


def score_run(records: RecordsLike, *, run_id: str, workroot: Path, out: Path, scorer: Scorer,
              features: Callable[[np.ndarray], np.ndarray], network: str, device: str, command: str,
              feature_check: int = FEATURE_CHECK) -> list[dict[str, Any]]:
    """Evaluation records of run ``run_id``'s finished GAN results, scored where they were made.

    Args:
      records: the run's records (``out/results.jsonl``).
      run_id: the run whose results to score.
      workroot: the runner's run directories: every sample in ``<workroot>/<samples_file>`` (a
        result's, e.g. ``<trainer>/samples_seed1.npz``), else ``<workroot>/<id>/samples.npz``.
      out: the results directory holding the returned samples (their first file gets the device
        features of its first ``feature_check`` images as ``features``).
      scorer: ``Evaluator.report``; features: uint8 images -> pool3 features (float32 (n, D)).
      network: the scorer's label; device, command: recorded.
    """
    records = Records.of(records)
    new = []
    for result in (r for r in records.results() if r.run == run_id and _scored(records, r, network)):
        with np.load(workroot / (result.samples_file or f"{result.id}/samples.npz")) as z:
            images = z["images"]
            labels = z["labels"].astype(np.int32) if "labels" in z.files else None
        report = scorer(images) if labels is None else scorer(images, labels=labels)
        record = _evaluation_record(result, report, network=network, device=device, command=command,
                                    num=len(images),
                                    labels_from=None if labels is None else "stored with the samples")
        first = out / result.artifacts[0]
        with np.load(first) as z:
            returned = {k: z[k] for k in z.files}
        n = min(feature_check, len(returned["images"]))
        returned["features"] = np.asarray(features(returned["images"][:n]), np.float32)
        np.savez(first, **returned)
        record["feature_check"] = {"file": first.name, "num": n}
        new.append(record)
    return new


def pending_crosschecks(records: RecordsLike, *, network: str, run_dir: Path) -> list[Evaluation]:
    """Device evaluations with stored features in ``run_dir`` and no cross-check by ``network`` yet."""
    records = Records.of(records)
    return [ev for ev in records.evaluations() if ev.feature_check is not None
            and not records.crosschecks(ev, network=network) and (run_dir / ev.feature_check["file"]).is_file()]


def crosscheck(records: RecordsLike, *, run_dir: Path, features: Callable[[np.ndarray], np.ndarray],
               network: str, identity: Mapping[str, Any], device: str, command: str) -> list[dict[str, Any]]:
    """``crosscheck`` records: this machine's pool3 features of the returned images whose device
    features were stored, against those: per image, the largest difference over the largest
    feature; its max and mean over the images."""
    new = []
    for ev in pending_crosschecks(records, network=network, run_dir=run_dir):
        with np.load(run_dir / ev.feature_check["file"]) as z:
            theirs = z["features"].astype(np.float64)
            images = z["images"][:len(theirs)]
        ours = np.asarray(features(images), np.float64)
        rel = np.abs(ours - theirs).max(axis=1) / np.maximum(np.abs(theirs).max(axis=1), 1e-12)
        new.append({
            "record": "crosscheck", "id": ev.id, "of_run": ev.of_run, "of_network": ev.network,
            "network": network, "form": identity.get("form", "float32"), "num": len(images),
            "max_rel_diff": float(rel.max()), "mean_rel_diff": float(rel.mean()),
            "device": device, "command": command,
            "date": _now(),
        })
    return new
