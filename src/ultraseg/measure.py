"""Clinical measurement from a binary mask: area, perimeter and a fitted ellipse.

Numpy/scipy only (used by the ONNX-only prediction path).

Everything is measured on **the object**: the largest 8-connected component of the mask with its
holes filled (ties: the first component in raster order). Its ellipse is fitted to the region
its outer outline encloses (:func:`enclosed`: the hollows it encloses but for a narrow mouth
filled too), so a head predicted as its skull's ring is fitted by the ring's outer edge whether
the ring is closed, cut by the frame's edge or has a gap; its area and perimeter stay the
object's own (a lesion's deep clefts are its margin, not filled in). Coordinates are in pixels
with the origin at the centre of the top-left pixel, ``x`` to the right (column) and ``y`` down
(row).

* ``area_px``: number of pixels of the object.
* ``perimeter_px``: length of the object's outer boundary by the Crofton formula: the number of
  background-to-object transitions along rows, columns and both diagonals, weighted by the line
  spacing (1 for rows/columns, 1/sqrt(2) for diagonals) and by pi/4. Exact in expectation for a
  smooth shape (a disk of radius r gives 2*pi*r; about 5% low on axis-aligned squares), no
  contour tracing needed.
* ellipse: a direct least-squares ellipse fit (Fitzgibbon, Pilu & Fisher 1999, in the numerically
  stable form of Halir & Flusser 1998) to the pixel-edge boundary of the region the object's outer
  outline encloses (:func:`enclosed`; midpoints of the edges between that region's pixels and the
  rest, at half-pixel positions): the boundary of the region itself, so a rasterised filled
  ellipse gives back its own axes. Where the object touches the image's edge (a head cut by the
  frame), the boundary along that edge is not the object's outline and is left out of the fit,
  so the ellipse extends the visible outline beyond the frame (``touches_edge`` is then ``True``;
  ``area_px`` and ``perimeter_px`` remain those of the visible object itself, the perimeter
  including the cut). With fewer than 6 boundary points, or a degenerate fit, the ellipse comes
  from the second moments of the enclosed region's pixels instead (``ellipse_method`` says
  which).
* ``boundary_offset_px``: where the masks were made by filling an outline *drawn on* the
  annotator's curve (HC18), the filled mask reaches half the drawn line's width beyond that curve,
  and so does a network trained on such masks. Passing that half-width (see
  :func:`outline_half_width`; about 1.27 px for HC18 at its original resolution) shrinks both
  fitted semi-axes by it, which puts the ellipse back on the annotator's curve. Measured on the
  HC18 training annotations here (370 closed outlines, filled, then measured): mean absolute
  head-circumference error 1.11 mm with offset 0 and 0.02 mm with each outline's half-width;
  the moments of the filled area give 1.10 mm, a fit to the inner boundary pixels' centres 0.70 mm.
  A trained network draws its boundary near there, but not exactly: training therefore chooses
  the offset again on its validation frames where they carry a reference circumference
  (:func:`choose_boundary_offset`), as it chooses the threshold there. A network's output is
  resized back to each frame, so the boundary it draws lies as many of its working pixels
  beyond the curve on any frame, more of the frame's pixels on a larger frame: a checkpoint
  keeps the offset with the longer side of the frames it holds at (``offset_frame_side_px``,
  with ``crop_border`` the part of the frame the network sees), and each frame is measured
  with it scaled by its own longer side (:func:`frame_boundary_offset`).
* ``ellipse_circumference_px``: Ramanujan's second approximation.
* in mm: with square pixels of ``s`` mm, every length in px times ``s`` (areas ``s**2``). Pixels
  that are not square (a DICOM header's ``PixelSpacing`` of 0.2 x 0.4 mm), given as their
  (height, width) ``(dy, dx)``, are measured as they are: the area is ``area_px * dy * dx``; the
  perimeter is Crofton's on that grid (:func:`crofton_perimeter`: its diagonals no longer lie at
  45 degrees, so the four directions are weighted by the angles they stand for); the ellipse is
  the one fitted in px mapped by ``x * dx, y * dy`` (an ellipse still, its axes the singular
  values of that map), whose axes and circumference give the diameters and HC in mm.

An empty mask gives ``area_px == 0``, ``perimeter_px == 0.0`` and ``None`` for every ellipse field;
so does an object no wider than ``boundary_offset_px`` (its area and perimeter measured).
"""
from __future__ import annotations

import logging
import math
import numbers
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
from scipy import ndimage

from .errors import UltrasegError
from .io.dicom import PIXEL_SIZE_NOT_TAKEN
from .ellipse import MAX_FIT_SPREAD, fit_ellipse  # noqa: F401  (measure's API)
from .metrics import binary_mask  # (the metrics' rule for a mask; measure's API, rle's)
from .metrics import interval_label, interval_words, subject_interval

logger = logging.getLogger(__name__)


