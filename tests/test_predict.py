"""File-level prediction and measurement (ultraseg.predict_files, measure_files, frame_outputs):
inputs -> masks, overlays, RLE, measurements.

Most tests use a torch-free Predictor whose "network" is a fixed pixel-wise function, so every
expected mask can be computed by hand: with ``PreprocessConfig(size=None, normalise='unit')``
the canvas is image / 255 and the probability is sigmoid(40 (x - 0.5)), so at the default
threshold 0.5 a pixel is foreground exactly when its value is >= 128.
"""
from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ultraseg.config import ModelConfig, PostprocessConfig, PreprocessConfig
from ultraseg.errors import DataError, UltrasegError
from ultraseg.io import open_dataset
from ultraseg.measure import ellipse_circumference
from ultraseg.predict import Predictor
from ultraseg.io.outputs import OUTPUT_MARKER
from ultraseg.frame_outputs import iter_probabilities
from ultraseg.frames import collect_frames
from ultraseg.measure_files import measure_frames
from ultraseg.predict_files import encode_mask, write_predictions
from ultraseg.rle import decode
from ultraseg.postprocess import apply as apply_postprocess


def pixel_predictor(**options) -> Predictor:
    """A Predictor whose probability is a steep sigmoid of the pixel value (no torch)."""
    def run(batch: np.ndarray) -> np.ndarray:
        return (1.0 / (1.0 + np.exp(-40.0 * (batch - 0.5)))).astype(np.float32)

    return Predictor(run, ModelConfig(variant="same", depth=2),
                     PreprocessConfig(size=None, normalise="unit"), **options)


def ramp(h: int, w: int, seed: int = 0) -> np.ndarray:
    """A gray frame with values on both sides of 128."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (h, w), dtype=np.uint8)


def save(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def read(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path))


# ------------------------------------------------------------------------ inputs and names
def test_collect_frames_names_keep_structure_only_where_stems_collide(tmp_path):
    a = tmp_path / "a"
    save(a / "x.png", ramp(5, 7))
    save(a / "sub" / "x.png", ramp(5, 7))
    save(a / "y.png", ramp(5, 7))
    b = tmp_path / "b"
    save(b / "y.png", ramp(5, 7))          # same path below its folder as a/y.png
    save(b / "z.png", ramp(5, 7))
    save(b / "z.jpg", ramp(5, 7))          # same stem, same folder: the suffix decides
    single = save(tmp_path / "c" / "w.png", ramp(5, 7))
    frames = collect_frames([a, b, single])
    names = {f.image_path.relative_to(tmp_path).as_posix(): f.out_name for f in frames}
    assert names == {
        "a/x.png": "x",                    # x: its path below a/ ...
        "a/sub/x.png": "sub/x",            # ... is unique
        "a/y.png": "a/y",                  # y: same path below a/ and b/ -> folder name first
        "b/y.png": "b/y",
        "b/z.jpg": "b/z_jpg",
        "b/z.png": "b/z_png",
        "c/w.png": "w",                    # unique stems stay flat
    }
    assert len({n for n in names.values()}) == len(frames)


def test_names_that_collide_take_the_parent_folders_that_tell_them_apart(tmp_path):
    """Two sites' folders of one name (siteA/images, siteB/images) gave images/x_png_0 and
    images/x_png_2: the site was lost, and the number, the frame's place in the whole input
    list, changed as soon as a file was added before it."""
    for site in ("siteA", "siteB"):
        for stem in ("x", "y"):
            save(tmp_path / site / "images" / f"{stem}.png", ramp(4, 4))
    inputs = [tmp_path / "siteA" / "images", tmp_path / "siteB" / "images"]
    got = [f.out_name for f in collect_frames(inputs)]
    assert got == ["siteA/images/x", "siteA/images/y", "siteB/images/x", "siteB/images/y"]
    save(tmp_path / "early" / "x.png", ramp(4, 4))          # one more file, before them
    again = [f.out_name for f in collect_frames([tmp_path / "early"] + inputs)]
    assert again[1:] == got and again[0] == "early/x"


def test_names_told_apart_by_case_alone_carry_no_position(tmp_path):
    """X.PNG beside x.png (a case-sensitive file system) were told apart by their place in
    the input list: X_png_0 and x_png_4."""
    save(tmp_path / "mix" / "X.PNG", ramp(4, 4))
    save(tmp_path / "mix" / "x.png", ramp(4, 4, 1))
    got = [f.out_name for f in collect_frames([tmp_path / "mix"])]
    assert len({n.lower() for n in got}) == 2
    save(tmp_path / "first" / "a.png", ramp(4, 4))
    again = [f.out_name for f in collect_frames([tmp_path / "first", tmp_path / "mix"])]
    assert again[1:] == got


def test_names_one_in_unicode_normal_form_are_told_apart(tmp_path):
    """An \u00e9 written composed (NFC: typed, Linux, Windows) and decomposed (NFD: e and an
    accent, as macOS tools unpack) are one name to macOS's file systems: both frames were
    named \u00e9, so on a Mac one mask replaced the other and two rows named one file."""
    import unicodedata

    save(tmp_path / "a" / "\u00e9.png", ramp(4, 4))
    save(tmp_path / "b" / "e\u0301.png", ramp(4, 4, 1))
    got = [f.out_name for f in collect_frames([tmp_path / "a", tmp_path / "b"])]
    assert len({unicodedata.normalize("NFC", n).lower() for n in got}) == 2, got


def test_predictions_csv_maps_each_image_to_its_outputs(tmp_path):
    """predict wrote no table from an image to its mask: after a rerun on a grown archive
    (or names that collide) a script could not tell which mask was whose."""
    save(tmp_path / "in" / "a.png", ramp(6, 6))
    (tmp_path / "in" / "b.png").write_bytes(b"")
    _loop(tmp_path / "in" / "c.tif", [ramp(6, 6, k) for k in range(2)])
    out = tmp_path / "out"
    write_predictions(pixel_predictor(), collect_frames([tmp_path / "in"]), out,
                      overlay=True, skip_unreadable=True)
    raw = (out / "predictions.csv").read_bytes()
    assert b"\r" not in raw
    with open(out / "predictions.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert list(table[0]) == ["name", "image", "frame", "mask", "overlay", "status", "reason",
                              "probabilities"]
    by_name = {r["name"]: r for r in table}
    assert set(by_name) == {"a", "b", "c_frame001", "c_frame002"}
    a = by_name["a"]
    assert (a["image"], a["frame"], a["status"], a["reason"]) == (
        str(tmp_path / "in" / "a.png"), "", "ok", "")
    assert (out / a["mask"]).is_file() and (out / a["overlay"]).is_file()
    assert a["mask"] == "a_mask.png" and a["overlay"] == "a_overlay.png"
    assert by_name["c_frame002"]["frame"] == "2"
    b = by_name["b"]
    assert b["status"] == "unreadable" and "b.png" in b["reason"]
    assert b["mask"] == "" and b["overlay"] == ""
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.parametrize("given, words", [
    ({"label": 7}, "label=7 (--label 7)"),
    ({"fill_outlines": True}, "fill_outlines=True (--fill-outlines)"),
    ({"fill_outlines": False}, "fill_outlines=False (--no-fill-outlines)")])
def test_truth_options_without_an_overlay_are_refused(tmp_path, given, words):
    """label and fill_outlines say how an overlay reads the ground truth it draws: without
    overlay=True write_predictions took them, wrote every mask and said nothing, where the CLI
    refused the same flags (a design review, A2). Refused before anything is written, in the
    API's words with the CLI's flags beside them, as the API's other messages."""
    save(tmp_path / "in" / "a.png", ramp(6, 6))
    with pytest.raises(UltrasegError, match="without an overlay no mask is read") as e:
        write_predictions(pixel_predictor(), collect_frames([tmp_path / "in"]),
                          tmp_path / "out", **given)
    assert str(e.value).startswith(f"{words} says how the overlay (overlay=True, --overlay) "
                                   "reads the ground truth")
    assert not (tmp_path / "out").exists()
    write_predictions(pixel_predictor(), collect_frames([tmp_path / "in"]), tmp_path / "out",
                      overlay=True, **given)
    assert (tmp_path / "out" / "a_overlay.png").is_file()


def test_probabilities_writes_each_frame_s_map_as_a_16_bit_png_beside_its_mask(tmp_path):
    """predict could not write probability maps, only the API's predict_proba gave them (a
    post-processing review, O4). probabilities=True writes NAME_prob.png beside the mask: the
    map the mask is thresholded from, before the threshold and rules, as a 16-bit greyscale
    PNG (0..65535 for 0..1) at the image's size, listed in predictions.csv's last column
    (empty for a frame skipped, and without it)."""
    images = {"a": ramp(9, 13, 0), "c": ramp(7, 5, 1)}
    for name, image in images.items():
        save(tmp_path / "in" / f"{name}.png", image)
    (tmp_path / "in" / "b.png").write_bytes(b"")
    predictor = pixel_predictor(postprocess=PostprocessConfig(threshold=0.9, keep_largest=True))
    frames = collect_frames([tmp_path / "in"])
    out = tmp_path / "out"
    summary = write_predictions(predictor, frames, out, skip_unreadable=True,
                                probabilities=True)
    with open(out / "predictions.csv", newline="") as f:
        table = {r["name"]: r for r in csv.DictReader(f)}
    assert summary.probabilities == [out / "a_prob.png", out / "c_prob.png"]
    assert table["b"]["status"] == "unreadable" and table["b"]["probabilities"] == ""
    for name, image in images.items():
        row = table[name]
        assert row["probabilities"] == f"{name}_prob.png"
        data = (out / row["probabilities"]).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and (data[24], data[25]) == (16, 0)  # grey
        got = read(out / row["probabilities"])
        assert got.dtype == np.uint16 and got.shape == image.shape
        want = predictor.predict_proba(image)
        np.testing.assert_allclose(got / 65535.0, want, atol=0.5 / 65535 + 1e-6)
        assert len(np.unique(got)) > 2                      # a map, not the mask
        np.testing.assert_array_equal(read(out / row["mask"]) == 255,
                                      apply_postprocess(want, predictor.postprocess))
    write_predictions(predictor, frames, tmp_path / "plain", skip_unreadable=True)
    with open(tmp_path / "plain" / "predictions.csv", newline="") as f:
        assert [r["probabilities"] for r in csv.DictReader(f)] == ["", "", ""]
    assert not list((tmp_path / "plain").glob("*_prob.png"))


def test_path_cells_starting_as_a_formula_still_name_their_files(tmp_path, monkeypatch):
    """predictions.csv's mask and overlay cells, and the image cell of it and of
    measurements.csv, are paths a program opens: a file named -5_1.png had its cells written
    as '-5_1_mask.png (the spreadsheet guard's apostrophe), a file that does not exist. A
    relative path starting with = + - @ is written ./-5_1_mask.png now, the same file and no
    formula; the name cell keeps the apostrophe."""
    names = ["-5_1", "=x_2", "@y_3", "+z_4", "plain_5"]
    for k, n in enumerate(names):
        save(tmp_path / "in" / f"{n}.png", ramp(6, 6, k))
    monkeypatch.chdir(tmp_path / "in")         # relative inputs: the image cells too
    frames = collect_frames([Path(f"{n}.png") for n in names])
    out = tmp_path / "out"
    write_predictions(pixel_predictor(), frames, out, overlay=True)
    measure_frames(pixel_predictor(), frames, out=tmp_path / "m")
    _, predicted = _table(out / "predictions.csv")
    _, measured = _table(tmp_path / "m" / "measurements.csv")
    for table in (predicted, measured):
        assert [r["name"] for r in table] == ["'-5_1", "'=x_2", "'@y_3", "'+z_4", "plain_5"]
        assert all(Path(r["image"]).is_file() for r in table)
        assert table[0]["image"] == "./-5_1.png" and table[-1]["image"] == "plain_5.png"
        assert all(not v.startswith(("=", "+", "-", "@")) for r in table for v in r.values())
    for r in predicted:
        assert (out / r["mask"]).is_file() and (out / r["overlay"]).is_file()
    assert predicted[0]["mask"] == "./-5_1_mask.png"


def test_collect_frames_order_follows_inputs_then_natural_order(tmp_path):
    for n in (10, 2, 1):
        save(tmp_path / "d" / f"{n}.png", ramp(4, 4))
    extra = save(tmp_path / "e" / "0.png", ramp(4, 4))
    frames = collect_frames([extra, tmp_path / "d"])
    assert [f.out_name for f in frames] == ["0", "1", "2", "10"]


def test_a_file_given_twice_is_predicted_once_under_its_own_name(tmp_path):
    """A folder and a file in it (or nested folders) named the file twice: it was predicted
    twice, as x_png_0 and x_png_2."""
    from conftest import ultraseg_warnings

    save(tmp_path / "d" / "x.png", ramp(4, 4))
    save(tmp_path / "d" / "sub" / "y.png", ramp(4, 4))
    with ultraseg_warnings() as warned:
        frames = collect_frames([tmp_path / "d", tmp_path / "d" / "x.png", tmp_path / "d" / "sub"])
    assert [f.out_name for f in frames] == ["y", "x"]            # the folder's order
    assert [f.image_path for f in frames] == [tmp_path / "d" / "sub" / "y.png",
                                              tmp_path / "d" / "x.png"]
    assert any("given more than once" in r.getMessage() for r in warned)


def test_two_names_linked_to_one_stored_file_are_two_frames(tmp_path):
    """A download cache links frame_001.png and frame_002.png to one blob: keyed on the
    resolved file, the second was dropped as 'given more than once', its mask and its
    submission row with it."""
    blob = save(tmp_path / "blobs" / "3f2a9c.png", ramp(4, 4))
    (tmp_path / "snap").mkdir()
    for name in ("frame_001.png", "frame_002.png"):
        (tmp_path / "snap" / name).symlink_to(blob)
    save(tmp_path / "snap" / "frame_003.png", ramp(4, 4, 1))
    hidden = save(tmp_path / "other" / ".scan.png", ramp(4, 4))     # named itself: read
    frames = collect_frames([tmp_path / "snap", hidden])
    assert [f.out_name for f in frames] == ["frame_001", "frame_002", "frame_003", ".scan"]


