"""Model comparison parts that need no Spark: label maps, rotation/flip views, view selection, parameters."""

import numpy as np
import pandas as pd
import pytest
from pydantic import ValidationError

from aerial_assets.backbones.inference import dihedral_views
from aerial_assets.errors import ConfigurationError
from aerial_assets.imagery.label_map import apply_label_map, parse_label_map
from aerial_assets.tables import TileStatus
from aerial_assets.training.classifiers import ClassifierParams, view_selector

MAP = """
classes:
  Developed: [Commercial, Industrial]
  Water: River
ignore: [Airport]
"""


def _catalog() -> pd.DataFrame:
    labels = ["Commercial", "Industrial", "River", "Airport", "Desert", "River"]
    return pd.DataFrame({"tile_id": [f"t{i}" for i in range(6)], "label": labels,
                         "status": ["ok"] * 5 + ["quarantined"], "reason": [""] * 5 + ["corrupt"]})


def test_label_map_relabels_and_reports_unmapped_classes():
    out, report = apply_label_map(_catalog(), parse_label_map(MAP, "map.yaml"))
    assert out["label"].tolist()[:3] == ["Developed", "Developed", "Water"]
    assert out["source_label"].tolist()[:3] == ["Commercial", "Industrial", "River"]
    assert out.loc[3, "status"] == TileStatus.IGNORED
    assert out.loc[4, "status"] == TileStatus.UNMAPPED and "'Desert' is not in the label map map.yaml" in out.loc[4, "reason"]
    assert out.loc[5, "status"] == "quarantined"  # quarantine is kept, not relabelled into training
    assert report.unmapped == ["Desert"] and report.ignored == ["Airport"]
    assert report.n_unmapped_tiles == 1
    assert report.classes["River"].model_dump() == {"target": "Water", "tiles": 1}
    assert len(out) == len(_catalog())  # nothing dropped


def test_label_map_errors_name_the_problem():
    with pytest.raises(ConfigurationError, match="'A' is mapped twice"):
        parse_label_map("classes: {X: [A], Y: [A]}")
    with pytest.raises(ConfigurationError, match="both mapped and ignored"):
        parse_label_map("classes: {X: [A]}\nignore: [A]")
    with pytest.raises(ConfigurationError, match="classes"):
        parse_label_map("ignore: [A]", "m.yaml")


def test_map_classes_without_folder_are_reported():
    _, report = apply_label_map(_catalog(), parse_label_map("classes: {Developed: [Commercial, Comercial]}"))
    assert report.not_found == ["Comercial"]


def test_dihedral_views_are_the_eight_symmetries_of_the_square():
    image = np.arange(3 * 3 * 3, dtype=np.uint8).reshape(1, 3, 3, 3)
    views = dihedral_views(image, 8)
    assert views.shape == (8, 1, 3, 3, 3)
    assert np.array_equal(views[0], image)
    flat = {v.tobytes() for v in views}
    assert len(flat) == 8  # all distinct
    four = dihedral_views(image, 4)
    assert np.array_equal(four, views[:4])
    assert np.array_equal(views[2, 0], image[0, ::-1, ::-1])  # 180 degrees
    with pytest.raises(ValueError):
        dihedral_views(image, 3)


def _stored(n_views: int) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    per_view = rng.normal(size=(3, n_views, 5)).astype(np.float32)
    return pd.DataFrame({
        "tile_id": ["a", "b", "c"], "label": ["x", "y", "x"], "split": ["train", "test", "train"],
        "features": list(per_view.mean(axis=1)), "view_features": list(per_view.reshape(3, -1)),
        "status": "ok", "reason": "",
    }), per_view


def test_four_views_averaged_give_one_row_per_tile():
    frame, per_view = _stored(8)
    out = pd.concat(view_selector(4, 8, augment=False)(iter([frame])))
    assert len(out) == 3
    np.testing.assert_allclose(np.stack(out["features"]), per_view[:, :4].mean(axis=1), rtol=1e-6)


def test_four_views_augmented_give_four_training_rows_per_training_tile():
    frame, per_view = _stored(8)
    out = pd.concat(view_selector(4, 8, augment=True)(iter([frame])))
    train = out[out["split"] == "train"]
    assert len(train) == 2 * 4 and (train["tile_id"].value_counts() == 4).all()
    np.testing.assert_allclose(np.stack(train[train["tile_id"] == "a"]["features"]), per_view[0, :4], rtol=1e-6)
    test = out[out["split"] == "test"]
    assert len(test) == 1  # test tiles: one averaged row, scored like county tiles
    np.testing.assert_allclose(test["features"].iloc[0], per_view[1, :4].mean(axis=0), rtol=1e-6)


def test_classifier_params_validate_and_expose_grids():
    assert ClassifierParams().grid_for("logistic_regression") == {"regParam": [0.001, 0.01, 0.1]}
    assert ClassifierParams().grid_for("random_forest") == {}
    assert ClassifierParams(mlp_hidden_grid=(128, 256)).grid_for("mlp") == {"hidden": [128, 256]}
    with pytest.raises(ValidationError, match="search"):
        ClassifierParams(search="grid")
    with pytest.raises(ValidationError, match="views"):
        ClassifierParams(views=3)


def test_champion_is_picked_on_validation_never_on_test():
    from aerial_assets.training.leaderboard import pick_champion

    frame = pd.DataFrame({
        "backbone": ["a", "b"], "algorithm": ["mlp", "logistic_regression"],
        "accuracy": [0.99, 0.70], "macro_f1": [0.99, 0.70],  # test: a is far better
        "val_accuracy": [0.80, 0.90], "val_macro_f1": [0.80, 0.90],  # validation: b is better
    })
    best, why = pick_champion(frame)
    assert (best["backbone"], best["algorithm"]) == ("b", "logistic_regression")
    assert "validation macro-F1" in why
