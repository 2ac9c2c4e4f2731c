"""Gated backend (BGS-Net, for any model with ``encode``/``decode``): encoder on every tile, the gate on the bottleneck, decoder only where it opens.

The encoder runs on the whole batch; the gate averages only the bottleneck channels its rules read; the decoder
runs once on the opened subset (``decode(features, index)``, no per-tile loop). A skipped tile gets a coarse
prediction instead of a blank: the gate's linear probe (a 1x1 conv on the bottleneck) gives the other classes
at 1/32 resolution, bilinearly upsampled, with the building (and separator) probability set to 0 — the gate
said "no building". A model whose only other class is background gets background.

``gate`` picks the gate file's rule (``paper`` or the learned ``linear`` head; None: the file's own).
``cascade`` puts the thumbnail pre-gate (:mod:`geoseg.pregate`) in front: only the tiles it passes reach the
encoder (the others get no building, like a tile the gate skips, without the coarse probe: there is no
bottleneck). The pre-gate runs in fp32 whatever the precision, so its decisions do not depend on the CPU.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..card import resolve_model_path
from ..gate import Gate, load_gate
from ..pregate import load_pregate
from . import BatchPrediction
from ..architectures import GATED_BACKEND
from .unet import UNetBackend


class BGSBackend(UNetBackend):
    def __init__(self, model: str | None = None, device: str = "cpu", precision: str = "auto", gate: Gate | None = None,
                 rule: str | None = None, cascade: bool = False):
        super().__init__(model=model, device=device, precision=precision)
        self.name = GATED_BACKEND[0]
        self.gate = (gate or load_gate(resolve_model_path(model), self.model_sha256)).with_rule(rule)
        self.pregate = load_pregate(resolve_model_path(model), self.model_sha256, self.device) if cascade else None
        self.channels = torch.tensor(self.gate.channels, device=self.device)
        card = self.card
        self.no_building = [i for i in range(len(card.classes)) if i not in (card.building_class, card.separator_class)]
        self.probe = None
        if self.gate.coarse_weight is not None:
            weight = torch.tensor(self.gate.coarse_weight, dtype=torch.float32, device=self.device)
            bias = torch.tensor(self.gate.coarse_bias, dtype=torch.float32, device=self.device)
            self.probe = (weight[:, :, None, None], bias)

    def coarse(self, bottleneck: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """Probabilities (n, classes, H, W) for skipped tiles (``size``: the padded input size)."""
        n, classes = len(bottleneck), len(self.card.classes)
        if self.probe is None:
            probs = torch.zeros((n, classes) + tuple(bottleneck.shape[-2:]), device=bottleneck.device)
            probs[:, self.no_building[0]] = 1.0
        else:
            probs = torch.softmax(F.conv2d(bottleneck.float(), *self.probe), dim=1)
            keep = torch.zeros(classes, device=probs.device)
            keep[self.no_building] = 1.0
            probs = probs * keep.view(1, -1, 1, 1)
            probs = probs / probs.sum(1, keepdim=True).clamp_min(1e-6)
        return F.interpolate(probs, size=size, mode="bilinear", align_corners=False)

    def blank(self, n: int, size: tuple[int, int]) -> torch.Tensor:
        """Probabilities (n, classes, H, W) of tiles the pre-gate keeps from the encoder: the first class that is
        not building (background)."""
        probs = torch.zeros((n, len(self.card.classes)) + size, device=self.device)
        probs[:, self.no_building[0]] = 1.0
        return probs

    @torch.inference_mode()
    def predict(self, pixels: np.ndarray) -> BatchPrediction:
        x = self.model_input(pixels)
        if self.pregate is None:
            probs, decoded = self.gated(x)
            return BatchPrediction(self.to_numpy(probs, *pixels.shape[-2:]), decoded=decoded)
        passed = self.pregate.passes(x)  # fp32, outside autocast
        index = torch.nonzero(passed).flatten()
        if len(index) == len(x):
            probs, decoded = self.gated(x)
        else:
            probs = self.blank(len(x), tuple(x.shape[-2:]))
            decoded = 0
            if len(index):
                probs[index], decoded = self.gated(x[index].contiguous(memory_format=torch.channels_last))
        return BatchPrediction(self.to_numpy(probs, *pixels.shape[-2:]), decoded=decoded,
                               counters={"tiles_past_pregate": len(index)})

    def gated(self, x: torch.Tensor) -> tuple[torch.Tensor, int]:
        """Encoder -> gate -> decoder on a prepared batch: (probabilities (n, classes, H, W), tiles decoded)."""
        n = len(x)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            features = self.net.encode(x)
            bottleneck = features[-1]
            means = np.zeros((n, self.gate.bottleneck_channels))
            means[:, self.gate.channels] = bottleneck[:, self.channels].float().mean((2, 3)).cpu().numpy()
            opened = torch.from_numpy(self.gate.open(means)).to(self.device)
            index = torch.nonzero(opened).flatten()
            if len(index) == n:  # all open: the plain decoder call, no subset copy of the skip features
                probs = torch.softmax(self.net.decode(features).float(), dim=1)
            else:
                probs = torch.empty((n, len(self.card.classes)) + tuple(x.shape[-2:]), device=self.device)
                if len(index):
                    probs[index] = torch.softmax(self.net.decode(features, index).float(), dim=1)
                probs[~opened] = self.coarse(bottleneck[~opened], tuple(x.shape[-2:]))
        return probs, len(index)