def _loop(path: Path, frames: list[np.ndarray]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(frames[0]).save(path, save_all=True,
                                    append_images=[Image.fromarray(f) for f in frames[1:]])
    return path


def test_a_cine_loop_is_predicted_frame_by_frame(tmp_path):
    """A loop (here a multi-page TIFF; a DICOM cine loop alike) was refused: each frame is
    now predicted, named after its file and its number from 1, and measured with its number
    in the table."""
    frames = [ramp(6, 8, k) for k in range(12)]
    loop = _loop(tmp_path / "in" / "clip.tif", frames)
    save(tmp_path / "in" / "still.png", ramp(6, 8, 99))
    got = collect_frames([tmp_path / "in"])
    assert [f.out_name for f in got] == [f"clip_frame{k:03d}" for k in range(1, 13)] + ["still"]
    assert [f.sample.frame for f in got] == list(range(12)) + [None]
    summary = write_predictions(pixel_predictor(), got, tmp_path / "o")
    assert summary.n == 13
    for k in (0, 11):        # each frame's own pixels: the steep sigmoid thresholds at 128
        mask = read(tmp_path / "o" / f"clip_frame{k + 1:03d}_mask.png")
        assert np.array_equal(mask, np.where(frames[k] > 128, 255, 0))
    _, rows = measure_frames(pixel_predictor(), [loop], out=tmp_path / "m")
    assert [r["frame"] for r in rows] == list(range(1, 13))
    with open(tmp_path / "m" / "measurements.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert [r["frame"] for r in table[:2]] == ["1", "2"]
    assert table[0]["image"] == str(loop)
    (row,) = measure_frames(pixel_predictor(), [tmp_path / "in" / "still.png"])[1]
    assert row["frame"] is None


def test_names_of_loops_that_share_a_stem_stay_apart(tmp_path):
    _loop(tmp_path / "a" / "clip.tif", [ramp(4, 4, k) for k in range(2)])
    _loop(tmp_path / "b" / "clip.tif", [ramp(4, 4, k) for k in range(2)])
    got = collect_frames([tmp_path / "a", tmp_path / "b"])
    assert [f.out_name for f in got] == ["a/clip_frame001", "a/clip_frame002",
                                         "b/clip_frame001", "b/clip_frame002"]


def test_a_loop_beside_a_file_of_its_stem_keeps_its_path_as_the_file_does(tmp_path):
    """Export media name every series' files alike (SE000000/IM000000, SE000001/IM000000):
    a loop's frames, IM000000_frame001..., collided with no file's name, so they lost the
    series folder the single frames kept, and could not be traced to their series."""
    save(tmp_path / "media" / "a" / "x.png", ramp(4, 4))
    _loop(tmp_path / "media" / "b" / "x.tif", [ramp(4, 4, k) for k in range(2)])
    save(tmp_path / "media" / "c" / "y.png", ramp(4, 4))
    got = [f.out_name for f in collect_frames([tmp_path / "media"])]
    assert got == ["a/x", "b/x_frame001", "b/x_frame002", "y"]


def test_a_loops_frames_keep_one_naming_where_one_of_them_collides(tmp_path):
    """clip.tif's frame 2 collided with a still named clip_frame002.png: that frame alone was
    renamed (mix/clip_tif_frame002 among clip_frame001, clip_frame003...)."""
    _loop(tmp_path / "mix" / "clip.tif", [ramp(4, 4, k) for k in range(3)])
    save(tmp_path / "mix" / "clip_frame002.png", ramp(4, 4, 9))
    got = [f.out_name for f in collect_frames([tmp_path / "mix"])]
    assert got == ["mix/clip_tif_frame001", "mix/clip_tif_frame002", "mix/clip_tif_frame003",
                   "mix/clip_frame002_png"]


def test_a_loop_in_a_labelled_dataset_stays_one_frame_and_is_refused_when_read(tmp_path):
    """Its mask is one frame: the loop cannot be paired frame by frame."""
    root = tmp_path / "ds"
    _loop(root / "images" / "1_1.tif", [ramp(9, 11, k) for k in range(2)])
    save(root / "masks" / "1_1_mask.png", np.zeros((9, 11), np.uint8))
    (frame,) = collect_frames([root])
    assert frame.out_name == "1_1" and frame.sample.frame is None
    with pytest.raises(DataError, match="holds 2 pages"):
        write_predictions(pixel_predictor(), [frame], tmp_path / "o")


def test_collect_frames_uses_a_labelled_dataset_and_its_masks(tmp_path):
    root = tmp_path / "ds"
    save(root / "images" / "1_1.png", ramp(9, 11))
    save(root / "masks" / "1_1_mask.png", np.zeros((9, 11), np.uint8))
    (frame,) = collect_frames([root])
    assert frame.out_name == "1_1" and frame.sample.labelled



def test_a_gif_or_a_video_named_to_predict_says_how_to_read_it(tmp_path):
    """`predict MODEL cine.gif` (or clip.mp4) said 'not an image file; supported: ...', true
    but no help: GIF is an image format ultraseg does not read, a video a loop of frames."""
    (tmp_path / "cine.gif").write_bytes(b"GIF89a")
    with pytest.raises(DataError, match="GIF is not read: convert it to PNG"):
        collect_frames([tmp_path / "cine.gif"])
    (tmp_path / "clip.mp4").write_bytes(b"x")
    with pytest.raises(DataError, match="a video.*ffmpeg -i .*clip.mp4.*multi-frame DICOM"):
        collect_frames([tmp_path / "clip.mp4"])


def test_a_video_s_ffmpeg_command_pastes_as_written(tmp_path):
    """The ffmpeg command said for a video put its name in raw: `ffmpeg -i my clip.mp4 ...`
    reads 'my' as the input."""
    import shlex

    from ultraseg.io.files import unread_file_advice

    for name in ("my clip's.mp4", "-clip.mp4"):
        advice = unread_file_advice(tmp_path / name) or ""
        words = shlex.split(advice.split("(", 1)[1].split(")", 1)[0])
        assert words[:2] == ["ffmpeg", "-i"] and Path(words[2]) == Path(name), advice
        stem = name[:-len(".mp4")]
        assert Path(words[3]) == Path(f"{stem}_%03d.png") and len(words) == 4, advice
        assert not any(w.startswith("-") for w in words[2:]), advice


def test_a_loop_with_a_mask_names_a_predict_command_that_pastes_as_written(tmp_path):
    from conftest import pasted

    from ultraseg.io.images import with_mask_advice

    image = tmp_path / "my loop's" / "1_1.tif"
    said = with_mask_advice(image, tmp_path / "1_1_mask.png")
    assert pasted(said) == ["ultraseg", "predict", "MODEL", str(image)]


def test_a_folder_with_problems_names_an_inspect_command_that_pastes_as_written(tmp_path):
    """`ultraseg inspect D 3` was refused as pasted ('unrecognized arguments: 3')."""
    from conftest import pasted

    from ultraseg.phantom import make_dataset

    root = make_dataset(tmp_path / "L Z's", n=3, size=32, seed=0)
    with pytest.raises(DataError) as err:
        collect_frames([root], layout="kaggle")
    assert pasted(str(err.value))[:3] == ["ultraseg", "inspect", str(root)], str(err.value)


def test_a_folder_with_problems_names_an_inspect_command_with_the_layout_given(tmp_path,
                                                                               capsys):
    """`predict MODEL LZ --layout kaggle` on a folders set failed with `ultraseg inspect LZ`
    lists the problems; that inspect detected the folders layout and found none."""
    from conftest import pasted

    from ultraseg import cli
    from ultraseg.phantom import make_dataset

    root = make_dataset(tmp_path / "LZ", n=3, size=32, seed=0)
    with pytest.raises(DataError) as err:
        collect_frames([root], layout="kaggle", subject_pattern=r"^(\d+)_")
    words = pasted(str(err.value))
    assert words[:3] == ["ultraseg", "inspect", str(root)], words
    assert {"--layout", "kaggle", "--subject-pattern", r"^(\d+)_"} <= set(words), words
    assert cli.main(words[1:]) == 2 and cli.main(words[1:3]) == 0
    capsys.readouterr()


def test_pointing_at_the_images_of_a_set_with_problems_is_not_sent_back(tmp_path):
    """predict on a folders set whose images/ mixes loose frames and a subject folder said
    'to predict its images anyway, point at S2/images'; that worked, but warned 'S2 holds a
    'folders' dataset: point at it', the command that had just failed. The warning now says
    the set above has problems, and how to list them."""
    from conftest import pasted, ultraseg_warnings

    from ultraseg.phantom import make_dataset

    root = make_dataset(tmp_path / "S2", n=4, size=32, seed=0)
    (root / "images" / "patX").mkdir()
    (root / "masks" / "patX").mkdir()
    save(root / "images" / "patX" / "a.png", ramp(32, 32))
    save(root / "masks" / "patX" / "a_mask.png", np.zeros((32, 32), np.uint8))
    with pytest.raises(DataError, match="point at") as err:
        collect_frames([root])
    images = root / "images"
    assert str(err.value).endswith(f"point at {images}"), str(err.value)
    with ultraseg_warnings() as warned:
        frames = collect_frames([images])
    assert len(frames) == 5
    assert not any("point at" in r.getMessage() for r in warned), warned
    with ultraseg_warnings() as warned:     # (an overlay wants the truth: where it is said)
        write_predictions(pixel_predictor(), [images], tmp_path / "out", overlay=True)
    said = " ".join(r.getMessage() for r in warned if "holds a" in r.getMessage())
    assert "point at it" not in said, said
    assert pasted(said) == ["ultraseg", "inspect", str(root)], said


def test_pointing_at_the_images_of_a_set_whose_only_problem_is_an_image_without_a_mask(
        tmp_path):
    """An image without its mask is no problem for predict (its overlay shows no truth), but
    the warning for a folder of images inside a labelled set counted it as one, sending a
    predict user to inspect rather than to the set, which predict reads with its truth."""
    from conftest import ultraseg_warnings

    from ultraseg.phantom import make_dataset

    root = make_dataset(tmp_path / "S3", n=4, size=32, seed=0)
    save(root / "images" / "9_9.png", ramp(32, 32))            # an image without its mask
    with ultraseg_warnings() as warned:
        write_predictions(pixel_predictor(), [root / "images"], tmp_path / "out", overlay=True)
    said = " ".join(r.getMessage() for r in warned)
    assert f"{root} holds a 'folders' dataset: point at it" in said, said
    assert len(collect_frames([root])) == 5                       # and it works


def test_predicting_a_sets_images_folder_names_the_set_only_for_an_overlay(tmp_path):
    """`predict MODEL DATA/images` warned 'DATA/images is read as a folder of unlabelled
    images; DATA holds a 'folders' dataset: point at it': for new frames, pointing at images/
    is the natural thing to do, and the set above matters only to an overlay's truth. Without
    --overlay nothing is said; with it, that its overlays show no truth and where it is."""
    from conftest import ultraseg_warnings

    from ultraseg.phantom import make_dataset

    root = make_dataset(tmp_path / "DATA", n=4, size=32, seed=0)
    with ultraseg_warnings() as warned:
        write_predictions(pixel_predictor(), [root / "images"], tmp_path / "a")
    assert [r.getMessage() for r in warned] == []
    with ultraseg_warnings() as warned:
        write_predictions(pixel_predictor(), [root / "images"], tmp_path / "b", overlay=True)
    said = [r.getMessage() for r in warned if "holds a" in r.getMessage()]
    assert len(said) == 1 and "overlays show no ground truth" in said[0], said
    assert said[0].endswith(f"{root} holds a 'folders' dataset: point at it"), said
    with ultraseg_warnings() as warned:     # the set itself: its truth is drawn, nothing said
        write_predictions(pixel_predictor(), [root], tmp_path / "c", overlay=True)
    assert not any("holds a" in r.getMessage() for r in warned), warned


def test_collect_frames_errors_before_anything_runs(tmp_path):
    save(tmp_path / "ok.png", ramp(4, 4))
    with pytest.raises(DataError, match="no such file or folder"):
        collect_frames([tmp_path / "ok.png", tmp_path / "missing.png"])
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(DataError, match="not an image file"):
        collect_frames([tmp_path / "notes.txt"])
    (tmp_path / "best.ckpt").write_bytes(b"x")     # `predict DATA MODEL`: the order swapped
    with pytest.raises(DataError, match="not an image file but a model: the model comes first"):
        collect_frames([tmp_path / "best.ckpt"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError):
        collect_frames([tmp_path / "empty"])
    broken = tmp_path / "broken"                      # labelled set with two masks folders
    save(broken / "images" / "a.png", ramp(4, 4))
    save(broken / "images" / "b.png", ramp(4, 4))
    save(broken / "masks" / "a_mask.png", np.zeros((4, 4), np.uint8))
    save(broken / "mask" / "b_mask.png", np.zeros((4, 4), np.uint8))
    # the hint names the images folder; it said --layout images, which reads the masks too
    # and so predicted masks as frames and put them in a submission
    with pytest.raises(DataError, match="several mask folders.*point at .*images$") as e:
        collect_frames([broken])
    assert "--layout images" not in str(e.value)
    assert [f.out_name for f in collect_frames([broken / "images"])] == ["a", "b"]


def test_a_bad_layout_or_subject_pattern_is_refused_for_files_alone_too(tmp_path):
    """--layout nope and --subject-pattern '(' were refused for a folder but taken in silence
    when every input was a file (no folder's reader ever saw them)."""
    png = save(tmp_path / "x.png", ramp(4, 4))
    with pytest.raises(UltrasegError, match="unknown layout 'nope'; valid layouts: auto, "):
        collect_frames([png], layout="nope")
    with pytest.raises(UltrasegError, match="bad subject pattern '\\('"):
        collect_frames([png], subject_pattern="(")
    assert [f.out_name for f in collect_frames([png], layout="hc18", subject_pattern="^x")] \
        == ["x"]


def test_an_image_without_its_mask_is_still_predicted(tmp_path):
    """A labelled set missing a mask (or holding an orphan mask) stopped predict, which needs
    no masks; a flat folder of scans holding one NAME_mask.png beside its NAME.png (now the
    kaggle layout) did too. Training still refuses such a set."""
    root = tmp_path / "d"
    for name in ("a", "b"):
        save(root / "images" / f"{name}.png", ramp(4, 4))
    save(root / "masks" / "a_mask.png", np.zeros((4, 4), np.uint8))
    save(root / "masks" / "z_mask.png", np.zeros((4, 4), np.uint8))     # no image z
    from conftest import ultraseg_warnings

    with ultraseg_warnings() as warned:
        assert [f.out_name for f in collect_frames([root])] == ["a", "b"]
    said = [r.getMessage() for r in warned]      # an overlay shows no truth for them: said
    assert len(said) == 1 and "2 images or masks without their partner" in said[0]
    with pytest.raises(DataError, match="b.png: image without a mask"):
        open_dataset(root)
    flat = tmp_path / "flat"
    for name in ("1_1", "1_2", "1_3"):
        save(flat / f"{name}.png", ramp(4, 4))
    save(flat / "1_1_mask.png", np.zeros((4, 4), np.uint8))
    assert [f.out_name for f in collect_frames([flat])] == ["1_1", "1_2", "1_3"]


def test_an_output_folder_that_is_the_input_is_refused_as_such(tmp_path):
    """--out set to the input folder said 'the only images are in the output folder'."""
    save(tmp_path / "in" / "a.png", ramp(4, 4))
    for out in (tmp_path / "in", tmp_path):
        with pytest.raises(UltrasegError, match="is this input folder or holds it.*--out"):
            collect_frames([tmp_path / "in"], exclude=out)
    assert len(collect_frames([tmp_path / "in"], exclude=tmp_path / "in" / "pred")) == 1
    # a file named on its own is the user's choice, wherever it lies (as the docstring says)
    assert [f.out_name for f in collect_frames([tmp_path / "in" / "a.png"],
                                               exclude=tmp_path / "in")] == ["a"]


def test_collect_frames_skips_the_output_folder_inside_an_input(tmp_path):
    save(tmp_path / "in" / "a.png", ramp(4, 4))
    save(tmp_path / "in" / "out" / "a_mask.png", ramp(4, 4))  # an earlier run's output
    frames = collect_frames([tmp_path / "in"], exclude=tmp_path / "in" / "out")
    assert [f.out_name for f in frames] == ["a"]



def test_collect_frames_takes_inputs_in_a_generator_to_the_end(tmp_path):
    """A generator's paths were read once, then indexed for the error where every image was
    in the output folder: a raw TypeError ('generator' object is not subscriptable)."""
    save(tmp_path / "in" / "out" / "a_mask.png", ramp(4, 4))  # an earlier run's output
    with pytest.raises(UltrasegError, match="the only images are in the output folder"):
        collect_frames((p for p in [tmp_path / "in"]), exclude=tmp_path / "in" / "out")
    save(tmp_path / "in" / "a.png", ramp(4, 4))
    frames = collect_frames((p for p in [tmp_path / "in"]), exclude=tmp_path / "in" / "out")
    assert [f.out_name for f in frames] == ["a"]


# ------------------------------------------------------------------------ writing masks
def test_masks_have_each_images_original_size_and_hand_computed_values(tmp_path):
    shapes = [(37, 53), (61, 29), (1, 5), (16, 16)]  # odd, non-square, tiny
    images = [ramp(h, w, seed=i) for i, (h, w) in enumerate(shapes)]
    for i, im in enumerate(images):
        save(tmp_path / "in" / f"f{i}.png", im)
    frames = collect_frames([tmp_path / "in"])
    summary = write_predictions(pixel_predictor(batch_size=3), frames, tmp_path / "out")
    assert summary.n == 4 and summary.n_empty == 0
    for i, im in enumerate(images):
        got = read(tmp_path / "out" / f"f{i}_mask.png")
        assert got.dtype == np.uint8 and got.shape == im.shape
        assert set(np.unique(got)) <= {0, 255}
        np.testing.assert_array_equal(got == 255, im >= 128)
    leftovers = [p.name for p in (tmp_path / "out").iterdir()
                 if p.name.startswith(".") and p.name != OUTPUT_MARKER]
    assert leftovers == []


def test_tif_format_and_nested_duplicate_stems(tmp_path):
    im1, im2 = ramp(13, 17, 1), ramp(19, 11, 2)
    save(tmp_path / "in" / "p" / "x.png", im1)
    save(tmp_path / "in" / "q" / "x.png", im2)
    write_predictions(pixel_predictor(), collect_frames([tmp_path / "in"]), tmp_path / "out",
                      fmt="tif")
    a = Image.open(tmp_path / "out" / "p" / "x_mask.tif")
    b = Image.open(tmp_path / "out" / "q" / "x_mask.tif")
    assert a.format == "TIFF" and a.mode == "L" and a.size == (17, 13) and b.size == (11, 19)
    np.testing.assert_array_equal(np.asarray(a) == 255, im1 >= 128)
    np.testing.assert_array_equal(np.asarray(b) == 255, im2 >= 128)


def test_overlay_draws_prediction_and_truth_in_their_colours(tmp_path):
    from ultraseg.report import PRED_COLOR, TRUTH_COLOR

    image = np.full((24, 30), 40, np.uint8)
    image[4:12, 5:15] = 220                                 # predicted: this bright box
    truth = np.zeros((24, 30), np.uint8)
    truth[14:22, 16:28] = 255                               # truth elsewhere: no overlap
    save(tmp_path / "ds" / "images" / "1_1.png", image)
    save(tmp_path / "ds" / "masks" / "1_1_mask.png", truth)
    save(tmp_path / "plain" / "2.png", image)
    frames = collect_frames([tmp_path / "ds", tmp_path / "plain"])
    summary = write_predictions(pixel_predictor(), frames, tmp_path / "out", overlay=True)
    assert len(summary.overlays) == 2
    ov = read(tmp_path / "out" / "1_1_overlay.png")
    assert ov.shape == (24, 30, 3)
    red = np.all(ov == PRED_COLOR, axis=2)
    green = np.all(ov == TRUTH_COLOR, axis=2)
    assert red[4:12, 5:15].any() and not red[12:, :].any()
    assert green[14:22, 16:28].any() and not green[:13, :].any()
    assert (ov[0, 0] == 40).all()                           # background keeps its gray
    plain = read(tmp_path / "out" / "2_overlay.png")
    assert np.all(plain == PRED_COLOR, axis=2).any()
    assert not np.all(plain == TRUTH_COLOR, axis=2).any()   # no truth: none drawn


def test_an_overlays_truth_reads_a_0_255_mask_as_its_set_has_it(tmp_path):
    """In a set of label masks (0/128/255), a mask holding only the 255 structure (0/255)
    was read as binary, its white label 1, so `predict --overlay --label 255` drew no truth
    on that frame (train and evaluate read it as label 255: io.label_set)."""
    from ultraseg.report import TRUTH_COLOR

    image = np.full((24, 30), 40, np.uint8)
    both = np.zeros((24, 30), np.uint8)
    both[2:8, 2:10], both[14:22, 16:28] = 128, 255
    alone = np.where(both == 255, 255, 0).astype(np.uint8)
    for name, mask in (("1_1", both), ("1_2", alone)):
        save(tmp_path / "ds" / "images" / f"{name}.png", image)
        save(tmp_path / "ds" / "masks" / f"{name}_mask.png", mask)
    frames = collect_frames([tmp_path / "ds"])
    write_predictions(pixel_predictor(), frames, tmp_path / "out", overlay=True, label=255)
    for name in ("1_1", "1_2"):
        truth = np.all(read(tmp_path / "out" / f"{name}_overlay.png") == TRUTH_COLOR, axis=2)
        assert truth[14:22, 16:28].any() and not truth[:12, :].any(), name


def test_an_overlays_truth_reads_each_input_set_as_it_has_its_masks(tmp_path):
    """The white of a 0/255 truth mask was decided over every input together: a plain set of
    0/255 masks (A) given beside a set of label masks (B) had its masks read as label 255, so
    under --label 1 A's overlays showed no truth. Each input set is read as it has them."""
    from ultraseg.report import TRUTH_COLOR

    image = np.full((24, 30), 40, np.uint8)
    both = np.zeros((24, 30), np.uint8)
    both[2:8, 2:10], both[14:22, 16:28] = 128, 255
    alone = np.where(both == 255, 255, 0).astype(np.uint8)
    save(tmp_path / "A" / "images" / "a_1.png", image)
    save(tmp_path / "A" / "masks" / "a_1_mask.png", alone)
    for name, mask in (("b_1", both), ("b_2", alone)):
        save(tmp_path / "B" / "images" / f"{name}.png", image)
        save(tmp_path / "B" / "masks" / f"{name}_mask.png", mask)
    frames = collect_frames([tmp_path / "A", tmp_path / "B"])
    for label, shown in ((1, {"a_1"}), (255, {"b_1", "b_2"})):
        out = tmp_path / f"out{label}"
        write_predictions(pixel_predictor(), frames, out, overlay=True, label=label)
        drawn = {f.out_name for f in frames
                 if np.all(read(out / f"{f.out_name}_overlay.png") == TRUTH_COLOR, axis=2).any()}
        assert drawn == shown, label


def test_predicting_frames_in_colour_says_one_line_for_them_all(tmp_path):
    """predict warned once a file of frames in colour (a Doppler box read as its luma): a
    folder of hundreds of Doppler frames said hundreds of lines. One line counts them, naming
    the first, as training and inspect say it; measure reads its frames the same way."""
    from conftest import ultraseg_warnings

    from ultraseg.measure_files import measure_frames

    rng = np.random.default_rng(0)
    for k in range(4):
        rgb = np.stack([rng.integers(60, 140, (30, 40), dtype=np.uint8)] * 3, axis=-1)
        rgb[4:10, 4:12] = (200, 30, 30)                          # 48 of 1200 pixels: 4 %
        Image.fromarray(rgb).save(tmp_path / f"d{k}.png")
    frames = collect_frames([tmp_path / f"d{k}.png" for k in range(4)])
    for run in (lambda: write_predictions(pixel_predictor(), frames, tmp_path / "out"),
                lambda: measure_frames(pixel_predictor(), frames, out=tmp_path / "m")):
        with ultraseg_warnings() as warned:
            run()
        said = [w.getMessage() for w in warned if "colour" in w.getMessage()]
        assert len(said) == 1 and said[0].startswith("4 frames partly colour"), said
        assert str(tmp_path / "d0.png") in said[0]


def test_rle_submission_round_trips_and_keeps_input_order(tmp_path):
    images = {"10": ramp(21, 13, 5), "2": ramp(21, 13, 6), "1": np.zeros((21, 13), np.uint8)}
    for stem, im in images.items():
        save(tmp_path / "test" / f"{stem}.tif", im)
    frames = collect_frames([tmp_path / "test"])
    write_predictions(pixel_predictor(), frames, tmp_path / "out", rle=tmp_path / "sub.csv")
    with open(tmp_path / "sub.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["img", "pixels"]
    assert [r[0] for r in rows[1:]] == ["1", "2", "10"]
    assert rows[1][1] == ""                                   # empty mask: empty string
    for stem, pixels in rows[1:]:
        np.testing.assert_array_equal(decode(pixels, (21, 13)), images[stem] >= 128)
        np.testing.assert_array_equal(read(tmp_path / "out" / f"{stem}_mask.png") == 255,
                                      images[stem] >= 128)


def test_predict_of_an_unlabelled_folder_gives_no_run_length_hint(tmp_path):
    """`predict --rle unl/submission.csv` and then `predict unl` warned that the folder holds
    run-length masks to decode beside the images as NAME_mask.png: the model's predictions
    as ground truth. Unlabelled is what predict expects: no hint, whatever the CSV."""
    from conftest import ultraseg_warnings

    save(tmp_path / "unl" / "1.png", ramp(21, 13, 5))
    (tmp_path / "unl" / "masks.csv").write_text("subject,img,pixels\n1,1,5 3\n")
    frames = collect_frames([tmp_path / "unl"])
    with ultraseg_warnings() as warned:
        write_predictions(pixel_predictor(), frames, tmp_path / "p1",
                          rle=tmp_path / "unl" / "submission.csv")
        collect_frames([tmp_path / "unl"])
    assert not any("run-length" in r.getMessage() for r in warned)


def test_rle_submission_of_a_kaggle_root_holds_the_test_split_only(tmp_path):
    root = tmp_path / "kaggle"
    save(root / "train" / "1_1.tif", ramp(12, 10, 1))
    save(root / "train" / "1_1_mask.tif", np.zeros((12, 10), np.uint8))
    save(root / "test" / "1.tif", ramp(12, 10, 2))
    save(root / "test" / "2.tif", ramp(12, 10, 3))
    frames = collect_frames([root])
    assert {f.out_name for f in frames} == {"1_1", "1", "2"}
    summary = write_predictions(pixel_predictor(), frames, tmp_path / "out",
                                rle=tmp_path / "sub.csv")
    with open(tmp_path / "sub.csv", newline="") as f:
        assert [r[0] for r in csv.reader(f)] == ["img", "1", "2"]
    assert summary.rle_left_out == 1 and summary.n == 3
    assert (tmp_path / "out" / "1_1_mask.png").is_file()     # masks still for every frame
    # The training folder alone is scored locally: every frame goes in.
    summary = write_predictions(pixel_predictor(), collect_frames([root / "train"]),
                                tmp_path / "out2", rle=tmp_path / "sub2.csv")
    with open(tmp_path / "sub2.csv", newline="") as f:
        assert [r[0] for r in csv.reader(f)] == ["img", "1_1"]
    assert summary.rle_left_out == 0


def test_postprocess_of_the_predictor_is_applied(tmp_path):
    image = np.zeros((20, 20), np.uint8)
    image[2:4, 2:4] = 255                   # a 4-pixel speck
    image[8:16, 8:16] = 255                 # a 64-pixel object with a hole
    image[11, 11] = 0
    save(tmp_path / "in" / "a.png", image)
    frames = collect_frames([tmp_path / "in"])
    cfg = PostprocessConfig(threshold=0.5, min_area=5, fill_holes=True)
    write_predictions(pixel_predictor(postprocess=cfg), frames, tmp_path / "out")
    want = np.zeros((20, 20), bool)
    want[8:16, 8:16] = True
    np.testing.assert_array_equal(read(tmp_path / "out" / "a_mask.png") == 255, want)
    write_predictions(pixel_predictor(postprocess=PostprocessConfig(threshold=0.0)), frames,
                      tmp_path / "out")
    assert (read(tmp_path / "out" / "a_mask.png") == 255).all()   # every p >= 0


def test_unreadable_image_stops_with_the_file_named_and_nothing_half_written(tmp_path):
    save(tmp_path / "in" / "1.png", ramp(8, 8))
    (tmp_path / "in" / "2.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    save(tmp_path / "in" / "3.png", ramp(8, 8))
    frames = collect_frames([tmp_path / "in"])
    out = tmp_path / "out"
    with pytest.raises(DataError, match=r"2\.png"):
        write_predictions(pixel_predictor(batch_size=1), frames, out, rle=tmp_path / "s.csv")
    names = sorted(p.name for p in out.iterdir())
    assert "2_mask.png" not in names and "3_mask.png" not in names
    assert not [n for n in names if n.startswith(".") and n != OUTPUT_MARKER]  # no temp files
    assert not (tmp_path / "s.csv").exists()                      # no half submission
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".s.csv")]
    for n in names:                                               # what exists is complete
        if n in (OUTPUT_MARKER, "predictions.csv", "predictions.settings.json"):
            continue
        assert read(out / n).shape == (8, 8)


def test_output_folder_that_cannot_be_created_is_a_user_error(tmp_path):
    save(tmp_path / "in" / "a.png", ramp(4, 4))
    (tmp_path / "file").write_text("x")
    with pytest.raises(UltrasegError, match="output folder"):
        write_predictions(pixel_predictor(), collect_frames([tmp_path / "in"]),
                          tmp_path / "file" / "out")


def test_streaming_holds_at_most_one_batch_of_frames(tmp_path):
    for i in range(7):
        save(tmp_path / "in" / f"{i}.png", ramp(6, 9, i))
    frames = collect_frames([tmp_path / "in"])
    loaded = 0
    peak = 0

    def counting():
        nonlocal loaded
        for f in frames:
            loaded += 1
            yield f

    done = 0
    for frame, image, prob in iter_probabilities(pixel_predictor(batch_size=3), counting()):
        done += 1
        peak = max(peak, loaded - done)
        assert prob.shape == image.shape
    assert done == 7 and peak <= 3


def test_encode_mask_rejects_unknown_format():
    with pytest.raises(UltrasegError, match="png, tif"):
        encode_mask(np.zeros((2, 2), bool), "jpg")


def _zlib_level(png: bytes) -> int:
    """The compression level class a PNG's zlib stream names (FLEVEL of its header): 0 the
    fastest, 1 fast (levels 2 to 5), 2 the default (6), 3 the smallest (7 to 9)."""
    import struct

    at = 8
    while at < len(png):
        length, kind = struct.unpack(">I4s", png[at:at + 8])
        if kind == b"IDAT":
            return png[at + 9] >> 6        # the stream's second byte (FLG)
        at += 12 + length
    raise AssertionError("no IDAT chunk")


def test_overlays_are_encoded_at_a_fast_level_masks_and_maps_at_the_default():
    """An overlay PNG at zlib's default level 6 was 2.3-2.9 times slower to write than at
    level 3, for a file of about the same size: overlays are written at 3, the same pixels.
    Masks (small, fast either way) and probability maps keep the default."""
    import io

    from ultraseg.frame_outputs import encode_png
    from ultraseg.predict_files import encode_probabilities

    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)
    rgb[10:30, 10:40] = (255, 0, 0)
    overlay = encode_png(rgb)
    assert _zlib_level(overlay) == 1
    decoded = Image.open(io.BytesIO(overlay))
    assert decoded.mode == "RGB"
    assert np.array_equal(np.asarray(decoded), rgb)
    assert _zlib_level(encode_mask(rgb[..., 0] > 128)) == 2
    assert _zlib_level(encode_probabilities(rng.random((40, 50)))) == 2


# ------------------------------------------------------------------------ measure
def hc18_like(root: Path) -> None:
    """Two HC18-style frames (outline annotations) and the pixel-size / HC table for one."""
    folder = root / "training_set"
    for name, (cy, cx, a, b) in {"001_HC": (20, 30, 12, 8), "002_HC": (25, 25, 9, 9)}.items():
        yy, xx = np.mgrid[:48, :64]
        inside = ((xx - cx) / a) ** 2 + ((yy - cy) / b) ** 2 <= 1
        save(folder / f"{name}.png", np.where(inside, 200, 30).astype(np.uint8))
        edge = inside & ~np.pad(inside, 1)[2:, 1:-1] | inside & ~np.pad(inside, 1)[:-2, 1:-1] \
            | inside & ~np.pad(inside, 1)[1:-1, 2:] | inside & ~np.pad(inside, 1)[1:-1, :-2]
        save(folder / f"{name}_Annotation.png", np.where(edge, 255, 0).astype(np.uint8))
    (root / "training_set_pixel_size_and_HC.csv").write_text(
        "filename,pixel size(mm),head circumference (mm)\n001_HC.png,0.5,30.0\n")


def test_measuring_the_frames_a_model_trained_on_is_warned_about(tmp_path) -> None:
    """measure averaged the head-circumference error over every frame given, training frames
    too, without a word (a reviewer's HC18 run: 265 of 371 frames measured were training
    frames), where evaluate warns. It now says how many frames are of the training data and
    what gives the error on held-out frames; frames without a reference, or of other data,
    are measured as ever, without the check."""
    from dataclasses import replace

    from conftest import ultraseg_warnings

    hc18_like(tmp_path / "hc")
    bright = Predictor(lambda b: (b > 0.5).astype(np.float32), ModelConfig("same", depth=2),
                       PreprocessConfig(size=None, normalise="unit"), PostprocessConfig(),
                       {"run": {"data": {"path": str(tmp_path / "hc")}}})
    with ultraseg_warnings() as warned:
        summary, _ = measure_frames(bright, tmp_path / "hc")
    said = [r.getMessage() for r in warned if "trained on" in r.getMessage()]
    assert summary["n"] == 2 and len(said) == 1, said
    assert said[0].startswith(f"2 of the 2 frames measured are frames of {tmp_path / 'hc'}")
    assert "--subset test" in said[0]
    hc18_like(tmp_path / "other")                     # the same files elsewhere: not its data
    with ultraseg_warnings() as warned:
        measure_frames(bright, tmp_path / "other")
    assert not [r for r in warned if "trained on" in r.getMessage()]
    # the run's split.json beside the model tells the frames that trained from held-out ones
    # (a frame held out for testing, measured alone, was called a training frame)
    run = tmp_path / "run"
    run.mkdir()
    (run / "split.json").write_text(json.dumps({"train": ["001_HC"], "val": [],
                                                "test": ["002_HC"]}))
    in_run = replace(bright, source=str(run / "best.ckpt"))
    for frames, trained in (([tmp_path / "hc"], 1),
                            ([tmp_path / "hc" / "training_set" / "002_HC.png"], 0)):
        with ultraseg_warnings() as warned:
            measure_frames(in_run, frames)
        said = [r.getMessage() for r in warned if "trained on" in r.getMessage()]
        assert len(said) == (1 if trained else 0), said
        if trained:
            assert said[0].startswith("1 of the 2 frames measured are frames the model was "
                                      "trained on (its split")


def test_write_and_measure_take_paths_as_evaluate_does(tmp_path):
    """write_predictions(predictor, "folder", out) and a model's path were AttributeErrors
    (after an empty output folder was made); evaluate takes both."""
    from ultraseg.checkpoint import make_meta, save_checkpoint
    from ultraseg.config import ModelConfig, PostprocessConfig, PreprocessConfig
    from ultraseg.model import build_model

    save(tmp_path / "in" / "a.png", ramp(16, 16))
    save(tmp_path / "in" / "b.png", ramp(16, 16, 1))
    cfg = ModelConfig(variant="same", width=2, depth=2)
    ckpt = tmp_path / "m.ckpt"
    save_checkpoint(ckpt, build_model(cfg).state_dict(),
                    make_meta(cfg, PreprocessConfig(size=16), PostprocessConfig()))
    for frames in (tmp_path / "in", str(tmp_path / "in"),
                   [tmp_path / "in" / "a.png", tmp_path / "in" / "b.png"]):
        summary = write_predictions(str(ckpt), frames, tmp_path / "o")
        assert summary.n == 2
        _, rows = measure_frames(ckpt, frames)
        assert [r["name"] for r in rows] == ["a", "b"]
    with pytest.raises(UltrasegError, match="expected frames"):
        write_predictions(pixel_predictor(), [1, 2], tmp_path / "never")
    with pytest.raises(UltrasegError, match="expected a Predictor"):
        measure_frames(42, tmp_path / "in")
    assert not (tmp_path / "never").exists()


def test_write_and_measure_take_paths_in_any_iterable_as_collect_frames_does(tmp_path):
    """Paths in a generator, a set or dict keys were refused: 'expected frames
    (ultraseg.collect_frames(PATHS)) or image paths, got PosixPath', naming a path as what it
    takes while refusing one; collect_frames took the same generator."""
    paths = [save(tmp_path / "in" / "a.png", ramp(16, 16)),
             save(tmp_path / "in" / "b.png", ramp(16, 16, 1))]
    for k, make in enumerate((lambda: (p for p in paths), lambda: set(paths),
                              lambda: dict.fromkeys(paths).keys())):
        assert write_predictions(pixel_predictor(), make(), tmp_path / f"o{k}").n == 2
        _, rows = measure_frames(pixel_predictor(), make())
        assert sorted(r["name"] for r in rows) == ["a", "b"]
    frames = collect_frames(paths)
    assert write_predictions(pixel_predictor(), iter(frames), tmp_path / "f").n == 2
    with pytest.raises(UltrasegError, match="expected frames") as e:  # a mixture stays refused
        write_predictions(pixel_predictor(), iter([frames[0], paths[1]]), tmp_path / "never")
    assert "got PosixPath" not in str(e.value) and "1 frame and 1 path" in str(e.value)
    assert not (tmp_path / "never").exists()


def test_measure_overlays_draw_the_outline_and_the_ellipse_measured(tmp_path):
    """The fitted ellipse was numbers only: nothing to check a head circumference by eye."""
    from ultraseg.report import ELLIPSE_COLOR, PRED_COLOR

    hc18_like(tmp_path / "hc")
    frames = collect_frames([tmp_path / "hc"])
    with pytest.raises(UltrasegError, match="need an output folder"):
        measure_frames(pixel_predictor(), frames, overlay=True)
    _, rows = measure_frames(pixel_predictor(), frames, out=tmp_path / "m", overlay=True)
    for row in rows:
        rgb = np.asarray(Image.open(tmp_path / "m" / f"{row['name']}_measure.png"))
        assert rgb.shape == (48, 64, 3)
        on = np.all(rgb == ELLIPSE_COLOR, axis=-1)
        assert (np.all(rgb == PRED_COLOR, axis=-1) | on).sum() > 20
        yy, xx = np.nonzero(on)          # the green pixels lie on the ellipse of the row
        t = np.radians(row["ellipse_angle_deg"])
        u = (xx - row["ellipse_cx"]) * np.cos(t) + (yy - row["ellipse_cy"]) * np.sin(t)
        v = -(xx - row["ellipse_cx"]) * np.sin(t) + (yy - row["ellipse_cy"]) * np.cos(t)
        r = np.sqrt((u / row["ellipse_a_px"]) ** 2 + (v / row["ellipse_b_px"]) ** 2)
        assert on.sum() > 30 and np.abs(r - 1).max() < 0.12


def test_measure_overlay_outlines_the_object_measured_alone(tmp_path):
    """The overlay outlined the whole mask (every stray region, every hole) where the figures
    are of the largest region with its holes filled: which one was measured could not be seen."""
    from ultraseg.metrics import outline
    from ultraseg.report import PRED_COLOR

    yy, xx = np.mgrid[:64, :64]
    image = np.zeros((64, 64), np.uint8)
    r2 = (yy - 30) ** 2 + (xx - 30) ** 2
    image[r2 <= 15 ** 2] = 200                   # the object, with a hole the fit fills
    image[r2 <= 4 ** 2] = 0
    image[52:58, 2:8] = 200                      # a stray region, not measured
    save(tmp_path / "in" / "two.png", image)
    measure_frames(pixel_predictor(), collect_frames([tmp_path / "in" / "two.png"]),
                   out=tmp_path / "m", overlay=True)
    rgb = read(tmp_path / "m" / "two_measure.png")
    drawn = np.all(rgb == PRED_COLOR, axis=-1)
    measured = outline(r2 <= 15 ** 2, 1)
    assert drawn.sum() > 30
    assert not (drawn & ~measured).any()         # nothing on the stray region or the hole


def test_one_hc18_frame_named_alone_keeps_its_tables_row(tmp_path):
    """`measure MODEL hc18/training_set/001_HC.png` gave px, the table beside it unread, where
    the folder gave mm and the reference."""
    hc18_like(tmp_path / "hc")
    one = tmp_path / "hc" / "training_set" / "001_HC.png"
    (frame,) = collect_frames([one])
    assert frame.sample.meta == {"pixel_size_mm": 0.5, "hc_mm": 30.0}
    (row,) = measure_frames(pixel_predictor(), [one])[1]
    assert row["pixel_size_mm"] == 0.5 and row["hc_ref_mm"] == 30.0
    assert row["hc_error_mm"] == pytest.approx(row["hc_mm"] - 30.0)
    (frame,) = collect_frames([tmp_path / "hc" / "training_set" / "002_HC.png"])
    assert frame.sample.meta == {}                           # no row: none
    save(tmp_path / "elsewhere" / "001_HC.png", ramp(8, 8))
    assert collect_frames([tmp_path / "elsewhere" / "001_HC.png"])[0].sample.meta == {}



def test_files_named_one_by_one_read_their_folders_table_once(tmp_path, monkeypatch):
    """`predict MODEL scans/*.png` looked for a table (a glob of the whole folder) once per
    file: 4000 files took 12 s before the first prediction, growing with the square."""
    from ultraseg.io.hc18 import Hc18Reader

    hc18_like(tmp_path / "hc")
    for i in range(5):
        save(tmp_path / "scans" / f"{i}.png", ramp(4, 4, i))
    looked: list[Path] = []
    real = Hc18Reader.folder_table.__func__

    def counting(cls, folder):
        looked.append(folder)
        return real(cls, folder)

    monkeypatch.setattr(Hc18Reader, "folder_table", classmethod(counting))
    frames = collect_frames(sorted((tmp_path / "scans").iterdir())
                            + sorted((tmp_path / "hc" / "training_set").glob("*_HC.png")))
    assert len(frames) == 7 and frames[-2].sample.meta["pixel_size_mm"] == 0.5
    assert looked == [tmp_path / "scans", tmp_path / "hc" / "training_set"]


def test_measure_frames_reads_pixel_size_and_reference_and_writes_csv(tmp_path):
    hc18_like(tmp_path / "hc")
    frames = collect_frames([tmp_path / "hc"])
    summary, rows = measure_frames(pixel_predictor(), frames, pixel_size_mm=None,
                                   out=tmp_path / "m")
    first, second = rows
    assert first["name"] == "001_HC" and first["pixel_size_mm"] == 0.5
    assert first["hc_ref_mm"] == 30.0
    assert first["hc_mm"] == pytest.approx(first["hc_px"] * 0.5)
    assert first["hc_error_mm"] == pytest.approx(first["hc_mm"] - 30.0)
    # the 24 x 16 px ellipse: circumference ~ 63.8 px (Ramanujan), measured within a few px
    assert first["hc_px"] == pytest.approx(63.8, abs=4)
    assert first["major_axis_mm"] == pytest.approx(2 * first["ellipse_a_px"] * 0.5)
    assert first["minor_axis_mm"] == pytest.approx(2 * first["ellipse_b_px"] * 0.5)
    assert second["pixel_size_mm"] is None and second["hc_mm"] is None
    assert summary["n"] == 2 and summary["n_with_reference"] == 1
    assert summary["n_reference_missed"] == 0
    assert summary["hc_mae_mm"] == pytest.approx(abs(first["hc_error_mm"]))
    with open(tmp_path / "m" / "measurements.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert [r["name"] for r in table] == ["001_HC", "002_HC"]
    assert float(table[0]["hc_ref_mm"]) == 30.0 and table[1]["hc_mm"] == ""
    assert float(table[0]["major_axis_mm"]) == pytest.approx(first["major_axis_mm"], abs=1e-3)
    assert table[1]["minor_axis_mm"] == ""


def test_a_full_batch_is_predicted_before_the_next_frame_is_asked_for() -> None:
    """A live source (a probe, a camera) gets each batch's results as soon as the batch is
    full: the stream used to read one frame more first, and wait for it."""
    pulled: list[int] = []

    def frames():
        for i in range(5):
            pulled.append(i)
            yield np.full((8, 8), 40 * i, np.uint8)

    stream = pixel_predictor(batch_size=2).predict_proba_many(frames())
    next(stream)
    assert pulled == [0, 1]
    assert len(list(stream)) == 4 and pulled == [0, 1, 2, 3, 4]


def test_a_bool_array_is_predicted_as_its_black_and_white_frame() -> None:
    """np.asarray(Image.open(one_bit.png)) is bool: read as 0/255, as read_image reads the
    file, not as the grey levels 0 and 1 (an almost black frame)."""
    frame = np.zeros((24, 32), bool)
    frame[5:15, 8:20] = True
    predictor = pixel_predictor()
    np.testing.assert_array_equal(predictor.predict_proba(frame),
                                  predictor.predict_proba(frame.astype(np.uint8) * 255))
    assert predictor.predict(frame)[5:15, 8:20].all()


def test_measure_counts_the_references_whose_head_was_not_found(tmp_path, capsys):
    from ultraseg.cli_predict import format_measure_summary

    hc18_like(tmp_path / "hc")
    table = tmp_path / "hc" / "training_set_pixel_size_and_HC.csv"
    table.write_text(table.read_text() + "002_HC.png,0.5,28.0\n")
    Image.fromarray(np.full((48, 64), 30, np.uint8)).save(tmp_path / "hc" / "training_set" /
                                                           "002_HC.png")   # no head to find
    summary, rows = measure_frames(pixel_predictor(), collect_frames([tmp_path / "hc"]))
    assert [r["hc_mm"] is None for r in rows] == [False, True]
    assert summary["n_with_reference"] == 1 and summary["n_reference_missed"] == 1
    assert "1 frames with a reference HC had no head found" in format_measure_summary(summary)


def test_measure_frames_treats_the_cropped_band_as_the_frame_edge(tmp_path):
    """A predictor that crops uniform borders: a head reaching into the black band above the
    content is flagged as cut and fitted on its visible outline."""
    yy, xx = np.mgrid[:120, :160]
    head = ((xx - 80) / 45.0) ** 2 + ((yy - 40) / 30.0) ** 2 <= 1       # rows 10..70
    noise = np.random.default_rng(0).integers(0, 20, head.shape)
    frame = (np.where(head, 180, 60) + noise).astype(np.uint8)
    frame[:25] = 0                                                    # the band hides the top
    save(tmp_path / "f" / "head.png", frame)
    predictor = Predictor(lambda b: (b > 0.5).astype(np.float32),
                          ModelConfig(variant="same", depth=2),
                          PreprocessConfig(size=96, crop_border=True, normalise="unit"))
    _, (row,) = measure_frames(predictor, collect_frames([tmp_path / "f"]))
    assert row["touches_edge"] is True
    assert row["ellipse_cy"] == pytest.approx(40, abs=1.5)
    assert row["hc_px"] == pytest.approx(ellipse_circumference(45, 30), rel=0.03)


def test_measure_frames_pixel_size_fallback_and_boundary_offset(tmp_path):
    hc18_like(tmp_path / "hc")
    frames = collect_frames([tmp_path / "hc"])
    _, plain = measure_frames(pixel_predictor(), frames, pixel_size_mm=0.25)
    assert plain[0]["pixel_size_mm"] == 0.5          # the dataset's value wins
    assert plain[1]["pixel_size_mm"] == 0.25         # the fallback fills in
    shifted = pixel_predictor(meta={"measure": {"boundary_offset_px": 1.5}})
    summary, moved = measure_frames(shifted, frames)
    assert summary["boundary_offset_px"] == 1.5
    assert moved[0]["ellipse_a_px"] == pytest.approx(plain[0]["ellipse_a_px"] - 1.5)
    assert moved[0]["area_px"] == plain[0]["area_px"]
    with pytest.raises(UltrasegError, match="pixel-size"):
        measure_frames(pixel_predictor(), frames, pixel_size_mm=-1.0)


def _head_frame(scale: int) -> np.ndarray:
    """A 96 x 128 frame holding a bright head (semi-axes 40, 28 px), drawn at ``scale`` times
    its size: the same picture at twice the resolution for 2."""
    yy, xx = np.mgrid[:96 * scale, :128 * scale]
    u, v = (xx + 0.5) / scale - 0.5, (yy + 0.5) / scale - 0.5     # in the 1x frame's pixels
    inside = ((u - 63.5) / 40.0) ** 2 + ((v - 47.5) / 28.0) ** 2 <= 1
    return np.where(inside, 200, 30).astype(np.uint8)


def test_the_boundary_offset_scales_with_the_frame_measured(tmp_path):
    """A model's output is resized back to each frame, so the boundary it draws beyond the
    annotator's curve scales with the frame; the offset a checkpoint subtracts did not: the
    same head at twice the resolution (half the pixel size) measured 1.9 mm more with a 3 px
    offset (review measurement O3). A checkpoint that says at which frame side its offset
    holds (offset_frame_side_px) has it scaled by each frame's longer side; one that does
    not (before it) keeps its pixels, as it was read."""
    save(tmp_path / "one" / "head.png", _head_frame(1))
    save(tmp_path / "two" / "head.png", _head_frame(2))
    sigmoid = pixel_predictor().run_batch

    def predictor(meta):
        return Predictor(sigmoid, ModelConfig(variant="same", depth=2),
                         PreprocessConfig(size=64, normalise="unit"), meta=meta)

    scaled = predictor({"measure": {"boundary_offset_px": 3.0, "offset_frame_side_px": 128}})
    summary, (one,) = measure_frames(scaled, collect_frames([tmp_path / "one"]),
                                     pixel_size_mm=0.2)
    _, (two,) = measure_frames(scaled, collect_frames([tmp_path / "two"]), pixel_size_mm=0.1)
    assert one["hc_mm"] == pytest.approx(ellipse_circumference(37, 25) * 0.2, abs=0.3)
    assert two["hc_mm"] == pytest.approx(one["hc_mm"], abs=0.3)   # 1.9 mm apart before
    assert summary["boundary_offset_px"] == 3.0 and summary["offset_frame_side_px"] == 128
    # a checkpoint from before: the offset in the measured frame's own pixels, as it was read
    fixed = predictor({"measure": {"boundary_offset_px": 3.0}})
    plain = predictor({})
    _, (old,) = measure_frames(fixed, collect_frames([tmp_path / "two"]), pixel_size_mm=0.1)
    _, (none,) = measure_frames(plain, collect_frames([tmp_path / "two"]), pixel_size_mm=0.1)
    assert old["ellipse_a_px"] == pytest.approx(none["ellipse_a_px"] - 3.0)
    assert two["ellipse_a_px"] == pytest.approx(none["ellipse_a_px"] - 6.0)
    measure_frames(scaled, collect_frames([tmp_path / "two"]), pixel_size_mm=0.1,
                   out=tmp_path / "out")
    recorded = json.loads((tmp_path / "out" / "measurements.settings.json").read_text())
    assert recorded["boundary_offset_px"] == 3.0 and recorded["offset_frame_side_px"] == 128


def test_tta_follows_the_postprocessing_unless_set() -> None:
    # an asymmetric "network": the probability rises from left to right, so the flipped
    # frame's output, flipped back, falls: averaged, every pixel is 0.5
    def run(batch: np.ndarray) -> np.ndarray:
        w = batch.shape[-1]
        return np.broadcast_to(np.linspace(0.0, 1.0, w, dtype=np.float32), batch.shape).copy()

    base = Predictor(run, ModelConfig(variant="same", depth=2),
                     PreprocessConfig(size=None, normalise="unit"))
    image = np.zeros((4, 8), np.uint8)
    assert not base.uses_tta
    np.testing.assert_allclose(base.predict_proba(image)[0], np.linspace(0, 1, 8), atol=1e-6)
    chosen = base.with_options(postprocess=PostprocessConfig(tta=True))
    assert chosen.uses_tta
    np.testing.assert_allclose(chosen.predict_proba(image), 0.5, atol=1e-6)
    assert not chosen.with_options(tta=False).uses_tta
    np.testing.assert_allclose(chosen.with_options(tta=False).predict_proba(image)[0],
                               np.linspace(0, 1, 8), atol=1e-6)
    assert base.with_options(tta=True).uses_tta



@pytest.mark.parametrize("option", ["tta", "mirror"])
@pytest.mark.parametrize("value", ["false", 0, 1.0, "yes"])
def test_tta_and_mirror_are_true_or_false(option, value) -> None:
    """load(..., tta="false") (a value from an environment variable or a text config) was
    taken as on: it doubled the prediction time and changed the masks in silence;
    mirror="false" gave the mirrored pass alone. PostprocessConfig(tta="false") is refused,
    and so are these now."""
    base = Predictor(lambda b: b, ModelConfig(variant="same", depth=2), PreprocessConfig())
    with pytest.raises(UltrasegError, match=f"{option} must be true or false"):
        base.with_options(**{option: value})
    assert base.with_options(**{option: True}).uses_tta == (option == "tta")
    if option == "tta":
        assert base.with_options(tta=None).uses_tta is False        # the post-processing's


def test_predict_with_another_postprocessing_takes_its_tta_too() -> None:
    def run(batch: np.ndarray) -> np.ndarray:   # 0.3 .. 0.9 left to right: flipped, 0.6 flat
        w = batch.shape[-1]
        return np.broadcast_to(np.linspace(0.3, 0.9, w, dtype=np.float32), batch.shape).copy()

    p = Predictor(run, ModelConfig(variant="same", depth=2),
                  PreprocessConfig(size=None, normalise="unit"))
    image = np.zeros((4, 8), np.uint8)
    plain = p.predict(image, PostprocessConfig(threshold=0.55))
    assert plain[:, 0].sum() == 0 and plain[:, -1].all()      # the ramp, thresholded
    assert p.predict(image, PostprocessConfig(threshold=0.55, tta=True)).all()
    assert not p.with_options(tta=False).predict(
        image, PostprocessConfig(threshold=0.55, tta=True))[:, 0].any()   # set: it wins


def context_network(margin: int):
    """A "network" that sees its neighbours and is not mirror-symmetric: each output pixel
    mixes its input with the pixel to its left and a left-to-right ramp. ``margin`` > 0 makes
    it a valid network whose output is the input's central window."""
    def run(batch: np.ndarray) -> np.ndarray:
        h, w = batch.shape[-2:]
        left = np.roll(batch, 1, axis=-1)
        if margin:
            batch = batch[..., margin:h - margin, margin:w - margin]
            left = left[..., margin:h - margin, margin:w - margin]
        ramp = np.linspace(-1.0, 1.0, batch.shape[-1], dtype=np.float32)
        return (1.0 / (1.0 + np.exp(-(3 * batch - 2 * left + ramp)))).astype(np.float32)

    return run


@pytest.mark.parametrize("variant", ["same", "valid"])
@pytest.mark.parametrize("pre", [PreprocessConfig(size=48, normalise="unit"),
                                 PreprocessConfig(size=48, normalise="unit", pad_to_square=False),
                                 PreprocessConfig(size=48, normalise="unit", crop_border=True),
                                 PreprocessConfig(size=None, normalise="unit")],
                         ids=["pad", "squash", "crop", "native"])
def test_tta_from_the_plain_pass_needs_only_the_mirror_pass(variant, pre) -> None:
    # train's choice of post-processing averages its plain probabilities with a mirror pass
    # instead of running TTA's two passes: the same numbers, through every preprocessing
    from ultraseg.geometry import context_margin

    model = ModelConfig(variant=variant, depth=2)
    run = context_network(context_margin(2) if variant == "valid" else 0)
    plain = Predictor(run, model, pre, batch_size=2)
    frames = [ramp(30, 41, seed=1), ramp(30, 41, seed=2), ramp(37, 22, seed=3)]
    frames[0][:3] = frames[0][-2:] = 128                     # a uniform band for crop_border
    probs = list(plain.predict_proba_many(frames))
    mirrored = list(plain.with_options(mirror=True).predict_proba_many(frames))
    tta = list(plain.with_options(tta=True).predict_proba_many(frames))
    for p, m, t, got in zip(probs, mirrored, tta, plain.tta_from_plain(frames, probs)):
        assert p.shape == m.shape == t.shape == got.shape
        assert np.abs(p - m).max() > 0.05                    # the mirror pass is not the plain one
        np.testing.assert_allclose(got, t, atol=1e-5)
        np.testing.assert_allclose(0.5 * (p + m), t, atol=1e-5)


@pytest.mark.parametrize("options", [{"batch_size": 0}, {"batch_size": 2.5}, {"tile": 0},
                                     {"tile": -5}])
def test_a_predictor_refuses_a_batch_size_or_tile_below_one(options) -> None:
    with pytest.raises(UltrasegError, match=next(iter(options))):
        pixel_predictor(**options)
    with pytest.raises(UltrasegError):                      # with_options checks the same
        pixel_predictor().with_options(**options)


def test_a_channels_first_frame_is_a_user_error_that_says_so() -> None:
    with pytest.raises(UltrasegError, match="channels first"):
        pixel_predictor().predict(np.zeros((3, 20, 30), np.uint8))


def test_a_tile_is_kept_between_the_pooling_grid_and_the_canvas() -> None:
    """Tiles narrower than 2**depth cannot start on the pooling grid: --tile 1 or 4 gave a
    random depth-3 net's probabilities 0.3 away from one window's. Tiles beyond the canvas
    only computed padding (--tile 100000: a 37 GiB allocation). Both are rounded into range
    and give one window's values."""
    torch = pytest.importorskip("torch")
    from ultraseg.model import build_model
    from ultraseg.predict import min_prediction_tile, prediction_window
    from ultraseg.runtime import torch_runner

    model = ModelConfig(variant="valid", width=2, depth=3)
    torch.manual_seed(0)
    net = build_model(model).eval()
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0, 0.3)
    pred = Predictor(torch_runner(net, torch.device("cpu"), None), model,
                     PreprocessConfig(size=48, normalise="unit"), batch_size=4)
    frame = ramp(40, 52)
    one = pred.predict_proba(frame)
    assert min_prediction_tile(3) == 12
    assert prediction_window(model, 48, 48, 1) == (12, 12)
    assert prediction_window(model, 48, 48, 100_000) == prediction_window(model, 48, 48, 48)
    for tile in (1, 4, 100_000):
        np.testing.assert_allclose(pred.with_options(tile=tile).predict_proba(frame), one,
                                   atol=1e-5)


@pytest.mark.parametrize("depth, shape, window", [(4, (1024, 20), (516, 20)),
                                                  (2, (1030, 40), (516, 40)),
                                                  (2, (40, 1030), (40, 516))])
def test_a_side_over_the_window_cap_is_shared_by_equal_windows(depth, shape, window) -> None:
    """A canvas side just over the 1012-px cap was covered by two 1012-px windows, the second
    mostly mirror padding: a 1024 canvas at depth 4 fed 1196-px inputs where 700-px ones give
    the same values (about 2.9x the compute on a 1024 x 1024 canvas). The side is shared by
    the fewest windows under the cap, each as small as covers its share."""
    torch = pytest.importorskip("torch")
    from ultraseg.geometry import context_margin, nearest_valid_output
    from ultraseg.model import build_model
    from ultraseg.predict import prediction_tile, prediction_window
    from ultraseg.runtime import torch_runner
    from ultraseg.tiling import predict_tiled

    model = ModelConfig(variant="valid", width=2, depth=depth)
    torch.manual_seed(0)
    net = build_model(model).eval()
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0, 0.3)
    run = torch_runner(net, torch.device("cpu"), None)
    fed: list[tuple[int, ...]] = []

    def counted(batch: np.ndarray) -> np.ndarray:
        fed.append(batch.shape)
        return run(batch)

    pred = Predictor(counted, model, PreprocessConfig(size=None, normalise="unit"),
                     batch_size=4)
    canvas = np.random.default_rng(1).random(shape, dtype=np.float32)
    got = pred.proba_canvas(canvas[None])[0]
    m = context_margin(depth)
    assert prediction_window(model, *shape) == window
    # two windows, each holding over twice a training input's pixels (252 x 252 at depth 4):
    # one a call (inputs_per_call)
    assert fed == [(1, 1, window[0] + 2 * m, window[1] + 2 * m)] * 2
    # the values of one window over the canvas, and of the capped windows used before (to
    # float error: the random net's logits are large)
    whole = predict_tiled(run, canvas, tuple(nearest_valid_output(s, depth) for s in shape), m)
    capped = predict_tiled(run, canvas, tuple(nearest_valid_output(min(s, 1012), depth)
                                              for s in shape), m, align=2**depth)
    assert whole.std() > 0.01
    np.testing.assert_allclose(got, whole[0], atol=2e-4)
    np.testing.assert_allclose(got, capped[0], atol=2e-4)
    assert prediction_tile(model, *shape) == max(window)       # the square tile export takes
    if depth == 4:
        from ultraseg.export import export_tile

        assert export_tile(model, PreprocessConfig(size=1024)) == 516
        assert prediction_window(model, 2000, 2021) == (1012, 692)   # 2 and 3 windows a side
        assert prediction_window(model, 3000, 1012) == (1012, 1012)


def squashed_centre(margin: int):
    """A stand-in network (its input's centre, ``margin`` px of context cut off each side,
    squashed), the same counting each call's inputs into a list, and that list."""
    def run(batch: np.ndarray) -> np.ndarray:
        centre = batch[:, :, margin:batch.shape[2] - margin, margin:batch.shape[3] - margin]
        return (1.0 / (1.0 + np.exp(-40.0 * (centre - 0.5)))).astype(np.float32)

    fed: list[int] = []

    def counted(batch: np.ndarray) -> np.ndarray:
        fed.append(len(batch))
        return run(batch)

    return run, counted, fed


@pytest.mark.parametrize("batch_size, calls", [(4, [4, 4]), (3, [3, 3, 2]), (1, [1] * 8)])
def test_a_valid_model_batches_the_windows_of_several_frames(batch_size, calls) -> None:
    """A valid model tiled each canvas alone, so --batch-size never batched frames: 8 frames
    whose canvas takes one window made 8 calls of batch 1 where the 'same' model makes 2 of
    batch 4. The windows of every canvas in a flush are batched together, batch_size at a
    time, and give each frame's own map."""
    from ultraseg.geometry import context_margin

    run, counted, fed = squashed_centre(context_margin(2))
    model = ModelConfig(variant="valid", depth=2)
    pre = PreprocessConfig(size=32, normalise="unit")
    frames = [ramp(30 + i, 40, seed=i) for i in range(8)]
    pred = Predictor(counted, model, pre, batch_size=batch_size)
    got = list(pred.predict_proba_many(frames))
    assert fed == calls
    one = Predictor(run, model, pre, batch_size=1)
    for frame, p in zip(frames, got, strict=True):
        np.testing.assert_array_equal(p, one.predict_proba(frame))


def test_a_16_bit_array_is_scaled_as_its_file_is_read(tmp_path) -> None:
    """A uint16 scan with values 0..200 given as an array was kept as 8-bit values, while the
    same file through read_image (the CLI) was stretched to 0..255: the API and the CLI
    predicted different masks for one frame."""
    from ultraseg.io import read_image

    scan = (np.arange(24 * 32, dtype=np.uint16).reshape(24, 32) % 201)
    path = tmp_path / "scan.png"
    Image.fromarray(scan).save(path)
    pred = pixel_predictor()
    np.testing.assert_array_equal(pred.predict_proba(scan), pred.predict_proba(read_image(path)))
    eight = scan.astype(np.uint8)                      # 8 bits: as they are, as before
    np.testing.assert_array_equal(pred.predict_proba(eight),
                                  pred.predict_proba(np.asarray(Image.fromarray(eight))))
    # as predict_proba's docstring says: signed 8-bit within 0..127 as it is, wider stretched
    small = eight // 2
    np.testing.assert_array_equal(pred.predict_proba(small.astype(np.int8)),
                                  pred.predict_proba(small))
    assert not np.array_equal(pred.predict_proba(small.astype(np.int64)),
                              pred.predict_proba(small))


def test_a_float_file_and_its_array_predict_alike(tmp_path) -> None:
    """A float TIFF through read_image (the CLI) and the same values as an array (the API)
    were scaled apart (min..max against x 255) and predicted different masks."""
    from ultraseg.io import read_image

    scan = np.linspace(0.05, 0.6, 24 * 32, dtype=np.float32).reshape(24, 32)
    path = tmp_path / "scan.tif"
    Image.fromarray(scan).save(path)
    pred = pixel_predictor()
    np.testing.assert_array_equal(pred.predict_proba(scan), pred.predict_proba(read_image(path)))


def test_a_pillow_image_predicts_as_its_file_does(tmp_path) -> None:
    """A PIL image given to predict went through np.asarray: a palette image's indices (dark,
    their order reversed) were taken for greys, and CMYK's four channels for RGBA, inverted.
    It is read by read_image's rules now."""
    from ultraseg.io import read_image

    xx = np.tile(np.arange(32) * 8, (24, 1)).astype(np.uint8)
    pred = pixel_predictor()
    Image.fromarray(xx).quantize(16).save(tmp_path / "pal.png")
    Image.fromarray(np.stack([xx] * 3, axis=-1)).convert("CMYK").save(tmp_path / "c.tif")
    for name in ("pal.png", "c.tif"):
        with Image.open(tmp_path / name) as im:
            assert im.mode in ("P", "CMYK")
            np.testing.assert_array_equal(pred.predict_proba(im),
                                          pred.predict_proba(read_image(tmp_path / name)))
            assert len(list(pred.predict_proba_many([im, im]))) == 2


def test_skip_unreadable_writes_the_other_frames_and_names_the_bad_ones(tmp_path):
    """One corrupt frame in 500 stopped the whole run at it; with skip_unreadable (what the
    CLI asks for) the others are written and the bad ones named; the submission, which
    would lack rows, is not written."""
    save(tmp_path / "in" / "1.png", ramp(8, 8))
    (tmp_path / "in" / "2.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    save(tmp_path / "in" / "3.png", ramp(8, 8, 1))
    (tmp_path / "in" / "4.png").write_bytes(b"")             # the last frame, too
    frames = collect_frames([tmp_path / "in"])
    out = tmp_path / "out"
    seen: list[tuple[int, int]] = []
    summary = write_predictions(pixel_predictor(batch_size=2), frames, out,
                                rle=tmp_path / "s.csv", skip_unreadable=True,
                                progress=lambda done, total: seen.append((done, total)))
    assert summary.n == 2 and [m.name for m in summary.masks] == ["1_mask.png", "3_mask.png"]
    assert [Path(e.path).name for e in summary.failed] == ["2.png", "4.png"]
    assert summary.rle is None and not (tmp_path / "s.csv").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".s.csv")]
    assert seen[-1] == (4, 4)                                 # the bar reaches its end
    for name in ("1", "3"):
        expect = pixel_predictor().predict(read(tmp_path / "in" / f"{name}.png"))
        np.testing.assert_array_equal(read(out / f"{name}_mask.png") == 255, expect)


