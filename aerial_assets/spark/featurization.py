"""Turn tiles into feature vectors on Spark: files of the labelled catalog, or windows of county rasters.

DataFrame API only (``mapInPandas``; no SparkContext, no RDD), so the same code runs over Spark
Connect. The caller runs featurization as one Spark job, as wide as the data and the cluster allow
(:mod:`aerial_assets.spark.jobs`); each task writes its own feature file (:func:`writing_parts`), and the
driver gets one summary row per task, with the counts.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
import pandas as pd

from aerial_assets.backbones.inference import featurize_rows, get_session
from aerial_assets.errors import StorageError
from aerial_assets.imagery.decode import ImageDecodeError, load_tile
from aerial_assets.imagery.rasters import read_tile
from aerial_assets.spark.part_files import write_part
from aerial_assets.storage.backends import raster_opener, storage_for
from aerial_assets.tables import FEATURES, PASSTHROUGH, SPLITS, WINDOW_FEATURES, TileStatus

FEATURE_SCHEMA = FEATURES.ddl
WINDOW_FEATURE_SCHEMA = WINDOW_FEATURES.ddl
#: What a task that wrote its feature file tells the driver: the file, its rows, usable rows per split, the others.
FEATURE_PART_SCHEMA = "file string, rows long, " + ", ".join(f"ok_{s} long" for s in SPLITS) + ", not_ok long"
# Columns whose values repeat (dictionary-encoded); the float features are written plain, since they barely repeat
# and a dictionary only grows, rehashes and falls back (the JVM writer's profile showed that cost).
_DICTIONARY_COLUMNS = ["label", "split", "status", "reason"]


# Rows per frame handed back to Spark. Every frame is one Arrow round trip: with one frame per inference batch
# (8 images) bench-features measured (b)/(a) 0.84-0.91, with frames of 256 rows 1.03-1.20 (two runs, same day).
ROWS_PER_OUTPUT = 256


def coalesce_frames(frames: Iterator[pd.DataFrame], min_rows: int) -> Iterator[pd.DataFrame]:
    """Merge consecutive frames until each holds at least ``min_rows`` rows (the last may hold fewer)."""
    pending, rows = [], 0
    for frame in frames:
        pending.append(frame)
        rows += len(frame)
        if rows >= min_rows:
            yield pd.concat(pending, ignore_index=True)
            pending, rows = [], 0
    if pending:
        yield pd.concat(pending, ignore_index=True)


def _read(uri: str) -> bytes:
    return storage_for(uri).read_bytes(uri)


def file_featurizer(
    model_uri: str, threads: int, batch_size: int, views: int = 1
) -> Callable[[Iterator[pd.DataFrame]], Iterator[pd.DataFrame]]:
    """The ``mapInPandas`` function for catalog rows (tile_id, uri, label, split).

    ``features`` is the mean over ``views`` rotations/flips of the tile (test-time augmentation); with
    more than one view, ``view_features`` keeps every view's vector, concatenated view after view
    (``views * D`` floats), for train-time augmentation and for choosing fewer views later.
    """

    def featurize(frames: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        yield from coalesce_frames(per_batch(frames), ROWS_PER_OUTPUT)

    def per_batch(frames: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        session = get_session(model_uri, threads, _read)
        for frame in frames:
            for batch in featurize_rows(frame.itertuples(index=False), session, batch_size, views, load_file,
                                        FILE_ERRORS):
                yield pd.DataFrame({
                    "tile_id": [r.tile_id for r in batch.rows],
                    "label": [r.label for r in batch.rows],
                    "split": [r.split for r in batch.rows],
                    "features": batch.features(),
                    "view_features": batch.view_features(),
                    "status": batch.status,
                    "reason": batch.reason,
                })

    return featurize


WINDOW_REASON = "unreadable tile: "
#: The decode errors that quarantine a catalog tile (any other error fails the task).
FILE_ERRORS = (ImageDecodeError, StorageError, OSError)


def load_file(row, size: int) -> np.ndarray:
    """A catalog row's tile (``row.uri``) as ``[size, size, 3]`` uint8 pixels."""
    return load_tile(_read(row.uri), size)


class WindowReader:
    """Reads county tile rows (windows of rasters, or ready-made tile files) in one task: each raster is opened once,
    on first use, and closed at the end (a context manager)."""

    def __init__(self) -> None:
        import rasterio

        self._rasterio = rasterio
        self._open: dict[str, object] = {}
        self.errors = (rasterio.errors.RasterioError, ImageDecodeError, StorageError, OSError)

    def load(self, row, size: int) -> np.ndarray:
        if row.raster_index < 0:  # a ready-made tile file, not a raster window
            return load_tile(_read(row.raster_uri), size)
        if row.raster_uri not in self._open:
            self._open[row.raster_uri] = self._rasterio.open(row.raster_uri, opener=raster_opener(row.raster_uri))
        return read_tile(self._open[row.raster_uri], row.col_off, row.row_off, row.width_px, size,
                         (row.scale_lo, row.scale_hi))

    def __enter__(self) -> WindowReader:
        return self

    def __exit__(self, *exc) -> None:
        for ds in self._open.values():
            ds.close()


