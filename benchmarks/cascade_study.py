"""Which gate holds on ground it has never seen: the paper's rule, the learned head and the thumbnail cascade,
false alarms per kind of empty ground, on the same tiles (prints tables; not a test).

    python benchmarks/cascade_study.py [--model buildings-unet-r18] [--sparse runs/sparse7 --sparse runs/rural7]
        [--out runs/cascade-study]

Tile sets (512 px): ``cal`` = the training split of ``geoseg/configs/buildings-unet-r18.yaml`` (what the gates are
calibrated on), ``val`` = its validation split, and each sparse scene (``benchmarks/make_sparse_scene.py``, real
validation-side imagery, cut as ``geoseg run`` cuts it: 64 px overlap). Each tile's bottleneck channel means and
thumbnail are computed once and cached per weights in ``--out``.

Kinds of empty ground: the NEON plots by site (HARV deciduous forest, OSBS pine savanna, SJER oak savanna with
boulders), Dubai's tiles by their dominant land-cover class (land, road, vegetation, water), the towns' open
ground by place, and on the sparse scenes their ``sparse.kinds.tif``.

Gates: ``paper`` (the model's shipped gate file), ``linear`` (the learned head in that file), ``pregate`` (the
thumbnail net, ``NAME.pregate.safetensors``), and the cascades ``pregate+paper``, ``pregate+linear``. Reported:
encoder rate (the pre-gate's pass rate; 1 without it), decoder rate, building-tile recall and precision, false
alarms per kind. Then the held-out check: for each kind of empty ground in the calibration tiles, the paper's
rule and the learned head calibrated *without* that kind, and that kind's false-alarm rate on the calibration
tiles and on validation-side tiles (does the gate hold on ground it never saw?).
"""

from __future__ import annotations

import argparse
import json
import os
from collections import Counter
from pathlib import Path

import numpy as np
import torch

from geoseg.calibrate import calibrate_rules, collect, collect_thumbnails, false_alarms_by_group, scene_tiles
from geoseg.card import file_sha256, resolve_model_path
from geoseg.config import load_config
from geoseg.datasets import DUBAI_CLASSES, IGNORE, dubai_source
from geoseg.gate import fit_linear_head, gate_open, load_gate, rates
from geoseg.model import load_model, use_bf16
from geoseg.pregate import load_pregate, score_thumbnails

from gate_study import sparse_tile_kinds  # benchmarks/: the sparse scenes' kinds of ground per run tile

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "geoseg" / "configs" / "buildings-unet-r18.yaml"
DATA = ROOT / ".." / "shared" / "data"
NEON_SITES = {"HARV": "NEON deciduous forest (HARV)", "OSBS": "NEON pine savanna (OSBS)",
              "SJER": "NEON oak savanna, boulders (SJER)"}
TARGET_FRACTION = 0.005


def encode_sets(model: str, sparse: list[Path], out: Path) -> dict[str, dict[str, np.ndarray]]:
    """Per tile set: channel means, thumbnails, building fractions, places, scenes (cached per weights)."""
    net, sha = load_model(model)
    torch.set_num_threads(os.cpu_count() or 1)
    out.mkdir(parents=True, exist_ok=True)
    sets = {"cal": (CONFIG, "train", 0), "val": (CONFIG, "val", 0)}
    sets |= {folder.name: (folder / "sparse.yaml", "val", 64) for folder in sparse}
    result = {}
    for key, (config, split, overlap) in sets.items():
        tag = file_sha256(Path(config).parent / "sparse.tif")[:12] if key not in ("cal", "val") else "cfg"
        cache = out / f"{sha[:12]}-{key}-{tag}.npz"
        configs = [load_config(config)]
        if not cache.exists():
            tiles = collect(net, configs, split, 512, use_bf16("auto"), np.random.default_rng(0), overlap_px=overlap)
            means, fraction = tiles.arrays()
            np.savez(cache, means=means, fraction=fraction, place=np.array(tiles.place), scene=np.array(tiles.source))
        thumb_cache = cache.with_suffix(".thumbs.pt")
        if not thumb_cache.exists():
            torch.save(collect_thumbnails(net, configs, split, 512, overlap).thumbs, thumb_cache)
        result[key] = dict(np.load(cache)) | {"thumbs": torch.load(thumb_cache)}
        assert len(result[key]["thumbs"]) == len(result[key]["fraction"])  # the same tiles in the same order
    return result


