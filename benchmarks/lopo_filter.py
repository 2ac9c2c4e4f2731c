"""The polygons of leave-one-place-out runs scored again with a floor on their ``confidence`` (the mean
building probability over a polygon's pixels, a column of every ``buildings.*``): what a user who drops the
less confident polygons in QGIS or pandas gets, on ground the model never saw. No model runs: the run folders
that ``benchmarks/leave_one_place_out.py`` left behind are re-scored.

    python benchmarks/lopo_filter.py runs/lopo-a/report.json [runs/lopo-b/report.json ...]
        --column "recipe building_threshold=0.4,separator_threshold=0.1,separator_dilate_px=2"
        [--confidence 0,0.5,0.6,0.7] --out runs/lopo-confidence/report.json
    python benchmarks/lopo_filter.py --evaluated runs/eval-fs --config geoseg/configs/buildings-fastscnn.yaml
        --out runs/eval-fs-confidence.json

The runs of ``benchmarks/evaluate_model.py`` (held-out rows of the places a model was trained on) are re-scored
the same way with ``--evaluated OUT --config CONFIG`` instead of reports (one column per floor, one row per place).

Writes a report of the same shape (one column per floor, ``COLUMN confidence>=C``; floor 0 is the column as it
was and must give its figures again), so ``benchmarks/lopo_choose.py OUT/report.json --by f1`` gives the nested
choice. Only the polygons change: pixel IoU is that of the unchanged ``mask.tif``. Places scored on a sample
(``--max-mpx``) are not supported (their regions are not recorded).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import pyogrio

from geoseg.config import load_config, source_place
from geoseg.evaluate import evaluate, pool
from geoseg.regions import validation_regions
from leave_one_place_out import variant_folder  # benchmarks/, the script's own folder


def run_folder(report_path: Path, place: str, column: str) -> Path:
    """Where ``leave_one_place_out.py`` ran ``column`` ("recipe" or "recipe VARIANT") for ``place``."""
    return report_path.parent / place / "runs" / variant_folder(column.removeprefix("recipe").strip())


def scores_with_floors(regions: list[tuple[Path, Path]], runs: Path, floors: list[float]) -> dict[float, dict]:
    """{floor: pooled metrics} of the regions' polygons with ``confidence >= floor`` (floor 0: all of them)."""
    results: dict[float, list] = {floor: [] for floor in floors}
    with tempfile.TemporaryDirectory() as tmp:
        for image, reference in regions:
            run = runs / image.stem
            frame = pyogrio.read_dataframe(run / "buildings.gpkg")
            for floor in floors:
                kept = Path(tmp) / f"{image.stem}-{floor}.gpkg"
                pyogrio.write_dataframe(frame[frame["confidence"] >= floor], kept, driver="GPKG",
                                        geometry_type="Polygon")
                results[floor].append(evaluate(str(run), str(reference), polygons=str(kept)))
    return {floor: pool(found) for floor, found in results.items()}


def record(out: dict, place: str, column: str, by_floor: dict[float, dict]) -> None:
    out["places"][place] = {f"{column} confidence>={floor}": metrics for floor, metrics in by_floor.items()}
    print(place, "  ".join(f">={floor}: {m['building_iou']:.3f} / {m['spacenet_f1']:.3f}"
                           for floor, m in by_floor.items()), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("reports", nargs="*")
    parser.add_argument("--column", help="the report column whose run folders are re-scored")
    parser.add_argument("--evaluated", help="an evaluate_model.py --out folder to re-score instead of reports")
    parser.add_argument("--config", help="with --evaluated: the config evaluate_model.py was given")
    parser.add_argument("--confidence", default="0,0.5,0.55,0.6,0.65,0.7")
    parser.add_argument("--out", required=True, help="the report to write")
    args = parser.parse_args()
    floors = [float(v) for v in args.confidence.split(",")]
    if 0.0 not in floors:
        floors.insert(0, 0.0)
    if bool(args.evaluated) == bool(args.reports) or bool(args.reports) != bool(args.column) or \
            bool(args.evaluated) != bool(args.config):
        sys.exit("give REPORT.json ... --column COLUMN, or --evaluated OUT --config CONFIG")
    out: dict = {"what": f"{args.column or args.evaluated} with confidence floors", "column": args.column,
                 "from": args.reports or [args.evaluated], "places": {}}
    if args.evaluated:
        for place in sorted({source_place(s) for s in load_config(args.config)[0].sources}):
            regions = validation_regions(args.config, Path(args.evaluated), "val", place)
            if regions:
                record(out, place, "evaluated", scores_with_floors(regions, Path(args.evaluated) / "runs", floors))
    for given in args.reports:
        report_path = Path(given)
        report = json.loads(report_path.read_text())
        if report.get("max_mpx") is not None:
            sys.exit(f"{given}: places scored on a sample (--max-mpx) are not supported")
        for place, columns in report["places"].items():
            if args.column not in columns:
                sys.exit(f"{given}: {place} has no column {args.column!r}")
            regions = validation_regions(report["config"], report_path.parent / place, "all", place)
            record(out, place, args.column, scores_with_floors(regions, run_folder(report_path, place, args.column),
                                                                floors))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
