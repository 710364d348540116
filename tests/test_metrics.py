from __future__ import annotations

import itertools
import math
import re
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage
from scipy.spatial.distance import cdist

from ultraseg import metrics as M


def _masks_4x4() -> tuple[np.ndarray, np.ndarray]:
    pred = np.zeros((4, 4), bool)
    pred[0:2, 0:2] = True
    pred[0, 2] = True                  # 5 pixels
    truth = np.zeros((4, 4), bool)
    truth[0:3, 0:2] = True             # 6 pixels
    return pred, truth


def test_confusion_and_overlap_by_hand() -> None:
    pred, truth = _masks_4x4()
    assert M.confusion(pred, truth) == (4, 1, 2, 9)
    assert M.dice(pred, truth) == pytest.approx(8 / 11)
    assert M.iou(pred, truth) == pytest.approx(4 / 7)
    assert M.precision(pred, truth) == pytest.approx(4 / 5)
    assert M.recall(pred, truth) == pytest.approx(4 / 6)


def test_empty_rule() -> None:
    empty = np.zeros((4, 4), bool)
    full = np.zeros((4, 4), bool)
    full[1, 1] = True
    for f in (M.dice, M.iou, M.precision, M.recall):
        assert f(empty, empty) == 1.0, f.__name__
        assert f(empty, full) == 0.0, f.__name__     # missed structure
        assert f(full, empty) == 0.0, f.__name__     # invented structure
    assert M.hd95(empty, empty) == 0.0
    assert math.isnan(M.hd95(full, empty))
    assert math.isnan(M.hd95(empty, full))
    row = M.image_metrics(empty, empty, spacing=0.5)
    assert row == {
        "dice": 1.0, "iou": 1.0, "precision": 1.0, "recall": 1.0,
        "hd95": 0.0, "hd95_mm": 0.0, "truth_empty": True, "pred_empty": True,
    }


def test_shape_mismatch() -> None:
    with pytest.raises(ValueError, match="shape"):
        M.dice(np.zeros((3, 3), bool), np.zeros((3, 4), bool))


@pytest.mark.parametrize("spacing", [0.0, -0.5, math.nan, math.inf, (0.1, 0.0)])
def test_hd95_refuses_a_spacing_that_is_no_pixel_size(spacing) -> None:
    """A 0 spacing gave HD95 0 mm beside 235 px; a negative one its absolute value."""
    a = np.zeros((5, 5), bool)
    a[1:3, 1:3] = True
    for pred, truth in ((a, a), (a, np.zeros_like(a))):
        with pytest.raises(ValueError, match="positive"):
            M.hd95(pred, truth, spacing)


def test_hd95_by_hand() -> None:
    a = np.zeros((5, 5), bool)
    b = np.zeros((5, 5), bool)
    a[0, 0] = True
    b[3, 4] = True
    assert M.hd95(a, b) == pytest.approx(5.0)
    assert M.hd95(a, b, spacing=(2.0, 1.0)) == pytest.approx(math.sqrt(6**2 + 4**2))
    assert M.hd95(a, b, spacing=0.5) == pytest.approx(2.5)
    # 3x3 squares one column apart: half the boundary pixels are 1 px off, the rest 0.
    t = np.zeros((6, 6), bool)
    t[1:4, 1:4] = True
    p = np.roll(t, 1, axis=1)
    assert M.hd95(p, t) == pytest.approx(1.0)
    assert M.hd95(t, t) == 0.0


def _blob(rng: np.random.Generator, shape: tuple[int, int] = (48, 56)) -> np.ndarray:
    field = ndimage.gaussian_filter(rng.standard_normal(shape), 4.0)
    return field > np.quantile(field, 0.7)


