"""Training losses against hand computation."""
from __future__ import annotations

import math

import pytest
import torch

from ultraseg.losses import LOSSES, bce_loss, compute_loss, soft_dice_loss
from ultraseg.model.unet import PresenceOutput


def _sig(v: float) -> float:
    return 1 / (1 + math.exp(-v))


def _t(values, shape=(1, 1, 1, 4)) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32).reshape(shape)


LOGITS = [0.0, 2.0, -1.0, 3.0]
TARGET = [1.0, 0.0, 0.0, 1.0]


def test_bce_by_hand() -> None:
    # -[t log p + (1 - t) log(1 - p)], averaged over pixels
    want = sum(-(t * math.log(_sig(z)) + (1 - t) * math.log(1 - _sig(z)))
               for z, t in zip(LOGITS, TARGET)) / 4
    assert float(bce_loss(_t(LOGITS), _t(TARGET))) == pytest.approx(want, rel=1e-6)
    assert float(compute_loss("bce", _t(LOGITS), _t(TARGET))) == pytest.approx(want, rel=1e-6)


def test_dice_by_hand() -> None:
    p = [_sig(z) for z in LOGITS]
    inter = sum(pi * ti for pi, ti in zip(p, TARGET))
    want = 1 - (2 * inter + 1) / (sum(p) + sum(TARGET) + 1)  # smoothing eps = 1
    assert float(soft_dice_loss(_t(LOGITS), _t(TARGET))) == pytest.approx(want, rel=1e-6)
    assert float(compute_loss("dice", _t(LOGITS), _t(TARGET))) == pytest.approx(want, rel=1e-6)


def test_bce_plus_dice_is_the_sum() -> None:
    x, y = _t(LOGITS), _t(TARGET)
    assert float(compute_loss("bce+dice", x, y)) == pytest.approx(
        float(bce_loss(x, y)) + float(soft_dice_loss(x, y)), rel=1e-6)


def test_dice_is_per_image_then_averaged() -> None:
    # image 1: perfect on a 2-pixel object; image 2: the object entirely missed
    logits = torch.tensor([[20.0, 20.0, -20.0, -20.0],
                           [-20.0, -20.0, -20.0, -20.0]]).view(2, 1, 1, 4)
    target = torch.tensor([[1.0, 1.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0]]).view(2, 1, 1, 4)
    per_image = [0.0, 1 - 1 / (4 + 1)]  # image 2: (0 + 1) / (0 + 4 + 1)
    assert float(soft_dice_loss(logits, target)) == pytest.approx(sum(per_image) / 2, abs=1e-6)


def test_perfect_prediction_costs_almost_nothing() -> None:
    target = torch.zeros(2, 1, 8, 8)
    target[0, 0, 2:6, 3:7] = 1
    logits = (target * 2 - 1) * 30  # confident and right
    assert float(soft_dice_loss(logits, target)) < 1e-6
    assert float(bce_loss(logits, target)) < 1e-6
    assert float(compute_loss("bce+dice", logits, target)) < 1e-6
    # the empty rule: empty truth, empty prediction scores (nearly) zero loss, not 1
    empty = torch.zeros(1, 1, 8, 8)
    assert float(soft_dice_loss(torch.full_like(empty, -30.0), empty)) < 1e-6


def test_wrong_prediction_costs_more_than_right_one() -> None:
    target = torch.zeros(1, 1, 8, 8)
    target[0, 0, 2:6, 2:6] = 1
    right, wrong = (target * 2 - 1) * 3, (1 - 2 * target) * 3
    for name in LOSSES:
        worse = float(compute_loss(name, wrong, target))
        assert worse > float(compute_loss(name, right, target)) + 0.5


def test_losses_give_gradients() -> None:
    x = torch.zeros(1, 1, 4, 4, requires_grad=True)
    y = torch.ones(1, 1, 4, 4)
    for name in LOSSES:
        x.grad = None
        compute_loss(name, x, y).backward()
        assert x.grad is not None and bool((x.grad < 0).all())  # pushes logits towards 1


def test_unknown_loss_names_the_valid_ones() -> None:
    with pytest.raises(ValueError) as e:
        compute_loss("focal", torch.zeros(1, 1, 2, 2), torch.zeros(1, 1, 2, 2))
    for name in LOSSES:
        assert name in str(e.value)


