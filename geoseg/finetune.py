"""``geoseg finetune``: a model fitted to the user's own ground from a few labelled buildings, no YAML.

Inputs are the user's scenes (GeoTIFFs the pipeline accepts) and their building outlines (GeoJSON, GeoPackage,
Shapefile or GeoParquet, any CRS). Everything is checked before any training, with one line each: a labels file
that cannot be read, has no CRS, holds points or lines or no polygon, labels that overlap no image, an image the
pipeline would refuse.

Where the labels are complete (every building there is outlined) is ``--area`` (polygons) if given, else the
labels' extent: the bounding box of all label polygons, cut to each image. Outside it nothing is known: those
pixels count nowhere. Each image's labelled ground is read on the model's grid (only the window around it, so a
large scene costs what its labelled part costs). The last rows holding :data:`HOLDOUT_FRACTION` of each image's
labelled pixels (after a :data:`GAP_PX` gap) are held out: they pick the step (building IoU, checked every
:data:`EVAL_EVERY` steps, the base model itself being step 0) and give the figures in the card. The rest trains
the base model with the training recipe's crops (scale, turns, flips, gain, gamma, sensor augmentation) and loss
(cross-entropy + Dice, separators where outlines touch), AdamW at a small rate, batch-norm statistics kept (a few
crops per step would otherwise replace the base model's). Training stops at ``steps`` or ``minutes``, whichever
comes first; the best step is written (``MODEL.safetensors`` + ``MODEL.json``, whose ``training.finetune``
records the base model and its sha256, the images, labels, area, steps and seconds, and ``metrics.finetune``
the held-out figures before and after). The way pixels become outlines is then chosen on the held-out ground
too, when it holds at least :data:`MIN_SEPARATOR_POLYGONS` buildings, and written into the card: the building
threshold on P(building) (:data:`BUILDING_THRESHOLD_CHOICES`; None: the most probable class) and, with a
separator class, the separator threshold and dilation that split touching buildings (:data:`SEPARATOR_CHOICES`),
by the sum of building pixel IoU and SpaceNet F1 of the held-out outlines; then, at that setting, the confidence
floor below which outlines are left out (:data:`MIN_CONFIDENCE_CHOICES`), by their SpaceNet F1 (pixels do not
change with it).
"""

from __future__ import annotations

import copy
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import geopandas as gpd
import numpy as np
import rasterio
import shapely
import torch
from affine import Affine
from rasterio.features import rasterize
from rasterio.windows import Window, from_bounds

from .card import resolve_model_path
from .datasets import IGNORE, LabelledScene, building_labels, polygons_on_grid, read_label_polygons
from .errors import GeosegError
from .losses import training_loss
from .model import GeoModel, load_model, save_model, use_bf16
from .read import Grid
from .scene import open_scene
from .train import CropSampler, tiled_logits, validate

HOLDOUT_FRACTION = 0.2
GAP_PX = 32
EVAL_EVERY = 20
#: the most labelled ground read per image, megapixels on the model grid (a bigger area: give --area)
MAX_AREA_MPX = 64.0


@dataclass
class LabelledGround:
    """One image's labelled ground on the model grid: pixels, labels (IGNORE outside the area or the imagery),
    which pixels are held out, the grid of the window read, and the label polygons in that grid's CRS."""

    name: str
    pixels: np.ndarray
    labels: np.ndarray
    holdout: np.ndarray
    grid: Grid
    polygons: gpd.GeoDataFrame

    @property
    def train_scene(self) -> LabelledScene:
        labels = self.labels.copy()
        labels[_with_gap(self.holdout)] = IGNORE
        return LabelledScene(self.name, self.pixels, labels, "train", place="own")

    @property
    def holdout_scene(self) -> LabelledScene:
        return LabelledScene(self.name, self.pixels, np.where(self.holdout, self.labels, IGNORE).astype(np.uint8),
                             "val", place="own")


