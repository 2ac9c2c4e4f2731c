"""Workers on this machine: a ``LocalCluster`` of worker processes started the way geoseg's workers need them
(one torch thread each, :data:`WORKER_CONFIG`, no ``MALLOC_TRIM_THRESHOLD_``); ``workers: 0`` is no cluster at
all (tasks run in-process, :mod:`geoseg.cluster.runners`)."""

from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Iterator, Literal

import dask
from pydantic import Field

from ..yamlfile import Strict

#: Dask settings for geoseg's workers: the statistical profiler (a stack sample every 10 ms) and a system monitor
#: every 0.5 s cost each idle worker of a LocalCluster 2.6 % of a core, 1.6 % without them (30 s idle probe,
#: getrusage in each worker), all taken from the model on a machine whose cores the workers fill
WORKER_CONFIG = {"distributed.worker.profile.enabled": False, "distributed.admin.system-monitor.interval": "2s"}


class LocalSpec(Strict):
    """``cluster: {kind: local, workers: N}``, ``geoseg run --workers N``: N worker processes (None: one per CPU
    core; 0: in-process, no cluster)."""

    kind: Literal["local"] = "local"
    workers: int | None = Field(None, ge=0)

    @contextmanager
    def client(self) -> Iterator[object | None]:
        if self.workers == 0:
            yield None
            return
        from distributed import Client, LocalCluster

        from .quick_exit import ExitAtClose, quiet_batched_close

        n = self.workers or os.cpu_count() or 1
        # dashboard ":0": any free port for the scheduler's HTTP server (None still binds 8787, and warns on stderr
        # when another cluster holds it)
        with worker_environment(), quiet_batched_close(), \
                LocalCluster(n_workers=n, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster, \
                Client(cluster) as client:
            client.run(_limit_torch_threads)
            client.register_plugin(ExitAtClose())
            yield client


@contextmanager
def worker_environment() -> Iterator[None]:
    """Start worker processes with :data:`WORKER_CONFIG` and without MALLOC_TRIM_THRESHOLD_. Dask sets that to
    65536 (in its config, and in the environment of the process that starts a Nanny, from where later clusters
    inherit it); any value switches off glibc's adaptive mmap threshold, so every tensor above 128 KiB is mmap-ed
    and page-faulted afresh: Fast-SCNN ran 2.1x slower per tile (21 -> 44 ms). Workers started by ``dask worker``
    need the same (README)."""
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
