"""Pipeline job files: a YAML file validated with pydantic, errors naming the field path.

A job says which catalog to read, how to segment, where results go, on which cluster, how often to retry, and
when it is meant to run (``schedule``, a cron expression the example schedulers in ``pipelines/`` use)::

    name: demo-buildings
    catalog: ../catalogs/demo/catalog.json   # paths are relative to the job file
    asset: null                              # asset key; null: role "data", else the first GeoTIFF
    backend: auto                            # any `geoseg run --backend`; model, tau, score_threshold, tta, precision likewise
    adapt: false                             # true: adapt the model to the scenes of each run first (no labels)
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
import re
from pathlib import Path
from typing import Annotated, Literal, Union

from pydantic import AfterValidator, Field, field_validator

from .errors import GeosegError
from .options import DEFAULTS, RunOptions
from .write import VECTOR_FORMATS
from .yamlfile import Strict, load_yaml


class Tiling(Strict):
    tile_px: int = Field(DEFAULTS.tile_px, ge=64)
    overlap_px: int = Field(DEFAULTS.overlap_px, ge=0)
    batch_tiles: int = Field(DEFAULTS.batch_tiles, ge=1)


class Output(Strict):
    folder: str
    formats: list[str] = Field(default_factory=lambda: list(DEFAULTS.formats))
    min_area_m2: float = Field(DEFAULTS.min_area_m2, ge=0, allow_inf_nan=False)
    simplify_m: float = Field(DEFAULTS.simplify_m, ge=0, allow_inf_nan=False)
    regularise: bool = DEFAULTS.regularise
    min_rectangularity: float = Field(DEFAULTS.min_rectangularity, ge=0, le=1, allow_inf_nan=False)

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


def _one_line(text: str) -> str:
    """A job-file text that goes into a batch script as part of one line: a newline or other control character
    would end the ``#SBATCH`` line and run the rest as a shell command on the compute node."""
    if re.search(r"[\x00-\x1f\x7f]", text):
        raise ValueError("no newline or other control character (it would become a shell line of the batch script)")
    return text


def _size(text: str) -> str:
    if not re.fullmatch(r"\s*\d+(\.\d+)?\s*([kKMGTP]i?)?[bB]?\s*", text):
        raise ValueError("a memory size such as 16GB, 4000MB or 2GiB")
    return text


def _walltime(text: str) -> str:
    if not re.fullmatch(r"(\d+-)?\d+(:\d{1,2}){0,2}", text):
        raise ValueError("a time limit such as 02:00:00, 1-12:00:00 or 90 (minutes)")
    return text


OneLine = Annotated[str, AfterValidator(_one_line)]


class QueueCluster(Strict):
    """A Dask cluster of batch jobs through dask-jobqueue: each job is one worker process per core."""

    kind: Literal["slurm", "pbs"]
    jobs: int = Field(1, ge=1)
    cores: int = Field(4, ge=1)
    memory: Annotated[str, AfterValidator(_size)] = "16GB"
    queue: OneLine | None = None
    account: OneLine | None = None
    walltime: Annotated[str, AfterValidator(_walltime)] = "02:00:00"
    job_extra_directives: list[OneLine] = Field(default_factory=list)
    #: network interface the scheduler and workers listen on (e.g. ib0 for InfiniBand; lo: one machine only)
    interface: str | None = Field(None, pattern=r"^[A-Za-z0-9_.:-]+$")
    #: seconds to wait, after the queue accepted the jobs, for the first worker to join (then one line, exit 2)
    worker_timeout_s: float = Field(1800.0, gt=0, allow_inf_nan=False)


Cluster = Annotated[Union[LocalCluster, AddressCluster, QueueCluster], Field(discriminator="kind")]


class Job(Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    catalog: str
    asset: str | None = None
    asset_role: str = "data"
    backend: str = DEFAULTS.backend
    model: str | None = None
    tau: float | None = Field(None, gt=0, le=1, allow_inf_nan=False)
    score_threshold: float | None = Field(None, ge=0, le=1, allow_inf_nan=False)
    tta: bool = False  # dense backends: test-time augmentation, 4 passes per tile
    adapt: bool = False  # adapt the model once per run to the scenes it processes (geoseg.adapt), no labels
    adapt_budget_s: float = Field(DEFAULTS.adapt_budget_s, gt=0, allow_inf_nan=False)
    precision: Literal["auto", "bf16", "fp32"] = DEFAULTS.precision
    device: str = DEFAULTS.device
    tiling: Tiling = Field(default_factory=Tiling)
    output: Output
    cluster: Cluster = Field(default_factory=lambda: LocalCluster(kind="local"))
    retries: int = Field(1, ge=0, le=10)
    schedule: str | None = None

    def run_options(self, backend: str | None = None, model: str | None = None,
                    scheduler: str | None = None) -> RunOptions:
        """The run options of this job's scenes (``backend``/``model``: as resolved; ``scheduler``: the job's
        cluster, None for in-process)."""
        return RunOptions(backend=backend or self.backend, model=model or self.model, device=self.device,
                          precision=self.precision, tau=self.tau, score_threshold=self.score_threshold, tta=self.tta,
                          tile_px=self.tiling.tile_px, overlap_px=self.tiling.overlap_px,
                          batch_tiles=self.tiling.batch_tiles, formats=list(self.output.formats),
                          min_area_m2=self.output.min_area_m2, simplify_m=self.output.simplify_m,
                          regularise=self.output.regularise, min_rectangularity=self.output.min_rectangularity,
                          adapt=self.adapt, adapt_budget_s=self.adapt_budget_s,
                          workers=0 if scheduler is None else None, scheduler=scheduler, progress=False)

    @field_validator("schedule")
    @classmethod
    def _cron(cls, schedule: str | None) -> str | None:
        if schedule is not None and len(schedule.split()) != 5:
            raise ValueError("a cron expression has 5 fields: minute hour day-of-month month day-of-week")
        return schedule


#: the job field of each ``geoseg run`` flag that a job file sets, for the errors of ``RunOptions.check``
_JOB_FIELDS = {"--tile": "tiling.tile_px", "--overlap": "tiling.overlap_px", "--batch": "tiling.batch_tiles",
               "--min-area": "output.min_area_m2", "--simplify": "output.simplify_m",
               "--min-rectangularity": "output.min_rectangularity", "--formats:": "output.formats:",
               "--device": "device", "--tau": "tau"}


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
        raise GeosegError(f"{path}: {_JOB_FIELDS.get(flag, flag)} {rest}") from None
    here = path.resolve().parent
    job.catalog = job.catalog if "://" in job.catalog else str((here / job.catalog).resolve())
    job.output.folder = str((here / job.output.folder).resolve())
    if job.model and (os.sep in job.model or job.model.endswith(".safetensors")):
        job.model = str((here / job.model).resolve())
    return job
