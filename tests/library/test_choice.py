"""The automatic choice: the decision table, pinned, and the public way to force or inspect it.

The expected formulations are written out here, not computed: a change of the
table must change this file too (and BENCHMARKS.md, which holds the figures behind it).
"""

from __future__ import annotations

import threading

import jax
import jax.numpy as jnp
import pytest

import sympad

DTYPES = ["float32", "bfloat16", "float16"]

# (x shape, kernel shape, feature_group_count) -> (cpu, gpu); every other backend: pad_select.
TABLE = [
    # 2D C2sp, ungrouped. CPU: pad_concat up to 32 channels, then concat_crop.
    # GPU: pad_concat from 128 channels; below, embed unless N*H*W*C*F >= 2**30.
    ((8, 32, 32, 3), (2, 2, 3, 16), 1, "pad_concat", "embed"),
    ((8, 32, 32, 16), (2, 2, 16, 16), 1, "pad_concat", "embed"),
    ((8, 32, 32, 32), (2, 2, 32, 32), 1, "pad_concat", "embed"),
    ((8, 32, 32, 33), (2, 2, 33, 32), 1, "concat_crop", "embed"),
    ((32, 32, 32, 64), (2, 2, 64, 64), 1, "concat_crop", "embed"),
    ((2, 32, 32, 127), (2, 2, 127, 127), 1, "concat_crop", "embed"),
    ((2, 32, 32, 128), (2, 2, 128, 128), 1, "concat_crop", "pad_concat"),
    ((16, 8, 8, 256), (2, 2, 256, 256), 1, "concat_crop", "pad_concat"),
    ((256, 32, 32, 64), (2, 2, 64, 63), 1, "concat_crop", "embed"),  # 2**30 - 2**24
    ((256, 32, 32, 64), (2, 2, 64, 64), 1, "concat_crop", "pad_select"),  # exactly 2**30
    ((256, 56, 56, 64), (2, 2, 64, 64), 1, "concat_crop", "pad_select"),
    ((1, 8, 8, 1), (2, 2, 1, 4), 1, "pad_concat", "embed"),  # one channel: not depthwise
    # 2D, other even kernels: "2x2" means every side at most 2.
    ((8, 16, 16, 16), (1, 2, 16, 16), 1, "pad_concat", "embed"),
    ((8, 16, 16, 16), (2, 1, 16, 16), 1, "pad_concat", "embed"),
    ((8, 16, 16, 16), (4, 4, 16, 16), 1, "concat_crop", "pad_select"),
    ((8, 16, 16, 16), (2, 4, 16, 16), 1, "concat_crop", "pad_select"),
    ((8, 16, 16, 256), (4, 4, 256, 256), 1, "concat_crop", "pad_select"),
    # 2D depthwise (feature_group_count == C > 1): CPU depthwise_taps, any kernel and multiplier.
    ((8, 16, 16, 16), (2, 2, 1, 16), 16, "depthwise_taps", "pad_select"),
    ((8, 16, 16, 16), (2, 2, 1, 32), 16, "depthwise_taps", "pad_select"),
    ((8, 16, 16, 256), (4, 4, 1, 256), 256, "depthwise_taps", "pad_select"),
    # 2D grouped, not depthwise: pad_select everywhere.
    ((8, 16, 16, 16), (2, 2, 8, 16), 2, "pad_select", "pad_select"),
    ((8, 16, 16, 256), (2, 2, 128, 256), 2, "pad_select", "pad_select"),
    ((8, 16, 16, 16), (2, 2, 2, 16), 8, "pad_select", "pad_select"),
    # 1D and 3D: pad_select everywhere.
    ((8, 32, 16), (2, 16, 16), 1, "pad_select", "pad_select"),
    ((8, 32, 256), (2, 256, 256), 1, "pad_select", "pad_select"),
    ((8, 32, 16), (2, 1, 16), 16, "pad_select", "pad_select"),
    ((2, 8, 8, 8, 16), (2, 2, 2, 16, 16), 1, "pad_select", "pad_select"),
    ((2, 8, 8, 8, 256), (2, 2, 2, 256, 256), 1, "pad_select", "pad_select"),
    ((2, 8, 8, 8, 16), (2, 2, 2, 1, 16), 16, "pad_select", "pad_select"),
]


