"""``ultraseg demo``: the main job end to end (at a reduced scale: fewer, smaller frames and
two epochs; the full demo is the README's first command), and its user errors."""
from __future__ import annotations

import hashlib
import json
import shlex
import os
from dataclasses import replace
from pathlib import Path

import pytest

from conftest import held_elsewhere, ultraseg_warnings
from ultraseg import cli, demo
from ultraseg.config import PRESETS
from ultraseg.fileio import LOCK_FILE


def _small_demo(monkeypatch, epochs: int) -> None:
    """The demo at a reduced scale: 24 + 6 frames of 64 px, a width-4 net on 32 px."""
    monkeypatch.setattr(demo, "TRAIN_FRAMES", 24)
    monkeypatch.setattr(demo, "TEST_FRAMES", 6)
    monkeypatch.setattr(demo, "FRAME_SIZE", 64)
    monkeypatch.setitem(PRESETS["demo"]["preprocess"], "size", 32)
    monkeypatch.setitem(PRESETS["demo"]["model"], "width", 4)
    monkeypatch.setitem(PRESETS["demo"]["train"], "epochs", epochs)


def test_demo_trains_evaluates_on_unseen_frames_and_reports(tmp_path, monkeypatch,
                                                            capsys) -> None:
    _small_demo(monkeypatch, epochs=2)
    monkeypatch.chdir(tmp_path)
    out = Path("demo")                          # as a user types it: relative
    assert cli.main(["demo", "--out", str(out)]) == 0
    stdout = capsys.readouterr().out
    assert "on 6 unseen phantom frames" in stdout and str(out / "report.html") in stdout
    for name in ("best.ckpt", "report.html", "config.json", "split.json", "metrics.csv"):
        assert (out / name).is_file(), name
    def digests(folder: str) -> set[str]:
        return {hashlib.sha256(p.read_bytes()).hexdigest()
                for p in (out / "data" / folder / "images").iterdir()}

    unseen = digests("unseen")
    assert len(unseen) == 6 and not unseen & digests("train")   # frames it never trained on
    summary = json.loads((out / "evaluation" / "summary.json").read_text())
    assert summary["n"] == 6 and 0.0 <= summary["dice_mean"] <= 1.0
    assert json.loads((out / "config.json").read_text())["train"]["epochs"] == 2
    page = (out / "report.html").read_text()
    assert "unseen phantom" in page
    assert "HD95, median (px)" in page                         # its unit said
    assert "dice_nonempty_mean" not in page                    # the table in words
    # the report shows the config the run recorded (data.path absolute, not as given)
    recorded = json.loads((out / "config.json").read_text())["data"]["path"]
    assert recorded.startswith("/") and f'"path": {json.dumps(recorded)}' in page
    assert cli.main(["demo", "--out", str(out)]) == 2            # never over a finished run
    assert "already holds a training run" in capsys.readouterr().err


def test_the_demo_s_report_keeps_the_warnings_its_training_gave(tmp_path, monkeypatch) -> None:
    """The demo writes the run's report.html again with its evaluation: the warnings its
    training gave (a time-limited run's post-processing chosen on a sample) must stay."""
    import logging

    from ultraseg import train as train_mod

    _small_demo(monkeypatch, epochs=1)
    offset = train_mod._boundary_offset

    def warned(*args):                          # a warning given while the run trains
        logging.getLogger("ultraseg.train").warning("a <warning> while training")
        return offset(*args)

    monkeypatch.setattr(train_mod, "_boundary_offset", warned)
    assert cli.main(["demo", "--out", str(tmp_path / "demo")]) == 0
    page = (tmp_path / "demo" / "report.html").read_text()
    assert "unseen phantom" in page
    assert "<h2>Warnings</h2>" in page and "a &lt;warning&gt; while training" in page


def test_a_stopped_demo_s_command_for_a_dash_led_out_parses(tmp_path, monkeypatch,
                                                             capsys) -> None:
    """`ultraseg demo --out=-dm --minutes 1` over a demo stopped under --minutes 0.5 said
    `ultraseg demo --out -dm --minutes 0.5` goes on with it, which argparse refuses
    ('argument --out: expected one argument'): the name goes as --out=-dm, as the interrupt
    line writes it."""
    _small_demo(monkeypatch, epochs=2)
    monkeypatch.chdir(tmp_path)

    def stop_in_epoch_2(event: dict) -> None:
        if event.get("event") == "epoch" and event["epoch"] == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        demo.run_demo(Path("-dm"), progress=stop_in_epoch_2, minutes=0.5)
    assert cli.main(["demo", "--out=-dm", "--minutes", "1"]) == 2
    said = capsys.readouterr().err
    assert "goes on with it" in said, said
    argv = shlex.split(said.split("`")[1])[1:]             # the command given, as typed
    a = cli.build_parser().parse_args(argv)
    assert a.command == "demo" and a.out == "-dm" and a.minutes == 0.5, argv


