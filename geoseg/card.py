"""Model cards: what a model is and expects, readable without torch (the Dask driver never imports it).

A model on disk is ``NAME.safetensors`` (weights) with ``NAME.json`` (this card) beside it. Shipped models
live in ``geoseg/models/``.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path

from .atomic import write_text_atomic
from .errors import GeosegError

DEFAULT_MODEL = "buildings-unet-r18"


@dataclass
class ModelCard:
    """What a model is and what it expects. ``gsd_m``: ground sample distance it was trained at (metres)."""

    name: str
    architecture: str  # a name of geoseg.architectures.ARCHITECTURES
    encoder: str  # smp encoder name, e.g. "resnet18"
    classes: list[str]
    building_class: int  # index into classes
    bands: list[str]  # input bands, e.g. ["red", "green", "blue"]
    gsd_m: float
    # Inputs are stretched per band to [0, 1] from the scene's percentiles, then standardised with these.
    norm_mean: list[float] = field(default_factory=lambda: [0.5, 0.5, 0.5])
    norm_std: list[float] = field(default_factory=lambda: [0.25, 0.25, 0.25])
    # A class for the line where touching buildings meet: part of a building in the published mask, but kept
    # out of polygons so that touching buildings come out as separate footprints. Always the last class.
    separator_class: int | None = None
    # How predicted separators split polygons (see geoseg.vectorise); tuned per model, overridable per run.
    separator_threshold: float = 0.5
    separator_dilate_px: int = 0
    # P(building) (0-1) at or above which a pixel is building; None: the most probable class (geoseg.stitch).
    building_threshold: float | None = None
    # Buildings whose confidence (mean P(building), 0-1) is under this are left out of the polygons; None: all kept.
    min_confidence: float | None = None
    size_multiple_px: int = 32
    decoder_channels: list[int] = field(default_factory=lambda: [256, 128, 64, 32, 16])
    # SegBlocks only: block side (px, divides the tile), the high-resolution fraction it was trained for, and
    # the policy's P(high) threshold that reaches each fraction on the training tiles ({"0.4": 0.53, ...}).
    block_px: int = 0
    tau: float = 0.4
    policy_thresholds: dict = field(default_factory=dict)
    # Instance models only: detections scoring below this are dropped (0-1).
    instance_score_threshold: float = 0.5
    trained: bool = False
    training: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)
    licence: str = ""
    attribution: str = ""

    @property
    def mask_classes(self) -> list[str]:
        """Classes of the published mask (the separator folded into the building class)."""
        return self.classes if self.separator_class is None else self.classes[: self.separator_class]

    @classmethod
    def from_json(cls, path: str | os.PathLike) -> "ModelCard":
        """Read and check a card; a card that is not JSON, lacks a field or contradicts itself is a one-line
        GeosegError naming the file."""
        try:
            data = json.loads(Path(path).read_text())
            if not isinstance(data, dict):
                raise ValueError("not a JSON object")
            card = cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})
            card.check()
        except (ValueError, TypeError, KeyError) as err:  # JSONDecodeError is a ValueError
            raise GeosegError(f"{path}: not a valid model card ({str(err).splitlines()[0][:200]})") from None
        return card

    def check(self) -> None:
        """Raise ValueError where the card's fields contradict each other (class indices out of range...)."""
        n = len(self.classes) if isinstance(self.classes, list) else 0
        if n < 2 or not all(isinstance(c, str) for c in self.classes):
            raise ValueError("classes must list at least two class names")
        if not isinstance(self.building_class, int) or not 0 <= self.building_class < n:
            raise ValueError(f"building_class {self.building_class!r} is not an index into its {n} classes")
        if self.separator_class is not None and self.separator_class != n - 1:
            raise ValueError(f"separator_class {self.separator_class!r} must be the last class ({n - 1})")
        if not isinstance(self.bands, list) or not self.bands:
            raise ValueError("bands must list the input bands")
        if not isinstance(self.gsd_m, (int, float)) or not self.gsd_m > 0:
            raise ValueError(f"gsd_m {self.gsd_m!r} must be a positive number of metres")
        for name, low_open in (("building_threshold", True), ("min_confidence", False)):
            value = getattr(self, name)
            if value is not None and not (isinstance(value, (int, float)) and (0 < value if low_open else 0 <= value)
                                          and value <= 1):
                raise ValueError(f"{name} {value!r} must be a probability in {'(0' if low_open else '[0'}, 1] or null")

    def to_json(self, path: str | os.PathLike) -> None:
        write_text_atomic(path, json.dumps(asdict(self), indent=2) + "\n")


def resolve_model_path(model: str | os.PathLike | None) -> Path:
    """The .safetensors path for a model given as None (default), a shipped name, or a file path."""
    if model is None or (isinstance(model, str) and not model.endswith(".safetensors") and os.sep not in model):
        name = model or DEFAULT_MODEL
        path = Path(str(resources.files("geoseg.models").joinpath(f"{name}.safetensors")))
    else:
        path = Path(model)
    if not path.exists():
        raise GeosegError(f"model weights not found: {path}")
    if not path.with_suffix(".json").exists():
        raise GeosegError(f"model card not found next to the weights: {path.with_suffix('.json')}")
    return path


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 of a file, hex; remembered per process for a file whose size and modification time are unchanged
    (a run hashes the model's weights on the driver for the summary, again to check the gate, again to load)."""
    stat = os.stat(path)
    return _sha256(os.path.realpath(path), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=64)
def _sha256(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


