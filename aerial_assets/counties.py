"""The county registry: which counties exist and where their imagery lives. No Dagster import.

A county is a dynamic partition; the registry (a YAML file) is where a user declares one::

    counties:
      middlesex_ma:
        name: Middlesex County, MA
        rasters: [/data/naip/middlesex_2018_a.tif, /data/naip/middlesex_2018_b.tif]

Registering a county here and running the registry sensor (or ``make run``) adds its partition.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import yaml

from aerial_assets.errors import CountyError

KEY_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_\-]{0,62}$")


@dataclass(frozen=True)
class County:
    """One registered county."""

    key: str
    name: str
    rasters: list[str] = field(default_factory=list)


def check_key(key: str) -> str:
    if not KEY_PATTERN.match(key):
        raise CountyError(
            f"county key {key!r} is not valid: use lower-case letters, digits, '_' or '-' (for example middlesex_ma)"
        )
    return key


def parse_registry(text: str, source: str) -> dict[str, County]:
    """Parse registry YAML; every problem names the county and the fix."""
    try:
        doc = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise CountyError(f"county registry {source} is not valid YAML: {exc}") from exc
    entries = doc.get("counties") if isinstance(doc, dict) else None
    if not isinstance(entries, dict):
        raise CountyError(f"county registry {source} must have a top-level 'counties:' mapping")
    counties = {}
    for key, entry in entries.items():
        check_key(str(key))
        entry = entry or {}
        rasters = entry.get("rasters") or []
        if isinstance(rasters, str):
            rasters = [rasters]
        if not rasters:
            raise CountyError(f"county {key!r} in {source} lists no rasters: add 'rasters: [path/to/image.tif]'")
        counties[str(key)] = County(key=str(key), name=str(entry.get("name", key)), rasters=[str(r) for r in rasters])
    return counties


def render_registry(counties: dict[str, County]) -> str:
    doc = {"counties": {c.key: {"name": c.name, "rasters": c.rasters} for c in counties.values()}}
    return yaml.safe_dump(doc, sort_keys=True)
