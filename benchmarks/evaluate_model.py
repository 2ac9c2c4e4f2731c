"""End-to-end validation of a building model: SpaceNet F1 and pixel IoU through `geoseg run` + `geoseg evaluate`.

    python benchmarks/evaluate_model.py MODEL.safetensors CONFIG.yaml [--out DIR] [--write-card]

The validation regions of the training config (:func:`geoseg.regions.validation_regions`: cut from the
original images in their own CRS, against the original footprints where the source has them) go through the
real pipeline with the model and are scored with ``geoseg evaluate``. Counts are pooled over all regions, and
over each place's regions (``per_place``: the all-places validation is mostly Dubai's desert tile by area,
which would otherwise stand for every place).
For instance models a second run keeps every detection scoring >= 0.05 for COCO mask AP / AP50; SpaceNet F1
and pixel IoU are those of the card's operating threshold.
With ``--write-card`` the figures are added to the model card as ``metrics.end_to_end``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from geoseg.architectures import architecture
from geoseg.evaluate import average_precision, evaluate, pool
from geoseg.regions import validation_regions
from geoseg.config import load_config, source_place

#: instance models' mask AP ranks every detection scoring at least this (torchvision's and COCO practice), not
#: only those above the card's operating threshold, which F1 and IoU use
AP_SCORE_THRESHOLD = 0.05


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("config")
    parser.add_argument("--out", default="runs/evaluation")
    parser.add_argument("--write-card", action="store_true")
    parser.add_argument("--split", default="val", choices=["val", "train"],
                        help="train: score the GeoTIFF sources' training rows (to tune post-processing)")
    parser.add_argument("--run-args", default="", help="extra `geoseg run` arguments, e.g. '--separator-threshold 0.3'")
    args = parser.parse_args()
    out = Path(args.out)
    config, _ = load_config(args.config)
    by_place = {place: validation_regions(args.config, out, args.split, place)
                for place in sorted({source_place(s) for s in config.sources})}
    regions = [region for place_regions in by_place.values() for region in place_regions]

    def run(folder: str, *extra: str) -> None:
        cmd = [sys.executable, "-m", "geoseg.cli", "run", *[str(r[0]) for r in regions], "-o", str(out / folder),
               "--model", args.model, "--quiet", *args.run_args.split(), *extra]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)

    run("runs")
    per_region = {scene.stem: evaluate(out / "runs" / scene.stem, reference) for scene, reference in regions}
    instances = architecture(json.loads(Path(args.model).with_suffix(".json").read_text())["architecture"]).instances
    if instances:  # mask AP ranks every detection, as COCO does: a second run keeping all scoring >= 0.05
        run("runs-ap", "--score-threshold", str(AP_SCORE_THRESHOLD))
        for scene, reference in regions:
            per_region[scene.stem] |= {k: v for k, v in evaluate(out / "runs-ap" / scene.stem, reference).items()
                                       if k in ("ap_records", "mask_ap", "mask_ap50")}
    pooled = {
        **pool(list(per_region.values())),
        "regions": len(regions), "command": " ".join(["python", "benchmarks/evaluate_model.py", args.model, args.config]
                                                     + (["--run-args", repr(args.run_args)] if args.run_args else [])),
    }
    per_place = {place: {k: v for k, v in pool([per_region[scene.stem] for scene, _ in place_regions]).items()
                         if k in ("building_iou", "spacenet_f1", "matched", "reference_polygons")}
                 for place, place_regions in by_place.items() if place_regions}
    if instances:  # COCO mask AP over all detections scoring >= AP_SCORE_THRESHOLD, pooled over the regions
        records = [rec for r in per_region.values() for rec in r.pop("ap_records")]
        pooled |= average_precision(records, pooled["reference_polygons"]) | {"ap_score_threshold": AP_SCORE_THRESHOLD}
    print(json.dumps(pooled, indent=2))
    for name, r in per_region.items():
        ap = f"  mask AP {r['mask_ap']:.3f} AP50 {r['mask_ap50']:.3f}" if "mask_ap" in r else ""
        print(f"{name:40s} IoU {r['building_iou']:.3f}  F1 {r['spacenet_f1']:.3f}  ({r['matched']}/{r['reference_polygons']} matched){ap}")
    for place, r in per_place.items():
        print(f"place {place:34s} IoU {r['building_iou']:.3f}  F1 {r['spacenet_f1']:.3f}  ({r['matched']}/{r['reference_polygons']} matched)")
    (out / "evaluation.json").write_text(json.dumps({"pooled": pooled, "per_place": per_place, "per_region": per_region},
                                                    indent=2))
    if args.write_card:
        card_path = Path(args.model).with_suffix(".json")
        card = json.loads(card_path.read_text())
        card.setdefault("metrics", {})["end_to_end"] = {"pooled": pooled, "per_place": per_place,
                                                        "per_region": {k: {m: v[m] for m in ("building_iou", "spacenet_f1", "matched", "reference_polygons", "mask_ap", "mask_ap50") if m in v}
                                                                       for k, v in per_region.items()}}
        card_path.write_text(json.dumps(card, indent=2) + "\n")


if __name__ == "__main__":
    main()
