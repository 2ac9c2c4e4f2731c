"""Write stage: Cloud-Optimised GeoTIFFs, vector files and the preview, each written whole or not at all.

Every writer here writes to a temporary name inside a staging folder; :func:`publish` moves finished files to
their final names only at the end of a successful run, so a failed run never leaves a file that looks
complete.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import geopandas as gpd
import numpy as np
import rasterio
import rasterio.shutil
import shapely
from PIL import Image, ImageDraw

#: format name -> (file name, OGR driver or "parquet")
VECTOR_FORMATS = {
    "geojson": ("buildings.geojson", "GeoJSON"),
    "gpkg": ("buildings.gpkg", "GPKG"),
    "shp": ("buildings.shp", "ESRI Shapefile"),
    "parquet": ("buildings.parquet", "parquet"),
}
SHAPEFILE_PARTS = (".shx", ".dbf", ".prj", ".cpg", ".shp")  # .shp last: it is the file readers look for


def write_cog(source_path: str, dest_path: str, categorical: bool) -> None:
    """Copy a tiled GeoTIFF to a DEFLATE-compressed COG with overviews (nearest for classes, average else)."""
    rasterio.shutil.copy(
        source_path, dest_path, driver="COG", COMPRESS="DEFLATE", PREDICTOR="2", BLOCKSIZE="512",
        OVERVIEWS="AUTO", OVERVIEW_RESAMPLING="NEAREST" if categorical else "AVERAGE", NUM_THREADS="ALL_CPUS",
    )


def write_vectors(frame: gpd.GeoDataFrame, staging: Path, formats: list[str]) -> list[str]:
    """Write buildings in each format into ``staging``; returns file names written there.

    GeoJSON is EPSG:4326 per RFC 7946; the others keep the scene's CRS. Empty results are written as valid
    empty layers, so a scene without buildings still has its files.
    """
    written = []
    for fmt in formats:
        name, driver = VECTOR_FORMATS[fmt]
        path = staging / name
        if driver == "parquet":
            frame.to_parquet(path, index=False)
        elif driver == "GeoJSON":
            frame.to_crs("EPSG:4326").to_file(path, driver=driver, engine="pyogrio", layer_options={"RFC7946": "YES"},
                                               geometry_type="Polygon")
        else:
            frame.to_file(path, driver=driver, engine="pyogrio", geometry_type="Polygon")
        if driver == "ESRI Shapefile":
            written += [path.with_suffix(ext).name for ext in SHAPEFILE_PARTS if path.with_suffix(ext).exists()]
        else:
            written.append(name)
    return written


def write_preview(rgb: np.ndarray, valid: np.ndarray, polygons_px: list[shapely.Polygon], scale: float, path: Path) -> None:
    """PNG of the image (uint8 RGB, (3, h, w)) with building outlines; ``scale`` = preview px per grid px."""
    image = np.moveaxis(rgb, 0, -1).copy()
    image[~valid] = 0
    picture = Image.fromarray(image, "RGB")
    draw = ImageDraw.Draw(picture)
    for poly in polygons_px:
        for part in getattr(poly, "geoms", [poly]):
            ring = [(x * scale, y * scale) for x, y in part.exterior.coords]
            draw.line(ring, fill=(255, 40, 40), width=2 if scale > 0.5 else 1)
    picture.save(path)


def publish(staging: Path, out_dir: Path, names: list[str]) -> list[str]:
    """Move finished files from ``staging`` to ``out_dir`` (same file system: atomic renames), in order given."""
    for name in names:
        os.replace(staging / name, out_dir / name)
    return names


def discard(staging: Path) -> None:
    shutil.rmtree(staging, ignore_errors=True)
