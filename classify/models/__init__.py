"""The paper's classification models (flax.linen), every spatial conv built by ``sympad.linen.conv``.

Families (``create_model(name, **fields)``), paper section in parentheses:

* ``resnet_cifar``: :func:`resnet_cifar`, ResNet without bottleneck, depth 6n+2 (4.1, Figure 4 left).
* ``blocks_cifar``: :func:`blocks_cifar`, Table 1's shift / invert / sep / c2sp blocks (4.2).
* ``densenet_cifar``: :func:`densenet_cifar`, DenseNet-BC, depth 6n+4 (4.1, Figure 4 middle).
* ``wide_densenet``: :func:`wide_densenet`, K = 48, L = 50 (4.2, Table 2).
* ``resnet_imagenet``: :func:`resnet_imagenet`, ResNet-50 at width 1 or 0.5 (4.3, Table 3).
* ``densenet_imagenet``: :func:`densenet_imagenet`, DenseNet-121 (4.3, Table 3).
* ``mobilenetv2``: :func:`mobilenetv2`, MobileNet-v2 1.0x / 1.4x (4.3, Table 3).

Every model is called as ``model.apply(variables, images, train=...)`` with
``images`` ``(N, H, W, 3)`` and returns float32 logits ``(N, num_classes)``;
variables are ``{'params', 'batch_stats'}``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from classify.models.blocks import DOWNSAMPLE_MODES
from classify.models.densenet import (
    DenseNet,
    DenseNet121,
    WideDenseNet,
    densenet_cifar,
    densenet_imagenet,
    wide_densenet,
)
from classify.models.mobilenetv2 import MobileNetV2, mobilenetv2
from classify.models.resnet_cifar import (
    BLOCKS,
    CifarResNet,
    ResNet20,
    ResNet56,
    ResNet110,
    blocks_cifar,
    resnet_cifar,
)
from classify.models.resnet_imagenet import ImageNetResNet, ResNet50, resnet_imagenet

__all__ = [
    "BLOCKS",
    "DOWNSAMPLE_MODES",
    "MODELS",
    "CifarResNet",
    "DenseNet",
    "DenseNet121",
    "ImageNetResNet",
    "MobileNetV2",
    "ResNet20",
    "ResNet50",
    "ResNet56",
    "ResNet110",
    "WideDenseNet",
    "blocks_cifar",
    "count_params",
    "create_model",
    "densenet_cifar",
    "densenet_imagenet",
    "mobilenetv2",
    "param_shapes",
    "resnet_cifar",
    "resnet_imagenet",
    "wide_densenet",
]

MODELS: dict[str, Callable[..., nn.Module]] = {
    "resnet_cifar": resnet_cifar,
    "blocks_cifar": blocks_cifar,
    "densenet_cifar": densenet_cifar,
    "wide_densenet": wide_densenet,
    "resnet_imagenet": resnet_imagenet,
    "densenet_imagenet": densenet_imagenet,
    "mobilenetv2": mobilenetv2,
}

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


def create_model(name: str, **fields: Any) -> nn.Module:
    """Builds a model of family ``name`` from keyword fields (a config's ``model`` block).

    ``dtype`` may be given as a string ('float32', 'bfloat16'). Empty-string
    fields mean "use the family's default" (configs cannot hold ``None``
    conveniently).

    Raises:
      ValueError: for an unknown ``name`` (the message lists the families).
    """
    if name not in MODELS:
        raise ValueError(f"unknown model name {name!r}; expected one of {sorted(MODELS)}")
    fields = {k: v for k, v in fields.items() if not (isinstance(v, str) and v == "")}
    if isinstance(fields.get("dtype"), str):
        if fields["dtype"] not in _DTYPES:
            raise ValueError(f"dtype must be one of {sorted(_DTYPES)}, got {fields['dtype']!r}")
        fields["dtype"] = _DTYPES[fields["dtype"]]
    return MODELS[name](**fields)


def param_shapes(model: nn.Module, image_size: int) -> Any:
    """Shapes of ``model``'s variables for ``(1, image_size, image_size, 3)`` inputs, without allocating."""
    images = jax.ShapeDtypeStruct((1, image_size, image_size, 3), jnp.float32)
    return jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), images)


def count_params(model: nn.Module, image_size: int) -> int:
    """Number of trainable parameters (the ``'params'`` collection; BN running statistics excluded)."""
    shapes = param_shapes(model, image_size)["params"]
    return int(sum(np.prod(leaf.shape) for leaf in jax.tree.leaves(shapes)))
