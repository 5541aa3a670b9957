"""Tests for sympad.train.data: every dataset source and the on-device pipeline (host loader: test_host_loader)."""

from __future__ import annotations

import io
import logging
import os
import shutil
import tarfile
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image, ImageOps

from sympad.train import data
from sympad.train.data import pipeline, sources

# Shared so that tests calling it with the same shapes compile it once.
_get_batch = jax.jit(
    data.get_batch, static_argnames=("batch_size", "augment", "crop_pad", "flip", "cutout_size")
)


def _png(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def _random_image(rng, h, w):
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


# ----------------------------------------------------------------------------
# TFDS through tfds.data_source, with tfds.testing.mock_data.
# ----------------------------------------------------------------------------

tfds = pytest.importorskip("tensorflow_datasets")


def _mock():
    # USE_CODE makes random examples from the feature spec; it needs no
    # metadata files and no TensorFlow.
    return tfds.testing.mock_data(num_examples=12, policy=tfds.testing.MockPolicy.USE_CODE)


@pytest.mark.parametrize("name,classes", [("cifar10", 10), ("cifar100", 100)])
def test_tfds_cifar_matches_source(tmp_path, name, classes):
    with _mock():
        ds = data.load(name, "train", cache_dir=tmp_path)
        source = tfds.data_source(name, split="train")
        want_images = np.stack([source[i]["image"] for i in range(len(source))])
        want_labels = np.array([source[i]["label"] for i in range(len(source))])
    assert ds.images.shape == (12, 32, 32, 3) and ds.images.dtype == np.uint8
    assert ds.labels.dtype == np.int32 and ds.num_classes == classes
    np.testing.assert_array_equal(ds.images, want_images)
    np.testing.assert_array_equal(ds.labels, want_labels)


def _reference_fit(image: np.ndarray, size: int) -> np.ndarray:
    """Resize the shorter side to ``size`` (PIL bicubic), then crop the centre."""
    h, w = image.shape[:2]
    scale = size / min(h, w)
    new_w, new_h = round(w * scale), round(h * scale)
    big = np.asarray(Image.fromarray(image).resize((new_w, new_h), Image.BICUBIC))
    top, left = (new_h - size) // 2, (new_w - size) // 2
    return big[top : top + size, left : left + size]


def test_tfds_variable_size_resized_and_cropped(tmp_path):
    with _mock():
        ds = data.load("imagenet2012", "train", image_size=16, cache_dir=tmp_path)
        source = tfds.data_source("imagenet2012", split="train")
        raw = [source[i]["image"] for i in range(len(source))]
    assert ds.images.shape == (12, 16, 16, 3) and ds.num_classes == 1000
    for got, image in zip(ds.images, raw):
        # PIL's own resize-shorter-side-and-centre-crop.
        want = ImageOps.fit(Image.fromarray(image), (16, 16), Image.BICUBIC)
        np.testing.assert_array_equal(got, np.asarray(want))


def test_tfds_variable_size_needs_image_size(tmp_path):
    with _mock(), pytest.raises(ValueError, match="image_size"):
        data.load("lsun/bedroom", "train", cache_dir=tmp_path)


def test_tfds_unconditional_sets(tmp_path):
    with _mock():
        celeb = data.load("celeb_a_hq", "train", cache_dir=tmp_path)
        lsun = data.load("lsun/bedroom", "test", image_size=24, cache_dir=tmp_path)
    assert celeb.images.shape == (12, 128, 128, 3) and celeb.labels is None
    assert celeb.num_classes is None
    assert lsun.images.shape == (12, 24, 24, 3) and lsun.labels is None


def test_tfds_split_and_config_mapping():
    assert sources._tfds_split("imagenet2012", "test") == "validation"
    assert sources._tfds_split("lsun", "test") == "validation"
    assert sources._tfds_split("celeb_a_hq", "test") == "train"
    assert sources._tfds_split("cifar10", "test") == "test"
    assert sources._tfds_split("cifar10", "train[:10]") == "train[:10]"
    assert sources._tfds_name("celeb_a_hq", None) == "celeb_a_hq/128"
    assert sources._tfds_name("celeb_a_hq", 100) == "celeb_a_hq/128"
    assert sources._tfds_name("celeb_a_hq", 256) == "celeb_a_hq/256"
    assert sources._tfds_name("celeb_a_hq/64", 32) == "celeb_a_hq/64"


def test_tfds_not_prepared_says_what_to_do(tmp_path):
    with pytest.raises(data.DatasetNotPreparedError) as info:
        data.load("cifar10", "train", data_dir=tmp_path, cache_dir=tmp_path)
    message = str(info.value)
    assert "pip install tensorflow" in message
    assert f"tfds build cifar10 --data_dir={tmp_path} --file_format=array_record" in message
    with pytest.raises(data.DatasetNotPreparedError) as info:
        data.load("imagenet2012", "train", image_size=64, data_dir=tmp_path, cache_dir=tmp_path)
    message = str(info.value)
    assert "ILSVRC2012_img_train.tar" in message
    assert f"{tmp_path}/downloads/manual" in message


def test_unknown_name_and_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="name"):
        data.load("no_such_dataset_xyz", cache_dir=tmp_path)
    with pytest.raises(ValueError, match="image_size"):
        data.load("digits", image_size=0)
    with pytest.raises(ValueError, match="max_examples"):
        data.load("digits", max_examples=-1)
    with pytest.raises(ValueError, match="split"):
        data.load("digits", "validation")
    with pytest.raises(ValueError, match="does not exist"):
        data.load(f"folder:{tmp_path / 'missing'}")


