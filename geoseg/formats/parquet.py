"""GeoParquet: a columnar file in the scene's CRS (pandas, DuckDB, BigQuery), one row group per chunk. The geo
metadata is the first chunk's with its bbox removed (the file's would need every chunk) and the geometry type
declared as Polygon."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # geopandas is imported by the writers, not by whoever lists formats (the CLI)
    import geopandas as gpd
    from pyproj import CRS

from .base import VectorFormat, empty_buildings


class ParquetWriter:
    def __init__(self, path: Path, crs: CRS):
        self.path, self.crs = path, crs
        self.writer = None

    def append(self, frame: gpd.GeoDataFrame) -> None:
        import pyarrow.parquet as pq
        from geopandas.io.arrow import _geopandas_to_arrow

        table = _geopandas_to_arrow(frame, index=False)
        if self.writer is None:
            geo = json.loads(table.schema.metadata[b"geo"])
            for column in geo["columns"].values():
                column.pop("bbox", None)  # the first chunk's; the file's would need all of them
                column["geometry_types"] = ["Polygon"]
            schema = table.schema.with_metadata({**table.schema.metadata, b"geo": json.dumps(geo).encode()})
            self.writer = pq.ParquetWriter(self.path, schema)
        self.writer.write_table(table.replace_schema_metadata(self.writer.schema.metadata))

    def close(self) -> None:
        if self.writer is None:
            self.append(empty_buildings(self.crs))
        self.writer.close()


FORMAT = VectorFormat("parquet", "buildings.parquet", "application/vnd.apache.parquet", ParquetWriter,
                      description="GeoParquet")
