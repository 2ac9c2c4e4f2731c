"""The short cuts of issue 27 against what they replaced, on one thread (prints figures; not a test). Each line:
the plain computation, the short cut, and their ratio, best of 5 on the same deterministic inputs (2048 px, the
size of a chunk core and of a vectorise window). ``tests/test_fast_paths.py`` checks that each gives the same result.

    python benchmarks/bench_fast_paths.py
"""

from __future__ import annotations

import io
import time

import numpy as np
import rasterio
import torch
from affine import Affine
from PIL import Image
from rasterio.features import shapes
from scipy import ndimage

from geoseg.overviews import average_levels
from geoseg.samples import sample_path
from geoseg.stitch import argmax_classes
from geoseg.trace import label_polygons
from geoseg.vectorise import _FOUR_CONNECTED, _dilate_four, _grow_into_separators

SIZE_PX = 2048


def best_s(fn, repeats: int = 5) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return min(times)


def grey_dilation_growth(labels: np.ndarray, separator: np.ndarray, steps: int) -> None:
    """Separator growth as it was before issue 27: a whole-window grey dilation per step."""
    for _ in range(steps):
        take = separator & (labels == 0)
        if not take.any():
            return
        labels[take] = ndimage.grey_dilation(labels, footprint=_FOUR_CONNECTED)[take]


def reshaped_levels(values: np.ndarray, valid: np.ndarray, n_levels: int) -> None:
    """Overview averages by a reshaped ``sum`` (the first version of geoseg.overviews.average_levels)."""
    for _ in range(n_levels):
        h, w = values.shape[0] // 2, values.shape[1] // 2
        sums = np.where(valid, values, 0).astype(np.uint16).reshape(h, 2, w, 2).sum(axis=(1, 3))
        counts = valid.astype(np.uint16).reshape(h, 2, w, 2).sum(axis=(1, 3))
        valid = counts > 0
        values = ((sums + counts // 2) // np.maximum(counts, 1)).astype(np.uint8)


def main() -> None:
    torch.set_num_threads(1)
    rng = np.random.default_rng(27)
    rows = []
    logits = ndimage.gaussian_filter(rng.normal(size=(3, SIZE_PX // 8, SIZE_PX // 8)), (0, 2, 2))
    logits[0] += 0.3  # mostly background, as blended probabilities of a scene are
    smooth = np.exp(ndimage.zoom(logits, (1, 8, 8), order=1)).astype(np.float32)
    probs = smooth / smooth.sum(axis=0)
    rows.append(("argmax over 3 smooth classes", best_s(lambda: probs.argmax(axis=0).astype(np.uint8)),
                 best_s(lambda: argmax_classes(probs))))
    walls = rng.random((SIZE_PX, SIZE_PX)) < 0.02
    rows.append(("separator dilation, 2 px", best_s(lambda: ndimage.binary_dilation(walls, _FOUR_CONNECTED, iterations=2)),
                 best_s(lambda: _dilate_four(walls, 2))))
    blocks = ndimage.binary_dilation(rng.random((SIZE_PX, SIZE_PX)) < 0.002, iterations=6)
    labels, _ = ndimage.label(blocks & ~walls, structure=_FOUR_CONNECTED)
    split = blocks & walls
    rows.append(("separator growth, 4 steps", best_s(lambda: grey_dilation_growth(labels.copy(), split, 4)),
                 best_s(lambda: _grow_into_separators(labels.copy(), split, [], 4))))
    values = rng.integers(0, 256, (SIZE_PX, SIZE_PX), dtype=np.uint8)
    valid = rng.random((SIZE_PX, SIZE_PX)) > 0.01
    rows.append(("3 overview levels (average)", best_s(lambda: reshaped_levels(values, valid, 3)),
                 best_s(lambda: average_levels(values, valid, 3))))
    empty = np.zeros((SIZE_PX, SIZE_PX), np.int32)
    box = np.zeros((30, 30), np.int32)
    box[5:20, 5:25] = 1
    rows.append(("GDAL polygonize: empty window vs a 30 px box", best_s(lambda: list(shapes(empty, mask=empty > 0))),
                 best_s(lambda: label_polygons(box, Affine.identity()))))
    with rasterio.open(sample_path()) as demo:  # real imagery, as a preview shows it
        preview = Image.fromarray(np.moveaxis(demo.read([1, 2, 3]), 0, -1), "RGB")
    rows.append((f"{preview.width} x {preview.height} px demo preview PNG, zlib 6 vs 1", best_s(lambda: preview.save(io.BytesIO(), "png")),
                 best_s(lambda: preview.save(io.BytesIO(), "png", compress_level=1))))
    width = max(len(name) for name, *_ in rows)
    for name, plain, short in rows:
        print(f"{name:<{width}}  {plain * 1e3:8.1f} ms  {short * 1e3:8.1f} ms  {plain / short:5.1f}x")


if __name__ == "__main__":
    main()
