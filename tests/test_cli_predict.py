"""The predict / export / measure subcommands, end to end on tiny random-initialised models."""
from __future__ import annotations

import contextlib
import csv
import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import held_elsewhere, outline_dataset, ultraseg_warnings
import ultraseg
from ultraseg.checkpoint import make_meta, save_checkpoint
from ultraseg.cli import main
from ultraseg.config import ModelConfig, PostprocessConfig, PreprocessConfig
from ultraseg.fileio import LOCK_FILE
from ultraseg.io import read_image
from ultraseg.model import build_model
from ultraseg.predict import load
from ultraseg.io.outputs import OUTPUT_MARKER
from ultraseg.rle import decode


def make_checkpoint(path: Path, variant: str = "same", size: int | None = 32,
                    meta_extra: dict | None = None) -> Path:
    torch.manual_seed(0)
    cfg = ModelConfig(variant=variant, width=4, depth=2, tile=20)
    meta = make_meta(cfg, PreprocessConfig(size=size), PostprocessConfig())
    meta.update(meta_extra or {})
    save_checkpoint(path, build_model(cfg).state_dict(), meta)
    return path


def frames(folder: Path, shapes: dict[str, tuple[int, int]]) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    out = {}
    for rel, (h, w) in shapes.items():
        yy, xx = np.mgrid[:h, :w]
        im = (90 + 60 * np.sin(xx / 5.0) * np.cos(yy / 7.0) + rng.normal(0, 20, (h, w)))
        out[rel] = np.clip(im, 0, 255).astype(np.uint8)
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(out[rel]).save(folder / rel)
    return out


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("model") / "best.ckpt")


SHAPES = {"a/1.png": (45, 67), "a/2.png": (33, 29), "b/1.png": (40, 51), "c.jpg": (27, 38)}


def test_predict_writes_one_mask_per_image_at_original_size(tmp_path, ckpt, capsys):
    frames(tmp_path / "in", SHAPES)
    rc = main(["predict", str(ckpt), str(tmp_path / "in"), "--out", str(tmp_path / "out"),
               "--device", "cpu", "--precision", "fp32", "--batch-size", "2"])
    assert rc == 0
    out = capsys.readouterr().out
    assert out.startswith("predicted 4 frames") and str(tmp_path / "out") in out
    predictor = load(ckpt, device="cpu", precision="fp32")
    expect = {"a/1.png": "a/1_mask.png", "b/1.png": "b/1_mask.png", "a/2.png": "2_mask.png",
              "c.jpg": "c_mask.png"}          # '1' is shared: its folders are kept
    written = sorted(p.relative_to(tmp_path / "out").as_posix()
                     for p in (tmp_path / "out").rglob("*") if p.is_file())
    assert written == sorted([*expect.values(), OUTPUT_MARKER,   # the marker: see its test
                              "predictions.csv", "predictions.settings.json"])
    for rel, name in expect.items():
        mask = np.asarray(Image.open(tmp_path / "out" / name))
        assert mask.dtype == np.uint8 and mask.shape == SHAPES[rel]
        assert set(np.unique(mask)) <= {0, 255}
        decoded = read_image(tmp_path / "in" / rel)     # c.jpg is lossy: what was read
        np.testing.assert_array_equal(mask == 255, predictor.predict(decoded))


@pytest.mark.parametrize("command", ["predict", "measure"])
def test_the_output_folder_records_the_model_and_the_post_processing_applied(tmp_path, ckpt,
                                                                             capsys, command):
    """predictions.csv and measurements.csv recorded neither the model nor the threshold,
    rules and flip: a folder made with --threshold 0.3 could not be told from one made with
    the checkpoint's choice (a post-processing review, O5). *.settings.json says them, as
    evaluate's summary.json does, with the options given; predict's summary names them."""
    frames(tmp_path / "in", {"1.png": (20, 30)})

    name = {"predict": "predictions.settings.json", "measure": "measurements.settings.json"}

    def settings(out: str, *flags: str) -> tuple[dict, str]:
        assert main([command, str(ckpt), str(tmp_path / "in"), "--out", str(tmp_path / out),
                     *flags]) == 0
        text = (tmp_path / out / name[command]).read_text()
        return json.loads(text, parse_constant=lambda c: pytest.fail(f"not JSON: {c}")), \
            capsys.readouterr().out

    given, printed = settings("given", "--threshold", "0.3", "--keep-largest", "--device",
                              "cpu", "--precision", "fp32", "--batch-size", "2")
    assert given["command"] == command
    assert given["checkpoint"]["path"] == str(ckpt.resolve())
    assert given["checkpoint"]["sha256"] == hashlib.sha256(ckpt.read_bytes()).hexdigest()
    assert given["ultraseg_version"] == ultraseg.__version__
    assert (given["backend"], given["device"], given["precision"]) == ("torch", "cpu", "fp32")
    assert given["postprocess"] == {"threshold": 0.3, "min_area": 0, "min_peak": 0.0,
                                    "keep_largest": True, "fill_holes": False, "tta": False}
    assert given["overrides"] == {"threshold": 0.3, "keep_largest": True, "device": "cpu",
                                  "precision": "fp32", "batch_size": 2}
    first = (tmp_path / "given" / name[command]).read_bytes()
    again, _ = settings("given", "--threshold", "0.3", "--keep-largest", "--device",
                        "cpu", "--precision", "fp32", "--batch-size", "2")
    assert (tmp_path / "given" / name[command]).read_bytes() == first  # no date, no timing
    own, _ = settings("own")        # the checkpoint's choice, told apart
    assert own["postprocess"]["threshold"] == 0.5 and own["overrides"] == {}
    assert own["postprocess"]["keep_largest"] is False
    if command == "predict":
        assert ("post-processing: threshold 0.3, min area 0, min peak 0.0, keep largest on, "
                "fill holes off, tta off (in predictions.settings.json)") in printed.splitlines()
    else:
        assert own["boundary_offset_px"] == 0.0


def test_predict_and_measure_into_one_folder_keep_each_one_s_settings(tmp_path, ckpt, capsys):
    """predict and measure into one --out wrote one settings.json: measure's replaced
    predict's, so masks made at --threshold 0.3 sat beside a record saying measure at 0.5
    (a re-read, item 1). Each table has its own record beside it."""
    frames(tmp_path / "in", {"1.png": (20, 30)})
    out = tmp_path / "o"
    common = ["--out", str(out), "--device", "cpu", "--precision", "fp32"]
    assert main(["predict", str(ckpt), str(tmp_path / "in"), *common,
                 "--threshold", "0.3"]) == 0
    assert main(["measure", str(ckpt), str(tmp_path / "in"), *common]) == 0
    capsys.readouterr()
    predicted = json.loads((out / "predictions.settings.json").read_text())
    measured = json.loads((out / "measurements.settings.json").read_text())
    assert (predicted["command"], predicted["postprocess"]["threshold"]) == ("predict", 0.3)
    assert (measured["command"], measured["postprocess"]["threshold"]) == ("measure", 0.5)
    assert not (out / "settings.json").exists()


def test_one_frame_predicted_is_said_in_the_singular(tmp_path, ckpt, capsys):
    """predict's closing line said 'predicted 1 frames'."""
    frames(tmp_path / "in", {"a.png": (20, 24)})
    assert main(["predict", str(ckpt), str(tmp_path / "in" / "a.png"), "--out",
                 str(tmp_path / "out"), "--device", "cpu"]) == 0
    assert capsys.readouterr().out.startswith("predicted 1 frame (")


@pytest.mark.parametrize("command", ["predict", "measure"])
def test_a_frame_that_cannot_be_read_is_skipped_named_and_exit_2(tmp_path, ckpt, capsys,
                                                                 command):
    """predict and measure stopped at the first unreadable frame of a folder; the frames
    after it were never predicted. Each is now named, the others written, and the exit is 2."""
    frames(tmp_path / "in", {"a.png": (20, 24), "c.png": (20, 24)})
    (tmp_path / "in" / "b.png").write_bytes(b"")
    out = tmp_path / "out"
    extra = ["--rle", str(tmp_path / "s.csv")] if command == "predict" else []
    assert main([command, str(ckpt), str(tmp_path / "in"), "--out", str(out), "--device", "cpu",
                 *extra]) == 2
    captured = capsys.readouterr()
    errors = [ln for ln in captured.err.splitlines() if ln.startswith("error:")]
    assert len(errors) == 2 and str(tmp_path / "in" / "b.png") in errors[0]
    assert errors[1] == "error: 1 of 3 frames could not be read (skipped, named above)"
    if command == "predict":
        assert sorted(p.name for p in out.glob("*_mask.png")) == ["a_mask.png", "c_mask.png"]
        assert "predicted 2 frames" in captured.out and "not written" in captured.out
        assert not (tmp_path / "s.csv").exists()
        (tmp_path / "s.csv").write_text("img,pixels\nold,\n")     # an earlier run's
        assert main([command, str(ckpt), str(tmp_path / "in"), "--out", str(out), *extra]) == 2
        said = capsys.readouterr().out
        assert "not written" in said and "the file there is an earlier run's" in said
        assert (tmp_path / "s.csv").read_text() == "img,pixels\nold,\n"
    else:
        with open(out / "measurements.csv", newline="") as f:
            table = list(csv.DictReader(f))
        assert [r["name"] for r in table] == ["a", "b", "c"]          # b: its error
        assert [bool(r["error"]) for r in table] == [False, True, False]
        assert "measured 2 frames" in captured.out


