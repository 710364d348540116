"""Run-length encoding in the Kaggle "Ultrasound Nerve Segmentation" submission format.

Numpy only. A mask is flattened in column-major order (down each column, then the next column
to the right: ``mask.flatten(order="F")``) and written as ``"start length start length ..."``
with 1-based starts; an empty mask is the empty string. The submission CSV has the header
``img,pixels`` and one row per image.
"""
from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np

from .errors import UltrasegError
from .fileio import atomic_open
from .measure import binary_mask


def encode(mask: np.ndarray) -> str:
    """Encode a bool (H, W) mask as Kaggle run-length pairs (column-major, 1-based starts).

    Numbers holding 0 and one other value (0/1, 0/255) are a mask too; anything else (a
    probability map, whose every pixel above 0 would be the structure) is refused as
    :func:`ultraseg.measure.measure` refuses it (:func:`~ultraseg.measure.binary_mask`)."""
    m = np.asarray(mask)
    if m.ndim != 2:
        raise ValueError(f"encode expects a 2D mask, got shape {m.shape}")
    flat = np.concatenate([[False], binary_mask(m, "encode").flatten(order="F"), [False]])
    edges = np.flatnonzero(flat[1:] != flat[:-1])   # run starts (0-based) and ends, alternating
    starts, ends = edges[0::2], edges[1::2]
    pairs = np.column_stack([starts + 1, ends - starts]).ravel()
    return " ".join(str(v) for v in pairs.tolist())


def decode(rle: str, shape: tuple[int, int]) -> np.ndarray:
    """Decode Kaggle run-length pairs into a bool (H, W) mask of ``shape``.

    Raises :class:`UltrasegError` for a value that is not a whole number, an odd number of
    values, a start below 1 or a length below 1, a run past the last pixel, and runs that are
    not in increasing order or overlap.
    """
    h, w = (int(v) for v in shape)
    size = h * w
    text = (rle or "").strip()
    try:
        ints = [int(v) for v in text.split()]
    except ValueError as e:
        raise UltrasegError(f"run-length values must be whole numbers: {e}") from e
    if len(ints) % 2:
        raise UltrasegError(f"run-length string has an odd number of values ({len(ints)})")
    if any(v < 1 for v in ints):
        raise UltrasegError("run-length starts and lengths must be at least 1")
    for start, length in zip(ints[0::2], ints[1::2]):   # Python ints: no overflow
        if start + length - 1 > size:
            raise UltrasegError(f"run {start} {length} goes past the last pixel ({size}) "
                                f"of a {h}x{w} mask")
    values = np.array(ints, dtype=np.int64)           # every value <= size from here
    starts, lengths = values[0::2], values[1::2]
    ends = starts + lengths - 1                       # 1-based, inclusive
    if (starts[1:] <= ends[:-1]).any():
        bad = int(np.argmax(starts[1:] <= ends[:-1])) + 1
        raise UltrasegError(
            f"run starting at {int(starts[bad])} overlaps or precedes the run before it"
        )
    flat = np.zeros(size + 1, dtype=np.int8)
    np.add.at(flat, starts - 1, 1)
    np.add.at(flat, ends, -1)
    return (np.cumsum(flat[:-1]) > 0).reshape((h, w), order="F")


def check_submission_path(path: str | Path, pending: str | Path | None = None) -> Path:
    """``path`` as a Path when a submission can be written there: not a folder, in a folder
    that exists, or is ``pending``, the folder the caller creates before writing (a caller
    checks before predicting anything)."""
    path = Path(path)
    if path.is_dir():
        raise UltrasegError("cannot write the submission: a folder of that name is there "
                            "(give a file name such as sub.csv)", path)
    if pending is not None and path.parent.resolve() == Path(pending).resolve():
        return path
    if not path.parent.is_dir():
        raise UltrasegError("cannot write the submission: its folder does not exist", path)
    return path


def check_submission_names(names: Iterable[str]) -> None:
    """Refuse a name that cannot go in a submission's CSV field unquoted (a comma, a quote, a
    line break): checked before predicting by ``predict --rle``, and again as each row is
    written."""
    bad = next((str(n) for n in names if any(c in str(n) for c in ',"\n\r')), None)
    if bad is not None:
        raise UltrasegError(f"image name {bad!r} cannot go in a submission CSV field unquoted")


def write_submission(rows: Iterable[tuple[str, np.ndarray]], path: str | Path) -> None:
    """Write a Kaggle submission CSV (``img,pixels``) of ``(image stem, bool (H, W) mask)`` rows.

    Written through :func:`~ultraseg.fileio.atomic_open`: a reader never sees half a file, and
    a failed write (a folder at ``path``, a full disk) is an error naming ``path``.
    """
    path = check_submission_path(path)
    with atomic_open(path, "w") as f:
        f.write("img,pixels\n")
        for name, mask in rows:
            name = str(name)
            check_submission_names([name])
            f.write(f"{name},{encode(mask)}\n")
