"""Training-time transforms on batches of tensors, driven by an explicit ``torch.Generator``.

Inputs: images (N, 1, h, w) float and targets (N, 1, h', w') float in {0, 1}. For the valid
U-Net the target is the centre of the input (h' < h), so only transforms that commute with
centre-cropping (horizontal flips, intensity changes) are applied to such pairs; geometric
warps need ``h' == h``.

Levels: 'none'; 'flip' (horizontal flips; ultrasound has a fixed depth axis, so no vertical
flips); 'strong' (flips, small rotation and scaling, gamma and contrast, multiplicative
speckle noise); 'elastic' ('strong' plus a smooth random elastic deformation, as in the U-Net
paper: displacements drawn on a coarse 3 x 3 grid and interpolated bicubically).

:func:`cutmix` (``train.cutmix``, off by default) pastes into each frame a box of another frame
of the batch, image and mask alike, after the level's transforms.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

AUGMENTS = ("none", "flip", "strong", "elastic")
#: The levels that warp (rotation, zoom, elastic): applied only where target and input share a
#: size, so never to the valid model's centre-cropped targets.
WARPING = ("strong", "elastic")
#: Standard deviation of the 'elastic' level's displacements, as a fraction of the image side
#: (about 8 px at 256 px; the U-Net paper: 10 px at 512 px).
ELASTIC_SIGMA = 0.03


def _uniform(n: int, lo: float, hi: float, g: torch.Generator) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=g, dtype=torch.float32)


def hflip(x: torch.Tensor, y: torch.Tensor, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Flip each pair left-right with probability 1/2."""
    flip = torch.rand(x.shape[0], generator=g, dtype=torch.float32) < 0.5
    if flip.any():
        x = x.clone()
        y = y.clone()
        x[flip] = x[flip].flip(-1)
        y[flip] = y[flip].flip(-1)
    return x, y


def affine(x: torch.Tensor, y: torch.Tensor, g: torch.Generator, max_deg: float = 15.0,
           scale: tuple[float, float] = (0.85, 1.15), shift: float = 0.08, elastic: float = 0.0
           ) -> tuple[torch.Tensor, torch.Tensor]:
    """Random rotation, isotropic scaling and shift, the same for image and target
    (bilinear for the image, bilinear-then-0.5 for the target, both with border padding: what
    the warp brings in from outside the frame repeats the edge in both, so a structure at the
    edge stays its mask's). The angle turns pixels, whatever the frame's aspect.

    ``elastic > 0`` adds a smooth deformation: displacements with standard deviation
    ``elastic`` (a fraction of the image side) drawn on a 3 x 3 grid and interpolated
    bicubically over the image (Ronneberger et al. 2015 used 10 px on 3 x 3 for 512 px)."""
    n = x.shape[0]
    ang = _uniform(n, -max_deg, max_deg, g) * math.pi / 180
    s = _uniform(n, *scale, g)
    tx, ty = _uniform(n, -shift, shift, g), _uniform(n, -shift, shift, g)
    cos, sin = torch.cos(ang) / s, torch.sin(ang) / s
    h, w = x.shape[-2:]     # a rotation of pixels in torch's [-1, 1] coordinates of each side
    theta = torch.stack([torch.stack([cos, -sin * h / w, tx], 1),
                         torch.stack([sin * w / h, cos, ty], 1)], 1)
    grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
    if elastic > 0:
        coarse = torch.randn(n, 2, 3, 3, generator=g, dtype=x.dtype) * (2 * elastic)  # units: 2
        field = F.interpolate(coarse, size=tuple(x.shape[-2:]), mode="bicubic",
                              align_corners=True)
        grid = grid + field.permute(0, 2, 3, 1).to(grid.dtype)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    y = (F.grid_sample(y, grid, mode="bilinear", padding_mode="border", align_corners=False) > 0.5)
    return x, y.to(x.dtype)


