"""The county registry: which counties exist and where their imagery lives. No Dagster import.

A county is a dynamic partition; the registry (a YAML file) is where a user declares one::

    counties:
      middlesex_ma:                      # one vintage: partition key "middlesex_ma"
        name: Middlesex County, MA
        rasters: [/data/naip/middlesex_2018_a.tif, /data/naip/middlesex_2018_b.tif]
        bounds: [-71.9, 42.2, -71.0, 42.8]   # optional lon/lat box: rasters must overlap it
      nd_quad:                           # several vintages: partition keys "nd_quad@2014", "nd_quad@2020"
        vintages:
          2014: [/data/naip/nd_2014.tif]
          2020: [/data/naip/nd_2020.tif]
      boston_tiles:                      # ready-made tiles and their summary CSV
        tiles: {folder: /data/tiles, summary: /data/tiles/tile_summaries.csv, crs: "EPSG:26919"}

Registering a county here and running the registry sensor (or ``make run``) adds its partitions.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import yaml

from aerial_assets.errors import CountyError

KEY_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_\-]{0,62}$")
VINTAGE_SEPARATOR = "@"


@dataclass(frozen=True)
class TileFolder:
    """Ready-made tiles: image files and a summary CSV of their bounds (in ``crs``)."""

    folder: str
    summary: str
    crs: str


@dataclass(frozen=True)
class County:
    """One registered county vintage (the unit that is tiled, scored and mapped)."""

    key: str
    name: str
    rasters: list[str] = field(default_factory=list)
    area: str = ""
    year: int | None = None
    bounds: tuple[float, float, float, float] | None = None
    tiles: TileFolder | None = None

    @property
    def area_key(self) -> str:
        return self.area or self.key


def vintage_key(area: str, year: int) -> str:
    return f"{area}{VINTAGE_SEPARATOR}{year}"


def check_key(key: str) -> str:
    if not KEY_PATTERN.match(key):
        raise CountyError(
            f"county key {key!r} is not valid: use lower-case letters, digits, '_' or '-' (for example middlesex_ma)"
        )
    return key


def _bounds(entry: dict, key: str, source: str) -> tuple[float, float, float, float] | None:
    raw = entry.get("bounds")
    if raw is None:
        return None
    try:
        west, south, east, north = (float(v) for v in raw)
    except (TypeError, ValueError):
        raise CountyError(f"county {key!r} in {source}: bounds must be [west, south, east, north] in degrees") from None
    if not (west < east and south < north):
        raise CountyError(f"county {key!r} in {source}: bounds {raw} are empty (need west < east, south < north)")
    return west, south, east, north


def _rasters(value: object, key: str, source: str) -> list[str]:
    rasters = [value] if isinstance(value, str) else list(value or [])
    if not rasters:
        raise CountyError(f"county {key!r} in {source} lists no rasters: add 'rasters: [path/to/image.tif]'")
    return [str(r) for r in rasters]


def parse_registry(text: str, source: str) -> dict[str, County]:
    """Parse registry YAML into one :class:`County` per partition key; problems name the county and the fix."""
    try:
        doc = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise CountyError(f"county registry {source} is not valid YAML: {exc}") from exc
    entries = doc.get("counties") if isinstance(doc, dict) else None
    if not isinstance(entries, dict):
        raise CountyError(f"county registry {source} must have a top-level 'counties:' mapping")
    counties: dict[str, County] = {}
    for key, entry in entries.items():
        key = check_key(str(key))
        entry = entry or {}
        name, bounds = str(entry.get("name", key)), _bounds(entry, key, source)
        if "vintages" in entry:
            for year, rasters in (entry["vintages"] or {}).items():
                try:
                    year = int(year)
                except ValueError:
                    raise CountyError(f"county {key!r} in {source}: vintage {year!r} is not a year") from None
                vkey = vintage_key(key, year)
                counties[vkey] = County(vkey, f"{name} ({year})", _rasters(rasters, vkey, source), key, year, bounds)
        elif "tiles" in entry:
            tiles = entry["tiles"] or {}
            missing = [f for f in ("folder", "summary", "crs") if not tiles.get(f)]
            if missing:
                raise CountyError(f"county {key!r} in {source}: 'tiles' needs {', '.join(missing)}")
            folder = TileFolder(str(tiles["folder"]), str(tiles["summary"]), str(tiles["crs"]))
            counties[key] = County(key, name, [], key, entry.get("year"), bounds, folder)
        else:
            counties[key] = County(key, name, _rasters(entry.get("rasters"), key, source), key, entry.get("year"),
                                   bounds)
    return counties


def render_registry(counties: dict[str, County]) -> str:
    """YAML for single-vintage raster counties (what tests and the benchmark register)."""
    doc = {"counties": {c.key: {"name": c.name, "rasters": c.rasters} for c in counties.values()}}
    return yaml.safe_dump(doc, sort_keys=True)


def earlier_vintages(counties: dict[str, County], county: County) -> list[County]:
    """Vintages of the same area before ``county``'s year, oldest first."""
    if county.year is None:
        return []
    same = [c for c in counties.values() if c.area_key == county.area_key and c.year is not None]
    return sorted((c for c in same if c.year < county.year), key=lambda c: c.year)
