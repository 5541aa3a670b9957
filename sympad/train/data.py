"""Datasets and input pipelines shared by the GAN and classification suites.

Every source yields one :class:`Dataset`: uint8 NHWC RGB images and, where the
data has them, int32 labels.

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

TFDS and folder sources are decoded once (resized and centre-cropped to
``image_size`` when given) and cached as ``.npy`` files; splits larger than
:data:`MMAP_BYTES` come back memory-mapped, so an ImageNet-sized cache never
has to fit in RAM.

Two input pipelines, both driven by a PRNG key and the global step:

* **On device** (:func:`get_batch`): the whole split lives on the accelerator
  as uint8 (CIFAR-10 train is 150 MB) and shuffling, batching and augmentation
  (pad-and-crop, flip, cutout; :func:`mixup` on top) run inside the jitted
  train step, so input never stalls a step. Use it when :func:`fits_on_device`.
* **On host** (:class:`HostLoader`): a background thread gathers uint8 batches
  from any random-access source (a memory-mapped cache, for example) and puts
  them on the devices ahead of time; :func:`prepare_batch` then augments them
  on device exactly as :func:`get_batch` would. :class:`GrainLoader` yields the
  same batches with grain reader threads doing the reading (optional ``grain``).

Steps and epochs: with ``N`` examples and batch size ``B`` an epoch is
``N // B`` steps (:func:`steps_per_epoch`); step ``s`` belongs to epoch
``s // (N // B)`` and reads positions ``(s % (N // B)) * B ...`` of that
epoch's permutation. The ``N % B`` examples left over at the end of each
permutation are not seen in that epoch (different ones every epoch). Batches
are a pure function of ``(key, step)``: resuming at any step, mid-epoch
included, reproduces the uninterrupted run exactly. The permutation is a keyed
Feistel network evaluated at the batch's positions only, so a step costs the
same for 10^4 or 10^6 examples (no per-step sort of the whole split).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import json
import logging
import os
import queue
import shutil
import tarfile
import tempfile
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.extend.random
import jax.numpy as jnp
import numpy as np

from sympad.train.errors import UserError

__all__ = [
    "CIFAR10_SPLITS",
    "MMAP_BYTES",
    "SHARED_DATA_ENV",
    "CorruptImageError",
    "Dataset",
    "DatasetNotPreparedError",
    "GrainLoader",
    "HostLoader",
    "augment",
    "batch_indices",
    "cifar10_folder",
    "cutout",
    "default_cache_dir",
    "eval_indices",
    "extract_archive",
    "fits_on_device",
    "get_batch",
    "load",
    "mixup",
    "prepare_batch",
    "shared_data_dirs",
    "shared_data_file",
    "steps_per_epoch",
    "to_float",
    "to_uint8",
]

logger = logging.getLogger(__name__)

#: Cached splits larger than this many bytes are returned memory-mapped.
MMAP_BYTES = 4 << 30

# Bumped whenever the decoding changes, so old caches are not reused.
_CACHE_VERSION = 1
# Names in error messages and log lines: enough to find the files, not a wall.
_MAX_LISTED = 20
# What users set to skip undecodable files: the suites expose load()'s allow_corrupt under this name.
_ALLOW_CORRUPT_FIELD = "config.allow_corrupt"


class CorruptImageError(UserError, ValueError):
    """Files in an image folder could not be decoded as images.

    Raised for any undecodable file unless ``allow_corrupt``, and always when no file at all
    decodes (the dataset would be empty).

    Attributes:
      paths: every undecodable file, with the reason, as ``'PATH: reason'``.
    """

    def __init__(self, message: str, paths: Sequence[str]):
        super().__init__(message)
        self.paths = tuple(paths)


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


# ----------------------------------------------------------------------------
# load()
# ----------------------------------------------------------------------------


def load(
    name: str,
    split: str = "train",
    *,
    image_size: int | None = None,
    cache_dir: str | os.PathLike | None = None,
    allow_corrupt: bool = False,
    max_examples: int | None = None,
    data_dir: str | os.PathLike | None = None,
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

    Returns:
      The split as a :class:`Dataset`.

    Raises:
      ValueError: for a bad argument (naming it).
      CorruptImageError: for an undecodable folder file, unless allowed;
        always when no file decodes.
      DatasetNotPreparedError: when a TFDS set is not prepared; the message
        says what to install, download and run.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"name must be a non-empty string, got {name!r}")
    if not isinstance(split, str) or not split:
        raise ValueError(f"split must be a non-empty string, got {split!r}")
    if image_size is not None and (not isinstance(image_size, int) or image_size < 1):
        raise ValueError(f"image_size must be a positive int or None, got {image_size!r}")
    if max_examples is not None and (not isinstance(max_examples, int) or max_examples < 1):
        raise ValueError(f"max_examples must be a positive int or None, got {max_examples!r}")
    cache = Path(cache_dir) if cache_dir else default_cache_dir()  # '' too: config default.
    if name.startswith("folder:"):
        return _load_folder(
            name[len("folder:") :],
            split,
            image_size=image_size,
            cache_dir=cache,
            allow_corrupt=allow_corrupt,
            max_examples=max_examples,
        )
    if name == "digits":
        return _load_digits(split, image_size=image_size or 32, max_examples=max_examples)
    if name == "synthetic":
        return _load_synthetic(split, image_size=image_size or 32, num_examples=max_examples or 512)
    return _load_tfds(
        name,
        split,
        image_size=image_size,
        cache_dir=cache,
        max_examples=max_examples,
        data_dir=data_dir,
    )


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/sympad`` or ``~/.cache/sympad``."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "sympad"


# ---- the project's shared data archives -------------------------------------

#: Names the folder that holds the shared data archives (``cifar10-train.tar.gz``,
#: ``cifar10-test.tar.gz``); unset, ``../shared/data`` beside the checkout is used.
SHARED_DATA_ENV = "SYMPAD_SHARED_DATA"
#: The splits of the shared CIFAR-10 archives: ``cifar10-<split>.tar.gz`` holds
#: ``cifar10-jpeg/<split>/<class>/<n>.jpg``.
CIFAR10_SPLITS = ("train", "test")


def shared_data_dirs() -> list[Path]:
    """Where the shared data archives are looked for, in order.

    ``$SYMPAD_SHARED_DATA`` alone when it is set (an explicit choice is not
    second-guessed); otherwise ``../shared/data`` beside the repository checkout
    this module runs from, then beside the current directory.
    """
    if os.environ.get(SHARED_DATA_ENV):
        return [Path(os.environ[SHARED_DATA_ENV]).expanduser()]
    repo = Path(__file__).resolve().parents[2]
    beside = [repo.parent / "shared" / "data", Path.cwd().resolve().parent / "shared" / "data"]
    return list(dict.fromkeys(beside))


def shared_data_file(name: str) -> Path | None:
    """The first ``DIR/name`` over :func:`shared_data_dirs` that is a file, or None."""
    return next((d / name for d in shared_data_dirs() if (d / name).is_file()), None)


def _extract_once(archive: Path, target: Path, member: str = "") -> Path:
    """Extracts ``archive`` (its ``member`` folder, or all of it) to ``target``, once.

    Extraction goes to a temporary folder beside ``target`` that is renamed into
    place whole, so a reader never sees a half-extracted folder and concurrent
    callers (pytest-xdist workers, two runs) each end with the same complete one.
    """
    if target.is_dir():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        with tarfile.open(archive) as tar:
            tar.extractall(tmp, filter="data")
        source = tmp / member
        if not source.is_dir():
            raise ValueError(f"archive: {archive} holds no folder {member!r}")
        try:
            os.rename(source, target)
        except OSError:
            if not target.is_dir():
                raise  # Not the lost race of two extractions: a real failure.
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def extract_archive(archive: str | os.PathLike, *, cache_dir: str | os.PathLike) -> Path:
    """Extracts a ``.tar.gz``/``.tgz`` once into ``cache_dir`` and returns the folder.

    The folder is named after the archive and its size and modification time, so
    a changed archive is extracted afresh rather than read stale.

    Raises:
      ValueError: if ``archive`` is not an existing ``.tar.gz``/``.tgz`` file.
    """
    archive = Path(archive)
    if not archive.name.endswith((".tar.gz", ".tgz")) or not archive.is_file():
        raise ValueError(f"archive must be an existing .tar.gz or .tgz file, got {str(archive)!r}")
    stat = archive.stat()
    stamp = hashlib.sha256(f"{archive.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:12]
    name = archive.name.removesuffix(".tar.gz").removesuffix(".tgz")
    return _extract_once(archive, Path(cache_dir) / f"{name}-{stamp}")


def cifar10_folder(
    splits: Sequence[str] = CIFAR10_SPLITS, *, cache_dir: str | os.PathLike | None = None
) -> Path:
    """The CIFAR-10 JPEG folders of the shared archives, extracted once.

    Args:
      splits: which of ``'train'`` and ``'test'`` to extract.
      cache_dir: where to extract; None or '' for :func:`default_cache_dir`.

    Returns:
      ``ROOT`` with ``ROOT/<split>/<class>/<n>.jpg`` for each split: load it with
      ``load(f'folder:{ROOT}', split)``.

    Raises:
      ValueError: for a split other than ``'train'`` or ``'test'``.
      FileNotFoundError: if an archive is not in :func:`shared_data_dirs`; the
        message names the folders searched and ``$SYMPAD_SHARED_DATA``.
    """
    if isinstance(splits, str):
        splits = (splits,)
    if not splits or any(s not in CIFAR10_SPLITS for s in splits):
        raise ValueError(f"splits must be a non-empty subset of {CIFAR10_SPLITS}, got {splits!r}")
    root = (Path(cache_dir) if cache_dir else default_cache_dir()) / "cifar10-jpeg"
    for split in splits:
        if (root / split).is_dir():
            continue
        name = f"cifar10-{split}.tar.gz"
        archive = shared_data_file(name)
        if archive is None:
            raise FileNotFoundError(
                f"{name} is in none of {[str(d) for d in shared_data_dirs()]}; "
                f"set {SHARED_DATA_ENV} to the folder that holds it"
            )
        _extract_once(archive, root / split, member=f"cifar10-jpeg/{split}")
    return root


def _subset(num: int, max_examples: int | None) -> np.ndarray:
    """Evenly spaced positions, so class-sorted sources keep every class."""
    if max_examples is None or max_examples >= num:
        return np.arange(num)
    return np.arange(max_examples) * num // max_examples


# ---- image decoding --------------------------------------------------------


class _Undecodable(Exception):
    """Raised by a decode function for a corrupt or non-image input."""


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
        raise _Undecodable(f"{type(e).__name__}: {e}") from None


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


# ---- decode-once cache -----------------------------------------------------


def _num_threads() -> int:
    return max(1, min(8, os.cpu_count() or 1))


def _cache_entry(cache_dir: Path, slug: str, key: dict) -> Path:
    blob = json.dumps({"version": _CACHE_VERSION, **key}, sort_keys=True, default=str)
    digest = hashlib.sha256(blob.encode()).hexdigest()[:24]
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in slug)[-60:]
    return cache_dir / f"{safe}-{digest}"


def _read_cache(entry: Path) -> tuple[np.ndarray, np.ndarray | None, dict] | None:
    meta_path = entry / "meta.json"
    if not meta_path.exists():
        return None
    meta = json.loads(meta_path.read_text())
    nbytes = (entry / "images.npy").stat().st_size
    images = np.load(entry / "images.npy", mmap_mode="r" if nbytes > MMAP_BYTES else None)
    labels = np.load(entry / "labels.npy") if (entry / "labels.npy").exists() else None
    return images, labels, meta


def _decode_into_cache(
    entry: Path,
    items: Sequence[Any],
    decode: Callable[[Any], tuple[np.ndarray, int | None]],
    describe: Callable[[Any], str],
    meta: dict,
    *,
    allow_corrupt: bool,
    num_threads: int | None = None,
) -> tuple[np.ndarray, np.ndarray | None, dict]:
    """Decodes ``items`` into ``entry/images.npy`` (+ labels.npy, meta.json).

    Rows are written straight into a memory-mapped ``.npy`` by a thread pool,
    so a split larger than RAM can be cached. The entry is built in a temporary
    directory and renamed into place, so a crash never leaves a half cache.
    """
    entry.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-" + entry.name + "-", dir=entry.parent))
    try:
        # The first decodable item fixes the shape of the array.
        failures: dict[int, str] = {}
        first = None
        for i, item in enumerate(items):
            try:
                first = decode(item)
                break
            except _Undecodable as e:
                failures[i] = f"{describe(item)}: {e}"
        if first is None:
            # Even with allow_corrupt: an empty dataset is never what was meant.
            _raise_all_corrupt(list(failures.values()))
        start = i
        shape = first[0].shape
        images = np.lib.format.open_memmap(
            tmp / "images.npy", mode="w+", dtype=np.uint8, shape=(len(items), *shape)
        )
        labels = np.full((len(items),), -1, np.int64)
        images[start], labels[start] = first[0], -1 if first[1] is None else first[1]
        has_labels = first[1] is not None

        def work(lo: int, hi: int) -> dict[int, str]:
            bad = {}
            for j in range(lo, hi):
                try:
                    image, label = decode(items[j])
                except _Undecodable as e:
                    bad[j] = f"{describe(items[j])}: {e}"
                    continue
                if image.shape != shape:
                    raise ValueError(
                        f"{describe(items[j])} has shape {image.shape} but "
                        f"{describe(items[start])} has {shape}; pass image_size to resize "
                        "and centre-crop all images to one size"
                    )
                images[j] = image
                labels[j] = -1 if label is None else label
            return bad

        chunk = 256
        with concurrent.futures.ThreadPoolExecutor(num_threads or _num_threads()) as pool:
            futures = [
                pool.submit(work, lo, min(lo + chunk, len(items)))
                for lo in range(start + 1, len(items), chunk)
            ]
            for future in futures:
                failures.update(future.result())

        skipped = [failures[j] for j in sorted(failures)]
        _raise_or_warn_corrupt(skipped, len(items), allow_corrupt=allow_corrupt)
        if skipped:
            keep = np.setdiff1d(np.arange(len(items)), sorted(failures))
            compact = np.lib.format.open_memmap(
                tmp / "kept.npy", mode="w+", dtype=np.uint8, shape=(len(keep), *shape)
            )
            for lo in range(0, len(keep), 4096):
                compact[lo : lo + 4096] = images[keep[lo : lo + 4096]]
            compact.flush()
            del images, compact
            os.replace(tmp / "kept.npy", tmp / "images.npy")
            labels = labels[keep]
        else:
            images.flush()
            del images
        if has_labels:
            np.save(tmp / "labels.npy", labels.astype(np.int32))
        meta = {**meta, "skipped": skipped, "num_examples": len(items) - len(skipped)}
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
        try:
            os.rename(tmp, entry)
        except OSError:
            # Another process finished the same entry first; use theirs.
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    cached = _read_cache(entry)
    assert cached is not None
    return cached


def _listing(skipped: Sequence[str]) -> tuple[str, str]:
    listed = "\n  ".join(skipped[:_MAX_LISTED])
    more = f"\n  ... and {len(skipped) - _MAX_LISTED} more" if len(skipped) > _MAX_LISTED else ""
    return listed, more


def _raise_all_corrupt(failures: Sequence[str]) -> None:
    listed, more = _listing(failures)
    raise CorruptImageError(
        f"none of the {len(failures)} files could be decoded as images, so the dataset would be "
        f"empty (skipping them with {_ALLOW_CORRUPT_FIELD} cannot help):\n  {listed}{more}\n"
        "Check that the data path points at a folder of images (JPEG, PNG, ...).",
        failures,
    )


def _raise_or_warn_corrupt(skipped: Sequence[str], total: int, *, allow_corrupt: bool) -> None:
    if not skipped:
        return
    listed, more = _listing(skipped)
    if not allow_corrupt:
        raise CorruptImageError(
            f"{len(skipped)} of {total} files could not be decoded as images:\n  {listed}{more}\n"
            f"Remove or fix them, or set {_ALLOW_CORRUPT_FIELD}=True (on the command line: "
            f"--{_ALLOW_CORRUPT_FIELD}=True) to skip them.",
            skipped,
        )
    logger.warning(
        "skipped %d of %d files that could not be decoded as images:\n  %s%s",
        len(skipped),
        total,
        listed,
        more,
    )


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
    entry = _cache_entry(cache_dir, f"folder-{directory.name}", key)
    cached = _read_cache(entry)
    if cached is None:
        logger.info("decoding %d images from %s into %s", len(items), directory, entry)
        cached = _decode_into_cache(
            entry,
            items,
            decode=lambda item: (_decode_file(item[0], image_size), item[1]),
            describe=lambda item: item[0],
            meta={"dir": str(directory), "class_names": class_names},
            allow_corrupt=allow_corrupt,
        )
    else:
        # The cache remembers what was skipped: report it again (or refuse).
        _raise_or_warn_corrupt(cached[2]["skipped"], len(items), allow_corrupt=allow_corrupt)
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
    except Exception:  # noqa: BLE001 - the instructions are a best effort.
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
    entry = _cache_entry(cache_dir, f"tfds-{full.replace('/', '-')}-{split}", key)
    cached = _read_cache(entry)
    if cached is None:
        logger.info("decoding %d examples of %s into %s", len(keep), full, entry)

        def decode(i):
            example = source[int(i)]
            label = int(example["label"]) if num_classes is not None else None
            return _to_rgb_array(example["image"], image_size), label

        cached = _decode_into_cache(
            entry,
            keep,
            decode=decode,
            describe=lambda i: f"{full}[{split}][{i}]",
            meta={"name": info.full_name},
            allow_corrupt=False,
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


# ----------------------------------------------------------------------------
# On-device pipeline (pure, jit-able).
# ----------------------------------------------------------------------------


def steps_per_epoch(*, num_examples: int, batch_size: int) -> int:
    """Steps in one epoch: ``num_examples // batch_size`` (remainder dropped)."""
    if batch_size < 1 or batch_size > num_examples:
        raise ValueError(
            f"batch_size must be in [1, num_examples={num_examples}], got {batch_size}"
        )
    return num_examples // batch_size


