"""``geoseg evaluate``: building pixel IoU / precision / recall and the SpaceNet polygon metric, across CRSs.

Predictions are a ``geoseg run`` output folder (``mask.tif`` + ``buildings.gpkg``/``.parquet``/``.geojson``) or
a class raster (+ optional polygons). The reference is a vector file (any CRS) or a 0/1 raster.

* Pixel metrics are counted on the prediction's grid: the reference is rasterised (vector) or warped with
  nearest neighbour (raster) onto it; pixels that are nodata in the prediction or unknown in the reference
  are left out.
* SpaceNet metric: predicted and reference polygons in one metric CRS (the scene's own if UTM, else a Lambert
  azimuthal equal-area CRS centred on the scene: see ``geoseg.georeference.scene_metric_crs``), reference
  polygons cut to the prediction's footprint and limited to those whose representative point falls on a valid
  prediction pixel; polygons of either side under ``min_area_m2`` (default 4, as ``geoseg run``) are left out; pairs are matched
  one-to-one, greedily by decreasing IoU, and a match needs IoU >= 0.5. Precision = matches / predictions,
  recall = matches / references, F1 their harmonic mean.
* Outlines of the matched pairs (what Microsoft's footprint releases and PolyWorld report): their mean IoU, the
  mean rotation error of their dominant wall direction (degrees, 0-45; :func:`dominant_angle_deg`), and the
  vertex-count ratio predicted / reference over them (exterior corners; 1 is the reference's detail).
* Instance predictions (polygons with a ``score``, from the Mask R-CNN backends) also get COCO-style mask AP:
  at each IoU threshold 0.50:0.05:0.95, predictions in decreasing score take the best unmatched reference;
  precision is interpolated at 101 recall points; ``mask_ap`` is the mean over thresholds, ``mask_ap50`` the
  first. IoU is that of the polygons (the masks' outlines) in the metric CRS.
"""

from __future__ import annotations

import json
from pathlib import Path

import geopandas as gpd
import numpy as np
import rasterio
import shapely

from .datasets import IGNORE, read_label_polygons, read_on_grid, vector_labels_on_grid
from .errors import GeosegError
from .formats import EVALUATE_ORDER, REGISTRY as FORMATS
from .metrics import building_scores, pixel_counts
from .read import Grid
from .stitch import MASK_NODATA
from .trace import label_polygons
from .georeference import scene_metric_crs

VECTOR_SUFFIXES = (".gpkg", ".parquet", ".geojson", ".shp", ".json", ".fgb")
MATCH_IOU = 0.5


def read_polygons(path: str | Path) -> gpd.GeoDataFrame:
    """Polygons of a vector file, one row per part (see :func:`geoseg.datasets.read_label_polygons`)."""
    frame = read_label_polygons(path)
    keep = ["score", "geometry"] if "score" in frame.columns else ["geometry"]
    return frame.explode(index_parts=False).reset_index(drop=True)[keep]


def polygons_from_array(labels: np.ndarray, grid: Grid, value: int) -> gpd.GeoDataFrame:
    geoms = label_polygons((labels == value).astype(np.uint8), grid.transform).get(1, [])
    return gpd.GeoDataFrame(geometry=gpd.GeoSeries(geoms, crs=grid.crs))


def overlapping_pairs(predicted: gpd.GeoDataFrame, reference: gpd.GeoDataFrame) -> list[tuple[float, int, int]]:
    """(IoU, predicted index, reference index) of every pair of polygons that intersect (same metric CRS)."""
    pred, ref = list(predicted.geometry), list(reference.geometry)
    if not (pred and ref):
        return []
    left, right = shapely.STRtree(ref).query(pred, predicate="intersects")
    pairs = []
    for i, j in zip(left.tolist(), right.tolist()):
        inter = pred[i].intersection(ref[j]).area
        pairs.append((inter / (pred[i].area + ref[j].area - inter), i, j))
    return pairs


def spacenet_scores(predicted: gpd.GeoDataFrame, reference: gpd.GeoDataFrame,
                    pairs: list[tuple[float, int, int]] | None = None) -> dict:
    """One-to-one greedy matching by IoU >= 0.5 (both frames in the same metric CRS); ``pairs`` from
    :func:`overlapping_pairs` when already computed."""
    pred, ref = list(predicted.geometry), list(reference.geometry)
    matches = matched_pairs(overlapping_pairs(predicted, reference) if pairs is None else pairs)
    tp = len(matches)
    precision = tp / len(pred) if pred else 0.0
    recall = tp / len(ref) if ref else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"spacenet_precision": round(precision, 4), "spacenet_recall": round(recall, 4), "spacenet_f1": round(f1, 4),
            "matched": tp, "predicted_polygons": len(pred), "reference_polygons": len(ref),
            **outline_scores(outline_sums([(pred[i], ref[j], iou) for iou, i, j in matches]), tp)}


