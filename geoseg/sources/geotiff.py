"""``geotiff``: an image with vector labels (any CRS, rasterised on the image grid) or a raster mask; split by rows
(the last ``val_fraction`` is validation, after ``gap_px`` unused rows), or all to ``split``. Scored on the
original image's rows (its own CRS and resolution) against the footprint polygons."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import rasterio
from pydantic import Field
from rasterio.windows import Window

from .base import SourceBase, at, fixed_split


class GeotiffSource(SourceBase):
    kind: Literal["geotiff"]
    image: str
    labels: str | None = None
    mask: str | None = None
    val_fraction: float = Field(0.2, ge=0, lt=1)
    gap_px: int = Field(64, ge=0)
    split: Literal["train", "val"] | None = None  # the whole scene to one split (val_fraction then unused)

    def load(self, config, root: Path):
        from ..datasets import geotiff_source

        return geotiff_source(at(root, self.image), config.gsd_m, labels=at(root, self.labels), mask=at(root, self.mask),
                              val_fraction=self.val_fraction, gap_px=self.gap_px,
                              separator_class=config.separator_class, split=self.split)

    def splits(self) -> frozenset[str]:
        return fixed_split(self.split)  # with a split, val_fraction is unused

    def regions(self, config, root: Path, out: Path, split: str) -> list[tuple[Path, Path]]:
        """The validation rows (``"val"``), the training rows before the gap (``"train"``) or the whole image
        (``"all"``), cut from the original image, against the labels; nothing without vector labels."""
        if not self.labels or not (self.val_fraction > 0 or split == "all"):
            return []
        image = root / self.image
        with rasterio.open(image) as ds:
            start = int(round(ds.height * (1 - self.val_fraction)))
            window = Window(0, start, ds.width, ds.height - start)
            if split == "train":
                window = Window(0, 0, ds.width, start - self.gap_px)
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
        return [(path, root / self.labels)]
