"""Readers: one contract test over every registered layout (synthetic trees), and every reader on
the real samples in ../shared/datasets, or $ULTRASEG_DATASETS (skipped with the reason where
that folder is absent)."""
from __future__ import annotations

import csv
import re
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
from PIL import Image, ImageDraw

from conftest import outline_dataset, shared_dataset, ultraseg_warnings
from ultraseg.errors import DataError, UltrasegError
from ultraseg.io import (READERS, detect_layout, file_sample, get_reader, open_dataset,
                         read_mask, scan_dataset)


# ------------------------------------------------------------------ synthetic trees
def _frame(h: int = 24, w: int = 32, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w), dtype=np.uint8)


def _disk(h: int = 24, w: int = 32, cy: int = 12, cx: int = 14, r: int = 6) -> np.ndarray:
    yy, xx = np.mgrid[:h, :w]
    return (((yy - cy) ** 2 + (xx - cx) ** 2) <= r * r).astype(np.uint8) * 255


def _save(path: Path, arr: np.ndarray, **kw) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, **kw)
    return path


def make_folders(root: Path) -> Path:
    for i, name in enumerate(["1_1", "1_2", "2_1"]):
        _save(root / "images" / f"{name}.png", _frame(seed=i))
        _save(root / "masks" / f"{name}_mask.png", _disk(cx=10 + i))
    return root


def make_kaggle(root: Path) -> Path:
    for i, name in enumerate(["1_1", "3_2"]):
        _save(root / "train" / f"{name}.tif", _frame(seed=i), compression="tiff_lzw")
        _save(root / "train" / f"{name}_mask.tif", _disk(), compression="tiff_lzw")
    _save(root / "test" / "1.tif", _frame(seed=9), compression="tiff_lzw")
    return root


def make_busi(root: Path) -> Path:
    for cls in ("benign", "normal"):
        for n in (1, 2):
            rgb = np.stack([_frame(seed=n)] * 3, axis=-1)
            _save(root / cls / "images" / f"{cls} ({n}).png", rgb)
            mask = _disk() if cls == "benign" else np.zeros((24, 32), np.uint8)
            _save(root / cls / "mask" / f"{cls} ({n})_mask.png", mask)
    _save(root / "benign" / "mask" / "benign (1)_mask_1.png", _disk(cx=26, r=3))
    return root


def _ellipse_outline(h: int, w: int, box: tuple[int, int, int, int]) -> np.ndarray:
    im = Image.new("L", (w, h), 0)
    ImageDraw.Draw(im).ellipse(box, outline=255, width=1)
    return np.asarray(im)


def make_hc18(root: Path) -> Path:
    ts = root / "training_set"
    rows = []
    for name in ("000_HC", "000_2HC", "001_HC"):
        _save(ts / f"{name}.png", _frame(40, 48))
        _save(ts / f"{name}_Annotation.png", _ellipse_outline(40, 48, (8, 6, 38, 32)))
        rows.append((f"{name}.png", "0.1", "30.5"))
    with open(root / "training_set_pixel_size_and_HC.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["filename", "pixel size(mm)", "head circumference (mm)"])
        w.writerows(rows)
    return root


def make_images(root: Path) -> Path:
    _save(root / "a.png", _frame(seed=1))
    _save(root / "sub" / "b.jpg", _frame(seed=2))
    return root


BUILDERS: dict[str, Callable[[Path], Path]] = {
    "folders": make_folders, "kaggle": make_kaggle, "busi": make_busi, "hc18": make_hc18,
    "images": make_images,
}
EXPECTED = {  # layout -> (labelled, unlabelled, subjects of the labelled)
    "folders": (3, 0, 2), "kaggle": (2, 1, 2), "busi": (4, 0, 4), "hc18": (3, 0, 2),
    "images": (0, 2, 0),
}


# ------------------------------------------------------------------ the contract
@pytest.mark.parametrize("layout", sorted(READERS))
def test_reader_contract(layout: str, tmp_path: Path) -> None:
    assert layout in BUILDERS, f"no synthetic tree for the registered reader {layout!r}: add one"
    root = BUILDERS[layout](tmp_path / layout)
    cls = READERS[layout]
    assert cls.name == layout
    assert cls.detect(root) is True
    assert detect_layout(root) == layout

    samples, problems = get_reader(layout).scan(root)
    assert problems == []
    assert samples
    names = [s.name for s in samples]
    assert len(names) == len(set(names)), "sample names must be unique"
    for s in samples:
        assert isinstance(s.name, str) and s.name
        assert isinstance(s.subject, str) and s.subject
        assert Path(s.image_path).is_file()
        assert isinstance(s.meta, dict)
        image, mask = s.load()
        assert image.dtype == np.uint8 and image.ndim == 2
        if s.labelled:
            assert mask is not None
            assert mask.dtype == np.uint8 and mask.shape == image.shape
        else:
            assert mask is None

    n_lab, n_unlab, n_subj = EXPECTED[layout]
    assert sum(s.labelled for s in samples) == n_lab
    assert sum(not s.labelled for s in samples) == n_unlab
    assert len({s.subject for s in samples if s.labelled}) == n_subj


def test_synthetic_specifics(tmp_path: Path) -> None:
    """The layout-specific promises on the synthetic trees: busi union and class, hc18 fill and
    pixel size, kaggle split metadata and LZW decoding."""
    busi, _ = scan_dataset(make_busi(tmp_path / "busi"))
    s = next(x for x in busi.samples if x.name == "benign (1)")
    assert s.meta["class"] == "benign" and len(s.mask_paths) == 2
    _, mask = s.load()
    union = (_disk() > 0) | (_disk(cx=26, r=3) > 0)
    assert np.array_equal(mask > 0, union)

    hc, _ = scan_dataset(make_hc18(tmp_path / "hc18"))
    s = next(x for x in hc.samples if x.name == "000_2HC")
    assert s.subject == "000"
    assert s.meta["pixel_size_mm"] == pytest.approx(0.1) and s.meta["hc_mm"] == pytest.approx(30.5)
    _, mask = s.load()
    outline = read_mask(s.mask_paths[0]) > 0
    assert mask[19, 23] == 1  # centre of the ellipse
    assert mask.sum() > 3 * outline.sum()
    assert np.all(mask[outline] == 1)

    kg, _ = scan_dataset(make_kaggle(tmp_path / "kaggle"))
    assert {s.meta["split"] for s in kg.samples} == {"train", "test"}
    assert kg.samples[0].load_image().shape == (24, 32)


def make_hc18_test_set(root: Path) -> Path:
    """HC18 as distributed for testing: test_set/NNN_HC.png (no annotations) and
    test_set_pixel_size.csv one level up."""
    for name in ("100_HC", "101_2HC"):
        _save(root / "test_set" / f"{name}.png", _frame(40, 48))
    with open(root / "test_set_pixel_size.csv", "w", newline="") as f:
        csv.writer(f).writerows([["filename", "pixel size(mm)"], ["100_HC.png", "0.12"],
                                 ["101_2HC.png", "0.2"]])
    return root


def test_hc18_given_from_inside_or_through_a_link_keeps_its_table(tmp_path: Path,
                                                                  monkeypatch) -> None:
    """`train .` from inside training_set/ (and a file named there as 000_HC.png) lost every
    pixel size and reference, silently: the table one level up was looked for beside '.',
    whose name is empty; a link to the folder under another name lost it too."""
    from ultraseg.frames import collect_frames

    root = make_hc18(tmp_path / "hc18")
    want = {"pixel_size_mm": 0.1, "hc_mm": 30.5}
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "scans").symlink_to(root / "training_set")
    monkeypatch.chdir(root / "training_set")
    for given in (".", tmp_path / "elsewhere" / "scans"):
        ds, problems = scan_dataset(given)
        assert ds.layout == "hc18" and problems == []
        assert [s.meta for s in ds.samples] == [want] * 3, given
    for name in ("000_HC.png", "./000_HC.png"):
        (frame,) = collect_frames([name])
        assert frame.sample.meta == want


@pytest.mark.parametrize("inside", [False, True])
def test_hc18_test_set_is_detected_with_its_pixel_sizes(tmp_path: Path, inside: bool) -> None:
    """The unannotated test set (given as its parent or as test_set/ itself) is read as hc18, so
    predict and measure get each frame's pixel size; plain *_HC.png without a CSV is not."""
    root = make_hc18_test_set(tmp_path / "hc18")
    target = root / "test_set" if inside else root
    assert detect_layout(target) == "hc18"
    ds, problems = scan_dataset(target)
    assert problems == [] and not ds.labelled
    assert {s.name: s.meta["pixel_size_mm"] for s in ds.samples} == pytest.approx(
        {"100_HC": 0.12, "101_2HC": 0.2})
    (root / "test_set_pixel_size.csv").unlink()
    assert detect_layout(target) == "images"


def test_unknown_layout_lists_valid_names(tmp_path: Path) -> None:
    with pytest.raises(UltrasegError) as e:
        get_reader("nonsense")
    for name in READERS:
        assert name in str(e.value)
    with pytest.raises(UltrasegError) as e:
        scan_dataset(make_images(tmp_path), layout="nonsense")
    assert "folders" in str(e.value) and "hc18" in str(e.value)


def test_forced_layout_overrides_detection(tmp_path: Path) -> None:
    root = make_folders(tmp_path / "f")
    ds, problems = scan_dataset(root, layout="images")
    assert ds.layout == "images" and not problems
    assert len(ds.samples) == 6 and not ds.labelled  # masks read as plain images


@pytest.mark.parametrize("forced", ["busi", "kaggle", "hc18"])
def test_forced_layout_that_finds_nothing_names_the_layout_found(tmp_path: Path,
                                                                  forced: str) -> None:
    root = make_folders(tmp_path / "f")
    _, problems = scan_dataset(root, layout=forced)
    assert len(problems) == 1
    msg = str(problems[0])
    assert f"no '{forced}' files found" in msg and "'folders' layout" in msg, msg
    assert "empty folder" not in msg


@pytest.mark.parametrize("layout", ["busi", "kaggle", "hc18", "images"])
def test_folders_forced_on_another_layout_names_the_layout_found(tmp_path: Path,
                                                                 layout: str) -> None:
    root = BUILDERS[layout](tmp_path / layout)
    _, problems = scan_dataset(root, layout="folders")
    assert len(problems) == 1
    assert "no 'folders' files found" in str(problems[0]), problems
    assert f"'{layout}' layout" in str(problems[0])


def test_folders_forced_on_an_empty_folder(tmp_path: Path) -> None:
    _, problems = scan_dataset(tmp_path, layout="folders")
    assert [str(p) for p in problems] == [f"{tmp_path / 'images'}: empty folder: no images found"]


def test_subject_pattern_overrides(tmp_path: Path) -> None:
    root = make_folders(tmp_path / "f")
    ds, _ = scan_dataset(root, subject_pattern=r"_(\d+)$")
    assert sorted(s.subject for s in ds.samples) == ["1", "1", "2"]


@pytest.mark.parametrize("layout", sorted(BUILDERS))
def test_subject_pattern_applies_to_every_layout(tmp_path: Path, layout: str) -> None:
    ds, _ = scan_dataset(BUILDERS[layout](tmp_path / layout), subject_pattern=r"^.")
    assert ds.samples and all(s.subject == s.image_path.stem[0] for s in ds.samples), \
        [(s.name, s.subject) for s in ds.samples]


def test_subject_pattern_that_matches_no_name_is_refused(tmp_path: Path) -> None:
    root = make_folders(tmp_path / "f")
    with pytest.raises(UltrasegError, match=r"matches none of the 3 file names.*'1_1'"):
        scan_dataset(root, subject_pattern=r"^(\d+)-")        # a '-' typed for the '_'


def test_subject_pattern_that_misses_some_names_keeps_their_layout_subject(tmp_path) -> None:
    root = make_folders(tmp_path / "f")                       # 1_1, 1_2, 2_1: subjects 1, 1, 2
    pattern = r"^2_(\d+)"                                      # matches 2_1 only, giving '1'
    with ultraseg_warnings() as warned:
        ds, _ = scan_dataset(root, subject_pattern=pattern)
    assert {s.name: s.subject for s in ds.samples} == {"1_1": "1", "1_2": "1", "2_1": "1"}
    assert [r.getMessage() for r in warned] == [
        f"--subject-pattern {pattern!r} does not match 2 of 3 file names (first: '1_1'); "
        "those keep the layout's own subject"]


def test_missing_folder_is_a_data_error(tmp_path: Path) -> None:
    with pytest.raises(DataError) as e:
        scan_dataset(tmp_path / "nope")
    assert "nope" in str(e.value)


# ------------------------------------------------------------------ real data
def test_the_real_datasets_folder_can_be_named_in_the_environment(tmp_path, monkeypatch):
    """The real-data tests read ``../shared/datasets`` beside the repository alone, so a
    clone elsewhere skipped every one of them (a review): ``ULTRASEG_DATASETS`` names the
    folder, and a skip names both."""
    import conftest

    (tmp_path / "busi").mkdir()
    monkeypatch.setenv("ULTRASEG_DATASETS", str(tmp_path))
    try:
        found = conftest.shared_dataset("busi")
    except pytest.skip.Exception as e:     # (a skip here is the failure: the folder is there)
        pytest.fail(f"ULTRASEG_DATASETS not read: {e}")
    assert found == tmp_path / "busi"
    monkeypatch.setenv("ULTRASEG_DATASETS", str(tmp_path / "nowhere"))
    with pytest.raises(pytest.skip.Exception) as skipped:
        conftest.shared_datasets()
    assert str(tmp_path / "nowhere") in str(skipped.value)
    assert "ULTRASEG_DATASETS" in str(skipped.value)


REAL_LAYOUTS = {"busi": "busi", "nerve": "folders", "hc18": "hc18", "kaggle_nerve_sample": "kaggle"}


@pytest.mark.realdata
@pytest.mark.parametrize("name", sorted(REAL_LAYOUTS))
def test_real_autodetect(name: str) -> None:
    assert detect_layout(shared_dataset(name)) == REAL_LAYOUTS[name]


@pytest.mark.realdata
def test_real_busi(real_inspect) -> None:
    report, problems = real_inspect("busi")
    assert [str(p) for p in problems] == []
    assert report["layout"] == "busi"
    assert report["pairs"] == 624 and report["unlabelled"] == 0
    assert report["empty_masks"] == 106
    assert report["subjects"] == 624  # BUSI names no patients: one subject per image
    assert report["classes"] == {"benign": 350, "malignant": 168, "normal": 106}
    assert 0 < report["foreground_fraction_mean"] < 0.5
    assert report["outline_masks_count"] == 0     # solid lesions: no outline warning


