"""Run options: everything ``geoseg run`` and a job file can be told, with units in the names, and their checks.

:class:`RunOptions` is the one schema: each field declares its ``geoseg run`` flag and help and the job-file
section it lives in (:func:`option`); the CLI (:func:`geoseg.cli`) and the job file (:mod:`geoseg.job`) are built
from it, so the two cannot drift apart.

:meth:`RunOptions.check` refuses, before any cluster starts or any tile is read, every value no run can use, with
one line naming the flag (``--workers -1`` used to wait forever for workers that never came).
"""

from __future__ import annotations

import math
import re
from dataclasses import field, fields
from typing import Literal

from pydantic import ConfigDict
from pydantic.dataclasses import dataclass

from .chunk import CHUNK_PX, window_px_for
from .errors import GeosegError
from .formats import DEFAULT_FORMATS, check_formats

#: what ``--device`` accepts
_DEVICE = re.compile(r"^(cpu|cuda(:\d+)?)$")
#: the largest ``--chunk``: 16 vectorise windows a side, 1 Gpx (above it, nothing is gained and int64 pixel
#: arithmetic on a 2^72 px chunk overflowed after inference)
MAX_CHUNK_PX = 16 * 2048


def option(default, flag: str, help: str, job: str | None = "", **kw):
    """A run option: its default, its ``geoseg run`` flag and help, and where a job file sets it (``job``: "" at
    the top level, else the section's name, e.g. "tiling"; None: not in job files, which say it in ``cluster``).
    The CLI's flags and the job file's sections are built from these, so an option is declared here once."""
    factory = {"default_factory": lambda: list(default)} if isinstance(default, (list, tuple)) else {"default": default}
    return field(**factory, metadata={"flag": flag, "help": help, "job": job, **kw})


