"""The real-time backends against the dense U-Net end to end (prints figures; not a test).

    python benchmarks/bench_realtime.py [--sizes 4096,8192] [--backends fastscnn] [--precision auto] [--repeats 2]
        [--out runs/bench-realtime]

For each size, a generated scene (``geoseg.demo.generate_scene``, seed = the size) goes through ``geoseg run
--backend unet`` and ``--backend B`` for each of ``--backends`` (their shipped models), each in its own process
with the default LocalCluster, at the given ``--precision`` (``auto``: bf16 autocast where the CPU has
AMX/AVX512-BF16), alternating, ``--repeats`` rounds. Reported: the whole process's wall seconds (imports, cluster
start and close included: what a user waits for), best and mean, and the ratio U-Net / backend of the bests; plus
the model seconds on the workers from ``summary.json``. Writes OUT/bench_realtime.json.
"""

from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path

from bench_gate import run
from geoseg.demo import generate_scene
from geoseg.formats import DEFAULT_FORMATS
from geoseg.model import bf16_is_fast


def cpu_name() -> str:
    """The CPU's model name (Linux), else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def run_once(scene: Path, backend: str, precision: str, out: Path) -> dict:
    """One ``geoseg run`` in its own process with every default vector format (``bench_gate.run``): wall seconds
    and what its summary says."""
    summary = run(scene, out, None, ["--backend", backend, "--precision", precision], formats=",".join(DEFAULT_FORMATS))
    return {"wall_s": summary["process_s"], "summary_s": summary["seconds"],
            "model_s": summary["stage_seconds"]["model_on_workers"], "buildings": summary["buildings"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="4096,8192")
    parser.add_argument("--backends", default="fastscnn", help="compared with the dense U-Net (comma-separated)")
    parser.add_argument("--precision", default="auto", choices=("auto", "bf16", "fp32"))
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", default="runs/bench-realtime")
    args = parser.parse_args()
    out = Path(args.out)
    backends = ["unet", *args.backends.split(",")]
    report = {"cpu": cpu_name(), "bf16_fast": bf16_is_fast(),
              "precision": args.precision, "repeats": args.repeats, "sizes": {}}
    for size in [int(s) for s in args.sizes.split(",") if s]:
        scene = generate_scene(out / "scenes" / f"scene_{size}.tif", size_px=size, seed=size)
        runs: dict[str, list[dict]] = {b: [] for b in backends}
        for r in range(args.repeats):
            for backend in backends:
                runs[backend].append(run_once(scene, backend, args.precision, out / f"{size}-{backend}-{r}"))
        best = {b: min(x["wall_s"] for x in rs) for b, rs in runs.items()}
        row = {"runs": runs, "best_wall_s": best,
               "mean_wall_s": {b: round(sum(x["wall_s"] for x in rs) / len(rs), 2) for b, rs in runs.items()},
               "ratio_unet_to": {b: round(best["unet"] / best[b], 2) for b in backends[1:]}}
        report["sizes"][size] = row
        for b in backends:
            print(f"{size} px, {b:>10}: wall best {best[b]:.1f} s, mean {row['mean_wall_s'][b]:.1f} s, model "
                  f"{min(x['model_s'] for x in runs[b]):.1f} worker-s"
                  + (f"; U-Net / {b}: {row['ratio_unet_to'][b]:.2f}x" if b != "unet" else ""), flush=True)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench_realtime.json").write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