# ----------------------------------------------------------------------------
# Image folders.
# ----------------------------------------------------------------------------


@pytest.fixture
def class_folder(tmp_path):
    """Two classes of PNG (exact) and JPEG files, plus one corrupt file."""
    rng = np.random.default_rng(0)
    root = tmp_path / "images"
    expected = []  # (path, image, label) in the loader's order.
    for label, cls in enumerate(["cat", "dog"]):
        for i in range(5):
            image = _random_image(rng, 8, 8)
            path = root / cls / f"{i:02d}.png"
            _png(path, image)
            expected.append((path, image, label))
    jpeg = root / "dog" / "10.jpg"
    Image.fromarray(np.full((8, 8, 3), 200, np.uint8)).save(jpeg, quality=95)
    expected.append((jpeg, np.asarray(Image.open(jpeg).convert("RGB")), 1))
    corrupt = root / "cat" / "03_broken.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n this is not really a png")
    (root / "cat" / ".DS_Store").write_bytes(b"ignored")
    return root, corrupt, expected


def test_folder_corrupt_file_is_an_error_naming_it(class_folder, tmp_path):
    root, corrupt, _ = class_folder
    with pytest.raises(data.CorruptImageError) as info:
        data.load(f"folder:{root}", cache_dir=tmp_path / "cache")
    assert str(corrupt) in str(info.value)
    assert len(info.value.paths) == 1
    # Nothing was cached by the failed load.
    assert not list((tmp_path / "cache").glob("folder-*"))


