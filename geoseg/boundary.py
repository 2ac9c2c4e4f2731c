"""What crosses from a task to the driver when the task fails: an error that keeps its type and its one line.

Dask sends a task's exception to the driver pickled with its whole chain (``__cause__`` and ``__context__``,
through tblib). An error raised while another was being handled carries that one along, and many of GDAL's and
OGR's errors cannot be rebuilt on the other side; Dask then sends a bare ``Exception("GeosegError('...')")``, so
a corrupt scene looked like a lost worker (retried) and a full disk like a bug (a traceback). Every task therefore
runs through :func:`run_task`, on workers and in-process alike, which raises a *portable* error instead:

* :class:`~geoseg.errors.GeosegError` (bad input): the same class and message, nothing chained;
* ``OSError`` (a full disk, a folder gone) and GDAL/OGR's own write and read errors (``CPLE_AppDefinedError``,
  pyogrio's ``FeatureError``...): a plain ``OSError`` with errno, the reason (GDAL's appended) and the file;
* anything else: the same error with its chain cut (if it still does not pickle, Dask's fallback applies).

Dask logs every failed task on its worker ("Compute Failed" and a traceback); for the first two kinds the
driver already prints one line, so :class:`QuietExpectedFailures` drops those log records.
"""

from __future__ import annotations

import errno
import logging

from .errors import GeosegError


def _is_io_library_error(err: BaseException) -> bool:
    """An error of GDAL (rasterio) or OGR (pyogrio): the file, the disk or the format, not geoseg's logic."""
    module = type(err).__module__ or ""
    return module.startswith(("rasterio", "pyogrio", "fiona"))


def portable(err: BaseException) -> BaseException:
    """The error to raise in place of ``err`` (module docstring)."""
    if isinstance(err, GeosegError):
        return type(err)(*err.args) if len(err.args) == 1 else GeosegError(str(err))
    if isinstance(err, OSError) or _is_io_library_error(err):
        reason = (getattr(err, "strerror", None) or str(err) or type(err).__name__).splitlines()[0]
        cause = err.__cause__ or (None if err.__suppress_context__ else err.__context__)
        if cause is not None and str(cause):
            reason += f" ({str(cause).splitlines()[0][:200]})"
        code = getattr(err, "errno", None) or errno.EIO
        return OSError(code, reason, getattr(err, "filename", None))
    err.__cause__ = err.__context__ = None
    return err


def run_task(fn, *args):
    """``fn(*args)``, any failure raised as :func:`portable` makes it, from outside the handler (so that Python
    chains nothing to it)."""
    try:
        return fn(*args)
    except Exception as err:  # noqa: BLE001 - re-raised below, portable
        failure = portable(err)
    raise failure


#: how the errors the driver reports in one line begin, as Dask logs them (``OSError(28, ...)`` is built as OSError,
#: ``OSError(2, ...)`` as FileNotFoundError...)
_QUIET_REPRS = tuple(f"{cls.__name__}(" for cls in (GeosegError, *GeosegError.__subclasses__(), OSError,
                                                    *OSError.__subclasses__()))


class QuietExpectedFailures(logging.Filter):
    """Drops Dask's "Compute Failed" record of a task that failed with a GeosegError or an OSError: the driver
    reports those as one line (module docstring). Other failures keep their traceback in the worker's log."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not str(record.msg).startswith("Compute Failed"):
            return True
        args = record.args if isinstance(record.args, tuple) else ()
        exception_text = str(args[3]) if len(args) > 3 else ""  # key, state, task, exception, traceback
        return not exception_text.startswith(_QUIET_REPRS)


def quiet_worker_logs() -> None:
    """Install :class:`QuietExpectedFailures` on Dask's worker logger (once per process)."""
    logger = logging.getLogger("distributed.worker")
    if not any(isinstance(f, QuietExpectedFailures) for f in logger.filters):
        logger.addFilter(QuietExpectedFailures())


quiet_worker_logs()  # workers import this module to unpickle run_task: the filter is in place before any task