@pytest.mark.parametrize("skip", [True, False])
def test_a_truth_mask_that_cannot_be_read_leaves_its_frame_predicted_without_truth(tmp_path,
                                                                                  skip):
    """A truth mask of the wrong size (or a coloured one) skipped its frame: on a folder of
    such masks, predict --overlay wrote nothing ('8 of 8 frames could not be read'), where
    without --overlay it predicted all. The image was readable; only the optional truth was
    not: one warning counts and names them."""
    from conftest import ultraseg_warnings

    root = tmp_path / "d"
    for name in ("1_1", "1_2", "1_3"):
        save(root / "images" / f"{name}.png", ramp(8, 8))
        save(root / "masks" / f"{name}_mask.png", np.zeros((8, 8), np.uint8))
    for name in ("1_2", "1_3"):
        save(root / "masks" / f"{name}_mask.png", np.zeros((6, 8), np.uint8))   # wrong size
    with ultraseg_warnings() as warned:
        summary = write_predictions(pixel_predictor(), collect_frames([root]),
                                    tmp_path / "out", overlay=True, skip_unreadable=skip)
    assert summary.n == 3 and not summary.failed
    assert [o.name for o in summary.overlays] == [f"1_{k}_overlay.png" for k in (1, 2, 3)]
    said = [r.getMessage() for r in warned if "truth" in r.getMessage()]
    assert len(said) == 1 and said[0].startswith("2 ground-truth masks could not be read")
    assert "1_2_mask.png" in said[0] and "1_3_mask.png" in said[0]
    with open(tmp_path / "out" / "predictions.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert [r["status"] for r in table] == ["ok"] * 3
    assert table[0]["reason"] == "" and "1_2_mask.png" in table[1]["reason"]


def test_measure_frames_skipping_unreadable_frames_names_them(tmp_path):
    save(tmp_path / "in" / "1.png", ramp(8, 8))
    (tmp_path / "in" / "2.png").write_bytes(b"")
    summary, rows = measure_frames(pixel_predictor(), collect_frames([tmp_path / "in"]),
                                   out=tmp_path / "m", skip_unreadable=True)
    failed = summary["unreadable"]
    assert [r["name"] for r in rows] == ["1"] and summary["n"] == 1
    assert summary["n_unreadable"] == 1 and "2.png" in str(failed[0])
    with open(tmp_path / "m" / "measurements.csv", newline="") as f:
        table = list(csv.DictReader(f))
    # the skipped frame is in the table too, with its error: the table counts the folder
    assert [(r["name"], r["area_px"] != "") for r in table] == [("1", True), ("2", False)]
    assert table[0]["error"] == "" and "2.png" in table[1]["error"]
    assert table[1]["image"] == str(tmp_path / "in" / "2.png")
    with pytest.raises(DataError, match=r"2\.png"):                # without the list: stops
        measure_frames(pixel_predictor(), collect_frames([tmp_path / "in"]))


def _stopping_predictor(after: int, seen: list | None = None, stale: Path | None = None
                        ) -> Predictor:
    """pixel_predictor(batch_size=1) whose network is stopped (Ctrl-C) at its call
    ``after`` + 1; ``seen`` gets, at each call, the text of ``stale`` (None: not there)."""
    calls = []

    def run(batch: np.ndarray) -> np.ndarray:
        calls.append(1)
        if seen is not None and stale is not None:
            seen.append(stale.read_text() if stale.exists() else None)
        if len(calls) > after:
            raise KeyboardInterrupt
        return (1.0 / (1.0 + np.exp(-40.0 * (batch - 0.5)))).astype(np.float32)

    return Predictor(run, ModelConfig(variant="same", depth=2),
                     PreprocessConfig(size=None, normalise="unit"), batch_size=1)


def test_an_interrupted_measure_writes_the_rows_measured_so_far(tmp_path):
    """Ctrl-C (or SIGTERM) after 161 frames left 161 overlays and no measurements.csv; an
    earlier run's table in that folder stayed beside the new overlays."""
    from conftest import ultraseg_warnings

    for k in range(4):
        save(tmp_path / "in" / f"{k}.png", ramp(8, 8, k))
    out = tmp_path / "m"
    measure_frames(pixel_predictor(), collect_frames([tmp_path / "in"]), out=out)
    earlier = (out / "measurements.csv").read_text()
    seen: list[str | None] = []
    with ultraseg_warnings() as warned, pytest.raises(KeyboardInterrupt):
        measure_frames(_stopping_predictor(2, seen, out / "measurements.csv"),
                       collect_frames([tmp_path / "in"]), out=out, overlay=True,
                       skip_unreadable=True)
    # the earlier run's table is gone before a frame: at the network's call k (from 0) this
    # run's table holds its header and the k rows made before (it grows row by row)
    assert seen and earlier not in seen
    assert [text.count("\n") if text else 0 for text in seen] == [1, 2, 3]
    with open(out / "measurements.csv", newline="") as f:
        assert [r["name"] for r in csv.DictReader(f)] == ["0", "1"]
    assert sorted(p.name for p in out.glob("*_measure.png")) == ["0_measure.png",
                                                                 "1_measure.png"]
    assert any("measured 2 of 4 frames, interrupted" in r.getMessage() for r in warned)
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]