def matched_pairs(pairs: list[tuple[float, int, int]]) -> list[tuple[float, int, int]]:
    """SpaceNet's one-to-one matching: pairs with IoU >= 0.5, taken greedily by decreasing IoU."""
    matched_pred, matched_ref, matches = set(), set(), []
    for iou, i, j in sorted((p for p in pairs if p[0] >= MATCH_IOU), reverse=True):
        if i not in matched_pred and j not in matched_ref:
            matched_pred.add(i)
            matched_ref.add(j)
            matches.append((iou, i, j))
    return matches


def dominant_angle_deg(polygon) -> float:
    """The direction of a building's walls, in [0, 90) degrees: the edge-length-weighted mean of its exterior's
    edge angles taken modulo 90 (averaged as angles times 4, so that walls at 0 and 90 degrees agree)."""
    ring = np.asarray((polygon.geoms[0] if hasattr(polygon, "geoms") else polygon).exterior.coords)
    dx, dy = np.diff(ring[:, 0]), np.diff(ring[:, 1])
    length, angle = np.hypot(dx, dy), np.arctan2(dy, dx)
    mean = np.arctan2((length * np.sin(4 * angle)).sum(), (length * np.cos(4 * angle)).sum()) / 4
    return float(np.degrees(mean) % 90)


def vertex_count(polygon) -> int:
    """Corners of a building's outline: its exterior ring's vertices, the closing one not counted twice."""
    parts = polygon.geoms if hasattr(polygon, "geoms") else [polygon]
    return sum(len(p.exterior.coords) - 1 for p in parts)


def outline_sums(matches: list[tuple[object, object, float]]) -> dict:
    """Sums over matched (predicted, reference, IoU) pairs from which :func:`outline_scores` are computed (summed
    over regions when pooled)."""
    errors = [abs((dominant_angle_deg(a) - dominant_angle_deg(b) + 45) % 90 - 45) for a, b, _ in matches]
    return {"matched_iou_sum": round(float(sum(iou for _, _, iou in matches)), 6),
            "rotation_error_deg_sum": round(float(sum(errors)), 6),
            "matched_predicted_vertices": sum(vertex_count(a) for a, _, _ in matches),
            "matched_reference_vertices": sum(vertex_count(b) for _, b, _ in matches)}


def outline_scores(sums: dict, matched: int) -> dict:
    """Outline quality of the ``matched`` pairs, as footprint releases (Microsoft's) and PolyWorld report it: their
    mean IoU, their mean dominant-angle rotation error (degrees, 0-45: how far the walls are turned), and the
    vertex-count ratio predicted / reference over all matched pairs (1: as many corners as the reference; a raster
    staircase is far above 1, an over-simplified blob below). None where nothing matched."""
    return {**sums,
            "matched_mean_iou": round(sums["matched_iou_sum"] / matched, 4) if matched else None,
            "rotation_error_deg": round(sums["rotation_error_deg_sum"] / matched, 2) if matched else None,
            "vertex_ratio": round(sums["matched_predicted_vertices"] / sums["matched_reference_vertices"], 3)
            if sums["matched_reference_vertices"] else None}


AP_IOUS = tuple(round(0.5 + 0.05 * i, 2) for i in range(10))


def ap_records(predicted: gpd.GeoDataFrame, reference: gpd.GeoDataFrame,
               pairs: list[tuple[float, int, int]] | None = None) -> list[tuple[float, list[bool]]]:
    """(score, [true positive at each AP_IOUS threshold]) per prediction, in decreasing score."""
    order = np.argsort(-predicted["score"].to_numpy(), kind="stable")
    overlaps: dict[int, list[tuple[float, int]]] = {i: [] for i in range(len(predicted))}
    for iou, i, j in overlapping_pairs(predicted, reference) if pairs is None else pairs:
        overlaps[i].append((iou, j))
    taken = [set() for _ in AP_IOUS]
    records = []
    for i in order.tolist():
        hits = []
        for k, threshold in enumerate(AP_IOUS):
            best = max(((iou, j) for iou, j in overlaps[i] if iou >= threshold and j not in taken[k]), default=None)
            if best is not None:
                taken[k].add(best[1])
            hits.append(best is not None)
        records.append((float(predicted["score"].iloc[i]), hits))
    return records


