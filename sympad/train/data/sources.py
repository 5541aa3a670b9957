"""Dataset sources: everything :func:`load` reads, as one :class:`Dataset` of uint8 images.

Every source yields uint8 NHWC RGB images and, where the data has them, int32 labels.

=========================== ====================================================
``load(name, ...)``         source
=========================== ====================================================
``cifar10``, ``cifar100``,  TensorFlow Datasets, read with ``tfds.data_source``
``celeb_a_hq[/RES]``,       (random access over ArrayRecord files; TensorFlow is
``lsun/bedroom``,           only needed once, to prepare them). Any other TFDS
``imagenet2012``            name with an ``image`` feature works too.
``folder:PATH``             JPEG/PNG/... files: class subfolders (label = index
                            of the sorted folder name) or one flat folder
                            (no labels).
``digits``                  scikit-learn's bundled 8x8 digits as 32x32 RGB;
                            offline, for demos and smoke runs.
``synthetic``               deterministic generated images in 10 classes, for
                            tests.
=========================== ====================================================

TFDS and folder sources are decoded once (resized and centre-cropped to ``image_size`` when
given) into the decode cache (``sympad.train.data.cache``). :func:`load_split` is
:func:`load` for a trainer: a bad name becomes a ``ConfigError`` naming ``config.data`` and
skipped corrupt files are logged under ``config.allow_corrupt``.

An archive is not a source: extract it and load the folder as ``folder:PATH``.

Example::

  train = load("synthetic", "train", image_size=32, max_examples=256)
  train.images.shape, train.labels.shape  # (256, 32, 32, 3) uint8, (256,) int32
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from sympad.train.data.cache import (
    Undecodable,
    cache_entry,
    decode_into_cache,
    raise_or_warn_corrupt,
    read_cache,
)
from sympad.train.errors import ConfigError, UserError

__all__ = [
    "DIGITS_TRAIN_SIZE",
    "Dataset",
    "DatasetNotPreparedError",
    "default_cache_dir",
    "load",
    "load_split",
]

logger = logging.getLogger(__name__)


class DatasetNotPreparedError(UserError, FileNotFoundError):
    """A TFDS dataset is not available in a format ``tfds.data_source`` reads."""


@dataclasses.dataclass
class Dataset:
    """One split of a dataset, fully decoded.

    Attributes:
      images: (N, H, W, 3) uint8 RGB; a read-only ``np.memmap`` for large
        cached splits.
      labels: (N,) int32 class indices in ``[0, num_classes)``, or None for
        unlabelled data.
      num_classes: number of classes, or None for unlabelled data.
      name: the name it was loaded with.
      class_names: folder names of the classes, for folder datasets.
      skipped: ``'PATH: reason'`` for every file skipped as corrupt (only with
        ``allow_corrupt=True``); empty otherwise.
    """

    images: np.ndarray
    labels: np.ndarray | None
    num_classes: int | None
    name: str
    class_names: tuple[str, ...] | None = None
    skipped: tuple[str, ...] = ()

    def __post_init__(self):
        if self.images.ndim != 4 or self.images.shape[-1] != 3 or self.images.dtype != np.uint8:
            raise ValueError(
                f"images must be (N, H, W, 3) uint8, got {self.images.shape} {self.images.dtype}"
            )
        if self.labels is not None and self.labels.shape != self.images.shape[:1]:
            raise ValueError(f"labels must be ({len(self.images)},), got {self.labels.shape}")

    def __len__(self) -> int:
        return len(self.images)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(H, W, 3)."""
        return tuple(self.images.shape[1:])


# ---- load() ----------------------------------------------------------------


