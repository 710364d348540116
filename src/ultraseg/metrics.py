"""Per-image segmentation metrics: pure functions on boolean (H, W) masks.

Numpy/scipy only (used by the ONNX-only prediction path). Every metric is computed on ONE image;
dataset figures come from :func:`summarise` over the per-image rows, never from pooled pixels.
A mask is what :func:`binary_mask` takes (bool, or 0 and one other value such as 0/1 or
0/255); a probability map or NaN is refused, not read as every pixel above 0.

The empty rule (decided here, once)
-----------------------------------
An ultrasound frame may show no structure at all (Kaggle nerve: about 60% of frames), so the
degenerate cases are defined rather than left to 0/0:

* truth empty and prediction empty: dice = iou = precision = recall = 1.0 and hd95 = 0.0
  (the frame is perfectly right, as scored in the Kaggle "Ultrasound Nerve Segmentation"
  competition);
* exactly one of them empty: dice = iou = precision = recall = 0.0, so a missed structure and
  a structure invented on an empty frame both score 0. (Only two of these are 0/0: precision
  with an empty prediction, defined 0.0 since nothing present was found; recall with an empty
  truth, defined 0.0 since everything predicted is false.) hd95 = nan: there is no boundary to
  measure a distance to;
* otherwise the ordinary formulas: dice = 2tp / (2tp + fp + fn), iou = tp / (tp + fp + fn),
  precision = tp / (tp + fp), recall = tp / (tp + fn).

HD95 is the 95th-percentile symmetric Hausdorff distance between the mask *boundaries*, with the
same definitions as MONAI's ``compute_hausdorff_distance(percentile=95)`` on unit spacing: the
boundary of a mask is the set of its pixels that have a 4-neighbour outside it (outside the array
counts as outside), the distance from each boundary pixel of one mask to the nearest boundary
pixel of the other is read from a Euclidean distance transform, and the result is the larger of
the two directed 95th percentiles (linear interpolation).
"""
from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import ndimage

from .errors import UltrasegError


#: The empty rule in one phrase, as the CLI and the training report state it.
EMPTY_RULE = "a frame with empty truth and empty prediction scores Dice 1"


def binary_mask(mask: Any, taker: str) -> np.ndarray:
    """``mask`` as bool: a bool array, or numbers (integers or floats alike) holding 0 and at
    most one other value (0/1, 0/255). Anything else is no mask: more than one value besides
    0 (a probability map, a grey image) or NaN is refused (:class:`UltrasegError`, saying
    that ``taker`` takes a mask), as it would read every pixel above 0 as the object."""
    mask = np.asarray(mask)
    if mask.dtype == bool:
        return mask
    if mask.dtype.kind not in "iuf":
        raise UltrasegError(f"{taker} takes a mask (bool, or numbers 0/1 or 0/255), "
                            f"got an array of {mask.dtype}")
    found = mask[mask != 0]
    if found.size and not (found == found.flat[0]).all():       # (NaN equals nothing)
        kind = ("a probability map?" if mask.dtype.kind == "f" else
                "a grey image or probabilities scaled to integers?")
        raise UltrasegError(
            f"{taker} takes a mask (bool, or 0 and one other value such as 0/1 or 0/255), and "
            f"values {_some_values(mask)} are not a mask ({kind}): threshold it (probs >= 0.5) "
            f"or use Predictor.predict, which gives the post-processed mask; for one label of "
            f"a label mask, mask == label")
    return mask != 0


def _some_values(values: np.ndarray) -> str:
    """'2, 229' or '0, 2, 3, ...': the first few distinct values of ``values``."""
    head = np.unique(values.ravel()[:100_000])
    return ", ".join(str(v) for v in head[:3]) + (", ..." if len(head) > 3 else "")


