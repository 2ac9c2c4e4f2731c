import numpy as np
import pytest

from geoseg.errors import GeosegError
from geoseg.tile import batched, blend_weights, tile_grid, tile_offsets


@pytest.mark.parametrize("length,tile,overlap", [(1000, 512, 64), (512, 512, 64), (513, 512, 64), (100, 512, 64),
                                                 (2049, 256, 0), (777, 128, 100)])
def test_offsets_cover_every_pixel_and_end_on_the_last(length, tile, overlap):
    offsets = tile_offsets(length, tile, overlap)
    covered = np.zeros(length, int)
    for off in offsets:
        covered[off : off + min(tile, length)] += 1
    assert covered.min() >= 1
    assert offsets[0] == 0 and offsets[-1] + min(tile, length) == length
    assert offsets == sorted(set(offsets))
    if len(offsets) > 1:  # neighbours overlap by at least overlap_px
        assert all(b - a <= tile - overlap for a, b in zip(offsets, offsets[1:]))


def test_grid_is_row_major_and_small_scene_gets_one_tile():
    tiles = tile_grid(300, 1000, 512, 64)
    assert tiles == sorted(tiles)
    assert {(t.height, t.width) for t in tiles} == {(300, 512)}
    assert tile_grid(50, 70, 512, 64)[0].window.width == 70


def test_bad_tiling_is_refused():
    with pytest.raises(GeosegError):
        tile_offsets(100, 64, 64)
    with pytest.raises(GeosegError):
        tile_offsets(0, 64, 8)


def test_batches_keep_order():
    tiles = tile_grid(1000, 1000, 256, 32)
    assert [t for b in batched(tiles, 3) for t in b] == tiles


def test_blend_weights_are_positive_symmetric_and_peak_in_the_middle():
    w = blend_weights(64, 48)
    assert w.min() > 0 and np.allclose(w, w[::-1, ::-1])
    assert w[32, 24] > w[0, 24] and w[32, 24] > w[32, 0]