def _with_gap(holdout: np.ndarray) -> np.ndarray:
    """The held-out rows and the :data:`GAP_PX` rows above them (so no training crop sees held-out buildings)."""
    rows = np.nonzero(holdout.any(axis=1))[0]
    out = holdout.copy()
    if rows.size:
        out[max(0, rows[0] - GAP_PX):rows[0]] = True
    return out


def read_polygons_file(path: str | os.PathLike, what: str) -> gpd.GeoDataFrame:
    """Polygons of a labels or area file; one-line errors (see :func:`geoseg.datasets.read_label_polygons`)."""
    if not Path(path).is_file():
        raise GeosegError(f"{what} {path}: no such file")
    frame = read_label_polygons(path)
    if not len(frame):
        raise GeosegError(f"{what} {path}: holds no polygon")
    return frame


def labelled_ground(images: list[str], labels_path: str, area_path: str | None, card) -> tuple[list[LabelledGround], str]:
    """Every image's labelled ground (module docstring), and a sentence saying where labels were taken as complete.
    Raises GeosegError, before any training, for anything that cannot work."""
    labels = read_polygons_file(labels_path, "--labels")
    area = read_polygons_file(area_path, "--area") if area_path else None
    grounds = []
    for image in images:
        opened = open_scene(image, model_gsd_m=card.gsd_m, n_model_bands=len(card.bands))  # the pipeline's checks
        grid = opened.reader.grid
        footprint = shapely.box(*rasterio.transform.array_bounds(grid.height, grid.width, grid.transform))
        here = labels.to_crs(grid.crs)
        here = here[here.intersects(footprint)]
        complete = (area.to_crs(grid.crs).geometry.union_all() if area is not None
                    else shapely.box(*here.total_bounds) if len(here) else shapely.Polygon()).intersection(footprint)
        if complete.is_empty or (area is None and not len(here)):
            continue
        grounds.append(_read_ground(image, opened.reader, grid, complete, here, card))
    if not grounds:
        what = "--area" if area is not None else "--labels"
        raise GeosegError(f"{what} {area_path or labels_path}: overlaps none of the images ({', '.join(images)}); "
                          "are they of the same place, in a CRS that says so?")
    square_m = sum(float((g.labels != IGNORE).sum()) for g in grounds) * card.gsd_m ** 2
    where = (f"inside --area {area_path}" if area is not None else "inside the labels' extent (their bounding box on "
             "each image; give --area where labels are complete to say otherwise)")
    return grounds, f"labels taken as complete {where}: {square_m:,.0f} m2 on {len(grounds)} image(s)"


def _read_ground(image: str, reader, grid: Grid, complete, polygons: gpd.GeoDataFrame, card) -> LabelledGround:
    """The window of the model grid around ``complete``: pixels, labels, held-out rows."""
    window = from_bounds(*complete.bounds, transform=grid.transform).round_offsets().round_lengths()
    window = window.intersection(Window(0, 0, grid.width, grid.height))
    if window.width * window.height / 1e6 > MAX_AREA_MPX:
        raise GeosegError(f"{image}: the labelled ground is {window.width * window.height / 1e6:.0f} Mpx on the model's "
                          f"grid (at most {MAX_AREA_MPX:g}); give --area for a smaller part where labels are complete")
    pixels, valid = reader.read_tile(window)
    h, w = int(window.height), int(window.width)
    sub = Grid(grid.crs_wkt, grid.transform @ Affine.translation(window.col_off, window.row_off), w, h)
    labels = building_labels(polygons_on_grid(polygons, sub), card.separator_class)
    inside = rasterize([complete], out_shape=(h, w), transform=sub.transform, fill=0, dtype="uint8").astype(bool)
    known = inside & valid
    labels[~known] = IGNORE
    return LabelledGround(Path(image).stem, pixels, labels, holdout_rows(known, HOLDOUT_FRACTION), sub,
                          polygons.clip(shapely.box(*rasterio.transform.array_bounds(h, w, sub.transform))))


