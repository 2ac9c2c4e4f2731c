"""Stitch stage: blend overlapping tile predictions with Hann weights into one chunk's rasters.

A worker blends the tiles that intersect a chunk core (:mod:`geoseg.chunk`) into arrays the size of the core:
``classes x core`` float32 sums and weights, so memory is bounded by the chunk size whatever the scene's. Each
pixel gets the weighted mean over every tile covering it, as a whole-scene blend would; invalid input pixels
carry no weight. The core's rasters are then written as *pieces* (plain tiled GeoTIFFs on the scene's grid,
placed by their own transform), which :mod:`geoseg.assemble` mosaics into the scene's COGs:

* building probability, uint8 0-255, with an internal mask: masked where the input was invalid;
* class labels, uint8 (argmax over classes), nodata = :data:`MASK_NODATA` where the input was invalid. With a
  ``building_threshold`` t (0-1, from the model card or ``--building-threshold``) a pixel is building exactly where
  the uint8 building probability is at least 255 t, so ``mask.tif`` can be re-derived from ``probability.tif``;
  a pixel the threshold takes out of the building class gets the most probable other class.

With a model that has a separator class (the line where touching buildings meet), the separator counts as
building in both (probability = P(building) + P(separator)), and P(separator) as uint8 0-255 is kept for the
vectorise stage, which keeps touching buildings apart along it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import rasterio
from affine import Affine
from rasterio.windows import Window

from .read import Grid
from .tile import Tile, blend_weights, overlap

MASK_NODATA = 255
_BLOCK_PX = 256


@dataclass
class TilePrediction:
    """One tile's output as a worker returns it. ``probabilities`` is None for an all-nodata tile."""

    tile: Tile
    probabilities: np.ndarray | None  # float16 (C, h, w)
    valid: np.ndarray  # bool (h, w)
    instances: list | None = None  # instance backends: geoseg.instances.Instance in tile pixels


@dataclass
class ChunkRasters:
    """A chunk core's stitched rasters (module docstring), each (h, w) uint8."""

    labels: np.ndarray
    probability: np.ndarray
    valid: np.ndarray  # bool
    separator: np.ndarray | None = None


def blend_chunk(core: Window, predictions: list[TilePrediction], n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Weighted mean class probabilities over ``core`` (float32 (C, h, w)) and where any tile saw valid input.

    The sums run in torch (on the worker's one thread): its float16 -> float32 conversion is vectorised where
    numpy's is not, and the in-place products need no temporary the size of a tile per class (the stitch stage of a
    generated 8192 px scene, 16 cores of 2048 px: 3.45 -> 2.43 s with numpy's argmax, ``benchmarks/bench_stages.py``). Each operation is the same IEEE float32 operation in the same order as the numpy
    it replaced, so the sums are the same to the last bit."""
    import torch

    h, w = int(core.height), int(core.width)
    acc = torch.zeros((n_classes, h, w), dtype=torch.float32)
    weight = torch.zeros((h, w), dtype=torch.float32)
    valid = np.zeros((h, w), bool)
    weights: dict[tuple[int, int], torch.Tensor] = {}
    for p in sorted(predictions, key=lambda p: p.tile):  # a fixed order: the same sums on every run
        t = p.tile
        shared = overlap(t, core)
        if shared is None:
            continue
        in_tile, in_core = shared
        tile_valid = p.valid[in_tile]
        valid[in_core] |= tile_valid
        if p.probabilities is None:
            continue
        key = (t.height, t.width)
        if key not in weights:
            weights[key] = torch.from_numpy(blend_weights(*key))
        wt = weights[key][in_tile] * torch.from_numpy(tile_valid)  # invalid pixels carry no weight
        tile_probs = torch.from_numpy(p.probabilities)[(slice(None), *in_tile)].to(torch.float32, copy=True)
        acc[(slice(None), *in_core)] += tile_probs.mul_(wt)
        weight[in_core] += wt
    covered = weight > 0
    valid &= covered.numpy()
    return acc.div_(torch.where(covered, weight, 1.0)).numpy(), valid


def argmax_classes(probs: np.ndarray) -> np.ndarray:
    """``probs.argmax(axis=0)`` as uint8 (the first class wins a tie), by one comparison per class. Blended
    probabilities change winner rarely (long runs of background), where this is 5x numpy's argmax over the first
    axis (``benchmarks/bench_fast_paths.py``; the stitch stage of a generated 8192 px scene 2.43 s without it, 1.76 s
    with it, ``benchmarks/bench_stages.py``); on noise it is no faster."""
    labels = np.zeros(probs.shape[1:], np.uint8)
    best = probs[0].copy()
    for c in range(1, len(probs)):
        labels[probs[c] > best] = c
        np.maximum(best, probs[c], out=best)
    return labels


def chunk_rasters(probs: np.ndarray, valid: np.ndarray, building_class: int,
                  separator_class: int | None = None, building_threshold: float | None = None) -> ChunkRasters:
    """Labels, building probability and (with a separator class) P(separator) from blended probabilities;
    ``building_threshold`` (0-1, None: the most probable class) as in the module docstring."""
    p_building = probs[building_class]
    labels = argmax_classes(probs)
    separator = None
    if separator_class is not None:
        p_separator = probs[separator_class]
        p_building = p_building + p_separator
        separator = np.clip(np.rint(p_separator * 255), 0, 255).astype(np.uint8) * valid
        labels[labels == separator_class] = building_class
    building = np.clip(np.rint(p_building * 255), 0, 255).astype(np.uint8)
    if building_threshold is not None:
        _threshold_building(labels, probs, building, building_class, separator_class, building_threshold)
    labels[~valid] = MASK_NODATA
    building[~valid] = 0
    return ChunkRasters(labels, building, valid, separator)


def probability_cut_u8(p: float) -> int:
    """The smallest uint8 building probability (0-255, as written here) that is at least ``p`` (0-1): a pixel
    reaches the cut ``p`` where its uint8 probability is >= this."""
    return math.ceil(round(p * 255, 6))  # round: 0.2 * 255 is 51.000000000000014


def _threshold_building(labels: np.ndarray, probs: np.ndarray, building: np.ndarray, building_class: int,
                        separator_class: int | None, threshold: float) -> None:
    """In place: ``labels`` is building exactly where ``building`` (uint8 P(building)) >= 255 threshold;
    pixels taken out of the building class get the most probable of the other classes."""
    is_building = building >= probability_cut_u8(threshold)
    demoted = (labels == building_class) & ~is_building
    if demoted.any():
        others = probs[:, demoted]
        for c in (building_class, separator_class):
            if c is not None:
                others[c] = -1.0
        labels[demoted] = others.argmax(0)
    labels[is_building] = building_class


def write_piece(path: str, array: np.ndarray, grid: Grid, core: Window, nodata: int | None,
                valid: np.ndarray | None = None, tags: dict | None = None) -> None:
    """A chunk's raster as a tiled GeoTIFF placed on the scene grid; ``valid``: written as its internal mask."""
    profile = dict(driver="GTiff", width=int(core.width), height=int(core.height), count=1, dtype=array.dtype.name,
                   crs=grid.crs, transform=grid.transform @ Affine.translation(core.col_off, core.row_off), tiled=True,
                   blockxsize=_BLOCK_PX, blockysize=_BLOCK_PX, nodata=nodata)
    with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True), rasterio.open(path, "w", **profile) as dst:
        dst.write(array, 1)
        if valid is not None:
            dst.write_mask(valid.astype(np.uint8) * 255)
        if tags:
            dst.update_tags(**tags)
