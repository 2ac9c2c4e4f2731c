"""Real-time backends: Fast-SCNN and ContextNet (:mod:`geoseg.nets`), dense — every tile through the whole
net. They share the dense backend's code; each refuses a model of another architecture. To gate them, run
``--backend bgs --model buildings-fastscnn`` with a calibrated gate beside that model."""

from __future__ import annotations

from .unet import ArchitectureBackend


class FastSCNNBackend(ArchitectureBackend):
    name = architecture = "fastscnn"


class ContextNetBackend(ArchitectureBackend):
    name = architecture = "contextnet"
