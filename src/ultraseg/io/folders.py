"""The folders layout (``images/`` + ``masks/``, under the names :data:`IMAGE_FOLDERS` and
:data:`MASK_FOLDERS` take, or a pair named in other words), and the folder trees a layout
reads or names as problems."""
from __future__ import annotations

import logging
import os
import re
from collections import defaultdict
from pathlib import Path
from typing import Collection, NamedTuple

from .. import errors
from ..errors import DataError
from .base import _LEADING_SUBJECT, Reader, Sample
from .files import (NO_DATA_FOLDERS, image_stem, is_image_file, list_images, natural_key,
                    walk_files)
from .naming import _MASK_STEM, _group_several, _nfc, _other_suffix, _pair, warn_subject_names
from .outputs import OUTPUT_MARKER, in_output_folder, warn_outputs_left_out

#: These warnings keep the name of the logger they were said on before they moved here
#: (:mod:`ultraseg.io.readers`'s), so that a filter or level set on it still reaches them.
log = logging.getLogger("ultraseg.io.readers")


def subfolders(root: Path, names: tuple[str, ...]) -> list[Path]:
    """Folders directly in ``root`` named one of ``names``, in any letter case."""
    if not root.is_dir():
        return []
    return sorted(d for d in root.iterdir() if d.is_dir() and d.name.lower() in names)


def _unread_subfolders(folder: Path) -> list[DataError]:
    """A problem per subfolder of ``folder`` holding image files a flat layout does not read
    (hidden folders, such as .ipynb_checkpoints, are left alone, and so are folders ultraseg
    wrote its outputs to, with a warning: see :func:`_tree`)."""
    tree = _tree(folder)
    counts = {sub: len(tree.nested.get(sub, ())) + len(tree.deeper.get(sub, ()))
              for sub in {*tree.nested, *tree.deeper}}
    return _subfolder_problems(counts, f"this layout reads the files directly in {folder.name}/")


def _subfolder_problems(counts: dict[Path, int], rule: str) -> list[DataError]:
    """A problem per subfolder (its image files ``counts``) a layout does not read, by
    ``rule``."""
    return [DataError(f"{_files(n)} in a subfolder, not read: {rule} (move them up, or remove "
                      f"the subfolder)", sub) for sub, n in sorted(counts.items())]


class _Tree(NamedTuple):
    """The image files of a folder of the folders layout: directly in it, in each of its
    subfolders (one level down), and deeper (by the subfolder one level down they are in)."""

    direct: list[Path]
    nested: dict[Path, list[Path]]
    deeper: dict[Path, list[Path]]

    @property
    def per_subject(self) -> bool:
        """Images in subfolders and none directly: ``images/SUBJECT/NAME``."""
        return bool(self.nested) and not self.direct


def _tree(folder: Path | None) -> _Tree:
    """``folder``'s :class:`_Tree` (an empty one for None); hidden folders are left alone, and
    so are folders ultraseg wrote its outputs to, with a warning."""
    tree = _Tree([], {}, {})
    if folder is None:
        return tree
    tree.direct.extend(list_images(folder))
    marked: dict[Path, bool] = {}
    outputs = 0
    for p in walk_files(folder):
        rel = p.relative_to(folder).parts
        if len(rel) < 2 or not is_image_file(p):
            continue
        if in_output_folder(p, folder, marked):
            outputs += 1
            continue
        into = tree.nested if len(rel) == 2 else tree.deeper
        into.setdefault(folder / rel[0], []).append(p)
    if outputs:
        warn_outputs_left_out(folder, outputs)
    return tree


def _files(n: int) -> str:
    return f"{n} image file{'s' * (n > 1)}"


def _too_deep(tree: _Tree, folder: Path) -> list[DataError]:
    """A problem per subfolder of ``folder`` holding images more than one subfolder down."""
    return [DataError(f"{_files(len(files))} more than one subfolder deep, not read: the folders "
                      f"layout reads {folder.name}/NAME or {folder.name}/SUBJECT/NAME (one "
                      "subfolder per subject), no deeper", sub)
            for sub, files in sorted(tree.deeper.items())]


