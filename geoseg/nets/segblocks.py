"""SegBlocks (Verelst & Tuytelaars): a U-Net run on blocks at two resolutions, chosen per block by a policy net.

:func:`run_blocks` executes a trained smp U-Net (ResNet encoder, U-Net decoder, segmentation head) on
:class:`~geoseg.nets.blocks_dynamic.Blocks` with the *same weights*: every convolution and max-pooling reads
its padding through BlockPad, BatchNorm (inference statistics), ReLU, residual adds, skip concatenations and
the decoder's nearest x2 upsampling act on each block alone. The network has no global pooling, so nothing
needs the whole tile. With every block at high resolution the result equals the ordinary network on the tile;
with every block at low resolution it equals the network on the 2x average-pooled tile.

:class:`BlockPolicy` is the paper's policy: 4 conv layers of 64 channels (BN, ReLU) on the 4x downsampled
tile, one P(high resolution) per block. :func:`reinforce_loss` is its REINFORCE objective (eq. 5-13).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .blocks import conv_bn_relu
from .blocks_dynamic import Blocks, block_pad


def conv(b: Blocks, m: nn.Conv2d) -> Blocks:
    """A zero-padded convolution on blocks: BlockPad by its padding, then the convolution without padding."""
    if m.padding_mode != "zeros" or m.padding[0] != m.padding[1] or m.stride[0] != m.stride[1]:
        raise ValueError(f"no block version of {m}: needs equal zero padding and stride in both directions")
    padded = block_pad(b, m.padding[0])
    return padded.map(lambda t: F.conv2d(t, m.weight, m.bias, m.stride, 0, m.dilation, m.groups), 1 / m.stride[0])


def max_pool(b: Blocks, m: nn.MaxPool2d) -> Blocks:
    padded = block_pad(b, m.padding, fill=float("-inf"))
    return padded.map(lambda t: F.max_pool2d(t, m.kernel_size, m.stride, 0, m.dilation, m.ceil_mode), 1 / m.stride)


def batch_norm(b: Blocks, m: nn.BatchNorm2d) -> Blocks:
    if m.training:
        raise ValueError("BatchNorm on blocks uses inference statistics: put the U-Net's BatchNorms in eval mode")
    return b.map(lambda t: F.batch_norm(t, m.running_mean, m.running_var, m.weight, m.bias, False, 0.0, m.eps))


def upsample_nearest(b: Blocks) -> Blocks:
    return b.map(lambda t: F.interpolate(t, scale_factor=2, mode="nearest"), 2)


def cat(a: Blocks, b: Blocks) -> Blocks:
    return Blocks(torch.cat([a.high, b.high], 1), torch.cat([a.low, b.low], 1), a.layout, a.side)


def _is_pass_through(module: nn.Module) -> bool:
    """smp's Attention(None) / Activation(None) wrappers and nn.Identity."""
    inner = getattr(module, "attention", getattr(module, "activation", None))
    return isinstance(module, nn.Identity) or isinstance(inner, nn.Identity)


def run_all(modules, b: Blocks) -> Blocks:
    """Run modules one after the other on blocks."""
    for module in modules:
        b = run_blocks(module, b)
    return b


def run_blocks(module: nn.Module, b: Blocks) -> Blocks:
    """Run one module of the U-Net on blocks (Sequential containers and ResNet basic blocks recursively)."""
    if isinstance(module, nn.Sequential):
        return run_all(module, b)
    if isinstance(module, nn.Conv2d):
        return conv(b, module)
    if isinstance(module, nn.BatchNorm2d):
        return batch_norm(b, module)
    if isinstance(module, nn.ReLU):
        return b.map(F.relu_)  # in place, as the U-Net's own ReLUs: it always follows a freshly made tensor
    if isinstance(module, nn.MaxPool2d):
        return max_pool(b, module)
    if _is_pass_through(module):
        return b
    if hasattr(module, "conv1") and hasattr(module, "bn2") and hasattr(module, "downsample"):  # ResNet BasicBlock
        out = run_all((module.conv1, module.bn1, module.relu, module.conv2, module.bn2), b)
        identity = run_blocks(module.downsample, b) if module.downsample is not None else b
        return (out + identity).map(F.relu_)
    raise TypeError(f"no block version of {type(module).__name__}")