@dataclass(config=ConfigDict(extra="forbid"))
class RunOptions:
    """Everything ``geoseg run`` and a job file can be told. Units are in the names (px, m, m2, s). Types are
    checked on construction, values by :meth:`check`."""

    backend: str = option("auto", "--backend", "auto (default: bgs if the model has a calibrated gate, else its "
                          "architecture's), or a backend: {backends}")
    model: str | None = option(None, "--model", "model name shipped with geoseg, or path to NAME.safetensors")
    device: str = option("cpu", "--device", "torch device: cpu or cuda[:N]")
    precision: Literal["auto", "bf16", "fp32"] = option(
        "auto", "--precision", "auto: bf16 autocast on CUDA and on CPUs with AMX/AVX512-BF16, else fp32")
    tau: float | None = option(None, "--tau", "segblocks: fraction of blocks processed at full resolution, 0-1 "
                               "(default: the model's)")
    score_threshold: float | None = option(None, "--score-threshold", "maskrcnn-light/maskrcnn: keep detections "
                                           "scoring at least this, 0-1 (default: the model's)")
    tta: bool = option(False, "--tta", "unet/fastscnn/contextnet: average each tile over left-right and up-down flips "
                       "(4x the model time; with --backend auto it runs the dense backend, not the gate)")
    gate: Literal["paper", "linear"] | None = option(
        None, "--gate", "bgs: which rule of the gate file opens the decoder: paper (BGS-Net's channel rules) or "
        "linear (the learned head); default: the file's")
    cascade: bool = option(False, "--cascade", "bgs: a thumbnail pre-gate first, so that only tiles that may hold "
                           "buildings reach the encoder (needs NAME.pregate.safetensors: geoseg calibrate --pregate)")
    tile_px: int = option(512, "--tile", "tile size in pixels", job="tiling")
    overlap_px: int = option(64, "--overlap", "tile overlap in pixels", job="tiling")
    batch_tiles: int = option(4, "--batch", "tiles per Dask task", job="tiling")
    chunk_px: int = option(CHUNK_PX, "--chunk", "side in px of the chunks workers stitch, write and vectorise whole",
                           job="tiling")
    bands: list[int] | None = option(None, "--bands", "1-based bands for the model, e.g. 1,2,3 or 1", job="reading")
    assume_crs: str | None = option(None, "--assume-crs", "CRS for a raster that has none, e.g. EPSG:32636",
                                    job="reading")
    target_gsd_m: float | None = option(None, "--target-gsd", "resample the scene to this GSD in metres instead of "
                                        "the model's (forces coarse scenes)", job="reading")
    native_resolution: bool = option(False, "--native-resolution", "never resample; run at the scene's own GSD",
                                     job="reading")
    formats: list[str] = option(DEFAULT_FORMATS, "--formats", "vector formats: {formats}", job="output")
    min_area_m2: float = option(4.0, "--min-area", "drop buildings under this many m2", job="output")
    simplify_m: float = option(0.25, "--simplify", "simplify tolerance in metres", job="output")
    regularise: bool = option(False, "--regularise", "right-angled building outlines instead of simplified ones",
                              job="output")
    min_rectangularity: float = option(0.0, "--min-rectangularity", "drop polygons whose area is under this fraction "
                                       "of their bounding rectangle's (0-1; 0: off)", job="output")
    building_threshold: float | None = option(None, "--building-threshold", "P(building) at or above which a pixel "
                                              "is building, 0-1 (default: the card's, else the most probable "
                                              "class)", job="output")
    min_confidence: float | None = option(None, "--min-confidence", "drop buildings whose mean P(building) (their "
                                          "confidence column) is under this, 0-1; the mask keeps them; semantic "
                                          "backends (default: the card's, else keep all)", job="output")
    separator_threshold: float | None = option(None, "--separator-threshold", "P(separator) that splits touching "
                                               "buildings (models with a separator class; default: the card's)",
                                               job="output")
    separator_dilate_px: int | None = option(None, "--separator-dilate", "widen predicted separators by this many "
                                             "pixels before splitting (default: the card's)", job="output")
    adapt: bool = option(False, "--adapt", "first adapt the model to these scenes without labels (batch-norm "
                         "statistics, self-training); the adapted weights are written to OUT/adapted/")
    adapt_budget_s: float = option(90.0, "--adapt-budget", "--adapt: at most this many seconds")
    workers: int | None = option(None, "--workers", "LocalCluster worker processes (default: CPU cores; 0: "
                                 "in-process)", job=None)
    scheduler: str | None = option(None, "--scheduler", "address of an existing Dask scheduler, e.g. "
                                   "tcp://10.0.0.5:8786", job=None)
    progress: bool = option(True, "--quiet", "no progress bar", job=None, inverted=True)

    def check(self) -> "RunOptions":
        """Refuse, with one line naming the flag, any value no run can use; called before any work starts."""
        def bad(flag: str, value, rule: str) -> None:
            raise GeosegError(f"{flag} {value}: {rule}")

        def finite_at_least(flag: str, value, low: float) -> None:
            if value is not None and not (math.isfinite(value) and value >= low):
                bad(flag, value, f"must be a number >= {low:g}")

        if self.workers is not None and self.workers < 0:
            bad("--workers", self.workers, "use 0 (in-process, no cluster) or a number of worker processes")
        if self.batch_tiles < 1:
            bad("--batch", self.batch_tiles, "at least 1 tile per task")
        if self.tile_px < 32:
            bad("--tile", self.tile_px, "at least 32 px")
        if self.chunk_px < 64:
            bad("--chunk", self.chunk_px, "at least 64 px")
        if self.chunk_px > MAX_CHUNK_PX:
            bad("--chunk", self.chunk_px, f"at most {MAX_CHUNK_PX} px (a chunk is held whole in a worker's memory)")
        window_px_for(self.chunk_px)  # a multiple of the vectorise window
        finite_at_least("--overlap", self.overlap_px, 0)
        if self.overlap_px >= self.tile_px:
            bad("--overlap", self.overlap_px, f"must be smaller than the tile ({self.tile_px} px)")
        finite_at_least("--min-area", self.min_area_m2, 0)
        finite_at_least("--simplify", self.simplify_m, 0)
        finite_at_least("--separator-dilate", self.separator_dilate_px, 0)
        if self.target_gsd_m is not None and not (math.isfinite(self.target_gsd_m) and self.target_gsd_m > 0):
            bad("--target-gsd", self.target_gsd_m, "a ground sample distance in metres must be > 0")
        if not (math.isfinite(self.min_rectangularity) and 0 <= self.min_rectangularity <= 1):
            bad("--min-rectangularity", self.min_rectangularity, "area over bounding-rectangle area must be in [0, 1]")
        if self.building_threshold is not None and not 0 < self.building_threshold <= 1:
            bad("--building-threshold", self.building_threshold, "a probability must be in (0, 1]")
        if self.min_confidence is not None and not 0 <= self.min_confidence <= 1:
            bad("--min-confidence", self.min_confidence, "a mean probability must be in [0, 1]")
        if self.separator_threshold is not None and not 0 <= self.separator_threshold <= 1:
            bad("--separator-threshold", self.separator_threshold, "a probability must be in [0, 1]")
        if self.score_threshold is not None and not 0 <= self.score_threshold <= 1:
            bad("--score-threshold", self.score_threshold, "a detection score must be in [0, 1]")
        if self.tau is not None and not (math.isfinite(self.tau) and 0 < self.tau <= 1):
            bad("--tau", self.tau, "the fraction of full-resolution blocks must be in (0, 1]")
        if self.bands is not None and (not self.bands or min(self.bands) < 1):
            bad("--bands", ",".join(map(str, self.bands)) or "''", "give 1-based band numbers, e.g. 1,2,3")
        try:
            check_formats(self.formats)
        except ValueError as err:
            raise GeosegError(f"--formats: {err}") from None
        if not (math.isfinite(self.adapt_budget_s) and self.adapt_budget_s > 0):
            bad("--adapt-budget", self.adapt_budget_s, "seconds must be a number > 0")
        if self.adapt and self.backend not in ("auto", "bgs", "unet", "fastscnn", "contextnet"):
            bad("--adapt --backend", self.backend, "adapting takes an encoder-decoder model (auto, bgs, unet, fastscnn, "
                "contextnet)")
        if not _DEVICE.match(self.device):
            bad("--device", self.device, "use cpu, cuda or cuda:N")
        if self.device.startswith("cuda"):
            import torch

            if not torch.cuda.is_available():
                bad("--device", self.device, "CUDA is not available on this machine (use --device cpu)")
        return self


#: every run default, read by the command line (``geoseg run``, ``geoseg calibrate --tile``) and the job schema
DEFAULTS = RunOptions()


def run_fields() -> list:
    """The fields of :class:`RunOptions`, in order (``.name``, ``.type``, ``.metadata``: flag, help, job)."""
    return list(fields(RunOptions))


def job_field_path(flag: str) -> str | None:
    """Where a job file sets the option of ``flag`` (``tiling.tile_px``), for errors found by :meth:`check`."""
    for f in fields(RunOptions):
        if f.metadata["flag"] == flag and f.metadata["job"] is not None:
            return f"{f.metadata['job']}.{f.name}" if f.metadata["job"] else f.name
    return None
