"""Two source trees of geoseg side by side (prints figures; not a test): the same ``geoseg run`` from each,
alternating, whole process, and whether their outputs are the same.

    git worktree add /tmp/base HEAD~1
    python benchmarks/bench_trees.py /tmp/base . --repeats 3 -- SCENE.tif [--backend fastscnn ...]

Each round runs ``python -m geoseg.cli run ARGS -o OUT/<tree>-<round> --quiet`` once per tree, in that tree's
folder with ``PYTHONPATH`` set to it (so its ``geoseg`` is imported, not the installed one), its stdout and stderr
read to the end (a process the run leaves behind holding them counts). Reported per tree: wall seconds, best
and mean, and anything the run printed on stderr; then the ratio of the bests and means (first tree / second)
and, for every raster of the first round, whether the two trees wrote it byte for byte the same.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path


def run_from(tree: Path, args: list[str], out: Path) -> tuple[float, str]:
    """Wall seconds of one ``geoseg run`` from ``tree`` and what it printed on stderr."""
    env = dict(os.environ, PYTHONPATH=str(tree))
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "geoseg.cli", "run", *args, "-o", str(out), "--quiet"], cwd=tree,
                          env=env, capture_output=True, text=True)
    wall_s = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"{tree}: geoseg run failed ({proc.returncode}): {proc.stderr.strip()[-500:]}")
    return wall_s, proc.stderr.strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("trees", nargs=2, type=Path, help="two geoseg source trees (the first is the reference)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("runs/bench-trees"))
    argv = sys.argv[1:]
    if "--" not in argv:
        parser.error("give the arguments of geoseg run after --")
    split = argv.index("--")
    args = parser.parse_args(argv[:split])
    run_args = argv[split + 1:]
    trees = [t.resolve() for t in args.trees]
    run_args = [str(Path(a).resolve()) if Path(a).exists() else a for a in run_args]  # runs start in each tree
    walls: dict[int, list[float]] = {0: [], 1: []}
    printed: dict[int, list[str]] = {0: [], 1: []}
    for r in range(args.repeats):
        for i, tree in enumerate(trees):
            wall_s, err = run_from(tree, run_args, (args.out / f"tree{i}-{r}").resolve())
            walls[i].append(round(wall_s, 2))
            if err:
                printed[i].append(err[-300:])
            print(f"round {r + 1}, {tree}: {wall_s:.2f} s" + (" (printed on stderr)" if err else ""), flush=True)
    best = {i: min(w) for i, w in walls.items()}
    mean = {i: sum(w) / len(w) for i, w in walls.items()}
    same = {}
    for raster in sorted((args.out / "tree0-0").rglob("*.tif")):
        other = args.out / "tree1-0" / raster.relative_to(args.out / "tree0-0")
        same[str(raster.relative_to(args.out / "tree0-0"))] = other.exists() and other.read_bytes() == raster.read_bytes()
    for i, tree in enumerate(trees):
        print(f"{tree}: best {best[i]:.2f} s, mean {mean[i]:.2f} s, stderr in {len(printed[i])} of {args.repeats} runs")
    print(f"first / second: best {best[0] / best[1]:.3f}x, mean {mean[0] / mean[1]:.3f}x; rasters byte for byte the "
          f"same: {sum(same.values())} of {len(same)}")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench_trees.json").write_text(json.dumps(
        {"trees": [str(t) for t in trees], "run_args": run_args, "walls_s": walls, "stderr": printed,
         "same_rasters": same}, indent=2) + "\n")


if __name__ == "__main__":
    main()
