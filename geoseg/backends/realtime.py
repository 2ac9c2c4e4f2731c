"""Real-time backends: Fast-SCNN and ContextNet (:mod:`geoseg.nets`), dense — every tile through the whole
net. They share the dense backend's code; each refuses a model of another architecture. To gate them, run
``--backend bgs --model buildings-fastscnn`` with a calibrated gate beside that model."""

from __future__ import annotations

from ..errors import GeosegError
from . import DEFAULT_MODELS
from .unet import UNetBackend


class _RealtimeBackend(UNetBackend):
    architecture = ""

    def __init__(self, model: str | None = None, device: str = "cpu", precision: str = "auto"):
        super().__init__(model=model or DEFAULT_MODELS[self.name], device=device, precision=precision)
        if self.card.architecture != self.architecture:
            raise GeosegError(f"--backend {self.name}: model {self.card.name} is a {self.card.architecture}, "
                              f"not a {self.architecture}")


class FastSCNNBackend(_RealtimeBackend):
    name = architecture = "fastscnn"


class ContextNetBackend(_RealtimeBackend):
    name = architecture = "contextnet"
