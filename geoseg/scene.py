"""Opening a scene, before the read stage: the checks bad input gets (one line each), its CRS and ground GSD, the
bands that feed the model, and the processing grid; gives the :class:`geoseg.read.SceneReader` workers read through,
the facts a summary reports, and a decimated overview (statistics, preview).

Units: ``gsd_m`` is the ground sample distance in metres on the ground (geodesic), computed at the scene
centre for any CRS, so EPSG:4326 degrees and EPSG:3857 "metres" (which are not ground metres away from the
equator) are both handled. Grids are in pixels; a scene whose GSD differs from the model's by more than
:data:`GSD_TOLERANCE` is resampled on read onto a grid of the model's GSD, in the scene's own CRS.
"""

from __future__ import annotations

import math
import os
import stat
from dataclasses import dataclass, replace
from typing import NamedTuple, Sequence

import numpy as np
import rasterio
from affine import Affine
from pyproj import CRS as ProjCRS
from pyproj import Geod
from rasterio.crs import CRS
from rasterio.enums import ColorInterp
from rasterio.warp import transform as transform_points

from .errors import GeosegError, SceneTooCoarseError
from .read import Grid, SceneReader, open_raster, scene_stretch

#: A scene whose GSD differs from the model's by more than this fraction is resampled on read.
GSD_TOLERANCE = 0.20
#: Upsampling a scene by more than this factor per axis is refused unless forced: buildings under ~4 model
#: pixels across cannot be resolved, and the upsampled scene grows by the square of the factor.
MAX_UPSAMPLE = 4.0

#: ``--target-gsd`` may upsample a scene by at most this factor per axis (0.001 m on a 0.3 m scene would make
#: a 256 px square into a 5.9 Gpx grid).
MAX_FORCED_UPSAMPLE = 10.0

_GEOD = Geod(ellps="WGS84")


def is_local_crs(crs: CRS) -> bool:
    """A local engineering CRS (a site grid): it has linear units but no datum, so it cannot be placed on Earth."""
    return ProjCRS.from_wkt(crs.to_wkt()).type_name.startswith("Engineering")


def ground_gsd_m(crs: CRS, transform: Affine, width: int, height: int) -> tuple[float, float]:
    """Ground size in metres of one pixel (x, y) at the centre of the grid, for any CRS.

    The centre pixel's corners are taken to lon/lat and measured on the WGS84 ellipsoid. A local engineering
    CRS, which has no lon/lat, is measured in its own linear units (converted to metres).
    """
    if is_local_crs(crs):
        metres = ProjCRS.from_wkt(crs.to_wkt()).axis_info[0].unit_conversion_factor
        return math.hypot(transform.a, transform.d) * metres, math.hypot(transform.b, transform.e) * metres
    col, row = width / 2.0, height / 2.0
    cols, rows = [col, col + 1, col], [row, row, row + 1]
    xs, ys = zip(*(transform @ (c, r) for c, r in zip(cols, rows)))
    lons, lats = transform_points(crs, "EPSG:4326", list(xs), list(ys))
    _, _, dx = _GEOD.inv(lons[0], lats[0], lons[1], lats[1])
    _, _, dy = _GEOD.inv(lons[0], lats[0], lons[2], lats[2])
    if not (math.isfinite(dx) and math.isfinite(dy)) or dx <= 0 or dy <= 0:
        raise GeosegError("cannot compute the ground sample distance: is the CRS or transform valid?")
    return dx, dy


def choose_bands(src: rasterio.DatasetReader, requested: Sequence[int] | None, n_model_bands: int) -> tuple[int, ...]:
    """1-based source bands feeding the model's ``n_model_bands`` inputs; a single band is repeated.

    Default: the bands tagged red, green, blue if the file has them; else the first ``n_model_bands``
    non-alpha bands (R,G,B[,NIR] order of NAIP and most aerial products); else the first band repeated.
    """
    if requested:
        bad = [b for b in requested if not 1 <= b <= src.count]
        if bad:
            raise GeosegError(f"--bands {','.join(map(str, requested))}: the scene has bands 1..{src.count} only")
        if len(requested) not in (1, n_model_bands):
            raise GeosegError(f"--bands takes 1 or {n_model_bands} band numbers for this model, got {len(requested)}")
        chosen = tuple(requested)
    else:
        interp = list(src.colorinterp)
        rgb = [ColorInterp.red, ColorInterp.green, ColorInterp.blue]
        usable = [i + 1 for i, ci in enumerate(interp) if ci != ColorInterp.alpha]
        if n_model_bands == 3 and all(ci in interp for ci in rgb):
            chosen = tuple(interp.index(ci) + 1 for ci in rgb)
        elif len(usable) >= n_model_bands:
            chosen = tuple(usable[:n_model_bands])
        elif usable:
            chosen = (usable[0],)
        else:
            raise GeosegError("the scene has no usable (non-alpha) band")
    return chosen * n_model_bands if len(chosen) == 1 else chosen


