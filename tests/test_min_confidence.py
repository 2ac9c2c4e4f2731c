"""A floor on each building's confidence (``min_confidence``: model card, ``--min-confidence``, job files): the
polygons under it are left out, the mask is not touched."""

from dataclasses import replace

import numpy as np
import pyogrio
import pytest
import rasterio
import shapely
from affine import Affine
from shapely.geometry import box

from geoseg.card import ModelCard, resolve_model_path
from geoseg.demo import generate_scene
from geoseg.errors import GeosegError
from geoseg.pipeline import run_scene
from geoseg.read import Grid
from geoseg.georeference import pieces_to_frame
from geoseg.vectorise import Piece, VectorParams

GRID = Grid(rasterio.crs.CRS.from_epsg(32633).to_wkt(), Affine(0.5, 0, 500000, 0, -0.5, 1000000), 100, 100)


def _piece(col: int, mean_u8: float) -> Piece:
    return Piece(box(col, 10, col + 8, 18), probability_sum=mean_u8 * 64, pixels=64)


def test_buildings_under_the_floor_are_left_out_on_the_value_their_column_holds():
    # 0.65 * 255 = 165.75: a piece of exactly that mean is kept, one a hair under it is not
    pieces = [_piece(60, 200), _piece(0, 165.75), _piece(20, 165.7), _piece(40, 120)]
    every = pieces_to_frame(pieces, GRID, 0.5)
    floored = pieces_to_frame(pieces, GRID, 0.5, VectorParams(min_confidence=0.65))
    assert list(every["confidence"]) == [0.65, 0.6498, 0.4706, 0.7843]  # ordered by top-left pixel
    assert list(floored["confidence"]) == [0.65, 0.7843]
    assert list(floored["id"]) == [1, 2]  # ids stay 1..n
    assert shapely.equals(floored.geometry.iloc[1], every.geometry.iloc[3])
    assert len(pieces_to_frame(pieces, GRID, 0.5, VectorParams(min_confidence=0.0))) == 4


def test_a_run_with_a_floor_has_the_same_mask_and_the_unfloored_polygons_over_it(tmp_path, fast_options):
    scene = generate_scene(tmp_path / "scene.tif", size_px=384, seed=3)
    every = run_scene(scene, tmp_path / "every", replace(fast_options, min_confidence=0.0))
    every_frame = pyogrio.read_dataframe(tmp_path / "every" / "scene" / "buildings.gpkg")
    floor = float(np.quantile(every_frame["confidence"], 0.5))  # half of them go, whatever the model gives
    floored = run_scene(scene, tmp_path / "floored", replace(fast_options, min_confidence=floor))
    floored_frame = pyogrio.read_dataframe(tmp_path / "floored" / "scene" / "buildings.gpkg")
    for raster in ("mask.tif", "probability.tif"):
        with rasterio.open(tmp_path / "every" / "scene" / raster) as a, \
                rasterio.open(tmp_path / "floored" / "scene" / raster) as b:
            assert np.array_equal(a.read(), b.read())
    expected = every_frame[every_frame["confidence"] >= floor]
    assert 0 < len(floored_frame) == len(expected) < len(every_frame)
    assert list(floored_frame["id"]) == list(range(1, len(expected) + 1))
    assert all(shapely.equals(a, b) for a, b in zip(floored_frame.geometry, expected.geometry))
    assert floored.details["min_confidence"] == floor and every.details["min_confidence"] == 0.0


def test_a_run_without_a_floor_of_its_own_uses_the_card_one(tmp_path, fast_options):
    card = ModelCard.from_json(resolve_model_path(None).with_suffix(".json"))
    scene = generate_scene(tmp_path / "scene.tif", size_px=256, seed=4)
    summary = run_scene(scene, tmp_path / "out", fast_options)
    assert summary.details.get("min_confidence") == card.min_confidence
    confidence = pyogrio.read_dataframe(tmp_path / "out" / "scene" / "buildings.gpkg")["confidence"]
    assert card.min_confidence is None or (confidence >= card.min_confidence).all()


@pytest.mark.parametrize("value", [1.5, -0.1, "high"])
def test_a_card_with_a_floor_outside_0_1_is_refused_in_one_line(tmp_path, value):
    source = resolve_model_path(None).with_suffix(".json")
    text = source.read_text().replace('"min_confidence": 0.65', f'"min_confidence": {value!r}'.replace("'", '"'))
    assert text != source.read_text()
    (tmp_path / "bad.json").write_text(text)
    with pytest.raises(GeosegError, match="min_confidence"):
        ModelCard.from_json(tmp_path / "bad.json")
