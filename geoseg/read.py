"""Read stage: read normalised tiles of a scene through windows of its processing grid.

A :class:`SceneReader` is a small picklable description of *how* to read a scene (path, bands, grid,
normalisation), made by :func:`geoseg.scene.open_scene`; Dask workers open the file themselves and read only the
windows they need, so the scene is never held whole in memory. Windows and tiles are in pixels of the processing
grid (:class:`Grid`).
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import rasterio
from affine import Affine
from rasterio.crs import CRS
from rasterio.enums import ColorInterp, Resampling
from rasterio.errors import RasterioError, RasterioIOError
from rasterio.vrt import WarpedVRT
from rasterio.windows import Window

from .errors import GeosegError

#: Robust per-band stretch taken from the scene's own statistics (percentiles of valid pixels).
STRETCH_PERCENTILES = (2.0, 98.0)
#: Longest side, in pixels, of the decimated read used for statistics and previews.
OVERVIEW_MAX_PX = 1024
#: rows read at once for the overview of a file without overviews (at least one block row)
STRIP_ROWS = 256
#: GDAL raster drivers geoseg opens inputs with. Not VRT (a VRT can read any local file as pixels, e.g.
#: /etc/passwd into preview.png), nor any other driver that follows paths written inside the file.
INPUT_DRIVERS = ("GTiff", "COG", "JP2OpenJPEG", "PNG", "JPEG", "HFA", "NITF", "ENVI")



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
