"""Reading datasets in the layouts they are distributed in.

``open_dataset(path, layout="auto")`` picks a reader from :data:`READERS` (by detection, or
by name) and returns a :class:`Dataset`: the paired samples, decoded lazily.
A new layout is a :class:`Reader` subclass added with :func:`register`.
"""
from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path

from ..config import check_flag
from ..errors import DataError, UltrasegError, command_line
from ..fileio import as_path
from ..logs import quiet
from .base import SUBJECT_RULES, Reader, Sample, subject_rule
from .dicom import (DICOM_EXTENSIONS, PIXEL_SIZE_NOT_TAKEN, dicom_frame_count, dicom_pixel_size_mm,
                    dicom_pixel_spacing_mm, is_dicom, read_dicom)
from .files import (IMAGE_EXTENSIONS, NO_DATA_FOLDERS, convert_advice, image_stem,
                    unread_files_said, unread_image_files)
from .folders import (TRAIN_WORDS, FoldersReader, folder_role, name_words, subject_link_advice,
                      subject_trees)
from .grey import said_once
from .hc18 import Hc18Reader, table_key
from .images import frame_count, frame_loop, read_image
from .masks import classify_mask_values, read_mask, select_label
from .naming import Unpaired, frame_tag, warn_patient_ids
from .outputs import OUTPUT_MARKER
from .readers import BusiReader, ImagesReader, KaggleReader, annotation_files, run_length_tables

log = logging.getLogger(__name__)

#: Layout name -> reader class. Auto-detection tries them in this order.
READERS: dict[str, type[Reader]] = {}


def register(cls: type[Reader]) -> type[Reader]:
    """Add a reader to the registry (usable as a class decorator)."""
    READERS[cls.name] = cls
    return cls


for _cls in (Hc18Reader, BusiReader, KaggleReader, FoldersReader, ImagesReader):
    register(_cls)


class DataProblems(DataError):
    """Several problems in one dataset; ``str()`` gives one line per problem."""

    def __init__(self, problems: list[DataError]) -> None:
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


@dataclass(frozen=True, repr=False)
class Dataset:
    root: Path
    layout: str
    samples: tuple[Sample, ...]
    #: the ``--subject-pattern`` that gave the samples' subjects: None where none was given,
    #: or one that need not fit (:func:`scan_dataset`'s ``pattern_required``) fitted no name
    subject_pattern: str | None = None

    def __len__(self) -> int:
        return len(self.samples)

    def __repr__(self) -> str:
        """Counts, not every sample: a notebook shows a dataset by its repr."""
        return (f"Dataset(root={str(self.root)!r}, layout={self.layout!r}, "
                f"{len(self.samples)} samples, {len(self.labelled)} labelled)")

    @property
    def labelled(self) -> tuple[Sample, ...]:
        return tuple(s for s in self.samples if s.labelled)

    @property
    def unlabelled(self) -> tuple[Sample, ...]:
        return tuple(s for s in self.samples if not s.labelled)


def get_reader(layout: str, subject_pattern: str | None = None) -> Reader:
    """The reader for ``layout``; an unknown name fails listing the valid ones."""
    if layout not in READERS:
        raise UltrasegError(f"unknown layout '{layout}'; valid layouts: auto, {', '.join(READERS)}")
    try:
        return READERS[layout](subject_pattern=subject_pattern)
    except Exception as e:  # re.error from a bad --subject-pattern
        raise UltrasegError(f"bad subject pattern {subject_pattern!r}: {e}") from e


def check_layout(layout: str, subject_pattern: str | None = None) -> None:
    """Refuse an unknown ``layout`` name (``auto`` or one of :data:`READERS`) and a
    ``subject_pattern`` that is no regex, before any folder is read: also where none is (image
    files named alone), so that a mistyped flag is never taken in silence."""
    get_reader(ImagesReader.name if layout == "auto" else layout, subject_pattern)


def detect_layout(root: str | Path) -> str:
    """The first registered layout whose ``detect`` accepts ``root``; a warning names the
    other labelled layouts it also fits (``images``, which fits any folder of images, aside)."""
    root = Path(root)
    fits = [name for name, cls in READERS.items() if cls.detect(root)]
    if fits:
        others = [name for name in fits[1:] if name != ImagesReader.name]
        if others:
            log.warning("%s is read as the '%s' layout but also fits the %s layout%s; "
                        "--layout NAME picks one", root, fits[0],
                        ", ".join(f"'{n}'" for n in others), "s" * (len(others) > 1))
        return fits[0]
    unread = unread_image_files(root) if root.is_dir() else {}
    raise DataError(("no images found" if unread else "empty folder or unknown layout: no "
                     "images found") + (
        f" ({unread_files_said(unread)}: it reads {', '.join(IMAGE_EXTENSIONS)}; "
        f"{convert_advice(unread)})" if unread else "") + "; valid layouts: " + ", ".join(READERS),
        root)


