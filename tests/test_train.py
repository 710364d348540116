"""Training: the end-to-end CPU run (the model learns), the run folder, the valid model's
training-tile geometry, and the run's own records (config, split, metrics, log)."""
from __future__ import annotations

import base64
import contextlib
import csv
import html
import io
import json
import logging
import math
import re
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ultraseg import cli, report
from ultraseg.checkpoint import load_checkpoint
from ultraseg.config import (DataConfig, ModelConfig, PostprocessConfig, PreprocessConfig,
                             RunConfig, TrainConfig, merge, preset)
from ultraseg.data import Arrays, _held, few_subjects_note, few_validation_note
from ultraseg.errors import UltrasegError
from ultraseg.evaluate import evaluate
from ultraseg.phantom import make_dataset
from ultraseg.predict import load
from ultraseg.tiling import crop_with_context, extract_tiles, pad_for_tiles
from ultraseg.losses import compute_loss
from ultraseg.model import build_model
from ultraseg import budget, finish
from ultraseg import train as train_mod
from ultraseg.run_folder import RUN_FILES, run_log
from ultraseg.train import Batches, lr_at, training_layout, validate

# A tiny 'same' U-Net that learns the phantom's hypoechoic structures in ~15 s of CPU time.
# 96 px frames (at 64 px the structures are a few pixels wide and 20 subjects do not
# generalise to another seed); 200 frames = 20 subjects, 6 epochs of bce+dice with flips.
E2E_EPOCHS = 6
E2E_FLAGS = ["--model", "same", "--width", "8", "--depth", "3", "--size", "96",
             "--normalise", "zscore", "--epochs", str(E2E_EPOCHS), "--batch-size", "8",
             "--lr", "3e-3", "--loss", "bce+dice", "--augment", "flip", "--schedule", "cosine",
             "--seed", "0", "--device", "cpu", "--precision", "fp32", "--cache-dir", "",
             "--threads", "1"]


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("phantoms")
    return {"train": make_dataset(root / "train", n=200, size=96, seed=0),
            "unseen": make_dataset(root / "unseen", n=100, size=96, seed=1)}


@pytest.fixture(scope="module")
def e2e(phantoms, tmp_path_factory):
    """``ultraseg train`` on phantom frames through the CLI; (exit code, stdout, run folder)."""
    run = tmp_path_factory.mktemp("e2e") / "run"
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        rc = cli.main(["train", str(phantoms["train"]), "--out", str(run), *E2E_FLAGS])
    return rc, out.getvalue(), run


def _train_tiny(tmp_path: Path, run: Path, *flags: str) -> int:
    """``ultraseg train`` of a width-4 U-Net on 20 phantom frames of 32 px (made in
    ``tmp_path / "data"`` by the first call), one thread."""
    data = tmp_path / "data"
    if not data.exists():
        make_dataset(data, n=20, size=32, seed=3)
    return cli.main(["train", str(data), "--out", str(run), "--preset", "demo", "--width", "4",
                     "--depth", "2", "--size", "32", "--device", "cpu", "--precision", "fp32",
                     "--cache-dir", "", "--threads", "1", *flags])


# ------------------------------------------------------------------ end to end
@pytest.mark.slow
def test_e2e_train_then_evaluate_learns(e2e, phantoms, capsys) -> None:
    rc, _, run = e2e
    assert rc == 0
    capsys.readouterr()
    rc = cli.main(["evaluate", str(run / "best.ckpt"), str(phantoms["unseen"]), "--json",
                   "--device", "cpu"])  # no architecture flags: the checkpoint says it all
    out = capsys.readouterr().out
    assert rc == 0
    summary = json.loads(out)
    assert summary["n"] == 100
    # all-empty predictions score Dice 0 on every non-empty frame; a model that learned the
    # structures is far above that on frames of another seed it never saw
    assert summary["dice_nonempty_mean"] > 0.5, summary
    assert summary["raw"]["dice_nonempty_mean"] > 0.5, summary
    assert summary["empty_correct_rate"] is not None and summary["empty_correct_rate"] >= 0.5


@pytest.mark.slow
def test_e2e_run_folder_holds_every_file(e2e) -> None:
    rc, _, run = e2e
    assert rc == 0
    for name in RUN_FILES:
        assert (run / name).is_file() and (run / name).stat().st_size > 0, name
    assert not list(run.glob(".*.tmp")), "temporary files left behind"


@pytest.mark.slow
def test_e2e_config_is_the_resolved_human_readable_config(e2e, phantoms) -> None:
    _, _, run = e2e
    text = (run / "config.json").read_text()
    assert text.count("\n") > 20  # indented JSON, one key per line
    cfg = RunConfig.from_dict(json.loads(text))
    assert cfg.model == ModelConfig(variant="same", width=8, depth=3,
                                    tile=ModelConfig().tile, presence_head="auto")
    # the cpu preset's 'auto' presence head, decided by the training frames: a fifth of the
    # phantom's subjects have no structure, so the checkpoint holds a head
    best = load_checkpoint(run / "best.ckpt")
    assert best.model.presence_head is True and "presence.weight" in best.state_dict
    assert "presence head: on" in (run / "train.log").read_text()
    assert (cfg.preprocess.size, cfg.preprocess.normalise) == (96, "zscore")
    t = cfg.train
    assert (t.epochs, t.batch_size, t.lr, t.loss, t.augment, t.schedule) == \
        (E2E_EPOCHS, 8, 3e-3, "bce+dice", "flip", "cosine")
    assert Path(cfg.data.path) == phantoms["train"]


@pytest.mark.slow
def test_e2e_split_is_by_subject(e2e) -> None:
    _, _, run = e2e
    split = json.loads((run / "split.json").read_text())
    assert len(split["train"]) + len(split["val"]) + len(split.get("test", [])) == 200
    assert len(split["val"]) == 40  # 20 % of 20 subjects of 10 frames
    subject = lambda name: name.split("_")[0]  # noqa: E731  (phantom names: SUBJECT_FRAME)
    assert not {subject(n) for n in split["train"]} & {subject(n) for n in split["val"]}
    assert sorted({subject(n) for n in split["val"]}) == sorted(split["val_subjects"])


@pytest.mark.slow
def test_e2e_metrics_one_row_per_epoch_and_log(e2e) -> None:
    _, stdout, run = e2e
    with open(run / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in rows] == list(range(1, E2E_EPOCHS + 1))
    for r in rows:
        for key in ("train_loss", "val_loss", "val_dice"):
            assert np.isfinite(float(r[key])), (key, r)
        assert 0 <= float(r["val_dice"]) <= 1
        assert r["complete"] == "True"
    assert float(rows[-1]["train_loss"]) < float(rows[0]["train_loss"])  # it trained
    # cosine schedule: the learning rate falls over the run
    lrs = [float(r["lr"]) for r in rows]
    assert lrs == sorted(lrs, reverse=True) and lrs[-1] < 0.5 * 3e-3
    # one line per epoch on stdout with train loss, validation loss and validation Dice
    lines = [ln for ln in stdout.splitlines() if ln.startswith("epoch ")]
    assert len(lines) == E2E_EPOCHS
    assert all("train loss" in ln and "val loss" in ln and "val Dice" in ln for ln in lines)
    assert "best.ckpt" in stdout and "report.html" in stdout
    log = (run / "train.log").read_text()
    assert "epoch 1:" in log and f"epoch {E2E_EPOCHS}:" in log


@pytest.mark.slow
def test_e2e_best_checkpoint_matches_metrics(e2e) -> None:
    _, _, run = e2e
    with open(run / "metrics.csv", newline="") as f:
        dices = [float(r["val_dice"]) for r in csv.DictReader(f)]
    best = load_checkpoint(run / "best.ckpt")
    last = load_checkpoint(run / "last.ckpt")
    m = best.meta["metrics"]
    assert m["best_epoch"] == int(np.argmax(dices)) + 1
    assert m["best_val_dice"] == pytest.approx(max(dices), abs=1e-6)
    assert m["stopped"] is None
    assert last.train_state["epoch"] == E2E_EPOCHS
    assert best.model.variant == "same" and best.preprocess.size == 96


@pytest.mark.slow
def test_e2e_tuned_val_dice_is_what_the_checkpoint_predicts(e2e, phantoms) -> None:
    """The post-processing chosen on validation (test-time augmentation included) is the one
    the checkpoint applies: evaluating it on the validation side of its split reproduces the
    validation Dice it was chosen for."""
    from ultraseg.evaluate import evaluate

    _, _, run = e2e
    best = load_checkpoint(run / "best.ckpt")
    assert set(best.postprocess.to_dict()) >= {"threshold", "min_peak", "tta"}
    predictor = load(run / "best.ckpt", device="cpu", precision="fp32")
    assert predictor.uses_tta == best.postprocess.tta
    summary, _ = evaluate(predictor, phantoms["train"], "folders", split_file=run / "split.json",
                          subset="val")
    assert summary["postprocess"]["tta"] == best.postprocess.tta
    assert summary["dice_mean"] == pytest.approx(
        best.meta["metrics"]["val_dice_postprocessed"], abs=1e-3)


@pytest.mark.slow
def test_e2e_pictures_and_report(e2e) -> None:
    _, _, run = e2e
    for name in ("curve.png", "sample.png", "seg_sample.png"):
        with Image.open(run / name) as im:
            assert im.format == "PNG" and min(im.size) > 50
    html = (run / "report.html").read_text()
    assert html.lstrip().lower().startswith("<!doctype html") or "<html" in html.lower()
    for name in ("curve.png", "sample.png", "seg_sample.png"):   # each file itself, inline
        assert base64.b64encode((run / name).read_bytes()).decode("ascii") in html, name
    assert "best epoch" in html.lower()


@pytest.mark.slow
def test_e2e_prediction_has_the_original_size(e2e, phantoms) -> None:
    _, _, run = e2e
    predictor = load(run / "best.ckpt", device="cpu")
    image = np.asarray(Image.open(next((phantoms["unseen"] / "images").glob("*.png"))))
    wide = np.pad(image, ((0, 0), (0, 41)), mode="edge")  # not square, not the working size
    mask = predictor.predict(wide)
    assert mask.shape == wide.shape and mask.dtype == bool


# ------------------------------------------------------------------ the valid model
def test_valid_model_run_completes(tmp_path) -> None:
    data = make_dataset(tmp_path / "data", n=20, size=32, seed=3)
    run = tmp_path / "run"
    rc = cli.main(["train", str(data), "--out", str(run), "--preset", "seed", "--width", "4",
                   "--depth", "2", "--tile", "20", "--size", "32", "--epochs", "2",
                   "--batch-size", "4", "--tiles-per-image", "2", "--device", "cpu",
                   "--precision", "fp32", "--cache-dir", "", "--threads", "1",
                   "--augment", "strong"])
    assert rc == 0
    # the target is the input's centre: geometric warps are skipped, and the run says so
    assert "warps are not applied" in (run / "train.log").read_text()
    for name in RUN_FILES:
        assert (run / name).is_file(), name
    ckpt = load_checkpoint(run / "best.ckpt")
    assert (ckpt.model.variant, ckpt.model.width, ckpt.model.depth, ckpt.model.tile) == \
        ("valid", 4, 2, 20)
    with open(run / "metrics.csv", newline="") as f:
        assert len(list(csv.DictReader(f))) == 2
    # whole images are predicted by tiling: every pixel of a frame of any size gets a value
    predictor = load(run / "best.ckpt", device="cpu")
    prob = predictor.predict_proba(np.full((37, 61), 90, np.uint8))
    assert prob.shape == (37, 61) and np.isfinite(prob).all()
    assert ((prob >= 0) & (prob <= 1)).all()


def test_a_run_trains_alike_in_either_layout(tmp_path, monkeypatch) -> None:
    """Whichever layout training_layout picks, the run trains its weights in that layout and
    learns the same thing (to fp32 rounding): the layout is speed, not results. Adam divides
    each step by the root of its weight's squared-gradient average, so a weight whose gradient
    is near zero can step by up to the learning rate (the cpu preset's 2e-3) on a rounding
    difference between the layouts' convolutions: a few weights in a thousand may differ by
    that much, the rest agree to rounding."""
    data = make_dataset(tmp_path / "data", n=20, size=32, seed=3)
    states = []
    real_step = train_mod.optimizer_step
    for layout in (torch.contiguous_format, torch.channels_last):
        monkeypatch.setattr(train_mod, "training_layout", lambda *a, _l=layout, **k: _l)
        kept = []  # every step, the second epoch's after validation too, in the chosen layout

        def step(optimizer, loss, _l=layout, _kept=kept):
            _kept.append(all(p.is_contiguous(memory_format=_l) for g in optimizer.param_groups
                             for p in g["params"] if p.dim() == 4))
            real_step(optimizer, loss)

        monkeypatch.setattr(train_mod, "optimizer_step", step)
        run = tmp_path / f"run-{layout}"
        rc = cli.main(["train", str(data), "--out", str(run), "--model", "same", "--width",
                       "4", "--depth", "2", "--size", "32", "--epochs", "2", "--batch-size",
                       "4", "--device", "cpu", "--precision", "fp32", "--cache-dir", "",
                       "--threads", "1", "--seed", "0"])
        assert rc == 0
        assert len(kept) >= 2 and len(kept) % 2 == 0 and all(kept)  # two epochs alike
        states.append(load_checkpoint(run / "best.ckpt").state_dict)
    torch.manual_seed(0)  # as training seeds its initial weights
    initial = build_model(ModelConfig(variant="same", width=4, depth=2)).state_dict()
    for key, value in states[0].items():
        other = states[1][key]
        if not value.is_floating_point():
            assert torch.equal(value, other), key
            continue
        close = torch.isclose(value, other, rtol=1e-3, atol=1e-4)
        assert close.float().mean() >= 0.99, (key, int((~close).sum()), value.numel())
        assert float((value - other).abs().max()) <= 2 * 2e-3, key     # two Adam steps at most
    assert any(not torch.equal(states[0][k], initial[k]) for k in initial)  # it trained


@pytest.mark.parametrize("avx512", [False, True])
def test_training_layout_is_contiguous_for_fp32_on_a_cpu_without_avx512_only(monkeypatch,
                                                                           avx512) -> None:
    monkeypatch.setattr(train_mod, "cpu_has_avx512", lambda: avx512)
    cpu = torch.device("cpu")
    fp32 = torch.channels_last if avx512 else torch.contiguous_format
    assert training_layout(cpu, None) == fp32
    assert training_layout(cpu, torch.bfloat16) == torch.channels_last
    assert training_layout(torch.device("cuda"), None) == torch.channels_last
    assert training_layout(torch.device("cuda"), torch.bfloat16) == torch.channels_last


def test_no_validation_split_keeps_the_last_epoch(tmp_path, capsys) -> None:
    """--val-fraction 0: every frame trains, each epoch's weights become best.ckpt, the
    post-processing stays at its defaults, and the run says there is no validation Dice.
    metrics.csv's validation cells are empty, as the other tables write an undefined value
    (they held the text nan)."""
    run = tmp_path / "run"
    rc = _train_tiny(tmp_path, run, "--epochs", "2", "--val-fraction", "0")
    out = capsys.readouterr().out
    assert rc == 0
    assert "last epoch 2 kept (no validation split" in out and "val Dice" not in out
    log = (run / "train.log").read_text()
    assert "epoch 2: train loss" in log and "nan" not in log
    with open(run / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["epoch"], r["val_loss"], r["val_dice"]) for r in rows] == [("1", "", ""),
                                                                          ("2", "", "")]
    assert all(float(r["train_loss"]) > 0 and float(r["lr"]) > 0 for r in rows)
    split = json.loads((run / "split.json").read_text())
    assert split["val"] == [] and len(split["train"]) == 20
    best, last = load_checkpoint(run / "best.ckpt"), load_checkpoint(run / "last.ckpt")
    assert best.meta["metrics"]["best_epoch"] == 2
    assert best.meta["metrics"]["best_val_dice"] is None
    assert best.meta["metrics"]["val_dice_postprocessed"] is None
    assert all(torch.equal(best.state_dict[k], last.state_dict[k]) for k in last.state_dict)
    assert best.postprocess == PostprocessConfig()
    assert not (run / "seg_sample.png").exists()
    assert "no validation split" in (run / "report.html").read_text()
    # the curve's caption says what it shows, the training loss alone (it named the
    # validation loss and Dice and a starred epoch), and says so again when written again
    page = (run / "report.html").read_text()
    said = page.split("<figcaption>curve.png: ")[1].split("</figcaption>")[0]
    assert "validation Dice" not in said and "starred" not in said, said
    assert said == html.escape(report.CAPTIONS_NO_VALIDATION["curve.png"])
    (run / "report.html").unlink()                  # stopped while it was written
    train_mod.train(None, run, resume=True)
    assert f"<figcaption>curve.png: {said}</figcaption>" in (run / "report.html").read_text()
    prob = load(run / "best.ckpt", device="cpu").predict_proba(np.full((40, 50), 90, np.uint8))
    assert prob.shape == (40, 50) and np.isfinite(prob).all()


@pytest.mark.parametrize("model", [["--model", "same"], ["--model", "valid", "--tile", "20"]],
                         ids=["same", "valid"])
def test_a_run_with_cutmix_mixes_its_batches_and_trains(tmp_path, monkeypatch, model) -> None:
    """--cutmix 1: every training batch goes through augment.cutmix with p = 1 after the
    augmentation (the valid model's tiles too: the box is mapped to the input), and the run
    trains an epoch with a finite loss; the run's config records the setting."""
    seen: list[tuple[float, bool]] = []
    real = train_mod.cutmix

    def spy(x, y, p, g):
        xa, ya = real(x, y, p, g)
        seen.append((p, not torch.equal(xa, x) and xa.shape == x.shape and ya.shape == y.shape))
        return xa, ya

    monkeypatch.setattr(train_mod, "cutmix", spy)
    run = tmp_path / "run"
    assert _train_tiny(tmp_path, run, *model, "--epochs", "1", "--batch-size", "4",
                       "--cutmix", "1") == 0
    assert seen and all(p == 1.0 for p, _ in seen) and any(changed for _, changed in seen)
    with open(run / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 1 and math.isfinite(float(rows[0]["train_loss"]))
    assert json.loads((run / "config.json").read_text())["train"]["cutmix"] == 1.0


def test_valid_model_refuses_a_size_below_the_tile(tmp_path, capsys) -> None:
    data = make_dataset(tmp_path / "data", n=20, size=32, seed=3)
    rc = cli.main(["train", str(data), "--out", str(tmp_path / "run"), "--preset", "seed",
                   "--width", "4", "--depth", "2", "--tile", "36", "--size", "32",
                   "--epochs", "1", "--device", "cpu", "--cache-dir", ""])
    assert rc == 2
    err = capsys.readouterr().err
    assert "36" in err and "32" in err


# ------------------------------------------------------------------ training-tile geometry
def _cfg(variant: str = "valid", depth: int = 1, tile: int = 4, size: int = 16,
         batch_size: int = 3, per: int = 1, normalise: str = "unit") -> RunConfig:
    return RunConfig(model=ModelConfig(variant=variant, width=4, depth=depth, tile=tile),
                     preprocess=PreprocessConfig(size=size, normalise=normalise),
                     train=TrainConfig(batch_size=batch_size, tiles_per_image=per))


def _validated(**train) -> tuple[float, torch.Tensor, torch.Tensor]:
    """validate()'s loss on five random frames (frame 3 empty), and the logits and targets
    it scored, for the loss to be recomputed from."""
    from ultraseg.predict import Predictor
    from ultraseg.runtime import torch_runner
    torch.manual_seed(0)
    cfg = RunConfig(model=ModelConfig(variant="same", width=4, depth=1),
                    preprocess=PreprocessConfig(size=16),
                    train=TrainConfig(batch_size=2, loss="bce+dice", **train))
    model = build_model(cfg.model).eval()
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (5, 16, 16), dtype=np.uint8)
    masks = (rng.random((5, 16, 16)) > 0.7).astype(np.uint8)
    masks[3] = 0
    loss, _ = validate(model, frames, masks, cfg, torch.device("cpu"), None)
    probs = Predictor(torch_runner(model, torch.device("cpu"), None), cfg.model,
                      cfg.preprocess).proba_canvas(frames.astype(np.float32) / 255)
    logits = torch.logit(torch.from_numpy(probs).clamp(1e-6, 1 - 1e-6).unsqueeze(1))
    return loss, logits, torch.from_numpy(masks).float().unsqueeze(1)


@pytest.mark.parametrize("batch_dice", [False, True])
def test_validation_loss_pools_the_dice_as_training_does(batch_dice) -> None:
    loss, logits, target = _validated(batch_dice=batch_dice)
    if batch_dice:  # training-sized groups (2, 2, 1), each weighted by its frames
        want = sum(n * float(compute_loss("bce+dice", logits[i:i + n], target[i:i + n],
                                          batch_dice=True))
                   for i, n in ((0, 2), (2, 2), (4, 1))) / 5
    else:           # per-frame Dice: the mean over all frames at once
        want = float(compute_loss("bce+dice", logits, target))
    assert loss == pytest.approx(want, rel=1e-6)
    pooled = float(compute_loss("bce+dice", logits, target, batch_dice=not batch_dice))
    assert loss != pytest.approx(pooled, rel=1e-3)