def dubai_kinds() -> dict[str, list[str]]:
    """Per Dubai scene, the dominant land-cover class (building left out) of each tile, in scene_tiles order."""
    src = next(s for s in load_config(CONFIG)[0].sources if s.kind == "dubai")
    kinds = {}
    for scene in dubai_source(str(DATA / src.root), 0.3, src.assumed_gsd_m, list(src.val_tiles)):
        rows = []
        for _, labels in scene_tiles(scene, 512):
            counts = np.bincount(labels[labels != IGNORE], minlength=len(DUBAI_CLASSES))
            counts[DUBAI_CLASSES.index("building")] = 0
            rows.append(f"Dubai {DUBAI_CLASSES[int(counts.argmax())]}")
        kinds[scene.name] = rows
    return kinds


def calibration_kinds(tiles: dict[str, np.ndarray], dubai: dict[str, list[str]]) -> np.ndarray:
    seen: Counter = Counter()
    out = []
    for place, scene in zip(tiles["place"], tiles["scene"]):
        if place == "neon_plots":
            out.append(NEON_SITES[Path(str(scene)).name[:4]])
        elif place == "dubai":
            out.append(dubai[str(scene)][seen[str(scene)]])
            seen[str(scene)] += 1
        else:
            out.append(f"town ground ({place})")
    return np.array(out)


