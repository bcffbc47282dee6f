"""Operations on the one-cell-per-tile grid of a county: smoothing and change between vintages. Pure numpy."""

from __future__ import annotations

import numpy as np


def plurality_smooth(grid: np.ndarray, n_classes: int, nodata: int = 255, center_weight: float = 1.5) -> np.ndarray:
    """3 x 3 plurality vote, the centre tile's own label weighted ``center_weight`` (ties keep the centre).

    As in the earlier Embarrassingly-Parallel study, this removes isolated tiles (a park in a town, a
    farmhouse in fields). Nodata cells stay nodata and do not vote.
    """
    rows, cols = grid.shape
    votes = np.zeros((n_classes, rows, cols), np.float64)
    padded = np.pad(grid, 1, constant_values=nodata)
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            window = padded[1 + dy:1 + dy + rows, 1 + dx:1 + dx + cols]
            weight = center_weight if (dy, dx) == (0, 0) else 1.0
            for c in range(n_classes):
                votes[c] += weight * (window == c)
    smoothed = np.argmax(votes, axis=0).astype(grid.dtype)
    return np.where(grid == nodata, grid, smoothed)


def transition_matrix(before: np.ndarray, after: np.ndarray, n_classes: int) -> np.ndarray:
    """Counts of tiles going from class i (rows, earlier vintage) to class j (columns, later vintage)."""
    before, after = np.asarray(before, np.int64), np.asarray(after, np.int64)
    matrix = np.zeros((n_classes, n_classes), np.int64)
    np.add.at(matrix, (before, after), 1)
    return matrix
