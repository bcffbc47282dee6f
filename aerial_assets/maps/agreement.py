"""Agreement of a predicted county map with a reference land-cover raster (such as NLCD). No Dagster import.

The reference is a raster of integer land-cover codes (local or ``az://``) and a *legend*, a YAML file that groups
codes into the model's classes::

    classes:
      Developed: [21, 22, 23, 24]
      Forest: [41, 42, 43]
    ignore: [11, 12, 90, 95]   # optional: codes that are no class (documentation; unlisted codes are ignored too)

A code that no class lists (water, wetlands, the raster's nodata) is *unlabelled*: such cells are left out of
the agreement. The reference is resampled onto the map grid (one cell per tile, in the county's CRS) by
``rasterio.warp.reproject`` straight from the dataset's band (GDAL reads it chunk by chunk, never the whole
raster): first with ``Resampling.mode`` onto ``subcells`` x ``subcells`` sub-cells of each map cell, whose codes are
then grouped into classes, and each map cell takes the plurality of its sub-cells, "unlabelled" being one of the
candidates (a cell mostly of water is unlabelled). Voting on classes rather than on codes matters: a cell of 30 %
code 21, 30 % code 22 and 40 % code 41 is Developed, not Forest.

Agreement is computed over the cells where both the map and the reference are labelled: overall agreement, and
per class the producer's accuracy (recall of the reference class), the user's accuracy (precision of the mapped
class) and the cell counts; rows of the confusion matrix are the reference classes, columns the mapped ones.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from aerial_assets.errors import CountyError
from aerial_assets.maps.spatial import plurality_smooth
from aerial_assets.safety.redaction import short
from aerial_assets.safety.yaml_files import load_yaml
from aerial_assets.storage.core import Storage

UNLABELLED = 255


@dataclass(frozen=True)
class Legend:
    """Reference codes to class names; every other code is unlabelled."""

    codes: dict[int, str]
    ignore: frozenset[int] = frozenset()

    def lookup(self, classes: Sequence[str]) -> dict[int, int]:
        """Code -> index into ``classes``. A legend class the model does not have is an error (its cells could
        never agree): map its codes to one of the model's classes, or list them under ``ignore:``."""
        unknown = sorted({name for name in self.codes.values() if name not in classes})
        if unknown:
            raise CountyError(f"the reference legend names class(es) {', '.join(unknown)} that the model does not "
                              f"predict (its classes: {', '.join(classes)}): map those codes to one of the model's "
                              "classes or list them under 'ignore:'")
        return {code: list(classes).index(name) for code, name in self.codes.items()}


