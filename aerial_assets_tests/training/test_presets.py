"""The presets ``make run`` trains with: valid names and settings that Dagster accepts, the default being the
accurate one, and a user's ``--config`` winning over the preset key by key. No Spark."""

import pytest

from aerial_assets.backbones.zoo import zoo_entry
from aerial_assets.defs.definitions import build_defs
from aerial_assets.defs.run import build_parser, check_run_config
from aerial_assets.errors import ConfigurationError
from aerial_assets.training.classifiers import check_algorithm
from aerial_assets.training.presets import DEFAULT_PRESET, PRESETS, get_preset, merged_run_config


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_names_real_backbones_and_algorithms_and_valid_settings(name, tmp_path):
    preset = get_preset(name)
    for backbone in preset.backbones:
        zoo_entry(backbone)
    for algorithm in preset.algorithms:
        check_algorithm(algorithm)
        assert set(preset.classifier_settings(algorithm)) <= {"views", "augmentation"}
    defs = build_defs({"AERIAL_DATA_ROOT": str(tmp_path)})
    for algorithm in preset.algorithms:  # what run.py launches: the schema accepts it, or this raises
        check_run_config(defs, merged_run_config(preset, algorithm, {}))


def test_the_default_is_the_accurate_preset_combined_backbone_and_rotated_views():
    assert DEFAULT_PRESET == "accurate" and build_parser().parse_args([]).preset in PRESETS
    accurate = get_preset(DEFAULT_PRESET)
    assert any(zoo_entry(b).kind == "combined" for b in accurate.backbones)
    # multi-level features of every part: +1.1 to +1.4 points on AID for the linear model (docs/user-guide/presets.md)
    assert all(zoo_entry(p).kind == "multilevel" for b in accurate.backbones for p in zoo_entry(b).parts)
    assert accurate.feature_views == 8
    config = merged_run_config(accurate, "linear_discriminant", {})
    assert config["ops"]["tile_features"]["config"] == {"views": 8}
    assert config["ops"]["land_use_classifiers"]["config"] == {"views": 0, "augmentation": "augment"}
    # the shrinkage discriminant on every view: AID 95.2 % against 94.2 % for logistic regression (docs/user-guide/presets.md)
    assert accurate.algorithms[0] == "linear_discriminant"
    assert get_preset("fast").feature_views == 1 and get_preset("fast").backbones == ("mobilenet_v2",
                                                                                    "efficientnet_lite0")


def test_user_config_wins_key_by_key_and_keeps_other_assets():
    user = {"ops": {"tile_features": {"config": {"views": 4, "batch_size": 16}},
                    "land_use_classifiers": {"config": {"lr_reg_param_grid": [0.1]}},
                    "county_predictions": {"config": {"sample_frac": 0.5}}},
            "execution": {"config": {}}}
    merged = merged_run_config(get_preset("accurate"), "linear_discriminant", user)
    assert merged["ops"]["tile_features"]["config"] == {"views": 4, "batch_size": 16}
    assert merged["ops"]["land_use_classifiers"]["config"] == {"views": 0, "augmentation": "augment",
                                                               "lr_reg_param_grid": [0.1]}
    assert merged["ops"]["county_predictions"] == {"config": {"sample_frac": 0.5}}
    assert merged["execution"] == {"config": {}}
    assert user["ops"]["tile_features"]["config"] == {"views": 4, "batch_size": 16}  # the input is not changed
    # without an algorithm (the runs that train nothing) the classifier settings stay the user's alone
    assert merged_run_config(get_preset("fast"), None, {})["ops"] == {"tile_features": {"config": {"views": 1}}}


def test_an_unknown_preset_names_the_valid_ones():
    with pytest.raises(ConfigurationError, match="unknown preset 'precise'.*accurate, fast"):
        get_preset("precise")