@pytest.mark.realdata
def test_real_busi_multi_mask_union() -> None:
    ds, _ = scan_dataset(shared_dataset("busi"))
    multi = [s for s in ds.samples if len(s.mask_paths) > 1]
    assert multi, "BUSI has images with _mask_1.png"
    assert all(p.name.endswith("_mask_1.png") for s in multi for p in s.mask_paths[1:2])
    checked = 0
    for s in multi:
        parts = [read_mask(p) > 0 for p in s.mask_paths]
        union = np.logical_or.reduce(parts)
        if all((union & ~p).any() for p in parts):  # every file adds pixels of its own
            image, mask = s.load()
            assert image.ndim == 2 and image.dtype == np.uint8  # RGB PNG became gray
            assert np.array_equal(mask > 0, union)
            checked += 1
    assert checked >= 1


@pytest.mark.realdata
def test_real_nerve(real_inspect) -> None:
    report, problems = real_inspect("nerve")
    assert [str(p) for p in problems] == []
    assert report["layout"] == "folders"
    assert report["pairs"] == 1920 and report["subjects"] == 39 and report["empty_masks"] == 0
    assert report["image_size_min"] == report["image_size_max"] == [256, 256]
    assert report["outline_masks_count"] == 0


@pytest.mark.realdata
def test_real_hc18(real_inspect) -> None:
    report, problems = real_inspect("hc18")
    assert [str(p) for p in problems] == []
    assert report["layout"] == "hc18"
    assert report["pairs"] == 371 and report["subjects"] == 300 and report["empty_masks"] == 0
    # solid heads, not one-pixel outlines: several percent of the frame each
    assert report["foreground_fraction_mean"] > 0.05


@pytest.mark.realdata
def test_real_hc18_filled_mask_and_pixel_size() -> None:
    ds, _ = scan_dataset(shared_dataset("hc18"))
    by_name = {s.name: s for s in ds.samples}
    s = by_name["000_HC"]
    assert s.subject == "000"
    assert s.meta["pixel_size_mm"] == pytest.approx(0.069135804)
    assert s.meta["hc_mm"] == pytest.approx(44.3)
    assert all("pixel_size_mm" in x.meta for x in ds.samples)
    for name in ("000_HC", "019_2HC", "001_HC"):
        x = by_name[name]
        image, mask = x.load()
        outline = read_mask(x.mask_paths[0]) > 0
        assert mask.shape == image.shape and set(np.unique(mask)) == {0, 1}
        assert mask.sum() > 10 * outline.sum()
        ys, xs = np.nonzero(outline)
        assert mask[int(round(ys.mean())), int(round(xs.mean()))] == 1
        # a filled ellipse of circumference HC has about the area of a circle HC long
        area_mm2 = mask.sum() * x.meta["pixel_size_mm"] ** 2
        assert area_mm2 / (x.meta["hc_mm"] ** 2 / (4 * np.pi)) == pytest.approx(1.0, abs=0.1)


@pytest.mark.realdata
def test_real_hc18_annotations_look_like_outlines(real_inspect) -> None:
    """What inspect, train and evaluate warn about where HC18's annotations are read unfilled
    (another layout): each closed one looks like an outline; filled (the hc18 layout) none."""
    from ultraseg.preprocess import looks_like_outline

    ds, _ = scan_dataset(shared_dataset("hc18"))
    for s in ds.labelled[:40]:
        assert looks_like_outline(read_mask(s.mask_paths[0]) > 0), s.name
    assert real_inspect("hc18")[0]["outline_masks_count"] == 0


@pytest.mark.realdata
def test_real_kaggle_sample(real_inspect) -> None:
    report, problems = real_inspect("kaggle_nerve_sample")
    assert [str(p) for p in problems] == []
    assert report["layout"] == "kaggle"
    assert report["pairs"] == 1 and report["unlabelled"] == 1
    assert report["image_size_min"] == report["image_size_max"] == [580, 420]
    assert report["outline_masks_count"] == 0
    ds, _ = scan_dataset(shared_dataset("kaggle_nerve_sample"))
    lab = ds.labelled[0]
    image, mask = lab.load()  # LZW-compressed TIFF
    assert image.shape == (420, 580) and image.std() > 5
    assert set(np.unique(mask)) <= {0, 1} and mask.any()
    assert ds.unlabelled[0].load_image().shape == (420, 580)


@pytest.mark.realdata
def test_real_forced_layout() -> None:
    root = shared_dataset("kaggle_nerve_sample")
    ds, problems = scan_dataset(root, layout="images")
    assert ds.layout == "images" and len(ds.samples) == 3 and not ds.labelled and not problems
    ds, problems = scan_dataset(root, layout="kaggle")
    assert ds.layout == "kaggle" and len(ds.samples) == 2


# ------------------------------------------------------------------ files a layout must not drop
def _pairs(root: Path) -> tuple[dict[str, tuple[str, ...]], list[str]]:
    ds, problems = scan_dataset(root)
    assert ds.layout == "folders"
    return ({s.name: tuple(p.name for p in s.mask_paths) for s in ds.samples},
            [str(p) for p in problems])


@pytest.mark.parametrize("images, masks", [("images", "images"), ("Images", "Masks"),
                                           ("images", "mask"), ("IMAGES", "MASKS")])
def test_folders_finds_masks_beside_the_images_or_in_a_differently_spelt_folder(
        tmp_path: Path, images: str, masks: str) -> None:
    """Masks beside their images (NAME_mask.EXT in images/), or in Masks/ or mask/: paired,
    not read as unlabelled frames (before, every pair was silently lost)."""
    for i, name in enumerate(["1_1", "2_1"]):
        _save(tmp_path / images / f"{name}.png", _frame(seed=i))
        _save(tmp_path / masks / f"{name}_mask.png", _disk())
    pairs, problems = _pairs(tmp_path)
    assert problems == []
    assert pairs == {"1_1": ("1_1_mask.png",), "2_1": ("2_1_mask.png",)}


def test_folders_names_a_subfolder_it_does_not_read(tmp_path: Path) -> None:
    root = make_folders(tmp_path / "f")
    _save(root / "images" / "b2" / "4_1.png", _frame())
    _save(root / "masks" / "b2" / "4_1_mask.png", _disk())
    _save(root / "images" / ".ipynb_checkpoints" / "x.png", _frame())   # hidden: not named
    pairs, problems = _pairs(root)
    assert sorted(pairs) == ["1_1", "1_2", "2_1"]
    assert len(problems) == 2, problems
    for folder, problem in zip(("images", "masks"), problems):
        assert str(Path(folder) / "b2") in problem and "1 image file" in problem, problem
        assert "not read" in problem


def test_folders_warns_about_images_beside_its_images_folder(tmp_path: Path) -> None:
    """A folder of scans that also holds an images/ subfolder read only the subfolder, without
    a word about the scans."""
    root = make_folders(tmp_path / "f")
    _save(root / "scan.png", _frame(seed=9))
    with ultraseg_warnings() as warned:
        pairs, problems = _pairs(root)
    assert len(pairs) == 3 and problems == []
    assert len(warned) == 1 and "1 image files beside images/" in warned[0].getMessage()
    message = warned[0].getMessage()
    # labelled: --layout images would read the masks as images to predict and find no pairs
    # to train on (a review followed it); the advice is to move the scan, or name it alone
    assert "--layout images" not in message and "move" in message, message
    (root / "scan.png").rename(tmp_path / "scan.png")          # followed: moved out
    with ultraseg_warnings() as warned:
        pairs, problems = _pairs(root)
    assert len(pairs) == 3 and problems == [] and warned == []
    # named alone (predict MODEL scan.png), predict reads it as a file
    assert file_sample(tmp_path / "scan.png").image_path.name == "scan.png"


def test_an_unlabelled_images_folder_beside_scans_is_told_of_layout_images(tmp_path: Path
                                                                          ) -> None:
    """A folder of scans holding an unlabelled images/ subfolder: --layout images reads them
    all, and following the warning does so."""
    for i, name in enumerate(["1_1", "1_2"]):
        _save(tmp_path / "f" / "images" / f"{name}.png", _frame(seed=i))
    _save(tmp_path / "f" / "scan.png", _frame(seed=9))
    with ultraseg_warnings() as warned:
        ds, _ = scan_dataset(tmp_path / "f", needs_labels=False)
    assert ds.layout == "folders" and len(ds.samples) == 2
    assert any("--layout images" in w.getMessage() for w in warned), warned
    ds, problems = scan_dataset(tmp_path / "f", layout="images", needs_labels=False)
    assert len(ds.samples) == 3 and problems == []


def test_folders_with_two_mask_folders_is_a_problem(tmp_path: Path) -> None:
    root = make_folders(tmp_path / "f")
    _save(root / "mask" / "1_1_mask.png", _disk())
    _, problems = _pairs(root)
    assert len(problems) == 1 and "mask, masks" in problems[0], problems


def test_hc18_table_saved_with_a_byte_order_mark(tmp_path: Path) -> None:
    """Excel's "CSV UTF-8" starts the file with a BOM; the first column is still 'filename'."""
    root = make_hc18(tmp_path / "hc18")
    table = root / "training_set_pixel_size_and_HC.csv"
    table.write_text("\ufeff" + table.read_text(), encoding="utf-8")
    ds, problems = scan_dataset(root)
    assert problems == []
    assert [s.meta for s in ds.samples] == [{"pixel_size_mm": 0.1, "hc_mm": 30.5}] * 3


@pytest.mark.parametrize("size, hc", [("-0.1", "30.5"), ("0", "30.5"), ("nan", "30.5"),
                                      ("inf", "30.5"), ("0.1", "nan"), ("0.1", "x")])
def test_hc18_table_value_that_is_no_positive_number_is_a_problem(tmp_path: Path, size: str,
                                                                  hc: str) -> None:
    """A 0, negative or nan pixel size made every mm figure of the frame nonsense (and a
    negative one crashed measure after predicting); each bad value is a problem naming its
    line, and the other rows keep their values."""
    root = make_hc18(tmp_path / "hc18")
    table = root / "training_set_pixel_size_and_HC.csv"
    lines = table.read_text().splitlines()
    lines[2] = lines[2].replace("0.1,30.5", f"{size},{hc}")
    table.write_text("\n".join(lines) + "\n")
    ds, problems = scan_dataset(root)
    assert len(problems) == 1, problems
    assert "line 3" in str(problems[0]) and "positive number" in str(problems[0])
    assert table.name in str(problems[0])
    good = {"pixel_size_mm": 0.1, "hc_mm": 30.5}
    metas = {s.name: s.meta for s in ds.samples}
    assert metas["000_HC"] == metas["001_HC"] == good
    bad_key = "pixel_size_mm" if size != "0.1" else "hc_mm"
    assert bad_key not in metas["000_2HC"]


def test_hc18_table_that_names_none_of_the_images_is_warned_about(tmp_path: Path) -> None:
    root = make_hc18(tmp_path / "hc18")
    table = root / "training_set_pixel_size_and_HC.csv"
    table.write_text(table.read_text().replace("HC.png", "XX.png"))
    with ultraseg_warnings() as warned:
        ds, problems = scan_dataset(root)
    assert problems == [] and all(s.meta == {} for s in ds.samples)
    assert len(warned) == 1, [r.getMessage() for r in warned]
    assert "3 of 3 images" in warned[0].getMessage()
    assert "no pixel size" in warned[0].getMessage() and "--pixel-size" in warned[0].getMessage()


def test_hc18_table_header_in_another_case_is_read(tmp_path: Path) -> None:
    """'Filename' (a re-saved table) filed every row under '' and dropped all pixel sizes."""
    root = make_hc18(tmp_path / "hc18")
    table = root / "training_set_pixel_size_and_HC.csv"
    table.write_text(table.read_text().replace("filename,", " Filename ,", 1))
    ds, problems = scan_dataset(root)
    assert problems == []
    assert [s.meta for s in ds.samples] == [{"pixel_size_mm": 0.1, "hc_mm": 30.5}] * 3
    table.write_text(table.read_text().replace(" Filename ,", "image,", 1))
    _, problems = scan_dataset(root)
    assert len(problems) == 1 and "'filename' column" in str(problems[0])


@pytest.mark.parametrize("pattern, subjects", [
    (r"^(\d)_(\d)?", ["1", "1", "2"]),           # group 1 always takes part
    (r"^x(\d)?|^(\d)", ["1", "1", "2"]),        # group 1 never does: the first group that does
    (r"^\d*(?=_)", ["1", "1", "2"]),            # no group: the whole match
])
def test_subject_pattern_takes_the_first_group_that_matched(tmp_path: Path, pattern: str,
                                                             subjects: list[str]) -> None:
    ds, _ = scan_dataset(make_folders(tmp_path / "f"), subject_pattern=pattern)
    assert [s.subject for s in ds.samples] == subjects


def test_subject_pattern_that_matches_an_empty_string_is_a_miss(tmp_path: Path) -> None:
    """An empty match would put every such name in one subject named ''."""
    with pytest.raises(UltrasegError, match="matches none"):
        scan_dataset(make_folders(tmp_path / "f"), subject_pattern=r"^[a-z]*")


def test_busi_ignores_hidden_files(tmp_path: Path) -> None:
    """macOS leaves ._NAME AppleDouble files on exFAT and network copies."""
    root = make_busi(tmp_path / "busi")
    _save(root / "benign" / "images" / "._benign (1).png", _frame())
    _save(root / "benign" / "mask" / "._benign (1)_mask.png", _disk())
    _save(root / "normal" / "images" / "._normal (3).png", _frame())
    ds, problems = scan_dataset(root)
    assert problems == [] and len(ds.samples) == 4
    assert not any(s.name.startswith(".") for s in ds.samples)


@pytest.mark.parametrize("ext", [".tiff", ".TIF", ".Tiff"])
def test_kaggle_detected_with_any_tiff_spelling(tmp_path: Path, ext: str) -> None:
    for i, name in enumerate(["1_1", "3_2"]):
        _save(tmp_path / "train" / f"{name}{ext}", _frame(seed=i), format="TIFF")
        _save(tmp_path / "train" / f"{name}_mask{ext}", _disk(), format="TIFF")
    ds, problems = scan_dataset(tmp_path)
    assert ds.layout == "kaggle" and problems == [] and len(ds.labelled) == 2


def test_a_folder_that_fits_two_layouts_is_warned_about(tmp_path: Path) -> None:
    root = make_kaggle(tmp_path / "k")
    make_folders(root)
    with ultraseg_warnings() as warned:
        ds, _ = scan_dataset(root)
    assert ds.layout == "kaggle"
    assert len(warned) == 1
    assert "also fits the 'folders' layout" in warned[0].getMessage()
    assert "--layout" in warned[0].getMessage()
    ds, _ = scan_dataset(root, layout="folders")              # forcing one: no warning needed
    assert ds.layout == "folders"


