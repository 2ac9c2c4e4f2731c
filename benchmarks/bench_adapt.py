"""``geoseg run --adapt`` on ground the model never saw: the same scenes scored end to end (``geoseg run`` +
``geoseg evaluate``, pooled per place) with the plain model and with the model adapted to them, no label used.

    python benchmarks/bench_adapt.py --out runs/bench-adapt [--places nacala,dhaka,khartoum,shanghai,paris]
        [--budget 90] [--blend 0.5] [--steps 100] [--no-flips | --max-flip-tiles 8] [--seed 0] [--threads 2] [--base-unseen runs/buildings-unet-r18-v2.safetensors]

* ``nacala``: the demo scene, with the shipped default (no shipped model saw Nacala), gated as a user runs it.
* the others, with ``--base-unseen`` (the 3-class model of commit b18c956, trained on Banepa, Kampala and Atlanta
  only), dense: Dhaka's 8 chips against its OSM outlines (one adaptation for the 8, as one run or job does), and
  the SpaceNet 2 tiles as training reads them, on a stand-in grid, against their masks; ``dubai`` (not in the
  default list): the images of Dubai's tile_3 as training reads them, against their Building class.

Prints per place: plain and adapted pixel IoU, SpaceNet F1 and outline scores, and what adapting cost (seconds,
steps, tiles); writes OUT/report.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import torch

from geoseg.adapt import AdaptSettings, adapt
from geoseg.evaluate import evaluate, pool, write_labelled_region
from geoseg.pipeline import RunOptions, run_scene

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
SPACENET = {"khartoum": "RGB-PanSharpen_AOI_5_Khartoum_img5", "shanghai": "RGB-PanSharpen_AOI_4_Shanghai_img945",
            "paris": "RGB-PanSharpen_AOI_3_Paris_img418"}


def regions(place: str, out: Path) -> list[tuple[Path, Path]]:
    if place == "nacala":
        return [(Path(__file__).resolve().parents[1] / "geoseg" / "samples" / "nacala.tif",
                 DATA / "buildings" / "nacala" / "01.geojson")]
    if place == "dhaka":
        chips = sorted((DATA / "buildings" / "dhaka" / "chips").glob("*.tif"))
        return [(c, DATA / "buildings" / "dhaka" / "buildings.geojson") for c in chips]
    from geoseg.datasets import dubai_source, image_mask_source

    if place == "dubai":  # tile_3's images (the held-out tile of the shipped models) at the assumed 0.5 m
        scenes = dubai_source(str(DATA / "landcover" / "dubai"), 0.3, 0.5, [], buildings_only=True, tiles=["tile_3"])
        return [write_labelled_region(s, out / "region", 0.3) for s in scenes]
    stem = DATA / "buildings" / place / SPACENET[place]
    [scene] = image_mask_source(f"{stem}.png", f"{stem}_mask01.png", 0.3, 0.3)
    return [write_labelled_region(scene, out / "region", 0.3)]


def scored(options: RunOptions, pairs: list[tuple[Path, Path]], out: Path) -> dict:
    results = []
    for image, reference in pairs:
        run_scene(image, out, options)
        results.append(evaluate(str(out / image.stem), str(reference)))
    return pool(results)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True)
    parser.add_argument("--places", default="nacala,dhaka,khartoum,shanghai,paris")
    parser.add_argument("--budget", type=float, default=90.0)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--blend", type=float, default=0.5)
    parser.add_argument("--no-flips", action="store_true",
                        help="pseudo-labels from plain probabilities, not flip-averaged ones (the default up to 8 tiles)")
    parser.add_argument("--max-flip-tiles", type=int, default=AdaptSettings.max_flip_tiles,
                        help="flip-averaged pseudo-labels up to this many adapting tiles")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--base-unseen", default="runs/buildings-unet-r18-v2.safetensors")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    settings = AdaptSettings(budget_s=args.budget, steps=args.steps, bn_blend=args.blend,
                             max_flip_tiles=0 if args.no_flips else args.max_flip_tiles,
                             seed=args.seed)
    report = {"settings": dataclasses.asdict(settings), "threads": args.threads, "places": {}}
    for place in args.places.split(","):
        pairs = regions(place, out / place)
        base = RunOptions(workers=0, progress=False, formats=["gpkg"]) if place == "nacala" else \
            RunOptions(backend="unet", model=args.base_unseen, workers=0, progress=False, formats=["gpkg"])
        plain = scored(base, pairs, out / place / "plain")
        started = time.perf_counter()
        model = base.model or "buildings-unet-r18"
        adapted = adapt([str(p) for p, _ in pairs], out / place, dataclasses.replace(base, model=model), settings,
                        progress=False)
        seconds = time.perf_counter() - started
        after = scored(dataclasses.replace(base, model=adapted.model), pairs, out / place / "adapted")
        report["places"][place] = {"model": model, "plain": plain, "adapted": after, "adapt": adapted.to_dict(),
                                   "adapt_seconds": round(seconds, 1)}
        print(f"{place} ({model}): IoU {plain['building_iou']:.3f} -> {after['building_iou']:.3f}, "
              f"F1 {plain['spacenet_f1']:.3f} -> {after['spacenet_f1']:.3f}; matched IoU {plain['matched_mean_iou']} -> "
              f"{after['matched_mean_iou']}; adapting {seconds:.0f} s, {adapted.steps} steps, {adapted.tiles} tiles "
              f"({adapted.tiles_with_buildings} with buildings)", flush=True)
        out.mkdir(parents=True, exist_ok=True)
        (out / "report.json").write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
