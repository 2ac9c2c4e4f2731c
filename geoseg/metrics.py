"""Pixel metrics, one implementation for training's validation, ``geoseg evaluate`` and the benchmarks: a
confusion matrix over known pixels, building IoU / precision / recall from counts, per-class and mean IoU, and the
separator class folded into building (the classes the published mask has)."""

from __future__ import annotations

import numpy as np

from .datasets import IGNORE


def pixel_counts(predicted: np.ndarray, truth: np.ndarray, known: np.ndarray) -> tuple[int, int, int]:
    """True positive, false positive and false negative pixels of boolean building rasters, where ``known``."""
    p, t = predicted & known, truth & known
    return int((p & t).sum()), int((p & ~t).sum()), int((~p & t).sum())


def building_scores(tp: float, fp: float, fn: float) -> dict:
    """Building IoU, precision and recall (0-1, 4 decimals) from pixel counts; 0 where a denominator is 0."""
    return {"building_iou": round(float(tp / max(tp + fp + fn, 1)), 4),
            "building_precision": round(float(tp / max(tp + fp, 1)), 4),
            "building_recall": round(float(tp / max(tp + fn, 1)), 4)}


def confusion(pred: np.ndarray, target: np.ndarray, n_classes: int) -> np.ndarray:
    """(true, predicted) pixel counts, ``n_classes`` square, over pixels whose target is not :data:`IGNORE`."""
    known = target != IGNORE
    return np.bincount(target[known].astype(np.int64) * n_classes + pred[known], minlength=n_classes**2).reshape(n_classes, n_classes)


def metrics_from_confusion(matrix: np.ndarray, classes: list[str], building_class: int) -> dict:
    """Per-class IoU, mean IoU, and building IoU / precision / recall from a (true, predicted) confusion matrix."""
    tp = np.diag(matrix).astype(float)
    fp, fn = matrix.sum(0) - tp, matrix.sum(1) - tp
    iou = tp / np.maximum(tp + fp + fn, 1)
    b = building_class
    return {
        **building_scores(tp[b], fp[b], fn[b]),
        "mean_iou": round(float(iou.mean()), 4),
        "class_iou": {name: round(float(v), 4) for name, v in zip(classes, iou)},
        "pixels": int(matrix.sum()),
    }


def fold_separator(matrix: np.ndarray, building_class: int, separator_class: int | None) -> np.ndarray:
    """A confusion matrix with the separator class counted as building (the published mask's classes)."""
    if separator_class is None:
        return matrix
    m = matrix.copy()
    m[building_class] += m[separator_class]
    m[:, building_class] += m[:, separator_class]
    return np.delete(np.delete(m, separator_class, 0), separator_class, 1)