def _brute_hd95(p: np.ndarray, t: np.ndarray, spacing: tuple[float, float]) -> float:
    bp = np.argwhere(M.boundary(p)) * np.asarray(spacing)
    bt = np.argwhere(M.boundary(t)) * np.asarray(spacing)
    d = cdist(bp, bt)
    return float(max(np.percentile(d.min(axis=1), 95), np.percentile(d.min(axis=0), 95)))


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_against_monai_and_brute_force() -> None:
    torch = pytest.importorskip("torch")
    monai_metrics = pytest.importorskip("monai.metrics")
    rng = np.random.default_rng(0)
    for _ in range(4):
        p, t = _blob(rng), _blob(rng)
        pt = torch.from_numpy(p[None, None].astype(np.float32))
        tt = torch.from_numpy(t[None, None].astype(np.float32))
        ref_dice = float(monai_metrics.compute_dice(pt, tt, include_background=True))
        ref_iou = float(monai_metrics.compute_iou(pt, tt, include_background=True))
        ref_hd = float(
            monai_metrics.compute_hausdorff_distance(pt, tt, include_background=True, percentile=95)
        )
        assert M.dice(p, t) == pytest.approx(ref_dice, abs=1e-6)
        assert M.iou(p, t) == pytest.approx(ref_iou, abs=1e-6)
        assert M.hd95(p, t) == pytest.approx(ref_hd, abs=1e-4)
        # anisotropic spacing: against MONAI (its default, boundary pixels' centres, as ours)
        # and by brute force
        ref_aniso = float(monai_metrics.compute_hausdorff_distance(
            pt, tt, include_background=True, percentile=95, spacing=(0.3, 0.7)))
        assert M.hd95(p, t, spacing=(0.3, 0.7)) == pytest.approx(ref_aniso, abs=1e-4)
        assert M.hd95(p, t, spacing=(0.3, 0.7)) == pytest.approx(
            _brute_hd95(p, t, (0.3, 0.7)), abs=1e-9
        )


def test_image_metrics_and_summarise() -> None:
    pred, truth = _masks_4x4()
    empty = np.zeros((4, 4), bool)
    speck = np.zeros((4, 4), bool)
    speck[3, 3] = True
    rows = [
        M.image_metrics(pred, truth, spacing=0.1),   # dice 8/11
        M.image_metrics(empty, empty),               # dice 1, empty frame right
        M.image_metrics(speck, empty),               # dice 0, empty frame wrong
        M.image_metrics(empty, truth),               # dice 0, missed
    ]
    assert rows[0]["hd95_mm"] == pytest.approx(0.1 * rows[0]["hd95"])
    assert rows[2]["truth_empty"] and not rows[2]["pred_empty"]
    assert math.isnan(rows[3]["hd95"])
    s = M.summarise(rows)
    assert s["n"] == 4
    assert s["dice_mean"] == pytest.approx((8 / 11 + 1 + 0 + 0) / 4)
    assert s["dice_nonempty_mean"] == pytest.approx((8 / 11 + 0) / 2)
    assert s["iou_mean"] == pytest.approx((4 / 7 + 1) / 4)
    assert s["precision_mean"] == pytest.approx((4 / 5 + 1) / 4)
    assert s["recall_mean"] == pytest.approx((4 / 6 + 1) / 4)
    assert s["empty_correct_rate"] == pytest.approx(0.5)
    # HD95 over the frames where both masks hold a boundary (only the first): the empty
    # frame's 0 is no distance between two boundaries
    assert s["hd95_n"] == 1
    assert s["hd95_median"] == pytest.approx(rows[0]["hd95"])
    assert s["hd95_mm_median"] == pytest.approx(rows[0]["hd95_mm"])
    assert s["hd95_mm_n"] == 1
    # a frame without a pixel size has no mm figure: the mm median says over how many it is
    rows.append(M.image_metrics(np.ones((4, 4), bool), np.ones((4, 4), bool)))
    s = M.summarise(rows)
    assert s["hd95_n"] == 2 and s["hd95_mm_n"] == 1


def test_summarise_degenerate() -> None:
    only_empty = [M.image_metrics(np.zeros((2, 2), bool), np.zeros((2, 2), bool))]
    s = M.summarise(only_empty)
    assert s["dice_nonempty_mean"] is None
    assert s["empty_correct_rate"] == 1.0
    assert "hd95_mm_median" not in s
    nonempty = np.ones((2, 2), bool)
    assert s["hd95_median"] is None and s["hd95_n"] == 0
    s = M.summarise([M.image_metrics(np.zeros((2, 2), bool), nonempty)])
    assert s["empty_correct_rate"] is None
    assert s["hd95_median"] is None
    assert M.summarise([])["dice_mean"] is None


