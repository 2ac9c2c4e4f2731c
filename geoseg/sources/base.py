"""What a kind of labelled source is to training, calibration and scoring: a pydantic record of a training
config's ``sources:`` entry, with

* :meth:`SourceBase.load`: its :class:`geoseg.datasets.LabelledScene` objects on the training grid;
* :meth:`SourceBase.regions`: the ground a model is scored on end to end (``geoseg run`` + ``geoseg evaluate``),
  as (scene GeoTIFF, reference) pairs written under a folder, for a split ("val", "train" or "all");
* :meth:`SourceBase.place_name`: the place it shows (leave-one-place-out leaves out every source of a place);
* :meth:`SourceBase.only`: the source as a reader of one split needs it (None if it holds none of that split).

By default a source is scored as training reads it, against its label raster (sources without an original
GeoTIFF to cut); kinds with better ground to score on override :meth:`regions`.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from ..yamlfile import Strict

if TYPE_CHECKING:
    from ..config import TrainConfig
    from ..datasets import LabelledScene


class SourceBase(Strict):
    #: the place the source shows (leave-one-place-out studies leave out every source of a place); default: the
    #: folder under buildings/, landcover/ or negatives/ its first path names
    place: str | None = None

    def place_name(self) -> str:
        """Its ``place``, else the folder after buildings/, landcover/ or negatives/ in its first path."""
        if self.place:
            return self.place
        first = next(v for k, v in self.model_dump().items() if isinstance(v, str) and k not in ("kind", "split"))
        parts = Path(first).parts
        return parts[1] if len(parts) > 1 and parts[0] in ("buildings", "landcover", "negatives") else parts[0]

    def load(self, config: TrainConfig, root: Path) -> list[LabelledScene]:
        raise NotImplementedError(f"source kind {getattr(self, 'kind', '?')} has no loader")

    def splits(self) -> frozenset[str]:
        """The splits its scenes can be in; default: both ("train", "val")."""
        return BOTH_SPLITS

    def only(self, split: str) -> SourceBase | None:
        """What a reader of ``split`` alone must load of this source: None if it holds none of that split, else the
        source itself, or a copy that reads less (:class:`geoseg.sources.dubai.DubaiSource`: its validation tiles).
        Its scenes of other splits may still come with it: the reader filters."""
        return self if split in self.splits() else None

    def regions(self, config: TrainConfig, root: Path, out: Path, split: str) -> list[tuple[Path, Path]]:
        """The scenes as training reads them (0.3 m, stretched, on a stand-in grid where they have none), against
        their label raster: the validation ones for ``split="val"``, all of them for ``"all"``."""
        if split not in ("val", "all"):
            return []
        from ..evaluate import write_labelled_region

        return [write_labelled_region(scene, out / "regions", config.gsd_m)
                for scene in self.load(config, root) if split == "all" or scene.split == "val"]


#: what a source whose split is not fixed can hold
BOTH_SPLITS = frozenset({"train", "val"})


def fixed_split(split: str | None, val_fraction: float = 0.0) -> frozenset[str]:
    """The splits of a source that sends all its scenes to ``split`` (None: split by rows), unless it splits its
    rows by ``val_fraction`` (> 0)."""
    return BOTH_SPLITS if split is None or val_fraction > 0 else frozenset({split})


def at(root: Path, path: str | None) -> str | None:
    """A config path (relative to the data root) as an absolute one; None stays None."""
    return str(root / path) if path else None