def parse_legend(text: str, source: str) -> Legend:
    """A legend from YAML ``classes: {name: [code, ...]}`` (and optional ``ignore: [code, ...]``)."""
    doc = load_yaml(text, f"reference legend {source}", error=CountyError)
    example = "'classes: {Developed: [21, 22, 23, 24], Forest: [41, 42, 43]}'"
    if not isinstance(doc, dict) or not isinstance(doc.get("classes"), dict) or not doc["classes"]:
        raise CountyError(f"reference legend {source} must have a 'classes:' mapping of class names to lists of "
                          f"codes, such as {example}")
    extra = sorted(str(k)[:80] for k in doc if k not in ("classes", "ignore"))
    if extra:
        raise CountyError(f"reference legend {source}: unknown key(s) {', '.join(extra)}; allowed: classes, ignore")

    def codes_of(value, what: str) -> list[int]:
        values = [value] if isinstance(value, int) and not isinstance(value, bool) else value
        if not isinstance(values, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
            raise CountyError(f"reference legend {source}: {what} must be a list of integer codes, such as [21, 22]")
        return values

    codes: dict[int, str] = {}
    for name, value in doc["classes"].items():
        for code in codes_of(value, f"class {short(name)}"):
            if code in codes:
                raise CountyError(f"reference legend {source}: code {code} is given to both {short(codes[code])} and "
                                  f"{short(name)}; give each code one class")
            codes[code] = str(name)
    ignore = frozenset(codes_of(doc.get("ignore") or [], "'ignore'"))
    both = sorted(ignore & set(codes))
    if both:
        raise CountyError(f"reference legend {source}: code(s) {both} are both a class and ignored")
    return Legend(codes, ignore)


def read_legend(uri: str, store: Storage | None = None) -> Legend:
    """The reference legend at ``uri``, read through ``store`` (None: the URI's backend with this process's
    environment, as on an executor)."""
    from aerial_assets.errors import StorageError
    from aerial_assets.storage.backends import storage_for

    try:
        text = (store or storage_for(uri)).read_text(uri)
    except (OSError, ValueError, StorageError) as exc:
        raise CountyError(f"cannot read the reference legend {uri}: {exc}") from None
    return parse_legend(text, uri)


def reference_codes(uri: str, transform, rows: int, cols: int, crs: str, subcells: int = 4) -> np.ndarray:
    """The reference's codes on a grid of ``rows * subcells`` x ``cols * subcells`` sub-cells of the map grid
    (``transform``: the map's affine, in ``crs``), each the most common code under it (``Resampling.mode``);
    -1 where the reference has no data or does not reach. Int64."""
    import rasterio
    from rasterio.errors import RasterioIOError
    from rasterio.transform import Affine
    from rasterio.warp import Resampling, reproject

    from aerial_assets.storage.backends import raster_opener

    k = max(1, int(subcells))
    fine = transform @ Affine.scale(1.0 / k, 1.0 / k)
    out = np.full((rows * k, cols * k), -1, np.int32)
    try:
        with rasterio.open(uri, opener=raster_opener(uri)) as ds:
            if ds.crs is None:
                raise CountyError(f"reference raster {uri} has no CRS: georeference it (gdal_edit.py -a_srs ...)")
            if not np.issubdtype(np.dtype(ds.dtypes[0]), np.integer):
                raise CountyError(f"reference raster {uri} is of {ds.dtypes[0]}, not integer land-cover codes")
            reproject(source=rasterio.band(ds, 1), destination=out, src_transform=ds.transform, src_crs=ds.crs,
                      src_nodata=ds.nodata, dst_transform=fine, dst_crs=crs, dst_nodata=-1,
                      resampling=Resampling.mode)
    except RasterioIOError as exc:
        raise CountyError(f"cannot read the reference raster {uri}: {exc}") from None
    return out.astype(np.int64)


def reference_classes(codes: np.ndarray, legend: Legend, classes: Sequence[str], rows: int, cols: int) -> np.ndarray:
    """Sub-cell ``codes`` -> the class index of each map cell (``uint8``, :data:`UNLABELLED` where no class):
    the plurality of its sub-cells' classes, unlabelled sub-cells voting for "unlabelled" (ties: the lowest class
    index, and a class before unlabelled)."""
    lookup = legend.lookup(classes)
    n = len(classes)
    index = np.full(codes.shape, n, np.int64)  # n = unlabelled
    for code, i in lookup.items():
        index[codes == code] = i
    k = codes.shape[0] // rows
    blocks = index.reshape(rows, k, cols, k).transpose(0, 2, 1, 3).reshape(rows, cols, k * k)
    votes = np.stack([(blocks == c).sum(axis=-1) for c in range(n + 1)], axis=0)
    winner = np.argmax(votes, axis=0)
    return np.where(winner == n, UNLABELLED, winner).astype(np.uint8)


@dataclass
class Agreement:
    """Agreement of one map with the reference, over the cells labelled in both."""

    classes: list[str]
    matrix: np.ndarray  # rows: reference class, columns: mapped class

    @property
    def cells(self) -> int:
        return int(self.matrix.sum())

    @property
    def overall(self) -> float:
        return float(np.trace(self.matrix) / self.cells) if self.cells else 0.0

    @property
    def reference_cells(self) -> np.ndarray:
        return self.matrix.sum(axis=1)

    @property
    def mapped_cells(self) -> np.ndarray:
        return self.matrix.sum(axis=0)

    @property
    def producers(self) -> np.ndarray:
        """Per reference class: the share of its cells mapped as it (recall; 0 where the reference has none)."""
        return _ratio(np.diag(self.matrix), self.reference_cells)

    @property
    def users(self) -> np.ndarray:
        """Per mapped class: the share of its cells the reference agrees with (precision; 0 where none mapped)."""
        return _ratio(np.diag(self.matrix), self.mapped_cells)

    def to_dict(self) -> dict[str, object]:
        return {"overall": self.overall, "cells": self.cells, "confusion_matrix": self.matrix.tolist(),
                "producers_accuracy": self.producers.tolist(), "users_accuracy": self.users.tolist(),
                "reference_cells": self.reference_cells.tolist(), "mapped_cells": self.mapped_cells.tolist()}


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    out = np.zeros(num.shape, np.float64)
    np.divide(num, den, out=out, where=den > 0)
    return out


def agreement(mapped: np.ndarray, reference: np.ndarray, classes: Sequence[str], nodata: int = 255,
              unlabelled: int = UNLABELLED) -> Agreement:
    """The confusion of ``mapped`` (class indices, ``nodata`` where no tile) against ``reference`` (class indices,
    ``unlabelled`` where none), over the cells labelled in both."""
    n = len(classes)
    mapped, reference = np.asarray(mapped, np.int64), np.asarray(reference, np.int64)
    if mapped.shape != reference.shape:
        raise ValueError(f"map {mapped.shape} and reference {reference.shape} differ in shape")
    both = (mapped != nodata) & (reference != unlabelled) & (mapped < n) & (reference < n)
    matrix = np.zeros((n, n), np.int64)
    np.add.at(matrix, (reference[both], mapped[both]), 1)
    return Agreement(list(classes), matrix)


def map_agreement(raw: np.ndarray, reference: np.ndarray, classes: Sequence[str],
                  nodata: int = 255) -> dict[str, Agreement]:
    """``{"raw": ..., "smoothed": ...}``: the agreement of the raw map and of its 3 x 3 plurality smoothing
    (:func:`spatial.plurality_smooth`, as ``county_land_use_map`` smooths) with the same reference."""
    smoothed = plurality_smooth(raw, len(classes), nodata)
    return {"raw": agreement(raw, reference, classes, nodata), "smoothed": agreement(smoothed, reference, classes, nodata)}


def reference_on_grid(raster: str, legend: Legend, classes: Sequence[str], transform, rows: int, cols: int,
                      crs: str, subcells: int = 4) -> np.ndarray:
    """The reference's class of every map cell (``uint8``; :data:`UNLABELLED` where none)."""
    codes = reference_codes(raster, transform, rows, cols, crs, subcells)
    return reference_classes(codes, legend, classes, rows, cols)