@pytest.mark.parametrize("command", ["predict", "measure"])
def test_a_frame_whose_output_name_is_too_long_is_skipped_named_and_exit_2(tmp_path, ckpt,
                                                                         capsys, command):
    """An image whose output's name is over the file system's limit ('File name too long')
    stopped the whole run: each frame after it got nothing, and the last line said the file
    'was left as it was'. It is one frame's error, named as such, and the others written."""
    from ultraseg.fileio import name_max

    limit = name_max(tmp_path)
    long = "L" * (limit - len(".png"))          # the image's name fits; its outputs' do not
    frames(tmp_path / "in", {"a.png": (20, 24), f"{long}.png": (20, 24), "c.png": (20, 24)})
    out = tmp_path / "out"
    assert main([command, str(ckpt), str(tmp_path / "in"), "--out", str(out), "--device", "cpu",
                 "--overlay"]) == 2
    captured = capsys.readouterr()
    errors = [ln for ln in captured.err.splitlines() if ln.startswith("error:")]
    assert len(errors) == 2, captured.err
    assert errors[0].startswith(f"error: {tmp_path / 'in' / long}.png: its output's name ")
    assert "rename the image to a shorter name" in errors[0]
    assert "left as it was" not in captured.err
    assert errors[1] == "error: 1 of 3 frames could not be read or written (skipped, named above)"
    assert {"predict": "predicted", "measure": "measured"}[command] + " 2 frames" in captured.out


def test_postprocess_flags_override_the_checkpoint(tmp_path, ckpt, capsys):
    images = frames(tmp_path / "in", {"x.png": (31, 45)})
    predictor = load(ckpt, device="cpu", precision="fp32")
    prob = predictor.predict_proba(images["x.png"])
    assert 0.0 < prob.min() and prob.max() < 1.0          # so 1.0 / 0.0 are decisive

    def run(*flags: str) -> np.ndarray:
        assert main(["predict", str(ckpt), str(tmp_path / "in"), "--out", str(tmp_path / "o"),
                     "--device", "cpu", "--precision", "fp32", *flags]) == 0
        return np.asarray(Image.open(tmp_path / "o" / "x_mask.png")) == 255

    assert not run("--threshold", "1.0").any()
    assert run("--threshold", "0").all()
    median = float(np.median(prob))
    np.testing.assert_array_equal(run("--threshold", str(median)), prob >= median)
    assert not run("--threshold", "0", "--min-area", str(31 * 45 + 1)).any()
    holes = run("--threshold", str(median), "--fill-holes")
    assert holes.sum() >= (prob >= median).sum()
    largest = run("--threshold", str(median), "--keep-largest")
    assert largest.sum() <= (prob >= median).sum()
    peak = float(prob.max())
    np.testing.assert_array_equal(run("--threshold", "0", "--min-peak", str(peak)), True)
    assert not run("--threshold", "0", "--min-peak", str(np.nextafter(peak, 1.0))).any()
    capsys.readouterr()
    for bad in (["--threshold", "1.5"], ["--min-peak", "-0.1"]):
        assert main(["predict", str(ckpt), str(tmp_path / "in"), "--out", str(tmp_path / "o"),
                     *bad]) == 2
        assert f"{bad[0]} must lie in [0, 1], got {bad[1]}" in capsys.readouterr().err