def _mixed(tree: _Tree, image_dir: Path, mask_dir: Path | None) -> list[DataError]:
    """A problem per subfolder of the images folder (``tree``) where most images sit directly
    in ``image_dir``: the subfolders are not read. Moving their files up is what a user would
    do, and loses the patient a subfolder stood for: the message says so."""
    images = f"{image_dir.name}/"
    rule = (f"{images} holds images directly, and the folders layout reads either "
            f"{images}NAME or {images}SUBJECT/NAME (one subfolder per subject, the masks "
            f"alike), not both")
    # the default subject is a leading number: a subfolder not named by one is given one
    # that the loose frames' subjects do not use, so that renamed, its frames stay one subject
    taken = {int(m.group(1)) for p in tree.direct
             if (m := _LEADING_SUBJECT.match(image_stem(p)))}
    numbers: dict[Path, str] = {}
    for sub in sorted(tree.nested):
        if sub.name.isdecimal():    # (as _LEADING_SUBJECT's \d; '²' is a digit, not one)
            numbers[sub] = sub.name
        else:
            numbers[sub] = str(max(taken | {int(n) for n in numbers.values()}, default=0) + 1)
    return [DataError(
        f"{_files(len(files))} in a subfolder, not read: {rule}; put every image in its "
        f"subject's folder (moving these up instead loses the patient grouping that keeps a "
        f"patient's frames on one side of the split, unless they are renamed SUBJECT_FRAME, "
        f"SUBJECT a number of the patient's own, as {numbers[sub]}_{files[0].name})", sub)
        for sub, files in sorted(tree.nested.items())]


def _loose(tree: _Tree, image_dir: Path) -> list[DataError]:
    """One problem for the images directly in ``image_dir`` where the others sit in one
    subfolder per subject (``tree``): they are not read."""
    if not tree.direct:
        return []
    return [DataError(f"{_files(len(tree.direct))} directly in {image_dir.name}/ (first: "
                      f"{tree.direct[0].name}), not read: the other images sit in one subfolder "
                      f"per subject ({len(tree.nested)} of them, {image_dir.name}/SUBJECT/NAME); "
                      f"move each into its subject's folder, or out of {image_dir.name}/",
                      image_dir)]


def _unread_mask_subfolders(tree: _Tree, image_dir: Path, mask_dir: Path | None
                            ) -> list[DataError]:
    """A problem per subfolder of the masks folder (``tree``) where the images sit directly in
    theirs: not read (a backup, ``masks/old/``, or masks to move up)."""
    if mask_dir is None:
        return []
    return _subfolder_problems({sub: len(files) for sub, files in tree.nested.items()},
                               f"the images sit directly in {image_dir.name}/, so their masks "
                               f"are read directly in {mask_dir.name}/")


#: Names the folders layout takes for its masks folder (in any letter case).
MASK_FOLDERS = ("masks", "mask", "labels", "label", "annotations", "ground_truth",
                "groundtruth", "gt", "segmentations", "segmentation", "seg")


#: Names the folders layout takes for its images folder (in any letter case): ``image/``
#: beside an accepted ``mask/`` was read as a folder of unlabelled images, masks included.
#: The names but ``images`` only beside a masks folder (:data:`MASK_FOLDERS`): a folder of
#: scans that holds an ``img/`` of figures is no dataset of this layout. ``frames/`` and
#: ``scans/``: what ultrasound exports often call their images.
IMAGE_FOLDERS = ("images", "image", "imgs", "img", "frames", "frame", "scans", "scan")


#: Words of a folder's name that make it a folder of masks, else of images, where no folder
#: is named as :data:`IMAGE_FOLDERS` says (``trainval-image/`` + ``trainval-mask/``,
#: ``original/`` + ``GT/``, ``US images/`` + ``Expert mask images/``): see :func:`_named_pairs`.
MASK_WORDS = ("masks", "mask", "labels", "label", "gt", "gts", "annotations", "annotation",
              "groundtruth", "segmentations", "segmentation", "seg", "truth")
IMAGE_WORDS = ("images", "image", "imgs", "img", "original", "originals", "frames", "frame",
               "scans", "scan")

#: What the rest of a pair's names says where it is the pair to train on (of several).
TRAIN_WORDS = ("train", "training", "trainval", "train val")

#: Words of a folder's name that make it a split of a dataset (``train/``, ``val/``,
#: ``test/``): no subject's folder (:func:`subject_trees`).
SPLIT_WORDS = (*TRAIN_WORDS[:3], "val", "valid", "validation", "test", "testing", "dev")


