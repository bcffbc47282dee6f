"""Read weights stored as a plain pickle of numpy arrays (``ndf``'s SqueezeNet) without running code.

``pickle.load`` on a file from a package would execute whatever globals it names. This unpickler
resolves only what numpy arrays need (``numpy.core.multiarray._reconstruct``, ``numpy.ndarray``,
``numpy.dtype``; dicts, lists and tuples are pickle opcodes, not globals) and refuses anything else,
and nothing it resolves is numpy's own callable: ``numpy.ndarray`` becomes an inert marker (calling
the real constructor from a pickle could allocate any shape), ``numpy.dtype`` a record of a numeric
dtype only (no object arrays, whose elements a pickle chooses; no live dtype whose state a pickle
could rewrite), and ``_reconstruct`` a record of the empty array numpy's own pickles start from.
What BUILD then fills in is checked (shape, dtype, byte count) and copied into a fresh array. Every
pickle in the file goes through this unpickler; there is no ``pickle.load`` anywhere on this path.
"""

from __future__ import annotations

import io
import math
import pickle
from typing import Any

import numpy as np

from aerial_assets.errors import BackboneError

_NUMERIC_KINDS = "biuf"


class _NdarrayMarker:
    """What the global ``numpy.ndarray`` resolves to: a token ``_reconstruct`` accepts, not a constructor."""

    def __repr__(self) -> str:
        return "numpy.ndarray"

    def __call__(self, *_: Any, **__: Any) -> Any:
        raise pickle.UnpicklingError("a weights file may not call numpy.ndarray (only numpy's own array pickles "
                                     "are read)")


_NDARRAY = _NdarrayMarker()


class _DtypeRecord:
    """``numpy.dtype('f4', False, True)`` as numpy pickles it: numeric type codes only.

    Not a real dtype, so the pickle's BUILD opcode reaches :meth:`__setstate__` here (which accepts the
    byte order and nothing else) instead of ``numpy.dtype.__setstate__``, which would let a file set
    fields or flags of a live dtype.
    """

    __slots__ = ("dtype",)

    def __init__(self, spec: Any, align: Any = False, copy: Any = False):
        if not isinstance(spec, str):
            raise pickle.UnpicklingError(f"dtype {spec!r} is not a plain type code")
        try:
            dtype = np.dtype(spec)
        except TypeError as exc:
            raise pickle.UnpicklingError(f"dtype {spec!r}: {exc}") from None
        if dtype.kind not in _NUMERIC_KINDS or dtype.fields is not None or dtype.subdtype is not None:
            raise pickle.UnpicklingError(f"weights file holds a non-numeric array (dtype {spec!r})")
        self.dtype = dtype

    def __setstate__(self, state: Any) -> None:
        if not (isinstance(state, tuple) and len(state) == 8 and state[0] == 3 and state[1] in ("<", ">", "|", "=")
                and state[2:5] == (None, None, None)):
            raise pickle.UnpicklingError(f"unexpected dtype state {state!r}")
        if state[1] in ("<", ">"):
            self.dtype = self.dtype.newbyteorder(state[1])


class _ArrayRecord:
    """The empty array ``_reconstruct`` makes; BUILD's state (shape, dtype, order, bytes) is checked, then copied."""

    __slots__ = ("array",)

    def __init__(self) -> None:
        self.array: np.ndarray | None = None

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, tuple) and len(state) == 5 and state[0] == 1:
            state = state[1:]
        if not (isinstance(state, tuple) and len(state) == 4):
            raise pickle.UnpicklingError("unexpected array state")
        shape, dtype, fortran, raw = state
        if not isinstance(shape, tuple) or not all(isinstance(n, int) and not isinstance(n, bool) and 0 <= n
                                                   for n in shape):
            raise pickle.UnpicklingError(f"array shape {shape!r} is not a tuple of sizes")
        if not isinstance(dtype, _DtypeRecord) or not isinstance(raw, bytes | bytearray):
            raise pickle.UnpicklingError("array without a numeric dtype and raw bytes")
        expected = math.prod(shape) * dtype.dtype.itemsize
        if len(raw) != expected:
            raise pickle.UnpicklingError(f"array of shape {shape} needs {expected} bytes, the file has {len(raw)}")
        flat = np.frombuffer(raw, dtype=dtype.dtype)
        self.array = flat.reshape(shape, order="F" if fortran else "C").copy(order="K")