def holdout_rows(known: np.ndarray, fraction: float) -> np.ndarray:
    """The last rows of ``known`` that hold ``fraction`` of its pixels (whole rows, so the held-out ground is one
    strip), as a mask of known pixels."""
    per_row = known.sum(axis=1)
    if not per_row.sum():
        return np.zeros_like(known)
    from_bottom = np.cumsum(per_row[::-1])[::-1]  # known pixels in this row and below
    first = int(np.argmax(from_bottom <= fraction * per_row.sum()))
    out = np.zeros_like(known)
    out[first:] = known[first:]
    return out


def holdout_scores(net: GeoModel, grounds: list[LabelledGround], autocast: bool) -> dict:
    """Building IoU, precision and recall on the held-out pixels of every image, pooled (training's validation)."""
    pooled, _ = validate(net, [g.holdout_scene for g in grounds], autocast)
    return {k: pooled[k] for k in ("building_iou", "building_precision", "building_recall", "pixels")}


#: held-out buildings needed before the outline settings are chosen there (fewer: the base model's are kept;
#: picking one of 80 settings on 6 buildings is noise)
MIN_SEPARATOR_POLYGONS = 30
#: the separator settings tried on the held-out ground after fitting (threshold 0-1, dilation px)
SEPARATOR_CHOICES = tuple((t, d) for t in (0.05, 0.1, 0.2, 0.3, 0.5) for d in (0, 1, 2, 3))
#: the building thresholds tried there (P(building) 0-1; None: the most probable class)
BUILDING_THRESHOLD_CHOICES = (None, 0.4, 0.3, 0.2)
#: the confidence floors tried there once the others are chosen (mean P(building) 0-1; None: every outline kept)
MIN_CONFIDENCE_CHOICES = (None, 0.5, 0.6, 0.65, 0.7)


@dataclass(frozen=True)
class OutlineSetting:
    """How predicted pixels become outlines: the building threshold (None: most probable class), the
    separator threshold (0-1) and dilation (px) that split touching buildings, and the confidence floor under
    which an outline is left out (None: none)."""

    building_threshold: float | None
    separator_threshold: float
    separator_dilate_px: int
    min_confidence: float | None = None

    @classmethod
    def of(cls, card) -> "OutlineSetting":
        return cls(card.building_threshold, card.separator_threshold, card.separator_dilate_px, card.min_confidence)


def outline_choices(card) -> tuple[OutlineSetting, ...]:
    """Every setting :func:`finetune` tries for ``card``'s model, the card's own first."""
    separators = SEPARATOR_CHOICES if card.separator_class is not None else ((card.separator_threshold,
                                                                                card.separator_dilate_px),)
    tried = [OutlineSetting(b, t, d, card.min_confidence) for b in BUILDING_THRESHOLD_CHOICES for t, d in separators]
    own = OutlineSetting.of(card)
    return (own, *[c for c in tried if c != own])


def floor_choices(setting: OutlineSetting) -> tuple[OutlineSetting, ...]:
    """``setting`` with each confidence floor :func:`finetune` tries, its own first."""
    return (setting, *[replace(setting, min_confidence=f) for f in MIN_CONFIDENCE_CHOICES if f != setting.min_confidence])


def class_probabilities(net: GeoModel, pixels: np.ndarray, autocast: bool, tile_px: int = 1024) -> np.ndarray:
    """Class probabilities (C, h, w) of an in-memory image, in tiles as training's validation predicts
    (:func:`geoseg.train.tiled_logits`: a labelled ground of up to :data:`MAX_AREA_MPX` is not one forward pass)."""
    out = np.zeros((len(net.card.classes), *pixels.shape[1:]), np.float32)
    for r, c, logits in tiled_logits(net, pixels, autocast, tile_px):
        out[:, r:r + logits.shape[1], c:c + logits.shape[2]] = logits.float().softmax(0).numpy()
    return out


