"""GeoPackage: one SQLite file in the scene's CRS, what QGIS opens best; appended chunk by chunk through OGR."""

from .base import VectorFormat, ogr

FORMAT = VectorFormat("gpkg", "buildings.gpkg", "application/geopackage+sqlite3", ogr("GPKG"),
                      description="GeoPackage")
