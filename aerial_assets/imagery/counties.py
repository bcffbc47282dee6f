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
      middlesex_tiles:                   # the original sample: corners in degrees (llcrnrlat, ...), no crs
        tiles: {folder: /data/middlesex, summary: /data/middlesex/tile_summaries.csv}
      with_nlcd:                         # any entry may name a reference land-cover raster (county_map_agreement)
        rasters: [/data/naip/town.tif]
        reference: {raster: /data/nlcd_2011.tif, legend: examples/nlcd2011_six_classes.yaml}
      story_ia:                          # the items of a STAC catalog (local or az://): rasters and year from them
        stac: az://imagery/naip/story_2019/catalog.json
        stac_asset: image                # optional: the asset to tile (default: the item's one GeoTIFF asset)
        stac_allowed_roots: [https://naipeuwest.blob.core.windows.net/naip/]  # optional: where else hrefs may point

A ``stac:`` entry names a STAC Catalog or Collection (its items are walked), an ItemCollection or one Item,
instead of ``rasters:``. Its rasters are the items' GeoTIFF assets and its vintage ``year`` the items' year: all
items must be of one year. An explicit ``year:`` must agree with every item's date (it is needed only for items
dated by a range over several years, and it never filters items: a catalog of several years is several entries,
one catalog each). Its hrefs must stay in the catalog's folder (its container on ``az://``) or under a prefix
listed in ``stac_allowed_roots``; remote hrefs (``https://``) are read only when listed there. The STAC is read when the county is used (:func:`resolve_county`), not when the registry is
parsed: the registry stays cheap to parse (the sensor parses it every minute), and a catalog that cannot be
read fails its own county only.

Registering a county here and running the registry sensor (or ``make run``) adds its partitions.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field, replace
from typing import Annotated, Any

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError

from aerial_assets.errors import CountyError
from aerial_assets.safety.redaction import short
from aerial_assets.safety.yaml_files import YamlLimits, load_yaml

# fullmatch, not match with "$": "$" also matches before a trailing newline, and "key\n" is no partition key.
KEY_PATTERN = re.compile(r"[a-z0-9][a-z0-9_\-]{0,62}")
VINTAGE_SEPARATOR = "@"
FIRST_YEAR, LAST_YEAR = 1900, 2100
README = "see docs/user-guide/counties.md"
# A registry of all 3,143 US counties with ten vintages of two rasters each is 3.0 MB and parses in 1.6 s (this 2-core
# machine); past 8 MB it is not a registry but an accident, which the sensor would parse every minute. Documented in
# docs/user-guide/counties.md.
REGISTRY_MAX_BYTES = 8_000_000
REGISTRY_LIMITS = YamlLimits(max_bytes=REGISTRY_MAX_BYTES, max_nodes=2_000_000, max_depth=32)


@dataclass(frozen=True)
class TileFolder:
    """Ready-made tiles: image files and a summary CSV of their bounds (in ``crs``; EPSG:4326 when the registry
    names none, for the original sample's corners in degrees)."""

    folder: str
    summary: str
    crs: str


@dataclass(frozen=True)
class Reference:
    """A reference land-cover raster of integer codes and the legend (YAML) grouping its codes into classes."""

    raster: str
    legend: str


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
    stac: str | None = None  # a STAC catalog, item collection or item: rasters and year come from it
    stac_asset: str | None = None
    stac_allowed_roots: tuple[str, ...] = ()  # where the STAC's hrefs may point besides the catalog's own folder
    reference: Reference | None = None  # what county_map_agreement compares the map with

    @property
    def area_key(self) -> str:
        return self.area or self.key


def vintage_key(area: str, year: int) -> str:
    return f"{area}{VINTAGE_SEPARATOR}{year}"


def check_key(key: str) -> str:
    if not isinstance(key, str) or not KEY_PATTERN.fullmatch(key):
        raise CountyError(
            f"county key {short(key)} is not valid: use lower-case letters, digits, '_' or '-' (for example middlesex_ma), "
            "with no spaces or line breaks"
        )
    return key


# --- the registry's schema (pydantic): every key is known, every value has its type, nothing is ignored ----------
def _no_bool(value: Any) -> Any:
    """YAML reads ``yes``/``true`` as a boolean, which pydantic would take for the year 1."""
    if isinstance(value, bool):
        raise ValueError("a boolean is not a year")
    return value


def _path_list(value: Any) -> Any:
    """``rasters: a.tif`` is short for ``rasters: [a.tif]``."""
    return [value] if isinstance(value, str) else value


_Year = Annotated[int, BeforeValidator(_no_bool), Field(ge=FIRST_YEAR, le=LAST_YEAR)]
_Path = Annotated[str, Field(min_length=1)]
_Paths = Annotated[list[_Path], BeforeValidator(_path_list)]


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, coerce_numbers_to_str=True, allow_inf_nan=False)


