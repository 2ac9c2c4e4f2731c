"""Scoring regions of a training config: the ground a model is scored on end to end (``geoseg run`` +
``geoseg evaluate``), as (scene GeoTIFF, reference) pairs written under a folder. Used by
``benchmarks/evaluate_model.py`` (the validation regions: a card's end-to-end figures) and
``benchmarks/leave_one_place_out.py`` (all the ground of a place left out of training).

Validation regions are cut from the *original* images (their own CRS and resolution: the last ``val_fraction``
of the rows, as in training). Kampala val-chips that share no ground with training chips are mosaicked per zoom
level when they form one gap-free rectangle (16 chips of 19 m at zoom 21 are one 76 m block): scored chip by
chip, every building that a chip border cuts would count as two reference fragments, which no real scene has. A
chips source with ``distinct_ground`` gives only the chips that show its ground once (Kampala's block at zoom 19,
not again at 20 and 21). Sources without an original GeoTIFF to cut (``xyz``, ``image_mask``, ``dubai``) are
written as training reads them (:func:`geoseg.evaluate.write_labelled_region`), against their label raster.
"""

from __future__ import annotations

from pathlib import Path

from .config import load_config, source_place
from .sources.chips import mosaic_if_contiguous

__all__ = ["validation_regions", "mosaic_if_contiguous"]


def validation_regions(config_path: str, out: Path, split: str = "val", place: str | None = None
                       ) -> list[tuple[Path, Path]]:
    """(scene GeoTIFF, reference) pairs for every validation region of a training config. With
    ``split="train"``: the training rows of the GeoTIFF sources instead (for tuning post-processing without
    touching the validation data). With ``split="all"``: all the ground of every source (for scoring a place
    left out of training), each chip folder's ground once. ``place``: only that place's sources. The reference is
    the original footprint polygons where the source has them, else a label raster (each kind's
    :meth:`geoseg.sources.base.SourceBase.regions`)."""
    config, root = load_config(config_path)
    return [region for src in config.sources if place is None or source_place(src) == place
            for region in src.regions(config, root, out, split)]
