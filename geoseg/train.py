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
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from .atomic import atomic_path
from .architectures import architecture, size_multiple_px
from .card import ModelCard
from .config import TrainConfig, load_config, load_scenes
from .datasets import IGNORE, LabelledScene
from .metrics import confusion, fold_separator, metrics_from_confusion
from .augment import sensor_augment
from .errors import GeosegError
from .losses import GateProbe, boundary_weights, training_loss
from .mixing import mix_batch
from .model import GeoModel, build_model, init_weights_from, save_model, use_bf16


class CropSampler:
    """Random augmented crops: scale 0.75-1.33, flips and 90° turns, per-band gain/bias/gamma, some greyscale."""

    def __init__(self, scenes: list[LabelledScene], crop_px: int, rng: np.random.Generator, by_place: bool = False,
                 sensors: bool = False, histogram_match_p: float = 0.0, cutmix_p: float = 0.0):
        self.scenes, self.crop_px, self.rng, self.sensors = scenes, crop_px, rng, sensors
        self.histogram_match_p, self.cutmix_p = histogram_match_p, cutmix_p
        self.last_place: str | None = None
        weights = np.array([max(s.labels.size * s.labelled_fraction, 64 * 64) for s in scenes], float)
        if by_place:  # every place equally often, scenes within a place by their labelled pixels
            places = [s.place for s in scenes]
            weights /= np.array([sum(w for w, q in zip(weights, places) if q == p) for p in places])
        self.p = weights / weights.sum()

    def crop(self) -> tuple[np.ndarray, np.ndarray]:
        rng, out = self.rng, self.crop_px
        for _ in range(20):  # retry crops with nothing labelled
            scene = self.scenes[rng.choice(len(self.scenes), p=self.p)]
            self.last_place = scene.place
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
        crops, places = [], []
        for _ in range(size):
            crops.append(self.crop())
            places.append(self.last_place)
        crops = mix_batch(crops, places, self.rng, self.histogram_match_p, self.cutmix_p)
        return torch.from_numpy(np.stack([c[0] for c in crops])), torch.from_numpy(np.stack([c[1] for c in crops]))


@torch.inference_mode()
def tiled_logits(net: GeoModel, pixels: np.ndarray, autocast: bool, tile_px: int = 1024):
    """``(row, col, logits)`` for each tile of at most ``tile_px`` of an in-memory image (bands, h, w), row-major,
    logits (classes, th, tw) cropped to the tile (no overlap: validation and the user's labelled ground only)."""
    _, h, w = pixels.shape
    for r in range(0, h, tile_px):
        for c in range(0, w, tile_px):
            x = torch.from_numpy(np.ascontiguousarray(pixels[:, r : r + tile_px, c : c + tile_px]))[None]
            th, tw = x.shape[-2:]
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
                logits = net(net.prepare(x))
            yield r, c, logits[0, :, :th, :tw]


def predict_scene(net: GeoModel, pixels: np.ndarray, autocast: bool, tile_px: int = 1024) -> np.ndarray:
    """Class labels (h, w) of an in-memory scene (:func:`tiled_logits`)."""
    out = np.zeros(pixels.shape[1:], np.uint8)
    for r, c, logits in tiled_logits(net, pixels, autocast, tile_px):
        out[r : r + logits.shape[1], c : c + logits.shape[2]] = logits.argmax(0).numpy()
    return out


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


@dataclass
class Training:
    """Everything one training run holds between epochs (what ``checkpoint.pt`` saves, and what it is built from)."""

    config: TrainConfig
    config_path: str
    card: ModelCard
    net: GeoModel
    optimiser: torch.optim.Optimizer
    schedule: torch.optim.lr_scheduler.LRScheduler
    probe: GateProbe | None
    rng: np.random.Generator
    train_scenes: list[LabelledScene]
    val_scenes: list[LabelledScene]
    autocast: bool
    init: dict | None = None
    state: dict = field(default_factory=lambda: {"epoch": 0, "history": [], "best": None, "seconds": 0.0})


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
    config.seed = config.seed if seed is None else seed
    config.epochs = config.epochs if epochs is None else epochs
    root = Path(data_root).resolve() if data_root else root
    if not root.is_dir():
        raise GeosegError(f"data_root {root} does not exist")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(config.seed)
    torch.set_num_threads(threads or config.threads or os.cpu_count() or 1)
    run = build_training(config, str(config_path), root)
    checkpoint = out / "checkpoint.pt"
    if resume and checkpoint.exists():
        resume_training(run, checkpoint)
    sampler = CropSampler(run.train_scenes, config.crop_px, run.rng, by_place=config.sampling == "places",
                          sensors=config.augment == "sensors", histogram_match_p=config.histogram_match_p,
                          cutmix_p=config.cutmix_p)
    last_epoch = config.epochs if stop_after_epochs is None else min(config.epochs, run.state["epoch"] + stop_after_epochs)
    for epoch in range(run.state["epoch"], last_epoch):
        per_scene = run_epoch(run, sampler, epoch, progress)
        end_epoch(run, out, epoch, per_scene)
    return run.state["best"]


