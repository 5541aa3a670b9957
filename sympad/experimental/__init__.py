"""Formulations of :func:`sympad.sym_pad_conv` that ``implementation='auto'`` never picks.

Kept apart from the core (as optax keeps ``optax.contrib``) because they are
measured alternatives, not the defaults: each computes the same C*sp result as
the core formulations, and the tests run each against the NumPy reference,
values and gradients. Reach one through the op,
``sympad.sym_pad_conv(x, kernel, implementation=name)``, or make every ``'auto'``
conv of a model use it with ``sympad.use_implementation(name)``; ``sympad.ops``
imports this package on first use, so ``import sympad`` does not load it.

=============== ==============================================================
``group_sum``   one conv per direction group, each padding exactly; summed.
                No padded copy; ``feature_group_count=1`` only.
``split_grad``  ``group_sum`` forward and kernel gradient, ``select_crop``
                input gradient (a ``custom_jvp``; forward mode works).
``split_dw``    ``select_crop`` forward and input gradient, ``group_sum``
                kernel gradient (a ``custom_jvp``).
``im2col``      the taps' windows of the padded input side by side and one
                matmul over ``prod(k) * C``; ungrouped convs only (else
                ``pad_select``).
=============== ==============================================================

Why none of them is picked (they lose to the core ones where measured) is in
BENCHMARKS.md. Each is written against the core's formulation interface
(``sympad/_formulations.py``): ``f(x, kernel, geometry, conv) -> y`` on
channels-last operands.
"""

from sympad.experimental._group_sum import group_sum
from sympad.experimental._im2col import im2col
from sympad.experimental._split import split_dw, split_grad

__all__ = ["FORMULATIONS", "group_sum", "im2col", "split_dw", "split_grad"]

#: Name (as accepted by ``sym_pad_conv(implementation=...)``) -> formulation.
FORMULATIONS = {
    "group_sum": group_sum,
    "split_grad": split_grad,
    "split_dw": split_dw,
    "im2col": im2col,
}