def nested_datasets(root: str | Path) -> list[tuple[Path, str]]:
    """The folders directly in ``root`` that a labelled layout reads, with that layout: the
    dataset an archive unpacked one level down (``download/Dataset_BUSI_with_GT/``, or
    ``mydata/`` beside macOS's ``__MACOSX/``), where ``root`` itself is only a folder of
    images, masks included."""
    root = Path(root)
    found = []
    for sub in sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith(".")
                      and d.name not in NO_DATA_FOLDERS and not (d / OUTPUT_MARKER).exists()):
        fits = [name for name, cls in READERS.items()
                if name != ImagesReader.name and cls.detect(sub)]
        if fits:
            found.append((sub, fits[0]))
    return found


def inspect_command(root: str | Path, layout: str = "auto", subject_pattern: str | None = None,
                    label: int | None = None, fill_outlines: bool = False) -> str:
    """The ``ultraseg inspect ROOT ...`` command line (to paste) that reads ``root`` as a
    command given these settings read it: a --layout given (not auto), --subject-pattern,
    --label and --fill-outlines, which change what inspect finds (without them, an outline
    with a gap or a folder forced to another layout showed no problem)."""
    words: list = ["ultraseg", "inspect", Path(root)]
    if layout != "auto":
        words.append(("--layout", layout))
    if subject_pattern is not None:
        words.append(("--subject-pattern", subject_pattern))
    if label is not None:
        words.append(("--label", str(label)))
    if fill_outlines:
        words.append("--fill-outlines")
    return command_line(*words)


def dataset_hint(root: str | Path, needs_labels: bool = True) -> str:
    """Where a folder read as unlabelled images is part of a labelled dataset, what to point
    at instead: the datasets below it (:func:`datasets_below_hint`), else the one it is part
    of (:func:`dataset_above_hint`); else ''."""
    return datasets_below_hint(root) or dataset_above_hint(root, needs_labels)


def datasets_below_hint(root: str | Path) -> str:
    """Where a folder read as unlabelled images holds labelled datasets, their masks read as
    frames: ``(masks included); ROOT/SUB holds a 'LAYOUT' dataset: point at it`` where
    :func:`nested_datasets` finds one (or several) below it (where several each hold one
    subject's images and masks folders, :func:`~ultraseg.io.folders.subject_trees`, how to
    link them all as one dataset instead); else ''."""
    root = Path(root)
    trees = subject_trees(root)
    if trees:   # one subject's dataset per folder: pointing at one reads one subject
        return f" (masks included); {subject_link_advice(root, trees)}"
    nested = nested_datasets(root)
    if nested:      # (of a dataset's splits, the one to train on)
        sub, name = next((n for n in nested if " ".join(name_words(n[0].name)) in TRAIN_WORDS),
                         nested[0])
        more = f" (and {len(nested) - 1} more folders)" if len(nested) > 1 else ""
        return f" (masks included); {sub} holds a {name!r} dataset{more}: point at it"
    return ""


def dataset_above_hint(root: str | Path, needs_labels: bool = True) -> str:
    """Where a folder read as unlabelled images is the images or masks folder of a labelled
    dataset (``DATA/images`` given for ``DATA``), its truth read there alone:
    ``; PARENT holds a 'LAYOUT' dataset: point at it`` (where PARENT has problems, which stop
    it being read: ``; PARENT holds a 'LAYOUT' dataset, which has problems (`ultraseg inspect
    PARENT` lists them)``: with ``needs_labels`` False, for predict and measure, an image or
    mask without its partner is none); else ''."""
    # (only a folder named as a dataset's part: detection could walk a large parent's tree)
    root = Path(os.path.abspath(root))              # ('.' has no name; '..' none to test)
    if folder_role(root.name) is None:
        return ""
    parent = root.parent
    for name, cls in READERS.items():
        if name != ImagesReader.name and cls.detect(parent):
            try:
                with quiet(log.name):  # (what the probe finds is about a folder not given)
                    samples, problems = cls().scan(parent)
                labelled = any(s.labelled for s in samples)
            except (OSError, UltrasegError):
                samples, labelled, problems = [], False, []
            # (a lone images/ folder is a 'folders' dataset of unlabelled frames: no better;
            # a folder named like a part beside a set, holding none of it, is no part of it)
            if not labelled or not any(root in Path(os.path.abspath(p)).parents
                                       for s in samples for p in (s.image_path, *s.mask_paths)):
                return ""
            if not needs_labels:    # an image or mask without its partner: none for predict
                problems = [p for p in problems if not isinstance(p, Unpaired)]
            if problems:    # pointing at it fails (predict's advice points here for that)
                return (f"; {parent} holds a {name!r} dataset, which has problems "
                        f"(`{inspect_command(parent)}` lists them)")
            return f"; {parent} holds a {name!r} dataset: point at it"
    return ""


