"""Files that Spark tasks write themselves: whole files only, and the file of a failed attempt never survives."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from aerial_assets.spark.part_files import remove_unlisted, write_part

# A real local Spark that retries a failed task once (``local[2,2]``): partition 1's first attempt writes its
# feature file and then fails, as a task killed after its upload would; the retry writes a file of its own.
_RETRIED_JOB = textwrap.dedent("""
    import json, sys
    import pandas as pd
    from pyspark import TaskContext
    from pyspark.sql import SparkSession
    from pyspark.sql.pandas.types import to_arrow_schema
    from aerial_assets.spark.featurization import FEATURE_PART_SCHEMA, FEATURE_SCHEMA, writing_parts
    from aerial_assets.spark.part_files import keep_reported

    folder = sys.argv[1]
    spark = (SparkSession.builder.master("local[2,2]").config("spark.ui.enabled", "false")
             .config("spark.driver.host", "127.0.0.1").config("spark.driver.bindAddress", "127.0.0.1").getOrCreate())

    def rows(frames):
        for frame in frames:
            n = len(frame)
            yield pd.DataFrame({"tile_id": frame["tile_id"], "label": "forest", "split": frame["split"],
                                "features": [[float(i), 1.0] for i in frame["i"]], "view_features": [None] * n,
                                "status": ["ok" if i % 5 else "quarantined" for i in frame["i"]],
                                "reason": ["" if i % 5 else "unreadable" for i in frame["i"]]})

    source = spark.createDataFrame(pd.DataFrame({"tile_id": [f"t{i:03d}" for i in range(40)], "i": range(40),
                                                 "split": ["train", "validation", "test", "train"] * 10}))
    spread = source.repartition(4)
    schema = to_arrow_schema(spread.mapInPandas(rows, FEATURE_SCHEMA).schema)
    writer = writing_parts(rows, folder, schema)

    def flaky(frames):
        out = list(writer(frames))  # the file is written ...
        ctx = TaskContext.get()
        if ctx.partitionId() == 1 and ctx.attemptNumber() == 0:
            raise RuntimeError("killed after writing")  # ... and the attempt fails before Spark hears of it
        yield from out

    parts = [p.asDict() for p in spread.mapInPandas(flaky, FEATURE_PART_SCHEMA).collect()]
    on_disk = sorted(n for n in __import__("os").listdir(folder))
    removed = keep_reported(folder, parts, lambda: sys.exit("no task reported a file"))
    print("RESULT " + json.dumps({"parts": parts, "on_disk": on_disk, "removed": removed}))
    spark.stop()
""")


def test_write_part_writes_whole_files_and_remove_unlisted_keeps_only_the_reported_ones(tmp_path):
    table = pa.table({"tile_id": ["a", "b"], "features": [[1.0, 2.0], [3.0, 4.0]]})
    names = [write_part(str(tmp_path), table) for _ in range(3)]
    assert len(set(names)) == 3 and all(n.startswith("part-00000-0-") and n.endswith(".parquet") for n in names)
    assert sorted(os.listdir(tmp_path)) == sorted(names)  # no temporary file left beside them
    assert pq.read_table(tmp_path / names[0]).to_pylist() == table.to_pylist()
    (tmp_path / ".hidden").write_text("x")
    assert remove_unlisted(str(tmp_path), {names[0], names[2]}) == [names[1]]
    assert sorted(os.listdir(tmp_path)) == sorted([names[0], names[2], ".hidden"])
    assert remove_unlisted(str(tmp_path / "never_written"), set()) == []  # no task wrote: nothing to remove


def test_a_failed_attempts_file_is_removed_and_every_row_is_read_back_once(tmp_path):
    folder = tmp_path / "features.parquet"
    env = {**os.environ, "PYSPARK_PYTHON": sys.executable, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    done = subprocess.run([sys.executable, "-c", _RETRIED_JOB, str(folder)], env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(next(line for line in done.stdout.splitlines() if line.startswith("RESULT "))[7:])
    parts = result["parts"]
    files = {p["file"] for p in parts if p["file"]}
    # five files were written (four tasks, one of them twice); the failed attempt's is the one removed
    assert len(result["on_disk"]) == 5 and len(files) == 4 and len(result["removed"]) == 1
    assert result["removed"][0].startswith("part-00001-0-") and result["removed"][0] not in files
    assert sorted(os.listdir(folder)) == sorted(files)
    frame = pq.read_table(folder).to_pandas()
    assert sorted(frame["tile_id"]) == [f"t{i:03d}" for i in range(40)]  # every row once: none lost, none twice
    assert sum(p["rows"] for p in parts) == 40 and sum(p["not_ok"] for p in parts) == 8
    assert {s: sum(p[f"ok_{s}"] for p in parts) for s in ("train", "validation", "test")} == \
        {"train": 16, "validation": 8, "test": 8}
    by_id = frame.set_index("tile_id")
    assert list(by_id.loc["t007", "features"]) == [7.0, 1.0] and by_id.loc["t005", "status"] == "quarantined"
