"""The reader contract: a dataset layout on disk -> a list of :class:`Sample`.

A reader only *finds* files and pairs them (cheap); decoding and validation happen when a
sample is loaded, so that ``inspect`` can report every problem and training can cache arrays.
Decoding rules for images and masks live once, for every layout, in modules of their own, as
the other stages of reading do: :mod:`.images` (image files -> grey frames, loops frame by
frame), :mod:`.grey` (8 bits by one rule, and what reading as grey leaves out), :mod:`.masks`
(the mask rules, the label a run takes), :mod:`.files` (which files are images, walking a
tree) and :mod:`.outputs` (the folders ultraseg writes). Their names were defined here
before; import (and patch) them where they are defined.
"""
from __future__ import annotations

import re
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from ..errors import DataError
from .images import SeveralFrames, read_image, with_mask_advice
from .masks import decode_mask, white_labelled

__all__ = ["Sample", "DecodedMasks", "Reader", "SUBJECT_RULES", "subject_rule"]

_LEADING_SUBJECT = re.compile(r"^(\d+)_")


@dataclass(frozen=True)
class Sample:
    """One frame of a dataset: where its files are and what is known about it.

    ``mask_paths`` is empty for an unlabelled image; several paths are merged by union.
    ``mask_kind`` is 'mask' (binary or label raster) or 'outline' (a closed contour to fill).
    ``frame``: which frame of a file holding several (a cine loop: a multi-frame DICOM, a
    multi-page TIFF, an animated PNG), counted from 0; None for a file that is one frame (a
    file of several is then refused when read, see :func:`split_frames`).
    """

    name: str
    image_path: Path
    mask_paths: tuple[Path, ...] = ()
    subject: str = ""
    meta: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)
    mask_kind: str = "mask"
    frame: int | None = None
    #: The label of a black-and-white (0/255) mask's white: 1, or 255 in a set of label masks
    #: (:func:`ultraseg.io.white_for` decides it over the set).
    white: int = 1

    @property
    def labelled(self) -> bool:
        return bool(self.mask_paths)

    def load_image(self) -> np.ndarray:
        """The grayscale image, (H, W) uint8."""
        try:
            return read_image(self.image_path, frame=self.frame)
        except SeveralFrames as e:
            if not self.mask_paths:
                raise
            # a loop refused says what applies: predict takes a labelled set's images whole
            raise e.advised(with_mask_advice(self.image_path, self.mask_paths[0])) from None

    def load_mask(self) -> np.ndarray | None:
        """The mask, (H, W) uint8: 0 background, 1..K structures (labels kept); None if unlabelled."""
        decoded = self.decode_masks()
        return None if decoded is None else decoded.mask(self.white)

    def decode_masks(self) -> DecodedMasks | None:
        """The sample's mask files decoded, once each (:func:`decode_mask`), to be read with
        either white (:meth:`DecodedMasks.mask`); None if unlabelled."""
        if not self.mask_paths:
            return None
        read = [decode_mask(p) for p in self.mask_paths]
        shape = read[0][0].shape
        for p, (m, _) in zip(self.mask_paths, read):
            if m.shape != shape:
                raise DataError(f"mask is {m.shape[1]}x{m.shape[0]}, other masks of "
                                f"{self.name} are {shape[1]}x{shape[0]}", p)
        return DecodedMasks(self, tuple(m for m, _ in read), tuple(bw for _, bw in read))

    def load_decoded(self) -> tuple[np.ndarray, DecodedMasks | None]:
        """Image and decoded masks (:meth:`decode_masks`), checked to have the same size."""
        image = self.load_image()
        decoded = self.decode_masks()
        if decoded is not None and decoded.masks[0].shape != image.shape:
            raise mask_size_error(decoded.masks[0].shape, image.shape, self.mask_paths[0])
        return image, decoded

    def load(self) -> tuple[np.ndarray, np.ndarray | None]:
        """Image and mask, checked to have the same size."""
        image, decoded = self.load_decoded()
        return image, None if decoded is None else decoded.mask(self.white)


def mask_size_error(mask: tuple[int, ...], image: tuple[int, ...], path: Path) -> DataError:
    """The refusal of a mask ``path`` of shape ``mask`` for an image of shape ``image``, saying
    what to do: resize it with nearest-neighbour (any other interpolation makes new values at
    the edges, neither background nor label), or move the pair out."""
    h, w = image[:2]
    return DataError(f"mask is {mask[1]}x{mask[0]} but its image is {w}x{h}: resize the mask "
                     f"to {w}x{h} with nearest-neighbour interpolation, which keeps its labels "
                     f"(e.g. PIL's Image.open(MASK).resize(({w}, {h}), Image.NEAREST)), or "
                     f"move the pair out of the dataset", path)


