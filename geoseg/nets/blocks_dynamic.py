"""SegBlocks' block modules in plain PyTorch (CPU and GPU): BlockSample, BlockPad, BlockCombine.

A tile of ``H x W`` px is split into a grid of square blocks of ``block_px``; each block is processed at high
(full) or low (half) resolution. A feature map in block form is a :class:`Blocks`: the high-resolution blocks
stacked as one batch ``(n_high, C, s, s)`` and the low-resolution ones as ``(n_low, C, s/2, s/2)``, where
``s`` is the block side *at that scale* (``block_px`` at the input, ``block_px / 2`` after a stride-2 layer...).
Block order in both stacks is row-major over (tile, block row, block column) — the order of
``layout.high.nonzero()``.

Edge rules. BlockPad fills a block's padding from its 8 neighbours as if the image had never been split:
a neighbour at the same resolution is copied, a low-resolution neighbour of a high-resolution block is
nearest-upsampled, a high-resolution neighbour of a low-resolution block is 2x2-averaged. Only outside the
tile does the padding take ``fill`` (0 for convolutions, -inf for max pooling). Only the bands a neighbour
gives are resampled, so BlockPad costs one copy of each block plus O(perimeter) work; its share of the
run time is measured by ``benchmarks/bench_segblocks.py``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class BlockLayout:
    """Which blocks are high resolution: ``high`` bool (N, rows, cols), one entry per block of each tile."""

    high: torch.Tensor

    @property
    def grid(self) -> tuple[int, int, int]:
        return tuple(self.high.shape)

    def indices(self, high: bool) -> tuple[torch.Tensor, ...]:
        """(tile, block row, block column) index tensors of the high (or low) blocks, row-major."""
        return tuple((self.high if high else ~self.high).nonzero().unbind(1))

    @property
    def high_fraction(self) -> float:
        return float(self.high.float().mean()) if self.high.numel() else 0.0


@dataclass
class Blocks:
    """A feature map in block form (module docstring). ``side``: block side in px at high resolution here."""

    high: torch.Tensor  # (n_high, C, side, side)
    low: torch.Tensor  # (n_low, C, side / 2, side / 2)
    layout: BlockLayout
    side: int

    def map(self, fn, scale: float = 1) -> "Blocks":
        """Apply ``fn`` to both stacks; it must treat each block alone and scale its side by ``scale``."""
        return Blocks(fn(self.high), fn(self.low), self.layout, int(self.side * scale))

    def __add__(self, other: "Blocks") -> "Blocks":
        return Blocks(self.high + other.high, self.low + other.low, self.layout, self.side)


def _block_view(canvas: torch.Tensor, rows: int, cols: int, side: int) -> torch.Tensor:
    """(N, C, rows*side, cols*side) -> a (N, rows, cols, C, side, side) view of the same memory."""
    return canvas.unflatten(2, (rows, side)).unflatten(4, (cols, side)).permute(0, 2, 4, 1, 3, 5)


def block_sample(x: torch.Tensor, layout: BlockLayout, block_px: int) -> Blocks:
    """BlockSample: split tiles (N, C, H, W) into blocks of ``block_px``; low-resolution ones 2x2 average-pooled.
    H and W must be multiples of ``block_px`` (the model pads its input to that multiple)."""
    n, rows, cols = layout.grid
    if x.shape[0] != n or x.shape[-2] != rows * block_px or x.shape[-1] != cols * block_px:
        raise ValueError(f"tiles {tuple(x.shape)} do not match a {rows}x{cols} grid of {block_px} px blocks")
    view = _block_view(x, rows, cols, block_px)
    high = view[layout.indices(True)]
    low = F.avg_pool2d(view[layout.indices(False)], 2)
    return Blocks(high.contiguous(), low.contiguous(), layout, block_px)


def block_combine(b: Blocks) -> torch.Tensor:
    """BlockCombine: one (N, C, rows*side, cols*side) tensor, low-resolution blocks nearest-upsampled."""
    n, rows, cols = b.layout.grid
    source = b.high if len(b.high) else b.low
    canvas = source.new_empty((n, source.shape[1], rows * b.side, cols * b.side))
    view = _block_view(canvas, rows, cols, b.side)
    if len(b.high):
        view[b.layout.indices(True)] = b.high
    if len(b.low):
        view[b.layout.indices(False)] = F.interpolate(b.low, scale_factor=2, mode="nearest")
    return canvas


def block_pad(b: Blocks, pad: int, fill: float = 0.0) -> Blocks:
    """BlockPad: each block with ``pad`` px on every side taken from its neighbours (module docstring).

    Only the bands a neighbour contributes are resampled (``pad`` rows or columns, O(perimeter)); the block
    itself is copied once into the padded tensor. Needs ``pad`` <= the low-resolution block side."""
    if pad == 0:
        return b
    return Blocks(_pad_stack(b, True, pad, fill), _pad_stack(b, False, pad, fill), b.layout, b.side)


def _pad_stack(b: Blocks, high_res: bool, pad: int, fill: float) -> torch.Tensor:
    stack = b.high if high_res else b.low
    n, channels, side, _ = stack.shape
    out = torch.empty((n, channels, side + 2 * pad, side + 2 * pad), dtype=stack.dtype, device=stack.device,
                      memory_format=torch.channels_last)
    if n == 0:
        return out
    top, bottom, left, right = _bands(b, high_res, pad, fill)
    nb = _neighbours(b.layout, high_res)
    p, e = pad, pad + side  # start of the block, start of the far border
    out[:, :, p:e, p:e] = stack
    out[:, :, :p, p:e] = bottom[nb[-1, 0]]
    out[:, :, e:, p:e] = top[nb[1, 0]]
    out[:, :, p:e, :p] = right[nb[0, -1]]
    out[:, :, p:e, e:] = left[nb[0, 1]]
    out[:, :, :p, :p] = bottom[nb[-1, -1]][..., side - p :]
    out[:, :, :p, e:] = bottom[nb[-1, 1]][..., :p]
    out[:, :, e:, :p] = top[nb[1, -1]][..., side - p :]
    out[:, :, e:, e:] = top[nb[1, 1]][..., :p]
    return out


def _bands(b: Blocks, high_res: bool, pad: int, fill: float) -> list[torch.Tensor]:
    """Top, bottom (C, pad, side) and left, right (C, side, pad) bands of every block of the grid at the
    requested resolution, indexed by flat grid position; one extra entry (the last) is ``fill``, for
    positions outside the tile. Blocks stored at the other resolution are resampled band by band."""
    n, rows, cols = b.layout.grid
    source = b.high if len(b.high) else b.low
    side = b.side if high_res else b.side // 2
    shapes = [(pad, side), (pad, side), (side, pad), (side, pad)]
    bands = [source.new_full((n * rows * cols + 1, source.shape[1], *shape), fill) for shape in shapes]
    for stored_high, stack in ((True, b.high), (False, b.low)):
        if not len(stack):
            continue
        ids = _flat_ids(b.layout, stored_high)
        if stored_high == high_res:
            parts = [stack[:, :, :pad], stack[:, :, -pad:], stack[..., :pad], stack[..., -pad:]]
        elif high_res:  # a low-resolution block seen from a high-resolution one: nearest-upsampled
            q = (pad + 1) // 2
            up = lambda t: F.interpolate(t, scale_factor=2, mode="nearest")  # noqa: E731
            parts = [up(stack[:, :, :q])[:, :, :pad], up(stack[:, :, -q:])[:, :, -pad:],
                     up(stack[..., :q])[..., :pad], up(stack[..., -q:])[..., -pad:]]
        else:  # a high-resolution block seen from a low-resolution one: 2x2-averaged
            parts = [F.avg_pool2d(stack[:, :, : 2 * pad], 2), F.avg_pool2d(stack[:, :, -2 * pad :], 2),
                     F.avg_pool2d(stack[..., : 2 * pad], 2), F.avg_pool2d(stack[..., -2 * pad :], 2)]
        for band, part in zip(bands, parts):
            band[ids] = part
    return bands


def _flat_ids(layout: BlockLayout, high: bool) -> torch.Tensor:
    n, rows, cols = layout.grid
    tile, row, col = layout.indices(high)
    return (tile * rows + row) * cols + col


def _neighbours(layout: BlockLayout, high: bool) -> dict[tuple[int, int], torch.Tensor]:
    """For each block of one resolution and each direction (dr, dc): the neighbour's flat grid position, or
    the fill entry (n * rows * cols) outside the tile."""
    n, rows, cols = layout.grid
    tile, row, col = layout.indices(high)
    outside = n * rows * cols
    table = {}
    for dr in (-1, 0, 1):
        for dc in (-1, 0, 1):
            r, c = row + dr, col + dc
            inside = (r >= 0) & (r < rows) & (c >= 0) & (c < cols)
            table[dr, dc] = torch.where(inside, (tile * rows + r) * cols + c, outside)
    return table
