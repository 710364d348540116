"""Decoding image files to grayscale frames: a file Pillow reads (a DICOM's through
:mod:`.dicom`) -> (H, W) uint8 (:func:`read_image`), a frame of a file of several (a cine
loop) by its index, a loop read frame after frame kept open (:func:`frame_loop`); damaged,
oversized and unreadable files refused, named.

Moved from :mod:`ultraseg.io.base` as it was; import its names from here.
"""
from __future__ import annotations

import contextlib
import os
import re
import threading
import warnings
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..config import whole_number
from ..errors import DataError, command_line, is_out_of_memory
from ..fileio import as_path
from ..logs import caught_warnings
from .dicom import dicom_frame_count, is_dicom, read_dicom
from .grey import _say_alpha, inverted, say_colour, say_of_file, to_uint8


#: The fewest bytes a frame of a file of several takes, by Pillow's format name: each frame
#: of an animated PNG has its own fcTL chunk (12 bytes of length, type and CRC around 26 of
#: data); any other file's frame at least 8 (a TIFF page's directory alone is more).
_FRAME_BYTES = {"PNG": 38}
_LEAST_FRAME_BYTES = 8


def _pages(im: Image.Image, path: Path | None = None) -> int:
    """How many frames a Pillow image holds (a phone's MPO JPEG: one, its first is the
    photo). With ``path`` (its file), a DataError where that is more than the file's bytes
    can hold (:data:`_FRAME_BYTES`): an animated PNG's header says how many frames follow,
    and 2**31 - 1 of them would be as many samples, more than memory holds."""
    pages = 1 if im.format == "MPO" else int(getattr(im, "n_frames", 1))
    if pages > 1 and path is not None:
        size = path.stat().st_size
        if pages * _FRAME_BYTES.get(str(im.format), _LEAST_FRAME_BYTES) > size:
            raise DataError(f"says it holds {pages} frames, more than its {size} bytes hold "
                            "(a damaged file?)", path)
    return pages


#: Per thread, inside :func:`frame_loop`, the file of several frames last read by frame, kept
#: open for the frames after it (predict reads a loop frame after frame): ``entry``, (file
#: key, its image, the frame last read); ``depth``, the blocks open. One a thread: reading
#: another file closes it, and so do reading its last frame and the block's end.
_kept = threading.local()


@contextlib.contextmanager
def frame_loop() -> Iterator[None]:
    """Inside the block, a file of several frames read by frame (``read_image(path,
    frame=k)``) stays open for this thread's next frame of it (:data:`_kept`), so a loop read
    frame after frame costs each frame about the same however long it is; closed when the
    outermost block ends. Outside any block a read closes its file before it returns."""
    _kept.depth = getattr(_kept, "depth", 0) + 1
    try:
        yield
    finally:
        _kept.depth -= 1
        if not _kept.depth:
            close_kept()


def close_kept() -> None:
    """Close the loop this thread keeps open for its next frame (:data:`_kept`), if any: for
    a read of another file, and for a caller done reading frames (or stopped by an error)."""
    last = getattr(_kept, "entry", None)
    _kept.entry = None
    if last is not None:
        last[1].close()


def _file_key(path: Path, st: os.stat_result) -> tuple[Any, ...]:
    """What tells ``path``'s file (``st``: its stat) from one written anew under its name
    (copied over, or rewritten in place), which is then opened again, not read on."""
    return (os.path.realpath(path), st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size)


def _take_kept(key: tuple[Any, ...], frame: int) -> tuple[Any, int] | None:
    """The image (or other reader: a deflated DICOM's) kept for the file ``key`` and the frame
    it was last read at, taken out of the cache, if it can go on to ``frame``: as its
    ``reaches(frame)`` says where it has one, else a TIFF to any page (Pillow keeps where
    each page it has read lies), an animated PNG forward only (:func:`_composited`). Any
    other kept one is closed."""
    last = getattr(_kept, "entry", None)
    _kept.entry = None
    if last is None:
        return None
    reaches = getattr(last[1], "reaches", None)
    if last[0] == key and (reaches(frame) if reaches is not None
                           else last[1].format == "TIFF" or last[2] <= frame):
        return last[1], last[2]
    last[1].close()
    return None


