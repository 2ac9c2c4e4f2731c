"""Instance backends: the light Mask R-CNN (``maskrcnn-light``) and its C4 baseline (``maskrcnn``).

Besides per-class probabilities (the instances' semantic view, so mask.tif and probability.tif are written as
for every backend), each prediction carries the tile's instances scoring at least the card's
``instance_score_threshold``: the mask thresholded at 0.5 and cropped to its box. The pipeline keeps each
building once across tiles (:func:`geoseg.tile.owned_areas`)."""

from __future__ import annotations

import numpy as np
import torch

from ..instances import semantic_logits, tile_instances
from . import BatchPrediction, check_score_threshold
from .unet import ArchitectureBackend


class InstanceBackend(ArchitectureBackend):
    """The backend of the instance architectures (``maskrcnn-light``, ``maskrcnn``)."""

    def __init__(self, model: str | None = None, device: str = "cpu", precision: str = "auto",
                 score_threshold: float | None = None, architecture: str = ""):
        super().__init__(model=model, device=device, precision=precision, architecture=architecture)
        if score_threshold is not None:
            self.net.set_score_threshold(check_score_threshold(score_threshold))

    @torch.inference_mode()
    def predict(self, pixels: np.ndarray) -> BatchPrediction:
        h, w = pixels.shape[-2:]
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            x = self.model_input(pixels)
            detections = [{k: v.float() for k, v in d.items()} for d in self.net.detect(x)]
        card = self.card
        probabilities = semantic_logits(detections, len(card.classes), card.building_class, tuple(x.shape[-2:]),
                                        card.instance_score_threshold).exp()
        instances = [tile_instances(d, h, w, card.instance_score_threshold) for d in detections]
        return BatchPrediction(self.to_numpy(probabilities, h, w), decoded=len(pixels), instances=instances,
                               counters={"instances_detected": sum(len(i) for i in instances)})
