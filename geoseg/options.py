"""Run options: everything ``geoseg run`` can be told, with units in the names, and their checks.

:meth:`RunOptions.check` refuses, before any cluster starts or any tile is read, every value no run can use, with
one line naming the flag (``--workers -1`` used to wait forever for workers that never came).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

from .chunk import CHUNK_PX, window_px_for
from .errors import GeosegError
from .write import VECTOR_FORMATS

#: what ``--device`` accepts
_DEVICE = re.compile(r"^(cpu|cuda(:\d+)?)$")
#: the largest ``--chunk``: 16 vectorise windows a side, 1 Gpx (above it, nothing is gained and int64 pixel
#: arithmetic on a 2^72 px chunk overflowed after inference)
MAX_CHUNK_PX = 16 * 2048


@dataclass
class RunOptions:
    """Everything ``geoseg run`` can be told. Units are in the names (px, m, m2)."""

    backend: str = "auto"  # bgs where the model has a calibrated gate, else unet
    model: str | None = None
    device: str = "cpu"
    precision: str = "auto"
    tau: float | None = None  # SegBlocks: fraction of blocks at full resolution; None: the card's
    score_threshold: float | None = None  # instance backends: lowest detection score kept (0-1); None: the card's
    tta: bool = False  # dense backends: average over left-right and up-down flips (4 passes per tile)
    tile_px: int = 512
    overlap_px: int = 64
    batch_tiles: int = 4
    chunk_px: int = CHUNK_PX  # side of the chunk a worker finishes whole (geoseg.chunk)
    bands: list[int] | None = None
    assume_crs: str | None = None
    target_gsd_m: float | None = None
    native_resolution: bool = False
    formats: list[str] = field(default_factory=lambda: list(VECTOR_FORMATS))
    min_area_m2: float = 4.0
    simplify_m: float = 0.25
    regularise: bool = False  # right-angled outlines (geoseg.outline) instead of simplified ones
    min_rectangularity: float = 0.0  # drop polygons less rectangular than this (0-1; tree crowns, blobs)
    separator_threshold: float | None = None  # P(separator) that splits touching buildings; None: the card's
    separator_dilate_px: int | None = None  # None: the card's
    adapt: bool = False  # adapt the model to the run's scenes first (geoseg.adapt), without labels
    adapt_budget_s: float = 90.0  # the most seconds adapting may take
    workers: int | None = None  # None: one per CPU core; 0: in-process, no cluster
    scheduler: str | None = None
    progress: bool = True

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
        if self.separator_threshold is not None and not 0 <= self.separator_threshold <= 1:
            bad("--separator-threshold", self.separator_threshold, "a probability must be in [0, 1]")
        if self.tau is not None and not (math.isfinite(self.tau) and 0 < self.tau <= 1):
            bad("--tau", self.tau, "the fraction of full-resolution blocks must be in (0, 1]")
        if self.bands is not None and (not self.bands or min(self.bands) < 1):
            bad("--bands", ",".join(map(str, self.bands)) or "''", "give 1-based band numbers, e.g. 1,2,3")
        unknown = set(self.formats) - set(VECTOR_FORMATS)
        if unknown:
            raise GeosegError(f"--formats: unknown {', '.join(sorted(unknown))}; choose from {', '.join(VECTOR_FORMATS)}")
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
