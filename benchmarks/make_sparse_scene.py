"""Build the sparse benchmark scene of the gate: a large georeferenced GeoTIFF where few tiles hold buildings,
made only of real validation-side imagery from ``../shared/data`` (run once; reproducible; output outside the repo).

    python benchmarks/make_sparse_scene.py [--out ~/.cache/geoseg/sparse] [--cells 7] [--seed 0] [--building-cells N]
        [--empty-only]

The scene is ``--cells`` x ``--cells`` cells of 512 x 512 px at the default building model's 0.3 m (7 x 7:
3584 px square, which ``geoseg run`` cuts into 8 x 8 = 64 tiles of 512 px with its 64 px overlap), shuffled
with ``--seed``. Every cell is real imagery that no shipped model trained on, read as training reads it (the
``val`` scenes of ``geoseg/configs/buildings-unet-r18.yaml``):

* **with buildings** (5 of 49 cells, which puts buildings in 11 of the 63 run tiles with imagery, 17 %): Banepa's and Atlanta's held-out rows (strips under 512 px tall,
  their 512 px wide pieces stacked into one cell, so a cell holds no nodata), and Dubai tile_3 windows with at
  least 0.5 % building pixels (the gate's target definition);
* **without** (the rest): Dubai tile_3 windows of desert, roads, water, vegetation and bare land with less than
  0.5 % building pixels (open water, the easiest for a gate, only where the other ground runs out: tile_3 has
  too little of it, and the scene is 45 % water), and the NEON forest scene (``scenes/``, not one of the
  training plots: 133 px at 0.3 m, the rest of its cell is nodata).

Windows inside a Dubai image may overlap by at most half a window (tile_3 is the only validation-side ground of
this kind at 0.3 m: 37 windows without any building at that overlap, none without it) — the cells' file says
which window each is. Written: ``sparse.tif`` (uint8 RGB, internal mask, stand-in UTM 31N grid as
:func:`geoseg.evaluate.write_labelled_region`), ``sparse.reference.tif`` (1 building, 0 background, 255
unknown), ``sparse.yaml`` (a one-source config whose scene is all ``val``, for ``gate_tables.py``/``calibrate``),
``cells.json`` (per cell: source, window in the source's 0.3 m pixels, building fraction), and
``sparse.kinds.tif``: what each pixel is (:data:`KINDS`: Dubai's land-cover classes, the NEON forest, the towns'
ground around their buildings), to tell which kinds of ground open the gate.
"""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

import rasterio

from geoseg.datasets import DUBAI_CLASSES, IGNORE, LabelledScene, dubai_source, read_whole
from geoseg.evaluate import write_labelled_region
from geoseg.tile import tile_grid
from geoseg.config import load_config, load_scenes, source_place

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "geoseg" / "configs" / "buildings-unet-r18.yaml"
FOREST = ROOT / ".." / "shared" / "data" / "scenes" / "neon_forest_rgb_10cm.tif"
CELL_PX, GSD_M, TARGET_FRACTION = 512, 0.3, 0.005
#: cells with buildings: 5 of 49, which gives 11 of the 63 run tiles with imagery (17 %): a run tile (512 px, 448
#: apart) overlaps up to four cells, so more tiles than cells hold a building
BUILDING_CELL_SHARE = 0.1
#: the kinds of ground in ``sparse.kinds.tif`` (value = index; Dubai's classes are 1-5)
KINDS = ["unknown", "building", "land", "road", "vegetation", "water", "forest", "town ground"]


@dataclass
class Cell:
    source: str
    window: tuple[int, int, int, int]  # row, col, height, width in the source at 0.3 m (a folded strip: its first piece)
    pixels: np.ndarray  # (3, 512, 512) float [0, 1]
    labels: np.ndarray  # (512, 512) uint8, IGNORE where unknown
    kinds: np.ndarray | None = None  # (512, 512) uint8 index into KINDS (None: from the labels, town ground)

    @property
    def building_fraction(self) -> float:
        known = self.labels[self.labels != IGNORE]
        return float((known > 0).mean()) if known.size else 0.0


def kinds_of(cell: Cell, landcover: dict[str, np.ndarray]) -> np.ndarray:
    """What each pixel of a cell is (:data:`KINDS`): a Dubai window's land-cover classes, else building / town
    ground from its labels (the forest cell says so itself)."""
    if cell.kinds is not None:
        return cell.kinds
    if cell.source in landcover:
        r, c, h, w = cell.window
        classes = landcover[cell.source][r : r + h, c : c + w]
        return np.where(classes == IGNORE, 0, classes + 1).astype(np.uint8)
    return np.select([cell.labels == 1, cell.labels == 0], [1, 7], 0).astype(np.uint8)