def scan_dataset(path: str | Path, layout: str = "auto", subject_pattern: str | None = None,
                 fill_outlines: bool = False, needs_labels: bool = True,
                 pattern_required: bool = True) -> tuple[Dataset, list[DataError]]:
    """Find and pair the samples under ``path``; structural problems are returned, not raised.
    ``fill_outlines``: every mask is a drawn closed contour, filled when read
    (:func:`as_outline`; the hc18 layout's always are). ``needs_labels``: the caller wants
    masks (inspect, train, evaluate), so unlabelled images beside run-length masks in a CSV
    are warned of, and frames that may be one patient's but are their own subjects (the split
    they draw); predict and measure, for which unlabelled is normal, pass False.
    ``pattern_required``: a ``subject_pattern`` that matches no file name is refused; False
    (evaluate trying the one a model's run was trained with): the samples then keep their
    layout's subjects, as with none, and the dataset's ``subject_pattern`` is None."""
    fill_outlines = check_flag("fill_outlines", fill_outlines)
    root = as_path(path, "open_dataset", what="a dataset folder")
    if not root.exists():
        raise DataError("no such file or folder", root)
    if not root.is_dir():
        raise DataError("not a folder", root)
    check_layout(layout, subject_pattern)   # before touching the disk
    name = detect_layout(root) if layout == "auto" else layout
    reader = get_reader(name, subject_pattern)
    reader.groups_subjects = needs_labels
    reader.pattern_required = pattern_required
    try:
        samples, problems = reader.scan(root)
    except PermissionError as e:
        raise DataError("cannot read folder: permission denied", e.filename or root) from e
    samples = [with_header_pixel_size(s) for s in samples]
    if fill_outlines:
        samples = [as_outline(s) for s in samples]
    if layout != "auto" and not samples:
        problems = _forced_layout_problems(root, name, problems)
    if layout == "auto" and name == ImagesReader.name:
        # datasets below: their masks are read as frames (subject trees: the images reader
        # said so, with the links to make); the one above: its truth, which predict and
        # measure need not (predict's overlay says so: see write_predictions)
        below = datasets_below_hint(root)
        level = logging.WARNING if below or needs_labels else logging.DEBUG
        hint = below or (dataset_above_hint(root, needs_labels) if log.isEnabledFor(level)
                         else "")
        if hint and not subject_trees(root):
            log.log(level, "%s is read as a folder of unlabelled images%s", root, hint)
    if needs_labels and subject_pattern is None:
        warn_patient_ids(root, [(s.name, s.subject, s.image_path) for s in samples
                                if s.labelled])
    if needs_labels and not any(s.labelled for s in samples):
        for table, column in run_length_tables(root):
            log.warning("%s holds run-length masks (column %r), which ultraseg does not read: "
                        "the images are unlabelled. Decode them to PNG masks beside the images "
                        "(NAME_mask.png), e.g. with ultraseg.rle.decode(runs, (height, width)), "
                        "which reads Kaggle's column-major runs (the README's 'Run-length "
                        "masks' shows how)", table, column)
        annotations = annotation_files(root, [s.image_path for s in samples])
        if annotations:
            first, image = annotations[0]
            log.warning("%s holds %d XML or JSON annotation files named as the images (first: "
                        "%s, for %s), not read: polygon or outline annotations (DDTI's XML, "
                        "LabelMe's or COCO's JSON...) are not masks, so the images are "
                        "unlabelled: rasterise them to PNG masks beside the images "
                        "(NAME_mask.png), e.g. with PIL.ImageDraw.Draw(mask).polygon(points, "
                        "fill=255)",
                        root, len(annotations), first.name, image.name)
    unread = unread_image_files(root)
    if unread:
        log.warning("%s: %s, left out: it reads %s; to use them, %s", root,
                    unread_files_said(unread), ", ".join(IMAGE_EXTENSIONS),
                    convert_advice(unread))
    log.info("%s: layout %s, %d samples, %d problems", root, name, len(samples), len(problems))
    used = _check_pattern(reader, subject_pattern)
    return Dataset(root, name, tuple(samples), subject_pattern if used else None), problems


