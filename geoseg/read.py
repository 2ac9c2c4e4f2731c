"""Read stage: open a scene, decide its processing grid, and read normalised tiles through windows.

A :class:`SceneReader` is a small picklable description of *how* to read a scene (path, bands, grid,
normalisation); Dask workers open the file themselves and read only the windows they need, so the scene is
never held whole in memory.

Units: ``gsd_m`` is the ground sample distance in metres on the ground (geodesic), computed at the scene
centre for any CRS, so EPSG:4326 degrees and EPSG:3857 "metres" (which are not ground metres away from the
equator) are both handled. Windows and tiles are in pixels of the processing grid.
"""

from __future__ import annotations

import math
import os
import stat
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Iterator, NamedTuple, Sequence

import numpy as np
import rasterio
from affine import Affine
from pyproj import CRS as ProjCRS
from pyproj import Geod
from rasterio.crs import CRS
from rasterio.enums import ColorInterp, Resampling
from rasterio.errors import RasterioError, RasterioIOError
from rasterio.vrt import WarpedVRT
from rasterio.warp import transform as transform_points
from rasterio.windows import Window

from .errors import GeosegError, SceneTooCoarseError

#: A scene whose GSD differs from the model's by more than this fraction is resampled on read.
GSD_TOLERANCE = 0.20
#: Upsampling a scene by more than this factor per axis is refused unless forced: buildings under ~4 model
#: pixels across cannot be resolved, and the upsampled scene grows by the square of the factor.
MAX_UPSAMPLE = 4.0
#: Robust per-band stretch taken from the scene's own statistics (percentiles of valid pixels).
STRETCH_PERCENTILES = (2.0, 98.0)
#: Longest side, in pixels, of the decimated read used for statistics and previews.
OVERVIEW_MAX_PX = 1024
#: rows read at once for the overview of a file without overviews (at least one block row)
STRIP_ROWS = 256
#: ``--target-gsd`` may upsample a scene by at most this factor per axis (0.001 m on a 0.3 m scene would make
#: a 256 px square into a 5.9 Gpx grid).
MAX_FORCED_UPSAMPLE = 10.0
#: GDAL raster drivers geoseg opens inputs with. Not VRT (a VRT can read any local file as pixels, e.g.
#: /etc/passwd into preview.png), nor any other driver that follows paths written inside the file.
INPUT_DRIVERS = ("GTiff", "COG", "JP2OpenJPEG", "PNG", "JPEG", "HFA", "NITF", "ENVI")

_GEOD = Geod(ellps="WGS84")


@dataclass(frozen=True)
class Grid:
    """The pixel grid outputs are written on: CRS (WKT), affine transform, and size in pixels."""

    crs_wkt: str
    transform: Affine
    width: int
    height: int

    @property
    def crs(self) -> CRS:
        return CRS.from_wkt(self.crs_wkt)

    @property
    def megapixels(self) -> float:
        return self.width * self.height / 1e6