def _pair(pred: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    # masks as measure takes them: a probability map scored every pixel above 0 (bool
    # arrays, what evaluate and train pass, go straight through)
    p, t = binary_mask(pred, "metrics (pred)"), binary_mask(truth, "metrics (truth)")
    if p.shape != t.shape:
        raise ValueError(f"prediction shape {p.shape} differs from truth shape {t.shape}")
    return p, t


def confusion(pred: np.ndarray, truth: np.ndarray) -> tuple[int, int, int, int]:
    """Pixel counts ``(tp, fp, fn, tn)`` of a bool prediction against a bool truth, same shape."""
    p, t = _pair(pred, truth)
    tp = int(np.count_nonzero(p & t))
    fp = int(np.count_nonzero(p)) - tp
    fn = int(np.count_nonzero(t)) - tp
    tn = p.size - tp - fp - fn
    return tp, fp, fn, tn


def _ratio(num: int, den: int, both_empty: bool) -> float:
    if both_empty:
        return 1.0
    return num / den if den else 0.0


def dice_from_counts(tp: int, pred_sum: int, truth_sum: int) -> float:
    """Dice from pixel counts: ``2 tp / (pred_sum + truth_sum)``; 1.0 when both masks are
    empty (:data:`EMPTY_RULE`)."""
    den = pred_sum + truth_sum
    return 1.0 if den == 0 else 2.0 * tp / den


def dice_from_count_arrays(tp: np.ndarray, pred_sum: np.ndarray,
                           truth_sum: int | np.ndarray) -> np.ndarray:
    """:func:`dice_from_counts` element by element over integer arrays of counts (broadcast),
    as float64: the same floats, the same :data:`EMPTY_RULE` (post-processing's grid search
    scores many settings at once)."""
    den = np.asarray(pred_sum) + truth_sum
    return np.where(den == 0, 1.0, 2.0 * np.asarray(tp) / np.maximum(den, 1))


def dice(pred: np.ndarray, truth: np.ndarray) -> float:
    """Dice coefficient of two bool (H, W) masks; 1.0 when both are empty."""
    tp, fp, fn, _ = confusion(pred, truth)
    return dice_from_counts(tp, tp + fp, tp + fn)


def iou(pred: np.ndarray, truth: np.ndarray) -> float:
    """Intersection over union of two bool (H, W) masks; 1.0 when both are empty."""
    tp, fp, fn, _ = confusion(pred, truth)
    return _ratio(tp, tp + fp + fn, tp + fp + fn == 0)


def precision(pred: np.ndarray, truth: np.ndarray) -> float:
    """tp / (tp + fp); 1.0 when both are empty, 0.0 when only the prediction is empty."""
    tp, fp, fn, _ = confusion(pred, truth)
    return _ratio(tp, tp + fp, tp + fp + fn == 0)


def recall(pred: np.ndarray, truth: np.ndarray) -> float:
    """tp / (tp + fn); 1.0 when both are empty, 0.0 when only the truth is empty."""
    tp, fp, fn, _ = confusion(pred, truth)
    return _ratio(tp, tp + fn, tp + fp + fn == 0)


def boundary(mask: np.ndarray) -> np.ndarray:
    """Pixels of a bool (H, W) mask with a 4-neighbour outside it (array edge = outside)."""
    return outline(mask, 1)


def outline(mask: np.ndarray, thickness: int = 1) -> np.ndarray:
    """The outline of a bool (H, W) mask: the mask minus its binary erosion, ``thickness`` px.

    The array edge counts as outside, so a mask touching the edge is closed there. Returns bool
    (H, W).
    """
    m = np.asarray(mask, dtype=bool)
    out = np.zeros(m.shape, dtype=bool)
    rows = np.flatnonzero(m.any(axis=1))
    if rows.size == 0:
        return out
    cols = np.flatnonzero(m.any(axis=0))
    box = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
    sub = m[box]
    # Same as scipy.ndimage.binary_erosion(sub, iterations=thickness, border_value=0) with the
    # 4-neighbour cross, done with slices on the mask's bounding box (several times faster).
    eroded = sub
    for _ in range(max(1, int(thickness))):
        p = np.pad(eroded, 1)
        eroded = p[1:-1, 1:-1] & p[:-2, 1:-1] & p[2:, 1:-1] & p[1:-1, :-2] & p[1:-1, 2:]
    out[box] = sub & ~eroded
    return out


def hd95(
    pred: np.ndarray, truth: np.ndarray, spacing: float | Sequence[float] = 1.0
) -> float:
    """95th-percentile symmetric Hausdorff distance between the boundaries of two bool masks.

    ``spacing``: pixel size, one number or one per axis (rows, columns); the result is in its
    unit (pixels by default; other counts of values, or a string, are an
    :class:`UltrasegError`). Both masks empty: 0.0; exactly one empty: nan.
    """
    p, t = _pair(pred, truth)
    # (three values for a 2D mask raised numpy's broadcasting error; "1", ["1", "3"] and
    # True were read as numbers)
    given = np.asarray(spacing)
    if given.dtype.kind not in "iuf" or given.ndim > 1 or given.size not in (1, p.ndim):
        raise UltrasegError(f"hd95 spacing must be one pixel size or one per axis ({p.ndim} for "
                            f"a {p.ndim}D mask), got {spacing!r}")
    sampling = np.broadcast_to(np.asarray(spacing, dtype=np.float64), (p.ndim,))
    if not (np.all(np.isfinite(sampling)) and np.all(sampling > 0)):
        raise ValueError(f"spacing must be positive, finite pixel sizes, got {spacing!r}")
    p_any, t_any = bool(p.any()), bool(t.any())
    if not p_any and not t_any:
        return 0.0
    if not (p_any and t_any):
        return math.nan
    # on the box around both masks (and a pixel of background about it, where boundary()
    # finds the same edges): every distance measured runs inside it, and the two distance
    # transforms over a whole 4000 x 4000 frame took 4.6 s where the box takes 0.14 s
    # (the rows and columns that hold any: np.nonzero's coordinates of every foreground pixel
    # took 16 bytes each, 0.7 GB on an 8000 x 6000 frame a weak model fills)
    either = p | t
    rows, cols = np.flatnonzero(either.any(axis=1)), np.flatnonzero(either.any(axis=0))
    del either
    box = (slice(max(rows[0] - 1, 0), rows[-1] + 2), slice(max(cols[0] - 1, 0), cols[-1] + 2))
    bp, bt = boundary(p[box]), boundary(t[box])
    to_t, to_p = _distances_at(bt, bp, sampling), _distances_at(bp, bt, sampling)
    return float(max(np.percentile(to_t, 95), np.percentile(to_p, 95)))


def _distances_at(target: np.ndarray, at: np.ndarray, sampling: np.ndarray) -> np.ndarray:
    """``ndimage.distance_transform_edt(~target, sampling=sampling)[at]``, the same values,
    computed at the ``at`` pixels only: the whole frame's float64 distances, and the index
    grid scipy takes them from, held 3 times the frame's feature transform (about 30 bytes a
    pixel, 1.7 GB for an 8000 x 6000 frame's HD95)."""
    ft = ndimage.distance_transform_edt(~target, sampling=sampling, return_distances=False,
                                        return_indices=True)
    where = np.nonzero(at)
    dt = np.stack([ft[k][where] - where[k].astype(ft.dtype) for k in range(target.ndim)])
    del ft
    dt = dt.astype(np.float64)
    for k in range(target.ndim):     # as scipy: scaled, squared, summed along the axes, root
        dt[k, ...] *= sampling[k]
    np.multiply(dt, dt, dt)
    out = np.add.reduce(dt, axis=0)
    np.sqrt(out, out)
    return out


def image_metrics(
    pred: np.ndarray, truth: np.ndarray, spacing: float | Sequence[float] | None = None
) -> dict[str, Any]:
    """All per-image metrics of bool (H, W) masks as one row.

    Keys: dice, iou, precision, recall, hd95 (pixels), hd95_mm (only when ``spacing``, the pixel
    size in mm, is given), truth_empty, pred_empty.
    """
    p, t = _pair(pred, truth)
    tp, fp, fn, _ = confusion(p, t)
    both_empty = tp + fp + fn == 0
    row: dict[str, Any] = {
        "dice": dice_from_counts(tp, tp + fp, tp + fn),
        "iou": _ratio(tp, tp + fp + fn, both_empty),
        "precision": _ratio(tp, tp + fp, both_empty),
        "recall": _ratio(tp, tp + fn, both_empty),
        "hd95": hd95(p, t),
    }
    if spacing is not None:
        row["hd95_mm"] = hd95(p, t, spacing)
    row["truth_empty"] = tp + fn == 0
    row["pred_empty"] = tp + fp == 0
    return row


def _mean(values: list[float]) -> float | None:
    return float(np.mean(values)) if values else None


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Dataset summary of :func:`image_metrics` rows (one per image).

    Keys: ``n``; ``dice_mean``, ``iou_mean``, ``precision_mean``, ``recall_mean`` over all
    frames (empty rule included); ``dice_nonempty_mean`` over frames with non-empty truth;
    ``hd95_median`` (and ``hd95_mm_median`` over ``hd95_mm_n`` of them when rows carry
    ``hd95_mm``, only frames with a pixel size having one) over the ``hd95_n``
    frames where truth and prediction both hold a boundary: a frame with nothing to find and
    nothing found (HD95 0 by :func:`hd95`) would pull the median towards 0, and a missed or
    invented structure has no distance; both are counted by Dice and ``empty_correct_rate``
    instead. ``empty_correct_rate``: fraction of empty-truth frames predicted empty. A figure
    with no frame to average over is ``None``. Where every row names its ``subject``:
    ``n_subjects`` and the 95 % intervals ``dice_mean_ci95`` and ``dice_nonempty_mean_ci95``
    (``[low, high]``, subjects resampled: :func:`subject_interval`; None under two subjects),
    and ``dice_mean_ci95_method``, which interval they are (:func:`interval_words`; None
    with them).
    """
    out: dict[str, Any] = {"n": len(rows)}
    for key in ("dice", "iou", "precision", "recall"):
        out[f"{key}_mean"] = _mean([float(r[key]) for r in rows])
    out["dice_nonempty_mean"] = _mean([float(r["dice"]) for r in rows if not r["truth_empty"]])
    both = [r for r in rows if not r["truth_empty"] and not r["pred_empty"]]
    out["hd95_n"] = len(both)
    for key in ("hd95", "hd95_mm"):
        if key == "hd95_mm" and not any(key in r for r in rows):
            continue
        values = [float(r[key]) for r in both if key in r]
        out[f"{key}_median"] = float(np.median(values)) if values else None
        if key == "hd95_mm":    # frames without a pixel size have no mm figure: fewer
            out["hd95_mm_n"] = len(values)
    empty = [bool(r["pred_empty"]) for r in rows if r["truth_empty"]]
    out["empty_correct_rate"] = _mean([float(e) for e in empty])
    if rows and all("subject" in r for r in rows):
        subjects = [str(r["subject"]) for r in rows]
        out["n_subjects"] = len(set(subjects))
        dice_values = [float(r["dice"]) for r in rows]
        nonempty = [not r["truth_empty"] for r in rows]
        out["dice_mean_ci95"] = subject_interval(dice_values, subjects)
        out["dice_nonempty_mean_ci95"] = subject_interval(
            [d for d, k in zip(dice_values, nonempty) if k],
            [s for s, k in zip(subjects, nonempty) if k], among=subjects)
        out["dice_mean_ci95_method"] = (None if out["dice_mean_ci95"] is None
                                        else interval_words(out["n_subjects"], len(rows)))
    return out


#: Subjects up to which :func:`subject_interval` weighs every multiset of them, not draws:
#: C(2n - 1, n) multisets, 92378 at 10 (352716 at 11).
EXACT_SUBJECTS = 10
#: Fewest draws of :func:`subject_interval` over more subjects, and the draws it keeps beyond
#: each end at least (:func:`interval_draws`): 2000 draws alone left about 11 beyond the
#: expanded ends of 8 subjects, and the third decimal printed moved with the subjects' names.
#: At 95 % the ends ask more than 2000 (the floor counts for wider tails, lower levels).
RESAMPLES = 2000
BEYOND_EACH_END = 200
#: Subject counts of the draws :func:`subject_interval` holds at a time (8 bytes each).
_DRAWN = 1 << 21


def interval_draws(n: int, level: float = 0.95) -> int:
    """The draws :func:`subject_interval` makes over ``n`` (>= 2) subjects where it draws:
    :data:`BEYOND_EACH_END` or more beyond each expanded end, and :data:`RESAMPLES` at least
    (at 95 %: about 20600 for 11 subjects, the fewest drawn for, 8000 for thousands)."""
    return max(RESAMPLES, math.ceil(BEYOND_EACH_END / expanded_tail(1 - level, n)))


def interval_method(n: int, level: float = 0.95) -> str | int:
    """How :func:`subject_interval` gets its bootstrap distribution over ``n`` subjects:
    ``"exact"`` (every multiset, up to :data:`EXACT_SUBJECTS`), else the number of draws."""
    return "exact" if n <= EXACT_SUBJECTS else interval_draws(n, level)


def interval_words(n_subjects: int, n_frames: int, level: float = 0.95,
                   seed: int = 0) -> str:
    """Which interval :func:`subject_interval` gives over ``n_subjects`` subjects of
    ``n_frames`` frames, as summary.json's ``dice_mean_ci95_method`` says it: ``subject
    bootstrap, expanded percentile, exact``, or ``..., 20572 draws (seed 0)``; a ``frame
    bootstrap (each frame its own subject)`` where there are as many subjects as frames."""
    unit = ("frame bootstrap (each frame its own subject)" if n_subjects == n_frames
            else "subject bootstrap")
    how = interval_method(n_subjects, level)
    few = few_subjects_words(n_subjects, level)
    return (f"{unit}, expanded percentile, "
            + ("exact" if how == "exact" else f"{how} draws (seed {seed})")
            + (f"; {few}" if few else ""))


def covers_at_most(n: int) -> float:
    """How often, at most, an interval from the bootstrap of ``n`` subjects covers the mean:
    every such interval lies within the range of the subjects' means, and that range misses
    the mean where all ``n`` fall on one side of it, ``p**n + (1 - p)**n`` for a share ``p``
    above, at least ``2 * 2**-n``. So ``1 - 2**(1 - n)``: 50 % for 2 subjects, 75 % for 3,
    87.5 % for 4, 93.75 % for 5, over 95 % from 6."""
    return 1 - 2.0 ** (1 - n)


def few_subjects_words(n: int, level: float = 0.95) -> str | None:
    """``only N subjects: covers the mean at most X % of the time, not 95 %`` where ``n``
    subjects cannot give an interval of ``level`` (:func:`covers_at_most`); None where they
    can, or where there is no interval (under 2). The one rule for the interval's label and
    words in evaluate's printed summary and summary.json's method (no warning is logged)."""
    cap = covers_at_most(n)
    if n < 2 or cap >= level:
        return None
    return (f"only {n} subjects: covers the mean at most {cap * 100:g} % of the time, "
            f"not {level * 100:g} %")


def interval_label(n: int, level: float = 0.95) -> str:
    """An interval over ``n`` subjects as printed: ``95% interval``, or ``interval (N
    subjects)`` where they cannot give one of ``level`` (:func:`few_subjects_words`)."""
    return f"interval ({n} subjects)" if few_subjects_words(n, level) else f"{level:.0%} interval"


def subject_interval(values: Sequence[float], subjects: Sequence[str],
                     among: Sequence[str] | None = None, level: float = 0.95,
                     resamples: int | None = None, seed: int = 0,
                     expanded: bool = True) -> list[float] | None:
    """The expanded percentile bootstrap interval (``level``) of the mean of ``values`` (one
    per frame) with the subjects, not the frames, drawn with replacement: one patient's frames
    are one sweep, not independent samples, and an interval over frames would be far too
    narrow. The mean is over frames (each subject weighted by its frame count): the sum of the
    drawn subjects' values over the sum of their frame counts. Expanded (Hesterberg 2015): the
    percentiles are taken at the level a Student t interval over the n subjects would give,
    ``2 * Phi(-sqrt(n / (n - 1)) * t(1 - a/2, n - 1))`` in place of ``a = 1 - level``, as the
    plain percentile interval is too narrow for few subjects (in a seeded simulation its 95 %
    covered the mean 84 % of the time with 5 subjects and 89 % with 8:
    ``tests/test_metrics.py``; this one over 90 %). Under 6 subjects no bootstrap interval
    reaches 95 %: it lies within the range of their means (:func:`covers_at_most`: 75 % for
    3, 87.5 % for 4, 93.75 % for 5; with 2 to 4 it is that range). ``expanded=False``:
    the plain percentile interval (at ``a/2``), for comparison.

    Up to :data:`EXACT_SUBJECTS` subjects the bootstrap distribution is exact: every multiset
    of n subjects weighed by its multinomial probability, no draws, no seed. Over more,
    :func:`interval_draws` draws (``resamples``, where given, in either case), seeded.
    Either way the interval does not depend on the subjects' names or order: they are taken
    in the order of their frame counts and sums. The percentiles of the exact distribution:
    the lowest mean with at least the tail's probability at or below it, and the highest
    with as much at or above it.

    ``subjects`` names each value's subject; ``among`` the subjects drawn from (default: those
    of ``values``; a subject of ``among`` with no value, as one whose frames are all empty for
    a non-empty mean, is drawn and adds nothing). Resamples that draw no value are left out.
    None where fewer than two subjects hold a value: there is no spread to resample.
    Memory: a block of draws of at most :data:`_DRAWN` counts at a time, whatever the number
    of subjects (every frame its own subject, as in BUSI, makes them thousands).
    """
    if len(set(subjects)) < 2:
        return None
    names = sorted(set(among if among is not None else subjects) | set(subjects))
    index = {s: k for k, s in enumerate(names)}
    of = np.array([index[s] for s in subjects], np.int64)
    vals = np.asarray(values, np.float64)
    by = np.lexsort((vals, of))             # each subject's values summed in one order
    sums = np.bincount(of[by], weights=vals[by], minlength=len(names))
    counts = np.bincount(of, minlength=len(names)).astype(np.float64)
    order = np.lexsort((sums, counts))      # not by name: renamed subjects, the same draws
    sums, counts = sums[order], counts[order]
    k = len(names)
    tail = expanded_tail(1 - level, k) if expanded else (1 - level) / 2
    if resamples is None and k <= EXACT_SUBJECTS:
        drawn, weight = _multisets(k)
        total, n = drawn @ sums, drawn @ counts
        return _weighted_ends(total[n > 0] / n[n > 0], weight[n > 0], tail)
    rng = np.random.default_rng(seed)
    draws = interval_draws(k, level) if resamples is None else resamples
    block = max(1, _DRAWN // k)
    same = bool((counts == counts[0]).all())    # (BUSI: a frame each) n is k of them
    means = []
    for start in range(0, draws, block):
        drawn_ = rng.integers(0, k, size=(min(block, draws - start), k), dtype=np.int32)
        total = sums[drawn_].sum(axis=1)
        n = np.full(len(total), k * counts[0]) if same else counts[drawn_].sum(axis=1)
        means.append(total[n > 0] / n[n > 0])
    lo, hi = np.percentile(np.concatenate(means), [tail * 100, 100 - tail * 100])
    return [float(lo), float(hi)]


@functools.lru_cache(maxsize=4)
def _multisets(k: int) -> tuple[np.ndarray, np.ndarray]:
    """Every multiset of ``k`` draws from ``k`` subjects, as counts (one row each), and its
    probability, ``k! / (prod(counts!) * k**k)``: the bars of stars and bars."""
    bars = np.array(list(itertools.combinations(range(2 * k - 1), k - 1)), np.int64)
    bars = bars.reshape(-1, k - 1)
    edges = np.hstack([np.full((len(bars), 1), -1), bars, np.full((len(bars), 1), 2 * k - 1)])
    drawn = (np.diff(edges, axis=1) - 1).astype(np.float64)
    log_factorial = np.array([math.lgamma(c + 1) for c in range(k + 1)])
    weight = np.exp(log_factorial[k] - log_factorial[drawn.astype(np.int64)].sum(axis=1)
                    - k * math.log(k))
    drawn.flags.writeable = weight.flags.writeable = False     # (cached: shared)
    return drawn, weight


def _weighted_ends(means: np.ndarray, weight: np.ndarray, tail: float) -> list[float]:
    """The ``tail`` and ``1 - tail`` percentiles of the discrete distribution of ``means``
    (their probabilities ``weight``): the lowest mean with ``tail`` of the probability at or
    below it, the highest with as much at or above it."""
    order = np.argsort(means, kind="stable")
    means, weight = means[order], weight[order] / weight[order].sum()
    below = np.cumsum(weight)
    above = np.cumsum(weight[::-1])
    return [float(means[np.argmax(below >= tail)]),
            float(means[::-1][np.argmax(above >= tail)])]


def expanded_tail(alpha: float, n: int) -> float:
    """The share of bootstrap means below the expanded percentile interval of level
    ``1 - alpha`` over ``n`` (>= 2) subjects (:func:`subject_interval`): ``Phi(-sqrt(n/(n-1))
    * t_{n-1}(1 - alpha/2))``, below ``alpha / 2`` and nearing it as ``n`` grows."""
    from scipy.stats import norm, t

    return float(norm.sf(math.sqrt(n / (n - 1)) * t.ppf(1 - alpha / 2, n - 1)))


def improves(val_dice: float, val_loss: float, best_dice: float, best_loss: float,
             sampled: bool = False, best_full: bool = False) -> bool:
    """Whether an epoch's validation beats the best so far: a higher Dice, or the same Dice
    at a lower loss (every epoch scoring Dice 0 before the network finds anything would
    otherwise keep the first, least trained one). NaN never improves. An epoch validated on a
    sample of the validation frames (``sampled``: the time limit had passed) never beats a
    best validated on all of them (``best_full``): a few frames' Dice is another figure, and
    a lucky sample would take the best checkpoint. The one rule that picks a run's best
    epoch, in training and in its report."""
    if sampled and best_full:
        return False
    return val_dice > best_dice or (val_dice == best_dice and val_loss < best_loss)
