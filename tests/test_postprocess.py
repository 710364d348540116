from __future__ import annotations

import itertools

import numpy as np
import pytest
from scipy import ndimage

from ultraseg.config import PostprocessConfig
from ultraseg.errors import UltrasegError
from ultraseg.metrics import dice
from ultraseg.postprocess import (GridSearch, _holes, apply, default_min_areas, fill_holes,
                                  tune)


def _prob(mask: np.ndarray, inside: float = 0.9, outside: float = 0.1) -> np.ndarray:
    return np.where(mask, inside, outside).astype(np.float32)


def test_threshold_is_inclusive() -> None:
    prob = np.array([[0.49, 0.5, 0.51]], dtype=np.float32)
    out = apply(prob, PostprocessConfig(threshold=0.5))
    assert out.dtype == bool
    np.testing.assert_array_equal(out, [[False, True, True]])
    with pytest.raises(ValueError, match="NaN"):     # once read as background in silence
        apply(np.full((2, 2), np.nan), PostprocessConfig())


def test_speck_removed_diagonal_counts_as_connected() -> None:
    m = np.zeros((8, 8), bool)
    m[1:4, 1:4] = True          # 9 px
    m[6, 6] = m[7, 7] = True    # 2 px, 8-connected diagonal pair
    m[6, 0] = True              # 1 px
    out = apply(_prob(m), PostprocessConfig(min_area=2))
    expected = m.copy()
    expected[6, 0] = False
    np.testing.assert_array_equal(out, expected)
    out = apply(_prob(m), PostprocessConfig(min_area=3))
    expected[6, 6] = expected[7, 7] = False
    np.testing.assert_array_equal(out, expected)
    np.testing.assert_array_equal(apply(_prob(m), PostprocessConfig(min_area=10)), np.zeros_like(m))


def test_keep_largest_and_fill_holes() -> None:
    m = np.zeros((9, 9), bool)
    m[1:6, 1:6] = True
    m[3, 3] = False             # a hole in the big component
    m[7, 7:9] = True            # a second component
    out = apply(_prob(m), PostprocessConfig(keep_largest=True))
    expected = m.copy()
    expected[7, 7:9] = False
    np.testing.assert_array_equal(out, expected)
    out = apply(_prob(m), PostprocessConfig(keep_largest=True, fill_holes=True))
    expected[3, 3] = True
    np.testing.assert_array_equal(out, expected)
    # A background region open to the border is no hole.
    c = np.zeros((5, 5), bool)
    c[0:3, 0:3] = True
    c[1, 0] = False
    np.testing.assert_array_equal(apply(_prob(c), PostprocessConfig(fill_holes=True)), c)


def test_min_peak_removes_the_components_the_network_is_never_sure_of() -> None:
    prob = np.zeros((12, 20))
    prob[1:9, 1:9] = 0.7            # 64 px, at most 0.7
    prob[2:5, 12:15] = 0.6          # 9 px ...
    prob[3, 13] = 0.97              # ... one of them sure
    both = prob >= 0.5
    sure = both.copy()
    sure[1:9, 1:9] = False
    np.testing.assert_array_equal(apply(prob, PostprocessConfig(min_peak=0.9)), sure)
    np.testing.assert_array_equal(apply(prob, PostprocessConfig(min_peak=0.97)), sure)  # >=
    assert not apply(prob, PostprocessConfig(min_peak=0.98)).any()
    for off in (0.0, 0.3, 0.5):    # at or under the threshold: nothing removed
        np.testing.assert_array_equal(apply(prob, PostprocessConfig(min_peak=off)), both)
    # the largest component kept is the largest that is sure somewhere, not the largest
    np.testing.assert_array_equal(
        apply(prob, PostprocessConfig(min_peak=0.9, keep_largest=True)), sure)
    # the outline is still drawn at the threshold, not at min_peak
    assert int(apply(prob, PostprocessConfig(min_peak=0.9)).sum()) == 9


def test_tune_finds_min_peak_that_empties_a_doubtful_frame() -> None:
    # frame 1: a small structure the network is sure of; frame 2: empty, with a larger doubtful
    # false structure. No threshold or minimum area separates them; a minimum peak does.
    sure = np.zeros((30, 30), bool)
    sure[5:10, 5:10] = True
    doubtful = np.zeros((30, 30), bool)
    doubtful[10:25, 10:25] = True
    probs = [_prob(sure, inside=0.99), _prob(doubtful, inside=0.85)]
    truths = [sure, np.zeros_like(sure)]
    cfg, score = tune(probs, truths, min_peaks=(0.0,))
    assert score == pytest.approx(0.5)
    cfg, score = tune(probs, truths)
    assert score == 1.0
    assert cfg == PostprocessConfig(threshold=0.5, min_peak=0.9)    # the lowest that works
    # a min_peak at or under the chosen threshold is reported as 0 (off)
    cfg, _ = tune([_prob(sure, inside=0.99)], [sure], thresholds=(0.5,), min_peaks=(0.4,))
    assert cfg.min_peak == 0.0


