"""DICOM frames: what a scanner exports, read with pydicom (the ``dicom`` extra).

A single-frame DICOM file (``.dcm``, ``.dicom``) is a frame like any image file: its pixels
become grayscale 8 bits by the rule every file follows (:func:`ultraseg.io.base.to_uint8`;
colour, stored as RGB or as YCbCr, becomes its ITU-R 601 luma; MONOCHROME1 is inverted so that
tissue stays bright), and its pixel size comes from the header, so ``measure`` and
``evaluate`` give millimetres without ``--pixel-size``:

* the ultrasound regions (``SequenceOfUltrasoundRegions``): the 2D regions whose physical
  units are centimetres, where they all agree on one square pixel size (``PhysicalDeltaX`` and
  ``PhysicalDeltaY``, cm, times 10);
* else ``PixelSpacing`` (mm; row and column spacing), where it is square.

Pixels that are not square, or regions that disagree (a B-mode image beside a Doppler strip of
another scale), give no pixel size, with a warning: a measurement in mm would be wrong. A cine
loop (several frames) is refused, as a multi-page TIFF is; so is a DICOM file given as a mask
(masks are image files: PNG...).
"""
from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DataError

log = logging.getLogger(__name__)

#: File endings read as DICOM.
DICOM_EXTENSIONS = (".dcm", ".dicom")

_CM = 3                   # PhysicalUnitsX/YDirection: 3 is centimetres
_TISSUE_2D = 1            # RegionSpatialFormat: 1 is a 2D (tissue or flow) region
_SQUARE = 1e-3            # relative difference under which two spacings are one


def is_dicom(path: Path) -> bool:
    """Whether ``path`` is read as DICOM (by its ending)."""
    return path.suffix.lower() in DICOM_EXTENSIONS


def _pydicom() -> Any:
    try:
        import pydicom
        import pydicom.pixels  # noqa: F401  (pydicom >= 3)
    except ImportError as e:
        raise DataError("reading DICOM needs pydicom 3 or later: pip install 'ultraseg[dicom]' "
                        "(or pip install pydicom)") from e
    return pydicom


def _read(path: Path, pixels: bool) -> Any:
    """The dataset of ``path`` (without its pixel data unless ``pixels``), or a DataError."""
    pydicom = _pydicom()
    try:
        return pydicom.dcmread(path, stop_before_pixels=not pixels)
    except pydicom.errors.InvalidDicomError as e:
        raise DataError("not a DICOM file pydicom can read (no DICM preamble)", path) from e
    except FileNotFoundError as e:
        raise DataError("file not found", path) from e
    except PermissionError as e:
        raise DataError("cannot read file: permission denied", path) from e
    except (OSError, ValueError, EOFError, KeyError, AttributeError) as e:
        raise DataError(f"unreadable or truncated DICOM file ({e})", path) from e


def read_dicom(path: str | Path) -> np.ndarray:
    """A single-frame DICOM file -> grayscale (H, W) uint8 (see the module docstring)."""
    from .base import to_uint8

    path = Path(path)
    ds = _read(path, pixels=True)
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames > 1:
        raise DataError(f"holds {frames} frames (a cine loop?): ultraseg reads one frame per "
                        "file; export each frame as its own file", path)
    if "PixelData" not in ds:
        raise DataError("holds no image (no Pixel Data: a report or a structured document?)",
                        path)
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2"))
    try:
        arr = _pydicom().pixels.pixel_array(ds)    # YCbCr comes back as RGB
    except (NotImplementedError, RuntimeError, ValueError, AttributeError) as e:
        syntax = ds.file_meta.get("TransferSyntaxUID", "?") if "file_meta" in ds else "?"
        raise DataError(f"cannot decode its pixels (transfer syntax {syntax}: {e}); a "
                        "compressed syntax may need pydicom's decoder plugins, such as "
                        "pylibjpeg", path) from e
    if arr.ndim == 3:                               # colour: luma, as Pillow's convert('L')
        rgb = arr[..., :3].astype(np.float64)
        arr = rgb @ np.array([0.299, 0.587, 0.114])
        arr = np.round(arr).astype(np.uint8 if rgb.max() <= 255 else np.uint16)
    elif arr.ndim != 2:
        raise DataError(f"pixel data of shape {arr.shape} is no 2D frame", path)
    if photometric == "MONOCHROME1" and arr.dtype.kind == "u":   # low values bright: inverted
        top = 2 ** int(ds.get("BitsStored", 8 * arr.dtype.itemsize)) - 1
        arr = (top - arr.astype(np.int64)).clip(0, top).astype(arr.dtype)
    return to_uint8(arr)


def dicom_pixel_size_mm(path: str | Path) -> float | None:
    """The square pixel size in mm a DICOM file's header gives (see the module docstring), or
    None where it gives none, or none that is square and one."""
    path = Path(path)
    ds = _read(path, pixels=False)
    regions = [r for r in ds.get("SequenceOfUltrasoundRegions", [])
               if r.get("RegionSpatialFormat") == _TISSUE_2D
               and r.get("PhysicalUnitsXDirection") == _CM
               and r.get("PhysicalUnitsYDirection") == _CM]
    sizes = [(float(r.get("PhysicalDeltaX", 0)) * 10, float(r.get("PhysicalDeltaY", 0)) * 10)
             for r in regions]
    if not sizes and "PixelSpacing" in ds:          # (row spacing, column spacing), mm
        row, col = (float(v) for v in ds.PixelSpacing)
        sizes = [(col, row)]
    if not sizes:
        return None
    x, y = sizes[0]
    if not all(v > 0 and math.isfinite(v) for v in sizes[0]):
        return None
    if any(abs(a - x) > _SQUARE * x or abs(b - y) > _SQUARE * y for a, b in sizes[1:]):
        log.warning("%s: its ultrasound regions give different pixel sizes (%s mm): no pixel "
                    "size taken (--pixel-size gives one)", path,
                    ", ".join(f"{a:.4g} x {b:.4g}" for a, b in sizes))
        return None
    if abs(x - y) > _SQUARE * max(x, y):
        log.warning("%s: its pixels are not square (%.4g x %.4g mm): no pixel size taken, as "
                    "measurements in mm assume square pixels", path, x, y)
        return None
    return x
