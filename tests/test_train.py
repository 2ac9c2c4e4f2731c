"""geoseg train on a tiny real subset: a loadable model whose loss went down; resume; config errors."""

import json

import pytest
import yaml

from geoseg.errors import GeosegError
from geoseg.model import load_model
from geoseg.train import load_config, train

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
