"""Validation figures of shipped models in each precision a machine may run them in (fp32, bf16 autocast).

    python benchmarks/card_precision.py [MODEL ...] [--write-card] [--precisions fp32,bf16]

The cards' ``metrics.validation`` figures were measured in the precision the model was trained in (bf16 autocast
on an AMX Xeon for most). A CPU without AMX/AVX512-BF16 runs the models in fp32, where a figure can differ by a
few hundredths (Mask R-CNN: 0.519 bf16 vs 0.541 fp32 building IoU on one validation scene). This script runs
``geoseg.train.validate`` on every validation scene of a model's own config in each precision, prints pooled
and per-scene figures beside the card's, and with ``--write-card`` records those of the precision the card's own
figures are not in as ``metrics.validation_fp32`` or ``metrics.validation_bf16`` (``pooled``, ``per_scene``).
``tests/test_shipped_models.py`` checks a card in each precision the machine runs.

Measured (2026-11-30, torch 2.14): on every validation scene of every shipped model, bf16 on an AVX512-BF16 EPYC
gave the card's AMX figures within 0.0021 building IoU (landcover-dubai's per-scene figures aside: up to 0.031
on two Dubai images, its pooled figure within 0.0005), and fp32 under AVX2 kernels gave the AVX512 figures to
4 decimals; fp32 against bf16 differed by up to 0.022 (Mask R-CNN).

To see what another instruction set gives (the fp32 path of a CPU without AVX512), run it under
``ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2``: torch and oneDNN then dispatch their AVX2 kernels, and
geoseg's ``bf16_is_fast`` says no (it reads torch's capability), as on such a machine.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from importlib import resources
from pathlib import Path

import torch

from geoseg.card import ModelCard, resolve_model_path
from geoseg.model import bf16_is_fast, load_model
from geoseg.config import TrainConfig, load_scenes
from geoseg.train import validate

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
KEYS = ("building_iou", "mean_iou", "pixels")


def shipped_models() -> list[str]:
    return sorted(p.stem for p in Path(str(resources.files("geoseg.models"))).glob("*.safetensors"))


def measure(model: str, precisions: list[str]) -> dict:
    path = resolve_model_path(model)
    card = ModelCard.from_json(path.with_suffix(".json"))
    config = TrainConfig.model_validate(card.training["config_values"])
    scenes = load_scenes(config, DATA.resolve(), "val")
    net, _ = load_model(str(path))
    net.card.policy_thresholds = {}  # SegBlocks: validated in training with the top tau of each tile's blocks
    out = {}
    for precision in precisions:
        t = time.perf_counter()
        pooled, per_scene = validate(net, scenes, autocast=precision == "bf16")
        out[precision] = {"pooled": {k: pooled[k] for k in KEYS}, "per_scene": per_scene,
                          "seconds": round(time.perf_counter() - t, 1)}
    return {"path": path, "card": card, "measured": out}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="*", help="model names or paths (default: every shipped model)")
    parser.add_argument("--precisions", default="fp32,bf16")
    parser.add_argument("--write-card", action="store_true", help="record the fp32 figures in bf16-validated cards")
    parser.add_argument("--json", default=None, help="also write everything measured to this file")
    args = parser.parse_args()
    torch.set_num_threads(torch.get_num_threads())
    print(f"torch {torch.__version__}, CPU capability {torch.backends.cpu.get_cpu_capability()}, "
          f"bf16_is_fast {bf16_is_fast()}, {platform.processor() or platform.machine()}")
    report = {}
    for model in args.models or shipped_models():
        result = measure(model, args.precisions.split(","))
        card, measured = result["card"], result["measured"]
        if not card.trained:
            continue
        card_precision = "bf16" if card.training.get("bf16_autocast") else "fp32"
        print(f"\n{card.name}: card figures measured in {card_precision}")
        print(f"  {'scene':28s} {'card':>7s} " + " ".join(f"{p:>7s}" for p in measured))
        rows = {"pooled": card.metrics["validation"], **card.metrics["validation_per_scene"]}
        for name, row in rows.items():
            got = [(measured[p]["pooled"] if name == "pooled" else measured[p]["per_scene"][name])["building_iou"]
                   for p in measured]
            print(f"  {name:28s} {row['building_iou']:7.4f} " + " ".join(f"{g:7.4f}" for g in got))
        report[card.name] = {"card_precision": card_precision, **measured}
        if args.write_card:
            data = json.loads(result["path"].with_suffix(".json").read_text())
            for precision in set(measured) - {card_precision}:
                data["metrics"][f"validation_{precision}"] = {
                    "pooled": measured[precision]["pooled"], "per_scene": measured[precision]["per_scene"],
                    "torch": torch.__version__, "cpu_capability": torch.backends.cpu.get_cpu_capability(),
                    "command": "python benchmarks/card_precision.py --write-card"}
            tmp = result["path"].with_suffix(".json.tmp")
            tmp.write_text(json.dumps(data, indent=2) + "\n")
            tmp.replace(result["path"].with_suffix(".json"))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