def test_tta_rle_overlay_and_tif(tmp_path):
    """With its threshold at the median probability, the random network's masks hold both
    classes in shapes that are not symmetric: a transposed run order or a dropped flip shows."""
    images = frames(tmp_path / "in", {"3.png": (29, 41), "12.png": (29, 41)})
    ckpt = make_checkpoint(tmp_path / "m.ckpt")
    probs = [load(ckpt, device="cpu", precision="fp32", tta=True).predict_proba(im)
             for im in images.values()]
    median = float(np.median(np.concatenate([p.ravel() for p in probs])))
    make_checkpoint(ckpt, meta_extra={"postprocess": PostprocessConfig(threshold=median).to_dict()})
    plain = load(ckpt, device="cpu", precision="fp32", tta=False)
    sub = tmp_path / "sub.csv"
    assert main(["predict", str(ckpt), str(tmp_path / "in"), "--out", str(tmp_path / "o"),
                 "--tta", "--rle", str(sub), "--overlay", "--format", "tif", "--device", "cpu",
                 "--precision", "fp32"]) == 0
    with open(sub, newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["img", "pixels"] and [r[0] for r in rows[1:]] == ["3", "12"]
    tta = load(ckpt, device="cpu", precision="fp32", tta=True)
    for stem, pixels in rows[1:]:
        want = tta.predict(images[f"{stem}.png"])
        assert 0.2 < want.mean() < 0.8, want.mean()
        assert (want != plain.predict(images[f"{stem}.png"])).sum() > 10   # the flip counts
        assert not np.array_equal(decode(pixels, (41, 29)).T, want)        # order matters
        np.testing.assert_array_equal(decode(pixels, (29, 41)), want)
        tif = Image.open(tmp_path / "o" / f"{stem}_mask.tif")
        assert tif.format == "TIFF"
        np.testing.assert_array_equal(np.asarray(tif) == 255, want)
        assert np.asarray(Image.open(tmp_path / "o" / f"{stem}_overlay.png")).shape == (29, 41, 3)


def test_tile_on_a_same_model_is_noted_not_silently_dropped(tmp_path, ckpt, capsys):
    frames(tmp_path / "in", {"1.png": (20, 30)})
    with ultraseg_warnings() as warned:
        rc = main(["predict", str(ckpt), str(tmp_path / "in"), "--out", str(tmp_path / "o"),
                   "--device", "cpu", "--tile", "20"])
    assert rc == 0
    assert any("(--tile) applies to the valid model" in r.getMessage() for r in warned)
    valid = make_checkpoint(tmp_path / "v.ckpt", variant="valid")
    with ultraseg_warnings() as warned:
        assert main(["predict", str(valid), str(tmp_path / "in"), "--out", str(tmp_path / "v"),
                     "--device", "cpu", "--tile", "20"]) == 0
    assert not any("tile" in r.getMessage() for r in warned)
    # the Python API says so too (it said nothing: the notes were the CLI's own)
    from ultraseg.predict import load

    with ultraseg_warnings() as warned:
        load(ckpt, device="cpu", tile=20)
    assert any("applies to the valid model" in r.getMessage() for r in warned)


def test_bad_image_is_exit_2_named_on_one_line_and_no_partial_file(tmp_path, ckpt, capsys):
    frames(tmp_path / "in", {"1.png": (20, 30), "3.png": (20, 30)})
    (tmp_path / "in" / "2.png").write_bytes(b"not an image at all")
    rc = main(["predict", str(ckpt), str(tmp_path / "in"), "--out", str(tmp_path / "o"),
               "--batch-size", "1", "--rle", str(tmp_path / "s.csv")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert len(err) == 2 and "2.png" in err[0] and err[0].startswith("error:")   # + the count
    left = sorted(p.name for p in (tmp_path / "o").iterdir() if p.name != OUTPUT_MARKER)
    assert left == ["1_mask.png", "3_mask.png",       # skipped: no 2_mask.png, no temp file
                    "predictions.csv", "predictions.settings.json"]
    assert not (tmp_path / "s.csv").exists()


def test_missing_input_and_unwritable_output_are_exit_2(tmp_path, ckpt, capsys):
    frames(tmp_path / "in", {"1.png": (20, 30)})
    assert main(["predict", str(ckpt), str(tmp_path / "in"), str(tmp_path / "nope.png"),
                 "--out", str(tmp_path / "o")]) == 2
    assert "nope.png: no such file" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()                   # checked before anything ran
    (tmp_path / "afile").write_text("x")
    assert main(["predict", str(ckpt), str(tmp_path / "in"), "--out",
                 str(tmp_path / "afile" / "o")]) == 2
    assert "output folder" in capsys.readouterr().err
    assert main(["predict", str(tmp_path / "in" / "1.png"), str(tmp_path / "in"), "--out",
                 str(tmp_path / "o")]) == 2               # an image is not a checkpoint


def test_export_then_predict_from_onnx_gives_the_same_masks(tmp_path, capsys):
    ckpt = make_checkpoint(tmp_path / "valid.ckpt", variant="valid", size=40)
    onnx_path = tmp_path / "m.onnx"
    assert main(["export", str(ckpt), "--onnx", str(onnx_path)]) == 0
    assert "exported" in capsys.readouterr().out
    frames(tmp_path / "in", {"1.png": (37, 52)})
    for model, out in ((ckpt, "o_ckpt"), (onnx_path, "o_onnx")):
        assert main(["predict", str(model), str(tmp_path / "in"), "--out", str(tmp_path / out),
                     "--device", "cpu", "--precision", "fp32"]) == 0
    a = np.asarray(Image.open(tmp_path / "o_ckpt" / "1_mask.png"))
    b = np.asarray(Image.open(tmp_path / "o_onnx" / "1_mask.png"))
    np.testing.assert_array_equal(a, b)
    record = json.loads((tmp_path / "o_onnx" / "predictions.settings.json").read_text())
    assert record["backend"] == "onnx" and record["onnxruntime_version"]
    assert record["checkpoint"]["path"] == str(onnx_path.resolve())
    assert main(["export", str(ckpt), "--onnx", str(tmp_path / "no" / "m.onnx")]) == 2
    assert main(["export", str(ckpt), "--onnx", str(tmp_path / "exported_model")]) == 2
    assert "must end in .onnx" in capsys.readouterr().err      # load tells ONNX by the name
    assert not (tmp_path / "exported_model").exists()


def test_a_later_run_does_not_read_an_earlier_runs_outputs_as_frames(tmp_path, ckpt, capsys):
    frames(tmp_path / "imgs", {"1.png": (20, 30), "sub/2.png": (24, 24)})
    assert main(["predict", str(ckpt), str(tmp_path / "imgs"), "--out",
                 str(tmp_path / "imgs" / "pred"), "--overlay"]) == 0
    assert "predicted 2 frames" in capsys.readouterr().out
    assert (tmp_path / "imgs" / "pred" / OUTPUT_MARKER).is_file()
    with ultraseg_warnings() as warned:
        assert main(["predict", str(ckpt), str(tmp_path / "imgs"), "--out",
                     str(tmp_path / "imgs" / "pred2")]) == 0
    assert "predicted 2 frames" in capsys.readouterr().out     # not the 4 outputs of 'pred'
    assert sorted(p.name for p in (tmp_path / "imgs" / "pred2").glob("*.png")) == \
        ["1_mask.png", "2_mask.png"]
    assert any("left out 4 images" in r.getMessage() for r in warned)
    assert main(["predict", str(ckpt), str(tmp_path / "imgs" / "pred"), "--out",
                 str(tmp_path / "again")]) == 0                # named itself, it is read
    assert "predicted 4 frames" in capsys.readouterr().out
    with ultraseg_warnings() as warned:                        # inspect sees what predict sees
        assert main(["inspect", str(tmp_path / "imgs"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["unlabelled"] == 2
    assert any("left out 6 images" in r.getMessage() for r in warned)   # pred's 4, pred2's 2


def test_an_output_folder_holding_the_users_images_is_refused(tmp_path, ckpt, capsys):
    """Predicting one file into its own folder marked the user's folder as ultraseg output:
    every later scan of a folder above it left all their images out."""
    frames(tmp_path / "parent" / "scans", {"1.png": (20, 30), "2.png": (24, 24)})
    scans = tmp_path / "parent" / "scans"
    assert main(["predict", str(ckpt), str(scans / "1.png"), "--out", str(scans)]) == 2
    err = capsys.readouterr().err
    assert "already holds 2 image files ultraseg did not write" in err and "1.png" in err
    assert not (scans / OUTPUT_MARKER).exists() and not (scans / "1_mask.png").exists()
    assert main(["predict", str(ckpt), str(tmp_path / "parent"), "--out",
                 str(tmp_path / "o")]) == 0
    assert "predicted 2 frames" in capsys.readouterr().out
    # an output folder ultraseg marked takes a second run; a new or empty one is fine
    assert main(["predict", str(ckpt), str(scans / "1.png"), "--out", str(tmp_path / "o")]) == 0


def test_outputs_written_inside_a_datasets_images_folder_are_left_out(tmp_path, ckpt, capsys):
    """predict --out DATA/images/pred made DATA unreadable for evaluate, inspect and the next
    predict ("image files in a subfolder")."""
    from ultraseg.phantom import make_dataset

    data = make_dataset(tmp_path / "data", n=4, size=32, seed=0)
    assert main(["predict", str(ckpt), str(data), "--out", str(data / "images" / "pred")]) == 0
    capsys.readouterr()
    with ultraseg_warnings() as warned:
        assert main(["inspect", str(data), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["problems"] == 0
    assert any("left out 4 images" in r.getMessage() for r in warned)


@pytest.mark.parametrize("where, words", [("adir", "a folder of that name"),
                                          ("no/sub.csv", "its folder does not exist"),
                                          ("o/predictions.csv", "predict's listing"),
                                          ("o/./measurements.csv", "measure's table")])
def test_a_bad_rle_target_is_refused_before_predicting(tmp_path, ckpt, capsys, where, words):
    frames(tmp_path / "in", {"1.png": (20, 30)})
    (tmp_path / "adir").mkdir()
    rc = main(["predict", str(ckpt), str(tmp_path / "in"), "--out", str(tmp_path / "o"),
               "--rle", str(tmp_path / where)])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and words in err and str(tmp_path / where) in err and ".tmp" not in err, err
    assert not (tmp_path / "o").exists()                      # nothing predicted or written


def test_the_submission_may_go_in_the_output_folder_it_creates(tmp_path, ckpt, capsys):
    frames(tmp_path / "in", {"1.png": (20, 30)})
    out = tmp_path / "new" / "o"
    rc = main(["predict", str(ckpt), str(tmp_path / "in"), "--out", str(out),
               "--rle", str(out / "sub.csv")])
    assert rc == 0, capsys.readouterr().err
    assert (out / "sub.csv").read_text().startswith("img,pixels\n1,")


@pytest.mark.parametrize("tile", ["0", "-5"])
def test_a_tile_below_one_is_a_user_error(tmp_path, capsys, tile):
    ckpt = make_checkpoint(tmp_path / "valid.ckpt", variant="valid", size=40)
    frames(tmp_path / "in", {"1.png": (37, 52)})
    for command in (["predict", str(ckpt), str(tmp_path / "in"), "--out", str(tmp_path / "o")],
                    ["export", str(ckpt), "--onnx", str(tmp_path / "m.onnx")]):
        with pytest.raises(SystemExit) as stop:
            main([*command, "--tile", tile])
        assert stop.value.code == 2
        assert (f"argument --tile: must be a whole number from 1, got {tile}"
                in capsys.readouterr().err)
    assert not (tmp_path / "o").exists() and not (tmp_path / "m.onnx").exists()


def test_export_says_that_tile_does_nothing_on_a_same_model(tmp_path, capsys):
    ckpt = make_checkpoint(tmp_path / "same.ckpt")
    assert main(["export", str(ckpt), "--onnx", str(tmp_path / "m.onnx"), "--tile", "20"]) == 0
    assert "--tile applies to the valid model" in capsys.readouterr().err
    assert main(["export", str(ckpt), "--onnx", str(tmp_path / "n.onnx")]) == 0
    assert "--tile" not in capsys.readouterr().err


@pytest.mark.parametrize("command", ["predict", "measure"])
@pytest.mark.parametrize("labelled", [False, True])
def test_a_symlink_loop_among_the_frames_is_skipped_named_and_exit_2(tmp_path, ckpt, capsys,
                                                                     command, labelled):
    """A link that points at itself (a bad ``ln -s``, a copied tree) stopped predict and
    measure with an internal error (exit 1) before any frame was predicted: finding the
    output folder resolved each image's path. It is now an unreadable frame like any other."""
    images = tmp_path / "in" / ("images" if labelled else "")
    frames(images, {"a.png": (20, 24)})
    (images / "loop.png").symlink_to("loop.png")
    if labelled:
        frames(tmp_path / "in" / "masks", {"a.png": (20, 24), "loop.png": (20, 24)})
    out = tmp_path / "out"
    rc = main([command, str(ckpt), str(tmp_path / "in"), "--out", str(out), "--device", "cpu"])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "internal error" not in err and str(images / "loop.png") in err
    assert (out / ("a_mask.png" if command == "predict" else "measurements.csv")).is_file()


def hc18_folder(tmp_path):
    """An HC18 folder of one frame, 007_HC, with its pixel size and reference HC."""
    folder = tmp_path / "hc" / "training_set"
    folder.mkdir(parents=True)
    yy, xx = np.mgrid[:40, :56]
    inside = ((xx - 28) / 14.0) ** 2 + ((yy - 20) / 10.0) ** 2 <= 1
    Image.fromarray(np.where(inside, 200, 30).astype(np.uint8)).save(folder / "007_HC.png")
    ring = inside & ~(((xx - 28) / 13.0) ** 2 + ((yy - 20) / 9.0) ** 2 <= 1)
    Image.fromarray(np.where(ring, 255, 0).astype(np.uint8)).save(folder / "007_HC_Annotation.png")
    (tmp_path / "hc" / "training_set_pixel_size_and_HC.csv").write_text(
        "filename,pixel size(mm),head circumference (mm)\n007_HC.png,0.2,15.0\n")


def test_measure_writes_csv_with_reference_errors(tmp_path, capsys):
    ckpt = make_checkpoint(tmp_path / "m.ckpt", meta_extra={"measure": {"boundary_offset_px": 0.5}})
    hc18_folder(tmp_path)
    rc = main(["measure", str(ckpt), str(tmp_path / "hc"), "--out", str(tmp_path / "m"),
               "--threshold", "0", "--device", "cpu", "--precision", "fp32", "--overlay"])
    out = capsys.readouterr().out
    assert rc == 0 and "measured 1 frames" in out and "mean absolute" in out
    assert "mean head circumference" in out     # frames with a reference HC: fetal heads
    # measurements in mm read as clinical output: the last line says they are not
    assert out.rstrip().splitlines()[-1].lower().startswith("research use only")
    assert (tmp_path / "m" / "007_HC_measure.png").is_file()
    assert main(["measure", str(ckpt), str(tmp_path / "hc"), "--overlay"]) == 2
    assert "need an output folder (--out)" in capsys.readouterr().err
    with open(tmp_path / "m" / "measurements.csv", newline="") as f:
        (row,) = list(csv.DictReader(f))
    assert row["name"] == "007_HC" and float(row["area_px"]) == 40 * 56   # threshold 0: all
    assert float(row["pixel_size_mm"]) == 0.2 and float(row["hc_ref_mm"]) == 15.0
    assert float(row["hc_error_mm"]) == pytest.approx(float(row["hc_mm"]) - 15.0, abs=1e-3)
    assert float(row["hc_mm"]) == pytest.approx(float(row["hc_px"]) * 0.2, rel=1e-4)
    assert main(["measure", str(ckpt), str(tmp_path / "hc"), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["n"] == 1 and doc["rows"][0]["name"] == "007_HC"
    assert doc["boundary_offset_px"] == 0.5


def test_measure_lines_printed_as_frames_are_measured_call_a_reference_heads_figure_hc(
        tmp_path, capsys):
    """Without --out, each frame's line is printed as it is measured: on a frame with a
    reference HC (HC18) it said 'ellipse circumference', the line calling it HC coming only
    in a second copy of every line at the end."""
    ckpt = make_checkpoint(tmp_path / "m.ckpt")
    hc18_folder(tmp_path)
    assert main(["measure", str(ckpt), str(tmp_path / "hc"), "--threshold", "0",
                 "--device", "cpu", "--precision", "fp32"]) == 0
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if line.startswith("007_HC: ")]
    assert len(lines) == 1 and ", HC " in lines[0]
    assert "ellipse circumference" not in out and "mean head circumference" in out


def test_measure_prints_each_frame_in_mm_where_the_pixel_size_is_known_else_in_px(
        tmp_path, capsys):
    ckpt = make_checkpoint(tmp_path / "m.ckpt")
    frames(tmp_path / "in", {"a.png": (30, 40)})
    args = ["measure", str(ckpt), str(tmp_path / "in" / "a.png"), "--device", "cpu",
            "--precision", "fp32"]
    assert main(args + ["--threshold", "0"]) == 0          # threshold 0: the whole frame
    out = capsys.readouterr().out
    first = out.splitlines()[0]
    # no reference HC: not called a head (a breast lesion was "HC 87.5 mm")
    assert first.startswith("a: area 1200 px, perimeter ") and " px, ellipse circumference " \
        in first and "HC" not in out and "head" not in out
    assert "mm" not in first
    assert "no pixel size known" in out and "--pixel-size" in out
    assert main(args + ["--threshold", "0", "--pixel-size", "0.5", "--json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)["rows"]
    assert main(args + ["--threshold", "0", "--pixel-size", "0.5"]) == 0
    out = capsys.readouterr().out
    assert (f"a: area {row['area_mm2']:.1f} mm2, perimeter {row['perimeter_mm']:.1f} mm, "
            f"ellipse circumference {row['hc_mm']:.1f} mm, axes {row['major_axis_mm']:.1f} x "
            f"{row['minor_axis_mm']:.1f} mm") in out
    assert f"mean ellipse circumference {row['hc_mm']:.2f} mm" in out and "head" not in out
    assert row["area_mm2"] == pytest.approx(1200 * 0.25) and "no pixel size" not in out
    assert main(args + ["--threshold", "0", "--min-area", "5000"]) == 0   # the frame removed
    out = capsys.readouterr().out
    assert "a: no object" in out and "no pixel size known" not in out


def test_measure_without_out_prints_each_frame_as_it_is_measured(tmp_path, ckpt, capsys,
                                                                  monkeypatch):
    """measure without --out printed nothing until every frame was measured (an hour's
    folder: an hour of silence on stdout, and nothing at all when stopped). Each frame's line
    now comes as it is measured; --json stays one object at the end."""
    import ultraseg.measure_files as mf

    frames(tmp_path / "in", {"a.png": (20, 24), "b.png": (20, 24), "c.png": (20, 24)})
    printed: list[str] = []
    real = mf._measurement_row

    def row(frame, *args):      # what stdout holds when each frame's row is made
        printed.append(capsys.readouterr().out)
        return real(frame, *args)

    monkeypatch.setattr(mf, "_measurement_row", row)
    args = ["measure", str(ckpt), str(tmp_path / "in"), "--device", "cpu", "--batch-size", "1"]
    assert main(args) == 0
    rest = capsys.readouterr().out
    assert printed[0] == "" and printed[1].startswith("a: ") and printed[2].startswith("b: ")
    assert printed[1].count("\n") == printed[2].count("\n") == 1
    assert rest.startswith("c: ") and "measured 3 frames" in rest
    # once each: the lines were printed again, all of them, before the summary
    assert [line[:3] for line in rest.splitlines() if line[1:3] == ": "] == ["c: "]
    printed.clear()
    assert main(args + ["--json"]) == 0
    assert not any(printed) and len(json.loads(capsys.readouterr().out)["rows"]) == 3


@pytest.mark.parametrize("label", ["0", "-7"])
def test_predict_refuses_a_label_that_names_no_structure_before_writing(tmp_path, ckpt, capsys,
                                                                        label):
    """train, evaluate and inspect refused --label 0 (the background); predict accepted it,
    or with --overlay refused it after making the output folder and writing a mask. (A usage
    error as the command line is parsed; write_predictions' own check, before its folder.)"""
    from ultraseg.errors import UltrasegError
    from ultraseg.predict_files import write_predictions

    frames(tmp_path / "in", {"1.png": (20, 30)})
    with pytest.raises(SystemExit) as stop:
        main(["predict", str(ckpt), str(tmp_path / "in"), "--out", str(tmp_path / "o"),
              "--overlay", "--label", label])
    err = capsys.readouterr().err.strip()
    assert stop.value.code == 2 and "argument --label" in err and "background" in err
    with pytest.raises(UltrasegError, match="--label .*background"):
        write_predictions(str(ckpt), tmp_path / "in", tmp_path / "o", overlay=True,
                          label=int(label))
    assert not (tmp_path / "o").exists()


def test_an_overlay_of_a_label_no_mask_holds_says_so_as_evaluate_does(tmp_path, ckpt, capsys):
    """predict --overlay --label 2 on binary masks drew no truth on any overlay and said
    nothing (evaluate refuses a label that occurs in no mask; an overlay still shows the
    prediction, so predict warns)."""
    from ultraseg.phantom import make_dataset

    data = make_dataset(tmp_path / "data", n=3, size=32, seed=0)
    for label, absent in (("2", True), ("1", False)):
        with ultraseg_warnings() as warned:
            assert main(["predict", str(ckpt), str(data), "--out", str(tmp_path / label),
                         "--overlay", "--label", label]) == 0
        said = [r.getMessage() for r in warned if "occurs in none" in r.getMessage()]
        assert said == (["label 2 occurs in none of the 3 masks (they hold labels [1]): no "
                         "overlay shows a ground truth (--label K draws another)"]
                        if absent else [])


@pytest.mark.parametrize("flag", ["--label 9", "--fill-outlines", "--no-fill-outlines"])
def test_predict_refuses_a_label_without_overlay(tmp_path, ckpt, capsys, flag):
    """--label chooses the ground truth an overlay draws; without --overlay no mask is read,
    and `predict --label 9` exited 0 saying nothing (not even checking the label); so did
    --fill-outlines, which says how the overlay reads that truth."""
    frames(tmp_path / "in", {"1.png": (20, 30)})
    rc = main(["predict", str(ckpt), str(tmp_path / "in"), "--out", str(tmp_path / "o"),
               *flag.split()])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("error:"), err
    assert flag.split()[0] in err[0] and "--overlay" in err[0]
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("command", ["predict", "measure"])
@pytest.mark.parametrize("flag", [["--layout", "nope"], ["--subject-pattern", "("]])
def test_a_bad_layout_flag_is_a_usage_error_whatever_the_inputs(tmp_path, ckpt, capsys,
                                                               command, flag):
    """With a file as the only input, --layout nope (or a pattern that is no regex) was taken
    in silence and the run exited 0; with a folder it was refused."""
    frames(tmp_path, {"x.png": (20, 30)})
    out = ["--out", str(tmp_path / "o")]
    rc = main([command, str(ckpt), str(tmp_path / "x.png"), *out, *flag])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.startswith("error:")
    assert ("unknown layout 'nope'" if flag[0] == "--layout" else "bad subject pattern") in err
    assert not (tmp_path / "o").exists()


def test_a_second_run_into_an_output_folder_says_the_earlier_outputs_stay(tmp_path, ckpt,
                                                                           capsys):
    """A run with --overlay, then one without into the same folder: the old overlays stayed
    beside the new masks without a word (from another model they match nothing)."""
    frames(tmp_path / "in", {"1.png": (20, 30)})
    out = tmp_path / "o"
    with ultraseg_warnings() as warned:
        assert main(["predict", str(ckpt), str(tmp_path / "in"), "--out", str(out),
                     "--overlay"]) == 0
    assert not [r for r in warned if "earlier run" in r.getMessage()]
    with ultraseg_warnings() as warned:
        assert main(["predict", str(ckpt), str(tmp_path / "in"), "--out", str(out)]) == 0
    assert any("holds an earlier run's outputs" in r.getMessage() for r in warned)
    assert (out / "1_overlay.png").is_file()


# ------------------------------------------------------------------ one command per folder
@pytest.mark.parametrize("command", ["predict", "measure"])
def test_a_second_command_into_an_output_folder_in_use_is_refused(tmp_path, ckpt, capsys,
                                                                   command):
    """`predict A --out pcon & predict B --out pcon`: both ran to the end, and the folder held
    masks of both models."""
    frames(tmp_path / "in", {"1.png": (20, 30)})
    out = tmp_path / "o"
    with held_elsewhere(out, "predict"):
        assert main([command, str(ckpt), str(tmp_path / "in"), "--out", str(out)]) == 2
        assert capsys.readouterr().err.strip().splitlines() == [
            f"error: {out}: in use by another ultraseg command (predict, pid {os.getpid()}); "
            f"wait for it to end or choose another --out"]
        assert sorted(p.name for p in out.iterdir()) == [LOCK_FILE]    # nothing written
    assert not out.exists()


@pytest.mark.parametrize("command", ["predict", "measure"])
def test_a_command_holds_its_output_folder_while_it_writes(tmp_path, ckpt, monkeypatch,
                                                           command):
    """The folder is held from before the first output is written to the last, and nothing
    of the lock is left in it."""
    import threading

    import ultraseg.frame_outputs as fo
    import ultraseg.measure_files as mf
    import ultraseg.predict_files as pf
    from ultraseg.errors import UltrasegError
    from ultraseg.fileio import output_lock

    frames(tmp_path / "in", {"1.png": (20, 30)})
    out, answers = tmp_path / "o", []

    def other() -> None:        # another command asks for the folder
        try:
            with output_lock(out, "predict"):
                answers.append("got it")
        except UltrasegError as e:
            answers.append(str(e).split("(")[1].split(",")[0])

    def probe(write):
        def probed(*args):
            thread = threading.Thread(target=other)
            thread.start()
            thread.join()
            return write(*args)
        return probed

    class Table(fo.LineFile):          # the table: made first, closed last
        def __init__(self, *args):
            probe(lambda: None)()
            super().__init__(*args)

        def close(self):
            probe(lambda: None)()
            super().close()

    for module in (fo, pf, mf):     # the settings' writer, and the frames' files' (each's own)
        monkeypatch.setattr(module, "write", probe(module.write))
    monkeypatch.setattr(fo, "LineFile", Table)
    assert main([command, str(ckpt), str(tmp_path / "in"), "--out", str(out), "--overlay"]) == 0
    # *.settings.json, the mask (predict), the overlay, the table made and closed
    assert answers == [command] * (5 if command == "predict" else 4)
    assert LOCK_FILE not in {p.name for p in out.iterdir()}


def test_a_folder_holding_only_its_marker_holds_no_earlier_outputs(tmp_path, ckpt) -> None:
    """The lock file is nobody's output: a run into a folder that an earlier run marked but
    left empty (every frame unreadable) says nothing of earlier outputs."""
    frames(tmp_path / "in", {"1.png": (20, 30)})
    out = tmp_path / "o"
    out.mkdir()
    (out / OUTPUT_MARKER).write_text("written by ultraseg predict/measure\n")
    with ultraseg_warnings() as warned:
        assert main(["predict", str(ckpt), str(tmp_path / "in"), "--out", str(out)]) == 0
    assert not [r for r in warned if "earlier run" in r.getMessage()]


def _out_of_memory_on(monkeypatch, stage: str, shape: tuple[int, int]) -> None:
    """Memory runs out at ``stage`` on the frame of ``shape`` only (H, W)."""
    import ultraseg.measure_files as measure_mod
    import ultraseg.predict as predict_mod
    import ultraseg.predict_files as files_mod
    from ultraseg.io.base import Sample

    def failing(real, shape_of):
        def wrapped(*args, **kw):
            if shape_of(*args) == shape:
                raise MemoryError("Unable to allocate 1.2 GiB for an array")
            return real(*args, **kw)
        return wrapped

    if stage == "decode":       # (decoded first: its shape read from the file's header)
        real = Sample.load_image
        monkeypatch.setattr(Sample, "load_image", lambda self: failing(
            real, lambda s: np.asarray(Image.open(s.image_path)).shape)(self))
    elif stage == "canvas":
        monkeypatch.setattr(predict_mod, "prepare",
                            failing(predict_mod.prepare, lambda im, cfg: im.shape[:2]))
    elif stage == "restore":
        monkeypatch.setattr(predict_mod, "restore",
                            failing(predict_mod.restore, lambda p, g: (g.height, g.width)))
    else:
        for module in (files_mod, measure_mod):     # predict's, measure's
            monkeypatch.setattr(module, "apply_postprocess",
                                failing(module.apply_postprocess, lambda p, cfg: p.shape))


@pytest.mark.parametrize("command", ["predict", "measure"])
@pytest.mark.parametrize("stage", ["decode", "canvas", "restore", "postprocess"])
def test_a_frame_memory_cannot_hold_is_skipped_named_with_its_size(tmp_path, ckpt, capsys,
                                                                   monkeypatch, command, stage):
    """One frame too large for the machine's memory (an 8000x6000 scan) stopped predict for
    the whole folder, the file unnamed, advising --batch-size (which cannot help: the memory
    goes to the frame's full resolution). Now it is skipped like an unreadable frame: named
    with its size in megapixels, the others (in its batch too) predicted, exit 2."""
    frames(tmp_path / "in", {"a.png": (20, 24), "b.png": (30, 40), "c.png": (20, 24)})
    _out_of_memory_on(monkeypatch, stage, (30, 40))
    out = tmp_path / "out"
    assert main([command, str(ckpt), str(tmp_path / "in"), "--out", str(out), "--device", "cpu",
                 "--batch-size", "3"]) == 2
    captured = capsys.readouterr()
    errors = [ln for ln in captured.err.splitlines() if ln.startswith("error:")]
    assert len(errors) == 2, captured.err
    assert errors[0].startswith(f"error: {tmp_path / 'in' / 'b.png'}: out of memory at its "
                                "full resolution (40x30, 0.0 Mpx"), errors[0]
    assert "downscale" in errors[0] and "--batch-size" in errors[0]
    assert errors[1] == ("error: 1 of 3 frames could not be read or held in memory (skipped, "
                         "named above)")
    if command == "predict":
        assert sorted(p.name for p in out.glob("*_mask.png")) == ["a_mask.png", "c_mask.png"]
        predictor = load(ckpt, device="cpu", precision="fp32")
        for name in "ac":
            mask = np.asarray(Image.open(out / f"{name}_mask.png")) == 255
            np.testing.assert_array_equal(
                mask, predictor.predict(read_image(tmp_path / "in" / f"{name}.png")))
    else:
        with open(out / "measurements.csv") as f:
            table = list(csv.DictReader(f))
        assert [r["name"] for r in table] == ["a", "b", "c"]          # b: its error
        assert [bool(r["error"]) for r in table] == [False, True, False]


def test_a_frame_whose_overlay_runs_out_of_memory_leaves_no_mask_behind(tmp_path, ckpt,
                                                                        capsys, monkeypatch):
    """The mask was written before the overlay was drawn: a frame skipped there left its
    mask in OUT, outside the summary's count."""
    import ultraseg.report as report

    real = report.overlay

    def overlay(image, mask, truth, thickness=1):
        if image.shape[:2] == (30, 40):
            raise MemoryError("Unable to allocate 1.2 GiB for an array")
        return real(image, mask, truth, thickness=thickness)

    monkeypatch.setattr(report, "overlay", overlay)
    frames(tmp_path / "in", {"a.png": (20, 24), "b.png": (30, 40), "c.png": (20, 24)})
    out = tmp_path / "out"
    assert main(["predict", str(ckpt), str(tmp_path / "in"), "--out", str(out), "--device",
                 "cpu", "--overlay"]) == 2
    assert "b.png: out of memory" in capsys.readouterr().err
    assert sorted(p.name for p in out.glob("*.png")) == [
        "a_mask.png", "a_overlay.png", "c_mask.png", "c_overlay.png"]


def test_the_network_running_out_of_memory_still_stops_the_run(tmp_path, ckpt, capsys,
                                                               monkeypatch):
    """Where the network's batch itself does not fit, no frame is to blame: the run stops with
    the advice that helps there (a smaller --batch-size)."""
    from ultraseg.predict import Predictor

    def fails(self, canvases):
        raise MemoryError("Unable to allocate 80 GiB")

    monkeypatch.setattr(Predictor, "proba_canvas", fails)
    frames(tmp_path / "in", {"a.png": (20, 24), "c.png": (20, 24)})
    assert main(["predict", str(ckpt), str(tmp_path / "in"), "--out", str(tmp_path / "out"),
                 "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: out of memory (Unable to allocate 80 GiB)")
    assert "a smaller --batch-size" in err[0] and "20 bytes a pixel" in err[0]


@pytest.mark.parametrize("command", ["predict", "measure"])
def test_frames_padded_to_a_strip_of_the_canvas_are_warned_about_once(tmp_path, ckpt,
                                                                      command):
    """A 40x2000 frame padded to the square 32 px canvas covers less than one canvas row: its
    mask said nothing useful, and nothing said so. One warning now names the first such frame
    and counts them; a frame of ordinary shape is not counted."""
    frames(tmp_path / "in", {"a.png": (40, 2000), "b.png": (30, 40), "c.png": (1000, 20)})
    with ultraseg_warnings() as warned:
        assert main([command, str(ckpt), str(tmp_path / "in"), "--out", str(tmp_path / "out"),
                     "--device", "cpu"]) == 0
    thin = [r.getMessage() for r in warned if "long and thin" in r.getMessage()]
    assert len(thin) == 1, thin
    assert thin[0].startswith("2 frame(s) so long and thin") and "--no-pad-to-square" in thin[0]
    assert f"first: {tmp_path / 'in' / 'a.png'}, 2000x40: 0.6 px" in thin[0]


def test_predict_overlay_fills_outline_truth_as_the_model_was_trained(tmp_path, ckpt,
                                                                       monkeypatch):
    """The truth an overlay draws is read as evaluate reads it: filled where the checkpoint
    was trained with --fill-outlines (or --fill-outlines says so), a ring otherwise."""
    import ultraseg.report as report

    real, drawn = report.overlay, []

    def overlay(image, mask, truth, thickness=1):
        drawn.append(truth)
        return real(image, mask, truth, thickness=thickness)

    monkeypatch.setattr(report, "overlay", overlay)
    root, ring, disk = outline_dataset(tmp_path / "d", n=1)
    filled = make_checkpoint(tmp_path / "filled.ckpt", meta_extra={
        "preprocess": PreprocessConfig(size=32, fill_outlines=True).to_dict()})
    for model, flags, truth in ((ckpt, [], ring), (ckpt, ["--fill-outlines"], disk),
                                (filled, [], disk), (filled, ["--no-fill-outlines"], ring)):
        drawn.clear()
        out = tmp_path / f"out{len(list(tmp_path.glob('out*')))}"
        assert main(["predict", str(model), str(root), "--out", str(out), "--device", "cpu",
                     "--overlay", *flags]) == 0
        assert len(drawn) == 1 and np.array_equal(drawn[0], truth), (model, flags)


@pytest.mark.parametrize("command", ["predict", "measure", "evaluate"])
def test_threads_sets_the_model_s_threads_and_puts_them_back(tmp_path, ckpt, monkeypatch,
                                                              command, capsys):
    """predict, measure and evaluate had no --threads (train has): on a shared 2-core host
    torch's default of every core ran 5 times slower; only OMP_NUM_THREADS helped."""
    from ultraseg.predict import Predictor

    frames(tmp_path / "d" / "images", {"a.png": (20, 30)})
    (tmp_path / "d" / "masks").mkdir()
    Image.fromarray(np.zeros((20, 30), np.uint8)).save(tmp_path / "d" / "masks" / "a_mask.png")
    seen, real = [], Predictor.predict_proba_many

    def counted(self, images):
        seen.append(torch.get_num_threads())
        return real(self, images)

    monkeypatch.setattr(Predictor, "predict_proba_many", counted)
    before = torch.get_num_threads()
    want = 1 if before != 1 else 2
    out = [] if command == "evaluate" else ["--out", str(tmp_path / "o")]
    assert main([command, str(ckpt), str(tmp_path / "d"), *out, "--device", "cpu",
                 "--threads", str(want)]) == 0
    assert seen and set(seen) == {want} and torch.get_num_threads() == before
    with pytest.raises(SystemExit) as stop:
        main([command, str(ckpt), str(tmp_path / "d"), *out, "--threads", "0"])
    assert stop.value.code == 2 and "argument --threads: " in capsys.readouterr().err


def test_progress_off_a_terminal_is_a_plain_line_a_minute_and_at_the_end() -> None:
    """Under nohup, Slurm or `> log 2>&1` a multi-hour predict printed nothing between its
    start and its end: the bar is drawn on a terminal alone."""
    import io

    from ultraseg.cli_predict import ProgressBar

    now = [0.0]
    log = io.StringIO()
    bar = ProgressBar("predict", log, clock=lambda: now[0])
    for done in range(1, 201):
        now[0] = done * 1.0                  # a frame a second
        bar(done, 200)
    bar(200, 200)                            # the end said once
    lines = log.getvalue().splitlines()
    assert lines[0] == "predict: 60/200 frames, ETA 2 min"
    assert lines[1:] == ["predict: 120/200 frames, ETA 1 min",
                         "predict: 180/200 frames, ETA 20 s", "predict: 200/200 frames"]
    assert "\r" not in log.getvalue()
    quick = io.StringIO()
    bar = ProgressBar("measure", quick, clock=lambda: now[0])
    bar(1, 2)
    bar(2, 2)
    assert quick.getvalue() == ""           # a run shorter than a minute: its summary says it


def test_the_bar_on_a_terminal_is_one_line_redrawn_and_cleared_at_the_end(monkeypatch) -> None:
    """Pins the terminal's bar (shared with training's printer: one guarded status line)."""
    import io

    from ultraseg.cli_predict import ProgressBar

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.setenv("COLUMNS", "200")
    now = [0.0]
    screen = Terminal()
    bar = ProgressBar("predict", screen, clock=lambda: now[0])
    now[0] = 2.0
    bar(1, 3)
    assert screen.getvalue() == f"\rpredict [{'#' * 10:<30}] 1/3 ETA    4s "
    now[0] = 6.0
    bar(3, 3)
    assert screen.getvalue().endswith(f"\rpredict [{'#' * 30}] 3/3 ETA    0s "
                                      + "\r" + " " * len(f"predict [{'#' * 30}] 3/3 ETA    0s ")
                                      + "\r")

    class Gone(Terminal):
        def write(self, text: str) -> int:
            raise BrokenPipeError(32, "Broken pipe")

    gone = ProgressBar("measure", Gone(), clock=lambda: now[0])
    gone(1, 3)
    gone.clear()
    gone(2, 3)
    assert gone.quiet


def test_the_bar_is_taken_off_a_terminal_line_before_a_frame_line_is_printed(
        monkeypatch) -> None:
    """measure prints each frame's line as it is measured: on a terminal the bar's line is
    cleared first (the line would follow the bar's text), and drawn again after."""
    import io

    from ultraseg.cli_predict import ProgressBar

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.setenv("COLUMNS", "200")
    screen = Terminal()
    bar = ProgressBar("measure", screen, clock=lambda: 0.0)
    bar(1, 3)
    drawn = screen.getvalue()
    bar.clear()
    assert screen.getvalue()[len(drawn):] == "\r" + " " * (len(drawn) - 1) + "\r"
    off = io.StringIO()
    ProgressBar("measure", off).clear()         # off a terminal: no bar to take off
    assert off.getvalue() == ""


def test_the_bar_fits_a_narrow_terminal_and_its_clear_no_wider_than_it(monkeypatch) -> None:
    """predict's bar (about 55 characters) wrapped at 40 columns, leaving a row per frame, and
    its 70-space clear wrapped at 60, leaving a blank row before the closing line (a review):
    the bar is cut to the terminal's width less one column, the clear as wide as the bar."""
    import io

    from ultraseg.cli_predict import ProgressBar

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    for columns in (40, 60):
        monkeypatch.setenv("COLUMNS", str(columns))
        screen = Terminal()
        bar = ProgressBar("predict", screen, clock=lambda: 0.0)
        for done in range(4):
            bar(done, 3)
        written = screen.getvalue()
        drawn = [s for s in written.split("\r") if s.strip()]
        assert len(drawn) == 4 and drawn[0].startswith("predict [")
        assert max(map(len, drawn)) <= columns - 1                  # never wraps
        assert written.endswith("\r" + " " * max(map(len, drawn)) + "\r")


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
@pytest.mark.parametrize("command", ["predict", "measure"])
@pytest.mark.parametrize("stderr", ["gone", "full"])
def test_a_progress_line_that_cannot_be_written_stops_nothing(tmp_path, ckpt, monkeypatch,
                                                              command, stderr):
    """Off a terminal the progress line was written unguarded: `predict ... 2>&1 | head`, or a
    stderr on a full disk, stopped the run at its first line (exit 141, or an internal error),
    where training goes on (a display is no reason to lose a run)."""
    from ultraseg import cli_predict

    frames(tmp_path / "in", SHAPES)
    bar = cli_predict.ProgressBar
    monkeypatch.setattr(cli_predict, "ProgressBar", lambda what: bar(what, every=0.0))
    if stderr == "full":
        stream = open("/dev/full", "w")
    else:
        read, write = os.pipe()
        os.close(read)
        stream = open(write, "w")
    monkeypatch.setattr("sys.stderr", stream)
    try:
        assert main([command, str(ckpt), str(tmp_path / "in"), "--out", str(tmp_path / "o"),
                     "--device", "cpu", "--batch-size", "1"]) == 0
    finally:
        with contextlib.suppress(OSError):
            stream.close()
    if command == "predict":
        assert len(list((tmp_path / "o").rglob("*_mask.png"))) == len(SHAPES)
    else:
        with open(tmp_path / "o" / "measurements.csv") as f:
            assert len(list(csv.DictReader(f))) == len(SHAPES)


@pytest.mark.parametrize("command", ["evaluate", "measure"])
@pytest.mark.parametrize("damage", ["missing", "unreadable frame", "missing model"])
def test_json_when_the_command_fails_is_still_one_object(tmp_path, ckpt, capsys, command,
                                                         damage):
    """`evaluate/measure --json` said "print exactly one JSON object" and printed nothing
    when they failed: a script piping it to jq got empty input and no problem lines. They
    print one object, with inspect's problem_lines, as inspect --json does; stderr keeps its
    error lines."""
    from ultraseg.phantom import make_dataset

    data = make_dataset(tmp_path / "data", n=3, size=32, seed=0)
    model = ckpt
    if damage == "missing":
        data = tmp_path / "nothing"
    elif damage == "unreadable frame":
        (data / "images" / "1_2.png").write_bytes(b"not a png")
    else:
        model = tmp_path / "gone.ckpt"
    rc = main([command, str(model), str(data), "--json", "--device", "cpu"])
    captured = capsys.readouterr()
    if command == "measure" and damage == "unreadable frame":
        assert rc == 2 and "unreadable" in json.loads(captured.out)   # measured the others
        return
    assert rc == 2
    report = json.loads(captured.out)
    assert report["failed"] is True and report["path"] == str(data)
    assert report["problem_lines"] and report["problems"] == len(report["problem_lines"])
    errors = [ln for ln in captured.err.splitlines() if ln.startswith("error:")]
    assert errors and errors[0] == f"error: {report['problem_lines'][0]}"


@pytest.mark.parametrize("command", ["predict", "evaluate", "measure"])
def test_a_device_the_machine_lacks_is_said_in_predictions_words(tmp_path, ckpt, capsys,
                                                                  monkeypatch, command):
    """predict/evaluate --device cuda on a machine without a GPU said "asked for (by
    --device, or a resumed run's config.json)": training's wording, where no run resumes."""
    from ultraseg.phantom import make_dataset

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    data = make_dataset(tmp_path / "data", n=2, size=32, seed=0)
    out = ["--out", str(tmp_path / "o")] if command == "predict" else []
    assert main([command, str(ckpt), str(data), *out, "--device", "cuda"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "device cuda asked for (by --device" in err[0], err
    assert "resumed" not in err[0] and "--device cpu runs on the CPU" in err[0]


@pytest.mark.parametrize("command", ["predict", "measure", "evaluate"])
def test_the_readme_row_of_each_model_command_names_its_model_flags(command):
    """The README's predict and measure rows left out --threads (the evaluate row alone named
    it), and predict's never said what its progress is off a terminal."""
    import argparse

    from ultraseg.cli_predict import model_args

    readme = Path(__file__).resolve().parents[1] / "README.md"
    if not readme.is_file():
        pytest.skip("no README.md")
    (row,) = [line for line in readme.read_text(encoding="utf-8").splitlines()
              if line.startswith(f"| `ultraseg {command} ")]
    p = argparse.ArgumentParser()
    model_args(p)
    flags = [s for action in p._actions for s in action.option_strings if s.startswith("--")
             and s != "--help"]
    assert flags and [f for f in flags if f"`{f}" not in row] == []
    if command != "evaluate":
        assert f"`{command}: K/N frames" in row        # the plain progress line


def test_the_readme_predict_row_names_the_mask_format_flag():
    """The predict row said "masks (0/255 PNG or TIFF)" but never named --format, the flag that
    chooses between them: a user wanting TIFF masks had to find it in --help."""
    import argparse

    from ultraseg.cli import build_parser

    readme = Path(__file__).resolve().parents[1] / "README.md"
    if not readme.is_file():
        pytest.skip("no README.md")
    (row,) = [line for line in readme.read_text(encoding="utf-8").splitlines()
              if line.startswith("| `ultraseg predict ")]
    (commands,) = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    (fmt,) = [a for a in commands.choices["predict"]._actions if "--format" in a.option_strings]
    synopsis = row.split("` |")[0]                 # (a table cell writes "|" as "\|")
    choices = "\\|".join(fmt.choices)
    assert f"[--format {choices}]" in synopsis, synopsis


@pytest.mark.parametrize("command", ["predict", "measure", "evaluate"])
def test_threads_set_an_onnx_model_s_session_threads(tmp_path, ckpt, monkeypatch, command):
    """--threads did nothing for an ONNX model (a note said so): its ONNX Runtime session,
    which takes its threads when it is made, ran on every core of a shared host."""
    from conftest import onnx_session_threads

    onnx_path = tmp_path / "m.onnx"
    assert main(["export", str(ckpt), "--onnx", str(onnx_path)]) == 0
    frames(tmp_path / "d" / "images", {"a.png": (20, 30)})
    (tmp_path / "d" / "masks").mkdir()
    Image.fromarray(np.zeros((20, 30), np.uint8)).save(tmp_path / "d" / "masks" / "a_mask.png")
    made = onnx_session_threads(monkeypatch)
    out = [] if command == "evaluate" else ["--out", str(tmp_path / "o")]
    assert main([command, str(onnx_path), str(tmp_path / "d"), *out, "--threads", "1"]) == 0
    assert made == [1]
    made.clear()
    assert main([command, str(onnx_path), str(tmp_path / "d"), *out,
                 *(["--out", str(tmp_path / "o2")] if out else [])]) == 0
    assert made == [0]                       # ONNX Runtime's default: one per core


def test_an_option_noted_but_not_listed_is_still_recorded() -> None:
    """options_given took the names to record from _RECORDED_OPTIONS alone, so an option whose
    default was noted (_note_defaults) but that the list missed went unrecorded in
    *.settings.json without a failing test (a re-read). Every noted option is recorded where
    given, the listed ones in the list's order."""
    import argparse

    from ultraseg.cli_predict import _note_defaults, options_given

    p = argparse.ArgumentParser()
    p.add_argument("--threshold", type=float, default=None)
    p.add_argument("--not-listed", type=int, default=1)
    _note_defaults(p, "threshold", "not_listed")
    assert options_given(p.parse_args([])) == {}
    given = options_given(p.parse_args(["--not-listed", "2", "--threshold", "0.3"]))
    assert list(given.items()) == [("threshold", 0.3), ("not_listed", 2)]


@pytest.mark.parametrize("command", ["predict", "measure", "evaluate"])
@pytest.mark.parametrize("kind", ["ckpt", "onnx"])
def test_more_threads_than_cores_is_warned_about_once(tmp_path, ckpt, monkeypatch, command,
                                                      kind):
    """train warned where --threads asked for more threads than the cores the process may
    use; predict, measure and evaluate took --threads too (torch's for a checkpoint, ONNX
    Runtime's for an .onnx) and said nothing. One warning, train's, names both counts; the
    command is not refused, and a count within the cores says nothing. The cores are faked
    to 1 (the command asks for 2)."""
    from ultraseg import shared

    model = ckpt
    if kind == "onnx":
        model = tmp_path / "m.onnx"
        assert main(["export", str(ckpt), "--onnx", str(model)]) == 0
    frames(tmp_path / "d" / "images", {"a.png": (20, 30)})
    (tmp_path / "d" / "masks").mkdir()
    Image.fromarray(np.zeros((20, 30), np.uint8)).save(tmp_path / "d" / "masks" / "a_mask.png")
    monkeypatch.setattr(shared, "usable_cores", lambda: 1)
    for n, out in (("2", "o"), ("1", "o1")):
        outs = [] if command == "evaluate" else ["--out", str(tmp_path / out)]
        with ultraseg_warnings() as warned:
            assert main([command, str(model), str(tmp_path / "d"), *outs, "--device", "cpu",
                         "--threads", n]) == 0
        said = [r.getMessage() for r in warned if "more threads than" in r.getMessage()]
        if n == "2":
            assert len(said) == 1 and "--threads 2" in said[0] and "1 core" in said[0], said
        else:
            assert said == []


#: A checkpoint's choice that every post-processing setting moves off its default.
RULES = PostprocessConfig(threshold=0.3, min_area=3, min_peak=0.1, keep_largest=True,
                          fill_holes=True, tta=True)


@pytest.mark.parametrize("command", ["predict", "measure", "evaluate"])
def test_raw_turns_every_post_processing_setting_off_and_is_recorded(tmp_path, capsys,
                                                                     command):
    """Turning post-processing off took six flags (--threshold 0.5 --min-area 0 --min-peak 0
    --no-keep-largest --no-fill-holes --no-tta; a post-processing review, O5). --raw is
    PostprocessConfig() with the flip off, on predict, measure and evaluate alike; the
    settings record (summary.json for evaluate) says it was applied, and given (evaluate's
    summary.json recorded the settings applied alone, not that --raw was given)."""
    from ultraseg.phantom import make_dataset

    data = make_dataset(tmp_path / "data", n=3, size=32, seed=0)
    ckpt = make_checkpoint(tmp_path / "m.ckpt", meta_extra={"postprocess": RULES.to_dict()})
    out = tmp_path / "o"
    assert main([command, str(ckpt), str(data), "--out", str(out), "--raw", "--device", "cpu",
                 "--precision", "fp32"]) == 0
    capsys.readouterr()
    off = {**PostprocessConfig().to_dict(), "tta": False}
    given = {"raw": True, "device": "cpu", "precision": "fp32"}
    if command == "evaluate":
        summary = json.loads((out / "summary.json").read_text())
        assert summary["postprocess"] == off and summary["overrides"] == given
        assert main([command, str(ckpt), str(data), "--out", str(tmp_path / "own")]) == 0
        assert json.loads((tmp_path / "own" / "summary.json").read_text())["overrides"] == {}
        from ultraseg.evaluate import evaluate

        assert evaluate(load(ckpt), data)[0]["overrides"] is None     # from Python: unknown
        return
    table = {"predict": "predictions", "measure": "measurements"}[command]
    settings = json.loads((out / f"{table}.settings.json").read_text())
    assert settings["postprocess"] == off
    assert settings["overrides"] == given
    if command == "predict":
        plain = load(ckpt, device="cpu", precision="fp32", tta=False)
        chosen = load(ckpt, device="cpu", precision="fp32")
        with open(out / "predictions.csv", newline="") as f:
            rows = list(csv.DictReader(f))
        changed = 0
        for row in rows:
            image = read_image(row["image"])
            mask = np.asarray(Image.open(out / row["mask"])) == 255
            np.testing.assert_array_equal(mask, plain.predict_proba(image) >= 0.5)
            changed += int((mask != chosen.predict(image)).sum())
        assert len(rows) == 3 and changed > 0       # the checkpoint's choice was not applied


@pytest.mark.parametrize("flag", [["--threshold", "0.5"], ["--min-area", "0"],
                                  ["--min-peak", "0"], ["--no-keep-largest"], ["--fill-holes"],
                                  ["--no-tta"]])
def test_raw_beside_a_post_processing_flag_is_refused_naming_both(tmp_path, ckpt, capsys,
                                                                  flag):
    """--raw is every post-processing setting at once: beside one of the six flags, one of
    the two would be ignored; it is refused, naming both, before the output folder is made."""
    frames(tmp_path / "in", {"1.png": (20, 30)})
    assert main(["predict", str(ckpt), str(tmp_path / "in"), "--out", str(tmp_path / "o"),
                 "--raw", *flag]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: --raw and ") and flag[0] in err[0], err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("command", ["measure", "evaluate"])
def test_raw_is_refused_beside_a_post_processing_flag_on_measure_and_evaluate(tmp_path, ckpt,
                                                                             capsys, command):
    """measure and evaluate take --raw as predict does, and refuse it as predict does."""
    from ultraseg.phantom import make_dataset

    data = make_dataset(tmp_path / "data", n=2, size=32, seed=0)
    assert main([command, str(ckpt), str(data), "--raw", "--tta", "--threshold", "0.4"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--raw and --threshold, --tta cannot be combined" in err[0], err


def test_predict_probabilities_writes_the_map_the_masks_are_thresholded_from(tmp_path, capsys):
    """predict --probabilities writes NAME_prob.png (a post-processing review, O4): the map
    before the threshold and rules, the checkpoint's or --raw's alike, averaged with the
    flipped frame's where tta is used; predictions.csv lists it in its last column."""
    shapes = {"a/1.png": (45, 67), "b/1.png": (33, 29)}
    images = frames(tmp_path / "in", shapes)
    ckpt = make_checkpoint(tmp_path / "m.ckpt", meta_extra={
        "postprocess": PostprocessConfig(threshold=0.3, keep_largest=True,
                                         fill_holes=True).to_dict()})
    common = [str(ckpt), str(tmp_path / "in"), "--device", "cpu", "--precision", "fp32",
              "--probabilities"]
    maps = {}
    for out, flags, tta in (("own", [], False), ("raw", ["--raw"], False),
                            ("tta", ["--tta"], True)):
        assert main(["predict", *common, "--out", str(tmp_path / out), *flags]) == 0
        assert "masks and probability maps in" in capsys.readouterr().out
        with open(tmp_path / out / "predictions.csv", newline="") as f:
            reader = csv.DictReader(f)
            rows = list(reader)
        assert reader.fieldnames == ["name", "image", "frame", "mask", "overlay", "status",
                                     "reason", "probabilities"]
        predictor = load(ckpt, device="cpu", precision="fp32", tta=tta)
        assert len(rows) == len(images)
        for row in rows:
            rel = Path(row["image"]).relative_to(tmp_path / "in").as_posix()
            assert row["probabilities"] == row["mask"].replace("_mask.png", "_prob.png")
            got = np.asarray(Image.open(tmp_path / out / row["probabilities"]))
            assert got.dtype == np.uint16 and got.shape == shapes[rel]
            np.testing.assert_allclose(got / 65535.0, predictor.predict_proba(images[rel]),
                                       atol=0.5 / 65535 + 1e-6)
            maps[out, rel] = got
    for rel in images:
        np.testing.assert_array_equal(maps["raw", rel], maps["own", rel])   # rules: not in it
        assert (maps["tta", rel] != maps["own", rel]).sum() > 10            # the flip: in it