def test_fill_holes_matches_scipy() -> None:
    rng = np.random.default_rng(3)
    for _ in range(5):
        m = ndimage.gaussian_filter(rng.standard_normal((40, 50)), 1.5) > 0
        np.testing.assert_array_equal(fill_holes(m), ndimage.binary_fill_holes(m))


def test_default_min_areas() -> None:
    assert default_min_areas(256 * 256) == (0, 10, 20, 41, 82, 164, 328, 655, 1311)
    assert default_min_areas(100) == (0, 2)


def _disk(shape: tuple[int, int], cy: int, cx: int, r: float) -> np.ndarray:
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


def test_tune_finds_min_area_that_removes_specks() -> None:
    shape = (32, 32)
    probs, truths = [], []
    for k in range(6):
        truth = _disk(shape, 12 + k, 14, 6.0) if k % 2 == 0 else np.zeros(shape, bool)
        pred = truth.copy()
        pred[28:30, 2 + 3 * k : 4 + 3 * k] = True      # a 4-pixel false speck on every frame
        probs.append(_prob(pred))
        truths.append(truth)
    cfg, score = tune(probs, truths, min_areas=[0, 2, 5, 10, 50, 500])
    assert cfg == PostprocessConfig(threshold=0.5, min_area=5, keep_largest=False, fill_holes=False)
    assert score == pytest.approx(1.0)
    # Without tuning, the empty frames score 0 and the others below 1.
    untuned = np.mean([dice(apply(p, PostprocessConfig()), t) for p, t in zip(probs, truths)])
    assert untuned < 0.5


def test_tune_matches_brute_force() -> None:
    rng = np.random.default_rng(7)
    probs, truths = [], []
    for k in range(6):
        field = ndimage.gaussian_filter(rng.standard_normal((24, 28)), 2.0)
        prob = 1.0 / (1.0 + np.exp(-6.0 * field))
        truth = ndimage.gaussian_filter(field + 0.3 * rng.standard_normal(field.shape), 1.0) > 0.15
        if k == 0:
            truth[:] = False
        prob[(field > 0.2) & (rng.random(field.shape) < 0.15)] = 0.05   # pinholes to fill
        probs.append(prob)
        truths.append(truth)
    assert sum(int(_holes(p >= 0.5).sum()) for p in probs) > 10
    thresholds, areas, peaks = (0.4, 0.5, 0.6), (0, 3, 8, 20), (0.0, 0.55, 0.8, 0.95)
    cfg, score = tune(probs, truths, thresholds=thresholds, min_areas=areas, min_peaks=peaks,
                      min_gain=0.0)
    best = -1.0
    for th, a, q, kl, fh in itertools.product(thresholds, areas, peaks, (False, True),
                                              (False, True)):
        c = PostprocessConfig(threshold=th, min_area=a, min_peak=q, keep_largest=kl,
                              fill_holes=fh)
        best = max(best, float(np.mean([dice(apply(p, c), t) for p, t in zip(probs, truths)])))
    assert score == pytest.approx(best, abs=1e-12)
    achieved = np.mean([dice(apply(p, cfg), t) for p, t in zip(probs, truths)])
    assert achieved == pytest.approx(score, abs=1e-12)


def test_tune_ties_prefer_simple_and_validates() -> None:
    truth = _disk((20, 20), 10, 10, 5.0)
    cfg, score = tune([_prob(truth)], [truth], thresholds=(0.3, 0.45, 0.55, 0.7))
    assert cfg == PostprocessConfig(threshold=0.45, min_area=0)
    assert score == 1.0
    with pytest.raises(UltrasegError):
        tune([], [])
    with pytest.raises(ValueError):
        tune([_prob(truth)], [truth[:10]])


def test_tune_keeps_the_plain_setting_unless_the_gain_is_worth_it() -> None:
    # one frame with a 3-pixel false speck beside a 100-pixel structure: removing the speck
    # gains 2 * 100 / 200 - 2 * 100 / 203 ~ 0.0148 Dice
    prob = np.zeros((40, 40))
    prob[5:15, 5:15] = 0.9
    prob[30, 30:33] = 0.9
    truth = prob[...] > 0
    truth[30, 30:33] = False
    plain = PostprocessConfig(threshold=0.5)
    cfg, score = tune([prob], [truth], thresholds=(0.5,), min_areas=(0, 5), min_gain=0.02)
    assert cfg == plain and score == pytest.approx(200 / 203)
    cfg, score = tune([prob], [truth], thresholds=(0.5,), min_areas=(0, 5), min_gain=0.01)
    assert cfg != plain and score == pytest.approx(1.0)  # the speck removed, one way or another


