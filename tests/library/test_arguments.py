"""Every public function of sympad.ops and sympad.kinds names a bad argument, its value and what
is allowed, in one ValueError, instead of a bare
TypeError from deep inside or a silent wrong answer; valid input gives what it always gave."""

from __future__ import annotations

import re

import jax.numpy as jnp
import numpy as np
import pytest

import sympad
from tests.reference import reference_conv, reference_pads

X = jnp.ones((1, 5, 5, 4))
K = jnp.ones((2, 2, 4, 3))
ALLOWED_KERNEL_SIZE = "kernel_size must be a non-empty sequence of positive ints, one per spatial axis"


def _raises(fn, needle, error=ValueError):
    with pytest.raises(error, match=re.escape(needle)):
        fn()


# --- kernel_size ---------------------------------------------------------------------------------


@pytest.mark.parametrize("fn", [sympad.shift_directions, sympad.channel_pads], ids=["shift_directions", "channel_pads"])
@pytest.mark.parametrize(
    ("kernel_size", "needle"),
    [
        (2, f"{ALLOWED_KERNEL_SIZE}, e.g. (2, 2) "
            "(an int does not say how many axes: (2,) for 1D, (2, 2) for 2D); got 2"),
        ((), f"{ALLOWED_KERNEL_SIZE}, e.g. (2, 2); got ()"),
        ("22", "; got '22'"),  # not silently (2, 2)
        ((2.5, 2), "; got (2.5, 2)"),  # not silently (2, 2)
        ((2, 0), "; got (2, 0)"),
        ((True, 2), "; got (True, 2)"),
        (None, "; got None"),
    ],
)
def test_kernel_size_without_an_input(fn, kernel_size, needle):
    _raises(lambda: fn(4, kernel_size), ALLOWED_KERNEL_SIZE)
    _raises(lambda: fn(4, kernel_size), needle)


@pytest.mark.parametrize(
    ("kernel_size", "needle"),
    [
        ((), f"{ALLOWED_KERNEL_SIZE}, e.g. (2, 2); got ()"),
        (0, "kernel_size must be positive, got 0"),
        ((2, "2"), "got (2, '2')"),
        ((2, 2, 2), "x must have shape (N, *spatial, C) with 3 spatial dims for kernel_size=(2, 2, 2)"),
    ],
)
def test_symmetric_pad_kernel_size(kernel_size, needle):
    _raises(lambda: sympad.symmetric_pad(X, kernel_size), needle)


def test_symmetric_pad_int_kernel_size_needs_a_spatial_axis():
    _raises(lambda: sympad.symmetric_pad(jnp.ones((2, 4)), 2),
            "x must have shape (N, *spatial, C) with at least one spatial dim")


# --- channels ------------------------------------------------------------------------------------


@pytest.mark.parametrize("fn", [sympad.shift_directions, sympad.channel_pads], ids=["shift_directions", "channel_pads"])
@pytest.mark.parametrize("channels", ["4", 0, -1, 4.0, True, None])
def test_channels(fn, channels):
    _raises(lambda: fn(channels, (2, 2)),
            f"channels must be a positive int (the number of input channels), got {channels!r}")


def test_channels_of_x():
    _raises(lambda: sympad.symmetric_pad(jnp.ones((1, 5, 5, 0)), (2, 2)),
            "x must have at least one channel, got shape (1, 5, 5, 0)")
    _raises(
        lambda: sympad.sym_pad_conv(jnp.ones((1, 5, 5, 0)), jnp.ones((2, 2, 0, 3))),
        "x must have at least one channel, got shape (1, 5, 5, 0) (layout NHWC)",
    )


# --- strides, dilation, groups -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        # (1.5, 1.5) was once truncated to 1.
        ({"strides": (1.5, 1.5)}, "strides must be an int or a sequence of 2 ints, got (1.5, 1.5)"),
        ({"strides": True}, "strides must be an int or a sequence of 2 ints, got True"),
        ({"strides": "SAME"}, "got 'SAME' (the padding is always the symmetric 'SAME'; there is no padding argument)"),
        ({"strides": "22"}, "strides must be an int or a sequence of 2 ints, got '22'"),
        ({"strides": (1, 0)}, "strides must be positive, got (1, 0)"),
        ({"kernel_dilation": (1, 2.0)}, "kernel_dilation must be an int or a sequence of 2 ints, got (1, 2.0)"),
        ({"kernel_dilation": (1,)}, "kernel_dilation must have one entry per spatial dimension (2), got (1,)"),
        ({"feature_group_count": True}, "feature_group_count must be a positive int, got True"),
        ({"feature_group_count": 2.0}, "feature_group_count must be a positive int, got 2.0"),
        ({"implementation": "fast"}, "implementation must be one of ('auto',"),
    ],
)
def test_sym_pad_conv_arguments(kwargs, needle):
    _raises(lambda: sympad.sym_pad_conv(X, K, **kwargs), needle)


