"""DICOM frames (ultraseg.io.dicom): pixels as every file's, pixel size from the header."""
from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import ultraseg_warnings
from ultraseg.errors import DataError
from ultraseg.io import dicom_pixel_size_mm, read_image, read_mask, scan_dataset
from ultraseg.io.base import to_uint8

pydicom = pytest.importorskip("pydicom", minversion="3.0",
                              reason="pydicom 3 (the dicom extra) is not installed")
from pydicom.dataset import Dataset, FileMetaDataset  # noqa: E402
from pydicom.encaps import encapsulate  # noqa: E402
from pydicom.uid import (ExplicitVRLittleEndian, JPEGBaseline8Bit,  # noqa: E402
                         UltrasoundImageStorage, generate_uid)


def _region(dx_cm: float, dy_cm: float, spatial: int = 1, units: int = 3) -> Dataset:
    r = Dataset()
    r.RegionSpatialFormat = spatial
    r.RegionDataType = 1
    r.PhysicalUnitsXDirection = units
    r.PhysicalUnitsYDirection = units
    r.PhysicalDeltaX = dx_cm
    r.PhysicalDeltaY = dy_cm
    return r


def make_dicom(path: Path, arr: np.ndarray, photometric: str = "MONOCHROME2",
               regions: list[Dataset] | None = None, spacing: tuple[float, float] | None = None,
               frames: int = 1, jpeg: bool = False, bits_stored: int | None = None) -> Path:
    """A DICOM ultrasound file of ``arr`` ((H, W) grey or (H, W, 3) RGB; uint8 or uint16)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UltrasoundImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = JPEGBaseline8Bit if jpeg else ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "US"
    ds.Rows, ds.Columns = arr.shape[:2]
    ds.SamplesPerPixel = 3 if arr.ndim == 3 else 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = 8 * arr.dtype.itemsize
    ds.BitsStored = bits_stored or ds.BitsAllocated
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = 0
    if arr.ndim == 3:
        ds.PlanarConfiguration = 0
    if frames > 1:
        ds.NumberOfFrames = frames
    if regions is not None:
        ds.SequenceOfUltrasoundRegions = regions
    if spacing is not None:
        ds.PixelSpacing = list(spacing)
    if jpeg:
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, format="JPEG", quality=95)
        ds.PixelData = encapsulate([buf.getvalue()])
        ds["PixelData"].VR = "OB"
    else:
        ds.PixelData = np.concatenate([arr.ravel()] * frames).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def _scan(h: int = 40, w: int = 56) -> np.ndarray:
    yy, xx = np.mgrid[:h, :w]
    return np.clip(80 + 60 * np.sin(xx / 6.0) * np.cos(yy / 9.0), 0, 255).astype(np.uint8)


def test_a_grey_frame_reads_as_its_pixels_with_the_regions_pixel_size(tmp_path) -> None:
    scan = _scan()
    p = make_dicom(tmp_path / "d" / "1_1.dcm", scan, regions=[_region(0.012, 0.012)])
    np.testing.assert_array_equal(read_image(p), scan)
    assert dicom_pixel_size_mm(p) == pytest.approx(0.12)
    ds, problems = scan_dataset(tmp_path / "d")
    (s,) = ds.samples
    assert problems == [] and ds.layout == "images"
    assert s.meta["pixel_size_mm"] == pytest.approx(0.12)


def test_colour_ybr_jpeg_and_inverted_16_bit_frames_become_grey(tmp_path) -> None:
    scan = _scan()
    rgb = np.stack([scan, scan, scan], axis=-1)
    plain = make_dicom(tmp_path / "rgb.dcm", rgb, photometric="RGB")
    np.testing.assert_array_equal(read_image(plain), np.asarray(Image.fromarray(rgb).convert("L")))
    # scanners' usual export: JPEG baseline in YCbCr, decoded through Pillow
    jpeg = make_dicom(tmp_path / "ybr.dcm", rgb, photometric="YBR_FULL_422", jpeg=True)
    assert np.abs(read_image(jpeg).astype(int) - scan).mean() < 2
    # MONOCHROME1: low values bright; 12 bits stored in 16
    wide = (scan.astype(np.uint16) * 16)
    inverted = make_dicom(tmp_path / "m1.dcm", (4095 - wide).astype(np.uint16),
                          photometric="MONOCHROME1", bits_stored=12)
    np.testing.assert_array_equal(read_image(inverted), to_uint8(wide))


def test_what_gives_no_pixel_size(tmp_path) -> None:
    scan = _scan()
    assert dicom_pixel_size_mm(make_dicom(tmp_path / "none.dcm", scan)) is None
    assert dicom_pixel_size_mm(make_dicom(tmp_path / "ps.dcm", scan, spacing=(0.2, 0.2))) == 0.2
    # a Doppler strip's region (no 2D region) leaves the 2D one
    mixed = [_region(0.01, 0.01), _region(0.5, 0.02, spatial=3)]
    assert dicom_pixel_size_mm(make_dicom(tmp_path / "mix.dcm", scan, regions=mixed)) == 0.1
    with ultraseg_warnings() as warned:
        assert dicom_pixel_size_mm(make_dicom(tmp_path / "rect.dcm", scan,
                                              regions=[_region(0.01, 0.02)])) is None
        assert dicom_pixel_size_mm(make_dicom(tmp_path / "two.dcm", scan, regions=[
            _region(0.01, 0.01), _region(0.02, 0.02)])) is None
    said = " ".join(r.getMessage() for r in warned)
    assert "not square" in said and "different pixel sizes" in said


def test_what_is_refused_with_one_line(tmp_path) -> None:
    scan = _scan()
    with pytest.raises(DataError, match="holds 2 frames"):
        read_image(make_dicom(tmp_path / "cine.dcm", scan, frames=2))
    (tmp_path / "text.dcm").write_text("not dicom")
    with pytest.raises(DataError, match="not a DICOM file"):
        read_image(tmp_path / "text.dcm")
    with pytest.raises(DataError, match="DICOM file as a mask"):
        read_mask(make_dicom(tmp_path / "m" / "1_1_mask.dcm", scan))


def test_measure_gives_mm_from_the_header_without_a_pixel_size(tmp_path, capsys) -> None:
    from test_cli_predict import make_checkpoint

    from ultraseg.cli import main

    ckpt = make_checkpoint(tmp_path / "m.ckpt")
    make_dicom(tmp_path / "exam" / "a.dcm", _scan(30, 40), regions=[_region(0.05, 0.05)])
    assert main(["measure", str(ckpt), str(tmp_path / "exam"), "--threshold", "0", "--json",
                 "--device", "cpu", "--precision", "fp32"]) == 0
    (row,) = json.loads(capsys.readouterr().out)["rows"]
    assert row["pixel_size_mm"] == pytest.approx(0.5)
    assert row["area_mm2"] == pytest.approx(30 * 40 * 0.25)       # threshold 0: the frame
