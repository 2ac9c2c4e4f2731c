"""Shipped models load, and their cards' metrics come from a real evaluation: re-run on the smallest
validation scene recorded in the card, the metric must match (so a card cannot drift from its weights)."""

from importlib import resources
from pathlib import Path

import pytest

from geoseg.card import ModelCard
from geoseg.model import load_model
from geoseg.model import bf16_is_fast
from geoseg.config import TrainConfig, load_scenes
from geoseg.train import validate

from conftest import SHARED_DATA, needs_shared_data

MODELS = sorted(Path(str(resources.files("geoseg.models"))).glob("*.safetensors"))


@pytest.mark.parametrize("weights", MODELS, ids=lambda p: p.stem)
def test_shipped_model_loads_with_a_complete_card(weights):
    net, sha = load_model(str(weights))
    card = net.card
    assert weights.stat().st_size <= 30 * 1024 * 1024 and len(sha) == 64
    assert card.classes and card.gsd_m > 0 and card.bands
    if card.trained:
        assert card.metrics["validation"] and card.training["config_values"] and card.attribution


#: precisions this machine runs models in: fp32 always (``--precision fp32``), bf16 where ``auto`` picks it
PRECISIONS = ["fp32", "bf16"] if bf16_is_fast() else ["fp32"]
#: how far a validation figure may move between machines in the *same* precision. Measured with
#: benchmarks/card_precision.py on every validation scene of every shipped model: bf16 on an AVX512-BF16 EPYC vs
#: the cards' AMX Xeon within 0.0021 building IoU on the slices checked here; fp32 with AVX2 vs AVX512 kernels
#: identical to 4 decimals. fp32 vs bf16 differ by up to 0.022 (Mask R-CNN), so a card checked in the wrong
#: precision fails.
SAME_PRECISION_TOLERANCE = 0.005


def card_figures(card: ModelCard, precision: str) -> dict:
    """Per-scene validation figures the card records for ``precision``: its own (the precision it was validated
    in during training) or ``metrics.validation_<precision>`` (benchmarks/card_precision.py --write-card)."""
    own = "bf16" if card.training.get("bf16_autocast") else "fp32"
    if precision == own:
        return card.metrics["validation_per_scene"]
    assert f"validation_{precision}" in card.metrics, \
        f"{card.name}: no {precision} figures in the card (python benchmarks/card_precision.py --write-card)"
    return card.metrics[f"validation_{precision}"]["per_scene"]


def scene_named(config: TrainConfig, name: str) -> list:
    """The validation scene called ``name``, reading the config's sources one at a time until it turns up (the
    all-places configs hold 200+ Mpx that this check does not need)."""
    for source in config.sources:
        one = config.model_copy(update={"sources": [source]})
        found = [s for s in load_scenes(one, SHARED_DATA.resolve(), "val") if s.name == name]
        if found:
            return found
    return []


@needs_shared_data()
@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("weights", MODELS, ids=lambda p: p.stem)
def test_card_metrics_reproduce_on_a_validation_slice(weights, precision):
    card = ModelCard.from_json(weights.with_suffix(".json"))
    if not card.trained:
        pytest.skip(f"{card.name} is an untrained placeholder: no metrics to check")
    per_scene = card_figures(card, precision)
    name = min(per_scene, key=lambda n: per_scene[n]["pixels"] if per_scene[n]["pixels"] > 20_000 else 1e12)
    config = TrainConfig.model_validate(card.training["config_values"])
    scenes = scene_named(config, name)
    assert len(scenes) == 1, f"validation scene {name} not found in the data"
    net, _ = load_model(str(weights))
    net.card.policy_thresholds = {}  # SegBlocks: validated in training with the top tau of each tile's blocks
    _, measured = validate(net, scenes, autocast=precision == "bf16")
    metric = "mean_iou" if config.select_metric == "mean_iou" else "building_iou"  # per scene, a place mean is its IoU
    assert measured[name]["pixels"] == per_scene[name]["pixels"]
    assert measured[name][metric] == pytest.approx(per_scene[name][metric], abs=SAME_PRECISION_TOLERANCE)


@pytest.mark.parametrize("weights", MODELS, ids=lambda p: p.stem)
def test_shipped_gate_is_bound_to_the_shipped_weights_and_is_the_default(weights):
    from geoseg.backends import BackendSpec, resolve_spec
    from geoseg.card import file_sha256
    from geoseg.gate import gate_path, load_gate

    if not gate_path(weights).exists():
        pytest.skip(f"{weights.stem} ships no gate")
    gate = load_gate(weights, file_sha256(weights))  # refuses a gate calibrated for other weights
    report = gate.calibration
    assert 1 <= len(gate.stage1) <= report["k1"] and len(gate.stage2) <= report["k2"]
    assert 0 < report["gate"]["execution_rate"] <= 1 and report["gate"]["recall"] >= 0.95  # the calibration target
    assert report["validation"], "the gate's validation tables (benchmarks/gate_tables.py --write-gate) are missing"
    assert resolve_spec(BackendSpec(model=str(weights))).name == "bgs"
    assert gate_path(weights).with_suffix(".png").exists()


@needs_shared_data()
def test_shipped_gate_validation_figures_reproduce():
    """The default gate's validation decoder rate and tile recall (gate_tables.py --write-gate) come back when the
    validation tiles are encoded again with the shipped weights (within one tile of 27)."""
    import numpy as np

    from geoseg.calibrate import collect
    from geoseg.card import file_sha256
    from geoseg.gate import load_gate, rates

    weights = next(w for w in MODELS if w.stem == "buildings-unet-r18")
    gate = load_gate(weights, file_sha256(weights))
    entry = gate.calibration["validation"]["buildings-unet-r18"]
    net, _ = load_model(str(weights))
    config = TrainConfig.model_validate(net.card.training["config_values"])
    tiles = collect(net, [(config, SHARED_DATA.resolve())], "val", entry["tile_px"],
                    autocast=bf16_is_fast(), rng=np.random.default_rng(0))
    means, fraction = tiles.arrays()
    measured = rates(gate.open(means), fraction >= gate.calibration["target_fraction"])
    assert len(means) == entry["tiles"]
    assert measured["execution_rate"] == pytest.approx(entry["execution_rate"], abs=1 / entry["tiles"] + 1e-9)
    assert measured["recall"] == pytest.approx(entry["recall"], abs=1 / entry["building_tiles"] + 1e-9)
