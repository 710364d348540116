"""The report stage: overlays, learning-curve and sample figures, and one self-contained HTML page.

:func:`overlay` needs numpy only (``ultraseg predict --overlay`` calls it per frame).
The plotting functions import matplotlib lazily and draw on a ``matplotlib.figure.Figure`` with
the Agg canvas in matplotlib's default style, so importing this module is cheap, no global
pyplot state is touched and the caller's rcParams change nothing. Every
file is written atomically (figure -> bytes -> :func:`ultraseg.fileio.atomic_write_bytes`).

Colours (Okabe and Ito's, told apart with any colour vision, and in greyscale by their lightness
too): ground-truth outlines blue, predicted outlines orange, pixels on both outlines yellow.
"""
from __future__ import annotations

import base64
import functools
import html
import io
import json
import logging
import math
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ultraseg.fileio import atomic_write_bytes
from ultraseg.metrics import dice, improves, outline

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure

logger = logging.getLogger(__name__)

#: RGB of the predicted mask's outline: orange. (Red beside green, as before 2026-12-06, reads
#: as one colour to a red-green colour-blind eye, one man in twelve.)
PRED_COLOR: tuple[int, int, int] = (230, 159, 0)
#: RGB of the ground-truth outline: blue, darker than the orange (grey 87 against 162: sky
#: blue, before 2026-12-07, was the orange's grey, one colour on a monochrome monitor or a print).
TRUTH_COLOR: tuple[int, int, int] = (0, 114, 178)
#: RGB of pixels on both outlines: yellow (grey 213), lighter than both; white was lost on a
#: bright echo, the best case drawn least visibly.
BOTH_COLOR: tuple[int, int, int] = (240, 228, 66)
#: RGB of the ellipse ``measure`` fits to the predicted object: bluish green.
ELLIPSE_COLOR: tuple[int, int, int] = (0, 158, 115)
#: How far the report's prediction panels tint the predicted area towards :data:`PRED_COLOR`
#: (light: the image shows through).
PRED_FILL = 0.25
#: The colours in words, as figures and help texts say them.
COLOURS = "blue: truth, orange: prediction, yellow: both"

#: What ultraseg's figures are for, as README, report.html and measure say it.
INTENDED_USE = ("Research use only: ultraseg is not a medical device; its masks, measurements "
                "and figures are not validated for diagnosis or clinical decisions.")

#: The least span of the learning curves' Dice axis.
MIN_DICE_SPAN = 0.1
#: Resolution of every figure written here.
DPI = 100
#: At most this many frames are drawn by :func:`plot_samples` / :func:`plot_predictions`.
MAX_FRAMES = 8

#: What each figure of a run's report shows, its caption on the page.
CAPTIONS: dict[str, str] = {
    "curve.png": "Learning curves: the training and validation loss of each epoch, and the "
                 "validation Dice on the working-size canvases, the epoch kept starred; an epoch "
                 "the time limit cut short (its batches, or its validation to a sample) is "
                 "drawn hollow and named partial.",
    "sample.png": "Training frames at the working size with their mask outlines (blue): a "
                  "check that frames and masks were read together.",
    "seg_sample.png": "Validation frames at their original size: not trained on, but they chose "
                      "the epoch and the post-processing, and are shown after that "
                      f"post-processing ({COLOURS}, the predicted area lightly tinted "
                      "orange); each panel's Dice counts an empty truth predicted empty as 1.",
}
#: :data:`CAPTIONS` of a run whose validation frames chose nothing (none holds a structure).
CAPTIONS_NOT_CHOSEN: dict[str, str] = {
    **CAPTIONS,
    "seg_sample.png": "Validation frames at their original size: not trained on; none holds a "
                      "structure at the working size, so they chose nothing (the last epoch "
                      "and the default post-processing were kept), and are shown after that "
                      "post-processing "
                      f"({COLOURS}, the predicted area lightly tinted orange); each panel's Dice "
                      "counts an empty truth predicted empty as 1.",
}
#: :data:`CAPTIONS` of a run without a validation split (``--val-fraction 0``): its curves are
#: the training loss alone, and the last epoch is kept, no star.
CAPTIONS_NO_VALIDATION: dict[str, str] = {
    **CAPTIONS,
    "curve.png": "Learning curve: the training loss of each epoch (no validation split: no "
                 "validation loss or Dice, and the last epoch kept); an epoch the time limit "
                 "cut short is drawn hollow and named partial.",
}


