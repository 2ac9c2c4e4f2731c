"""Getting workers, apart from the code that uses them, laid out as ``distributed.deploy`` is: one spec per way
of getting them, each a small pydantic record with a ``client()`` context manager (a ``distributed`` Client, or
None for in-process), built alike by the command line (:func:`spec_from_flags`) and by job files (their
``cluster:`` field is a :data:`ClusterSpec`):

* :mod:`.local` — worker processes on this machine (``--workers N``; ``workers: 0``: in-process, no cluster);
  :mod:`.quick_exit` lets them leave without finalising torch when that cluster closes;
* :mod:`.address` — an existing scheduler (``--scheduler tcp://host:8786``);
* :mod:`.queue` — batch jobs through dask-jobqueue (SLURM, PBS), job files only;
* :mod:`.runners` — how the driver submits tasks to whichever of these it got (or runs them in-process).

The memory probes a run reports are :mod:`geoseg.probes`.
"""

from __future__ import annotations

from typing import Annotated, Union

from pydantic import Field, ValidationError

from ..errors import GeosegError
from .address import AddressSpec
from .local import WORKER_CONFIG, LocalSpec
from .queue import QueueSpec, queue_cluster
from .runners import runner_for

#: a job file's ``cluster:``: which way of getting workers, by its ``kind``
ClusterSpec = Annotated[Union[LocalSpec, AddressSpec, QueueSpec], Field(discriminator="kind")]

__all__ = ["ClusterSpec", "LocalSpec", "AddressSpec", "QueueSpec", "WORKER_CONFIG", "dask_client",
           "queue_cluster", "runner_for", "spec_from_flags"]


def spec_from_flags(workers: int | None, scheduler: str | None) -> LocalSpec | AddressSpec:
    """The spec of ``geoseg run --workers N --scheduler ADDRESS`` (a scheduler wins)."""
    if scheduler is not None:
        try:
            return AddressSpec(address=scheduler)
        except ValidationError:
            raise GeosegError(f"--scheduler {scheduler}: not a scheduler address; give one such as "
                              "tcp://10.0.0.5:8786") from None
    return LocalSpec(workers=workers)


def dask_client(workers: int | None, scheduler: str | None):
    """The client of these command-line flags' spec (``spec.client()``: a context manager giving a distributed
    Client, or None for in-process); a job runs on ``job.cluster.client()``."""
    return spec_from_flags(workers, scheduler).client()
