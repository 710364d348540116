"""DICOM frames (ultraseg.io.dicom): pixels as every file's, pixel size from the header."""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import ultraseg_warnings
from ultraseg.errors import DataError
from ultraseg.io import dicom_pixel_size_mm, read_image, read_mask, scan_dataset
from ultraseg.io.grey import to_uint8

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
               frames: int = 1, jpeg: bool = False, bits_stored: int | None = None,
               patient_id: str | None = None) -> Path:
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
    if patient_id is not None:
        ds.PatientID = patient_id
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



def test_a_colour_overlay_on_a_dicom_frame_is_warned_of(tmp_path) -> None:
    """A Doppler box on a B-mode DICOM frame (RGB, and as scanners export it: JPEG in
    YCbCr) was read as its luma in silence; a grey RGB frame is not warned of."""
    rgb = np.stack([_scan()] * 3, axis=-1)
    with ultraseg_warnings() as warned:
        read_image(make_dicom(tmp_path / "grey.dcm", rgb, photometric="RGB"))
    assert warned == []
    rgb[4:14, 4:14] = (200, 30, 30)                     # 100 of 2240 pixels: 4.5 %
    for p in (make_dicom(tmp_path / "rgb.dcm", rgb, photometric="RGB"),
              make_dicom(tmp_path / "ybr.dcm", rgb, photometric="YBR_FULL_422", jpeg=True)):
        with ultraseg_warnings() as warned:
            read_image(p)
        assert len(warned) == 1 and "of its pixels are colour" in warned[0].getMessage()
        assert str(p) in warned[0].getMessage()



def test_a_region_with_a_negative_delta_gives_its_magnitude(tmp_path) -> None:
    """PhysicalDeltaX/Y are the physical increments per positive pixel step: a negative one
    is an axis that runs the other way, not a missing size. Such a region was dropped in
    silence (measure in px, 'no pixel size known')."""
    scan = _scan()
    for dx, dy in ((0.02, -0.02), (-0.02, -0.02), (-0.02, 0.02)):
        p = make_dicom(tmp_path / "neg.dcm", scan, regions=[_region(dx, dy)])
        assert dicom_pixel_size_mm(p) == pytest.approx(0.2), (dx, dy)
    p = make_dicom(tmp_path / "zero.dcm", scan, regions=[_region(0.0, 0.02)])
    assert dicom_pixel_size_mm(p) is None


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


def _measures(*spacings: tuple[float, float] | None) -> list[Dataset]:
    """Functional groups, one a spacing: a PixelMeasuresSequence holding it (None: none)."""
    groups = []
    for spacing in spacings:
        group = Dataset()
        if spacing is not None:
            item = Dataset()
            item.PixelSpacing = list(spacing)
            group.PixelMeasuresSequence = [item]
        groups.append(group)
    return groups


def test_a_pixel_size_in_the_functional_groups_is_read(tmp_path) -> None:
    """An enhanced multi-frame file keeps its pixel size in its functional groups only: it
    gave no mm (measure counted its frames without a pixel size)."""
    from ultraseg import collect_frames
    from ultraseg.io import dicom_pixel_spacing_mm

    scan = _scan()

    def loop(name: str, spacing: tuple[float, float] | None = None, **groups) -> Path:
        path = make_dicom(tmp_path / name, scan, frames=2, spacing=spacing)
        ds = pydicom.dcmread(path)
        for key, value in groups.items():
            setattr(ds, key, value)
        ds.save_as(path)
        return path

    assert dicom_pixel_spacing_mm(loop("shared.dcm", SharedFunctionalGroupsSequence=_measures(
        (0.15, 0.15)))) == pytest.approx((0.15, 0.15))
    per_frame = loop("frames.dcm", PerFrameFunctionalGroupsSequence=_measures((0.1, 0.2),
                                                                              (0.1, 0.2)))
    assert dicom_pixel_spacing_mm(per_frame) == pytest.approx((0.1, 0.2))   # (height, width)
    # the shared group before the frames', PixelSpacing (and the regions) before both
    assert dicom_pixel_spacing_mm(loop(
        "both.dcm", SharedFunctionalGroupsSequence=_measures((0.3, 0.3)),
        PerFrameFunctionalGroupsSequence=_measures((0.1, 0.1), (0.1, 0.1)))) == (0.3, 0.3)
    assert dicom_pixel_spacing_mm(loop("top.dcm", spacing=(0.4, 0.4),
                                       SharedFunctionalGroupsSequence=_measures((0.3, 0.3)))
                                  ) == (0.4, 0.4)
    assert dicom_pixel_spacing_mm(loop("none.dcm", SharedFunctionalGroupsSequence=_measures(
        None))) is None
    with ultraseg_warnings() as warned:
        assert dicom_pixel_spacing_mm(loop(
            "differ.dcm", PerFrameFunctionalGroupsSequence=_measures((0.1, 0.1),
                                                                     (0.2, 0.2)))) is None
    assert any("frames' functional groups give different pixel sizes" in r.getMessage()
               for r in warned)
    frames = collect_frames(tmp_path / "shared.dcm")        # each frame measured in mm
    assert [f.sample.meta["pixel_size_mm"] for f in frames] == pytest.approx([0.15, 0.15])


def _cine(path: Path, frames: list[np.ndarray], **header) -> Path:
    """A multi-frame DICOM file holding ``frames`` (each its own pixels)."""
    make_dicom(path, frames[0], frames=len(frames), **header)
    ds = pydicom.dcmread(path)
    ds.PixelData = np.stack(frames).tobytes()
    ds.save_as(path)
    return path



def test_a_dicom_loop_with_a_mask_says_what_applies_to_a_labelled_set(tmp_path) -> None:
    """A labelled set's multi-frame DICOM was refused saying 'predict and measure take each of
    its frames', which predict on that set then refused: it names the mask and the ways out."""
    root = tmp_path / "ds"
    _cine(root / "images" / "1_1.dcm", [_scan()] * 3)
    (root / "masks").mkdir()
    Image.fromarray(np.zeros(_scan().shape, np.uint8)).save(root / "masks" / "1_1_mask.png")
    (s,) = scan_dataset(root)[0].samples
    with pytest.raises(DataError, match="holds 3 frames") as e:
        s.load()
    said = str(e.value)
    assert "predict and measure take each" not in said and "1_1_mask.png" in said, said
    assert "labelled set" in said, said


