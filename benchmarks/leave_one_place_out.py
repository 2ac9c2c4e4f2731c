"""Leave-one-place-out: how a building model does in a place it has never seen (issue 15's headline figure).

    python benchmarks/leave_one_place_out.py CONFIG.yaml --out runs/lopo-NAME [--places dhaka,kampala,...]
        [--epochs 6] [--steps 100] [--threads 2] [--set augment=sensors ...] [--compare MODEL ...] [--resume]
        [--run regularise=true,min_rectangularity=0.8 ...]

For each place P (a source's ``place``, by default the folder under buildings/ or landcover/), a model is trained
with the config's recipe on every source of every *other* place, for the same budget (``--epochs`` x ``--steps``
steps of ``batch_size`` crops) in every fold, and its best epoch by the remaining places' validation split is kept
(P takes no part in it). ``--set KEY=VALUE`` changes a top-level config value in every fold (a recipe variant:
``augment=sensors``, ``sampling=pixels``, ``encoder=resnet34``; values are read as YAML). P is then scored end to
end on all its ground (both splits; chips showing the same ground at several zooms once), as
``benchmarks/evaluate_model.py`` scores validation regions: georeferenced imagery with footprint polygons (Banepa,
Atlanta, Kampala, Dhaka) in its own CRS and resolution against those polygons; the rest (SpaceNet PNGs, Dubai, XYZ
tiles) as the training code reads it (0.3 m, stretched), written on a stand-in UTM grid, against its label raster
(touching buildings merge there, as in SpaceNet's masks, so F1 is pessimistic in dense places). Each region goes
through ``geoseg run`` with the model's dense backend (``unet``, ``fastscnn`` or ``contextnet``, never the gate)
and is scored by ``geoseg evaluate``; pixel counts and polygon matches are pooled over P's scenes. Models given
with ``--compare`` (e.g. the shipped ``buildings-unet-r18``) are scored on the same regions; a place in their own
training data is flagged ``seen``. The table gives each place and the mean over places (each place counts once).
``--merge`` joins the reports of folds run in separate processes (no training); ``--write-card`` records the
table in a model card (``metrics.leave_one_place_out``).

``--run OPTIONS`` also scores each fold model with those ``geoseg run`` options (RunOptions fields, comma-separated
KEY=VALUE), one column per ``--run``: the outline options are measured this way, without training again.

A fold whose ``OUT/P/model/best.safetensors`` exists is not trained again (``--resume`` continues an interrupted one).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import yaml

from geoseg.card import ModelCard, resolve_model_path
from geoseg.evaluate import evaluate, pool, write_labelled_region
from geoseg.pipeline import RunOptions, run_scene
from geoseg.regions import validation_regions
from geoseg.config import TrainConfig, load_config, load_scenes, source_place
from geoseg.train import train

def fold_config(base_path: Path, place: str, epochs: int, steps: int, out: Path, changes: dict | None = None) -> Path:
    """The base config without ``place``'s sources, paths absolute, budget and ``changes`` applied; written to
    OUT/config.yaml."""
    raw = yaml.safe_load(base_path.read_text()) | (changes or {})
    config, root = load_config(base_path)
    raw["sources"] = [s for s, parsed in zip(raw["sources"], config.sources) if source_place(parsed) != place]
    raw.update(data_root=str(root), epochs=epochs, steps_per_epoch=steps, name=f"{config.name}-without-{place}")
    if raw.get("init_from"):
        raw["init_from"] = str((base_path.parent / raw["init_from"]).resolve())
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    return out / "config.yaml"


def score(model: str, regions: list[tuple[Path, Path]], out: Path, run_options: dict | None = None) -> dict:
    """Pooled pixel IoU and SpaceNet F1 of ``model`` over the regions, end to end through the pipeline
    (``run_options``: RunOptions fields, e.g. ``{"regularise": True}``). The model's own dense backend (U-Net,
    Fast-SCNN, ContextNet), never the gate: this compares what the models learned."""
    architecture = ModelCard.from_json(resolve_model_path(model).with_suffix(".json")).architecture
    backend = architecture  # every architecture is a backend of its own (geoseg.architectures)
    options = RunOptions(backend=backend, model=model, workers=0, progress=False, formats=["gpkg"],
                         **(run_options or {}))
    results = []
    for image, reference in regions:
        run_scene(image, out, options)
        results.append(evaluate(str(out / image.stem), str(reference)))
    return pool(results)


def sample_scenes(scenes: list, max_mpx: float | None) -> list:
    """At most ``max_mpx`` megapixels of a place's scenes, picked in a fixed random order (seed 0) so they spread
    over the place (Dubai's 63 images are 195 Mpx at 0.3 m); all of them when ``max_mpx`` is None."""
    if max_mpx is None:
        return scenes
    picked, total = [], 0.0
    for i in np.random.default_rng(0).permutation(len(scenes)):
        if picked and total + scenes[i].labels.size / 1e6 > max_mpx:
            continue
        picked.append(scenes[i])
        total += scenes[i].labels.size / 1e6
    return sorted(picked, key=lambda s: s.name)


def variant_folder(variant: str) -> str:
    """The folder under OUT/PLACE/runs/ where a ``--run`` variant's scenes go ("" : the recipe's own, ``recipe``)."""
    return variant.replace("=", "-").replace(",", "_") if variant else "recipe"


def setting_value(text: str):
    """A ``--set``/``--run`` value as YAML reads it, except that a number YAML 1.1 leaves a string (``3e-5``: it
    wants ``3.0e-5``) is a number."""
    value = yaml.safe_load(text)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def seen_places(model: str) -> set[str]:
    card = ModelCard.from_json(resolve_model_path(model).with_suffix(".json"))
    config = TrainConfig.model_validate(card.training.get("config_values", {}))
    return {source_place(s) for s in config.sources}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config")
    parser.add_argument("--out", required=True)
    parser.add_argument("--places", default="dhaka,kampala,banepa,khartoum,dubai")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a recipe variant")
    parser.add_argument("--compare", nargs="*", default=[], help="models scored on the same regions, no training")
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--max-mpx", type=float, default=None, help="score at most this many Mpx of each place")
    parser.add_argument("--run", action="append", default=[], metavar="KEY=VALUE,...",
                        help="also score the fold models with these run options")
    parser.add_argument("--merge", nargs="+", default=[], metavar="REPORT.json",
                        help="no training: join these reports' places (runs split over processes) into OUT/report.json")
    parser.add_argument("--write-card", metavar="MODEL.json",
                        help="record the table (each place, the mean) in that card as metrics.leave_one_place_out")
    args = parser.parse_args()
    base, out = Path(args.config), Path(args.out)
    if args.merge:
        reports = [json.loads(Path(p).read_text()) for p in args.merge]
        report = reports[0] | {"places": {k: v for r in reports for k, v in r["places"].items()},
                               "merged_from": args.merge}
        out.mkdir(parents=True, exist_ok=True)
        return finish(report, out, args.write_card)
    config, root = load_config(base)
    places = args.places.split(",")
    changes = {k: setting_value(v) for k, v in (item.split("=", 1) for item in args.set)}
    report: dict = {"config": str(base), "changes": changes, "max_mpx": args.max_mpx, "budget": {"epochs": args.epochs, "steps_per_epoch": args.steps,
                                                    "batch_size": config.batch_size}, "places": {}}
    all_scenes = load_scenes(config, root)
    for place in places:
        scenes = [s for s in all_scenes if s.place == place]
        if not scenes:
            sys.exit(f"no source of place {place!r} in {base}")
        if args.max_mpx is None:  # the original imagery and footprints where the place has them
            regions = validation_regions(str(base), out / place, "all", place)
        else:  # a spread sample of the scenes as training reads them, against their label rasters
            regions = [write_labelled_region(s, out / place / "regions", config.gsd_m)
                       for s in sample_scenes(scenes, args.max_mpx)]
        fold = out / place / "model"
        if not (fold / "best.safetensors").exists() or args.resume:
            t = time.perf_counter()
            train(fold_config(base, place, args.epochs, args.steps, out / place, changes), fold, resume=args.resume,
                  progress=False, threads=args.threads)
            print(f"{place}: fold trained in {time.perf_counter() - t:.0f} s", file=sys.stderr)
        row = {"recipe": score(str(fold / "best.safetensors"), regions, out / place / "runs" / "recipe")}
        for variant in args.run:
            options = {k: setting_value(v) for k, v in (item.split("=", 1) for item in variant.split(","))}
            row[f"recipe {variant}"] = score(str(fold / "best.safetensors"), regions,
                                             out / place / "runs" / variant_folder(variant), options)
        for model in args.compare:
            row[model] = score(model, regions, out / place / "runs" / Path(model).stem)
            row[model]["seen"] = place in seen_places(model)
        report["places"][place] = row
        (out / "report.json").write_text(json.dumps(report, indent=2))
    finish(report, out, args.write_card)


def finish(report: dict, out: Path, card: str | None) -> None:
    """Print the table (each place, the mean over places: each counts once), write OUT/report.json and, with
    ``card``, the table into that model card."""
    variants = list(next(iter(report["places"].values())))
    print(f"\n{'place':12s} " + " ".join(f"{v[:24]:>26s}" for v in variants))
    for place, row in report["places"].items():
        cells = [f"IoU {row[v]['building_iou']:.3f} F1 {row[v]['spacenet_f1']:.3f}{'*' if row[v].get('seen') else ' '}"
                 for v in variants]
        print(f"{place:12s} " + " ".join(f"{c:>26s}" for c in cells))
    means = {v: {m: round(float(np.mean([r[v][m] for r in report["places"].values()])), 4)
                 for m in ("building_iou", "spacenet_f1")} for v in variants}
    print(f"{'mean':12s} " + " ".join(f"{'IoU %.3f F1 %.3f ' % (means[v]['building_iou'], means[v]['spacenet_f1']):>26s}"
                                      for v in variants))
    print("* the place is in that model's training data")
    report["mean"] = means
    (out / "report.json").write_text(json.dumps(report, indent=2))
    if card:
        card_path = Path(card)
        values = json.loads(card_path.read_text())
        values.setdefault("metrics", {})["leave_one_place_out"] = {
            "what": "each place scored end to end by a model trained without it (benchmarks/leave_one_place_out.py)",
            "budget": report["budget"], "config": report["config"], "changes": report["changes"],
            "mean": means, "places": {p: {v: {m: row[v][m] for m in ("building_iou", "spacenet_f1") if m in row[v]}
                                          for v in variants} for p, row in report["places"].items()}}
        card_path.write_text(json.dumps(values, indent=2) + "\n")


if __name__ == "__main__":
    main()
