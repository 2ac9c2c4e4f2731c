"""The staging floor between a scene's chunk tasks (:mod:`geoseg.tasks`) and its finishing steps
(:mod:`geoseg.assemble`): what every chunk of a scene knows (:class:`SceneWork`), where its pieces lie in the staging
folder, and the chunk border pieces and instances written there and read back, as plain arrays (never a pickle:
whoever can write into the staging folder during a run must not be able to run code in the worker that reads it).
Both stages import this module; neither imports the other at load time.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import shapely

from .read import Grid


@dataclass(frozen=True)
class SceneWork:
    """What every chunk of one scene needs to know (picklable, small)."""

    grid: Grid
    staging: str
    n_classes: int
    building_class: int
    separator_class: int | None
    mask_tags: dict
    chunk_px: int
    window_px: int
    gsd_m: float
    metric_wkt: str
    min_pixels: int = 0
    min_area_m2: float = 0.0
    simplify_m: float = 0.0
    separator_threshold: float = 0.5
    separator_dilate_px: int = 0
    shaping: dict = field(default_factory=dict)
    #: instance models: (row_off, col_off) of each tile -> the scene pixels it owns (geoseg.tile.owned_areas)
    owned: dict | None = None


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


def load_pieces(path: Path) -> list:
    from .vectorise import Piece

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


def load_instances(path: Path) -> list:
    from .instances import Instance

    with np.load(path, allow_pickle=False) as a:
        masks, out, at = a["masks"], [], 0
        for row, col, score, (h, w) in zip(a["rows"].tolist(), a["cols"].tolist(), a["scores"].tolist(), a["shapes"].tolist()):
            out.append(Instance(row, col, masks[at: at + h * w].reshape(h, w), score))
            at += h * w
        return out


def _save_arrays(path: Path, **arrays) -> None:
    with open(path, "wb") as f:  # a file object: numpy would append ".npz" to a path that lacks it
        np.savez(f, **arrays)
