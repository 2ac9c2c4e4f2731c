"""The scene pipeline: read -> tile -> (encode -> gate -> decode on Dask workers) -> stitch -> vectorise -> write.

:func:`run_scene` is the Python API behind ``geoseg run``. Work on tiles is a Dask graph of one task per batch
of tiles (``predict_batch``), run on a ``dask.distributed`` LocalCluster of worker processes with one torch
thread each, on an existing scheduler (``scheduler="tcp://..."``), or in-process (``workers=0``). Tasks are
submitted in row-major order with a bounded number in flight, so results can be stitched and written as they
arrive and memory does not grow with the scene.
"""

from __future__ import annotations

import itertools
import json
import os
import sys
import time
from pathlib import Path
from typing import Callable

import dask
import numpy as np
import shapely
from tqdm import tqdm

from . import __version__
from .cluster import dask_client, peak_rss_mb, worker_peak_rss_mb
from .backends import Backend, BackendSpec, describe_backend, load_backend, resolve_spec
from .errors import GeosegError
from .card import INSTANCE_ARCHITECTURES, ModelCard
from .read import OpenedScene, SceneReader, is_local_crs, open_scene
from .stitch import StripStitcher, TilePrediction
from .tile import Tile, batched, tile_grid
from .merge_instances import InstanceCollector, instances_to_frame, write_instance_raster
from .options import RunOptions
from .vectorise import building_pieces, pieces_to_frame
from .write import VECTOR_FORMATS, discard, publish, scene_folder_names, write_cog, write_preview, write_vectors

#: a staging folder's name: the run's process id at the end, so a later run can tell a dead run's leftovers
STAGING_PREFIX = ".geoseg-partial-"


def predict_batch(reader: SceneReader, backend: BackendSpec | Backend, tiles: list[Tile]) -> tuple[list[TilePrediction], dict]:
    """Dask task: read a batch of tiles, run the model on those with any valid pixel. All-nodata tiles never
    reach the model. Returns the predictions and timings (seconds) of this batch."""
    if isinstance(backend, BackendSpec):
        backend = load_backend(backend)  # once per worker process (cached), not counted as read time
    t0 = time.perf_counter()
    reads = [reader.read_tile(t.window) for t in tiles]
    t1 = time.perf_counter()
    keep = [i for i, (_, valid) in enumerate(reads) if valid.any()]
    probabilities: dict[int, np.ndarray] = {}
    decoded, counters, instances = 0, {}, {}
    if keep:
        out = backend.predict(np.stack([reads[i][0] for i in keep]))
        probabilities = {i: np.asarray(p, dtype=np.float16) for i, p in zip(keep, out.probabilities)}  # no copy if f16
        decoded, counters = out.decoded, out.counters
        instances = dict(zip(keep, out.instances)) if out.instances is not None else {}
    t2 = time.perf_counter()
    predictions = [TilePrediction(t, probabilities.get(i), reads[i][1], instances.get(i)) for i, t in enumerate(tiles)]
    bf16 = len(keep) if getattr(backend, "bf16", False) else 0  # what the worker's CPU made of --precision
    return predictions, {"read_s": t1 - t0, "model_s": t2 - t1, "encoded": len(keep), "decoded": decoded,
                         "bf16_tiles": bf16, "counters": counters}


def run_tasks(client, reader: SceneReader, backend, batches: list[list[Tile]],
              on_result: Callable[[list[TilePrediction], dict], None]) -> None:
    """Run ``predict_batch`` over all batches, streaming results to ``on_result`` as they finish."""
    tasks = [dask.delayed(predict_batch, pure=True)(reader, backend, b) for b in batches]
    if client is None:
        for task in tasks:
            on_result(*task.compute(scheduler="synchronous"))
        return
    from distributed import as_completed

    in_flight = 2 * max(1, len(client.scheduler_info().get("workers", {}))) + 2
    queue = iter(tasks)
    pending = as_completed([client.compute(t) for t in itertools.islice(queue, in_flight)])
    for future in pending:
        on_result(*future.result())
        future.release()
        for task in itertools.islice(queue, 1):
            pending.add(client.compute(task))