def test_folder_corrupt_file_skipped_counted_and_cached(
    class_folder, tmp_path, caplog, monkeypatch
):
    root, corrupt, expected = class_folder
    cache = tmp_path / "cache"
    with caplog.at_level(logging.WARNING, logger="sympad.train.data"):
        ds = data.load(f"folder:{root}", cache_dir=cache, allow_corrupt=True)
    assert "skipped 1 of 12" in caplog.text and str(corrupt) in caplog.text
    assert len(ds.skipped) == 1 and ds.skipped[0].startswith(str(corrupt))
    assert ds.class_names == ("cat", "dog") and ds.num_classes == 2
    assert ds.images.shape == (11, 8, 8, 3) and ds.images.dtype == np.uint8
    np.testing.assert_array_equal(ds.labels, [label for _, _, label in expected])
    np.testing.assert_array_equal(ds.images, np.stack([image for _, image, _ in expected]))

    # Second load: served from the cache (decoding would fail), skips still reported.
    def no_decode(*args, **kwargs):
        raise AssertionError("decoded again despite the cache")

    monkeypatch.setattr(sources, "_decode_file", no_decode)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="sympad.train.data"):
        again = data.load(f"folder:{root}", cache_dir=cache, allow_corrupt=True)
    np.testing.assert_array_equal(again.images, ds.images)
    np.testing.assert_array_equal(again.labels, ds.labels)
    assert str(corrupt) in caplog.text
    with pytest.raises(data.CorruptImageError, match="03_broken"):
        data.load(f"folder:{root}", cache_dir=cache)

    # A changed file invalidates the cache.
    monkeypatch.undo()
    new = np.zeros((8, 8, 3), np.uint8)
    _png(expected[0][0], new)
    os.utime(expected[0][0], ns=(1, 1))
    changed = data.load(f"folder:{root}", cache_dir=cache, allow_corrupt=True)
    np.testing.assert_array_equal(changed.images[0], new)


def test_folder_non_image_file_is_reported(tmp_path):
    root = tmp_path / "flat"
    _png(root / "a.png", np.zeros((4, 4, 3), np.uint8))
    (root / "notes.txt").write_text("not an image")
    with pytest.raises(data.CorruptImageError, match="notes.txt"):
        data.load(f"folder:{root}", cache_dir=tmp_path / "cache")


def test_flat_folder_resized_and_cropped(tmp_path):
    rng = np.random.default_rng(1)
    root = tmp_path / "flat"
    images = [_random_image(rng, 24, 40), _random_image(rng, 40, 24), _random_image(rng, 12, 12)]
    for i, image in enumerate(images):
        _png(root / f"{i}.png", image)
    ds = data.load(f"folder:{root}", image_size=12, cache_dir=tmp_path / "cache")
    assert ds.labels is None and ds.num_classes is None and ds.class_names is None
    assert ds.images.shape == (3, 12, 12, 3)
    for got, image in zip(ds.images, images):
        # Exact scale 1/2 and even margins: both ways sample the same points.
        want = _reference_fit(image, 12)
        assert np.abs(got.astype(int) - want).max() <= 1
    np.testing.assert_array_equal(ds.images[2], images[2])


def test_folder_mixed_sizes_need_image_size(tmp_path):
    root = tmp_path / "flat"
    _png(root / "a.png", np.zeros((4, 4, 3), np.uint8))
    _png(root / "b.png", np.zeros((6, 4, 3), np.uint8))
    with pytest.raises(ValueError, match="image_size"):
        data.load(f"folder:{root}", cache_dir=tmp_path / "cache")


def test_folder_layouts_and_max_examples(tmp_path):
    root = tmp_path / "split"
    for split, n in [("train", 6), ("test", 2)]:
        for cls in ["a", "b", "c"]:
            for i in range(n):
                _png(root / split / cls / f"{i}.png", np.full((4, 4, 3), i, np.uint8))
    train = data.load(f"folder:{root}", "train", cache_dir=tmp_path / "cache")
    test = data.load(f"folder:{root}", "test", cache_dir=tmp_path / "cache")
    assert len(train) == 18 and len(test) == 6
    with pytest.raises(ValueError, match="split"):
        data.load(f"folder:{root}", "validation", cache_dir=tmp_path / "cache")
    # Evenly spaced positions: every class survives a small max_examples.
    few = data.load(f"folder:{root}", "train", max_examples=3, cache_dir=tmp_path / "cache")
    np.testing.assert_array_equal(few.labels, [0, 1, 2])
    _png(root / "train" / "loose.png", np.zeros((4, 4, 3), np.uint8))
    (root / "test").rename(tmp_path / "elsewhere")
    with pytest.raises(ValueError, match="loose"):
        data.load(f"folder:{root / 'train'}", cache_dir=tmp_path / "cache")


# ----------------------------------------------------------------------------
# The shared CIFAR-10 archives: found, extracted once, atomically.
# ----------------------------------------------------------------------------


