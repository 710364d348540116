"""One reader per dataset layout, as the datasets are distributed: here the kaggle, busi and
images layouts, and the masks no layout reads (run-length tables, annotation files); the
folders layout is in :mod:`ultraseg.io.folders`, HC18's in :mod:`ultraseg.io.hc18`, the
naming rules they share in :mod:`ultraseg.io.naming`."""
from __future__ import annotations

import csv
import fnmatch
import logging
import os
from collections import defaultdict
from pathlib import Path
from typing import Collection

from ..errors import DataError
from .base import Reader, Sample
from .files import image_stem, is_image_file, iter_files, list_images, natural_key, walk_files
from .folders import (_files_one_down, _link_advice, _named_as, _one_pair, _unread_subfolders,
                      folder_role, subject_link_advice, subject_trees)
from .naming import (_MASK_STEM, _TRAILING_NUMBER, _group_several, _nfc, _other_suffix, _outlines,
                     _pair, warn_subject_names)
from .outputs import in_output_folder, warn_outputs_left_out

log = logging.getLogger(__name__)


class KaggleReader(Reader):
    """Kaggle "Ultrasound Nerve Segmentation": ``train/SUBJECT_FRAME.tif`` +
    ``train/SUBJECT_FRAME_mask.tif``, and unlabelled ``test/N.tif``. DATA may be the
    competition folder (holding train/ and test/) or the train folder itself, and the pairs
    may be in any image format (a flat folder of ``NAME.png`` + ``NAME_mask.png`` too). Named
    as problems: image files in subfolders of the train folder, in folders beside train/
    other than test/ (a val/ split), and masks in test/ (its frames are unlabelled)."""

    name = "kaggle"
    description = ("train/SUBJECT_FRAME.tif + train/SUBJECT_FRAME_mask.tif, test/N.tif "
                   "(or NAME.EXT + NAME_mask.EXT pairs in one flat folder)")

    @classmethod
    def detect(cls, root: Path) -> bool:
        """A TIFF named ``*_mask`` (the competition's files), or any image ``NAME_mask.EXT``
        beside an image ``NAME.*``, directly in ``root`` or in ``root/train``; the latter not
        where ``root/test`` holds masks too (another dataset's labelled train/ + test/ split,
        whose test masks this layout would read as frames)."""
        test_masks = any(_MASK_STEM.match(image_stem(p)) for p in list_images(root / "test"))
        for d in (root, root / "train"):
            files = list_images(d)
            stems = {image_stem(p) for p in files}
            if any(image_stem(p).lower().endswith("_mask")
                   and (p.suffix.lower() in (".tif", ".tiff")
                        or (image_stem(p)[:-5] in stems and (d == root or not test_masks)))
                   for p in files):
                return True
        return False

    def scan(self, root: Path) -> tuple[list[Sample], list[DataError]]:
        train = root / "train" if (root / "train").is_dir() else root
        images, masks = _group_several(list_images(train))
        pairs, problems = _pair(images, masks, labelled=True, folder=train, several_masks=True)
        test = root / "test"
        problems += [p for p in _unread_subfolders(train) if p.path != str(test)]
        if train != root:                 # a val/ beside train/ and test/ is not read
            problems += [p for p in _unread_subfolders(root)
                         if p.path not in (str(train), str(test))]
        if test.is_dir() and test != train:    # the competition's test split has no masks
            problems += [DataError("a mask in test/, which this layout reads as unlabelled "
                                   "frames (a labelled test set is a dataset of its own)", p)
                         for p in list_images(test) if _MASK_STEM.match(image_stem(p))]
        samples = [Sample(name, image, mask, self.leading_subject(name), {"split": "train"})
                   for name, image, mask in pairs]
        if not self.subjects_by_pattern and self.groups_subjects:
            warn_subject_names(root, [(s.name, s.subject) for s in samples])
        if test.is_dir() and test != train:
            seen = {s.name for s in samples}
            for p in sorted(list_images(test), key=lambda q: natural_key(q.name)):
                stem = image_stem(p)
                if stem in seen:
                    problems.append(DataError(f"two images share the name '{stem}'", p))
                    continue
                seen.add(stem)
                samples.append(Sample(stem, p, (), self.subject_of(stem), {"split": "test"}))
        return samples, problems