def _keep(key: tuple[Any, ...], kept: Any, frame: int, last: Callable[[], bool]) -> None:
    """Keep ``kept`` (read at frame ``frame`` of the file ``key``) open for the next frame
    (:data:`_kept`) inside a :func:`frame_loop`, unless ``last()`` says that frame was the
    file's last; else close it: a loop is closed once its last frame is read, and outside a
    frame loop at once."""
    try:
        going = getattr(_kept, "depth", 0) and not last()
    except BaseException:
        kept.close()
        raise
    if going:
        _kept.entry = (key, kept, frame)
    else:
        kept.close()


def _composited(im: Image.Image, at: int, frame: int) -> None:
    """Decode frame ``frame`` of the animated PNG ``im``, at frame ``at`` (-1: just opened),
    drawn over the frames before it, as Pillow builds it when each is decoded in order: the
    frames after ``at`` are decoded, each once however the loop is read frame by frame."""
    for f in range(at + 1, frame + 1):
        im.seek(f)
        im.load()


def _opened(path: Path) -> Image.Image:
    """``path`` opened by Pillow (its header read, no pixels), a size beyond Pillow's guard
    against decompression bombs said."""
    with caught_warnings(record=True) as caught:
        warnings.simplefilter("always", Image.DecompressionBombWarning)
        im = Image.open(path)
    if any(issubclass(w.category, Image.DecompressionBombWarning) for w in caught):
        _say_beyond_guard(path, *im.size)
    return im


def header_shape(path: str | Path) -> tuple[int, int] | None:
    """An image file's (H, W) from its header without decoding it, where Pillow reads it."""
    try:
        with Image.open(path) as im:
            return im.size[1], im.size[0]
    except Exception:   # (a DICOM, a damaged header: the message goes without the size)
        return None


def check_size_guard(path: Path, width: int, height: int) -> None:
    """Pillow's guard against decompression bombs, on a frame's size read before anything is
    decoded (a DICOM header's Rows and Columns): beyond twice ``Image.MAX_IMAGE_PIXELS`` a
    DataError, beyond it the warning :func:`_opened` gives for Pillow's own files."""
    limit = Image.MAX_IMAGE_PIXELS
    if not limit or width * height <= limit:
        return
    if width * height > 2 * limit:
        raise _beyond_twice_the_guard(path, f"{width} x {height}")
    _say_beyond_guard(path, width, height)


def _beyond_twice_the_guard(path: Path, size: str | None) -> DataError:
    """The refusal of a frame of ``size`` (``W x H``, or a count; None: not known) beyond
    twice Pillow's guard against decompression bombs, in our words, with what to do."""
    said = "" if size is None else f"{size} pixels, "
    return DataError(f"too large to read ({said}over twice Pillow's guard against "
                     f"decompression bombs, {Image.MAX_IMAGE_PIXELS} pixels): downscale the "
                     "image or split it into parts; from Python, a larger "
                     "PIL.Image.MAX_IMAGE_PIXELS reads it, for a file you trust", path)


def _say_beyond_guard(path: Path, width: int, height: int) -> None:
    say_of_file(path, "large", f"{width} x {height} pixels, beyond Pillow's guard against "
                f"decompression bombs ({Image.MAX_IMAGE_PIXELS} pixels): read all the same")


