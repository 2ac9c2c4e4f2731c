"""The user's own ground (issue 24): ``geoseg finetune`` from a few labelled buildings, ``geoseg run --adapt``
without labels, and the training recipe's mixing across places. Every bad input of ``finetune`` is refused with
one line before any training; the real fits here run a few steps of the shipped default on a small scene."""

from __future__ import annotations

import json
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import shapely
import torch
from affine import Affine

from conftest import write_scene
from geoseg.cli import main
from geoseg.datasets import IGNORE, LabelledScene
from geoseg.errors import GeosegError

GSD_M = 0.3
TRANSFORM = Affine(GSD_M, 0, 452_000.0, 0, -GSD_M, 40_000.0)


def _houses(size=192, seed=0):
    """A scene of bright roofs on dark ground, and their outlines (EPSG:32636)."""
    rng = np.random.default_rng(seed)
    data = rng.integers(20, 70, (3, size, size)).astype("uint8")
    boxes = []
    for r in range(12, size - 30, 40):
        for c in range(12, size - 30, 44):
            data[:, r:r + 20, c:c + 26] = rng.integers(190, 240)
            boxes.append(shapely.box(*(TRANSFORM @ (c, r + 20)), *(TRANSFORM @ (c + 26, r))))
    return data, gpd.GeoDataFrame(geometry=boxes, crs="EPSG:32636")


@pytest.fixture
def own_ground(tmp_path):
    data, outlines = _houses()
    scene = write_scene(tmp_path / "scene.tif", data, transform=TRANSFORM)
    outlines.to_file(tmp_path / "labels.gpkg")
    return scene, tmp_path / "labels.gpkg"


def _finetune(args, capsys):
    code = main(["finetune", *map(str, args), "--quiet"])
    return code, capsys.readouterr()


def test_finetune_writes_a_model_the_pipeline_uses(tmp_path, own_ground, capsys):
    scene, labels = own_ground
    out = tmp_path / "mine.safetensors"
    code, printed = _finetune([scene, "--labels", labels, "-o", out, "--steps", "2", "--threads", "1"], capsys)
    assert code == 0, printed.err
    card = json.loads(out.with_suffix(".json").read_text())
    record = card["training"]["finetune"]
    assert record["base"] == "buildings-unet-r18" and len(record["base_sha256"]) == 64 and record["steps"] == 2
    assert record["area"] == "the labels' extent" and record["labelled_m2"] > 0
    assert set(card["metrics"]["finetune"]["holdout_before"]) >= {"building_iou", "pixels", "spacenet_f1"}
    after = card["metrics"]["finetune"]["holdout_after"]
    base = json.loads((Path(__file__).parents[1] / "geoseg" / "models" / "buildings-unet-r18.json").read_text())
    assert after["polygons"] < 30  # too few held-out buildings to choose how touching ones are split: the base's
    assert (card["separator_threshold"], card["separator_dilate_px"]) == (base["separator_threshold"],
                                                                          base["separator_dilate_px"])
    assert card["building_threshold"] == base.get("building_threshold")
    assert card["name"] == "mine" and card["trained"]
    assert main(["run", str(scene), "-o", str(tmp_path / "run"), "--model", str(out), "--workers", "0", "--quiet",
                 "--formats", "geojson"]) == 0
    summary = json.loads((tmp_path / "run" / "scene" / "summary.json").read_text())
    assert summary["model"] == "mine" and summary["backend"] == "unet"  # no gate was calibrated for it


def test_finetune_is_the_same_for_the_same_seed(tmp_path, own_ground):
    from geoseg.card import file_sha256
    from geoseg.finetune import finetune

    scene, labels = own_ground
    paths = [finetune([str(scene)], str(labels), str(tmp_path / f"m{i}.safetensors"), steps=2, threads=1,
                      progress=False)[0] for i in range(2)]
    assert file_sha256(paths[0]) == file_sha256(paths[1])


def _write(frame, path):
    frame.to_file(path)
    return path


