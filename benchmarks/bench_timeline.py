"""Where a run's wall time goes on a LocalCluster (prints figures; not a test): a Dask task stream of one
``run_scenes`` call — when the first task starts (the driver's scene opening before it), each worker's busy time
and idle gaps, the tail after the last tile batch — and the CPU seconds of the driver process and of its worker
processes (``getrusage``), which on a small machine share the same cores.

    python benchmarks/bench_timeline.py SCENE.tif [SCENE2.tif ...] [--backend fastscnn] [--workers 2]
"""

from __future__ import annotations

import argparse
import collections
import resource
import time


def cpu_s(who) -> float:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("scenes", nargs="+")
    parser.add_argument("--backend", default="fastscnn")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", default="runs/bench-timeline")
    args = parser.parse_args()
    from distributed import get_task_stream

    from geoseg.cluster.local import LocalSpec
    from geoseg.pipeline import RunOptions, run_scenes
    from geoseg.write import scene_folder_names

    opts = RunOptions(backend=args.backend, workers=args.workers, progress=False).check()
    started = time.time()
    with LocalSpec(workers=args.workers).client() as client:
        up = time.time()
        with get_task_stream(client) as stream:
            for _ in run_scenes(list(zip(args.scenes, scene_folder_names(args.scenes))), args.out, opts, client):
                pass
        done = time.time()
    print(f"cluster start {up - started:.2f} s, scenes {done - up:.2f} s, close {time.time() - done:.2f} s")
    spans = collections.defaultdict(list)
    for task in stream.data:
        for step in task["startstops"]:
            if step["action"] == "compute":
                spans[task["worker"]].append((step["start"] - up, step["stop"] - up, task["key"].split("-")[0]))
    for worker, tasks in sorted(spans.items()):
        tasks.sort()
        gaps = [b[0] - a[1] for a, b in zip(tasks, tasks[1:])]
        kinds = collections.Counter()
        for a, b, kind in tasks:
            kinds[kind] += b - a
        print(f"worker {worker}: first task at {tasks[0][0]:.2f} s, last ends at {tasks[-1][1]:.2f} s, busy "
              f"{sum(b - a for a, b, _ in tasks):.2f} s, idle between tasks {sum(gaps):.2f} s; "
              + ", ".join(f"{k} {v:.2f} s" for k, v in kinds.most_common()))
    print(f"CPU: driver process {cpu_s(resource.RUSAGE_SELF):.1f} s, its worker processes "
          f"{cpu_s(resource.RUSAGE_CHILDREN):.1f} s")


if __name__ == "__main__":
    main()
