"""The demo runs on real imagery shipped with geoseg, from ground no shipped model was trained or validated on."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import numpy as np
import pytest
import rasterio
import yaml

from geoseg.card import ModelCard
from geoseg.cli import main
from geoseg.samples import sample_path

from conftest import SHARED_DATA, needs_shared_data

#: where the demo's ground lies in ../shared/data: no training or validation source may point into it
DEMO_GROUND = "buildings/nacala"
MODELS = sorted(Path(str(resources.files("geoseg.models"))).glob("*.safetensors"))
CONFIGS = sorted(Path(str(resources.files("geoseg.configs"))).glob("*.yaml"))


def _source_paths(sources: list[dict]) -> list[str]:
    return [str(v) for s in sources for k, v in s.items() if isinstance(v, str) and k != "kind"]


def test_the_demo_scene_is_small_real_and_says_where_it_comes_from():
    scene = sample_path()
    assert scene.stat().st_size <= 5 * 1024 * 1024
    with rasterio.open(scene) as src:
        tags = src.tags()
        assert src.crs.to_epsg() == 32737 and src.count == 3
        assert tags["licence"] == "CC0-1.0" and "Nacala" in tags["TIFFTAG_IMAGEDESCRIPTION"]
        assert 0.05 < (src.dataset_mask() == 0).mean() < 0.2  # the survey's gaps are masked, not black pixels


@pytest.mark.parametrize("path", MODELS + CONFIGS, ids=lambda p: p.name)
def test_no_shipped_model_or_config_trains_or_validates_on_the_demo_ground(path):
    if path.suffix == ".yaml":
        sources = yaml.safe_load(path.read_text()).get("sources", [])
    else:
        card = ModelCard.from_json(path.with_suffix(".json"))
        sources = card.training.get("config_values", {}).get("sources", [])
    assert not [p for p in _source_paths(sources) if DEMO_GROUND in p], \
        f"{path.name} uses the demo's ground ({DEMO_GROUND}); the demo must show ground the models never saw"


def test_geoseg_demo_outlines_buildings_on_the_real_scene(tmp_path, capsys):
    assert main(["demo", "-o", str(tmp_path), "--workers", "0", "--quiet"]) == 0
    assert "Nacala" in capsys.readouterr().out
    out = tmp_path / "nacala"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["model_trained"] and summary["resampled"] and summary["buildings"] >= 10
    with rasterio.open(out / "mask.tif") as mask, rasterio.open(sample_path()) as src:
        labels = mask.read(1)
        masked = src.dataset_mask(out_shape=labels.shape) == 0
    assert (labels[masked] == 255).mean() > 0.95  # no imagery, no prediction
    assert (out / "preview.png").exists()


@needs_shared_data()
def test_the_demo_scores_as_the_readme_says(tmp_path):
    """The README quotes the demo's pixel IoU against the Nacala OSM-derived footprints (0.39 when written);
    a model or pipeline change that loses much of it should be noticed."""
    from geoseg.evaluate import evaluate

    assert main(["demo", "-o", str(tmp_path), "--workers", "0", "--quiet", "--formats", "gpkg"]) == 0
    result = evaluate(str(tmp_path / "nacala"), str(SHARED_DATA / DEMO_GROUND / "01.geojson"))
    assert result["building_iou"] >= 0.30 and result["building_precision"] >= 0.6
