"""Training objectives, one per kind of model: ``training_loss(net, x, y) -> (loss, figures to log)``.

* encoder-decoder models: cross-entropy + soft Dice, plus the auxiliary heads of the real-time nets (weight 0.4
  as both papers);
* Mask R-CNN: its own detection and mask losses, instances from the labels;
* SegBlocks: the same task loss on the block-processed output, plus the policy's REINFORCE term (eq. 13), with
  actions sampled from the policy; logs the achieved high-resolution fraction and the spread of the policy's
  probabilities (a collapsed policy has ``policy_p_std`` near 0).

Labels equal to :data:`IGNORE` (nodata, unlabelled) count nowhere, the policy's reward included.

Beyond the papers, :class:`GateProbe` (config ``gate_aux``) adds a small term on the encoder's bottleneck so that
a few channel means tell tiles with buildings from tiles without: what the BGS-Net gate's per-channel thresholds
need (see :mod:`geoseg.gate`). It changes only training; the gate is still calibrated as the paper does.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .architectures import architecture
from .datasets import IGNORE
from .nets.blocks_dynamic import BlockLayout
from .nets.segblocks import block_means, reinforce_loss

AUX_LOSS_WEIGHT = 0.4


def segmentation_loss(logits: torch.Tensor, target: torch.Tensor, pixel_weight: torch.Tensor | None = None) -> torch.Tensor:
    """Cross-entropy + soft Dice over classes, both ignoring IGNORE pixels; ``pixel_weight`` (N, H, W) weighs
    each pixel's cross-entropy (:func:`boundary_weights`; the mean is over the weights, so the scale stays)."""
    if pixel_weight is None:
        ce = F.cross_entropy(logits, target, ignore_index=IGNORE)
    else:
        per_pixel = F.cross_entropy(logits, target, ignore_index=IGNORE, reduction="none")
        weight = pixel_weight * (target != IGNORE)
        ce = (per_pixel * weight).sum() / weight.sum().clamp(min=1e-6)
    known = (target != IGNORE).unsqueeze(1).float()
    probs = logits.float().softmax(1) * known
    onehot = F.one_hot(target.clamp(max=logits.shape[1] - 1), logits.shape[1]).permute(0, 3, 1, 2).float() * known
    inter, total = (probs * onehot).sum((0, 2, 3)), (probs + onehot).sum((0, 2, 3))
    present = onehot.sum((0, 2, 3)) > 0
    dice = 1 - (2 * inter[present] + 1) / (total[present] + 1)
    return ce + dice.mean()


def boundary_weights(y: torch.Tensor, building_classes: list[int], weight: float, sigma_px: float) -> torch.Tensor:
    """The U-Net paper's idea of a weight map, for outlines: each pixel's cross-entropy weighs
    ``1 + weight * exp(-d^2 / (2 sigma^2))``, ``d`` its distance in pixels to the nearest building edge (inside or
    outside), so the pixels that decide where a wall runs (yard, shadow, the gap between two houses) count most.
    ``y``: labels (N, H, W); building and separator classes are building."""
    from scipy import ndimage

    maps = []
    for labels in y.cpu().numpy():
        building = np.isin(labels, building_classes)
        if building.all() or not building.any():
            maps.append(np.ones(labels.shape, np.float32))
            continue
        inside, outside = ndimage.distance_transform_edt(building), ndimage.distance_transform_edt(~building)
        d = np.where(building, inside, outside) - 0.5  # 0.5: a pixel next to the edge is half a pixel from it
        maps.append((1 + weight * np.exp(-d ** 2 / (2 * sigma_px ** 2))).astype(np.float32))
    return torch.from_numpy(np.stack(maps)).to(y.device)


