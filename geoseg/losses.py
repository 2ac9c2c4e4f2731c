"""Training objectives, one per kind of model: ``training_loss(net, x, y) -> (loss, figures to log)``.

* encoder-decoder models: cross-entropy + soft Dice, plus the auxiliary heads of the real-time nets (weight 0.4
  as both papers);
* Mask R-CNN: its own detection and mask losses, instances from the labels;
* SegBlocks: the same task loss on the block-processed output, plus the policy's REINFORCE term (eq. 13), with
  actions sampled from the policy; logs the achieved high-resolution fraction and the spread of the policy's
  probabilities (a collapsed policy has ``policy_p_std`` near 0).

Labels equal to :data:`IGNORE` (nodata, unlabelled) count nowhere, the policy's reward included.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .card import INSTANCE_ARCHITECTURES
from .datasets import IGNORE
from .nets.blocks_dynamic import BlockLayout
from .nets.segblocks import block_means, reinforce_loss

AUX_LOSS_WEIGHT = 0.4


def segmentation_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Cross-entropy + soft Dice over classes, both ignoring IGNORE pixels."""
    ce = F.cross_entropy(logits, target, ignore_index=IGNORE)
    known = (target != IGNORE).unsqueeze(1).float()
    probs = logits.float().softmax(1) * known
    onehot = F.one_hot(target.clamp(max=logits.shape[1] - 1), logits.shape[1]).permute(0, 3, 1, 2).float() * known
    inter, total = (probs * onehot).sum((0, 2, 3)), (probs + onehot).sum((0, 2, 3))
    present = onehot.sum((0, 2, 3)) > 0
    dice = 1 - (2 * inter[present] + 1) / (total[present] + 1)
    return ce + dice.mean()


def training_loss(net, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
    """The loss to minimise for prepared inputs ``x`` and labels ``y`` (N, H, W) of the same size."""
    if net.card.architecture == "segblocks":
        return segblocks_loss(net, x, y)
    if net.card.architecture in INSTANCE_ARCHITECTURES:
        return instance_loss(net, x, y)
    features = net.encode(x)
    loss = segmentation_loss(net.decode(features), y)
    for aux in getattr(net, "aux_logits", lambda f: [])(features):
        loss = loss + AUX_LOSS_WEIGHT * segmentation_loss(aux, y)
    return loss, {}


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