def _cifar_like_archive(directory: Path, split: str, *, per_class: int = 2) -> Path:
    """A small ``cifar10-<split>.tar.gz`` laid out like the shared one."""
    rng = np.random.default_rng(len(split))
    build = directory / "build"
    for cls in ("airplane", "automobile"):
        for i in range(per_class):
            _png(build / "cifar10-jpeg" / split / cls / f"{i:04d}.png", _random_image(rng, 8, 8))
    archive = directory / f"cifar10-{split}.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(build / "cifar10-jpeg", arcname="cifar10-jpeg")
    shutil.rmtree(build)
    return archive


def test_shared_data_dirs_are_the_env_var_only(monkeypatch, tmp_path):
    monkeypatch.setenv(data.SHARED_DATA_ENV, str(tmp_path))
    assert data.shared_data_dirs() == [tmp_path]
    assert data.shared_data_file("cifar10-test.tar.gz") is None
    (tmp_path / "cifar10-test.tar.gz").write_bytes(b"")
    assert data.shared_data_file("cifar10-test.tar.gz") == tmp_path / "cifar10-test.tar.gz"
    # Unset, the installed library looks nowhere (../shared/data beside a checkout is the checkout
    # layers' default: tests/shared.py, paper/shared_data.py, benchmarks/data.py).
    monkeypatch.delenv(data.SHARED_DATA_ENV)
    assert data.shared_data_dirs() == [] and data.shared_data_file("cifar10-test.tar.gz") is None
    with pytest.raises(FileNotFoundError, match=f"cifar10-test.tar.gz: {data.SHARED_DATA_ENV} is unset"):
        data.cifar10_folder("test", cache_dir=tmp_path / "cache")


def test_the_test_session_finds_the_archives_beside_a_fresh_clone():
    from tests import shared

    if not shared.CHECKOUT_SHARED_DATA.is_dir():
        pytest.skip("no ../shared/data beside this checkout")
    assert data.shared_data_dirs()  # tests/shared.py set the variable (or the user did)


