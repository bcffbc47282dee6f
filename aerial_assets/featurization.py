"""Turn tiles into feature vectors on Spark: files of the labelled catalog, or windows of county rasters.

DataFrame API only (``mapInPandas``; no SparkContext, no RDD), so the same code runs over Spark
Connect. Work is cut into chunks so that the driver can report progress between them; each chunk
is spread over ``parallelism`` tasks and appended to a temporary Parquet folder that the caller
moves into place once complete. Nothing is collected to the driver except counts.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
import pandas as pd

from aerial_assets.imaging import ImageDecodeError, load_tile
from aerial_assets.inference import batched, get_session, input_size, run_features
from aerial_assets.progress import Progress
from aerial_assets.storage import storage_for

FEATURE_SCHEMA = "tile_id string, label string, split string, features array<float>, status string, reason string"


def _read(uri: str) -> bytes:
    return storage_for(uri).read_bytes(uri)


def file_featurizer(model_uri: str, threads: int, batch_size: int) -> Callable[[Iterator[pd.DataFrame]], Iterator[pd.DataFrame]]:
    """The ``mapInPandas`` function for catalog rows (tile_id, uri, label, split)."""

    def featurize(frames: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        session = get_session(model_uri, threads, _read)
        size = input_size(session)
        for frame in frames:
            for rows in batched(frame.itertuples(index=False), batch_size):
                images, good, status, reason = [], [], [], []
                for row in rows:
                    try:
                        images.append(load_tile(_read(row.uri), size))
                        good.append(True)
                        status.append("ok")
                        reason.append("")
                    except (ImageDecodeError, OSError) as exc:
                        good.append(False)
                        status.append("quarantined")
                        reason.append(str(exc) or type(exc).__name__)
                feats = run_features(session, np.stack(images)) if images else None
                it = iter(feats if feats is not None else [])
                yield pd.DataFrame(
                    {
                        "tile_id": [r.tile_id for r in rows],
                        "label": [r.label for r in rows],
                        "split": [r.split for r in rows],
                        "features": [next(it) if ok else None for ok in good],
                        "status": status,
                        "reason": reason,
                    }
                )

    return featurize


def chunked_write(
    df,
    transform: Callable,
    out_path: str,
    parallelism: int,
    chunk_rows: int,
    progress: Progress,
) -> None:
    """Apply ``transform`` to ``df`` chunk by chunk, appending each to Parquet at ``out_path``.

    Chunks are hash buckets of ``tile_id``; their sizes are counted up front (one small query) so
    progress reports true tile counts.
    """
    from pyspark.sql import functions as F

    n_chunks = max(1, -(-progress.total // max(1, chunk_rows)))
    bucketed = df.withColumn("_chunk", F.pmod(F.xxhash64("tile_id"), F.lit(n_chunks)))
    sizes = {int(r["_chunk"]): int(r["count"]) for r in bucketed.groupBy("_chunk").count().collect()}
    wrote = False
    for chunk in sorted(sizes):
        part = bucketed.filter(F.col("_chunk") == chunk).drop("_chunk").repartition(parallelism)
        transform(part).write.mode("append").parquet(out_path)
        wrote = True
        progress.advance(sizes[chunk])
    if not wrote:  # no rows at all: still write an empty dataset with the right schema
        transform(df.limit(0)).write.mode("append").parquet(out_path)
