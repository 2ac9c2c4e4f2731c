"""The learned gate (a logistic head on all channel means) and the cascade (a thumbnail pre-gate before the
encoder): fitting, thresholds for a recall target, files bound to the weights, and runs through the pipeline."""

import json
import subprocess
import sys

import numpy as np
import pytest
import rasterio
import torch

from geoseg.backends import BackendSpec, describe_backend, resolve_spec
from geoseg.backends.bgs import BGSBackend
from geoseg.backends.unet import UNetBackend
from geoseg.card import ModelCard
from geoseg.errors import GeosegError
from geoseg.gate import ChannelRule, Gate, LinearHead, fit_linear_head, gate_path, pregate_path, recall_threshold
from geoseg.model import SegmentationModel, save_model
from geoseg.pipeline import run_scene
from geoseg.calibrate import building_cells, held_scenes
from geoseg.pregate import PreGate, ThumbNet, load_pregate, score_thumbnails, thumbnails, train_thumbnet

from conftest import atlanta_calibration_config, needs_shared_data, write_scene


def small_model(tmp_path):
    torch.manual_seed(0)
    card = ModelCard(name="small", architecture="unet", encoder="resnet18", classes=["background", "building"],
                     building_class=1, bands=["red", "green", "blue"], gsd_m=0.3, trained=False)
    path = tmp_path / "small.safetensors"
    return path, save_model(SegmentationModel(card), path, half=False)


def test_recall_threshold_holds_in_every_group_not_only_pooled():
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.1, 0.2, 0.3, 0.05, 0.5, 0.4])
    target = np.array([1, 1, 1, 1, 1, 1, 1, 1, 0, 0], bool)
    groups = np.array(["a"] * 4 + ["b"] * 4 + ["a", "b"])
    pooled = recall_threshold(scores, target, None, 0.75)
    assert pooled == pytest.approx(0.2) and (scores[target] >= pooled).mean() >= 0.75
    worst = recall_threshold(scores, target, groups, 0.75, min_group_targets=4)
    assert worst == pytest.approx(0.1)  # group b's building tiles score low: 3 of its 4 must still pass
    for g in "ab":
        rows = target & (groups == g)
        assert (scores[rows] >= worst).mean() >= 0.75


def test_learned_head_separates_what_no_single_channel_does_and_keeps_recall_out_of_place():
    rng = np.random.default_rng(0)
    n = 600
    target = rng.random(n) < 0.4
    groups = np.array(["p1", "p2", "p3"])[rng.integers(0, 3, n)]
    means = rng.normal(0, 1, (n, 20))
    # the building signal is the *difference* of two channels; each alone carries almost none
    shared = rng.normal(0, 3, n)
    means[:, 0] = shared + np.where(target, 1.5, -1.5)
    means[:, 1] = shared
    scenes = np.arange(n) // 20  # 30 scenes of 20 tiles
    head, report = fit_linear_head(means, target, groups, scenes, target_recall=0.95, l2=1.0, min_group_targets=10)
    assert report["out_of_fold"]["recall"] >= 0.95
    assert report["on_calibration_tiles"]["execution_rate"] < 0.6  # it skips most empty tiles
    weights = np.abs(head.weight)
    assert weights[:2].min() > 3 * weights[2:].max()  # it found the two channels
    fresh = rng.normal(0, 1, (200, 20))
    t2 = rng.random(200) < 0.5
    s2 = rng.normal(0, 3, 200)
    fresh[:, 0], fresh[:, 1] = s2 + np.where(t2, 1.5, -1.5), s2
    opened = head.open(fresh)
    assert opened[t2].mean() >= 0.9 and opened[~t2].mean() < 0.3


