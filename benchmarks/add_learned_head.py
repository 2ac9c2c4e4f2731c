"""Put the learned head of a freshly calibrated gate into a shipped gate file, keeping the shipped file's own
rules (the paper's thresholds, the coarse probe, its calibration report) as they are.

    python benchmarks/add_learned_head.py geoseg/models/buildings-unet-r18.gate.json runs/gate-new/buildings-unet-r18.gate.json

Why: `geoseg calibrate` refits the paper's thresholds too, and on a CPU without bf16 they come out a little
different from the shipped ones (calibrated in bf16): the shipped gate's decisions would change for no reason.
Both files must be bound to the same weights.
"""

import json
import sys
from pathlib import Path

from geoseg.atomic import write_text_atomic

shipped_path, fresh_path = Path(sys.argv[1]), Path(sys.argv[2])
shipped, fresh = json.loads(shipped_path.read_text()), json.loads(fresh_path.read_text())
if shipped["model_sha256"] != fresh["model_sha256"]:
    raise SystemExit(f"{fresh_path} was calibrated for other weights than {shipped_path}")
if fresh.get("linear") is None:
    raise SystemExit(f"{fresh_path} has no learned head (calibrate with --per-group)")
shipped["linear"] = fresh["linear"]
shipped["rule"] = shipped.get("rule", "paper")
shipped["calibration"]["linear"] = fresh["calibration"]["linear"] | {"fitted_by": "geoseg calibrate " + " ".join(
    f"--{k.replace('_', '-')} {fresh['calibration'][k]}" for k in ("target_fraction", "k1", "k2", "min_group_tiles"))
    + " --target-recall 0.95 --per-group (fp32)"}
write_text_atomic(shipped_path, json.dumps(shipped, indent=1) + "\n")
print(f"{shipped_path}: learned head from {fresh_path} ({fresh['calibration']['linear']['out_of_fold']})")
