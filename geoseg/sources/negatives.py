"""``negatives``: a folder of georeferenced GeoTIFFs with no building in them (forest, savanna, rocks): every imaged
pixel is background. They show the tree crowns, shadows and boulders that become false buildings. They hold no
building to score, so they give no scoring region."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from .base import SourceBase, at


class NegativesSource(SourceBase):
    kind: Literal["negatives"]
    images: str  # a folder of GeoTIFFs without buildings

    def load(self, config, root: Path):
        from ..datasets import negatives_source

        return negatives_source(at(root, self.images), config.gsd_m)

    def splits(self) -> frozenset[str]:
        return frozenset({"train"})  # building-free ground is for training only

    def regions(self, config, root: Path, out: Path, split: str) -> list[tuple[Path, Path]]:
        return []