def average_precision(records: list[tuple[float, list[bool]]], n_reference: int) -> dict:
    """COCO mask AP (mean over AP_IOUS) and AP50 from pooled records (module docstring)."""
    records = sorted(records, key=lambda r: -r[0])
    aps = []
    for k in range(len(AP_IOUS)):
        tp = np.cumsum([r[1][k] for r in records]) if records else np.zeros(0)
        precision = tp / np.arange(1, len(records) + 1) if records else np.zeros(0)
        recall = tp / max(n_reference, 1)
        envelope = np.maximum.accumulate(precision[::-1])[::-1] if len(precision) else precision
        points = [envelope[np.searchsorted(recall, r, side="left")] if np.any(recall >= r) else 0.0
                  for r in np.linspace(0, 1, 101)]
        aps.append(float(np.mean(points)))
    return {"mask_ap": round(float(np.mean(aps)), 4), "mask_ap50": round(aps[0], 4)}


def _prediction_files(prediction: Path, polygons: str | None) -> tuple[Path, Path | None, int]:
    """(class raster, polygon file or None, building class) for a run folder or a raster file."""
    building_class = 1
    if prediction.is_dir():
        mask = prediction / "mask.tif"
        summary = prediction / "summary.json"
        if summary.exists():
            building_class = json.loads(summary.read_text()).get("building_class", 1)
        found = [prediction / FORMATS[k].file_name for k in EVALUATE_ORDER if (prediction / FORMATS[k].file_name).exists()]
        vector = Path(polygons) if polygons else (found[0] if found else None)
    else:
        mask, vector = prediction, Path(polygons) if polygons else None
    if not mask.exists():
        raise GeosegError(f"{mask}: no prediction raster")
    return mask, vector, building_class


def evaluate(prediction: str | Path, reference: str | Path, polygons: str | None = None,
             building_class: int | None = None, min_area_m2: float = 4.0) -> dict:
    """Metrics of a prediction against a reference (see the module docstring)."""
    mask_path, vector_path, found_class = _prediction_files(Path(prediction), polygons)
    building = found_class if building_class is None else building_class
    reference = Path(reference)
    if not reference.exists():
        raise GeosegError(f"{reference}: no such reference file")
    with rasterio.open(mask_path) as src:
        grid = Grid(src.crs.to_wkt(), src.transform, src.width, src.height)
        classes = src.read(1)
    valid = classes != MASK_NODATA
    if reference.suffix.lower() in VECTOR_SUFFIXES:
        truth = vector_labels_on_grid(reference, grid)
        ref_polygons = read_polygons(reference)
    else:
        truth = read_on_grid(reference, grid)
        truth[(truth != IGNORE) & (truth > 0)] = 1
        ref_polygons = polygons_from_array(truth, grid, 1)
    known = valid & (truth != IGNORE)
    tp, fp, fn = pixel_counts(classes == building, truth == 1, known)
    pixel = {**building_scores(tp, fp, fn), "pixels": int(known.sum()), "tp_pixels": tp, "fp_pixels": fp, "fn_pixels": fn}
    predicted = read_polygons(vector_path) if vector_path else polygons_from_array(np.where(valid, classes, MASK_NODATA), grid, building)
    # the scene's own CRS if UTM, else an equal-area one centred on it: defined for any scene, also one with no
    # building on either side (estimate_utm_crs of two empty frames raised) and at the poles
    extent = gpd.GeoDataFrame(geometry=[shapely.box(*rasterio.transform.array_bounds(grid.height, grid.width,
                                                                                      grid.transform))], crs=grid.crs)
    metric = scene_metric_crs(grid)
    predicted, ref_polygons = predicted.to_crs(metric), ref_polygons.to_crs(metric)
    # as SpaceNet does: reference buildings are cut to the image footprint before matching
    footprint = extent.to_crs(metric).geometry.iloc[0]
    ref_polygons_all = ref_polygons
    ref_polygons = ref_polygons.assign(geometry=ref_polygons.geometry.intersection(footprint))
    ref_polygons = ref_polygons[ref_polygons.geometry.area >= min_area_m2].reset_index(drop=True)
    predicted = predicted[predicted.geometry.area >= min_area_m2].reset_index(drop=True)
    points = ref_polygons.representative_point().to_crs(grid.crs)
    rows, cols = rasterio.transform.rowcol(grid.transform, points.x.to_numpy(), points.y.to_numpy())
    rows, cols = np.asarray(rows), np.asarray(cols)
    inside = (rows >= 0) & (rows < grid.height) & (cols >= 0) & (cols < grid.width)
    on_valid = np.zeros(len(ref_polygons), bool)
    on_valid[inside] = valid[rows[inside], cols[inside]]
    reference_kept = ref_polygons[on_valid].reset_index(drop=True)
    pairs = overlapping_pairs(predicted, reference_kept)  # once, for the F1 matching and for AP
    result = {"prediction": str(prediction), "reference": str(reference), **pixel,
              **spacenet_scores(predicted, reference_kept, pairs),
              "warnings": coverage_warnings(len(ref_polygons_all), len(reference_kept), int(known.sum()),
                                            tp + fn)}
    if "score" in predicted.columns:
        records = ap_records(predicted, reference_kept, pairs)
        result |= average_precision(records, int(on_valid.sum())) | {"ap_records": records}
    return result


