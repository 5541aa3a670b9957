"""HostLoader: get_batch's batches (same order, same resume) gathered on the host by grain's threads."""

from __future__ import annotations

import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sympad.train import data
from sympad.train.data import pipeline

pytest.importorskip("grain")

# Shared so that tests calling it with the same shapes compile it once.
_get_batch = jax.jit(data.get_batch, static_argnames=("batch_size", "augment", "crop_pad", "flip", "cutout_size"))


def _batches(loader) -> list[tuple[np.ndarray, np.ndarray]]:
    with loader:
        return [(np.asarray(x), None if y is None else np.asarray(y)) for x, y in loader]


def _split(n: int = 96) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (n, 4, 4, 3), dtype=np.uint8), rng.integers(0, 10, n).astype(np.int32)


def _pipeline_data():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (40, 8, 8, 3), dtype=np.uint8)
    return images, np.arange(40, dtype=np.int32)  # labels = indices, to read them back.


@pytest.mark.parametrize("start", [0, 7])
def test_the_rows_batch_indices_picks(start):
    images, labels = _split()
    key = jax.random.key(3)
    got = _batches(data.HostLoader(images, labels, batch_size=16, key=key, start_step=start, num_steps=9,
                                   num_threads=3))  # crosses an epoch end
    assert len(got) == 9
    for i, (gx, gy) in enumerate(got):
        idx = np.asarray(data.batch_indices(pipeline.stream_keys(key)[0], start + i, batch_size=16, num_examples=96))
        np.testing.assert_array_equal(gx, images[idx])
        np.testing.assert_array_equal(gy, labels[idx])


def test_matches_device_pipeline_and_resumes():
    images, labels = _pipeline_data()
    key = jax.random.key(11)
    batches = _batches(data.HostLoader(images, labels, batch_size=8, key=key, num_steps=9))
    assert len(batches) == 9
    prepare = jax.jit(lambda x, s: data.prepare_batch(x, key, s, augment=True))
    for step, (x, y) in enumerate(batches):
        assert x.dtype == np.uint8 and y.dtype == np.int32
        want_x, want_y = _get_batch(images, labels, key, step, batch_size=8, augment=True)
        np.testing.assert_array_equal(prepare(jnp.asarray(x), step), want_x)
        np.testing.assert_array_equal(y, want_y)
    # Resume mid-epoch (5 steps per epoch): the same batches from step 6 on.
    resumed = _batches(data.HostLoader(images, None, batch_size=8, key=key, start_step=6, num_steps=3))
    assert len(resumed) == 3
    for (x, y), (want, _) in zip(resumed, batches[6:]):
        assert y is None
        np.testing.assert_array_equal(x, want)


def test_resume_is_the_uninterrupted_tail():
    images, labels = _split()
    key = jax.random.key(1)
    whole = _batches(data.HostLoader(images, labels, batch_size=8, key=key, num_steps=12))
    tail = _batches(data.HostLoader(images, labels, batch_size=8, key=key, start_step=5, num_steps=7))
    for (a, _), (b, _) in zip(whole[5:], tail):
        np.testing.assert_array_equal(a, b)


def test_sharding():
    images, labels = _pipeline_data()
    mesh = jax.sharding.Mesh(np.array(jax.devices()), ("data",))
    sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
    loader = data.HostLoader(images, labels, batch_size=8, key=jax.random.key(0), sharding=sharding, start_step=3)
    x, y = next(loader)
    loader.close()
    assert x.sharding == sharding and y.sharding == sharding
    assert loader.step == 4
    np.testing.assert_array_equal(x, images[np.asarray(y)])
    np.testing.assert_array_equal(y, loader.indices(3))


def test_reports_source_errors():
    class Broken:
        def __len__(self):
            return 10

        def __getitem__(self, idx):
            raise OSError("disk went away")

    loader = data.HostLoader(Broken(), batch_size=2, key=jax.random.key(0))
    with pytest.raises(OSError, match="disk went away"):
        next(loader)
    loader.close()


def test_endless_and_invalid_arguments():
    images, _ = _split()
    with data.HostLoader(images, batch_size=8, key=jax.random.key(0)) as loader:
        firsts = [next(loader)[0].shape for _ in range(30)]  # more than two epochs
    assert firsts == [(8, 4, 4, 3)] * 30
    with pytest.raises(ValueError, match="num_threads"):
        data.HostLoader(images, batch_size=8, key=jax.random.key(0), num_threads=0)


def test_without_grain_one_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "grain", None)  # import grain raises ImportError
    with pytest.raises(data.MissingDependencyError, match=r"grain, which is not installed: pip install 'sympad\[data"):
        data.HostLoader(np.zeros((8, 2, 2, 3), np.uint8), batch_size=2, key=jax.random.key(0))
    from sympad.train import errors

    assert errors.is_user_error(data.MissingDependencyError("x"))