def test_a_cine_loops_frames_are_read_one_by_one(tmp_path) -> None:
    """A scanner's cine loop was refused outright: its frames are read one at a time."""
    from conftest import assert_reads_each_frame
    from ultraseg.io import frame_count

    frames = [np.roll(_scan(), 5 * k, axis=1) for k in range(3)]
    loop = _cine(tmp_path / "loop.dcm", frames, regions=[_region(0.02, 0.02)])
    assert_reads_each_frame(loop, frames, "frames")
    with pytest.raises(DataError, match=r"holds 3 frames .*predict and measure take each .*"
                                        r"read_image\(path, frame=k\)"):
        read_image(loop)                 # one frame wanted: which is not said
    assert dicom_pixel_size_mm(loop) == pytest.approx(0.2)
    single = make_dicom(tmp_path / "one.dcm", frames[1])
    assert frame_count(single) == 1
    assert np.array_equal(read_image(single, frame=0), frames[1])


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


def test_predict_and_measure_take_each_frame_of_a_cine_loop(tmp_path, capsys) -> None:
    from test_cli_predict import make_checkpoint

    from ultraseg.cli import main

    ckpt = make_checkpoint(tmp_path / "m.ckpt")
    _cine(tmp_path / "exam" / "IM000001", [np.roll(_scan(30, 40), k, axis=0) for k in range(2)],
          regions=[_region(0.05, 0.05)])
    assert main(["predict", str(ckpt), str(tmp_path / "exam"), "--out", str(tmp_path / "o"),
                 "--device", "cpu", "--precision", "fp32"]) == 0
    assert sorted(p.name for p in (tmp_path / "o").glob("*.png")) == [
        "IM000001_frame001_mask.png", "IM000001_frame002_mask.png"]
    capsys.readouterr()
    assert main(["measure", str(ckpt), str(tmp_path / "exam"), "--threshold", "0", "--json",
                 "--device", "cpu", "--precision", "fp32"]) == 0
    rows = json.loads(capsys.readouterr().out)["rows"]
    assert [(r["name"], r["frame"]) for r in rows] == [("IM000001_frame001", 1),
                                                      ("IM000001_frame002", 2)]
    assert all(r["pixel_size_mm"] == pytest.approx(0.5) for r in rows)


def test_one_frame_given_as_a_file_keeps_its_header_pixel_size(tmp_path) -> None:
    """measure MODEL frame.dcm gave px where the same file in a folder gave mm."""
    from ultraseg import collect_frames

    p = make_dicom(tmp_path / "a.dcm", _scan(), regions=[_region(0.05, 0.05)])
    (frame,) = collect_frames(p)
    assert frame.sample.meta["pixel_size_mm"] == pytest.approx(0.5)


def test_files_without_an_ending_are_read_by_their_marker(tmp_path) -> None:
    """A scanner's export media names its frames IM000001, without an ending: a folder of
    them was 'empty', and beside a PNG they were left out without a word."""
    scan = _scan()
    make_dicom(tmp_path / "media" / "IM000001", scan, regions=[_region(0.05, 0.05)])
    make_dicom(tmp_path / "media" / "DICOMDIR", scan)      # the media's index: no frame
    (tmp_path / "media" / "README").write_text("not an image")
    ds, problems = scan_dataset(tmp_path / "media")
    assert problems == [] and [s.name for s in ds.samples] == ["IM000001"]
    np.testing.assert_array_equal(ds.samples[0].load_image(), scan)
    assert ds.samples[0].meta["pixel_size_mm"] == pytest.approx(0.5)


def test_files_named_by_their_uid_are_read_and_keep_their_whole_name(tmp_path) -> None:
    """storescp (DCMTK, pynetdicom) names what a scanner sends by its SOP Instance UID,
    US.1.2.840.113619.2.1.1: Python saw '.1' as an ending, so such files were left out of a
    folder without a word, refused when named alone, their masks 'without an image', and
    their outputs named without the last UID part (US.1.2.840.113619.2.1: one name for all)."""
    from ultraseg import collect_frames
    from ultraseg.io import is_dicom

    scan = _scan()
    exam = tmp_path / "exam"
    uids = ["US.1.2.840.113619.2.1.1", "US.1.2.840.113619.2.1.2", "1.2.840.113619.2.1.3"]
    for k, uid in enumerate(uids):
        make_dicom(exam / uid, np.roll(scan, k, axis=1), regions=[_region(0.05, 0.05)])
    Image.fromarray(scan).save(exam / "still.png")
    (exam / "notes.1").write_text("not an image, though its ending is a number")
    make_dicom(tmp_path / "elsewhere" / "scan.txt", scan)    # other endings are not opened
    assert is_dicom(exam / uids[0]) and not is_dicom(exam / "notes.1")
    assert not is_dicom(tmp_path / "elsewhere" / "scan.txt")
    frames = {f.out_name: f for f in collect_frames(exam)}
    assert sorted(frames) == sorted([*uids, "still"])
    np.testing.assert_array_equal(frames[uids[0]].sample.load_image(), scan)
    assert frames[uids[0]].sample.meta["pixel_size_mm"] == pytest.approx(0.5)
    (alone,) = collect_frames(exam / uids[1])                 # named alone: read
    assert alone.out_name == uids[1]
    Image.fromarray(scan).save(exam / f"{uids[1]}.png")      # one stem: the ending tells
    named = {f.image_path.name: f.out_name for f in collect_frames(exam)}
    assert named[uids[1]] == f"exam/{uids[1]}" and named[f"{uids[1]}.png"] == f"exam/{uids[1]}_png"
    np.testing.assert_array_equal(alone.sample.load_image(), np.roll(scan, 1, axis=1))
    # a dataset: images/UID beside masks/UID_mask.png pair
    ds_root = tmp_path / "ds"
    for uid in uids[:2]:
        make_dicom(ds_root / "images" / uid, scan)
        (ds_root / "masks").mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.zeros(scan.shape, np.uint8)).save(ds_root / "masks" / f"{uid}_mask.png")
    ds, problems = scan_dataset(ds_root)
    assert problems == [] and ds.layout == "folders"
    assert [(s.name, [m.name for m in s.mask_paths]) for s in ds.samples] == [
        (uid, [f"{uid}_mask.png"]) for uid in uids[:2]]


