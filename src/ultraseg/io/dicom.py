"""DICOM frames: what a scanner exports, read with pydicom (the ``dicom`` extra).

A single-frame DICOM file (``.dcm``, ``.dicom``, or one found by its marker: :func:`is_dicom`)
is a frame like any image file: its pixels
become grayscale 8 bits by the rule every file follows (:func:`ultraseg.io.grey.to_uint8`;
colour, stored as RGB or as YCbCr, becomes its ITU-R 601 luma; MONOCHROME1 is inverted so that
tissue stays bright; a palette's colours are taken at 8 bits whatever its table's entry depth,
as a viewer shows them), except that a grey frame whose header says how to show it (a VOI LUT,
or a window: ``WindowCenter``/``WindowWidth``, after any rescale) is read as a viewer shows
it, the table's or window's output range as 0..255; and its pixel size comes from the
header, so ``measure`` and ``evaluate`` give millimetres without ``--pixel-size``:

* the ultrasound regions (``SequenceOfUltrasoundRegions``): the 2D regions whose physical
  units are centimetres, where they all agree on one pixel size (``PhysicalDeltaX`` and
  ``PhysicalDeltaY``, cm, times 10; their magnitudes: a negative delta is an axis that runs
  the other way);
* else ``PixelSpacing`` (mm; row and column spacing);
* else, in a multi-frame file, its functional groups' (``PixelMeasuresSequence`` >
  ``PixelSpacing``): the shared group's (``SharedFunctionalGroupsSequence``), else the frames'
  own (``PerFrameFunctionalGroupsSequence``), where they all agree.

Pixels that are not square give their height and width (:func:`dicom_pixel_spacing_mm`), and
are measured in mm with those (:mod:`ultraseg.measure`), never with a square ``--pixel-size``.
Regions that disagree (a B-mode image beside a Doppler strip of another scale), or frames
that do, give no pixel size, with a warning: a measurement in mm would be wrong. A cine
loop (several frames) is read one frame at a time (``frame``; ``predict`` and ``measure`` take
each), as a multi-page TIFF is, and refused where one frame is wanted (training, evaluation);
so is a DICOM file given as a mask (masks are image files: PNG...). A file that cannot be read
is a DataError naming it, whatever pydicom raised; so is a frame beyond Pillow's guard against
decompression bombs (checked on the header's Rows x Columns before any pixel is read), and a
NumberOfFrames more than the file's bytes can hold. A deflated file (Deflated Explicit VR
Little Endian), which pydicom inflates whole to read even its header, is inflated by ultraseg
as far as it reads: its header alone, a frame with what comes before it, one frame held at a
time (:class:`_Inflating`).
"""
from __future__ import annotations

import contextlib
import logging
import math
import re
import sys
import warnings
import zlib
from importlib import metadata
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from ..errors import DataError, install_extra, is_out_of_memory
from ..logs import caught_warnings, quiet

log = logging.getLogger(__name__)

#: File endings read as DICOM.
DICOM_EXTENSIONS = (".dcm", ".dicom")

_CM = 3                   # PhysicalUnitsX/YDirection: 3 is centimetres
_TISSUE_2D = 1            # RegionSpatialFormat: 1 is a 2D (tissue or flow) region
_SQUARE = 1e-3            # relative difference under which two spacings are one
#: The fewest bytes a frame of encapsulated (compressed) pixel data takes in its file: each
#: frame is at least one item, whose tag and length alone are 8 bytes.
_ENCAPSULATED_FRAME_BYTES = 8
#: Deflate's largest compression ratio (RFC 1951: 258 bytes a match of at most 2 bits, about
#: 1032:1): a deflated file's pixels take at least their size over it.
_DEFLATE_RATIO = 1032


#: An ending that is a number, the last part of a name that is a UID (``.1`` of
#: ``US.1.2.840.113619.2.1.1``): such files are looked into for the DICOM marker.
_NUMBER_ENDING = re.compile(r"\.[0-9]+")


