"""ultraseg.io.outputs: which folders a command may write its outputs to and mark."""
from __future__ import annotations

from pathlib import Path

import pytest

from ultraseg.errors import DataError
from ultraseg.io.outputs import OUTPUT_MARKER, check_no_foreign_images


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