def test_a_palette_frame_is_read_through_its_colour_table(tmp_path) -> None:
    """PALETTE COLOR frames were read as their indices, not their colours."""
    from pydicom.data import get_testdata_file
    from pydicom.pixels import apply_color_lut, pixel_array

    path = get_testdata_file("examples_palette.dcm")
    if path is None:
        pytest.skip("pydicom's palette example is not installed")
    rgb = apply_color_lut(pixel_array(path), pydicom.dcmread(path)).astype(np.float64)
    want = np.round(rgb / 257 @ np.array([0.299, 0.587, 0.114]))      # 16-bit entries
    assert np.abs(read_image(Path(path)).astype(int) - want).max() <= 1


def _palette(path: Path, indices: np.ndarray, colours: np.ndarray, bits: int,
             scaled: bool = True) -> Path:
    """A PALETTE COLOR file of ``indices`` into ``colours`` ((256, 3) uint8), its table's
    entries ``bits`` (8, or 16: the colours times 257, or as they are where not ``scaled``:
    an older writer's 8-bit colours in 16-bit entries) deep."""
    make_dicom(path, indices, photometric="PALETTE COLOR")
    ds = pydicom.dcmread(path)
    table = colours.astype(np.uint16) * (257 if scaled else 1) if bits == 16 else colours
    for k, c in enumerate(("Red", "Green", "Blue")):
        ds.add_new(f"{c}PaletteColorLookupTableDescriptor", "US", [256, 0, bits])
        ds.add_new(f"{c}PaletteColorLookupTableData", "OW",
                   np.ascontiguousarray(table[:, k]).tobytes())
    ds.save_as(path)
    return path


