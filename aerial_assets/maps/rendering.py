"""Pictures people compare: confusion matrices and land-use maps as PNG bytes. No Dagster import.

matplotlib runs headless (Agg). Images also go into Dagster metadata as markdown data URIs, so
the UI shows them next to the numbers. matplotlib is imported on the first picture, not with this module: every
Dagster run process imports the definitions, and pyplot alone took about 0.4 s of each start.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from matplotlib.figure import Figure

# Colours close to the NLCD legend for the usual land-cover names; others come from a palette.
KNOWN_COLOURS = {
    "developed": "#d8302a",
    "cultivated": "#ab6c28",
    "forest": "#1c6330",
    "herbaceous": "#b8d98a",
    "shrub": "#ccb879",
    "barren": "#b3aca3",
    "water": "#476ba1",
    "wetlands": "#75a5c9",
}
_PALETTE = [
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
    "#17becf", "#aec7e8", "#ffbb78", "#98df8a", "#ff9896", "#c5b0d5", "#c49c94", "#f7b6d2", "#c7c7c7",
    "#dbdb8d", "#9edae5",
]


def class_colours(classes: Sequence[str]) -> list[str]:
    """A stable colour per class: NLCD-like for known names, a palette for the rest."""
    colours, spare = [], iter(_PALETTE * 4)
    for name in classes:
        colours.append(KNOWN_COLOURS.get(name.lower()) or next(spare))
    return colours


def hex_to_rgb(colour: str) -> tuple[int, int, int]:
    colour = colour.lstrip("#")
    return int(colour[0:2], 16), int(colour[2:4], 16), int(colour[4:6], 16)


def _pyplot():
    """matplotlib's pyplot on the headless Agg backend (imported once, on first use)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _to_png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    _pyplot().close(fig)
    return buf.getvalue()


def confusion_png(matrix: np.ndarray, classes: Sequence[str], title: str) -> bytes:
    """Row-normalised confusion matrix with counts, true classes down, predictions across."""
    matrix = np.asarray(matrix)
    n = len(classes)
    rows = matrix.sum(axis=1, keepdims=True)
    norm = np.divide(matrix, rows, out=np.zeros(matrix.shape, float), where=rows > 0)
    size = max(4.0, 0.45 * n + 2)
    fig, ax = _pyplot().subplots(figsize=(size, size))
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(n), classes, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(n), classes, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=10)
    if n <= 15:
        for i in range(n):
            for j in range(n):
                if matrix[i, j]:
                    ax.text(j, i, str(int(matrix[i, j])), ha="center", va="center", fontsize=7,
                            color="white" if norm[i, j] > 0.5 else "black")
    return _to_png(fig)


def _nice_length(max_len: float) -> float:
    """The largest 1-2-5 x 10^k length not above ``max_len``."""
    if max_len <= 0:
        return 0.0
    power = 10 ** np.floor(np.log10(max_len))
    for factor in (5, 2, 1):
        if factor * power <= max_len:
            return float(factor * power)
    return float(power)


def is_geographic_crs(crs_name: str) -> bool:
    from rasterio.crs import CRS
    from rasterio.errors import CRSError

    try:
        return bool(CRS.from_user_input(crs_name).is_geographic)
    except CRSError:
        return False


def cell_label(cell_size: float | tuple[float, float], crs_name: str) -> str:
    """What one map cell is: ``cell = one 224 m tile``, or ``... 0.00273 x 0.002015 deg (lon x lat) tile``."""
    cell_x, cell_y = cell_size if isinstance(cell_size, tuple) else (cell_size, cell_size)
    if is_geographic_crs(crs_name):
        return f"cell = one {cell_x:g} x {cell_y:g} deg (lon x lat) tile"
    if np.isclose(cell_x, cell_y, rtol=1e-6, atol=0.0):
        return f"cell = one {cell_x:g} m tile"
    return f"cell = one {cell_x:g} x {cell_y:g} m tile"


#: values of the trust grid (``land_use_trust.tif``): how far to believe each cell's colour
TRUSTED, LOW_CONFIDENCE, OUT_OF_DISTRIBUTION = 0, 1, 2
#: the veils drawn over untrusted cells, and their legend entries
TRUST_VEILS = {OUT_OF_DISTRIBUTION: ((0.15, 0.15, 0.15, 0.6), "out of distribution: not to be trusted"),
               LOW_CONFIDENCE: ((1.0, 1.0, 1.0, 0.55), "low confidence")}


def _trust_overlay(ax, trust: np.ndarray | None, extent, mapped: int, labels: dict[int, str] | None = None) -> list:
    """Veil the cells whose colour is not to be trusted (dark: out of distribution; pale: low confidence) and
    return their legend entries with their share of the ``mapped`` cells."""
    from matplotlib.patches import Patch

    if trust is None:
        return []
    rgba = np.zeros((*trust.shape, 4))
    handles = []
    mapped = max(mapped, 1)
    for value, (colour, label) in TRUST_VEILS.items():
        cells = trust == value
        rgba[cells] = colour
        label = (labels or {}).get(value, label)
        handles.append(Patch(facecolor=colour[:3], alpha=colour[3], edgecolor="black", linewidth=0.5,
                             hatch="xx" if value == OUT_OF_DISTRIBUTION else None,
                             label=f"{label} ({100 * int(cells.sum()) / mapped:.0f} %)"))
    ax.imshow(rgba, interpolation="nearest", extent=extent)
    ood = (trust == OUT_OF_DISTRIBUTION).astype(float)
    if ood.any():  # hatching as well as the veil: readable in grey-scale prints
        ax.contourf(ood, levels=[0.5, 1.5], colors="none", hatches=["xx"], extent=extent, origin="upper")
    return handles


