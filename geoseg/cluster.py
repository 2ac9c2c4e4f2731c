"""Getting a Dask cluster, apart from the code that uses it: a LocalCluster started the way geoseg's workers
need it, an existing scheduler, a batch queue (dask-jobqueue), or none (in-process), and the memory probes a
run reports. ``geoseg run`` (:mod:`geoseg.cli`, :mod:`geoseg.pipeline`) and ``geoseg pipeline run``
(:mod:`geoseg.batch`) take their clients from here.
"""

from __future__ import annotations

import os
import resource
import shlex
import shutil
import uuid
from contextlib import contextmanager
from typing import TYPE_CHECKING, Iterator

import dask

from .boundary import run_task
from .errors import GeosegError

if TYPE_CHECKING:
    from .job import AddressCluster, LocalCluster, QueueCluster


def peak_rss_mb() -> float:
    """This process's peak resident memory, MiB. VmHWM, not ru_maxrss: Linux carries ru_maxrss across
    fork+exec, so a worker would report its parent's peak as its own."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux, the fallback elsewhere


#: Dask settings for geoseg's workers: the statistical profiler (a stack sample every 10 ms) and a system monitor
#: every 0.5 s cost each idle worker of a LocalCluster 2.6 % of a core, 1.6 % without them (30 s idle probe,
#: getrusage in each worker), all taken from the model on a machine whose cores the workers fill
WORKER_CONFIG = {"distributed.worker.profile.enabled": False, "distributed.admin.system-monitor.interval": "2s"}


@contextmanager
def _worker_environment() -> Iterator[None]:
    """Start worker processes with :data:`WORKER_CONFIG` and without MALLOC_TRIM_THRESHOLD_. Dask sets that to
    65536 (in its config, and in the environment of the process that starts a Nanny, from where later clusters
    inherit it); any value switches
    off glibc's adaptive mmap threshold, so every tensor above 128 KiB is mmap-ed and page-faulted afresh:
    Fast-SCNN ran 2.1x slower per tile (21 -> 44 ms). Workers started by ``dask worker`` need the same (README)."""
    saved = os.environ.pop("MALLOC_TRIM_THRESHOLD_", None)
    try:
        with dask.config.set({"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None, **WORKER_CONFIG}):
            yield
    finally:
        if saved is not None:
            os.environ["MALLOC_TRIM_THRESHOLD_"] = saved


def _limit_torch_threads() -> None:
    import torch

    torch.set_num_threads(1)


@contextmanager
def dask_client(workers: int | None, scheduler: str | None) -> Iterator[object | None]:
    """A distributed Client (existing scheduler, or a new LocalCluster), or None for in-process runs."""
    if scheduler is None and workers == 0:
        yield None
        return
    from distributed import Client, LocalCluster

    if scheduler:
        try:
            client = Client(scheduler, timeout="10s")
        except (OSError, ValueError, TypeError) as err:  # unreachable, or not an address ("missing port number")
            raise GeosegError(f"--scheduler {scheduler}: cannot connect ({str(err).splitlines()[0][:200]})") from None
        with client:
            yield client
        return
    n = workers or os.cpu_count() or 1
    # dashboard ":0": any free port for the scheduler's HTTP server (None still binds 8787, and warns on stderr
    # when another cluster holds it)
    with _worker_environment(), \
            LocalCluster(n_workers=n, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster, \
            Client(cluster) as client:
        client.run(_limit_torch_threads)
        yield client


@contextmanager
def job_client(cluster: LocalCluster | AddressCluster | QueueCluster) -> Iterator[object | None]:
    """A distributed Client for the job's cluster, open for the whole job (None: in-process, ``workers: 0``)."""
    if cluster.kind == "local":
        with dask_client(cluster.workers, None) as client:
            yield client
    elif cluster.kind == "address":
        with dask_client(None, cluster.address) as client:
            yield client
    else:
        from distributed import Client

        _check_submit_command(cluster)
        with queue_cluster(cluster) as queue:
            submit_jobs(queue, cluster)
            with Client(queue) as client:
                try:
                    client.wait_for_workers(1, timeout=cluster.worker_timeout_s)
                except TimeoutError:
                    raise GeosegError(f"cluster kind {cluster.kind}: no worker joined within {cluster.worker_timeout_s:g} s "
                                      "of submitting its jobs (still queued, or failed at start: see the queue's "
                                      "job logs); raise cluster.worker_timeout_s for a busy queue") from None
                yield client


def _check_submit_command(cluster: QueueCluster) -> None:
    """The queue's submit command (``sbatch``, ``qsub``) is here, before a scheduler is started for nothing."""
    submit = shlex.split(_queue_class(cluster.kind).job_cls.submit_command)[0]
    if shutil.which(submit) is None:
        raise GeosegError(f"cluster kind {cluster.kind}: {submit!r} is not on this machine's PATH; run the job where "
                          f"{submit} works (the cluster's login node), or use cluster kind local or address")