def build_training(config: TrainConfig, config_path: str, root: Path) -> Training:
    """Scenes, card, model (and its starting weights), optimiser with its groups, schedule and gate probe."""
    rng = np.random.default_rng(config.seed)
    scenes = load_scenes(config, root)
    train_scenes = [s for s in scenes if s.split == "train"]
    val_scenes = [s for s in scenes if s.split == "val"]
    if not train_scenes or not val_scenes:
        raise GeosegError("the sources give no training or no validation scenes: check splits and val_fraction")
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
    groups, probe = _parameter_groups(config, config_path, net, row.gate)
    optimiser = torch.optim.AdamW(groups, weight_decay=config.weight_decay)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=[g["lr"] for g in groups],
                                                   total_steps=config.epochs * config.steps_per_epoch, pct_start=0.05)
    return Training(config, config_path, card, net, optimiser, schedule, probe, rng, train_scenes, val_scenes,
                    use_bf16(config.precision), init)


def _parameter_groups(config: TrainConfig, config_path: str, net: GeoModel, gated: bool) -> tuple[list[dict], GateProbe | None]:
    """The network's parameters at ``lr``; a SegBlocks policy at its own rate (trained from scratch next to a
    fine-tuned network); with ``gate_aux``, the bottleneck probes at ``lr x lr_multiplier``, without decay."""
    policy = list(net.policy.parameters()) if hasattr(net, "policy") else []
    in_policy = {id(p) for p in policy}
    groups = [{"params": [p for p in net.parameters() if id(p) not in in_policy], "lr": config.lr}]
    if policy:
        groups.append({"params": policy, "lr": config.policy_lr or config.lr})
    probe = None
    if config.gate_aux is not None:
        if not gated:  # no encode -> gate -> decode
            raise GeosegError(f"{config_path}: gate_aux: only encoder-decoder models have a gate to train for")
        aux = config.gate_aux
        probe = GateProbe(aux.channels, aux.weight, aux.target_fraction, config.building_classes)
        groups.append({"params": list(probe.parameters()), "lr": config.lr * aux.lr_multiplier, "weight_decay": 0.0})
    return groups, probe


def resume_training(run: Training, checkpoint: Path) -> None:
    saved = torch.load(checkpoint, weights_only=True)
    run.net.load_state_dict(saved["model"])
    run.optimiser.load_state_dict(saved["optimiser"])
    run.schedule.load_state_dict(saved["schedule"])
    if run.probe is not None:
        run.probe.load_state_dict(saved["gate_probe"])
    run.rng.bit_generator.state = saved["rng"]
    torch.set_rng_state(saved["torch_rng"])
    run.state = saved["state"]


def run_epoch(run: Training, sampler: CropSampler, epoch: int, progress: bool) -> dict:
    """One epoch of ``steps_per_epoch`` batches, then validation: its entry is appended to the history, and the
    validation metrics per scene are returned."""
    config, started = run.config, time.perf_counter()
    run.net.train()
    losses, logged = [], {}
    bar = tqdm(range(config.steps_per_epoch), desc=f"epoch {epoch + 1}/{config.epochs}", disable=not progress,
               file=sys.stderr, leave=False)
    for _ in bar:
        x, y = sampler.batch(config.batch_size)
        weight = None
        if config.boundary_weight > 0:
            weight = boundary_weights(y, config.building_classes, config.boundary_weight, config.boundary_sigma_px)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=run.autocast):
            loss, figures = training_loss(run.net, run.net.prepare(x), y, run.probe, weight)
        for key, value in figures.items():
            logged.setdefault(key, []).append(value)
        run.optimiser.zero_grad(set_to_none=True)
        loss.backward()
        run.optimiser.step()
        run.schedule.step()
        losses.append(float(loss.detach()))
        bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}")
    metrics, per_scene = validate(run.net, run.val_scenes, run.autocast)
    run.state["seconds"] += time.perf_counter() - started
    entry = {"epoch": epoch + 1, "train_loss": round(float(np.mean(losses)), 4),
             **{key: round(float(np.mean(v)), 4) for key, v in logged.items()}, **metrics,
             "seconds": round(run.state["seconds"], 1)}
    run.state["history"].append(entry)
    print(json.dumps({k: v for k, v in entry.items() if k != "class_iou"}), file=sys.stderr, flush=True)
    return per_scene


def end_epoch(run: Training, out: Path, epoch: int, per_scene: dict) -> None:
    """Keep the model if this epoch is the best so far (weights + card), then checkpoint and history."""
    config, entry = run.config, run.state["history"][-1]
    if run.state["best"] is None or entry[config.select_metric] > run.state["best"][config.select_metric]:
        run.state["best"] = entry
        run.card.trained = True
        run.card.metrics = {"validation": entry, "validation_per_scene": per_scene}
        run.card.training = {"config": run.config_path, "config_values": json.loads(config.model_dump_json()),
                             "epochs_run": epoch + 1, "seconds": round(run.state["seconds"], 1),
                             "bf16_autocast": run.autocast, "torch": torch.__version__,
                             "data": {"train": {s.name: list(s.labels.shape) for s in run.train_scenes},
                                      "val": {s.name: list(s.labels.shape) for s in run.val_scenes}},
                             **({"init_from": run.init} if run.init else {})}
        save_model(run.net, out / "best.safetensors")
    run.state["epoch"] = epoch + 1
    _save_checkpoint(out / "checkpoint.pt", {
        "model": run.net.state_dict(), "optimiser": run.optimiser.state_dict(), "schedule": run.schedule.state_dict(),
        "rng": run.rng.bit_generator.state, "torch_rng": torch.get_rng_state(), "state": run.state,
        **({"gate_probe": run.probe.state_dict()} if run.probe is not None else {})})
    (out / "history.json").write_text(json.dumps(run.state["history"], indent=2))
