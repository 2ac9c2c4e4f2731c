"""Labelled training data brought onto one training grid, read with the same code as inference.

Every source becomes :class:`LabelledScene` objects held in memory (the real data sets here are a few tens of
megapixels at the training GSD): ``pixels`` float32 (3, h, w) in [0, 1] from the scene stretch that
``geoseg run`` applies, and ``labels`` uint8 (h, w) class indices with :data:`IGNORE` for nodata and unlabelled
pixels. Georeferenced sources are resampled to ``gsd_m`` with :func:`geoseg.read.open_scene`, so training sees
exactly what inference will see.

Source kinds:

* ``geotiff``: an image with vector labels (any CRS, rasterised on the image grid) or a raster mask;
  split spatially: the last ``val_fraction`` of the rows is validation, after a gap of ``gap_px`` unused rows.
* ``chips``: a folder of GeoTIFF chips with a folder of 0/1 masks (``NAME.mask.tif`` or ``NAME.tif``); every
  chip goes to the source's ``split``, except chips that share ground with ``exclude_overlap_with``.
* ``dubai``: the Dubai land-cover tiles (JPEG + colour-coded PNG, not georeferenced) at an assumed ``gsd_m``;
  the tiles listed in ``val_tiles`` are validation.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import geopandas as gpd
import numpy as np
import rasterio
import shapely
from PIL import Image
from rasterio.enums import Resampling
from rasterio.features import rasterize
from rasterio.vrt import WarpedVRT
from rasterio.warp import transform_bounds
from rasterio.windows import Window
from scipy import ndimage

from .errors import GeosegError
from .read import Grid, open_scene, scene_stretch, stretch

IGNORE = 255
#: Dubai mask colours -> class index of the land-cover model; other colours (unlabelled) are ignored.
DUBAI_CLASSES = ["building", "land", "road", "vegetation", "water"]
DUBAI_COLOURS = {(0x3C, 0x10, 0x98): 0, (0x84, 0x29, 0xF6): 1, (0x6E, 0xC1, 0xE4): 2, (0xFE, 0xDD, 0x3A): 3,
                 (0xE2, 0xA9, 0x29): 4}


@dataclass
class LabelledScene:
    name: str
    pixels: np.ndarray  # float32 (3, h, w) in [0, 1]
    labels: np.ndarray  # uint8 (h, w), IGNORE where unknown
    split: str  # "train" or "val"

    @property
    def labelled_fraction(self) -> float:
        return float((self.labels != IGNORE).mean())


def read_on_grid(path: str | Path, grid: Grid) -> np.ndarray:
    """Band 1 of a raster warped (nearest) onto ``grid``; pixels outside it are IGNORE."""
    with rasterio.open(path) as src, WarpedVRT(src, crs=grid.crs, transform=grid.transform, width=grid.width,
                                               height=grid.height, resampling=Resampling.nearest,
                                               nodata=IGNORE) as vrt:
        return vrt.read(1)


@functools.lru_cache(maxsize=8)
def read_label_polygons(path: str | Path) -> gpd.GeoDataFrame:
    """A label file's polygons, read once per process (chips of one folder share one file)."""
    frame = gpd.read_file(path)
    if frame.crs is None:
        raise GeosegError(f"{path}: the labels have no CRS")
    return frame


def instances_on_grid(path: str | Path, grid: Grid) -> np.ndarray:
    """Polygons (any CRS) rasterised on ``grid`` as instance ids: int32, 1..n inside building i, 0 elsewhere
    (where polygons overlap, the later one wins)."""
    frame = read_label_polygons(path)
    shapes = [g for g in frame.to_crs(grid.crs).geometry if g is not None and not g.is_empty]
    if not shapes:
        return np.zeros((grid.height, grid.width), np.int32)
    return rasterize(((g, i) for i, g in enumerate(shapes, start=1)), out_shape=(grid.height, grid.width),
                     transform=grid.transform, fill=0, dtype="int32")


def separators(instances: np.ndarray) -> np.ndarray:
    """Pixels whose 3x3 neighbourhood holds two different buildings: the line where touching buildings meet
    (both sides of a shared wall) and gaps of at most one pixel between buildings. Bool (h, w)."""
    none = np.iinfo(np.int32).max
    highest = ndimage.maximum_filter(instances, size=3, mode="nearest")
    lowest = ndimage.minimum_filter(np.where(instances > 0, instances, none), size=3, mode="nearest")
    return (lowest != none) & (highest != lowest)


def building_labels(instances: np.ndarray, separator_class: int | None = None) -> np.ndarray:
    """Class labels from instance ids: 1 building, 0 background, and ``separator_class`` on the separators
    (when given) so that a model learns to keep touching buildings apart."""
    labels = (instances > 0).astype(np.uint8)
    if separator_class is not None:
        labels[separators(instances)] = separator_class
    return labels


def vector_labels_on_grid(path: str | Path, grid: Grid, separator_class: int | None = None) -> np.ndarray:
    """Polygons (any CRS) rasterised on ``grid``: 1 inside a building, 0 elsewhere (see :func:`building_labels`)."""
    return building_labels(instances_on_grid(path, grid), separator_class)


