"""GeoJSON (RFC 7946): WGS84 longitude/latitude whatever the scene's CRS, right-hand rings, 7 decimals, cut at the
antimeridian, by OGR's RFC 7946 writer; features are written on chunk after chunk into one FeatureCollection. A
scene in a local site grid, which cannot be placed on the globe, cannot be written to it (``wgs84_only``)."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # geopandas is imported by the writers, not by whoever lists formats (the CLI)
    import geopandas as gpd
    from pyproj import CRS

from .base import VectorFormat


class GeoJsonWriter:
    def __init__(self, path: Path, crs: CRS):
        self.path = path
        self.file = None
        self.first_feature = True

    def _start(self) -> None:
        self.file = open(self.path, "w")
        self.file.write('{\n"type": "FeatureCollection",\n"name": "buildings",\n"features": [\n')

    def append(self, frame: gpd.GeoDataFrame) -> None:
        """OGR writes the chunk as a FeatureCollection in memory; its features, as OGR wrote them, go on into the
        file (no parse and re-serialisation)."""
        import pyogrio

        if self.file is None:
            self._start()
        if not len(frame):
            return
        buffer = io.BytesIO()
        pyogrio.write_dataframe(frame.to_crs("EPSG:4326"), buffer, driver="GeoJSON", layer_options={"RFC7946": "YES"},
                                geometry_type="Polygon")
        self.file.write(("" if self.first_feature else ",\n") + features_text(buffer.getvalue().decode("utf-8")))
        self.first_feature = False

    def close(self) -> None:
        if self.file is None:
            self._start()
        self.file.write("\n]\n}\n")
        self.file.close()


def features_text(collection: str) -> str:
    """The features of a FeatureCollection's text, as written, without the brackets around them: the text between
    the ``[`` after ``"features":`` and the ``]`` that ends the collection (OGR writes ``features`` last). Any other
    layout is parsed and the features serialised again."""
    start = collection.index("[", collection.index('"features":')) + 1
    end = collection.rindex("]")
    if collection[end + 1:].strip() == "}":
        return collection[start:end].strip()
    return ",\n".join(json.dumps(feature) for feature in json.loads(collection)["features"])


FORMAT = VectorFormat("geojson", "buildings.geojson", "application/geo+json", GeoJsonWriter, wgs84_only=True,
                      description="GeoJSON (RFC 7946)")
