"""Dense vs gated end to end (prints figures; not a test): the same scenes through `geoseg run --backend unet`
and `--backend bgs`, alternating, in one run, for the default building model (and ``--model`` others).

    python benchmarks/bench_gate.py [--out bench-output/gate] [--repeats 3] [--model NAME ...]
        [--sparse ~/.cache/geoseg/sparse]

Scenes (real imagery):

* **sparse**: the gate's benchmark scene (``benchmarks/make_sparse_scene.py``, built into ``--sparse`` when
  missing): 3584 px square at 0.3 m, 64 run tiles, 9 of 49 cells with buildings, the rest desert, roads, water,
  vegetation, a forest; scored against its reference (building IoU dense and gated, ``geoseg evaluate``);
* **dense towns**, where every tile holds buildings and the gate should open everything: Banepa's drone
  mosaic (``buildings/banepa/image.tif``) and the Las Vegas suburb (``scenes/vegas_pan_uint16_0.3m.tif``).

Every repeat runs dense then gated (then the next repeat), each scene in its own ``geoseg run`` process with the
default LocalCluster (2 workers here); the best of the repeats of each is kept. Reported per scene: seconds end
to end (``summary.json``: from reading the scene to the last output, cluster start included), the ratio
dense / gated, seconds in the model on the workers, the decoder execution rate and the building count.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"


def run(scene: Path, out: Path, model: str, backend: str) -> dict:
    cmd = [sys.executable, "-m", "geoseg.cli", "run", str(scene), "-o", str(out), "--model", model,
           "--backend", backend, "--quiet", "--formats", "gpkg"]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return json.loads((out / scene.stem / "summary.json").read_text())


def building_iou(run_dir: Path, reference: Path) -> float:
    from geoseg.evaluate import evaluate

    return evaluate(run_dir, reference)["building_iou"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="bench-output/gate")
    parser.add_argument("--repeats", type=int, default=3, help="dense/gated pairs per scene (best of each)")
    parser.add_argument("--model", action="append", default=None, help="default: buildings-unet-r18")
    parser.add_argument("--sparse", default=os.path.expanduser("~/.cache/geoseg/sparse"))
    args = parser.parse_args()
    out, sparse = Path(args.out), Path(args.sparse)
    if not (sparse / "sparse.tif").exists():
        subprocess.run([sys.executable, str(Path(__file__).with_name("make_sparse_scene.py")), "--out", str(sparse)],
                       check=True)
    scenes = {"sparse": sparse / "sparse.tif", "banepa (dense town)": DATA / "buildings" / "banepa" / "image.tif",
              "vegas (dense town)": DATA / "scenes" / "vegas_pan_uint16_0.3m.tif"}
    report = {}
    for model in args.model or ["buildings-unet-r18"]:
        best: dict[str, dict[str, dict]] = {"unet": {}, "bgs": {}}
        for r in range(args.repeats):
            for name, scene in scenes.items():
                for backend in ("unet", "bgs"):
                    s = run(scene, out / f"{model}-{backend}-{r}", model, backend)
                    s["run_dir"] = str(out / f"{model}-{backend}-{r}" / scene.stem)
                    if name not in best[backend] or s["seconds"] < best[backend][name]["seconds"]:
                        best[backend][name] = s
        rows = {}
        for name in scenes:
            d, g = best["unet"][name], best["bgs"][name]
            rows[name] = {"megapixels": d["megapixels"], "tiles_encoded": g["tiles_encoded"],
                          "dense_s": d["seconds"], "gated_s": g["seconds"],
                          "speedup": round(d["seconds"] / g["seconds"], 3),
                          "dense_model_s": d["stage_seconds"]["model_on_workers"],
                          "gated_model_s": g["stage_seconds"]["model_on_workers"],
                          "dense_stages_s": d["stage_seconds"], "gated_stages_s": g["stage_seconds"],
                          "decoder_execution_rate": g["decoder_execution_rate"],
                          "buildings_dense": d["buildings"], "buildings_gated": g["buildings"]}
        reference = sparse / "sparse.reference.tif"
        rows["sparse"] |= {"building_iou_dense": building_iou(Path(best["unet"]["sparse"]["run_dir"]), reference),
                           "building_iou_gated": building_iou(Path(best["bgs"]["sparse"]["run_dir"]), reference)}
        report[model] = rows
        print(f"\n{model} (best of {args.repeats}; seconds end to end per scene, model = seconds on the workers)")
        print(f"{'scene':22s} {'Mpx':>6} {'tiles':>5} {'dense s':>8} {'gated s':>8} {'dense/gated':>11} "
              f"{'model s d/g':>13} {'decoder rate':>12} {'buildings d/g':>13}")
        for name, r in rows.items():
            print(f"{name:22s} {r['megapixels']:6.2f} {r['tiles_encoded']:5d} {r['dense_s']:8.2f} {r['gated_s']:8.2f} "
                  f"{r['speedup']:11.3f} {r['dense_model_s']:6.1f}/{r['gated_model_s']:<6.1f} "
                  f"{r['decoder_execution_rate']:12.3f} {r['buildings_dense']:6d}/{r['buildings_gated']:<6d}")
        s = rows["sparse"]
        print(f"sparse building IoU dense {s['building_iou_dense']:.4f}, gated {s['building_iou_gated']:.4f}")
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench_gate.json").write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
