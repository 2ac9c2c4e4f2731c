"""``geoseg run --adapt``: the model adapted to the run's own scenes before inference, without a single label.

1. **Tiles**: up to ``max_tiles`` tiles of ``tile_px`` spread evenly over the run's scenes (in proportion to each
   scene's tile count), read on the model's grid exactly as the run reads them; tiles under half valid are
   skipped.
2. **Batch-norm statistics** (AdaBN): each batch-norm layer's mean and variance measured on those tiles, blended
   with the training statistics: ``(1 - bn_blend) * training + bn_blend * scene``.
3. **Self-training**: the model's own confident pixels (softmax >= ``confidence``; building, separator and
   background alike) are pseudo-labels, the rest is ignored; with at most ``max_flip_tiles`` tiles, of its
   probabilities averaged over each tile and its flips (three more forward passes a tile: 1.8 s for a 512 px tile
   on 2 cores, so on 24 tiles they would take half the default budget from the fine-tune); tiles with
   pseudo-buildings are all kept and tiles without at most half as many again, so a scene that is nearly all desert
   does not teach the model to say background everywhere. The model is then fine-tuned on them as ``geoseg
   finetune`` does (:func:`geoseg.finetune.fit`: the training recipe's crops and loss, batch norm as set in 2), for
   ``steps`` steps or ``budget_s`` seconds in all, whichever ends first. A scene without any confident building
   pixel gets step 2 only.

The adapted weights and card (``training.adapt``: base model and sha256, scenes, tiles, pseudo-labelled share,
steps, seconds, seed) are written to ``OUT/adapted/NAME-adapted.safetensors``; the run then uses them. With the
same scenes, seed and options, and ``steps`` reached before ``budget_s``, the weights are the same. A gate of the
base model is kept for the adapted weights (``NAME-adapted.gate.json``: the base's thresholds, its calibration
marked ``kept_from``), so the gated default stays gated.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .card import resolve_model_path
from .datasets import IGNORE, LabelledScene
from .errors import GeosegError
from .gate import gate_path, pregate_path
from .pregate import PreGate
from .model import GeoModel, load_model, save_model, use_bf16
from .scene import open_scene
from .tile import tile_grid

#: pixels whose top class probability is at least this become pseudo-labels (the probe: 0.9 labels 55-90 %)
CONFIDENCE = 0.9
#: a tile "has buildings" when at least this share of its pseudo-labelled pixels is building or separator
BUILDING_TILE_SHARE = 0.005


@dataclass(frozen=True)
class AdaptSettings:
    """How to adapt (module docstring); units in the names."""

    budget_s: float = 90.0
    steps: int = 100
    max_tiles: int = 24
    tile_px: int = 512
    bn_blend: float = 0.5
    confidence: float = CONFIDENCE
    max_flip_tiles: int = 8
    seed: int = 0


@dataclass(frozen=True)
class AdaptReport:
    """What adapting did, as ``summary.json`` records it under ``adapt``."""

    model: str
    base_model: str
    base_sha256: str
    scenes: list
    tiles: int
    tiles_with_buildings: int
    pseudo_labelled_share: float
    flip_averaged: bool
    bn_blend: float
    steps: int
    seconds: float
    seed: int

    def to_dict(self) -> dict:
        return asdict(self)


def spread_tiles(scenes: list, settings: AdaptSettings) -> list[tuple[object, object]]:
    """(reader, tile) pairs: at most ``max_tiles``, spread evenly over the scenes' tile grids."""
    grids = [tile_grid(r.grid.height, r.grid.width, settings.tile_px, 0) for r in scenes]
    total = sum(len(g) for g in grids)
    picked = []
    for reader, tiles in zip(scenes, grids):
        share = max(1, round(settings.max_tiles * len(tiles) / total))
        for i in np.unique(np.linspace(0, len(tiles) - 1, min(share, len(tiles))).round().astype(int)):
            picked.append((reader, tiles[i]))
    return picked[: max(settings.max_tiles, len(scenes))]


def read_tiles(paths: list[str], card, settings: AdaptSettings, opts) -> list[tuple[np.ndarray, np.ndarray]]:
    """The tiles (pixels, valid) adaptation learns from, read as the run reads them."""
    readers = [open_scene(p, model_gsd_m=card.gsd_m, n_model_bands=len(card.bands), bands=opts.bands,
                          assume_crs=opts.assume_crs, target_gsd_m=opts.target_gsd_m,
                          native_resolution=opts.native_resolution).reader for p in paths]
    tiles = []
    for reader, tile in spread_tiles(readers, settings):
        pixels, valid = reader.read_tile(tile.window)
        if valid.mean() >= 0.5:
            tiles.append((pixels, valid))
    return tiles


