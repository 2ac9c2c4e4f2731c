"""Compare two ``geoseg run`` output folders scene by scene, as a restructure must: rasters byte for byte (and pixel
for pixel, masks included), polygons geometry for geometry (``equals_exact``, in order) with their attributes, and
the preview.

    python benchmarks/compare_outputs.py OLD_OUT NEW_OUT

Prints one line per scene; exits 1 if anything differs.
"""

from __future__ import annotations

import sys
from pathlib import Path

import geopandas as gpd
import rasterio


def compare_scene(a: Path, b: Path) -> tuple[bool, str]:
    same, notes = True, []
    for name in ("mask.tif", "probability.tif"):
        same_bytes = (a / name).read_bytes() == (b / name).read_bytes()
        with rasterio.open(a / name) as x, rasterio.open(b / name) as y:
            same_px = (x.read() == y.read()).all() and (x.read_masks() == y.read_masks()).all()
        same &= same_bytes and same_px
        notes.append(f"{name}: bytes {'=' if same_bytes else '≠'} pixels {'=' if same_px else '≠'}")
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
    preview = (a / "preview.png").read_bytes() == (b / "preview.png").read_bytes()
    return same and preview, "; ".join(notes + [f"preview {'=' if preview else '≠'}"])


def main() -> int:
    old, new = Path(sys.argv[1]), Path(sys.argv[2])
    all_same = True
    for scene in sorted(p.name for p in old.iterdir() if (p / "mask.tif").exists()):
        same, line = compare_scene(old / scene, new / scene)
        all_same &= same
        print(f"{scene}: {line}")
    return 0 if all_same else 1


if __name__ == "__main__":
    sys.exit(main())
