"""Labelled training data brought onto one training grid, read with the same code as inference.

Every source becomes :class:`LabelledScene` objects held in memory (the real data sets here are a few tens of
megapixels at the training GSD): ``pixels`` float32 (3, h, w) in [0, 1] from the scene stretch that
``geoseg run`` applies, and ``labels`` uint8 (h, w) class indices with :data:`IGNORE` for nodata and unlabelled
pixels. Georeferenced sources are resampled to ``gsd_m`` with :func:`geoseg.scene.open_scene`, so training sees
exactly what inference will see.

Source kinds:

* ``geotiff``: an image with vector labels (any CRS, rasterised on the image grid) or a raster mask;
  split spatially: the last ``val_fraction`` of the rows is validation, after a gap of ``gap_px`` unused rows.
* ``chips``: a folder of GeoTIFF chips with a folder of 0/1 masks (``NAME.mask.tif`` or ``NAME.tif``); every
  chip goes to the source's ``split``, except chips that share ground with ``exclude_overlap_with``.
* ``dubai``: the Dubai land-cover tiles (JPEG + colour-coded PNG, not georeferenced) at an assumed ``gsd_m``;
  the tiles listed in ``val_tiles`` are validation. ``buildings_only``: Building -> building, every other
  labelled class -> background (desert, road, water and vegetation as negatives), Unlabeled -> ignored.
* ``image_mask``: one plain image (PNG, JPEG...; not georeferenced) and a 0/1 mask at a stated native GSD, e.g. the
  SpaceNet 2 tiles; mask values other than 0 and 1 are ignored. Split by rows like ``geotiff``, or all to ``split``.
* ``xyz``: web-map tiles named by z/x/y (a CSV with ``file,z,x,y``), georeferenced in EPSG:3857 from their
  indices, one zoom level; each group of edge-connected tiles becomes one mosaic (an alpha band or a missing
  tile is nodata), labelled by polygons like ``geotiff``.
* ``negatives``: a folder of georeferenced GeoTIFFs with no building in them (forest, savanna, rocks): every
  imaged pixel is background. They show the tree crowns, shadows and boulders that become false buildings.
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
from .read import Grid, scene_stretch, stretch
from .scene import ground_gsd_m, open_scene

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
    place: str = ""  # the place it shows (set from its source by geoseg.config.load_scenes)

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
    """Building outlines from a vector file (GeoJSON, GeoPackage, Shapefile, GeoParquet...), as labels or as a
    reference: one-line GeosegError for a file that cannot be read, has no CRS, or holds points or lines (a
    centroid export scored as footprints gave IoU 0.0009 without a word). Self-intersecting outlines (bowties,
    common in OSM exports) are repaired with ``make_valid``, keeping their polygonal parts; empty and null
    geometries are dropped."""
    path = Path(path)
    try:
        frame = gpd.read_parquet(path) if path.suffix.lower() == ".parquet" else gpd.read_file(path)
    except Exception as err:  # noqa: BLE001 - pyogrio DataSourceError, pyarrow errors...: all "cannot read"
        reason = str(err).splitlines()[0][:200] if str(err) else type(err).__name__
        raise GeosegError(f"{path}: not a readable vector file ({reason})") from None
    if frame.crs is None:
        raise GeosegError(f"{path}: the labels have no CRS")
    frame = frame[frame.geometry.notna() & ~frame.geometry.is_empty]
    kinds = frame.geometry.geom_type
    other = kinds[~kinds.isin(["Polygon", "MultiPolygon"])]
    if len(other):
        found = ", ".join(f"{n} {k}" for k, n in other.value_counts().items())
        raise GeosegError(f"{path}: building outlines must be polygons, found {found}")
    invalid = ~frame.geometry.is_valid
    if invalid.any():
        frame = frame.copy()
        frame.loc[invalid, frame.geometry.name] = [_polygonal(g) for g in frame.geometry[invalid]]
        frame = frame[~frame.geometry.is_empty]
    return frame.reset_index(drop=True)


def _polygonal(geometry):
    """The polygonal part of ``make_valid(geometry)`` (a bowtie becomes two triangles), empty if none."""
    import shapely

    repaired = shapely.make_valid(geometry)
    parts = [g for g in getattr(repaired, "geoms", [repaired]) if g.geom_type in ("Polygon", "MultiPolygon")]
    return shapely.union_all(parts) if parts else shapely.Polygon()


def instances_on_grid(path: str | Path, grid: Grid) -> np.ndarray:
    """Polygons (any CRS) rasterised on ``grid`` as instance ids: int32, 1..n inside building i, 0 elsewhere
    (where polygons overlap, the later one wins)."""
    return polygons_on_grid(read_label_polygons(path), grid)


def polygons_on_grid(frame: gpd.GeoDataFrame, grid: Grid) -> np.ndarray:
    """:func:`instances_on_grid` of polygons already read (any CRS)."""
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
    pixels, valid, grid = read_whole(image, gsd_m)
    if labels is not None:
        target = vector_labels_on_grid(labels, grid, separator_class)
    elif mask is not None:
        target = read_on_grid(mask, grid)
        target[(target != IGNORE) & (target > 0)] = 1
    else:
        raise GeosegError(f"{image}: give vector labels or a raster mask")
    target[~valid] = IGNORE
    return pixels, target


def read_whole(image: str | Path, gsd_m: float) -> tuple[np.ndarray, np.ndarray, Grid]:
    """A whole scene as inference reads it at ``gsd_m``: pixels (3, h, w) in [0, 1], where there is imagery, grid."""
    reader = open_scene(image, model_gsd_m=gsd_m, n_model_bands=3).reader
    pixels, valid = reader.read_tile(Window(0, 0, reader.grid.width, reader.grid.height))
    return pixels, valid, reader.grid


def negatives_source(images: str, gsd_m: float) -> list[LabelledScene]:
    """Building-free GeoTIFFs: every imaged pixel is background, nodata is IGNORE; all for training."""
    scenes = []
    for path in sorted(Path(images).glob("*.tif")):
        pixels, valid, _ = read_whole(path, gsd_m)
        scenes.append(LabelledScene(f"{Path(images).name}/{path.stem}", pixels, np.where(valid, 0, IGNORE).astype(np.uint8),
                                    "train"))
    if not scenes:
        raise GeosegError(f"{images}: no GeoTIFFs found")
    return scenes


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
                   separator_class: int | None = None, split: str | None = None) -> list[LabelledScene]:
    """A georeferenced scene and its labels at ``gsd_m``: split by rows (:func:`split_rows`), or all of it to
    ``split`` when given."""
    pixels, target = load_georeferenced(image, gsd_m, labels=labels, mask=mask, separator_class=separator_class)
    name = name or Path(image).parent.name
    if split is not None:
        return [LabelledScene(f"{name}:{split}", pixels, target, split)]
    return split_rows(name, pixels, target, val_fraction, gap_px)


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


def chips_of_distinct_ground(chips: list[Path], gsd_m: float) -> list[Path]:
    """Chips covering the same ground at several zoom levels, counted once: taken in order of how close their
    ground pixel size is to ``gsd_m``, a chip sharing more than 1 % of its area with one already taken is dropped
    (Kampala's val-chips hold one block at zoom 19, 20 and 21: the zoom-19 chip is kept)."""
    def ground_px_m(chip: Path) -> float:
        with rasterio.open(chip) as src:
            return float(np.mean(ground_gsd_m(src.crs, src.transform, src.width, src.height)))

    kept, taken = [], shapely.Polygon()
    for chip in sorted(chips, key=lambda c: (abs(ground_px_m(c) - gsd_m), c.name)):
        footprint = footprint_4326(chip)
        if footprint.intersection(taken).area <= 0.01 * footprint.area:
            kept.append(chip)
            taken = taken.union(footprint)
    return sorted(kept)


def chips_source(images: str, masks: str, gsd_m: float, split: str = "train", name: str | None = None,
                 exclude_overlap_with: str | None = None, labels: str | None = None,
                 separator_class: int | None = None, distinct_ground: bool = False) -> list[LabelledScene]:
    """Chip/mask pairs. ``exclude_overlap_with``: a folder of chips; chips sharing ground with any of them are
    dropped (Kampala's val-chips partly cover the same ground as its training chips at other zoom levels).
    ``labels``: polygons covering the chips, used instead of the masks (they separate touching buildings).
    ``distinct_ground``: the same ground at several zoom levels once (:func:`chips_of_distinct_ground`)."""
    scenes = []
    chips = chips_sharing_no_ground(images, exclude_overlap_with)
    for chip in chips_of_distinct_ground(chips, gsd_m) if distinct_ground else chips:
        candidates = [Path(masks) / f"{chip.stem}.mask.tif", Path(masks) / chip.name]
        mask = next((m for m in candidates if m.exists()), None)
        if mask is None:
            raise GeosegError(f"{chip}: no mask in {masks}")
        pixels, target = load_georeferenced(chip, gsd_m, labels=labels, mask=mask, separator_class=separator_class)
        scenes.append(LabelledScene(f"{name or Path(images).name}/{chip.stem}", pixels, target, split))
    if not scenes:
        raise GeosegError(f"{images}: no GeoTIFF chips found")
    return scenes


def dubai_labels(mask_rgb: np.ndarray, buildings_only: bool = False) -> np.ndarray:
    """Class indices from the colour-coded mask (``DUBAI_CLASSES``); ``buildings_only``: 1 building, 0 any other
    labelled class, IGNORE unlabelled. Colours are compared as one 24-bit code per pixel (``(rgb == colour).all(-1)``
    took 11x as long, in a scratch timing on 12 masks)."""
    code = (mask_rgb[..., 0].astype(np.uint32) << 16) | (mask_rgb[..., 1].astype(np.uint32) << 8) | mask_rgb[..., 2]
    labels = np.full(mask_rgb.shape[:2], IGNORE, np.uint8)
    for (red, green, blue), index in DUBAI_COLOURS.items():
        labels[code == (red << 16 | green << 8 | blue)] = (index == 0) if buildings_only else index
    return labels


def plain_pixels(image: Image.Image, mask: Image.Image, native_gsd_m: float, gsd_m: float) -> tuple[np.ndarray, Image.Image]:
    """A non-georeferenced image resized from ``native_gsd_m`` to ``gsd_m`` (bilinear; its mask nearest) and
    stretched from its own statistics as inference stretches a scene. Returns (pixels (3, h, w), resized mask)."""
    scale = native_gsd_m / gsd_m
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    if size != image.size:
        image, mask = image.resize(size, Image.BILINEAR), mask.resize(size, Image.NEAREST)
    raw = np.moveaxis(np.asarray(image.convert("RGB"), np.float32), -1, 0)
    valid = np.ones(raw.shape[1:], bool)
    return stretch(raw, valid, *scene_stretch(raw[:, ::4, ::4], valid[::4, ::4])), mask


def dubai_source(root: str, gsd_m: float, assumed_gsd_m: float, val_tiles: list[str],
                 buildings_only: bool = False, tiles: list[str] | None = None) -> list[LabelledScene]:
    """Dubai tiles at an assumed native GSD, resized to ``gsd_m``, scene-stretched like inference; ``tiles``:
    only these tile folders (default: all)."""
    scenes = []
    for image_path in sorted(Path(root).glob("tile_*/images/*.jpg")):
        tile = image_path.parent.parent.name
        if tiles is not None and tile not in tiles:
            continue
        mask_path = image_path.parent.parent / "masks" / f"{image_path.stem}.png"
        pixels, mask = plain_pixels(Image.open(image_path), Image.open(mask_path).convert("RGB"), assumed_gsd_m, gsd_m)
        split = "val" if tile in val_tiles else "train"
        labels = dubai_labels(np.asarray(mask), buildings_only)
        scenes.append(LabelledScene(f"dubai/{tile}/{image_path.stem}", pixels, labels, split))
    if not scenes:
        raise GeosegError(f"{root}: no Dubai tiles (tile_*/images/*.jpg) found")
    return scenes


def image_mask_source(image: str, mask: str, gsd_m: float, native_gsd_m: float, split: str = "train",
                      val_fraction: float = 0.0, gap_px: int = 64, name: str | None = None) -> list[LabelledScene]:
    """One plain image with a 0/1 mask at ``native_gsd_m`` (module docstring)."""
    try:
        pixels, resized = plain_pixels(Image.open(image), Image.open(mask), native_gsd_m, gsd_m)
    except OSError as err:
        raise GeosegError(f"{image}: cannot read the image or its mask ({err})") from None
    values = np.asarray(resized)
    if values.ndim != 2:
        raise GeosegError(f"{mask}: a 0/1 mask must have one band")
    labels = np.where(values <= 1, values, IGNORE).astype(np.uint8)
    name = name or Path(image).parent.name
    if val_fraction > 0:
        return split_rows(name, pixels, labels, val_fraction, gap_px)
    return [LabelledScene(name, pixels, labels, split)]


WEB_MERCATOR_HALF_M = 20037508.342789244  # half the equator's length in EPSG:3857 metres


def xyz_tile_bounds(z: int, x: int, y: int) -> tuple[float, float, float, float]:
    """(west, south, east, north) of web-map tile z/x/y in EPSG:3857 metres (y counted from the north)."""
    size = 2 * WEB_MERCATOR_HALF_M / 2**z
    west, north = -WEB_MERCATOR_HALF_M + x * size, WEB_MERCATOR_HALF_M - y * size
    return west, north - size, west + size, north


def tile_groups(xy: list[tuple[int, int]]) -> list[list[tuple[int, int]]]:
    """Tiles grouped by edge contact (each group becomes one mosaic), each group sorted, groups by first tile."""
    left, groups = set(xy), []
    while left:
        stack, group = [min(left)], []
        left.discard(stack[0])
        while stack:
            x, y = stack.pop()
            group.append((x, y))
            for n in ((x + 1, y), (x - 1, y), (x, y + 1), (x, y - 1)):
                if n in left:
                    left.discard(n)
                    stack.append(n)
        groups.append(sorted(group))
    return sorted(groups)


def xyz_mosaic(folder: Path, zoom: int, group: list[tuple[int, int]], files: dict, out: Path) -> Path:
    """Write one group of tiles as an EPSG:3857 GeoTIFF with an internal mask (alpha 0 or no tile: nodata)."""
    xs, ys = [x for x, _ in group], [y for _, y in group]
    tile_px = Image.open(folder / files[group[0]]).width
    height, width = (max(ys) - min(ys) + 1) * tile_px, (max(xs) - min(xs) + 1) * tile_px
    rgb, valid = np.zeros((3, height, width), np.uint8), np.zeros((height, width), bool)
    for x, y in group:
        tile = Image.open(folder / files[(x, y)])
        r, c = (y - min(ys)) * tile_px, (x - min(xs)) * tile_px
        rgb[:, r : r + tile_px, c : c + tile_px] = np.moveaxis(np.asarray(tile.convert("RGB")), -1, 0)
        alpha = np.asarray(tile.getchannel("A")) > 0 if tile.mode == "RGBA" else True
        valid[r : r + tile_px, c : c + tile_px] = alpha
    west, _, _, north = xyz_tile_bounds(zoom, min(xs), min(ys))
    size_m = 2 * WEB_MERCATOR_HALF_M / 2**zoom / tile_px
    profile = dict(driver="GTiff", width=width, height=height, count=3, dtype="uint8", crs="EPSG:3857",
                   transform=rasterio.Affine(size_m, 0, west, 0, -size_m, north), photometric="RGB")
    with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True), rasterio.open(out, "w", **profile) as dst:
        dst.write(rgb)
        dst.write_mask(valid.astype(np.uint8) * 255)
    return out