def test_cifar10_folder_extracts_once(monkeypatch, tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    monkeypatch.setenv(data.SHARED_DATA_ENV, str(shared))
    for split in data.CIFAR10_SPLITS:
        _cifar_like_archive(shared, split, per_class=2 if split == "train" else 1)
    cache = tmp_path / "cache"
    root = data.cifar10_folder(cache_dir=cache)
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
    for archive in shared.iterdir():
        archive.unlink()
    assert data.cifar10_folder(cache_dir=cache) == root
    assert data.cifar10_folder("test", cache_dir=cache) == root
    with pytest.raises(FileNotFoundError, match=f"cifar10-train.tar.gz.*{data.SHARED_DATA_ENV}"):
        data.cifar10_folder(cache_dir=tmp_path / "elsewhere")
    with pytest.raises(ValueError, match="splits"):
        data.cifar10_folder(("validation",), cache_dir=cache)


def test_cifar10_folder_loses_an_extraction_race_cleanly(monkeypatch, tmp_path):
    """Another process renames its complete folder into place first: ours is dropped."""
    monkeypatch.setenv(data.SHARED_DATA_ENV, str(tmp_path))
    _cifar_like_archive(tmp_path, "test")
    root = tmp_path / "cache" / "cifar10-jpeg"
    rename = os.rename

    def rename_after_the_winner(source, target):
        (Path(target) / "winner").mkdir(parents=True)
        rename(source, target)  # Raises: the target now exists and is not empty.

    monkeypatch.setattr(os, "rename", rename_after_the_winner)
    assert data.cifar10_folder("test", cache_dir=tmp_path / "cache") == root
    assert [p.name for p in (root / "test").iterdir()] == ["winner"]
    assert [p.name for p in root.parent.iterdir()] == ["cifar10-jpeg"]
    # Any other failure to rename is not swallowed.
    def refuse(source, target):
        raise PermissionError(target)

    monkeypatch.setattr(os, "rename", refuse)
    with pytest.raises(PermissionError):
        data.cifar10_folder("test", cache_dir=tmp_path / "other")
    assert not list((tmp_path / "other" / "cifar10-jpeg").iterdir())  # nothing half-extracted


def test_extract_archive_once_and_afresh_when_changed(tmp_path):
    archive = _cifar_like_archive(tmp_path, "test")
    first = data.extract_archive(archive, cache_dir=tmp_path / "cache")
    assert sorted(p.name for p in (first / "cifar10-jpeg" / "test").iterdir()) == ["airplane", "automobile"]
    assert data.extract_archive(archive, cache_dir=tmp_path / "cache") == first
    _cifar_like_archive(tmp_path, "test", per_class=3)  # same name, new content
    second = data.extract_archive(archive, cache_dir=tmp_path / "cache")
    assert second != first and len(list((second / "cifar10-jpeg" / "test" / "airplane").iterdir())) == 3
    for bad in (tmp_path / "missing.tar.gz", tmp_path / "build"):
        with pytest.raises(ValueError, match="archive"):
            data.extract_archive(bad, cache_dir=tmp_path / "cache")


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
            data.extract_archive(archive, cache_dir=tmp_path / "cache")
    assert not list((tmp_path / "outside").iterdir()) and not (tmp_path / "dots.jpg").exists()
    assert not list((tmp_path / "cache").iterdir())  # nothing half-extracted left behind
    # An absolute name lands inside, as the filter puts it; plain files keep their bytes.
    good = _tar_with(tmp_path / "good.tar.gz", [_file("/abs/y.jpg"), _file("b/c/z.jpg")])
    folder = data.extract_archive(good, cache_dir=tmp_path / "cache")
    assert sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*.jpg")) == ["abs/y.jpg", "b/c/z.jpg"]
    assert (folder / "b" / "c" / "z.jpg").read_bytes() == b"jpeg bytes"


@pytest.mark.slow  # reads 2000 of the 10k JPEGs (extracted once per run by the fixture)
def test_real_cifar10_jpeg_folder(cifar10_test_root, tmp_path):
    root = cifar10_test_root
    # 2000 evenly spaced of the 10,000 class-sorted files: 200 per class.
    ds = data.load(f"folder:{root}", "test", max_examples=2000, cache_dir=tmp_path / "cache")
    assert ds.class_names == ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
    assert ds.images.shape == (2000, 32, 32, 3) and ds.images.dtype == np.uint8
    np.testing.assert_array_equal(np.bincount(ds.labels), [200] * 10)
    first = sorted((root / "test" / "automobile").iterdir())[0]
    np.testing.assert_array_equal(ds.images[200], np.asarray(Image.open(first).convert("RGB")))
    # Real photographs, not blank decodes.
    assert 60 < ds.images.mean() < 200 and ds.images.std() > 30


# ----------------------------------------------------------------------------
# digits, synthetic.
# ----------------------------------------------------------------------------


def test_digits():
    from sklearn.datasets import load_digits

    train, test = data.load("digits", "train"), data.load("digits", "test")
    digits = load_digits()
    assert train.images.shape == (1500, 32, 32, 3) and test.images.shape == (297, 32, 32, 3)
    assert train.images.dtype == np.uint8 and train.num_classes == 10
    np.testing.assert_array_equal(train.labels, digits.target[:1500])
    np.testing.assert_array_equal(test.labels, digits.target[1500:])
    np.testing.assert_array_equal(train.images[..., 0], train.images[..., 2])
    # Independent bilinear resize (half-pixel centres, no zero padding).
    want = jax.image.resize(digits.images[:50] * (255 / 16), (50, 32, 32), "bilinear")
    assert np.abs(train.images[:50, ..., 0] - np.asarray(want)).max() <= 0.51
    assert train.images.max() == 255 and train.images.min() == 0


def test_synthetic_deterministic_and_learnable():
    a = data.load("synthetic", "train")
    b = data.load("synthetic", "train")
    test = data.load("synthetic", "test", max_examples=200)
    np.testing.assert_array_equal(a.images, b.images)
    np.testing.assert_array_equal(a.labels, b.labels)
    assert a.images.shape == (512, 32, 32, 3) and test.images.shape == (200, 32, 32, 3)
    assert not np.array_equal(a.images[:200], test.images)
    assert data.load("synthetic", image_size=16, max_examples=7).images.shape == (7, 16, 16, 3)

    # Nearest class mean of the mean colour (grey component removed) separates
    # the classes: the data has class structure a classifier can learn.
    def features(x):
        rgb = x.astype(np.float64).mean((1, 2))
        return rgb - rgb.mean(1, keepdims=True)

    centroids = np.stack([features(a.images)[a.labels == c].mean(0) for c in range(10)])
    distances = ((features(test.images)[:, None] - centroids[None]) ** 2).sum(-1)
    accuracy = (distances.argmin(1) == test.labels).mean()
    assert accuracy > 0.9, accuracy


# ----------------------------------------------------------------------------
# On-device pipeline.
# ----------------------------------------------------------------------------


def test_batch_indices_epochs_and_resume():
    key = jax.random.key(3)
    n, b = 23, 5  # 4 steps per epoch, 3 examples dropped per epoch.
    f = jax.jit(lambda s: data.batch_indices(key, s, batch_size=b, num_examples=n))
    assert data.steps_per_epoch(num_examples=n, batch_size=b) == 4
    epochs = []
    for epoch in range(3):
        idx = np.concatenate([np.asarray(f(epoch * 4 + s)) for s in range(4)])
        assert idx.dtype == np.int32 and len(set(idx.tolist())) == 20
        assert idx.min() >= 0 and idx.max() < n
        epochs.append(idx)
    assert not np.array_equal(epochs[0], epochs[1])
    # A step maps to the same indices however it is reached: alone (resume
    # mid-epoch) or among all steps (here batched over steps).
    np.testing.assert_array_equal(np.asarray(f(6)), epochs[1][10:15])
    g = jax.jit(jax.vmap(lambda s: data.batch_indices(key, s, batch_size=b, num_examples=n)))
    np.testing.assert_array_equal(np.asarray(g(jnp.arange(12))).reshape(3, 20), np.stack(epochs))
    with pytest.raises(ValueError, match="batch_size"):
        data.batch_indices(key, 0, batch_size=30, num_examples=20)


def test_batch_indices_look_uniform():
    # Over many keys, the first two examples of epoch 0 are uniform over the
    # split and over ordered pairs (expected 200 and 44.4 per cell).
    keys = jax.random.split(jax.random.key(0), 2000)
    first = jax.jit(jax.vmap(lambda k: data.batch_indices(k, 0, batch_size=2, num_examples=10)))
    pairs = np.asarray(first(keys))
    for column in pairs.T:
        counts = np.bincount(column, minlength=10)
        assert counts.min() > 150 and counts.max() < 250, counts
    pair_counts = np.bincount(pairs[:, 0] * 10 + pairs[:, 1], minlength=100)
    assert (pair_counts[::11] == 0).all()  # Never the same example twice.
    assert (np.delete(pair_counts, np.arange(0, 100, 11)) > 5).all()


def test_eval_indices_cover_split_once():
    seen = []
    for step in range(3):
        idx, mask = data.eval_indices(step, batch_size=4, num_examples=10)
        seen += np.asarray(idx)[np.asarray(mask)].tolist()
    assert seen == list(range(10))


def test_to_float_to_uint8():
    x = np.arange(256, dtype=np.uint8)
    f = data.to_float(x)
    assert f.dtype == jnp.float32 and float(f[0]) == -1.0 and float(f[-1]) == 1.0
    np.testing.assert_array_equal(data.to_uint8(f), x)
    np.testing.assert_array_equal(data.to_uint8(jnp.array([-3.0, 3.0])), [0, 255])


def _numpy_crop_flip(images, dy, dx, flips, pad):
    padded = np.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    h, w = images.shape[1:3]
    out = np.stack([padded[i, y : y + h, x : x + w] for i, (y, x) in enumerate(zip(dy, dx))])
    return np.where(np.asarray(flips)[:, None, None, None], out[:, :, ::-1], out)


def test_augment_matches_numpy_reference():
    rng = np.random.default_rng(0)
    images = rng.integers(1, 256, (64, 8, 8, 3), dtype=np.uint8)
    key = jax.random.key(7)
    got = np.asarray(jax.jit(lambda x, k: data.augment(x, k, crop_pad=3))(images, key))
    dy, dx, flips = pipeline._augment_params(key, 64, crop_pad=3, flip=True)
    np.testing.assert_array_equal(got, _numpy_crop_flip(images, dy, dx, flips, 3))
    # Independent of the parameter helper: every output is exactly one of the
    # 98 legal crops/flips of its input, and the draws cover the range.
    padded = np.pad(images, ((0, 0), (3, 3), (3, 3), (0, 0)))
    windows = np.lib.stride_tricks.sliding_window_view(padded, (8, 8), axis=(1, 2))
    windows = windows.transpose(0, 1, 2, 4, 5, 3)  # (B, dy, dx, 8, 8, 3)
    found = []
    for i in range(64):
        plain = (windows[i] == got[i]).all(axis=(2, 3, 4))
        flipped = (windows[i][:, :, :, ::-1] == got[i]).all(axis=(2, 3, 4))
        matches = np.argwhere(np.stack([plain, flipped], -1))
        assert len(matches) == 1
        found.append(tuple(matches[0]))
    ys, xs, fls = zip(*found)
    assert set(ys) == set(range(7)) and set(xs) == set(range(7)) and set(fls) == {0, 1}
    # Deterministic in the key; no flip and no pad is the identity.
    np.testing.assert_array_equal(data.augment(images, key, crop_pad=3), got)
    np.testing.assert_array_equal(data.augment(images, key, crop_pad=0, flip=False), images)


def test_cutout_is_one_clipped_square():
    images = jnp.ones((32, 10, 10, 1))
    out = np.asarray(jax.jit(lambda x, k: data.cutout(x, k, size=4))(images, jax.random.key(1)))
    for image in out[..., 0]:
        rows, cols = np.nonzero(image == 0)
        assert 1 <= len(set(rows)) <= 4 and 1 <= len(set(cols)) <= 4
        # A filled axis-aligned rectangle.
        assert len(rows) == len(set(rows)) * len(set(cols))
        assert np.ptp(rows) + 1 == len(set(rows)) and np.ptp(cols) + 1 == len(set(cols))
    assert (out == 0).sum(axis=(1, 2, 3)).max() == 16


def test_cutout_parameters():
    key = jax.random.key(2)
    x = jnp.ones((500, 9, 8, 1)) * -0.5
    # Rectangle, fill, centres 'pixels' in [0, H) vs 'balanced' in [0, H] for an even side.
    cy, cx = pipeline.cutout_centres(key, 500, height=9, width=8, size=(3, 4))
    assert cy.dtype == jnp.int32 and set(np.asarray(cy)) == set(range(9)) and set(np.asarray(cx)) == set(range(8))
    by, bx = pipeline.cutout_centres(key, 500, height=9, width=8, size=(3, 4), centres="balanced")
    assert set(np.asarray(by)) == set(range(9)) and set(np.asarray(bx)) == set(range(9))
    out = np.asarray(data.cutout(x, key, size=(3, 4), fill=0.25))
    np.testing.assert_array_equal(out, data.cutout_square(x, cy, cx, size=(3, 4), fill=0.25))
    inside = out[..., 0] == 0.25
    assert inside.sum(axis=(1, 2)).max() == 12 and (out[~inside] == -0.5).all()
    # fill=None multiplies by the mask: -0.0 where the pixel was negative, NaN stays NaN.
    centre = jnp.ones(500, jnp.int32)  # size 2: rows and columns [0, 2)
    square = np.asarray(data.cutout_square(x.at[0, 0, 0].set(jnp.nan), centre, centre, size=2, fill=None))
    assert np.isnan(square[0, 0, 0, 0]) and np.signbit(square[0, 1, 1, 0]) and square[0, 1, 1, 0] == 0
    with pytest.raises(ValueError, match="centres"):
        data.cutout(x, key, size=2, centres="edges")
    with pytest.raises(ValueError, match="size"):
        data.cutout(x, key, size=(0, 2))


def _pipeline_data():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (40, 8, 8, 3), dtype=np.uint8)
    return images, np.arange(40, dtype=np.int32)  # labels = indices, to read them back.