def test_a_palette_reads_alike_whatever_its_tables_entry_depth(tmp_path) -> None:
    """A palette of 16-bit entries (the standard's usual) was stretched from each frame's own
    min..max, where the same picture with 8-bit entries, or as RGB, kept its grey levels: the
    model saw another input for what a viewer shows alike."""
    levels = np.arange(256)
    colours = np.stack([levels, 255 - levels // 2, levels // 3], axis=1).astype(np.uint8)
    indices = (30 + _scan() % 200).astype(np.uint8)          # 30..229: no full range
    rgb = colours[indices]
    want = read_image(make_dicom(tmp_path / "rgb.dcm", rgb, photometric="RGB"))
    np.testing.assert_array_equal(read_image(_palette(tmp_path / "p8.dcm", indices, colours, 8)),
                                  want)
    np.testing.assert_array_equal(read_image(_palette(tmp_path / "p16.dcm", indices, colours, 16)),
                                  want)
    # 8-bit colours in entries declared 16 bits deep (read as black 0..1 when first scaled)
    np.testing.assert_array_equal(
        read_image(_palette(tmp_path / "p16_8.dcm", indices, colours, 16, scaled=False)), want)


def test_a_damaged_header_or_pixel_data_is_one_line_for_its_file(tmp_path) -> None:
    """An empty PixelSpacing (an anonymiser's) stopped a whole folder as an internal error; a
    NumberOfFrames that is no number too; undecodable pixels said 'transfer syntax ?' over
    several lines with a plugin's traceback."""
    scan = _scan()
    p = make_dicom(tmp_path / "d" / "a.dcm", scan, spacing=(0.2, 0.2))
    ds = pydicom.dcmread(p)
    ds["PixelSpacing"].value = None
    ds.save_as(p)
    found, problems = scan_dataset(tmp_path / "d")
    assert problems == [] and "pixel_size_mm" not in found.samples[0].meta
    ds.PixelSpacing = "0.2"                               # one value where two belong
    ds.save_as(p)
    with ultraseg_warnings() as warned:
        assert dicom_pixel_size_mm(p) is None
        found, problems = scan_dataset(tmp_path / "d")
    assert problems == [] and "pixel_size_mm" not in found.samples[0].meta
    assert any("pixel size cannot be read" in r.getMessage() for r in warned)
    from pydicom.data import get_testdata_file

    bad = get_testdata_file("badVR.dcm")                 # pydicom's: NumberOfFrames '1A'
    if bad is not None:
        with pytest.raises(DataError, match="NumberOfFrames is no number"):
            read_image(Path(bad))
    short = make_dicom(tmp_path / "short.dcm", scan)
    ds = pydicom.dcmread(short)
    ds.PixelData = ds.PixelData[:-100]
    ds.save_as(short)
    with pytest.raises(DataError, match=r"cannot decode its pixels \(Explicit VR Little Endian: "
                                        r"The number of bytes") as e:
        read_image(short)
    assert "\n" not in str(e.value) and "short.dcm" in str(e.value)


def test_without_pydicom_each_file_is_named(tmp_path, monkeypatch) -> None:
    import sys

    p = make_dicom(tmp_path / "a.dcm", _scan())
    monkeypatch.setitem(sys.modules, "pydicom", None)
    with pytest.raises(DataError, match="needs pydicom 3") as e:
        read_image(p)
    assert "a.dcm" in str(e.value)
    # the README's install advice, for an installed package and for a checkout
    assert ("pip install 'ultraseg[dicom]' (from a checkout: pip install -e '.[dicom]')"
            in str(e.value)), str(e.value)


def test_signed_inverted_and_wide_colour_frames_follow_the_one_rule(tmp_path) -> None:
    scan = _scan()
    wide = scan.astype(np.int16) * 8 - 1000              # signed, 12 bits of range
    ds_path = make_dicom(tmp_path / "s.dcm", (-wide).astype(np.int16).view(np.uint16),
                         photometric="MONOCHROME1", bits_stored=16)
    ds = pydicom.dcmread(ds_path)
    ds.PixelRepresentation = 1
    ds.save_as(ds_path)
    np.testing.assert_array_equal(read_image(ds_path), to_uint8(wide))
    rgb16 = np.stack([scan.astype(np.uint16)] * 3, axis=-1)    # 16-bit colour: stretched as grey
    assert read_image(make_dicom(tmp_path / "c.dcm", rgb16, photometric="RGB")).max() == 255


def test_a_zero_or_infinite_pixel_spacing_gives_no_pixel_size(tmp_path) -> None:
    """PixelSpacing [0, 0] gave 0 mm, and measure then failed where it should have measured
    in px."""
    for i, spacing in enumerate(((0.0, 0.0), (float("inf"), float("inf")))):
        p = make_dicom(tmp_path / f"{i}.dcm", _scan(), spacing=spacing)
        assert dicom_pixel_size_mm(p) is None


def test_a_damaged_frame_of_a_loop_is_named_in_one_line(tmp_path) -> None:
    """A truncated JPEG frame in a scanner's loop printed pydicom's 20-line traceback (its
    decoder logs through a child logger, which the filter on 'pydicom' never saw), and the
    error did not say which frame."""
    import logging

    frames = [np.roll(_scan(), 4 * k, axis=1) for k in range(3)]
    jpegs = []
    for k, f in enumerate(frames):
        buf = io.BytesIO()
        Image.fromarray(f).save(buf, format="JPEG", quality=95)
        jpegs.append(buf.getvalue()[: 200] if k == 1 else buf.getvalue())
    p = make_dicom(tmp_path / "loop.dcm", frames[0], jpeg=True, frames=3)
    ds = pydicom.dcmread(p)
    ds.PixelData = encapsulate(jpegs)
    ds.save_as(p)
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    keep = Keep(level=logging.DEBUG)
    logging.getLogger().addHandler(keep)
    try:
        assert np.abs(read_image(p, frame=2).astype(int) - frames[2]).mean() < 4
        with pytest.raises(DataError, match="frame 2 of 3: cannot decode its pixels"):
            read_image(p, frame=1)
    finally:
        logging.getLogger().removeHandler(keep)
    assert not [r for r in records if r.name.startswith("pydicom")]
    assert logging.getLogger("pydicom").level == logging.WARNING      # restored


def _linear_window(x: np.ndarray, center: float, width: float) -> np.ndarray:
    """DICOM PS3.3 C.11.2.1.2.1's LINEAR window to 0..255, written out independently."""
    y = ((x.astype(np.float64) - (center - 0.5)) / (width - 1) + 0.5).clip(0.0, 1.0)
    return np.round(y * 255).astype(np.uint8)


def test_a_window_in_the_header_is_applied_as_a_viewer_shows_it(tmp_path) -> None:
    """A header's window (WindowCenter/WindowWidth) was ignored: a 12-bit frame was
    stretched from its own min..max, not shown as the sonographer saw it. MONOCHROME1 is
    inverted after the window; a rescale comes before it; a loop's frames all take it."""
    wide = (_scan().astype(np.uint16) * 16)                     # 12 bits: 1280..2240 or so
    p = make_dicom(tmp_path / "w.dcm", wide, bits_stored=12)
    ds = pydicom.dcmread(p)
    ds.WindowCenter, ds.WindowWidth = 1800, 600
    ds.save_as(p)
    want = _linear_window(wide, 1800, 600)
    assert 0 < (want == 0).mean() < 1 and 0 < (want == 255).mean() < 1      # clips both ends
    np.testing.assert_array_equal(read_image(p), want)
    assert not np.array_equal(read_image(p), to_uint8(wide))

    inv = make_dicom(tmp_path / "m1.dcm", wide, photometric="MONOCHROME1", bits_stored=12)
    ds = pydicom.dcmread(inv)
    ds.WindowCenter, ds.WindowWidth = 1800, 600
    ds.save_as(inv)
    np.testing.assert_array_equal(read_image(inv), 255 - want)

    rescaled = make_dicom(tmp_path / "r.dcm", wide, bits_stored=12)
    ds = pydicom.dcmread(rescaled)
    ds.RescaleSlope, ds.RescaleIntercept = 2, -1000             # the window is in output units
    ds.WindowCenter, ds.WindowWidth = 2600, 1200
    ds.save_as(rescaled)
    got = read_image(rescaled)
    np.testing.assert_array_equal(got, _linear_window(wide * 2.0 - 1000, 2600, 1200))

    frames = [wide, np.roll(wide, 7, axis=1)]
    loop = _cine(tmp_path / "loop.dcm", frames, bits_stored=12)
    ds = pydicom.dcmread(loop)
    ds.WindowCenter, ds.WindowWidth = 1800, 600
    ds.save_as(loop)
    for k, f in enumerate(frames):
        np.testing.assert_array_equal(read_image(loop, frame=k), _linear_window(f, 1800, 600))


def test_a_voi_lut_in_the_header_is_applied_and_a_bad_one_warns(tmp_path) -> None:
    """A VOI LUT (a table from stored value to shown grey) was ignored. A table that cannot
    be applied is one warning, and the frame is read as without it."""
    scan = _scan()
    lut = (255 - np.arange(256)).astype(np.uint16) // 2         # inverted, to 0..127
    p = make_dicom(tmp_path / "lut.dcm", scan)
    ds = pydicom.dcmread(p)
    item = Dataset()
    item.LUTDescriptor = [256, 0, 8]
    item.LUTData = lut.tolist()
    item["LUTData"].VR = "US"
    ds.VOILUTSequence = [item]
    ds.save_as(p)
    # shown: lut[scan], its range lut[0]..lut[255] (127..0) taken as 255..0
    want = np.round((lut[scan].astype(np.float64) - 127) / (0 - 127) * 255).astype(np.uint8)
    np.testing.assert_array_equal(read_image(p), want)

    ds.VOILUTSequence[0].LUTDescriptor = [256, 0, 3]            # 3 bits a value: unsupported
    ds.save_as(p)
    with ultraseg_warnings() as warned:
        np.testing.assert_array_equal(read_image(p), scan)
    (record,) = warned
    assert "VOI LUT or window cannot be applied" in record.getMessage()


def test_pydicom_3_0_0_is_refused_before_it_is_imported(tmp_path, monkeypatch) -> None:
    """pydicom 3.0.0 fetches five example files from GitHub when imported: offline, reading
    one DICOM took 106 s, printed urlopen retries on stdout (breaking `inspect --json`) and
    243 lines of tracebacks; online, it went to the internet while reading patients' scans.
    It is named and refused before the import; 3.0.1 fixed it."""
    import sys
    from importlib import metadata

    from ultraseg.io import dicom

    real = metadata.version
    monkeypatch.setattr(metadata, "version",
                        lambda name: "3.0.0" if name == "pydicom" else real(name))
    monkeypatch.delitem(sys.modules, "pydicom", raising=False)
    imported = []
    monkeypatch.setattr(dicom, "_import_pydicom", lambda: imported.append(1))
    with pytest.raises(DataError, match=r"pydicom 3\.0\.0 .*internet.*pydicom>=3\.0\.1"):
        dicom._pydicom(tmp_path / "a.dcm")
    assert not imported


def _patched(path: Path, good: bytes, old: bytes, new: bytes) -> Path:
    """``good`` (a DICOM file's bytes) with its one ``old`` replaced by ``new``, at ``path``."""
    assert good.count(old) == 1
    path.write_bytes(good.replace(old, new))
    return path


def _nested(path: Path, good: bytes, depth: int) -> Path:
    """``good`` with a sequence of items nested ``depth`` deep before its SamplesPerPixel."""
    import struct

    opened = (struct.pack("<HH", 0x0008, 0x1115) + b"SQ\0\0" + struct.pack("<I", 0xFFFFFFFF)
              + struct.pack("<HHI", 0xFFFE, 0xE000, 0xFFFFFFFF))
    closed = struct.pack("<HHI", 0xFFFE, 0xE00D, 0) + struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)
    i = good.index(struct.pack("<HH", 0x0028, 0x0002))
    path.write_bytes(good[:i] + opened * depth + closed * depth + good[i:])
    return path


def test_any_damage_to_a_dicom_file_is_one_line_naming_it(tmp_path, capsys) -> None:
    """One damaged DICOM file in a folder stopped every command on it as 'internal error'
    naming no file: pydicom raised what the readers did not catch (BytesLengthException,
    NotImplementedError, RecursionError), or the error handler itself raised ("UID is not a
    transfer syntax"). Each is now a DataError naming its file; the others are read."""
    from ultraseg.cli import main
    from ultraseg.io import frame_count

    d = tmp_path / "exam"
    scan = _scan(8, 8)
    good = make_dicom(d / "good.dcm", scan).read_bytes()
    bad = [_patched(d / "vr.dcm", good, b"\x02\x00\x10\x00UI", b"\x02\x00\x10\x00\x55\xc0"),
           _patched(d / "syntax.dcm", good, b"1.2.840.10008.1.2.1\0", b"1.2.840.10008.5.1.1\0"),
           _nested(d / "nest.dcm", good, 5000)]
    length = bytearray(good)
    length[138] = 10            # (0002,0000), a UL: 10 bytes long
    (d / "length.dcm").write_bytes(bytes(length))
    bad.append(d / "length.dcm")
    found, problems = scan_dataset(d)
    assert sorted(s.name for s in found.samples) == ["good", "length", "nest", "syntax", "vr"]
    for p in bad:
        assert frame_count(p) == 1
        with pytest.raises(DataError) as e:
            read_image(p)
        assert p.name in str(e.value) and "\n" not in str(e.value)
        with pytest.raises(DataError, match=p.name):
            read_image(p, frame=0)
    np.testing.assert_array_equal(read_image(d / "good.dcm"), scan)
    assert main(["inspect", str(d)]) == 2
    err = capsys.readouterr().err
    assert "internal error" not in err and all(p.name in err for p in bad)


def _declaring(path: Path, frames: int, **header) -> Path:
    """A DICOM file of one 8x8 frame whose header says it holds ``frames``."""
    make_dicom(path, _scan(8, 8), **header)
    ds = pydicom.dcmread(path)
    ds.NumberOfFrames = frames
    ds.save_as(path)
    return path


def test_a_frame_count_the_file_cannot_hold_is_refused(tmp_path) -> None:
    """A 654-byte DICOM file saying NumberOfFrames 2147483647 had inspect and predict build a
    sample a frame and run out of memory (blaming --batch-size). A count the file's bytes
    cannot hold (an uncompressed frame's pixels; an encapsulated frame's 8-byte item header)
    is now refused, naming the file; a loop that holds its frames is read."""
    from ultraseg.io import Sample, frame_count, split_frames

    for name, jpeg in (("raw.dcm", False), ("jpeg.dcm", True)):
        p = _declaring(tmp_path / name, 2 ** 31 - 1, jpeg=jpeg)
        assert p.stat().st_size < 2000
        assert frame_count(p) == 1
        assert split_frames(Sample(p.stem, p)) == [Sample(p.stem, p)]
        for frame in (None, 0):
            with pytest.raises(DataError, match="NumberOfFrames 2147483647, more than its "
                                                r"\d+ bytes hold") as e:
                read_image(p, frame=frame)
            assert name in str(e.value)
    short = _declaring(tmp_path / "short.dcm", 100)     # 6400 bytes of pixels: in 1 KB
    with pytest.raises(DataError, match="NumberOfFrames 100, more than its"):
        read_image(short, frame=0)
    loop = _cine(tmp_path / "loop.dcm", [_scan(8, 8)] * 3)
    assert frame_count(loop) == 3 and read_image(loop, frame=2).shape == (8, 8)


def test_a_frame_beyond_pillows_size_guard_is_refused_before_it_is_decoded(
        tmp_path, monkeypatch) -> None:
    """DICOM had no guard against decompression bombs: a 389 KB deflated file of 20000 x
    20000 pixels was decoded to 8.5 GB. Its Rows x Columns are checked before decoding, by
    Pillow's rule for other files: beyond twice Image.MAX_IMAGE_PIXELS refused, beyond it a
    warning."""
    scan = _scan()
    p = make_dicom(tmp_path / "big.dcm", scan)
    loop = _cine(tmp_path / "loop.dcm", [scan, scan])
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 40 * 56 // 2 - 1)     # twice it: refused
    decoded = []
    monkeypatch.setattr(pydicom.pixels, "pixel_array", lambda *a, **k: decoded.append(a))
    for path, frame in ((p, None), (loop, 1)):
        with pytest.raises(DataError, match="too large to read") as e:
            read_image(path, frame=frame)
        assert path.name in str(e.value)
        assert str(e.value).endswith(                   # what to do, said
            "too large to read (56 x 40 pixels, over twice Pillow's guard against "
            "decompression bombs, 1119 pixels): downscale the image or split it into parts; "
            "from Python, a larger PIL.Image.MAX_IMAGE_PIXELS reads it, for a file you trust")
    assert decoded == []
    monkeypatch.undo()
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 40 * 56 - 1)          # beyond it: a warning
    with ultraseg_warnings() as warned:
        np.testing.assert_array_equal(read_image(p), scan)
    (record,) = warned
    assert "decompression bombs" in record.getMessage() and "big.dcm" in record.getMessage()


