"""Training configurations: the YAML schema (``TrainConfig``, validated with pydantic, errors naming the field;
the kinds of labelled source it lists are :mod:`geoseg.sources`), and loading a config (with ``base:``
inheritance) and its scenes.
Read by training, gate calibration and the benchmarks; torch-free."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator

from .architectures import ARCHITECTURES, architecture
from .datasets import LabelledScene
from .errors import GeosegError
from .sources import Source, SourceBase, source_place
from .yamlfile import Strict, load_yaml


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
    #: across places, on each batch (geoseg.mixing): histogram matching of a crop to another place's crop, and
    #: CutMix (a rectangle of another place's crop, labels and all), each with this probability per crop
    histogram_match_p: float = Field(0.0, ge=0, le=1)
    cutmix_p: float = Field(0.0, ge=0, le=1)
    #: outline weighting of the cross-entropy (geoseg.losses.boundary_weights): 1 + weight * exp(-d^2 / 2 sigma^2)
    boundary_weight: float = Field(0.0, ge=0)
    boundary_sigma_px: float = Field(3.0, gt=0)
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


def load_scenes(config: TrainConfig, root: Path, split: str | None = None) -> list[LabelledScene]:
    """Every source's scenes on the training grid (:mod:`geoseg.sources`), each told its place; ``split``: only the
    scenes of that split, and sources that hold none of it are not read (:meth:`SourceBase.only`)."""
    scenes: list[LabelledScene] = []
    for src in config.sources:
        reader = src if split is None else src.only(split)
        if reader is None:
            continue
        loaded = [s for s in reader.load(config, root) if split is None or s.split == split]
        for scene in loaded:
            scene.place = source_place(src)
        scenes += loaded
    return scenes