#: fewer scored pixels than this and a score says little (a 3x3 px reference scored IoU 1.0)
MIN_SCORED_PIXELS = 10_000


def coverage_warnings(reference_total: int, reference_on_scene: int, scored_pixels: int, reference_pixels: int) -> list[str]:
    """What makes the figures meaningless, said instead of printed silently: a reference that misses the scene
    (another place, or x and y swapped), one that holds no building where the scene is, too few pixels."""
    warnings = []
    if reference_total and not reference_on_scene:
        warnings.append(f"none of the reference's {reference_total} polygons falls on the prediction's valid pixels: "
                        "is it of another place, or are x and y swapped?")
    elif not reference_pixels:
        warnings.append("the reference has no building where the prediction has valid pixels: IoU and recall are 0 "
                        "by definition")
    if scored_pixels < MIN_SCORED_PIXELS:
        warnings.append(f"only {scored_pixels} pixels were scored: the figures say little")
    return warnings


POOLED_COUNTS = ("tp_pixels", "fp_pixels", "fn_pixels", "matched", "predicted_polygons", "reference_polygons")
OUTLINE_SUMS = ("matched_iou_sum", "rotation_error_deg_sum", "matched_predicted_vertices", "matched_reference_vertices")


def pool(results: list[dict]) -> dict:
    """Metrics over several regions pooled from their counts (not averaged per region): building pixel IoU, the
    SpaceNet precision, recall and F1, and the outline scores of the matched pairs, with the counts."""
    total = {k: sum(r[k] for r in results) for k in POOLED_COUNTS}
    outlines = {k: sum(r.get(k, 0) for r in results) for k in OUTLINE_SUMS}
    precision = total["matched"] / max(total["predicted_polygons"], 1)
    recall = total["matched"] / max(total["reference_polygons"], 1)
    return {"building_iou": building_scores(total["tp_pixels"], total["fp_pixels"], total["fn_pixels"])["building_iou"],
            "spacenet_precision": round(precision, 4), "spacenet_recall": round(recall, 4),
            "spacenet_f1": round(2 * precision * recall / max(precision + recall, 1e-9), 4), **total,
            **outline_scores(outlines, total["matched"])}


def format_table(result: dict) -> str:
    keys = ("building_iou", "building_precision", "building_recall", "spacenet_f1", "spacenet_precision",
            "spacenet_recall", "matched", "predicted_polygons", "reference_polygons", "matched_mean_iou",
            "rotation_error_deg", "vertex_ratio", "pixels", "mask_ap", "mask_ap50")
    rows = [(k, "-" if result[k] is None else result[k]) for k in keys if k in result]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


#: a stand-in grid for regions written from in-memory scenes (whose source may not be georeferenced)
REGION_CRS, REGION_ORIGIN = "EPSG:32631", (500_000.0, 1_000_000.0)


def write_labelled_region(scene, folder: Path, gsd_m: float) -> tuple[Path, Path]:
    """A :class:`geoseg.datasets.LabelledScene` as the training code reads it (``gsd_m``, stretched) written as a
    uint8 GeoTIFF on a stand-in UTM grid, masked where there is no imagery, and its reference raster (1 building,
    separators included, 0 background, 255 unknown): for scoring sources that are not georeferenced, or not
    polygons, end to end. Touching buildings merge in such a reference, as in SpaceNet's masks."""
    from affine import Affine

    folder.mkdir(parents=True, exist_ok=True)
    stem = scene.name.replace("/", "_").replace(":", "_")
    image, reference = folder / f"{stem}.tif", folder / f"{stem}.reference.tif"
    _, h, w = scene.pixels.shape
    profile = dict(driver="GTiff", width=w, height=h, crs=REGION_CRS, dtype="uint8",
                   transform=Affine(gsd_m, 0, REGION_ORIGIN[0], 0, -gsd_m, REGION_ORIGIN[1]))
    no_imagery = (scene.labels == IGNORE) & (scene.pixels.max(axis=0) == 0)
    with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True), rasterio.open(image, "w", count=3, **profile) as dst:
        dst.write(np.rint(scene.pixels * 255).astype(np.uint8))
        dst.write_mask((~no_imagery).astype(np.uint8) * 255)
    truth = np.where(scene.labels == IGNORE, IGNORE, scene.labels > 0).astype(np.uint8)
    with rasterio.open(reference, "w", count=1, nodata=IGNORE, **profile) as dst:
        dst.write(truth[None])
    return image, reference
