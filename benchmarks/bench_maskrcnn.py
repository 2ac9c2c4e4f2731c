"""Light vs baseline Mask R-CNN side by side (prints figures; not a test).

    python benchmarks/bench_maskrcnn.py [--models buildings-maskrcnn,buildings-maskrcnn-light]
        [--config geoseg/configs/buildings-maskrcnn-light.yaml] [--tiles 8] [--rounds 3]

Per model: parameters; milliseconds per 512x512 px tile on one CPU thread (bf16 autocast where the CPU has it,
as a ``geoseg run`` worker), split into backbone (C4, plus the separated large kernel for the light design),
RPN, and RoI heads (RoIAlign, box and mask branches, post-processing), measured with forward hooks on the same
validation tiles, models in turn, median of ``--rounds``; and the validation figures in its card
(``benchmarks/evaluate_model.py --write-card``: mask AP, AP50, SpaceNet F1, pixel IoU).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_segblocks import validation_tiles  # noqa: E402

from geoseg.model import load_model, use_bf16  # noqa: E402

PARTS = ("backbone", "rpn", "roi_heads")


def timed_parts(detector) -> dict[str, list[float]]:
    """Forward hooks that add each part's seconds to the returned lists, call by call."""
    seconds = {part: [] for part in PARTS}
    for part in PARTS:
        module = getattr(detector, part)
        module.register_forward_pre_hook(lambda m, a, part=part: seconds[part].append(-time.perf_counter()))
        module.register_forward_hook(lambda m, a, o, part=part: seconds[part].__setitem__(-1, seconds[part][-1] + time.perf_counter()))
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="buildings-maskrcnn,buildings-maskrcnn-light")
    parser.add_argument("--config", default="geoseg/configs/buildings-maskrcnn-light.yaml")
    parser.add_argument("--tiles", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    autocast = use_bf16("auto")
    nets = {name: load_model(name)[0] for name in args.models.split(",")}
    first = next(iter(nets.values()))
    prepared = [first.prepare(torch.from_numpy(t)[None])[0] for t, _ in validation_tiles(args.config, first.card.gsd_m)]
    shape = max({p.shape for p in prepared}, key=lambda s: s[-1] * s[-2])
    tiles = torch.stack([p for p in prepared if p.shape == shape][: args.tiles])
    per_512 = 512 * 512 / (shape[-1] * shape[-2])
    clocks = {name: timed_parts(net.detector) for name, net in nets.items()}
    totals = {name: [] for name in nets}
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        for net in nets.values():
            net.detect(tiles[:1])  # warm-up
        for clock in clocks.values():
            for part in PARTS:
                clock[part].clear()
        for _ in range(args.rounds):
            for name, net in nets.items():
                t = time.perf_counter()
                for tile in tiles:
                    net.detect(tile[None])
                totals[name].append((time.perf_counter() - t) / len(tiles))
    print(f"{len(tiles)} validation tiles of {shape[-2]}x{shape[-1]} px (ms scaled to 512x512), 1 thread, bf16: {autocast}\n")
    print(f"{'model':28s} {'params':>8} {'ms/tile':>8} {'backbone':>8} {'RPN':>6} {'RoI':>6} {'RPN+RoI':>7} "
          f"{'mask AP':>7} {'AP50':>6} {'F1':>6} {'IoU':>6}")
    base = None
    for name, net in nets.items():
        ms = 1000 * statistics.median(totals[name]) * per_512
        parts = {p: 1000 * float(np.median(clocks[name][p])) * per_512 for p in PARTS}
        e2e = net.card.metrics.get("end_to_end", {}).get("pooled", {})
        params = sum(p.numel() for p in {id(p): p for p in net.parameters()}.values())
        share = (parts["rpn"] + parts["roi_heads"]) / ms
        base = base or ms
        print(f"{name:28s} {params / 1e6:7.2f}M {ms:8.1f} {parts['backbone']:8.1f} {parts['rpn']:6.1f} "
              f"{parts['roi_heads']:6.1f} {share:7.0%} {e2e.get('mask_ap', float('nan')):7.3f} "
              f"{e2e.get('mask_ap50', float('nan')):6.3f} {e2e.get('spacenet_f1', float('nan')):6.3f} "
              f"{e2e.get('building_iou', float('nan')):6.3f}   x{base / ms:.2f} vs first")


if __name__ == "__main__":
    main()
