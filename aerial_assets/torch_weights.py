"""Read PyTorch ``state_dict`` files into numpy arrays without installing torch.

torch is a multi-gigabyte download; the weights we need are plain tensors in a pickle. Both of
torch's on-disk formats are supported: the legacy one (a stream of pickles followed by raw
storages, used by torchvision's 2018-2019 releases such as ``mobilenet_v2-b0353104.pth``) and
the zip one (torch >= 1.6). Only tensors, ordered dicts and plain containers are unpickled:
any other global in the file is refused, so a hostile file cannot run code.
"""

from __future__ import annotations

import collections
import io
import pickle
import zipfile
from dataclasses import dataclass
from typing import Any, BinaryIO

import numpy as np

from aerial_assets.errors import BackboneError

_STORAGE_DTYPES = {
    "FloatStorage": np.float32,
    "DoubleStorage": np.float64,
    "HalfStorage": np.float16,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C


@dataclass
class _StorageType:
    dtype: Any


@dataclass
class _Storage:
    key: str
    dtype: Any
    numel: int
    data: np.ndarray | None = None


@dataclass
class _TensorRef:
    storage: _Storage
    offset: int
    size: tuple[int, ...]
    stride: tuple[int, ...]

    def to_numpy(self) -> np.ndarray:
        data = self.storage.data
        if data is None:
            raise BackboneError(f"tensor storage {self.storage.key} was never read: truncated weights file?")
        if not self.size:
            return np.array(data[self.offset], dtype=data.dtype)
        item = data.dtype.itemsize
        view = np.lib.stride_tricks.as_strided(
            data[self.offset:], shape=self.size, strides=tuple(s * item for s in self.stride)
        )
        return np.ascontiguousarray(view)


def _rebuild_tensor(storage: _Storage, offset: int, size: tuple, stride: tuple, *_: Any) -> _TensorRef:
    return _TensorRef(storage, int(offset), tuple(size), tuple(stride))


def _rebuild_parameter(data: _TensorRef, *_: Any) -> _TensorRef:
    return data


class _Unpickler(pickle.Unpickler):
    def __init__(self, file: BinaryIO, storages: dict[str, _Storage]):
        super().__init__(file)
        self._storages = storages

    def find_class(self, module: str, name: str) -> Any:
        if module == "collections" and name == "OrderedDict":
            return collections.OrderedDict
        if module == "torch._utils" and name in ("_rebuild_tensor_v2", "_rebuild_tensor"):
            return _rebuild_tensor
        if module == "torch._utils" and name == "_rebuild_parameter":
            return _rebuild_parameter
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(_STORAGE_DTYPES[name])
        if module == "torch" and name == "Size":
            return tuple
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a weights file")

    def persistent_load(self, pid: Any) -> Any:
        if not isinstance(pid, tuple) or pid[0] != "storage":
            raise pickle.UnpicklingError(f"unsupported persistent id {pid!r}")
        _, storage_type, key, _location, numel = pid[:5]
        key = str(key)
        if key not in self._storages:
            dtype = storage_type.dtype if isinstance(storage_type, _StorageType) else np.uint8
            self._storages[key] = _Storage(key=key, dtype=dtype, numel=int(numel))
        return self._storages[key]


def _collect(obj: Any) -> dict[str, np.ndarray]:
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise BackboneError("the weights file does not hold a state_dict (a mapping of names to tensors)")
    out: dict[str, np.ndarray] = {}
    for name, value in obj.items():
        if isinstance(value, _TensorRef):
            out[str(name)] = value.to_numpy()
    return out


def _load_legacy(raw: bytes) -> dict[str, np.ndarray]:
    stream = io.BytesIO(raw)
    if pickle.load(stream) != _LEGACY_MAGIC:  # noqa: S301 - magic number, an int
        raise BackboneError("not a PyTorch weights file (bad magic number)")
    pickle.load(stream)  # protocol version  # noqa: S301
    pickle.load(stream)  # sys info  # noqa: S301
    storages: dict[str, _Storage] = {}
    result = _Unpickler(stream, storages).load()
    keys = _Unpickler(stream, storages).load()
    for key in keys:
        storage = storages[str(key)]
        count = int.from_bytes(stream.read(8), "little")
        nbytes = count * np.dtype(storage.dtype).itemsize
        buf = stream.read(nbytes)
        if len(buf) != nbytes:
            raise BackboneError("the weights file is truncated: download it again")
        storage.data = np.frombuffer(buf, dtype=storage.dtype)
    return _collect(result)


def _load_zip(raw: bytes) -> dict[str, np.ndarray]:
    with zipfile.ZipFile(io.BytesIO(raw)) as archive:
        names = archive.namelist()
        pkl = next((n for n in names if n.endswith("/data.pkl") or n == "data.pkl"), None)
        if pkl is None:
            raise BackboneError("zip weights file without data.pkl: not a PyTorch checkpoint")
        prefix = pkl[: -len("data.pkl")]
        storages: dict[str, _Storage] = {}
        result = _Unpickler(io.BytesIO(archive.read(pkl)), storages).load()
        for key, storage in storages.items():
            storage.data = np.frombuffer(archive.read(f"{prefix}data/{key}"), dtype=storage.dtype)
    return _collect(result)


def load_state_dict(raw: bytes) -> dict[str, np.ndarray]:
    """Parse the bytes of a ``.pth`` file into ``{parameter name: array}``."""
    try:
        if raw[:2] == b"PK":
            return _load_zip(raw)
        return _load_legacy(raw)
    except (pickle.UnpicklingError, EOFError, KeyError, ValueError) as exc:
        raise BackboneError(f"cannot read the weights file: {exc}") from exc


def _frag(value: Any) -> bytes:
    """The pickle opcodes of a primitive value (no PROTO header, no STOP)."""
    return pickle.dumps(value, protocol=2)[2:-1]


def _global(module: str, name: str) -> bytes:
    return pickle.GLOBAL + f"{module}\n{name}\n".encode()


def save_state_dict_zip(state: dict[str, np.ndarray], archive_name: str = "archive") -> bytes:
    """Write ``state`` in torch's zip format, as ``torch.save(model.state_dict())`` does.

    Used by tests to make a randomly initialised ResNet-18 or AlexNet checkpoint without torch.
    The pickle is written opcode by opcode because the globals it names live in torch.
    """
    names = {np.dtype(v): k for k, v in _STORAGE_DTYPES.items()}
    empty_odict = _global("collections", "OrderedDict") + pickle.EMPTY_TUPLE + pickle.REDUCE
    body = bytearray(pickle.PROTO + b"\x02" + empty_odict + pickle.MARK)
    buffers: dict[str, bytes] = {}
    for idx, (name, array) in enumerate(state.items()):
        arr = np.ascontiguousarray(array)
        key = str(idx)
        buffers[key] = arr.tobytes()
        strides, acc = [], 1
        for dim in reversed(arr.shape):
            strides.insert(0, acc)
            acc *= dim
        storage_id = (
            pickle.MARK + _frag("storage") + _global("torch", names[arr.dtype]) + _frag(key) + _frag("cpu")
            + _frag(int(arr.size)) + pickle.TUPLE + pickle.BINPERSID
        )
        args = (
            pickle.MARK + storage_id + _frag(0) + _frag(tuple(int(d) for d in arr.shape))
            + _frag(tuple(strides)) + _frag(False) + empty_odict + pickle.TUPLE
        )
        body += _frag(name) + _global("torch._utils", "_rebuild_tensor_v2") + args + pickle.REDUCE
    body += pickle.SETITEMS + pickle.STOP
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_STORED) as archive:
        archive.writestr(f"{archive_name}/data.pkl", bytes(body))
        for key, blob in buffers.items():
            archive.writestr(f"{archive_name}/data/{key}", blob)
        archive.writestr(f"{archive_name}/version", "3\n")
    return out.getvalue()