def is_dicom(path: Path) -> bool:
    """Whether ``path`` is read as DICOM: by its ending, or by the ``DICM`` marker after its
    128-byte preamble where it has no ending (the ``IM000001`` of a scanner's export media) or
    one that is a number (a file named by its SOP Instance UID, ``US.1.2.840.113619.2.1.1``, as
    DCMTK's and pynetdicom's storescp write what a scanner sends). ``DICOMDIR``, the media's
    index, holds no image. Files of other endings (``.txt``, ``.csv``...) are not opened."""
    if path.suffix.lower() in DICOM_EXTENSIONS:
        return True
    if path.name.upper() == "DICOMDIR" or (
            path.suffix and not _NUMBER_ENDING.fullmatch(path.suffix)):
        return False
    try:
        with open(path, "rb") as f:
            f.seek(128)
            return f.read(4) == b"DICM"
    except OSError:
        return False


def _pydicom(path: Path) -> Any:
    if "pydicom" not in sys.modules:
        with contextlib.suppress(metadata.PackageNotFoundError):
            if metadata.version("pydicom") == "3.0.0":
                raise DataError("pydicom 3.0.0 fetches example files from the internet when "
                                "imported (fixed in 3.0.1): pip install 'pydicom>=3.0.1'", path)
    try:
        return _import_pydicom()
    except ImportError as e:
        raise DataError(f"reading DICOM needs pydicom 3 or later: {install_extra('dicom')}, "
                        "or pip install pydicom", path) from e


def _import_pydicom() -> Any:
    import pydicom
    import pydicom.pixels  # noqa: F401  (pydicom >= 3)

    return pydicom


@contextlib.contextmanager
def _quiet_pydicom() -> Iterator[None]:
    """Keeps pydicom's log records (a decoder's traceback, logged by ``pydicom.pixels...``)
    and warnings off the caller's handlers while ultraseg decodes: its failure becomes one
    DataError line instead."""
    with quiet("pydicom"), caught_warnings():
        warnings.simplefilter("ignore")
        yield


#: Decoder plugins pydicom needs, by the transfer syntax's name: what to install.
_PLUGINS = {"JPEG-LS": "pylibjpeg pylibjpeg-libjpeg", "JPEG 2000": "pylibjpeg pylibjpeg-openjpeg",
            "JPEG Lossless": "pylibjpeg pylibjpeg-libjpeg",
            "JPEG Extended": "pylibjpeg pylibjpeg-libjpeg"}


#: The most bytes of a deflated dataset held to read its header (what comes before its pixel
#: data): pydicom inflates the whole dataset, pixels and all, before stop_before_pixels
#: applies (a 1.5 MB file of 24 frames of 8000 x 8000 became 3 GB), so ultraseg inflates it
#: itself as far as it reads (:class:`_Inflating`).
_HEADER_BYTES = 64_000_000
#: What a deflated file is inflated by: compressed bytes read at a time, and the bytes out
#: at a time: those wanted, at least the least (a header's read inflates little past it),
#: at most the most.
_INFLATE_IN = 1 << 16
_INFLATE_LEAST, _INFLATE_OUT = 1 << 14, 1 << 20
#: The pixel data elements, by tag, pydicom's stop_before_pixels stops at.
_PIXEL_TAGS = (0x7FE00010, 0x7FE00008, 0x7FE00009)