def test_an_interrupted_demo_goes_on_where_it_stopped(tmp_path, monkeypatch, capsys) -> None:
    """Ctrl-C during a demo's training left a folder the demo refused (`already holds a
    training run`); train --resume finished the training but not the demo's evaluation on
    unseen frames or its report. The demo now goes on with its own run."""
    _small_demo(monkeypatch, epochs=3)
    out = tmp_path / "my demo"
    minutes = 1.2345678                          # printed so that it is given back
    epochs_seen = []

    def stop_in_epoch_2(event: dict) -> None:
        if event.get("event") == "epoch":
            epochs_seen.append(event["epoch"])
            if event["epoch"] == 2:
                raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        demo.run_demo(out, progress=stop_in_epoch_2, minutes=minutes)
    assert (out / "last.ckpt").is_file() and not (out / "evaluation").exists()
    real = demo.run_demo

    def interrupted(out, **kw):                 # Ctrl-C in the CLI says how to go on
        raise KeyboardInterrupt

    monkeypatch.setattr(demo, "run_demo", interrupted)
    assert cli.main(["demo", "--out", str(out), "--minutes", str(minutes)]) == 130
    said = capsys.readouterr().err
    assert f"`ultraseg demo --out '{out}' --minutes 1.2345678` goes on" in said
    monkeypatch.setattr(demo, "run_demo", real)
    assert cli.main(["demo", "--out", str(out), "--minutes", "1"]) == 2   # not its --minutes
    said = capsys.readouterr().err
    assert f"`ultraseg demo --out '{out}' --minutes 1.2345678` goes on" in said
    argv = shlex.split(said.split("`")[1])[1:]             # the command given, as typed
    assert cli.main(argv) == 0
    assert "on 6 unseen phantom frames" in capsys.readouterr().out
    rows = (out / "metrics.csv").read_text().splitlines()
    assert len(rows) == 1 + 3                               # epochs 1 (kept), 2 and 3
    assert (out / "evaluation" / "summary.json").is_file()
    assert cli.main(["demo", "--out", str(out), "--minutes", "1"]) == 2   # a finished demo
    assert "already holds a training run" in capsys.readouterr().err
    # stopped once its evaluation was written: nothing to go on with (the demo is refused)
    monkeypatch.setattr(demo, "run_demo", interrupted)
    assert cli.main(["demo", "--out", str(out), "--minutes", str(minutes)]) == 130
    assert capsys.readouterr().err.strip() == "interrupted"


def test_a_demo_its_time_limit_cut_short_says_so_and_names_more_minutes(tmp_path, monkeypatch,
                                                                          ) -> None:
    """A review on a slow CPU: the time limit ended the demo's training after 1 of its 12
    epochs, and it closed with train's advice `(a lower --lr, or train longer)`, a flag the
    demo does not take. Its warnings that the model has not learnt now say the time limit
    ended training, and the demo ends naming the `ultraseg demo --minutes` that gives its
    epochs the time."""
    from ultraseg import finish
    from ultraseg import train as train_mod

    _small_demo(monkeypatch, epochs=3)
    monkeypatch.setattr(train_mod, "_no_time_for_another_epoch", lambda *a: True)
    remedies = []
    real = finish._warn_if_nothing_found

    def spy(*args, **kwargs):
        remedies.append(kwargs.get("remedy"))
        return real(*args, **kwargs)

    monkeypatch.setattr(finish, "_warn_if_nothing_found", spy)
    # the loss-trend warning fires too (a re-read: it still advised `(a lower --lr)`)
    monkeypatch.setattr(finish, "LOSS_BOUND", 0.0)
    out = tmp_path / "demo"
    with ultraseg_warnings() as warned:
        assert cli.main(["demo", "--out", str(out), "--minutes", "2"]) == 0
    said = "\n".join(r.getMessage() for r in warned)
    assert "the learning rate is likely too high" in said
    assert remedies and "--lr" not in remedies[0]
    assert "the time limit ended training after 1 of its 3 epochs" in remedies[0]
    assert "the time limit (--minutes 2) ended training after 1 of the demo's 3 epochs" in said
    assert f"`ultraseg demo --out {out}-8min --minutes 8`" in said   # 2 * 3/1 * 1.25, up
    assert "--lr" not in said