def check_pixel_size(pixel_size_mm: Any) -> float | None:
    """``pixel_size_mm`` as a float (None stays None), or a user error where it is no
    positive, finite number of mm (``--pixel-size``)."""
    if pixel_size_mm is None:
        return None
    if isinstance(pixel_size_mm, bool) or not isinstance(pixel_size_mm, numbers.Real) \
            or not (pixel_size_mm > 0 and math.isfinite(pixel_size_mm)):
        raise UltrasegError(f"--pixel-size must be a positive number of mm, got "
                            f"{pixel_size_mm!r}")
    return float(pixel_size_mm)


def frame_pixel_size(meta: dict[str, Any], pixel_size_mm: float | None = None
                     ) -> float | tuple[float, float] | None:
    """The pixel size a frame is measured with, from its sample's ``meta``: its dataset's square
    size (``pixel_size_mm``: a table's, or a DICOM header's), else its DICOM header's pixels
    that are not square as ``(height, width)`` mm (``pixel_height_mm``, ``pixel_width_mm``),
    else ``pixel_size_mm`` (``--pixel-size``). A square ``pixel_size_mm`` never replaces a
    header's pixels that are not square: every length in mm would be wrong along one axis."""
    if meta.get("pixel_size_mm"):
        return float(meta["pixel_size_mm"])
    if meta.get("pixel_height_mm") and meta.get("pixel_width_mm"):
        return float(meta["pixel_height_mm"]), float(meta["pixel_width_mm"])
    return pixel_size_mm


def has_pixel_size(row: dict[str, Any]) -> bool:
    """Whether a row of ``measure``'s or ``evaluate``'s table has a known pixel size: square
    (``pixel_size_mm``) or not (``pixel_height_mm``, see :func:`frame_pixel_size`)."""
    return bool(row.get("pixel_size_mm") or row.get("pixel_height_mm"))


class PixelSizes:
    """Each frame's pixel size (:func:`frame_pixel_size`) given ``pixel_size_mm``
    (``--pixel-size``), remembering the frames whose dataset's own square size (a table's, a
    DICOM header's) other than it, or whose DICOM headers' pixels that are not square, were
    used instead of it, and those left without a pixel size whose headers held one that
    was not taken (regions that disagree: ``meta['pixel_size_not_taken']``), for :meth:`warn`
    to say each once (``measure`` and ``evaluate``)."""

    def __init__(self, pixel_size_mm: float | None) -> None:
        self.pixel_size_mm = pixel_size_mm
        self.not_used: list[tuple[str, tuple[float, float]]] = []   # (frame, (dy, dx))
        self.overruled: list[tuple[str, float]] = []                 # (frame, its own size)
        self.not_taken: list[tuple[str, str]] = []                   # (frame, why)

    def of(self, name: str, meta: dict[str, Any]) -> float | tuple[float, float] | None:
        """The pixel size the frame ``name`` (its sample's ``meta``) is measured with."""
        spacing = frame_pixel_size(meta, self.pixel_size_mm)
        if self.pixel_size_mm is not None and isinstance(spacing, tuple):
            self.not_used.append((name, spacing))
        elif (self.pixel_size_mm is not None and spacing is not None
              and not math.isclose(spacing, self.pixel_size_mm, rel_tol=1e-9)):
            self.overruled.append((name, spacing))
        if spacing is None and meta.get(PIXEL_SIZE_NOT_TAKEN):
            self.not_taken.append((name, meta[PIXEL_SIZE_NOT_TAKEN]))
        return spacing

    def warn(self, log: logging.Logger = logger) -> None:
        """Say on ``log`` that ``--pixel-size`` was not used for those frames, and why the
        headers' pixel sizes were not taken for those without one (none: nothing)."""
        if self.overruled:
            (name, _), more = self.overruled[0], len(self.overruled) - 1
            used = [size for _, size in self.overruled]
            lo, hi = min(used), max(used)
            log.warning("--pixel-size %g not used on %d frame%s (%s%s): %s dataset gives its "
                        "own pixel size (%s mm)", self.pixel_size_mm, len(used),
                        "s" * (len(used) != 1), name, f" and {more} more" if more else "",
                        "their" if more else "its",
                        f"{lo:.4g}" if lo == hi else f"{lo:.4g}-{hi:.4g}")
        if self.not_taken:
            (name, why), more = self.not_taken[0], len(self.not_taken) - 1
            log.warning("%s: %s: no pixel size taken, figures in px (--pixel-size gives one)%s",
                        name, why, f"; nor for {_more_frames(more)}, whose headers' pixel "
                        "sizes were not taken either" if more else "")
        if not self.not_used:
            return
        (name, (dy, dx)), more = self.not_used[0], len(self.not_used) - 1
        log.warning("%s: its DICOM header gives pixels that are not square (%.4g mm high, "
                    "%.4g mm wide): measured in mm with those; --pixel-size %g (square) was not "
                    "used for it%s", name, dy, dx, self.pixel_size_mm,
                    f", nor for {_more_frames(more)} of such headers" if more else "")


