"""CPU side of the campaign: FID/KID of the samples a device run returned, through ``gan.metrics``.

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

__all__ = ["contract_labels", "evaluate_samples", "load_labels", "load_samples", "merge_run", "network_label",
           "pending_evaluations"]

#: An evaluator: uint8 images (N, H, W, 3) [, labels=int (N,)] -> gan.metrics' report dict
#: (metrics, feature_network, ...); called with ``labels`` only for conditional results.
Scorer = Callable[..., Mapping[str, Any]]

#: Classes of the campaign's conditional runs (CIFAR-10).
NUM_CLASSES = 10


def merge_run(run_dir: Path, results_file: Path) -> int:
    """Appends the run's records that ``results_file`` lacks; returns how many. A smoke run's
    records are refused: the committed results hold device runs of the plan only."""
    records = results_lib.read(run_dir / "results.jsonl")
    smoke = [r for r in records if r.get("campaign") == "smoke"]
    if smoke:
        raise ValueError(f"{run_dir} holds a smoke run ({len(smoke)} records): not merged into {results_file}")
    return results_lib.merge(results_file, records)


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


def pending_evaluations(records: Sequence[Mapping[str, Any]], *, network: str, run_dir: Path) -> list[Mapping[str, Any]]:
    """'done' GAN results with samples in ``run_dir`` and no evaluation labelled ``network`` yet."""
    evaluated = {(r["id"], r["of_run"]) for r in records
                 if r.get("record") == "evaluation" and r.get("network") == network}
    return [r for r in records
            if r.get("record") == "result" and r.get("suite") == "gan" and r.get("status") == "done"
            and r.get("artifacts") and (r["id"], r["run"]) not in evaluated
            and all((run_dir / a).is_file() for a in r["artifacts"])]


def evaluate_samples(records: Sequence[Mapping[str, Any]], *, run_dir: Path, scorer: Scorer, network: str,
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
        images = load_samples(run_dir, result["artifacts"])
        labels, labels_from = None, None
        if result.get("conditional") or result["id"] in conditional:
            labels, labels_from = load_labels(run_dir, result["artifacts"]), "stored with the samples"
            if labels is None:
                labels = contract_labels(len(images), num_classes)
                labels_from = f"reconstructed by the sampling contract: sample i has class i % {num_classes}"
        report = scorer(images) if labels is None else scorer(images, labels=labels)
        identity = dict(report.get("feature_network", {}))
        out.append({
            "record": "evaluation", "id": result["id"], "of_run": result["run"], "network": network,
            "feature_network": {k: identity.get(k) for k in ("name", "sha256", "description") if k in identity},
            "metrics": dict(report["metrics"]), "num_samples": int(report.get("num_samples", len(images))),
            "num_reference": report.get("num_reference"), "protocol": report.get("protocol", {}).get("name"),
            "reference": {k: v for k, v in report.get("reference", {}).items() if k != "cache_file"},
            "notes": list(report.get("notes", [])), "device": device, "command": command,
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            **({"labels": labels_from, "intra_class": report.get("intra_class")} if labels is not None else {}),
        })
    return out
