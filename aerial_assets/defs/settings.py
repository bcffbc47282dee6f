"""Every environment variable the project reads, read here (and by :func:`definitions.build_resources`, which
takes its values from these functions), so a reader finds each setting, its default and its meaning in one
place. Logic modules never read the environment: they take these values as arguments.

Light on purpose (no Dagster, Spark or asset import): ``make ui``'s run guard and ``make run``'s argument
parser read their defaults from here before anything heavy is imported.
"""

from collections.abc import Mapping
from dataclasses import dataclass

DATA_ROOT = "AERIAL_DATA_ROOT"
DEFAULT_DATA_ROOT = ".aerial_data"
WEIGHTS_DIR = "AERIAL_WEIGHTS_DIR"


def data_root(env: Mapping[str, str]) -> str:
    """``AERIAL_DATA_ROOT``: where every output goes (a folder, or an ``az://`` / ``abfss://`` URI)."""
    return env.get(DATA_ROOT) or DEFAULT_DATA_ROOT


def weights_setting(env: Mapping[str, str]) -> str:
    """``AERIAL_WEIGHTS_DIR``: the folder of user-supplied backbone weights ('' = under the data root)."""
    return env.get(WEIGHTS_DIR, "")


@dataclass(frozen=True)
class RunDefaults:
    """What ``make run`` trains when its command line names nothing (``--preset``, ``--backbones``,
    ``--algorithms``): ``AERIAL_PRESET``, ``AERIAL_BACKBONES``, ``AERIAL_ALGORITHMS`` (None = the preset's)."""

    preset: str | None
    backbones: str | None
    algorithms: str | None

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> "RunDefaults":
        return cls(env.get("AERIAL_PRESET"), env.get("AERIAL_BACKBONES"), env.get("AERIAL_ALGORITHMS"))
