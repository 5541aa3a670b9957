"""ResNet generators and discriminators of the paper's GAN experiments (section 4.4).

Two families, both following google/compare_gan (Kurach et al., 2018), which the
paper follows:

* SNGAN ResNet for 32x32 (compare_gan ``resnet_cifar``, Miyato et al. 2018):
  G: z (128) -> linear 4*4*256 -> 3 up-blocks of 256 -> [BN] ReLU -> conv -> 3 -> tanh;
  D: 4 blocks of 128 (the first two downsample) -> ReLU -> spatial mean -> linear -> 1.
* ResNet19 for 128x128 (compare_gan ``resnet5``): G: linear 4*4*512 -> 5 up-blocks
  512, 512, 256, 256, 128, 64; D: 6 down-blocks 64, 128, 256, 256, 512, 512.

Only the generator's spatial convs change kind (every one of them, shortcut and
output conv included, through :func:`sympad.linen.conv`); its widths scale by
``3 / k`` for even ``k`` (1.5 for C2/C2sp, 0.75 for C4/C4sp) so that its
parameter count stays close to C3's. The discriminator is always C3 with
spectral normalization (one power iteration; ``u`` and ``sigma`` live in the
``batch_stats`` collection and change only when ``update_stats=True``).

Residual shortcuts are k x k convolutions as in compare_gan (not the 1x1 of
SNGAN's own code): that is what gives the paper's G ~6M / D ~1.5M (1x1
shortcuts give G ~4.3M, D ~1.1M).

Class-conditional models (``num_classes > 0``; with 0 both models are exactly
the unconditional ones, same parameters and outputs):

* G: every BatchNorm becomes a conditional BatchNorm (de Vries et al. 2017,
  Dumoulin et al. 2017): BN without its own scale and bias, then
  ``(1 + gamma_y) * x_hat + beta_y``. ``class_embedding='per_class'`` reads
  gamma and beta from per-layer class tables (SNGAN, Miyato & Koyama 2018);
  ``'shared'`` embeds the class once (``shared_embedding``) and projects it per
  layer with linear maps (BigGAN, Brock et al. 2019). Both start at gain 1,
  bias 0, so a fresh conditional G equals the unconditional BN G.
* D: projection discriminator (Miyato & Koyama 2018): the logit gains
  ``<sn(embed)(y), phi(x)>``, the inner product of a spectrally normalized class
  embedding with the pooled features.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

import sympad.linen
from sympad.kinds import parse_kind

__all__ = [
    "NORMS",
    "UPSAMPLES",
    "INITS",
    "CLASS_EMBEDDINGS",
    "ConditionalBatchNorm",
    "Generator",
    "Discriminator",
    "SNGANGenerator",
    "SNGANDiscriminator",
    "ResNet19Generator",
    "ResNet19Discriminator",
    "ARCHS",
    "Arch",
    "default_width_multiplier",
    "scaled_width",
    "check_labels",
    "count_params",
    "upsample",
]

NORMS: tuple[str, ...] = ("none", "batch")
UPSAMPLES: tuple[str, ...] = ("nearest", "unpool")
INITS: tuple[str, ...] = ("sngan", "normal")
CLASS_EMBEDDINGS: tuple[str, ...] = ("per_class", "shared")

# momentum 0.9: short runs (runlocal) still get usable running averages.
_BN = {"momentum": 0.9, "epsilon": 1e-5}

# The discriminator never changes kind (paper 4.4: "we remain all discriminators as the same").
DISCRIMINATOR_KIND = "C3"


def default_width_multiplier(kind: str) -> float:
    """Generator width factor that keeps ``k*k*width**2`` close to C3's ``9*width**2``.

    Even ``k``: ``3 / k`` (1.5 for C2/C2sp, 0.75 for C4/C4sp, as in the paper);
    odd ``k``: 1.0 (odd kernels are the baseline the paper compares against).

    Raises:
      ValueError: if ``kind`` is not a kernel kind.
    """
    size = parse_kind(kind).size
    return 1.0 if size % 2 else 3.0 / size


def scaled_width(channels: int, multiplier: float) -> int:
    """``round(channels * multiplier)``, at least 1."""
    if multiplier <= 0:
        raise ValueError(f"width multiplier must be positive, got {multiplier}")
    return max(1, int(round(channels * multiplier)))


def count_params(params: Any) -> int:
    """Number of scalars in a parameter pytree (arrays or ShapeDtypeStructs)."""
    return int(sum(math.prod(leaf.shape) for leaf in jax.tree_util.tree_leaves(params)))


def upsample(x: jax.Array, *, method: str = "nearest") -> jax.Array:
    """Doubles the spatial size of ``x`` (B, H, W, C) -> (B, 2H, 2W, C).

    ``'nearest'`` repeats each pixel (SNGAN, the default); ``'unpool'`` puts each
    pixel top-left of a 2x2 block of zeros (compare_gan's ``unpool``).
    """
    if method == "nearest":
        return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
    if method == "unpool":
        b, h, w, c = x.shape
        out = jnp.zeros((b, h, 2, w, 2, c), x.dtype).at[:, :, 0, :, 0, :].set(x)
        return out.reshape(b, 2 * h, 2 * w, c)
    raise ValueError(f"upsample method must be one of {UPSAMPLES}, got {method!r}")


def _initializers(init: str) -> tuple[nn.initializers.Initializer, nn.initializers.Initializer]:
    """(residual-branch init, shortcut/linear/output init).

    'sngan': Glorot uniform with gain sqrt(2) in the residual branch and gain 1
    elsewhere (Miyato's chainer code, Mimicry); 'normal': N(0, 0.02) everywhere
    (compare_gan's default).
    """
    if init == "sngan":
        return (nn.initializers.variance_scaling(2.0, "fan_avg", "uniform"),
                nn.initializers.variance_scaling(1.0, "fan_avg", "uniform"))
    if init == "normal":
        return nn.initializers.normal(0.02), nn.initializers.normal(0.02)
    raise ValueError(f"init must be one of {INITS}, got {init!r}")


class _Norm(nn.Module):
    """Batch norm in training/eval mode, or the identity for ``kind='none'``."""

    kind: str

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        if self.kind == "none":
            return x
        if self.kind == "batch":
            return nn.BatchNorm(use_running_average=not train, **_BN)(x)
        raise ValueError(f"norm must be one of {NORMS}, got {self.kind!r}")


class ConditionalBatchNorm(nn.Module):
    """Class-conditional batch norm: ``(1 + gamma_y) * BN(x) + beta_y``.

    The BN has no scale or bias of its own (same momentum and epsilon as the
    unconditional one); gamma and beta come from the class:

    * ``'per_class'``: ``condition`` is the labels (B,) int; gamma and beta are
      rows of two (num_classes, C) tables (``gamma``, ``beta``).
    * ``'shared'``: ``condition`` is the generator's shared class embedding
      (B, shared_dim); gamma and beta are its linear projections (``gamma``,
      ``beta``: Dense(C) with bias).

    Tables and projections start at zero, so the layer starts as a plain BN
    with scale 1 and bias 0 for every class (the ``1 +`` keeps that the
    identity gain rather than a dead layer). With zero projections the shared
    embedding gets no gradient in the first step; the projections do, and the
    embedding follows from the second step on.

    Example::

      >>> norm = ConditionalBatchNorm(num_classes=10)
      >>> x, y = jnp.ones((4, 8, 8, 16)), jnp.arange(4)
      >>> variables = norm.init(jax.random.key(0), x, y, train=False)
      >>> norm.apply(variables, x, y, train=False).shape
      (4, 8, 8, 16)

    Attributes:
      num_classes: number of classes (rows of the per-class tables).
      class_embedding: 'per_class' or 'shared' (:data:`CLASS_EMBEDDINGS`).

    Call: ``x`` (B, ..., C), ``condition`` as above, ``train`` selects batch
    statistics -> (B, ..., C).
    """

    num_classes: int
    class_embedding: str = "per_class"

    @nn.compact
    def __call__(self, x: jax.Array, condition: jax.Array, *, train: bool) -> jax.Array:
        features = x.shape[-1]
        x_hat = nn.BatchNorm(use_running_average=not train, use_scale=False, use_bias=False, name="bn",
                             **_BN)(x)
        if self.class_embedding == "per_class":
            table = functools.partial(nn.Embed, self.num_classes, features, embedding_init=nn.initializers.zeros)
            gamma, beta = table(name="gamma")(condition), table(name="beta")(condition)
        elif self.class_embedding == "shared":
            project = functools.partial(nn.Dense, features, kernel_init=nn.initializers.zeros)
            gamma, beta = project(name="gamma")(condition), project(name="beta")(condition)
        else:
            raise ValueError(f"class_embedding must be one of {CLASS_EMBEDDINGS}, got {self.class_embedding!r}")
        # (B, C) -> (B, 1, ..., 1, C): one gain and bias per sample and channel.
        shape = (x.shape[0],) + (1,) * (x.ndim - 2) + (features,)
        return (1 + gamma.reshape(shape)) * x_hat + beta.reshape(shape)


def _normalize(norm: str, num_classes: int, class_embedding: str, x: jax.Array, *,
               condition: jax.Array | None, train: bool, name: str) -> jax.Array:
    """The generator's norm layer ``name``: conditional BN for a conditional G, else :class:`_Norm`."""
    if num_classes:
        return ConditionalBatchNorm(num_classes, class_embedding, name=name)(x, condition, train=train)
    return _Norm(norm, name=name)(x, train=train)


def check_labels(labels: jax.typing.ArrayLike | None, *, num_classes: int, batch: int,
                 model: str) -> jax.Array | None:
    """``labels`` as an array; ValueError unless they fit a model with ``num_classes`` classes.

    Values are checked only when concrete: under ``jit`` an out-of-range label
    reads past the class table, which ``jnp.take`` fills with NaN.
    """
    if num_classes < 0:
        raise ValueError(f"num_classes must be >= 0, got {num_classes}")
    if num_classes == 0:
        if labels is not None:
            raise ValueError(f"labels given to an unconditional {model} (num_classes=0); pass labels=None")
        return None
    if labels is None:
        raise ValueError(f"a class-conditional {model} (num_classes={num_classes}) needs labels (batch,) int32")
    if not isinstance(labels, jax.core.Tracer):
        values = np.asarray(labels)
        if values.shape == (batch,) and np.issubdtype(values.dtype, np.integer) and values.size and (
                values.min() < 0 or values.max() >= num_classes):
            raise ValueError(f"labels must be in [0, {num_classes}), got values in [{values.min()}, {values.max()}]")
    labels = jnp.asarray(labels)
    if labels.shape != (batch,) or not jnp.issubdtype(labels.dtype, jnp.integer):
        raise ValueError(f"labels must be integers of shape ({batch},), got {labels.dtype} {labels.shape}")
    return labels


class GeneratorBlock(nn.Module):
    """Pre-activation up-block: ``[BN] ReLU up conv [BN] ReLU conv`` + ``conv(up(x))``.

    Input (B, H, W, C_in) -> output (B, 2H, 2W, features). With
    ``num_classes > 0`` both BNs are :class:`ConditionalBatchNorm` and
    ``condition`` (labels or the shared class embedding) is required.
    """

    features: int
    kind: str
    norm: str = "none"
    upsample: str = "nearest"
    weight_init: str = "sngan"
    num_classes: int = 0
    class_embedding: str = "per_class"

    @nn.compact
    def __call__(self, x: jax.Array, condition: jax.Array | None = None, *, train: bool) -> jax.Array:
        branch_init, skip_init = _initializers(self.weight_init)
        conv = functools.partial(sympad.linen.conv, self.kind, self.features)
        norm = functools.partial(_normalize, self.norm, self.num_classes, self.class_embedding,
                                 condition=condition, train=train)
        shortcut = conv(kernel_init=skip_init, name="shortcut")(upsample(x, method=self.upsample))
        h = nn.relu(norm(x, name="norm1"))
        h = conv(kernel_init=branch_init, name="conv1")(upsample(h, method=self.upsample))
        h = nn.relu(norm(h, name="norm2"))
        h = conv(kernel_init=branch_init, name="conv2")(h)
        return h + shortcut


class Generator(nn.Module):
    """ResNet generator: z -> linear -> up-blocks -> [BN] ReLU -> conv -> tanh.

    Attributes:
      channels: C3 widths; ``channels[0]`` is the ``bottom_size``-square seed,
        ``channels[i + 1]`` the output of up-block ``i`` (so ``len(channels) - 1``
        blocks and output size ``bottom_size * 2**(len(channels) - 1)``).
      kernel: kind of every spatial conv ('C3', 'C2', 'C2sp', 'C4', 'C4sp', ...).
      width_multiplier: factor on every width; None derives it from ``kernel``
        (:func:`default_width_multiplier`).
      norm: 'none' (the paper) or 'batch' (compare_gan).
      upsample: 'nearest' (SNGAN, default) or 'unpool' (compare_gan).
      bottom_size: spatial size of the seed.
      out_channels: image channels.
      weight_init: 'sngan' or 'normal' (see ``_initializers``).
      num_classes: 0 (unconditional) or the number of classes; > 0 needs
        ``norm='batch'`` (every BN becomes a :class:`ConditionalBatchNorm`).
      class_embedding: 'per_class' (a class table per BN) or 'shared' (one
        ``shared_embedding`` projected per BN, BigGAN); see :data:`CLASS_EMBEDDINGS`.
      shared_dim: size of the shared class embedding ('shared' only).

    The formulation of the C2sp/C4sp op is not a model field: wrap tracing in
    ``sympad.use_implementation`` (the training loop does, from ``config.conv_implementation``).

    Call: ``z`` (B, z_dim), ``labels`` (B,) int in [0, num_classes) (required
    iff ``num_classes > 0``) -> images (B, S, S, out_channels) in (-1, 1);
    ``train`` selects batch statistics for BN (and makes its running averages
    mutable).

    Example::

      >>> g = Generator(channels=(16, 8), norm="batch", num_classes=10)
      >>> z, y = jnp.zeros((2, 128)), jnp.array([3, 7])
      >>> variables = g.init(jax.random.key(0), z, y)
      >>> g.apply(variables, z, y).shape
      (2, 8, 8, 3)
    """

    channels: Sequence[int]
    kernel: str = "C3"
    width_multiplier: float | None = None
    norm: str = "none"
    upsample: str = "nearest"
    bottom_size: int = 4
    out_channels: int = 3
    weight_init: str = "sngan"
    num_classes: int = 0
    class_embedding: str = "per_class"
    shared_dim: int = 128

    @property
    def widths(self) -> tuple[int, ...]:
        multiplier = self.width_multiplier
        if multiplier is None or multiplier <= 0:
            multiplier = default_width_multiplier(self.kernel)
        return tuple(scaled_width(c, multiplier) for c in self.channels)

    @nn.compact
    def __call__(self, z: jax.Array, labels: jax.Array | None = None, *, train: bool = False) -> jax.Array:
        if z.ndim != 2:
            raise ValueError(f"z must have shape (batch, z_dim), got {z.shape}")
        if self.norm not in NORMS:
            raise ValueError(f"norm must be one of {NORMS}, got {self.norm!r}")
        if self.class_embedding not in CLASS_EMBEDDINGS:
            raise ValueError(f"class_embedding must be one of {CLASS_EMBEDDINGS}, got {self.class_embedding!r}")
        if self.num_classes > 0 and self.norm != "batch":
            raise ValueError(f"class-conditional G needs norm='batch' (conditional BatchNorm), got norm={self.norm!r}")
        labels = check_labels(labels, num_classes=self.num_classes, batch=z.shape[0], model="generator")
        condition = labels
        if self.num_classes and self.class_embedding == "shared":
            if self.shared_dim < 1:
                raise ValueError(f"shared_dim must be >= 1, got {self.shared_dim}")
            # Computed once and fed to every conditional BN (BigGAN's shared embedding).
            condition = nn.Embed(self.num_classes, self.shared_dim, name="shared_embedding")(labels)
        widths = self.widths
        _, skip_init = _initializers(self.weight_init)
        h = nn.Dense(self.bottom_size**2 * widths[0], kernel_init=skip_init, name="dense")(z)
        h = h.reshape(z.shape[0], self.bottom_size, self.bottom_size, widths[0])
        for i, features in enumerate(widths[1:]):
            h = GeneratorBlock(features, self.kernel, self.norm, self.upsample, self.weight_init,
                               self.num_classes, self.class_embedding,
                               name=f"block{i + 1}")(h, condition, train=train)
        h = nn.relu(_normalize(self.norm, self.num_classes, self.class_embedding, h,
                               condition=condition, train=train, name="final_norm"))
        h = sympad.linen.conv(self.kernel, self.out_channels, kernel_init=skip_init, name="final_conv")(h)
        return jnp.tanh(h)


class _SNConv(nn.Module):
    """C3 conv with spectral normalization (one power iteration)."""

    features: int
    kernel_init: nn.initializers.Initializer

    @nn.compact
    def __call__(self, x: jax.Array, *, update_stats: bool) -> jax.Array:
        layer = sympad.linen.conv(DISCRIMINATOR_KIND, self.features, kernel_init=self.kernel_init, name="conv")
        return nn.SpectralNorm(layer, n_steps=1, name="sn")(x, update_stats=update_stats)


class DiscriminatorBlock(nn.Module):
    """``[ReLU] conv ReLU conv [pool]`` + ``[pool](conv(x))``, convs C3 with SN.

    The first block of a discriminator gets ``preactivate=False``: images are
    in [-1, 1] here (compare_gan feeds [0, 1], where its ReLU is the identity),
    so a ReLU on the image would drop half of it (SNGAN's "optimized block"
    also has none). Downsampling is 2x2 average pooling after the convs.
    """

    features: int
    downsample: bool
    preactivate: bool = True
    weight_init: str = "sngan"

    @nn.compact
    def __call__(self, x: jax.Array, *, update_stats: bool) -> jax.Array:
        branch_init, skip_init = _initializers(self.weight_init)
        pool = (lambda t: nn.avg_pool(t, (2, 2), strides=(2, 2))) if self.downsample else (lambda t: t)
        shortcut = pool(_SNConv(self.features, skip_init, name="shortcut")(x, update_stats=update_stats))
        h = nn.relu(x) if self.preactivate else x
        h = _SNConv(self.features, branch_init, name="conv1")(h, update_stats=update_stats)
        h = _SNConv(self.features, branch_init, name="conv2")(nn.relu(h), update_stats=update_stats)
        return pool(h) + shortcut


class Discriminator(nn.Module):
    """ResNet discriminator with spectral norm: blocks -> ReLU -> spatial mean -> linear.

    Attributes:
      channels: width of each block.
      downsample: per block, whether it halves the spatial size.
      weight_init: 'sngan' or 'normal'.
      num_classes: 0 (unconditional) or the number of classes: a projection
        discriminator (Miyato & Koyama 2018) whose logit gains
        ``sum(sn_embed(labels) * features, -1)``, ``sn_embed`` a spectrally
        normalized (num_classes, channels[-1]) class embedding (``embed``,
        initialized like the output linear layer: Glorot uniform for 'sngan', as
        in SNGAN's and Mimicry's code).

    Call: images (B, H, W, 3) in [-1, 1], ``labels`` (B,) int in
    [0, num_classes) (required iff ``num_classes > 0``) -> logits (B,).
    ``update_stats=True`` (training steps only) advances the power iteration;
    it needs ``mutable=['batch_stats']``.

    Example::

      >>> d = Discriminator(channels=(8, 8), downsample=(True, False), num_classes=10)
      >>> x, y = jnp.zeros((2, 8, 8, 3)), jnp.array([3, 7])
      >>> variables = d.init(jax.random.key(0), x, y)
      >>> d.apply(variables, x, y).shape
      (2,)
    """

    channels: Sequence[int]
    downsample: Sequence[bool]
    weight_init: str = "sngan"
    num_classes: int = 0

    @nn.compact
    def __call__(self, x: jax.Array, labels: jax.Array | None = None, *, update_stats: bool = False) -> jax.Array:
        if len(self.channels) != len(self.downsample):
            raise ValueError(f"channels ({len(self.channels)}) and downsample ({len(self.downsample)}) "
                             "must have the same length")
        if x.ndim != 4:
            raise ValueError(f"images must have shape (batch, H, W, C), got {x.shape}")
        labels = check_labels(labels, num_classes=self.num_classes, batch=x.shape[0], model="discriminator")
        _, skip_init = _initializers(self.weight_init)
        h = x
        for i, (features, down) in enumerate(zip(self.channels, self.downsample)):
            h = DiscriminatorBlock(features, down, preactivate=i > 0, weight_init=self.weight_init,
                                   name=f"block{i + 1}")(h, update_stats=update_stats)
        h = jnp.mean(nn.relu(h), axis=(1, 2))
        dense = nn.Dense(1, kernel_init=skip_init, name="dense")
        logits = nn.SpectralNorm(dense, n_steps=1, name="sn_dense")(h, update_stats=update_stats)[:, 0]
        if not self.num_classes:
            return logits
        # Projection: SpectralNorm divides the whole (num_classes, F) table by its top singular value.
        embed = nn.Embed(self.num_classes, h.shape[-1], embedding_init=skip_init, name="embed")
        class_vectors = nn.SpectralNorm(embed, n_steps=1, name="sn_embed")(labels, update_stats=update_stats)
        return logits + jnp.sum(class_vectors * h, axis=-1)


# The paper's two architectures (C3 widths; the generator rescales them by kind).
SNGANGenerator = functools.partial(Generator, channels=(256, 256, 256, 256))
SNGANDiscriminator = functools.partial(Discriminator, channels=(128, 128, 128, 128),
                                       downsample=(True, True, False, False))
ResNet19Generator = functools.partial(Generator, channels=(512, 512, 256, 256, 128, 64))
ResNet19Discriminator = functools.partial(Discriminator, channels=(64, 128, 256, 256, 512, 512),
                                          downsample=(True,) * 6)

class Arch(NamedTuple):
    """One of the paper's G/D pairs (:data:`ARCHS`)."""

    generator: Callable[..., Generator]  #: Generator factory (keyword overrides: kernel, channels, ...)
    discriminator: Callable[..., Discriminator]
    image_size: int  #: side of the generated images
    paper_params: tuple[float, float]  #: the paper's approximate (G, D) parameter counts


#: config.arch -> its G/D pair.
ARCHS: dict[str, Arch] = {
    "sngan": Arch(SNGANGenerator, SNGANDiscriminator, 32, (6e6, 1.5e6)),
    "resnet19": Arch(ResNet19Generator, ResNet19Discriminator, 128, (14e6, 14e6)),
}