def check_file(path: str) -> None:
    """The cheap checks, before a cluster is started for nothing or a byte is read (hashed): the path is a
    non-empty regular file. A device or a named pipe (``/dev/zero``, a FIFO) would never end a read."""
    if not os.path.exists(path):
        raise GeosegError(f"{path}: no such file")
    if os.path.isdir(path):
        raise GeosegError(f"{path}: is a directory, not a raster file")
    if not stat.S_ISREG(os.stat(path).st_mode):
        raise GeosegError(f"{path}: not a regular file (a device, pipe or socket), not a raster file")
    if os.path.getsize(path) == 0:
        raise GeosegError(f"{path}: empty file (0 bytes)")


def _check_georeferencing(path: str, src: rasterio.DatasetReader, assume_crs: str | None) -> None:
    if src.width == 0 or src.height == 0 or src.count == 0:
        raise GeosegError(f"{path}: zero-size raster ({src.width}x{src.height}, {src.count} bands)")
    if src.crs is None and assume_crs is None:
        raise GeosegError(f"{path}: the raster has no CRS; pass --assume-crs EPSG:XXXX if you know it")
    if src.transform == Affine.identity():  # what GDAL reports when a file has no geotransform
        gcps = " (it has ground control points: warp it first, e.g. gdalwarp)" if src.gcps[0] or src.rpcs else ""
        what = "no CRS and no geotransform" if src.crs is None else "a CRS but no geotransform"
        raise GeosegError(f"{path}: the raster has {what}, so its pixels would be placed as 1-unit squares at the "
                          f"CRS origin{gcps}; georeference it first (e.g. gdal_translate -a_ullr)")


def _check_pixels(path: str, src: rasterio.DatasetReader, bands: Sequence[int]) -> None:
    """Refuse what cannot be read as image brightness (one line saying why and what to do)."""
    for band in sorted(set(bands)):
        if np.dtype(src.dtypes[band - 1]).kind == "c":
            raise GeosegError(f"{path}: band {band} is complex-valued ({src.dtypes[band - 1]}); geoseg reads "
                              "brightness, not SAR phase: convert to amplitude first")
        if src.colorinterp[band - 1] == ColorInterp.palette:
            raise GeosegError(f"{path}: band {band} is a palette (colour-table) image whose values are indices, "
                              "not brightness; expand it first, e.g. gdal_translate -expand rgb")


@dataclass(frozen=True)
class SceneFacts:
    """What a run reports of the scene it read (``summary.json``): its path, CRS, the bands read (1-based), its
    size and GSD, and those of the grid it was processed on (resampled or not)."""

    scene: str
    crs: str
    bands: list[int]
    source_size_px: list[int]
    source_gsd_m: float
    grid_size_px: list[int]
    grid_gsd_m: float
    resampled: bool


class OpenedScene(NamedTuple):
    reader: SceneReader
    facts: SceneFacts
    overview: tuple[np.ndarray, np.ndarray]  # decimated raw pixels and valid mask (statistics, preview)


