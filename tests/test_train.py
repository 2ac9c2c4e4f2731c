"""geoseg train on a tiny real subset: a loadable model whose loss went down; resume; config errors."""

import json

import pytest
import yaml

from geoseg.errors import GeosegError
from geoseg.model import load_model
from geoseg.config import load_config
from geoseg.train import train

from conftest import SHARED_DATA, needs_shared_data


def tiny_config(tmp_path, **overrides):
    config = {
        "name": "tiny", "classes": ["background", "building"], "building_class": 1, "gsd_m": 0.5,
        "data_root": str(SHARED_DATA),
        "sources": [{"kind": "geotiff", "image": "buildings/atlanta/pan.tif", "labels": "buildings/atlanta/buildings.geojson",
                     "val_fraction": 0.25}],
        "crop_px": 128, "batch_size": 4, "epochs": 3, "steps_per_epoch": 8, "lr": 0.003, "seed": 1,
    }
    config.update(overrides)
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@needs_shared_data()
def test_short_training_gives_a_loadable_model_whose_loss_went_down(tmp_path):
    config = tiny_config(tmp_path)
    best = train(config, tmp_path / "run", progress=False)
    history = json.loads((tmp_path / "run" / "history.json").read_text())
    assert len(history) == 3 and history[-1]["train_loss"] < history[0]["train_loss"]
    net, sha = load_model(str(tmp_path / "run" / "best.safetensors"))
    assert net.card.trained and net.card.metrics["validation"]["epoch"] == best["epoch"]
    # interrupted after epoch 2 and resumed: the same run, epoch for epoch (deterministic with the seed)
    train(config, tmp_path / "sliced", progress=False, stop_after_epochs=2)
    assert len(json.loads((tmp_path / "sliced" / "history.json").read_text())) == 2
    train(config, tmp_path / "sliced", resume=True, progress=False)
    sliced = json.loads((tmp_path / "sliced" / "history.json").read_text())
    assert [e["train_loss"] for e in sliced] == [e["train_loss"] for e in history]


@needs_shared_data()
def test_epochs_override_sets_the_epochs_run_and_is_recorded_in_the_card(tmp_path):
    train(tiny_config(tmp_path, steps_per_epoch=2), tmp_path / "run", progress=False, epochs=1)
    assert len(json.loads((tmp_path / "run" / "history.json").read_text())) == 1
    net, _ = load_model(str(tmp_path / "run" / "best.safetensors"))
    assert net.card.training["config_values"]["epochs"] == 1


def test_config_errors_name_the_field(tmp_path):
    path = tiny_config(tmp_path, crop_px=100)
    with pytest.raises(GeosegError, match="crop_px: .*multiple of 32"):
        load_config(path)
    path = tiny_config(tmp_path, sources=[{"kind": "chips", "images": "x"}])
    with pytest.raises(GeosegError, match=r"sources\.0\.chips\.masks: Field required"):
        load_config(path)
    path = tiny_config(tmp_path, building_class=5)
    with pytest.raises(GeosegError, match="building_class"):
        load_config(path)


def test_init_from_seeds_a_three_class_model_from_a_two_class_one(tmp_path):
    import torch

    from geoseg.card import ModelCard
    from geoseg.model import SegmentationModel, init_weights_from, save_model

    def card(classes):
        return ModelCard(name="m", architecture="unet", encoder="resnet18", classes=classes, building_class=1,
                         bands=["red", "green", "blue"], gsd_m=0.3)

    torch.manual_seed(0)
    two = SegmentationModel(card(["background", "building"]))
    save_model(two, tmp_path / "two.safetensors", half=False)
    three = SegmentationModel(card(["background", "building", "building_separator"]))
    fresh_row = three.head[0].weight[2].detach().clone()
    sha = init_weights_from(three, tmp_path / "two.safetensors")
    assert len(sha) == 64
    assert torch.equal(three.encoder.conv1.weight, two.encoder.conv1.weight)
    assert torch.equal(three.head[0].weight[:2], two.head[0].weight)
    assert torch.equal(three.head[0].weight[2], fresh_row)  # the new class keeps its own initialisation
    other = SegmentationModel(ModelCard(name="m", architecture="unet", encoder="resnet34", classes=["a", "b"],
                                        building_class=1, bands=["red", "green", "blue"], gsd_m=0.3))
    with pytest.raises(GeosegError, match="init_from"):
        init_weights_from(other, tmp_path / "two.safetensors")


def test_validation_gives_each_place_one_vote_in_the_place_mean():
    """A big place must not hide a small one: the place mean weighs places, not pixels."""
    import numpy as np
    import torch

    from geoseg.card import ModelCard
    from geoseg.datasets import LabelledScene
    from geoseg.model import build_model
    from geoseg.train import validate

    card = ModelCard(name="t", architecture="fastscnn", encoder="", classes=["background", "building"],
                     building_class=1, bands=["red", "green", "blue"], gsd_m=0.3)
    torch.manual_seed(0)
    net = build_model(card).eval()
    pixels = np.random.default_rng(0).random((3, 64, 64), dtype=np.float32)
    labels = np.zeros((64, 64), np.uint8)
    labels[:, 48:] = 1  # a quarter building; the small place three quarters
    scenes = [LabelledScene(f"big/{i}", pixels, labels, "val", "big") for i in range(4)]
    scenes.append(LabelledScene("small/0", pixels, 1 - labels, "val", "small"))
    pooled, per_scene = validate(net, scenes, autocast=False)
    places = pooled["place_building_iou"]
    assert set(places) == {"big", "small"} and set(per_scene) == {s.name for s in scenes}
    assert places == {"big": per_scene["big/0"]["building_iou"], "small": per_scene["small/0"]["building_iou"]}
    assert places["big"] != places["small"]  # else a pixel-weighted mean would pass too
    assert pooled["place_mean_building_iou"] == pytest.approx((places["big"] + places["small"]) / 2, abs=1e-4)
