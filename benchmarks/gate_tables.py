"""The BGS-Net paper's tables on our validation data: dense vs gated, for one model and one or more gates.

    python benchmarks/gate_tables.py --model buildings-unet-r18 --data CONFIG.yaml [--data CONFIG2.yaml]
        [--gate NAME.gate.json ...] [--tile 512] [--overlap 0] [--out runs/gate-tables.json] [--write-gate]

Validation tiles (the configs' ``val`` scenes at the model's GSD, ``--tile`` px, ``--overlap`` px apart as
``geoseg run`` cuts them: 64 gives the run's own tiles) go through the
encoder once; the decoder runs on all of them for the dense reference, and each gate decides which tiles keep
the decoder's output. Reported per gate:

* building IoU dense vs gated, pooled over tiles that contain buildings (as the paper) and over all tiles;
* for configs labelled in the model's own classes: every class's IoU dense, gated with the coarse probe for
  skipped tiles, and gated with skipped tiles filled with a non-building class (the paper's code);
* decoder execution rate, building-tile recall and precision (target: >= the gate's target fraction);
* decoder FLOPs per tile (counted with torch's FlopCounterMode), the decoder and total computation saved,
  and the gate's operations per tile; encoder / decoder milliseconds per tile measured in this run.

``--write-gate`` stores the figures of each gate in its JSON under ``calibration.validation.<config names>``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from geoseg.backends.bgs import BGSBackend
from geoseg.calibrate import scene_tiles
from geoseg.card import resolve_model_path
from geoseg.datasets import IGNORE
from geoseg.gate import Gate, gate_path, rates
from geoseg.config import load_config, load_scenes
from geoseg.metrics import confusion


def flops(module_call) -> int:
    with FlopCounterMode(display=False) as counter:
        module_call()
    return int(counter.get_total_flops())


def iou_table(matrix: np.ndarray, classes: list[str]) -> dict:
    tp = np.diag(matrix).astype(float)
    iou = tp / np.maximum(matrix.sum(0) + matrix.sum(1) - tp, 1)
    return {c: round(float(v), 4) for c, v in zip(classes, iou)}


def building_iou(pred: np.ndarray, truth_building: np.ndarray, known: np.ndarray) -> np.ndarray:
    """(tp, fp, fn) building pixels."""
    return np.array([(pred & truth_building & known).sum(), (pred & ~truth_building & known).sum(),
                     (~pred & truth_building & known).sum()], np.int64)


def fold(labels: np.ndarray, building: list[int], building_class: int) -> np.ndarray:
    """Separator pixels counted as building (IGNORE stays IGNORE)."""
    return np.where(np.isin(labels, building), building_class, labels).astype(np.uint8)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None)
    parser.add_argument("--data", action="append", required=True)
    parser.add_argument("--gate", action="append", default=None, help="gate JSON(s) (default: the model's own)")
    parser.add_argument("--tile", type=int, default=512, dest="tile_px")
    parser.add_argument("--overlap", type=int, default=0, dest="overlap_px")
    parser.add_argument("--out", default="runs/gate-tables.json")
    parser.add_argument("--write-gate", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(2)
    model_path = resolve_model_path(args.model)
    gate_files = [Path(g) for g in (args.gate or [gate_path(model_path)])]
    gates = [Gate.from_json(p) for p in gate_files]
    backend = BGSBackend(str(model_path), precision="auto", gate=gates[0])  # the first gate's probe: coarse output
    net, card = backend.net, backend.card
    building = [card.building_class] + ([card.separator_class] if card.separator_class is not None else [])
    autocast = backend.bf16

    x0 = net.prepare(torch.rand(1, len(card.bands), args.tile_px, args.tile_px))
    with torch.inference_mode():
        feats0 = net.encode(x0)
        enc_flops = flops(lambda: net.encode(x0))
        dec_flops = flops(lambda: net.decode(feats0))
    cells = int(np.prod(feats0[-1].shape[-2:]))

    rows = []  # per tile: dict with means, truth, dense labels, probe labels, fill labels, config index
    enc_s = dec_s = 0.0
    for ci, path in enumerate(args.data):
        config, root = load_config(path)
        config = config.model_copy(update={"gsd_m": card.gsd_m})
        own = config.classes == card.classes
        truth_building = config.building_classes
        for scene in load_scenes(config, root, "val"):
            for pixels, labels in scene_tiles(scene, args.tile_px, args.overlap_px):
                h, w = labels.shape
                with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
                    x = net.prepare(torch.from_numpy(np.ascontiguousarray(pixels))[None])
                    t0 = time.perf_counter()
                    features = net.encode(x)
                    t1 = time.perf_counter()
                    dense = torch.softmax(net.decode(features).float(), 1)[..., :h, :w]
                    t2 = time.perf_counter()
                    coarse = backend.coarse(features[-1], tuple(x.shape[-2:]))[..., :h, :w]
                enc_s, dec_s = enc_s + t1 - t0, dec_s + t2 - t1
                known = labels != IGNORE
                rows.append({
                    "config": ci, "own": own, "known": known, "labels": labels,
                    "truth_b": np.isin(labels, truth_building),
                    "fraction": float(np.isin(labels[known], truth_building).mean()) if known.any() else 0.0,
                    "means": features[-1].float().mean((2, 3))[0].numpy(),
                    "dense": dense[0].argmax(0).numpy().astype(np.uint8),
                    "probe": coarse[0].argmax(0).numpy().astype(np.uint8),
                })
    means = np.stack([r["means"] for r in rows]).astype(np.float64)
    n_tiles = len(rows)
    fill_class = backend.no_building[0]
    results = {"model": card.name, "tiles": n_tiles, "tile_px": args.tile_px, "overlap_px": args.overlap_px,
               "data": args.data,
               "encoder_gflop_per_tile": round(enc_flops / 1e9, 3), "decoder_gflop_per_tile": round(dec_flops / 1e9, 3),
               "decoder_share_of_flops": round(dec_flops / (enc_flops + dec_flops), 4),
               "encoder_ms_per_tile": round(1000 * enc_s / n_tiles, 1), "decoder_ms_per_tile": round(1000 * dec_s / n_tiles, 1),
               "gates": {}}
    for gate_file, gate in zip(gate_files, gates):
        opened = gate.open(means)
        target = np.array([r["fraction"] >= gate.calibration.get("target_fraction", 0.005) for r in rows])
        counts = {k: np.zeros(3, np.int64) for k in ("dense_building_tiles", "gated_building_tiles", "dense_all", "gated_all")}
        n = len(card.classes)
        mats = {k: np.zeros((n, n), np.int64) for k in ("dense", "gated_probe", "gated_fill")}
        for r, op in zip(rows, opened):
            gated = r["dense"] if op else np.full_like(r["dense"], fill_class)
            for name, pred in (("dense", r["dense"]), ("gated", gated)):
                c = building_iou(np.isin(pred, building), r["truth_b"], r["known"])
                counts[f"{name}_all"] += c
                if r["fraction"] > 0:
                    counts[f"{name}_building_tiles"] += c
            if r["own"]:
                truth = fold(r["labels"], building, card.building_class)
                for name, pred in (("dense", r["dense"]), ("gated_probe", r["dense"] if op else r["probe"]),
                                   ("gated_fill", gated)):
                    mats[name] += confusion(fold(pred, building, card.building_class), truth, n)
        iou = {k: round(float(v[0] / max(v.sum(), 1)), 4) for k, v in counts.items()}
        exec_rate = float(opened.mean())
        entry = {
            "building_iou": iou, **rates(opened, target), "building_tiles": int(target.sum()),
            "missed_tiles_mean_building_fraction": round(float(np.mean(
                [r["fraction"] for r, op, t in zip(rows, opened, target) if t and not op] or [0.0])), 4),
            "decoder_computation_reduction": round(1 - exec_rate, 4),
            "model_computation_reduction": round((1 - exec_rate) * dec_flops / (enc_flops + dec_flops), 4),
            "gate_ops_per_tile": gate.ops_per_tile(cells),
            "gate_ops_share_of_decoder": float(f"{gate.ops_per_tile(cells) / dec_flops:.3g}"),
            "calibration_mode": gate.calibration.get("mode"),
        }
        if any(r["own"] for r in rows):
            classes = card.mask_classes
            entry["class_iou"] = {k: iou_table(m[: len(classes), : len(classes)], classes) for k, m in mats.items()}
        results["gates"][str(gate_file)] = entry
        if args.write_gate:
            key = "+".join(Path(d).stem for d in args.data)
            gate.calibration.setdefault("validation", {})[key] = {k: v for k, v in results.items() if k != "gates"} | entry
            gate.calibration["validation"][key]["command"] = "python benchmarks/gate_tables.py " + " ".join(
                [f"--model {card.name}"] + [f"--data {d}" for d in args.data]
                + ([f"--overlap {args.overlap_px}"] if args.overlap_px else []) + ["--write-gate"])
            gate.to_json(gate_file)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
