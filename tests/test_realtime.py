"""Fast-SCNN and ContextNet: the papers' parameter counts, odd sizes, batch size 1, and pipeline geometry."""

import numpy as np
import pytest
import rasterio
import torch

from geoseg.backends import BackendSpec, describe_backend
from geoseg.backends.unet import UNetBackend
from geoseg.card import ModelCard
from geoseg.errors import GeosegError
from geoseg.model import build_model, save_model
from geoseg.nets.contextnet import ContextNet
from geoseg.nets.fastscnn import FastSCNN
from geoseg.pipeline import run_scene

from conftest import write_scene

PAPER_PARAMETERS = {FastSCNN: 1.11e6, ContextNet: 0.85e6}  # 19 Cityscapes classes


def inference_parameters(net) -> int:
    return sum(p.numel() for n, p in net.named_parameters() if not n.startswith("aux"))


@pytest.mark.parametrize("cls", [FastSCNN, ContextNet], ids=lambda c: c.__name__)
def test_parameter_count_matches_the_paper(cls):
    assert inference_parameters(cls(3, 19)) == pytest.approx(PAPER_PARAMETERS[cls], rel=0.05)


@pytest.mark.parametrize("cls", [FastSCNN, ContextNet], ids=lambda c: c.__name__)
@pytest.mark.parametrize("size", [(500, 520), (520, 500), (97, 130), (33, 33)])
def test_odd_sizes_and_batch_of_one(cls, size):
    torch.manual_seed(0)
    net = cls(3, 4).eval()
    with torch.inference_mode():
        features = net.encode(torch.rand(1, 3, *size))
        logits = net.decode(features)
    assert logits.shape[:2] == (1, 4) and logits.shape[-2] >= size[0] and logits.shape[-1] >= size[1]
    assert logits.shape[-2] - size[0] < 8 and logits.shape[-1] - size[1] < 8
    if min(size) < 64:
        return  # too small to train on: ContextNet's deep branch would be 1x1, BatchNorm needs 2 values
    # training with a batch of one (BatchNorm after 1x1 pyramid pooling is the known trap)
    net.train()
    features = net.encode(torch.rand(1, 3, *size))
    loss = net.decode(features).mean() + sum(a.mean() for a in net.aux_logits(features))
    loss.backward()


def realtime_model(tmp_path, architecture):
    torch.manual_seed(0)
    card = ModelCard(name=f"tiny-{architecture}", architecture=architecture, encoder="",
                     classes=["background", "building"], building_class=1, bands=["red", "green", "blue"], gsd_m=0.3)
    path = tmp_path / f"{architecture}.safetensors"
    save_model(build_model(card), path, half=False)
    return path


@pytest.mark.parametrize("architecture", ["fastscnn", "contextnet"])
def test_pipeline_output_is_georeferenced_like_the_unets(tmp_path, fast_options, architecture):
    rng = np.random.default_rng(0)
    scene = write_scene(tmp_path / "scene.tif", rng.integers(0, 255, (3, 150, 230), dtype=np.uint8))
    path = realtime_model(tmp_path, architecture)
    card, _ = describe_backend(BackendSpec(architecture, str(path)))
    assert card.architecture == architecture
    run_scene(scene, tmp_path / "fast", fast_options, backend=UNetBackend(str(path), precision="fp32"))
    run_scene(scene, tmp_path / "unet", fast_options, backend=UNetBackend(None, precision="fp32"))
    with rasterio.open(tmp_path / "fast" / "scene" / "mask.tif") as a, \
            rasterio.open(tmp_path / "unet" / "scene" / "mask.tif") as b:
        assert (a.crs, a.transform, a.shape) == (b.crs, b.transform, b.shape)
        assert np.array_equal(a.read_masks(1), b.read_masks(1))
    with pytest.raises(GeosegError, match="is a unet, not a fastscnn"):
        describe_backend(BackendSpec("fastscnn", "buildings-unet-r18"))
