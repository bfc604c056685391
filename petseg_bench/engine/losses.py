"""Training losses: weighted cross-entropy + soft Dice (segmentation), MSE (reconstruction),
cross-entropy over cat/dog (species).

Data-parallel training passes ``ranks`` (:class:`~.distributed.Dist`): the losses are then
those of the *global* batch, built from statistics summed over the ranks (the weighted
cross-entropy's numerator and weights, Dice's intersections and sums), and each rank's
gradient is its share of the global batch's gradient (scaled by the number of ranks,
which DDP's gradient averaging undoes). So the gradient of a step is the one a single
process computes on the whole batch, whatever the number of ranks.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..labels import IGNORE


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor, eps: float = 1.0, ranks=None) -> torch.Tensor:
    """1 - mean over classes of ``(2 sum p y + eps) / (sum p + sum y + eps)`` (the seed's Eq. 2),
    summed over the batch's pixels (all ranks' with ``ranks``); ignored pixels contribute nothing."""
    n_classes = logits.shape[1]
    probs = logits.float().softmax(1)
    valid = (target != IGNORE).unsqueeze(1)
    onehot = F.one_hot(target.clamp(max=n_classes - 1), n_classes).permute(0, 3, 1, 2).float()
    probs = probs * valid
    onehot = onehot * valid
    inter = (probs * onehot).sum((0, 2, 3))
    denom = probs.sum((0, 2, 3)) + onehot.sum((0, 2, 3))
    if _parallel(ranks):
        inter, denom = _summed(inter, ranks), _summed(denom, ranks)
    loss = 1.0 - ((2.0 * inter + eps) / (denom + eps)).mean()
    return _scaled(loss, ranks.world) if _parallel(ranks) else loss


def weighted_cross_entropy(logits: torch.Tensor, target: torch.Tensor, class_weights: torch.Tensor,
                           ranks=None) -> torch.Tensor:
    """Class-weighted cross-entropy: the weighted mean over the batch's pixels (all ranks')."""
    if not _parallel(ranks):
        return F.cross_entropy(logits.float(), target, weight=class_weights, ignore_index=IGNORE)
    num = F.cross_entropy(logits.float(), target, weight=class_weights, ignore_index=IGNORE, reduction="sum")
    den = ranks.total(class_weights[target[target != IGNORE]].sum())
    value = ranks.total(num) / den
    share = ranks.world * num / den
    return share - (share - value).detach()


def segmentation_loss(logits: torch.Tensor, target: torch.Tensor, class_weights: torch.Tensor,
                      ce: float, dice: float, ranks=None) -> torch.Tensor:
    loss = logits.new_zeros((), dtype=torch.float32)
    if ce:
        loss = loss + ce * weighted_cross_entropy(logits, target, class_weights, ranks)
    if dice:
        loss = loss + dice * soft_dice_loss(logits, target, ranks=ranks)
    return loss


def species_loss(logits: torch.Tensor, species: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of ``[B, 2]`` (cat, dog) logits against ``species`` (1 cat, 2 dog,
    0 unknown: ignored, as for images whose mask shows both or neither)."""
    return F.cross_entropy(logits.float(), species.long() - 1, ignore_index=-1)


def reconstruction_loss(output: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
    # Every rank holds as many images: the mean of the ranks' means is the global mean.
    return F.mse_loss(output.float(), image.float())


def _parallel(ranks) -> bool:
    return ranks is not None and ranks.world > 1


def _summed(x: torch.Tensor, ranks) -> torch.Tensor:
    """The sum of ``x`` over the ranks, with the gradient of this rank's ``x``."""
    return x + (ranks.total(x) - x.detach())


def _scaled(loss: torch.Tensor, world: int) -> torch.Tensor:
    """``loss``'s value with ``world`` times its gradient."""
    return world * loss - (world - 1) * loss.detach()
