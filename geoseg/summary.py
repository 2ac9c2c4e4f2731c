"""The run summary: one typed record per scene, written as ``summary.json`` and read by ``geoseg run`` and
``geoseg pipeline run``. Units are in the names (s, px, m, m2, MB); ``*_on_workers`` seconds are summed over
worker processes (CPU-busy time of tasks), ``driver_s`` is the driver's own wall time for the scene (open,
plan, submit, collect, publish), so their ratio is the serial share of a run.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from . import __version__

if TYPE_CHECKING:
    from .options import RunOptions
    from .pipeline import RunModel, SceneRun


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


def scene_summary(run: SceneRun, model: RunModel, opts: RunOptions, driver_rss_mb: float,
                  workers_rss_mb: float) -> RunSummary:
    """The record of a finished scene, from its chunks' and finishing tasks' results."""
    import time

    card, results = model.card, run.results
    encoded = sum(r.stats["encoded"] for r in results)
    decoded = sum(r.stats["decoded"] for r in results)
    bf16 = sum(r.stats["bf16_tiles"] for r in results)
    counters: dict[str, int] = {}
    for r in results:
        for key, value in r.stats["counters"].items():
            counters[key] = counters.get(key, 0) + value
    vectors = run.finishing["vectors"]
    stages = {
        "read_on_workers": sum(r.stats["read_s"] for r in results),
        "model_on_workers": sum(r.stats["model_s"] for r in results),
        "stitch_on_workers": sum(r.seconds["stitch_s"] for r in results),
        "vectorise_on_workers": sum(r.seconds["vectorise_s"] for r in results) + vectors[1],
        "write_on_workers": sum(r.seconds["write_s"] for r in results) + run.finishing["mask"]
        + run.finishing["probability"],
    }
    seconds = time.perf_counter() - run.started
    megapixels = run.work.grid.megapixels
    details = _segblocks_details(card, opts, counters)
    if run.work.owned is not None:
        details |= {"instances_detected": counters.get("instances_detected", 0), "instances_kept": vectors[3],
                    "instance_score_threshold": card.instance_score_threshold}
    if card.separator_class is not None:
        details |= {"separator_threshold": run.work.separator_threshold,
                    "separator_dilate_px": run.work.separator_dilate_px}
    return RunSummary(
        geoseg_version=__version__, **run.facts, input=str(Path(run.reader.path).resolve()),
        backend=getattr(model.spec, "name", "custom"), model=card.name, model_trained=card.trained,
        classes=card.mask_classes, building_class=card.building_class, model_sha256=model.sha256,
        device=opts.device, precision=opts.precision, precision_used=_precision_used(bf16, encoded),
        tile_px=opts.tile_px, overlap_px=opts.overlap_px, chunk_px=opts.chunk_px, chunks=len(run.plan.chunks),
        tiles_total=run.tiles_total, tiles_nodata=run.tiles_total - encoded, tiles_encoded=encoded,
        tiles_decoded=decoded, decoder_execution_rate=round(decoded / encoded, 4) if encoded else 0.0,
        megapixels=round(megapixels, 3), seconds=round(seconds, 2),
        megapixels_per_second=round(megapixels / seconds, 4),
        stage_seconds={k: round(v, 2) for k, v in stages.items()} | {"driver": round(run.driver_s, 2)},
        worker_s=round(sum(stages.values()), 2), driver_s=round(run.driver_s, 2),
        buildings=vectors[0], min_area_m2=opts.min_area_m2, simplify_m=opts.simplify_m, regularise=opts.regularise,
        min_rectangularity=opts.min_rectangularity, peak_rss_mb=round(driver_rss_mb + workers_rss_mb, 1),
        peak_rss_mb_driver=round(driver_rss_mb, 1), peak_rss_mb_workers=round(workers_rss_mb, 1),
        outputs=["mask.tif", "probability.tif"] + vectors[2], details=details, adapt=model.adapted)


def _segblocks_details(card, opts: RunOptions, counts: dict[str, int]) -> dict:
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
