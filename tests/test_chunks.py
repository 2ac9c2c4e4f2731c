"""Chunks done whole on workers (issue 17): the plan's edge rules, and chunked runs giving the outputs of a
single-chunk run: the same rasters (probabilities within 1/255), the same polygons, one polygon for a building
across a chunk corner, several scenes in flight together."""

from __future__ import annotations

import dataclasses

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import shapely

from conftest import PixelBackend, write_scene
from geoseg.chunk import chunk_grid, plan_chunks
from geoseg.cluster import dask_client
from geoseg.pipeline import run_scene, run_scenes
from geoseg.tile import tile_grid


@pytest.fixture
def small_windows(monkeypatch):
    """Vectorise windows of 256 px instead of 2048, so that scenes of a few hundred px have several chunks (a
    chunk is a multiple of the window, geoseg.chunk.window_px_for)."""
    import geoseg.chunk

    monkeypatch.setattr(geoseg.chunk, "VECTOR_WINDOW_PX", 256)


@pytest.mark.parametrize("height, width, chunk_px", [(1000, 700, 256), (100, 90, 2048), (512, 512, 512)])
def test_chunk_cores_partition_the_grid(height, width, chunk_px):
    chunks = chunk_grid(height, width, chunk_px)
    cover = np.zeros((height, width), int)
    for c in chunks:
        assert c.row_off % chunk_px == 0 and c.col_off % chunk_px == 0 and 0 < c.height <= chunk_px
        cover[c.row_off:c.row_end, c.col_off:c.col_end] += 1
    assert (cover == 1).all()
    assert [c.index for c in chunks] == list(range(len(chunks)))


def test_each_chunk_gets_every_tile_that_touches_its_core_and_each_tile_has_one_home():
    tiles = tile_grid(1100, 900, 128, 32)
    plan = plan_chunks(1100, 900, tiles, 256, 3)
    homes = sorted(b for own in plan.own for b in own)
    assert homes == list(range(len(plan.batches)))  # every batch is some chunk's own, once
    assert sorted(t for batch in plan.batches for t in batch) == sorted(tiles)
    for chunk, needed in zip(plan.chunks, plan.needs):
        have = {t for b in needed for t in plan.batches[b]}
        assert {t for t in tiles if chunk.intersects(t)} <= have
        assert set(plan.own[chunk.index]) <= set(needed)


def _building_scene(path, size_px=700):
    """Bright rectangles (buildings for the PixelBackend) on a dark ground; one straddles the corner of the four
    chunks of 256 px at (256, 256), another lies across the vertical chunk border at column 512."""
    data = np.full((3, size_px, size_px), 20, np.uint8)
    for r0, r1, c0, c1 in [(220, 300, 230, 290), (40, 90, 480, 560), (600, 650, 100, 180), (400, 430, 600, 690)]:
        data[:, r0:r1, c0:c1] = 230
    return write_scene(path, data)


def _outputs(folder):
    with rasterio.open(folder / "mask.tif") as m, rasterio.open(folder / "probability.tif") as p:
        rasters = m.read(1), p.read(1), p.read_masks(1), m.tags()
    return rasters, gpd.read_parquet(folder / "buildings.parquet")


def _same_polygons(a: gpd.GeoDataFrame, b: gpd.GeoDataFrame) -> bool:
    def key(frame):
        return sorted(zip([tuple(np.round(g.bounds, 6)) for g in frame.geometry], frame.geometry, frame.confidence))
    return len(a) == len(b) and all(ka == kb and ga.equals(gb) and ca == pytest.approx(cb, abs=2e-3)
                                    for (ka, ga, ca), (kb, gb, cb) in zip(key(a), key(b)))


def test_chunked_run_equals_a_single_chunk_run(tmp_path, fast_options, small_windows):
    scene = _building_scene(tmp_path / "scene.tif")
    whole = run_scene(scene, tmp_path / "whole", dataclasses.replace(fast_options, chunk_px=2048), backend=PixelBackend())
    chunked = run_scene(scene, tmp_path / "chunked", dataclasses.replace(fast_options, chunk_px=256),
                        backend=PixelBackend())
    assert (whole.chunks, chunked.chunks) == (1, 9)
    (mask_a, prob_a, valid_a, tags_a), frame_a = _outputs(tmp_path / "whole" / "scene")
    (mask_b, prob_b, valid_b, tags_b), frame_b = _outputs(tmp_path / "chunked" / "scene")
    assert np.abs(prob_a.astype(int) - prob_b.astype(int)).max() <= 1  # float32 sums in another order
    assert (valid_a == valid_b).all() and tags_a == tags_b
    assert (mask_a != mask_b).mean() < 1e-4
    assert whole.buildings == chunked.buildings == 4
    assert _same_polygons(frame_a, frame_b)
    corner = frame_b[frame_b.intersects(shapely.Point(*(rasterio.open(scene).transform @ (256, 256))))]
    assert len(corner) == 1  # one building over the corner of four chunks is one polygon
    assert list(frame_b["id"]) == list(range(1, 5))


def test_a_scene_smaller_than_a_chunk_is_one_chunk(tmp_path, fast_options, small_windows):
    scene = _building_scene(tmp_path / "small.tif", size_px=320)
    summary = run_scene(scene, tmp_path / "out", dataclasses.replace(fast_options, chunk_px=512), backend=PixelBackend())
    assert summary.chunks == 1 and summary.grid_size_px == [320, 320]
    assert summary.buildings == 1  # of the four, the one within 320 px


def test_chunks_of_several_scenes_in_flight_together_give_each_scene_its_own_outputs(tmp_path, fast_options, small_windows):
    """Three scenes of 9 chunks on two worker processes, all submitted into one graph: each scene's outputs are
    those of its own in-process run."""
    scenes = []
    for i, size in enumerate((700, 600, 520)):
        data = np.full((3, size, size), 20, np.uint8)
        data[:, 50 + 40 * i: 300, 200: 290 + 30 * i] = 230
        scenes.append(write_scene(tmp_path / f"s{i}.tif", data))
    opts = dataclasses.replace(fast_options, chunk_px=256)
    alone = {s.stem: run_scene(s, tmp_path / "alone", opts, backend=PixelBackend()) for s in scenes}
    with dask_client(2, None) as client:
        together = {o.name: o.result for o in run_scenes([(str(s), s.stem) for s in scenes], tmp_path / "together",
                                                         dataclasses.replace(opts, workers=2), client, PixelBackend())}
    assert set(together) == set(alone)
    for name, summary in together.items():
        assert not isinstance(summary, Exception), summary
        assert summary.buildings == alone[name].buildings == 1 and summary.chunks == alone[name].chunks
        (mask_a, prob_a, _, _), frame_a = _outputs(tmp_path / "alone" / name)
        (mask_b, prob_b, _, _), frame_b = _outputs(tmp_path / "together" / name)
        assert np.abs(prob_a.astype(int) - prob_b.astype(int)).max() <= 1 and _same_polygons(frame_a, frame_b)
        assert not list((tmp_path / "together" / name).glob(".geoseg-partial*"))