def _remove_dead_staging(scene_dir: Path) -> None:
    """Staging folders that a killed run (SIGKILL, power cut) left in ``scene_dir``: those whose process is gone."""
    import psutil

    for leftover in scene_dir.glob(f"{STAGING_PREFIX}*"):
        pid = leftover.name[len(STAGING_PREFIX):]
        if not (pid.isdigit() and psutil.pid_exists(int(pid))):
            discard(leftover)


def prepare_output(out_dir: str | os.PathLike, name: str) -> tuple[Path, Path]:
    """Create ``OUT/<name>/`` and a staging folder in it; a clear error if it cannot be written. ``name`` must
    be a safe folder name (:func:`geoseg.write.safe_folder_name`)."""
    scene_dir = Path(out_dir) / name
    try:
        scene_dir.mkdir(parents=True, exist_ok=True)
        _remove_dead_staging(scene_dir)
        staging = Path(scene_dir / f"{STAGING_PREFIX}{os.getpid()}")
        staging.mkdir(exist_ok=True)
    except OSError as err:
        raise GeosegError(f"cannot write to output folder {scene_dir}: {err.strerror}") from None
    if not os.access(staging, os.W_OK):
        discard(staging)
        raise GeosegError(f"cannot write to output folder {scene_dir}: permission denied")
    return scene_dir, staging


def run_scene(scene: str | os.PathLike, out_dir: str | os.PathLike, options: RunOptions | None = None,
              backend: Backend | None = None, name: str | None = None) -> dict:
    """Run one scene end to end; returns the summary (also written as ``summary.json``).

    ``backend`` may be a ready backend object (for custom models); otherwise ``options.backend`` names one
    from the registry and each worker builds it once. Outputs go to ``out_dir/<name>/`` (default: the scene's
    file stem, made safe by :func:`geoseg.write.safe_folder_name`; ``geoseg run`` of several scenes gives each a
    distinct name with :func:`geoseg.write.scene_folder_names`). The summary records the input's absolute path.
    """
    opts = (options or RunOptions()).check()
    started = time.perf_counter()
    spec: BackendSpec | Backend = backend or resolve_spec(BackendSpec(opts.backend, opts.model, opts.device,
                                                                      opts.precision, opts.tau, opts.score_threshold,
                                                                      tta=opts.tta))
    if backend is not None:
        card, sha256 = backend.card, backend.model_sha256
    else:
        card, sha256 = describe_backend(spec)
    if card.block_px and opts.tile_px % card.block_px:
        raise GeosegError(f"--tile {opts.tile_px}: model {card.name} works in blocks of {card.block_px} px, "
                          f"which must tile it; use a multiple of {card.block_px}")
    opened = open_scene(
        scene, model_gsd_m=card.gsd_m, n_model_bands=len(card.bands), bands=opts.bands,
        assume_crs=opts.assume_crs, target_gsd_m=opts.target_gsd_m, native_resolution=opts.native_resolution,
    )
    grid = opened.reader.grid
    if "geojson" in opts.formats and is_local_crs(grid.crs):
        raise GeosegError(f"{scene}: its CRS is a local site grid that cannot be placed on the globe, and GeoJSON is "
                          "in WGS84 (RFC 7946); use --formats gpkg,shp,parquet, which keep the scene's CRS")
    tiles = tile_grid(grid.height, grid.width, opts.tile_px, opts.overlap_px)
    scene_dir, staging = prepare_output(out_dir, name or scene_folder_names([scene])[0])
    try:
        summary = _run(opened, tiles, spec, card, sha256, opts, staging, started)
        names = summary["outputs"]
        summary_path = staging / "summary.json"
        summary_path.write_text(_json(summary))
        publish(staging, scene_dir, names + ["summary.json"])
    finally:
        discard(staging)
        if not any(scene_dir.iterdir()):
            scene_dir.rmdir()  # a failed first run leaves no folder behind either
    return summary