def folded_cell(scene: LabelledScene) -> Cell:
    """A strip shorter than a cell: its 512 px wide pieces stacked until 512 rows (the first rows of the last one)."""
    h, w = scene.labels.shape
    pieces = [(scene.pixels[:, :, c : c + CELL_PX], scene.labels[:, c : c + CELL_PX]) for c in range(0, w - CELL_PX + 1, CELL_PX)]
    pixels = np.concatenate([p for p, _ in pieces], axis=1)[:, :CELL_PX]
    labels = np.concatenate([l for _, l in pieces], axis=0)[:CELL_PX]
    if labels.shape[0] < CELL_PX:
        raise SystemExit(f"{scene.name}: too small to fill a {CELL_PX} px cell")
    return Cell(scene.name, (0, 0, h, w), pixels, labels)


def windows(scene: LabelledScene, wanted, max_overlap: float = 0.5, step_px: int = 64) -> list[Cell]:
    """512 px windows of ``scene`` at least half labelled whose building fraction satisfies ``wanted``, each
    overlapping the ones kept before by at most ``max_overlap`` of its area; scanned row by row."""
    h, w = scene.labels.shape
    kept: list[Cell] = []
    rows = sorted(set(range(0, h - CELL_PX + 1, step_px)) | {h - CELL_PX})
    cols = sorted(set(range(0, w - CELL_PX + 1, step_px)) | {w - CELL_PX})
    for r in rows:
        for c in cols:
            labels = scene.labels[r : r + CELL_PX, c : c + CELL_PX]
            if (labels != IGNORE).mean() < 0.5:
                continue
            cell = Cell(scene.name, (r, c, CELL_PX, CELL_PX), scene.pixels[:, r : r + CELL_PX, c : c + CELL_PX], labels)
            if not wanted(cell.building_fraction):
                continue
            if all(max(0, CELL_PX - abs(r - k.window[0])) * max(0, CELL_PX - abs(c - k.window[1]))
                   <= max_overlap * CELL_PX**2 for k in kept):
                kept.append(cell)
    return kept


def forest_cell() -> Cell:
    """The NEON forest scene at 0.3 m in the top-left corner of a cell; the rest of the cell is nodata."""
    pixels, valid, _ = read_whole(FOREST, GSD_M)
    h, w = valid.shape
    cell = Cell("scenes/neon_forest_rgb_10cm", (0, 0, h, w), np.zeros((3, CELL_PX, CELL_PX), np.float32),
                np.full((CELL_PX, CELL_PX), IGNORE, np.uint8), np.zeros((CELL_PX, CELL_PX), np.uint8))
    cell.pixels[:, :h, :w] = pixels
    cell.labels[:h, :w] = np.where(valid, 0, IGNORE)
    cell.kinds[:h, :w] = np.where(valid, KINDS.index("forest"), 0)
    return cell


def spread(cells: list[Cell], n: int) -> list[Cell]:
    """``n`` cells taken evenly through the list (the list runs image by image: every image contributes)."""
    if n >= len(cells):
        return cells
    return [cells[int(i)] for i in np.linspace(0, len(cells) - 1, n).round()]


def validation_side() -> tuple[dict[str, LabelledScene], list[LabelledScene], dict[str, np.ndarray]]:
    """What the scene is made of, each read once and nothing else: Banepa's and Atlanta's held-out rows (building
    labels, separators counted as building), Dubai tile_3 with building labels, and tile_3's land-cover classes
    (DUBAI_CLASSES) by scene name on the same grid."""
    config, root = load_config(CONFIG)
    towns = [src for src in config.sources if src.kind == "geotiff" and source_place(src) in ("banepa", "atlanta")]
    scenes = {s.name: s for s in load_scenes(config.model_copy(update={"sources": towns}), root, "val")}
    for s in scenes.values():
        s.labels = np.where(s.labels == IGNORE, IGNORE, s.labels > 0).astype(np.uint8)
    src = next(src for src in config.sources if src.kind == "dubai")
    tile_3 = dubai_source(str(root / src.root), GSD_M, src.assumed_gsd_m, ["tile_3"], tiles=["tile_3"])
    landcover = {s.name: s.labels for s in tile_3}
    building = DUBAI_CLASSES.index("building")  # buildings_only labels, from the same read
    dubai = [LabelledScene(s.name, s.pixels, np.where(s.labels == IGNORE, IGNORE, s.labels == building).astype(np.uint8),
                           "val") for s in tile_3]
    return scenes, dubai, landcover


