"""``geoseg finetune`` on ground the base model never saw: the labels of one part of a place, scored end to end
(``geoseg run`` + ``geoseg evaluate``, pooled) on another part that fine-tuning never touched.

    python benchmarks/bench_finetune.py --out runs/bench-finetune [--places nacala,dhaka,khartoum] [--minutes 8] [--steps N]
        [--threads 2] [--base-unseen runs/buildings-unet-r18-v2.safetensors] [--recipe KEY=VALUE ...]

* ``nacala``: the demo scene (no shipped model saw Nacala) cut into a west and an east half; fine-tuned from the
  shipped default with the OSM-derived outlines of the west half, scored on the east half.
* ``dhaka``: 4 of its 8 chips labelled (the first four by name), the other 4 scored. The shipped default was
  trained on all of Dhaka, so the base here is ``--base-unseen`` (the 3-class model of commit b18c956, trained on
  Banepa, Kampala and Atlanta only: get it with ``git show b18c956:geoseg/models/buildings-unet-r18.safetensors``
  and its ``.json``).
* ``khartoum``: the SpaceNet tile (not georeferenced, a mask, no outlines) written on a stand-in grid as training
  reads it, its mask traced to polygons (touching buildings merge, as in SpaceNet's masks); the top half
  labelled, the bottom half scored; base ``--base-unseen`` as for Dhaka.

``--recipe`` changes how the fit trains (:class:`geoseg.finetune.FitRecipe`: ``lr=3e-5``, ``cosine=true``,
``frozen=encoder``, ``ema_decay=0.98``, ``batch``, ``crop_px``); the default is ``geoseg finetune``'s own.

Prints, per place, the base model and the fine-tuned one on the scored part (pixel IoU, SpaceNet F1, outline
scores), the fine-tune's steps and minutes, and writes OUT/report.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import geopandas as gpd
import numpy as np
import rasterio
from rasterio.windows import Window

from bench_adapt import scored
from geoseg.evaluate import polygons_from_array, write_labelled_region
from geoseg.finetune import FitRecipe, finetune
from geoseg.pipeline import RunOptions
from geoseg.read import Grid

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"


def crop(path: Path, window: Window, out: Path) -> Path:
    """A window of a GeoTIFF as its own GeoTIFF (mask kept)."""
    with rasterio.open(path) as src:
        profile = src.profile | {"width": int(window.width), "height": int(window.height),
                                 "transform": src.window_transform(window)}
        out.parent.mkdir(parents=True, exist_ok=True)
        with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True), rasterio.open(out, "w", **profile) as dst:
            dst.write(src.read(window=window))
            dst.write_mask(src.dataset_mask(window=window))
    return out


def score(model: str, scenes: list[Path], reference: Path, out: Path) -> dict:
    """Pooled scores of ``model``'s dense backend over ``scenes`` against ``reference`` (end to end)."""
    architecture = json.loads(Path(model).with_suffix(".json").read_text())["architecture"] if model.endswith(
        ".safetensors") else "unet"
    options = RunOptions(backend=architecture, model=model, workers=0, progress=False, formats=["gpkg"])
    return scored(options, [(scene, reference) for scene in scenes], out)


def nacala(out: Path) -> tuple[list[Path], list[Path], Path, str | None]:
    demo = Path(__file__).resolve().parents[1] / "geoseg" / "samples" / "nacala.tif"
    with rasterio.open(demo) as ds:
        half = ds.width // 2
        west, east = Window(0, 0, half, ds.height), Window(half, 0, ds.width - half, ds.height)
    return ([crop(demo, west, out / "nacala_west.tif")], [crop(demo, east, out / "nacala_east.tif")],
            DATA / "buildings" / "nacala" / "01.geojson", None)


def dhaka(out: Path, base: str) -> tuple[list[Path], list[Path], Path, str]:
    chips = sorted((DATA / "buildings" / "dhaka" / "chips").glob("*.tif"))
    return chips[:4], chips[4:], DATA / "buildings" / "dhaka" / "buildings.geojson", base


