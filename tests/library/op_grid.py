"""The op grid at the compile settings users run, in a process of its own (test_production_flags.py).

Not a test module: ``python -m tests.library.op_grid REPORT.json`` runs every formulation of
:func:`sympad.sym_pad_conv` on 1, 2 and 3 spatial dims, at strides 1 and 2, dilations 1, 2, 3 and
mixed, ungrouped, grouped and depthwise, kernels 2 and 4 (C2sp, C4sp) and 3 (C3), forward and both
gradients, against the NumPy reference (tests/reference.py). The suite compiles with LLVM at -O0
and a persistent compilation cache (tests/conftest.py); the test that starts this module takes both
away, and this process reports the settings it ran with, so the test can check they were gone.
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import sympad
from tests.library.checks import random
from tests.reference import reference_conv

#: (spatial dims, kernel size, stride, dilation, channels, feature groups, features). Together they
#: take every stride, dilation, grouping and dimensionality; every formulation runs each one.
SHAPES = [
    (1, 2, 1, 1, 5, 1, 3),
    (1, 4, 2, 3, 6, 2, 4),
    (1, 2, 2, 3, 6, 6, 6),  # depthwise
    (2, 2, 2, 1, 5, 1, 3),
    (2, 4, 1, (1, 2), 6, 2, 4),  # dilation 2: an even total, the other axis odd
    (2, 2, 1, 1, 8, 8, 16),  # depthwise, channel multiplier 2
    (3, 2, 1, 1, 9, 1, 2),
    (3, 4, 2, 1, 8, 2, 4),
    (3, 2, 1, 3, 6, 6, 6),  # depthwise
]
#: An odd kernel: a plain 'SAME' conv whatever the formulation, so once.
ODD = (2, 3, 2, 1, 4, 1, 3)
#: Formulations that take feature_group_count=1 only.
UNGROUPED_ONLY = ("group_sum",)


def cases() -> list[tuple[str, tuple, int]]:
    """(implementation, shape, seed) for every formulation and every shape it takes, and the odd kernel.

    Every formulation gets the same operands for a shape.
    """
    return [(impl, shape, seed) for seed, shape in enumerate(SHAPES) for impl in sympad.IMPLEMENTATIONS
            if shape[5] == 1 or impl not in UNGROUPED_ONLY] + [("auto", ODD, len(SHAPES))]


def case_id(implementation: str, shape: tuple) -> str:
    ndim, k, stride, dilation, channels, groups, features = shape
    return f"{implementation}-{ndim}d-k{k}-s{stride}-d{dilation}-c{channels}-g{groups}-f{features}"


def check_case(implementation: str, shape: tuple, seed: int, *, tol: float = 1e-5, gradient_tol: float = 1e-6) -> None:
    """The output and both gradients of one conv against the reference; AssertionError if they differ.

    The gradients by the adjoint identities of a conv, linear in each operand: for random ``e``
    and ``d``, ``<dL/dx, e> = <conv(e, w), g>`` and ``<dL/dw, d> = <conv(x, d), g>`` where
    ``L = <conv(x, w), g>``, the right-hand sides from the reference.
    """
    ndim, k, stride, dilation, channels, groups, features = shape
    seed = 10 * seed
    x = random((2,) + (9, 8, 7)[:ndim] + (channels,), seed=seed)
    w = random((k,) * ndim + (channels // groups, features), seed=seed + 1)
    strides, dilations = (stride,) * ndim, (dilation,) * ndim if isinstance(dilation, int) else dilation
    conv = lambda a, b: sympad.sym_pad_conv(
        a, b, stride, kernel_dilation=dilation, feature_group_count=groups, implementation=implementation)

    @jax.jit
    def forward_and_gradients(a, b, g):
        y, pullback = jax.vjp(conv, a, b)
        return (y, *pullback(g))

    want = reference_conv(x, w, strides, dilations, groups)
    g = random(want.shape, seed=seed + 2)
    y, dx, dw = (np.asarray(v, np.float64) for v in forward_and_gradients(x, w, jnp.asarray(g)))
    assert y.shape == want.shape, (y.shape, want.shape)
    scale = max(1.0, float(np.abs(want).max()))
    np.testing.assert_allclose(y, want, atol=tol * scale, rtol=tol, err_msg="output")
    e, d = random(x.shape, seed=seed + 3), random(w.shape, seed=seed + 4)
    for name, got, direction, image, bound in (
        ("input gradient", dx, e, reference_conv(e, w, strides, dilations, groups),
         reference_conv(np.abs(e), np.abs(w), strides, dilations, groups)),
        ("kernel gradient", dw, d, reference_conv(x, d, strides, dilations, groups),
         reference_conv(np.abs(x), np.abs(d), strides, dilations, groups)),
    ):
        # Rounding grows with the sum of the products' magnitudes, not with the inner product: at most
        # 1.4e-8 of it over this grid (measured), a gradient off by 1% is 1e-4 to 1e-2 of it.
        lhs, rhs, size = float(np.vdot(got, direction)), float(np.vdot(image, g)), float(np.vdot(bound, np.abs(g)))
        assert abs(lhs - rhs) <= gradient_tol * size, f"{name}: <grad, v> = {lhs}, reference {rhs} (scale {size})"


def settings() -> dict:
    """The compile settings this process runs with: XLA's flags and jax's compilation cache."""
    return {
        "XLA_FLAGS": os.environ.get("XLA_FLAGS", ""),
        "cache_env": {k: v for k, v in os.environ.items() if k.startswith("JAX_") and "CACHE" in k},
        "jax_compilation_cache_dir": jax.config.jax_compilation_cache_dir,
        "jax_enable_compilation_cache": jax.config.jax_enable_compilation_cache,
        "backend": jax.default_backend(),
    }


def main(argv: list[str]) -> int:
    """Runs every case; writes ``{'settings', 'cases', 'failures'}`` to ``argv[0]``; 1 if any failed."""
    (report,) = argv
    failures, all_cases = {}, cases()
    for implementation, shape, seed in all_cases:
        try:
            check_case(implementation, shape, seed)
        except Exception:  # every failing case is reported, not only the first
            failures[case_id(implementation, shape)] = traceback.format_exc(limit=-3)
    Path(report).write_text(json.dumps({"settings": settings(), "cases": len(all_cases), "failures": failures}))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
