"""Tile grid over a scene: small value objects and pure functions over them.

All numbers here are in **pixels of the processing grid** (the scene's own grid, or the model-GSD grid when
the scene is resampled on read), never in CRS units.

Edge rules
----------
* Tiles advance by ``stride_px = tile_px - overlap_px``. The last tile of a row or column is moved back so
  that it ends exactly on the last pixel (``offset = length_px - tile_px``). Every pixel is covered, tiles
  stay full-size, and the last tile overlaps its neighbour by ``overlap_px`` or more.
* A scene smaller than one tile along an axis gets a single tile of the scene's length on that axis. Such
  tiles are padded to the model's input size multiple by the backend, not here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np
from rasterio.windows import Window

from .errors import GeosegError


@dataclass(frozen=True, order=True)
class Tile:
    """A rectangle of the processing grid, in pixels. Ordered row-major (by ``row_off``, then ``col_off``)."""

    row_off: int
    col_off: int
    height: int
    width: int

    @property
    def window(self) -> Window:
        return Window(self.col_off, self.row_off, self.width, self.height)

    @property
    def row_end(self) -> int:
        return self.row_off + self.height

    @property
    def col_end(self) -> int:
        return self.col_off + self.width

    def intersects(self, other: "Tile") -> bool:
        """Whether the two rectangles share a pixel (touching edges do not)."""
        return other.row_off < self.row_end and other.row_end > self.row_off and \
            other.col_off < self.col_end and other.col_end > self.col_off


def tile_offsets(length_px: int, tile_px: int, overlap_px: int) -> list[int]:
    """Start offsets along one axis of ``length_px`` pixels; the last tile ends on the last pixel."""
    if length_px <= 0:
        raise GeosegError(f"cannot tile an axis of {length_px} px")
    if tile_px <= 0 or overlap_px < 0 or overlap_px >= tile_px:
        raise GeosegError(f"need tile_px > overlap_px >= 0, got tile {tile_px} px and overlap {overlap_px} px")
    if length_px <= tile_px:
        return [0]
    stride_px = tile_px - overlap_px
    offsets = list(range(0, length_px - tile_px, stride_px))
    offsets.append(length_px - tile_px)
    return offsets


def tile_grid(height_px: int, width_px: int, tile_px: int = 512, overlap_px: int = 64) -> list[Tile]:
    """All tiles covering a ``height_px`` x ``width_px`` grid, row-major."""
    tile_h, tile_w = min(tile_px, height_px), min(tile_px, width_px)
    return [
        Tile(row, col, tile_h, tile_w)
        for row in tile_offsets(height_px, tile_px, overlap_px)
        for col in tile_offsets(width_px, tile_px, overlap_px)
    ]


def batched(tiles: Sequence[Tile], batch_size: int) -> Iterator[list[Tile]]:
    """Consecutive runs of at most ``batch_size`` tiles, order kept (so batches stay row-major)."""
    for start in range(0, len(tiles), max(1, batch_size)):
        yield list(tiles[start : start + batch_size])


def overlap(tile: Tile, area: Window) -> tuple[tuple[slice, slice], tuple[slice, slice]] | None:
    """Where ``tile`` and ``area`` (grid px) share pixels: (rows, columns) slices into the tile's arrays and into
    the area's, or None if they share none (touching edges share none)."""
    r0, r1 = max(tile.row_off, int(area.row_off)), min(tile.row_end, int(area.row_off + area.height))
    c0, c1 = max(tile.col_off, int(area.col_off)), min(tile.col_end, int(area.col_off + area.width))
    if r0 >= r1 or c0 >= c1:
        return None
    row, col = int(area.row_off), int(area.col_off)
    in_tile = (slice(r0 - tile.row_off, r1 - tile.row_off), slice(c0 - tile.col_off, c1 - tile.col_off))
    return in_tile, (slice(r0 - row, r1 - row), slice(c0 - col, c1 - col))


def blend_weights(height_px: int, width_px: int, floor: float = 1e-3) -> np.ndarray:
    """Separable Hann (sin²) weights for blending overlapping tiles, float32, shape (height_px, width_px).

    The weight falls towards a tile's edges, where a convolutional net sees least context, so the seam between
    two tiles is decided by the tile that sees it best. ``floor`` keeps edge weights positive: a pixel on
    the scene border is covered by only one tile edge and must still get that tile's value.
    """

    def hann(n: int) -> np.ndarray:
        return np.sin(np.pi * (np.arange(n) + 0.5) / n) ** 2

    return np.maximum(np.outer(hann(height_px), hann(width_px)), floor).astype(np.float32)


def owned_areas(tiles: list[Tile], height_px: int, width_px: int) -> dict[tuple[int, int], tuple[int, int, int, int]]:
    """(row_off, col_off) of each tile -> the grid pixels it *owns*, (row0, row1, col0, col1), ends exclusive.

    Each tile owns the pixels closer to it than to its neighbours: the border between two overlapping tiles runs
    through the middle of their overlap, and the first/last tile of a row or column owns up to the grid's edge.
    Every pixel is owned by exactly one tile. An instance model keeps a detected building only in the tile that
    owns its box centre, so no building is kept twice and none is lost, and a building whose centre a tile owns
    lies at least half the overlap inside that tile (seen whole if at most ``overlap_px`` across). Chosen over
    mask NMS: no IoU threshold, no two partial copies of a building whose halves overlap little, O(instances).
    """
    def spans(offsets: list[int], size: list[int], total: int) -> dict[int, tuple[int, int]]:
        out = {}
        for i, (o, s) in enumerate(zip(offsets, size)):
            start = 0 if i == 0 else (o + offsets[i - 1] + size[i - 1]) // 2
            end = total if i == len(offsets) - 1 else (offsets[i + 1] + o + s) // 2
            out[o] = (start, end)
        return out

    rows = sorted({(t.row_off, t.height) for t in tiles})
    cols = sorted({(t.col_off, t.width) for t in tiles})
    row_spans = spans([r for r, _ in rows], [h for _, h in rows], height_px)
    col_spans = spans([c for c, _ in cols], [w for _, w in cols], width_px)
    return {(t.row_off, t.col_off): (*row_spans[t.row_off], *col_spans[t.col_off]) for t in tiles}