def test_tune_adds_a_rule_only_for_a_gain_worth_it() -> None:
    # a 100-pixel structure with a one-pixel hole, and a 3-pixel false speck: removing the speck
    # (min_area) scores 198/199, filling the hole as well 1.0, filling alone 200/203, neither
    # 198/202
    prob = np.zeros((40, 40))
    prob[5:15, 5:15] = 0.9
    prob[9, 9] = 0.1
    prob[30, 30:33] = 0.9
    truth = np.zeros((40, 40), bool)
    truth[5:15, 5:15] = True
    grids = {"thresholds": (0.5,), "min_areas": (0, 5), "min_peaks": (0.0,),
             "try_keep_largest": False}
    cfg, score = tune([prob], [truth], min_gain=0.004, **grids)
    assert cfg == PostprocessConfig(min_area=5, fill_holes=True) and score == 1.0
    # both rules gain 0.005 over min_area alone: within 0.01 of the best, one rule is enough
    cfg, score = tune([prob], [truth], min_gain=0.01, **grids)
    assert cfg == PostprocessConfig(min_area=5) and score == pytest.approx(198 / 199)
    cfg, score = tune([prob], [truth], min_gain=0.03, **grids)
    assert cfg == PostprocessConfig() and score == pytest.approx(198 / 202)


def test_tunes_default_margin_is_the_documented_0_005() -> None:
    """README: 'of the settings within 0.005 Dice of the best ... the fewest rules' (train
    calls tune with its default). Filling a one-pixel hole in a 225-pixel structure gains
    0.0022: not worth a rule; removing a 3-pixel speck beside a 100-pixel one gains 0.0148."""
    grids = {"thresholds": (0.5,), "min_areas": (0, 5), "min_peaks": (0.0,),
             "try_keep_largest": False}
    prob = np.zeros((40, 40))
    prob[5:20, 5:20] = 0.9
    prob[9, 9] = 0.1
    truth = np.zeros((40, 40), bool)
    truth[5:20, 5:20] = True
    cfg, score = tune([prob], [truth], **grids)
    assert cfg == PostprocessConfig() and score == pytest.approx(448 / 449)
    assert tune([prob], [truth], min_gain=0.002, **grids)[0] == PostprocessConfig(fill_holes=True)
    speck = np.zeros((40, 40))
    speck[5:15, 5:15] = 0.9
    speck[30, 30:33] = 0.9
    cfg, score = tune([speck], [np.pad(np.ones((10, 10), bool), ((5, 25), (5, 25)))], **grids)
    assert cfg == PostprocessConfig(min_area=5) and score == 1.0


def test_tune_with_tta_matches_brute_force() -> None:
    rng = np.random.default_rng(11)
    probs, flipped, truths = [], [], []
    for k in range(5):
        field = ndimage.gaussian_filter(rng.standard_normal((20, 26)), 2.0)
        truth = ndimage.gaussian_filter(field + 0.3 * rng.standard_normal(field.shape), 1.0) > 0.1
        if k == 0:
            truth[:] = False
        probs.append(1.0 / (1.0 + np.exp(-6.0 * (field + 0.2 * rng.standard_normal(field.shape)))))
        flipped.append(1.0 / (1.0 + np.exp(-6.0 * field)))   # the averaged output: smoother
        truths.append(truth)
    thresholds, areas, peaks = (0.4, 0.5, 0.6), (0, 4, 12), (0.0, 0.8)
    cfg, score = tune(probs, truths, thresholds=thresholds, min_areas=areas, min_peaks=peaks,
                      min_gain=0.0, tta_probs=flipped)
    best = -1.0
    for tta, th, a, q, kl, fh in itertools.product((False, True), thresholds, areas, peaks,
                                                   (False, True), (False, True)):
        c = PostprocessConfig(threshold=th, min_area=a, min_peak=q, keep_largest=kl,
                              fill_holes=fh)
        alt = flipped if tta else probs
        best = max(best, float(np.mean([dice(apply(p, c), t) for p, t in zip(alt, truths)])))
    assert score == pytest.approx(best, abs=1e-12)
    alt = flipped if cfg.tta else probs
    achieved = np.mean([dice(apply(p, cfg), t) for p, t in zip(alt, truths)])
    assert achieved == pytest.approx(score, abs=1e-12)
    with pytest.raises(ValueError):
        tune(probs, truths, tta_probs=flipped[:-1])


def test_tune_turns_tta_on_only_for_a_gain_worth_it() -> None:
    # without TTA a 3-pixel false speck beside a 100-pixel structure (Dice 200/203, 0.0148
    # short of 1); with TTA the speck is gone
    prob = np.zeros((40, 40))
    prob[5:15, 5:15] = 0.9
    flipped = prob.copy()
    prob[30, 30:33] = 0.9
    truth = flipped > 0
    grids = {"thresholds": (0.5,), "min_peaks": (0.0,), "try_keep_largest": False,
             "try_fill_holes": False}
    cfg, score = tune([prob], [truth], min_areas=(0,), min_gain=0.01, tta_probs=[flipped],
                      **grids)
    assert cfg == PostprocessConfig(tta=True) and score == 1.0
    cfg, score = tune([prob], [truth], min_areas=(0,), min_gain=0.02, tta_probs=[flipped],
                      **grids)
    assert cfg == PostprocessConfig() and score == pytest.approx(200 / 203)
    # a minimum area removes the speck as well: one rule each, the same Dice; TTA stays off,
    # as it doubles the prediction time
    cfg, score = tune([prob], [truth], min_areas=(0, 5), min_gain=0.01, tta_probs=[flipped],
                      **grids)
    assert cfg == PostprocessConfig(min_area=5) and score == 1.0