def unet_on_blocks(encoder: nn.Module, decoder: nn.Module, head: nn.Module, x: Blocks) -> Blocks:
    """smp's ResNetEncoder.forward, UnetDecoder.forward and the head, step by step, on blocks."""
    stem = run_all((encoder.conv1, encoder.bn1, encoder.relu), x)
    features = [stem]
    y = run_all((encoder.maxpool, encoder.layer1), stem)
    features.append(y)
    for layer in (encoder.layer2, encoder.layer3, encoder.layer4):
        y = run_blocks(layer, y)
        features.append(y)
    skips = features[::-1][1:]
    y = run_blocks(decoder.center, features[-1])
    for i, block in enumerate(decoder.blocks):
        y = upsample_nearest(y)
        if i < len(skips):
            y = run_blocks(block.attention1, cat(y, skips[i]))
        y = run_all((block.conv1, block.conv2, block.attention2), y)
    return run_blocks(head, y)


class BlockPolicy(nn.Module):
    """P(high resolution) per block from the 4x downsampled tile: three 3x3 stride-2 conv-BN-ReLU layers of
    ``width`` channels and a 3x3 conv to one logit, averaged over each block's cells (paper §3.1.1)."""

    def __init__(self, in_channels: int, width: int = 64):
        super().__init__()
        self.features = nn.Sequential(conv_bn_relu(in_channels, width, 3, 2), conv_bn_relu(width, width, 3, 2),
                                      conv_bn_relu(width, width, 3, 2), nn.Conv2d(width, 1, 3, padding=1))

    def forward(self, x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """Probabilities (N, rows, cols) in [0, 1] for tiles ``x`` (N, C, H, W)."""
        logits = self.features(F.avg_pool2d(x, 4))
        return torch.sigmoid(F.adaptive_avg_pool2d(logits, grid)[:, 0].float())


def block_means(values: torch.Tensor, valid: torch.Tensor, grid: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean of ``values`` (N, H, W) over the ``valid`` pixels of each block, and whether a block has any.
    Returns ((N, rows, cols), bool (N, rows, cols)); blocks without valid pixels get 0."""
    rows, cols = grid
    n, h, w = values.shape
    shape = (n, rows, h // rows, cols, w // cols)
    total = (values * valid).reshape(shape).sum((2, 4))
    count = valid.reshape(shape).sum((2, 4))
    return total / count.clamp(min=1), count > 0


def reinforce_loss(probabilities: torch.Tensor, actions: torch.Tensor, block_loss: torch.Tensor,
                   has_pixels: torch.Tensor, image_loss: torch.Tensor, tau: float, gamma: float = 10.0,
                   beta: float = 4.0) -> torch.Tensor:
    """The policy's term of eq. 13: beta/N * sum_b -R_b log p(a_b), with R_b = task reward (eq. 9, the block's
    loss minus the image's, sign by action; 0 for blocks without valid pixels, so nodata never pays) + gamma *
    complexity reward (eq. 7, towards a high-resolution fraction ``tau``). All (N, rows, cols) except
    ``image_loss`` (N,). Rewards carry no gradient."""
    sign = actions.float() * 2 - 1  # +1 high, -1 low
    with torch.no_grad():
        task = sign * (block_loss - image_loss[:, None, None]) * has_pixels
        sigma = actions.float().mean((1, 2), keepdim=True)
        complexity = -sign * (sigma - tau)
        reward = task + gamma * complexity
    p = probabilities.clamp(1e-6, 1 - 1e-6)
    log_p = torch.where(actions, p.log(), (1 - p).log())
    return beta * (-reward * log_p).sum((1, 2)).mean()
