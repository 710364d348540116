"""Pure functions on arrays: from a decoded frame to the network's input, and back.

No torch here: the ONNX prediction path uses this module without PyTorch.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage as ndi

from .config import PreprocessConfig
from .errors import DataError, UltrasegError
from .io.grey import to_uint8


def to_gray(image: np.ndarray) -> np.ndarray:
    """(H, W) or (H, W, C) -> (H, W), same dtype. RGB uses ITU-R 601 luma weights; alpha is dropped."""
    if image.ndim == 2:
        return image
    if image.ndim == 3 and image.shape[2] in (1, 2):
        return image[..., 0]
    if image.ndim == 3 and image.shape[2] in (3, 4):
        rgb = image[..., :3].astype(np.float64)
        gray = rgb @ np.array([0.299, 0.587, 0.114])
        return np.round(gray).astype(image.dtype) if image.dtype.kind in "ui" else gray.astype(image.dtype)
    hint = " (channels first? give (H, W) or (H, W, C))" if image.ndim == 3 else ""
    raise UltrasegError(f"expected a 2D image or (H, W, C) with C in 1..4, got shape "
                        f"{image.shape}{hint}")


@dataclass(frozen=True)
class Geometry:
    """How a frame of ``height`` x ``width`` was placed on the working canvas, to undo it."""

    height: int
    width: int
    top: int = 0
    left: int = 0
    side: int = 0          # padded square side (0: no padding)
    size: int | None = None  # working resolution (None: no resize)
    box: tuple[int, int, int, int] | None = None  # (top, bottom, left, right) kept by crop_border


#: Grey levels within which a frame's edge row or column counts as a uniform band
#: (``crop_border``): :func:`content_box`'s ``tol``.
CROP_BORDER_TOLERANCE = 2


def content_box(image: np.ndarray, tol: int = CROP_BORDER_TOLERANCE
                ) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) of a grayscale frame without its uniform edge bands.

    A row or column is uniform when its values lie within ``tol`` of each other. Edge rows
    and columns are peeled while uniform, rows and columns in turn until none is left to peel,
    so bands of different values on different sides (grey above, black at the left) all go.
    A frame uniform throughout keeps its whole extent.
    """
    h, w = image.shape[:2]
    a = image.astype(np.int32 if image.dtype.kind in "ui" else np.float64, copy=False)
    t, b, lft, r = 0, h, 0, w
    while True:
        sub = a[t:b, lft:r]
        rows = np.flatnonzero(sub.max(axis=1) - sub.min(axis=1) > tol)
        cols = np.flatnonzero(sub.max(axis=0) - sub.min(axis=0) > tol)
        if rows.size == 0 or cols.size == 0:
            return 0, h, 0, w
        box = (t + int(rows[0]), t + int(rows[-1]) + 1,
               lft + int(cols[0]), lft + int(cols[-1]) + 1)
        if box == (t, b, lft, r):
            return box
        t, b, lft, r = box


def pad_to_square(image: np.ndarray, value: float = 0) -> tuple[np.ndarray, tuple[int, int]]:
    """Centre ``image`` (H, W) on a square of side max(H, W) filled with ``value``.

    Returns the square and the (top, left) offset of the image in it.
    """
    h, w = image.shape[:2]
    side = max(h, w)
    top, left = (side - h) // 2, (side - w) // 2
    out = np.full((side, side) + image.shape[2:], value, dtype=image.dtype)
    out[top:top + h, left:left + w] = image
    return out, (top, left)


def resize(image: np.ndarray, size: tuple[int, int], kind: str = "image") -> np.ndarray:
    """Resize (H, W) to ``size`` = (height, width).

    kind='image': area averaging when shrinking, bilinear when enlarging (keeps dtype).
    kind='mask': nearest neighbour (labels stay labels). kind='prob': bilinear on float32.
    """
    h, w = size
    if image.shape[:2] == (h, w):
        return image
    if kind == "mask":
        return np.asarray(Image.fromarray(image).resize((w, h), Image.NEAREST))
    shrinking = h < image.shape[0] and w < image.shape[1]
    method = Image.BOX if (kind == "image" and shrinking) else Image.BILINEAR
    if image.dtype == np.uint8:
        return np.asarray(Image.fromarray(image).resize((w, h), method))
    out = Image.fromarray(image.astype(np.float32)).resize((w, h), method)
    return np.asarray(out, dtype=np.float32)