def test_an_uncompressed_ybr_full_422_loop_holds_its_frames(tmp_path) -> None:
    """YBR_FULL_422, which ultrasound machines write, stores 2 bytes a pixel for its 3
    samples: the frame-count check took 3, and a valid 3-frame loop was refused as a
    damaged file ('NumberOfFrames 3, more than its 25168 bytes hold')."""
    from ultraseg.io import frame_count

    path = make_dicom(tmp_path / "ybr.dcm", np.zeros((64, 64, 3), np.uint8), "YBR_FULL_422",
                      frames=3)
    ds = pydicom.dcmread(path)
    y = np.random.default_rng(0).integers(16, 235, 3 * 64 * 64, dtype=np.uint8)
    packed = np.full(3 * 64 * 64 * 2, 128, np.uint8)        # Y0 Y1 Cb Cr for each pair
    packed[0::4], packed[1::4] = y[0::2], y[1::2]
    ds.PixelData = packed.tobytes()
    ds.save_as(path, enforce_file_format=True)
    assert frame_count(path) == 3
    assert read_image(path, frame=2).shape == (64, 64)


def test_a_damaged_size_element_is_one_line_naming_the_file(tmp_path) -> None:
    """A loop whose Columns element is 3 bytes long raised pydicom's BytesLengthException
    from ultraseg.io.dicom_frame_count (the frame-count check reads Rows and Columns)."""
    from ultraseg.io import dicom_frame_count

    path = make_dicom(tmp_path / "rows.dcm", _scan(32, 32), frames=2)
    data = bytearray(path.read_bytes())
    at = data.find(bytes.fromhex("28001100") + b"US")      # (0028,0011) Columns, US, 2 bytes
    data[at + 6:at + 8] = (3).to_bytes(2, "little")
    data.insert(at + 10, 0)
    path.write_bytes(bytes(data))
    with pytest.raises(DataError, match="rows.dcm"):
        dicom_frame_count(path)