def test_hd95_measures_on_the_box_around_both_masks(monkeypatch) -> None:
    """Its two distance transforms ran over the whole frame: 4.6 s a frame at 4000 x 4000,
    six times per frame in `evaluate`, for masks a fraction of it. They run on the masks' box
    (with a pixel about it), and give what the boundaries' pairwise distances give."""
    rng = np.random.default_rng(3)
    shapes: list[tuple[int, ...]] = []
    edt = ndimage.distance_transform_edt

    def recorded(a, *args, **kw):
        shapes.append(a.shape)
        return edt(a, *args, **kw)

    monkeypatch.setattr(M.ndimage, "distance_transform_edt", recorded)
    for top, left in ((400, 300), (0, 0), (952, 944)):      # inside, and at both corners
        p = np.zeros((1000, 1000), bool)
        t = np.zeros((1000, 1000), bool)
        p[top:top + 48, left:left + 56] = _blob(rng)
        t[top:top + 48, left:left + 56] = _blob(rng)
        shapes.clear()
        for spacing in ((1.0, 1.0), (0.7, 1.3)):
            assert M.hd95(p, t, spacing) == pytest.approx(_brute_hd95(p, t, spacing))
        assert all(s[0] <= 48 + 2 and s[1] <= 56 + 2 for s in shapes), shapes


def test_hd95_is_scipys_distances_without_a_frame_of_float64_and_coordinates() -> None:
    """HD95 on an 8000x6000 frame a weak model fills took 1.7 GB (np.nonzero's coordinates of
    every foreground pixel, then scipy's whole-frame float64 distances and their index grid):
    evaluate peaked at 3x predict. The distances at the boundary pixels alone are the same
    numbers, and a 1000x1000 frame's HD95 now takes under 16 bytes a pixel at its peak."""
    import tracemalloc

    from scipy import ndimage

    from ultraseg.metrics import boundary, hd95

    rng = np.random.default_rng(5)
    for spacing in (1.0, 0.37, (0.2, 0.31)):
        for _ in range(20):
            shape = tuple(rng.integers(2, 60, 2))
            p = ndimage.gaussian_filter(rng.random(shape), 2) > 0.5
            t = rng.random(shape) > rng.random()
            if not (p.any() and t.any()):
                continue
            sampling = np.broadcast_to(np.asarray(spacing, dtype=np.float64), (2,))
            bp, bt = boundary(p), boundary(t)
            reference = max(
                np.percentile(ndimage.distance_transform_edt(~bt, sampling=sampling)[bp], 95),
                np.percentile(ndimage.distance_transform_edt(~bp, sampling=sampling)[bt], 95))
            assert hd95(p, t, spacing) == float(reference)
    pred = np.ones((1000, 1000), bool)
    pred[::37, ::41] = False
    truth = np.zeros_like(pred)
    truth[100:900, 50:950] = True
    tracemalloc.start()
    try:
        hd95(pred, truth)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 16 * pred.size, peak / pred.size


def test_the_interval_resamples_subjects_not_frames() -> None:
    """A dataset figure had no interval: nerve's 0.742 over 393 frames of 8 subjects said
    nothing of how far other patients could take it. The 95 % interval draws subjects
    with replacement: ten subjects of 20 identical frames each (Dice k / 10) spread the mean
    as ten values would, not as 200 (a frame bootstrap would give about +-0.04)."""
    values = [k / 10 for k in range(10) for _ in range(20)]
    subjects = [f"s{k}" for k in range(10) for _ in range(20)]
    lo, hi = M.subject_interval(values, subjects)
    assert lo < 0.45 < hi and 0.25 < hi - lo < 0.45, (lo, hi)
    assert M.subject_interval(values, subjects) == [lo, hi]          # seeded: the same
    # by hand: the means of 20000 draws of 10 of the ten subject means, at the expanded tail
    rng = np.random.default_rng(1)
    means = rng.choice(np.arange(10) / 10, size=(20000, 10)).mean(axis=1)
    tail = M.expanded_tail(0.05, 10) * 100
    ref = np.percentile(means, [tail, 100 - tail])
    assert abs(lo - ref[0]) < 0.03 and abs(hi - ref[1]) < 0.03, (lo, hi, ref)
    assert M.subject_interval(values[:20], subjects[:20]) is None     # one subject: no spread
    assert M.subject_interval([], []) is None


