"""Which calibration, and which weights, make the BGS-Net gate skip: every variant on the same encoded tiles.

    python benchmarks/gate_study.py --model runs/a.safetensors [--model runs/b.safetensors ...]
        [--sparse ~/.cache/geoseg/sparse/sparse.yaml] [--out runs/gate-study]

For each model, the tiles are encoded once and cached (``OUT/<sha256[:12]>-<set>[-<scene sha>].npz``): the calibration tiles (the
``train`` scenes of ``geoseg/configs/buildings-unet-r18.yaml``, 512 px, no overlap, as ``geoseg calibrate``), the
validation tiles (its ``val`` scenes) and the sparse benchmark's tiles (``benchmarks/make_sparse_scene.py``: 512 px
with the 64 px overlap of ``geoseg run``, so its 64 tiles are the run's). Then every calibration variant
(recall target, worst-group threshold, stage 2 or not) is fitted on the calibration tiles only and scored on
the other two: decoder execution rate, building-tile recall and precision (target: >= 0.5 % building pixels),
which places' building-free calibration tiles still open it, and on the sparse scene which kinds of ground
(``sparse.kinds.tif``: the dominant kind of each building-free tile) open it. Prints a table and writes
``OUT/study.json``.
Building IoU dense -> gated is measured for the chosen gates by ``benchmarks/gate_tables.py``.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np
import torch

from geoseg.calibrate import collect, false_alarms_by_group
from geoseg.card import file_sha256
from geoseg.gate import calibrate_rules, gate_open, rates
from geoseg.model import load_model, use_bf16
from geoseg.config import load_config

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "geoseg" / "configs" / "buildings-unet-r18.yaml"
VARIANTS = [  # (name, target recall, min building tiles for a place to be held to it, stage-1 K1, stage-2 K2)
    ("paper: Youden, K1 10, K2 3", None, None, 10, 3),
    ("Youden, K1 10, stage 1 only", None, None, 10, 0),
    ("recall 0.95 pooled, K1 10", 0.95, None, 10, 0),
    ("recall 0.95 pooled, K1 10, K2 3", 0.95, None, 10, 3),
    ("recall 0.95 per place >= 10, K1 10", 0.95, 10, 10, 0),
    ("recall 0.95 per place >= 10, K1 10, K2 3", 0.95, 10, 10, 3),
    ("recall 0.95 per place >= 3, K1 10", 0.95, 3, 10, 0),
    ("recall 0.95 per place >= 10, K1 3", 0.95, 10, 3, 0),
    ("recall 0.95 per place >= 10, K1 1", 0.95, 10, 1, 0),
    ("recall 0.98 per place >= 10, K1 10", 0.98, 10, 10, 0),
    ("recall 0.98 per place >= 10, K1 3", 0.98, 10, 3, 0),
    ("recall 0.99 per place >= 10, K1 3", 0.99, 10, 3, 0),
    ("recall 0.99 per place >= 10, K1 1", 0.99, 10, 1, 0),
]
TILE_SETS = {"cal": ("train", 0), "val": ("val", 0), "sparse": ("val", 64)}  # split, overlap_px


def encoded(model: str, sparse: str, out: Path) -> dict[str, np.ndarray]:
    """Channel means, building fractions and places of the three tile sets, each cached per weights (and, for
    the sparse scene, per its image's content: a rebuilt scene is encoded again)."""
    net, sha = load_model(model)
    torch.set_num_threads(os.cpu_count() or 1)
    autocast, rng, arrays = use_bf16("auto"), np.random.default_rng(0), {}
    out.mkdir(parents=True, exist_ok=True)
    scene_sha = file_sha256(Path(sparse).parent / "sparse.tif")[:12]
    for key, (split, overlap) in TILE_SETS.items():
        cache = out / f"{sha[:12]}-{key}{'-' + scene_sha if key == 'sparse' else ''}.npz"
        if not cache.exists():
            config = Path(sparse) if key == "sparse" else CONFIG
            tiles = collect(net, [load_config(config)], split, 512, autocast, rng, overlap_px=overlap)
            means, fraction = tiles.arrays()
            np.savez(cache, means=means, fraction=fraction, place=np.array(tiles.place))
        arrays |= {f"{key}_{name}": value for name, value in np.load(cache).items()}
    return arrays


def sparse_tile_kinds(sparse: str) -> np.ndarray:
    """The dominant kind of ground (``sparse.kinds.tif``, buildings and unknown left out) of each sparse tile, in
    the order :func:`geoseg.calibrate.scene_tiles` gives them (tiles less than half labelled left out)."""
    import rasterio

    from geoseg.tile import tile_grid

    folder = Path(sparse).parent
    with rasterio.open(folder / "sparse.kinds.tif") as src:
        kinds, names = src.read(1), src.tags()["KINDS"].split(",")
    with rasterio.open(folder / "sparse.reference.tif") as src:
        reference = src.read(1)
    out = []
    for t in tile_grid(*kinds.shape, 512, 64):
        if (reference[t.row_off : t.row_end, t.col_off : t.col_end] != 255).mean() < 0.5:
            continue
        counts = np.bincount(kinds[t.row_off : t.row_end, t.col_off : t.col_end].ravel(), minlength=len(names))
        counts[[0, 1]] = 0
        out.append(names[int(counts.argmax())])
    return np.array(out)


def study(arrays: dict[str, np.ndarray], sparse_kinds: np.ndarray) -> list[dict]:
    target = {k: arrays[f"{k}_fraction"] >= 0.005 for k in ("cal", "val", "sparse")}
    rows = []
    for name, recall, min_tiles, k1, k2 in VARIANTS:
        groups = arrays["cal_place"] if min_tiles else None
        s1, s2, report = calibrate_rules(arrays["cal_means"], target["cal"], k1, k2, recall, groups,
                                         min_group_targets=min_tiles or 10)
        row = {"variant": name, "stage2_kept": bool(s2)}
        for key in ("cal", "val", "sparse"):
            row[key] = rates(gate_open(s1, s2, arrays[f"{key}_means"]), target[key])
        opened = gate_open(s1, s2, arrays["cal_means"])
        row["cal_false_alarms_by_place"] = false_alarms_by_group(arrays["cal_place"], opened, target["cal"])
        row["sparse_false_alarms_by_kind"] = false_alarms_by_group(
            sparse_kinds, gate_open(s1, s2, arrays["sparse_means"]), target["sparse"])
        row["val_building_tile_recall_by_place"] = {
            str(p): rates(gate_open(s1, s2, arrays["val_means"])[arrays["val_place"] == p],
                          target["val"][arrays["val_place"] == p])["recall"]
            for p in np.unique(arrays["val_place"]) if (target["val"] & (arrays["val_place"] == p)).any()}
        rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", action="append", required=True)
    parser.add_argument("--sparse", default=os.path.expanduser("~/.cache/geoseg/sparse/sparse.yaml"))
    parser.add_argument("--out", default="runs/gate-study")
    args = parser.parse_args()
    out, results = Path(args.out), {}
    for model in args.model:
        arrays = encoded(model, args.sparse, out)
        rows = study(arrays, sparse_tile_kinds(args.sparse))
        results[model] = rows
        n = {k: (len(arrays[f"{k}_fraction"]), int((arrays[f"{k}_fraction"] >= 0.005).sum())) for k in ("cal", "val", "sparse")}
        print(f"\n{model}: tiles (with buildings) calibration {n['cal']}, validation {n['val']}, sparse {n['sparse']}")
        print(f"{'variant':44s} | {'calibration exec/rec/prec':26s} | {'validation exec/rec/prec':26s} | {'sparse exec/rec/prec':26s}")
        for r in rows:
            cells = " | ".join(f"{r[k]['execution_rate']:.3f} / {r[k]['recall']:.3f} / {r[k]['precision']:.3f}    "
                               for k in ("cal", "val", "sparse"))
            print(f"{r['variant']:44s} | {cells}")
            print(f"{'':44s}   sparse false alarms: " + ", ".join(
                f"{k} {v['false_alarms']}/{v['non_target_tiles']}" for k, v in r["sparse_false_alarms_by_kind"].items()))
    out.mkdir(parents=True, exist_ok=True)
    (out / "study.json").write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
