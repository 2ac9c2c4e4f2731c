"""geoseg against what a torchgeo user writes for the same job (issue 27): whole process, same scene, same weights,
same precision, alternating; prints the wall-time ratio, both building IoUs against the reference and how far
the two masks agree. Needs the bench extra: ``pip install -e ".[bench]"`` (torchgeo).

    python benchmarks/bench_peer.py SCENE.tif --reference REF.tif [--repeats 2] [--precision fp32|bf16]
        [--workers 2] [--out runs/bench-peer]

The sparse scene of the gate benchmarks is the intended input (``python benchmarks/make_sparse_scene.py --out
runs/sparse7``: 3584 px, real validation-side imagery, ``sparse.reference.tif`` 1 building / 0 background / 255
unknown).

**The peer** (``--peer`` runs it alone, in its own process): a ``RasterDataset`` of the scene, a
``GridGeoSampler`` of 512 px chips with a 448 px stride, a ``DataLoader`` (batches of 4, as geoseg's), the
``segmentation_models_pytorch.Unet`` of geoseg's default architecture loaded with geoseg's default weights, the
same input scaling (per-band 2nd-98th percentiles of the scene's valid pixels, then the card's mean/std), overlaps
averaged in RAM over the whole scene, ``torch.set_num_threads`` = ``--workers``, then the building mask (argmax,
separator counted as building) written as a GeoTIFF and ``rasterio.features.shapes`` polygons (buildings of 4 m2 or
more) written as GeoJSON (EPSG:4326) and GeoPackage. **geoseg**: ``geoseg run SCENE --backend unet --formats
geojson,gpkg --workers N --precision P`` (the same dense U-Net, not the gate). Both are timed as whole processes
(imports, model load, cluster start included), best of ``--repeats``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve()


def run_peer(scene: Path, out: Path, workers: int, precision: str) -> None:
    """The torchgeo pipeline (module docstring), in this process."""
    import geopandas as gpd
    import rasterio
    import segmentation_models_pytorch as smp
    import shapely
    import torch
    from rasterio.features import shapes
    from safetensors.torch import load_file
    from torch.utils.data import DataLoader
    from torchgeo.datasets import RasterDataset, stack_samples
    from torchgeo.samplers import GridGeoSampler

    from geoseg.card import ModelCard, resolve_model_path

    torch.set_num_threads(workers)
    weights = resolve_model_path(None)
    card = ModelCard.from_json(weights.with_suffix(".json"))
    net = smp.Unet(card.encoder, encoder_weights=None, classes=len(card.classes))
    state = {k.replace("head.", "segmentation_head.", 1) if k.startswith("head.") else k: v.float()
             for k, v in load_file(weights).items()}
    net.load_state_dict(state)
    net.eval()

    class Scene(RasterDataset):
        filename_glob = scene.name
        is_image = True

    dataset = Scene(paths=[str(scene.parent)])
    sampler = GridGeoSampler(dataset, size=512, stride=448)
    loader = DataLoader(dataset, sampler=sampler, batch_size=4, collate_fn=stack_samples)
    with rasterio.open(scene) as src:
        profile, transform, height, width = src.profile, src.transform, src.height, src.width
        raw, valid = src.read().astype(np.float32), src.dataset_mask() > 0
    low = np.array([np.percentile(b[valid], 2) for b in raw], np.float32)[:, None, None]
    high = np.array([np.percentile(b[valid], 98) for b in raw], np.float32)[:, None, None]
    del raw
    mean = torch.tensor(card.norm_mean).view(1, -1, 1, 1)
    std = torch.tensor(card.norm_std).view(1, -1, 1, 1)
    summed = np.zeros((len(card.classes), height, width), np.float32)
    count = np.zeros((height, width), np.float32)
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
        for batch in loader:
            x = torch.from_numpy(np.clip((batch["image"].numpy() - low) / (high - low), 0, 1))
            probs = net((x - mean) / std).float().softmax(1).numpy()
            for p, (xs, ys, _) in zip(probs, batch["bounds"]):
                col, row = ~transform * (xs.start, ys.stop)  # the chip's top-left; the grid may overhang an edge
                r0, c0 = int(round(row)), int(round(col))
                top, left = max(r0, 0), max(c0, 0)
                r1, c1 = min(r0 + 512, height), min(c0 + 512, width)
                summed[:, top:r1, left:c1] += p[:, top - r0: r1 - r0, left - c0: c1 - c0]
                count[top:r1, left:c1] += 1
    labels = summed.argmax(0)
    building = np.isin(labels, [card.building_class] + ([card.separator_class] if card.separator_class else []))
    building &= valid & (count > 0)
    out.mkdir(parents=True, exist_ok=True)
    profile.update(count=1, dtype="uint8", nodata=255, compress="deflate")
    with rasterio.open(out / "mask.tif", "w", **profile) as dst:
        dst.write(np.where(valid, building, 255).astype(np.uint8), 1)
    polygons = [shapely.geometry.shape(g) for g, v in shapes(building.astype(np.uint8), mask=building,
                                                              connectivity=4, transform=transform)]
    frame = gpd.GeoDataFrame(geometry=polygons, crs=profile["crs"])
    frame = frame[frame.area >= 4.0].reset_index(drop=True)
    frame.to_crs("EPSG:4326").to_file(out / "buildings.geojson", driver="GeoJSON")
    frame.to_file(out / "buildings.gpkg", driver="GPKG")


def timed(command: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


def building_iou(mask: np.ndarray, reference: np.ndarray) -> float:
    known = reference != 255
    predicted, truth = (mask == 1) & known, (reference == 1) & known
    return float((predicted & truth).sum() / max((predicted | truth).sum(), 1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("scene")
    parser.add_argument("--reference")
    parser.add_argument("--out", default="runs/bench-peer")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--peer", action="store_true", help="run the peer pipeline once, in this process")
    args = parser.parse_args()
    scene, out = Path(args.scene).resolve(), Path(args.out)
    if args.peer:
        run_peer(scene, out / "peer", args.workers, args.precision)
        return
    import rasterio

    peer = [sys.executable, str(HERE), str(scene), "--out", str(out), "--workers", str(args.workers),
            "--precision", args.precision, "--peer"]
    ours = [sys.executable, "-m", "geoseg.cli", "run", str(scene), "-o", str(out / "geoseg"), "--backend", "unet",
            "--formats", "geojson,gpkg", "--workers", str(args.workers), "--precision", args.precision, "--quiet"]
    seconds: dict[str, list[float]] = {"peer": [], "geoseg": []}
    for _ in range(args.repeats):  # alternating, so both see the same machine
        seconds["peer"].append(timed(peer))
        seconds["geoseg"].append(timed(ours))
    with rasterio.open(out / "peer" / "mask.tif") as a, rasterio.open(out / "geoseg" / scene.stem / "mask.tif") as b:
        peer_mask, our_mask = a.read(1), b.read(1)
    report = {"scene": str(scene), "workers": args.workers, "precision": args.precision, "seconds": seconds,
              "best_s": {k: min(v) for k, v in seconds.items()},
              "geoseg_speedup": round(min(seconds["peer"]) / min(seconds["geoseg"]), 2),
              "mask_agreement": round(float(((peer_mask == 1) == (our_mask == 1)).mean()), 4),
              "building_agreement_iou": building_iou(our_mask, np.where(peer_mask == 255, 255, peer_mask == 1))}
    if args.reference:
        with rasterio.open(args.reference) as ref:
            reference = ref.read(1)
        report["iou"] = {"peer": round(building_iou(peer_mask, reference), 4),
                         "geoseg": round(building_iou(our_mask, reference), 4)}
    print(json.dumps(report, indent=2))
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
