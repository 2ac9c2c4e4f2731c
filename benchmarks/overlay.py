"""Predicted footprints drawn over the imagery beside the reference: the look before trusting a number.

    python benchmarks/overlay.py IMAGE.tif --reference REF.geojson --panel "base=RUN_A/SCENE/buildings.gpkg"
        --panel "fine-tuned=RUN_B/SCENE/buildings.gpkg" -o overlay.png [--title TEXT] [--dpi 110]

The reference is a vector file or a 0/1 mask GeoTIFF (traced). One panel per ``--panel LABEL=POLYGONS``, side by
side, each the image (2-98 % stretch per band) with the reference outlines in yellow and that panel's polygons in
cyan, in the image's pixel grid (both files reprojected to the image's CRS). The panel's title counts the rings
drawn (outer rings and holes).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import geopandas as gpd
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import rasterio  # noqa: E402
import shapely  # noqa: E402


def stretched(path: Path) -> tuple[np.ndarray, object, object]:
    """The first three bands as an (h, w, 3) float image in 0-1, with the transform and CRS."""
    with rasterio.open(path) as ds:
        pixels = ds.read(indexes=list(range(1, min(3, ds.count) + 1))).astype(np.float32)
        transform, crs = ds.transform, ds.crs
    if pixels.shape[0] < 3:
        pixels = np.repeat(pixels[:1], 3, axis=0)
    lo, hi = np.percentile(pixels, [2, 98], axis=(1, 2))
    out = (pixels - lo[:, None, None]) / np.maximum(hi - lo, 1e-6)[:, None, None]
    return np.clip(out, 0, 1).transpose(1, 2, 0), transform, crs


def read_outlines(path: Path) -> gpd.GeoDataFrame:
    """Polygons of a vector file, or the outlines of the 1-pixels of a 0/1 raster (a reference mask)."""
    if path.suffix.lower() not in (".tif", ".tiff"):
        return gpd.read_file(path)
    from geoseg.evaluate import polygons_from_array
    from geoseg.read import Grid

    with rasterio.open(path) as ds:
        return polygons_from_array(ds.read(1), Grid(ds.crs.to_wkt(), ds.transform, ds.width, ds.height), 1)


def outlines_px(path: Path, transform, crs) -> list[np.ndarray]:
    """Every ring of the file's polygons (:func:`read_outlines`), in the image's pixel coordinates (col, row)."""
    frame = read_outlines(path)
    if frame.crs is not None and crs is not None:
        frame = frame.to_crs(crs)
    to_px = ~transform
    rings = []
    for geom in frame.geometry:
        if geom is None or geom.is_empty:
            continue
        px = shapely.affinity.affine_transform(geom, [to_px.a, to_px.b, to_px.d, to_px.e, to_px.c, to_px.f])
        for poly in getattr(px, "geoms", [px]):
            if poly.geom_type == "Polygon":
                rings += [np.asarray(poly.exterior.coords)] + [np.asarray(r.coords) for r in poly.interiors]
    return rings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("image")
    parser.add_argument("--reference", required=True)
    parser.add_argument("--panel", action="append", required=True, help="LABEL=POLYGONS")
    parser.add_argument("-o", "--out", required=True)
    parser.add_argument("--title", default="")
    parser.add_argument("--dpi", type=int, default=110)
    args = parser.parse_args()
    image, transform, crs = stretched(Path(args.image))
    reference = outlines_px(Path(args.reference), transform, crs)
    panels = [p.split("=", 1) for p in args.panel]
    size = 6 * image.shape[0] / max(image.shape[1], 1)
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), size + 0.6), squeeze=False)
    for ax, (label, path) in zip(axes[0], panels):
        rings = outlines_px(Path(path), transform, crs)
        ax.imshow(image, interpolation="nearest")
        for ring in reference:
            ax.plot(ring[:, 0], ring[:, 1], color="yellow", linewidth=0.8)
        for ring in rings:
            ax.plot(ring[:, 0], ring[:, 1], color="cyan", linewidth=0.8)
        ax.set_xlim(0, image.shape[1])
        ax.set_ylim(image.shape[0], 0)
        ax.set_title(f"{label}: {len(rings)} rings (reference yellow: {len(reference)})", fontsize=9)
        ax.axis("off")
    if args.title:
        fig.suptitle(args.title, fontsize=10)
    fig.tight_layout()
    fig.savefig(args.out, dpi=args.dpi)


if __name__ == "__main__":
    main()
