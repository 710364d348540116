"""The contract every model variant keeps, run over the registry (model.unet.VARIANTS), so a
variant added there is checked without a test naming it: its forward shapes at two input
sizes, a checkpoint round trip, and validation leaving the model in the mode it was given.
Tiny widths and inputs: fast."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from ultraseg.checkpoint import build_from_checkpoint, load_checkpoint, make_meta, save_checkpoint
from ultraseg.config import (ModelConfig, PostprocessConfig, PreprocessConfig, RunConfig,
                             TrainConfig, choices)
from ultraseg.model import build_model, is_valid_input
from ultraseg.model.unet import VARIANTS
from ultraseg.train import validate

DEPTH = 1
#: Option sets each variant is checked with: the defaults, and the other encoder block with
#: attention gates on the skips.
OPTIONS = [{}, {"block": "residual", "attention": True}]


def _model_config(variant: str, **options) -> ModelConfig:
    """A tiny model of ``variant`` at DEPTH: width 2; a valid model's output tile the smallest
    even one (4: its training tile for validate's canvases of 16 px)."""
    return ModelConfig(variant=variant, width=2, depth=DEPTH, tile=4, **options)


def _sizes(net: torch.nn.Module) -> list[tuple[tuple[int, int], tuple[int, int]]]:
    """Two (input, output) sizes, one square and one not, that the model takes: its output is
    its input less its context margin on each side (0 for a padded model)."""
    def takes(s: int) -> bool:
        return is_valid_input(s, DEPTH) if net.margin else s % 2**DEPTH == 0

    sides = [s for s in range(2 * net.margin + 2, 2 * net.margin + 40) if takes(s)]
    pairs = [(sides[0], sides[0]), (sides[1], sides[3])]
    return [((h, w), (h - 2 * net.margin, w - 2 * net.margin)) for h, w in pairs]


def test_the_registry_s_variants_are_the_config_s() -> None:
    """The variants are listed twice, ModelConfig's Literal (the CLI's choices) and the
    model's registry: a variant added to one alone is refused or unbuildable."""
    assert set(VARIANTS) == set(choices(ModelConfig, "variant"))


@pytest.mark.parametrize("options", OPTIONS, ids=["plain", "residual-attention"])
@pytest.mark.parametrize("variant", VARIANTS)
def test_forward_gives_one_map_per_frame_of_the_variant_s_size(variant, options) -> None:
    torch.manual_seed(0)
    net = build_model(_model_config(variant, **options)).eval()
    for (h, w), (oh, ow) in _sizes(net):
        with torch.no_grad():
            out = net(torch.randn(2, 1, h, w))
        assert isinstance(out, torch.Tensor), type(out)
        assert out.shape == (2, 1, oh, ow) and out.dtype == torch.float32
        assert torch.isfinite(out).all()


@pytest.mark.parametrize("options", OPTIONS, ids=["plain", "residual-attention"])
@pytest.mark.parametrize("variant", VARIANTS)
def test_a_checkpoint_round_trips_to_the_same_outputs(tmp_path, variant, options) -> None:
    torch.manual_seed(0)
    cfg = _model_config(variant, **options)
    net = build_model(cfg)
    net.train()
    net(torch.randn(4, 1, *_sizes(net)[0][0]))   # (batch norm's running statistics move)
    net.eval()
    save_checkpoint(tmp_path / "m.ckpt", net.state_dict(),
                    make_meta(cfg, PreprocessConfig(size=16), PostprocessConfig()))
    ckpt = load_checkpoint(tmp_path / "m.ckpt")
    assert ckpt.model == cfg
    again = build_from_checkpoint(ckpt)
    assert not again.training
    x = torch.randn(2, 1, *_sizes(net)[1][0])
    with torch.no_grad():
        assert torch.equal(again(x), net(x))


@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("variant", VARIANTS)
def test_validation_leaves_the_model_in_the_mode_it_was_given(variant, mode) -> None:
    cfg = RunConfig(model=_model_config(variant), preprocess=PreprocessConfig(size=16),
                    train=TrainConfig(batch_size=2))
    net = build_model(cfg.model).train(mode == "train")
    frames = np.random.default_rng(0).integers(0, 256, (3, 16, 16), dtype=np.uint8)
    loss, dice = validate(net, frames, (frames > 128).astype(np.uint8), cfg,
                          torch.device("cpu"), None)
    assert np.isfinite(loss) and 0.0 <= dice <= 1.0
    assert all(m.training == (mode == "train") for m in net.modules())
