"""Pipeline job files: a YAML file validated with pydantic, errors naming the field path.

A job says which catalog to read, how to segment, where results go, on which cluster, how often to retry, and
when it is meant to run (``schedule``, a cron expression the example schedulers in ``pipelines/`` use)::

    name: demo-buildings
    catalog: ../catalogs/demo/catalog.json   # paths are relative to the job file
    asset: null                              # asset key; null: role "data", else the first GeoTIFF
    backend: auto                            # any `geoseg run --backend`; model, tau, score_threshold, tta, gate, cascade, precision likewise
    adapt: false                             # true: adapt the model to the scenes of each run first (no labels)
    tiling: {tile_px: 512, overlap_px: 64, batch_tiles: 4, chunk_px: 2048}
    reading: {bands: [1, 2, 3], assume_crs: null, target_gsd_m: null, native_resolution: false}
    output: {folder: ../pipeline-output/demo-buildings, formats: [geojson, gpkg, parquet], min_area_m2: 4}
    cluster: {kind: local, workers: 2}       # workers 0: in-process; or {kind: address, address: tcp://host:8786}
                                             # or {kind: slurm|pbs, jobs: 4, cores: 8, memory: 32GB, ...}
    retries: 2                               # more tries for a scene that failed for a reason other than its input
    schedule: "0 2 * * *"

Command-line overrides (``--catalog``, ``--out``, ``--workers``, ``--address``) replace the file's fields.

Every ``geoseg run`` option but the cluster's is a job field: the top-level ones and the sections ``tiling``,
``reading`` and ``output`` are built from :class:`geoseg.options.RunOptions` (where each option says its section),
and a job is checked by the same :meth:`RunOptions.check` as the command line, errors naming the job field.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, get_type_hints

from pydantic import Field, create_model, field_validator

from .cluster import ClusterSpec, LocalSpec
from .errors import GeosegError
from .formats import check_formats
from .options import DEFAULTS, RunOptions, job_field_path, run_fields
from .yamlfile import Strict, load_yaml


def _options_in(section: str) -> dict[str, tuple[Any, Any]]:
    """The :class:`RunOptions` fields a job file sets in ``section`` ("": top level), as pydantic field
    definitions with RunOptions' types and defaults; their values are checked by :meth:`RunOptions.check`."""
    hints = get_type_hints(RunOptions)
    out = {}
    for f in run_fields():
        if f.metadata["job"] == section:
            default = getattr(DEFAULTS, f.name)
            spec = Field(default_factory=lambda d=default: list(d)) if isinstance(default, list) else Field(default)
            out[f.name] = (hints[f.name], spec)
    return out


#: the job sections made of run options (``output`` adds the folder) and the top-level run options
Tiling = create_model("Tiling", __base__=Strict, **_options_in("tiling"))
Reading = create_model("Reading", __base__=Strict, **_options_in("reading"))
_OutputOptions = create_model("OutputOptions", __base__=Strict, **_options_in("output"))
_TopOptions = create_model("TopOptions", __base__=Strict, **_options_in(""))


class Output(_OutputOptions):
    folder: str

    @field_validator("formats")
    @classmethod
    def _known_formats(cls, formats: list[str]) -> list[str]:
        return check_formats(formats)


class Job(_TopOptions):
    """A job file: what to read, the run options (top level: backend, model, device, precision, tau,
    score_threshold, tta, gate, cascade, adapt, adapt_budget_s; and the sections below), the cluster, retries and schedule."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    catalog: str
    asset: str | None = None
    asset_role: str = "data"
    tiling: Tiling = Field(default_factory=Tiling)
    reading: Reading = Field(default_factory=Reading)
    output: Output
    cluster: ClusterSpec = Field(default_factory=LocalSpec)
    retries: int = Field(1, ge=0, le=10)
    schedule: str | None = None

    def run_options(self, backend: str | None = None, model: str | None = None,
                    scheduler: str | None = None) -> RunOptions:
        """The run options of this job's scenes (``backend``/``model``: as resolved; ``scheduler``: the job's
        cluster, None for in-process)."""
        values = {name: getattr(self, name) for name in _TopOptions.model_fields}
        for section in (self.tiling, self.reading, self.output):
            values |= section.model_dump(exclude={"folder"})
        values |= {"backend": backend or self.backend, "model": model or self.model}
        return RunOptions(**values, workers=0 if scheduler is None else None, scheduler=scheduler, progress=False)

    @field_validator("schedule")
    @classmethod
    def _cron(cls, schedule: str | None) -> str | None:
        if schedule is not None and len(schedule.split()) != 5:
            raise ValueError("a cron expression has 5 fields: minute hour day-of-month month day-of-week")
        return schedule


def load_job(path: str | os.PathLike, catalog: str | None = None, out: str | None = None,
             workers: int | None = None, address: str | None = None) -> Job:
    """Parse and validate a job file; relative paths are made absolute against the file; overrides applied."""
    path = Path(path)

    def apply_overrides(raw: dict) -> None:
        if catalog:
            raw["catalog"] = str(Path(catalog).resolve())
        if out:
            raw.setdefault("output", {})["folder"] = str(Path(out).resolve())
        if address:
            raw["cluster"] = {"kind": "address", "address": address}
        elif workers is not None:
            raw["cluster"] = {"kind": "local", "workers": workers}

    job = load_yaml(path, Job, "job", apply_overrides)
    try:  # the checks of `geoseg run`, so that a job no scene could run with is refused whole, before any work
        job.run_options().check()
    except GeosegError as err:
        flag, _, rest = str(err).partition(" ")
        where = job_field_path(flag.rstrip(":")) or flag.rstrip(":")
        raise GeosegError(f"{path}: {where}{':' if flag.endswith(':') else ''} {rest}") from None
    here = path.resolve().parent
    job.catalog = job.catalog if "://" in job.catalog else str((here / job.catalog).resolve())
    job.output.folder = str((here / job.output.folder).resolve())
    if job.model and (os.sep in job.model or job.model.endswith(".safetensors")):
        job.model = str((here / job.model).resolve())
    return job
