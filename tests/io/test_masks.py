"""Mask and image decoding rules: what is accepted (and how it is read) and what is refused."""
from __future__ import annotations

import contextlib
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw
from scipy import ndimage as ndi

from conftest import ultraseg_warnings
from ultraseg.cli import main
from ultraseg.errors import DataError, UltrasegError
from ultraseg.io import classify_mask_values, read_image, read_mask, select_label
from ultraseg.io.grey import said_once, to_uint8
from ultraseg.io.images import frame_loop
from ultraseg.inspection import inspect_dataset


def _save(path: Path, im: Image.Image | np.ndarray, **kw) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(im, np.ndarray):
        im = Image.fromarray(im)
    im.save(path, **kw)
    return path


def _disk(h: int = 40, w: int = 50, cy: int = 20, cx: int = 22, r: int = 10) -> np.ndarray:
    yy, xx = np.mgrid[:h, :w]
    return ((yy - cy) ** 2 + (xx - cx) ** 2) <= r * r


def _labels() -> np.ndarray:
    lab = np.zeros((30, 40), np.uint8)
    lab[3:12, 4:15] = 1
    lab[15:27, 20:36] = 2
    return lab


def _palette_png(path: Path, lab: np.ndarray) -> Path:
    im = Image.new("P", (lab.shape[1], lab.shape[0]))
    im.putpalette([0, 0, 0, 200, 30, 30, 30, 200, 30] + [0] * (256 * 3 - 9))
    im.putdata(lab.ravel().tolist())
    return _save(path, im)


# ------------------------------------------------------------------ accepted
@pytest.mark.parametrize("fg", [1, 255])
def test_binary_masks_read_as_zero_one(tmp_path: Path, fg: int) -> None:
    disk = _disk()
    p = _save(tmp_path / "m.png", (disk * fg).astype(np.uint8))
    mask = read_mask(p)
    assert mask.dtype == np.uint8 and mask.shape == disk.shape
    assert np.array_equal(mask, disk.astype(np.uint8))


def test_one_bit_png_mask(tmp_path: Path) -> None:
    disk = _disk()
    p = _save(tmp_path / "m.png", Image.fromarray((disk * 255).astype(np.uint8)).convert("1"))
    assert np.array_equal(read_mask(p), disk.astype(np.uint8))


def test_jpeg_noisy_binary_mask_is_binarised(tmp_path: Path) -> None:
    disk = _disk(80, 100, 40, 45, 22)
    p = _save(tmp_path / "m.jpg", (disk * 255).astype(np.uint8), quality=75)
    raw = np.asarray(Image.open(p))
    assert len(np.unique(raw)) > 2, "the JPEG must actually be noisy for this test to mean anything"
    mask = read_mask(p)
    assert set(np.unique(mask)) == {0, 1}
    wrong = mask.astype(bool) != disk
    inner = ndi.binary_erosion(disk, iterations=2)
    outer = ndi.binary_dilation(disk, iterations=2)
    edge = outer & ~inner  # within two pixels of the mask's edge
    assert not (wrong & ~edge).any(), "JPEG noise changed pixels away from the mask's edge"
    assert wrong.sum() < 0.05 * disk.sum()


@pytest.mark.parametrize("quality", [15, 40, 70, 95])
def test_empty_jpeg_mask_stays_empty(tmp_path: Path, quality: int) -> None:
    """JPEG turns an all-black mask into a flat 1 or 2 at some qualities: still an empty mask,
    not a frame full of foreground (most Kaggle nerve frames have empty masks)."""
    p = _save(tmp_path / "m.jpg", np.zeros((48, 64), np.uint8), quality=quality)
    assert not read_mask(p).any()


def test_jpeg_mask_of_a_tiny_structure_is_binarised_at_127(tmp_path: Path) -> None:
    """Few distinct values (JPEG ringing around a 3-pixel mark) are no label mask in a JPEG."""
    im = Image.new("L", (64, 64), 0)
    ImageDraw.Draw(im).ellipse((13, 19, 15, 21), fill=255)
    p = _save(tmp_path / "m.jpg", im, quality=90)
    raw = np.asarray(Image.open(p))
    assert 2 < len(np.unique(raw)) <= 32, "the JPEG must ring with few values for this test"
    assert np.array_equal(read_mask(p), (raw > 127).astype(np.uint8))


def test_black_and_white_palette_png_decoded_through_its_palette(tmp_path: Path) -> None:
    """An adaptive (quantized) palette may put white at index 0: a grey palette is decoded
    through its colours, so the mask is not inverted."""
    bw = np.zeros((30, 40), np.uint8)
    bw[5:10, 5:10] = 255
    p = _save(tmp_path / "m.png", Image.fromarray(bw).quantize(2))
    im = Image.open(p)
    assert im.mode == "P" and np.asarray(im)[0, 0] != 0, "white must take index 0 here"
    assert np.array_equal(read_mask(p), (bw > 0).astype(np.uint8))


def test_photograph_as_palette_png_refused(tmp_path: Path) -> None:
    photo = np.random.default_rng(0).integers(0, 256, (30, 40), dtype=np.uint8)
    p = _save(tmp_path / "m.png", Image.fromarray(photo).convert("RGB").quantize(200))
    assert Image.open(p).mode == "P"
    with pytest.raises(DataError, match="neither binary nor a label mask"):
        read_mask(p)


@pytest.mark.parametrize("mode", ["RGBA", "LA", "RGBA red", "RGBA red on transparent black"])
def test_mask_drawn_in_the_alpha_channel(tmp_path: Path, mode: str) -> None:
    """Annotation tools export a structure as opaque pixels on a transparent frame of one
    colour: the alpha channel is the mask. The colour may be any (red, not only white), and
    what colour the transparent pixels hold does not matter (GIMP and Photoshop write them
    (0, 0, 0, 0)): a red structure was refused as a 'colour mask whose channels disagree'."""
    disk = (_disk() * 255).astype(np.uint8)
    if mode.startswith("RGBA red"):
        rgb = np.zeros(disk.shape + (3,), np.uint8)
        rgb[..., 0] = 255 if mode == "RGBA red" else disk
        arr = np.dstack([rgb, disk])
    else:
        colour = np.full_like(disk, 255)
        arr = np.stack([colour] * (3 if mode == "RGBA" else 1) + [disk], axis=-1)
    p = tmp_path / "m.png"
    Image.fromarray(arr, mode=mode.split()[0]).save(p)
    assert Image.open(p).mode == mode.split()[0]
    # a colour labels it by its grey level, as on an opaque frame (red: 76)
    label = 76 if mode.startswith("RGBA red") else 1
    assert np.array_equal(read_mask(p), (disk > 0).astype(np.uint8) * label)
    # an optimiser's palette of the same picture reads the same, labels too (red was read
    # as its palette index, 1, or 0 where red took index 0: one colour, two labels)
    q = _save(tmp_path / "q.png", Image.open(p).convert("RGBA").quantize(2))
    assert Image.open(q).mode == "P" and "transparency" in Image.open(q).info
    np.testing.assert_array_equal(read_mask(q), (disk > 0).astype(np.uint8) * label)


def test_a_mask_drawn_in_the_alpha_channel_and_saved_as_a_palette(tmp_path: Path) -> None:
    """A PNG optimiser (pngquant, oxipng, Pillow's quantize) turns an RGBA mask drawn in its
    alpha channel into a palette with transparency. The palette was read through its colours
    alone, all white: the whole frame was the structure, and inspect counted no problem."""
    disk = _disk()
    rgba = np.zeros(disk.shape + (4,), np.uint8)
    rgba[..., :3] = 255
    rgba[disk, 3] = 255
    p = _save(tmp_path / "m.png", Image.fromarray(rgba, "RGBA").quantize(2))
    assert Image.open(p).mode == "P" and "transparency" in Image.open(p).info
    np.testing.assert_array_equal(read_mask(p), disk.astype(np.uint8))
    # a label palette with a transparent background keeps its indices as labels
    lab = _labels()
    q = _palette_png(tmp_path / "lab.png", lab)
    im = Image.open(q)
    im.info["transparency"] = 0
    im.save(tmp_path / "lab_t.png", transparency=0)
    np.testing.assert_array_equal(read_mask(tmp_path / "lab_t.png"), lab)
    # ... and so does one of its masks that shows one label (one colour on transparent
    # pixels): its palette carries the other labels' colours, which no optimiser keeps
    one = np.where(lab == 2, 2, 0).astype(np.uint8)
    _palette_png(tmp_path / "one.png", one)
    Image.open(tmp_path / "one.png").save(tmp_path / "one_t.png", transparency=0)
    np.testing.assert_array_equal(read_mask(tmp_path / "one_t.png"), one)


def test_a_label_mask_of_2_or_4_bits_keeps_its_labels(tmp_path: Path) -> None:
    """Pillow scales 2- and 4-bit grey samples up to 8 bits: labels 0, 1, 2 stored in a 4-bit
    PNG read as 0, 17, 34 (so `--label 1` found nothing). A binary mask stored at full
    scale (0 and 15) is still binary."""
    import struct
    import zlib

    def png(path: Path, values: np.ndarray, bits: int) -> Path:
        h, w = values.shape
        rows = b""
        for row in values:
            packed = np.packbits(np.unpackbits(row[:, None], axis=1)[:, -bits:].ravel())
            rows += b"\0" + packed.tobytes()[: (w * bits + 7) // 8]

        def chunk(tag: bytes, data: bytes) -> bytes:
            return (struct.pack(">I", len(data)) + tag + data
                    + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF))
        ihdr = struct.pack(">IIBBBBB", w, h, bits, 0, 0, 0, 0)
        path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
                         + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))
        return path

    lab = _labels()
    for bits in (2, 4):
        p = png(tmp_path / f"l{bits}.png", lab, bits)
        assert Image.open(p).tile[0][3] == f"L;{bits}"
        np.testing.assert_array_equal(read_mask(p), lab)
    full = png(tmp_path / "b4.png", (_disk() * 15).astype(np.uint8), 4)
    np.testing.assert_array_equal(read_mask(full), _disk().astype(np.uint8))


@pytest.mark.parametrize("fmt", ["JPEG", "TIFF"])
def test_a_cmyk_mask_is_read_as_it_shows(tmp_path: Path, fmt: str) -> None:
    """A CMYK mask's four channels were taken for RGBA: C (255 minus the grey) as the grey
    and K as the alpha, so the structure read inverted, the background as the structure."""
    disk = _disk()
    rgb = np.stack([disk.astype(np.uint8) * 255] * 3, axis=-1)
    p = _save(tmp_path / f"m.{fmt.lower()}", Image.fromarray(rgb).convert("CMYK"), format=fmt)
    assert Image.open(p).mode == "CMYK"
    np.testing.assert_array_equal(read_mask(p), disk.astype(np.uint8))


