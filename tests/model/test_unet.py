"""U-Net shapes, parameter count, size arithmetic and input-size errors (tiny widths)."""
from __future__ import annotations

import pytest
import torch

from ultraseg.config import ModelConfig
from ultraseg.errors import UltrasegError
from ultraseg.losses import compute_loss
from ultraseg.model import (
    UNet,
    build_model,
    center_crop,
    context_margin,
    count_parameters,
    is_valid_input,
    nearest_valid_output,
    same_padded_size,
    valid_input_size,
    valid_output_size,
)
from ultraseg.model.unet import ABSENT_LOGIT, PresenceOutput, drop_absent, gate_logits


def tiny(variant: str, depth: int = 4, **kw) -> UNet:
    torch.manual_seed(0)
    return UNet(ModelConfig(variant=variant, width=4, depth=depth, **kw)).eval()


# --- size arithmetic ------------------------------------------------------------------------


def test_paper_sizes():
    assert valid_output_size(572) == 388  # Fig. 1 of the paper
    assert valid_output_size(252) == 68
    assert valid_input_size(68) == 252
    assert valid_input_size(388) == 572
    assert context_margin() == 92
    assert context_margin(1) == 8  # 18 -> 2 at depth 1 (see below): (18 - 2) / 2


def test_valid_sizes_by_hand_depth_1():
    # 18 -> conv 14 -> pool 7 -> conv 3 -> up 6 -> conv 2
    assert valid_output_size(18, depth=1) == 2
    assert valid_input_size(2, depth=1) == 18
    assert not is_valid_input(17, depth=1) and not is_valid_input(16, depth=1)
    assert is_valid_input(20, depth=1)


def test_valid_outputs_step_by_2_pow_depth():
    outs = [valid_output_size(s) for s in range(150, 400) if is_valid_input(s)]
    assert outs[:3] == [4, 20, 36] and all(b - a == 16 for a, b in zip(outs, outs[1:]))
    for s in range(150, 400):
        if is_valid_input(s):
            assert s - valid_output_size(s) == 2 * context_margin()


def test_nearest_valid_output_and_padded_size():
    assert nearest_valid_output(68) == 68
    assert nearest_valid_output(69) == 84
    assert nearest_valid_output(1) == 4
    assert same_padded_size(100, 4) == 112
    assert same_padded_size(96, 4) == 96
    assert same_padded_size(5, 3) == 8


def test_invalid_input_size_names_nearest():
    with pytest.raises(ValueError, match="236 or 252"):
        valid_output_size(250)
    with pytest.raises(ValueError, match="nearest valid input sizes: 188"):
        valid_output_size(10)


def test_unreachable_output_names_nearest():
    with pytest.raises(ValueError, match="68 or 84"):
        valid_input_size(70)


# --- the network ----------------------------------------------------------------------------


def test_parameter_count_matches_original_unet():
    with torch.device("meta"):
        net = UNet(ModelConfig(variant="valid", width=64, depth=4))
    assert count_parameters(net) == 31_030_593


@pytest.mark.parametrize("size", [188, 204, 252])
def test_valid_output_shapes_depth4(size):
    out = tiny("valid", out_channels=2)(torch.zeros(1, 1, size, size))
    assert out.shape == (1, 2, valid_output_size(size), valid_output_size(size))


def test_valid_252_gives_68_non_square():
    out = tiny("valid")(torch.zeros(2, 1, 252, 188))
    assert out.shape == (2, 1, 68, 4)


@pytest.mark.parametrize("depth,size", [(2, 44), (2, 64), (3, 92), (3, 116)])
def test_valid_output_shapes_other_depths(depth, size):
    out = tiny("valid", depth=depth)(torch.zeros(1, 1, size, size))
    expected = size - 2 * context_margin(depth)
    assert out.shape == (1, 1, expected, expected)