def _head(h: int, w: int, cx: float, cy: float) -> np.ndarray:
    """A bright ellipse (value 200) on a dark frame (40): a pixel predictor's object."""
    yy, xx = np.mgrid[:h, :w]
    return np.where(((xx - cx) / 14.0) ** 2 + ((yy - cy) / 9.0) ** 2 <= 1, 200, 40
                    ).astype(np.uint8)


def test_pixels_that_are_not_square_are_measured_as_they_are_not_with_a_pixel_size(
        tmp_path) -> None:
    """PixelSpacing [0.2, 0.4] (0.2 mm high, 0.4 mm wide) gave no pixel size, with a warning
    that mm need square pixels; `measure --pixel-size 0.3` then printed mm at 0.3 mm square
    (area 75.7 mm2 for a true 67.3), counted the frame as "with a known pixel size", and said
    nothing more. Now the header's pixels are measured as they are, and --pixel-size is said
    not to be used for them."""
    from test_predict import pixel_predictor

    from ultraseg import collect_frames
    from ultraseg.measure import measure
    from ultraseg.measure_files import measure_frames

    image = _head(30, 40, 20.0, 15.0)
    p = make_dicom(tmp_path / "exam" / "aniso.dcm", image, spacing=(0.2, 0.4))
    (frame,) = collect_frames(p)
    assert "pixel_size_mm" not in frame.sample.meta
    assert (frame.sample.meta["pixel_height_mm"], frame.sample.meta["pixel_width_mm"]) == (0.2,
                                                                                        0.4)
    expected = measure(image >= 128, (0.2, 0.4))
    with ultraseg_warnings() as warned:
        summary, (row,) = measure_frames(pixel_predictor(), [frame], pixel_size_mm=0.3,
                                         out=tmp_path / "m")
    assert row["pixel_size_mm"] is None
    assert (row["pixel_height_mm"], row["pixel_width_mm"]) == (0.2, 0.4)
    assert row["area_mm2"] == pytest.approx(row["area_px"] * 0.2 * 0.4)
    assert row["hc_mm"] == pytest.approx(expected["hc_mm"])
    assert row["major_axis_mm"] == pytest.approx(expected["major_axis_mm"])
    assert summary["n_with_pixel_size"] == 1
    said = " ".join(r.getMessage() for r in warned)
    assert "aniso: its DICOM header gives pixels that are not square (0.2 mm high, 0.4 mm " \
           "wide)" in said and "--pixel-size 0.3 (square) was not used for it" in said
    with open(tmp_path / "m" / "measurements.csv", newline="") as f:
        (cells,) = csv.DictReader(f)
    assert (cells["pixel_size_mm"], cells["pixel_height_mm"], cells["pixel_width_mm"]) == (
        "", "0.2", "0.4")
    # without --pixel-size: the same mm, and no warning (nothing was left unused)
    with ultraseg_warnings() as warned:
        _, (plain,) = measure_frames(pixel_predictor(), [frame])
    assert plain["area_mm2"] == row["area_mm2"] and not warned
    # a square header's size is still one number, in both columns
    square = make_dicom(tmp_path / "sq.dcm", image, spacing=(0.25, 0.25))
    _, (row,) = measure_frames(pixel_predictor(), collect_frames(square), pixel_size_mm=0.3)
    assert (row["pixel_size_mm"], row["pixel_height_mm"], row["pixel_width_mm"]) == (
        0.25, 0.25, 0.25)


