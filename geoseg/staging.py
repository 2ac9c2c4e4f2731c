"""The staging floor between a scene's chunk tasks (:mod:`geoseg.tasks`), its finishing steps
(:mod:`geoseg.assemble`), the driver (:mod:`geoseg.pipeline`) and the summary (:mod:`geoseg.summary`): the typed
records that cross the worker boundary and the stages, as frozen values, and the staging folder's layout.

* :class:`SceneWork`: what every chunk of a scene knows (the driver's plan, sent to workers);
* :class:`BatchStats`: what a tile batch cost (seconds, tiles, backend counters), summed with ``+``;
* :class:`ChunkResult`: what a chunk task reports (its batches' stats, its seconds, its polygons);
* :class:`VectorsWritten`, :class:`FinishResults`: what the finishing steps report;
* :class:`Measured`: a task's value with the peak RSS of the worker that ran it;
* :class:`Instance`: one building detection of an instance model.

A scene's staging folder (``OUT/<scene>/.geoseg-partial-HOST-PID``, :func:`prepare_output`) holds
``pieces/<kind>-NNNNN<suffix>`` (:func:`piece_path`); the chunk border pieces and
instances are written there and read back as plain arrays (never a pickle: whoever can write into the staging
folder during a run must not be able to run code in the worker that reads it). Every stage imports this module;
it imports none of them but the value types it stores.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import shapely

from .errors import GeosegError
from .lock import Owner
from .read import Grid
from .vectorise import Piece, VectorParams
from .write import discard


@dataclass
class Instance:
    """One detection in tile pixels (or, once kept by its chunk, grid pixels): the top-left (row, col) of ``mask``,
    a bool array cropped to the instance's bounding box (its first/last rows and columns hold mask pixels), and
    its score. Made by :mod:`geoseg.instances` on the workers."""

    row_px: int
    col_px: int
    mask: np.ndarray
    score: float


@dataclass(frozen=True)
class SceneWork:
    """What every chunk of one scene needs to know (picklable, small)."""

    grid: Grid
    staging: str
    n_classes: int
    separator_class: int | None
    mask_tags: dict
    chunk_px: int
    window_px: int
    gsd_m: float
    metric_wkt: str
    vector: VectorParams = VectorParams()
    #: instance models: (row_off, col_off) of each tile -> the scene pixels it owns (geoseg.tile.owned_areas)
    owned: dict | None = None
    #: the COGs' overview factors the chunks make (geoseg.overviews); () : GDAL builds the overviews
    overview_factors: tuple[int, ...] = ()

    @property
    def building_class(self) -> int:
        return self.vector.building_class

    @property
    def building_threshold(self) -> float | None:
        """P(building) 0-1 at which the stitch stage labels a pixel building (None: the most probable class)."""
        return self.vector.building_threshold


@dataclass(frozen=True)
class BatchStats:
    """What one or more tile batches cost on the workers: seconds reading and in the model, tiles encoded (any valid
    pixel), decoded (past the gate), run in bf16, and the backend's own counters (blocks, instances...)."""

    read_s: float = 0.0
    model_s: float = 0.0
    encoded: int = 0
    decoded: int = 0
    bf16_tiles: int = 0
    counters: Mapping[str, int] = field(default_factory=dict)

    def __add__(self, other: BatchStats) -> BatchStats:
        counters = dict(self.counters)
        for key, value in other.counters.items():
            counters[key] = counters.get(key, 0) + value
        return BatchStats(self.read_s + other.read_s, self.model_s + other.model_s, self.encoded + other.encoded,
                          self.decoded + other.decoded, self.bf16_tiles + other.bf16_tiles, counters)

    @staticmethod
    def total(stats: Iterable[BatchStats]) -> BatchStats:
        return sum(stats, BatchStats())


@dataclass(frozen=True)
class VectorsWritten:
    """The vector finishing step of a scene: buildings written, seconds, file names (vector files, sidecars, the
    preview; ``instances.tif`` first for instance models) and, for instance models, the instances kept before
    ``min_area_m2``."""

    buildings: int
    seconds: float
    outputs: tuple[str, ...]
    instances_kept: int | None = None


@dataclass(frozen=True)
class FinishResults:
    """A scene's three finishing steps: seconds writing each COG, and the vectors."""

    mask_s: float
    probability_s: float
    vectors: VectorsWritten

    @staticmethod
    def of(steps: Mapping[str, float | VectorsWritten]) -> FinishResults:
        """From ``kind -> result`` of :func:`geoseg.assemble.finishing_steps`."""
        return FinishResults(steps["mask"], steps["probability"], steps["vectors"])


@dataclass(frozen=True)
class ChunkResult:
    """What a chunk task reports to the driver: its own batches' stats, seconds on the worker, the final polygons in
    its parquet piece, the pieces (or instances) in its ``chunk-NNNNN.npz`` for the finishing step, the peak RSS
    of its worker and, for a scene of one chunk, the scene's finishing done in the same task."""

    index: int
    stats: BatchStats
    stitch_s: float
    write_s: float
    vectorise_s: float
    polygons: int
    border: int
    rss_mb: Mapping[str, float] = field(default_factory=dict)
    finished: FinishResults | None = None


