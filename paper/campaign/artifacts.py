"""What a finished entry measured: its logged metrics and timings, and its samples as files that travel.

Read from the entry's work directory (``metrics.jsonl``, ``model_summary.json``,
``final_metrics.json``, gan.sample's ``samples.npz``, or ``samples_seed<k>.npz`` for one seed of a
process that trained several); samples are written to the results directory as uint8 ``.npz``
files of at most :data:`MAX_FILE_BYTES`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from paper.campaign import results as results_lib
from paper.campaign.plan import Entry

__all__ = ["MAX_FILE_BYTES", "collect", "metric_lines", "timing", "write_samples"]

#: Largest file the device machine sends back (the issue: 16 MiB a file, 8 files, 64 MiB in all).
MAX_FILE_BYTES = 16 * 2**20


def metric_lines(workdir: Path) -> list[dict[str, Any]]:
    return results_lib.read(workdir / "metrics.jsonl")


def timing(lines: Sequence[Mapping[str, Any]], *, rate_key: str) -> dict[str, float | None]:
    """Steady step time (median over logged intervals after the first) and a compile estimate
    (the first interval's excess over that: compiling happens in the first step)."""
    rated = [(int(r["step"]), float(r[rate_key])) for r in lines if r.get(rate_key)]
    if len(rated) < 2:
        return {"step_time_s": 1.0 / rated[0][1] if rated else None, "compile_s": None}
    step_time = float(np.median([1.0 / rate for _, rate in rated[1:]]))
    first_steps, first_rate = rated[0]
    return {"step_time_s": step_time, "compile_s": max(0.0, first_steps / first_rate - first_steps * step_time)}


def write_samples(images: np.ndarray, *, out: Path, stem: str, max_bytes: int = MAX_FILE_BYTES,
                  labels: np.ndarray | None = None) -> list[str]:
    """Writes uint8 ``images`` (N, H, W, C) as ``stem-<k>.npz`` files (key 'images', and 'labels'
    int32 (n,) when ``labels`` are given) of at most ``max_bytes`` each; returns the file names in order."""
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4:
        raise ValueError(f"images must be uint8 (N, H, W, C), got {images.dtype} {images.shape}")
    if labels is not None:
        labels = np.asarray(labels)
        if labels.shape != images.shape[:1] or not np.issubdtype(labels.dtype, np.integer):
            raise ValueError(f"labels must be integers of shape ({len(images)},), got {labels.dtype} {labels.shape}")
        labels = labels.astype(np.int32)
    per_image = int(np.prod(images.shape[1:])) + (4 if labels is not None else 0)
    per_file = (max_bytes - 4096) // per_image  # 4 KiB for the zip and .npy headers
    if per_file < 1:
        raise ValueError(f"max_bytes={max_bytes} holds no {images.shape[1:]} image")
    names = []
    for k, lo in enumerate(range(0, len(images), per_file)):
        name = f"{stem}-{k}.npz"
        part = {"labels": labels[lo:lo + per_file]} if labels is not None else {}
        np.savez(out / name, images=images[lo:lo + per_file], **part)
        names.append(name)
    return names


def _gan_found(entry: Entry, workdir: Path, out: Path, *, return_samples: int | None, seed: int | None
               ) -> dict[str, Any]:
    """A GAN entry's metrics, parameter counts and samples; ``seed``: its seed's, in a process of several."""
    from gan.state import (  # Deferred: only a GAN result needs the suite's names.
        seed_path,
        seed_prefix,
    )

    lines = metric_lines(workdir)
    found: dict[str, Any] = dict(timing(lines, rate_key="steps_per_s"))
    last = lines[-1] if lines else {}
    prefix = "" if seed is None else seed_prefix(seed)
    found["metrics"] = {k: last[prefix + k] for k in ("d_loss", "g_loss") if prefix + k in last}
    found["metrics"].update({k: last[k] for k in ("step", "d_steps") if k in last})
    found["steps"] = int(last.get("step", 0))  # 0: stopped before its first logged step
    summary = workdir / "model_summary.json"
    if summary.is_file():
        s = json.loads(summary.read_text())
        found["params"] = {"generator": s.get("generator", {}).get("params"),
                           "discriminator": s.get("discriminator", {}).get("params"),
                           "generator_widths": s.get("generator", {}).get("widths")}
    samples = workdir / "samples.npz"
    samples = samples if seed is None else seed_path(samples, seed)  # gan.sample's file of that seed
    if entry.samples and samples.is_file():
        with np.load(samples) as z:
            images = z["images"]
            labels = z["labels"] if "labels" in z.files else None  # gan.sample's, for a conditional G
        found["num_samples"] = int(len(images))
        found["samples_file"] = f"{workdir.name}/{samples.name}"
        if return_samples is not None:
            images = images[:return_samples]
            labels = None if labels is None else labels[:return_samples]
            found["returned_samples"] = int(len(images))
        found["artifacts"] = write_samples(images, out=out, stem=f"samples-{entry.id}", labels=labels)
        found["labelled_samples"] = labels is not None
    return found


def collect(entry: Entry, workdir: Path, out: Path, *, return_samples: int | None = None,
             seed: int | None = None) -> dict[str, Any]:
    """Metrics, timings and artifacts of a finished entry; ``return_samples``: copy only the
    first that many GAN samples to ``out`` (None: all of them); ``seed``: the entry's seed in a
    process that trained several (its ``seed<k>/`` metrics and ``samples_seed<k>.npz``)."""
    if entry.suite == "gan":
        return _gan_found(entry, workdir, out, return_samples=return_samples, seed=seed)
    if entry.suite == "classify":
        lines = metric_lines(workdir)
        found = dict(timing(lines, rate_key="steps_per_s"))
        final = workdir / "final_metrics.json"
        found["metrics"] = json.loads(final.read_text()) if final.is_file() else {}
        return found
    if entry.suite == "bench":
        return {"bench_records": results_lib.read(workdir / "results.jsonl")}
    return {}
