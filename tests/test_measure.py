from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from conftest import shared_dataset
from ultraseg.measure import (
    choose_boundary_offset,
    crofton_perimeter,
    ellipse_circumference,
    enclosed,
    fit_ellipse,
    measure,
    moments_ellipse,
    outline_half_width,
)


def _filled_ellipse(
    shape: tuple[int, int], cx: float, cy: float, a: float, b: float, angle_deg: float
) -> np.ndarray:
    yy, xx = np.mgrid[: shape[0], : shape[1]].astype(np.float64)
    t = math.radians(angle_deg)
    dx, dy = xx - cx, yy - cy
    u = dx * math.cos(t) + dy * math.sin(t)
    v = -dx * math.sin(t) + dy * math.cos(t)
    return (u / a) ** 2 + (v / b) ** 2 <= 1.0


def test_ramanujan_circle_and_known_value() -> None:
    assert ellipse_circumference(10.0, 10.0) == pytest.approx(2 * math.pi * 10.0)
    # a=2, b=1: complete elliptic integral value 9.688448220547675...
    assert ellipse_circumference(2.0, 1.0) == pytest.approx(9.688448220547675, rel=1e-9)
    assert ellipse_circumference(0.0, 0.0) == 0.0


def test_fit_ellipse_on_exact_points() -> None:
    t = np.linspace(0, 2 * np.pi, 50, endpoint=False)
    a, b, ang = 40.0, 15.0, math.radians(120.0)
    x = 5 + a * np.cos(t) * math.cos(ang) - b * np.sin(t) * math.sin(ang)
    y = -3 + a * np.cos(t) * math.sin(ang) + b * np.sin(t) * math.cos(ang)
    cx, cy, fa, fb, fang = fit_ellipse(np.column_stack([x, y]))
    assert (cx, cy, fa, fb, fang) == pytest.approx((5.0, -3.0, 40.0, 15.0, 120.0), abs=1e-8)
    assert fit_ellipse(np.zeros((5, 2))) is None           # too few points
    line = np.column_stack([np.arange(10.0), 2 * np.arange(10.0)])
    assert fit_ellipse(line) is None                       # no ellipse through a line


def test_synthetic_filled_ellipse() -> None:
    a, b = 150.0, 100.0
    m = _filled_ellipse((400, 400), 200.3, 199.6, a, b, 30.0)
    r = measure(m, pixel_size_mm=0.1)
    assert r["ellipse_method"] == "boundary_fit"
    assert r["ellipse_axes"][0] == pytest.approx(a, abs=0.5)
    assert r["ellipse_axes"][1] == pytest.approx(b, abs=0.5)
    assert r["ellipse_angle_deg"] == pytest.approx(30.0, abs=0.2)
    assert r["ellipse_center"] == pytest.approx((200.3, 199.6), abs=0.1)
    true_c = ellipse_circumference(a, b)
    assert r["ellipse_circumference_px"] == pytest.approx(true_c, rel=0.003)
    assert r["perimeter_px"] == pytest.approx(true_c, rel=0.01)
    assert r["area_px"] == int(m.sum())
    assert r["area_mm2"] == pytest.approx(m.sum() * 0.01)
    assert r["hc_mm"] == pytest.approx(r["ellipse_circumference_px"] * 0.1)
    # the whole axes in mm (a head's occipitofrontal and biparietal diameters)
    assert r["major_axis_mm"] == pytest.approx(2 * a * 0.1, abs=0.1)
    assert r["minor_axis_mm"] == pytest.approx(2 * b * 0.1, abs=0.1)
    assert measure(m)["ellipse_axes"] == r["ellipse_axes"] and "major_axis_mm" not in measure(m)
    # The offset shrinks both semi-axes and nothing else.
    r2 = measure(m, boundary_offset_px=1.5)
    a0, b0 = r["ellipse_axes"]
    assert r2["ellipse_axes"] == pytest.approx((a0 - 1.5, b0 - 1.5))
    assert r2["area_px"] == r["area_px"] and r2["perimeter_px"] == r["perimeter_px"]


def test_object_cut_by_the_frame_edge() -> None:
    # A head whose lower part lies beyond the frame: the straight cut along the border is not
    # its outline, so the fit uses the visible outline only and recovers the whole ellipse.
    a, b = 80.0, 40.0
    whole = _filled_ellipse((200, 240), 120.0, 140.0, a, b, 10.0)
    cut = whole[:160]                            # rows 160..179 of the ellipse are off-frame
    assert whole[160:].any()
    r = measure(cut)
    assert r["touches_edge"] is True
    assert r["ellipse_method"] == "boundary_fit"
    assert r["ellipse_axes"] == pytest.approx((a, b), abs=1.0)
    assert r["ellipse_center"] == pytest.approx((120.0, 140.0), abs=0.5)
    assert r["ellipse_circumference_px"] == pytest.approx(ellipse_circumference(a, b), rel=0.01)
    # Area and perimeter stay those of what the frame shows (perimeter includes the cut).
    assert r["area_px"] == int(cut.sum())
    assert r["perimeter_px"] == pytest.approx(crofton_perimeter(cut))
    assert measure(whole)["touches_edge"] is False


def test_object_cut_by_the_edge_of_the_region_the_network_saw() -> None:
    """With --crop-border the network sees only the frame's content box; the trimmed bands come
    back as background. A head cut by a band's edge is cut as by the frame's edge: fitted on its
    visible outline and flagged, its centre in the frame's coordinates."""
    a, b = 80.0, 40.0
    whole = _filled_ellipse((260, 240), 120.0, 140.0, a, b, 10.0)
    banded = whole.copy()
    assert whole[:110].any() and not whole[190:].any()
    banded[:110] = False                         # the band above the content box cuts the head
    region = (110, 190, 5, 235)
    plain = measure(banded)
    assert plain["touches_edge"] is False        # the cut looks like outline without the region
    r = measure(banded, region=region)
    assert r["touches_edge"] is True
    assert r["ellipse_center"] == pytest.approx((120.0, 140.0), abs=0.5)
    assert r["ellipse_circumference_px"] == pytest.approx(ellipse_circumference(a, b), rel=0.01)
    true = ellipse_circumference(a, b)
    error, plain_error = (abs(m["ellipse_circumference_px"] - true) for m in (r, plain))
    assert error < plain_error / 3
    assert r["area_px"] == plain["area_px"] and r["n_components"] == plain["n_components"]
    with pytest.raises(ValueError, match="region"):
        measure(banded, region=(110, 300, 0, 240))


