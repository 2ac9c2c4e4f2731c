"""Augmentation across places, on a batch of crops: what one city's imagery can borrow from another's.

* :func:`match_histogram`: a crop's per-band histogram moved towards another crop's (quantile mapping, blended by
  ``strength`` 0-1): the colours, brightness and contrast of another sensor, season or city, on this crop's
  roofs. Randomised histogram matching is a known remedy for domain shift between cities.
* :func:`cutmix`: a rectangle of another crop, pixels and labels together, pasted in (CutMix): buildings of one
  place on the ground of another, and sharp label edges where the two meet.

Crops are ``(bands, h, w)`` float32 in [0, 1] with labels ``(h, w)``; partners are drawn from another place when
the batch has one. Every random draw comes from the caller's generator, so a seeded training run is repeatable.
"""

from __future__ import annotations

import numpy as np


def match_histogram(x: np.ndarray, reference: np.ndarray, strength: float) -> np.ndarray:
    """``x`` with each band's values moved ``strength`` (0: unchanged, 1: fully) of the way to the values of the
    same rank in ``reference`` (another crop of any size)."""
    out = np.empty_like(x)
    for b in range(x.shape[0]):
        order = np.argsort(x[b], axis=None, kind="stable")
        values = np.sort(reference[b], axis=None)
        at = np.rint(np.linspace(0, values.size - 1, order.size)).astype(np.int64)  # the same rank in the reference
        target = np.empty(order.size, np.float32)
        target[order] = values[at]
        out[b] = (1 - strength) * x[b] + strength * target.reshape(x[b].shape)
    return np.clip(out, 0, 1).astype(np.float32, copy=False)


def partner(i: int, places: list[str], rng: np.random.Generator) -> int:
    """Another crop of the batch, of another place where there is one."""
    others = [j for j, p in enumerate(places) if p != places[i]] or [j for j in range(len(places)) if j != i]
    return int(others[rng.integers(len(others))]) if others else i


def cutmix(x: np.ndarray, y: np.ndarray, x_from: np.ndarray, y_from: np.ndarray,
           rng: np.random.Generator, side: tuple[float, float] = (0.25, 0.6)) -> tuple[np.ndarray, np.ndarray]:
    """``x``/``y`` with a random rectangle (each side ``side`` of the crop's) replaced by the same rectangle of
    ``x_from``/``y_from`` (same size crops)."""
    h, w = y.shape
    rh, rw = (int(round(n * rng.uniform(*side))) for n in (h, w))
    r0, c0 = int(rng.integers(0, h - rh + 1)), int(rng.integers(0, w - rw + 1))
    x, y = x.copy(), y.copy()
    x[:, r0:r0 + rh, c0:c0 + rw] = x_from[:, r0:r0 + rh, c0:c0 + rw]
    y[r0:r0 + rh, c0:c0 + rw] = y_from[r0:r0 + rh, c0:c0 + rw]
    return x, y


def mix_batch(crops: list[tuple[np.ndarray, np.ndarray]], places: list[str], rng: np.random.Generator,
              histogram_p: float, cutmix_p: float) -> list[tuple[np.ndarray, np.ndarray]]:
    """Each crop, with probability ``histogram_p``, histogram-matched (strength 0.5-1) to a partner; then, with
    probability ``cutmix_p``, given a partner's rectangle. Partners are read as they were before this batch's
    mixing. With both probabilities 0 nothing is drawn from ``rng``."""
    if histogram_p <= 0 and cutmix_p <= 0:
        return crops
    source = list(crops)
    mixed = []
    for i, (x, y) in enumerate(source):
        if histogram_p > 0 and rng.random() < histogram_p:
            x = match_histogram(x, source[partner(i, places, rng)][0], rng.uniform(0.5, 1.0))
        if cutmix_p > 0 and rng.random() < cutmix_p:
            j = partner(i, places, rng)
            x, y = cutmix(x, y, *source[j], rng)
        mixed.append((x, y))
    return mixed
