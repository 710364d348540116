"""A frame's grey: any numeric dtype to 8 bits by one rule for files and arrays
(:func:`to_uint8`), and the warnings of what reading a frame as grey leaves out (a float's
scale, an alpha, pixels in colour), said once a file inside :func:`said_once` or counted
over a dataset (:func:`counting_colour`).

Moved from :mod:`ultraseg.io.base` as it was; import its names from here.
"""
from __future__ import annotations

import contextlib
import logging
import os
import threading
from pathlib import Path
from typing import Iterator

import numpy as np

#: These warnings keep the name of the logger they were said on before they moved here
#: (:mod:`ultraseg.io.base`'s), so that a filter or level set on it still reaches them.
log = logging.getLogger("ultraseg.io.base")


def inverted(arr: np.ndarray, top: int | None = None) -> np.ndarray:
    """A grey frame whose low values are bright (DICOM's MONOCHROME1, TIFF's WhiteIsZero),
    turned so that they are dark: unsigned integers from ``top`` (default: their dtype's
    largest value; a DICOM's ``2**BitsStored - 1``), signed integers and floats about their
    own range."""
    if arr.dtype.kind == "u":
        top = np.iinfo(arr.dtype).max if top is None else top
        return (top - arr.astype(np.int64)).clip(0, top).astype(arr.dtype)
    wide = arr.astype(np.float64 if arr.dtype.kind == "f" else np.int64)
    return wide.max() + wide.min() - wide


#: How far past 0 or 1 a float frame's values may reach and it still counts as scaled to
#: [0, 1] (clipped to it) in silence: a cubic resize of a [0, 1] frame rings a few percent
#: past both ends, and read as 0..255 it would be black.
UNIT_FLOAT_SLACK = 0.1
#: Bounds within which a float frame counts as scaled to [0, 1] all the same, clipped to it
#: and warned of: a resize can ring further (Lanczos to 1.5), and no 0..255 frame lies there.
UNIT_FLOAT_BOUNDS = (-0.5, 2.0)
#: A float frame read as 0..255 that rounds to fewer grey levels than this, though its
#: values are many more, is warned of: it was scaled neither to [0, 1] nor to 0..255.
FEW_GREY_LEVELS = 8

#: Per thread, inside :func:`said_once`: ``files``, the files warned of by the kind of
#: warning (:func:`say_of_file`); ``depth``, the blocks open.
_said = threading.local()


@contextlib.contextmanager
def said_once() -> Iterator[None]:
    """Inside the block (this thread's outermost), a file's warning of a kind is said once: a
    loop's frames, or a file read again, say it once. A top-level call that reads files
    (evaluate, training's arrays, predict's frames, inspect) opens one (it is a decorator
    too), so its next call says them again; outside any block each read says them."""
    depth = getattr(_said, "depth", 0)
    if not depth:
        _said.files = set()
    _said.depth = depth + 1
    try:
        yield
    finally:
        _said.depth -= 1
        if not _said.depth:
            _said.files = set()


def to_uint8(image: np.ndarray, path: str | Path | None = None) -> np.ndarray:
    """A grey frame of any numeric dtype -> 8 bits, by one rule for files and arrays.

    uint8 as it is; bool as 0/255 (a 1-bit PNG read with ``np.asarray``); floats within
    [0, 1] times 255 (values up to :data:`UNIT_FLOAT_SLACK` past 0 or 1, the ringing of a
    cubic resize, clipped to it; within :data:`UNIT_FLOAT_BOUNDS`, -0.5..2, clipped too,
    with a warning), floats within 0..255 as they are (a warning where they round to fewer
    than :data:`FEW_GREY_LEVELS` grey levels of many more values), other floats stretched
    from their own min..max; wider integers (a 16-bit scan) stretched from their own
    min..max whatever their range, as nothing says where their white lies; signed 8-bit
    integers within 0..127 as they are, others stretched. ``path``: the file the frame is
    from, which warnings name (each once). NaN and infinities are the caller's to refuse.

    Integers of 8 or 16 bits are looked up in a table of their values lo..hi made by these
    rules (identical bytes; a float64 copy of a 16-bit frame took 24 bytes a pixel at its
    peak, the table's lookup takes 3)."""
    if image.dtype == np.uint8:
        return image
    if image.dtype == bool:
        return image.astype(np.uint8) * 255
    if image.dtype.kind in "iu" and image.dtype.itemsize <= 2:
        return _looked_up(image)
    return _converted(image, path)