def affine_xy(t: Affine, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Coordinates mapped by ``t``: the arithmetic of ``shapely.affinity.affine_transform``, term for term, so the
    results are the same to the last bit as mapping each geometry with it."""
    return t.a * x + t.b * y + t.c, t.d * x + t.e * y + t.f


def open_raster(path: str) -> rasterio.DatasetReader:
    """Open an input raster; one-line GeosegError unless GDAL read it with one of :data:`INPUT_DRIVERS`, from
    that one file alone.

    The driver is checked as soon as the file is open, before any pixel is read: a VRT (whatever its file name)
    names other files to read, and only reading pixels makes GDAL open them. Sidecar files are never read:
    GDAL would otherwise take overviews from ``NAME.ovr``, a mask from ``NAME.msk`` and metadata from
    ``NAME.aux.xml`` beside the scene, opened with any driver (an ``.ovr`` that is a VRT reads any local file into
    the stretch and the preview). The file is opened as if its folder held nothing else
    (``GDAL_DISABLE_READDIR_ON_OPEN=EMPTY_DIR``), and a dataset that still names a second file is refused."""
    try:
        with rasterio.Env(GDAL_DISABLE_READDIR_ON_OPEN="EMPTY_DIR"):
            src = rasterio.open(path)
            files = list(src.files)  # GDAL looks for sidecars here at the latest: inside the setting
    except RasterioIOError as err:
        if not _header_beside(path):
            raise GeosegError(f"{path}: not a readable raster ({str(err).splitlines()[0]})") from None
        try:  # a format whose header is a file of its own (ENVI): opened with its folder, checked below
            src = rasterio.open(path)
            files = list(src.files)
        except RasterioIOError as err:
            raise GeosegError(f"{path}: not a readable raster ({str(err).splitlines()[0]})") from None
    if src.driver not in INPUT_DRIVERS:
        driver = src.driver
        src.close()
        raise GeosegError(f"{path}: {driver} files are not accepted (they can make GDAL read other files); "
                          f"accepted: {', '.join(INPUT_DRIVERS)}")
    header = HEADER_SIDECARS.get(src.driver, ())
    if header and len(files) == 1 and _header_beside(path, header):  # a PNG or JPEG georeferenced by a world file
        src.close()
        src = rasterio.open(path)
        files = list(src.files)
    others = [f for f in files if os.path.abspath(f) != os.path.abspath(src.name) and not f.lower().endswith(header)]
    if others:
        src.close()
        raise GeosegError(f"{path}: GDAL would read it with {os.path.basename(others[0])} beside it; geoseg reads "
                          "a scene's own file only (merge overviews and masks into the GeoTIFF)")
    return src


#: the sidecars a format cannot be read or placed without (ENVI's header, the world file of a PNG or JPEG):
#: allowed, and nothing else beside them
_WORLD_FILES = (".wld", ".pgw", ".pngw", ".jgw", ".jpgw", ".jpegw")
HEADER_SIDECARS = {"ENVI": (".hdr",), "PNG": _WORLD_FILES, "JPEG": _WORLD_FILES}


def _header_beside(path: str, suffixes: tuple[str, ...] = (".hdr",)) -> bool:
    stem = os.path.splitext(path)[0]
    return any(os.path.isfile(base + suffix) for base in (stem, path) for suffix in suffixes)


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


@dataclass(frozen=True)
class SceneReader:
    """How to read normalised tiles of one scene on its processing grid (picklable, opened per read).

    ``read_tile`` returns ``(pixels, valid)``: pixels float32 (bands, h, w) stretched per band to [0, 1]
    from the scene's percentiles (invalid pixels set to 0), and valid bool (h, w): False where the input is
    nodata, masked, non-finite, or outside the source footprint after resampling.
    """

    path: str
    bands: tuple[int, ...]
    grid: Grid
    source_crs_wkt: str
    resampled: bool
    resampling: str = "bilinear"
    band_low: tuple[float, ...] = ()
    band_high: tuple[float, ...] = ()

    @contextmanager
    def open(self) -> Iterator[rasterio.io.DatasetReaderBase]:
        with open_raster(self.path) as src:
            needs_crs = src.crs is None
            if not (self.resampled or needs_crs):
                yield src
                return
            with WarpedVRT(
                src,
                src_crs=CRS.from_wkt(self.source_crs_wkt),
                crs=self.grid.crs,
                transform=self.grid.transform,
                width=self.grid.width,
                height=self.grid.height,
                resampling=Resampling[self.resampling],
                # without an alpha band of its own, a VRT drops the source's internal mask (every pixel valid)
                add_alpha=ColorInterp.alpha not in src.colorinterp,
            ) as vrt:
                yield vrt

    def _read(self, ds, window: Window | None, out_shape: tuple[int, int] | None) -> tuple[np.ndarray, np.ndarray]:
        unique = sorted(set(self.bands))
        shape = None if out_shape is None else (len(unique), *out_shape)
        raw = ds.read(unique, window=window, out_shape=shape, out_dtype="float32", resampling=Resampling.nearest)
        mask_shape = None if out_shape is None else out_shape
        valid = ds.dataset_mask(window=window, out_shape=mask_shape, resampling=Resampling.nearest) > 0
        raw = raw[[unique.index(b) for b in self.bands]]
        valid &= np.isfinite(raw).all(axis=0)
        return raw, valid

    def normalise(self, raw: np.ndarray, valid: np.ndarray) -> np.ndarray:
        return stretch(raw, valid, self.band_low, self.band_high)

    def read_tile(self, window: Window) -> tuple[np.ndarray, np.ndarray]:
        return self.read_tiles([window])[0]

    def read_tiles(self, windows: list[Window]) -> list[tuple[np.ndarray, np.ndarray]]:
        """:meth:`read_tile` of each window, the file opened once for all of them: GDAL's block cache then
        decompresses a block shared by overlapping tiles once (a generated 8192 px scene: 7.1 -> 4.8 ms a tile)."""
        reads = []
        with self._reading("file"), self.open() as ds:
            for window in windows:
                with self._reading(f"window at row {window.row_off}, column {window.col_off}"):
                    raw, valid = self._read(ds, window, None)
                reads.append((self.normalise(raw, valid), valid))
        return reads

    def read_overview(self, max_px: int = OVERVIEW_MAX_PX) -> tuple[np.ndarray, np.ndarray]:
        """The whole grid decimated so its longest side is at most ``max_px`` (raw values, valid mask): GDAL's
        nearest-neighbour read, from the file's own overviews where it has them. A file without overviews is
        read in strips of rows instead, each with the file opened afresh, so GDAL's block cache holds one strip,
        not the scene (a 20000 px scene took 300 MB and 7.8 s in one read, 3.1 s this way); the pixels picked
        are those GDAL's read picks (row/column ``floor((i + 0.5) * scale)``)."""
        scale = max(self.grid.width, self.grid.height) / max_px
        shape = (max(1, round(self.grid.height / max(scale, 1))), max(1, round(self.grid.width / max(scale, 1))))
        with self._reading("overview"):
            with self.open() as ds:
                if self.resampled or ds.overviews(1) or scale <= 1:
                    return self._read(ds, None, shape)
                strip_rows = max(ds.block_shapes[0][0], STRIP_ROWS)
            return self._read_strips(shape, strip_rows)

    def _read_strips(self, shape: tuple[int, int], strip_rows: int) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`read_overview` of a file without overviews: the picked rows one by one (GDAL decompresses each
        block once, into its cache, which closing the file after each strip of ``strip_rows`` empties), in the
        file's own data type, the picked pixels converted. Memory: one strip of blocks, whatever the height."""
        rows = np.floor((np.arange(shape[0]) + 0.5) * self.grid.height / shape[0]).astype(int)
        cols = np.floor((np.arange(shape[1]) + 0.5) * self.grid.width / shape[1]).astype(int)
        unique = sorted(set(self.bands))
        order = [unique.index(b) for b in self.bands]
        raw = np.empty((len(self.bands), *shape), np.float32)
        valid = np.empty(shape, bool)
        strip = rows // strip_rows
        for index in np.unique(strip):
            with self.open() as ds:  # closed after each strip: GDAL drops its cached blocks
                for i in np.nonzero(strip == index)[0]:
                    window = Window(0, int(rows[i]), self.grid.width, 1)
                    raw[:, i] = ds.read(unique, window=window)[order, 0][:, cols]
                    valid[i] = ds.dataset_mask(window=window)[0, cols] > 0
        valid &= np.isfinite(raw).all(axis=0)
        return raw, valid

    @contextmanager
    def _reading(self, what: str) -> Iterator[None]:
        """A file that opens but cannot be read (truncated, corrupt blocks) is bad input, not a crash: one line,
        and a batch job records it as failed instead of retrying it."""
        try:
            yield
        except RasterioError as err:
            raise GeosegError(f"{self.path}: cannot read the {what} (truncated or corrupt file?): "
                              f"{str(err).splitlines()[0][:200]}") from None


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


def stretch(raw: np.ndarray, valid: np.ndarray, band_low, band_high) -> np.ndarray:
    """(bands, h, w) raw values -> float32 [0, 1] per band between ``band_low`` and ``band_high``; invalid -> 0."""
    low = np.asarray(band_low, np.float32)[:, None, None]
    high = np.asarray(band_high, np.float32)[:, None, None]
    pixels = np.clip((raw - low) / (high - low), 0.0, 1.0).astype(np.float32, copy=False)
    pixels[:, ~valid] = 0.0
    return pixels


def scene_stretch(raw: np.ndarray, valid: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-band low/high percentiles of valid pixels of (bands, h, w) ``raw``, e.g. a decimated overview."""
    lows, highs = [], []
    for band in raw:
        values = band[valid]
        if values.size == 0:  # all nodata: every tile will be skipped anyway
            lo, hi = 0.0, 1.0
        else:
            lo, hi = (float(v) for v in np.percentile(values, STRETCH_PERCENTILES))
        lows.append(lo)
        highs.append(hi if hi > lo else lo + 1.0)
    return tuple(lows), tuple(highs)