def captions_for(validated: bool, chosen: bool = True) -> dict[str, str]:
    """The captions of a run's report: :data:`CAPTIONS_NO_VALIDATION` where the run had no
    validation frames (not ``validated``), :data:`CAPTIONS_NOT_CHOSEN` where they chose
    nothing (not ``chosen``: none holds a structure), else :data:`CAPTIONS`."""
    return (CAPTIONS_NO_VALIDATION if not validated else
            CAPTIONS if chosen else CAPTIONS_NOT_CHOSEN)


#: The report's row of the validation Dice at threshold 0.5 alone, on the network's plain
#: output: the test-time flip is left out, whether or not the post-processing chose it
#: (evaluate's 'threshold 0.5 alone', ``raw.dice_mean``, takes the flip where it is chosen).
RAW_DICE_ROW = "val Dice, original size (threshold 0.5, no flip)"
#: The report's row of the run's time, from its start to its end (reading and caching the
#: data, the epochs, choosing the post-processing): not the epochs' alone (:func:`time_rows`).
RUN_TIME_ROW = "run time (s): reading the data, the epochs, choosing the post-processing"
#: The report's row of the epochs' own time (training and validating): metrics.csv's seconds.
EPOCHS_TIME_ROW = "epochs' time (s): training and validating, metrics.csv's seconds summed"


def time_rows(seconds: float, history: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """The report's rows of time: the whole run's ``seconds`` and, where ``history`` times
    every epoch (its ``seconds``), the epochs' own, summed (s, one decimal)."""
    rows = {RUN_TIME_ROW: round(float(seconds), 1)}
    timed = [r["seconds"] for r in history if _is_num(r.get("seconds"))]
    if timed and len(timed) == len(history):
        rows[EPOCHS_TIME_ROW] = round(float(sum(timed)), 1)
    return rows


#: What the prediction figures' titles add to :data:`COLOURS` (the tint, :data:`PRED_FILL`).
TINT = "predicted area tinted orange"
#: The prediction figure's title in a run's report.
VALIDATION_TITLE = ("validation frames (not trained on; they chose the epoch and the "
                    "post-processing),\nafter the post-processing chosen")
#: :data:`VALIDATION_TITLE` where the validation frames chose nothing (none holds a structure).
VALIDATION_TITLE_NOT_CHOSEN = ("validation frames (not trained on; none holds a structure at "
                               "the working size, so they chose nothing),\nafter the default "
                               "post-processing, of the last epoch")

_MIME = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".svg": "image/svg+xml"}


# --------------------------------------------------------------------------------------------
# overlay (numpy / scipy only)
# --------------------------------------------------------------------------------------------