def xyz_source(tiles_csv: str, zoom: int, labels: str, gsd_m: float, split: str = "train", val_fraction: float = 0.0,
               gap_px: int = 64, name: str | None = None, separator_class: int | None = None) -> list[LabelledScene]:
    """Web-map tiles of one zoom level, one mosaic per group of touching tiles (module docstring)."""
    import csv
    import tempfile

    folder = Path(tiles_csv).parent / "tiles"
    with open(tiles_csv, newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if int(r["z"]) == zoom]
    if not rows:
        raise GeosegError(f"{tiles_csv}: no tiles at zoom {zoom}")
    files = {(int(r["x"]), int(r["y"])): r["file"] for r in rows}
    name = name or Path(tiles_csv).parent.name
    scenes = []
    with tempfile.TemporaryDirectory(prefix="geoseg-xyz-") as tmp:
        for i, group in enumerate(tile_groups(list(files))):
            mosaic = xyz_mosaic(folder, zoom, group, files, Path(tmp) / f"z{zoom}-{i}.tif")
            pixels, target = load_georeferenced(mosaic, gsd_m, labels=labels, separator_class=separator_class)
            part = f"{name}/z{zoom}-{i}"
            if val_fraction > 0:
                scenes += split_rows(part, pixels, target, val_fraction, gap_px)
            else:
                scenes.append(LabelledScene(part, pixels, target, split))
    return scenes