@pytest.mark.parametrize("depth,h,w", [(4, 16, 16), (4, 48, 32), (3, 40, 24), (2, 12, 4)])
def test_same_output_shapes(depth, h, w):
    out = tiny("same", depth=depth, in_channels=3, out_channels=2)(torch.zeros(2, 3, h, w))
    assert out.shape == (2, 2, h, w)


def test_valid_wrong_size_raises():
    with pytest.raises(ValueError, match="236 or 252"):
        tiny("valid")(torch.zeros(1, 1, 250, 252))


def test_same_wrong_size_says_what_to_pad_to():
    with pytest.raises(ValueError, match="pad it to 112x48"):
        tiny("same")(torch.zeros(1, 1, 100, 40))


def test_channels_last_matches_contiguous():
    """The same numbers in either memory layout. The two layouts run different convolution
    kernels, which sum in a different order: on an AVX2 CPU the logits (magnitude ~3) differ
    by up to ~2e-5, above assert_close's fp32 default (1e-5 + 1.3e-6 * |x|), so the tolerance
    is fp32 rounding over a few hundred terms; a layout bug moves them by O(1)."""
    x = torch.randn(2, 1, 188, 188)
    net = tiny("valid")
    with torch.no_grad():
        a = net(x)
        b = net(x.to(memory_format=torch.channels_last))
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_valid_output_is_translation_equivariant_on_the_tile_grid():
    """The output pixel at (i, j) only sees input (i..i+2m, j..j+2m): shifting the input by
    16 (the pooling grid) shifts the output by 16."""
    x = torch.randn(1, 1, 204, 204)
    net = tiny("valid")
    with torch.no_grad():
        big = net(x)
        small = net(x[:, :, 16:204, 16:204])
    torch.testing.assert_close(small, big[:, :, 16:, 16:], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("depth", [1, 2])
def test_valid_output_pixel_sees_a_window_centred_on_its_input_pixel(depth):
    """The 252 -> 68 output covers the *central* 68 x 68 of the input: output (i, j) lies over
    input (i + m, j + m). With the top level's up-convolution zeroed the output sees the
    input only through the top skip connection, so the input pixels its gradient reaches
    are those the skip's crop took: they must be centred on (i + m, j + m). (A top-left crop
    passes every shape test and the shift test above, and fails this one.)"""
    net = tiny("valid", depth=depth)
    with torch.no_grad():
        net.decoder[-1].up.weight.zero_()
    m = context_margin(depth)
    size = valid_input_size(nearest_valid_output(20, depth), depth)
    x = torch.randn(1, 1, size, size, requires_grad=True)
    out = net(x)
    i, j = 5, 7
    out[0, 0, i, j].backward()
    rows, cols = torch.nonzero(x.grad[0, 0].abs() > 0, as_tuple=True)
    assert rows.numel() > 0
    assert (int(rows.min()) + int(rows.max())) / 2 == i + m
    assert (int(cols.min()) + int(cols.max())) / 2 == j + m


def test_center_crop():
    t = torch.arange(36).reshape(1, 1, 6, 6)
    assert center_crop(t, 2, 4).tolist() == [[[[13, 14, 15, 16], [19, 20, 21, 22]]]]
    # an odd difference: the extra row and column go to the bottom and right (the docstring's
    # rule, center_crop being exported): 5x5 -> 2x2 starts at (5 - 2) // 2 = 1, rows and
    # columns 1-2: 1 * 5 + 1 = 6, 7 and 11, 12
    assert center_crop(torch.arange(25).reshape(1, 1, 5, 5), 2, 2).tolist() == [[[[6, 7],
                                                                                 [11, 12]]]]
    # 5x6 -> 2x3: rows 1-2 ((5 - 2) // 2 = 1), columns 1-3 ((6 - 3) // 2 = 1)
    assert center_crop(torch.arange(30).reshape(1, 1, 5, 6), 2, 3).tolist() == [[[
        [7, 8, 9], [13, 14, 15]]]]
    with pytest.raises(ValueError):
        center_crop(t, 7, 2)


def _unchecked(cfg: ModelConfig, **values) -> ModelConfig:
    """``cfg`` holding values its construction refuses (ModelConfig checks its names when
    built): build_model's own refusals are for a config that got past it all the same."""
    for k, v in values.items():
        object.__setattr__(cfg, k, v)
    return cfg


def test_build_model():
    net = build_model(ModelConfig(variant="same", width=4, depth=2))
    assert isinstance(net, UNet) and net.margin == 0
    assert build_model(ModelConfig(width=4)).margin == 92
    with pytest.raises(UltrasegError, match="model.variant must be one of 'valid', 'same'"):
        ModelConfig(variant="residual")  # type: ignore[arg-type]
    with pytest.raises(UltrasegError, match=r"valid variants: \['valid', 'same'\]"):
        build_model(_unchecked(ModelConfig(), variant="residual"))
    with pytest.raises(UltrasegError, match="68 or 84"):
        build_model(ModelConfig(width=4, tile=70))


# --- deep supervision -----------------------------------------------------------------------


def test_deep_supervision_outputs_in_training_only() -> None:
    net = tiny("same", depth=3, deep_supervision=True).train()
    x = torch.randn(2, 1, 32, 48)
    out = net(x)
    assert isinstance(out, tuple)
    assert [tuple(o.shape) for o in out] == [(2, 1, 32, 48), (2, 1, 16, 24), (2, 1, 8, 12)]
    net.eval()
    with torch.no_grad():
        plain = net(x)
        # the main output is the same network either way: eval mode just drops the extra heads
        net.aux_heads = torch.nn.ModuleList()
        assert torch.equal(plain, net(x))
    assert plain.shape == (2, 1, 32, 48)


def test_deep_supervision_heads_are_in_the_state_dict() -> None:
    plain, ds = tiny("same", depth=4), tiny("same", depth=4, deep_supervision=True)
    extra = set(ds.state_dict()) - set(plain.state_dict())
    assert extra == {"aux_heads.0.weight", "aux_heads.0.bias", "aux_heads.1.weight",
                     "aux_heads.1.bias"}
    assert ds.aux_heads[0].in_channels == 8 and ds.aux_heads[1].in_channels == 16  # width 4
    assert len(tiny("same", depth=2, deep_supervision=True).aux_heads) == 1   # only 1/2 exists


def test_deep_supervision_needs_the_same_variant() -> None:
    with pytest.raises(UltrasegError, match="deep supervision needs the 'same' variant"):
        build_model(ModelConfig(variant="valid", width=4, deep_supervision=True))


# --- presence head --------------------------------------------------------------------------


def test_gate_is_the_logit_of_the_product_of_probabilities() -> None:
    torch.manual_seed(0)
    logits, presence = torch.randn(3, 2, 5, 7) * 8, torch.randn(3, 2) * 8
    want = torch.logit(torch.sigmoid(logits.double())
                       * torch.sigmoid(presence.double())[:, :, None, None])
    got = gate_logits(logits, presence)
    assert got.dtype == torch.float32 and got.shape == logits.shape
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5)
    # far beyond float32's sigmoid range the gate stays finite and ordered
    extreme = gate_logits(torch.tensor([[[[-200.0, 0.0, 200.0]]]]), torch.tensor([[300.0]]))
    torch.testing.assert_close(extreme, torch.tensor([[[[-200.0, 0.0, 200.0]]]]))
    assert (gate_logits(torch.full((1, 1, 2, 2), 200.0), torch.tensor([[-3.0]])) < -2.9).all()


