"""geoseg: GeoTIFF scenes in, georeferenced building masks and footprints out.

Stages, one module each: read -> tile -> encode/gate/decode (model, backends) -> stitch -> vectorise -> write,
tied together by :mod:`geoseg.pipeline`.
"""

__version__ = "0.1.0"


def run_scene(*args, **kwargs):
    """See :func:`geoseg.pipeline.run_scene` (imported lazily: torch is heavy)."""
    from .pipeline import run_scene as _run_scene

    return _run_scene(*args, **kwargs)