def file_sample(path: Path, tables: dict[Path, dict[str, dict[str, float]]] | None = None
                ) -> Sample:
    """An image file named on its own, as a sample: its pixel size and reference head
    circumference from its HC18 folder's table (:meth:`Hc18Reader.folder_table`), else its
    DICOM header's pixel size: it is measured in mm as it is when its folder is given.
    ``tables``: each folder's table, kept across calls (many files of one folder read its
    table once)."""
    tables = {} if tables is None else tables
    if path.parent not in tables:
        tables[path.parent] = Hc18Reader.folder_table(path.parent)
    meta = dict(tables[path.parent].get(table_key(path), {}))
    return with_header_pixel_size(Sample(image_stem(path), path, meta=meta))


def as_outline(sample: Sample) -> Sample:
    """``sample`` with its mask read as a drawn closed contour and filled
    (:func:`ultraseg.preprocess.fill_outline`), in any layout; an unlabelled one as it is."""
    return replace(sample, mask_kind="outline") if sample.labelled else sample


def with_header_pixel_size(sample: Sample) -> Sample:
    """``sample``, a DICOM frame's given its header's pixel size where its layout gave none (a
    table's wins): ``meta['pixel_size_mm']`` for square pixels, else ``pixel_height_mm`` and
    ``pixel_width_mm`` (see :func:`ultraseg.measure.frame_pixel_size`); a header that cannot be
    read gives none here (reading the frame says why). A pixel size the header holds but that
    is not taken (regions that disagree) is said where frames are measured in mm
    (:class:`ultraseg.measure.PixelSizes`, from ``meta['pixel_size_not_taken']``), not here:
    every command scans, and most use no pixel size."""
    if not is_dicom(sample.image_path) or "pixel_size_mm" in sample.meta:
        return sample
    why: list[str] = []
    try:
        spacing = dicom_pixel_spacing_mm(sample.image_path, why)
    except DataError:
        return sample
    if why:
        log.info("%s: %s: no pixel size taken", sample.image_path, why[0])
        sample.meta[PIXEL_SIZE_NOT_TAKEN] = why[0]
    if spacing is None:
        return sample
    dy, dx = spacing
    if dy == dx:
        sample.meta["pixel_size_mm"] = dx
    else:
        log.info("%s: its pixels are not square (%.4g mm high, %.4g mm wide): measured in mm "
                 "with each axis's own size", sample.image_path, dy, dx)
        sample.meta["pixel_height_mm"], sample.meta["pixel_width_mm"] = dy, dx
    return sample


def split_frames(sample: Sample) -> list[Sample]:
    """An unlabelled sample whose file holds several frames (a cine loop:
    :func:`~ultraseg.io.images.frame_count`), as one sample per frame: named ``NAME_frame001``
    on (1-based, as a viewer counts; at least three digits), ``frame`` from 0, the header's
    pixel size and ``meta['frames']``, the loop's length, kept. Any other sample as it is: a
    labelled one's masks are one frame each, so reading its loop refuses it."""
    if sample.labelled or sample.frame is not None:
        return [sample]
    n = frame_count(sample.image_path)
    if n <= 1:
        return [sample]
    return [replace(sample, name=f"{sample.name}{frame_tag(k, n)}", frame=k,
                    meta={**sample.meta, "frames": n}) for k in range(n)]


def _forced_layout_problems(root: Path, name: str, problems: list[DataError]
                            ) -> list[DataError]:
    """A forced --layout that finds nothing in a folder of another layout says so, rather
    than calling the folder empty."""
    try:
        found = detect_layout(root)
    except DataError:
        return problems                 # the folder does hold nothing ultraseg reads
    if found == name:
        return problems
    return [DataError(f"no '{name}' files found (--layout {name} expects "
                      f"{READERS[name].description}); auto-detection finds the '{found}' "
                      f"layout here", root)]