def khartoum(out: Path, base: str) -> tuple[list[Path], list[Path], Path, str]:
    from geoseg.datasets import image_mask_source

    folder = DATA / "buildings" / "khartoum"
    [scene] = image_mask_source(str(folder / "RGB-PanSharpen_AOI_5_Khartoum_img5.png"),
                                str(folder / "RGB-PanSharpen_AOI_5_Khartoum_img5_mask01.png"), 0.3, 0.3)
    image, reference = write_labelled_region(scene, out / "khartoum", 0.3)
    with rasterio.open(reference) as ref:
        labels = ref.read(1)
        grid = Grid(ref.crs.to_wkt(), ref.transform, ref.width, ref.height)
    outlines = out / "khartoum" / "outlines.geojson"
    polygons_from_array(np.where(labels == 1, 1, 0), grid, 1).to_file(outlines)
    with rasterio.open(image) as ds:
        half = ds.height // 2
        top, bottom = Window(0, 0, ds.width, half), Window(0, half, ds.width, ds.height - half)
    return [crop(image, top, out / "khartoum_top.tif")], [crop(image, bottom, out / "khartoum_bottom.tif")], outlines, base


def recipe_from(settings: list[str]) -> FitRecipe:
    """A :class:`FitRecipe` from ``KEY=VALUE`` strings, each value read as its field's type (``frozen``: names
    separated by ``+``)."""
    defaults = FitRecipe()
    changes = {}
    for setting in settings:
        key, _, value = setting.partition("=")
        if not hasattr(defaults, key):
            raise SystemExit(f"--recipe {setting}: no such field of FitRecipe")
        kind = type(getattr(defaults, key))
        changes[key] = (value.lower() in ("1", "true", "yes") if kind is bool else
                        tuple(v for v in value.split("+") if v) if kind is tuple else kind(value))
    return FitRecipe(**changes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True)
    parser.add_argument("--places", default="nacala,dhaka,khartoum")
    parser.add_argument("--minutes", type=float, default=8.0)
    parser.add_argument("--steps", type=int, default=100_000, help="at most this many steps (and --minutes)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--base-unseen", default="runs/buildings-unet-r18-v2.safetensors")
    parser.add_argument("--recipe", action="append", default=[], metavar="KEY=VALUE",
                        help="a FitRecipe field for the fit (repeatable)")
    args = parser.parse_args()
    out = Path(args.out)
    recipe = recipe_from(args.recipe)
    report = {"minutes": args.minutes, "steps": args.steps, "threads": args.threads,
              "recipe": dataclasses.asdict(recipe), "places": {}}
    for place in args.places.split(","):
        maker = {"nacala": lambda o: nacala(o), "dhaka": lambda o: dhaka(o, args.base_unseen),
                 "khartoum": lambda o: khartoum(o, args.base_unseen)}[place]
        labelled, scored, labels, base = maker(out / place)
        base_model = base or "buildings-unet-r18"
        before = score(base_model, scored, labels, out / place / "base")
        started = time.perf_counter()
        model, fit = finetune([str(p) for p in labelled], str(labels), str(out / place / f"{place}-finetuned.safetensors"),
                              base=base, minutes=args.minutes, steps=args.steps, threads=args.threads,
                              progress=True, recipe=recipe)
        minutes = (time.perf_counter() - started) / 60
        after = score(str(model), scored, labels, out / place / "finetuned")
        report["places"][place] = {"base": base_model, "labelled": [str(p) for p in labelled],
                                   "scored": [str(p) for p in scored], "steps": fit.steps, "best_step": fit.best_step,
                                   "minutes": round(minutes, 2), "holdout_before": fit.before,
                                   "holdout_after": fit.after, "scored_base": before, "scored_finetuned": after}
        print(f"{place}: base {base_model}: IoU {before['building_iou']:.3f} F1 {before['spacenet_f1']:.3f} -> "
              f"fine-tuned ({fit.steps} steps, best {fit.best_step}, {minutes:.1f} min): IoU {after['building_iou']:.3f} "
              f"F1 {after['spacenet_f1']:.3f}; matched IoU {before['matched_mean_iou']} -> {after['matched_mean_iou']}, "
              f"rotation {before['rotation_error_deg']} -> {after['rotation_error_deg']} deg, vertex ratio "
              f"{before['vertex_ratio']} -> {after['vertex_ratio']}", flush=True)
        out.mkdir(parents=True, exist_ok=True)
        (out / "report.json").write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
