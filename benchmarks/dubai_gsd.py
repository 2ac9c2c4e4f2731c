"""Is 0.5 m the Dubai tiles' scale? Building IoU of a model on Dubai's validation tile read at several assumed GSDs.

    python benchmarks/dubai_gsd.py MODEL.safetensors 0.5,0.75,1.0 [--config geoseg/configs/buildings-unet-r18.yaml]

The Dubai land-cover tiles carry no georeferencing; training assumes ``assumed_gsd_m`` (0.5 m). A model trained at
0.3 m on other places should score best on tile_3 read at the tiles' true scale, so the curve over assumed GSDs
brackets it. Pixel figures as in training validation (``geoseg.train.validate``), bf16 where the CPU is fast at it.
Measured 2026-12-01 with the previous default (never trained on Dubai): 0.5 m 0.144, 0.75 m 0.049, 1.0 m 0.037.
"""

import argparse
import time

from geoseg.model import bf16_is_fast, load_model
from geoseg.config import load_config, load_scenes
from geoseg.train import validate

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("model")
parser.add_argument("gsds_m", help="comma-separated assumed GSDs in metres")
parser.add_argument("--config", default="geoseg/configs/buildings-unet-r18.yaml")
args = parser.parse_args()
config, root = load_config(args.config)
dubai = next(s for s in config.sources if s.kind == "dubai")
net, _ = load_model(args.model)
for gsd_m in [float(g) for g in args.gsds_m.split(",")]:
    started = time.perf_counter()
    one = config.model_copy(update={"sources": [dubai.model_copy(update={"assumed_gsd_m": gsd_m})]})
    pooled, _ = validate(net, load_scenes(one, root, "val"), bf16_is_fast())
    print(f"assumed {gsd_m} m: building IoU {pooled['building_iou']:.3f} precision {pooled['building_precision']:.3f} "
          f"recall {pooled['building_recall']:.3f} ({pooled['pixels'] / 1e6:.1f} Mpx, {time.perf_counter() - started:.0f} s)")
