"""Vectorise stage: building polygons from the stitched mask, in bounded memory.

The class raster is read in windows of ``window_px`` x ``window_px``. In each window, 4-connected building
components are labelled and turned into polygons in **integer pixel coordinates of the whole grid**, so a
building cut by a window border yields pieces whose shared edge matches exactly. Pieces that touch an inner
window border are held back and merged at the end with every piece they share an edge with (a corner
contact does not merge, as with 4-connectivity inside a window); all others are final at once. A building on a
tile or window border is therefore one polygon, never two and never duplicated.

With a separator raster (P(separator) 0-255 from models with a separator class, see :mod:`geoseg.stitch`),
building pixels with P(separator) >= ``separator_threshold`` (0-1), widened by ``separator_dilate_px``, are
taken out before components are labelled, so touching buildings are separate; each separator pixel then goes
to a building at most :data:`SEPARATOR_GROW_PX` + ``separator_dilate_px`` px away (the highest label wins a
tie), except on the first/last row/column of an inner window border, so that two different buildings never
meet across a window border.
Pieces are merged only with pieces of *other* windows: inside a window, distinct labels are distinct buildings.

With a ``building_threshold`` under :data:`SEED_THRESHOLD` (a model that is under-confident on new ground is
cut lower, see :mod:`geoseg.stitch`), components are labelled on the building pixels that reach
:data:`SEED_THRESHOLD` (less separators), and the building pixels between the two thresholds join a building at
most :data:`FRINGE_GROW_PX` px away as separator pixels do: outlines become fuller, but low-probability pixels
neither join two buildings into one nor make buildings of their own (both cost SpaceNet F1 in the
leave-one-place-out study of issue 24). Those that no building reaches stay building in ``mask.tif`` and are in
no outline.

Units: ``min_area_m2`` and ``area_m2`` are square metres computed in a metric CRS (the scene's own if it
is UTM or a local site grid, else a Lambert azimuthal equal-area projection centred on the scene, which holds at
the poles and across the antimeridian where no UTM zone does), also for geographic input; ``simplify_m`` is a tolerance
in metres, applied in pixel space as ``simplify_m / gsd_m``. ``confidence`` is the mean building
probability (0-1) over the polygon's pixels before simplification.
"""

from __future__ import annotations

from contextlib import ExitStack
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import rasterio
import rasterio.transform
import shapely
from affine import Affine
from pyproj import CRS as ProjCRS
from pyproj import Transformer
from rasterio.windows import Window

from .outline import rectangularity, regularise_px
from .read import Grid, affine_xy
from .stitch import probability_cut_u8
from .trace import label_polygons, trace_components

if TYPE_CHECKING:  # geopandas is imported where frames are made, on workers: the driver never needs it
    import geopandas as gpd

#: the 4-connected cross (``ndimage.generate_binary_structure(2, 1)``); scipy is imported by the functions that
#: label, on workers, not by the driver, which imports this module for its records (0.3 s of every run's start)
_FOUR_CONNECTED = np.array([[False, True, False], [True, True, True], [False, True, False]])
SEPARATOR_GROW_PX = 2
#: with a building threshold under it, only pixels with P(building) >= this seed buildings (0-1) ...
SEED_THRESHOLD = 0.5
#: ... and the building pixels under it join a seeded building at most this many px away
FRINGE_GROW_PX = 2


@dataclass(frozen=True)
class VectorParams:
    """How a scene's building raster becomes outlines: which class is building, how touching buildings are split
    and specks dropped (pixels), and how outlines are shaped and filtered (metres, square metres)."""

    building_class: int = 1
    min_pixels: int = 0  # components under this many px that touch no inner window border are dropped early
    separator_threshold: float = 0.5  # P(separator) 0-1 at which a building pixel is a separator
    separator_dilate_px: int = 0  # separators widened by this many px before splitting
    min_area_m2: float = 0.0
    simplify_m: float = 0.0
    regularise: bool = False  # right-angled outlines (geoseg.outline) instead of simplified ones
    min_rectangularity: float = 0.0  # drop outlines whose area is under this fraction of their bounding rectangle's
    #: P(building) 0-1 at which a pixel is building in the mask (None: the most probable class; geoseg.stitch);
    #: under :data:`SEED_THRESHOLD` its outlines grow from confident seeds (module docstring)
    building_threshold: float | None = None
    #: buildings whose confidence (mean P(building), 0-1, as the ``confidence`` column rounds it) is under this are
    #: left out of the polygons (None: all kept); the mask keeps their pixels
    min_confidence: float | None = None


