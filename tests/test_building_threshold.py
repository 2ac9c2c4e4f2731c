"""A building threshold on P(building) instead of the most probable class (geoseg.stitch.chunk_rasters)."""

import numpy as np
import pytest

from geoseg.stitch import MASK_NODATA, chunk_rasters


def _probabilities(n_classes: int, seed: int, shape=(60, 70)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.moveaxis(rng.dirichlet(np.full(n_classes, 0.6), size=shape), -1, 0).astype(np.float32)


def test_no_threshold_keeps_the_most_probable_class():
    probs = _probabilities(3, 0)
    valid = np.ones(probs.shape[1:], bool)
    labels = chunk_rasters(probs, valid, 1, 2).labels
    expected = probs.argmax(0)
    expected[expected == 2] = 1
    assert np.array_equal(labels, expected)


@pytest.mark.parametrize("threshold", [0.2, 0.3, 0.5, 0.7])
def test_building_exactly_where_the_published_probability_reaches_the_threshold(threshold):
    probs = _probabilities(3, 1)  # background, building, separator
    valid = np.ones(probs.shape[1:], bool)
    valid[:5] = False
    r = chunk_rasters(probs, valid, 1, 2, building_threshold=threshold)
    reached = r.probability.astype(float) >= 255 * threshold - 1e-9  # what a user re-derives from probability.tif
    assert np.array_equal(r.labels[valid] == 1, reached[valid])
    assert set(np.unique(r.labels[valid])) <= {0, 1}  # the separator folds into building; the rest is background
    assert (r.labels[~valid] == MASK_NODATA).all()
    argmax_building = np.isin(probs.argmax(0), (1, 2)) & valid
    # a lower threshold only adds building pixels, a higher one only removes them
    if threshold < 0.5:
        assert (r.labels[argmax_building] == 1).all() and (r.labels[valid] == 1).sum() > argmax_building.sum()
    if threshold > 0.5:
        assert (r.labels[valid] == 1).sum() < argmax_building.sum()


def test_pixels_taken_out_of_the_building_class_get_the_next_most_probable_class():
    probs = _probabilities(5, 2)  # a land-cover model: building is class 3, no separator
    valid = np.ones(probs.shape[1:], bool)
    labels = chunk_rasters(probs, valid, 3, None, building_threshold=0.9).labels
    demoted = (probs.argmax(0) == 3) & (labels != 3)
    assert demoted.any()
    others = probs.copy()
    others[3] = -1
    assert np.array_equal(labels[demoted], others.argmax(0)[demoted])
    kept = probs.argmax(0) != 3
    assert np.array_equal(labels[kept & (labels != 3)], probs.argmax(0)[kept & (labels != 3)])


def test_a_lower_threshold_grows_confident_buildings_without_joining_them_or_adding_new_ones():
    from affine import Affine
    from rasterio.windows import Window

    from geoseg.read import Grid
    from geoseg.vectorise import FRINGE_GROW_PX, VectorParams, pieces_in_window

    grid = Grid("EPSG:32631", Affine(0.3, 0, 500000, 0, -0.3, 100000), 80, 80)
    prob = np.zeros((80, 80), np.uint8)
    prob[10:30, 5:45] = 90  # P 0.35: under the seed threshold, over a 0.3 building threshold
    prob[12:28, 8:24] = 200  # two confident roofs, 3 px apart, joined only by the low-probability band
    prob[12:28, 27:42] = 200
    prob[50:60, 50:60] = 90  # a low-probability blob far from any roof
    whole = Window(0, 0, 80, 80)

    def outlines(threshold):
        labels = (prob >= (128 if threshold is None else 77)).astype(np.uint8)
        final, border = pieces_in_window(labels, prob, None, whole, grid, 80, VectorParams(building_threshold=threshold))
        assert not border
        return sorted(final, key=lambda p: p.polygon.bounds)

    confident, grown = outlines(None), outlines(0.3)
    assert len(confident) == len(grown) == 2  # the band does not join the roofs; the far blob is no building
    for before, after in zip(confident, grown):
        assert after.polygon.contains(before.polygon) and after.pixels > before.pixels
        grow_px = max(abs(a - b) for a, b in zip(after.polygon.bounds, before.polygon.bounds))
        assert grow_px <= FRINGE_GROW_PX
    left, right = grown
    assert left.polygon.intersection(right.polygon).area == 0
    # a threshold at or over the seed threshold labels components as before (no growth step)
    labels = (prob >= 128).astype(np.uint8)
    same = pieces_in_window(labels, prob, None, whole, grid, 80, VectorParams(building_threshold=0.5))[0]
    assert [p.polygon.wkt for p in sorted(same, key=lambda p: p.polygon.bounds)] == [p.polygon.wkt for p in confident]
