"""GrainLoader: HostLoader's batches (same order, same resume) read by grain's threads."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from sympad.train import data

pytest.importorskip("grain")


def _batches(loader) -> list[tuple[np.ndarray, np.ndarray]]:
    with loader:
        return [(np.asarray(x), np.asarray(y)) for x, y in loader]


def _split(n: int = 96) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (n, 4, 4, 3), dtype=np.uint8), rng.integers(0, 10, n).astype(np.int32)


@pytest.mark.parametrize("start", [0, 7])
def test_same_batches_as_host_loader_and_get_batch(start):
    images, labels = _split()
    key = jax.random.key(3)
    kwargs = dict(batch_size=16, key=key, start_step=start, num_steps=9)  # crosses an epoch end
    want = _batches(data.HostLoader(images, labels, **kwargs))
    got = _batches(data.GrainLoader(images, labels, num_threads=3, **kwargs))
    assert len(got) == len(want) == 9
    for (gx, gy), (wx, wy) in zip(got, want):
        np.testing.assert_array_equal(gx, wx)
        np.testing.assert_array_equal(gy, wy)
    # Independent reference: the rows batch_indices picks for each step.
    for i, (gx, gy) in enumerate(got):
        idx = np.asarray(data.batch_indices(data._stream_keys(key)[0], start + i, batch_size=16, num_examples=96))
        np.testing.assert_array_equal(gx, images[idx])
        np.testing.assert_array_equal(gy, labels[idx])


def test_resume_is_the_uninterrupted_tail():
    images, labels = _split()
    key = jax.random.key(1)
    whole = _batches(data.GrainLoader(images, labels, batch_size=8, key=key, num_steps=12))
    tail = _batches(data.GrainLoader(images, labels, batch_size=8, key=key, start_step=5, num_steps=7))
    for (a, _), (b, _) in zip(whole[5:], tail):
        np.testing.assert_array_equal(a, b)


def test_endless_and_invalid_arguments():
    images, _ = _split()
    with data.GrainLoader(images, batch_size=8, key=jax.random.key(0)) as loader:
        firsts = [next(loader)[0].shape for _ in range(30)]  # more than two epochs
    assert firsts == [(8, 4, 4, 3)] * 30
    with pytest.raises(ValueError, match="num_threads"):
        data.GrainLoader(images, batch_size=8, key=jax.random.key(0), num_threads=0)