def name_words(name: str) -> list[str]:
    """A folder name's words, lower case, split at ``-``, ``_`` and spaces (``ground truth``
    one word)."""
    return [w for w in re.split(r"[-_\s]+", re.sub(r"ground[-_\s]*truth", "groundtruth",
                                                   name.lower())) if w]


def folder_role(name: str) -> tuple[str, str] | None:
    """``("mask", REST)`` for a folder name holding one of :data:`MASK_WORDS` (split at
    ``-``, ``_`` and spaces, in any letter case), else ``("image", REST)`` for one holding one
    of :data:`IMAGE_WORDS`, else None; REST is the name's other words, lower case."""
    words = name_words(name)
    role = ("mask" if any(w in MASK_WORDS for w in words)
            else "image" if any(w in IMAGE_WORDS for w in words) else None)
    if role is None:
        return None
    return role, " ".join(w for w in words if w not in MASK_WORDS and w not in IMAGE_WORDS)


def _files_one_down(folder: Path) -> list[Path]:
    """The image files directly in ``folder`` and one subfolder down (hidden ones aside)."""
    return list_images(folder) + [p for sub in sorted(folder.iterdir()) if sub.is_dir()
                                  and not sub.name.startswith(".") for p in list_images(sub)]


def _named_as(files: list[Path], stems: Collection[str]) -> list[Path]:
    """The ``files`` named as one of ``stems`` (``NAME``, ``NAME_mask``, ``NAME_seg``...)."""
    named = []
    for p in files:
        stem = _nfc(image_stem(p))
        m = _MASK_STEM.match(stem)
        if (m.group(1) if m else stem) in stems or _other_suffix(stem, stems):
            named.append(p)
    return named


def _named_pairs(root: Path) -> list[tuple[Path, Path, str]]:
    """Folders in ``root`` named as images and as masks (:func:`folder_role`), as pairs
    ``(images, masks, REST)``: the one of each, or those whose names' other words agree
    (``trainval-image`` + ``trainval-mask``, ``test-image`` + ``test-mask``); only pairs where
    some mask is named as an image (a folder of figures beside one of scans is no pair).
    Hidden folders and those ultraseg wrote are left alone."""
    if not root.is_dir():
        return []
    roles: dict[str, list[tuple[Path, str]]] = {"image": [], "mask": []}
    for d in sorted(root.iterdir()):
        if not d.is_dir() or d.name.startswith(".") or (d / OUTPUT_MARKER).exists():
            continue
        role = folder_role(d.name)
        if role is not None:
            roles[role[0]].append((d, role[1]))
    if len(roles["image"]) == 1 and len(roles["mask"]) == 1:
        candidates = [(roles["image"][0][0], roles["mask"][0][0], roles["image"][0][1])]
    else:
        candidates = [(i, m, rest) for i, rest in roles["image"]
                      for m, other in roles["mask"] if rest == other]
    pairs = []
    for images, masks, rest in candidates:
        stems = {_nfc(image_stem(p)) for p in _files_one_down(images)}
        if stems and _named_as(_files_one_down(masks), stems):
            pairs.append((images, masks, rest))
    return pairs


def _link_advice(images: Path, masks: Path) -> str:
    """How to read ``images`` and ``masks`` as the folders layout without renaming them: a
    command linking them as ``DATA/images`` and ``DATA/masks``, its paths quoted by
    :func:`~ultraseg.errors.shell_word`; on Windows (:data:`~ultraseg.errors.WINDOWS`)
    cmd.exe's ``mklink /J``, directory junctions, which need no administrator (``mklink /D``'s
    symbolic links do, outside Developer Mode), where POSIX shells take ``ln -s``."""
    image_dir, mask_dir = (errors.shell_word(os.path.abspath(p)) for p in (images, masks))
    if errors.WINDOWS:
        return (f"mkdir DATA && mklink /J DATA\\images {image_dir} && "
                f"mklink /J DATA\\masks {mask_dir}")
    return f"mkdir DATA && ln -s {image_dir} DATA/images && ln -s {mask_dir} DATA/masks"


