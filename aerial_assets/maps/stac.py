"""STAC (SpatioTemporal Asset Catalog) for the outputs and the inputs. No Dagster import.

Outputs: every county land-use map (a COG of class ids) and every prediction dataset (GeoParquet) gets a STAC
Item beside it (:func:`raster_item`, :func:`geoparquet_item`, :func:`write_item`), so that STAC tools (QGIS's
STAC browser, stac-browser, odc-stac, a STAC API loader) find the files, their footprint, CRS, vintage and
classes without knowing this project's layout.

Inputs: a registry entry may name a STAC Catalog, Collection, ItemCollection or a single Item instead of raster
paths (``stac:`` in :mod:`aerial_assets.imagery.counties`); :func:`rasters_from_stac` turns it into the GeoTIFF hrefs
to tile and the items' dates. STAC JSON is read through :func:`aerial_assets.storage.core.storage_for`, so a catalog
on ``az://`` is read with the same credentials as everything else; relative hrefs are resolved against the
URI of the JSON file that holds them, as the STAC spec says. Every href (links and assets) must stay where the
catalog is (the top-level file's folder, or its container on ``az://``) or under a root the registry entry allows
(``stac_allowed_roots``): remote schemes (``https://``) are read only when allowed there
(:mod:`aerial_assets.storage.confine`).
"""

from __future__ import annotations

import json
import os
import posixpath
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import pystac
from pystac.extensions.classification import Classification, ClassificationExtension
from pystac.extensions.projection import ProjectionExtension
from pystac.extensions.table import Column, TableExtension

from aerial_assets.errors import AerialError, CountyError
from aerial_assets.storage.confine import confine, container_of
from aerial_assets.storage.core import LOCAL_SCHEMES, local_path, raster_opener, scheme_of, storage_for

if TYPE_CHECKING:
    import pyarrow as pa

LAND_USE_ASSET = "land_use"
OVERVIEW_ASSET = "overview"
PREDICTIONS_ASSET = "predictions"
PARQUET_MEDIA_TYPE = "application/vnd.apache.parquet"
# Media types that name a GeoTIFF: today's (with or without the COG profile) and STAC 0.x's.
GEOTIFF_TYPES = ("image/tiff;application=geotiff", "image/vnd.stac.geotiff")
# Media types that are never imagery: an asset of one of these is not a raster, whatever its roles.
NOT_RASTER_TYPES = ("application/json", "application/geo+json", "application/xml", "text/", "application/x-",
                    PARQUET_MEDIA_TYPE, "application/vnd.")
RASTER_ROLES = ("data", "visual")
ALLOWED_ROOTS_SETTING = "the registry entry's 'stac_allowed_roots: [prefix, ...]'"
_CLASS_NAME = re.compile(r"[^A-Za-z0-9_-]+")


# --- outputs -------------------------------------------------------------------------------------------------
def _times(datetime_or_year: datetime | int | None) -> tuple[datetime | None, datetime | None, datetime | None]:
    """(datetime, start_datetime, end_datetime) for an Item.

    A year (the vintage: imagery flown at some unknown date of that year) gives 1 January as ``datetime`` and the
    whole year as ``start_datetime``/``end_datetime``, so that a search by date finds the item anywhere in its year
    and :func:`rasters_from_stac` reads the year back. A ``datetime`` is kept (naive means UTC). ``None`` (a county
    registered without a year): STAC requires a ``datetime`` or a start and an end, and the only time known is now,
    so ``datetime`` is null and start = end = the run time; readers must not take it for the imagery's date.
    """
    if isinstance(datetime_or_year, bool):
        raise TypeError("a boolean is not a year")
    if isinstance(datetime_or_year, int):
        year = datetime_or_year
        return (datetime(year, 1, 1, tzinfo=UTC), datetime(year, 1, 1, tzinfo=UTC),
                datetime(year, 12, 31, 23, 59, 59, tzinfo=UTC))
    if isinstance(datetime_or_year, datetime):
        when = datetime_or_year if datetime_or_year.tzinfo else datetime_or_year.replace(tzinfo=UTC)
        return when, None, None
    if datetime_or_year is None:
        now = datetime.now(UTC).replace(microsecond=0)
        return None, now, now
    raise TypeError(f"expected a year, a datetime or None, not {datetime_or_year!r}")


def _box(bbox: Sequence[float]) -> dict[str, Any]:
    west, south, east, north = (float(v) for v in bbox)
    return {"type": "Polygon",
            "coordinates": [[[west, south], [east, south], [east, north], [west, north], [west, south]]]}


