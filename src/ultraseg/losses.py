"""Training losses on logits. All take logits (N, 1, H, W) and targets in {0, 1} of the same shape."""
from __future__ import annotations

import torch
import torch.nn.functional as F

LOSSES = ("bce", "dice", "bce+dice")


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """1 - soft Dice, computed per image and averaged (an empty target with an empty prediction
    scores Dice 1, the same empty rule as :mod:`ultraseg.metrics`)."""
    prob = torch.sigmoid(logits.float()).flatten(1)
    target = target.float().flatten(1)
    inter = (prob * target).sum(1)
    denom = prob.sum(1) + target.sum(1)
    return (1 - (2 * inter + eps) / (denom + eps)).mean()


def bce_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy on logits (the network's sigmoid folded in, for stability)."""
    return F.binary_cross_entropy_with_logits(logits.float(), target.float())


def compute_loss(name: str, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The loss named ``name``: 'bce', 'dice' or 'bce+dice' (their sum)."""
    if name == "bce":
        return bce_loss(logits, target)
    if name == "dice":
        return soft_dice_loss(logits, target)
    if name == "bce+dice":
        return bce_loss(logits, target) + soft_dice_loss(logits, target)
    raise ValueError(f"unknown loss {name!r}; valid: {', '.join(LOSSES)}")
