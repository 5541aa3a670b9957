"""Datasets and input pipelines shared by the GAN and classification suites.

One module per concern, everything public re-exported here (``from sympad.train import data;
data.load(...)``):

* ``sources``: :func:`load` (TFDS, ``folder:PATH``, ``digits``, ``synthetic``) returning a
  :class:`Dataset` of uint8 images; :func:`load_split`, the suites' ``config.data`` wrapper.
* ``cache``: the decode cache, where TFDS and folder sources are decoded once into ``.npy``
  files (memory-mapped above :data:`MMAP_BYTES`), and the corrupt-file policy
  (:class:`CorruptImageError`).
* ``pipeline``: the on-device pipeline, pure and jit-able: Feistel-permuted batches
  (:func:`get_batch`), :func:`augment`, :func:`cutout`, :func:`mixup`, and
  :func:`fits_on_device` to choose between it and the host loader.
* ``host``: :class:`HostLoader`, the same batches gathered on the host by grain threads
  (``pip install 'sympad[data]'``).

Example::

  from sympad.train import data

  train = data.load("synthetic", "train", image_size=32, max_examples=512)
  images, labels = jax.device_put(train.images), jax.device_put(train.labels)
  batch, batch_labels = data.get_batch(images, labels, key, step, batch_size=128, augment=True)
  batch.shape, batch_labels.shape  # (128, 32, 32, 3) float32 in [-1, 1], (128,) int32
"""

from sympad.train.data.cache import MMAP_BYTES, CorruptImageError
from sympad.train.data.host import HostLoader, MissingDependencyError
from sympad.train.data.pipeline import (
    CUTOUT_CENTRES,
    augment,
    batch_indices,
    cutout,
    cutout_centres,
    cutout_square,
    eval_indices,
    fits_on_device,
    get_batch,
    mixup,
    prepare_batch,
    steps_per_epoch,
    to_float,
    to_uint8,
)
from sympad.train.data.sources import (
    DIGITS_TRAIN_SIZE,
    Dataset,
    DatasetNotPreparedError,
    default_cache_dir,
    load,
    load_split,
)

__all__ = [
    "CUTOUT_CENTRES",
    "DIGITS_TRAIN_SIZE",
    "MMAP_BYTES",
    "CorruptImageError",
    "Dataset",
    "DatasetNotPreparedError",
    "HostLoader",
    "MissingDependencyError",
    "augment",
    "batch_indices",
    "cutout",
    "cutout_centres",
    "cutout_square",
    "default_cache_dir",
    "eval_indices",
    "fits_on_device",
    "get_batch",
    "load",
    "load_split",
    "mixup",
    "prepare_batch",
    "steps_per_epoch",
    "to_float",
    "to_uint8",
]
