"""Seams: blended tiles of a real U-Net vs one whole-scene forward pass.

A U-Net sees less context at a tile's edge, so a tile's prediction there differs from the whole-scene pass.
Hann blending hands each seam to the tile that sees it best; the error along tile borders must then be no
larger than inside tiles (the same, within 10 %). The control shows that the check can fail: uniform blending
leaves visible seams (border error over 20 % above the interior's).
"""

import numpy as np
import pytest
import rasterio
import torch
from rasterio.windows import Window

import geoseg.stitch
from geoseg.backends import BackendSpec, load_backend
from geoseg.demo import generate_scene
from geoseg.card import ModelCard
from geoseg.model import SegmentationModel, save_model
from geoseg.pipeline import RunOptions, run_scene
from geoseg.tile import tile_offsets

SIZE_PX, TILE_PX, OVERLAP_PX, BAND_PX = 384, 256, 64, 4


@pytest.fixture(scope="module")
def unet_and_scene(tmp_path_factory):
    root = tmp_path_factory.mktemp("seams")
    torch.manual_seed(0)
    card = ModelCard(name="seam-unet", architecture="unet", encoder="resnet18", classes=["background", "building"],
                     building_class=1, bands=["red", "green", "blue"], gsd_m=0.3)
    weights = root / "seam-unet.safetensors"
    save_model(SegmentationModel(card), weights, half=False)
    scene = generate_scene(root / "scene.tif", size_px=SIZE_PX, seed=3)
    return str(weights), scene, root


def border_and_interior_error(unet_and_scene, out_name) -> tuple[float, float]:
    weights, scene, root = unet_and_scene
    opts = RunOptions(workers=0, model=weights, tile_px=TILE_PX, overlap_px=OVERLAP_PX, progress=False)
    summary = run_scene(scene, root / out_name, opts)
    backend = load_backend(BackendSpec(model=weights))
    from geoseg.scene import open_scene

    reader = open_scene(scene, model_gsd_m=0.3, n_model_bands=3).reader
    pixels, _ = reader.read_tile(Window(0, 0, SIZE_PX, SIZE_PX))
    whole = backend.predict(pixels[None]).probabilities[0, 1] * 255
    with rasterio.open(root / out_name / "scene" / "probability.tif") as prob:
        error = np.abs(prob.read(1).astype(np.float64) - whole)
    assert summary.tiles_total == 4
    offsets = tile_offsets(SIZE_PX, TILE_PX, OVERLAP_PX)
    edges = {o for o in offsets if o > 0} | {o + TILE_PX for o in offsets if o + TILE_PX < SIZE_PX}
    near = np.zeros(SIZE_PX, bool)
    for edge in edges:
        near[edge - BAND_PX : edge + BAND_PX] = True
    border = near[:, None] | near[None, :]
    return error[border].mean(), error[~border].mean()


def test_no_seams_along_tile_borders(unet_and_scene):
    border, interior = border_and_interior_error(unet_and_scene, "hann")
    assert border <= 1.10 * interior, (border, interior)


def test_control_uniform_blending_shows_seams(unet_and_scene, monkeypatch):
    monkeypatch.setattr(geoseg.stitch, "blend_weights", lambda h, w: np.ones((h, w), np.float32))
    border, interior = border_and_interior_error(unet_and_scene, "uniform")
    assert border > 1.20 * interior, (border, interior)
