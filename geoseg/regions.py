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

from collections import defaultdict
from pathlib import Path

import rasterio
import shapely
from rasterio.merge import merge
from rasterio.windows import Window

from .datasets import chips_of_distinct_ground, chips_sharing_no_ground
from .evaluate import write_labelled_region
from .config import ChipsSource, DubaiSource, GeotiffSource, ImageMaskSource, XYZSource, load_config, load_scenes, source_place


def validation_regions(config_path: str, out: Path, split: str = "val", place: str | None = None
                       ) -> list[tuple[Path, Path]]:
    """(scene GeoTIFF, reference) pairs for every validation region of a training config. With
    ``split="train"``: the training rows of the GeoTIFF sources instead (for tuning post-processing without
    touching the validation data). With ``split="all"``: all the ground of every source (for scoring a place
    left out of training), each chip folder's ground once. ``place``: only that place's sources. The reference is
    the original footprint polygons where the source has them, else a label raster."""
    config, root = load_config(config_path)
    regions = []
    for src in config.sources:
        if place is not None and source_place(src) != place:
            continue
        if isinstance(src, GeotiffSource) and src.labels and (src.val_fraction > 0 or split == "all"):
            image = root / src.image
            with rasterio.open(image) as ds:
                start = int(round(ds.height * (1 - src.val_fraction)))
                window = Window(0, start, ds.width, ds.height - start)
                if split == "train":
                    window = Window(0, 0, ds.width, start - src.gap_px)
                elif split == "all":
                    window = Window(0, 0, ds.width, ds.height)
                profile = ds.profile | {"height": window.height, "width": window.width,
                                        "transform": ds.window_transform(window)}
                path = out / "regions" / f"{image.parent.name}_{split}.tif"
                path.parent.mkdir(parents=True, exist_ok=True)
                with rasterio.open(path, "w", **profile) as dst:
                    dst.write(ds.read(window=window))
                    if ds.mask_flag_enums[0] == [rasterio.enums.MaskFlags.per_dataset]:
                        dst.write_mask(ds.dataset_mask(window=window))
            regions.append((path, root / src.labels))
        elif isinstance(src, ChipsSource) and (src.split == "val" and split == "val" or split == "all"):
            reference = root / (src.labels or Path(src.images).parent / "chips_buildings.geojson")
            other = root / src.exclude_overlap_with if src.exclude_overlap_with else None
            chips = chips_sharing_no_ground(root / src.images, other)
            if src.distinct_ground or split == "all":  # the same buildings at several zoom levels are scored once
                chips = chips_of_distinct_ground(chips, config.gsd_m)
            by_zoom = defaultdict(list)
            for chip in chips:
                by_zoom[chip.stem.rsplit("-", 1)[-1]].append(chip)
            for zoom, chips in sorted(by_zoom.items()):
                block = out / "regions" / f"{Path(src.images).parent.name}_{src.split}_z{zoom}.tif"
                regions += [(path, reference) for path in mosaic_if_contiguous(chips, block)]
        elif isinstance(src, (XYZSource, ImageMaskSource, DubaiSource)) and split in ("val", "all"):
            # no original GeoTIFF to cut: the scenes as training reads them, scored against their label raster
            one = config.model_copy(update={"sources": [src]})
            regions += [write_labelled_region(scene, out / "regions", config.gsd_m)
                        for scene in load_scenes(one, root) if split == "all" or scene.split == "val"]
    return regions


def mosaic_if_contiguous(chips: list[Path], path: Path) -> list[Path]:
    """``[path]`` holding the chips mosaicked, if they tile one rectangle without gaps; else the chips."""
    if len(chips) < 2:
        return chips
    boxes = []
    for chip in chips:
        with rasterio.open(chip) as ds:
            boxes.append(shapely.box(*ds.bounds))
    union = shapely.union_all(boxes)
    if abs(union.area - shapely.box(*union.bounds).area) > 1e-3 * union.area:
        return chips
    image, transform = merge([str(c) for c in chips])
    with rasterio.open(chips[0]) as ds:
        profile = ds.profile | {"height": image.shape[1], "width": image.shape[2], "transform": transform,
                                "driver": "GTiff"}
    path.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(image)
    return [path]
