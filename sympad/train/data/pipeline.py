"""The on-device input pipeline: pure, jit-able functions of a PRNG key and the global step.

The whole split lives on the accelerator as uint8 (CIFAR-10 train is 150 MB); :func:`get_batch`
shuffles, batches and augments inside the jitted train step (pad-and-crop, flip, cutout;
:func:`mixup` on top), so input never stalls a step. Use it when :func:`fits_on_device`;
otherwise the host loader (``sympad.train.data.host``) gathers the same uint8 batches and
:func:`prepare_batch` augments them exactly as :func:`get_batch` would.

Steps and epochs: with ``N`` examples and batch size ``B`` an epoch is ``N // B`` steps
(:func:`steps_per_epoch`); step ``s`` belongs to epoch ``s // (N // B)`` and reads positions
``(s % (N // B)) * B ...`` of that epoch's permutation. The ``N % B`` examples left over at the
end of each permutation are not seen in that epoch (different ones every epoch). Batches are a
pure function of ``(key, step)``: resuming at any step, mid-epoch included, reproduces the
uninterrupted run exactly. The permutation is a keyed Feistel network evaluated at the batch's
positions only, so a step costs the same for 10^4 or 10^6 examples (no per-step sort of the
whole split).

Example::

  images = jax.device_put(train.images)          # (N, 32, 32, 3) uint8, the whole split
  labels = jax.device_put(train.labels)

  @jax.jit
  def train_step(state, key):
    batch, batch_labels = get_batch(images, labels, key, state.step, batch_size=128,
                                    augment=True, cutout_size=16)  # (128, 32, 32, 3) in [-1, 1]
    ...
"""

from __future__ import annotations

import os

import jax
import jax.extend.random
import jax.numpy as jnp

from sympad.train.data.sources import Dataset

__all__ = [
    "CUTOUT_CENTRES",
    "augment",
    "batch_indices",
    "cutout",
    "cutout_centres",
    "cutout_square",
    "eval_indices",
    "fits_on_device",
    "get_batch",
    "mixup",
    "prepare_batch",
    "steps_per_epoch",
    "to_float",
    "to_uint8",
]


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


#: How :func:`cutout_centres` draws a square's centre along an axis of ``n`` pixels.
CUTOUT_CENTRES = ("pixels", "balanced")


def _pair(size: int | tuple[int, int]) -> tuple[int, int]:
    return (size, size) if isinstance(size, int) else tuple(size)


def cutout_centres(
    key: jax.Array, batch: int, *, height: int, width: int, size: int | tuple[int, int], centres: str = "pixels"
) -> tuple[jax.Array, jax.Array]:
    """Per-image centres ``(cy, cx)`` of the :func:`cutout` square, each (B,) int32.

    Args:
      key: PRNG key (split into one key per axis).
      batch: B.
      height, width: image size.
      size: side of the square, or ``(rows, cols)`` of a rectangle.
      centres: ``'pixels'``: uniform over the pixels, ``[0, H)``. ``'balanced'``: uniform over
        ``[0, H - 1]`` for an odd side and ``[0, H]`` for an even one (DiffAugment's code), so an
        even square is as likely to stick out at the bottom as at the top.

    Returns:
      (cy, cx), each (B,) int32.
    """
    if centres not in CUTOUT_CENTRES:
        raise ValueError(f"centres must be one of {CUTOUT_CENTRES}, got {centres!r}")
    size_y, size_x = _pair(size)
    k_y, k_x = jax.random.split(key)
    extra_y, extra_x = (1 - size_y % 2, 1 - size_x % 2) if centres == "balanced" else (0, 0)
    cy = jax.random.randint(k_y, (batch,), 0, height + extra_y, dtype=jnp.int32)
    cx = jax.random.randint(k_x, (batch,), 0, width + extra_x, dtype=jnp.int32)
    return cy, cx


def cutout_square(
    images: jax.typing.ArrayLike,
    cy: jax.typing.ArrayLike,
    cx: jax.typing.ArrayLike,
    *,
    size: int | tuple[int, int],
    fill: float | None = 0.0,
) -> jax.Array:
    """Sets the square of side ``size`` centred at ``(cy[b], cx[b])`` of each image, clipped at its border.

    The square covers rows ``[cy - s // 2, cy - s // 2 + s)`` and the same for columns.

    Args:
      images: (B, H, W, C).
      cy, cx: (B,) integer centres (:func:`cutout_centres`).
      size: side of the square, or ``(rows, cols)``.
      fill: value written into the square. None multiplies the images by the 0/1 mask instead
        (DiffAugment's code: the same zeros up to sign, ``-0.0`` for negative pixels, and NaN
        stays NaN); the gradient is the mask either way.

    Returns:
      (B, H, W, C), the dtype of ``images``.
    """
    size_y, size_x = _pair(size)
    if size_y < 1 or size_x < 1:
        raise ValueError(f"size must be positive, got {size}")
    images = jnp.asarray(images)
    _, height, width, _ = images.shape
    rows = jnp.arange(height)[None, :] - (jnp.asarray(cy) - size_y // 2)[:, None]  # (B, H): row in the square
    cols = jnp.arange(width)[None, :] - (jnp.asarray(cx) - size_x // 2)[:, None]
    inside = ((rows >= 0) & (rows < size_y))[:, :, None, None] & ((cols >= 0) & (cols < size_x))[:, None, :, None]
    if fill is None:
        return images * (~inside).astype(images.dtype)
    return jnp.where(inside, jnp.asarray(fill, images.dtype), images)


def cutout(
    images: jax.typing.ArrayLike,
    key: jax.Array,
    *,
    size: int | tuple[int, int],
    fill: float | None = 0.0,
    centres: str = "pixels",
) -> jax.Array:
    """Cutout (DeVries & Taylor, 2017): one ``size`` x ``size`` square per image set to ``fill``,
    centred uniformly on the image and clipped at its border.

    The default fill 0 is mid-grey for [-1, 1] floats, i.e. roughly the data mean, as in the
    original (which cuts out after normalisation). DiffAugment's cutout is this op with
    ``size=(round(H / 2), round(W / 2)), fill=None, centres='balanced'``.

    Example::

      x = to_float(uint8_batch)                       # (B, 32, 32, 3)
      y = cutout(x, key, size=16)                     # one 16 x 16 grey square per image

    Args:
      images: (B, H, W, C).
      key: PRNG key.
      size: side of the square, or ``(rows, cols)``.
      fill: value written into the square; None: see :func:`cutout_square`.
      centres: how centres are drawn; see :func:`cutout_centres`.

    Returns:
      (B, H, W, C), same dtype.
    """
    if min(_pair(size)) < 1:
        raise ValueError(f"size must be positive, got {size}")
    images = jnp.asarray(images)
    batch, height, width, _ = images.shape
    cy, cx = cutout_centres(key, batch, height=height, width=width, size=size, centres=centres)
    return cutout_square(images, cy, cx, size=size, fill=fill)


def stream_keys(key: jax.Array) -> tuple[jax.Array, jax.Array]:
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
    k_crop, k_cut = jax.random.split(jax.random.fold_in(stream_keys(key)[1], step))
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
        stream_keys(key)[0], step, batch_size=batch_size, num_examples=images.shape[0]
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


# ---- choosing the pipeline -------------------------------------------------


def _device_memory_bytes(device: jax.Device) -> int:
    try:
        stats = device.memory_stats()
    except Exception:  # unsupported on some backends.
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

