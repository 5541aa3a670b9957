"""``split_grad`` and ``split_dw``: each pass of the conv by its own formulation.

A convolution's forward pass, input gradient and kernel gradient are three
different convs, and the fastest formulation differs between them (on CPU,
``select_crop``'s kernel gradient is its slow pass, ``group_sum``'s exact convs
avoid the padded copy). These hybrids combine two formulations by pass.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.custom_derivatives import SymbolicZero

from sympad._formulations import Conv, Formulation, Geometry, conv_select_crop
from sympad.experimental._group_sum import group_sum


def _hybrid(primal: Formulation, tangent_x: Formulation, tangent_w: Formulation) -> Formulation:
    """A formulation whose forward, input gradient and kernel gradient each use their own.

    A ``custom_jvp`` (not ``custom_vjp``, so forward mode still works): the
    primal is computed by ``primal``; the tangent is ``tangent_x(dx, kernel) +
    tangent_w(x, dkernel)``, which is exact because the conv is bilinear.
    Reverse mode transposes the tangent, so the input gradient is the
    transpose of ``tangent_x`` and the kernel gradient that of ``tangent_w``.
    ``group_sum`` parts of grouped convs run ``select_crop`` instead.
    """

    def formulation(x: jax.Array, kernel: jax.Array, geo: Geometry, conv: Conv) -> jax.Array:
        def part(f: Formulation) -> Formulation:
            return conv_select_crop if (f is group_sum and geo.feature_group_count != 1) else f

        @jax.custom_jvp
        def op(a, b):
            return part(primal)(a, b, geo, conv)

        def op_jvp(primals, tangents):
            a, b = primals
            da, db = tangents
            y = op(a, b)
            dy = None
            if not isinstance(da, SymbolicZero):
                dy = part(tangent_x)(da, b, geo, conv)
            if not isinstance(db, SymbolicZero):
                dw_part = part(tangent_w)(a, db, geo, conv)
                dy = dw_part if dy is None else dy + dw_part
            if dy is None:
                dy = jnp.zeros_like(y)
            return y, dy

        op.defjvp(op_jvp, symbolic_zeros=True)
        return op(x, kernel)

    return formulation


#: Forward and kernel gradient by ``group_sum`` (exact convs, no padded copy);
#: input gradient as ``select_crop``'s transpose (one padded conv and a select).
split_grad = _hybrid(group_sum, conv_select_crop, group_sum)

#: ``select_crop``'s forward and input gradient, ``group_sum``'s kernel gradient
#: (the pass where ``select_crop`` is slowest on CPU).
split_dw = _hybrid(conv_select_crop, conv_select_crop, group_sum)
