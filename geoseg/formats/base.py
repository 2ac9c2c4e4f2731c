"""What a vector output format is to geoseg: a :class:`VectorFormat` record (its ``--formats`` key, file name,
sidecars, media type, CRS rule) and a writer that takes a scene's buildings chunk by chunk
(:class:`VectorWriter`: ``append`` a GeoDataFrame in the scene's CRS, then ``close``), so that finishing a scene
holds one chunk's polygons at a time. :class:`OgrWriter` serves every format OGR can append to.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Protocol

if TYPE_CHECKING:  # geopandas is imported by the writers, not by whoever lists formats (the CLI)
    import geopandas as gpd
    from pyproj import CRS


class VectorWriter(Protocol):
    def append(self, frame: gpd.GeoDataFrame) -> None:
        """Write these buildings after those already written (``frame`` in the scene's CRS, ``id`` first)."""

    def close(self) -> None:
        """Finish the file; called once, also when nothing was appended (the file then holds an empty layer)."""


@dataclass(frozen=True)
class VectorFormat:
    """A vector output format: ``key`` as ``--formats`` and job files name it, the ``file_name`` in a scene's output
    folder, the ``sidecars`` (suffixes) written beside it, its media type (STAC assets), whether it is in WGS84
    whatever the scene's CRS (``wgs84_only``: a scene in a local site grid cannot be written to it), and
    ``open(path, crs)``, which starts its writer."""

    key: str
    file_name: str
    media_type: str
    open: Callable[[Path, CRS], VectorWriter]
    sidecars: tuple[str, ...] = ()
    wgs84_only: bool = False
    description: str = ""

    def file_names(self) -> list[str]:
        """Every file this format can write, sidecars first and the file readers open last."""
        stem = Path(self.file_name).stem
        return [stem + suffix for suffix in self.sidecars] + [self.file_name]

    def written(self, folder: Path) -> list[str]:
        """The files of this format found in ``folder`` once its writer is closed."""
        return [name for name in self.file_names() if (folder / name).exists()]


class OgrWriter:
    """Appends through OGR (pyogrio): the first ``append`` creates the file, the next ones add to its layer."""

    def __init__(self, path: Path, crs: CRS, driver: str):
        self.path, self.crs, self.driver = path, crs, driver
        self.started = False

    def append(self, frame: gpd.GeoDataFrame) -> None:
        import pyogrio

        pyogrio.write_dataframe(frame, self.path, driver=self.driver, append=self.started, geometry_type="Polygon")
        self.started = True

    def close(self) -> None:
        if not self.started:
            self.append(empty_buildings(self.crs))


def ogr(driver: str) -> Callable[[Path, CRS], VectorWriter]:
    return lambda path, crs: OgrWriter(path, crs, driver)


def empty_buildings(crs: CRS) -> gpd.GeoDataFrame:
    """A layer with no building, with the columns a scene's buildings have (an empty scene still gets valid files)."""
    import geopandas as gpd
    import numpy as np

    return gpd.GeoDataFrame({"id": np.array([], np.int64), "confidence": np.array([], float),
                             "area_m2": np.array([], float)}, geometry=gpd.GeoSeries([], crs=crs))