def _run(opened: OpenedScene, tiles: list[Tile], spec: BackendSpec | Backend, card: ModelCard, sha256: str,
         opts: RunOptions, staging: Path, started: float) -> dict:
    reader, facts, overview = opened
    grid = reader.grid
    prob_tmp, mask_tmp = str(staging / "probability.raw.tif"), str(staging / "mask.raw.tif")
    separator_tmp = str(staging / "separator.raw.tif") if card.separator_class is not None else None
    stitcher = StripStitcher(grid, tiles, card.classes, card.building_class, prob_tmp, mask_tmp,
                             card.separator_class, separator_tmp)
    collector = InstanceCollector(tiles, grid) if card.architecture in INSTANCE_ARCHITECTURES else None
    counts = {"encoded": 0, "decoded": 0, "bf16_tiles": 0, "read_s": 0.0, "model_s": 0.0}
    backend_counts: dict[str, int] = {}
    stitch_s = 0.0
    bar = tqdm(total=len(tiles), unit="tile", desc=Path(reader.path).name, disable=not opts.progress,
               file=sys.stderr, leave=False)

    def on_result(predictions: list[TilePrediction], stats: dict) -> None:
        nonlocal stitch_s
        t = time.perf_counter()
        for p in predictions:
            stitcher.add(p)
            if collector is not None and p.instances:
                collector.add(p.tile, p.instances)
        stitch_s += time.perf_counter() - t
        for key in counts:
            counts[key] += stats[key]
        for key, value in stats["counters"].items():
            backend_counts[key] = backend_counts.get(key, 0) + value
        bar.update(len(predictions))

    worker_rss = 0.0
    try:
        with dask_client(opts.workers, opts.scheduler) as client:
            run_tasks(client, reader, spec, list(batched(tiles, opts.batch_tiles)), on_result)
            worker_rss = worker_peak_rss_mb(client)
    finally:
        bar.close()
        stitcher.close()
    if not stitcher.complete:
        raise GeosegError("internal error: not every row of the scene was stitched")
    t = time.perf_counter()
    # 0.8: a margin for the difference between pixel area and area in the metric CRS; exact filter follows
    min_pixels = int(0.8 * opts.min_area_m2 / facts["grid_gsd_m"] ** 2)
    shaping = {"regularise": opts.regularise, "min_rectangularity": opts.min_rectangularity}
    separator = {"separator_threshold": _either(opts.separator_threshold, card.separator_threshold),
                 "separator_dilate_px": _either(opts.separator_dilate_px, card.separator_dilate_px)}
    if collector is None:
        pieces = building_pieces(mask_tmp, prob_tmp, grid, card.building_class, min_pixels=min_pixels,
                                 separator_path=separator_tmp, **separator)
        frame = pieces_to_frame(pieces, grid, facts["grid_gsd_m"], opts.min_area_m2, opts.simplify_m, **shaping)
    else:  # one polygon per instance, each building once across tiles
        frame, kept = instances_to_frame(collector.kept, grid, facts["grid_gsd_m"], opts.min_area_m2, opts.simplify_m,
                                         **shaping)
        write_instance_raster(kept, grid, prob_tmp, str(staging / "instances.raw.tif"))
    vectorise_s = time.perf_counter() - t
    t = time.perf_counter()
    write_cog(mask_tmp, str(staging / "mask.tif"), categorical=True)
    write_cog(prob_tmp, str(staging / "probability.tif"), categorical=False)
    outputs = ["mask.tif", "probability.tif"]
    if collector is not None:
        write_cog(str(staging / "instances.raw.tif"), str(staging / "instances.tif"), categorical=True)
        outputs.append("instances.tif")
    outputs += write_vectors(frame, staging, opts.formats)
    _preview(reader, overview, frame.geometry, staging / "preview.png")
    outputs.append("preview.png")
    write_s = time.perf_counter() - t
    seconds = time.perf_counter() - started
    encoded = counts["encoded"]
    return {
        "geoseg_version": __version__,
        **facts,
        "input": str(Path(reader.path).resolve()),
        "backend": spec.name,
        "model": card.name,
        "model_trained": card.trained,
        "classes": card.mask_classes,
        "building_class": card.building_class,
        "model_sha256": sha256,
        "device": opts.device,
        "precision": opts.precision,
        "precision_used": _precision_used(counts["bf16_tiles"], counts["encoded"]),
        "tile_px": opts.tile_px,
        "overlap_px": opts.overlap_px,
        "tiles_total": len(tiles),
        "tiles_nodata": len(tiles) - encoded,
        "tiles_encoded": encoded,
        "tiles_decoded": counts["decoded"],
        "decoder_execution_rate": round(counts["decoded"] / encoded, 4) if encoded else 0.0,
        "megapixels": round(grid.megapixels, 3),
        "seconds": round(seconds, 2),
        "megapixels_per_second": round(grid.megapixels / seconds, 4),
        "stage_seconds": {
            "read_on_workers": round(counts["read_s"], 2), "model_on_workers": round(counts["model_s"], 2),
            "stitch": round(stitch_s, 2), "vectorise": round(vectorise_s, 2), "write": round(write_s, 2),
        },
        **_segblocks_summary(card, opts, backend_counts),
        **({"instances_detected": collector.seen, "instances_kept": len(collector.kept),  # before min_area_m2
            "instance_score_threshold": card.instance_score_threshold} if collector is not None else {}),
        "buildings": len(frame),
        **(separator if card.separator_class is not None else {}),
        "min_area_m2": opts.min_area_m2,
        "simplify_m": opts.simplify_m,
        **shaping,
        "peak_rss_mb": round(peak_rss_mb() + worker_rss, 1),
        "peak_rss_mb_driver": round(peak_rss_mb(), 1),
        "peak_rss_mb_workers": round(worker_rss, 1),
        "outputs": outputs,
    }


