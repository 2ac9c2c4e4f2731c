"""Compare two ``geoseg run`` output folders scene by scene, as a restructure must: rasters byte for byte (and pixel
for pixel, masks included), polygons geometry for geometry (``equals_exact``, in order) with their attributes, and
the preview (bytes, and decoded pixels).

    python benchmarks/compare_outputs.py OLD_OUT NEW_OUT [--pixels]

``--pixels``: rasters and preview must hold the same pixels (every overview level too), their bytes may differ
(another compression setting, say).

Prints one line per scene; exits 1 if anything differs.
"""

from __future__ import annotations

import sys
from pathlib import Path

import geopandas as gpd
import numpy as np
import rasterio
from PIL import Image


def same_pixels(a: Path, b: Path) -> tuple[bool, bool]:
    """(full-resolution pixels and masks equal, every overview level equal too)."""
    with rasterio.open(a) as x, rasterio.open(b) as y:
        full = x.shape == y.shape and (x.read() == y.read()).all() and (x.read_masks() == y.read_masks()).all()
        factors = x.overviews(1)
        levels = factors == y.overviews(1)
    for level in range(len(factors) if levels else 0):
        with rasterio.open(a, overview_level=level) as x, rasterio.open(b, overview_level=level) as y:
            levels &= bool((x.read() == y.read()).all() and (x.read_masks() == y.read_masks()).all())
    return bool(full), bool(full and levels)


def compare_scene(a: Path, b: Path, pixels_only: bool = False) -> tuple[bool, str]:
    same, notes = True, []
    for name in ("mask.tif", "probability.tif"):
        same_bytes = (a / name).read_bytes() == (b / name).read_bytes()
        same_px, same_levels = same_pixels(a / name, b / name)
        same &= same_levels and (pixels_only or same_bytes)
        notes.append(f"{name}: bytes {'=' if same_bytes else '≠'} pixels {'=' if same_px else '≠'} "
                     f"overviews {'=' if same_levels else '≠'}")
    for name in ("buildings.parquet", "buildings.gpkg", "buildings.geojson"):
        if not (a / name).exists():
            continue
        read = gpd.read_parquet if name.endswith("parquet") else gpd.read_file
        fa, fb = read(a / name), read(b / name)
        geometry = len(fa) == len(fb) and all(x.equals_exact(y, 0) for x, y in zip(fa.geometry, fb.geometry))
        attributes = fa.drop(columns="geometry").equals(fb.drop(columns="geometry"))
        same &= geometry and attributes
        notes.append(f"{name}: {len(fa)} vs {len(fb)} geometry {'=' if geometry else '≠'} "
                     f"attributes {'=' if attributes else '≠'}")
    preview_bytes = (a / "preview.png").read_bytes() == (b / "preview.png").read_bytes()
    with Image.open(a / "preview.png") as x, Image.open(b / "preview.png") as y:
        preview_px = x.size == y.size and np.array_equal(np.asarray(x), np.asarray(y))
    same &= preview_px and (pixels_only or preview_bytes)
    return same, "; ".join(notes + [f"preview: bytes {'=' if preview_bytes else '≠'} pixels {'=' if preview_px else '≠'}"])


def main() -> int:
    args = [a for a in sys.argv[1:] if a != "--pixels"]
    old, new = Path(args[0]), Path(args[1])
    all_same = True
    for scene in sorted(p.name for p in old.iterdir() if (p / "mask.tif").exists()):
        same, line = compare_scene(old / scene, new / scene, pixels_only="--pixels" in sys.argv)
        all_same &= same
        print(f"{scene}: {line}")
    return 0 if all_same else 1


if __name__ == "__main__":
    sys.exit(main())