def _more_frames(n: int) -> str:
    return f"{n} more frame" + "s" * (n != 1)


def pixel_spacing(pixel_size_mm: float | tuple[float, float]) -> tuple[float, float]:
    """A pixel size (one number: square pixels; or (height, width)) as (height, width) mm;
    ValueError where either is no positive, finite number."""
    pair = (pixel_size_mm, pixel_size_mm) if np.ndim(pixel_size_mm) == 0 else pixel_size_mm
    try:
        dy, dx = (float(v) for v in pair)      # type: ignore[union-attr]
    except (TypeError, ValueError):
        dy = dx = math.nan
    if not all(v > 0 and math.isfinite(v) for v in (dy, dx)):
        raise ValueError(f"pixel_size_mm must be a positive number or a (height, width) pair "
                         f"of them, got {pixel_size_mm!r}")
    return dy, dx

_EIGHT = np.ones((3, 3), dtype=bool)


def largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 8-connected component of a (H, W) mask, holes filled, as bool (H, W).

    Sizes are compared with the holes filled, so a ring (a head outlined by its skull alone)
    outweighs a smaller solid blob. Ties go to the component met first in raster order; an
    empty mask gives an empty mask. (Post-processing's hole filling and components: the same
    as scipy's, several times faster on a large frame; and the same rule as its keep_largest
    with fill_holes, :func:`ultraseg.postprocess.largest_filled`.)
    """
    return _object(np.asarray(mask, dtype=bool))[0]


def _object(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """:func:`largest_component` of a bool (H, W) mask and how many 8-connected components
    the mask holds, from one labelling of them where the mask has no holes (filled, it is
    itself); the filled mask, another, is labelled only where there are."""
    from .postprocess import _components, largest_filled

    labels, sizes = _components(mask)
    n = len(sizes) - 1
    if not n:
        return np.zeros(mask.shape, dtype=bool), 0
    return largest_filled(mask, labels, sizes), n


def enclosed(obj: np.ndarray) -> np.ndarray:
    """A bool (H, W) object (one component, holes filled) with the hollows it encloses but
    for a narrow mouth filled in: the region its outer outline encloses, where that outline is
    open (a head predicted as its skull's ring, a piece of the skull missed, or the ring cut by
    the frame's edge).

    A hollow is a 4-connected region of the pixels whose centres lie in the convex hull of the
    object's and are not the object's; its mouth, its pixels next to one outside that hull (the
    frame's edge is no mouth: it closes a hollow cut by it). A hollow with no mouth, or deeper
    (the farthest of its pixels from its mouth) than its mouth is wide, is filled: a ring's
    inside. A dent, no deeper than its mouth is wide, is not; nor is anything in an object that
    is its own convex hull's pixels (a filled ellipse, a closed ring once filled), which comes
    back as it is.
    """
    from scipy.spatial import ConvexHull, QhullError

    h, w = obj.shape
    rows = np.flatnonzero(obj.any(axis=1))
    if not len(rows):
        return obj
    # each row's first and last pixel: the hull's corners are among them
    first = np.argmax(obj[rows], axis=1)
    last = w - 1 - np.argmax(obj[rows, ::-1], axis=1)
    ys, xs = np.concatenate([rows, rows]), np.concatenate([first, last])
    try:
        hull = ConvexHull(np.column_stack([xs, ys]).astype(np.float64))
    except QhullError:                      # a point or a straight line of pixels
        return obj
    # a window one pixel round the object (in the frame): the hull's pixels row by row, the
    # interval of x within every facet's half-plane a x + b y + c <= 0
    t, b = max(int(ys.min()) - 1, 0), min(int(ys.max()) + 2, h)
    lft, r = max(int(xs.min()) - 1, 0), min(int(xs.max()) + 2, w)
    fa, fb, fc = hull.equations.T
    ry = np.arange(t, b, dtype=np.float64)[:, None]
    rhs = -(fb * ry + fc)                                     # a x <= rhs, (rows, facets)
    eps = 1e-9
    with np.errstate(divide="ignore", invalid="ignore"):
        bound = rhs / fa
    hi = np.where(fa > eps, bound, np.inf).min(axis=1)
    lo = np.where(fa < -eps, bound, -np.inf).max(axis=1)
    flat_ok = np.where(np.abs(fa) <= eps, rhs >= -1e-6, True).all(axis=1)
    cols = np.arange(lft, r, dtype=np.float64)[None, :]
    inside = (cols >= np.ceil(lo - 1e-6)[:, None]) & (cols <= np.floor(hi + 1e-6)[:, None])
    inside &= flat_ok[:, None]
    part = obj[t:b, lft:r]
    hollows = inside & ~part
    if not hollows.any():
        return obj
    outside = np.pad(~inside & ~part, 1)                        # the frame's edge: no mouth
    mouths = hollows & (outside[:-2, 1:-1] | outside[2:, 1:-1]
                        | outside[1:-1, :-2] | outside[1:-1, 2:])
    labels, n = ndimage.label(hollows)
    fill = np.zeros(n + 1, dtype=bool)
    for k, box in enumerate(ndimage.find_objects(labels), start=1):
        hollow = labels[box] == k
        mouth = mouths[box] & hollow
        if not mouth.any():
            fill[k] = True
            continue
        my, mx = np.nonzero(mouth)
        width = math.hypot(int(my.max() - my.min()), int(mx.max() - mx.min())) + 1.0
        if math.hypot(*hollow.shape) <= width:      # no pixel of it can lie deeper
            continue
        depth = float(ndimage.distance_transform_edt(~mouth)[hollow].max())
        fill[k] = depth > width
    if not fill.any():
        return obj
    out = obj.copy()
    out[t:b, lft:r] |= fill[labels]
    return out


def measured_object(mask: np.ndarray,
                    region: tuple[int, int, int, int] | None = None) -> np.ndarray:
    """The object :func:`measure` measures in a (H, W) mask, as bool (H, W): the
    :func:`largest_component` (holes filled) of the mask within ``region`` (top, bottom, left,
    right; ``None``: all of it), the object an overlay outlines."""
    mask = binary_mask(mask, "measure")
    if region is None:
        return largest_component(mask)
    t, b, lft, r = region
    obj = np.zeros(mask.shape, dtype=bool)
    obj[t:b, lft:r] = largest_component(mask[t:b, lft:r])
    return obj


def crofton_perimeter(mask: np.ndarray, spacing: tuple[float, float] | None = None) -> float:
    """Perimeter (pixels) of a bool (H, W) mask by the four-direction Crofton formula.

    Counts the boundaries of every component and hole; pass a single filled component for the
    outer boundary only. ``spacing``: pixels of (height, width) mm, for the perimeter in mm of
    pixels that need not be square: each direction's count of boundary crossings times its
    lines' spacing, weighted by the share of the half circle of directions nearest to it (on a
    grid of ``dy`` by ``dx``, the diagonals lie at ``atan(dy / dx)``, not at 45 degrees).
    """
    m = np.pad(np.asarray(mask, dtype=bool), 1)
    entries_rows = np.count_nonzero(m[:, 1:] & ~m[:, :-1])
    entries_cols = np.count_nonzero(m[1:, :] & ~m[:-1, :])
    entries_diag = np.count_nonzero(m[1:, 1:] & ~m[:-1, :-1])
    entries_anti = np.count_nonzero(m[1:, :-1] & ~m[:-1, 1:])
    if spacing is not None:
        dy, dx = spacing
        alpha = math.atan2(dy, dx)             # the diagonals' angle from the rows
        return float(alpha * entries_rows * dy + (math.pi / 2.0 - alpha) * entries_cols * dx
                     + math.pi / 4.0 * (entries_diag + entries_anti) * dx * dy / math.hypot(dx, dy))
    diagonal = (entries_diag + entries_anti) / math.sqrt(2.0)
    return float(math.pi / 4.0 * (entries_rows + entries_cols + diagonal))


def scaled_ellipse_axes(a: float, b: float, angle_deg: float, spacing: tuple[float, float]
                        ) -> tuple[float, float]:
    """The semi-axes (mm, major first) of the ellipse of semi-axes ``a``, ``b`` px whose major
    axis lies at ``angle_deg`` from +x towards +y, on pixels of (height, width) ``spacing`` mm:
    the singular values of diag(dx, dy) R(angle) diag(a, b)."""
    dy, dx = spacing
    t = math.radians(angle_deg)
    m = np.array([[dx * a * math.cos(t), -dx * b * math.sin(t)],
                  [dy * a * math.sin(t), dy * b * math.cos(t)]])
    major, minor = np.linalg.svd(m, compute_uv=False)
    return float(major), float(minor)


def boundary_points(mask: np.ndarray, frame_edge: bool = True) -> np.ndarray:
    """Points (x, y) on the pixel-edge boundary of a bool (H, W) mask; float (K, 2).

    One point at the midpoint of every edge shared by a pixel inside and a pixel outside the
    mask (4-neighbours; outside the array counts as outside): the boundary of the union of the
    mask's unit squares, at half-pixel positions. With ``frame_edge=False`` the points on the
    array's own border (where the object is cut by the edge of the image, not by its own outline)
    are left out.
    """
    mask = np.asarray(mask, dtype=bool)
    h, w = mask.shape
    m = np.pad(mask, 1)
    ys, xs = np.nonzero(m[:, 1:] != m[:, :-1])      # between padded columns xs and xs + 1
    if not frame_edge:
        keep = (xs > 0) & (xs < w)
        ys, xs = ys[keep], xs[keep]
    horizontal = np.column_stack([xs - 0.5, ys - 1.0])
    ys, xs = np.nonzero(m[1:, :] != m[:-1, :])      # between padded rows ys and ys + 1
    if not frame_edge:
        keep = (ys > 0) & (ys < h)
        ys, xs = ys[keep], xs[keep]
    vertical = np.column_stack([xs - 1.0, ys - 0.5])
    return np.vstack([horizontal, vertical]).astype(np.float64)


def outline_half_width(outline: np.ndarray) -> float:
    """Half the width (pixels) of a closed outline drawn as a band of pixels, bool (H, W).

    The band's area divided by the sum of its outer and inner boundary lengths (Crofton). For an
    annotation drawn as an outline on the annotator's curve and then filled, the filled mask
    reaches this far beyond the curve: pass it as ``boundary_offset_px`` to :func:`measure`.
    Returns 0.0 when the outline encloses nothing (an open curve).
    """
    band = np.asarray(outline, dtype=bool)
    filled = ndimage.binary_fill_holes(band)
    interior = filled & ~band
    if not interior.any():
        return 0.0
    length = crofton_perimeter(filled) + crofton_perimeter(interior)
    return float(np.count_nonzero(band) / length)


def moments_ellipse(mask: np.ndarray) -> tuple[float, float, float, float, float] | None:
    """Ellipse with the same second moments as the pixels (unit squares) of a bool (H, W) mask."""
    ys, xs = np.nonzero(np.asarray(mask, dtype=bool))
    if len(xs) == 0:
        return None
    cx, cy = float(xs.mean()), float(ys.mean())
    cov = np.cov(np.vstack([xs, ys]).astype(np.float64), bias=True) + np.eye(2) / 12.0
    lam, vec = np.linalg.eigh(cov)
    a, b = 2.0 * math.sqrt(lam[1]), 2.0 * math.sqrt(lam[0])
    angle = math.degrees(math.atan2(vec[1, 1], vec[0, 1])) % 180.0
    return cx, cy, a, b, angle


def ellipse_circumference(a: Any, b: Any) -> Any:
    """Circumference of an ellipse with semi-axes a, b (Ramanujan's second approximation): a
    float for numbers, an array for arrays (broadcast); 0 where a + b is 0."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    s = a + b
    h = np.divide((a - b) ** 2, s ** 2, out=np.zeros(np.shape(s)), where=s != 0)
    circ = math.pi * s * (1.0 + 3.0 * h / (10.0 + np.sqrt(4.0 - 3.0 * h)))
    return float(circ) if circ.ndim == 0 else circ


def reference_touching_edge(rows: Iterable[Mapping[str, Any]]) -> int:
    """Of the frames in a head-circumference error (a row's ``hc_error_mm`` not None), how
    many whose object touches the frame's edge (``touches_edge``: a head cut by it, fitted on
    its visible outline): measure's ``n_reference_touches_edge``, evaluate's
    ``hc_touches_edge``."""
    return sum(1 for r in rows if r.get("hc_error_mm") is not None and r.get("touches_edge"))


def hc_error_interval(rows: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """The 95 % interval of the head-circumference MAE over the frames in the error (a row's
    ``hc_error_mm`` not None), as evaluate's Dice interval: ``hc_mae_mm_ci95``, the subjects
    (HC18's exams) resampled (:func:`~ultraseg.metrics.subject_interval` with the absolute
    errors as values), ``hc_mae_mm_ci95_method`` in its words
    (:func:`~ultraseg.metrics.interval_words`) and ``hc_n_subjects``, the subjects among
    those frames (None where one names none). The interval and method are None under two
    subjects, or with no frame in the error (no reference): measure's and evaluate's keys."""
    errors = [r for r in rows if r.get("hc_error_mm") is not None]
    subjects = [r.get("subject") for r in errors]
    named = bool(errors) and all(s is not None for s in subjects)
    ci = (subject_interval([abs(float(r["hc_error_mm"])) for r in errors],
                           [str(s) for s in subjects]) if named else None)
    n = len(set(subjects)) if named else None
    return {"hc_mae_mm_ci95": ci,
            "hc_mae_mm_ci95_method": None if ci is None else interval_words(n, len(errors)),
            "hc_n_subjects": n}


def hc_error_figures(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The head-circumference error over ``rows`` (each with ``hc_error_mm``, predicted -
    reference, where the frame has both, and ``hc_ref_mm``): ``mae`` and ``bias`` (mm; None
    with no frame in the error), ``n`` frames in it, ``with_reference`` frames with a
    reference and a pixel size, ``missed`` those of them with no error (no head found: left
    out of the MAE), ``touches_edge`` (:func:`reference_touching_edge`) and ``interval``
    (:func:`hc_error_interval`'s keys). The one computation behind evaluate's and measure's
    summaries, which name the figures their own way."""
    signed = [float(r["hc_error_mm"]) for r in rows if r.get("hc_error_mm") is not None]
    with_reference = sum(1 for r in rows
                         if r.get("hc_ref_mm") is not None and has_pixel_size(r))
    return {"mae": float(np.mean(np.abs(signed))) if signed else None,
            "bias": float(np.mean(signed)) if signed else None,
            "n": len(signed), "with_reference": with_reference,
            "missed": with_reference - len(signed),
            "touches_edge": reference_touching_edge(rows), "interval": hc_error_interval(rows)}

def hc_interval_words(summary: Mapping[str, Any]) -> str:
    """The words printed beside the HC MAE of a summary holding :func:`hc_error_interval`'s
    keys, `` (95% interval 1.50-2.25 mm, the 8 subjects resampled; <method>)``
    (:func:`~ultraseg.metrics.interval_label`); none where it has no interval (or is older)."""
    ci = summary.get("hc_mae_mm_ci95")
    if not ci:
        return ""
    n = summary["hc_n_subjects"]
    return (f" ({interval_label(n)} {ci[0]:.2f}-{ci[1]:.2f} mm, the {n} subjects resampled; "
            f"{summary['hc_mae_mm_ci95_method']})")


def touching_edge_words(n: int) -> str:
    """'N of them touch the frame's edge' ('1 of them touches'): :func:`reference_touching_edge`'s
    count as measure's and evaluate's summaries say it."""
    return f"{n} of them touch{'es' * (n == 1)} the frame's edge"


def over_frames_with_a_reference(found: int, with_reference: int, which: str = "",
                                 touching_edge: int = 0) -> str:
    """'over N of M{which} frames with a reference (K with no head found)': how many frames a
    head-circumference error is over, the frames with a reference where no head was found
    counted beside it (evaluate's summary, training's validation figure), and where
    ``touching_edge`` is not 0, how many of the N touch the frame's edge ('; E of them touch
    the frame's edge': :func:`touching_edge_words`)."""
    edge = f"; {touching_edge_words(touching_edge)}" if touching_edge else ""
    return (f"over {found} of {with_reference}{which} frames with a reference "
            f"({with_reference - found} with no head found{edge})")


#: Fewest validation frames with a reference circumference for :func:`choose_boundary_offset`
#: to replace the outline's half-width: one frame's error says nothing of a model's bias.
MIN_CALIBRATION_FRAMES = 10


def choose_boundary_offset(axes_px: np.ndarray, pixel_sizes_mm: np.ndarray,
                           references_mm: np.ndarray, start: float, span: float = 4.0,
                           step: float = 0.05, tolerance_mm: float = 1e-6
                           ) -> tuple[float, float, float]:
    """The ``boundary_offset_px`` that fits a model's ellipses to reference circumferences.

    ``axes_px`` float (N, 2): the semi-axes fitted to N predicted masks with no offset (px at
    each frame's resolution); ``pixel_sizes_mm`` and ``references_mm`` (N,): each frame's pixel
    size and reference circumference. Searches ``start +- span`` px in steps of ``step`` for
    the least mean absolute circumference error (the error reported), and of the offsets
    within ``tolerance_mm`` of it takes the one nearest ``start`` (the outline's half-width,
    what the masks themselves need): ties keep the start.
    Returns (offset, mean absolute error at ``start``, at the offset), errors in mm.
    """
    axes = np.asarray(axes_px, dtype=np.float64).reshape(-1, 2)
    sizes = np.asarray(pixel_sizes_mm, dtype=np.float64).reshape(-1)
    refs = np.asarray(references_mm, dtype=np.float64).reshape(-1)
    if not (len(axes) == len(sizes) == len(refs)) or not len(axes):
        raise ValueError(f"need as many axes, pixel sizes and references, at least one; got "
                         f"{len(axes)}, {len(sizes)}, {len(refs)}")
    a, b = axes[:, 0:1], axes[:, 1:2]
    n = int(round(span / step))
    offsets = start + step * np.arange(-n, n + 1)
    circ = ellipse_circumference(np.maximum(a - offsets, 0.0),    # (N, offsets)
                                 np.maximum(b - offsets, 0.0))
    mae = np.abs(circ * sizes[:, None] - refs[:, None]).mean(axis=0)
    near = np.flatnonzero(mae <= mae.min() + tolerance_mm)
    best = int(near[np.argmin(np.abs(offsets[near] - start))])
    return round(float(offsets[best]), 4), float(mae[n]), float(mae[best])


def seen_side(shape: tuple[int, ...], region: tuple[int, int, int, int] | None = None) -> int:
    """The longer side (px) of a frame of ``shape`` (H, W, ...), or of its ``region`` (top,
    bottom, left, right: the part a ``crop_border`` model sees) where given: what the frame
    is resized by onto the working canvas, padded to square."""
    if region is not None:
        top, bottom, left, right = region
        return max(bottom - top, right - left)
    return max(shape[0], shape[1])


def frame_boundary_offset(measure_meta: Mapping[str, Any] | None, shape: tuple[int, ...],
                          region: tuple[int, int, int, int] | None = None) -> float:
    """The ``boundary_offset_px`` to :func:`measure` a frame of ``shape`` (its ``region``,
    as :func:`seen_side` takes it) with, from a checkpoint's ``meta['measure']``: its
    ``boundary_offset_px`` times the frame's longer side over ``offset_frame_side_px``, the
    side it was chosen at (a model's boundary scales with the frame its output is resized
    to). A checkpoint without ``offset_frame_side_px`` (saved before it was recorded) has its
    offset in pixels of any frame, as it was read then; none at all: 0."""
    meta = measure_meta or {}
    offset = float(meta.get("boundary_offset_px", 0.0))
    side = meta.get("offset_frame_side_px")
    if not side or not offset:
        return offset
    return offset * seen_side(shape, region) / float(side)


def side_words(measure_meta: Mapping[str, Any] | None) -> str:
    """' on frames 800 px long, scaled with a frame's longer side': at which frame side a
    checkpoint's boundary offset holds, as the report and the warnings say it after its
    pixels ('' for one that does not say: its pixels are any frame's)."""
    side = (measure_meta or {}).get("offset_frame_side_px")
    return f" on frames {side:g} px long, scaled with a frame's longer side" if side else ""


def measure(
    mask: np.ndarray,
    pixel_size_mm: float | tuple[float, float] | None = None,
    boundary_offset_px: float = 0.0,
    region: tuple[int, int, int, int] | None = None,
) -> dict[str, Any]:
    """Measure the object (largest component, holes filled) of a bool (H, W) mask; its ellipse
    is fitted to the region its outer outline encloses (:func:`enclosed`).

    The mask may also be numbers holding 0 and one other value (0/1, 0/255); floats other than
    0 and 1 (a probability map: threshold it first) or an integer image of several values are
    refused (:class:`~ultraseg.errors.UltrasegError`), not read as every pixel above 0.

    ``boundary_offset_px`` is subtracted from both fitted semi-axes (see the module docstring);
    it does not change ``area_px`` or ``perimeter_px``. ``region`` (top, bottom, left, right):
    the part of the frame the prediction covers (with ``crop_border``, the content box; the
    mask is empty outside it): its edges count as the frame's edges, so an object cut there is
    flagged and fitted on its visible outline. Coordinates stay the whole frame's.

    Keys: ``n_components``, ``touches_edge`` (the object reaches the image's border),
    ``area_px``, ``perimeter_px``, ``ellipse_center`` (x, y),
    ``ellipse_axes`` (a, b semi-axes, a >= b, px), ``ellipse_angle_deg`` (major axis from +x
    towards +y, [0, 180)), ``ellipse_circumference_px``, ``ellipse_method`` ('boundary_fit' or
    'moments'); with ``pixel_size_mm`` (one number: square pixels; or a (height, width) pair:
    pixels that are not square, see the module docstring) also ``area_mm2``,
    ``perimeter_mm``, ``hc_mm`` (the ellipse circumference in mm) and ``major_axis_mm`` and
    ``minor_axis_mm`` (the ellipse's whole axes, 2a and 2b: of a fetal head, the occipitofrontal
    and the biparietal diameter, outer to outer). Ellipse fields are ``None`` for an empty mask,
    and for an object whose minor semi-axis is no longer than ``boundary_offset_px`` (a speck
    no wider than the outline's line: a circumference of 0 mm is no head's).
    """
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"measure expects a 2D mask, got shape {mask.shape}")
    if mask.size == 0:      # (an IndexError from inside it)
        raise ValueError(f"measure expects a 2D mask of at least one pixel, got shape "
                         f"{mask.shape}")
    mask = binary_mask(mask, "measure")
    if isinstance(boundary_offset_px, bool) or not isinstance(boundary_offset_px, numbers.Real):
        # ("1" raised math's TypeError 'must be real number, not str' from inside it)
        raise UltrasegError(f"measure's boundary_offset_px must be a number of pixels, got "
                            f"{boundary_offset_px!r}")
    if not math.isfinite(boundary_offset_px):
        raise ValueError(f"boundary_offset_px must be finite, got {boundary_offset_px!r}")
    if region is not None:
        t, b, lft, r = region
        if not (0 <= t < b <= mask.shape[0] and 0 <= lft < r <= mask.shape[1]):
            raise ValueError(f"region {region} does not lie in the {mask.shape} mask")
        inside = mask[t:b, lft:r]
        out = measure(inside, pixel_size_mm, boundary_offset_px)
        if out["ellipse_center"] is not None:
            cx, cy = out["ellipse_center"]
            out["ellipse_center"] = (cx + lft, cy + t)
        # anything outside the region is no object the prediction could hold, but counts
        # (labelled anew only where there is any: the region's own count holds otherwise)
        if np.count_nonzero(inside) != np.count_nonzero(mask):
            out["n_components"] = int(ndimage.label(mask, structure=_EIGHT)[1])
        return out
    obj, n_components = _object(mask)
    area = int(np.count_nonzero(obj))
    out: dict[str, Any] = {
        "n_components": int(n_components),
        "touches_edge": bool(
            obj[0].any() or obj[-1].any() or obj[:, 0].any() or obj[:, -1].any()
        ),
        "area_px": area,
        "perimeter_px": crofton_perimeter(obj) if area else 0.0,
        "ellipse_center": None,
        "ellipse_axes": None,
        "ellipse_angle_deg": None,
        "ellipse_circumference_px": None,
        "ellipse_method": None,
    }
    if area:
        # An object cut by the frame's edge: fit its own outline only, not the straight cut.
        # the ellipse is the outer outline's (a ring cut by the frame or with a gap is filled
        # for it); area and perimeter stay the object's own, a lesion's clefts included
        outline = enclosed(obj)
        ell = fit_ellipse(boundary_points(outline, frame_edge=False))
        method = "boundary_fit"
        if ell is None:
            logger.debug("boundary ellipse fit failed (%d px); using moments", area)
            ell = moments_ellipse(outline)
            method = "moments"
        assert ell is not None
        cx, cy, a, b, angle = ell
        if b - boundary_offset_px <= 0:
            # the offset reaches the minor semi-axis: an object no wider than the outline's
            # line has no ellipse to give (a circumference of 0, or 4a, is no head's)
            logger.debug("object of %d px no wider than the boundary offset: no ellipse", area)
            return _with_mm(out, obj, pixel_size_mm)
        a, b = a - boundary_offset_px, b - boundary_offset_px
        out.update(
            ellipse_center=(cx, cy),
            ellipse_axes=(a, b),
            ellipse_angle_deg=angle,
            ellipse_circumference_px=ellipse_circumference(a, b),
            ellipse_method=method,
        )
    return _with_mm(out, obj, pixel_size_mm)


def _with_mm(out: dict[str, Any], obj: np.ndarray,
             pixel_size_mm: float | tuple[float, float] | None) -> dict[str, Any]:
    """``out`` with its mm fields where ``pixel_size_mm`` is given."""
    if pixel_size_mm is not None:
        out.update(_in_mm(out, obj, pixel_spacing(pixel_size_mm)))
    return out


def warn_too_small_for_an_ellipse(n: int, measure_meta: Mapping[str, Any],
                                  log: logging.Logger = logger) -> None:
    """Warn, where ``n`` > 0, that ``n`` frames' object was no wider than the boundary offset
    (a checkpoint's ``meta['measure']``: its ``boundary_offset_px``, at the frame side
    :func:`side_words` names), so :func:`measure` gave it no ellipse: no HC, left out of the
    HC error."""
    if n:
        words = (f"{float(measure_meta.get('boundary_offset_px', 0.0)):.2f} px"
                 f"{side_words(measure_meta)}")
        log.warning("%d frame%s: the object is no wider than the boundary offset (%s), "
                    "too small for an ellipse: no HC (empty cells), left out of the HC error "
                    "as a head not found",
                    n, "" if n == 1 else "s", words)


def _in_mm(out: dict[str, Any], obj: np.ndarray, spacing: tuple[float, float]
           ) -> dict[str, float | None]:
    """:func:`measure`'s mm fields of the object ``obj`` measured as ``out`` in px, on pixels
    of (height, width) ``spacing`` mm."""
    dy, dx = spacing
    circ, axes = out["ellipse_circumference_px"], out["ellipse_axes"]
    if dy == dx:            # square: every length times the one size
        s = dx
        return {"area_mm2": out["area_px"] * s * s, "perimeter_mm": out["perimeter_px"] * s,
                "hc_mm": None if circ is None else circ * s,
                "major_axis_mm": None if axes is None else 2 * axes[0] * s,
                "minor_axis_mm": None if axes is None else 2 * axes[1] * s}
    mm_axes = None if axes is None else scaled_ellipse_axes(*axes, out["ellipse_angle_deg"],
                                                            spacing)
    return {"area_mm2": out["area_px"] * dy * dx,
            "perimeter_mm": crofton_perimeter(obj, spacing) if out["area_px"] else 0.0,
            "hc_mm": None if mm_axes is None else ellipse_circumference(*mm_axes),
            "major_axis_mm": None if mm_axes is None else 2 * mm_axes[0],
            "minor_axis_mm": None if mm_axes is None else 2 * mm_axes[1]}