@dataclass(frozen=True)
class Measured:
    """A task's result and the peak RSS (MB) of the worker process that ran it, keyed ``host:pid``."""

    value: object
    rss_mb: Mapping[str, float]


#: a staging folder's name: the run's owner (``HOST-PID``) at the end, so a later run can tell a dead run's leftovers
STAGING_PREFIX = ".geoseg-partial-"


def _live_staging(scene_dir: Path) -> list[tuple[Path, Owner]]:
    """Staging folders in ``scene_dir`` whose run may still be going, with their owners; those a killed run
    (SIGKILL, power cut) left on this host are removed (:mod:`geoseg.lock`: another host's count as live)."""
    live = []
    for leftover in scene_dir.glob(f"{STAGING_PREFIX}*"):
        owner = Owner.parse(leftover.name[len(STAGING_PREFIX):])
        if owner is not None and owner.alive():
            live.append((leftover, owner))
        else:
            discard(leftover)
    return live


def prepare_output(out_dir: str | os.PathLike, name: str) -> tuple[Path, Path]:
    """Create ``OUT/<name>/`` and a staging folder in it (``.geoseg-partial-HOST-PID``); a clear error if it
    cannot be written, or if another live run is writing the same scene folder (two runs would each publish
    half of their files over the other's). ``name`` must be a safe folder name
    (:func:`geoseg.write.safe_folder_name`)."""
    scene_dir = Path(out_dir) / name
    try:
        scene_dir.mkdir(parents=True, exist_ok=True)
        staging = Path(scene_dir / f"{STAGING_PREFIX}{Owner.me().tag}")
        staging.mkdir(exist_ok=True)  # first, then look: of two runs starting together, neither misses the other
        others = [(path, owner) for path, owner in _live_staging(scene_dir) if path != staging]
        if others:
            discard(staging)
            path, owner = others[0]
            raise GeosegError(f"{scene_dir}: another geoseg run is writing this folder (host {owner.host}, pid "
                              f"{owner.pid}); wait for it or choose another -o (if it is dead, remove {path})")
        (staging / "pieces").mkdir(exist_ok=True)
    except OSError as err:
        raise GeosegError(f"cannot write to output folder {scene_dir}: {err.strerror}") from None
    if not os.access(staging, os.W_OK):
        discard(staging)
        raise GeosegError(f"cannot write to output folder {scene_dir}: permission denied")
    return scene_dir, staging


def close_output(scene_dir: Path, staging: Path) -> None:
    discard(staging)
    if scene_dir.exists() and not any(scene_dir.iterdir()):
        scene_dir.rmdir()  # a failed first run leaves no folder behind either


def piece_path(staging: str | Path, kind: str, index: int, suffix: str = ".tif") -> Path:
    return Path(staging) / "pieces" / f"{kind}-{index:05d}{suffix}"


def dump_pieces(path: Path, pieces: list) -> None:
    """Border pieces (:class:`geoseg.vectorise.Piece`) as plain arrays: polygons as WKB, no pickle. Whoever can
    write into the staging folder during a run must not be able to run code in the worker that reads it back."""
    wkb = [shapely.to_wkb(p.polygon) for p in pieces]
    _save_arrays(path, wkb=np.frombuffer(b"".join(wkb), np.uint8), ends=np.cumsum([len(w) for w in wkb], dtype=np.int64),
                 probability_sum=np.array([p.probability_sum for p in pieces], np.float64),
                 pixels=np.array([p.pixels for p in pieces], np.int64),
                 window=np.array([-1 if p.window is None else p.window for p in pieces], np.int64))


def load_pieces(path: Path) -> list[Piece]:
    with np.load(path, allow_pickle=False) as a:
        blob, ends = a["wkb"].tobytes(), a["ends"].tolist()
        starts = [0] + ends[:-1]
        return [Piece(shapely.from_wkb(blob[s:e]), float(ps), int(px), None if w < 0 else int(w))
                for s, e, ps, px, w in zip(starts, ends, a["probability_sum"], a["pixels"], a["window"])]


def dump_instances(path: Path, instances: list) -> None:
    """Kept instances (:class:`geoseg.instances.Instance`, grid px) as plain arrays, no pickle (see
    :func:`dump_pieces`): masks flattened one after another, with their shapes."""
    _save_arrays(path, rows=np.array([i.row_px for i in instances], np.int64),
                 cols=np.array([i.col_px for i in instances], np.int64),
                 scores=np.array([i.score for i in instances], np.float64),
                 shapes=np.array([i.mask.shape for i in instances], np.int64).reshape(-1, 2),
                 masks=np.concatenate([i.mask.ravel() for i in instances]).astype(bool) if instances else np.zeros(0, bool))


def load_instances(path: Path) -> list[Instance]:
    with np.load(path, allow_pickle=False) as a:
        masks, out, at = a["masks"], [], 0
        for row, col, score, (h, w) in zip(a["rows"].tolist(), a["cols"].tolist(), a["scores"].tolist(), a["shapes"].tolist()):
            out.append(Instance(row, col, masks[at: at + h * w].reshape(h, w), score))
            at += h * w
        return out


def _save_arrays(path: Path, **arrays) -> None:
    with open(path, "wb") as f:  # a file object: numpy would append ".npz" to a path that lacks it
        np.savez(f, **arrays)
