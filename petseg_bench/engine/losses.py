"""Training losses: weighted cross-entropy + soft Dice (segmentation), MSE (reconstruction)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..labels import IGNORE


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """1 - mean over classes of ``(2 sum p y + eps) / (sum p + sum y + eps)`` (the seed's Eq. 2),
    summed over the batch's pixels; ignored pixels contribute nothing."""
    n_classes = logits.shape[1]
    probs = logits.float().softmax(1)
    valid = (target != IGNORE).unsqueeze(1)
    onehot = F.one_hot(target.clamp(max=n_classes - 1), n_classes).permute(0, 3, 1, 2).float()
    probs = probs * valid
    onehot = onehot * valid
    inter = (probs * onehot).sum((0, 2, 3))
    denom = probs.sum((0, 2, 3)) + onehot.sum((0, 2, 3))
    return 1.0 - ((2.0 * inter + eps) / (denom + eps)).mean()


def segmentation_loss(logits: torch.Tensor, target: torch.Tensor, class_weights: torch.Tensor,
                      ce: float, dice: float) -> torch.Tensor:
    loss = logits.new_zeros((), dtype=torch.float32)
    if ce:
        loss = loss + ce * F.cross_entropy(logits.float(), target, weight=class_weights, ignore_index=IGNORE)
    if dice:
        loss = loss + dice * soft_dice_loss(logits, target)
    return loss


def reconstruction_loss(output: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
    return F.mse_loss(output.float(), image.float())
