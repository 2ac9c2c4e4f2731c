"""Encode and decode stages: a segmentation model as encoder -> decoder -> head, each callable on its own.

The gate (BGS-Net) sits between :meth:`SegmentationModel.encode` and :meth:`SegmentationModel.decode`;
``decode(features, index)`` runs the decoder on a subset of the batch in one call.

A model on disk is two files side by side: ``NAME.safetensors`` (weights, never unpickled) and ``NAME.json``
(the model card: classes, bands, GSD, normalisation, training data, metrics, licence and attribution).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path

import segmentation_models_pytorch as smp
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from .errors import GeosegError

DEFAULT_MODEL = "buildings-unet-r18"


@dataclass
class ModelCard:
    """What a model is and what it expects. ``gsd_m``: ground sample distance it was trained at (metres)."""

    name: str
    architecture: str  # "unet"
    encoder: str  # smp encoder name, e.g. "resnet18"
    classes: list[str]
    building_class: int  # index into classes
    bands: list[str]  # input bands, e.g. ["red", "green", "blue"]
    gsd_m: float
    # Inputs are stretched per band to [0, 1] from the scene's percentiles, then standardised with these.
    norm_mean: list[float] = field(default_factory=lambda: [0.5, 0.5, 0.5])
    norm_std: list[float] = field(default_factory=lambda: [0.25, 0.25, 0.25])
    size_multiple_px: int = 32
    decoder_channels: list[int] = field(default_factory=lambda: [256, 128, 64, 32, 16])
    trained: bool = False
    training: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)
    licence: str = ""
    attribution: str = ""

    @classmethod
    def from_json(cls, path: str | os.PathLike) -> "ModelCard":
        data = json.loads(Path(path).read_text())
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known)

    def to_json(self, path: str | os.PathLike) -> None:
        Path(path).write_text(json.dumps(asdict(self), indent=2) + "\n")


class SegmentationModel(nn.Module):
    """A U-Net split into its three parts: ``encode`` -> (gate) -> ``decode`` -> logits."""

    def __init__(self, card: ModelCard):
        super().__init__()
        if card.architecture != "unet":
            raise GeosegError(f"model {card.name}: unknown architecture {card.architecture!r}")
        unet = smp.Unet(
            encoder_name=card.encoder,
            encoder_weights=None,  # nothing is downloaded at run time
            in_channels=len(card.bands),
            classes=len(card.classes),
            decoder_channels=tuple(card.decoder_channels),
        )
        self.card = card
        self.encoder, self.decoder, self.head = unet.encoder, unet.decoder, unet.segmentation_head

    def encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Multi-scale features; the last one is the bottleneck."""
        return self.encoder(x)

    def decode(self, features: list[torch.Tensor], index: torch.Tensor | None = None) -> torch.Tensor:
        """Class logits for the batch items in ``index`` (all when None), in one decoder call."""
        if index is not None:
            features = [f[index] for f in features]
        return self.head(self.decoder(features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x))


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
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def load_model(model: str | os.PathLike | None = None) -> tuple[SegmentationModel, str]:
    """Build the model from its card and load its safetensors weights. Returns (model in eval mode, sha256)."""
    path = resolve_model_path(model)
    card = ModelCard.from_json(path.with_suffix(".json"))
    net = SegmentationModel(card)
    try:
        state = {k: v.float() for k, v in load_file(str(path)).items()}
        net.load_state_dict(state, strict=True)
    except Exception as err:  # safetensors header errors, missing/unexpected keys, shape mismatches
        raise GeosegError(f"{path}: weights do not match the card ({str(err).splitlines()[0][:200]})") from None
    return net.eval(), file_sha256(path)


def save_model(net: SegmentationModel, path: str | os.PathLike, half: bool = True) -> str:
    """Write weights (fp16 by default, to keep shipped models small) and card; returns the weights' sha256."""
    path = Path(path)
    state = {k: (v.half() if half and v.is_floating_point() else v).contiguous() for k, v in net.state_dict().items()}
    tmp = path.with_name(path.name + ".tmp")
    save_file(state, str(tmp))
    os.replace(tmp, path)
    net.card.to_json(path.with_suffix(".json"))
    return file_sha256(path)
