"""Backends: one interface. Which backend runs which architecture, and which model it runs when none is named,
comes from the table of :mod:`geoseg.architectures` (``REGISTRY`` and ``DEFAULT_MODELS`` are read from it): adding
an architecture is a network module and a row there; a backend class of its own is needed only when it predicts
differently (SegBlocks' blocks, Mask R-CNN's instances).

A backend turns a batch of normalised tiles into per-class probabilities::

    predict(pixels: float32 (N, bands, H, W) in [0, 1]) -> BatchPrediction(probabilities (N, C, H, W), decoded)

``decoded`` counts the tiles whose decoder actually ran (all of them for a dense backend; the gated backend
of the BGS-Net issue runs fewer). Backends are built on each Dask worker from a :class:`BackendSpec` and
cached there, so a model is loaded once per worker process, not once per task.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Protocol

import numpy as np

from ..errors import GeosegError
from ..architectures import ARCHITECTURES, GATED_BACKEND, architecture, import_named
from ..card import ModelCard, file_sha256, resolve_model_path
from ..gate import Gate, gate_path, load_gate, pregate_path

#: backend name -> "module:Class": one per architecture, and the gated backend
REGISTRY: dict[str, str] = {name: row.backend for name, row in ARCHITECTURES.items()} | dict([GATED_BACKEND])
#: the model a backend runs when no --model is given (absent: geoseg's default model); torch-free, for the driver
DEFAULT_MODELS: dict[str, str] = {name: row.default_model for name, row in ARCHITECTURES.items() if row.default_model}
#: backends that run every tile through the whole model, which ``--tta`` can repeat
DENSE_BACKENDS = tuple(name for name, row in ARCHITECTURES.items() if row.dense)
#: ``--backend auto`` (the default): the gated backend where the model has a calibrated gate beside it, else dense
AUTO = "auto"


@dataclass(frozen=True)
class BatchPrediction:
    probabilities: np.ndarray  # float16 (or float32) (N, C, H, W), summing to 1 over C
    decoded: int  # how many of the N tiles went through the decoder
    counters: dict[str, int] = field(default_factory=dict)  # backend-specific counts, summed over the scene
    instances: list | None = None  # instance backends: per tile, a list of geoseg.instances.Instance


class Backend(Protocol):
    name: str
    card: ModelCard
    model_sha256: str

    def predict(self, pixels: np.ndarray) -> BatchPrediction: ...


@dataclass(frozen=True)
class BackendSpec:
    """What a worker needs to build a backend: registry name, model (name or path), torch device, precision
    ("auto": bf16 autocast where the hardware makes it faster, else fp32), and for SegBlocks ``tau``, the
    fraction of blocks at full resolution (None: the card's); for instance backends ``score_threshold``, the
    lowest detection score kept, 0-1 (None: the card's ``instance_score_threshold``); ``tta``: the dense backends
    average each tile's probabilities over left-right and up-down flips (4 passes); for the gated backend ``gate``,
    the gate file's rule to use ("paper" or "linear"; None: the file's own) and ``cascade``, the thumbnail pre-gate
    in front of the encoder."""

    name: str = AUTO
    model: str | None = None
    device: str = "cpu"
    precision: str = "auto"
    tau: float | None = None
    score_threshold: float | None = None
    tta: bool = False  # dense backends only: test-time augmentation (geoseg.backends.unet.TTA_TURNS)
    gate: str | None = None  # gated backend only: "paper" or "linear" (geoseg.gate.GATE_RULES)
    cascade: bool = False  # gated backend only: the thumbnail pre-gate first (geoseg.pregate)


def spec_for(options) -> BackendSpec:
    """The spec a run's options (:class:`geoseg.options.RunOptions`, or a job, which has the same fields) name,
    resolved (:func:`resolve_spec`)."""
    return resolve_spec(BackendSpec(options.backend, options.model, options.device, options.precision, options.tau,
                                    options.score_threshold, options.tta, options.gate, options.cascade))


def backend_class(name: str):
    if name not in REGISTRY:
        raise GeosegError(f"unknown backend {name!r}; available: {', '.join([AUTO] + sorted(REGISTRY))}")
    return import_named(REGISTRY[name])


def resolve_spec(spec: BackendSpec) -> BackendSpec:
    """``auto`` -> ``bgs`` if the model has a gate (``NAME.gate.json``) and no TTA is asked for, else the backend
    of the model's architecture (``fastscnn``, ``segblocks``...; ``unet`` for a U-Net); a backend with a model of
    its own (:data:`DEFAULT_MODELS`) gets it when none is given; the gated backend gets the gate file's own rule
    when ``gate`` names none; other names unchanged."""
    if spec.name in DEFAULT_MODELS and spec.model is None:
        return replace(spec, model=DEFAULT_MODELS[spec.name])
    path = resolve_model_path(spec.model) if spec.name in (AUTO, GATED_BACKEND[0]) else None
    if spec.name == AUTO and gate_path(path).exists() and not spec.tta:  # TTA runs four decoder passes: no gate
        spec = replace(spec, name=GATED_BACKEND[0])
    if spec.name == GATED_BACKEND[0]:
        if spec.gate is None and gate_path(path).exists():
            spec = replace(spec, gate=Gate.from_json(gate_path(path)).rule)
        return spec
    if spec.name != AUTO:
        return spec
    return replace(spec, name=ModelCard.from_json(path.with_suffix(".json")).architecture)


def describe_backend(spec: BackendSpec) -> tuple[ModelCard, str]:
    """The model card and weights sha256 a spec resolves to, without importing torch (for the driver)."""
    if spec.name not in REGISTRY:
        backend_class(spec.name)  # raises the "unknown backend" error
    path = resolve_model_path(spec.model)
    sha256 = file_sha256(path)
    card = ModelCard.from_json(path.with_suffix(".json"))
    if spec.name in DEFAULT_MODELS and card.architecture != spec.name:
        raise GeosegError(f"--backend {spec.name}: model {card.name} is a {card.architecture}, not a {spec.name}")
    if spec.name == GATED_BACKEND[0]:
        load_gate(path, sha256).with_rule(spec.gate)  # a missing or mismatched gate is refused here, before any worker starts
        if spec.cascade:
            check_pregate(path, sha256)
    elif spec.gate is not None or spec.cascade:
        flag = "--cascade" if spec.cascade else f"--gate {spec.gate}"
        raise GeosegError(f"{flag} applies to the gated backend (bgs; --backend auto with a calibrated gate), "
                          f"not {spec.name}")
    if spec.tta and spec.name not in DENSE_BACKENDS:
        raise GeosegError(f"--tta applies to the dense backends ({', '.join(DENSE_BACKENDS)}), not {spec.name}")
    if spec.tau is not None:
        if spec.name not in ARCHITECTURES or not ARCHITECTURES[spec.name].blocks:
            raise GeosegError(f"--tau applies to --backend segblocks only, not {spec.name}")
        check_tau(spec.tau)
    if spec.score_threshold is not None:
        if not architecture(card.architecture).instances:
            raise GeosegError(f"--score-threshold applies to instance models only, not {card.name} ({card.architecture})")
        card.instance_score_threshold = check_score_threshold(spec.score_threshold)
    return card, sha256


@dataclass
class RunModel:
    """The model a run uses, resolved once on the driver: what workers build (a spec, or a ready backend object),
    its card and weights checksum, and what :func:`geoseg.adapt.adapt` did to give these weights, if it did."""

    spec: BackendSpec | Backend
    card: ModelCard
    sha256: str
    adapted: dict | None = None

    @property
    def backend_name(self) -> str:
        return getattr(self.spec, "name", "custom")


def check_tau(tau: float) -> float:
    if not 0 < tau <= 1:
        raise GeosegError(f"--tau {tau}: the fraction of full-resolution blocks must be in (0, 1]")
    return tau


def check_score_threshold(score: float) -> float:
    if not 0 <= score <= 1:
        raise GeosegError(f"--score-threshold {score}: a detection score threshold must be in [0, 1]")
    return score


def check_pregate(model_path, sha256: str) -> None:
    """Refuse, on the driver and without torch, a missing pre-gate or one calibrated for other weights."""
    from safetensors import safe_open

    path = pregate_path(model_path)
    if not path.exists():
        raise GeosegError(f"--cascade: no pre-gate for {Path(model_path).name}: run `geoseg calibrate --pregate` "
                          f"to make {path.name}")
    with safe_open(str(path), "np") as f:  # the metadata only: no tensor is read, no torch imported
        calibrated_for = (f.metadata() or {}).get("model_sha256")
    if calibrated_for != sha256:
        raise GeosegError(f"--cascade: {path.name} was calibrated for other weights: calibrate again")


@functools.lru_cache(maxsize=4)
def load_backend(spec: BackendSpec) -> Backend:
    """Build (once per process) the backend a spec names."""
    spec = resolve_spec(spec)
    extra = {k: v for k, v in (("tau", spec.tau), ("score_threshold", spec.score_threshold)) if v is not None}
    if spec.tta:
        extra["tta"] = True
    if spec.gate is not None:
        extra["rule"] = spec.gate
    if spec.cascade:
        extra["cascade"] = True
    if spec.name in ARCHITECTURES:
        extra["architecture"] = spec.name  # the backend of a row runs that architecture (its own model by default)
    return backend_class(spec.name)(model=spec.model, device=spec.device, precision=spec.precision, **extra)