def test_an_interrupted_predict_says_how_many_frames_it_wrote_and_lists_them(tmp_path):
    from conftest import ultraseg_warnings

    for k in range(3):
        save(tmp_path / "in" / f"{k}.png", ramp(8, 8, k))
    out = tmp_path / "o"
    with ultraseg_warnings() as warned, pytest.raises(KeyboardInterrupt):
        write_predictions(_stopping_predictor(1), collect_frames([tmp_path / "in"]), out,
                          skip_unreadable=True)
    assert any("wrote 1 of 3 frames, interrupted" in r.getMessage() for r in warned)
    with open(out / "predictions.csv", newline="") as f:
        assert [(r["name"], r["status"]) for r in csv.DictReader(f)] == [("0", "ok")]


def test_temporary_files_a_killed_run_left_are_removed_by_the_next(tmp_path):
    """kill -9 during --rle (the OOM killer, preemption) left .sub.csv.XXXX.tmp, growing
    with the run, that no rerun removed; a killed mask or table write alike."""
    import os
    import time

    save(tmp_path / "in" / "a.png", ramp(6, 6))
    save(tmp_path / "in" / "p" / "x.png", ramp(6, 6))     # (the names collide: the masks
    save(tmp_path / "in" / "q" / "x.png", ramp(6, 6))     # go in OUT/p/ and OUT/q/)
    out, subs = tmp_path / "o", tmp_path / "subs"
    (out / "p").mkdir(parents=True)
    subs.mkdir()
    left = [out / ".predictions.csv.k3j2l1zz.tmp", out / "p" / ".x_mask.png.ab12cd34.tmp",
            out / ".measurements.csv.q9w8e7r6.tmp", out / ".s.csv.5s2g0vxk.tmp"]
    old = subs / ".s.csv.oldoldol.tmp"      # outside --out: a day untouched is a dead writer's
    live = subs / ".s.csv.livelive.tmp"     # (another run's, writing now)
    mine = out / ".notes.txt.tmp"           # no name of ours
    for p in [*left, old, live, mine]:
        p.write_text("x")
    day_ago = time.time() - 2 * 86400
    os.utime(old, (day_ago, day_ago))
    write_predictions(pixel_predictor(), collect_frames([tmp_path / "in"]), out,
                      rle=out / "s.csv")
    assert not any(p.exists() for p in left[:2] + left[3:])
    measure_frames(pixel_predictor(), collect_frames([tmp_path / "in"]), out=out)
    assert not left[2].exists() and mine.exists()
    write_predictions(pixel_predictor(), collect_frames([tmp_path / "in"]), tmp_path / "o2",
                      rle=subs / "s.csv")
    assert not old.exists() and live.exists()


