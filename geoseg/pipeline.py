"""The scene pipeline's driver: read -> tile -> (encode -> gate -> decode -> stitch -> vectorise -> write, on
Dask workers) -> publish.

The driver opens each scene (header, decimated overview for the stretch), plans its tiles and chunks
(:mod:`geoseg.chunk`), submits tile batches and chunk tasks (:mod:`geoseg.tasks`) and, once a scene's last
chunk is in, its finishing tasks (:mod:`geoseg.assemble`: the COGs, the vector files, the preview); then it
writes ``summary.json`` and renames the finished files into place. It never holds tile probabilities, rasters
or polygons, so its memory does not grow with the scene or its buildings.

Several scenes are in flight at once (:func:`run_scenes`): chunks are submitted scene after scene with a bounded
number in flight, so a catalog of one-tile chips fills a cluster as one large scene does. Each scene's outputs
stay atomic (a staging folder, renamed when complete). Tasks run on a ``dask.distributed`` cluster
(:mod:`geoseg.cluster`) or in-process (``workers=0``), by the same code.
"""

from __future__ import annotations

import os
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, NamedTuple

from tqdm import tqdm

from .assemble import assemble_cog, write_scene_instances, write_scene_vectors
from .backends import Backend, BackendSpec, describe_backend, resolve_spec
from .card import INSTANCE_ARCHITECTURES, ModelCard
from .chunk import ChunkPlan, plan_chunks, window_px_for
from .cluster import dask_client, peak_rss_mb, runner_for, worker_peak_rss_mb
from .errors import GeosegError
from .options import RunOptions
from .read import is_local_crs, open_scene
from .summary import RunSummary, scene_summary
from .tasks import SceneWork, predict_batch, process_chunk
from .tile import tile_grid
from .vectorise import scene_metric_crs
from .write import discard, publish, scene_folder_names

#: a staging folder's name: the run's process id at the end, so a later run can tell a dead run's leftovers
STAGING_PREFIX = ".geoseg-partial-"
#: fewer tiles than this in a whole run: no LocalCluster (starting one costs more than the tiles; issue 17)
CLUSTER_MIN_TILES = 24

__all__ = ["RunOptions", "RunSummary", "SceneOutcome", "run_scene", "run_scenes", "STAGING_PREFIX"]


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
        (staging / "pieces").mkdir(exist_ok=True)
    except OSError as err:
        raise GeosegError(f"cannot write to output folder {scene_dir}: {err.strerror}") from None
    if not os.access(staging, os.W_OK):
        discard(staging)
        raise GeosegError(f"cannot write to output folder {scene_dir}: permission denied")
    return scene_dir, staging


def _close_output(scene_dir: Path, staging: Path) -> None:
    discard(staging)
    if scene_dir.exists() and not any(scene_dir.iterdir()):
        scene_dir.rmdir()  # a failed first run leaves no folder behind either


@dataclass
class RunModel:
    """The model a run uses, resolved once on the driver: what workers build, its card and weights checksum."""

    spec: BackendSpec | Backend
    card: ModelCard
    sha256: str


def resolve_model(opts: RunOptions, backend: Backend | None = None) -> RunModel:
    if backend is not None:
        return RunModel(backend, backend.card, backend.model_sha256)
    spec = resolve_spec(BackendSpec(opts.backend, opts.model, opts.device, opts.precision, opts.tau,
                                    opts.score_threshold, tta=opts.tta))
    return RunModel(spec, *describe_backend(spec))


class SceneOutcome(NamedTuple):
    """What :func:`run_scenes` yields for each scene: its summary, or the error it failed with, and the tries."""

    scene: str
    name: str
    result: RunSummary | Exception
    attempts: int


@dataclass
class SceneRun:
    """One scene in flight on the driver: its plan and the futures it waits on (no pixels, no polygons)."""

    scene: str
    name: str
    scene_dir: Path
    staging: Path
    work: SceneWork
    plan: ChunkPlan
    facts: dict
    reader: object
    tiles_total: int
    started: float
    attempt: int = 1
    next_chunk: int = 0
    batch_futures: dict = field(default_factory=dict)
    last_user: list = field(default_factory=list)
    results: list = field(default_factory=list)
    finishing: dict = field(default_factory=dict)
    waiting_on: set = field(default_factory=set)
    driver_s: float = 0.0  # the driver's own wall time for this scene: open, plan, submit, collect, publish

    @property
    def chunks_left(self) -> bool:
        return self.next_chunk < len(self.plan.chunks)