BUSI_CLASSES = ("benign", "malignant", "normal")


class BusiReader(Reader):
    """BUSI breast lesions: ``CLASS/images/CLASS (N).png`` + ``CLASS/mask/CLASS (N)_mask.png``
    (+ ``_mask_1.png``, ``_mask_2.png``: merged by union). Masks may also sit beside the images,
    as in the original distribution. BUSI names no patients: each image is its own subject
    (--subject-pattern overrides)."""

    name = "busi"
    description = "CLASS/images/CLASS (N).png + CLASS/mask/CLASS (N)_mask[_K].png"

    @classmethod
    def detect(cls, root: Path) -> bool:
        return any((root / c).is_dir() and any(fnmatch.fnmatchcase(p.name.lower(), "*_mask*.png")
                                               for p in iter_files(root / c))
                   for c in BUSI_CLASSES)

    def scan(self, root: Path) -> tuple[list[Sample], list[DataError]]:
        samples: list[Sample] = []
        problems: list[DataError] = []
        classes = [c for c in BUSI_CLASSES if (root / c).is_dir()]
        for cls_name in classes:
            # (not macOS's ._NAME beside each file: is_image_file leaves hidden files out)
            images, masks = _group_several([p for p in walk_files(root / cls_name)
                                            if is_image_file(p)])
            if not images and not masks:       # an empty class folder is no problem
                continue
            pairs, found = _pair(images, masks, labelled=True, folder=root / cls_name,
                                 several_masks=True)
            problems += found
            samples += [Sample(name, image, mask_paths, self.subject_of(name),
                               {"class": cls_name}) for name, image, mask_paths in pairs]
        if not samples and not problems:
            problems.append(DataError("empty folder: no images found", root))
        return samples, problems


#: A CSV column of run-length masks (lower case): Kaggle's nerve competition's ``pixels``, the
#: ``EncodedPixels`` of others, Carvana's ``rle_mask``.
RUN_LENGTH_COLUMNS = ("pixels", "encodedpixels", "encoded_pixels", "rle", "rle_mask")


def run_length_tables(root: Path) -> list[tuple[Path, str]]:
    """The CSV files in ``root`` (and beside it, for a folder named ``train``: the
    competition's ``train_masks.csv`` beside ``train/``) whose header names a run-length
    column (:data:`RUN_LENGTH_COLUMNS`), with that column: masks no layout reads. A header
    that is exactly a submission's, ``img,pixels`` (``predict --rle`` writes it, and so is
    Kaggle's sample_submission), holds predictions, not masks to train on: left out."""
    root = Path(os.path.abspath(root))
    folders = [root] + ([root.parent] if root.name.lower() == "train" else [])
    found = []
    for csv_path in sorted(p for d in folders for p in d.glob("*.csv")
                           if not p.name.startswith(".")):
        try:
            with open(csv_path, newline="", encoding="utf-8-sig") as f:
                header = next(csv.reader([f.readline()]), [])
        except (OSError, UnicodeDecodeError, csv.Error):
            continue
        if [c.strip().lower() for c in header] == ["img", "pixels"]:
            continue
        column = next((c.strip() for c in header
                       if c.strip().lower() in RUN_LENGTH_COLUMNS), None)
        if column is not None:
            found.append((csv_path, column))
    return found


#: Endings of annotation files that hold outlines or polygons (DDTI's XML, LabelMe's and
#: COCO's JSON, CVAT's XML), which no layout reads.
ANNOTATION_EXTENSIONS = (".xml", ".json")


