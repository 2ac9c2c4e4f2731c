"""Stitch stage: blend overlapping tile predictions with Hann weights into one chunk's rasters.

A worker blends the tiles that intersect a chunk core (:mod:`geoseg.chunk`) into arrays the size of the core:
``classes x core`` float32 sums and weights, so memory is bounded by the chunk size whatever the scene's. Each
pixel gets the weighted mean over every tile covering it, as a whole-scene blend would; invalid input pixels
carry no weight. The core's rasters are then written as *pieces* (plain tiled GeoTIFFs on the scene's grid,
placed by their own transform), which :mod:`geoseg.assemble` mosaics into the scene's COGs:

* building probability, uint8 0-255, with an internal mask: masked where the input was invalid;
* class labels, uint8 (argmax over classes), nodata = :data:`MASK_NODATA` where the input was invalid.

With a model that has a separator class (the line where touching buildings meet), the separator counts as
building in both (probability = P(building) + P(separator)), and P(separator) as uint8 0-255 is kept for the
vectorise stage, which keeps touching buildings apart along it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import rasterio
from affine import Affine
from rasterio.windows import Window

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
    instances: list | None = None  # instance backends: geoseg.instances.Instance in tile pixels


@dataclass
class ChunkRasters:
    """A chunk core's stitched rasters (module docstring), each (h, w) uint8."""

    labels: np.ndarray
    probability: np.ndarray
    valid: np.ndarray  # bool
    separator: np.ndarray | None = None


def blend_chunk(core: Window, predictions: list[TilePrediction], n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Weighted mean class probabilities over ``core`` (float32 (C, h, w)) and where any tile saw valid input."""
    h, w = int(core.height), int(core.width)
    acc = np.zeros((n_classes, h, w), np.float32)
    weight = np.zeros((h, w), np.float32)
    valid = np.zeros((h, w), bool)
    weights: dict[tuple[int, int], np.ndarray] = {}
    for p in sorted(predictions, key=lambda p: p.tile):  # a fixed order: the same sums on every run
        t = p.tile
        r0, r1 = max(t.row_off, core.row_off), min(t.row_end, core.row_off + h)
        c0, c1 = max(t.col_off, core.col_off), min(t.col_end, core.col_off + w)
        if r0 >= r1 or c0 >= c1:
            continue
        in_tile = (slice(r0 - t.row_off, r1 - t.row_off), slice(c0 - t.col_off, c1 - t.col_off))
        in_core = (slice(r0 - core.row_off, r1 - core.row_off), slice(c0 - core.col_off, c1 - core.col_off))
        tile_valid = p.valid[in_tile]
        valid[in_core] |= tile_valid
        if p.probabilities is None:
            continue
        key = (t.height, t.width)
        if key not in weights:
            weights[key] = blend_weights(*key)
        wt = weights[key][in_tile] * tile_valid  # invalid pixels carry no weight
        acc[(slice(None), *in_core)] += p.probabilities[(slice(None), *in_tile)].astype(np.float32) * wt
        weight[in_core] += wt
    valid &= weight > 0
    return acc / np.where(weight > 0, weight, 1.0), valid


def chunk_rasters(probs: np.ndarray, valid: np.ndarray, building_class: int,
                  separator_class: int | None = None) -> ChunkRasters:
    """Labels, building probability and (with a separator class) P(separator) from blended probabilities."""
    p_building = probs[building_class]
    labels = probs.argmax(axis=0).astype(np.uint8)
    separator = None
    if separator_class is not None:
        p_separator = probs[separator_class]
        p_building = p_building + p_separator
        separator = np.clip(np.rint(p_separator * 255), 0, 255).astype(np.uint8) * valid
        labels[labels == separator_class] = building_class
    building = np.clip(np.rint(p_building * 255), 0, 255).astype(np.uint8)
    labels[~valid] = MASK_NODATA
    building[~valid] = 0
    return ChunkRasters(labels, building, valid, separator)


def write_piece(path: str, array: np.ndarray, grid: Grid, core: Window, nodata: int | None,
                valid: np.ndarray | None = None, tags: dict | None = None) -> None:
    """A chunk's raster as a tiled GeoTIFF placed on the scene grid; ``valid``: written as its internal mask."""
    profile = dict(driver="GTiff", width=int(core.width), height=int(core.height), count=1, dtype=array.dtype.name,
                   crs=grid.crs, transform=grid.transform @ Affine.translation(core.col_off, core.row_off), tiled=True,
                   blockxsize=_BLOCK_PX, blockysize=_BLOCK_PX, nodata=nodata)
    with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True), rasterio.open(path, "w", **profile) as dst:
        dst.write(array, 1)
        if valid is not None:
            dst.write_mask(valid.astype(np.uint8) * 255)
        if tags:
            dst.update_tags(**tags)
