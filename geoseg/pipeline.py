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
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, NamedTuple

from tqdm import tqdm

from .assemble import finishing_steps, save_preview_base
from .backends import Backend, RunModel, describe_backend, spec_for
from .architectures import yields_instances
from .card import ModelCard
from .chunk import ChunkPlan, plan_chunks, window_px_for
from .cluster import dask_client, runner_for
from .probes import peak_rss_mb
from .errors import GeosegError
from .formats import REGISTRY, wgs84_only
from .options import RunOptions
from .read import SceneReader
from .scene import SceneFacts, is_local_crs, open_scene
from .summary import RunSummary, SceneDone, scene_summary
from .overviews import chunk_local_factors
from .staging import STAGING_PREFIX, ChunkResult, FinishResults, Measured, SceneWork, close_output, prepare_output
from .tasks import predict_batch, process_chunk, with_rss
from .tile import owned_areas, tile_grid
from .georeference import scene_metric_crs
from .vectorise import VectorParams
from .write import publish, scene_folder_names

#: fewer tiles than this in a whole run: no LocalCluster (starting one costs more than the tiles; issue 17)
CLUSTER_MIN_TILES = 24

__all__ = ["RunOptions", "RunSummary", "SceneOutcome", "run_scene", "run_scenes", "STAGING_PREFIX"]


def resolve_model(opts: RunOptions, backend: Backend | None = None) -> RunModel:
    if backend is not None:
        return RunModel(backend, backend.card, backend.model_sha256)
    spec = spec_for(opts)
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
    facts: SceneFacts
    reader: SceneReader
    tiles_total: int
    started: float
    attempt: int = 1
    next_chunk: int = 0
    batch_futures: dict = field(default_factory=dict)  # batch index -> future of its BatchResult
    last_user: list = field(default_factory=list)
    results: list[ChunkResult] = field(default_factory=list)
    finishing: dict = field(default_factory=dict)  # finishing step kind -> its result (geoseg.assemble)
    finished: FinishResults | None = None
    waiting_on: set = field(default_factory=set)
    driver_s: float = 0.0  # the driver's own wall time for this scene: open, plan, submit, collect, publish
    worker_rss_mb: dict = field(default_factory=dict)  # worker process -> the highest peak RSS its tasks reported

    def note_rss(self, reported: dict) -> None:
        for worker, mb in reported.items():
            self.worker_rss_mb[worker] = max(mb, self.worker_rss_mb.get(worker, 0.0))

    @property
    def chunks_left(self) -> bool:
        return self.next_chunk < len(self.plan.chunks)


@dataclass(frozen=True)
class Pending:
    """What a future in flight is to the driver: a chunk task (with the tile batches it newly submitted, which
    count against the in-flight bound) or one finishing step of its scene."""

    run: SceneRun
    kind: str  # "chunk" or "finish"
    batches: int = 0
    step: str = ""  # finishing: "mask", "probability" or "vectors"


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
    in_wgs84 = wgs84_only(opts.formats)
    if in_wgs84 and is_local_crs(grid.crs):
        keep = ",".join(k for k, f in REGISTRY.items() if not f.wgs84_only)
        raise GeosegError(f"{scene}: its CRS is a local site grid that cannot be placed on the globe, and "
                          f"{', '.join(REGISTRY[k].description for k in in_wgs84)} is in WGS84; use "
                          f"--formats {keep}, which keep the scene's CRS")
    tiles = tile_grid(grid.height, grid.width, opts.tile_px, opts.overlap_px)
    plan = plan_chunks(grid.height, grid.width, tiles, opts.chunk_px, opts.batch_tiles)
    scene_dir, staging = prepare_output(out_dir, name)
    try:
        save_preview_base(staging, opened.reader, opened.overview)
    except OSError:
        close_output(scene_dir, staging)
        raise
    gsd_m = opened.facts.grid_gsd_m
    owned = None
    if yields_instances(card.architecture):
        owned = owned_areas(tiles, grid.height, grid.width)
    published = card.classes if card.separator_class is None else card.classes[:card.separator_class]
    vector = VectorParams(
        building_class=card.building_class,
        # 0.8: a margin for the difference between pixel area and area in the metric CRS; exact filter follows
        min_pixels=int(0.8 * opts.min_area_m2 / gsd_m ** 2),
        building_threshold=_either(opts.building_threshold, card.building_threshold),
        min_confidence=_either(opts.min_confidence, card.min_confidence),
        separator_threshold=_either(opts.separator_threshold, card.separator_threshold),
        separator_dilate_px=_either(opts.separator_dilate_px, card.separator_dilate_px),
        min_area_m2=opts.min_area_m2, simplify_m=opts.simplify_m, regularise=opts.regularise,
        min_rectangularity=opts.min_rectangularity)
    work = SceneWork(
        grid=grid, staging=str(staging), n_classes=len(card.classes), separator_class=card.separator_class,
        mask_tags={"CLASSES": ",".join(published), "BUILDING_CLASS": str(card.building_class)},
        chunk_px=opts.chunk_px, window_px=window_px_for(opts.chunk_px), gsd_m=gsd_m,
        metric_wkt=scene_metric_crs(grid).to_wkt(), vector=vector, owned=owned,
        overview_factors=chunk_local_factors(grid.height, grid.width, opts.chunk_px))
    return SceneRun(str(scene), name, scene_dir, staging, work, plan, opened.facts, opened.reader, len(tiles), started,
                    last_user=plan.last_user(), driver_s=time.perf_counter() - started)