@pytest.mark.parametrize("layout", ["folders", "busi", "images"])
def test_a_link_whose_target_is_missing_is_named_not_dropped(tmp_path: Path, layout: str) -> None:
    """A dead symlink for an image was dropped in silence (images layout) or blamed on its
    mask ('mask without an image'); it is now a sample whose reading says what is wrong."""
    from ultraseg.inspection import inspect_dataset

    root = BUILDERS[layout](tmp_path / layout)
    dead = {"folders": root / "images" / "9_9.png",
            "busi": root / "benign" / "images" / "benign (9).png",
            "images": root / "dead.png"}[layout]
    dead.symlink_to(tmp_path / "nowhere.png")
    if layout == "folders":
        _save(root / "masks" / "9_9_mask.png", _disk())
    if layout == "busi":
        _save(root / "benign" / "mask" / "benign (9)_mask.png", _disk())
    _, problems = inspect_dataset(root)
    assert [str(p) for p in problems] == [f"{dead}: broken link: its target is missing"]


@pytest.mark.parametrize("stems, warns", [
    (["patientA_001", "patientA_002", "patientB_001", "patientB_002"], True),
    (["1_1", "1_2", "2_1", "2_2"], False),                # SUBJECT_FRAME: subjects found
    (["cat", "dog", "owl", "yak"], False),                # nothing shared
])
def test_frames_that_are_their_own_subject_but_share_a_name_are_warned_about(
        tmp_path, stems, warns) -> None:
    """patientB_001 and patientB_002 carry no leading subject number, so each was its own
    subject and the split put one patient's frames on both sides, without a word."""
    for stem in stems:
        _save(tmp_path / "d" / "images" / f"{stem}.png", _frame())
        _save(tmp_path / "d" / "masks" / f"{stem}_mask.png", (_disk() * 255).astype(np.uint8))
    with ultraseg_warnings() as warned:
        samples, _ = scan_dataset(tmp_path / "d")
    said = [r.getMessage() for r in warned if "own subject" in r.getMessage()]
    assert bool(said) == warns, said
    if warns:
        assert "4 names differ only in a trailing number" in said[0]
        assert "--subject-pattern" in said[0]
        import re
        pattern = re.search(r"e\.g\. '([^']+)'\)", said[0]).group(1)
        ds, _ = scan_dataset(tmp_path / "d", subject_pattern=pattern)
        assert {s.subject for s in ds.labelled} == {"patientA", "patientB"}   # as suggested


def test_frames_that_differ_only_in_a_side_tag_are_warned_about(tmp_path) -> None:
    """BUS-BRA names a patient's views bus_0001-l and bus_0001-r (a trailing side letter, not
    a number): each was its own subject, the split put one patient's breasts on both sides,
    and nothing said so. The pattern suggested groups them."""
    stems = ["bus_0001-l", "bus_0001-r", "bus_0002-l", "bus_0002-r", "bus_0003-s"]
    for stem in stems:
        _save(tmp_path / "d" / "images" / f"{stem}.png", _frame())
        _save(tmp_path / "d" / "masks" / f"{stem}_mask.png", (_disk() * 255).astype(np.uint8))
    with ultraseg_warnings() as warned:
        scan_dataset(tmp_path / "d")
    said = [r.getMessage() for r in warned if "own subject" in r.getMessage()]
    assert len(said) == 1, said
    assert "4 names differ only in a trailing tag" in said[0] and "bus_0001" in said[0]
    import re
    pattern = re.search(r"e\.g\. '([^']+)'\)", said[0]).group(1)
    ds, _ = scan_dataset(tmp_path / "d", subject_pattern=pattern)
    assert {s.subject for s in ds.labelled} == {"bus_0001", "bus_0002", "bus_0003"}
    # predict and measure (needs_labels=False) draw no split: following it there changed
    # nothing (a review), so they are not told
    with ultraseg_warnings() as warned:
        scan_dataset(tmp_path / "d", needs_labels=False)
    assert not [r for r in warned if "own subject" in r.getMessage()], warned


_DATED = [f"{d}_patient{p}_{f:02d}" for d in ("20240105", "20240212") for p in (1, 2, 3)
          for f in (1, 2)]


@pytest.mark.parametrize("stems, said, patients", [
    # a clinic's export, DATE_PATIENT_FRAME: the leading number is the scan date
    (_DATED, ["read as dates", "'patient1' under 2"], {"patient1", "patient2", "patient3"}),
    # DATE_FRAME: nothing in the name to take instead
    ([f"{d}_{f:02d}" for d in ("20240105", "19991231") for f in (1, 2)],
     ["the 2 subjects found read as dates", "images/PATIENT/",
      "name the files N_FRAME, N the patient's number, or use --subject-pattern"], None),
    (["20240105_01", "20240105_02"],
     ["the subject found, '20240105', reads as a date (YYYYMMDD)"], None),
    # an identifier repeated under several leading numbers that are no dates
    ([f"{s}_pt{p}_{f}" for s in (1, 2) for p in (7, 8) for f in (1, 2)],
     ["'pt7' under 2"], {"pt7", "pt8"}),
    # ... under some of 4 patients' numbers: a patient's identifier, still
    ([f"{s}_pt{7 + (s > 2)}_{f}" for s in (1, 2, 3, 4) for f in (1, 2)],
     ["'pt7' under 2"], {"pt7", "pt8"}),
    # views (CAMUS) or levels under every patient's number: no patients, no warning (its
    # pattern would have grouped the frames by view)
    ([f"{s}_{v}_{p}" for s in range(1, 11) for v in ("2CH", "4CH") for p in ("ED", "ES")],
     None, None),
    ([f"{s}_L{v}_{f:02d}" for s in range(1, 5) for v in (1, 2, 3) for f in (1, 2)], None, None),
    # visits, each scanning the same patients (5 under each of 3 numbers): more identifiers
    # than numbers, so patients, not views
    ([f"{v}_pt{p}_{f}" for v in (1, 2, 3) for p in range(1, 6) for f in (1, 2)],
     ["5 identifiers", "'pt1' under 3"], {f"pt{p}" for p in range(1, 6)}),
    # views on 4 dates: the dates are said, the view is no patient (no pattern by view)
    ([f"{d}_{v}_{p}" for d in ("20240105", "20240212", "20240301", "20240415")
      for v in ("2CH", "4CH") for p in ("ED", "ES")],
     ["the 4 subjects found read as dates", "images/PATIENT/"], None),
    (["1_1", "1_2", "2_1", "2_2"], None, None),               # Kaggle nerve's SUBJECT_FRAME
    (["12345678_1", "12345678_2", "87654321_1"], None, None),  # 8 digits that read as no date
    (["20241399_1", "20241399_2", "20240230_1"], None, None),  # ... nor these
    (["1_frame_01", "1_frame_02", "2_frame_01"], None, None),  # a word, no identifier
])
def test_leading_numbers_that_look_like_dates_or_hide_a_patient_are_warned_about(
        tmp_path, stems, said, patients) -> None:
    """20240105_patient1_01.png: the leading integer, a scan date, was taken for the subject in
    silence, and each patient scanned on two dates had frames on both sides of the split. The
    subjects stay as they were (splits of existing sets must not move); a warning says so and
    suggests a --subject-pattern that takes the patient."""
    for stem in stems:
        _save(tmp_path / "d" / "images" / f"{stem}.png", _frame())
        _save(tmp_path / "d" / "masks" / f"{stem}_mask.png", _disk())
    with ultraseg_warnings() as warned:
        ds, _ = scan_dataset(tmp_path / "d")
    assert {s.subject for s in ds.labelled} == {s.split("_")[0] for s in stems}   # as before
    found = [r.getMessage() for r in warned if "leading number" in r.getMessage()]
    if said is None:
        assert not found, found
        return
    assert len(found) == 1, found
    assert all(words in found[0] for words in said), found[0]
    if patients is not None:
        pattern = re.search(r"e\.g\. '([^']+)'\)", found[0]).group(1)
        ds, _ = scan_dataset(tmp_path / "d", subject_pattern=pattern)
        assert {s.subject for s in ds.labelled} == patients          # as suggested
    # predict and measure draw no split: not told
    with ultraseg_warnings() as warned:
        scan_dataset(tmp_path / "d", needs_labels=False)
    assert not [r for r in warned if "leading number" in r.getMessage()], warned


def test_the_images_layout_leaves_hidden_folders_out(tmp_path) -> None:
    """A thumbnail cache (.cache/thumb.jpg) below a folder of scans was predicted as a frame;
    the other layouts and the output-folder check skip hidden folders."""
    _save(tmp_path / "scans" / "a.png", _frame())
    _save(tmp_path / "scans" / ".cache" / "thumb.png", _frame(seed=1))
    _save(tmp_path / "scans" / "sub" / ".hidden" / "x.png", _frame(seed=2))
    ds, problems = scan_dataset(tmp_path / "scans", "images")
    assert [s.name for s in ds.samples] == ["a"] and problems == []


def test_images_named_like_masks_in_an_unlabelled_folder_are_warned_about(tmp_path) -> None:
    """Read as unlabelled images (here: forced), a folder of 1_1.png + 1_1_mask.png had its
    masks predicted as frames (1_1_mask_mask.png) without a word; --layout kaggle pairs them."""
    for stem in ("1_1", "1_2"):
        _save(tmp_path / "flat" / f"{stem}.png", _frame())
        _save(tmp_path / "flat" / f"{stem}_mask.png", (_disk() * 255).astype(np.uint8))
    with ultraseg_warnings() as warned:
        ds, _ = scan_dataset(tmp_path / "flat", "images")
    assert ds.layout == "images"
    said = [r.getMessage() for r in warned if "named like masks" in r.getMessage()]
    assert len(said) == 1 and "2 of the 4 images" in said[0] and "--layout kaggle" in said[0]
    paired, _ = scan_dataset(tmp_path / "flat", "kaggle")
    assert len(paired.labelled) == 2                     # as the warning says


def test_images_named_like_masks_in_a_subfolder_name_the_folder_that_pairs_them(tmp_path
                                                                                ) -> None:
    """F/sub/{NAME, NAME_mask}.png read from F said '--layout kaggle pairs a folder of NAME
    and NAME_mask files'; `--layout kaggle` on F then found no kaggle files (a review): the
    pairs are in F/sub, which the warning now names."""
    sub = tmp_path / "F" / "sub"
    for stem in ("1_1", "1_2"):
        _save(sub / f"{stem}.png", _frame())
        _save(sub / f"{stem}_mask.png", (_disk() * 255).astype(np.uint8))
    _save(tmp_path / "F" / "loose.png", _frame(seed=3))
    with ultraseg_warnings() as warned:
        scan_dataset(tmp_path / "F")
    (said,) = [r.getMessage() for r in warned if "named like masks" in r.getMessage()]
    assert f"{sub} holds them" in said, said
    paired, _ = scan_dataset(sub, "kaggle")
    assert len(paired.labelled) == 2                     # as the warning says


def test_a_folder_beside_a_labelled_set_is_not_sent_to_it(tmp_path) -> None:
    """d/original/ (other scans) beside d/images/ + d/masks/ was told 'd holds a 'folders'
    dataset: point at it' since folder names are read by the words in them ('original' names
    an images folder): following it predicts d/images, never original/ (a fresh-eyes read).
    The set is named only where the folder given holds part of it."""
    for stem in ("1_1", "1_2"):
        _save(tmp_path / "d" / "images" / f"{stem}.png", _frame())
        _save(tmp_path / "d" / "masks" / f"{stem}_mask.png", (_disk() * 255).astype(np.uint8))
    _save(tmp_path / "d" / "original" / "scan.png", _frame(seed=5))
    from ultraseg.io import dataset_above_hint

    with ultraseg_warnings() as warned:
        ds, _ = scan_dataset(tmp_path / "d" / "original")
    assert [s.name for s in ds.samples] == ["scan"]
    assert not [r.getMessage() for r in warned if "point at" in r.getMessage()]
    # (predict's overlay asks the same, an image without its mask no problem for it)
    assert dataset_above_hint(tmp_path / "d" / "original", needs_labels=False) == ""
    with ultraseg_warnings() as warned:
        scan_dataset(tmp_path / "d" / "images")
    assert any("holds a 'folders' dataset: point at it" in r.getMessage() for r in warned)
    assert dataset_above_hint(tmp_path / "d" / "images", needs_labels=False).endswith(
        "holds a 'folders' dataset: point at it")


def test_masks_apart_from_their_images_are_not_said_to_be_beside_them(tmp_path) -> None:
    """images/ + masks/NAME_mask.png read with --layout images said 'k/masks holds them beside
    their images: point at it': masks/ holds the masks alone, and pointing at it reads masks
    as images (a fresh-eyes read). No folder is named where no mask sits beside its image."""
    for stem in ("1_1", "1_2", "1_3"):
        _save(tmp_path / "k" / "images" / f"{stem}.png", _frame())
        _save(tmp_path / "k" / "masks" / f"{stem}_mask.png", (_disk() * 255).astype(np.uint8))
    with ultraseg_warnings() as warned:
        scan_dataset(tmp_path / "k", "images")
    (said,) = [r.getMessage() for r in warned if "named like masks" in r.getMessage()]
    assert "point at" not in said and "beside their images" not in said, said


@pytest.mark.parametrize("ext", [".png", ".jpg", ".bmp"])
def test_a_flat_folder_of_name_and_name_mask_pairs_is_read_labelled(tmp_path, ext) -> None:
    """A flat folder of NAME.png + NAME_mask.png (the Kaggle naming in another format) was
    detected as unlabelled images: train found no labelled samples, predict segmented the
    masks as frames. It is now the kaggle layout, paired, with subjects from the names."""
    for i, stem in enumerate(("1_1", "1_2", "2_1")):
        _save(tmp_path / "flat" / f"{stem}{ext}", _frame(seed=i))
        _save(tmp_path / "flat" / f"{stem}_mask.png", _disk())
    ds, problems = scan_dataset(tmp_path / "flat")
    assert ds.layout == "kaggle" and problems == []
    assert [(s.name, s.subject) for s in ds.labelled] == [("1_1", "1"), ("1_2", "1"), ("2_1", "2")]
    assert not ds.unlabelled


def test_a_lone_mask_named_file_does_not_make_a_folder_labelled(tmp_path) -> None:
    """Only a NAME_mask beside its NAME pairs: a folder of scans that happens to hold one
    file named like a mask (and no partner) stays a folder of images."""
    _save(tmp_path / "scans" / "a.png", _frame())
    _save(tmp_path / "scans" / "b_mask.png", _frame(seed=1))
    assert detect_layout(tmp_path / "scans") == "images"


def test_a_flat_pairs_folder_names_images_in_its_subfolders(tmp_path) -> None:
    """The folder reads its own files: images in a subfolder are named, not dropped in
    silence (as the folders layout does); a test/ folder beside the pairs is read as test."""
    for stem in ("1_1", "1_2"):
        _save(tmp_path / "flat" / f"{stem}.png", _frame())
        _save(tmp_path / "flat" / f"{stem}_mask.png", _disk())
    _save(tmp_path / "flat" / "test" / "7.png", _frame())
    ds, problems = scan_dataset(tmp_path / "flat")
    assert problems == [] and [s.name for s in ds.unlabelled] == ["7"]
    _save(tmp_path / "flat" / "more" / "3_1.png", _frame())
    _, problems = scan_dataset(tmp_path / "flat")
    assert [p.path for p in problems] == [str(tmp_path / "flat" / "more")]
    assert "1 image file in a subfolder, not read" in str(problems[0])


