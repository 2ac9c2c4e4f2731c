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


def test_driver_side_modules_do_not_import_geopandas_or_scipy():
    # Frames are made and components labelled on the workers; the driver's start is every run's fixed cost
    # (issue 27: 0.4 s of geopandas and 0.3 s of scipy.ndimage before the first scene opened)
    import subprocess
    import sys

    code = ("import sys, geoseg.cli, geoseg.pipeline; "
            "print([m for m in ('geopandas', 'pandas', 'scipy') if m in sys.modules])")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "[]"


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


@pytest.mark.parametrize("encoder", ["resnet18", "resnet34"])
def test_own_unet_is_smps_unet_module_for_module(encoder):
    """geoseg.nets.unet builds segmentation-models-pytorch's U-Net without importing it (1.7 s of imports per
    process): the same state-dict keys and shapes, and with the same weights the same logits, bit for bit."""
    import torch

    smp = pytest.importorskip("segmentation_models_pytorch")
    from geoseg.card import ModelCard
    from geoseg.model import SegmentationModel

    card = ModelCard(name="t", architecture="unet", encoder=encoder, classes=["background", "building", "edge"],
                     building_class=1, bands=["red", "green", "blue"], gsd_m=0.3)
    ours = SegmentationModel(card).eval()
    assert type(ours.encoder).__module__ == "geoseg.nets.unet"
    reference = smp.Unet(encoder_name=encoder, encoder_weights=None, in_channels=3, classes=3,
                         decoder_channels=tuple(card.decoder_channels)).eval()
    theirs = {k.replace("segmentation_head.", "head.", 1): v for k, v in reference.state_dict().items()}
    assert {k: tuple(v.shape) for k, v in ours.state_dict().items()} == {k: tuple(v.shape) for k, v in theirs.items()}
    generator = torch.Generator().manual_seed(0)

    def drawn(key: str, value: torch.Tensor) -> torch.Tensor:  # weights unlike any init; variances positive
        if not value.is_floating_point():
            return value
        noise = torch.rand(value.shape, generator=generator)
        return noise + 0.5 if key.endswith("running_var") else (noise - 0.5) * 0.2

    ours.load_state_dict({k: drawn(k, v) for k, v in ours.state_dict().items()})
    reference.load_state_dict({k.replace("head.", "segmentation_head.", 1) if k.startswith("head.") else k: v
                               for k, v in ours.state_dict().items()})
    x = torch.rand(2, 3, 96, 160, generator=generator)
    with torch.inference_mode():
        logits = ours.head(ours.decoder(ours.encoder(x)))
        assert torch.isfinite(logits).all() and logits.abs().max() > 0.01
        assert torch.equal(logits, reference(x))
