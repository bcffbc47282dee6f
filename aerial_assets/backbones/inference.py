"""Run a backbone's ONNX graph on tiles: the code that executes inside Spark executors.

One onnxruntime session per Python worker process, cached at module level and reused by every
batch and every task that worker runs (Spark reuses Python workers), never one per batch. No
Dagster import: this module is shipped to executors, possibly over Spark Connect.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import onnxruntime as ort

from aerial_assets.tables import VIEW_COUNTS, TileStatus

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


@dataclass
class FeaturizedBatch:
    """One batch of tile rows after decoding and inference: which rows decoded (``status`` and ``reason`` of
    each, in row order) and the features of those that did."""

    rows: list
    status: list[str]
    reason: list[str]
    per_view: np.ndarray | None  # [views, n decoded, D]

    def features(self) -> list[np.ndarray | None]:
        """Each row's features averaged over the views; None for a row that did not decode."""
        means = iter(self.per_view.mean(axis=0) if self.per_view is not None else [])
        return [next(means) if s == TileStatus.OK else None for s in self.status]

    def view_features(self) -> list[np.ndarray | None]:
        """Each row's features of every view, view after view (``views * D``); None when one view or no decode."""
        if self.per_view is None or len(self.per_view) == 1:
            return [None] * len(self.rows)
        flat = iter(self.per_view.transpose(1, 0, 2).reshape(self.per_view.shape[1], -1))
        return [next(flat) if s == TileStatus.OK else None for s in self.status]


@dataclass
class DecodedBatch:
    """One batch of tile rows after decoding: each row's status and reason, in row order, and the pixels of those
    that decoded (``[n decoded, S, S, 3]`` uint8, None when none did)."""

    rows: list
    status: list[str]
    reason: list[str]
    images: np.ndarray | None


def decode_rows(rows: Iterable, size: int, batch_size: int, load: Callable[[object, int], np.ndarray],
                errors: tuple[type[BaseException], ...], reason_prefix: str = "") -> Iterator[DecodedBatch]:
    """The one decode/quarantine loop of every featurizer (either engine): ``load(row, size)`` each row's pixels;
    a row whose ``load`` raises one of ``errors`` is quarantined with the error as its reason (one bad file never
    fails the task)."""
    for batch in batched(rows, batch_size):
        images, status, reason = [], [], []
        for row in batch:
            try:
                images.append(load(row, size))
            except errors as exc:
                status.append(TileStatus.QUARANTINED.value)
                reason.append(f"{reason_prefix}{exc}" if reason_prefix else (str(exc) or type(exc).__name__))
            else:
                status.append(TileStatus.OK.value)
                reason.append("")
        yield DecodedBatch(batch, status, reason, np.stack(images) if images else None)


def featurize_rows(rows: Iterable, session: ort.InferenceSession, batch_size: int, views: int,
                   load: Callable[[object, int], np.ndarray], errors: tuple[type[BaseException], ...],
                   reason_prefix: str = "") -> Iterator[FeaturizedBatch]:
    """:func:`decode_rows`, then the decoded tiles through the graph in batches of ``batch_size``."""
    for batch in decode_rows(rows, input_size(session), batch_size, load, errors, reason_prefix):
        per_view = run_view_features(session, batch.images, views) if batch.images is not None else None
        yield FeaturizedBatch(batch.rows, batch.status, batch.reason, per_view)