def _item(item_id: str, bbox_4326: Sequence[float] | None, datetime_or_year: datetime | int | None,
          properties: Mapping[str, Any] | None) -> pystac.Item:
    when, start, end = _times(datetime_or_year)
    bbox = [float(v) for v in bbox_4326] if bbox_4326 else None
    props = dict(properties or {})
    props.setdefault("created", pystac.utils.datetime_to_str(datetime.now(UTC).replace(microsecond=0)))
    return pystac.Item(id=item_id, geometry=_box(bbox) if bbox else None, bbox=bbox, datetime=when,
                       properties=props, start_datetime=start, end_datetime=end)


def _projection(item: pystac.Item, crs: str, **fields: Any) -> None:
    """``proj:code`` (projection extension v2, which replaced ``proj:epsg`` by ``proj:code``), or ``proj:wkt2``
    for a CRS without an EPSG code, plus the given grid fields (shape, transform, bbox)."""
    from rasterio.crs import CRS

    parsed = CRS.from_user_input(crs)
    epsg = parsed.to_epsg()
    proj = ProjectionExtension.ext(item, add_if_missing=True)
    proj.apply(code=f"EPSG:{epsg}" if epsg else None, wkt2=None if epsg else parsed.to_wkt(), **fields)


def _class_name(label: str) -> str:
    """Classification v2 wants machine names of letters, digits, ``-`` and ``_``; the label stays as title."""
    return _CLASS_NAME.sub("_", label).strip("_") or "class"


def raster_item(tif_uri: str, item_id: str, datetime_or_year: datetime | int | None, properties: Mapping[str, Any],
                classes: Sequence[str], *, overview_png: str | None = None) -> pystac.Item:
    """A STAC Item for a land-use GeoTIFF of class ids (``land_use.tif``): where it is, what it covers, what its
    pixel values mean.

    The footprint (``geometry``, ``bbox``) is the raster's bounds in EPSG:4326 (STAC's CRS), densified so that a
    projected rectangle's curved edges are covered; the native grid is in the projection extension
    (``proj:code``, ``proj:shape``, ``proj:transform``, ``proj:bbox``), which is what loaders such as odc-stac use
    to read the file without opening it. The asset ``land_use`` (COG, role ``data``) carries the classification
    extension: one class per label (value = index in ``classes``, the order the model predicts in), with the
    raster's own colour-table colour as ``color_hint`` and its nodata value as a ``nodata`` class, so the legend
    travels with the file. ``datetime_or_year``: see :func:`_times` (None: the run time, as start and end).
    ``tif_uri`` is read (local path or ``az://``) and becomes the asset href; :func:`write_item` makes it
    relative. ``overview_png``, if given, is added as asset ``overview`` (the PNG map with legend).
    """
    import rasterio
    from rasterio.warp import transform_bounds

    try:
        with rasterio.open(tif_uri, opener=raster_opener(tif_uri)) as ds:
            if ds.crs is None:
                raise CountyError(f"{tif_uri} has no CRS: a STAC Item needs the raster's footprint")
            crs, shape, transform, bounds = ds.crs, [ds.height, ds.width], list(ds.transform)[:6], ds.bounds
            nodata = ds.nodata
            try:
                colormap = ds.colormap(1)
            except ValueError:  # no colour table
                colormap = {}
    except rasterio.errors.RasterioIOError as exc:
        raise CountyError(f"cannot open {tif_uri} to describe it in STAC: {exc}") from exc
    bbox = transform_bounds(crs, "EPSG:4326", *bounds, densify_pts=21)
    item = _item(item_id, bbox, datetime_or_year, properties)
    _projection(item, crs.to_wkt() if crs.to_epsg() is None else f"EPSG:{crs.to_epsg()}", shape=shape,
                transform=transform, bbox=list(bounds))
    asset = pystac.Asset(href=tif_uri, media_type=pystac.MediaType.COG, roles=["data"], title="Land use (class ids)")
    item.add_asset(LAND_USE_ASSET, asset)
    entries = []
    for value, label in enumerate(classes):
        rgba = colormap.get(value)
        entries.append(Classification.create(value=value, name=_class_name(label), title=label,
                                             color_hint="".join(f"{c:02X}" for c in rgba[:3]) if rgba else None))
    if nodata is not None and int(nodata) >= len(classes):
        entries.append(Classification.create(value=int(nodata), name="nodata", title="No data", nodata=True))
    ClassificationExtension.ext(asset, add_if_missing=True).apply(classes=entries)
    if overview_png is not None:
        item.add_asset(OVERVIEW_ASSET, pystac.Asset(href=overview_png, media_type=pystac.MediaType.PNG,
                                                    roles=["overview"], title="Land-use map with legend"))
    return item