def submit_jobs(queue, cluster: QueueCluster) -> None:
    """Submit the job's worker jobs and wait for the queue's answer (``sbatch``/``qsub`` exit), so that a refused
    submission (no such partition, account or QOS; a full queue) is one line now instead of a run that waits for
    workers forever. Workers themselves join later, once the queue starts the jobs."""
    from distributed.core import Status

    while len(queue.worker_spec) < cluster.jobs:  # what scale() does, but awaited here instead of in the background
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
        raise GeosegError(f"cluster kind {cluster.kind}: submitting the worker jobs failed ({failure})")
    if refused:
        raise GeosegError(f"cluster kind {cluster.kind}: {len(refused)} of {cluster.jobs} worker jobs were not accepted "
                          "by the queue (see the log above)")


def queue_cluster(cluster: QueueCluster):
    """The dask-jobqueue cluster object (not yet scaled: ``job_script()`` shows what it would submit)."""
    cls = _queue_class(cluster.kind)
    extra = {"account": cluster.account} if cluster.account else {}
    if cluster.interface:
        extra["interface"] = cluster.interface
    return cls(cores=cluster.cores, processes=cluster.cores, memory=cluster.memory, queue=cluster.queue,
               walltime=cluster.walltime, job_extra_directives=cluster.job_extra_directives,
               job_script_prologue=["export OMP_NUM_THREADS=1"] + [
                   f"export DASK_{key.upper().replace('.', '__').replace('-', '_')}={value}"
                   for key, value in WORKER_CONFIG.items()], **extra)


def _queue_class(kind: str):
    try:
        import dask_jobqueue
    except ImportError:
        raise GeosegError(f"cluster kind {kind} needs dask-jobqueue: pip install 'geoseg[hpc]'") from None
    return dask_jobqueue.SLURMCluster if kind == "slurm" else dask_jobqueue.PBSCluster


class InProcess:
    """The in-process stand-in for a distributed Client (``--workers 0``): ``submit`` runs the function at once
    (through :func:`geoseg.boundary.run_task`, as on workers, so a failure has the same type either way)
    (futures given as arguments, also inside lists, are replaced by their values) and ``next_done`` hands the
    finished calls back in order. An exception is kept and raised by ``result()``, as a Dask future does."""

    def __init__(self):
        from collections import deque

        self.done = deque()
        self.task_s = 0.0  # wall seconds spent running tasks (the caller's own time is the rest)

    def submit(self, fn, *args, **_):
        def value(a):
            if isinstance(a, Finished):
                return a.result()
            return [value(x) for x in a] if isinstance(a, list) else a

        import time

        started = time.perf_counter()
        try:
            future = Finished(run_task(fn, *[value(a) for a in args]), None)
        except Exception as err:  # noqa: BLE001 - handed back to the caller through result(), as Dask does
            future = Finished(None, err)
        self.task_s += time.perf_counter() - started
        self.done.append(future)
        return future

    def next_done(self):
        return self.done.popleft()

    def cancel(self, futures) -> None:
        gone = {id(f) for f in futures}
        self.done = type(self.done)(f for f in self.done if id(f) not in gone)

    def workers(self) -> int:
        return 1


class Finished:
    def __init__(self, value, error: BaseException | None):
        self.value, self.error = value, error

    def result(self):
        if self.error is not None:
            raise self.error
        return self.value


class OnCluster:
    """Submitting to a distributed Client, with one completion queue for every future of a run."""

    def __init__(self, client):
        from distributed import as_completed

        self.client = client
        self.queue = as_completed()
        self.task_s = 0.0  # tasks run on the workers, never here
        self._workers, self._asked = 1, float("-inf")

    def submit(self, fn, *args, priority: int = 0):
        future = self.client.submit(run_task, fn, *args, pure=False, priority=priority,
                                    key=f"{getattr(fn, '__name__', 'task')}-{uuid.uuid4().hex}")
        self.queue.add(future)
        return future

    def next_done(self):
        return next(self.queue)

    def cancel(self, futures) -> None:
        self.client.cancel(list(futures))

    def workers(self) -> int:
        """Workers connected (at least 1: a batch queue's arrive later), asked of the scheduler at most every 2 s."""
        import time

        if time.monotonic() - self._asked > 2.0:
            self._workers = max(1, len(self.client.scheduler_info().get("workers", {})))
            self._asked = time.monotonic()
        return self._workers


def runner_for(client) -> InProcess | OnCluster:
    return InProcess() if client is None else OnCluster(client)