@dataclass(frozen=True)
class DecodedMasks:
    """A sample's mask files decoded once (:meth:`Sample.decode_masks`): each with its white
    label 1, and whether it was black and white (:func:`decode_mask`)."""

    sample: Sample
    masks: tuple[np.ndarray, ...]
    black_and_white: tuple[bool, ...]

    @property
    def has_white(self) -> bool:
        """Whether a black-and-white mask of them has a white pixel: the white changes it."""
        return any(bw and m.any() for m, bw in zip(self.masks, self.black_and_white))

    @property
    def label_mask(self) -> bool:
        """Whether one of them is a label mask, making its set's black-and-white masks' white
        label 255 (:func:`ultraseg.io.white_label`): it holds a label other than 1 and is not
        0/255 alone (0/128/255, or 1 with an 'ignore' 255)."""
        for m, bw in zip(self.masks, self.black_and_white):
            held = set(np.unique(m).tolist()) - {0}
            if not bw and held - {1} and held != {255}:
                return True
        return False

    def mask(self, white: int) -> np.ndarray:
        """The sample's mask (:meth:`Sample.load_mask`), a black-and-white mask's white label
        ``white``."""
        masks = [white_labelled(m, bw, white) for m, bw in zip(self.masks, self.black_and_white)]
        if len(masks) == 1:
            mask = masks[0]
        else:  # several structures of one image: union (labels of later masks win where set)
            mask = masks[0].copy()
            for m in masks[1:]:
                mask[m > 0] = m[m > 0]
        if self.sample.mask_kind == "outline":
            from ..preprocess import fill_outline_labels

            mask = fill_outline_labels(mask, path=self.sample.mask_paths[0])
        return mask


def pattern_subject(pattern: re.Pattern[str], stem: str) -> str:
    """The subject --subject-pattern ``pattern`` takes from a file stem: its first group that
    took part in the match, else its whole match; '' where it does not match (an empty
    subject would join every such name into one subject, so it counts as a miss)."""
    m = pattern.search(stem)
    return next((g for g in m.groups() if g is not None), m.group(0)) if m else ""


class Reader(ABC):
    """One dataset layout. Subclasses set ``name`` and implement ``detect`` and ``scan``."""

    name: ClassVar[str]
    description: ClassVar[str] = ""

    def __init__(self, subject_pattern: str | None = None) -> None:
        self.subject_pattern = re.compile(subject_pattern) if subject_pattern else None
        self.pattern_hits = 0
        self.pattern_misses: list[str] = []   # stems the pattern did not match
        # whether the caller may draw a subject-grouped split of the samples (inspect, train,
        # evaluate): warnings about the grouping are said only then (predict and measure draw
        # none; :func:`ultraseg.io.scan_dataset` sets it from ``needs_labels``)
        self.groups_subjects = True
        # whether a ``subject_pattern`` matching no name is refused; False: the layout's
        # subjects are kept (:func:`ultraseg.io.scan_dataset` sets it)
        self.pattern_required = True

    @classmethod
    @abstractmethod
    def detect(cls, root: Path) -> bool:
        """True when ``root`` looks like this layout (cheap: names only)."""

    @abstractmethod
    def scan(self, root: Path) -> tuple[list[Sample], list[DataError]]:
        """Pair the files under ``root``: the samples found and the structural problems."""

    def subject_of(self, stem: str, default: str | None = None) -> str:
        """Subject id from a file stem: --subject-pattern's first group that matched (or its
        whole match) if given and it matches a non-empty string; else the layout's ``default``
        (the stem where there is none).
        Misses are counted in :attr:`pattern_misses` (:func:`ultraseg.io.scan_dataset` says)."""
        if self.subject_pattern is not None:
            subject = pattern_subject(self.subject_pattern, stem)
            if subject:
                self.pattern_hits += 1
                return subject
            self.pattern_misses.append(stem)
        return stem if default is None else default

    @property
    def subjects_by_pattern(self) -> bool:
        """Whether ``subject_pattern`` gives the subjects (as far as the names read so far
        say): one is given, and it matched a name or must (one that need not and matched
        none leaves the layout's subjects, as none)."""
        return self.subject_pattern is not None and (self.pattern_required
                                                     or self.pattern_hits > 0)

    def leading_subject(self, stem: str) -> str:
        """The subject of a ``SUBJECT_FRAME`` stem (its leading integer), else the stem itself;
        ``subject_pattern`` overrides."""
        m = _LEADING_SUBJECT.match(stem)
        return self.subject_of(stem, m.group(1) if m else stem)


#: How a sample's subject was found (:func:`subject_rule`), in the words inspect prints.
SUBJECT_RULES = {"subject_pattern": "--subject-pattern",
                 "subject_folder": "subject folder, images/SUBJECT/NAME",
                 "leading_number": "leading integer of SUBJECT_FRAME",
                 "own": "each frame its own"}


def subject_rule(sample: Sample, subject_pattern: str | None = None) -> str:
    """Which rule of :data:`SUBJECT_RULES` gave ``sample`` (as a reader found it, before
    :func:`~ultraseg.io.split_frames`) its subject: the dataset's ``subject_pattern`` (None
    where it gave none) where it took the subject from this sample's stem
    (:func:`pattern_subject`); else, a name it missed keeping the layout's subject, its name's
    subject folder (``SUBJECT/NAME``), else its leading integer
    (:meth:`Reader.leading_subject`), else the name itself."""
    folder, _, stem = sample.name.rpartition("/")
    if subject_pattern is not None and pattern_subject(re.compile(subject_pattern), stem):
        return "subject_pattern"
    if sample.subject in (sample.name, stem):
        return "own"
    if folder and sample.subject == folder:
        return "subject_folder"
    m = _LEADING_SUBJECT.match(stem)
    return "leading_number" if m and m.group(1) == sample.subject else "own"