def test_presence_head_needs_the_same_variant() -> None:
    # the valid model predicts a frame tile by tile: its head would judge tiles, not frames
    with pytest.raises(ValueError, match="presence head needs the 'same' variant"):
        tiny("valid", 2, presence_head=True)


@pytest.mark.parametrize("variant,depth", [("same", 3), ("same", 2)])
def test_presence_head_keeps_shapes_and_adds_only_its_layer(variant, depth) -> None:
    plain, gated = tiny(variant, depth), tiny(variant, depth, presence_head=True)
    assert set(gated.state_dict()) - set(plain.state_dict()) == {"presence.weight",
                                                                  "presence.bias"}
    assert gated.presence.in_features == 2 * 4 * 2**depth   # mean and max of the bottleneck
    size = 32 if variant == "same" else valid_input_size(20, depth)
    x = torch.randn(2, 1, size, size)
    with torch.no_grad():
        assert gated(x).shape == plain(x).shape
        # the same weights: the gated output is the plain one passed through the gate
        gated.load_state_dict({**plain.state_dict(), "presence.weight": gated.presence.weight,
                               "presence.bias": gated.presence.bias})
        c = gated.presence(torch.zeros(2, gated.presence.in_features))  # weights start at 0
        torch.testing.assert_close(gated(x), gate_logits(plain(x), c))