def test_validation_loss_leaves_empty_frames_out_of_the_dice_as_training_does() -> None:
    loss, logits, target = _validated(dice_skip_empty=True)
    assert loss == pytest.approx(float(compute_loss("bce+dice", logits, target,
                                                    dice_skip_empty=True)), rel=1e-6)
    assert loss != pytest.approx(float(compute_loss("bce+dice", logits, target)), rel=1e-3)


def _all_at_once(model, frames, masks, cfg, device, dtype) -> tuple[float, float]:
    """validate()'s figures by their definition, over every validation frame at once: the
    probabilities of all the canvases, the loss over all of them (a batch Dice pooled over
    training-sized groups, as training pools it) and the mean Dice (empty rule)."""
    from ultraseg.metrics import dice
    from ultraseg.predict import Predictor
    from ultraseg.preprocess import normalise
    from ultraseg.runtime import torch_runner
    canvases = (np.stack([normalise(f, cfg.preprocess.normalise) for f in frames])
                if frames.dtype == np.uint8 else frames)
    probs = Predictor(torch_runner(model, device, dtype), cfg.model, cfg.preprocess,
                      batch_size=cfg.train.batch_size).proba_canvas(canvases)
    logits = torch.logit(torch.from_numpy(probs).clamp(1e-6, 1 - 1e-6).unsqueeze(1))
    target = torch.from_numpy(masks).float().unsqueeze(1)
    t = cfg.train
    step = t.batch_size if t.batch_dice else len(frames)
    loss = sum(len(lg) * float(compute_loss(t.loss, lg, tg, batch_dice=t.batch_dice,
                                            dice_skip_empty=t.dice_skip_empty))
               for lg, tg in zip(logits.split(step), target.split(step))) / len(frames)
    return loss, float(np.mean([dice(p >= 0.5, m > 0) for p, m in zip(probs, masks)]))


@pytest.mark.parametrize("flags", [
    ("--loss", "bce+dice"),
    ("--loss", "bce+dice", "--batch-dice", "--dice-skip-empty", "--normalise", "zscore"),
    ("--loss", "dice", "--dice-skip-empty", "--ema-decay", "0.5", "--presence-head"),
    ("--loss", "bce+dice", "--deep-supervision"),
    ("--model", "valid", "--tile", "20", "--tiles-per-image", "2", "--loss", "bce+dice",
     "--batch-dice")], ids=["plain", "batch-dice-zscore", "ema-presence", "deep", "valid"])
def test_validation_scores_every_frame_as_all_of_them_at_once(tmp_path, monkeypatch,
                                                              flags) -> None:
    """Each epoch's validation loss and Dice are those of every validation frame scored at
    once (7 frames in batches of 3, so the last batch is short), whatever the loss, the
    normalisation, the EMA, the presence head, deep supervision or the variant; the run's
    metrics.csv and chosen epoch record them."""
    real = train_mod.validate
    seen = []

    def validate(model, frames, masks, cfg, device, dtype, *rest):
        want = _all_at_once(model, frames, masks, cfg, device, dtype)
        got = real(model, frames, masks, cfg, device, dtype, *rest)
        seen.append((len(frames), got[:2], want))
        return got

    monkeypatch.setattr(train_mod, "validate", validate)
    run = tmp_path / "run"
    assert _train_tiny(tmp_path, run, "--model", "same", "--epochs", "2", "--batch-size", "3",
                       "--val-fraction", "0.35", "--seed", "1", *flags) == 0
    assert len(seen) == 2 and seen[0][0] % 3, seen   # a short last batch
    with open(run / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    for (_, (loss, score), (want_loss, want_score)), row in zip(seen, rows):
        assert loss == pytest.approx(want_loss, rel=1e-5, abs=1e-7)
        assert score == pytest.approx(want_score, rel=1e-5, abs=1e-7)
        assert float(row["val_loss"]) == pytest.approx(want_loss, rel=1e-5, abs=1e-7)
        assert float(row["val_dice"]) == pytest.approx(want_score, rel=1e-5, abs=1e-7)
    scores = [want for _, _, (_, want) in seen]
    best = load_checkpoint(run / "best.ckpt").meta["metrics"]["best_epoch"]
    assert best == 1 + int(np.argmax(scores)) or max(scores) - min(scores) < 1e-6


def test_validation_takes_the_cached_uint8_frames_and_scores_a_batch_at_a_time(
        tmp_path, monkeypatch) -> None:
    """Training kept a float32 copy of every validation canvas for the whole run, and
    validation asked for the probabilities of all its frames at once, then took their
    logits and the float targets whole: ~1.3 MB a validation frame at --size 192 (5.8 GB
    for 4000). Now validation gets the uint8 frames the cache holds and asks the model for
    one batch of them at a time, normalised as they go."""
    from ultraseg.predict import Predictor
    real_validate, real_proba = train_mod.validate, Predictor.proba_canvas
    handed, asked, inside = [], [], []

    def validate(model, frames, *rest):
        handed.append((frames.dtype, len(frames)))
        inside.append(1)
        try:
            return real_validate(model, frames, *rest)
        finally:
            inside.pop()

    def proba_canvas(self, canvases):
        if inside:
            asked.append(len(canvases))
        return real_proba(self, canvases)

    monkeypatch.setattr(train_mod, "validate", validate)
    monkeypatch.setattr(Predictor, "proba_canvas", proba_canvas)
    run = tmp_path / "run"
    assert _train_tiny(tmp_path, run, "--model", "same", "--epochs", "1", "--batch-size", "3",
                       "--val-fraction", "0.35", "--seed", "1") == 0
    n_val = len(json.loads((run / "split.json").read_text())["val"])
    assert handed == [(np.uint8, n_val)] and n_val > 3
    assert sum(asked) == n_val and max(asked) <= 3, asked


@pytest.mark.parametrize("mode", ["train", "eval", "mixed"])
def test_validate_leaves_the_caller_s_model_in_the_mode_it_was_given(mode) -> None:
    """A caller validating inside their own loop keeps training with BatchNorm in train
    mode: validate() scored in eval mode and left the model there (a design review, A1).
    Each module's own flag comes back (a frozen BatchNorm in a training model too)."""
    cfg = RunConfig(model=ModelConfig(variant="same", width=2, depth=1),
                    preprocess=PreprocessConfig(size=16), train=TrainConfig(batch_size=2))
    model = build_model(cfg.model).train(mode != "eval")
    if mode == "mixed":
        next(m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)).eval()
    before = [m.training for m in model.modules()]
    frames = np.zeros((3, 16, 16), np.uint8)
    validate(model, frames, frames.copy(), cfg, torch.device("cpu"), None)
    assert [m.training for m in model.modules()] == before


def _position_arrays(size: int = 16) -> Arrays:
    """Two images whose every pixel value is unique and says where it is: image 0 holds
    y * size + x, image 1 holds 255 - (y * size + x). Masks: random bits, so any shift of the
    target against the input shows."""
    pos = np.arange(size * size, dtype=np.uint8).reshape(size, size)
    images = np.stack([pos, 255 - pos])
    masks = np.random.default_rng(0).integers(0, 2, (2, size, size)).astype(np.uint8)
    return Arrays(images, masks, ("a", "b"), ("s1", "s2"))


def _locate(crop: np.ndarray, arrays: Arrays, t: int) -> tuple[int, int, int]:
    """(image, y, x) of the window whose pixels are ``crop`` (t x t uint8)."""
    size = arrays.images.shape[-1]
    hits = [(k, y, x) for k in range(len(arrays.images))
            for y in range(size - t + 1) for x in range(size - t + 1)
            if np.array_equal(arrays.images[k, y:y + t, x:x + t], crop)]
    assert len(hits) == 1, hits
    return hits[0]


def test_valid_tiles_target_is_the_mask_under_the_output_window() -> None:
    arrays = _position_arrays()
    cfg = _cfg(depth=1, tile=4, per=20)
    m, t = 8, 4  # context_margin(1) = 6 * 2 - 4 = 8
    batches = Batches(arrays, np.array([0, 1]), cfg)
    assert len(batches) == 14  # ceil(2 images * 20 tiles / batch 3)
    seen, border = set(), 0
    for x, y in batches.epoch(np.random.default_rng(0)):
        assert x.shape[1:] == (1, t + 2 * m, t + 2 * m) and y.shape[1:] == (1, t, t)
        for xi, yi in zip(x.numpy()[:, 0], y.numpy()[:, 0]):
            pixels = np.rint(xi * 255).astype(np.uint8)  # 'unit' normalisation is x / 255
            k, r, c = _locate(pixels[m:m + t, m:m + t], arrays, t)  # the input's centre crop
            seen.add((k, r, c))
            # the target is exactly the mask under that output window
            assert np.array_equal(yi, arrays.masks[k, r:r + t, c:c + t])
            # the input is that window plus the margin of context, mirrored at the border,
            # exactly as prediction cuts it (tiling.crop_with_context)
            want = crop_with_context(pad_for_tiles(arrays.images[k], m), r, c, t, m)
            assert np.array_equal(pixels, want)
            if r == 0:  # mirrored context above the image: row m - j is image row j
                border += 1
                for j in range(1, m + 1):
                    assert np.array_equal(pixels[m - j, m:m + t], arrays.images[k, j, c:c + t])
            if c == 0:  # mirrored context left of the image: column m - j is image column j
                border += 1
                for j in range(1, m + 1):
                    assert np.array_equal(pixels[m:m + t, m - j], arrays.images[k, r:r + t, j])
    assert len(seen) > 8  # windows are drawn at random positions
    assert border > 0


def test_valid_tile_covering_the_whole_canvas_is_the_prediction_tile() -> None:
    # size == tile: the only window is the whole canvas, so training sees exactly the input
    # that prediction builds for that canvas, its border context mirrored on all four sides
    arrays = _position_arrays()
    m, t = 8, 16
    batches = Batches(arrays, np.array([1]), _cfg(depth=1, tile=t, batch_size=1))
    (x, y), = list(batches.epoch(np.random.default_rng(1)))
    pixels = np.rint(x.numpy()[0, 0] * 255).astype(np.uint8)
    tiles, plan = extract_tiles(arrays.images[1].astype(np.float32), t, m)
    assert plan.positions == ((0, 0),)
    assert np.array_equal(pixels, tiles[0, 0].astype(np.uint8))
    assert np.array_equal(y.numpy()[0, 0], arrays.masks[1])
    img = arrays.images[1]
    assert pixels[m, m] == img[0, 0] and pixels[m - 1, m] == img[1, 0]  # mirrored above
    assert pixels[m, m - 3] == img[0, 3]                                # mirrored left
    assert pixels[m + t, m + t] == img[t - 2, t - 2]                    # mirrored bottom-right


def test_a_marker_pixel_stays_aligned_with_its_target() -> None:
    # the issue's own example: a structure at a known position comes back at that position
    size, t, m = 24, 8, 8
    images = np.full((1, size, size), 40, np.uint8)
    masks = np.zeros((1, size, size), np.uint8)
    images[0, 2, 19] = 250
    masks[0, 2, 19] = 1
    batches = Batches(Arrays(images, masks, ("a",), ("s",)), np.array([0]),
                      _cfg(depth=1, tile=t, size=size, batch_size=16, per=64))
    hits = 0
    for x, y in batches.epoch(np.random.default_rng(2)):
        for xi, yi in zip(x.numpy()[:, 0], y.numpy()[:, 0]):
            centre = xi[m:m + t, m:m + t]
            assert np.array_equal(centre > 0.5, yi > 0)
            hits += int(yi.any())
    assert hits > 0


def test_training_batches_are_zscored_as_validation_and_prediction_canvases_are() -> None:
    """Training batches and the canvases validation and prediction normalise had two copies
    of the z-score, with different rules for a flat frame (std floored at 1e-6 / taken as 1).
    One rule now (preprocess.zscore_stats): each batch row is normalise(canvas, 'zscore')."""
    from ultraseg.preprocess import normalise, zscore_stats

    rng = np.random.default_rng(3)
    images = np.stack([rng.integers(0, 256, (16, 16), dtype=np.uint8),
                       np.full((16, 16), 77, np.uint8),                  # flat: std 0
                       rng.integers(100, 103, (16, 16), dtype=np.uint8)])
    arrays = Arrays(images, np.zeros_like(images), ("a", "b", "c"), ("s1", "s2", "s3"))
    index = np.arange(3)
    batches = Batches(arrays, index, _cfg("same", depth=2, batch_size=3, normalise="zscore"))
    mean, std = zscore_stats(images)
    assert mean.shape == std.shape == (3,) and std[1] == 1.0
    for _ in range(2):
        (x, _y), = list(batches.epoch(rng))
        seen = set()
        for xi in x.numpy()[:, 0]:
            k = next(k for k in index if np.allclose(xi, normalise(images[k], "zscore"),
                                                     atol=1e-6))
            np.testing.assert_array_equal(xi, normalise(images[k], "zscore"))
            seen.add(int(k))
        assert seen == {0, 1, 2}


def test_same_model_batches_are_whole_canvases_zscored() -> None:
    arrays = _position_arrays()
    batches = Batches(arrays, np.array([0, 1]), _cfg("same", depth=2, batch_size=2,
                                                     normalise="zscore"))
    (x, y), = list(batches.epoch(np.random.default_rng(0)))
    assert x.shape == (2, 1, 16, 16) and y.shape == (2, 1, 16, 16)
    for xi, yi in zip(x.numpy()[:, 0], y.numpy()[:, 0]):
        assert abs(float(xi.mean())) < 1e-4 and abs(float(xi.std()) - 1) < 1e-3
        k = 0 if xi[0, 1] > xi[0, 0] else 1  # image 0 increases along a row, image 1 falls
        assert np.array_equal(yi, arrays.masks[k])


def test_same_model_refuses_a_size_it_cannot_take() -> None:
    arrays = _position_arrays(size=20)
    with pytest.raises(UltrasegError, match=r"--size\) 24"):
        Batches(arrays, np.array([0]), _cfg("same", depth=3, size=20))


def test_batches_are_reproducible_from_the_generator() -> None:
    arrays = _position_arrays()
    batches = Batches(arrays, np.array([0, 1]), _cfg(per=5))
    a = [x.numpy() for x, _ in batches.epoch(np.random.default_rng([0, 1]))]
    b = [x.numpy() for x, _ in batches.epoch(np.random.default_rng([0, 1]))]
    c = [x.numpy() for x, _ in batches.epoch(np.random.default_rng([0, 2]))]
    assert all(np.array_equal(p, q) for p, q in zip(a, b))
    assert not all(np.array_equal(p, q) for p, q in zip(a, c))


def _train_clock(monkeypatch, monotonic: Callable[[], float]) -> None:
    """Give train's time limits the simulated clock ``monotonic``: ``time`` in each module
    that reads the clock for them (the loop, its time budget, the end of the run)."""
    from types import SimpleNamespace

    for module in (train_mod, budget, finish):
        monkeypatch.setattr(module, "time", SimpleNamespace(monotonic=monotonic))


def _slow_metrics_writes(monkeypatch, seconds: float) -> None:
    """Each epoch's metrics write takes ``seconds`` on a simulated clock (:func:`_train_clock`;
    the training itself a fraction of a second): an epoch's time as the time limit sees it."""
    extra = [0.0]   # simulated seconds spent writing, so far
    _train_clock(monkeypatch, lambda: time.monotonic() + extra[0])
    real_write = train_mod._write_metrics

    def slow_write(*args, **kwargs):
        extra[0] += seconds
        return real_write(*args, **kwargs)

    monkeypatch.setattr(train_mod, "_write_metrics", slow_write)


def test_lr_schedule() -> None:
    cfg = _cfg()
    assert lr_at(0.0, cfg) == lr_at(0.7, cfg) == cfg.train.lr
    cos = RunConfig(train=TrainConfig(lr=1e-2, schedule="cosine"))
    assert lr_at(0.0, cos) == pytest.approx(1e-2)
    assert lr_at(1.0, cos) == pytest.approx(1e-4)            # decays to 1 % of lr
    assert lr_at(0.5, cos) == pytest.approx(1e-2 * (0.01 + 0.99 * 0.5))


def test_horizon_counts_the_epochs_that_still_fit_at_the_measured_pace(monkeypatch) -> None:
    """The cosine spans the epochs done plus those the time left holds (less the reserve for
    the last validation and the report: 2.5 validations + 60 s), at least 2, at most --epochs;
    without a time limit, --epochs."""
    from types import SimpleNamespace

    from ultraseg.distributed import Dist

    monkeypatch.setattr(budget, "time", SimpleNamespace(monotonic=lambda: 1000.0))
    cpu = torch.device("cpu")

    def horizon(epochs, done, epoch_s, deadline, val_s=2.0):
        return budget._horizon(epochs, done, epoch_s, deadline, val_s, Dist(), cpu)

    assert horizon(50, 1, 10.0, float("inf")) == 50.0
    # 2000 s left, 65 s reserved: a slow first epoch (141 s) fits 13 more, the pace of the
    # second (100 s) 19 more
    assert horizon(50, 1, 141.0, 3000.0) == 1 + 13
    assert horizon(50, 2, 100.0, 3000.0) == 2 + 19
    assert horizon(8, 2, 100.0, 3000.0) == 8.0
    assert horizon(50, 1, 500.0, 1100.0) == 2.0


def test_the_reserve_is_at_most_a_quarter_of_a_short_limit() -> None:
    """60 s (and 2.5 validations) of a 20-minute limit; a quarter of a 1-minute one, which kept
    all of it back before (the demo at --minutes 1 trained one batch)."""
    assert budget._reserve(2.0, 1200.0) == 65.0
    assert budget._reserve(2.0, 60.0) == 20.0
    assert budget._reserve(2.0) == 65.0


