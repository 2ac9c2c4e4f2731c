"""``chips``: a folder of GeoTIFF chips with a folder of 0/1 masks; every chip goes to the source's ``split``,
except chips that share ground with ``exclude_overlap_with``. Scored per zoom level on the chips that share no
ground with training, mosaicked where they tile one gap-free rectangle (scored chip by chip, every building a
chip border cuts would count as two reference fragments, which no real scene has); with ``distinct_ground`` (and
for ``"all"``), the same ground at several zoom levels is scored once."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Literal

import rasterio
import shapely
from rasterio.merge import merge

from .base import SourceBase, at, fixed_split


class ChipsSource(SourceBase):
    kind: Literal["chips"]
    images: str
    masks: str
    split: Literal["train", "val"] = "train"
    exclude_overlap_with: str | None = None
    labels: str | None = None
    distinct_ground: bool = False  # the same ground at several zoom levels counted once

    def load(self, config, root: Path):
        from ..datasets import chips_source

        return chips_source(at(root, self.images), at(root, self.masks), config.gsd_m, split=self.split,
                            exclude_overlap_with=at(root, self.exclude_overlap_with), labels=at(root, self.labels),
                            separator_class=config.separator_class, distinct_ground=self.distinct_ground)

    def splits(self) -> frozenset[str]:
        return fixed_split(self.split)

    def regions(self, config, root: Path, out: Path, split: str) -> list[tuple[Path, Path]]:
        from ..datasets import chips_of_distinct_ground, chips_sharing_no_ground

        if not (self.split == "val" and split == "val" or split == "all"):
            return []
        reference = root / (self.labels or Path(self.images).parent / "chips_buildings.geojson")
        other = root / self.exclude_overlap_with if self.exclude_overlap_with else None
        chips = chips_sharing_no_ground(root / self.images, other)
        if self.distinct_ground or split == "all":  # the same buildings at several zoom levels are scored once
            chips = chips_of_distinct_ground(chips, config.gsd_m)
        by_zoom = defaultdict(list)
        for chip in chips:
            by_zoom[chip.stem.rsplit("-", 1)[-1]].append(chip)
        regions = []
        for zoom, chips in sorted(by_zoom.items()):
            block = out / "regions" / f"{Path(self.images).parent.name}_{self.split}_z{zoom}.tif"
            regions += [(path, reference) for path in mosaic_if_contiguous(chips, block)]
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
