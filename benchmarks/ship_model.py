"""Copy a trained run's best model into the package (geoseg/models/NAME.safetensors + card) and record how it
was made.

    python benchmarks/ship_model.py runs/NAME "geoseg train geoseg/configs/NAME.yaml -o runs/NAME" [--note TEXT] [--last]
        [--to DIR]

``--to``: write NAME.safetensors + card into DIR instead of the package (for runs that are compared, not shipped).

``--last``: ship the weights of the last epoch (``checkpoint.pt``) instead of the best one, with their
validation figures measured again on the config's validation scenes (for runs whose selection metric could
not tell epochs apart, e.g. instance models whose scores had not yet reached the card's threshold).
"""

import json
import shutil
import sys
from pathlib import Path

run, command = Path(sys.argv[1]), sys.argv[2]
note = sys.argv[sys.argv.index("--note") + 1] if "--note" in sys.argv else ""
card = json.loads((run / "best.json").read_text())
history = json.loads((run / "history.json").read_text())
folder = Path(sys.argv[sys.argv.index("--to") + 1]) if "--to" in sys.argv else Path(__file__).resolve().parents[1] / "geoseg" / "models"
folder.mkdir(parents=True, exist_ok=True)
target = folder / card["name"]
if "--last" in sys.argv:
    import torch

    from geoseg.card import ModelCard
    from geoseg.model import bf16_is_fast, build_model, save_model
    from geoseg.config import TrainConfig, load_config, load_scenes
    from geoseg.train import validate

    net = build_model(ModelCard.from_json(run / "best.json"))
    net.load_state_dict(torch.load(run / "checkpoint.pt", weights_only=True)["model"])
    config = TrainConfig.model_validate(card["training"]["config_values"])
    _, root = load_config(card["training"]["config"])
    autocast = card["training"].get("bf16_autocast", False) and bf16_is_fast()
    pooled, per_scene = validate(net, load_scenes(config, root, "val"), autocast)
    net.card.metrics = {"validation": {"epoch": history[-1]["epoch"], **pooled}, "validation_per_scene": per_scene}
    net.card.training |= {"epochs_run": history[-1]["epoch"], "seconds": history[-1]["seconds"]}  # not the best epoch's
    save_model(net, target.with_suffix(".safetensors"))
    card = json.loads(target.with_suffix(".json").read_text())
else:
    shutil.copyfile(run / "best.safetensors", target.with_suffix(".safetensors"))
card["training"]["command"] = command
card["training"]["note"] = note
card["training"]["validation_curve"] = [{k: e[k] for k in ("epoch", "train_loss", "building_iou", "mean_iou", "seconds")}
                                        for e in history]
target.with_suffix(".json").write_text(json.dumps(card, indent=2) + "\n")
print(f"shipped {card['name']}: validation {card['metrics']['validation']}")