def test_a_frame_the_presence_head_calls_absent_comes_out_empty() -> None:
    net = tiny("same", 2, presence_head=True)
    x = torch.randn(3, 1, 32, 32)
    with torch.no_grad():
        net.head.bias.fill_(20.0)             # every pixel certain on its own ...
        net.presence.bias.fill_(-2.0)         # ... but the frame called absent (p = 0.12)
        prob = torch.sigmoid(net(x))
    assert (prob <= torch.sigmoid(torch.tensor(-2.0)) + 1e-6).all() and (prob > 0.1).all()


def test_presence_head_in_training_hands_its_logits_to_the_loss() -> None:
    net = tiny("same", 3, presence_head=True, deep_supervision=True).train()
    x, empty = torch.randn(2, 1, 32, 32), torch.zeros(2, 1, 32, 32)
    out = net(x)
    assert isinstance(out, PresenceOutput) and out.presence.shape == (2, 1)
    assert [tuple(o.shape) for o in out.outputs] == [(2, 1, 32, 32), (2, 1, 16, 16), (2, 1, 8, 8)]
    # weight 0: the head learns through the gate of every output alone; an empty target
    # asks for a lower presence
    compute_loss("bce+dice", out, empty, presence_weight=0.0).backward()
    assert net.presence.weight.grad.abs().sum() > 0 and net.presence.bias.grad.item() > 0
    with torch.no_grad():                     # a frame called absent: every output below it
        net.presence.bias.fill_(-30.0)
        assert all((o < -29).all() for o in net(x).outputs)
        assert isinstance(net.eval()(x), torch.Tensor)   # prediction: the gated logits alone


def test_adding_a_presence_head_leaves_the_other_layers_initial_weights_alone() -> None:
    plain = tiny("same", 3).state_dict()
    for mode in ("gate", "classifier", "detached"):
        with_head = tiny("same", 3, presence_head=True, presence_mode=mode).state_dict()
        for key, value in plain.items():
            assert torch.equal(with_head[key], value), key


def test_drop_absent_empties_a_frame_only_below_a_presence_logit_of_0() -> None:
    """A frame is absent where its presence logit is below 0 (P(present) under 0.5); at 0
    exactly (P = 0.5) it is kept, as the docstring says."""
    logits = torch.randn(3, 1, 4, 4)
    got = drop_absent(logits, torch.tensor([[-1e-3], [0.0], [1e-3]]))
    assert (got[0] == ABSENT_LOGIT).all()
    assert torch.equal(got[1:], logits[1:])