def window_featurizer(
    model_uri: str, threads: int, batch_size: int, views: int = 1
) -> Callable[[Iterator[pd.DataFrame]], Iterator[pd.DataFrame]]:
    """``mapInPandas`` over county tiles: read each window (resampled to the backbone's input) and featurize.

    ``views``: the features are the mean over that many rotations/flips (the champion's training views by
    default). Each raster is opened once per task and read window by window, in raster order.
    """

    def run(frames: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        session = get_session(model_uri, threads, _read)
        with WindowReader() as reader:
            for frame in frames:
                frame = frame.sort_values(["raster_uri", "row_off", "col_off"])
                for batch in featurize_rows(frame.itertuples(index=False), session, batch_size, views, reader.load,
                                            reader.errors, reason_prefix=WINDOW_REASON):
                    out = pd.DataFrame({col: [getattr(r, col) for r in batch.rows] for col in PASSTHROUGH})
                    out["features"] = batch.features()
                    out["status"] = batch.status
                    out["reason"] = batch.reason
                    yield out

    return run


def part_concatenator(n_parts: int, views: int) -> Callable[[Iterator[pd.DataFrame]], Iterator[pd.DataFrame]]:
    """``mapInPandas`` joining cached features of several backbones into the combined backbone's rows.

    Input columns: tile_id, label, split, and per part ``i``: ``f{i}``, ``v{i}`` (view features),
    ``s{i}`` (status), ``r{i}`` (reason). A tile is usable only when every part's is; views are
    concatenated view by view, so the layout matches what the combined graph computes itself.
    """

    def concat(frames: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        for frame in frames:
            ok = np.ones(len(frame), bool)
            reasons = [""] * len(frame)
            for i in range(n_parts):
                bad = (frame[f"s{i}"] != TileStatus.OK).to_numpy()
                for j in np.flatnonzero(bad & ok):
                    reasons[j] = str(frame[f"r{i}"].iloc[j])
                ok &= ~bad
            feats, view_feats = [], []
            for j in range(len(frame)):
                if not ok[j]:
                    feats.append(None)
                    view_feats.append(None)
                    continue
                feats.append(np.concatenate([frame[f"f{i}"].iloc[j] for i in range(n_parts)]))
                if views > 1:
                    per_part = [np.asarray(frame[f"v{i}"].iloc[j]).reshape(views, -1) for i in range(n_parts)]
                    view_feats.append(np.concatenate(per_part, axis=1).reshape(-1))
                else:
                    view_feats.append(None)
            yield pd.DataFrame({
                "tile_id": frame["tile_id"], "label": frame["label"], "split": frame["split"],
                "features": feats, "view_features": view_feats,
                "status": np.where(ok, TileStatus.OK.value, TileStatus.QUARANTINED.value), "reason": reasons,
            })

    return concat


def writing_parts(rows: Callable[[Iterator[pd.DataFrame]], Iterator[pd.DataFrame]], folder: str,
                  arrow_schema) -> Callable[[Iterator[pd.DataFrame]], Iterator[pd.DataFrame]]:
    """The ``mapInPandas`` function (schema :data:`FEATURE_PART_SCHEMA`) by which each task runs ``rows`` (a
    featurizer or :func:`part_concatenator`) and writes what it yields as one Parquet file under ``folder``
    (:mod:`aerial_assets.spark.part_files`), then yields one summary row: the file's name and its counts.

    ``arrow_schema``: the feature rows' Spark schema in Arrow form, so every part has the same column types, also
    where a part's column is all null. A task holds its own rows only (``tiles_per_task``, a few hundred)."""

    def write(frames: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        import pyarrow as pa

        tables = [pa.Table.from_pandas(f, schema=arrow_schema, preserve_index=False)
                  for f in rows(frames) if not f.empty]
        summary = {"file": "", "rows": 0, **{f"ok_{s}": 0 for s in SPLITS}, "not_ok": 0}
        if tables:
            table = pa.concat_tables(tables)
            summary["file"] = write_part(folder, table, use_dictionary=_DICTIONARY_COLUMNS)
            status = table.column("status").to_numpy(zero_copy_only=False)
            split = table.column("split").to_numpy(zero_copy_only=False)
            ok = status == TileStatus.OK.value
            summary.update(rows=table.num_rows, not_ok=int((~ok).sum()),
                           **{f"ok_{s}": int((ok & (split == s)).sum()) for s in SPLITS})
        yield pd.DataFrame([summary])

    return write