def test_summarise_gives_intervals_where_rows_name_subjects() -> None:
    """The non-empty mean's interval draws from every subject (one whose frames are all empty
    adds nothing when drawn); rows without subjects give no interval keys."""
    full = np.zeros((8, 8), bool)
    full[2:6, 2:6] = True
    rows = []
    for k in range(6):                      # Dice 0, 0.4, 0.67, 0.86; two empty subjects
        truth = full if k < 4 else np.zeros((8, 8), bool)
        pred = np.zeros((8, 8), bool)
        pred[2:6, 2:2 + k] = True
        rows += [{**M.image_metrics(pred, truth), "subject": f"p{k}"} for _ in range(3)]
    s = M.summarise(rows)
    assert s["n_subjects"] == 6
    assert s["dice_mean_ci95"][0] <= s["dice_mean"] <= s["dice_mean_ci95"][1]
    lo, hi = s["dice_nonempty_mean_ci95"]
    assert 0.0 <= lo < s["dice_nonempty_mean"] < hi <= 1.0
    nonempty = [r for r in rows if not r["truth_empty"]]
    values, subjects = [r["dice"] for r in nonempty], [r["subject"] for r in nonempty]
    every = [r["subject"] for r in rows]
    assert [lo, hi] == M.subject_interval(values, subjects, among=every)
    # drawn from the 4 alone: another distribution of means (at 95 % both intervals reach
    # the extreme means of so few subjects, so compared at 50 %)
    assert M.subject_interval(values, subjects, among=every, level=0.5) \
        != M.subject_interval(values, subjects, level=0.5)
    assert "dice_mean_ci95" not in M.summarise([{k: v for k, v in r.items() if k != "subject"}
                                                for r in rows])


def test_an_interval_needs_two_subjects_with_values() -> None:
    """Where one subject alone held non-empty frames, the non-empty mean's interval came out
    as a point ('0.833-0.833'): drawing subjects without values spreads nothing. Two subjects
    with values are needed, whatever the subjects drawn from."""
    assert M.subject_interval([0.8, 0.9], ["a", "a"], among=["a", "b", "c"]) is None
    assert M.subject_interval([0.8, 0.9], ["a", "b"], among=["a", "b", "c"]) is not None


def test_the_interval_over_thousands_of_subjects_is_drawn_in_blocks(monkeypatch) -> None:
    """Every frame its own subject (BUSI) made the draws a 2000 x frames matrix: about 1 GB
    at 30000 frames. They are drawn in blocks, to the same interval as at once."""
    rng = np.random.default_rng(0)
    values = rng.random(300).tolist()
    subjects = [f"s{k}" for k in range(300)]
    at_once = M.subject_interval(values, subjects)
    monkeypatch.setattr(M, "_DRAWN", 300 * 7)      # blocks of 7 resamples
    assert M.subject_interval(values, subjects) == at_once


def test_boundary_is_the_mask_minus_its_erosion_and_the_overlays_outline() -> None:
    """One outline for the metrics and the overlays (report drew its own, the same pixels):
    the mask minus its 4-neighbour erosion, the array edge outside, on any mask."""
    from ultraseg import report

    rng = np.random.default_rng(3)
    for k in range(200):
        shape = tuple(int(s) for s in rng.integers(1, 40, 2))
        m = rng.random(shape) < (0.0 if k % 20 == 0 else rng.uniform(0.1, 0.9))
        want = m & ~ndimage.binary_erosion(m, border_value=0)
        assert np.array_equal(M.boundary(m), want), k
        assert np.array_equal(report.outline(m), want), k


