"""Pre-gate: a thumbnail net that decides, before the encoder, whether a tile may hold buildings (the cascade).

The bottleneck gate (:mod:`geoseg.gate`) saves the decoder only: the encoder still runs on every tile, and it is
about 44 % of the U-Net's time. The pre-gate looks at a *thumbnail* of the model input instead: the prepared
tile (standardised, padded as the encoder sees it) averaged over ``factor`` x ``factor`` px blocks (4: a 512 px
tile at 0.3 m becomes 128 x 128 px at 1.2 m), through :class:`ThumbNet` (a small fully convolutional net: a
building logit for every 16 x 16 px cell of the tile; 0.165 GFLOP for a 512 px tile, under 1 % of the
ResNet-18 encoder's 18.95). A tile whose highest cell logit is at or above ``threshold`` goes on to the encoder and the
bottleneck gate; the others get no building and never reach the encoder. Tiles of any size work (a scene
smaller than a tile gives a smaller thumbnail and map).

The threshold is chosen for a building-tile *recall* (0.99 by default), not for accuracy: a skipped building
tile is lost, a passed empty tile only costs an encoder pass. It is chosen on scenes the net did not train on
(:func:`geoseg.calibrate.held_scenes`: every fourth scene of each place that has several), as the highest logit
with which the recall holds pooled and in every place with enough building tiles there
(:func:`geoseg.gate.recall_threshold`, worst-group as the bottleneck gate).

Stored as ``NAME.pregate.safetensors`` beside ``NAME.safetensors``: the net's weights, and in the metadata the
factor, threshold, the model's sha256 it was calibrated with and the calibration report.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

from .atomic import atomic_path
from .errors import GeosegError
from .gate import pregate_path

#: thumbnail factor: model-input pixels averaged into one thumbnail pixel a side
THUMB_FACTOR = 4
#: building-tile recall the threshold is chosen for
PREGATE_RECALL = 0.99


def thumbnails(x: torch.Tensor, factor: int = THUMB_FACTOR) -> torch.Tensor:
    """(N, bands, H, W) model input -> (N, bands, ceil(H / factor), ceil(W / factor)) block means (float32)."""
    return F.avg_pool2d(x.float(), factor, ceil_mode=True)


class ThumbNet(nn.Module):
    """A small fully convolutional net on a thumbnail: conv-BN-ReLU stages of 16 (full thumbnail resolution), 32
    (1/2), 64 (1/4) and 64 channels (1/4, dilation 2), then a 1x1 conv: one building logit per *cell* of
    ``CELL_PX`` tile pixels (16: 4.8 m at 0.3 m). Trained on where the buildings are, not only on whether the
    tile holds one (far more signal per tile); a tile's score is its highest cell logit (:meth:`tile_logits`)."""

    def __init__(self, bands: int = 3, width: int = 16):
        super().__init__()

        def stage(c_in: int, c_out: int, stride: int = 1, dilation: int = 1) -> list[nn.Module]:
            return [nn.Conv2d(c_in, c_out, 3, stride, padding=dilation, dilation=dilation, bias=False),
                    nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]

        self.features = nn.Sequential(*stage(bands, width), *stage(width, 2 * width, 2), *stage(2 * width, 4 * width, 2),
                                      *stage(4 * width, 4 * width, dilation=2))
        self.head = nn.Conv2d(4 * width, 1, 1)

    def forward(self, thumbs: torch.Tensor) -> torch.Tensor:
        """(N, bands, h, w) thumbnails -> (N, ceil(h / 4), ceil(w / 4)) cell logits."""
        return self.head(self.features(thumbs))[:, 0]

    def tile_logits(self, thumbs: torch.Tensor) -> torch.Tensor:
        """(N,): each tile's highest cell logit."""
        return self(thumbs).amax((1, 2))


#: tile pixels per cell of the pre-gate's map a side (the thumbnail factor times the net's stride of 4)
CELL_PX = THUMB_FACTOR * 4


@dataclass
class PreGate:
    """A calibrated thumbnail pre-gate for one model (see the module docstring)."""

    net: ThumbNet
    threshold: float  # logit: tiles at or above it go on to the encoder
    factor: int = THUMB_FACTOR
    model_sha256: str = ""
    calibration: dict = field(default_factory=dict)

    @torch.inference_mode()
    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """One logit per tile of a model-input batch (N, bands, H, W): its highest cell logit."""
        return self.net.tile_logits(thumbnails(x, self.factor))

    def passes(self, x: torch.Tensor) -> torch.Tensor:
        """bool (N,): which tiles of a model-input batch go on to the encoder."""
        return self.logits(x) >= self.threshold

    def save(self, path: str | os.PathLike) -> None:
        meta = {"factor": str(self.factor), "threshold": repr(float(self.threshold)), "model_sha256": self.model_sha256,
                "bands": str(self.net.features[0].in_channels), "width": str(self.net.features[0].out_channels),
                "calibration": json.dumps(self.calibration)}
        with atomic_path(path) as tmp:
            save_file({k: v.detach().contiguous() for k, v in self.net.state_dict().items()}, str(tmp), metadata=meta)

    @classmethod
    def load(cls, path: str | os.PathLike, device: str | torch.device = "cpu") -> "PreGate":
        from safetensors import safe_open

        with safe_open(str(path), "pt") as f:  # metadata and weights from one opening
            meta = f.metadata()
            weights = {k: f.get_tensor(k) for k in f.keys()}
        net = ThumbNet(int(meta["bands"]), int(meta["width"]))
        net.load_state_dict(weights)
        return cls(net.eval().to(device), float(meta["threshold"]), int(meta["factor"]), meta["model_sha256"],
                   json.loads(meta["calibration"]))


