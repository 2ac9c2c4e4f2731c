"""The COGs' overview levels made by the chunk tasks (geoseg.overviews) are those GDAL's COG driver makes: the same
levels, sizes and pixels (masks included), so a run's COGs are the same files whichever made them."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import rasterio
import rasterio.shutil
from rasterio.transform import from_origin

import geoseg.chunk
import geoseg.pipeline
from geoseg.overviews import average_levels, chunk_local_factors, nearest_levels, overview_factors
from geoseg.pipeline import run_scene

from conftest import PixelBackend, write_scene


def _gdal_cog(tmp_path, values: np.ndarray, valid: np.ndarray | None, categorical: bool):
    """GDAL's COG of ``values`` (with ``valid`` as its internal mask): [(level pixels, level mask), ...]."""
    height, width = values.shape
    profile = dict(driver="GTiff", width=width, height=height, count=1, dtype="uint8", crs="EPSG:32631",
                   transform=from_origin(500000, 100000, 0.5, 0.5), tiled=True)
    with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True), rasterio.open(tmp_path / "src.tif", "w", **profile) as dst:
        dst.write(values, 1)
        if valid is not None:
            dst.write_mask(valid.astype(np.uint8) * 255)
    rasterio.shutil.copy(tmp_path / "src.tif", tmp_path / "cog.tif", driver="COG", BLOCKSIZE="512",
                         OVERVIEWS="AUTO", OVERVIEW_RESAMPLING="NEAREST" if categorical else "AVERAGE")
    with rasterio.open(tmp_path / "cog.tif") as cog:
        n = len(cog.overviews(1))
    levels = []
    for i in range(n):
        with rasterio.open(tmp_path / "cog.tif", overview_level=i) as level:
            levels.append((level.read(1), level.read_masks(1) > 0))
    return levels


@pytest.mark.parametrize("height, width", [(1300, 1300), (1025, 1025), (999, 1999), (4209, 600), (512, 512)])
def test_overview_factors_are_those_of_gdals_cog_driver(tmp_path, height, width):
    levels = _gdal_cog(tmp_path, np.zeros((height, width), np.uint8), None, categorical=True)
    factors = overview_factors(height, width)
    assert len(factors) == len(levels)
    assert [level.shape for level, _ in levels] == [(height // f, width // f) for f in factors]


def test_only_exact_halvings_are_made_by_the_chunks():
    assert chunk_local_factors(8192, 8192, 2048) == (2, 4, 8, 16)
    assert chunk_local_factors(4096, 3072, 2048) == (2, 4, 8)
    assert chunk_local_factors(4209, 4646, 2048) == ()  # odd: GDAL samples windows of a little over 2 px
    assert chunk_local_factors(512, 512, 2048) == ()  # no overview at all


def test_average_and_nearest_levels_are_gdals_pixel_for_pixel(tmp_path):
    rng = np.random.default_rng(9)
    values = rng.integers(0, 256, (2048, 1536), dtype=np.uint8)
    valid = rng.random((2048, 1536)) > 0.3
    valid[:300, :400] = False  # a nodata corner: whole blocks without a valid pixel
    values[~valid] = 0
    gdal = _gdal_cog(tmp_path, values, valid, categorical=False)
    mine = average_levels(values, valid, len(overview_factors(2048, 1536)))
    assert len(mine) == len(gdal) == 2
    for (v, m), (gv, gm) in zip(mine, gdal):
        assert np.array_equal(m, gm) and np.array_equal(v, gv)
    classes = rng.integers(0, 3, (2048, 1536), dtype=np.uint8)
    gdal = _gdal_cog(tmp_path, classes, None, categorical=True)
    assert all(np.array_equal(v, gv) for v, (gv, _) in zip(nearest_levels(classes, 2), gdal))


def test_a_chunked_run_writes_the_cogs_gdal_would(tmp_path, fast_options, monkeypatch):
    """Six chunks of 512 px with nodata: the COGs with the chunks' overviews are the files GDAL's make, byte for
    byte (and they do have overviews)."""
    monkeypatch.setattr(geoseg.chunk, "VECTOR_WINDOW_PX", 256)
    rng = np.random.default_rng(10)
    blocks = np.kron(rng.integers(0, 248, (64, 96)), np.ones((16, 16), int))  # few buildings, quick to trace
    data = np.repeat((blocks + rng.integers(0, 8, blocks.shape))[None], 3, axis=0).astype(np.uint8)  # + texture
    data[:, 701:, :299] = 0  # nodata, not on a block boundary
    scene = write_scene(tmp_path / "scene.tif", data, nodata=0)
    options = dataclasses.replace(fast_options, chunk_px=512)
    own = run_scene(scene, tmp_path / "own", options, backend=PixelBackend())
    monkeypatch.setattr(geoseg.pipeline, "chunk_local_factors", lambda *args: ())
    gdal = run_scene(scene, tmp_path / "gdal", options, backend=PixelBackend())
    assert own.chunks == gdal.chunks == 6
    for name in ("mask.tif", "probability.tif"):
        a, b = tmp_path / "own" / "scene" / name, tmp_path / "gdal" / "scene" / name
        with rasterio.open(a) as cog:
            assert cog.overviews(1) == [2, 4]
        assert a.read_bytes() == b.read_bytes()
