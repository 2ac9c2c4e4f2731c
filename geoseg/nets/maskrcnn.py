"""Instance segmentation of buildings: Mask R-CNN on a ResNet C4 backbone, plain and light (Zhang et al.,
"Toward Efficient Simultaneous Detection and Segmentation"), built from torchvision's detection parts
(anchor generator, RPN, RoIAlign, losses, box coder, post-processing).

* ``baseline``: the C4 design of Mask R-CNN: RPN and RoIAlign (14x14) on the C4 map; the ResNet's own C5 stage
  (stride 2 -> 7x7) is the RoI head, average-pooled for the box branch and, shared, deconvolved to 14x14 for
  the mask branch.
* ``light``: a separated large-kernel convolution (k x 1 -> 1 x k plus 1 x k -> k x 1, k = 15) after C4 that
  gives the RPN and RoIAlign 4x fewer channels than C4; the C5 head is replaced by two 3x3 convolutions on the
  14x14 RoI features, shared by a 7x7/7 average pool (2 x 2 x channels) for the box branch and a deconvolution
  to 28x28 for the mask branch.

Widths of the light design (:func:`light_widths`) are the paper's as fractions of C4's channels: with a
ResNet-50 (C4 = 1024) exactly the paper's 256 middle / 256 out and a (256, 512) head; with the ResNet-18 that
geoseg ships for CPUs (C4 = 256), 64 / 64 and (64, 128). Keeping the paper's absolute 256 channels on a ResNet-18
would reduce nothing (its C4 has 256 already), and its two 3x3 convolutions would cost as much per RoI as the
ResNet-18's C5 stage: no speed-up at all (measured: 1720 vs 1740 ms per tile).

Units: anchor sizes are pixels of the input tile; ``tile_px`` is the side the transform keeps tiles at (no
resizing for tiles of that size; a smaller edge tile is scaled up and its outputs mapped back).
"""

from __future__ import annotations

import torch
from torch import nn
from torchvision.models import resnet
from torchvision.models.detection import MaskRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor
from torchvision.models.detection.mask_rcnn import MaskRCNNPredictor
from torchvision.ops import MultiScaleRoIAlign

ANCHOR_SIZES_PX = (16, 32, 64, 128, 256)
ASPECT_RATIOS = (0.5, 1.0, 2.0)