@pytest.mark.parametrize("name", LOSSES)
def test_deep_supervision_loss_weights_each_scale(name) -> None:
    torch.manual_seed(0)
    target = (torch.rand(2, 1, 8, 8) > 0.5).float()
    outs = (torch.randn(2, 1, 8, 8), torch.randn(2, 1, 4, 4), torch.randn(2, 1, 2, 2))
    half = torch.nn.functional.avg_pool2d(target, 2)      # share of foreground per 2x2 cell
    quarter = torch.nn.functional.avg_pool2d(target, 4)
    want = (4 * compute_loss(name, outs[0], target) + 2 * compute_loss(name, outs[1], half)
            + compute_loss(name, outs[2], quarter)) / 7      # weights 1, 1/2, 1/4, normalised
    assert float(compute_loss(name, outs, target)) == pytest.approx(float(want), rel=1e-6)
    # one output in a sequence is the plain loss
    assert float(compute_loss(name, outs[:1], target)) == pytest.approx(
        float(compute_loss(name, outs[0], target)), rel=1e-6)


def test_deep_supervision_loss_reaches_every_output() -> None:
    target = torch.zeros(1, 1, 8, 8)
    target[..., 2:6, 2:6] = 1
    outs = [torch.zeros(1, 1, 8 // 2**k, 8 // 2**k, requires_grad=True) for k in range(3)]
    compute_loss("bce+dice", outs, target).backward()
    assert all(o.grad is not None and o.grad.abs().sum() > 0 for o in outs)


@pytest.mark.parametrize("weight", [0.0, 1.0, 0.5])
def test_presence_output_adds_the_heads_cross_entropy_against_a_non_empty_mask(weight) -> None:
    torch.manual_seed(0)
    target = torch.zeros(3, 1, 8, 8)
    target[0, 0, 2, 3] = 1                     # one pixel is enough to count as present
    target[2, 0, 4:, 4:] = 1
    logits, presence = torch.randn(3, 1, 8, 8), torch.tensor([[2.0], [1.0], [-3.0]])
    want = compute_loss("bce+dice", logits, target) + weight * (
        -(math.log(_sig(2.0)) + math.log(1 - _sig(1.0)) + math.log(_sig(-3.0))) / 3)
    got = compute_loss("bce+dice", PresenceOutput(logits, presence), target, weight)
    assert float(got) == pytest.approx(float(want), rel=1e-6)
    # with deep supervision the outputs are scored as without the head
    outs = (logits, torch.randn(3, 1, 4, 4))
    assert float(compute_loss("dice", PresenceOutput(outs, presence), target, 0.0)) == \
        pytest.approx(float(compute_loss("dice", outs, target)), rel=1e-6)


def test_batch_dice_pools_the_batch_as_one_image() -> None:
    logits = torch.tensor([[20.0, 20.0, -20.0, -20.0],
                           [-20.0, -20.0, -20.0, -20.0]]).view(2, 1, 1, 4)
    target = torch.tensor([[1.0, 1.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0]]).view(2, 1, 1, 4)
    # pooled: intersection 2, predicted 2, true 6 -> 1 - (4 + 1) / (8 + 1)
    assert float(soft_dice_loss(logits, target, batch=True)) == pytest.approx(1 - 5 / 9, abs=1e-6)
    assert float(soft_dice_loss(logits.view(1, 1, 2, 4), target.view(1, 1, 2, 4))) == \
        pytest.approx(1 - 5 / 9, abs=1e-6)
    # compute_loss hands the choice to the Dice term alone
    want = float(bce_loss(logits, target)) + 1 - 5 / 9
    assert float(compute_loss("bce+dice", logits, target, batch_dice=True)) == \
        pytest.approx(want, abs=1e-6)
    assert float(compute_loss("bce", logits, target, batch_dice=True)) == \
        pytest.approx(float(bce_loss(logits, target)), rel=1e-6)


def test_batch_dice_pushes_a_confident_false_structure_on_an_empty_frame() -> None:
    # frame 0: a 256-pixel structure found; frame 1: empty truth, a confident 256-pixel false
    # one; frame 2: the structure found with a 256-pixel false one beside it
    target = torch.zeros(3, 1, 32, 32)
    target[[0, 2], 0, 4:20, 4:20] = 1
    logits = torch.full((3, 1, 32, 32), -8.0)
    logits[:, 0, 4:20, 4:20] = 4.0
    logits[2, 0, 16:32, 16:32] = 4.0
    pushes = {}
    for batch in (False, True):
        x = logits.clone().requires_grad_(True)
        soft_dice_loss(x, target, batch=batch).backward()
        # > 0: towards background; the false pixels of frames 1 and 2
        pushes[batch] = (float(x.grad[1, 0, 4:20, 4:20].mean()),
                         float(x.grad[2, 0, 20:32, 20:32].mean()))
    # per frame the empty frame's cost S / (S + 1) has saturated at S = 251
    assert 0 < pushes[False][0] < pushes[False][1] / 20
    # pooled, a false pixel is pushed alike wherever it lies, 20 times harder than before
    assert pushes[True][0] == pytest.approx(pushes[True][1], rel=1e-5)
    assert pushes[True][0] > 20 * pushes[False][0]


def test_batch_dice_reaches_deep_supervision_and_presence_outputs() -> None:
    torch.manual_seed(0)
    target = (torch.rand(2, 1, 8, 8) > 0.5).float()
    target[1] = 0
    outs = (torch.randn(2, 1, 8, 8), torch.randn(2, 1, 4, 4))
    for wrapped in (outs, PresenceOutput(outs, torch.zeros(2, 1))):
        per_frame = float(compute_loss("dice", wrapped, target))
        pooled = float(compute_loss("dice", wrapped, target, batch_dice=True))
        assert pooled != pytest.approx(per_frame, abs=1e-3)
    want = (2 * soft_dice_loss(outs[0], target, batch=True)
            + soft_dice_loss(outs[1], torch.nn.functional.avg_pool2d(target, 2), batch=True)) / 3
    assert float(compute_loss("dice", outs, target, batch_dice=True)) == \
        pytest.approx(float(want), rel=1e-6)


def test_dice_skip_empty_leaves_frames_with_an_empty_target_out() -> None:
    # frame 0: a structure half found; frame 1: empty truth with a confident false mark
    target = torch.zeros(2, 1, 8, 8)
    target[0, 0, :4] = 1
    logits = torch.full((2, 1, 8, 8), -10.0)
    logits[0, 0, :2] = 10.0
    logits[1, 0, 2:6, 2:6] = 10.0
    alone = float(soft_dice_loss(logits[:1], target[:1]))
    assert alone == pytest.approx(1 - 33 / 49, abs=1e-4)
    # per frame: the empty frame counts as zero in the mean over both frames
    x = logits.clone().requires_grad_(True)
    loss = soft_dice_loss(x, target, skip_empty=True)
    loss.backward()
    assert float(loss.detach()) == pytest.approx(alone / 2, abs=1e-6)
    assert float(x.grad[1].abs().max()) == 0.0 and float(x.grad[0].abs().max()) > 0
    # without the option the false mark costs its frame almost a whole Dice term
    assert float(soft_dice_loss(logits, target)) == pytest.approx((alone + 16 / 17) / 2, abs=1e-4)
    # pooled: the empty frame is left out of the pool; an all-empty batch adds nothing
    assert float(soft_dice_loss(logits, target, batch=True, skip_empty=True)) == \
        pytest.approx(alone, abs=1e-6)
    x = logits[1:].clone().requires_grad_(True)
    loss = soft_dice_loss(x, target[1:], batch=True, skip_empty=True)
    loss.backward()
    assert float(loss.detach()) == 0.0 and float(x.grad.abs().max()) == 0.0


def test_dice_skip_empty_reaches_deep_supervision_and_presence_outputs() -> None:
    torch.manual_seed(0)
    target = (torch.rand(2, 1, 8, 8) > 0.5).float()
    target[1] = 0
    outs = (torch.randn(2, 1, 8, 8), torch.randn(2, 1, 4, 4))
    want = (2 * soft_dice_loss(outs[0], target, skip_empty=True)
            + soft_dice_loss(outs[1], torch.nn.functional.avg_pool2d(target, 2),
                             skip_empty=True)) / 3
    for wrapped in (outs, PresenceOutput(outs, torch.zeros(2, 1))):
        skipped = float(compute_loss("dice", wrapped, target, 0.0, dice_skip_empty=True))
        assert skipped == pytest.approx(float(want), rel=1e-6)
        assert skipped != pytest.approx(float(compute_loss("dice", wrapped, target, 0.0)),
                                        abs=1e-3)
    # the cross-entropy still scores every frame
    assert float(compute_loss("bce+dice", outs[0], target, dice_skip_empty=True)) == \
        pytest.approx(float(bce_loss(outs[0], target)
                            + soft_dice_loss(outs[0], target, skip_empty=True)), rel=1e-6)


@pytest.mark.parametrize("batch", [False, True])
def test_soft_dice_agrees_with_monai(batch) -> None:
    losses = pytest.importorskip("monai.losses")
    torch.manual_seed(0)
    logits = torch.randn(4, 1, 12, 12) * 3
    target = (torch.rand(4, 1, 12, 12) > 0.6).float()
    target[2] = 0                                     # an empty frame
    ref = losses.DiceLoss(sigmoid=True, batch=batch, smooth_nr=1.0, smooth_dr=1.0)
    assert float(soft_dice_loss(logits, target, batch=batch)) == \
        pytest.approx(float(ref(logits, target)), rel=1e-5)
