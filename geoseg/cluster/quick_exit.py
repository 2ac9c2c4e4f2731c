"""Worker processes of geoseg's own LocalCluster leave at once when it closes them (:class:`ExitAtClose`); kept
apart from :mod:`.local` so that importing that module does not import ``distributed``."""

from __future__ import annotations

import logging
import os
import sys
from contextlib import contextmanager
from typing import Iterator

from distributed.core import Status
from distributed.diagnostics.plugin import WorkerPlugin


class ExitAtClose(WorkerPlugin):
    """When the cluster closes a worker, the process leaves at once (``os._exit``) instead of finalising an
    interpreter that holds torch: ``LocalCluster.close`` waits for its workers, 1.3-1.5 s of every run's wall on
    a 2-core machine, 0.1 s with this (``benchmarks/bench_timeline.py``'s "close"). Their atexit handlers do not
    run. By then every task has finished and every output is complete and renamed into place (the driver
    gathered all results before closing its client), and the processes are geoseg's own: clusters reached by address (``--scheduler``, SLURM, job files with an
    address) never get this plugin. Only a worker that is closing leaves (not one whose plugin is merely
    removed); Dask purges the empty lock files of its work directory when the next cluster starts."""

    name = "geoseg-exit-at-close"

    def teardown(self, worker) -> None:
        if worker.status == Status.closing:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(0)


@contextmanager
def quiet_batched_close() -> Iterator[None]:
    """While geoseg's own cluster runs and closes: the scheduler's note that a batched stream to a worker closed
    under it (an INFO line with a ``CommClosedError`` traceback, on stderr) is not shown. Workers that leave by
    :class:`ExitAtClose` close those streams before the scheduler has stopped writing to them, often enough that
    successful runs printed a traceback (2 of 8 closes in a scratch loop of two-worker clusters, 0 of 12 with
    this). A lost worker
    still shows (``distributed.scheduler`` and ``distributed.core`` keep their levels)."""
    logger = logging.getLogger("distributed.batched")
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(level)
