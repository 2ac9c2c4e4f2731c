"""BGS-Net gate: ROC thresholds, two-stage rules, recall targeting, binding to the weights, gated decoding."""

import json

import numpy as np
import pytest
import rasterio
import torch

from geoseg.backends import BackendSpec, describe_backend
from geoseg.backends.bgs import BGSBackend
from geoseg.backends.unet import UNetBackend
from geoseg.card import ModelCard
from geoseg.errors import GeosegError
from geoseg.gate import ChannelRule, Gate, calibrate_rules, gate_path, load_gate, rates, youden_threshold
from geoseg.model import SegmentationModel, save_model
from geoseg.pipeline import run_scene

from conftest import atlanta_calibration_config, needs_shared_data, write_scene


def test_youden_threshold_separates_and_knows_direction():
    x = np.array([0.1, 0.2, 0.3, 0.9, 1.0, 1.1])
    positive = np.array([0, 0, 0, 1, 1, 1], bool)
    t, tpr, fpr = youden_threshold(x, positive, higher=True)
    assert 0.3 < t < 0.9 and (tpr, fpr) == (1.0, 0.0)
    t, tpr, fpr = youden_threshold(-x, positive, higher=False)
    assert -0.9 < t < -0.3
    assert (tpr, fpr) == (1.0, 0.0)
    # overlapping: one target below the cut costs TPR, never beyond the best J
    x2 = np.array([0.1, 0.2, 0.95, 0.3, 0.9, 1.0])
    _, tpr, fpr = youden_threshold(x2, np.array([0, 0, 0, 1, 1, 1], bool), True)
    assert tpr - fpr == pytest.approx(2 / 3)


def synthetic_tiles(n=600, seed=0, lower=True):
    """Channel 3 is higher and channel 5 lower on building tiles; a confounder (1/4 of the empty tiles) also
    raises channel 3 but is recognisable by channel 8; the other channels are noise."""
    rng = np.random.default_rng(seed)
    means = rng.normal(0, 1, (n, 12))
    target = rng.random(n) < 0.3
    confounder = ~target & (rng.random(n) < 0.25)
    means[target, 3] += 2.5
    means[target, 5] -= 1.5 if lower else 0.0
    means[confounder, 3] += 2.5
    means[confounder, 8] += 3.0
    return means, target, confounder


def test_calibration_finds_the_channels_and_filters_the_confounder():
    means, target, confounder = synthetic_tiles()
    stage1, _, _ = calibrate_rules(means, target, k1=2, k2=0)
    assert {(r.channel, r.higher) for r in stage1} == {(3, True), (5, False)}
    # without channel 5, stage 1's false alarms are mostly the confounder, which channel 8 gives away
    means, target, confounder = synthetic_tiles(lower=False)
    stage1, stage2, report = calibrate_rules(means, target, k1=1, k2=1)
    assert [(r.channel, r.higher) for r in stage1] == [(3, True)]
    assert [(r.channel, r.higher) for r in stage2] == [(8, True)]
    first, gate = report["stage1_only"], report["gate"]
    assert gate["execution_rate"] < first["execution_rate"] and gate["precision"] > first["precision"]
    opened = Gate("x", 12, stage1, stage2).open(means)
    assert rates(opened, target) == gate
    assert opened[confounder].mean() < 0.2  # most confounder tiles are skipped


@pytest.mark.parametrize("recall", [0.9, 0.99])
def test_target_recall_is_met_at_a_lower_execution_rate_than_a_looser_gate(recall):
    means, target, _ = synthetic_tiles(seed=1)
    stage1, stage2, report = calibrate_rules(means, target, k1=2, k2=1, target_recall=recall)
    opened = Gate("x", 12, stage1, stage2).open(means)
    assert rates(opened, target)["recall"] >= recall
    # any looser stage-1 (all thresholds 0.1 sigma more permissive) opens at least as many tiles
    sigma = means.std(0)
    looser = [ChannelRule(r.channel, r.threshold - 0.1 * sigma[r.channel] if r.higher else r.threshold + 0.1 * sigma[r.channel], r.higher) for r in stage1]
    assert Gate("x", 12, looser, stage2).open(means).sum() >= opened.sum()


def test_calibration_refuses_one_sided_data():
    means, _, _ = synthetic_tiles()
    with pytest.raises(GeosegError, match="with and without buildings"):
        calibrate_rules(means, np.ones(len(means), bool))


def small_model(tmp_path, classes=("background", "building")):
    torch.manual_seed(0)
    card = ModelCard(name="small", architecture="unet", encoder="resnet18", classes=list(classes), building_class=1,
                     bands=["red", "green", "blue"], gsd_m=0.3, trained=False)
    path = tmp_path / "small.safetensors"
    sha = save_model(SegmentationModel(card), path, half=False)
    return path, sha


