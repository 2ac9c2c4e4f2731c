"""Light vs baseline Mask R-CNN side by side (prints figures; not a test).

    python benchmarks/bench_maskrcnn.py [--models buildings-maskrcnn,buildings-maskrcnn-light]
        [--config geoseg/configs/buildings-maskrcnn-light.yaml] [--tiles 8] [--rounds 3] [--depths 18,50]

1. The designs at a fixed workload, for each ResNet depth in ``--depths`` (freshly initialised weights, since
   the cost does not depend on them once the number of RoIs is fixed, see :func:`fixed_workload`): the RoI heads
   see 300 proposals and 100 detections per tile in both designs. Depth 50 is the paper's own
   comparison (its widths exactly); depth 18 is what geoseg ships.
2. The trained models: per model, parameters; milliseconds per 512x512 px tile on one CPU thread (bf16 autocast where the CPU has it,
as a ``geoseg run`` worker), split into backbone (C4, plus the separated large kernel for the light design),
RPN, and RoI heads (RoIAlign, box and mask branches, post-processing), measured with forward hooks on the same
validation tiles, models in turn, median of ``--rounds``; and the validation figures in its card
(``benchmarks/evaluate_model.py --write-card``: mask AP, AP50, SpaceNet F1, pixel IoU). Their time also depends
on how many detections pass the card's score threshold, so detections per tile are printed beside it.
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

from geoseg.model import fold_batchnorm, load_model, use_bf16  # noqa: E402
from geoseg.nets.maskrcnn import build_maskrcnn  # noqa: E402

PARTS = ("backbone", "rpn", "roi_heads")


def timed_parts(detector) -> dict[str, list[float]]:
    """Forward hooks that add each part's seconds to the returned lists, call by call."""
    seconds = {part: [] for part in PARTS}
    for part in PARTS:
        module = getattr(detector, part)
        module.register_forward_pre_hook(lambda m, a, part=part: seconds[part].append(-time.perf_counter()))
        module.register_forward_hook(lambda m, a, o, part=part: seconds[part].__setitem__(-1, seconds[part][-1] + time.perf_counter()))
    return seconds


def fixed_workload(detector):
    """Make the RoI heads' workload independent of the (untrained) weights: box regressions zeroed (proposals are
    anchors, detections are proposals: none degenerate), no NMS, every score kept -- 300 proposals and 100
    detections per tile."""
    for layer in (detector.rpn.head.bbox_pred, detector.roi_heads.box_predictor.bbox_pred):
        torch.nn.init.zeros_(layer.weight)
        torch.nn.init.zeros_(layer.bias)
    detector.rpn.nms_thresh = detector.roi_heads.nms_thresh = 1.0
    detector.roi_heads.score_thresh = 0.0
    return detector


def time_detectors(detectors: dict, tiles: torch.Tensor, rounds: int, autocast: bool) -> dict[str, dict]:
    """Median seconds per tile of each detector, whole and per part, models in turn within each round; and the
    mean number of detections per tile."""
    clocks = {name: timed_parts(d) for name, d in detectors.items()}
    totals, found = {name: [] for name in detectors}, {name: [] for name in detectors}
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        for d in detectors.values():
            d(list(tiles[:1]))  # warm-up
        for clock in clocks.values():
            for part in PARTS:
                clock[part].clear()
        for _ in range(rounds):
            for name, d in detectors.items():
                t = time.perf_counter()
                for tile in tiles:
                    found[name].append(len(d([tile])[0]["boxes"]))
                totals[name].append((time.perf_counter() - t) / len(tiles))
    return {name: {"s": statistics.median(totals[name]), "detections": float(np.mean(found[name])),
                   "params": sum(p.numel() for p in {id(p): p for p in d.parameters()}.values()),
                   **{part: float(np.median(clocks[name][part])) for part in PARTS}} for name, d in detectors.items()}


def print_rows(figures: dict[str, dict], per_512: float, extra=lambda name: "") -> None:
    base = None
    for name, f in figures.items():
        ms = 1000 * f["s"] * per_512
        parts = {p: 1000 * f[p] * per_512 for p in PARTS}
        base = base or ms
        print(f"{name:28s} {f['params'] / 1e6:7.2f}M {ms:8.1f} {parts['backbone']:8.1f} {parts['rpn']:6.1f} "
              f"{parts['roi_heads']:6.1f} {(parts['rpn'] + parts['roi_heads']) / ms:7.0%} {f['detections']:6.1f}"
              f"{extra(name)}   x{base / ms:.2f} vs first")


HEADER = f"{'model':28s} {'params':>8} {'ms/tile':>8} {'backbone':>8} {'RPN':>6} {'RoI':>6} {'RPN+RoI':>7} {'dets':>6}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="buildings-maskrcnn,buildings-maskrcnn-light")
    parser.add_argument("--config", default="geoseg/configs/buildings-maskrcnn-light.yaml")
    parser.add_argument("--tiles", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--depths", default="18,50", help="ResNet depths for the fixed-workload comparison ('' for none)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    autocast = use_bf16("auto")
    nets = {name: load_model(name)[0] for name in args.models.split(",")}
    first = next(iter(nets.values()))
    prepared = [first.prepare(torch.from_numpy(t)[None])[0] for t, _ in validation_tiles(args.config, first.card.gsd_m)]
    shape = max({p.shape for p in prepared}, key=lambda s: s[-1] * s[-2])
    tiles = torch.stack([p for p in prepared if p.shape == shape][: args.tiles])
    per_512 = 512 * 512 / (shape[-1] * shape[-2])
    print(f"{len(tiles)} validation tiles of {shape[-2]}x{shape[-1]} px (ms scaled to 512x512), 1 thread, bf16: {autocast}")
    for depth in [int(d) for d in args.depths.split(",") if d]:
        torch.manual_seed(0)
        designs = {f"r{depth} {design} (untrained)": fixed_workload(fold_batchnorm(build_maskrcnn(
                   design, depth, len(first.card.bands), _skip_resize=True).eval())) for design in ("baseline", "light")}
        print(f"\nResNet-{depth} C4, fixed workload (300 proposals, 100 detections per tile)\n{HEADER}")
        print_rows(time_detectors(designs, tiles, args.rounds, autocast), per_512)

    figures = time_detectors({name: net.detector for name, net in nets.items()}, tiles, args.rounds, autocast)
    print(f"\ntrained models, detections above the card's score threshold\n{HEADER} {'mask AP':>7} {'AP50':>6} {'F1':>6} {'IoU':>6}")

    def scores(name: str) -> str:
        e2e = nets[name].card.metrics.get("end_to_end", {}).get("pooled", {})
        return "".join(f" {e2e.get(k, float('nan')):{w}.3f}" for k, w in
                       (("mask_ap", 7), ("mask_ap50", 6), ("spacenet_f1", 6), ("building_iou", 6)))

    print_rows(figures, per_512, scores)


if __name__ == "__main__":
    main()
