"""Geometry exactness: output pixel (row, col) is input pixel (row, col); same CRS and transform; all covered."""

import numpy as np
import pytest
import rasterio
from affine import Affine

from geoseg.errors import GeosegError, SceneTooCoarseError
from geoseg.pipeline import run_scene
from geoseg.scene import ground_gsd_m, open_scene
from geoseg.stitch import MASK_NODATA
from rasterio.crs import CRS

from conftest import PixelBackend, write_scene


def expected_probability(scene, backend) -> np.ndarray:
    """What the stand-in must produce: band 1 after the scene stretch, as uint8 0-255."""
    reader = open_scene(scene, model_gsd_m=backend.card.gsd_m, n_model_bands=3).reader
    with rasterio.open(scene) as src:
        raw = src.read(list(reader.bands)).astype(np.float32)
        valid = src.dataset_mask() > 0
    return np.rint(reader.normalise(raw, valid)[0] * 255), valid


@pytest.mark.parametrize("height,width,dtype", [(300, 410, "uint16"), (90, 70, "uint8"), (128, 128, "float32"),
                                                (257, 129, "float64")])
def test_output_pixels_map_one_to_one(tmp_path, fast_options, height, width, dtype):
    rng = np.random.default_rng(height)
    data = (rng.random((3, height, width)) * 1000).astype(dtype)
    scene = write_scene(tmp_path / "scene.tif", data)
    backend = PixelBackend()
    summary = run_scene(scene, tmp_path / "out", fast_options, backend=backend)
    expected, _ = expected_probability(scene, backend)
    out = tmp_path / "out" / "scene"
    with rasterio.open(scene) as src, rasterio.open(out / "probability.tif") as prob, rasterio.open(out / "mask.tif") as mask:
        assert (prob.crs, prob.transform, prob.shape) == (src.crs, src.transform, src.shape)
        assert (mask.crs, mask.transform, mask.shape) == (src.crs, src.transform, src.shape)
        got = prob.read(1).astype(np.float32)
        assert np.abs(got - expected).max() <= 1  # float16 transport, uint8 output
        assert (prob.dataset_mask() == 255).all()  # every pixel covered
        labels = mask.read(1)
        decided = np.abs(expected - 127.5) > 2
        assert np.array_equal(labels[decided], (expected[decided] > 127.5).astype(np.uint8))
    assert summary.tiles_total == summary.tiles_encoded == backend.tiles_seen


def test_nodata_is_nodata_in_outputs_and_empty_tiles_never_reach_the_model(tmp_path, fast_options):
    data = np.random.default_rng(1).integers(1, 255, (3, 400, 400)).astype("uint8")
    data[:, :, 200:] = 0  # right half nodata: whole tiles of it are empty
    data[:, 10:20, 30:40] = 0  # a hole inside a valid tile
    scene = write_scene(tmp_path / "scene.tif", data, nodata=0)
    backend = PixelBackend()
    summary = run_scene(scene, tmp_path / "out", fast_options, backend=backend)
    out = tmp_path / "out" / "scene"
    with rasterio.open(out / "mask.tif") as mask, rasterio.open(out / "probability.tif") as prob:
        labels, prob_valid = mask.read(1), prob.dataset_mask() > 0
        assert mask.nodata == MASK_NODATA
    invalid = (data == 0).all(axis=0)
    assert (labels[invalid] == MASK_NODATA).all() and (labels[~invalid] != MASK_NODATA).all()
    assert np.array_equal(prob_valid, ~invalid)
    assert summary.tiles_nodata > 0
    assert backend.tiles_seen == summary.tiles_encoded == summary.tiles_total - summary.tiles_nodata


def test_ground_gsd_is_metres_for_geographic_and_web_mercator():
    # 1e-6 degree at the equator is 0.111 m east-west; EPSG:3857 "metres" shrink by cos(latitude) on the ground.
    gx, gy = ground_gsd_m(CRS.from_epsg(4326), Affine(1e-6, 0, 30.0, 0, -1e-6, 0.0005), 100, 100)
    assert gx == pytest.approx(0.1113, rel=1e-3) and gy == pytest.approx(0.1106, rel=1e-3)
    y60 = 8_399_737.9  # latitude 60 degrees in EPSG:3857
    gx, gy = ground_gsd_m(CRS.from_epsg(3857), Affine(0.6, 0, 0, 0, -0.6, y60), 100, 100)
    assert gx == pytest.approx(0.3, rel=1e-2) and gy == pytest.approx(0.3, rel=1e-2)  # not 0.6