@pytest.mark.parametrize("folder", ["labels", "Labels", "gt", "annotations"])
def test_the_folders_layout_takes_other_usual_names_for_its_masks(tmp_path, folder) -> None:
    """images/ + labels/ (or gt/, annotations/) was read as unlabelled: train found no
    labelled samples. Those names are now the masks folder."""
    for i, stem in enumerate(("1_1", "2_1")):
        _save(tmp_path / "d" / "images" / f"{stem}.png", _frame(seed=i))
        _save(tmp_path / "d" / folder / f"{stem}.png", _disk())
    ds, problems = scan_dataset(tmp_path / "d")
    assert ds.layout == "folders" and problems == [] and len(ds.labelled) == 2


def test_a_labels_folder_without_images_leaves_the_masks_folder_alone(tmp_path) -> None:
    """A labels/ of text files (detection boxes) beside masks/ is no second masks folder."""
    root = make_folders(tmp_path / "d")
    (root / "labels").mkdir()
    (root / "labels" / "1_1.txt").write_text("0 0.5 0.5 0.2 0.2\n")
    ds, problems = scan_dataset(root)
    assert problems == [] and len(ds.labelled) == 3
    _save(root / "labels" / "1_1.png", _disk())       # masks/ before the other names, said
    with ultraseg_warnings() as warned:
        ds, problems = scan_dataset(root)
    assert problems == [] and len(ds.labelled) == 3
    assert [r.getMessage() for r in warned] == [f"{root}: read masks/ as the masks; labels/ "
                                                f"not read"]
    _save(root / "mask" / "1_1.png", _disk())          # two of the usual names: which?
    _, problems = scan_dataset(root)
    assert len(problems) == 1 and "several mask folders: mask, masks" in str(problems[0])


@pytest.mark.parametrize("folder", ["masks", "labels"])
def test_a_masks_folder_predict_wrote_is_no_ground_truth(tmp_path, folder) -> None:
    """`predict DATA --out DATA/labels` (or DATA/masks) on a folder of images: the next scan
    read the predictions as ground truth, and evaluate scored the model against itself
    (Dice 1.0). A folder ultraseg marked as its output is left out, with a warning."""
    from ultraseg.io.outputs import mark_output_folder

    root = tmp_path / "scans"
    (root / folder).mkdir(parents=True)
    mark_output_folder(root / folder, "predict/measure")
    for i, stem in enumerate(("1_1", "2_1")):
        _save(root / "images" / f"{stem}.png", _frame(seed=i))
        _save(root / folder / f"{stem}_mask.png", _disk())
    with ultraseg_warnings() as warned:
        ds, problems = scan_dataset(root)
    assert problems == [] and not ds.labelled and len(ds.unlabelled) == 2
    assert any("predictions, not read as ground truth" in r.getMessage() for r in warned)


def test_a_train_and_test_split_of_png_pairs_is_not_read_as_the_kaggle_layout(tmp_path) -> None:
    """train/ + test/ of NAME.png + NAME_mask.png was detected as kaggle: test/'s masks were
    read as frames to predict (1_6_mask_mask.png, rows in a submission) and evaluate scored
    the training frames alone. Only the competition's TIFFs make train/ kaggle; a flat folder
    of pairs does, where a test/ holding masks is a problem."""
    for split, stems in (("train", ("1_1", "1_2")), ("test", ("2_1",))):
        for stem in stems:
            _save(tmp_path / "tt" / split / f"{stem}.png", _frame())
            _save(tmp_path / "tt" / split / f"{stem}_mask.png", _disk())
    assert detect_layout(tmp_path / "tt") != "kaggle"
    flat = tmp_path / "tt" / "train"
    _save(flat / "test" / "2_1.png", _frame())
    _save(flat / "test" / "2_1_mask.png", _disk())
    ds, problems = scan_dataset(flat)
    assert ds.layout == "kaggle" and len(ds.labelled) == 2
    assert [Path(p.path).name for p in problems] == ["2_1_mask.png"]
    assert "a mask in test/" in str(problems[0])


def test_a_competition_folder_in_png_is_the_kaggle_layout_and_a_val_beside_it_is_named(
        tmp_path) -> None:
    """train/ of PNG pairs with an unlabelled test/ (the competition's layout in another
    format) was detected as kaggle before the fix above narrowed it to flat folders; it is
    again, where test/ holds no masks. A val/ beside them, which this layout does not read,
    is named rather than left out in silence."""
    root = tmp_path / "kp"
    for stem in ("1_1", "1_2"):
        _save(root / "train" / f"{stem}.png", _frame())
        _save(root / "train" / f"{stem}_mask.png", _disk())
    _save(root / "test" / "1.png", _frame())
    ds, problems = scan_dataset(root)
    assert ds.layout == "kaggle" and problems == []
    assert len(ds.labelled) == 2 and [s.name for s in ds.unlabelled] == ["1"]
    _save(root / "val" / "2_1.png", _frame())
    _save(root / "val" / "2_1_mask.png", _disk())
    _, problems = scan_dataset(root)
    assert [p.path for p in problems] == [str(root / "val")]
    assert "2 image files in a subfolder, not read" in str(problems[0])


def test_a_flat_folder_with_several_masks_per_image_unites_them(tmp_path) -> None:
    """One BUSI class folder as distributed (images and masks together, NAME_mask_1.png for a
    second lesion): the extra masks were 'images without a mask'. They join their image's."""
    root = tmp_path / "benign"
    _save(root / "benign (1).png", _frame())
    _save(root / "benign (1)_mask.png", _disk(cx=8, r=3))
    _save(root / "benign (1)_mask_1.png", _disk(cx=24, r=3))
    _save(root / "benign (2).png", _frame(seed=1))
    _save(root / "benign (2)_mask.png", _disk())
    ds, problems = scan_dataset(root)
    assert ds.layout == "kaggle" and problems == []
    first = ds.labelled[0]
    assert [p.name for p in first.mask_paths] == ["benign (1)_mask.png", "benign (1)_mask_1.png"]
    assert first.load()[1].sum() == ((_disk(cx=8, r=3) | _disk(cx=24, r=3)) > 0).sum()


def test_the_folders_layout_unites_several_masks_and_names_two_of_one_part(tmp_path) -> None:
    """The folders layout paired through its own suffix rule: NAME_mask_1 beside NAME_mask
    was an image without a mask, while the kaggle and busi layouts united them. One grouping
    now serves the three; two files for one mask (masks/1_1.png and images/1_1_mask.png) are
    still named."""
    root = make_folders(tmp_path / "d")
    _save(root / "masks" / "1_1_mask_1.png", _disk(cx=24, r=3))
    ds, problems = scan_dataset(root)
    assert problems == [] and len(ds.labelled) == 3
    first = next(s for s in ds.labelled if s.name == "1_1")
    assert [p.name for p in first.mask_paths] == ["1_1_mask.png", "1_1_mask_1.png"]
    _save(root / "images" / "1_2_mask.png", _disk())         # a second mask of 1_2
    _, problems = scan_dataset(root)
    assert len(problems) == 1 and "two masks share the name '1_2'" in str(problems[0])


def test_linked_subfolders_are_read_once_and_hidden_ones_in_busi_not_at_all(tmp_path) -> None:
    """Path.rglob does not follow linked folders: a scan folder holding a link to another
    lost that folder's frames without a word, and a BUSI copy whose class folders link to
    images/ and mask/ elsewhere was an empty folder. BUSI read hidden subfolders, which the
    other layouts leave out (a notebook's checkpoint copy was an image without a mask)."""
    _save(tmp_path / "other" / "b.png", _frame(seed=1))
    _save(tmp_path / "other" / "c.png", _frame(seed=2))
    _save(tmp_path / "scans" / "a.png", _frame())
    (tmp_path / "scans" / "sub").symlink_to(tmp_path / "other", target_is_directory=True)
    (tmp_path / "other" / "loop").symlink_to(tmp_path / "scans", target_is_directory=True)
    ds, problems = scan_dataset(tmp_path / "scans", "images")
    assert [s.name for s in ds.samples] == ["a", "sub/b", "sub/c"] and problems == []

    real = make_busi(tmp_path / "real")
    root = tmp_path / "busi"
    for cls in ("benign", "normal"):
        for part in ("images", "mask"):
            (root / cls).mkdir(parents=True, exist_ok=True)
            (root / cls / part).symlink_to(real / cls / part, target_is_directory=True)
    _save(real / "benign" / "images" / ".ipynb_checkpoints" / "benign (1)-checkpoint.png",
          _frame())
    assert detect_layout(root) == "busi"
    ds, problems = scan_dataset(root)
    assert problems == [] and len(ds.samples) == 4