def _cut_demo_config(minutes: float = 2.0):
    """The demo preset's training settings under a time limit of ``minutes``."""
    from ultraseg.config import preset

    return replace(preset("demo").train, time_limit_s=60.0 * minutes)


def test_the_time_note_names_a_folder_beside_the_current_one_for_out_dot(tmp_path,
                                                                          monkeypatch) -> None:
    """A re-read: `ultraseg demo --out .` cut short by its time limit ended in a traceback
    after its report was written (`Path('.').with_name` has no name to change); the note now
    names the folder beside the current one, as for any other --out."""
    here = tmp_path / "run"
    here.mkdir()
    monkeypatch.chdir(here)
    tc = _cut_demo_config()
    history = [{"epoch": 1, "complete": True}]
    note = demo._time_note(Path("."), history, "time limit: no time for another epoch after "
                           "epoch 1", tc)
    more = shlex.split(note.split("`")[1])
    assert more[more.index("--out") + 1] == str(tmp_path / f"run-{more[-1]}min")


def test_the_time_note_counts_an_epoch_cut_short_as_the_share_trained(tmp_path) -> None:
    """A re-read: epoch 1 of 12 cut short after 2 of its 5 batches in 2.5 minutes was counted
    as a whole epoch, and the note named `--minutes 38` as "about the time for all 12" (they
    take 75 minutes at that pace). The share of the epoch trained now counts: 2.5 * 12 / 0.4
    * 1.25, up."""
    from ultraseg.finish import time_limit_stop

    tc = replace(_cut_demo_config(2.5), epochs=12)
    history = [{"epoch": 1, "complete": False}]
    note = demo._time_note(tmp_path / "demo", history,
                           "time limit reached during epoch 1 (batch 2/5)", tc)
    assert "epoch 1 cut short" in note
    assert note.split("`")[1].endswith(f"--out {tmp_path / 'demo'}-94min --minutes 94")
    # a whole epoch and one cut short after 1 of 4 batches: 1.25 epochs in 2.5 minutes
    history = [{"epoch": 1, "complete": True}, {"epoch": 2, "complete": False}]
    note = demo._time_note(tmp_path / "demo", history, time_limit_stop(2, 1, 4), tc)
    assert note.split("`")[1].endswith("--minutes 30")
    # (the stop as train words it: one format, so a new wording cannot undo the count)
    assert time_limit_stop(2, 1, 4) == "time limit reached during epoch 2 (batch 1/4)"


def test_a_full_disk_names_the_demo_that_goes_on_only_where_one_does(tmp_path, monkeypatch,
                                                                     capsys) -> None:
    """A write error in a demo whose run saved an epoch ends with the `ultraseg demo` that goes
    on, also at its run's report (the demo goes on and writes it again). It was added once the
    evaluation was written too (a full disk at the demo's own report, its last file), where
    that command is refused: 'already holds a training run'."""
    import errno

    from ultraseg import report
    from ultraseg.fileio import write_error

    _small_demo(monkeypatch, epochs=1)
    out = tmp_path / "demo"
    real = report.write_html
    evaluated = out / "evaluation" / "summary.json"

    def full(after_evaluation: bool):
        def write_html(folder, *args, **kwargs):
            if evaluated.exists() or not after_evaluation:
                raise write_error(OSError(errno.ENOSPC, "No space left on device"),
                                  Path(folder) / "report.html")
            return real(folder, *args, **kwargs)
        return write_html

    monkeypatch.setattr(report, "write_html", full(after_evaluation=False))   # the run's
    assert cli.main(["demo", "--out", str(out)]) == 2
    said = capsys.readouterr().err
    assert "no space left" in said and f"then `ultraseg demo --out {out} --minutes " in said
    monkeypatch.setattr(report, "write_html", full(after_evaluation=True))    # the demo's
    assert cli.main(shlex.split(said.split("`")[1])[1:]) == 2       # the command it named
    said = capsys.readouterr().err
    assert evaluated.is_file() and "no space left" in said and "goes on" not in said, said
    assert cli.main(["demo", "--out", str(out)]) == 2
    assert "already holds a training run" in capsys.readouterr().err


def test_demo_refuses_any_training_run_before_writing_its_data(tmp_path, capsys) -> None:
    """A folder holding another run's metrics.csv got 720 phantom files, then the refusal."""
    out = tmp_path / "demo"
    out.mkdir()
    (out / "metrics.csv").write_text("epoch\n")
    assert cli.main(["demo", "--out", str(out)]) == 2
    assert "already holds a training run" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["metrics.csv"]