def test_palette_png_keeps_labels_and_select_label(tmp_path: Path) -> None:
    lab = _labels()
    p = _palette_png(tmp_path / "m.png", lab)
    assert Image.open(p).mode == "P"
    mask = read_mask(p)
    assert np.array_equal(mask, lab)  # palette indices, not colours
    assert np.array_equal(select_label(mask, 2), lab == 2)
    assert np.array_equal(select_label(mask, 1), lab == 1)
    assert np.array_equal(select_label(mask, None), lab > 0)
    for label in (0, -1):          # 0 made the background the target: ~every pixel
        with pytest.raises(UltrasegError, match="0 is the background"):
            select_label(mask, label)


def test_gray_label_mask_keeps_labels(tmp_path: Path) -> None:
    lab = _labels()
    lab[0:2, 0:2] = 3
    assert np.array_equal(read_mask(_save(tmp_path / "m.png", lab)), lab)


def test_rgb_mask_with_equal_channels_accepted(tmp_path: Path) -> None:
    disk = (_disk() * 255).astype(np.uint8)
    p = _save(tmp_path / "m.png", np.stack([disk] * 3, axis=-1))
    assert Image.open(p).mode == "RGB"
    assert np.array_equal(read_mask(p), (disk > 0).astype(np.uint8))


def test_rgba_gray_mask_accepted(tmp_path: Path) -> None:
    disk = (_disk() * 255).astype(np.uint8)
    alpha = np.full_like(disk, 255)
    p = _save(tmp_path / "m.png", np.stack([disk, disk, disk, alpha], axis=-1))
    assert Image.open(p).mode == "RGBA"
    assert np.array_equal(read_mask(p), (disk > 0).astype(np.uint8))


@pytest.mark.parametrize("alpha", ["opaque", "same as gray"])
def test_gray_plus_alpha_mask_accepted(tmp_path: Path, alpha: str) -> None:
    disk = (_disk() * 255).astype(np.uint8)
    a = np.full_like(disk, 255) if alpha == "opaque" else disk
    p = tmp_path / "m.png"
    Image.fromarray(np.stack([disk, a], axis=-1), mode="LA").save(p)
    assert Image.open(p).mode == "LA"
    assert np.array_equal(read_mask(p), (disk > 0).astype(np.uint8))


@pytest.mark.parametrize("top", [65535, 1000])       # {0, N}: two values are black and white
def test_16_bit_black_and_white_mask_is_binary(tmp_path: Path, top: int) -> None:
    disk = _disk().astype(np.uint16) * top
    p = tmp_path / "m16.png"
    Image.fromarray(disk).save(p)
    assert Image.open(p).mode == "I;16"
    assert np.array_equal(read_mask(p), (disk > 0).astype(np.uint8))


@pytest.mark.parametrize("alpha", [False, True])
def test_a_coloured_rgb_mask_is_read_as_labels(tmp_path: Path, alpha: bool) -> None:
    """An RGB mask of a few colours on black (red disk, or a red lesion and a green organ) was
    refused as a 'colour mask whose channels disagree', though the same picture as a palette
    PNG was read. Black is the background; each colour's label is its grey level (ITU-R 601
    luma, as Pillow's convert('L')), so a colour has one label in every mask of a set."""
    disk = _disk()
    red = np.zeros(disk.shape + (3,), np.uint8)
    red[disk] = (255, 0, 0)
    both = red.copy()
    both[30:38, 35:48] = (0, 255, 0)
    green = np.zeros_like(red)
    green[30:38, 35:48] = (0, 255, 0)
    if alpha:       # label colours on transparent pixels, whatever colour those hold
        def rgba(rgb: np.ndarray) -> np.ndarray:
            a = np.where(rgb.any(axis=-1), 255, 0).astype(np.uint8)
            return np.dstack([np.where(a[..., None] > 0, rgb, 255), a])
        red, both, green = rgba(red), rgba(both), rgba(green)
    masks = {n: read_mask(_save(tmp_path / f"{n}.png", a))
             for n, a in (("red", red), ("both", both), ("green", green))}
    np.testing.assert_array_equal(masks["red"] > 0, disk)
    assert set(np.unique(masks["red"]).tolist()) == {0, 76}
    assert set(np.unique(masks["both"]).tolist()) == {0, 76, 150}
    np.testing.assert_array_equal(masks["both"] == 150, masks["green"] == 150)
    np.testing.assert_array_equal(masks["green"] > 0, masks["green"] == 150)
    if alpha:       # an optimiser's palette with transparency of one colour: the same labels
        for n, a in (("red", red), ("green", green)):
            q = _save(tmp_path / f"{n}_q.png", Image.fromarray(a, "RGBA").quantize(4))
            assert Image.open(q).mode == "P" and "transparency" in Image.open(q).info
            np.testing.assert_array_equal(read_mask(q), masks[n])
        # of several colours, its indices (a label palette with a transparent background
        # reads so), a transparent pixel the background whatever its index (here 2)
        indices = np.where(both[..., 0] == 255, 0, 1).astype(np.uint8)
        indices[both[..., 3] == 0] = 2
        im = Image.fromarray(indices, "P")
        im.putpalette([255, 0, 0, 0, 255, 0, 255, 255, 255])
        im.save(tmp_path / "both_q.png", transparency=b"\xff\xff\x00")
        np.testing.assert_array_equal(read_mask(tmp_path / "both_q.png"),
                                      np.where(indices == 2, 0, indices))