def annotation_files(root: Path, images: Collection[Path]) -> list[tuple[Path, Path]]:
    """The :data:`ANNOTATION_EXTENSIONS` files below ``root`` named as one of ``images`` or
    as its subject, its name without a trailing frame number (DDTI's ``2.xml`` for
    ``2_1.jpg`` and ``2_2.jpg``; LabelMe's ``NAME.json`` for ``NAME.png``), each with the
    first image it is named for, in name order."""
    named: dict[str, Path] = {}
    for p in sorted(images, key=lambda q: natural_key(q.name)):
        stem = _nfc(image_stem(p))
        for name in (stem, _TRAILING_NUMBER.sub("", stem)):
            if name:
                named.setdefault(name, p)
    return sorted(((p, named[_nfc(p.stem)]) for p in iter_files(root)
                   if p.suffix.lower() in ANNOTATION_EXTENSIONS and not p.name.startswith(".")
                   and _nfc(p.stem) in named), key=lambda pair: natural_key(pair[0].name))


class ImagesReader(Reader):
    """Any folder of images (searched recursively), unlabelled: what ``predict`` reads."""

    name = "images"
    description = "any folder of image files, unlabelled (for predict)"

    @classmethod
    def detect(cls, root: Path) -> bool:
        return any(is_image_file(p) for p in iter_files(root))

    def scan(self, root: Path) -> tuple[list[Sample], list[DataError]]:
        marked: dict[Path, bool] = {}
        # hidden folders below root (.cache, .thumbnails) are no part of it, as in the other
        # layouts and the output-folder check (walk_files leaves them out)
        found = [p for p in walk_files(root) if is_image_file(p)]
        files = sorted((p for p in found if not in_output_folder(p, root, marked)),
                       key=lambda q: natural_key(str(q)))
        if len(files) < len(found):   # masks and overlays a predict run wrote below root
            warn_outputs_left_out(root, len(found) - len(files))
        masks = [p for p in files if _MASK_STEM.match(image_stem(p))]
        if masks:   # a flat folder of NAME + NAME_mask, read as unlabelled: its masks as frames
            # (--layout kaggle reads one folder: where the pairs lie below root, name theirs;
            # none where no mask sits beside its image, as masks/ beside images/)
            stems = {(p.parent, image_stem(p).lower()) for p in files}
            folders = sorted({p.parent for p in masks
                              if (p.parent, _MASK_STEM.match(image_stem(p)).group(1).lower())
                              in stems}, key=lambda q: natural_key(str(q)))
            pairs = ("--layout kaggle pairs a folder of NAME and NAME_mask files"
                     if root in folders else
                     f"{folders[0]} holds them beside their images: point at it (the kaggle "
                     "layout pairs a folder of NAME and NAME_mask files" +
                     (f"; {len(folders) - 1} more folders hold some)" if len(folders) > 1
                      else ")") if folders else
                     "none lies in its image's folder, as --layout kaggle would need")
            log.warning("%s: %d of the %d images are named like masks (first: %s) and are read "
                        "as frames of their own; %s, and the README's layout table shows the "
                        "others", root, len(masks), len(files), masks[0].name, pairs)
        else:
            _warn_other_mask_suffix(root, files)
        _warn_mask_folder_read_as_frames(root, files)
        samples = []
        for p in files:
            rel = (p.relative_to(root).parent / image_stem(p)).as_posix()
            samples.append(Sample(rel, p, (), self.subject_of(image_stem(p))))
        problems = [] if files else [DataError(
            "no images found outside the folders ultraseg wrote" if found
            else "empty folder: no images found", root)]
        return samples, problems


