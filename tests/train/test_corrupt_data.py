"""Undecodable images: refused by default, skipped and counted with allow_corrupt, never an empty set."""

from __future__ import annotations

import io
import logging

import numpy as np
import pytest
from PIL import Image

from sympad.train import data, errors


def _png_bytes(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def _jpeg_bytes(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def _kinds_of_damage(image: np.ndarray) -> dict[str, bytes]:
    """Files a real folder ends up with: cut-off downloads, empty files, non-images."""
    jpeg = _jpeg_bytes(image)
    return {
        "truncated.jpg": jpeg[: len(jpeg) // 2],
        "empty.png": b"",
        "notes.txt": b"not an image at all",
        "bad_header.png": b"\x89PNG\r\n\x1a\n" + b"\x00" * 40,
    }


@pytest.fixture
def damaged_folder(tmp_path):
    """Two classes of good 6x6 PNGs with four damaged files among them."""
    rng = np.random.default_rng(0)
    root = tmp_path / "images"
    good = []  # (relative path, image, label) in the loader's (sorted) order
    damaged = []
    for label, cls in enumerate(["a", "b"]):
        (root / cls).mkdir(parents=True)
        for i in range(3):
            image = rng.integers(0, 256, size=(6, 6, 3), dtype=np.uint8)
            (root / cls / f"{i}.png").write_bytes(_png_bytes(image))
            good.append((f"{cls}/{i}.png", image, label))
    for k, (name, blob) in enumerate(_kinds_of_damage(np.zeros((6, 6, 3), np.uint8)).items()):
        path = root / ("a" if k % 2 else "b") / name
        path.write_bytes(blob)
        damaged.append(path)
    good.sort(key=lambda item: (item[2], item[0]))
    return root, good, sorted(damaged)


def test_refused_by_default_naming_files_and_the_config_field(damaged_folder, tmp_path):
    root, _, damaged = damaged_folder
    with pytest.raises(data.CorruptImageError) as info:
        data.load(f"folder:{root}", cache_dir=tmp_path / "cache")
    message = str(info.value)
    assert message.startswith("4 of 10 files could not be decoded as images:")
    for path in damaged:
        assert str(path) in message
    assert "set config.allow_corrupt=True" in message and "--config.allow_corrupt=True" in message
    assert "pass allow_corrupt" not in message
    assert sorted(p.split(": ")[0] for p in info.value.paths) == [str(p) for p in damaged]
    assert errors.is_user_error(info.value)
    assert errors.format_error(info.value).splitlines()[0] == "error: 4 of 10 files could not be decoded as images:"


def test_skipped_with_allow_corrupt_counted_on_the_dataset(damaged_folder, tmp_path, caplog):
    root, good, damaged = damaged_folder
    with caplog.at_level(logging.WARNING, logger="sympad.train.data"):
        ds = data.load(f"folder:{root}", cache_dir=tmp_path / "cache", allow_corrupt=True)
    assert len(ds.skipped) == 4
    assert [s.split(": ")[0] for s in ds.skipped] == [str(p) for p in damaged]
    assert all(": " in s and s.split(": ", 1)[1] for s in ds.skipped)  # each with its reason
    assert "skipped 4 of 10 files" in caplog.text
    # The kept images are exactly the good files, decoded independently with PIL, in order.
    np.testing.assert_array_equal(ds.images, np.stack([image for _, image, _ in good]))
    np.testing.assert_array_equal(ds.labels, [label for _, _, label in good])
    assert ds.num_classes == 2 and len(ds) == 6

    # From the cache: the same count, without decoding again.
    again = data.load(f"folder:{root}", cache_dir=tmp_path / "cache", allow_corrupt=True)
    assert again.skipped == ds.skipped
    np.testing.assert_array_equal(again.images, ds.images)


def test_load_split_the_suites_one_way(damaged_folder, tmp_path, caplog):
    root, _, _ = damaged_folder
    with caplog.at_level(logging.WARNING, logger="sympad.train.data"):
        ds = data.load_split(f"folder:{root}", "train", cache_dir=tmp_path / "cache", allow_corrupt=True,
                             max_examples=0, data_dir="")  # 0 and '': the defaults, as configs spell them
    assert len(ds) == 6 and len(ds.skipped) == 4
    assert f"config.allow_corrupt: skipped 4 undecodable files of folder:{root}" in caplog.text
    # Typed user errors pass through; load's ValueError names config.data.
    with pytest.raises(data.CorruptImageError):
        data.load_split(f"folder:{root}", "train", cache_dir=tmp_path / "cache")
    with pytest.raises(errors.ConfigError, match=r"^config.data='folder:/nowhere': name: folder '/nowhere' does not"):
        data.load_split("folder:/nowhere", "train")
    with pytest.raises(TypeError):
        data.load_split("synthetic", "train", 32)  # keyword-only past the split


def test_clean_folder_skips_nothing(tmp_path):
    root = tmp_path / "clean"
    root.mkdir()
    (root / "x.png").write_bytes(_png_bytes(np.full((4, 4, 3), 7, np.uint8)))
    ds = data.load(f"folder:{root}", cache_dir=tmp_path / "cache", allow_corrupt=True)
    assert ds.skipped == () and len(ds) == 1


@pytest.mark.parametrize("allow_corrupt", [False, True])
def test_all_corrupt_is_always_an_error(tmp_path, allow_corrupt):
    root = tmp_path / "broken"
    root.mkdir()
    for name, blob in _kinds_of_damage(np.zeros((6, 6, 3), np.uint8)).items():
        (root / name).write_bytes(blob)
    with pytest.raises(data.CorruptImageError) as info:
        data.load(f"folder:{root}", cache_dir=tmp_path / "cache", allow_corrupt=allow_corrupt)
    message = str(info.value)
    assert message.startswith("none of the 4 files could be decoded as images, so the dataset would be empty")
    assert "config.allow_corrupt cannot help" in message
    assert str(root / "notes.txt") in message and len(info.value.paths) == 4
    assert not list((tmp_path / "cache").glob("folder-*"))  # nothing cached


@pytest.mark.parametrize("allow_corrupt", [False, True])
def test_empty_folder_is_always_an_error(tmp_path, allow_corrupt):
    root = tmp_path / "empty"
    (root / "a").mkdir(parents=True)
    (root / "a" / ".DS_Store").write_bytes(b"hidden files are not images")
    with pytest.raises(ValueError, match="contains no files"):
        data.load(f"folder:{root}", cache_dir=tmp_path / "cache", allow_corrupt=allow_corrupt)


def test_long_lists_are_cut_but_every_path_is_kept(tmp_path):
    root = tmp_path / "many"
    root.mkdir()
    (root / "good.png").write_bytes(_png_bytes(np.zeros((4, 4, 3), np.uint8)))
    for i in range(25):
        (root / f"bad{i:02d}.png").write_bytes(b"junk")
    with pytest.raises(data.CorruptImageError) as info:
        data.load(f"folder:{root}", cache_dir=tmp_path / "cache")
    message = str(info.value)
    assert "25 of 26 files" in message and "... and 5 more" in message
    assert str(root / "bad19.png") in message and str(root / "bad20.png") not in message
    assert len(info.value.paths) == 25
    ds = data.load(f"folder:{root}", cache_dir=tmp_path / "cache", allow_corrupt=True)
    assert len(ds.skipped) == 25 and len(ds) == 1