def open_scene(
    path: str | os.PathLike,
    *,
    model_gsd_m: float,
    n_model_bands: int,
    bands: Sequence[int] | None = None,
    assume_crs: str | None = None,
    target_gsd_m: float | None = None,
    native_resolution: bool = False,
) -> OpenedScene:
    """Validate a scene and plan how to read it: the reader, facts for the summary, and a decimated overview
    (read once, used for the statistics and the preview).

    The processing grid is the scene's own unless its ground GSD differs from ``target_gsd_m`` (default: the
    model's) by more than :data:`GSD_TOLERANCE`; then the scene is resampled on read, keeping its CRS, onto a
    grid of that GSD. A scene more than :data:`MAX_UPSAMPLE` times coarser than the model is refused unless
    ``target_gsd_m`` or ``native_resolution`` forces a choice.
    """
    path = os.fspath(path)
    check_file(path)
    with open_raster(path) as src:
        source_crs = _source_crs(path, src, assume_crs)
        chosen = choose_bands(src, bands, n_model_bands)
        _check_pixels(path, src, chosen)
        grid, resampled, upsample, scene_gsd_m = _plan_grid(path, src, source_crs, model_gsd_m, target_gsd_m,
                                                            native_resolution)
    reader = SceneReader(
        path=path,
        bands=chosen,
        grid=grid,
        source_crs_wkt=source_crs.to_wkt(),
        resampled=resampled,
        resampling="average" if resampled and upsample < 1 else "bilinear",
    )
    overview = reader.read_overview()
    low, high = scene_stretch(*overview)
    facts = SceneFacts(scene=path, crs=source_crs.to_string(), bands=list(chosen), source_size_px=[src.width, src.height],
                       source_gsd_m=round(scene_gsd_m, 4), grid_size_px=[grid.width, grid.height],
                       grid_gsd_m=round(scene_gsd_m * src.width / grid.width, 4), resampled=resampled)
    return OpenedScene(replace(reader, band_low=low, band_high=high), facts, overview)


def _source_crs(path: str, src, assume_crs: str | None) -> CRS:
    """The scene's CRS, or ``--assume-crs`` for a raster that has none (refused if it cannot be placed)."""
    _check_georeferencing(path, src, assume_crs)
    try:
        return src.crs or CRS.from_user_input(assume_crs)
    except Exception:
        raise GeosegError(f"--assume-crs {assume_crs!r}: not a CRS that PROJ knows") from None


def _plan_grid(path: str, src, source_crs: CRS, model_gsd_m: float, target_gsd_m: float | None,
               native_resolution: bool) -> tuple[Grid, bool, float, float]:
    """The processing grid (module docstring of :func:`open_scene`): (grid, resampled, upsample factor, scene GSD m)."""
    gsd_x, gsd_y = ground_gsd_m(source_crs, src.transform, src.width, src.height)
    scene_gsd_m = (gsd_x + gsd_y) / 2
    grid = Grid(source_crs.to_wkt(), src.transform, src.width, src.height)
    wanted_gsd_m = target_gsd_m or model_gsd_m
    upsample = scene_gsd_m / wanted_gsd_m
    if target_gsd_m is not None and upsample > MAX_FORCED_UPSAMPLE:
        raise GeosegError(
            f"--target-gsd {target_gsd_m:g}: would upsample the {scene_gsd_m:.2f} m scene {upsample:.0f}x per axis "
            f"into a {src.width * src.height * upsample**2 / 1e6:,.0f} Mpx grid; at most "
            f"{MAX_FORCED_UPSAMPLE:g}x is allowed")
    if not native_resolution and target_gsd_m is None and upsample > MAX_UPSAMPLE:
        raise SceneTooCoarseError(
            f"{path}: scene GSD {scene_gsd_m:.2f} m is {upsample:.0f}x coarser than the model's "
            f"{model_gsd_m:.2f} m; buildings cannot be resolved and upsampling would make a "
            f"{src.width * src.height * upsample**2 / 1e6:,.0f} Mpx scene. Use --native-resolution or "
            f"--target-gsd M to force a run"
        )
    resampled = not native_resolution and abs(upsample - 1) > GSD_TOLERANCE
    if resampled:
        fx, fy = wanted_gsd_m / gsd_x, wanted_gsd_m / gsd_y  # >1: fewer, larger pixels
        width, height = max(1, math.ceil(src.width / fx)), max(1, math.ceil(src.height / fy))
        grid = Grid(grid.crs_wkt, src.transform @ Affine.scale(src.width / width, src.height / height), width, height)
    return grid, resampled, upsample, scene_gsd_m


def scene_grid(path: str | os.PathLike, model_gsd_m: float, target_gsd_m: float | None = None,
               native_resolution: bool = False, assume_crs: str | None = None) -> Grid:
    """The processing grid a run of the scene would use, from its header alone (no pixels are read)."""
    path = os.fspath(path)
    check_file(path)
    with open_raster(path) as src:
        source_crs = _source_crs(path, src, assume_crs)
        return _plan_grid(path, src, source_crs, model_gsd_m, target_gsd_m, native_resolution)[0]