@pytest.mark.parametrize("minutes", ["0", "-1", "nan"])
def test_demo_refuses_a_bad_minutes_before_writing_anything(tmp_path, capsys, minutes) -> None:
    out = tmp_path / "demo"
    assert cli.main(["demo", "--out", str(out), "--minutes", minutes]) == 2
    err = capsys.readouterr().err
    assert "--minutes" in err and "--time-limit" not in err, err
    assert not out.exists()


def test_demo_refuses_a_folder_in_use_before_writing_its_data(tmp_path, monkeypatch,
                                                              capsys) -> None:
    """A demo into a folder another command was writing got its phantom frames written there
    before train refused the folder."""
    _small_demo(monkeypatch, epochs=1)
    out = tmp_path / "demo"
    with held_elsewhere(out, "train"):
        assert cli.main(["demo", "--out", str(out)]) == 2
        assert capsys.readouterr().err.strip().splitlines() == [
            f"error: {out}: in use by another ultraseg command (train, pid {os.getpid()}); "
            f"wait for it to end or choose another --out"]
        assert sorted(p.name for p in out.iterdir()) == [LOCK_FILE]
    assert not out.exists()


def test_demo_refuses_a_folder_of_the_users_images_before_writing_its_data(tmp_path,
                                                                          capsys) -> None:
    """A folder holding a user's image got 720 phantom files (17 MB), then train's refusal."""
    out = tmp_path / "scans"
    out.mkdir()
    (out / "patient1.png").write_bytes(b"\x89PNG not really")
    assert cli.main(["demo", "--out", str(out)]) == 2
    assert "already holds 1 image file ultraseg did not write" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["patient1.png"]


def test_a_demo_stopped_before_its_first_epoch_can_run_again(tmp_path, monkeypatch,
                                                            capsys) -> None:
    """Ctrl-C during the first demo left out/data behind, and every later demo into that
    folder was refused ('already contains files'). The frames it wrote are the same bytes a
    new demo would write: they are used again."""
    _small_demo(monkeypatch, epochs=1)
    out = tmp_path / "demo"

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    import ultraseg.train as train_mod

    with monkeypatch.context() as m:
        m.setattr(train_mod, "train", interrupted)
        assert cli.main(["demo", "--out", str(out)]) == 130
    written = {p: p.stat().st_mtime_ns for p in (out / "data").rglob("*.png")}
    assert len(written) == 2 * (24 + 6)
    assert cli.main(["demo", "--out", str(out)]) == 0, capsys.readouterr().err
    assert {p: p.stat().st_mtime_ns for p in (out / "data").rglob("*.png")} == written
    assert (out / "best.ckpt").is_file()


def test_a_demo_stopped_while_writing_its_frames_can_run_again(tmp_path, monkeypatch,
                                                               capsys) -> None:
    """Ctrl-C in the demo's first seconds left a part of the phantom frames in out/data,
    and the next demo was refused ('already contains files'), the README's first command
    with it. A set is written aside and moved in when whole; the next run starts it again."""
    import ultraseg.phantom as phantom

    _small_demo(monkeypatch, epochs=1)
    out = tmp_path / "demo"
    real, calls = phantom._write_png, []

    def stopped(*args, **kwargs):
        calls.append(1)
        if len(calls) == 52:                # within the unseen set, after the training set
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    with monkeypatch.context() as m:
        m.setattr(phantom, "_write_png", stopped)
        assert cli.main(["demo", "--out", str(out)]) == 130
    assert not list((out / "data" / "unseen").glob("*/*.png"))     # no half set in the way
    assert not list(out.rglob(".phantom-*"))        # nor a hidden one left aside (Ctrl-C)
    assert len(list((out / "data" / "train").glob("*/*.png"))) == 2 * 24
    assert cli.main(["demo", "--out", str(out)]) == 0, capsys.readouterr().err
    assert not list(out.rglob(".phantom-*"))                       # nothing left aside
    assert len(list((out / "data").rglob("*.png"))) == 2 * (24 + 6)


