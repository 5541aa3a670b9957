"""The decode cache: every image source is decoded once into ``.npy`` files and read back.

A source (an image folder, a TFDS split) hands :func:`decode_into_cache` its items and a decode
function; the rows are decoded by a thread pool straight into a memory-mapped ``images.npy``
(so a split larger than RAM can be cached), beside ``labels.npy`` and ``meta.json``. The entry's
name is a digest of everything that determines its content (files, sizes, times, image size,
:data:`_CACHE_VERSION`), so a changed source is decoded afresh rather than read stale. Entries
larger than :data:`MMAP_BYTES` are read back memory-mapped.

Undecodable items: a decode function raises :class:`Undecodable`; the cache refuses them with
:class:`CorruptImageError` unless ``allow_corrupt``, then drops them from the entry and lists
them in its ``meta.json`` (``skipped``), so a later load reports them again.

Example::

  entry = cache_entry(cache_dir, "folder-train", {"source": "folder", "files": [...]})
  images, labels, meta = read_cache(entry) or decode_into_cache(
      entry, items, decode=lambda item: (image, label), describe=str, meta={}, allow_corrupt=False)
  images.shape  # (N, H, W, 3) uint8, memory-mapped above MMAP_BYTES
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

import numpy as np

from sympad.train.errors import UserError

# The package re-exports MMAP_BYTES and CorruptImageError; the rest is for the sources (sources.py).
__all__ = ["MMAP_BYTES", "CorruptImageError", "Undecodable", "cache_entry", "decode_into_cache",
           "raise_or_warn_corrupt", "read_cache"]

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


class Undecodable(Exception):
    """Raised by a decode function for a corrupt or non-image input."""


def _num_threads() -> int:
    return max(1, min(8, os.cpu_count() or 1))


def cache_entry(cache_dir: Path, slug: str, key: dict) -> Path:
    """``cache_dir/<slug>-<digest of key>``: the entry of everything in ``key`` (JSON-able)."""
    blob = json.dumps({"version": _CACHE_VERSION, **key}, sort_keys=True, default=str)
    digest = hashlib.sha256(blob.encode()).hexdigest()[:24]
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in slug)[-60:]
    return cache_dir / f"{safe}-{digest}"


def read_cache(entry: Path) -> tuple[np.ndarray, np.ndarray | None, dict] | None:
    """``(images, labels or None, meta)`` of a complete entry, or None when there is none."""
    meta_path = entry / "meta.json"
    if not meta_path.exists():
        return None
    meta = json.loads(meta_path.read_text())
    nbytes = (entry / "images.npy").stat().st_size
    images = np.load(entry / "images.npy", mmap_mode="r" if nbytes > MMAP_BYTES else None)
    labels = np.load(entry / "labels.npy") if (entry / "labels.npy").exists() else None
    return images, labels, meta


def decode_into_cache(
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
        start, (image, label), failures = _first_decodable(items, decode, describe)
        images = np.lib.format.open_memmap(
            tmp / "images.npy", mode="w+", dtype=np.uint8, shape=(len(items), *image.shape)
        )
        labels = np.full((len(items),), -1, np.int64)
        images[start], labels[start] = image, -1 if label is None else label
        failures.update(_decode_rows(items, decode, describe, images, labels, start=start, num_threads=num_threads))
        skipped = [failures[j] for j in sorted(failures)]
        raise_or_warn_corrupt(skipped, len(items), allow_corrupt=allow_corrupt)
        if skipped:
            labels = _write_kept(tmp / "kept.npy", images, labels, sorted(failures))
            del images
            os.replace(tmp / "kept.npy", tmp / "images.npy")
        else:
            images.flush()
            del images
        if label is not None:
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
    cached = read_cache(entry)
    assert cached is not None
    return cached


def _first_decodable(
    items: Sequence[Any], decode: Callable[[Any], tuple[np.ndarray, int | None]], describe: Callable[[Any], str]
) -> tuple[int, tuple[np.ndarray, int | None], dict[int, str]]:
    """The first item that decodes (it fixes the images' shape): ``(index, (image, label), failures before it)``.

    Raises:
      CorruptImageError: no item decodes (even with allow_corrupt: an empty dataset is never what was meant).
    """
    failures: dict[int, str] = {}
    for i, item in enumerate(items):
        try:
            return i, decode(item), failures
        except Undecodable as e:
            failures[i] = f"{describe(item)}: {e}"
    _raise_all_corrupt(list(failures.values()))


def _decode_rows(
    items: Sequence[Any],
    decode: Callable[[Any], tuple[np.ndarray, int | None]],
    describe: Callable[[Any], str],
    images: np.ndarray,
    labels: np.ndarray,
    *,
    start: int,
    num_threads: int | None,
) -> dict[int, str]:
    """Decodes ``items[start + 1:]`` into rows of ``images`` (N, H, W, C) and ``labels`` (N,) on a thread pool.

    Returns:
      The items that did not decode: index -> description and error.

    Raises:
      ValueError: an image whose shape differs from ``items[start]``'s.
    """
    shape = images.shape[1:]

    def work(lo: int, hi: int) -> dict[int, str]:
        bad = {}
        for j in range(lo, hi):
            try:
                image, label = decode(items[j])
            except Undecodable as e:
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
    failures: dict[int, str] = {}
    with concurrent.futures.ThreadPoolExecutor(num_threads or _num_threads()) as pool:
        futures = [pool.submit(work, lo, min(lo + chunk, len(items))) for lo in range(start + 1, len(items), chunk)]
        for future in futures:
            failures.update(future.result())
    return failures


def _write_kept(path: Path, images: np.ndarray, labels: np.ndarray, dropped: Sequence[int]) -> np.ndarray:
    """Writes the rows of ``images`` (N, H, W, C) but ``dropped`` to the ``.npy`` at ``path``, in blocks
    (the split may not fit in RAM); returns ``labels`` without them."""
    keep = np.setdiff1d(np.arange(len(images)), dropped)
    kept = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=(len(keep), *images.shape[1:]))
    for lo in range(0, len(keep), 4096):
        kept[lo : lo + 4096] = images[keep[lo : lo + 4096]]
    kept.flush()
    return labels[keep]


def _listing(skipped: Sequence[str]) -> tuple[str, str]:
    listed = "\n  ".join(skipped[:_MAX_LISTED])
    more = f"\n  ... and {len(skipped) - _MAX_LISTED} more" if len(skipped) > _MAX_LISTED else ""
    return listed, more


def _raise_all_corrupt(failures: Sequence[str]) -> NoReturn:
    listed, more = _listing(failures)
    raise CorruptImageError(
        f"none of the {len(failures)} files could be decoded as images, so the dataset would be "
        f"empty (skipping them with {_ALLOW_CORRUPT_FIELD} cannot help):\n  {listed}{more}\n"
        "Check that the data path points at a folder of images (JPEG, PNG, ...).",
        failures,
    )


def raise_or_warn_corrupt(skipped: Sequence[str], total: int, *, allow_corrupt: bool) -> None:
    """Raises :class:`CorruptImageError` for ``skipped`` files unless ``allow_corrupt``; then logs them."""
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