def test_gate_file_keeps_the_learned_head_and_the_rule_can_be_chosen(tmp_path):
    head = LinearHead([1.0, -1.0], 0.5, [0.0, 0.0], [1.0, 1.0], 0.0)
    gate = Gate("a" * 64, 2, [ChannelRule(0, 10.0, True)], linear=head)
    gate.to_json(tmp_path / "g.gate.json")
    back = Gate.from_json(tmp_path / "g.gate.json")
    assert back.linear == head and back.rule == "paper"
    means = np.array([[0.0, 0.0], [0.0, 2.0], [20.0, 0.0]])
    assert back.open(means).tolist() == [False, False, True]  # the paper's rule: channel 0 > 10
    linear = back.with_rule("linear")
    assert linear.open(means).tolist() == [True, False, True] and linear.channels == [0, 1]
    with pytest.raises(GeosegError, match="no learned head"):
        Gate("a" * 64, 2, [ChannelRule(0, 1.0, True)]).with_rule("linear")
    with pytest.raises(GeosegError, match="use one of"):
        back.with_rule("mlp")


def test_thumbnails_average_blocks_and_the_net_maps_cells_of_any_tile_size():
    x = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).reshape(2, 3, 8, 8)
    t = thumbnails(x, 4)
    assert t.shape == (2, 3, 2, 2) and t[0, 0, 0, 0] == x[0, 0, :4, :4].mean()
    assert thumbnails(torch.ones(1, 3, 10, 10), 4).shape == (1, 3, 3, 3)  # ceil: the last partial block kept
    net = ThumbNet(3).eval()
    with torch.inference_mode():
        assert net(torch.zeros(2, 3, 128, 128)).shape == (2, 32, 32)  # a 512 px tile: 32 x 32 cells of 16 px
        assert net(torch.zeros(1, 3, 19, 33)).shape == (1, 5, 9) and net.tile_logits(torch.zeros(1, 3, 19, 33)).shape == (1,)
    labels = np.zeros((40, 40), np.uint8)
    labels[0:16, 16:18] = 1  # 32 of a cell's 256 px: building
    labels[16:32, 0:1] = 1  # 16 of 256 (6 %): building
    labels[32:, :] = 255  # the last row of cells: 8 px tall, unlabelled -> unknown
    # the last column of cells is 8 px wide: half of each cell is labelled, which still counts
    cells = building_cells(labels, [1])
    assert cells.tolist() == [[0, 1, 0], [1, 0, 0], [255, 255, 255]]


def test_thumbnet_learns_where_small_roofs_are_from_their_outlines():
    rng = np.random.default_rng(0)
    thumbs, cells, target = [], [], []
    for i in range(120):
        tile = rng.normal(0, 0.3, (3, 64, 64)).astype(np.float32)
        labels = np.zeros((64, 64), np.uint8)
        if i % 2 == 0:  # two 12 px "roofs" at random places
            for _ in range(2):
                r, c = rng.integers(0, 52, 2)
                tile[:, r : r + 12, c : c + 12] += 2.0
                labels[r : r + 12, c : c + 12] = 1
        thumbs.append(thumbnails(torch.from_numpy(tile)[None])[0])
        cells.append(building_cells(labels, [1]))
        target.append(i % 2 == 0)
    target = np.array(target)
    groups = np.array(["a", "b"] * 60)
    net = train_thumbnet(thumbs[:80], cells[:80], target[:80], groups[:80], steps=120, batch=16)
    with torch.inference_mode():
        logits = net.tile_logits(torch.stack(thumbs[80:])).numpy()
    auc = (logits[target[80:]][:, None] > logits[~target[80:]][None]).mean()
    assert auc > 0.95  # on tiles it never saw


