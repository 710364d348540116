"""The reader contract: a dataset layout on disk -> a list of :class:`Sample`.

A reader only *finds* files and pairs them (cheap); decoding and validation happen when a
sample is loaded, so that ``inspect`` can report every problem and training can cache arrays.
Decoding rules for images and masks live here, once, for every layout.
"""
from __future__ import annotations

import contextlib
import logging
import os
import re
import threading
import warnings
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path, PurePath
from typing import Any, Callable, ClassVar, Collection, Iterator

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..config import whole_number
from ..errors import DataError, UltrasegError, command_line, is_out_of_memory
from ..fileio import as_path
from ..logs import caught_warnings
from .dicom import dicom_frame_count, is_dicom, read_dicom

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".jpe", ".jfif", ".jif", ".tif", ".tiff", ".bmp",
                    ".dcm", ".dicom")

_LEADING_SUBJECT = re.compile(r"^(\d+)_")

#: A mask with at most this many distinct values (and not binary) is read as a label mask.
MAX_LABELS = 32
#: Share of pixels that must lie near 0 or 255 for a many-valued mask to count as a lossy
#: (JPEG) binary mask, which is then binarised at the midpoint 127.
LOSSY_BINARY_SHARE = 0.98
LOSSY_BINARY_BAND = 48


@dataclass(frozen=True)
class Sample:
    """One frame of a dataset: where its files are and what is known about it.

    ``mask_paths`` is empty for an unlabelled image; several paths are merged by union.
    ``mask_kind`` is 'mask' (binary or label raster) or 'outline' (a closed contour to fill).
    ``frame``: which frame of a file holding several (a cine loop: a multi-frame DICOM, a
    multi-page TIFF, an animated PNG), counted from 0; None for a file that is one frame (a
    file of several is then refused when read, see :func:`split_frames`).
    """

    name: str
    image_path: Path
    mask_paths: tuple[Path, ...] = ()
    subject: str = ""
    meta: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)
    mask_kind: str = "mask"
    frame: int | None = None
    #: The label of a black-and-white (0/255) mask's white: 1, or 255 in a set of label masks
    #: (:func:`ultraseg.io.white_for` decides it over the set).
    white: int = 1

    @property
    def labelled(self) -> bool:
        return bool(self.mask_paths)

    def load_image(self) -> np.ndarray:
        """The grayscale image, (H, W) uint8."""
        try:
            return read_image(self.image_path, frame=self.frame)
        except SeveralFrames as e:
            if not self.mask_paths:
                raise
            # a loop refused says what applies: predict takes a labelled set's images whole
            raise e.advised(with_mask_advice(self.image_path, self.mask_paths[0])) from None

    def load_mask(self) -> np.ndarray | None:
        """The mask, (H, W) uint8: 0 background, 1..K structures (labels kept); None if unlabelled."""
        decoded = self.decode_masks()
        return None if decoded is None else decoded.mask(self.white)

    def decode_masks(self) -> DecodedMasks | None:
        """The sample's mask files decoded, once each (:func:`decode_mask`), to be read with
        either white (:meth:`DecodedMasks.mask`); None if unlabelled."""
        if not self.mask_paths:
            return None
        read = [decode_mask(p) for p in self.mask_paths]
        shape = read[0][0].shape
        for p, (m, _) in zip(self.mask_paths, read):
            if m.shape != shape:
                raise DataError(f"mask is {m.shape[1]}x{m.shape[0]}, other masks of "
                                f"{self.name} are {shape[1]}x{shape[0]}", p)
        return DecodedMasks(self, tuple(m for m, _ in read), tuple(bw for _, bw in read))

    def load_decoded(self) -> tuple[np.ndarray, DecodedMasks | None]:
        """Image and decoded masks (:meth:`decode_masks`), checked to have the same size."""
        image = self.load_image()
        decoded = self.decode_masks()
        if decoded is not None and decoded.masks[0].shape != image.shape:
            shape = decoded.masks[0].shape
            raise DataError(
                f"mask is {shape[1]}x{shape[0]} but its image is "
                f"{image.shape[1]}x{image.shape[0]}", self.mask_paths[0])
        return image, decoded

    def load(self) -> tuple[np.ndarray, np.ndarray | None]:
        """Image and mask, checked to have the same size."""
        image, decoded = self.load_decoded()
        return image, None if decoded is None else decoded.mask(self.white)


