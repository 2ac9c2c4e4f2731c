"""What Dask workers run for a scene: tile batches (read -> encode -> gate -> decode) and chunks (stitch -> write
pieces -> vectorise), each a plain function of picklable values. The driver (:mod:`geoseg.pipeline`) only
submits them and moves files; the finishing steps that follow a scene's last chunk are in
:mod:`geoseg.assemble`.

A chunk task writes into the scene's staging folder, which workers must therefore see (the output folder on a
shared file system, as on any cluster): ``pieces/mask-NNNNN.tif``, ``pieces/probability-NNNNN.tif``,
``pieces/buildings-NNNNN.parquet`` (its final polygons, georeferenced) and ``pieces/chunk-NNNNN.npz`` (the
pieces touching its border, or for instance models its instances; plain arrays, never a pickle). It returns a small
:class:`geoseg.staging.ChunkResult`; every value that crosses to the driver is a record of :mod:`geoseg.staging`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from .assemble import finish_scene
from .backends import Backend, BackendSpec, load_backend
from .chunk import Chunk
from .overviews import average_levels, level_chunk, level_grid, nearest_levels
from .probes import worker_rss_mb
from .read import SceneReader
from .staging import BatchStats, ChunkResult, Instance, Measured, SceneWork, dump_instances, dump_pieces, piece_path
from .stitch import MASK_NODATA, TilePrediction, blend_chunk, chunk_rasters, write_piece
from .tile import Tile
from .georeference import pieces_to_frame
from .vectorise import pieces_in_window, windows_of


@dataclass(frozen=True)
class BatchResult:
    """A tile batch's predictions (every tile, all-nodata ones without probabilities) and what it cost."""

    predictions: list[TilePrediction]
    stats: BatchStats


def predict_batch(reader: SceneReader, backend: BackendSpec | Backend, tiles: list[Tile]) -> BatchResult:
    """Read a batch of tiles, run the model on those with any valid pixel. All-nodata tiles never reach the
    model."""
    if isinstance(backend, BackendSpec):
        backend = load_backend(backend)  # once per worker process (cached), not counted as read time
    t0 = time.perf_counter()
    reads = reader.read_tiles([t.window for t in tiles])
    t1 = time.perf_counter()
    keep = [i for i, (_, valid) in enumerate(reads) if valid.any()]
    probabilities: dict[int, np.ndarray] = {}
    decoded, counters, instances = 0, {}, {}
    if keep:
        out = backend.predict(np.stack([reads[i][0] for i in keep]))
        probabilities = {i: np.asarray(p, dtype=np.float16) for i, p in zip(keep, out.probabilities)}  # no copy if f16
        decoded, counters = out.decoded, dict(out.counters)
        if out.instances is not None:
            instances = dict(zip(keep, out.instances))
            counters["instances_detected"] = sum(len(found) for found in out.instances)
    t2 = time.perf_counter()
    predictions = [TilePrediction(t, probabilities.get(i), reads[i][1], instances.get(i)) for i, t in enumerate(tiles)]
    bf16 = len(keep) if getattr(backend, "bf16", False) else 0  # what the worker's CPU made of --precision
    return BatchResult(predictions, BatchStats(t1 - t0, t2 - t1, len(keep), decoded, bf16, counters))


def with_rss(fn, *args) -> Measured:
    """Run a task; return its result and the peak RSS of the worker that ran it (no extra call to every worker)."""
    return Measured(fn(*args), worker_rss_mb())


