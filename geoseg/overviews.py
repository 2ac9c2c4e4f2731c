"""Overviews of the scene's COGs, made by each chunk task from the arrays it already holds.

GDAL's COG driver builds overviews by reading the whole mosaic back. Here each chunk makes its own share of every overview level, in memory, as GDAL would, and writes it as a
small piece beside its full-resolution ones; the COG is then copied with ``OVERVIEWS=FORCE_USE_EXISTING``.

Rules (those of GDAL 3.10's COG driver with ``BLOCKSIZE=512``, checked pixel for pixel in
``tests/test_overviews.py``):

* **Levels**: factors 2, 4, 8... while the previous level's longest side exceeds 512 px (a scene of 512 px or less
  has none); level ``f`` of an ``h`` x ``w`` grid is ``floor(h / f)`` x ``floor(w / f)``.
* **Classes** (``NEAREST``): the top-left pixel of each 2 x 2 block of the previous level (so level ``f`` is
  ``full[::f, ::f]``).
* **Probabilities** (``AVERAGE`` with the validity mask): the mean of the valid pixels of each 2 x 2 block of the
  previous level, rounded half up; valid where any of them is; 0 where none is.

These hold where every level halves the grid exactly: both sides divisible by the largest factor. Other grids
(GDAL then samples windows of slightly more than 2 px, which also cross chunk borders) and those needing a factor
that does not divide ``chunk_px`` leave the overviews to GDAL (:func:`chunk_local_factors`). A chunk core starts at
multiples of ``chunk_px`` (a multiple of 2048), so every block of a level lies inside one chunk: the chunks'
pieces of a level tile that level exactly.
"""

from __future__ import annotations

import numpy as np
from affine import Affine

from .chunk import Chunk
from .read import Grid

#: the COGs' block size, px (geoseg.write.write_cog): overview levels are added until one fits in a block
COG_BLOCK_PX = 512


def overview_factors(height_px: int, width_px: int, block_px: int = COG_BLOCK_PX) -> tuple[int, ...]:
    """GDAL's automatic overview factors for a ``height_px`` x ``width_px`` COG (module docstring)."""
    factors, factor = [], 1
    while max(height_px, width_px) // factor > block_px:
        factor *= 2
        factors.append(factor)
    return tuple(factors)


def chunk_local_factors(height_px: int, width_px: int, chunk_px: int) -> tuple[int, ...]:
    """:func:`overview_factors` where the chunks can make every level exactly as GDAL would (each factor divides
    the grid's sides and ``chunk_px``), else () (GDAL builds them)."""
    factors = overview_factors(height_px, width_px)
    if factors and (height_px % factors[-1] or width_px % factors[-1] or chunk_px % factors[-1]):
        return ()
    return factors


def _pad_even(a: np.ndarray) -> np.ndarray:
    h, w = a.shape
    if not (h % 2 or w % 2):
        return a
    padded = np.zeros((h + h % 2, w + w % 2), a.dtype)
    padded[:h, :w] = a
    return padded


def _block_sums(a: np.ndarray) -> np.ndarray:
    """Sums of the 2 x 2 blocks of an even-sized array, by four strided adds (three levels of a 2048 px chunk 6x
    faster than by reshaped sums, `benchmarks/bench_fast_paths.py`)."""
    return a[0::2, 0::2] + a[1::2, 0::2] + a[0::2, 1::2] + a[1::2, 1::2]


def average_levels(values: np.ndarray, valid: np.ndarray, n_levels: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """``n_levels`` halvings of uint8 ``values`` (valid where ``valid``): [(uint8 means, bool valid), ...]."""
    levels = []
    for _ in range(n_levels):
        sums = _block_sums(_pad_even(np.multiply(values, valid, dtype=np.uint16)))
        counts = _block_sums(_pad_even(valid.astype(np.uint8)))
        valid = counts > 0
        values = ((sums + counts // 2) // np.maximum(counts, 1)).astype(np.uint8)  # 0 where none is valid
        levels.append((values, valid))
    return levels


def nearest_levels(values: np.ndarray, n_levels: int) -> list[np.ndarray]:
    """``n_levels`` halvings of a class raster: the top-left pixel of each 2 x 2 block."""
    levels = []
    for _ in range(n_levels):
        values = values[::2, ::2]
        levels.append(np.ascontiguousarray(values))
    return levels


def level_grid(grid: Grid, factor: int) -> Grid:
    """The grid of overview level ``factor`` (which divides its sides): pixels ``factor`` times larger."""
    return Grid(grid.crs_wkt, grid.transform @ Affine.scale(factor), grid.width // factor, grid.height // factor)


def level_chunk(chunk: Chunk, factor: int) -> Chunk:
    """A chunk core's share of overview level ``factor`` (which divides its offsets and sides)."""
    return Chunk(chunk.row_off // factor, chunk.col_off // factor, chunk.height // factor, chunk.width // factor,
                 index=chunk.index)
