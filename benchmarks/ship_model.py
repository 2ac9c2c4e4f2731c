"""Copy a trained run's best model into the package (geoseg/models/NAME.safetensors + card) and record how it
was made.

    python benchmarks/ship_model.py runs/NAME "geoseg train geoseg/configs/NAME.yaml -o runs/NAME" [--note TEXT]
"""

import json
import shutil
import sys
from pathlib import Path

run, command = Path(sys.argv[1]), sys.argv[2]
note = sys.argv[sys.argv.index("--note") + 1] if "--note" in sys.argv else ""
card = json.loads((run / "best.json").read_text())
history = json.loads((run / "history.json").read_text())
card["training"]["command"] = command
card["training"]["note"] = note
card["training"]["validation_curve"] = [{k: e[k] for k in ("epoch", "train_loss", "building_iou", "mean_iou", "seconds")}
                                        for e in history]
target = Path(__file__).resolve().parents[1] / "geoseg" / "models" / f"{card['name']}"
shutil.copyfile(run / "best.safetensors", target.with_suffix(".safetensors"))
target.with_suffix(".json").write_text(json.dumps(card, indent=2) + "\n")
print(f"shipped {card['name']}: validation {card['metrics']['validation']}")
