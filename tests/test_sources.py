"""Training sources of every kind the new places need (issue 15): plain image + mask at a stated GSD, web-map tiles
georeferenced from z/x/y, Dubai as buildings, and chips of one ground at several zoom levels counted once."""

from __future__ import annotations

import json

import numpy as np
import pytest
import rasterio
import shapely
from PIL import Image
from pyproj import Transformer

from geoseg.datasets import (DUBAI_COLOURS, IGNORE, chips_source, dubai_labels, image_mask_source, negatives_source,
                             tile_groups, xyz_source, xyz_tile_bounds)
from geoseg.errors import GeosegError
from geoseg.config import TrainConfig, source_place

from conftest import SHARED_DATA, needs_shared_data


def test_a_plain_image_and_mask_are_resampled_to_the_model_gsd(tmp_path):
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (100, 120, 3)).astype("uint8")).save(tmp_path / "img.png")
    mask = np.zeros((100, 120), np.uint8)
    mask[20:60, 30:70] = 1
    mask[:, 110:] = 255  # not 0/1: unknown
    Image.fromarray(mask).save(tmp_path / "mask.png")
    scenes = image_mask_source(str(tmp_path / "img.png"), str(tmp_path / "mask.png"), gsd_m=0.3, native_gsd_m=0.15,
                               val_fraction=0.4, gap_px=0)
    assert [s.split for s in scenes] == ["train", "val"]
    labels = np.concatenate([s.labels for s in scenes])
    assert labels.shape == (50, 60) and scenes[0].pixels.shape == (3, 30, 60)
    assert (labels[10:30, 15:35] == 1).all() and (labels[:, 56:] == IGNORE).all() and (labels[40:, :50] == 0).all()


def test_dubai_as_buildings_keeps_other_classes_as_negatives():
    colours = list(DUBAI_COLOURS)  # building, land, road, vegetation, water
    rgb = np.array([[colours[0], colours[1], colours[4], (0, 0, 0)]], np.uint8)
    assert dubai_labels(rgb).tolist() == [[0, 1, 4, IGNORE]]
    assert dubai_labels(rgb, buildings_only=True).tolist() == [[1, 0, 0, IGNORE]]


@needs_shared_data()
def test_dubai_can_be_read_one_tile_folder_at_a_time():
    from geoseg.datasets import dubai_source

    scenes = dubai_source(str(SHARED_DATA / "landcover" / "dubai"), 1.0, 0.5, ["tile_3"], tiles=["tile_3"])
    assert scenes and all(s.name.startswith("dubai/tile_3/") and s.split == "val" for s in scenes)