def _reconstruct(cls: Any, shape: Any, dtype: Any) -> _ArrayRecord:
    """numpy's ``_reconstruct(ndarray, (0,), b'b')``: the empty array that BUILD then fills."""
    if cls is not _NDARRAY:
        raise pickle.UnpicklingError("only plain numpy arrays may be reconstructed")
    if shape != (0,) or dtype not in (b"b", "b"):
        raise pickle.UnpicklingError(f"unexpected array reconstruction {shape!r}, {dtype!r}")
    return _ArrayRecord()


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Resolves the three globals numpy arrays need, each to an inert record of this module; refuses the rest."""

    def find_class(self, module: str, name: str) -> Any:
        if module in ("numpy.core.multiarray", "numpy._core.multiarray") and name == "_reconstruct":
            return _reconstruct
        if module == "numpy" and name == "ndarray":
            return _NDARRAY
        if module == "numpy" and name == "dtype":
            return _DtypeRecord
        raise pickle.UnpicklingError(
            f"refusing to load {module}.{name} from a weights file: only numpy arrays (numpy.ndarray, numpy.dtype, "
            "numpy.core.multiarray._reconstruct) may be unpickled"
        )

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError(f"unsupported persistent id {pid!r}")


def _materialize(obj: Any) -> Any:
    """Replace every array record in the unpickled containers by its array; anything else non-plain is refused."""
    if isinstance(obj, _ArrayRecord):
        if obj.array is None:
            raise pickle.UnpicklingError("an array in the file has no data")
        return obj.array
    if isinstance(obj, dict):
        return {key: _materialize(value) for key, value in obj.items()}
    if isinstance(obj, list):
        return [_materialize(value) for value in obj]
    if isinstance(obj, tuple):
        return tuple(_materialize(value) for value in obj)
    if isinstance(obj, _DtypeRecord | _NdarrayMarker):
        raise pickle.UnpicklingError("the weights file holds a bare numpy type, not an array")
    return obj


def load_numpy_pickle(raw: bytes) -> Any:
    """Unpickle ``raw``, allowing numpy arrays and plain containers only; arrays must be numeric."""
    try:
        obj = _materialize(_NumpyOnlyUnpickler(io.BytesIO(raw)).load())
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError,
            RecursionError, MemoryError) as exc:
        raise BackboneError(f"cannot read the weights file: {exc}") from exc
    _check_numeric(obj)
    return obj


def _check_numeric(obj: Any) -> None:
    if isinstance(obj, np.ndarray):
        if obj.dtype.kind not in _NUMERIC_KINDS:
            raise BackboneError(f"weights file holds a non-numeric array (dtype {obj.dtype})")
    elif isinstance(obj, dict):
        for value in obj.values():
            _check_numeric(value)
    elif isinstance(obj, list | tuple):
        for value in obj:
            _check_numeric(value)


def keras_layers_to_state(layers: Any) -> dict[str, np.ndarray]:
    """``{layer: [kernel, bias]}`` -> ``{"<layer>/kernel": ..., "<layer>/bias": ...}`` (layouts unchanged)."""
    if not isinstance(layers, dict):
        raise BackboneError("the weights file does not hold a mapping of layer names to weights")
    state: dict[str, np.ndarray] = {}
    for name, value in layers.items():
        if not isinstance(value, list | tuple) or len(value) != 2:
            raise BackboneError(f"layer {name!r}: expected [kernel, bias]")
        state[f"{name}/kernel"], state[f"{name}/bias"] = (np.asarray(v) for v in value)
    return state