def test_a_short_limit_is_mostly_spent_training(tmp_path) -> None:
    """--time-limit 20s on frames that take far less to validate and tune: training stops
    about a quarter of the limit before it, not after the first batch (the 60 s reserve)."""
    data = make_dataset(tmp_path / "data", n=40, size=32, seed=3)
    run = tmp_path / "run"
    rc = cli.main(["train", str(data), "--out", str(run), "--preset", "demo", "--width", "4",
                   "--depth", "2", "--size", "32", "--epochs", "100000", "--batch-size", "2",
                   "--device", "cpu", "--precision", "fp32", "--cache-dir", "", "--threads",
                   "1", "--time-limit", "20s"])
    assert rc == 0
    with open(run / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    trained = sum(float(r["seconds"]) for r in rows)
    assert trained > 8, (len(rows), trained)      # 20 s less 5 s, 2.5 validations, set-up


def _slow_loading(monkeypatch) -> None:
    """Reading the dataset takes 1.2 s longer (a large dataset): longer than a 1 s limit."""
    real = train_mod.load_arrays

    def slow(*args, **kwargs):
        arrays = real(*args, **kwargs)
        time.sleep(1.2)
        return arrays

    monkeypatch.setattr(train_mod, "load_arrays", slow)


def test_a_limit_used_up_before_training_trains_nothing_and_says_so(tmp_path, monkeypatch,
                                                                    capsys) -> None:
    """--time-limit counts from the start of the run, reading the data included, but a limit
    that reading, caching and checking the split had used up still trained a batch,
    validated, chose the post-processing and scored every validation frame at its own size,
    all past the limit (a review: a 3 s limit on 20k frames ran 59 s, 36 s of it before the
    first batch). It stops before the first batch, saying what took the time."""
    _slow_loading(monkeypatch)
    run = tmp_path / "run"
    rc = _train_tiny(tmp_path, run, "--epochs", "3", "--batch-size", "4", "--time-limit", "1s")
    err = capsys.readouterr().err
    assert rc != 0 and "time limit (1 s) was used up before training" in err, (rc, err)
    assert "reading and caching the data" in err and "nothing trained" in err, err
    assert not (run / "best.ckpt").exists() and not (run / "last.ckpt").exists()


@pytest.mark.parametrize("cache", ["written", "hit", "not written", "none"])
def test_a_limit_used_up_before_training_says_the_cache_helps_only_where_there_is_one(
        tmp_path, monkeypatch, capsys, cache: str) -> None:
    """The error of a limit the loading used up said 'the data's cache makes the next start
    faster' wherever the cache was on, even where its entry could not be written (a full or
    read-only disk, a --cache-dir under a file: a review), so the next start was no faster.
    It says so where this run wrote the entry: not on a hit, whose next start is no faster
    (a review)."""
    _slow_loading(monkeypatch)
    (tmp_path / "a-file").write_text("not a folder")
    cache_dir = {"written": str(tmp_path / "cache"), "hit": str(tmp_path / "cache"),
                 "not written": str(tmp_path / "a-file" / "c"), "none": ""}[cache]
    if cache == "hit":          # an earlier run wrote the entry: this one's load is a hit
        _train_tiny(tmp_path, tmp_path / "run0", "--epochs", "3", "--batch-size", "4",
                    "--time-limit", "1s", "--cache-dir", cache_dir)
        assert "makes the next start faster" in capsys.readouterr().err     # written
    rc = _train_tiny(tmp_path, tmp_path / "run", "--epochs", "3", "--batch-size", "4",
                     "--time-limit", "1s", "--cache-dir", cache_dir)
    err = capsys.readouterr().err
    assert rc != 0 and "time limit (1 s) was used up before training" in err, (rc, err)
    assert ("the data's cache makes the next start faster" in err) == (cache == "written"), err


def test_a_run_of_one_batch_epochs_stops_before_the_time_kept_for_its_end() -> None:
    """The batch loop keeps _reserve (validations, the post-processing choice, the report)
    before the deadline, but an epoch of one batch never reaches that check, and the epoch
    check kept only a validation: a 30 s run of one-batch epochs trained to 29.6 s and then
    chose its post-processing on 1 of 10 frames, past the limit."""
    stop = budget._no_time_for_another_epoch
    limit = 30.0                            # keeps 2.5 validations + min(60, 30 / 4) s
    assert budget._reserve(0.1, limit) == pytest.approx(0.25 + 7.5)
    # one-batch epochs of 1 s, 25 s in: an epoch and its validation fit, the reserve does not
    assert stop(now=25.0, deadline=30.0, epoch_s=1.0, batch_s=1.0, val_s=0.1, limit_s=limit)
    assert not stop(now=20.0, deadline=30.0, epoch_s=1.0, batch_s=1.0, val_s=0.1,
                    limit_s=limit)
    # many-batch epochs: a partial epoch may still start, the batch loop cuts it
    assert not stop(now=18.0, deadline=30.0, epoch_s=8.0, batch_s=0.5, val_s=0.1,
                    limit_s=limit)
    assert stop(now=25.0, deadline=30.0, epoch_s=8.0, batch_s=0.5, val_s=0.1, limit_s=limit)


def test_a_time_limited_run_sizes_its_schedule_after_epochs_1_and_2(tmp_path, monkeypatch):
    """The horizon is measured after the first epoch and measured again, for good, after the
    second (the first can run slower than the rest); last.ckpt keeps the second."""
    calls: list[tuple[int, float]] = []
    real = train_mod._horizon

    def spy(epochs, done, *args):
        calls.append((done, real(epochs, done, *args)))
        return calls[-1][1]

    monkeypatch.setattr(train_mod, "_horizon", spy)
    run = tmp_path / "run"
    rc = _train_tiny(tmp_path, run, "--epochs", "4", "--time-limit", "30m")
    assert rc == 0
    assert [done for done, _ in calls] == [1, 2]
    assert calls[-1][1] == 4.0  # 30 minutes hold all 4 epochs
    assert load_checkpoint(run / "last.ckpt").train_state["horizon"] == 4.0


def test_a_time_limited_schedule_counts_each_epoch_s_writes(tmp_path, monkeypatch) -> None:
    """The horizon's epoch time runs from one epoch's measure to the next's, so it counts what
    the epoch does after training and validating (metrics.csv, the checkpoints): measured
    before those writes, it sized a cosine that the time limit cut at 80 % (lr 11 % of --lr).
    Here each epoch's metrics write takes 100 s on a simulated clock (the training a fraction
    of a second): 30 minutes hold about 17 epochs, and the last runs near the 1 % floor."""
    _slow_metrics_writes(monkeypatch, 100.0)
    run = tmp_path / "run"
    rc = _train_tiny(tmp_path, run, "--epochs", "40", "--time-limit", "30m")
    assert rc == 0
    horizon = load_checkpoint(run / "last.ckpt").train_state["horizon"]
    with open(run / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert 15 <= horizon <= 18          # (1800 - 100 - 60) s at 100 s an epoch, + 2 done
    assert len(rows) >= horizon - 1     # the run trained (nearly) all of them
    assert float(rows[-1]["lr"]) <= 0.03 * 3e-3    # the demo's --lr; the floor is 1 % of it


@pytest.mark.parametrize("end_s,tried", [(0.0, True), (1e6, False)], ids=["in-time", "late"])
def test_the_post_processing_choice_keeps_to_the_time_limit(tmp_path, monkeypatch, end_s,
                                                            tried) -> None:
    """A time-limited run hands the choice its deadline (the limit less what the report
    keeps), and tries test-time augmentation only where it still fits."""
    import ultraseg.postprocess as pp_mod

    deadlines: list[float | None] = []
    alternatives: list[int] = []
    real, real_frame = finish._score_validation, pp_mod.GridSearch.frame

    def spy(predictor, samples, cfg, tuning, deadline, **kw):
        deadlines.append(deadline)
        return real(predictor, samples, cfg, tuning, deadline, **kw)

    def frame(self, *args, **kw):   # (a choice cut to one frame keeps the defaults: no choose)
        alternatives.append(self.alternatives)
        return real_frame(self, *args, **kw)

    monkeypatch.setattr(finish, "_score_validation", spy)
    monkeypatch.setattr(pp_mod.GridSearch, "frame", frame)
    monkeypatch.setattr(finish, "_end_s", lambda limit_s: end_s)
    t_start = time.monotonic()
    assert _train_tiny(tmp_path / "a", tmp_path / "run", "--epochs", "1", "--time-limit",
                       "30m") == 0
    t_end = time.monotonic()
    (deadline,) = deadlines
    assert set(alternatives) == ({2} if tried else set())  # (late: no frame on the grid)
    assert t_start + 1800 - end_s <= deadline <= t_end + 1800 - end_s
    deadlines.clear()
    alternatives.clear()
    assert _train_tiny(tmp_path / "b", tmp_path / "free", "--epochs", "1", "--time-limit",
                       "none") == 0
    assert deadlines == [None] and set(alternatives) == {2}


def test_a_short_limit_leaves_the_post_processing_choice_its_time(tmp_path, monkeypatch) -> None:
    """Under a 30 s limit training stops 7.5 s (and 2.5 validations) before it; the choice's
    deadline falls after that, not 10 s before the limit (before it, so the choice saw one
    frame and TTA was never tried). The recorded post-processed Dice is over every validation
    frame, whatever the choice saw: here a deadline that passes once the first frame is on the
    grid cuts it to that frame, too few to choose on (MIN_CHOICE_FRAMES), so the defaults are
    kept, the report says why, and the others are scored under them. (A deadline passed
    before the first frame: test_a_run_past_its_limit_before_validating_validates_and_scores_a_
    sample.)"""
    from types import SimpleNamespace

    import ultraseg.postprocess as pp_mod

    assert budget._end_s(30.0) == 3.75 and budget._end_s(1200.0) == budget._END_S
    seen: list[int] = []
    chosen_on: list[int] = []
    real, real_choose = finish._score_validation, pp_mod.GridSearch.choose
    real_add, real_time = pp_mod.GridSearch.add, finish.time
    jump = [0.0]

    def passed(predictor, samples, cfg, tuning, deadline, **kw):
        seen.append(len(samples))
        finish.time = SimpleNamespace(monotonic=lambda: real_time.monotonic() + jump[0])
        try:        # the deadline passes as the first frame goes on the grid
            return real(predictor, samples, cfg, tuning, real_time.monotonic() + 600, **kw)
        finally:
            finish.time = real_time

    def add(self, *args, **kw):
        jump[0] = 1e6
        return real_add(self, *args, **kw)

    def choose(self, *args, **kw):
        chosen_on.append(len(self))
        return real_choose(self, *args, **kw)

    monkeypatch.setattr(finish, "_score_validation", passed)
    monkeypatch.setattr(pp_mod.GridSearch, "add", add)
    monkeypatch.setattr(pp_mod.GridSearch, "choose", choose)
    run = tmp_path / "run"
    assert _train_tiny(tmp_path, run, "--epochs", "1") == 0
    from ultraseg.evaluate import evaluate

    val = json.loads((run / "split.json").read_text())["val"]
    assert seen == [len(val)] and len(val) > 1 and chosen_on == []
    row = load_checkpoint(run / "best.ckpt").meta["metrics"]["report"]["post-processing"]
    assert f"not chosen: the time limit left 1 of the {len(val)} validation frames" in row, row
    predictor = load(run / "best.ckpt", device="cpu", precision="fp32")
    summary, _ = evaluate(predictor, tmp_path / "data", split_file=run / "split.json",
                          subset="val")
    best = load_checkpoint(run / "best.ckpt")
    assert best.meta["metrics"]["val_dice_postprocessed"] == pytest.approx(summary["dice_mean"],
                                                                            abs=1e-6)


def test_a_time_limit_that_skips_the_head_circumference_calibration_says_so(
        tmp_path, monkeypatch) -> None:
    """Where the time limit came before the boundary offset could be chosen, an HC18 run's
    offset calibration and validation HC error were skipped without a word (the report and
    the closing lines just had no HC figure); it is a warning now, as for the
    post-processing."""
    from types import SimpleNamespace

    from conftest import ultraseg_warnings

    real = finish._score_validation

    def with_references(predictor, samples, cfg, tuning, deadline, **kw):
        seen = real(predictor, samples, cfg, tuning, deadline, **kw)
        seen.hc_samples = [SimpleNamespace(meta={"pixel_size_mm": 0.1, "hc_mm": 40.0})] * 12
        return seen

    calibrated = []
    monkeypatch.setattr(finish, "_score_validation", with_references)
    monkeypatch.setattr(finish, "_calibrate_measure", lambda *a: calibrated.append(a) or a[-1])
    monkeypatch.setattr(finish, "_end_s", lambda limit_s: 1e6)   # the deadline has passed
    with ultraseg_warnings() as warned:
        assert _train_tiny(tmp_path, tmp_path / "run", "--epochs", "1", "--time-limit",
                           "30m") == 0
    assert calibrated == []
    said = [r.getMessage() for r in warned if "boundary offset not chosen" in r.getMessage()]
    assert len(said) == 1 and "12 validation frames" in said[0], said
    assert "time limit came first" in said[0]


def test_ema_moves_one_minus_decay_of_the_way_to_the_weights_and_statistics() -> None:
    import torch

    from ultraseg.config import merge
    from ultraseg.model import build_model
    from ultraseg.train import make_ema

    cfg = RunConfig(model=ModelConfig(variant="same", width=4, depth=2))
    model = build_model(cfg.model)
    assert make_ema(model, cfg) is None  # ema_decay 0: off
    ema = make_ema(model, merge(cfg, {"train": {"ema_decay": 0.75}}))

    def fill(value: float) -> None:
        with torch.no_grad():
            for t in [*model.parameters(), model.encoder[0].block[1].running_mean]:
                t.fill_(value)

    fill(4.0)
    ema.update_parameters(model)   # the first update copies
    fill(8.0)
    ema.update_parameters(model)   # 0.75 * 4 + 0.25 * 8
    for name, value in [*ema.module.named_parameters(),
                        ("running_mean", ema.module.encoder[0].block[1].running_mean)]:
        torch.testing.assert_close(value, torch.full_like(value, 5.0), msg=name)
    assert bool((next(model.parameters()) == 8.0).all())  # the model itself untouched


@pytest.mark.parametrize("empty, n, on", [(12, 100, True), (10, 200, True), (9, 100, False),
                                          (9, 20, False), (10, 201, False), (0, 0, False)])
def test_auto_presence_head_needs_empty_training_frames(empty, n, on) -> None:
    """'auto' builds the head from 5 % empty training masks and at least 10 frames."""
    masks = np.zeros((n, 6, 6), np.uint8)
    masks[empty:, 2, 3] = 1                      # the first ``empty`` frames have no structure
    cfg = merge(preset("cpu"), {"model": {"presence_head": "auto"}})
    got = train_mod.resolve_presence_head(cfg, masks)
    assert got.model.presence_head is on and got.train == cfg.train
    # training gives it whether each frame holds a structure, decided once: the same head
    assert train_mod.resolve_presence_head(cfg, _held(masks)) == got
    classifier = merge(cfg, {"model": {"presence_mode": "classifier"}})
    got = train_mod.resolve_presence_head(classifier, masks)
    assert got.model.presence_head is on
    assert got.model.presence_mode == ("classifier" if on else "gate")   # no head, no mode
    for fixed in (True, False):
        cfg = merge(preset("cpu"), {"model": {"presence_head": fixed}})
        assert train_mod.resolve_presence_head(cfg, masks) == cfg
    # the valid model sees frames in tiles: 'auto' never builds a head there
    valid = merge(preset("cpu"), {"model": {"variant": "valid", "norm": "batch",
                                            "presence_head": "auto"}})
    assert train_mod.resolve_presence_head(valid, masks).model.presence_head is False


def test_sample_png_picks_and_titles_training_frames_by_their_masks(tmp_path, monkeypatch) -> None:
    """sample.png shows training frames whose masks hold a structure first, one of an empty
    mask among them titled '(empty mask)'; frames off the training side are never shown."""
    from ultraseg import report

    masks = np.zeros((7, 8, 8), np.uint8)
    masks[[2, 4, 5, 6], 3, 3] = 1                # frames 0, 1 and 3 are empty
    arrays = Arrays(np.zeros((7, 8, 8), np.uint8), masks, tuple(f"f{i}" for i in range(7)),
                    tuple(f"s{i}" for i in range(7)))
    shown: list = []
    monkeypatch.setattr(report, "plot_samples",
                        lambda images, masks, path, titles: shown.append(titles))
    finish._plot_samples(tmp_path, arrays, np.array([0, 1, 2, 4, 5]),
                            _held(arrays.masks))
    assert shown == [["f0\n(empty mask)", "f2", "f4", "f5"]]
    # each subject's first frame before any subject's second: not four of one subject
    grouped = replace(arrays, masks=np.ones_like(masks), subjects=tuple("aaabbcc"))
    finish._plot_samples(tmp_path, grouped, np.arange(7), _held(grouped.masks))
    assert shown[1] == ["f0", "f1", "f3", "f5"]


def test_presence_head_on_the_valid_model_is_refused_before_training(tmp_path, capsys) -> None:
    run = tmp_path / "run"
    assert _train_tiny(tmp_path, run, "--epochs", "1", "--model", "valid",
                       "--presence-head") == 2
    assert "presence head needs the 'same' variant" in capsys.readouterr().err
    assert not (run / "best.ckpt").exists()


def test_every_checkpoint_carries_the_outline_offset_for_measurement(tmp_path) -> None:
    """Masks filled from drawn outlines (HC18) reach half the line's width beyond the curve;
    best.ckpt and last.ckpt alike carry that offset, so measuring with either agrees."""
    from PIL import ImageDraw

    from ultraseg.measure import outline_half_width

    data = tmp_path / "hc18" / "training_set"
    data.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(12):
        Image.fromarray(rng.integers(0, 255, (32, 32), dtype=np.uint8)).save(
            data / f"{i:03d}_HC.png")
        outline = Image.new("L", (32, 32), 0)
        ImageDraw.Draw(outline).ellipse((4 + i % 3, 5, 27, 26 - i % 4), outline=255, width=3)
        outline.save(data / f"{i:03d}_HC_Annotation.png")
    want = float(np.median([outline_half_width(np.asarray(Image.open(f)) > 0)
                            for f in sorted(data.glob("*_Annotation.png"))]))
    run = tmp_path / "run"
    assert cli.main(["train", str(tmp_path / "hc18"), "--out", str(run), "--preset", "demo",
                     "--width", "4", "--depth", "2", "--size", "32", "--epochs", "1",
                     "--device", "cpu", "--precision", "fp32", "--cache-dir", "",
                     "--threads", "1"]) == 0
    offsets = [load_checkpoint(run / f).meta["measure"]["boundary_offset_px"]
               for f in ("best.ckpt", "last.ckpt")]
    assert offsets[0] == offsets[1] > 1.0
    assert offsets[0] == pytest.approx(want, abs=0.3)     # the median over training outlines
    # at the training frames' longer side: scaled to each frame measured
    assert load_checkpoint(run / "best.ckpt").meta["measure"]["offset_frame_side_px"] == 32


def test_auto_presence_head_is_decided_once_and_recorded(tmp_path, capsys) -> None:
    """config.json keeps the request ('auto'); the checkpoint holds the decision, and a model
    cannot be built from 'auto' itself."""
    conf = tmp_path / "auto.json"
    conf.write_text(json.dumps({"model": {"presence_head": "auto"}}))
    run = tmp_path / "run"
    assert _train_tiny(tmp_path, run, "--epochs", "1", "--config", str(conf)) == 0
    assert json.loads((run / "config.json").read_text())["model"]["presence_head"] == "auto"
    best = load_checkpoint(run / "best.ckpt")
    assert best.model.presence_head is False             # 20 frames: too few empty ones
    assert "presence head: off" in (run / "train.log").read_text()
    with pytest.raises(UltrasegError, match="auto"):
        build_model(replace(best.model, presence_head="auto"))
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"model": {"presence_head": "sometimes"}}))
    assert _train_tiny(tmp_path / "second", tmp_path / "bad", "--config", str(bad)) == 2
    assert "presence_head" in capsys.readouterr().err


# ------------------------------------------------------------------ the caller's logging
@pytest.mark.parametrize("where", ["root", "package"])
@pytest.mark.parametrize("package_level", [logging.NOTSET, logging.WARNING, logging.ERROR])
def test_training_logs_info_to_its_file_not_to_the_callers_handlers(tmp_path, where,
                                                                   package_level) -> None:
    """train() lowered the `ultraseg` logger to INFO for train.log, and those records also
    reached the caller's handlers, even where the caller had silenced the package; a handler
    on the package's own logger then got warnings twice (once more from logging's last
    resort)."""
    data = make_dataset(tmp_path / "data", n=12, size=32, seed=0)
    cfg = RunConfig(data=DataConfig(path=str(data), cache_dir=""),
                    model=ModelConfig(variant="same", width=4, depth=1),
                    preprocess=PreprocessConfig(size=32),
                    train=TrainConfig(epochs=1, batch_size=4, device="cpu"))
    seen: list[logging.LogRecord] = []
    caller = logging.Handler(logging.NOTSET)     # a handler that takes what reaches it
    caller.emit = seen.append                    # type: ignore[method-assign]
    root, pkg = logging.getLogger(), logging.getLogger("ultraseg")
    old_root_level, old_root_handlers = root.level, list(root.handlers)
    old_last_resort = logging.lastResort
    last_resort: list[logging.LogRecord] = []
    logging.lastResort = logging.Handler(logging.WARNING)
    logging.lastResort.emit = last_resort.append  # type: ignore[method-assign]
    for h in old_root_handlers:                  # pytest's own: the caller's are the test's
        root.removeHandler(h)
    (root if where == "root" else pkg).addHandler(caller)
    root.setLevel(logging.WARNING)
    pkg.setLevel(package_level)
    try:
        with run_log(tmp_path / "warm.log"):
            pkg.getChild("x").warning("inside training")
            pkg.getChild("x").info("info inside training")
        train_mod.train(cfg, tmp_path / "run")
        assert pkg.level == package_level and pkg.propagate
        assert pkg.handlers == ([caller] if where == "package" else [])
        pkg.warning("after training")            # propagation is back as it was
    finally:
        (root if where == "root" else pkg).removeHandler(caller)
        for h in old_root_handlers:
            root.addHandler(h)
        root.setLevel(old_root_level)
        pkg.setLevel(logging.NOTSET)
        logging.lastResort = old_last_resort
    assert "INFO ultraseg.train: " in (tmp_path / "run" / "train.log").read_text()  # modules named
    leaked = [r.getMessage() for r in seen if r.levelno < logging.WARNING]
    assert leaked == [], leaked
    messages = [r.getMessage() for r in seen]
    if package_level == logging.ERROR:
        assert messages == []
    else:
        assert messages[0] == "inside training" and messages[-1] == "after training"
    assert last_resort == []                     # the caller's handler took every record



@pytest.mark.parametrize("set_to", [logging.WARNING, None], ids=["set", "none"])
def test_a_level_the_caller_sets_while_training_runs_is_kept_when_it_ends(tmp_path,
                                                                          set_to) -> None:
    """A caller's logging.getLogger("ultraseg").setLevel(WARNING) made while a training ran
    (here in its progress callback, as another thread may) was undone when it ended: the run's
    log put back the level it had saved at its start. A level set meanwhile is the caller's
    and stays; with none set, the level before the run comes back."""
    data = make_dataset(tmp_path / "data", n=12, size=32, seed=0)
    cfg = RunConfig(data=DataConfig(path=str(data), cache_dir=""),
                    model=ModelConfig(variant="same", width=4, depth=1),
                    preprocess=PreprocessConfig(size=32),
                    train=TrainConfig(epochs=1, batch_size=4, device="cpu", num_threads=1))
    pkg = logging.getLogger("ultraseg")
    old = pkg.level
    inside: list[int] = []

    def progress(event: dict) -> None:
        if event["event"] in ("batch", "epoch") and not inside:
            inside.append(pkg.level)            # the run's log has it at INFO now
            if set_to is not None:
                pkg.setLevel(set_to)

    pkg.setLevel(logging.ERROR)
    try:
        train_mod.train(cfg, tmp_path / "run", progress=progress)
        after = pkg.level
    finally:
        pkg.setLevel(old)
    assert inside == [logging.INFO]
    assert after == (logging.ERROR if set_to is None else set_to)

def _head(shape: tuple[int, int], a: float, b: float) -> np.ndarray:
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    return (((xx - shape[1] / 2) / a) ** 2 + ((yy - shape[0] / 2) / b) ** 2 <= 1)