def test_classifier_presence_head_trains_beside_the_pixels_and_empties_absent_frames() -> None:
    plain = tiny("same", 2)
    net = tiny("same", 2, presence_head=True, presence_mode="classifier")
    x = torch.randn(3, 1, 32, 32)
    with torch.no_grad():
        # training: the segmentation's own logits (no gate), the head's logits beside them
        out = net.train()(x)
        assert isinstance(out, PresenceOutput) and out.presence.shape == (3, 1)
        torch.testing.assert_close(out.outputs, plain.train()(x))
        # prediction: frames called absent (c < 0) come out empty, the others unchanged
        net.presence.weight.zero_()
        net.presence.bias.fill_(-0.1)
        assert (net.eval()(x) == ABSENT_LOGIT).all()
        net.presence.bias.fill_(0.1)
        torch.testing.assert_close(net(x), plain.eval()(x))
        # per frame: a weight on one pooled feature calls some frames absent and not others
        pooled = net.encoder[-1](net.encoder[-2](net.encoder[-3](x)))[:, 0].mean((1, 2))
        low = pooled.sort().values
        net.presence.weight[0, 0] = 1.0
        net.presence.bias.fill_(-float(low[0] + low[1]) / 2)   # the lowest frame is absent
        absent = pooled < (low[0] + low[1]) / 2
        assert int(absent.sum()) == 1
        got, want = net(x), plain(x)
        assert (got[absent] == ABSENT_LOGIT).all()
        torch.testing.assert_close(got[~absent], want[~absent])
    # the pixel loss reaches the segmentation, the head's own loss the head
    loss = compute_loss("bce+dice", net.train()(x), torch.zeros(3, 1, 32, 32))
    loss.backward()
    assert net.presence.bias.grad.item() > 0 and net.head.weight.grad.abs().sum() > 0


def test_detached_presence_head_gates_prediction_and_its_gated_loss_skips_the_decoder() -> None:
    plain = tiny("same", 2, deep_supervision=True)
    gate = tiny("same", 2, presence_head=True, deep_supervision=True)
    net = tiny("same", 2, presence_head=True, presence_mode="detached", deep_supervision=True)
    x = torch.randn(3, 1, 32, 32)
    with torch.no_grad():
        for other in (gate, net):     # (a head of zero weights passes nothing down)
            other.presence.weight.fill_(0.05)
            other.presence.bias.fill_(-1.5)
        # prediction: gated, exactly as a 'gate' head with the same weights
        torch.testing.assert_close(net.eval()(x), gate.eval()(x))
        # training: the segmentation's own outputs, and beside them the same outputs gated
        out, gated = net.train()(x), gate.train()(x)
        for mine, theirs in zip(out.outputs, plain.train()(x)):
            torch.testing.assert_close(mine, theirs)
        for mine, theirs in zip(out.gated, gated.outputs):
            torch.testing.assert_close(mine, theirs)
    # the gated outputs' loss reaches the head and the encoder, never the decoder or its head
    out = net(x)
    target = torch.zeros(3, 1, 32, 32)
    compute_loss("bce+dice", PresenceOutput(out.outputs[0].detach(), out.presence, out.gated[0]),
                 target, presence_weight=0.0).backward()
    assert net.presence.bias.grad.item() > 0             # an empty target: presence down
    assert net.encoder[0].block[0].weight.grad.abs().sum() > 0
    assert net.head.weight.grad is None and net.decoder[0].up.weight.grad is None
    # the full loss: the ungated outputs train the segmentation as without the head
    net.zero_grad()
    plain.zero_grad()
    loss = compute_loss("bce+dice", net(x), target, presence_weight=0.0)
    without_gate = compute_loss("bce+dice", PresenceOutput(net(x).outputs, torch.zeros(3, 1)),
                                target, presence_weight=0.0)
    assert loss.item() > without_gate.item()             # the gated term is added
    loss.backward()
    compute_loss("bce+dice", plain(x), target).backward()
    torch.testing.assert_close(net.head.weight.grad, plain.head.weight.grad)


def test_unknown_presence_mode_or_a_mode_without_the_head_is_refused() -> None:
    with pytest.raises(UltrasegError, match="model.presence_mode must be one of 'gate', "):
        ModelConfig(variant="same", width=4, presence_head=True,
                    presence_mode="soft")  # type: ignore[arg-type]
    with pytest.raises(UltrasegError, match="unknown presence mode 'soft'"):
        build_model(_unchecked(ModelConfig(variant="same", width=4, presence_head=True),
                               presence_mode="soft"))
    with pytest.raises(UltrasegError, match="'classifier' needs the presence head"):
        build_model(ModelConfig(variant="same", width=4, presence_mode="classifier"))