def test_geographic_scene_is_resampled_to_model_gsd(tmp_path, fast_options):
    data = np.random.default_rng(2).integers(0, 255, (3, 300, 300)).astype("uint8")
    transform = Affine(1.35e-6, 0, 32.58, 0, -1.35e-6, 0.33)  # ~0.15 m at Kampala: half the model's GSD
    scene = write_scene(tmp_path / "geo.tif", data, crs="EPSG:4326", transform=transform)
    summary = run_scene(scene, tmp_path / "out", fast_options, backend=PixelBackend(gsd_m=0.3))
    assert summary.resampled and summary.grid_gsd_m == pytest.approx(0.3, rel=0.05)
    with rasterio.open(tmp_path / "out" / "geo" / "mask.tif") as mask:
        assert mask.crs == CRS.from_epsg(4326)
        assert mask.width == pytest.approx(150, abs=1) and mask.height == pytest.approx(150, abs=1)
        assert mask.bounds.left == pytest.approx(32.58) and mask.bounds.top == pytest.approx(0.33)
        gx, gy = ground_gsd_m(mask.crs, mask.transform, mask.width, mask.height)
        assert gx == pytest.approx(0.3, rel=0.02) and gy == pytest.approx(0.3, rel=0.02)


def test_far_too_coarse_scene_is_refused_unless_forced(tmp_path, fast_options):
    data = np.random.default_rng(3).integers(0, 4000, (4, 60, 60)).astype("uint16")
    scene = write_scene(tmp_path / "s2.tif", data, gsd_m=10.0)
    with pytest.raises(SceneTooCoarseError, match="coarser than the model"):
        run_scene(scene, tmp_path / "out", fast_options, backend=PixelBackend())
    assert not (tmp_path / "out").exists()
    fast_options.native_resolution = True
    summary = run_scene(scene, tmp_path / "out", fast_options, backend=PixelBackend())
    assert not summary.resampled and summary.grid_size_px == [60, 60]


def test_single_band_is_repeated_and_band_choice_validated(tmp_path, fast_options):
    data = np.random.default_rng(4).integers(1, 2000, (1, 64, 64)).astype("uint16")
    scene = write_scene(tmp_path / "pan.tif", data)
    reader = open_scene(scene, model_gsd_m=0.3, n_model_bands=3).reader
    assert reader.bands == (1, 1, 1)
    with pytest.raises(GeosegError, match="bands 1..1"):
        open_scene(scene, model_gsd_m=0.3, n_model_bands=3, bands=[2])
    rgbn = write_scene(tmp_path / "rgbn.tif", np.ones((4, 8, 8), "uint8"))
    assert open_scene(rgbn, model_gsd_m=0.3, n_model_bands=3)[0].bands == (1, 2, 3)
    assert open_scene(rgbn, model_gsd_m=0.3, n_model_bands=3, bands=[4, 3, 2])[0].bands == (4, 3, 2)
    with pytest.raises(GeosegError, match="1 or 3 band numbers"):
        open_scene(rgbn, model_gsd_m=0.3, n_model_bands=3, bands=[1, 2])


def test_overview_of_a_file_without_overviews_is_read_in_strips_exactly_as_gdal_decimates(tmp_path):
    """The strip-wise overview (bounded memory on big scenes) picks the pixels of GDAL's nearest-neighbour read,
    nodata and NaN included, for tiled and striped files and bands in any order."""
    from geoseg.scene import open_scene

    rng = np.random.default_rng(3)
    data = rng.normal(100, 30, (3, 700, 530)).astype(np.float32)
    data[:, 100:180, :] = -9999
    data[1, 400:420, 50:90] = np.nan
    for layout in ({"tiled": True, "blockxsize": 256, "blockysize": 256}, {}):
        scene = write_scene(tmp_path / f"f{len(layout)}.tif", data, nodata=-9999, **layout)
        reader = open_scene(scene, model_gsd_m=0.3, n_model_bands=3, bands=[3, 1, 2]).reader
        strips = reader.read_overview(max_px=97)
        with reader.open() as ds:
            assert not ds.overviews(1)
            whole = reader._read(ds, None, strips[1].shape)
        assert strips[1].shape == (97, 73) and not strips[1].all() and strips[1].any()
        assert np.array_equal(strips[1], whole[1])
        assert np.array_equal(strips[0][:, strips[1]], whole[0][:, whole[1]])
