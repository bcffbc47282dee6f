"""The ``synapseml`` featurization engine (``AERIAL_FEATURIZE_ENGINE=synapseml``): the backbone graph runs in the JVM
executors through SynapseML's ``ONNXModel`` instead of in the Python workers through onnxruntime.

Three narrow steps of one Spark stage, so the job keeps the shape of the default engine's (one task per slice of
tiles, each writing its own feature file):

1. ``mapInPandas`` (Python): decode each tile as the default engine does (the same loaders, the same quarantine), and
   emit one row per view with its pixels packed 8 to an int64 (:func:`aerial_assets.backbones.jvm_graph.pack`);
   a tile that does not decode gets one row of zero pixels and its reason, so that every row takes one path;
2. ``ONNXModel`` (JVM): the graph rewritten by :func:`aerial_assets.backbones.jvm_graph.for_jvm`, its bytes in the
   model's ``modelPayload`` (sent to the executors with the task, nothing to install on the nodes);
3. ``mapInPandas`` (Python): the views of each tile averaged (and kept, view after view), the rows of tiles that did
   not decode get no features: the same columns as the default engine's.

Only what SynapseML's Python classes reach is used (``synapse.ml.onnx.ONNXModel``); the caller checks first that the
session loads its JVM class (:func:`aerial_assets.spark.synapseml.require`). No Dagster import.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
import pandas as pd

from aerial_assets.backbones.inference import decode_rows, dihedral_views
from aerial_assets.backbones.jvm_graph import INPUT, OUTPUT, for_jvm, image_size, pack, words
from aerial_assets.spark.featurization import (
    FEATURE_SCHEMA,
    FILE_ERRORS,
    ROWS_PER_OUTPUT,
    WINDOW_FEATURE_SCHEMA,
    WINDOW_REASON,
    WindowReader,
    coalesce_frames,
    load_file,
)
from aerial_assets.tables import FEATURES, PASSTHROUGH, WINDOW_FEATURES, TileStatus

ENGINE = "synapseml"
_VIEW, _PIXELS, _OUT = "jvm_view", "jvm_pixels", "jvm_features"
_FILE_KEYS = ["tile_id", "label", "split"]
_DECODE_BATCH = 8  # tiles decoded per step: a task holds about this many tiles' views at once


def _decoded_frames(rows: Iterator, keys: list[str], size: int, views: int, load, errors,
                    reason_prefix: str = "") -> Iterator[pd.DataFrame]:
    """Step 1's rows of one batch of decoded tiles: ``keys``, status, reason, view number and flat int8 pixels."""
    zeros = np.zeros(words(size), np.int64)
    for batch in decode_rows(rows, size, _DECODE_BATCH, load, errors, reason_prefix):
        per_view = ([pack(v) for v in dihedral_views(batch.images, views)] if batch.images is not None else None)
        out: dict[str, list] = {k: [] for k in [*keys, "status", "reason", _VIEW, _PIXELS]}
        decoded = 0
        for row, status, reason in zip(batch.rows, batch.status, batch.reason, strict=True):
            pixels = ([per_view[v][decoded] for v in range(views)]
                      if status == TileStatus.OK else [zeros])
            decoded += status == TileStatus.OK
            for view, flat in enumerate(pixels):
                for key in keys:
                    out[key].append(getattr(row, key))
                out["status"].append(status)
                out["reason"].append(reason)
                out[_VIEW].append(view)
                out[_PIXELS].append(flat)
        yield pd.DataFrame(out)


def _averaged(frames: Iterator[pd.DataFrame], keys: list[str], views: int,
              keep_views: bool) -> Iterator[pd.DataFrame]:
    """Step 3: one row per tile from its views' rows (consecutive in the partition, also across Arrow batches)."""
    carry = None
    for frame in frames:
        frame = frame if carry is None else pd.concat([carry, frame], ignore_index=True)
        if frame.empty:
            continue
        last = frame["tile_id"].iloc[-1]
        carry, frame = frame[frame["tile_id"] == last], frame[frame["tile_id"] != last]
        if not frame.empty:
            yield _one_row_per_tile(frame, keys, views, keep_views)
    if carry is not None and not carry.empty:
        yield _one_row_per_tile(carry, keys, views, keep_views)


