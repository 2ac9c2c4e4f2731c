"""geoseg evaluate on hand-made polygons with known overlaps; reference in another CRS than the prediction."""

import geopandas as gpd
import numpy as np
import pytest
import shapely
from affine import Affine

from geoseg.evaluate import evaluate, spacenet_scores
from geoseg.stitch import MASK_NODATA

from conftest import write_scene

TRANSFORM = Affine(1.0, 0, 452_000.0, 0, -1.0, 40_000.0)  # UTM 36N, 1 m pixels
# (row0, col0, row1, col1) in pixels
PRED = [(10, 10, 20, 20), (30, 12, 40, 22), (50, 15, 60, 25), (70, 50, 80, 60)]
REF = [(10, 10, 20, 20), (30, 10, 40, 20), (50, 10, 60, 20), (70, 10, 80, 20), (90, 80, 96, 90)]  # last: on nodata


def to_polygon(r0, c0, r1, c1):
    return shapely.box(*(TRANSFORM @ (c0, r1)), *(TRANSFORM @ (c1, r0)))


@pytest.fixture
def case(tmp_path):
    mask = np.zeros((100, 100), np.uint8)
    for r0, c0, r1, c1 in PRED:
        mask[r0:r1, c0:c1] = 1
    mask[88:, :] = MASK_NODATA
    run = tmp_path / "run"
    run.mkdir()
    write_scene(run / "mask.tif", mask[None], transform=TRANSFORM, nodata=MASK_NODATA)
    gpd.GeoDataFrame(geometry=[to_polygon(*r) for r in PRED], crs="EPSG:32636").to_file(run / "buildings.gpkg")
    reference = tmp_path / "reference.geojson"
    gpd.GeoDataFrame(geometry=[to_polygon(*r) for r in REF], crs="EPSG:32636").to_crs("EPSG:4326").to_file(reference)
    return run, reference


def test_pixel_and_spacenet_metrics_are_exact(case):
    run, reference = case
    result = evaluate(run, reference)
    # pixels: prediction 400, reference 400 on valid ground, overlap 100 + 80 + 50 = 230
    assert result["building_iou"] == pytest.approx(230 / 570, abs=1e-4)
    assert result["building_precision"] == pytest.approx(230 / 400, abs=1e-4)
    assert result["building_recall"] == pytest.approx(230 / 400, abs=1e-4)
    # polygons: A matches (IoU 1), B matches (80/120), C does not (50/150), D and E unmatched; the 5th is on nodata
    assert (result["matched"], result["predicted_polygons"], result["reference_polygons"]) == (2, 4, 4)
    assert result["spacenet_f1"] == pytest.approx(0.5) and result["spacenet_precision"] == pytest.approx(0.5)


def test_polygons_from_the_mask_and_raster_reference_give_the_same(case, tmp_path):
    run, _ = case
    ref_mask = np.zeros((100, 100), np.uint8)
    for r0, c0, r1, c1 in REF[:4]:
        ref_mask[r0:r1, c0:c1] = 1
    ref_path = write_scene(tmp_path / "ref.tif", ref_mask[None], transform=TRANSFORM)
    (run / "buildings.gpkg").unlink()
    result = evaluate(run, ref_path)
    assert result["building_iou"] == pytest.approx(230 / 570, abs=1e-4)
    assert result["matched"] == 2 and result["spacenet_f1"] == pytest.approx(0.5)


def test_matching_is_one_to_one():
    ref = gpd.GeoDataFrame(geometry=[shapely.box(0, 0, 10, 10)], crs="EPSG:32636")
    pred = gpd.GeoDataFrame(geometry=[shapely.box(0, 0, 10, 10), shapely.box(0, 0, 10, 9)], crs="EPSG:32636")
    scores = spacenet_scores(pred, ref)
    assert scores["matched"] == 1 and scores["spacenet_precision"] == 0.5 and scores["spacenet_recall"] == 1.0


def test_a_region_without_buildings_on_either_side_scores_without_error(tmp_path):
    """A chip with no reference building where the model found none either: estimate_utm_crs of two empty frames
    raised ValueError and stopped a whole benchmark."""
    import numpy as np
    import rasterio
    from affine import Affine

    from geoseg.evaluate import evaluate

    profile = dict(driver="GTiff", width=32, height=32, count=1, dtype="uint8", crs="EPSG:3857",
                   transform=Affine(0.3, 0, 1e6, 0, -0.3, 1e6))
    for name in ("pred.tif", "ref.tif"):
        with rasterio.open(tmp_path / name, "w", **profile) as dst:
            dst.write(np.zeros((1, 32, 32), np.uint8))
    result = evaluate(tmp_path / "pred.tif", tmp_path / "ref.tif", building_class=1)
    assert result["matched"] == result["predicted_polygons"] == result["reference_polygons"] == 0
    assert result["fp_pixels"] == result["fn_pixels"] == 0


def test_regions_are_pooled_from_counts_not_averaged():
    from geoseg.evaluate import pool

    a = {"tp_pixels": 90, "fp_pixels": 10, "fn_pixels": 0, "matched": 9, "predicted_polygons": 10, "reference_polygons": 9}
    b = {"tp_pixels": 0, "fp_pixels": 0, "fn_pixels": 900, "matched": 0, "predicted_polygons": 0, "reference_polygons": 90}
    pooled = pool([a, b])
    assert pooled["building_iou"] == round(90 / 1000, 4)  # a mean of the two IoUs would be 0.45
    assert pooled["spacenet_precision"] == 0.9 and pooled["spacenet_recall"] == round(9 / 99, 4)


def test_outline_scores_of_matched_pairs_measure_turn_detail_and_overlap():
    """Issue 24, item 4: a house turned by 10 degrees, and a staircase outline of the same house."""
    from geoseg.evaluate import dominant_angle_deg, pool

    house = shapely.box(0, 0, 20, 10)
    turned = shapely.affinity.rotate(house, 10, origin="centroid")
    steps = shapely.union_all([shapely.box(x, 0, x + 2, 10 + (x % 4 == 0)) for x in range(0, 20, 2)])
    ref = gpd.GeoDataFrame(geometry=[house, shapely.affinity.translate(house, 100, 0)], crs="EPSG:32636")
    pred = gpd.GeoDataFrame(geometry=[turned, shapely.affinity.translate(steps, 100, 0)], crs="EPSG:32636")
    scores = spacenet_scores(pred, ref)
    assert scores["matched"] == 2
    assert dominant_angle_deg(turned) == pytest.approx(10, abs=1e-6)
    assert dominant_angle_deg(shapely.affinity.rotate(house, 89, origin="centroid")) == pytest.approx(89, abs=1e-6)
    assert scores["rotation_error_deg"] == pytest.approx(5, abs=0.5)  # 10 and ~0, averaged
    iou = turned.intersection(house).area / turned.union(house).area
    step_iou = steps.intersection(house).area / steps.union(house).area
    assert scores["matched_mean_iou"] == pytest.approx((iou + step_iou) / 2, abs=1e-4)
    assert scores["vertex_ratio"] == pytest.approx((4 + len(steps.exterior.coords) - 1) / 8, abs=1e-3)
    pooled = pool([scores | {"tp_pixels": 1, "fp_pixels": 0, "fn_pixels": 0}] * 2)
    assert pooled["matched_mean_iou"] == scores["matched_mean_iou"] and pooled["vertex_ratio"] == scores["vertex_ratio"]