def lonlat_bbox(bbox: Sequence[float], crs: str) -> tuple[float, float, float, float]:
    """``[minx, miny, maxx, maxy]`` in ``crs`` as (west, south, east, north) in EPSG:4326, densified."""
    from rasterio.warp import transform_bounds

    return tuple(transform_bounds(crs, "EPSG:4326", *bbox, densify_pts=21))  # type: ignore[return-value]


def geoparquet_item(dataset_uri: str, item_id: str, bbox_4326: Sequence[float] | None, crs: str,
                    year: datetime | int | None, properties: Mapping[str, Any], *,
                    schema: pa.Schema | None = None, row_count: int | None = None,
                    native_bbox: Sequence[float] | None = None) -> pystac.Item:
    """A STAC Item for a county's prediction dataset (``predictions.parquet/``: a folder of GeoParquet parts).

    The asset ``predictions`` has the Parquet media type and role ``data``; the footprint is ``bbox_4326``
    (west, south, east, north; :func:`lonlat_bbox` converts the parts' bbox), ``None`` for a county with no tile,
    which STAC allows as a null geometry. ``crs`` (the tile polygons' CRS) is recorded as ``proj:code``
    (``native_bbox`` as ``proj:bbox``). With ``schema`` (the rows' Arrow schema), the table extension lists the
    columns, so a reader knows them without opening a part; ``row_count`` is ``table:row_count``.
    ``year``: see :func:`_times`.
    """
    item = _item(item_id, bbox_4326, year, properties)
    _projection(item, crs, bbox=[float(v) for v in native_bbox] if native_bbox else None)
    asset = pystac.Asset(href=dataset_uri, media_type=PARQUET_MEDIA_TYPE, roles=["data"],
                         title="Tile predictions (GeoParquet dataset)",
                         description="A folder of GeoParquet files: one row per tile, a WKB polygon in `geometry`")
    item.add_asset(PREDICTIONS_ASSET, asset)
    if schema is not None:
        table = TableExtension.ext(item, add_if_missing=True)
        columns = [Column({"name": f.name, "type": str(f.type)}) for f in schema]
        if "geometry" not in schema.names:  # the parts add it (aerial_assets.maps.geoparquet)
            columns.append(Column({"name": "geometry", "type": "binary",
                                   "description": "the tile's rectangle, WKB, in the item's proj:code"}))
        table.columns = columns
        table.primary_geometry = "geometry"
        if row_count is not None:
            table.row_count = int(row_count)
    return item


def _json_default(value: Any) -> Any:
    """numpy scalars and arrays (counts, bounds) as plain JSON."""
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def _basename(uri: str) -> str:
    path = local_path(uri) if scheme_of(uri) in LOCAL_SCHEMES else uri
    return posixpath.basename(path.replace(os.sep, "/").rstrip("/"))


def write_item(item: pystac.Item, uri: str) -> None:
    """Write ``item`` as JSON at ``uri`` (local or ``az://``, atomically, through the storage layer).

    Every asset href becomes ``./<file name>`` (``./land_use.tif``): the asset files sit next to the item, and an
    output folder is written under a temporary name and then moved, or copied to another data root, so any
    other href (absolute, or relative to the working directory) would point at the temporary name or the old
    root. The item itself is unchanged.
    """
    data = item.to_dict(include_self_link=False, transform_hrefs=False)
    for asset in data.get("assets", {}).values():
        asset["href"] = f"./{_basename(asset['href'])}"
    storage_for(uri).write_text(uri, json.dumps(data, indent=2, default=_json_default) + "\n")


# --- inputs --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class StacRaster:
    """One raster named by a STAC Item: its asset's absolute href and the item's date.

    ``datetime`` is the item's ``datetime``, else its ``start_datetime``; ``start``/``end`` are its range (equal
    to ``datetime`` for an item dated to the second). ``year`` is the year of ``datetime``, or of a range that
    lies within one year; None for a range over several years (the registry then needs ``year:``).
    """

    href: str
    item_id: str
    asset_key: str
    datetime: datetime
    start: datetime
    end: datetime
    year: int | None

    def covers(self, year: int) -> bool:
        """Whether the item's date (or range) falls in ``year``."""
        return self.start.year <= year <= self.end.year

    @property
    def date_text(self) -> str:
        if self.start == self.end:
            return self.start.date().isoformat()
        return f"{self.start.date().isoformat()}..{self.end.date().isoformat()}"


