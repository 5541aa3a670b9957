"""DiffAugment: differentiable augmentations of D's inputs, for GAN training on little data.

Zhao, Liu, Lin, Zhu, Han, "Differentiable Augmentation for Data-Efficient GAN Training",
NeurIPS 2020 (arXiv:2006.10738). The same random augmentation family ``T`` is applied to every
image D sees, real and generated, in both the D and the G update: D learns on ``D(T(x))`` and
``D(T(G(z)))``, G on ``D(T(G(z)))``. Because ``T`` is differentiable, G's gradient flows through
it; augmenting only the reals would teach G to produce augmented images.

Three policies, each with the paper's ranges for images in [-1, 1], drawn independently per image:

- ``color``: brightness ``x + b``, ``b ~ U(-0.5, 0.5)``; saturation: the deviation from the
  pixel's channel mean scaled by ``U(0, 2)``; contrast: the deviation from the image's mean
  scaled by ``U(0.5, 1.5)`` (in this order).
- ``translation``: an integer shift in ``[-r, r]`` per axis, ``r = round(size / 8)``, zero fill.
- ``cutout``: one ``round(H / 2) x round(W / 2)`` square set to zero, centred anywhere on the
  image (it may extend past the border, so near-border squares are clipped): the data
  pipeline's cutout (``sympad.train.data.cutout``) with the paper's centres and mask.

Example::

  policy = parse_policy("color,translation,cutout")
  key_real, key_fake = jax.random.split(key)
  real_logits = D(diff_augment(real, key_real, policy=policy))
  fake_logits = D(diff_augment(G(z), key_fake, policy=policy))
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from sympad.train.data.pipeline import cutout_centres, cutout_square

__all__ = ["POLICIES", "diff_augment", "parse_policy"]

#: The policies, in the order they are applied (the paper's "color,translation,cutout").
POLICIES: tuple[str, ...] = ("color", "translation", "cutout")

#: Largest shift as a fraction of the image side (the paper's 1/8).
TRANSLATION_RATIO = 0.125
#: Cutout side as a fraction of the image side (the paper's 1/2).
CUTOUT_RATIO = 0.5


def parse_policy(text: str | Sequence[str]) -> tuple[str, ...]:
    """The policies named in ``text``, without duplicates, in the order of ``POLICIES``.

    Args:
      text: comma- or '+'-separated names (``'color,translation'``, ``'color+cutout'``; ``''``
        for none), or a sequence of names. Whitespace around names is ignored.

    Returns:
      A tuple, a subset of ``POLICIES`` (hashable: usable as a static argument of ``jit``).

    Raises:
      ValueError: a name that is not one of ``POLICIES``.
      TypeError: ``text`` is neither a string nor a sequence of strings.
    """
    if isinstance(text, str):
        names = text.replace("+", ",").split(",")
    elif isinstance(text, Sequence) and all(isinstance(name, str) for name in text):
        names = list(text)
    else:
        raise TypeError(f"DiffAugment policy must be a string or a sequence of strings, got {text!r}")
    names = [name.strip() for name in names]
    # A trailing separator ('color,') is a typo worth forgiving, not a policy.
    names = [name for name in names if name]
    unknown = [name for name in names if name not in POLICIES]
    if unknown:
        raise ValueError(
            f"unknown DiffAugment policy {unknown[0]!r} in {text!r}: allowed policies are "
            f"{', '.join(repr(p) for p in POLICIES)} (comma- or '+'-separated; '' for none)"
        )
    return tuple(p for p in POLICIES if p in names)


# ----------------------------------------------------------------------------------------------
# Each policy is a parameter draw (key -> per-image parameters) and a deterministic function of
# the images and those parameters, so tests can check the function against a reference given the
# same parameters.


def _color_params(key: jax.Array, batch: int) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Per-image (brightness, saturation, contrast), each (B,) float32.

    Ranges U(-0.5, 0.5), U(0, 2), U(0.5, 1.5): the paper's, for images in [-1, 1].
    """
    k_brightness, k_saturation, k_contrast = jax.random.split(key, 3)
    brightness = jax.random.uniform(k_brightness, (batch,), minval=-0.5, maxval=0.5)
    saturation = jax.random.uniform(k_saturation, (batch,), minval=0.0, maxval=2.0)
    contrast = jax.random.uniform(k_contrast, (batch,), minval=0.5, maxval=1.5)
    return brightness, saturation, contrast


def _color(images: jax.Array, brightness: jax.Array, saturation: jax.Array, contrast: jax.Array) -> jax.Array:
    """Brightness, then saturation, then contrast: images (B, H, W, C), params (B,) -> (B, H, W, C)."""
    dtype = images.dtype
    per_image = lambda p: p.astype(dtype)[:, None, None, None]
    x = images + per_image(brightness)
    pixel_mean = jnp.mean(x, axis=-1, keepdims=True)
    x = (x - pixel_mean) * per_image(saturation) + pixel_mean
    image_mean = jnp.mean(x, axis=(1, 2, 3), keepdims=True)
    return (x - image_mean) * per_image(contrast) + image_mean


def _max_shift(size: int, ratio: float = TRANSLATION_RATIO) -> int:
    # Round half up, as the paper's code does (32 px -> 4, 28 px -> 4, 128 px -> 16).
    return int(size * ratio + 0.5)


