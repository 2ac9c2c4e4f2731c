"""The model wrapper: encoder, decoder and head separately; decoder on a batch subset; safe loading."""

import json

import pytest
import torch

from geoseg.errors import GeosegError
from geoseg.card import ModelCard, file_sha256, resolve_model_path
from geoseg.model import SegmentationModel, fold_batchnorm, load_model, save_model


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    card = ModelCard(name="t", architecture="unet", encoder="resnet18", classes=["background", "building"],
                     building_class=1, bands=["red", "green", "blue"], gsd_m=0.3)
    return SegmentationModel(card).eval()


@torch.inference_mode()
def test_decoder_on_a_subset_equals_the_full_decode_rows(net):
    x = torch.randn(4, 3, 64, 64)
    features = net.encode(x)
    assert features[-1].shape[-1] == 2  # bottleneck at 1/32
    full = net.decode(features)
    index = torch.tensor([3, 1])
    assert torch.allclose(net.decode(features, index), full[index], atol=1e-5)
    assert torch.allclose(net(x), full)


@torch.inference_mode()
def test_safetensors_round_trip_and_card(tmp_path, net):
    path = tmp_path / "m.safetensors"
    sha = save_model(net, path, half=False)
    loaded, loaded_sha = load_model(str(path))
    assert sha == loaded_sha == file_sha256(path)
    x = torch.randn(1, 3, 64, 64)
    assert torch.allclose(loaded(x), net(x), atol=1e-5)
    assert json.loads(path.with_suffix(".json").read_text())["gsd_m"] == 0.3


def test_mismatched_card_and_missing_files_are_refused(tmp_path, net):
    path = tmp_path / "m.safetensors"
    save_model(net, path)
    card = json.loads(path.with_suffix(".json").read_text())
    card["classes"] = ["a", "b", "c"]
    path.with_suffix(".json").write_text(json.dumps(card))
    with pytest.raises(GeosegError, match="do not match the card"):
        load_model(str(path))
    with pytest.raises(GeosegError, match="not found"):
        resolve_model_path(str(tmp_path / "absent.safetensors"))


def test_shipped_default_model_loads_and_fits_the_size_budget():
    path = resolve_model_path(None)
    assert path.stat().st_size <= 30 * 1024 * 1024
    net, sha = load_model()
    assert len(sha) == 64 and net.card.gsd_m > 0 and net.card.classes[net.card.building_class] == "building"


def test_driver_side_modules_do_not_import_torch():
    # The Dask driver only stitches and writes; torch (~0.7 GB resident) belongs on the workers.
    import subprocess
    import sys

    code = "import sys, geoseg.cli, geoseg.pipeline; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "False"


@pytest.mark.parametrize("model", ["buildings-unet-r18", "buildings-fastscnn", "buildings-contextnet"])
@torch.inference_mode()
def test_folding_batchnorm_keeps_the_outputs(model):
    net, _ = load_model(model)
    x = net.prepare(torch.rand(2, 3, 96, 96))
    expected = net(x)
    n_bn = sum(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules())
    folded = fold_batchnorm(net)
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules()) < n_bn
    assert torch.allclose(folded(x), expected, atol=1e-3, rtol=1e-3)


def test_folding_batchnorm_refuses_a_model_in_training(net):
    with pytest.raises(GeosegError, match="eval mode"):
        fold_batchnorm(SegmentationModel(net.card).train())