def _check_samples(im: Image.Image, path: Path) -> None:
    """Refuse what Pillow would read wrong of ``im``'s current page (16-bit colour, to its
    high bytes); note in its ``info`` the depth of grey samples under 8 bits
    (:data:`SAMPLE_BITS`), which Pillow scales up to 0..255."""
    # (a tile is (codec, extents, offset, args), args naming the raw mode: 'RGB;16B')
    rawmodes = [str(tile[3]) for tile in (im.tile or []) if len(tile) > 3]
    if im.mode in ("RGB", "RGBA", "LA") and any(";16" in r for r in rawmodes):
        # Pillow keeps only each channel's high byte: a 12-bit scan would read as 0..15
        raise DataError(f"a 16-bit colour image ({im.mode}, 16 bits a channel), which Pillow "
                        "reads only to its high bytes: save it as 16-bit grayscale or as "
                        "8-bit", path)
    low = [int(r[2]) for r in rawmodes if r in ("L;1", "L;2", "L;4")]
    if low:
        im.info[SAMPLE_BITS] = low[0]


def _no_frame(path: Path, pages: int, frame: int) -> DataError:
    return DataError(f"holds {pages} page{'s' * (pages != 1)}: no frame {frame} (frames "
                     "count from 0)", path)


def _at_frame(path: Path, st: os.stat_result, frame: int) -> Image.Image:
    """Frame ``frame`` of ``path`` (``st``: its stat), decoded: from the image kept open for
    it (:data:`_kept`) if there is one, else from a fresh open; kept for the next frame. A
    TIFF's pages are not counted (Pillow walks every page's directory to count them): a page
    past its last is found by seeking to it."""
    key = _file_key(path, st)
    kept = _take_kept(key, frame)
    im, at = kept if kept is not None else (_opened(path), -1)
    try:
        if at < 0 and im.format != "TIFF":
            _check_samples(im, path)
            pages = _pages(im, path)
            if frame >= pages:
                raise _no_frame(path, pages, frame)
        if im.format == "PNG" and _pages(im) > 1:    # a frame is drawn over those before it
            _composited(im, at, frame)
        else:
            try:
                im.seek(frame)
            except EOFError:
                raise _no_frame(path, frame_count(path), frame) from None
            _check_samples(im, path)
            im.load()  # decode now: truncated files fail here, not later
    except BaseException:
        im.close()
        raise
    _kept.entry = (key, im, frame)
    return im


def _open(path: Path, frame: int | None = None, kind: str = "image") -> Image.Image:
    """``path`` opened and decoded (its page ``frame``, from 0, of several); ``kind`` ('image'
    or 'mask') says what a file of several pages is refused as (an image: :class:`SeveralFrames`).
    A page's image is kept open for the pages after it: :func:`_release` it, not close it."""
    try:
        st = path.stat()
        if st.st_size == 0:
            raise DataError("empty file (0 bytes)", path)
        if frame is not None:
            return _at_frame(path, st, frame)
        close_kept()                    # another file read: the loop kept is done with
        im = _opened(path)
        try:
            _check_samples(im, path)
            pages = _pages(im, path)
            if pages > 1 and kind == "image":
                raise SeveralFrames(path, f"holds {pages} pages (a cine loop or a stack?)")
            if pages > 1:
                raise DataError(f"holds {pages} pages (a cine loop or a stack?): ultraseg "
                                "reads one mask per file: save each page as its own file", path)
            im.load()  # decode now: truncated files fail here, not later
        except BaseException:
            im.close()
            raise
        return im
    except DataError:
        raise
    except Image.DecompressionBombError as e:   # ('Image size (N pixels) exceeds limit ...')
        pixels = re.search(r"\((\d+) pixels\)", str(e))
        raise _beyond_twice_the_guard(path, pixels and pixels.group(1)) from e
    except PermissionError as e:
        raise DataError("cannot read file: permission denied", path) from e
    except FileNotFoundError as e:
        raise DataError("broken link: its target is missing" if path.is_symlink()
                        else "file not found", path) from e
    except UnidentifiedImageError as e:
        raise DataError("not an image file Pillow can read" + _tiff_hint(path), path) from e
    except Exception as e:      # Pillow's plugins raise what they meet on damaged files:
        # OSError, ValueError, SyntaxError, EOFError, TypeError ('Missing dimensions')...
        if is_out_of_memory(e):
            raise
        where = f"page {frame + 1}: " if frame is not None else ""
        raise DataError(f"{where}unreadable or truncated image ({e})", path) from e


