"""Dense vs gated end to end (prints figures; not a test): the same scenes through `geoseg run --backend unet`
and `--backend bgs`, one after the other in one run, for each shipped model with a gate.

    python benchmarks/bench_gate.py [--out bench-output/gate] [--repeats 2]

Scenes (real imagery): the Dubai validation images (tile_3, not georeferenced: written as GeoTIFFs on a
made-up UTM 40N grid at the assumed 0.5 m), the Kampala z19 mosaic (mostly nodata, sparse buildings) and the
Las Vegas suburb (dense houses). Reported per model and scene: Mpx/s dense and gated and their ratio, seconds
in the model on the workers, and the gated run's decoder execution rate.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import rasterio
from affine import Affine
from PIL import Image

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"


def dubai_scenes(out: Path) -> list[Path]:
    """Dubai tile_3 JPEGs as GeoTIFFs (UTM 40N, 0.5 m, an arbitrary origin per image)."""
    paths = []
    for i, jpg in enumerate(sorted((DATA / "landcover" / "dubai" / "tile_3" / "images").glob("*.jpg"))):
        rgb = np.moveaxis(np.asarray(Image.open(jpg).convert("RGB")), -1, 0)
        path = out / "scenes" / f"dubai_tile3_{jpg.stem}.tif"
        path.parent.mkdir(parents=True, exist_ok=True)
        transform = Affine(0.5, 0, 300_000 + 5_000 * i, 0, -0.5, 2_800_000)
        with rasterio.open(path, "w", driver="GTiff", width=rgb.shape[2], height=rgb.shape[1], count=3,
                           dtype="uint8", crs="EPSG:32640", transform=transform) as dst:
            dst.write(rgb)
        paths.append(path)
    return paths


def run(scenes: list[Path], out: Path, model: str, backend: str) -> dict[str, dict]:
    cmd = [sys.executable, "-m", "geoseg.cli", "run", *map(str, scenes), "-o", str(out), "--model", model,
           "--backend", backend, "--quiet", "--formats", "gpkg"]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return {s.stem: json.loads((out / s.stem / "summary.json").read_text()) for s in scenes}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="bench-output/gate")
    parser.add_argument("--repeats", type=int, default=2, help="dense/gated pairs per model (best of each)")
    args = parser.parse_args()
    out = Path(args.out)
    scenes = dubai_scenes(out) + [DATA / "buildings" / "kampala" / "mosaic_z19.tif",
                                  DATA / "scenes" / "vegas_pan_uint16_0.3m.tif"]
    report = {}
    for model in ("buildings-unet-r18", "landcover-dubai-unet-r18"):
        best: dict[str, dict[str, dict]] = {"unet": {}, "bgs": {}}
        for r in range(args.repeats):
            for backend in ("unet", "bgs"):
                for name, s in run(scenes, out / f"{model}-{backend}-{r}", model, backend).items():
                    if name not in best[backend] or s["seconds"] < best[backend][name]["seconds"]:
                        best[backend][name] = s
        rows = {}
        for name in best["unet"]:
            d, g = best["unet"][name], best["bgs"][name]
            rows[name] = {"megapixels": d["megapixels"], "tiles_encoded": g["tiles_encoded"],
                          "dense_mpx_s": d["megapixels_per_second"], "gated_mpx_s": g["megapixels_per_second"],
                          "speedup": round(g["megapixels_per_second"] / d["megapixels_per_second"], 3),
                          "dense_model_s": d["stage_seconds"]["model_on_workers"],
                          "gated_model_s": g["stage_seconds"]["model_on_workers"],
                          "decoder_execution_rate": g["decoder_execution_rate"],
                          "buildings_dense": d["buildings"], "buildings_gated": g["buildings"]}
        total = {k: sum(r[k] for r in rows.values()) for k in ("megapixels", "dense_model_s", "gated_model_s", "tiles_encoded")}
        decoded = sum(best["bgs"][n]["tiles_decoded"] for n in rows)
        total.update({"decoder_execution_rate": round(decoded / max(total["tiles_encoded"], 1), 4),
                      "model_time_ratio": round(total["gated_model_s"] / max(total["dense_model_s"], 1e-9), 3),
                      "dense_s": round(sum(best["unet"][n]["seconds"] for n in rows), 2),
                      "gated_s": round(sum(best["bgs"][n]["seconds"] for n in rows), 2)})
        total["end_to_end_speedup"] = round(total["dense_s"] / total["gated_s"], 3)
        report[model] = {"scenes": rows, "total": total}
        print(f"\n{model}")
        print(f"{'scene':44s} {'Mpx':>6} {'dense Mpx/s':>11} {'gated Mpx/s':>11} {'speed-up':>8} {'decoder rate':>12}")
        for name, r in rows.items():
            print(f"{name:44s} {r['megapixels']:6.2f} {r['dense_mpx_s']:11.3f} {r['gated_mpx_s']:11.3f} "
                  f"{r['speedup']:8.2f} {r['decoder_execution_rate']:12.3f}")
        print(f"all: {total['megapixels']:.1f} Mpx, dense {total['dense_s']} s, gated {total['gated_s']} s "
              f"(x{total['end_to_end_speedup']}), model time x{total['model_time_ratio']}, decoder rate "
              f"{total['decoder_execution_rate']}")
    (out / "bench_gate.json").write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