def _one_pair(root: Path) -> tuple[Path, Path] | None:
    """The images and masks folders the folders layout reads in ``root``, named as
    :data:`IMAGE_FOLDERS` and :data:`MASK_FOLDERS` say or in other words (:func:`_named_pairs`),
    where there is one of each and the images lie directly in theirs (no subject folders);
    else None. Nothing is logged: the folder is one below the one given."""
    images, masks = subfolders(root, _image_folder_names(root)), subfolders(root, MASK_FOLDERS)
    if not images:
        named = _named_pairs(root)
        images, masks = [p[0] for p in named], [p[1] for p in named]
    if len(images) != 1 or len(masks) != 1 or not list_images(images[0]):
        return None
    return images[0], masks[0]


def subject_trees(root: Path) -> list[tuple[Path, Path, Path]]:
    """The folders directly in ``root`` that each hold a dataset of the folders layout, its
    images and masks folders named alike in all (``patientA/img/`` + ``patientA/mask/``,
    ``patientB/img/`` + ``patientB/mask/``...): one subject's frames each, as
    ``(folder, images, masks)``, where there are two or more; else []. Hidden folders, those
    ultraseg wrote and :data:`~ultraseg.io.files.NO_DATA_FOLDERS` are left alone. Where one
    is named as a split (:data:`SPLIT_WORDS`: ``train/``, ``val/``, ``test/``...), it is a
    dataset's split, no subject: left out (``train/`` + ``val/`` + ``test/`` alone: [])."""
    if not root.is_dir():
        return []
    found = []
    for sub in sorted((d for d in root.iterdir() if d.is_dir() and not d.name.startswith(".")
                       and d.name not in NO_DATA_FOLDERS and not (d / OUTPUT_MARKER).exists()),
                      key=lambda d: natural_key(d.name)):
        if any(w in SPLIT_WORDS for w in name_words(sub.name)):
            continue    # (no subject: a held-out test/ beside patients leaves them theirs)
        pair = _one_pair(sub)
        if pair is not None:
            found.append((sub, *pair))
    names = {(images.name, masks.name) for _, images, masks in found}
    return found if len(found) > 1 and len(names) == 1 else []


def subject_link_advice(root: Path, trees: list[tuple[Path, Path, Path]]) -> str:
    """How to read :func:`subject_trees`' folders as one dataset of the folders layout, one
    subject per folder, without moving them: ``ROOT/SUBJECT/IMAGES`` linked as
    ``DATA/images/SUBJECT`` and ``ROOT/SUBJECT/MASKS`` as ``DATA/masks/SUBJECT``, in words and
    a loop of links, as :func:`_link_advice` makes one pair's (``ln -s``; on Windows
    (:data:`~ultraseg.errors.WINDOWS`) cmd.exe's ``for`` and ``mklink /J``)."""
    shown = ", ".join(f"{d.name}/" for d, _, _ in trees[:3])
    more = f" and {len(trees) - 3} more" if len(trees) > 3 else ""
    image_name, mask_name = trees[0][1].name, trees[0][2].name
    subjects = " ".join(errors.shell_word(d.name) for d, _, _ in trees)
    top = os.path.abspath(root)
    if errors.WINDOWS:
        links = (f"mkdir DATA\\images DATA\\masks && for %s in ({subjects}) do "
                 f"(mklink /J \"DATA\\images\\%~s\" \"{top}\\%~s\\{image_name}\" && "
                 f"mklink /J \"DATA\\masks\\%~s\" \"{top}\\%~s\\{mask_name}\")")
    else:
        top = errors.shell_word(top)
        links = (f"mkdir -p DATA/images DATA/masks && for s in {subjects}; do "
                 f"ln -s {top}/\"$s\"/{errors.shell_word(image_name)} DATA/images/\"$s\" && "
                 f"ln -s {top}/\"$s\"/{errors.shell_word(mask_name)} DATA/masks/\"$s\"; done")
    return (f"{len(trees)} folders ({shown}{more}) each hold {image_name}/ + {mask_name}/, "
            f"one subject's frames each: pointing at one reads that subject alone; to read them "
            f"as one dataset, a subject per folder, link them as images/SUBJECT/ + "
            f"masks/SUBJECT/ and point at DATA: {links}")


