"""Vectorise stage: building polygons from the stitched mask, in bounded memory.

The class raster is read in windows of ``window_px`` x ``window_px``. In each window, 4-connected building
components are labelled and turned into polygons in **integer pixel coordinates of the whole grid**, so a
building cut by a window border yields pieces whose shared edge matches exactly. Pieces that touch an inner
window border are held back and merged at the end with every piece they share an edge with (a corner
contact does not merge, as with 4-connectivity inside a window); all others are final at once. A building on a
tile or window border is therefore one polygon, never two and never duplicated.

Units: ``min_area_m2`` and ``area_m2`` are square metres computed in a metric CRS (the scene's own if it
is UTM, else the UTM zone of the scene's centre), also for geographic input; ``simplify_m`` is a tolerance
in metres, applied in pixel space as ``simplify_m / gsd_m``. ``confidence`` is the mean building
probability (0-1) over the polygon's pixels before simplification.
"""

from __future__ import annotations

from dataclasses import dataclass

import geopandas as gpd
import numpy as np
import rasterio
import shapely
from affine import Affine
from pyproj import CRS as ProjCRS
from rasterio.features import shapes
from rasterio.windows import Window
from scipy import ndimage
from shapely.geometry import shape

from .read import Grid

_FOUR_CONNECTED = ndimage.generate_binary_structure(2, 1)


@dataclass
class Piece:
    """A building (or part of one, before merging) in grid pixel coordinates, with probability sums."""

    polygon: shapely.Polygon
    probability_sum: float  # sum of uint8 probabilities (0-255) over its pixels
    pixels: int


def _window_pieces(labels: np.ndarray, count: int, prob: np.ndarray, window: Window) -> dict[int, Piece]:
    """Pieces of one labelled window, keyed by label."""
    sums = ndimage.sum_labels(prob, labels, index=np.arange(1, count + 1))
    pixels = np.bincount(labels.ravel(), minlength=count + 1)[1:]
    offset = Affine.translation(window.col_off, window.row_off)
    polygons: dict[int, list] = {}
    for geom, value in shapes(labels.astype(np.int32), mask=labels > 0, connectivity=4, transform=offset):
        polygons.setdefault(int(value), []).append(shape(geom))
    return {
        label: Piece(shapely.union_all(polys) if len(polys) > 1 else polys[0], float(sums[label - 1]), int(pixels[label - 1]))
        for label, polys in polygons.items()
    }


def _border_labels(labels: np.ndarray, window: Window, grid: Grid) -> set[int]:
    edges = []
    if window.row_off > 0:
        edges.append(labels[0, :])
    if window.row_off + window.height < grid.height:
        edges.append(labels[-1, :])
    if window.col_off > 0:
        edges.append(labels[:, 0])
    if window.col_off + window.width < grid.width:
        edges.append(labels[:, -1])
    return set(np.unique(np.concatenate(edges)).tolist()) - {0} if edges else set()


def _merge_border_pieces(pieces: list[Piece]) -> list[Piece]:
    """Union pieces that share an edge of positive length (union-find over an STRtree)."""
    if not pieces:
        return []
    geoms = [p.polygon for p in pieces]
    parent = list(range(len(pieces)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    left, right = shapely.STRtree(geoms).query(geoms, predicate="intersects")
    for i, j in zip(left.tolist(), right.tolist()):
        if i < j and geoms[i].intersection(geoms[j]).length > 0:
            parent[find(i)] = find(j)
    groups: dict[int, list[int]] = {}
    for i in range(len(pieces)):
        groups.setdefault(find(i), []).append(i)
    merged = []
    for members in groups.values():
        poly = shapely.union_all([geoms[i] for i in members]) if len(members) > 1 else geoms[members[0]]
        merged.append(Piece(poly, sum(pieces[i].probability_sum for i in members), sum(pieces[i].pixels for i in members)))
    return merged


def building_pieces(mask_path: str, probability_path: str, grid: Grid, building_class: int,
                    window_px: int = 2048, min_pixels: int = 0) -> list[Piece]:
    """All buildings of a stitched class raster, merged across window borders, in pixel coordinates.

    Components under ``min_pixels`` that touch no inner window border are dropped before they become polygons
    (a noisy mask would otherwise hold millions of specks in memory); the exact ``min_area_m2`` filter is
    applied later, in square metres.
    """
    final, border = [], []
    with rasterio.open(mask_path) as mask_ds, rasterio.open(probability_path) as prob_ds:
        for row in range(0, grid.height, window_px):
            for col in range(0, grid.width, window_px):
                window = Window(col, row, min(window_px, grid.width - col), min(window_px, grid.height - row))
                is_building = mask_ds.read(1, window=window) == building_class
                if not is_building.any():
                    continue
                prob = prob_ds.read(1, window=window).astype(np.float64)
                labels, count = ndimage.label(is_building, structure=_FOUR_CONNECTED)
                touching = _border_labels(labels, window, grid)
                if min_pixels > 1:
                    small = np.bincount(labels.ravel(), minlength=count + 1) < min_pixels
                    small[0] = False
                    small[list(touching)] = False
                    labels[small[labels]] = 0
                for label, piece in _window_pieces(labels, count, prob, window).items():
                    (border if label in touching else final).append(piece)
    return final + _merge_border_pieces(border)


def metric_crs(crs: ProjCRS, gdf: gpd.GeoDataFrame) -> ProjCRS:
    """The CRS areas are measured in: the scene's own if UTM, else the UTM zone of the data's centre."""
    if crs.utm_zone is not None:
        return crs
    return gdf.estimate_utm_crs()


def pieces_to_frame(pieces: list[Piece], grid: Grid, gsd_m: float, min_area_m2: float = 0.0,
                    simplify_m: float = 0.0) -> gpd.GeoDataFrame:
    """Georeference pieces: GeoDataFrame in the grid's CRS with ``id``, ``confidence``, ``area_m2``.

    ``id`` is 1..n in order of each polygon's top-left pixel (row, then column), stable for the same mask.
    """
    crs = ProjCRS.from_wkt(grid.crs_wkt)
    pieces = sorted(pieces, key=lambda p: (p.polygon.bounds[1], p.polygon.bounds[0]))
    polygons = [p.polygon for p in pieces]
    if simplify_m > 0 and polygons:
        polygons = list(shapely.simplify(polygons, simplify_m / gsd_m, preserve_topology=True))
    t = grid.transform
    geoms = [shapely.affinity.affine_transform(p, [t.a, t.b, t.d, t.e, t.c, t.f]) for p in polygons]
    frame = gpd.GeoDataFrame(
        {"confidence": [round(p.probability_sum / p.pixels / 255.0, 4) for p in pieces]},
        geometry=gpd.GeoSeries(geoms, crs=crs),
    )
    if len(frame):
        frame["area_m2"] = frame.geometry.to_crs(metric_crs(crs, frame)).area.round(2)
        frame = frame[frame["area_m2"] >= min_area_m2].reset_index(drop=True)
    else:
        frame["area_m2"] = np.array([], dtype=float)
    frame.insert(0, "id", np.arange(1, len(frame) + 1, dtype=np.int64))
    return frame
