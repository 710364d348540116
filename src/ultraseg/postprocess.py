"""From a probability map to a mask, and the choice of how, on the validation frames.

Numpy/scipy only (used by the ONNX-only prediction path).

:func:`apply` runs, in this order:

1. threshold: a pixel is foreground when ``prob >= cfg.threshold`` (NaN is background);
2. connected components (8-connectivity) smaller than ``cfg.min_area`` pixels are removed, and
   so are those whose highest probability is under ``cfg.min_peak`` (hysteresis thresholding:
   a structure is outlined at ``threshold`` but kept only where the network is sure of it
   somewhere; a ``min_peak`` at or under ``threshold`` removes nothing);
3. with ``cfg.keep_largest``, only the largest remaining component is kept (ties: the first in
   raster order); with ``cfg.fill_holes`` too, components are ranked with their holes filled,
   the size the mask will have, as :mod:`ultraseg.measure` ranks them for its object: a ring
   (a head outlined by its skull alone) outweighs a smaller solid blob;
4. with ``cfg.fill_holes``, holes are filled: background regions not 4-connected to the image
   border, exactly as ``scipy.ndimage.binary_fill_holes`` (done by labelling the background,
   several times faster on large frames).

:func:`apply` takes the probabilities as they come: ``cfg.tta`` (test-time augmentation, the
network's output averaged with that of the horizontally flipped frame) is the predictor's to
apply, before them (:class:`ultraseg.predict.Predictor`).

:func:`tune` grid-searches those five settings, and TTA where given its probabilities, for the
best mean Dice (with the empty rule of :mod:`ultraseg.metrics`) over validation frames;
:class:`GridSearch` makes the same choice taking the frames one at a time.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import replace

import numpy as np
from scipy import ndimage

from .config import PostprocessConfig, check_postprocess
from .errors import UltrasegError
from .metrics import dice_from_count_arrays, dice_from_counts

logger = logging.getLogger(__name__)

_EIGHT = np.ones((3, 3), dtype=bool)

#: Default threshold grid for :func:`tune`: 0.30, 0.35, ..., 0.70.
DEFAULT_THRESHOLDS: tuple[float, ...] = tuple(round(0.3 + 0.05 * i, 2) for i in range(9))

#: Default ``min_peak`` grid for :func:`tune`: 0 (off), then peaks a confident network's
#: structures reach and a doubtful false one may not.
DEFAULT_MIN_PEAKS: tuple[float, ...] = (0.0, 0.8, 0.9, 0.95, 0.98, 0.99)


def _prob2d(prob: np.ndarray) -> np.ndarray:
    p = np.asarray(prob)
    if p.ndim != 2:
        raise ValueError(f"expected a 2D probability map (H, W), got shape {p.shape}")
    return p


def _holes(mask: np.ndarray) -> np.ndarray:
    """Background pixels of a bool (H, W) mask that are not 4-connected to the border."""
    labels, n = ndimage.label(~mask)
    if n == 0:
        return np.zeros_like(mask)
    hole = np.ones(n + 1, dtype=bool)
    hole[0] = False
    hole[labels[0]] = False
    hole[labels[-1]] = False
    hole[labels[:, 0]] = False
    hole[labels[:, -1]] = False
    return hole[labels]


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """Fill the holes of a bool (H, W) mask; same result as ``ndimage.binary_fill_holes``."""
    m = np.asarray(mask, dtype=bool)
    return m | _holes(m)


def _first_pixels(labels: np.ndarray, n: int) -> np.ndarray:
    """Flat index (n,) of the first pixel in raster order of each of the labels 1..n."""
    flat = labels.ravel()
    where = np.flatnonzero(flat)
    first = np.full(n + 1, flat.size, dtype=np.int64)
    np.minimum.at(first, flat[where], where)
    return first[1:]


class _Nesting:
    """How a thresholded frame's components and the holes among them nest, for the holes any
    subset of the components has without filling each subset's.

    With 8-connected components and 4-connected background, the components and the
    background regions form a tree (Rosenfeld's adjacency tree): each region is surrounded by
    its parent, the one adjacent region that does not surround it, found just above the
    region's first pixel (its top row is not surrounded by anything under it); the root is the
    background that reaches the border. Filling the holes of some of the components fills
    exactly the regions under a kept component: the union of each kept component's own
    filling (disjoint components, none touching another, enclose nothing together).

    Nodes: 0 the root, 1..n the components (their labels), n + 1.. the holes.
    """

    def __init__(self, mask: np.ndarray, labels: np.ndarray, sizes: np.ndarray,
                 tp_comp: np.ndarray, truth: np.ndarray) -> None:
        """``sizes`` and ``tp_comp``: each component's pixels and true positives (n + 1,)."""
        n = len(sizes) - 1
        width = mask.shape[1]
        back, nb = ndimage.label(~mask)
        hole = np.ones(nb + 1, dtype=bool)
        hole[0] = False
        for edge in (back[0], back[-1], back[:, 0], back[:, -1]):
            hole[edge] = False
        node = np.zeros(nb + 1, dtype=np.int64)     # background label -> node (0: the root)
        self.holes = int(hole.sum())
        node[hole] = np.arange(n + 1, n + 1 + self.holes)
        parent = np.zeros(n + 1 + self.holes, dtype=np.int64)
        if self.holes:
            top = _first_pixels(labels, n)
            above = top >= width                    # a first pixel in row 0: the root's
            parent[1:n + 1][above] = node[back.ravel()[top[above] - width]]
            # a hole's first pixel is never in row 0; the pixel above it is a component's
            top = _first_pixels(np.where(hole[back], back, 0), nb)[hole[1:]]
            parent[n + 1:] = labels.ravel()[top - width]
            sums = np.bincount(back.ravel(), minlength=nb + 1)[hole]
            tps = np.bincount(back[truth], minlength=nb + 1)[hole]
        else:
            sums = tps = np.zeros(0, dtype=np.int64)
        self.parent = parent
        self.sizes = np.concatenate([sizes, sums])
        self.tps = np.concatenate([tp_comp, tps])
        # nodes by depth, for the coverage to flow from each node to its children
        depth = np.zeros(len(parent), dtype=np.int64)
        up = parent.copy()
        for _ in range(len(parent)):                # a tree: no deeper than its nodes
            if not up.any():
                break
            depth += up > 0
            up = parent[up]
        self.levels = [np.flatnonzero(depth == d) for d in range(1, int(depth.max()) + 1)]
        # each component's pixels with its own holes filled (all under it), for keep_largest
        enclosed = self.sizes.copy()
        for nodes in reversed(self.levels):
            np.add.at(enclosed, parent[nodes], enclosed[nodes])
        self.enclosed = enclosed[:n + 1]

    def filled(self, kept: np.ndarray) -> tuple[int, int]:
        """Pixels and true positives of the kept components (bool (n + 1,)) with their holes
        filled."""
        covered = np.zeros(len(self.parent), dtype=bool)
        covered[:len(kept)] = kept
        for nodes in self.levels:
            covered[nodes] |= covered[self.parent[nodes]]
        return int(self.sizes[covered].sum()), int(self.tps[covered].sum())


def _components(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """8-connected labels int (H, W) and sizes int (n + 1,) with sizes[0] == 0."""
    labels, n = ndimage.label(mask, structure=_EIGHT)
    sizes = np.bincount(labels.ravel(), minlength=n + 1)
    sizes[0] = 0
    return labels, sizes


def _peaks(prob: np.ndarray, labels: np.ndarray, n: int) -> np.ndarray:
    """Highest probability of each of the ``n`` components (n + 1,); entry 0 is unused."""
    # as ndimage.maximum, without its sort of the whole frame; in the probabilities' own
    # float type (numpy's fast path for float32), the peaks exactly
    kind = prob.dtype if prob.dtype.kind == "f" else np.dtype(np.float64)
    peaks = np.full(n + 1, -np.inf, dtype=kind)
    if n:
        where = np.flatnonzero(labels)
        np.maximum.at(peaks, labels.ravel()[where], prob.ravel()[where])
    peaks[0] = 0.0
    return peaks.astype(np.float64)


def _kept(sizes: np.ndarray, min_area: int, keep_largest: bool,
          peaks: np.ndarray | None = None, min_peak: float = 0.0,
          rank: np.ndarray | None = None) -> np.ndarray:
    """Bool lookup (n + 1,) of the components that survive; entry 0 (background) is False.
    ``rank``: the sizes keep_largest compares (default ``sizes``; with holes filled, each
    component's filled size)."""
    return _kept_grid(sizes, [min_area], keep_largest, peaks, [min_peak], rank)[0, 0]


def _kept_grid(sizes: np.ndarray, min_areas: Sequence[int], keep_largest: bool,
               peaks: np.ndarray | None = None, min_peaks: Sequence[float] = (0.0,),
               rank: np.ndarray | None = None) -> np.ndarray:
    """:func:`_kept` under every pair of a min_area and a min_peak at once: bool
    (len(min_areas), len(min_peaks), n + 1), as numpy operations, not a loop of them (the
    grid search's 54 pairs per threshold)."""
    floors = np.maximum(np.asarray(min_areas, dtype=np.int64), 1)[:, None, None]
    kept = np.repeat(sizes >= floors, len(min_peaks), axis=1)
    if peaks is not None:
        peak_floors = np.asarray(min_peaks, dtype=np.float64)[:, None]
        kept &= (peak_floors <= 0) | (peaks >= peak_floors)
    kept[..., 0] = False
    if keep_largest:
        by = sizes if rank is None else rank
        largest = np.argmax(np.where(kept, by, -1), axis=-1)  # ties: first in raster order
        one = np.zeros_like(kept)
        np.put_along_axis(one, largest[..., None], kept.any(axis=-1, keepdims=True), axis=-1)
        kept = one
    return kept


def largest_filled(mask: np.ndarray, labels: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """The largest 8-connected component of a bool (H, W) mask holding at least one, its
    holes filled, ranked by that filled size (ties: the first in raster order): the one rule
    for "the largest" of keep_largest with fill_holes and of :mod:`ultraseg.measure`'s object.
    ``labels``, ``sizes``: the mask's components (:func:`_components`; a component labelled
    but outside the mask has size 0). The filled mask is labelled again only where it has
    holes (filled, a mask without holes is itself)."""
    holes = _holes(mask)
    if holes.any():                     # the filled mask's components, sized with their holes
        labels, sizes = _components(mask | holes)
    return labels == int(np.argmax(sizes))


#: How far outside [0, 1] a probability map may stray by float rounding and still be one:
#: ONNX Runtime's CPU sigmoid returns 1.0000001 (1 + 2**-23) for some logits near 18.
PROB_SLACK = 1e-3


def apply(prob: np.ndarray, cfg: PostprocessConfig) -> np.ndarray:
    """Turn a float (H, W) probability map into a bool (H, W) mask with ``cfg`` (see module).

    ``prob`` holds probabilities in [0, 1], give or take float rounding (ONNX Runtime's
    sigmoid gives 1.0000001 for some logits near 18): a map scaled to 0..255 or to percent, or
    NaN, is refused (ValueError; thresholded as it stood, it made the whole frame the mask,
    and NaN pixels left it in silence); ``cfg`` is a
    :class:`~ultraseg.config.PostprocessConfig` (another type, a dict, is refused:
    UltrasegError)."""
    check_postprocess(cfg)
    p = _prob2d(prob)
    if p.size:
        lo, hi = p.min(), p.max()       # (NaN anywhere makes both NaN)
        if np.isnan(lo) or np.isnan(hi):
            raise ValueError("the probability map holds NaN (a model that gave NaN, or a "
                             "map made elsewhere); expected probabilities in [0, 1]")
        if not (lo >= -PROB_SLACK and hi <= 1 + PROB_SLACK):
            scale = " (scaled to 0..255 or to percent? divide it by 255 or 100)" if hi > 1 else ""
            raise ValueError(f"expected a probability map in [0, 1], got values from {lo:g} to "
                             f"{hi:g}{scale}")
    mask = p >= cfg.threshold
    peaked = cfg.min_peak > cfg.threshold
    if cfg.min_area > 1 or cfg.keep_largest or peaked:
        labels, sizes = _components(mask)
        peaks = _peaks(p, labels, len(sizes) - 1) if peaked else None
        by_filled = cfg.keep_largest and cfg.fill_holes       # ranked once filled, below
        kept = _kept(sizes, cfg.min_area, cfg.keep_largest and not by_filled, peaks,
                     cfg.min_peak)
        mask = kept[labels]
        if by_filled:
            return largest_filled(mask, labels, np.where(kept, sizes, 0)) if kept.any() else mask
    if cfg.fill_holes:
        mask = fill_holes(mask)
    return mask


#: The rules :func:`changes_to_truth` names, in :func:`apply`'s order, each with its config
#: turned off.
_RULES_OFF = (("min-area", {"min_area": 0}), ("keep-largest", {"keep_largest": False}),
              ("fill-holes", {"fill_holes": False}))


def changes_to_truth(truth: np.ndarray, cfg: PostprocessConfig) -> list[str]:
    """The rules of ``cfg`` that change a perfect prediction of the bool (H, W) mask ``truth``
    (:func:`apply` to the mask as probabilities, 1 inside and 0 outside), named as the CLI
    names them: ``"min-area"`` (a structure smaller than it removed), ``"keep-largest"`` (a
    second structure dropped), ``"fill-holes"`` (a hole of the truth filled); ``"threshold"``
    where none of those did it (a threshold of 0). Empty where :func:`apply` gives the truth
    back: a ceiling the chosen post-processing sets whatever the network predicts.

    A rule is named where :func:`apply` without it gives another mask (what its --no- flag
    would keep), not by counting structures: keep-largest with fill-holes keeps an island in
    a ring's hole, filled in. Where no rule alone makes the change (min-area and keep-largest
    both dropping one small second structure), the first in :func:`apply`'s order that does
    is named."""
    t = np.asarray(truth, dtype=bool)
    p = t.astype(np.float32)
    out = apply(p, cfg)
    if np.array_equal(out, t):
        return []
    rules = [name for name, off in _RULES_OFF
             if not np.array_equal(apply(p, replace(cfg, **off)), out)]
    if rules:
        return rules
    for k, (name, _) in enumerate(_RULES_OFF):      # each alone would do it: the first
        rest = {key: v for _, off in _RULES_OFF[k + 1:] for key, v in off.items()}
        before = {key: v for _, off in _RULES_OFF[k:] for key, v in off.items()}
        if not np.array_equal(apply(p, replace(cfg, **rest)), apply(p, replace(cfg, **before))):
            return [name]
    return ["threshold"]


def default_min_areas(area: int, n: int = 8, max_fraction: float = 0.02) -> tuple[int, ...]:
    """Candidate ``min_area`` values for frames of ``area`` pixels.

    0 and a halving series from ``max_fraction`` of the area down (n values), rounded, unique.
    For 256 x 256: (0, 10, 20, 41, 82, 164, 328, 655, 1311).
    """
    series = {int(round(area * max_fraction / 2**k)) for k in range(n)}
    return (0, *sorted(v for v in series if v > 1))


def _score_frame(prob: np.ndarray, truth: np.ndarray, thr: list[float], areas: list[int],
                 peak_opts: list[float], largest_opts: tuple[bool, ...],
                 fill_opts: tuple[bool, ...]) -> tuple[np.ndarray, np.ndarray]:
    """One frame's Dice, and its predicted area (pixels), under every combination of the
    grids, each indexed ``[threshold, min_area, min_peak, keep_largest, fill_holes]``."""
    try_fill_holes = len(fill_opts) > 1
    score = np.zeros((len(thr), len(areas), len(peak_opts), len(largest_opts), len(fill_opts)))
    area = np.zeros(score.shape, dtype=np.int64)
    p = _prob2d(prob)
    t = np.asarray(truth, dtype=bool)
    if t.shape != p.shape:
        raise ValueError(f"probability shape {p.shape} differs from mask shape {t.shape}")
    truth_sum = int(t.sum())
    for i, th in enumerate(thr):
        mask = p >= th
        labels, sizes = _components(mask)
        peaks = _peaks(p, labels, len(sizes) - 1) if peak_opts[-1] > th else None
        tp_comp = np.bincount(labels[t], minlength=len(sizes))
        tp_comp[0] = 0
        nesting = _Nesting(mask, labels, sizes, tp_comp, t) if try_fill_holes else None
        filled_cache: dict[bytes, tuple[float, int]] = {}
        for k, largest in enumerate(largest_opts):
            kept = _kept_grid(sizes, areas, largest, peaks, peak_opts)    # [min_area, min_peak]
            pred_sum = kept @ sizes
            score[i, :, :, k, 0] = dice_from_count_arrays(kept @ tp_comp, pred_sum,
                                                            truth_sum)
            area[i, :, :, k, 0] = pred_sum
            if nesting is None:
                continue
            if not nesting.holes:
                score[i, :, :, k, 1], area[i, :, :, k, 1] = score[i, :, :, k, 0], pred_sum
                continue
            if largest:         # ranked with holes filled, as apply ranks them
                kept = _kept_grid(sizes, areas, largest, peaks, peak_opts, nesting.enclosed)
            for j, q in np.ndindex(kept.shape[:2]):
                key = kept[j, q].tobytes()
                if key not in filled_cache:
                    filled_sum, tp = nesting.filled(kept[j, q])
                    filled_cache[key] = (dice_from_counts(tp, filled_sum, truth_sum), filled_sum)
                score[i, j, q, k, 1], area[i, j, q, k, 1] = filled_cache[key]
    return score, area


class GridSearch:
    """:func:`tune`, one frame at a time, for callers that cannot hold every frame (the end of
    training, on validation frames at their original size): :meth:`add` scores a frame under
    every setting of the grids and keeps those scores only (a few thousand numbers, not the
    frame's pixels); :meth:`choose` makes :func:`tune`'s choice on the frames added so far, the
    same one given the same frames in the same order; :meth:`frame` reads back one frame's Dice
    and predicted area under a setting of the grids (exactly what :func:`apply` and
    :func:`ultraseg.metrics.dice` give).

    ``smallest_area``: the pixels of the smallest frame to come (``min_areas`` defaults to
    :func:`default_min_areas` of it); ``alternatives``: how many probability maps each frame
    comes with (2: plain, then with test-time augmentation). The other arguments as
    :func:`tune`'s.
    """

    def __init__(self, smallest_area: int, thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
                 min_areas: Sequence[int] | None = None, try_keep_largest: bool = True,
                 try_fill_holes: bool = True, min_peaks: Sequence[float] = DEFAULT_MIN_PEAKS,
                 alternatives: int = 1) -> None:
        # nearest 0.5 first, then the lower (0.7 - 0.5 is 0.19999999999999996 in floating
        # point)
        self.thr = sorted({float(t) for t in thresholds},
                          key=lambda t: (round(abs(t - 0.5), 9), t))
        if min_areas is None:
            min_areas = default_min_areas(int(smallest_area))
        self.areas = sorted({max(int(a), 0) for a in min_areas})
        if not self.thr or not self.areas:
            raise UltrasegError("the thresholds and minimum areas to try must not be empty")
        self.peak_opts = sorted({max(float(q), 0.0) for q in min_peaks} or {0.0})
        self.largest_opts = (False, True) if try_keep_largest else (False,)
        self.fill_opts = (False, True) if try_fill_holes else (False,)
        self.alternatives = alternatives
        # per frame added: [alternative, threshold, min_area, min_peak, keep_largest, fill]
        self.scores: list[np.ndarray] = []
        self.pred_areas: list[np.ndarray] = []

    def __len__(self) -> int:
        return len(self.scores)

    @staticmethod
    def order(n: int) -> np.ndarray:
        """The order, int (n,), in which :func:`tune` and training's validation score ``n``
        frames: a fixed random one, so a search cut short by a time limit holds a random
        sample of them, the same each run."""
        return np.random.default_rng(0).permutation(n)

    def add(self, probs: Sequence[np.ndarray], truth: np.ndarray) -> None:
        """Score one frame: its probability maps (one per alternative) against its mask."""
        if len(probs) != self.alternatives:
            raise ValueError(f"{len(probs)} probability maps for {self.alternatives} "
                             "alternatives")
        grids = [_score_frame(p, truth, self.thr, self.areas, self.peak_opts,
                              self.largest_opts, self.fill_opts) for p in probs]
        self.scores.append(np.stack([g[0] for g in grids]))
        self.pred_areas.append(np.stack([g[1] for g in grids]).astype(np.int32))

    def keep_alternatives(self, n: int) -> None:
        """Forget all but the first ``n`` alternatives (test-time augmentation given up)."""
        self.alternatives = min(self.alternatives, n)
        self.scores = [s[:n] for s in self.scores]
        self.pred_areas = [a[:n] for a in self.pred_areas]

    def choose(self, min_gain: float = 0.005) -> tuple[PostprocessConfig, float]:
        """:func:`tune`'s choice on the frames added (at least one), summed in their order."""
        if not self.scores:
            raise UltrasegError("no validation frames to tune the post-processing on")
        score = np.zeros(self.scores[0].shape)
        for s in self.scores:
            score += s
        score /= len(self.scores)
        thr, areas, peak_opts = self.thr, self.areas, self.peak_opts

        def departures(idx: tuple[int, ...]) -> int:
            """How many rules the setting adds to the plain one (a min_peak at or under the
            threshold, or a min_area of 1, adds none: they remove nothing)."""
            a, i, j, q, k, f = idx
            return (a + (i > 0) + (j > 0 and areas[j] > 1) + (peak_opts[q] > thr[i]) + k + f)

        floor = float(score.max()) - max(min_gain, 0.0) - 1e-12
        near = [idx for idx in np.ndindex(score.shape) if score[idx] >= floor]
        # min keeps the first of equal keys: ties go by the simplicity order of the grids
        best_idx = min(near, key=lambda idx: (departures(idx), -round(float(score[idx]), 12)))
        best = float(score[best_idx])
        a, i, j, q, k, f = best_idx
        cfg = PostprocessConfig(
            threshold=thr[i], min_area=areas[j], min_peak=peak_opts[q] if peak_opts[q] > thr[i]
            else 0.0, keep_largest=self.largest_opts[k], fill_holes=self.fill_opts[f],
            tta=bool(a)
        )
        logger.info("post-processing tuned on %d frames: %s, mean Dice %.4f", len(self.scores),
                    cfg, best)
        return cfg, best

    def frame(self, n: int, cfg: PostprocessConfig) -> tuple[float, int]:
        """The Dice and the predicted area of the ``n``-th frame added under ``cfg``, a setting
        of the grids (one :meth:`choose` gives)."""
        a = int(cfg.tta)
        i = self.thr.index(cfg.threshold)
        j = self.areas.index(cfg.min_area)
        # a min_peak of 0 is any peak at or under the threshold: they remove nothing
        q = (self.peak_opts.index(cfg.min_peak) if cfg.min_peak > cfg.threshold else
             next(q for q, v in enumerate(self.peak_opts) if v <= cfg.threshold))
        idx = (a, i, j, q, self.largest_opts.index(cfg.keep_largest),
               self.fill_opts.index(cfg.fill_holes))
        return float(self.scores[n][idx]), int(self.pred_areas[n][idx])


def tune(
    probs: Sequence[np.ndarray],
    truths: Sequence[np.ndarray],
    thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
    min_areas: Sequence[int] | None = None,
    try_keep_largest: bool = True,
    try_fill_holes: bool = True,
    min_gain: float = 0.005,
    min_peaks: Sequence[float] = DEFAULT_MIN_PEAKS,
    tta_probs: Sequence[np.ndarray] | None = None,
) -> tuple[PostprocessConfig, float]:
    """Choose the post-processing for the best mean Dice over validation frames (the simplest
    setting near the best: see ``min_gain``).

    ``probs``: float (H, W) probability maps; ``truths``: bool masks of the same shapes (frames
    may differ in size). ``min_areas`` defaults to :func:`default_min_areas` of the smallest
    frame. Every combination of the grids is scored exactly. Ties go to the simpler setting:
    test-time augmentation off (it doubles the prediction time), then threshold nearest 0.5
    (then the lower), then the smaller min_area, then the lower min_peak, then keep_largest
    off, then fill_holes off.

    ``tta_probs``: the same frames' probabilities with test-time augmentation (the network's
    output averaged with that of the flipped frame, :class:`ultraseg.predict.Predictor`); the
    grid is then scored on both, and TTA is one more rule (``PostprocessConfig.tta``).

    Each frame is labelled once per threshold; min_area, min_peak and keep_largest only select
    among those components, so their Dice comes from per-component counts. The holes are
    found once per threshold (one more labelling), with how the components and holes nest:
    any kept set's filling is then the holes under a kept component, exactly as filling that
    set's mask (``_Nesting``), at no cost per set that grows with the frame's pixels.

    Of the settings within ``min_gain`` mean Dice of the best, the one that departs from the
    plain setting (threshold nearest 0.5, smallest min_area, no min_peak, keep_largest,
    fill_holes and TTA off) in the fewest rules is chosen, then the higher scoring: on a small
    validation split a smaller gain is more likely noise than a better rule for unseen frames,
    and each rule added for it is one more chance to fit that noise. ``min_gain=0`` chooses
    the best.

    Returns ``(config, mean_dice)``.
    """
    alternatives = [probs] if tta_probs is None else [probs, tta_probs]
    for alt in alternatives:
        if len(alt) != len(truths):
            raise ValueError(f"{len(alt)} probability maps but {len(truths)} masks")
    if len(probs) == 0:
        raise UltrasegError("no validation frames to tune the post-processing on")
    search = GridSearch(min(int(np.asarray(p).size) for p in probs), thresholds, min_areas,
                        try_keep_largest, try_fill_holes, min_peaks, len(alternatives))
    for f in GridSearch.order(len(truths)):
        search.add([alt[f] for alt in alternatives], truths[f])
    return search.choose(min_gain)
