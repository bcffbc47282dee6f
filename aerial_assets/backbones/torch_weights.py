"""Read PyTorch ``state_dict`` files into numpy arrays without installing torch.

torch is a multi-gigabyte download; the weights we need are plain tensors in a pickle. Both of
torch's on-disk formats are supported: the legacy one (a stream of pickles followed by raw
storages, used by torchvision's 2018-2019 releases such as ``mobilenet_v2-b0353104.pth``) and
the zip one (torch >= 1.6).

A weights file may come from anywhere (``AERIAL_WEIGHTS_DIR`` is filled by hand), so it is treated
as hostile. Every pickle in it, the legacy header included, goes through :class:`_Unpickler`,
whose ``find_class`` resolves only the globals a torchvision state dict names (:data:`ALLOWED_GLOBALS`),
each to a function of this module that builds an inert record; any other global is refused by name
before anything is called, so a file cannot run code. The records are immutable (named tuples), so a
pickle's BUILD opcode cannot rewrite them after they were checked, and every tensor's offset, shape
and strides are checked against its storage before a single element is read: a file cannot make
the reader look outside its own bytes or blow a few bytes up into gigabytes.
"""

from __future__ import annotations

import collections
import io
import math
import pickle
import zipfile
from typing import Any, BinaryIO, NamedTuple

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
_LEGACY_PROTOCOL = 1001
#: Every global a torchvision state dict names; nothing else is ever resolved.
ALLOWED_GLOBALS = (
    ("collections", "OrderedDict"),
    ("torch._utils", "_rebuild_tensor_v2"),
    ("torch._utils", "_rebuild_parameter"),
    *(("torch", name) for name in _STORAGE_DTYPES),
)
_MAX_DIMS = 32  # numpy allows 64; no weight has more than 5
_MAX_INDEX = 2**48  # larger offsets, sizes or strides are not weights but an attempt to overflow
_MAX_PICKLE_BYTES = 64 << 20  # torchvision's data.pkl are tens of kB; the tensors are stored beside them
_MAX_STORAGE_BYTES = 8 << 30  # every storage together; AlexNet's are 233 MiB


class _StorageType(NamedTuple):
    """What a ``torch.<Type>Storage`` global resolves to: only its dtype (never callable)."""

    name: str
    dtype: Any


class _Storage(NamedTuple):
    """A storage named by a persistent id; its bytes are read later, by key, into a separate dict."""

    key: str
    dtype: Any
    numel: int


class _TensorRef(NamedTuple):
    """A view on a storage, checked to lie inside it when built (immutable, so it stays checked)."""

    storage: _Storage
    offset: int
    size: tuple[int, ...]
    stride: tuple[int, ...]

    def to_numpy(self, data: dict[str, np.ndarray]) -> np.ndarray:
        buf = data.get(self.storage.key)
        if buf is None:
            raise BackboneError(f"tensor storage {self.storage.key} was never read: truncated weights file?")
        if len(buf) != self.storage.numel:  # the loaders check this too; as_strided must never read beyond buf
            raise BackboneError(f"tensor storage {self.storage.key} holds {len(buf)} elements, not "
                                f"{self.storage.numel}: corrupt weights file")
        if not self.size:
            return np.array(buf[self.offset], dtype=buf.dtype)
        item = buf.dtype.itemsize
        view = np.lib.stride_tricks.as_strided(
            buf[self.offset:], shape=self.size, strides=tuple(s * item for s in self.stride), writeable=False
        )
        return np.ascontiguousarray(view)


