"""Pick an instance model's score threshold on *training* tiles (never validation) and write it into the card.

    python benchmarks/tune_instance_threshold.py MODEL.safetensors CONFIG.yaml [--tiles 40] [--write-card]

Detections are computed once per tile (512 px tiles of the config's training scenes, at most ``--tiles``);
for each threshold the semantic view (buildings = union of instances scoring at least it) is scored against the
labels (building and separator count as building); the threshold with the best building IoU wins. With
``--write-card`` the card gets it, and its validation figures are measured again with it (they depend on it).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from geoseg.calibrate import scene_tiles
from geoseg.datasets import IGNORE
from geoseg.instances import semantic_logits
from geoseg.model import bf16_is_fast, load_model, use_bf16
from geoseg.config import load_config, load_scenes
from geoseg.train import validate

THRESHOLDS = (0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("config")
    parser.add_argument("--tiles", type=int, default=40)
    parser.add_argument("--write-card", action="store_true")
    args = parser.parse_args()
    net, _ = load_model(args.model)
    net.set_score_threshold(min(THRESHOLDS))  # the card's own threshold would hide lower ones
    card = net.card
    config, root = load_config(args.config)
    tiles = [t for s in load_scenes(config, root, "train") for t in scene_tiles(s, 512)]
    rng = np.random.default_rng(0)
    pick = rng.choice(len(tiles), size=min(args.tiles, len(tiles)), replace=False)
    counts = {t: np.zeros(3, np.int64) for t in THRESHOLDS}  # tp, fp, fn
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=use_bf16("auto")):
        for i in pick.tolist():
            pixels, labels = tiles[i]
            x = net.prepare(torch.from_numpy(np.ascontiguousarray(pixels))[None])
            detections = [{k: v.float() for k, v in d.items()} for d in net.detect(x)]
            known = labels != IGNORE
            truth = np.isin(labels, config.building_classes) & known
            for t in THRESHOLDS:
                logits = semantic_logits(detections, len(card.classes), card.building_class, tuple(x.shape[-2:]), t)
                pred = (logits[0].argmax(0).numpy()[: labels.shape[0], : labels.shape[1]] == card.building_class) & known
                counts[t] += [(pred & truth).sum(), (pred & ~truth).sum(), (~pred & truth).sum()]
    iou = {t: float(c[0] / max(c.sum(), 1)) for t, c in counts.items()}
    best = max(iou, key=iou.get)
    print(json.dumps({"training_tiles": len(pick), "building_iou_by_threshold": {f"{t:g}": round(v, 4) for t, v in iou.items()},
                      "chosen": best}, indent=2))
    if args.write_card:
        path = Path(args.model).with_suffix(".json")
        data = json.loads(path.read_text())
        data["instance_score_threshold"] = best
        data["training"]["instance_score_threshold_tuning"] = {"tiles": len(pick), "split": "train",
                                                               "building_iou": {f"{t:g}": round(v, 4) for t, v in iou.items()}}
        path.write_text(json.dumps(data, indent=2) + "\n")
        net, _ = load_model(args.model)
        pooled, per_scene = validate(net, load_scenes(config, root, "val"),
                                     data["training"].get("bf16_autocast", False) and bf16_is_fast())
        data["metrics"] = {"validation": {"epoch": data["metrics"]["validation"]["epoch"], **pooled},
                           "validation_per_scene": per_scene}
        path.write_text(json.dumps(data, indent=2) + "\n")
        print(f"validation with threshold {best:g}: building IoU {pooled['building_iou']}")


if __name__ == "__main__":
    main()