def test_dice_from_counts_is_the_one_dice_with_the_empty_rule() -> None:
    """The empty rule was written twice (metrics and post-processing's grid search): both
    now score Dice from the confusion counts by dice_from_counts."""
    rng = np.random.default_rng(4)
    for k in range(100):
        shape = tuple(int(s) for s in rng.integers(1, 30, 2))
        p = rng.random(shape) < (0.0 if k % 10 == 0 else rng.uniform(0, 1))
        t = rng.random(shape) < (0.0 if k % 7 == 0 else rng.uniform(0, 1))
        tp = int((p & t).sum())
        d = M.dice_from_counts(tp, int(p.sum()), int(t.sum()))
        assert d == M.dice(p, t) == M.image_metrics(p, t)["dice"], k
    assert M.dice_from_counts(0, 0, 0) == 1.0 and M.dice_from_counts(0, 3, 0) == 0.0


def test_dice_nonempty_mean_is_over_the_frames_whose_truth_holds_a_structure() -> None:
    """The headline 'Dice (non-empty)' of evaluate and the run summary: its frames are
    chosen by the truth, so a missed structure (empty prediction, Dice 0) counts in it and
    an invented one on an empty frame does not. Chosen by the prediction instead, a miss
    drops out and the figure rises."""
    truth = np.zeros((4, 4), bool)
    truth[1:3, 1:3] = True
    empty = np.zeros((4, 4), bool)
    miss = M.image_metrics(empty, truth)        # truth non-empty, Dice 0
    hit = M.image_metrics(truth, truth)         # truth non-empty, Dice 1
    invented = M.image_metrics(truth, empty)    # truth empty, Dice 0
    # by hand: the frames with truth are the miss and the hit, (0 + 1) / 2
    assert M.summarise([miss, hit])["dice_nonempty_mean"] == pytest.approx(0.5)
    # the invented frame has no truth: only the hit counts, 1 / 1
    assert M.summarise([hit, invented])["dice_nonempty_mean"] == pytest.approx(1.0)


def test_image_metrics_hd95_mm_on_pixels_that_are_not_square() -> None:
    """evaluate passes a DICOM (row, column) pixel size through image_metrics: the mm HD95
    is measured in mm along each axis, not the pixel HD95 times a mean pixel size."""
    p = np.zeros((8, 8), bool)
    q = np.zeros((8, 8), bool)
    p[2:4, 2:4] = True
    q[2:4, 5:7] = True
    row = M.image_metrics(p, q, spacing=(1.0, 0.5))    # rows 1 mm apart, columns 0.5 mm
    # by hand: every pixel of each 2x2 square is on its boundary; the nearest pixel of the
    # other square is in the same row, 2 columns away (the facing column) or 3 (the far
    # one): directed distances [2, 2, 3, 3] px both ways. Their 95th percentile (linear
    # between the sorted 3rd and 4th, both 3) is 3 px, 3 columns = 3 x 0.5 mm = 1.5 mm.
    assert row["hd95"] == pytest.approx(3.0)
    assert row["hd95_mm"] == pytest.approx(1.5)
    # the same masks turned a quarter: now the 3 px run along the rows, 1 mm apart
    turned = M.image_metrics(p.T, q.T, spacing=(1.0, 0.5))
    assert turned["hd95_mm"] == pytest.approx(3.0)


def test_a_tie_in_validation_dice_goes_to_the_lower_validation_loss() -> None:
    """Validation Dice of 0 for every epoch (nothing found yet) kept epoch 1, the least
    trained weights; a tie now goes to the lower validation loss, then stays put."""
    assert M.improves(0.5, 0.9, best_dice=0.4, best_loss=0.1)
    assert not M.improves(0.3, 0.1, best_dice=0.4, best_loss=0.9)
    assert M.improves(0.0, 1.05, best_dice=0.0, best_loss=1.17)
    assert not M.improves(0.0, 1.17, best_dice=0.0, best_loss=1.17)
    assert not M.improves(0.0, 1.2, best_dice=0.0, best_loss=1.17)
    assert M.improves(0.0, 1.2, best_dice=-math.inf, best_loss=math.inf)     # the first epoch
    assert not M.improves(math.nan, 0.5, best_dice=0.2, best_loss=1.0)