@dataclass
class Piece:
    """A building (or part of one, before merging) in grid pixel coordinates, with probability sums."""

    polygon: shapely.Polygon
    probability_sum: float  # sum of uint8 probabilities (0-255) over its pixels
    pixels: int
    window: int | None = None  # index of the window it came from (None: unknown, may merge with anything)

    @property
    def confidence(self) -> float:
        """Mean P(building) over its pixels, 0-1, as the ``confidence`` column holds it (4 decimals)."""
        return round(self.probability_sum / self.pixels / 255.0, 4)


def confident(piece: Piece, min_confidence: float | None) -> bool:
    """Whether a building stays under the floor ``min_confidence`` (None: every one does), judged on the value its
    ``confidence`` column holds, so that a user's own filter of that column agrees."""
    return min_confidence is None or piece.confidence >= min_confidence


def _window_pieces(labels: np.ndarray, count: int, prob: np.ndarray, offset: Affine, index: int) -> dict[int, Piece]:
    """Pieces of one labelled window (or of the part of it that holds buildings, placed by ``offset``), keyed by
    label. Probability sums and pixel counts by ``bincount`` over the building pixels (the float64 sums
    ``ndimage.sum_labels`` makes, in the same order, without its other passes)."""
    flat, weights = labels.ravel(), prob.ravel()
    inside = np.flatnonzero(flat)
    if inside.size < flat.size // 4:  # sparse: count only the building pixels
        flat, weights = flat[inside], weights[inside]
    sums = np.bincount(flat, weights=weights, minlength=count + 1)
    pixels = np.bincount(flat, minlength=count + 1)
    return {
        label: Piece(shapely.union_all(polys) if len(polys) > 1 else polys[0], float(sums[label]),
                     int(pixels[label]), index)
        for label, polys in trace_components(labels, count, offset).items()
    }


def _inner_edges(window: Window, grid: Grid, box: tuple[int, int, int, int] | None = None) -> list[tuple]:
    """Index expressions of the first/last rows/columns of an array that lie on an inner window border: the
    window's own, or those of its part ``box`` = (top, bottom, left, right) px in the window, which has the
    window's border only where it reaches it."""
    height, width = int(window.height), int(window.width)
    top, bottom, left, right = box if box is not None else (0, height, 0, width)
    edges = []
    if window.row_off > 0 and top == 0:
        edges.append((0, slice(None)))
    if window.row_off + window.height < grid.height and bottom == height:
        edges.append((-1, slice(None)))
    if window.col_off > 0 and left == 0:
        edges.append((slice(None), 0))
    if window.col_off + window.width < grid.width and right == width:
        edges.append((slice(None), -1))
    return edges


def _dilate_four(mask: np.ndarray, steps: int) -> np.ndarray:
    """``ndimage.binary_dilation(mask, 4-connected cross, iterations=steps)`` (outside the array counts as
    False), by shifted ORs: over ten times faster on a 2048 px window (`benchmarks/bench_fast_paths.py`)."""
    mask = mask.copy()
    for _ in range(steps):
        grown = mask.copy()
        grown[1:] |= mask[:-1]
        grown[:-1] |= mask[1:]
        grown[:, 1:] |= mask[:, :-1]
        grown[:, :-1] |= mask[:, 1:]
        mask = grown
    return mask