def _preview(reader: SceneReader, overview, geometries, path: Path) -> None:
    """Decimated image with the kept buildings' outlines (mapped back from CRS to grid pixels)."""
    raw, valid = overview
    rgb = np.rint(reader.normalise(raw, valid) * 255).astype(np.uint8)
    inverse = ~reader.grid.transform
    to_px = [inverse.a, inverse.b, inverse.d, inverse.e, inverse.c, inverse.f]
    polygons_px = [shapely.affinity.affine_transform(g, to_px) for g in geometries]
    write_preview(rgb, valid, polygons_px, raw.shape[-1] / reader.grid.width, path)


def _segblocks_summary(card: ModelCard, opts: RunOptions, counts: dict[str, int]) -> dict:
    """For block-based models: tau asked for, how it was reached, and the high-resolution fraction achieved."""
    if not card.block_px:
        return {}
    tau = _either(opts.tau, card.tau)
    blocks = counts.get("blocks", 0)
    return {"block_px": card.block_px, "tau": tau,
            "tau_rule": "calibrated threshold" if f"{tau:g}" in card.policy_thresholds else "top tau per tile",
            "high_res_fraction": round(counts.get("high_res_blocks", 0) / blocks, 4) if blocks else 0.0}


def _precision_used(bf16_tiles: int, encoded: int) -> str:
    """What ``--precision`` resolved to on the workers: bf16, fp32, or mixed (workers on CPUs of both kinds)."""
    if not encoded:
        return "none"
    return "bf16" if bf16_tiles == encoded else "fp32" if bf16_tiles == 0 else "mixed"


def _either(value, default):
    return default if value is None else value


def _json(summary: dict) -> str:
    return json.dumps(summary, indent=2) + "\n"