def open_run(scene: str, name: str, out_dir: str | os.PathLike, opts: RunOptions, model: RunModel) -> SceneRun:
    """Validate a scene and plan it; creates its staging folder. Raises GeosegError for bad input."""
    started = time.perf_counter()
    card = model.card
    if card.block_px and opts.tile_px % card.block_px:
        raise GeosegError(f"--tile {opts.tile_px}: model {card.name} works in blocks of {card.block_px} px, "
                          f"which must tile it; use a multiple of {card.block_px}")
    opened = open_scene(scene, model_gsd_m=card.gsd_m, n_model_bands=len(card.bands), bands=opts.bands,
                        assume_crs=opts.assume_crs, target_gsd_m=opts.target_gsd_m,
                        native_resolution=opts.native_resolution)
    grid = opened.reader.grid
    if "geojson" in opts.formats and is_local_crs(grid.crs):
        raise GeosegError(f"{scene}: its CRS is a local site grid that cannot be placed on the globe, and GeoJSON is "
                          "in WGS84 (RFC 7946); use --formats gpkg,shp,parquet, which keep the scene's CRS")
    tiles = tile_grid(grid.height, grid.width, opts.tile_px, opts.overlap_px)
    plan = plan_chunks(grid.height, grid.width, tiles, opts.chunk_px, opts.batch_tiles)
    scene_dir, staging = prepare_output(out_dir, name)
    gsd_m = opened.facts["grid_gsd_m"]
    owned = None
    if card.architecture in INSTANCE_ARCHITECTURES:
        from .merge_instances import ownership

        owned = ownership(tiles, grid.height, grid.width)
    published = card.classes if card.separator_class is None else card.classes[:card.separator_class]
    work = SceneWork(
        grid=grid, staging=str(staging), n_classes=len(card.classes), building_class=card.building_class,
        separator_class=card.separator_class,
        mask_tags={"CLASSES": ",".join(published), "BUILDING_CLASS": str(card.building_class)},
        chunk_px=opts.chunk_px, window_px=window_px_for(opts.chunk_px), gsd_m=gsd_m,
        metric_wkt=scene_metric_crs(grid).to_wkt(),
        # 0.8: a margin for the difference between pixel area and area in the metric CRS; exact filter follows
        min_pixels=int(0.8 * opts.min_area_m2 / gsd_m ** 2), min_area_m2=opts.min_area_m2, simplify_m=opts.simplify_m,
        separator_threshold=_either(opts.separator_threshold, card.separator_threshold),
        separator_dilate_px=_either(opts.separator_dilate_px, card.separator_dilate_px),
        shaping={"regularise": opts.regularise, "min_rectangularity": opts.min_rectangularity}, owned=owned)
    return SceneRun(str(scene), name, scene_dir, staging, work, plan, opened.facts, opened.reader, len(tiles), started,
                    last_user=plan.last_user(), driver_s=time.perf_counter() - started)


def run_scenes(scenes: list[tuple[str, str]], out_dir: str | os.PathLike, opts: RunOptions, client=None,
               backend: Backend | None = None, retries: int = 0) -> Iterator[SceneOutcome]:
    """Run scenes ``(path, output folder name)`` together on ``client`` (None: in-process); yields a
    :class:`SceneOutcome` as each scene is published or fails. Bad input (GeosegError) fails its scene
    only; any other failure (a lost worker...) reruns the scene up to ``retries`` more times."""
    model = resolve_model(opts, backend)
    runner = runner_for(client)
    queue = deque((str(path), name, 1) for path, name in scenes)
    active: list[SceneRun] = []
    owner: dict = {}  # future -> (scene run, what it is)
    in_flight = {"batches": 0}
    bar = tqdm(total=0, unit="tile", desc="tiles", disable=not opts.progress, file=sys.stderr, leave=False)

    def budget() -> int:
        return 4 * runner.workers() + 4

    def submit_chunk(run: SceneRun) -> None:
        t = time.perf_counter()
        c = run.next_chunk
        needed = run.plan.needs[c]
        new = [b for b in needed if b not in run.batch_futures]
        for b in new:
            run.batch_futures[b] = runner.submit(predict_batch, run.reader, model.spec, run.plan.batches[b])
        own = set(run.plan.own[c])
        future = runner.submit(process_chunk, run.work, run.plan.chunks[c], [run.batch_futures[b] for b in needed],
                               [b in own for b in needed])
        owner[future] = (run, ("chunk", len(new)))
        run.waiting_on.add(future)
        in_flight["batches"] += max(1, len(new))
        for b in needed:
            if run.last_user[b] == c:
                del run.batch_futures[b]  # Dask keeps it for the chunks that use it; the driver lets go
        run.next_chunk += 1
        run.driver_s += time.perf_counter() - t

    def submit_finishing(run: SceneRun) -> None:
        chunks = run.plan.chunks
        jobs = {"mask": (assemble_cog, run.work, chunks, "mask"),
                "probability": (assemble_cog, run.work, chunks, "probability")}
        vectors = write_scene_instances if run.work.owned is not None else write_scene_vectors
        jobs["vectors"] = (vectors, run.work, chunks, list(opts.formats), run.reader)
        for kind, (fn, *args) in jobs.items():
            future = runner.submit(fn, *args, priority=1)  # a finished scene before more chunks
            owner[future] = (run, ("finish", kind))
            run.waiting_on.add(future)

    def drop(run: SceneRun) -> None:
        runner.cancel(run.waiting_on | set(run.batch_futures.values()))
        for future in run.waiting_on:
            kind = owner.pop(future, (None, ("", 0)))[1]
            if kind[0] == "chunk":
                in_flight["batches"] -= max(1, kind[1])
        run.batch_futures.clear()
        active.remove(run)
        _close_output(run.scene_dir, run.staging)

    try:
        while queue or active:
            while in_flight["batches"] < budget():  # fill: chunks of the scenes in flight, then new scenes
                run = next((r for r in active if r.chunks_left), None)
                if run is None and queue:
                    path, name, attempt = queue.popleft()
                    try:
                        run = open_run(path, name, out_dir, opts, model)
                    except GeosegError as err:
                        yield SceneOutcome(path, name, err, attempt)
                        continue
                    run.attempt = attempt
                    active.append(run)
                    bar.total += run.tiles_total
                    bar.refresh()
                if run is None:
                    break
                submit_chunk(run)
            if not owner:
                continue
            future = runner.next_done()
            if future not in owner:
                continue  # cancelled with its scene
            t = time.perf_counter()
            run, (what, detail) = owner.pop(future)
            run.waiting_on.discard(future)
            if what == "chunk":
                in_flight["batches"] -= max(1, detail)
            try:
                result = future.result()
            except Exception as err:  # noqa: BLE001 - a scene fails alone; transient failures are retried
                drop(run)
                if isinstance(err, GeosegError) or run.attempt > retries:
                    yield SceneOutcome(run.scene, run.name, err, run.attempt)
                else:
                    print(f"geoseg: scene {run.name}, attempt {run.attempt}: {one_line_error(err)}", file=sys.stderr)
                    queue.appendleft((run.scene, run.name, run.attempt + 1))
                continue
            if what == "chunk":
                run.results.append(result)
                bar.update(sum(len(run.plan.batches[b]) for b in run.plan.own[result.index]))
                if len(run.results) == len(run.plan.chunks):
                    submit_finishing(run)
                run.driver_s += time.perf_counter() - t
            else:
                run.finishing[detail] = result
                run.driver_s += time.perf_counter() - t
                if len(run.finishing) == 3:
                    active.remove(run)
                    yield SceneOutcome(run.scene, run.name, _publish(run, model, opts, client), run.attempt)
    finally:
        bar.close()
        for run in list(active):
            drop(run)


