"""The networks the analyses measure: untrained plain stacks or classify ResNets, or a classify
training run restored from its checkpoint."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from paper import measures
from sympad.train.errors import ConfigError

__all__ = ["MODELS", "Network", "build_network", "init_keys", "load_checkpoint_network", "variables_of"]

#: The untrained networks :func:`build_network` makes.
MODELS = ("plain", "classify")


@dataclasses.dataclass
class Network:
    """One network as the commands see it.

    Attributes:
      kind: kernel kind.
      init: ``(key, x) -> variables``.
      conv_outputs: ``(variables, x) -> maps``: every conv output.
      activations: ``(variables, x) -> maps`` whose ReLU are the network's
        post-ReLU activations.
      description: what it is, for the JSON.
      variables: restored variables (checkpoints); then ``init`` is unused.
    """

    kind: str
    init: Callable[[jax.Array, jax.Array], Any]
    conv_outputs: measures.ApplyFn
    activations: measures.ApplyFn
    description: str
    variables: Any = None


def build_network(kind: str, *, model: str = "plain", depth: int, widths: Sequence[int] = (16, 32, 64),
                  downsample: str | None = None, linear: bool = False) -> Network:
    """The untrained network of ``kind``.

    Args:
      kind: kernel kind.
      model: 'plain' (:func:`paper.measures.plain_resnet`: no shortcuts, no BN, He init) or
        'classify' (the classification suite's pre-activation CIFAR ResNet).
      depth: 6n + 2.
      widths: the plain stack's channels per stage.
      downsample: :data:`paper.measures.DOWNSAMPLE_MODES` (None: 'stride' for the plain stack,
        the suite's own for classify).
      linear: the plain stack without ReLUs.
    """
    if model not in MODELS:
        raise ConfigError(f"--model must be one of {', '.join(MODELS)}, got {model!r}")
    if model == "plain":
        stack = measures.plain_resnet(kind, depth=depth, widths=widths, downsample=downsample or "stride",
                                      activation=not linear)
        return Network(
            kind, jax.jit(stack.init), stack.apply, stack.apply,
            f"plain ResNet-{depth} (no shortcuts, no BN, He init), widths {list(widths)}, "
            f"downsample {stack.downsample}" + (", linear" if linear else ""),
        )
    from classify.models import resnet_cifar  # Deferred: only --model=classify needs the suite (optax).
    # As configs/classify/resnet_cifar.py builds it: 3x3 stem, the suite's downsampling unless given.
    kwargs = {"stem_kernel": "C3"} | ({} if downsample is None else {"downsample": downsample})
    resnet = resnet_cifar(depth=depth, kernel=kind, **kwargs)
    return _wrap_classify(
        resnet, kind, f"untrained classify.models.resnet_cifar(depth={depth}, kernel={kind!r}, {kwargs})")


def _wrap_classify(model, kind: str, description: str, variables: Any = None) -> Network:
    from flax import linen as nn

    return Network(
        kind,
        jax.jit(lambda key, x: model.init(key, x, train=False)),
        measures.module_outputs(model, train=False),
        # Pre-activation ResNet: every ReLU follows a BatchNorm.
        measures.module_outputs(model, select=lambda m, out: isinstance(m, nn.BatchNorm), train=False),
        description,
        variables,
    )


def load_checkpoint_network(workdir: Path, image_shape: Sequence[int]) -> Network:
    """The classify model of a training run, with its latest checkpointed variables.

    Rebuilds the run from ``workdir`` (``python -m classify.main``'s config.json and checkpoints/,
    the latest step) with :func:`classify.state.restore_state`.

    Raises:
      ConfigError: if ``workdir`` has no config or no checkpoint.
    """
    from classify.state import restore_state  # Deferred: only --checkpoint needs the suite (optax).

    try:
        config, model, step, state = restore_state(workdir, image_size=int(image_shape[0]))
    except FileNotFoundError as e:
        raise ConfigError(f"--checkpoint={workdir}: {e}") from None
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    description = f"classify checkpoint {workdir} (step {step}, {config.model.name}, kernel {config.kernel})"
    return _wrap_classify(model, str(config.kernel), description, variables)


def variables_of(net: Network, key: jax.Array, x: np.ndarray) -> Any:
    """The network's restored variables, or fresh ones from ``key``."""
    return net.variables if net.variables is not None else net.init(key, jnp.asarray(x[:1]))


def init_keys(net: Network, *, inits: int, seed: int) -> list[jax.Array]:
    """The keys of the initializations measured: ``inits`` of them, one for restored variables."""
    count = 1 if net.variables is not None else inits
    return [measures.init_key(seed, r) for r in range(count)]
