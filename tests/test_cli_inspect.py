"""``ultraseg inspect``: every bad input of the Foundation issue (item 3) on small files the tests
write, each reported by ``inspect_dataset`` and by the CLI (exit 2, one stderr line naming the
file); every problem reported, not only the first; ``--json`` prints one JSON object only."""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
from PIL import Image

from conftest import decoded_masks, outline_dataset, shared_dataset, ultraseg_warnings
from ultraseg.cli import main
from ultraseg.errors import DataError
from ultraseg.inspection import format_report, inspect_dataset
from ultraseg.io import READERS

JSON_KEYS = {"layout", "pairs", "unlabelled", "subjects", "empty_masks",
             "foreground_fraction_mean", "image_size_min", "image_size_max"}


def _img(seed: int = 0, h: int = 20, w: int = 24) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w), dtype=np.uint8)


def _mask(h: int = 20, w: int = 24) -> np.ndarray:
    m = np.zeros((h, w), np.uint8)
    m[4:12, 6:16] = 255
    return m


def _save(path: Path, arr: np.ndarray, fmt: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, format=fmt)
    return path


def _good(root: Path, name: str = "1_1", seed: int = 0) -> None:
    _save(root / "images" / f"{name}.png", _img(seed))
    _save(root / "masks" / f"{name}_mask.png", _mask())