def _folders_by_name(root: Path) -> tuple[tuple[Path, Path] | None, DataError | None]:
    """The images and masks folders :func:`_named_pairs` finds in ``root``: the one pair, or
    of several the one to train on (:data:`TRAIN_WORDS`), the others named in a warning;
    several and none to train on, a problem naming them."""
    pairs = _named_pairs(root)
    if not pairs:
        return None, None
    train = [p for p in pairs if p[2] in TRAIN_WORDS]
    if len(pairs) == 1 or len(train) == 1:
        chosen = pairs[0] if len(pairs) == 1 else train[0]
        for images, masks, _ in pairs:
            if images != chosen[0]:
                log.warning("%s: read %s/ + %s/ as the images and masks; %s/ + %s/ not read "
                            "(to use that pair, to evaluate on it say, point at a folder "
                            "linking it: %s)", root, chosen[0].name, chosen[1].name,
                            images.name, masks.name, _link_advice(images, masks))
        return (chosen[0], chosen[1]), None
    named = ", ".join(f"{i.name}/ + {m.name}/" for i, m, _ in pairs)
    return None, DataError(f"several image and mask folder pairs: {named}: the folders layout "
                           f"reads one; point at a folder holding one as images/ and masks/ "
                           f"(e.g. {_link_advice(pairs[0][0], pairs[0][1])})", root)


def _image_folder_names(root: Path) -> tuple[str, ...]:
    """The names :func:`_image_folders` takes in ``root`` (see :data:`IMAGE_FOLDERS`)."""
    return IMAGE_FOLDERS if subfolders(root, MASK_FOLDERS) else IMAGE_FOLDERS[:1]


def _image_folders(root: Path) -> list[Path]:
    """The folders layout's images folder candidates in ``root`` (more than one: a problem):
    of those holding images, ``images/`` before the other names, with a warning."""
    found = subfolders(root, _image_folder_names(root))
    holding = [d for d in found if _holds_images(d)]
    usual = [d for d in holding if d.name.lower() == "images"]
    if usual and len(holding) > len(usual):
        log.warning("%s: read %s/ as the images; %s not read", root, usual[0].name,
                    ", ".join(f"{d.name}/" for d in holding if d not in usual))
    return usual or holding or found[:1]


def _mask_folders(root: Path) -> list[Path]:
    """The folders layout's masks folder candidates in ``root`` (more than one: a problem).

    Left out, with a warning: a folder ultraseg wrote (:data:`OUTPUT_MARKER`: predicted masks
    are no ground truth). Of the others, those holding images (a labels/ of text files beside
    masks/ is none), and of those ``masks/`` or ``mask/`` before the other names."""
    found = []
    for d in subfolders(root, MASK_FOLDERS):
        if (d / OUTPUT_MARKER).is_file():
            log.warning("%s holds ultraseg's outputs (%s marks it): its masks are predictions, "
                        "not read as ground truth", d, OUTPUT_MARKER)
        else:
            found.append(d)
    holding = [d for d in found if _holds_images(d)]
    usual = [d for d in holding if d.name.lower() in ("masks", "mask")]
    if usual and len(holding) > len(usual):
        log.warning("%s: read %s/ as the masks; %s not read", root, usual[0].name,
                    ", ".join(f"{d.name}/" for d in holding if d not in usual))
    return usual or holding or found[:1]


def _holds_images(folder: Path) -> bool:
    """Whether ``folder`` holds image files, directly or one subfolder down (one per subject),
    hidden subfolders aside."""
    return bool(list_images(folder)) or any(
        list_images(d) for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))


def _naming(image_dir: Path, mask_dir: Path | None, subject: str = "") -> str:
    """How the folders layout pairs a mask with its image, in words."""
    images = f"{image_dir.name}/{subject}"
    masks = f"{mask_dir.name if mask_dir else 'masks'}/{subject}"
    return f"{images}NAME.EXT with {masks}NAME.EXT or {masks}NAME_mask.EXT"


def _warn_images_beside(root: Path, image_dir: Path, samples: list[Sample]) -> None:
    """Warn of the images directly in ``root``, beside the images folder: the folders layout
    leaves them. Where the set is unlabelled (a folder of scans that also holds an images/
    subfolder) --layout images reads them all; where it has masks, --layout images would read
    the masks as images too (predict predicting them, train finding no pair), so the advice
    is to move them, or to name them to predict them alone."""
    loose = list_images(root)
    if not loose:
        return
    if any(s.mask_paths for s in samples):
        advice = (f"move them out of {root.name or root}/, or into {image_dir.name}/ with "
                  f"their masks to train on them; predict reads a file named alone")
    else:
        advice = "--layout images reads every image below the folder"
    log.warning("%s: %d image files beside %s/ are not read by the folders layout "
                "(first: %s); %s", root, len(loose), image_dir.name, loose[0].name, advice)