def test_evaluate_scores_hd95_in_mm_on_pixels_that_are_not_square(tmp_path) -> None:
    """evaluate --pixel-size took the same fallback: a square size over a header's 0.2 x 0.4
    mm pixels. HD95 in mm and the measurements now use each axis's own size."""
    from test_predict import pixel_predictor

    from ultraseg.evaluate import evaluate
    from ultraseg.measure import measure
    from ultraseg.metrics import hd95

    image = _head(30, 40, 20.0, 15.0)
    truth = _head(30, 40, 22.0, 17.0) >= 128              # shifted 2 px right and down
    make_dicom(tmp_path / "d" / "images" / "a.dcm", image, spacing=(0.2, 0.4))
    (tmp_path / "d" / "masks").mkdir()
    Image.fromarray(truth.astype(np.uint8) * 255).save(tmp_path / "d" / "masks" / "a_mask.png")
    with ultraseg_warnings() as warned:
        _, (row,) = evaluate(pixel_predictor(), tmp_path / "d", pixel_size_mm=0.3)
    pred = image >= 128
    assert row["hd95_mm"] == pytest.approx(hd95(pred, truth, (0.2, 0.4)))
    assert row["hd95_mm"] != pytest.approx(hd95(pred, truth, 0.3))
    assert row.get("pixel_size_mm") is None
    assert (row["pixel_height_mm"], row["pixel_width_mm"]) == (0.2, 0.4)
    assert row["area_mm2"] == pytest.approx(measure(pred, (0.2, 0.4))["area_mm2"])
    assert any("--pixel-size 0.3 (square) was not used" in r.getMessage() for r in warned)


def test_a_header_pixel_size_not_taken_is_said_once_where_it_is_used(tmp_path) -> None:
    """Frames whose ultrasound regions disagree warned '... no pixel size taken (--pixel-size
    gives one)' on every scan, once per file: inspect, train and predict, which have no
    --pixel-size and use no pixel size, said it 12 times (a review). The scan says nothing;
    measure and evaluate (PixelSizes) say it once for all such frames, and not where
    --pixel-size gives one."""
    from ultraseg.measure import PixelSizes

    regions = [_region(0.01, 0.01), _region(0.02, 0.02)]
    (tmp_path / "d" / "masks").mkdir(parents=True)
    for i in range(3):
        make_dicom(tmp_path / "d" / "images" / f"1_{i}.dcm", _scan(), regions=regions)
        Image.fromarray(np.zeros((40, 56), np.uint8)).save(
            tmp_path / "d" / "masks" / f"1_{i}_mask.png")
    with ultraseg_warnings() as warned:
        ds, problems = scan_dataset(tmp_path / "d")
    assert problems == [] and len(ds.samples) == 3
    assert not [r for r in warned if "pixel size" in r.getMessage()], warned
    sizes = PixelSizes(None)
    assert [sizes.of(s.name, s.meta) for s in ds.samples] == [None] * 3
    with ultraseg_warnings() as warned:
        sizes.warn()
    said = [r.getMessage() for r in warned]
    assert len(said) == 1 and "different pixel sizes" in said[0], said
    assert "--pixel-size" in said[0] and "2 more" in said[0], said
    given = PixelSizes(0.1)
    assert [given.of(s.name, s.meta) for s in ds.samples] == [0.1] * 3
    with ultraseg_warnings() as warned:
        given.warn()
    assert warned == []


def _deflated(path: Path, frames: list[np.ndarray]) -> Path:
    """``frames`` as a DICOM file of the Deflated Explicit VR Little Endian transfer syntax
    (its dataset zlib-compressed after the file meta), one frame or a loop."""
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    path = _cine(path, frames) if len(frames) > 1 else make_dicom(path, frames[0])
    ds = pydicom.dcmread(path)
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    ds.save_as(path, enforce_file_format=True)
    return path


def test_each_frame_of_a_deflated_loop_is_read(tmp_path) -> None:
    """Every frame of a deflated multi-frame DICOM failed 'cannot decode its pixels (... has
    no Pixel Data ...)', which pydicom itself reads: the frame was decoded from the file by
    pydicom.pixels.pixel_array(path, index=), which does not inflate the dataset."""
    from conftest import assert_reads_each_frame

    frames = [np.roll(_scan(), 5 * k, axis=1) for k in range(3)]
    loop = _deflated(tmp_path / "loop.dcm", frames)
    assert pydicom.dcmread(loop).file_meta.TransferSyntaxUID.is_deflated
    assert_reads_each_frame(loop, frames, "frames")
    single = _deflated(tmp_path / "one.dcm", frames[:1])
    assert np.array_equal(read_image(single), frames[0])
    assert np.array_equal(read_image(single, frame=0), frames[0])