def test_the_report_s_evaluation_table_reads_in_words_with_units() -> None:
    """The demo report's Evaluation table showed evaluate's summary keys (dice_nonempty_mean,
    hd95_n, empty_correct_rate, n_subjects) and the post-processing as a JSON string, beside a
    Summary table in plain words."""
    summary = {"n": 6, "dice_mean": 0.91, "dice_nonempty_mean": 0.88, "iou_mean": 0.8,
               "precision_mean": 0.9, "recall_mean": 0.9, "hd95_median": 2.5, "hd95_n": 4,
               "empty_correct_rate": 0.5, "n_subjects": 6, "dice_mean_ci95": [0.8, 0.95],
               "dice_nonempty_mean_ci95": [0.7, 0.9], "raw": {"dice_mean": 0.9},
               "dice_mean_ci95_method": "subject bootstrap, expanded percentile, exact",
               "postprocess": {"threshold": 0.5, "min_area": 10, "keep_largest": True,
                               "fill_holes": False, "tta": True},
               "label": None, "fill_outlines": False, "subset": None, "split": None,
               "checkpoint": {"path": "/x/best.ckpt"}, "data": "/x/data", "layout": "folders",
               "ultraseg_version": "1.0", "torch_version": "2.5", "device": "cpu",
               "precision": "fp32", "a_new_key": 1}
    table = demo.evaluation_table(summary)
    keys = list(table)
    assert keys[0] == "frames (unseen phantom, seed 1)" and table[keys[0]] == 6
    for raw in ("dice_mean", "dice_nonempty_mean", "hd95_median", "hd95_n",
                "empty_correct_rate", "n_subjects", "ultraseg_version", "postprocess"):
        assert not any(raw in k for k in keys), raw
    assert table["HD95, median (px)"] == 2.5                   # units said
    assert table["Dice, frames with a structure (0-1)"] == 0.88
    assert table["empty frames predicted empty (share, 0-1)"] == 0.5
    assert table["precision (mean, 0-1)"] == 0.9 and table["numeric precision"] == "fp32"
    assert table["post-processing"] == ("threshold 0.5, min area 10, keep largest on, "
                                        "fill holes off, tta on")
    assert table["Dice, the 95 % intervals: method"] \
        == "subject bootstrap, expanded percentile, exact"
    assert table["a new key"] == 1                             # a key not listed: in words
    assert "checkpoint" not in table and "raw" not in table and "subset" not in table


def test_the_evaluation_table_leaves_out_the_mm_figures_that_do_not_apply() -> None:
    """evaluate's summary holds its mm keys always, null without pixel sizes: the demo's
    phantom frames have none, and its table showed no such rows before; it shows none now,
    and those with a figure as before."""
    from ultraseg.evaluate import MM_KEYS

    summary = {"n": 6, "dice_mean": 0.9, "hd95_median": 2.5, **dict.fromkeys(MM_KEYS)}
    table = demo.evaluation_table(summary)
    assert not [k for k in table if "(mm)" in k or "head-circumference" in k], table
    table = demo.evaluation_table({**summary, "hd95_mm_median": 0.8, "hd95_mm_n": 4})
    assert table["HD95, median (mm)"] == 0.8 and table["frames in the HD95 median (mm)"] == 4


def test_the_evaluation_table_shows_the_hc_error_s_interval_in_mm() -> None:
    """report.html's Evaluation table shows the HC MAE: its interval beside it, in words, to
    the MAE's 2 decimals (mm), with its method; none where there is no reference."""
    from ultraseg.evaluate import MM_KEYS

    summary = {"n": 6, "dice_mean": 0.9, **dict.fromkeys(MM_KEYS), "hc_mae_mm": 1.8312,
               "hc_n": 6, "hc_mae_mm_ci95": [1.2345, 2.5], "hc_n_subjects": 6,
               "hc_mae_mm_ci95_method": "subject bootstrap, expanded percentile, exact"}
    table = demo.evaluation_table(summary)
    assert table["head-circumference error, mean absolute: 95 % interval (subjects "
                 "resampled, mm)"] == "1.23-2.50"
    assert table["head-circumference error, the 95 % interval: method"] \
        == "subject bootstrap, expanded percentile, exact"
    assert table["subjects in the head-circumference error"] == 6
    table = demo.evaluation_table({"n": 6, "dice_mean": 0.9, **dict.fromkeys(MM_KEYS)})
    assert not [k for k in table if "head-circumference" in k], table


def test_the_evaluation_table_leaves_out_figures_by_class_where_frames_have_none() -> None:
    """evaluate's summary holds by_class always, null where frames carry no class, as the
    demo's phantom frames do: no 'by class' row of None."""
    table = demo.evaluation_table({"n": 6, "dice_mean": 0.9, "by_class": None})
    assert table == {"frames (unseen phantom, seed 1)": 6, "Dice, all frames (0-1)": 0.9}
    assert "frames in the head-circumference error" not in table