@pytest.mark.parametrize("kind, message", [
    ("empty", "not a readable vector file"),
    ("points", "must be polygons, found"),
    ("lines", "must be polygons, found"),
    ("no crs", "have no CRS"),
    ("elsewhere", "overlaps none of the images"),
    ("no polygon", "holds no polygon"),
])
def test_finetune_refuses_bad_labels_before_training(tmp_path, own_ground, capsys, kind, message):
    scene, labels = own_ground
    outlines = gpd.read_file(labels)
    path = tmp_path / "bad.gpkg"
    if kind == "empty":
        path = tmp_path / "bad.geojson"
        path.write_text("")
    elif kind == "points":
        _write(outlines.set_geometry(outlines.centroid), path)
    elif kind == "lines":
        _write(outlines.set_geometry(outlines.boundary), path)
    elif kind == "no crs":
        path = _no_crs_shapefile(tmp_path, outlines)
    elif kind == "elsewhere":
        _write(outlines.translate(90_000, 0), path)
    else:
        _write(outlines.iloc[:0], path)
    code, printed = _finetune([scene, "--labels", path, "-o", tmp_path / "m.safetensors"], capsys)
    assert code == 2 and printed.err.startswith("geoseg: error: ") and message in printed.err, printed.err
    assert printed.err.count("\n") == 1 and not (tmp_path / "m.safetensors").exists()


def _no_crs_shapefile(tmp_path, outlines):
    path = tmp_path / "nocrs.shp"
    outlines.set_crs(None, allow_override=True).to_file(path)
    return path


@pytest.mark.parametrize("problem, message", [
    ("vrt image", "VRT files are not accepted"),
    ("not safetensors", "NAME.safetensors"),
    ("no such image", "no such file"),
])
def test_finetune_refuses_what_the_pipeline_would(tmp_path, own_ground, capsys, problem, message):
    scene, labels = own_ground
    out = tmp_path / "m.safetensors"
    if problem == "vrt image":
        (tmp_path / "x.vrt").write_text(f'<VRTDataset rasterXSize="8" rasterYSize="8"><VRTRasterBand dataType="Byte" '
                                        f'band="1"><SimpleSource><SourceFilename>{scene}</SourceFilename></SimpleSource>'
                                        '</VRTRasterBand></VRTDataset>')
        scene = tmp_path / "x.vrt"
    elif problem == "not safetensors":
        out = tmp_path / "m.pt"
    else:
        scene = tmp_path / "nope.tif"
    code, printed = _finetune([scene, "--labels", labels, "-o", out], capsys)
    assert code == 2 and message in printed.err and printed.err.count("\n") == 1, printed.err


def test_the_held_out_strip_is_the_last_rows_with_a_fifth_of_the_labelled_pixels():
    from geoseg.finetune import _with_gap, holdout_rows

    known = np.zeros((100, 50), bool)
    known[10:90, 5:45] = True
    held = holdout_rows(known, 0.2)
    assert held.sum() == pytest.approx(0.2 * known.sum(), rel=0.05)
    rows = np.nonzero(held.any(axis=1))[0]
    assert rows.min() == 74 and rows.max() == 89 and (held <= known).all()
    gap = _with_gap(held)
    assert gap[74 - 32:74].any(axis=1).all() and not gap[:74 - 32].any()


def test_an_area_file_says_where_labels_are_complete(tmp_path, own_ground):
    from geoseg.card import ModelCard, resolve_model_path
    from geoseg.finetune import labelled_ground

    scene, labels = own_ground
    card = ModelCard.from_json(resolve_model_path(None).with_suffix(".json"))
    half = gpd.GeoDataFrame(geometry=[shapely.box(*(TRANSFORM @ (0, 96)), *(TRANSFORM @ (96, 0)))], crs="EPSG:32636")
    half.to_file(tmp_path / "area.gpkg")
    [ground], where = labelled_ground([str(scene)], str(labels), str(tmp_path / "area.gpkg"), card)
    assert "inside --area" in where
    assert (ground.labels != IGNORE).sum() == 96 * 96 and ground.labels.shape == (96, 96)
    [whole], where = labelled_ground([str(scene)], str(labels), None, card)
    assert "labels' extent" in where and (whole.labels != IGNORE).sum() > 96 * 96


# --- --adapt ---------------------------------------------------------------------------------------------------

