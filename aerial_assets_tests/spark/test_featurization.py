"""Pure helpers of the featurization path (no Spark)."""

import pandas as pd

from aerial_assets.spark.featurization import coalesce_frames


def test_coalesce_frames_merges_small_frames_and_keeps_every_row_in_order():
    frames = [pd.DataFrame({"tile_id": [f"t{i}_{j}" for j in range(3)]}) for i in range(7)]  # 21 rows
    merged = list(coalesce_frames(iter(frames), min_rows=8))
    assert [len(f) for f in merged] == [9, 9, 3]  # whole frames are merged until 8 rows are reached; the rest last
    assert pd.concat(merged)["tile_id"].tolist() == pd.concat(frames)["tile_id"].tolist()
    assert list(coalesce_frames(iter([]), min_rows=8)) == []
