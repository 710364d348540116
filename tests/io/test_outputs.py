"""ultraseg.io.outputs: which folders a command may write its outputs to and mark."""
from __future__ import annotations

from pathlib import Path

import pytest

from ultraseg.errors import DataError
from ultraseg.io.outputs import OUTPUT_MARKER, check_no_foreign_images, mark_output_folder


def _files(*paths: Path) -> None:
    for p in paths:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"")


def test_an_output_folder_holding_an_earlier_output_or_a_hidden_folder_is_accepted(
        tmp_path) -> None:
    """Images one level below an output folder are the user's, except in a subfolder that
    is an earlier ultraseg output (marked: `predict --out RESULTS` where RESULTS/old/ holds
    an earlier predict's masks) or a hidden one (a phantom run's .phantom-*.tmp staging
    folder): no test failed when either was counted. The same folder with the earlier
    output's marker gone holds a user's images, and is refused naming the first."""
    out = tmp_path / "results"
    _files(out / "old" / OUTPUT_MARKER, out / "old" / "1_mask.png", out / ".hid" / "a.png")
    check_no_foreign_images(out)
    (out / "old" / OUTPUT_MARKER).unlink()
    with pytest.raises(DataError, match=r"holds 1 image file ultraseg did not write "
                                        r"\(first: 1_mask\.png\)"):
        check_no_foreign_images(out)


def test_the_command_s_own_files_are_no_user_s_images(tmp_path) -> None:
    """``own`` names files directly in the folder that are the command's own (a run folder
    from before the marker existed holds its figures): they do not stop the folder being
    marked, where a user's image beside them does. Pinned only by test_cli_train's resume of
    such a run before."""
    run = tmp_path / "run"
    _files(run / "curves.png", run / "val_examples.png")
    mark_output_folder(run, "train", own=("curves.png", "val_examples.png"))
    assert (run / OUTPUT_MARKER).is_file()
    other = tmp_path / "other"
    _files(other / "curves.png", other / "scan.png")
    with pytest.raises(DataError, match=r"holds 1 image file .*\(first: scan\.png\)"):
        mark_output_folder(other, "train", own=("curves.png",))
    assert not (other / OUTPUT_MARKER).exists()
