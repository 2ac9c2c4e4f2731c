"""The run summary: one typed record per scene, written as ``summary.json`` and read by ``geoseg run`` and
``geoseg pipeline run``. Units are in the names (s, px, m, m2, MB); ``*_on_workers`` seconds are summed over
worker processes (CPU-busy time of tasks), ``driver_s`` is the driver's own wall time for the scene (open,
plan, submit, collect, publish), so their ratio is the serial share of a run.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from . import __version__
from .scene import SceneFacts
from .staging import BatchStats, ChunkResult, FinishResults, SceneWork

if TYPE_CHECKING:
    from .backends import RunModel
    from .options import RunOptions


@dataclass
class RunSummary:
    geoseg_version: str
    scene: str
    crs: str
    bands: list
    source_size_px: list
    source_gsd_m: float
    grid_size_px: list
    grid_gsd_m: float
    resampled: bool
    input: str
    backend: str
    model: str
    model_trained: bool
    classes: list
    building_class: int
    model_sha256: str
    device: str
    precision: str
    precision_used: str
    tile_px: int
    overlap_px: int
    chunk_px: int
    chunks: int
    tiles_total: int
    tiles_nodata: int
    tiles_encoded: int
    tiles_decoded: int
    decoder_execution_rate: float
    megapixels: float
    seconds: float
    megapixels_per_second: float
    stage_seconds: dict
    worker_s: float
    driver_s: float
    buildings: int
    min_area_m2: float
    simplify_m: float
    regularise: bool
    min_rectangularity: float
    peak_rss_mb: float
    peak_rss_mb_driver: float
    peak_rss_mb_workers: float
    outputs: list
    #: backend-specific facts, flattened into summary.json: SegBlocks' tau, instance counts, separator settings
    details: dict = field(default_factory=dict)
    #: ``geoseg run --adapt``: what adapting did (geoseg.adapt.AdaptReport: weights, base model, tiles, steps,
    #: seconds); absent from summary.json when the run did not adapt
    adapt: dict | None = None

    def as_dict(self) -> dict:
        record = asdict(self)
        details = record.pop("details")
        outputs = record.pop("outputs")
        if record["adapt"] is None:
            record.pop("adapt")
        return {**record, **details, "outputs": outputs}

    def to_json(self) -> str:
        return json.dumps(self.as_dict(), indent=2) + "\n"


@dataclass(frozen=True)
class SceneDone:
    """A scene whose chunks and finishing steps are all in, as the driver hands it to :func:`scene_summary`:
    records only (no futures, no driver state)."""

    facts: SceneFacts
    work: SceneWork
    chunks: tuple[ChunkResult, ...]
    finished: FinishResults
    tiles_total: int
    seconds: float  # wall time from opening the scene to its last finishing step
    driver_s: float
    driver_rss_mb: float
    workers_rss_mb: float


def scene_summary(done: SceneDone, model: RunModel, opts: RunOptions) -> RunSummary:
    """The record of a finished scene, from its chunks' and finishing steps' results."""
    card, results, vectors = model.card, done.chunks, done.finished.vectors
    stats = BatchStats.total(r.stats for r in results)
    encoded, decoded, counters = stats.encoded, stats.decoded, stats.counters
    stages = {
        "read_on_workers": stats.read_s,
        "model_on_workers": stats.model_s,
        "stitch_on_workers": sum(r.stitch_s for r in results),
        "vectorise_on_workers": sum(r.vectorise_s for r in results) + vectors.seconds,
        "write_on_workers": sum(r.write_s for r in results) + done.finished.mask_s + done.finished.probability_s,
    }
    seconds, driver_rss_mb, workers_rss_mb = done.seconds, done.driver_rss_mb, done.workers_rss_mb
    megapixels = done.work.grid.megapixels
    details = _segblocks_details(card, opts, counters)
    if done.work.owned is not None:
        details |= {"instances_detected": counters.get("instances_detected", 0),
                    "instances_kept": vectors.instances_kept,
                    "instance_score_threshold": card.instance_score_threshold}
    if model.backend_name == "bgs":
        gate = getattr(model.spec, "gate", None)  # a spec's rule name, or a ready backend's Gate
        details["gate_rule"] = getattr(gate, "rule", gate)
    if "tiles_past_pregate" in counters:  # the cascade: the pre-gate's pass rate is the encoder's execution rate
        details |= {"cascade": True, "tiles_past_pregate": counters["tiles_past_pregate"],
                    "encoder_execution_rate": round(counters["tiles_past_pregate"] / encoded, 4) if encoded else 0.0}
    if done.work.building_threshold is not None:
        details["building_threshold"] = done.work.building_threshold
    if done.work.vector.min_confidence is not None:
        details["min_confidence"] = done.work.vector.min_confidence
    if card.separator_class is not None:
        details |= {"separator_threshold": done.work.vector.separator_threshold,
                    "separator_dilate_px": done.work.vector.separator_dilate_px}
    return RunSummary(
        geoseg_version=__version__, **asdict(done.facts), input=str(Path(done.facts.scene).resolve()),
        backend=model.backend_name, model=card.name, model_trained=card.trained,
        classes=card.mask_classes, building_class=card.building_class, model_sha256=model.sha256,
        device=opts.device, precision=opts.precision, precision_used=_precision_used(stats.bf16_tiles, encoded),
        tile_px=opts.tile_px, overlap_px=opts.overlap_px, chunk_px=opts.chunk_px, chunks=len(results),
        tiles_total=done.tiles_total, tiles_nodata=done.tiles_total - encoded, tiles_encoded=encoded,
        tiles_decoded=decoded, decoder_execution_rate=round(decoded / encoded, 4) if encoded else 0.0,
        megapixels=round(megapixels, 3), seconds=round(seconds, 2),
        megapixels_per_second=round(megapixels / seconds, 4),
        stage_seconds={k: round(v, 2) for k, v in stages.items()} | {"driver": round(done.driver_s, 2)},
        worker_s=round(sum(stages.values()), 2), driver_s=round(done.driver_s, 2),
        buildings=vectors.buildings, min_area_m2=opts.min_area_m2, simplify_m=opts.simplify_m, regularise=opts.regularise,
        min_rectangularity=opts.min_rectangularity, peak_rss_mb=round(driver_rss_mb + workers_rss_mb, 1),
        peak_rss_mb_driver=round(driver_rss_mb, 1), peak_rss_mb_workers=round(workers_rss_mb, 1),
        outputs=["mask.tif", "probability.tif"] + list(vectors.outputs), details=details, adapt=model.adapted)


def _segblocks_details(card, opts: RunOptions, counts: Mapping[str, int]) -> dict:
    """For block-based models: tau asked for, how it was reached, and the high-resolution fraction achieved."""
    if not card.block_px:
        return {}
    tau = card.tau if opts.tau is None else opts.tau
    blocks = counts.get("blocks", 0)
    return {"block_px": card.block_px, "tau": tau,
            "tau_rule": "calibrated threshold" if f"{tau:g}" in card.policy_thresholds else "top tau per tile",
            "high_res_fraction": round(counts.get("high_res_blocks", 0) / blocks, 4) if blocks else 0.0}


def _precision_used(bf16_tiles: int, encoded: int) -> str:
    """What ``--precision`` resolved to on the workers: bf16, fp32, or mixed (workers on CPUs of both kinds)."""
    if not encoded:
        return "none"
    return "bf16" if bf16_tiles == encoded else "fp32" if bf16_tiles == 0 else "mixed"
