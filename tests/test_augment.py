"""Training-time augmentation: image and target stay aligned; 'strong' keeps targets binary and
is reproducible from its generator."""
from __future__ import annotations

import pytest
import torch

from ultraseg.augment import AUGMENTS, affine, augment_batch, cutmix, hflip

M = 6  # context margin of the hand-made 'valid' pairs below


def _valid_pairs(n: int = 16, h: int = 28, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Images (n, 1, h, h) with an asymmetric pattern, and targets that are exactly the
    thresholded centre crop (what a valid U-Net's target is: the mask under the output window)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, h, h, generator=g)
    return x, _centre_target(x)


def _centre_target(x: torch.Tensor) -> torch.Tensor:
    return (x[..., M:-M, M:-M] > 0.5).float()


def _same_pairs(n: int = 6, h: int = 48) -> tuple[torch.Tensor, torch.Tensor]:
    y = torch.zeros(n, 1, h, h)
    for i in range(n):  # an off-centre block, away from the border
        y[i, 0, 12 + i: 26 + i, 14: 30 - i] = 1
    return y.clone() * 0.8 + 0.1, y


@pytest.mark.parametrize("level", ["flip", "strong", "elastic"])
def test_flips_keep_valid_pairs_aligned(level: str) -> None:
    x, y = _valid_pairs()
    g = torch.Generator().manual_seed(3)
    xa, ya = augment_batch(x, y, level, g)
    assert xa.shape == x.shape and ya.shape == y.shape
    flipped = 0
    for i in range(len(x)):
        if torch.equal(ya[i], y[i]):
            continue
        assert torch.equal(ya[i], y[i].flip(-1)), "the target moved other than by a flip"
        flipped += 1
    assert 0 < flipped < len(x)  # each pair flipped with probability 1/2
    if level == "flip":  # pure geometry: the target is still the centre of the image
        assert torch.equal(_centre_target(xa), ya)
    else:  # intensity changes, but the image was flipped exactly when its target was
        for i in range(len(x)):
            same = torch.equal(ya[i], y[i])
            ref = x[i] if same else x[i].flip(-1)
            other = x[i].flip(-1) if same else x[i]
            corr = torch.corrcoef(torch.stack([xa[i].flatten(), ref.flatten()]))[0, 1]
            corr_other = torch.corrcoef(torch.stack([xa[i].flatten(), other.flatten()]))[0, 1]
            assert corr > 0.5 > abs(corr_other)


def test_flips_are_horizontal_only() -> None:
    x, y = _valid_pairs()
    xa, _ = hflip(x, y, torch.Generator().manual_seed(0))
    for i in range(len(x)):  # ultrasound has a fixed depth axis: never upside down
        assert torch.equal(xa[i], x[i]) or torch.equal(xa[i], x[i].flip(-1))


def test_none_is_the_identity() -> None:
    x, y = _valid_pairs()
    xa, ya = augment_batch(x, y, "none", torch.Generator().manual_seed(0))
    assert torch.equal(xa, x) and torch.equal(ya, y)


def test_inputs_are_not_modified_in_place() -> None:
    x, y = _same_pairs()
    x0, y0 = x.clone(), y.clone()
    for level in AUGMENTS:
        augment_batch(x, y, level, torch.Generator().manual_seed(1))
    assert torch.equal(x, x0) and torch.equal(y, y0)


@pytest.mark.parametrize("level", ["strong", "elastic"])
@pytest.mark.parametrize("pairs", [_same_pairs, _valid_pairs])
def test_strong_keeps_targets_binary_and_is_deterministic(pairs, level: str) -> None:
    x, y = pairs()
    a = augment_batch(x, y, level, torch.Generator().manual_seed(7))
    b = augment_batch(x, y, level, torch.Generator().manual_seed(7))
    c = augment_batch(x, y, level, torch.Generator().manual_seed(8))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])
    assert set(torch.unique(a[1]).tolist()) <= {0.0, 1.0}
    assert bool(torch.isfinite(a[0]).all())


def test_strong_actually_warps_same_size_pairs() -> None:
    x, y = _same_pairs()
    _, ya = augment_batch(x, y, "strong", torch.Generator().manual_seed(7))
    moved = [not (torch.equal(ya[i], y[i]) or torch.equal(ya[i], y[i].flip(-1)))
             for i in range(len(y))]
    assert any(moved)
    # foreground area changes with the random scale, but the object stays (shift is small)
    assert bool((ya.sum((1, 2, 3)) > 0).all())


def test_affine_moves_image_and_target_together() -> None:
    x, y = _same_pairs()
    x = y.clone()  # an image that *is* its mask: after the warp both must still agree
    xa, ya = affine(x, y, torch.Generator().manual_seed(5))
    assert torch.equal((xa > 0.5).float(), ya)
    assert not torch.equal(ya, y)


