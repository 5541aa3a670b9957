"""sympad: convolutions with even-sized kernels and symmetric padding in JAX/Flax.

Importing ``sympad`` gives the pure ops; the Flax modules live in
``sympad.linen`` and ``sympad.nnx``, the Equinox module in ``sympad.equinox``
(optional extra ``equinox``). ``sympad.train`` is the shared training runtime
(extra ``train``); the library itself needs jax, numpy and flax only.

``implementation='auto'`` picks a
formulation per call; :func:`choose_implementation` tells which, and
:func:`use_implementation` forces one on every ``'auto'`` conv traced inside a
block. The formulations ``'auto'`` never picks live in ``sympad.experimental``
(loaded on first use).
"""

from sympad.kinds import KINDS, PADDINGS, KernelKind, parse_kind
from sympad.ops import (
    IMPLEMENTATIONS,
    channel_pads,
    choose_implementation,
    padded_conv,
    shift_directions,
    sym_pad_conv,
    symmetric_pad,
    use_implementation,
)

__all__ = [
    "IMPLEMENTATIONS",
    "KINDS",
    "KernelKind",
    "PADDINGS",
    "channel_pads",
    "choose_implementation",
    "padded_conv",
    "parse_kind",
    "shift_directions",
    "sym_pad_conv",
    "symmetric_pad",
    "use_implementation",
]

__version__ = "0.1.0"