def _looked_up(image: np.ndarray) -> np.ndarray:
    """An integer frame of 8 or 16 bits (signed or not) as :func:`_converted` makes it, from
    a table of every value between its minimum and maximum made by it (at most 65536): the
    frame's values less its minimum, taken modulo 2**bits as unsigned (no wider copy), index
    it. A frame of the other byte order (a big-endian TIFF's, a FITS array) is made native
    first: viewed as native, its bytes swapped index the wrong value."""
    if not image.dtype.isnative:
        image = image.astype(image.dtype.newbyteorder("="))
    lo, hi = int(image.min()), int(image.max())
    table = _converted(np.arange(lo, hi + 1, dtype=image.dtype), None)
    unsigned = image.view(f"u{image.dtype.itemsize}")
    return table[unsigned - unsigned.dtype.type(lo % (1 << 8 * image.dtype.itemsize))]


def _converted(image: np.ndarray, path: str | Path | None) -> np.ndarray:
    """:func:`to_uint8`'s rules for any frame but uint8 and bool, through float64."""
    x = image.astype(np.float64)
    lo, hi = float(x.min()), float(x.max())
    floats = image.dtype.kind == "f"
    if floats and UNIT_FLOAT_BOUNDS[0] <= lo and hi <= UNIT_FLOAT_BOUNDS[1]:
        if lo < -UNIT_FLOAT_SLACK or hi > 1.0 + UNIT_FLOAT_SLACK:
            say_of_file(path, "unit", f"float values {lo:g}..{hi:g}, past [0, 1] by more than "
                       f"{UNIT_FLOAT_SLACK:g} (a resize's ringing?): read as a [0, 1] frame, "
                       "clipped to it")
        return unit_to_uint8(x)
    if lo >= 0 and hi <= 255 and (floats or image.dtype.itemsize == 1):
        out = np.round(x).astype(np.uint8)
        if floats:
            _say_few_greys(x, out, path)
        return out
    return np.round((x - lo) / (hi - lo) * 255 if hi > lo else x * 0).astype(np.uint8)


def unit_to_uint8(x: np.ndarray) -> np.ndarray:
    """Floats scaled to [0, 1] -> 0..255 (clipped to [0, 1] first): a float frame's, and a
    float mask's, 8-bit equivalent."""
    return np.round(np.clip(x.astype(np.float64), 0.0, 1.0) * 255).astype(np.uint8)


def _say_few_greys(x: np.ndarray, out: np.ndarray, path: str | Path | None) -> None:
    """Warn where the float frame ``x``, read as 0..255 to ``out``, rounds to fewer than
    :data:`FEW_GREY_LEVELS` grey levels though it holds over four times as many values."""
    levels = int(np.count_nonzero(np.bincount(out.ravel(), minlength=256)))
    if levels >= FEW_GREY_LEVELS:
        return
    values = np.unique(x).size
    if values > 4 * levels:
        say_of_file(path, "few", f"float values {x.min():g}..{x.max():g}, read as 0..255, "
                   f"round to {levels} grey levels (of {values} values): scale it to [0, 1] "
                   "or 0..255")


def _say_alpha(alpha: np.ndarray, path: str | Path | None) -> None:
    """Warn where an image's ``alpha`` (H, W) is not fully opaque: it is read as its colour
    alone, the alpha dropped. Once a :func:`said_once` block (a dataset, a run), naming the
    first such file, not once a file: a set saved with transparency is one thing to say."""
    clear = float(np.count_nonzero(alpha < 255)) / max(alpha.size, 1)
    if clear:
        say_of_file(path, "alpha", f"its alpha channel is not fully opaque ({100 * clear:.1f} % "
                    "of its pixels transparent or partly): read as its colour alone, the alpha "
                    "dropped (said once: other images read with it may be so too)",
                    unnamed="an image", per_file=False)


def say_of_file(path: str | Path | None, kind: str, what: str,
                unnamed: str = "a float frame (an array)", per_file: bool = True) -> None:
    """Warn of a frame (a float scale, a size beyond Pillow's guard): once a file inside a
    :func:`said_once` block (``kind`` tells the warnings apart; with ``per_file`` False, once
    the block, naming the first file), each time for an array (``path`` None, said to be
    ``unnamed``) and outside such a block."""
    if path is not None and getattr(_said, "depth", 0):
        key = (os.path.realpath(path) if per_file else "", kind)
        if key in _said.files:
            return
        _said.files.add(key)
    log.warning("%s: %s", path if path is not None else unnamed, what)