class _Inflating:
    """The dataset of a deflated DICOM file (what follows its file meta), inflated as far as
    it is read (a file object for pydicom's parser: read, seek, tell). With ``keep`` (its
    header), what is inflated is kept, up to :data:`_HEADER_BYTES`, beyond which it is a
    DataError; without, what lies before the position is dropped (a frame's bytes are read
    alone, the frames before it inflated and let go)."""

    def __init__(self, f: Any, path: Path) -> None:
        self._f, self._path, self.name = f, path, str(path)
        self._z = zlib.decompressobj(-zlib.MAX_WBITS)
        self._buf = bytearray()
        self._base = 0              # where in the inflated dataset _buf starts
        self._pos = 0
        self._done = False
        self.keep = True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = 0) -> int:
        self._pos = offset + (self._pos if whence == 1 else 0)
        if whence == 2 or self._pos < self._base:
            raise ValueError("a deflated dataset is read forward")
        return self._pos

    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0:
            raise ValueError("a deflated dataset is read by the size wanted")
        self._fill(self._pos + size)
        start = self._pos - self._base
        out = bytes(self._buf[start:start + size])
        self._pos += len(out)
        return out

    def _fill(self, end: int) -> None:
        """Inflate until ``end`` (or the dataset's end) is held."""
        while self._base + len(self._buf) < end and not self._done:
            if not self.keep and self._pos > self._base:     # let go what lies before
                drop = min(self._pos - self._base, len(self._buf))
                del self._buf[:drop]
                self._base += drop
            data = self._z.unconsumed_tail or self._f.read(_INFLATE_IN)
            if data:
                want = self._base + len(self._buf) - end      # (< 0: bytes still wanted)
                out = self._z.decompress(data, min(max(-want, _INFLATE_LEAST), _INFLATE_OUT))
            else:
                out, self._done = self._z.flush(), True
            if self._z.eof:
                self._done = True
            self._buf += out
            if self.keep and len(self._buf) > _HEADER_BYTES:
                raise DataError(f"its deflated dataset inflates to more than "
                                f"{_HEADER_BYTES / 1e6:.1f} MB before its pixel data (a "
                                "decompression bomb?)", self._path)


def _read(path: Path, pixels: bool) -> Any:
    """The dataset of ``path`` (without its pixel data unless ``pixels``), or a DataError;
    a deflated one's header inflated alone (:func:`_deflated`)."""
    pydicom = _pydicom(path)
    try:
        with _quiet_pydicom():
            if not pixels:
                with open(path, "rb") as f:
                    ds = _deflated(f, path, pydicom)
                if ds is not None:
                    return ds[0]
            return pydicom.dcmread(path, stop_before_pixels=not pixels)
    except pydicom.errors.InvalidDicomError as e:
        raise DataError("not a DICOM file pydicom can read (no DICM preamble)", path) from e
    except FileNotFoundError as e:
        raise DataError("file not found", path) from e
    except PermissionError as e:
        raise DataError("cannot read file: permission denied", path) from e
    except DataError:
        raise
    except Exception as e:      # pydicom's parsers raise what they meet: BytesLengthException,
        # NotImplementedError (an unknown VR), RecursionError (sequences nested thousands deep)
        if is_out_of_memory(e):
            raise
        raise DataError(f"unreadable or truncated DICOM file ({_said(e)})", path) from e


def _deflated(f: Any, path: Path, pydicom: Any) -> tuple[Any, _Inflating, Any] | None:
    """Where the file ``f`` is of the Deflated Explicit VR Little Endian transfer syntax: its
    header (the dataset up to its pixel data: pydicom's ``stop_before_pixels``), inflated as
    far as that alone; the :class:`_Inflating` stream, at its pixel data element if any; and
    that element's (tag, VR, length), or None. None for any other transfer syntax (``f`` is
    then read again from its start)."""
    from pydicom.filereader import read_dataset, read_preamble

    try:
        read_preamble(f, False)
        meta = pydicom.dataset.FileMetaDataset(read_dataset(
            f, is_implicit_VR=False, is_little_endian=True,
            stop_when=lambda tag, vr, length: tag >> 16 != 2))
        deflated = meta.get("TransferSyntaxUID") == pydicom.uid.DeflatedExplicitVRLittleEndian
    except Exception as e:      # noqa: BLE001  (what pydicom's dcmread says of the file)
        if is_out_of_memory(e):
            raise
        return None
    if not deflated:
        return None
    stream = _Inflating(f, path)
    pixels: list[Any] = [None]

    def at_pixels(tag: Any, vr: Any, length: int) -> bool:
        if tag in _PIXEL_TAGS:
            pixels[0] = (int(tag), vr, length)
            return True
        return False

    ds = read_dataset(stream, is_implicit_VR=False, is_little_endian=True, stop_when=at_pixels)
    ds = pydicom.dataset.FileDataset(str(path), ds, file_meta=meta, is_implicit_VR=False,
                                     is_little_endian=True)
    return ds, stream, pixels[0]