def _building_box(is_building: np.ndarray, margin_px: int) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) px of the rows and columns holding building pixels, widened by ``margin_px``
    and clipped to the array."""
    rows = np.flatnonzero(is_building.any(axis=1))
    cols = np.flatnonzero(is_building.any(axis=0))
    height, width = is_building.shape
    return (max(0, rows[0] - margin_px), min(height, rows[-1] + 1 + margin_px),
            max(0, cols[0] - margin_px), min(width, cols[-1] + 1 + margin_px))


def _border_labels(labels: np.ndarray, edges: list[tuple]) -> set[int]:
    if not edges:
        return set()
    return set(np.unique(np.concatenate([labels[e] for e in edges])).tolist()) - {0}


def _grow_into_separators(labels: np.ndarray, separator: np.ndarray, edges: list[tuple], steps: int) -> None:
    """Give separator pixels (not on inner window borders) the label of a building within ``steps`` px, in place:
    at each step, every such pixel still without a label takes the highest label among its four neighbours (a
    4-connected grey dilation, computed only at those pixels; outside the window counts as no label). The four
    neighbours' flat indices are found once; one outside the window is the pixel itself, which has no label
    while it is still growing (14x the whole-window grey dilation per step it replaced,
    `benchmarks/bench_fast_paths.py`)."""
    free = separator.copy()
    for e in edges:
        free[e] = False
    height, width = labels.shape
    flat = np.ascontiguousarray(labels).reshape(-1)
    at = np.flatnonzero(free & (labels == 0))
    row, col = np.divmod(at, width)
    neighbours = [np.where(row > 0, at - width, at), np.where(row < height - 1, at + width, at),
                  np.where(col > 0, at - 1, at), np.where(col < width - 1, at + 1, at)]
    for _ in range(steps):
        if not at.size:
            break
        grown = flat[neighbours[0]]
        for n in neighbours[1:]:
            np.maximum(grown, flat[n], out=grown)
        flat[at] = grown
        still = grown == 0
        at, neighbours = at[still], [n[still] for n in neighbours]
    if not np.shares_memory(flat, labels):
        labels[...] = flat.reshape(height, width)


def merge_border_pieces(pieces: list[Piece]) -> list[Piece]:
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
        same_window = pieces[i].window is not None and pieces[i].window == pieces[j].window
        if i < j and not same_window and geoms[i].intersection(geoms[j]).length > 0:
            parent[find(i)] = find(j)
    groups: dict[int, list[int]] = {}
    for i in range(len(pieces)):
        groups.setdefault(find(i), []).append(i)
    merged = []
    for members in groups.values():
        poly = shapely.union_all([geoms[i] for i in members]) if len(members) > 1 else geoms[members[0]]
        merged.append(Piece(poly, sum(pieces[i].probability_sum for i in members),
                            sum(pieces[i].pixels for i in members)))
    return merged


def window_index(window: Window, grid: Grid, window_px: int) -> int:
    """Row-major number of a vectorise window in the grid (pieces of the same window never merge)."""
    return (int(window.row_off) // window_px) * -(-grid.width // window_px) + int(window.col_off) // window_px


def pieces_in_window(labels_in: np.ndarray, prob: np.ndarray, separator: np.ndarray | None, window: Window,
                     grid: Grid, window_px: int, params: VectorParams) -> tuple[list[Piece], list[Piece]]:
    """The buildings of one window: (final pieces, pieces touching an inner window border, to be merged).
    ``labels_in``: class labels; ``prob``: building probability uint8; ``separator``: P(separator) uint8 or None;
    ``params``: the building class, the separator settings and ``min_pixels``.

    Only the rows and columns that hold building pixels are worked on (widened by ``separator_dilate_px``, the
    reach of a separator into them): component numbers follow the raster scan, which the crop keeps, so the
    pieces are those of the whole window, in a fraction of the time where buildings are sparse."""
    is_building = labels_in == params.building_class
    if not is_building.any():
        return [], []
    dilate_px = params.separator_dilate_px if separator is not None else 0
    top, bottom, left, right = box = _building_box(is_building, dilate_px)
    is_building = is_building[top:bottom, left:right]
    edges = _inner_edges(window, grid, box)
    split = None
    if separator is not None:
        split = separator[top:bottom, left:right] >= round(params.separator_threshold * 255)
        if dilate_px > 0 and split.any():
            split = _dilate_four(split, dilate_px)
        split &= is_building
    core = is_building & ~split if split is not None else is_building
    fringe = None
    if params.building_threshold is not None and params.building_threshold < SEED_THRESHOLD:
        fringe = core & (prob[top:bottom, left:right] < probability_cut_u8(SEED_THRESHOLD))
        core = core & ~fringe
    from scipy import ndimage

    labels, count = ndimage.label(core, structure=_FOUR_CONNECTED)
    if split is not None and split.any():
        _grow_into_separators(labels, split, edges, SEPARATOR_GROW_PX + dilate_px)
    if fringe is not None and fringe.any():
        _grow_into_separators(labels, fringe, edges, FRINGE_GROW_PX)
    touching = _border_labels(labels, edges)
    if params.min_pixels > 1:
        small = np.bincount(labels.ravel(), minlength=count + 1) < params.min_pixels
        small[0] = False
        small[list(touching)] = False
        if small.any():
            labels[small[labels]] = 0
    final, border = [], []
    index = window_index(window, grid, window_px)
    offset = Affine.translation(window.col_off + left, window.row_off + top)
    for label, piece in _window_pieces(labels, count, prob[top:bottom, left:right], offset, index).items():
        (border if label in touching else final).append(piece)
    return final, border


def windows_of(area: Window, window_px: int) -> list[Window]:
    """Vectorise windows covering ``area`` (a whole grid, or a chunk core on the window grid), row-major."""
    r0, c0, h, w = int(area.row_off), int(area.col_off), int(area.height), int(area.width)
    return [Window(col, row, min(window_px, c0 + w - col), min(window_px, r0 + h - row))
            for row in range(r0, r0 + h, window_px) for col in range(c0, c0 + w, window_px)]


def building_pieces(mask_path: str, probability_path: str, grid: Grid, params: VectorParams,
                    window_px: int = 2048, separator_path: str | None = None) -> list[Piece]:
    """All buildings of a stitched class raster, merged across window borders, in pixel coordinates.
    ``separator_path``: P(separator) as uint8 0-255, which splits touching buildings (module docstring).

    Components under ``min_pixels`` that touch no inner window border are dropped before they become polygons
    (a noisy mask would otherwise hold millions of specks in memory); the exact ``min_area_m2`` filter is
    applied later, in square metres.
    """
    final, border = [], []
    with ExitStack() as stack:
        mask_ds, prob_ds = (stack.enter_context(rasterio.open(p)) for p in (mask_path, probability_path))
        separator_ds = stack.enter_context(rasterio.open(separator_path)) if separator_path else None
        for window in windows_of(Window(0, 0, grid.width, grid.height), window_px):
            separator = separator_ds.read(1, window=window) if separator_ds is not None else None
            done, touching = pieces_in_window(mask_ds.read(1, window=window), prob_ds.read(1, window=window),
                                              separator, window, grid, window_px, params)
            final += done
            border += touching
    return final + merge_border_pieces(border)


def metric_crs(crs: ProjCRS, bounds: tuple[float, float, float, float]) -> ProjCRS:
    """The CRS areas are measured in for data within ``bounds`` (west, south, east, north in ``crs``): the scene's
    own if UTM or a local engineering grid (which has no other), else a Lambert azimuthal equal-area projection
    centred on the data (exact areas anywhere on Earth)."""
    if crs.utm_zone is not None or crs.type_name.startswith("Engineering"):
        return crs
    west, south, east, north = bounds
    to_lonlat = Transformer.from_crs(crs, "EPSG:4326", always_xy=True)
    lon, lat = to_lonlat.transform((west + east) / 2, (south + north) / 2)
    return ProjCRS.from_proj4(f"+proj=laea +lat_0={lat:.6f} +lon_0={lon:.6f} +datum=WGS84 +units=m +no_defs")


def georeference(polygons_px: list, columns: dict[str, list], grid: Grid, gsd_m: float,
                 params: VectorParams = VectorParams(), metric: ProjCRS | None = None) -> tuple[gpd.GeoDataFrame, np.ndarray]:
    """Polygons in grid pixel coordinates (with per-polygon ``columns``) to a GeoDataFrame in the grid's CRS, as
    ``params`` says: those less rectangular than ``min_rectangularity`` dropped (see :mod:`geoseg.outline`), simplified by
    ``simplify_m`` (metres, applied in pixels) or, with ``regularise``, given right-angled outlines,
    ``area_m2`` added, those under ``min_area_m2`` dropped, ``id`` 1..n in the given order. Also returns which
    input polygons were kept (bool array). ``metric``: the CRS areas are measured in (default: :func:`metric_crs`
    of these polygons; a chunked run passes the scene's, so every chunk measures alike)."""
    import geopandas as gpd

    crs = ProjCRS.from_wkt(grid.crs_wkt)
    min_rectangularity, simplify_m = params.min_rectangularity, params.simplify_m
    shaped = rectangularity(polygons_px) >= min_rectangularity if min_rectangularity > 0 else np.ones(len(polygons_px), bool)
    polygons_px = [p for p, k in zip(polygons_px, shaped) if k]
    columns = {name: [v for v, k in zip(values, shaped) if k] for name, values in columns.items()}
    if params.regularise and polygons_px:
        polygons_px = regularise_px(polygons_px, gsd_m, simplify_m)
    elif simplify_m > 0 and polygons_px:
        polygons_px = list(shapely.simplify(polygons_px, simplify_m / gsd_m, preserve_topology=True))
    geoms = _to_grid_crs(polygons_px, grid.transform)
    keep = np.ones(len(geoms), bool)
    if len(geoms):  # areas and the filter on arrays, then one frame (a frame edited column by column cost 13 ms a chip)
        metric = metric or metric_crs(crs, tuple(shapely.total_bounds(geoms)))
        if crs.is_exact_same(metric):  # what GeoSeries.to_crs does then: nothing
            area_m2 = shapely.area(geoms).round(2)
        else:
            area_m2 = gpd.GeoSeries(geoms, crs=crs).to_crs(metric).area.to_numpy().round(2)
        keep = area_m2 >= params.min_area_m2
        frame = gpd.GeoDataFrame({"id": np.arange(1, keep.sum() + 1, dtype=np.int64),
                                  **{name: [v for v, k in zip(values, keep) if k] for name, values in columns.items()},
                                  "geometry": geoms[keep], "area_m2": area_m2[keep]}, geometry="geometry", crs=crs)
    else:
        frame = gpd.GeoDataFrame(columns, geometry=gpd.GeoSeries(geoms, crs=crs))
        frame["area_m2"] = np.array([], dtype=float)
        frame.insert(0, "id", np.arange(1, len(frame) + 1, dtype=np.int64))
    kept = shaped.copy()
    kept[shaped] = keep
    return frame, kept


def _to_grid_crs(polygons_px: list, t: Affine) -> np.ndarray:
    """Pixel-coordinate polygons mapped by the grid's transform, all at once (:func:`geoseg.read.affine_xy`), each
    made valid (:func:`_valid`)."""
    def to_crs(coords: np.ndarray) -> np.ndarray:
        return np.stack(affine_xy(t, *coords.T)).T

    geoms = np.empty(len(polygons_px), dtype=object)
    geoms[:] = polygons_px
    geoms = shapely.transform(geoms, to_crs)
    for i in np.flatnonzero(~shapely.is_valid(geoms)):
        geoms[i] = _valid(geoms[i])
    return geoms


def _valid(polygon):
    """``polygon`` itself if valid, else its valid polygonal part (``make_valid``; the largest polygon if the repair
    splits it): no output file ever holds a self-intersecting outline."""
    if polygon.is_valid:
        return polygon
    repaired = shapely.make_valid(polygon)
    polygons = [g for g in getattr(repaired, "geoms", [repaired]) if g.geom_type == "Polygon" and not g.is_empty]
    return max(polygons, key=lambda g: g.area) if polygons else polygon


def pieces_to_frame(pieces: list[Piece], grid: Grid, gsd_m: float, params: VectorParams = VectorParams(),
                    metric: ProjCRS | None = None, order_keys: bool = False) -> gpd.GeoDataFrame:
    """Georeference pieces: GeoDataFrame in the grid's CRS with ``id``, ``confidence``, ``area_m2``; pieces under
    ``params.min_confidence`` left out.

    ``id`` is 1..n in order of each polygon's top-left pixel (row, then column), stable for the same mask.
    ``order_keys``: also the columns ``top_px`` and ``left_px`` (that pixel, before simplification), by which
    a chunked run orders the polygons of several chunks.
    """
    pieces = sorted((p for p in pieces if confident(p, params.min_confidence)), key=piece_order)
    columns = {"confidence": [p.confidence for p in pieces]}
    if order_keys:
        columns |= {"top_px": [int(piece_order(p)[0]) for p in pieces], "left_px": [int(piece_order(p)[1]) for p in pieces]}
    return georeference([p.polygon for p in pieces], columns, grid, gsd_m, params, metric)[0]


def instances_to_frame(instances: list, grid: Grid, gsd_m: float,
                       params: VectorParams = VectorParams()) -> tuple[gpd.GeoDataFrame, list]:
    """Instances (:class:`geoseg.instances.Instance` in grid pixels) georeferenced as :func:`pieces_to_frame`
    does pieces: the largest part of each mask as its polygon, ``id``, ``score`` (0-1), ``area_m2``; ids 1..n in
    order of each instance's top-left pixel. Also returns the instances kept, in id order (id = position + 1)."""
    ordered = sorted(instances, key=lambda i: (i.row_px, i.col_px, -i.score))
    polygons = [max(label_polygons(inst.mask.astype(np.uint8), Affine.translation(inst.col_px, inst.row_px))[1],
                    key=lambda p: p.area) for inst in ordered]
    frame, keep = georeference(polygons, {"score": [round(i.score, 4) for i in ordered]}, grid, gsd_m, params)
    return frame, [inst for inst, k in zip(ordered, keep) if k]


def piece_order(piece: Piece) -> tuple[float, float]:
    """(top row, left column) of a piece's bounds, grid px: the order of ids."""
    minx, miny = piece.polygon.bounds[:2]
    return miny, minx


def scene_metric_crs(grid: Grid) -> ProjCRS:
    """:func:`metric_crs` for the whole grid (its footprint), so areas do not depend on which chunk measures."""
    bounds = rasterio.transform.array_bounds(grid.height, grid.width, grid.transform)
    return metric_crs(ProjCRS.from_wkt(grid.crs_wkt), bounds)
