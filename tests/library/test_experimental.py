"""The experimental formulations (sympad.experimental) against the NumPy reference, values and gradients."""

from __future__ import annotations

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sympad
import sympad.experimental
from tests.library.checks import check, check_gradients, random
from tests.reference import reference_conv

EXPERIMENTAL = ["group_sum", "split_grad", "split_dw", "im2col"]
#: Those that take grouped convs (by a fallback to a core formulation).
GROUPED = ["split_grad", "split_dw", "im2col"]


def test_registry_names_the_experimental_formulations():
    assert sorted(sympad.experimental.FORMULATIONS) == sorted(EXPERIMENTAL)
    assert set(EXPERIMENTAL) <= set(sympad.IMPLEMENTATIONS)
    assert sympad.experimental.FORMULATIONS["group_sum"] is sympad.experimental.group_sum


@pytest.mark.integration
def test_importing_sympad_does_not_import_experimental():
    code = (
        "import sys, jax.numpy as jnp, sympad\n"
        "assert 'sympad.experimental' not in sys.modules\n"
        "sympad.sym_pad_conv(jnp.ones((1, 4, 4, 4)), jnp.ones((2, 2, 4, 2)))\n"
        "assert 'sympad.experimental' not in sys.modules\n"
        "sympad.sym_pad_conv(jnp.ones((1, 4, 4, 4)), jnp.ones((2, 2, 4, 2)), implementation='im2col')\n"
        "assert 'sympad.experimental' in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ, "JAX_PLATFORMS": "cpu"})


@pytest.mark.parametrize("implementation", EXPERIMENTAL)
@pytest.mark.parametrize("k,stride,dilation,channels", [
    (2, 1, 1, 5), (4, 2, 1, 13), (2, 2, 1, 8), (4, 1, 2, 3), (3, 1, 1, 4), (2, 1, (1, 2), 6), (2, 1, 3, 5),
    (4, 1, (3, 1), 4),
])
def test_2d_matches_reference(implementation, k, stride, dilation, channels):
    x = random((2, 9, 8, channels), seed=3)
    w = random((k, k, channels, 4), seed=4)
    check(x, w, stride, dilation, implementation=implementation)


@pytest.mark.parametrize("implementation", EXPERIMENTAL)
@pytest.mark.parametrize("ndim,k,stride,channels", [(1, 2, 1, 5), (1, 4, 2, 3), (3, 2, 1, 9), (3, 4, 2, 8)])
def test_1d_and_3d_match_reference(implementation, ndim, k, stride, channels):
    x = random((2,) + (7, 6, 5)[:ndim] + (channels,), seed=ndim + k)
    w = random((k,) * ndim + (channels, 3), seed=channels)
    check(x, w, stride, 1, implementation=implementation)


@pytest.mark.parametrize("implementation", GROUPED)
@pytest.mark.parametrize("channels,groups,features", [(8, 2, 4), (12, 3, 6), (6, 6, 6), (5, 5, 10)])
def test_grouped_and_depthwise_match_reference(implementation, channels, groups, features):
    x = random((2, 8, 7, channels), seed=channels)
    w = random((2, 2, channels // groups, features), seed=groups)
    check(x, w, 1, 1, groups=groups, implementation=implementation)
    w4 = random((4, 4, channels // groups, features), seed=groups + 1)
    check(x, w4, 2, 1, groups=groups, implementation=implementation)


def test_group_sum_rejects_feature_groups():
    with pytest.raises(ValueError, match="group_sum.*feature_group_count=1"):
        sympad.sym_pad_conv(
            jnp.ones((1, 6, 6, 4)), jnp.ones((2, 2, 2, 4)), feature_group_count=2, implementation="group_sum"
        )


@pytest.mark.parametrize("implementation", EXPERIMENTAL)
def test_gradients(implementation):
    check_gradients(implementation)


@pytest.mark.parametrize("implementation", ["split_grad", "split_dw"])
def test_hybrids_forward_mode(implementation):
    # custom_jvp: the tangent of the bilinear conv is conv(dx, w) + conv(x, dw).
    x, w = random((2, 7, 6, 8), seed=1), random((2, 2, 8, 4), seed=2)
    dx, dw = random(x.shape, seed=3), random(w.shape, seed=4)
    f = lambda a, b: sympad.sym_pad_conv(a, b, implementation=implementation)
    y, dy = jax.jvp(f, (x, w), (dx, dw))
    ref = lambda a, b: reference_conv(a, b, (1, 1), (1, 1))
    np.testing.assert_allclose(y, ref(x, w), atol=1e-4)
    np.testing.assert_allclose(dy, ref(dx, w) + ref(x, dw), atol=1e-4)
    _, dy_x_only = jax.jvp(f, (x, w), (dx, jnp.zeros_like(w)))
    np.testing.assert_allclose(dy_x_only, ref(dx, w), atol=1e-4)


def test_group_sum_rounds_16_bit_partial_sums_once():
    # Four partial convs summed in float32, then one rounding to bfloat16: within half an ulp
    # of the exact result of the same bfloat16 operands.
    x = jnp.asarray(random((2, 8, 8, 16), seed=5), jnp.bfloat16)
    w = jnp.asarray(random((2, 2, 16, 8), seed=6), jnp.bfloat16)
    got = sympad.sym_pad_conv(x, w, implementation="group_sum")
    assert got.dtype == jnp.bfloat16
    want = reference_conv(np.asarray(x, np.float64), np.asarray(w, np.float64), (1, 1), (1, 1))
    err = np.abs(np.asarray(got, np.float64) - want)
    assert np.all(err <= 2.0**-8 * np.abs(want) + 1e-5)