def test_a_tie_between_thresholds_as_far_from_one_half_goes_to_the_lower() -> None:
    """0.3 and 0.7 scoring the same went to 0.7: 0.7 - 0.5 is 0.19999999999999996 in
    floating point, nearer than 0.5 - 0.3."""
    p = np.zeros((8, 8), np.float32)
    p[2:5, 2:5] = 0.9
    cfg, _ = tune([p], [p > 0.5], thresholds=[0.3, 0.7], min_areas=[0], min_peaks=[0],
                  try_keep_largest=False, try_fill_holes=False)
    assert cfg.threshold == 0.3


@pytest.mark.parametrize("empty", ["thresholds", "min_areas"])
def test_an_empty_grid_is_a_user_error(empty) -> None:
    p = np.zeros((8, 8), np.float32)
    with pytest.raises(UltrasegError, match="must not be empty"):
        tune([p], [p > 0.5], **{empty: []})


def test_tune_takes_the_higher_scoring_of_equally_simple_settings() -> None:
    """Thresholds 0.3 and 0.7 are each one rule away from 0.5: the better one wins (the tie
    on simplicity was broken by order, which could ship a setting min_gain worse)."""
    truth = np.zeros((20, 20), bool)
    prob = np.zeros((20, 20))
    truth[0:9, 0:5] = True
    prob[0:9, 0:5] = 0.75                        # 45 px found at every threshold
    truth[9, 0:5] = True
    prob[9, 0:5] = 0.4                           # 5 px found at 0.3 only
    prob[15, 0:10] = 0.55                        # 10 false px above 0.5
    prob[18, 0:3] = 0.4                          # 3 false px above 0.3
    # Dice: 0.7 -> 0.947, 0.5 -> 0.857, 0.3 -> 0.885
    cfg, score = tune([prob], [truth], thresholds=(0.5, 0.3, 0.7), min_areas=(0,),
                      try_keep_largest=False, try_fill_holes=False, min_peaks=(0.0,),
                      min_gain=0.08)
    assert cfg.threshold == 0.7 and score == pytest.approx(90 / 95)


def test_min_peak_counts_as_a_rule_that_must_earn_its_place() -> None:
    truth = np.zeros((20, 20), bool)
    truth[2:12, 2:12] = True                    # 100 px, confident
    prob = np.zeros((20, 20))
    prob[2:12, 2:12] = 0.99
    prob[15, 15] = 0.6                          # one doubtful false pixel: Dice 200/201
    cfg, _ = tune([prob], [truth], thresholds=(0.5,), min_areas=(0,), try_keep_largest=False,
                  try_fill_holes=False, min_peaks=(0.0, 0.9), min_gain=0.01)
    assert cfg.min_peak == 0.0                  # the gain (0.005) is under min_gain