def process_chunk(work: SceneWork, chunk: Chunk, batches: list[BatchResult], own: list[bool],
                  finish_formats: list[str] | None = None) -> ChunkResult:
    """Blend the chunk core from the tiles of ``batches`` that intersect it, write its raster pieces, vectorise it.
    ``own[i]``: batch ``i`` is one of this chunk's own (its statistics are counted here, once per scene).
    ``finish_formats``: for a scene of one chunk, the vector formats of its finishing, which this task then does
    too (one task fewer per chip, and no hop through the scheduler)."""
    t0 = time.perf_counter()
    predictions = [p for batch in batches for p in batch.predictions if chunk.intersects(p.tile)]
    probs, valid = blend_chunk(chunk.window, predictions, work.n_classes)
    rasters = chunk_rasters(probs, valid, work.building_class, work.separator_class, work.building_threshold)
    del probs
    t1 = time.perf_counter()
    write_piece(str(piece_path(work.staging, "mask", chunk.index)), rasters.labels, work.grid, chunk.window,
                MASK_NODATA, tags=work.mask_tags)
    write_piece(str(piece_path(work.staging, "probability", chunk.index)), rasters.probability, work.grid,
                chunk.window, None, valid=rasters.valid)
    _write_overview_pieces(work, chunk, rasters)
    t2 = time.perf_counter()
    frames = None
    if work.owned is None:
        frame, border = _vectorise_chunk(work, chunk, rasters, keep=finish_formats is not None)
        polygons, frames = len(frame), {chunk.index: frame}
    else:
        polygons, border = 0, _owned_instances(work, chunk, predictions)
    t3 = time.perf_counter()
    stats = BatchStats.total(batch.stats for batch, mine in zip(batches, own) if mine)
    finished = finish_scene(work, [chunk], finish_formats, frames) if finish_formats is not None else None
    return ChunkResult(chunk.index, stats, stitch_s=t1 - t0, write_s=t2 - t1, vectorise_s=t3 - t2, polygons=polygons,
                       border=border, rss_mb=worker_rss_mb(), finished=finished)


def _write_overview_pieces(work: SceneWork, chunk: Chunk, rasters) -> None:
    """This chunk's share of each COG overview level (:mod:`geoseg.overviews`) as ``mask-oF-NNNNN.tif`` and
    ``probability-oF-NNNNN.tif``."""
    n = len(work.overview_factors)
    if not n:
        return
    levels = zip(work.overview_factors, nearest_levels(rasters.labels, n),
                 average_levels(rasters.probability, rasters.valid, n))
    for factor, labels, (probability, valid) in levels:
        grid, core = level_grid(work.grid, factor), level_chunk(chunk, factor).window
        write_piece(str(piece_path(work.staging, f"mask-o{factor}", chunk.index)), labels, grid, core, MASK_NODATA,
                    tags=work.mask_tags)
        write_piece(str(piece_path(work.staging, f"probability-o{factor}", chunk.index)), probability, grid, core,
                    None, valid=valid)


def _vectorise_chunk(work: SceneWork, chunk: Chunk, rasters, keep: bool = False):
    """Final polygons (returned as a frame) to ``buildings-NNNNN.parquet``, unless ``keep``: the caller finishes the
    scene with the frame itself; pieces touching an inner window border to ``chunk-NNNNN.npz`` (their count is
    returned too)."""
    final, border = [], []
    for window in windows_of(chunk.window, work.window_px):
        rows = slice(int(window.row_off) - chunk.row_off, int(window.row_off + window.height) - chunk.row_off)
        cols = slice(int(window.col_off) - chunk.col_off, int(window.col_off + window.width) - chunk.col_off)
        separator = rasters.separator[rows, cols] if rasters.separator is not None else None
        done, touching = pieces_in_window(rasters.labels[rows, cols], rasters.probability[rows, cols], separator,
                                          window, work.grid, work.window_px, work.vector)
        final += done
        border += touching
    from pyproj import CRS

    frame = pieces_to_frame(final, work.grid, work.gsd_m, work.vector, CRS.from_wkt(work.metric_wkt),
                            order_keys=True).drop(columns="id")
    if len(frame) and not keep:
        frame.to_parquet(piece_path(work.staging, "buildings", chunk.index, ".parquet"), index=False)
    dump_pieces(piece_path(work.staging, "chunk", chunk.index, ".npz"), border)
    return frame, len(border)


def _owned_instances(work: SceneWork, chunk: Chunk, predictions: list[TilePrediction]) -> int:
    """Instances kept by their tile (geoseg.tile.owned_areas) whose box centre lies in this core, in grid px."""
    kept = []
    for p in predictions:
        r0, r1, c0, c1 = work.owned[(p.tile.row_off, p.tile.col_off)]
        for inst in p.instances or []:
            centre_r = p.tile.row_off + inst.row_px + inst.mask.shape[0] / 2  # the mask is its bounding box
            centre_c = p.tile.col_off + inst.col_px + inst.mask.shape[1] / 2
            if r0 <= centre_r < r1 and c0 <= centre_c < c1 and \
                    chunk.row_off <= centre_r < chunk.row_end and chunk.col_off <= centre_c < chunk.col_end:
                kept.append(Instance(p.tile.row_off + inst.row_px, p.tile.col_off + inst.col_px, inst.mask, inst.score))
    dump_instances(piece_path(work.staging, "chunk", chunk.index, ".npz"), kept)
    return len(kept)