# --- normalisation --------------------------------------------------------------------------


def test_instance_norm_scores_each_image_alone_in_training_and_prediction() -> None:
    torch.manual_seed(0)
    net = tiny("same", depth=2, norm="instance").train()
    x = torch.randn(3, 1, 32, 48)
    with torch.no_grad():
        together = net(x)
        alone = net(x[:1])
        net.eval()
        at_prediction = net(x)
    # no batch statistics and no running averages: other images and the mode change nothing
    torch.testing.assert_close(together[:1], alone)
    torch.testing.assert_close(together, at_prediction)
    batch = tiny("same", depth=2).train()
    with torch.no_grad():
        assert not torch.allclose(batch(x)[:1], batch(x[:1]))  # batch norm: the batch matters


def test_norm_layers_and_their_state() -> None:
    inst, batch = tiny("same", depth=2, norm="instance"), tiny("same", depth=2)
    assert any(isinstance(m, torch.nn.InstanceNorm2d) for m in inst.modules())
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in inst.modules())
    assert not any(k.endswith("running_mean") for k in inst.state_dict())
    assert sum(k.endswith("running_mean") for k in batch.state_dict()) == 10  # 2 per DoubleConv
    assert all(c.bias is None for c in inst.modules() if isinstance(c, torch.nn.Conv2d)
               and c.kernel_size == (3, 3))
    # the paper's valid network has no normalisation, and refuses to be given one
    assert not any(isinstance(m, (torch.nn.InstanceNorm2d, torch.nn.BatchNorm2d))
                   for m in tiny("valid", depth=2).modules())
    with pytest.raises(UltrasegError, match="instance normalisation needs the 'same' variant"):
        build_model(ModelConfig(variant="valid", width=4, norm="instance"))


def test_unknown_norm_is_refused() -> None:
    with pytest.raises(UltrasegError, match="model.norm must be one of 'batch', 'instance'"):
        ModelConfig(variant="same", width=4, norm="layer")  # type: ignore[arg-type]
    with pytest.raises(UltrasegError, match="unknown normalisation 'layer'"):
        build_model(_unchecked(ModelConfig(variant="same", width=4), norm="layer"))


def test_instance_norm_on_channels_last_maps_equals_torchs() -> None:
    from ultraseg.model.parts import InstanceNorm

    torch.manual_seed(0)
    ours, ref = InstanceNorm(8), torch.nn.InstanceNorm2d(8, affine=True)
    with torch.no_grad():
        ours.weight.uniform_(0.5, 1.5)
        ours.bias.uniform_(-0.5, 0.5)
    ref.load_state_dict(ours.state_dict())
    x = torch.randn(2, 8, 12, 10).contiguous(memory_format=torch.channels_last)
    a, b = x.clone().requires_grad_(), x.contiguous().requires_grad_()
    y, want = ours(a), ref(b)
    assert y.is_contiguous(memory_format=torch.channels_last)  # the memory format is kept
    torch.testing.assert_close(y, want)
    g = torch.randn_like(want)
    y.backward(g)
    want.backward(g)
    torch.testing.assert_close(a.grad, b.grad)
    torch.testing.assert_close(ours.weight.grad, ref.weight.grad)
    torch.testing.assert_close(ours.bias.grad, ref.bias.grad)


