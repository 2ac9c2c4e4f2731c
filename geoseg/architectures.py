"""The architectures geoseg knows, in one table, and everything that follows from each: the model class that builds
it, the backend that runs it, the shipped model that backend runs when none is named, whether it yields
building instances, how it is trained, and which sizes it accepts. Torch-free: the driver, the CLI and the job
schema read it without importing a network.

Adding an architecture is one network module (``geoseg/nets/``), one row here, and a training config
(README, "How to add a backend"). Classes are named as ``"module:Class"`` and imported only when used.

Backends are the rows' names, plus :data:`GATED_BACKEND` (``bgs``), which runs any encoder-decoder model with a
calibrated gate between encoder and decoder (:mod:`geoseg.backends.bgs`).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

from .errors import GeosegError


@dataclass(frozen=True)
class Architecture:
    """One architecture. ``variant``: what its model class needs besides the card (the real-time nets' network
    class, Mask R-CNN's design); ``loss``: "segmentation" (cross-entropy + Dice on the decoder output),
    "blocks" (that, plus REINFORCE for the block policy), or "instances" (Mask R-CNN's own losses)."""

    name: str
    model: str  # "module:Class" of the torch module (geoseg.model)
    backend: str  # "module:Class" of the backend that runs it (geoseg.backends)
    default_model: str | None = None  # shipped model its backend runs without --model (None: geoseg's default)
    variant: str | None = None
    loss: str = "segmentation"
    instances: bool = False  # yields one polygon per detected building (instances.tif)
    encoder: bool = True  # an encoder named in the card (segmentation-models-pytorch); False: a net of its own
    gate: bool = True  # encode -> gate -> decode: the BGS gate and gate_aux training apply
    dense: bool = True  # every tile through the whole model: --tta applies
    blocks: bool = False  # processed in blocks of the card's block_px (tiles and crops: a multiple of it)
    size_multiple_px: int = 32  # padded input side multiple (blocks: the larger of this and block_px)


ARCHITECTURES: dict[str, Architecture] = {a.name: a for a in (
    Architecture("unet", "geoseg.model:SegmentationModel", "geoseg.backends.unet:UNetBackend"),
    Architecture("fastscnn", "geoseg.model:RealtimeModel", "geoseg.backends.unet:ArchitectureBackend",
                 default_model="buildings-fastscnn", variant="geoseg.nets.fastscnn:FastSCNN", encoder=False),
    Architecture("contextnet", "geoseg.model:RealtimeModel", "geoseg.backends.unet:ArchitectureBackend",
                 default_model="buildings-contextnet", variant="geoseg.nets.contextnet:ContextNet", encoder=False),
    Architecture("segblocks", "geoseg.model:SegBlocksModel", "geoseg.backends.segblocks:SegBlocksBackend",
                 default_model="buildings-segblocks", loss="blocks", gate=False, dense=False, blocks=True),
    Architecture("maskrcnn-light", "geoseg.model:InstanceModel", "geoseg.backends.maskrcnn:InstanceBackend",
                 default_model="buildings-maskrcnn-light", variant="light", loss="instances", instances=True,
                 gate=False, dense=False),
    Architecture("maskrcnn", "geoseg.model:InstanceModel", "geoseg.backends.maskrcnn:InstanceBackend",
                 default_model="buildings-maskrcnn", variant="baseline", loss="instances", instances=True,
                 gate=False, dense=False),
)}
#: the gated backend: name and class; it runs models of the architectures with ``gate``
GATED_BACKEND = ("bgs", "geoseg.backends.bgs:BGSBackend")


def architecture(name: str) -> Architecture:
    """The row of an architecture name, or a one-line error listing the known ones."""
    if name not in ARCHITECTURES:
        raise GeosegError(f"unknown architecture {name!r}; known: {', '.join(ARCHITECTURES)}")
    return ARCHITECTURES[name]


def import_named(target: str):
    """The object a ``"module:Name"`` string names."""
    module, name = target.split(":")
    return getattr(importlib.import_module(module), name)


def size_multiple_px(name: str, block_px: int = 0) -> int:
    row = architecture(name)
    return max(row.size_multiple_px, block_px) if row.blocks else row.size_multiple_px


def yields_instances(name: str) -> bool:
    """Whether models of this architecture give building instances (False for a name outside the table: a custom
    backend handed to the pipeline as an object)."""
    return name in ARCHITECTURES and ARCHITECTURES[name].instances
