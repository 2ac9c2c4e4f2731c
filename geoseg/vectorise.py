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

Pieces are in integer **pixel** coordinates of the whole grid; :mod:`geoseg.georeference` makes them outlines in
the scene's CRS. ``confidence`` (:attr:`Piece.confidence`) is the mean building probability (0-1) over a piece's
pixels.
"""

from __future__ import annotations

from contextlib import ExitStack
from dataclasses import dataclass

import numpy as np
import rasterio
import shapely
from affine import Affine
from rasterio.windows import Window

from .read import Grid
from .stitch import probability_cut_u8
from .trace import trace_components

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
