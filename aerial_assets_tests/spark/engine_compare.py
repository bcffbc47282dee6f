"""Both featurization engines on the same rows in one Spark session that has SynapseML's jars, compared tile by tile.

Run as a process of its own (``python -m aerial_assets_tests.spark.engine_compare``) because a test process's Spark
session is opened without SynapseML and a process holds one SparkContext. Prints one JSON object: per input kind
(``files``: a ``<class>/<image>`` folder; ``windows``: a ``county_tiles`` parquet), the rows, the usable and the
quarantined rows, whether both engines gave every row the same status and reason, and the largest absolute
difference of the features (and of every view's features). It asserts nothing itself: the tests do.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np
import pandas as pd


def session():
    from pyspark.sql import SparkSession

    from aerial_assets.spark.synapseml import synapseml_jars

    os.environ["PYSPARK_PYTHON"] = sys.executable
    return (SparkSession.builder.master("local[2]").appName("engine_compare")
            .config("spark.ui.enabled", "false")
            .config("spark.driver.host", "127.0.0.1").config("spark.driver.bindAddress", "127.0.0.1")
            .config("spark.sql.execution.arrow.pyspark.enabled", "true")
            .config("spark.jars", ",".join(synapseml_jars())).getOrCreate())


def compare(python: pd.DataFrame, jvm: pd.DataFrame, view_column: bool) -> dict:
    both = python.merge(jvm, on="tile_id", suffixes=("_py", "_jvm"), how="outer", indicator=True)
    ok = both["status_py"] == "ok"
    diffs = [float(np.abs(np.asarray(a) - np.asarray(b)).max()) for a, b in
             zip(both.loc[ok, "features_py"], both.loc[ok, "features_jvm"], strict=True)]
    view_diffs = ([float(np.abs(np.asarray(a) - np.asarray(b)).max()) for a, b in
                   zip(both.loc[ok, "view_features_py"], both.loc[ok, "view_features_jvm"], strict=True)
                   if a is not None or b is not None] if view_column else [])
    return {
        "rows": len(both), "in_both": int((both["_merge"] == "both").sum()), "ok": int(ok.sum()),
        "quarantined": int((~ok).sum()), "same_status": bool((both["status_py"] == both["status_jvm"]).all()),
        "same_reason": bool((both["reason_py"] == both["reason_jvm"]).all()),
        "reasons": sorted(set(both.loc[~ok, "reason_jvm"])),
        "max_abs_diff": max(diffs, default=None), "max_view_abs_diff": max(view_diffs, default=None),
        "views_kept": len(view_diffs),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", required=True, help="a backbone's model.onnx")
    parser.add_argument("--files", help="a <class>/<image> folder")
    parser.add_argument("--tiles", help="a county_tiles tiles.parquet")
    parser.add_argument("--views", type=int, default=1)
    args = parser.parse_args(argv)

    from aerial_assets.spark import synapseml_featurization as jvm_engine
    from aerial_assets.spark.featurization import (
        FEATURE_SCHEMA,
        WINDOW_FEATURE_SCHEMA,
        file_featurizer,
        window_featurizer,
    )
    from aerial_assets.spark.synapseml import ONNX_MODEL_CLASS, require

    spark = session()
    require(spark, "the synapseml engine", ONNX_MODEL_CLASS)
    graph = Path(args.model).read_bytes()
    out: dict[str, dict] = {}
    if args.files:
        files = sorted(p for p in Path(args.files).glob("*/*") if p.is_file())
        catalog = pd.DataFrame({"tile_id": [f"{p.parent.name}/{p.name}" for p in files],
                                "uri": [str(p) for p in files], "label": [p.parent.name for p in files],
                                "split": ["train"] * len(files)})
        source = spark.createDataFrame(catalog, "tile_id string, uri string, label string, split string").repartition(2)
        python = source.mapInPandas(file_featurizer(args.model, 1, 8, args.views), FEATURE_SCHEMA).toPandas()
        jvm = jvm_engine.file_features(source, graph, 8, args.views).toPandas()
        out["files"] = compare(python, jvm, view_column=True)
    if args.tiles:
        source = spark.read.parquet(args.tiles).filter("status = 'ok'").repartition(2)
        python = source.mapInPandas(window_featurizer(args.model, 1, 8, args.views), WINDOW_FEATURE_SCHEMA).toPandas()
        jvm = jvm_engine.window_features(source, graph, 8, args.views).toPandas()
        out["windows"] = compare(python, jvm, view_column=False)
    spark.stop()
    print(json.dumps(out))


if __name__ == "__main__":
    main()