class _Loop:
    """A deflated DICOM file open at its pixel data, whose frames are read forward: a loop
    read frame after frame inside :func:`ultraseg.io.images.frame_loop` is kept open for its
    next frame (``io.images._kept``), so each of its bytes is inflated once, not once a frame
    read."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._pydicom = pydicom = _pydicom(path)
        self._f = open(path, "rb")
        try:
            with _quiet_pydicom():
                self.ds, self._stream, self._element = _deflated(self._f, path, pydicom)
                self.frames = _frames(self.ds, path)    # (before its NumberOfFrames is 1)
                if self._element is None:
                    return
                self._stream.read(12)       # the element's tag, VR and length (explicit VR)
                self._start = self._stream.tell()
                self._stream.keep = False
                if "NumberOfFrames" in self.ds:
                    self.ds.NumberOfFrames = 1
                expected = pydicom.pixels.utils.get_expected_length
                self._bits = expected(self.ds, "pixels") if self.ds.get("BitsAllocated") == 1 \
                    else 8 * expected(self.ds, "bytes")
        except BaseException:
            self._f.close()
            raise

    def close(self) -> None:
        self._f.close()

    def reaches(self, frame: int) -> bool:
        """Whether frame ``frame`` is still held or lies ahead (a frame before it is let go):
        its first byte not before what the stream holds, not where it was last read to, as
        1-bit frames share a byte with the frame before."""
        return self._element is None or \
            self._start + frame * self._bits // 8 >= self._stream._base

    def frame(self, frame: int, frames: int) -> Any:
        """The header with the pixels of frame ``frame`` alone (its NumberOfFrames 1): the
        dataset inflated as far as that frame, each byte before it let go once inflated, so a
        frame of a loop takes its own memory, not the loop's."""
        if self._element is None:
            return self.ds
        tag, vr, _ = self._element
        first, skip = divmod(frame * self._bits, 8)     # (1-bit frames share bytes: bits)
        size = (skip + self._bits + 7) // 8
        with _quiet_pydicom():
            self._stream.seek(self._start + first)
            data = self._stream.read(size)
        if len(data) < size:
            raise DataError(f"its pixel data ends before frame {frame + 1} of {frames} (a "
                            "truncated file?)", self.path)
        if skip or self._bits % 8:
            data = np.packbits(np.unpackbits(np.frombuffer(data, np.uint8), bitorder="little")[
                skip:skip + self._bits], bitorder="little").tobytes()
        self.ds[tag] = self._pydicom.dataelem.DataElement(tag, vr, data)  # (the next's after)
        return self.ds


def _deflated_frame(path: Path, frame: int, frames: int) -> Any:
    """:meth:`_Loop.frame` of the deflated DICOM file ``path``: of the loop kept open for it
    where it reaches the frame, kept open for the next inside a frame loop."""
    from .images import _file_key, _keep, _take_kept

    key = _file_key(path, path.stat())
    taken = _take_kept(key, frame)          # (as far as its reaches() says)
    loop = taken[0] if taken is not None else _Loop(path)
    try:
        ds = loop.frame(frame, frames)
    except BaseException:
        loop.close()
        raise
    _keep(key, loop, frame, lambda: frame >= frames - 1)
    return ds


def _kept_loop(path: Path) -> _Loop | None:
    """The deflated loop kept open for ``path``'s file (:func:`_deflated_frame`), if any:
    its header read, not inflated and parsed again for each frame."""
    from .images import _file_key, _kept

    last = getattr(_kept, "entry", None)
    if last is None or not isinstance(last[1], _Loop):
        return None
    try:
        key = _file_key(path, path.stat())
    except OSError:             # (said by the header's read)
        return None
    return last[1] if last[0] == key else None


def _said(error: BaseException) -> str:
    """One line on what pydicom raised."""
    if isinstance(error, RecursionError):
        return "its sequences nest too deeply"
    return " ".join(str(error).split())[:160] or type(error).__name__


