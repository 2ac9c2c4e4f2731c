"""Light Mask R-CNN groundwork: the separated large-kernel block and both model designs."""

import pytest
import torch

from geoseg.nets.maskrcnn import SeparatedLargeKernel, build_maskrcnn


@pytest.mark.parametrize("size", [(31, 32), (32, 31), (17, 17), (40, 64)])
def test_separated_large_kernel_keeps_spatial_size(size):
    block = SeparatedLargeKernel(8, mid_channels=16, out_channels=12, k=15)
    assert block(torch.randn(2, 8, *size)).shape == (2, 12, *size)


def test_separated_large_kernel_parameter_count():
    c_in, mid, out, k = 1024, 256, 256, 15  # the paper's ResNet-50 C4 setting
    block = SeparatedLargeKernel(c_in, mid, out, k)
    expected = 2 * (c_in * mid * k + mid) + 2 * (mid * out * k + out)
    assert sum(p.numel() for p in block.parameters()) == expected


@torch.no_grad()
def test_separated_large_kernel_sees_a_full_k_by_k_square():
    torch.manual_seed(0)
    k = 15
    block = SeparatedLargeKernel(1, mid_channels=4, out_channels=1, k=k)
    impulse = torch.zeros(1, 1, 41, 41)
    impulse[0, 0, 20, 20] = 1.0
    response = (block(impulse) - block(torch.zeros_like(impulse)))[0, 0].abs()
    inside = torch.zeros_like(response, dtype=torch.bool)
    inside[20 - k // 2 : 21 + k // 2, 20 - k // 2 : 21 + k // 2] = True
    assert (response[inside] > 1e-7).all() and (response[~inside] == 0).all()


@pytest.mark.parametrize("design", ["baseline", "light"])
@torch.inference_mode()
def test_both_designs_give_boxes_and_masks_in_tile_coordinates(design):
    torch.manual_seed(0)
    net = build_maskrcnn(design, tile_px=256).eval()
    out = net([torch.rand(3, 256, 256), torch.rand(3, 200, 256)])
    assert len(out) == 2 and out[1]["masks"].shape[-2:] == (200, 256)
    assert out[0]["boxes"].shape[1] == 4 and len(out[0]["scores"]) == len(out[0]["labels"]) == len(out[0]["masks"])
    light = design == "light"
    assert net.backbone.out_channels == 256 and isinstance(net.backbone[-2], SeparatedLargeKernel) == light
