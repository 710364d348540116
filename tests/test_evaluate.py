"""Evaluation: per-image metrics at the original resolution, the empty rule, the files it writes,
the one-JSON-object output and evaluating one side of a run's split."""
from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import outline_dataset, pasted, ultraseg_warnings
from ultraseg import cli
from ultraseg.checkpoint import make_meta, save_checkpoint
from ultraseg.config import ModelConfig, PostprocessConfig, PreprocessConfig
from ultraseg.data import split_by_subject, write_split
from ultraseg.errors import UltrasegError
from ultraseg.evaluate import SUMMARY_KEYS, evaluate, format_summary
from ultraseg.model import build_model
from ultraseg.phantom import make_dataset
from ultraseg.predict import Predictor, load

SIZE = 32


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """50 phantom frames of 32 px: 5 subjects, one of them (by the phantom's design) without
    structures."""
    return make_dataset(tmp_path_factory.mktemp("eval") / "data", n=50, size=SIZE, seed=2)


@pytest.fixture(scope="module")
def truths(data) -> dict[str, np.ndarray]:
    """Ground truth read straight from the mask files (name -> bool mask)."""
    return {p.name[: -len("_mask.png")]: np.asarray(Image.open(p)) > 0
            for p in sorted((data / "masks").glob("*_mask.png"))}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """An untrained but valid checkpoint (evaluation needs no training to be tested)."""
    path = tmp_path_factory.mktemp("eval-ckpt") / "best.ckpt"
    cfg = ModelConfig(variant="same", width=4, depth=2)
    save_checkpoint(path, build_model(cfg).state_dict(),
                    make_meta(cfg, PreprocessConfig(size=SIZE), PostprocessConfig()))
    return path


def _constant_predictor(value: float, size: int = SIZE) -> Predictor:
    """A Predictor whose backend answers ``value`` for every pixel (no network at all)."""
    return Predictor(lambda batch: np.full_like(batch, value), ModelConfig(variant="same", depth=2),
                     PreprocessConfig(size=size), PostprocessConfig())


def test_phantom_data_has_both_kinds_of_frame(truths) -> None:
    empty = [n for n, t in truths.items() if not t.any()]
    assert 0 < len(empty) < len(truths)  # the tests below need both


# ------------------------------------------------------------------ the empty rule
def test_all_empty_predictor_and_the_empty_rule(data, truths) -> None:
    summary, rows = evaluate(_constant_predictor(0.0), data, "folders")
    assert summary["n"] == len(truths) == len(rows)
    for row in rows:
        t = truths[row["name"]]
        if t.any():  # a missed structure scores 0
            assert row["dice"] == row["iou"] == row["recall"] == 0.0
            assert np.isnan(row["hd95"])
        else:  # empty truth, empty prediction: a perfect frame, Dice 1
            assert row["dice"] == row["iou"] == 1.0 and row["hd95"] == 0.0
    n_empty = sum(not t.any() for t in truths.values())
    assert summary["dice_mean"] == pytest.approx(n_empty / len(truths))
    assert summary["dice_nonempty_mean"] == 0.0  # the all-empty baseline on non-empty frames
    assert summary["empty_correct_rate"] == 1.0
    # no frame has a boundary on both sides: no distance, rather than a perfect 0 from the
    # empty frames
    assert summary["hd95_median"] is None and summary["hd95_n"] == 0


def test_all_foreground_predictor_by_hand(data, truths) -> None:
    summary, rows = evaluate(_constant_predictor(1.0), data, "folders")
    n_pix = SIZE * SIZE
    want = {}
    for name, t in truths.items():
        k = int(t.sum())  # prediction: every pixel. tp = k, fp = n_pix - k, fn = 0
        want[name] = (2 * k / (k + n_pix), k / n_pix)
    for row in rows:
        dice, iou = want[row["name"]]
        assert row["dice"] == pytest.approx(dice) and row["iou"] == pytest.approx(iou)
        assert row["recall"] == (1.0 if truths[row["name"]].any() else 0.0)
    nonempty = [d for n, (d, _) in want.items() if truths[n].any()]
    assert summary["dice_nonempty_mean"] == pytest.approx(np.mean(nonempty))
    assert summary["dice_mean"] == pytest.approx(np.mean([d for d, _ in want.values()]))
    assert summary["empty_correct_rate"] == 0.0  # structures invented on every empty frame
    n_nonempty = sum(t.any() for t in truths.values())
    assert summary["hd95_n"] == n_nonempty
    assert summary["hd95_median"] == pytest.approx(
        np.median([r["hd95"] for r in rows if truths[r["name"]].any()]))
    assert f"over {n_nonempty} frames with a structure" in format_summary(summary)
    # the figures' spread over subjects (5 here), as a researcher reports them
    assert summary["n_subjects"] == 5
    lo, hi = summary["dice_mean_ci95"]
    assert lo <= summary["dice_mean"] <= hi
    assert (f"interval (5 subjects) all frames {lo:.3f}-{hi:.3f}" in format_summary(summary)
            and "the 5 subjects resampled" in format_summary(summary))


def test_metrics_are_at_the_original_resolution(data, truths) -> None:
    # the network works on 16 px canvases; the masks are scored at the frames' 32 px
    summary, rows = evaluate(_constant_predictor(1.0, size=16), data, "folders")
    assert sorted(row["name"] for row in rows) == sorted(truths)   # (no rows passed too)
    for row in rows:
        k = int(truths[row["name"]].sum())
        assert row["dice"] == pytest.approx(2 * k / (k + SIZE * SIZE))


def test_threshold_of_the_checkpoint_is_used(data) -> None:
    p = _constant_predictor(0.6)
    high = p.with_options(postprocess=PostprocessConfig(threshold=0.7))
    s_low, _ = evaluate(p, data, "folders")
    s_high, _ = evaluate(high, data, "folders")
    assert s_low["empty_correct_rate"] == 0.0   # 0.6 >= 0.5: everything is foreground
    assert s_high["empty_correct_rate"] == 1.0  # 0.6 < 0.7: nothing is
    assert s_high["raw"]["dice_mean"] == s_low["dice_mean"]  # 'raw' is always threshold 0.5


