"""``geoseg train``: train a segmentation model on real labelled imagery, CPU-friendly, resumable, deterministic.

One epoch is ``steps_per_epoch`` batches of random ``crop_px`` crops (scale, flip/rotate and colour
augmentation) drawn from the training scenes in proportion to their labelled area; after each epoch the model
is evaluated on the held-out scenes, the best one (by ``select_metric``) is written as
``OUT/best.safetensors`` + card, and ``OUT/checkpoint.pt`` holds everything needed by ``--resume``.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Annotated, Literal, Union

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field, field_validator
from tqdm import tqdm

from .atomic import atomic_path
from .architectures import ARCHITECTURES, architecture, size_multiple_px
from .card import ModelCard
from .datasets import (IGNORE, LabelledScene, chips_source, dubai_source, geotiff_source, image_mask_source,
                       negatives_source, xyz_source)
from .augment import sensor_augment
from .errors import GeosegError
from .losses import GateProbe, training_loss
from .model import GeoModel, build_model, init_weights_from, save_model, use_bf16
from .yamlfile import Strict, load_yaml


class SourceBase(Strict):
    #: the place the source shows (leave-one-place-out studies leave out every source of a place); default: the
    #: folder under buildings/ or landcover/ its first path names
    place: str | None = None


class GeotiffSource(SourceBase):
    kind: Literal["geotiff"]
    image: str
    labels: str | None = None
    mask: str | None = None
    val_fraction: float = Field(0.2, ge=0, lt=1)
    gap_px: int = Field(64, ge=0)
    split: Literal["train", "val"] | None = None  # the whole scene to one split (val_fraction then unused)


class ChipsSource(SourceBase):
    kind: Literal["chips"]
    images: str
    masks: str
    split: Literal["train", "val"] = "train"
    exclude_overlap_with: str | None = None
    labels: str | None = None
    distinct_ground: bool = False  # the same ground at several zoom levels counted once


class DubaiSource(SourceBase):
    kind: Literal["dubai"]
    root: str
    assumed_gsd_m: float = Field(gt=0)
    val_tiles: list[str] = []
    buildings_only: bool = False  # Building -> building, other labelled classes -> background


class ImageMaskSource(SourceBase):
    kind: Literal["image_mask"]
    image: str
    mask: str
    native_gsd_m: float = Field(gt=0)
    split: Literal["train", "val"] = "train"
    val_fraction: float = Field(0.0, ge=0, lt=1)
    gap_px: int = Field(64, ge=0)


class XYZSource(SourceBase):
    kind: Literal["xyz"]
    tiles_csv: str
    zoom: int = Field(ge=0, le=24)
    labels: str
    split: Literal["train", "val"] = "train"
    val_fraction: float = Field(0.0, ge=0, lt=1)
    gap_px: int = Field(64, ge=0)


class NegativesSource(SourceBase):
    kind: Literal["negatives"]
    images: str  # a folder of GeoTIFFs without buildings


Source = Annotated[Union[GeotiffSource, ChipsSource, DubaiSource, ImageMaskSource, XYZSource, NegativesSource],
                   Field(discriminator="kind")]


def source_place(src: SourceBase) -> str:
    """The place a source shows: its ``place``, else the folder after buildings/ or landcover/ in its first path."""
    if src.place:
        return src.place
    first = next(v for k, v in src.model_dump().items() if isinstance(v, str) and k not in ("kind", "split"))
    parts = Path(first).parts
    return parts[1] if len(parts) > 1 and parts[0] in ("buildings", "landcover", "negatives") else parts[0]


class GateAux(Strict):
    """Train the bottleneck for the BGS-Net gate (:class:`geoseg.losses.GateProbe`): its first ``channels``
    channel means each learn "crop holds buildings", with this loss ``weight`` beside the segmentation loss."""

    weight: float = Field(0.1, gt=0)
    channels: int = Field(8, ge=1)
    target_fraction: float = Field(0.005, gt=0, lt=1)  # as the gate's calibration (geoseg calibrate)
    lr_multiplier: float = Field(10.0, gt=0)  # the probes' scales and biases start far from their values


class TrainConfig(Strict):
    @field_validator("architecture")
    @classmethod
    def _known_architecture(cls, name: str) -> str:
        if name not in ARCHITECTURES:
            raise ValueError(f"unknown {name!r}; choose from {', '.join(ARCHITECTURES)}")
        return name

    name: str
    architecture: str = "unet"  # a row of geoseg.architectures.ARCHITECTURES
    encoder: str = "resnet18"  # U-Net, SegBlocks and Mask R-CNN only
    block_px: int = Field(0, ge=0)  # SegBlocks only: block side; crop_px must be a multiple
    tau: float = Field(0.4, gt=0, le=1)  # SegBlocks only: target fraction of high-resolution blocks
    policy_lr: float | None = Field(None, gt=0)  # SegBlocks only: the policy net's learning rate (default: lr)
    classes: list[str] = Field(min_length=2)
    building_class: int = Field(ge=0)
    separator_class: int | None = Field(None, ge=0)
    gsd_m: float = Field(0.3, gt=0)
    data_root: str = "."  # relative to the config file
    sources: list[Source] = Field(min_length=1)
    crop_px: int = Field(256, ge=64, multiple_of=32)
    batch_size: int = Field(8, ge=2)
    epochs: int = Field(30, ge=1)
    steps_per_epoch: int = Field(100, ge=1)
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    seed: int = 0
    precision: Literal["auto", "bf16", "fp32"] = "auto"
    threads: int | None = None
    select_metric: Literal["building_iou", "mean_iou", "place_mean_building_iou"] = "building_iou"  # picks best epoch
    #: how crops pick a scene: "pixels" (in proportion to labelled pixels) or "places" (each place equally often,
    #: then in proportion to pixels within it: 184 Mpx of Dubai would otherwise take 95 % of the crops)
    sampling: Literal["pixels", "places"] = "pixels"
    #: "basic": per-band gain/bias/gamma and some greyscale; "sensors": also hue, saturation, blur/sharpen, noise,
    #: JPEG (geoseg.augment)
    augment: Literal["basic", "sensors"] = "basic"
    init_from: str | None = None  # weights to fine-tune from (a shipped name or a path relative to the config)
    gate_aux: GateAux | None = None  # encoder-decoder models: train the bottleneck for the gate (beyond BGS-Net)
    licence: str = ""
    attribution: str = ""

    @property
    def building_classes(self) -> list[int]:
        """Label values that are building: the building class and the separator (the line between buildings)."""
        return [self.building_class] + ([self.separator_class] if self.separator_class is not None else [])


def load_config(path: str | os.PathLike) -> tuple[TrainConfig, Path]:
    """Parse and validate a YAML training config; errors name the field path. Returns (config, data root).

    A config may start from another: ``base: other.yaml`` (relative to the file, one level) takes every field
    of that file, and the fields written here replace the base's (lists and mappings whole). Relative paths
    taken from the base (``data_root``, ``init_from``) are read from *this* file's folder: keep a variant beside
    its base, or write them here."""
    path = Path(path)
    config = load_yaml(path, TrainConfig, "config", edit=lambda raw: _with_base(raw, path))
    if config.building_class >= len(config.classes):
        raise GeosegError(f"{path}: building_class: {config.building_class} is not an index into classes")
    if architecture(config.architecture).blocks and (config.block_px < 64 or config.crop_px % config.block_px):
        raise GeosegError(f"{path}: block_px: SegBlocks needs block_px >= 64 dividing crop_px ({config.crop_px})")
    if config.separator_class is not None and config.separator_class != len(config.classes) - 1:
        raise GeosegError(f"{path}: separator_class: must be the last class ({len(config.classes) - 1})")
    return config, (path.parent / config.data_root).resolve()


def _with_base(raw: dict, path: Path) -> None:
    base = raw.pop("base", None)
    if base is None:
        return
    base_path = path.parent / str(base)
    if not base_path.is_file():
        raise GeosegError(f"{path}: base: no such config file {base_path}")
    import yaml

    fields = yaml.safe_load(base_path.read_text()) or {}
    if not isinstance(fields, dict) or "base" in fields:
        raise GeosegError(f"{path}: base: {base_path.name} must be a plain config (no base of its own)")
    for key, value in fields.items():
        raw.setdefault(key, value)


def load_scenes(config: TrainConfig, root: Path) -> list[LabelledScene]:
    scenes: list[LabelledScene] = []
    for src in config.sources:
        loaded = _load_source(src, config, root)
        for scene in loaded:
            scene.place = source_place(src)
        scenes += loaded
    return scenes


def _load_source(src: SourceBase, config: TrainConfig, root: Path) -> list[LabelledScene]:
    at = lambda p: str(root / p) if p else None  # noqa: E731
    if isinstance(src, GeotiffSource):
        return geotiff_source(at(src.image), config.gsd_m, labels=at(src.labels), mask=at(src.mask),
                              val_fraction=src.val_fraction, gap_px=src.gap_px, separator_class=config.separator_class,
                              split=src.split)
    if isinstance(src, ChipsSource):
        return chips_source(at(src.images), at(src.masks), config.gsd_m, split=src.split,
                            exclude_overlap_with=at(src.exclude_overlap_with), labels=at(src.labels),
                            separator_class=config.separator_class, distinct_ground=src.distinct_ground)
    if isinstance(src, ImageMaskSource):
        return image_mask_source(at(src.image), at(src.mask), config.gsd_m, src.native_gsd_m, split=src.split,
                                 val_fraction=src.val_fraction, gap_px=src.gap_px)
    if isinstance(src, XYZSource):
        return xyz_source(at(src.tiles_csv), src.zoom, at(src.labels), config.gsd_m, split=src.split,
                          val_fraction=src.val_fraction, gap_px=src.gap_px, separator_class=config.separator_class)
    if isinstance(src, NegativesSource):
        return negatives_source(at(src.images), config.gsd_m)
    return dubai_source(at(src.root), config.gsd_m, src.assumed_gsd_m, src.val_tiles, src.buildings_only)


class CropSampler:
    """Random augmented crops: scale 0.75-1.33, flips and 90° turns, per-band gain/bias/gamma, some greyscale."""

    def __init__(self, scenes: list[LabelledScene], crop_px: int, rng: np.random.Generator, by_place: bool = False,
                 sensors: bool = False):
        self.scenes, self.crop_px, self.rng, self.sensors = scenes, crop_px, rng, sensors
        weights = np.array([max(s.labels.size * s.labelled_fraction, 64 * 64) for s in scenes], float)
        if by_place:  # every place equally often, scenes within a place by their labelled pixels
            places = [s.place for s in scenes]
            weights /= np.array([sum(w for w, q in zip(weights, places) if q == p) for p in places])
        self.p = weights / weights.sum()

    def crop(self) -> tuple[np.ndarray, np.ndarray]:
        rng, out = self.rng, self.crop_px
        for _ in range(20):  # retry crops with nothing labelled
            scene = self.scenes[rng.choice(len(self.scenes), p=self.p)]
            size = int(round(out * rng.uniform(0.75, 1.33)))
            h, w = scene.labels.shape
            r0 = int(rng.integers(0, max(1, h - size + 1)))
            c0 = int(rng.integers(0, max(1, w - size + 1)))
            pixels = np.zeros((3, size, size), np.float32)
            labels = np.full((size, size), IGNORE, np.uint8)
            ph, pw = min(size, h - r0), min(size, w - c0)
            pixels[:, :ph, :pw] = scene.pixels[:, r0 : r0 + ph, c0 : c0 + pw]
            labels[:ph, :pw] = scene.labels[r0 : r0 + ph, c0 : c0 + pw]
            if (labels != IGNORE).mean() > 0.05:
                break
        x = F.interpolate(torch.from_numpy(pixels)[None], size=(out, out), mode="bilinear", align_corners=False)[0]
        y = F.interpolate(torch.from_numpy(labels)[None, None].float(), size=(out, out), mode="nearest")[0, 0]
        x, y = x.numpy(), y.numpy().astype(np.int64)
        k = int(rng.integers(4))
        x, y = np.rot90(x, k, axes=(1, 2)), np.rot90(y, k)
        if rng.random() < 0.5:
            x, y = x[:, :, ::-1], y[:, ::-1]
        if rng.random() < 0.2:
            x = np.repeat(x.mean(axis=0, keepdims=True), 3, axis=0)
        gain, bias = rng.uniform(0.8, 1.2, (3, 1, 1)), rng.uniform(-0.1, 0.1, (3, 1, 1))
        x = np.clip(x * gain + bias, 0, 1) ** rng.uniform(0.7, 1.4)
        if self.sensors:
            x = sensor_augment(x, rng)
        return np.ascontiguousarray(x, np.float32), np.ascontiguousarray(y)

    def batch(self, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        crops = [self.crop() for _ in range(size)]
        return torch.from_numpy(np.stack([c[0] for c in crops])), torch.from_numpy(np.stack([c[1] for c in crops]))


@torch.inference_mode()
def predict_scene(net: GeoModel, pixels: np.ndarray, autocast: bool, tile_px: int = 1024) -> np.ndarray:
    """Class labels (h, w) of an in-memory scene, in tiles of at most ``tile_px`` (no overlap: validation only)."""
    _, h, w = pixels.shape
    out = np.zeros((h, w), np.uint8)
    for r in range(0, h, tile_px):
        for c in range(0, w, tile_px):
            x = torch.from_numpy(np.ascontiguousarray(pixels[:, r : r + tile_px, c : c + tile_px]))[None]
            th, tw = x.shape[-2:]
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
                logits = net(net.prepare(x))
            out[r : r + th, c : c + tw] = logits[0, :, :th, :tw].argmax(0).numpy()
    return out


def confusion(pred: np.ndarray, target: np.ndarray, n_classes: int) -> np.ndarray:
    known = target != IGNORE
    return np.bincount(target[known].astype(np.int64) * n_classes + pred[known], minlength=n_classes**2).reshape(n_classes, n_classes)


def metrics_from_confusion(matrix: np.ndarray, classes: list[str], building_class: int) -> dict:
    """Per-class IoU, mean IoU, and building IoU / precision / recall from a (true, predicted) confusion matrix."""
    tp = np.diag(matrix).astype(float)
    fp, fn = matrix.sum(0) - tp, matrix.sum(1) - tp
    iou = tp / np.maximum(tp + fp + fn, 1)
    b = building_class
    return {
        "building_iou": round(float(iou[b]), 4),
        "building_precision": round(float(tp[b] / max(tp[b] + fp[b], 1)), 4),
        "building_recall": round(float(tp[b] / max(tp[b] + fn[b], 1)), 4),
        "mean_iou": round(float(iou.mean()), 4),
        "class_iou": {name: round(float(v), 4) for name, v in zip(classes, iou)},
        "pixels": int(matrix.sum()),
    }


def fold_separator(matrix: np.ndarray, building_class: int, separator_class: int | None) -> np.ndarray:
    """A confusion matrix with the separator class counted as building (the published mask's classes)."""
    if separator_class is None:
        return matrix
    m = matrix.copy()
    m[building_class] += m[separator_class]
    m[:, building_class] += m[:, separator_class]
    return np.delete(np.delete(m, separator_class, 0), separator_class, 1)


def validate(net: GeoModel, scenes: list[LabelledScene], autocast: bool) -> tuple[dict, dict]:
    """Metrics over all validation scenes pooled, and per scene (so a test can re-check a card on one slice).
    Building metrics count the separator class as building; its own IoU is reported as ``separator_iou``. The
    pooled metrics also hold each place's building IoU (``place_building_iou``) and their mean
    (``place_mean_building_iou``: each place counts once, however many pixels it has; Dubai's tile_3 is 11 of
    the 12 Mpx of the all-places validation)."""
    net.eval()
    n, card = len(net.card.classes), net.card
    matrices = {s.name: confusion(predict_scene(net, s.pixels, autocast), s.labels, n) for s in scenes}

    def metrics(matrix: np.ndarray) -> dict:
        out = metrics_from_confusion(fold_separator(matrix, card.building_class, card.separator_class),
                                     card.mask_classes, card.building_class)
        if card.separator_class is not None:
            out["separator_iou"] = metrics_from_confusion(matrix, card.classes, card.building_class)["class_iou"][card.classes[-1]]
        return out

    pooled = metrics(sum(matrices.values()))
    by_place: dict[str, list[np.ndarray]] = {}
    for scene in scenes:
        by_place.setdefault(scene.place, []).append(matrices[scene.name])
    per_place = {place: metrics(sum(ms))["building_iou"] for place, ms in sorted(by_place.items())}
    pooled["place_building_iou"] = per_place
    pooled["place_mean_building_iou"] = round(float(np.mean(list(per_place.values()))), 4) if per_place else 0.0
    per_scene = {}
    for name, m in matrices.items():
        scene_metrics = metrics(m)
        per_scene[name] = {k: scene_metrics[k] for k in ("building_iou", "mean_iou", "pixels")}
    return pooled, per_scene


def _save_checkpoint(path: Path, state: dict) -> None:
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def train(config_path: str | os.PathLike, out_dir: str | os.PathLike, resume: bool = False,
          data_root: str | None = None, seed: int | None = None, progress: bool = True,
          stop_after_epochs: int | None = None, threads: int | None = None, epochs: int | None = None) -> dict:
    """Train as the config says; returns the best validation metrics so far. See the module docstring.

    ``stop_after_epochs``: return after that many epochs of this call (resume later with ``resume=True``);
    the result is the same as one uninterrupted run. ``threads`` overrides the config's torch threads for this
    call only (two trainings side by side need one thread each: oversubscribed OpenMP threads spin and crawl).
    ``seed`` and ``epochs`` override the config's (recorded in the card like every config value).
    """
    config, root = load_config(config_path)
    if seed is not None:
        config.seed = seed
    if epochs is not None:
        config.epochs = epochs
    root = Path(data_root).resolve() if data_root else root
    if not root.is_dir():
        raise GeosegError(f"data_root {root} does not exist")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(config.seed)
    torch.set_num_threads(threads or config.threads or os.cpu_count() or 1)
    rng = np.random.default_rng(config.seed)
    scenes = load_scenes(config, root)
    train_scenes = [s for s in scenes if s.split == "train"]
    val_scenes = [s for s in scenes if s.split == "val"]
    if not train_scenes or not val_scenes:
        raise GeosegError("the sources give no training or no validation scenes: check splits and val_fraction")
    autocast = use_bf16(config.precision)
    row = architecture(config.architecture)
    card = ModelCard(name=config.name, architecture=config.architecture, encoder=config.encoder if row.encoder else "",
                     classes=config.classes, block_px=config.block_px, tau=config.tau,
                     size_multiple_px=size_multiple_px(config.architecture, config.block_px),
                     building_class=config.building_class, separator_class=config.separator_class,
                     bands=["red", "green", "blue"], gsd_m=config.gsd_m, licence=config.licence,
                     attribution=config.attribution)
    net = build_model(card)
    init = None
    if config.init_from:
        near = Path(config_path).parent / config.init_from
        source = str(near) if near.exists() else config.init_from
        start = net.init_backbone_from if hasattr(net, "init_backbone_from") else lambda p: init_weights_from(net, p)
        init = {"weights": config.init_from, "sha256": start(source)}
    net = net.to(memory_format=torch.channels_last)
    policy = list(net.policy.parameters()) if hasattr(net, "policy") else []
    in_policy = {id(p) for p in policy}
    groups = [{"params": [p for p in net.parameters() if id(p) not in in_policy], "lr": config.lr}]
    if policy:  # trained from scratch next to a fine-tuned network: its own learning rate
        groups.append({"params": policy, "lr": config.policy_lr or config.lr})
    probe = None
    if config.gate_aux is not None:
        if not row.gate:  # no encode -> gate -> decode
            raise GeosegError(f"{config_path}: gate_aux: only encoder-decoder models have a gate to train for")
        aux = config.gate_aux
        probe = GateProbe(aux.channels, aux.weight, aux.target_fraction, config.building_classes)
        groups.append({"params": list(probe.parameters()), "lr": config.lr * aux.lr_multiplier, "weight_decay": 0.0})
    optimiser = torch.optim.AdamW(groups, weight_decay=config.weight_decay)
    total_steps = config.epochs * config.steps_per_epoch
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=[g["lr"] for g in groups], total_steps=total_steps,
                                                   pct_start=0.05)
    state = {"epoch": 0, "history": [], "best": None, "seconds": 0.0}
    checkpoint = out / "checkpoint.pt"
    if resume and checkpoint.exists():
        saved = torch.load(checkpoint, weights_only=True)
        net.load_state_dict(saved["model"])
        optimiser.load_state_dict(saved["optimiser"])
        schedule.load_state_dict(saved["schedule"])
        if probe is not None:
            probe.load_state_dict(saved["gate_probe"])
        rng.bit_generator.state = saved["rng"]
        torch.set_rng_state(saved["torch_rng"])
        state = saved["state"]
    sampler = CropSampler(train_scenes, config.crop_px, rng, by_place=config.sampling == "places",
                          sensors=config.augment == "sensors")
    data_summary = {"train": {s.name: list(s.labels.shape) for s in train_scenes},
                    "val": {s.name: list(s.labels.shape) for s in val_scenes}}
    last_epoch = config.epochs if stop_after_epochs is None else min(config.epochs, state["epoch"] + stop_after_epochs)
    for epoch in range(state["epoch"], last_epoch):
        started = time.perf_counter()
        net.train()
        losses, logged = [], {}
        bar = tqdm(range(config.steps_per_epoch), desc=f"epoch {epoch + 1}/{config.epochs}", disable=not progress,
                   file=sys.stderr, leave=False)
        for _ in bar:
            x, y = sampler.batch(config.batch_size)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
                loss, figures = training_loss(net, net.prepare(x), y, probe)
            for key, value in figures.items():
                logged.setdefault(key, []).append(value)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            schedule.step()
            losses.append(float(loss.detach()))
            bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}")
        metrics, per_scene = validate(net, val_scenes, autocast)
        state["seconds"] += time.perf_counter() - started
        entry = {"epoch": epoch + 1, "train_loss": round(float(np.mean(losses)), 4),
                 **{key: round(float(np.mean(v)), 4) for key, v in logged.items()}, **metrics,
                 "seconds": round(state["seconds"], 1)}
        state["history"].append(entry)
        print(json.dumps({k: v for k, v in entry.items() if k != "class_iou"}), file=sys.stderr, flush=True)
        if state["best"] is None or metrics[config.select_metric] > state["best"][config.select_metric]:
            state["best"] = entry
            card.trained = True
            card.metrics = {"validation": entry, "validation_per_scene": per_scene}
            card.training = {"config": str(config_path), "config_values": json.loads(config.model_dump_json()),
                             "epochs_run": epoch + 1, "seconds": round(state["seconds"], 1), "bf16_autocast": autocast,
                             "torch": torch.__version__, "data": data_summary,
                             **({"init_from": init} if init else {})}
            save_model(net, out / "best.safetensors")
        state["epoch"] = epoch + 1
        _save_checkpoint(checkpoint, {"model": net.state_dict(), "optimiser": optimiser.state_dict(),
                                      "schedule": schedule.state_dict(), "rng": rng.bit_generator.state,
                                      "torch_rng": torch.get_rng_state(), "state": state,
                                      **({"gate_probe": probe.state_dict()} if probe is not None else {})})
        (out / "history.json").write_text(json.dumps(state["history"], indent=2))
    return state["best"]