def _frames(ds: Any, path: Path) -> int:
    """The dataset's ``NumberOfFrames`` (1 where absent), or a DataError, where it is no
    number or more than the file's bytes can hold (:func:`_least_bytes`)."""
    raw: Any = "?"
    try:
        with _quiet_pydicom():
            raw = ds.get("NumberOfFrames", 1)
            frames = max(int(raw or 1), 1)
    except Exception as e:      # noqa: BLE001  (a damaged element: pydicom's conversion)
        if is_out_of_memory(e):
            raise
        raise DataError(f"its NumberOfFrames is no number ({raw!r})", path) from e
    if frames > 1:
        size = path.stat().st_size
        try:
            least = _least_bytes(ds, frames)
        except Exception as e:  # noqa: BLE001  (a damaged Rows, Columns...: pydicom's conversion)
            if is_out_of_memory(e):
                raise
            raise DataError(f"unreadable DICOM header ({_said(e)})", path) from e
        if least > size:
            # (a damaged header: each frame would be a sample, a list too long for memory)
            raise DataError(f"its header says NumberOfFrames {frames}, more than its {size} "
                            "bytes hold (a damaged file?)", path)
    return frames


def _syntax(ds: Any) -> Any:
    """The dataset's transfer syntax UID, or None."""
    meta = getattr(ds, "file_meta", None)
    return meta.get("TransferSyntaxUID") if meta is not None else None


def _is(syntax: Any, flag: str) -> bool:
    """A transfer syntax's ``flag`` (``is_compressed``...); False for a UID that is none (on
    which pydicom raises ValueError)."""
    try:
        return bool(getattr(syntax, flag, False))
    except ValueError:
        return False


def _least_bytes(ds: Any, frames: int) -> int:
    """The fewest bytes ``frames`` frames of ``ds``'s size take in a file: uncompressed, their
    pixels (Rows x Columns x SamplesPerPixel x BitsAllocated, half that for chroma-subsampled
    YBR_FULL_422 and the like); deflated, those over
    :data:`_DEFLATE_RATIO`; encapsulated (or a transfer syntax not known),
    :data:`_ENCAPSULATED_FRAME_BYTES` a frame."""
    syntax = _syntax(ds)
    with _quiet_pydicom():
        bits = (int(ds.get("Rows", 0) or 0) * int(ds.get("Columns", 0) or 0)
                * int(ds.get("SamplesPerPixel", 1) or 1) * int(ds.get("BitsAllocated", 8) or 8))
        if str(ds.get("PhotometricInterpretation", "")).startswith("YBR_") \
                and "42" in str(ds.get("PhotometricInterpretation", "")):
            bits //= 2  # 4:2:2 keeps 2 of 3 samples a pixel, 4:2:0 1.5: at least half
    raw = syntax is not None and _is(syntax, "is_transfer_syntax") \
        and not _is(syntax, "is_encapsulated")
    if not raw or bits <= 0:
        return _ENCAPSULATED_FRAME_BYTES * frames
    pixels = frames * bits // 8
    return pixels // _DEFLATE_RATIO if _is(syntax, "is_deflated") else pixels


def _check_size(ds: Any, path: Path) -> None:
    """Pillow's guard against decompression bombs on the header's Rows x Columns, before
    anything is decoded (:func:`ultraseg.io.images.check_size_guard`)."""
    from .images import check_size_guard

    with _quiet_pydicom():
        rows, cols = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
    check_size_guard(path, cols, rows)


def dicom_frame_count(path: str | Path) -> int:
    """How many frames a DICOM file holds (a cine loop: several), from its header alone."""
    path = Path(path)
    return _frames(_read(path, pixels=False), path)


def read_dicom(path: str | Path, frame: int | None = None) -> np.ndarray:
    """A DICOM frame -> grayscale (H, W) uint8 (see the module docstring): the file's one
    frame, or frame ``frame`` (from 0) of a cine loop; a loop without ``frame`` is refused
    (:class:`~ultraseg.io.images.SeveralFrames`)."""
    path = Path(path)
    try:
        return _read_dicom(path, frame)
    except DataError:
        raise
    except Exception as e:      # a damaged element pydicom converts when it is first used
        if is_out_of_memory(e):
            raise
        raise DataError(f"unreadable DICOM file ({_said(e)})", path) from e