def _tiff_hint(path: Path) -> str:
    """What to say of a TIFF (by its first bytes) Pillow could not open: float samples of 16
    or 64 bits (as numpy and tifffile write them), which Pillow does not decode, by its first
    directory's tags (read with Pillow's own directory reader); a directory past the file's
    end or cut short (an interrupted copy); else both possibilities. Reads the header and
    that directory alone."""
    from PIL import TiffImagePlugin

    generic = (": a truncated TIFF, or one of a sample type or compression Pillow does not "
               "decode: save it with 8- or 16-bit integers or 32-bit floats, uncompressed")
    damaged = ": a truncated or damaged TIFF (its directory lies past its end)"
    try:
        with open(path, "rb") as f:
            head = f.read(8)
            if head[:4] in (b"II+\0", b"MM\0+"):          # BigTIFF: not looked into
                return generic
            if head[:4] not in (b"II*\0", b"MM\0*"):
                return ""
            tags = TiffImagePlugin.ImageFileDirectory_v2(head)
            if not 8 <= tags.next <= os.fstat(f.fileno()).st_size - 2:
                return damaged
            f.seek(tags.next)
            with caught_warnings(record=True) as cut:      # ("Corrupt EXIF data": cut short)
                warnings.simplefilter("always")
                tags.load(f)
    except Exception as e:      # noqa: BLE001  (a damaged directory: no hint)
        if is_out_of_memory(e):
            raise
        return ""
    if cut:
        return damaged
    if _tag(tags, SAMPLE_FORMAT) == 3 and _tag(tags, 258) in (16, 64):
        return (f": a TIFF of {_tag(tags, 258)}-bit float samples, which Pillow does not "
                f"decode: save it with 32-bit floats (or 8- or 16-bit integers)")
    return generic


#: Why a file of several frames is refused where one frame is wanted.
SEVERAL_FRAMES_ADVICE = ("predict and measure take each of its frames (from Python: "
                         "read_image(path, frame=k)); training and evaluation read one frame "
                         "per file: save each as its own file, with its mask")


class SeveralFrames(DataError):
    """A file of several frames read where one is wanted (no ``frame`` given): ``what`` it
    holds, then ``advice`` (by default :data:`SEVERAL_FRAMES_ADVICE`)."""

    def __init__(self, path: str | Path | None, what: str,
                 advice: str = SEVERAL_FRAMES_ADVICE) -> None:
        super().__init__(f"{what}: {advice}", path)
        self.what = what

    def advised(self, advice: str) -> SeveralFrames:
        """The same refusal with other ``advice`` (what applies where the file was read)."""
        return SeveralFrames(self.path, self.what, advice)


def with_mask_advice(image: Path, mask: Path) -> str:
    """Why the file ``image`` of several frames is refused as a labelled set's image
    (``mask``: its mask), where :data:`SEVERAL_FRAMES_ADVICE`'s 'predict takes each of its
    frames' would not hold: predict takes a labelled set's images as one frame each."""
    return (f"it has a mask ({mask.name}), and in a labelled set each image is one frame: save "
            "each frame as its own image, with its own mask, or predict the loop alone "
            f"(`{command_line('ultraseg', 'predict', 'MODEL', image)}` takes each of its "
            "frames)")


#: Where an image in memory goes, which the readers (they take a file's path) do not take.
IN_MEMORY = ("for an image in memory, decode it with PIL.Image.open(io.BytesIO(data)) and give "
             "that, or its numpy array, to Predictor.predict")


