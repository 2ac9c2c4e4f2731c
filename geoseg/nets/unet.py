"""U-Net with a ResNet-18/34 encoder, written here so that a process running it imports torch only.

segmentation-models-pytorch builds the same network, but importing it pulls timm, torchvision and
``torch._dynamo``: 1.7 s of every ``geoseg run`` and every worker start (issue 17). This module mirrors smp's
``Unet(encoder_name="resnet18"|"resnet34")`` module for module — the same attribute names, so the same
state-dict keys, and the same operations in the same order — so the shipped weights load unchanged and give the
same outputs (``tests/test_model.py`` checks both against smp). Other encoders are still built by smp
(:class:`geoseg.model.SegmentationModel`).

Encoder: a torchvision-style ResNet without its classifier; ``forward`` returns the six feature maps smp's
encoder returns (the input, the stem, and the four stages). Decoder: five blocks, each upsampling (nearest) to
the next skip's size, concatenating it, and two 3x3 conv-BN-ReLU; no centre block, no attention.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

#: encoder name -> blocks per stage (BasicBlock ResNets)
RESNET_LAYERS = {"resnet18": (2, 2, 2, 2), "resnet34": (3, 4, 6, 3)}
_WIDTHS = (64, 128, 256, 512)


class BasicBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.downsample = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
                                            nn.BatchNorm2d(out_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + identity)


class ResNetEncoder(nn.Module):
    def __init__(self, name: str, in_channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        stages, width = [], 64
        for i, (blocks, out) in enumerate(zip(RESNET_LAYERS[name], _WIDTHS)):
            stride = 1 if i == 0 else 2
            stages.append(nn.Sequential(*[BasicBlock(width if b == 0 else out, out, stride if b == 0 else 1)
                                          for b in range(blocks)]))
            width = out
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.out_channels = (in_channels, 64, *_WIDTHS)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        stem = self.relu(self.bn1(self.conv1(x)))
        features = [x, stem, self.layer1(self.maxpool(stem))]
        for layer in (self.layer2, self.layer3, self.layer4):
            features.append(layer(features[-1]))
        return features


def conv_bn_relu(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False), nn.BatchNorm2d(out_channels),
                         nn.ReLU(inplace=True))


class DecoderBlock(nn.Module):
    def __init__(self, in_channels: int, skip_channels: int, out_channels: int):
        super().__init__()
        self.conv1 = conv_bn_relu(in_channels + skip_channels, out_channels)
        self.attention1 = nn.Identity()
        self.conv2 = conv_bn_relu(out_channels, out_channels)
        self.attention2 = nn.Identity()

    def forward(self, x: torch.Tensor, height: int, width: int, skip: torch.Tensor | None = None) -> torch.Tensor:
        x = F.interpolate(x, size=(height, width), mode="nearest")
        if skip is not None:
            x = self.attention1(torch.cat([x, skip], dim=1))
        return self.attention2(self.conv2(self.conv1(x)))


class UnetDecoder(nn.Module):
    def __init__(self, encoder_channels: tuple[int, ...], decoder_channels: tuple[int, ...]):
        super().__init__()
        reversed_channels = encoder_channels[1:][::-1]
        in_channels = [reversed_channels[0], *decoder_channels[:-1]]
        skip_channels = [*reversed_channels[1:], 0]
        self.center = nn.Identity()
        self.blocks = nn.ModuleList(DecoderBlock(i, s, o) for i, s, o in zip(in_channels, skip_channels, decoder_channels))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_uniform_(m.weight, mode="fan_in", nonlinearity="relu")

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        shapes = [f.shape[2:] for f in features][::-1]
        head, *skips = features[1:][::-1]
        x = self.center(head)
        for i, block in enumerate(self.blocks):
            x = block(x, *shapes[i + 1], skips[i] if i < len(skips) else None)
        return x


def segmentation_head(in_channels: int, classes: int) -> nn.Sequential:
    conv = nn.Conv2d(in_channels, classes, 3, padding=1)
    nn.init.xavier_uniform_(conv.weight)
    nn.init.zeros_(conv.bias)
    return nn.Sequential(conv, nn.Identity(), nn.Identity())