def run_scenes(scenes: list[tuple[str, str]], out_dir: str | os.PathLike, opts: RunOptions, client=None,
               backend: Backend | None = None, retries: int = 0, adapted: dict | None = None) -> Iterator[SceneOutcome]:
    """Run scenes ``(path, output folder name)`` together on ``client`` (None: in-process); yields a
    :class:`SceneOutcome` as each scene is published or fails. Bad input (GeosegError) fails its scene
    only; any other failure (a lost worker...) reruns the scene up to ``retries`` more times. ``adapted``: the
    report of :func:`geoseg.adapt.adapt` whose weights ``opts.model`` names (recorded in each summary)."""
    model = resolve_model(opts, backend)
    model.adapted = adapted
    driver = _Driver(out_dir, opts, model, runner_for(client), client, retries)
    driver.queue.extend((str(path), name, 1) for path, name in scenes)
    try:
        while driver.queue or driver.active:
            yield from driver.fill()
            if driver.owner:
                yield from driver.collect(driver.runner.next_done())
    finally:
        driver.bar.close()
        for run in list(driver.active):
            driver.drop(run)


class _Driver:
    """The state of :func:`run_scenes`: scenes waiting and in flight, and which future belongs to which."""

    def __init__(self, out_dir, opts: RunOptions, model: RunModel, runner, client, retries: int):
        self.out_dir, self.opts, self.model, self.runner, self.client = out_dir, opts, model, runner, client
        self.retries = retries
        self.queue: deque = deque()  # (path, name, attempt)
        self.active: list[SceneRun] = []
        self.owner: dict = {}  # future -> Pending
        self.batches_in_flight = 0
        self.bar = tqdm(total=0, unit="tile", desc="tiles", disable=not opts.progress, file=sys.stderr, leave=False)

    def fill(self) -> Iterator[SceneOutcome]:
        """Submit chunks, of the scenes in flight first, then of new scenes, while tile batches in flight are
        under 4 per worker (+4): enough to keep workers busy, few enough that worker memory stays bounded."""
        while self.batches_in_flight < 4 * self.runner.workers() + 4:
            run = next((r for r in self.active if r.chunks_left), None)
            if run is None and self.queue:
                path, name, attempt = self.queue.popleft()
                try:
                    run = open_run(path, name, self.out_dir, self.opts, self.model)
                except GeosegError as err:
                    yield SceneOutcome(path, name, err, attempt)
                    continue
                run.attempt = attempt
                self.active.append(run)
                self.bar.total += run.tiles_total
                self.bar.refresh()
            if run is None:
                return
            with self._driver_time(run):
                self.submit_chunk(run)

    def submit_chunk(self, run: SceneRun) -> None:
        c = run.next_chunk
        needed = run.plan.needs[c]
        new = [b for b in needed if b not in run.batch_futures]
        for b in new:
            run.batch_futures[b] = self.runner.submit(predict_batch, run.reader, self.model.spec, run.plan.batches[b])
        own = set(run.plan.own[c])
        finish = list(self.opts.formats) if len(run.plan.chunks) == 1 else None
        future = self.runner.submit(process_chunk, run.work, run.plan.chunks[c],
                                    [run.batch_futures[b] for b in needed], [b in own for b in needed], finish)
        self._track(future, Pending(run, "chunk", batches=max(1, len(new))))
        self.batches_in_flight += max(1, len(new))
        for b in needed:
            if run.last_user[b] == c:
                del run.batch_futures[b]  # Dask keeps it for the chunks that use it; the driver lets go
        run.next_chunk += 1

    def submit_finishing(self, run: SceneRun) -> None:
        """The COGs and the vector files (+ preview) of a scene whose chunks are all done: three tasks."""
        steps = finishing_steps(run.work, run.plan.chunks, list(self.opts.formats))
        for kind, (fn, *args) in steps.items():
            self._track(self.runner.submit(with_rss, fn, *args, priority=1), Pending(run, "finish", step=kind))  # first

    def collect(self, future) -> Iterator[SceneOutcome]:
        """Take one finished future: a chunk (the scene's finishing follows its last), a finishing task (the
        scene is published after its last), or a failure (the scene is dropped, and retried or reported)."""
        if future not in self.owner:
            return  # cancelled with its scene
        pending = self.owner.pop(future)
        run = pending.run
        run.waiting_on.discard(future)
        self.batches_in_flight -= pending.batches
        try:
            result = future.result()
        except Exception as err:  # noqa: BLE001 - a scene fails alone; transient failures are retried
            self.drop(run)
            if isinstance(err, GeosegError) or run.attempt > self.retries:
                yield SceneOutcome(run.scene, run.name, err, run.attempt)
            else:
                print(f"geoseg: scene {run.name}, attempt {run.attempt}: {one_line_error(err)}", file=sys.stderr)
                self.queue.appendleft((run.scene, run.name, run.attempt + 1))
            return
        with self._driver_time(run):
            if pending.kind == "chunk":
                run.results.append(result)
                run.note_rss(result.rss_mb)
                self.bar.update(sum(len(run.plan.batches[b]) for b in run.plan.own[result.index]))
                if result.finished is not None:
                    run.finished = result.finished
                elif len(run.results) == len(run.plan.chunks):
                    self.submit_finishing(run)
            else:
                measured: Measured = result
                run.finishing[pending.step] = measured.value
                run.note_rss(measured.rss_mb)
                if len(run.finishing) == 3:
                    run.finished = FinishResults.of(run.finishing)
        if run.finished is not None:
            self.active.remove(run)
            yield SceneOutcome(run.scene, run.name, _publish(run, self.model, self.opts, self.client), run.attempt)

    def drop(self, run: SceneRun) -> None:
        """Cancel what a failed scene still waits on, and remove its staging folder."""
        self.runner.cancel(run.waiting_on | set(run.batch_futures.values()))
        for future in run.waiting_on:
            pending = self.owner.pop(future, None)
            if pending is not None:
                self.batches_in_flight -= pending.batches
        run.waiting_on.clear()
        run.batch_futures.clear()
        self.active.remove(run)
        close_output(run.scene_dir, run.staging)

    def _track(self, future, pending: Pending) -> None:
        self.owner[future] = pending
        pending.run.waiting_on.add(future)

    @contextmanager
    def _driver_time(self, run: SceneRun) -> Iterator[None]:
        """Count the enclosed wall time as the scene's driver time, less what tasks ran in-process in it."""
        t, in_tasks = time.perf_counter(), self.runner.task_s
        yield
        run.driver_s += time.perf_counter() - t - (self.runner.task_s - in_tasks)