def test_a_hidden_copy_of_the_pixel_size_table_is_no_table(tmp_path) -> None:
    """macOS's ._NAME copy of HC18's table (binary) was read as a table and refused the set."""
    root = make_hc18(tmp_path / "hc")
    (root / "training_set" / "._training_set_pixel_size_and_HC.csv").write_bytes(
        b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X        \xff\xfe")
    (root / "._training_set_pixel_size_and_HC.csv").write_bytes(b"\x00\x05\x16\x07\xff")
    ds, problems = scan_dataset(root)
    assert problems == [] and all(s.meta["pixel_size_mm"] == 0.1 for s in ds.samples)


def test_names_written_decomposed_and_composed_pair(tmp_path) -> None:
    """An image saved with a decomposed name (macOS: 'e' + a combining accent) and its mask
    with the composed one were an image without a mask and a mask without an image."""
    import unicodedata

    name = "1_patient café"
    _save(tmp_path / "d" / "images" / f"{unicodedata.normalize('NFD', name)}.png", _frame())
    _save(tmp_path / "d" / "masks" / f"{unicodedata.normalize('NFC', name)}_mask.png", _disk())
    ds, problems = scan_dataset(tmp_path / "d")
    assert problems == [] and len(ds.labelled) == 1
    root = make_hc18(tmp_path / "hc")          # a table's names pair alike
    for p in (root / "training_set").glob("000_HC*.png"):
        p.rename(p.with_name(p.name.replace("000_HC", unicodedata.normalize("NFD", "000_é_HC"))))
    with open(root / "training_set_pixel_size_and_HC.csv", "a", newline="") as f:
        csv.writer(f).writerow([f"{unicodedata.normalize('NFC', '000_é_HC')}.png", "0.2", "9"])
    ds, problems = scan_dataset(root)
    (head,) = [s for s in ds.samples if "é" in unicodedata.normalize("NFC", s.name)]
    assert problems == [] and head.meta == {"pixel_size_mm": 0.2, "hc_mm": 9.0}


def test_a_dataset_one_folder_down_is_pointed_at(tmp_path) -> None:
    """An archive unpacked one level down (download/Dataset_BUSI_with_GT/, mydata/ beside
    macOS's __MACOSX/) was read as unlabelled images, its masks among the frames to predict,
    without a word; training said only that nothing was labelled."""
    from ultraseg.data import load_arrays
    from ultraseg.config import PreprocessConfig

    make_folders(tmp_path / "w" / "mydata")
    _save(tmp_path / "w" / "__MACOSX" / "mydata" / "images" / "._1_1.png", _frame())
    make_busi(tmp_path / "dl" / "Dataset_BUSI_with_GT")
    for root, sub, layout in ((tmp_path / "w", "mydata", "folders"),
                              (tmp_path / "dl", "Dataset_BUSI_with_GT", "busi")):
        with ultraseg_warnings() as warned:
            ds, problems = scan_dataset(root)
        assert ds.layout == "images"
        assert any(f"{root / sub} holds a '{layout}' dataset: point at it" in r.getMessage()
                   for r in warned)
        with pytest.raises(DataError, match=f"holds a '{layout}' dataset: point at it"):
            load_arrays(ds, PreprocessConfig(size=32), cache_dir="")
    with ultraseg_warnings() as warned:                     # a plain folder of scans: no word
        scan_dataset(make_images(tmp_path / "scans"))
    assert not any("point at it" in r.getMessage() for r in warned)


def test_a_datasets_images_folder_given_for_the_dataset_is_pointed_at_its_parent(
        tmp_path) -> None:
    """`ultraseg inspect DATA/images` said only 'unlabelled images: 9, problems 0', and train
    that nothing was labelled, without naming DATA, the folder to point at."""
    from ultraseg.config import PreprocessConfig
    from ultraseg.data import load_arrays
    from ultraseg.evaluate import evaluate
    from ultraseg.predict import Predictor
    from ultraseg.config import ModelConfig

    root = make_folders(tmp_path / "nerve")
    for given in (root / "images", root / "masks"):
        with ultraseg_warnings() as warned:
            ds, _ = scan_dataset(given)
        assert ds.layout == "images"
        said = [r.getMessage() for r in warned]
        assert any(f"{root} holds a 'folders' dataset: point at it" in m for m in said), said
        assert not any("masks included" in m for m in said)
    ds, _ = scan_dataset(root / "images")
    with pytest.raises(DataError, match=f"{root} holds a 'folders' dataset: point at it"):
        load_arrays(ds, PreprocessConfig(size=32), cache_dir="")
    predictor = Predictor(lambda b: b, ModelConfig(variant="same", depth=2),
                          PreprocessConfig(size=None))
    with pytest.raises(DataError, match=r"no labelled frames to evaluate; .* point at it"):
        evaluate(predictor, root / "images")
    with ultraseg_warnings() as warned:     # a folder of scans named images, alone: no word
        scan_dataset(make_images(tmp_path / "lone" / "images"))
    assert not any("point at it" in r.getMessage() for r in warned)



def test_looking_one_level_up_says_nothing_about_the_folder_above(tmp_path,
                                                                  monkeypatch) -> None:
    """The look at DATA/images' parent logged what scanning the parent found ('1 image files
    beside images/ are not read ...'), about a folder the user never named; and '.' (the
    images folder itself) had no name to look at."""
    home = tmp_path / "home"
    _save(home / "images" / "a.png", _frame(seed=1))
    _save(home / "photo.png", _frame(seed=2))
    with ultraseg_warnings() as warned:
        scan_dataset(home / "images")
    assert [r.getMessage() for r in warned] == []    # unlabelled parent: nothing to say
    root = make_folders(tmp_path / "nerve")
    _save(root / "notes.png", _frame(seed=3))
    monkeypatch.chdir(root / "images")
    with ultraseg_warnings() as warned:
        scan_dataset(".")
    said = [r.getMessage() for r in warned]
    assert len(said) == 1 and f"{root} holds a 'folders' dataset: point at it" in said[0]


def test_a_link_to_a_folder_read_already_keeps_the_frames_real_names(tmp_path) -> None:
    """scans/latest -> 2024-06 named 2024-06's frames latest/f0 or 2024-06/f0 by the order
    the folder listed them: adding a convenience link renamed the frames and their outputs."""
    for month in ("2024-05", "2024-06"):
        for i in (0, 1):
            _save(tmp_path / "scans" / month / f"f{i}.png", _frame(seed=i))
    for name in ("latest", "0-newest"):             # before and after the real one by name
        (tmp_path / "scans" / name).symlink_to(tmp_path / "scans" / "2024-06",
                                               target_is_directory=True)
    ds, problems = scan_dataset(tmp_path / "scans", "images")
    assert problems == [] and [s.name for s in ds.samples] == [
        "2024-05/f0", "2024-05/f1", "2024-06/f0", "2024-06/f1"]


def test_the_hint_to_a_dataset_one_folder_down_leaves_ultraseg_outputs_alone(tmp_path) -> None:
    """A folder predict wrote (masks named *_mask.tif) was named as a 'kaggle' dataset to
    point at."""
    from ultraseg.io import nested_datasets
    from ultraseg.io.outputs import OUTPUT_MARKER

    make_images(tmp_path / "imgs")
    _save(tmp_path / "imgs" / "pred" / "a_mask.tif", _disk())
    (tmp_path / "imgs" / "pred" / OUTPUT_MARKER).write_text("predict")
    assert nested_datasets(tmp_path / "imgs") == []


def test_image_files_in_formats_not_read_are_counted_not_dropped_in_silence(tmp_path) -> None:
    """A folder of four frames, two of them WebP and one GIF, was predicted as one frame,
    without a word on the other three."""
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "a.png")
    for name in ("b.webp", "c.webp", "d.gif", "sub/e.jp2"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_bytes(b"not decoded: the name is enough")
    (tmp_path / "notes.txt").write_text("x")
    with ultraseg_warnings() as warned:
        ds, problems = scan_dataset(tmp_path)
    assert [s.name for s in ds.samples] == ["a"]
    said = [r.getMessage() for r in warned if "not read" in r.getMessage()]
    assert len(said) == 1, [r.getMessage() for r in warned]
    assert "4 files in formats ultraseg does not read" in said[0]
    assert ".webp 2" in said[0] and ".gif 1" in said[0] and ".jp2 1" in said[0]
    assert "notes" not in said[0] and ".txt" not in said[0]


def test_jpeg_endings_are_read_and_a_folder_of_unread_formats_says_so(tmp_path) -> None:
    """`.jfif` and `.jpe` (JPEGs Pillow reads) and `.tga` were skipped in silence, and a folder
    holding only WebP and GIF frames was 'empty folder or unknown layout' with no count."""
    frame = Image.fromarray(np.full((8, 8), 120, np.uint8))
    (tmp_path / "d").mkdir()
    for name in ("a.jfif", "b.jpe", "c.jpg"):
        frame.save(tmp_path / "d" / name, format="JPEG")
    (tmp_path / "d" / "e.tga").write_bytes(b"not decoded")
    with ultraseg_warnings() as warned:
        ds, _ = scan_dataset(tmp_path / "d")
    assert sorted(s.name for s in ds.samples) == ["a", "b", "c"]
    assert any(".tga 1" in r.getMessage() for r in warned)
    only = tmp_path / "only"
    only.mkdir()
    for name in ("x1.webp", "x2.webp", "x3.gif"):
        (only / name).write_bytes(b"not decoded")
    with pytest.raises(DataError, match=r"no images found.*3 files in formats ultraseg does "
                                        r"not read \(\.gif 1, \.webp 2\)"):
        scan_dataset(only)


def _per_patient(root: Path, frames: dict[str, list[str]], mask_suffix: str = "") -> Path:
    for p, (subject, names) in enumerate(frames.items()):
        for k, name in enumerate(names):
            _save(root / "images" / subject / f"{name}.png", _frame(seed=10 * p + k))
            _save(root / "masks" / subject / f"{name}{mask_suffix}.png", _disk(cx=10 + k))
    return root


@pytest.mark.parametrize("suffix", ["", "_mask"])
def test_the_folders_layout_reads_one_subfolder_per_patient(tmp_path, suffix) -> None:
    """images/patient0/1.png + masks/patient0/1.png was refused with advice (move the files
    up) that, followed, lost the patient: purely numeric names made each frame its own
    subject, and one patient's frames fell on both sides of the split. One subfolder per
    subject is read: samples SUBJECT/NAME, their subject the folder."""
    root = _per_patient(tmp_path / "d", {"p0": ["1", "2"], "p1": ["3", "4"]}, suffix)
    ds, problems = scan_dataset(root)
    assert ds.layout == "folders" and problems == []
    assert [(s.name, s.subject) for s in ds.labelled] == [
        ("p0/1", "p0"), ("p0/2", "p0"), ("p1/3", "p1"), ("p1/4", "p1")]
    assert ds.labelled[0].mask_paths == (root / "masks" / "p0" / f"1{suffix}.png",)
    (root / "labels").mkdir()                  # notes beside masks/: not the masks folder
    (root / "labels" / "notes.txt").write_text("p0: lesion")
    assert len(scan_dataset(root)[0].labelled) == 4
    # frames that share a name in two patients' folders stay two samples
    root = _per_patient(tmp_path / "e", {"a": ["frame0"], "b": ["frame0"]})
    ds, problems = scan_dataset(root)
    assert problems == [] and [s.name for s in ds.labelled] == ["a/frame0", "b/frame0"]
    # --subject-pattern reads the file's stem, over the folder
    ds, problems = scan_dataset(root, subject_pattern=r"^(frame)")
    assert problems == [] and {s.subject for s in ds.labelled} == {"frame"}


def test_a_mix_of_loose_and_per_patient_images_is_named_with_the_grouping_it_would_lose(
        tmp_path) -> None:
    """Files directly in images/ and in subfolders, or nested deeper, stay unread problems;
    the message no longer advises moving the files up without saying that loses the patient,
    and a masks folder that does not mirror the images' subfolders is one line."""
    root = _per_patient(tmp_path / "d", {"p0": ["1", "2"]})
    _save(root / "images" / "9.png", _frame())
    _save(root / "masks" / "9.png", _disk())
    ds, problems = scan_dataset(root)         # a stray beside the subjects: one line each
    assert [s.name for s in ds.samples] == ["p0/1", "p0/2"]
    assert [p.path for p in problems] == [str(root / "images"), str(root / "masks")]
    assert "1 image file directly in images/ (first: 9.png)" in str(problems[0])
    assert "masks/SUBJECT/NAME" in str(problems[1])

    root = _per_patient(tmp_path / "d2", {f"p{i}": ["1"] for i in range(3)})
    _save(root / "images" / "9.png", _frame())           # one stray among 30 subjects: one line
    for i in range(3, 30):
        _save(root / "images" / f"p{i}" / "1.png", _frame())
        _save(root / "masks" / f"p{i}" / "1.png", _disk())
    ds, problems = scan_dataset(root)
    assert len(ds.labelled) == 30 and len(problems) == 1, [str(p) for p in problems]
    assert "9.png" in str(problems[0])

    root = _per_patient(tmp_path / "mostly_flat", {"p0": ["1"]})
    for n in ("7", "8", "9"):
        _save(root / "images" / f"{n}.png", _frame())
        _save(root / "masks" / f"{n}.png", _disk())
    ds, problems = scan_dataset(root)    # most images loose: the subfolders are the odd ones
    assert [s.name for s in ds.samples] == ["7", "8", "9"]
    assert [p.path for p in problems] == [str(root / "images" / "p0"), str(root / "masks" / "p0")]
    assert "patient grouping" in str(problems[0]) and "SUBJECT/NAME" in str(problems[0])
    assert "move them up, or remove the subfolder" in str(problems[1])   # a masks backup
    assert "patient grouping" not in str(problems[1])

    root = _per_patient(tmp_path / "deep", {"p0": ["1"]})
    _save(root / "images" / "p1" / "x" / "2.png", _frame())
    ds, problems = scan_dataset(root)
    assert [s.name for s in ds.samples] == ["p0/1"]
    assert len(problems) == 1 and "more than one subfolder deep" in str(problems[0])

    root = _per_patient(tmp_path / "flatmasks", {"p0": ["1"], "p1": ["2"]})
    for q in sorted((root / "masks").glob("*/*.png")):
        q.rename(root / "masks" / q.name)
    ds, problems = scan_dataset(root)
    assert len(problems) == 1 and "2 image files directly in masks/" in str(problems[0])
    assert "masks/SUBJECT/NAME" in str(problems[0])


def test_the_mask_suffix_is_matched_in_any_letter_case(tmp_path) -> None:
    """NAME_Mask / NAME_MASK: the images layout's hint sent the user to --layout kaggle,
    which then called the masks themselves 'images without a mask'; in the folders layout
    every image and every mask was an orphan. The suffix is matched as the folders' names
    are, in any letter case; the image keeps its own name."""
    _save(tmp_path / "flat" / "1_a.png", _frame())
    _save(tmp_path / "flat" / "1_a_Mask.png", _disk())
    _save(tmp_path / "flat" / "1_a_MASK_1.png", _disk(cx=20, r=3))
    ds, problems = scan_dataset(tmp_path / "flat")
    assert ds.layout == "kaggle" and problems == []
    assert [(s.name, [p.name for p in s.mask_paths]) for s in ds.samples] == [
        ("1_a", ["1_a_MASK_1.png", "1_a_Mask.png"])]
    _save(tmp_path / "d" / "images" / "x.png", _frame())
    _save(tmp_path / "d" / "masks" / "x_MASK.png", _disk())
    _save(tmp_path / "d" / "images" / "y.png", _frame(seed=1))
    _save(tmp_path / "d" / "images" / "y_Mask.png", _disk())
    ds, problems = scan_dataset(tmp_path / "d")
    assert problems == [] and [(s.name, len(s.mask_paths)) for s in ds.samples] == [
        ("x", 1), ("y", 1)]
    busi = make_busi(tmp_path / "busi")
    for q in busi.rglob("*_mask*.png"):
        q.rename(q.with_name(q.name.replace("_mask", "_Mask")))
    ds, problems = scan_dataset(busi)
    assert ds.layout == "busi" and problems == [] and all(s.labelled for s in ds.samples)


@pytest.mark.parametrize("suffix", ["_seg", "_gt", "_label", "-mask", "_segmentation", "_GT"])
def test_masks_named_with_another_common_suffix_are_one_line_saying_how_to_name_them(
        tmp_path, suffix) -> None:
    """masks/case00_seg.png for images/case00.png gave two orphan lines a pair (thousands
    for a real set), none saying how masks must be named. Where most masks are orphans and
    one common suffix explains them, one line says so in place of those lines; an orphan it
    does not explain keeps its own line, and a lone misnamed mask among good ones is only an
    orphan."""
    root = tmp_path / "d"
    for k in range(3):
        _save(root / "images" / f"case{k}.png", _frame(seed=k))
        _save(root / "masks" / f"case{k}{suffix}.png", _disk())
    _save(root / "masks" / "stray.png", _disk())
    _, problems = scan_dataset(root)
    said = [str(p) for p in problems]
    assert len(said) == 2 and f"3 of the 4 masks are named NAME{suffix}" in said[0], said
    assert "masks/NAME_mask.EXT" in said[0] and "case0_mask.png" in said[0]
    assert "stray.png: mask without an image" in said[1]

    root = _per_patient(tmp_path / "p", {"p0": ["1"], "p1": ["2"]}, suffix)
    _, problems = scan_dataset(root)
    assert len(problems) == 1 and "masks/SUBJECT/NAME_mask.EXT" in str(problems[0])

    root = make_folders(tmp_path / "one")
    _save(root / "images" / "3_1.png", _frame())
    _save(root / "masks" / f"3_1{suffix}.png", _disk())
    _, problems = scan_dataset(root)
    assert sorted(type(p).__name__ for p in problems) == ["Unpaired", "Unpaired"]
    assert not any("named NAME" in str(p) for p in problems)


def test_a_flat_folder_of_masks_with_another_suffix_is_warned_about(tmp_path) -> None:
    """c0.png + c0_seg.png in one folder were read as twice as many unlabelled frames, with
    no word (the hint knew only _mask)."""
    for k in range(2):
        _save(tmp_path / "flat" / f"c{k}.png", _frame(seed=k))
        _save(tmp_path / "flat" / f"c{k}_seg.png", _disk())
    with ultraseg_warnings() as warned:
        ds, problems = scan_dataset(tmp_path / "flat")
    assert ds.layout == "images" and problems == []
    said = [r.getMessage() for r in warned if "named like masks" in r.getMessage()]
    assert len(said) == 1 and "2 of the 4 images" in said[0] and "NAME_seg" in said[0]
    assert "c0_seg.png -> c0_mask.png" in said[0]


@pytest.mark.parametrize("images, masks", [("image", "mask"), ("Image", "masks"),
                                           ("img", "gt")])
def test_the_folders_layout_takes_a_singular_images_folder(tmp_path, images, masks) -> None:
    """image/ + mask/ (mask/ already a masks folder) fell to the images layout: 'pairs 0,
    unlabelled images: 20, problems 0', and train found no labelled samples. image/, img/
    are the images folder as images/ is; beside images/ they are left, with a warning, and
    two of them are a problem."""
    for k, stem in enumerate(("1_1", "2_1")):
        _save(tmp_path / "d" / images / f"{stem}.png", _frame(seed=k))
        _save(tmp_path / "d" / masks / f"{stem}.png", _disk())
    ds, problems = scan_dataset(tmp_path / "d")
    assert ds.layout == "folders" and problems == [] and len(ds.labelled) == 2
    _save(tmp_path / "d" / "images" / "1_1.png", _frame())
    with ultraseg_warnings() as warned:
        ds, _ = scan_dataset(tmp_path / "d")
    assert [s.image_path.parent.name for s in ds.samples] == ["images"]
    assert any(f"{images}/ not read" in r.getMessage() for r in warned)
    (tmp_path / "d" / "images" / "1_1.png").unlink()
    (tmp_path / "d" / "images").rmdir()
    _save(tmp_path / "d" / "imgs" / "1_1.png", _frame())
    _, problems = scan_dataset(tmp_path / "d")
    assert len(problems) == 1 and "several image folders" in str(problems[0])
    # without a masks folder beside it, an img/ is no images folder of this layout
    _save(tmp_path / "scans" / "img" / "logo.png", _frame())
    _save(tmp_path / "scans" / "a" / "1.png", _frame())
    assert detect_layout(tmp_path / "scans") == "images"


@pytest.mark.parametrize("mode,suffix", [("L", ".png"), ("RGB", ".png"), ("L", ".jpg"),
                                         ("L", ".tif"), ("I;16", ".png")])
def test_a_read_frame_is_the_callers_to_draw_on(tmp_path: Path, mode: str, suffix: str
                                                ) -> None:
    """read_image gave 8-bit files as a read-only view of Pillow's bytes (16-bit ones as a
    writable array): `frame[mask] = 255` in a notebook failed, and torch.from_numpy warned."""
    from ultraseg import read_image

    path = tmp_path / f"f{suffix}"
    Image.new(mode, (6, 4), 1).save(path)
    frame = read_image(path)
    assert frame.flags.writeable
    frame[0, 0] = 255


@pytest.mark.parametrize("make", [make_folders, make_kaggle])
def test_an_image_without_its_mask_and_a_mask_without_its_image_name_a_remedy(
        tmp_path, make) -> None:
    """'image without a mask in a labelled set' and 'mask without an image' said what was
    wrong but not what to do, and train and evaluate refuse the whole set on them."""
    root = make(tmp_path / "d")
    folder = root / ("images" if make is make_folders else "train")
    masks = root / "masks" if make is make_folders else folder
    _save(folder / "9_9.png", _frame())
    _save(masks / "8_8_mask.png", _disk())
    _, problems = scan_dataset(root)
    said = sorted(str(p) for p in problems)
    assert len(said) == 2, said
    image = next(s for s in said if "9_9.png" in s)
    mask = next(s for s in said if "8_8_mask.png" in s)
    assert "image without a mask in a labelled set: add its mask" in image
    assert f"or move the image out of {folder.name}/" in image
    assert "mask without an image: add its image" in mask
    assert f"or move the mask out of {masks.name}/" in mask


@pytest.mark.parametrize("folder", ["segmentations", "Segmentation", "seg"])
def test_a_masks_folder_named_segmentations_or_seg_pairs(tmp_path, folder) -> None:
    """images/ + segmentations/NAME.png was read as 8 unlabelled images, without a word."""
    root = tmp_path / "d"
    for i, name in enumerate(["1_1", "1_2", "2_1"]):
        _save(root / "images" / f"{name}.png", _frame(seed=i))
        _save(root / folder / f"{name}.png", _disk(cx=10 + i))
    ds, problems = scan_dataset(root)
    assert not problems and len(ds.labelled) == 3


@pytest.mark.parametrize("per_subject", [False, True])
def test_a_sibling_of_images_holding_files_named_as_the_images_is_named(tmp_path,
                                                                        per_subject) -> None:
    """A masks folder of a name the layout does not take (truth/) was ignored without a word:
    inspect showed 'pairs 0, unlabelled images 3' and train the generic 'no labelled
    samples'. A warning names the folder and what to do; a folder of other files does not."""
    root = tmp_path / "d"
    sub = "p0/" if per_subject else ""
    for i, name in enumerate(["1_1", "1_2", "2_1"]):
        _save(root / "images" / f"{sub}{name}.png", _frame(seed=i))
        _save(root / "truth" / f"{sub}{name}_mask.png", _disk(cx=10 + i))
        _save(root / "figures" / f"plot{i}.png", _disk())
    with ultraseg_warnings() as warned:
        ds, problems = scan_dataset(root)
    assert not ds.labelled
    said = [r.getMessage() for r in warned if "truth/" in r.getMessage()]
    assert len(said) == 1, [r.getMessage() for r in warned]
    assert "3 files named as the images" in said[0] and "rename it masks/" in said[0]
    assert not any("figures" in r.getMessage() for r in warned)
    # where the masks are read, a copy of them elsewhere is no matter
    (root / "truth").rename(root / "masks")
    (root / "masks").mkdir(exist_ok=True)
    import shutil
    shutil.copytree(root / "masks", root / "truth")
    with ultraseg_warnings() as warned:
        ds, _ = scan_dataset(root)
    assert len(ds.labelled) == 3 and not any("truth" in r.getMessage() for r in warned)
    # masks/ of misnamed masks is said by its own problem line, not this warning
    for p in sorted((root / "masks").rglob("*.png")):
        p.rename(p.with_name(p.name.replace("_mask", "_seg")))
    with ultraseg_warnings() as warned:
        ds, problems = scan_dataset(root)
    assert not ds.labelled and "named NAME_seg" in str(problems[0]), problems
    assert not any("masks/ holds" in r.getMessage() for r in warned)


@pytest.mark.parametrize("header, where", [("subject,img,pixels", "root"),
                                           ("ImageId,EncodedPixels", "root"),
                                           ("subject,img,pixels", "train")])
def test_run_length_masks_in_a_csv_are_named_as_not_read(tmp_path, header, where) -> None:
    """Kaggle's train/*.tif + train_masks.csv (run-length masks in a 'pixels' or
    'EncodedPixels' column) was read as unlabelled images, without a word: train then gave
    the generic 'no labelled samples'. A warning says such masks are not read and how to
    decode them (ultraseg.rle.decode); none where the set's masks are read."""
    root = tmp_path / "d"
    for i in range(3):
        _save(root / "train" / f"1_{i}.png", _frame(seed=i))
    (root / "train_masks.csv").write_text(f"{header}\n1,1,5 3\n")
    given = root if where == "root" else root / "train"
    with ultraseg_warnings() as warned:
        ds, _ = scan_dataset(given)
    assert not ds.labelled
    said = [r.getMessage() for r in warned if "train_masks.csv" in r.getMessage()]
    assert len(said) == 1, [r.getMessage() for r in warned]
    assert "run-length" in said[0] and "not read" in said[0]
    assert "ultraseg.rle.decode" in said[0] and "NAME_mask.png" in said[0]
    # the set's masks read (the competition ships both): no word of the table
    for i in range(3):
        _save(root / "train" / f"1_{i}_mask.png", _disk())
    with ultraseg_warnings() as warned:
        ds, _ = scan_dataset(given)
    assert ds.labelled and not any("run-length" in r.getMessage() for r in warned)


def test_run_length_hint_not_given_to_predict_nor_of_a_submission(tmp_path) -> None:
    """The hint fired on ultraseg's own `predict --rle` output in an unlabelled folder and
    advised decoding the predictions into ground truth. It is for commands that need labels
    (predict's scan asks for none), and a CSV whose header is exactly a submission's
    (``img,pixels``, predict's and Kaggle's sample_submission) is no set's masks."""
    root = tmp_path / "unl"
    for i in range(3):
        _save(root / f"1_{i}.png", _frame(seed=i))
    (root / "train_masks.csv").write_text("subject,img,pixels\n1,1,5 3\n")
    with ultraseg_warnings() as warned:
        ds, _ = scan_dataset(root, needs_labels=False)
    assert not ds.labelled and not any("run-length" in r.getMessage() for r in warned)
    (root / "train_masks.csv").unlink()
    (root / "submission.csv").write_text("img,pixels\n1_0,5 3\n")
    with ultraseg_warnings() as warned:
        ds, _ = scan_dataset(root)
    assert not any("run-length" in r.getMessage() for r in warned)


def test_fill_outlines_fills_the_masks_of_any_layout(tmp_path) -> None:
    """Contours were filled in the hc18 layout only: images/ + masks/ outlines read as rings."""
    root, outline, disk = outline_dataset(tmp_path / "d", n=2)
    plain = open_dataset(root)
    assert plain.layout == "folders" and np.array_equal(plain.samples[0].load_mask() > 0, outline)
    ds = open_dataset(root, fill_outlines=True)
    assert all(s.mask_kind == "outline" for s in ds.samples)
    assert np.array_equal(ds.samples[0].load_mask() > 0, disk)


def test_fill_outlines_fills_each_label_of_a_label_mask_on_its_own(tmp_path) -> None:
    """A label mask of contours (label 2 round a head, label 1 round a structure in it) was
    filled as one binary mask: every label became 1, so --label 1 got the head filled and
    --label 2 was refused as held by no mask. Each label is filled and keeps its value; the
    inner contour's label wins inside the outer one's fill."""
    size = 64
    mask, outer, inner = (Image.new("L", (size, size)) for _ in range(3))
    ImageDraw.Draw(mask).ellipse((7, 7, 57, 57), outline=2)
    ImageDraw.Draw(mask).ellipse((24, 24, 40, 40), outline=1)
    ImageDraw.Draw(outer).ellipse((7, 7, 57, 57), fill=1)
    ImageDraw.Draw(inner).ellipse((24, 24, 40, 40), fill=1)
    outer_disk, inner_disk = np.asarray(outer) > 0, np.asarray(inner) > 0
    for d in ("images", "masks"):
        (tmp_path / d).mkdir()
    for i in range(2):
        _save(tmp_path / "images" / f"s{i}_1.png", np.full((size, size), 90, np.uint8))
        _save(tmp_path / "masks" / f"s{i}_1_mask.png", np.asarray(mask))
    filled = open_dataset(tmp_path, fill_outlines=True).samples[0].load_mask()
    assert sorted(np.unique(filled)) == [0, 1, 2]
    assert np.array_equal(filled == 1, inner_disk)
    assert np.array_equal(filled == 2, outer_disk & ~inner_disk)
    from ultraseg.inspection import inspect_dataset
    report, problems = inspect_dataset(tmp_path, fill_outlines=True, label=2)
    assert report["labels"] == [1, 2] and not problems, (report, problems)


def test_outlines_named_annotation_are_pointed_to_fill_outlines_not_to_a_bare_rename(tmp_path
                                                                                    ) -> None:
    """masks/000_HC_Annotation.png beside images/000_HC.png got 'rename them (e.g. ... ->
    000_HC_mask.png)', after which the outlines trained as rings with no word."""
    root, _, _ = outline_dataset(tmp_path / "d", n=3, mask_name="{}_HC_Annotation")
    for p in (root / "images").iterdir():
        p.rename(p.with_name(p.stem + "_HC.png"))
    _, problems = scan_dataset(root)
    (said,) = [str(p) for p in problems]
    assert "3 of the 3 masks are named NAME_Annotation" in said
    assert "closed contours" in said and "--fill-outlines" in said, said
    # solid masks so named: the rename alone, as before
    for p in (root / "masks").iterdir():
        _save(p, _disk(32, 32, 16, 16, 8))
    (said,) = [str(p) for p in scan_dataset(root)[1]]
    assert "s0_1_HC_mask.png" in said and "--fill-outlines" not in said


def test_a_flat_folder_of_outlines_named_annotation_is_pointed_to_the_hc18_layout(tmp_path
                                                                                 ) -> None:
    """NAME.png + NAME_Annotation.png outlines in one folder: --layout hc18 pairs and fills
    them; renaming them to _mask (the hint's advice) trained rings."""
    src, _, disk = outline_dataset(tmp_path / "d", n=2, mask_name="{}_Annotation")
    flat = tmp_path / "flat"
    flat.mkdir()
    for p in [*(src / "images").iterdir(), *(src / "masks").iterdir()]:
        p.rename(flat / p.name)
    with ultraseg_warnings() as warned:
        scan_dataset(flat)
    (said,) = [r.getMessage() for r in warned if "named like masks" in r.getMessage()]
    assert "--layout hc18" in said and "_mask" not in said.split("closed contours")[1], said
    ds = open_dataset(flat, "hc18")           # what it advises does pair and fill them
    assert len(ds.labelled) == 2 and np.array_equal(ds.labelled[0].load_mask() > 0, disk)


def test_a_loop_with_a_mask_is_refused_with_what_applies_to_a_labelled_set(tmp_path) -> None:
    """predict on a labelled set refused its cine loop (images/1_1.tif, with a mask) saying
    'predict and measure take each of its frames': in a labelled set each image is one frame;
    the error says so, names the mask, and how to predict the loop (alone) or train on it."""
    pages = [Image.fromarray(np.full((8, 10), 40 * k, np.uint8)) for k in range(3)]
    root = tmp_path / "ds"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    pages[0].save(root / "images" / "1_1.tif", save_all=True, append_images=pages[1:])
    Image.fromarray(np.zeros((8, 10), np.uint8)).save(root / "masks" / "1_1_mask.png")
    (s,) = open_dataset(root).samples
    with pytest.raises(DataError, match="holds 3 pages") as e:
        s.load()
    said = str(e.value)
    assert "predict and measure take each of its frames" not in said
    assert "1_1_mask.png" in said and "labelled set" in said and "alone" in said, said
    assert "save each" in said, said


def test_masks_named_as_a_loop_s_frames_get_one_line_naming_the_loop(tmp_path) -> None:
    """masks/clip_frame001_mask.png ... beside images/clip.tif (a 3-page loop), the names
    predict gives a loop's frames: three 'mask without an image' lines and one 'image without a
    mask', none linking them. One line names the loop and says to save each frame as its own
    image; a mask of another name still gets its own line."""
    pages = [Image.fromarray(np.full((8, 10), 40 * k, np.uint8)) for k in range(3)]
    root = tmp_path / "ds"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    pages[0].save(root / "images" / "clip.tif", save_all=True, append_images=pages[1:])
    pages[0].save(root / "images" / "still.png")
    for name in ("clip_frame001", "clip_frame002", "clip_frame003", "still", "stray"):
        Image.fromarray(np.zeros((8, 10), np.uint8)).save(root / "masks" / f"{name}_mask.png")
    _, problems = scan_dataset(root)
    said = sorted(str(p) for p in problems)
    assert len(said) == 2, said
    loop, stray = sorted(said, key=lambda line: "stray" in line)
    assert "clip.tif" in loop and "3 masks" in loop and "clip_frame001_mask.png" in loop, loop
    assert "3 frames" in loop and "save each frame as its own image" in loop, loop
    assert "stray_mask.png" in stray and "mask without an image" in stray


def test_video_files_are_counted_with_how_to_read_their_frames(tmp_path) -> None:
    """A folder of .mp4/.avi loops alone was 'empty folder or unknown layout: no images
    found', and beside images they were left out without a word: they are counted as formats
    not read, with how to get their frames (ffmpeg, or a multi-frame DICOM/TIFF export)."""
    videos = tmp_path / "videos"
    videos.mkdir()
    for name in ("clip.mp4", "loop.AVI", "scan.mov"):
        (videos / name).write_bytes(b"not decoded: the name is enough")
    with pytest.raises(DataError) as e:
        scan_dataset(videos)
    said = str(e.value)
    assert "empty folder" not in said and ".mp4 1" in said and ".avi 1" in said, said
    assert ".mov 1" in said and "ffmpeg" in said and "multi-frame DICOM" in said, said
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(videos / "still.png")
    with ultraseg_warnings() as warned:
        ds, _ = scan_dataset(videos)
    assert [s.name for s in ds.samples] == ["still"]
    said = [r.getMessage() for r in warned if "not read" in r.getMessage()]
    assert len(said) == 1 and "3 files" in said[0] and "ffmpeg" in said[0], said


def test_compressed_nifti_volumes_are_counted_with_how_to_read_them(tmp_path) -> None:
    """CAMUS's database_nifti/patientNNNN/*.nii.gz (volumes and their _gt labels) was 'empty
    folder or unknown layout' and, beside images, left out without a word: the .nii.gz ending
    was worked out but not in the list of endings counted. A .nii.gz named on its own is a
    NIfTI file, not 'a .gz file'; another .gz file is still no image."""
    from ultraseg.io.files import unread_file_advice
    camus = tmp_path / "CAMUS_public" / "database_nifti"
    for patient in ("patient0001", "patient0002"):
        for part in ("2CH_ED", "2CH_ED_gt", "4CH_ES"):
            (camus / patient).mkdir(parents=True, exist_ok=True)
            (camus / patient / f"{patient}_{part}.nii.gz").write_bytes(b"\x1f\x8b not decoded")
    (camus / "patient0001" / "Info_2CH.cfg").write_text("ED: 1\n")
    (camus / "notes.tar.gz").write_bytes(b"\x1f\x8b")
    with pytest.raises(DataError) as e:
        scan_dataset(tmp_path / "CAMUS_public")
    said = str(e.value)
    assert "empty folder" not in said and "6 files" in said and ".nii.gz 6" in said, said
    assert "convert them" in said, said
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(camus / "still.png")
    with ultraseg_warnings() as warned:
        ds, _ = scan_dataset(camus)
    assert [s.name for s in ds.samples] == ["still"]
    assert any(".nii.gz 6" in r.getMessage() for r in warned), [r.getMessage() for r in warned]
    advice = unread_file_advice(camus / "patient0001" / "patient0001_2CH_ED.nii.gz")
    assert advice is not None and "NIfTI (.nii.gz)" in advice and ".gz file" not in advice
    assert "NIfTI (.nii)" in (unread_file_advice(tmp_path / "x.NII") or "")
    assert unread_file_advice(camus / "notes.tar.gz") is None


@pytest.mark.parametrize("images, masks", [("trainval-image", "trainval-mask"),
                                           ("thyroid-image", "thyroid-mask"),
                                           ("original", "GT"),
                                           ("US images", "Expert mask images"),
                                           ("Images_train", "Labels_train")])
def test_image_and_mask_folders_named_as_public_datasets_name_them_pair(tmp_path, images,
                                                                         masks) -> None:
    """TN3K's trainval-image/ + trainval-mask/, TG3K's thyroid-*, UDIAT's original/ + GT/ and
    the carotid set's 'US images/' + 'Expert mask images/' were read as the images layout,
    the masks as frames: 'problems 0', and train then found no labelled samples. A folder
    named as images and one named as masks, their files named alike, are the folders layout."""
    root = tmp_path / "d"
    for i, name in enumerate(["0000", "0001", "0002"]):
        _save(root / images / f"{name}.png", _frame(seed=i))
        _save(root / masks / f"{name}.png", _disk(cx=10 + i))
    ds, problems = scan_dataset(root)
    assert ds.layout == "folders" and problems == [], problems
    assert len(ds.labelled) == 3
    assert {s.image_path.parent.name for s in ds.samples} == {images}
    with ultraseg_warnings() as warned:         # the images folder given: the pair is named
        scan_dataset(root / images)
    assert any(f"{root} holds a 'folders' dataset" in r.getMessage() for r in warned)
    # named alike but none of their files named alike: no pair (a folder of figures)
    other = tmp_path / "e"
    _save(other / images / "scan.png", _frame())
    _save(other / masks / "logo.png", _disk())
    assert detect_layout(other) == "images"


def test_a_train_and_a_test_pair_of_folders_read_the_train_pair_and_name_the_other(
        tmp_path) -> None:
    """TN3K holds trainval-image/ + trainval-mask/ and test-image/ + test-mask/: the
    training pair is read, and a warning names the test pair and how to read it; two pairs
    neither of which is a training pair are a problem naming them."""
    root = tmp_path / "tn3k"
    for part, names in (("trainval", ["0000", "0001", "0002"]), ("test", ["0000", "0001"])):
        for i, name in enumerate(names):
            _save(root / f"{part}-image" / f"{name}.jpg", _frame(seed=i))
            _save(root / f"{part}-mask" / f"{name}.jpg", _disk(cx=10 + i))
    with ultraseg_warnings() as warned:
        ds, problems = scan_dataset(root)
    assert ds.layout == "folders" and problems == [] and len(ds.labelled) == 3
    said = [r.getMessage() for r in warned if "test-image/" in r.getMessage()]
    assert len(said) == 1 and "test-mask/" in said[0] and "ln -s" in said[0], said
    for part in ("trainval", "test"):
        (root / f"{part}-image").rename(root / f"{'a' if part == 'test' else 'b'}-image")
        (root / f"{part}-mask").rename(root / f"{'a' if part == 'test' else 'b'}-mask")
    ds, problems = scan_dataset(root)
    assert not ds.labelled and len(problems) == 1, problems
    assert "a-image" in str(problems[0]) and "b-image" in str(problems[0])


def test_a_folder_named_as_masks_beside_the_images_read_as_unlabelled_is_named(tmp_path
                                                                                ) -> None:
    """Where the images layout reads a folder whose subfolder, named as masks (a label, gt,
    mask... in its name), holds files named as another's images, the masks were frames of
    their own, without a word: a warning names the folder and how to point at the pair.
    Two folders of frames named alike (two sites) are no such case."""
    root = tmp_path / "d"
    for i, name in enumerate(["1", "2", "3"]):
        _save(root / "pictures" / f"{name}.png", _frame(seed=i))  # (no images folder name)
        _save(root / "scan-labels" / f"{name}.png", _disk(cx=10 + i))
        _save(root / "site b" / f"{name}.png", _frame(seed=5 + i))
    with ultraseg_warnings() as warned:
        ds, _ = scan_dataset(root)
    assert ds.layout == "images" and not ds.labelled
    said = [r.getMessage() for r in warned if "scan-labels/" in r.getMessage()]
    assert len(said) == 1, [r.getMessage() for r in warned]
    assert "3 files named as the images in pictures/" in said[0] and "ln -s" in said[0], said
    assert not any("site b/ holds" in r.getMessage() for r in warned)


@pytest.mark.parametrize("image_prefix", ["bus_", ""])
def test_masks_named_with_another_prefix_are_one_line_saying_how_to_name_them(
        tmp_path, image_prefix) -> None:
    """BUS-BRA names the mask of Images/bus_0001-l.png Masks/mask_0001-l.png: an orphan line
    for every mask and every image (3750 on the real set), none saying how to name them, as
    one line does for another suffix. Where most masks are orphans and one prefix in place
    of the images' explains them, one line says so; an orphan it does not explain keeps its
    own line."""
    root = tmp_path / "BUSBRA"
    for k, name in enumerate(["0001-l", "0001-r", "0002-l"]):
        _save(root / "Images" / f"{image_prefix}{name}.png", _frame(seed=k))
        _save(root / "Masks" / f"mask_{name}.png", _disk())
    _save(root / "Masks" / "stray.png", _disk())
    _, problems = scan_dataset(root)
    said = [str(p) for p in problems]
    assert len(said) == 2, said
    assert "3 of the 4 masks are named mask_ID" in said[0], said
    assert f"images named {image_prefix}ID" in said[0], said
    assert f"mask_0001-l.png -> {image_prefix}0001-l.png" in said[0], said
    assert "stray.png: mask without an image" in said[1]


def test_a_second_mask_of_each_image_is_one_line_naming_the_pattern(tmp_path) -> None:
    """MMOTU holds annotations/N_binary.PNG beside each annotations/N.PNG: a 'mask without an
    image' line for every one of them (1469 on the real set), and the grouped line for
    misnamed masks could not fire, half the masks pairing. One line names them and what to
    do, no mask is chosen for the user; a lone stray keeps its own line."""
    root = tmp_path / "OTU_2d"
    for k in range(1, 4):
        _save(root / "images" / f"{k}.JPG", _frame(seed=k))
        _save(root / "annotations" / f"{k}.PNG", _disk())
        _save(root / "annotations" / f"{k}_binary.PNG", _disk())
    _save(root / "annotations" / "stray.PNG", _disk())
    _, problems = scan_dataset(root)
    said = [str(p) for p in problems]
    assert len(said) == 2, said
    line = next(s for s in said if "_binary" in s)
    assert "3 masks" in line and "NAME_binary beside NAME" in line, line
    assert "first: 1_binary.PNG" in line and "move them out of annotations/" in line, line
    assert "stray.PNG: mask without an image" in next(s for s in said if s is not line)
    # a set of NAME_binary masks alone is misnamed masks: one line saying how to name them
    for k in range(1, 4):
        (root / "annotations" / f"{k}.PNG").unlink()
    _, problems = scan_dataset(root)
    assert "3 of the 4 masks are named NAME_binary" in str(problems[0]), problems


def test_polygon_annotation_files_named_as_the_images_are_named_as_not_read(tmp_path) -> None:
    """DDTI's N.xml (the polygons of the frames N_1.jpg, N_2.jpg...) was neither read nor
    mentioned: inspect said 'unlabelled images: 6, problems 0' and train 'no labelled
    samples'. XML or JSON files named as the images or their subject are named in a warning
    saying to rasterise them; an XML of another name is not, nor are they where the set has
    masks, nor to predict."""
    root = tmp_path / "DDTI"
    for name in ("1_1", "2_1", "2_2", "3_1"):
        _save(root / f"{name}.jpg", _frame())
    for n in (1, 2):
        (root / f"{n}.xml").write_text("<case><mark><image>1</image><svg>[]</svg></mark></case>")
    (root / "3_1.json").write_text('{"shapes": []}')
    (root / "notes.xml").write_text("<notes/>")
    with ultraseg_warnings() as warned:
        ds, _ = scan_dataset(root)
    assert not ds.labelled
    said = [r.getMessage() for r in warned if "annotation" in r.getMessage()]
    assert len(said) == 1, [r.getMessage() for r in warned]
    assert "3 XML or JSON annotation files" in said[0] and "first: 1.xml" in said[0], said
    assert "not read" in said[0] and "rasterise" in said[0] and "notes.xml" not in said[0]
    with ultraseg_warnings() as warned:
        scan_dataset(root, needs_labels=False)
    assert not any("annotation files" in r.getMessage() for r in warned)
    _save(root / "1_1_mask.png", _disk())
    with ultraseg_warnings() as warned:
        scan_dataset(root)
    assert not any("annotation files" in r.getMessage() for r in warned)


def test_every_images_and_masks_folder_name_has_a_role() -> None:
    """dataset_hint looks for a dataset above a folder named as a dataset's part by
    folder_role alone: each name the layouts read as images or masks has one."""
    from ultraseg.io.folders import IMAGE_FOLDERS, MASK_FOLDERS, folder_role

    assert [folder_role(n)[0] for n in IMAGE_FOLDERS] == ["image"] * len(IMAGE_FOLDERS)
    assert [folder_role(n)[0] for n in MASK_FOLDERS] == ["mask"] * len(MASK_FOLDERS)
    assert all(folder_role(n.upper()) for n in (*IMAGE_FOLDERS, *MASK_FOLDERS))


@pytest.mark.parametrize("subfolder", ["patX", "7", "\u00b2"])   # ("²": a digit, not decimal)
def test_the_rename_a_mixed_images_folder_is_advised_keeps_the_patient_together(
        tmp_path, subfolder) -> None:
    """images/1_1.png... beside images/patX/{a,b,c}.png was advised 'renamed SUBJECT_FRAME, as
    patX_a.png'; followed (a review), each renamed frame was its own subject, the default
    subject being a leading number only. The example now names a number for the patient,
    one the loose frames' subjects do not use, and renamed so the frames share it."""
    root = tmp_path / "d"
    for i, name in enumerate(["1_1", "1_2", "2_1", "2_2", "8_1"]):
        _save(root / "images" / f"{name}.png", _frame(seed=i))
        _save(root / "masks" / f"{name}_mask.png", _disk())
    for k, name in enumerate("abc"):
        _save(root / "images" / subfolder / f"{name}.png", _frame(seed=20 + k))
        _save(root / "masks" / subfolder / f"{name}_mask.png", _disk(cx=12 + k))
    _, problems = scan_dataset(root)
    advice = re.search(r"renamed SUBJECT_FRAME.*, as (\w+)_a\.png", str(problems[0]))
    assert advice, str(problems[0])
    subject = advice.group(1)
    for folder, suffix in (("images", ""), ("masks", "_mask")):          # followed
        for name in "abc":
            (root / folder / subfolder / f"{name}{suffix}.png").rename(
                root / folder / f"{subject}_{name}{suffix}.png")
        (root / folder / subfolder).rmdir()
    with ultraseg_warnings() as warned:
        ds, problems = scan_dataset(root)
    assert problems == [] and warned == [], (problems, warned)
    renamed = {s.subject for s in ds.samples if s.name.endswith(("_a", "_b", "_c"))}
    assert len(renamed) == 1 and renamed.isdisjoint({"1", "2", "8"}), renamed


@pytest.mark.parametrize("given", [b"\x89PNG\r\n", "bytes-io", None, 3])
@pytest.mark.parametrize("reader", ["read_image", "read_mask", "frame_count"])
def test_readers_refuse_what_is_not_a_path_saying_what_they_take(given, reader):
    """A notebook user handed read_image the bytes of an upload (or a file object, or None) and
    got Python's "argument should be a str object or an os.PathLike object" from inside
    pathlib: the readers take a file's path, and now say so, and where bytes in memory go."""
    import io as _io

    import ultraseg.io as uio
    if given == "bytes-io":
        given = _io.BytesIO(b"\x89PNG\r\n")
    with pytest.raises(UltrasegError, match=r"takes a file's path.*got (bytes|BytesIO|None|int)"
                       ) as raised:
        getattr(uio, reader)(given)
    assert "PIL.Image.open(io.BytesIO(" in str(raised.value)


def test_the_colour_note_ends_with_an_ellipsis_only_where_files_are_left_off() -> None:
    """Ten colour frames of one loop file said 'loop.dcm, ...', as if files were left off the
    list: the ellipsis now stands for files not named, not for frames."""
    from ultraseg.io.grey import ColourFrames, colour_note

    tally = ColourFrames()
    for _ in range(10):
        tally.add("loop.dcm")
    assert "partly colour" in tally.note() and "loop.dcm" in tally.note()
    assert "..." not in tally.note(), tally.note()
    assert "..." in colour_note(5, ["a", "b", "c", "d"])            # a fourth file left off
    capped = ColourFrames()
    for k in range(ColourFrames.LISTED + 5):                        # files beyond the list
        capped.add(f"f{k}.png")
    assert capped.note().count("...") == 1
    assert "..." not in colour_note(3, ["a", "b", "c"])


def test_following_the_side_tag_advice_on_a_set_with_an_untagged_frame_warns_no_more(
        tmp_path) -> None:
    """The --subject-pattern the side-tag warning suggests did not match a frame with no tag
    (bus_0003 beside bus_0001-l/-r): following it gave 'does not match 1 of 5 file names'."""
    import re
    for stem in ["bus_0001-l", "bus_0001-r", "bus_0002-l", "bus_0002-r", "bus_0003"]:
        _save(tmp_path / "d" / "images" / f"{stem}.png", _frame())
        _save(tmp_path / "d" / "masks" / f"{stem}_mask.png", (_disk() * 255).astype(np.uint8))
    with ultraseg_warnings() as warned:
        scan_dataset(tmp_path / "d")
    said = next(r.getMessage() for r in warned if "own subject" in r.getMessage())
    pattern = re.search(r"e\.g\. '([^']+)'\)", said).group(1)
    with ultraseg_warnings() as warned:
        ds, _ = scan_dataset(tmp_path / "d", subject_pattern=pattern)
    assert [r.getMessage() for r in warned] == []
    assert {s.subject for s in ds.labelled} == {"bus_0001", "bus_0002", "bus_0003"}


def test_the_prefix_line_does_not_depend_on_the_process_s_string_hashing(tmp_path) -> None:
    """The images' leading word was picked with max(set(words), key=words.count): between
    two words as common, string hashing chose, so images bus_1, bus_2, img_3, img_4 for masks
    mask_1..mask_3 gave one line (rename mask_ID for bus_ID) under some PYTHONHASHSEEDs and
    three orphan lines under others. Every word is tried, the commonest first."""
    import os
    import subprocess
    import sys

    root = tmp_path / "d"
    for k, stem in enumerate(["bus_1", "bus_2", "img_3", "img_4"]):
        _save(root / "images" / f"{stem}.png", _frame(seed=k))
    for k in (1, 2, 3):
        _save(root / "masks" / f"mask_{k}.png", _disk())
    code = ("import sys; from ultraseg.io import scan_dataset; "
            "print(len(scan_dataset(sys.argv[1])[1]))")
    counts = set()
    for seed in ("0", "1", "2", "3", "4", "5"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        done = subprocess.run([sys.executable, "-c", code, str(root)], env=env,
                              capture_output=True, text=True, check=True)
        counts.add(done.stdout.strip())
    assert len(counts) == 1, counts


def test_a_name_with_a_superscript_digit_is_read_and_sorted(tmp_path) -> None:
    """`scan_2².png` stopped inspect and train with 'internal error: ValueError: invalid
    literal for int()': the sort key took '²' for a digit (str.isdigit) where the regex that
    cut the name did not. Such names sort as text; ordinary names keep their order."""
    from ultraseg import cli
    from ultraseg.io.files import natural_key

    for stem in ("scan_10", "scan_2²", "scan_1", "scan_2"):
        _save(tmp_path / "images" / f"{stem}.png", _frame())
        _save(tmp_path / "masks" / f"{stem}_mask.png", _disk())
    ds = open_dataset(tmp_path)
    assert [s.name for s in ds.samples] == ["scan_1", "scan_2", "scan_2²", "scan_10"]
    assert cli.main(["inspect", str(tmp_path)]) == 0
    # a number beside a superscript, in the middle of a name or after it, alike
    for name in ("a1²2.png", "²", "x²", "2²3"):
        natural_key(name)
    names = ["a 10", "a 2", "a", "b1", "a01", "1", "10", "a 2 b", "a1b2", "a1b10", ""]
    assert sorted(names, key=natural_key) == [
        "", "1", "10", "a", "a01", "a1b2", "a1b10", "a 2", "a 2 b", "a 10", "b1"]


@pytest.mark.parametrize("beside", [False, True])
def test_a_mask_named_as_its_image_in_another_letter_case_is_named_as_the_near_match(
        tmp_path, beside) -> None:
    """images/Case_1.png with masks/case_1_mask.png gave 'mask without an image' and 'image
    without a mask', neither naming the other: names pair in their exact letter case (as
    documented), so both lines stay, and each names the file differing only in letter case."""
    root = make_folders(tmp_path / "d")
    _save(root / "images" / "Case_4.png", _frame())
    _save(root / ("images" if beside else "masks") / "case_4_mask.png", _disk())
    pairs, problems = _pairs(root)
    assert pairs["Case_4"] == () and "case_4" not in pairs
    assert len(problems) == 2, problems
    mask_line = next(p for p in problems if "mask without an image" in p)
    image_line = next(p for p in problems if "image without a mask" in p)
    assert "an image differing only in letter case: Case_4.png" in mask_line, mask_line
    assert "a mask differing only in letter case: case_4_mask.png" in image_line, image_line
    # an orphan with no such near-match keeps its line without the hint
    _save(root / "masks" / "9_9_mask.png", _disk())
    _, problems = _pairs(root)
    stray = next(p for p in problems if "9_9_mask.png" in p)
    assert "letter case" not in stray


@pytest.mark.parametrize("value", ["false", "no", 1])
def test_fill_outlines_given_as_a_string_or_number_is_refused(tmp_path, value) -> None:
    """open_dataset(fill_outlines="false") filled every outline ("false" is truthy): a
    mask of 44 px read as 221 px without a word (an API misuse review)."""
    root, outline, _ = outline_dataset(tmp_path / "d", n=2)
    with pytest.raises(UltrasegError, match=f"fill_outlines must be true or false, got "
                                            f"{value!r}"):
        open_dataset(root, fill_outlines=value)
    kept = open_dataset(root, fill_outlines=np.bool_(False))     # numpy's bool is a bool
    assert np.array_equal(kept.samples[0].load_mask() > 0, outline)


@pytest.mark.parametrize("windows", [False, True])
def test_the_suggested_link_command_is_one_the_users_shell_runs(tmp_path, monkeypatch,
                                                                windows) -> None:
    """The command that links a pair of folders as DATA/images + DATA/masks was `ln -s`
    alone, its paths in shlex's single quotes: on Windows cmd.exe has no `ln`, and reads
    'C:\\My Scans\\test-image' as two words. There it is `mklink /J` (a directory
    junction, which needs no administrator), the paths quoted as Windows reads them; on
    POSIX `ln -s` with the paths quoted as its shells read them."""
    import shlex
    import subprocess

    from ultraseg import errors

    monkeypatch.setattr(errors, "WINDOWS", windows)
    root = tmp_path / "my scans"
    for part in ("trainval", "test"):
        for i, name in enumerate(["0000", "0001"]):
            _save(root / f"{part}-image" / f"{name}.jpg", _frame(seed=i))
            _save(root / f"{part}-mask" / f"{name}.jpg", _disk(cx=10 + i))
    with ultraseg_warnings() as warned:
        scan_dataset(root)
    said = [r.getMessage() for r in warned if "test-image/" in r.getMessage()]
    assert len(said) == 1, [r.getMessage() for r in warned]
    images, masks = str(root / "test-image"), str(root / "test-mask")
    if windows:
        q = subprocess.list2cmdline
        expected = (f"mkdir DATA && mklink /J DATA\\images {q([images])} && "
                    f"mklink /J DATA\\masks {q([masks])}")
        assert "ln -s" not in said[0] and "'" not in said[0], said[0]
    else:
        expected = (f"mkdir DATA && ln -s {shlex.quote(images)} DATA/images && "
                    f"ln -s {shlex.quote(masks)} DATA/masks")
    assert said[0].endswith(f"{expected})"), said[0]


def _subject_trees(root: Path, subjects=("patientA", "patientB", "patientC")) -> Path:
    """One subject's ``img/`` + ``mask/`` per folder (a clinic's export per patient)."""
    for s, subject in enumerate(subjects):
        for i, name in enumerate(["1", "2"]):
            _save(root / subject / "img" / f"{name}.png", _frame(seed=10 * s + i))
            _save(root / subject / "mask" / f"{name}.png", _disk(cx=10 + i))
    return root


def test_per_subject_sibling_trees_are_linked_as_one_dataset_not_one_subject(
        tmp_path, monkeypatch) -> None:
    """DATA/patientA/img + DATA/patientA/mask, same for B and C: the advice was to point at
    patientA (or link its two folders), a dataset of one patient in three. Now the warning and
    the hint (train's error) name the folders and give a loop of links making the
    per-subject layout, images/SUBJECT/ + masks/SUBJECT/; followed, it reads all three."""
    import subprocess

    from ultraseg import errors
    from ultraseg.io import dataset_hint

    monkeypatch.setattr(errors, "WINDOWS", False)
    root = _subject_trees(tmp_path / "my data")
    with ultraseg_warnings() as warned:
        ds, _ = scan_dataset(root)
    said = [r.getMessage() for r in warned]
    assert ds.layout == "images" and not ds.labelled
    assert not any("point at it" in m or "DATA/images &&" in m for m in said), said
    linked = [m for m in said if "for s in patientA patientB patientC" in m]
    assert len(linked) == 1 and "images/SUBJECT/ + masks/SUBJECT/" in linked[0], said
    hint = dataset_hint(root)
    assert "point at it" not in hint and "for s in patientA patientB patientC" in hint, hint
    command = linked[0][linked[0].index("mkdir -p DATA"):]
    work = tmp_path / "work"
    work.mkdir()
    subprocess.run(["sh", "-c", command], cwd=work, check=True)
    ds, problems = scan_dataset(work / "DATA")
    assert ds.layout == "folders" and problems == [] and len(ds.labelled) == 6
    assert {s.subject for s in ds.samples} == {"patientA", "patientB", "patientC"}


def test_train_val_test_split_folders_are_not_linked_as_subjects(tmp_path) -> None:
    """DATA/train/{images,masks}, DATA/val/..., DATA/test/... (a download's splits) were
    taken for three patients' trees: the warning and the hint advised linking them as
    subjects, training on the test split, and the pair warning advised linking test/images +
    test/masks. They are datasets of their own: the advice is to point at one, the train
    split."""
    from ultraseg.io import dataset_hint
    from ultraseg.io.folders import subject_trees

    root = tmp_path / "tv"
    for s, split in enumerate(["test", "train", "val"]):
        for i, name in enumerate(["1", "2"]):
            _save(root / split / "images" / f"{name}.png", _frame(seed=10 * s + i))
            _save(root / split / "masks" / f"{name}.png", _disk(cx=10 + i))
    assert subject_trees(root) == []
    with ultraseg_warnings() as warned:
        scan_dataset(root)
    said = [r.getMessage() for r in warned]
    assert not any("SUBJECT" in m or "for s in" in m for m in said), said
    # (the older pair warning, test/masks beside test/images, advised linking the test split)
    assert not any("test/images" in m or "test/masks" in m for m in said), said
    hint = dataset_hint(root)
    assert "SUBJECT" not in hint and "for s in" not in hint, hint
    assert f"{root / 'train'} holds a 'folders' dataset (and 2 more folders): point at it" \
        in hint, hint


def test_a_split_named_folder_beside_per_subject_trees_is_left_out_not_voiding_them(
        tmp_path, monkeypatch) -> None:
    """patientA/, patientB/ and a held-out test/, each with img/ + mask/: the one split-named
    folder made the whole tree no subjects, and the hint said to point at patientA (one
    patient's frames). The split-named folder is left out; the patients are linked."""
    from ultraseg import errors
    from ultraseg.io import dataset_hint
    from ultraseg.io.folders import subject_trees

    monkeypatch.setattr(errors, "WINDOWS", False)
    root = _subject_trees(tmp_path / "pt", subjects=("patientA", "patientB", "test"))
    assert [d.name for d, _, _ in subject_trees(root)] == ["patientA", "patientB"]
    with ultraseg_warnings() as warned:
        scan_dataset(root)
    said = [r.getMessage() for r in warned]
    assert not any("point at it" in m for m in said), said
    assert sum("for s in patientA patientB; do" in m for m in said) == 1, said
    hint = dataset_hint(root)
    assert "point at it" not in hint and "for s in patientA patientB; do" in hint, hint


def test_per_subject_sibling_trees_link_with_junctions_on_windows(tmp_path, monkeypatch
                                                                  ) -> None:
    """On Windows the loop is cmd.exe's `for` over the subjects, each linked by `mklink /J`
    (as a pair's link command is there), the paths in double quotes."""
    import os

    from ultraseg import errors
    from ultraseg.io import dataset_hint

    monkeypatch.setattr(errors, "WINDOWS", True)
    root = _subject_trees(tmp_path / "d", subjects=("patientA", "patient B"))
    top = os.path.abspath(root)
    assert dataset_hint(root).endswith(
        f'mkdir DATA\\images DATA\\masks && for %s in ("patient B" patientA) do '
        f'(mklink /J "DATA\\images\\%~s" "{top}\\%~s\\img" && '
        f'mklink /J "DATA\\masks\\%~s" "{top}\\%~s\\mask")')


@pytest.mark.parametrize("images, masks", [("frames", "masks"), ("scans", "labels"),
                                           ("Frame", "mask"), ("scan", "gt"),
                                           ("US frames", "US masks")])
def test_frames_and_scans_folders_are_read_as_the_images(tmp_path, images, masks) -> None:
    """frames/ + masks/ (the common name for ultrasound images) and scans/ + labels/ were
    read as the images layout: the masks became frames of their own. They are the folders
    layout's images folder, as images/ is."""
    root = tmp_path / "d"
    for i, name in enumerate(["1", "2", "3"]):
        _save(root / images / f"{name}.png", _frame(seed=i))
        _save(root / masks / f"{name}.png", _disk(cx=10 + i))
    ds, problems = scan_dataset(root)
    assert ds.layout == "folders" and problems == [] and len(ds.labelled) == 3
    assert {s.image_path.parent.name for s in ds.samples} == {images}


def test_a_mask_of_another_size_than_its_image_is_refused_saying_what_to_do(tmp_path) -> None:
    """'mask is 20x16 but its image is 32x24' (train and evaluate stop on it) said nothing of
    what to do, unlike the other refusals: it says to resize the mask with nearest-neighbour
    (which keeps its labels) or to move the pair out."""
    root = make_folders(tmp_path / "d")
    small = np.array(Image.fromarray(_disk()).resize((20, 16), Image.NEAREST))
    culprit = _save(root / "masks" / "1_2_mask.png", small)
    sample = next(s for s in open_dataset(root).samples if s.mask_paths == (culprit,))
    with pytest.raises(DataError) as e:
        sample.load()
    said = str(e.value)
    assert said.startswith(f"{culprit}: mask is 20x16 but its image is 32x24: "), said
    assert "nearest" in said and "32x24" in said and "move" in said, said


@pytest.mark.parametrize("suffix", ["", "_mask"])
def test_masks_named_in_another_letter_case_are_one_line(tmp_path, suffix) -> None:
    """Masks PatientA_001.png for images patientA_001.png gave two problem lines a pair (60
    for 30 frames: each mask without an image, each image without a mask), where a
    systematic NAME_seg suffix gives one. The letter case is one line too, naming the first
    and the rename; a mask differing otherwise keeps its own line."""
    root = tmp_path / "d"
    for i, subject in enumerate("ABC"):    # (one leading word each: no prefix to rename)
        _save(root / "images" / f"patient{subject}_001.png", _frame(seed=i))
        _save(root / "masks" / f"Patient{subject}_001{suffix}.png", _disk(cx=10 + i))
    _save(root / "images" / "patientD_001.png", _frame(seed=7))
    _save(root / "masks" / "patientD_001.png", _disk())
    _save(root / "masks" / "stray.png", _disk())
    ds, problems = scan_dataset(root)
    said = [str(p) for p in problems]
    assert len(said) == 2, said
    case = [m for m in said if "letter case" in m]
    assert len(case) == 1 and "3 of the 5 masks" in case[0], said
    assert f"PatientA_001{suffix}.png -> patientA_001{suffix}.png" in case[0], case
    assert any("stray.png" in m and "mask without an image" in m for m in said), said