class GateProbe(nn.Module):
    """Per-channel logistic probes on the bottleneck's channel means: "does this crop hold buildings?".

    Channel ``c`` of the first ``channels`` bottleneck channels gives the logit ``scale_c * mu_c + bias_c``, where
    ``mu_c`` is the channel's mean over the crop's bottleneck cells (the gate's input, eq. 5 of BGS-Net). Each
    channel is its own one-dimensional classifier, so each learns to separate the two kinds of crop *alone* --
    the property a per-channel Youden threshold rewards; a probe over all channels together would spread the
    signal thinly. A crop holds buildings when at least ``target_fraction`` of its labelled pixels are building
    or separator (the gate's target definition); crops with no labelled pixel count nowhere.
    """

    def __init__(self, channels: int, weight: float, target_fraction: float, building_classes: list[int]):
        super().__init__()
        self.channels, self.weight, self.target_fraction = channels, weight, target_fraction
        self.building_classes = building_classes
        self.scale = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def targets(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(crop holds buildings (N,) float, crop has labelled pixels (N,) bool) from labels (N, H, W)."""
        known = (y != IGNORE).sum((1, 2))
        building = torch.isin(y, torch.tensor(self.building_classes, device=y.device)).sum((1, 2))
        return (building >= self.target_fraction * known.clamp(min=1)).float(), known > 0

    def forward(self, bottleneck: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        means = bottleneck[:, : self.channels].float().mean((2, 3))
        logits = means * self.scale + self.bias
        target, usable = self.targets(y)
        if not usable.any():
            return logits.sum() * 0.0, {}
        target = target[usable, None].expand(-1, self.channels)
        loss = F.binary_cross_entropy_with_logits(logits[usable], target)
        accuracy = ((logits[usable] > 0).float() == target).float().mean()
        return self.weight * loss, {"gate_aux_loss": float(loss.detach()), "gate_aux_accuracy": float(accuracy),
                                    "gate_aux_positive_share": float(target[:, 0].mean())}


def training_loss(net, x: torch.Tensor, y: torch.Tensor, probe: GateProbe | None = None,
                  pixel_weight: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """The loss to minimise for prepared inputs ``x`` and labels ``y`` (N, H, W) of the same size; ``probe``
    (encoder-decoder models only) adds the bottleneck term of :class:`GateProbe`; ``pixel_weight`` (encoder-decoder
    models) weighs the main head's cross-entropy per pixel (:func:`boundary_weights`)."""
    loss = architecture(net.card.architecture).loss
    if loss == "blocks":
        return segblocks_loss(net, x, y)
    if loss == "instances":
        return instance_loss(net, x, y)
    features = net.encode(x)
    loss = segmentation_loss(net.decode(features), y, pixel_weight)
    for aux in getattr(net, "aux_logits", lambda f: [])(features):
        loss = loss + AUX_LOSS_WEIGHT * segmentation_loss(aux, y)
    if probe is None:
        return loss, {}
    term, figures = probe(features[-1], y)
    return loss + term, figures


def segblocks_loss(net, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
    """Joint training of network and policy (paper §3.1): sample actions, task loss on the block output, REINFORCE
    with per-block rewards from the per-pixel cross-entropy."""
    grid = net.grid(x)
    probabilities = net.policy(x, grid)
    actions = torch.bernoulli(probabilities.detach()).bool()
    logits = net.forward_blocks(x, BlockLayout(actions))
    task = segmentation_loss(logits, y)
    valid = y != IGNORE
    with torch.no_grad():
        pixel_loss = F.cross_entropy(logits.float(), y, ignore_index=IGNORE, reduction="none")
        block_loss, has_pixels = block_means(pixel_loss, valid, grid)
        image_loss = pixel_loss.sum((1, 2)) / valid.sum((1, 2)).clamp(min=1)
    policy = reinforce_loss(probabilities, actions, block_loss, has_pixels, image_loss, net.tau)
    p = probabilities.detach()
    logs = {"high_fraction": float(actions.float().mean()), "policy_p_mean": float(p.mean()),
            "policy_p_std": float(p.std()), "policy_loss": float(policy.detach())}
    return task + policy, logs


def instance_loss(net, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
    """Mask R-CNN's own losses (RPN objectness and boxes, RoI classes, boxes and masks), summed; targets are the
    label crops' building components (:func:`geoseg.instances.instances_from_labels`)."""
    from .instances import instances_from_labels

    card = net.card
    targets = [instances_from_labels(labels.numpy(), card.building_class, card.separator_class) for labels in y.cpu()]
    losses = net.detector(list(x), targets)
    return sum(losses.values()), {name: float(v.detach()) for name, v in losses.items()} | \
        {"instances_per_crop": sum(len(t["boxes"]) for t in targets) / len(targets)}