class SeparatedLargeKernel(nn.Module):
    """Two separable branches, (k x 1 then 1 x k) and (1 x k then k x 1), summed: a full k x k receptive
    field at O(2/k) of the cost of a k x k convolution. Spatial size is kept for odd and even inputs."""

    def __init__(self, in_channels: int, mid_channels: int = 256, out_channels: int = 256, k: int = 15):
        super().__init__()
        if k % 2 == 0:
            raise ValueError("k must be odd so that the padding keeps the spatial size")
        tall, wide = dict(kernel_size=(k, 1), padding=(k // 2, 0)), dict(kernel_size=(1, k), padding=(0, k // 2))
        self.tall_wide = nn.Sequential(nn.Conv2d(in_channels, mid_channels, **tall), nn.Conv2d(mid_channels, out_channels, **wide))
        self.wide_tall = nn.Sequential(nn.Conv2d(in_channels, mid_channels, **wide), nn.Conv2d(mid_channels, out_channels, **tall))
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.tall_wide(x) + self.wide_tall(x)


def c4_channels(depth: int) -> int:
    """Channels of a torchvision ResNet's C4 (stage 3) output: 256 for depths 18/34, 1024 for 50 and deeper."""
    return 256 if depth < 50 else 1024


def light_widths(depth: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """(separated large kernel middle, out), (head conv 1, head conv 2) channels for a ResNet of ``depth``:
    C4/4, C4/4 and C4/4, C4/2 -- the paper's 256, 256 and (256, 512) on its ResNet-50."""
    c4 = c4_channels(depth)
    return (c4 // 4, c4 // 4), (c4 // 4, c4 // 2)


class C4Backbone(nn.Sequential):
    """ResNet stem + stages 1-3 (stride 16); ``out_channels`` as torchvision's detection API expects.
    With ``large_kernel`` the separated large-kernel block follows C4."""

    def __init__(self, depth: int = 18, in_channels: int = 3, large_kernel: tuple[int, int] | None = None):
        net = getattr(resnet, f"resnet{depth}")(weights=None)
        if in_channels != 3:
            net.conv1 = nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False)
        layers = [net.conv1, net.bn1, net.relu, net.maxpool, net.layer1, net.layer2, net.layer3]
        c4 = c4_channels(depth)
        if large_kernel:
            layers += [SeparatedLargeKernel(c4, *large_kernel), nn.ReLU(inplace=True)]
        super().__init__(*layers)
        self.out_channels = large_kernel[1] if large_kernel else c4
        self.c5 = net.layer4  # the baseline's RoI head (unused by the light design)


class LightRoIHead(nn.Module):
    """Two 3x3 convolutions (``channels``, the paper's 256 and 512 on a ResNet-50) with ReLU on 14x14 RoI
    features; shared by box and mask branches."""

    def __init__(self, in_channels: int, channels: tuple[int, int]):
        super().__init__()
        self.convs = nn.Sequential(nn.Conv2d(in_channels, channels[0], 3, padding=1), nn.ReLU(inplace=True),
                                   nn.Conv2d(channels[0], channels[1], 3, padding=1), nn.ReLU(inplace=True))
        self.out_channels = channels[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.convs(x)


def build_maskrcnn(design: str, depth: int = 18, in_channels: int = 3, num_classes: int = 2, tile_px: int = 512,
                   mean: list[float] | None = None, std: list[float] | None = None, **kwargs) -> MaskRCNN:
    """The ``baseline`` or ``light`` Mask R-CNN (module docstring; the light widths are :func:`light_widths`);
    ``kwargs`` go to torchvision's MaskRCNN."""
    if design not in ("baseline", "light"):
        raise ValueError(f"design {design!r}: choose baseline or light")
    large_kernel, head = light_widths(depth)
    backbone = C4Backbone(depth, in_channels, large_kernel=large_kernel if design == "light" else None)
    anchors = AnchorGenerator((ANCHOR_SIZES_PX,), (ASPECT_RATIOS,))
    pool = MultiScaleRoIAlign(["0"], output_size=14, sampling_ratio=2)
    if design == "light":
        trunk = LightRoIHead(backbone.out_channels, head)
        box_head = nn.Sequential(trunk, nn.AvgPool2d(7, 7), nn.Flatten())
        box_features, mask_head, mask_in = 2 * 2 * trunk.out_channels, trunk, trunk.out_channels
    else:  # C5 doubles C4's channels (512 on a ResNet-18, 2048 on a ResNet-50)
        box_head = nn.Sequential(backbone.c5, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        box_features, mask_head, mask_in = 2 * c4_channels(depth), backbone.c5, 2 * c4_channels(depth)
    del backbone.c5  # the head holds it now (baseline) or it is not used (light)
    # fewer proposals and sampled RoIs than torchvision's COCO defaults (2000/2000, 512 RoIs per image): a 512 px
    # tile holds tens of buildings, and on CPU the RoI head's cost is proportional to them
    defaults = dict(rpn_pre_nms_top_n_train=600, rpn_post_nms_top_n_train=300, rpn_pre_nms_top_n_test=600,
                    rpn_post_nms_top_n_test=300, box_batch_size_per_image=64, box_detections_per_img=100)
    return MaskRCNN(backbone, num_classes=None, min_size=tile_px, max_size=tile_px,
                    image_mean=mean or [0.0] * in_channels, image_std=std or [1.0] * in_channels,
                    rpn_anchor_generator=anchors, box_roi_pool=pool, box_head=box_head,
                    box_predictor=FastRCNNPredictor(box_features, num_classes), mask_roi_pool=pool,
                    mask_head=mask_head, mask_predictor=MaskRCNNPredictor(mask_in, 256, num_classes),
                    **(defaults | kwargs))
