"""Pipeline job files: a YAML file validated with pydantic, errors naming the field path.

A job says which catalog to read, how to segment, where results go, on which cluster, how often to retry, and
when it is meant to run (``schedule``, a cron expression the example schedulers in ``pipelines/`` use)::

    name: demo-buildings
    catalog: ../catalogs/demo/catalog.json   # paths are relative to the job file
    asset: null                              # asset key; null: role "data", else the first GeoTIFF
    backend: auto                            # any `geoseg run --backend`; model, tau, score_threshold, tta, precision likewise
    tiling: {tile_px: 512, overlap_px: 64, batch_tiles: 4}
    output: {folder: ../pipeline-output/demo-buildings, formats: [geojson, gpkg, parquet]}
    cluster: {kind: local, workers: 2}       # workers 0: in-process; or {kind: address, address: tcp://host:8786}
                                             # or {kind: slurm|pbs, jobs: 4, cores: 8, memory: 32GB, ...}
    retries: 2                               # more tries for a scene that failed for a reason other than its input
    schedule: "0 2 * * *"

Command-line overrides (``--catalog``, ``--out``, ``--workers``, ``--address``) replace the file's fields.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Literal, Union

from pydantic import Field, field_validator

from .options import DEFAULTS
from .write import VECTOR_FORMATS
from .yamlfile import Strict, load_yaml


class Tiling(Strict):
    tile_px: int = Field(DEFAULTS.tile_px, ge=64)
    overlap_px: int = Field(DEFAULTS.overlap_px, ge=0)
    batch_tiles: int = Field(DEFAULTS.batch_tiles, ge=1)


class Output(Strict):
    folder: str
    formats: list[str] = Field(default_factory=lambda: list(DEFAULTS.formats))
    min_area_m2: float = Field(DEFAULTS.min_area_m2, ge=0)
    simplify_m: float = Field(DEFAULTS.simplify_m, ge=0)
    regularise: bool = DEFAULTS.regularise
    min_rectangularity: float = Field(DEFAULTS.min_rectangularity, ge=0, le=1)

    @field_validator("formats")
    @classmethod
    def _known_formats(cls, formats: list[str]) -> list[str]:
        unknown = sorted(set(formats) - set(VECTOR_FORMATS))
        if unknown:
            raise ValueError(f"unknown {', '.join(unknown)}; choose from {', '.join(VECTOR_FORMATS)}")
        return formats


class LocalCluster(Strict):
    kind: Literal["local"]
    workers: int | None = Field(None, ge=0)  # None: one worker process per CPU core; 0: in-process, no cluster


class AddressCluster(Strict):
    kind: Literal["address"]
    address: str = Field(pattern=r"^(tcp|tls|ucx|inproc)://")


class QueueCluster(Strict):
    """A Dask cluster of batch jobs through dask-jobqueue: each job is one worker process per core."""

    kind: Literal["slurm", "pbs"]
    jobs: int = Field(1, ge=1)
    cores: int = Field(4, ge=1)
    memory: str = "16GB"
    queue: str | None = None
    account: str | None = None
    walltime: str = "02:00:00"
    job_extra_directives: list[str] = Field(default_factory=list)
    #: network interface the scheduler and workers listen on (e.g. ib0 for InfiniBand; lo: one machine only)
    interface: str | None = None


Cluster = Annotated[Union[LocalCluster, AddressCluster, QueueCluster], Field(discriminator="kind")]


class Job(Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    catalog: str
    asset: str | None = None
    asset_role: str = "data"
    backend: str = DEFAULTS.backend
    model: str | None = None
    tau: float | None = Field(None, gt=0, le=1)
    score_threshold: float | None = Field(None, ge=0, le=1)
    tta: bool = False  # dense backends: test-time augmentation, 4 passes per tile
    precision: Literal["auto", "bf16", "fp32"] = DEFAULTS.precision
    device: str = DEFAULTS.device
    tiling: Tiling = Field(default_factory=Tiling)
    output: Output
    cluster: Cluster = Field(default_factory=lambda: LocalCluster(kind="local"))
    retries: int = Field(1, ge=0, le=10)
    schedule: str | None = None

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
    here = path.resolve().parent
    job.catalog = job.catalog if "://" in job.catalog else str((here / job.catalog).resolve())
    job.output.folder = str((here / job.output.folder).resolve())
    if job.model and (os.sep in job.model or job.model.endswith(".safetensors")):
        job.model = str((here / job.model).resolve())
    return job
