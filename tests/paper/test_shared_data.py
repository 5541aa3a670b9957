"""paper.shared_data: the one resolver of the shared archives' folder, and their CIFAR-10 folders extracted once."""

from __future__ import annotations

import io
import os
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from paper import shared_data
from sympad.train import data

ENV = shared_data.SHARED_DATA_ENV


def _cifar_like_archive(directory: Path, split: str, *, per_class: int = 2) -> Path:
    """A small ``cifar10-<split>.tar.gz`` laid out like the shared one."""
    rng = np.random.default_rng(len(split))
    build = directory / "build"
    for cls in ("airplane", "automobile"):
        folder = build / "cifar10-jpeg" / split / cls
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(folder / f"{i:04d}.png")
    archive = directory / f"cifar10-{split}.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(build / "cifar10-jpeg", arcname="cifar10-jpeg")
    shutil.rmtree(build)
    return archive


def test_the_resolver_takes_the_argument_then_the_variable_then_the_checkout(monkeypatch, tmp_path):
    chosen, named = tmp_path / "chosen", tmp_path / "named"
    monkeypatch.setenv(ENV, str(named))
    environment = dict(os.environ)
    assert shared_data.shared_data_folder(chosen) == chosen
    assert shared_data.shared_data_folder() == named
    assert shared_data.shared_data_file("cifar10-test.tar.gz") is None
    named.mkdir()
    (named / "cifar10-test.tar.gz").write_bytes(b"")
    assert shared_data.shared_data_file("cifar10-test.tar.gz") == named / "cifar10-test.tar.gz"
    assert shared_data.shared_data_file("cifar10-test.tar.gz", folder=chosen) is None
    # Unset: ../shared/data beside the checkout when it exists, else nothing.
    monkeypatch.delenv(ENV)
    monkeypatch.setattr(shared_data, "CHECKOUT_SHARED_DATA", named)
    assert shared_data.shared_data_folder() == named
    monkeypatch.setattr(shared_data, "CHECKOUT_SHARED_DATA", tmp_path / "no-checkout-data")
    assert shared_data.shared_data_folder() is None and shared_data.shared_data_file("cifar10-test.tar.gz") is None
    with pytest.raises(FileNotFoundError, match=f"cifar10-test.tar.gz: {ENV} is unset"):
        shared_data.cifar10_folder("test", cache_dir=tmp_path / "cache")
    monkeypatch.setenv(ENV, str(named))
    assert dict(os.environ) == environment  # read, never written


def test_the_test_session_finds_the_archives_beside_a_fresh_clone(monkeypatch):
    if not shared_data.CHECKOUT_SHARED_DATA.is_dir():
        pytest.skip("no ../shared/data beside this checkout")
    monkeypatch.delenv(ENV, raising=False)  # a fresh clone: nothing set
    assert shared_data.shared_data_folder() == shared_data.CHECKOUT_SHARED_DATA


def test_cifar10_folder_extracts_once(tmp_path):
    archives = tmp_path / "shared"
    archives.mkdir()
    for split in shared_data.CIFAR10_SPLITS:
        _cifar_like_archive(archives, split, per_class=2 if split == "train" else 1)
    cache = tmp_path / "cache"
    root = shared_data.cifar10_folder(cache_dir=cache, archives=archives)
    assert root == cache / "cifar10-jpeg"
    assert sorted(p.relative_to(root).as_posix() for p in root.rglob("*.png")) == [
        "test/airplane/0000.png", "test/automobile/0000.png",
        "train/airplane/0000.png", "train/airplane/0001.png",
        "train/automobile/0000.png", "train/automobile/0001.png",
    ]
    assert sorted(p.name for p in cache.iterdir()) == ["cifar10-jpeg"]  # no temporary folder left
    train = data.load(f"folder:{root}", "train", cache_dir=tmp_path / "decoded")
    test = data.load(f"folder:{root}", "test", cache_dir=tmp_path / "decoded")
    assert train.images.shape == (4, 8, 8, 3) and list(test.labels) == [0, 1]
    # Once: the archives are not read again.
    for archive in archives.iterdir():
        archive.unlink()
    assert shared_data.cifar10_folder(cache_dir=cache, archives=archives) == root
    assert shared_data.cifar10_folder("test", cache_dir=cache, archives=archives) == root
    with pytest.raises(FileNotFoundError, match=f"cifar10-train.tar.gz.*{ENV}"):
        shared_data.cifar10_folder(cache_dir=tmp_path / "elsewhere", archives=archives)
    with pytest.raises(ValueError, match="splits"):
        shared_data.cifar10_folder(("validation",), cache_dir=cache, archives=archives)