def zscore_stats(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The z-score's statistics of (N, H, W) images, each over its whole canvas: mean and std
    as float32 (N,), a std of 1e-6 or under (a flat frame) given as 1. Training batches,
    validation and prediction all normalise by it."""
    flat = np.asarray(images).reshape(len(images), -1).astype(np.float32)
    mean, std = flat.mean(1), flat.std(1)
    return mean, np.where(std > 1e-6, std, np.float32(1.0)).astype(np.float32)


def normalise(image: np.ndarray, method: str = "unit") -> np.ndarray:
    """uint8 (H, W) -> float32 (H, W). 'unit': x / 255. 'zscore': (x - mean) / std per image
    (:func:`zscore_stats`)."""
    x = image.astype(np.float32)
    if method == "unit":
        return x / 255.0
    if method == "zscore":
        mean, std = zscore_stats(x[None])
        return (x - float(mean[0])) / float(std[0])
    raise ValueError(f"unknown normalisation '{method}'; valid: unit, zscore")


#: A mask that filling its holes makes at least this many times larger looks like a drawn
#: closed contour (an outline) rather than a region; so does a band at most 4 px wide that it
#: makes :data:`THIN_OUTLINE_GROWTH` times larger (a thick outline round a small structure).
#: HC18's one-pixel annotations grow 20- to 54-fold, a 3-px outline of radius 20 about 4-fold
#: and of radius 8 1.8-fold; the real BUSI, nerve and Kaggle masks at most 1.004-fold (solid,
#: bar a pixel), and a ring of anatomy whose wall is a quarter of its radius (a heart's wall
#: round its cavity) about 2-fold, its wall wider than 4 px.
OUTLINE_GROWTH = 3.0
THIN_OUTLINE_GROWTH = 1.5


def looks_like_outline(mask: np.ndarray) -> bool:
    """Whether a bool (H, W) mask looks like a drawn closed contour, to be filled (see
    :data:`OUTLINE_GROWTH`); False for an empty one, a region, and a contour cut open."""
    mask = np.asarray(mask, dtype=bool)
    n = int(mask.sum())
    if not n:
        return False
    # on the foreground's bounding box alone (the same answer: what lies outside it is
    # background reaching the frame's edge, and erosion meets zeros there either way), which
    # took 4-12 ms a mask on the whole frame, more than decoding it, in every training's cache
    # build and every evaluate
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    mask = mask[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
    growth = int(ndi.binary_fill_holes(mask).sum()) / n
    if growth >= OUTLINE_GROWTH:
        return True
    # a band up to 4 px wide: two 3x3 erosions leave nothing of it
    return growth >= THIN_OUTLINE_GROWTH and not ndi.binary_erosion(
        mask, structure=np.ones((3, 3)), iterations=2).any()


def outline_note(outlined: int, nonempty: int) -> str | None:
    """What to say where most (over half) of ``nonempty`` masks, ``outlined`` of them, look
    like drawn closed contours (:func:`looks_like_outline`); else None: a few rings among
    regions may be the anatomy's."""
    if not outlined or 2 * outlined <= nonempty:
        return None
    return (f"{outlined} of the {nonempty} non-empty masks look like drawn closed contours "
            "(outlines): thin rings round a hole. Read as "
            "they are, they are scored and learnt as rings; if they are outlines, "
            "--fill-outlines fills them in any layout (preprocess.fill_outlines in a config; "
            "train, inspect, evaluate and predict take it)")


def fill_outline(outline: np.ndarray, path: str | Path | None = None) -> np.ndarray:
    """Fill a closed contour (bool (H, W), e.g. HC18's one-pixel ellipse) into a solid mask.

    The outline itself belongs to the mask. A contour cut by the image border (a head larger
    than the frame) splits the frame into regions, some inside the head and some outside, all
    touching the border: the regions lying mostly inside the ellipse fitted to the contour's
    pixels are filled (HC18's outlines are ellipses; closing the contour along every border it
    touches would also fill a frame corner outside the head). One with small gaps is closed by
    morphological closing; one that still encloses nothing raises :class:`DataError`.
    An annotation already solid (filled beforehand), or whose fill is (a thick outline of a
    small structure), is used as it is filled: see :func:`_solid`; so is one with nothing to
    fill whose regions fill their convex hulls (a small structure drawn solid, a thin bar),
    which no open curve does: see :func:`_convex_regions`.
    """
    outline = outline.astype(bool)
    if not outline.any():
        return outline
    encloses = 1.5 * outline.sum()      # a fill this large enclosed something
    as_drawn = ndi.binary_fill_holes(outline)
    if as_drawn.sum() > encloses or _solid(as_drawn):
        return as_drawn
    touches_border = (outline[0].any() or outline[-1].any() or outline[:, 0].any()
                      or outline[:, -1].any())
    if touches_border:
        filled = _fill_cut_outline(outline)
        if filled is not None and filled.sum() > encloses:
            return filled
    closed = ndi.binary_closing(outline, structure=np.ones((3, 3)), iterations=2,
                                border_value=0) | outline
    filled = ndi.binary_fill_holes(closed)
    if filled.sum() <= encloses and touches_border:    # cut, and with a gap
        filled = _fill_cut_outline(closed)
    if filled is None or filled.sum() <= encloses:
        if _convex_regions(as_drawn):   # a small structure drawn solid: nothing to fill
            return as_drawn
        raise DataError("outline annotation is not a closed contour (a gap wider than about "
                        "4 px, or an open curve) nor a solid region (one that fills its convex "
                        "hull, kept as drawn): nothing to fill; close the contour's gap in "
                        "the annotation, or remove the frame from the dataset", path)
    return filled


#: :func:`_convex_regions`: the least share of the pixels inside a region's convex hull it
#: must cover. A solid square, bar (slanted too) or disk covers all of them; a 1-px arc of a
#: circle of radius 3 or more at most 0.71, half a circle's 0.41; a thicker arc round a
#: structure of a few pixels is a blob, and is kept as one.
CONVEX_SHARE = 0.8


def _convex_regions(mask: np.ndarray) -> bool:
    """Whether each region (8-connected) of a bool (H, W) mask covers nearly all the pixel
    centres inside its convex hull (:data:`CONVEX_SHARE`): a structure drawn solid, however
    small or thin, rather than an open curve, which leaves its hull mostly empty. For a mask
    :func:`fill_outline` found nothing to fill in."""
    from scipy.spatial import ConvexHull, QhullError

    regions, n = ndi.label(mask, structure=np.ones((3, 3)))
    for i, box in enumerate(ndi.find_objects(regions), start=1):
        ys, xs = np.nonzero(regions[box] == i)
        try:
            hull = ConvexHull(np.column_stack([xs, ys]).astype(np.float64))
        except QhullError:                  # a point or a straight line of pixels: all solid
            continue
        if len(xs) < CONVEX_SHARE * hull.volume:    # (its area: fewer centres than inside)
            return False
        # the pixel centres of its box inside the hull: a x + b y + c <= 0 for every edge
        yy, xx = np.indices(regions[box].shape, dtype=np.float64)
        inside = int(np.all(np.multiply.outer(xx, hull.equations[:, 0])
                            + np.multiply.outer(yy, hull.equations[:, 1])
                            + hull.equations[:, 2] <= 1e-9, axis=-1).sum())
        if len(xs) < CONVEX_SHARE * inside:
            return False
    return n > 0


def fill_outline_labels(mask: np.ndarray, path: str | Path | None = None) -> np.ndarray:
    """Fill the closed contours of a label mask ((H, W) uint8, 0 background, 1..K), each label
    on its own (:func:`fill_outline`), keeping its value: (H, W) uint8.

    Where two labels' fills overlap, the smaller fill is painted last and wins (ties: the
    higher label): a contour drawn inside another (a structure in a head) keeps its label, and
    the outer label covers its fill outside it, as a solid label mask draws nested structures.
    """
    values = [int(v) for v in np.unique(mask) if v]
    fills = [(fill_outline(mask == v, path=path), v) for v in values]
    out = np.zeros(mask.shape, np.uint8)
    for filled, v in sorted(fills, key=lambda f: (-int(f[0].sum()), f[1])):
        out[filled] = v
    return out


def _solid(mask: np.ndarray) -> bool:
    """Whether a bool (H, W) mask is a region, not a drawn band: more than half its pixels
    survive one 3x3 erosion (the frame's edge not counted as background, so a region cut by it
    stays solid). A band w px wide keeps (w - 2) / w of its pixels, under half up to 4 px (a
    drawn outline's 1 to 3: HC18's); a region of radius r about ((r - 1) / r)**2, over half
    from r = 4."""
    core = ndi.binary_erosion(mask, structure=np.ones((3, 3)), border_value=1)
    return 2 * int(core.sum()) > int(mask.sum())


def _fill_cut_outline(outline: np.ndarray) -> np.ndarray | None:
    """A contour cut by the frame, filled: the outline and the regions it splits the frame
    into (4-connected, so a one-pixel 8-connected contour separates them) that lie mostly
    inside the ellipse fitted to its pixels. None where no ellipse fits."""
    from .ellipse import fit_ellipse

    ys, xs = np.nonzero(outline)
    ellipse = fit_ellipse(np.column_stack([xs, ys]).astype(np.float64))
    if ellipse is None:
        return None
    cx, cy, a, b, angle = ellipse
    if not (a > 0 and b > 0):
        return None
    t = np.deg2rad(angle)
    yy, xx = np.mgrid[0:outline.shape[0], 0:outline.shape[1]]
    u = (xx - cx) * np.cos(t) + (yy - cy) * np.sin(t)
    v = -(xx - cx) * np.sin(t) + (yy - cy) * np.cos(t)
    inside = (u / a) ** 2 + (v / b) ** 2 <= 1.0
    regions, n = ndi.label(~outline)
    counts = np.bincount(regions.ravel(), minlength=n + 1)
    counts_inside = np.bincount(regions.ravel(), weights=inside.ravel(), minlength=n + 1)
    interior = counts_inside > counts / 2
    interior[0] = True                                  # label 0: the outline itself
    return interior[regions]


def seen_region(image: np.ndarray, cfg: PreprocessConfig) -> tuple[int, int, int, int] | None:
    """(top, bottom, left, right) of the part of a frame :func:`to_canvas` keeps: its content
    box where ``cfg.crop_border`` applies, else None (all of it)."""
    return content_box(image) if cfg.size is not None and cfg.crop_border else None


def to_canvas(image: np.ndarray, cfg: PreprocessConfig, kind: str = "image",
              box: tuple[int, int, int, int] | None = None) -> tuple[np.ndarray, Geometry]:
    """Place a frame (H, W) on the working canvas: crop its uniform border where
    ``cfg.crop_border``, pad to square, resize to ``cfg.size``.

    Same dtype out as in. ``kind`` as in :func:`resize`. ``box``: the crop to apply (the one
    the image's geometry holds, for its mask); found from the frame itself for images.
    """
    h, w = image.shape[:2]
    top = left = side = 0
    if cfg.size is not None and cfg.crop_border:
        if box is None:
            if kind != "image":
                raise ValueError("crop_border: a mask or probability map needs its image's box")
            box = seen_region(image, cfg)
            assert box is not None
        image = image[box[0]:box[1], box[2]:box[3]]
    else:
        box = None
    ch, cw = image.shape[:2]
    if cfg.size is not None and cfg.pad_to_square and ch != cw:
        side = max(ch, cw)
        top, left = (side - ch) // 2, (side - cw) // 2
        if side > cfg.size and side * side > SQUARE_PIXELS_IN_ONE_GO and image.ndim == 2 \
                and image.dtype == np.uint8 and kind in ("image", "mask"):
            image = _padded_and_shrunk(image, top, left, side, cfg.size, kind)
            return image, Geometry(h, w, top, left, side, cfg.size, box)
        image, (top, left) = pad_to_square(image)
    if cfg.size is not None:
        image = resize(image, (cfg.size, cfg.size), kind)
    return image, Geometry(h, w, top, left, side, cfg.size, box)


#: Canvas pixels under which a frame's shorter side, padded to the square, leaves a strip
#: the network hardly sees (2000x40 on a 64 px canvas: 1.3 rows; its mask says little).
MIN_SHORT_SIDE_ON_CANVAS = 8


class ThinFrames:
    """A tally of the frames whose shorter side, padded to ``cfg``'s square canvas, covers
    fewer than :data:`MIN_SHORT_SIDE_ON_CANVAS` canvas pixels; :meth:`warn` says so once for
    all of them, naming the first."""

    def __init__(self, cfg: PreprocessConfig) -> None:
        self.cfg = cfg
        self.n = 0
        self.first: tuple[str, int, int] | None = None

    def add(self, name: object, image: np.ndarray) -> None:
        """Count the frame ``name`` (its pixels ``image``) where it is one: with
        ``crop_border``, by the part of it the canvas takes (:func:`content_box`)."""
        h, w = image.shape[:2]
        if self.cfg.size is None or not self.cfg.pad_to_square:
            return
        if self.cfg.crop_border and image.ndim == 2:
            top, bottom, left, right = content_box(image)
            h, w = bottom - top, right - left
        if h == w:
            return
        if min(h, w) * self.cfg.size / max(h, w) < MIN_SHORT_SIDE_ON_CANVAS:
            self.n += 1
            self.first = self.first or (str(name), h, w)

    def warn(self, logger: logging.Logger, remedy: str) -> None:
        """One warning for the frames counted (none: nothing), then the tally starts again."""
        if self.first is not None:
            name, h, w = self.first
            logger.warning(
                "%d frame(s) so long and thin that, padded to the %d px square canvas, their "
                "shorter side covers fewer than %d canvas pixels (first: %s, %dx%d: %.1f px): "
                "their masks say little; %s", self.n, self.cfg.size, MIN_SHORT_SIDE_ON_CANVAS,
                name, w, h, min(h, w) * self.cfg.size / max(h, w), remedy)
        self.n, self.first = 0, None


#: What helps a prediction of the frames :class:`ThinFrames` counts (the padding is the model's).
PAD_TO_SQUARE_REMEDY = ("a model trained with --no-pad-to-square stretches such frames onto "
                        "its canvas instead (or one trained at a larger --size)")


#: Past this many pixels a frame's padded square is not made: a long, thin frame (4 x 40000)
#: took 1.6 GB for it, 100000 px long 9.3 GiB (:func:`_padded_and_shrunk`).
SQUARE_PIXELS_IN_ONE_GO = 4096 * 4096

#: Rows of the padded square resampled at a time by :func:`_padded_and_shrunk`.
_ROWS_AT_A_TIME = 512


def _padded_and_shrunk(image: np.ndarray, top: int, left: int, side: int, size: int,
                       kind: str) -> np.ndarray:
    """:func:`resize` (``kind`` 'image' or 'mask') of ``image`` (uint8) padded with zeros to
    the square of ``side`` at (``top``, ``left``), to ``size`` < ``side``: the same values,
    without the square in memory. Pillow resamples a box filter in two passes, along rows
    then along columns, rounding to 8 bits between them: the row pass is made a band of rows
    at a time (a padding row gives zeros), the column pass on its (side, size) result. Its
    nearest neighbour takes, for each output row and column, one source row and column: they
    are asked of Pillow with an index ramp, and the frame's pixels picked."""
    h, w = image.shape
    if kind == "mask":
        def picks(n: int) -> np.ndarray:
            ramp = Image.fromarray(np.arange(n, dtype=np.int32)[None, :], mode="I")
            return np.asarray(ramp.resize((size, 1), Image.NEAREST))[0].astype(np.int64)
        rows, cols = picks(side) - top, picks(side) - left
        keep_r = (rows >= 0) & (rows < h)
        keep_c = (cols >= 0) & (cols < w)
        out = np.zeros((size, size), np.uint8)
        out[np.ix_(keep_r, keep_c)] = image[np.ix_(rows[keep_r], cols[keep_c])]
        return out
    across = np.zeros((side, size), np.uint8)           # the row pass, band by band
    for r0 in range(0, h, _ROWS_AT_A_TIME):
        band = image[r0:r0 + _ROWS_AT_A_TIME]
        padded = np.zeros((band.shape[0], side), np.uint8)
        padded[:, left:left + w] = band
        across[top + r0:top + r0 + band.shape[0]] = np.asarray(
            Image.fromarray(padded).resize((size, band.shape[0]), Image.BOX))
    return np.asarray(Image.fromarray(across).resize((size, size), Image.BOX))


def prepare(image: np.ndarray, cfg: PreprocessConfig) -> tuple[np.ndarray, Geometry]:
    """A decoded grayscale frame (H, W) uint8 -> network input float32 (S, S) and its geometry.

    Arrays of numbers only: an object array (``DataFrame.to_numpy()`` of mixed columns) is
    read as float64 where it holds numbers; complex, date and string arrays are refused."""
    if image.dtype.kind == "O":
        try:
            image = np.asarray(image, dtype=np.float64)
        except (TypeError, ValueError) as e:
            raise DataError(f"input array of Python objects that are not all numbers ({e})"
                            ) from e
    if image.dtype.kind not in "buif":
        raise DataError(f"input array of {image.dtype} values: an image is an array of "
                        "numbers (uint8, uint16, float...)")
    if image.ndim != 2:
        image = to_gray(image)
    if image.dtype.kind == "f" and not np.all(np.isfinite(image)):
        raise DataError("input array contains NaN or infinite values")
    if image.dtype != np.uint8:
        image = to_uint8(image)
    canvas, geom = to_canvas(image, cfg, "image")
    return normalise(canvas, cfg.normalise), geom


def restore(prob: np.ndarray, geom: Geometry) -> np.ndarray:
    """Undo :func:`to_canvas` on a probability map (S, S) -> (H, W) float32 at the original size."""
    prob = prob.astype(np.float32, copy=False)
    if geom.box is not None:  # the cropped bands come back as background
        t, b, lft, r = geom.box
        out = np.zeros((geom.height, geom.width), np.float32)
        out[t:b, lft:r] = restore(prob, replace(geom, height=b - t, width=r - lft, box=None))
        return out
    if geom.size is None:
        return prob[: geom.height, : geom.width]
    if geom.side:
        prob = _padding_from_frame(prob, geom)
        if prob.shape[0] == geom.side:
            return prob[geom.top: geom.top + geom.height, geom.left: geom.left + geom.width]
        # only the frame's part of the padded square, resampled from the whole canvas: the
        # values of resizing the square and cropping it, without the square (a 200 x 8000
        # frame's would take 256 MB per float32 map, as much as an 8000 x 8000 frame's)
        k = prob.shape[0] / geom.side
        box = (geom.left * k, geom.top * k, (geom.left + geom.width) * k,
               (geom.top + geom.height) * k)
        out = Image.fromarray(prob).resize((geom.width, geom.height), Image.BILINEAR, box=box)
        return np.asarray(out, dtype=np.float32)
    return resize(prob, (geom.height, geom.width), "prob")


def _padding_from_frame(prob: np.ndarray, geom: Geometry) -> np.ndarray:
    """The canvas with its padding rows and columns (those whose centres lie outside the frame)
    replaced by the nearest row or column of the frame. Resized back as it is, the frame's
    edge pixels beside the padding would blend with the padding's near-zero probabilities: a
    structure reaching that edge came back one row short of it (and a head cut by the frame
    was not seen to touch it)."""
    scale = prob.shape[0] / geom.side
    keep, pads = [], []
    for axis, start, length in ((0, geom.top, geom.height), (1, geom.left, geom.width)):
        first = max(math.ceil(start * scale - 0.5), 0)
        last = min(math.ceil((start + length) * scale - 0.5) - 1, prob.shape[axis] - 1)
        if first > last:                 # the frame holds no row's centre: leave the axis
            first, last = 0, prob.shape[axis] - 1
        keep.append(slice(first, last + 1))
        pads.append((first, prob.shape[axis] - 1 - last))
    return np.pad(prob[tuple(keep)], pads, mode="edge")
