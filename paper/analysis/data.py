"""The images the analyses measure: a seeded draw from a split, scaled to [-1, 1]."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from paper import shared_data
from sympad.train.errors import ConfigError

__all__ = ["load_images"]

#: TFDS datasets too big to decode whole just to draw a few images.
_LARGE_DATASETS = ("imagenet2012", "lsun/bedroom", "celeb_a_hq")


def _split_folder(root: Path, split: str) -> Path:
    """The folder whose subfolders are the classes of ``split`` inside an extracted archive."""
    for candidate in [root / split, *sorted(root.glob(f"*/{split}"))]:
        if candidate.is_dir():
            return candidate
    raise ConfigError(f"--split={split!r}: no '{split}' folder inside {root}")


def _folder_spec(folder: Path, split: str) -> str:
    # sympad.train.data.load('folder:PATH', split) looks for PATH/<split>.
    return f"folder:{folder.parent}" if folder.name == split else f"folder:{folder}"


def load_images(*, data: str, split: str, num_images: int, seed: int, image_size: int | None = None,
                cache_dir: Path | None = None) -> tuple[np.ndarray, dict[str, Any]]:
    """Draws ``num_images`` images from ``data``.

    Args:
      data: 'auto' (the CIFAR-10 ``split`` folder, extracted from the shared archive), a
        ``.tar.gz`` of class folders, or a :func:`sympad.train.data.load` dataset name.
      split: 'train' or 'test'.
      num_images: images drawn at random (without replacement) from the split.
      seed: seed of the draw.
      image_size: resize to this size (None: native).
      cache_dir: where archives are extracted and decoded (None: the runtime's default).

    Returns:
      ``(images, info)``: float32 ``(N, H, W, 3)`` in [-1, 1] and a dict that
      says where they came from.

    Raises:
      ConfigError: the data cannot be found, or has fewer than ``num_images`` images.
    """
    from sympad.train import data as data_lib  # Deferred: only the commands need the data pipeline.

    spec = data
    source = spec
    cache_dir = cache_dir if cache_dir is not None else data_lib.default_cache_dir()
    if spec == "auto":
        try:  # the archive of $SYMPAD_SHARED_DATA, else of ../shared/data beside the checkout
            spec = f"folder:{shared_data.cifar10_folder(split, cache_dir=cache_dir)}"
        except FileNotFoundError as e:
            raise ConfigError(
                f"--data=auto: {e}; or pass --data=cifar10, --data=folder:PATH or --data=synthetic"
            ) from None
        source = f"shared cifar10-{split}.tar.gz"
    elif spec.endswith((".tar.gz", ".tgz")):
        archive = Path(spec)
        if not archive.exists():
            raise ConfigError(f"--data: archive {archive} does not exist")
        root = shared_data.extract_archive(archive, cache_dir=cache_dir / "archives")
        spec = _folder_spec(_split_folder(root, split), split)
    # synthetic makes exactly max_examples images; big TFDS sets are not decoded whole.
    max_examples = num_images if spec in _LARGE_DATASETS + ("synthetic",) else None
    ds = data_lib.load(spec, split, image_size=image_size, max_examples=max_examples, cache_dir=cache_dir)
    n = len(ds.images)
    if n < num_images:
        raise ConfigError(f"--num_images={num_images} but {source} ({split}) has {n} images")
    # A seeded draw across the split: folder datasets are sorted by class.
    rng = np.random.default_rng(seed)
    index = np.sort(rng.choice(n, size=num_images, replace=False))
    images = np.asarray(data_lib.to_float(ds.images[index]), np.float32)
    info = {"data": data, "source": source, "dataset": ds.name, "split": split,
            "num_images": int(num_images), "image_shape": list(images.shape[1:])}
    return images, info
