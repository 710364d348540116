"""Preprocessing: pure functions on arrays, and the round trip frame -> canvas -> frame."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageDraw
from scipy import ndimage as ndi

from ultraseg.config import PreprocessConfig
from ultraseg.errors import DataError, UltrasegError
from ultraseg.preprocess import (content_box, fill_outline, looks_like_outline, normalise,
                                 pad_to_square, prepare,
                                 resize, restore, to_canvas, to_gray)


# ------------------------------------------------------------------ to_gray / normalise
def test_to_gray() -> None:
    gray = np.arange(12, dtype=np.uint8).reshape(3, 4)
    assert to_gray(gray) is gray
    rgb = np.zeros((2, 2, 3), np.uint8)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 100, 200, 50
    out = to_gray(rgb)
    assert out.shape == (2, 2) and out.dtype == np.uint8
    assert out[0, 0] == round(0.299 * 100 + 0.587 * 200 + 0.114 * 50)
    rgba = np.concatenate([rgb, np.zeros((2, 2, 1), np.uint8)], axis=-1)
    assert np.array_equal(to_gray(rgba), out)  # alpha dropped
    with pytest.raises(UltrasegError, match="channels first"):
        to_gray(np.zeros((2, 2, 5)))


def test_normalise() -> None:
    x = np.array([[0, 255], [51, 102]], np.uint8)
    unit = normalise(x, "unit")
    assert unit.dtype == np.float32
    assert np.allclose(unit, x / 255.0)
    z = normalise(np.random.default_rng(0).integers(0, 256, (20, 20), dtype=np.uint8), "zscore")
    assert z.dtype == np.float32
    assert abs(float(z.mean())) < 1e-5 and float(z.std()) == pytest.approx(1.0, abs=1e-4)
    flat = normalise(np.full((4, 4), 7, np.uint8), "zscore")
    assert np.all(np.isfinite(flat)) and np.all(flat == 0)
    with pytest.raises(ValueError):
        normalise(x, "nope")


# ------------------------------------------------------------------ pad / resize
@pytest.mark.parametrize("shape,offset", [((3, 5), (1, 0)), ((5, 2), (0, 1)), ((4, 4), (0, 0)),
                                          ((420, 580), (80, 0))])
def test_pad_to_square_centres(shape: tuple[int, int], offset: tuple[int, int]) -> None:
    h, w = shape
    image = np.arange(1, h * w + 1, dtype=np.int32).reshape(h, w)
    out, (top, left) = pad_to_square(image, value=-1)
    side = max(h, w)
    assert out.shape == (side, side) and out.dtype == image.dtype
    assert (top, left) == offset
    assert np.array_equal(out[top:top + h, left:left + w], image)
    assert (out == -1).sum() == side * side - h * w
    # centred: the two margins differ by at most one pixel
    assert abs((side - h - top) - top) <= 1 and abs((side - w - left) - left) <= 1


def test_resize_mask_stays_label_with_nearest() -> None:
    mask = np.zeros((37, 53), np.uint8)
    mask[5:20, 10:40] = 1
    mask[25:35, 3:9] = 2
    for size in [(16, 16), (100, 120)]:
        out = resize(mask, size, "mask")
        assert out.shape == size and out.dtype == np.uint8
        assert set(np.unique(out)) == {0, 1, 2}


def test_resize_image_area_when_shrinking_bilinear_when_enlarging() -> None:
    checker = (np.indices((8, 8)).sum(axis=0) % 2 * 255).astype(np.uint8)
    small = resize(checker, (4, 4), "image")
    assert small.dtype == np.uint8 and small.shape == (4, 4)
    assert np.all(np.abs(small.astype(int) - 127.5) <= 1)  # area average of 0/255 pairs
    ramp = np.tile(np.linspace(0, 250, 6).astype(np.uint8), (6, 1))
    big = resize(ramp, (12, 12), "image")
    assert big.shape == (12, 12)
    assert len(np.unique(big)) > 6  # interpolated values, not nearest
    assert np.all(np.diff(big[6].astype(int)) >= 0)
    prob = resize(np.eye(4, dtype=np.float32), (8, 8), "prob")
    assert prob.dtype == np.float32 and prob.shape == (8, 8)
    assert 0 <= prob.min() and prob.max() <= 1
    assert resize(ramp, (6, 6)) is ramp  # no-op at the same size


# ------------------------------------------------------------------ canvas round trip
def test_prepare_restore_round_trip_size() -> None:
    cfg = PreprocessConfig(size=64, pad_to_square=True, normalise="unit")
    image = np.random.default_rng(0).integers(0, 256, (90, 150), dtype=np.uint8)
    x, geom = prepare(image, cfg)
    assert x.shape == (64, 64) and x.dtype == np.float32
    assert (geom.height, geom.width) == (90, 150)
    back = restore(np.zeros((64, 64), np.float32), geom)
    assert back.shape == (90, 150) and back.dtype == np.float32
    # no resize: restore crops back to the frame
    x, geom = prepare(image, PreprocessConfig(size=None))
    assert x.shape == (90, 150) and restore(x, geom).shape == (90, 150)


@pytest.mark.parametrize("shape, size", [((407, 800), 252), ((407, 800), 256), ((90, 150), 64),
                                         ((150, 90), 64), ((41, 100), 37)])
@pytest.mark.parametrize("crop", [False, True])
def test_a_structure_reaching_the_edge_beside_the_padding_comes_back_to_that_edge(
        shape, size, crop) -> None:
    """Resized back with its padding, the frame's edge rows blended with the padding's zeros:
    a head filling row 0 of a 407x800 HC18 frame came back from row 1, was not seen to touch
    the frame's edge, and measured 9-23 mm short."""
    h, w = shape
    image = np.random.default_rng(0).integers(10, 250, shape, dtype=np.uint8)
    truth = np.zeros(shape, bool)
    truth[: h // 3, w // 4: 3 * w // 4] = True      # cut by the top edge
    truth[h // 2:, : w // 5] = True                 # by the bottom and the left
    truth[h // 3: 2 * h // 3, -2:] = True           # a thin one at the right
    cfg = PreprocessConfig(size=size, crop_border=crop)
    canvas, geom = to_canvas(truth.astype(np.uint8), cfg, "mask",
                             box=content_box(image) if crop else None)
    back = restore(canvas.astype(np.float32), geom) >= 0.5
    slack = 2 * max(h, w) / size + 1       # where a structure ends along the edge: resampling
    for got, want in ((back[0], truth[0]), (back[-1], truth[-1]),
                      (back[:, 0], truth[:, 0]), (back[:, -1], truth[:, -1])):
        assert got[want].mean() > 0.9 and (got & ~want).sum() <= slack


@pytest.mark.parametrize("cfg", [PreprocessConfig(size=96), PreprocessConfig(size=300),
                                 PreprocessConfig(size=96, pad_to_square=False)],
                         ids=["padded-down", "padded-up", "squashed"])
@pytest.mark.parametrize("shape", [(115, 92), (128, 228), (420, 580), (61, 7)])
def test_a_blob_comes_back_where_it_was_to_a_fraction_of_a_pixel(
        shape: tuple[int, int], cfg: PreprocessConfig) -> None:
    """Canvas and back (what a prediction goes through): the centroid of a smooth blob moves
    by a fraction of a pixel (at most 0.14 measured); a one-pixel misalignment fails."""
    h, w = shape
    yy, xx = np.mgrid[:h, :w]
    blob = np.exp(-(((yy - 0.37 * h) / (0.08 * h)) ** 2 + ((xx - 0.61 * w) / (0.08 * w)) ** 2))
    canvas, geom = to_canvas(blob.astype(np.float32), cfg, "prob")
    back = restore(canvas, geom)

    def centroid(a: np.ndarray) -> np.ndarray:
        return np.array([(yy * a).sum(), (xx * a).sum()]) / a.sum()

    assert np.abs(centroid(back) - centroid(blob)).max() < 0.3


@pytest.mark.parametrize("pad", [True, False], ids=["padded", "squashed"])
@pytest.mark.parametrize("shape", [(60, 100), (100, 60), (81, 47)])
def test_square_comes_back_at_its_position(shape: tuple[int, int], pad: bool) -> None:
    h, w = shape
    prob = np.zeros(shape, np.float32)
    top, left = int(h * 0.6), int(w * 0.2)
    prob[top:top + 16, left:left + 16] = 1.0
    cfg = PreprocessConfig(size=64, pad_to_square=pad)
    canvas, geom = to_canvas(prob, cfg, "prob")
    assert canvas.shape == (64, 64)
    if not pad:  # the frame fills the canvas: its square is stretched along the shorter side
        ys, xs = np.nonzero(canvas > 0.5)
        assert abs((ys.max() - ys.min() + 1) - 16 * 64 / h) <= 2
        assert abs((xs.max() - xs.min() + 1) - 16 * 64 / w) <= 2
    back = restore(canvas, geom)
    assert back.shape == shape
    ys, xs = np.nonzero(back > 0.5)
    assert abs(ys.min() - top) <= 2 and abs(ys.max() - (top + 15)) <= 2
    assert abs(xs.min() - left) <= 2 and abs(xs.max() - (left + 15)) <= 2
    iou = ((back > 0.5) & (prob > 0.5)).sum() / ((back > 0.5) | (prob > 0.5)).sum()
    assert iou > 0.75


def test_prepare_casts_and_refuses_nan() -> None:
    cfg = PreprocessConfig(size=32)
    x, _ = prepare(np.random.default_rng(0).random((20, 30)), cfg)  # float 0..1 frame
    assert x.dtype == np.float32 and x.shape == (32, 32)
    bad = np.zeros((20, 30))
    bad[3, 3] = np.nan
    with pytest.raises(DataError):
        prepare(bad, cfg)


def test_prepare_takes_numbers_only() -> None:
    """An object array holding NaN (``DataFrame.to_numpy()`` of mixed columns) passed the NaN
    check, which looked at float arrays alone, and was predicted on as garbage; complex
    arrays lost their imaginary part and dates were taken as numbers. An object array of
    numbers is read as such; the rest are refused with what an image is."""
    cfg = PreprocessConfig(size=32)
    frame = np.random.default_rng(0).random((20, 30))
    x, _ = prepare(frame.astype(object), cfg)
    assert np.array_equal(x, prepare(frame, cfg)[0])
    holed = frame.astype(object)
    holed[3, 3] = np.nan
    with pytest.raises(DataError, match="NaN"):
        prepare(holed, cfg)
    with pytest.raises(DataError, match="not all numbers"):
        prepare(np.full((20, 30), "a", dtype=object), cfg)
    for bad in (frame.astype(np.complex64), np.zeros((20, 30), "datetime64[s]"),
                np.full((20, 30), "1")):
        with pytest.raises(DataError, match="an image is an array of numbers"):
            prepare(bad, cfg)


# ------------------------------------------------------------------ fill_outline
def _outline(h: int, w: int, box: tuple[int, int, int, int], start: int = 0, end: int = 360
             ) -> np.ndarray:
    im = Image.new("L", (w, h), 0)
    draw = ImageDraw.Draw(im)
    if (start, end) == (0, 360):
        draw.ellipse(box, outline=255, width=1)
    else:
        draw.arc(box, start, end, fill=255, width=1)
    return np.asarray(im) > 0


def test_fill_outline_fills_a_circle() -> None:
    outline = _outline(80, 100, (20, 10, 80, 70))  # circle centre (40, 50), radius 30
    filled = fill_outline(outline)
    assert filled.dtype == bool and filled.shape == outline.shape
    assert filled[40, 50] and not filled[2, 2]
    assert np.all(filled[outline])
    assert filled.sum() == pytest.approx(np.pi * 30 ** 2, rel=0.1)


def test_fill_outline_closes_a_contour_cut_by_the_border() -> None:
    # circle centre (x=50, y=5), radius 20: its top is outside the frame
    outline = _outline(60, 100, (30, -15, 70, 25))
    assert outline[0].any()
    filled = fill_outline(outline)
    assert filled[5, 50] and filled[0, 50] and not filled[40, 50] and not filled[5, 5]
    yy, xx = np.mgrid[:60, :100]
    inside = ((yy - 5) ** 2 + (xx - 50) ** 2) <= 20 ** 2
    assert filled.sum() == pytest.approx(inside.sum(), rel=0.1)


@pytest.mark.parametrize("cy, cx, ry, rx", [
    (75, 110, 90, 125),      # cut by top and left; the top-left corner lies outside the head
    (100, 150, 130, 170),    # cut by all four sides: the four corners lie outside
    (125, 190, 90, 125),     # cut by bottom and right, that corner outside
    (10, 10, 60, 90),        # cut by top and left, the corner inside
    (80, 150, 110, 155),     # cut by left and right only; the top row lies inside the head
])
def test_fill_outline_of_a_contour_cut_by_two_or_more_sides(cy, cx, ry, rx) -> None:
    """Closing the contour along every side it touches also filled corners outside the head
    (2795 px of a 200x300 frame cut on all sides), and a contour cut by two opposite sides
    that never touches the third was refused as not closed."""
    h, w, pad = 200, 300, 400
    yy, xx = np.mgrid[-pad:h + pad, -pad:w + pad]
    solid = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
    edge = solid & ~ndi.binary_erosion(solid, np.ones((3, 3)))
    outline, truth = edge[pad:pad + h, pad:pad + w], solid[pad:pad + h, pad:pad + w]
    filled = fill_outline(outline)
    assert (filled ^ truth).sum() <= 0.002 * truth.sum()


def test_fill_outline_of_a_cut_contour_with_a_gap() -> None:
    """A contour cut by the frame and missing a pixel was refused as not closed (closing its
    gap was only tried on contours inside the frame)."""
    h, w, pad = 200, 300, 400
    yy, xx = np.mgrid[-pad:h + pad, -pad:w + pad]
    solid = ((xx - 220) / 120.0) ** 2 + ((yy - 100) / 80.0) ** 2 <= 1
    edge = (solid & ~ndi.binary_erosion(solid))[pad:pad + h, pad:pad + w]
    truth = solid[pad:pad + h, pad:pad + w]
    ys, xs = np.nonzero(edge)
    edge[ys[np.argmin(xs)], xs[np.argmin(xs)]] = False      # far from the border
    filled = fill_outline(edge)
    assert (filled ^ truth).sum() <= 0.005 * truth.sum()


def test_fill_outline_closes_a_small_gap() -> None:
    outline = _outline(80, 100, (20, 10, 80, 70))
    outline[38:41, 78:82] = False  # a 2-3 pixel gap at the right
    filled = fill_outline(outline)
    assert filled[40, 50] and filled.sum() > 0.8 * np.pi * 30 ** 2


def test_fill_outline_refuses_an_open_curve() -> None:
    arc = _outline(80, 100, (20, 10, 80, 70), 0, 180)  # half circle, far from the border
    assert arc.any() and not arc[0].any() and not arc[-1].any()
    with pytest.raises(DataError) as e:
        fill_outline(arc, path="open_Annotation.png")
    assert "open_Annotation.png" in str(e.value)


def test_fill_outline_message_says_what_to_do_with_an_open_curve() -> None:
    arc = _outline(80, 100, (20, 10, 80, 70), 0, 180)
    with pytest.raises(DataError, match="close the contour's gap in the annotation, or remove "
                                        "the frame"):
        fill_outline(arc)


def test_fill_outline_keeps_an_annotation_that_is_already_solid() -> None:
    """A pre-filled annotation (a common preprocessing of HC18) was refused as 'not a closed
    contour: nothing to fill'; so was one cut by the frame."""
    im = Image.new("L", (100, 80), 0)
    ImageDraw.Draw(im).ellipse((20, 10, 80, 70), fill=255)
    solid = np.asarray(im) > 0
    assert np.array_equal(fill_outline(solid), solid)
    cut = np.zeros((60, 100), bool)
    cut[:20, 30:70] = True
    assert np.array_equal(fill_outline(cut), cut)


def test_fill_outline_keeps_a_solid_comb_cut_by_the_frame() -> None:
    """A solid region is one that keeps over half its pixels under a 3x3 erosion with the
    frame's edge not counted as background (a region cut by the frame stays solid). A comb
    cut by the top and left edges keeps 198 of its 316 pixels so; were the edge background,
    only 154 (under half), and the solid annotation was refused as an open contour."""
    comb = np.zeros((40, 40), bool)
    comb[0:4, 0:25] = True                      # the back: rows 0-3, cols 0-24
    for left in (0, 10, 20):
        comb[4:22, left:left + 4] = True        # three teeth 4 px wide, rows 4-21
    # by hand: 4 * 25 + 3 * 18 * 4 = 316 px. Surviving the erosion, the edge as foreground:
    # back rows 0-2 x cols 0-23 (72), row 3 over the teeth (cols 0-2, 11-12, 21-22: 7), and
    # the teeth's rows 4-20 likewise (17 * 7 = 119): 198 > 316 / 2. It encloses no
    # background, so there is nothing to fill: it comes back as drawn.
    assert np.array_equal(ndi.binary_fill_holes(comb), comb)
    assert np.array_equal(fill_outline(comb), comb)


@pytest.mark.parametrize("shape", ["square 1", "square 3", "square 5", "square 6", "bar",
                                   "slanted bar", "disk 2"])
def test_fill_outline_keeps_a_small_solid_annotation(shape) -> None:
    """Solid squares under 7 px and thin solid bars were refused as 'not a closed contour (a
    gap wider than about 4 px ...): close the contour's gap', a gap that is not there: they
    have nothing to fill and enclose nothing (their pixels fill their convex hull)."""
    im = Image.new("L", (40, 30), 0)
    draw = ImageDraw.Draw(im)
    if shape.startswith("square"):
        s = int(shape.split()[1])
        draw.rectangle((10, 10, 10 + s - 1, 10 + s - 1), fill=255)
    elif shape == "bar":
        draw.rectangle((5, 12, 30, 13), fill=255)           # 2 x 26
    elif shape == "slanted bar":
        draw.line((3, 5, 30, 17), fill=255, width=2)
    else:
        draw.ellipse((18, 13, 22, 17), fill=255)
    solid = np.asarray(im) > 0
    assert np.array_equal(fill_outline(solid), solid)


def test_fill_outline_fills_a_tiny_closed_contour() -> None:
    """A 1-px circle of radius 3 is filled (its disk), not kept as drawn as a small solid
    annotation is."""
    im, disk = Image.new("L", (30, 30), 0), Image.new("L", (30, 30), 0)
    ImageDraw.Draw(im).ellipse((12, 12, 18, 18), outline=255)
    ImageDraw.Draw(disk).ellipse((12, 12, 18, 18), fill=255)
    assert np.array_equal(fill_outline(np.asarray(im) > 0), np.asarray(disk) > 0)


@pytest.mark.parametrize("r, angle, width", [(30, 180, 1), (8, 270, 2), (5, 180, 1),
                                             (4, 180, 2), (6, 180, 3)])
def test_fill_outline_still_refuses_small_open_curves(r, angle, width) -> None:
    """Kept apart from the small solid annotations: an arc leaves most of its hull empty; the
    refusal names both what it looks for and the solid regions it would keep."""
    im = Image.new("L", (100, 100), 0)
    ImageDraw.Draw(im).arc((50 - r, 50 - r, 50 + r, 50 + r), 0, angle, fill=255, width=width)
    with pytest.raises(DataError, match="nor a solid region"):
        fill_outline(np.asarray(im) > 0)


def test_fill_outline_fills_a_thick_outline_of_a_small_structure() -> None:
    """A closed 3-px-wide outline of radius 6 was refused: its fill is under 1.5x the band."""
    im = Image.new("L", (64, 64), 0)
    ImageDraw.Draw(im).ellipse((26, 26, 38, 38), outline=255, width=3)
    band = np.asarray(im) > 0
    disk = Image.new("L", (64, 64), 0)
    ImageDraw.Draw(disk).ellipse((26, 26, 38, 38), fill=255)
    assert np.array_equal(fill_outline(band), np.asarray(disk) > 0)


def test_fill_outline_still_refuses_a_thick_open_band() -> None:
    """Not taken for a solid mask: a 3-px-wide arc encloses nothing."""
    im = Image.new("L", (100, 80), 0)
    ImageDraw.Draw(im).arc((20, 10, 80, 70), 0, 270, fill=255, width=3)
    with pytest.raises(DataError, match="not a closed contour"):
        fill_outline(np.asarray(im) > 0)


def _ring(radius: int, width: int, size: int = 100) -> np.ndarray:
    c = size // 2
    im = Image.new("L", (size, size), 0)
    ImageDraw.Draw(im).ellipse((c - radius, c - radius, c + radius, c + radius), outline=255,
                               width=width)
    return np.asarray(im) > 0


def test_looks_like_outline_tells_drawn_contours_from_regions() -> None:
    assert looks_like_outline(_ring(30, 1)) and looks_like_outline(_ring(20, 3))
    assert looks_like_outline(_ring(8, 3))       # thick, round a small structure: 1.8-fold
    assert not looks_like_outline(fill_outline(_ring(30, 1)))        # the filled disk
    assert not looks_like_outline(_ring(40, 10))   # a thick ring of anatomy (a heart's wall)
    assert not looks_like_outline(_outline(80, 100, (20, 10, 80, 70), 0, 180))  # encloses none
    assert not looks_like_outline(np.zeros((8, 8), bool))


def test_fill_outline_empty_stays_empty() -> None:
    empty = np.zeros((10, 10), bool)
    assert not fill_outline(empty).any()


# ------------------------------------------------------------------ uniform border crop
def test_content_box_trims_uniform_bands_only() -> None:
    rng = np.random.default_rng(0)
    frame = np.full((60, 80), 128, np.uint8)  # grey padding above and below, black at the left
    frame[:, :5] = 0
    frame[12:50, 5:] = rng.integers(0, 256, (38, 75))
    assert content_box(frame) == (12, 50, 5, 80)
    frame[30, 5:] = 77  # a uniform row inside the content stays
    assert content_box(frame) == (12, 50, 5, 80)
    frame[11, 40] = 130  # within the tolerance of 2: still padding
    assert content_box(frame) == (12, 50, 5, 80)
    assert content_box(np.full((7, 9), 3, np.uint8)) == (0, 7, 0, 9)  # nothing left: keep all


@pytest.mark.parametrize("pad", [True, False])
def test_crop_border_round_trip_puts_the_structure_back_and_the_bands_to_background(pad) -> None:
    rng = np.random.default_rng(1)
    image = np.full((100, 100), 128, np.uint8)
    image[20:80] = rng.integers(0, 256, (60, 100))  # a 100x60 frame padded square
    mask = np.zeros((100, 100), np.uint8)
    mask[40:60, 30:50] = 1
    cfg = PreprocessConfig(size=64, pad_to_square=pad, crop_border=True)
    canvas, geom = to_canvas(image, cfg, "image")
    assert geom.box == (20, 80, 0, 100) and canvas.shape == (64, 64)
    with pytest.raises(ValueError, match="needs its image's box"):
        to_canvas(mask, cfg, "mask")
    m, _ = to_canvas(mask, cfg, "mask", box=geom.box)
    # stretched, the 60 kept rows fill the canvas; padded, they fill 60 % of it as before
    rows = np.flatnonzero(m.any(axis=1))
    assert abs(len(rows) - 20 * 64 / (100 if pad else 60)) <= 1
    back = restore(m.astype(np.float32), geom)
    assert back.shape == (100, 100)
    assert back[:20].max() == 0 and back[80:].max() == 0
    iou = ((back > 0.5) & (mask > 0)).sum() / ((back > 0.5) | (mask > 0)).sum()
    assert iou > 0.85
    # prepare gives the network the same canvas, with the box in its geometry
    x, g = prepare(image, cfg)
    assert g == geom and x.shape == (64, 64)


def test_crop_border_needs_a_working_size() -> None:
    image = np.zeros((10, 12), np.uint8)
    image[3:7] = 200
    image[5, 5] = 0
    x, geom = prepare(image, PreprocessConfig(size=None, crop_border=True))
    assert x.shape == (10, 12) and geom.box is None


@pytest.mark.parametrize("shape", [(420, 580), (580, 420), (37, 301), (300, 300), (20, 24),
                                   (200, 8000)])
def test_restore_resamples_only_the_frame_yet_gives_the_squares_values(shape) -> None:
    """restore resized the whole padded square and cropped it: a 200 x 8000 frame took
    751 MB and 3.7 s for a 6.4 MB map. It now resamples the frame's part alone, to the same
    values, holding (numpy-side) little more than the output."""
    import tracemalloc

    from ultraseg.preprocess import _padding_from_frame

    cfg = PreprocessConfig(size=64)
    image = np.zeros(shape, np.uint8)
    _, geom = to_canvas(image, cfg)
    prob = np.random.default_rng(0).random((64, 64), dtype=np.float32)
    if geom.side:                                   # padded to a square: the old way
        square = resize(_padding_from_frame(prob, geom), (geom.side, geom.side), "prob")
        want = square[geom.top:geom.top + geom.height, geom.left:geom.left + geom.width]
        del square
    else:                                           # square already: resized as it is
        want = resize(prob, shape, "prob")
    tracemalloc.start()
    got = restore(prob, geom)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert got.shape == shape and got.dtype == np.float32
    np.testing.assert_allclose(got, want, atol=1e-5)
    assert peak < 3 * got.nbytes + 200_000


def test_restore_where_the_canvas_is_the_padded_square_itself() -> None:
    """A frame whose longer side is the working size (48 x 64 at 64): its canvas is the padded
    square, unresized; swapping the padding's top and left passed every test."""
    m = np.zeros((48, 64), np.float32)
    m[10:20, 5:30] = 1.0
    canvas, geom = to_canvas(m, PreprocessConfig(size=64), "prob")
    assert geom.side == 64 and geom.top == 8
    np.testing.assert_array_equal(restore(canvas, geom), m)


def test_a_long_thin_frame_is_placed_without_its_padded_square(monkeypatch) -> None:
    """A 4 x 40000 frame was padded to its 40000 x 40000 square (1.6 GB) before being shrunk
    to the canvas; at 100000 px long, 9.3 GiB: out of memory, with advice (a smaller --size
    or --batch-size) that could not help. The canvas is now made without the square, with
    the very values the square gave (Pillow's two passes, the first one band by band)."""
    import ultraseg.preprocess as pp

    rng = np.random.default_rng(0)
    monkeypatch.setattr(pp, "SQUARE_PIXELS_IN_ONE_GO", 0)      # the new way for every frame
    monkeypatch.setattr(pp, "_ROWS_AT_A_TIME", 7)              # many bands
    for h, w, size in ((30, 200, 64), (200, 31, 64), (97, 41, 40), (5, 300, 33), (120, 7, 16)):
        image = rng.integers(0, 256, (h, w), dtype=np.uint8)
        mask = (rng.random((h, w)) < 0.3).astype(np.uint8) * 2
        cfg = PreprocessConfig(size=size)
        for kind, a in (("image", image), ("mask", mask)):
            square, _ = pad_to_square(a)
            got, geom = to_canvas(a, cfg, kind)
            np.testing.assert_array_equal(got, pp.resize(square, (size, size), kind))
            assert (geom.top, geom.left, geom.side) == ((max(h, w) - h) // 2,
                                                        (max(h, w) - w) // 2, max(h, w))
    monkeypatch.undo()

    def no_square(*args, **kwargs):
        raise AssertionError("the padded square was made")

    monkeypatch.setattr(pp, "pad_to_square", no_square)
    long = rng.integers(0, 256, (4, 40000), dtype=np.uint8)
    canvas, _ = prepare(long, PreprocessConfig(size=64))
    assert canvas.shape == (64, 64)


def test_thin_frames_are_counted_by_the_part_crop_border_keeps() -> None:
    """With --crop-border the canvas takes the frame's content alone: a square frame whose
    content is a 3-row strip leaves it 3 canvas rows (warned about), and a 2000x40 strip
    cropped to 200x40 leaves it 12.8 (not)."""
    from ultraseg.preprocess import ThinFrames

    rng = np.random.default_rng(0)
    square = np.full((64, 64), 30, np.uint8)
    square[30:33] = rng.integers(0, 255, (3, 64))
    long = np.full((40, 2000), 30, np.uint8)
    long[:, 900:1100] = rng.integers(0, 255, (40, 200))
    cropped, plain = (ThinFrames(PreprocessConfig(size=64, crop_border=c)) for c in (True, False))
    for tally in (cropped, plain):
        tally.add("square", square)
        tally.add("long", long)
    assert (cropped.n, cropped.first[0]) == (1, "square")
    assert (plain.n, plain.first[0]) == (1, "long")
