"""How fast a run could be at best on this machine: what a `geoseg run` spends besides its model (prints figures;
not a test).

    python benchmarks/bench_floor.py SCENE.tif [SCENE.tif ...] [--reference REF.tif ...] [--backends unet,fastscnn]
        [--workers 0,default] [--repeats 2] [--out runs/bench-floor]

Each scene goes through ``geoseg run --backend B --workers W`` for every backend and worker setting
(``default``: the command's own choice), each in its own process, alternating, ``--repeats`` rounds, every default
vector format, the default precision. Reported per row (best round by whole-process wall): the process's wall
seconds, the scene's (``summary.json`` ``seconds``), the model's wall seconds (``model_on_workers`` over the
workers that ran it: in-process the model's own threads share the cores, so it is wall already) and the rest,
``process - model``: what no faster model or gate can take away.

Two bounds follow from it (each against the first backend's best, usually the dense U-Net):

* **zero-cost model**: first backend's wall / this row's ``process - model``: how many times faster than the dense
  U-Net any backend could be on this scene if its model took no time at all (issue 27's Fast-SCNN targets);
* **perfect cascade** (with ``--reference``, one per scene, 0/1 building raster on the scene's grid, nodata
  ignored): the share of the scene's tiles at least ``--min-fraction`` building; a cascade that skipped the encoder and the decoder
  on every other tile, at no cost of its own, would take ``process - model * (1 - share)`` (issue 28's targets).
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np
import rasterio

from bench_gate import run
from bench_realtime import cpu_name
from geoseg.formats import DEFAULT_FORMATS
from geoseg.model import bf16_is_fast
from geoseg.options import RunOptions
from geoseg.pipeline import run_workers
from geoseg.tile import tile_grid


def building_tile_share(reference: Path, tile_px: int, overlap_px: int, min_fraction: float) -> float:
    """Share of the tiles of ``reference``'s grid whose labelled pixels (not the raster's nodata) are at least
    ``min_fraction`` building (value 1): the gate's "building tile" (its calibration's ``target_fraction``)."""
    with rasterio.open(reference) as src:
        values = src.read(1)
        known = values != src.nodata if src.nodata is not None else np.ones(values.shape, bool)
    tiles = tile_grid(*values.shape, tile_px, overlap_px)
    built = 0
    for t in tiles:
        cut = (slice(t.row_off, t.row_off + t.height), slice(t.col_off, t.col_off + t.width))
        labelled = known[cut].sum()
        built += bool(labelled) and (values[cut] == 1).sum() >= min_fraction * labelled
    return built / len(tiles)


def one_run(scene: Path, backend: str, workers: str, out: Path) -> dict:
    extra = ["--backend", backend, *([] if workers == "default" else ["--workers", workers])]
    s = run(scene, out, None, extra, formats=",".join(DEFAULT_FORMATS))
    if workers == "default":  # the command's own choice: one worker per core (None) or in-process (0)
        chosen = run_workers([str(scene)], RunOptions(backend=backend))
        workers = str(os.cpu_count() or 1) if chosen is None else str(chosen)
    model_s = s["stage_seconds"]["model_on_workers"] / max(1, int(workers))  # in-process: wall already
    return {"process_s": s["process_s"], "scene_s": s["seconds"], "model_wall_s": round(model_s, 2),
            "rest_s": round(s["process_s"] - model_s, 2), "tiles": s["tiles_total"], "tile_px": s["tile_px"],
            "overlap_px": s["overlap_px"], "buildings": s["buildings"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("scenes", nargs="+", type=Path)
    parser.add_argument("--reference", action="append", type=Path, default=[], help="one per scene, in order")
    parser.add_argument("--min-fraction", type=float, default=0.005,
                        help="building share that makes a tile a building tile (the shipped gate's target_fraction)")
    parser.add_argument("--backends", default="unet,fastscnn")
    parser.add_argument("--workers", default="0,default", help="comma-separated: 0 (in-process), N, default")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", default="runs/bench-floor", type=Path)
    args = parser.parse_args()
    backends, settings = args.backends.split(","), args.workers.split(",")
    report = {"cpu": cpu_name(), "bf16_fast": bf16_is_fast(), "repeats": args.repeats, "scenes": {}}
    for i, scene in enumerate(args.scenes):
        rows: dict[str, list[dict]] = {}
        for r in range(args.repeats):
            for backend in backends:
                for workers in settings:
                    key = f"{backend} workers={workers}"
                    rows.setdefault(key, []).append(one_run(scene, backend, workers, args.out / f"{i}-{backend}-{workers}-{r}"))
        best = {k: min(v, key=lambda x: x["process_s"]) for k, v in rows.items()}
        dense = min(best[k]["process_s"] for k in best if k.startswith(backends[0] + " "))
        share = None
        if i < len(args.reference):
            first = next(iter(best.values()))
            share = building_tile_share(args.reference[i], first["tile_px"], first["overlap_px"], args.min_fraction)
        print(f"{scene} ({next(iter(best.values()))['tiles']} tiles"
              + (f", {share:.1%} with buildings" if share is not None else "") + f"); best {backends[0]} {dense:.1f} s")
        for key, b in best.items():
            b["zero_model_bound_x"] = round(dense / b["rest_s"], 2)
            line = (f"  {key:>22}: process {b['process_s']:.1f} s (mean {np.mean([x['process_s'] for x in rows[key]]):.1f}), "
                    f"scene {b['scene_s']:.1f}, model {b['model_wall_s']:.1f}, rest {b['rest_s']:.1f} s; "
                    f"{backends[0]} / zero-cost model {b['zero_model_bound_x']:.2f}x")
            if share is not None:
                b["perfect_cascade_bound_x"] = round(dense / (b["rest_s"] + b["model_wall_s"] * share), 2)
                line += f", / perfect cascade {b['perfect_cascade_bound_x']:.2f}x"
            print(line, flush=True)
        report["scenes"][str(scene)] = {"building_tile_share": share, "runs": rows, "best": best}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench_floor.json").write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