def _read_dicom(path: Path, frame: int | None) -> np.ndarray:
    """:func:`read_dicom`, whose errors other than DataError are the file's damage."""
    from ..preprocess import to_gray     # (preprocess reads through io: imported here)
    from .grey import inverted, say_colour, to_uint8
    from .images import SeveralFrames, close_kept

    # the header first: the frame's size is checked before any pixel is read; a loop's frame
    # is decoded alone, from the file (pydicom reads no other frame's bytes), but a deflated one
    # (from the loop kept open for it, whose header is read already)
    loop = _kept_loop(path) if frame is not None else None
    ds = loop.ds if loop is not None else _read(path, pixels=False)
    frames = loop.frames if loop is not None else _frames(ds, path)
    if frames > 1 and frame is None:
        raise SeveralFrames(path, f"holds {frames} frames (a cine loop?)")
    if frame is not None and not 0 <= frame < frames:
        raise DataError(f"holds {frames} frame{'s' * (frames != 1)}: no frame {frame} (frames "
                        "count from 0)", path)
    _check_size(ds, path)
    index = frame if frame is not None and frames > 1 else None
    # (pydicom's pixel_array(path, index=) reads the file's bytes as they are, which a
    # deflated dataset is not: its frame is inflated alone)
    deflated = _is(_syntax(ds), "is_deflated")
    if deflated:
        ds = _deflated_frame(path, frame or 0, frames)
    else:
        close_kept()                    # another file read: the loop kept is done with
        if frame is None:
            ds = _read(path, pixels=True)
    if frame is None and "PixelData" not in ds:
        raise DataError("holds no image (no Pixel Data: a report or a structured document?)",
                        path)
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip()
    pydicom = _pydicom(path)
    try:
        with _quiet_pydicom():
            if frame is None or deflated:                   # YCbCr comes back as RGB
                arr = pydicom.pixels.pixel_array(ds, index=None)
            else:
                arr = pydicom.pixels.pixel_array(path, index=index)
            if photometric == "PALETTE COLOR":      # indices into the header's colour table
                arr = _palette_8_bits(pydicom.pixels.apply_color_lut(arr, ds), ds)
    except Exception as e:      # pydicom's decoders raise what their libraries raise
        where = f"frame {frame + 1} of {frames}: " if frames > 1 else ""
        raise DataError(where + _undecodable(ds, e), path) from e
    if arr.ndim == 3 and arr.shape[2] in (3, 4):   # colour: luma, in its dtype
        say_colour(arr, path)
        arr = to_gray(arr)
    elif arr.ndim != 2:
        raise DataError(f"pixel data of shape {arr.shape} is no 2D frame", path)
    shown = _through_voi(arr, ds, path) if photometric in ("MONOCHROME1", "MONOCHROME2") \
        and _has_voi(ds) else None
    if shown is not None:                           # as a viewer shows it
        return 255 - shown if photometric == "MONOCHROME1" else shown
    if photometric == "MONOCHROME1":                # low values bright: inverted
        arr = inverted(arr, 2 ** int(ds.get("BitsStored", 8 * arr.dtype.itemsize)) - 1)
    return to_uint8(arr, path)