def load_pregate(model_path: str | os.PathLike, model_sha256: str, device: str | torch.device = "cpu") -> PreGate:
    """The pre-gate beside a model; refuses one calibrated for other weights (its thumbnails are of that model's
    prepared input)."""
    path = pregate_path(model_path)
    if not path.exists():
        raise GeosegError(f"no pre-gate for {Path(model_path).name}: run `geoseg calibrate --pregate` to make {path.name}")
    pre = PreGate.load(path, device)
    if pre.model_sha256 != model_sha256:
        raise GeosegError(f"{path.name} was calibrated for other weights (sha256 {pre.model_sha256[:12]}..., "
                          f"model is {model_sha256[:12]}...): calibrate again")
    return pre


# ---- training and calibration: thumbnails (N tiles) with tile labels and places ------------------------------


def _augment(x: torch.Tensor, cells: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """The same random turn and flip of the whole batch of thumbnails (N, bands, h, w) and their cell targets
    (N, h', w'); per tile a contrast (x0.4-1.6), per band a gain (+-15 %) and offset (+-0.8 std): other sensors,
    light and scene stretches (a scene mostly of water or desert is stretched flatter), in the standardised
    units of the model input. A turn of a non-square batch is left out (the maps would not match)."""
    if x.shape[2] == x.shape[3]:
        k = int(torch.randint(4, (1,), generator=gen))
        x, cells = torch.rot90(x, k, (2, 3)), torch.rot90(cells, k, (1, 2))
    if torch.rand(1, generator=gen) < 0.5:
        x, cells = x.flip(3), cells.flip(2)
    n, c = x.shape[:2]
    contrast = 0.4 + 1.2 * torch.rand(n, 1, 1, 1, generator=gen)  # the whole scene's stretch: 0.4-1.6
    gain = contrast * (0.85 + 0.3 * torch.rand(n, c, 1, 1, generator=gen))  # and each band's: +-15 %
    offset = 0.8 * (2 * torch.rand(n, c, 1, 1, generator=gen) - 1)
    return x * gain + offset, cells


def train_thumbnet(thumbs: list[torch.Tensor], cells: list[np.ndarray], target: np.ndarray, groups: np.ndarray,
                   steps: int = 2000, batch: int = 32, seed: int = 0, ignore: int = 255, progress=None) -> ThumbNet:
    """Fit a :class:`ThumbNet` to where the buildings are: ``cells`` are each tile's training map (one value per
    :data:`CELL_PX` cell: 1 building, 0 not, ``ignore`` unknown; :func:`geoseg.calibrate.building_cells`). Each
    step draws one group (place) uniformly, one of its tile sizes by how many tiles have it, then ``batch`` of
    those tiles, half with buildings
    (``target``) where the group has both; per-cell binary cross-entropy (building cells weighted 2x), unlabelled
    cells left out; AdamW, cosine learning rate."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    net = ThumbNet(thumbs[0].shape[0])
    optimiser = torch.optim.AdamW(net.parameters(), lr=3e-3, weight_decay=1e-3)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, steps)
    by_size: dict[str, dict[tuple, list[int]]] = {}
    for i, (t, g) in enumerate(zip(thumbs, groups)):
        by_size.setdefault(str(g), {}).setdefault(tuple(t.shape), []).append(i)
    places = [[np.asarray(v) for v in sizes.values()] for sizes in by_size.values()]
    net.train()
    for _ in range(steps):
        pools = places[rng.integers(len(places))]
        sizes = np.array([len(p) for p in pools], float)
        pool = pools[rng.choice(len(pools), p=sizes / sizes.sum())]
        pos, neg = pool[target[pool]], pool[~target[pool]]
        if len(pos) and len(neg):
            pick = np.concatenate([rng.choice(pos, batch // 2), rng.choice(neg, batch - batch // 2)])
        else:
            pick = rng.choice(pool, batch)
        x, y = _augment(torch.stack([thumbs[i] for i in pick]).float(),
                        torch.from_numpy(np.stack([cells[i] for i in pick])), gen)
        logits = net(x)
        h, w = min(logits.shape[1], y.shape[1]), min(logits.shape[2], y.shape[2])  # ceil sizes differ by one at most
        logits, y = logits[:, :h, :w], y[:, :h, :w]
        known = y != ignore
        weight = torch.where(y == 1, 2.0, 1.0)[known]
        loss = F.binary_cross_entropy_with_logits(logits[known], (y[known] == 1).float(), weight=weight)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        schedule.step()
        if progress is not None:
            progress.update(1)
    return net.eval()


@torch.inference_mode()
def score_thumbnails(net: ThumbNet, thumbs: list[torch.Tensor], batch: int = 64) -> np.ndarray:
    """Each thumbnail's tile logit, thumbnails of one size scored together in batches."""
    out = np.zeros(len(thumbs))
    by_size: dict[tuple, list[int]] = {}
    for i, t in enumerate(thumbs):
        by_size.setdefault(tuple(t.shape), []).append(i)
    for rows in by_size.values():
        for start in range(0, len(rows), batch):
            pick = rows[start : start + batch]
            out[pick] = net.tile_logits(torch.stack([thumbs[i] for i in pick]).float()).numpy()
    return out