def test_largest_component_with_holes_filled() -> None:
    m = _filled_ellipse((120, 120), 50, 60, 30, 20, 0.0)
    m[55:60, 45:50] = False                    # a hole: measured as filled
    m[5:8, 100:103] = True                     # a second, smaller component: ignored
    r = measure(m)
    assert r["n_components"] == 2
    assert r["area_px"] == int(_filled_ellipse((120, 120), 50, 60, 30, 20, 0.0).sum())
    assert r["ellipse_center"] == pytest.approx((50, 60), abs=0.05)
    assert min(r["ellipse_angle_deg"], 180.0 - r["ellipse_angle_deg"]) < 0.5


def test_largest_component_is_the_largest_filled_8_component_of_any_mask() -> None:
    """Pins largest_component against its definition (scipy's hole filling, 8-connected
    labels, the first of equal sizes in raster order) on random masks, empty ones included."""
    from ultraseg.measure import largest_component

    rng = np.random.default_rng(0)
    for k in range(200):
        shape = tuple(int(s) for s in rng.integers(1, 40, 2))
        m = rng.random(shape) < (0.0 if k % 20 == 0 else rng.uniform(0.05, 0.7))
        filled = ndimage.binary_fill_holes(m)
        labels, n = ndimage.label(filled, structure=np.ones((3, 3), bool))
        want = np.zeros(shape, bool)
        if n:
            sizes = np.bincount(labels.ravel())
            sizes[0] = 0
            want = labels == int(np.argmax(sizes))
        got = largest_component(m)
        assert got.dtype == bool and np.array_equal(got, want), k