def test_temporary_files_are_removed_only_where_the_run_writes(tmp_path):
    """The clean-up ran before --out was checked, and through every folder below it: a
    refused --out (it holds the user's images) still lost matching dot-files anywhere below
    it, and a subfolder that is another command's output folder lost its writer's temporary
    files (that command then failed at its rename)."""
    save(tmp_path / "in" / "a.png", ramp(6, 6))
    user = tmp_path / "user"
    save(user / "imgs" / "1_1.png", ramp(6, 6))
    (user / "notes").mkdir()
    budget = user / "notes" / ".budget.csv.k3j2.tmp"
    budget.write_text("x")
    with pytest.raises(DataError, match="already holds 1 image file"):
        write_predictions(pixel_predictor(), collect_frames([tmp_path / "in"]), user)
    assert budget.exists()
    res = tmp_path / "res"
    (res / "siteB").mkdir(parents=True)
    (res / "siteB" / OUTPUT_MARKER).write_text("written by ultraseg predict/measure\n")
    (res / "other").mkdir()
    theirs = [res / "siteB" / ".1_9_mask.png.ab12.tmp", res / "other" / ".x_mask.png.cd34.tmp"]
    for p in theirs:
        p.write_text("x")
    mine = res / ".a_mask.png.ef56.tmp"
    mine.write_text("x")
    write_predictions(pixel_predictor(), collect_frames([tmp_path / "in"]), res)
    assert not mine.exists() and all(p.exists() for p in theirs)
    measure_frames(pixel_predictor(), collect_frames([tmp_path / "in"]), out=res)
    assert all(p.exists() for p in theirs)


