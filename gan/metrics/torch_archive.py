"""Reads tensors from torch files without torch: TorchScript archives and ``torch.save`` files.

Both keep their object tree in a pickle that points at raw tensor storages:

- zip format (``torch.save`` since torch 1.6 and every TorchScript ``.pt``): ``<root>/data.pkl``
  plus one member ``<root>/data/<key>`` of raw little-endian bytes per storage;
- legacy format (``torch.save`` before 1.6, e.g. pytorch-fid's 2019 weights): a stream of pickles
  (magic number, protocol, system info, the object tree, the storage keys) followed by each
  storage as an int64 element count and its raw bytes.

The unpickler here is restricted: it builds NumPy arrays for ``torch._utils._rebuild_tensor_v2``
(and ``_rebuild_parameter``), inert attribute holders for TorchScript module classes
(``__torch__.*``), ``collections.OrderedDict`` and TorchScript's list builders, and refuses every
other global, so a crafted file cannot run code. The result is flattened to
``{'dotted.name': array}`` with the module attribute or dictionary key names.
"""

from __future__ import annotations

import collections
import io
import os
import pickle
import struct
import zipfile
from collections.abc import Iterator
from typing import Any, BinaryIO

import numpy as np

__all__ = ["read_torch_tensors"]

# torch storage class name → little-endian NumPy dtype.
_STORAGE_DTYPES = {
    "FloatStorage": "<f4", "DoubleStorage": "<f8", "HalfStorage": "<f2", "LongStorage": "<i8",
    "IntStorage": "<i4", "ShortStorage": "<i2", "CharStorage": "i1", "ByteStorage": "u1", "BoolStorage": "?",
}
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL = 1001


class _StorageType:
    """Stands for ``torch.FloatStorage`` & co. in persistent ids: only the dtype matters."""

    def __init__(self, name: str):
        self.name, self.dtype = name, np.dtype(_STORAGE_DTYPES[name])


class _ScriptObject:
    """A TorchScript module or object: holds the pickled attribute dict, runs nothing."""

    def __init__(self, *args: Any):
        if args:
            raise pickle.UnpicklingError("TorchScript objects are built without arguments")
        self.state: dict[str, Any] = {}

    def __setstate__(self, state: Any) -> None:
        if not isinstance(state, dict):
            raise pickle.UnpicklingError(f"TorchScript object state must be a dict, got {type(state).__name__}")
        self.state = state


class _LazyTensor:
    """A tensor view (offset, size, stride) into a storage that may not be read yet (legacy format)."""

    def __init__(self, storage: list, offset: int, size: tuple, stride: tuple):
        self.storage, self.offset, self.size, self.stride = storage, int(offset), tuple(size), tuple(stride)

    def materialize(self) -> np.ndarray:
        data = self.storage[0]
        if data is None:
            raise ValueError("a tensor's storage is missing from the file (truncated?)")
        if not self.size:
            return data[self.offset].copy()
        last = self.offset + sum((n - 1) * s for n, s in zip(self.size, self.stride)) if all(self.size) else -1
        if self.offset < 0 or min(self.stride, default=0) < 0 or last >= data.shape[0]:
            raise ValueError(f"tensor view {self.size}/{self.stride}+{self.offset} exceeds its storage "
                             f"of {data.shape[0]} elements")
        view = np.lib.stride_tricks.as_strided(
            data[self.offset:], shape=self.size, strides=[s * data.itemsize for s in self.stride])
        return np.array(view)


def _rebuild_tensor_v2(storage: list, storage_offset: int, size: tuple, stride: tuple, requires_grad: bool,
                       backward_hooks: Any, metadata: Any = None) -> _LazyTensor:
    del requires_grad, backward_hooks, metadata
    if not isinstance(storage, list) or len(storage) != 2:
        raise pickle.UnpicklingError("_rebuild_tensor_v2: storage is not a persistent storage reference")
    return _LazyTensor(storage, storage_offset, size, stride)


def _rebuild_parameter(data: _LazyTensor, requires_grad: bool, backward_hooks: Any) -> _LazyTensor:
    del requires_grad, backward_hooks
    return data


_ALLOWED = {
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch.jit._pickle", "build_intlist"): list,
    ("torch.jit._pickle", "build_floatlist"): list,
    ("torch.jit._pickle", "build_boollist"): list,
    ("torch.jit._pickle", "build_doublelist"): list,
}


