"""Training the bottleneck for the gate (GateProbe, ``gate_aux``), configs built on a base, and the calibration
reports per place (groups, false alarms)."""

import json

import numpy as np
import pytest
import torch
import yaml

from geoseg.calibrate import false_alarms_by_group, scene_tiles
from geoseg.datasets import IGNORE, LabelledScene
from geoseg.errors import GeosegError
from geoseg.losses import GateProbe
from geoseg.config import load_config
from geoseg.train import train

from conftest import SHARED_DATA, needs_shared_data
from test_train import tiny_config


def test_probe_targets_follow_the_gates_tile_definition():
    probe = GateProbe(channels=2, weight=0.1, target_fraction=0.005, building_classes=[1, 2])
    y = torch.zeros(4, 100, 100, dtype=torch.long)
    y[0, :1, :60] = 1  # 60 of 10000 px: 0.6 % building -> target
    y[1, :1, :40] = 2  # 0.4 % separator -> not a target
    y[2] = IGNORE  # nothing labelled: counts nowhere
    y[3, :50] = IGNORE  # half unknown: 40 of the 5000 labelled px = 0.8 % -> target
    y[3, 50:51, :40] = 1
    target, usable = probe.targets(y)
    assert target.tolist() == [1.0, 0.0, 0.0, 1.0] and usable.tolist() == [True, True, False, True]


def test_probe_teaches_single_channels_to_separate_tiles_with_buildings():
    """Gradient steps through the probe alone move the first channels' means apart for the two kinds of crop
    (and leave the channels it does not read untouched)."""
    torch.manual_seed(0)
    probe = GateProbe(channels=3, weight=1.0, target_fraction=0.005, building_classes=[1])
    bottleneck = torch.randn(8, 6, 2, 2, requires_grad=True)
    y = torch.zeros(8, 32, 32, dtype=torch.long)
    y[:4, :8, :8] = 1
    optimiser = torch.optim.SGD([bottleneck, *probe.parameters()], lr=5.0)
    start = bottleneck.detach().clone()
    for _ in range(300):
        loss, logs = probe(bottleneck, y)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    def separated(means):  # per channel: does one threshold put every building crop on one side?
        signed = means[:, :3] * torch.sign(probe.scale.detach())
        return (signed[:4].min(0).values > signed[4:].max(0).values).tolist()

    assert separated(start.mean((2, 3))) != [True] * 3
    assert separated(bottleneck.detach().mean((2, 3))) == [True] * 3 and logs["gate_aux_accuracy"] == 1.0
    assert torch.equal(bottleneck.detach()[:, 3:], start[:, 3:])


def test_probe_on_crops_without_labels_adds_nothing():
    probe = GateProbe(channels=2, weight=0.1, target_fraction=0.005, building_classes=[1])
    loss, logs = probe(torch.randn(2, 4, 2, 2), torch.full((2, 8, 8), IGNORE, dtype=torch.long))
    assert float(loss) == 0.0 and logs == {}


def test_a_config_can_start_from_a_base_and_replace_fields(tmp_path):
    base = tiny_config(tmp_path, epochs=7)
    (tmp_path / "variant.yaml").write_text(yaml.safe_dump({"base": base.name, "epochs": 2, "gate_aux": {"weight": 0.3}}))
    config, root = load_config(tmp_path / "variant.yaml")
    assert config.epochs == 2 and config.gate_aux.weight == 0.3 and config.gate_aux.channels == 8
    assert config.sources == load_config(base)[0].sources and root == SHARED_DATA.resolve()
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump({"base": "missing.yaml"}))
    with pytest.raises(GeosegError, match="base: no such config file"):
        load_config(tmp_path / "bad.yaml")
    (tmp_path / "chain.yaml").write_text(yaml.safe_dump({"base": "variant.yaml"}))
    with pytest.raises(GeosegError, match="no base of its own"):
        load_config(tmp_path / "chain.yaml")


@needs_shared_data()
def test_training_with_gate_aux_logs_the_probe_and_resumes_it(tmp_path):
    config = tiny_config(tmp_path, epochs=2, steps_per_epoch=3, gate_aux={"weight": 0.2, "channels": 4})
    train(config, tmp_path / "run", progress=False)
    history = json.loads((tmp_path / "run" / "history.json").read_text())
    assert all(0 < e["gate_aux_loss"] and 0 <= e["gate_aux_accuracy"] <= 1 for e in history)
    train(config, tmp_path / "sliced", progress=False, stop_after_epochs=1)
    train(config, tmp_path / "sliced", resume=True, progress=False)
    sliced = json.loads((tmp_path / "sliced" / "history.json").read_text())
    assert [e["gate_aux_loss"] for e in sliced] == [e["gate_aux_loss"] for e in history]
    saved = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    assert saved["gate_probe"]["scale"].shape == (4,)


@needs_shared_data()  # the tiny config reads Atlanta: without it the data error comes first
def test_gate_aux_is_refused_for_models_without_a_decoder_gate(tmp_path):
    config = tiny_config(tmp_path, architecture="maskrcnn-light", gate_aux={"weight": 0.1})
    with pytest.raises(GeosegError, match="gate_aux: only encoder-decoder models"):
        train(config, tmp_path / "run", progress=False)


def test_false_alarms_are_counted_per_place_on_tiles_without_buildings():
    groups = np.array(["forest", "forest", "forest", "town", "town", "desert"])
    target = np.array([False, False, False, True, False, False])
    opened = np.array([True, False, False, True, True, False])
    report = false_alarms_by_group(groups, opened, target)
    assert report == {"desert": {"non_target_tiles": 1, "false_alarms": 0, "false_alarm_rate": 0.0},
                      "forest": {"non_target_tiles": 3, "false_alarms": 1, "false_alarm_rate": 0.3333},
                      "town": {"non_target_tiles": 1, "false_alarms": 1, "false_alarm_rate": 1.0}}


def test_calibration_tiles_can_be_cut_as_geoseg_run_cuts_them():
    scene = LabelledScene("s", np.zeros((3, 1000, 1000), np.float32), np.zeros((1000, 1000), np.uint8), "val")
    assert len(list(scene_tiles(scene, 512))) == 4  # 0 and 488 in each direction
    tiles = list(scene_tiles(scene, 512, overlap_px=64))
    assert len(tiles) == 9 and all(p.shape == (3, 512, 512) for p, _ in tiles)  # 0, 448, 488


def test_calibration_groups_are_places_or_scene_folders():
    from geoseg.calibrate import TileSet, tile_groups

    tiles = TileSet(source=["dubai/tile_1/image_part_002", "dubai/tile_2/image_part_001", "banepa:train"],
                    place=["dubai", "dubai", "banepa"])
    assert tile_groups(tiles, "place").tolist() == ["dubai", "dubai", "banepa"]
    assert tile_groups(tiles, "folder").tolist() == ["dubai/tile_1", "dubai/tile_2", "banepa:train"]
    with pytest.raises(GeosegError, match="--group-by 'town'"):
        tile_groups(tiles, "town")