def test_a_subfolder_of_out_that_links_outside_it_is_refused(tmp_path):
    """A subfolder of --out linked to another command's output folder lost that command's
    temporary file (its write in progress) and got this run's masks, where the same folder
    unlinked is left alone: the guard compared the link's path, not where it leads (a
    security review, D3). A link that stays inside --out is written through."""
    save(tmp_path / "in" / "a" / "x.png", ramp(6, 6))     # (the names collide: the masks
    save(tmp_path / "in" / "b" / "x.png", ramp(6, 6))     # go in OUT/a/ and OUT/b/)
    victim, out = tmp_path / "victim", tmp_path / "o"
    victim.mkdir()
    out.mkdir()
    (victim / OUTPUT_MARKER).write_text("written by ultraseg predict/measure\n")
    inflight = victim / ".x_mask.png.zz9.tmp"
    inflight.write_text("x")
    (out / "a").symlink_to(Path("..") / "victim")
    frames = collect_frames([tmp_path / "in"])
    for run in (lambda: write_predictions(pixel_predictor(), frames, out),
                lambda: measure_frames(pixel_predictor(), frames, out=out)):
        with pytest.raises(UltrasegError, match="links outside the output folder") as e:
            run()
        assert str(out / "a") in str(e.value) and str(victim) in str(e.value)
        assert sorted(p.name for p in victim.iterdir()) == [OUTPUT_MARKER, inflight.name]
    (out / "a").unlink()
    (out / "mine").mkdir()
    (out / "a").symlink_to("mine")                       # inside --out: written through
    write_predictions(pixel_predictor(), frames, out)
    assert (out / "mine" / "x_mask.png").is_file() and (out / "b" / "x_mask.png").is_file()