def _publish(run: SceneRun, model: RunModel, opts: RunOptions, client) -> RunSummary | Exception:
    try:
        t = time.perf_counter()
        workers_rss_mb = worker_peak_rss_mb(client)
        run.driver_s += time.perf_counter() - t
        summary = scene_summary(run, model, opts, peak_rss_mb(), workers_rss_mb)
        (run.staging / "summary.json").write_text(summary.to_json())
        publish(run.staging, run.scene_dir, summary.outputs + ["summary.json"])
        return summary
    except OSError as err:
        return err
    finally:
        _close_output(run.scene_dir, run.staging)


def one_line_error(err: Exception) -> str:
    return f"{type(err).__name__}: {str(err).splitlines()[0][:300] if str(err) else ''}"


def run_workers(scenes: list, opts: RunOptions, backend: Backend | None = None) -> int | None:
    """``--workers`` for a run of these scenes: as given, except that with it unset (one per core) a run of fewer
    than :data:`CLUSTER_MIN_TILES` tiles in all runs in-process (starting worker processes, each importing torch
    and loading the model, costs more than such a run: issue 17)."""
    if opts.workers is not None or opts.scheduler is not None:
        return opts.workers
    tiles = 0
    for scene in scenes:
        tiles += _tile_count(scene, opts, backend)
        if tiles >= CLUSTER_MIN_TILES:
            return None
    return 0


def run_scene(scene: str | os.PathLike, out_dir: str | os.PathLike, options: RunOptions | None = None,
              backend: Backend | None = None, name: str | None = None) -> RunSummary:
    """Run one scene end to end; returns the summary (also written as ``summary.json``).

    ``backend`` may be a ready backend object (for custom models); otherwise ``options.backend`` names one
    from the registry and each worker builds it once. Outputs go to ``out_dir/<name>/`` (default: the scene's
    file stem, made safe by :func:`geoseg.write.safe_folder_name`). Starts its own cluster if it needs one
    (:func:`run_workers`); :func:`run_scenes` runs several scenes on a cluster of the caller's.
    """
    opts = (options or RunOptions()).check()
    name = name or scene_folder_names([scene])[0]
    with dask_client(run_workers([scene], opts, backend), opts.scheduler) as client:
        for outcome in run_scenes([(str(scene), name)], out_dir, opts, client, backend):
            if isinstance(outcome.result, Exception):
                raise outcome.result
            return outcome.result
    raise GeosegError(f"{scene}: no result")  # unreachable: run_scenes yields once per scene


def _tile_count(scene, opts: RunOptions, backend: Backend | None) -> int:
    """Tiles of a scene as a run would cut it (0 where it cannot be opened: the run reports why)."""
    from .read import scene_grid

    try:
        card = resolve_model(opts, backend).card
        grid = scene_grid(scene, card.gsd_m, opts.target_gsd_m, opts.native_resolution, opts.assume_crs)
    except GeosegError:
        return 0
    return len(tile_grid(grid.height, grid.width, opts.tile_px, opts.overlap_px))


def _either(value, default):
    return default if value is None else value
