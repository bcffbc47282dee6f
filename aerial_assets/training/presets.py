"""What ``make run`` trains when the user names nothing: a preset of backbones, classifiers and views.

A preset is the whole comparison in one name, so the default can be the configuration that wins on real
imagery (and costs what it costs) while a faster one stays one setting away (``AERIAL_PRESET=fast`` or
``--preset fast``). Explicit ``--backbones`` / ``--algorithms`` replace the preset's lists, and a ``--config``
YAML overrides the preset's asset settings key by key. No Dagster import: this is the run's plan, which
``run.py`` turns into Dagster run config.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from aerial_assets.errors import ConfigurationError

DEFAULT_PRESET = "accurate"


@dataclass(frozen=True)
class Preset:
    """Backbones featurized, classifiers trained on each, views computed per tile, and per-algorithm classifier
    settings (``land_use_classifiers`` config; an algorithm absent from the mapping uses the asset's defaults).
    ``cost`` says what the preset costs, as measured (docs/user-guide/presets.md)."""

    name: str
    backbones: tuple[str, ...]
    algorithms: tuple[str, ...]
    feature_views: int
    classifier_config: Mapping[str, Mapping[str, object]] = field(default_factory=dict)
    cost: str = ""

    def tile_features_config(self) -> dict[str, object]:
        return {"views": self.feature_views}

    def classifier_settings(self, algorithm: str) -> dict[str, object]:
        return dict(self.classifier_config.get(algorithm, {}))


PRESETS: dict[str, Preset] = {
    "accurate": Preset(
        name="accurate",
        backbones=("mobilenet_v2_multilevel+efficientnet_lite0_multilevel+squeezenet1_1_multilevel",),
        algorithms=("linear_discriminant", "logistic_regression", "mlp"),
        feature_views=8,
        # every rotated/flipped view of a training tile is a training row for the discriminant (its fit is two
        # passes over the rows plus one d x d solve, so 8x the rows cost little); logistic regression and the MLP,
        # whose fits grow with the rows times their iterations, average the views instead
        classifier_config={"linear_discriminant": {"views": 0, "augmentation": "augment"},
                           "logistic_regression": {"views": 0, "augmentation": "average"},
                           "mlp": {"views": 0, "augmentation": "average"}},
        cost="MobileNetV2 + EfficientNet-Lite0 + SqueezeNet multi-level features (each head and its last blocks, "
             "pooled) of 8 rotated/flipped views per tile; shrinkage discriminant trained on every view, logistic "
             "regression and MLP on the views' mean; county tiles are scored with 8 views too",
    ),
    "fast": Preset(
        name="fast",
        backbones=("mobilenet_v2", "efficientnet_lite0"),
        algorithms=("logistic_regression", "random_forest", "mlp"),
        feature_views=1,
        cost="two single backbones, one view per tile, three classifiers each (the defaults before 'accurate')",
    ),
}


def get_preset(name: str) -> Preset:
    """The preset called ``name``; an unknown name lists the valid ones."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ConfigurationError(f"unknown preset {name!r} (AERIAL_PRESET / --preset); presets: "
                                 f"{', '.join(PRESETS)}") from None


def merged_run_config(preset: Preset, algorithm: str | None,
                      user_config: Mapping[str, object]) -> dict[str, object]:
    """The run config of one run: the preset's settings for ``tile_features`` (and for ``land_use_classifiers``
    of ``algorithm``) under the user's ``--config``, which wins key by key."""
    user_ops = dict((user_config or {}).get("ops", {}) or {})
    ops: dict[str, dict[str, object]] = {}
    defaults = {"tile_features": preset.tile_features_config(),
                "land_use_classifiers": preset.classifier_settings(algorithm) if algorithm else {}}
    for asset in sorted(set(defaults) | set(user_ops)):
        user = dict((user_ops.get(asset) or {}).get("config", {}) or {})
        settings = {**defaults.get(asset, {}), **user}
        if settings or asset in user_ops:
            ops[asset] = {**(user_ops.get(asset) or {}), "config": settings}
    return {**dict(user_config or {}), "ops": ops}