def test_dice_from_count_arrays_gives_dice_from_counts_floats_element_by_element() -> None:
    """The grid search scores many settings at once: its array form must keep the one empty
    rule and give the very floats of the scalar form."""
    from ultraseg.metrics import dice_from_count_arrays, dice_from_counts

    rng = np.random.default_rng(0)
    pred_sum = rng.integers(0, 50, size=200)
    pred_sum[:5] = 0
    tp = np.minimum(pred_sum, rng.integers(0, 50, size=200))
    for truth_sum in (0, 7, 40):
        tp_t = np.minimum(tp, truth_sum)
        got = dice_from_count_arrays(tp_t, pred_sum, truth_sum)
        want = [dice_from_counts(int(a), int(b), truth_sum) for a, b in zip(tp_t, pred_sum)]
        assert got.dtype == np.float64 and got.tolist() == want


_SCORES = {"confusion": M.confusion, "dice": M.dice, "iou": M.iou, "precision": M.precision,
           "recall": M.recall, "hd95": M.hd95, "image_metrics": M.image_metrics}


@pytest.mark.parametrize("name", list(_SCORES))
@pytest.mark.parametrize("side", ["pred", "truth"])
def test_a_probability_map_or_nan_is_refused_as_a_mask(name, side) -> None:
    """The metrics read every non-zero pixel as foreground: a probability map scored as a
    prediction counted the whole frame (recall 1.0, precision 0.04; an API misuse review),
    and NaN was foreground too. They take masks as measure does (measure.binary_mask):
    bool, or 0 and one other value; a float map of more values, or NaN, is refused."""
    from ultraseg.errors import UltrasegError

    pred, truth = _masks_4x4()
    score = _SCORES[name]
    other = {"pred": truth, "truth": pred}[side]
    for bad in (np.where(pred, 0.9, 0.05), np.where(pred, 1.0, np.nan)):
        args = (bad, other) if side == "pred" else (other, bad)
        with pytest.raises(UltrasegError, match=f"{side}.*not a mask"):
            score(*args)
    want = score(pred, truth)       # 0/1, 0/255 and 0/1 floats score as the bool masks do
    for same in (np.uint8, np.float32):
        for scale in (1, 255):
            assert score(pred.astype(same) * scale, truth.astype(same) * scale) == want


@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (0.5, 0.5, 2.0, 1.0), "1", None,
                                     ["1", "3"], True])
def test_hd95_refuses_a_spacing_of_other_than_one_number_or_one_per_axis(spacing) -> None:
    """A 3-value spacing for a 2D mask raised numpy's 'operands could not be broadcast
    together with remapped shapes [original->remapped]: (3,) and requested shape (2,)', from
    hd95 and image_metrics alike; a string was read as the number it spells."""
    from ultraseg.errors import UltrasegError

    pred = np.zeros((8, 8), bool)
    pred[2:5, 2:5] = True
    calls = [lambda: M.hd95(pred, pred, spacing)]
    if spacing is not None:     # (image_metrics' None: no hd95_mm)
        calls.append(lambda: M.image_metrics(pred, pred, spacing))
    for call in calls:
        with pytest.raises(UltrasegError, match=r"^hd95 spacing must be one pixel size or one "
                                                r"per axis \(2 for a 2D mask\), got "):
            call()


#: Where the plain interval's coverage is stated: the docstring, README and QUALITY.md
#: (benchmarks/quality.py writes it) each say "N % of the time with 5 subjects and M % with 8".
_STATED = re.compile(r"(\d+)\s+%\s+of\s+the\s+time\s+with\s+5\s+subjects\s+and\s+(\d+)"
                     r"\s+%\s+with\s+8")
_ROOT = Path(__file__).resolve().parents[1]


def _stated_coverage() -> dict[int, float]:
    """The plain interval's coverage the docstring states, the same in README and QUALITY.md."""
    stated = _STATED.findall(" ".join((M.subject_interval.__doc__ or "").split()))
    assert len(stated) == 1, stated
    for doc in ("README.md", "benchmarks/QUALITY.md", "benchmarks/quality.py"):
        path = _ROOT / doc
        if path.is_file():
            assert _STATED.findall(path.read_text(encoding="utf-8")) == stated, doc
    return {5: int(stated[0][0]) / 100, 8: int(stated[0][1]) / 100}