@pytest.mark.parametrize("elastic", [0.0, 0.05])
def test_a_structure_at_the_edge_moves_with_its_mask(elastic: float) -> None:
    """Where the warp brings in the outside of the frame, image and target must agree: the
    image's border padding repeated an edge-touching structure that the target's zero padding
    called background (a reviewer measured up to a third of the object)."""
    y = torch.zeros(8, 1, 48, 48)
    y[:, :, 14:34, 0:12] = 1.0                     # touching the left edge
    xa, ya = affine(y.clone(), y, torch.Generator().manual_seed(2), scale=(0.6, 0.6),
                    elastic=elastic)
    assert torch.equal((xa > 0.5).float(), ya)


def test_rotation_on_a_wide_frame_keeps_a_disc_round() -> None:
    """The angle turns pixels, not torch's normalised coordinates: on a 64 x 192 frame a
    rotation in normalised units also sheared and stretched (axis ratios up to 1.75)."""
    yy, xx = torch.meshgrid(torch.arange(64.0), torch.arange(192.0), indexing="ij")
    disc = (((yy - 32) ** 2 + (xx - 96) ** 2) <= 20 ** 2).float().expand(16, 1, 64, 192)
    _, ya = affine(disc.clone(), disc.clone(), torch.Generator().manual_seed(0), max_deg=15,
                   scale=(1.0, 1.0), shift=0.0)
    for m in ya[:, 0]:
        ys, xs = torch.nonzero(m, as_tuple=True)
        cov = torch.cov(torch.stack([ys.float(), xs.float()]))
        ev = torch.linalg.eigvalsh(cov)
        assert float((ev[1] / ev[0]).sqrt()) < 1.08


def test_elastic_bends_image_and_target_together() -> None:
    x, y = _same_pairs()
    x = y.clone()
    plain = affine(x, y, torch.Generator().manual_seed(5))
    xa, ya = affine(x, y, torch.Generator().manual_seed(5), elastic=0.05)
    assert torch.equal((xa > 0.5).float(), ya)      # the image still is its mask
    assert not torch.equal(ya, plain[1])            # and the deformation did something
    assert bool((ya.sum((1, 2, 3)) > 0).all())      # without losing the object


def test_the_zoom_range_reaches_the_warp() -> None:
    """``scale`` sets the strong level's random zoom: a fixed zoom of 2 doubles the block's
    side (four times its area, up to the edges' resampling), the default range keeps the area
    within (1/1.15)^2 .. (1/0.85)^2 of it."""
    x, y = _same_pairs()
    area = y.sum((1, 2, 3))
    _, zoomed = augment_batch(x, y, "strong", torch.Generator().manual_seed(3), scale=(2.0, 2.0))
    ratio = zoomed.sum((1, 2, 3)) / area
    assert bool(((ratio > 3.3) & (ratio < 4.7)).all()), ratio
    _, plain = augment_batch(x, y, "strong", torch.Generator().manual_seed(3))
    ratio = plain.sum((1, 2, 3)) / area
    assert bool(((ratio > 0.65) & (ratio < 1.5)).all()), ratio


def test_elastic_level_warps_like_strong_and_more() -> None:
    x, y = _same_pairs()
    s = augment_batch(x, y, "strong", torch.Generator().manual_seed(2))
    e = augment_batch(x, y, "elastic", torch.Generator().manual_seed(2))
    assert not torch.equal(s[1], e[1])
    assert set(torch.unique(e[1]).tolist()) <= {0.0, 1.0}


def test_strong_preserves_zscore_range_statistics_roughly() -> None:
    # the intensity transform maps back to the image's own range (works on z-scored input); a
    # range that does not hold [0, 1] (with randn * 2 + 1 it did, and an intensity change
    # left in [0, 1] passed)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 1, 32, 32, generator=g) * 2 + 10
    y = torch.zeros(4, 1, 32, 32)
    xa, _ = augment_batch(x, y, "strong", torch.Generator().manual_seed(1))
    lo, hi = x.amin((1, 2, 3)), x.amax((1, 2, 3))
    assert bool((xa.amin((1, 2, 3)) >= lo - 1e-4).all())
    assert bool((xa.amax((1, 2, 3)) <= hi + 1e-4).all())


def test_the_config_and_the_cli_offer_exactly_the_implemented_levels() -> None:
    from ultraseg.config import TrainConfig, choices

    assert choices(TrainConfig, "augment") == AUGMENTS


def test_unknown_level_names_the_valid_ones() -> None:
    x, y = _same_pairs()
    with pytest.raises(ValueError) as e:
        augment_batch(x, y, "extreme", torch.Generator())
    for level in AUGMENTS:
        assert level in str(e.value)


