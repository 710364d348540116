"""The fast paths compute what the plain ones compute.

* rectangular prediction windows give what square ones give (same pooling grid, same context);
* the bf16 weight copy the torch backend runs equals bf16 autocast on the original model;
* bf16 and fp32 masks agree on real frames (Dice within 0.01);
* a torch.compile'd model gives the eager model's output.

Timings live in ``benchmarks/speed.py``; nothing here is timed.
"""
from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from conftest import shared_dataset

from ultraseg.config import ModelConfig, PreprocessConfig
from ultraseg.geometry import context_margin
from ultraseg.metrics import dice
from ultraseg.model import build_model
from ultraseg.predict import Predictor, prediction_tile, prediction_window
from ultraseg.runtime import cpu_has_bf16, low_precision_copy, torch_runner
from ultraseg.tiling import extract_tiles, plan_tiles, predict_tiled, stitch_tiles

CPU = torch.device("cpu")


def centre_crop(margin: int):
    def run(batch: np.ndarray) -> np.ndarray:
        return batch[:, :, margin: batch.shape[2] - margin, margin: batch.shape[3] - margin]

    return run


def tiny_valid(width: int = 4, depth: int = 2, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model(ModelConfig(width=width, depth=depth)).eval()


# --------------------------------------------------------------------------- rectangular tiles
def test_rectangular_plan_hand_computed():
    assert plan_tiles(10, 7, (4, 7)) == [(0, 0), (4, 0), (6, 0)]
    assert plan_tiles(5, 12, (5, 5)) == plan_tiles(5, 12, 5) == [(0, 0), (0, 5), (0, 7)]
    with pytest.raises(ValueError, match="pair"):
        plan_tiles(5, 5, (4, 0))


@pytest.mark.parametrize("shape", [(23, 41), (41, 23), (7, 30), (64, 64)])
@pytest.mark.parametrize("window", [(8, 20), (24, 6), (30, 50)])
def test_identity_network_with_rectangular_windows(shape, window):
    image = np.random.default_rng(0).random(shape, dtype=np.float32)
    got = predict_tiled(centre_crop(9), image, window, margin=9, batch_size=2)
    np.testing.assert_array_equal(got[0], image)
    tiles, plan = extract_tiles(image, window, 9)
    assert tiles.shape[-2:] == plan.in_shape == (window[0] + 18, window[1] + 18)
    with pytest.raises(ValueError, match=rf"\({len(plan.positions)}, C, {window[0]}, "):
        stitch_tiles(np.zeros((len(plan.positions), 1, window[1], window[0] + 1)), plan)


def test_prediction_window_covers_each_side():
    cfg = ModelConfig(width=64)
    assert prediction_window(cfg, 420, 580) == (420, 580)  # one 604 x 764 input window
    assert prediction_window(cfg, 256, 256) == (260, 260)
    assert prediction_window(cfg, 420, 580, tile=68) == (68, 68)
    assert prediction_window(cfg, 2000, 300) == (1012, 308)
    assert prediction_tile(cfg, 420, 580) == 580  # the square rule is kept


@pytest.mark.parametrize("shape", [(70, 110), (110, 70), (45, 60)])
def test_rectangular_window_prediction_equals_square(shape):
    model = tiny_valid()
    cfg = model.cfg
    image = np.random.default_rng(1).random(shape, dtype=np.float32)
    pred = Predictor(torch_runner(model, CPU, None), cfg, PreprocessConfig(size=None))
    rect = pred.proba_canvas(image[None])[0]
    side = prediction_tile(cfg, *shape)
    square = predict_tiled(pred._run, image, side, context_margin(cfg.depth))[0]
    assert prediction_window(cfg, *shape) != (side, side)
    np.testing.assert_allclose(rect, square, rtol=0, atol=1e-5)


# --------------------------------------------------------------------------- bf16 weights copy
@pytest.mark.parametrize("variant,norm", [("valid", "batch"), ("same", "batch"),
                                          ("same", "instance")])
def test_low_precision_copy_equals_autocast(variant, norm):
    torch.manual_seed(0)
    cfg = ModelConfig(variant=variant, width=8, depth=2, norm=norm)
    model = build_model(cfg)
    shape = (2, 1, 60, 76) if variant == "valid" else (2, 1, 32, 48)
    if variant == "same":  # batch-norm statistics that are not the identity
        with torch.no_grad():
            model.train()(torch.rand(*shape) * 3)
            for m in model.modules():  # instance norm: a learned scale and shift that are not
                if isinstance(m, torch.nn.InstanceNorm2d):  # the identity either
                    m.weight.uniform_(0.5, 1.5)
                    m.bias.uniform_(-0.2, 0.2)
    model.eval()
    x = torch.rand(*shape)
    with torch.inference_mode():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            want = model(x).float()
        lowered = low_precision_copy(model, torch.bfloat16)
        got = lowered(x.to(torch.bfloat16)).float()
    torch.testing.assert_close(got, want, rtol=1e-2, atol=1e-2)
    assert all(p.dtype == torch.float32 for p in model.parameters())  # original untouched
    assert lowered.head.weight.dtype == torch.bfloat16


def test_runner_lowering_the_models_own_weights_gives_the_same_output():
    """``copy_weights=False`` (a predictor's own model, built from a checkpoint) lowers the
    model's weights in place instead of holding an fp32 and a bf16 copy."""
    x = np.random.default_rng(3).random((2, 1, 60, 60), dtype=np.float32)
    want = torch_runner(tiny_valid(), CPU, torch.bfloat16)(x)
    model = tiny_valid()
    got = torch_runner(model, CPU, torch.bfloat16, copy_weights=False)(x)
    np.testing.assert_array_equal(got, want)
    assert model.head.weight.dtype == torch.bfloat16        # its own weights, lowered


def test_runner_snapshot_and_model_state():
    model = tiny_valid()
    model.train()
    run = torch_runner(model, CPU, torch.bfloat16)
    x = np.random.default_rng(2).random((1, 1, 60, 60), dtype=np.float32)
    before = run(x)
    assert before.dtype == np.float32 and before.shape == (1, 1, 20, 20)
    assert not model.training and model.head.weight.dtype == torch.float32
    with torch.no_grad():
        model.head.bias += 5.0  # later changes do not reach the runner (documented snapshot)
    np.testing.assert_array_equal(run(x), before)


# --------------------------------------------------------------------------- bf16 vs fp32, real
def _real_frames() -> tuple[list[np.ndarray], list[np.ndarray]]:
    from ultraseg.io.images import read_image
    from ultraseg.io.masks import read_mask

    kaggle = shared_dataset("kaggle_nerve_sample") / "train"
    images, masks = [], []
    for path in sorted(kaggle.glob("*.tif")):
        if not path.stem.endswith("_mask"):
            images.append(read_image(path))
            masks.append(read_mask(path.with_name(f"{path.stem}_mask.tif")) > 0)
    nerve = shared_dataset("nerve")
    for path in sorted((nerve / "images").glob("*.jpg"))[:3]:
        images.append(read_image(path))
        masks.append(read_mask(nerve / "masks" / f"{path.stem}_mask.jpg") > 0)
    return images, masks


@pytest.mark.realdata
def test_bf16_and_fp32_masks_agree_on_real_frames():
    """A random width-8 network with its head bias set so that 10 % of the fp32 pixels are
    foreground (unshifted, a random network's logits cluster at the threshold)."""
    images, truths = _real_frames()
    model = tiny_valid(width=8, depth=4, seed=3)
    pre = PreprocessConfig(size=None)
    fp32 = Predictor(torch_runner(model, CPU, None), model.cfg, pre)
    logits = np.concatenate([np.log(p / (1 - p)).ravel() for p in
                             (np.clip(fp32.predict_proba(im), 1e-7, 1 - 1e-7) for im in images)])
    with torch.no_grad():
        model.head.bias -= float(np.quantile(logits, 0.9))
    fp32 = Predictor(torch_runner(model, CPU, None), model.cfg, pre)
    bf16 = Predictor(torch_runner(model, CPU, torch.bfloat16), model.cfg, pre)
    for image, truth in zip(images, truths):
        m32, m16 = fp32.predict(image), bf16.predict(image)
        assert 0.02 < m32.mean() < 0.5, "the shifted bias should give a non-trivial mask"
        assert abs(dice(m16, truth) - dice(m32, truth)) <= 0.01
        assert dice(m16, m32) >= 0.95
    if not cpu_has_bf16():
        pytest.xfail("bf16 ran emulated: checked for correctness only, this CPU lacks bf16")


# --------------------------------------------------------------------------- torch.compile
@pytest.mark.slow
@pytest.mark.parametrize("dtype", [None, torch.bfloat16], ids=["fp32", "bf16"])
def test_compiled_runner_equals_eager(dtype):
    if not hasattr(torch, "compile"):
        pytest.skip("torch.compile unavailable in this torch build")
    if shutil.which("c++") is None and shutil.which("g++") is None:
        pytest.skip("torch.compile's inductor backend needs a C++ compiler; none on PATH")
    model = tiny_valid(width=4, depth=2)
    x = np.random.default_rng(3).random((2, 1, 60, 76), dtype=np.float32)
    want = torch_runner(model, CPU, dtype)(x)
    compiled = torch_runner(model, CPU, dtype, compile=True)
    got = compiled(x)
    tol = 1e-5 if dtype is None else 1e-2  # probabilities; bf16 kernels may be fused otherwise
    np.testing.assert_allclose(got, want, rtol=0, atol=tol)
    assert np.abs(got - 0.5).max() > 1e-3  # not a constant output
