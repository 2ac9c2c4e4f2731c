"""Write stage: Cloud-Optimised GeoTIFFs, vector files and the preview, each written whole or not at all.

Every writer here writes to a temporary name inside a staging folder; :func:`publish` moves finished files to
their final names only at the end of a successful run, so a failed run never leaves a file that looks
complete.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
from pathlib import Path
from typing import Collection, Sequence

import numpy as np
import rasterio
import rasterio.shutil
import shapely
from PIL import Image, ImageDraw

from .formats import output_file_names
from .read import affine_xy

#: every file a scene's output folder can hold: a rerun removes those of them that it did not write
SCENE_OUTPUTS = frozenset(["mask.tif", "probability.tif", "instances.tif", "preview.png", "summary.json"]
                          + output_file_names())
#: characters an output folder name keeps (letters and digits of any script, "_", ".", "-"); others become "_"
_UNSAFE_CHARS = re.compile(r"[^\w.-]")
#: longest folder name made from a scene name (file systems allow 255 bytes)
MAX_FOLDER_NAME = 120


def write_cog(source_path: str, dest_path: str, categorical: bool, own_overviews: bool = False) -> None:
    """Copy a tiled GeoTIFF (or VRT) to a DEFLATE-compressed COG with overviews (nearest for classes, average
    else): the source's own (``own_overviews``: :mod:`geoseg.overviews`) or built by GDAL. DEFLATE level 1, not GDAL's 6: on a 12.6 Mpx probability raster 0.40 s
    instead of 0.85 s for a file 8.5 % larger (7.2 vs 6.6 MiB), readable by every GDAL, QGIS and browser COG reader
    (ZSTD is no faster here and not readable by all of them)."""
    rasterio.shutil.copy(
        source_path, dest_path, driver="COG", COMPRESS="DEFLATE", LEVEL="1", PREDICTOR="2", BLOCKSIZE="512",
        OVERVIEWS="FORCE_USE_EXISTING" if own_overviews else "AUTO",
        OVERVIEW_RESAMPLING="NEAREST" if categorical else "AVERAGE", NUM_THREADS="ALL_CPUS",
    )


class Preview:
    """A PNG of the image (uint8 RGB, (3, h, w)) with building outlines drawn on as they come; ``scale`` = preview
    px per grid px."""

    def __init__(self, rgb: np.ndarray, valid: np.ndarray, scale: float):
        image = np.moveaxis(rgb, 0, -1).copy()
        image[~valid] = 0
        self.picture = Image.fromarray(image, "RGB")
        self.draw_on = ImageDraw.Draw(self.picture)
        self.scale = scale

    def draw(self, geometries, grid) -> None:
        """Outlines of polygons in the grid's CRS (mapped back to grid pixels, then to preview pixels), every
        ring's coordinates in one pass (:func:`geoseg.read.affine_xy`)."""
        rings = shapely.get_exterior_ring(shapely.get_parts(np.asarray(geometries, dtype=object)))
        if not len(rings):
            return
        coords, ring_of = shapely.get_coordinates(rings, return_index=True)
        x, y = affine_xy(~grid.transform, *coords.T)
        xy = np.stack([x * self.scale, y * self.scale], axis=1)
        starts = np.flatnonzero(np.r_[True, ring_of[1:] != ring_of[:-1]])
        for ring in np.split(xy, starts[1:]):
            self.draw_on.line(ring.ravel().tolist(), fill=(255, 40, 40), width=2 if self.scale > 0.5 else 1)

    def save(self, path: Path) -> None:
        """PNG at zlib level 1: the same pixels as PIL's default level 6, 2.8x faster on the demo scene's imagery
        (`benchmarks/bench_fast_paths.py`), for a larger file."""
        self.picture.save(path, compress_level=1)


def publish(staging: Path, out_dir: Path, names: list[str]) -> list[str]:
    """Move finished files from ``staging`` to ``out_dir`` (same file system: atomic renames), in order given,
    then remove the outputs of an earlier run that this one did not write (a rerun with fewer ``--formats``
    must not leave last month's ``buildings.gpkg`` beside today's GeoJSON). Files geoseg never writes stay."""
    for name in names:
        os.replace(staging / name, out_dir / name)
    for stale in sorted(SCENE_OUTPUTS - set(names)):
        (out_dir / stale).unlink(missing_ok=True)
    return names


def discard(staging: Path) -> None:
    shutil.rmtree(staging, ignore_errors=True)


def safe_folder_name(name: str, reserved: Collection[str] = ()) -> str:
    """A folder name for a scene name or catalog item id that stays inside its parent and clashes with nothing.

    Characters other than letters, digits, ``_``, ``.`` and ``-`` become ``_`` and leading dots become ``_`` (so never ``.``, ``..`` or a
    hidden folder). A name that had to change, is empty, is too long, or is one of ``reserved`` (a job's own
    files: ``stac``, ``manifest.json``...) gets ``-`` and 8 hex digits of its SHA-256 appended, so two ids that
    clean to the same text (``x/y`` and ``x_y``) still get two folders. A name that needs no change is kept as it
    is, so reruns find their earlier outputs.
    """
    clean = _UNSAFE_CHARS.sub("_", name)
    clean = "_" * (len(clean) - len(clean.lstrip("."))) + clean.lstrip(".")
    if clean == name and name and len(name) <= MAX_FOLDER_NAME and name.lower() not in {r.lower() for r in reserved}:
        return name
    return f"{clean[:MAX_FOLDER_NAME] or 'scene'}-{hashlib.sha256(name.encode()).hexdigest()[:8]}"


def scene_folder_names(paths: Sequence[str | os.PathLike]) -> list[str]:
    """One output folder name per scene file of a run, all different: the file's stem (made safe), and where stems
    clash, their parent folders' names appended one level at a time (``a/scene.tif``, ``b/scene.tif`` ->
    ``scene-a``, ``scene-b``). Names are compared without case (two folders on macOS or Windows otherwise).
    Raises GeosegError if the same file is given twice."""
    from .errors import GeosegError

    resolved = [Path(p).resolve() for p in paths]
    for i, path in enumerate(resolved):
        if path in resolved[:i]:
            raise GeosegError(f"{paths[i]}: the same scene is given more than once")
    depth = [0] * len(resolved)

    def name(i: int) -> str:
        parents = [p.name for p in resolved[i].parents if p.name][: depth[i]]
        return safe_folder_name("-".join([resolved[i].stem, *parents]))

    for _ in range(max((len(p.parts) for p in resolved), default=0) + 1):
        names = [name(i) for i in range(len(resolved))]
        lowered = [n.lower() for n in names]
        clashes = [i for i, n in enumerate(lowered) if lowered.count(n) > 1]
        if not clashes:
            return names
        for i in clashes:
            depth[i] += 1
    # same stem and same folders (scene.tif and scene.tiff side by side): the whole path decides
    return [safe_folder_name(f"{n}-{hashlib.sha256(str(p).encode()).hexdigest()[:8]}") for n, p in zip(names, resolved)]
