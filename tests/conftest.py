"""Shared test helpers: a stand-in model whose output is a known function of its input, and scene writers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine

from geoseg.backends import BatchPrediction
from geoseg.card import ModelCard
from geoseg.pipeline import RunOptions

SHARED_DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"


class PixelBackend:
    """Fully convolutional stand-in (a 1x1 identity): P(building) at (row, col) = band 1 of the input at (row, col)
    after the scene stretch. So any shift, flip or lost pixel in read/tile/stitch shows up in the output."""

    name = "pixel"
    model_sha256 = "0" * 64

    def __init__(self, gsd_m: float = 0.3):
        self.card = ModelCard(name="pixel-standin", architecture="identity", encoder="", classes=["background", "building"],
                              building_class=1, bands=["red", "green", "blue"], gsd_m=gsd_m)
        self.tiles_seen = 0
        self.empty_tiles_seen = 0

    def predict(self, pixels: np.ndarray) -> BatchPrediction:
        self.tiles_seen += len(pixels)
        p = pixels[:, :1].astype(np.float32)
        return BatchPrediction(np.concatenate([1 - p, p], axis=1), decoded=len(pixels))


def write_scene(path, data: np.ndarray, crs="EPSG:32636", transform=None, nodata=None, gsd_m=0.3, **extra) -> Path:
    """Write a (bands, h, w) array as a GeoTIFF; default grid: UTM 36N at ``gsd_m``."""
    bands, height, width = data.shape
    transform = transform or Affine(gsd_m, 0, 452_000.0, 0, -gsd_m, 40_000.0)
    profile = dict(driver="GTiff", width=width, height=height, count=bands, dtype=data.dtype, crs=crs,
                   transform=transform, nodata=nodata, **extra)
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
    return Path(path)


@pytest.fixture
def fast_options():
    """In-process run (no cluster), small tiles, quiet: for tests of geometry, not of Dask."""
    return RunOptions(workers=0, tile_px=128, overlap_px=32, progress=False, min_area_m2=0.0, simplify_m=0.0)


def needs_shared_data():
    return pytest.mark.skipif(not SHARED_DATA.is_dir(), reason=f"real data folder {SHARED_DATA} is absent")


def atlanta_calibration_config(tmp_path) -> Path:
    """A one-source calibration config (Atlanta's labelled image, 20 % of rows held out) written into tmp_path."""
    import yaml

    config = {"name": "cal", "classes": ["background", "building"], "building_class": 1, "gsd_m": 0.3,
              "data_root": str(SHARED_DATA), "sources": [
                  {"kind": "geotiff", "image": "buildings/atlanta/pan.tif",
                   "labels": "buildings/atlanta/buildings.geojson", "val_fraction": 0.2}]}
    path = tmp_path / "cal.yaml"
    path.write_text(yaml.safe_dump(config))
    return path