class _Unpickler(pickle.Unpickler):
    """Builds the object tree; storages are ``[array or None, dtype]`` cells shared by key."""

    def __init__(self, file: BinaryIO, storages: dict[str, list]):
        super().__init__(file)
        self.storages = storages

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED:
            return _ALLOWED[(module, name)]
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(name)
        if module.startswith("__torch__.") or module == "__torch__":
            return _ScriptObject
        raise pickle.UnpicklingError(f"refusing to load global {module}.{name}: not a tensor or module "
                                     "attribute (the file may be malicious or not a weights file)")

    def persistent_load(self, pid: Any) -> Any:
        if not (isinstance(pid, tuple) and pid and pid[0] == "storage"):
            if isinstance(pid, tuple) and pid and pid[0] == "module":
                return None  # legacy files record module source for a version check; not needed
            raise pickle.UnpicklingError(f"unsupported persistent id {pid!r:.80}")
        storage_type, key = pid[1], str(pid[2])
        if not isinstance(storage_type, _StorageType):
            raise pickle.UnpicklingError(f"unsupported storage type {storage_type!r:.80}")
        view = pid[5] if len(pid) > 5 else None
        if view is not None:
            raise pickle.UnpicklingError("storage views (pre-1.0 torch files) are not supported")
        return self.storages.setdefault(key, [None, storage_type.dtype])


def _flatten(obj: Any, prefix: str = "") -> Iterator[tuple[str, np.ndarray]]:
    if isinstance(obj, _LazyTensor):
        yield prefix, obj.materialize()
    elif isinstance(obj, _ScriptObject):
        yield from _flatten(getattr(obj, "state", {}), prefix)
    elif isinstance(obj, dict):
        for key, value in obj.items():
            yield from _flatten(value, f"{prefix}.{key}" if prefix else str(key))


def _read_zip(path: str | os.PathLike, zf: zipfile.ZipFile) -> Any:
    pkls = [n for n in zf.namelist() if n.endswith("/data.pkl") and n.count("/") == 1]
    if len(pkls) != 1:
        raise ValueError(f"{path}: not a torch zip archive (expected one <root>/data.pkl, found {pkls})")
    root = pkls[0].split("/")[0]
    storages: dict[str, list] = {}
    tree = _Unpickler(io.BytesIO(zf.read(pkls[0])), storages).load()
    for key, cell in storages.items():
        try:
            raw = zf.read(f"{root}/data/{key}")
        except KeyError as e:
            raise ValueError(f"{path}: storage {key} is missing from the archive") from e
        cell[0] = np.frombuffer(raw[: len(raw) - len(raw) % cell[1].itemsize], cell[1])
    return tree


def _read_legacy(path: str | os.PathLike, f: BinaryIO) -> Any:
    def plain_load() -> Any:
        return _Unpickler(f, {}).load()

    try:
        magic = plain_load()
    except Exception as e:
        raise ValueError(f"{path}: neither a zip archive nor a legacy torch.save file ({e})") from e
    if magic != _LEGACY_MAGIC:
        raise ValueError(f"{path}: neither a zip archive nor a legacy torch.save file (bad magic number)")
    if plain_load() != _LEGACY_PROTOCOL:
        raise ValueError(f"{path}: unsupported legacy torch.save protocol")
    sys_info = plain_load()
    if isinstance(sys_info, dict) and not sys_info.get("little_endian", True):
        raise ValueError(f"{path}: big-endian torch files are not supported")
    storages: dict[str, list] = {}
    tree = _Unpickler(f, storages).load()
    keys = plain_load()
    for key in keys:
        cell = storages.get(str(key))
        if cell is None:
            raise ValueError(f"{path}: storage {key} listed but never referenced")
        header = f.read(8)
        if len(header) != 8:
            raise ValueError(f"{path}: truncated before storage {key}")
        (numel,) = struct.unpack("<q", header)
        raw = f.read(numel * cell[1].itemsize)
        if len(raw) != numel * cell[1].itemsize:
            raise ValueError(f"{path}: truncated inside storage {key}")
        cell[0] = np.frombuffer(raw, cell[1])
    return tree


def read_torch_tensors(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Every tensor in a TorchScript archive or ``torch.save`` file, by dotted attribute/key path.

    Args:
      path: a TorchScript ``.pt`` (``torch.jit.save``) or a ``torch.save`` file of (nested) dicts
        of tensors, zip or legacy format.

    Returns:
      ``{name: array}`` with NumPy arrays in the tensors' dtypes and shapes (copies, contiguous).
      Non-tensor attributes (ints, flags, lists) are skipped.

    Raises:
      ValueError: the file is neither format, or is truncated/inconsistent.
      pickle.UnpicklingError: the pickle names anything but tensors, storages, dicts and
        TorchScript module classes.
    """
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as zf:
            tree = _read_zip(path, zf)
    else:
        with open(path, "rb") as f:
            tree = _read_legacy(path, f)
    tensors = dict(_flatten(tree))
    if not tensors:
        raise ValueError(f"{path}: contains no tensors")
    return tensors
