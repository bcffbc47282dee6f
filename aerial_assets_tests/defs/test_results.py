"""What a data scientist gets around the results, on the shared graph run: the interactive map in real headless
Chromium, the example notebook executed, column schemas and tables in Dagster's metadata, the checks on the
predictions (passing here, failing on corrupted files), the COG's class names and the GeoParquet bbox column."""

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import rasterio
from dagster import AssetKey, DagsterEventType, EventRecordsFilter

from aerial_assets.maps.prediction_checks import inspect_predictions
from aerial_assets_tests.conftest import latest_metadata

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "test-artifacts"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


COUNTY_ASSETS = {"county_tiles", "county_predictions", "county_land_use_map"}


def _materialization(graph_run, name: str):
    """The shared run's metadata of ``name`` (its county "tiny": other tests materialize other counties)."""
    return latest_metadata(graph_run["instance"], name, "tiny" if name in COUNTY_ASSETS else None)


@pytest.mark.skipif(CHROMIUM is None, reason="Debian chromium is not installed (.ci/run installs it)")
def test_interactive_map_loads_offline_in_chromium_with_classes_tiles_and_popups(graph_run):
    """Every network request is blocked: the page must work as a single file (Leaflet inlined), with only the
    base-map tiles failing."""
    from playwright.sync_api import sync_playwright

    folder = graph_run["root"] / "county_land_use_map" / "tiny"
    page_file = folder / "land_use.html"
    meta = _materialization(graph_run, "county_land_use_map")
    assert meta["map_html"].value == str(page_file)
    summary = json.loads((graph_run["root"] / "county_predictions" / "tiny" / "summary.json").read_text())
    unexpected, basemap, errors = [], [], []

    def route(request_route, request):
        url = request.url
        if url == page_file.as_uri():
            return request_route.continue_()
        (basemap if "tile.openstreetmap.org" in url else unexpected).append(url)
        return request_route.abort()  # offline: nothing but the page file itself is served

    args = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run"]
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=args)
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            # the blocked base-map tiles are the only console errors allowed (their failed loads)
            page.on("console", lambda m: errors.append(m.text) if m.type == "error"
                    and "ERR_FAILED" not in m.text else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.route("**/*", route)
            page.goto(page_file.as_uri(), wait_until="load")
            page.wait_for_function("window.aerialTiles !== undefined", timeout=30_000)
            legend = page.inner_text(".aerial-legend")
            n_drawn = page.evaluate("window.aerialTiles.getLayers().length")
            page.evaluate("window.aerialTiles.getLayers()[0].openPopup()")
            popup = page.inner_text(".leaflet-popup-content")
            page.screenshot(path=str(ARTIFACTS / "county_map.png"))
        finally:
            browser.close()
    assert not errors, errors
    assert not unexpected, unexpected  # the page asks for nothing but base-map tiles: Leaflet is inlined
    assert basemap  # the base layer was asked for (and failed, offline) without breaking the page
    for name in summary["classes"]:
        assert name in legend
    assert "low confidence (< 0.5)" in legend and "out of distribution: not to be trusted" in legend
    assert n_drawn == summary["n_tiles"] == 30
    assert summary["model_id"] in popup and "prob_" in popup
    assert any(name in popup.splitlines()[0] for name in summary["classes"])


def test_example_notebook_reads_the_predictions_with_geopandas(graph_run, tmp_path, monkeypatch):
    import nbformat
    from nbclient import NotebookClient

    predictions = graph_run["root"] / "county_predictions" / "tiny" / "predictions.parquet"
    monkeypatch.setenv("AERIAL_PREDICTIONS", str(predictions))
    monkeypatch.setenv("AERIAL_NOTEBOOK_FIGURE", str(tmp_path / "figure.png"))
    notebook = nbformat.read(REPO / "examples" / "county_predictions.ipynb", as_version=4)
    NotebookClient(notebook, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
                   ).execute()
    printed = "".join(o.get("text", "") for cell in notebook.cells if cell.cell_type == "code"
                      for o in cell.get("outputs", []))
    assert "EPSG:26919" in printed and "30 tiles" in printed
    assert (tmp_path / "figure.png").read_bytes()[:4] == b"\x89PNG"


def test_assets_declare_their_column_schema_and_show_tables(graph_run):
    expected = {"labeled_tiles": {"tile_id", "label", "split", "sha256"},
                "tile_features": {"tile_id", "features", "status"},
                "county_predictions": {"tile_id", "predicted_label", "geometry", "bbox", "model_id", "vintage"},
                "model_leaderboard": {"backbone", "algorithm", "accuracy", "macro_f1"}}
    for name, columns in expected.items():
        schema = _materialization(graph_run, name)["dagster/column_schema"].schema
        assert columns <= {c.name for c in schema.columns}, name
    board = _materialization(graph_run, "model_leaderboard")["leaderboard"]
    assert {r.data["algorithm"] for r in board.records} == {"logistic_regression", "random_forest", "mlp",
                                                                  "linear_discriminant"}
    assert all(isinstance(r.data["accuracy"], float) for r in board.records)
    shares = _materialization(graph_run, "county_land_use_map")["class_shares"]
    assert sum(r.data["tiles"] for r in shares.records) == 30


def test_prediction_checks_pass_on_the_run(graph_run):
    records = graph_run["instance"].get_event_records(EventRecordsFilter(DagsterEventType.ASSET_CHECK_EVALUATION))
    latest = {}
    for record in records:  # oldest first: the last one per check wins
        evaluation = record.event_log_entry.dagster_event.event_specific_data
        if evaluation.asset_key == AssetKey("county_predictions"):
            latest[evaluation.check_name] = evaluation.passed
    # the out-of-distribution check stays quiet on the demo county (scored by a model trained on demo tiles)
    assert latest == {"county_predictions_probabilities": True, "county_predictions_quarantine_share": True,
                      "county_predictions_geoparquet": True, "county_predictions_in_distribution": True}


def _rewrite(part: Path, change) -> None:
    table = pq.read_table(part)
    pq.write_table(change(table), part)


def test_prediction_checks_catch_corrupted_files(graph_run, tmp_path):
    source = graph_run["root"] / "county_predictions" / "tiny" / "predictions.parquet"
    good = inspect_predictions(str(source), "EPSG:26919")
    assert good.rows == 30 and good.max_probability_error < 1e-4 and not good.geo_problems
    assert good.quarantine_share == 0.0

    def copy() -> tuple[Path, Path]:
        folder = tmp_path / f"copy{len(list(tmp_path.iterdir()))}"
        shutil.copytree(source, folder)
        return folder, sorted(folder.glob("part-*.parquet"))[0]

    folder, part = copy()  # the probability of each tile's predicted class halved (any other may be ~0)

    def halve(t: pa.Table) -> pa.Table:
        for name in [n for n in t.schema.names if n.startswith("prob_")]:
            values = np.asarray(t.column(name).to_numpy(zero_copy_only=False), float)
            predicted = np.asarray(t.column("predicted_label").to_numpy(zero_copy_only=False)) == name[5:]
            t = t.set_column(t.schema.get_field_index(name), name, pa.array(np.where(predicted, values / 2, values)))
        return t

    _rewrite(part, halve)
    assert inspect_predictions(str(folder), "EPSG:26919").max_probability_error > 1e-3
    folder, part = copy()  # the geo metadata stripped: plain Parquet
    _rewrite(part, lambda t: t.replace_schema_metadata({}))
    assert any("no 'geo' metadata" in p for p in inspect_predictions(str(folder), "EPSG:26919").geo_problems)
    assert any("CRS" in p for p in inspect_predictions(str(source), "EPSG:4326").geo_problems)  # another CRS
    folder, part = copy()  # a truncated file
    part.write_bytes(part.read_bytes()[:100])
    assert any("not a readable Parquet" in p for p in inspect_predictions(str(folder), "EPSG:26919").geo_problems)
    folder, part = copy()  # every tile quarantined

    def quarantine(t: pa.Table) -> pa.Table:
        return t.set_column(t.schema.get_field_index("status"), "status", pa.array(["quarantined"] * t.num_rows))

    _rewrite(part, quarantine)
    assert inspect_predictions(str(folder), "EPSG:26919").quarantine_share > 0


def test_geotiff_names_its_classes_and_geoparquet_has_a_bbox_column(graph_run):
    import geopandas as gpd

    summary = json.loads((graph_run["root"] / "county_predictions" / "tiny" / "summary.json").read_text())
    with rasterio.open(graph_run["root"] / "county_land_use_map" / "tiny" / "land_use.tif") as ds:
        assert ds.descriptions[0].startswith("predicted land-use class")
        tags = ds.tags(1)
    for i, name in enumerate(summary["classes"]):
        assert tags[f"CLASS_{i}"] == name and tags[f"COLOR_{i}"].startswith("#")
    assert json.loads(tags["CLASSES"])["0"] == summary["classes"][0]
    folder = graph_run["root"] / "county_predictions" / "tiny" / "predictions.parquet"
    part = sorted(folder.glob("part-*.parquet"))[0]
    geo = json.loads(pq.read_schema(part).metadata[b"geo"])
    assert geo["columns"]["geometry"]["covering"]["bbox"]["xmin"] == ["bbox", "xmin"]
    frame = gpd.read_parquet(folder).sort_values("tile_id")  # GeoPandas uses the covering column, not shows it
    assert frame.crs.to_epsg() == 26919 and len(frame) == 30
    table = pq.read_table(folder, columns=["tile_id", "bbox"]).to_pandas().sort_values("tile_id")
    bbox = table["bbox"].apply(lambda b: (b["xmin"], b["ymin"], b["xmax"], b["ymax"])).tolist()
    np.testing.assert_allclose(np.array(bbox), frame.geometry.bounds.to_numpy())
    inside = gpd.read_parquet(folder, bbox=tuple(frame.geometry.iloc[0].bounds))  # a bbox filter reads it
    assert frame["tile_id"].iloc[0] in set(inside["tile_id"])


def test_every_map_and_prediction_dataset_has_a_stac_item(graph_run):
    import pystac

    root = graph_run["root"]
    summary = json.loads((root / "county_predictions" / "tiny" / "summary.json").read_text())
    item = pystac.Item.from_file(str(root / "county_land_use_map" / "tiny" / "land_use.stac.json"))
    assert item.assets["land_use"].href.endswith("land_use.tif")
    assert Path(item.assets["land_use"].get_absolute_href()).exists()
    assert item.properties["aerial:model_id"] == summary["model_id"]
    west, south, east, north = item.bbox
    assert -71.6 < west < east < -71.0 and 42.4 < south < north < 42.7  # the tiny county sits in Middlesex, MA
    predictions = pystac.Item.from_file(str(root / "county_predictions" / "tiny" / "predictions.stac.json"))
    href = Path(predictions.assets["predictions"].get_absolute_href())
    assert href.name == "predictions.parquet" and href.is_dir()
    assert predictions.bbox == pytest.approx(item.bbox, abs=1e-3)


def test_a_county_registered_by_a_stac_catalog_is_tiled_and_scored_with_the_items_year(graph_run, tiny_county,
                                                                                       tmp_path):
    """The registry's ``stac:`` entry end to end: the catalog's GeoTIFF asset is tiled and scored, and the vintage
    year comes from the item's date."""
    from datetime import datetime

    import pystac
    import yaml

    from aerial_assets.defs.partitions import county_partitions
    from aerial_assets.defs.run import Runner

    raster, _ = tiny_county
    (tmp_path / "scene").mkdir()
    shutil.copyfile(raster, tmp_path / "scene" / "scene.tif")  # beside the item, where its relative href points
    catalog = pystac.Catalog("tiny-stac", "a one-item catalog")
    item = pystac.Item("scene", geometry=None, bbox=None, datetime=datetime(2021, 6, 1), properties={})
    item.add_asset("image", pystac.Asset("./scene.tif", media_type=pystac.MediaType.GEOTIFF, roles=["data"]))
    catalog.add_item(item)
    catalog.normalize_and_save(str(tmp_path), catalog_type=pystac.CatalogType.SELF_CONTAINED)
    registry = graph_run["root"] / "counties.yaml"
    doc = yaml.safe_load(registry.read_text())
    doc["counties"]["tiny_stac"] = {"name": "Tiny (STAC)", "stac": str(tmp_path / "catalog.json")}
    registry.write_text(yaml.safe_dump(doc))
    graph_run["instance"].add_dynamic_partitions(county_partitions.name, ["tiny_stac"])
    runner = Runner(graph_run["defs"], graph_run["instance"], {})
    assert runner.run(["county_tiles", "county_predictions"], "tiny_stac")
    tiles = json.loads((graph_run["root"] / "county_tiles" / "tiny_stac" / "summary.json").read_text())
    assert tiles["year"] == 2021 and tiles["counts"]["ok"] == 30
    scored = json.loads((graph_run["root"] / "county_predictions" / "tiny_stac" / "summary.json").read_text())
    assert scored["n_tiles"] == 30 and scored["year"] == 2021


def test_classifier_metrics_write_the_test_set_predictions_per_tile(graph_run):
    """The original's ``<model>_predictions_test_set.csv``: one row per test tile, with probabilities."""
    import pandas as pd

    folder = graph_run["root"] / "classifier_metrics" / "mobilenet_v2" / "logistic_regression"
    frame = pd.read_csv(folder / "logistic_regression_predictions_test_set.csv")
    metrics = json.loads((folder / "metrics.json").read_text())
    assert list(frame.columns[:4]) == ["tile_id", "filepath", "label", "pred_label"]
    probs = [c for c in frame.columns if c.startswith("prob_")]
    assert len(frame) == sum(metrics["test"]["support"]) and len(probs) == 6
    assert (frame["label"] == frame["pred_label"]).mean() == pytest.approx(metrics["test"]["accuracy"], abs=1e-4)
    np.testing.assert_allclose(frame[probs].sum(axis=1), 1.0, atol=1e-6)
    assert frame["filepath"].map(lambda p: Path(p).exists()).all()
    # the out-of-distribution score of every test tile, its flag, and the report of both in metrics.json
    threshold = json.loads((graph_run["root"] / "land_use_classifiers" / "mobilenet_v2" / "logistic_regression" /
                            "classifier.json").read_text())["ood"]["threshold"]
    assert frame["ood_score"].notna().all() and (frame["in_distribution"] == (frame["ood_score"] <= threshold)).all()
    assert metrics["ood"]["n_out"] == int((~frame["in_distribution"]).sum())
    assert metrics["ood"]["share_out"] == pytest.approx((~frame["in_distribution"]).mean())


def test_out_of_distribution_model_is_fitted_on_train_and_thresholded_on_held_out_tiles(graph_run):
    """Its threshold is a high quantile of held-out tiles' distances, never of the rows it was fitted on: the
    validation split, or (this tiny catalog has fewer than 20 validation tiles) a fifth of the training tiles
    left out of the fit; it travels with the champion."""
    from aerial_assets.training.novelty import NoveltyModel

    root = graph_run["root"]
    folder = root / "land_use_classifiers" / "mobilenet_v2" / "linear_discriminant"
    record = json.loads((folder / "classifier.json").read_text())
    catalog = json.loads((root / "labeled_tiles" / "summary.json").read_text())
    model = NoveltyModel.from_bytes((folder / "novelty.npz").read_bytes())
    assert catalog["per_split"]["validation"] < 20
    assert record["ood"]["heldout"] == "train fifth" == model.heldout
    assert record["ood"]["n_heldout"] == model.n_heldout > 0
    assert record["ood"]["n_fit"] + record["ood"]["n_heldout"] == catalog["per_split"]["train"]
    assert record["ood"]["threshold"] == model.threshold > 0
    assert record["ood"]["training_gsd_source"] == "unknown" and record["ood"]["training_gsd_m"] is None
    champion = json.loads((root / "champion_model" / "champion.json").read_text())
    bundled = NoveltyModel.from_bytes((root / "champion_model" / "novelty.npz").read_bytes())
    champion_folder = root / "land_use_classifiers" / "mobilenet_v2" / champion["algorithm"]
    assert champion["ood"] == json.loads((champion_folder / "classifier.json").read_text())["ood"]
    assert bundled.threshold == champion["ood"]["threshold"]
    # fitted once per backbone: every classifier of the same features, views and classes reuses it
    records = [json.loads((root / "land_use_classifiers" / "mobilenet_v2" / a / "classifier.json").read_text())["ood"]
               for a in ("logistic_regression", "random_forest", "mlp", "linear_discriminant")]
    assert all(r == records[0] for r in records)


def test_county_predictions_carry_the_score_from_the_scoring_pass_and_the_maps_mark_untrusted_tiles(graph_run):
    import pandas as pd

    root = graph_run["root"]
    threshold = json.loads((root / "champion_model" / "champion.json").read_text())["ood"]["threshold"]
    frame = pd.read_parquet(root / "county_predictions" / "tiny" / "predictions.parquet")
    ok = frame[frame["status"] == "ok"]
    assert len(ok) == 30 and ok["ood_score"].notna().all()
    assert (ok["in_distribution"] == (ok["ood_score"] <= threshold)).all()
    meta = _materialization(graph_run, "county_predictions")
    summary = json.loads((root / "county_predictions" / "tiny" / "summary.json").read_text())
    n_out = int((~ok["in_distribution"]).sum())
    assert summary["trust"]["n_out_of_distribution"] == n_out
    assert summary["trust"]["ood_threshold"] == threshold
    # the demo county: 64 px windows at 3.5 m, 3.5x upsampled to MobileNet's 224 px
    assert summary["trust"]["n_upsampled"] == summary["trust"]["n_size_known"] == 30
    assert summary["trust"]["county_gsd_m"] == pytest.approx(3.5)
    item = json.loads((root / "county_predictions" / "tiny" / "predictions.stac.json").read_text())
    assert item["properties"]["aerial:ood_share"] == pytest.approx(n_out / 30)
    assert meta["ood_share"].value == pytest.approx(round(n_out / 30, 4))
    with rasterio.open(root / "county_land_use_map" / "tiny" / "land_use_trust.tif") as ds:
        trust = ds.read(1)
    map_summary = json.loads((root / "county_land_use_map" / "tiny" / "summary.json").read_text())
    top = ok[[c for c in ok.columns if c.startswith("prob_")]].max(axis=1)
    assert int((trust == 2).sum()) == n_out == map_summary["trust_counts"]["out of distribution"]
    assert int((trust == 1).sum()) == int(((top < 0.5) & ok["in_distribution"]).sum())
    assert int((trust <= 2).sum()) == 30


def test_the_score_adds_no_spark_job_and_changes_no_prediction(graph_run, tiny_county):
    """The score is computed in the scoring pass: the same county scored without it runs as many Spark jobs (the
    pixels are read and featurized once either way) and predicts the same classes and probabilities."""
    import pandas as pd
    import yaml

    from aerial_assets.defs.partitions import county_partitions
    from aerial_assets.defs.run import Runner

    root = graph_run["root"]
    registry = root / "counties.yaml"
    doc = yaml.safe_load(registry.read_text())
    doc["counties"]["tiny_no_score"] = {"name": "Tiny, without the score", "rasters": [str(tiny_county[0])]}
    registry.write_text(yaml.safe_dump(doc))
    graph_run["instance"].add_dynamic_partitions(county_partitions.name, ["tiny_no_score"])
    runner = Runner(graph_run["defs"], graph_run["instance"],
                    {"ops": {"county_predictions": {"config": {"ood_score": False}}}})
    assert runner.run(["county_tiles", "county_predictions"], "tiny_no_score")
    with_score = latest_metadata(graph_run["instance"], "county_predictions", "tiny")
    without = latest_metadata(graph_run["instance"], "county_predictions", "tiny_no_score")
    assert with_score["scoring_spark_jobs"].value == without["scoring_spark_jobs"].value
    assert str(without["ood_share"].value).startswith("unknown")
    scored = pd.read_parquet(root / "county_predictions" / "tiny" / "predictions.parquet").sort_values("tile_id")
    plain = pd.read_parquet(root / "county_predictions" / "tiny_no_score" / "predictions.parquet").sort_values("tile_id")
    assert plain["ood_score"].isna().all() and plain["in_distribution"].isna().all()
    assert list(plain["predicted_label"]) == list(scored["predicted_label"])
    probs = [c for c in scored.columns if c.startswith("prob_")]
    np.testing.assert_allclose(plain[probs].to_numpy(), scored[probs].to_numpy(), atol=1e-12)


def test_a_county_scored_with_a_chosen_model_and_a_sample(graph_run, tiny_county):
    """``model_id`` picks a leaderboard model other than the champion; ``sample_frac`` scores a stable sample."""
    import pandas as pd
    import yaml

    from aerial_assets.defs.partitions import county_partitions
    from aerial_assets.defs.run import Runner

    root = graph_run["root"]
    board = pd.read_csv(root / "model_leaderboard" / "leaderboard.csv")
    champion = json.loads((root / "champion_model" / "champion.json").read_text())["model_id"]
    other = board.loc[board["model_id"] != champion].iloc[0]
    registry = root / "counties.yaml"
    doc = yaml.safe_load(registry.read_text())
    doc["counties"]["tiny_sample"] = {"name": "Tiny, sampled", "rasters": [str(tiny_county[0])]}
    registry.write_text(yaml.safe_dump(doc))
    graph_run["instance"].add_dynamic_partitions(county_partitions.name, ["tiny_sample"])
    config = {"ops": {"county_predictions": {"config": {"model_id": str(other["model_id"]), "sample_frac": 0.5}}}}
    runner = Runner(graph_run["defs"], graph_run["instance"], config)
    assert runner.run(["county_tiles", "county_predictions"], "tiny_sample")
    summary = json.loads((root / "county_predictions" / "tiny_sample" / "summary.json").read_text())
    assert summary["model_id"] == other["model_id"] and summary["champion"] is False
    predictions = pd.read_parquet(root / "county_predictions" / "tiny_sample" / "predictions.parquet")
    assert set(predictions["model_id"]) == {other["model_id"]}
    assert 5 <= len(predictions) <= 25  # about half of the 30 tiles
    again = Runner(graph_run["defs"], graph_run["instance"], config)
    assert again.run(["county_predictions"], "tiny_sample")
    repeat = pd.read_parquet(root / "county_predictions" / "tiny_sample" / "predictions.parquet")
    assert sorted(repeat["tile_id"]) == sorted(predictions["tile_id"])  # the same sample
    by_pair = Runner(graph_run["defs"], graph_run["instance"], {"ops": {"county_predictions": {"config": {
        "model_id": f"{other['backbone']}|{other['algorithm']}"}}}})
    assert by_pair.run(["county_predictions"], "tiny_sample")
    assert json.loads((root / "county_predictions" / "tiny_sample" / "summary.json").read_text())[
        "n_tiles"] == 30
    wrong = Runner(graph_run["defs"], graph_run["instance"], {"ops": {"county_predictions": {"config": {
        "model_id": "nope"}}}})
    assert not wrong.run(["county_predictions"], "tiny_sample")