def _check_pattern(reader: Reader, pattern: str | None) -> bool:
    """Whether ``pattern`` (--subject-pattern) gave the subjects. One that matches no file
    name is refused (each frame would silently be its own subject, and one patient's frames
    could land on both sides of the split), or where the reader's ``pattern_required`` is
    False said at INFO and not used (the layout's subjects); one that misses some names is
    warned about (those keep the layout's own subject)."""
    misses, hits = reader.pattern_misses, reader.pattern_hits
    if not misses:
        return pattern is not None
    if not hits:
        said = f"--subject-pattern {pattern!r} matches none of the {len(misses)} file names"
        if reader.pattern_required:
            raise UltrasegError(f"{said} (first: {misses[0]!r})")
        log.info("%s: the layout's subjects", said)
        return False
    log.warning("--subject-pattern %r does not match %d of %d file names (first: %r); those "
                "keep the layout's own subject", pattern, len(misses), len(misses) + hits,
                misses[0])
    return True


#: The labels whose targets hang on whether a 0/255 mask's white is label 1 or 255
#: (:func:`white_for`): any other ``--label`` selects neither, none (any structure) both.
WHITE_LABELS = (1, 255)


def white_label(samples: Iterable[Sample]) -> int:
    """The label of a 0/255 mask's white among ``samples``' masks: 255 where one of them is a
    label mask (it holds a label other than 1 and is not 0/255 alone: 0/128/255, or 1 with an
    'ignore' 255), the structure the other masks label 255 (a 0/255 mask holding only the
    ignore band is then empty under ``--label 1``); else 1, a binary set (0/1 and 0/255 masks
    alike). Decodes the masks until it finds a label mask (every mask of a binary set; one it
    cannot read is left to the caller's own reading to report)."""
    for s in samples:
        try:
            decoded = s.decode_masks()
        except DataError:
            continue
        if decoded is not None and decoded.label_mask:
            return 255
    return 1


def white_for(label: int | None, samples: Iterable[Sample]) -> int:
    """The label of a black-and-white mask's white among ``samples`` for a run whose target is
    ``label`` (``--label``): :func:`white_label` where it is one of :data:`WHITE_LABELS`, the
    only targets the white changes (decoding the masks); else 1, nothing read. The one rule
    train, evaluate and predict's overlays read their truth by."""
    return white_label(samples) if label in WHITE_LABELS else 1


def with_white(ds: Dataset, white: int) -> Dataset:
    """``ds`` with its black-and-white masks' white read as label ``white`` (``ds`` itself
    where its samples have it already)."""
    if all(s.white == white for s in ds.samples):
        return ds
    return replace(ds, samples=tuple(replace(x, white=white) for x in ds.samples))


def label_set(ds: Dataset) -> Dataset:
    """``ds`` with its 0/255 masks read as the set has them (:func:`white_label`): their white
    label 255 in a set of label masks; else ``ds`` as it is, white label 1."""
    return with_white(ds, white_label(ds.labelled))


def open_dataset(path: str | Path, layout: str = "auto", subject_pattern: str | None = None,
                 fill_outlines: bool = False, pattern_required: bool = True) -> Dataset:
    """The dataset under ``path``, read as :func:`scan_dataset` reads it (``layout``: a
    name in :data:`READERS`, or 'auto' to detect it; an unknown one lists the valid ones),
    but the structural problems it returns raise :class:`DataProblems`, one line each.

    Returns a :class:`Dataset`: its ``samples`` in the reader's order, ``labelled`` those
    with a mask, ``unlabelled`` the rest. Nothing is decoded yet: a :class:`Sample`'s
    ``load()`` reads its files, giving the image, (H, W) uint8 grayscale at the file's size,
    and its mask, (H, W) uint8 of the same size (0 background, 1..K the structures' labels,
    a black-and-white mask's white as 1; an outline filled), or None for an unlabelled
    sample."""
    ds, problems = scan_dataset(path, layout, subject_pattern, fill_outlines,
                                pattern_required=pattern_required)
    if problems:
        raise DataProblems(problems)
    return ds


__all__ = ["READERS", "DICOM_EXTENSIONS", "Dataset", "DataProblems", "IMAGE_EXTENSIONS",
           "Reader", "Sample", "as_outline", "dicom_frame_count", "dicom_pixel_size_mm",
           "dicom_pixel_spacing_mm", "read_dicom",
           "classify_mask_values", "dataset_above_hint", "dataset_hint", "detect_layout",
           "frame_count", "frame_tag",
           "check_layout", "get_reader", "open_dataset", "read_image", "nested_datasets",
           "label_set", "white_label", "white_for", "with_white", "read_mask", "register",
           "scan_dataset", "select_label",
           "WHITE_LABELS", "split_frames",
           "file_sample", "image_stem", "with_header_pixel_size", "frame_loop", "said_once",
           "SUBJECT_RULES", "subject_rule"]