@pytest.mark.parametrize("pp, words", [
    (lambda: PostprocessConfig(threshold=50), "postprocess.threshold must lie in [0, 1], got 50"),
    (lambda: PostprocessConfig(min_area=-3), "postprocess.min_area must be >= 0, got -3"),
    (lambda: {"threshold": 0.3}, "postprocess must be a PostprocessConfig"),
])
def test_post_processing_given_in_python_is_checked_as_on_the_command_line(tmp_path, pp, words):
    """A threshold of 50 set in Python emptied every mask without a word (the CLI refuses
    --threshold 50); a string threshold or a dict ended in numpy's or Python's tracebacks.
    (A value out of range is refused as the PostprocessConfig is built.)"""
    save(tmp_path / "in" / "a.png", ramp(8, 8))
    for attempt in (lambda: pixel_predictor(postprocess=pp()),
                    lambda: pixel_predictor().with_options(postprocess=pp()),
                    lambda: pixel_predictor().predict(ramp(8, 8), pp())):
        with pytest.raises(UltrasegError) as e:
            attempt()
        assert words in str(e.value)


def test_a_post_processing_value_of_the_wrong_type_is_refused_when_it_is_built():
    """A string threshold ended in numpy's traceback; it is refused as the config is built,
    before any predictor sees it."""
    with pytest.raises(UltrasegError, match="postprocess.threshold must be a number; got '0.3'"):
        PostprocessConfig(threshold="0.3")  # type: ignore[arg-type]


def test_numpy_numbers_are_taken_for_the_python_ones(tmp_path):
    """A sweep over np.arange gave 'batch_size must be a whole number >= 1, got
    np.int64(8)' and 'train.epochs must be a whole number; got np.int64(5)'."""
    import json

    from ultraseg.config import TrainConfig, merge, preset

    assert pixel_predictor(batch_size=np.int64(2)).batch_size == 2
    cfg = merge(preset("demo"), {"train": {"epochs": np.int64(5), "lr": np.float64(1e-3),
                                           "affine_scale": (np.float64(0.9), 1.1)}})
    assert (cfg.train.epochs, cfg.train.lr, cfg.train.affine_scale) == (5, 1e-3, (0.9, 1.1))
    assert type(cfg.train.epochs) is int and type(cfg.train.affine_scale[0]) is float
    assert type(TrainConfig(epochs=np.int64(3), batch_dice=np.bool_(True)).batch_dice) is bool
    json.dumps(cfg.to_dict())                               # JSON takes them as they now are


def test_a_skipped_frame_outside_the_submission_leaves_the_submission_whole(tmp_path):
    """Of a Kaggle folder, the submission holds the test frames alone: an unreadable
    training frame cost the whole submission. Only a skipped frame that belongs in it does."""
    root = tmp_path / "kg"
    save(root / "train" / "1_1.tif", ramp(8, 8))
    save(root / "train" / "1_1_mask.tif", np.zeros((8, 8), np.uint8))
    (root / "train" / "1_2.tif").write_bytes(b"")
    save(root / "train" / "1_2_mask.tif", np.zeros((8, 8), np.uint8))
    save(root / "test" / "1.tif", ramp(8, 8, 1))
    frames = collect_frames([root])
    summary = write_predictions(pixel_predictor(), frames, tmp_path / "out",
                                rle=tmp_path / "s.csv", skip_unreadable=True)
    assert [Path(e.path).name for e in summary.failed] == ["1_2.tif"]
    assert summary.rle == tmp_path / "s.csv"
    with open(tmp_path / "s.csv", newline="") as f:
        assert [r["img"] for r in csv.DictReader(f)] == ["1"]
    (root / "test" / "1.tif").write_bytes(b"")               # now one of the submission's
    summary = write_predictions(pixel_predictor(), collect_frames([root]), tmp_path / "out",
                                rle=tmp_path / "s.csv", skip_unreadable=True)
    assert summary.rle is None


def test_collect_frames_takes_one_path_as_it_is(tmp_path):
    """collect_frames("in") walked the string's characters ('i: no such file or folder'),
    and an absolute path scanned '/' first; a Path raised 'not iterable'."""
    save(tmp_path / "in" / "a.png", ramp(4, 4))
    for given in (str(tmp_path / "in"), tmp_path / "in"):
        assert [f.out_name for f in collect_frames(given)] == ["a"]


@pytest.mark.parametrize("call", ["predict", "predict_proba"])
def test_a_path_given_for_a_frame_says_how_to_read_it(tmp_path, call):
    """predictor.predict("frame.png") said 'expected a 2D image, got an array of shape ()'."""
    p = save(tmp_path / "frame.png", ramp(8, 8))
    for given in (str(p), p):
        with pytest.raises(UltrasegError, match=r"got the path .*frame\.png.*read_image"):
            getattr(pixel_predictor(), call)(given)


def test_load_takes_a_post_processing_and_names_unknown_options(tmp_path):
    """load(path, postprocess=...) raised TypeError (multiple values for 'postprocess'), and
    an unknown option a raw TypeError, where its docstring offered the Predictor's fields."""
    from test_cli_predict import make_checkpoint

    from ultraseg.config import PostprocessConfig
    from ultraseg.predict import load

    ckpt = make_checkpoint(tmp_path / "m.ckpt")
    mine = PostprocessConfig(threshold=0.3, keep_largest=True)
    predictor = load(ckpt, device="cpu", precision="fp32", postprocess=mine, batch_size=2)
    assert predictor.postprocess == mine and predictor.batch_size == 2
    assert load(ckpt, device="cpu").postprocess != mine          # the checkpoint's own
    with pytest.raises(UltrasegError, match="unknown predictor option.*foo.*valid: batch_size"):
        load(ckpt, foo=1)
    pytest.importorskip("onnxruntime")
    from ultraseg.export import export_onnx

    export_onnx(ckpt, tmp_path / "m.onnx")
    assert load(tmp_path / "m.onnx", postprocess=mine).postprocess == mine


