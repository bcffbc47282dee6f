"""Read weights stored as a plain pickle of numpy arrays (``ndf``'s SqueezeNet) without running code.

``pickle.load`` on a file from a package would execute whatever globals it names. This unpickler
resolves only what numpy arrays need (``numpy.core.multiarray._reconstruct``, ``numpy.ndarray``,
``numpy.dtype``; dicts, lists and tuples are pickle opcodes, not globals) and refuses anything else.
"""

from __future__ import annotations

import io
import pickle
from typing import Any

import numpy as np

from aerial_assets.errors import BackboneError

_RECONSTRUCT = np.ndarray.__reduce__(np.zeros(1))[0]  # numpy's _reconstruct, wherever this numpy keeps it
_NUMERIC_KINDS = "biuf"


def _reconstruct(cls: Any, shape: Any, dtype: Any) -> np.ndarray:
    if cls is not np.ndarray:
        raise pickle.UnpicklingError("only plain numpy arrays may be reconstructed")
    return _RECONSTRUCT(cls, shape, dtype)


class _NumpyOnlyUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if module in ("numpy.core.multiarray", "numpy._core.multiarray") and name == "_reconstruct":
            return _reconstruct
        if module == "numpy" and name == "ndarray":
            return np.ndarray
        if module == "numpy" and name == "dtype":
            return np.dtype
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a weights file")


def load_numpy_pickle(raw: bytes) -> Any:
    """Unpickle ``raw``, allowing numpy arrays and plain containers only; arrays must be numeric."""
    try:
        obj = _NumpyOnlyUnpickler(io.BytesIO(raw)).load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as exc:
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
