"""sympad's Conv is a drop-in for the installed frameworks' Conv: every argument, with its default,
and for each one either the framework's exact result or a one-line error naming it.

The signatures are read from the installed flax and Equinox at test time, so a field a new
version adds fails here until sympad decides what it means (and docs/your_model.rst says so).
The padding rules of the kinds are one table each in sympad.kinds and sympad.ops.
"""

from __future__ import annotations

import dataclasses
import inspect
import re
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn
from flax import nnx
from jax import lax

import sympad
from sympad import linen as splinen
from sympad import nnx as spnnx
from sympad import ops

try:
    import equinox as eqx

    from sympad import equinox as speqx
except ImportError:  # the equinox extra is optional; its cases skip below
    eqx = speqx = None

needs_equinox = pytest.mark.skipif(
    eqx is None, reason="the equinox extra is not installed (pip install -e '.[equinox]')"
)
PAGE = Path(__file__).resolve().parents[2] / "docs" / "your_model.rst"


def _x(shape, seed=0):
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), jnp.float32)


def _documented(library: str) -> set[str]:
    """The arguments named in the first column of the page's ``.. table:: <library>``."""
    lines = PAGE.read_text(encoding="utf-8").splitlines()
    start = lines.index(f".. table:: {library}") + 1
    body = []
    for line in lines[start:]:
        if line and not line.startswith(" "):
            break
        body.append(line)
    rule = next(line for line in body if line.strip().startswith("="))
    first = slice(len(rule) - len(rule.lstrip()), len(rule.split()[0]) + len(rule) - len(rule.lstrip()))
    return {name for line in body for name in re.findall(r"``(\w+)``", line[first])}


# --- signatures ----------------------------------------------------------------------------------


def _fields(cls):
    return [(f.name, f.default, f.default_factory) for f in dataclasses.fields(cls) if f.init]


def test_linen_conv_has_every_field_of_nn_conv_with_its_default():
    ours = [f for f in _fields(splinen.Conv) if f[0] != "implementation"]
    assert ours == _fields(nn.Conv)
    assert splinen.SymPadConv is splinen.Conv and splinen.Conv.__name__ == "Conv"


def test_linen_symmetric_path_knows_every_field_of_nn_conv():
    """A field a new flax adds fails here: the symmetric path must implement or refuse it."""
    host = {f.name for f in dataclasses.fields(nn.Conv)}
    assert host - splinen._OWN_PATH_FIELDS == set()
    assert host - {"parent", "name"} <= _documented("flax.linen.Conv")


def _parameters(fn):
    return {name: (p.kind, p.default) for name, p in inspect.signature(fn).parameters.items() if name != "self"}


def _same_default(ours, theirs):
    if ours is theirs or (not callable(ours) and ours == theirs):
        return True
    if callable(ours) and callable(theirs):
        # Initializers: flax builds a new one each time; compare what they draw.
        key = jax.random.key(0)
        return bool((ours(key, (3, 3, 4, 5)) == theirs(key, (3, 3, 4, 5))).all())
    return False


def test_nnx_conv_has_every_argument_of_nnx_conv_with_its_default():
    ours, theirs = _parameters(spnnx.Conv.__init__), _parameters(nnx.Conv.__init__)
    assert ours.pop("implementation") == (inspect.Parameter.KEYWORD_ONLY, "auto")
    assert list(ours) == list(theirs)
    for name, (kind, default) in theirs.items():
        assert ours[name][0] == kind, name
        assert _same_default(ours[name][1], default), name
    assert set(theirs) - {"rngs"} <= _documented("flax.nnx.Conv")
    assert set(_parameters(nnx.Conv.__call__)) <= set(_parameters(spnnx.Conv.__call__))


