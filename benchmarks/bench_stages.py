"""Where a run's time goes, stage by stage, in one process (prints figures; not a test): ``run_scene`` in-process
with one torch thread, ``summary.json``'s stage seconds and the whole run's wall time, as JSON. Run it alternately
with two checkouts (``PYTHONPATH=OLD python benchmarks/bench_stages.py ...``) to compare a change side by side.

    python benchmarks/bench_stages.py SCENE.tif [--backend fastscnn] [--target-gsd 0.15] [--out runs/bench-stages]
"""

from __future__ import annotations

import argparse
import json
import shutil
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("scene")
    parser.add_argument("--backend", default="fastscnn")
    parser.add_argument("--target-gsd", type=float, default=None)
    parser.add_argument("--out", default="runs/bench-stages")
    args = parser.parse_args()
    import torch

    from geoseg.pipeline import RunOptions, run_scene

    torch.set_num_threads(1)
    shutil.rmtree(args.out, ignore_errors=True)
    options = RunOptions(backend=args.backend, workers=0, progress=False, target_gsd_m=args.target_gsd)
    started = time.perf_counter()
    summary = run_scene(args.scene, args.out, options)
    print(json.dumps({"wall_s": round(time.perf_counter() - started, 2), **summary.stage_seconds,
                      "megapixels": summary.megapixels, "buildings": summary.buildings}))


if __name__ == "__main__":
    main()