@pytest.mark.parametrize("size", [64, 160])
@pytest.mark.parametrize("colour", [(255, 0, 0), (255, 128, 0)])
def test_an_anti_aliased_colour_mask_is_a_blended_binary_of_its_colour(
        tmp_path: Path, size: int, colour: tuple[int, int, int]) -> None:
    """A colour mask resized with a smoothing filter blends its colour with black at the edges:
    each blend was its own label (a red disk: 21 labels, the structure 23 % larger, and past
    32 blends refused as 'an image saved as a mask?'). Where every colour lies on the line
    from black to one colour it is read as a grey mask with blended edges is, binarised at
    half, labelled by that colour's grey level."""
    big = _disk(size, size, size // 2, size // 2, size // 3)
    grey = np.asarray(Image.fromarray(big.astype(np.uint8) * 255).resize(
        (size // 2, size // 2), Image.BILINEAR))
    rgb = np.zeros(big.shape + (3,), np.uint8)
    rgb[big] = colour
    small = np.asarray(Image.fromarray(rgb).resize((size // 2, size // 2), Image.BILINEAR))
    assert len({tuple(c) for c in small.reshape(-1, 3)}) > 3
    level = int(np.asarray(Image.new("RGB", (1, 1), colour).convert("L"))[0, 0])
    mask = read_mask(_save(tmp_path / "m.png", small))
    np.testing.assert_array_equal(mask, read_mask(_save(tmp_path / "g.png", grey)) * level)


def test_an_anti_aliased_mask_of_several_colours_is_refused_naming_it(tmp_path: Path) -> None:
    """Blends of two label colours with black (and each other) are no labels, nor is there one
    colour to binarise: refused, saying how to save it."""
    rgb = np.zeros((80, 80, 3), np.uint8)
    rgb[_disk(80, 80, 30, 30, 20)] = (255, 0, 0)
    rgb[50:75, 45:75] = (0, 255, 0)
    small = np.asarray(Image.fromarray(rgb).resize((40, 40), Image.BILINEAR))
    with pytest.raises(DataError, match="anti-alias.*nearest-neighbour"):
        read_mask(_save(tmp_path / "m.png", small))
    # crisp labels of one hue (dark red, red) stay two labels
    crisp = np.zeros((40, 40, 3), np.uint8)
    crisp[5:20, 5:20] = (128, 0, 0)
    crisp[22:35, 22:35] = (255, 0, 0)
    assert set(np.unique(read_mask(_save(tmp_path / "c.png", crisp))).tolist()) == {0, 38, 76}


def test_a_colour_photograph_as_mask_is_refused(tmp_path: Path) -> None:
    photo = np.random.default_rng(0).integers(0, 256, (40, 50, 3), dtype=np.uint8)
    p = _save(tmp_path / "colour_mask.png", photo)
    with pytest.raises(DataError, match="is this an image saved as a mask") as e:
        read_mask(p)
    assert "colour_mask.png" in str(e.value)


def test_colours_of_one_grey_level_are_refused_not_merged(tmp_path: Path) -> None:
    """Two colours whose grey levels are one label would be one structure: refused, saying
    how to save such a mask."""
    arr = np.zeros((20, 20, 3), np.uint8)
    arr[2:8, 2:8] = (255, 0, 0)          # luma 76
    arr[10:16, 10:16] = (0, 130, 0)      # luma 76 too
    with pytest.raises(DataError, match="grey level.*palette PNG"):
        read_mask(_save(tmp_path / "m.png", arr))


def test_photograph_as_mask_refused(tmp_path: Path) -> None:
    noise = np.random.default_rng(0).integers(0, 256, (40, 50), dtype=np.uint8)
    p = _save(tmp_path / "photo_mask.png", noise)
    with pytest.raises(DataError) as e:
        read_mask(p)
    assert "photo_mask.png" in str(e.value)
    assert "neither binary nor a label mask" in str(e.value)


def test_smooth_photograph_as_mask_refused(tmp_path: Path) -> None:
    """A real-looking image (smooth gradient over the whole range), not just noise."""
    yy, xx = np.mgrid[:64, :64]
    photo = ((xx + yy) * 255 / 126).astype(np.uint8)
    with pytest.raises(DataError):
        read_mask(_save(tmp_path / "m.png", photo))


def test_classify_mask_values_rules() -> None:
    assert np.array_equal(classify_mask_values(np.array([[0, 255], [255, 0]])), [[0, 1], [1, 0]])
    assert np.array_equal(classify_mask_values(np.array([[0, 2], [1, 0]])), [[0, 2], [1, 0]])
    with pytest.raises(DataError):
        classify_mask_values(np.array([[0, -1], [1, 0]]))
    with pytest.raises(DataError):
        classify_mask_values(np.array([[0.0, np.nan], [1.0, 0.0]]))
    with pytest.raises(DataError):
        classify_mask_values(np.arange(100).reshape(10, 10) * 2)


# ------------------------------------------------------------------ images
@pytest.mark.parametrize("reader", [read_image, read_mask])
@pytest.mark.parametrize("ext", ["tif", "png"])
def test_multi_page_tiff_is_refused_not_cut_to_its_first_page(tmp_path: Path, reader,
                                                              ext: str) -> None:
    """A cine loop saved as one TIFF, or as an animated PNG (which was still cut to its first
    frame), would silently become its first frame."""
    pages = [Image.fromarray((_disk() * 255).astype(np.uint8) ^ np.uint8(i)) for i in range(3)]
    p = tmp_path / f"cine.{ext}"
    pages[0].save(p, save_all=True, append_images=pages[1:])
    assert Image.open(p).n_frames == 3
    with pytest.raises(DataError, match="3 pages") as e:
        reader(p)
    assert f"cine.{ext}" in str(e.value)
    assert ("one mask per file" in str(e.value)) == (reader is read_mask)


@pytest.mark.parametrize("ext", ["tif", "png"])
def test_a_page_of_a_multi_page_file_is_read_when_named(tmp_path: Path, ext: str) -> None:
    """``frame`` picks a page of a cine loop saved as one TIFF or an animated PNG."""
    from conftest import assert_reads_each_frame
    from ultraseg.io import frame_count

    pages = [(_disk() * 255).astype(np.uint8) ^ np.uint8(40 * i) for i in range(3)]
    p = tmp_path / f"cine.{ext}"
    Image.fromarray(pages[0]).save(p, save_all=True,
                                   append_images=[Image.fromarray(a) for a in pages[1:]])
    assert_reads_each_frame(p, pages, "pages")
    with pytest.raises(DataError, match="holds 1 page: no frame 1"):
        read_image(_save(tmp_path / "still.png", pages[0]), frame=1)
    for wrong in (-1, 1.0, "1", True):
        with pytest.raises(UltrasegError, match="frame must be a whole number from 0"):
            read_image(p, frame=wrong)
    assert np.array_equal(read_image(p, frame=np.int64(2)), pages[2])
    single = _save(tmp_path / "one.png", pages[1])
    assert frame_count(single) == 1 and np.array_equal(read_image(single, frame=0), pages[1])
    (tmp_path / "broken.tif").write_bytes(b"II*\x00junk")
    assert frame_count(tmp_path / "broken.tif") == 1      # reading it says what is wrong


@pytest.mark.parametrize("ext", ["tif", "png"])
def test_reading_every_frame_of_a_loop_leaves_no_file_open(tmp_path: Path, ext: str) -> None:
    """Each TIFF page read left its file object to the garbage collector (a ResourceWarning
    each), and an animated PNG stayed open, per thread, after its last frame (the file held
    after it was deleted; on Windows it could not be deleted)."""
    import gc

    pages = [(_disk() * 255).astype(np.uint8) ^ np.uint8(40 * i) for i in range(3)]
    p = _loop(tmp_path / f"cine.{ext}", pages)
    _files_open(p)                                   # (skips the test without /proc)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        for k in range(3):
            assert np.array_equal(read_image(p, frame=k), pages[k])
        assert _files_open(p) == []
        gc.collect()
    assert not [w for w in caught if issubclass(w.category, ResourceWarning)]


@pytest.mark.parametrize("disposal,blend", [(0, 0), (1, 0), (2, 1), (0, 1)])
def test_an_animated_pngs_frames_are_drawn_over_the_ones_before(tmp_path: Path, disposal: int,
                                                                 blend: int) -> None:
    """Pillow stores a frame of an animated PNG as the part that changed, drawn over the frames
    before it: jumping to frame k gave a frame of background where only that part was right."""
    rng = np.random.default_rng(0)
    frames = [(rng.random((64, 80)) * 255).astype(np.uint8)]
    for k in range(1, 5):
        f = frames[-1].copy()
        f[10 + k * 5: 20 + k * 5, 10:30] = 255 - k * 40
        frames.append(f)
    p = tmp_path / "clip.png"
    rgba = [Image.fromarray(f).convert("RGBA") for f in frames]
    rgba[0].save(p, save_all=True, append_images=rgba[1:], duration=40, disposal=disposal,
                 blend=blend)
    for k in (4, 2, 0, 3):                       # in any order
        assert np.array_equal(read_image(p, frame=k), frames[k]), k


def test_an_animated_png_read_frame_after_frame_decodes_each_frame_once(tmp_path: Path,
                                                                        monkeypatch) -> None:
    """Each frame was decoded over all those before it, from the file's start: a loop read
    as predict reads it cost n * n / 2 frame decodes (a 300-frame loop 23 s, not 0.15)."""
    from PIL import PngImagePlugin

    frames = [np.full((16, 20), 10 * k, np.uint8) for k in range(12)]
    frames = [f + np.eye(16, 20, k, dtype=np.uint8) for k, f in enumerate(frames)]
    p = tmp_path / "clip.png"
    Image.fromarray(frames[0]).save(p, save_all=True,
                                    append_images=[Image.fromarray(f) for f in frames[1:]])
    seeks = []
    real = PngImagePlugin.PngImageFile.seek

    def counting(self, f):
        seeks.append(f)
        return real(self, f)

    monkeypatch.setattr(PngImagePlugin.PngImageFile, "seek", counting)
    with frame_loop():
        for k, frame in enumerate(frames):
            assert np.array_equal(read_image(p, frame=k), frame)
        assert len(seeks) <= 2 * len(frames)
        assert np.array_equal(read_image(p, frame=3), frames[3])     # back: from the start


def _files_open(path: Path) -> list[str]:
    """This process's file descriptors open on ``path`` (skips the test without /proc)."""
    import os

    fds = Path("/proc/self/fd")
    if not fds.is_dir():
        pytest.skip("needs /proc (Linux) to list open files")
    found = []
    for fd in fds.iterdir():
        with contextlib.suppress(OSError):
            if os.readlink(fd) == str(path):
                found.append(fd.name)
    return found


def _loop(path: Path, frames: list[np.ndarray], **kw) -> Path:
    Image.fromarray(frames[0]).save(path, save_all=True,
                                    append_images=[Image.fromarray(f) for f in frames[1:]], **kw)
    return path


@pytest.mark.parametrize("dtype,compression", [(np.uint8, None), (np.uint8, "tiff_lzw"),
                                               (np.uint16, None), (np.float32, None)])
def test_every_page_of_a_multi_page_tiff_reads_as_that_page_saved_alone(
        tmp_path: Path, dtype, compression) -> None:
    """Each page of a TIFF loop, read in order, backwards or after another, is the page as
    it reads saved alone (a loop's file is kept open between pages: the pages share it)."""
    rng = np.random.default_rng(1)
    top = 255 if dtype == np.uint8 else 4000 if dtype == np.uint16 else 1.0
    frames = [(rng.random((24, 30)) * top * (k + 1) / 6).astype(dtype) for k in range(6)]
    kw = {"compression": compression} if compression else {}
    loop = _loop(tmp_path / "loop.tif", frames, **kw)
    alone = [read_image(_save(tmp_path / f"page{k}.tif", f, **kw)) for k, f in enumerate(frames)]
    for k in [*range(6), *range(5, -1, -1), 2, 4, 1, 5]:
        got = read_image(loop, frame=k)
        assert got.dtype == np.uint8 and np.array_equal(got, alone[k]), k
    assert _files_open(loop) == []                 # (read to its last page last)


def test_a_multi_page_tiff_read_page_after_page_is_opened_once(tmp_path: Path,
                                                               monkeypatch) -> None:
    """Each page was read from a fresh open of the file, which counted its pages by walking
    every page's directory and then walked to the page: a loop read as predict reads it cost
    n * n directory reads (300 pages of 64 x 64: 43 ms a frame; 1200: 97 ms). The file is
    now opened once and each directory read about once, however long the loop."""
    from PIL import TiffImagePlugin

    opened, directories = [], []
    real_open, real_load = Image.open, TiffImagePlugin.ImageFileDirectory_v2.load

    def counting_open(*args, **kw):
        opened.append(args[0])
        return real_open(*args, **kw)

    def counting_load(self, fp):
        directories.append(1)
        return real_load(self, fp)

    monkeypatch.setattr(Image, "open", counting_open)
    monkeypatch.setattr(TiffImagePlugin.ImageFileDirectory_v2, "load", counting_load)
    for n in (10, 40):
        frames = [np.full((8, 12), 5 * k, np.uint8) + np.eye(8, 12, k % 12, dtype=np.uint8)
                  for k in range(n)]
        p = _loop(tmp_path / f"loop{n}.tif", frames)
        opened.clear()
        directories.clear()
        with frame_loop():
            for k, frame in enumerate(frames):
                assert np.array_equal(read_image(p, frame=k), frame), k
        assert len(opened) == 1, n
        assert len(directories) <= 4 * n, n
    opened.clear()
    directories.clear()
    assert np.array_equal(read_image(p, frame=3), frames[3])     # one page: not all counted
    assert len(opened) == 1 and len(directories) <= 10
    with pytest.raises(DataError, match=r"holds 40 pages: no frame 40 \(frames count from 0"):
        read_image(p, frame=40)


@pytest.mark.parametrize("ext", ["tif", "png"])
def test_a_loop_replaced_on_disk_between_frames_is_read_anew(tmp_path: Path, ext: str) -> None:
    """The loop kept open between frames is the file that was read: one written anew under
    its name (copied over with its times kept, or rewritten in place, to the same size) is
    opened again, not read on from the old file."""
    import os

    kw = {"compression": "tiff_lzw"} if ext == "tif" else {}   # (decoded from the open file)
    old = [np.full((16, 20), 10 * k, np.uint8) for k in range(4)]
    new = old[::-1]                                             # (files of the same size)
    p = _loop(tmp_path / f"loop.{ext}", old, **kw)
    with frame_loop():
        assert np.array_equal(read_image(p, frame=1), old[1])
        stat = p.stat()
        os.replace(_loop(tmp_path / f"other.{ext}", new, **kw), p)  # another file, same times
        os.utime(p, ns=(stat.st_atime_ns, stat.st_mtime_ns))
        assert p.stat().st_size == stat.st_size
        assert np.array_equal(read_image(p, frame=2), new[2])
        data = _loop(tmp_path / f"third.{ext}", old, **kw).read_bytes()
        with open(p, "r+b") as f:                              # in place: same file and size
            f.write(data)
        os.utime(p, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
        assert np.array_equal(read_image(p, frame=3), old[3])


@pytest.mark.parametrize("ext", ["tif", "png"])
def test_at_most_one_loop_a_thread_is_kept_open(tmp_path: Path, ext: str) -> None:
    """Loops read frame by frame, one after another: reading a frame of another loop closes
    the one kept before (each stayed open until its last frame was read), and a thread keeps
    its own."""
    import threading

    frames = [np.full((16, 20), 10 * k, np.uint8) for k in range(4)]
    a, b = _loop(tmp_path / f"a.{ext}", frames), _loop(tmp_path / f"b.{ext}", frames)

    def read_a_in_a_loop(frame: int) -> None:
        with frame_loop():
            read_image(a, frame=frame)

    with frame_loop():
        assert np.array_equal(read_image(a, frame=1), frames[1])
        assert _files_open(a)                 # (an uncompressed TIFF's pages: mapped too)
        assert np.array_equal(read_image(b, frame=1), frames[1])
        assert _files_open(a) == [] and _files_open(b)
        elsewhere = threading.Thread(target=read_a_in_a_loop, args=(3,))
        elsewhere.start()
        elsewhere.join()
        assert _files_open(a) == [] and _files_open(b)
        assert np.array_equal(read_image(b, frame=3), frames[3])
        assert _files_open(b) == []



@pytest.mark.parametrize("ext", ["tif", "png"])
def test_a_kept_loop_is_closed_by_any_other_read_and_when_prediction_stops(
        tmp_path: Path, ext: str) -> None:
    """A loop read up to frame 1 stayed open however many single images were read after it,
    though the README says another file's read closes it, and a write_predictions stopped by
    an error kept it open (a deleted loop's disk space held) until another loop was read."""
    from ultraseg.config import ModelConfig, PreprocessConfig
    from ultraseg.predict import Predictor
    from ultraseg.frame_outputs import iter_probabilities
    from ultraseg.frames import collect_frames

    frames = [np.full((16, 20), 10 * k, np.uint8) for k in range(4)]
    loop = _loop(tmp_path / f"a.{ext}", frames)
    single = _save(tmp_path / "single.png", frames[2])
    with frame_loop():
        assert np.array_equal(read_image(loop, frame=1), frames[1])
        assert _files_open(loop)
        read_image(single)
        assert _files_open(loop) == []

    predictor = Predictor(lambda batch: batch, ModelConfig(variant="same", depth=1),
                          PreprocessConfig(size=None), batch_size=1)
    probs = iter_probabilities(predictor, collect_frames([loop]))
    next(probs)                                 # the loop's first frames read, then an error
    assert _files_open(loop)
    probs.close()
    assert _files_open(loop) == []


@pytest.mark.parametrize("ext", ["tif", "png"])
def test_a_loop_s_file_is_kept_open_inside_a_frame_loop_alone(tmp_path: Path, ext: str) -> None:
    """read_image(loop, frame=0) returned with the file still open (two descriptors on a
    TIFF), so on Windows it could not be replaced or deleted until something else was read.
    The file stays open between frames inside frame_loop() alone (predict opens one)."""
    frames = [np.full((16, 20), 10 * k, np.uint8) for k in range(3)]
    loop = _loop(tmp_path / f"loop.{ext}", frames)
    assert np.array_equal(read_image(loop, frame=0), frames[0])
    assert _files_open(loop) == []
    with frame_loop():
        assert np.array_equal(read_image(loop, frame=0), frames[0])
        with frame_loop():                                  # (nested: the outer one holds)
            assert np.array_equal(read_image(loop, frame=1), frames[1])
        assert _files_open(loop)
    assert _files_open(loop) == []

def test_an_image_beyond_pillows_size_guard_is_a_data_error(tmp_path: Path,
                                                             monkeypatch) -> None:
    """Pillow's guard against decompression bombs raised an error that is no OSError: an
    internal error (exit 1) that stopped predict at that frame; between the guard and twice
    it, Pillow's warning was printed with a line of source code."""
    p = _save(tmp_path / "big.png", (_disk() * 200).astype(np.uint8))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 40 * 50 // 2 - 1)   # twice it: an error
    with pytest.raises(DataError, match="too large to read") as e:
        read_image(p)
    assert "big.png" in str(e.value)
    # in ultraseg's words, with what to do (it passed on Pillow's 'Image size (2000 pixels)
    # exceeds limit of 999 pixels, could be decompression bomb DOS attack.')
    assert str(e.value).endswith(
        "big.png: too large to read (2000 pixels, over twice Pillow's guard against "
        "decompression bombs, 999 pixels): downscale the image or split it into parts; from "
        "Python, a larger PIL.Image.MAX_IMAGE_PIXELS reads it, for a file you trust")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 40 * 50 - 1)        # beyond it: a warning
    with warnings.catch_warnings(), ultraseg_warnings() as warned:
        warnings.simplefilter("error")
        assert read_image(p).shape == (40, 50)
    (record,) = warned
    assert "decompression bombs" in record.getMessage() and "big.png" in record.getMessage()



def _damaged_second_page(path: Path) -> Path:
    """A 2-page TIFF whose second directory lost its ImageWidth tag (renamed to a private
    tag): Pillow raises TypeError('Missing dimensions') on counting or reaching that page."""
    import struct

    pages = [np.full((8, 8), v, np.uint8) for v in (10, 200)]
    b = bytearray(_loop(path, pages).read_bytes())
    first = struct.unpack_from("<I", b, 4)[0]
    second = struct.unpack_from("<I", b, first + 2 + 12 * struct.unpack_from("<H", b, first)[0])[0]
    for i in range(struct.unpack_from("<H", b, second)[0]):
        if struct.unpack_from("<H", b, second + 2 + 12 * i)[0] == 256:
            struct.pack_into("<H", b, second + 2 + 12 * i, 0xC000)
    path.write_bytes(bytes(b))
    return path


def test_a_tiff_with_a_damaged_second_page_is_one_line_naming_it(tmp_path: Path,
                                                                 capsys) -> None:
    """A TIFF whose second directory was damaged stopped every command on its folder as
    'internal error: TypeError: Missing dimensions' naming no file (Pillow raises TypeError
    where it counts or reaches that page). That page's read is now a DataError naming the
    file."""
    from ultraseg.io import frame_count

    (tmp_path / "exam").mkdir()
    p = _damaged_second_page(tmp_path / "exam" / "loop.tif")
    _save(tmp_path / "exam" / "good.png", (_disk() * 255).astype(np.uint8))
    assert frame_count(p) == 1                      # (reading it says what is wrong)
    for frame in (None, 1):
        with pytest.raises(DataError, match="unreadable or truncated image") as e:
            read_image(p, frame=frame)
        assert "loop.tif" in str(e.value) and "\n" not in str(e.value)
    assert read_image(p, frame=0)[0, 0] == 10       # its first page is whole
    with pytest.raises(DataError, match="loop.tif"):
        read_mask(p)
    assert main(["inspect", str(tmp_path / "exam")]) == 2
    err = capsys.readouterr().err
    assert "internal error" not in err and "loop.tif" in err


def _declaring_frames(path: Path, frames: int) -> Path:
    """A 2-frame animated PNG whose acTL chunk says it holds ``frames`` (its CRC made good)."""
    import struct
    import zlib

    b = bytearray(_loop(path, [np.full((8, 8), v, np.uint8) for v in (10, 200)]).read_bytes())
    i = b.index(b"acTL")
    struct.pack_into(">I", b, i + 4, frames)
    struct.pack_into(">I", b, i + 12, zlib.crc32(bytes(b[i:i + 12])))
    path.write_bytes(bytes(b))
    return path


def test_a_frame_count_a_file_cannot_hold_is_refused(tmp_path: Path) -> None:
    """A 200-byte animated PNG whose acTL said 2147483647 frames had inspect and predict
    build a sample a frame and run out of memory (blaming --batch-size). A count of frames
    the file's bytes cannot hold is refused, naming the file."""
    from ultraseg.io import Sample, frame_count, split_frames

    p = _declaring_frames(tmp_path / "anim.png", 2 ** 31 - 1)
    assert p.stat().st_size < 1000
    assert frame_count(p) == 1
    assert split_frames(Sample("anim", p)) == [Sample("anim", p)]
    for frame in (None, 0, 5):
        with pytest.raises(DataError, match="says it holds 2147483647 frames, more than its "
                                            r"\d+ bytes hold") as e:
            read_image(p, frame=frame)
        assert "anim.png" in str(e.value)
    with pytest.raises(DataError, match="2147483647 frames"):
        read_mask(p)
    honest = _declaring_frames(tmp_path / "two.png", 2)
    assert frame_count(honest) == 2 and read_image(honest, frame=1)[0, 0] == 200

def test_16bit_image_rescaled_to_uint8(tmp_path: Path) -> None:
    ramp = np.linspace(1000, 4000, 40 * 50).reshape(40, 50).astype(np.uint16)
    p = _save(tmp_path / "img16.png", ramp)
    assert Image.open(p).mode.startswith("I")
    image = read_image(p)
    assert image.dtype == np.uint8 and image.shape == (40, 50)
    assert image.min() == 0 and image.max() == 255
    flat = image.ravel().astype(int)
    assert np.all(np.diff(flat) >= 0)  # order kept


def test_float_tiff_keeps_its_intensities_as_an_array_does(tmp_path: Path) -> None:
    """A float TIFF was stretched from its own min..max, while the same values given to a
    predictor as an array were taken as intensities (x 255 within [0, 1]): a dim frame saved
    as floats came out full-contrast from the file alone. One rule now reads both."""
    dim = np.linspace(0.1, 0.4, 40 * 50, dtype=np.float32).reshape(40, 50)   # in [0, 1]
    p = tmp_path / "dim.tif"
    Image.fromarray(dim).save(p)
    assert Image.open(p).mode == "F"
    np.testing.assert_array_equal(read_image(p), np.round(dim.astype(np.float64) * 255))
    assert read_image(p).max() == 102
    grey = np.linspace(20, 180, 40 * 50, dtype=np.float32).reshape(40, 50)  # within 0..255
    Image.fromarray(grey).save(p)
    np.testing.assert_array_equal(read_image(p), np.round(grey))
    wide = np.linspace(-50, 4000, 40 * 50, dtype=np.float32).reshape(40, 50)  # beyond: stretched
    Image.fromarray(wide).save(p)
    image = read_image(p)
    assert image.min() == 0 and image.max() == 255 and np.all(np.diff(image.ravel()) >= 0)


def test_tiff_tags_pillow_leaves_to_the_reader(tmp_path: Path) -> None:
    """Pillow reads a signed 8-bit TIFF as unsigned (-50 came out 206: the contrast
    inverted), a 16-bit WhiteIsZero TIFF without inverting it (it does invert 8 bits), and a
    CIELab TIFF's L, a and b averaged (a third of the brightness)."""
    disk = _disk()
    signed = np.where(disk, 50, -50).astype(np.int8)
    p = tmp_path / "i8.tif"
    Image.fromarray(signed.view(np.uint8), "L").save(p, tiffinfo={339: 2})
    np.testing.assert_array_equal(read_image(p), to_uint8(signed))
    assert read_image(p)[20, 22] > read_image(p)[0, 0]          # the disk stays the brighter
    wide = np.where(disk, 1000, 3000).astype(np.uint16)
    q = tmp_path / "wiz16.tif"
    Image.fromarray(wide).save(q, tiffinfo={262: 0})               # WhiteIsZero: low is white
    np.testing.assert_array_equal(read_image(q), to_uint8(65535 - wide))
    eight = tmp_path / "wiz8.tif"       # Pillow inverts 8 bits as it writes and as it reads:
    Image.fromarray((disk * 255).astype(np.uint8)).save(eight, tiffinfo={262: 0})
    np.testing.assert_array_equal(read_image(eight), disk * 255)     # not inverted twice
    grey = np.where(disk, 200, 60).astype(np.uint8)
    lab = Image.fromarray(np.stack([grey, np.full_like(grey, 128), np.full_like(grey, 128)],
                                   axis=-1), "LAB")
    lab.save(tmp_path / "lab.tif")
    assert Image.open(tmp_path / "lab.tif").mode == "LAB"
    np.testing.assert_array_equal(read_image(tmp_path / "lab.tif"), grey)


def test_a_tiff_pillow_cannot_decode_says_what_to_save_instead(tmp_path: Path) -> None:
    """A 64-bit float TIFF (numpy's default float, as tifffile writes it) was `not an image
    file Pillow can read`, which said nothing of why or what to do."""
    import struct

    values = np.linspace(0, 1, 64).reshape(8, 8)               # float64
    data = values.astype("<f8").tobytes()
    entries = [(256, 3, 1, 8), (257, 3, 1, 8), (258, 3, 1, 64), (259, 3, 1, 1), (262, 3, 1, 1),
               (273, 4, 1, 8), (277, 3, 1, 1), (278, 3, 1, 8), (279, 4, 1, len(data)),
               (339, 3, 1, 3)]
    ifd = struct.pack("<H", len(entries)) + b"".join(
        struct.pack("<HHIHH", t, k, n, v, 0) if k == 3 else struct.pack("<HHII", t, k, n, v)
        for t, k, n, v in entries) + struct.pack("<I", 0)
    p = tmp_path / "f64.tif"             # its directory after 1.2 MB of samples (libtiff's way)
    data = np.zeros(150_000, "<f8").tobytes() + data
    p.write_bytes(b"II*\0" + struct.pack("<I", 8 + len(data)) + data + ifd)
    with pytest.raises(DataError, match="a TIFF of 64-bit float samples.*32-bit floats") as e:
        read_image(p)
    assert "f64.tif" in str(e.value)
    q = tmp_path / "not.png"
    q.write_bytes(b"plain text, no image")
    with pytest.raises(DataError, match="not an image file Pillow can read$"):
        read_image(q)
    cut = tmp_path / "cut.tif"            # an interrupted copy: its directory never came
    Image.fromarray(np.zeros((40, 50), np.uint8)).save(cut)
    cut.write_bytes(cut.read_bytes()[:40])
    with pytest.raises(DataError) as e:
        read_image(cut)
    assert "float" not in str(e.value) and ("truncated" in str(e.value)
                                           or "damaged" in str(e.value)), str(e.value)


def test_rgb_image_becomes_gray(tmp_path: Path) -> None:
    rgb = np.zeros((10, 12, 3), np.uint8)
    rgb[..., 0] = 100
    rgb[..., 1] = 200
    image = read_image(_save(tmp_path / "rgb.png", rgb))
    assert image.shape == (10, 12) and image.dtype == np.uint8
    assert abs(int(image[0, 0]) - round(0.299 * 100 + 0.587 * 200)) <= 1



def _doppler(h: int = 40, w: int = 50, box: int = 6) -> np.ndarray:
    """A grey frame with a box x box colour-flow patch (red over blue) in it."""
    rng = np.random.default_rng(0)
    grey = rng.integers(60, 140, (h, w), dtype=np.uint8)
    rgb = np.stack([grey] * 3, axis=-1)
    rgb[5:5 + box // 2, 5:5 + box] = (200, 30, 30)
    rgb[5 + box // 2:5 + box, 5:5 + box] = (30, 60, 220)
    return rgb


def test_an_image_with_a_colour_overlay_is_warned_of_once_a_file(tmp_path: Path) -> None:
    """A Doppler box on a B-mode frame was read as its luma, a flat grey patch, in silence:
    a model segments it and measure measures it. 36 of 2000 pixels in colour: 1.8 %, said
    once a file (a loop's frames too); a grey RGB, a slight tint and 0.4 % of colour are not."""
    p = _save(tmp_path / "doppler.png", _doppler())
    with ultraseg_warnings() as warned:
        read_image(p)
    assert len(warned) == 1, [w.getMessage() for w in warned]
    said = warned[0].getMessage()
    assert str(p) in said and "1.8 % of its pixels are colour" in said and "luma" in said
    tinted = np.stack([np.full((40, 50), 120, np.uint8)] * 3, axis=-1)
    tinted[..., 0] += 30                                        # a tint, no colour
    few = _doppler(box=0)
    few[0, :8] = (200, 30, 30)                                  # 8 of 2000: 0.4 %
    for quiet in (np.stack([_doppler()[..., 0]] * 3, axis=-1), tinted, few):
        with ultraseg_warnings() as warned:
            read_image(_save(tmp_path / "quiet.png", quiet))
        assert warned == []
    frames = [Image.fromarray(_doppler()) for _ in range(3)]
    frames[0].save(tmp_path / "loop.tif", save_all=True, append_images=frames[1:])
    with ultraseg_warnings() as warned, said_once():
        for k in range(3):
            read_image(tmp_path / "loop.tif", frame=k)
    assert len(warned) == 1


@pytest.mark.parametrize("mode", ["P", "P transparent", "CMYK", "YCbCr"])
def test_a_frame_in_a_colour_mode_is_read_as_pillow_makes_it_grey_and_warned_of(mode) -> None:
    """A palette, CMYK or YCbCr frame reads as Pillow's convert('L') makes it (a YCbCr's grey
    is its Y, not the luma of its RGB), and its colour is warned of as it shows (a palette's
    transparent index, where pixels hold it, as an alpha too)."""
    from ultraseg.io.images import pillow_to_gray

    rgb = _doppler()
    if mode.startswith("P"):
        im = Image.fromarray(rgb).quantize(64)
        if mode == "P transparent":
            im.info["transparency"] = 3
    else:
        im = Image.fromarray(rgb).convert(mode)
    rng = np.random.default_rng(1)      # every colour of a random palette; random pixels
    if mode.startswith("P"):
        noisy = Image.fromarray(np.arange(256, dtype=np.uint8).reshape(16, 16), "L")
        noisy = noisy.convert("P")
        noisy.putpalette(rng.integers(0, 256, 768, dtype=np.uint8).tobytes())
    else:
        bands = len(Image.new(mode, (1, 1)).getbands())
        noisy = Image.frombytes(mode, (50, 40), rng.integers(0, 256, 40 * 50 * bands,
                                                              dtype=np.uint8).tobytes())
    for frame in (im, noisy):
        frame.info.update(im.info)
        with ultraseg_warnings() as warned:
            grey = pillow_to_gray(frame, "f.png")
        np.testing.assert_array_equal(grey, np.asarray(frame.convert("L")))
        said = [r.getMessage() for r in warned]
        colour = [m for m in said if "of its pixels are colour" in m]
        alpha = [m for m in said if "alpha" in m]     # a transparent index held: as an alpha
        assert len(colour) == 1 and len(alpha) == (mode == "P transparent") == len(said) - 1


@pytest.mark.parametrize("mode", ["PA", "La", "RGBa", "RGBX", "HSV"])
def test_an_in_memory_image_in_any_pillow_mode_reads_as_the_frame_it_shows(mode: str) -> None:
    """Pillow images in modes PA, La, RGBa, RGBX and HSV (made in memory and given to a
    predictor) fell through to the mean of their bands: the palette index, the alpha, the
    padding or the hue averaged into the grey, up to 128 levels off, in silence. Each reads
    as the frame it shows: a PA through its palette as its P does, premultiplied alpha
    unpremultiplied (within 1 where the alpha is at least half: the premultiplication
    rounds), RGBX and HSV as their RGB (HSV within the rounding of its round trip)."""
    from ultraseg.io.images import pillow_to_gray

    rgb = _doppler()
    alpha = np.tile(np.linspace(128, 255, rgb.shape[1]).round().astype(np.uint8),
                    (rgb.shape[0], 1))
    rgba = Image.fromarray(np.dstack([rgb, alpha]))
    if mode == "PA":
        p = Image.fromarray(rgb).quantize(64)
        im, want, tol = p.convert("PA"), pillow_to_gray(p), 0
    elif mode in ("La", "RGBa"):
        im, want, tol = rgba.convert(mode), np.asarray(rgba.convert("L")), 1
    else:
        im, tol = Image.fromarray(rgb).convert(mode), 3 if mode == "HSV" else 0
        want = np.asarray(Image.fromarray(rgb).convert("L"))
    assert im.mode == mode
    with ultraseg_warnings():
        grey = pillow_to_gray(im, "f.png")
    assert grey.dtype == np.uint8 and grey.shape == want.shape
    assert np.abs(grey.astype(int) - want).max() <= tol


def test_an_image_in_a_pillow_mode_no_rule_reads_is_refused_naming_it(monkeypatch) -> None:
    """A mode ultraseg knows no rule for (one a later Pillow adds) is refused by name, not
    read as the mean of its bands."""
    from ultraseg.io.images import pillow_to_gray

    im = Image.fromarray(_doppler())
    monkeypatch.setattr(Image.Image, "mode", property(lambda self: "RGBQ"))
    with pytest.raises(DataError, match=r"f\.png: .*Pillow mode 'RGBQ'"):
        pillow_to_gray(im, "f.png")


def test_frames_in_colour_are_counted_inside_counting_colour(tmp_path: Path) -> None:
    """Training or inspect reading many Doppler frames said one line each: inside
    counting_colour they are counted, and one line says how many, naming the first."""
    from ultraseg.io.grey import counting_colour

    paths = [_save(tmp_path / f"{k}.png", _doppler()) for k in range(4)]
    with ultraseg_warnings() as warned, counting_colour() as colour:
        for p in paths:
            read_image(p)
    assert warned == [] and colour.n == 4
    note = colour.note()
    assert note is not None and note.startswith("4 frames") and str(paths[0]) in note


# ------------------------------------------------------------------ --label K
def _label_dataset(root: Path) -> Path:
    rng = np.random.default_rng(0)
    for i in range(3):
        _save(root / "images" / f"{i}_1.png", rng.integers(0, 256, (30, 40), dtype=np.uint8))
        _palette_png(root / "masks" / f"{i}_1_mask.png", _labels())
    return root


def test_label_option_selects_structure(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    root = _label_dataset(tmp_path / "lab")
    lab = _labels()
    report, problems = inspect_dataset(root)
    assert not problems and report["labels"] == [1, 2]
    assert report["foreground_fraction_mean"] == pytest.approx((lab > 0).mean())

    assert main(["inspect", str(root), "--label", "2", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["foreground_fraction_mean"] == pytest.approx((lab == 2).mean())
    assert main(["inspect", str(root), "--label", "1", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["foreground_fraction_mean"] == pytest.approx((lab == 1).mean())


def test_label_option_absent_label_is_an_error(tmp_path: Path,
                                               capsys: pytest.CaptureFixture) -> None:
    root = _label_dataset(tmp_path / "lab")
    assert main(["inspect", str(root), "--label", "5"]) == 2
    err = capsys.readouterr().err
    assert "label 5" in err and "[1, 2]" in err


@pytest.mark.parametrize("values", [(0, 1), (0, 1, 2)])
@pytest.mark.parametrize("quality", [75, 100])
def test_a_label_mask_saved_as_jpeg_is_refused_not_read_empty(tmp_path: Path, values,
                                                               quality: int) -> None:
    """A 0/1 (or 0/1/2) mask saved as JPEG keeps its structure at 1 or 2: thresholded at 127
    it read as an empty mask, and inspect, evaluate and train took it for one."""
    im = np.zeros((48, 64), np.uint8)
    for k, v in enumerate(values[1:]):
        im[8 + 16 * k:20 + 16 * k, 10:40] = v
    p = _save(tmp_path / "m.jpg", im, quality=quality)
    with pytest.raises(DataError, match="0/1 or label mask saved as JPEG.*save masks as PNG"):
        read_mask(p)


@pytest.mark.parametrize("quality", [75, 95])
def test_a_multi_level_label_mask_saved_as_jpeg_says_save_masks_as_png(tmp_path: Path,
                                                                       quality: int) -> None:
    """Labels 0/85/170/255 saved as JPEG were refused as 'is this an image saved as a mask?'
    alone; as for a 0/1 mask saved as JPEG, the refusal says to save masks as PNG."""
    im = np.zeros((48, 64), np.uint8)
    for k, v in enumerate((85, 170, 255)):
        im[4 + 14 * k:16 + 14 * k, 8:56] = v
    p = _save(tmp_path / "m.jpg", im, quality=quality)
    with pytest.raises(DataError, match="save masks as PNG"):
        read_mask(p)


def _png16(path: Path, arr: np.ndarray, colour_type: int) -> Path:
    """A 16-bit PNG written by hand (Pillow writes no 16-bit colour): colour type 2 is RGB,
    4 gray with alpha."""
    import struct
    import zlib

    h, w = arr.shape[:2]
    raw = b"".join(b"\x00" + arr[i].astype(">u2").tobytes() for i in range(h))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    path.write_bytes(b"\x89PNG\r\n\x1a\n"
                     + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, colour_type, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))
    return path


@pytest.mark.parametrize("colour_type, channels", [(2, 3), (4, 2)])
def test_a_16_bit_colour_png_is_refused_not_crushed(tmp_path: Path, colour_type: int,
                                                    channels: int) -> None:
    """Pillow reads a 16-bit RGB (or gray + alpha) PNG to its high bytes: a 12-bit ramp came
    out as 0..15 and a 0/1 mask as empty, against the README's '16-bit images are rescaled'."""
    ramp = np.tile(np.linspace(0, 4095, 16).astype(np.uint16), (8, 1))
    arr = np.stack([ramp] * channels, -1)
    if channels == 2:
        arr[..., 1] = 65535                                # opaque alpha
    p = _png16(tmp_path / "x.png", arr, colour_type)
    for read in (read_image, read_mask):
        with pytest.raises(DataError, match="16-bit colour image.*16-bit grayscale"):
            read(p)
    gray = tmp_path / "g.png"                              # 16-bit grayscale: rescaled
    Image.fromarray(ramp).save(gray)
    assert read_image(gray).max() == 255


@pytest.mark.parametrize("size", [128, 64, 32])
@pytest.mark.parametrize("resample", ["BOX", "BILINEAR", "LANCZOS"])
def test_a_binary_mask_resized_with_a_filter_is_binarised_at_half(tmp_path, size, resample):
    """A 0/255 mask scaled down with area averaging (BOX) or interpolation holds a band of
    in-between values at its edge. With few of them it was read as a label mask (labels 64,
    128, 191, 255: every half-covered pixel foreground, 'labels' in inspect), with many on a
    small frame refused as 'neither binary nor a label mask'. It is the 0/255 mask it was."""
    yy, xx = np.mgrid[:256, :256]
    disk = ((yy - 128) ** 2 + (xx - 120) ** 2 < 60 ** 2).astype(np.uint8) * 255
    small = Image.fromarray(disk).resize((size, size), getattr(Image, resample))
    small.save(tmp_path / "m.png")
    values = np.asarray(small)
    assert 0 < ((values > 0) & (values < 255)).sum()                 # it has such a band
    np.testing.assert_array_equal(read_mask(tmp_path / "m.png"), values >= 128)


def test_a_label_mask_with_thick_regions_between_0_and_255_stays_a_label_mask() -> None:
    labels = np.zeros((64, 64), np.uint8)
    labels[10:30, 10:30] = 128
    labels[35:60, 35:60] = 255
    np.testing.assert_array_equal(classify_mask_values(labels), labels)


# ------------------------------------------------------------------ rules no test held
def test_a_photograph_saved_as_a_jpeg_mask_is_refused(tmp_path: Path) -> None:
    yy, _ = np.mgrid[0:64, 0:64]
    Image.fromarray((yy * 4).astype(np.uint8)).save(tmp_path / "m.jpg", quality=95)
    with pytest.raises(DataError):
        read_mask(tmp_path / "m.jpg")


def test_a_label_mask_with_an_ignore_value_keeps_its_labels() -> None:
    """{0, 1, 2, 255} (255: 'ignore', as some tools write) is a label mask, not a lossy
    binary one to binarise at 127, which would turn labels 1 and 2 into background."""
    a = np.zeros((20, 20), np.uint8)
    a[2:8, 2:8] = 1
    a[10:16, 10:16] = 2
    a[0, 0] = 255
    np.testing.assert_array_equal(classify_mask_values(a), a)


def test_label_values_beyond_8_bits_are_refused() -> None:
    """{0, 1000, 2000} in 16 bits would wrap around in uint8."""
    with pytest.raises(DataError):
        classify_mask_values(np.array([[0, 1000], [2000, 0]], np.uint16))


def test_a_coloured_palette_of_more_than_32_indices_is_refused(tmp_path: Path) -> None:
    idx = (np.arange(64 * 64) % 40).reshape(64, 64).astype(np.uint8)
    im = Image.fromarray(idx, mode="P")
    im.putpalette([v for i in range(256) for v in (i * 5 % 256, i * 11 % 256, i * 17 % 256)])
    im.save(tmp_path / "m.png")
    with pytest.raises(DataError):
        read_mask(tmp_path / "m.png")


def test_to_uint8_at_the_boundaries_of_its_rules() -> None:
    """A float frame whose maximum is exactly 1.0 (the usual normalised frame) is [0, 1]
    times 255, not a 0..255 frame rounded to near black; 16 bits that use 0..100 alone are
    stretched, as documented."""
    np.testing.assert_array_equal(to_uint8(np.array([[0.0, 0.5, 1.0]])), [[0, 128, 255]])
    np.testing.assert_array_equal(to_uint8(np.array([[0, 100]], np.uint16)), [[0, 255]])


def _stretched_in_float64(image: np.ndarray) -> np.ndarray:
    """to_uint8's rule for integers as it was written, through float64 (24 bytes a pixel)."""
    x = image.astype(np.float64)
    lo, hi = float(x.min()), float(x.max())
    if lo >= 0 and hi <= 255 and image.dtype.itemsize == 1:
        return np.round(x).astype(np.uint8)
    return np.round((x - lo) / (hi - lo) * 255 if hi > lo else x * 0).astype(np.uint8)


@pytest.mark.parametrize("dtype", [np.uint16, np.int16, np.int8])
def test_narrow_integer_frames_become_8_bits_exactly_as_through_float64(dtype) -> None:
    """Every value of every window below gives the byte the float64 rule gave (16-bit frames
    are looked up in a table of their values lo..hi, made by that rule, not converted)."""
    info = np.iinfo(dtype)
    rng = np.random.default_rng(0)
    windows = [(info.min, info.max), (0, info.max), (info.min, -1), (0, 4095), (7, 7),
               (0, 1), (0, 2), (1, 511), (100, 355), (0, 255), (-5, 250), (0, 127),
               (30000, 30510), (-32768, -32000)]
    windows += [tuple(sorted(int(v) for v in rng.integers(info.min, info.max, 2,
                                                          endpoint=True))) for _ in range(40)]
    for lo, hi in windows:
        if not (info.min <= lo and hi <= info.max):
            continue
        values = rng.permutation(np.arange(lo, hi + 1)).astype(dtype)
        image = np.resize(values, (2, max(1, -(-values.size // 2))))   # (a 2-D frame)
        got = to_uint8(image)
        assert got.dtype == np.uint8 and got.shape == image.shape
        np.testing.assert_array_equal(got, _stretched_in_float64(image), err_msg=f"{lo}..{hi}")


@pytest.mark.parametrize("dtype", [">u2", ">i2", "<u2", "<i2"])
def test_16_bit_frames_of_either_byte_order_become_8_bits_as_through_float64(dtype) -> None:
    """A big-endian 16-bit frame (a "MM" TIFF, a FITS array) was viewed as native to index
    the table of its values: its bytes swapped, it mapped to wrong greys or out of the
    table (IndexError). Either byte order gives the float64 rule's bytes."""
    image = np.array([[1000, 2000, 3000], [7, 30000, 12345]], dtype=dtype)
    np.testing.assert_array_equal(to_uint8(image), _stretched_in_float64(image))


def test_a_big_endian_16_bit_tiff_is_read_as_its_greys(tmp_path) -> None:
    """Pillow reopens a 16-bit big-endian TIFF as ``I;16B`` (``>u2`` through ``np.asarray``):
    read_image stopped there on an IndexError; its 8-bit frame is now the stretched greys."""
    values = (np.arange(64 * 64, dtype=np.int64).reshape(64, 64) * 7 + 1000).astype(">u2")
    Image.frombytes("I;16B", (64, 64), values.tobytes()).save(tmp_path / "be.tif")
    with Image.open(tmp_path / "be.tif") as im:
        assert im.mode == "I;16B"
    got = read_image(tmp_path / "be.tif")
    np.testing.assert_array_equal(got, _stretched_in_float64(values))


def test_a_16_bit_frame_becomes_8_bits_in_a_few_bytes_a_pixel() -> None:
    """A 12000x12000 16-bit frame peaked at 4.3 GB in predict: to_uint8 made float64 copies
    of it (24 bytes a pixel at its peak). The 8-bit frame now takes at most a few bytes a
    pixel beside the frame itself."""
    import tracemalloc

    image = np.random.default_rng(1).integers(100, 60000, (2000, 2000), dtype=np.uint16)
    tracemalloc.start()
    try:
        got = to_uint8(image)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 5 * image.size                        # (it was 24 bytes a pixel)
    np.testing.assert_array_equal(got[:50], _stretched_in_float64(image)[:50])


def test_a_unit_float_frame_that_overshoots_one_a_little_is_still_a_unit_frame() -> None:
    """A frame scaled to [0, 1] and then resampled with a cubic or Lanczos filter rings a
    little past 0 and 1. Its maximum of 1.02 made it a 0..255 frame: every pixel 0 or 1 of
    255, a black frame, predicted in silence. Values just outside [0, 1] are clipped to it;
    a frame reaching well past it is still read as 0..255 or stretched."""
    ringing = np.array([[-0.03, 0.0, 0.5, 1.0, 1.02]])
    np.testing.assert_array_equal(to_uint8(ringing), [[0, 0, 128, 255, 255]])
    np.testing.assert_array_equal(to_uint8(ringing.astype(np.float32)), [[0, 0, 128, 255, 255]])
    np.testing.assert_array_equal(to_uint8(np.array([[0.0, 2.0, 200.0]])), [[0, 2, 200]])
    np.testing.assert_array_equal(to_uint8(np.array([[-1.0, 0.0, 1.0]])), [[0, 128, 255]])


def test_a_unit_float_frame_that_overshoots_past_the_slack_is_read_as_one_and_said(
        tmp_path: Path) -> None:
    """A frame scaled to [0, 1] whose resize rang further than the slack (a cubic resize to
    1.2-1.26, Lanczos to 1.49) was read as 0..255: its pixels rounded to 0, 1 or 2, a black
    frame predicted in silence. Values within [-0.5, 2] (no 0..255 frame looks like that)
    are a [0, 1] frame clipped to it, with one warning naming the file and its values."""
    frame = np.linspace(0.0, 1.0, 40 * 50, dtype=np.float32).reshape(40, 50)
    frame[0, 0], frame[0, 1] = 1.49, -0.2
    expected = np.round(np.clip(frame.astype(np.float64), 0, 1) * 255).astype(np.uint8)
    p = tmp_path / "fhot.tif"
    Image.fromarray(frame, mode="F").save(p)
    with ultraseg_warnings() as warned, said_once():
        np.testing.assert_array_equal(read_image(p), expected)
        np.testing.assert_array_equal(read_image(p), expected)         # said once
    (record,) = warned
    said = record.getMessage()
    assert "fhot.tif" in said and "-0.2..1.49" in said and "[0, 1]" in said
    with ultraseg_warnings() as warned:                       # an array given to a predictor
        np.testing.assert_array_equal(to_uint8(frame), expected)
    assert len(warned) == 1 and "-0.2..1.49" in warned[0].getMessage()
    np.testing.assert_array_equal(to_uint8(np.array([[0.0, 1.0, 2.5]])), [[0, 1, 2]])
    np.testing.assert_array_equal(to_uint8(np.array([[-0.6, 0.0, 1.0]])), [[0, 96, 255]])


def test_a_file_is_warned_of_once_a_call_not_once_a_process(tmp_path: Path) -> None:
    """The files warned of were kept for the whole process: in a notebook, a second
    read_image (or evaluate, or training) of the same file said nothing. Each top-level
    call says its warnings again; inside one (said_once), a file's warning is said once."""
    frame = np.linspace(0.0, 1.0, 40 * 50, dtype=np.float32).reshape(40, 50)
    frame[0, 0] = 1.49
    p = tmp_path / "fhot.tif"
    Image.fromarray(frame, mode="F").save(p)
    for _ in range(2):
        with ultraseg_warnings() as warned:
            read_image(p)
        assert len(warned) == 1
    for _ in range(2):
        with ultraseg_warnings() as warned, said_once():
            read_image(p)
            with said_once():                               # (nested: the outer one holds)
                read_image(p)
        assert len(warned) == 1


def test_a_float_frame_read_as_0_255_that_rounds_to_a_few_greys_is_said(tmp_path: Path) -> None:
    """A float frame of values within 0..255 is read as they are: one of many values between
    0 and 5 (scaled neither to [0, 1] nor to 0..255) rounded to six grey levels, in silence.
    It is read so still, with a warning naming the file and what to scale it to; a float
    frame of a few values (a 0/255 frame saved as floats) is not warned of."""
    dark = np.linspace(0.0, 5.0, 40 * 50, dtype=np.float32).reshape(40, 50)
    p = tmp_path / "dark.tif"
    Image.fromarray(dark, mode="F").save(p)
    with ultraseg_warnings() as warned:
        np.testing.assert_array_equal(read_image(p), np.round(dark).astype(np.uint8))
    (record,) = warned
    said = record.getMessage()
    assert "dark.tif" in said and "6 grey levels" in said and "[0, 1] or 0..255" in said
    few = tmp_path / "few.tif"
    Image.fromarray((_disk() * 4).astype(np.float32), mode="F").save(few)
    grey = tmp_path / "grey.tif"
    Image.fromarray(np.linspace(0, 200, 40 * 50, dtype=np.float32).reshape(40, 50)).save(grey)
    with ultraseg_warnings() as warned:
        assert read_image(few).max() == 4 and read_image(grey).max() == 200
    assert warned == []


# ------------------------------------------------------------------ review: labels of a set
def test_a_16_bit_label_mask_with_labels_above_255_is_refused_saying_to_renumber(
        tmp_path: Path) -> None:
    """{0, 300, 600} at 16 bits is a label mask (the README: at most 32 distinct values) whose
    labels do not fit the 8-bit labels ultraseg keeps: it was refused as 'is this an image
    saved as a mask?'; the refusal says what it is and what to do."""
    a = np.zeros((20, 20), np.uint16)
    a[2:8, 2:8] = 300
    a[10:18, 10:18] = 600
    p = _save(tmp_path / "m_mask.png", Image.fromarray(a))
    with pytest.raises(DataError, match=r"labels above 255 \(300, 600\).*renumber") as e:
        read_mask(p)
    assert "image saved as a mask" not in str(e.value)


def test_a_label_mask_is_kept_to_the_labels_a_structure_may_have_in_their_words(
        tmp_path: Path) -> None:
    """The 'labels above 255' refusal wrote 255 (and 32) by hand where config.MAX_LABEL (and
    MAX_LABELS) say them, the bound --label and check_label refuse past: a 16-bit label mask
    holding MAX_LABEL is read, one past it refused naming it in those words."""
    from ultraseg.config import MAX_LABEL, label_problem
    from ultraseg.io.masks import MAX_LABELS

    a = np.zeros((20, 20), np.uint16)
    a[2:8, 2:8] = 7
    a[10:18, 10:18] = MAX_LABEL
    mask = read_mask(_save(tmp_path / "kept_mask.png", Image.fromarray(a)))
    assert set(np.unique(mask).tolist()) == {0, 7, MAX_LABEL}
    a[10:18, 10:18] = MAX_LABEL + 1
    with pytest.raises(DataError) as e:
        read_mask(_save(tmp_path / "past_mask.png", Image.fromarray(a)))
    assert (f"label mask with labels above {MAX_LABEL} ({MAX_LABEL + 1}): ultraseg keeps "
            f"labels 1 to {MAX_LABEL}; renumber them 1..K (at most {MAX_LABELS} values in "
            "all)") in str(e.value), str(e.value)
    assert label_problem(MAX_LABEL) is None and label_problem(MAX_LABEL + 1)


@pytest.mark.parametrize("value", [128, 127])
@pytest.mark.parametrize("thickness", [1, 2])
def test_a_thin_label_apart_from_the_foreground_keeps_its_label(value: int,
                                                                 thickness: int) -> None:
    """A 2 px line labelled 128 beside a 255 structure (a fascia, a needle) was taken for
    anti-aliasing, a thin band of blends: merged into the foreground (128) or dropped (127).
    A band of blends lies between 0 and the foreground; this one touches no 255 pixel."""
    m = np.zeros((96, 96), np.uint8)
    m[10:40, 10:40] = 255
    m[70:70 + thickness, 5:90] = value
    np.testing.assert_array_equal(classify_mask_values(m), m)


def _set_of(root: Path, masks: list[np.ndarray]) -> Path:
    rng = np.random.default_rng(0)
    for i, m in enumerate(masks):
        _save(root / "images" / f"{i}_1.png", rng.integers(0, 256, m.shape, dtype=np.uint8))
        _save(root / "masks" / f"{i}_1_mask.png", m)
    return root


def _two_structures() -> tuple[np.ndarray, np.ndarray]:
    both = np.zeros((32, 32), np.uint8)
    both[2:12, 2:12] = 128
    both[16:30, 16:30] = 255
    alone = np.where(both == 255, 255, 0).astype(np.uint8)        # the 255 structure alone
    return both, alone


def test_a_black_and_white_mask_in_a_set_of_label_masks_keeps_its_255(tmp_path: Path) -> None:
    """Masks were judged one file at a time: in a set of 0/128/255 masks, one holding only the
    255 structure (0/255) was read as a binary mask, its structure label 1, so `--label 255`
    trained that frame as empty and `inspect` listed labels [1, 128, 255]. Where another mask
    of the set holds a label other than 1, a 0/255 mask's white is label 255."""
    from ultraseg.config import PreprocessConfig
    from ultraseg.data import load_arrays
    from ultraseg.io import label_set, open_dataset

    both, alone = _two_structures()
    root = _set_of(tmp_path / "lab", [both, alone, both, alone])
    report, problems = inspect_dataset(root)
    assert not problems and report["labels"] == [128, 255]
    report, _ = inspect_dataset(root, label=255)
    assert report["empty_masks"] == 0
    arrays = load_arrays(label_set(open_dataset(root)), PreprocessConfig(size=32, label=255), "")
    assert all(m.sum() == (alone > 0).sum() for m in arrays.masks)
    assert arrays.labels == (128, 255)
    arrays = load_arrays(label_set(open_dataset(root)), PreprocessConfig(size=32, label=1), "")
    assert not arrays.masks.any()


def test_a_mask_holding_only_the_ignore_255_is_empty_under_label_1(tmp_path: Path) -> None:
    """The README's '1 and an ignore 255' scheme: a mask holding only the ignore band (0/255)
    was read as binary, so `--label 1` trained the ignore band as the structure."""
    from ultraseg.config import PreprocessConfig
    from ultraseg.data import load_arrays
    from ultraseg.io import label_set, open_dataset

    a = np.zeros((32, 32), np.uint8)
    a[4:14, 4:14] = 1
    a[26:30, :] = 255
    b = np.where(a == 255, 255, 0).astype(np.uint8)
    root = _set_of(tmp_path / "ign", [a, b])
    arrays = load_arrays(label_set(open_dataset(root)), PreprocessConfig(size=32, label=1), "")
    assert arrays.masks[0].sum() == (a == 1).sum() and not arrays.masks[1].any()
    report, _ = inspect_dataset(root, label=1)
    assert report["empty_masks"] == 1 and report["labels"] == [1, 255]


def test_a_set_of_black_and_white_masks_stays_binary(tmp_path: Path) -> None:
    """0/1 and 0/255 masks mixed in one set are binary masks: their white is label 1."""
    from ultraseg.config import PreprocessConfig
    from ultraseg.data import load_arrays
    from ultraseg.io import label_set, open_dataset

    _, alone = _two_structures()
    root = _set_of(tmp_path / "bw", [alone, (alone > 0).astype(np.uint8)])
    report, _ = inspect_dataset(root, label=1)
    assert report["labels"] == [1] and report["empty_masks"] == 0
    arrays = load_arrays(label_set(open_dataset(root)), PreprocessConfig(size=32, label=1), "")
    assert all(m.sum() == (alone > 0).sum() for m in arrays.masks)


def _black_and_white_as(form: str, path: Path) -> tuple[Path, np.ndarray]:
    """A 0/255 mask (a square) saved as ``form``; the file and where it is white as read."""
    sq = np.zeros((64, 64), np.uint8)
    sq[16:48, 20:52] = 255
    if form == "png":
        return _save(path / "m.png", sq), sq > 0
    if form == "one_bit":
        return _save(path / "m.png", Image.fromarray(sq).convert("1")), sq > 0
    if form == "jpeg":
        return _save(path / "m.jpg", sq, quality=90), sq > 0
    if form == "resized":
        small = Image.fromarray(sq).resize((48, 48), Image.BILINEAR)
        assert ((np.asarray(small) > 0) & (np.asarray(small) < 255)).any()
        return _save(path / "m.png", small), np.asarray(small) >= 128
    assert form == "sixteen_bit"
    return _save(path / "m.png", Image.fromarray(sq.astype(np.uint16) * 257)), sq > 0


@pytest.mark.parametrize("form", ["png", "one_bit", "jpeg", "resized", "sixteen_bit"])
def test_a_black_and_white_masks_white_is_the_label_asked_however_it_is_stored(tmp_path, form):
    """``read_mask(p, 255)`` (a 0/255 mask in a set of label masks) gave label 255 to a plain
    8-bit 0/255 PNG alone: the same mask as a 1-bit PNG, a JPEG, resized with a filter or at
    16 bits (0/65535) came back as label 1, so under --label 255 it was empty and under
    --label 1 trained as the wrong structure. A 0/1 mask's 1 stays label 1."""
    p, white = _black_and_white_as(form, tmp_path)
    np.testing.assert_array_equal(read_mask(p), white.astype(np.uint8))
    np.testing.assert_array_equal(read_mask(p, 255), white.astype(np.uint8) * 255)
    one = _save(tmp_path / "one.png", white.astype(np.uint8))
    np.testing.assert_array_equal(read_mask(one, 255), white.astype(np.uint8))


@pytest.mark.parametrize("form", ["one_bit", "jpeg", "resized", "sixteen_bit"])
def test_a_black_and_white_mask_in_a_label_set_keeps_its_255_however_it_is_stored(tmp_path,
                                                                                   form):
    """A mask holding the 255 structure alone, beside 0/128/255 masks, trains as label 255
    however it is stored (it was label 1 as a 1-bit PNG, a JPEG, resized or at 16 bits)."""
    from ultraseg.config import PreprocessConfig
    from ultraseg.data import load_arrays
    from ultraseg.io import label_set, open_dataset

    both = np.zeros((64, 64), np.uint8)
    both[2:12, 2:12] = 128
    both[16:48, 20:52] = 255
    root = _set_of(tmp_path / "lab", [both])
    p, white = _black_and_white_as(form, tmp_path / "bw")
    p.rename(root / "masks" / f"1_1_mask{p.suffix}")
    _save(root / "images" / "1_1.png", np.full(white.shape, 90, np.uint8))
    arrays = load_arrays(label_set(open_dataset(root)), PreprocessConfig(size=32, label=255), "")
    assert arrays.masks[1].any() and arrays.labels == (128, 255)


@pytest.mark.parametrize("resample", ["BILINEAR", "BOX"])
def test_a_resized_mask_reads_alike_at_8_and_16_bits_and_as_floats_in_0_1(tmp_path: Path,
                                                                         resample: str) -> None:
    """The same 0/255 mask resized with a filter, saved as 8 bits, 16 bits (0..65535) and a
    float TIFF in [0, 1], holds the same blends at its edge: the 8- and 16-bit files were read
    as the binary mask, the float one refused as 'neither binary nor a label mask ... (is
    this an image saved as a mask?)'. A float mask within [0, 1] is read as its 8-bit
    equivalent (times 255) is; a float frame that is no such mask is still refused, with its
    own values."""
    yy, xx = np.mgrid[:64, :64]
    disk = ((yy - 32) ** 2 + (xx - 32) ** 2 < 15 ** 2).astype(np.float32)

    def resized(scale: float) -> Image.Image:
        return Image.fromarray(disk * np.float32(scale), "F").resize(
            (45, 45), getattr(Image, resample))

    eight = _save(tmp_path / "m8.png", np.round(np.asarray(resized(255))).astype(np.uint8))
    sixteen = _save(tmp_path / "m16.png",
                    np.round(np.asarray(resized(65535))).astype(np.uint16))
    unit = np.asarray(resized(1))
    assert np.unique(unit).size > 2 and 0 <= unit.min() and unit.max() <= 1
    floats = _save(tmp_path / "mf.tif", Image.fromarray(unit, "F"))
    want = read_mask(eight)
    assert want.any() and set(np.unique(want).tolist()) == {0, 1}
    np.testing.assert_array_equal(read_mask(sixteen), want)
    np.testing.assert_array_equal(read_mask(floats), want)
    np.testing.assert_array_equal(read_mask(floats, 255), read_mask(eight, 255))
    ramp = np.tile(np.linspace(0, 1, 64, dtype=np.float32), (64, 1))     # no mask: refused
    with pytest.raises(DataError, match=r"spread over 0\.\.1 "):
        classify_mask_values(ramp)


def _read_warning_alpha(path: Path, n: int) -> np.ndarray:
    """``read_image(path)``, asserting it warns of an alpha ``n`` times (0 or 1), naming the
    file and the 25.0 % of its pixels that are transparent."""
    with ultraseg_warnings() as warned:
        got = read_image(path)
    said = [r.getMessage() for r in warned if "alpha" in r.getMessage()]
    assert len(said) == n, said
    if n:
        assert path.name in said[0] and "25.0 %" in said[0], said
    return got


@pytest.mark.parametrize("mode", ["L", "RGB", "P"])
def test_transparency_kept_as_png_trns_is_warned_of_as_an_alpha(tmp_path: Path,
                                                                mode: str) -> None:
    """Pillow keeps a PNG's simple transparency (tRNS: one grey, one colour, or palette
    entries) in info['transparency'] on an L, RGB or P image, not as an alpha band: such a
    faded or cut-out frame was read as the full one in silence, as an RGBA frame was before
    its alpha was warned of (a re-read, item 2). Its pixels read as before; an image whose
    transparent value no pixel holds is not warned of."""
    grey = (np.arange(24 * 32) % 251).astype(np.uint8).reshape(24, 32)
    grey[:, :8] = 251                   # the transparent value, held by these pixels alone

    def image() -> Image.Image:
        if mode == "RGB":
            return Image.fromarray(np.stack([grey] * 3, -1), "RGB")
        im = Image.fromarray(grey, "L")
        if mode == "P":
            im = im.convert("P")
            im.putpalette(np.repeat(np.arange(256, dtype=np.uint8), 3).tobytes())
        return im

    key = (251, 251, 251) if mode == "RGB" else 251
    clear = _save(tmp_path / "c.png", image(), transparency=key)
    unused = _save(tmp_path / "u.png", image(), transparency=(7, 9, 11) if mode == "RGB"
                   else 252)
    assert Image.open(clear).mode == mode and "transparency" in Image.open(clear).info
    for p, n in ((clear, 1), (unused, 0)):
        expected = np.asarray(Image.open(p).convert("L"))
        np.testing.assert_array_equal(_read_warning_alpha(p, n), expected)  # pixels as before


@pytest.mark.parametrize("mode", ["I;16", "1"])
def test_png_trns_of_a_16_bit_or_1_bit_grey_image_is_warned_of_as_an_alpha(tmp_path: Path,
                                                                           mode: str) -> None:
    """A 16-bit greyscale ('I;16') or 1-bit ('1') PNG's tRNS (one grey sample transparent)
    was read as the full frame in silence: the tRNS warning covered the 8-bit modes (L,
    RGB, P) alone. Its pixels read as before (as the same image without tRNS); an image whose
    transparent value no pixel holds is not warned of."""
    if mode == "I;16":
        grey = (np.arange(24 * 32) * 61 % 60000).astype(np.uint16).reshape(24, 32)
        grey[:, :8] = 65000             # the transparent value, held by these pixels alone
        blank, key, other = grey, 65000, 65001
    else:
        grey = np.zeros((24, 32), bool)
        grey[:, :8] = True              # white, the transparent value, these pixels alone
        blank, key, other = np.zeros_like(grey), 1, 1      # (no pixel white)
    plain = _save(tmp_path / "p.png", grey)
    clear = _save(tmp_path / "c.png", grey, transparency=key)
    unused = _save(tmp_path / "u.png", blank, transparency=other)
    for p in (clear, unused):
        assert Image.open(p).mode == mode and "transparency" in Image.open(p).info
    for p, n in ((clear, 1), (unused, 0)):
        got = _read_warning_alpha(p, n)
        if p == clear:
            np.testing.assert_array_equal(got, read_image(plain))     # pixels as before


@pytest.mark.parametrize("mode", ["RGBA", "LA"])
def test_an_image_whose_alpha_is_not_opaque_is_warned_of_once_a_call(tmp_path: Path,
                                                                      mode: str) -> None:
    """An RGBA or LA frame with transparent pixels was read as its colour alone, the alpha
    dropped in silence (what showed as a faded or cut-out frame trains as the full one).
    Its pixels are read as before; one warning a call (said_once: a dataset, a run) names the
    first such file; an opaque alpha is not warned of."""
    grey = (np.arange(24 * 32) % 251).astype(np.uint8).reshape(24, 32)
    alpha = np.full((24, 32), 255, np.uint8)
    alpha[:, :8] = 0

    def image(a: np.ndarray) -> Image.Image:
        if mode == "LA":
            return Image.fromarray(np.stack([grey, a], -1), "LA")
        return Image.fromarray(np.stack([grey] * 3 + [a], -1), "RGBA")

    clear = [_save(tmp_path / f"c{k}.png", image(alpha)) for k in range(2)]
    opaque = _save(tmp_path / "o.png", image(np.full_like(alpha, 255)))
    expected = {p: np.asarray(Image.open(p).convert("L")) for p in [*clear, opaque]}
    with ultraseg_warnings() as warned, said_once():
        for p in [opaque, *clear, *clear]:
            np.testing.assert_array_equal(read_image(p), expected[p])   # pixels as before
    said = [r.getMessage() for r in warned]
    assert len(said) == 1, said
    assert "c0.png" in said[0] and "alpha" in said[0] and "25.0 %" in said[0], said
    with ultraseg_warnings() as warned:
        read_image(opaque)
    assert warned == []
