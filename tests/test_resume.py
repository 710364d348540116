"""Interrupted training resumes (issue 7, item 2): ``kill -9`` in the middle of an epoch, then
``ultraseg train --resume`` continues from the last completed epoch, and on CPU with a fixed
seed the run ends exactly where an uninterrupted run ends: the same metrics.csv (all but the
wall-clock ``seconds``), the same best epoch, weights and post-processing in best.ckpt.

The recipe exercises every piece of state a resume must restore: Adam's moments, the cosine
learning-rate schedule, the (seed, epoch) batch order and augmentation draws, batch-norm
running statistics, the best-epoch bookkeeping and the split.
"""
from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from ultraseg.checkpoint import CheckpointError, load_checkpoint
from ultraseg.cli import main
from ultraseg.phantom import make_dataset

EPOCHS = 5
RECIPE = ["--model", "same", "--width", "4", "--depth", "2", "--size", "64", "--batch-size", "4",
          "--epochs", str(EPOCHS), "--lr", "3e-3", "--schedule", "cosine", "--augment", "strong",
          "--loss", "bce+dice", "--seed", "3", "--device", "cpu", "--precision", "fp32",
          "--threads", "1"]


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("phantom") / "data", n=60, size=64, seed=0)


def _rows(run: Path) -> list[dict[str, str]]:
    with open(run / "metrics.csv", newline="") as f:
        return [{k: v for k, v in row.items() if k != "seconds"} for row in csv.DictReader(f)]


def _assert_same_metrics(a: list[dict[str, str]], b: list[dict[str, str]]) -> None:
    assert len(a) == len(b) == EPOCHS
    for ra, rb in zip(a, b):
        assert ra.keys() == rb.keys()
        for k in ra:
            try:
                assert float(ra[k]) == pytest.approx(float(rb[k]), rel=1e-6, abs=1e-6), (k, ra, rb)
            except ValueError:
                assert ra[k] == rb[k], (k, ra, rb)


def _two_epochs(data: Path, batch_size: int):
    """A two-epoch run of a width-2 U-Net on ``data`` at 32 px, one thread, no time limit."""
    from ultraseg.config import merge, preset

    return merge(preset("demo"), {
        "data": {"path": str(data), "cache_dir": ""}, "preprocess": {"size": 32},
        "model": {"variant": "same", "width": 2, "depth": 2},
        "train": {"epochs": 2, "batch_size": batch_size, "device": "cpu", "num_threads": 1,
                  "time_limit_s": None}})

def _last_epoch(run: Path) -> int:
    """The epoch of ``run/last.ckpt``; 0 while there is none (it is written atomically, so a
    file that exists is complete)."""
    try:
        return int(load_checkpoint(run / "last.ckpt").train_state["epoch"])
    except CheckpointError:
        return 0


@pytest.mark.slow
@pytest.mark.parametrize("extra", [[], ["--ema-decay", "0.9"], ["--dropout", "0.5"]],
                         ids=["plain", "ema", "dropout"])