def read_image(path: str | Path, frame: int | None = None) -> np.ndarray:
    """Decode an image file to grayscale (H, W) uint8.

    RGB/RGBA/palette images are converted to luminance (ITU-R 601, Pillow's ``convert('L')``);
    16-bit and float images go to 8 bits by :func:`to_uint8`, the rule arrays given to a
    predictor follow too. A file of several frames (a cine loop: a multi-frame DICOM, a
    multi-page TIFF, an animated PNG; :func:`frame_count`) is refused (:class:`SeveralFrames`)
    unless ``frame`` (from 0) says which.
    """
    path = as_path(path, "read_image", IN_MEMORY)
    frame = whole_number("frame", frame, lo=0, none_ok=True)    # (np.int64(2) is 2)
    if is_dicom(path):      # (it closes the loop kept, or keeps its own: a deflated loop)
        return read_dicom(path, frame=frame)
    im = _open(path, frame)
    try:
        return pillow_to_gray(im, path)
    finally:
        _release(im)


def _release(im: Image.Image) -> None:
    """Close ``im`` (a TIFF page's file stays open for the pages after it: closed here),
    unless it is the image kept for the next frame (:data:`_kept`), inside a
    :func:`frame_loop`, and a frame follows the one read: a loop is closed once its last frame
    is read, when it is no longer kept, and outside a frame loop at once."""
    last = getattr(_kept, "entry", None)
    if last is None or last[1] is not im:
        im.close()
        return
    _kept.entry = None
    _keep(last[0], im, last[2], lambda: _at_last_frame(im, last[2]))


def _at_last_frame(im: Image.Image, frame: int) -> bool:
    """Whether ``frame`` is the last of ``im``'s file: a TIFF is moved on to the page after
    it (its directory alone is read, which the next page's read needs anyway; a directory
    that cannot be read counts as the end, reading that page says why); other files say how
    many frames they hold in their header."""
    if im.format != "TIFF":
        return frame >= _pages(im) - 1
    try:
        im.seek(frame + 1)
    except Exception as e:      # noqa: BLE001  (a damaged directory: TypeError too)
        if is_out_of_memory(e):
            raise
        return True
    return False


#: Where :func:`_open` notes a grey image's sample depth under 8 bits (Pillow scales such
#: samples up to 0..255), in the image's ``info``.
SAMPLE_BITS = "ultraseg_sample_bits"

#: TIFF tags and values Pillow leaves to the reader for some sample types.
PHOTOMETRIC, WHITE_IS_ZERO = 262, 0
SAMPLE_FORMAT, SIGNED = 339, 2


def _tag(tags: Any, tag: int) -> Any:
    """A TIFF tag's (first) value, or None."""
    value = tags.get(tag) if hasattr(tags, "get") else None
    return value[0] if isinstance(value, tuple) and value else value


#: Pillow modes read as the mode they convert to shows them: a palette (with alpha too)
#: through its colours, CMYK and HSV as their RGB, premultiplied alpha (La, RGBa)
#: unpremultiplied, RGBX's padding band dropped.
_SHOWN_AS = {"P": "RGB", "CMYK": "RGB", "HSV": "RGB", "RGBX": "RGB", "PA": "RGBA",
             "La": "LA", "RGBa": "RGBA"}
#: Pillow modes whose simple transparency (``info["transparency"]``: a PNG's tRNS, a GIF's
#: transparent index) becomes an alpha band in the mode each converts to, so that it is
#: warned of as an alpha (:func:`_say_alpha`); the grey read is the same. A 16-bit grey
#: image's (:data:`_TRNS_BY_VALUE`) is not converted (Pillow's LA drops it, and 8 of its
#: bits): the pixels holding its transparent sample are the transparent ones.
_TRNS_AS_ALPHA = {"L": "LA", "RGB": "RGBA", "P": "RGBA", "1": "LA"}
#: Pillow modes whose grey is Pillow's convert("L") (a YCbCr's its Y).
_GREY_BY_PILLOW = ("L", "RGB", "RGBA", "LA", "1", "YCbCr")
#: Pillow modes of grey samples of 16 or 32 bits, integer or float (:func:`to_uint8`).
_NUMERIC_MODES = ("I", "I;16", "I;16L", "I;16B", "I;16N", "F")
#: Pillow modes whose simple transparency is one integer sample, read as it is held.
_TRNS_BY_VALUE = ("I", "I;16", "I;16L", "I;16B", "I;16N")
#: Pillow modes :func:`pillow_to_gray` reads (CIELab by its lightness); others are refused.
PILLOW_MODES = frozenset(_SHOWN_AS) | {"LAB", *_GREY_BY_PILLOW, *_NUMERIC_MODES}


