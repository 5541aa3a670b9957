"""GAN losses on discriminator logits: non-saturating (the paper's) and hinge.

All functions take logits of shape (B,) and return scalar means over the batch.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

__all__ = ["LOSSES", "discriminator_loss", "generator_loss"]

#: 'ns': non-saturating (Goodfellow et al. 2014), the paper's; 'hinge': Lim & Ye 2017 / Miyato et al. 2018.
LOSSES: tuple[str, ...] = ("ns", "hinge")


def _check(loss: str) -> None:
    if loss not in LOSSES:
        raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")


def discriminator_loss(real_logits: ArrayLike, fake_logits: ArrayLike, *, loss: str = "ns") -> jax.Array:
    """Discriminator loss.

    'ns': ``mean(softplus(-real)) + mean(softplus(fake))`` (= cross entropy with
    labels 1 for real, 0 for fake); 'hinge': ``mean(relu(1 - real)) + mean(relu(1 + fake))``.

    Args:
      real_logits: D's logits on real images, (B,).
      fake_logits: D's logits on generated images, (B',).
      loss: 'ns' or 'hinge'.
    """
    _check(loss)
    real_logits, fake_logits = jnp.asarray(real_logits), jnp.asarray(fake_logits)
    if loss == "ns":
        return jnp.mean(jax.nn.softplus(-real_logits)) + jnp.mean(jax.nn.softplus(fake_logits))
    return jnp.mean(jax.nn.relu(1.0 - real_logits)) + jnp.mean(jax.nn.relu(1.0 + fake_logits))


def generator_loss(fake_logits: ArrayLike, *, loss: str = "ns") -> jax.Array:
    """Generator loss.

    'ns': ``mean(softplus(-fake))`` (= -log D(G(z)), the non-saturating form);
    'hinge': ``-mean(fake)``.

    Args:
      fake_logits: D's logits on generated images, (B,).
      loss: 'ns' or 'hinge'.
    """
    _check(loss)
    fake_logits = jnp.asarray(fake_logits)
    if loss == "ns":
        return jnp.mean(jax.nn.softplus(-fake_logits))
    return -jnp.mean(fake_logits)
