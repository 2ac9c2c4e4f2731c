"""Build the real demo scene shipped as ``geoseg/samples/nacala.tif`` from ``../shared/data`` (run once; reproducible).

    python benchmarks/make_demo_scene.py [--gsd 0.15] [--out geoseg/samples/nacala.tif]
    python benchmarks/make_demo_scene.py --figure demo-output/nacala [--out docs/demo-nacala.png]

The 18 drone patches of Nacala, Mozambique (``buildings/nacala/images``, 512 px at 4.85 cm, EPSG:32737) are
mosaicked onto one grid and averaged down to ``--gsd`` metres: about 124 m x 99 m of an informal settlement with
metal-sheet and thatch roofs. Ground no patch covers, and the black fill at the survey's edge, is masked
(an internal mask, so the model never sees it). Licence: the Nacala project's repository is CC0 1.0; the
attribution is kept in the file's tags (TIFFTAG_COPYRIGHT, TIFFTAG_IMAGEDESCRIPTION, ``source``, ``licence``).

None of geoseg's shipped models was trained or validated on Nacala (``tests/test_demo.py`` checks every card's
training sources): the demo shows what a user gets on new ground.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np
import rasterio
from rasterio.enums import Resampling
from rasterio.merge import merge

ROOT = Path(__file__).resolve().parents[1]
PATCHES = ROOT / ".." / "shared" / "data" / "buildings" / "nacala" / "images"
ATTRIBUTION = ("Drone imagery of Nacala, Mozambique (2021) by the mosquito-risk/Nacala project "
               "(github.com/mosquito-risk/Nacala), CC0 1.0; mosaicked and resampled by geoseg")


def figure(run_dir: Path, out: Path) -> None:
    """The shipped scene with the run's footprints (red) and the OSM-derived reference footprints (cyan), PNG."""
    import geopandas as gpd
    import shapely
    from PIL import Image, ImageDraw

    from geoseg.samples import sample_path

    with rasterio.open(sample_path()) as src:
        image = np.moveaxis(src.read(), 0, -1).copy()
        image[src.dataset_mask() == 0] = 0
        crs, inverse = src.crs, ~src.transform
    picture = Image.fromarray(image, "RGB")
    draw = ImageDraw.Draw(picture)
    to_px = [inverse.a, inverse.b, inverse.d, inverse.e, inverse.c, inverse.f]
    reference = gpd.read_file(PATCHES.parent / "01.geojson").to_crs(crs)
    predicted = gpd.read_file(run_dir / "buildings.gpkg").to_crs(crs)
    for frame, colour, width in ((reference, (0, 230, 255), 2), (predicted, (255, 30, 30), 3)):
        for geom in frame.geometry:
            for part in getattr(geom, "geoms", [geom]):
                ring = shapely.affinity.affine_transform(part, to_px).exterior.coords
                draw.line(list(ring), fill=colour, width=width)
    picture.save(out, optimize=True)
    print(f"{out}: {picture.size[0]} x {picture.size[1]} px, {out.stat().st_size / 1e3:.0f} kB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gsd", type=float, default=0.15, help="ground sample distance of the shipped scene, metres")
    parser.add_argument("--out", default=None, help="default: geoseg/samples/nacala.tif, or docs/demo-nacala.png")
    parser.add_argument("--figure", default=None, help="draw this run folder's footprints and the reference instead")
    args = parser.parse_args()
    if args.figure:
        figure(Path(args.figure), Path(args.out or ROOT / "docs" / "demo-nacala.png"))
        return
    args.out = args.out or str(ROOT / "geoseg" / "samples" / "nacala.tif")
    sources = [rasterio.open(p) for p in sorted(PATCHES.glob("*.tif"))]
    pixels, transform = merge(sources, res=args.gsd, resampling=Resampling.average, nodata=0)
    covered, _ = merge(sources, res=args.gsd, resampling=Resampling.nearest, nodata=0, indexes=[1])
    profile = sources[0].profile
    for src in sources:
        src.close()
    valid = (covered[0] > 0) | (pixels > 0).any(axis=0)  # inside a patch, and not the survey's black fill
    valid &= (pixels > 8).any(axis=0)
    profile.update(width=pixels.shape[2], height=pixels.shape[1], transform=transform, nodata=None, tiled=True,
                   blockxsize=256, blockysize=256, compress="deflate", predictor=2, photometric="RGB")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".partial")
    with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True), rasterio.open(tmp, "w", **profile) as dst:
        dst.write(pixels)
        dst.write_mask(valid.astype(np.uint8) * 255)
        dst.update_tags(TIFFTAG_COPYRIGHT="CC0 1.0 - mosquito-risk/Nacala project", TIFFTAG_IMAGEDESCRIPTION=ATTRIBUTION,
                        source="https://github.com/mosquito-risk/Nacala",
                        licence="CC0-1.0", place="Nacala, Nampula, Mozambique")
    os.replace(tmp, out)
    print(f"{out}: {pixels.shape[2]} x {pixels.shape[1]} px at {args.gsd} m, {out.stat().st_size / 1e6:.2f} MB, "
          f"{valid.mean():.0%} valid")


if __name__ == "__main__":
    main()
