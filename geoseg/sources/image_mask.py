"""``image_mask``: one plain image (PNG, JPEG...; not georeferenced) and a 0/1 mask at a stated native GSD, e.g. the
SpaceNet 2 tiles; mask values other than 0 and 1 are ignored. Split by rows like ``geotiff``, or all to
``split``. Scored as training reads it, on a stand-in grid."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from .base import SourceBase, at, fixed_split


class ImageMaskSource(SourceBase):
    kind: Literal["image_mask"]
    image: str
    mask: str
    native_gsd_m: float = Field(gt=0)
    split: Literal["train", "val"] = "train"
    val_fraction: float = Field(0.0, ge=0, lt=1)
    gap_px: int = Field(64, ge=0)

    def load(self, config, root: Path):
        from ..datasets import image_mask_source

        return image_mask_source(at(root, self.image), at(root, self.mask), config.gsd_m, self.native_gsd_m,
                                 split=self.split, val_fraction=self.val_fraction, gap_px=self.gap_px)

    def splits(self) -> frozenset[str]:
        return fixed_split(self.split, self.val_fraction)
