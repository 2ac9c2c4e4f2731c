"""ContextNet (Poudel et al. 2018, cn14, Tables 1-3), as an encoder -> decoder split for geoseg.

* shallow branch on the full-resolution input (1/8): Conv 32 s2, DSConv 64 s2, DSConv 128 s2, DSConv 128 s1;
* deep branch on the input resized to a quarter (1/32 of the full input): Conv 32 s2, bottlenecks (t, c, n, s)
  (1, 32, 1, 1), (6, 32, 1, 1), (6, 48, 3, 2), (6, 64, 3, 2), (6, 96, 2, 1), (6, 128, 2, 1), Conv 1x1 128
  (the table gives no kernel size; 1x1 is what matches the paper's parameter count, 3x3 would add 17 %);
* fusion unit (:class:`~geoseg.nets.blocks.FusionUnit`, 128) and a 1x1 classifier, upsampled x8.

``encode`` = both branches (the gate reads the deep branch's output); ``decode`` = fusion + classifier.
The quarter-resolution input is resized to an explicit size (input // 4, at least 1 px), never by a fixed
scale factor. 0.86 M parameters with 19 classes (the paper: 0.85 M).
"""

from __future__ import annotations

import torch
from torch import nn

from .blocks import FusionUnit, TwoBranchNet, bottleneck_stage, conv_bn_relu, ds_conv, resize


class ContextNet(TwoBranchNet):
    def __init__(self, in_channels: int, classes: int):
        super().__init__()
        self.shallow = nn.Sequential(conv_bn_relu(in_channels, 32, 3, 2), ds_conv(32, 64, 2), ds_conv(64, 128, 2),
                                     ds_conv(128, 128, 1))
        self.deep = nn.Sequential(
            conv_bn_relu(in_channels, 32, 3, 2),
            bottleneck_stage(32, 32, 1, 1, 1), bottleneck_stage(32, 32, 6, 1, 1), bottleneck_stage(32, 48, 6, 3, 2),
            bottleneck_stage(48, 64, 6, 3, 2), bottleneck_stage(64, 96, 6, 2, 1), bottleneck_stage(96, 128, 6, 2, 1),
            conv_bn_relu(128, 128, 1),
        )
        self.fusion = FusionUnit(128, 128, 128)
        self.classifier = nn.Sequential(nn.Dropout(0.1), nn.Conv2d(128, classes, 1))
        self.aux = nn.Conv2d(128, classes, 1)  # auxiliary head on the deep branch (training only, weight 0.4)

    def encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        quarter = resize(x, (max(1, x.shape[-2] // 4), max(1, x.shape[-1] // 4)))
        return [self.shallow(x), self.deep(quarter)]

    def aux_inputs(self, features: list[torch.Tensor]) -> list[tuple[nn.Module, torch.Tensor]]:
        return [(self.aux, features[1])]
