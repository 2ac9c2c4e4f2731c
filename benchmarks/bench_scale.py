"""Scaling benchmark (prints figures; not a test): how a run divides between workers and the driver, and what
that predicts for a large cluster. All figures from one run on one machine, quoted as ratios.

    python benchmarks/bench_scale.py [--size 8192] [--chips 40] [--big 20000] [--out bench-output/scale]

1. **Workers 1 vs 2** on (a) one generated ``--size`` scene and (b) ``--chips`` generated one-tile chips in one
   run, on a LocalCluster started and warmed (model loaded on every worker) before the clock starts; the cold
   start is timed apart. Per stage worker-seconds and driver-seconds per megapixel (from the summaries), the
   driver process's CPU time (its own steps and, in a LocalCluster, the scheduler's thread), wall time, and
   the serial fraction s from the two wall times (Amdahl: T(n) = T(1) (s + (1 - s) / n), so
   s = 2 T(2) / T(1) - 1), with the speed-up it projects on 16, 64 and 256 workers.
2. **Fast-SCNN vs the dense U-Net** end to end on the ``--size`` scene: ``geoseg run`` in its own process, cluster
   start included, as a user runs it.
3. **Driver memory**: ``geoseg run`` (Fast-SCNN, 2 workers) on a 4096 px and a ``--big`` px scene, the driver's
   peak RSS from each summary.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

from geoseg.backends import load_backend
from geoseg.cluster import dask_client
from geoseg.demo import generate_scene
from geoseg.pipeline import RunOptions, resolve_model, run_scenes

STAGES = ("read_on_workers", "model_on_workers", "stitch_on_workers", "vectorise_on_workers", "write_on_workers")


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def timed_run(client, scenes: list[Path], out: Path, opts: RunOptions) -> dict:
    """One run of ``scenes`` on a warm cluster: wall, driver CPU, summed stage seconds per Mpx."""
    cpu, t = _cpu_s(), time.perf_counter()
    summaries = []
    for outcome in run_scenes([(str(s), s.stem) for s in scenes], out, opts, client):
        if isinstance(outcome.result, Exception):
            raise outcome.result
        summaries.append(outcome.result)
    wall, driver_cpu = time.perf_counter() - t, _cpu_s() - cpu
    mpx = sum(s.megapixels for s in summaries)
    stages = {k: sum(s.stage_seconds[k] for s in summaries) for k in STAGES}
    worker_s, driver_s = sum(stages.values()), sum(s.driver_s for s in summaries)
    return {"wall_s": wall, "megapixels": mpx, "worker_s": worker_s, "driver_s": driver_s, "driver_cpu_s": driver_cpu,
            "worker_s_per_mpx": {k: v / mpx for k, v in stages.items()}, "driver_s_per_mpx": driver_s / mpx,
            "buildings": sum(s.buildings for s in summaries)}


def scaling(scene: Path, chips: list[Path], out: Path, workers: tuple[int, ...] = (1, 2)) -> dict:
    opts = RunOptions(progress=False)
    spec = resolve_model(opts).spec
    result = {}
    for n in workers:
        t = time.perf_counter()
        with dask_client(n, None) as client:
            client.run(load_backend, spec)  # warm: every worker imports torch and loads the model once
            start_s = time.perf_counter() - t
            run_opts = dataclasses.replace(opts, workers=n)
            result[n] = {"cold_start_s": start_s,
                         "scene": timed_run(client, [scene], out / f"w{n}", run_opts),
                         "chips": timed_run(client, chips, out / f"w{n}-chips", run_opts)}
        row = result[n]
        print(f"{n} worker(s): cluster start + model load {row['cold_start_s']:.1f} s; scene {row['scene']['wall_s']:.1f} s "
              f"(worker {row['scene']['worker_s']:.1f} s, driver {row['scene']['driver_s']:.2f} s, driver process CPU "
              f"{row['scene']['driver_cpu_s']:.1f} s); chips {row['chips']['wall_s']:.1f} s (worker {row['chips']['worker_s']:.1f} s, "
              f"driver {row['chips']['driver_s']:.2f} s, driver process CPU {row['chips']['driver_cpu_s']:.1f} s)", flush=True)
    return result


def amdahl(t1: float, t2: float) -> dict:
    serial = min(1.0, max(0.0, 2 * t2 / t1 - 1))
    return {"speedup_2": t1 / t2, "serial_fraction": serial,
            **{f"projected_speedup_{n}": 1 / (serial + (1 - serial) / n) for n in (16, 64, 256)}}


def cli_run(scene: Path, out: Path, *flags: str) -> dict:
    """``geoseg run`` in its own process (imports, cluster start and model load included): its summary + wall."""
    t = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "geoseg.cli", "run", str(scene), "-o", str(out), "--quiet", *flags],
                          capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(proc.stderr[-2000:])
    summary = json.loads((out / scene.stem / "summary.json").read_text())
    return summary | {"process_wall_s": time.perf_counter() - t}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=8192, help="scene side, px")
    parser.add_argument("--chips", type=int, default=40, help="one-tile chips (512 px) in the batch run")
    parser.add_argument("--big", type=int, default=20000, help="side of the scene for driver memory, px (0: skip)")
    parser.add_argument("--skip", default="", help="comma-separated parts to skip: scaling,realtime,memory")
    parser.add_argument("--out", default="bench-output/scale")
    args = parser.parse_args()
    out, skip = Path(args.out), set(args.skip.split(","))
    scenes = out / "scenes"
    scene = generate_scene(scenes / f"scene_{args.size}.tif", size_px=args.size, seed=args.size)
    report: dict = {"size_px": args.size}
    if "scaling" not in skip:
        chips = [generate_scene(scenes / "chips" / f"chip_{i:03d}.tif", size_px=512, seed=1000 + i) for i in range(args.chips)]
        runs = scaling(scene, chips, out / "scaling")
        report["scaling"] = {str(n): r for n, r in runs.items()}
        for part in ("scene", "chips"):
            fit = amdahl(runs[1][part]["wall_s"], runs[2][part]["wall_s"])
            report[f"amdahl_{part}"] = fit
            share = runs[1][part]["driver_s"] / runs[1][part]["worker_s"]
            print(f"{part}: 2 workers {fit['speedup_2']:.2f}x 1 worker; serial fraction {fit['serial_fraction']:.3f}; "
                  f"projected {fit['projected_speedup_16']:.1f}x / {fit['projected_speedup_64']:.1f}x / "
                  f"{fit['projected_speedup_256']:.1f}x on 16 / 64 / 256 workers; driver busy {share:.1%} of worker time")
            per_mpx = runs[1][part]["worker_s_per_mpx"]
            print("  worker s/Mpx: " + ", ".join(f"{k.replace('_on_workers', '')} {v:.3f}" for k, v in per_mpx.items())
                  + f"; driver s/Mpx {runs[1][part]['driver_s_per_mpx']:.4f}")
    if "realtime" not in skip:
        fast = cli_run(scene, out / "fastscnn", "--backend", "fastscnn", "--workers", "2")
        dense = cli_run(scene, out / "unet", "--backend", "unet", "--workers", "2")
        report["realtime"] = {"fastscnn_s": fast["process_wall_s"], "unet_s": dense["process_wall_s"],
                              "fastscnn_summary_s": fast["seconds"], "unet_summary_s": dense["seconds"],
                              "speedup": dense["process_wall_s"] / fast["process_wall_s"]}
        print(f"{args.size} px scene end to end (own process, 2 workers): Fast-SCNN {fast['process_wall_s']:.1f} s, "
              f"dense U-Net {dense['process_wall_s']:.1f} s: {report['realtime']['speedup']:.2f}x")
    if "memory" not in skip and args.big:
        rows = {}
        for size in (4096, args.big):
            big = generate_scene(scenes / f"scene_{size}.tif", size_px=size, seed=size)
            s = cli_run(big, out / f"memory-{size}", "--backend", "fastscnn", "--workers", "2")
            rows[size] = {k: s[k] for k in ("peak_rss_mb_driver", "peak_rss_mb_workers", "buildings", "seconds",
                                            "driver_s", "worker_s")}
            print(f"{size} px: driver peak RSS {s['peak_rss_mb_driver']:.0f} MB, workers {s['peak_rss_mb_workers']:.0f} MB "
                  f"(sum), {s['buildings']} buildings, {s['seconds']:.0f} s", flush=True)
        small, large = rows[4096], rows[args.big]
        growth = large["peak_rss_mb_driver"] / small["peak_rss_mb_driver"] - 1
        report["memory"] = {str(k): v for k, v in rows.items()} | {"driver_growth": growth}
        print(f"driver peak RSS {args.big} vs 4096 px: {growth:+.1%}")
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench_scale.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"figures written to {out / 'bench_scale.json'}")


if __name__ == "__main__":
    main()