def resolve_href(href: str, base: str) -> str:
    """``href`` (from the STAC JSON at ``base``) as an absolute path or URI.

    A URI with a scheme (``https://``, ``az://``) is kept; ``file://`` becomes a path. A relative href is joined
    to the folder of ``base`` (local or ``az://``); an absolute path is kept, or, under an ``az://`` base, taken
    from the container's root, as a URL would be.
    """
    scheme = scheme_of(href)
    if scheme == "file":
        return local_path(href)
    if scheme:
        return href
    base_scheme = scheme_of(base)
    if base_scheme in LOCAL_SCHEMES:
        return os.path.normpath(os.path.join(os.path.dirname(local_path(base)), href))
    netloc, _, path = base.partition("://")[2].partition("/")
    joined = href if href.startswith("/") else posixpath.join(posixpath.dirname("/" + path), href)
    return f"{base.partition('://')[0]}://{netloc}{posixpath.normpath(joined)}"


def _read_json(uri: str, what: str) -> dict[str, Any]:
    try:
        text = storage_for(uri).read_text(uri)
    except (AerialError, OSError) as exc:
        raise CountyError(f"cannot read {what} {uri}: {exc}") from exc
    try:
        doc = json.loads(text)
    except ValueError as exc:
        raise CountyError(f"{what} {uri} is not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise CountyError(f"{what} {uri} is not a STAC object (a JSON object with a 'type')")
    return doc


def _confined(href: str, roots: Sequence[str], what: str) -> str:
    try:
        return confine(href, roots, what, ALLOWED_ROOTS_SETTING)
    except AerialError as exc:
        raise CountyError(str(exc)) from None


def _walk(uri: str, doc: dict[str, Any], seen: set[str],
          roots: Sequence[str]) -> Iterator[tuple[dict[str, Any], str]]:
    """Every Item under a STAC document, with the URI its relative hrefs resolve against, in document order.
    Links are followed only within ``roots``."""
    kind = doc.get("type")
    if kind == "Feature":
        yield doc, uri
    elif kind == "FeatureCollection":
        features = doc.get("features")
        if not isinstance(features, list):
            raise CountyError(f"STAC ItemCollection {uri} has no 'features' list")
        for feature in features:
            if not isinstance(feature, dict) or feature.get("type") != "Feature":
                raise CountyError(f"STAC ItemCollection {uri}: a feature is not a STAC Item")
            yield feature, uri
    elif kind in ("Catalog", "Collection"):
        for link in doc.get("links") or []:
            if not isinstance(link, dict) or link.get("rel") not in ("item", "child") or not link.get("href"):
                continue
            target = _confined(resolve_href(str(link["href"]), uri), roots, f"the STAC {link['rel']} link in {uri}")
            if target in seen:  # a catalog that links back to itself, or an item listed twice
                continue
            seen.add(target)
            child = _read_json(target, f"STAC {link['rel']} of {uri}:")
            yield from _walk(target, child, seen, roots)
    else:
        raise CountyError(f"{uri} is not a STAC Catalog, Collection, ItemCollection or Item (its 'type' is "
                          f"{kind!r})")


def _media_type(asset: pystac.Asset) -> str:
    return (asset.media_type or "").replace(" ", "").lower()


def _pick_asset(item: pystac.Item, asset_key: str | None, where: str) -> str:
    """The key of the asset to tile: ``asset_key``, else the one GeoTIFF (a COG or any GeoTIFF media type), else
    the one plain ``image/tiff``, else the one untyped raster with role ``data``/``visual``. Where a tier has
    several (Sentinel-2 has a GeoTIFF per band), the one with role ``data`` wins; still several is an error
    that lists them: tiling an arbitrary band would be silently wrong."""
    assets = item.assets
    listed = ", ".join(f"{k} ({a.media_type or 'no media type'})" for k, a in assets.items()) or "none"
    if asset_key is not None:
        if asset_key not in assets:
            raise CountyError(f"{where} has no asset {asset_key!r} (stac_asset); its assets: {listed}")
        return asset_key

    def untyped_raster(key: str, asset: pystac.Asset) -> bool:
        kind = _media_type(asset)
        roles = asset.roles or []
        return (any(r in roles for r in RASTER_ROLES) or key in ("image", "data")) and not kind.startswith(
            NOT_RASTER_TYPES) and kind not in ("image/png", "image/jpeg", "image/webp")

    tiers = [
        [k for k, a in assets.items() if _media_type(a).startswith(GEOTIFF_TYPES)],
        [k for k, a in assets.items() if _media_type(a) == "image/tiff"],
        [k for k, a in assets.items() if untyped_raster(k, a)],
    ]
    for keys in tiers:
        if len(keys) > 1:
            keys = [k for k in keys if "data" in (assets[k].roles or [])] or keys
        if len(keys) == 1:
            return keys[0]
        if keys:
            raise CountyError(f"{where} has several GeoTIFF assets ({', '.join(keys)}): name the one to tile with "
                              f"'stac_asset: <key>' in the registry entry")
    raise CountyError(f"{where} has no GeoTIFF asset (assets: {listed}): it needs an asset of media type "
                      f"{pystac.MediaType.COG!r} or {pystac.MediaType.GEOTIFF!r}, or name one with 'stac_asset:'")


def _no_date(where: str) -> CountyError:
    return CountyError(f"{where} has no date ('datetime', or 'start_datetime' and 'end_datetime'): the vintage "
                       "year comes from the items' dates; date the items, or list the rasters with 'rasters:'")


def _raster(doc: dict[str, Any], base: str, asset_key: str | None, roots: Sequence[str]) -> StacRaster:
    where = f"STAC item {doc.get('id', '?')!r} (in {base})"
    props = doc.get("properties")
    if isinstance(props, dict) and not props.get("datetime") and not (
            props.get("start_datetime") and props.get("end_datetime")):
        raise _no_date(where)  # checked first: pystac's own message for it does not say what to do
    try:
        item = pystac.Item.from_dict(doc, migrate=True)
    except Exception as exc:  # pystac raises KeyError, ValueError, STACError... on a malformed item
        raise CountyError(f"{where} is not a valid STAC Item: {type(exc).__name__}: {exc}") from None
    where = f"STAC item {item.id!r} (in {base})"
    key = _pick_asset(item, asset_key, where)
    meta = item.common_metadata
    start = meta.start_datetime or item.datetime
    end = meta.end_datetime or item.datetime or start
    when = item.datetime or start
    if when is None or start is None or end is None:
        raise _no_date(where)
    year = item.datetime.year if item.datetime else (start.year if start.year == end.year else None)
    href = _confined(resolve_href(item.assets[key].href, base), roots, f"{where}, asset {key!r},")
    return StacRaster(href=href, item_id=item.id, asset_key=key,
                      datetime=when, start=start, end=end, year=year)


def rasters_from_stac(uri: str, asset_key: str | None = None,
                      allowed_roots: Sequence[str] = ()) -> list[StacRaster]:
    """The rasters of a STAC Catalog or Collection (its items, walked through ``child`` and ``item`` links), an
    ItemCollection (a FeatureCollection of items) or a single Item, read from a local file or ``az://``.

    For each item, the asset ``asset_key``, else the GeoTIFF one (see :func:`_pick_asset`); hrefs are absolute
    (relative ones resolved against the JSON file they were in), and must lie under the folder of ``uri`` (its
    container on ``az://``) or under one of ``allowed_roots``. An item listed twice counts once. A document
    that is not STAC, a catalog without items, an item without a usable asset or without a date is a
    :class:`CountyError` that names the file and the item. Only links are followed: a STAC API's paging
    (``next`` links of a search result) is not; save the whole search as one ItemCollection.
    """
    doc = _read_json(uri, "STAC file")
    start = local_path(uri) if scheme_of(uri) in LOCAL_SCHEMES else uri  # as links to it resolve
    rasters: list[StacRaster] = []
    hrefs: set[str] = set()
    roots = [container_of(start), *allowed_roots]
    for item_doc, base in _walk(start, doc, {start}, roots):
        raster = _raster(item_doc, base, asset_key, roots)
        if raster.href not in hrefs:
            hrefs.add(raster.href)
            rasters.append(raster)
    if not rasters:
        raise CountyError(f"STAC {uri} has no items: a catalog needs 'item' (or 'child') links, an ItemCollection "
                          f"'features'")
    return rasters