def pillow_to_gray(im: Image.Image, path: str | Path | None = None) -> np.ndarray:
    """A decoded Pillow image -> grayscale (H, W) uint8 by :func:`read_image`'s rules (a
    palette through its colours, CMYK, YCbCr and HSV as they show, premultiplied alpha
    unpremultiplied, 16-bit and float by :func:`to_uint8`); ``path`` names it in errors. A
    mode not in :data:`PILLOW_MODES` (one a later Pillow adds) is refused, named."""
    if im.mode not in PILLOW_MODES:
        raise DataError(f"an image in Pillow mode {im.mode!r}, which ultraseg has no rule to "
                        "read: convert it to 'L' or 'RGB' first", path)
    tiff = getattr(im, "tag_v2", None) or {}
    if im.mode == "L" and _tag(tiff, SAMPLE_FORMAT) == SIGNED:     # Pillow reads it unsigned
        return to_uint8(np.asarray(im).view(np.int8), path)
    # np.array, not np.asarray: a view of Pillow's bytes is read-only, and a caller's
    # `frame[mask] = 255` failed on 8-bit files alone (16-bit ones come back converted)
    if im.mode == "LAB":                                            # its lightness
        return np.array(im.getchannel("L"), dtype=np.uint8)
    if "transparency" in im.info and im.mode in _TRNS_AS_ALPHA:   # a PNG's tRNS, a GIF's
        im = im.convert(_TRNS_AS_ALPHA[im.mode])    # Pillow applies it as the alpha
    elif isinstance(im.info.get("transparency"), int) and im.mode in _TRNS_BY_VALUE:
        _say_alpha(np.where(np.asarray(im) == im.info["transparency"], 0, 255), path)
    if im.mode in _SHOWN_AS:    # as they show, once: their RGB's convert("L") is theirs
        im = im.convert(_SHOWN_AS[im.mode])
    if im.mode in ("RGBA", "LA"):
        _say_alpha(np.asarray(im.getchannel("A")), path)
    if im.mode in ("RGB", "RGBA", "YCbCr"):     # (a YCbCr's grey is its Y: kept to the end)
        say_colour(np.asarray(im if im.mode != "YCbCr" else im.convert("RGB")), path)
    if im.mode in _GREY_BY_PILLOW:
        return np.array(im.convert("L"), dtype=np.uint8)
    arr = np.asarray(im)  # _NUMERIC_MODES: I;16, I, F
    if _tag(tiff, PHOTOMETRIC) == WHITE_IS_ZERO:    # Pillow inverts 8 bits only
        arr = inverted(arr)
    if arr.dtype.kind == "f" and not np.all(np.isfinite(arr)):
        raise DataError("image contains NaN or infinite values", path)
    return to_uint8(arr, path)


#: File endings that can hold several frames (besides DICOM's).
_MULTI_FRAME_EXTENSIONS = (".tif", ".tiff", ".png")


def frame_count(path: str | Path) -> int:
    """How many frames an image file holds: a DICOM's ``NumberOfFrames``, a TIFF's pages, an
    animated PNG's frames; 1 for any other file, and for one that cannot be read (reading it
    says why). Reads the header alone."""
    path = as_path(path, "frame_count", IN_MEMORY)
    try:
        if is_dicom(path):
            return dicom_frame_count(path)
        if path.suffix.lower() not in _MULTI_FRAME_EXTENSIONS:
            return 1
        with caught_warnings():     # (reading the frame says what is wrong)
            warnings.simplefilter("ignore")
            with Image.open(path) as im:
                return _pages(im, path)
    except Exception as e:      # noqa: BLE001  (reading the frame raises its DataError)
        if is_out_of_memory(e):
            raise
        return 1
