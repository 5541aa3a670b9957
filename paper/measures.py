"""The paper's section-3 analyses: information erosion (Q), feature-map shift, receptive fields.

Library functions; the command line is ``python -m paper.analysis <command>``
(:mod:`paper.analysis`).

A network is given to every function as ``apply_fn(params, x) -> maps``:
``x`` is a float batch ``(N, H, W, C)`` and ``maps`` a sequence of ``L``
feature maps ``(N, h_l, w_l, c_l)`` in the order the network computes them.
:class:`PlainStack` returns its conv outputs that way; :func:`module_outputs`
gives the same view of any flax.linen model.

Geometry conventions (what the tests pin down):

* A map of ``h`` rows computed from an input of ``H`` rows has stride
  ``s = H / h``; its pixel ``i`` stands for input position ``s * i + (s - 1) / 2``
  (the centre of the ``s x s`` input block it summarizes, as for average
  pooling). Offsets are in input pixels, per axis ``(dy, dx)``; positive means
  down/right.
* XLA's ``'SAME'`` pads an even kernel's extra zero bottom/right, so a C2 layer
  computes ``y[p] = w0 x[p] + w1 x[p + 1]``: output ``p`` looks half a pixel
  down/right, i.e. image content moves half a pixel up/left (toward the top-left
  corner, as in the paper's Fig. 2). After ``n`` such layers the response to an
  impulse (:func:`impulse_response`) is centred ``n / 2`` px up/left of it, and
  the receptive field of a unit (:func:`receptive_field`) ``n / 2`` px down/right
  of the unit. Symmetric padding (C2sp) keeps both centred.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from classify.models.blocks import DOWNSAMPLE_MODES, resolve_downsample
from sympad.linen import conv

__all__ = [
    "DOWNSAMPLE_MODES",
    "PlainStack",
    "center_of_mass",
    "centroid",
    "extent",
    "feature_map_shift",
    "impulse_response",
    "init_key",
    "mean_maps",
    "module_outputs",
    "plain_resnet",
    "q_curves",
    "q_values",
    "receptive_field",
    "stage_ends",
    "unit_position",
]

Downsample = Literal["stride", "pool", "auto"]
ApplyFn = Callable[[Any, jax.Array], Sequence[jax.Array]]
Transform = Literal["abs", "relu"]


# ----------------------------------------------------------------------------
# Models.
# ----------------------------------------------------------------------------


class PlainStack(nn.Module):
    """A stack of convolutions, ReLU between them, no shortcuts and no normalization.

    With the defaults this is the paper's Fig. 3 network: ResNet-56 with the
    identity connections and batch norm removed (stem conv plus 54 convs,
    16/32/64 channels, maps 32/16/8 for 32-px inputs, downsampled after
    layers 18 and 36), He (MSRA, fan-in, normal) initialization and no biases.
    Every conv goes through :func:`sympad.linen.conv`.

    Attributes:
      kind: kernel kind, e.g. ``'C2sp'``.
      stage_sizes: number of convs per stage; every stage after the first
        starts by halving the map.
      widths: output channels of the convs of each stage.
      downsample: ``'stride'`` (default): the first conv of a stage has
        stride 2, as in the CIFAR ResNet (output ``ceil(in / 2)``), so every
        kind downsamples the same way and only the kernel differs;
        ``'pool'``: 2x2 average pooling then a stride-1 conv, as the authors'
        C2sp code does its stride-2 blocks; ``'auto'``: ``'pool'`` for even
        kernels, ``'stride'`` for odd ones (the default of ``classify.models``).
      activation: ReLU between convs; False gives a linear stack.
      kernel_init: kernel initializer; default flax's ``he_normal``: variance
        ``2 / fan_in`` with ``fan_in = k * k * C_in`` (He et al., 2015; drawn
        from a normal truncated at 2 sigma and rescaled to that variance).
      use_bias: add a (zero-initialized) bias to every conv.

    Call: ``x (N, H, W, C)`` -> tuple of the ``sum(stage_sizes)`` conv outputs
    (before the ReLU), ``(N, h_l, w_l, widths[stage])``.
    """

    kind: str
    stage_sizes: Sequence[int] = (19, 18, 18)
    widths: Sequence[int] = (16, 32, 64)
    downsample: Downsample = "stride"
    activation: bool = True
    kernel_init: nn.initializers.Initializer = nn.initializers.he_normal()
    use_bias: bool = False

    @nn.compact
    def __call__(self, x: jax.Array) -> tuple[jax.Array, ...]:
        if len(self.stage_sizes) != len(self.widths):
            raise ValueError(
                f"stage_sizes {tuple(self.stage_sizes)} and widths {tuple(self.widths)} must have the same length"
            )
        mode = resolve_downsample(self.kind, self.downsample)  # the classification models' rule
        outputs = []
        for stage, (size, width) in enumerate(zip(self.stage_sizes, self.widths)):
            for i in range(size):
                strides = 1
                if stage > 0 and i == 0:
                    if mode == "stride":
                        strides = 2
                    else:
                        # 'SAME' keeps ceil(in / 2) like a stride-2 conv; even maps get no padding.
                        x = nn.avg_pool(x, (2, 2), strides=(2, 2), padding="SAME")
                y = conv(
                    self.kind,
                    width,
                    strides=strides,
                    use_bias=self.use_bias,
                    kernel_init=self.kernel_init,
                    name=f"conv{len(outputs)}",
                )(x)
                outputs.append(y)
                x = nn.relu(y) if self.activation else y
        return tuple(outputs)


def plain_resnet(
    kind: str,
    *,
    depth: int = 56,
    widths: Sequence[int] = (16, 32, 64),
    downsample: Downsample = "stride",
    activation: bool = True,
) -> PlainStack:
    """The CIFAR ResNet of ``depth = 6n + 2`` with shortcuts and batch norm removed.

    Layer 0 is the stem; layers ``1 .. 2n`` share its resolution, then each
    further stage has ``2n`` convs (for depth 56: downsampling after layers 18
    and 36, 55 conv outputs in all).

    Raises:
      ValueError: if ``depth`` is not ``6n + 2`` with ``n >= 1``.
    """
    if not isinstance(depth, (int, np.integer)) or depth < 8 or (depth - 2) % 6:
        raise ValueError(f"depth must be 6n + 2 with n >= 1 (8, 14, 20, ..., 56, ...), got {depth!r}")
    n = (depth - 2) // 6
    stages = len(widths)
    sizes = (2 * n + 1,) + (2 * n,) * (stages - 1)
    return PlainStack(kind, stage_sizes=sizes, widths=tuple(widths), downsample=downsample, activation=activation)


def module_outputs(
    model: nn.Module,
    *,
    select: Callable[[nn.Module, Any], bool] | None = None,
    method: str = "__call__",
    **call_kwargs: Any,
) -> ApplyFn:
    """Views any flax.linen model as ``apply_fn(variables, x) -> maps``.

    Records, in the order they finish, the outputs of the module calls that
    ``select`` accepts (default: every conv, i.e. ``nn.Conv`` and
    :class:`sympad.linen.SymPadConv` instances, and in general any module
    whose class name ends in ``'Conv'``).

    Args:
      model: the module; it is applied with ``model.apply(variables, x,
        **call_kwargs)`` (e.g. ``train=False``).
      select: ``(module, output) -> bool``; only 4-D array outputs are
        considered.
      method: method of ``model`` to apply.

    Returns:
      ``apply_fn(variables, x) -> tuple of (N, h, w, c) maps``; the model's
      own return value is discarded. Use inside or outside ``jax.jit``.
    """
    if select is None:
        select = lambda module, out: type(module).__name__.endswith("Conv")

    def apply_fn(variables: Any, x: jax.Array) -> tuple[jax.Array, ...]:
        recorded: list[jax.Array] = []

        def interceptor(next_fun, args, kwargs, context):
            out = next_fun(*args, **kwargs)
            if (
                context.method_name == "__call__"
                and isinstance(out, jax.Array)
                and out.ndim == 4
                and select(context.module, out)
            ):
                recorded.append(out)
            return out

        with nn.intercept_methods(interceptor):
            model.apply(variables, x, method=method, **call_kwargs)
        return tuple(recorded)

    return apply_fn


# ----------------------------------------------------------------------------
# Geometry of maps.
# ----------------------------------------------------------------------------


def _check_map(m: np.ndarray, name: str) -> np.ndarray:
    m = np.asarray(m, np.float64)
    if m.ndim < 2:
        raise ValueError(f"{name} must have shape (..., H, W), got {m.shape}")
    if np.any(m < 0):
        raise ValueError(f"{name} must be non-negative (a mass distribution such as |F| or relu(F))")
    return m


def center_of_mass(m: np.ndarray) -> np.ndarray:
    """Centre of mass of non-negative maps in pixel indices.

    Args:
      m: ``(..., H, W)`` non-negative.

    Returns:
      ``(..., 2)`` float64 ``(row, col)``; NaN where a map is all zero.
    """
    m = _check_map(m, "m")
    mass = m.sum(axis=(-2, -1))
    rows = np.arange(m.shape[-2], dtype=np.float64)
    cols = np.arange(m.shape[-1], dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        cy = np.einsum("...hw,h->...", m, rows) / mass
        cx = np.einsum("...hw,w->...", m, cols) / mass
    return np.stack([cy, cx], axis=-1)


def centroid(m: np.ndarray) -> np.ndarray:
    """Offset ``(dy, dx)`` of the centre of mass from the map centre, in map pixels.

    Args:
      m: ``(..., H, W)`` non-negative, e.g. a mean post-ReLU activation map.

    Returns:
      ``(..., 2)``; positive is down/right. The map centre is
      ``((H - 1) / 2, (W - 1) / 2)``.
    """
    m = np.asarray(m)
    centre = np.array([(m.shape[-2] - 1) / 2, (m.shape[-1] - 1) / 2])
    return center_of_mass(m) - centre


def extent(m: np.ndarray) -> np.ndarray:
    """RMS radius ``(sigma_y, sigma_x)`` of non-negative maps about their centre of mass.

    Args:
      m: ``(..., H, W)``.

    Returns:
      ``(..., 2)`` in map pixels (one all-ones 2x2 layer gives 0.5, ``n``
      layers ``sqrt(n) / 2``).
    """
    m = _check_map(m, "m")
    com = center_of_mass(m)
    mass = m.sum(axis=(-2, -1))
    out = []
    for axis, other in ((-2, -1), (-1, -2)):
        marginal = m.sum(axis=other)
        pos = np.arange(marginal.shape[-1], dtype=np.float64)
        k = 0 if axis == -2 else 1
        with np.errstate(invalid="ignore", divide="ignore"):
            var = np.einsum("...h,...h->...", marginal, (pos - com[..., k, None]) ** 2) / mass
        out.append(np.sqrt(var))
    return np.stack(out, axis=-1)


def unit_position(map_size: int, input_size: int, index: float) -> float:
    """Input coordinate of pixel ``index`` of a map of ``map_size`` computed from ``input_size``.

    ``s = input_size / map_size``; pixel ``i`` stands for ``s * i + (s - 1) / 2``.
    """
    if map_size < 1 or input_size < 1:
        raise ValueError(f"map_size and input_size must be positive, got {map_size}, {input_size}")
    s = input_size / map_size
    return s * index + (s - 1) / 2


def stage_ends(shapes: Sequence[Sequence[int]]) -> list[int]:
    """Indices of the last map of every run of equal spatial size.

    Args:
      shapes: map shapes ``(N, h, w, c)`` (or ``(h, w)``-ending tuples) in order.

    Returns:
      e.g. ``[18, 36, 54]`` for the plain ResNet-56: the maps just before each
      downsampling and the last one (the paper's Fig. 2 columns).
    """
    sizes = [tuple(s[-3:-1]) if len(s) >= 3 else tuple(s) for s in shapes]
    return [i for i in range(len(sizes)) if i == len(sizes) - 1 or sizes[i + 1] != sizes[i]]


def feature_map_shift(maps: Sequence[np.ndarray], *, input_size: tuple[int, int]) -> np.ndarray:
    """Centroid offsets of maps in input pixels.

    Args:
      maps: ``L`` non-negative maps ``(h_l, w_l)`` (e.g. from :func:`mean_maps`
        with ``transform='relu'``).
      input_size: ``(H, W)`` of the network input.

    Returns:
      ``(L, 2)`` offsets ``(dy, dx)`` from the map centre, scaled by the
      map's stride ``(H / h, W / w)``; positive is down/right.
    """
    out = []
    for m in maps:
        m = np.asarray(m)
        scale = np.array([input_size[0] / m.shape[-2], input_size[1] / m.shape[-1]])
        out.append(centroid(m) * scale)
    return np.stack(out) if out else np.zeros((0, 2))


# ----------------------------------------------------------------------------
# Statistics over a dataset.
# ----------------------------------------------------------------------------


def _batches(images: np.ndarray, batch_size: int):
    """Yields ``(batch, valid)``; the last batch is padded by repetition to keep one compiled shape."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    n = images.shape[0]
    if n == 0:
        raise ValueError("images must hold at least one image")
    batch_size = min(batch_size, n)
    for start in range(0, n, batch_size):
        batch = images[start : start + batch_size]
        valid = batch.shape[0]
        if valid < batch_size:
            idx = np.arange(batch_size) % valid
            batch = batch[idx]
        yield batch, valid


# apply_fn is static: jax caches one compilation per network object (all its inits reuse it).
@functools.partial(jax.jit, static_argnames=("apply_fn", "transform"))
def _per_image_maps(params: Any, x: jax.Array, *, apply_fn: ApplyFn, transform: Transform) -> list[jax.Array]:
    # Per-image maps (channel means) so a padded last batch can be trimmed on the host.
    fn = jnp.abs if transform == "abs" else jax.nn.relu
    return [jnp.mean(fn(m), axis=-1) for m in apply_fn(params, x)]


def mean_maps(
    apply_fn: ApplyFn,
    params: Any,
    images: np.ndarray,
    *,
    transform: Transform = "abs",
    batch_size: int = 250,
) -> list[np.ndarray]:
    """Per-layer maps averaged over images and channels.

    Args:
      apply_fn: ``(params, x (B, H, W, C)) -> L maps (B, h_l, w_l, c_l)``.
      params: its parameters.
      images: ``(N, H, W, C)`` float inputs, already scaled as the network expects.
      transform: ``'abs'`` for ``|F|`` (the paper's Q) or ``'relu'`` for
        post-ReLU activations.
      batch_size: images per jitted call.

    Returns:
      ``L`` float64 arrays ``(h_l, w_l)``: the mean over images and channels
      of ``transform(F_l)``.
    """
    if transform not in ("abs", "relu"):
        raise ValueError(f"transform must be 'abs' or 'relu', got {transform!r}")
    images = np.asarray(images)
    if images.ndim != 4:
        raise ValueError(f"images must have shape (N, H, W, C), got {images.shape}")
    totals = None
    for batch, valid in _batches(images, batch_size):
        maps = _per_image_maps(params, jnp.asarray(batch), apply_fn=apply_fn, transform=transform)
        out = [np.asarray(m[:valid], np.float64).sum(axis=0) for m in maps]
        totals = out if totals is None else [t + o for t, o in zip(totals, out)]
    return [t / images.shape[0] for t in totals]


def q_values(apply_fn: ApplyFn, params: Any, images: np.ndarray, *, batch_size: int = 250) -> np.ndarray:
    """The paper's Q (eq. 7) for every layer: mean ``|F|`` over images, positions and channels.

    Args:
      apply_fn: ``(params, x (B, H, W, C)) -> L maps``.
      params: its parameters.
      images: ``(N, H, W, C)`` float inputs.
      batch_size: images per jitted call.

    Returns:
      ``(L,)`` float64.
    """
    return np.array([m.mean() for m in mean_maps(apply_fn, params, images, transform="abs", batch_size=batch_size)])


def init_key(seed: int, index: int) -> jax.Array:
    """The key of initialization ``index``: ``fold_in(key(seed), index)``.

    It uses the ``'rbg'`` PRNG implementation: on a CPU, initializing a
    55-layer network with it compiles several times faster than with the
    default threefry, and the statistics of a random initialization are all
    the analyses need.
    """
    return jax.random.fold_in(jax.random.key(seed, impl="rbg"), index)


def q_curves(
    images: np.ndarray,
    *,
    kinds: Sequence[str] = ("C2", "C2sp", "C3", "C4", "C4sp"),
    num_inits: int = 10,
    seed: int = 0,
    model_fn: Callable[[str], nn.Module] = plain_resnet,
    batch_size: int = 250,
    with_maps: bool = False,
) -> dict[str, dict[str, np.ndarray]]:
    """Fig. 3: layerwise Q of untrained networks, for several kinds and initializations.

    Args:
      images: ``(N, H, W, C)`` float inputs.
      kinds: kernel kinds.
      num_inits: random initializations ``R`` per kind (keys
        :func:`init_key` ``(seed, r)``, the same for every kind).
      seed: base seed.
      model_fn: ``kind -> module`` whose call returns the conv outputs
        (default :func:`plain_resnet`, the paper's setting).
      batch_size: images per jitted call.
      with_maps: also return the mean ``|F|`` maps of every layer.

    Returns:
      ``{kind: {'q': (R, L) array, 'maps': list of L (h_l, w_l) means over
      the R inits (only with with_maps)}}``.
    """
    if num_inits < 1:
        raise ValueError(f"num_inits must be positive, got {num_inits}")
    images = np.asarray(images, np.float32)
    results = {}
    for kind in kinds:
        model = model_fn(kind)
        init = jax.jit(model.init)
        qs, map_sums = [], None
        for r in range(num_inits):
            params = init(init_key(seed, r), jnp.asarray(images[:1]))
            maps = mean_maps(model.apply, params, images, transform="abs", batch_size=batch_size)
            qs.append([m.mean() for m in maps])
            map_sums = maps if map_sums is None else [a + b for a, b in zip(map_sums, maps)]
        results[kind] = {"q": np.asarray(qs)}
        if with_maps:
            results[kind]["maps"] = [m / num_inits for m in map_sums]
    return results


# ----------------------------------------------------------------------------
# Impulse responses and receptive fields.
# ----------------------------------------------------------------------------


def _centre_index(size: int) -> int:
    return size // 2


@functools.partial(jax.jit, static_argnames=("apply_fn",))
def _respond(params: Any, x: jax.Array, tangent: jax.Array, *, apply_fn: ApplyFn) -> list[jax.Array]:
    _, out = jax.jvp(lambda x: apply_fn(params, x), (x,), (tangent,))
    return [jnp.mean(jnp.abs(t), axis=(0, -1)) for t in out]


def impulse_response(
    apply_fn: ApplyFn,
    params: Any,
    x: np.ndarray,
    *,
    position: tuple[int, int] | None = None,
) -> tuple[list[np.ndarray], np.ndarray]:
    """Where the content of one input pixel goes: the linearized response to an impulse.

    The network is linearized at ``x`` (``jax.jvp``) and fed a tangent that is
    1 at ``position`` in every input channel and 0 elsewhere; for a linear
    network and ``x = 0`` this is its response to a delta input.

    Args:
      apply_fn: ``(params, x (N, H, W, C)) -> L maps``.
      params: its parameters.
      x: ``(N, H, W, C)`` linearization points (the response is averaged over them).
      position: input pixel ``(row, col)``; default the centre ``(H // 2, W // 2)``.

    Returns:
      ``(maps, offsets)``: ``L`` maps ``(h_l, w_l)`` of ``|response|``
      averaged over the batch and channels, and ``(L, 2)`` offsets in input
      pixels of their centre of mass from ``position`` (negative: up/left).
    """
    x = jnp.asarray(x, jnp.float32)
    if x.ndim != 4:
        raise ValueError(f"x must have shape (N, H, W, C), got {x.shape}")
    height, width = x.shape[1:3]
    if position is None:
        position = (_centre_index(height), _centre_index(width))
    if not (0 <= position[0] < height and 0 <= position[1] < width):
        raise ValueError(f"position {position} is outside the {height}x{width} input")
    tangent = jnp.zeros_like(x).at[:, position[0], position[1], :].set(1.0)
    maps = [np.asarray(m, np.float64) for m in _respond(params, x, tangent, apply_fn=apply_fn)]
    offsets = []
    for m in maps:
        com = center_of_mass(m)
        where = np.array(
            [unit_position(m.shape[0], height, com[0]), unit_position(m.shape[1], width, com[1])]
        )
        offsets.append(where - np.asarray(position, np.float64))
    return maps, np.stack(offsets)


@functools.partial(jax.jit, static_argnames=("apply_fn",))
def _centre_gradient(params: Any, x: jax.Array, scale: jax.Array, *, apply_fn: ApplyFn) -> jax.Array:
    # One compilation for every layer: the cotangent of layer l is the centre
    # one-hot times scale[l], so only the selected layer contributes.
    maps, vjp = jax.vjp(lambda x: apply_fn(params, x), x)
    cotangent = []
    for i, m in enumerate(maps):
        h, w = m.shape[1:3]
        centre = jnp.zeros((h, w), m.dtype).at[_centre_index(h), _centre_index(w)].set(1.0)
        cotangent.append(jnp.broadcast_to((centre * scale[i])[None, :, :, None], m.shape))
    (g,) = vjp(type(maps)(cotangent))
    return jnp.mean(jnp.abs(g), axis=(0, -1))


def receptive_field(
    apply_fn: ApplyFn,
    params: Any,
    x: np.ndarray,
    *,
    layers: Sequence[int] | None = None,
) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
    """Which input pixels a unit sees: gradient of a centre unit w.r.t. the input.

    For layer ``l`` the cotangent is 1 at the centre pixel ``(h_l // 2,
    w_l // 2)`` in every channel (the effective receptive field of Luo et al.,
    2016); the input gradient's magnitude is averaged over the batch and input
    channels.

    Args:
      apply_fn: ``(params, x (N, H, W, C)) -> L maps``.
      params: its parameters.
      x: ``(N, H, W, C)`` inputs at which the gradient is taken.
      layers: which layers (default all).

    Returns:
      ``(maps, offsets, extents)``: per selected layer an ``(H, W)`` map of
      mean ``|d F_l[centre] / d x|``; ``(K, 2)`` offsets in input pixels of
      its centre of mass from the centre unit's input position (positive:
      the unit looks down/right); ``(K, 2)`` RMS radii in input pixels.
    """
    x = jnp.asarray(x, jnp.float32)
    if x.ndim != 4:
        raise ValueError(f"x must have shape (N, H, W, C), got {x.shape}")
    height, width = x.shape[1:3]
    shapes = [s.shape for s in jax.eval_shape(lambda x: apply_fn(params, x), x)]
    if layers is None:
        layers = range(len(shapes))
    layers = list(layers)
    for layer in layers:
        if not 0 <= layer < len(shapes):
            raise ValueError(f"layers must index the {len(shapes)} maps, got {layer}")
    maps, offsets = [], []
    for layer in layers:
        only_this_layer = jnp.zeros(len(shapes)).at[layer].set(1.0)
        m = np.asarray(_centre_gradient(params, x, only_this_layer, apply_fn=apply_fn), np.float64)
        maps.append(m)
        h, w = shapes[layer][1:3]
        unit = np.array(
            [unit_position(h, height, _centre_index(h)), unit_position(w, width, _centre_index(w))]
        )
        offsets.append(center_of_mass(m) - unit)
    if not maps:
        return [], np.zeros((0, 2)), np.zeros((0, 2))
    return maps, np.stack(offsets), extent(np.stack(maps))