def _shapes(x_shape, k_shape, dtype):
    return jax.ShapeDtypeStruct(x_shape, jnp.dtype(dtype)), jax.ShapeDtypeStruct(k_shape, jnp.dtype(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("backend", ["cpu", "gpu", "tpu"])
@pytest.mark.parametrize("x_shape,k_shape,groups,cpu,gpu", TABLE)
def test_decision_table(monkeypatch, backend, dtype, x_shape, k_shape, groups, cpu, gpu):
    monkeypatch.setattr(jax, "default_backend", lambda: backend)
    x, k = _shapes(x_shape, k_shape, dtype)
    want = {"cpu": cpu, "gpu": gpu}.get(backend, "pad_select")
    assert sympad.choose_implementation(x, k, feature_group_count=groups) == want


def test_choose_implementation_takes_arrays():
    x, k = jnp.zeros((2, 8, 8, 16)), jnp.zeros((2, 2, 16, 8))
    assert sympad.choose_implementation(x, k) == sympad.choose_implementation(*_shapes(x.shape, k.shape, "float32"))


X, K = _shapes((2, 8, 8, 16), (2, 2, 16, 16), "float32")
K_GROUPED = jax.ShapeDtypeStruct((2, 2, 8, 16), jnp.float32)


def _choice(kernel=K, groups=1):
    return sympad.choose_implementation(X, kernel, feature_group_count=groups)


@pytest.mark.parametrize("name", [n for n in sympad.IMPLEMENTATIONS if n != "auto"])
def test_use_implementation_forces_and_restores(name):
    measured = _choice()
    with sympad.use_implementation(name):
        assert _choice() == name
    assert _choice() == measured


def test_use_implementation_nests():
    measured = _choice()
    with sympad.use_implementation("embed"):
        with sympad.use_implementation("im2col"):
            assert _choice() == "im2col"
        assert _choice() == "embed"
        with sympad.use_implementation(None):  # no change
            assert _choice() == "embed"
        with sympad.use_implementation("auto"):  # the measured choice again
            assert _choice() == measured
        assert _choice() == "embed"
    assert _choice() == measured


def test_use_implementation_restores_after_an_error():
    measured = _choice()
    with pytest.raises(RuntimeError):
        with sympad.use_implementation("embed"):
            raise RuntimeError
    assert _choice() == measured


def test_use_implementation_leaves_inapplicable_calls_to_the_measured_choice():
    measured = _choice(K_GROUPED, 2)
    with sympad.use_implementation("group_sum"):
        assert _choice() == "group_sum"
        assert _choice(K_GROUPED, 2) == measured


def test_use_implementation_is_per_thread():
    seen = []
    with sympad.use_implementation("embed"):
        thread = threading.Thread(target=lambda: seen.append(_choice()))
        thread.start()
        thread.join()
    assert seen == [_choice()]


@pytest.mark.parametrize("name", ["fast", "", "AUTO", 3])
def test_use_implementation_rejects_unknown_names(name):
    with pytest.raises(ValueError, match="implementation must be one of"):
        with sympad.use_implementation(name):
            pass


def _primitives(fn, *args):
    """Names of the primitives of the traced ``fn``, nested jaxprs included."""
    found = []

    def walk(jaxpr):
        for eqn in jaxpr.eqns:
            found.append((eqn.primitive.name, eqn))
            for param in eqn.params.values():
                for inner in param if isinstance(param, (list, tuple)) else [param]:
                    if hasattr(inner, "jaxpr"):
                        walk(inner.jaxpr)
                    elif hasattr(inner, "eqns"):
                        walk(inner)

    walk(jax.make_jaxpr(fn)(*args).jaxpr)
    return found


def _conv_kernels(fn, *args):
    return [eqn.invars[1].aval.shape for name, eqn in _primitives(fn, *args) if name == "conv_general_dilated"]


def _auto(a, b):
    return sympad.sym_pad_conv(a, b)


def test_use_implementation_reaches_the_traced_op():
    x, k = jnp.ones((2, 8, 8, 16)), jnp.ones((2, 2, 16, 16))
    # A fresh function per block: jax reuses the trace of a function it has traced before.
    with sympad.use_implementation("embed"):  # the 2x2 taps inside a 3x3 kernel
        assert _conv_kernels(lambda a, b: _auto(a, b), x, k) == [(3, 3, 16, 16)]
    with sympad.use_implementation("group_sum"):  # one conv per direction group
        assert _conv_kernels(lambda a, b: _auto(a, b), x, k) == [(2, 2, 4, 16)] * 4
    with sympad.use_implementation("im2col"):  # a matmul, no conv
        names = [name for name, _ in _primitives(lambda a, b: _auto(a, b), x, k)]
        assert "dot_general" in names and "conv_general_dilated" not in names
    # An explicit implementation= is not affected.
    with sympad.use_implementation("group_sum"):
        assert _conv_kernels(lambda a, b: sympad.sym_pad_conv(a, b, implementation="embed"), x, k) == [(3, 3, 16, 16)]


def test_a_function_traced_before_keeps_its_formulation():
    # The documented limit: the choice is made at trace time, and jax caches the trace of a
    # Python function per argument shapes, also across jax.jit wrappers of the same function.
    x, k = jnp.ones((2, 8, 8, 16)), jnp.ones((2, 2, 16, 16))

    def f(a, b):
        return sympad.sym_pad_conv(a, b)

    with sympad.use_implementation("embed"):
        assert _conv_kernels(jax.jit(f), x, k) == [(3, 3, 16, 16)]
    with sympad.use_implementation("group_sum"):
        assert _conv_kernels(jax.jit(f), x, k) == [(3, 3, 16, 16)]
        assert _conv_kernels(jax.jit(lambda a, b: f(a, b)), x, k) == [(2, 2, 4, 16)] * 4  # a new function
