"""Instances across tiles: each building once, whole, with an id, a score and a polygon.

Tiles overlap, so a building near a tile edge is detected by two (or four) tiles, whole in one and cut in the
others. geoseg keeps an instance only in the tile that *owns* its box centre: each tile owns the scene pixels
closer to it than to its neighbours — the border between two overlapping tiles runs through the middle of
their overlap, and the first/last tile of a row or column owns up to the scene edge. Every centre falls in
exactly one tile's area, so no building is kept twice and none is lost; and a building whose centre a tile
owns lies at least half the overlap inside that tile, so it is seen whole if it is at most ``overlap_px``
across. Chosen over mask NMS because it needs no IoU threshold, cannot keep two partial copies of a building
whose halves overlap little, and is O(instances).

Outputs: a uint32 instance raster (0 = no building; ids 1..n as the polygons, in order of each instance's
top-left pixel; where two kept instances overlap the higher score wins) and a GeoDataFrame with ``id``,
``score`` (0-1) and ``area_m2``.
"""

from __future__ import annotations

from dataclasses import dataclass

import geopandas as gpd
import numpy as np
import rasterio
from affine import Affine
from rasterio.features import shapes
from shapely.geometry import shape

from .read import Grid
from .tile import Tile
from .vectorise import georeference


@dataclass
class Instance:
    """One detection in tile pixels: the top-left (row, col) of ``mask``, a bool array cropped to the instance's
    bounding box (its first/last rows and columns hold mask pixels), and its score."""

    row_px: int
    col_px: int
    mask: np.ndarray
    score: float


def ownership(tiles: list[Tile], height_px: int, width_px: int) -> dict[tuple[int, int], tuple[int, int, int, int]]:
    """(row_off, col_off) of each tile -> the scene pixels it owns, (row0, row1, col0, col1), ends exclusive."""
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


def instances_to_frame(instances: list[Instance], grid: Grid, gsd_m: float, min_area_m2: float = 0.0,
                       simplify_m: float = 0.0, **shaping) -> tuple[gpd.GeoDataFrame, list[Instance]]:
    """Polygons (the largest part of each mask) in the grid's CRS with id, score, area_m2; and the instances
    kept, in id order (id = position + 1)."""
    ordered = sorted(instances, key=lambda i: (i.row_px, i.col_px, -i.score))
    polygons = []
    for inst in ordered:
        parts = [shape(g) for g, v in shapes(inst.mask.astype(np.uint8), mask=inst.mask, connectivity=4,
                                              transform=Affine.translation(inst.col_px, inst.row_px)) if v]
        polygons.append(max(parts, key=lambda p: p.area))
    frame, keep = georeference(polygons, {"score": [round(i.score, 4) for i in ordered]}, grid, gsd_m, min_area_m2,
                               simplify_m, **shaping)
    return frame, [inst for inst, k in zip(ordered, keep) if k]


def write_instance_raster(instances: list[Instance], grid: Grid, valid_path: str, path: str, strip_px: int = 1024) -> None:
    """uint32 ids (position in ``instances`` + 1), written in strips of rows; the higher score wins overlaps;
    nodata (0xFFFFFFFF) where ``valid_path``'s mask (the probability raster) says the input was invalid."""
    nodata = np.iinfo(np.uint32).max
    profile = dict(driver="GTiff", width=grid.width, height=grid.height, count=1, dtype="uint32", crs=grid.crs,
                   transform=grid.transform, tiled=True, blockxsize=256, blockysize=256, nodata=nodata)
    by_score = np.array(sorted(range(len(instances)), key=lambda i: instances[i].score), dtype=np.int64)
    first_row = np.array([instances[i].row_px for i in by_score], dtype=np.int64)
    end_row = first_row + np.array([instances[i].mask.shape[0] for i in by_score], dtype=np.int64)
    with rasterio.open(valid_path) as valid_ds, rasterio.open(path, "w", **profile) as dst:
        for top in range(0, grid.height, strip_px):
            bottom = min(top + strip_px, grid.height)
            strip = np.zeros((bottom - top, grid.width), np.uint32)
            for i in by_score[(first_row < bottom) & (end_row > top)].tolist():  # only those in the strip
                inst = instances[i]
                r0, r1 = max(inst.row_px, top), min(inst.row_px + inst.mask.shape[0], bottom)
                sub = inst.mask[r0 - inst.row_px : r1 - inst.row_px, : grid.width - inst.col_px]
                target = strip[r0 - top : r1 - top, inst.col_px : inst.col_px + sub.shape[1]]
                target[sub] = i + 1
            window = rasterio.windows.Window(0, top, grid.width, bottom - top)
            strip[valid_ds.read_masks(1, window=window) == 0] = nodata
            dst.write(strip, 1, window=window)