def _batchnorms(net: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


@torch.no_grad()
def blend_batchnorm(net: GeoModel, tiles: list[tuple[np.ndarray, np.ndarray]], blend: float) -> None:
    """AdaBN: every batch-norm layer's statistics measured on ``tiles`` (an exact average over them), blended with
    the training statistics by ``blend`` (0: unchanged)."""
    layers = _batchnorms(net)
    if blend <= 0 or not layers or not tiles:
        return
    saved = [(m.running_mean.clone(), m.running_var.clone(), m.momentum) for m in layers]
    for m in layers:
        m.reset_running_stats()
        m.momentum = None  # a cumulative average over all the tiles
        m.train()
    for pixels, _ in tiles:
        net(net.prepare(torch.from_numpy(pixels)[None]))
    for m, (mean, var, momentum) in zip(layers, saved):
        m.running_mean.mul_(blend).add_((1 - blend) * mean)
        m.running_var.mul_(blend).add_((1 - blend) * var)
        m.momentum = momentum
    net.eval()


def pseudo_labels(net: GeoModel, tiles: list[tuple[np.ndarray, np.ndarray]], confidence: float,
                  flips: bool = False) -> list[np.ndarray]:
    """The model's confident class per pixel (IGNORE elsewhere and where there is no imagery); with ``flips``, of
    its class probabilities averaged over the tile as it is and flipped left-right, up-down and both (the same
    flips as ``--tta``: fewer confident mistakes to learn from, at four times the forward passes). With a separator
    class, a pixel whose most probable class is the separator is labelled separator when building and separator
    together reach ``confidence``: a separator is a line of one or two pixels that the model rarely gives 0.9 alone,
    and left unlabelled, self-training on the building pixels beside it wore the separators away (Dhaka's touching
    houses merged: SpaceNet F1 0.380 -> 0.352)."""
    from .finetune import class_probabilities

    autocast = use_bf16("auto")
    card = net.card
    probabilities = flip_averaged_probabilities if flips else class_probabilities
    return [confident_labels(probabilities(net, pixels, autocast), valid, confidence, card.building_class,
                             card.separator_class) for pixels, valid in tiles]


#: the flips averaged over (axes of a (bands, h, w) tile): as it is, left-right, up-down, both -- the same
#: views as ``--tta`` (:data:`geoseg.backends.unet.TTA_TURNS`), here on one in-memory tile
FLIPS = ((), (2,), (1,), (1, 2))


def flip_averaged_probabilities(net: GeoModel, pixels: np.ndarray, autocast: bool) -> np.ndarray:
    """Class probabilities (C, h, w) of a tile averaged over :data:`FLIPS` (each flipped back before averaging),
    so the same for a tile and for its flips."""
    from .finetune import class_probabilities

    return sum(np.flip(class_probabilities(net, np.ascontiguousarray(np.flip(pixels, axes)), autocast), axes)
               for axes in FLIPS) / len(FLIPS)


def confident_labels(p: np.ndarray, valid: np.ndarray, confidence: float, building_class: int,
                     separator_class: int | None) -> np.ndarray:
    """:func:`pseudo_labels` of one tile's class probabilities ``p`` (classes, h, w): the most probable class where
    it reaches ``confidence``, or where it is the separator and building + separator reach it; IGNORE elsewhere."""
    best = p.argmax(0)
    sure = p.max(0) >= confidence
    if separator_class is not None:
        sure |= (best == separator_class) & (p[separator_class] + p[building_class] >= confidence)
    return np.where(sure & valid, best, IGNORE).astype(np.uint8)


def balanced(scenes: list[LabelledScene], building_classes: list[int]) -> tuple[list[LabelledScene], int]:
    """Every tile with pseudo-buildings, and at most half as many again without (module docstring, step 3)."""
    def has_buildings(s: LabelledScene) -> bool:
        known = s.labels != IGNORE
        return known.any() and np.isin(s.labels[known], building_classes).mean() >= BUILDING_TILE_SHARE

    with_b = [s for s in scenes if has_buildings(s)]
    without = [s for s in scenes if not has_buildings(s)]
    return with_b + without[: max(1, len(with_b) // 2)] if with_b else [], len(with_b)


def adapt(paths: list[str], out_dir: str | os.PathLike, opts, settings: AdaptSettings = AdaptSettings(),
          progress: bool = True) -> AdaptReport:
    """Adapt ``opts.model`` to the scenes ``paths`` (module docstring); returns what was done. The adapted
    weights are ``OUT/adapted/NAME-adapted.safetensors``."""
    from .finetune import fit

    started = time.perf_counter()
    base_path = resolve_model_path(opts.model)
    net, base_sha256 = load_model(base_path)
    card = net.card
    if card.architecture not in ("unet", "fastscnn", "contextnet"):
        raise GeosegError(f"--adapt: model {card.name} is a {card.architecture}; adapting takes an encoder-decoder "
                          "model (unet, fastscnn, contextnet and the gated default)")
    torch.manual_seed(settings.seed)
    tiles = read_tiles(paths, card, settings, opts)
    if not tiles:
        raise GeosegError("--adapt: no tile of the scenes is at least half valid imagery; nothing to adapt to")
    blend_batchnorm(net, tiles, settings.bn_blend)
    flip_averaged = len(tiles) <= settings.max_flip_tiles
    labels = pseudo_labels(net, tiles, settings.confidence, flip_averaged)
    scenes = [LabelledScene(f"tile{i}", pixels, y, "train", place="scene") for i, ((pixels, _), y) in
              enumerate(zip(tiles, labels))]
    building_classes = [card.building_class] + ([card.separator_class] if card.separator_class is not None else [])
    train, with_buildings = balanced(scenes, building_classes)
    steps = 0
    if train:
        left_s = max(0.0, settings.budget_s - (time.perf_counter() - started))
        steps = fit(net, train, None, steps=settings.steps, seconds=left_s, seed=settings.seed, progress=False).steps
    out = Path(out_dir) / "adapted"
    out.mkdir(parents=True, exist_ok=True)
    weights = out / f"{base_path.stem}-adapted.safetensors"
    report = AdaptReport(str(weights.resolve()), base_path.stem, base_sha256, [str(Path(p).resolve()) for p in paths],
                         len(tiles), with_buildings,
                         round(float(np.mean([(y != IGNORE).mean() for y in labels])), 4), flip_averaged,
                         settings.bn_blend, steps,
                         round(time.perf_counter() - started, 1), settings.seed)
    card.name = weights.stem
    card.training = {"adapt": report.to_dict() | {"settings": asdict(settings)}, "base_training": card.training}
    sha256 = save_model(net, weights)
    _keep_gate(base_path, weights, sha256, base_sha256)
    if progress:
        print(f"geoseg: adapted {base_path.stem} to {len(paths)} scene(s): {len(tiles)} tiles ({with_buildings} with "
              f"buildings), {steps} steps, {report.seconds} s", flush=True)
    return report


def _keep_gate(base_path: Path, weights: Path, sha256: str, base_sha256: str) -> None:
    """The base model's gate, kept for the adapted weights (its thresholds, the new checksum, ``kept_from``)."""
    source = gate_path(base_path)
    if not source.exists():
        gate_path(weights).unlink(missing_ok=True)
        return
    gate = json.loads(source.read_text())
    gate["calibration"] = dict(gate.get("calibration") or {}, kept_from={
        "model_sha256": base_sha256, "note": "thresholds calibrated on the base model, kept for its adapted weights"})
    gate["model_sha256"] = sha256
    from .atomic import write_text_atomic

    write_text_atomic(gate_path(weights), json.dumps(gate, indent=2) + "\n")
    if pregate_path(base_path).exists():  # the pre-gate sees thumbnails of the input, which adapting leaves as is
        pre = PreGate.load(pregate_path(base_path))
        pre.model_sha256, pre.calibration = sha256, dict(pre.calibration, kept_from=base_sha256)
        pre.save(pregate_path(weights))
    else:
        pregate_path(weights).unlink(missing_ok=True)


def adapt_run(scenes: list[str], out_dir: str | os.PathLike, opts) -> tuple[object, dict]:
    """Adapt a run's model to its scenes (``geoseg run --adapt``, a job's ``adapt: true``): the run options then
    name the adapted weights; the report goes into each scene's summary."""
    import dataclasses

    from .backends import spec_for

    spec = spec_for(opts)
    report = adapt(scenes, out_dir, dataclasses.replace(opts, model=spec.model),
                   AdaptSettings(budget_s=opts.adapt_budget_s), progress=opts.progress)
    return dataclasses.replace(opts, model=report.model), report.to_dict()
