"""Fast-SCNN (Poudel et al. 2019, Tables 1-3), as an encoder -> decoder split for geoseg.

* learning to downsample (1/8): Conv2D 32 s2, DSConv 48 s2, DSConv 64 s2;
* global feature extractor (1/32): bottlenecks t=6 64x3 s2, 96x3 s2, 128x3 s1, then pyramid pooling (bins 1, 2,
  3, 6 of the map, whatever its size) -> 128;
* feature fusion (:class:`~geoseg.nets.blocks.FusionUnit`, 128) and classifier (2 DSConv 128 + 1x1), upsampled x8.

``encode`` = learning to downsample + global feature extractor (the gate reads the global features);
``decode`` = fusion + classifier. The pyramid-pooling branches have no BatchNorm: after 1x1 pooling a
batch-size-1 training step would give BatchNorm a single value per channel.
1.13 M parameters with 19 classes (the paper: 1.11 M).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .blocks import FusionUnit, TwoBranchNet, bottleneck_stage, conv_bn_relu, ds_conv, resize


class PyramidPooling(nn.Module):
    def __init__(self, channels: int, bins=(1, 2, 3, 6)):
        super().__init__()
        self.bins = bins
        branch = channels // len(bins)
        self.branches = nn.ModuleList(nn.Sequential(nn.Conv2d(channels, branch, 1), nn.ReLU(inplace=True)) for _ in bins)
        self.project = conv_bn_relu(channels + branch * len(bins), channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        pooled = [resize(b(F.adaptive_avg_pool2d(x, bins)), size) for b, bins in zip(self.branches, self.bins)]
        return self.project(torch.cat([x, *pooled], dim=1))


class FastSCNN(TwoBranchNet):
    def __init__(self, in_channels: int, classes: int):
        super().__init__()
        self.downsample = nn.Sequential(conv_bn_relu(in_channels, 32, 3, 2), ds_conv(32, 48, 2), ds_conv(48, 64, 2))
        self.global_features = nn.Sequential(
            bottleneck_stage(64, 64, 6, 3, 2), bottleneck_stage(64, 96, 6, 3, 2), bottleneck_stage(96, 128, 6, 3, 1),
            PyramidPooling(128),
        )
        self.fusion = FusionUnit(64, 128, 128)
        self.classifier = nn.Sequential(ds_conv(128, 128), ds_conv(128, 128), nn.Dropout(0.1), nn.Conv2d(128, classes, 1))
        # auxiliary heads (training only, loss weight 0.4): on the 1/8 and the 1/32 features
        self.aux = nn.ModuleList([nn.Conv2d(64, classes, 1), nn.Conv2d(128, classes, 1)])

    def encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        high = self.downsample(x)
        return [high, self.global_features(high)]

    def aux_inputs(self, features: list[torch.Tensor]) -> list[tuple[nn.Module, torch.Tensor]]:
        return list(zip(self.aux, features))
