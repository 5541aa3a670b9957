"""Checks shared by the op's tests: random operands and a comparison with the NumPy reference."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.test_util import check_grads

import sympad
from tests.reference import reference_conv


def random(shape, seed):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def check(x, w, strides, dilation, groups=1, implementation="auto", tol=1e-5):
    """``sym_pad_conv`` through ``jax.jit`` against ``reference_conv``."""
    ndim = x.ndim - 2
    strides_t = (strides,) * ndim if isinstance(strides, int) else strides
    dilation_t = (dilation,) * ndim if isinstance(dilation, int) else dilation
    expected = reference_conv(x, w, strides_t, dilation_t, groups)
    got = jax.jit(
        lambda a, b: sympad.sym_pad_conv(
            a, b, strides, kernel_dilation=dilation, feature_group_count=groups, implementation=implementation
        )
    )(x, w)
    assert got.shape == expected.shape
    scale = max(1.0, float(np.abs(expected).max()))
    np.testing.assert_allclose(np.asarray(got), expected, atol=tol * scale, rtol=tol)


def check_gradients(implementation):
    """Both gradients by finite differences, and the input gradient as the reference's adjoint."""
    x = random((1, 5, 6, 5), seed=13)
    w = random((2, 2, 5, 3), seed=14)
    f = lambda a, b: sympad.sym_pad_conv(a, b, 2, implementation=implementation)
    check_grads(f, (x.astype(np.float64), w.astype(np.float64)), order=1, modes=["rev"], atol=1e-2, rtol=1e-2)
    # The gradient wrt x is the reference's adjoint: <conv(x), g> = <x, conv^T(g)>.
    g = random((1, 3, 3, 3), seed=15)
    grad_x = jax.grad(lambda a: jnp.vdot(f(a, w), g))(x)
    eps_dir = random(x.shape, seed=16)
    lhs = float(jnp.vdot(grad_x, eps_dir))
    rhs = float(np.vdot(reference_conv(eps_dir, w, (2, 2), (1, 1)), g))
    assert abs(lhs - rhs) < 1e-3 * max(1.0, abs(rhs))
