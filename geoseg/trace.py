"""Trace stage, inside vectorise: the components of a label raster as polygons with exact pixel edges.

All coordinates come out through an affine ``transform`` (``offset``) of **pixel** coordinates: pixel (row, col)
covers x in [col, col + 1), y in [row, row + 1) before it. Components are 4-connected (a corner contact is two
polygons). GDAL's polygonize does the tracing; it scans every pixel it is given (58 ms for an empty 2048 px
window), which is why :func:`trace_components` traces a few components in their own boxes instead.
"""

from __future__ import annotations

import numpy as np
import shapely
from affine import Affine
from rasterio.features import shapes


def label_polygons(labels: np.ndarray, transform: Affine, only: int | None = None) -> dict[int, list[shapely.Polygon]]:
    """Polygons of each positive label of an integer raster (4-connected, exact pixel edges), mapped by
    ``transform``: the one place geoseg turns pixels into polygons. A label in several parts has several.
    ``only``: that label's polygons alone (the other pixels count as outside)."""
    polygons: dict[int, list] = {}
    mask = labels > 0 if only is None else labels == only
    for geom, value in shapes(labels.astype(np.int32, copy=False), mask=mask, connectivity=4, transform=transform):
        # always a Polygon: shell, then holes; from arrays, which shapely takes whole (twice as fast as the lists)
        rings = [np.array(ring) for ring in geom["coordinates"]]
        polygons.setdefault(int(value), []).append(shapely.Polygon(rings[0], rings[1:]))
    return polygons


#: what one call of GDAL's polygonize costs besides its scan, in pixels scanned (0.5 ms for a 30 px box against
#: 58 ms for an empty 2048 px window, `benchmarks/bench_fast_paths.py`): buildings are traced one by one in their own boxes when the boxes and calls add up
#: to less than the window
TRACE_CALL_PX = 32_000
#: more components than this in a window: traced in one scan without weighing the alternative
TRACE_ONE_BY_ONE_MAX = 128


def trace_components(labels: np.ndarray, count: int, offset: Affine) -> dict[int, list[shapely.Polygon]]:
    """:func:`label_polygons` of components 1..``count``, keyed in label order (the raster scan order of each
    component's first pixel). A few components in a large window are traced one by one in their own boxes
    (the polygons are the same: a component's outline does not depend on the pixels around it), saving the scan
    of empty ground."""
    one_by_one = None
    if count <= TRACE_ONE_BY_ONE_MAX:
        from scipy import ndimage

        boxes = ndimage.find_objects(labels, max_label=count)
        scanned = sum((b[0].stop - b[0].start) * (b[1].stop - b[1].start) + TRACE_CALL_PX for b in boxes if b)
        one_by_one = boxes if scanned < labels.size else None
    if one_by_one is None:
        return dict(sorted(label_polygons(labels, offset).items()))
    polygons = {}
    for label, box in enumerate(one_by_one, start=1):
        if box is not None:
            at = offset @ Affine.translation(box[1].start, box[0].start)
            polygons |= label_polygons(labels[box], at, only=label)
    return polygons