class FoldersReader(Reader):
    """``images/NAME.EXT`` + ``masks/NAME_mask.EXT`` or ``masks/NAME.EXT`` (png, jpg, tif, bmp,
    images also dcm; ``NAME_mask_1``, ``NAME_mask_2``: their union, as in the kaggle and busi layouts);
    the masks may also sit beside the images (``images/NAME_mask.EXT``), the masks folder may
    be named any of :data:`MASK_FOLDERS` (``labels/``, ``gt/``...), and the folders may be spelt
    ``Images``, ``Masks``..., the images folder also ``image/``, ``img/`` beside a masks
    folder (:data:`IMAGE_FOLDERS`); where no folder is named so, a pair named in other words
    (``trainval-image/`` + ``trainval-mask/``, ``original/`` + ``GT/``: :func:`_named_pairs`).
    Or one subfolder per subject: ``images/SUBJECT/NAME.EXT`` +
    ``masks/SUBJECT/NAME[_mask].EXT``, every image in one (a sample named ``SUBJECT/NAME``,
    its subject the folder); a mix of the two, or deeper folders, are named as problems.

    Subject: the subfolder, else the leading integer of ``SUBJECT_FRAME`` names, else the frame
    itself; ``subject_pattern`` (a regex, on the file stem; its first group, else the whole
    match) overrides.
    Without any mask (no masks folder, an empty one, none beside the images) the set is unlabelled.
    """

    name = "folders"
    description = "images/NAME.EXT + masks/NAME_mask.EXT (or masks/NAME.EXT, or beside the images)"

    @classmethod
    def detect(cls, root: Path) -> bool:
        return bool(subfolders(root, _image_folder_names(root)) or _named_pairs(root))

    def scan(self, root: Path) -> tuple[list[Sample], list[DataError]]:
        problems: list[DataError] = []
        folders = {"image": _image_folders(root), "mask": _mask_folders(root)}
        if not folders["image"]:        # (trainval-image/ + trainval-mask/, original/ + GT/)
            pair, several = _folders_by_name(root)
            if several is not None:
                return [], [several]
            if pair is not None:
                folders = {"image": [pair[0]], "mask": [pair[1]]}
        for what, found in folders.items():
            if len(found) > 1:
                names = ", ".join(d.name for d in found)
                problems.append(DataError(f"several {what} folders: {names} (keep one)", root))
        if problems:
            return [], problems                 # pairing against either would report noise
        if not folders["image"]:                # (--layout folders forced on another layout)
            return [], [DataError("empty folder: no images found", root / "images")]
        image_dir = folders["image"][0]
        mask_dir = folders["mask"][0] if folders["mask"] else None
        image_tree, mask_tree = _tree(image_dir), _tree(mask_dir)
        problems += _too_deep(image_tree, image_dir) + _too_deep(mask_tree, mask_dir or root)
        nested = sum(len(files) for files in image_tree.nested.values())
        if image_tree.per_subject or len(image_tree.direct) < nested:
            # one subfolder per subject, a few images loose beside them (strays): the set is
            # read as it is laid out, the strays named in one line
            samples, found_problems = self._scan_per_subject(image_tree, mask_tree, image_dir,
                                                             mask_dir)
            _warn_unread_mask_folder(root, image_dir, mask_dir, samples)
            _warn_images_beside(root, image_dir, samples)
            return samples, problems + _loose(image_tree, image_dir) + found_problems
        images, masks = _group_several(image_tree.direct)     # masks beside the images
        problems += _mixed(image_tree, image_dir, mask_dir) + _unread_mask_subfolders(
            mask_tree, image_dir, mask_dir)
        for name, paths in _group_several(mask_tree.direct, masks_only=True)[1].items():
            masks[name] += paths
        if not images and not masks and problems:   # (no 'empty folder' besides)
            return [], problems
        pairs, found_problems = _pair(images, masks, labelled=bool(masks), folder=image_dir,
                                      several_masks=True, naming=_naming(image_dir, mask_dir))
        samples = [Sample(name, image, mask, self.leading_subject(name))
                   for name, image, mask in pairs]
        if not self.subjects_by_pattern and self.groups_subjects:
            warn_subject_names(root, [(s.name, s.subject) for s in samples])
        _warn_unread_mask_folder(root, image_dir, mask_dir, samples)
        _warn_images_beside(root, image_dir, samples)
        return samples, problems + found_problems

    def _scan_per_subject(self, image_tree: _Tree, mask_tree: _Tree, image_dir: Path,
                          mask_dir: Path | None) -> tuple[list[Sample], list[DataError]]:
        """``images/SUBJECT/NAME`` + ``masks/SUBJECT/NAME[_mask]`` (or beside the images): the
        samples named ``SUBJECT/NAME``, their subject the folder (``subject_pattern``, on the
        file stem, overrides). Masks directly in the masks folder are a problem of their own."""
        strays: list[DataError] = []
        if mask_dir is not None and mask_tree.direct and mask_tree.nested:
            # masks loose beside the subjects' folders (a stray image's): named, not read
            strays = [DataError(f"{_files(len(mask_tree.direct))} directly in {mask_dir.name}/ "
                                f"(first: {mask_tree.direct[0].name}), not read: the masks sit "
                                f"in one subfolder per subject ({mask_dir.name}/SUBJECT/NAME), "
                                f"as their images", mask_dir)]
        elif mask_dir is not None and mask_tree.direct:
            return [], [DataError(
                f"{_files(len(mask_tree.direct))} directly in {mask_dir.name}/ (first: "
                f"{mask_tree.direct[0].name}), but the images sit in one subfolder per subject "
                f"({image_dir.name}/SUBJECT/NAME): put each mask in its subject's folder, as "
                f"its image ({mask_dir.name}/SUBJECT/NAME)", mask_dir)]
        images: dict[str, list[Path]] = defaultdict(list)
        masks: dict[str, list[Path]] = defaultdict(list)
        parts: dict[str, tuple[str, str]] = {}       # sample name -> (subject folder, stem)
        for sub, files in [*image_tree.nested.items(), *mask_tree.nested.items()]:
            found = _group_several(files, masks_only=sub.parent != image_dir)
            for into, grouped in zip((images, masks), found):
                for stem, paths in grouped.items():
                    name = f"{_nfc(sub.name)}/{stem}"
                    into[name] += paths
                    parts[name] = (_nfc(sub.name), stem)
        pairs, problems = _pair(images, masks, labelled=bool(masks), folder=image_dir,
                                several_masks=True,
                                naming=_naming(image_dir, mask_dir, "SUBJECT/"))
        return [Sample(name, image, mask, self.subject_of(parts[name][1], parts[name][0]))
                for name, image, mask in pairs], strays + problems


