"""ESRI Shapefile: ``buildings.shp`` with its ``.shx``, ``.dbf``, ``.prj`` and ``.cpg`` sidecars, in the scene's
CRS; appended chunk by chunk through OGR. The sidecars are published with it (a Shapefile without them is
unreadable)."""

from .base import VectorFormat, ogr

FORMAT = VectorFormat("shp", "buildings.shp", "application/vnd.shp", ogr("ESRI Shapefile"),
                      sidecars=(".shx", ".dbf", ".prj", ".cpg"), description="Shapefile")
