"""STAC (SpatioTemporal Asset Catalog) items for the outputs. No Dagster import.

Outputs: every county land-use map (a COG of class ids) and every prediction dataset (GeoParquet) gets a STAC
Item beside it (:func:`raster_item`, :func:`geoparquet_item`, :func:`write_item`), so that STAC tools (QGIS's
STAC browser, stac-browser, odc-stac, a STAC API loader) find the files, their footprint, CRS, vintage and
classes without knowing this project's layout.

STAC catalogs as a county's imagery (the inputs) are read by :mod:`aerial_assets.imagery.stac_catalogs`.
"""

from __future__ import annotations

import json
import os
import posixpath
import re
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import pystac
from pystac.extensions.classification import Classification, ClassificationExtension
from pystac.extensions.projection import ProjectionExtension
from pystac.extensions.table import Column, TableExtension

from aerial_assets.errors import CountyError
from aerial_assets.storage.backends import raster_opener, storage_for
from aerial_assets.storage.core import LOCAL_SCHEMES, local_path, scheme_of

if TYPE_CHECKING:
    import pyarrow as pa

LAND_USE_ASSET = "land_use"
OVERVIEW_ASSET = "overview"
PREDICTIONS_ASSET = "predictions"
PARQUET_MEDIA_TYPE = "application/vnd.apache.parquet"
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
