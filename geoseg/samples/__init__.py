"""Real imagery shipped with geoseg for the demo (``geoseg demo``): small, freely licensed, and from ground that
none of the shipped models was trained or validated on. See ``SOURCE.md`` beside this file."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

#: the demo scene and what to say about it
DEMO_SCENE = "nacala.tif"
DEMO_DESCRIPTION = ("Nacala, Mozambique: 124 m x 99 m of an informal settlement, metal-sheet and thatch roofs, "
                    "drone imagery at 0.15 m (EPSG:32737)")
DEMO_ATTRIBUTION = "imagery: mosquito-risk/Nacala project, CC0 1.0 (github.com/mosquito-risk/Nacala)"


def sample_path(name: str = DEMO_SCENE) -> Path:
    """Path of a shipped sample file."""
    return Path(str(resources.files(__name__).joinpath(name)))
