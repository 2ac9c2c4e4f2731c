"""Every real scene in ../shared/data runs to completion or is refused as too coarse, with correct georeferencing."""

import numpy as np
import pytest
import rasterio

from geoseg.errors import SceneTooCoarseError
from geoseg.pipeline import RunOptions, run_scene
from geoseg.scene import MAX_UPSAMPLE, ground_gsd_m
from geoseg.stitch import MASK_NODATA

from conftest import SHARED_DATA, needs_shared_data

pytestmark = needs_shared_data()


def real_rasters():
    if not SHARED_DATA.is_dir():
        return []
    files = sorted((SHARED_DATA / "scenes").glob("*.tif"))
    files += [SHARED_DATA / "buildings" / p for p in ("banepa/image.tif", "kampala/mosaic_z19.tif", "atlanta/pan.tif")]
    chips = sorted((SHARED_DATA / "buildings" / "kampala" / "chips").glob("*.tif"))
    files += [next(c for c in chips if c.stem.endswith(f"-{zoom}")) for zoom in (19, 20, 21)]
    return files


@pytest.mark.parametrize("path", real_rasters(), ids=lambda p: p.name)
def test_real_raster_runs_or_is_refused_as_too_coarse(tmp_path, path):
    model_gsd_m = 0.3
    with rasterio.open(path) as src:
        gsd_m = float(np.mean(ground_gsd_m(src.crs, src.transform, src.width, src.height)))
        src_crs, src_valid = src.crs, src.dataset_mask() > 0
        src_shape, src_transform = src.shape, src.transform
    options = RunOptions(workers=0, progress=False)
    if gsd_m / model_gsd_m > MAX_UPSAMPLE:
        with pytest.raises(SceneTooCoarseError, match="Use --native-resolution or --target-gsd"):
            run_scene(path, tmp_path, options)
        return
    summary = run_scene(path, tmp_path, options)
    out = tmp_path / path.stem
    assert {"mask.tif", "probability.tif", "buildings.geojson", "preview.png"} <= {p.name for p in out.iterdir()}
    with rasterio.open(out / "mask.tif") as mask:
        assert mask.crs == src_crs and mask.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"
        labels = mask.read(1)
        if summary.resampled:
            out_gsd = np.mean(ground_gsd_m(mask.crs, mask.transform, mask.width, mask.height))
            assert out_gsd == pytest.approx(model_gsd_m, rel=0.05)
        else:
            assert (mask.shape, mask.transform) == (src_shape, src_transform)
            assert np.array_equal(labels == MASK_NODATA, ~src_valid)  # nodata / internal masks carried over
    assert summary.tiles_encoded + summary.tiles_nodata == summary.tiles_total
    # the shipped gate is the default: the decoder ran on at most the tiles that were encoded
    assert summary.backend == "bgs"
    assert summary.tiles_decoded <= summary.tiles_encoded
    assert summary.decoder_execution_rate == round(summary.tiles_decoded / max(summary.tiles_encoded, 1), 4)