# --- residual blocks --------------------------------------------------------------------------
@pytest.mark.parametrize("variant", ["valid", "same"])
def test_residual_block_adds_its_cropped_input_before_the_last_relu(variant) -> None:
    """With both convolutions zeroed the block is ReLU(shortcut(cropped input)): the identity
    where the channels stay, a 1x1 convolution (and norm) where they change."""
    from ultraseg.model.parts import DoubleConv

    padding, norm = (0, None) if variant == "valid" else (1, "batch")
    torch.manual_seed(0)
    for c_in, c_out in ((6, 6), (3, 6)):
        block = DoubleConv(c_in, c_out, padding, norm, residual=True).eval()
        with torch.no_grad():
            for m in block.block:
                if isinstance(m, torch.nn.Conv2d):
                    m.weight.zero_()
                    if m.bias is not None:
                        m.bias.zero_()
        x = torch.randn(2, c_in, 12, 10)
        y = block(x)
        assert y.shape == (2, c_out, 12 - 4 + 4 * padding, 10 - 4 + 4 * padding)
        crop = center_crop(x, y.shape[-2], y.shape[-1])
        # the block ends in its second convolution's norm (or the convolution): the ReLU
        # comes after the sum (eval batch norm maps the zero map to its shift, 0 here)
        assert not isinstance(block.block[-1], torch.nn.ReLU)
        want = torch.relu(crop if c_in == c_out else block.shortcut(crop))
        torch.testing.assert_close(y, want)
        assert isinstance(block.shortcut, torch.nn.Identity) == (c_in == c_out)
        assert not hasattr(DoubleConv(c_in, c_out, padding, norm), "shortcut")  # plain: none


def _added_layers(plain: torch.nn.Module, other: torch.nn.Module, part: str, marker: str) -> int:
    """How many layers ``other`` adds to ``plain``: every added state-dict key must lie in
    ``part`` (encoder. / decoder.) under a ``marker`` module, and nothing of ``plain`` goes."""
    extra = set(other.state_dict()) - set(plain.state_dict())
    assert extra and all(k.startswith(part) and marker in k for k in extra), sorted(extra)
    assert set(plain.state_dict()) <= set(other.state_dict())
    return len({k.split(marker)[0] for k in extra})


@pytest.mark.parametrize("variant,size", [("valid", 188), ("same", 64)])
def test_residual_encoder_keeps_shapes_and_adds_shortcuts_to_the_encoder_only(variant,
                                                                               size) -> None:
    plain, res = tiny(variant), tiny(variant, block="residual")
    x = torch.randn(2, 1, size, size)
    assert res(x).shape == plain(x).shape
    # a 1x1 shortcut where each encoder level changes the channels (all five do), none in
    # the decoder
    assert _added_layers(plain, res, "encoder.", ".shortcut.") == 5


def test_unknown_block_is_refused() -> None:
    with pytest.raises(UltrasegError, match="model.block must be one of 'plain', 'residual'"):
        ModelConfig(variant="same", width=4, block="dense")  # type: ignore[arg-type]
    with pytest.raises(UltrasegError, match="unknown block 'dense'"):
        build_model(_unchecked(ModelConfig(variant="same", width=4), block="dense"))


# --- attention gates --------------------------------------------------------------------------
def test_attention_gate_scales_each_skip_pixel_by_its_weight() -> None:
    """out = skip * sigmoid(psi(relu(W_skip skip + W_up up))): with psi's weights zeroed the
    gate passes sigmoid(bias) of every feature, whatever the inputs; otherwise the weight
    follows both inputs, one per pixel, shared by the skip's channels."""
    from ultraseg.model.parts import AttentionGate

    torch.manual_seed(0)
    gate = AttentionGate(6, 6, 3).eval()
    skip, up = torch.randn(2, 6, 8, 10), torch.randn(2, 6, 8, 10)
    with torch.no_grad():
        a = torch.sigmoid(gate.psi(torch.relu(gate.w_skip(skip) + gate.w_up(up))))
        assert a.shape == (2, 1, 8, 10)
        torch.testing.assert_close(gate(skip, up), skip * a)
        # the decoder's features steer it: another `up`, other weights for the same skip
        assert not torch.allclose(gate(skip, up), gate(skip, torch.randn_like(up)))
        gate.psi.weight.zero_()
        gate.psi.bias.fill_(2.0)
        torch.testing.assert_close(gate(skip, up), skip * torch.sigmoid(torch.tensor(2.0)))
    with_norm = AttentionGate(6, 4, 3, norm="batch")
    assert isinstance(with_norm.w_skip[1], torch.nn.BatchNorm2d)
    assert with_norm.w_up[0].in_channels == 4 and with_norm.w_up[0].bias is None


