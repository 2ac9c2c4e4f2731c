"""End-to-end validation of a building model: SpaceNet F1 and pixel IoU through `geoseg run` + `geoseg evaluate`.

    python benchmarks/evaluate_model.py MODEL.safetensors CONFIG.yaml [--out DIR] [--write-card]

The validation regions of the training config are cut from the *original* images (their own CRS and
resolution: the last ``val_fraction`` of the rows, as in training) and written as GeoTIFFs. Kampala val-chips
that share no ground with training chips are mosaicked per zoom level when they form one gap-free rectangle
(16 chips of 19 m at zoom 21 are one 76 m block): scored chip by chip, every building that a chip border
cuts would count as two reference fragments, which no real scene has. A chips source with ``distinct_ground``
gives only the chips that show its ground once (Kampala's block at zoom 19, not again at 20 and 21). Sources
without an original GeoTIFF to cut (``xyz``, ``image_mask``, ``dubai``) are scored as training reads them,
against their label raster. Each goes through the real pipeline with the
model, and its outputs are scored against the original footprints. Counts are pooled over all regions.
For instance models a second run keeps every detection scoring >= 0.05 for COCO mask AP / AP50; SpaceNet F1
and pixel IoU are those of the card's operating threshold.
With ``--write-card`` the figures are added to the model card as ``metrics.end_to_end``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import rasterio
import shapely
from rasterio.merge import merge
from rasterio.windows import Window

from geoseg.card import INSTANCE_ARCHITECTURES
from geoseg.datasets import chips_of_distinct_ground, chips_sharing_no_ground
from geoseg.evaluate import average_precision, evaluate, pool, write_labelled_region
from geoseg.train import (ChipsSource, DubaiSource, GeotiffSource, ImageMaskSource, XYZSource, load_config,
                          load_scenes, source_place)

#: instance models' mask AP ranks every detection scoring at least this (torchvision's and COCO practice), not
#: only those above the card's operating threshold, which F1 and IoU use
AP_SCORE_THRESHOLD = 0.05


def validation_regions(config_path: str, out: Path, split: str = "val", place: str | None = None
                       ) -> list[tuple[Path, Path]]:
    """(scene GeoTIFF, reference) pairs for every validation region of a training config. With
    ``split="train"``: the training rows of the GeoTIFF sources instead (for tuning post-processing without
    touching the validation data). With ``split="all"``: all the ground of every source (for scoring a place
    left out of training), each chip folder's ground once. ``place``: only that place's sources. The reference is
    the original footprint polygons where the source has them, else a label raster."""
    config, root = load_config(config_path)
    regions = []
    for src in config.sources:
        if place is not None and source_place(src) != place:
            continue
        if isinstance(src, GeotiffSource) and src.labels and (src.val_fraction > 0 or split == "all"):
            image = root / src.image
            with rasterio.open(image) as ds:
                start = int(round(ds.height * (1 - src.val_fraction)))
                window = Window(0, start, ds.width, ds.height - start)
                if split == "train":
                    window = Window(0, 0, ds.width, start - src.gap_px)
                elif split == "all":
                    window = Window(0, 0, ds.width, ds.height)
                profile = ds.profile | {"height": window.height, "width": window.width,
                                        "transform": ds.window_transform(window)}
                path = out / "regions" / f"{image.parent.name}_{split}.tif"
                path.parent.mkdir(parents=True, exist_ok=True)
                with rasterio.open(path, "w", **profile) as dst:
                    dst.write(ds.read(window=window))
                    if ds.mask_flag_enums[0] == [rasterio.enums.MaskFlags.per_dataset]:
                        dst.write_mask(ds.dataset_mask(window=window))
            regions.append((path, root / src.labels))
        elif isinstance(src, ChipsSource) and (src.split == "val" and split == "val" or split == "all"):
            reference = root / (src.labels or Path(src.images).parent / "chips_buildings.geojson")
            other = root / src.exclude_overlap_with if src.exclude_overlap_with else None
            chips = chips_sharing_no_ground(root / src.images, other)
            if src.distinct_ground or split == "all":  # the same buildings at several zoom levels are scored once
                chips = chips_of_distinct_ground(chips, config.gsd_m)
            by_zoom = defaultdict(list)
            for chip in chips:
                by_zoom[chip.stem.rsplit("-", 1)[-1]].append(chip)
            for zoom, chips in sorted(by_zoom.items()):
                block = out / "regions" / f"{Path(src.images).parent.name}_{src.split}_z{zoom}.tif"
                regions += [(path, reference) for path in mosaic_if_contiguous(chips, block)]
        elif isinstance(src, (XYZSource, ImageMaskSource, DubaiSource)) and split in ("val", "all"):
            # no original GeoTIFF to cut: the scenes as training reads them, scored against their label raster
            one = config.model_copy(update={"sources": [src]})
            regions += [write_labelled_region(scene, out / "regions", config.gsd_m)
                        for scene in load_scenes(one, root) if split == "all" or scene.split == "val"]
    return regions


def mosaic_if_contiguous(chips: list[Path], path: Path) -> list[Path]:
    """``[path]`` holding the chips mosaicked, if they tile one rectangle without gaps; else the chips."""
    if len(chips) < 2:
        return chips
    boxes = []
    for chip in chips:
        with rasterio.open(chip) as ds:
            boxes.append(shapely.box(*ds.bounds))
    union = shapely.union_all(boxes)
    if abs(union.area - shapely.box(*union.bounds).area) > 1e-3 * union.area:
        return chips
    image, transform = merge([str(c) for c in chips])
    with rasterio.open(chips[0]) as ds:
        profile = ds.profile | {"height": image.shape[1], "width": image.shape[2], "transform": transform,
                                "driver": "GTiff"}
    path.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(image)
    return [path]


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
    regions = validation_regions(args.config, out, args.split)

    def run(folder: str, *extra: str) -> None:
        cmd = [sys.executable, "-m", "geoseg.cli", "run", *[str(r[0]) for r in regions], "-o", str(out / folder),
               "--model", args.model, "--quiet", *args.run_args.split(), *extra]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)

    run("runs")
    per_region = {scene.stem: evaluate(out / "runs" / scene.stem, reference) for scene, reference in regions}
    instances = json.loads(Path(args.model).with_suffix(".json").read_text())["architecture"] in INSTANCE_ARCHITECTURES
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
    if instances:  # COCO mask AP over all detections scoring >= AP_SCORE_THRESHOLD, pooled over the regions
        records = [rec for r in per_region.values() for rec in r.pop("ap_records")]
        pooled |= average_precision(records, pooled["reference_polygons"]) | {"ap_score_threshold": AP_SCORE_THRESHOLD}
    print(json.dumps(pooled, indent=2))
    for name, r in per_region.items():
        ap = f"  mask AP {r['mask_ap']:.3f} AP50 {r['mask_ap50']:.3f}" if "mask_ap" in r else ""
        print(f"{name:40s} IoU {r['building_iou']:.3f}  F1 {r['spacenet_f1']:.3f}  ({r['matched']}/{r['reference_polygons']} matched){ap}")
    (out / "evaluation.json").write_text(json.dumps({"pooled": pooled, "per_region": per_region}, indent=2))
    if args.write_card:
        card_path = Path(args.model).with_suffix(".json")
        card = json.loads(card_path.read_text())
        card.setdefault("metrics", {})["end_to_end"] = {"pooled": pooled,
                                                        "per_region": {k: {m: v[m] for m in ("building_iou", "spacenet_f1", "matched", "reference_polygons", "mask_ap", "mask_ap50") if m in v}
                                                                       for k, v in per_region.items()}}
        card_path.write_text(json.dumps(card, indent=2) + "\n")


if __name__ == "__main__":
    main()