# ------------------------------------------------------------------ files
def test_writes_per_image_csv_and_summary_json(data, truths, tmp_path) -> None:
    out = tmp_path / "ev"
    summary, rows = evaluate(_constant_predictor(0.0), data, "folders", out=out)
    with open(out / "per_image.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert sorted(r["name"] for r in table) == sorted(truths)
    for key in ("name", "subject", "dice", "iou", "precision", "recall", "hd95"):
        assert key in table[0]
    by_name = {r["name"]: r for r in table}
    for name, t in truths.items():
        assert float(by_name[name]["dice"]) == (0.0 if t.any() else 1.0)
        assert by_name[name]["hd95"] == ("" if t.any() else "0")  # nan is an empty cell
    doc = json.loads((out / "summary.json").read_text())
    assert set(SUMMARY_KEYS) <= set(doc)
    assert doc["n"] == len(truths) and doc["dice_nonempty_mean"] == 0.0


def test_no_labelled_frames_is_a_user_error(tmp_path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(UltrasegError):
        evaluate(_constant_predictor(0.0), tmp_path / "empty")


def test_evaluating_frames_in_colour_says_one_line_for_them_all(tmp_path) -> None:
    """Frames in colour (a Doppler box read as its luma) were warned of once a file; one line
    counts them, naming the first, as predict, training and inspect say it."""
    rng = np.random.default_rng(0)
    for folder in ("images", "masks"):
        (tmp_path / "d" / folder).mkdir(parents=True)
    for k in range(3):
        rgb = np.stack([rng.integers(60, 140, (30, 40), dtype=np.uint8)] * 3, axis=-1)
        rgb[4:10, 4:12] = (200, 30, 30)                          # 48 of 1200 pixels: 4 %
        Image.fromarray(rgb).save(tmp_path / "d" / "images" / f"1_{k}.png")
        mask = np.zeros((30, 40), np.uint8)
        mask[12:20, 10:30] = 255
        Image.fromarray(mask).save(tmp_path / "d" / "masks" / f"1_{k}_mask.png")
    with ultraseg_warnings() as warned:
        evaluate(_constant_predictor(0.0), tmp_path / "d")
    said = [w.getMessage() for w in warned if "colour" in w.getMessage()]
    assert len(said) == 1 and said[0].startswith("3 frames partly colour"), said


# ------------------------------------------------------------------ the CLI
def test_cli_json_prints_exactly_one_object(checkpoint, data, capsys) -> None:
    rc = cli.main(["evaluate", str(checkpoint), str(data), "--json", "--device", "cpu"])
    out = capsys.readouterr().out
    assert rc == 0
    assert out.count("\n") == 1 and out.strip().startswith("{")
    doc = json.loads(out)
    assert isinstance(doc, dict)
    assert set(SUMMARY_KEYS) <= set(doc)
    assert doc["n"] == 50
    for key in ("dice_mean", "iou_mean", "empty_correct_rate"):
        assert 0.0 <= doc[key] <= 1.0


def test_cli_human_summary_and_out(checkpoint, data, tmp_path, capsys) -> None:
    out = tmp_path / "ev"
    rc = cli.main(["evaluate", str(checkpoint), str(data), "--out", str(out), "--device", "cpu"])
    text = capsys.readouterr().out
    assert rc == 0
    assert "Dice" in text and "empty rule" in text and "per_image.csv" in text
    assert (out / "per_image.csv").is_file() and (out / "summary.json").is_file()


def test_cli_takes_predicts_model_flags(checkpoint, data, capsys, monkeypatch) -> None:
    """--precision, --batch-size and --device reach the predictor as predict's do; fp32 and
    bf16 figures agree closely; a bad batch size is a user error."""
    from ultraseg import runtime

    seen: list[dict] = []
    real = runtime.torch_predictor

    def recording(path, **kwargs):
        seen.append(kwargs)
        return real(path, **kwargs)

    monkeypatch.setattr(runtime, "torch_predictor", recording)

    def summary(*flags: str) -> dict:
        assert cli.main(["evaluate", str(checkpoint), str(data), "--json", "--device", "cpu",
                         *flags]) == 0, capsys.readouterr().err
        return json.loads(capsys.readouterr().out)

    fp32 = summary("--precision", "fp32", "--batch-size", "3")
    assert seen[-1] == {"device": "cpu", "precision": "fp32", "batch_size": 3}
    bf16 = summary("--precision", "bf16")
    assert seen[-1] == {"device": "cpu", "precision": "bf16"}
    assert abs(bf16["dice_mean"] - fp32["dice_mean"]) < 0.01
    with pytest.raises(SystemExit) as stop:
        cli.main(["evaluate", str(checkpoint), str(data), "--batch-size", "0"])
    assert stop.value.code == 2 and "argument --batch-size: " in capsys.readouterr().err


def test_a_label_scored_that_occurs_in_no_mask_is_refused(checkpoint, data, tmp_path,
                                                          capsys) -> None:
    """`evaluate --label 7` on masks that hold label 1 alone exited 0 with a note, every frame
    scored as empty (Dice 0.29 on the phantom set): a typo in a script gave a success code
    and meaningless figures, where inspect and train refuse the same mistake (exit 2)."""
    out = tmp_path / "eval"
    assert cli.main(["evaluate", str(checkpoint), str(data), "--device", "cpu",
                     "--label", "7", "--out", str(out)]) == 2
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:"), err
    assert "label 7 occurs in none of the" in err[0] and "they hold labels 1" in err[0]
    assert "--label" in err[0] and captured.out == ""
    assert not (out / "summary.json").exists()
    assert cli.main(["evaluate", str(checkpoint), str(data), "--json", "--device", "cpu",
                     "--label", "1"]) == 0
    assert json.loads(capsys.readouterr().out)["label"] == 1


def test_cli_postprocess_flags_override_the_checkpoint(checkpoint, data, capsys) -> None:
    def summary(*flags: str) -> dict:
        assert cli.main(["evaluate", str(checkpoint), str(data), "--json", "--device", "cpu",
                         *flags]) == 0
        return json.loads(capsys.readouterr().out)

    assert summary()["postprocess"]["threshold"] == 0.5
    none = summary("--threshold", "1.0")          # no probability reaches 1: every frame empty
    assert none["postprocess"]["threshold"] == 1.0
    assert none["dice_nonempty_mean"] == 0.0 and none["empty_correct_rate"] == 1.0
    peaked = summary("--min-peak", "1.0")         # the same, by the peak rule
    assert peaked["postprocess"]["min_peak"] == 1.0
    assert peaked["dice_nonempty_mean"] == 0.0 and peaked["empty_correct_rate"] == 1.0
    assert peaked["raw"] == none["raw"]           # "without post-processing" stays the same
    assert cli.main(["evaluate", str(checkpoint), str(data), "--min-peak", "2"]) == 2


def test_cli_tta_follows_the_checkpoint_unless_flagged(checkpoint, data, tmp_path,
                                                      capsys) -> None:
    from ultraseg.checkpoint import load_checkpoint

    ck = load_checkpoint(checkpoint)
    flipping = tmp_path / "tta.ckpt"                # the same weights, TTA chosen on validation
    save_checkpoint(flipping, ck.state_dict,
                    make_meta(ck.model, ck.preprocess, PostprocessConfig(tta=True)))

    def summary(path: Path, *flags: str) -> dict:
        assert cli.main(["evaluate", str(path), str(data), "--json", "--device", "cpu",
                         *flags]) == 0
        return json.loads(capsys.readouterr().out)

    def figures(s: dict) -> tuple:
        return s["dice_mean"], s["iou_mean"], s["raw"]["dice_mean"]

    plain, chosen = summary(checkpoint), summary(flipping)
    assert plain["postprocess"]["tta"] is False and chosen["postprocess"]["tta"] is True
    forced = summary(checkpoint, "--tta")
    assert forced["postprocess"]["tta"] is True and figures(forced) == figures(chosen)
    off = summary(flipping, "--no-tta")
    assert off["postprocess"]["tta"] is False and figures(off) == figures(plain)
    assert cli.main(["evaluate", str(flipping), str(data), "--device", "cpu"]) == 0
    line = next(ln for ln in capsys.readouterr().out.splitlines()
                if ln.startswith("post-processing"))
    assert line.startswith("post-processing       threshold ") and line.endswith(", tta on")


@pytest.fixture(scope="module")
def split_file(data, tmp_path_factory) -> tuple[Path, dict]:
    """A run's split.json for the phantom data, written as train() writes it."""
    from ultraseg.io import open_dataset

    ds = open_dataset(data, "folders")
    names = [s.name for s in ds.labelled]
    subjects = [s.subject for s in ds.labelled]
    tr, va = split_by_subject(subjects, 0.2, seed=0)
    path = tmp_path_factory.mktemp("run") / "split.json"
    write_split(path, names, subjects, tr, va, 0, 0.2)
    return path, json.loads(path.read_text())


@pytest.mark.parametrize("subset", ["val", "train"])
def test_cli_split_evaluates_only_that_subset(checkpoint, data, split_file, subset, tmp_path,
                                              capsys) -> None:
    path, doc = split_file
    out = tmp_path / "ev"
    rc = cli.main(["evaluate", str(checkpoint), str(data), "--split", str(path),
                   "--subset", subset, "--out", str(out), "--json", "--device", "cpu"])
    assert rc == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["n"] == len(doc[subset]) < 50
    with open(out / "per_image.csv", newline="") as f:
        assert sorted(r["name"] for r in csv.DictReader(f)) == sorted(doc[subset])


def test_split_default_subset_is_val(checkpoint, data, split_file, capsys) -> None:
    path, doc = split_file
    assert cli.main(["evaluate", str(checkpoint), str(data), "--split", str(path), "--json",
                     "--device", "cpu"]) == 0
    assert json.loads(capsys.readouterr().out)["n"] == len(doc["val"])


def test_subset_without_a_split_is_a_user_error(checkpoint, data, capsys) -> None:
    """Without --split, '--subset test' would score every frame, training frames too."""
    assert cli.main(["evaluate", str(checkpoint), str(data), "--subset", "test"]) == 2
    err = capsys.readouterr().err
    assert "'test'" in err and "--split" in err


def test_subset_without_a_split_is_a_user_error_in_python_too(checkpoint, data) -> None:
    """The API scored every frame, training frames too, where the CLI refused."""
    with pytest.raises(UltrasegError, match="split_file"):
        evaluate(load(checkpoint), data, subset="test")


def test_split_of_another_dataset_is_a_user_error(checkpoint, data, tmp_path, capsys) -> None:
    bad = tmp_path / "split.json"
    bad.write_text(json.dumps({"train": ["1_1"], "val": ["99_1", "98_2"]}))
    assert cli.main(["evaluate", str(checkpoint), str(data), "--split", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "split.json" in err and "2 frames" in err
    bad.write_text("{broken")
    assert cli.main(["evaluate", str(checkpoint), str(data), "--split", str(bad)]) == 2
    bad.write_text(json.dumps({"train": ["1_1"], "val": []}))  # a run without validation
    assert cli.main(["evaluate", str(checkpoint), str(data), "--split", str(bad)]) == 2
    assert "'val' side is empty" in capsys.readouterr().err


@pytest.mark.parametrize("content", ["[1, 2]", '{"val": 5}', '{"val": [1, 2]}', '"val"',
                                     # was: RecursionError, an internal error
                                     "[" * 100_000 + "]" * 100_000])
def test_a_file_that_is_not_a_split_is_a_user_error(checkpoint, data, tmp_path, capsys,
                                                      content) -> None:
    bad = tmp_path / "split.json"
    bad.write_text(content)
    assert cli.main(["evaluate", str(checkpoint), str(data), "--split", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "split.json" in err and "'val' side" in err and "internal" not in err, err


def test_cli_missing_checkpoint_is_a_user_error(data, tmp_path, capsys) -> None:
    assert cli.main(["evaluate", str(tmp_path / "nope.ckpt"), str(data)]) == 2
    assert "nope.ckpt" in capsys.readouterr().err


# ------------------------------------------------------------------ label masks
@pytest.fixture(scope="module")
def label_data(tmp_path_factory) -> tuple[Path, np.ndarray]:
    """Three frames whose gray masks hold two structures: label 1 (a block) and label 2."""
    root = tmp_path_factory.mktemp("eval-labels") / "data"
    lab = np.zeros((SIZE, SIZE), np.uint8)
    lab[2:10, 2:12] = 1   # 80 pixels
    lab[16:30, 14:30] = 2  # 224 pixels
    rng = np.random.default_rng(0)
    for d in ("images", "masks"):
        (root / d).mkdir(parents=True)
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (SIZE, SIZE), dtype=np.uint8)).save(
            root / "images" / f"s{i}_1.png")
        Image.fromarray(lab).save(root / "masks" / f"s{i}_1_mask.png")
    return root, lab


def _all_foreground_dice(truth: np.ndarray) -> float:
    k = int(truth.sum())
    return 2 * k / (k + truth.size)


def test_label_picks_the_structure_scored(label_data) -> None:
    root, lab = label_data
    for label, truth in ((None, lab > 0), (1, lab == 1), (2, lab == 2)):
        summary, _ = evaluate(_constant_predictor(1.0), root, "folders", label=label)
        assert summary["dice_mean"] == pytest.approx(_all_foreground_dice(truth))
    # without the argument, the label the predictor was trained on
    trained_on_2 = Predictor(lambda b: np.ones_like(b), ModelConfig(variant="same", depth=2),
                             PreprocessConfig(size=SIZE, label=2), PostprocessConfig())
    summary, _ = evaluate(trained_on_2, root, "folders")
    assert summary["dice_mean"] == pytest.approx(_all_foreground_dice(lab == 2))


def test_a_0_255_mask_in_a_set_of_label_masks_is_scored_as_its_label_255(tmp_path) -> None:
    """In a set of 0/128/255 masks, a mask holding the 255 structure alone (0/255) is scored
    as label 255 (io.white_for, the one rule train, evaluate and predict read by)."""
    root = tmp_path / "lab"
    both = np.zeros((SIZE, SIZE), np.uint8)
    both[2:10, 2:12], both[16:30, 14:30] = 128, 255
    rng = np.random.default_rng(0)
    for i, mask in enumerate((both, np.where(both == 255, 255, 0).astype(np.uint8))):
        for d, a in (("images", rng.integers(0, 256, (SIZE, SIZE), dtype=np.uint8)),
                     ("masks", mask)):
            (root / d).mkdir(parents=True, exist_ok=True)
            Image.fromarray(a).save(root / d / (f"s{i}_1.png" if d == "images" else
                                                f"s{i}_1_mask.png"))
    summary, _ = evaluate(_constant_predictor(1.0), root, "folders", label=255)
    assert summary["dice_mean"] == pytest.approx(_all_foreground_dice(both == 255))


def test_cli_label_reaches_evaluate(checkpoint, label_data, capsys) -> None:
    root, lab = label_data
    for label, truth in (("1", lab == 1), ("2", lab == 2)):
        # threshold 0: every pixel foreground, so the Dice depends on the label alone
        assert cli.main(["evaluate", str(checkpoint), str(root), "--json", "--device", "cpu",
                         "--threshold", "0", "--label", label]) == 0
        doc = json.loads(capsys.readouterr().out)
        assert doc["dice_mean"] == pytest.approx(_all_foreground_dice(truth))


# ------------------------------------------------------------------ outline masks
@pytest.fixture(scope="module")
def outline_data(tmp_path_factory) -> tuple[Path, np.ndarray, np.ndarray]:
    """Three frames whose masks are one-pixel closed circles (contours): (root, ring, disk)."""
    return outline_dataset(tmp_path_factory.mktemp("eval-outlines") / "data", n=3, size=SIZE)


def test_fill_outlines_reads_the_truth_filled(outline_data) -> None:
    """Outline masks outside the hc18 layout were scored as rings, with no way to fill them."""
    root, ring, disk = outline_data
    for fill, truth in ((None, ring), (False, ring), (True, disk)):
        summary, _ = evaluate(_constant_predictor(1.0), root, "folders", fill_outlines=fill)
        assert summary["dice_mean"] == pytest.approx(_all_foreground_dice(truth))
    # without the argument, as the predictor was trained; an explicit False overrides it
    trained_filled = Predictor(lambda b: np.ones_like(b), ModelConfig(variant="same", depth=2),
                               PreprocessConfig(size=SIZE, fill_outlines=True),
                               PostprocessConfig())
    for fill, truth in ((None, disk), (False, ring)):
        summary, _ = evaluate(trained_filled, root, "folders", fill_outlines=fill)
        assert summary["dice_mean"] == pytest.approx(_all_foreground_dice(truth))
        # the summary records the value used, as resolved (it changes every figure)
        assert summary["fill_outlines"] is (truth is disk)


def test_evaluate_warns_where_the_truth_looks_like_outlines(outline_data) -> None:
    root, _, _ = outline_data
    for fill, warns in ((None, True), (True, False)):
        with ultraseg_warnings() as warned:
            evaluate(_constant_predictor(1.0), root, "folders", fill_outlines=fill)
        said = [r.getMessage() for r in warned if "closed contours" in r.getMessage()]
        assert len(said) == warns and all("--fill-outlines" in m for m in said), said


def test_evaluate_looks_at_each_truth_once(outline_data, monkeypatch) -> None:
    """evaluate tallies its truths with the one per-mask judgement (MaskTally.of) as inspect
    and training do: each truth looked at once."""
    import ultraseg.data as data_module

    root, _, _ = outline_data
    calls: list[int] = []
    real = data_module.looks_like_outline
    monkeypatch.setattr(data_module, "looks_like_outline",
                        lambda mask: calls.append(1) or real(mask))
    with ultraseg_warnings() as warned:
        evaluate(_constant_predictor(1.0), root, "folders")
    assert len(calls) == 3
    assert [r for r in warned if "3 of the 3 non-empty masks" in r.getMessage()]


def test_cli_fill_outlines_reaches_evaluate(checkpoint, outline_data, tmp_path, capsys) -> None:
    root, ring, disk = outline_data
    filled_ckpt = tmp_path / "filled.ckpt"
    cfg = ModelConfig(variant="same", width=4, depth=2)
    save_checkpoint(filled_ckpt, build_model(cfg).state_dict(),
                    make_meta(cfg, PreprocessConfig(size=SIZE, fill_outlines=True),
                              PostprocessConfig()))
    for ckpt, flags, truth in ((checkpoint, [], ring), (checkpoint, ["--fill-outlines"], disk),
                               (filled_ckpt, [], disk),
                               (filled_ckpt, ["--no-fill-outlines"], ring)):
        assert cli.main(["evaluate", str(ckpt), str(root), "--json", "--device", "cpu",
                         "--threshold", "0", *flags]) == 0
        doc = json.loads(capsys.readouterr().out)
        assert doc["dice_mean"] == pytest.approx(_all_foreground_dice(truth)), (ckpt, flags)


def test_measure_offers_no_label(checkpoint, label_data, capsys) -> None:
    root, _ = label_data  # measure reads no ground truth: --label would do nothing
    with pytest.raises(SystemExit) as exc:
        cli.main(["measure", str(checkpoint), str(root), "--label", "2"])
    assert exc.value.code == 2
    assert "unrecognized arguments: --label" in capsys.readouterr().err


def test_where_the_dataset_gives_pixel_sizes_evaluate_reports_mm(tmp_path) -> None:
    """HC18-style frames, one with a pixel size (0.5 mm) and reference HC, one without; the
    prediction is the head shifted 2 px right, so HD95 is not trivially 0."""
    from test_predict import hc18_like

    from ultraseg.config import ModelConfig, PreprocessConfig
    from ultraseg.measure import measure
    from ultraseg.predict import Predictor

    def shifted(batch: np.ndarray) -> np.ndarray:
        return np.roll((batch > 0.5).astype(np.float32), 2, axis=-1)

    hc18_like(tmp_path / "hc")
    predictor = Predictor(shifted, ModelConfig(variant="same", depth=2),
                          PreprocessConfig(size=None, normalise="unit"))
    summary, rows = evaluate(predictor, tmp_path / "hc")
    # the hc18 layout fills its outlines whatever the setting: the summary says what was scored
    assert summary["fill_outlines"] is True and predictor.preprocess.fill_outlines is False
    assert evaluate(predictor, tmp_path / "hc", fill_outlines=False)[0]["fill_outlines"] is True
    first, second = rows
    assert first["pixel_size_mm"] == 0.5 and second.get("pixel_size_mm") is None
    assert first["hd95"] == pytest.approx(2.0)                  # the shift, in pixels
    assert first["hd95_mm"] == pytest.approx(0.5 * first["hd95"])
    assert "hd95_mm" not in second and "hc_error_mm" not in second
    pred = np.roll(_ellipse(48, 64, 20, 30, 12, 8), 2, axis=-1)
    m = measure(pred, 0.5)
    assert first["area_mm2"] == pytest.approx(m["area_mm2"])
    assert first["hc_pred_mm"] == pytest.approx(m["hc_mm"])
    assert (first["major_axis_mm"], first["minor_axis_mm"]) == pytest.approx(
        (m["major_axis_mm"], m["minor_axis_mm"]))
    assert first["hc_ref_mm"] == 30.0 and "hc_mm" not in first   # measure's name for it
    assert first["hc_error_mm"] == pytest.approx(m["hc_mm"] - 30.0)
    assert summary["hc_mae_mm"] == pytest.approx(abs(first["hc_error_mm"]))
    assert summary["hc_bias_mm"] == pytest.approx(first["hc_error_mm"])   # signed, as measure's
    assert summary["hc_n"] == 1 and summary["hc_missed"] == 0
    # --pixel-size: for the frames whose dataset gives none (the table's wins), as measure's
    _, rows = evaluate(predictor, tmp_path / "hc", pixel_size_mm=0.25)
    first, second = rows
    assert first["pixel_size_mm"] == 0.5 and second["pixel_size_mm"] == 0.25
    assert second["hd95_mm"] == pytest.approx(0.25 * second["hd95"])
    doubled = evaluate(predictor, tmp_path / "hc", pixel_size_mm=0.5)[1][1]
    assert second["area_mm2"] > 0 and doubled["area_mm2"] == pytest.approx(
        4 * second["area_mm2"])
    assert "hc_error_mm" not in second                  # no reference to err against
    with pytest.raises(UltrasegError, match="--pixel-size must be a positive number"):
        evaluate(predictor, tmp_path / "hc", pixel_size_mm=-1)


def test_evaluate_warns_where_the_pixel_size_given_was_not_used(tmp_path) -> None:
    """--pixel-size was ignored without a word on frames whose dataset gives their own (the
    table's wins, as README says): one warning counts them, as measure's (PixelSizes.warn)."""
    from conftest import ultraseg_warnings
    from test_predict import hc18_like

    from ultraseg.config import ModelConfig, PreprocessConfig
    from ultraseg.predict import Predictor

    hc18_like(tmp_path / "hc")                       # 001_HC: 0.5 mm in its table; 002_HC: none
    predictor = Predictor(lambda b: (b > 0.5).astype(np.float32),
                          ModelConfig(variant="same", depth=2),
                          PreprocessConfig(size=None, normalise="unit"))
    with ultraseg_warnings() as warned:
        evaluate(predictor, tmp_path / "hc", pixel_size_mm=0.25)
    said = [r.getMessage() for r in warned if "not used" in r.getMessage()]
    assert said == ["--pixel-size 0.25 not used on 1 frame (001_HC): its dataset gives its own "
                    "pixel size (0.5 mm)"], said
    with ultraseg_warnings() as warned:
        evaluate(predictor, tmp_path / "hc", pixel_size_mm=0.5)    # the table's own: nothing
    assert not [r for r in warned if "not used" in r.getMessage()]


def test_evaluate_counts_the_frames_in_the_hc_error_whose_head_touches_the_edge(
        tmp_path) -> None:
    """Heads cut by the frame entered the HC error uncounted (a measurement review, O2):
    summary.json's hc_touches_edge (an mm key: null without references) counts them, and
    the printed line says how many where there are any."""
    from test_measure import hc18_cut

    from ultraseg.config import ModelConfig, PreprocessConfig
    from ultraseg.evaluate import MM_KEYS
    from ultraseg.predict import Predictor

    hc18_cut(tmp_path / "hc")                       # 002_HC's head cut by the frame
    predictor = Predictor(lambda b: (b > 0.5).astype(np.float32),
                          ModelConfig(variant="same", depth=2),
                          PreprocessConfig(size=None, normalise="unit"))
    summary, rows = evaluate(predictor, tmp_path / "hc")
    assert [r["touches_edge"] for r in rows] == [False, True]
    assert summary["hc_n"] == 2 and summary["hc_touches_edge"] == 1
    assert MM_KEYS[6] == "hc_touches_edge"     # appended: the others in place
    assert ("over 2 of 2 frames with a reference (0 with no head found; 1 of them touches "
            "the frame's edge)") in format_summary(summary), format_summary(summary)
    assert "edge" not in format_summary({**summary, "hc_touches_edge": 0})
    assert "edge" not in format_summary({k: v for k, v in summary.items()
                                         if k != "hc_touches_edge"})   # an older summary


def test_evaluate_gives_the_hc_error_s_interval_beside_it(tmp_path) -> None:
    """The HC MAE, on which HC18's target is judged, had no interval: hc_mae_mm_ci95 (an mm
    key: null without references) is the subject bootstrap of the frames' absolute errors
    (measure.hc_error_interval), its method in the Dice interval's words, printed beside
    the MAE; an older summary without it prints as before."""
    from test_measure import hc18_cut

    from ultraseg.config import ModelConfig, PreprocessConfig
    from ultraseg.evaluate import MM_KEYS
    from ultraseg.metrics import interval_words, subject_interval
    from ultraseg.predict import Predictor

    hc18_cut(tmp_path / "hc")                       # two exams, each with a reference
    predictor = Predictor(lambda b: (b > 0.5).astype(np.float32),
                          ModelConfig(variant="same", depth=2),
                          PreprocessConfig(size=None, normalise="unit"))
    summary, rows = evaluate(predictor, tmp_path / "hc")
    assert len({r["subject"] for r in rows}) == 2
    ci = subject_interval([abs(r["hc_error_mm"]) for r in rows], [r["subject"] for r in rows])
    assert summary["hc_mae_mm_ci95"] == ci and summary["hc_n_subjects"] == 2
    assert summary["hc_mae_mm_ci95_method"] == interval_words(2, 2)
    assert {"hc_mae_mm_ci95", "hc_mae_mm_ci95_method", "hc_n_subjects"} <= set(MM_KEYS)
    line = [t for t in format_summary(summary).splitlines() if "MAE" in t][0]
    assert line.startswith(f"head circumference MAE {summary['hc_mae_mm']:.2f} mm (interval "
                           f"(2 subjects) {ci[0]:.2f}-{ci[1]:.2f} mm, the 2 subjects "
                           f"resampled; {summary['hc_mae_mm_ci95_method']}), mean signed"), line
    many = {**summary, "hc_n_subjects": 8, "hc_mae_mm_ci95": [1.5, 2.25],
            "hc_mae_mm_ci95_method": "subject bootstrap, expanded percentile, exact"}
    assert (f"MAE {summary['hc_mae_mm']:.2f} mm (95% interval 1.50-2.25 mm, the 8 subjects "
            "resampled; subject bootstrap, expanded percentile, exact), mean signed"
            in format_summary(many))
    old = {k: v for k, v in summary.items() if not k.startswith(("hc_mae_mm_", "hc_n_s"))}
    assert f"MAE {summary['hc_mae_mm']:.2f} mm, mean signed" in format_summary(old)
    # no reference: null, as the other mm keys
    (tmp_path / "hc" / "training_set_pixel_size_and_HC.csv").write_text(
        "filename,pixel size(mm)\n001_HC.png,0.5\n002_HC.png,0.5\n")
    summary, _ = evaluate(predictor, tmp_path / "hc")
    assert summary["hc_mae_mm"] is None and summary["hc_mae_mm_ci95"] is None
    assert summary["hc_mae_mm_ci95_method"] is None and summary["hc_n_subjects"] is None


def test_cli_evaluate_takes_a_pixel_size(checkpoint, data, capsys) -> None:
    """The README said evaluate gives mm; it had no --pixel-size (an argparse error)."""
    assert cli.main(["evaluate", str(checkpoint), str(data), "--json", "--pixel-size", "0.1",
                     "--device", "cpu", "--precision", "fp32"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["n"] == 50
    assert cli.main(["evaluate", str(checkpoint), str(data), "--pixel-size", "0",
                     "--device", "cpu"]) == 2
    assert "--pixel-size must be a positive number" in capsys.readouterr().err


def test_hc_error_counts_the_heads_the_model_missed(tmp_path, capsys) -> None:
    """A frame with a reference head circumference and an empty prediction has no HC error;
    the summary and the printed line say how many such frames the MAE leaves out."""
    from test_predict import hc18_like

    hc18_like(tmp_path / "hc")
    table = tmp_path / "hc" / "training_set_pixel_size_and_HC.csv"
    table.write_text(table.read_text() + "002_HC.png,0.5,28.0\n")
    Image.fromarray(np.full((48, 64), 30, np.uint8)).save(tmp_path / "hc" / "training_set" /
                                                           "002_HC.png")   # no head to find

    def bright(batch: np.ndarray) -> np.ndarray:
        return (batch > 0.5).astype(np.float32)

    predictor = Predictor(bright, ModelConfig(variant="same", depth=2),
                          PreprocessConfig(size=None, normalise="unit"))
    summary, rows = evaluate(predictor, tmp_path / "hc")
    assert [r.get("hc_error_mm") is None for r in rows] == [False, True]
    assert summary["hc_n"] == 1 and summary["hc_missed"] == 1
    assert summary["hc_bias_mm"] == pytest.approx(rows[0]["hc_error_mm"])
    assert "over 1 of 2 frames with a reference (1 with no head found)" in format_summary(summary)


def test_evaluate_scales_the_boundary_offset_with_the_frame(tmp_path) -> None:
    """evaluate measures each frame with the checkpoint's offset scaled by its longer side, as
    measure does (review measurement O3): the same head at twice the resolution measured
    1.9 mm more with a 3 px offset held at frames 128 px long."""
    from scipy import ndimage
    from test_predict import _head_frame, pixel_predictor, save

    for name, k in (("one", 1), ("two", 2)):
        frame = _head_frame(k)
        inside = frame > 100
        edge = inside & ~ndimage.binary_erosion(inside)
        save(tmp_path / name / "training_set" / "001_HC.png", frame)
        save(tmp_path / name / "training_set" / "001_HC_Annotation.png",
             np.where(edge, 255, 0).astype(np.uint8))
        (tmp_path / name / "training_set_pixel_size_and_HC.csv").write_text(
            f"filename,pixel size(mm),head circumference (mm)\n001_HC.png,{0.2 / k},40.0\n")
    predictor = Predictor(pixel_predictor().run_batch, ModelConfig(variant="same", depth=2),
                          PreprocessConfig(size=64, normalise="unit"), PostprocessConfig(),
                          {"measure": {"boundary_offset_px": 3.0, "offset_frame_side_px": 128}})
    _, (one,) = evaluate(predictor, tmp_path / "one")
    _, (two,) = evaluate(predictor, tmp_path / "two")
    assert one["hc_pred_mm"] is not None
    assert two["hc_pred_mm"] == pytest.approx(one["hc_pred_mm"], abs=0.3)


def test_a_head_smaller_than_the_boundary_offset_is_not_a_head_measured(tmp_path) -> None:
    """An object whose minor semi-axis the boundary offset reaches had its axes clamped to 0
    and an HC of 0.0 mm (or 4a), averaged into the HC MAE as an error of minus the reference.
    It has no HC now: evaluate and measure leave it out of the error, count it with the heads
    not found, and a warning says why."""
    from test_predict import hc18_like

    from ultraseg.measure_files import measure_frames

    hc18_like(tmp_path / "hc")      # 001_HC: semi-axes 12 and 8 px, reference 30 mm
    predictor = Predictor(lambda b: (b > 0.5).astype(np.float32),
                          ModelConfig(variant="same", depth=2),
                          PreprocessConfig(size=None, normalise="unit"), PostprocessConfig(),
                          {"measure": {"boundary_offset_px": 10.0}})
    with ultraseg_warnings() as warned:
        summary, rows = evaluate(predictor, tmp_path / "hc")
    first = rows[0]
    assert first["area_mm2"] > 0 and first["hc_pred_mm"] is None
    assert first.get("hc_error_mm") is None
    assert summary["hc_n"] == 0 and summary["hc_missed"] == 1
    assert summary["hc_mae_mm"] is None
    said = [r.getMessage() for r in warned if "boundary offset" in r.getMessage()]
    assert len(said) == 1 and said[0].startswith("1 frame: the object is no wider")
    assert "no HC" in said[0], said
    with ultraseg_warnings() as warned:
        summary, rows = measure_frames(predictor, tmp_path / "hc")
    assert rows[0]["area_px"] > 0 and rows[0]["hc_mm"] is None and rows[0]["hc_px"] is None
    assert rows[0]["hc_error_mm"] is None
    assert summary["n_reference_missed"] == 1 and summary["hc_mae_mm"] is None
    assert summary["hc_mm_mean"] is None
    # measure measures 002_HC too (radius 9 px, no pixel size: in px): as small
    said = [r.getMessage() for r in warned if "boundary offset" in r.getMessage()]
    assert len(said) == 1 and said[0].startswith("2 frames: the object is no wider")
    assert "no HC" in said[0], said


def _ellipse(h: int, w: int, cy: int, cx: int, a: int, b: int) -> np.ndarray:
    yy, xx = np.mgrid[:h, :w]
    return ((xx - cx) / a) ** 2 + ((yy - cy) / b) ** 2 <= 1


def test_a_box_predicted_on_a_small_canvas_is_scored_where_it_lies_in_the_frame(tmp_path) -> None:
    """Non-square 24 x 40 frames (padded to square, worked on at 16 px) with a bright box off
    the centre; the predictor marks bright canvas pixels. Restored to the frame, the mask
    must land on the box: a flipped, shifted or wrongly un-padded restore scores far lower."""
    box = np.zeros((24, 40), bool)
    box[4:14, 0:20] = True
    for i in range(2):
        (tmp_path / "d" / "images").mkdir(parents=True, exist_ok=True)
        (tmp_path / "d" / "masks").mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.where(box, 220, 20).astype(np.uint8)).save(
            tmp_path / "d" / "images" / f"{i}_0.png")
        Image.fromarray(box.astype(np.uint8) * 255).save(
            tmp_path / "d" / "masks" / f"{i}_0_mask.png")
    bright = Predictor(lambda batch: (batch > 0.5).astype(np.float32),
                       ModelConfig(variant="same", depth=2),
                       PreprocessConfig(size=16, normalise="unit"), PostprocessConfig())
    summary, rows = evaluate(bright, tmp_path / "d", "folders")
    assert summary["n"] == 2
    for row in rows:
        assert row["dice"] > 0.9, row
        assert row["hd95"] <= 2.0, row


def test_a_frame_named_with_bytes_that_are_no_utf8_is_scored_and_written(checkpoint, tmp_path,
                                                                          capsys) -> None:
    import os

    data = make_dataset(tmp_path / "d", n=4, size=SIZE, seed=2)
    for sub, suffix in (("images", ".png"), ("masks", "_mask.png")):
        os.rename(bytes(data / sub / f"1_1{suffix}"),
                  bytes(data / sub / "1_1") + b"\xfe" + suffix.encode())
    assert cli.main(["evaluate", str(checkpoint), str(data), "--out", str(tmp_path / "ev"),
                     "--device", "cpu"]) == 0, capsys.readouterr().err
    rows = (tmp_path / "ev" / "per_image.csv").read_bytes().splitlines()
    assert len(rows) == 5 and any(r.startswith(b"1_1\xfe,") for r in rows)


def test_the_printed_summary_names_the_threshold_and_rules_applied() -> None:
    """The printed summary showed the flip alone, not the threshold nor the rules the figures
    were made with (a post-processing review, O5): one line names them all."""
    from ultraseg.config import PostprocessConfig

    pp = {**PostprocessConfig(threshold=0.3, min_area=40, keep_largest=True).to_dict(),
          "tta": True}
    summary = {"n": 3, "dice_mean": 0.8, "dice_nonempty_mean": 0.8, "iou_mean": 0.7,
               "hd95_median": 4.0, "hd95_n": 3, "empty_correct_rate": None,
               "postprocess": pp, "raw": {"dice_mean": 0.78, "dice_nonempty_mean": 0.78}}
    assert ("post-processing       threshold 0.3, min area 40, min peak 0.0, keep largest on, "
            "fill holes off, tta on") in format_summary(summary).splitlines()


def test_the_printed_summary_names_what_the_raw_figure_is_and_shows_hd95_in_mm() -> None:
    """'without post-processing' was printed beside a figure that still used the test-time
    flip; the README promised HD95 in px and mm, and the mm median was never printed."""
    summary = {"n": 3, "dice_mean": 0.8, "dice_nonempty_mean": 0.8, "iou_mean": 0.7,
               "hd95_median": 4.0, "hd95_n": 3, "hd95_mm_median": 0.8, "hd95_mm_n": 2,
               "empty_correct_rate": None, "postprocess": {"tta": True},
               "raw": {"dice_mean": 0.78, "dice_nonempty_mean": 0.78}}
    text = format_summary(summary)
    assert "without post-processing" not in text
    assert "threshold 0.5 alone (no rules; tta as below): 0.780" in text
    assert "HD95 median (mm)      0.8   over 2 of them with a pixel size" in text
    assert "HD95 median (mm)" not in format_summary({**summary, "hd95_mm_n": 0})


def test_the_printed_summary_rounds_each_figure_to_its_kind() -> None:
    """Every figure was printed to 4 decimals: 'HD95 median (px) 217.9447' claimed a
    ten-thousandth of a pixel, 'empty frames right 0.0000' read as a score. The HC error
    was printed to 1 decimal, measure's to 2."""
    summary = {"n": 9, "dice_mean": 0.654912, "dice_nonempty_mean": 0.70149,
               "iou_mean": 0.51234, "hd95_median": 217.9447, "hd95_n": 8,
               "hd95_mm_median": 16.3993, "hd95_mm_n": 8, "empty_correct_rate": 2 / 3,
               "postprocess": {}, "raw": {"dice_mean": 0.61, "dice_nonempty_mean": 0.6},
               "hc_n": 8, "hc_missed": 0, "hc_mae_mm": 16.5312, "hc_bias_mm": 16.0451}
    lines = format_summary(summary).splitlines()
    for start in ("Dice (all frames)     0.655   threshold 0.5 alone (no rules; tta as "
                  "below): 0.610", "Dice (non-empty)      0.701   threshold 0.5 alone: 0.600",
                  "IoU                   0.512", "HD95 median (px)      217.9   over 8",
                  "HD95 median (mm)      16.4   over 8", "empty frames right    66.7%",
                  "head circumference MAE 16.53 mm, mean signed error (predicted - "
                  "reference) +16.05 mm, over 8 of 8"):
        assert any(line.startswith(start) for line in lines), start
    assert "217.94" not in "\n".join(lines)
    assert "post-processing       n/a" in lines      # (none recorded: an older summary.json)
    # the HC error in mm to 2 decimals, as measure prints it and the README quotes it (a
    # model 0.02 mm off printed 0.0 mm); HD95 in mm stays at 1
    small = format_summary({**summary, "hc_mae_mm": 0.0234, "hc_bias_mm": -0.0151})
    assert "head circumference MAE 0.02 mm, mean signed error (predicted - reference) " \
           "-0.02 mm" in small
    assert summary["hd95_median"] == 217.9447                    # the figures kept whole


def test_an_unreadable_frame_stops_evaluation_pointing_at_inspect(tmp_path) -> None:
    """Scores over the frames that could be read would be no evaluation of the set: the
    first bad file stops it, and the message says how to list every bad file at once."""
    root = make_dataset(tmp_path / "my data's", n=6, size=SIZE, seed=2)
    bad = sorted((root / "images").glob("*.png"))[2]
    bad.write_bytes(b"")
    with pytest.raises(UltrasegError) as err:
        evaluate(_constant_predictor(0.9), root, out=tmp_path / "ev")
    assert str(err.value).startswith(f"{bad}: ") and "0 bytes" in str(err.value)
    assert "` lists every problem" in str(err.value)
    # pasted as written: a folder with a space or a quote is one word
    assert pasted(str(err.value)) == ["ultraseg", "inspect", str(root)]
    assert not (tmp_path / "ev").exists()                    # nothing written


def test_scoring_the_training_data_without_a_split_is_warned_about(data, tmp_path) -> None:
    """`ultraseg evaluate RUN/best.ckpt DATA` on the data the run trained on scored its
    training frames too, with no word: a user reported the training-set Dice."""
    from conftest import ultraseg_warnings

    run = tmp_path / "run"
    run.mkdir()
    cfg = ModelConfig(variant="same", width=4, depth=2)
    meta = make_meta(cfg, PreprocessConfig(size=SIZE), PostprocessConfig())
    meta["run"] = {"data": {"path": str(data)}}
    save_checkpoint(run / "best.ckpt", build_model(cfg).state_dict(), meta)
    names = sorted(p.stem for p in (data / "images").iterdir())
    (run / "split.json").write_text(json.dumps({"train": names[:40], "val": names[40:]}))
    predictor = load(run / "best.ckpt", device="cpu", precision="fp32")
    with ultraseg_warnings() as warned:
        evaluate(predictor, data)
    (said,) = [r.getMessage() for r in warned]
    assert "the data the model was trained on" in said and f"--split {run / 'split.json'}" in said
    with ultraseg_warnings() as warned:            # the same folder, spelt another way
        evaluate(predictor, data.parent / ".." / data.parent.name / data.name)
    assert len(warned) == 1
    with ultraseg_warnings() as warned:
        evaluate(predictor, data, split_file=run / "split.json")
    assert not warned
    # the advice names only the sides the split holds: after --val-fraction 0 the
    # validation side it named was empty, and the command it gave failed
    for sides, says in (({"train": names[:40], "val": [], "test": names[40:]},
                         "--subset test` scores the held-out side"),
                        ({"train": names, "val": []}, "has no validation or held-out side")):
        (run / "split.json").write_text(json.dumps(sides))
        with ultraseg_warnings() as warned:
            evaluate(predictor, data)
        (said,) = [r.getMessage() for r in warned]
        assert says in said and "scores the validation side" not in said, said
        # no Python call that would score nothing is suggested either
        assert "split_file=" not in said or "--subset test`" in said
    other = make_dataset(tmp_path / "other", n=10, size=SIZE, seed=5)
    with ultraseg_warnings() as warned:
        evaluate(predictor, other)                  # other data: nothing to say
    assert not warned
    # one class folder of the BUSI-like set it was trained on: training frames scored too
    import shutil

    busi = tmp_path / "busi"
    for cls, frames in (("benign", range(0, 6)), ("malignant", range(6, 12))):
        (busi / cls).mkdir(parents=True)
        for i in frames:
            shutil.copy(data / "images" / f"{names[i]}.png", busi / cls / f"{cls} ({i}).png")
            shutil.copy(data / "masks" / f"{names[i]}_mask.png",
                        busi / cls / f"{cls} ({i})_mask.png")
    meta["run"] = {"data": {"path": str(busi), "layout": "auto"}}
    save_checkpoint(run / "busi.ckpt", build_model(cfg).state_dict(), meta)
    on_busi = load(run / "busi.ckpt", device="cpu", precision="fp32")
    with ultraseg_warnings() as warned:
        evaluate(on_busi, busi / "benign")
    said = [r.getMessage() for r in warned]
    assert len(said) == 1 and said[0].startswith(f"6 of the 6 frames scored are frames of {busi}")
    # another dataset that merely lies inside the training folder shares no frame: no word
    inside = make_dataset(busi / "extra", n=10, size=SIZE, seed=7)
    with ultraseg_warnings() as warned:
        evaluate(on_busi, inside)
    assert not warned
    # an exported model keeps no paths: the run folder it lies in says
    (run / "config.json").write_text(json.dumps({"data": {"path": str(data)}}))
    onnx_like = Predictor(lambda b: np.zeros_like(b), cfg, PreprocessConfig(size=SIZE),
                          PostprocessConfig(), {}, source=str(run / "model.onnx"))
    with ultraseg_warnings() as warned:
        evaluate(onnx_like, data)
    assert len(warned) == 1 and "the data the model was trained on" in warned[0].getMessage()



def test_training_data_moved_as_the_readme_says_is_still_recognised(data, tmp_path) -> None:
    """After the data moved and `data.path` was set in the run's config.json (as the README
    says), the checkpoint's old path won: scoring the training frames had no warning."""
    from conftest import ultraseg_warnings

    run = tmp_path / "run"
    run.mkdir()
    cfg = ModelConfig(variant="same", width=4, depth=2)
    meta = make_meta(cfg, PreprocessConfig(size=SIZE), PostprocessConfig(),
                     run={"data": {"path": str(tmp_path / "where-it-was")}})
    save_checkpoint(run / "best.ckpt", build_model(cfg).state_dict(), meta)
    (run / "config.json").write_text(json.dumps({"data": {"path": str(data)}}))
    with ultraseg_warnings() as warned:
        evaluate(load(run / "best.ckpt", device="cpu"), data)
    (said,) = [r.getMessage() for r in warned]
    assert "the data the model was trained on" in said


# ------------------------------------------------------------------ whose split is scored
def _run(folder: Path, data: Path, split_seed: int, val_fraction: float = 0.2) -> Path:
    """A run folder as train writes it: best.ckpt recording its run (data path, split seed,
    fractions) and split.json drawn as train draws it; returns the folder."""
    from ultraseg.data import run_split
    from ultraseg.io import open_dataset

    folder.mkdir(parents=True)
    cfg = ModelConfig(variant="same", width=4, depth=2)
    run = {"data": {"path": str(data), "layout": "folders"},
           "train": {"seed": 0, "split_seed": split_seed, "val_fraction": val_fraction,
                     "test_fraction": 0.0}}
    save_checkpoint(folder / "best.ckpt", build_model(cfg).state_dict(),
                    make_meta(cfg, PreprocessConfig(size=SIZE), PostprocessConfig(), run=run))
    ds = open_dataset(data, "folders")
    names, subjects = [s.name for s in ds.labelled], [s.subject for s in ds.labelled]
    tr, va, te = run_split(subjects, 0.0, val_fraction, split_seed)
    write_split(folder / "split.json", names, subjects, tr, va, split_seed, val_fraction, te)
    return folder


def test_another_runs_split_is_warned_about(data, tmp_path) -> None:
    """`evaluate m_cls/best.ckpt DATA --split m_s1/split.json` (a run of another --split-seed)
    printed a Dice with no word, though the frames of that split's validation side were
    m_cls's training frames: the check for training frames ran only without a split."""
    from conftest import ultraseg_warnings

    own, other = _run(tmp_path / "m_cls", data, 0), _run(tmp_path / "m_s1", data, 3)
    trained = set(json.loads((own / "split.json").read_text())["train"])
    scored = json.loads((other / "split.json").read_text())["val"]
    shared = len(trained & set(scored))
    assert shared > 0                                       # (the case of the report)
    model = load(own / "best.ckpt", device="cpu", precision="fp32")
    with ultraseg_warnings() as warned:
        evaluate(model, data, split_file=other / "split.json")
    (said,) = [r.getMessage() for r in warned]
    assert said.startswith(f"{shared} of the {len(scored)} frames scored")
    assert str(other / "split.json") in said and str(own / "split.json") in said
    assert said.endswith("scores its own validation side")
    # its own split, or a copy of it, any side (--subset train is asked for on purpose)
    copy = tmp_path / "elsewhere" / "split.json"
    copy.parent.mkdir()
    copy.write_text((own / "split.json").read_text())
    for split, subset in ((own / "split.json", None), (copy, None), (copy, "train")):
        with ultraseg_warnings() as warned:
            evaluate(model, data, split_file=split, subset=subset)
        assert not warned, (split, subset)
    # the other run's training side holds no frame of its own validation side
    with ultraseg_warnings() as warned:
        evaluate(load(other / "best.ckpt", device="cpu"), data, split_file=copy)
    assert len(warned) == 1 and "trained on" in warned[0].getMessage()
    # another dataset whose frames have the same names (1.png, case001...): not its frames
    import shutil
    namesake = tmp_path / "namesake"
    shutil.copytree(data, namesake)
    with ultraseg_warnings() as warned:
        evaluate(model, namesake, split_file=other / "split.json")
    assert not warned, [r.getMessage() for r in warned]


def test_another_runs_split_is_warned_about_without_the_run_folder(data, tmp_path) -> None:
    """A checkpoint moved out of its run folder keeps its run's split seed and fractions: a
    split drawn otherwise may put its training frames on the side scored."""
    from conftest import ultraseg_warnings

    own, other = _run(tmp_path / "m_cls", data, 0), _run(tmp_path / "m_s1", data, 3)
    alone = tmp_path / "shared" / "model.ckpt"
    alone.parent.mkdir()
    alone.write_bytes((own / "best.ckpt").read_bytes())
    model = load(alone, device="cpu", precision="fp32")
    with ultraseg_warnings() as warned:
        evaluate(model, data, split_file=other / "split.json")
    (said,) = [r.getMessage() for r in warned]
    assert str(other / "split.json") in said and "split seed 3" in said and "0" in said
    with ultraseg_warnings() as warned:                      # the split it was trained with
        evaluate(model, data, split_file=own / "split.json")
    assert not warned
    other_fraction = _run(tmp_path / "m_v3", data, 0, val_fraction=0.4)
    with ultraseg_warnings() as warned:
        evaluate(model, data, split_file=other_fraction / "split.json")
    assert len(warned) == 1 and "0.4" in warned[0].getMessage()


def test_cli_warns_about_another_runs_split(data, tmp_path, capsys) -> None:
    """The CLI scores it (a user may mean it) and says so."""
    from conftest import ultraseg_warnings

    own, other = _run(tmp_path / "m_cls", data, 0), _run(tmp_path / "m_s1", data, 3)
    with ultraseg_warnings() as warned:
        assert cli.main(["evaluate", str(own / "best.ckpt"), str(data), "--split",
                         str(other / "split.json"), "--json", "--device", "cpu"]) == 0
    assert len(warned) == 1
    assert json.loads(capsys.readouterr().out)["n"] > 0


def test_an_out_that_cannot_be_a_folder_is_refused_before_scoring(data, tmp_path,
                                                                   capsys) -> None:
    """`evaluate --out afile` scored every frame, then said only 'cannot create the output
    folder': the check comes first now, and nothing is scored."""
    calls = []

    def backend(batch: np.ndarray) -> np.ndarray:
        calls.append(len(batch))
        return np.zeros_like(batch)

    afile = tmp_path / "afile"
    afile.write_text("mine\n")
    predictor = Predictor(backend, ModelConfig(variant="same", depth=2),
                          PreprocessConfig(size=SIZE), PostprocessConfig())
    for out in (afile, afile / "sub"):
        with pytest.raises(UltrasegError, match="cannot create the output folder") as err:
            evaluate(predictor, data, "folders", out=out)
        assert str(afile) in str(err.value)
    assert not calls and afile.read_text() == "mine\n"


def test_cli_out_that_is_a_file(checkpoint, data, tmp_path, capsys) -> None:
    afile = tmp_path / "afile"
    afile.write_text("mine\n")
    assert cli.main(["evaluate", str(checkpoint), str(data), "--out", str(afile),
                     "--device", "cpu"]) == 2
    out, err = capsys.readouterr()
    assert "frames" not in out and f"{afile}: cannot create the output folder" in err


def test_a_null_measure_entry_in_a_checkpoint_is_no_crash(data, tmp_path) -> None:
    """A checkpoint whose metadata holds "measure": null stopped evaluate with an
    AttributeError (measure treats it as no offset)."""
    cfg = ModelConfig(variant="same", width=4, depth=2)
    meta = {**make_meta(cfg, PreprocessConfig(size=SIZE), PostprocessConfig()), "measure": None}
    save_checkpoint(tmp_path / "m.ckpt", build_model(cfg).state_dict(), meta)
    summary, _ = evaluate(load(tmp_path / "m.ckpt", device="cpu"), data, "folders",
                          pixel_size_mm=0.1)
    assert summary["n"] == 50


def test_names_that_a_spreadsheet_would_run_are_written_as_text(data, tmp_path) -> None:
    """A received frame named `=HYPERLINK("evil.example","y").png` went into per_image.csv (and
    measure's measurements.csv) as it was, which Excel and LibreOffice run as a formula
    opened. A text cell starting with = + - @ (or a tab or carriage return) now starts with
    an apostrophe, which they show as text; numbers are written as they are."""
    from ultraseg.measure_files import measure_frames

    root = tmp_path / "data"
    shutil.copytree(data, root)
    name = '=HYPERLINK("evil.example","y")'
    for folder, suffix in (("images", ""), ("masks", "_mask")):
        (root / folder / f"1_1{suffix}.png").rename(root / folder / f"{name}{suffix}.png")
    out = tmp_path / "ev"
    evaluate(_constant_predictor(0.0), root, "folders", out=out)
    with open(out / "per_image.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert "'" + name in {r["name"] for r in table}
    assert all(not r[k].startswith(("=", "+", "-", "@")) for r in table for k in r)
    measure_frames(_constant_predictor(0.0), root / "images" / f"{name}.png",
                   out=tmp_path / "m")
    with open(tmp_path / "m" / "measurements.csv", newline="") as f:
        (row,) = csv.DictReader(f)
    assert row["name"] == "'" + name


@pytest.mark.parametrize("stage", ["restore", "postprocess", "network"])
def test_running_out_of_memory_on_a_frame_names_it_and_its_size(tmp_path, monkeypatch,
                                                                 stage) -> None:
    """An out-of-memory on one frame at its full resolution said only 'out of memory', with
    advice (--batch-size) that cannot help there: it names the frame and its size now (and
    stops, as an unreadable frame stops evaluation). The network's own batch not fitting
    stays the machine's limit for the whole run."""
    import ultraseg.evaluate as evaluate_mod
    import ultraseg.predict as predict_mod

    root = make_dataset(tmp_path / "data", n=6, size=SIZE, seed=2)
    calls = [0]

    def third(real):
        def wrapped(*args, **kw):
            calls[0] += 1
            if calls[0] == 3:
                raise MemoryError("Unable to allocate 1.2 GiB for an array")
            return real(*args, **kw)
        return wrapped

    predictor = _constant_predictor(0.9)
    if stage == "restore":
        monkeypatch.setattr(predict_mod, "restore", third(predict_mod.restore))
    elif stage == "postprocess":
        monkeypatch.setattr(evaluate_mod, "apply_postprocess",
                            third(evaluate_mod.apply_postprocess))
    else:
        predictor = Predictor(third(lambda batch: np.full_like(batch, 0.9)),
                              ModelConfig(variant="same", depth=2), PreprocessConfig(size=SIZE),
                              PostprocessConfig(), batch_size=1)
    images = {str(p) for p in (root / "images").glob("*.png")}
    with pytest.raises(MemoryError if stage == "network" else UltrasegError) as err:
        evaluate(predictor, root)
    if stage != "network":
        path, message = str(err.value).split(": ", 1)
        assert path in images
        assert message.startswith(f"out of memory at its full resolution ({SIZE}x{SIZE}, "
                                  "0.0 Mpx"), message


def test_frames_padded_to_a_strip_of_the_canvas_are_warned_about(tmp_path) -> None:
    """Evaluating on frames whose shorter side covers under 8 canvas pixels (40x2000 on a
    32 px canvas): the figures are of masks the network barely saw; a warning says so."""
    from conftest import ultraseg_warnings

    root = tmp_path / "data"
    for sub in ("images", "masks"):
        (root / sub).mkdir(parents=True)
    for name, (h, w) in {"a": (2000, 40), "b": (32, 32)}.items():
        Image.fromarray(np.full((h, w), 90, np.uint8)).save(root / "images" / f"{name}.png")
        m = np.zeros((h, w), np.uint8)
        m[h // 4:h // 2, w // 4:w // 2] = 255
        Image.fromarray(m).save(root / "masks" / f"{name}_mask.png")
    with ultraseg_warnings() as warned:
        evaluate(_constant_predictor(0.9), root)
    thin = [r.getMessage() for r in warned if "long and thin" in r.getMessage()]
    assert len(thin) == 1 and "1 frame(s)" in thin[0] and str(root / "images" / "a.png") in thin[0]


def test_evaluating_a_split_says_which_side_it_scored(checkpoint, data, split_file, tmp_path,
                                                      capsys) -> None:
    """`--split RUN/split.json` alone scores the validation side, which chose the epoch and
    the post-processing; neither summary.json nor the printed summary said so, and the figure
    read as a held-out one. Both now name the side and the split; the side stays 'val'."""
    path, doc = split_file
    out = tmp_path / "ev"
    assert cli.main(["evaluate", str(checkpoint), str(data), "--split", str(path), "--out",
                     str(out), "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    assert summary["subset"] == "val" and summary["split"] == str(path)
    assert summary["n"] == len(doc["val"])
    first = printed.splitlines()[0]
    assert f"validation side of {path}" in first and "chose the epoch" in first
    assert cli.main(["evaluate", str(checkpoint), str(data), "--split", str(path), "--subset",
                     "train", "--json", "--device", "cpu"]) == 0
    assert json.loads(capsys.readouterr().out)["subset"] == "train"
    whole, _ = evaluate(load(checkpoint), data)
    assert whole["subset"] is None and whole["split"] is None
    assert "side of" not in format_summary(whole)


def test_a_split_holding_frames_out_warns_once_that_its_validation_side_is_scored(
        checkpoint, data, tmp_path) -> None:
    """Where the split has a test side and none was asked for, one warning names --subset
    test; asked for a side, or without a test side, none."""
    from conftest import ultraseg_warnings

    from ultraseg.data import run_split
    from ultraseg.io import open_dataset

    ds = open_dataset(data, "folders")
    names, subjects = [s.name for s in ds.labelled], [s.subject for s in ds.labelled]
    tr, va, te = run_split(subjects, 0.2, 0.2, 0)
    path = tmp_path / "split.json"
    write_split(path, names, subjects, tr, va, 0, 0.2, te)
    predictor = load(checkpoint)
    with ultraseg_warnings() as warned:
        summary, _ = evaluate(predictor, data, split_file=path)
    named = [r for r in warned if "--subset test" in r.getMessage()]
    assert len(named) == 1 and f"holds {len(te)} frames out for testing" in \
        named[0].getMessage()
    assert summary["subset"] == "val" and summary["n"] == len(va)
    for subset in ("val", "test"):
        with ultraseg_warnings() as warned:
            evaluate(predictor, data, split_file=path, subset=subset)
        assert not [r for r in warned if "--subset test" in r.getMessage()]


def test_per_image_csv_ends_its_lines_as_measurements_csv_does(data, tmp_path) -> None:
    """per_image.csv came out CRLF (the csv module's default) while measurements.csv is LF;
    on Windows the text layer would have doubled the CR (a blank line between rows in Excel)."""
    evaluate(_constant_predictor(0.0), data, "folders", out=tmp_path / "ev")
    text = (tmp_path / "ev" / "per_image.csv").read_bytes()
    assert b"\r" not in text and text.count(b"\n") == 51


def test_the_summary_is_recomputed_from_per_image_csv_to_the_last_bit(data, tmp_path) -> None:
    """The table's floats had 6 significant digits: means recomputed from it differed from
    summary.json's by about 1e-8."""
    from ultraseg.metrics import summarise

    summary, _ = evaluate(_constant_predictor(1.0), data, "folders", out=tmp_path / "ev")
    with open(tmp_path / "ev" / "per_image.csv", newline="") as f:
        table = [{**r, "truth_empty": r["truth_empty"] == "True",
                  "pred_empty": r["pred_empty"] == "True"} for r in csv.DictReader(f)]
    again = summarise(table)
    for key in ("dice_mean", "iou_mean", "precision_mean", "dice_nonempty_mean", "hd95_median",
                "dice_mean_ci95", "dice_nonempty_mean_ci95"):
        assert again[key] == summary[key], key


def test_the_raw_figures_are_recomputed_from_per_image_csv(data, tmp_path) -> None:
    """summary.json's 'raw' block gave IoU, HD95 and empty-frame figures at threshold 0.5 that
    no column of per_image.csv holds (only dice_raw): it keeps the Dice figures the table
    gives."""
    summary, _ = evaluate(_constant_predictor(0.6).with_options(
        postprocess=PostprocessConfig(threshold=0.7)), data, "folders", out=tmp_path / "ev")
    with open(tmp_path / "ev" / "per_image.csv", newline="") as f:
        table = list(csv.DictReader(f))
    raw = [float(r["dice_raw"]) for r in table]
    nonempty = [float(r["dice_raw"]) for r in table if r["truth_empty"] == "False"]
    assert summary["raw"] == {"dice_mean": float(np.mean(raw)),
                              "dice_nonempty_mean": float(np.mean(nonempty))}


# ------------------------------------------------------------------ provenance and the lock
def test_summary_json_says_which_model_data_and_arithmetic_gave_it(data, tmp_path) -> None:
    """summary.json named no checkpoint, data, version, precision or device: bf16 and fp32
    give other figures, and nothing in the files said which was used. No timestamp: a
    second run writes the same bytes."""
    import hashlib

    import torch

    import ultraseg

    ckpt = tmp_path / "run" / "best.ckpt"
    ckpt.parent.mkdir()
    cfg = ModelConfig(variant="same", width=4, depth=2)
    save_checkpoint(ckpt, build_model(cfg).state_dict(), make_meta(
        cfg, PreprocessConfig(size=SIZE), PostprocessConfig(),
        {"best_epoch": 3, "history": [{"epoch": e} for e in range(1, 6)]}))
    link = tmp_path / "data-link"
    link.symlink_to(data)
    predictor = load(ckpt, device="cpu", precision="fp32")
    summary, _ = evaluate(predictor, link, out=tmp_path / "a")
    assert summary["checkpoint"] == {
        "path": str(ckpt.resolve()), "sha256": hashlib.sha256(ckpt.read_bytes()).hexdigest(),
        "ultraseg_version": ultraseg.__version__,
        "trained_with_version": ultraseg.__version__, "best_epoch": 3, "epochs_run": 5}
    assert (summary["data"], summary["layout"]) == (str(data.resolve()), "folders")
    assert (summary["ultraseg_version"], summary["torch_version"]) == (ultraseg.__version__,
                                                                       torch.__version__)
    assert (summary["precision"], summary["device"]) == ("fp32", "cpu")
    assert json.loads((tmp_path / "a" / "summary.json").read_text())["checkpoint"] \
        == summary["checkpoint"]
    evaluate(predictor, link, out=tmp_path / "b")
    for name in ("summary.json", "per_image.csv"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    # a predictor built by hand: no file, no engine to name
    summary, _ = evaluate(_constant_predictor(0.0), data, "folders")
    assert summary["checkpoint"] is None and summary["layout"] == "folders"
    assert "precision" not in summary and "torch_version" not in summary


def test_the_summary_hashes_the_checkpoint_that_was_loaded_not_its_path_now(data,
                                                                           tmp_path) -> None:
    """provenance read the file at the predictor's path a second time to hash it: a
    checkpoint replaced between the load and the scoring (a training run saving best.ckpt
    again) was recorded as the model that gave figures it never gave."""
    import hashlib

    ckpt = tmp_path / "best.ckpt"
    cfg = ModelConfig(variant="same", width=4, depth=2)
    save_checkpoint(ckpt, build_model(cfg).state_dict(),
                    make_meta(cfg, PreprocessConfig(size=SIZE), PostprocessConfig()))
    loaded = hashlib.sha256(ckpt.read_bytes()).hexdigest()
    predictor = load(ckpt, device="cpu", precision="fp32")
    save_checkpoint(ckpt, build_model(cfg).state_dict(),      # other weights, same path
                    make_meta(cfg, PreprocessConfig(size=SIZE), PostprocessConfig()))
    assert hashlib.sha256(ckpt.read_bytes()).hexdigest() != loaded
    summary, _ = evaluate(predictor, data)
    assert summary["checkpoint"]["sha256"] == loaded


def test_evaluate_holds_its_output_folder_while_it_writes(data, tmp_path, monkeypatch) -> None:
    """evaluate took no lock: two checkpoints scored into one --out at once could leave
    per_image.csv of one and summary.json of the other."""
    import threading

    import ultraseg.evaluate as ev
    from ultraseg.fileio import LOCK_FILE, output_lock

    from conftest import held_elsewhere

    out, answers = tmp_path / "ev", []
    with held_elsewhere(out, "evaluate"):            # refused before any scoring
        with pytest.raises(UltrasegError, match="in use by another ultraseg command"):
            evaluate(_constant_predictor(0.0), data, "folders", out=out)
    real = ev.atomic_write_texts

    def probed(*args):
        def other() -> None:
            try:
                with output_lock(out, "evaluate"):
                    answers.append("got it")
            except UltrasegError as e:
                answers.append(str(e).split("(")[1].split(",")[0])
        thread = threading.Thread(target=other)
        thread.start()
        thread.join()
        return real(*args)

    monkeypatch.setattr(ev, "atomic_write_texts", probed)
    evaluate(_constant_predictor(0.0), data, "folders", out=out)
    assert answers == ["evaluate"]
    assert LOCK_FILE not in {p.name for p in out.iterdir()}


@pytest.mark.parametrize("failing", ["per_image.csv", "summary.json"])
def test_a_failed_write_leaves_both_files_of_the_earlier_evaluation(data, tmp_path, monkeypatch,
                                                                    failing) -> None:
    """per_image.csv was written, then summary.json: a full disk at the second left the new
    table beside the old summary (another threshold's means), while the error said the
    folder 'was left as it was'. Both are written before either replaces its file."""
    import errno
    import tempfile

    import ultraseg.fileio as fileio

    out = tmp_path / "ev"
    evaluate(_constant_predictor(0.0), data, "folders", out=out)
    before = {n: (out / n).read_bytes() for n in ("per_image.csv", "summary.json")}
    names = sorted(p.name for p in out.iterdir())
    real = tempfile.mkstemp

    def full(*args, **kwargs):
        if failing in kwargs.get("prefix", ""):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(*args, **kwargs)

    monkeypatch.setattr(fileio.tempfile, "mkstemp", full)
    with pytest.raises(UltrasegError, match=f"{failing}: cannot write the file: no space left.*"
                                            "left as it was"):
        evaluate(_constant_predictor(1.0), data, "folders", out=out)
    assert {n: (out / n).read_bytes() for n in before} == before
    assert sorted(p.name for p in out.iterdir()) == names         # no temporaries left


@pytest.mark.parametrize("read_only", [True, False])
def test_an_output_folder_that_cannot_be_written_is_refused_with_its_reason(tmp_path, monkeypatch,
                                                                           read_only) -> None:
    """--out on a read-only file system was refused as 'permission denied' (os.access is
    False for both, and the words were fixed); predict, measure and export say 'read-only
    file system'. Simulated: root may write anywhere, and a test cannot mount."""
    import os
    from types import SimpleNamespace

    from ultraseg.evaluate import check_out_folder

    monkeypatch.setattr(os, "access", lambda path, mode: False)
    flag = os.ST_RDONLY if read_only else 0
    monkeypatch.setattr(os, "statvfs", lambda path: SimpleNamespace(f_flag=flag))
    reason = "read-only file system" if read_only else "permission denied"
    with pytest.raises(UltrasegError, match=f"cannot write in the output folder \\({reason}\\)"):
        check_out_folder(tmp_path)
    with pytest.raises(UltrasegError, match=f"cannot create the output folder \\({reason} in "):
        check_out_folder(tmp_path / "new" / "ev")


# ------------------------------------------------------------------ what a row carries
def test_a_row_names_its_image_and_both_areas(data, truths, tmp_path) -> None:
    """per_image.csv had no path to join a row to its file and no area of either mask (on a
    dataset without a pixel size none at all): no Bland-Altman of lesion size, no Dice by
    lesion size."""
    _, rows = evaluate(_constant_predictor(1.0), data, "folders", out=tmp_path / "ev")
    for row in rows:
        assert row["image"] == str(data / "images" / f"{row['name']}.png")
        assert row["pred_area_px"] == SIZE * SIZE                   # every pixel predicted
        assert row["truth_area_px"] == int(truths[row["name"]].sum())
        assert "touches_edge" not in row          # measured only where the pixel size is known
    with open(tmp_path / "ev" / "per_image.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert [int(r["truth_area_px"]) for r in table] == [r["truth_area_px"] for r in rows]


def test_a_measured_row_carries_measures_quality_flags(tmp_path) -> None:
    """HC rows left out touches_edge, n_components and ellipse_method, which measure writes:
    heads cut by the frame's edge could not be dropped from an error analysis of the test
    side (measure takes no split). pred_area_px is the whole mask scored; area_mm2 the largest
    component measured."""
    from test_predict import hc18_like

    def two_heads(batch: np.ndarray) -> np.ndarray:
        out = (batch > 0.5).astype(np.float32)
        out[..., 0, :3] = 1.0                          # a second region, along the top edge
        return out

    hc18_like(tmp_path / "hc")
    predictor = Predictor(two_heads, ModelConfig(variant="same", depth=2),
                          PreprocessConfig(size=None, normalise="unit"))
    first, second = evaluate(predictor, tmp_path / "hc")[1]
    head = _ellipse(48, 64, 20, 30, 12, 8)
    assert (first["n_components"], first["touches_edge"]) == (2, False)
    assert first["ellipse_method"] in ("boundary_fit", "moments")
    assert first["pred_area_px"] == int(head.sum()) + 3 == first["truth_area_px"] + 3
    assert first["area_mm2"] == pytest.approx(0.25 * head.sum())    # the head alone
    assert "n_components" not in second and second["pred_area_px"] > 0  # no pixel size: unmeasured


def test_every_column_of_the_tables_is_in_the_readmes_column_tables(tmp_path) -> None:
    """per_image.csv's columns were documented nowhere (dice_raw, hc_error_mm's sign, that
    the mm measurements are the largest region's), measurements.csv's only in part."""
    from test_predict import hc18_like

    from ultraseg.measure_files import MEASURE_COLUMNS

    readme = Path(__file__).resolve().parents[1] / "README.md"
    if not readme.is_file():
        pytest.skip("no README.md")
    text = readme.read_text(encoding="utf-8")
    start = text.index("### The tables `evaluate` and `measure` write")
    per_image, measurements = text[start:].split("`measurements.csv` (every column")[:2]
    measurements = measurements.split("\n## ")[0]
    hc18_like(tmp_path / "hc")
    predictor = Predictor(lambda b: (b > 0.5).astype(np.float32),
                          ModelConfig(variant="same", depth=2),
                          PreprocessConfig(size=None, normalise="unit"))
    _, rows = evaluate(predictor, tmp_path / "hc", pixel_size_mm=0.3)
    columns = {k for r in rows for k in r} | {"class", "pixel_height_mm", "pixel_width_mm"}
    assert [k for k in sorted(columns) if f"`{k}`" not in per_image] == []
    assert [k for k in MEASURE_COLUMNS if f"`{k}`" not in measurements] == []


def test_the_printed_share_of_empty_frames_right_is_100_or_0_percent_only_when_exact() -> None:
    """'empty frames right 100%' was printed for 249 of 250 (.0% rounds 0.996 up), saying
    every empty frame was predicted empty beside one that was not; 1 of 250 printed 0%."""
    summary = {"n": 250, "dice_mean": 0.8, "dice_nonempty_mean": 0.8, "iou_mean": 0.7,
               "hd95_median": 4.0, "hd95_n": 3, "postprocess": {}, "raw": {}}

    def share(rate):
        line, = [s for s in format_summary({**summary, "empty_correct_rate": rate}).splitlines()
                 if s.startswith("empty frames right")]
        return line.split()[-1]
    assert share(249 / 250) == "99.6%"
    assert share(1 / 250) not in ("0%", "0.0%") and share(1 / 250) == "0.4%"
    assert share(0.0004) == "<0.1%" and share(0.9996) == ">99.9%"
    assert share(1.0) == "100%" and share(0.0) == "0%"
    assert share(2 / 3) == "66.7%" and share(None) == "n/a"


@pytest.mark.parametrize("sides", [{"train": ["a"], "val": ["b"], "test": ["c"]},
                                   {"train": ["a"], "val": [], "test": ["c"]},
                                   {"train": ["a"], "val": ["b"]}])
def test_the_split_advice_pastes_as_written(tmp_path, sides) -> None:
    """`ultraseg evaluate MODEL p h --split r h/split.json` was refused as pasted
    ('unrecognized arguments: h h/split.json'): the folder and the split are one word each."""
    from ultraseg.evaluate import _split_advice

    run = tmp_path / "r h's"
    run.mkdir()
    split = run / "split.json"
    split.write_text(json.dumps(sides))
    folder = tmp_path / 'p "h"'
    words = pasted(_split_advice(split, folder))
    assert words[:5] == ["ultraseg", "evaluate", "MODEL", str(folder), "--split"], words
    assert words[5] == str(split), words


def test_the_inspect_command_an_unreadable_frame_names_reads_the_set_as_evaluate_did(
        tmp_path, capsys) -> None:
    """`evaluate RUN/best.ckpt D3 --fill-outlines` stopped at an outline with a gap and said
    `ultraseg inspect D3` lists every problem: that inspect read the masks as solid masks and
    found none ('problems 0'). The command carries the settings that change what inspect
    reads: --fill-outlines (here from the flag; from the checkpoint alike), --subject-pattern,
    --label and a --layout given."""
    from PIL import Image

    from ultraseg import cli

    root, outline, _ = outline_dataset(tmp_path / "D 3", n=4)
    gap = outline.copy()
    gap[: outline.shape[0] // 2] = False                # half the circle left undrawn
    Image.fromarray(gap.astype(np.uint8) * 255).save(root / "masks" / "s2_1_mask.png")
    with pytest.raises(UltrasegError) as err:
        evaluate(_constant_predictor(0.9, size=32), root, "folders", r"^(s\d)_",
                 fill_outlines=True, label=1)
    words = pasted(str(err.value))
    assert words[:3] == ["ultraseg", "inspect", str(root)], words
    assert cli.main(words[1:]) == 2                     # that inspect finds the problem
    assert "closed contour" in capsys.readouterr().err
    assert cli.main(words[1:3]) == 0                    # where the bare one found none
    capsys.readouterr()
    assert {"--fill-outlines", "--layout", "--subject-pattern", "--label"} <= set(words), words


# ------------------------------------------------------------------ another locale
def _non_ascii_run(tmp_path: Path) -> tuple[Path, Path]:
    """A folder named 'de中😀' of frames named 'K_e中😀J' (é for e), and a run of it (best.ckpt
    recording it, its split.json) as a UTF-8 locale writes them."""
    data = make_dataset(tmp_path / "d\u00e9\u4e2d\U0001f600", n=12, size=SIZE, seed=0)
    for f in sorted(data.glob("*/*.png")):
        k, rest = f.name.split("_", 1)
        f.rename(f.with_name(f"{k}_\u00e9\u4e2d\U0001f600{rest}"))
    return data, _run(tmp_path / "r\u00fcn", data, 0, 0.5)


def test_a_split_and_run_made_under_utf_8_are_read_under_an_ascii_locale(tmp_path) -> None:
    """Names read back as the locale decoded them when they were written: under a POSIX
    locale (cron, ssh host cmd) a valid split was refused ('split names N frames that are not
    in the dataset'), and the warning that the frames scored are the model's training data
    was lost (the path, not encodable there, was taken for an unrelated folder)."""
    from conftest import under_ascii_locale

    data, run = _non_ascii_run(tmp_path)
    done = under_ascii_locale("evaluate", str(run / "best.ckpt"), str(data),
                              "--split", str(run / "split.json"), "--threads", "1")
    assert done.returncode == 0, done.stderr
    val = json.loads((run / "split.json").read_text(encoding="utf-8"))["val"]
    assert f"frames                {len(val)}" in done.stdout
    done = under_ascii_locale("evaluate", str(run / "best.ckpt"), str(data), "--threads", "1")
    assert done.returncode == 0, done.stderr
    assert "the data the model was trained on" in done.stderr


def test_another_split_s_training_frames_are_warned_of_under_an_ascii_locale(tmp_path) -> None:
    """evaluate reads the model's own split.json to count the frames of another split's side
    that the model trained on (_split_doc): its names must be read back as the locale names
    the frames, or under an ASCII locale none matched and the warning was lost."""
    from conftest import under_ascii_locale

    data, run = _non_ascii_run(tmp_path)
    doc = json.loads((run / "split.json").read_text(encoding="utf-8"))
    doc["train"], doc["val"] = doc["val"], doc["train"]          # its val: the model's train
    other = tmp_path / "other_split.json"
    other.write_text(json.dumps(doc), encoding="utf-8")
    done = under_ascii_locale("evaluate", str(run / "best.ckpt"), str(data),
                              "--split", str(other), "--threads", "1")
    assert done.returncode == 0, done.stderr
    assert "are frames the model trained on" in done.stderr, done.stderr


def test_a_split_and_run_an_ascii_locale_wrote_are_read_under_utf_8(tmp_path) -> None:
    """The other way round, with files as an ASCII locale wrote them before names were
    stored as their bytes read as UTF-8: surrogate escapes."""
    from conftest import ultraseg_warnings

    data, run = _non_ascii_run(tmp_path)

    def as_ascii(name: str) -> str:
        return name.encode("utf-8").decode("ascii", "surrogateescape")
    doc = json.loads((run / "split.json").read_text(encoding="utf-8"))
    doc = {k: [as_ascii(n) for n in v] if isinstance(v, list) else v for k, v in doc.items()}
    (run / "split.json").write_text(json.dumps(doc))
    cfg = ModelConfig(variant="same", width=4, depth=2)
    save_checkpoint(run / "best.ckpt", build_model(cfg).state_dict(),
                    make_meta(cfg, PreprocessConfig(size=SIZE), PostprocessConfig(),
                              run={"data": {"path": as_ascii(str(data))}}))
    predictor = load(run / "best.ckpt", device="cpu", precision="fp32")
    summary, _ = evaluate(predictor, data, split_file=run / "split.json")
    assert summary["n"] == len(doc["val"]) > 0
    with ultraseg_warnings() as warned:
        evaluate(predictor, data)
    assert any("the data the model was trained on" in r.getMessage() for r in warned), warned


def test_evaluate_groups_subjects_by_the_run_s_subject_pattern(data, tmp_path, capsys) -> None:
    """`evaluate RUN/best.ckpt DATA --split RUN/split.json` of a run trained with
    `--subject-pattern '^(p\\d+)_'` took each frame for a subject unless the pattern was typed
    again: the 95% interval drew 50 'subjects' (far too narrow) and summary.json said so. The
    run's pattern is taken as --label and --fill-outlines are; a --subject-pattern given wins;
    on data whose names it does not fit, the layout's subjects, as before."""
    named = tmp_path / "named"
    for kind, suffix in (("images", ""), ("masks", "_mask")):
        (named / kind).mkdir(parents=True)
        for p in (data / kind).iterdir():
            shutil.copy(p, named / kind / f"p{p.name}")     # 1_1.png -> p1_1.png
    pattern = r"^(p\d+)_"
    run = tmp_path / "run"
    run.mkdir()
    cfg = ModelConfig(variant="same", width=4, depth=2)
    meta = make_meta(cfg, PreprocessConfig(size=SIZE), PostprocessConfig(),
                     run={"data": {"path": str(named), "layout": "auto",
                                   "subject_pattern": pattern}})
    save_checkpoint(run / "best.ckpt", build_model(cfg).state_dict(), meta)
    names = sorted(p.stem for p in (named / "images").iterdir())
    val = [n for n in names if n.startswith(("p4_", "p5_"))]
    (run / "split.json").write_text(json.dumps({
        "train": [n for n in names if n not in val], "val": val,
        "train_subjects": ["p1", "p2", "p3"], "val_subjects": ["p4", "p5"]}))
    predictor = load(run / "best.ckpt", device="cpu", precision="fp32")
    summary, rows = evaluate(predictor, named, split_file=run / "split.json")
    assert summary["n"] == 20 and summary["n_subjects"] == 2, summary["n_subjects"]
    assert {r["subject"] for r in rows} == {"p4", "p5"}
    assert summary["subject_pattern"] == pattern
    summary, _ = evaluate(predictor, named)
    assert summary["n_subjects"] == 5
    # the command line alike, and its summary says which pattern gave the subjects
    assert cli.main(["evaluate", str(run / "best.ckpt"), str(named), "--split",
                     str(run / "split.json"), "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "(the 2 subjects, by --subject-pattern '^(p\\d+)_', resampled: " in out, out
    # a pattern given wins over the run's
    summary, _ = evaluate(predictor, named, subject_pattern=r"^(p\d+_\d)")
    assert summary["n_subjects"] == 45 and summary["subject_pattern"] == r"^(p\d+_\d)"
    # data whose names the run's pattern does not fit is read with its layout's subjects (the
    # leading number), neither refused nor warned of as a --subject-pattern given
    with ultraseg_warnings() as warned:
        summary, _ = evaluate(predictor, data)
    assert summary["n_subjects"] == 5 and summary["subject_pattern"] is None
    assert not [r for r in warned if "subject-pattern" in r.getMessage()]
    # an exported model keeps no run record: the config.json of the run folder it lies in
    (run / "config.json").write_text(json.dumps({"data": {"path": str(named),
                                                          "subject_pattern": pattern}}))
    onnx_like = Predictor(lambda b: np.zeros_like(b), cfg, PreprocessConfig(size=SIZE),
                          PostprocessConfig(), {}, source=str(run / "model.onnx"))
    summary, _ = evaluate(onnx_like, named, split_file=run / "split.json")
    assert summary["n_subjects"] == 2 and summary["subject_pattern"] == pattern


def _paths_passed(monkeypatch, name: str, *modules) -> list[Path]:
    """Wrap the function ``name`` of ``modules`` (the first's, set on each) so that every call
    records the path it was given; the list they are recorded in."""
    passed: list[Path] = []
    real = getattr(modules[0], name)

    def counted(path, *args, **kwargs):
        passed.append(Path(path))
        return real(path, *args, **kwargs)

    for module in modules:
        monkeypatch.setattr(module, name, counted)
    return passed


def test_the_run_s_subject_pattern_is_tried_in_the_one_scan_of_the_data(data, tmp_path,
                                                                        monkeypatch) -> None:
    """evaluate of a run trained with --subject-pattern scanned the data twice (a quiet look
    whether the pattern fits a name, then the scan scored: every DICOM header read twice), and
    any failure of the look, a missing folder too, was logged as the pattern fitting no name
    before the real error. One scan now, the pattern allowed to fit none; a missing folder
    says only that it is missing."""
    import logging

    import ultraseg.evaluate as ev
    import ultraseg.io as uio

    named = tmp_path / "named"
    for kind, suffix in (("images", ""), ("masks", "_mask")):
        (named / kind).mkdir(parents=True)
        for p in (data / kind).iterdir():
            shutil.copy(p, named / kind / f"p{p.name}")
    pattern = r"^(p\d+)_"
    cfg = ModelConfig(variant="same", width=4, depth=2)
    predictor = Predictor(lambda b: np.zeros_like(b), cfg, PreprocessConfig(size=SIZE),
                          PostprocessConfig(), {"run": {"data": {
                              "path": str(tmp_path / "elsewhere"), "subject_pattern": pattern}}})
    scanned = _paths_passed(monkeypatch, "scan_dataset", uio, ev)
    summary, _ = evaluate(predictor, named)         # the pattern fits
    assert summary["n_subjects"] == 5 and summary["subject_pattern"] == pattern
    assert scanned == [named]
    scanned.clear()
    summary, _ = evaluate(predictor, data)          # it fits none: the layout's subjects
    assert summary["n_subjects"] == 5 and summary["subject_pattern"] is None
    assert scanned == [data]
    said: list[logging.LogRecord] = []
    handler = logging.Handler(logging.INFO)
    handler.emit = said.append                                 # type: ignore[method-assign]
    logger = logging.getLogger("ultraseg")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        with pytest.raises(UltrasegError, match="no such file or folder"):
            evaluate(predictor, tmp_path / "missing")
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    assert not [r for r in said if "matches none" in r.getMessage()], said


def test_the_run_s_config_json_is_read_once(data, tmp_path, monkeypatch) -> None:
    """evaluate read the config.json beside the model twice, once for the run's
    --subject-pattern and once for the data it was trained on; once now."""
    import ultraseg.evaluate as ev

    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"data": {"path": str(tmp_path / "elsewhere"),
                                                          "subject_pattern": r"^(\d+)_"}}))
    cfg = ModelConfig(variant="same", width=4, depth=2)
    onnx_like = Predictor(lambda b: np.zeros_like(b), cfg, PreprocessConfig(size=SIZE),
                          PostprocessConfig(), {}, source=str(run / "model.onnx"))
    read = _paths_passed(monkeypatch, "read_json", ev)
    summary, _ = evaluate(onnx_like, data)
    assert summary["subject_pattern"] == r"^(\d+)_" and summary["n_subjects"] == 5
    assert read.count(run / "config.json") == 1, read
    # with --split of another run's split.json whose scored side holds frames of the run's
    # own training side: the check whether the data may be the run's read it a second time
    from conftest import ultraseg_warnings

    names = sorted(p.name[: -len("_mask.png")] for p in (data / "masks").glob("*_mask.png"))
    (run / "split.json").write_text(json.dumps({"train": names[:40], "val": names[40:]}))
    other = tmp_path / "other_split.json"
    other.write_text(json.dumps({"train": names[10:], "val": names[:10]}))
    read.clear()
    with ultraseg_warnings() as warned:
        summary, _ = evaluate(onnx_like, data, split_file=other)
    assert summary["n"] == 10, summary
    assert any(r.getMessage().startswith("10 of the 10 frames scored") for r in warned)
    assert read.count(run / "config.json") == 1, read


def test_a_split_naming_frames_the_data_lacks_names_them(checkpoint, data, tmp_path,
                                                         capsys) -> None:
    """A split whose side names frames DATA lacks (renamed, removed, another set's) is refused,
    naming the side, how many of its frames are missing, the first of them and the data: it
    said 'split names 2 frames that are not in the dataset', no name, no folder."""
    bad = tmp_path / "split.json"
    bad.write_text(json.dumps({"train": ["1_1"], "val": ["1_2", "99_1", "98_2"],
                               "test": ["97_1", "96_1"]}))
    assert cli.main(["evaluate", str(checkpoint), str(data), "--split", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "2 of the 3 frames of its 'val' side" in err and "99_1, 98_2" in err, err
    assert str(data) in err and "renamed" in err, err
    # none of them: another dataset's split
    assert cli.main(["evaluate", str(checkpoint), str(data), "--split", str(bad),
                     "--subset", "test"]) == 2
    err = capsys.readouterr().err
    assert "none of the 2 frames of its 'test' side" in err and "97_1, 96_1" in err, err
    assert "another dataset" in err, err


@pytest.mark.parametrize("test_side", ["absent", None])
def test_a_split_without_a_test_side_says_the_run_held_no_frames_out(checkpoint, data, tmp_path,
                                                                     capsys, test_side) -> None:
    """A split.json written before the held-out side existed (no 'test' key), or with
    "test": null, asked for --subset test was refused as 'not a split.json'; it holds no
    frames out, as an empty side says."""
    doc = {"train": ["1_1"], "val": ["1_2"]}
    if test_side != "absent":
        doc["test"] = test_side
    split = tmp_path / "split.json"
    split.write_text(json.dumps(doc))
    assert cli.main(["evaluate", str(checkpoint), str(data), "--split", str(split),
                     "--subset", "test"]) == 2
    err = capsys.readouterr().err
    assert "'test' side is empty" in err and "--test-fraction" in err, err
    assert "not a split.json" not in err, err


def test_the_run_s_split_json_is_read_once(data, tmp_path, monkeypatch) -> None:
    """evaluate --split RUN/split.json of the model's own run read it twice: once for the side
    scored, once as the model's own split to compare with it; once now."""
    import ultraseg.evaluate as ev

    run = tmp_path / "run"
    run.mkdir()
    cfg = ModelConfig(variant="same", width=4, depth=2)
    onnx_like = Predictor(lambda b: np.zeros_like(b), cfg, PreprocessConfig(size=SIZE),
                          PostprocessConfig(), {}, source=str(run / "model.onnx"))
    names = sorted(p.name[: -len("_mask.png")] for p in (data / "masks").glob("*_mask.png"))
    (run / "split.json").write_text(json.dumps({"train": names[:30], "val": names[30:40],
                                                "test": names[40:]}))
    read = _paths_passed(monkeypatch, "read_split_doc", ev)
    for subset, n in ((None, 10), ("test", 10), ("train", 30)):
        read.clear()
        summary, _ = evaluate(onnx_like, data, split_file=run / "split.json", subset=subset)
        assert summary["n"] == n
        assert read == [run / "split.json"], (subset, read)


def test_the_summary_s_mm_keys_are_always_there_null_without_pixel_sizes(data, tmp_path) -> None:
    """summary.json held hd95_mm_median, hd95_mm_n and the head-circumference figures only
    where pixel sizes (and references) existed, so a script reading summary['hc_mae_mm'] or a
    table of several evaluations had keys that came and went; they are there always, null
    where they do not apply, and the printed summary leaves their lines out as before."""
    from ultraseg.evaluate import MM_KEYS

    summary, _ = evaluate(_constant_predictor(1.0), data, "folders", out=tmp_path / "ev")
    written = json.loads((tmp_path / "ev" / "summary.json").read_text())
    for got in (summary, written):
        assert {k: got.get(k, "absent") for k in MM_KEYS} == dict.fromkeys(MM_KEYS), got
    text = format_summary(summary)
    assert "(mm)" not in text and "head circumference" not in text, text
    # with a pixel size and no reference circumference: HD95 in mm, the HC figures null
    summary, _ = evaluate(_constant_predictor(1.0), data, "folders", pixel_size_mm=0.5)
    assert summary["hd95_mm_n"] == summary["hd95_n"] > 0 and summary["hd95_mm_median"] > 0
    assert all(summary[k] is None for k in ("hc_mae_mm", "hc_bias_mm", "hc_n", "hc_missed"))
    text = format_summary(summary)
    assert "HD95 median (mm)" in text and "head circumference" not in text, text
    # a summary.json written before (the keys absent) still prints
    old = {k: v for k, v in summary.items() if k not in MM_KEYS}
    assert "(mm)" not in format_summary(old) and "head circumference" not in format_summary(old)


@pytest.mark.parametrize("beside_the_model", [True, False])
def test_a_split_drawn_over_another_dataset_whose_names_fit_is_warned_about(
        data, tmp_path, beside_the_model) -> None:
    """Frame names alone (1_1, case001, benign (1)) fit many datasets: a run's split.json
    scored against another dataset with the same names was scored without a word, the figures
    another set's frames'. Where the run folder the split lies in records its data (its
    config.json; the model's checkpoint too where the split lies beside it) and that folder
    is there and is not DATA (nor holds it, nor lies in it), a warning names both."""
    from conftest import ultraseg_warnings

    other = make_dataset(tmp_path / "other", n=50, size=SIZE, seed=7)   # the same names
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"data": {"path": str(data)}}))
    names = sorted(p.name[: -len("_mask.png")] for p in (data / "masks").glob("*_mask.png"))
    (run / "split.json").write_text(json.dumps({"train": names[:40], "val": names[40:]}))
    source = str(run / "model.onnx") if beside_the_model else None
    predictor = Predictor(lambda b: np.zeros_like(b), ModelConfig(variant="same", depth=2),
                          PreprocessConfig(size=SIZE), PostprocessConfig(), {}, source=source)
    with ultraseg_warnings() as warned:
        summary, _ = evaluate(predictor, other, split_file=run / "split.json")
    assert summary["n"] == 10                                   # scored all the same
    (said,) = [r.getMessage() for r in warned]
    assert str(run / "split.json") in said and str(data) in said and str(other) in said, said
    # its own data, or data moved away since (the record names no folder there): no word
    for scored, recorded in ((data, data), (other, tmp_path / "gone")):
        (run / "config.json").write_text(json.dumps({"data": {"path": str(recorded)}}))
        with ultraseg_warnings() as warned:
            evaluate(predictor, scored, split_file=run / "split.json")
        assert not warned, [r.getMessage() for r in warned]


# ------------------------------------------------------------------ figures by image class
@pytest.fixture(scope="module")
def busi_like(data, tmp_path_factory) -> tuple[Path, Path]:
    """(a BUSI-like folder, a tiny model trained 2 epochs on the phantom frames): the frames
    of the phantom's empty subject are ``normal``, the others ``benign`` or ``malignant``,
    each class folder holding its images with their masks beside them."""
    from ultraseg.config import DataConfig, RunConfig, TrainConfig
    from ultraseg.train import train

    root = tmp_path_factory.mktemp("byclass")
    run = root / "run"
    train(RunConfig(data=DataConfig(path=str(data), layout="folders", cache_dir=""),
                    preprocess=PreprocessConfig(size=SIZE, normalise="zscore"),
                    model=ModelConfig(variant="same", width=4, depth=2),
                    train=TrainConfig(epochs=2, batch_size=8, lr=3e-3, device="cpu",
                                      precision="fp32", num_threads=1),
                    preset="custom"), run)
    busi = root / "busi"
    masks = sorted((data / "masks").glob("*_mask.png"))
    for i, mask in enumerate(masks):
        name = mask.name[: -len("_mask.png")]
        cls = ("normal" if not np.asarray(Image.open(mask)).any()
               else "benign" if i % 2 else "malignant")
        (busi / cls).mkdir(parents=True, exist_ok=True)
        shutil.copy(data / "images" / f"{name}.png", busi / cls / f"{cls} ({i}).png")
        shutil.copy(mask, busi / cls / f"{cls} ({i})_mask.png")
    return busi, run / "best.ckpt"


CLASS_FIGURES = ("n", "dice_mean", "dice_nonempty_mean", "iou_mean", "empty_correct_rate",
                 "dice_mean_ci95", "dice_nonempty_mean_ci95", "hd95_median", "hd95_n",
                 "n_subjects")


def test_the_summary_gives_the_figures_of_each_image_class(busi_like, tmp_path,
                                                           capsys) -> None:
    """A researcher scoring BUSI wants the figures of benign, malignant and normal frames
    apart: the summary gave only all-frame figures (benchmarks/quality.py made its own from
    per_image rows). ``by_class`` is summarise over each class's rows, classes sorted,
    appended after the keys there were; --json prints it too."""
    from ultraseg.metrics import summarise

    busi, ckpt = busi_like
    summary, rows = evaluate(load(ckpt, device="cpu", precision="fp32"), busi,
                             out=tmp_path / "ev")
    assert summary["layout"] == "busi"
    by_class = summary["by_class"]
    assert list(by_class) == ["benign", "malignant", "normal"]
    for cls, figures in by_class.items():
        alone = summarise([r for r in rows if r["class"] == cls])
        assert figures == {k: alone.get(k) for k in CLASS_FIGURES}, cls
        assert (figures["dice_mean_ci95"] is None) == (alone.get("n_subjects", 0) < 2), cls
        assert figures["n"] == sum(r["class"] == cls for r in rows) > 0
    assert sum(f["n"] for f in by_class.values()) == summary["n"]
    assert by_class["normal"]["dice_nonempty_mean"] is None       # (BUSI's normal: no lesion)
    # the keys there were keep their places: by_class comes last
    written = json.loads((tmp_path / "ev" / "summary.json").read_text())
    assert list(written)[-1] == "by_class" and written["by_class"] == by_class
    assert cli.main(["evaluate", str(ckpt), str(busi), "--json", "--device", "cpu",
                     "--precision", "fp32"]) == 0
    assert json.loads(capsys.readouterr().out)["by_class"] == by_class


def test_the_printed_summary_gives_a_line_per_image_class(busi_like) -> None:
    """One line per class after the Dice lines (where there are two or more classes): its
    frames and Dice, or for a class whose frames are all empty how many were predicted
    empty; the other lines as they were."""
    busi, ckpt = busi_like
    summary, rows = evaluate(load(ckpt, device="cpu", precision="fp32"), busi)
    by_class = summary["by_class"]
    lines = format_summary(summary).splitlines()
    before = format_summary({k: v for k, v in summary.items() if k != "by_class"}).splitlines()
    added = [line for line in lines if line not in before]
    assert [line for line in lines if line not in added] == before
    at = lines.index(added[0])
    assert lines[at - 1].startswith(("Dice (non-empty)", "95% interval"))
    assert lines[at + len(added)].startswith("IoU")
    width = len(str(max(f["n"] for f in by_class.values())))
    for line, cls in zip(added, ["benign", "malignant", "normal"]):
        f = by_class[cls]
        assert line.startswith(f"  {cls:<10}  n {f['n']:>{width}}   "), line
        if cls == "normal":
            empty = sum(r["pred_empty"] for r in rows if r["class"] == "normal")
            assert line.endswith(f"empty predicted empty {empty} of {f['n']}"), line
        else:
            ci = f["dice_mean_ci95"]
            hd95 = "n/a" if f["hd95_median"] is None else f"{f['hd95_median']:.1f}"
            assert line.endswith(f"Dice {f['dice_mean']:.3f} "
                                 f"(non-empty {f['dice_nonempty_mean']:.3f})"
                                 + (f", 95% interval {ci[0]:.3f}-{ci[1]:.3f}" if ci else "")
                                 + f", HD95 median {hd95} px"), line
    assert len(added) == 3
    # one class: the all-frame lines are its own, nothing added
    one = {**summary, "by_class": {"benign": by_class["benign"]}}
    assert format_summary(one) == "\n".join(before)


def test_a_class_s_interval_is_labelled_by_its_own_subjects() -> None:
    """A class's line printed '95% interval' whatever its subjects: a class of 3 patients
    cannot cover its mean 95 % of the time. by_class records each class's n_subjects, and its
    line is labelled and worded by metrics.few_subjects_words as the all-frame line is; a
    by_class without n_subjects (an older summary.json) prints as before."""
    from ultraseg.evaluate import by_class
    from ultraseg.metrics import subject_interval

    def row(cls: str, subject: str, d: float) -> dict:
        return {"class": cls, "subject": subject, "dice": d, "iou": d, "precision": d,
                "recall": d, "hd95": 2.0, "truth_empty": False, "pred_empty": False}

    rows = [row("benign", f"b{k}", 0.5 + 0.1 * k) for k in range(3)]
    rows += [row("malignant", f"m{k}", 0.4 + 0.05 * k) for k in range(8)]
    classes = by_class(rows)
    assert classes["benign"]["n_subjects"] == 3 and classes["malignant"]["n_subjects"] == 8
    ci = subject_interval([r["dice"] for r in rows[:3]], [r["subject"] for r in rows[:3]])
    assert classes["benign"]["dice_mean_ci95"] == ci
    summary = {"n": 11, "dice_mean": 0.5, "dice_nonempty_mean": 0.5, "iou_mean": 0.5,
               "hd95_median": 2.0, "hd95_n": 11, "empty_correct_rate": None,
               "by_class": classes}
    lines = format_summary(summary).splitlines()
    benign = [t for t in lines if t.startswith("  benign")][0]
    assert (f", interval (3 subjects) {ci[0]:.3f}-{ci[1]:.3f} (only 3 subjects: covers the "
            "mean at most 75 % of the time, not 95 %), HD95 median 2.0 px") in benign, benign
    malignant = [t for t in lines if t.startswith("  malignant")][0]
    lo, hi = classes["malignant"]["dice_mean_ci95"]
    assert f", 95% interval {lo:.3f}-{hi:.3f}, HD95 median 2.0 px" in malignant, malignant
    older = {c: {k: v for k, v in f.items() if k != "n_subjects"} for c, f in classes.items()}
    benign = [t for t in format_summary({**summary, "by_class": older}).splitlines()
              if t.startswith("  benign")][0]
    assert f", 95% interval {ci[0]:.3f}-{ci[1]:.3f}, HD95" in benign, benign


def test_a_dataset_without_classes_has_no_figures_by_class(data) -> None:
    summary, _ = evaluate(_constant_predictor(1.0), data, "folders")
    assert "by_class" in summary and summary["by_class"] is None
    assert format_summary(summary) == format_summary(
        {k: v for k, v in summary.items() if k != "by_class"})
    assert not [line for line in format_summary(summary).splitlines() if line.startswith("  ")]


@pytest.mark.parametrize("value", ["false", "no"])
def test_fill_outlines_given_as_a_string_is_refused(data, value) -> None:
    """evaluate(..., fill_outlines="false") filled the masks ("false" is truthy) and wrote
    the string into summary.json (an API misuse review)."""
    with pytest.raises(UltrasegError, match=f"fill_outlines must be true or false.*got "
                                            f"{value!r}"):
        evaluate(_constant_predictor(0.9), data, fill_outlines=value)
    summary, _ = evaluate(_constant_predictor(0.9), data, fill_outlines=np.bool_(False))
    assert summary["fill_outlines"] is False


def test_the_printed_interval_says_which_interval_it_is() -> None:
    """The printed interval names its method where the summary records it; a summary.json
    written before it did (no dice_mean_ci95_method) prints as it did."""
    summary = {"n": 40, "dice_mean": 0.8, "dice_nonempty_mean": 0.8, "iou_mean": 0.7,
               "hd95_median": 4.0, "hd95_n": 3, "empty_correct_rate": None,
               "n_subjects": 8, "dice_mean_ci95": [0.7, 0.85],
               "dice_nonempty_mean_ci95": [0.71, 0.86], "postprocess": {"tta": True},
               "raw": {"dice_mean": 0.78, "dice_nonempty_mean": 0.78}}
    old = ("95% interval          all frames 0.700-0.850, non-empty 0.710-0.860   (the 8 "
           "subjects resampled: one subject's frames are not independent)")
    assert old in format_summary(summary).splitlines()
    method = "subject bootstrap, expanded percentile, exact"
    assert (f"95% interval          all frames 0.700-0.850, non-empty 0.710-0.860   (the 8 "
            f"subjects resampled: one subject's frames are not independent; {method})") \
        in format_summary({**summary, "dice_mean_ci95_method": method}).splitlines()


def test_an_interval_over_few_subjects_is_labelled_by_what_it_is(data) -> None:
    """With 3 to 5 subjects the '95% interval' printed cannot cover the mean 95 % of the time
    (with 3 or 4 it is the range of their means): it is printed as the subjects' interval,
    saying once how often it can (summary.json's dice_mean_ci95_method says it too)."""
    summary, _ = evaluate(_constant_predictor(1.0), data, "folders")
    assert summary["n_subjects"] == 5
    lo, hi = summary["dice_mean_ci95"]
    text = format_summary(summary)
    line = [t for t in text.splitlines() if "resampled" in t][0]
    assert line.startswith(f"interval (5 subjects) all frames {lo:.3f}-{hi:.3f}"), line
    assert line.endswith("; only 5 subjects: covers the mean at most 93.75 % of the time, "
                         "not 95 %)"), line
    assert text.count("93.75 %") == 1 and "95% interval" not in text
    assert format_summary({**summary, "n_subjects": 6, "dice_mean_ci95_method": None}) \
        .count("95% interval          all frames") == 1