def choose_cells(n_cells: int, scenes: dict[str, LabelledScene], dubai: list[LabelledScene],
                 landcover: dict[str, np.ndarray], n_building: int | None = None, empty_only: bool = False) -> list[Cell]:
    """The scene's cells: ``n_building`` with buildings (default :data:`BUILDING_CELL_SHARE` of them; the two
    towns' held-out rows first, then Dubai windows), the rest without (``empty_only``: without a single building
    pixel, windows overlapping by up to 3/4 to find enough of them: the rural case)."""
    towns = [folded_cell(scenes["banepa:val"]), folded_cell(scenes["atlanta:val"])]
    n_building = round(BUILDING_CELL_SHARE * n_cells) if n_building is None else n_building
    if not 1 <= n_building < n_cells:
        raise SystemExit(f"--building-cells {n_building}: between 1 and {n_cells - 1}")
    with_buildings = towns[:n_building] + spread(
        [c for s in dubai for c in windows(s, lambda f: f >= TARGET_FRACTION)], max(n_building - len(towns), 0))
    if empty_only:
        without_buildings = [c for s in dubai for c in windows(s, lambda f: f == 0, max_overlap=0.75)]
    else:
        without_buildings = [c for s in dubai for c in windows(s, lambda f: f < TARGET_FRACTION)]
    n_without = n_cells - len(with_buildings) - 1
    # open water is the easiest ground for a gate: a quarter of the cells, more only where the land runs out
    is_water = [(kinds_of(c, landcover) == KINDS.index("water")).mean() >= 0.5 for c in without_buildings]
    water = [c for c, w in zip(without_buildings, is_water) if w]
    land = [c for c, w in zip(without_buildings, is_water) if not w]
    n_water = max(n_without // 4, n_without - len(land))
    without = [forest_cell()] + spread(land, n_without - n_water) + spread(water, n_water)
    if len(with_buildings) + len(without) < n_cells:
        raise SystemExit(f"only {len(with_buildings) + len(without)} cells of real validation ground for {n_cells}")
    return with_buildings + without


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.path.expanduser("~/.cache/geoseg/sparse"))
    parser.add_argument("--cells", type=int, default=7, help="cells per side (512 px each)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--building-cells", type=int, default=None,
                        help=f"cells with buildings (default {BUILDING_CELL_SHARE * 100:.0f}%% of them: 5 of 49); 1 or 2 "
                             "give the rural case, the towns' held-out rows only")
    parser.add_argument("--empty-only", action="store_true", help="cells without buildings hold no building pixel "
                        "at all (Dubai windows may then overlap by 3/4): the rural case")
    args = parser.parse_args()
    out = Path(args.out)
    n = args.cells
    scenes, dubai, landcover = validation_side()
    cells = choose_cells(n * n, scenes, dubai, landcover, args.building_cells, args.empty_only)
    order = np.random.default_rng(args.seed).permutation(len(cells))
    pixels = np.zeros((3, n * CELL_PX, n * CELL_PX), np.float32)
    labels = np.full((n * CELL_PX, n * CELL_PX), IGNORE, np.uint8)
    kinds = np.zeros((n * CELL_PX, n * CELL_PX), np.uint8)
    table = []
    for slot, i in enumerate(order):
        cell = cells[i]
        r, c = divmod(slot, n)
        pixels[:, r * CELL_PX : (r + 1) * CELL_PX, c * CELL_PX : (c + 1) * CELL_PX] = cell.pixels
        labels[r * CELL_PX : (r + 1) * CELL_PX, c * CELL_PX : (c + 1) * CELL_PX] = cell.labels
        kinds[r * CELL_PX : (r + 1) * CELL_PX, c * CELL_PX : (c + 1) * CELL_PX] = kinds_of(cell, landcover)
        table.append({"row": r, "col": c, "source": cell.source, "window_rc_hw": list(cell.window),
                      "building_fraction": round(cell.building_fraction, 5)})
    image, reference = write_labelled_region(LabelledScene("sparse", pixels, labels, "val"), out, GSD_M)
    (out / "sparse.yaml").write_text(
        "# written by benchmarks/make_sparse_scene.py: the sparse benchmark scene, all validation\n"
        "name: sparse\nclasses: [background, building]\nbuilding_class: 1\ngsd_m: 0.3\n"
        f"data_root: {out.resolve()}\nsources:\n  - kind: geotiff\n    image: {image.name}\n"
        f"    mask: {reference.name}\n    split: val\n")
    (out / "cells.json").write_text(json.dumps(table, indent=1) + "\n")
    with rasterio.open(reference) as ref:
        profile = ref.profile | {"nodata": None}
    with rasterio.open(out / "sparse.kinds.tif", "w", **profile) as dst:
        dst.write(kinds[None])
        dst.update_tags(KINDS=",".join(KINDS))
    fractions = np.array([t["building_fraction"] for t in table])
    run_tiles = [labels[t.row_off : t.row_end, t.col_off : t.col_end] for t in tile_grid(n * CELL_PX, n * CELL_PX, 512, 64)]
    with_buildings = sum((t[t != IGNORE] == 1).mean() >= TARGET_FRACTION for t in run_tiles if (t != IGNORE).any())
    print(f"{image}: {n * CELL_PX} px square, {len(table)} cells, {int((fractions >= TARGET_FRACTION).sum())} with "
          f">= {TARGET_FRACTION:.1%} building, {int((fractions == 0).sum())} without any; {len(run_tiles)} run tiles "
          f"(512 px, 64 overlap), {with_buildings} with buildings; {reference}")


if __name__ == "__main__":
    main()