def intensity(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Gamma (0.7..1.5) and contrast/brightness jitter, then multiplicative speckle noise.

    Works on images in [0, 1] ('unit' normalisation) or z-scored: the transform is applied to
    the per-image min-max rescaled image and mapped back to the original range. The contrast
    factor scales about mid-range: about the frame's mean, as nnU-Net's, was measured on BUSI
    and not adopted (benchmarks/QUALITY.md, 2026-12-07).
    """
    n = x.shape[0]
    lo = x.amin(dim=(1, 2, 3), keepdim=True)
    hi = x.amax(dim=(1, 2, 3), keepdim=True)
    u = ((x - lo) / (hi - lo).clamp_min(1e-6)).clamp(0, 1)
    gamma = torch.exp(_uniform(n, math.log(0.7), math.log(1.5), g)).view(n, 1, 1, 1)
    u = u.pow(gamma)
    contrast = _uniform(n, 0.8, 1.2, g).view(n, 1, 1, 1)
    bright = _uniform(n, -0.08, 0.08, g).view(n, 1, 1, 1)
    u = (u - 0.5) * contrast + 0.5 + bright
    sigma = _uniform(n, 0.0, 0.15, g).view(n, 1, 1, 1)
    u = u * (1 + sigma * torch.randn(u.shape, generator=g, dtype=u.dtype))
    return u.clamp(0, 1) * (hi - lo) + lo


def augment_batch(x: torch.Tensor, y: torch.Tensor, level: str, g: torch.Generator,
                  scale: tuple[float, float] = (0.85, 1.15)) -> tuple[torch.Tensor, torch.Tensor]:
    """Apply the augmentation ``level`` to a batch (see the module doc); ``scale``: the range
    of the 'strong' and 'elastic' levels' random isotropic zoom."""
    if level == "none":
        return x, y
    if level not in AUGMENTS:
        raise ValueError(f"unknown augmentation {level!r}; valid: {', '.join(AUGMENTS)}")
    x, y = hflip(x, y, g)
    if level in WARPING:
        if x.shape[-2:] == y.shape[-2:]:
            x, y = affine(x, y, g, scale=scale,
                          elastic=ELASTIC_SIGMA if level == "elastic" else 0.0)
        x = intensity(x, g)
    return x, y


def cutmix(x: torch.Tensor, y: torch.Tensor, p: float, g: torch.Generator
           ) -> tuple[torch.Tensor, torch.Tensor]:
    """CutMix for segmentation (Yun et al. 2019): with probability ``p`` for the batch, each
    frame gets a box of another frame of the batch pasted in, the image's pixels and the mask's
    labels at the same place (the mask stays hard, 0/1: labels are pasted, not blended).

    The box is the paper's: ``lam ~ Beta(1, 1)`` (uniform), sides ``sqrt(1 - lam)`` of the
    target's, a centre uniform over the target, clipped to it (so boxes at the edge are
    smaller; one clipped to nothing leaves its frame as it was). Each frame's partner is the
    next in a random cycle through the batch, never itself. The box is drawn in the target's
    coordinates; where the target is the centre of a larger input (the valid model's tiles) the
    image's box is the same box moved by the margin, so every label still lies under its own
    pixel, and the context around the window stays the frame's own.

    ``p == 0`` returns ``x`` and ``y`` themselves and draws nothing from ``g`` (so the
    batches after it are augmented as without the setting); a batch of one frame has no
    partner and is returned as it is. Inputs are not modified in place."""
    n = x.shape[0]
    if p <= 0 or n < 2 or float(torch.rand(1, generator=g)) >= p:
        return x, y
    h, w = y.shape[-2:]
    dy, dx = x.shape[-2] - h, x.shape[-1] - w
    if dy < 0 or dx < 0 or dy % 2 or dx % 2:
        raise ValueError(f"cutmix: the target {h}x{w} is not the centre of the input "
                         f"{x.shape[-2]}x{x.shape[-1]}")
    dy, dx = dy // 2, dx // 2
    cycle = torch.randperm(n, generator=g)
    partner = torch.empty_like(cycle)
    partner[cycle] = cycle.roll(-1)
    side = (1 - torch.rand(n, generator=g, dtype=torch.float64)).sqrt()
    bh, bw = (side * h).long(), (side * w).long()
    cy, cx = torch.randint(h, (n,), generator=g), torch.randint(w, (n,), generator=g)
    top, bottom = (cy - bh // 2).clamp(0, h), (cy + bh // 2).clamp(0, h)
    left, right = (cx - bw // 2).clamp(0, w), (cx + bw // 2).clamp(0, w)
    xm, ym = x.clone(), y.clone()
    for i in range(n):
        t, b, lo, r, j = (int(v[i]) for v in (top, bottom, left, right, partner))
        ym[i, :, t:b, lo:r] = y[j, :, t:b, lo:r]
        xm[i, :, dy + t:dy + b, dx + lo:dx + r] = x[j, :, dy + t:dy + b, dx + lo:dx + r]
    return xm, ym
