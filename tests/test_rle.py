from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from conftest import shared_dataset
from ultraseg.errors import UltrasegError
from ultraseg.rle import decode, encode, write_submission


# Column-major: column 0 is pixels 1-3, column 1 pixels 4-6, column 2 pixels 7-9.
SMALL = np.array(
    [
        [1, 0, 0],
        [1, 0, 1],
        [0, 1, 1],
    ],
    dtype=bool,
)
SMALL_RLE = "1 2 6 1 8 2"


def test_small_by_hand() -> None:
    assert encode(SMALL) == SMALL_RLE
    np.testing.assert_array_equal(decode(SMALL_RLE, (3, 3)), SMALL)


def test_non_square_orientation() -> None:
    m = np.zeros((2, 3), bool)
    m[0, 1] = True                     # column 1, row 0 -> pixel 3
    m[1, 2] = True                     # column 2, row 1 -> pixel 6 (last)
    assert encode(m) == "3 1 6 1"
    np.testing.assert_array_equal(decode("3 1 6 1", (2, 3)), m)


def test_a_probability_map_is_refused_and_masks_of_any_dtype_encode_alike() -> None:
    """encode read any array as bool: a probability map passed by mistake encoded every pixel
    above 0 as the structure. It takes a mask by measure's rule (bool, or 0 and one other
    value) and refuses anything else, saying to threshold it."""
    probs = np.where(SMALL, 0.9, 0.01)
    for bad in (probs, probs.astype(np.float32), (probs * 255).astype(np.uint8),
                np.where(SMALL, 0.5, np.nan)):
        with pytest.raises(UltrasegError, match=r"encode takes a mask.*threshold it"):
            encode(bad)
    for same in (SMALL.astype(np.uint8), SMALL.astype(np.uint8) * 255,
                 SMALL.astype(np.float32), SMALL.astype(np.int64), probs >= 0.5):
        assert encode(same) == SMALL_RLE


def test_empty_and_full() -> None:
    assert encode(np.zeros((4, 5), bool)) == ""
    assert not decode("", (4, 5)).any()
    assert decode("", (4, 5)).shape == (4, 5)
    assert encode(np.ones((4, 5), bool)) == "1 20"


def test_round_trip_random() -> None:
    rng = np.random.default_rng(1)
    m = rng.random((7, 11)) > 0.5
    np.testing.assert_array_equal(decode(encode(m), m.shape), m)


def test_round_trip_real_mask() -> None:
    path = shared_dataset("kaggle_nerve_sample") / "train" / "1_1_mask.tif"
    if not path.exists():
        pytest.skip(f"real data absent: {path}")
    from PIL import Image

    mask = np.asarray(Image.open(path)) > 0
    assert mask.shape == (420, 580)
    assert mask.any()
    rle = encode(mask)
    values = [int(v) for v in rle.split()]
    assert sum(values[1::2]) == int(mask.sum())
    np.testing.assert_array_equal(decode(rle, mask.shape), mask)


@pytest.mark.parametrize(
    "rle, match",
    [
        ("1 2 6", "odd"),
        ("1 2 x 1", "whole numbers"),
        ("0 2", "at least 1"),
        ("3 0", "at least 1"),
        ("8 3", "past the last pixel"),
        ("99999999999999999999 1", "past the last pixel"),  # beyond int64
        ("9223372036854775807 2", "past the last pixel"),   # start + length wraps in int64
        ("1 9223372036854775807", "past the last pixel"),
        ("1 3 3 1", "overlaps"),
        ("6 1 1 2", "overlaps or precedes"),
    ],
)
def test_decode_rejects(rle: str, match: str) -> None:
    with pytest.raises(UltrasegError, match=match):
        decode(rle, (3, 3))


def test_write_submission(tmp_path: Path) -> None:
    out = tmp_path / "submission.csv"
    write_submission([("1", SMALL), ("2", np.zeros((3, 3), bool))], out)
    assert out.read_text() == f"img,pixels\n1,{SMALL_RLE}\n2,\n"
    assert [p.name for p in tmp_path.iterdir()] == ["submission.csv"]


def test_write_submission_failure_leaves_no_file(tmp_path: Path) -> None:
    out = tmp_path / "submission.csv"

    def rows():
        yield "1", SMALL
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        write_submission(rows(), out)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(UltrasegError):
        write_submission([("a,b", SMALL)], out)
    with pytest.raises(UltrasegError):
        write_submission([], tmp_path / "missing" / "s.csv")


@pytest.mark.parametrize("name", ['a"b', "a\nb", "a,b"])
def test_a_name_that_would_break_the_csv_is_refused(tmp_path: Path, name: str) -> None:
    with pytest.raises(UltrasegError):
        write_submission([(name, np.zeros((2, 2), bool))], tmp_path / "s.csv")
    assert not (tmp_path / "s.csv").exists()


def test_the_readmes_run_length_block_turns_a_kaggle_csv_into_masks_ultraseg_reads(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run-length masks in a CSV are not read; the README's block decodes Kaggle's
    train_masks.csv into NAME_mask.png beside the images, which the kaggle layout pairs."""
    import re

    from PIL import Image

    from ultraseg.io import scan_dataset

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    blocks = [b for b in re.findall(r"```python\n(.*?)```", readme, flags=re.S)
              if "ultraseg.rle import decode" in b]
    assert len(blocks) == 1, "README holds one block decoding run-length masks"
    rng = np.random.default_rng(0)
    truth = {}
    (tmp_path / "train").mkdir()
    rows = ["subject,img,pixels"]
    for subject, img in ((1, 1), (1, 2), (2, 1)):
        name = f"{subject}_{img}"
        Image.fromarray(rng.integers(0, 256, (30, 40), dtype=np.uint8)).save(
            tmp_path / "train" / f"{name}.tif")
        truth[name] = np.zeros((30, 40), bool)
        truth[name][5 + img:20, 3 * subject:30] = True
        rows.append(f"{subject},{img},{encode(truth[name])}")
    (tmp_path / "train_masks.csv").write_text("\n".join(rows) + "\n")
    monkeypatch.chdir(tmp_path)
    exec(blocks[0], {})
    ds, problems = scan_dataset(tmp_path)
    assert ds.layout == "kaggle" and not problems and len(ds.labelled) == 3
    for s in ds.labelled:
        np.testing.assert_array_equal(s.load()[1], truth[s.name])


def test_a_name_that_cannot_go_in_a_csv_field_unquoted_is_refused(tmp_path) -> None:
    """A comma, a quote or a line break in an image's name would split or break its row."""
    from ultraseg.rle import check_submission_names

    check_submission_names(["1_1", "scan 2", "é"])
    for bad in ("a,b", 'a"b', "a\nb", "a\rb"):
        with pytest.raises(UltrasegError, match="cannot go in a submission CSV field"):
            check_submission_names(["ok", bad])
        with pytest.raises(UltrasegError, match="cannot go in a submission CSV field"):
            write_submission([(bad, np.zeros((2, 2), bool))], tmp_path / "sub.csv")
    assert not (tmp_path / "sub.csv").exists()
