"""Outline options measured on ground the model never saw (issue 24, item 4): plain, ``--regularise`` and a
coarser ``--simplify``, end to end (``geoseg run`` + ``geoseg evaluate``), with the outline scores.

    python benchmarks/bench_outlines.py --out runs/bench-outlines [--places nacala,dhaka,khartoum,shanghai,paris]
        [--base-unseen runs/buildings-unet-r18-v2.safetensors]

The places and models are those of ``bench_adapt.py`` (Nacala with the shipped default, gated; the others with the
model of commit b18c956, which never saw them). Prints one line per place and option, and the pooled figures
over all places per option; writes OUT/report.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

from bench_adapt import regions, scored
from geoseg.evaluate import pool
from geoseg.pipeline import RunOptions

VARIANTS = {"plain": {}, "regularise": {"regularise": True}, "simplify 0.5 m": {"simplify_m": 0.5}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True)
    parser.add_argument("--places", default="nacala,dhaka,khartoum,shanghai,paris")
    parser.add_argument("--base-unseen", default="runs/buildings-unet-r18-v2.safetensors")
    args = parser.parse_args()
    out = Path(args.out)
    report: dict = {"places": {}, "pooled": {}}
    per_variant: dict = {v: [] for v in VARIANTS}
    for place in args.places.split(","):
        pairs = regions(place, out / place)
        base = RunOptions(workers=0, progress=False, formats=["gpkg"]) if place == "nacala" else \
            RunOptions(backend="unet", model=args.base_unseen, workers=0, progress=False, formats=["gpkg"])
        report["places"][place] = {}
        for name, change in VARIANTS.items():
            result = scored(dataclasses.replace(base, **change), pairs, out / place / name.replace(" ", "-"))
            report["places"][place][name] = result
            per_variant[name].append(result)
            print(f"{place} {name}: IoU {result['building_iou']:.3f} F1 {result['spacenet_f1']:.3f} matched IoU "
                  f"{result['matched_mean_iou']} rotation {result['rotation_error_deg']} deg vertex ratio "
                  f"{result['vertex_ratio']}", flush=True)
    for name, results in per_variant.items():
        report["pooled"][name] = pooled = pool(results)
        print(f"all places {name}: IoU {pooled['building_iou']:.3f} F1 {pooled['spacenet_f1']:.3f} matched IoU "
              f"{pooled['matched_mean_iou']} rotation {pooled['rotation_error_deg']} deg vertex ratio "
              f"{pooled['vertex_ratio']}")
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
