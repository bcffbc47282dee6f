"""The documented output layout under the data root (``AERIAL_DATA_ROOT``).

Every asset partition owns exactly one folder, written atomically as a whole; downstream assets
find their inputs here and nowhere else. :data:`OUTPUT_LAYOUT` is the documented tree (the docs' output layout
page is generated from it, and a test checks that every folder :class:`Layout` names is in it).
"""

from __future__ import annotations

from dataclasses import dataclass

from aerial_assets.storage.core import join

#: The documented tree under the data root: (folder, what it holds). Paths are part of the public interface.
OUTPUT_LAYOUT: tuple[tuple[str, str], ...] = (
    ("raster_labeled_tiles/", "tiles/<class>/*.png + tiles/tile_positions.csv, tiles.csv, summary.json "
                              "(with AERIAL_TRAINING_RASTERS)"),
    ("labeled_tiles/", "catalog.parquet, quarantine.csv, summary.json, label_map.json"),
    ("backbone_models/<backbone>/", "model.onnx, backbone.json"),
    ("tile_features/<backbone>/", "features.parquet/, quarantine.csv, summary.json"),
    ("land_use_classifiers/<backbone>/<algorithm>/", "pipeline_model/, novelty.npz (the out-of-distribution model), classifier.json"),
    ("classifier_metrics/<backbone>/<algorithm>/", "metrics.json, confusion.png, <algorithm>_predictions_test_set.csv"),
    ("model_leaderboard/", "leaderboard.csv"),
    ("champion_model/", "model.onnx, pipeline_model/, novelty.npz, champion.json"),
    ("county_tiles/<county>/", "tiles.parquet/, summary.json"),
    ("county_predictions/<county>/", "predictions.parquet/ (GeoParquet), predictions.stac.json, quarantine.csv, "
                                     "summary.json"),
    ("county_land_use_map/<county>/", "land_use.png, land_use.tif (COG), land_use_trust.tif (0 trusted, 1 low "
                                      "confidence, 2 out of distribution), land_use.html, land_use.stac.json, "
                                      "summary.json"),
    ("county_land_use_change/<county>/", "transitions.parquet/ (a Parquet dataset written by Spark), "
                                         "transition_matrix.csv, change.png, change.tif, change.html"),
    ("county_map_agreement/<county>/", "agreement.json, confusion_raw.png, confusion_smoothed.png (with a "
                                       "registered reference)"),
    ("demo/", "generated demo imagery (only when no data is configured)"),
    ("mlflow/", "MLflow's embedded tracking store, opened by make mlflow-ui: mlflow.db (SQLite) and artifacts/; with "
                "an Azure data root only artifacts/ (the database stays in ./.aerial_data/mlflow); unused when "
                "MLFLOW_TRACKING_URI is set"),
    ("dagster_home/", "Dagster's run history for make run / make ui (local even with an Azure data root)"),
    ("counties.yaml", "(optional) your county registry"),
)

# The files one asset hands to another; the writer names them with these, the readers through Layout's methods.
CATALOG = "catalog.parquet"
FEATURES = "features.parquet"
MODEL = "model.onnx"
PIPELINE = "pipeline_model"
NOVELTY = "novelty.npz"
LEADERBOARD = "leaderboard.csv"
TILES = "tiles.parquet"
PREDICTIONS = "predictions.parquet"
QUARANTINE = "quarantine.csv"
MLFLOW_DIR = "mlflow"


@dataclass(frozen=True)
class Layout:
    """URIs of every output under one data root."""

    root: str

    def labeled_tiles(self) -> str:
        return join(self.root, "labeled_tiles")

    def raster_labeled_tiles(self) -> str:
        return join(self.root, "raster_labeled_tiles")

    def backbone_model(self, backbone: str) -> str:
        return join(self.root, "backbone_models", backbone)

    def tile_features(self, backbone: str) -> str:
        return join(self.root, "tile_features", backbone)

    def classifier(self, backbone: str, algorithm: str) -> str:
        return join(self.root, "land_use_classifiers", backbone, algorithm)

    def classifier_metrics(self, backbone: str, algorithm: str) -> str:
        return join(self.root, "classifier_metrics", backbone, algorithm)

    def leaderboard(self) -> str:
        return join(self.root, "model_leaderboard")

    def champion(self) -> str:
        return join(self.root, "champion_model")

    def county_tiles(self, county: str) -> str:
        return join(self.root, "county_tiles", county)

    def county_predictions(self, county: str) -> str:
        return join(self.root, "county_predictions", county)

    def county_map(self, county: str) -> str:
        return join(self.root, "county_land_use_map", county)

    def county_agreement(self, county: str) -> str:
        return join(self.root, "county_map_agreement", county)

    def county_change(self, county: str) -> str:
        return join(self.root, "county_land_use_change", county)

    def demo(self) -> str:
        return join(self.root, "demo")

    def demo_training_tiles(self) -> str:
        return join(self.root, "demo", "training_tiles")

    def demo_counties(self) -> str:
        return join(self.root, "demo", "counties")

    # --- the files read by other assets ------------------------------------------------------------------

    def catalog(self) -> str:
        return join(self.labeled_tiles(), CATALOG)

    def features(self, backbone: str) -> str:
        return join(self.tile_features(backbone), FEATURES)

    def backbone_onnx(self, backbone: str) -> str:
        return join(self.backbone_model(backbone), MODEL)

    def classifier_pipeline(self, backbone: str, algorithm: str) -> str:
        return join(self.classifier(backbone, algorithm), PIPELINE)

    def leaderboard_csv(self) -> str:
        return join(self.leaderboard(), LEADERBOARD)

    def champion_onnx(self) -> str:
        return join(self.champion(), MODEL)

    def champion_pipeline(self) -> str:
        return join(self.champion(), PIPELINE)

    def tiles_parquet(self, county: str) -> str:
        return join(self.county_tiles(county), TILES)

    def predictions(self, county: str) -> str:
        return join(self.county_predictions(county), PREDICTIONS)