def _blobby(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """Smooth random probabilities: components of many sizes, holes and peaks."""
    p = ndimage.gaussian_filter(rng.random(shape), 1.5)
    return ((p - p.min()) / (p.max() - p.min())).astype(np.float32)


def test_grid_search_takes_frames_one_at_a_time_and_reads_back_what_apply_gives() -> None:
    """GridSearch is how the end of training chooses without holding the frames: fed the
    frames in tune's order it makes tune's choice, and each frame's Dice and predicted area
    under any setting of the grids are exactly those of apply and metrics.dice (the report's
    figures and the post-processed Dice come from them, the frames long gone)."""
    from ultraseg.postprocess import GridSearch

    rng = np.random.default_rng(4)
    shapes = [(24, 30), (20, 26), (24, 30), (22, 22)]
    probs = [_blobby(rng, s) for s in shapes]
    flipped = [_blobby(rng, s) for s in shapes]
    truths = [_blobby(rng, s) > 0.55 for s in shapes]
    truths[2][:] = False                                       # an empty truth
    search = GridSearch(min(int(np.prod(s)) for s in shapes), alternatives=2)
    order = np.random.default_rng(0).permutation(len(probs))
    for f in order:
        search.add([probs[f], flipped[f]], truths[f])
    assert search.choose() == tune(probs, truths, tta_probs=flipped)
    for row, f in enumerate(order):
        for tta, thr, area, peak, largest, fill in itertools.product(
                (False, True), search.thr, search.areas, search.peak_opts, (False, True),
                (False, True)):
            cfg = PostprocessConfig(threshold=thr, min_area=area,
                                    min_peak=peak if peak > thr else 0.0,
                                    keep_largest=largest, fill_holes=fill, tta=tta)
            m = apply((flipped if tta else probs)[f], cfg)
            assert search.frame(row, cfg) == (dice(m, truths[f]), int(m.sum())), cfg


def _reference_scores(prob: np.ndarray, truth: np.ndarray, search) -> np.ndarray:
    """The grid's Dice as first written: every setting thresholded, its components kept by
    ndimage's own measures (keep_largest with fill_holes: by each one's size filled by scipy)
    and each kept set's holes filled by scipy, the frame whole."""
    out = np.zeros(search.scores[0].shape[1:])
    for (i, th), (j, area), (q, peak), (k, largest), (f, fill) in itertools.product(
            enumerate(search.thr), enumerate(search.areas), enumerate(search.peak_opts),
            enumerate(search.largest_opts), enumerate(search.fill_opts)):
        labels, n = ndimage.label(prob >= th, structure=np.ones((3, 3), bool))
        sizes = np.bincount(labels.ravel(), minlength=n + 1)
        peaks = np.zeros(n + 1)
        if n:
            peaks[1:] = ndimage.maximum(prob, labels, np.arange(1, n + 1))
        kept = (sizes >= max(area, 1)) & (peaks >= peak if peak > 0 else True)
        kept[0] = False
        if largest and kept.any():
            # with hole filling, ranked by each component's own filling (as measure ranks)
            by = ([0] + [int(ndimage.binary_fill_holes(labels == c).sum())
                         for c in range(1, n + 1)]) if fill else sizes
            kept = np.arange(n + 1) == np.argmax(np.where(kept, by, -1))
        m = kept[labels]
        if fill:
            m = ndimage.binary_fill_holes(m)
        out[i, j, q, k, f] = dice(m, truth)
    return out


def _nested_rings(rng: np.random.Generator, size: int) -> np.ndarray:
    """Rings in rings with specks in their holes, at random probabilities: holes in holes."""
    yy, xx = np.mgrid[:size, :size]
    r = np.hypot(yy - size / 2 + rng.uniform(-2, 2), xx - size / 2 + rng.uniform(-2, 2))
    p = np.where((r.astype(int) // 3) % 2 == 0, rng.uniform(0.5, 1.0, r.shape), 0.1)
    p[rng.random(p.shape) < 0.05] = rng.uniform(0.3, 1.0)
    return p.astype(np.float32)


def _ring_around_blob(size: int = 40, ring: float = 0.9, blob: float = 0.9) -> np.ndarray:
    """A 1-px square ring (rows/cols 2..size-3; 140 px at 40) at probability ``ring`` around a
    larger solid blob inside its hole (rows/cols 8..size-9; 576 px at 40) at ``blob``."""
    p = np.zeros((size, size), np.float32)
    p[2:size - 2, 2:size - 2] = ring
    p[3:size - 3, 3:size - 3] = 0.0
    p[8:size - 8, 8:size - 8] = blob
    return p


def _rings_around_blobs(rng: np.random.Generator, size: int) -> np.ndarray:
    """Random rings (1 or 2 px) each around a random blob in its hole, at random peaks: a
    kept component inside the hole of one dropped (by keep_largest, min_area or min_peak)."""
    p = rng.uniform(0.0, 0.2, (size, size)).astype(np.float32)
    for _ in range(int(rng.integers(1, 4))):
        side = int(rng.integers(10, size // 2))
        top, left = (int(v) for v in rng.integers(0, size - side, 2))
        width = int(rng.integers(1, 3))
        p[top:top + side, left:left + side] = rng.uniform(0.5, 1.0)
        p[top + width:top + side - width, left + width:left + side - width] = 0.1
        inner = int(rng.integers(1, side - 2 * width - 1))
        at = top + width + 1, left + width + 1
        p[at[0]:at[0] + inner, at[1]:at[1] + inner] = rng.uniform(0.5, 1.0)
    return p


def test_grid_search_scores_fill_holes_exactly_as_filling_each_kept_set() -> None:
    """The grid fills holes from how the components nest (once per threshold), not by filling
    every kept set of components at full size (about 70 whole-frame fillings a frame, 30 s on
    a 4000x3000 frame): its Dice is identical on smooth and speckled maps, rings nested in
    rings, frames touching the border, NaN, empty and full frames."""
    from ultraseg.postprocess import GridSearch

    rng = np.random.default_rng(11)
    maps = [_blobby(rng, (40, 52)), _blobby(rng, (33, 17)), _nested_rings(rng, 45),
            _nested_rings(rng, 30).astype(np.float64), rng.random((25, 31)),
            (rng.random((30, 30)) > 0.4) * rng.uniform(0.3, 1.0, (30, 30)),
            np.zeros((9, 12)), np.ones((9, 12)), np.full((1, 40), 0.9), np.full((40, 1), 0.9)]
    nan = _blobby(rng, (30, 30))
    nan[rng.random(nan.shape) < 0.1] = np.nan
    maps.append(nan)
    # a kept component in the hole of one removed: by keep_largest (the blob is larger than
    # its ring), and by min_peak (the ring's peak 0.6 under 0.7, the blob's 0.9 over it)
    maps += [_ring_around_blob(), _ring_around_blob(ring=0.6), _rings_around_blobs(rng, 48)]
    for n, prob in enumerate(maps):
        for truth in (_blobby(rng, prob.shape) > 0.5, np.zeros(prob.shape, bool),
                      rng.random(prob.shape) > 0.5):
            search = GridSearch(20 * 20, thresholds=(0.3, 0.5, 0.65, 0.9),
                                min_peaks=(0.0, 0.7, 0.95, 0.99))
            search.add([prob], truth)
            np.testing.assert_array_equal(search.scores[0][0],
                                          _reference_scores(prob, truth, search), err_msg=n)


def test_grid_search_labels_a_frame_a_few_times_per_threshold(monkeypatch) -> None:
    """The grid's cost on a large frame is a few labellings per threshold, not one per kept
    set of components (which made a 4000x3000 frame take 30 s)."""
    from ultraseg import postprocess
    from ultraseg.postprocess import GridSearch

    calls = []
    label = ndimage.label
    monkeypatch.setattr(postprocess.ndimage, "label",
                        lambda *a, **k: calls.append(1) or label(*a, **k))
    rng = np.random.default_rng(2)
    prob = _blobby(rng, (200, 240))
    search = GridSearch(prob.size)
    search.add([prob], _blobby(rng, prob.shape) > 0.5)
    assert len(calls) <= 2 * len(search.thr)


def test_tune_scores_the_frames_in_the_grid_search_s_order(monkeypatch) -> None:
    """Training's validation scores its frames 'in the random order tune scores them in' (a
    time-limited run stops on a random sample): both take GridSearch.order, not each its own
    copy of the permutation."""
    from ultraseg.postprocess import GridSearch

    order = GridSearch.order(7)
    assert sorted(order.tolist()) == list(range(7)) and np.array_equal(order, GridSearch.order(7))
    truths = [_disk((20, 20), 10, 10, 2.0 + k) for k in range(7)]
    probs = [_prob(t) for t in truths]
    added: list[int] = []
    real = GridSearch.add

    def spy(self, frame_probs, truth):
        added.append(next(k for k, t in enumerate(truths) if t is truth))
        return real(self, frame_probs, truth)

    monkeypatch.setattr(GridSearch, "add", spy)
    tune(probs, truths)
    assert added == order.tolist()


@pytest.mark.parametrize("ring", [0.9, 0.6])
def test_grid_search_keeps_a_blob_in_the_hole_of_a_ring_it_drops(ring) -> None:
    """Filling holes in the grid search: a kept component inside the hole of a component that
    min_peak removes is still kept. The grid's own hole filling (the
    components' nesting) could lose it, scoring such a frame Dice 0 where apply gives 1, and
    tune would then choose on wrong scores."""
    from ultraseg.postprocess import GridSearch

    prob = _ring_around_blob(ring=ring)
    truth = np.zeros(prob.shape, bool)
    truth[8:32, 8:32] = True                    # the blob: 24 x 24 = 576 px
    search = GridSearch(prob.size, thresholds=(0.5,), min_areas=(0,), min_peaks=(0.0, 0.8))
    search.add([prob], truth)
    # by hand: min_peak 0.8 keeps only the blob where the ring's peak is 0.6. The ring is
    # dropped, so nothing encloses anything and fill_holes adds nothing: the blob alone, the
    # truth, Dice 1. keep_largest without hole filling keeps the blob too (576 px > the ring's
    # 36 * 4 - 4 = 140).
    largest = PostprocessConfig(threshold=0.5, keep_largest=True)
    assert search.frame(0, largest) == (1.0, 576)
    # neither rule: the ring is kept and filled, 34 * 34 + 140 = 1296 px, Dice 2 * 576 /
    # (1296 + 576); so with keep_largest, which ranks filled sizes with fill_holes on
    filled_ring = pytest.approx((2 * 576 / (1296 + 576), 1296))
    plain = PostprocessConfig(threshold=0.5, fill_holes=True)
    assert search.frame(0, plain) == filled_ring
    assert search.frame(0, PostprocessConfig(threshold=0.5, keep_largest=True,
                                             fill_holes=True)) == filled_ring
    # min_peak 0.8 drops a ring peaking at 0.6 (the blob alone), not one at 0.9 (as plain)
    peaked = PostprocessConfig(threshold=0.5, min_peak=0.8, fill_holes=True)
    assert search.frame(0, peaked) == ((1.0, 576) if ring < 0.8 else filled_ring)


def _assert_search_scores_as_apply(search: GridSearch, prob: np.ndarray,
                                   truth: np.ndarray) -> None:
    """Every setting of ``search`` (one frame added) scores frame 0 as :func:`apply` masks it:
    its Dice and its predicted area."""
    for thr, area, peak, largest, fill in itertools.product(
            search.thr, search.areas, search.peak_opts, (False, True), (False, True)):
        cfg = PostprocessConfig(threshold=thr, min_area=area,
                                min_peak=peak if peak > thr else 0.0,
                                keep_largest=largest, fill_holes=fill)
        m = apply(prob, cfg)
        assert search.frame(0, cfg) == (dice(m, truth), int(m.sum())), cfg


def test_grid_search_reads_back_what_apply_gives_on_rings_around_blobs() -> None:
    """The grid's Dice and area under every setting, on random frames of rings around blobs
    (components kept in the holes of ones dropped), are those of applying the setting to the
    frame directly (apply, which fills a mask's holes by labelling it, not by the nesting)."""
    from ultraseg.postprocess import GridSearch

    rng = np.random.default_rng(5)
    for n in range(6):
        prob = _rings_around_blobs(rng, 48)
        truth = _rings_around_blobs(rng, 48) >= 0.5 if n % 2 else prob >= 0.5
        search = GridSearch(100, thresholds=(0.3, 0.5, 0.7), min_areas=(0, 40),
                            min_peaks=(0.0, 0.8, 0.95))
        search.add([prob], truth)
        _assert_search_scores_as_apply(search, prob, truth)


def _ring_and_blob() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A ring (a head outlined by its skull alone: 1608 px, 6621 filled) and, apart from it, a
    smaller solid blob (1941 px), both at probability 0.9 (the review's ring.py)."""
    yy, xx = np.mgrid[:160, :160]
    r = np.hypot(yy - 60, xx - 60)
    ring = (r >= 40) & (r < 46)
    blob = (yy - 130) ** 2 + (xx - 130) ** 2 < 25 ** 2
    return np.where(ring | blob, 0.9, 0.05).astype(np.float32), ring, blob


def test_keep_largest_ranks_by_filled_size_when_holes_are_filled() -> None:
    """With fill_holes on, keep_largest keeps what measure calls the largest: components ranked
    with their holes filled, so a ring outweighs a smaller solid blob. Ranked by their own
    pixels, apply kept the blob and deleted the ring, and measure then measured the blob."""
    from ultraseg.measure import largest_component, measure

    prob, ring, blob = _ring_and_blob()
    assert ring.sum() < blob.sum() < fill_holes(ring).sum()
    both = PostprocessConfig(keep_largest=True, fill_holes=True)
    out = apply(prob, both)
    np.testing.assert_array_equal(out, fill_holes(ring))
    np.testing.assert_array_equal(out, largest_component(prob >= 0.5))
    assert measure(out)["area_px"] == measure(prob >= 0.5)["area_px"] == fill_holes(ring).sum()
    # without hole filling the mask keeps what it shows: the blob, the larger in pixels
    np.testing.assert_array_equal(apply(prob, PostprocessConfig(keep_largest=True)), blob)
    # a candidate is ranked by its own filling, not by the ring min_peak removes around it
    nested = _ring_around_blob(ring=0.6)
    np.testing.assert_array_equal(
        apply(nested, PostprocessConfig(min_peak=0.8, keep_largest=True, fill_holes=True)),
        nested >= 0.8)


def test_grid_search_ranks_keep_largest_as_apply_does_on_a_ring_and_a_blob() -> None:
    """The validation grid scores keep_largest + fill_holes exactly as apply gives it: on the
    ring and blob, the filled ring (truth), Dice 1; every other setting as apply too."""
    from ultraseg.postprocess import GridSearch

    prob, ring, blob = _ring_and_blob()
    truth = fill_holes(ring)
    search = GridSearch(prob.size, thresholds=(0.5,), min_areas=(0, 1700, 2000))
    search.add([prob], truth)
    both = PostprocessConfig(threshold=0.5, keep_largest=True, fill_holes=True)
    assert search.frame(0, both) == (1.0, int(truth.sum()))
    for area, peak, largest, fill in itertools.product(
            search.areas, search.peak_opts, (False, True), (False, True)):
        cfg = PostprocessConfig(threshold=0.5, min_area=area, min_peak=peak if peak > 0.5
                                else 0.0, keep_largest=largest, fill_holes=fill)
        m = apply(prob, cfg)
        assert search.frame(0, cfg) == (dice(m, truth), int(m.sum())), cfg
    cfg, score = tune([prob], [truth], thresholds=(0.5,), min_areas=(0,), min_peaks=(0.0,))
    assert score == 1.0 and cfg.fill_holes



def test_grid_search_breaks_keep_largest_ties_as_apply_does() -> None:
    """Components of one size (a ring and a blob of one filled size, squares of one size at
    different peaks): keep_largest keeps the first in raster order among those min_area and
    min_peak leave, in the grid as in apply, under every setting."""
    from ultraseg.postprocess import GridSearch

    prob = np.full((40, 60), 0.05, np.float32)
    prob[2:12, 2:12] = 0.85                   # a ring of 64 px, 100 filled, first
    prob[4:10, 4:10] = 0.05
    prob[2:12, 20:30] = 0.93                  # a blob of 100 px
    prob[20:26, 2:8] = 0.95                   # squares of 36 px, at three peaks
    prob[20:26, 20:26] = 0.99
    prob[20:26, 40:46] = 0.85
    truth = np.zeros(prob.shape, bool)
    truth[20:26, 20:26] = True                # the second square: the tie's choice counts
    search = GridSearch(prob.size, thresholds=(0.5, 0.9), min_areas=(0, 40),
                        min_peaks=(0.0, 0.9, 0.94))
    search.add([prob], truth)
    _assert_search_scores_as_apply(search, prob, truth)


def test_a_structure_hole_filling_absorbs_is_not_named_as_dropped_by_keep_largest() -> None:
    """changes_to_truth named the rules from component counts: a ring whose hole holds an
    island, under keep-largest with fill-holes, was said to lose a structure to keep-largest,
    though apply fills the island into the ring and drops nothing (a re-read, item 4). A rule
    is named where apply without it gives another mask."""
    from ultraseg.postprocess import changes_to_truth

    t = np.zeros((30, 30), bool)
    t[5:25, 5:25] = True
    t[7:23, 7:23] = False               # a ring ...
    t[12:18, 12:18] = True              # ... an island in its hole
    both = PostprocessConfig(keep_largest=True, fill_holes=True)
    assert apply(t.astype(np.float32), both)[12:18, 12:18].all()       # the island kept
    assert changes_to_truth(t, both) == ["fill-holes"]
    # without fill-holes, keep-largest does drop the island
    assert changes_to_truth(t, PostprocessConfig(keep_largest=True)) == ["keep-largest"]


def test_what_the_rules_change_of_a_perfect_prediction_is_named() -> None:
    """changes_to_truth: apply to the truth itself as the probabilities (1 inside, 0 outside),
    and which rules changed it: min-area removing a small structure, keep-largest a second,
    fill-holes filling a hole the truth has; nothing where apply gives the truth back."""
    from ultraseg.postprocess import changes_to_truth

    t = np.zeros((20, 20), bool)
    t[2:10, 2:10] = True                # 64 px
    assert changes_to_truth(t, PostprocessConfig(min_area=60, keep_largest=True,
                                                 fill_holes=True, min_peak=0.99)) == []
    two = t.copy()
    two[14:17, 14:17] = True            # 9 px, a second structure
    assert changes_to_truth(two, PostprocessConfig(keep_largest=True)) == ["keep-largest"]
    assert changes_to_truth(two, PostprocessConfig(min_area=10)) == ["min-area"]
    assert changes_to_truth(two, PostprocessConfig(min_area=10, keep_largest=True)) == [
        "min-area"]                     # the small one goes before keep-largest sees it
    assert changes_to_truth(two, PostprocessConfig(min_area=9, keep_largest=True)) == [
        "keep-largest"]
    ring = t.copy()
    ring[5, 5] = False
    assert changes_to_truth(ring, PostprocessConfig(fill_holes=True)) == ["fill-holes"]
    assert changes_to_truth(ring, PostprocessConfig(threshold=0.3, min_area=5)) == []
    for cfg in (PostprocessConfig(keep_largest=True), PostprocessConfig(min_area=10),
                PostprocessConfig(fill_holes=True)):
        for truth in (t, two, ring, np.zeros_like(t)):
            assert (changes_to_truth(truth, cfg) == []) == np.array_equal(
                apply(truth.astype(np.float32), cfg), truth)


def _a_map() -> np.ndarray:
    prob = np.full((12, 12), 0.1, np.float32)
    prob[3:8, 3:8] = 0.9
    return prob


@pytest.mark.parametrize("scaled, words", [
    (lambda p: (p * 255).astype(np.uint8), r"in \[0, 1\].*0\.\.255"),
    (lambda p: p * 100, r"in \[0, 1\]"),
    (lambda p: p - 0.5, r"in \[0, 1\]"),
    (lambda p: np.where(p > 0.5, np.nan, p), "NaN")],
    ids=["uint8 0..255", "percent", "negative", "nan"])
def test_a_map_outside_0_1_or_with_nan_is_refused(scaled, words) -> None:
    """apply thresholded a map scaled to 0..255 or to percent as it stood, so the whole frame
    became the mask, and NaN pixels were dropped without a word (an API misuse review)."""
    with pytest.raises(ValueError, match=words):
        apply(scaled(_a_map()), PostprocessConfig())
    want = _a_map() >= 0.5          # maps in [0, 1] of any dtype as before
    for same in (_a_map(), _a_map().astype(np.float64), want, want.astype(np.uint8)):
        assert np.array_equal(apply(same, PostprocessConfig()), want)
    assert apply(np.zeros((0, 5), np.float32), PostprocessConfig()).shape == (0, 5)


def test_a_map_rounded_just_past_0_or_1_is_a_probability_map() -> None:
    """ONNX Runtime's CPU sigmoid returns 1.0000001 for some logits near 18, so an exported
    model's map can hold it (and its tile and flip averages keep it): the [0, 1] check refused
    that map as one 'scaled to 0..255' (a re-read). Rounding past either end is taken as the
    probability it is; thresholding is unchanged."""
    prob = _a_map()
    prob[prob >= prob.max()] = np.nextafter(np.float32(1), np.float32(2))
    prob[prob <= prob.min()] = -np.float32(1e-7)
    assert np.array_equal(apply(prob, PostprocessConfig()), prob >= 0.5)


@pytest.mark.parametrize("cfg", [{"threshold": 0.5}, None, 0.5])
def test_a_config_that_is_no_postprocess_config_is_refused(cfg) -> None:
    """A dict, None or a bare threshold raised a raw AttributeError inside apply."""
    with pytest.raises(UltrasegError, match="postprocess must be a PostprocessConfig"):
        apply(_a_map(), cfg)