def _warn_other_mask_suffix(root: Path, files: list[Path]) -> None:
    """Warn where images are named as another image plus a common mask suffix (``c0_seg.png``
    beside ``c0.png``, :data:`~ultraseg.io.naming.OTHER_MASK_SUFFIXES`): masks read as frames
    of their own."""
    stems: dict[Path, set[str]] = defaultdict(set)
    for p in files:
        stems[p.parent].add(image_stem(p))
    found: dict[str, list[Path]] = defaultdict(list)
    for p in files:
        suffix = _other_suffix(image_stem(p), stems[p.parent])
        if suffix is not None:
            found[suffix.lower()].append(p)
    if found:
        suffix, named = max(found.items(), key=lambda item: len(item[1]))
        said = (f"{len(named)} of the {len(files)} images are named like masks, "
                f"NAME{named[0].stem[-len(suffix):]} beside NAME (first: {named[0].name}), and "
                "are read as frames of their own; ")
        rename = f"{named[0].name} -> {named[0].stem[: -len(suffix)]}_mask{named[0].suffix}"
        outlines = _outlines(named)
        if outlines and suffix == "_annotation":   # HC18's naming: its layout pairs them
            log.warning("%s: %sthey look like drawn closed contours (outlines), as HC18's "
                        "annotations are: --layout hc18 pairs NAME with NAME_Annotation and "
                        "fills them", root, said)
        elif outlines:
            log.warning("%s: %sthey look like drawn closed contours (outlines), learnt as thin "
                        "rings unless filled: rename them to pair (e.g. %s; a flat folder of "
                        "NAME and NAME_mask is the kaggle layout) and add --fill-outlines",
                        root, said, rename)
        else:
            log.warning("%s: %sultraseg pairs NAME with NAME_mask (a flat folder of them is "
                        "the kaggle layout) or images/NAME with masks/NAME: rename them "
                        "(e.g. %s)", root, said, rename)


def _warn_mask_folder_read_as_frames(root: Path, files: list[Path]) -> None:
    """Warn where a folder below ``root`` named as masks
    (:func:`~ultraseg.io.folders.folder_role`: ``scan-labels/``, ``GT/``) holds files named as
    the images of a folder beside it, at least half of its files, directly or one subfolder
    down: the masks, read as frames of their own (two folders of frames named alike, two
    sites', are no such case: their names say no masks). Where folders in ``root`` each hold
    one subject's images and masks folders (:func:`~ultraseg.io.folders.subject_trees`), the
    warning says how to read them all as one dataset, not one pair (one subject). A pair
    that is a folders dataset of its own in ``root`` (``DATA/train/{images,masks}``) is
    left to :func:`~ultraseg.io.datasets_below_hint`, which names the split to train on."""
    trees = subject_trees(root)
    if trees:   # patientA/img/ + patientA/mask/, patientB/...: not one pair to link
        log.warning("%s is read as a folder of unlabelled images, masks included: %s", root,
                    subject_link_advice(root, trees))
        return
    folders = {q for p in files for q in (p.parent, p.parent.parent)
               if q != root and q.is_relative_to(root)}
    best: tuple[int, Path, Path, Path] | None = None     # (files matched, masks, images, first)
    for masks in sorted(folders):
        role = folder_role(masks.name)
        if role is None or role[0] != "mask":
            continue
        found = _files_one_down(masks)
        for images in sorted(folders):
            if images == masks or images.parent != masks.parent \
                    or (folder_role(images.name) or ("",))[0] == "mask":
                continue
            if masks.parent.parent == root and _one_pair(masks.parent) == (images, masks):
                continue    # a dataset of its own in root: the below-hint names it
            named = _named_as(found, {_nfc(image_stem(p)) for p in _files_one_down(images)})
            if named and 2 * len(named) >= len(found) and (best is None or len(named) > best[0]):
                best = (len(named), masks, images, min(named, key=lambda q: natural_key(q.name)))
    if best is not None:
        n, masks, images, first = best
        log.warning("%s: %s/ holds %d files named as the images in %s/ (first: %s), read as "
                    "frames of their own: if they are the masks, point at a folder holding "
                    "them as masks/ beside the images as images/ (rename the folders, or link "
                    "them: %s)", root, masks.relative_to(root).as_posix(), n,
                    images.relative_to(root).as_posix(), first.name,
                    _link_advice(images, masks))