@needs_equinox
def test_equinox_conv_has_every_argument_of_eqx_conv():
    ours, theirs = _parameters(speqx.Conv.__init__), _parameters(eqx.nn.Conv.__init__)
    assert ours.pop("implementation") == (inspect.Parameter.KEYWORD_ONLY, "auto")
    assert list(ours) == list(theirs)
    for name, (kind, default) in theirs.items():
        assert ours[name][0] == kind, name
        # The one default that differs (documented): this class has always padded 'SAME'.
        assert ours[name][1] == ("SAME" if name == "padding" else default), name
    assert set(theirs) - {"key"} <= _documented("equinox.nn.Conv")


# --- linen and nnx: the framework's exact result where sympad does not pad -----------------------

# (kernel, input spatial size, keyword arguments): the framework's computation, bit for bit.
HOST_CASES = [
    ((3, 3), 8, {"strides": 2}),                       # odd kernel 'SAME', strided: XLA's pads (0, 1)
    ((2, 2), 8, {"padding": "VALID"}),
    ((2, 2), 8, {"padding": [(0, 1), (1, 0)]}),
    ((2, 2), 8, {"padding": 1, "strides": 2}),
    ((4, 4), 8, {"padding": "CIRCULAR"}),
    ((2, 2), 8, {"padding": "REFLECT"}),
    ((3,), 9, {"padding": "CAUSAL"}),
    ((2, 2), 7, {"input_dilation": 2, "padding": [(0, 0), (1, 1)]}),
    ((5, 5), 8, {"kernel_dilation": 2, "strides": 3}),
    ((3, 3), 8, {"mask": jnp.tril(jnp.ones((3, 3, 4, 6)))}),
]


@pytest.mark.parametrize("kernel,size,kwargs", HOST_CASES, ids=lambda v: str(v)[:40])
def test_linen_is_nn_conv_where_sympad_does_not_pad(kernel, size, kwargs):
    x = _x((2,) + (size,) * len(kernel) + (4,))
    theirs = nn.Conv(6, kernel, **kwargs)
    variables = theirs.init(jax.random.key(0), x)
    ours = splinen.Conv(6, kernel, **kwargs)
    assert jax.tree.map(jnp.shape, ours.init(jax.random.key(0), x)) == jax.tree.map(jnp.shape, variables)
    np.testing.assert_array_equal(ours.apply(variables, x), theirs.apply(variables, x))


@pytest.mark.parametrize("kernel,size,kwargs", HOST_CASES, ids=lambda v: str(v)[:40])
def test_nnx_is_nnx_conv_where_sympad_does_not_pad(kernel, size, kwargs):
    x = _x((2,) + (size,) * len(kernel) + (4,))
    theirs = nnx.Conv(4, 6, kernel, **kwargs, rngs=nnx.Rngs(0))
    ours = spnnx.Conv(4, 6, kernel, **kwargs, rngs=nnx.Rngs(0))
    np.testing.assert_array_equal(ours.kernel[...], theirs.kernel[...])
    np.testing.assert_array_equal(ours(x), theirs(x))


def test_odd_kernels_pad_as_nn_conv_even_strided_where_sym_pad_conv_would_not():
    """'SAME' with an odd kernel is XLA's, whose strided pads differ from the stride-1 sampling."""
    x = _x((1, 8, 8, 4))
    variables = nn.Conv(4, (3, 3), strides=2).init(jax.random.key(0), x)
    y = splinen.Conv(4, (3, 3), strides=2).apply(variables, x)
    kernel, bias = variables["params"]["kernel"], variables["params"]["bias"]
    assert not np.allclose(y, sympad.sym_pad_conv(x, kernel, 2) + bias, atol=1e-3)
    # conv('C3sp') is C3 too, strides included (the kinds page says so).
    np.testing.assert_allclose(splinen.conv("C3sp", 4, strides=2).apply(variables, x), y, atol=1e-6)


# --- what sympad computes: the even kernels with 'SAME' ------------------------------------------


