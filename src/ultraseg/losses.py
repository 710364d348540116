"""Training losses on logits. All take logits (N, 1, H, W) and targets in {0, 1} of the same shape."""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from .model.unet import PresenceOutput

LOSSES = ("bce", "dice", "bce+dice")


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor, eps: float = 1.0,
                   batch: bool = False, skip_empty: bool = False) -> torch.Tensor:
    """1 - soft Dice, computed per image and averaged (an empty target with an empty prediction
    scores Dice 1, the same empty rule as :mod:`ultraseg.metrics`).

    ``batch``: one Dice over the whole batch, its pixels pooled as if one image (nnU-Net's
    "batch Dice", its 2D default). Per image, a false structure on a frame with an empty
    target costs ``S / (S + eps)`` for ``S`` summed probability, which saturates: a confident
    false lesion of a few hundred pixels gets almost no gradient from the Dice term. Pooled,
    its pixels enlarge the batch's denominator and are pushed down as hard as any other
    false positive; small structures in turn weigh by their size, not one image each.

    ``skip_empty``: frames whose target is empty add nothing (per image: they count as zero
    loss in the mean over all frames, so the term stays a per-frame mean; pooled: they are left
    out of the pool). Their every faint mark costs almost the whole of their Dice term, a push
    towards empty output that also reaches doubtful true structures; the cross-entropy (and a
    presence head) still answers for them.
    """
    n = logits.shape[0]
    keep = target.reshape(n, -1).amax(1) > 0 if skip_empty else None
    if batch and keep is not None:
        if not bool(keep.any()):
            return logits.float().sum() * 0.0
        logits, target = logits[keep], target[keep]
    rows = 1 if batch else n
    prob = torch.sigmoid(logits.float()).reshape(rows, -1)
    target = target.float().reshape(rows, -1)
    inter = (prob * target).sum(1)
    denom = prob.sum(1) + target.sum(1)
    per = 1 - (2 * inter + eps) / (denom + eps)
    if keep is not None and not batch:
        per = per * keep
    return per.mean()


def bce_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy on logits (the network's sigmoid folded in, for stability)."""
    return F.binary_cross_entropy_with_logits(logits.float(), target.float())


def compute_loss(name: str, logits: torch.Tensor | Sequence[torch.Tensor] | PresenceOutput,
                 target: torch.Tensor, presence_weight: float = 1.0,
                 batch_dice: bool = False, dice_skip_empty: bool = False) -> torch.Tensor:
    """The loss named ``name``: 'bce', 'dice' or 'bce+dice' (their sum); ``batch_dice``: the
    Dice term pooled over the batch, ``dice_skip_empty``: the Dice term blind to frames with an
    empty target (:func:`soft_dice_loss`).

    ``logits`` may be a sequence (a deep-supervised model in training: full resolution, then
    1/2, 1/4, ...): the k-th output is scored against the target average-pooled by 2**k (the
    share of foreground in each cell, a soft target) with a weight proportional to 2**-k,
    normalised so the weights sum to 1 (nnU-Net's scheme; three outputs: 4/7, 2/7, 1/7).

    ``logits`` may be a :class:`~ultraseg.model.unet.PresenceOutput` (a model with a presence
    head, in training): the loss of its outputs plus ``presence_weight`` times the binary
    cross-entropy of its presence logits against "the target is not empty" (per image and
    channel). When it also carries ``gated`` outputs (a 'detached' presence head), their loss
    is added too.
    """
    dice_opts = {"batch_dice": batch_dice, "dice_skip_empty": dice_skip_empty}
    if isinstance(logits, PresenceOutput):
        present = target.flatten(2).amax(2).gt(0).float()
        total = (compute_loss(name, logits.outputs, target, **dice_opts)
                 + presence_weight * bce_loss(logits.presence, present))
        if logits.gated is not None:
            total = total + compute_loss(name, logits.gated, target, **dice_opts)
        return total
    if not isinstance(logits, torch.Tensor):
        weights = [2.0**-k for k in range(len(logits))]
        total = sum(weights)
        return sum((w / total) * compute_loss(name, out, F.avg_pool2d(target.float(), 2**k)
                                              if k else target, **dice_opts)
                   for k, (w, out) in enumerate(zip(weights, logits)))  # type: ignore[return-value]
    if name == "bce":
        return bce_loss(logits, target)
    dice_term = soft_dice_loss(logits, target, batch=batch_dice, skip_empty=dice_skip_empty)
    if name == "dice":
        return dice_term
    if name == "bce+dice":
        return bce_loss(logits, target) + dice_term
    raise ValueError(f"unknown loss {name!r}; valid: {', '.join(LOSSES)}")