def test_batchnorm_blend_moves_statistics_the_given_share_towards_the_scene():
    from geoseg.adapt import _batchnorms, blend_batchnorm
    from geoseg.model import load_model

    tiles = [(np.random.default_rng(i).random((3, 64, 64), dtype=np.float32), np.ones((64, 64), bool)) for i in range(2)]
    nets = [load_model(None)[0] for _ in range(3)]
    for net, blend in zip(nets, (0.0, 1.0, 0.5)):
        blend_batchnorm(net, tiles, blend)
    first = [_batchnorms(n)[0].running_mean for n in nets]
    trained = load_model(None)[0]
    assert torch.equal(first[0], _batchnorms(trained)[0].running_mean)
    assert not torch.allclose(first[1], first[0])
    assert torch.allclose(first[2], (first[0] + first[1]) / 2, atol=1e-5)


def test_pseudo_labels_keep_confident_imaged_pixels_only():
    from geoseg.adapt import balanced, pseudo_labels
    from geoseg.model import load_model

    net = load_model(None)[0]
    pixels = np.random.default_rng(0).random((3, 64, 64), dtype=np.float32)
    valid = np.ones((64, 64), bool)
    valid[:, :10] = False
    [labels] = pseudo_labels(net, [(pixels, valid)], 0.9)
    assert (labels[:, :10] == IGNORE).all()
    [none] = pseudo_labels(net, [(pixels, valid)], 1.01)
    assert (none == IGNORE).all()
    scenes = [LabelledScene(f"t{i}", pixels, np.where(np.arange(64) < 32 if i < 2 else False, 1, 0)[None].repeat(64, 0)
                            .astype(np.uint8), "train") for i in range(8)]
    kept, with_buildings = balanced(scenes, [1, 2])
    assert with_buildings == 2 and len(kept) == 3  # both with buildings, one of the six without


def test_flip_averaged_pseudo_labels_are_the_same_for_a_tile_and_its_flips():
    from geoseg.adapt import flip_averaged_probabilities, pseudo_labels
    from geoseg.finetune import class_probabilities
    from geoseg.model import load_model

    net = load_model(None)[0]
    data, _ = _houses(96)
    pixels = data.astype(np.float32) / 255
    plain = class_probabilities(net, pixels, False)
    averaged = flip_averaged_probabilities(net, pixels, False)
    assert not np.allclose(plain, averaged, atol=1e-3)  # the flips do change the probabilities
    for axes in ((2,), (1,), (1, 2)):
        flipped = flip_averaged_probabilities(net, np.ascontiguousarray(np.flip(pixels, axes)), False)
        assert np.allclose(np.flip(flipped, axes), averaged, atol=1e-5)
    valid = np.ones(pixels.shape[1:], bool)
    [labels] = pseudo_labels(net, [(pixels, valid)], 0.0, flips=True)  # bf16 where the CPU has it: near-ties may flip
    assert (labels == averaged.argmax(0)).mean() > 0.99


def test_run_with_adapt_writes_the_adapted_model_and_says_so(tmp_path, own_ground):
    from geoseg.adapt import AdaptSettings, adapt
    from geoseg.card import file_sha256
    from geoseg.gate import gate_path
    from geoseg.pipeline import RunOptions

    scene, _ = own_ground
    opts = RunOptions(workers=0, progress=False)
    reports = [adapt([str(scene)], tmp_path / f"o{i}", opts, AdaptSettings(steps=2, max_tiles=2)) for i in range(2)]
    assert reports[0].steps == 2 and reports[0].tiles == 1 and reports[0].base_model == "buildings-unet-r18"
    assert reports[0].flip_averaged  # one tile: pseudo-labels from flip-averaged probabilities
    plain = adapt([str(scene)], tmp_path / "plain", opts, AdaptSettings(steps=2, max_tiles=2, max_flip_tiles=0))
    assert not plain.flip_averaged and file_sha256(plain.model) != file_sha256(reports[0].model)
    assert file_sha256(reports[0].model) == file_sha256(reports[1].model)  # the same seed, the same weights
    gate = json.loads(gate_path(reports[0].model).read_text())
    assert gate["model_sha256"] == file_sha256(reports[0].model) and "kept_from" in gate["calibration"]
    assert main(["run", str(scene), "-o", str(tmp_path / "run"), "--adapt", "--adapt-budget", "15", "--workers", "0",
                 "--quiet", "--formats", "geojson"]) == 0
    summary = json.loads((tmp_path / "run" / "scene" / "summary.json").read_text())
    assert summary["adapt"]["base_model"] == "buildings-unet-r18" and summary["backend"] == "bgs"
    assert summary["model"] == "buildings-unet-r18-adapted" and summary["adapt"]["tiles"] == 1
    assert (tmp_path / "run" / "adapted" / "buildings-unet-r18-adapted.safetensors").exists()


