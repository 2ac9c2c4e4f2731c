"""The sparse gate benchmark's builder (benchmarks/make_sparse_scene.py): cells from strips and windows."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np

from geoseg.datasets import IGNORE, LabelledScene

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("make_sparse_scene", ROOT / "benchmarks" / "make_sparse_scene.py")
sparse = importlib.util.module_from_spec(spec)
sys.modules["make_sparse_scene"] = sparse  # its dataclass looks its module up
spec.loader.exec_module(sparse)


def test_a_strip_is_folded_into_a_whole_cell_without_nodata():
    h, w = 300, 1100
    labels = np.zeros((h, w), np.uint8)
    labels[10:20, 600:620] = 1  # in the second 512 px piece, which lands under the first
    scene = LabelledScene("strip:val", np.random.default_rng(0).random((3, h, w), np.float32), labels, "val")
    cell = sparse.folded_cell(scene)
    assert cell.pixels.shape == (3, 512, 512) and cell.labels.shape == (512, 512)
    assert (cell.labels != IGNORE).all() and cell.labels[310:320, 88:108].all()
    assert np.array_equal(cell.pixels[:, :h], scene.pixels[:, :, :512])
    assert cell.building_fraction == 200 / 512**2


def test_windows_keep_their_building_rule_and_overlap_at_most_half():
    labels = np.zeros((1200, 1200), np.uint8)
    labels[:600, :600] = 1
    labels[1100:, :] = IGNORE
    scene = LabelledScene("s", np.zeros((3, 1200, 1200), np.float32), labels, "val")
    empty = sparse.windows(scene, lambda f: f == 0)
    assert empty and all(c.building_fraction == 0 and (c.labels != IGNORE).mean() >= 0.5 for c in empty)
    for i, a in enumerate(empty):
        for b in empty[:i]:
            shared = max(0, 512 - abs(a.window[0] - b.window[0])) * max(0, 512 - abs(a.window[1] - b.window[1]))
            assert shared <= 0.5 * 512**2
    built = sparse.windows(scene, lambda f: f >= 0.005)
    assert built and all(c.building_fraction >= 0.005 for c in built)


def test_kinds_come_from_land_cover_for_dubai_windows_and_from_labels_elsewhere():
    cell = sparse.Cell("dubai/tile_3/image_part_001", (2, 3, 512, 512), np.zeros((3, 512, 512), np.float32),
                       np.zeros((512, 512), np.uint8))
    landcover = {"dubai/tile_3/image_part_001": np.full((600, 600), 4, np.uint8)}  # DUBAI_CLASSES[4]: water
    assert (sparse.kinds_of(cell, landcover) == sparse.KINDS.index("water")).all()
    town = sparse.Cell("banepa:val", (0, 0, 360, 1356), cell.pixels, np.eye(512, dtype=np.uint8))
    kinds = sparse.kinds_of(town, landcover)
    assert kinds[5, 5] == sparse.KINDS.index("building") and kinds[5, 6] == sparse.KINDS.index("town ground")