def test_linen_symmetric_path_takes_mask_dtype_and_promote_dtype():
    x = _x((2, 8, 8, 4))
    mask = jnp.zeros((2, 2, 4, 6)).at[0, 0].set(1.0)
    calls = []

    def promote(*arrays, dtype=None):
        calls.append(dtype)
        return nn.dtypes.promote_dtype(*arrays, dtype=dtype)

    layer = splinen.Conv(6, (2, 2), mask=mask, dtype=jnp.bfloat16, promote_dtype=promote)
    variables = layer.init(jax.random.key(0), x)
    y = layer.apply(variables, x)
    kernel = variables["params"]["kernel"]
    expected = sympad.sym_pad_conv(x.astype(jnp.bfloat16), (kernel * mask).astype(jnp.bfloat16))
    np.testing.assert_allclose(y.astype(np.float32), expected.astype(np.float32), atol=2e-2)
    assert y.dtype == jnp.bfloat16 and calls[-1] == jnp.bfloat16


def test_nnx_symmetric_path_takes_mask_and_preferred_element_type():
    x = _x((2, 8, 8, 4))
    mask = jnp.zeros((2, 2, 4, 6)).at[1, 1].set(1.0)
    layer = spnnx.Conv(4, 6, (2, 2), mask=mask, use_bias=False, preferred_element_type=jnp.float32,
                       rngs=nnx.Rngs(0))
    np.testing.assert_allclose(layer(x), sympad.sym_pad_conv(x, layer.kernel[...] * mask), atol=1e-6)


@pytest.mark.parametrize("make", [
    lambda: splinen.Conv(4, (2, 2), input_dilation=2).init(jax.random.key(0), _x((1, 8, 8, 4))),
    lambda: spnnx.Conv(4, 4, (2, 2), input_dilation=(1, 2), rngs=nnx.Rngs(0)),
], ids=["linen", "nnx"])
def test_input_dilation_with_symmetric_padding_is_refused(make):
    refusal = r"^input_dilation must be 1 with symmetric padding .*use nn(x)?\.ConvTranspose"
    with pytest.raises(ValueError, match=refusal):
        make()


def test_a_custom_conv_with_symmetric_padding_is_refused():
    with pytest.raises(ValueError, match=r"^conv_general_dilated must be None with symmetric padding"):
        splinen.Conv(4, (2, 2), conv_general_dilated=lax.conv_general_dilated).init(jax.random.key(0), _x((1, 8, 8, 4)))
    with pytest.raises(ValueError, match=r"^conv_general_dilated_cls must be None"):
        splinen.Conv(4, (2, 2), conv_general_dilated_cls=lambda: lax.conv_general_dilated).init(
            jax.random.key(0), _x((1, 8, 8, 4)))
    with pytest.raises(ValueError, match=r"^conv_general_dilated must be lax\.conv_general_dilated"):
        spnnx.Conv(4, 4, (2, 2), conv_general_dilated=lambda *a, **k: lax.conv_general_dilated(*a, **k),
                   rngs=nnx.Rngs(0))
    # Where the framework computes, its argument works as it always did.
    spnnx.Conv(4, 4, (3, 3), conv_general_dilated=lambda *a, **k: lax.conv_general_dilated(*a, **k),
               rngs=nnx.Rngs(0))(_x((1, 8, 8, 4)))


def test_nnx_out_sharding_with_symmetric_padding_is_refused():
    with pytest.raises(ValueError, match=r"^out_sharding must be None with symmetric padding"):
        spnnx.Conv(4, 4, (2, 2), rngs=nnx.Rngs(0))(_x((1, 8, 8, 4)), out_sharding=jax.sharding.PartitionSpec())