#: A pixel whose colour channels spread over more than this (of 0..255) is in colour (a
#: Doppler flow box, an annotation), not grey: a tint or a JPEG's chroma noise stays under it.
COLOUR_SPREAD = 40
#: The share of a frame's pixels in colour from which its reading as luma is warned of.
COLOUR_SHARE = 0.005
#: What reading a frame in colour as its luma costs, and what its colour may be.
COLOUR_LOST = ("(a Doppler or annotation overlay?): read as their luma, the tissue under "
               "them is lost")

#: Per thread, inside :func:`counting_colour`: ``tally``, the :class:`ColourFrames` counting.
_colour = threading.local()


def colour_share(rgb: np.ndarray) -> float:
    """The share of an (H, W, C >= 3) frame's pixels in colour: channels spread over more
    than :data:`COLOUR_SPREAD` (of 0..255; a wider dtype's, of the frame's own range, as it
    is stretched to 8 bits). Alpha is not looked at."""
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    # (element-wise over the three planes: a reduction over a 3-wide last axis is ~15x slower;
    # max >= min: no unsigned wrap)
    spread = np.maximum(np.maximum(r, g), b) - np.minimum(np.minimum(r, g), b)
    rgb = rgb[..., :3]
    limit = float(COLOUR_SPREAD)
    if rgb.dtype != np.uint8:
        limit *= float(rgb.max()) - float(rgb.min()) if rgb.size else 0.0
        limit /= 255.0
    return float(np.count_nonzero(spread > limit)) / max(spread.size, 1)


def say_colour(rgb: np.ndarray, path: str | Path | None) -> None:
    """Warn where at least :data:`COLOUR_SHARE` of the colour frame ``rgb`` (H, W, C >= 3),
    read from ``path``, is in colour (:func:`colour_share`), which its luma loses: once a
    file (:func:`say_of_file`), or, inside :func:`counting_colour`, counted there."""
    share = colour_share(rgb)
    if share < COLOUR_SHARE:
        return
    tally = getattr(_colour, "tally", None)
    if tally is not None and path is not None:
        tally.add(path)
        return
    say_of_file(path, "colour", f"{100 * share:.1f} % of its pixels are colour {COLOUR_LOST}",
                unnamed="an image")


#: How many of the files of frames in colour a tally keeps (and inspect's report lists).
COLOUR_FILES_LISTED = 20


def colour_note(n: int, files: list[str], shown: int = 3) -> str | None:
    """The one line for ``n`` frames in colour, ``files`` the first of their files, at most
    :data:`COLOUR_FILES_LISTED` (none: None). ", ..." stands for files not named: beyond
    ``shown``, or beyond a full list where the frames outnumber it (a loop's frames are one
    file)."""
    if not n:
        return None
    left_off = len(files) > shown or len(files) >= COLOUR_FILES_LISTED and n > len(files)
    named = ", ".join(files[:shown]) + (", ..." if left_off else "")
    return (f"{n} frame{'s' * (n != 1)} partly colour, at least {COLOUR_SHARE:.1%} of "
            f"{'their' if n != 1 else 'its'} pixels: {named} {COLOUR_LOST}")


class ColourFrames:
    """A tally of the frames read in colour inside :func:`counting_colour`: their count and
    their files (the first :data:`LISTED`), said in one line (:func:`colour_note`)."""

    LISTED = COLOUR_FILES_LISTED

    def __init__(self) -> None:
        self.n = 0
        self.files: list[str] = []

    def add(self, path: str | Path) -> None:
        self.n += 1
        if len(self.files) < self.LISTED and str(path) not in self.files:
            self.files.append(str(path))

    def note(self) -> str | None:
        return colour_note(self.n, self.files)

    def warn(self, logger: logging.Logger, where: str | Path | None = None) -> None:
        """One warning for the frames counted (none: nothing), after ``where`` (the dataset's
        folder) where given."""
        note = self.note()
        if note and where is not None:
            logger.warning("%s: %s", where, note)
        elif note:
            logger.warning("%s", note)

    def record(self) -> np.ndarray:
        """The tally as a cache entry keeps it (:meth:`from_record` reads it back)."""
        return np.array([self.n, *self.files], dtype=str)

    @classmethod
    def from_record(cls, record: np.ndarray) -> ColourFrames:
        tally = cls()
        if len(record):
            tally.n, tally.files = int(record[0]), [str(v) for v in record[1:]]
        return tally


@contextlib.contextmanager
def counting_colour() -> Iterator[ColourFrames]:
    """Inside the block, this thread's frames read in colour are counted in the
    :class:`ColourFrames` it gives, not warned of a file at a time (:func:`say_colour`):
    training and inspect, reading many, say one line for all."""
    outer = getattr(_colour, "tally", None)
    _colour.tally = tally = ColourFrames()
    try:
        yield tally
    finally:
        _colour.tally = outer