def _files(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*")}


# ------------------------------------------------------------------ the bad inputs
# Each builder writes a small folders-layout tree with one problem and returns the file to name.
def bad_mask_size(root: Path) -> Path:
    _good(root)
    _save(root / "images" / "1_2.png", _img(1))
    return _save(root / "masks" / "1_2_mask.png", _mask(10, 10))


def bad_photo_mask(root: Path) -> Path:
    _good(root)
    _save(root / "images" / "1_2.png", _img(1))
    return _save(root / "masks" / "1_2_mask.png", _img(2))


def bad_truncated_image(root: Path) -> Path:
    _good(root)
    p = _save(root / "images" / "1_2.png", _img(1, 60, 80))
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
    _save(root / "masks" / "1_2_mask.png", _mask(60, 80))
    return p


def bad_zero_bytes(root: Path) -> Path:
    _good(root)
    p = root / "images" / "1_2.png"
    p.write_bytes(b"")
    _save(root / "masks" / "1_2_mask.png", _mask())
    return p


def bad_text_as_png(root: Path) -> Path:
    _good(root)
    p = root / "images" / "1_2.png"
    p.write_text("this is not an image\n" * 20)
    _save(root / "masks" / "1_2_mask.png", _mask())
    return p


def bad_mask_without_image(root: Path) -> Path:
    _good(root)
    return _save(root / "masks" / "1_9_mask.png", _mask())


def bad_image_without_mask(root: Path) -> Path:
    _good(root)
    return _save(root / "images" / "1_3.png", _img(3))


def bad_empty_images_folder(root: Path) -> Path:
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    return root / "images"


def bad_empty_folder(root: Path) -> Path:
    root.mkdir(parents=True)
    return root


def bad_duplicate_name(root: Path) -> Path:
    _good(root, "a")
    _save(root / "images" / "a.jpg", _img(5), "JPEG")
    return root / "images" / "a"  # the message names a.png and a.jpg: checked below


# the same checks in the other layouts
def bad_hc18_open_outline(root: Path) -> Path:
    ts = root / "training_set"
    outline = np.zeros((40, 48), np.uint8)
    yy, xx = np.mgrid[:40, :48]
    ring = np.abs(np.hypot(yy - 20, xx - 24) - 12) < 0.6
    outline[ring] = 255
    _save(ts / "000_HC.png", _img(0, 40, 48))
    _save(ts / "000_HC_Annotation.png", outline)
    outline[ring & (yy > 20)] = 0  # half a ring: nothing to fill
    _save(ts / "001_HC.png", _img(1, 40, 48))
    return _save(ts / "001_HC_Annotation.png", outline)


def bad_busi_mask_without_image(root: Path) -> Path:
    _save(root / "benign" / "images" / "benign (1).png", _img(0))
    _save(root / "benign" / "mask" / "benign (1)_mask.png", _mask())
    return _save(root / "benign" / "mask" / "benign (2)_mask.png", _mask())


def bad_kaggle_image_without_mask(root: Path) -> Path:
    _save(root / "train" / "1_1.tif", _img(0))
    _save(root / "train" / "1_1_mask.tif", _mask())
    return _save(root / "train" / "1_2.tif", _img(1))


BAD: dict[str, Callable[[Path], Path]] = {
    f.__name__[4:]: f for f in (bad_mask_size, bad_photo_mask, bad_truncated_image, bad_zero_bytes,
                                bad_text_as_png, bad_mask_without_image, bad_image_without_mask,
                                bad_empty_images_folder, bad_empty_folder, bad_duplicate_name,
                                bad_hc18_open_outline, bad_busi_mask_without_image,
                                bad_kaggle_image_without_mask)
}


def _problems(root: Path) -> list[str]:
    """Every problem ``inspect_dataset`` finds; a folder it cannot read at all raises one."""
    try:
        _, problems = inspect_dataset(root)
    except DataError as e:
        return [str(e)]
    return [str(p) for p in problems]


def _named(line: str, path: Path) -> bool:
    if path.name == "a":  # duplicate names: both files
        return "a.png" in line and "a.jpg" in line
    return str(path) in line or path.name in line


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_reported_by_inspect_dataset(case: str, tmp_path: Path) -> None:
    root = tmp_path / "data"
    culprit = BAD[case](root)
    problems = _problems(root)
    assert len(problems) == 1, problems
    assert _named(problems[0], culprit), problems[0]


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_cli_exit_2_one_line_naming_the_file(case: str, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture) -> None:
    root = tmp_path / "data"
    culprit = BAD[case](root)
    before = _files(tmp_path)
    assert main(["inspect", str(root)]) == 2
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, err
    assert _named(lines[0], culprit), lines[0]
    assert _files(tmp_path) == before, "inspect must write nothing"


def test_every_problem_is_reported(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    root = tmp_path / "data"
    _good(root, "1_1")
    _save(root / "images" / "1_2.png", _img(1))
    size = _save(root / "masks" / "1_2_mask.png", _mask(10, 10))
    _save(root / "images" / "1_3.png", _img(2))
    photo = _save(root / "masks" / "1_3_mask.png", _img(3))
    orphan = _save(root / "masks" / "2_1_mask.png", _mask())

    problems = _problems(root)
    assert len(problems) == 3, problems
    assert main(["inspect", str(root)]) == 2
    captured = capsys.readouterr()
    lines = [ln for ln in captured.err.splitlines() if ln.startswith("error:")]
    assert len(lines) == 3, captured.err
    for path in (size, photo, orphan):
        assert sum(path.name in ln for ln in lines) == 1, (path.name, lines)
    assert re.search(r"pairs\s+1\b", captured.out)  # the summary of what is usable still prints


def test_json_has_the_keys_and_nothing_else_on_stdout(tmp_path: Path,
                                                      capsys: pytest.CaptureFixture) -> None:
    root = tmp_path / "data"
    _good(root, "1_1", 0)
    _good(root, "1_2", 1)
    _save(root / "images" / "2_1.png", _img(2, 30, 40))
    _save(root / "masks" / "2_1_mask.png", np.zeros((30, 40), np.uint8))
    assert main(["inspect", str(root), "--json"]) == 0
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and out.endswith("\n")
    report = json.loads(out)
    assert isinstance(report, dict) and JSON_KEYS <= set(report)
    assert report["layout"] == "folders"
    assert report["pairs"] == 3 and report["unlabelled"] == 0
    assert report["subjects"] == 2 and report["empty_masks"] == 1
    assert report["image_size_min"] == [24, 20] and report["image_size_max"] == [40, 30]
    fg = (_mask() > 0).mean()
    assert report["foreground_fraction_mean"] == pytest.approx((2 * fg + 0) / 3)


def test_json_with_problems_is_still_one_object(tmp_path: Path,
                                                capsys: pytest.CaptureFixture) -> None:
    root = tmp_path / "data"
    culprit = bad_photo_mask(root)
    assert main(["inspect", str(root), "--json"]) == 2
    captured = capsys.readouterr()
    report = json.loads(captured.out)
    assert report["pairs"] == 1
    assert culprit.name in captured.err


@pytest.mark.parametrize("case", ["missing", "empty", "pattern"])
def test_json_when_the_folder_cannot_be_read_at_all_is_still_one_object(
        tmp_path: Path, capsys: pytest.CaptureFixture, case: str) -> None:
    """A missing or empty folder, or a --subject-pattern matching no name, printed nothing on
    stdout with --json: a script parsing it failed on empty input rather than on the problem."""
    root = tmp_path / "data"
    args = {"missing": [], "empty": [], "pattern": ["--subject-pattern", "^zzz(\\d+)"]}[case]
    if case == "empty":
        root.mkdir()
    if case == "pattern":
        _good(root)
    assert main(["inspect", str(root), "--json", *args]) == 2
    captured = capsys.readouterr()
    report = json.loads(captured.out)
    assert report["path"] == str(root) and report["layout"] is None
    assert report["problems"] == len(report["problem_lines"]) == 1
    _good(tmp_path / "good")                   # the keys of a folder that could be read
    assert main(["inspect", str(tmp_path / "good"), "--json"]) == 0
    assert report.keys() == json.loads(capsys.readouterr().out).keys()
    assert report["pairs"] == 0 and report["image_size_min"] is None
    said = {"missing": "no such file or folder", "empty": "no images found",
            "pattern": "matches none of"}[case]
    assert said in report["problem_lines"][0]
    assert captured.err.strip() == f"error: {report['problem_lines'][0]}"   # as without --json


def test_json_when_the_folder_cannot_be_listed_is_still_one_object(
        tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    """Permission denied on listing the folder (simulated: root ignores modes) printed no JSON:
    it is an OSError, which the first version of the --json answer did not catch."""
    import errno

    root = tmp_path / "noperm"
    _good(root)
    real = Path.iterdir

    def denied(self):
        if self == root:
            raise PermissionError(errno.EACCES, "Permission denied", str(self))
        return real(self)

    monkeypatch.setattr(Path, "iterdir", denied)
    assert main(["inspect", str(root), "--json"]) == 2
    captured = capsys.readouterr()
    report = json.loads(captured.out)
    assert report["problem_lines"] == [f"{root}: Permission denied"]
    assert captured.err.strip() == f"error: {root}: Permission denied"


def test_human_report(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    root = tmp_path / "data"
    _good(root)
    assert main(["inspect", str(root)]) == 0
    out = capsys.readouterr().out
    assert "folders" in out and "pairs" in out and "24x20" in out


def test_unknown_layout_lists_the_valid_ones(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    root = tmp_path / "data"
    _good(root)
    assert main(["inspect", str(root), "--layout", "dicom"]) == 2
    err = capsys.readouterr().err
    assert "dicom" in err
    for name in READERS:
        assert name in err


def test_forced_layout(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    root = tmp_path / "data"
    _good(root)
    assert main(["inspect", str(root), "--layout", "images", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["layout"] == "images"
    assert report["pairs"] == 0 and report["unlabelled"] == 2


def test_missing_folder(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["inspect", str(tmp_path / "nowhere")]) == 2
    assert "nowhere" in capsys.readouterr().err


def test_usage_error_exit_2(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as e:
        main(["inspect"])
    assert e.value.code == 2


@pytest.mark.realdata
def test_real_kaggle_sample_json(capsys: pytest.CaptureFixture) -> None:
    root = shared_dataset("kaggle_nerve_sample")
    assert main(["inspect", str(root), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["layout"] == "kaggle"
    assert report["pairs"] == 1 and report["unlabelled"] == 1 and report["empty_masks"] == 0
    assert report["image_size_min"] == [580, 420]
    assert 0 < report["foreground_fraction_mean"] < 0.2


@pytest.mark.realdata
def test_real_forced_layout_via_cli(capsys: pytest.CaptureFixture) -> None:
    root = shared_dataset("kaggle_nerve_sample")
    assert main(["inspect", str(root), "--layout", "images", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["layout"] == "images" and report["pairs"] == 0 and report["unlabelled"] == 3


def test_an_unlabelled_folder_counts_its_subjects_not_its_images(tmp_path: Path) -> None:
    """Frames 1_1, 1_2 and 2_1 without masks: two subjects (the reader's), not three."""
    for name in ("1_1", "1_2", "2_1"):
        (tmp_path / "images").mkdir(exist_ok=True)
        Image.fromarray(np.full((8, 8), 100, np.uint8)).save(tmp_path / "images" / f"{name}.png")
    report, problems = inspect_dataset(tmp_path)
    assert problems == [] and report["pairs"] == 0 and report["unlabelled"] == 3
    assert report["subjects"] == 2


def test_an_unlabelled_loop_counts_its_frames_and_a_labelled_one_is_a_problem(
        tmp_path: Path) -> None:
    """inspect called a folder of loops broken (exit 2, one problem per loop) while predict
    and measure take every frame."""
    frames = [Image.fromarray(np.full((8, 10), 40 * k, np.uint8)) for k in range(3)]
    scans = tmp_path / "scans"
    scans.mkdir()
    frames[0].save(scans / "clip.tif", save_all=True, append_images=frames[1:])
    frames[0].save(scans / "still.png")
    report, problems = inspect_dataset(scans)
    assert problems == [] and report["unlabelled"] == 4
    root = tmp_path / "ds"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    frames[0].save(root / "images" / "1_1.tif", save_all=True, append_images=frames[1:])
    Image.fromarray(np.zeros((8, 10), np.uint8)).save(root / "masks" / "1_1_mask.png")
    report, problems = inspect_dataset(root)
    assert report["pairs"] == 0 and len(problems) == 1 and "holds 3 pages" in str(problems[0])



def test_inspect_counts_the_frames_in_colour(tmp_path: Path, capsys) -> None:
    """Doppler frames (a colour-flow box on B-mode) were read as their luma in silence:
    inspect counts them (one warning for all, not one a file) and names the first."""
    rng = np.random.default_rng(0)
    root = tmp_path / "ds"
    for d in ("images", "masks"):
        (root / d).mkdir(parents=True)
    for k in range(3):
        rgb = np.stack([rng.integers(60, 140, (20, 24), dtype=np.uint8)] * 3, axis=-1)
        if k:
            rgb[2:8, 2:8] = (200, 30, 30)
        Image.fromarray(rgb).save(root / "images" / f"{k}_1.png")
        mask = np.zeros((20, 24), np.uint8)
        mask[10:16, 10:16] = 255
        Image.fromarray(mask).save(root / "masks" / f"{k}_1_mask.png")
    with ultraseg_warnings() as warned:
        report, problems = inspect_dataset(root)
    assert problems == [] and report["colour_frames_count"] == 2
    assert [Path(p).name for p in report["colour_frames"]] == ["1_1.png", "2_1.png"]
    said = [w.getMessage() for w in warned if "colour" in w.getMessage()]
    assert len(said) == 1 and "2 frames" in said[0] and "1_1.png" in said[0], said
    assert "colour      2 frames" in format_report(report)


def test_the_image_size_line_gives_widths_and_heights_apart(tmp_path: Path) -> None:
    """'image size  min 5x7 median 25x20 max 2000x200 (width x height)': min, median and max
    were each taken over widths and heights apart, but read as frames' sizes, and no frame
    was 2000x200 (the widest was 2000x20, the tallest 20x200). Each is said as its own
    range; --json keeps its keys (per axis, [width, height]) as they were."""
    root = tmp_path / "data"
    for k, (w, h) in enumerate([(5, 7), (30, 20), (2000, 20), (20, 200)], 1):
        _save(root / "images" / f"{k}_1.png", _img(k, h, w))
        _save(root / "masks" / f"{k}_1_mask.png", np.zeros((h, w), np.uint8))
    report, _ = inspect_dataset(root)
    assert (report["image_size_min"], report["image_size_median"],
            report["image_size_max"]) == ([5, 7], [25, 20], [2000, 200])
    lines = [ln for ln in format_report(report).splitlines() if ln.startswith("image size")]
    assert lines == ["image size  width 5..2000 px (median 25), height 7..200 px (median 20)"]
    report["image_size_min"] = report["image_size_median"] = report["image_size_max"] = [5, 7]
    assert "image size  5x7 (width x height), every frame" in format_report(report)


@pytest.mark.parametrize("ext", ["png", "tif"])
def test_inspect_opens_an_unlabelled_loop_once(tmp_path: Path, monkeypatch, ext: str) -> None:
    """inspect read each frame of a cine loop from a fresh open of its file (outside any
    frame_loop()), an animated PNG composited from its first frame again each time: 600
    frames took 12.6 s, against 0.5 s before loops were kept open in predict alone. The
    file is now opened once for all its frames."""
    import ultraseg.io.images as images

    frames = [Image.fromarray(np.full((8, 10), 20 * k, np.uint8) + np.eye(8, 10, k, np.uint8))
              for k in range(8)]
    scans = tmp_path / "scans"
    scans.mkdir()
    loop = scans / f"clip.{ext}"
    frames[0].save(loop, save_all=True, append_images=frames[1:])
    opened: list[Path] = []
    real = images._opened

    def counting(path: Path):
        opened.append(path)
        return real(path)

    monkeypatch.setattr(images, "_opened", counting)
    report, problems = inspect_dataset(scans)
    assert problems == [] and report["unlabelled"] == 8
    assert opened == [loop]


@pytest.mark.parametrize("name", ["a\x1b[2J\x1b]0;pwned\x07b", "two\nlines"])
def test_a_file_name_is_printed_as_text_never_as_terminal_commands(tmp_path, capsys,
                                                                    name) -> None:
    """A received frame named with ESC [2J cleared the screen and set the window title when
    its error was printed (and could hide the lines above); a newline in a name split 'one
    line per problem'. Control characters in what the CLI prints are written as \\xNN."""
    root = tmp_path / "data"
    _good(root)
    p = _save(root / "images" / f"{name}.png", _img(1, 60, 80))
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
    _save(root / "masks" / f"{name}_mask.png", _mask(60, 80))
    assert main(["inspect", str(root)]) == 2
    out, err = capsys.readouterr()
    said = out + err
    assert "\x1b" not in said and "\x07" not in said
    assert err and all(line.startswith("error: ") for line in err.splitlines())
    assert ("\\x1b[2J\\x1b]0;pwned\\x07b" if "\x1b" in name else "two\\x0alines") in err


def test_a_warning_naming_a_file_is_one_line_whatever_the_name(tmp_path) -> None:
    """A float frame named 'f\\nerror: fake line.tif' made its warning print as a warning
    line and a faked 'error:' line: control characters in log lines are written as \\xNN
    too (a subprocess: the CLI sets up the process's log handler once)."""
    import subprocess
    import sys

    folder = tmp_path / "d"
    folder.mkdir()
    frame = (np.random.default_rng(0).random((20, 24)) * 1.6 - 0.3).astype(np.float32)
    Image.fromarray(frame).save(folder / "f\nerror: fake line.tif")
    proc = subprocess.run([sys.executable, "-m", "ultraseg", "inspect", str(folder)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    (line,) = proc.stderr.splitlines()
    assert line.startswith("warning: ") and "f\\x0aerror: fake line.tif" in line


def test_inspect_says_beside_several_labels_that_train_takes_their_union(tmp_path, capsys):
    """`labels [1, 2]` said nothing of what train does with them (their union, silently);
    binary masks (0/1, 0/255) and an inspect --label say no more than before."""
    for k in range(2):
        mask = (_mask() > 0).astype(np.uint8)
        mask[:3, :3] = 2
        _save(tmp_path / "d" / "images" / f"{k}_1.png", _img(seed=k))
        _save(tmp_path / "d" / "masks" / f"{k}_1.png", mask)
        _good(tmp_path / "b", f"{k}_1", seed=k)
    assert main(["inspect", str(tmp_path / "d")]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("labels"))
    assert "[1, 2]" in line and "union" in line and "--label K" in line, line
    assert main(["inspect", str(tmp_path / "d"), "--label", "2"]) == 0
    assert "union" not in capsys.readouterr().out
    report, _ = inspect_dataset(tmp_path / "b")
    assert report["labels"] == [1] and report["labels_note"] is None


def test_empty_masks_are_those_empty_under_the_label_inspected(tmp_path) -> None:
    """A mask holding only another label is empty for --label K: the count follows the
    label, as training's targets do (pinned across inspect's empty count becoming its
    MaskTally's)."""
    both = (_mask() > 0).astype(np.uint8)
    both[:3, :3] = 2
    for k, mask in enumerate((both, (_mask() > 0).astype(np.uint8), np.zeros((20, 24),
                                                                            np.uint8))):
        _save(tmp_path / "d" / "images" / f"{k}_1.png", _img(seed=k))
        _save(tmp_path / "d" / "masks" / f"{k}_1.png", mask)
    counts = [inspect_dataset(tmp_path / "d", label=label)[0] for label in (None, 1, 2, 3)]
    assert [r["empty_masks"] for r in counts] == [1, 1, 2, 3]
    assert all(r["pairs"] == 3 for r in counts)


# ------------------------------------------------------------------ duplicates, blank frames
def _scene(seed: int, size: int = 64) -> np.ndarray:
    """A smooth frame (an 8x8 random field, enlarged): distinct seeds share no structure."""
    coarse = np.random.default_rng(seed).integers(0, 256, (8, 8), dtype=np.uint8)
    return np.asarray(Image.fromarray(coarse).resize((size, size), Image.BICUBIC))


def _duplicated(root: Path) -> None:
    """Subjects 1-4 distinct; 9_1 a pixel copy of 1_1 with another mask; 2_2 a noisy copy of
    2_1 (same subject, same mask); 7_1 a noisy copy of 3_1 (another subject, empty mask)."""
    for k in range(1, 5):
        _save(root / "images" / f"{k}_1.png", _scene(k))
        _save(root / "masks" / f"{k}_1_mask.png", _mask(64, 64))
    _save(root / "images" / "9_1.png", _scene(1))
    _save(root / "masks" / "9_1_mask.png", np.roll(_mask(64, 64), 20, axis=0))
    noise = np.random.default_rng(5).normal(0, 3, (64, 64))
    for src, dst, mask in (("2_1", "2_2", _mask(64, 64)), ("3_1", "7_1", 0 * _mask(64, 64))):
        noisy = np.clip(_scene(int(src[0])) + noise, 0, 255).astype(np.uint8)
        _save(root / "images" / f"{dst}.png", noisy)
        _save(root / "masks" / f"{dst}_mask.png", mask)


def test_inspect_names_identical_and_near_duplicate_frames(tmp_path) -> None:
    """Pixel-identical frames (BUSI benign 433 = malignant 145, nerve 17_7 = 18_44, with
    other masks) and near copies (BUSI: ~100 pairs) were never mentioned: frames of one scan
    in two subjects leak across a subject-grouped split. Now counted and named, as warnings."""
    root = tmp_path / "d"
    _duplicated(root)
    with ultraseg_warnings() as warned:
        report, problems = inspect_dataset(root)
    assert not problems and report["problems"] == 0
    assert report["duplicates_exact"] == [["1_1", "9_1"]]
    assert report["duplicates_exact_count"] == 1
    assert report["duplicates_exact_across_subjects"] == 1
    assert report["duplicates_exact_masks_differ"] == 1
    # across subjects first; the exact pair is not counted again as a near one
    assert report["duplicates_near"] == [["3_1", "7_1"], ["2_1", "2_2"]]
    assert report["duplicates_near_count"] == 2
    assert report["duplicates_near_across_subjects"] == 1
    assert report["duplicates_near_masks_differ"] == 1
    assert report["constant_frames_count"] == 0
    said = [r.getMessage() for r in warned]
    assert len(said) == 2, said
    assert "1 pixel-identical frame pair (1 across subjects, 1 with masks that differ)" in said[0]
    assert "1_1 = 9_1" in said[0] and "3_1 ~ 7_1" in said[1] and str(root) in said[0]


def test_distinct_frames_are_not_duplicates(tmp_path) -> None:
    root = tmp_path / "d"
    for k in range(1, 9):
        _save(root / "images" / f"{k}_1.png", _scene(k, size=48 + k))
        _save(root / "masks" / f"{k}_1_mask.png", _mask(48 + k, 48 + k))
    with ultraseg_warnings() as warned:
        report, _ = inspect_dataset(root)
    assert report["duplicates_exact_count"] == report["duplicates_near_count"] == 0
    assert report["duplicates_exact"] == report["duplicates_near"] == []
    assert not warned


def test_a_constant_frame_is_a_warning_not_a_problem(tmp_path, capsys) -> None:
    """An all-black frame whose mask marks a square (foreground on no image content) passed
    as 'problems 0' with no word: now a warning naming it; exit 0 (data a user may keep)."""
    root = tmp_path / "d"
    _good(root)
    _save(root / "images" / "2_1.png", np.zeros((20, 24), np.uint8))
    _save(root / "masks" / "2_1_mask.png", _mask())
    with ultraseg_warnings() as warned:
        assert main(["inspect", str(root), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["constant_frames"] == ["2_1"] and report["constant_frames_count"] == 1
    assert report["duplicates_near_count"] == 0       # a flat frame correlates with nothing
    (line,) = [r.getMessage() for r in warned]
    assert "1 constant (blank) frame" in line and "2_1" in line
    assert main(["inspect", str(root)]) == 0
    out = capsys.readouterr().out
    assert re.search(r"constant\s+1 frames", out) and re.search(r"problems\s+0", out)


def test_masks_with_specks_are_a_warning_naming_them(tmp_path, capsys) -> None:
    """BUSI holds 8 masks with a stray 1-3 px region beside the lesion (benign 48, 96, 98...),
    which training learns as the structure, and inspect said nothing. Such specks (a region
    of at most 16 px under 1 % of its label's largest) are named in a warning; a small second
    lesion, or a region of another label, is no speck."""
    root = tmp_path / "d"
    for k, name in enumerate(("1_1", "2_1", "3_1", "4_1")):
        _save(root / "images" / f"{name}.png", _scene(k, size=64))
    lesion = np.zeros((64, 64), np.uint8)
    lesion[10:40, 10:40] = 255
    speckled = lesion.copy()
    speckled[60, 60] = speckled[60, 61] = 255                      # 2 px, far from it
    two = lesion.copy()
    two[50:54, 50:55] = 255                      # a small second lesion (20 px): no speck
    labelled = (lesion > 0).astype(np.uint8)
    labelled[60, 60] = 2                         # a region of another label: no speck of 1
    dithered = lesion.copy()
    dithered[45:64:3, 45:64:3] = 255             # 49 one-pixel specks: 5 sizes listed
    for name, mask in (("1_1", speckled), ("2_1", two), ("3_1", labelled), ("4_1", dithered)):
        _save(root / "masks" / f"{name}_mask.png", mask)
    with ultraseg_warnings() as warned:
        assert main(["inspect", str(root), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["masks_with_specks"] == [["1_1", [2]], ["4_1", [1, 1, 1, 1, 1]]]
    assert report["masks_with_specks_count"] == 2 and report["problems"] == 0
    (line,) = [r.getMessage() for r in warned if "specks" in r.getMessage()]
    assert "2 masks with specks" in line and "1_1 (2 px)" in line and "2_1" not in line
    assert main(["inspect", str(root)]) == 0
    assert re.search(r"specks\s+2 masks", capsys.readouterr().out)



def test_the_report_s_labels_and_specks_are_each_mask_s_own(tmp_path) -> None:
    """A phantom set with specks, and a label mask among its masks (whose 0/255 masks' white
    is then 255, so each mask is read as saved): the report's labels, specks and foreground
    are those of each mask file alone. Pins _MaskFacts taking the mask's labels once (passed
    on to specks) to the report of specks() finding them itself."""
    from ultraseg.inspection import specks
    from ultraseg.phantom import make_dataset

    root = make_dataset(tmp_path / "d", n=8, size=128, seed=3)
    paths = sorted((root / "masks").glob("*.png"))
    for k, path in enumerate(paths):
        mask = np.asarray(Image.open(path)).copy()
        if k in (0, 3):
            mask[126, 0] = mask[126, 1] = mask[0, 127] = 255     # specks of 2 and 1 px
        if k == 5:
            mask[mask > 0] = 1
            mask[100:120, 100:120] = 2
            mask[60, 0] = 2                                       # a speck of label 2
        _save(path, mask)
    report, problems = inspect_dataset(root)
    assert not problems
    masks = {p.name[:-len("_mask.png")]: np.asarray(Image.open(p)) for p in paths}
    want = {name: specks(m) for name, m in masks.items()}
    assert sum(map(bool, want.values())) >= 3         # the speckled masks and the label mask
    assert dict(report["masks_with_specks"]) == {n: v[:5] for n, v in want.items() if v}
    assert report["masks_with_specks_count"] == sum(map(bool, want.values()))
    assert report["labels"] == sorted(set().union(*(set(np.unique(m).tolist())
                                                    for m in masks.values())) - {0})
    assert report["foreground_fraction_mean"] == pytest.approx(
        np.mean([(m > 0).mean() for m in masks.values()]))


def test_a_mask_s_labels_are_found_once_for_its_report(monkeypatch) -> None:
    """inspect found each mask's labels twice (_MaskFacts, then specks for the same mask):
    np.unique is the larger part of inspect's time on a set of small frames."""
    from ultraseg import inspection

    mask = np.zeros((32, 32), np.uint8)
    mask[4:20, 4:20] = 1
    mask[30, 30] = 1
    mask[25:28, 2:5] = 2
    seen: list[np.ndarray] = []
    unique = np.unique

    def spy(a, *args, **kwargs):
        seen.append(a)
        return unique(a, *args, **kwargs)

    monkeypatch.setattr(np, "unique", spy)
    facts = inspection._MaskFacts.of(mask, None)
    assert facts.held == [1, 2] and facts.speckled == [1]
    assert sum(a is mask for a in seen) == 1


def test_the_human_report_counts_duplicates(tmp_path, capsys) -> None:
    _duplicated(tmp_path / "d")
    assert main(["inspect", str(tmp_path / "d")]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("duplicates"))
    assert "1 identical pairs, 2 near pairs (1 and 1 across subjects)" in line, line


def test_the_near_pairs_of_a_cine_loop_are_all_counted(tmp_path) -> None:
    """The frames of one loop are near duplicates of each other, n (n - 1) / 2 pairs: every one
    of them is counted, a batch at a time, and only the pairs the report names are kept."""
    from ultraseg.inspection import inspect_dataset

    rng = np.random.default_rng(0)
    base = (rng.random((32, 32)) * 200).astype(np.int16)
    for k in range(40):
        noisy = np.clip(base + rng.integers(-3, 4, base.shape), 0, 255).astype(np.uint8)
        Image.fromarray(noisy).save(tmp_path / f"f{k:02d}.png")
    report, problems = inspect_dataset(tmp_path)
    assert problems == [] and report["duplicates_near_count"] == 40 * 39 // 2
    assert report["duplicates_exact_count"] == 0
    assert len(report["duplicates_near"]) == 20 and report["duplicates_near"][0] == ["f00", "f01"]


def test_inspect_warns_of_masks_that_look_inverted(tmp_path, capsys):
    """Masks with the structure black on white (foreground ~93 %) passed without a word and
    scored well. A warning says they look inverted where most masks' foreground covers over
    half the frame and touches all four borders; `--json` counts them. A large structure
    that leaves a border free, and a few inverted masks among many, say nothing."""
    for k in range(3):
        _save(tmp_path / "inv" / "images" / f"{k}_1.png", _img(seed=k))
        _save(tmp_path / "inv" / "masks" / f"{k}_1.png", 255 - _mask())
        big = np.zeros((20, 24), np.uint8)
        big[:, 2:] = 255                                 # 92 %, the left border free
        _save(tmp_path / "big" / "images" / f"{k}_1.png", _img(seed=k))
        _save(tmp_path / "big" / "masks" / f"{k}_1.png", big)
    with ultraseg_warnings() as warned:
        assert main(["inspect", str(tmp_path / "inv")]) == 0
    said = [r.getMessage() for r in warned if "inverted" in r.getMessage()]
    assert len(said) == 1 and "3 of the 3 masks" in said[0], [r.getMessage() for r in warned]
    assert "black on white" in said[0] and "255 - mask" in said[0]
    capsys.readouterr()
    assert main(["inspect", str(tmp_path / "inv"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["masks_inverted_count"] == 3
    for k in range(3, 7):
        _good(tmp_path / "inv", f"{k}_1", seed=k)
    for folder in ("big", "inv"):
        with ultraseg_warnings() as warned:
            report, _ = inspect_dataset(tmp_path / folder)
        assert not any("inverted" in r.getMessage() for r in warned), folder
    assert report["masks_inverted_count"] == 3


def test_fill_outlines_flag_fills_the_masks_inspected(tmp_path, capsys) -> None:
    """images/ + masks/ contour annotations were summarised as rings, and no flag filled them."""
    root, ring, disk = outline_dataset(tmp_path / "d", n=2)
    report, _ = inspect_dataset(root)
    assert report["foreground_fraction_mean"] == pytest.approx(ring.mean())
    report, problems = inspect_dataset(root, fill_outlines=True)
    assert problems == [] and report["foreground_fraction_mean"] == pytest.approx(disk.mean())
    assert main(["inspect", str(root), "--json", "--fill-outlines"]) == 0
    assert json.loads(capsys.readouterr().out)["foreground_fraction_mean"] == pytest.approx(
        disk.mean())


def test_masks_that_look_like_outlines_are_warned_about_with_the_remedy(tmp_path) -> None:
    """1-px closed contours in images/ + masks/ were summarised as 1.3 % foreground with no
    word, and trained as rings."""
    root, _, _ = outline_dataset(tmp_path / "d", n=3)
    with ultraseg_warnings() as warned:
        report, problems = inspect_dataset(root)
    said = [r.getMessage() for r in warned if "closed contours" in r.getMessage()]
    assert problems == [] and report["outline_masks_count"] == 3
    assert len(said) == 1 and "3 of the 3 non-empty masks" in said[0], said
    assert "--fill-outlines" in said[0]
    assert "outlines    3 masks" in format_report(report)
    with ultraseg_warnings() as warned:
        report, _ = inspect_dataset(root, fill_outlines=True)
    assert report["outline_masks_count"] == 0
    assert not [r for r in warned if "closed contours" in r.getMessage()]
    _good(tmp_path / "solid")                        # solid masks: no word
    assert inspect_dataset(tmp_path / "solid")[0]["outline_masks_count"] == 0


def test_the_readme_names_every_count_inspect_json_gives() -> None:
    """README's `--json` keys for inspect named masks_inverted_count, not outline_masks_count."""
    from ultraseg.inspection import failed_report

    readme = Path(__file__).resolve().parents[1] / "README.md"
    if not readme.is_file():
        pytest.skip("no README.md")
    (row,) = [line for line in readme.read_text(encoding="utf-8").splitlines()
              if line.startswith("| `ultraseg inspect")]
    counts = [k for k in failed_report("x", []) if k.endswith("_count")
              and not k.startswith("duplicates_")]     # (those as `duplicates_{exact,near}_count`)
    assert counts and [k for k in counts if f"`{k}`" not in row] == []


def test_inspect_decodes_each_mask_once(tmp_path, monkeypatch) -> None:
    """inspect decided a 0/255 mask's white over the set (io.label_set), decoding every mask,
    then decoded them all again for its report: it decides from the masks its report reads,
    each decoded once, a set of label masks or a binary one."""
    from collections import Counter

    from ultraseg.inspection import inspect_dataset

    decoded = decoded_masks(monkeypatch)
    both = np.zeros((24, 30), np.uint8)
    both[2:8, 2:10], both[14:22, 16:28] = 128, 255
    alone = np.where(both == 255, 255, 0).astype(np.uint8)
    for name, masks, labels in (("lab", [both, alone, alone], [128, 255]),
                                ("bw", [alone, alone > 0], [1])):
        root = tmp_path / name
        for i, m in enumerate(masks):
            for d, a in (("images", np.full((24, 30), 60 + i, np.uint8)), ("masks", m)):
                (root / d).mkdir(parents=True, exist_ok=True)
                Image.fromarray(a.astype(np.uint8)).save(
                    root / d / (f"{i}_1.png" if d == "images" else f"{i}_1_mask.png"))
        decoded.clear()
        report, problems = inspect_dataset(root, label=255 if name == "lab" else 1)
        assert not problems and report["labels"] == labels and report["empty_masks"] == 0
        assert sorted(Counter(map(str, decoded)).values()) == [1] * len(masks), decoded


@pytest.mark.parametrize("names, args, rule, line", [
    (["20240105_p1_01", "20240105_p1_02", "20240212_p1_01"], [], "leading_number",
     "subjects    2 (leading integer of SUBJECT_FRAME: '20240105' 2 frames, '20240212' 1 frame)"),
    (["pat1/f01", "pat1/f02", "pat2/f01"], [], "subject_folder",
     "subjects    2 (subject folder, images/SUBJECT/NAME: 'pat1' 2 frames, 'pat2' 1 frame)"),
    (["a_1", "a_2", "b_1"], ["--subject-pattern", "^([a-z])_"], "subject_pattern",
     "subjects    2 (--subject-pattern: 'a' 2 frames, 'b' 1 frame)"),
    # a pattern that misses some names: those keep the layout's subject (here their own)
    (["pa_1", "pa_2", "pb_1", "x9"], ["--subject-pattern", "^(p[a-z])_"], "mixed",
     "subjects    3 (mixed, --subject-pattern 3 frames, each frame its own 1 frame: "
     "'pa' 2 frames, 'pb' 1 frame, 'x9' 1 frame)"),
    (["0001", "0002", "0003"], [], "own",
     "subjects    3 (each frame its own, no leading SUBJECT_ integer or subject folder: "
     "one patient's or one video's frames want SUBJECT_FRAME names, images/SUBJECT/ folders "
     "or --subject-pattern REGEX)"),
    (["1_1", "1_2", "cat"], [], "mixed",
     "subjects    2 (mixed, leading integer of SUBJECT_FRAME 2 frames, each frame its own 1 "
     "frame: '1' 2 frames, 'cat' 1 frame)"),
])
def test_inspect_says_how_the_subjects_were_found_with_examples(
        tmp_path: Path, capsys: pytest.CaptureFixture, names, args, rule, line) -> None:
    """inspect printed 'subjects 2' and nothing else: a clinic's 20240105_patient1_01 names
    grouped by date could not be seen before training (split.json, after a run, was the only
    place). It names the rule and the largest subjects with their frames; --json too."""
    for i, name in enumerate(names):
        _good(tmp_path / "d", name, seed=i)
    assert main(["inspect", str(tmp_path / "d"), *args]) == 0
    assert line in capsys.readouterr().out.splitlines()
    assert main(["inspect", str(tmp_path / "d"), "--json", *args]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["subject_rule"] == rule
    assert sum(report["subject_rule_frames"].values()) == report["pairs"]
    assert report["subject_examples"][0]["frames"] == (1 if rule == "own" else 2)
    assert len(report["subject_examples"]) == min(3, report["subjects"])


def test_inspect_tells_busi_only_what_its_layout_reads_for_subjects(
        tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """BUSI's subjects are each image (it names no patients): its layout reads neither a
    leading number nor subject folders, yet inspect's line advised SUBJECT_FRAME names and
    images/SUBJECT/ folders. It names --subject-pattern alone."""
    for i in (1, 2):
        _save(tmp_path / "d" / "benign" / f"benign ({i}).png", _img(i))
        _save(tmp_path / "d" / "benign" / f"benign ({i})_mask.png", _mask())
    assert main(["inspect", str(tmp_path / "d")]) == 0
    line = next(s for s in capsys.readouterr().out.splitlines() if s.startswith("subjects"))
    assert line == ("subjects    2 (each frame its own, BUSI names no patients: one patient's "
                    "frames want --subject-pattern REGEX)"), line


def test_inspect_tells_a_folder_of_unlabelled_images_no_naming_advice(
        tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """A re-read: a folder of unlabelled `10_1.jpg`, `10_100.jpg` was told its frames 'want
    SUBJECT_FRAME names', which they have: the images layout reads no subjects from names (no
    split is drawn from unlabelled frames), so no naming advice is given."""
    for name in ("10_1", "10_100"):
        _save(tmp_path / "d" / f"{name}.png", _img())
    assert main(["inspect", str(tmp_path / "d")]) == 0
    line = next(s for s in capsys.readouterr().out.splitlines() if s.startswith("subjects"))
    assert line == "subjects    2 (each frame its own: unlabelled images, no split is drawn)", line


def test_the_subject_rule_is_each_file_s_though_two_rules_give_one_subject(tmp_path) -> None:
    """Kaggle nerve's train/1_1 (subject '1', its leading integer) and test/1 (unlabelled, its
    own subject '1'): the rule was looked up by subject, and the test frame's overwrote the
    pair's, so inspect called the pairs' subjects each frame's own."""
    for name in ("1_1", "1_2"):
        _save(tmp_path / "d" / "train" / f"{name}.tif", _img())
        _save(tmp_path / "d" / "train" / f"{name}_mask.tif", _mask())
    _save(tmp_path / "d" / "test" / "1.tif", _img(1))
    report, _ = inspect_dataset(tmp_path / "d")
    assert report["layout"] == "kaggle" and report["pairs"] == 2
    assert report["subject_rule"] == "leading_number", report["subject_rule_frames"]
    assert report["subject_examples"] == [{"subject": "1", "frames": 2}]


def test_inspect_help_points_to_the_readmes_section_on_laying_out_ones_own_data(capsys):
    """`ultraseg inspect --help` said only 'dataset folder': a researcher bringing their own
    data found no word on how to lay it out. Its description names the README's section,
    which exists, and which shows the images/ + masks/ layout."""
    with pytest.raises(SystemExit):
        main(["inspect", "--help"])
    said = " ".join(capsys.readouterr().out.split())
    named = re.search(r"the README's '([^']+)' section", said)
    assert named, said
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    section = readme.split(f"\n## {named.group(1)}\n", 1)
    assert len(section) == 2, f"no section {named.group(1)!r} in README.md"
    body = section[1].split("\n## ", 1)[0]
    assert "images/" in body and "masks/" in body and "ultraseg inspect DATA" in body
