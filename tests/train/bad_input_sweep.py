"""Bad-input sweep (issue 16 item 6): library arguments and config fields with wrong values.

    python -m tests.train.bad_input_sweep > sweep.txt

Prints the counts, then one row per case: what was tried | outcome | the message's first line.
``named``: an error naming the argument/field; ``UNNAMED``: an error that does not; ``ACCEPTED``:
no error (legitimate for some: -n cadences mean epochs, width_multiplier <= 0 the default).
"(not user error, ...)" marks errors that ``sympad.train.errors`` would print with a traceback.
Not collected by pytest; the cases that must hold are in test_validate.py and
tests/library/test_bad_arguments.py.
"""
import importlib
import traceback

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

import sympad
from sympad import linen as slinen
from sympad import nnx as snnx
from sympad.train.errors import is_user_error


def main() -> None:
    rows = []
    def run(label, arg, fn):
        try:
            out = fn()
            if hasattr(out, "block_until_ready"): out.block_until_ready()
            rows.append((label, "ACCEPTED", ""))
        except Exception as e:  # noqa: BLE001 - the sweep records whatever each case raises
            msg = str(e).splitlines()[0][:150] if str(e) else type(e).__name__
            tb = traceback.extract_tb(e.__traceback__)[-1]
            where = f"{tb.filename.split('site-packages/')[-1].split('/valid/')[-1]}:{tb.lineno}"
            names = arg.lower() in str(e).lower()
            status = ("named" if names else "UNNAMED") + ("" if is_user_error(e) else f" (not user error, {type(e).__name__} @ {where})")
            rows.append((label, status, msg))

    x = jnp.ones((1, 8, 8, 4)); k = jnp.ones((2, 2, 4, 6))
    L = [
     ("sym_pad_conv x=3-d", "x", lambda: sympad.sym_pad_conv(jnp.ones((8, 8, 4)), k)),
     ("sym_pad_conv x=list", "x", lambda: sympad.sym_pad_conv([[1.0]], k)),
     ("sym_pad_conv kernel channels mismatch", "kernel", lambda: sympad.sym_pad_conv(x, jnp.ones((2, 2, 3, 6)))),
     ("sym_pad_conv kernel 3-d", "kernel", lambda: sympad.sym_pad_conv(x, jnp.ones((2, 4, 6)))),
     ("sym_pad_conv strides=0", "strides", lambda: sympad.sym_pad_conv(x, k, 0)),
     ("sym_pad_conv strides=-1", "strides", lambda: sympad.sym_pad_conv(x, k, -1)),
     ("sym_pad_conv strides=(1,1,1)", "strides", lambda: sympad.sym_pad_conv(x, k, (1, 1, 1))),
     ("sym_pad_conv strides=1.5", "strides", lambda: sympad.sym_pad_conv(x, k, 1.5)),
     ("sym_pad_conv strides='2'", "strides", lambda: sympad.sym_pad_conv(x, k, "2")),
     ("sym_pad_conv kernel_dilation=0", "kernel_dilation", lambda: sympad.sym_pad_conv(x, k, kernel_dilation=0)),
     ("sym_pad_conv kernel_dilation=(1,)", "kernel_dilation", lambda: sympad.sym_pad_conv(x, k, kernel_dilation=(1,))),
     ("sym_pad_conv feature_group_count=0", "feature_group_count", lambda: sympad.sym_pad_conv(x, k, feature_group_count=0)),
     ("sym_pad_conv feature_group_count=3", "feature_group_count", lambda: sympad.sym_pad_conv(x, k, feature_group_count=3)),
     ("sym_pad_conv feature_group_count=2.0", "feature_group_count", lambda: sympad.sym_pad_conv(x, jnp.ones((2, 2, 2, 6)), feature_group_count=2.0)),
     ("sym_pad_conv dimension_numbers=('NCHW',)", "dimension_numbers", lambda: sympad.sym_pad_conv(x, k, dimension_numbers=("NCHW",))),
     ("sym_pad_conv dimension_numbers bad letters", "dimension_numbers", lambda: sympad.sym_pad_conv(x, k, dimension_numbers=("NHWC", "HWXY", "NHWC"))),
     ("sym_pad_conv implementation='fast'", "implementation", lambda: sympad.sym_pad_conv(x, k, implementation="fast")),
     ("sym_pad_conv precision='ultra'", "precision", lambda: sympad.sym_pad_conv(x, k, precision="ultra")),
     ("sym_pad_conv preferred_element_type='int9'", "preferred_element_type", lambda: sympad.sym_pad_conv(x, k, preferred_element_type="int9")),
     ("symmetric_pad x=2-d", "x", lambda: sympad.symmetric_pad(jnp.ones((8, 4)), (2, 2))),
     ("symmetric_pad kernel_size=(0,2)", "kernel_size", lambda: sympad.symmetric_pad(x, (0, 2))),
     ("symmetric_pad kernel_size=(-2,2)", "kernel_size", lambda: sympad.symmetric_pad(x, (-2, 2))),
     ("symmetric_pad kernel_size=2 (int)", "kernel_size", lambda: sympad.symmetric_pad(x, 2)),
     ("symmetric_pad kernel_size=(2,2,2) for 2-d x", "kernel_size", lambda: sympad.symmetric_pad(x, (2, 2, 2))),
     ("symmetric_pad kernel_size=('a',2)", "kernel_size", lambda: sympad.symmetric_pad(x, ("a", 2))),
     ("symmetric_pad feature_group_count=3", "feature_group_count", lambda: sympad.symmetric_pad(x, (2, 2), feature_group_count=3)),
     ("symmetric_pad kernel_dilation=-1", "kernel_dilation", lambda: sympad.symmetric_pad(x, (2, 2), kernel_dilation=-1)),
     ("shift_directions channels=0", "channels", lambda: sympad.shift_directions(0, (2, 2))),
     ("shift_directions channels=-4", "channels", lambda: sympad.shift_directions(-4, (2, 2))),
     ("shift_directions channels=2.5", "channels", lambda: sympad.shift_directions(2.5, (2, 2))),
     ("shift_directions channels='4'", "channels", lambda: sympad.shift_directions("4", (2, 2))),
     ("shift_directions kernel_size=()", "kernel_size", lambda: sympad.shift_directions(4, ())),
     ("shift_directions kernel_size=(0,2)", "kernel_size", lambda: sympad.shift_directions(4, (0, 2))),
     ("shift_directions kernel_size=2 (int)", "kernel_size", lambda: sympad.shift_directions(4, 2)),
     ("shift_directions feature_group_count=3", "feature_group_count", lambda: sympad.shift_directions(4, (2, 2), feature_group_count=3)),
     ("shift_directions kernel_dilation=(1,2,3)", "kernel_dilation", lambda: sympad.shift_directions(4, (2, 2), kernel_dilation=(1, 2, 3))),
     ("channel_pads channels=0", "channels", lambda: sympad.channel_pads(0, (2, 2))),
     ("channel_pads kernel_size=(2,-2)", "kernel_size", lambda: sympad.channel_pads(4, (2, -2))),
     ("channel_pads kernel_size=2 (int)", "kernel_size", lambda: sympad.channel_pads(4, 2)),
     ("channel_pads kernel_dilation=0", "kernel_dilation", lambda: sympad.channel_pads(4, (2, 2), kernel_dilation=0)),
     ("channel_pads feature_group_count=-1", "feature_group_count", lambda: sympad.channel_pads(4, (2, 2), feature_group_count=-1)),
     ("parse_kind 'C0'", "kind", lambda: sympad.parse_kind("C0")),
     ("parse_kind 'C2SP'", "kind", lambda: sympad.parse_kind("C2SP")),
     ("parse_kind 'c3'", "kind", lambda: sympad.parse_kind("c3")),
     ("parse_kind ''", "kind", lambda: sympad.parse_kind("")),
     ("parse_kind 3", "kind", lambda: sympad.parse_kind(3)),
     ("parse_kind None", "kind", lambda: sympad.parse_kind(None)),
     ("parse_kind 'C3sp' (odd sp)", "kind", lambda: sympad.parse_kind("C3sp")),
     ("linen.conv kind='C9x'", "kind", lambda: slinen.conv("C9x", 8)),
     ("linen.conv features=0", "features", lambda: slinen.conv("C2sp", 0).init(jax.random.key(0), x)),
     ("linen.conv features=-3", "features", lambda: slinen.conv("C2sp", -3).init(jax.random.key(0), x)),
     ("linen.conv spatial_dims=0", "spatial_dims", lambda: slinen.conv("C2sp", 8, spatial_dims=0)),
     ("linen.conv spatial_dims=2.0", "spatial_dims", lambda: slinen.conv("C2sp", 8, spatial_dims=2.0)),
     ("linen.conv bogus kwarg", "paddding", lambda: slinen.conv("C2sp", 8, paddding="SAME")),
     ("linen.conv strides=0", "strides", lambda: slinen.conv("C2sp", 8, strides=0).init(jax.random.key(0), x)),
     ("linen.conv implementation='x'", "implementation", lambda: slinen.conv("C2sp", 8, implementation="x").init(jax.random.key(0), x)),
     ("linen.SymPadConv kernel_size=0", "kernel_size", lambda: slinen.SymPadConv(8, 0).init(jax.random.key(0), x)),
     ("linen.SymPadConv input rank 1", "inputs", lambda: slinen.SymPadConv(8, (2, 2)).init(jax.random.key(0), jnp.ones((4,)))),
     ("nnx.conv kind='C2s'", "kind", lambda: snnx.conv("C2s", 4, 8, rngs=nnx.Rngs(0))),
     ("nnx.conv in_features=0", "in_features", lambda: snnx.conv("C2sp", 0, 8, rngs=nnx.Rngs(0))),
     ("nnx.conv out_features=-1", "out_features", lambda: snnx.conv("C2sp", 4, -1, rngs=nnx.Rngs(0))),
     ("nnx.conv spatial_dims=-1", "spatial_dims", lambda: snnx.conv("C2sp", 4, 8, spatial_dims=-1, rngs=nnx.Rngs(0))),
     ("nnx.conv rngs=None", "rngs", lambda: snnx.conv("C2sp", 4, 8, rngs=None)),
     ("nnx.conv in_features mismatch at call", "in_features", lambda: snnx.conv("C2sp", 3, 8, rngs=nnx.Rngs(0))(x)),
    ]
    for label, arg, fn in L:
        run("lib: " + label, arg, fn)

    # Config fields: every leaf of both suites' configs, with wrong values of each kind.
    def leaves(d, prefix=""):
        for k, v in d.items():
            if isinstance(v, dict): yield from leaves(v, prefix + k + ".")
            else: yield prefix + k, v
    def bad_values(v):
        if isinstance(v, bool): return ["yes", 2]
        if isinstance(v, int): return [-7, 1.5, "x"]
        if isinstance(v, float): return [-1.0, float("nan"), "x"]
        if isinstance(v, str): return [3, "no such value"]
        if isinstance(v, (tuple, list)): return [("a",), 5]
        return [object()]
    for suite, cfg in (("gan", "sngan_cifar10"), ("classify", "resnet_cifar")):
        validate = importlib.import_module(f"{suite}.train").validate
        base = importlib.import_module(f"configs.{suite}.{cfg}").get_config("runlocal")
        for name, v in leaves(base.to_dict()):
            for bad in bad_values(v):
                d = base.to_dict(); h = d
                *ps, leaf = name.split(".")
                for p in ps: h = h[p]
                h[leaf] = bad
                run(f"{suite}: config.{name}={bad!r}", f"config.{name}", lambda validate=validate, d=d: validate(ml_collections.ConfigDict(d)))

    import collections
    c = collections.Counter(r[1].split(" (")[0] for r in rows)
    print("COUNTS", dict(c), "total", len(rows))
    for r in rows: print(" | ".join(r))


if __name__ == "__main__":
    main()