@pytest.mark.parametrize("n", [5, 8])
def test_the_subject_interval_covers_the_mean_about_as_often_as_it_says(n) -> None:
    """The plain percentile bootstrap's "95 %" interval covers a simulated population's mean
    less often than it says with the subject counts ultraseg meets (a nerve validation side
    holds about 8): the figures the docstring, README and QUALITY.md state, checked here within
    this simulation's Monte Carlo error (they said 85 % and 86 %, where the simulation gave
    0.87 and 0.91; 20000 populations give 0.837 and 0.888). The expanded percentile interval
    (Hesterberg 2015) covers it at least 90 % of the time here (1000 seeded populations)."""
    rng = np.random.default_rng(123)
    runs, plain, expanded = 1000, 0, 0
    for _ in range(runs):
        values, subjects = [], []
        for s, mean in enumerate(rng.normal(0.7, 0.1, n)):
            values += list(rng.normal(mean, 0.05, 4))
            subjects += [f"s{s}"] * 4
        lo, hi = M.subject_interval(values, subjects)
        expanded += lo <= 0.7 <= hi
        lo, hi = M.subject_interval(values, subjects, expanded=False)
        plain += lo <= 0.7 <= hi
    assert expanded / runs >= 0.9, expanded / runs
    said = _stated_coverage()[n]
    error = 3 * math.sqrt(said * (1 - said) / runs) + 0.005       # (+ the stated rounding)
    assert abs(plain / runs - said) <= error, (plain / runs, said, error)


def test_the_expanded_tail_nears_the_plain_one_with_many_subjects() -> None:
    assert M.expanded_tail(0.05, 2) < M.expanded_tail(0.05, 8) < M.expanded_tail(0.05, 30) \
        < M.expanded_tail(0.05, 10_000) < 0.025
    assert M.expanded_tail(0.05, 10_000) == pytest.approx(0.025, abs=1e-4)


def _clustered(n: int, seed: int) -> tuple[list[float], list[str]]:
    """``n`` subjects of 3 to 40 frames each, their Dice spread about their own means."""
    rng = np.random.default_rng(seed)
    values: list[float] = []
    subjects: list[str] = []
    for s, mean in enumerate(rng.normal(0.72, 0.08, n)):
        frames = int(rng.integers(3, 41))
        values += np.clip(rng.normal(mean, 0.1, frames), 0, 1).tolist()
        subjects += [f"p{s:02d}"] * frames
    return values, subjects


@pytest.mark.parametrize("n", [8, 14])
def test_the_interval_does_not_depend_on_how_subjects_are_named_or_ordered(n) -> None:
    """Renaming nerve's 8 patients (another --subject-pattern's capture) moved the printed
    interval: 13 strings in 20 renamings, as 2000 draws leave about 11 beyond each end of the
    expanded interval and the draws fell to the subjects in the order of their names. The same
    frames under other names, in another order, give the same interval, to the last bit."""
    values, subjects = _clustered(n, seed=n)
    ref = M.subject_interval(values, subjects)
    rng = np.random.default_rng(7)
    for _ in range(5):
        names = dict(zip(sorted(set(subjects)), rng.permutation(
            [f"{rng.integers(10**6)}-{k}" for k in range(n)])))
        order = rng.permutation(len(values))
        renamed = M.subject_interval([values[i] for i in order],
                                     [names[subjects[i]] for i in order])
        assert renamed == ref, (renamed, ref)


def test_the_interval_over_few_subjects_is_the_exact_bootstrap_one() -> None:
    """Up to 10 subjects every multiset of subjects is weighed by its multinomial probability
    (no draws: no seed, no Monte Carlo error in the third decimal). Checked against all 5**5
    ordered draws of 5 subjects, each as likely, and the expanded percentiles of their means."""
    values, subjects = _clustered(5, seed=3)
    lo, hi = M.subject_interval(values, subjects)
    assert M.subject_interval(values, subjects, seed=1) == [lo, hi]
    pool = sorted(set(subjects))
    sums = np.array([sum(v for v, s in zip(values, subjects) if s == p) for p in pool])
    counts = np.array([subjects.count(p) for p in pool], float)
    drawn = np.array(list(itertools.product(range(5), repeat=5)))
    means = np.sort(sums[drawn].sum(axis=1) / counts[drawn].sum(axis=1))
    tail = M.expanded_tail(0.05, 5)
    share = np.arange(1, len(means) + 1) / len(means)       # P(X <= means[k]), ties aside
    ref_lo = means[np.argmax(share >= tail - 1e-12)]
    ref_hi = means[::-1][np.argmax(share >= tail - 1e-12)]
    assert lo == pytest.approx(ref_lo, abs=1e-12) and hi == pytest.approx(ref_hi, abs=1e-12)
    assert M.interval_method(5) == "exact"