def _publish(run: SceneRun, model: RunModel, opts: RunOptions, client) -> RunSummary | Exception:
    try:
        workers_rss_mb = sum(run.worker_rss_mb.values()) if client is not None else 0.0  # in-process: the driver's
        done = SceneDone(run.facts, run.work, tuple(run.results), run.finished, run.tiles_total,
                         time.perf_counter() - run.started, run.driver_s, peak_rss_mb(), workers_rss_mb)
        summary = scene_summary(done, model, opts)
        (run.staging / "summary.json").write_text(summary.to_json())
        publish(run.staging, run.scene_dir, summary.outputs + ["summary.json"])
        return summary
    except OSError as err:
        return err
    finally:
        close_output(run.scene_dir, run.staging)


def one_line_error(err: Exception) -> str:
    return f"{type(err).__name__}: {str(err).splitlines()[0][:300] if str(err) else ''}"


def run_workers(scenes: list, opts: RunOptions, backend: Backend | None = None) -> int | None:
    """``--workers`` for a run of these scenes: as given, except that with it unset (one per core) a run of fewer
    than :data:`CLUSTER_MIN_TILES` tiles in all runs in-process (starting worker processes, each importing torch
    and loading the model, costs more than such a run: issue 17). Resolves the model first, so that a model, gate
    or pre-gate that cannot be used is refused before any cluster starts (one line, nothing else on stderr)."""
    card = resolve_model(opts, backend).card
    if opts.workers is not None or opts.scheduler is not None:
        return opts.workers
    tiles = 0
    for scene in scenes:
        tiles += _tile_count(scene, opts, card)
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


def _tile_count(scene, opts: RunOptions, card: ModelCard) -> int:
    """Tiles of a scene as a run of ``card``'s model would cut it (0 where it cannot be opened: the run reports
    why)."""
    from .scene import scene_grid

    try:
        grid = scene_grid(scene, card.gsd_m, opts.target_gsd_m, opts.native_resolution, opts.assume_crs)
    except GeosegError:
        return 0
    return len(tile_grid(grid.height, grid.width, opts.tile_px, opts.overlap_px))


def _either(value, default):
    return default if value is None else value