def test_cifar10_folder_loses_an_extraction_race_cleanly(monkeypatch, tmp_path):
    """Another process renames its complete folder into place first: ours is dropped."""
    _cifar_like_archive(tmp_path, "test")
    root = tmp_path / "cache" / "cifar10-jpeg"
    rename = os.rename

    def rename_after_the_winner(source, target):
        (Path(target) / "winner").mkdir(parents=True)
        rename(source, target)  # Raises: the target now exists and is not empty.

    monkeypatch.setattr(os, "rename", rename_after_the_winner)
    assert shared_data.cifar10_folder("test", cache_dir=tmp_path / "cache", archives=tmp_path) == root
    assert [p.name for p in (root / "test").iterdir()] == ["winner"]
    assert [p.name for p in root.parent.iterdir()] == ["cifar10-jpeg"]
    # Any other failure to rename is not swallowed.
    def refuse(source, target):
        raise PermissionError(target)

    monkeypatch.setattr(os, "rename", refuse)
    with pytest.raises(PermissionError):
        shared_data.cifar10_folder("test", cache_dir=tmp_path / "other", archives=tmp_path)
    assert not list((tmp_path / "other" / "cifar10-jpeg").iterdir())  # nothing half-extracted


def test_extract_archive_once_and_afresh_when_changed(tmp_path):
    archive = _cifar_like_archive(tmp_path, "test")
    first = shared_data.extract_archive(archive, cache_dir=tmp_path / "cache")
    assert sorted(p.name for p in (first / "cifar10-jpeg" / "test").iterdir()) == ["airplane", "automobile"]
    assert shared_data.extract_archive(archive, cache_dir=tmp_path / "cache") == first
    _cifar_like_archive(tmp_path, "test", per_class=3)  # same name, new content
    second = shared_data.extract_archive(archive, cache_dir=tmp_path / "cache")
    assert second != first and len(list((second / "cifar10-jpeg" / "test" / "airplane").iterdir())) == 3
    for bad in (tmp_path / "missing.tar.gz", tmp_path / "build"):
        with pytest.raises(ValueError, match="archive"):
            shared_data.extract_archive(bad, cache_dir=tmp_path / "cache")


def _tar_with(path: Path, members: list[tuple[tarfile.TarInfo, bytes]]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for info, payload in members:
            info.size = len(payload) if info.isfile() else 0
            tar.addfile(info, io.BytesIO(payload) if info.isfile() else None)
    return path


def _file(name: str) -> tuple[tarfile.TarInfo, bytes]:
    return tarfile.TarInfo(name), b"jpeg bytes"


def test_extract_archive_keeps_every_member_inside_its_folder(tmp_path):
    # The fast path writes plain files itself: what the 'data' filter refuses must still be refused.
    (tmp_path / "outside").mkdir()
    link = tarfile.TarInfo("a/escape")
    link.type, link.linkname = tarfile.SYMTYPE, str(tmp_path / "outside")
    cases = {"dots": [_file("a/x.jpg"), _file("a/../../dots.jpg")],
             "link": [(link, b""), _file("a/escape/through_link.jpg")]}
    for name, members in cases.items():
        archive = _tar_with(tmp_path / f"{name}.tar.gz", members)
        with pytest.raises(tarfile.FilterError):
            shared_data.extract_archive(archive, cache_dir=tmp_path / "cache")
    assert not list((tmp_path / "outside").iterdir()) and not (tmp_path / "dots.jpg").exists()
    assert not list((tmp_path / "cache").iterdir())  # nothing half-extracted left behind
    # An absolute name lands inside, as the filter puts it; plain files keep their bytes.
    good = _tar_with(tmp_path / "good.tar.gz", [_file("/abs/y.jpg"), _file("b/c/z.jpg")])
    folder = shared_data.extract_archive(good, cache_dir=tmp_path / "cache")
    assert sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*.jpg")) == ["abs/y.jpg", "b/c/z.jpg"]
    assert (folder / "b" / "c" / "z.jpg").read_bytes() == b"jpeg bytes"
