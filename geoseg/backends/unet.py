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


#: test-time augmentation: (quarter turns, left-right flip) applied to a tile and undone on its prediction. The
#: four views (as is, mirrored, upside down, both) are closed under flips, so TTA's output of a mirrored tile is
#: the mirrored output: the average cannot prefer one direction
TTA_TURNS = ((0, False), (0, True), (2, False), (2, True))


def _turned(x: torch.Tensor, k: int, flip: bool) -> torch.Tensor:
    """A view of TTA: ``k`` quarter turns, then mirrored left-right if ``flip``; the tile itself (no copy) for
    ``(0, False)``, the only view without TTA (``torch.rot90`` copies even for no turn)."""
    x = torch.rot90(x, k, dims=(2, 3)) if k else x
    return x.flip(3) if flip else x


def _turned_back(p: torch.Tensor, k: int, flip: bool) -> torch.Tensor:
    """Undo :func:`_turned` on a prediction."""
    p = p.flip(3) if flip else p
    return torch.rot90(p, -k, dims=(2, 3)) if k else p


class UNetBackend:
    """Runs any encoder-decoder model of the table (:mod:`geoseg.architectures`) densely; named after the
    architecture of the model it runs."""

    def __init__(self, model: str | None = None, device: str = "cpu", precision: str = "auto", tta: bool = False,
                 architecture: str | None = None):
        self.tta = tta
        self.device = torch_device(device)
        self.bf16 = use_bf16(precision, device)
        net, self.model_sha256 = load_model(model)
        self.card = net.card
        self.name = architecture or self.card.architecture
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

    def probabilities(self, x: torch.Tensor) -> torch.Tensor:
        """Class probabilities of a prepared batch; with TTA the mean over :data:`TTA_TURNS` (each view turned
        and flipped back before averaging, so every view votes for the same pixel)."""
        views = TTA_TURNS if self.tta else ((0, False),)
        total = None
        for k, flip in views:
            view = _turned(x, k, flip)
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
                logits = self.net(view)
            p = _turned_back(torch.softmax(logits.float(), dim=1), k, flip)
            total = p if total is None else total + p
        return total / len(views)

    @torch.inference_mode()
    def predict(self, pixels: np.ndarray) -> BatchPrediction:
        probabilities = self.probabilities(self.model_input(pixels))
        return BatchPrediction(self.to_numpy(probabilities, *pixels.shape[-2:]), decoded=len(pixels))


class ArchitectureBackend(UNetBackend):
    """The backend of one architecture row (the real-time nets, and the base of SegBlocks' and Mask R-CNN's): its
    own model when none is given (:data:`DEFAULT_MODELS`), and a clear error for a model of another architecture."""

    def __init__(self, model: str | None = None, device: str = "cpu", precision: str = "auto", tta: bool = False,
                 architecture: str = ""):
        super().__init__(model=model or DEFAULT_MODELS.get(architecture), device=device, precision=precision, tta=tta,
                         architecture=architecture)
        if self.card.architecture != architecture:
            raise GeosegError(f"--backend {architecture}: model {self.card.name} is a {self.card.architecture}, "
                              f"not a {architecture}")