def _translation_params(key: jax.Array, batch: int, height: int, width: int) -> tuple[jax.Array, jax.Array]:
    """Per-image integer shifts (dy, dx), each (B,) int32, uniform in [-r, r] with r = round(side / 8)."""
    k_y, k_x = jax.random.split(key)
    r_y, r_x = _max_shift(height), _max_shift(width)
    dy = jax.random.randint(k_y, (batch,), -r_y, r_y + 1, dtype=jnp.int32)
    dx = jax.random.randint(k_x, (batch,), -r_x, r_x + 1, dtype=jnp.int32)
    return dy, dx


def _translate(images: jax.Array, dy: jax.Array, dx: jax.Array) -> jax.Array:
    """Moves image b's content down by dy[b] and right by dx[b] pixels, zero fill.

    ``out[b, i, j] = images[b, i - dy[b], j - dx[b]]`` where that index is inside the image, else 0.
    A gather (its gradient a scatter-add), so the gradient reaches every pixel that stays visible.

    Args:
      images: (B, H, W, C).
      dy, dx: (B,) integer shifts.

    Returns:
      (B, H, W, C), the dtype of ``images``.
    """
    _, height, width, _ = images.shape
    rows = jnp.arange(height)[None, :] - dy[:, None]  # (B, H): source row of each output row
    cols = jnp.arange(width)[None, :] - dx[:, None]  # (B, W)
    # Clipped indices keep the gather in bounds; the mask then zeroes what came from outside.
    gathered = jax.vmap(lambda image, r, c: image[r][:, c])(
        images, jnp.clip(rows, 0, height - 1), jnp.clip(cols, 0, width - 1)
    )
    inside = ((rows >= 0) & (rows < height))[:, :, None, None] & ((cols >= 0) & (cols < width))[:, None, :, None]
    return jnp.where(inside, gathered, jnp.zeros((), images.dtype))


def _cutout_size(size: int, ratio: float = CUTOUT_RATIO) -> int:
    return int(size * ratio + 0.5)


def _cutout_params(key: jax.Array, batch: int, height: int, width: int) -> tuple[jax.Array, jax.Array]:
    """Per-image square centres (cy, cx), each (B,) int32: the data pipeline's ``cutout_centres``.

    The square covers rows ``[cy - s // 2, cy - s // 2 + s)`` (s its side). Centres range over
    ``[0, H - 1]`` for an odd side and ``[0, H]`` for an even one, as in the paper's code: with an
    even side this makes the square as likely to stick out at the top as at the bottom.
    """
    size = (_cutout_size(height), _cutout_size(width))
    return cutout_centres(key, batch, height=height, width=width, size=size, centres="balanced")


def _cutout(images: jax.Array, cy: jax.Array, cx: jax.Array) -> jax.Array:
    """Zeroes one round(H/2) x round(W/2) square per image, centred at (cy[b], cx[b]), clipped to the image.

    The data pipeline's ``cutout_square`` with a multiplicative mask (``fill=None``), as in the
    paper: the gradient is the mask, zero inside the square.

    Args:
      images: (B, H, W, C).
      cy, cx: (B,) integer centres (see ``_cutout_params``).

    Returns:
      (B, H, W, C), the dtype of ``images``.
    """
    _, height, width, _ = images.shape
    return cutout_square(images, cy, cx, size=(_cutout_size(height), _cutout_size(width)), fill=None)


def diff_augment(images: ArrayLike, key: jax.Array, *, policy: Sequence[str]) -> jax.Array:
    """Applies the policies in ``POLICIES`` order, with random parameters drawn per image.

    Pure and traceable (``jit``, ``grad``, ``vmap``); differentiable with respect to ``images``.
    ``key`` is split into one key per entry of ``POLICIES`` and each policy uses the key of its
    position there, so a key gives the same color parameters whether or not translation is on.
    Use independent keys for the real and the generated batch.

    Args:
      images: float (B, H, W, C), values in [-1, 1].
      key: a PRNG key.
      policy: names from ``POLICIES`` (a string is parsed by ``parse_policy``); must be static
        under ``jit`` (pass a tuple). Empty: ``images`` come back unchanged.

    Returns:
      (B, H, W, C), the dtype of ``images``.

    Raises:
      ValueError: an unknown policy name, or ``images`` not a float (B, H, W, C) array.
    """
    names = parse_policy(policy)
    images = jnp.asarray(images)
    if images.ndim != 4:
        raise ValueError(f"images must be (B, H, W, C), got shape {images.shape}")
    if not jnp.issubdtype(images.dtype, jnp.floating):
        raise ValueError(f"images must be floating point in [-1, 1], got dtype {images.dtype}")
    if not names:
        return images
    batch, height, width, _ = images.shape
    keys = dict(zip(POLICIES, jax.random.split(key, len(POLICIES))))
    if "color" in names:
        images = _color(images, *_color_params(keys["color"], batch))
    if "translation" in names:
        images = _translate(images, *_translation_params(keys["translation"], batch, height, width))
    if "cutout" in names:
        images = _cutout(images, *_cutout_params(keys["cutout"], batch, height, width))
    return images