@dataclass(frozen=True)
class DecodedMasks:
    """A sample's mask files decoded once (:meth:`Sample.decode_masks`): each with its white
    label 1, and whether it was black and white (:func:`decode_mask`)."""

    sample: Sample
    masks: tuple[np.ndarray, ...]
    black_and_white: tuple[bool, ...]

    @property
    def has_white(self) -> bool:
        """Whether a black-and-white mask of them has a white pixel: the white changes it."""
        return any(bw and m.any() for m, bw in zip(self.masks, self.black_and_white))

    @property
    def label_mask(self) -> bool:
        """Whether one of them is a label mask, making its set's black-and-white masks' white
        label 255 (:func:`ultraseg.io.white_label`): it holds a label other than 1 and is not
        0/255 alone (0/128/255, or 1 with an 'ignore' 255)."""
        for m, bw in zip(self.masks, self.black_and_white):
            held = set(np.unique(m).tolist()) - {0}
            if not bw and held - {1} and held != {255}:
                return True
        return False

    def mask(self, white: int) -> np.ndarray:
        """The sample's mask (:meth:`Sample.load_mask`), a black-and-white mask's white label
        ``white``."""
        masks = [white_labelled(m, bw, white) for m, bw in zip(self.masks, self.black_and_white)]
        if len(masks) == 1:
            mask = masks[0]
        else:  # several structures of one image: union (labels of later masks win where set)
            mask = masks[0].copy()
            for m in masks[1:]:
                mask[m > 0] = m[m > 0]
        if self.sample.mask_kind == "outline":
            from ..preprocess import fill_outline_labels

            mask = fill_outline_labels(mask, path=self.sample.mask_paths[0])
        return mask


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
        raise DataError(f"too large to read ({width} x {height} pixels, over twice Pillow's "
                        f"guard against decompression bombs, {limit} pixels)", path)
    _say_beyond_guard(path, width, height)


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
    except Image.DecompressionBombError as e:
        raise DataError(f"too large to read ({e})", path) from e
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
    from, which warnings name (each once). NaN and infinities are the caller's to refuse."""
    if image.dtype == np.uint8:
        return image
    if image.dtype == bool:
        return image.astype(np.uint8) * 255
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


def read_mask(path: str | Path, white: int = 1) -> np.ndarray:
    """Decode a mask file to (H, W) uint8 labels: binary masks become {0, 1}, label masks keep labels.
    ``white``: the label of a 0/255 mask's white, 255 where the set's other masks are label
    masks (:func:`ultraseg.io.white_for`), else 1.

    Accepted: values {0,1}, {0,255}, or two values {0, N} at 16 bits; JPEG masks, whatever
    values their compression leaves (>= 98 % of pixels within 48 of 0 or 255), binarised at 127;
    palette PNGs: a palette of greys is decoded through its colours (a quantized black-and-white
    mask may put white at index 0), a coloured palette's indices are the labels (at most 32);
    integer label masks with at most 32 distinct values (at 2 or 4 bits a sample, the values
    stored, not Pillow's scaled ones); RGB/RGBA masks whose colour channels
    agree, as gray; RGB/RGBA masks of at most 32 colours as labels, black the background and
    each colour's label its grey level (ITU-R 601 luma: red 76, green 150); resized with a
    smoothing filter, grey (0/255, 0/65535 or floats in [0, 1], and a band of blends) or of
    one colour blended with black, binarised at half (:func:`_blended_binary`,
    :func:`_blended_colour`), of several colours blended refused; gray masks with an
    alpha channel (LA); CMYK and YCbCr masks by their RGB colours.
    With an alpha channel (a palette's transparency too), the alpha is the mask when it varies
    and the colour is one value over the pixels not fully transparent (a structure drawn as
    opaque pixels of one colour on a transparent frame, whatever colour the transparent pixels
    hold; a colour, not a grey, labels it by its grey level, as above, in a palette too unless
    it carries colours no pixel uses, a label palette's, whose indices stay the labels);
    otherwise the alpha is ignored, but a fully transparent pixel of a coloured mask (or
    coloured palette) is background.
    Refused with :class:`DataError`: anything else, e.g. a photograph saved as a mask.
    """
    return white_labelled(*decode_mask(as_path(path, "read_mask", IN_MEMORY)), white)


def white_labelled(mask: np.ndarray, black_and_white: bool, white: int) -> np.ndarray:
    """``mask`` (read with its white label 1) with a black-and-white mask's white label
    ``white`` (1, or 255 in a set of label masks: :func:`ultraseg.io.white_for`)."""
    return mask * np.uint8(white) if black_and_white and white != 1 else mask


def decode_mask(path: str | Path) -> tuple[np.ndarray, bool]:
    """The mask :func:`read_mask` reads from ``path`` with its white label 1, and whether it was
    black and white (0/255 at 8 bits, 0/N at 16, a 1-bit image, a JPEG or a resize's blends
    of one: binarised), whose white :func:`read_mask` gives the label ``white``; a 0/1 mask's
    1 is not (it is label 1 whatever the set)."""
    path = as_path(path, "decode_mask", IN_MEMORY)
    if is_dicom(path):
        raise DataError("a DICOM file as a mask: masks are image files (PNG, TIFF...); DICOM "
                        "segmentation objects are not read", path)
    with _open(path, kind="mask") as im:
        return _mask_pixels(im, path)