def test_the_draws_scale_with_the_tail_beyond_ten_subjects() -> None:
    """Over more than 10 subjects the interval is drawn, at least 200 draws beyond each end
    (2000 left about 11 at 8 subjects): the seed moves it far less than its third decimal."""
    assert M.interval_method(11) == M.interval_draws(11) >= 200 / M.expanded_tail(0.05, 11)
    assert M.interval_draws(3000) >= 200 / M.expanded_tail(0.05, 3000)
    values, subjects = _clustered(14, seed=2)
    ends = np.array([M.subject_interval(values, subjects, seed=s) for s in range(4)])
    assert np.ptp(ends, axis=0).max() < 0.004, ends


def test_the_summary_names_the_interval_it_holds() -> None:
    """summary.json's dice_mean_ci95 held the plain percentile interval until 2026-12-07 and
    the expanded one since, under the same key: nothing said which (statistics review D3).
    dice_mean_ci95_method names it, with how its distribution was had."""
    def rows(n: int, frames: int) -> list[dict]:
        values, subjects = _clustered(n, seed=1)
        by: dict[str, list[float]] = {}
        for v, s in zip(values, subjects):
            by.setdefault(s, []).append(v)
        return [{"dice": v, "iou": v, "precision": v, "recall": v, "hd95": 1.0,
                 "truth_empty": False, "pred_empty": False, "subject": s}
                for s, vs in by.items() for v in vs[:frames]]

    assert M.summarise(rows(8, 3))["dice_mean_ci95_method"] \
        == "subject bootstrap, expanded percentile, exact"
    assert M.summarise(rows(12, 3))["dice_mean_ci95_method"] \
        == f"subject bootstrap, expanded percentile, {M.interval_draws(12)} draws (seed 0)"
    assert M.summarise(rows(12, 1))["dice_mean_ci95_method"] == (
        f"frame bootstrap (each frame its own subject), expanded percentile, "
        f"{M.interval_draws(12)} draws (seed 0)")
    one = M.summarise(rows(1, 3))
    assert one["dice_mean_ci95"] is None and one["dice_mean_ci95_method"] is None
    assert "dice_mean_ci95_method" not in M.summarise(
        [{k: v for k, v in r.items() if k != "subject"} for r in rows(8, 3)])


@pytest.mark.parametrize("n", [2, 3, 4, 5, 6])
def test_an_interval_over_few_subjects_says_how_often_it_can_cover_the_mean(n) -> None:
    """With 3 or 4 subjects the "95 %" interval is the range of their means, and no interval
    within that range covers the mean more often than n subjects fail to fall all on one side
    of it: 1 - 2**(1 - n), 75 % for 3, 87.5 % for 4, 93.75 % for 5 (statistics review D4; the
    2-subject case, 50 %, by the same rule). The summary's method says so under 6 subjects."""
    values, subjects = _clustered(n, seed=4)
    lo, hi = M.subject_interval(values, subjects)
    means = [np.mean([v for v, s in zip(values, subjects) if s == p]) for p in set(subjects)]
    if n <= 4:
        assert lo == pytest.approx(min(means)) and hi == pytest.approx(max(means))
    rng = np.random.default_rng(0)           # the range's coverage, simulated: the bound
    drawn = rng.normal(0, 1, (20000, n))
    inside = np.mean((drawn.min(axis=1) <= 0) & (0 <= drawn.max(axis=1)))
    assert M.covers_at_most(n) == pytest.approx(inside, abs=0.01)
    words = M.interval_words(n, len(values))
    if n < 6:
        assert words.endswith(f"; only {n} subjects: covers the mean at most "
                              f"{M.covers_at_most(n) * 100:g} % of the time, not 95 %"), words
    else:
        assert "only" not in words and M.covers_at_most(n) > 0.95