def _random_masks(n: int = 120):
    """Random masks (empty ones, rings round blobs, touching the edges) and a region in each."""
    rng = np.random.default_rng(1)
    for k in range(n):
        shape = tuple(int(s) for s in rng.integers(3, 40, 2))
        m = rng.random(shape) < (0.0 if k % 20 == 0 else rng.uniform(0.05, 0.7))
        if k % 3 == 0:                              # a ring holding a blob: nested components
            m[:] = False
            h, w = shape
            m[h // 4:3 * h // 4 + 1, w // 4:3 * w // 4 + 1] = True
            m[h // 4 + 1:3 * h // 4, w // 4 + 1:3 * w // 4] = False
            m[h // 2, w // 2] = True
        t, lft = int(rng.integers(0, shape[0] - 1)), int(rng.integers(0, shape[1] - 1))
        b, r = int(rng.integers(t + 1, shape[0] + 1)), int(rng.integers(lft + 1, shape[1] + 1))
        yield m, (t, b, lft, r)


def test_measure_counts_the_masks_components_and_measures_its_largest_filled_one() -> None:
    """Pins measure's n_components (8-connected components of the mask as given, anything
    outside a region included) and its object (largest_component's, of the region's part) on
    random masks, with and without a region, against scipy's labels."""
    from ultraseg.measure import largest_component

    for k, (m, region) in enumerate(_random_masks()):
        n = ndimage.label(m, structure=np.ones((3, 3), bool))[1]
        got = measure(m, 0.5, 0.25)
        assert got == {**measure(largest_component(m), 0.5, 0.25), "n_components": n}, k
        t, b, lft, r = region
        got = measure(m, 0.5, 0.25, region=region)
        want = measure(largest_component(m[t:b, lft:r]), 0.5, 0.25)
        if want["ellipse_center"] is not None:
            want["ellipse_center"] = (want["ellipse_center"][0] + lft,
                                      want["ellipse_center"][1] + t)
        assert got == {**want, "n_components": n}, k


def test_measure_labels_a_frames_components_once(monkeypatch) -> None:
    """measure labelled a frame's components two or three times (the count, then the filled
    mask's for the object, then the whole frame's again with a region): once now where the
    mask has no holes, the filled mask (another mask) only where it has, and the whole frame
    with a region only where the mask holds anything outside it."""
    real, calls = ndimage.label, []

    def counted(x, structure=None, *args, **kwargs):
        calls.append(structure is not None)         # components (8-connected), not background
        return real(x, structure, *args, **kwargs)

    monkeypatch.setattr(ndimage, "label", counted)
    solid = _filled_ellipse((60, 60), 30, 30, 20, 15, 0.0)
    ring = solid & ~_filled_ellipse((60, 60), 30, 30, 15, 10, 0.0)
    inner = (5, 55, 5, 55)
    for mask, region, outside, labelled in ((solid, None, False, 1), (solid, inner, False, 1),
                                            (solid, inner, True, 2), (ring, None, False, 2),
                                            (ring, inner, False, 2)):
        m = mask.copy()
        m[58, 58] = outside
        calls.clear()
        measure(m, region=region)
        assert calls.count(True) == labelled, (region, outside, calls)


def test_a_ring_outweighs_a_smaller_solid_blob() -> None:
    """The object is chosen by its size with holes filled: a head predicted as a ring (thin
    skull, hole filling off in post-processing) has fewer pixels than a solid false blob but is
    the larger object, and is the one measured."""
    outer = _filled_ellipse((240, 240), 100, 100, 50, 50, 0.0)
    ring = outer & ~_filled_ellipse((240, 240), 100, 100, 47, 47, 0.0)
    blob = _filled_ellipse((240, 240), 200, 200, 20, 20, 0.0)
    assert ring.sum() < blob.sum()
    r = measure(ring | blob)
    assert r["ellipse_center"] == pytest.approx((100, 100), abs=0.5)
    assert r["area_px"] == int(outer.sum())
    assert r["ellipse_circumference_px"] == pytest.approx(2 * math.pi * 50, rel=0.02)


def _ring(cx: float, cy: float = 150, r1: float = 80, r2: float = 90) -> np.ndarray:
    yy, xx = np.mgrid[:300, :400].astype(np.float64)
    d = np.hypot(xx - cx, yy - cy)
    return (d > r1) & (d <= r2)


def test_a_ring_cut_by_the_frame_or_with_a_gap_is_measured_by_its_outer_outline() -> None:
    """A head predicted as its skull's ring is filled where the ring is closed, but a ring cut
    by the frame, or with a gap (a piece of the skull missed), was not: the ellipse was fitted
    to the band's inner and outer edges alike and landed mid-band (HC 53.3 mm and 4352 px
    against 56.55 mm and 25445 px closed, a measurement review, D1). Both are now closed (the
    frame's edge, the gap's mouth) and filled: measured as the closed ring is."""
    closed = measure(_ring(200), 0.1)
    assert closed["hc_mm"] == pytest.approx(2 * math.pi * 9.0, rel=0.01)
    cut = measure(_ring(70), 0.1)                   # its left 20 px cut by the frame
    gap = _ring(200)
    gap[140:161, 280:] = False                      # a 21-px gap on its right
    gapped = measure(gap, 0.1)
    for r in (cut, gapped):
        assert r["ellipse_method"] == "boundary_fit"
        assert r["hc_mm"] == pytest.approx(closed["hc_mm"], rel=0.01)
        assert r["ellipse_axes"] == pytest.approx((90, 90), abs=1.0)
    assert cut["touches_edge"] and not gapped["touches_edge"]
    # area and perimeter stay the mask's own: the fit alone takes the outer outline
    assert cut["area_px"] == int(_ring(70).sum())
    assert gapped["area_px"] == int(gap.sum())


def test_a_lesion_s_deep_clefts_stay_out_of_its_area_and_perimeter() -> None:
    """A spiculated lesion's clefts are deeper than their mouths are wide, as a ring's gap is:
    filling them for the ellipse fit must not fill them into the area and perimeter, a
    malignant margin's measurements (they did, the day :func:`enclosed` came in)."""
    yy, xx = np.mgrid[:300, :300].astype(np.float64)
    angle = np.arctan2(yy - 150, xx - 150)
    radius = np.hypot(yy - 150, xx - 150)
    star = radius <= 50 + 60 * (np.cos(8 * angle) > -0.3)   # a disc with eight long spikes
    r = measure(star)
    assert r["n_components"] == 1
    assert r["area_px"] == int(star.sum())
    assert r["perimeter_px"] == pytest.approx(crofton_perimeter(star))
    assert enclosed(star).sum() > star.sum()        # the clefts are hollows enclosed


def test_a_dent_in_a_solid_object_is_not_filled() -> None:
    """Only a hollow deeper than its mouth is wide is taken for a ring's gap: a solid head
    with a bite out of its side (a dent as wide as it is deep, or shallower) is measured as
    it is, its area and outline those of the mask."""
    head = _filled_ellipse((300, 400), 200, 150, 100, 80, 0.0)
    bitten = head & ~_filled_ellipse((300, 400), 300, 150, 40, 40, 0.0)
    shallow = head & ~_filled_ellipse((300, 400), 200, 260, 60, 60, 0.0)
    for m in (bitten, shallow):
        r = measure(m)
        assert r["area_px"] == int(m.sum())
        assert r["perimeter_px"] == pytest.approx(crofton_perimeter(m))


def test_crofton_disk_and_square() -> None:
    yy, xx = np.mgrid[:100, :100]
    disk = (yy - 50) ** 2 + (xx - 50) ** 2 <= 40**2
    assert crofton_perimeter(disk) == pytest.approx(2 * math.pi * 40, rel=0.01)
    sq = np.zeros((30, 30), bool)
    sq[5:25, 5:25] = True     # 20 x 20: entered by 20 rows, 20 columns, 2 x 39 diagonals
    assert crofton_perimeter(sq) == pytest.approx(math.pi / 4 * (40 + 78 / math.sqrt(2)))


def test_empty_and_tiny() -> None:
    r = measure(np.zeros((6, 6), bool), pixel_size_mm=0.2)
    assert r["area_px"] == 0 and r["perimeter_px"] == 0.0 and r["n_components"] == 0
    for k in ("ellipse_center", "ellipse_axes", "ellipse_angle_deg", "ellipse_circumference_px"):
        assert r[k] is None
    assert r["hc_mm"] is None and r["major_axis_mm"] is None and r["minor_axis_mm"] is None
    assert r["area_mm2"] == 0.0
    one = np.zeros((5, 5), bool)
    one[2, 3] = True
    r = measure(one)
    assert r["ellipse_method"] == "moments"
    assert r["ellipse_center"] == (3.0, 2.0)
    # A unit square has the second moments of a disk of radius 2 * sqrt(1/12).
    assert r["ellipse_axes"] == pytest.approx((2 * math.sqrt(1 / 12),) * 2)
    with pytest.raises(ValueError):
        measure(one, pixel_size_mm=0.0)
    with pytest.raises(ValueError):
        measure(np.zeros((2, 2, 2), bool))


def test_a_probability_map_is_refused_and_binary_masks_are_measured_alike() -> None:
    """measure takes a mask: a probability map handed in by hand (floats 0..1, or an image of
    many grey levels) is refused saying to threshold it, where it used to count every pixel
    above 0 as the object (a 50 x 50 frame of 0.01 around a 20 x 20 object: area 2500)."""
    from ultraseg.errors import UltrasegError

    inside = np.zeros((50, 50), bool)
    inside[15:35, 15:35] = True
    probs = np.where(inside, 0.9, 0.01)
    for dtype in (np.float32, np.float64):
        with pytest.raises(UltrasegError, match=r"threshold it \(probs >= 0\.5\)"):
            measure(probs.astype(dtype), 0.1)
    grey = (probs * 255).astype(np.uint8)           # 0.01 and 0.9 of 255: 2 and 229
    with pytest.raises(UltrasegError, match="not a mask"):
        measure(grey)
    with pytest.raises(UltrasegError, match="not a mask"):
        measure(np.where(inside, 0.5, np.nan))
    want = measure(inside, 0.1)
    assert want["area_px"] == 400
    for same in (inside.astype(np.uint8), inside.astype(np.uint8) * 255,
                 inside.astype(np.float32), inside.astype(np.int64),
                 inside.astype(np.float32) * 255):      # (np.asarray(image, float) of a PNG)
        assert measure(same, 0.1) == want
    assert measure(probs >= 0.5, 0.1) == want


def test_an_object_no_wider_than_the_boundary_offset_has_no_head_circumference() -> None:
    """The offset (the outline's half-width) shrinks both semi-axes; where it reached the
    minor one they were clamped to 0, and a 2 x 2 speck at offset 1.27 px gave hc_mm 0.0 (a
    thin bar, 4a): a circumference no head has. Now no ellipse: its fields are None, as for
    an empty mask, while the object's area and perimeter are measured."""
    speck = np.zeros((20, 20), bool)
    speck[9:11, 9:11] = True
    bar = np.zeros((40, 40), bool)
    bar[19:21, 5:35] = True
    for mask in (speck, bar):
        r = measure(mask, 0.15, boundary_offset_px=1.2694)
        assert r["area_px"] == np.count_nonzero(mask) and r["perimeter_px"] > 0
        assert r["area_mm2"] == pytest.approx(r["area_px"] * 0.15 ** 2)
        for k in ("hc_mm", "major_axis_mm", "minor_axis_mm", "ellipse_axes",
                  "ellipse_circumference_px", "ellipse_center", "ellipse_angle_deg",
                  "ellipse_method"):
            assert r[k] is None, k
        assert measure(mask, 0.15)["hc_mm"] > 0          # no offset: an ellipse
    r = measure(bar, 0.15, boundary_offset_px=0.5)      # an offset short of the minor axis
    assert r["hc_mm"] > 0 and r["ellipse_axes"][1] > 0


def test_outline_half_width() -> None:
    outer = _filled_ellipse((200, 200), 100, 100, 80, 60, 20.0)
    inner = _filled_ellipse((200, 200), 100, 100, 77, 57, 20.0)
    assert outline_half_width(outer & ~inner) == pytest.approx(1.5, abs=0.05)
    assert outline_half_width(np.eye(10, dtype=bool)) == 0.0          # open curve


def test_hc18_head_circumference() -> None:
    root = shared_dataset("hc18")
    table = root / "training_set_pixel_size_and_HC.csv"
    if not table.exists():
        pytest.skip(f"real data absent: {table}")
    from PIL import Image

    with table.open(newline="") as f:
        rows = list(csv.DictReader(f))[:40]
    err_offset, err_plain = [], []
    for row in rows:
        name = row["filename"].replace(".png", "_Annotation.png")
        ann = np.asarray(Image.open(root / "training_set" / name)) > 0
        filled = ndimage.binary_fill_holes(ann)
        assert filled.sum() > 3 * ann.sum(), row["filename"]      # a closed outline
        size, hc = float(row["pixel size(mm)"]), float(row["head circumference (mm)"])
        err_plain.append(measure(filled, size)["hc_mm"] - hc)
        offset = outline_half_width(ann)
        err_offset.append(measure(filled, size, boundary_offset_px=offset)["hc_mm"] - hc)
    mae_offset = float(np.mean(np.abs(err_offset)))
    # The filled mask reaches half the drawn line beyond the sonographer's curve: ~+0.65 mm here.
    assert 0.3 < float(np.mean(err_plain)) < 1.0
    # Measured 0.008 mm on these 40 (moments of the filled area: 0.64 mm).
    assert mae_offset < 0.05, mae_offset


def _ellipse_refs(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """n heads: true semi-axes (px), pixel sizes (mm) and their true circumferences (mm)."""
    axes = np.column_stack([rng.uniform(60, 200, n), rng.uniform(40, 60, n)])
    sizes = rng.uniform(0.1, 0.3, n)
    refs = np.array([ellipse_circumference(a, b) * s for (a, b), s in zip(axes, sizes)])
    return axes, sizes, refs


def test_choose_boundary_offset_removes_a_models_bias() -> None:
    """A model whose boundary lies 2 px outside the heads: the offset that fits the references
    is 2 px, whatever the outlines' half-width it starts from, and the error it leaves is what
    the noise makes."""
    rng = np.random.default_rng(0)
    axes, sizes, refs = _ellipse_refs(rng, 40)
    fitted = axes + 2.0 + rng.normal(0, 0.1, axes.shape)
    for start in (0.0, 1.27, 3.5):
        offset, before, after = choose_boundary_offset(fitted, sizes, refs, start)
        assert offset == pytest.approx(2.0, abs=0.1)
        assert after < 0.2 < before
        assert after == pytest.approx(np.mean(np.abs(
            [ellipse_circumference(a - offset, b - offset) * s - r
             for (a, b), s, r in zip(fitted, sizes, refs)])))


def test_choose_boundary_offset_keeps_the_start_when_nothing_gains() -> None:
    """Of the offsets within the tolerance of the least error the one nearest the start is
    taken: a model that draws its boundary where the annotations do keeps the outlines'
    half-width."""
    rng = np.random.default_rng(1)
    axes, sizes, refs = _ellipse_refs(rng, 20)
    fitted = axes + 1.27
    assert choose_boundary_offset(fitted, sizes, refs, 1.27)[0] == 1.27
    # a tolerance wider than any change the search can make: the start, though another fits
    assert choose_boundary_offset(fitted, sizes, refs, 0.5, tolerance_mm=1e3)[0] == 0.5
    with pytest.raises(ValueError, match="as many"):
        choose_boundary_offset(fitted, sizes[:-1], refs, 1.27)


def test_a_band_across_the_frame_gets_no_ellipse_kilometres_long() -> None:
    """Cut at both ends, a band leaves two straight lines to fit, a degenerate conic that
    rounding passed as an ellipse 110 000 px long (HC 44 m at 0.1 mm/px): it now falls back to
    the band's moments. A head cut at both sides keeps its boundary fit and its own axes."""
    band = np.zeros((100, 120), bool)
    band[10:30, :] = True
    r = measure(band, 0.1)
    assert r["ellipse_method"] == "moments"
    assert r["ellipse_axes"][0] < 120 and r["hc_mm"] < 50
    head = _filled_ellipse((200, 400), 200, 100, 190, 80, 0)[:, 40:360]   # 300 of 380 px wide
    r = measure(head)
    assert r["touches_edge"] and r["ellipse_method"] == "boundary_fit"
    assert r["ellipse_axes"] == pytest.approx((190, 80), abs=1.0)


@pytest.mark.parametrize("box", [(slice(10, 30), slice(25, 40)), (slice(10, 30), slice(0, 15)),
                                 (slice(0, 15), slice(10, 30)), (slice(25, 40), slice(10, 30))])
def test_an_object_cut_by_any_edge_is_flagged(box) -> None:
    m = np.zeros((40, 40), bool)
    m[box] = True
    assert measure(m)["touches_edge"] is True
    inner = np.zeros((40, 40), bool)
    inner[10:30, 10:30] = True
    assert measure(inner)["touches_edge"] is False


def test_the_moments_ellipse_of_a_bar_lies_along_it() -> None:
    """Swapping x and y in the fallback's angle turned it by 90 degrees unnoticed."""
    bar = np.zeros((20, 40), bool)
    bar[9:11, 5:35] = True
    assert moments_ellipse(bar)[4] % 180 == pytest.approx(0.0, abs=1e-6)
    assert moments_ellipse(bar.T)[4] % 180 == pytest.approx(90.0, abs=1e-6)


def test_the_boundary_offsets_error_before_is_at_the_start() -> None:
    fitted = np.array([[50.0, 40.0], [60.0, 45.0]])
    sizes = np.array([0.1, 0.12])
    refs = np.array([30.0, 40.0])
    _, before, _ = choose_boundary_offset(fitted, sizes, refs, 1.27)
    want = np.mean([abs(ellipse_circumference(a - 1.27, b - 1.27) * s - r)
                    for (a, b), s, r in zip(fitted, sizes, refs)])
    assert before == pytest.approx(want)


@pytest.mark.parametrize("dy, dx", [(0.2, 0.4), (0.45, 0.15)])
def test_pixels_that_are_not_square_are_measured_as_they_are(dy, dx) -> None:
    """A DICOM header's PixelSpacing of 0.2 x 0.4 mm gave no mm at all, and --pixel-size then
    replaced it with a square size: lengths were wrong along one axis. An ellipse of 24 x 14 mm
    at 30 degrees (in mm), drawn on that grid, is measured in mm from its pixels as they are."""
    a, b, t = 12.0, 7.0, math.radians(30.0)
    yy, xx = np.mgrid[:int(32 / dy), :int(32 / dx)]
    x, y = (xx - xx.shape[1] / 2) * dx, (yy - yy.shape[0] / 2) * dy
    u, v = x * math.cos(t) + y * math.sin(t), -x * math.sin(t) + y * math.cos(t)
    mask = (u / a) ** 2 + (v / b) ** 2 <= 1.0
    m = measure(mask, (dy, dx))
    assert m["area_mm2"] == m["area_px"] * dy * dx
    assert m["area_mm2"] == pytest.approx(math.pi * a * b, rel=0.02)
    assert (m["major_axis_mm"], m["minor_axis_mm"]) == pytest.approx((2 * a, 2 * b), rel=0.02)
    assert m["hc_mm"] == pytest.approx(ellipse_circumference(a, b), rel=0.01)
    assert m["perimeter_mm"] == pytest.approx(ellipse_circumference(a, b), rel=0.02)
    square = measure(mask, math.sqrt(dy * dx))      # one square size: wrong along both axes
    assert abs(square["major_axis_mm"] - 2 * a) > 0.1 * a
    # square pixels given as a pair are measured as one number
    assert measure(mask, (0.3, 0.3)) == measure(mask, 0.3)
    with pytest.raises(ValueError, match="pixel_size_mm must be a positive number"):
        measure(mask, (0.3, 0.0))


def test_crofton_on_a_grid_that_is_not_square() -> None:
    sq = np.zeros((30, 30), bool)
    sq[5:25, 5:25] = True
    assert crofton_perimeter(sq, (1.0, 1.0)) == pytest.approx(crofton_perimeter(sq))
    # a disk of radius 20 mm on pixels 0.25 mm high, 0.5 mm wide
    yy, xx = np.mgrid[:200, :100]
    disk = ((yy - 100) * 0.25) ** 2 + ((xx - 50) * 0.5) ** 2 <= 20.0 ** 2
    assert crofton_perimeter(disk, (0.25, 0.5)) == pytest.approx(2 * math.pi * 20, rel=0.01)


def test_measurements_csv_names_each_frames_subject_where_the_layout_gives_one(tmp_path
                                                                              ) -> None:
    """HC18's NNN_2HC frames share exam NNN with NNN_HC, and measurements.csv named no
    subject: the HC error could not be analysed per exam. A file named alone has none."""
    from test_predict import hc18_like

    from ultraseg.config import ModelConfig, PreprocessConfig
    from ultraseg.predict import Predictor
    from ultraseg.measure_files import MEASURE_COLUMNS, measure_frames

    hc18_like(tmp_path / "hc")
    bright = Predictor(lambda b: (b > 0.5).astype(np.float32), ModelConfig("same", depth=2),
                       PreprocessConfig(size=None, normalise="unit"))
    assert MEASURE_COLUMNS[-1] == "subject"     # added last: the others keep their places
    measure_frames(bright, tmp_path / "hc", out=tmp_path / "m")
    with open(tmp_path / "m" / "measurements.csv", newline="") as f:
        assert [(r["name"], r["subject"]) for r in csv.DictReader(f)] == [
            ("001_HC", "001"), ("002_HC", "002")]
    _, rows = measure_frames(bright, [tmp_path / "hc" / "training_set" / "001_HC.png"])
    assert rows[0]["subject"] is None


def test_the_measure_summary_tells_the_signed_error_from_the_absolute_one() -> None:
    """hc_bias_mm was never tested: with one reference frame it equals the MAE up to its
    sign, and a bias computed from |error| passed every test. Errors of opposite signs."""
    from ultraseg.measure_files import summarise_measurements

    rows = [{"area_px": 50, "pixel_size_mm": 0.5, "hc_mm": 33.0, "hc_ref_mm": 30.0,
             "hc_error_mm": 3.0},
            {"area_px": 40, "pixel_size_mm": 0.5, "hc_mm": 29.0, "hc_ref_mm": 30.0,
             "hc_error_mm": -1.0},
            {"area_px": 0, "pixel_size_mm": 0.5, "hc_mm": None, "hc_ref_mm": 30.0,
             "hc_error_mm": None}]
    s = summarise_measurements(rows)
    assert s["n"] == 3 and s["n_with_reference"] == 2 and s["n_reference_missed"] == 1
    assert s["hc_mae_mm"] == pytest.approx(2.0)
    assert s["hc_bias_mm"] == pytest.approx(1.0)
    assert s["hc_mm_mean"] == pytest.approx(31.0)


def test_pixel_size_warnings_count_the_other_frames_without_claiming_their_reason() -> None:
    """'a: regions disagree: no pixel size taken ...; so for 1 more frames' put one frame in
    the plural and said 'so' though the other frame's header failed for another reason."""
    from conftest import ultraseg_warnings

    from ultraseg.io.dicom import PIXEL_SIZE_NOT_TAKEN
    from ultraseg.measure import PixelSizes

    sizes = PixelSizes(None)
    sizes.of("a", {PIXEL_SIZE_NOT_TAKEN: "regions disagree"})
    sizes.of("b", {PIXEL_SIZE_NOT_TAKEN: "no calibrated region"})
    with ultraseg_warnings() as warned:
        sizes.warn()
    (said,) = [r.getMessage() for r in warned]
    assert said.startswith("a: regions disagree: no pixel size taken"), said
    assert "1 more frame," in said and "frames" not in said, said
    assert "so for" not in said, said


def test_a_pixel_size_given_but_not_used_where_the_dataset_gives_one_is_warned_of() -> None:
    """--pixel-size 0.5 on HC18 frames measured each with its table's size without a word (a
    measurement review, O4): one warning now counts the frames it was not used on and gives
    the sizes used instead. A dataset's size equal to it, or none given, says nothing."""
    from conftest import ultraseg_warnings

    from ultraseg.measure import PixelSizes

    sizes = PixelSizes(0.5)
    assert sizes.of("a", {"pixel_size_mm": 0.052}) == 0.052
    assert sizes.of("b", {}) == 0.5
    assert sizes.of("c", {"pixel_size_mm": 0.27}) == 0.27
    assert sizes.of("d", {"pixel_size_mm": 0.5}) == 0.5
    with ultraseg_warnings() as warned:
        sizes.warn()
    (said,) = [r.getMessage() for r in warned]
    assert said == ("--pixel-size 0.5 not used on 2 frames (a and 1 more): their dataset gives "
                    "its own pixel size (0.052-0.27 mm)"), said
    one = PixelSizes(0.25)
    one.of("001_HC", {"pixel_size_mm": 0.5})
    with ultraseg_warnings() as warned:
        one.warn()
    assert [r.getMessage() for r in warned] == [
        "--pixel-size 0.25 not used on 1 frame (001_HC): its dataset gives its own pixel size "
        "(0.5 mm)"]
    for quiet in (PixelSizes(None), PixelSizes(0.5)):
        quiet.of("a", {"pixel_size_mm": 0.5})
        with ultraseg_warnings() as warned:
            quiet.warn()
        assert not warned


def test_measure_warns_where_the_pixel_size_given_was_not_used(tmp_path) -> None:
    """measure_frames says it once (PixelSizes.warn), as evaluate does."""
    from conftest import ultraseg_warnings
    from test_predict import hc18_like

    from ultraseg.config import ModelConfig, PreprocessConfig
    from ultraseg.predict import Predictor
    from ultraseg.measure_files import measure_frames

    hc18_like(tmp_path / "hc")                       # 001_HC: 0.5 mm in its table; 002_HC: none
    bright = Predictor(lambda b: (b > 0.5).astype(np.float32), ModelConfig("same", depth=2),
                       PreprocessConfig(size=None, normalise="unit"))
    with ultraseg_warnings() as warned:
        _, rows = measure_frames(bright, tmp_path / "hc", pixel_size_mm=0.25)
    assert [r["pixel_size_mm"] for r in rows] == [0.5, 0.25]
    said = [r.getMessage() for r in warned if "not used" in r.getMessage()]
    assert said == ["--pixel-size 0.25 not used on 1 frame (001_HC): its dataset gives its own "
                    "pixel size (0.5 mm)"], said


def test_the_measure_summary_counts_the_frames_that_held_more_than_one_region() -> None:
    """measure measures the largest region alone: its printed summary says how many frames
    held more (a second lesion, a second structure), which only n_components in the CSV told."""
    from ultraseg.cli_predict import format_measure_summary
    from ultraseg.measure_files import summarise_measurements

    rows = [{"area_px": a, "pixel_size_mm": None, "n_components": n}
            for a, n in ((50, 1), (40, 3), (0, 0), (30, 2))]
    s = summarise_measurements(rows)
    assert s["n_multiple_regions"] == 2
    assert ("2 frames held more than one region; the largest was measured"
            in format_measure_summary(s))
    one = summarise_measurements(rows[:1] + rows[2:3])
    assert one["n_multiple_regions"] == 0
    assert "more than one region" not in format_measure_summary(one)


def hc18_cut(root: Path) -> None:
    """hc18_like's two frames, both with a reference HC (0.5 mm), 002_HC's head cut by the
    frame's left edge."""
    from test_predict import hc18_like, save

    hc18_like(root)
    yy, xx = np.mgrid[:48, :64]
    inside = ((xx - 4) / 9) ** 2 + ((yy - 25) / 9) ** 2 <= 1
    save(root / "training_set" / "002_HC.png", np.where(inside, 200, 30).astype(np.uint8))
    padded = np.pad(inside, 1)
    edge = inside & ~(padded[2:, 1:-1] & padded[:-2, 1:-1] & padded[1:-1, 2:] & padded[1:-1, :-2])
    save(root / "training_set" / "002_HC_Annotation.png",
         np.where(edge, 255, 0).astype(np.uint8))
    (root / "training_set_pixel_size_and_HC.csv").write_text(
        "filename,pixel size(mm),head circumference (mm)\n001_HC.png,0.5,30.0\n"
        "002_HC.png,0.5,28.0\n")


def test_the_measure_summary_counts_the_frames_in_the_hc_error_that_touch_the_edge(
        tmp_path) -> None:
    """A head cut by the frame is fitted on its visible outline, less surely, and flagged
    touches_edge, but it entered the HC error uncounted: the summary and --json did not say
    how many (a measurement review, O2). n_reference_touches_edge counts those of the error's
    frames, and the printed line says it where there are any."""
    from ultraseg.cli_predict import format_measure_summary
    from ultraseg.measure_files import summarise_measurements

    rows = [{"area_px": 50, "pixel_size_mm": 0.5, "hc_mm": 33.0, "hc_ref_mm": 30.0,
             "hc_error_mm": 3.0, "touches_edge": True},
            {"area_px": 40, "pixel_size_mm": 0.5, "hc_mm": 29.0, "hc_ref_mm": 30.0,
             "hc_error_mm": -1.0, "touches_edge": False},
            {"area_px": 40, "pixel_size_mm": 0.5, "hc_mm": 29.0, "touches_edge": True}]
    s = summarise_measurements(rows)
    assert s["n_reference_touches_edge"] == 1
    keys = list(s)      # appended: the others in place (the MAE's interval appended after it)
    assert keys[keys.index("n_reference_touches_edge") + 1:] == [
        "hc_mae_mm_ci95", "hc_mae_mm_ci95_method", "hc_n_subjects"]
    assert ("HC error against the 2 references: mean absolute 2.00 mm, mean signed +1.00 mm "
            "(1 of them touches the frame's edge: fitted on its visible outline)"
            in format_measure_summary(s))
    none = summarise_measurements(rows[1:])
    assert none["n_reference_touches_edge"] == 0
    assert "edge" not in format_measure_summary(none)

    from ultraseg.config import ModelConfig, PreprocessConfig
    from ultraseg.predict import Predictor
    from ultraseg.measure_files import measure_frames

    hc18_cut(tmp_path / "hc")
    bright = Predictor(lambda b: (b > 0.5).astype(np.float32), ModelConfig("same", depth=2),
                       PreprocessConfig(size=None, normalise="unit"))
    summary, rows = measure_frames(bright, tmp_path / "hc")
    assert [r["touches_edge"] for r in rows] == [False, True]
    assert summary["n_with_reference"] == 2 and summary["n_reference_touches_edge"] == 1


def test_settings_json_from_python_says_what_was_applied_and_that_no_options_were_given(
        tmp_path) -> None:
    """measurements.csv recorded neither the model nor the post-processing (a post-processing
    review, O5). From Python, measurements.settings.json has them, and null where nothing
    says: no model file (a predictor built by hand), no command line."""
    import json

    from test_predict import hc18_like

    from ultraseg.config import ModelConfig, PostprocessConfig, PreprocessConfig
    from ultraseg.predict import Predictor
    from ultraseg.measure_files import measure_frames

    hc18_like(tmp_path / "hc")
    bright = Predictor(lambda b: (b > 0.5).astype(np.float32), ModelConfig("same", depth=2),
                       PreprocessConfig(size=None, normalise="unit"),
                       PostprocessConfig(threshold=0.4, min_area=3, fill_holes=True), tta=True)
    measure_frames(bright, tmp_path / "hc", out=tmp_path / "m")
    doc = json.loads((tmp_path / "m" / "measurements.settings.json").read_text())
    assert doc["command"] == "measure" and doc["checkpoint"] is None
    assert doc["backend"] is None and doc["overrides"] is None
    assert doc["postprocess"] == {"threshold": 0.4, "min_area": 3, "min_peak": 0.0,
                                  "keep_largest": False, "fill_holes": True, "tta": True}


@pytest.mark.parametrize("shape", [(0, 0), (0, 10), (10, 0)])
def test_a_mask_of_no_pixels_is_refused_saying_so(shape) -> None:
    """measure(np.zeros((0, 0), bool)) raised IndexError ('index 0 is out of bounds for axis
    0 with size 0') from inside it (an API misuse review, item 7)."""
    with pytest.raises(ValueError, match=rf"measure expects a 2D mask of at least one pixel, "
                                         rf"got shape \({shape[0]}, {shape[1]}\)"):
        measure(np.zeros(shape, bool))


@pytest.mark.parametrize("offset", ["1", None, [1.0], True])
def test_a_boundary_offset_that_is_no_number_is_refused_naming_it(offset) -> None:
    """measure(mask, boundary_offset_px="1") raised math's TypeError ('must be real number,
    not str') from inside it; True was taken as 1."""
    from ultraseg.errors import UltrasegError

    mask = np.zeros((10, 10), bool)
    mask[2:8, 3:7] = True
    with pytest.raises(UltrasegError, match=r"^measure's boundary_offset_px must be a number of "
                                            r"pixels, got "):
        measure(mask, 0.1, boundary_offset_px=offset)
    assert measure(mask, 0.1, boundary_offset_px=np.float32(0.5))["ellipse_axes"] is not None


def test_seen_side_is_the_longer_side_of_the_region_or_of_the_frame() -> None:
    """seen_side, by which a checkpoint's boundary offset is scaled to a frame, is the longer
    side of the frame, or of its crop_border region (top, bottom, left, right; bottom and
    right exclusive, as content_box gives them and measure slices them) where given. The
    offset tests used landscape frames without a region alone, so the width for the longer
    side, the region left out, or its side one pixel long all passed. Expected values worked
    out by hand from that rule."""
    from ultraseg.measure import frame_boundary_offset, seen_side

    assert seen_side((256, 100)) == 256                         # portrait: the height
    assert seen_side((100, 256)) == 256 and seen_side((100, 256, 3)) == 256
    assert seen_side((300, 400), (10, 90, 20, 200)) == 180      # rows 80, columns 180
    assert seen_side((400, 300), (5, 205, 50, 150)) == 200      # rows 200, columns 100
    assert seen_side((300, 400), (0, 300, 0, 400)) == 400       # the whole frame
    chosen = {"boundary_offset_px": 3, "offset_frame_side_px": 128}
    assert frame_boundary_offset(chosen, (256, 100)) == 6.0     # 3 * 256 / 128
    assert frame_boundary_offset(chosen, (300, 400), (10, 90, 20, 200)) == 4.21875  # 3 * 180 / 128
    assert frame_boundary_offset({"boundary_offset_px": 3}, (256, 100)) == 3.0  # any frame's


def test_the_hc_error_has_the_subject_bootstrap_interval_of_its_absolute_errors() -> None:
    """HC18's target (MAE <= 2.0 mm) was judged on an MAE with no interval: hc_mae_mm_ci95
    is metrics.subject_interval over the absolute errors of the frames that have one,
    grouped by subject, with its method in the Dice interval's words; none where no frame
    has an error (no reference) or one subject alone, or a frame in it names no subject."""
    from ultraseg.cli_predict import format_measure_summary
    from ultraseg.measure import hc_error_interval
    from ultraseg.metrics import interval_words, subject_interval
    from ultraseg.measure_files import summarise_measurements

    errors = {"a": [3.0, -1.0], "b": [-2.5], "c": [0.5, 1.5, -4.0], "d": [-0.2],
              "e": [2.0, 2.2], "f": [-6.0, 1.0], "g": [0.1]}
    rows = [{"area_px": 50, "pixel_size_mm": 0.5, "hc_mm": 30.0 + e, "hc_ref_mm": 30.0,
             "hc_error_mm": e, "subject": s} for s, es in errors.items() for e in es]
    # frames with no error: no reference, or no head found, of a subject of their own
    rows += [{"area_px": 50, "pixel_size_mm": 0.5, "hc_mm": 90.0, "hc_ref_mm": None,
              "hc_error_mm": None, "subject": "h"},
             {"area_px": 0, "pixel_size_mm": 0.5, "hc_mm": None, "hc_ref_mm": 30.0,
              "hc_error_mm": None, "subject": "h"}]
    names = [s for s, es in errors.items() for _ in es]
    absolute = [abs(e) for es in errors.values() for e in es]
    expected = subject_interval(absolute, names)
    assert expected != subject_interval([e for es in errors.values() for e in es], names)
    got = hc_error_interval(rows)
    assert got == {"hc_mae_mm_ci95": expected, "hc_n_subjects": 7,
                   "hc_mae_mm_ci95_method": interval_words(7, 12)}
    assert got["hc_mae_mm_ci95_method"] == "subject bootstrap, expanded percentile, exact"
    s = summarise_measurements(rows)
    assert {k: s[k] for k in got} == got
    lo, hi = expected
    assert (f"mean absolute {s['hc_mae_mm']:.2f} mm (95% interval {lo:.2f}-{hi:.2f} mm, the 7 "
            f"subjects resampled; subject bootstrap, expanded percentile, exact), mean signed"
            in format_measure_summary(s)), format_measure_summary(s)
    # few subjects: labelled and worded by metrics.few_subjects_words, as the Dice interval
    few = [r for r in rows if r["subject"] in ("a", "b", "c")]
    got = hc_error_interval(few)
    assert got["hc_n_subjects"] == 3 and got["hc_mae_mm_ci95_method"] == interval_words(3, 6)
    assert got["hc_mae_mm_ci95_method"].endswith("only 3 subjects: covers the mean at most "
                                                 "75 % of the time, not 95 %")
    assert "(interval (3 subjects) " in format_measure_summary(summarise_measurements(few))
    # no interval: no reference (no error), one subject, a frame with no subject
    none = {"hc_mae_mm_ci95": None, "hc_mae_mm_ci95_method": None}
    assert {k: v for k, v in hc_error_interval(rows[-2:]).items() if k in none} == none
    assert hc_error_interval(rows[-2:])["hc_n_subjects"] is None
    one = hc_error_interval([r for r in rows if r["subject"] == "c"])
    assert one == {**none, "hc_n_subjects": 1}
    unnamed = hc_error_interval([*rows[:-2], {**rows[0], "subject": None}])
    assert unnamed == {**none, "hc_n_subjects": None}
    plain = format_measure_summary(summarise_measurements(rows[-2:] + rows[:1]))
    assert "interval" not in plain, plain