def load(
    name: str,
    split: str = "train",
    *,
    image_size: int | None = None,
    cache_dir: str | os.PathLike | None = None,
    allow_corrupt: bool = False,
    max_examples: int | None = None,
    data_dir: str | os.PathLike | None = None,
    decode_threads: int | None = None,
) -> Dataset:
    """Loads one split of a dataset as uint8 images.

    Args:
      name: ``'cifar10'``, ``'cifar100'``, ``'celeb_a_hq'`` (or
        ``'celeb_a_hq/RES'``), ``'lsun/bedroom'``, ``'imagenet2012'`` or any
        other TFDS name; ``'folder:PATH'``; ``'digits'``; ``'synthetic'``.
      split: ``'train'`` or ``'test'``. For TFDS sets without a test split
        ``'test'`` means ``'validation'`` (imagenet2012, lsun) or ``'train'``
        (celeb_a_hq, which has only one split; logged). Other TFDS split
        strings (``'validation'``, ``'train[:10%]'``) pass through. For a folder
        with ``train/`` and ``test/`` subfolders, the one named ``split``;
        otherwise the folder itself, whatever ``split`` is. digits: the first
        1500 of scikit-learn's 1797 images are 'train', the last 297 'test'.
      image_size: side of the square output: images are resized (shorter side)
        and centre-cropped to it. None keeps the stored size (all images must
        then share one size). digits and synthetic default to 32.
      cache_dir: where decoded splits are cached; None or '' for
        :func:`default_cache_dir`.
      allow_corrupt: folder sources only: skip files that do not decode,
        counting them in a warning and in ``Dataset.skipped``, instead of
        raising :class:`CorruptImageError`. The suites expose it as
        ``config.allow_corrupt``. A folder in which no file decodes is an
        error even so.
      max_examples: keep at most this many examples, taken at evenly spaced
        positions of the split (so a class-sorted folder keeps every class).
        synthetic: the number of images (default 512).
      data_dir: TFDS data directory; default ``$TFDS_DATA_DIR`` or
        ``~/tensorflow_datasets``.
      decode_threads: threads decoding a TFDS or folder split into the cache
        on its first load; None for ``min(8, os.cpu_count())``. The cached
        values do not depend on it.

    Returns:
      The split as a :class:`Dataset`.

    Raises:
      ValueError: for a bad argument (naming it).
      CorruptImageError: for an undecodable folder file, unless allowed;
        always when no file decodes.
      DatasetNotPreparedError: when a TFDS set is not prepared; the message
        says what to install, download and run.
    """
    _check_load_arguments(name, split, image_size=image_size, max_examples=max_examples,
                          decode_threads=decode_threads)
    cache = Path(cache_dir) if cache_dir else default_cache_dir()  # '' too: config default.
    if name.startswith("folder:"):
        return _load_folder(name[len("folder:") :], split, image_size=image_size, cache_dir=cache,
                            allow_corrupt=allow_corrupt, max_examples=max_examples, decode_threads=decode_threads)
    if name == "digits":
        return _load_digits(split, image_size=image_size or 32, max_examples=max_examples)
    if name == "synthetic":
        return _load_synthetic(split, image_size=image_size or 32, num_examples=max_examples or 512)
    return _load_tfds(name, split, image_size=image_size, cache_dir=cache, max_examples=max_examples,
                      data_dir=data_dir, decode_threads=decode_threads)


