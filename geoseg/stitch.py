"""Stitch stage: blend overlapping tile predictions with Hann weights into streamed rasters.

Tiles arrive in any order (Dask finishes them as it likes). They are held until every tile of the earliest
unfinished tile row is in; that row is then blended into a buffer exactly one tile tall, and the grid rows
that no later tile can touch (down to the next tile row's offset) are written out and dropped. Memory is
``classes x tile_px x width_px`` floats, whatever the scene's height.

Two rasters are written (plain tiled GeoTIFFs; the write stage turns them into COGs):

* building probability, uint8 0-255, with an internal mask: masked where the input was invalid;
* class labels, uint8 (argmax over classes), nodata = :data:`MASK_NODATA` where the input was invalid.

With a model that has a separator class (the line where touching buildings meet), the separator counts as
building in both (probability = P(building) + P(separator)), and a third raster, P(separator) as uint8 0-255,
is written for the vectorise stage, which keeps touching buildings apart along it.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import numpy as np
import rasterio

from .read import Grid
from .tile import Tile, blend_weights

MASK_NODATA = 255
_BLOCK_PX = 256


@dataclass
class TilePrediction:
    """One tile's output as a worker returns it. ``probabilities`` is None for an all-nodata tile."""

    tile: Tile
    probabilities: np.ndarray | None  # float16 (C, h, w)
    valid: np.ndarray  # bool (h, w)
    instances: list | None = None  # instance backends: geoseg.merge_instances.Instance in tile pixels


def open_intermediate(path: str, grid: Grid, nodata: int | None):
    profile = dict(
        driver="GTiff", width=grid.width, height=grid.height, count=1, dtype="uint8", crs=grid.crs,
        transform=grid.transform, tiled=True, blockxsize=_BLOCK_PX, blockysize=_BLOCK_PX, nodata=nodata,
    )
    return rasterio.open(path, "w", **profile)


class StripStitcher:
    """Blend tile predictions row by row and stream finished rows to ``probability_path`` and ``mask_path``."""

    def __init__(self, grid: Grid, tiles: list[Tile], class_names: list[str], building_class: int,
                 probability_path: str, mask_path: str, separator_class: int | None = None,
                 separator_path: str | None = None):
        n_classes = len(class_names)
        self.grid, self.n_classes, self.building_class = grid, n_classes, building_class
        self.separator_class = separator_class
        self.row_offsets = sorted({t.row_off for t in tiles})
        self.expected = defaultdict(int)
        for t in tiles:
            self.expected[t.row_off] += 1
        self.tile_h = max(t.height for t in tiles)
        self.pending: dict[int, list[TilePrediction]] = defaultdict(list)
        self.next_row = 0  # index into row_offsets
        self.buf_row0 = 0  # grid row held at buffer row 0
        self.acc = np.zeros((n_classes, self.tile_h, grid.width), np.float32)
        self.weight = np.zeros((self.tile_h, grid.width), np.float32)
        self.valid = np.zeros((self.tile_h, grid.width), bool)
        self._weights: dict[tuple[int, int], np.ndarray] = {}
        with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True):
            self.prob_ds = open_intermediate(probability_path, grid, None)
        self.mask_ds = open_intermediate(mask_path, grid, MASK_NODATA)
        published = class_names if separator_class is None else class_names[:separator_class]
        self.mask_ds.update_tags(CLASSES=",".join(published), BUILDING_CLASS=str(building_class))
        self.separator_ds = None
        if separator_class is not None:
            self.separator_ds = open_intermediate(separator_path, grid, None)
        self.rows_written = 0

    def add(self, prediction: TilePrediction) -> None:
        self.pending[prediction.tile.row_off].append(prediction)
        while self.next_row < len(self.row_offsets):
            row_off = self.row_offsets[self.next_row]
            if len(self.pending[row_off]) < self.expected[row_off]:
                return
            for p in self.pending.pop(row_off):
                self._blend(p)
            self.next_row += 1
            done_to = self.row_offsets[self.next_row] if self.next_row < len(self.row_offsets) else self.grid.height
            self._flush(done_to)

    def _blend(self, p: TilePrediction) -> None:
        t = p.tile
        r0 = t.row_off - self.buf_row0
        rows, cols = slice(r0, r0 + t.height), slice(t.col_off, t.col_end)
        self.valid[rows, cols] |= p.valid
        if p.probabilities is None:
            return
        key = (t.height, t.width)
        if key not in self._weights:
            self._weights[key] = blend_weights(*key)
        w = self._weights[key] * p.valid  # invalid pixels carry no weight
        self.acc[:, rows, cols] += p.probabilities.astype(np.float32) * w
        self.weight[rows, cols] += w

    def _flush(self, done_to: int) -> None:
        """Write grid rows [buf_row0, done_to) and shift the buffer up."""
        n = done_to - self.buf_row0
        if n <= 0:
            return
        weight = self.weight[:n]
        valid = self.valid[:n] & (weight > 0)
        probs = self.acc[:, :n] / np.where(weight > 0, weight, 1.0)
        p_building = probs[self.building_class]
        labels = probs.argmax(axis=0).astype(np.uint8)
        window = rasterio.windows.Window(0, self.buf_row0, self.grid.width, n)
        if self.separator_ds is not None:
            p_separator = probs[self.separator_class]
            p_building = p_building + p_separator
            self.separator_ds.write(np.clip(np.rint(p_separator * 255), 0, 255).astype(np.uint8) * valid, 1,
                                    window=window)
            labels[labels == self.separator_class] = self.building_class
        building = np.clip(np.rint(p_building * 255), 0, 255).astype(np.uint8)
        labels[~valid] = MASK_NODATA
        building[~valid] = 0
        self.prob_ds.write(building, 1, window=window)
        self.prob_ds.write_mask(valid.astype(np.uint8) * 255, window=window)
        self.mask_ds.write(labels, 1, window=window)
        for arr in (self.acc, self.weight, self.valid):  # rows axis is -2 in all three
            if n < self.tile_h:
                arr[..., :-n, :] = arr[..., n:, :].copy()
            arr[..., self.tile_h - n :, :] = 0
        self.buf_row0 = done_to
        self.rows_written = done_to

    def close(self) -> None:
        for ds in (self.prob_ds, self.mask_ds, self.separator_ds):
            if ds is not None:
                ds.close()

    @property
    def complete(self) -> bool:
        return self.rows_written == self.grid.height
