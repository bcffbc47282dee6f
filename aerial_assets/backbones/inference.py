"""Run a backbone's ONNX graph on tiles: the code that executes inside Spark executors.

One onnxruntime session per Python worker process, cached at module level and reused by every
batch and every task that worker runs (Spark reuses Python workers), never one per batch. No
Dagster import: this module is shipped to executors, possibly over Spark Connect.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator

import numpy as np
import onnxruntime as ort

_SESSIONS: dict[tuple[str, int], ort.InferenceSession] = {}
_LOCK = threading.Lock()


def make_session(model_bytes: bytes, threads: int) -> ort.InferenceSession:
    """A CPU session with full graph optimisation and exactly ``threads`` intra-op threads.

    Spark already runs one task per core: more threads per session than the task's cores only
    oversubscribe the CPU.
    """
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = max(1, threads)
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return ort.InferenceSession(model_bytes, sess_options=options, providers=["CPUExecutionProvider"])


def get_session(model_uri: str, threads: int, read_bytes: Callable[[str], bytes]) -> ort.InferenceSession:
    """The worker's cached session for ``model_uri`` (loaded once per process)."""
    key = (model_uri, threads)
    with _LOCK:
        session = _SESSIONS.get(key)
        if session is None:
            session = make_session(read_bytes(model_uri), threads)
            _SESSIONS[key] = session
    return session


def input_size(session: ort.InferenceSession) -> int:
    """The square input size the graph was built for."""
    return int(session.get_inputs()[0].shape[1])


def run_features(session: ort.InferenceSession, images: np.ndarray) -> np.ndarray:
    """``[N, S, S, 3]`` uint8 -> ``[N, D]`` float32 features."""
    if len(images) == 0:
        width = session.get_outputs()[0].shape[1]
        return np.zeros((0, int(width) if isinstance(width, int) else 0), np.float32)
    return session.run(["features"], {"image": images})[0]


def batched(items: Iterable, size: int) -> Iterator[list]:
    batch: list = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch



VIEW_COUNTS = (1, 4, 8)


def dihedral_views(images: np.ndarray, views: int) -> np.ndarray:
    """``[N, S, S, C]`` -> ``[views, N, S, S, C]``: the tiles under the symmetries of the square.

    Aerial tiles have no "up": a field rotated by 90 degrees is still a field. View 0 is the tile
    itself, views 1-3 its rotations by 90, 180 and 270 degrees, views 4-7 the same four of its
    mirror image, so the first 4 views are the rotations and all 8 the full dihedral group.
    """
    if views not in VIEW_COUNTS:
        raise ValueError(f"views must be one of {VIEW_COUNTS}, got {views}")
    out = []
    for flip in (False, True):
        base = images[:, :, ::-1] if flip else images
        for k in range(4):
            out.append(np.ascontiguousarray(np.rot90(base, k, axes=(1, 2))))
            if len(out) == views:
                return np.stack(out)
    return np.stack(out)


def run_view_features(session: ort.InferenceSession, images: np.ndarray, views: int) -> np.ndarray:
    """``[N, S, S, 3]`` uint8 -> ``[views, N, D]`` features of every view (one onnxruntime call per view)."""
    if views == 1:
        return run_features(session, images)[None]
    return np.stack([run_features(session, view) for view in dihedral_views(images, views)])