def test_gate_file_is_bound_to_the_weights(tmp_path):
    path, sha = small_model(tmp_path)
    Gate("f" * 64, 512, [ChannelRule(0, 0.0, True)]).to_json(gate_path(path))
    with pytest.raises(GeosegError, match="calibrated for other weights"):
        load_gate(path, sha)
    with pytest.raises(GeosegError, match="calibrated for other weights"):
        describe_backend(BackendSpec("bgs", str(path)))
    gate_path(path).unlink()
    with pytest.raises(GeosegError, match="no calibrated gate"):
        describe_backend(BackendSpec("bgs", str(path)))


def test_gated_backend_decodes_only_opened_tiles_exactly_as_dense(tmp_path):
    path, sha = small_model(tmp_path, classes=("background", "building", "road"))
    dense = UNetBackend(str(path), precision="fp32")
    rng = np.random.default_rng(0)
    pixels = rng.random((4, 3, 96, 80)).astype(np.float32)
    with torch.inference_mode():
        bottleneck = dense.net.encode(dense.net.prepare(torch.from_numpy(pixels)))[-1]
    channel = 7
    means = bottleneck[:, channel].mean((1, 2)).numpy()
    threshold = float(np.sort(means)[1] + np.sort(means)[2]) / 2  # opens exactly the two highest tiles
    probe_w = np.zeros((3, 512))
    probe_b = np.array([0.0, 5.0, 1.0])  # the probe favours building: it must be zeroed for skipped tiles
    Gate(sha, 512, [ChannelRule(channel, threshold, True)], [], probe_w.tolist(), probe_b.tolist()).to_json(gate_path(path))
    gated = BGSBackend(str(path), precision="fp32")
    out, reference = gated.predict(pixels), dense.predict(pixels)
    opened = means > threshold
    assert out.decoded == 2 and out.probabilities.shape == reference.probabilities.shape
    np.testing.assert_allclose(out.probabilities[opened], reference.probabilities[opened], atol=1e-3)  # float16
    skipped = out.probabilities[~opened]
    assert (skipped[:, 1] == 0).all()
    expected_road = np.exp(1.0) / (1 + np.exp(1.0))  # softmax over background 0 and road 1 once building is dropped
    np.testing.assert_allclose(skipped[:, 2], expected_road, atol=1e-3)
    np.testing.assert_allclose(skipped.sum(1, dtype=np.float32), 1.0, atol=2e-3)
    assert json.loads(gate_path(path).read_text())["model_sha256"] == sha


@pytest.mark.parametrize("opens", ["all", "none"])
def test_pipeline_with_a_gate_that_opens_all_equals_dense_and_one_that_opens_none_finds_nothing(tmp_path, fast_options, opens):
    path, sha = small_model(tmp_path)
    threshold = -1e9 if opens == "all" else 1e9
    gate = Gate(sha, 512, [ChannelRule(0, threshold, True)])
    rng = np.random.default_rng(1)
    scene = write_scene(tmp_path / "scene.tif", rng.integers(0, 255, (3, 150, 200), dtype=np.uint8))
    dense = run_scene(scene, tmp_path / "dense", fast_options, backend=UNetBackend(str(path), precision="fp32"))
    gated = run_scene(scene, tmp_path / "gated", fast_options, backend=BGSBackend(str(path), precision="fp32", gate=gate))
    assert gated.tiles_encoded == dense.tiles_encoded > 1
    with rasterio.open(tmp_path / "dense" / "scene" / "probability.tif") as a, \
            rasterio.open(tmp_path / "gated" / "scene" / "probability.tif") as b:
        if opens == "all":
            assert gated.decoder_execution_rate == 1.0
            np.testing.assert_array_equal(a.read(), b.read())
        else:
            assert gated.tiles_decoded == 0 and gated.decoder_execution_rate == 0.0
            assert b.read().max() == 0 and gated.buildings == 0


@needs_shared_data()
def test_calibrate_on_real_tiles_writes_a_bound_gate_and_its_plot(tmp_path):
    from geoseg.calibrate import calibrate
    from geoseg.card import file_sha256, resolve_model_path

    path = atlanta_calibration_config(tmp_path)
    gate, out = calibrate(None, [str(path)], out=str(tmp_path / "g.gate.json"), tile_px=256, k1=3, k2=1)
    assert gate.model_sha256 == file_sha256(resolve_model_path(None))
    c = gate.calibration
    assert c["tiles"] == 30 and 0 < c["target_tiles"] < 30  # 1136 x 1500 px at 0.3 m in 256 px tiles: 5 x 6
    assert out.exists() and out.with_suffix(".png").stat().st_size > 1000
    assert Gate.from_json(out).stage1 == gate.stage1
