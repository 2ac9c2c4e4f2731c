"""Footprint shapes: right-angled outlines and a shape filter, on polygons in grid pixel coordinates.

* :func:`regularise_px`: edges turned parallel or perpendicular to each building's main direction (45 degrees
  allowed), with the MIT-licensed ``buildingregulariser`` package, parameters in metres turned into pixels.
* :func:`rectangularity`: area / area of the minimum rotated rectangle, 0-1. A rectangle is 1, an L-shaped house
  about 0.75-0.9, a disc pi/4 = 0.785, a ragged tree crown or a blob of shadow and yard less; ``geoseg run
  --min-rectangularity R`` drops polygons under R (measured before regularising, which would square them off).
"""

from __future__ import annotations

import numpy as np
import shapely

#: edges closer to parallel than this many metres are merged
PARALLEL_THRESHOLD_M = 1.0
#: least simplification before regularising, pixels: the staircase of a raster outline along a slanted wall is
#: 1 px high, and a tolerance under that leaves its steps as right-angled notches
STAIRCASE_PX = 1.5


def rectangularity(polygons: list) -> np.ndarray:
    """Area over minimum-rotated-rectangle area of each polygon (1 for an empty rectangle's degenerate case)."""
    if not polygons:
        return np.zeros(0)
    area = shapely.area(np.asarray(polygons, dtype=object))
    box = shapely.area(shapely.minimum_rotated_rectangle(np.asarray(polygons, dtype=object)))
    return np.where(box > 0, area / np.maximum(box, 1e-12), 1.0)


def regularise_px(polygons_px: list, gsd_m: float, simplify_m: float) -> list:
    """Right-angled outlines of pixel-space polygons, one per input, in order.

    The package works part by part and may return several parts for one building (it splits an outline at a thin
    neck) or none (a sliver it cleans away); each output is mapped back to its input by a row number carried
    through. A building whose parts do not make one valid polygon again, or that the package dropped, keeps its
    own outline simplified as the staircase rule says (never the raw pixel staircase), alone: the other
    buildings of the batch are regularised all the same."""
    from buildingregulariser import regularize_geodataframe

    if not polygons_px:
        return []
    tolerance_px = max(simplify_m / gsd_m, STAIRCASE_PX)
    import geopandas as gpd  # on workers only (the driver imports this module, never geopandas)

    frame = gpd.GeoDataFrame({"source_row": np.arange(len(polygons_px))}, geometry=gpd.GeoSeries(polygons_px))
    out = regularize_geodataframe(frame, parallel_threshold=PARALLEL_THRESHOLD_M / gsd_m,
                                  simplify_tolerance=tolerance_px, allow_circles=False, num_cores=1)
    parts: dict[int, list] = {}
    for row, shape in zip(out["source_row"].to_numpy(int).tolist(), out.geometry):
        if shape is not None and not shape.is_empty:
            parts.setdefault(row, []).append(shape)
    shaped = []
    for row, polygon in enumerate(polygons_px):
        found = parts.get(row, [])
        one = found[0] if len(found) == 1 else (shapely.union_all(found) if found else None)
        if one is None or one.geom_type != "Polygon" or not one.is_valid:
            one = shapely.simplify(polygon, tolerance_px, preserve_topology=True)
        shaped.append(one)
    return shaped