def test_elastic_displacement_is_a_few_percent_of_the_side() -> None:
    """Only the direction of the deformation was tested: ten times the field passed."""
    from ultraseg.augment import ELASTIC_SIGMA

    # identity affine (no rotation, scale 1, no shift): the sample grid moves by the field only
    x = torch.arange(64.0).repeat(64, 1)[None, None].repeat(8, 1, 1, 1)   # value = column
    y = torch.zeros_like(x)
    xa, _ = affine(x, y, torch.Generator().manual_seed(0), max_deg=0.0, scale=(1.0, 1.0),
                   shift=0.0, elastic=ELASTIC_SIGMA)
    moved = (xa - x).abs()[..., 8:-8, 8:-8].mean().item()    # pixels, away from the border
    assert 0 < moved < 0.1 * 64


# ------------------------------------------------------------------ cutmix
def _box_of(changed: torch.Tensor) -> tuple[int, int, int, int]:
    """The bounding box (top, bottom, left, right; end-exclusive) of a 2D boolean map."""
    rows = torch.nonzero(changed.any(1)).flatten()
    cols = torch.nonzero(changed.any(0)).flatten()
    return int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1


def _noise_pairs(n: int, h: int, margin: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Images of noise (every pixel differs from every other frame's) and hard random masks,
    the mask the centre of the image less ``margin`` on each side (0: same size)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, h, h, generator=g)
    t = h - 2 * margin
    return x, (torch.rand(n, 1, t, t, generator=g) > 0.5).float()


def test_cutmix_off_returns_the_batch_as_it_is_and_draws_nothing() -> None:
    """p = 0, every preset's: the batch untouched, and the generator too (the augmentation of
    the batches after it, so every run trained before the setting, is unchanged)."""
    x, y = _same_pairs()
    g = torch.Generator().manual_seed(4)
    state = g.get_state()
    xa, ya = cutmix(x, y, 0.0, g)
    assert xa is x and ya is y
    assert torch.equal(g.get_state(), state)


@pytest.mark.parametrize("margin", [0, M], ids=["same", "valid"])
def test_cutmix_pastes_one_box_of_another_frame_into_image_and_mask_alike(margin: int) -> None:
    """p = 1: each frame's changed pixels fill one rectangle, where image and mask are another
    frame's of the batch, pixel for pixel; the mask stays hard (0/1, labels pasted, not
    blended). On the valid model's pairs (the mask the image's centre) the image's box is the
    mask's moved by the margin, so the mask still lies under its pixels."""
    n = 12
    x, y = _noise_pairs(n, 32, margin)
    x0, y0 = x.clone(), y.clone()
    xa, ya = cutmix(x, y, 1.0, torch.Generator().manual_seed(5))
    assert torch.equal(x, x0) and torch.equal(y, y0)        # not in place
    assert set(torch.unique(ya).tolist()) <= {0.0, 1.0}
    mixed = 0
    for i in range(n):
        changed = xa[i, 0] != x[i, 0]
        if not changed.any():   # a box clipped to nothing (lam near 1): the frame as it was
            assert torch.equal(ya[i], y[i])
            continue
        mixed += 1
        top, bottom, left, right = _box_of(changed)
        assert bool(changed[top:bottom, left:right].all())   # one rectangle, all of it new
        # the box lies in the mask's window, which the image's noise leaves no doubt about
        assert margin <= top and bottom <= 32 - margin and margin <= left and right <= 32 - margin
        box = (slice(top, bottom), slice(left, right))
        mbox = (slice(top - margin, bottom - margin), slice(left - margin, right - margin))
        partners = [j for j in range(n) if torch.equal(xa[i, 0][box], x[j, 0][box])]
        assert len(partners) == 1 and partners[0] != i
        j = partners[0]
        assert torch.equal(ya[i, 0][mbox], y[j, 0][mbox])    # the partner's labels there
        outside = torch.ones_like(ya[i, 0], dtype=torch.bool)
        outside[mbox] = False
        assert torch.equal(ya[i, 0][outside], y[i, 0][outside])   # and the frame's elsewhere
    assert mixed >= n // 2


def test_cutmix_is_reproducible_from_its_generator() -> None:
    x, y = _noise_pairs(8, 24, 0)
    a = cutmix(x, y, 1.0, torch.Generator().manual_seed(9))
    b = cutmix(x, y, 1.0, torch.Generator().manual_seed(9))
    c = cutmix(x, y, 1.0, torch.Generator().manual_seed(10))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])


def test_cutmix_mixes_about_a_share_p_of_the_batches() -> None:
    x, y = _noise_pairs(4, 16, 0)
    g = torch.Generator().manual_seed(0)
    mixed = sum(not torch.equal(cutmix(x, y, 0.3, g)[0], x) for _ in range(400))
    assert 80 < mixed < 160     # binomial(400, ~0.3): mean ~120 less the few empty boxes


def test_cutmix_leaves_a_batch_of_one_frame_as_it_is() -> None:
    x, y = _noise_pairs(1, 16, 0)
    xa, ya = cutmix(x, y, 1.0, torch.Generator().manual_seed(0))
    assert torch.equal(xa, x) and torch.equal(ya, y)
