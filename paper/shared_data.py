"""The project's shared data archives: where they are, and their CIFAR-10 JPEG folders, extracted once.

A deployment concern of the checkout, not a data source of the runtime: ``sympad.train.data`` loads
the extracted folders (``folder:PATH``) and knows nothing of archives. The folder that holds them
(``cifar10-train.tar.gz``, ``cifar10-test.tar.gz``) is found by one resolver,
:func:`shared_data_folder`: a folder passed explicitly, else ``$SYMPAD_SHARED_DATA`` (the user's
way in; the device run sets it to its carried copy, paper/device/run.sh), else ``../shared/data``
beside the checkout. Nothing here writes the environment: callers pass the folder on.

Stdlib only (the default cache folder excepted), so the campaign runner, which leaves the
accelerator to its children, can use it.

Example::

  root = cifar10_folder("test", cache_dir=cache)   # the resolved folder's archive
  test = sympad.train.data.load(f"folder:{root}", "test")
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tarfile
import tempfile
from collections.abc import Sequence
from pathlib import Path

__all__ = [
    "CHECKOUT_SHARED_DATA",
    "CIFAR10_SPLITS",
    "SHARED_DATA_ENV",
    "cifar10_folder",
    "extract_archive",
    "shared_data_file",
    "shared_data_folder",
]

REPO = Path(__file__).resolve().parents[1]
#: The user's way to name the folder of the shared archives.
SHARED_DATA_ENV = "SYMPAD_SHARED_DATA"
#: ``../shared/data`` beside the checkout: the folder when ``$SYMPAD_SHARED_DATA`` is unset.
CHECKOUT_SHARED_DATA = REPO.parent / "shared" / "data"
#: The splits of the shared CIFAR-10 archives: ``cifar10-<split>.tar.gz`` holds
#: ``cifar10-jpeg/<split>/<class>/<n>.jpg``.
CIFAR10_SPLITS = ("train", "test")


def shared_data_folder(folder: str | os.PathLike[str] | None = None) -> Path | None:
    """The folder of the shared archives: the one resolver.

    Args:
      folder: an explicit folder, which wins.

    Returns:
      ``folder`` when given; else ``$SYMPAD_SHARED_DATA`` when set; else :data:`CHECKOUT_SHARED_DATA`
      when it exists; else None.
    """
    if folder is not None:
        return Path(folder).expanduser()
    if os.environ.get(SHARED_DATA_ENV):
        return Path(os.environ[SHARED_DATA_ENV]).expanduser()
    return CHECKOUT_SHARED_DATA if CHECKOUT_SHARED_DATA.is_dir() else None


def shared_data_file(name: str, *, folder: str | os.PathLike[str] | None = None) -> Path | None:
    """``DIR/name`` for the folder :func:`shared_data_folder` resolves, when it is a file; else None."""
    resolved = shared_data_folder(folder)
    return resolved / name if resolved is not None and (resolved / name).is_file() else None


def _extract_members(tar: tarfile.TarFile, dest: Path) -> None:
    """Every member of ``tar`` into ``dest``, none outside it.

    Regular files are written here, without tarfile's per-file chmod and utime: half of
    ``extractall``'s time for the 60k small JPEGs of CIFAR-10. Only while their names cannot leave
    ``dest`` (relative, no '..', no link extracted yet); every other member, and every member after
    a link, goes through tarfile's 'data' filter.
    """
    made: set[Path] = set()
    links = False
    for info in tar:
        name = Path(info.name)
        links = links or info.issym() or info.islnk()
        if links or not info.isfile() or name.is_absolute() or ".." in name.parts:
            tar.extract(info, dest, filter="data")
            continue
        path = dest / name
        if path.parent not in made:
            path.parent.mkdir(parents=True, exist_ok=True)
            made.add(path.parent)
        with tar.extractfile(info) as src, open(path, "wb") as dst:
            shutil.copyfileobj(src, dst)


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
            _extract_members(tar, tmp)
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


def extract_archive(archive: str | os.PathLike[str], *, cache_dir: str | os.PathLike[str]) -> Path:
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
    splits: Sequence[str] = CIFAR10_SPLITS,
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    archives: str | os.PathLike[str] | None = None,
) -> Path:
    """The CIFAR-10 JPEG folders of the shared archives, extracted once.

    Args:
      splits: which of ``'train'`` and ``'test'`` to extract.
      cache_dir: where to extract; None or '' for ``sympad.train.data.default_cache_dir()``.
      archives: the folder holding ``cifar10-<split>.tar.gz``; None: :func:`shared_data_folder`'s.

    Returns:
      ``ROOT`` with ``ROOT/<split>/<class>/<n>.jpg`` for each split: load it with
      ``sympad.train.data.load(f'folder:{ROOT}', split)``.

    Raises:
      ValueError: for a split other than ``'train'`` or ``'test'``.
      FileNotFoundError: if an archive is not in the folder (or no folder is found); the message
        names it and ``$SYMPAD_SHARED_DATA``.
    """
    if isinstance(splits, str):
        splits = (splits,)
    if not splits or any(s not in CIFAR10_SPLITS for s in splits):
        raise ValueError(f"splits must be a non-empty subset of {CIFAR10_SPLITS}, got {splits!r}")
    if not cache_dir:
        from sympad.train.data import default_cache_dir  # Deferred: the runtime imports JAX.

        cache_dir = default_cache_dir()
    root = Path(cache_dir) / "cifar10-jpeg"
    folder = shared_data_folder(archives)
    for split in splits:
        if (root / split).is_dir():
            continue
        name = f"cifar10-{split}.tar.gz"
        if folder is None:
            raise FileNotFoundError(f"{name}: {SHARED_DATA_ENV} is unset and there is no {CHECKOUT_SHARED_DATA}; "
                                    f"set {SHARED_DATA_ENV} to the folder that holds it")
        if not (folder / name).is_file():
            raise FileNotFoundError(f"{name}: not in {folder}; set {SHARED_DATA_ENV} to the folder that holds it")
        _extract_once(folder / name, root / split, member=f"cifar10-jpeg/{split}")
    return root
