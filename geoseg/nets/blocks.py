"""Building blocks of the real-time nets (Fast-SCNN, ContextNet): conv-BN-ReLU, depthwise separable conv,
MobileNetV2 bottleneck, and a resize that always targets an explicit size (never a fixed scale factor, so odd
feature-map sizes cannot make two branches disagree)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def conv_bn_relu(c_in: int, c_out: int, kernel: int = 3, stride: int = 1, groups: int = 1, dilation: int = 1,
                 relu: bool = True) -> nn.Sequential:
    layers = [nn.Conv2d(c_in, c_out, kernel, stride, padding=dilation * (kernel // 2), dilation=dilation,
                        groups=groups, bias=False), nn.BatchNorm2d(c_out)]
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


def ds_conv(c_in: int, c_out: int, stride: int = 1) -> nn.Sequential:
    """Depthwise 3x3 (+BN, no non-linearity, as both papers) then pointwise 1x1 + BN + ReLU."""
    return nn.Sequential(conv_bn_relu(c_in, c_in, 3, stride, groups=c_in, relu=False), conv_bn_relu(c_in, c_out, 1))


class Bottleneck(nn.Module):
    """MobileNetV2 inverted residual: 1x1 expand (t) + ReLU, depthwise 3x3 stride s + ReLU, 1x1 linear project;
    residual when input and output have the same shape."""

    def __init__(self, c_in: int, c_out: int, expansion: int, stride: int):
        super().__init__()
        hidden = c_in * expansion
        layers = [] if expansion == 1 else [conv_bn_relu(c_in, hidden, 1)]
        layers += [conv_bn_relu(hidden, hidden, 3, stride, groups=hidden), conv_bn_relu(hidden, c_out, 1, relu=False)]
        self.block = nn.Sequential(*layers)
        self.residual = stride == 1 and c_in == c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.block(x)
        return x + y if self.residual else y


def bottleneck_stage(c_in: int, c_out: int, expansion: int, repeats: int, stride: int) -> nn.Sequential:
    """``repeats`` bottlenecks; the stride applies to the first only."""
    return nn.Sequential(*[Bottleneck(c_in if i == 0 else c_out, c_out, expansion, stride if i == 0 else 1)
                           for i in range(repeats)])


def resize(x: torch.Tensor, size: tuple[int, int] | torch.Size) -> torch.Tensor:
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)


class TwoBranchNet(nn.Module):
    """What Fast-SCNN and ContextNet share after their encoders: ``decode`` = fusion of the 1/8 and 1/32
    features + classifier, upsampled x8; ``aux_logits`` = the auxiliary heads (training only) at that size.
    Subclasses set ``fusion``, ``classifier`` and ``aux`` and say which features the aux heads read."""

    fusion: nn.Module
    classifier: nn.Module

    def aux_inputs(self, features: list[torch.Tensor]) -> list[tuple[nn.Module, torch.Tensor]]:
        raise NotImplementedError

    def decode(self, features: list[torch.Tensor], index: torch.Tensor | None = None) -> torch.Tensor:
        if index is not None:
            features = [f[index] for f in features]
        high, low = features
        return resize(self.classifier(self.fusion(high, low)), _input_size(high))

    def aux_logits(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        return [resize(head(f), _input_size(features[0])) for head, f in self.aux_inputs(features)]


def _input_size(high: torch.Tensor) -> tuple[int, int]:
    """The (padded) input size of a 1/8-resolution feature map."""
    return high.shape[-2] * 8, high.shape[-1] * 8


class FusionUnit(nn.Module):
    """Feature fusion of both papers (Fast-SCNN Table 3, ContextNet Table 3): the low-resolution features are
    resized to the high-resolution map, then depthwise 3x3 with dilation 4 + ReLU and a linear 1x1; the
    high-resolution features get a linear 1x1; the sum goes through ReLU."""

    def __init__(self, c_high: int, c_low: int, c_out: int):
        super().__init__()
        self.low = nn.Sequential(conv_bn_relu(c_low, c_low, 3, groups=c_low, dilation=4),
                                 conv_bn_relu(c_low, c_out, 1, relu=False))
        self.high = conv_bn_relu(c_high, c_out, 1, relu=False)

    def forward(self, high: torch.Tensor, low: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.high(high) + self.low(resize(low, high.shape[-2:])))