# ------------------------------------------------------------ the tables of predict and measure
def _mixed_folder(folder: Path) -> list:
    """Five frames, the second and the last unreadable (one in a batch of two, one alone)."""
    for k in (0, 2, 3):
        save(folder / f"{k}.png", ramp(8, 8, k))
    (folder / "1.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    (folder / "4.png").write_bytes(b"")
    return collect_frames([folder])


def _table(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        return list(reader.fieldnames or ()), list(reader)


def test_both_tables_list_every_frame_in_the_inputs_order_skipped_ones_with_why(tmp_path):
    """Pins what predictions.csv and measurements.csv hold (the columns users read, one row
    a frame in the inputs' order, a skipped frame's row saying why), written by one helper."""
    from ultraseg.measure_files import MEASURE_COLUMNS
    from ultraseg.predict_files import PREDICTION_COLUMNS

    frames = _mixed_folder(tmp_path / "in")
    write_predictions(pixel_predictor(batch_size=2), frames, tmp_path / "p",
                      skip_unreadable=True)
    columns, table = _table(tmp_path / "p" / "predictions.csv")
    assert columns == list(PREDICTION_COLUMNS) == ["name", "image", "frame", "mask", "overlay",
                                                   "status", "reason", "probabilities"]
    assert [(r["name"], r["status"], r["mask"] != "") for r in table] == [
        ("0", "ok", True), ("1", "unreadable", False), ("2", "ok", True), ("3", "ok", True),
        ("4", "unreadable", False)]
    assert [r["image"] for r in table] == [str(f.image_path) for f in frames]
    assert "1.png" in table[1]["reason"] and "4.png" in table[4]["reason"]
    assert table[0]["reason"] == table[0]["overlay"] == table[1]["mask"] == ""

    summary, rows = measure_frames(pixel_predictor(batch_size=2), frames, out=tmp_path / "m",
                                   skip_unreadable=True)
    columns, table = _table(tmp_path / "m" / "measurements.csv")
    assert columns == [*MEASURE_COLUMNS, "error"]
    assert [r["name"] for r in table] == ["0", "1", "2", "3", "4"]
    assert [r["image"] for r in table] == [str(f.image_path) for f in frames]
    assert [r["error"] != "" for r in table] == [False, True, False, False, True]
    assert "1.png" in table[1]["error"] and table[1]["area_px"] == table[1]["width"] == ""
    measured = [r for r in table if not r["error"]]
    assert [r["area_px"] for r in measured] == [str(r["area_px"]) for r in rows]
    assert summary["csv"] == str(tmp_path / "m" / "measurements.csv")


def _failing_predictor(after: int) -> Predictor:
    """pixel_predictor(batch_size=1) whose network fails (an error, not Ctrl-C) at its call
    ``after`` + 1."""
    calls = []

    def run(batch: np.ndarray) -> np.ndarray:
        calls.append(1)
        if len(calls) > after:
            raise RuntimeError("the network failed")
        return (1.0 / (1.0 + np.exp(-40.0 * (batch - 0.5)))).astype(np.float32)

    return Predictor(run, ModelConfig(variant="same", depth=2),
                     PreprocessConfig(size=None, normalise="unit"), batch_size=1)


@pytest.mark.parametrize("command", ["predict", "measure"])
def test_a_run_stopped_by_an_error_lists_the_frames_it_got_to(tmp_path, command):
    """Pins the stop: an error (not only Ctrl-C) leaves the table of the frames handled,
    a skipped one among them, and raises as it came."""
    frames = _mixed_folder(tmp_path / "in")
    with pytest.raises(RuntimeError, match="the network failed"):
        if command == "predict":
            write_predictions(_failing_predictor(2), frames, tmp_path / "o",
                              skip_unreadable=True)
        else:
            measure_frames(_failing_predictor(2), frames, out=tmp_path / "o",
                           skip_unreadable=True)
    name = "predictions.csv" if command == "predict" else "measurements.csv"
    _, table = _table(tmp_path / "o" / name)
    assert [r["name"] for r in table] == ["0", "1", "2"]
    assert not [p for p in (tmp_path / "o").iterdir() if p.name.endswith(".tmp")]


_KILLED_RUN = """
import os, sys
import numpy as np
from ultraseg.config import ModelConfig, PreprocessConfig
from ultraseg.predict import Predictor
from ultraseg.frames import collect_frames
from ultraseg.measure_files import measure_frames
from ultraseg.predict_files import write_predictions

calls = []

def run(batch):
    calls.append(1)
    if len(calls) > int(sys.argv[4]):
        os._exit(9)                 # as kill -9 ends it: no except, no finally
    return (1.0 / (1.0 + np.exp(-40.0 * (batch - 0.5)))).astype(np.float32)

predictor = Predictor(run, ModelConfig(variant="same", depth=2),
                      PreprocessConfig(size=None, normalise="unit"), batch_size=1)
frames = collect_frames([sys.argv[2]])
if sys.argv[1] == "predict":
    write_predictions(predictor, frames, sys.argv[3], skip_unreadable=True)
else:
    measure_frames(predictor, frames, out=sys.argv[3], skip_unreadable=True)
"""


@pytest.mark.parametrize("command", ["predict", "measure"])
def test_a_killed_run_leaves_the_rows_it_made_in_its_table(tmp_path, command):
    """kill -9 (the OOM killer, a preempted job) lost every row measure had made: its table
    was written at the end, or by a handler when stopped, and a killed process runs none.
    The rows now reach the file as they are made, each whole, in the inputs' order."""
    import os
    import subprocess
    import sys

    import ultraseg

    frames = _mixed_folder(tmp_path / "in")     # 1.png and 4.png unreadable
    out = tmp_path / "o"
    src = str(Path(ultraseg.__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}
    # batch size 1: the network's 4th call is frame 3's; frames 0 and 2 (and 1, skipped) are done
    done = subprocess.run([sys.executable, "-c", _KILLED_RUN, command, str(tmp_path / "in"),
                           str(out), "2"], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 9, done.stderr
    name = "predictions.csv" if command == "predict" else "measurements.csv"
    text = (out / name).read_text()
    assert text.endswith("\n")
    _, table = _table(out / name)
    assert [r["name"] for r in table] == ["0", "1", "2"]
    assert [str(f.image_path) for f in frames[:3]] == [r["image"] for r in table]


def test_a_table_that_fills_the_disk_mid_run_keeps_its_rows_and_the_figures(tmp_path,
                                                                           monkeypatch):
    """Rows written one by one meet a full disk part way: the run goes on (its figures are
    returned with the error, at the end, as when the whole table could not be written), and
    the table keeps the whole rows written before."""
    from ultraseg import fileio

    frames = _mixed_folder(tmp_path / "in")
    real, writes = fileio.LineFile.write, []

    def write(self, text):
        writes.append(text)
        if len(writes) == 2:
            real(self, text[:5])                    # (a partial row, cut off again)
            self.f.truncate(self.size - 5)
            self.size -= 5
            raise fileio.WriteError("cannot write the file: no space left on the device "
                                    "(disk full); it holds the lines written before", self.path)
        real(self, text)

    monkeypatch.setattr(fileio.LineFile, "write", write)
    with pytest.raises(UltrasegError, match="no space left") as stopped:
        measure_frames(pixel_predictor(), frames, out=tmp_path / "m", skip_unreadable=True)
    summary, rows = stopped.value.result
    assert summary["n"] == 3 and [r["name"] for r in rows] == ["0", "2", "3"]
    _, table = _table(tmp_path / "m" / "measurements.csv")
    assert [r["name"] for r in table] == ["0", "1"]     # (1 skipped: out with 0, at once)


def test_a_table_that_fills_the_disk_mid_run_names_the_masks_it_does_not_list(tmp_path,
                                                                              monkeypatch):
    """predictions.csv meeting a full disk part way let predict go on writing masks, and its
    error said only that the table holds the lines written before: the masks written after
    were on disk, listed nowhere. The error now names them."""
    from ultraseg import fileio

    frames = _mixed_folder(tmp_path / "in")
    real, writes = fileio.LineFile.write, []

    def write(self, text):
        writes.append(text)
        if len(writes) == 2:
            raise fileio.WriteError("cannot write the file: no space left on the device "
                                    "(disk full); it holds the lines written before", self.path)
        real(self, text)

    monkeypatch.setattr(fileio.LineFile, "write", write)
    with pytest.raises(fileio.WriteError, match="no space left") as stopped:
        write_predictions(pixel_predictor(), frames, tmp_path / "o", skip_unreadable=True)
    _, table = _table(tmp_path / "o" / "predictions.csv")
    listed = {r["mask"] for r in table if r["mask"]}
    on_disk = {p.name for p in (tmp_path / "o").glob("*_mask.png")}
    unlisted = sorted(on_disk - listed)
    assert unlisted                                   # (the case: masks the table misses)
    message = str(stopped.value)
    assert all(name in message for name in unlisted), message
    assert not any(name in message for name in listed), message
    assert stopped.value.path == str(tmp_path / "o" / "predictions.csv")


def test_an_overlay_that_fills_the_disk_leaves_no_mask_the_table_does_not_list(tmp_path,
                                                                               monkeypatch):
    """A full disk at a frame's overlay, its mask just written, stopped predict with that
    mask on disk and no row for it in predictions.csv. The mask is removed with the error."""
    from ultraseg import predict_files as pf

    frames = _mixed_folder(tmp_path / "in")
    real = pf.write

    def write(path, data):
        if path.name == "2_overlay.png":
            raise UltrasegError("cannot write the file (no space left on the device (disk "
                                "full))", path)
        real(path, data)

    monkeypatch.setattr(pf, "write", write)
    with pytest.raises(UltrasegError, match="no space left"):
        write_predictions(pixel_predictor(), frames, tmp_path / "o", overlay=True,
                          skip_unreadable=True)
    _, table = _table(tmp_path / "o" / "predictions.csv")
    listed = {r["mask"] for r in table if r["mask"]}
    assert listed == {"0_mask.png"}                   # (the frame before is listed)
    assert {p.name for p in (tmp_path / "o").glob("*_mask.png")} == listed


@pytest.mark.parametrize("command", ["predict", "measure"])
def test_progress_counts_each_frame_as_it_is_handled_skipped_or_not(tmp_path, command):
    """A skipped frame moved the progress only with the next frame written (or at the end):
    a run of unreadable frames held the count still, then jumped. Each frame handled, written
    or skipped, now counts one, up to N/N."""
    frames = _mixed_folder(tmp_path / "in")
    for k in range(5, 9):                               # a run of unreadable frames
        (tmp_path / "in" / f"{k}.png").write_bytes(b"")
    frames = collect_frames([tmp_path / "in"])
    seen: list[tuple[int, int]] = []
    if command == "predict":
        write_predictions(pixel_predictor(batch_size=2), frames, tmp_path / "o",
                          skip_unreadable=True, progress=lambda *a: seen.append(a))
    else:
        measure_frames(pixel_predictor(batch_size=2), frames, skip_unreadable=True,
                       progress=lambda *a: seen.append(a))
    assert seen == [(k, 9) for k in range(1, 10)]


@pytest.mark.parametrize("lone", ["gray", "colour", "one channel", "pillow", "path"])
def test_predict_proba_many_refuses_one_image_naming_predict_proba(lone, tmp_path) -> None:
    """predict_proba_many iterated one image given alone over its rows: an (H, W, 3) frame
    gave H maps of its rows, an (H, W) one 'expected a 2D image, got (W,)' (it was one), a
    Pillow image a raw TypeError and a path a character at a time."""
    frame = ramp(12, 10)
    given = {"gray": frame, "colour": np.stack([frame] * 3, -1), "one channel": frame[..., None],
             "pillow": Image.fromarray(frame), "path": save(tmp_path / "f.png", frame)}[lone]
    with pytest.raises(UltrasegError, match=r"predict_proba_many takes .*frames.*"
                                            r"predict_proba\(image\)"):
        pixel_predictor().predict_proba_many(given)
    # a list of them, and a stack (N, H, W), are many frames as before
    assert len(list(pixel_predictor().predict_proba_many([frame, frame]))) == 2
    assert len(list(pixel_predictor().predict_proba_many(np.stack([frame] * 3)))) == 3


@pytest.mark.parametrize("call, option", [("write", "overlay"), ("write", "probabilities"),
                                          ("write", "skip_unreadable"),
                                          ("measure", "overlay"),
                                          ("measure", "skip_unreadable")])
@pytest.mark.parametrize("value", ["false", "no"])
def test_yes_no_options_given_as_strings_are_refused(tmp_path, call, option, value) -> None:
    """write_predictions(overlay="no", probabilities="false") wrote overlays and maps, and
    measure_frames(overlay="false") its overlays: a string is truthy (an API misuse review).
    Refused before anything is written."""
    image = save(tmp_path / "in" / "a.png", ramp(8, 8))
    out = tmp_path / "out"
    run = write_predictions if call == "write" else measure_frames
    with pytest.raises(UltrasegError, match=f"{option} must be true or false, got {value!r}"):
        run(pixel_predictor(), [image], out=out, **{option: value})
    assert not out.exists()
    run(pixel_predictor(), [image], out=out, **{option: np.bool_(False)})
    assert not list(out.glob("*_overlay.png")) + list(out.glob("*_prob.png")) \
        + list(out.glob("*_measure.png"))


@pytest.mark.parametrize("name", ["threshold", "size"])
def test_with_options_refuses_an_unknown_option_as_load_does(name) -> None:
    """with_options(threshold=0.5) raised dataclasses' TypeError ('__init__() got an
    unexpected keyword argument') where load(PATH, threshold=0.5) names the valid options (an
    API misuse review)."""
    words = (f"unknown predictor option.*{name}.*valid: batch_size, tile, tta, postprocess, "
             f"mirror")
    with pytest.raises(UltrasegError, match=words):
        pixel_predictor().with_options(**{name: 0.5})
    if name == "threshold":     # post-processing's: pointed to it
        with pytest.raises(UltrasegError, match=r"postprocess=dataclasses\.replace"):
            pixel_predictor().with_options(threshold=0.5)
    assert pixel_predictor().with_options(batch_size=2).batch_size == 2


@pytest.mark.parametrize("given", ["array", "bytes", "list with a number"])
def test_collect_frames_refuses_what_is_no_path_naming_it(tmp_path, given) -> None:
    """collect_frames(image_array) raised pathlib's TypeError ('expected str, bytes or
    os.PathLike object, not ndarray'), bytes were iterated as numbers, where
    write_predictions says 'expected frames ... or image paths, got ndarray' for the same
    input (an API misuse review, item 7)."""
    image = save(tmp_path / "a.png", ramp(6, 6))
    inputs = {"array": ramp(6, 6), "bytes": bytes(image),
              "list with a number": [image, 5]}[given]
    with pytest.raises(UltrasegError, match=r"collect_frames takes image paths.*got "
                                            r"(ndarray|bytes|int)"):
        collect_frames(inputs)
    assert len(collect_frames([image])) == 1



@pytest.mark.parametrize("call, args", [
    ("write", {"out": None}), ("write", {"out": 5}), ("write", {"rle": True}),
    ("measure", {"out": 5})])
def test_an_output_path_that_is_no_path_is_refused_naming_it(tmp_path, call, args) -> None:
    """write_predictions(R, I, None) and write_predictions(..., rle=True) raised pathlib's
    TypeError ('expected str, bytes or os.PathLike object, not NoneType'), naming no
    argument (an API misuse review, item 7)."""
    image = save(tmp_path / "in" / "a.png", ramp(6, 6))
    name, value = next(iter(args.items()))
    with pytest.raises(UltrasegError, match=rf"\({name}\) takes .*path.*got "
                                            rf"{type(value).__name__}"):
        if call == "write":
            write_predictions(pixel_predictor(), [image], **{"out": tmp_path / "o", **args})
        else:
            measure_frames(pixel_predictor(), [image], **args)


@pytest.mark.parametrize("variant", ["valid", "same"])
@pytest.mark.parametrize("side, calls", [(300, [2, 2, 1]), (600, [1] * 5), (120, [4, 1])])
def test_a_call_holds_the_pixels_of_batch_size_working_size_frames(variant, side, calls) -> None:
    """Frames predicted at their own resolution were batched batch_size to a call whatever
    their size (after 4797104 a valid model's too): four 580x420 windows a call took a frame's
    peak memory from 0.85 to 2.05 GB. A call now holds at most the pixels of batch_size
    training inputs (a valid model's tile with its context, here 212 + 2 x 20 = 252; a 'same'
    model's working-size frame, 252 where the predictor keeps frames at their own size), at
    least one input, never more than batch_size; each frame's map is unchanged."""
    from ultraseg.geometry import context_margin

    run, counted, fed = squashed_centre(context_margin(2) if variant == "valid" else 0)
    model = ModelConfig(variant=variant, depth=2, **({"tile": 212} if variant == "valid" else {}))
    pre = PreprocessConfig(size=None, normalise="unit")
    frames = [ramp(side, side, seed=i) for i in range(5)]
    got = list(Predictor(counted, model, pre, batch_size=4).predict_proba_many(frames))
    assert fed == calls
    one = Predictor(run, model, pre, batch_size=1)
    for frame, p in zip(frames, got, strict=True):
        np.testing.assert_array_equal(p, one.predict_proba(frame))


@pytest.mark.parametrize("name, value", [
    ("batch_size", 0), ("batch_size", -1), ("batch_size", 1.0), ("batch_size", "2"),
    ("batch_size", True), ("batch_size", None),
    ("tile", 0), ("tile", 2.5), ("tile", "20"), ("tile", False)])
def test_a_batch_size_or_tile_that_is_no_whole_number_from_1_is_refused_naming_it(name, value):
    """Predictor checks its whole-number options as it is built (np.int64 taken as the int
    it holds); tile may be None, batch_size not."""
    with pytest.raises(UltrasegError, match=rf"^{name} must be a whole number .*got "
                                            rf"{re.escape(repr(value))}$"):
        pixel_predictor(**{name: value})
    assert pixel_predictor(**{name: np.int64(3)}).__dict__[name] == 3
    assert type(pixel_predictor(**{name: np.int64(3)}).__dict__[name]) is int


@pytest.mark.parametrize("shape", [(1, 1), (3, 3), (4, 4), (2, 4)])
def test_an_instance_norm_model_predicts_a_frame_of_one_bottleneck_pixel(shape) -> None:
    """A 'same' instance-norm predictor at the frames' own resolution raised torch's
    'Expected more than 1 spatial element' on a frame with both sides <= 2**depth (a 1x1
    bottleneck), so `ultraseg predict` stopped with an internal error, while its ONNX export
    answered. The canvas is mirrored down to two bottleneck pixels; larger frames as before."""
    torch = pytest.importorskip("torch")
    from ultraseg.model import build_model
    from ultraseg.runtime import torch_runner

    model = ModelConfig(variant="same", width=2, depth=2, norm="instance")
    torch.manual_seed(0)
    net = build_model(model).eval()
    pred = Predictor(torch_runner(net, torch.device("cpu"), None), model,
                     PreprocessConfig(size=None, normalise="unit"))
    frame = ramp(*shape, seed=1)
    prob = pred.predict_proba(frame)
    assert prob.shape == shape and np.isfinite(prob).all()
    from ultraseg.preprocess import prepare

    big = ramp(8, 12, seed=2)              # (two bottleneck pixels and more: the network's own)
    canvas, _ = prepare(big, pred.preprocess)
    with torch.no_grad():
        direct = torch.sigmoid(net(torch.from_numpy(canvas[None, None]))).numpy()[0, 0]
    np.testing.assert_allclose(pred.predict_proba(big), direct, atol=1e-6)


def test_a_killed_runs_submission_temporary_is_swept_for_a_name_near_the_limit(tmp_path):
    """A re-read: a submission named within 14 bytes of the file system's name length gets a
    temporary holding only its name's end, which the sweep's glob of the whole name never
    found, so a killed run's leftover beside it (outside --out) stayed. The sweep looks for
    the temporary's own name."""
    import os
    import tempfile
    import time

    from ultraseg import fileio
    from ultraseg.frame_outputs import prepare_out_dir

    subs = tmp_path / "subs"      # outside --out: a day-old temporary is a killed writer's
    subs.mkdir()
    rle = subs / ("s" * (fileio.name_max(subs) - len(".csv") - 4) + ".csv")
    left = []
    for name in (rle, subs / "other.csv"):
        fd, tmp = tempfile.mkstemp(dir=subs, prefix=fileio._temporary_prefix(name),
                                   suffix=".tmp")      # as a writer killed (kill -9) left it
        os.close(fd)
        os.utime(tmp, (time.time() - 2 * 86400,) * 2)
        left.append(Path(tmp))
    prepare_out_dir(tmp_path / "out", rle=rle)
    assert [p.exists() for p in left] == [False, True]   # (the other: another file's)


def test_a_frame_whose_output_path_is_too_long_is_skipped_not_the_run(tmp_path):
    """A re-read: an output path too long for the system (each name fits; the folders its
    out_name holds, as a collision name's, take it past PATH_MAX) failed at making its folder,
    a plain error that stopped the whole run, where a name too long is that frame's error. It
    is that frame's error too now (status 'error', saying to shorten the path)."""
    from dataclasses import replace

    for stem in ("a", "b", "z"):
        save(tmp_path / "in" / f"{stem}.png", ramp(6, 6))
    frames = collect_frames([tmp_path / "in"])
    deep = "/".join(["d" * 200] * 24) + "/b"        # 4,800 bytes: over Linux's 4,096
    frames = [replace(f, out_name=deep) if f.out_name == "b" else f for f in frames]
    out = tmp_path / "out"
    summary = write_predictions(pixel_predictor(), frames, out, skip_unreadable=True)
    assert sorted(m.name for m in summary.masks) == ["a_mask.png", "z_mask.png"]
    assert [type(e).__name__ for e in summary.failed] == ["OutputNameTooLong"]
    assert "or choose a shorter --out" in str(summary.failed[0])


def test_a_frame_whose_output_name_is_too_long_is_skipped_not_the_run(tmp_path):
    """An image named with 235 characters, a legal name whose mask's name fits too, stopped
    predict ('File name too long; it was left as it was': the temporary file's name was 14
    characters longer), and with it every frame after it, with no row in predictions.csv.
    Now that frame is written; one whose own output's name is over the file system's limit
    is that frame's error (status 'error', saying to rename it), and the others are written."""
    from ultraseg.fileio import name_max

    limit = name_max(tmp_path)
    fits = "F" * (limit - len("_overlay.png"))      # each output's name just fits
    over = "O" * (limit - len(".png"))              # its input fits; its mask's name does not
    for stem in ("a", fits, over, "z"):
        save(tmp_path / "in" / f"{stem}.png", ramp(6, 6))
    frames = collect_frames([tmp_path / "in"])
    out = tmp_path / "out"
    summary = write_predictions(pixel_predictor(), frames, out, overlay=True,
                                skip_unreadable=True)
    assert sorted(m.name for m in summary.masks) == sorted(
        f"{s}_mask.png" for s in (fits, "a", "z"))
    assert [type(e).__name__ for e in summary.failed] == ["OutputNameTooLong"]
    _, table = _table(out / "predictions.csv")
    rows = {r["name"]: r for r in table}
    assert {n: r["status"] for n, r in rows.items()} == {
        "a": "ok", fits: "ok", over: "error", "z": "ok"}
    reason = rows[over]["reason"]
    assert f"over its {limit}" in reason and "rename the image to a shorter name" in reason
    assert rows[over]["mask"] == rows[over]["overlay"] == ""
    assert sorted(p.name for p in out.iterdir() if p.name.startswith((".", over))) == [
        OUTPUT_MARKER]                              # no temporary, no file of that frame
    with pytest.raises(DataError, match="rename the image to a shorter name"):
        write_predictions(pixel_predictor(), frames, tmp_path / "strict")
    summary, rows = measure_frames(pixel_predictor(), frames, out=tmp_path / "m", overlay=True,
                                   skip_unreadable=True)
    assert summary["n"] == 3 and summary["n_unreadable"] == 1
    assert "rename the image to a shorter name" in summary["unreadable"][0]