def _warn_unread_mask_folder(root: Path, image_dir: Path, mask_dir: Path | None,
                             samples: list[Sample]) -> None:
    """Where none of ``samples`` has a mask, warn of a folder beside ``image_dir`` (of a name
    the layout does not take for masks: a masks folder's own problems are said) holding files
    named as the images (``NAME``, ``NAME_mask``, ``NAME_seg``...: directly or one subfolder
    down), at least half of its files: the masks, likely, which the set is read without.
    Folders ultraseg wrote (its predictions are named as the images) and hidden ones are left
    alone."""
    if not samples or any(s.labelled for s in samples):
        return
    stems = {s.name.rsplit("/", 1)[-1] for s in samples}
    best: tuple[int, Path, Path] | None = None          # (files matched, folder, first)
    for d in sorted(root.iterdir()):
        if not d.is_dir() or d in (image_dir, mask_dir) or d.name.startswith(".") \
                or d.name.lower() in MASK_FOLDERS or (d / OUTPUT_MARKER).exists():
            continue
        files = _files_one_down(d)
        named = _named_as(files, stems)
        if named and 2 * len(named) >= len(files) and (best is None or len(named) > best[0]):
            best = (len(named), d, min(named, key=lambda q: natural_key(q.name)))
    if best is not None:
        n, d, first = best
        log.warning("%s: %s/ holds %d files named as the images in %s/ (first: %s), not read: "
                    "the folders layout reads its masks from masks/ (or labels/, gt/, "
                    "segmentations/...: the README's layout table lists the names); if they "
                    "are the masks, rename it masks/", root, d.name, n, image_dir.name,
                    first.name)
