"""Workers from a batch queue (``cluster: {kind: slurm|pbs, ...}``) through dask-jobqueue: each queue job is one
worker process per core. The job file's fields go into a batch script, so every text that lands on one of its
lines is refused if it holds a newline or another control character (it would run as a shell line on the compute
node). The submissions are awaited: a refused one (no such partition, account or QOS) is one line, exit 2, and a
wait for workers that never join ends after ``worker_timeout_s``."""

from __future__ import annotations

import re
import shlex
import shutil
from contextlib import contextmanager
from typing import Annotated, Iterator, Literal

from pydantic import AfterValidator, Field

from ..errors import GeosegError
from ..yamlfile import Strict
from .local import WORKER_CONFIG


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


class QueueSpec(Strict):
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

    @contextmanager
    def client(self) -> Iterator[object]:
        from distributed import Client

        _check_submit_command(self)
        with queue_cluster(self) as queue:
            submit_jobs(queue, self)
            with Client(queue) as client:
                try:
                    client.wait_for_workers(1, timeout=self.worker_timeout_s)
                except TimeoutError:
                    raise GeosegError(f"cluster kind {self.kind}: no worker joined within {self.worker_timeout_s:g} s "
                                      "of submitting its jobs (still queued, or failed at start: see the queue's "
                                      "job logs); raise cluster.worker_timeout_s for a busy queue") from None
                yield client


def _check_submit_command(spec: QueueSpec) -> None:
    """The queue's submit command (``sbatch``, ``qsub``) is here, before a scheduler is started for nothing."""
    submit = shlex.split(_queue_class(spec.kind).job_cls.submit_command)[0]
    if shutil.which(submit) is None:
        raise GeosegError(f"cluster kind {spec.kind}: {submit!r} is not on this machine's PATH; run the job where "
                          f"{submit} works (the cluster's login node), or use cluster kind local or address")


def submit_jobs(queue, spec: QueueSpec) -> None:
    """Submit the job's worker jobs and wait for the queue's answer (``sbatch``/``qsub`` exit), so that a refused
    submission (no such partition, account or QOS; a full queue) is one line now instead of a run that waits for
    workers forever. Workers themselves join later, once the queue starts the jobs."""
    from distributed.core import Status

    while len(queue.worker_spec) < spec.jobs:  # what scale() does, but awaited here instead of in the background
        queue.worker_spec.update(queue.new_worker_spec())
    try:
        queue.sync(queue._correct_state)  # submits each job; raises what sbatch/qsub said
        failure = None
    except Exception as err:  # noqa: BLE001 - RuntimeError from dask-jobqueue, OSError from the shell
        failure = str(err).strip().splitlines()[-1][:200] if str(err).strip() else type(err).__name__
    refused = [job for job in queue.workers.values() if getattr(job, "job_id", None) is None]
    for job in refused:
        job.status = Status.failed  # never submitted: closing the cluster must not wait for it to stop
    if failure is not None:
        raise GeosegError(f"cluster kind {spec.kind}: submitting the worker jobs failed ({failure})")
    if refused:
        raise GeosegError(f"cluster kind {spec.kind}: {len(refused)} of {spec.jobs} worker jobs were not accepted "
                          "by the queue (see the log above)")


def queue_cluster(spec: QueueSpec):
    """The dask-jobqueue cluster object (not yet scaled: ``job_script()`` shows what it would submit)."""
    cls = _queue_class(spec.kind)
    extra = {"account": spec.account} if spec.account else {}
    if spec.interface:
        extra["interface"] = spec.interface
    return cls(cores=spec.cores, processes=spec.cores, memory=spec.memory, queue=spec.queue,
               walltime=spec.walltime, job_extra_directives=spec.job_extra_directives,
               job_script_prologue=["export OMP_NUM_THREADS=1"] + [
                   f"export DASK_{key.upper().replace('.', '__').replace('-', '_')}={value}"
                   for key, value in WORKER_CONFIG.items()], **extra)


def _queue_class(kind: str):
    try:
        import dask_jobqueue
    except ImportError:
        raise GeosegError(f"cluster kind {kind} needs dask-jobqueue: pip install 'geoseg[hpc]'") from None
    return dask_jobqueue.SLURMCluster if kind == "slurm" else dask_jobqueue.PBSCluster