def test_head_circumference_offset_is_chosen_on_validation_frames_with_a_reference() -> None:
    """Validation frames with a pixel size and a reference HC choose the boundary offset: a
    model drawing heads 3 px too large gets about 3 px, where the outlines' half-width was 1;
    fewer than 10 frames keep the offset. (_calibrate_measure is handed those with a reference
    alone: test_the_frames_the_offset_is_calibrated_on_have_a_pixel_size_and_a_reference.)"""
    from types import SimpleNamespace

    from ultraseg.measure import ellipse_circumference

    rng = np.random.default_rng(0)
    samples, regions, probs = [], [], []
    for _ in range(11):     # (frames without a reference: _score_validation keeps none)
        a, b = rng.uniform(30, 50), rng.uniform(20, 29)
        size = rng.uniform(0.1, 0.3)
        meta = {"pixel_size_mm": size, "hc_mm": ellipse_circumference(a, b) * size}
        samples.append(SimpleNamespace(meta=meta))
        regions.append(None)                                  # the whole frame
        probs.append(_head((80, 120), a + 3, b + 3).astype(np.float32))
    cfg = preset("cpu")
    before = {"boundary_offset_px": 1.0}
    got = finish._calibrate_measure(samples, regions, probs, PostprocessConfig(), cfg, before)
    assert got["boundary_offset_px"] == pytest.approx(3.0, abs=0.35)
    assert got["outline_half_width_px"] == 1.0 and got["offset_frames"] == 11
    # the validation head-circumference error (mm) at the half-width and at the chosen offset
    assert got["val_hc_mae_mm"] < 0.5 * got["val_hc_mae_mm_start"]
    assert got["val_hc_mae_mm_start"] > 1.0
    assert before == {"boundary_offset_px": 1.0}             # the caller's dict unchanged
    few = finish._calibrate_measure(samples[2:], regions[2:], probs[2:], PostprocessConfig(),
                                       cfg, before)
    assert few == before                                      # 9 frames with a reference


def test_the_offset_is_chosen_per_frame_side_on_validation_frames_of_two_sizes() -> None:
    """A model drawing heads 3 px too large on frames 120 px long draws them 6 px too large on
    the same frames at twice the size (its output is resized back to each frame): validation
    frames of both sizes chose one offset in pixels for all, between the two, and their HC
    error stayed (review measurement O3). The offset is chosen per longer side of the frame
    and recorded with the side it holds at (offset_frame_side_px: the outlines' frames' where
    the start says, else the validation frames' median)."""
    from types import SimpleNamespace

    from ultraseg.measure import ellipse_circumference

    rng = np.random.default_rng(1)
    samples, probs = [], []
    for i in range(12):
        k = 1 + i % 2                                         # every other frame at 2x
        a, b = rng.uniform(30, 50), rng.uniform(20, 29)
        size = rng.uniform(0.1, 0.3)
        meta = {"pixel_size_mm": size / k, "hc_mm": ellipse_circumference(a, b) * size}
        samples.append(SimpleNamespace(meta=meta))
        probs.append(_head((80 * k, 120 * k), k * (a + 3), k * (b + 3)).astype(np.float32))
    cfg = preset("cpu")
    got = finish._calibrate_measure(samples, [None] * 12, probs, PostprocessConfig(), cfg,
                                    {"boundary_offset_px": 1.0, "offset_frame_side_px": 120})
    assert got["boundary_offset_px"] == pytest.approx(3.0, abs=0.1)
    assert got["offset_frame_side_px"] == 120
    assert got["val_hc_mae_mm"] < 0.1
    at_240 = finish._calibrate_measure(samples, [None] * 12, probs, PostprocessConfig(), cfg,
                                       {"boundary_offset_px": 2.0, "offset_frame_side_px": 240})
    assert at_240["boundary_offset_px"] == pytest.approx(6.0, abs=0.1)
    assert at_240["offset_frame_side_px"] == 240
    bare = finish._calibrate_measure(samples[:11], [None] * 11, probs[:11], PostprocessConfig(),
                                     cfg, {"boundary_offset_px": 1.0})
    assert bare["offset_frame_side_px"] == 120                # 6 of the 11 frames 120 px long


def _validation_frames(tmp_path: Path, n: int) -> tuple:
    """A tiny untrained model's config and Predictor (on the CPU, two frames a batch), and
    ``n`` phantom frames to validate on."""
    from ultraseg.io import open_dataset
    from ultraseg.predict import Predictor
    from ultraseg.runtime import torch_runner

    cfg = merge(preset("demo"), {"preprocess": {"size": 32},
                                 "model": {"variant": "same", "width": 2, "depth": 2}})
    torch.manual_seed(0)
    predictor = Predictor(torch_runner(build_model(cfg.model), torch.device("cpu"), None),
                          cfg.model, cfg.preprocess, batch_size=2)
    samples = open_dataset(make_dataset(tmp_path / "d", n=n, size=32, seed=1)).labelled[:n]
    return cfg, predictor, list(samples)


def test_the_frames_the_offset_is_calibrated_on_have_a_pixel_size_and_a_reference(
        tmp_path) -> None:
    """Of the validation frames, those with a pixel size and a reference head circumference
    alone are kept for the offset's calibration (hc_samples, in the frames' order), their
    regions and probabilities beside them; the others (no reference, no pixel size, a zero
    one) are left out, and with tune_postprocess off none is kept."""
    cfg, predictor, samples = _validation_frames(tmp_path, 6)
    metas = ({"pixel_size_mm": 0.1, "hc_mm": 40.0}, {"pixel_size_mm": 0.1}, {"hc_mm": 40.0},
             {"pixel_size_mm": 0.0, "hc_mm": 40.0}, {"pixel_size_mm": 0.2, "hc_mm": 0.0}, {})
    for s, meta in zip(samples, metas):
        s.meta.update(meta)
    seen = finish._score_validation(predictor, samples, cfg, False, None)
    assert [s.name for s in seen.hc_samples] == [samples[0].name, samples[4].name]
    assert len(seen.hc_regions) == len(seen.hc_levels) == 2
    off = merge(cfg, {"train": {"tune_postprocess": False}})
    assert finish._score_validation(predictor, samples, off, False, None).hc_samples == []


def test_the_validation_hc_error_counts_the_frames_with_no_head_found() -> None:
    """The validation HC error is over the frames where a head was found; the frames with a
    reference where none was are counted beside it (they were left out without a word, so a
    model missing a third of the heads got a good-looking headline error)."""
    from types import SimpleNamespace

    yy, xx = np.mgrid[:200, :200]
    head = (((xx - 100) / 60) ** 2 + ((yy - 100) / 50) ** 2 <= 1).astype(np.float32)
    samples = [SimpleNamespace(meta={"pixel_size_mm": 0.1, "hc_mm": 40.0}) for _ in range(15)]
    probs = [head if i < 10 else np.zeros((200, 200), np.float32) for i in range(15)]
    got = finish._calibrate_measure(samples, [None] * 15, probs, PostprocessConfig(),
                                       preset("cpu"), {"boundary_offset_px": 1.0})
    assert got["offset_frames"] == 10
    assert got["reference_frames"] == 15 and got["no_head_frames"] == 5


@pytest.mark.parametrize("found", [0, 3, 9])
def test_too_few_heads_found_to_choose_the_offset_is_a_warning_with_both_counts(found) -> None:
    """With fewer heads found than the offset's choice needs, nothing was said (none found)
    or an info line, seen with -v alone, called the heads found 'frames with a reference'
    (3 of 15 read '3 validation frames with a reference')."""
    from types import SimpleNamespace

    from conftest import ultraseg_warnings

    yy, xx = np.mgrid[:200, :200]
    head = (((xx - 100) / 60) ** 2 + ((yy - 100) / 50) ** 2 <= 1).astype(np.float32)
    samples = [SimpleNamespace(meta={"pixel_size_mm": 0.1, "hc_mm": 40.0}) for _ in range(15)]
    probs = [head if i < found else np.zeros((200, 200), np.float32) for i in range(15)]
    before = {"boundary_offset_px": 1.0}
    with ultraseg_warnings() as warned:
        got = finish._calibrate_measure(samples, [None] * 15, probs, PostprocessConfig(),
                                           preset("cpu"), before)
    assert got == before
    said = [r.getMessage() for r in warned]
    assert len(said) == 1 and f"on {found} of the 15 validation frames" in said[0], said


def test_the_levels_kept_for_calibration_give_the_masks_the_probabilities_give() -> None:
    """Frames with a reference head circumference keep their probabilities as a byte a pixel
    of levels between the choice's thresholds and peaks (not four bytes of float32) until the
    offset is calibrated: read back, they make the same masks under any setting the choice
    can make, NaN and values on the cuts themselves included."""
    import itertools

    from ultraseg.postprocess import DEFAULT_MIN_PEAKS, DEFAULT_THRESHOLDS, apply

    rng = np.random.default_rng(2)
    cuts = finish._cuts()
    prob = rng.random((40, 50)).astype(np.float32)
    prob[0, :len(cuts)] = cuts                             # on a cut: it reaches it
    prob[1, :len(cuts)] = np.nextafter(np.float32(cuts), np.float32(0))
    prob[2, :3] = np.nan
    levels = finish._levels(prob, cuts)
    assert levels.dtype == np.uint8
    back = np.asarray((0.0, *cuts))[levels]
    # (apply refuses NaN; it reached no threshold there, as 0 reaches none of the cuts)
    reached = np.where(np.isnan(prob), np.float32(0), prob)
    for thr, peak, area, largest, fill in itertools.product(
            DEFAULT_THRESHOLDS, DEFAULT_MIN_PEAKS, (0, 5), (False, True), (False, True)):
        cfg = PostprocessConfig(threshold=thr, min_peak=peak if peak > thr else 0.0,
                                min_area=area, keep_largest=largest, fill_holes=fill)
        np.testing.assert_array_equal(apply(back, cfg), apply(reached, cfg), err_msg=str(cfg))


def test_the_chosen_offset_reaches_best_ckpt_and_the_report(tmp_path, monkeypatch,
                                                             capsys) -> None:
    """What the validation frames chose is what best.ckpt measures with (evaluate, measure and
    an exported model read it there), and the report says so; the validation head-circumference
    error in mm, the task's headline figure, is in the report and train's closing lines (it
    was in train.log alone)."""
    chosen = {"boundary_offset_px": 2.5, "outline_half_width_px": 0.0, "offset_frames": 12,
              "val_hc_mae_mm": 1.75, "val_hc_mae_mm_start": 2.07, "reference_frames": 14,
              "no_head_frames": 2}
    seen = []

    def calibrate(samples, regions, probs, pp, cfg, measure_meta):
        seen.append(dict(measure_meta))
        return chosen

    monkeypatch.setattr(finish, "_calibrate_measure", calibrate)
    run = tmp_path / "run"
    assert _train_tiny(tmp_path, run, "--epochs", "1") == 0
    assert seen == [{"boundary_offset_px": 0.0}]              # phantom masks: drawn filled
    assert load_checkpoint(run / "best.ckpt").meta["measure"] == chosen
    html = (run / "report.html").read_text()
    assert "2.5 (chosen on 12 validation frames" in html
    assert "validation head-circumference error, mean absolute (mm)" in html
    assert "1.75 (2.07 with the outlines&#x27; half-width), over 12 of 14 validation frames " \
        "with a reference (2 with no head found)" in html.replace("&#39;", "&#x27;")
    printed = capsys.readouterr().out
    assert "validation head-circumference error, mean absolute 1.75 mm, over 12 of 14 frames " \
        "with a reference (2 with no head found)" in printed
    assert load(run / "best.ckpt").meta["measure"]["boundary_offset_px"] == 2.5


def test_a_finished_run_resumed_keeps_its_head_circumference_error(tmp_path, monkeypatch,
                                                                     capsys) -> None:
    """A finished HC18 run resumed (--resume on a finished run) printed the other closing
    lines but not the head-circumference error, and its Python result had val_hc_mae_mm None,
    though best.ckpt's measure holds it."""
    chosen = {"boundary_offset_px": 2.5, "outline_half_width_px": 0.0, "offset_frames": 12,
              "val_hc_mae_mm": 1.75, "val_hc_mae_mm_start": 2.07, "reference_frames": 14,
              "no_head_frames": 2}
    monkeypatch.setattr(finish, "_calibrate_measure", lambda *a: chosen)
    run = tmp_path / "run"
    assert _train_tiny(tmp_path, run, "--epochs", "1") == 0
    line = next(ln for ln in capsys.readouterr().out.splitlines()
                if "head-circumference error" in ln)
    assert cli.main(["train", "--resume", "--out", str(run)]) == 0
    out = capsys.readouterr().out
    assert "already finished" in out and line in out.splitlines()
    result = train_mod.train(None, run, resume=True)
    assert (result.val_hc_mae_mm, result.val_hc_frames, result.val_hc_reference_frames) == \
        (1.75, 12, 14)


def test_choosing_the_post_processing_holds_a_few_validation_frames_at_a_time(
        tmp_path, monkeypatch) -> None:
    """The end of training held every validation frame at its original size at once (the
    frames, their masks, and the plain and mirrored float32 probabilities): 80 frames of
    1280x1024 took 1.5 GB after training had needed 0.4 GB, and a larger split ran out of
    memory after all the training was done. It streams them now: the probability maps alive at
    once stay a few batches' worth however many validation frames there are, and the run still
    chooses its post-processing (test-time augmentation tried) and writes its report."""
    import weakref

    import ultraseg.predict as predict_mod

    alive, most, made = [0], [0], [0]
    restore = predict_mod.restore

    def counted(prob, geom):
        out = restore(prob, geom)
        made[0] += 1
        alive[0] += 1
        most[0] = max(most[0], alive[0])
        weakref.finalize(out, lambda: alive.__setitem__(0, alive[0] - 1))
        return out

    monkeypatch.setattr(predict_mod, "restore", counted)
    data = make_dataset(tmp_path / "data", n=80, size=32, seed=3)
    run = tmp_path / "run"
    assert cli.main(["train", str(data), "--out", str(run), "--preset", "demo", "--width", "4",
                     "--depth", "2", "--size", "32", "--device", "cpu", "--precision", "fp32",
                     "--cache-dir", "", "--threads", "1", "--epochs", "1", "--batch-size", "2",
                     "--time-limit", "none"]) == 0
    n_val = len(json.loads((run / "split.json").read_text())["val"])
    assert n_val >= 16
    assert made[0] >= 2 * n_val                  # plain and mirrored: TTA was tried
    assert most[0] <= 8, (most[0], n_val)        # two passes of batch_size 2, and a little
    best = load_checkpoint(run / "best.ckpt")
    assert best.meta["metrics"]["val_dice_postprocessed"] is not None
    assert (run / "report.html").exists() and (run / "seg_sample.png").exists()


def test_running_out_of_memory_choosing_the_post_processing_says_what_needs_less(
        tmp_path, monkeypatch, capsys) -> None:
    """Out of memory while choosing the post-processing (all training done) said 'a smaller
    --size or --batch-size needs less': neither changes that stage, whose memory follows the
    validation frames at their original size. It names those, and says what was kept."""
    from ultraseg.predict import Predictor

    def no_room(self, images):
        raise MemoryError("Unable to allocate 1.2 GiB for an array")
        yield

    monkeypatch.setattr(Predictor, "predict_proba_many", no_room)
    run = tmp_path / "run"
    capsys.readouterr()
    assert _train_tiny(tmp_path, run, "--epochs", "1") == 2
    err = capsys.readouterr().err
    assert "out of memory" in err and "validation frames" in err and "--val-fraction" in err
    assert "--size or --batch-size" not in err
    assert (run / "best.ckpt").exists()


def test_a_validation_side_without_any_structure_chooses_nothing(tmp_path) -> None:
    """Where the split puts only empty masks on the validation side, the epoch and the
    post-processing were chosen for predicting nothing (validation Dice 1.0, a minimum peak
    that deletes real structures), without a word. Such frames are scored but choose nothing:
    the last epoch is kept and post-processing stays at its defaults, with a warning that
    names the way out."""
    from conftest import ultraseg_warnings

    from ultraseg.data import run_split
    from ultraseg.io import open_dataset

    data = make_dataset(tmp_path / "data", n=20, size=32, seed=3)
    ds = open_dataset(data)
    _, val_idx, _ = run_split([s.subject for s in ds.labelled], 0.0, 0.2, 0)
    for i in val_idx:                               # blank every validation frame's mask
        path = ds.labelled[i].mask_paths[0]
        Image.fromarray(np.zeros_like(np.asarray(Image.open(path)))).save(path)
    assert 0 < len(val_idx) < len(ds.labelled)
    cfg = merge(preset("demo"), {
        "data": {"path": str(data), "cache_dir": None},
        "model": {"width": 4, "depth": 2}, "preprocess": {"size": 32},
        "train": {"epochs": 3, "val_fraction": 0.2, "seed": 0, "device": "cpu",
                  "precision": "fp32", "num_threads": 1, "time_limit_s": None}})
    with ultraseg_warnings() as warned:
        result = train_mod.train(cfg, tmp_path / "run")
    # (of the two subjects, one alone holds a structure now: no seed helps, --val-fraction 0)
    assert any("validation masks holds a foreground pixel" in r.getMessage()
               and "no --split-seed helps" in r.getMessage()
               and "(the last epoch kept" in r.getMessage()
               and "in Python, train.val_fraction 0)" in r.getMessage() for r in warned)
    assert result.best_epoch == 3
    assert load_checkpoint(tmp_path / "run" / "best.ckpt").postprocess == PostprocessConfig()
    # the report says so, and marks the epoch kept (it marked the lowest validation loss's)
    page = (tmp_path / "run" / "report.html").read_text()
    assert "3 (the last: no validation mask holds a structure" in page
    assert "(the defaults: not chosen)" in page
    assert page.count("<tr class=best>") == 1 and "<tr class=best><td class=num>3</td>" in page
    # its figures' captions say the validation frames chose nothing, and say so again when the
    # report is written again on resume (it was written with the default captions), as its
    # curves' legend does (the last epoch kept, no star)
    said = re.findall(r"<figcaption>.*?</figcaption>", page, re.S)
    assert html.escape(report.CAPTIONS_NOT_CHOSEN["seg_sample.png"]) in "".join(said)
    curve = (tmp_path / "run" / "curve.png").read_bytes()
    (tmp_path / "run" / "report.html").unlink()     # stopped while it was written
    train_mod.train(None, tmp_path / "run", resume=True)
    again = (tmp_path / "run" / "report.html").read_text()
    assert re.findall(r"<figcaption>.*?</figcaption>", again, re.S) == said
    assert (tmp_path / "run" / "curve.png").read_bytes() == curve
    # a run recorded before best.ckpt said whether validation chose: its non-empty frames'
    # Dice (none here) says it, for the captions, the curve and the figures' titles alike
    from ultraseg.checkpoint import save_checkpoint
    best = load_checkpoint(tmp_path / "run" / "best.ckpt")
    metrics = {k: v for k, v in best.meta["metrics"].items() if k != "val_chose"}
    save_checkpoint(tmp_path / "run" / "best.ckpt", best.state_dict,
                    {**best.meta, "metrics": metrics}, best.train_state)
    (tmp_path / "run" / "report.html").unlink()
    train_mod.train(None, tmp_path / "run", resume=True)
    again = (tmp_path / "run" / "report.html").read_text()
    assert re.findall(r"<figcaption>.*?</figcaption>", again, re.S) == said
    assert (tmp_path / "run" / "curve.png").read_bytes() == curve


@pytest.mark.parametrize("norm", ["batch", "instance"])
def test_a_working_size_that_leaves_one_pixel_at_the_bottleneck_is_refused(tmp_path, norm):
    """--size 16 at depth 4 (a 1 x 1 bottleneck) with instance normalisation stopped in the
    first batch with torch's 'Expected more than 1 spatial element' as an internal error, and
    with batch normalisation on a last batch of one frame; it is refused before anything is
    written, and --size 32 trains."""
    data = make_dataset(tmp_path / "data", n=9, size=32, seed=0)
    args = ["train", str(data), "--preset", "demo", "--depth", "4", "--norm", norm,
            "--epochs", "1", "--batch-size", "4", "--val-fraction", "0", "--width", "4"]
    with pytest.raises(UltrasegError, match=r"--size\) at least 32, or a smaller model\.depth"):
        train_mod.train(merge(preset("demo"), {"data": {"path": str(data)},
                                               "preprocess": {"size": 16},
                                               "model": {"depth": 4, "norm": norm}}),
                        tmp_path / "r")
    assert not (tmp_path / "r").exists()
    assert cli.main([*args, "--size", "32", "--out", str(tmp_path / "ok")]) == 0