def test_get_batch_deterministic_and_consistent():
    images, labels = map(jnp.asarray, _pipeline_data())
    key = jax.random.key(0)
    x, y = _get_batch(images, labels, key, 7, batch_size=8, augment=True)
    x2, _ = _get_batch(images, labels, key, 7, batch_size=8, augment=True)
    assert x.shape == (8, 8, 8, 3) and x.dtype == jnp.float32 and y.dtype == jnp.int32
    np.testing.assert_array_equal(x, x2)
    assert float(x.min()) >= -1 and float(x.max()) <= 1
    assert not np.array_equal(_get_batch(images, labels, key, 8, batch_size=8, augment=True)[0], x)
    plain, plain_y = _get_batch(images, labels, key, 7, batch_size=8)
    np.testing.assert_array_equal(plain_y, y)
    idx = np.asarray(y)
    want = (np.asarray(images)[idx] - 127.5) / 127.5
    np.testing.assert_allclose(plain, want, rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(idx, data.batch_indices(jax.random.split(key)[0], 7, batch_size=8, num_examples=40))


def test_mixup_is_a_convex_combination():
    rng = np.random.default_rng(0)
    images = rng.normal(size=(16, 4, 4, 3)).astype(np.float32)
    onehot = np.eye(10, dtype=np.float32)[rng.integers(0, 10, 16)]
    mixed, soft = jax.jit(lambda x, y, k: data.mixup(x, y, k, alpha=1.0))(
        images, onehot, jax.random.key(5)
    )
    mixed, soft = np.asarray(mixed), np.asarray(soft)
    np.testing.assert_allclose(soft.sum(1), 1, rtol=1e-6)
    lams = set()
    for i in range(16):
        # Find the partner j and lam with mixed_i = lam x_i + (1 - lam) x_j.
        best = None
        for j in range(16):
            d = images[i] - images[j]
            denom = float((d * d).sum())
            lam = 1.0 if denom == 0 else float(((mixed[i] - images[j]) * d).sum() / denom)
            err = np.abs(lam * images[i] + (1 - lam) * images[j] - mixed[i]).max()
            if best is None or err < best[0]:
                best = (err, j, lam)
        err, j, lam = best
        assert err < 1e-5 and -1e-6 <= lam <= 1 + 1e-6
        np.testing.assert_allclose(soft[i], lam * onehot[i] + (1 - lam) * onehot[j], atol=1e-5)
        if j != i and lam < 1 - 1e-4:  # perm[i] == i leaves x_i unmixed.
            lams.add(round(lam, 4))
    assert len(lams) == 1  # One lam per batch.
    same, labels = data.mixup(images, onehot, jax.random.key(5), alpha=0.0)
    np.testing.assert_array_equal(same, images)
    with pytest.raises(ValueError, match="alpha"):
        data.mixup(images, onehot, jax.random.key(5), alpha=-1.0)


# ----------------------------------------------------------------------------
# The choice between the on-device pipeline and the host loader.
# ----------------------------------------------------------------------------


def test_fits_on_device():
    small = data.load("synthetic", max_examples=4)
    assert data.fits_on_device(small)
    huge = data.Dataset(
        images=np.broadcast_to(np.zeros((1, 1, 1, 3), np.uint8), (1 << 40, 1, 1, 3)),
        labels=None,
        num_classes=None,
        name="huge",
    )
    assert not data.fits_on_device(huge)
    with pytest.raises(ValueError, match="fraction"):
        data.fits_on_device(small, fraction=0)