def holdout_probabilities(net: GeoModel, grounds: list[LabelledGround], autocast: bool) -> list[np.ndarray]:
    """Class probabilities of each labelled ground (:func:`class_probabilities`): one forward pass, which every
    :func:`holdout_polygon_scores` call of the same weights can share."""
    return [class_probabilities(net, g.pixels, autocast) for g in grounds]


def holdout_polygon_scores(net: GeoModel, grounds: list[LabelledGround], autocast: bool,
                           choices: tuple[OutlineSetting, ...], min_area_m2: float = 4.0,
                           probabilities: list[np.ndarray] | None = None) -> dict:
    """Building pixel IoU and SpaceNet F1 on the held-out ground for each :class:`OutlineSetting`: pixels as the
    pipeline's stitch stage labels them, buildings traced as its vectorise stage traces them
    (:func:`geoseg.vectorise.pieces_in_window`, whole image one window) and left out under the setting's
    ``min_confidence`` as the pipeline does, predicted and reference outlines both kept where their representative
    point is held out; in pixel units. ``probabilities``: :func:`holdout_probabilities` of these weights, if
    already computed. Returns ``{setting: scores}``."""
    from .evaluate import spacenet_scores
    from .metrics import building_scores, pixel_counts
    from .stitch import chunk_rasters
    from .vectorise import VectorParams, confident, pieces_in_window

    card = net.card
    min_px = min_area_m2 / card.gsd_m ** 2
    predicted: dict = {c: [] for c in choices}
    pixels = {b: np.zeros(3, np.int64) for b in {c.building_threshold for c in choices}}  # tp, fp, fn
    reference = []
    if probabilities is None:
        probabilities = holdout_probabilities(net, grounds, autocast)
    for g, probs in zip(grounds, probabilities):
        valid = g.labels != IGNORE
        truth = np.isin(g.labels, [c for c in (card.building_class, card.separator_class) if c is not None])
        scored = valid & g.holdout
        whole = Window(0, 0, g.grid.width, g.grid.height)
        def held(poly, holdout=g.holdout) -> bool:  # where its representative point lies
            point = poly.representative_point()
            return bool(holdout[min(int(point.y), holdout.shape[0] - 1), min(int(point.x), holdout.shape[1] - 1)])

        for b in pixels:
            rasters = chunk_rasters(probs, valid, card.building_class, card.separator_class, b)
            pixels[b] += pixel_counts(rasters.labels == card.building_class, truth, scored)
            splits = dict.fromkeys((c.separator_threshold, c.separator_dilate_px) for c in choices
                                   if c.building_threshold == b)
            for t, d in splits:  # traced once; the settings that differ only in their floor filter the same pieces
                params = VectorParams(card.building_class, building_threshold=b, separator_threshold=t,
                                      separator_dilate_px=d)
                final, border = pieces_in_window(rasters.labels, rasters.probability, rasters.separator, whole,
                                                 g.grid, g.grid.width + g.grid.height, params)
                kept = [p for p in final + border if p.pixels >= min_px and held(p.polygon)]
                for c in choices:
                    if (c.building_threshold, c.separator_threshold, c.separator_dilate_px) == (b, t, d):
                        predicted[c] += [p.polygon for p in kept if confident(p, c.min_confidence)]
        to_px = ~g.grid.transform
        for poly in g.polygons.to_crs(g.grid.crs).explode(index_parts=False).geometry:
            px = shapely.affinity.affine_transform(poly, [to_px.a, to_px.b, to_px.d, to_px.e, to_px.c, to_px.f])
            if not px.is_empty and px.area >= min_px and held(px):
                reference.append(px)
    frame = lambda polys: gpd.GeoDataFrame(geometry=polys)  # noqa: E731
    return {c: spacenet_scores(frame(polys), frame(reference)) | building_scores(*pixels[c.building_threshold])
            for c, polys in predicted.items()}


@dataclass
class FitResult:
    """What :func:`fit` did: the best step (0: the starting weights), steps run, seconds, and the held-out scores
    at the start and at the best step."""

    best_step: int
    steps: int
    seconds: float
    before: dict
    after: dict