def load_georeferenced(image: str | Path, gsd_m: float, labels: str | Path | None = None,
                       mask: str | Path | None = None, separator_class: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Image and labels on the image's grid at ``gsd_m`` (resampled as inference would). Vector labels win
    over a mask: only they tell touching buildings apart (``separator_class``)."""
    reader = open_scene(image, model_gsd_m=gsd_m, n_model_bands=3).reader
    grid = reader.grid
    pixels, valid = reader.read_tile(Window(0, 0, grid.width, grid.height))
    if labels is not None:
        target = vector_labels_on_grid(labels, grid, separator_class)
    elif mask is not None:
        target = read_on_grid(mask, grid)
        target[(target != IGNORE) & (target > 0)] = 1
    else:
        raise GeosegError(f"{image}: give vector labels or a raster mask")
    target[~valid] = IGNORE
    return pixels, target


def split_rows(name: str, pixels: np.ndarray, labels: np.ndarray, val_fraction: float, gap_px: int) -> list[LabelledScene]:
    """Spatial split: the last ``val_fraction`` of the rows is validation; ``gap_px`` rows between are unused."""
    height = labels.shape[0]
    val_start = int(round(height * (1 - val_fraction)))
    scenes = [LabelledScene(f"{name}:train", pixels[:, : max(0, val_start - gap_px)], labels[: max(0, val_start - gap_px)], "train")]
    if val_fraction > 0:
        scenes.append(LabelledScene(f"{name}:val", pixels[:, val_start:], labels[val_start:], "val"))
    return [s for s in scenes if s.labels.size]


def geotiff_source(image: str, gsd_m: float, labels: str | None = None, mask: str | None = None,
                   val_fraction: float = 0.2, gap_px: int = 64, name: str | None = None,
                   separator_class: int | None = None) -> list[LabelledScene]:
    pixels, target = load_georeferenced(image, gsd_m, labels=labels, mask=mask, separator_class=separator_class)
    return split_rows(name or Path(image).parent.name, pixels, target, val_fraction, gap_px)


def footprint_4326(path: str | Path) -> shapely.Polygon:
    with rasterio.open(path) as src:
        return shapely.box(*transform_bounds(src.crs, "EPSG:4326", *src.bounds))


def chips_sharing_no_ground(images: str | Path, other: str | Path | None) -> list[Path]:
    """GeoTIFF chips of ``images`` whose footprint shares no ground with any chip in ``other`` (all if None)."""
    chips = sorted(Path(images).glob("*.tif"))
    if not other:
        return chips
    taken = shapely.union_all([footprint_4326(p) for p in Path(other).glob("*.tif")])
    return [c for c in chips if footprint_4326(c).intersection(taken).area == 0]


def chips_source(images: str, masks: str, gsd_m: float, split: str = "train", name: str | None = None,
                 exclude_overlap_with: str | None = None, labels: str | None = None,
                 separator_class: int | None = None) -> list[LabelledScene]:
    """Chip/mask pairs. ``exclude_overlap_with``: a folder of chips; chips sharing ground with any of them are
    dropped (Kampala's val-chips partly cover the same ground as its training chips at other zoom levels).
    ``labels``: polygons covering the chips, used instead of the masks (they separate touching buildings)."""
    scenes = []
    for chip in chips_sharing_no_ground(images, exclude_overlap_with):
        candidates = [Path(masks) / f"{chip.stem}.mask.tif", Path(masks) / chip.name]
        mask = next((m for m in candidates if m.exists()), None)
        if mask is None:
            raise GeosegError(f"{chip}: no mask in {masks}")
        pixels, target = load_georeferenced(chip, gsd_m, labels=labels, mask=mask, separator_class=separator_class)
        scenes.append(LabelledScene(f"{name or Path(images).name}/{chip.stem}", pixels, target, split))
    if not scenes:
        raise GeosegError(f"{images}: no GeoTIFF chips found")
    return scenes


def dubai_labels(mask_rgb: np.ndarray) -> np.ndarray:
    labels = np.full(mask_rgb.shape[:2], IGNORE, np.uint8)
    for colour, index in DUBAI_COLOURS.items():
        labels[(mask_rgb == colour).all(axis=-1)] = index
    return labels


def dubai_source(root: str, gsd_m: float, assumed_gsd_m: float, val_tiles: list[str]) -> list[LabelledScene]:
    """Dubai tiles at an assumed native GSD, resized to ``gsd_m``, scene-stretched like inference."""
    scenes = []
    for image_path in sorted(Path(root).glob("tile_*/images/*.jpg")):
        tile = image_path.parent.parent.name
        mask_path = image_path.parent.parent / "masks" / f"{image_path.stem}.png"
        image = Image.open(image_path).convert("RGB")
        mask = Image.open(mask_path).convert("RGB")
        scale = assumed_gsd_m / gsd_m
        size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
        if size != image.size:
            image, mask = image.resize(size, Image.BILINEAR), mask.resize(size, Image.NEAREST)
        raw = np.moveaxis(np.asarray(image, np.float32), -1, 0)
        valid = np.ones(raw.shape[1:], bool)
        pixels = stretch(raw, valid, *scene_stretch(raw[:, ::4, ::4], valid[::4, ::4]))
        split = "val" if tile in val_tiles else "train"
        scenes.append(LabelledScene(f"dubai/{tile}/{image_path.stem}", pixels, dubai_labels(np.asarray(mask)), split))
    if not scenes:
        raise GeosegError(f"{root}: no Dubai tiles (tile_*/images/*.jpg) found")
    return scenes