def test_a_field_a_newer_flax_adds_is_refused_unless_at_its_default():
    """What the symmetric path does with an nn.Conv field it does not know (a newer flax's)."""

    class FutureConv(splinen.Conv):  # stands in for nn.Conv with one more field
        new_field: int = 0

    x = _x((1, 8, 8, 4))
    FutureConv(4, (2, 2)).init(jax.random.key(0), x)
    FutureConv(4, (3, 3), new_field=1).init(jax.random.key(0), x)  # nn.Conv's path takes it
    with pytest.raises(ValueError, match=r"^new_field=1 is a field of this flax's nn.Conv that sympad"):
        FutureConv(4, (2, 2), new_field=1).init(jax.random.key(0), x)


# --- Equinox -------------------------------------------------------------------------------------


@needs_equinox
@pytest.mark.parametrize("kernel,kwargs", [
    (3, {"stride": 2, "padding": "SAME"}),
    (2, {"padding": "VALID"}),
    (2, {"padding": 1, "stride": 2}),
    (2, {"padding": ((0, 1), (1, 0))}),
    (2, {"padding": "SAME_LOWER"}),
    (3, {"padding": "SAME", "padding_mode": "REFLECT"}),
    (2, {"padding": 1, "padding_mode": "CIRCULAR"}),
], ids=str)
def test_equinox_is_eqx_conv_where_sympad_does_not_pad(kernel, kwargs):
    x = _x((4, 8, 8))
    theirs = eqx.nn.Conv(2, 4, 6, kernel, **kwargs, key=jax.random.key(0))
    ours = speqx.Conv(2, 4, 6, kernel, **kwargs, key=jax.random.key(0))
    np.testing.assert_array_equal(ours.weight, theirs.weight)
    np.testing.assert_array_equal(ours(x), theirs(x))


@needs_equinox
def test_equinox_refuses_padding_modes_with_symmetric_padding():
    with pytest.raises(ValueError, match=r"^padding_mode must be 'ZEROS' with symmetric padding"):
        speqx.Conv(2, 4, 6, 2, padding_mode="CIRCULAR", key=jax.random.key(0))


@needs_equinox
def test_equinox_symmetric_rule_by_name_in_four_dims_is_xla_same_for_odd_kernels():
    """Beyond 3 spatial axes the module pads itself; 'SYMMETRIC' on an odd kernel is still XLA's 'SAME'."""
    layer = speqx.Conv(4, 2, 3, 3, stride=2, padding="SYMMETRIC", key=jax.random.key(0))
    plain = speqx.Conv(4, 2, 3, 3, stride=2, padding="SAME", key=jax.random.key(0))
    x = _x((2, 6, 6, 6, 6))
    np.testing.assert_allclose(layer(x), plain(x), atol=1e-6)


# --- the kinds' padding rules --------------------------------------------------------------------


def test_every_kind_padding_rule_has_its_conv():
    assert set(ops._PADDING_RULES) == set(sympad.PADDINGS.values())
    for kind in sympad.KINDS + ("C5", "C7sp"):
        parsed = sympad.parse_kind(kind)
        assert parsed.name == kind and parsed.symmetric == kind.endswith("sp")


def test_padded_conv_rules():
    x, kernel = _x((2, 9, 8, 8)), _x((2, 2, 8, 5), seed=1)
    odd = _x((3, 3, 8, 5), seed=2)

    def xla(k, strides):
        return lax.conv_general_dilated(x, k, (strides,) * 2, "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))

    np.testing.assert_allclose(sympad.padded_conv(x, kernel, 2, padding="SAME"), xla(kernel, 2), atol=1e-5)
    np.testing.assert_allclose(sympad.padded_conv(x, kernel, 2, padding="SYMMETRIC"), sympad.sym_pad_conv(x, kernel, 2),
                               atol=1e-5)
    np.testing.assert_allclose(sympad.padded_conv(x, odd, 2, padding="SYMMETRIC"), xla(odd, 2), atol=1e-5)
    with pytest.raises(ValueError, match=r"^padding must be one of \('SAME', 'SYMMETRIC'\)"):
        sympad.padded_conv(x, kernel, padding="VALID")