def test_pregate_file_round_trips_and_is_bound_to_the_weights(tmp_path):
    path, sha = small_model(tmp_path)
    torch.manual_seed(0)
    pre = PreGate(ThumbNet(3).eval(), threshold=0.25, factor=4, model_sha256=sha, calibration={"why": "test"})
    pre.save(pregate_path(path))
    back = load_pregate(path, sha)
    x = torch.randn(3, 3, 64, 48)
    assert back.threshold == 0.25 and back.factor == 4 and back.calibration == {"why": "test"}
    torch.testing.assert_close(back.logits(x), pre.logits(x))
    with pytest.raises(GeosegError, match="other weights"):
        load_pregate(path, "0" * 64)
    Gate(sha, 512, [ChannelRule(0, -1e9, True)]).to_json(gate_path(path))
    describe_backend(BackendSpec("bgs", str(path), cascade=True))  # present and bound: accepted on the driver
    PreGate(ThumbNet(3), 0.0, 4, "0" * 64).save(pregate_path(path))
    with pytest.raises(GeosegError, match="other weights"):
        describe_backend(BackendSpec("bgs", str(path), cascade=True))
    pregate_path(path).unlink()
    with pytest.raises(GeosegError, match="geoseg calibrate --pregate"):
        describe_backend(BackendSpec("bgs", str(path), cascade=True))
    with pytest.raises(GeosegError, match="applies to the gated backend"):
        describe_backend(BackendSpec("unet", str(path), cascade=True))
    with pytest.raises(GeosegError, match="applies to the gated backend"):
        describe_backend(BackendSpec("unet", str(path), gate="linear"))
    with pytest.raises(GeosegError, match="no learned head"):
        describe_backend(BackendSpec("bgs", str(path), gate="linear"))
    assert resolve_spec(BackendSpec("auto", str(path))).gate == "paper"  # the file's own rule, for summary.json


@pytest.mark.parametrize("passes", ["all", "none", "some"])
def test_cascade_in_the_pipeline(tmp_path, fast_options, passes):
    """A pre-gate that passes every tile changes nothing (same bytes as the gate alone); one that passes none
    finds nothing and decodes nothing; one that passes some sends exactly those to the encoder, and they come
    out as without the cascade."""
    path, sha = small_model(tmp_path)
    Gate(sha, 512, [ChannelRule(0, -1e9, True)]).to_json(gate_path(path))  # the gate opens every tile
    rng = np.random.default_rng(1)
    pixels = rng.integers(0, 255, (3, 150, 400), dtype=np.uint8)
    pixels[:, :, 224:] //= 8  # dark on the right: the last column of tiles (272-400 px) is all dark
    scene = write_scene(tmp_path / "scene.tif", pixels)
    torch.manual_seed(0)
    net = ThumbNet(3).eval()
    with torch.no_grad():  # a net whose cells are band 1 of the thumbnail, rectified: bright tiles pass
        for m in net.features:
            if isinstance(m, torch.nn.Conv2d):
                m.weight.zero_()
                m.weight[0, 0, 1, 1] = 1.0
            elif isinstance(m, torch.nn.BatchNorm2d):
                m.reset_parameters()
                m.eval()
        net.head.weight.zero_()
        net.head.weight[0, 0] = 1.0
        net.head.bias.zero_()
    threshold = {"all": -1e9, "none": 1e9, "some": 0.1}[passes]
    PreGate(net, threshold, 4, sha).save(pregate_path(path))
    plain = run_scene(scene, tmp_path / "plain", fast_options, backend=BGSBackend(str(path), precision="fp32"))
    cascade = run_scene(scene, tmp_path / "cascade", fast_options,
                        backend=BGSBackend(str(path), precision="fp32", cascade=True))
    assert cascade.tiles_encoded == plain.tiles_encoded > 1
    past = cascade.as_dict()["tiles_past_pregate"]
    assert cascade.as_dict()["gate_rule"] == plain.as_dict()["gate_rule"] == "paper"  # the rule's name, not the gate
    assert cascade.as_dict()["encoder_execution_rate"] == round(past / cascade.tiles_encoded, 4)
    with rasterio.open(tmp_path / "plain" / "scene" / "probability.tif") as a, \
            rasterio.open(tmp_path / "cascade" / "scene" / "probability.tif") as b:
        p, c = a.read(1), b.read(1)
    if passes == "all":
        assert past == cascade.tiles_encoded and cascade.tiles_decoded == plain.tiles_decoded
        np.testing.assert_array_equal(p, c)
    elif passes == "none":
        assert past == 0 and cascade.tiles_decoded == 0 and c.max() == 0 and cascade.buildings == 0
    else:
        assert 0 < past < cascade.tiles_encoded and cascade.tiles_decoded == past
        assert c[:, 320:].max() == 0 and p[:, 320:].max() > 0  # the dark tiles never reached the encoder
        assert np.abs(c[:, :90].astype(int) - p[:, :90]).max() <= 1  # bright tiles decoded as before


