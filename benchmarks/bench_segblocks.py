"""SegBlocks side by side (prints figures; not a test): the same network static, static at a lower input
resolution, with a random block policy, and with its trained policy at several tau, on the validation tiles.

    python benchmarks/bench_segblocks.py [--model buildings-segblocks] [--config geoseg/configs/buildings-segblocks.yaml]
        [--taus 0.2,0.4,0.6] [--scales 0.75,0.5] [--timing-tiles 16] [--rounds 3] [--out bench-output/segblocks.json]

For each variant:
* building IoU (separator counted as building) over the validation scenes of the config, cut into 512 px tiles
  without overlap (the last tile of a row/column moved back, as ``geoseg run`` does);
* GMACs per 512 px tile, counted with torch's FlopCounterMode on the very forward passes that were scored
  (FLOPs / 2), the policy net included;
* the fraction of pixels processed at full resolution (blocks weighted by area);
* beside them, the original U-Net (``--reference``) scored statically, for the IoU the fine-tuning started from;
* wall time per 512x512 px on one CPU thread (as a ``geoseg run`` worker), bf16 autocast where the CPU has
  it, BatchNorm folded as the backends do: the variants run in turn, ``--rounds`` times, on the same
  ``--timing-tiles`` tiles (the largest validation tiles, padded to the block multiple; batches of 4); the
  median is kept, scaled to 512x512 px; ratios are to the static network.
"all blocks high" runs the block machinery with every block at full resolution: the same arithmetic as the
static network, so its extra time is what BlockSample, BlockPad and BlockCombine cost. The network has no
global pooling, so nothing else needs the whole tile.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from geoseg.calibrate import scene_tiles
from geoseg.model import fold_batchnorm, load_model, use_bf16
from geoseg.nets.blocks_dynamic import BlockLayout
from geoseg.config import load_config, load_scenes
from geoseg.metrics import confusion, fold_separator, metrics_from_confusion


def variants(net, taus: list[float], scales: list[float]) -> dict:
    """name -> forward(x) returning (logits, high-resolution fraction)."""
    static = lambda x: (super(type(net), net).forward(x), 1.0)  # noqa: E731  the U-Net on the whole tile
    out = {"static": static}
    for scale in scales:
        def lower(x, scale=scale):
            small = F.avg_pool2d(x, 2) if scale == 0.5 else F.interpolate(x, scale_factor=scale, mode="bilinear",
                                                                          antialias=True, align_corners=False)
            logits = super(type(net), net).forward(small)
            return F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False), scale**2
        out[f"static @ {scale:g}x input"] = lower
    for tau in taus:
        def policy(x, tau=tau):
            net.tau = tau
            layout = net.choose(x)
            return net.forward_blocks(x, layout), layout.high_fraction
        out[f"segblocks tau={tau:g}"] = policy
    generator = torch.Generator().manual_seed(0)

    def all_high(x):
        return net.forward_blocks(x, BlockLayout(torch.ones((len(x), *net.grid(x)), dtype=torch.bool))), 1.0
    out["segblocks all blocks high"] = all_high

    def random_policy(x, tau=0.4):
        rows, cols = net.grid(x)
        scores = torch.rand(len(x), rows * cols, generator=generator)
        high = torch.zeros_like(scores, dtype=torch.bool).scatter_(1, scores.topk(int(round(tau * rows * cols)), 1).indices, True)
        layout = BlockLayout(high.view(len(x), rows, cols))
        return net.forward_blocks(x, layout), layout.high_fraction
    out["random blocks tau=0.4"] = random_policy
    return out


def validation_tiles(config_path: str, gsd_m: float, tile_px: int = 512):
    config, root = load_config(config_path)
    config = config.model_copy(update={"gsd_m": gsd_m})
    for scene in load_scenes(config, root):
        if scene.split == "val":
            for pixels, labels in scene_tiles(scene, tile_px):
                yield pixels, labels


@torch.inference_mode()
def score(net, forward, tiles, autocast: bool) -> dict:
    card = net.card
    matrix = np.zeros((len(card.classes),) * 2, np.int64)
    flops, fractions, pixels = 0, [], 0
    for tile, labels in tiles:
        x = net.prepare(torch.from_numpy(tile)[None])
        with FlopCounterMode(display=False) as counter, torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            logits, fraction = forward(x)
        flops += counter.get_total_flops()
        pixels += x.shape[-2] * x.shape[-1]
        fractions.append(fraction * x.shape[-2] * x.shape[-1])  # weighted by tile area
        h, w = labels.shape
        matrix += confusion(logits[0, :, :h, :w].argmax(0).numpy().astype(np.uint8), labels, len(card.classes))
    metrics = metrics_from_confusion(fold_separator(matrix, card.building_class, card.separator_class),
                                     card.mask_classes, card.building_class)
    return {"building_iou": metrics["building_iou"], "gmacs_per_512_tile": round(flops / 2 / pixels * 512**2 / 1e9, 2),
            "high_res_fraction": round(float(np.sum(fractions) / pixels), 3), "tiles": len(tiles)}


@torch.inference_mode()
def timings(forwards: dict, batch: torch.Tensor, rounds: int, autocast: bool) -> dict:
    torch.set_num_threads(1)
    seconds = {name: [] for name in forwards}
    for name, forward in forwards.items():  # warm-up: oneDNN builds its kernels on the first call
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            forward(batch[:4])
    for _ in range(rounds):
        for name, forward in forwards.items():
            t = time.perf_counter()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
                for start in range(0, len(batch), 4):
                    forward(batch[start : start + 4])
            seconds[name].append((time.perf_counter() - t) / len(batch))
    return {name: round(1000 * statistics.median(s), 1) for name, s in seconds.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="buildings-segblocks")
    parser.add_argument("--config", default="geoseg/configs/buildings-segblocks.yaml")
    parser.add_argument("--taus", default="0.2,0.4,0.6")
    parser.add_argument("--scales", default="0.75,0.5")
    parser.add_argument("--timing-tiles", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--reference", default="buildings-unet-r18", help="U-Net scored statically beside (IoU only)")
    parser.add_argument("--out", default="bench-output/segblocks.json")
    args = parser.parse_args()
    net, _ = load_model(args.model)
    autocast = use_bf16("auto")
    tiles = list(validation_tiles(args.config, net.card.gsd_m))
    forwards = variants(net, [float(t) for t in args.taus.split(",")], [float(s) for s in args.scales.split(",")])
    results = {name: score(net, forward, tiles, autocast) for name, forward in forwards.items()}
    if args.reference:
        reference, _ = load_model(args.reference)
        results[f"static {args.reference}"] = score(reference, lambda x: (reference(x), 1.0), tiles, autocast)
    prepared = [net.prepare(torch.from_numpy(t)[None])[0] for t, _ in tiles]
    shape = max({p.shape for p in prepared}, key=lambda s: (s[-1] * s[-2], sum(p.shape == s for p in prepared)))
    full = [p for p in prepared if p.shape == shape][: args.timing_tiles]
    (out_dir := Path(args.out).parent).mkdir(parents=True, exist_ok=True)
    (out_dir / "segblocks-scores.json").write_text(json.dumps(results, indent=2))  # before the long timing part
    fold_batchnorm(net)
    net.to(memory_format=torch.channels_last)
    ms = timings(forwards, torch.stack(full).contiguous(memory_format=torch.channels_last), args.rounds, autocast)
    per_512 = 512 * 512 / (shape[-1] * shape[-2])  # the timing tiles are the largest validation tiles, padded
    ms = {name: round(v * per_512, 1) for name, v in ms.items()}
    base_iou, base_ms = results["static"]["building_iou"], ms["static"]
    print(f"{len(tiles)} validation tiles (IoU, GMACs), {len(full)} tiles of {shape[-2]}x{shape[-1]} px for timing "
          f"(ms scaled to 512x512), 1 thread, bf16 autocast: {autocast}\n")
    print(f"{'variant':28s} {'high-res':>8} {'GMACs':>7} {'ms/tile':>8} {'speed-up':>8} {'IoU':>7} {'ΔIoU pts':>8}")
    ms[f"static {args.reference}"] = ms["static"]  # the same architecture: not timed twice
    for name, r in results.items():
        r["ms_per_tile"] = ms[name]
        r["speedup_vs_static"] = round(base_ms / ms[name], 2)
        print(f"{name:28s} {r['high_res_fraction']:8.3f} {r['gmacs_per_512_tile']:7.2f} {ms[name]:8.1f} "
              f"{r['speedup_vs_static']:8.2f} {r['building_iou']:7.4f} {100 * (r['building_iou'] - base_iou):8.2f}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"model": args.model, "results": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