def map_png(grid: np.ndarray, classes: Sequence[str], title: str, cell_size_m: float | tuple[float, float],
            extent: tuple[float, float, float, float], crs_name: str, nodata: int = 255,
            trust: np.ndarray | None = None) -> bytes:
    """A land-use map: one cell per tile, class colours with a legend, a title and a scale bar.

    ``extent`` is (left, right, bottom, top) in the CRS units (metres for projected CRSs, degrees for a
    geographic one); ``cell_size_m`` is the cell size in those units, or its (width, height) for cells that are
    not square. ``trust`` (same shape, :data:`TRUSTED` ...): cells out of distribution or of low confidence are
    veiled, with legend entries, so a reader sees where not to believe the colour.
    """
    colours = class_colours(classes)
    masked = np.ma.masked_equal(grid, nodata)
    height, width = grid.shape
    aspect = height / max(width, 1)
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    fig, ax = _pyplot().subplots(figsize=(8, max(3.0, 8 * aspect)))
    ax.imshow(masked, cmap=ListedColormap(colours), vmin=-0.5, vmax=len(classes) - 0.5,
              interpolation="nearest", extent=extent)
    ax.set_title(title, fontsize=10)
    ax.set_xlabel(f"easting ({crs_name})", fontsize=8)
    ax.set_ylabel("northing", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.ticklabel_format(useOffset=False, style="plain")
    counts = np.bincount(grid[grid != nodata].ravel(), minlength=len(classes))
    total = max(int(counts.sum()), 1)
    handles = [Patch(color=c, label=f"{name} ({100 * counts[i] / total:.0f} %)")
               for i, (name, c) in enumerate(zip(classes, colours, strict=True))]
    handles += _trust_overlay(ax, trust, extent, total)
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    left, right, bottom, top = extent
    bar = _nice_length((right - left) / 4)
    if bar > 0:
        x0, y0 = left + (right - left) * 0.05, bottom + (top - bottom) * 0.05
        ax.plot([x0, x0 + bar], [y0, y0], color="black", linewidth=4, solid_capstyle="butt")
        ax.plot([x0, x0 + bar], [y0, y0], color="white", linewidth=2, solid_capstyle="butt")
        label = f"{bar:g} deg" if is_geographic_crs(crs_name) else f"{bar / 1000:g} km" if bar >= 1000 else f"{bar:g} m"
        ax.text(x0 + bar / 2, y0 + (top - bottom) * 0.02, label, ha="center", va="bottom", fontsize=8,
                bbox={"facecolor": "white", "alpha": 0.7, "edgecolor": "none", "pad": 1})
    ax.text(1.01, 0.0, cell_label(cell_size_m, crs_name), transform=ax.transAxes, fontsize=7, va="bottom")
    return _to_png(fig)


def change_png(grid: np.ndarray, classes: Sequence[str], title: str, extent: tuple[float, float, float, float],
               crs_name: str, unchanged: int = 254, nodata: int = 255, untrusted: np.ndarray | None = None) -> bytes:
    """Change map: tiles that changed in the colour of their new class, unchanged tiles light grey.
    ``untrusted`` (boolean, same shape): transitions whose tile is out of distribution in either vintage, veiled
    and hatched."""
    colours = class_colours(classes)
    rgba = np.zeros((*grid.shape, 4))
    for i, colour in enumerate(colours):
        rgba[grid == i] = (*[v / 255 for v in hex_to_rgb(colour)], 1.0)
    rgba[grid == unchanged] = (0.88, 0.88, 0.88, 1.0)
    height, width = grid.shape
    from matplotlib.patches import Patch

    fig, ax = _pyplot().subplots(figsize=(8, max(3.0, 8 * height / max(width, 1))))
    ax.imshow(rgba, interpolation="nearest", extent=extent)
    ax.set_title(title, fontsize=10)
    ax.set_xlabel(f"easting ({crs_name})", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.ticklabel_format(useOffset=False, style="plain")
    changed = [(name, colours[i]) for i, name in enumerate(classes) if (grid == i).any()]
    handles = [Patch(color="#e0e0e0", label="unchanged")] + [Patch(color=c, label=f"became {n}") for n, c in changed]
    if untrusted is not None:
        veil = np.where(untrusted & (grid != unchanged) & (grid != nodata), OUT_OF_DISTRIBUTION, nodata)
        changed_cells = int(((grid != unchanged) & (grid != nodata)).sum())
        handles += _trust_overlay(ax, veil, extent, changed_cells, {
            OUT_OF_DISTRIBUTION: "changed, out of distribution in either vintage"})[:1]
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    return _to_png(fig)


def markdown_image(png: bytes, alt: str) -> str:
    """A markdown image with the PNG inline, which the Dagster UI renders in metadata."""
    return f"![{alt}](data:image/png;base64,{base64.b64encode(png).decode('ascii')})"