class TilesSpec(_Spec):
    """``tiles: {folder, summary, crs}``: where ready-made tiles and their summary CSV are, and the bounds' CRS
    (optional: without it the summary is the original layout, corners in degrees, EPSG:4326)."""

    folder: _Path
    summary: _Path
    crs: _Path | None = None


class ReferenceSpec(_Spec):
    """``reference: {raster, legend}``: a land-cover raster of integer codes and the legend YAML of its codes."""

    raster: _Path
    legend: _Path


class CountySpec(_Spec):
    """One ``counties:`` entry: exactly one of ``rasters``, ``vintages``, ``tiles`` or ``stac``."""

    name: str | None = None
    rasters: _Paths | None = None
    bounds: tuple[float, float, float, float] | None = None
    year: _Year | None = None
    vintages: dict[_Year, _Paths | None] | None = None
    tiles: TilesSpec | None = None
    stac: _Path | None = None
    stac_asset: _Path | None = None
    stac_allowed_roots: _Paths | None = None
    reference: ReferenceSpec | None = None


class RegistrySpec(_Spec):
    """The registry file: one top-level ``counties:`` mapping of partition keys to entries."""

    counties: dict[str, CountySpec | None]


def _allowed(model: type[BaseModel]) -> list[str]:
    return sorted(model.model_fields)


