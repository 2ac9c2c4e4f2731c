"""The short cuts of the stitch and vectorise stages (issue 27) give what the straightforward computations give:
the torch blend the numpy sums, the comparison argmax numpy's, the shifted-OR dilation scipy's, tracing
buildings one by one the one scan of the window, and a window cropped to its buildings the whole window."""

from __future__ import annotations

import numpy as np
import pytest
from affine import Affine
from rasterio.windows import Window
from scipy import ndimage

from geoseg import trace
from geoseg.read import Grid
from geoseg.stitch import TilePrediction, argmax_classes, blend_chunk
from geoseg.tile import blend_weights, overlap, tile_grid
from geoseg.trace import label_polygons, trace_components
from geoseg.vectorise import VectorParams, _dilate_four, pieces_in_window

GRID = Grid("EPSG:32631", Affine(0.5, 0, 500000, 0, -0.5, 100000), 600, 600)


def numpy_blend(core: Window, predictions: list[TilePrediction], n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """The weighted mean, written plainly in numpy (the stage's definition; the same tile/core overlap)."""
    h, w = int(core.height), int(core.width)
    acc, weight, valid = np.zeros((n_classes, h, w), np.float32), np.zeros((h, w), np.float32), np.zeros((h, w), bool)
    for p in sorted(predictions, key=lambda p: p.tile):
        t = p.tile
        shared = overlap(t, core)
        if shared is None:
            continue
        src, dst = shared
        valid[dst] |= p.valid[src]
        if p.probabilities is None:
            continue
        wt = blend_weights(t.height, t.width)[src] * p.valid[src]
        acc[(slice(None), *dst)] += p.probabilities[(slice(None), *src)].astype(np.float32) * wt
        weight[dst] += wt
    valid &= weight > 0
    return acc / np.where(weight > 0, weight, 1.0), valid


def test_blend_in_torch_is_the_numpy_weighted_mean_to_the_last_bit():
    rng = np.random.default_rng(3)
    predictions = []
    for i, tile in enumerate(tile_grid(300, 300, 128, 32)):
        valid = rng.random((tile.height, tile.width)) > 0.1
        probs = None
        if i % 7:  # some tiles all nodata: no probabilities
            logits = rng.normal(size=(3, tile.height, tile.width))
            probs = (np.exp(logits) / np.exp(logits).sum(0)).astype(np.float16)
        predictions.append(TilePrediction(tile, probs, valid))
    core = Window(96, 64, 160, 200)  # a core inside the scene, cutting through tiles
    got, got_valid = blend_chunk(core, predictions, 3)
    want, want_valid = numpy_blend(core, predictions, 3)
    assert got.dtype == np.float32 and np.array_equal(got_valid, want_valid)
    assert np.array_equal(got, want)
    assert all(p.probabilities is None or p.probabilities.dtype == np.float16 for p in predictions)  # untouched


def test_argmax_by_comparisons_is_numpys_first_maximum_also_on_ties():
    rng = np.random.default_rng(4)
    probs = (rng.integers(0, 4, size=(4, 50, 60)) / 4).astype(np.float32)  # many ties
    labels = argmax_classes(probs)
    assert labels.dtype == np.uint8 and np.array_equal(labels, probs.argmax(axis=0))


@pytest.mark.parametrize("steps", [1, 2, 3])
def test_shifted_or_dilation_is_scipys_four_connected_dilation(steps):
    mask = np.random.default_rng(steps).random((40, 70)) < 0.03
    mask[0, 5] = mask[-1, -1] = True  # on the array's border
    cross = ndimage.generate_binary_structure(2, 1)
    assert np.array_equal(_dilate_four(mask, steps), ndimage.binary_dilation(mask, cross, iterations=steps))


def _blobs(shape: tuple[int, int], density: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return ndimage.binary_dilation(rng.random(shape) < density, iterations=2)


@pytest.mark.parametrize("density", [0.0005, 0.02])
def test_tracing_one_by_one_gives_the_polygons_of_one_scan(density, monkeypatch):
    monkeypatch.setattr(trace, "TRACE_CALL_PX", 0)  # one by one whenever the boxes are smaller than the window
    labels, count = ndimage.label(_blobs((400, 500), density, 5), structure=ndimage.generate_binary_structure(2, 1))
    offset = Affine.translation(1000, 2000)
    traced = trace_components(labels, count, offset)
    whole = label_polygons(labels, offset)
    assert list(traced) == sorted(whole) == list(range(1, count + 1))  # label order, every component
    for label, polygons in traced.items():
        assert len(polygons) == len(whole[label])
        assert all(a.equals_exact(b, 0) for a, b in zip(polygons, whole[label]))


@pytest.mark.parametrize("with_separator", [False, True])
def test_a_window_cropped_to_its_buildings_gives_the_pieces_of_the_whole_window(with_separator):
    """Buildings (and separators) in one part of an inner window; then the same with a one-pixel building in each
    corner of the window, so that nothing can be cropped: the pieces of the first buildings are the same."""
    rng = np.random.default_rng(6)
    window = Window(200, 200, 200, 200)  # inner: borders on every side
    labels = np.zeros((200, 200), np.uint8)
    labels[60:140, 30:120] = _blobs((80, 90), 0.01, 7)
    prob = rng.integers(0, 256, (200, 200), dtype=np.uint8)
    separator = None
    if with_separator:
        separator = np.zeros((200, 200), np.uint8)
        separator[60:140, 74:76] = 200  # a wall through the blobs
        separator[50:58, 20:24] = 200  # outside the buildings' box, within reach of the dilation
    params = VectorParams(min_pixels=3, separator_threshold=0.5, separator_dilate_px=2 if with_separator else 0)
    final, border = pieces_in_window(labels, prob, separator, window, GRID, 200, params)
    framed = labels.copy()
    framed[[0, 0, -1, -1], [0, -1, 0, -1]] = 1
    framed_final, framed_border = pieces_in_window(framed, prob, separator, window, GRID, 200, params)
    assert not border and len(framed_border) == 4  # the corner pixels touch the window's borders
    key = lambda p: (p.polygon.bounds, p.pixels)  # noqa: E731
    assert len(final) > 3
    assert [key(p) for p in sorted(final, key=key)] == [key(p) for p in sorted(framed_final, key=key)]
    for a, b in zip(sorted(final, key=key), sorted(framed_final, key=key)):
        assert a.polygon.equals_exact(b.polygon, 0) and a.probability_sum == b.probability_sum


def test_the_one_by_one_threshold_does_not_change_pieces(monkeypatch):
    labels = (_blobs((300, 300), 0.001, 8)).astype(np.uint8)
    prob = np.full((300, 300), 128, np.uint8)
    window = Window(0, 0, 300, 300)
    grid = Grid(GRID.crs_wkt, GRID.transform, 300, 300)
    monkeypatch.setattr(trace, "TRACE_CALL_PX", 0)
    one_by_one = pieces_in_window(labels, prob, None, window, grid, 300, VectorParams())[0]
    monkeypatch.setattr(trace, "TRACE_ONE_BY_ONE_MAX", 0)
    one_scan = pieces_in_window(labels, prob, None, window, grid, 300, VectorParams())[0]
    assert len(one_by_one) == len(one_scan) > 0
    assert all(a.polygon.equals_exact(b.polygon, 0) and a.pixels == b.pixels for a, b in zip(one_by_one, one_scan))


def test_a_few_buildings_in_a_large_window_are_traced_one_by_one(monkeypatch):
    """The default costs send a 2048 px window with a handful of buildings down the one-by-one path."""
    labels = np.zeros((2048, 2048), np.int32)
    labels[100:110, 100:120], labels[1500:1530, 900:905] = 1, 2
    scans = []
    real = trace.label_polygons
    monkeypatch.setattr(trace, "label_polygons", lambda a, *args, **kw: scans.append(a.shape) or real(a, *args, **kw))
    traced = trace_components(labels, 2, Affine.identity())
    assert scans == [(10, 20), (30, 5)] and list(traced) == [1, 2]
