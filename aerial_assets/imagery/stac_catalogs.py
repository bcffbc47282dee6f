"""STAC catalogs as a county's imagery: a registry entry may name a STAC Catalog, Collection, ItemCollection or a
single Item instead of raster paths (``stac:`` in :mod:`aerial_assets.imagery.counties`); :func:`rasters_from_stac`
turns it into the GeoTIFF hrefs to tile and the items' dates. No Dagster import.

STAC JSON is read through :func:`aerial_assets.storage.backends.storage_for`, so a catalog on ``az://`` is read with
the same credentials as everything else; relative hrefs are resolved against the URI of the JSON file that holds
them, as the STAC spec says. Every href (links and assets) must stay where the catalog is (the top-level file's
folder, or its container on ``az://``) or under a root the registry entry allows (``stac_allowed_roots``): remote
schemes (``https://``) are read only when allowed there (:mod:`aerial_assets.storage.confine`). The walk is this
module's own rather than pystac's ``get_items(recursive=True)`` because every link is confined before it is read.
(The STAC items of the outputs are :mod:`aerial_assets.maps.stac`'s.)
"""

from __future__ import annotations

import json
import os
import posixpath
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import pystac

from aerial_assets.errors import AerialError, CountyError
from aerial_assets.storage.backends import storage_for
from aerial_assets.storage.confine import confine, container_of
from aerial_assets.storage.core import LOCAL_SCHEMES, local_path, scheme_of

# Media types that name a GeoTIFF: today's (with or without the COG profile) and STAC 0.x's.
GEOTIFF_TYPES = ("image/tiff;application=geotiff", "image/vnd.stac.geotiff")
# Media types that are never imagery: an asset of one of these is not a raster, whatever its roles (application/vnd.
# covers Parquet's).
NOT_RASTER_TYPES = ("application/json", "application/geo+json", "application/xml", "text/", "application/x-",
                    "application/vnd.")
RASTER_ROLES = ("data", "visual")
ALLOWED_ROOTS_SETTING = "the registry entry's 'stac_allowed_roots: [prefix, ...]'"


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
