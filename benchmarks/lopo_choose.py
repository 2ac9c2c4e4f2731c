"""Choosing a run setting by leave-one-place-out without looking at the place scored (nested selection).

    python benchmarks/lopo_choose.py runs/lopo-a/report.json runs/lopo-b/report.json [grown=runs/lopo-c/report.json]
        [--by iou+f1] [--json OUT]

The reports of ``benchmarks/leave_one_place_out.py`` hold, for each left-out place, one column per ``--run``
setting (e.g. ``building_threshold=0.3,...``). Picking the column with the best mean over all places, and
quoting that mean, tunes on the very places it reports. Here each place P is scored with the column that the
*other* places rank best (their mean of ``--by``: building pixel IoU, SpaceNet F1 or the sum of both; with ``--f1-floor COLUMN``, only
among the columns whose mean F1 there stays within ``--tolerance`` of that column's), as a
setting fixed before a new city is seen would be; the mean of those figures is the honest one. The table also
gives every column's per-place figures and the column all places together would pick (what to ship).
``LABEL=REPORT`` prefixes that report's columns with ``LABEL:`` (the same ``--run`` columns measured another way,
e.g. with another code version), so they are choices of their own.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def load_places(reports: list[str]) -> dict[str, dict[str, dict]]:
    """{place: {column: metrics}} from one or more reports (``LABEL=path``: columns named ``LABEL:column``; the
    same place and column in two reports: the later wins)."""
    places: dict[str, dict[str, dict]] = {}
    for given in reports:
        label, _, path = given.rpartition("=") if "=" in given else ("", "", given)
        for place, columns in json.loads(Path(path).read_text())["places"].items():
            places.setdefault(place, {}).update({f"{label}:{c}" if label else c: m for c, m in columns.items()})
    return places


def score(metrics: dict, by: str) -> float:
    return {"iou": metrics["building_iou"], "f1": metrics["spacenet_f1"],
            "iou+f1": metrics["building_iou"] + metrics["spacenet_f1"]}[by]


def pick(places: dict[str, dict[str, dict]], judges: list[str], columns: list[str], by: str,
         f1_floor: str | None = None, tolerance: float = 0.005) -> str:
    """The column with the best mean ``by`` over the ``judges`` places (a tie: the better F1); with ``f1_floor`` (a column), only among
    columns whose mean SpaceNet F1 there is at most ``tolerance`` below that column's."""
    mean = lambda c, key: np.mean([score(places[p][c], key) for p in judges])  # noqa: E731
    if f1_floor is not None:
        columns = [c for c in columns if mean(c, "f1") >= mean(f1_floor, "f1") - tolerance]
    return max(columns, key=lambda c: (mean(c, by), mean(c, "f1"), c))  # equal IoU (one mask, two ways of outlining it): F1


def nested_choice(places: dict[str, dict[str, dict]], by: str, f1_floor: str | None = None,
                  tolerance: float = 0.005) -> dict:
    """For each place, the column the other places rank first (:func:`pick`), and the place's figures with it."""
    columns = sorted(set.intersection(*(set(cols) for cols in places.values())))
    chosen = {}
    for place in places:
        others = [p for p in places if p != place]
        best = pick(places, others, columns, by, f1_floor, tolerance)
        chosen[place] = {"column": best, **{k: places[place][best][k] for k in ("building_iou", "spacenet_f1")}}
    overall = pick(places, list(places), columns, by, f1_floor, tolerance)
    table = {c: {p: {k: places[p][c][k] for k in ("building_iou", "spacenet_f1")} for p in places} for c in columns}
    return {"columns": columns, "table": table, "by_place": chosen, "shipped_choice": overall,
            "mean_building_iou": round(float(np.mean([v["building_iou"] for v in chosen.values()])), 4),
            "mean_spacenet_f1": round(float(np.mean([v["spacenet_f1"] for v in chosen.values()])), 4)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("reports", nargs="+")
    parser.add_argument("--by", choices=("iou", "f1", "iou+f1"), default="iou+f1")
    parser.add_argument("--f1-floor", metavar="COLUMN", help="choose only among columns whose mean F1 is not below "
                        "this column's (by more than --tolerance): e.g. raise IoU without losing outlines")
    parser.add_argument("--tolerance", type=float, default=0.005)
    parser.add_argument("--json", metavar="OUT")
    args = parser.parse_args(argv)
    places = load_places(args.reports)
    result = nested_choice(places, args.by, args.f1_floor, args.tolerance)
    width = max(len(c) for c in result["columns"])
    print(f"{'column':<{width}}  " + "  ".join(f"{p:>14}" for p in places) + "            mean")
    for c in result["columns"]:
        cells = [places[p][c] for p in places]
        mean_iou = np.mean([m["building_iou"] for m in cells])
        mean_f1 = np.mean([m["spacenet_f1"] for m in cells])
        print(f"{c:<{width}}  " + "  ".join(f"{m['building_iou']:.3f} / {m['spacenet_f1']:.3f}" for m in cells)
              + f"   {mean_iou:.3f} / {mean_f1:.3f}")
    floor = f", F1 within {args.tolerance} of {args.f1_floor}'s" if args.f1_floor else ""
    print(f"\nchosen by the other places' mean {args.by}{floor} (nested):")
    for p, v in result["by_place"].items():
        print(f"  {p:<10} {v['column']:<{width}}  IoU {v['building_iou']:.3f}  F1 {v['spacenet_f1']:.3f}")
    print(f"  mean       IoU {result['mean_building_iou']:.3f}  F1 {result['mean_spacenet_f1']:.3f}")
    print(f"all places would pick: {result['shipped_choice']}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