def test_adapt_refuses_models_it_cannot_adapt_and_bad_budgets(capsys, own_ground, tmp_path):
    scene, _ = own_ground
    for extra, message in ((["--backend", "maskrcnn-light"], "adapting takes an encoder-decoder model"),
                           (["--adapt-budget", "0"], "--adapt-budget")):
        assert main(["run", str(scene), "-o", str(tmp_path / "o"), "--adapt", "--quiet", *extra]) == 2
        assert message in capsys.readouterr().err


# --- the recipe: mixing across places, outline weights ---------------------------------------------------------

def test_histogram_matching_moves_a_crop_to_another_crops_values():
    from geoseg.mixing import match_histogram

    rng = np.random.default_rng(0)
    dark = rng.random((3, 32, 32), dtype=np.float32) * 0.3
    bright = 0.6 + rng.random((3, 40, 40), dtype=np.float32) * 0.4
    full = match_histogram(dark, bright, 1.0)
    assert abs(np.median(full) - np.median(bright)) < 0.02
    assert (np.argsort(full[0], axis=None) == np.argsort(dark[0], axis=None)).mean() > 0.99  # same order of pixels
    assert np.allclose(match_histogram(dark, bright, 0.0), dark)


def test_cutmix_pastes_a_partners_pixels_and_labels_together_and_partners_come_from_other_places():
    from geoseg.mixing import cutmix, mix_batch, partner

    rng = np.random.default_rng(0)
    x, y = np.zeros((3, 64, 64), np.float32), np.zeros((64, 64), np.int64)
    mixed_x, mixed_y = cutmix(x, y, np.ones_like(x), np.ones_like(y), rng)
    assert (mixed_x[0] == mixed_y).all() and 0.05 < mixed_y.mean() < 0.4
    assert all(partner(0, ["a", "a", "b"], rng) == 2 for _ in range(10))
    crops = [(x, y), (np.ones_like(x), np.ones_like(y))]
    state = rng.bit_generator.state
    assert mix_batch(crops, ["a", "b"], rng, 0.0, 0.0) is crops and rng.bit_generator.state == state


def test_boundary_weights_peak_at_building_edges():
    from geoseg.losses import boundary_weights, segmentation_loss

    y = torch.zeros((1, 32, 32), dtype=torch.long)
    y[0, 8:24, 8:24] = 1
    w = boundary_weights(y, [1, 2], weight=5.0, sigma_px=2.0)
    assert w[0, 8, 16] > 5 and w[0, 16, 16] < 1.01 and w[0, 0, 0] < 1.01  # the edge, the middle, far away
    logits = torch.randn((1, 3, 32, 32))
    assert torch.isclose(segmentation_loss(logits, y, torch.ones_like(w)), segmentation_loss(logits, y))


def test_self_training_keeps_the_separators_the_model_draws():
    # a separator is thin and rarely 0.9 alone: it is pseudo-labelled where it is the most probable class and
    # building + separator together are confident (without it, self-training wore separators away in Dhaka)
    from geoseg.adapt import confident_labels
    from geoseg.datasets import IGNORE

    p = np.zeros((3, 1, 5), np.float32)
    p[:, 0, 0] = [0.95, 0.03, 0.02]  # confident background
    p[:, 0, 1] = [0.05, 0.50, 0.45]  # building, not confident: ignored
    p[:, 0, 2] = [0.05, 0.40, 0.55]  # separator, building + separator 0.95: separator
    p[:, 0, 3] = [0.30, 0.20, 0.50]  # separator, but building + separator 0.70: ignored
    p[:, 0, 4] = [0.02, 0.96, 0.02]  # confident building, but no imagery: ignored
    valid = np.array([[True, True, True, True, False]])
    labels = confident_labels(p, valid, 0.9, building_class=1, separator_class=2)
    assert labels.tolist() == [[0, IGNORE, 2, IGNORE, IGNORE]]
    no_separator_class = confident_labels(p, valid, 0.9, building_class=1, separator_class=None)  # the rule is off
    assert no_separator_class.tolist() == [[0, IGNORE, IGNORE, IGNORE, IGNORE]]