def test_xyz_tiles_are_placed_by_their_indices_and_grouped_into_mosaics(tmp_path):
    z = 20
    (tmp_path / "tiles").mkdir()
    rows = []
    for x, y in [(600000, 400000), (600001, 400000), (600010, 400010)]:
        rgba = np.full((256, 256, 4), 120, np.uint8)
        rgba[..., 3] = 255
        if x == 600001:
            rgba[:, 128:, 3] = 0  # outside the survey
        Image.fromarray(rgba, "RGBA").save(tmp_path / "tiles" / f"t-{x}-{y}.png")
        rows.append(f"t-{x}-{y}.png,{z},{x},{y}")
    (tmp_path / "tiles.csv").write_text("file,z,x,y\n" + "\n".join(rows) + "\n")
    west, south, east, north = xyz_tile_bounds(z, 600000, 400000)
    to_lonlat = Transformer.from_crs("EPSG:3857", "EPSG:4326", always_xy=True)
    corners = [to_lonlat.transform(west + f * (east - west), north - g * (north - south))
               for f, g in ((0.25, 0.25), (0.75, 0.25), (0.75, 0.75), (0.25, 0.75))]
    (tmp_path / "labels.geojson").write_text(json.dumps({"type": "FeatureCollection", "features": [
        {"type": "Feature", "properties": {}, "geometry": shapely.geometry.mapping(shapely.Polygon(corners))}]}))
    assert tile_groups([(600000, 400000), (600001, 400000), (600010, 400010)]) == \
        [[(600000, 400000), (600001, 400000)], [(600010, 400010)]]
    scenes = xyz_source(str(tmp_path / "tiles.csv"), z, str(tmp_path / "labels.geojson"), gsd_m=0.3)
    assert len(scenes) == 2
    first = scenes[0].labels  # two tiles of 256 px at 0.149 Web-Mercator m = 0.149 cos(lat) ground m each
    lat = to_lonlat.transform(west, north)[1]
    side_px = 256 * (east - west) / 256 * np.cos(np.radians(lat)) / 0.3
    assert first.shape[0] == pytest.approx(side_px, abs=2) and first.shape[1] == pytest.approx(2 * side_px, abs=2)
    h, w = first.shape
    assert (first[h // 4 + 3: 3 * h // 4 - 3, w // 8 + 3: 3 * w // 8 - 3] == 1).all()  # the square in tile 1
    assert (first[:, 3 * w // 4 + 2:] == IGNORE).all()  # the transparent half of tile 2
    assert (scenes[1].labels == 0).all()


def test_the_place_of_a_source_defaults_to_its_folder():
    config = TrainConfig.model_validate({
        "name": "t", "classes": ["background", "building"], "building_class": 1, "sources": [
            {"kind": "chips", "images": "buildings/kampala/chips", "masks": "buildings/kampala/masks"},
            {"kind": "dubai", "root": "landcover/dubai", "assumed_gsd_m": 0.5, "buildings_only": True},
            {"kind": "image_mask", "image": "buildings/paris/a.png", "mask": "buildings/paris/m.png",
             "native_gsd_m": 0.3, "place": "paris-suburb"}]})
    assert [source_place(s) for s in config.sources] == ["kampala", "dubai", "paris-suburb"]


@needs_shared_data()
def test_kampala_val_chips_count_their_ground_once():
    root = SHARED_DATA / "buildings" / "kampala"
    every = chips_source(str(root / "val-chips"), str(root / "val-masks"), 0.3, split="val",
                         exclude_overlap_with=str(root / "chips"))
    once = chips_source(str(root / "val-chips"), str(root / "val-masks"), 0.3, split="val",
                        exclude_overlap_with=str(root / "chips"), distinct_ground=True)
    assert len(every) == 21 and [s.name for s in once] == ["val-chips/OAM-309606-261636-19"]


@needs_shared_data()
def test_the_new_real_sources_load():
    buildings = SHARED_DATA / "buildings"
    east = xyz_source(str(buildings / "banepa_east" / "tiles.csv"), 20, str(buildings / "banepa_east" / "labels.geojson"),
                      gsd_m=0.3)
    assert len(east) == 2 and all(0.05 < (s.labels == 1).mean() < 0.6 for s in east)  # two blocks with buildings
    paris = image_mask_source(str(buildings / "paris" / "RGB-PanSharpen_AOI_3_Paris_img418.png"),
                              str(buildings / "paris" / "RGB-PanSharpen_AOI_3_Paris_img418_mask01.png"), 0.3, 0.3)
    assert paris[0].labels.shape == (650, 650) and 0.1 < (paris[0].labels == 1).mean() < 0.2  # README: 0.153
    dhaka = chips_source(str(buildings / "dhaka" / "chips"), str(buildings / "dhaka" / "masks"), 0.3,
                         labels=str(buildings / "dhaka" / "buildings.geojson"))
    assert len(dhaka) == 8 and np.mean([(s.labels == 1).mean() for s in dhaka]) > 0.3
    with rasterio.open(buildings / "dhaka" / "chips" / "OAM-393753-226409-19.tif") as src:
        assert src.crs.to_epsg() == 3857


def test_sampling_by_place_gives_every_place_the_same_share_of_crops():
    from geoseg.datasets import LabelledScene
    from geoseg.train import CropSampler

    def scene(place, px):
        return LabelledScene(f"{place}-{px}", np.zeros((3, px, px), np.float32), np.zeros((px, px), np.uint8), "train",
                             place)

    scenes = [scene("dubai", 2000), scene("dubai", 1000), scene("paris", 300)]
    by_pixels = CropSampler(scenes, 64, np.random.default_rng(0)).p
    by_place = CropSampler(scenes, 64, np.random.default_rng(0), by_place=True).p
    assert by_pixels[2] < 0.02
    assert by_place[2] == pytest.approx(0.5) and by_place[0] == pytest.approx(0.4)  # 2000² of 2000² + 1000²


def test_sensor_augmentation_keeps_range_and_grey_and_changes_colour():
    from geoseg.augment import hue_saturation, sensor_augment

    grey = np.full((3, 8, 8), 0.4, np.float32)
    assert np.allclose(hue_saturation(grey, 17, 1.3), grey)  # a turn about the grey axis leaves grey alone
    red = np.zeros((3, 8, 8), np.float32)
    red[0] = 0.8
    turned = hue_saturation(red, 120, 1.0)
    assert turned[1].mean() == pytest.approx(0.8, abs=1e-5) and turned[0].mean() == pytest.approx(0.0, abs=1e-5)
    rng = np.random.default_rng(0)
    x = rng.random((3, 64, 64)).astype(np.float32)
    outs = [sensor_augment(x, rng) for _ in range(20)]
    assert all(o.dtype == np.float32 and o.shape == x.shape and 0 <= o.min() and o.max() <= 1 for o in outs)
    assert sum(not np.allclose(o, x) for o in outs) >= 15


def test_negatives_are_background_where_imaged_and_unknown_where_not(tmp_path):
    from conftest import write_scene

    folder = tmp_path / "plots"
    folder.mkdir()
    image = np.random.default_rng(0).integers(1, 255, (3, 60, 80), np.uint8)
    image[:, :, :20] = 0  # nodata
    write_scene(folder / "a.tif", image, gsd_m=0.3, nodata=0)
    write_scene(folder / "b.tif", image[:, :30], gsd_m=0.15, nodata=0)
    scenes = negatives_source(str(folder), 0.3)
    assert [s.name for s in scenes] == ["plots/a", "plots/b"] and all(s.split == "train" for s in scenes)
    a, b = scenes
    assert set(np.unique(a.labels[:, 20:])) == {0} and (a.labels[:, :20] == IGNORE).all()
    assert abs(b.labels.shape[0] - 15) <= 1 and abs(b.labels.shape[1] - 40) <= 1  # resampled to 0.3 m like any scene
    with pytest.raises(GeosegError, match="no GeoTIFFs"):
        negatives_source(str(tmp_path / "empty"), 0.3)


@needs_shared_data()
def test_reading_one_split_skips_what_holds_none_of_it_and_gives_the_same_scenes():
    """``load_scenes(..., "val")`` (calibration tables, the card checks) reads Dubai's validation tiles alone and no
    source that holds only training scenes; its scenes are those of the full load, pixel for pixel."""
    from geoseg.config import load_scenes

    config = TrainConfig.model_validate({
        "name": "t", "classes": ["background", "building"], "building_class": 1, "gsd_m": 1.0, "sources": [
            {"kind": "chips", "images": "buildings/kampala/chips", "masks": "buildings/kampala/masks"},
            {"kind": "chips", "images": "buildings/kampala/val-chips", "masks": "buildings/kampala/val-masks",
             "split": "val"},
            {"kind": "dubai", "root": "landcover/dubai", "assumed_gsd_m": 0.5, "buildings_only": True,
             "val_tiles": ["tile_3"]},
            {"kind": "negatives", "images": "negatives/neon_plots"}]})
    assert [s.only("val") is None for s in config.sources] == [True, False, False, True]
    assert [s.only("train") is None for s in config.sources] == [False, True, False, False]
    root = SHARED_DATA.resolve()
    val = load_scenes(config, root, "val")
    full = [s for s in load_scenes(config, root) if s.split == "val"]
    assert [s.name for s in val] == [s.name for s in full] and any(s.name.startswith("dubai/tile_3/") for s in val)
    assert all(np.array_equal(a.pixels, b.pixels) and np.array_equal(a.labels, b.labels) and a.place == b.place
               for a, b in zip(val, full))
