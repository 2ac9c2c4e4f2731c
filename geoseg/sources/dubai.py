"""``dubai``: the Dubai land-cover tiles (JPEG + colour-coded PNG, not georeferenced) at an assumed GSD; the tiles
in ``val_tiles`` are validation. ``buildings_only``: Building -> building, every other labelled class ->
background (desert, road, water and vegetation as negatives), Unlabeled -> ignored. Scored as training reads it."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, PrivateAttr

from .base import SourceBase, at


class DubaiSource(SourceBase):
    kind: Literal["dubai"]
    root: str
    assumed_gsd_m: float = Field(gt=0)
    val_tiles: list[str] = []
    buildings_only: bool = False  # Building -> building, other labelled classes -> background
    _tiles: list[str] | None = PrivateAttr(None)  # read only these tile folders (None: all); set by only()

    def load(self, config, root: Path):
        from ..datasets import dubai_source

        return dubai_source(at(root, self.root), config.gsd_m, self.assumed_gsd_m, self.val_tiles, self.buildings_only,
                            tiles=self._tiles)

    def only(self, split: str) -> DubaiSource | None:
        """For "val", a copy that reads the validation tiles alone (none: None); for "train", all of it."""
        if split != "val":
            return self
        if not self.val_tiles:
            return None
        reader = self.model_copy()
        reader._tiles = list(self.val_tiles)
        return reader