@pytest.mark.parametrize("fn", [sympad.shift_directions, sympad.channel_pads], ids=["shift_directions", "channel_pads"])
def test_dilation_and_groups_without_an_input(fn):
    _raises(lambda: fn(4, (2, 2), kernel_dilation=(1, 1.5)),
            "kernel_dilation must be an int or a sequence of 2 ints, got (1, 1.5)")
    _raises(lambda: fn(4, (2, 2), feature_group_count=0), "feature_group_count must be a positive int, got 0")
    _raises(lambda: fn(4, (2, 2), feature_group_count=3),
            "input channels (4) must be divisible by feature_group_count (3)")


def test_symmetric_pad_dilation_and_groups():
    _raises(lambda: sympad.symmetric_pad(X, 2, kernel_dilation=0), "kernel_dilation must be positive, got 0")
    _raises(lambda: sympad.symmetric_pad(X, 2, feature_group_count="2"),
            "feature_group_count must be a positive int, got '2'")


# --- choose_implementation, use_implementation ---------------------------------------------------


@pytest.mark.parametrize(
    ("x", "kernel", "kwargs", "needle"),
    [
        (jnp.ones((5, 4)), K, {},
         "x must be channels-last (N, *spatial, C) with 1, 2 or 3 spatial dims, got shape (5, 4)"),
        (3, K, {}, "got 'int' object without .shape"),
        (X, jnp.ones((2, 4, 3)), {}, "kernel must have the rank of x (4), got shape (2, 4, 3)"),
        (X, K, {"feature_group_count": 0}, "feature_group_count must be a positive int, got 0"),
        (X, K, {"feature_group_count": 3}, "input channels (4) must be divisible by feature_group_count (3)"),
    ],
)
def test_choose_implementation_arguments(x, kernel, kwargs, needle):
    _raises(lambda: sympad.choose_implementation(x, kernel, **kwargs), needle)


def test_use_implementation_name():
    def enter():
        with sympad.use_implementation("padselect"):
            pass

    _raises(enter, "implementation must be one of ('auto', 'pad_select',")


# --- kinds ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["c2sp", "C2SP", "C0", "C2 sp", "", None, 2])
def test_parse_kind(kind):
    _raises(lambda: sympad.parse_kind(kind),
            f"unknown kernel kind {kind!r}: expected 'C<k>' (k x k, 'SAME' padding) or 'C<k>sp'")


def test_kernel_kind_fields():
    _raises(lambda: sympad.KernelKind(0, "SYMMETRIC"), "size must be a positive int, got 0")
    _raises(lambda: sympad.KernelKind(2.0, "SYMMETRIC"), "size must be a positive int, got 2.0")
    _raises(lambda: sympad.KernelKind(2, True), "padding must be one of ('SAME', 'SYMMETRIC'), got True")


# --- valid input: what it always gave ------------------------------------------------------------


def test_int_kernel_size_is_square_in_symmetric_pad():
    x = np.random.default_rng(0).standard_normal((2, 5, 6, 4)).astype(np.float32)
    square = sympad.symmetric_pad(x, 2)
    np.testing.assert_array_equal(square, sympad.symmetric_pad(x, (2, 2)))
    expected = np.stack(
        [np.pad(x[..., c], [(0, 0), *map(tuple, pads)]) for c, pads in enumerate(reference_pads(4, (2, 2), (1, 1), 1))],
        axis=-1,
    )
    np.testing.assert_array_equal(square, expected)


@pytest.mark.parametrize(
    ("channels", "kernel_size", "dilation", "groups"),
    [(6, (2, 2), 1, 1), (np.int64(8), np.array([4, 3]), (1, 2), 2), (3, [2], 1, 3), (5, (2, 3, 2), 1, 1)],
)
def test_channel_pads_match_the_reference(channels, kernel_size, dilation, groups):
    dilation_t = (dilation,) * len(kernel_size) if isinstance(dilation, int) else dilation
    got = sympad.channel_pads(channels, kernel_size, kernel_dilation=dilation, feature_group_count=groups)
    want = reference_pads(int(channels), tuple(kernel_size), dilation_t, groups)
    np.testing.assert_array_equal(got, np.asarray(want))
    dirs = sympad.shift_directions(channels, kernel_size, kernel_dilation=dilation, feature_group_count=groups)
    assert dirs.shape == (channels, len(kernel_size))


@pytest.mark.parametrize("strides", [1, (np.int64(2), 1), np.array([1, 2])])
def test_sym_pad_conv_numpy_int_strides_match_the_reference(strides):
    rng = np.random.default_rng(1)
    x, w = rng.standard_normal((1, 5, 6, 4)).astype(np.float32), rng.standard_normal((2, 2, 4, 3)).astype(np.float32)
    strides_t = (strides,) * 2 if isinstance(strides, int) else tuple(int(s) for s in strides)
    got = sympad.sym_pad_conv(x, w, strides, implementation="pad_select")
    np.testing.assert_allclose(got, reference_conv(x, w, strides_t, (1, 1)), rtol=1e-5, atol=1e-5)
