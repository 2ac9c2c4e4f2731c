"""Dense U-Net backend: every tile goes through encoder and decoder (the baseline the gate is measured against)."""

from __future__ import annotations

import numpy as np
import torch

from ..errors import GeosegError
from ..model import fold_batchnorm, load_model, use_bf16
from . import DEFAULT_MODELS, BatchPrediction


def torch_device(device: str) -> torch.device:
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise GeosegError(f"--device {device}: CUDA is not available on this machine")
    return torch.device(device)


class UNetBackend:
    name = "unet"

    def __init__(self, model: str | None = None, device: str = "cpu", precision: str = "auto"):
        self.device = torch_device(device)
        self.bf16 = use_bf16(precision, device)
        net, self.model_sha256 = load_model(model)
        self.card = net.card
        self.net = fold_batchnorm(net)
        # channels_last lets oneDNN pick its fast convolution kernels on CPU (58 % -> 88 % of matmul peak).
        self.net = self.net.to(self.device, memory_format=torch.channels_last)

    def model_input(self, pixels: np.ndarray) -> torch.Tensor:
        """[0, 1] tiles (N, bands, h, w) -> the model's prepared input on the device (padded to its multiple)."""
        return self.net.prepare(torch.from_numpy(np.ascontiguousarray(pixels)).to(self.device))

    @staticmethod
    def to_numpy(probabilities: torch.Tensor, h: int, w: int) -> np.ndarray:
        """Cropped float16 probabilities. The cast happens in torch: numpy's float32 -> float16 cost as much as
        Fast-SCNN's forward pass."""
        return probabilities[..., :h, :w].half().cpu().numpy()

    @torch.inference_mode()
    def predict(self, pixels: np.ndarray) -> BatchPrediction:
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            logits = self.net(self.model_input(pixels))
        probabilities = torch.softmax(logits.float(), dim=1)
        return BatchPrediction(self.to_numpy(probabilities, *pixels.shape[-2:]), decoded=len(pixels))


class ArchitectureBackend(UNetBackend):
    """A backend bound to one architecture (``architecture``, equal to the backend's name): its own model when
    none is given (:data:`DEFAULT_MODELS`), and a clear error for a model of another architecture."""

    architecture = ""

    def __init__(self, model: str | None = None, device: str = "cpu", precision: str = "auto"):
        super().__init__(model=model or DEFAULT_MODELS[self.name], device=device, precision=precision)
        if self.card.architecture != self.architecture:
            raise GeosegError(f"--backend {self.name}: model {self.card.name} is a {self.card.architecture}, "
                              f"not a {self.architecture}")