def decisions(gate, head, pre, tiles: dict[str, np.ndarray]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per gate: (encoder ran, decoder ran) for each tile."""
    means = tiles["means"]
    thumbs = tiles["thumbs"]
    every = np.ones(len(means), bool)
    paper = gate_open(gate.stage1, gate.stage2, means)
    linear = head.open(means)
    result = {"dense": (every, every), "paper": (every, paper), "linear": (every, linear)}
    if pre is not None:
        passed = score_thumbnails(pre.net, thumbs) >= pre.threshold
        result |= {"pregate": (passed, passed), "pregate+paper": (passed, passed & paper),
                   "pregate+linear": (passed, passed & linear)}
    return result


def table(name: str, tiles: dict[str, np.ndarray], kinds: np.ndarray, gates: dict) -> dict:
    target = tiles["fraction"] >= TARGET_FRACTION
    print(f"\n{name}: {len(target)} tiles, {int(target.sum())} with buildings")
    print(f"  {'gate':16s} encoder  decoder  recall  precision | false alarms per kind of empty ground")
    rows = {}
    for g, (encoded, decoded) in gates.items():
        r = rates(decoded, target)
        alarms = false_alarms_by_group(kinds, decoded, target)
        rows[g] = {"encoder_rate": round(float(encoded.mean()), 4), **r, "false_alarms_by_kind": alarms,
                   "missed_building_tiles": int((target & ~decoded).sum())}
        print(f"  {g:16s} {encoded.mean():7.3f}  {r['execution_rate']:7.3f}  {r['recall']:6.3f}  {r['precision']:9.3f} | "
              + ", ".join(f"{k} {v['false_alarms']}/{v['non_target_tiles']}" for k, v in alarms.items()))
    return rows


def held_out_kinds(cal: dict[str, np.ndarray], cal_kinds: np.ndarray, val: dict[str, np.ndarray], val_kinds: np.ndarray,
                   gate) -> list[dict]:
    """Each kind of empty ground left out of calibration in turn: its false-alarm rate with the paper's rule
    and the learned head calibrated with it and without it."""
    c = gate.calibration
    target = cal["fraction"] >= TARGET_FRACTION
    val_target = val["fraction"] >= TARGET_FRACTION
    places = cal["place"]

    def fit(rows):
        s1, s2, _ = calibrate_rules(cal["means"][rows], target[rows], c["k1"], c["k2"], 0.95, places[rows],
                                    min_group_targets=c["min_group_tiles"] or 10)
        head, _ = fit_linear_head(cal["means"][rows], target[rows], places[rows], cal["scene"][rows], 0.95,
                                  min_group_targets=c["min_group_tiles"] or 10)
        return s1, s2, head

    every = np.ones(len(target), bool)
    with_all = fit(every)
    out = []
    for kind in sorted(set(cal_kinds[~target])):
        s1, s2, head = fit(~((cal_kinds == kind) & ~target))
        rows = (cal_kinds == kind) & ~target
        vrows = (val_kinds == kind) & ~val_target
        entry = {"kind": kind, "cal_tiles": int(rows.sum()), "val_tiles": int(vrows.sum())}
        for label, (a1, a2, ahead) in (("with", with_all), ("without", (s1, s2, head))):
            entry[f"paper_{label}"] = round(float(gate_open(a1, a2, cal["means"][rows]).mean()), 3)
            entry[f"linear_{label}"] = round(float(ahead.open(cal["means"][rows]).mean()), 3)
            if vrows.any():
                entry[f"paper_{label}_val"] = round(float(gate_open(a1, a2, val["means"][vrows]).mean()), 3)
                entry[f"linear_{label}_val"] = round(float(ahead.open(val["means"][vrows]).mean()), 3)
            opened_p, opened_l = gate_open(a1, a2, cal["means"]), ahead.open(cal["means"])
            entry[f"recall_paper_{label}"] = rates(opened_p, target)["recall"]
            entry[f"recall_linear_{label}"] = rates(opened_l, target)["recall"]
        out.append(entry)
        print(f"  {kind:36s} {entry['cal_tiles']:4d} tiles: paper {entry['paper_with']:.2f} -> {entry['paper_without']:.2f}"
              f", linear {entry['linear_with']:.2f} -> {entry['linear_without']:.2f}"
              + (f" | val {entry['val_tiles']} tiles: paper {entry['paper_with_val']:.2f} -> {entry['paper_without_val']:.2f}"
                 f", linear {entry['linear_with_val']:.2f} -> {entry['linear_without_val']:.2f}" if vrows.any() else ""))
    return out


def costs(model: str, pre) -> dict:
    """GFLOP (torch's FlopCounterMode) and milliseconds (one thread, a batch of 4 tiles of 512 px) per tile of the
    encoder and of the pre-gate (thumbnail included)."""
    import time

    from torch.utils.flop_counter import FlopCounterMode

    net, _ = load_model(model)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    x = torch.randn(4, 3, 512, 512).contiguous(memory_format=torch.channels_last)
    out = {}
    with torch.inference_mode():
        for name, step in (("encoder", lambda: net.encode(x)), ("pregate", lambda: pre.logits(x))):
            with FlopCounterMode(display=False) as counter:
                step()
            t0 = time.perf_counter()
            for _ in range(3):
                step()
            out[name] = {"gflop_per_tile": round(counter.get_total_flops() / 4 / 1e9, 3),
                         "ms_per_tile": round((time.perf_counter() - t0) / 12 * 1000, 1)}
    torch.set_num_threads(threads)
    print(f"per 512 px tile: encoder {out['encoder']}, pre-gate {out['pregate']}")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="buildings-unet-r18")
    parser.add_argument("--sparse", action="append", default=None, help="sparse scene folders (make_sparse_scene.py)")
    parser.add_argument("--out", default="runs/cascade-study")
    args = parser.parse_args()
    sparse = [Path(p) for p in (args.sparse or ["runs/sparse7", "runs/rural7"])]
    out = Path(args.out)
    sets = encode_sets(args.model, sparse, out)
    path = resolve_model_path(args.model)
    _, sha = load_model(args.model)
    gate = load_gate(path, sha)
    if gate.linear is None:
        raise SystemExit("the gate file has no learned head: run `geoseg calibrate` again")
    try:
        pre = load_pregate(path, sha)
    except Exception as err:  # noqa: BLE001 -- the cascade rows are left out, said so
        print(f"no pre-gate ({err}); cascade rows left out")
        pre = None
    dubai = dubai_kinds()
    kinds = {"cal": calibration_kinds(sets["cal"], dubai), "val": calibration_kinds(sets["val"], dubai)}
    kinds |= {folder.name: sparse_tile_kinds(folder / "sparse.yaml") for folder in sparse}
    results = {"model": args.model, "sets": {}}
    for key, tiles in sets.items():
        results["sets"][key] = table(key, tiles, kinds[key], decisions(gate, gate.linear, pre, tiles))
    print("\nheld-out kinds: false-alarm rate with the kind in calibration -> without it")
    results["held_out_kinds"] = held_out_kinds(sets["cal"], kinds["cal"], sets["val"], kinds["val"], gate)
    if pre is not None:
        results["cost_per_tile"] = costs(args.model, pre)
    out.mkdir(parents=True, exist_ok=True)
    (out / "study.json").write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
