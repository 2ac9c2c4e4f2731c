"""A procedurally drawn, georeferenced sample scene (no fetched imagery may be committed).

The scene is drawn in independent blocks of ``block_px`` pixels and written window by window, so a
20000 x 20000 px scene needs only a few blocks in memory. Each block gets a building density from a smooth
field over the scene (dense quarters, sparse outskirts, empty fields and water), and holds bare ground with
texture, a road along its top and left edges, trees, sometimes a pond, and rectangular roofs with shadows.
The CRS is UTM zone 36N (EPSG:32636, around Kampala), the pixel size ``gsd_m`` metres.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import rasterio
from affine import Affine
from PIL import Image, ImageDraw, ImageFilter
from rasterio.windows import Window

from .atomic import atomic_path

DEMO_CRS = "EPSG:32636"
DEMO_ORIGIN = (452_000.0, 40_000.0)  # UTM easting/northing of the top-left corner, metres

ROOF_COLOURS = [(178, 74, 52), (150, 150, 155), (205, 200, 190), (120, 60, 45), (90, 95, 110), (220, 215, 205)]


def building_density(row: float, col: float) -> float:
    """Smooth density in [0, 1] over scene coordinates given as fractions (0-1) of the scene's size."""
    town = math.exp(-((row - 0.35) ** 2 + (col - 0.4) ** 2) / 0.05)
    village = 0.6 * math.exp(-((row - 0.8) ** 2 + (col - 0.8) ** 2) / 0.01)
    return min(1.0, town + village)


def draw_block(rng: np.random.Generator, block_px: int, gsd_m: float, density: float) -> np.ndarray:
    """One block as uint8 RGB (block_px, block_px, 3)."""
    m = lambda metres: max(1, int(round(metres / gsd_m)))  # noqa: E731 - metres to pixels
    base = np.array([150, 135, 100]) if rng.random() < 0.6 else np.array([105, 125, 70])
    noise = rng.normal(0, 9, (block_px // 8 + 1, block_px // 8 + 1, 3))
    ground = np.kron(noise, np.ones((8, 8, 1)))[:block_px, :block_px] + base
    img = Image.fromarray(np.clip(ground, 0, 255).astype(np.uint8), "RGB").filter(ImageFilter.GaussianBlur(3))
    draw = ImageDraw.Draw(img)
    road_w = m(6)
    draw.rectangle([0, 0, block_px, road_w], fill=(95, 95, 92))
    draw.rectangle([0, 0, road_w, block_px], fill=(95, 95, 92))
    if density < 0.15 and rng.random() < 0.3:  # a pond where few people live
        cx, cy, r = rng.integers(block_px // 4, 3 * block_px // 4, 2).tolist() + [m(rng.uniform(8, 20))]
        draw.ellipse([cx - r, cy - r * 0.7, cx + r, cy + r * 0.7], fill=(40, 70, 95))
    area_factor = (block_px * gsd_m / 153.6) ** 2  # counts below are per 153.6 m x 153.6 m of ground
    for _ in range(int(rng.poisson((6 + 10 * (1 - density)) * area_factor))):
        cx, cy = rng.integers(road_w, block_px, 2)
        r = m(rng.uniform(1.5, 4))
        shade = int(rng.integers(-15, 15))
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=(40 + shade, 90 + shade, 35 + shade))
    n_buildings = int(rng.poisson(density * 45 * area_factor))
    shadow = (m(0.9), m(0.9))
    for _ in range(n_buildings):
        w, h = m(rng.uniform(6, 16)), m(rng.uniform(6, 14))
        x0 = int(rng.integers(road_w + m(2), max(road_w + m(3), block_px - w - m(2))))
        y0 = int(rng.integers(road_w + m(2), max(road_w + m(3), block_px - h - m(2))))
        draw.rectangle([x0 + shadow[0], y0 + shadow[1], x0 + w + shadow[0], y0 + h + shadow[1]], fill=(35, 35, 38))
        colour = ROOF_COLOURS[int(rng.integers(len(ROOF_COLOURS)))]
        draw.rectangle([x0, y0, x0 + w, y0 + h], fill=colour)
        draw.line([x0, y0 + h // 2, x0 + w, y0 + h // 2], fill=tuple(max(0, c - 30) for c in colour), width=1)
    return np.asarray(img)


def generate_scene(path: str | os.PathLike, size_px: int = 2048, gsd_m: float = 0.3, seed: int = 0,
                   block_px: int = 512) -> Path:
    """Write a demo GeoTIFF of ``size_px`` x ``size_px`` (tiled, DEFLATE) and return its path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    transform = Affine(gsd_m, 0, DEMO_ORIGIN[0], 0, -gsd_m, DEMO_ORIGIN[1])
    profile = dict(driver="GTiff", width=size_px, height=size_px, count=3, dtype="uint8", crs=DEMO_CRS,
                   transform=transform, tiled=True, blockxsize=256, blockysize=256, compress="deflate",
                   photometric="RGB")
    with atomic_path(path) as tmp, rasterio.open(tmp, "w", **profile) as dst:
        for row in range(0, size_px, block_px):
            for col in range(0, size_px, block_px):
                rng = np.random.default_rng([seed, row, col])
                density = building_density((row + block_px / 2) / size_px, (col + block_px / 2) / size_px)
                block = draw_block(rng, block_px, gsd_m, density)
                h, w = min(block_px, size_px - row), min(block_px, size_px - col)
                dst.write(np.moveaxis(block[:h, :w], -1, 0), window=Window(col, row, w, h))
    return path
