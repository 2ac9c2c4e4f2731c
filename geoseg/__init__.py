"""geoseg: GeoTIFF scenes in, georeferenced building masks and footprints out.

Stages, one module each: read -> tile -> encode/gate/decode (model, backends) -> stitch -> vectorise -> write,
tied together by :mod:`geoseg.pipeline`.
"""

import os

__version__ = "0.1.0"

# GDAL's block cache defaults to 5 % of RAM per process and fills up on a full-scene pass (statistics,
# overview, COG conversion), so a driver's memory would grow with the scene up to that cap. 256 MB per
# process is plenty for windowed reads; GDAL reads this once, before its first raster I/O, and Dask worker
# processes inherit it. A GDAL_CACHEMAX set by the user wins.
os.environ.setdefault("GDAL_CACHEMAX", "256")


def run_scene(*args, **kwargs):
    """See :func:`geoseg.pipeline.run_scene` (imported lazily: torch is heavy)."""
    from .pipeline import run_scene as _run_scene

    return _run_scene(*args, **kwargs)