def test_cascade_flag_errors_on_the_command_line(tmp_path):
    path, sha = small_model(tmp_path)
    scene = write_scene(tmp_path / "scene.tif", np.zeros((3, 64, 64), np.uint8) + 100)
    Gate(sha, 512, [ChannelRule(0, -1e9, True)]).to_json(gate_path(path))
    result = subprocess.run([sys.executable, "-m", "geoseg.cli", "run", str(scene), "-o", str(tmp_path / "o"),
                             "--model", str(path), "--cascade", "--workers", "0", "--quiet"],
                            capture_output=True, text=True)
    assert result.returncode != 0 and "geoseg calibrate --pregate" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    result = subprocess.run([sys.executable, "-m", "geoseg.cli", "run", str(scene), "-o", str(tmp_path / "o"),
                             "--model", str(path), "--gate", "mlp", "--workers", "0", "--quiet"],
                            capture_output=True, text=True)
    assert result.returncode != 0 and "--gate" in result.stderr


def test_a_model_the_run_cannot_use_is_refused_before_a_cluster_starts(tmp_path):
    """With --workers given, the choice of cluster used to skip resolving the model: a missing pre-gate was found
    after two workers had started, and their close often printed a traceback under the one-line error."""
    from geoseg.pipeline import RunOptions, run_workers

    path, sha = small_model(tmp_path)
    scene = write_scene(tmp_path / "scene.tif", np.zeros((3, 64, 64), np.uint8) + 100)
    Gate(sha, 512, [ChannelRule(0, -1e9, True)]).to_json(gate_path(path))
    for workers in (None, 0, 2):
        with pytest.raises(GeosegError, match="no pre-gate"):
            run_workers([str(scene)], RunOptions(model=str(path), backend="bgs", cascade=True, workers=workers))
    assert run_workers([str(scene)], RunOptions(model=str(path), backend="bgs", workers=2)) == 2


def test_threshold_tiles_are_whole_scenes_or_the_bottom_of_a_lone_scene():
    places = np.array(["a"] * 8 + ["b"] * 3)
    scenes = np.array(["a1", "a1", "a2", "a3", "a4", "a4", "a5", "a6", "b1", "b1", "b1"])
    held = held_scenes(places, scenes)
    assert held.tolist() == [False] * 4 + [True, True] + [False] * 5  # a's fourth scene; b has one scene: training
    lone = held_scenes(np.array(["c"] * 8), np.array(["c1"] * 8))
    assert lone.tolist() == [False] * 6 + [True] * 2  # nothing else to hold out: the last quarter of its tiles


def test_thumbnails_of_several_sizes_score_in_batches_as_one_by_one():
    torch.manual_seed(0)
    net = ThumbNet(3).eval()
    thumbs = [torch.randn(3, 32, 32) for _ in range(5)] + [torch.randn(3, 20, 12) for _ in range(3)]
    with torch.inference_mode():
        one_by_one = np.array([float(net.tile_logits(t[None])[0]) for t in thumbs])
    np.testing.assert_allclose(score_thumbnails(net, thumbs, batch=2), one_by_one, rtol=1e-4, atol=1e-4)


@needs_shared_data()
def test_calibrate_pregate_on_one_labelled_image_writes_a_bound_pregate(tmp_path):
    from geoseg.calibrate import calibrate_pregate
    from geoseg.card import file_sha256, resolve_model_path

    path = atlanta_calibration_config(tmp_path)
    pre, out = calibrate_pregate(None, [str(path)], steps=10, out=str(tmp_path / "p.pregate.safetensors"))
    c = pre.calibration
    assert pre.model_sha256 == file_sha256(resolve_model_path(None)) and out.exists()
    assert c["threshold_tiles"] > 0 and c["held_out"]["recall"] >= 0.99  # one scene: its bottom rows chose it
    assert PreGate.load(out).threshold == pre.threshold