@dataclass(frozen=True)
class FitRecipe:
    """How :func:`fit` trains. AdamW at ``lr`` (weight decay 1e-4), constant or, with ``cosine``, falling to 0 by
    the end of the budget (whichever of steps and seconds is nearer its end); ``batch`` crops of ``crop_px``
    pixels a step. ``frozen``: names of the net's parts whose weights stay as they are (e.g. ``("encoder",)``).
    ``ema_decay`` > 0: the held-out ground judges, and the best step keeps, an exponential moving average of
    the weights (updated every step with that decay) instead of the weights as trained. The default is what
    ``geoseg finetune`` and ``--adapt`` use; the others are measured by ``benchmarks/bench_finetune.py --recipe``."""

    lr: float = 1e-4
    cosine: bool = False
    batch: int = 4
    crop_px: int = 256
    frozen: tuple[str, ...] = ()
    ema_decay: float = 0.0


def fit(net: GeoModel, train: list[LabelledScene], holdout: list[LabelledGround] | None, *, steps: int,
        seconds: float, seed: int = 0, recipe: FitRecipe = FitRecipe(), pixel_weight=None,
        progress: bool = True) -> FitResult:
    """Fine-tune ``net`` in place on crops of ``train`` for at most ``steps`` steps and ``seconds``, as ``recipe``
    says; with ``holdout``, keep the step that scores best there (checked every :data:`EVAL_EVERY` steps and at
    the end). Batch-norm layers stay in eval mode (their statistics are the base model's, or those
    :mod:`geoseg.adapt` set). ``pixel_weight(x, y)``, if given, weighs each pixel's cross-entropy."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    sampler = CropSampler(train, recipe.crop_px, rng, sensors=True)
    autocast = use_bf16("auto")
    frozen = [p for name in recipe.frozen for p in getattr(net, name).parameters() if p.requires_grad]
    for p in frozen:
        p.requires_grad_(False)
    optimiser = torch.optim.AdamW([p for p in net.parameters() if p.requires_grad], lr=recipe.lr, weight_decay=1e-4)
    net.eval()
    judged = copy.deepcopy(net) if recipe.ema_decay > 0 else net
    started = time.perf_counter()
    before = holdout_scores(judged, holdout, autocast) if holdout else {}
    best, best_step, best_state = before, 0, copy.deepcopy(judged.state_dict()) if holdout else None
    step = 0
    while step < steps and time.perf_counter() - started < seconds:
        if recipe.cosine:
            done = max(step / steps, (time.perf_counter() - started) / seconds)
            for group in optimiser.param_groups:
                group["lr"] = recipe.lr * 0.5 * (1 + math.cos(math.pi * min(done, 1.0)))
        x, y = sampler.batch(recipe.batch)
        weight = pixel_weight(x, y) if pixel_weight is not None else None
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            loss, _ = training_loss(net, net.prepare(x), y, None, weight)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        if judged is not net:
            with torch.no_grad():
                for averaged, trained in zip(judged.parameters(), net.parameters()):
                    averaged.mul_(recipe.ema_decay).add_(trained.detach(), alpha=1 - recipe.ema_decay)
        step += 1
        last = step == steps or time.perf_counter() - started >= seconds
        if holdout and (step % EVAL_EVERY == 0 or last):
            scores = holdout_scores(judged, holdout, autocast)
            if scores["building_iou"] > best["building_iou"]:
                best, best_step, best_state = scores, step, copy.deepcopy(judged.state_dict())
            if progress:
                print(f"geoseg: step {step}: loss {float(loss.detach()):.3f}, held-out building IoU {scores['building_iou']:.3f} "
                      f"(best {best['building_iou']:.3f} at step {best_step})", file=sys.stderr, flush=True)
    for p in frozen:  # as they were
        p.requires_grad_(True)
    if best_state is not None:
        net.load_state_dict(best_state)
    elif judged is not net:
        net.load_state_dict(judged.state_dict())
    return FitResult(best_step if holdout else step, step, round(time.perf_counter() - started, 1), before,
                     best if holdout else {})


def finetune(images: list[str], labels: str, out: str, base: str | None = None, area: str | None = None,
             minutes: float = 10.0, steps: int = 100_000, seed: int = 0, threads: int | None = None,
             progress: bool = True, recipe: FitRecipe = FitRecipe()) -> tuple[Path, FitResult]:
    """``geoseg finetune`` (module docstring); returns the written weights' path and what the fit did."""
    out_path = Path(out)
    if out_path.suffix != ".safetensors":
        raise GeosegError(f"-o {out}: name the weights NAME.safetensors (the card NAME.json is written beside them)")
    if not (math.isfinite(minutes) and minutes > 0) or steps < 1:
        raise GeosegError(f"--minutes {minutes} / --steps {steps}: a positive time and at least one step")
    base_path = resolve_model_path(base)
    net, base_sha256 = load_model(base_path)
    if net.card.architecture not in ("unet", "fastscnn", "contextnet"):
        raise GeosegError(f"--base {base_path.stem}: fine-tuning takes an encoder-decoder model (unet, fastscnn, "
                          f"contextnet), not {net.card.architecture}")
    grounds, where = labelled_ground(images, labels, area, net.card)
    if progress:
        print(f"geoseg: {where}; {HOLDOUT_FRACTION:.0%} held out (the last rows of each)", file=sys.stderr, flush=True)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(threads or os.cpu_count() or 1)
    autocast = use_bf16("auto")
    base_setting = OutlineSetting.of(net.card)
    base_f1 = holdout_polygon_scores(net, grounds, autocast, (base_setting,))[base_setting]["spacenet_f1"]
    result = fit(net, [g.train_scene for g in grounds], grounds, steps=steps, seconds=minutes * 60, seed=seed,
                 recipe=recipe, progress=progress)
    result.before = dict(result.before, spacenet_f1=base_f1)
    card = net.card
    probabilities = holdout_probabilities(net, grounds, autocast)  # of the fitted weights: both choices use them
    tried = holdout_polygon_scores(net, grounds, autocast, outline_choices(card), probabilities=probabilities)
    best = base_setting
    if tried[base_setting]["reference_polygons"] >= MIN_SEPARATOR_POLYGONS:  # the outline settings, fitted here too
        best = max(tried, key=lambda c: (tried[c]["building_iou"] + tried[c]["spacenet_f1"], c == base_setting))
        tried = holdout_polygon_scores(net, grounds, autocast, floor_choices(best),  # then the floor, by F1
                                       probabilities=probabilities)
        best = max(tried, key=lambda c, first=best: (tried[c]["spacenet_f1"], c == first))
    card.building_threshold, card.separator_threshold, card.separator_dilate_px, card.min_confidence = (
        best.building_threshold, best.separator_threshold, best.separator_dilate_px, best.min_confidence)
    chosen = tried[best]
    result.after = dict(result.after, spacenet_f1=chosen["spacenet_f1"], **asdict(best),
                        polygons=chosen["reference_polygons"])
    if best.building_threshold != base_setting.building_threshold:
        result.after["building_iou_at_threshold"] = chosen["building_iou"]
    card.name = out_path.stem
    card.trained = True
    card.training = {"finetune": {"base": base_path.stem, "base_sha256": base_sha256, "images": list(images),
                                  "labels": str(labels), "area": str(area) if area else "the labels' extent",
                                  "labelled_m2": round(sum(float((g.labels != IGNORE).sum()) for g in grounds)
                                                       * card.gsd_m ** 2, 1),
                                  "holdout_fraction": HOLDOUT_FRACTION, "steps": result.steps,
                                  "best_step": result.best_step, "seconds": result.seconds, "seed": seed,
                                  "recipe": asdict(recipe)},
                     "base_training": card.training}
    card.metrics = {"finetune": {"holdout_before": result.before, "holdout_after": result.after}}
    save_model(net, out_path)
    return out_path, result