# Rounds of the Feistel network behind the epoch permutations: four rounds of
# a pseudo-random function already give a pseudo-random permutation
# (Luby & Rackoff, 1988); two more for margin cost nothing at batch size.
_FEISTEL_ROUNDS = 6


def _feistel(round_keys: jax.Array, x: jax.Array, bits: int) -> jax.Array:
    """A keyed bijection on ``[0, 2**bits)``: an (unbalanced) Feistel network
    whose round function is Threefry-2x32 keyed per round."""
    high, low = bits - bits // 2, bits // 2  # x = left * 2**low + right.

    def round_(r, x, high, low):
        left, right = x >> low, x & ((1 << low) - 1)
        count = jnp.concatenate([right, jnp.zeros_like(right)])
        f = jax.extend.random.threefry_2x32((round_keys[r, 0], round_keys[r, 1]), count)
        return (right << high) | (left ^ (f[: x.shape[0]] & ((1 << high) - 1)))

    # The halves swap sizes every round, so loop over pairs of rounds (a
    # rolled loop keeps the compiled program small).
    def double_round(i, x):
        return round_(2 * i + 1, round_(2 * i, x, high, low), low, high)

    return jax.lax.fori_loop(0, _FEISTEL_ROUNDS // 2, double_round, x)


def _permute(key: jax.Array, positions: jax.Array, num_examples: int) -> jax.Array:
    """Position -> index under a pseudo-random permutation of ``[0, num_examples)``.

    Costs O(len(positions)), not O(num_examples log num_examples) like
    ``jax.random.permutation``: a per-step sort of a 50,000-example split takes
    tens of milliseconds on a CPU. The Feistel network permutes ``[0, 2**bits)``
    with ``2**bits < 2 * num_examples``; values that land outside the split
    are encrypted again until inside (cycle walking), which keeps a bijection.
    """
    bits = max(2, (num_examples - 1).bit_length())
    round_keys = jax.random.bits(key, (_FEISTEL_ROUNDS, 2), jnp.uint32)

    def walk(state):
        x, pending = state
        x = jnp.where(pending, _feistel(round_keys, x, bits), x)
        return x, x >= num_examples

    pending = jnp.ones(positions.shape, bool)  # Encrypt every position at least once.
    x, _ = jax.lax.while_loop(
        lambda state: jnp.any(state[1]), walk, (positions.astype(jnp.uint32), pending)
    )
    return x.astype(jnp.int32)


def batch_indices(
    key: jax.Array, step: jax.typing.ArrayLike, *, batch_size: int, num_examples: int
) -> jax.Array:
    """Example indices of one training batch.

    Each epoch is a pseudo-random permutation of the split keyed by
    ``fold_in(key, epoch)``; step ``s`` takes positions ``(s % P) * B ...`` of
    epoch ``s // P``'s permutation (``P`` steps per epoch), so a step always
    maps to the same indices. Only the batch's own positions are computed.

    Args:
      key: PRNG key.
      step: global step, a Python int or a traced int scalar.
      batch_size: examples per batch (static).
      num_examples: size of the split (static).

    Returns:
      (batch_size,) int32 indices, distinct within the batch.
    """
    per_epoch = steps_per_epoch(num_examples=num_examples, batch_size=batch_size)
    step = jnp.asarray(step, jnp.int32)
    positions = (step % per_epoch) * batch_size + jnp.arange(batch_size, dtype=jnp.int32)
    return _permute(jax.random.fold_in(key, step // per_epoch), positions, num_examples)


def eval_indices(
    step: jax.typing.ArrayLike, *, batch_size: int, num_examples: int
) -> tuple[jax.Array, jax.Array]:
    """Indices of evaluation batch ``step``: the split in order, every example once.

    There are ``ceil(num_examples / batch_size)`` eval steps; the last batch is
    padded with index 0, masked out.

    Returns:
      (batch_size,) int32 indices and a (batch_size,) bool mask of real examples.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    positions = jnp.asarray(step, jnp.int32) * batch_size + jnp.arange(batch_size, dtype=jnp.int32)
    mask = positions < num_examples
    return jnp.where(mask, positions, 0), mask


def to_float(images: jax.typing.ArrayLike) -> jax.Array:
    """uint8 [0, 255] -> float32 [-1, 1]."""
    # (x - 127.5) / 127.5 maps 0 and 255 to exactly -1 and 1; x / 127.5 - 1
    # would give 1.0000001 for 255.
    return (jnp.asarray(images, jnp.float32) - 127.5) / 127.5


def to_uint8(images: jax.typing.ArrayLike) -> jax.Array:
    """float [-1, 1] -> uint8 [0, 255], rounded and clipped; inverse of :func:`to_float`."""
    x = jnp.round((jnp.asarray(images, jnp.float32) + 1.0) * 127.5)
    return jnp.clip(x, 0, 255).astype(jnp.uint8)


def _augment_params(
    key: jax.Array, batch: int, *, crop_pad: int, flip: bool
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Crop offsets (dy, dx) in [0, 2 * crop_pad] and flip flags per image."""
    k_y, k_x, k_flip = jax.random.split(key, 3)
    dy = jax.random.randint(k_y, (batch,), 0, 2 * crop_pad + 1)
    dx = jax.random.randint(k_x, (batch,), 0, 2 * crop_pad + 1)
    flips = jax.random.bernoulli(k_flip, 0.5, (batch,)) if flip else jnp.zeros((batch,), bool)
    return dy, dx, flips


def augment(
    images: jax.typing.ArrayLike, key: jax.Array, *, crop_pad: int = 4, flip: bool = True
) -> jax.Array:
    """Random translation by zero-pad-and-crop, and random horizontal flip.

    The standard CIFAR augmentation: pad ``crop_pad`` zeros (black, for uint8)
    on every side, crop back to the original size at a uniformly random offset,
    and mirror left-right with probability 1/2, independently per image.

    Args:
      images: (B, H, W, C), any dtype.
      key: PRNG key.
      crop_pad: padding on each side; 0 disables the crop.
      flip: whether to flip.

    Returns:
      (B, H, W, C), same dtype.
    """
    if crop_pad < 0:
        raise ValueError(f"crop_pad must be >= 0, got {crop_pad}")
    images = jnp.asarray(images)
    batch, height, width, channels = images.shape
    dy, dx, flips = _augment_params(key, batch, crop_pad=crop_pad, flip=flip)
    if crop_pad:
        padded = jnp.pad(images, ((0, 0), (crop_pad, crop_pad), (crop_pad, crop_pad), (0, 0)))

        def crop(x, y0, x0):
            return jax.lax.dynamic_slice(x, (y0, x0, 0), (height, width, channels))

        images = jax.vmap(crop)(padded, dy, dx)
    if flip:
        images = jnp.where(flips[:, None, None, None], images[:, :, ::-1], images)
    return images


# prepare_batch and get_batch take a flag named ``augment``.
_crop_flip = augment


def cutout(
    images: jax.typing.ArrayLike, key: jax.Array, *, size: int, fill: float = 0.0
) -> jax.Array:
    """Cutout (DeVries & Taylor, 2017): one ``size`` x ``size`` square per image
    set to ``fill``, centred uniformly on the image and clipped at its border.

    The default fill 0 is mid-grey for [-1, 1] floats, i.e. roughly the data
    mean, as in the original (which cuts out after normalisation).

    Args:
      images: (B, H, W, C).
      key: PRNG key.
      size: side of the square.
      fill: value written into the square.

    Returns:
      (B, H, W, C), same dtype.
    """
    if size < 1:
        raise ValueError(f"size must be positive, got {size}")
    images = jnp.asarray(images)
    batch, height, width, _ = images.shape
    k_y, k_x = jax.random.split(key)
    top = jax.random.randint(k_y, (batch,), 0, height) - size // 2
    left = jax.random.randint(k_x, (batch,), 0, width) - size // 2
    rows = jnp.arange(height)[None, :, None]
    cols = jnp.arange(width)[None, None, :]
    inside = (
        (rows >= top[:, None, None])
        & (rows < top[:, None, None] + size)
        & (cols >= left[:, None, None])
        & (cols < left[:, None, None] + size)
    )
    return jnp.where(inside[..., None], jnp.asarray(fill, images.dtype), images)


def _stream_keys(key: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Independent (shuffle, augment) streams of one pipeline key."""
    shuffle_key, augment_key = jax.random.split(key)
    return shuffle_key, augment_key


def prepare_batch(
    images: jax.typing.ArrayLike,
    key: jax.Array,
    step: jax.typing.ArrayLike,
    *,
    augment: bool = False,
    crop_pad: int = 4,
    flip: bool = True,
    cutout_size: int = 0,
) -> jax.Array:
    """Augments (optionally) a uint8 batch and converts it to float32 [-1, 1].

    Uses the same random stream as :func:`get_batch`, so a host-loaded batch of
    the same indices comes out identical.

    Args:
      images: (B, H, W, 3) uint8.
      key: the pipeline's PRNG key (the one given to :func:`get_batch` or
        :class:`HostLoader`).
      step: global step.
      augment: pad-and-crop and flip (:func:`augment`), then cutout if
        ``cutout_size``.
      crop_pad, flip: see :func:`augment`.
      cutout_size: side of the :func:`cutout` square; 0 for none.

    Returns:
      (B, H, W, 3) float32 in [-1, 1].
    """
    if not augment:
        return to_float(images)
    k_crop, k_cut = jax.random.split(jax.random.fold_in(_stream_keys(key)[1], step))
    images = _crop_flip(images, k_crop, crop_pad=crop_pad, flip=flip)
    images = to_float(images)
    if cutout_size:
        images = cutout(images, k_cut, size=cutout_size)
    return images


def get_batch(
    images: jax.Array,
    labels: jax.Array | None,
    key: jax.Array,
    step: jax.typing.ArrayLike,
    *,
    batch_size: int,
    augment: bool = False,
    crop_pad: int = 4,
    flip: bool = True,
    cutout_size: int = 0,
) -> tuple[jax.Array, jax.Array | None]:
    """Training batch ``step`` from a split held on the device.

    Pure and jit-able (``step`` may be traced; the keyword arguments are
    static): call it inside the train step.

    Args:
      images: (N, H, W, 3) uint8, the whole split (device array).
      labels: (N,) int labels, or None.
      key: the pipeline's PRNG key; fixed for the whole run.
      step: global step.
      batch_size: examples per batch.
      augment, crop_pad, flip, cutout_size: see :func:`prepare_batch`.

    Returns:
      (batch_size, H, W, 3) float32 images in [-1, 1] and (batch_size,) int32
      labels (or None). The indices are
      ``batch_indices(jax.random.split(key)[0], step, ...)``.
    """
    idx = batch_indices(
        _stream_keys(key)[0], step, batch_size=batch_size, num_examples=images.shape[0]
    )
    batch = prepare_batch(
        jnp.take(images, idx, axis=0),
        key,
        step,
        augment=augment,
        crop_pad=crop_pad,
        flip=flip,
        cutout_size=cutout_size,
    )
    batch_labels = None if labels is None else jnp.take(labels, idx, axis=0).astype(jnp.int32)
    return batch, batch_labels


def mixup(
    images: jax.typing.ArrayLike,
    onehot_labels: jax.typing.ArrayLike,
    key: jax.Array,
    *,
    alpha: float,
) -> tuple[jax.Array, jax.Array]:
    """mixup (Zhang et al., 2018), as in the authors' code: one ``lam ~
    Beta(alpha, alpha)`` per batch, each example mixed with a random partner.

    Args:
      images: (B, H, W, C) float.
      onehot_labels: (B, K) one-hot (or soft) labels.
      key: PRNG key.
      alpha: Beta parameter; 0 turns mixup off (``lam = 1``).

    Returns:
      ``lam * x + (1 - lam) * x[perm]`` for the images and the labels.
    """
    if alpha < 0:
        raise ValueError(f"alpha must be >= 0, got {alpha}")
    images = jnp.asarray(images)
    onehot_labels = jnp.asarray(onehot_labels)
    if alpha == 0:
        return images, onehot_labels.astype(jnp.result_type(onehot_labels, jnp.float32))
    k_lam, k_perm = jax.random.split(key)
    lam = jax.random.beta(k_lam, alpha, alpha)
    perm = jax.random.permutation(k_perm, images.shape[0])
    mixed = lam * images + (1 - lam) * images[perm]
    soft = lam * onehot_labels + (1 - lam) * onehot_labels[perm]
    return mixed.astype(images.dtype), soft


# ----------------------------------------------------------------------------
# Choosing a pipeline; host pipeline.
# ----------------------------------------------------------------------------


def _device_memory_bytes(device: jax.Device) -> int:
    try:
        stats = device.memory_stats()
    except Exception:  # noqa: BLE001 - unsupported on some backends.
        stats = None
    if stats and stats.get("bytes_limit"):
        return int(stats["bytes_limit"])
    # CPU: host RAM.
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def fits_on_device(dataset: Dataset, *, fraction: float = 0.25) -> bool:
    """Whether the split takes at most ``fraction`` of one device's memory.

    The rest is left for the model, optimizer state and activations. When it
    fits, keep the split on every device and use :func:`get_batch`; otherwise
    use :class:`HostLoader`.
    """
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    nbytes = dataset.images.nbytes + (0 if dataset.labels is None else dataset.labels.nbytes)
    return nbytes <= fraction * _device_memory_bytes(jax.local_devices()[0])


_host_batch_indices = jax.jit(batch_indices, static_argnames=("batch_size", "num_examples"))


class HostLoader:
    """Iterator of uint8 training batches gathered on the host, prefetched to devices.

    For splits too large for device memory. The batch order is exactly that of
    :func:`get_batch` with the same ``key``, so ``prepare_batch(images, key,
    step, ...)`` on a yielded batch reproduces :func:`get_batch`'s output; and
    it is a pure function of the step, so starting at ``start_step`` resumes an
    interrupted run exactly.

    A background thread gathers each batch (sorted reads, which memory-mapped
    caches like) and calls ``jax.device_put``; up to ``prefetch`` batches wait
    on the devices. With ``sharding`` over several processes each process
    loads only its own rows of the global batch.

    Example::

      loader = HostLoader(ds.images, ds.labels, batch_size=256, key=key,
                          start_step=step, sharding=batch_sharded(mesh))
      for step, (images, labels) in zip(range(step, total), loader):
        ...

    Args:
      images: (N, H, W, 3) uint8, any object with ``len()`` and
        ``__getitem__(int array)`` (an array, a memmap, a lazy source).
      labels: (N,) labels or None.
      batch_size: global batch size.
      key: the pipeline's PRNG key.
      start_step: first step to load.
      num_steps: stop after this many batches; None for endless.
      sharding: a ``jax.sharding.Sharding`` for the batch; None puts it on the
        default device.
      prefetch: batches loaded ahead.
    """

    def __init__(
        self,
        images: Any,
        labels: Any | None = None,
        *,
        batch_size: int,
        key: jax.Array,
        start_step: int = 0,
        num_steps: int | None = None,
        sharding: jax.sharding.Sharding | None = None,
        prefetch: int = 2,
    ):
        self._num_examples = len(images)
        steps_per_epoch(num_examples=self._num_examples, batch_size=batch_size)  # Validates.
        if start_step < 0:
            raise ValueError(f"start_step must be >= 0, got {start_step}")
        if prefetch < 1:
            raise ValueError(f"prefetch must be >= 1, got {prefetch}")
        if labels is not None and len(labels) != self._num_examples:
            raise ValueError(f"labels must have {self._num_examples} entries, got {len(labels)}")
        self._images, self._labels = images, labels
        self._batch_size = batch_size
        cpu = jax.devices("cpu")[0]
        self._key = jax.device_put(_stream_keys(jax.device_put(key, cpu))[0], cpu)
        self._cpu = cpu
        self._sharding = sharding
        self._rows = slice(0, batch_size)
        if sharding is not None and jax.process_count() > 1:
            if batch_size % jax.process_count():
                raise ValueError(
                    f"batch_size {batch_size} must divide over {jax.process_count()} processes"
                )
            per = batch_size // jax.process_count()
            self._rows = slice(jax.process_index() * per, (jax.process_index() + 1) * per)
        self.step = start_step  # The step of the next batch yielded.
        self._end = None if num_steps is None else start_step + num_steps
        self._stop = threading.Event()
        self._start(start_step, prefetch)

    def _start(self, start_step: int, prefetch: int) -> None:
        self._queue: queue.Queue = queue.Queue(maxsize=prefetch)
        self._thread = threading.Thread(target=self._produce, args=(start_step,), daemon=True)
        self._thread.start()

    def indices(self, step: int) -> np.ndarray:
        """Host copy of ``batch_indices`` for ``step`` (same values)."""
        with jax.default_device(self._cpu):
            return np.asarray(
                _host_batch_indices(
                    self._key, step, batch_size=self._batch_size, num_examples=self._num_examples
                )
            )

    def _gather(self, source: Any, idx: np.ndarray) -> np.ndarray:
        order = np.argsort(idx, kind="stable")
        sorted_rows = np.asarray(source[idx[order]])
        out = np.empty_like(sorted_rows)
        out[order] = sorted_rows
        return out

    def _put(self, array: np.ndarray) -> jax.Array:
        if self._sharding is None:
            return jax.device_put(array)
        if jax.process_count() > 1:
            global_shape = (self._batch_size, *array.shape[1:])
            return jax.make_array_from_process_local_data(self._sharding, array, global_shape)
        return jax.device_put(array, self._sharding)

    def _produce(self, step: int) -> None:
        try:
            while not self._stop.is_set() and (self._end is None or step < self._end):
                idx = self.indices(step)[self._rows]
                images = self._put(self._gather(self._images, idx))
                labels = None
                if self._labels is not None:
                    labels = self._put(self._gather(self._labels, idx).astype(np.int32))
                self._offer((images, labels))
                step += 1
            self._offer(StopIteration())
        except BaseException as e:  # noqa: BLE001 - re-raised in the consumer.
            self._offer(e)

    def _offer(self, item: Any) -> None:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def __iter__(self) -> Iterator[tuple[jax.Array, jax.Array | None]]:
        return self

    def __next__(self) -> tuple[jax.Array, jax.Array | None]:
        if self._stop.is_set():
            raise StopIteration
        item = self._queue.get()
        if isinstance(item, StopIteration):
            self._stop.set()
            raise StopIteration
        if isinstance(item, BaseException):
            self.close()
            raise item
        self.step += 1
        return item

    def close(self) -> None:
        """Stops the background thread."""
        self._stop.set()
        self._thread.join(timeout=10)

    def __enter__(self) -> HostLoader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class GrainLoader(HostLoader):
    """:class:`HostLoader`'s batches, read and prefetched by grain (``pip install grain``).

    The same batches in the same order (each a pure function of the step, so the train state's
    step is the whole iterator state and resuming at ``start_step`` is exact), the same
    per-process rows with a multi-process ``sharding``; what grain replaces is the reading:
    ``grain.MapDataset.range(steps).map(gather)`` run by ``num_threads`` reader threads with a
    prefetch buffer, in place of HostLoader's single background thread. Threads, not worker
    processes: the gather is a NumPy fancy index into an array or memory-mapped cache (decoding
    already happened once, into that cache), which releases the GIL.

    Args: those of :class:`HostLoader`, plus
      num_threads: grain reader threads (>= 1).
    """

    def __init__(
        self,
        images: Any,
        labels: Any | None = None,
        *,
        batch_size: int,
        key: jax.Array,
        start_step: int = 0,
        num_steps: int | None = None,
        sharding: jax.sharding.Sharding | None = None,
        prefetch: int = 2,
        num_threads: int = 2,
    ):
        import grain  # Deferred: optional dependency of the host path only.

        if isinstance(num_threads, bool) or not isinstance(num_threads, int) or num_threads < 1:
            raise ValueError(f"num_threads must be an int >= 1, got {num_threads!r}")
        self._grain = grain
        self._num_threads = num_threads
        super().__init__(images, labels, batch_size=batch_size, key=key, start_step=start_step,
                         num_steps=num_steps, sharding=sharding, prefetch=prefetch)

    def _start(self, start_step: int, prefetch: int) -> None:
        grain = self._grain
        end = self._end if self._end is not None else start_step + 2**40  # endless: lazily indexed
        dataset = grain.MapDataset.range(start_step, end).map(self._load)
        self._iter = iter(dataset.to_iter_dataset(
            grain.ReadOptions(num_threads=self._num_threads, prefetch_buffer_size=max(prefetch, self._num_threads))))

    def _load(self, step: int) -> tuple[np.ndarray, np.ndarray | None]:
        idx = self.indices(int(step))[self._rows]
        labels = None if self._labels is None else self._gather(self._labels, idx).astype(np.int32)
        return self._gather(self._images, idx), labels

    def __next__(self) -> tuple[jax.Array, jax.Array | None]:
        if self._stop.is_set():
            raise StopIteration
        try:
            images, labels = next(self._iter)
        except StopIteration:
            self._stop.set()
            raise
        self.step += 1
        return self._put(images), None if labels is None else self._put(labels)

    def close(self) -> None:
        self._stop.set()
        close = getattr(getattr(self, "_iter", None), "close", None)
        if close is not None:
            close()