def test_fit_recipe_keeps_frozen_parts_and_returns_the_averaged_weights():
    # frozen=("encoder",): the encoder's weights come back as they were, the decoder's do not; ema_decay: the weights
    # returned are the running average of the trained ones, so they lie between the start and plain training's
    from geoseg.finetune import FitRecipe, fit
    from geoseg.model import load_model

    data, _ = _houses(size=96)
    labels = np.zeros(data.shape[1:], np.uint8)
    labels[data[0] > 150] = 1
    scene = LabelledScene("houses", data.astype(np.float32) / 255, labels, "train", place="own")
    start, _ = load_model(None)
    weights = {}
    for name, recipe in [("plain", FitRecipe(crop_px=64, batch=2, lr=1e-3)),
                         ("frozen", FitRecipe(crop_px=64, batch=2, lr=1e-3, frozen=("encoder",))),
                         ("ema", FitRecipe(crop_px=64, batch=2, lr=1e-3, ema_decay=0.5))]:
        net, _ = load_model(None)
        result = fit(net, [scene], None, steps=3, seconds=600, recipe=recipe, progress=False)
        assert result.steps == 3 and all(p.requires_grad for p in net.parameters())
        weights[name] = {k: v.clone() for k, v in net.state_dict().items()}
    first = dict(start.state_dict())
    encoder = [k for k in first if k.startswith("encoder.") and first[k].is_floating_point() and "weight" in k]
    decoder = [k for k in first if k.startswith("decoder.") and first[k].is_floating_point() and "weight" in k]
    assert all(torch.equal(weights["frozen"][k], first[k]) for k in encoder)
    assert any(not torch.equal(weights["frozen"][k], first[k]) for k in decoder)
    assert any(not torch.equal(weights["plain"][k], first[k]) for k in encoder)
    moved = lambda name: sum(float((weights[name][k] - first[k]).abs().sum()) for k in decoder)  # noqa: E731
    assert 0 < moved("ema") < moved("plain")


def test_outline_settings_are_scored_on_the_held_out_pixels_the_fit_is_judged_on(own_ground):
    """The pixel IoU the outline choice sees at the most probable class is the held-out IoU that picks the step;
    a lower building threshold finds at least the same building pixels; the card's own setting is tried first."""
    from geoseg.card import resolve_model_path
    from dataclasses import replace

    from geoseg.finetune import (OutlineSetting, floor_choices, holdout_polygon_scores, holdout_scores,
                                 labelled_ground, outline_choices)
    from geoseg.model import load_model

    scene, labels = own_ground
    net, _ = load_model(resolve_model_path(None))
    grounds, _ = labelled_ground([str(scene)], str(labels), None, net.card)
    choices = outline_choices(net.card)
    own = OutlineSetting.of(net.card)
    assert choices[0] == own and len(set(choices)) == len(choices) >= 4
    argmax = OutlineSetting(None, own.separator_threshold, own.separator_dilate_px)
    low = OutlineSetting(0.2, own.separator_threshold, own.separator_dilate_px)
    scores = holdout_polygon_scores(net, grounds, False, (argmax, low))
    # the same pixels: softmax then most probable class here, logits' argmax there (a pixel whose two top
    # probabilities round to the same float may go either way, hence not exact equality)
    assert scores[argmax]["building_iou"] == pytest.approx(holdout_scores(net, grounds, False)["building_iou"], abs=2e-3)
    assert scores[low]["building_recall"] >= scores[argmax]["building_recall"]
    assert {"spacenet_f1", "building_iou"} <= set(scores[low])
    # the confidence floor, tried after the rest: the same pixels, only outlines under it left out
    floors = floor_choices(own)
    assert floors[0] == own and {f.min_confidence for f in floors} >= {None, 0.5, 0.7}
    assert {replace(f, min_confidence=own.min_confidence) for f in floors} == {own}
    every, none_left = (replace(own, min_confidence=None), replace(own, min_confidence=1.0))
    floored = holdout_polygon_scores(net, grounds, False, (every, none_left))
    assert floored[every]["building_iou"] == floored[none_left]["building_iou"]
    assert floored[none_left]["predicted_polygons"] < floored[every]["predicted_polygons"]