def _palette_8_bits(rgb: np.ndarray, ds: Any) -> np.ndarray:
    """A palette's colours at 8 bits, scaled from its table's entry depth as a viewer shows
    them: 16-bit entries (the standard's usual, 0..65535; pydicom gives them as uint16) times
    255/65535, rounded. Left at 16 bits they were stretched from each frame's own min..max
    (:func:`~ultraseg.io.grey.to_uint8`), where the same picture with an 8-bit table, or as
    RGB, keeps its grey levels. A table declared 16 bits deep whose entries all lie within
    0..255 holds 8-bit colours (older writers' files; DCMTK reads them so): taken as they are,
    not scaled to black."""
    if rgb.dtype != np.uint16:
        return rgb
    if _palette_table_max(ds) <= 255:
        return rgb.astype(np.uint8)
    return ((rgb.astype(np.uint32) + 128) // 257).astype(np.uint8)


def _palette_table_max(ds: Any) -> int:
    """The largest entry of a palette's colour tables (every entry, not the frame's own:
    a dark frame of a 16-bit palette is no 8-bit one); 65535 where it cannot be told."""
    import pydicom.pixels

    try:
        entries, first, _ = (int(v) for v in ds.RedPaletteColorLookupTableDescriptor)
        index = np.arange(first, first + (entries or 65536)).astype(np.uint16)
        return int(pydicom.pixels.apply_color_lut(index, ds).max())
    except Exception:  # noqa: BLE001  (a segmented or odd table: scaled as declared)
        return 65535


def _has_voi(ds: Any) -> bool:
    """Whether the header says how to show its grey values: a VOI LUT or a window."""
    lut = ds.get("VOILUTSequence", None)
    return bool(lut) or ("WindowCenter" in ds and "WindowWidth" in ds)


def _through_voi(arr: np.ndarray, ds: Any, path: Path) -> np.ndarray | None:
    """A grey frame as a DICOM viewer shows it, 8 bits: the modality LUT (rescale), then the
    header's first VOI LUT or window (pydicom's ``apply_modality_lut`` and ``apply_voi_lut``),
    its output range (what the lowest and the highest stored value come out as) taken as
    0..255. None, with a warning, where the table or window cannot be applied: the frame is
    then read as a header without them is."""
    pydicom = _pydicom(path)
    signed = int(ds.get("PixelRepresentation", 0) or 0) == 1
    bits = int(ds.get("BitsStored", 8 * arr.dtype.itemsize) or 8 * arr.dtype.itemsize)
    ends = (np.array([-(2 ** (bits - 1)), 2 ** (bits - 1) - 1]) if signed
            else np.array([0, 2 ** bits - 1]))
    try:
        with _quiet_pydicom():
            def show(values: np.ndarray) -> np.ndarray:
                modality = pydicom.pixels.apply_modality_lut(values, ds)
                return pydicom.pixels.apply_voi_lut(modality, ds).astype(np.float64)
            shown = show(arr)
            lo, hi = show(ends.astype(arr.dtype))
    except Exception as e:      # noqa: BLE001  (a malformed window or table)
        log.warning("%s: its VOI LUT or window cannot be applied (%s): its grey values are "
                    "read without it", path, " ".join(str(e).split())[:120])
        return None
    if not (np.isfinite(lo) and np.isfinite(hi)) or lo == hi:   # no range: all one grey
        return np.zeros(arr.shape, np.uint8)
    return np.round(np.clip((shown - lo) / (hi - lo), 0.0, 1.0) * 255).astype(np.uint8)


def _undecodable(ds: Any, error: Exception) -> str:
    """One line on pixels pydicom could not decode, with what to install where a decoder
    plugin is missing for a compressed transfer syntax."""
    syntax = _syntax(ds)
    name = getattr(syntax, "name", None) or str(syntax or "unknown transfer syntax")
    reason = _said(error)
    if syntax is not None and _is(syntax, "is_compressed"):
        plugin = next((v for k, v in _PLUGINS.items() if k in name), None)
        if plugin and ("dependenc" in reason.lower() or "plugin" in reason.lower()):
            return (f"cannot decode its pixels ({name}): pydicom needs a decoder plugin for "
                    f"it: pip install {plugin}")
    return f"cannot decode its pixels ({name}: {reason})"


def _header_sizes(ds: Any) -> tuple[list[tuple[float, float]], str]:
    """(x, y) pixel sizes in mm the header gives, and where from (words for a warning): its
    2D ultrasound regions' in cm, else PixelSpacing's (row spacing, column spacing), else a
    multi-frame file's functional groups' (PixelMeasuresSequence > PixelSpacing): the shared
    group's, else each frame's own."""
    regions = [r for r in ds.get("SequenceOfUltrasoundRegions", None) or []
               if r.get("RegionSpatialFormat") == _TISSUE_2D
               and r.get("PhysicalUnitsXDirection") == _CM
               and r.get("PhysicalUnitsYDirection") == _CM]
    if regions:
        # (a delta is the increment per positive pixel step: negative, the axis runs the
        # other way; its magnitude is the pixel's size)
        return ([(abs(float(r.PhysicalDeltaX)) * 10, abs(float(r.PhysicalDeltaY)) * 10)
                 for r in regions], "ultrasound regions")
    if ds.get("PixelSpacing", None) is not None:
        return [_as_xy(ds.PixelSpacing)], "PixelSpacing"
    for sequence, where in (("SharedFunctionalGroupsSequence", "shared functional groups"),
                            ("PerFrameFunctionalGroupsSequence", "frames' functional groups")):
        sizes = [xy for group in ds.get(sequence, None) or []
                 if (xy := _group_spacing(group)) is not None]
        if sizes:
            return sizes, where
    return [], ""


def _as_xy(spacing: Any) -> tuple[float, float]:
    """A PixelSpacing (row spacing, column spacing: mm) as (x, y)."""
    row, col = (float(v) for v in spacing)
    return col, row


def _group_spacing(group: Any) -> tuple[float, float] | None:
    """A functional group's PixelMeasuresSequence > PixelSpacing as (x, y) mm, or None."""
    measures = group.get("PixelMeasuresSequence", None) or []
    spacing = measures[0].get("PixelSpacing", None) if measures else None
    return None if spacing is None else _as_xy(spacing)


#: The sample ``meta`` key of why its DICOM header's pixel size was not taken
#: (:func:`ultraseg.io.with_header_pixel_size`), said by :class:`ultraseg.measure.PixelSizes`;
#: not a figure: evaluate's table leaves it out.
PIXEL_SIZE_NOT_TAKEN = "pixel_size_not_taken"


def dicom_pixel_spacing_mm(path: str | Path, why: list[str] | None = None
                           ) -> tuple[float, float] | None:
    """The (height, width) of a pixel in mm a DICOM file's header gives (see the module
    docstring; equal, the width twice, where they agree within 0.1 %: square), or None where
    it gives none, or regions that disagree. Where the header holds a pixel size that is not
    taken (unreadable, or regions that disagree), why is warned; given ``why``, it is
    appended there instead (a scan keeps it for the commands that measure in mm to say)."""
    path = Path(path)
    ds = _read(path, pixels=False)
    reason = ""
    try:
        with _quiet_pydicom():
            sizes, where = _header_sizes(ds)
    except Exception as e:  # noqa: BLE001  (an empty or odd element: pydicom's conversion)
        if is_out_of_memory(e):
            raise
        sizes, reason = [], (f"its header's pixel size cannot be read "
                             f"({' '.join(str(e).split())[:120]})")
    if sizes and not all(v > 0 and math.isfinite(v) for v in sizes[0]):
        return None
    if sizes and any(abs(a - sizes[0][0]) > _SQUARE * sizes[0][0]
                     or abs(b - sizes[0][1]) > _SQUARE * sizes[0][1] for a, b in sizes[1:]):
        reason = (f"its {where} give different pixel sizes ("
                  + ", ".join(f"{a:.4g} x {b:.4g}" for a, b in dict.fromkeys(sizes)) + " mm)")
    if reason:
        if why is None:
            log.warning("%s: %s: no pixel size taken (--pixel-size gives one)", path, reason)
        else:
            why.append(reason)
        return None
    if not sizes:
        return None
    x, y = sizes[0]
    return (x, x) if abs(x - y) <= _SQUARE * max(x, y) else (y, x)


def dicom_patient_id(path: str | Path) -> str | None:
    """The PatientID a DICOM file's header holds (blanks stripped), or None where it holds
    none, an empty one, or the header cannot be read (reading the frame says why)."""
    try:
        ds = _read(Path(path), pixels=False)
        with _quiet_pydicom():
            value = ds.get("PatientID")
    except DataError:
        return None
    said = "" if value is None else str(value).strip()
    return said or None


def dicom_pixel_size_mm(path: str | Path) -> float | None:
    """The square pixel size in mm a DICOM file's header gives (see the module docstring), or
    None where it gives none, or none that is square and one (pixels that are not square:
    :func:`dicom_pixel_spacing_mm` gives their height and width)."""
    spacing = dicom_pixel_spacing_mm(path)
    if spacing is None:
        return None
    dy, dx = spacing
    if dy != dx:
        log.warning("%s: its pixels are not square (%.4g x %.4g mm): no one pixel size (their "
                    "height and width: dicom_pixel_spacing_mm)", path, dx, dy)
        return None
    return dx