def display_uint8(image: np.ndarray) -> np.ndarray:
    """A displayable uint8 copy of a gray (H, W) or RGB (H, W, 3) image (for display only:
    frames are read by :func:`ultraseg.io.grey.to_uint8`, another rule).

    uint8 is returned as is; bool becomes 0/255; any other dtype is min-max scaled to 0..255
    (a constant image becomes 0; NaN becomes 0).
    """
    a = np.asarray(image)
    if a.dtype == np.uint8:
        return a
    if a.dtype == bool:
        return a.astype(np.uint8) * 255
    f = np.nan_to_num(a.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    lo, hi = (float(f.min()), float(f.max())) if f.size else (0.0, 0.0)
    if hi <= lo:
        return np.zeros(a.shape, dtype=np.uint8)
    return np.round((f - lo) * (255.0 / (hi - lo))).astype(np.uint8)


def overlay(
    image: np.ndarray,
    pred: np.ndarray | None,
    truth: np.ndarray | None = None,
    *,
    thickness: int = 1,
    fill: float = 0.0,
) -> np.ndarray:
    """The image in RGB with the outlines of the predicted (orange) and true (blue) masks.

    ``image``: (H, W) gray, uint8 (other dtypes are min-max scaled), or (H, W, 3) uint8 RGB.
    ``pred`` / ``truth``: (H, W) masks (bool, or nonzero = inside), either may be ``None``.
    Pixels on both outlines are yellow; mask interiors and background keep the image's gray,
    but for ``fill`` > 0: the prediction's area blended that much towards orange (the
    report's panels: a prediction filling the frame is otherwise a border at its edge).
    ``thickness``: outline width in pixels. Returns a new (H, W, 3) uint8 array.
    """
    img = display_uint8(image)
    if img.ndim == 2:
        rgb = np.repeat(img[:, :, None], 3, axis=2)
    elif img.ndim == 3 and img.shape[2] == 3:
        rgb = img.copy()
    else:
        raise ValueError(f"image must be (H, W) or (H, W, 3), got shape {img.shape}")
    hw = rgb.shape[:2]
    edges: list[np.ndarray | None] = []
    for name, mask in (("pred", pred), ("truth", truth)):
        if mask is None:
            edges.append(None)
            continue
        m = np.asarray(mask)
        if m.shape != hw:
            raise ValueError(f"{name} mask shape {m.shape} differs from image shape {hw}")
        m = m if m.dtype == bool else m != 0
        if name == "pred" and fill > 0:
            rgb[m] = np.round((1.0 - fill) * rgb[m] + fill * np.asarray(PRED_COLOR))
        edges.append(outline(m, thickness))
    p_edge, t_edge = edges
    if t_edge is not None:
        rgb[t_edge] = TRUTH_COLOR
    if p_edge is not None:
        rgb[p_edge] = PRED_COLOR
        if t_edge is not None:
            rgb[p_edge & t_edge] = BOTH_COLOR
    return rgb


def ellipse_pixels(shape: tuple[int, int], ellipse: Sequence[float],
                   thickness: int = 1) -> np.ndarray:
    """The pixels (H, W) bool on an ellipse ``(cx, cy, a, b, angle_deg)`` as
    :func:`ultraseg.measure.measure` gives it (x a column, y a row, origin at the top-left
    pixel's centre; semi-axes in px; the major axis ``angle_deg`` from +x towards +y): sampled
    densely enough to leave no gap, cut to the frame, ``thickness`` px wide."""
    from scipy import ndimage

    cx, cy, a, b, angle = (float(v) for v in ellipse)
    h, w = shape
    n = max(16, int(math.ceil(2 * math.pi * max(a, b) * 2)))
    t = np.linspace(0.0, 2 * math.pi, n, endpoint=False)
    th = math.radians(angle)
    x = cx + a * np.cos(t) * math.cos(th) - b * np.sin(t) * math.sin(th)
    y = cy + a * np.cos(t) * math.sin(th) + b * np.sin(t) * math.cos(th)
    col, row = np.round(x).astype(np.int64), np.round(y).astype(np.int64)
    inside = (col >= 0) & (col < w) & (row >= 0) & (row < h)
    on = np.zeros((h, w), bool)
    on[row[inside], col[inside]] = True
    if thickness > 1:
        on = ndimage.binary_dilation(on, iterations=thickness - 1)
    return on


def measure_overlay(image: np.ndarray, mask: np.ndarray, ellipse: Sequence[float] | None,
                    *, thickness: int = 1) -> np.ndarray:
    """The frame in RGB with the predicted object's outline (orange) and the ellipse measured
    on it (bluish green; ``None``: no object, none drawn), to check a measurement by eye.
    ``image`` (H, W) gray; ``mask`` (H, W). Returns a new (H, W, 3) uint8 array."""
    rgb = overlay(image, mask, None, thickness=thickness)
    if ellipse is not None:
        rgb[ellipse_pixels(rgb.shape[:2], ellipse, thickness)] = ELLIPSE_COLOR
    return rgb


# --------------------------------------------------------------------------------------------
# figures (matplotlib, imported lazily)
# --------------------------------------------------------------------------------------------


_STYLE_LOCK = threading.Lock()


def _house_style(draw: Callable[..., None]) -> Callable[..., None]:
    """``draw`` in matplotlib's default style, whatever the caller's rcParams (a notebook's
    ``text.usetex`` without LaTeX failed a finished run at its report). rcParams are the
    process's: drawings wait on one another, and the caller's settings are back after."""
    @functools.wraps(draw)
    def drawn(*args: Any, **kwargs: Any) -> None:
        from matplotlib import style

        with _STYLE_LOCK, style.context("default"):
            draw(*args, **kwargs)
    return drawn


def _new_figure(width: float, height: float) -> Figure:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    try:
        fig.savefig(buf, format="png", dpi=DPI)
    finally:
        fig.clear()
    atomic_write_bytes(path, buf.getvalue())
    logger.debug("wrote %s (%d bytes)", path, buf.tell())


def _shown(text: str) -> str:
    """``text`` as it can be shown: bytes of a file name that are no UTF-8 (held by Python as
    surrogate escapes, which neither UTF-8 nor a font takes) become U+FFFD."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def _num(value: Any) -> float:
    """A float, with None / missing / unparsable as NaN."""
    try:
        return float(value) if value is not None else math.nan
    except (TypeError, ValueError):
        return math.nan


def sampled_rows(history: Sequence[Mapping[str, Any]], n_val: int | None = None) -> list[bool]:
    """Whether each row of ``history`` was validated on a sample of the validation frames
    (the time limit had passed): its ``val_frames`` is fewer than ``n_val``, the validation
    side's frames, where the caller knows it (training), else than the most any row was
    validated on. A row without it (from a run before it was recorded) counts as validated on
    all of them."""
    counts = [_num(row.get("val_frames")) for row in history]
    most = n_val if n_val is not None else max((c for c in counts if c == c), default=math.nan)
    return [c == c and c < most for c in counts]


def best_row(history: Sequence[Mapping[str, Any]], n_val: int | None = None) -> int:
    """Index of the row of ``history`` that training kept as its best epoch: the highest
    validation Dice, on a tie the lower validation loss, a row validated on a sample never
    over one validated on every frame (:func:`ultraseg.metrics.improves`); -1 where no row
    has a validation Dice. ``n_val``: the validation side's frames, where known
    (:func:`sampled_rows`)."""
    best, best_dice, best_loss, best_full = -1, -math.inf, math.inf, False
    for i, (row, sampled) in enumerate(zip(history, sampled_rows(history, n_val))):
        d, loss = _num(row.get("val_dice")), _num(row.get("val_loss"))
        if improves(d, loss, best_dice, best_loss, sampled, best_full):
            best, best_dice, best_loss, best_full = i, d, loss, not sampled
    return best


def kept_row(history: Sequence[Mapping[str, Any]], best_epoch: int | None,
             n_val: int | None = None) -> int:
    """Index of the row of the epoch training kept, ``best_epoch`` where the caller knows it
    (a run whose validation could not choose keeps its last), else :func:`best_row`."""
    if best_epoch is None:
        return best_row(history, n_val)
    return next((i for i, row in enumerate(history) if _num(row.get("epoch")) == best_epoch), -1)


@_house_style
def plot_curves(history: Sequence[Mapping[str, Any]], path: str | Path,
                best_epoch: int | None = None, chosen: bool = True,
                n_val: int | None = None) -> None:
    """Write the learning curves (``curve.png``) of a training history.

    ``history``: one row per epoch with keys ``epoch``, ``train_loss``, ``val_loss``,
    ``val_dice`` (values may be NaN/None, e.g. for a partial epoch) and ``complete``. Left panel:
    the two losses; right panel: validation Dice, with the epoch kept marked (``best_epoch``;
    None: the best by :func:`best_row`; ``chosen`` False: validation chose nothing, and the
    last epoch was kept, as its legend says). A single epoch is drawn as markers; an epoch not
    complete (``complete`` False: a time limit cut it short) as hollow markers named partial in
    the legend, and so is the Dice of an epoch validated on a sample (``val_frames`` under
    ``n_val``, the validation side's frames where the caller knows them: :func:`sampled_rows`).
    """
    rows = list(history)
    fig = _new_figure(10.0, 4.0)
    ax_loss, ax_dice = fig.subplots(1, 2, sharex=True)
    epochs = np.array([_num(r.get("epoch", i + 1)) for i, r in enumerate(rows)], dtype=float)
    marker = "o" if len(rows) <= 30 else None

    def series(key: str) -> np.ndarray:
        return np.array([_num(r.get(key)) for r in rows], dtype=float)

    partial = np.array([_partial(r) for r in rows], dtype=bool)
    sampled = np.array(sampled_rows(rows, n_val), dtype=bool)     # its Dice over a sample
    drawn, named = [], False
    # colours fixed per series: from matplotlib's cycle, a partial epoch's marker took one and
    # the validation loss changed colour between runs
    for key, label, colour in (("train_loss", "train loss", "tab:blue"),
                               ("val_loss", "validation loss", "tab:purple")):
        y = series(key)
        if np.isfinite(y).any():
            ok = np.isfinite(y)
            ax_loss.plot(epochs[ok], y[ok], marker=marker, markersize=4, color=colour,
                         label=label)
            # (named once in the legend, beside both losses)
            named = _mark_partial(ax_loss, epochs, y, ok & partial, colour,
                                  named=not named) or named
            drawn.append(y[ok])
    if drawn:
        ax_loss.legend(loc="best")
        losses = np.concatenate(drawn)
        # a first epoch's loss ten times the last ones' flattened the epochs that matter
        if losses.min() > 0 and losses.max() > 10 * losses.min():
            ax_loss.set_yscale("log")
    from matplotlib.ticker import MaxNLocator

    finite_epochs = epochs[np.isfinite(epochs)]
    for ax in (ax_loss, ax_dice):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if finite_epochs.size and np.ptp(finite_epochs) < 2:  # few epochs: keep ticks whole
            ax.set_xlim(finite_epochs.min() - 0.5, finite_epochs.max() + 0.5)
            ax.set_xticks(np.unique(finite_epochs))
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("loss")
    ax_loss.set_title("loss")
    ax_loss.grid(True, alpha=0.3)

    y = series("val_dice")
    ok = np.isfinite(y)
    if ok.any():
        ax_dice.plot(epochs[ok], y[ok], marker=marker, markersize=4, color="tab:green",
                     label="validation Dice")
        _mark_partial(ax_dice, epochs, y, ok & (partial | sampled), "tab:green")
        best = kept_row(rows, best_epoch, n_val)
        if best >= 0:
            label = ("kept (the last: validation chose nothing)" if not chosen else
                     "best" if best == best_row(rows, n_val) else "kept")
            ax_dice.axvline(epochs[best], color="gray", linestyle="--", linewidth=1)
            # over the partial epochs' white-faced markers (zorder 3): a run keeping its
            # last, cut epoch showed a hollow circle with the star's tips
            ax_dice.plot([epochs[best]], [y[best]], marker="*", markersize=12,
                         color="tab:orange", linestyle="none", zorder=4,
                         label=f"{label} {y[best]:.4f} (epoch {epochs[best]:g})")
        # where it covers the fewest points: fixed at the lower right, it hid the kept epoch's
        # star and a Dice collapsing after it, or staying low
        ax_dice.legend(loc="best")
        # at least MIN_DICE_SPAN tall: a 0.005 wobble is drawn as one; padded as matplotlib
        # pads (5%), a Dice of 0 or 1 drawn whole, not half under the axis' edge
        lo, hi = float(y[ok].min()), float(y[ok].max())
        if hi - lo < MIN_DICE_SPAN:
            mid = (lo + hi) / 2
            lo = min(max(mid - MIN_DICE_SPAN / 2, 0.0), 1.0 - MIN_DICE_SPAN)
            ax_dice.set_ylim(lo - 0.05 * MIN_DICE_SPAN, lo + 1.05 * MIN_DICE_SPAN)
    elif rows:  # a run trained without a validation split
        ax_dice.text(0.5, 0.5, "no validation Dice recorded\n(no validation split)",
                     ha="center", va="center", transform=ax_dice.transAxes)
    ax_dice.set_xlabel("epoch")
    ax_dice.set_ylabel("Dice")
    ax_dice.set_title("validation Dice\n(training resolution, before post-processing)")
    ax_dice.grid(True, alpha=0.3)
    if not rows:
        for ax in (ax_loss, ax_dice):
            ax.text(0.5, 0.5, "no epochs recorded", ha="center", va="center",
                    transform=ax.transAxes)
    _save(fig, path)


def _partial(row: Mapping[str, Any]) -> bool:
    """Whether a history row is of an epoch a time limit cut short (``complete`` False, or
    "False" as a CSV reads it back)."""
    v = row.get("complete")
    return v is False or (isinstance(v, str) and v.strip().lower() in ("false", "0"))


def _mark_partial(ax: Any, epochs: np.ndarray, y: np.ndarray, where: np.ndarray,
                  color: str, named: bool = True) -> bool:
    """Hollow markers over the points ``where`` of a curve: epochs not complete, ``named`` so
    in the legend (their figures are over part of an epoch's batches). Whether it drew any."""
    if not where.any():
        return False
    names = ", ".join(f"{e:g}" for e in epochs[where])
    ax.plot(epochs[where], y[where], marker="o", markersize=8, markerfacecolor="white",
            color=color, markeredgecolor=color, markeredgewidth=1.5, linestyle="none", zorder=3,
            label=f"epoch {names} (partial: time limit)" if named else "_partial")
    return True


def _thickness(shape: tuple[int, ...]) -> int:
    """Outline width that stays visible once a frame is shrunk to a ~300 px panel."""
    return max(1, int(max(shape[:2])) // 200)


def _grid(fig_count: int) -> tuple[int, int]:
    cols = min(fig_count, 4)
    return max(1, math.ceil(fig_count / max(cols, 1))), max(cols, 1)


@_house_style
def _draw_panels(
    panels: list[np.ndarray], titles: list[str], path: str | Path, suptitle: str
) -> None:
    nrows, ncols = _grid(len(panels))
    fig = _new_figure(3.0 * ncols, 3.0 * nrows + 0.4)
    axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False)).ravel()
    for ax in axes:
        ax.set_axis_off()
    for ax, panel, title in zip(axes, panels, titles):
        ax.imshow(panel, interpolation="antialiased")
        if title:   # a name, as it is, each line cut to the panel's width
            ax.set_title(_shown("\n".join(_fit(line) for line in title.split("\n"))),
                         fontsize=9, parse_math=False)
    if not panels:
        axes[0].text(0.5, 0.5, "no frames", ha="center", va="center", transform=axes[0].transAxes)
    fig.suptitle(_shown(suptitle), fontsize=10)
    _save(fig, path)


#: Characters of a panel title's line that fit a 3-inch panel at 9 points.
TITLE_CHARS = 40


def _fit(line: str, width: int = TITLE_CHARS) -> str:
    """``line``, or where it is longer than ``width`` its start and end around an ellipsis: a
    clinic's file names (``IM_0000_20230101_093012_LT``) ran into the next panel's title."""
    if len(line) <= width:
        return line
    keep = width - 1
    return f"{line[:(keep + 1) // 2]}\u2026{line[len(line) - keep // 2:]}"


def pick_samples(has_structure: Sequence[bool], n: int = 4,
                 subjects: Sequence[str] | None = None) -> list[int]:
    """Which training frames ``sample.png`` shows: the first ``n`` in order, but frames whose
    mask holds a structure first (an outline to check against its frame), with one frame of an
    empty mask among them where there are such frames and room (the first four frames of a set
    sorted by subject can all be empty, which shows nothing to check). Where ``subjects`` (one
    per frame) are given, each subject's first frame comes before any subject's second (the
    first four of a set sorted by subject were near-duplicates of one subject, where a mix-up
    of frames and masks elsewhere would not show). Returned in order."""
    _check_lengths(has_structure=has_structure, subjects=subjects)
    if subjects is None:
        subjects = [str(i) for i in range(len(has_structure))]

    def by_turn(frames: list[int]) -> list[int]:
        """``frames`` each subject's first first (in order), then each one's second, ..."""
        before: dict[str, int] = {}
        turn: dict[int, int] = {}
        for i in frames:
            turn[i] = before.get(subjects[i], 0)
            before[subjects[i]] = turn[i] + 1
        return sorted(frames, key=lambda i: (turn[i], i))

    full = by_turn([i for i, h in enumerate(has_structure) if h])
    empty = by_turn([i for i, h in enumerate(has_structure) if not h])
    take_empty = min(len(empty), max(n - len(full), 1 if n > 1 else 0))
    return sorted(full[:n - take_empty] + empty[:take_empty])


def _check_lengths(**lists: Sequence[Any] | None) -> int:
    lengths = {k: len(v) for k, v in lists.items() if v is not None}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"lists differ in length: {lengths}")
    return next(iter(lengths.values()), 0)


def plot_samples(
    images: Sequence[np.ndarray],
    masks: Sequence[np.ndarray],
    path: str | Path,
    titles: Sequence[str] | None = None,
) -> None:
    """Write a grid (``sample.png``) of frames with their mask outlines (blue).

    ``images``: (H, W) gray frames (uint8, or float min-max scaled); ``masks``: matching (H, W)
    masks (bool or nonzero = inside). At most :data:`MAX_FRAMES` frames are drawn.
    """
    n = _check_lengths(images=images, masks=masks, titles=titles)
    n = min(n, MAX_FRAMES)
    panels = [
        overlay(images[i], None, masks[i], thickness=_thickness(np.shape(images[i])))
        for i in range(n)
    ]
    names = [str(titles[i]) if titles is not None else f"frame {i}" for i in range(n)]
    _draw_panels(panels, names, path, "training samples (blue: mask outline)")


def pick_examples(dices: Sequence[float], truth_empty: Sequence[bool],
                  pred_areas: Sequence[int], n: int = 4) -> list[tuple[int, str]]:
    """Which frames a prediction figure shows, and why: ``[(index, label), ...]``.

    Frames whose truth is not empty are ranked by ``dices`` (best first, ties by index) and
    picked at evenly spaced ranks: the best, the worst and, between them, the median or other
    ranks, labelled ``best``, ``worst``, ``median`` or ``rank r of m``. Where frames with an
    empty truth exist, the last slot shows the one with the largest predicted area (``empty
    truth``): a false structure if any frame has one. ``n`` slots at most.
    """
    k = _check_lengths(dices=dices, truth_empty=truth_empty, pred_areas=pred_areas)
    empty = [i for i in range(k) if truth_empty[i]]
    ranked = sorted((i for i in range(k) if not truth_empty[i]),
                    key=lambda i: (-float(dices[i]), i))
    slots = max(n - (1 if empty else 0), 0)
    m = len(ranked)
    ranks = sorted({j * (m - 1) // max(slots - 1, 1) for j in range(slots)}) if m else []
    picked = []
    for r in ranks:
        label = ("best" if r == 0 and m > 1 else "worst" if r == m - 1 and m > 1
                 else "median" if r == (m - 1) // 2 else f"rank {r + 1} of {m}")
        picked.append((ranked[r], label))
    if empty and n > 0:
        picked.append((max(empty, key=lambda i: (int(pred_areas[i]), -i)), "empty truth"))
    return picked


def plot_predictions(
    images: Sequence[np.ndarray],
    truths: Sequence[np.ndarray | None],
    preds: Sequence[np.ndarray],
    path: str | Path,
    titles: Sequence[str] | None = None,
    what: str = "predictions",
) -> None:
    """Write a grid (``seg_sample.png``) of frames with truth (blue) and prediction (orange)
    outlines, the predicted area lightly tinted orange, titled ``what`` (a run's report:
    :data:`VALIDATION_TITLE`), the colours and the tint.

    ``images``: (H, W) gray frames; ``truths`` / ``preds``: matching (H, W) masks (bool or
    nonzero = inside; a truth may be ``None``). Each panel's title carries the frame's Dice
    (:func:`ultraseg.metrics.dice`, empty rule included). At most :data:`MAX_FRAMES` frames.
    """
    n = _check_lengths(images=images, truths=truths, preds=preds, titles=titles)
    n = min(n, MAX_FRAMES)
    panels, names = [], []
    for i in range(n):
        truth, pred = truths[i], preds[i]
        panels.append(overlay(images[i], pred, truth, thickness=_thickness(np.shape(images[i])),
                              fill=PRED_FILL))
        name = str(titles[i]) if titles is not None else f"frame {i}"
        if truth is not None:
            name += ("\n" if "\n" not in name else "  ") + \
                f"Dice {dice(np.asarray(pred) != 0, np.asarray(truth) != 0):.3f}"
        names.append(name)
    _draw_panels(panels, names, path, f"{what} ({COLOURS})\n({TINT})")


# --------------------------------------------------------------------------------------------
# HTML
# --------------------------------------------------------------------------------------------

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:2em auto;
max-width:1100px;padding:0 1em;color:#222}
h1{font-size:1.6em}h2{font-size:1.2em;margin-top:1.6em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;font-size:.9em}
th,td{border:1px solid #ddd;padding:3px 8px;text-align:left}
th{background:#f4f4f4}td.num{text-align:right;font-variant-numeric:tabular-nums}
tr.best td{font-weight:bold;background:#eef8ee}
figure{margin:1em 0}img{max-width:100%;height:auto}figcaption{color:#666;font-size:.85em}
pre{background:#f7f7f7;padding:1em;overflow:auto;font-size:.85em}
ul.warnings li{margin:.3em 0;white-space:pre-wrap}
footer{margin-top:2em;border-top:1px solid #ddd;color:#666;font-size:.85em}
""".strip()


def postprocess_words(settings: Mapping[str, Any]) -> str:
    """Post-processing ``settings`` (:meth:`ultraseg.config.PostprocessConfig.to_dict`, with
    ``tta``) in words, as the report's tables give them: ``threshold 0.5, min area 10, keep
    largest on, ...``."""
    return ", ".join(f"{k.replace('_', ' ')} "
                     f"{({True: 'on', False: 'off'}[v] if isinstance(v, bool) else v)}"
                     for k, v in settings.items())


def _fmt(value: Any) -> str:
    """One table cell's text (not yet escaped): a boolean as yes / no."""
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if math.isnan(value):
            return "–"
        if value.is_integer() and abs(value) < 1e15:
            return str(int(value))
        return f"{value:.4g}"
    if isinstance(value, np.generic):
        return _fmt(value.item())
    if isinstance(value, (Mapping, list, tuple)):
        return json.dumps(value, default=str)
    return str(value)


def _is_num(value: Any) -> bool:
    return isinstance(value, (int, float, np.number)) and not isinstance(value, bool)


def _kv_table(data: Mapping[str, Any]) -> str:
    rows = "".join(
        f"<tr><th>{html.escape(str(k))}</th>"
        f"<td{' class=num' if _is_num(v) else ''}>{html.escape(_fmt(v))}</td></tr>"
        for k, v in data.items()
    )
    return f"<table>{rows}</table>"


def _metrics_table(history: Sequence[Mapping[str, Any]], best_epoch: int | None = None) -> str:
    if not history:
        return "<p>No epochs recorded.</p>"
    columns: list[str] = []
    for row in history:
        columns.extend(k for k in row if k not in columns)
    if "epoch" in columns:
        columns.remove("epoch")
        columns.insert(0, "epoch")
    best = kept_row(history, best_epoch)
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = []
    for i, row in enumerate(history):
        cells = "".join(
            f"<td{' class=num' if _is_num(row.get(c)) else ''}>{html.escape(_fmt(row.get(c)))}</td>"
            for c in columns
        )
        body.append(f"<tr{' class=best' if i == best else ''}>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _figure(path: Path, name: str, caption: str | None = None) -> str | None:
    if not path.is_file():
        logger.debug("report figure %s not found; skipped", path)
        return None
    mime = _MIME.get(path.suffix.lower(), "application/octet-stream")
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    # what the figure shows, for a screen reader or a page without its images: the caption's
    # first sentence (the file's name said nothing)
    alt = html.escape(caption.split(". ")[0].rstrip(".") if caption else name)
    text = html.escape(f"{name}: {caption}" if caption else name)
    return (f'<figure><img src="data:{mime};base64,{data}" alt="{alt}">'
            f"<figcaption>{text}</figcaption></figure>")


def write_html(
    run_dir: str | Path,
    *,
    title: str,
    summary: Mapping[str, Any],
    config: Mapping[str, Any],
    history: Sequence[Mapping[str, Any]],
    evaluation: Mapping[str, Any] | None = None,
    images: tuple[str, ...] = ("curve.png", "sample.png", "seg_sample.png"),
    best_epoch: int | None = None,
    captions: Mapping[str, str] = CAPTIONS,
    warnings: Sequence[str] = (),
) -> Path:
    """Write ``run_dir/report.html``, one self-contained page, and return its path.

    Sections: title; the run's ``warnings`` (what training warned of: they change what its
    figures mean), each once in the order given, where there are any; ``summary`` as a
    key/value table; the figures named in ``images``
    (relative to ``run_dir``) embedded as base64 data URIs, missing ones skipped, each captioned
    with its name and what ``captions`` says it shows (a run's figures: :data:`CAPTIONS`); the
    per-epoch ``history`` table (the row of the epoch kept highlighted: ``best_epoch``, else
    the best validation Dice's); ``evaluation`` as a key/value table when given; ``config`` as
    indented JSON; a footer with :data:`INTENDED_USE`. All text is HTML-escaped.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    figures = [f for f in (_figure(run_dir / name, name, captions.get(name)) for name in images)
               if f is not None]
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
    ]
    said = list(dict.fromkeys(str(w) for w in warnings))
    if said:
        parts += ["<h2>Warnings</h2>", "<ul class=warnings>"
                  + "".join(f"<li>{html.escape(w)}</li>" for w in said) + "</ul>"]
    parts += ["<h2>Summary</h2>", _kv_table(summary)]
    if figures:
        parts += ["<h2>Figures</h2>", *figures]
    parts += ["<h2>Per-epoch metrics</h2>", _metrics_table(history, best_epoch)]
    if evaluation is not None:
        parts += ["<h2>Evaluation</h2>", _kv_table(evaluation)]
    config_json = json.dumps(config, indent=2, default=str, ensure_ascii=False)
    parts += ["<h2>Configuration</h2>", f"<pre>{html.escape(config_json, quote=False)}</pre>",
              f"<footer><p>{html.escape(INTENDED_USE)}</p></footer>", "</body></html>", ""]
    out = run_dir / "report.html"
    atomic_write_bytes(out, _shown("\n".join(parts)).encode("utf-8"))
    logger.info("wrote report %s (%d figures)", out, len(figures))
    return out
