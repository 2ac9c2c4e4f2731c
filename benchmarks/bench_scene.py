"""Scene benchmark (prints figures; not a test). All numbers from one run on one machine, quoted as ratios.

    python benchmarks/bench_scene.py [--sizes 4096,8192] [--workers 2] [--threads N] [--out bench-output]

``--threads 1`` measures the model as one worker runs it (one torch thread each); ``--sizes ""`` skips the scenes.

1. float32 and bfloat16 matmul peaks of this machine (2048 x 2048 ``torch.mm``, all torch threads), GFLOP/s;
   bf16 is emulated (slow) on CPUs without AVX512-BF16/AMX, where its figures say little;
2. the default model's forward pass on a batch of 512 px tiles: GFLOP per tile (counted with torch's
   FlopCounterMode, 2 FLOP per multiply-add), encoder/decoder split, achieved GFLOP/s in the default memory
   format and in channels_last (each a share of the fp32 peak), and in channels_last under bf16 autocast (a share
   of the bf16 peak);
3. end to end on generated scenes of each size (LocalCluster, one torch thread per worker): Mpx/s, peak RSS
   of driver and workers (it must not grow with scene size), and the share of time outside the model
   (read + stitch + vectorise + write).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from geoseg.demo import generate_scene
from geoseg.model import fold_batchnorm, load_model


def matmul_peak_gflops(n: int = 2048, repeats: int = 10, rounds: int = 3, dtype: torch.dtype = torch.float32) -> float:
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    torch.mm(a, b)
    best_s = float("inf")
    for _ in range(rounds):  # best of rounds: AMX's first calls after idle ran at 2/3 of its rate here
        t = time.perf_counter()
        for _ in range(repeats):
            torch.mm(a, b)
        best_s = min(best_s, time.perf_counter() - t)
    return 2 * n**3 * repeats / best_s / 1e9


def model_figures(batch: int = 4, tile_px: int = 512, repeats: int = 3) -> dict:
    net, _ = load_model()
    net = fold_batchnorm(net)  # as the workers run it (geoseg.backends.unet); load_model gives it in eval mode
    x = torch.randn(batch, 3, tile_px, tile_px)
    with torch.inference_mode():
        with FlopCounterMode(display=False) as count_all:
            features = net.encode(x)
        encoder_flop = count_all.get_total_flops()
        with FlopCounterMode(display=False) as count_dec:
            net.decode(features)
        decoder_flop = count_dec.get_total_flops()
        total_flop = encoder_flop + decoder_flop
        result = {"gflop_per_tile": total_flop / batch / 1e9, "decoder_share_of_flop": decoder_flop / total_flop}
        variants = (("default", torch.contiguous_format, False), ("channels_last", torch.channels_last, False),
                    ("channels_last_bf16", torch.channels_last, True))
        for label, fmt, bf16 in variants:
            net = net.to(memory_format=fmt)
            xf = x.contiguous(memory_format=fmt)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                net(xf)  # warm-up: oneDNN picks and caches kernels
                t = time.perf_counter()
                for _ in range(repeats):
                    net(xf)
            seconds = (time.perf_counter() - t) / repeats
            result[f"gflops_{label}"] = total_flop / seconds / 1e9
            result[f"tiles_per_s_{label}"] = batch / seconds
    return result


def run_scene_in_own_process(scene: Path, out: Path, workers: int | None) -> dict:
    """``geoseg run`` in a fresh process, so each scene's peak RSS is its own (ru_maxrss is a lifetime peak)."""
    cmd = [sys.executable, "-m", "geoseg.cli", "run", str(scene), "-o", str(out), "--quiet"]
    if workers is not None:
        cmd += ["--workers", str(workers)]
    subprocess.run(cmd, check=True)
    return json.loads((out / scene.stem / "summary.json").read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="4096,8192", help="scene sizes in px, comma-separated")
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--threads", type=int, default=None, help="torch threads for the peak and the model figures")
    parser.add_argument("--out", default="bench-output")
    args = parser.parse_args()
    out = Path(args.out)
    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    peak = matmul_peak_gflops()
    peak_bf16 = matmul_peak_gflops(dtype=torch.bfloat16)
    model = model_figures()
    print(f"matmul peak ({threads} threads): fp32 {peak:.1f} GFLOP/s, bf16 {peak_bf16:.1f} GFLOP/s")
    print(f"U-Net forward: {model['gflop_per_tile']:.1f} GFLOP per 512 px tile, decoder {model['decoder_share_of_flop']:.0%} of it")
    for label, precision, against in (("default", "fp32", peak), ("channels_last", "fp32", peak),
                                      ("channels_last_bf16", "bf16", peak_bf16)):
        print(f"  {label:>18}: {model[f'gflops_{label}']:.1f} GFLOP/s = {model[f'gflops_{label}'] / against:.0%} of the "
              f"{precision} peak, {model[f'tiles_per_s_{label}']:.2f} tiles/s")
    scenes = []
    for size in [int(s) for s in args.sizes.split(",") if s]:
        scene = generate_scene(out / "scenes" / f"bench_{size}.tif", size_px=size, seed=size)
        s = run_scene_in_own_process(scene, out, args.workers)
        stages = s["stage_seconds"]
        outside_model = (stages["read_on_workers"] + stages["stitch_on_workers"] + stages["vectorise_on_workers"]
                         + stages["write_on_workers"])
        busy = outside_model + stages["model_on_workers"]
        driver_after = stages["driver"]
        row = {"size_px": size, **{k: s[k] for k in ("megapixels", "seconds", "megapixels_per_second", "buildings",
                                                       "peak_rss_mb", "peak_rss_mb_driver", "peak_rss_mb_workers")},
               "stages": stages, "share_outside_model": outside_model / busy,
               "share_of_wall_in_driver": driver_after / s["seconds"]}
        scenes.append(row)
        print(f"{size}x{size} ({s['megapixels']:.1f} Mpx): {s['megapixels_per_second']:.3f} Mpx/s, {s['seconds']:.0f} s, "
              f"peak RSS {s['peak_rss_mb']:.0f} MB (driver {s['peak_rss_mb_driver']:.0f}, workers {s['peak_rss_mb_workers']:.0f}); "
              f"read+stitch+vectorise+write {row['share_outside_model']:.1%} of busy time; stages {stages}")
    if len(scenes) > 1:
        a, b = scenes[0], scenes[-1]
        print(f"peak RSS ratio {b['size_px']} vs {a['size_px']} px scene ({b['megapixels'] / a['megapixels']:.1f}x the pixels): "
              f"driver {b['peak_rss_mb_driver'] / a['peak_rss_mb_driver']:.2f}x, workers {b['peak_rss_mb_workers'] / a['peak_rss_mb_workers']:.2f}x")
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench.json").write_text(json.dumps({"matmul_peak_gflops": peak, "matmul_peak_gflops_bf16": peak_bf16, "threads": threads, "model": model,
                                                "scenes": scenes}, indent=2))
    print(f"figures written to {out / 'bench.json'}")


if __name__ == "__main__":
    main()
