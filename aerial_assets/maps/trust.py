"""Whether a county's predictions can be trusted: the share of tiles out of distribution, and the causes that
can be measured. No Dagster import.

A model applied to imagery unlike its training tiles still answers, with confident colours. The scoring pass
flags each tile (:mod:`aerial_assets.training.novelty`); this module adds up the flags and what usually explains
them: the county imagery's ground sample distance (GSD) against the training tiles', and the share of tiles whose
window is resampled more than 2x up to the backbone's input (224 m tiles of 5 m imagery are 45 px, upsampled 5x).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

from aerial_assets.records import CountyTilesSummary, ImageryTrust, OodRecord

#: a window resampled more than this many times up to the input is "upsampled" in the report and the check
UPSAMPLING_LIMIT = 2.0
#: GSDs further apart than this ratio (either way) are named as a likely cause
GSD_RATIO_LIMIT = 2.0
_METRES_PER_DEGREE = 111_320.0


def raster_gsd_m(source: Mapping[str, Any]) -> float | None:
    """Metres per pixel of a raster from its header record (``RasterInfo.to_dict``): the CRS's linear unit for a
    projected raster, degrees at the raster's centre latitude for a geographic one; None when unknown."""
    from rasterio.crs import CRS

    transform, crs = source.get("transform"), source.get("crs")
    if not transform or not crs:
        return None
    try:
        parsed = CRS.from_user_input(crs)
    except Exception:  # noqa: BLE001 - rasterio raises CRSError or ValueError for what it cannot parse
        return None
    size = abs(float(transform[0]))
    if parsed.is_geographic:
        lat = float(transform[5]) + float(transform[4]) * float(source.get("height", 0)) / 2.0
        return size * _METRES_PER_DEGREE * math.cos(math.radians(lat))
    try:
        return size * float(parsed.linear_units_factor[1])
    except Exception:  # noqa: BLE001 - a CRS without a linear unit
        return size


def imagery_trust(sizes: Iterable[tuple[int, int, int]], tiles: CountyTilesSummary, input_size: int,
                  n_out: int | None, threshold: float | None, ood: OodRecord | None) -> ImageryTrust:
    """The county's report. ``sizes``: ``(raster_index, window width in px, tiles)`` of the scored tiles (width 0:
    a ready-made tile file, whose size is known only once decoded)."""
    n_upsampled = n_known = 0
    weighted: list[tuple[float, int]] = []
    for raster_index, width_px, count in sizes:
        if width_px <= 0:
            continue
        n_known += count
        if input_size / width_px > UPSAMPLING_LIMIT:
            n_upsampled += count
        if 0 <= raster_index < len(tiles.sources) and (gsd := raster_gsd_m(tiles.sources[raster_index])):
            weighted.append((gsd, count))
    return ImageryTrust(
        ood_threshold=threshold, n_out_of_distribution=n_out,
        training_gsd_m=ood.training_gsd_m if ood else None,
        training_gsd_source=ood.training_gsd_source if ood else "unknown",
        county_gsd_m=round(_weighted_median(weighted), 4) if weighted else None, input_size=input_size,
        n_upsampled=n_upsampled if n_known else None, n_size_known=n_known)


def _weighted_median(values: list[tuple[float, int]]) -> float:
    values = sorted(values)
    half, seen = sum(c for _, c in values) / 2.0, 0
    for value, count in values:
        seen += count
        if seen >= half:
            return value
    return values[-1][0]


def likely_causes(trust: ImageryTrust) -> list[str]:
    """What can be measured about why tiles are out of distribution, each as one sentence; unknowns said so."""
    causes = []
    if trust.county_gsd_m is not None and trust.training_gsd_m is not None:
        ratio = trust.county_gsd_m / trust.training_gsd_m
        far = ratio > GSD_RATIO_LIMIT or ratio < 1 / GSD_RATIO_LIMIT
        causes.append(f"the county's imagery is {trust.county_gsd_m:g} m per pixel, the training tiles "
                      f"{trust.training_gsd_m:g} m ({trust.training_gsd_source}): {ratio:.2g}x"
                      + (" (a likely cause)" if far else " (close enough)"))
    elif trust.training_gsd_m is None:
        causes.append("the training tiles' ground sample distance is unknown (set AERIAL_TRAINING_GSD_M, or train on "
                      "tiles with a tile_positions.csv)"
                      + (f"; the county's imagery is {trust.county_gsd_m:g} m per pixel" if trust.county_gsd_m else ""))
    else:
        causes.append("the county's ground sample distance is unknown (ready-made tile files)")
    share = trust.upsampled_share()
    if share is None:
        causes.append("how much tiles are upsampled is unknown (ready-made tile files are sized when decoded)")
    elif share > 0:
        causes.append(f"{100 * share:.0f} % of tiles are upsampled more than {UPSAMPLING_LIMIT:g}x to the network's "
                      f"{trust.input_size} px input")
    else:
        causes.append(f"no tile is upsampled more than {UPSAMPLING_LIMIT:g}x")
    return causes


def trust_warning(county: str, trust: ImageryTrust, n_tiles: int, max_share: float) -> str | None:
    """One line when more than ``max_share`` of the county's tiles are out of distribution, with its causes."""
    share = trust.ood_share(n_tiles)
    if share is None or share <= max_share:
        return None
    return (f"{county}: {100 * share:.1f} % of tiles are out of distribution (limit {100 * max_share:g} %), unlike "
            "the training tiles, so their land use is not to be trusted; " + "; ".join(likely_causes(trust)))


def stac_properties(trust: ImageryTrust, n_tiles: int) -> dict[str, Any]:
    """What the predictions' STAC item says of it (``aerial:`` properties)."""
    share = trust.ood_share(n_tiles)
    return {k: v for k, v in {
        "aerial:ood_share": None if share is None else round(share, 6),
        "aerial:ood_threshold": trust.ood_threshold,
        "aerial:gsd_m": trust.county_gsd_m, "aerial:training_gsd_m": trust.training_gsd_m,
        "aerial:upsampled_share": None if trust.upsampled_share() is None else round(trust.upsampled_share(), 6),
    }.items() if v is not None}
