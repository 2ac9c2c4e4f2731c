"""Touching buildings: separator labels for training, and separate footprints out of the pipeline."""

import geopandas as gpd
import numpy as np
import pytest
import rasterio
from affine import Affine

from geoseg.backends import BatchPrediction
from geoseg.card import ModelCard
from geoseg.datasets import building_labels, separators
from geoseg.pipeline import run_scene
from geoseg.read import Grid
from geoseg.metrics import fold_separator
from geoseg.vectorise import VectorParams, building_pieces

from conftest import write_scene

WEST, EAST = (20, 10, 60, 50), (20, 50, 60, 90)  # (r0, c0, r1, c1): two 40 x 40 px houses sharing a wall


def two_houses(height=80, width=100) -> np.ndarray:
    instances = np.zeros((height, width), np.int32)
    for i, (r0, c0, r1, c1) in enumerate((WEST, EAST), start=1):
        instances[r0:r1, c0:c1] = i
    return instances


def test_separator_is_the_shared_wall_only():
    labels = building_labels(two_houses(), separator_class=2)
    sep = separators(two_houses())
    # one pixel column on each side of the wall over its 40 rows, and the 2 ground pixels at each end of it
    assert sep[20:60, 49:51].all() and sep[19:61, 49:51].all() and sep.sum() == 40 * 2 + 4
    assert not sep[:, :49].any() and not sep[:, 51:].any()
    assert (labels == 1).sum() == 2 * 40 * 40 - 80 and (labels == 2).sum() == 84
    assert building_labels(two_houses()).max() == 1  # no separator class: plain 0/1


def test_fold_separator_counts_it_as_building():
    # rows: true class, cols: predicted; classes background, building, separator
    m = np.array([[10, 1, 2], [3, 20, 4], [0, 5, 6]])
    folded = fold_separator(m, building_class=1, separator_class=2)
    assert folded.tolist() == [[10, 3], [3, 35]]
    assert folded.sum() == m.sum()


def _rasters(tmp_path, mask, separator):
    grid = Grid(rasterio.crs.CRS.from_epsg(32636).to_wkt(), Affine(0.3, 0, 452_000, 0, -0.3, 40_000),
                mask.shape[1], mask.shape[0])
    paths = [str(write_scene(tmp_path / f"{n}.tif", a[None].astype(np.uint8))) for n, a in
             (("mask", mask), ("prob", mask * 200), ("sep", separator * 255))]
    return grid, paths


@pytest.mark.parametrize("window_px", [4096, 64, 50, 32])
def test_touching_houses_are_two_footprints_across_window_borders(tmp_path, window_px):
    # window 50 puts a window border on the wall itself; 64 and 32 cut both houses
    instances = two_houses()
    grid, (mask, prob, sep) = _rasters(tmp_path, (instances > 0).astype(np.uint8), separators(instances))
    pieces = sorted(building_pieces(mask, prob, grid, VectorParams(1), window_px=window_px, separator_path=sep),
                    key=lambda p: p.polygon.bounds[0])
    assert len(pieces) == 2
    for piece, (r0, c0, r1, c1) in zip(pieces, (WEST, EAST)):
        # each footprint is its own house: the separator pixels went back to their side of the wall,
        # except where they lie on a window border (at most one pixel column/row of the wall per border)
        minx, miny, maxx, maxy = piece.polygon.bounds
        assert (miny, maxy) == (r0, r1) and c0 <= minx and maxx <= c1
        assert 40 * 40 - 2 * 40 <= piece.polygon.area <= 40 * 40
    without = building_pieces(mask, prob, grid, VectorParams(1), window_px=window_px)
    assert len(without) == 1  # the same mask without the separator: one merged blob


class SeparatorBackend:
    """3-class stand-in: building where band 1 is bright, separator where band 2 is bright too."""

    name = "separator-standin"
    model_sha256 = "1" * 64

    def __init__(self):
        self.card = ModelCard(name="separator-standin", architecture="identity", encoder="",
                              classes=["background", "building", "building_separator"], building_class=1,
                              separator_class=2, bands=["red", "green", "blue"], gsd_m=0.3)

    def predict(self, pixels):
        building, wall = pixels[:, :1], pixels[:, 1:2]
        probs = np.concatenate([1 - building, building * (1 - wall), building * wall], axis=1)
        return BatchPrediction(probs.astype(np.float32), decoded=len(pixels))


def test_pipeline_publishes_a_building_mask_and_separate_footprints(tmp_path, fast_options):
    instances = two_houses(160, 200)
    data = np.full((3, 160, 200), 20, np.uint8)
    data[:2, instances > 0] = [[230], [20]]
    data[1, separators(instances)] = 230
    scene = write_scene(tmp_path / "houses.tif", data)
    summary = run_scene(scene, tmp_path / "out", fast_options, backend=SeparatorBackend())
    out = tmp_path / "out" / "houses"
    with rasterio.open(out / "mask.tif") as ds:
        mask = ds.read(1)
        assert ds.tags()["CLASSES"] == "background,building"
    with rasterio.open(out / "probability.tif") as ds:
        prob = ds.read(1)
    assert ((mask == 1) == (instances > 0)).all()  # the wall is building in the published mask
    assert (prob[instances > 0] >= 254).all()  # P(building) + P(separator)
    frame = gpd.read_parquet(out / "buildings.parquet")
    assert summary.buildings == len(frame) == 2 and summary.classes == ["background", "building"]
    assert frame.area_m2.sum() == pytest.approx(2 * 40 * 40 * 0.09, rel=0.01)
    assert not any(p.name.startswith("separator") for p in out.iterdir())


def test_separator_growth_is_the_four_connected_dilation_at_the_separator_pixels():
    # the growth computes the dilation only where separator pixels still lack a label (issue 27); it must give what
    # a whole-window grey dilation per step gives, window edges included
    from scipy import ndimage

    from geoseg.vectorise import _grow_into_separators

    rng = np.random.default_rng(3)
    cross = ndimage.generate_binary_structure(2, 1)
    for trial in range(20):
        labels, _ = ndimage.label(rng.random((60, 70)) < 0.35, structure=cross)
        separator = (rng.random(labels.shape) < 0.3) & (labels == 0)
        labels[rng.random(labels.shape) < 0.05] = 0
        edges = [(0, slice(None)), (slice(None), -1)][: trial % 3]
        expected = labels.copy()
        free = separator.copy()
        for e in edges:
            free[e] = False
        for _ in range(3):
            take = free & (expected == 0)
            expected[take] = ndimage.grey_dilation(expected, footprint=cross)[take]
        grown = labels.copy()
        _grow_into_separators(grown, separator, edges, 3)
        assert (grown == expected).all()