def _one_row_per_tile(frame: pd.DataFrame, keys: list[str], views: int, keep_views: bool) -> pd.DataFrame:
    rows: dict[str, list] = {k: [] for k in [*keys, "features", "view_features", "status", "reason"]}
    for _, tile in frame.groupby("tile_id", sort=False):
        first = tile.iloc[0]
        ok = first["status"] == TileStatus.OK
        if ok and sorted(tile[_VIEW]) != list(range(views)):
            raise RuntimeError(f"tile {first['tile_id']}: views {sorted(tile[_VIEW])} reached the averaging step, "
                               f"not 0..{views - 1} (rows of a tile were split or reordered)")
        per_view = np.stack(tile.sort_values(_VIEW)[_OUT].to_list()).astype(np.float32) if ok else None
        for key in keys:
            rows[key].append(first[key])
        rows["features"].append(per_view.mean(axis=0) if ok else None)
        rows["view_features"].append(per_view.reshape(-1) if ok and keep_views and views > 1 else None)
        rows["status"].append(first["status"])
        rows["reason"].append(first["reason"])
    if not keep_views:
        del rows["view_features"]
    return pd.DataFrame(rows)


def _schema(keys_ddl: str) -> str:
    return f"{keys_ddl}, status string, reason string, {_VIEW} int, {_PIXELS} array<bigint>"


def onnx_model(model_bytes: bytes, batch_size: int):
    """SynapseML's ``ONNXModel`` for a backbone graph (the original graph's bytes; rewritten here for the JVM)."""
    from aerial_assets.spark.synapseml import import_synapseml

    onnx = import_synapseml("synapse.ml.onnx")
    return (onnx.ONNXModel().setModelPayload(for_jvm(model_bytes)).setDeviceType("CPU")
            .setFeedDict({INPUT: _PIXELS}).setFetchDict({_OUT: OUTPUT}).setMiniBatchSize(batch_size))


def file_inference(source, model_bytes: bytes, batch_size: int, views: int):
    """Steps 1 and 2 over catalog rows (tile_id, uri, label, split): a row per view with its graph output; the
    caller's ``mapInPandas`` applies :func:`file_averager` (inside the function that writes the feature files)."""

    input_size = image_size(model_bytes)

    def decode(frames: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        for frame in frames:
            yield from _decoded_frames(frame.itertuples(index=False), _FILE_KEYS, input_size, views, load_file,
                                       FILE_ERRORS)

    decoded = source.mapInPandas(decode, _schema(FEATURES.select(_FILE_KEYS).ddl))
    return onnx_model(model_bytes, batch_size).transform(decoded).drop(_PIXELS)


def file_averager(views: int) -> Callable[[Iterator[pd.DataFrame]], Iterator[pd.DataFrame]]:
    """Step 3 for catalog rows: ``FEATURE_SCHEMA`` rows (every view kept when ``views`` > 1)."""
    return _averager(_FILE_KEYS, views, keep_views=True)


def file_features(source, model_bytes: bytes, batch_size: int, views: int):
    """Catalog rows -> the default engine's feature rows (``FEATURE_SCHEMA``), all three steps."""
    inferred = file_inference(source, model_bytes, batch_size, views)
    return inferred.mapInPandas(file_averager(views), FEATURE_SCHEMA)


def window_features(source, model_bytes: bytes, batch_size: int, views: int):
    """County tile rows -> the default engine's window feature rows (``WINDOW_FEATURE_SCHEMA``), all three steps."""
    keys, input_size = list(PASSTHROUGH), image_size(model_bytes)

    def decode(frames: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        with WindowReader() as reader:
            for frame in frames:
                frame = frame.sort_values(["raster_uri", "row_off", "col_off"])
                yield from _decoded_frames(frame.itertuples(index=False), keys, input_size, views, reader.load,
                                           reader.errors, WINDOW_REASON)

    decoded = source.mapInPandas(decode, _schema(WINDOW_FEATURES.select(keys).ddl))
    inferred = onnx_model(model_bytes, batch_size).transform(decoded).drop(_PIXELS)
    return inferred.mapInPandas(_averager(keys, views, keep_views=False), WINDOW_FEATURE_SCHEMA)


def _averager(keys: list[str], views: int, keep_views: bool) -> Callable[[Iterator[pd.DataFrame]], Iterator[pd.DataFrame]]:
    """Step 3 as a ``mapInPandas`` function, its output in frames of a few hundred rows."""

    def run(frames: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        yield from coalesce_frames(_averaged(frames, keys, views, keep_views), ROWS_PER_OUTPUT)

    return run