def _check_load_arguments(name: Any, split: Any, *, image_size: Any, max_examples: Any, decode_threads: Any) -> None:
    """:func:`load`'s arguments have their types.

    Raises:
      ValueError: naming the first bad argument.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"name must be a non-empty string, got {name!r}")
    if not isinstance(split, str) or not split:
        raise ValueError(f"split must be a non-empty string, got {split!r}")
    for argument, value in (("image_size", image_size), ("max_examples", max_examples),
                            ("decode_threads", decode_threads)):
        if value is not None and (not isinstance(value, int) or value < 1):
            raise ValueError(f"{argument} must be a positive int or None, got {value!r}")


def default_cache_dir() -> Path:
    """The project's cache root: ``$SYMPAD_CACHE``, else ``$XDG_CACHE_HOME/sympad``, else ``~/.cache/sympad``.

    Decoded datasets, extracted archives, the FID weights and reference statistics all live under it.
    """
    if os.environ.get("SYMPAD_CACHE"):
        return Path(os.environ["SYMPAD_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "sympad"


def load_split(
    name: str,
    split: str,
    *,
    image_size: int | None = None,
    max_examples: int | None = None,
    cache_dir: str | os.PathLike | None = None,
    data_dir: str | os.PathLike | None = None,
    allow_corrupt: bool = False,
) -> Dataset:
    """:func:`load` for a trainer whose ``config.data`` is ``name``: the suites' one way to load a split.

    A bad argument is the user's config, so :func:`load`'s ValueError comes back as a
    ``ConfigError`` naming ``config.data`` (one ``error:`` line, not a traceback); its typed user
    errors (:class:`~sympad.train.data.CorruptImageError`, :class:`DatasetNotPreparedError`)
    pass through. Files skipped with ``allow_corrupt`` are counted in one warning under
    ``config.allow_corrupt``; the caller records ``len(dataset.skipped)`` as ``data/skipped``.

    Example::

      train = load_split(config.data, "train", image_size=32, allow_corrupt=config.allow_corrupt)
      train.images.shape  # (N, 32, 32, 3) uint8; train.labels (N,) int32 or None

    Args:
      name, split, image_size, max_examples, cache_dir, data_dir, allow_corrupt: as for
        :func:`load` (``max_examples`` and ``cache_dir`` may be None or 0/'' for the default).

    Returns:
      The split: images (N, H, W, 3) uint8, labels (N,) int32 or None.

    Raises:
      ConfigError: for what :func:`load` rejects as a bad argument (``config.data=...: why``).
    """
    try:
        dataset = load(name, split, image_size=image_size, max_examples=max_examples or None,
                       cache_dir=cache_dir or None, data_dir=data_dir or None, allow_corrupt=allow_corrupt)
    except UserError:
        raise
    except ValueError as e:  # load's bad-argument error: the argument is the user's config.data
        raise ConfigError(f"config.data={name!r}: {e}") from e
    if dataset.skipped:
        logger.warning("config.allow_corrupt: skipped %d undecodable files of %s (data/skipped in metrics.jsonl)",
                       len(dataset.skipped), name)
    return dataset


def _subset(num: int, max_examples: int | None) -> np.ndarray:
    """Evenly spaced positions, so class-sorted sources keep every class."""
    if max_examples is None or max_examples >= num:
        return np.arange(num)
    return np.arange(max_examples) * num // max_examples

# ---- image decoding --------------------------------------------------------


def _fit(image, image_size: int | None):
    """Resizes a PIL image's shorter side to ``image_size`` and centre-crops.

    Done as one resample from the centre square (the ``box`` argument), which
    samples the same points as resize-then-crop without the intermediate image.
    """
    from PIL import Image

    if image.mode != "RGB":
        image = image.convert("RGB")
    if image_size is None:
        return image
    w, h = image.size
    if w == h == image_size:
        return image
    side = min(w, h)
    left, top = (w - side) / 2, (h - side) / 2
    return image.resize(
        (image_size, image_size), Image.BICUBIC, box=(left, top, left + side, top + side)
    )


def _decode_file(path: str, image_size: int | None) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(path) as image:
            if image_size is not None and image.format == "JPEG":
                # Lets libjpeg decode at 1/2, 1/4, 1/8 scale when the target is
                # that much smaller: large speedup on ImageNet-sized files.
                w, h = image.size
                scale = image_size / min(w, h)
                image.draft("RGB", (max(1, int(w * scale + 1)), max(1, int(h * scale + 1))))
            image.load()
            return np.asarray(_fit(image, image_size), dtype=np.uint8)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise Undecodable(f"{type(e).__name__}: {e}") from None


def _to_rgb_array(image: np.ndarray, image_size: int | None) -> np.ndarray:
    """An HxW, HxWx1, HxWx3 or HxWx4 uint8 array as HxWx3, resized if asked."""
    image = np.asarray(image)
    if image.ndim == 3 and image.shape[-1] == 1:
        image = image[..., 0]
    if image.ndim == 3 and image.shape[-1] == 4:
        image = image[..., :3]
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=-1)
    if image_size is None or image.shape[:2] == (image_size, image_size):
        return image.astype(np.uint8, copy=False)
    from PIL import Image

    return np.asarray(_fit(Image.fromarray(image.astype(np.uint8)), image_size))


# ---- folder: ---------------------------------------------------------------


def _visible_files(directory: Path) -> list[Path]:
    """Regular files under ``directory``, recursively; dot-files are ignored
    (``.DS_Store`` and the like), everything else is tried as an image."""
    out = []
    for root, dirs, files in os.walk(directory):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        out.extend(Path(root) / f for f in sorted(files) if not f.startswith("."))
    return out


_SPLIT_FOLDERS = {"train": ("train",), "test": ("test", "val", "validation")}


def _split_dir(root: Path, split: str) -> Path:
    """``root/<split>`` for a train/test layout; ``root`` itself otherwise."""
    subdirs = {d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith(".")}
    if subdirs and subdirs <= {"train", "test", "val", "validation"}:
        for name in _SPLIT_FOLDERS.get(split, (split,)):
            if name in subdirs:
                return root / name
        raise ValueError(
            f"split: folder {str(root)!r} has split folders {sorted(subdirs)}, none for {split!r}"
        )
    if split != "train":
        logger.info("folder %s has no split subfolders; split %r reads all of it", root, split)
    return root


def _load_folder(
    path: str,
    split: str,
    *,
    image_size: int | None,
    cache_dir: Path,
    allow_corrupt: bool,
    max_examples: int | None,
    decode_threads: int | None,
) -> Dataset:
    root = Path(path).expanduser().resolve()
    if not root.is_dir():
        raise ValueError(f"name: folder {str(root)!r} does not exist or is not a directory")
    directory = _split_dir(root, split)
    subdirs = sorted(d for d in directory.iterdir() if d.is_dir() and not d.name.startswith("."))
    if subdirs:
        loose = [f for f in directory.iterdir() if f.is_file() and not f.name.startswith(".")]
        if loose:
            raise ValueError(
                f"folder {str(directory)!r} mixes class subfolders with {len(loose)} loose files "
                f"(for example {str(loose[0])!r}); use one layout"
            )
        class_names = tuple(d.name for d in subdirs)
        files, labels = [], []
        for label, d in enumerate(subdirs):
            found = _visible_files(d)
            files += found
            labels += [label] * len(found)
    else:
        class_names = None
        files = _visible_files(directory)
        labels = [None] * len(files)
    if not files:
        raise ValueError(f"folder {str(directory)!r} contains no files")
    keep = _subset(len(files), max_examples)
    items = [(str(files[i]), labels[i]) for i in keep]
    stats = [os.stat(p) for p, _ in items]
    key = {
        "source": "folder",
        "dir": str(directory),
        "image_size": image_size,
        "files": [
            (os.path.relpath(p, directory), s.st_size, s.st_mtime_ns, lab)
            for (p, lab), s in zip(items, stats)
        ],
    }
    entry = cache_entry(cache_dir, f"folder-{directory.name}", key)
    cached = read_cache(entry)
    if cached is None:
        logger.info("decoding %d images from %s into %s", len(items), directory, entry)
        cached = decode_into_cache(
            entry,
            items,
            decode=lambda item: (_decode_file(item[0], image_size), item[1]),
            describe=lambda item: item[0],
            meta={"dir": str(directory), "class_names": class_names},
            allow_corrupt=allow_corrupt,
            num_threads=decode_threads,
        )
    else:
        # The cache remembers what was skipped: report it again (or refuse).
        raise_or_warn_corrupt(cached[2]["skipped"], len(items), allow_corrupt=allow_corrupt)
    images, label_array, meta = cached
    return Dataset(
        images=images,
        labels=label_array,
        num_classes=len(class_names) if class_names else None,
        name=f"folder:{path}",
        class_names=class_names,
        skipped=tuple(meta["skipped"]),
    )


# ---- TFDS ------------------------------------------------------------------

# 'test' for sets that have no test split.
_TEST_SPLIT = {"imagenet2012": "validation", "lsun": "validation", "celeb_a_hq": "train"}
_CELEB_A_HQ_SIZES = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


def _tfds_name(name: str, image_size: int | None) -> str:
    """Picks the celeb_a_hq resolution config when none is given."""
    if name != "celeb_a_hq":
        return name
    # The paper trains its GANs at 128 px; otherwise the smallest stored size
    # that needs no upsampling.
    target = image_size or 128
    size = next((s for s in _CELEB_A_HQ_SIZES if s >= target), 1024)
    return f"celeb_a_hq/{size}"


def _tfds_split(base: str, split: str) -> str:
    if split == "test" and base in _TEST_SPLIT:
        mapped = _TEST_SPLIT[base]
        if mapped == "train":
            logger.warning("%s has only a train split; split='test' reads the train split", base)
        return mapped
    return split


def _prepare_instructions(name: str, data_dir: str) -> str:
    import tensorflow_datasets as tfds

    base = name.split("/")[0]
    lines = [
        "sympad reads TFDS datasets with tfds.data_source, which needs them prepared in the",
        "array_record file format. Prepare it once (this step needs TensorFlow):",
        "    pip install tensorflow",
        f"    tfds build {name} --data_dir={data_dir} --file_format=array_record",
    ]
    try:
        manual = tfds.builder_cls(base).MANUAL_DOWNLOAD_INSTRUCTIONS
    except Exception:  # the instructions are a best effort.
        manual = None
    if manual:
        lines += [
            f"{base} cannot be downloaded automatically. First put the files it needs in",
            f"{data_dir}/downloads/manual/ (or pass --manual_dir=DIR to tfds build):",
            "    " + "\n    ".join(line.strip() for line in manual.strip().splitlines()),
        ]
    else:
        lines.append("tfds build downloads the source files, so it needs network access.")
    return "\n".join(lines)


def _open_tfds(name: str, split: str, data_dir: str | None):
    import tensorflow_datasets as tfds

    if data_dir is None:
        data_dir = os.environ.get("TFDS_DATA_DIR") or os.path.join(
            os.path.expanduser("~"), "tensorflow_datasets"
        )
    try:
        return tfds.data_source(name, split=split, data_dir=data_dir, download=False)
    except tfds.core.registered.DatasetNotFoundError as e:
        raise ValueError(
            f"name: {name!r} is neither 'folder:PATH', 'digits', 'synthetic' nor a TFDS dataset"
        ) from e
    except (RuntimeError, OSError, AssertionError) as e:
        # Not prepared at all, or prepared as TFRecord (TFDS's default), which
        # tfds.data_source cannot read: both raise one of these.
        raise DatasetNotPreparedError(
            f"TFDS dataset {name!r} (split {split!r}) is not prepared under {data_dir} in a format "
            f"tfds.data_source can read.\n{_prepare_instructions(name, data_dir)}"
        ) from e


def _load_tfds(
    name: str,
    split: str,
    *,
    image_size: int | None,
    cache_dir: Path,
    max_examples: int | None,
    data_dir: str | os.PathLike | None,
    decode_threads: int | None,
) -> Dataset:
    full = _tfds_name(name, image_size)
    tfds_split = _tfds_split(full.split("/")[0], split)
    source = _open_tfds(full, tfds_split, None if data_dir is None else str(data_dir))
    info = source.dataset_info
    features = info.features
    if "image" not in features:
        raise ValueError(f"name: TFDS dataset {full!r} has no 'image' feature")
    num_classes = None
    if "label" in features and hasattr(features["label"], "num_classes"):
        num_classes = int(features["label"].num_classes)
    keep = _subset(len(source), max_examples)
    key = {
        "source": "tfds",
        "name": info.full_name,
        "data_dir": str(info.data_dir),
        "split": tfds_split,
        "num_examples": len(source),
        "image_size": image_size,
        "keep": hashlib.sha256(keep.tobytes()).hexdigest(),
    }
    entry = cache_entry(cache_dir, f"tfds-{full.replace('/', '-')}-{split}", key)
    cached = read_cache(entry)
    if cached is None:
        logger.info("decoding %d examples of %s into %s", len(keep), full, entry)

        def decode(i):
            example = source[int(i)]
            label = int(example["label"]) if num_classes is not None else None
            return _to_rgb_array(example["image"], image_size), label

        cached = decode_into_cache(
            entry,
            keep,
            decode=decode,
            describe=lambda i: f"{full}[{split}][{i}]",
            meta={"name": info.full_name},
            allow_corrupt=False,
            num_threads=decode_threads,
        )
    images, labels, _ = cached
    return Dataset(images=images, labels=labels, num_classes=num_classes, name=name)


# ---- digits, synthetic -----------------------------------------------------


def _linear_upsample_matrix(size_in: int, size_out: int) -> np.ndarray:
    """(size_out, size_in) bilinear weights, half-pixel centres, edges clamped
    (no zero padding, so the border does not darken)."""
    u = (np.arange(size_out) + 0.5) * size_in / size_out - 0.5
    lo = np.floor(u).astype(int)
    frac = u - lo
    weights = np.zeros((size_out, size_in))
    np.add.at(weights, (np.arange(size_out), np.clip(lo, 0, size_in - 1)), 1 - frac)
    np.add.at(weights, (np.arange(size_out), np.clip(lo + 1, 0, size_in - 1)), frac)
    return weights


#: digits: the first 1500 of scikit-learn's 1797 images train, the last 297 test.
DIGITS_TRAIN_SIZE = 1500


def _load_digits(split: str, *, image_size: int, max_examples: int | None) -> Dataset:
    from sklearn.datasets import load_digits

    digits = load_digits()
    if split == "train":
        sl = slice(0, DIGITS_TRAIN_SIZE)
    elif split == "test":
        sl = slice(DIGITS_TRAIN_SIZE, None)
    else:
        raise ValueError(f"split: digits has 'train' and 'test', got {split!r}")
    small = digits.images[sl]  # (N, 8, 8) float, 0..16, ink high.
    keep = _subset(len(small), max_examples)
    w = _linear_upsample_matrix(8, image_size)
    big = np.einsum("ij,njk,lk->nil", w, small[keep], w) * (255.0 / 16.0)
    grey = np.clip(np.round(big), 0, 255).astype(np.uint8)
    return Dataset(
        images=np.repeat(grey[..., None], 3, axis=-1),
        labels=digits.target[sl][keep].astype(np.int32),
        num_classes=10,
        name="digits",
    )


def _load_synthetic(split: str, *, image_size: int, num_examples: int) -> Dataset:
    """Grey oriented gratings on a coloured ground: class ``c`` has grating
    orientation ``c * 18`` degrees and hue ``c * 36`` degrees; phase, frequency,
    contrast and noise vary per image. The hue alone separates the classes
    (the grating is grey, so it only moves the mean colour along the grey axis)."""
    if split not in ("train", "test"):
        raise ValueError(f"split: synthetic has 'train' and 'test', got {split!r}")
    rng = np.random.default_rng({"train": 0, "test": 1}[split])
    labels = rng.permutation(np.arange(num_examples) % 10).astype(np.int32)
    angle = labels * (np.pi / 10) + rng.uniform(-0.1, 0.1, num_examples)
    freq = rng.uniform(3.0, 4.0, num_examples) * 2 * np.pi / image_size
    phase = rng.uniform(0, 2 * np.pi, num_examples)
    contrast = rng.uniform(0.6, 1.0, num_examples)
    y, x = np.mgrid[:image_size, :image_size].astype(np.float64)
    proj = np.cos(angle)[:, None, None] * x + np.sin(angle)[:, None, None] * y
    wave = np.sin(freq[:, None, None] * proj + phase[:, None, None]) * contrast[:, None, None]
    palette = np.stack(
        [np.cos(2 * np.pi * (np.arange(10) / 10 + k / 3)) for k in range(3)], axis=-1
    )  # (10, 3): ten hues evenly spaced on a circle orthogonal to grey.
    colour = palette[labels][:, None, None, :]
    image = 0.45 * wave[..., None] + 0.35 * colour + rng.normal(0, 0.05, (*wave.shape, 3))
    images = np.clip(np.round((image + 1) * 127.5), 0, 255).astype(np.uint8)
    return Dataset(images=images, labels=labels, num_classes=10, name="synthetic")


