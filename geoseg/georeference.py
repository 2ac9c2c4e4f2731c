"""Georeference stage, after vectorise: buildings in grid pixel coordinates (:class:`geoseg.vectorise.Piece`, or
instances of an instance model) become outlines in the scene's CRS, as a GeoDataFrame with ``id``, ``confidence``
(or ``score``) and ``area_m2``, shaped and filtered as :class:`geoseg.vectorise.VectorParams` says.

Units: ``min_area_m2`` and ``area_m2`` are square metres computed in a metric CRS (the scene's own if it
is UTM or a local site grid, else a Lambert azimuthal equal-area projection centred on the scene, which holds at
the poles and across the antimeridian where no UTM zone does), also for geographic input; ``simplify_m`` is a tolerance
in metres, applied in pixel space as ``simplify_m / gsd_m``. ``confidence`` is the mean building
probability (0-1) over the polygon's pixels before simplification. Ids are 1..n in order of each polygon's top-left
pixel (row, then column).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import rasterio.transform
import shapely
from affine import Affine
from pyproj import CRS as ProjCRS
from pyproj import Transformer

from .outline import rectangularity, regularise_px
from .read import Grid, affine_xy
from .trace import label_polygons
from .vectorise import Piece, VectorParams, confident

if TYPE_CHECKING:  # geopandas is imported where frames are made, on workers: the driver never needs it
    import geopandas as gpd


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
    keyed = sorted((piece_order(p), i, p) for i, p in enumerate(pieces) if confident(p, params.min_confidence))
    pieces = [p for _, _, p in keyed]
    columns = {"confidence": [p.confidence for p in pieces]}
    if order_keys:  # each piece's bounds read once, for its order and these columns
        columns |= {"top_px": [int(top) for (top, _), _, _ in keyed], "left_px": [int(left) for (_, left), _, _ in keyed]}
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
