"""``xyz``: web-map tiles named by z/x/y (a CSV with ``file,z,x,y``), georeferenced in EPSG:3857 from their
indices, one zoom level; each group of edge-connected tiles becomes one mosaic, labelled by polygons like
``geotiff``. Scored as training reads it."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from .base import SourceBase, at, fixed_split


class XYZSource(SourceBase):
    kind: Literal["xyz"]
    tiles_csv: str
    zoom: int = Field(ge=0, le=24)
    labels: str
    split: Literal["train", "val"] = "train"
    val_fraction: float = Field(0.0, ge=0, lt=1)
    gap_px: int = Field(64, ge=0)

    def load(self, config, root: Path):
        from ..datasets import xyz_source

        return xyz_source(at(root, self.tiles_csv), self.zoom, at(root, self.labels), config.gsd_m, split=self.split,
                          val_fraction=self.val_fraction, gap_px=self.gap_px, separator_class=config.separator_class)

    def splits(self) -> frozenset[str]:
        return fixed_split(self.split, self.val_fraction)