def _peak_bytes(read) -> int:
    """The most bytes Python held at once (tracemalloc) while ``read()`` ran."""
    import tracemalloc

    tracemalloc.start()
    try:
        read()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_a_deflated_loop_is_not_inflated_whole_to_read_its_header_or_a_frame(
        tmp_path, monkeypatch) -> None:
    """A 1.5 MB deflated DICOM made frame_count peak at 3 GB: pydicom inflates the whole
    dataset, pixels and all, before stop_before_pixels applies, and predict inflated it again
    for each frame. The header is now inflated alone, a frame with what comes before it but
    kept alone; a header (what comes before the pixels) that inflates beyond a bound is
    refused naming the file."""
    from ultraseg.io import dicom, frame_count

    frames = [np.full((512, 512), k, np.uint8) for k in range(40)]     # 10.5 MB inflated
    loop = _deflated(tmp_path / "loop.dcm", frames)
    assert loop.stat().st_size < 100_000
    assert _peak_bytes(lambda: frame_count(loop)) < 3_000_000
    assert _peak_bytes(lambda: dicom_pixel_size_mm(loop)) < 3_000_000
    assert _peak_bytes(lambda: read_image(loop, frame=39)) < 4_000_000
    assert np.array_equal(read_image(loop, frame=39), frames[39])
    assert np.array_equal(read_image(loop, frame=0), frames[0])

    bomb = make_dicom(tmp_path / "bomb.dcm", _scan())
    ds = pydicom.dcmread(bomb)
    ds.add_new(0x00091010, "LO", "ultraseg test")           # a private block, then its data
    ds.add_new(0x00091011, "OB", bytes(3_000_000))
    ds.file_meta.TransferSyntaxUID = pydicom.uid.DeflatedExplicitVRLittleEndian
    ds.save_as(bomb, enforce_file_format=True)
    monkeypatch.setattr(dicom, "_HEADER_BYTES", 2_000_000)
    for read in (lambda: dicom.dicom_frame_count(bomb), lambda: read_image(bomb)):
        with pytest.raises(DataError, match=r"bomb\.dcm: its deflated dataset inflates to "
                                            r"more than 2\.0 MB before its pixel data"):
            read()


@pytest.mark.parametrize("bits", [8, 1])
def test_a_deflated_loop_read_frame_after_frame_is_inflated_once(tmp_path, monkeypatch, bits
                                                                ) -> None:
    """predict inflated a deflated loop's whole dataset again for each of its frames. Read
    frame after frame inside a frame loop (as predict and inspect read them), the loop is kept
    open at the frame it reached: each of its bytes is inflated about once, not once a frame.
    1-bit frames that do not end on a byte share one with the next: that loop was reopened and
    inflated from its start for almost every frame. The header was inflated and parsed again
    for each frame, which the kept loop holds: read twice in all (for the first frame, then
    by the loop it opens)."""
    import zlib

    from ultraseg.io import dicom, frame_loop

    inflated = []

    class Counting:
        def __init__(self, *a) -> None:
            self._z = zlib.decompressobj(*a)

        def __getattr__(self, name):
            return getattr(self._z, name)

        def decompress(self, *a) -> bytes:
            out = self._z.decompress(*a)
            inflated.append(len(out))
            return out

    monkeypatch.setattr(dicom, "zlib", type("zlib", (), {
        "MAX_WBITS": zlib.MAX_WBITS, "decompressobj": Counting}))
    if bits == 8:
        frames = [np.full((256, 256), k, np.uint8) for k in range(40)]  # 2.6 MB inflated
        loop = _deflated(tmp_path / "loop.dcm", frames)
    else:                       # 1023 x 1021 bits a frame: each ends inside a byte
        frames = [(np.indices((1023, 1021)).sum(0) + k) % (k + 2) == 0 for k in range(12)]
        loop = _deflated(tmp_path / "loop.dcm", [f.astype(np.uint8) for f in frames])
        ds = pydicom.dcmread(loop)
        ds.BitsAllocated = ds.BitsStored = 1
        ds.HighBit = 0
        ds.PixelData = pydicom.pixels.pack_bits(np.stack(frames).ravel())
        ds.save_as(loop, enforce_file_format=True)
    size = len(np.stack(frames).ravel()) * bits // 8                    # 1.6 MB (1 bit)
    headers, header = [], dicom._deflated
    monkeypatch.setattr(dicom, "_deflated", lambda *a: headers.append(a) or header(*a))
    with frame_loop():
        for k, want in enumerate(frames):
            got = read_image(loop, frame=k)
            assert np.array_equal(got if bits == 8 else got > 0, want), k
    assert size < sum(inflated) < 2 * size
    assert len(headers) == 2
    with frame_loop():          # back to a frame: still held, or the loop is opened anew
        for k in (3, 1, 2):
            got = read_image(loop, frame=k)
            assert np.array_equal(got if bits == 8 else got > 0, frames[k]), k
    assert len(headers) <= 2 + 2 + 1      # 3: header and loop; 1: at most a loop; 2: read on


@pytest.mark.parametrize("ids, warns", [
    (["P01"] * 3 + ["P02"] * 3 + ["P03"] * 3, True),    # 9 subjects by name, 3 patients
    ([f"P{i:02d}" for i in range(9)], False),           # a patient a subject, as named
    (["ANONYMOUS"] * 9, False),                          # one id for all (anonymised): nothing
    ([None] * 9, False),                                 # none in the headers
])
def test_dicom_patient_ids_that_join_subjects_are_warned_of(tmp_path, ids, warns) -> None:
    """30 DICOM frames of 3 PatientIDs, named as 30 subjects, were split as 30 subjects:
    each patient's frames on both sides, and nothing said (their headers named the patients).
    The warning names files, not the PatientID (a patient's identifier, kept off the logs)."""
    (tmp_path / "d" / "masks").mkdir(parents=True)
    mask = np.zeros((40, 56), np.uint8)
    mask[10:20, 10:30] = 255
    for i, pid in enumerate(ids):
        make_dicom(tmp_path / "d" / "images" / f"{i + 1}_1.dcm", _scan(), patient_id=pid)
        Image.fromarray(mask).save(tmp_path / "d" / "masks" / f"{i + 1}_1.png")
    with ultraseg_warnings() as warned:
        ds, problems = scan_dataset(tmp_path / "d")
    assert problems == [] and len({s.subject for s in ds.labelled}) == 9   # as before
    said = [r.getMessage() for r in warned if "PatientID" in r.getMessage()]
    assert len(said) == (1 if warns else 0), said
    if warns:
        assert "3 patients" in said[0] and "9 subjects" in said[0], said[0]
        assert "images/PATIENT/" in said[0] and "P01" not in said[0], said[0]
        # only a leading integer is read: PATIENT_FRAME names (P01_1) were each their own
        assert "N_FRAME, N the patient's number" in said[0], said[0]
        assert "PATIENT_FRAME" not in said[0], said[0]
    with ultraseg_warnings() as warned:         # predict and measure draw no split
        scan_dataset(tmp_path / "d", needs_labels=False)
    assert not [r for r in warned if "PatientID" in r.getMessage()]
