"""Memory probes a run reports (``summary.json``): the peak resident memory of this process, and of a worker
process keyed by where it runs. Apart from the cluster code, so that worker tasks need not import it."""

from __future__ import annotations

import os
import resource
import socket


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


def worker_rss_mb() -> dict[str, float]:
    """This process's peak RSS, keyed ``host:pid`` (summed per distinct worker in the summary)."""
    return {f"{socket.gethostname()}:{os.getpid()}": peak_rss_mb()}
