"""Dense vs gated vs the cascade end to end (prints figures; not a test): the same scenes through `geoseg run
--backend unet`, `--backend bgs` with each gate rule (`--gate paper`, `--gate linear`) and with the thumbnail
pre-gate in front (`--cascade`), alternating, in one run.

    python benchmarks/bench_gate.py [--out bench-output/gate] [--repeats 3] [--model NAME]
        [--sparse ~/.cache/geoseg/sparse [--sparse runs/rural8]] [--variants dense,paper,...] [--no-towns]

Scenes (real imagery):

* **sparse** scenes (``benchmarks/make_sparse_scene.py``, the default one built into ``--sparse`` when missing):
  3584 px square at 0.3 m, 64 run tiles, 11 of 63 with buildings, the rest desert, roads, water, vegetation, a
  forest; the rural one (``--cells 8 --building-cells 1 --empty-only``) 4096 px, 81 tiles, few with buildings;
  each scored against its reference (building IoU per variant, ``geoseg evaluate``);
* **dense towns**, where every tile holds buildings and the gate should open everything: Banepa's drone
  mosaic (``buildings/banepa/image.tif``) and the Las Vegas suburb (``scenes/vegas_pan_uint16_0.3m.tif``).

Every repeat runs each variant on each scene in turn, each in its own ``geoseg run`` process with the default
LocalCluster (2 workers here); the best of the repeats of each is kept. Reported per scene and variant: the whole
process's wall seconds (and ``summary.json``'s, from opening the scene to the last output), the ratio dense /
variant, seconds in the model on the workers, the encoder and decoder execution rates, the building count.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"


#: what is compared: name -> extra `geoseg run` arguments (dense first: the reference of every ratio)
VARIANTS = {"dense": ["--backend", "unet"], "paper": ["--backend", "bgs", "--gate", "paper"],
            "linear": ["--backend", "bgs", "--gate", "linear"],
            "cascade+paper": ["--backend", "bgs", "--gate", "paper", "--cascade"],
            "cascade+linear": ["--backend", "bgs", "--gate", "linear", "--cascade"]}


def run(scene: Path, out: Path, model: str | None, extra: list[str], formats: str = "gpkg") -> dict:
    """One `geoseg run` process (``model`` None: the backend's own); its summary, with the whole process's wall
    seconds as ``process_s``."""
    cmd = [sys.executable, "-m", "geoseg.cli", "run", str(scene), "-o", str(out), *(["--model", model] if model else []),
           "--quiet", "--formats", formats, *extra]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    summary = json.loads((out / scene.stem / "summary.json").read_text())
    return summary | {"process_s": round(time.perf_counter() - t0, 2), "run_dir": str(out / scene.stem)}


def building_iou(run_dir: Path, reference: Path) -> float:
    from geoseg.evaluate import evaluate

    return evaluate(run_dir, reference)["building_iou"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="bench-output/gate")
    parser.add_argument("--repeats", type=int, default=3, help="rounds of every variant on every scene (best of each)")
    parser.add_argument("--model", default="buildings-unet-r18")
    parser.add_argument("--sparse", action="append", default=None,
                        help="sparse scene folders (make_sparse_scene.py; default ~/.cache/geoseg/sparse, built "
                             "when missing)")
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"of {', '.join(VARIANTS)}")
    parser.add_argument("--no-towns", action="store_true", help="leave out the dense towns")
    args = parser.parse_args()
    out = Path(args.out)
    variants = {v: VARIANTS[v] for v in args.variants.split(",")}
    scenes = {}
    for folder in [Path(p) for p in (args.sparse or [os.path.expanduser("~/.cache/geoseg/sparse")])]:
        if not (folder / "sparse.tif").exists():
            subprocess.run([sys.executable, str(Path(__file__).with_name("make_sparse_scene.py")), "--out",
                            str(folder)], check=True)
        scenes[folder.name] = folder / "sparse.tif"
    if not args.no_towns:
        scenes |= {"banepa (dense town)": DATA / "buildings" / "banepa" / "image.tif",
                   "vegas (dense town)": DATA / "scenes" / "vegas_pan_uint16_0.3m.tif"}
    best: dict[str, dict[str, dict]] = {v: {} for v in variants}
    for r in range(args.repeats):
        for name, scene in scenes.items():
            for v, extra in variants.items():
                s = run(scene, out / f"{v}-{r}-{abs(hash(name)) % 10**6}", args.model, extra)
                if name not in best[v] or s["process_s"] < best[v][name]["process_s"]:
                    best[v][name] = s
    report = {}
    print(f"\n{args.model}, best of {args.repeats}: whole-process seconds (summary seconds), ratio dense / variant, "
          "model seconds on the workers, encoder and decoder rates, buildings, building IoU where a reference exists")
    for name, scene in scenes.items():
        reference = scene.with_name("sparse.reference.tif")
        dense = best[list(variants)[0]][name]
        report[name] = {}
        print(f"\n{name} ({dense['megapixels']:.1f} Mpx, {dense['tiles_encoded']} tiles with imagery)")
        for v in variants:
            s = best[v][name]
            row = {"process_s": s["process_s"], "seconds": s["seconds"],
                   "speedup_process": round(dense["process_s"] / s["process_s"], 3),
                   "model_s": s["stage_seconds"]["model_on_workers"], "stages_s": s["stage_seconds"],
                   "encoder_rate": s.get("encoder_execution_rate", 1.0),
                   "decoder_rate": s["decoder_execution_rate"], "buildings": s["buildings"]}
            if reference.exists():
                row["building_iou"] = round(building_iou(Path(s["run_dir"]), reference), 4)
            report[name][v] = row
            print(f"  {v:15s} {row['process_s']:7.2f} s ({row['seconds']:6.2f}) {row['speedup_process']:6.2f}x  "
                  f"model {row['model_s']:6.1f} s  encoder {row['encoder_rate']:.3f}  decoder {row['decoder_rate']:.3f}  "
                  f"{row['buildings']:5d} buildings" + (f"  IoU {row['building_iou']:.4f}" if "building_iou" in row else ""))
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench_gate.json").write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
