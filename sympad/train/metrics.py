"""Metrics: JSON lines and TensorBoard events, image grids, and the NaN/Inf guard.

``MetricWriter`` appends JSON lines to ``workdir/metrics.jsonl`` and writes TensorBoard event
files through tensorboardX (no TensorFlow). ``check_finite`` stops a run on NaN/Inf with a
message that says where the last good checkpoint is.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TextIO

import jax
import numpy as np

from sympad.train.checkpoint import committed_steps

__all__ = ["DivergenceError", "MetricWriter", "check_finite", "image_grid", "save_image_grid"]


class DivergenceError(RuntimeError):
    """A training metric became NaN or infinite."""


def check_finite(
    step: int, metrics: Mapping[str, Any], *, checkpoint_dir: str | os.PathLike[str] | None = None
) -> None:
    """Raises ``DivergenceError`` if any metric is NaN or infinite.

    Fetches the metrics to the host, so call it where they are fetched anyway (log intervals),
    and before ``Checkpointer.save``, so that a diverged state never becomes the latest checkpoint.

    Args:
      step: the step the metrics belong to.
      metrics: name → scalar or array.
      checkpoint_dir: the ``Checkpointer`` directory, named in the message with its latest step.

    Raises:
      DivergenceError: "step N: <metric> is nan; stopping. The last good checkpoint is at <dir>
        (step M)."
    """
    for name, value in metrics.items():
        arr = np.asarray(jax.device_get(value))
        if not np.issubdtype(arr.dtype, np.inexact) or np.isfinite(arr).all():
            continue
        kind = "nan" if np.isnan(arr).any() else "inf"
        if checkpoint_dir is None:
            where = "No checkpoint directory was given."
        else:
            steps = committed_steps(Path(checkpoint_dir))
            where = (
                f"The last good checkpoint is at {checkpoint_dir} (step {steps[-1]})."
                if steps
                else f"No checkpoint has been saved yet in {checkpoint_dir}."
            )
        raise DivergenceError(f"step {int(step)}: {name} is {kind}; stopping. {where}")


# ----------------------------------------------------------------------------------------------
# Metrics and images


def _summary_writer_class() -> type:
    """``tensorboardX.SummaryWriter``, imported without dragging in PyTorch.

    tensorboardX's package init runs ``try: import torch`` only so that it can accept torch
    tensors; where torch happens to be installed that costs seconds of start-up (7 s measured on
    a loaded 2-core machine, 0.14 s without). We pass NumPy only, so torch is hidden during the
    import: a ``None`` entry in ``sys.modules`` makes ``import torch`` raise ImportError.
    """
    if "tensorboardX.writer" not in sys.modules and "torch" not in sys.modules:
        sys.modules["torch"] = None  # type: ignore[assignment]
        try:
            import tensorboardX  # noqa: F401
        finally:
            del sys.modules["torch"]
    from tensorboardX import SummaryWriter

    return SummaryWriter


class MetricWriter:
    """Scalars to ``workdir/metrics.jsonl`` (always) and TensorBoard event files in ``workdir``.

    Each ``write`` appends one JSON object, ``{"step": 100, "loss": 0.25, ...}``, and flushes,
    so a killed run leaves only whole lines. A resumed run appends too: steps between the last
    checkpoint and the crash appear twice, and readers should keep the last record per step.
    NaN/Inf are written as JSON's ``NaN``/``Infinity`` extensions (Python's json reads them).
    Only process 0 writes in a multi-host run.

    Args:
      workdir: the run directory (created if missing).
      tensorboard: also write TensorBoard event files (tensorboardX, no TensorFlow needed; without
        tensorboardX installed, one note line and the JSON lines only).
    """

    def __init__(self, workdir: str | os.PathLike[str], *, tensorboard: bool = True):
        self.workdir = Path(workdir)
        self.path = self.workdir / "metrics.jsonl"
        self._active = jax.process_index() == 0
        self._file: TextIO | None = None
        self._tb = None
        if not self._active:
            return
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "a", encoding="utf-8")
        if tensorboard and importlib.util.find_spec("tensorboardX") is None:
            # A minimal image (the GPU machines' has no tensorboardX) still gets the JSON lines.
            print(f"note: tensorboardX is not installed; {self.path.name} only, no TensorBoard events "
                  "(pip install tensorboardX)", file=sys.stderr, flush=True)
        elif tensorboard:
            self._tb = _summary_writer_class()(logdir=str(self.workdir), flush_secs=30)

    def write(self, step: int, metrics: Mapping[str, Any]) -> None:
        """Appends one record; every value must be a scalar (Python, NumPy or JAX)."""
        record: dict[str, Any] = {"step": int(step)}
        for name, value in metrics.items():
            if not isinstance(name, str) or name == "step":
                raise ValueError(f"metric names must be strings other than 'step', got {name!r}")
            arr = np.asarray(jax.device_get(value))
            if arr.size != 1:
                raise ValueError(f"metrics[{name!r}] must be a scalar, got shape {arr.shape}")
            record[name] = float(arr.reshape(()))
        if not self._active:
            return
        assert self._file is not None
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        if self._tb is not None:
            for name, value in record.items():
                if name != "step":
                    self._tb.add_scalar(name, value, global_step=record["step"])

    def write_image(self, step: int, name: str, image: np.ndarray) -> None:
        """Writes a uint8 (H, W, 3) or (H, W) image to TensorBoard only (not to the JSONL)."""
        image = np.asarray(image)
        if image.dtype != np.uint8 or image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[-1] not in (1, 3)):
            raise ValueError(f"image must be uint8 (H, W, 3) or (H, W), got {image.dtype} {image.shape}")
        if self._tb is None:
            return
        if image.ndim == 2:
            image = image[..., None]
        self._tb.add_image(name, image, global_step=int(step), dataformats="HWC")

    def flush(self) -> None:
        if self._file is not None:
            self._file.flush()
        if self._tb is not None:
            self._tb.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None

    def __enter__(self) -> MetricWriter:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def image_grid(images: np.ndarray, *, ncols: int | None = None, padding: int = 2, pad_value: int = 0) -> np.ndarray:
    """Tiles images row-major into one image.

    Args:
      images: uint8 (N, H, W, C) with C in {1, 3}, or (N, H, W).
      ncols: images per row; ceil(sqrt(N)) by default.
      padding: pixels of ``pad_value`` between images and around the border.
      pad_value: fill of the padding and of empty cells in the last row.

    Returns:
      uint8 (rows*(H+padding)+padding, ncols*(W+padding)+padding, C).
    """
    images = np.asarray(images)
    if images.ndim == 3:
        images = images[..., None]
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] not in (1, 3) or not len(images):
        raise ValueError(f"images must be non-empty uint8 (N, H, W, 3|1), got {images.dtype} {images.shape}")
    n, h, w, c = images.shape
    ncols = math.ceil(math.sqrt(n)) if ncols is None else ncols
    if ncols < 1:
        raise ValueError(f"ncols must be >= 1, got {ncols}")
    if padding < 0:
        raise ValueError(f"padding must be >= 0, got {padding}")
    ncols = min(ncols, n)
    nrows = math.ceil(n / ncols)
    grid = np.full((nrows * (h + padding) + padding, ncols * (w + padding) + padding, c), pad_value, np.uint8)
    for i, img in enumerate(images):
        top = padding + (i // ncols) * (h + padding)
        left = padding + (i % ncols) * (w + padding)
        grid[top : top + h, left : left + w] = img
    return grid


def save_image_grid(
    images: np.ndarray, path: str | os.PathLike[str], *, ncols: int | None = None, padding: int = 2
) -> Path:
    """Writes ``image_grid(images, ncols=ncols, padding=padding)`` as a PNG (Pillow); returns the path."""
    from PIL import Image

    grid = image_grid(images, ncols=ncols, padding=padding)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(grid[..., 0] if grid.shape[-1] == 1 else grid).save(path, format="PNG")
    return path
