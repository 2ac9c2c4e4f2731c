"""How the driver (:mod:`geoseg.pipeline`) hands tasks to workers, whatever the cluster: a :class:`Runner` submits
a function with its arguments (futures of earlier tasks among them), hands finished futures back one at a time,
cancels, and says how many workers there are. :class:`OnCluster` submits to a ``distributed`` Client;
:class:`InProcess` runs each task at once in this process (``--workers 0``), by the same code. Every task runs
through :func:`geoseg.boundary.run_task`, so a failure has the same type either way."""

from __future__ import annotations

import uuid
from typing import Protocol

from ..boundary import run_task


class Runner(Protocol):
    task_s: float  # wall seconds spent running tasks in this process (the driver's own time is the rest)

    def submit(self, fn, *args, priority: int = 0): ...

    def next_done(self): ...

    def cancel(self, futures) -> None: ...

    def workers(self) -> int: ...


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


def runner_for(client) -> Runner:
    return InProcess() if client is None else OnCluster(client)
