"""The host loader: uint8 training batches gathered on the host by grain, for splits too large for device memory.

:class:`HostLoader` yields exactly the batches of the on-device pipeline
(``sympad.train.data.pipeline.get_batch``) with the same key, as uint8, so
``prepare_batch(images, key, step, ...)`` on a yielded batch reproduces ``get_batch``'s output.
Each batch is a pure function of the step, so the train state's step is the whole iterator
state and starting at ``start_step`` resumes an interrupted run exactly.

The reading is grain's (``pip install 'sympad[data]'``, or ``pip install grain``):
``grain.MapDataset.range(steps).map(gather)`` run by reader threads with a prefetch buffer.
Threads, not worker processes: the gather is a NumPy fancy index into an array or
memory-mapped decode cache (decoding already happened once, into that cache), which releases
the GIL. grain is imported when a loader is made, so the rest of the data package works
without it. (A thread-per-loader reader without grain was measured level with grain on a
2-core CPU, 2026-12-04, BENCHMARKS.md, and removed.)

Example::

  train = load("folder:/data/imagenet", "train", image_size=64)   # memory-mapped cache
  with HostLoader(train.images, train.labels, batch_size=256, key=key, start_step=step,
                  sharding=batch_sharded(mesh)) as loader:
    for step, (images, labels) in zip(range(step, total), loader):  # (256, 64, 64, 3) uint8
      batch = prepare_batch(images, key, step, augment=True)        # float32 in [-1, 1]
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import jax
import numpy as np

from sympad.train.data.pipeline import batch_indices, steps_per_epoch, stream_keys
from sympad.train.errors import UserError

__all__ = ["HostLoader", "MissingDependencyError"]

#: What installs grain, for the error without it.
GRAIN_INSTALL = "pip install 'sympad[data]' (or pip install grain)"


class MissingDependencyError(UserError, ModuleNotFoundError):
    """An optional package a feature needs is not installed; the message says what to install."""


def _import_grain():
    try:
        import grain
    except ImportError as e:
        raise MissingDependencyError(
            f"the host loader (config.host_data=True, or a split larger than the device allows) reads batches "
            f"with grain, which is not installed: {GRAIN_INSTALL}"
        ) from e
    return grain


_host_batch_indices = jax.jit(batch_indices, static_argnames=("batch_size", "num_examples"))


class HostLoader:
    """Iterator of uint8 training batches gathered on the host by grain reader threads.

    For splits too large for device memory. The batch order is exactly that of ``get_batch``
    with the same ``key``, and each batch a pure function of its step (see the module
    docstring). Each batch is gathered with sorted reads (which memory-mapped caches like) by
    one of ``num_threads`` grain threads, up to ``max(prefetch, num_threads)`` ahead, and put on
    the devices with ``jax.device_put``. With ``sharding`` over several processes each process
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
      prefetch: batches read ahead (at least ``num_threads``).
      num_threads: grain reader threads (>= 1).

    Attributes:
      step: the step of the next batch yielded.

    Raises:
      MissingDependencyError: grain is not installed (the message says how to install it).
      ValueError: for a bad argument (naming it).
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
        grain = _import_grain()
        self._num_examples = len(images)
        steps_per_epoch(num_examples=self._num_examples, batch_size=batch_size)  # Validates.
        if start_step < 0:
            raise ValueError(f"start_step must be >= 0, got {start_step}")
        if prefetch < 1:
            raise ValueError(f"prefetch must be >= 1, got {prefetch}")
        if isinstance(num_threads, bool) or not isinstance(num_threads, int) or num_threads < 1:
            raise ValueError(f"num_threads must be an int >= 1, got {num_threads!r}")
        if labels is not None and len(labels) != self._num_examples:
            raise ValueError(f"labels must have {self._num_examples} entries, got {len(labels)}")
        self._images, self._labels = images, labels
        self._batch_size = batch_size
        cpu = jax.devices("cpu")[0]
        self._key = jax.device_put(stream_keys(jax.device_put(key, cpu))[0], cpu)
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
        self.step = start_step
        end = start_step + num_steps if num_steps is not None else start_step + 2**40  # endless: lazily indexed
        self._closed = False
        dataset = grain.MapDataset.range(start_step, end).map(self._load)
        options = grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=max(prefetch, num_threads))
        self._iter = iter(dataset.to_iter_dataset(options))

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

    def _load(self, step: int) -> tuple[np.ndarray, np.ndarray | None]:
        idx = self.indices(int(step))[self._rows]
        labels = None if self._labels is None else self._gather(self._labels, idx).astype(np.int32)
        return self._gather(self._images, idx), labels

    def _put(self, array: np.ndarray) -> jax.Array:
        if self._sharding is None:
            return jax.device_put(array)
        if jax.process_count() > 1:
            global_shape = (self._batch_size, *array.shape[1:])
            return jax.make_array_from_process_local_data(self._sharding, array, global_shape)
        return jax.device_put(array, self._sharding)

    def __iter__(self) -> Iterator[tuple[jax.Array, jax.Array | None]]:
        return self

    def __next__(self) -> tuple[jax.Array, jax.Array | None]:
        if self._closed:
            raise StopIteration
        try:
            images, labels = next(self._iter)
        except StopIteration:
            self._closed = True
            raise
        except BaseException:
            self.close()
            raise
        self.step += 1
        return self._put(images), None if labels is None else self._put(labels)

    def close(self) -> None:
        """Stops the reader threads."""
        self._closed = True
        close = getattr(self._iter, "close", None)
        if close is not None:
            close()

    def __enter__(self) -> HostLoader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
