"""SegBlocks backend: the U-Net processed in blocks, each at full or half resolution as its policy net chooses
(:class:`geoseg.model.SegBlocksModel`). ``tau`` is the target fraction of full-resolution blocks: the card's
calibrated P(high) threshold for it where there is one, else the top ``tau`` of each tile's blocks. Every
prediction counts blocks, so ``summary.json`` reports the fraction actually run at full resolution."""

from __future__ import annotations

import numpy as np
import torch

from . import BatchPrediction, check_tau
from .unet import ArchitectureBackend


class SegBlocksBackend(ArchitectureBackend):
    def __init__(self, model: str | None = None, device: str = "cpu", precision: str = "auto",
                 tau: float | None = None, architecture: str = ""):
        super().__init__(model=model, device=device, precision=precision, architecture=architecture)
        if tau is not None:
            check_tau(tau)
            self.net.tau = tau

    @torch.inference_mode()
    def predict(self, pixels: np.ndarray) -> BatchPrediction:
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            x = self.model_input(pixels)
            layout = self.net.choose(x)
            logits = self.net.forward_blocks(x, layout)
        probabilities = torch.softmax(logits.float(), dim=1)
        counters = {"blocks": int(layout.high.numel()), "high_res_blocks": int(layout.high.sum())}
        return BatchPrediction(self.to_numpy(probabilities, *pixels.shape[-2:]), decoded=len(pixels), counters=counters)
