"""The leave-one-place-out benchmark's pieces: a fold drops every source of its place, and a held-out region is
written so that the pipeline and `geoseg evaluate` see what training saw (no training here)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import rasterio
import yaml

from geoseg.datasets import IGNORE, LabelledScene
from conftest import needs_shared_data
from geoseg.evaluate import write_labelled_region
from geoseg.regions import validation_regions
from geoseg.config import load_config, source_place

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("lopo", ROOT / "benchmarks" / "leave_one_place_out.py")
lopo = importlib.util.module_from_spec(spec)
spec.loader.exec_module(lopo)
CONFIG = ROOT / "geoseg" / "configs" / "buildings-all-places.yaml"


def test_a_fold_leaves_out_every_source_of_its_place_and_keeps_the_rest(tmp_path):
    base, _ = load_config(CONFIG)
    path = lopo.fold_config(CONFIG, "banepa", epochs=2, steps=10, out=tmp_path)
    fold, root = load_config(path)
    assert {source_place(s) for s in fold.sources} == {source_place(s) for s in base.sources} - {"banepa"}
    assert len(fold.sources) == len(base.sources) - 2  # Banepa and Banepa east
    assert fold.epochs == 2 and fold.steps_per_epoch == 10 and Path(yaml.safe_load(path.read_text())["data_root"]).is_absolute()


def test_a_region_keeps_its_nodata_and_its_unknown_labels(tmp_path):
    pixels = np.full((3, 40, 50), 0.5, np.float32)
    pixels[:, :, :10] = 0  # no imagery
    labels = np.zeros((40, 50), np.uint8)
    labels[:, :10] = IGNORE
    labels[5:15, 20:30] = 1
    labels[15, 20:30] = 2  # a separator counts as building in the reference
    labels[30:, 40:] = IGNORE  # imagery, but unlabelled
    image, reference = write_labelled_region(LabelledScene("x/y:val", pixels, labels, "val", "x"), tmp_path, 0.3)
    with rasterio.open(image) as src, rasterio.open(reference) as ref:
        valid, truth = src.dataset_mask() > 0, ref.read(1)
        assert src.res == (0.3, 0.3) and src.crs == ref.crs
    assert not valid[:, :10].any() and valid[:, 10:].all()
    assert (truth[5:16, 20:30] == 1).all() and (truth[30:, 40:] == IGNORE).all() and (truth[:, :10] == IGNORE).all()


@needs_shared_data()
def test_a_left_out_place_is_scored_on_its_own_imagery_against_polygons_where_it_has_them(tmp_path):
    """Dhaka's chips are georeferenced with footprint polygons: scored in their own CRS against them (a label
    raster merges touching buildings and makes F1 meaningless); a SpaceNet PNG has only a mask: a raster."""
    dhaka = validation_regions(str(CONFIG), tmp_path / "dhaka", "all", "dhaka")
    assert dhaka and all(ref.name == "buildings.geojson" for _, ref in dhaka)
    with rasterio.open(dhaka[0][0]) as src:
        assert src.crs.to_epsg() == 3857  # the chip's own grid, not the stand-in UTM one
    kampala = validation_regions(str(CONFIG), tmp_path / "kampala", "all", "kampala")
    zooms = {image.stem.rsplit("-", 1)[-1][-2:] for image, _ in kampala}
    assert zooms == {"19"}  # the zoom-20/21 chips show the same ground again: counted once
    khartoum = validation_regions(str(CONFIG), tmp_path / "khartoum", "all", "khartoum")
    assert [ref.suffix for _, ref in khartoum] == [".tif"]


def test_a_setting_is_chosen_for_each_place_without_looking_at_it(tmp_path):
    """benchmarks/lopo_choose.py: each place gets the column the *other* places rank best, so a column that wins
    only on one place is not credited to it; an F1 floor keeps out columns that buy IoU with F1; labelled
    reports keep same-named columns apart."""
    import json

    spec = importlib.util.spec_from_file_location("lopo_choose", ROOT / "benchmarks" / "lopo_choose.py")
    choose = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(choose)

    def m(iou, f1):
        return {"building_iou": iou, "spacenet_f1": f1}

    places = {"a": {"base": m(0.5, 0.5), "lucky": m(0.8, 0.5), "low": m(0.6, 0.2)},
              "b": {"base": m(0.5, 0.5), "lucky": m(0.1, 0.5), "low": m(0.6, 0.2)},
              "c": {"base": m(0.5, 0.5), "lucky": m(0.1, 0.5), "low": m(0.6, 0.2)}}
    by_iou = choose.nested_choice(places, "iou")
    assert by_iou["by_place"]["a"]["column"] == "low"  # b and c rank "low" first: a's lucky 0.8 is not used
    assert by_iou["mean_building_iou"] == 0.6
    floored = choose.nested_choice(places, "iou", f1_floor="base")
    assert {v["column"] for v in floored["by_place"].values()} == {"base"}  # "lucky" loses on the others, "low" on F1
    (tmp_path / "r1.json").write_text(json.dumps({"places": {"a": {"x": m(0.1, 0.1)}}}))
    (tmp_path / "r2.json").write_text(json.dumps({"places": {"a": {"x": m(0.2, 0.2)}}}))
    loaded = choose.load_places([str(tmp_path / "r1.json"), f"grown={tmp_path / 'r2.json'}"])
    assert loaded["a"] == {"x": m(0.1, 0.1), "grown:x": m(0.2, 0.2)}


def test_set_and_run_values_are_read_as_yaml_with_exponents_as_numbers():
    # PyYAML (YAML 1.1) reads 3e-5 as a string; a learning rate given that way trained nothing sensible
    assert lopo.setting_value("3e-5") == 3e-5
    assert lopo.setting_value("0.4") == 0.4 and lopo.setting_value("4") == 4
    assert lopo.setting_value("true") is True
    assert lopo.setting_value("sensors") == "sensors"