@pytest.mark.parametrize("variant,size", [("valid", 188), ("same", 64)])
def test_attention_gates_every_skip_and_keeps_shapes(variant, size) -> None:
    plain, att = tiny(variant), tiny(variant, attention=True)
    x = torch.randn(2, 1, size, size)
    assert att(x).shape == plain(x).shape
    # one gate per decoder level (four), nothing else added
    assert _added_layers(plain, att, "decoder.", ".gate.") == 4
    # the gates are on the path: zeroing their output (a = 0) changes the prediction
    att.eval()
    with torch.no_grad():
        before = att(x)
        for up in att.decoder:
            up.gate.psi.bias.fill_(-1e4)
        assert not torch.allclose(before, att(x))


# --- dropout at the end of the contracting path --------------------------------------------
@pytest.mark.parametrize("variant,size", [("valid", 188), ("same", 64)])
def test_dropout_drops_the_deepest_two_levels_in_training_only(variant, size) -> None:
    plain, dropped = tiny(variant), tiny(variant, dropout=0.5)
    assert set(dropped.state_dict()) == set(plain.state_dict())   # no weights of its own
    x = torch.randn(2, 1, size, size)
    with torch.no_grad():
        torch.testing.assert_close(dropped(x), plain(x))           # prediction: nothing dropped
    seen: list[int] = []
    dropped.dropout.register_forward_hook(lambda m, args, out: seen.append(args[0].shape[1]))
    plain.train(), dropped.train()
    with torch.no_grad():
        torch.testing.assert_close(plain(x), plain(x))
        assert not torch.allclose(dropped(x), dropped(x))          # training: features dropped
    # on the 4th and 5th levels' features (32 and 64 channels at width 4), once per training pass
    assert seen == [32, 64] * 2


def test_dropout_outside_0_to_1_is_refused() -> None:
    for p in (-0.1, 1.0, float("nan")):     # (by the config, when built: before any model)
        with pytest.raises(UltrasegError, match=r"dropout \(--dropout\) must be a number in "
                                                r"\[0, 1\)"):
            build_model(ModelConfig(variant="same", width=4, dropout=p))


def test_deep_supervision_at_depth_1_is_refused() -> None:
    """--deep-supervision --depth 1 built no head at all and trained as without the flag,
    the run labelled deep-supervised."""
    from ultraseg.config import ModelConfig
    from ultraseg.errors import UltrasegError
    from ultraseg.model import build_model

    with pytest.raises(UltrasegError, match="deep supervision needs depth 2 or more"):
        build_model(ModelConfig(variant="same", depth=1, width=4, deep_supervision=True))
    build_model(ModelConfig(variant="same", depth=2, width=4, deep_supervision=True))


def test_models_built_in_two_threads_at_once_are_float32(monkeypatch) -> None:
    """build_model set float32 as torch's default dtype and put the caller's back, per call:
    two threads building at once put float64 back under each other, so a model was built in
    float64 (`mixed dtype` at prediction, a raw traceback) and the caller's dtype was lost."""
    import threading

    import ultraseg.model.unet as unet_module

    real = unet_module.UNet
    b_building, a_done = threading.Event(), threading.Event()

    def slow(cfg):
        if threading.current_thread().name == "A":
            model = real(cfg)
            assert b_building.wait(10)
            return model
        b_building.set()
        assert a_done.wait(10)
        return real(cfg)

    monkeypatch.setattr(unet_module, "UNet", slow)
    built = {}

    def build(name: str) -> None:
        built[name] = build_model(ModelConfig(variant="same", width=4, depth=2))
        if name == "A":
            a_done.set()

    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        threads = [threading.Thread(target=build, args=(n,), name=n) for n in ("A", "B")]
        for t in threads:
            t.start()
        for t in threads:
            t.join(20)
        assert torch.get_default_dtype() == torch.float64      # the caller's, back
    finally:
        torch.set_default_dtype(previous)
    assert {next(m.parameters()).dtype for m in built.values()} == {torch.float32}
