"""Shared fixtures: one real local Spark session, tiny seeded data, resources rooted in a temp folder."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
from dagster import MultiPartitionKey, instance_for_test

from aerial_assets.defs.definitions import build_defs
from aerial_assets.defs.partitions import county_partitions
from aerial_assets.defs.run import Runner
from aerial_assets.imagery import demo_data
from aerial_assets.imagery.counties import County, render_registry
from aerial_assets.training.classifiers import PYSPARK_ML_ALGORITHMS

SHARED_DATASETS = Path(__file__).resolve().parents[2] / "shared" / "datasets"


@pytest.fixture(scope="session")
def spark():
    """A real local Spark: 2 cores, few shuffle partitions, no UI."""
    os.environ["PYSPARK_PYTHON"] = sys.executable
    from pyspark.sql import SparkSession

    session = (
        SparkSession.builder.master("local[2]")
        .appName("aerial_assets_tests")
        .config("spark.ui.enabled", "false")
        .config("spark.driver.host", "127.0.0.1")
        .config("spark.driver.bindAddress", "127.0.0.1")
        .config("spark.sql.shuffle.partitions", "2")
        .config("spark.sql.execution.arrow.pyspark.enabled", "true")
        .config("spark.ui.showConsoleProgress", "false")
        .getOrCreate()
    )
    yield session
    session.stop()


@pytest.fixture(scope="session")
def tiny_tiles(tmp_path_factory) -> Path:
    """Six demo classes x 8 tiles of 64 px (seeded): enough to train and test, fast to featurize."""
    root = tmp_path_factory.mktemp("tiles")
    demo_data.write_training_tiles(str(root), per_class=8, size=64, seed=1, fmt="png")
    return root


@pytest.fixture(scope="session")
def tiny_county(tmp_path_factory) -> tuple[Path, object]:
    """A 5 x 6-tile county at 3.5 m per pixel (224 m tiles = 64 px, as the training tiles), in UTM 19N,
    and its painted layout."""
    path = tmp_path_factory.mktemp("county") / "tiny_county.tif"
    layout = demo_data.write_county_raster(str(path), rows=5, cols=6, tile_px=64, resolution=3.5, seed=3)
    return path, layout


@pytest.fixture(scope="session")
def graph_run(spark, tiny_tiles, tiny_county, tmp_path_factory):
    """Materialize every asset once (1 backbone x every algorithm, 1 county)."""
    root = tmp_path_factory.mktemp("data_root")
    raster, layout = tiny_county
    registry = root / "counties.yaml"
    registry.write_text(render_registry({"tiny": County("tiny", "Tiny county", [str(raster)])}))
    env = env_for(root, tiny_tiles, registry)
    defs = build_defs(env)
    with instance_for_test() as instance:
        runner = Runner(defs, instance, {})
        assert runner.run(["labeled_tiles"])
        assert runner.run(["backbone_models", "tile_features"], "mobilenet_v2")
        for algorithm in PYSPARK_ML_ALGORITHMS:
            key = MultiPartitionKey({"backbone": "mobilenet_v2", "algorithm": algorithm})
            assert runner.run(["land_use_classifiers", "classifier_metrics"], key)
        assert runner.run(["model_leaderboard", "champion_model"])
        instance.add_dynamic_partitions(county_partitions.name, ["tiny"])
        assert runner.run(["county_tiles", "county_predictions", "county_land_use_map"], "tiny")
        yield {"root": root, "layout": layout, "instance": instance, "defs": defs}


def env_for(root: Path, tiles: Path | str, registry: Path | None = None) -> dict[str, str]:
    env = {"AERIAL_DATA_ROOT": str(root), "AERIAL_TRAINING_TILES": str(tiles)}
    if registry is not None:
        env["AERIAL_COUNTIES"] = str(registry)
    return env


def shared_dataset(name: str) -> Path:
    path = SHARED_DATASETS / name
    if not path.exists():
        pytest.skip(f"{path} not present (real-data tests run only beside ../shared/datasets)")
    return path


# ``make test-fast`` runs the tests that need no Spark, no server and no browser (``-m "not slow"``): a test is slow
# when it uses one of these fixtures, or sits in a module that starts processes (Spark, Dagster, Azurite, Chromium).
SLOW_FIXTURES = {"spark", "graph_run", "connect_server", "azurite", "cluster", "mobilenet", "tiny_county"}
SLOW_MODULES = {"test_ui", "test_cli", "test_runs", "test_remote", "test_cluster", "test_faults", "test_graph",
                "test_nets", "test_zoo", "test_comparison", "test_counties", "test_integrity", "test_bad_input",
                "test_line_mismatch", "test_web_map_trust"}


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: needs Spark, a server or a browser (left out by make test-fast)")
    config.addinivalue_line("markers", "yarn: runs on the single-machine YARN (pytest -m yarn selects them)")


def pytest_collection_modifyitems(config, items):
    for item in items:
        module = item.module.__name__.rsplit(".", 1)[-1]
        if module in SLOW_MODULES or SLOW_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


def latest_metadata(instance, asset: str, partition: str | None = None) -> dict:
    """The metadata of the latest materialization of ``asset`` (of ``partition``, for partitioned assets: other
    tests materialize other counties on the shared graph run)."""
    from dagster import AssetKey, AssetRecordsFilter

    records = instance.fetch_materializations(
        AssetRecordsFilter(AssetKey(asset), asset_partitions=[partition] if partition else None), limit=1).records
    assert records, f"{asset}[{partition}] was never materialized"
    return records[0].asset_materialization.metadata


def assert_plain_float_columns(dataset: Path) -> None:
    """The float (feature) columns of every part file of a feature ``dataset`` are plain-encoded, never
    dictionary-encoded (``spark/featurization.py: writing_parts``)."""
    import pyarrow.parquet as pq

    found: set[str] = set()
    for part in sorted(dataset.glob("*.parquet")):
        meta = pq.ParquetFile(part).metadata
        for g in range(meta.num_row_groups):
            for c in range(meta.num_columns):
                column = meta.row_group(g).column(c)
                if column.physical_type == "FLOAT":
                    found.update(column.encodings)
    assert "PLAIN" in found and not any("DICTIONARY" in e for e in found), found
