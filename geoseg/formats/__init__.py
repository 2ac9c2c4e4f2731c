"""Vector output formats, one module each (:mod:`geoseg.formats.base` says what a format is). Everything that
lists formats reads :data:`REGISTRY`: the ``--formats`` and job checks, the scene's vector files, the files a rerun
may remove, the STAC media types, the files ``geoseg evaluate`` looks for. Adding a format is one module here and
one entry below.

``DEFAULT_FORMATS`` are those a run writes when not told: GeoJSON, GeoPackage, Shapefile and GeoParquet
(FlatGeobuf on request, ``--formats fgb``).
"""

from __future__ import annotations

from . import fgb, geojson, gpkg, parquet, shp
from .base import VectorFormat, VectorWriter

#: --formats key -> format, in the order files are written and listed
REGISTRY: dict[str, VectorFormat] = {m.FORMAT.key: m.FORMAT for m in (geojson, gpkg, shp, parquet, fgb)}
DEFAULT_FORMATS = ("geojson", "gpkg", "shp", "parquet")
#: the formats ``geoseg evaluate`` reads from a run folder, in order of preference (the fastest to read first)
EVALUATE_ORDER = ("parquet", "gpkg", "fgb", "geojson", "shp")

__all__ = ["REGISTRY", "DEFAULT_FORMATS", "VectorFormat", "VectorWriter", "check_formats", "output_file_names",
           "media_type",
           "is_sidecar", "wgs84_only"]


def check_formats(keys: list[str]) -> list[str]:
    """``keys`` if every one names a format; else a ValueError naming the unknown ones and the choices."""
    unknown = sorted(set(keys) - set(REGISTRY))
    if unknown:
        raise ValueError(f"unknown {', '.join(unknown)}; choose from {', '.join(REGISTRY)}")
    return keys


def output_file_names() -> list[str]:
    """Every file any format can write in a scene's output folder."""
    return [name for f in REGISTRY.values() for name in f.file_names()]


def media_type(file_name: str) -> str | None:
    """The media type of a format's main file (a sidecar has none of its own)."""
    return next((f.media_type for f in REGISTRY.values() if f.file_name == file_name), None)


def is_sidecar(file_name: str) -> bool:
    """A file a format writes beside its main file (the Shapefile's ``.shx``, ``.dbf``...)."""
    return any(file_name in f.file_names()[:-1] for f in REGISTRY.values())


def wgs84_only(keys: list[str]) -> list[str]:
    return [k for k in keys if REGISTRY[k].wgs84_only]