def test_a_run_interrupted_before_its_first_epoch_leaves_nothing(tmp_path, monkeypatch):
    """Ctrl-C (or running out of memory) before the first epoch was saved left config.json
    and train.log in a folder holding no run, which the README says a refused run removes."""
    data = make_dataset(tmp_path / "data", n=8, size=32, seed=0)
    cfg = merge(preset("demo"), {"data": {"path": str(data), "cache_dir": None},
                                 "preprocess": {"size": 32}, "model": {"width": 4},
                                 "train": {"epochs": 1, "val_fraction": 0.0}})

    def stopped(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(train_mod, "load_arrays", stopped)
    with pytest.raises(KeyboardInterrupt):
        train_mod.train(cfg, tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_a_presence_mode_the_auto_head_does_not_use_is_warned_about() -> None:
    """--presence-mode classifier under the cpu preset (presence_head 'auto') on frames that
    all hold a structure trained without a head and without a word on the terminal, while
    other presets refuse the mode without a head."""
    from conftest import ultraseg_warnings

    cfg = merge(preset("cpu"), {"model": {"presence_mode": "classifier"}})
    masks = np.ones((20, 8, 8), bool)
    with ultraseg_warnings() as warned:
        resolved = train_mod.resolve_presence_head(cfg, masks)
    assert resolved.model.presence_head is False and resolved.model.presence_mode == "gate"
    assert any("presence mode 'classifier' applies to a presence head" in r.getMessage()
               for r in warned)
    with ultraseg_warnings() as warned:                  # the default mode: nothing to say
        train_mod.resolve_presence_head(preset("cpu"), masks)
    assert not warned


def test_the_auto_head_not_built_is_said_once_for_its_settings() -> None:
    """--presence-mode classifier and --presence-weight 3 under the cpu preset (presence_head
    'auto') on frames that all hold a structure: two warnings each said that 'auto' builds no
    head for these frames and that --presence-head on builds one. One says it, naming both
    settings the head not built ignores."""
    from conftest import ultraseg_warnings

    cfg = merge(preset("cpu"), {"model": {"presence_mode": "classifier"},
                                "train": {"presence_weight": 3.0}})
    with ultraseg_warnings() as warned:
        resolved = train_mod.resolve_presence_head(cfg, np.ones((20, 8, 8), bool))
    assert resolved.model.presence_head is False
    said = [r.getMessage() for r in warned if "presence" in r.getMessage()]
    assert len(said) == 1, said
    assert "'classifier'" in said[0] and "--presence-weight 3.0" in said[0], said
    assert "--presence-head on builds one" in said[0], said


@pytest.mark.parametrize("name", ["cpu", "seed", "demo"])
def test_a_presence_weight_the_auto_head_does_not_use_is_warned_about(name: str) -> None:
    """A config with presence_head 'auto' and a --presence-weight of its own, on frames that
    all hold a structure: the weight is ignored, and was said so only under the cpu preset
    (the one preset that sets a weight of its own)."""
    from conftest import ultraseg_warnings

    cfg = merge(preset(name), {"model": {"variant": "same", "presence_head": "auto"},
                               "train": {"presence_weight": 0.5}})
    with ultraseg_warnings() as warned:
        resolved = train_mod.resolve_presence_head(cfg, np.ones((20, 8, 8), bool))
    assert resolved.model.presence_head is False
    assert any("--presence-weight 0.5" in r.getMessage() for r in warned), name


def test_a_callers_grad_mode_and_default_dtype_change_nothing(tmp_path) -> None:
    """A notebook that turned gradients off for inference, or set float64 as torch's default
    dtype, got internal errors from train ('element 0 of tensors does not require grad'; float
    inputs against double weights), from prediction and from export, and train left a refused
    run's files behind. Both are the caller's, and left as they were."""
    from ultraseg.predict import load

    data = make_dataset(tmp_path / "data", n=12, size=32, seed=0)
    cfg = merge(preset("demo"), {
        "data": {"path": str(data), "cache_dir": ""},
        "model": {"width": 2, "depth": 2}, "preprocess": {"size": 32},
        "train": {"epochs": 1, "seed": 0, "device": "cpu", "precision": "fp32",
                  "num_threads": 1, "time_limit_s": None, "augment": "elastic"}})
    plain = train_mod.train(cfg, tmp_path / "plain")
    with torch.inference_mode():        # (enable_grad does not leave inference mode)
        in_inference = train_mod.train(cfg, tmp_path / "inference")
        assert torch.is_inference_mode_enabled()
    before = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        with torch.no_grad():
            result = train_mod.train(cfg, tmp_path / "run")
            assert not torch.is_grad_enabled()
        assert torch.get_default_dtype() == torch.float64
        # the same weights learnt: built in float64 and cast, the model drew other initial
        # weights, and the flips other draws, than the same seed gives the CLI
        for other in (result, in_inference):
            assert [(h["train_loss"], h["val_dice"]) for h in other.history] == \
                [(h["train_loss"], h["val_dice"]) for h in plain.history]
        predictor = load(tmp_path / "run" / "best.ckpt", device="cpu", precision="fp32")
        frame = np.asarray(Image.open(next((data / "images").iterdir())))
        assert predictor.predict_proba(frame).shape == frame.shape
        pytest.importorskip("onnxruntime")
        from ultraseg.export import export_onnx

        export_onnx(tmp_path / "run" / "best.ckpt", tmp_path / "m.onnx")
        onnx = load(tmp_path / "m.onnx")
        assert onnx.predict_proba(frame) == pytest.approx(predictor.predict_proba(frame),
                                                          abs=1e-4)
    finally:
        torch.set_default_dtype(before)
    assert result.epochs_run == 1


def test_a_callers_autocast_block_changes_nothing_in_training(tmp_path) -> None:
    """train(precision fp32) inside a notebook's torch.autocast("cpu", bfloat16) block trained
    in bf16 (other losses, other weights) while config.json recorded fp32. The run computes
    at the precision it records, the caller's block still open after."""
    data = make_dataset(tmp_path / "data", n=12, size=32, seed=0)
    cfg = merge(preset("demo"), {
        "data": {"path": str(data), "cache_dir": ""},
        "model": {"width": 8, "depth": 2}, "preprocess": {"size": 32},
        "train": {"epochs": 1, "seed": 0, "device": "cpu", "precision": "fp32",
                  "num_threads": 1, "time_limit_s": None}})
    plain = train_mod.train(cfg, tmp_path / "plain")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inside = train_mod.train(cfg, tmp_path / "inside")
        assert torch.is_autocast_enabled("cpu")
    assert [(h["train_loss"], h["val_loss"], h["val_dice"]) for h in inside.history] == \
        [(h["train_loss"], h["val_loss"], h["val_dice"]) for h in plain.history]
    for name in ("best.ckpt", "last.ckpt"):
        want = load_checkpoint(tmp_path / "plain" / name).state_dict
        got = load_checkpoint(tmp_path / "inside" / name).state_dict
        assert all(torch.equal(got[k], want[k]) for k in want), name
    recorded = json.loads((tmp_path / "inside" / "config.json").read_text())
    assert recorded["resolved"]["precision"] == "fp32"


def _finite(path: Path) -> bool:
    """Whether every floating tensor of the checkpoint at ``path`` is finite (read raw: a
    checkpoint with NaN/inf weights is refused by load_checkpoint)."""
    payload = torch.load(path, map_location="cpu", weights_only=True)
    return all(torch.isfinite(t).all() for t in payload["state_dict"].values()
               if t.is_floating_point())


def _error_line(err: str) -> str:
    """The one ``error:`` line of the CLI's stderr."""
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, err
    return lines[0]


@pytest.mark.parametrize("flags", [["--epochs", "3"], ["--epochs", "1"],
                                   ["--epochs", "1", "--val-fraction", "0"]],
                         ids=["3 epochs", "1 epoch", "no validation"])
def test_an_epoch_whose_last_step_leaves_inf_weights_diverges_and_saves_nothing(
        tmp_path, capsys, flags) -> None:
    """--lr 1e39 with one batch an epoch: the loss of that batch is finite, its step makes
    every weight inf, and only the next batch's loss was checked. The inf weights were
    validated (val loss nan) and saved as best.ckpt and last.ckpt, "the last good
    checkpoint" of the error; with --epochs 1 the run even exited 0, and predict, evaluate
    and export used them. Now the epoch is divergence: nothing is saved, the folder is left
    as a refused run leaves it, and the same command is accepted again."""
    run = tmp_path / "run"
    args = ["--lr", "1e39", "--batch-size", "64", *flags]
    assert _train_tiny(tmp_path, run, *args) == 2
    line = _error_line(capsys.readouterr().err)
    assert "training diverged" in line and "epoch 1" in line and "NaN/inf" in line, line
    assert "no epoch was saved" in line and "try a lower --lr" in line, line
    assert not (run / "best.ckpt").exists() and not (run / "last.ckpt").exists()
    assert not run.exists()         # nothing left: a run refused before its first epoch
    again = ["train", str(tmp_path / "data"), "--out", str(run), "--preset", "demo", "--width",
             "4", "--depth", "2", "--size", "32", "--device", "cpu", "--precision", "fp32",
             "--cache-dir", "", "--threads", "1", *args]    # _train_tiny's, on its frames
    assert cli.main(again) == 2     # diverges again; not refused as "holds a training run"
    assert "training diverged" in _error_line(capsys.readouterr().err)


def test_a_huge_learning_rate_never_leaves_a_checkpoint_with_inf_weights(tmp_path,
                                                                       capsys) -> None:
    """--lr 1e6: the training loss stayed finite while the weights blew up: epoch 1's
    validation loss was nan, and epoch 2 left batch-norm running variances inf in last.ckpt;
    the run exited 0, and every prediction was background. Whatever epoch it happens in,
    the run now stops as diverged and every checkpoint it leaves holds finite weights, the
    last one its error names."""
    run = tmp_path / "run"
    assert _train_tiny(tmp_path, run, "--lr", "1e6", "--batch-size", "64",
                       "--epochs", "3") == 2
    line = _error_line(capsys.readouterr().err)
    assert "training diverged" in line, line
    for name in ("best.ckpt", "last.ckpt"):
        assert not (run / name).exists() or _finite(run / name), name
    if (run / "last.ckpt").exists():
        epoch = load_checkpoint(run / "last.ckpt").train_state["epoch"]
        assert f"checkpoint (epoch {epoch}) is kept" in line, line


def test_a_nan_validation_loss_is_divergence(tmp_path, capsys, monkeypatch) -> None:
    """A validation loss of nan (the model's probabilities NaN) was recorded and the weights
    saved as any epoch's. Now it stops the run like a NaN training loss; the epoch before is
    the one kept."""
    real = train_mod.validate
    calls = []

    def validate(*args, **kwargs):
        loss, score = real(*args, **kwargs)
        calls.append(1)
        return (math.nan if len(calls) == 2 else loss), score

    monkeypatch.setattr(train_mod, "validate", validate)
    run = tmp_path / "run"
    assert _train_tiny(tmp_path, run, "--epochs", "3") == 2
    line = _error_line(capsys.readouterr().err)
    assert "training diverged: the validation loss is nan after epoch 2" in line, line
    assert "the last good checkpoint (epoch 1) is kept" in line, line
    assert load_checkpoint(run / "last.ckpt").train_state["epoch"] == 1
    assert len((run / "metrics.csv").read_text().splitlines()) == 2


def test_a_diverged_run_with_a_good_epoch_is_finished_from_it(tmp_path, capsys,
                                                              monkeypatch) -> None:
    """A run that diverged after a good epoch exited 2 with no report.html, chosen
    post-processing or figures, and --resume replayed the divergence. It now finishes as a
    time-limit stop does, from its best epoch: report.html says it stopped early, diverged,
    last.ckpt records the stop, and the exit stays 2 with an error naming best.ckpt; a
    resume of such a run interrupted while it finished trains nothing."""
    real, calls = train_mod.validate, []

    def validate(*args, **kwargs):
        loss, score = real(*args, **kwargs)
        calls.append(1)
        return (math.nan if len(calls) == 2 else loss), score

    monkeypatch.setattr(train_mod, "validate", validate)
    real_finish = train_mod._finish

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(train_mod, "_finish", interrupted)
    run = tmp_path / "run"
    assert _train_tiny(tmp_path, run, "--epochs", "3") == 130     # interrupted
    stopped = load_checkpoint(run / "last.ckpt").train_state["stopped"]
    assert stopped.startswith("training diverged: the validation loss is nan after epoch 2")
    assert "kept epoch 1" in stopped and "--lr" in stopped, stopped
    monkeypatch.setattr(train_mod, "_finish", real_finish)
    capsys.readouterr()
    assert cli.main(["train", "--resume", "--out", str(run)]) == 2
    assert len(calls) == 2          # nothing trained, nothing validated by epoch again
    line = _error_line(capsys.readouterr().err)
    assert "training diverged: the validation loss is nan after epoch 2" in line, line
    assert str(run / "best.ckpt") in line and "try a lower --lr" in line, line
    page = (run / "report.html").read_text()
    assert "training diverged" in page and "kept epoch 1" in page
    best = load_checkpoint(run / "best.ckpt")
    assert best.meta["metrics"]["stopped"] == stopped and best.meta["metrics"]["best_epoch"] == 1
    # resumed once it has finished, it still exits 2 saying it diverged (it said 'already
    # finished' with exit 0), rewriting nothing
    written = (run / "best.ckpt").stat().st_mtime_ns
    assert cli.main(["train", "--resume", "--out", str(run)]) == 2
    line = _error_line(capsys.readouterr().err)
    assert "training diverged: the validation loss is nan after epoch 2" in line, line
    assert "finished from epoch 1" in line and str(run / "best.ckpt") in line, line
    assert len(calls) == 2 and (run / "best.ckpt").stat().st_mtime_ns == written

    # a new run diverging so finishes at once
    calls.clear()
    again = tmp_path / "again"
    assert _train_tiny(tmp_path, again, "--epochs", "3") == 2
    line = _error_line(capsys.readouterr().err)
    assert str(again / "best.ckpt") in line and "the last good checkpoint (epoch 1)" in line
    assert (again / "report.html").is_file() and (again / "curve.png").is_file()
    assert load_checkpoint(again / "last.ckpt").train_state["stopped"].startswith(
        "training diverged")
    said = [t for t in (again / "train.log").read_text().splitlines() if "kept epoch" in t]
    assert said and all(t.count("epoch 1") == 1 for t in said), said   # the epoch kept, once


def test_inf_weights_after_a_later_epoch_name_the_epoch_saved(tmp_path, capsys,
                                                            monkeypatch) -> None:
    """The message said "the last good checkpoint (epoch E-1)" for any divergence in epoch E,
    assuming E-1 was saved and good. A running variance made inf by epoch 2's last step (the
    loss finite) now stops the run before epoch 2 is validated or saved; epoch 1 is kept."""
    real = train_mod.optimizer_step
    steps = []

    def step(optimizer, loss):
        real(optimizer, loss)
        steps.append(1)
        if len(steps) == 2:     # epoch 2's step (one batch an epoch)
            with torch.no_grad():
                bns[-1].running_var.fill_(math.inf)

    real_build = train_mod.build_model
    bns = []

    def build(cfg):     # (the last model built before training is the one trained)
        model = real_build(cfg)
        bns.append(next(m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)))
        return model

    monkeypatch.setattr(train_mod, "optimizer_step", step)
    monkeypatch.setattr(train_mod, "build_model", build)
    run = tmp_path / "run"
    assert _train_tiny(tmp_path, run, "--epochs", "3", "--batch-size", "64") == 2
    line = _error_line(capsys.readouterr().err)
    assert "training diverged" in line and "after epoch 2" in line, line
    assert "running_var" in line and "the last good checkpoint (epoch 1) is kept" in line, line
    assert load_checkpoint(run / "last.ckpt").train_state["epoch"] == 1
    assert _finite(run / "last.ckpt") and _finite(run / "best.ckpt")


def _validation_clock(monkeypatch, start: float = 0.0, grid_s: float = 3.0
                      ) -> tuple[list[float], list[int]]:
    """A clock for train's time limits that only prediction (a second a frame) and the
    post-processing grid (``grid_s`` a frame) move, from ``start``; returns it and the list
    each predicted frame appends to."""
    import ultraseg.postprocess as pp_mod
    from ultraseg.predict import Predictor

    clock, predicted = [start], []
    _train_clock(monkeypatch, lambda: clock[0])
    real_predict, real_add = Predictor.predict_proba_many, pp_mod.GridSearch.add

    def predict(self, images):
        for p in real_predict(self, images):
            clock[0] += 1.0
            predicted.append(1)
            yield p

    def add(self, probs, truth):
        clock[0] += grid_s
        return real_add(self, probs, truth)

    monkeypatch.setattr(Predictor, "predict_proba_many", predict)
    monkeypatch.setattr(pp_mod.GridSearch, "add", add)
    return clock, predicted


def test_the_choice_leaves_time_to_score_the_frames_after_it(tmp_path, monkeypatch) -> None:
    """The end of training reads, predicts and scores the validation frames a batch at a time.
    Where the choice waited for the deadline itself, the frames not read by then were read and
    predicted after it: 297 HC18 frames ran 11 s past a 60 s limit. On a clock that only
    prediction (a second a frame a pass) and the grid (three a frame) move, the choice now
    comes while another grid frame and the rest still fit, and the last frame is scored by the
    deadline; waiting for it, as before, ends at 31 s of 30."""
    clock, _ = _validation_clock(monkeypatch)
    cfg, predictor, samples = _validation_frames(tmp_path, 8)
    seen = finish._score_validation(predictor, samples, cfg, True, 30.0)
    assert clock[0] <= 30.0
    assert len(seen.scores) == 8 and all(0.0 <= d <= 1.0 for d in seen.scores)


def test_masks_of_several_labels_trained_as_their_union_are_warned_about(tmp_path) -> None:
    """Masks holding 0/1/2 (a lesion and its organ; or 255 as 'ignore') trained as one
    foreground without a word: neither stderr, train.log nor the report said so. A warning
    names the labels and --label, once at the start of training (a cache hit too), and the
    report's summary says what was trained; --label K, or binary masks, say nothing."""
    from conftest import ultraseg_warnings

    data = make_dataset(tmp_path / "data", n=4, size=32, seed=0)
    for k, path in enumerate(sorted((data / "masks").iterdir())):
        mask = (np.asarray(Image.open(path)) > 0).astype(np.uint8)
        mask[:4, :4] = 2 if k % 2 else 0
        Image.fromarray(mask).save(path)

    def run(name: str, **pre) -> list[str]:
        cfg = merge(preset("demo"), {
            "data": {"path": str(data), "cache_dir": str(tmp_path / "cache")},
            "model": {"width": 4, "depth": 1}, "preprocess": {"size": 32, **pre},
            "train": {"epochs": 1, "val_fraction": 0, "seed": 0, "device": "cpu",
                      "precision": "fp32", "num_threads": 1, "time_limit_s": None}})
        with ultraseg_warnings() as warned:
            train_mod.train(cfg, tmp_path / name)
        return [r.getMessage() for r in warned if "labels [1, 2]" in r.getMessage()]

    said = run("union")
    assert len(said) == 1 and "union" in said[0] and "--label K" in said[0], said
    assert "labels [1, 2] as one structure" in (tmp_path / "union" / "report.html").read_text()
    assert len(run("again")) == 1                        # from the cache
    assert run("one", label=1) == []


def test_a_warm_run_decodes_no_mask_where_the_label_hangs_on_a_0_255_masks_white(
        tmp_path, monkeypatch) -> None:
    """With --label 1 or 255, training decided a 0/255 mask's white over the set (io.label_set)
    before the cache lookup, decoding every mask on every run, a cache hit too (1.7-2.0 s for
    600 frames where the hit took 0.02 s): a cache hit decodes no mask, the entry keeping the
    white its build decided."""
    from conftest import decoded_masks

    data = make_dataset(tmp_path / "data", n=4, size=32, seed=0)
    decoded = decoded_masks(monkeypatch)
    for run in ("cold", "warm"):
        decoded.clear()
        cfg = merge(preset("demo"), {
            "data": {"path": str(data), "cache_dir": str(tmp_path / "cache")},
            "model": {"width": 4, "depth": 1}, "preprocess": {"size": 32, "label": 1},
            "train": {"epochs": 1, "val_fraction": 0, "seed": 0, "device": "cpu",
                      "precision": "fp32", "num_threads": 1, "time_limit_s": None}})
        train_mod.train(cfg, tmp_path / run)
        if run == "cold":
            assert decoded                                  # (the spy sees the build)
    assert decoded == []


def test_choosing_the_post_processing_reports_each_validation_frame(tmp_path) -> None:
    """Choosing the post-processing scores each validation frame at its original size (30 s a
    4000x3000 frame once, with nothing shown): the progress callback hears of each frame."""
    data = make_dataset(tmp_path / "data", n=20, size=32, seed=3)
    cfg = merge(preset("demo"), {
        "data": {"path": str(data), "cache_dir": ""},
        "model": {"width": 4, "depth": 2},
        "preprocess": {"size": 32},
        "train": {"epochs": 1, "batch_size": 4, "device": "cpu", "precision": "fp32",
                  "num_threads": 1, "time_limit_s": None}})
    events: list[dict] = []
    train_mod.train(cfg, tmp_path / "run", progress=events.append)
    n_val = len(json.loads((tmp_path / "run" / "split.json").read_text())["val"])
    frames = [e for e in events if e["event"] == "validation"]
    assert n_val and [e["frame"] for e in frames] == list(range(1, n_val + 1))
    assert all(e["frames"] == n_val and e["elapsed"] >= 0 for e in frames)
    stage = next(i for i, e in enumerate(events) if e["event"] == "stage"
                 and "post-processing" in e["message"])
    assert events.index(frames[0]) > stage
    # README's Python API lists each event's keys: they are the keys sent
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    said = {m[0]: {"event", *re.findall(r'"(\w+)"', m[1])}
            for m in re.findall(r'\{"event": "(\w+)"((?:,\s+"\w+")*)\}', readme)}
    assert set(said) == {"batch", "epoch", "stage", "validation"}, said
    for e in events:
        assert set(e) == said[e["event"]], e


def test_a_scan_filed_under_two_subjects_across_the_split_is_warned_about(tmp_path) -> None:
    """inspect named duplicate frames across subjects, but training split them onto two
    sides without a word (BUSI's split of seed 0: 59 near-copies between its sides). Training
    warns, naming the pair and its sides, and the report says the held-out Dice flatters the
    model where one frame of a pair trained."""
    from conftest import ultraseg_warnings

    data = make_dataset(tmp_path / "data", n=20, size=32, seed=0)     # subjects 1 and 2
    (data / "images" / "2_3.png").write_bytes((data / "images" / "1_5.png").read_bytes())
    cfg = merge(preset("demo"), {
        "data": {"path": str(data), "cache_dir": str(tmp_path / "cache")},
        "model": {"width": 4, "depth": 1}, "preprocess": {"size": 32},
        "train": {"epochs": 1, "val_fraction": 0, "test_fraction": 0.5, "seed": 0,
                  "device": "cpu", "precision": "fp32", "num_threads": 1,
                  "time_limit_s": None}})

    with ultraseg_warnings() as warned:
        train_mod.train(cfg, tmp_path / "run")
    said = [r.getMessage() for r in warned if "two sides of the split" in r.getMessage()]
    assert len(said) == 1 and "1 identical frame pair lies" in said[0], said
    assert "1_5 (train) = 2_3 (test)" in said[0] or "1_5 (test) = 2_3 (train)" in said[0]
    report = (tmp_path / "run" / "report.html").read_text()
    assert "copies across the split" in report and "flatters the model" in report
    # the held-out side is counted where a user reads (it was in split.json alone)
    assert ("10 training frames, 0 validation frames, 10 held out for testing (split by "
            "subject: 1 / 0 / 1 subjects)") in (tmp_path / "run" / "train.log").read_text()


def test_a_slow_first_step_does_not_stop_a_time_limited_run(tmp_path, monkeypatch) -> None:
    """Before its first validation a time-limited run guesses the validation's cost from its
    training steps, and guessed it from the first step alone: that step carries one-time
    set-up (3.5-5 s on two cores against 0.1 s for the rest), so a 3-minute nerve run
    reserved more than it had left and stopped after 1 of 165 batches, a third of its limit
    unused. The guess now takes the fastest step, and the first step stops a run only past
    the limit itself."""
    data = make_dataset(tmp_path / "data", n=40, size=32, seed=0)
    forward, calls = train_mod.forward_loss, []

    def slow_first(*a, **k):
        calls.append(1)
        if len(calls) == 1:
            time.sleep(4.0)          # a cold first step
        return forward(*a, **k)

    monkeypatch.setattr(train_mod, "forward_loss", slow_first)
    cfg = merge(preset("demo"), {
        "data": {"path": str(data), "cache_dir": ""},
        "model": {"width": 4, "depth": 1}, "preprocess": {"size": 32},
        "train": {"epochs": 2, "batch_size": 2, "seed": 0, "device": "cpu", "precision": "fp32",
                  "num_threads": 1, "time_limit_s": 20.0, "tune_postprocess": False}})
    result = train_mod.train(cfg, tmp_path / "run")
    assert result.history[0]["complete"], (len(calls), result.stopped)
    assert len(calls) > 1


# ------------------------------------------------------------------ what the report says
@pytest.fixture(scope="module")
def held_out_run(tmp_path_factory) -> tuple[Path, Path, str]:
    """``ultraseg train`` of a width-4 U-Net for one epoch on 60 phantom frames of 32 px (6
    subjects, empty frames among them) holding a test side out; (data, run folder, stdout)."""
    root = tmp_path_factory.mktemp("held-out")
    data = make_dataset(root / "data", n=60, size=32, seed=0)
    run = root / "run"
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        rc = cli.main(["train", str(data), "--out", str(run), "--preset", "demo", "--width", "4",
                       "--depth", "2", "--size", "32", "--epochs", "1", "--test-fraction", "0.2",
                       "--time-limit", "none", "--device", "cpu", "--precision", "fp32",
                       "--cache-dir", "", "--threads", "1"])
    assert rc == 0
    return data, run, out.getvalue()


def _summary_rows(run: Path) -> dict[str, str]:
    """The report's summary table: row name -> the text of its cell."""
    import html
    import re

    page = (run / "report.html").read_text().split("<h2>Figures")[0]
    return {html.unescape(k): html.unescape(v)
            for k, v in re.findall(r"<tr><th>(.*?)</th><td[^>]*>(.*?)</td></tr>", page)}


def test_the_report_s_summary_gives_the_post_processing_in_words(held_out_run) -> None:
    """The Summary table gave the post-processing as a JSON string, where the demo's
    Evaluation table below it gives the same settings in words."""
    _, run, _ = held_out_run
    pp = load_checkpoint(run / "best.ckpt").meta["postprocess"]
    row = _summary_rows(run)["post-processing"]
    assert "{" not in row and '"' not in row, row
    assert row.startswith(f"threshold {pp['threshold']}, min area {pp['min_area']}, "), row
    assert f"keep largest {'on' if pp['keep_largest'] else 'off'}" in row, row


def test_the_report_gives_the_non_empty_dice_and_the_empty_frames_beside_the_rule(
        held_out_run) -> None:
    """The report and the final console line gave the all-frames validation Dice alone, in
    which every empty frame predicted empty scores 1: a model that found nothing read 0.5.
    They now give the non-empty frames' Dice (as `evaluate` of the validation side has it),
    the empty frames predicted empty and the rule; the old rows stay."""
    data, run, out = held_out_run
    rows = _summary_rows(run)
    summary, per_image = evaluate(load(run / "best.ckpt", device="cpu", precision="fp32"), data,
                                  split_file=run / "split.json", subset="val")
    n_empty = sum(bool(r["truth_empty"]) for r in per_image)
    assert 0 < n_empty < len(per_image)              # the side has both kinds of frame
    right = round(summary["empty_correct_rate"] * n_empty)
    nonempty = float(rows["val Dice, non-empty frames (post-processed)"])
    assert nonempty == pytest.approx(summary["dice_nonempty_mean"], abs=1e-3)
    assert rows["empty validation frames predicted empty"] == f"{right} of {n_empty}"
    from ultraseg.metrics import EMPTY_RULE

    assert rows["empty rule"] == EMPTY_RULE
    from ultraseg.report import EPOCHS_TIME_ROW, RAW_DICE_ROW, RUN_TIME_ROW

    assert {"val Dice, post-processed", RAW_DICE_ROW, "best val Dice (canvas)",
            RUN_TIME_ROW, EPOCHS_TIME_ROW} <= set(rows)
    line = next(line for line in out.splitlines() if "non-empty frames" in line)
    assert f"{nonempty:.4f}" in line and f"predicted empty: {right} of {n_empty}" in line
    assert EMPTY_RULE in line
    metrics = load_checkpoint(run / "best.ckpt").meta["metrics"]
    assert metrics["val_empty_frames"] == n_empty
    assert metrics["val_empty_predicted_empty"] == right


def test_post_processing_that_leaves_nothing_on_any_validation_frame_is_warned_about() -> None:
    """The all-frames Dice of such a choice is the empty frames' alone: 0.5 on a side half
    empty, for a model that finds nothing."""
    from conftest import ultraseg_warnings

    seen = finish._Validation(PostprocessConfig(), 0.0, [1.0, 0.0, 1.0, 0.0], [0, 0, 0, 0],
                                 [True, False, True, False])
    assert finish._empty_figures(seen) == (0.0, 2, 2)
    with ultraseg_warnings() as warned:
        finish._warn_if_nothing_found(Path("run"), seen, PostprocessConfig(), 0.5)
    assert any("no validation frame has a structure predicted" in r.getMessage()
               and "0.5000" in r.getMessage() for r in warned)
    found = replace(seen, areas=[0, 3, 0, 0])
    with ultraseg_warnings() as warned:
        finish._warn_if_nothing_found(Path("run"), found, PostprocessConfig(), 0.5)
    assert not warned


def test_nothing_found_on_validation_frames_that_all_hold_a_structure_is_said_as_it_is() -> None:
    """With no empty validation frame the warning said the val Dice 0 was 'the empty frames'
    alone' (a review: ph20 at --lr 3): there were none; it now says every frame holds a
    structure and none was found."""
    from conftest import ultraseg_warnings

    seen = finish._Validation(PostprocessConfig(), 0.0, [0.0] * 3, [0] * 3, [False] * 3)
    with ultraseg_warnings() as warned:
        finish._warn_if_nothing_found(Path("run"), seen, PostprocessConfig(), 0.0)
    said = " ".join(r.getMessage() for r in warned)
    assert "empty frames" not in said and "each of the 3 validation frames holds" in said, said
    assert "0.0000" in said and "has not learnt" in said, said


def test_nothing_found_on_nearly_every_frame_that_holds_a_structure_is_warned_about() -> None:
    """The warning came only where not one pixel was predicted on any validation frame: a
    3-px speck on one frame, every lesion of 83 missed, was silent (a diagnostics review,
    D2). It now counts the frames holding a structure on which none is predicted, from 90 %
    of them, and words the rules (not PostprocessConfig's repr)."""
    from conftest import ultraseg_warnings

    seen = finish._Validation(PostprocessConfig(), 0.0, [0.0] * 100, [3] + [0] * 99,
                                 [False] * 83 + [True] * 17)
    with ultraseg_warnings() as warned:
        finish._warn_if_nothing_found(Path("run"), seen, PostprocessConfig(), 0.17)
    said = " ".join(r.getMessage() for r in warned)
    assert "no structure is predicted on 82 of the 83 validation frames that hold one" in said
    assert "PostprocessConfig(" not in said and "threshold 0.5" in said, said
    found = replace(seen, areas=[3] * 20 + [0] * 80)    # 20 of the 83 found: quiet
    with ultraseg_warnings() as warned:
        finish._warn_if_nothing_found(Path("run"), found, PostprocessConfig(), 0.3)
    assert not warned


def test_structures_missed_on_a_few_frames_are_not_called_unlearnt() -> None:
    """The rule of 90 % of the frames holding a structure fired on 1-3 such frames (a late
    run scores a sample of one batch): 'no structure is predicted on 2 of the 2 validation
    frames that hold one', though a model with a Dice of 0.7 misses 2 of 2 often enough (a
    re-read). It needs MIN_MISSED_FRAMES of them now, and a sample is said as one."""
    from conftest import ultraseg_warnings

    # 8 frames scored, 2 hold a structure, both missed; an empty one marked
    few = finish._Validation(PostprocessConfig(), 0.0, [0.0] * 8, [0, 0, 5] + [0] * 5,
                                [False] * 2 + [True] * 6)
    with ultraseg_warnings() as warned:
        finish._warn_if_nothing_found(Path("run"), few, PostprocessConfig(), 0.6)
    assert not warned, [r.getMessage() for r in warned]
    n = finish.MIN_MISSED_FRAMES     # as many missed: warned, the sample said as such
    sampled = finish._Validation(PostprocessConfig(), 0.0, [0.0] * 8, [0] * n + [5] * 3,
                                    [False] * n + [True] * 3, frames=list(range(n + 3)), of=40)
    with ultraseg_warnings() as warned:
        finish._warn_if_nothing_found(Path("run"), sampled, PostprocessConfig(), 0.2)
    said = " ".join(r.getMessage() for r in warned)
    assert f"on {n} of the {n} sampled validation frames that hold one" in said, said
    assert f"{n + 3} of the 40 frames scored" in said and "time limit had passed" in said, said
    # a sample whose 2 frames holding one are missed, nothing predicted anywhere: too few to
    # judge by, as where something is predicted (the floor held one branch alone before)
    bare = finish._Validation(PostprocessConfig(), 0.0, [0.0] * 8, [0] * 8,
                                 [False] * 2 + [True] * 6, frames=list(range(8)), of=40)
    with ultraseg_warnings() as warned:
        finish._warn_if_nothing_found(Path("run"), bare, PostprocessConfig(), 0.75)
    assert not warned, [r.getMessage() for r in warned]
    # all of the validation frames, not a sample: said as before
    whole = finish._Validation(PostprocessConfig(), 0.0, [0.0] * 8, [0] * 8,
                                  [False] * 2 + [True] * 6)
    with ultraseg_warnings() as warned:
        finish._warn_if_nothing_found(Path("run"), whole, PostprocessConfig(), 0.75)
    said = " ".join(r.getMessage() for r in warned)
    assert "no validation frame has a structure predicted" in said, said
    assert "with the post-processing chosen" in said, said
    # the defaults kept, not chosen (a time limit, or validation that cannot choose): not
    # said to be chosen
    with ultraseg_warnings() as warned:
        finish._warn_if_nothing_found(Path("run"), whole, PostprocessConfig(), 0.75,
                                         chosen=False)
    said = " ".join(r.getMessage() for r in warned)
    assert "post-processing applied (not chosen on validation)" in said, said
    assert "post-processing chosen" not in said, said


def test_a_model_that_marks_nearly_every_pixel_is_warned_about() -> None:
    """A model marking 100 % of every validation frame where the truth covered 1.5-7.5 %
    finished as a normal run (a diagnostics review, D2: --loss dice --lr 10). Where the
    predicted area is at least half the frame on 90 % of the validation frames while the
    structure covers much less, a warning says so."""
    from conftest import ultraseg_warnings

    n = 10
    seen = finish._Validation(PostprocessConfig(), 0.0, [0.05] * n, [4096] * n, [False] * n,
                                 truth_px=[150] * n, frame_px=[4096] * n)
    with ultraseg_warnings() as warned:
        finish._warn_if_nothing_found(Path("run"), seen, PostprocessConfig(), 0.05)
    (said,) = [r.getMessage() for r in warned]
    assert "at least half of the frame on 10 of the 10 validation frames" in said, said
    assert "PostprocessConfig(" not in said and "--lr" in said, said
    # a caller that takes no --lr (the demo, its time limit not the cause): none is named
    with ultraseg_warnings() as warned:
        finish._warn_if_nothing_found(Path("run"), seen, PostprocessConfig(), 0.05, flags=False)
    (said,) = [r.getMessage() for r in warned]
    assert "at least half of the frame" in said and "--lr" not in said, said
    for quiet in (replace(seen, truth_px=[3000] * n),            # the truth is as large
                  replace(seen, areas=[4096] * 5 + [150] * 5)):  # only half the frames
        with ultraseg_warnings() as warned:
            finish._warn_if_nothing_found(Path("run"), quiet, PostprocessConfig(), 0.5)
        assert not warned


@pytest.mark.parametrize("losses, said", [
    ([1.93, 25.0, 0.9], "rose from 1.93 (epoch 1) to 25 (epoch 2)"),
    ([23328.1, 55482.2, 70.3, 63.3], "reached 55,482 (epoch 2)"),
    ([1.9588, 1.9591, 1.9594, 1.9583], "hardly moved"),
    ([1.9, 1.5, 1.2, 1.1], None), ([1.9, 1.9], None), ([0.8, 5.0, 0.5], None)],
    ids=["rose 10x", "far too high", "flat", "learning", "two epochs", "rose 6x"])
def test_an_exploding_or_flat_training_loss_names_the_learning_rate(losses, said) -> None:
    """A training loss that rose to 12,000 times its start, or did not move over 4 epochs,
    was never mentioned unless it became NaN (a diagnostics review, D4)."""
    history = [{"epoch": i + 1, "train_loss": v} for i, v in enumerate(losses)]
    note = finish._loss_trend(history)
    if said is None:
        assert note is None, note
    else:
        assert note is not None and said in note and "--lr" in note, note


def test_nothing_found_after_a_loss_that_exploded_or_did_not_move_says_a_different_lr() -> None:
    """The remedy 'train longer, or on more frames' was wrong for a run whose loss exploded
    (--lr 1e3) or stood still (--lr 1e-9): it adds 'or a different --lr' where the loss did
    either (a diagnostics review, D4)."""
    from conftest import ultraseg_warnings

    seen = finish._Validation(PostprocessConfig(), 0.0, [0.0] * 3, [0] * 3, [False] * 3)
    for lr in (False, True):
        with ultraseg_warnings() as warned:
            finish._warn_if_nothing_found(Path("run"), seen, PostprocessConfig(), 0.0,
                                             lr=lr)
        (said,) = [r.getMessage() for r in warned]
        assert ("or a different --lr" in said) == lr, said


def test_a_run_whose_loss_does_not_move_says_so_in_its_log(tmp_path, capsys) -> None:
    """--lr 1e-9 over 3 epochs: the loss stands still; train.log and the report say so."""
    run = tmp_path / "run"
    assert _train_tiny(tmp_path, run, "--epochs", "3", "--lr", "1e-9") == 0
    assert "the training loss hardly moved" in (run / "train.log").read_text()
    assert "the training loss hardly moved" in (run / "report.html").read_text()


@pytest.mark.parametrize("best, run, said", [(1, 3, True), (34, 60, True), (2, 3, False),
                                             (90, 100, False), (3, 3, False)])
def test_epochs_after_the_last_improvement_are_said_beyond_a_margin(best, run, said) -> None:
    """Only curve.png showed that validation never improved after the kept epoch (a
    diagnostics review: epoch 1 of 3 kept, or 34 of 60); a line says so where the epochs
    after it are at least 2 and a quarter of those run."""
    note = finish._never_improved(best, [{"epoch": e, "complete": True}
                                            for e in range(1, run + 1)])
    assert (note is not None) == said, note
    if said:
        assert f"validation never improved after epoch {best} of {run}" in note, note


def test_an_epoch_the_time_limit_cut_short_is_not_counted_as_one_that_did_not_help() -> None:
    """A time-limited run's last epoch can be a few batches (complete False): best 6 of 8,
    the 8th a one-batch stub, read 'the last 2 epochs did not help' (a re-read). Only the
    complete epochs after the kept one count."""
    rows = [{"epoch": e, "complete": e < 8} for e in range(1, 9)]
    assert finish._never_improved(6, rows) is None
    rows = [{"epoch": e, "complete": e < 9} for e in range(1, 10)]     # 7 and 8 full
    note = finish._never_improved(6, rows)
    assert note is not None and "validation never improved after epoch 6 of 9" in note, note
    assert "2 full epochs after it" in note, note


def test_an_epoch_validated_on_a_sample_is_not_counted_as_one_that_did_not_help() -> None:
    """An epoch that ran all its batches but was validated on a sample (its validation
    started past the limit) can never be chosen, so it is no epoch that 'did not help'
    (a re-read of 9a2c62f): best 6 of 8, the 8th complete but scored on 2 of 10 frames."""
    rows = [{"epoch": e, "complete": True, "val_frames": 10 if e < 8 else 2}
            for e in range(1, 9)]
    assert finish._never_improved(6, rows, 10) is None
    rows[-1]["val_frames"] = 10
    assert finish._never_improved(6, rows, 10) is not None


def test_sampled_rows_reads_the_validation_side_s_size_where_it_is_given() -> None:
    """Training knows the validation side's size: a resumed older run whose rows lack
    val_frames, and whose one new epoch was sampled, reads that epoch as sampled (the most
    any row records is that sample itself) (a re-read of 9a2c62f)."""
    from ultraseg.report import sampled_rows

    rows = [{"epoch": 1}, {"epoch": 2, "val_frames": 2}]
    assert sampled_rows(rows) == [False, False]
    assert sampled_rows(rows, 10) == [False, True]


def test_the_report_says_validation_never_improved_after_the_kept_epoch(tmp_path,
                                                                       monkeypatch) -> None:
    """Epoch 1 of 3 kept: the report's summary says the later epochs did not help."""
    calls = []

    def first_only(*args) -> bool:
        calls.append(1)
        return len(calls) == 1

    monkeypatch.setattr(train_mod, "improves", first_only)
    run = tmp_path / "run"
    assert _train_tiny(tmp_path, run, "--epochs", "3") == 0
    row = _summary_rows(run)["best epoch"]
    assert row.startswith("1") and "validation never improved after epoch 1 of 3" in row, row


def test_the_report_counts_the_frames_and_subjects_of_every_side_the_held_out_one_too(
        held_out_run) -> None:
    """The row read "frames (train / val) 30 / 10": the 20 frames held out for testing, the
    subjects on each side and how to score the held-out frames were nowhere on the page."""
    _, run, _ = held_out_run
    doc = json.loads((run / "split.json").read_text())
    assert doc["test"] and doc["test_subjects"]
    counts = [f"{len(doc[k])} ({len(doc[f'{k}_subjects'])} subject"
              + ("s" if len(doc[f"{k}_subjects"]) > 1 else "") for k in ("train", "val", "test")]
    row = _summary_rows(run)["frames (train / val / test)"]
    assert row.startswith(f"{counts[0]}) / {counts[1]}) / {counts[2]}; not used in training")
    assert f"--split {run / 'split.json'} --subset test" in row
    assert (f"in Python, evaluate('{run / 'best.ckpt'}', DATA, split_file='{run / 'split.json'}'"
            ", subset='test')") in row


def test_the_report_s_held_out_commands_paste_as_written(tmp_path) -> None:
    """The held-out row's `ultraseg evaluate RUN/best.ckpt DATA --split RUN/split.json` put
    the run folder in raw: a folder with a space or a quote broke the pasted command (and
    the Python call's string)."""
    import ast

    from conftest import pasted

    out = tmp_path / "r h's"
    row = finish._frames_row(out, ["a", "b", "c"], np.array([0]), np.array([1]),
                                np.array([2]))
    assert pasted(row) == ["ultraseg", "evaluate", str(out / "best.ckpt"), "DATA", "--split",
                           str(out / "split.json"), "--subset", "test"], row
    call = ast.parse(row.split("in Python, ", 1)[1][:-1], mode="eval").body
    assert isinstance(call, ast.Call) and ast.literal_eval(call.args[0]) == str(out / "best.ckpt")
    assert ast.literal_eval(call.keywords[0].value) == str(out / "split.json"), row


def test_a_validation_side_without_empty_frames_says_so(capsys) -> None:
    """Where no validation frame is empty, train's last lines said 'empty validation frames
    predicted empty: 0 of 0'."""
    from ultraseg.cli_run import _print_empty_figures

    result = train_mod.TrainResult(Path("run"), 1, 0.8, 1, 1.0, None, [],
                                   val_dice_nonempty=0.8, val_empty_frames=0, val_empty_right=0)
    _print_empty_figures(result)
    line = capsys.readouterr().out
    assert "no validation frame is empty" in line and "0 of 0" not in line, line


def test_masks_that_look_inverted_are_warned_about(tmp_path) -> None:
    """Masks drawn black on white trained on the background, without a word, and scored
    well. A warning says so at the start of training, once, and again on a cache hit."""
    from conftest import ultraseg_warnings

    data = make_dataset(tmp_path / "data", n=4, size=32, seed=0)
    for path in sorted((data / "masks").iterdir()):
        mask = np.asarray(Image.open(path))
        Image.fromarray((mask == 0).astype(np.uint8) * 255).save(path)
    cfg = merge(preset("demo"), {
        "data": {"path": str(data), "cache_dir": str(tmp_path / "cache")},
        "model": {"width": 4, "depth": 1}, "preprocess": {"size": 32},
        "train": {"epochs": 1, "val_fraction": 0, "seed": 0, "device": "cpu",
                  "precision": "fp32", "num_threads": 1, "time_limit_s": None}})
    for k in range(2):          # built, then a cache hit: said once both times
        with ultraseg_warnings() as warned:
            train_mod.train(cfg, tmp_path / f"run{k}")
        said = [r.getMessage() for r in warned if "inverted" in r.getMessage()]
        assert len(said) == 1 and "4 of the 4 masks" in said[0], [r.getMessage() for r in warned]


def _inverted_run_config(tmp_path, data):
    return merge(preset("demo"), {
        "data": {"path": str(data), "cache_dir": ""},
        "model": {"width": 4, "depth": 1}, "preprocess": {"size": 32},
        "train": {"epochs": 2, "val_fraction": 0, "seed": 0, "device": "cpu",
                  "precision": "fp32", "num_threads": 1, "time_limit_s": None}})


def _invert_masks(data) -> None:
    for path in sorted((data / "masks").iterdir()):
        mask = np.asarray(Image.open(path))
        Image.fromarray((mask == 0).astype(np.uint8) * 255).save(path)


def _warnings_section(page: str) -> str:
    return page[page.index("<h2>Warnings</h2>"):page.index("<h2>Summary</h2>")]


def test_the_report_shows_the_warnings_training_gave(tmp_path) -> None:
    """report.html left out the warnings training gave ('6 of the 6 masks look inverted' beside
    a val Dice of 0.97; 'val Dice 0.8 is the empty frames' alone'), though they change what its
    numbers mean: a user reading the page later could not see them. It now shows them, each
    once, in a section before the summary; best.ckpt keeps them, so a page written again
    from it shows them too. A run that warned nothing has no such section."""
    from conftest import ultraseg_warnings

    clean = make_dataset(tmp_path / "clean", n=4, size=32, seed=0)
    with ultraseg_warnings() as warned:
        train_mod.train(_inverted_run_config(tmp_path, clean), tmp_path / "clean_run")
    assert not warned, [r.getMessage() for r in warned]
    assert "Warnings" not in (tmp_path / "clean_run" / "report.html").read_text()

    data = make_dataset(tmp_path / "data", n=4, size=32, seed=0)
    _invert_masks(data)
    run = tmp_path / "run"
    result = train_mod.train(_inverted_run_config(tmp_path, data), run)
    section = _warnings_section((run / "report.html").read_text())
    assert section.count("<li>") == 1 and "4 of the 4 masks look inverted" in section
    said = load_checkpoint(run / "best.ckpt").meta["metrics"]["warnings"]
    assert len(said) == 1 and "4 of the 4 masks look inverted" in said[0]
    assert result.warnings == said
    (run / "report.html").unlink()                  # stopped while it was written
    train_mod.train(None, run, resume=True)
    assert _warnings_section((run / "report.html").read_text()) == section


def test_a_resumed_run_s_report_keeps_the_warnings_given_before_it_was_interrupted(
        tmp_path) -> None:
    """A resumed run's report shows the warnings of the process that trained its first
    epochs (last.ckpt records them) with its own, each once."""
    data = make_dataset(tmp_path / "data", n=4, size=32, seed=0)
    _invert_masks(data)
    run = tmp_path / "run"

    def stop(event) -> None:
        if event.get("event") == "epoch":
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_mod.train(_inverted_run_config(tmp_path, data), run, progress=stop)
    assert not (run / "report.html").exists()
    assert "4 of the 4 masks look inverted" in " ".join(
        load_checkpoint(run / "last.ckpt").train_state["warnings"])
    for path in sorted((data / "masks").iterdir()):         # set right: no longer said
        mask = np.asarray(Image.open(path))
        Image.fromarray((mask == 0).astype(np.uint8) * 255).save(path)
    train_mod.train(None, run, resume=True)
    section = _warnings_section((run / "report.html").read_text())
    assert section.count("<li>") == 1 and "4 of the 4 masks look inverted" in section


def test_warnings_given_before_the_run_s_log_opens_reach_train_log_and_the_report(
        tmp_path) -> None:
    """The warnings a run gives while its folder and config are worked out (a setting the run
    ignores; a resumed run's data moved, or its recipe's idle flags dropped) were shown on the
    console but reached neither train.log nor report.html's Warnings section: the log opened
    after them. They now reach both, once each, at the time they were given."""
    from conftest import ultraseg_warnings

    data = make_dataset(tmp_path / "data", n=4, size=32, seed=0)
    cfg = merge(_inverted_run_config(tmp_path, data), {"train": {"split_seed": 3}})
    run = tmp_path / "run"
    with ultraseg_warnings() as warned:
        result = train_mod.train(cfg, run)
    said = [r.getMessage() for r in warned]
    assert sum("train.split_seed (--split-seed) 3" in m for m in said) == 1, said
    log_text = (run / "train.log").read_text()
    assert log_text.count("train.split_seed (--split-seed) 3") == 1, log_text
    assert log_text.index("split_seed") < log_text.index("epoch 1")
    section = _warnings_section((run / "report.html").read_text())
    assert section.count("train.split_seed (--split-seed) 3") == 1
    assert any("train.split_seed (--split-seed) 3" in w for w in result.warnings)


def test_metrics_csv_ends_its_lines_with_lf(tmp_path) -> None:
    """metrics.csv came out CRLF (the csv module's default) while measurements.csv is LF."""
    train_mod._write_metrics(tmp_path / "metrics.csv",
                             [{"epoch": 1, "train_loss": 0.5, "val_loss": 0.4, "val_dice": 0.6,
                               "lr": 1e-3, "seconds": 1.0, "complete": True}])
    text = (tmp_path / "metrics.csv").read_bytes()
    assert b"\r" not in text and text.count(b"\n") == 2


def test_a_train_log_that_cannot_be_written_leaves_the_refusal_and_its_clean_up(tmp_path,
                                                                              capsys,
                                                                              monkeypatch):
    """A full disk under train.log: the close of the file raised a bare OSError in place of
    the run's own error, so the clean-up of a refused run (which takes UltrasegErrors) was
    skipped and config.json and the output marker stayed; stderr held a traceback per
    record."""
    data = make_dataset(tmp_path / "data", n=8, size=32, seed=0)
    cfg = merge(preset("demo"), {"data": {"path": str(data), "cache_dir": None},
                                 "preprocess": {"size": 32}, "model": {"width": 4},
                                 "train": {"epochs": 1, "val_fraction": 0.0}})
    run = tmp_path / "run"
    run.mkdir()
    (run / "train.log").symlink_to("/dev/full")

    def refused(*args, **kwargs):
        raise UltrasegError("refused", run / "split.json")

    monkeypatch.setattr(train_mod, "load_arrays", refused)
    with pytest.raises(UltrasegError, match="refused"):
        train_mod.train(cfg, run)
    assert sorted(p.name for p in run.iterdir()) == ["train.log"]   # (the user's link)
    assert "Logging error" not in capsys.readouterr().err


def test_a_full_disk_after_an_epoch_was_saved_says_resume_goes_on(tmp_path, capsys,
                                                                  monkeypatch) -> None:
    """A full disk at epoch 2's checkpoint stopped the run with the write's error alone,
    though last.ckpt and metrics.csv were in order and `train --resume` went on once there
    was room (SIGTERM's message says so). A full disk before any epoch was saved says
    nothing of resuming: there is nothing to resume."""
    import errno

    from ultraseg.fileio import write_error

    real = train_mod.save_checkpoint

    def full_after_epoch_1(path, *args, **kwargs):
        if (Path(path).parent / "last.ckpt").exists():
            raise write_error(OSError(errno.ENOSPC, "No space left on device"), path)
        return real(path, *args, **kwargs)

    monkeypatch.setattr(train_mod, "save_checkpoint", full_after_epoch_1)
    run = tmp_path / "run"
    assert _train_tiny(tmp_path, run, "--epochs", "2") == 2
    line = _error_line(capsys.readouterr().err)
    assert "no space left on the device" in line, line
    assert f"`ultraseg train --resume --out {run}` goes on from the last saved epoch" in line, line
    def full(path, *args, **kwargs):
        raise write_error(OSError(errno.ENOSPC, "No space left on device"), path)

    monkeypatch.setattr(train_mod, "save_checkpoint", full)    # epoch 1's fails: none saved
    args = ["train", str(tmp_path / "data"), "--out", str(tmp_path / "first"), "--preset",
            "demo", "--width", "4", "--depth", "2", "--size", "32", "--device", "cpu",
            "--precision", "fp32", "--cache-dir", "", "--threads", "1", "--epochs", "2"]
    assert cli.main(args) == 2                          # (_train_tiny's, on its frames)
    line = _error_line(capsys.readouterr().err)
    assert "no space left on the device" in line and "--resume" not in line, line


@pytest.mark.parametrize("raised", [
    MemoryError("Unable to allocate 1.2 GiB for an array"),
    RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 7.79 GiB total)")])
def test_running_out_of_memory_after_an_epoch_was_saved_says_resume_goes_on(
        tmp_path, capsys, monkeypatch, raised) -> None:
    """Out of memory in epoch 2 stopped the run with the settings that need less alone,
    though last.ckpt held epoch 1 and `train --resume` goes on from it once the memory is free
    (Ctrl-C's, a full disk's and a peer's failure's messages say so). Before any epoch was
    saved there is nothing to resume, and it says nothing of resuming."""
    real = train_mod.optimizer_step

    def out_of_memory_after_epoch_1(optimizer, loss):
        if (run / "last.ckpt").exists():
            raise raised
        return real(optimizer, loss)

    monkeypatch.setattr(train_mod, "optimizer_step", out_of_memory_after_epoch_1)
    run = tmp_path / "run"
    assert _train_tiny(tmp_path, run, "--epochs", "2") == 2
    line = _error_line(capsys.readouterr().err)
    assert line.startswith("error: out of memory (") and "--batch-size needs less" in line, line
    assert f"`ultraseg train --resume --out {run}` goes on from the last saved epoch" in line, line
    assert len((run / "metrics.csv").read_text().splitlines()) == 2     # header, epoch 1

    def out_of_memory(optimizer, loss):                 # in epoch 1: nothing saved
        raise raised

    monkeypatch.setattr(train_mod, "optimizer_step", out_of_memory)
    run = tmp_path / "first"
    assert _train_tiny(tmp_path, run, "--epochs", "2") == 2
    line = _error_line(capsys.readouterr().err)
    assert line.startswith("error: out of memory (") and "--resume" not in line, line
    assert not run.exists()


def test_the_refusals_a_notebook_meets_name_the_config_setting_beside_the_flag() -> None:
    """Seen through train.train(cfg, out), these named only CLI flags ('use --size 52',
    '--size at least 32, or a smaller --depth', '--batch-dice ... --loss bce has none'); they
    name the setting as check_config does (train.epochs (--epochs)) (a review)."""
    images = np.zeros((1, 50, 50), np.uint8)
    arrays = Arrays(images, images.copy(), ("a",), ("s",))
    with pytest.raises(UltrasegError, match=r"preprocess\.size \(--size\) 64"):
        Batches(arrays, np.array([0]), _cfg(variant="same", depth=4, size=50))
    with pytest.raises(UltrasegError, match=r"preprocess\.size \(--size\) at least 32, or a "
                                            r"smaller model\.depth \(--depth\)"):
        train_mod.check_working_size(ModelConfig(variant="same", depth=4), 16)
    cfg = replace(_cfg(), train=TrainConfig(loss="bce", batch_dice=True),
                  data=DataConfig(path="data"))
    with pytest.raises(UltrasegError, match=r"train\.batch_dice \(--batch-dice\) shapes .* "
                                            r"train\.loss \(--loss\) bce has none: use "
                                            r"train\.loss \(--loss\) bce\+dice"):
        train_mod.check_config(cfg)


@pytest.mark.parametrize("variant, tile, size, words", [
    ("valid", 68, 64, "smaller than the output tile 68"),
    ("same", 68, 50, "divisible by 16"),
])
def test_a_working_size_the_model_cannot_take_is_refused_before_the_data_is_read(
        variant, tile, size, words) -> None:
    """`train d --model valid --size 64` read and cached the dataset and drew the split before
    'working size 64 is smaller than the output tile 68' (and a 'same' model's size not
    divisible by 2**depth alike), though --size was given: check_config refuses both, as it
    refuses a bottleneck of one pixel (a fresh-eyes read)."""
    cfg = replace(_cfg(variant=variant, depth=4, tile=tile, size=size),
                  data=DataConfig(path="data"))
    with pytest.raises(UltrasegError, match=words):
        train_mod.check_config(cfg)


def test_a_working_size_no_checkpoint_loads_at_is_refused_before_training() -> None:
    """check_config took --size 32768 (a multiple of 2**depth), and the run's checkpoints
    were then refused by load_checkpoint as 'damaged checkpoint metadata (preprocess.size must
    be a whole number from 1 to 16384 ...)': its resume and evaluate could not load them (a
    re-read). Refused up front, naming the setting and the flag."""
    from ultraseg.config import MAX_SIZE

    with pytest.raises(UltrasegError, match=rf"preprocess\.size \(--size\) must be a whole "
                                            rf"number from 1 to {MAX_SIZE}, got {2 * MAX_SIZE}"):
        _cfg(variant="same", depth=4, size=2 * MAX_SIZE)    # (refused as the section is built)
    cfg = replace(_cfg(variant="same", depth=4, size=MAX_SIZE), data=DataConfig(path="d"))
    train_mod.check_config(cfg)


@pytest.mark.parametrize("depth, size", [(4, 64), (1, 16), (2, 30)])
def test_a_valid_tile_larger_than_the_working_size_is_refused_with_the_tile_that_fits(
        depth, size) -> None:
    """'working size 64 is smaller than the output tile 68' named no way out (a review); it
    names the largest tile the model can output that fits, and that tile trains."""
    images = np.zeros((1, size, size), np.uint8)
    arrays = Arrays(images, images.copy(), ("a",), ("s",))
    with pytest.raises(UltrasegError, match="smaller than the output tile") as e:
        Batches(arrays, np.array([0]), _cfg(depth=depth, tile=size + 4, size=size))
    tile = int(re.search(r"model\.tile \(--tile\) (\d+)", str(e.value)).group(1))
    assert f"preprocess.size (--size) at least {size + 4}" in str(e.value)
    batches = Batches(arrays, np.array([0]), _cfg(depth=depth, tile=tile, size=size))  # followed
    x, y = next(iter(batches.epoch(np.random.default_rng(0))))
    assert y.shape[-1] == tile and tile > size - 2 ** depth


def test_the_end_of_training_says_what_the_chosen_rules_would_change_of_perfect_masks(
        tmp_path) -> None:
    """How many validation masks the chosen post-processing would change were they predicted
    perfectly (a ceiling the choice never showed: on BUSI keep-largest and min-area delete
    true second lesions), the rules named, and a warning where keep-largest is chosen on
    masks holding more than one structure. The validation keeps only the masks a rule could
    change (cropped), none of the frames."""
    from conftest import ultraseg_warnings
    from scipy import ndimage

    from ultraseg.io.masks import select_label
    from ultraseg.postprocess import changes_to_truth

    cfg, predictor, samples = _validation_frames(tmp_path, 6)
    truths = [select_label(s.load()[1], cfg.preprocess.label) for s in samples]
    two = tmp_path / "two.png"          # a second structure beside the first frame's
    second = truths[0].copy()
    second[1:3, 1:3] = True
    assert (ndimage.label(second, np.ones((3, 3)))[1]
            == ndimage.label(truths[0], np.ones((3, 3)))[1] + 1)
    Image.fromarray(second.astype(np.uint8) * 255).save(two)
    samples[0] = replace(samples[0], mask_paths=(two,))
    truths[0] = second
    seen = finish._score_validation(predictor, samples, cfg, True, None)
    largest = PostprocessConfig(keep_largest=True, min_area=3)
    changed = [bool(changes_to_truth(t, largest)) for t in truths]
    n_parts = [ndimage.label(t, np.ones((3, 3)))[1] for t in truths]
    assert any(changed) and sum(n > 1 for n in n_parts) >= 1
    with ultraseg_warnings() as warned:
        row = finish._perfect_ceiling(seen, largest)
    assert (f"would change {sum(changed)} of 6 validation masks even if predicted perfectly"
            in row), row
    assert "keep-largest drops a second structure" in row, row
    said = " ".join(r.getMessage() for r in warned)
    dropped = sum("keep-largest" in changes_to_truth(t, largest) for t in truths)
    assert dropped >= 1 and (f"on {dropped} of the 6 validation masks it drops a second "
                             "structure") in said, said
    with ultraseg_warnings() as warned:
        assert finish._perfect_ceiling(seen, PostprocessConfig()) is None
    assert not warned


def test_a_post_processing_that_changes_no_true_mask_says_so_plainly() -> None:
    """'changes none of the 60 validation masks predicted perfectly' was read (a review of a
    demo whose every frame was half marked) as a count of the masks the network predicted
    perfectly, none. It is the rules applied to the true masks: the line says that."""
    said: list[str] = []
    handler = logging.Handler(logging.INFO)
    handler.emit = lambda r: said.append(r.getMessage())       # type: ignore[method-assign]
    logger = logging.getLogger(finish.log.name)
    logger.addHandler(handler)
    level = logger.level
    logger.setLevel(logging.INFO)
    try:
        seen = finish._Validation(PostprocessConfig(), 0.5, [0.5] * 3, [1] * 3, [False] * 3,
                                  truth_parts=[1, 1, 1], changeable=[])
        assert finish._perfect_ceiling(seen, PostprocessConfig()) is None
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    assert said == ["the chosen post-processing, applied to the 3 true validation masks, "
                    "changes none of them: it costs a perfect prediction nothing"]


def test_keep_largest_is_not_said_to_lose_a_structure_that_hole_filling_keeps() -> None:
    """The end of training warned 'a second one is lost' of every validation mask of more than
    one structure where keep-largest was chosen, also of a ring whose hole holds an island,
    which keep-largest with fill-holes keeps, filled in (a re-read, item 4). It counts the
    masks keep-largest does change."""
    from conftest import ultraseg_warnings

    ring = np.zeros((30, 30), bool)
    ring[5:25, 5:25] = True
    ring[7:23, 7:23] = False
    ring[12:18, 12:18] = True           # an island in the ring's hole: 2 structures
    two = np.zeros((30, 30), bool)
    two[2:12, 2:12] = True
    two[20:24, 20:24] = True            # a second structure beside the first: dropped
    seen = finish._Validation(PostprocessConfig(), 0.0, [], [], [], truth_parts=[2, 2],
                                 changeable=[ring, two])
    with ultraseg_warnings() as warned:
        finish._perfect_ceiling(seen, PostprocessConfig(keep_largest=True, fill_holes=True))
    said = " ".join(r.getMessage() for r in warned)
    assert "on 1 of the 2 validation masks it drops a second structure" in said, said


def test_a_run_that_chooses_keep_largest_on_masks_of_two_structures_says_so(
        tmp_path, monkeypatch) -> None:
    """train.log and report.html's post-processing row say what the choice would change of
    perfectly predicted validation masks, and train.log warns of keep-largest chosen where
    masks hold two structures (phantom subject 2's frames do; the choice is made
    keep-largest here, whatever the tiny model would choose)."""
    import ultraseg.postprocess as pp_mod

    chosen = PostprocessConfig(threshold=0.5, keep_largest=True)
    monkeypatch.setattr(pp_mod.GridSearch, "choose", lambda self, *a, **k: (chosen, 0.5))
    assert _train_tiny(tmp_path, tmp_path / "run", "--epochs", "1") == 0
    log_text = (tmp_path / "run" / "train.log").read_text()
    assert "validation masks it drops a second structure" in log_text, log_text
    said = re.search(r"would change (\d+) of (\d+) validation masks even if predicted "
                     r"perfectly \(keep-largest drops a second structure on \d+\)", log_text)
    assert said and int(said[1]) >= 1, log_text
    row = _summary_rows(tmp_path / "run")["post-processing"]
    assert row.endswith(f"; {said[0]}"), row


def test_a_validation_side_of_few_frames_is_warned_about_in_the_log_and_the_report(
        tmp_path) -> None:
    """A split whose validation side held two frames chose the kept epoch and the
    post-processing on them without a word, a choice that is mostly noise. A warning names the
    count and --val-fraction, which enlarges it; it reaches train.log and the report as the
    run's other warnings do, and a resumed run's report says it once."""
    from conftest import ultraseg_warnings

    data = make_dataset(tmp_path / "data", n=12, size=32, seed=0)  # subjects of 10 and 2 frames
    cfg = merge(preset("demo"), {
        "data": {"path": str(data), "cache_dir": None},
        "model": {"width": 4, "depth": 1}, "preprocess": {"size": 32},
        "train": {"epochs": 1, "val_fraction": 0.2, "seed": 3, "device": "cpu",
                  "precision": "fp32", "num_threads": 1, "time_limit_s": None}})
    run = tmp_path / "run"      # (seed 3 draws the subject of 2 frames for validation)
    with ultraseg_warnings() as warned:
        result = train_mod.train(cfg, run)
    said = [r.getMessage() for r in warned if "validation frames choose" in r.getMessage()]
    assert len(said) == 1, [r.getMessage() for r in warned]
    assert "only 2 validation frames choose" in said[0] and "--val-fraction" in said[0]
    assert "(now 0.2" in said[0]
    assert any("only 2 validation frames choose" in w for w in result.warnings)
    assert "only 2 validation frames choose" in (run / "train.log").read_text()
    section = _warnings_section((run / "report.html").read_text())
    assert section.count("only 2 validation frames choose") == 1
    (run / "report.html").unlink()
    train_mod.train(None, run, resume=True)
    assert _warnings_section((run / "report.html").read_text()) == section


def test_a_split_of_two_subjects_is_warned_about(tmp_path) -> None:
    """A dataset of 2 subjects (a clinic's export split by date) put 1 of the 2, half the
    frames against the 0.2 asked, in validation with no remark (the share was logged at INFO
    only): the epoch and post-processing were chosen on one patient, training saw the other."""
    from conftest import ultraseg_warnings

    data = make_dataset(tmp_path / "data", n=20, size=32, seed=0)      # 2 subjects of 10
    cfg = merge(preset("demo"), {
        "data": {"path": str(data), "cache_dir": None},
        "model": {"width": 4, "depth": 1}, "preprocess": {"size": 32},
        "train": {"epochs": 1, "val_fraction": 0.2, "seed": 0, "device": "cpu",
                  "precision": "fp32", "num_threads": 1, "time_limit_s": None}})
    with ultraseg_warnings() as warned:
        result = train_mod.train(cfg, tmp_path / "run")
    said = [r.getMessage() for r in warned if "of the 2 subjects" in r.getMessage()]
    assert len(said) == 1, [r.getMessage() for r in warned]
    assert "validation holds 1 of the 2 subjects (10 of 20 frames" in said[0], said[0]
    assert "--val-fraction 0" in said[0]
    assert any("of the 2 subjects" in w for w in result.warnings)


@pytest.mark.parametrize("val, split, warns", [(1, 2, True), (1, 3, False), (2, 4, False),
                                               (0, 2, False)])
def test_few_subjects_are_said_where_the_split_holds_two(val, split, warns) -> None:
    assert (few_subjects_note(val, split, 10, 20) is not None) == warns


@pytest.mark.parametrize("frames, warns", [(1, True), (4, True), (5, False), (0, False)])
def test_few_validation_frames_are_said_below_five(frames, warns) -> None:
    """The note on a small validation side: below five frames, none without validation."""
    note = few_validation_note(frames, 1, 0.2)
    assert (note is not None) == warns
    if warns:
        assert f"only {frames} validation frame" in note


def test_config_json_records_what_device_precision_and_threads_resolved_to(tmp_path) -> None:
    """config.json kept train.device, precision and num_threads as given ('auto', None), so a
    reader could not tell what the run ran on. They stay as given (a resume on another machine
    resolves them anew), and a 'resolved' block beside the sections says what they became;
    the file loads as the config it records, and one without the block (an older run's) too."""
    from ultraseg.config import RunConfig
    from ultraseg.runtime import cpu_has_bf16

    data = make_dataset(tmp_path / "data", n=4, size=32, seed=0)
    cfg = merge(preset("demo"), {
        "data": {"path": str(data), "cache_dir": None},
        "model": {"width": 4, "depth": 1}, "preprocess": {"size": 32},
        "train": {"epochs": 1, "val_fraction": 0, "seed": 0, "device": "cpu",
                  "precision": "auto", "num_threads": None, "time_limit_s": None}})
    run = tmp_path / "run"

    def stop(event) -> None:
        if event.get("event") == "epoch":
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_mod.train(replace(cfg, train=replace(cfg.train, epochs=2)), run, progress=stop)
    doc = json.loads((run / "config.json").read_text())
    assert doc["train"]["precision"] == "auto" and doc["train"]["num_threads"] is None
    resolved = {"device": "cpu", "precision": "bf16" if cpu_has_bf16() else "fp32",
                "num_threads": torch.get_num_threads()}
    assert doc["resolved"] == resolved
    # resumed where they resolve otherwise (another machine): the block says what ran now
    doc["resolved"] = {**resolved, "device": "cuda:0", "num_threads": 64}
    (run / "config.json").write_text(json.dumps(doc))
    train_mod.train(None, run, resume=True)
    doc = json.loads((run / "config.json").read_text())
    assert doc["resolved"] == resolved
    loaded = RunConfig.load(run / "config.json")
    assert loaded.train.precision == "auto" and loaded.train.device == "cpu"
    assert merge(preset("cpu"), doc) == loaded          # as train --config RUN/config.json
    del doc["resolved"]                                  # an older run's config.json
    (run / "config.json").write_text(json.dumps(doc))
    assert RunConfig.load(run / "config.json") == loaded


@pytest.mark.parametrize("deadline,n_chosen", [(20.0, None), (80.0, 10)],
                         ids=["too-few", "enough"])
def test_a_choice_the_time_limit_cuts_to_a_few_frames_keeps_the_defaults(
        tmp_path, monkeypatch, deadline, n_chosen) -> None:
    """Where the time limit cut the post-processing choice to fewer than
    MIN_CHOICE_FRAMES (10) frames, and no more than half of them, a choice made on them was
    saved as the run's (on 1 of 100 frames, a review found: one random, maybe empty, frame
    can pick any setting of the grids, a min_area that removes every prediction among them).
    The defaults are kept and the reason is given (warning, and the _Validation the report
    reads); on 10 frames or more the cut choice stands. On a clock only prediction (a second
    a frame) and the grid (three a frame) move."""
    import ultraseg.postprocess as pp_mod
    from conftest import ultraseg_warnings

    _validation_clock(monkeypatch)
    real_choose = pp_mod.GridSearch.choose
    chosen_on: list[int] = []

    def choose(self, *args, **kw):
        chosen_on.append(len(self))
        return real_choose(self, *args, **kw)

    monkeypatch.setattr(pp_mod.GridSearch, "choose", choose)
    cfg, predictor, samples = _validation_frames(tmp_path, 24)
    with ultraseg_warnings() as warned:
        seen = finish._score_validation(predictor, samples, cfg, True, deadline)
    said = [r.getMessage() for r in warned if "post-processing" in r.getMessage()]
    assert len(seen.scores) == 24
    if n_chosen is None:
        assert chosen_on == [] and seen.pp == train_mod.PostprocessConfig()
        assert seen.not_chosen and "of the 24 validation frames" in seen.not_chosen
        assert len(said) == 1 and "not chosen" in said[0] and "time limit" in said[0], said
        # nor does the end of training say what the choice it did not make would change
        logger, told = logging.getLogger("ultraseg"), []
        handler = logging.Handler(logging.INFO)
        handler.emit = told.append
        level = logger.level
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        try:
            assert finish._perfect_ceiling(seen, seen.pp) is None
        finally:
            logger.removeHandler(handler)
            logger.setLevel(level)
        # (either wording: "changes none of them" or "would change ... predicted perfectly")
        assert not [m for m in map(logging.LogRecord.getMessage, told)
                    if "true validation masks" in m or "predicted perfectly" in m]
    else:
        assert chosen_on and chosen_on[0] >= n_chosen and seen.not_chosen is None


def test_frames_scored_after_the_deadline_are_a_bounded_sample(tmp_path, monkeypatch) -> None:
    """Where the choice's deadline had already passed when the end of training came to the
    validation frames, it chose on the first frame and then read, predicted and scored every
    other one at its original size: 99 frames, 11.6 s past a 5 s limit (a budgets review,
    D1). Now nothing is chosen (the defaults, and why) and one batch of the frames alone is
    scored (a random sample, which the figures are over). On a clock that only prediction
    moves (a second a frame), past the deadline from the start."""
    import ultraseg.postprocess as pp_mod

    _, predicted = _validation_clock(monkeypatch, start=100.0, grid_s=0.0)
    monkeypatch.setattr(pp_mod.GridSearch, "choose", lambda self, *a, **k: pytest.fail("chose"))
    cfg, predictor, samples = _validation_frames(tmp_path, 12)
    for tuning in (True, False):
        predicted.clear()
        seen = finish._score_validation(predictor, samples, cfg, tuning, 30.0)
        assert len(predicted) == predictor.batch_size == 2
        assert len(seen.scores) == len(seen.frames) == 2 and seen.of == 12
        assert seen.frames == sorted(int(f) for f in pp_mod.GridSearch.order(12)[:2])
        assert seen.pp == train_mod.PostprocessConfig()
        assert (seen.not_chosen is not None) == tuning
        assert not tuning or "time limit" in seen.not_chosen


def _clock_jumps_in_a_step(monkeypatch, armed: Callable[[], bool] = lambda: True
                           ) -> list[float]:
    """train's clock, simulated: 10**6 s are added in a training step taken while ``armed()``
    holds, so the time limit runs out there. The added seconds' cell, to set back."""
    extra = [0.0]
    _train_clock(monkeypatch, lambda: time.monotonic() + extra[0])
    real_step = train_mod.optimizer_step

    def step(*args, **kw):
        if armed():
            extra[0] = 1e6
        return real_step(*args, **kw)

    monkeypatch.setattr(train_mod, "optimizer_step", step)
    return extra


def test_a_run_past_its_limit_before_validating_validates_and_scores_a_sample(
        tmp_path, monkeypatch) -> None:
    """A time limit that ran out in the first training step was followed by a full validation
    pass and by scoring every validation frame at its original size (a 5 s limit took 44 s;
    a budgets review, D1). Now the validation pass and the scoring at original size each take
    a sample of one batch, the report says so, and the run still writes its checkpoints and
    report. The limit runs out on a simulated clock, which jumps 10**6 s in the first step."""
    _clock_jumps_in_a_step(monkeypatch)
    real_validate = train_mod.validate
    validated: list[int] = []

    def spy(model, frames, *args, **kw):
        validated.append(len(frames))
        return real_validate(model, frames, *args, **kw)

    monkeypatch.setattr(train_mod, "validate", spy)
    run = tmp_path / "run"
    assert _train_tiny(tmp_path, run, "--epochs", "3", "--batch-size", "2",
                       "--time-limit", "30m") == 0
    n_val = len(json.loads((run / "split.json").read_text())["val"])
    assert n_val > 2 and validated == [2]
    best = load_checkpoint(run / "best.ckpt")
    report = best.meta["metrics"]["report"]
    assert "not chosen: the time limit had passed" in report["post-processing"], report
    assert report["validation frames scored at original size"].startswith(f"2 of {n_val}")
    assert (run / "last.ckpt").exists() and (run / "report.html").exists()
    html = (run / "report.html").read_text()
    assert f"2 of {n_val}" in html


def test_an_epoch_validated_on_a_sample_does_not_beat_one_validated_on_every_frame(
        tmp_path, monkeypatch) -> None:
    """An epoch whose validation started past the time limit is validated on one batch of the
    frames, and its Dice was compared with the best epoch's over every frame: a lucky sample
    took best.ckpt (a training-loop review, O7). It is kept in the history, with the frames it
    was validated on (``val_frames``, also in metrics.csv), and never beats an epoch validated
    on all of them; the report's best epoch agrees. Epoch 1 validates in full (Dice 0.5); the
    clock then jumps past the limit in epoch 2's first step, whose sample scores 0.9."""
    from ultraseg.report import best_row

    validated: list[int] = []
    _clock_jumps_in_a_step(monkeypatch, lambda: bool(validated))    # from epoch 2's first

    def spy(model, frames, *args, **kw):
        validated.append(len(frames))
        return 0.3, (0.5 if len(validated) == 1 else 0.9)

    monkeypatch.setattr(train_mod, "validate", spy)
    run = tmp_path / "run"
    assert _train_tiny(tmp_path, run, "--epochs", "3", "--batch-size", "2",
                       "--time-limit", "30m") == 0
    n_val = len(json.loads((run / "split.json").read_text())["val"])
    assert n_val > 2 and validated == [n_val, 2]
    best = load_checkpoint(run / "best.ckpt")
    assert best.meta["metrics"]["best_epoch"] == 1
    history = load_checkpoint(run / "last.ckpt").meta["metrics"]["history"]
    assert [r["val_frames"] for r in history] == [n_val, 2]
    assert best_row(history) == 0
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    assert [r["val_frames"] for r in rows] == [str(n_val), "2"]


def test_a_run_that_outlasts_its_time_limit_says_so(tmp_path, monkeypatch, capsys) -> None:
    """A run whose own time passed its --time-limit (a 5 s limit took 44 s; a budgets review)
    said so nowhere: the report gave its run time and 'stopped early' alone. One warning now
    gives both figures, on the console, in train.log and among the report's warnings; a run
    inside its limit gives none. The clock jumps 10**6 s in the first training step."""
    from conftest import ultraseg_warnings

    jumping = [True]
    extra = _clock_jumps_in_a_step(monkeypatch, lambda: jumping[0])
    run = tmp_path / "run"
    with ultraseg_warnings() as warned:
        assert _train_tiny(tmp_path, run, "--epochs", "2", "--time-limit", "30m") == 0
    said = [r.getMessage() for r in warned if "against its 1800 s time limit" in r.getMessage()]
    assert len(said) == 1 and said[0].startswith("the run took 10000"), said
    assert said[0] in load_checkpoint(run / "best.ckpt").meta["metrics"]["warnings"]
    assert "against its 1800 s time limit" in (run / "train.log").read_text()
    jumping[0], extra[0] = False, 0.0
    with ultraseg_warnings() as warned:
        assert _train_tiny(tmp_path, tmp_path / "in", "--epochs", "1", "--time-limit", "30m") == 0
    assert not [r for r in warned if "time limit" in r.getMessage()]


def test_more_threads_than_cores_is_warned_about_once(tmp_path, monkeypatch) -> None:
    """--threads 32 on two cores trained with 65 OS threads without a word (a budgets
    review): more torch threads than the cores this process may use oversubscribe them. One
    warning names both counts; the run is not refused, and a count within the cores says
    nothing. The cores are faked to 1 (the run asks for 2)."""
    from conftest import ultraseg_warnings

    from ultraseg import shared

    monkeypatch.setattr(shared, "usable_cores", lambda: 1)
    with ultraseg_warnings() as warned:
        assert _train_tiny(tmp_path, tmp_path / "run", "--epochs", "1", "--threads", "2") == 0
    said = [r.getMessage() for r in warned if "more threads than" in r.getMessage()]
    assert len(said) == 1 and "--threads 2" in said[0] and "1 core" in said[0], said
    assert said[0] in load_checkpoint(tmp_path / "run" / "best.ckpt").meta["metrics"]["warnings"]
    with ultraseg_warnings() as warned:
        assert _train_tiny(tmp_path, tmp_path / "one", "--epochs", "1") == 0   # --threads 1
    assert not [r for r in warned if "more threads than" in r.getMessage()]


def test_an_output_folder_that_is_no_path_is_refused_naming_it() -> None:
    """train(cfg, None) raised pathlib's TypeError, naming no argument (an API misuse
    review, item 7)."""
    with pytest.raises(UltrasegError, match=r"train \(out\) takes .*path.*got NoneType"):
        train_mod.train(RunConfig(), None)


def test_a_loaded_config_s_relative_data_path_found_beside_its_file_alone_is_said_so(
        tmp_path, monkeypatch) -> None:
    """RunConfig.load remembers its file (no setting: config.json and equality are the
    same), so train gives the CLI's hint where a relative data.path is found beside the file
    alone: a Python user running from another folder got the plain 'no such file or
    folder'. A merge keeps the file unless it sets data.path; nothing is written."""
    (tmp_path / "exp" / "busi").mkdir(parents=True)
    conf = tmp_path / "exp" / "c.json"
    conf.write_text(json.dumps({"preset": "demo", "data": {"path": "busi", "cache_dir": ""},
                                "train": {"device": "cpu"}}))
    monkeypatch.chdir(tmp_path)
    cfg = RunConfig.load("exp/c.json")
    assert cfg == RunConfig.from_dict(json.loads(conf.read_text()))
    assert cfg.to_json() == RunConfig.from_dict(json.loads(conf.read_text())).to_json()
    hint = (f"{conf}: data.path 'busi' is not found from the current folder {tmp_path}; "
            f"the config file's folder ({tmp_path / 'exp'}) holds it: run from there or give "
            "an absolute path")
    for given in (cfg, merge(cfg, {"train": {"epochs": 1}})):
        with pytest.raises(UltrasegError) as e:
            train_mod.train(given, tmp_path / "run")
        assert str(e.value) == hint
    assert not (tmp_path / "run").exists()
    with pytest.raises(UltrasegError) as e:     # a path set by hand is read as given
        train_mod.train(merge(cfg, {"data": {"path": "busi"}}), tmp_path / "run")
    assert "no such file or folder" in str(e.value) and "holds it" not in str(e.value)


def test_a_loaded_config_remembers_its_file_from_the_folder_it_was_loaded_in(
        tmp_path, monkeypatch) -> None:
    """The file a RunConfig was loaded from is kept as an absolute path: kept as given
    ('exp/c.json'), a chdir before train looked for the file's folder from the new folder,
    missed the data beside the file and said the plain 'no such file or folder'."""
    (tmp_path / "exp" / "busi").mkdir(parents=True)
    (tmp_path / "elsewhere").mkdir()
    conf = tmp_path / "exp" / "c.json"
    conf.write_text(json.dumps({"preset": "demo", "data": {"path": "busi", "cache_dir": ""},
                                "train": {"device": "cpu"}}))
    monkeypatch.chdir(tmp_path)
    cfg = RunConfig.load("exp/c.json")
    monkeypatch.chdir(tmp_path / "elsewhere")
    with pytest.raises(UltrasegError) as e:
        train_mod.train(cfg, tmp_path / "run")
    assert str(e.value).startswith(f"{conf}: data.path 'busi' is not found from the current "
                                   f"folder {tmp_path / 'elsewhere'}; the config file's folder "
                                   f"({tmp_path / 'exp'}) holds it")


def test_a_time_limited_run_shows_the_epochs_its_limit_fits(tmp_path, monkeypatch,
                                                            capsys) -> None:
    """Under a time limit that fits fewer epochs than --epochs, the epoch lines count to the
    schedule's horizon once it is measured, naming the cap (a review: the `cpu` preset showed
    `epoch k/300` to a run that stopped after a handful), and train.log says once how many
    the limit fits. Each epoch's metrics write takes 300 s on a simulated clock: 30 minutes
    hold about 5 of the 10 epochs."""
    _slow_metrics_writes(monkeypatch, 300.0)
    run = tmp_path / "run"
    capsys.readouterr()
    assert _train_tiny(tmp_path, run, "--epochs", "10", "--time-limit", "30m") == 0
    horizon = int(load_checkpoint(run / "last.ckpt").train_state["horizon"])
    assert 3 <= horizon < 10
    lines = [s for s in capsys.readouterr().out.splitlines() if s.startswith("epoch ")]
    assert lines[0].startswith("epoch 1/10  ")      # not measured with a write yet: the cap
    assert lines[1].startswith(f"epoch 2/{horizon} (time limit; cap 10)  ")
    log_text = (run / "train.log").read_text()
    assert log_text.count("the time limit fits about") == 1
    assert f"the time limit fits about {horizon} of the 10 epochs at this pace" in log_text
