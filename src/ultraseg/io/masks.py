"""Decoding mask files by the mask rules, decided once for every layout (binary, label,
JPEG, palette, colour, drawn in the alpha, resized with a filter: :func:`read_mask`), and the
structure a run takes from a label mask (:func:`select_label`, :class:`LabelTally`).

Moved from :mod:`ultraseg.io.base` as it was; import its names from here.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from PIL import Image

from ..config import MAX_LABEL, label_problem
from ..errors import DataError, UltrasegError
from ..fileio import as_path
from .dicom import is_dicom
from .grey import unit_to_uint8
from .images import IN_MEMORY, SAMPLE_BITS, _open

#: :class:`LabelTally`'s warning keeps the name of the logger it was said on before it moved
#: here (:mod:`ultraseg.io.base`'s), so that a filter or level set on it still reaches it.
log = logging.getLogger("ultraseg.io.base")

#: A mask with at most this many distinct values (and not binary) is read as a label mask.
MAX_LABELS = 32
#: Share of pixels that must lie near 0 or 255 for a many-valued mask to count as a lossy
#: (JPEG) binary mask, which is then binarised at the midpoint 127.
LOSSY_BINARY_SHARE = 0.98
LOSSY_BINARY_BAND = 48


def read_mask(path: str | Path, white: int = 1) -> np.ndarray:
    """Decode a mask file to (H, W) uint8 labels: binary masks become {0, 1}, label masks keep labels.
    ``white``: the label of a 0/255 mask's white, 255 where the set's other masks are label
    masks (:func:`ultraseg.io.white_for`), else 1.

    Accepted: values {0,1}, {0,255}, or two values {0, N} at 16 bits; JPEG masks, whatever
    values their compression leaves (>= 98 % of pixels within 48 of 0 or 255), binarised at 127;
    palette PNGs: a palette of greys is decoded through its colours (a quantized black-and-white
    mask may put white at index 0), a coloured palette's indices are the labels (at most 32);
    integer label masks with at most 32 distinct values (at 2 or 4 bits a sample, the values
    stored, not Pillow's scaled ones); RGB/RGBA masks whose colour channels
    agree, as gray; RGB/RGBA masks of at most 32 colours as labels, black the background and
    each colour's label its grey level (ITU-R 601 luma: red 76, green 150); resized with a
    smoothing filter, grey (0/255, 0/65535 or floats in [0, 1], and a band of blends) or of
    one colour blended with black, binarised at half (:func:`_blended_binary`,
    :func:`_blended_colour`), of several colours blended refused; gray masks with an
    alpha channel (LA); CMYK and YCbCr masks by their RGB colours.
    With an alpha channel (a palette's transparency too), the alpha is the mask when it varies
    and the colour is one value over the pixels not fully transparent (a structure drawn as
    opaque pixels of one colour on a transparent frame, whatever colour the transparent pixels
    hold; a colour, not a grey, labels it by its grey level, as above, in a palette too unless
    it carries colours no pixel uses, a label palette's, whose indices stay the labels);
    otherwise the alpha is ignored, but a fully transparent pixel of a coloured mask (or
    coloured palette) is background.
    Refused with :class:`DataError`: anything else, e.g. a photograph saved as a mask.
    """
    return white_labelled(*decode_mask(as_path(path, "read_mask", IN_MEMORY)), white)


def white_labelled(mask: np.ndarray, black_and_white: bool, white: int) -> np.ndarray:
    """``mask`` (read with its white label 1) with a black-and-white mask's white label
    ``white`` (1, or 255 in a set of label masks: :func:`ultraseg.io.white_for`)."""
    return mask * np.uint8(white) if black_and_white and white != 1 else mask


def decode_mask(path: str | Path) -> tuple[np.ndarray, bool]:
    """The mask :func:`read_mask` reads from ``path`` with its white label 1, and whether it was
    black and white (0/255 at 8 bits, 0/N at 16, a 1-bit image, a JPEG or a resize's blends
    of one: binarised), whose white :func:`read_mask` gives the label ``white``; a 0/1 mask's
    1 is not (it is label 1 whatever the set)."""
    path = as_path(path, "decode_mask", IN_MEMORY)
    if is_dicom(path):
        raise DataError("a DICOM file as a mask: masks are image files (PNG, TIFF...); DICOM "
                        "segmentation objects are not read", path)
    with _open(path, kind="mask") as im:
        return _mask_pixels(im, path)


def _mask_pixels(im: Image.Image, path: Path) -> tuple[np.ndarray, bool]:
    """:func:`decode_mask`'s rules on the decoded ``im``."""
    lossy = im.format in LOSSY_FORMATS
    if im.mode == "1":
        return np.asarray(im, dtype=np.uint8), True
    if im.mode in ("CMYK", "YCbCr"):        # colour spaces: their colours, as a viewer shows
        im = im.convert("RGB")
    if im.mode == "P":
        indices = np.asarray(im, dtype=np.uint8)
        rgba = np.asarray(im.convert("RGBA"))
        rgb = rgba[..., :3]
        alpha = rgba[..., 3]
        if "transparency" in im.info and _drawn_in_alpha(rgb, alpha) and (
                _channels_agree(rgb[alpha > 0][:1]) or not _other_colours(im, indices)):
            arr = rgba      # drawn in the alpha, optimised: read as the RGBA mask it shows
        elif not _channels_agree(rgb):  # coloured palette: indices are labels, a transparent
            return _check_label_count(np.where(alpha > 0, indices, 0), path), False  # pixel none
        else:
            arr = rgb[..., 0]                           # greys: decode through the palette
    else:
        arr = np.asarray(im)
        bits = im.info.get(SAMPLE_BITS)
        if bits and not set(np.unique(arr).tolist()) <= {0, 255}:
            arr = arr // (255 // (2 ** bits - 1))    # labels of 2 or 4 bits, as stored
    if arr.ndim == 3:
        has_alpha = arr.shape[2] in (2, 4)                  # LA, RGBA
        colour = arr[..., :-1] if has_alpha else arr
        alpha = arr[..., -1] if has_alpha else None
        if alpha is not None and _drawn_in_alpha(colour, alpha):
            arr = alpha                                 # drawn in the alpha channel
            seen = colour[alpha > 0][:1]
            if not _channels_agree(seen):   # in a colour: labelled as on an opaque frame
                level = max(int(_grey_levels(seen[None])[0, 0]), 1)
                return (_classify(arr, path)[0] > 0).astype(np.uint8) * level, False
        elif _channels_agree(colour):
            arr = colour[..., 0]
        else:           # a transparent pixel is background, whatever colour it holds
            if alpha is not None:
                colour = np.where(alpha[..., None] > 0, colour, 0).astype(colour.dtype)
            return _colour_labels(colour, lossy, path), False
    if lossy:
        return _binarise_lossy(arr, path), True
    return _classify(arr, path)


#: Share of a lossy mask's pixels above its lowest value, none above half the range, beyond
#: which it is taken for a 0/1 or label mask saved as JPEG rather than an empty mask.
LOW_LABEL_SHARE = 0.001

#: Pillow's names of lossy formats: their masks are binary masks blurred by compression.
LOSSY_FORMATS = frozenset({"JPEG", "MPO", "JPEG2000"})


def _other_colours(im: Image.Image, indices: np.ndarray) -> bool:
    """Whether the palette image ``im`` (``indices``, its pixels) carries colours no pixel
    uses (besides black, a palette's padding): a label palette's colormap, a colour for each
    label of its set, whose indices are labels even where a mask shows one label; a PNG
    optimiser (pngquant, oxipng, Pillow's quantize) keeps the colours used alone."""
    entries = np.asarray(im.getpalette() or [], np.uint8).reshape(-1, 3)
    used = np.bincount(indices.ravel(), minlength=len(entries))[:len(entries)] > 0
    spare = entries[~used]
    spare = spare[spare.any(axis=1)]                       # (black: padding)
    return bool(spare.size) and not np.isin(spare @ [65536, 256, 1],
                                            entries[used] @ [65536, 256, 1]).all()


def _channels_agree(colour: np.ndarray) -> bool:
    return all(np.array_equal(colour[..., 0], colour[..., c]) for c in range(1, colour.shape[-1]))


def _flat(arr: np.ndarray) -> bool:
    return bool(arr.size) and bool((arr == arr.flat[0]).all())


def _drawn_in_alpha(colour: np.ndarray, alpha: np.ndarray) -> bool:
    """Whether a mask's alpha is its structure: the alpha varies and the colour (H, W, C) is
    one value over the pixels that are not fully transparent (what colour those hold does not
    matter: GIMP and Photoshop write them (0, 0, 0, 0))."""
    if _flat(alpha):
        return False
    seen = colour[alpha > 0]                            # (N, C), N > 0: the alpha varies
    return bool((seen == seen[0]).all())


def _grey_levels(colour: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 colours -> (H, W) uint8 grey levels, ITU-R 601 luma as Pillow's
    ``convert("L")`` (as an RGB image is read)."""
    return np.asarray(Image.fromarray(np.ascontiguousarray(colour, np.uint8), "RGB").convert("L"))


def _colour_labels(colour: np.ndarray, lossy: bool, path: Path) -> np.ndarray:
    """An RGB mask (H, W, 3) whose channels disagree as labels: black the background, each
    colour's label its grey level (ITU-R 601 luma, as Pillow's ``convert("L")``), so one colour
    has one label in every mask of a set (drawn in the alpha channel too); an anti-aliased one
    binarised or refused by :func:`_blended_colour`. Refused: more than
    :data:`MAX_LABELS` colours (a photograph), colours that share a grey level (or a colour
    of grey level 0 but black), and a lossy file (compression scatters its colours)."""
    if lossy:
        raise DataError("colour mask saved as JPEG, which compression blurs into many colours: "
                        "save masks as PNG (gray, or a palette PNG for labels)", path)
    packed = (colour[..., 0].astype(np.uint32) << 16) | (colour[..., 1].astype(np.uint32) << 8) \
        | colour[..., 2]
    colours, first = np.unique(packed, return_index=True)
    if colours.size > 2:
        blended = _blended_colour(colour, packed, path)
        if blended is not None:
            return blended
    if colours.size > MAX_LABELS:
        raise DataError(f"mask is neither binary nor a label mask: {colours.size} distinct "
                        f"colours (at most {MAX_LABELS} label colours; is this an image saved "
                        "as a mask?)", path)
    luma = _grey_levels(colour)
    levels = luma.ravel()[first]                        # each colour's grey level
    if np.unique(levels).size < colours.size or (levels[colours != 0] == 0).any():
        raise DataError(f"colour mask of {colours.size} colours, some sharing a grey level "
                        "(each colour's label is its grey level): save it as a palette PNG "
                        "(or a gray label mask)", path)
    return luma


#: How far (in each channel) a colour may lie from the blend of two colours and count as it:
#: a resize rounds each channel of a blend to a whole value.
BLEND_SLACK = 2
#: Share of a soft-edged mask's in-between pixels that must be blends of two of its colours
#: (where three regions meet, a pixel blends three).
BLEND_SHARE = 0.9


def _unpacked(packed: np.ndarray) -> np.ndarray:
    """(N,) colours packed as 0xRRGGBB -> (N, 3) floats."""
    return np.stack([(packed >> 16) & 255, (packed >> 8) & 255, packed & 255], -1).astype(float)


def _blended_colour(colour: np.ndarray, packed: np.ndarray, path: Path) -> np.ndarray | None:
    """A colour mask (H, W, 3) resized with interpolation (anti-aliased: its edges blend its
    colours), as :func:`_blended_binary` tells a grey one: its colours are those of solid
    regions (a pixel whose 8 neighbours share its colour) and, in a band at most two pixels
    thick between them, blends of two of them (within :data:`BLEND_SLACK`). Where they are
    black and one colour C, the labels of a blended binary of C (a pixel of t * C is C where
    t >= 1/2, labelled by C's grey level); where more colours blend, a DataError (there is no
    one colour to binarise, and each blend would be a label). None: no such mask."""
    from scipy import ndimage

    h, w = packed.shape
    # (the frame's edge repeated, as a neighbour outside it)
    solid = ((ndimage.maximum_filter(packed, size=3, mode="nearest") == packed)
             & (ndimage.minimum_filter(packed, size=3, mode="nearest") == packed))
    main = np.unique(packed[solid])
    between = ~np.isin(packed, main)
    if main.size < 2 or 0 not in main or not between.any():
        return None
    if not _thin_band(between):
        return None             # in-between colours in regions of their own: labels
    mids, count = np.unique(packed[between], return_counts=True)
    mid, ends = _unpacked(mids), _unpacked(main)
    on = np.zeros(len(mids), bool)
    for i in range(len(ends)):
        for j in range(i + 1, len(ends)):
            d = ends[j] - ends[i]
            t = np.clip((mid - ends[i]) @ d / (d @ d), 0.0, 1.0)
            on |= np.abs(mid - (ends[i] + t[:, None] * d)).max(axis=1) <= BLEND_SLACK
    if main.size == 2 and on.all():         # black and C: a blended binary of C
        c = ends[1]
        fg = colour.reshape(-1, 3).astype(float) @ c >= 0.5 * (c @ c)
        level = max(int(_grey_levels(c[None, None].astype(np.uint8))[0, 0]), 1)
        return fg.reshape(h, w).astype(np.uint8) * level
    if main.size > 2 and count[on].sum() >= BLEND_SHARE * count.sum():
        raise DataError(f"a soft-edged (anti-aliased) colour mask: {len(mids)} colours blend "
                        f"its {main.size - 1} label colours at their edges, and each would be "
                        "a label: save it without anti-aliasing (with nearest-neighbour "
                        "resizing), or as a gray or palette label mask", path)
    return None


def _check_label_count(labels: np.ndarray, path: Path) -> np.ndarray:
    n = np.unique(labels).size
    if n > MAX_LABELS:
        raise DataError(f"mask is neither binary nor a label mask: {n} distinct palette indices "
                        f"(at most {MAX_LABELS} labels; is this an image saved as a mask?)", path)
    return labels


def _binarise_lossy(arr: np.ndarray, path: Path) -> np.ndarray:
    """A JPEG mask is a binary mask that compression blurred: threshold at half the range,
    however few or many values it holds (an empty mask may decode to a flat 1 or 2, a tiny
    structure to a few ringing values); refused unless nearly every pixel is near 0 or the top."""
    top = 255 if arr.max() <= 255 else int(arr.max())
    band = LOSSY_BINARY_BAND * top / 255
    if ((arr <= band) | (arr >= top - band)).mean() < LOSSY_BINARY_SHARE:
        raise _not_a_mask(np.unique(arr), path, lossy=True)
    mask = (arr > top / 2).astype(np.uint8)
    if not mask.any() and not _flat(arr) and (arr > arr.min()).mean() >= LOW_LABEL_SHARE:
        # a 0/1 or label mask saved as JPEG: its structure sits at 1, 2 ... and would be read
        # as an empty mask (an empty JPEG mask decodes flat)
        raise DataError(f"JPEG mask whose values reach only {int(arr.max())}: a 0/1 or label "
                        "mask saved as JPEG, which compression blurs; save masks as PNG", path)
    return mask


#: The white of a black-and-white mask at 8 and at 16 bits, whose blends a resize with a
#: filter leaves between it and 0 (:func:`_blended_binary`).
WHITES = (255, 65535)


def _blended_binary(arr: np.ndarray, top: int) -> bool:
    """Whether the integer ``arr`` is a 0/``top`` mask (``top`` one of :data:`WHITES`: 0/255,
    or 0/65535 at 16 bits) resized with interpolation or area averaging (a dataset's masks
    scaled down with a resize's default filter): values 0 and ``top`` and, between them, a
    band of in-between values at most two pixels thick wherever it lies (no in-between pixel
    has only in-between neighbours) that lies between the two: each of its pieces touches a 0
    and a ``top`` pixel. A label mask's regions are thicker than that, or apart from the 255
    structure (a thin line labelled 128 beside it)."""
    if (top not in WHITES or arr.dtype.kind not in "ui" or arr.min() != 0
            or arr.max() != top):
        return False
    between = (arr > 0) & (arr < top)
    return (bool(between.any()) and _thin_band(between)
            and _between(between, arr == 0, arr == top))


def _between(band: np.ndarray, low: np.ndarray, high: np.ndarray) -> bool:
    """Whether every piece of ``band`` (8-connected, bool (H, W)) touches a pixel of ``low``
    and one of ``high``: blends lie between the two values they blend."""
    from scipy import ndimage

    eight = np.ones((3, 3), bool)
    pieces, n = ndimage.label(band, structure=eight)
    index = np.arange(1, n + 1)
    for side in (low, high):
        near = ndimage.binary_dilation(side, structure=eight)
        if not ndimage.maximum(near, pieces, index).all():
            return False
    return True


def _thin_band(between: np.ndarray) -> bool:
    """Whether the in-between pixels of a resized mask (bool (H, W)) lie in a band at most two
    pixels thick: none has only in-between neighbours (the frame's edge counting as such)."""
    from scipy import ndimage

    return not ndimage.binary_erosion(between, structure=np.ones((3, 3), bool),
                                      border_value=1).any()


def _not_a_mask(values: np.ndarray, path: str | Path | None, lossy: bool = False
                ) -> DataError:
    """The refusal of values that are neither a binary nor a label mask; ``lossy``: of a JPEG
    mask, which may be a label mask that compression blurred (0/85/170/255)."""
    why = ("a label mask saved as JPEG, whose compression blurs its labels: save masks as "
           "PNG; or an image saved as a mask?" if lossy else "is this an image saved as a mask?")
    return DataError(
        f"mask is neither binary nor a label mask: {values.size} distinct values spread over "
        f"{values.min():g}..{values.max():g} ({why})", path)


def classify_mask_values(arr: np.ndarray, path: str | Path | None = None) -> np.ndarray:
    """Apply the mask rules of :func:`read_mask` to a 2D integer array; returns uint8 labels
    (a black-and-white array's white label 1)."""
    return _classify(arr, path)[0]


def _classify(arr: np.ndarray, path: str | Path | None) -> tuple[np.ndarray, bool]:
    """:func:`classify_mask_values` with white label 1, and whether ``arr`` was black and
    white (:func:`decode_mask`)."""
    if arr.dtype.kind == "f":
        if not np.all(np.isfinite(arr)):
            raise DataError("mask contains NaN or infinite values", path)
    values = np.unique(arr)
    if values.size == 0:
        raise DataError("mask has no pixels", path)
    vset = set(values.tolist())
    if vset <= {0, 1}:
        return arr.astype(np.uint8), False
    shown = values          # (a refusal names the values as stored)
    if arr.dtype.kind == "f" and values.min() >= 0 and values.max() <= 1:
        # a 0/1 float mask resized with a filter: read as the same mask at 8 bits is, by
        # every rule below (to_uint8's [0, 1] times 255)
        arr = unit_to_uint8(arr)
        values = np.unique(arr)
        vset = set(values.tolist())
    if vset <= {0, 255} or (values.size == 2 and values.min() == 0 and values.max() > 255):
        return (arr > 0).astype(np.uint8), True     # black and white, 8 or 16 bits
    top = 255 if values.max() <= 255 else int(values.max())
    if _blended_binary(arr, top):   # resized with interpolation: the half-covered pixels in
        return (arr > top / 2).astype(np.uint8), True  # (as labels, every edge pixel was)
    if values.min() < 0:
        raise DataError("mask has negative values", path)
    band = LOSSY_BINARY_BAND * top / 255
    near = (arr <= band) | (arr >= top - band)
    # a lossy binary mask has several values near the top (JPEG rings around 255); a label
    # mask has at most one there (e.g. 255 as 'ignore'), however few values it has in all
    lossy = values.size > MAX_LABELS or int((values >= top - band).sum()) >= 2
    if values.max() >= top / 2 and lossy and near.mean() >= LOSSY_BINARY_SHARE:
        return (arr > top / 2).astype(np.uint8), True
    if values.size <= MAX_LABELS and np.all(values == np.round(values)):
        if values.max() <= MAX_LABEL:     # (8 bits hold them)
            return arr.astype(np.uint8), False
        if arr.dtype.kind in "ui":  # a label mask whose labels do not fit 8 bits
            past = values[values > MAX_LABEL]
            above = ", ".join(str(int(v)) for v in past[:5])
            raise DataError(f"label mask with labels above {MAX_LABEL} ({above}"
                            f"{', ...' if past.size > 5 else ''}): ultraseg keeps labels 1 to "
                            f"{MAX_LABEL}; renumber them 1..K (at most {MAX_LABELS} values in "
                            "all)", path)
    raise _not_a_mask(shown, path)


def select_label(mask: np.ndarray, label: int | None) -> np.ndarray:
    """Binary target from a label mask: any structure when ``label`` is None, else label
    ``label`` (>= 1: 0 is the background, which as a target would be nearly every pixel)."""
    if label is None:
        return mask > 0
    check_label(label)
    return mask == label


class LabelTally:
    """The labels a run's masks hold, to say when the one selected (``--label K``) is in none of
    them: every frame's truth is then empty (a wrong K, or a checkpoint trained on another
    set's labels). :meth:`add` each mask with its :func:`select_label`; then
    :meth:`warn_if_absent`."""

    def __init__(self, label: int | None) -> None:
        self.label = label
        self.masks = 0
        self.held: set[int] = set()

    def add(self, mask: np.ndarray, selected: np.ndarray) -> None:
        self.masks += 1
        if self.label is None:
            return
        if selected.any():
            self.held.add(self.label)
        else:
            self.held.update(int(v) for v in np.unique(mask[mask > 0]))

    def absent(self) -> list[int] | None:
        """The labels the masks hold where none holds ``label``; None where one does, where
        they hold none at all (empty masks), or where no label is selected (any structure)."""
        if self.label is None or not self.held or self.label in self.held:
            return None
        return sorted(self.held)

    def warn_if_absent(self, consequence: str, logger: logging.Logger = log) -> list[int] | None:
        """:meth:`absent`, with a warning on ``logger`` ending in ``consequence`` (what the run
        did with the empty truth) where it is not None."""
        held = self.absent()
        if held:
            logger.warning("label %d occurs in none of the %d masks (they hold labels %s): %s",
                           self.label, self.masks, held, consequence)
        return held


def check_label(label: int | None) -> None:
    """Refuse a ``--label`` that names no structure: 0 (the background) or below, or past
    :data:`~ultraseg.config.MAX_LABEL` (a mask's labels), as the CLI's --label refuses it
    (:func:`~ultraseg.config.label_problem`)."""
    problem = label_problem(label)
    if problem:
        raise UltrasegError(f"--label (preprocess.label) {problem}")