def _unknown_key(name: Any, model: type[BaseModel]) -> str:
    allowed = _allowed(model)
    close = difflib.get_close_matches(str(name), allowed, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"unknown key {short(name)}{hint}; allowed keys: {', '.join(allowed)}"


def _explain(error: dict, raw: dict, source: str) -> str:
    """One pydantic error as a sentence that names the file, the county and the fix."""
    loc, kind, value = error["loc"], error["type"], error.get("input")
    if len(loc) < 2 or loc[0] != "counties":
        if kind == "extra_forbidden":
            return f"county registry {source}: top-level {_unknown_key(loc[-1], RegistrySpec)} ({README})"
        return f"county registry {source} must have a top-level 'counties:' mapping of county keys to settings ({README})"
    key, path = loc[1], loc[2:]
    where = f"county {short(key)} in {source}"
    if not path:
        return (f"{where} is {short(value)}, not a mapping of settings: write it as "
                f"'{key}: {{rasters: [path/to/image.tif]}}' ({README})")
    top = path[0]
    if kind == "extra_forbidden":
        if top == "reference" and len(path) == 2:
            return f"{where}: reference: {_unknown_key(path[-1], ReferenceSpec)} (reference: {{raster, legend}})"
        model = TilesSpec if top == "tiles" and len(path) == 2 else CountySpec
        return f"{where}: {'tiles: ' if model is TilesSpec else ''}{_unknown_key(path[-1], model)} ({README})"
    if top == "year":
        return f"{where}: year {short(value)} is not a year: write a year from {FIRST_YEAR} to {LAST_YEAR}, such as 2018"
    if top == "vintages":
        if len(path) == 1:
            return f"{where}: 'vintages' must map years to rasters, such as 'vintages: {{2018: [a.tif]}}'"
        if path[-1] == "[key]":
            return (f"{where}: vintage {path[1]!r} is not a year: the keys of 'vintages' are years from {FIRST_YEAR} "
                    f"to {LAST_YEAR}, such as 'vintages: {{2018: [a.tif]}}'")
        return f"{where}: vintage {path[1]}: rasters must be a path or a list of paths, such as [a.tif]"
    if top == "bounds":
        return (f"{where}: bounds {short(raw.get('bounds'))} must be [west, south, east, north]: four finite numbers, "
                "in degrees")
    if top == "rasters":
        return f"{where}: rasters must be a path or a list of paths, such as 'rasters: [a.tif, b.tif]'"
    if top == "tiles":
        tiles = raw.get("tiles")
        if len(path) == 1 or not isinstance(tiles, dict):
            return f"{where}: 'tiles' must be a mapping {{folder: ..., summary: ..., crs: ...}} ({README})"
        missing = [f for f in ("folder", "summary") if not tiles.get(f)]
        if missing:
            return f"{where}: 'tiles' needs {', '.join(missing)}"
        if path[1] == "crs":
            return (f"{where}: tiles crs must be a CRS name such as 'EPSG:26919', or left out for a summary with "
                    "corners in degrees (EPSG:4326)")
        return f"{where}: tiles {path[1]} must be text"
    if top == "name":
        return f"{where}: name must be text"
    if top == "reference":
        example = "'reference: {raster: nlcd.tif, legend: examples/nlcd2011_six_classes.yaml}'"
        ref = raw.get("reference")
        if len(path) == 1 or not isinstance(ref, dict):
            return f"{where}: 'reference' must be a mapping {{raster: ..., legend: ...}}, such as {example}"
        missing = [f for f in ("raster", "legend") if not ref.get(f)]
        if missing:
            return f"{where}: 'reference' needs {', '.join(missing)}, such as {example}"
        return f"{where}: reference {path[1]} must be text (a path or az:// URI)"
    if top in ("stac", "stac_asset"):
        example = "stac: path/or/az://container/catalog.json" if top == "stac" else "stac_asset: image"
        return f"{where}: {top} must be text, such as '{example}'"
    return f"{where}: {'.'.join(str(p) for p in path)}: {error['msg']}"


def _check_crs(crs: str, where: str) -> None:
    from rasterio.crs import CRS
    from rasterio.errors import CRSError

    try:
        CRS.from_user_input(crs)
    except CRSError:
        raise CountyError(f"{where}: tiles crs {crs!r} is not a CRS: name the CRS of the summary's bounds, such as "
                          "'EPSG:26919'") from None


def _bounds(spec: CountySpec, where: str) -> tuple[float, float, float, float] | None:
    if spec.bounds is None:
        return None
    west, south, east, north = spec.bounds
    if not (west < east and south < north):
        raise CountyError(f"{where}: bounds {list(spec.bounds)} are empty (need west < east, south < north)")
    if not (-180 <= west and east <= 180 and -90 <= south and north <= 90):
        raise CountyError(f"{where}: bounds {list(spec.bounds)} are not longitudes and latitudes (need west, east in "
                          "[-180, 180] and south, north in [-90, 90]): the bounds are in degrees")
    return west, south, east, north


def _rasters(paths: list[str] | None, where: str) -> list[str]:
    if not paths:
        raise CountyError(f"{where} lists no rasters: add 'rasters: [path/to/image.tif]' (or 'stac: catalog.json')")
    return list(paths)


def _load_yaml(text: str, source: str) -> Any:
    """Duplicate keys are refused (``yaml.safe_load`` keeps the last of two equal keys without a word, and a
    registry must not lose a county); so are files over :data:`REGISTRY_LIMITS` (the sensor parses the registry)."""
    return load_yaml(text, f"county registry {source}", limits=REGISTRY_LIMITS, unique_keys=True,
                     error=CountyError) or {}


def parse_registry(text: str, source: str) -> dict[str, County]:
    """Parse registry YAML into one :class:`County` per partition key; problems name the county and the fix.

    The whole file is checked before anything runs (``make run`` calls this first): unknown keys, wrong
    types, years that are not years and keys that are not partition keys are all refused here, never
    ignored and never left to fail at scoring time.
    """
    doc = _load_yaml(text, source)
    if not isinstance(doc, dict) or not isinstance(doc.get("counties"), dict):
        raise CountyError(f"county registry {source} must have a top-level 'counties:' mapping ({README})")
    raw_entries = {str(k): v for k, v in doc["counties"].items()}
    for key in raw_entries:
        try:
            check_key(key)
        except CountyError as exc:
            raise CountyError(f"county registry {source}: {exc}") from None
    try:
        spec = RegistrySpec.model_validate({**doc, "counties": raw_entries})
    except ValidationError as exc:
        errors = exc.errors()
        messages = []
        for error in errors:
            loc = error["loc"]
            raw = raw_entries.get(loc[1], {}) if len(loc) > 1 and loc[0] == "counties" else {}
            message = _explain(error, raw if isinstance(raw, dict) else {}, source)
            if message not in messages:
                messages.append(message)
        more = f" (and {len(messages) - 5} more problems)" if len(messages) > 5 else ""
        raise CountyError("; ".join(messages[:5]) + more) from None
    counties: dict[str, County] = {}
    for key, entry in spec.counties.items():
        entry = entry or CountySpec()
        where = f"county {key!r} in {source}"
        given = [f for f in ("rasters", "vintages", "tiles", "stac") if getattr(entry, f) is not None]
        if len(given) > 1:
            raise CountyError(f"{where} has {' and '.join(repr(g) for g in given)}: give exactly one of 'rasters', "
                              f"'vintages', 'tiles' or 'stac' ({README})")
        if entry.stac_allowed_roots is not None and entry.stac is None:
            raise CountyError(f"{where} has 'stac_allowed_roots' but no 'stac': it lists where a STAC catalog's "
                              "hrefs may point; add 'stac: catalog.json' or remove it")
        if entry.stac_asset is not None and entry.stac is None:
            raise CountyError(f"{where} has 'stac_asset' but no 'stac': stac_asset names the asset of the STAC "
                              "items to tile; add 'stac: catalog.json' or remove 'stac_asset'")
        name, bounds = entry.name if entry.name is not None else key, _bounds(entry, where)
        if entry.vintages is not None:
            if entry.year is not None:
                raise CountyError(f"{where} has both 'year' and 'vintages': the years are the keys of 'vintages'; "
                                  "remove 'year'")
            if not entry.vintages:
                raise CountyError(f"{where}: 'vintages' is empty: add 'vintages: {{2018: [a.tif]}}'")
            for year, rasters in entry.vintages.items():
                vkey = vintage_key(key, year)
                counties[vkey] = County(vkey, f"{name} ({year})", _rasters(rasters, f"county {vkey!r} in {source}"),
                                        key, year, bounds)
        elif entry.tiles is not None:
            crs = entry.tiles.crs if entry.tiles.crs is not None else "EPSG:4326"  # the degree layout's
            _check_crs(crs, where)
            folder = TileFolder(entry.tiles.folder, entry.tiles.summary, crs)
            counties[key] = County(key, name, [], key, entry.year, bounds, folder)
        elif entry.stac is not None:
            counties[key] = County(key, name, [], key, entry.year, bounds, stac=entry.stac,
                                   stac_asset=entry.stac_asset,
                                   stac_allowed_roots=tuple(entry.stac_allowed_roots or ()))
        else:
            counties[key] = County(key, name, _rasters(entry.rasters, where), key, entry.year, bounds)
        if entry.reference is not None:  # one reference for every vintage of the entry
            reference = Reference(entry.reference.raster, entry.reference.legend)
            for vkey in [vintage_key(key, y) for y in entry.vintages] if entry.vintages else [key]:
                counties[vkey] = replace(counties[vkey], reference=reference)
    return counties


def resolve_county(county: County) -> County:
    """``county`` with its rasters and year read from its STAC (``stac:``); any other county unchanged.

    Called where a county is used (tiling it), not by :func:`parse_registry`, so that a STAC that cannot be read
    fails that county's run with the reason and never the registry, the sensor or the other counties. All items
    must be of one year (a vintage is one year of imagery); an explicit ``year:`` must agree with every item
    (it dates items whose range spans several years; it does not choose among items). Raises
    :class:`CountyError` naming the county, the catalog and the item.
    """
    if county.stac is None or county.rasters:
        return county
    from aerial_assets.imagery.stac_catalogs import rasters_from_stac

    where = f"county {county.key!r} (stac: {county.stac})"
    try:
        rasters = rasters_from_stac(county.stac, county.stac_asset, county.stac_allowed_roots)
    except CountyError as exc:
        raise CountyError(f"{where}: {exc}") from None
    if county.year is not None:
        wrong = [r for r in rasters if not r.covers(county.year)]
        if wrong:
            listed = ", ".join(f"{r.item_id} ({r.date_text})" for r in wrong[:5])
            raise CountyError(f"{where}: the entry says 'year: {county.year}' but {len(wrong)} item(s) are of "
                              f"another date: {listed}; fix the year or remove it (the items' dates give it)")
        year = county.year
    else:
        spanning = [r for r in rasters if r.year is None]
        if spanning:
            listed = ", ".join(f"{r.item_id} ({r.date_text})" for r in spanning[:5])
            raise CountyError(f"{where}: item(s) dated over several years: {listed}; add 'year: <vintage>' to the "
                              "entry")
        by_year: dict[int, list[str]] = {}
        for r in rasters:
            by_year.setdefault(r.year, []).append(r.item_id)  # type: ignore[arg-type]
        if len(by_year) > 1:
            listed = "; ".join(f"{y}: {len(ids)} ({', '.join(ids[:3])}{', ...' if len(ids) > 3 else ''})"
                               for y, ids in sorted(by_year.items()))
            raise CountyError(f"{where}: the items are of {len(by_year)} years ({listed}); a county vintage is one "
                              "year of imagery: register one entry per year, each with a catalog of that year")
        year = next(iter(by_year))
        if not FIRST_YEAR <= year <= LAST_YEAR:
            raise CountyError(f"{where}: the items are dated {year}, not a year from {FIRST_YEAR} to {LAST_YEAR}")
    return replace(county, rasters=[r.href for r in rasters], year=year)


def render_registry(counties: dict[str, County]) -> str:
    """YAML for single-vintage raster counties (what tests and the benchmark register); parses back to them.

    A STAC county is written as its ``stac:`` (and ``stac_asset:``), not as the rasters read from it."""
    entries: dict[str, dict] = {}
    for c in counties.values():
        entry: dict[str, Any] = {"name": c.name}
        if c.stac is not None:
            entry.update({"stac": c.stac, **({"stac_asset": c.stac_asset} if c.stac_asset else {}),
                          **({"stac_allowed_roots": list(c.stac_allowed_roots)} if c.stac_allowed_roots else {})})
        else:
            entry["rasters"] = list(c.rasters)
        if c.bounds is not None:
            entry["bounds"] = list(c.bounds)
        if c.year is not None:
            entry["year"] = c.year
        if c.reference is not None:
            entry["reference"] = {"raster": c.reference.raster, "legend": c.reference.legend}
        entries[check_key(c.key)] = entry
    return yaml.safe_dump({"counties": entries}, sort_keys=True)


def earlier_vintages(counties: dict[str, County], county: County) -> list[County]:
    """Vintages of the same area before ``county``'s year, oldest first."""
    if county.year is None:
        return []
    same = [c for c in counties.values() if c.area_key == county.area_key and c.year is not None]
    return sorted((c for c in same if c.year < county.year), key=lambda c: c.year)
