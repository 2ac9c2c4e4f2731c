"""FlatGeobuf: one binary file with a packed R-tree, in the scene's CRS, which QGIS and web maps (OpenLayers,
Leaflet through HTTP range requests) read fast. Features are stored in the index's order (a Hilbert curve), not by
``id``: sort by ``id`` for the order of the other formats.

OGR rewrites a FlatGeobuf file on every append (50 appends of 2000 buildings: 20 s, against 3.5 s for a
GeoPackage), so the chunks are spooled to a GeoParquet file beside it and streamed into the FlatGeobuf once, in
record batches, when the writer closes.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # geopandas is imported by the writers, not by whoever lists formats (the CLI)
    import geopandas as gpd
    from pyproj import CRS

from .base import VectorFormat
from .parquet import ParquetWriter


class FlatGeobufWriter:
    def __init__(self, path: Path, crs: CRS):
        self.path, self.crs = path, crs
        self.spool_path = path.with_name(f".{path.name}.spool.parquet")
        self.spool = ParquetWriter(self.spool_path, crs)

    def append(self, frame: gpd.GeoDataFrame) -> None:
        self.spool.append(frame)

    def close(self) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq
        import pyogrio

        self.spool.close()
        spooled = pq.ParquetFile(self.spool_path)
        batches = pa.RecordBatchReader.from_batches(spooled.schema_arrow, spooled.iter_batches())
        pyogrio.write_arrow(batches, self.path, driver="FlatGeobuf", geometry_name="geometry", geometry_type="Polygon",
                            crs=self.crs.to_wkt())
        spooled.close()
        self.spool_path.unlink()


FORMAT = VectorFormat("fgb", "buildings.fgb", "application/vnd.flatgeobuf", FlatGeobufWriter,
                      description="FlatGeobuf")
