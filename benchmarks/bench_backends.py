"""Backends side by side (prints figures; not a test): the same scenes, the same tiling, one run.

    python benchmarks/bench_backends.py [--out bench-output/backends] [--repeats 2] [--demo-px 4096]
        [--runs unet:buildings-unet-r18,bgs:buildings-unet-r18,fastscnn,contextnet]

1. per model: parameters, GFLOP per 512 px tile for encode and decode (torch FlopCounterMode) and the
   decoder's share, and single-thread milliseconds per tile for both parts (fp32 and bf16 autocast);
2. end to end (`geoseg run`, LocalCluster, one torch thread per worker): Mpx/s of each run over a generated
   ``--demo-px`` scene plus the real scenes of bench_gate.py (Dubai tile_3, Kampala mosaic, Las Vegas), best of
   ``--repeats``, the ratio to the first run, and the decoder execution rate;
3. each model's validation figures from its card (pixel IoU, SpaceNet F1 of benchmarks/evaluate_model.py).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"

from geoseg.demo import generate_scene  # noqa: E402
from geoseg.model import load_model  # noqa: E402


def dubai_scenes(out: Path) -> list[Path]:
    """Dubai tile_3 JPEGs as GeoTIFFs (UTM 40N, 0.5 m, an arbitrary origin per image)."""
    import numpy as np
    import rasterio
    from affine import Affine
    from PIL import Image

    paths = []
    for i, jpg in enumerate(sorted((DATA / "landcover" / "dubai" / "tile_3" / "images").glob("*.jpg"))):
        rgb = np.moveaxis(np.asarray(Image.open(jpg).convert("RGB")), -1, 0)
        path = out / "scenes" / f"dubai_tile3_{jpg.stem}.tif"
        path.parent.mkdir(parents=True, exist_ok=True)
        with rasterio.open(path, "w", driver="GTiff", width=rgb.shape[2], height=rgb.shape[1], count=3, dtype="uint8",
                           crs="EPSG:32640", transform=Affine(0.5, 0, 300_000 + 5_000 * i, 0, -0.5, 2_800_000)) as dst:
            dst.write(rgb)
        paths.append(path)
    return paths


def run(scenes: list[Path], out: Path, model: str, backend: str) -> dict[str, dict]:
    """``geoseg run`` of all scenes in one process; each scene's summary."""
    cmd = [sys.executable, "-m", "geoseg.cli", "run", *map(str, scenes), "-o", str(out), "--model", model,
           "--backend", backend, "--quiet", "--formats", "gpkg"]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return {s.stem: json.loads((out / s.stem / "summary.json").read_text()) for s in scenes}


def model_figures(model: str, tile_px: int = 512, repeats: int = 3) -> dict:
    net, _ = load_model(model)
    x = net.prepare(torch.rand(1, 3, tile_px, tile_px))
    out = {"parameters": sum(p.numel() for n, p in net.named_parameters() if ".aux" not in n)}
    torch.set_num_threads(1)
    with torch.inference_mode():
        features = net.encode(x)
        for part, call in (("encode", lambda: net.encode(x)), ("decode", lambda: net.decode(features))):
            with FlopCounterMode(display=False) as counter:
                call()
            out[f"{part}_gflop"] = round(counter.get_total_flops() / 1e9, 3)
            for label, bf16 in (("fp32", False), ("bf16", True)):
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                    call()
                    t = time.perf_counter()
                    for _ in range(repeats):
                        call()
                out[f"{part}_ms_{label}"] = round(1000 * (time.perf_counter() - t) / repeats, 1)
    out["decoder_share_of_flops"] = round(out["decode_gflop"] / (out["encode_gflop"] + out["decode_gflop"]), 4)
    card = net.card
    e2e = card.metrics.get("end_to_end", {}).get("pooled", {})
    out.update({"val_building_iou_pixels": card.metrics.get("validation", {}).get("building_iou"),
                "val_end_to_end_iou": e2e.get("building_iou"), "val_spacenet_f1": e2e.get("spacenet_f1")})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="bench-output/backends")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--demo-px", type=int, default=4096)
    parser.add_argument("--runs", default="unet:buildings-unet-r18,bgs:buildings-unet-r18,fastscnn:buildings-fastscnn,"
                                          "contextnet:buildings-contextnet")
    args = parser.parse_args()
    out = Path(args.out)
    runs = [tuple(r.split(":")) for r in args.runs.split(",")]
    figures = {model: model_figures(model) for model in sorted({m for _, m in runs})}
    for model, f in figures.items():
        print(f"{model}: {f}")
    scenes = [generate_scene(out / "scenes" / f"demo_{args.demo_px}.tif", size_px=args.demo_px, seed=1)]
    scenes += dubai_scenes(out) + [DATA / "buildings" / "kampala" / "mosaic_z19.tif",
                                   DATA / "scenes" / "vegas_pan_uint16_0.3m.tif"]
    best: dict[str, dict] = {}
    for r in range(args.repeats):
        for backend, model in runs:
            key = f"{backend}:{model}"
            summaries = run(scenes, out / f"{backend}-{model}-{r}", model, backend)
            seconds = sum(s["seconds"] for s in summaries.values())
            if key not in best or seconds < best[key]["seconds"]:
                encoded = sum(s["tiles_encoded"] for s in summaries.values())
                best[key] = {"seconds": round(seconds, 2), "megapixels": round(sum(s["megapixels"] for s in summaries.values()), 2),
                             "demo_mpx_s": summaries[scenes[0].stem]["megapixels_per_second"],
                             "decoder_execution_rate": round(sum(s["tiles_decoded"] for s in summaries.values()) / encoded, 4),
                             "model_s": round(sum(s["stage_seconds"]["model_on_workers"] for s in summaries.values()), 2)}
    first = best[f"{runs[0][0]}:{runs[0][1]}"]
    print(f"\n{'run':40s} {'Mpx/s':>7} {'x dense':>7} {'demo Mpx/s':>10} {'model s':>8} {'dec. rate':>9} {'val IoU':>7} {'F1':>6}")
    for key, b in best.items():
        b["mpx_s"] = round(b["megapixels"] / b["seconds"], 3)
        b["ratio_to_first"] = round(b["mpx_s"] / (first["megapixels"] / first["seconds"]), 2)
        f = figures[key.split(":")[1]]
        print(f"{key:40s} {b['mpx_s']:7.3f} {b['ratio_to_first']:7.2f} {b['demo_mpx_s']:10.3f} {b['model_s']:8.1f} "
              f"{b['decoder_execution_rate']:9.3f} {f['val_end_to_end_iou'] or float('nan'):7.3f} "
              f"{f['val_spacenet_f1'] or float('nan'):6.3f}")
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench_backends.json").write_text(json.dumps({"models": figures, "runs": best}, indent=2) + "\n")


if __name__ == "__main__":
    main()