def _mask_pixels(im: Image.Image, path: Path) -> tuple[np.ndarray, bool]:
    """:func:`decode_mask`'s rules on the decoded ``im``."""
    lossy = im.format in LOSSY_FORMATS
    if im.mode == "1":
        return np.asarray(im, dtype=np.uint8), True
    if im.mode in ("CMYK", "YCbCr"):        # colour spaces: their colours, as a viewer shows
        im = im.convert("RGB")
    if im.mode == "P":
        indices = np.asarray(im, dtype=np.uint8)
        rgba = np.asarray(im.convert("RGBA"))
        rgb = rgba[..., :3]
        alpha = rgba[..., 3]
        if "transparency" in im.info and _drawn_in_alpha(rgb, alpha) and (
                _channels_agree(rgb[alpha > 0][:1]) or not _other_colours(im, indices)):
            arr = rgba      # drawn in the alpha, optimised: read as the RGBA mask it shows
        elif not _channels_agree(rgb):  # coloured palette: indices are labels, a transparent
            return _check_label_count(np.where(alpha > 0, indices, 0), path), False  # pixel none
        else:
            arr = rgb[..., 0]                           # greys: decode through the palette
    else:
        arr = np.asarray(im)
        bits = im.info.get(SAMPLE_BITS)
        if bits and not set(np.unique(arr).tolist()) <= {0, 255}:
            arr = arr // (255 // (2 ** bits - 1))    # labels of 2 or 4 bits, as stored
    if arr.ndim == 3:
        has_alpha = arr.shape[2] in (2, 4)                  # LA, RGBA
        colour = arr[..., :-1] if has_alpha else arr
        alpha = arr[..., -1] if has_alpha else None
        if alpha is not None and _drawn_in_alpha(colour, alpha):
            arr = alpha                                 # drawn in the alpha channel
            seen = colour[alpha > 0][:1]
            if not _channels_agree(seen):   # in a colour: labelled as on an opaque frame
                level = max(int(_grey_levels(seen[None])[0, 0]), 1)
                return (_classify(arr, path)[0] > 0).astype(np.uint8) * level, False
        elif _channels_agree(colour):
            arr = colour[..., 0]
        else:           # a transparent pixel is background, whatever colour it holds
            if alpha is not None:
                colour = np.where(alpha[..., None] > 0, colour, 0).astype(colour.dtype)
            return _colour_labels(colour, lossy, path), False
    if lossy:
        return _binarise_lossy(arr, path), True
    return _classify(arr, path)


#: Share of a lossy mask's pixels above its lowest value, none above half the range, beyond
#: which it is taken for a 0/1 or label mask saved as JPEG rather than an empty mask.
LOW_LABEL_SHARE = 0.001

#: Pillow's names of lossy formats: their masks are binary masks blurred by compression.
LOSSY_FORMATS = frozenset({"JPEG", "MPO", "JPEG2000"})


def _other_colours(im: Image.Image, indices: np.ndarray) -> bool:
    """Whether the palette image ``im`` (``indices``, its pixels) carries colours no pixel
    uses (besides black, a palette's padding): a label palette's colormap, a colour for each
    label of its set, whose indices are labels even where a mask shows one label; a PNG
    optimiser (pngquant, oxipng, Pillow's quantize) keeps the colours used alone."""
    entries = np.asarray(im.getpalette() or [], np.uint8).reshape(-1, 3)
    used = np.bincount(indices.ravel(), minlength=len(entries))[:len(entries)] > 0
    spare = entries[~used]
    spare = spare[spare.any(axis=1)]                       # (black: padding)
    return bool(spare.size) and not np.isin(spare @ [65536, 256, 1],
                                            entries[used] @ [65536, 256, 1]).all()


def _channels_agree(colour: np.ndarray) -> bool:
    return all(np.array_equal(colour[..., 0], colour[..., c]) for c in range(1, colour.shape[-1]))


def _flat(arr: np.ndarray) -> bool:
    return bool(arr.size) and bool((arr == arr.flat[0]).all())


def _drawn_in_alpha(colour: np.ndarray, alpha: np.ndarray) -> bool:
    """Whether a mask's alpha is its structure: the alpha varies and the colour (H, W, C) is
    one value over the pixels that are not fully transparent (what colour those hold does not
    matter: GIMP and Photoshop write them (0, 0, 0, 0))."""
    if _flat(alpha):
        return False
    seen = colour[alpha > 0]                            # (N, C), N > 0: the alpha varies
    return bool((seen == seen[0]).all())