def _index(value: Any, what: str) -> int:
    """``value`` as a non-negative index of sane size, or a refusal naming ``what``."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= _MAX_INDEX:
        raise pickle.UnpicklingError(f"tensor {what} {value!r} is not an index between 0 and {_MAX_INDEX}")
    return value


def _rebuild_tensor(storage: Any, offset: Any, size: Any, stride: Any, *_: Any) -> _TensorRef:
    """``torch._utils._rebuild_tensor_v2``: check the view against its storage, then record it.

    The highest element a view touches is ``offset + sum((size - 1) * stride)``; it must lie inside the
    storage's element count. A view may not have more elements than its storage either: a state dict
    holds no broadcast (stride 0) views, and refusing them keeps a tiny file from expanding into gigabytes.
    """
    if not isinstance(storage, _Storage):
        raise pickle.UnpicklingError(f"tensor data is {type(storage).__name__}, not a storage")
    if not isinstance(size, tuple) or not isinstance(stride, tuple):
        raise pickle.UnpicklingError("tensor size and stride must be tuples")
    if len(size) != len(stride) or len(size) > _MAX_DIMS:
        raise pickle.UnpicklingError(f"tensor size {size} and stride {stride} do not match (or have more than "
                                     f"{_MAX_DIMS} dimensions)")
    offset = _index(offset, "offset")
    size = tuple(_index(v, "size") for v in size)
    stride = tuple(_index(v, "stride") for v in stride)
    count = math.prod(size)
    if count == 0:
        last = offset - 1  # an empty view reads nothing; its offset may sit at the very end
    else:
        last = offset + sum((n - 1) * s for n, s in zip(size, stride, strict=True))
    if last >= storage.numel or count > storage.numel:
        raise pickle.UnpicklingError(
            f"tensor of shape {size} (stride {stride}, offset {offset}) does not fit in storage {storage.key} of "
            f"{storage.numel} elements: corrupt or hostile weights file"
        )
    return _TensorRef(storage, offset, size, stride)


def _rebuild_parameter(data: Any, *_: Any) -> _TensorRef:
    """``torch._utils._rebuild_parameter``: a parameter is its tensor."""
    if not isinstance(data, _TensorRef):
        raise pickle.UnpicklingError(f"parameter data is {type(data).__name__}, not a tensor")
    return data


def _ordered_dict(*args: Any) -> collections.OrderedDict:
    """``collections.OrderedDict``: at most one argument, a list of pairs (what pickle passes)."""
    if len(args) > 1 or (args and not isinstance(args[0], list | tuple)):
        raise pickle.UnpicklingError("OrderedDict built from something other than a list of pairs")
    return collections.OrderedDict(*args)


class _Unpickler(pickle.Unpickler):
    """An unpickler that resolves only :data:`ALLOWED_GLOBALS` (to this module's inert builders)."""

    def __init__(self, file: BinaryIO, storages: dict[str, _Storage]):
        super().__init__(file)
        self._storages = storages

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("collections", "OrderedDict"):
            return _ordered_dict
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _rebuild_tensor
        if (module, name) == ("torch._utils", "_rebuild_parameter"):
            return _rebuild_parameter
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(name, _STORAGE_DTYPES[name])
        allowed = ", ".join(f"{m}.{n}" for m, n in ALLOWED_GLOBALS[:3])
        raise pickle.UnpicklingError(
            f"refusing to load {module}.{name} from a weights file: only tensors ({allowed}, torch.<Type>Storage) "
            "may be unpickled; this is not a plain PyTorch state_dict (or it is hostile): use the original file"
        )

    def persistent_load(self, pid: Any) -> Any:
        if not isinstance(pid, tuple) or len(pid) < 5 or pid[0] != "storage":
            raise pickle.UnpicklingError(f"unsupported persistent id {pid!r}")
        _, storage_type, key, _location, numel = pid[:5]
        if not isinstance(storage_type, _StorageType):
            raise pickle.UnpicklingError(f"storage of unknown type {storage_type!r}")
        if len(pid) > 5 and pid[5] is not None:
            raise pickle.UnpicklingError("storage views (torch < 0.4 files) are not supported: re-save the weights")
        if not isinstance(key, str | int) or isinstance(key, bool):
            raise pickle.UnpicklingError(f"storage key {key!r} is not a name")
        storage = _Storage(str(key), storage_type.dtype, _index(numel, "storage size"))
        known = self._storages.setdefault(storage.key, storage)
        if known != storage:
            raise pickle.UnpicklingError(f"storage {storage.key} is declared twice, as {known} and {storage}")
        return known


def _unpickle(stream: BinaryIO, storages: dict[str, _Storage]) -> Any:
    """One pickle from ``stream``, through the restricted unpickler (never ``pickle.load``)."""
    return _Unpickler(stream, storages).load()


def _collect(obj: Any, data: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise BackboneError("the weights file does not hold a state_dict (a mapping of names to tensors)")
    out: dict[str, np.ndarray] = {}
    for name, value in obj.items():
        if isinstance(value, _TensorRef):
            out[str(name)] = value.to_numpy(data)
    return out


def _storage_bytes(storage: _Storage, total: int) -> int:
    """Bytes of ``storage``; refuses when all storages together pass :data:`_MAX_STORAGE_BYTES`."""
    nbytes = storage.numel * np.dtype(storage.dtype).itemsize
    if total + nbytes > _MAX_STORAGE_BYTES:
        raise BackboneError(f"the weights file declares more than {_MAX_STORAGE_BYTES >> 30} GiB of tensors: "
                            "not a backbone's weights")
    return nbytes


def _load_legacy(raw: bytes) -> dict[str, np.ndarray]:
    stream = io.BytesIO(raw)
    header: dict[str, _Storage] = {}  # the header holds numbers and a dict; a storage there is refused below
    if _unpickle(stream, header) != _LEGACY_MAGIC:
        raise BackboneError("not a PyTorch weights file (bad magic number)")
    if _unpickle(stream, header) != _LEGACY_PROTOCOL:
        raise BackboneError("unsupported PyTorch legacy protocol version: re-save the weights with torch.save")
    if not isinstance(_unpickle(stream, header), dict) or header:  # sys info
        raise BackboneError("not a PyTorch weights file (bad header)")
    storages: dict[str, _Storage] = {}
    result = _unpickle(stream, storages)
    keys = _unpickle(stream, storages)
    if not isinstance(keys, list):
        raise BackboneError("not a PyTorch weights file (no list of storages)")
    data: dict[str, np.ndarray] = {}
    total = 0
    for key in keys:
        storage = storages[str(key)]
        count = int.from_bytes(stream.read(8), "little")
        if count != storage.numel:
            raise BackboneError(f"storage {storage.key} holds {count} elements, its tensors say {storage.numel}: "
                                "corrupt weights file")
        nbytes = _storage_bytes(storage, total)
        total += nbytes
        buf = stream.read(nbytes)
        if len(buf) != nbytes:
            raise BackboneError("the weights file is truncated: download it again")
        data[storage.key] = np.frombuffer(buf, dtype=storage.dtype)
    return _collect(result, data)


def _load_zip(raw: bytes) -> dict[str, np.ndarray]:
    with zipfile.ZipFile(io.BytesIO(raw)) as archive:
        names = archive.namelist()
        pkl = next((n for n in names if n.endswith("/data.pkl") or n == "data.pkl"), None)
        if pkl is None:
            raise BackboneError("zip weights file without data.pkl: not a PyTorch checkpoint")
        if archive.getinfo(pkl).file_size > _MAX_PICKLE_BYTES:
            raise BackboneError(f"{pkl} is larger than {_MAX_PICKLE_BYTES >> 20} MiB: not a state_dict")
        prefix = pkl[: -len("data.pkl")]
        storages: dict[str, _Storage] = {}
        result = _unpickle(io.BytesIO(archive.read(pkl)), storages)
        data: dict[str, np.ndarray] = {}
        total = 0
        for key, storage in storages.items():
            member = f"{prefix}data/{key}"
            nbytes = _storage_bytes(storage, total)
            total += nbytes
            stored = archive.getinfo(member).file_size  # checked before reading: no zip bomb is inflated
            if stored != nbytes:
                raise BackboneError(f"storage {key} holds {stored} bytes, its tensors say {nbytes} "
                                    f"({storage.numel} x {np.dtype(storage.dtype).name}): corrupt weights file")
            data[storage.key] = np.frombuffer(archive.read(member), dtype=storage.dtype)
    return _collect(result, data)


def load_state_dict(raw: bytes) -> dict[str, np.ndarray]:
    """Parse the bytes of a ``.pth`` file into ``{parameter name: array}``; no code in the file runs."""
    try:
        if raw[:2] == b"PK":
            return _load_zip(raw)
        return _load_legacy(raw)
    except (pickle.UnpicklingError, EOFError, KeyError, ValueError, TypeError, IndexError, AttributeError,
            zipfile.BadZipFile, RecursionError, MemoryError) as exc:
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
