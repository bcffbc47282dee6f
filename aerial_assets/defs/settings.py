"""The few settings read before the code location loads (``make ui``'s run guard, ``make run``'s argument parser),
taken from :class:`aerial_assets.settings.AerialSettings`, where every setting is declared.

Light on purpose (no Dagster, Spark or asset import): they run before anything heavy is imported.
"""

from collections.abc import Mapping
from dataclasses import dataclass

from aerial_assets.settings import DEFAULT_DATA_ROOT, AerialSettings

__all__ = ["DEFAULT_DATA_ROOT", "RunDefaults", "data_root", "weights_setting"]


def data_root(env: Mapping[str, str]) -> str:
    """``AERIAL_DATA_ROOT``: where every output goes (a folder, or an ``az://`` / ``abfss://`` URI)."""
    return AerialSettings.from_env(_only(env, "AERIAL_DATA_ROOT")).data_root


def weights_setting(env: Mapping[str, str]) -> str:
    """``AERIAL_WEIGHTS_DIR``: the folder of user-supplied backbone weights ('' = under the data root)."""
    return AerialSettings.from_env(_only(env, "AERIAL_WEIGHTS_DIR")).weights_dir


def _only(env: Mapping[str, str], name: str) -> dict[str, str]:
    """One variable of ``env``: a reader of one setting must not fail on another one's bad value (the code location
    reports that, when it loads)."""
    return {name: env[name]} if name in env else {}


@dataclass(frozen=True)
class RunDefaults:
    """What ``make run`` trains when its command line names nothing (``--preset``, ``--backbones``,
    ``--algorithms``): ``AERIAL_PRESET``, ``AERIAL_BACKBONES``, ``AERIAL_ALGORITHMS`` (None = the preset's)."""

    preset: str | None
    backbones: str | None
    algorithms: str | None

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> "RunDefaults":
        settings = AerialSettings.from_env(env)
        return cls(settings.preset, settings.backbones, settings.algorithms)