def _grey_levels(colour: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 colours -> (H, W) uint8 grey levels, ITU-R 601 luma as Pillow's
    ``convert("L")`` (as an RGB image is read)."""
    return np.asarray(Image.fromarray(np.ascontiguousarray(colour, np.uint8), "RGB").convert("L"))


def _colour_labels(colour: np.ndarray, lossy: bool, path: Path) -> np.ndarray:
    """An RGB mask (H, W, 3) whose channels disagree as labels: black the background, each
    colour's label its grey level (ITU-R 601 luma, as Pillow's ``convert("L")``), so one colour
    has one label in every mask of a set (drawn in the alpha channel too); an anti-aliased one
    binarised or refused by :func:`_blended_colour`. Refused: more than
    :data:`MAX_LABELS` colours (a photograph), colours that share a grey level (or a colour
    of grey level 0 but black), and a lossy file (compression scatters its colours)."""
    if lossy:
        raise DataError("colour mask saved as JPEG, which compression blurs into many colours: "
                        "save masks as PNG (gray, or a palette PNG for labels)", path)
    packed = (colour[..., 0].astype(np.uint32) << 16) | (colour[..., 1].astype(np.uint32) << 8) \
        | colour[..., 2]
    colours, first = np.unique(packed, return_index=True)
    if colours.size > 2:
        blended = _blended_colour(colour, packed, path)
        if blended is not None:
            return blended
    if colours.size > MAX_LABELS:
        raise DataError(f"mask is neither binary nor a label mask: {colours.size} distinct "
                        f"colours (at most {MAX_LABELS} label colours; is this an image saved "
                        "as a mask?)", path)
    luma = _grey_levels(colour)
    levels = luma.ravel()[first]                        # each colour's grey level
    if np.unique(levels).size < colours.size or (levels[colours != 0] == 0).any():
        raise DataError(f"colour mask of {colours.size} colours, some sharing a grey level "
                        "(each colour's label is its grey level): save it as a palette PNG "
                        "(or a gray label mask)", path)
    return luma


#: How far (in each channel) a colour may lie from the blend of two colours and count as it:
#: a resize rounds each channel of a blend to a whole value.
BLEND_SLACK = 2
#: Share of a soft-edged mask's in-between pixels that must be blends of two of its colours
#: (where three regions meet, a pixel blends three).
BLEND_SHARE = 0.9


def _unpacked(packed: np.ndarray) -> np.ndarray:
    """(N,) colours packed as 0xRRGGBB -> (N, 3) floats."""
    return np.stack([(packed >> 16) & 255, (packed >> 8) & 255, packed & 255], -1).astype(float)


def _blended_colour(colour: np.ndarray, packed: np.ndarray, path: Path) -> np.ndarray | None:
    """A colour mask (H, W, 3) resized with interpolation (anti-aliased: its edges blend its
    colours), as :func:`_blended_binary` tells a grey one: its colours are those of solid
    regions (a pixel whose 8 neighbours share its colour) and, in a band at most two pixels
    thick between them, blends of two of them (within :data:`BLEND_SLACK`). Where they are
    black and one colour C, the labels of a blended binary of C (a pixel of t * C is C where
    t >= 1/2, labelled by C's grey level); where more colours blend, a DataError (there is no
    one colour to binarise, and each blend would be a label). None: no such mask."""
    from scipy import ndimage

    h, w = packed.shape
    # (the frame's edge repeated, as a neighbour outside it)
    solid = ((ndimage.maximum_filter(packed, size=3, mode="nearest") == packed)
             & (ndimage.minimum_filter(packed, size=3, mode="nearest") == packed))
    main = np.unique(packed[solid])
    between = ~np.isin(packed, main)
    if main.size < 2 or 0 not in main or not between.any():
        return None
    if not _thin_band(between):
        return None             # in-between colours in regions of their own: labels
    mids, count = np.unique(packed[between], return_counts=True)
    mid, ends = _unpacked(mids), _unpacked(main)
    on = np.zeros(len(mids), bool)
    for i in range(len(ends)):
        for j in range(i + 1, len(ends)):
            d = ends[j] - ends[i]
            t = np.clip((mid - ends[i]) @ d / (d @ d), 0.0, 1.0)
            on |= np.abs(mid - (ends[i] + t[:, None] * d)).max(axis=1) <= BLEND_SLACK
    if main.size == 2 and on.all():         # black and C: a blended binary of C
        c = ends[1]
        fg = colour.reshape(-1, 3).astype(float) @ c >= 0.5 * (c @ c)
        level = max(int(_grey_levels(c[None, None].astype(np.uint8))[0, 0]), 1)
        return fg.reshape(h, w).astype(np.uint8) * level
    if main.size > 2 and count[on].sum() >= BLEND_SHARE * count.sum():
        raise DataError(f"a soft-edged (anti-aliased) colour mask: {len(mids)} colours blend "
                        f"its {main.size - 1} label colours at their edges, and each would be "
                        "a label: save it without anti-aliasing (with nearest-neighbour "
                        "resizing), or as a gray or palette label mask", path)
    return None


def _check_label_count(labels: np.ndarray, path: Path) -> np.ndarray:
    n = np.unique(labels).size
    if n > MAX_LABELS:
        raise DataError(f"mask is neither binary nor a label mask: {n} distinct palette indices "
                        f"(at most {MAX_LABELS} labels; is this an image saved as a mask?)", path)
    return labels


def _binarise_lossy(arr: np.ndarray, path: Path) -> np.ndarray:
    """A JPEG mask is a binary mask that compression blurred: threshold at half the range,
    however few or many values it holds (an empty mask may decode to a flat 1 or 2, a tiny
    structure to a few ringing values); refused unless nearly every pixel is near 0 or the top."""
    top = 255 if arr.max() <= 255 else int(arr.max())
    band = LOSSY_BINARY_BAND * top / 255
    if ((arr <= band) | (arr >= top - band)).mean() < LOSSY_BINARY_SHARE:
        raise _not_a_mask(np.unique(arr), path, lossy=True)
    mask = (arr > top / 2).astype(np.uint8)
    if not mask.any() and not _flat(arr) and (arr > arr.min()).mean() >= LOW_LABEL_SHARE:
        # a 0/1 or label mask saved as JPEG: its structure sits at 1, 2 ... and would be read
        # as an empty mask (an empty JPEG mask decodes flat)
        raise DataError(f"JPEG mask whose values reach only {int(arr.max())}: a 0/1 or label "
                        "mask saved as JPEG, which compression blurs; save masks as PNG", path)
    return mask


#: The white of a black-and-white mask at 8 and at 16 bits, whose blends a resize with a
#: filter leaves between it and 0 (:func:`_blended_binary`).
WHITES = (255, 65535)


def _blended_binary(arr: np.ndarray, top: int) -> bool:
    """Whether the integer ``arr`` is a 0/``top`` mask (``top`` one of :data:`WHITES`: 0/255,
    or 0/65535 at 16 bits) resized with interpolation or area averaging (a dataset's masks
    scaled down with a resize's default filter): values 0 and ``top`` and, between them, a
    band of in-between values at most two pixels thick wherever it lies (no in-between pixel
    has only in-between neighbours) that lies between the two: each of its pieces touches a 0
    and a ``top`` pixel. A label mask's regions are thicker than that, or apart from the 255
    structure (a thin line labelled 128 beside it)."""
    if (top not in WHITES or arr.dtype.kind not in "ui" or arr.min() != 0
            or arr.max() != top):
        return False
    between = (arr > 0) & (arr < top)
    return (bool(between.any()) and _thin_band(between)
            and _between(between, arr == 0, arr == top))


def _between(band: np.ndarray, low: np.ndarray, high: np.ndarray) -> bool:
    """Whether every piece of ``band`` (8-connected, bool (H, W)) touches a pixel of ``low``
    and one of ``high``: blends lie between the two values they blend."""
    from scipy import ndimage

    eight = np.ones((3, 3), bool)
    pieces, n = ndimage.label(band, structure=eight)
    index = np.arange(1, n + 1)
    for side in (low, high):
        near = ndimage.binary_dilation(side, structure=eight)
        if not ndimage.maximum(near, pieces, index).all():
            return False
    return True


def _thin_band(between: np.ndarray) -> bool:
    """Whether the in-between pixels of a resized mask (bool (H, W)) lie in a band at most two
    pixels thick: none has only in-between neighbours (the frame's edge counting as such)."""
    from scipy import ndimage

    return not ndimage.binary_erosion(between, structure=np.ones((3, 3), bool),
                                      border_value=1).any()


def _not_a_mask(values: np.ndarray, path: str | Path | None, lossy: bool = False
                ) -> DataError:
    """The refusal of values that are neither a binary nor a label mask; ``lossy``: of a JPEG
    mask, which may be a label mask that compression blurred (0/85/170/255)."""
    why = ("a label mask saved as JPEG, whose compression blurs its labels: save masks as "
           "PNG; or an image saved as a mask?" if lossy else "is this an image saved as a mask?")
    return DataError(
        f"mask is neither binary nor a label mask: {values.size} distinct values spread over "
        f"{values.min():g}..{values.max():g} ({why})", path)


def classify_mask_values(arr: np.ndarray, path: str | Path | None = None) -> np.ndarray:
    """Apply the mask rules of :func:`read_mask` to a 2D integer array; returns uint8 labels
    (a black-and-white array's white label 1)."""
    return _classify(arr, path)[0]


def _classify(arr: np.ndarray, path: str | Path | None) -> tuple[np.ndarray, bool]:
    """:func:`classify_mask_values` with white label 1, and whether ``arr`` was black and
    white (:func:`decode_mask`)."""
    if arr.dtype.kind == "f":
        if not np.all(np.isfinite(arr)):
            raise DataError("mask contains NaN or infinite values", path)
    values = np.unique(arr)
    if values.size == 0:
        raise DataError("mask has no pixels", path)
    vset = set(values.tolist())
    if vset <= {0, 1}:
        return arr.astype(np.uint8), False
    shown = values          # (a refusal names the values as stored)
    if arr.dtype.kind == "f" and values.min() >= 0 and values.max() <= 1:
        # a 0/1 float mask resized with a filter: read as the same mask at 8 bits is, by
        # every rule below (to_uint8's [0, 1] times 255)
        arr = unit_to_uint8(arr)
        values = np.unique(arr)
        vset = set(values.tolist())
    if vset <= {0, 255} or (values.size == 2 and values.min() == 0 and values.max() > 255):
        return (arr > 0).astype(np.uint8), True     # black and white, 8 or 16 bits
    top = 255 if values.max() <= 255 else int(values.max())
    if _blended_binary(arr, top):   # resized with interpolation: the half-covered pixels in
        return (arr > top / 2).astype(np.uint8), True  # (as labels, every edge pixel was)
    if values.min() < 0:
        raise DataError("mask has negative values", path)
    band = LOSSY_BINARY_BAND * top / 255
    near = (arr <= band) | (arr >= top - band)
    # a lossy binary mask has several values near the top (JPEG rings around 255); a label
    # mask has at most one there (e.g. 255 as 'ignore'), however few values it has in all
    lossy = values.size > MAX_LABELS or int((values >= top - band).sum()) >= 2
    if values.max() >= top / 2 and lossy and near.mean() >= LOSSY_BINARY_SHARE:
        return (arr > top / 2).astype(np.uint8), True
    if values.size <= MAX_LABELS and np.all(values == np.round(values)):
        if values.max() <= 255:
            return arr.astype(np.uint8), False
        if arr.dtype.kind in "ui":  # a label mask whose labels do not fit 8 bits
            above = ", ".join(str(int(v)) for v in values[values > 255][:5])
            raise DataError(f"label mask with labels above 255 ({above}"
                            f"{', ...' if (values > 255).sum() > 5 else ''}): ultraseg keeps "
                            "labels 1 to 255; renumber them 1..K (at most 32 values in all)",
                            path)
    raise _not_a_mask(shown, path)


def select_label(mask: np.ndarray, label: int | None) -> np.ndarray:
    """Binary target from a label mask: any structure when ``label`` is None, else label
    ``label`` (>= 1: 0 is the background, which as a target would be nearly every pixel)."""
    if label is None:
        return mask > 0
    check_label(label)
    return mask == label


class LabelTally:
    """The labels a run's masks hold, to say when the one selected (``--label K``) is in none of
    them: every frame's truth is then empty (a wrong K, or a checkpoint trained on another
    set's labels). :meth:`add` each mask with its :func:`select_label`; then
    :meth:`warn_if_absent`."""

    def __init__(self, label: int | None) -> None:
        self.label = label
        self.masks = 0
        self.held: set[int] = set()

    def add(self, mask: np.ndarray, selected: np.ndarray) -> None:
        self.masks += 1
        if self.label is None:
            return
        if selected.any():
            self.held.add(self.label)
        else:
            self.held.update(int(v) for v in np.unique(mask[mask > 0]))

    def absent(self) -> list[int] | None:
        """The labels the masks hold where none holds ``label``; None where one does, where
        they hold none at all (empty masks), or where no label is selected (any structure)."""
        if self.label is None or not self.held or self.label in self.held:
            return None
        return sorted(self.held)

    def warn_if_absent(self, consequence: str, logger: logging.Logger = log) -> list[int] | None:
        """:meth:`absent`, with a warning on ``logger`` ending in ``consequence`` (what the run
        did with the empty truth) where it is not None."""
        held = self.absent()
        if held:
            logger.warning("label %d occurs in none of the %d masks (they hold labels %s): %s",
                           self.label, self.masks, held, consequence)
        return held


def check_label(label: int | None) -> None:
    """Refuse a ``--label`` that names no structure: 0 (the background) or below."""
    if label is not None and (isinstance(label, bool) or not isinstance(label, (int, np.integer))
                              or label < 1):
        raise UltrasegError(f"--label (preprocess.label) must be a structure's label, 1 or "
                            f"more (0 is the background), got {label!r}")


class Reader(ABC):
    """One dataset layout. Subclasses set ``name`` and implement ``detect`` and ``scan``."""

    name: ClassVar[str]
    description: ClassVar[str] = ""

    def __init__(self, subject_pattern: str | None = None) -> None:
        self.subject_pattern = re.compile(subject_pattern) if subject_pattern else None
        self.pattern_hits = 0
        self.pattern_misses: list[str] = []   # stems the pattern did not match
        # whether the caller may draw a subject-grouped split of the samples (inspect, train,
        # evaluate): warnings about the grouping are said only then (predict and measure draw
        # none; :func:`ultraseg.io.scan_dataset` sets it from ``needs_labels``)
        self.groups_subjects = True
        # whether a ``subject_pattern`` matching no name is refused; False: the layout's
        # subjects are kept (:func:`ultraseg.io.scan_dataset` sets it)
        self.pattern_required = True

    @classmethod
    @abstractmethod
    def detect(cls, root: Path) -> bool:
        """True when ``root`` looks like this layout (cheap: names only)."""

    @abstractmethod
    def scan(self, root: Path) -> tuple[list[Sample], list[DataError]]:
        """Pair the files under ``root``: the samples found and the structural problems."""

    def subject_of(self, stem: str, default: str | None = None) -> str:
        """Subject id from a file stem: --subject-pattern's first group that matched (or its
        whole match) if given and it matches a non-empty string; else the layout's ``default``
        (the stem where there is none).
        Misses are counted in :attr:`pattern_misses` (:func:`ultraseg.io.scan_dataset` says)."""
        if self.subject_pattern is not None:
            m = self.subject_pattern.search(stem)
            # the first group that took part in the match, else the whole match; an empty
            # subject would join every such name into one subject, so it counts as a miss
            subject = next((g for g in m.groups() if g is not None), m.group(0)) if m else ""
            if subject:
                self.pattern_hits += 1
                return subject
            self.pattern_misses.append(stem)
        return stem if default is None else default

    @property
    def subjects_by_pattern(self) -> bool:
        """Whether ``subject_pattern`` gives the subjects (as far as the names read so far
        say): one is given, and it matched a name or must (one that need not and matched
        none leaves the layout's subjects, as none)."""
        return self.subject_pattern is not None and (self.pattern_required
                                                     or self.pattern_hits > 0)

    def leading_subject(self, stem: str) -> str:
        """The subject of a ``SUBJECT_FRAME`` stem (its leading integer), else the stem itself;
        ``subject_pattern`` overrides."""
        m = _LEADING_SUBJECT.match(stem)
        return self.subject_of(stem, m.group(1) if m else stem)


#: The file ``predict``, ``measure`` and ``train`` leave in their output folder: images in a
#: folder that holds it are outputs, which a later scan of a folder above it leaves out.
OUTPUT_MARKER = ".ultraseg-output"


def mark_output_folder(folder: Path, by: str, own: Collection[str] = ()) -> None:
    """Leave :data:`OUTPUT_MARKER` in ``folder`` (which exists), naming the command ``by``.

    A folder that already holds image files ultraseg did not write (a user's images, in it or
    one level below) is a user error: marking it would hide those images from every later
    scan of a folder above it, and the outputs would mix with them. ``own``: names of files
    directly in ``folder`` that are the command's own (a run folder from before the marker
    existed holds its figures)."""
    from ..fileio import atomic_write_text

    marker = folder / OUTPUT_MARKER
    if marker.exists():
        return
    check_no_foreign_images(folder, own)
    atomic_write_text(marker, f"written by ultraseg {by}: its images are outputs, which "
                              "scans of the folders above leave out\n")


def check_no_foreign_images(folder: Path, own: Collection[str] = ()) -> None:
    """Refuse an output ``folder`` that holds image files ultraseg did not write, in it or one
    level below (in folders not marked as ultraseg's): see :func:`mark_output_folder`, which
    calls it; a command that writes elsewhere first (``demo``) calls it before that."""
    if not folder.is_dir() or (folder / OUTPUT_MARKER).exists():
        return
    theirs = [p for p in folder.iterdir() if is_image_file(p) and p.name not in own]
    theirs += [p for d in folder.iterdir() if d.is_dir() and not d.name.startswith(".")
               and not (d / OUTPUT_MARKER).exists() for p in d.iterdir() if is_image_file(p)]
    theirs.sort(key=lambda q: natural_key(str(q)))
    if theirs:
        raise DataError(f"the output folder already holds {len(theirs)} image file"
                        f"{'s' * (len(theirs) > 1)} ultraseg did not write (first: "
                        f"{theirs[0].name}); choose a new or empty folder", folder)


def in_output_folder(image: Path, root: Path, marked: dict[Path, bool]) -> bool:
    """Whether a folder between ``image`` and the scanned folder ``root`` (not ``root`` itself:
    an output folder named as input is read) holds :data:`OUTPUT_MARKER`. ``marked`` caches
    the answer per folder."""
    for folder in image.parents:
        if folder == root or root not in folder.parents:
            return False
        if folder not in marked:
            marked[folder] = (folder / OUTPUT_MARKER).is_file()
        if marked[folder]:
            return True
    return False


def warn_outputs_left_out(root: Path, n: int) -> None:
    """Say that ``n`` images under ``root`` were left out as ultraseg's own outputs."""
    logging.getLogger("ultraseg.io").warning(
        "%s: left out %d images in folders ultraseg wrote (%s marks them)", root, n,
        OUTPUT_MARKER)


def is_image_file(p: Path) -> bool:
    """An image file by its name (not hidden), or a link to one whose target is missing: kept,
    so that reading it says so, rather than dropped in silence."""
    return ((p.is_file() or (p.is_symlink() and not p.exists()))
            and (p.suffix.lower() in IMAGE_EXTENSIONS or is_dicom(p))
            and not p.name.startswith("."))


def image_stem(path: PurePath) -> str:
    """An image file's name without its ending, where the ending is an image file's
    (:data:`IMAGE_EXTENSIONS`); else its whole name: a DICOM file read by its marker
    (:func:`~ultraseg.io.dicom.is_dicom`) named by its UID, ``US.1.2.840.113619.2.1.1``, keeps
    its last UID part, which tells it from the other frames of its series (its mask is
    ``US.1.2.840.113619.2.1.1_mask.png``)."""
    name = path.name
    ending = path.suffix
    return name[: -len(ending)] if ending and ending.lower() in IMAGE_EXTENSIONS else name


#: Folders no dataset lives in: macOS's archive metadata (its ``._NAME`` files are no images).
NO_DATA_FOLDERS = ("__MACOSX",)


def iter_files(root: Path) -> Iterator[Path]:
    """Every file below ``root`` at any depth, as paths under ``root``, in the order found (a
    search can stop at the first it wants): linked folders are followed (each real folder
    once, so a link to a folder above ends no walk), hidden folders (``.ipynb_checkpoints``,
    ``.thumbnails``) and :data:`NO_DATA_FOLDERS` are not; broken links are kept as files, for
    reading them to say so."""
    seen: set[str] = set()
    links: list[str] = []

    def walk(top: str, follow: bool) -> Iterator[Path]:
        for folder, dirs, files in os.walk(top, followlinks=follow):
            real = os.path.realpath(folder)
            if real in seen:            # reached again through a link
                dirs[:] = []
                continue
            seen.add(real)
            dirs[:] = [d for d in dirs if not d.startswith(".") and d not in NO_DATA_FOLDERS]
            if not follow:
                links.extend(os.path.join(folder, d) for d in dirs
                             if os.path.islink(os.path.join(folder, d)))
            yield from (Path(folder, f) for f in files)

    # the real folders first, then links to folders not reached that way: a frame keeps its
    # real folder's name where a link (latest -> 2024-06) leads there too
    yield from walk(str(root), follow=False)
    for link in sorted(links):
        yield from walk(link, follow=True)


#: Endings of video files: loops, whose frames ultraseg reads once extracted or exported.
VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".wmv", ".m4v", ".mpg", ".mpeg", ".webm")
#: Endings of image files ultraseg does not read: counted where a folder holds them
#: (:func:`unread_image_files`), so that they are not left out in silence.
UNREAD_IMAGE_EXTENSIONS = (".webp", ".gif", ".jp2", ".j2k", ".heic", ".heif", ".avif", ".jxl",
                           ".pgm", ".ppm", ".pnm", ".tga", ".dib", ".ico", ".psd", ".exr",
                           ".pcx", ".nii", ".nii.gz", ".mha", ".mhd", ".nrrd", *VIDEO_EXTENSIONS)

#: Endings of medical volume formats (NIfTI, MetaImage, NRRD), named as such where one is
#: given on its own.
VOLUME_FORMATS = {".nii": "NIfTI", ".nii.gz": "NIfTI", ".mha": "MetaImage",
                  ".mhd": "MetaImage", ".nrrd": "NRRD"}

def video_advice(video: PurePath, their: str, loop: str) -> str:
    """How the frames of the video file ``video`` are read: an ffmpeg command for it (``their``
    and ``loop`` the words for one video or several)."""
    frames = video.with_name(f"{video.stem}_%03d.png")
    return (f"extract {their} frames ({command_line('ffmpeg', '-i', video, frames)}) or export "
            f"{loop} as multi-frame DICOM or TIFF, which predict and measure read frame by "
            "frame")


def convert_advice(counts: dict[str, int]) -> str:
    """What to do with the files :func:`unread_image_files` counted (``counts``): convert
    the images, get the videos' frames."""
    videos = [k for k in counts if k in VIDEO_EXTENSIONS]
    said = ([f"convert {'the images' if videos else 'them'} (to PNG, say)"]
            if len(videos) < len(counts) else [])
    if videos:
        said.append("videos: " + video_advice(PurePath(f"clip{videos[0]}"), "their",
                                              "the loops"))
    return "; ".join(said)


def unread_file_advice(path: Path) -> str | None:
    """Why the file ``path``, named on its own, is not read and what to do, where its ending
    is one of :data:`UNREAD_IMAGE_EXTENSIONS`; else None."""
    ending = unread_ending(path)
    if ending not in UNREAD_IMAGE_EXTENSIONS:
        return None
    if ending in VIDEO_EXTENSIONS:
        return "a video, which ultraseg does not read: " + video_advice(
            PurePath(path.name), "its", "the loop")
    if ending == ".gif":
        return "GIF is not read: convert it to PNG (a GIF loop: to a multi-page TIFF)"
    if ending in VOLUME_FORMATS:
        return (f"a {VOLUME_FORMATS[ending]} ({ending}) file, a format ultraseg does not read: "
                "convert it (each 2D frame to PNG, say; a label volume to PNG masks keeping its "
                "labels 1, 2, 3..., which --label K picks from)")
    return f"a {ending} file, a format ultraseg does not read: convert it (to PNG, say)"


def unread_ending(path: Path) -> str:
    """``path``'s ending as :data:`UNREAD_IMAGE_EXTENSIONS` spells it, in lower case:
    ``.nii.gz`` for a compressed NIfTI volume, else its last suffix."""
    return ".nii.gz" if path.name.lower().endswith(".nii.gz") else path.suffix.lower()


def unread_files_said(counts: dict[str, int]) -> str:
    """``N files in formats ultraseg does not read (.gif 1, .webp 2)``."""
    return (f"{sum(counts.values())} files in formats ultraseg does not read "
            f"({', '.join(f'{k} {n}' for k, n in sorted(counts.items()))})")


def unread_image_files(root: Path) -> dict[str, int]:
    """How many files below ``root`` (:func:`iter_files`) are images in a format ultraseg
    does not read, by ending (``.nii.gz`` for a compressed NIfTI volume; other ``.gz`` files
    are not counted)."""
    counts: dict[str, int] = {}
    for p in iter_files(root):
        ending = unread_ending(p)
        if ending in UNREAD_IMAGE_EXTENSIONS and not p.name.startswith("."):
            counts[ending] = counts.get(ending, 0) + 1
    return counts


def walk_files(root: Path) -> list[Path]:
    """:func:`iter_files`, sorted."""
    return sorted(iter_files(root))


def list_images(folder: Path) -> list[Path]:
    """Image files directly in ``folder`` (see :func:`is_image_file`), sorted by name."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if is_image_file(p))


def natural_key(name: str) -> list[Any]:
    """Sort key that orders 'a 2' before 'a 10'. The numbers are the runs ``\\d`` matches,
    decimal digits (str.isdecimal): a superscript '²' is a digit to str.isdigit, not to int(),
    and sorts as text."""
    return [int(t) if t.isdecimal() else t for t in re.split(r"(\d+)", name)]