def test_kill_9_mid_epoch_then_resume_equals_an_uninterrupted_run(
        data: Path, tmp_path: Path, capsys: pytest.CaptureFixture, extra: list[str]) -> None:
    """With ``--ema-decay`` the moving average is state too: best.ckpt holds it. Dropout draws
    from torch's global generator, which a resumed run must find as the uninterrupted one did."""
    cache = ["--cache-dir", str(tmp_path / "cache")]
    recipe = [*RECIPE, *extra]
    reference = tmp_path / "reference"
    assert main(["train", str(data), "--out", str(reference), *recipe, *cache]) == 0

    run = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "ultraseg", "train", str(data), "--out",
                             str(run), *recipe, *cache],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        give_up = time.monotonic() + 300  # a guard against a hung child, not a timing check
        while _last_epoch(run) < 1:
            assert proc.poll() is None, f"training ended (code {proc.returncode}) before epoch 1"
            assert time.monotonic() < give_up, "no last.ckpt after 300 s"
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)  # epoch 2 has just begun: mid-epoch
        proc.wait(60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    stopped_after = _last_epoch(run)
    assert 1 <= stopped_after < EPOCHS, "the kill must land before training finished"
    assert not (run / "report.html").exists()

    capsys.readouterr()
    assert main(["train", "--resume", "--out", str(run)]) == 0
    assert f"resuming after epoch {stopped_after}" in (run / "train.log").read_text()

    _assert_same_metrics(_rows(run), _rows(reference))
    ref_best, best = load_checkpoint(reference / "best.ckpt"), load_checkpoint(run / "best.ckpt")
    for key in ("best_epoch", "best_val_dice", "val_dice_original", "val_dice_postprocessed"):
        assert best.meta["metrics"][key] == pytest.approx(ref_best.meta["metrics"][key],
                                                          abs=1e-6), key
    assert best.postprocess == ref_best.postprocess
    assert best.state_dict.keys() == ref_best.state_dict.keys()
    for k, v in ref_best.state_dict.items():
        torch.testing.assert_close(best.state_dict[k], v, rtol=1e-5, atol=1e-6, msg=k)
    last = load_checkpoint(run / "last.ckpt")
    assert last.train_state["epoch"] == EPOCHS
    assert (run / "report.html").is_file()
    assert not [p.name for p in run.iterdir() if p.name.endswith(".tmp")]


def test_resume_refuses_a_checkpoint_without_training_state(
        data: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """A weights-only last.ckpt (e.g. a best.ckpt copied over it) is a one-line error, exit 2,
    before any data are read."""
    from ultraseg.checkpoint import make_meta, save_checkpoint
    from ultraseg.config import ModelConfig, PostprocessConfig, PreprocessConfig, RunConfig
    from ultraseg.model import build_model

    run = tmp_path / "run"
    run.mkdir()
    cfg = ModelConfig(variant="same", width=4, depth=2)
    save_checkpoint(run / "last.ckpt", build_model(cfg).state_dict(),
                    make_meta(cfg, PreprocessConfig(size=64), PostprocessConfig()))
    (run / "config.json").write_text(RunConfig().to_json())
    assert main(["train", "--resume", "--out", str(run)]) == 2
    err = capsys.readouterr().err
    assert [ln for ln in err.splitlines() if ln.startswith("error:")] == [
        f"error: {run / 'last.ckpt'}: holds no training state to resume from (missing "
        "['epoch', 'optimizer', 'history_json', 'best_dice', 'best_epoch'])"]


def test_resume_refuses_a_last_checkpoint_of_another_model(
        data: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """Another run's last.ckpt (a valid model in a same run) ended, after reading the whole
    dataset, in a many-line internal error from load_state_dict."""
    from ultraseg.checkpoint import make_meta, save_checkpoint
    from ultraseg.config import ModelConfig, PostprocessConfig, PreprocessConfig, RunConfig
    from ultraseg.model import build_model

    run = tmp_path / "run"
    run.mkdir()
    other = ModelConfig(variant="valid", width=4, depth=2, tile=20)
    meta = make_meta(other, PreprocessConfig(size=64), PostprocessConfig())
    state = {"epoch": 1, "optimizer": {}, "history_json": "[]", "best_dice": 0.0,
             "best_epoch": 1}
    save_checkpoint(run / "last.ckpt", build_model(other).state_dict(), meta, state)
    cfg = RunConfig.from_dict({"data": {"path": str(data)},
                               "model": {"variant": "same", "width": 4, "depth": 2,
                                         "presence_head": "auto"}})
    (run / "config.json").write_text(cfg.to_json())
    assert main(["train", "--resume", "--out", str(run)]) == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 1 and "holds another model" in err[0], err
    assert "variant 'valid' vs 'same'" in err[0] and "presence_head" not in err[0]


def test_resume_with_nothing_to_resume(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["train", "--resume", "--out", str(tmp_path / "nothing")]) == 2
    assert "nothing to resume" in capsys.readouterr().err


def test_time_limit_caps_the_whole_run_across_a_resume(data: Path, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture) -> None:
    """A resumed time-limited run got its whole limit again (33 epochs where 22 ran
    uninterrupted, past the cap). last.ckpt now keeps the run's seconds so far, a resume
    counts them, and a run whose limit was used up finishes without training on."""
    from ultraseg.checkpoint import save_checkpoint

    run = tmp_path / "run"
    assert main(["train", str(data), "--out", str(run), *RECIPE[:-8], "--epochs", "3",
                 "--time-limit", "10m", "--cache-dir", "", "--device", "cpu",
                 "--threads", "1"]) == 0
    last = load_checkpoint(run / "last.ckpt")
    spent = last.train_state["seconds"]
    assert 0 < spent < 600
    # as if the run had used 9m59s and then been killed after epoch 2 of 3
    last.train_state["seconds"] = 599.0
    last.train_state["epoch"] = 2
    history = json.loads(last.train_state["history_json"])[:2]
    last.train_state["history_json"] = json.dumps(history)
    save_checkpoint(run / "last.ckpt", last.state_dict, last.meta, last.train_state)
    capsys.readouterr()
    assert main(["train", "--resume", "--out", str(run)]) == 0
    out = capsys.readouterr().out
    assert "used up by the run before it was interrupted" in out
    assert load_checkpoint(run / "last.ckpt").train_state["epoch"] == 2     # nothing trained
    assert "used up" in load_checkpoint(run / "best.ckpt").meta["metrics"]["stopped"]


@pytest.mark.parametrize("when", ["after an epoch", "during an epoch",
                                  "during an epoch, an older checkpoint"])
def test_a_run_stopped_by_its_time_limit_does_not_train_on_after_resume(
        data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture, when: str) -> None:
    """A time-limited run that had stopped (no time for another epoch, or the limit reached
    during one) and was then interrupted while choosing its post-processing trained a partial
    epoch more on --resume, one the uninterrupted run never trained, which could become the
    best and took the choice's time. last.ckpt records the stop; the resume finishes the run.
    A checkpoint from before the stop was recorded tells a cut epoch by its history row."""
    import ultraseg.train as T
    from ultraseg.checkpoint import save_checkpoint

    run = tmp_path / "run"
    if when == "after an epoch":
        monkeypatch.setattr(T, "_no_time_for_another_epoch", lambda *a, **k: True)
    else:       # no batch after the first fits before the reserve
        monkeypatch.setattr(T, "_reserve", lambda *a, **k: 1e6)

    def interrupted(*a: object, **k: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(T, "_finish", interrupted)
    assert main(["train", str(data), "--out", str(run), *RECIPE[:-8], "--time-limit", "10m",
                 "--cache-dir", "", "--device", "cpu", "--threads", "1"]) == 130
    monkeypatch.undo()
    last = load_checkpoint(run / "last.ckpt")
    assert last.train_state["epoch"] == 1
    stop = ("no time for another epoch after epoch 1" if when == "after an epoch" else
            "time limit reached during epoch 1")
    if when.endswith("older checkpoint"):
        last.train_state.pop("stopped", None)
        save_checkpoint(run / "last.ckpt", last.state_dict, last.meta, last.train_state)
    capsys.readouterr()
    assert main(["train", "--resume", "--out", str(run)]) == 0
    assert len(_rows(run)) == 1, f"the resumed run trained {len(_rows(run)) - 1} more epochs"
    last = load_checkpoint(run / "last.ckpt")
    assert last.train_state["epoch"] == 1
    if not when.endswith("older checkpoint"):
        assert stop in last.train_state["stopped"]
    assert stop in load_checkpoint(run / "best.ckpt").meta["metrics"]["stopped"]
    assert stop in capsys.readouterr().out


def _train_stopped_before_its_end(data: Path, run: Path, epochs: int,
                                  monkeypatch: pytest.MonkeyPatch, *extra: str) -> None:
    """Train ``epochs`` of the tiny recipe into ``run``, interrupted (Ctrl-C) once training is
    over, before the post-processing choice and the report."""
    import ultraseg.train as T

    def interrupted(*a: object, **k: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(T, "_finish", interrupted)
    assert main(["train", str(data), "--out", str(run), *RECIPE[:-8], "--epochs", str(epochs),
                 "--cache-dir", "", "--device", "cpu", "--threads", "1", *extra]) == 130
    monkeypatch.undo()


def test_resume_keeps_the_auto_presence_head_decided_at_the_start(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A presence head 'auto' (the cpu preset's) is decided on the training masks when the run
    starts, and last.ckpt is built so. --resume decided it again on the masks of then: where
    they had been corrected since, it built a model without the head and died loading
    last.ckpt (internal error, exit 1). It now builds the recorded model; config.json, which
    a resume on other threads rewrites, still asks for 'auto'."""
    import numpy as np
    from PIL import Image

    data = make_dataset(tmp_path / "data", n=80, size=64, seed=0)   # 1 in 8 masks empty
    run = tmp_path / "run"
    _train_stopped_before_its_end(data, run, 2, monkeypatch)
    assert "presence head: on" in (run / "train.log").read_text()
    for f in (data / "masks").iterdir():          # the empty masks corrected since
        a = np.array(Image.open(f))
        if not a.any():
            a[20:30, 20:30] = 255
            Image.fromarray(a).save(f)
    assert main(["train", "--resume", "--out", str(run), "--threads", "1"]) == 0
    assert "presence head: on (decided when the run started" in (run / "train.log").read_text()
    assert json.loads((run / "config.json").read_text())["model"]["presence_head"] == "auto"
    assert load_checkpoint(run / "best.ckpt").model.presence_head is True


def test_frames_added_or_removed_before_a_resume_are_said(
        data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture) -> None:
    """A resume goes on with the split the run started with (split.json). Frames added to the
    data since were read and left out without a word; frames of the split removed since
    ended it with a message that said neither why nor what to do."""
    import shutil

    from conftest import ultraseg_warnings

    mine = tmp_path / "data"
    shutil.copytree(data, mine)
    run = tmp_path / "run"
    _train_stopped_before_its_end(mine, run, 1, monkeypatch)
    gone = tmp_path / "gone"
    gone.mkdir()
    for f in ("images/1_1.png", "masks/1_1_mask.png"):   # a frame of the split removed
        (mine / f).rename(gone / Path(f).name)
    capsys.readouterr()
    assert main(["train", "--resume", "--out", str(run)]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith(f"error: {run / 'split.json'}: split names 1 frame not in the "
                          f"dataset {mine} (first: 1_1): removed or renamed since"), err
    assert "put them back" in err

    (gone / "1_1.png").rename(mine / "images/1_1.png")      # back, and a new subject's frames
    (gone / "1_1_mask.png").rename(mine / "masks/1_1_mask.png")
    for i in range(1, 5):
        shutil.copy(mine / "images" / f"1_{i}.png", mine / "images" / f"9_{i}.png")
        shutil.copy(mine / "masks" / f"1_{i}_mask.png", mine / "masks" / f"9_{i}_mask.png")
    with ultraseg_warnings() as warned:
        assert main(["train", "--resume", "--out", str(run)]) == 0
    said = [r.getMessage() for r in warned if "none of its sides" in r.getMessage()]
    assert len(said) == 1 and "4 frames" in said[0] and str(mine) in said[0], said
    assert "9_1, 9_2, 9_3 and 1 more" in said[0] and "a new run" in said[0]
    assert "4 frames of the dataset" in (run / "train.log").read_text()


def test_resuming_a_finished_run_changes_nothing(data: Path, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture) -> None:
    """A finished run resumed (as scripts on preemptible machines always pass --resume) chose
    its post-processing again under its spent time limit and rewrote best.ckpt and the report,
    sometimes worse, saying it had been interrupted. It is left as it was and said so."""
    run = tmp_path / "run"
    assert main(["train", str(data), "--out", str(run), *RECIPE[:-8], "--epochs", "2",
                 "--cache-dir", "", "--device", "cpu", "--threads", "1"]) == 0
    figures = next(line for line in capsys.readouterr().out.splitlines()
                   if line.startswith("best epoch")).split(";")[0]
    before = {p.name: p.stat().st_mtime_ns for p in run.iterdir()}
    assert main(["train", "--resume", "--out", str(run)]) == 0
    out = capsys.readouterr().out
    assert "already finished" in out and figures in out          # the same figures
    assert {p.name: p.stat().st_mtime_ns for p in run.iterdir()} == before   # untouched


def test_a_run_asking_for_dice_flags_without_a_dice_term_still_resumes(
        data: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """--batch-dice with --loss bce is refused since 2026-12-06; a run started before, where
    the flag changed nothing, could no longer be resumed (--resume takes neither flag)."""
    run = tmp_path / "run"
    assert main(["train", str(data), "--out", str(run), *RECIPE[:-8], "--epochs", "2",
                 "--cache-dir", "", "--device", "cpu", "--threads", "1"]) == 0
    cfg = json.loads((run / "config.json").read_text())
    cfg["train"].update(loss="bce", batch_dice=True)            # as such a run recorded it
    (run / "config.json").write_text(json.dumps(cfg))
    from ultraseg.checkpoint import save_checkpoint
    last = load_checkpoint(run / "last.ckpt")                   # (its checkpoints too)
    last.meta["run"]["train"].update(loss="bce", batch_dice=True)
    save_checkpoint(run / "last.ckpt", last.state_dict, last.meta, last.train_state)
    from conftest import ultraseg_warnings

    capsys.readouterr()
    with ultraseg_warnings() as warned:
        assert main(["train", "--resume", "--out", str(run)]) == 0
    assert "already finished" in capsys.readouterr().out
    assert any("--batch-dice or --dice-skip-empty with --loss bce" in r.getMessage()
               for r in warned)


def test_a_finished_run_whose_report_was_not_written_gets_it_on_resume(
        data: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """Stopped while writing its report (after the final best.ckpt), a run had no
    report.html, and --resume called it finished and wrote nothing: the only way out was to
    train again. It now writes the page and its figures again: the curves from the
    checkpoint, the sample and prediction figures (which came back missing) from the run's
    data, split and best.ckpt, as they were; and the Python result of a finished run has
    every epoch's row (it had the best epoch's history)."""
    from ultraseg.train import train

    run = tmp_path / "run"
    assert main(["train", str(data), "--out", str(run), *RECIPE[:-8], "--epochs", "3",
                 "--cache-dir", "", "--device", "cpu", "--threads", "1"]) == 0
    page = (run / "report.html").read_text()
    assert page.count("<img ") == 3
    figures = {name: (run / name).read_bytes() for name in ("sample.png", "seg_sample.png")}
    for name in ("report.html", "curve.png", *figures):
        (run / name).unlink()                                   # as an interrupt leaves it
    capsys.readouterr()
    from conftest import ultraseg_warnings

    with ultraseg_warnings() as warned:
        result = train(None, run, resume=True)
    said = " ".join(r.getMessage() for r in warned)
    assert "nothing rewritten" not in said and "its report was not written" in said
    assert result.stopped.endswith("its report written again")
    assert result.epochs_run == 3 and [r["epoch"] for r in result.history] == [1, 2, 3]
    assert (run / "report.html").is_file() and (run / "curve.png").is_file()
    assert {name: (run / name).read_bytes() for name in figures} == figures   # the same
    rebuilt = (run / "report.html").read_text()
    assert rebuilt.count("<img ") == 3 and "figures missing" not in rebuilt
    kept = load_checkpoint(run / "best.ckpt").meta["metrics"]["best_epoch"]
    assert f"<tr class=best><td class=num>{kept}</td>" in rebuilt
    summary = page[page.index("<h2>Summary</h2>"):page.index("<h2>Figures</h2>")]
    assert summary in rebuilt                                   # the same summary table


def test_a_report_written_again_without_the_data_names_the_figures_missing(
        data: Path, tmp_path: Path) -> None:
    """Where the run's frames cannot be read when its report is written again, the page has
    the learning curves alone: a warning and the page name the figures missing."""
    import shutil

    from conftest import ultraseg_warnings
    from ultraseg.train import train

    mine = tmp_path / "data"
    shutil.copytree(data, mine)
    run = tmp_path / "run"
    assert main(["train", str(mine), "--out", str(run), *RECIPE[:-8], "--epochs", "1",
                 "--cache-dir", "", "--device", "cpu", "--threads", "1"]) == 0
    for name in ("report.html", "curve.png", "sample.png", "seg_sample.png"):
        (run / name).unlink()
    shutil.rmtree(mine)
    with ultraseg_warnings() as warned:
        result = train(None, run, resume=True)
    assert result.stopped.endswith("its report written again without sample.png and "
                                   "seg_sample.png (the run's frames could not be read)")
    said = [r.getMessage() for r in warned if "not drawn again" in r.getMessage()]
    assert len(said) == 1 and "sample.png and seg_sample.png not drawn again" in said[0], said
    assert "data.path" in said[0] and "delete report.html and resume" in said[0]
    page = (run / "report.html").read_text()
    assert page.count("<img ") == 1 and "figures missing" in page
    assert "sample.png, seg_sample.png: the run&#x27;s frames could not be read" in page \
        or "sample.png, seg_sample.png: the run's frames could not be read" in page


def test_resuming_a_run_whose_data_moved_says_how(data: Path, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture) -> None:
    """'no such file or folder' (resume without DATA) and 'not DATA ...' (with the new
    place) left no way out but editing config.json, which neither message said."""
    import shutil

    moved = tmp_path / "data"
    shutil.copytree(data, moved)
    run = tmp_path / "run"
    assert main(["train", str(moved), "--out", str(run), *RECIPE[:-8], "--epochs", "1",
                 "--cache-dir", "", "--device", "cpu", "--threads", "1"]) == 0
    (run / "best.ckpt").unlink()                   # an unfinished run (interrupted)
    moved.rename(tmp_path / "elsewhere")
    capsys.readouterr()
    assert main(["train", "--resume", "--out", str(run)]) == 2
    err = capsys.readouterr().err
    assert "is not there: if it has moved, set data.path in" in err and "config.json" in err
    assert main(["train", str(tmp_path / "elsewhere"), "--resume", "--out", str(run)]) == 2
    assert "that is gone: if DATA is where it has moved, set data.path" in \
        capsys.readouterr().err


def test_a_run_goes_on_elsewhere_with_the_execution_settings_given(
        data: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """A run trained with --device cuda could not be resumed on a machine without a GPU:
    --device (and --threads, --precision, --cache-dir) beside --resume were refused, and the
    run's own device failed. Where it runs is now taken anew and recorded; the recipe not."""
    from ultraseg.config import merge
    from ultraseg.train import train

    def stop_after_epoch_1(event: dict) -> None:
        if event["event"] == "batch" and event["epoch"] == 2:      # epoch 1 saved
            raise KeyboardInterrupt

    cfg = _two_epochs(data, batch_size=8)
    run = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        train(cfg, run, progress=stop_after_epoch_1)
    assert _last_epoch(run) == 1
    conf = json.loads((run / "config.json").read_text())
    conf["train"]["device"] = "cuda"                     # as trained on a GPU machine
    (run / "config.json").write_text(json.dumps(conf))
    if not torch.cuda.is_available():
        assert main(["train", "--out", str(run), "--resume"]) == 2
        assert "no CUDA GPU" in capsys.readouterr().err
    assert main(["train", "--out", str(run), "--resume", "--device", "cpu",
                 "--threads", "1"]) == 0, capsys.readouterr().err
    assert _last_epoch(run) == 2
    conf = json.loads((run / "config.json").read_text())
    assert conf["train"]["device"] == "cpu" and conf["train"]["num_threads"] == 1
    assert main(["train", "--out", str(run), "--resume", "--epochs", "3"]) == 2   # the recipe
    assert "takes no --epochs" in capsys.readouterr().err

    # the Python API: a config given beside resume=True was dropped in silence, a changed
    # learning rate with it; it must be the run's own recipe, and where it runs is taken
    from ultraseg.errors import UltrasegError

    api = tmp_path / "api"
    with pytest.raises(KeyboardInterrupt):
        train(cfg, api, progress=stop_after_epoch_1)
    with pytest.raises(UltrasegError, match=r"another recipe \(train.epochs, train.lr\)"):
        train(merge(cfg, {"train": {"lr": 0.1, "epochs": 9}}), api, resume=True)
    with pytest.raises(UltrasegError, match="train takes a RunConfig"):
        train(None, tmp_path / "new")
    relative = merge(cfg, {"data": {"path": os.path.relpath(data)},      # the same data
                           "train": {"num_threads": 2}})
    result = train(relative, api, resume=True)
    assert result.epochs_run == 2
    assert json.loads((api / "config.json").read_text())["train"]["num_threads"] == 2


def test_a_config_json_edited_by_hand_is_no_other_recipe_for_the_run(
        data: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """config.json edited by hand (size 64 -> 48, lr 3e-3 -> 0.5) resumed the run at the new
    learning rate without a word, and best.ckpt's epochs, trained at 64 px, were then
    described as 48-px ones: every prediction ran at the wrong scale. What last.ckpt records
    is the recipe; data.path may change (the data moved), with a warning."""
    import shutil

    from ultraseg.checkpoint import save_checkpoint

    run = tmp_path / "run"
    assert main(["train", str(data), "--out", str(run), *RECIPE[:-8], "--epochs", "3",
                 "--cache-dir", "", "--device", "cpu", "--threads", "1"]) == 0
    last = load_checkpoint(run / "last.ckpt")      # as if killed after epoch 2 of 3
    last.train_state["epoch"] = 2
    last.train_state["history_json"] = json.dumps(
        json.loads(last.train_state["history_json"])[:2])
    save_checkpoint(run / "last.ckpt", last.state_dict, last.meta, last.train_state)
    original = (run / "config.json").read_text()
    edited = json.loads(original)
    edited["preprocess"]["size"] = 48
    edited["train"]["lr"] = 0.5
    (run / "config.json").write_text(json.dumps(edited))
    capsys.readouterr()
    assert main(["train", "--resume", "--out", str(run)]) == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 1 and "preprocess.size" in err[0] and "train.lr" in err[0], err
    assert "config.json" in err[0]
    assert load_checkpoint(run / "last.ckpt").train_state["epoch"] == 2    # nothing trained

    moved = tmp_path / "moved"                      # the data moved: data.path set anew
    shutil.copytree(data, moved)
    edited = json.loads(original)
    edited["data"]["path"] = str(moved)
    (run / "config.json").write_text(json.dumps(edited))
    from conftest import ultraseg_warnings
    with ultraseg_warnings() as warned:
        assert main(["train", "--resume", "--out", str(run)]) == 0
    assert any("was trained on" in r.getMessage() and str(moved) in r.getMessage()
               for r in warned), [r.getMessage() for r in warned]
    assert load_checkpoint(run / "last.ckpt").train_state["epoch"] == 3


def test_an_epoch_is_reported_once_it_is_saved(data: Path, tmp_path: Path) -> None:
    """The epoch event (the CLI's epoch line) came before the epoch's checkpoints were written:
    a run stopped at the line (Ctrl-C as it appeared, `train | head -1`) had printed an epoch
    that last.ckpt did not hold, and --resume trained it again. The line now means saved."""
    from ultraseg.train import train

    cfg = _two_epochs(data, batch_size=16)
    run = tmp_path / "run"
    seen: list[tuple[int, int]] = []

    def on_epoch(event: dict) -> None:
        if event["event"] == "epoch":
            seen.append((event["epoch"], _last_epoch(run)))

    train(cfg, run, progress=on_epoch)
    assert seen == [(1, 1), (2, 2)]


def test_a_resume_checks_its_split_for_copies_on_two_sides(
        data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Training warns where copies of one scan lie on two sides of its split; a resume reads
    its split back (the held-out side from split.json's "test") and checks it again."""
    import shutil

    from conftest import ultraseg_warnings

    mine = tmp_path / "data"
    shutil.copytree(data, mine)
    run = tmp_path / "run"
    _train_stopped_before_its_end(mine, run, 1, monkeypatch, "--test-fraction", "0.3")
    split = json.loads((run / "split.json").read_text())
    kept, held = split["train"][0], split["test"][0]
    shutil.copy(mine / "images" / f"{kept}.png", mine / "images" / f"{held}.png")
    with ultraseg_warnings() as warned:
        assert main(["train", "--resume", "--out", str(run)]) == 0
    said = [r.getMessage() for r in warned if "two sides of the split" in r.getMessage()]
    assert len(said) == 1 and f"{kept} (train) = {held} (test)" in said[0], said


def test_a_run_without_validation_has_one_best_dice_fresh_or_resumed(tmp_path: Path) -> None:
    """TrainResult.best_dice was NaN at the end of a run without validation and None when the
    finished run was resumed (best.ckpt records best_val_dice None): it is None both ways."""
    import dataclasses

    from ultraseg.config import merge, preset
    from ultraseg.phantom import make_dataset
    from ultraseg.train import ALREADY_FINISHED, train

    data = make_dataset(tmp_path / "data", n=12, size=32, seed=0)
    cfg = merge(preset("demo"), {
        "data": {"path": str(data), "cache_dir": ""},
        "model": {"width": 4, "depth": 2, "variant": "same"}, "preprocess": {"size": 32},
        "train": {"epochs": 1, "val_fraction": 0.0, "batch_size": 4, "seed": 0,
                  "device": "cpu", "precision": "fp32", "num_threads": 1,
                  "time_limit_s": None}})
    fresh = train(cfg, tmp_path / "run")
    resumed = train(None, tmp_path / "run", resume=True)
    assert resumed.stopped == ALREADY_FINISHED
    assert fresh.best_dice is None
    differ = {f.name for f in dataclasses.fields(fresh)
              if getattr(fresh, f.name) != getattr(resumed, f.name)}
    assert json.dumps(fresh.history) == json.dumps(resumed.history)   # (its NaN val_loss)
    assert differ <= {"stopped", "seconds", "history"}, differ


TINY = ["--preset", "demo", "--epochs", "1", "--size", "32", "--width", "2", "--depth", "2",
        "--cache-dir", "", "--threads", "1", "--device", "cpu"]


def test_a_run_made_under_utf_8_resumes_under_an_ascii_locale(tmp_path: Path) -> None:
    """A run whose data folder has a non-ASCII name, made under a UTF-8 locale and resumed
    under a POSIX one (cron, ssh host cmd): its config.json's data.path, read as it was
    decoded, ended ``train --resume`` in an internal UnicodeEncodeError, with DATA or not."""
    from conftest import under_ascii_locale

    data = make_dataset(tmp_path / "d\u00e9\u4e2d\U0001f600", n=12, size=32, seed=0)
    run = tmp_path / "r\u00fcn"
    assert main(["train", str(data), "--out", str(run), *TINY]) == 0
    for args in (["--out", str(run)], [str(data), "--out", str(run)]):
        done = under_ascii_locale("train", "--resume", *args, "--threads", "1")
        assert done.returncode == 0, done.stderr
        assert "already finished" in done.stdout and "internal error" not in done.stderr


def test_a_run_made_under_an_ascii_locale_resumes_under_utf_8_on_its_data(
        tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """The other way round: the run's data.path, stored as an ASCII locale decodes it
    (surrogate escapes), was no longer DATA, the same folder: 'not DATA ...', exit 2."""
    from conftest import under_ascii_locale

    data = make_dataset(tmp_path / "d\u00e9\u4e2d\U0001f600", n=12, size=32, seed=0)
    run = tmp_path / "runC"
    done = under_ascii_locale("train", str(data), "--out", str(run), *TINY)
    assert done.returncode == 0, done.stderr
    assert json.loads((run / "config.json").read_text(encoding="utf-8"))["data"]["path"] == \
        str(data)                               # stored as a UTF-8 locale stores it
    capsys.readouterr()
    assert main(["train", str(data), "--out", str(run), "--resume", "--threads", "1"]) == 0, \
        capsys.readouterr().err
    assert "already finished" in capsys.readouterr().out


@pytest.mark.parametrize("value", ["false", "no", 1])
def test_resume_given_as_a_string_or_number_is_refused(tmp_path: Path, value) -> None:
    """train(cfg, out, resume="false") tried to resume ("false" is truthy: 'nothing to
    resume'), and resume="yes" on a finished run resumed it (an API misuse review)."""
    from ultraseg.config import RunConfig
    from ultraseg.errors import UltrasegError
    from ultraseg.train import train

    with pytest.raises(UltrasegError, match=f"resume must be true or false, got {value!r}"):
        train(RunConfig(), tmp_path / "run", resume=value)
    assert not (tmp_path / "run").exists()
