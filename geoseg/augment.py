"""Photometric augmentation that spans sensors: what differs between a drone orthomosaic, a pan-sharpened
WorldView tile and a web-map JPEG of another city, applied to a (3, h, w) float32 crop in [0, 1].

Each step fires with its own probability: saturation (x0.5-1.5) and a hue turn (+-20 degrees about the grey
axis), Gaussian blur (sigma 0.5-1.5 px) or unsharp masking, sensor noise (sigma 0-0.03), and JPEG compression
(quality 30-90). Geometric augmentation (scale, flips, turns) and per-band gain/gamma stay in the crop sampler.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image
from scipy import ndimage


def hue_saturation(x: np.ndarray, hue_deg: float, saturation: float) -> np.ndarray:
    """Turn colours by ``hue_deg`` about the grey axis and scale their distance from grey by ``saturation``."""
    grey = x.mean(axis=0, keepdims=True)
    chroma = x - grey
    axis = np.ones(3) / np.sqrt(3)
    a = np.radians(hue_deg)
    cross = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    turn = np.cos(a) * np.eye(3) + np.sin(a) * cross + (1 - np.cos(a)) * np.outer(axis, axis)  # Rodrigues
    return grey + saturation * np.einsum("ij,jhw->ihw", turn, chroma)


def jpeg(x: np.ndarray, quality: int) -> np.ndarray:
    buffer = io.BytesIO()
    Image.fromarray(np.rint(np.moveaxis(x, 0, -1) * 255).astype(np.uint8), "RGB").save(buffer, "JPEG", quality=quality)
    return np.moveaxis(np.asarray(Image.open(buffer), np.float32) / 255, -1, 0)


def sensor_augment(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One random draw of the module's augmentations; returns a new float32 array in [0, 1]."""
    x = x.astype(np.float32, copy=True)
    if rng.random() < 0.5:
        x = hue_saturation(x, rng.uniform(-20, 20), rng.uniform(0.5, 1.5))
    r = rng.random()
    if r < 0.2:
        x = ndimage.gaussian_filter(x, sigma=(0, *[rng.uniform(0.5, 1.5)] * 2))
    elif r < 0.35:
        x = x + rng.uniform(0.3, 1.0) * (x - ndimage.gaussian_filter(x, sigma=(0, 1.0, 1.0)))
    if rng.random() < 0.3:
        x = x + rng.normal(0, rng.uniform(0, 0.03), x.shape).astype(np.float32)
    x = np.clip(x, 0, 1)
    if rng.random() < 0.2:
        x = jpeg(x, int(rng.integers(30, 91)))
    return x.astype(np.float32, copy=False)
