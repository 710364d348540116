"""One reader per dataset layout, as the datasets are distributed."""
from __future__ import annotations

import csv
import fnmatch
import glob
import logging
import math
import os
import re
import shlex
import unicodedata
from collections import Counter, defaultdict
from pathlib import Path
from typing import Collection, NamedTuple

from ..errors import DataError
from .base import _LEADING_SUBJECT, Reader, Sample
from .files import image_stem, is_image_file, iter_files, list_images, natural_key, walk_files
from .images import frame_count
from .masks import read_mask
from .outputs import OUTPUT_MARKER, in_output_folder, warn_outputs_left_out

log = logging.getLogger(__name__)


#: A mask's file stem: NAME_mask, or NAME_mask_K where one image has several (their union);
#: in any letter case (NAME_Mask, NAME_MASK), as the folders' names are matched.
_MASK_STEM = re.compile(r"^(.*)_mask(?:_(\d+))?$", re.IGNORECASE)


class Unpaired(DataError):
    """An image without its mask in a labelled set, or a mask without its image: a problem
    for training and evaluation, none for prediction, which reads the images alone."""


def _check_unique(items: dict[str, list[Path]], what: str) -> list[DataError]:
    return [DataError(f"two {what}s share the name '{name}': " + ", ".join(p.name for p in paths[1:]),
                      paths[0])
            for name, paths in items.items() if len(paths) > 1]


#: Suffixes other tools name masks by (``NAME_seg.png`` for ``NAME.png``), which ultraseg does
#: not pair: named where they explain why masks find no image. In any letter case.
OTHER_MASK_SUFFIXES = ("_segmentation", "-segmentation", "_seg", "-seg", "_gt", "-gt",
                       "_groundtruth", "_labels", "_label", "-label", "_annotation", "-mask",
                       " mask", ".mask", "_binary")


def _other_suffix(stem: str, partners: Collection[str]) -> str | None:
    """The suffix of :data:`OTHER_MASK_SUFFIXES` ``stem`` ends with (as written there) where
    ``stem`` without it is one of ``partners``; else None."""
    for suffix in OTHER_MASK_SUFFIXES:
        if stem.lower().endswith(suffix) and stem[: -len(suffix)] in partners:
            return stem[-len(suffix):]
    return None


def _misnamed_masks(images: dict[str, list[Path]], masks: dict[str, list[Path]]
                    ) -> tuple[str, dict[str, str]] | None:
    """Where most masks pair with no image and most of those are the name of an image
    without a mask plus one common suffix (``NAME_seg``): that suffix and the masks it
    explains (mask name -> image name); else None."""
    orphans = [n for n in masks if n not in images]
    if not orphans or 2 * len(orphans) <= len(masks):
        return None
    by_suffix: dict[str, dict[str, str]] = defaultdict(dict)
    for name in orphans:
        suffix = _other_suffix(name, images)
        if suffix is not None and name[: -len(suffix)] not in masks:  # (else a second mask)
            by_suffix[suffix.lower()][name] = name[: -len(suffix)]
    if not by_suffix:
        return None
    suffix, explained = max(by_suffix.items(), key=lambda item: len(item[1]))
    return (suffix, explained) if 2 * len(explained) > len(orphans) else None


#: A name's leading word and the separator after it: ``mask_`` of ``mask_0001-l``.
_LEADING_WORD = re.compile(r"^[A-Za-z]+[-_ ]")


def _leading_word(name: str) -> str:
    """The :data:`_LEADING_WORD` of ``name``'s stem (after a ``SUBJECT/``), else ''."""
    m = _LEADING_WORD.match(name.rpartition("/")[2])
    return m.group(0) if m else ""


def _prefixed_masks(images: dict[str, list[Path]], masks: dict[str, list[Path]]
                    ) -> tuple[str, str, dict[str, str]] | None:
    """Where most masks pair with no image and most of those are named with one leading word
    where an image has another or none (BUS-BRA's ``mask_0001-l`` for ``bus_0001-l``): the
    masks' word, the images' and the masks it explains (mask name -> image name); else
    None."""
    orphans = [n for n in masks if n not in images]
    if not orphans or 2 * len(orphans) <= len(masks):
        return None
    words = [w for w in map(_leading_word, orphans) if w]
    if not words:
        return None
    # (Counter.most_common: the commonest, ties in order of first appearance, not of hashing)
    word = Counter(words).most_common(1)[0][0]
    lone = Counter(w for w in map(_leading_word, (n for n in images if n not in masks)) if w)
    for image_word in [w for w, _ in lone.most_common()] + [""]:
        if image_word == word:
            continue
        explained = {}
        for name in orphans:
            head, slash, stem = name.rpartition("/")
            target = f"{head}{slash}{image_word}{stem[len(word):]}"
            if stem.startswith(word) and target in images and target not in masks:
                explained[name] = target
        if 2 * len(explained) > len(orphans):
            return word, image_word, explained
    return None


def _prefixed_problem(word: str, image_word: str, explained: dict[str, str],
                      masks: dict[str, list[Path]], naming: str) -> Unpaired:
    """The one line for masks named ``{word}ID`` for images ``{image_word}ID``
    (:func:`_prefixed_masks`)."""
    first = masks[min(explained, key=natural_key)][0]
    rename = f"{first.name} -> {image_word}{first.name[len(word):]}"
    return Unpaired(f"{len(explained)} of the {len(masks)} masks are named {word}ID (first: "
                    f"{first.name}) for images named {image_word}ID, which pairs with no "
                    f"image: ultraseg pairs {naming}; rename them (e.g. {rename})",
                    first.parent)


def _second_masks(images: dict[str, list[Path]], masks: dict[str, list[Path]],
                  orphans: Collection[str]) -> tuple[str, list[str]] | None:
    """Where at least two of ``orphans`` (masks that pair with no image), more than half of
    them, are named as an image that has its mask plus one common suffix (MMOTU's
    ``N_binary`` beside ``N``): that suffix (as the first writes it) and those masks; else
    None."""
    by_suffix: dict[str, list[str]] = defaultdict(list)
    for name in orphans:
        cuts = [i for i, c in enumerate(name) if c in "_- ." and i > name.rfind("/") + 1]
        paired = [i for i in cuts if name[:i] in images and name[:i] in masks]
        if paired:
            by_suffix[name[max(paired):].lower()].append(name)
    if not by_suffix:
        return None
    suffix, named = max(by_suffix.items(), key=lambda kv: len(kv[1]))
    if len(named) < 2 or 2 * len(named) <= len(orphans):
        return None
    named.sort(key=natural_key)
    first = named[0]
    return first[len(first) - len(suffix):], named


def _second_masks_problem(suffix: str, named: list[str], masks: dict[str, list[Path]]
                          ) -> Unpaired:
    """The one line for masks that are a second mask of a paired image
    (:func:`_second_masks`)."""
    first = masks[named[0]][0]
    return Unpaired(f"{len(named)} masks are a second mask of an image that has its mask, "
                    f"named NAME{suffix} beside NAME (first: {first.name}): ultraseg reads one "
                    f"mask per image; move them out of {first.parent.name}/ (or, to train on "
                    f"them instead, move the NAME masks out and name these NAME)", first.parent)


#: How many of a set of misnamed masks are read to tell whether they are drawn outlines.
_OUTLINES_READ = 3


def _outlines(paths: list[Path]) -> bool:
    """Whether most of the first :data:`_OUTLINES_READ` masks of ``paths`` (those that can be
    read) look like drawn closed contours (:func:`ultraseg.preprocess.looks_like_outline`):
    masks named for another tool (HC18's ``_Annotation``) then need filling, not a new name
    alone."""
    from ..preprocess import looks_like_outline

    looks = []
    for p in paths[:_OUTLINES_READ]:
        try:
            looks.append(looks_like_outline(read_mask(p) > 0))
        except DataError:
            continue
    return 2 * sum(looks) > len(looks) > 0


def _misnamed_problem(suffix: str, explained: dict[str, str], masks: dict[str, list[Path]],
                      naming: str) -> Unpaired:
    """The one line for masks named ``NAME{suffix}`` (:func:`_misnamed_masks`); where they
    look like drawn outlines (:func:`_outlines`), it leads with --fill-outlines."""
    names = sorted(explained, key=natural_key)
    first = masks[names[0]][0]
    written = first.stem[-len(suffix):]
    rename = f"{first.name} -> {first.stem[: -len(suffix)]}_mask{first.suffix}"
    said = (f"{len(explained)} of the {len(masks)} masks are named NAME{written} "
            f"(first: {first.name}), which pairs with no image: ultraseg pairs {naming}; ")
    if _outlines([masks[n][0] for n in names]):
        return Unpaired(said + "they look like drawn closed contours (outlines), learnt as "
                        "thin rings unless filled: --fill-outlines fills them (train, inspect, "
                        f"evaluate, predict), once renamed to pair (e.g. {rename})", first.parent)
    return Unpaired(said + f"rename them (e.g. {rename})", first.parent)


#: What a loop's frame adds to its file's name (:func:`frame_tag`), and its fewest digits.
_FRAME_TAG, _FRAME_DIGITS = "_frame", 3
#: A name as predict gives a loop's frames (:func:`frame_tag`): NAME_frame001.
_FRAME_NAME = re.compile(rf"^(.*){_FRAME_TAG}(\d{{{_FRAME_DIGITS},}})$")


def frame_tag(frame: int | None, frames: int) -> str:
    """What a loop's frame adds to its file's name: ``_frame001`` for ``frame`` 0 (digits:
    at least three, as many as ``frames`` needs); nothing where ``frame`` is None."""
    if frame is None:
        return ""
    return f"{_FRAME_TAG}{frame + 1:0{max(_FRAME_DIGITS, len(str(frames)))}d}"


def _loop_frame_masks(images: dict[str, list[Path]], orphans: Collection[str]
                      ) -> dict[str, tuple[list[str], int]]:
    """The masks among ``orphans`` (names that pair with no image) named as predict names a
    loop's frames (``NAME_frame001``), by the image ``NAME`` they are frames of, with its
    frame count, where that file holds several frames (its header read, one a loop)."""
    found: dict[str, list[str]] = defaultdict(list)
    for name in orphans:
        m = _FRAME_NAME.match(name)
        if m and m.group(1) in images:
            found[m.group(1)].append(name)
    counts = {stem: frame_count(images[stem][0]) for stem in found}
    return {stem: (sorted(names, key=natural_key), counts[stem])
            for stem, names in found.items() if counts[stem] > 1}


def _loop_frames_problem(image: Path, frames: int, masks: list[Path]) -> Unpaired:
    """The one line for ``masks`` named as frames of the cine loop ``image`` (of ``frames``)."""
    named = masks[0].name + (f" .. {masks[-1].name}" if len(masks) > 1 else "")
    return Unpaired(f"{len(masks)} mask{'s' * (len(masks) != 1)} ({named}) are named as frames "
                    f"of this cine loop ({frames} frames), as predict names them, but a "
                    "labelled set's image is one frame: save each frame as its own image, "
                    f"named as its mask ({masks[0].name.replace('_mask', '', 1)} ...; from "
                    "Python: read_image(path, frame=k))", image)


def _case_near_matches(orphans: list[str], lone: list[str]) -> dict[str, str]:
    """Masks among ``orphans`` (names that pair with no image) whose name differs from one of
    ``lone`` (images without a mask) only in letter case, and that image: mask name -> image
    name, where each side has exactly one such partner (``case_1`` for ``Case_1``). Names pair
    in their exact case; this only names the likely match in the orphan lines."""
    by_fold: dict[str, tuple[list[str], list[str]]] = defaultdict(lambda: ([], []))
    for name in orphans:
        by_fold[name.casefold()][0].append(name)
    for name in lone:
        if name.casefold() in by_fold:
            by_fold[name.casefold()][1].append(name)
    return {m[0]: i[0] for m, i in by_fold.values() if len(m) == 1 and len(i) == 1}


def _pair(images: dict[str, list[Path]], masks: dict[str, list[Path]], labelled: bool,
          folder: Path, several_masks: bool = False, naming: str | None = None
          ) -> tuple[list[tuple[str, Path, tuple[Path, ...]]], list[DataError]]:
    """Pair image stems with mask stems; report orphans both ways and duplicate names.
    ``several_masks``: an image's masks are all its paths (NAME_mask_1, NAME_mask_2: their
    union), two of the same stem still a duplicate. An image without a mask in a labelled
    set is a problem, and a sample without one (what ``predict`` reads; training refuses a
    set with problems). ``naming`` (how the layout pairs masks, as words): where most masks
    are named with another common suffix (``NAME_seg``), one line says so in its words in
    place of an orphan line for each of those masks and their images."""
    problems = _check_unique(images, "image")
    if several_masks:   # one NAME_mask (or masks/NAME) and one NAME_mask_K each, at most
        by_part: dict[str, list[Path]] = defaultdict(list)
        for name, paths in masks.items():
            for q in paths:
                m = _MASK_STEM.match(image_stem(q))
                by_part[f"{name}_mask_{m.group(2)}" if m and m.group(2) else name].append(q)
        problems += _check_unique(by_part, "mask")
    else:
        problems += _check_unique(masks, "mask")
    misnamed = _misnamed_masks(images, masks) if naming is not None else None
    prefixed = _prefixed_masks(images, masks) if naming is not None and not misnamed else None
    explained = misnamed[1] if misnamed else prefixed[2] if prefixed else {}
    if misnamed and naming is not None:
        problems.append(_misnamed_problem(*misnamed, masks, naming))
    elif prefixed and naming is not None:
        problems.append(_prefixed_problem(*prefixed, masks, naming))
    orphans = set(masks) - set(images) - set(explained)
    second = _second_masks(images, masks, orphans)
    if second is not None:
        problems.append(_second_masks_problem(*second, masks))
        orphans -= set(second[1])
    loops = _loop_frame_masks(images, orphans)
    for stem, (names, frames) in loops.items():
        problems.append(_loop_frames_problem(images[stem][0], frames,
                                             [masks[n][0] for n in names]))
        orphans -= set(names)
    told = set(explained.values()) | set(loops)
    lone = [n for n in images if n not in masks and n not in told] if labelled else []
    near = _case_near_matches(sorted(orphans, key=natural_key), lone)
    for name in sorted(orphans, key=natural_key):
        mask = masks[name][0]
        hint = (f" (an image differing only in letter case: {images[near[name]][0].name}; "
                "names pair in their exact case: rename one as the other)"
                if name in near else "")
        problems.append(Unpaired(f"mask without an image: add its image, or move the mask out "
                                 f"of {mask.parent.name}/{hint}", mask))
    near_mask = {image: mask for mask, image in near.items()}
    pairs = []
    for name in sorted(images, key=natural_key):
        mask = masks.get(name)
        if labelled and not mask and name not in told:
            image = images[name][0]
            hint = (f"; a mask differing only in letter case: {masks[near_mask[name]][0].name} "
                    "(names pair in their exact case: rename one as the other)"
                    if name in near_mask else "")
            problems.append(Unpaired(f"image without a mask in a labelled set: add its mask, "
                                     f"or move the image out of {image.parent.name}/ (predict "
                                     f"reads images without masks){hint}", image))
        found = tuple(sorted(mask, key=lambda p: natural_key(p.name))) if several_masks and mask \
            else (mask[0],) if mask else ()
        pairs.append((name, images[name][0], found))
    if not images and not masks:
        problems.append(DataError("empty folder: no images found", folder))
    return pairs, problems


def _group(files: list[Path], mask_suffix: str) -> tuple[dict[str, list[Path]],
                                                          dict[str, list[Path]]]:
    """Files by stem: (images, masks). A stem ending in ``mask_suffix`` is a mask of the image
    named without it (HC18's ``_Annotation``; masks named ``_mask``: :func:`_group_several`)."""
    images: dict[str, list[Path]] = defaultdict(list)
    masks: dict[str, list[Path]] = defaultdict(list)
    for p in files:
        stem = _nfc(image_stem(p))
        if stem.endswith(mask_suffix):
            masks[stem[: -len(mask_suffix)]].append(p)
        else:
            images[stem].append(p)
    return images, masks


def _nfc(name: str) -> str:
    """``name`` in Unicode's composed form: an image and its mask pair whether their names
    were written decomposed (macOS's Archive Utility: ``e`` + combining accent) or composed
    (typed, or made by a script)."""
    return unicodedata.normalize("NFC", name)


def _tables_beside(folder: Path) -> list[Path]:
    """The pixel-size tables one level up named after ``folder``
    (``training_set_pixel_size_and_HC.csv`` beside ``training_set/``): found from its absolute
    path ('.' given from inside it has no name and no parent), else, for a link to the folder
    under another name, from its real one."""
    found: list[Path] = []
    for here in dict.fromkeys((Path(os.path.abspath(folder)), Path(os.path.realpath(folder)))):
        found = sorted(here.parent.glob(f"{glob.escape(here.name)}*pixel_size*.csv"))
        if found:
            break
    return found


def table_key(path: Path) -> str:
    """The name an image file goes by in a pixel-size table (composed Unicode)."""
    return _nfc(path.name)


def _group_several(files: list[Path], masks_only: bool = False
                   ) -> tuple[dict[str, list[Path]], dict[str, list[Path]]]:
    """Files by stem: (images, masks), ``NAME_mask`` and ``NAME_mask_K`` all masks of the
    image ``NAME`` (several: their union; :func:`_pair` with ``several_masks``); with
    ``masks_only`` every file is a mask (``NAME`` itself one of the image ``NAME``)."""
    images: dict[str, list[Path]] = defaultdict(list)
    masks: dict[str, list[Path]] = defaultdict(list)
    for p in files:
        stem = _nfc(image_stem(p))
        m = _MASK_STEM.match(stem)
        (masks[m.group(1)] if m else masks[stem] if masks_only else images[stem]).append(p)
    return images, masks


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
#: scans that holds an ``img/`` of figures is no dataset of this layout.
IMAGE_FOLDERS = ("images", "image", "imgs", "img")


#: Words of a folder's name that make it a folder of masks, else of images, where no folder
#: is named as :data:`IMAGE_FOLDERS` says (``trainval-image/`` + ``trainval-mask/``,
#: ``original/`` + ``GT/``, ``US images/`` + ``Expert mask images/``): see :func:`_named_pairs`.
MASK_WORDS = ("masks", "mask", "labels", "label", "gt", "gts", "annotations", "annotation",
              "groundtruth", "segmentations", "segmentation", "seg", "truth")
IMAGE_WORDS = ("images", "image", "imgs", "img", "original", "originals")

#: What the rest of a pair's names says where it is the pair to train on (of several).
TRAIN_WORDS = ("train", "training", "trainval", "train val")


def folder_role(name: str) -> tuple[str, str] | None:
    """``("mask", REST)`` for a folder name holding one of :data:`MASK_WORDS` (split at
    ``-``, ``_`` and spaces, in any letter case), else ``("image", REST)`` for one holding one
    of :data:`IMAGE_WORDS`, else None; REST is the name's other words, lower case."""
    words = [w for w in re.split(r"[-_\s]+", re.sub(r"ground[-_\s]*truth", "groundtruth",
                                                    name.lower())) if w]
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
    """How to read ``images`` and ``masks`` as the folders layout without renaming them."""
    return (f"mkdir DATA && ln -s {shlex.quote(os.path.abspath(images))} DATA/images && "
            f"ln -s {shlex.quote(os.path.abspath(masks))} DATA/masks")


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
            _warn_frames_as_subjects(root, [s.name for s in samples if s.subject == s.name])
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


#: A frame name's stem without its trailing frame number: 'patientB_002' -> 'patientB'.
_TRAILING_NUMBER = re.compile(r"[\W_]*\d+$")
#: ... or without a trailing tag of letters (a side, a view): 'bus_0001-l' -> 'bus_0001'.
_TRAILING_TAG = re.compile(r"[-_ ][A-Za-z]{1,5}$")
#: Each rule above, what it strips, and a --subject-pattern that takes the rest as the subject.
#: (The number or tag is optional in it: a frame without one is its own subject, not missed.)
_SHARED_NAME_RULES = ((_TRAILING_NUMBER, "number", "^(.+?)(?:[_-]?\\d+)?$"),
                      (_TRAILING_TAG, "tag (a side or view letter?)",
                       "^(.+?)(?:[-_ ][A-Za-z]{1,5})?$"))


def _shared_names(own: list[str], rule: re.Pattern[str]) -> list[tuple[int, str]]:
    """The names in ``own`` that ``rule`` strips to one shared prefix: (count, prefix), the
    largest group first."""
    groups: dict[str, int] = {}
    for name in own:
        prefix = rule.sub("", name)
        if prefix and prefix != name:
            groups[prefix] = groups.get(prefix, 0) + 1
    return sorted(((n, k) for k, n in groups.items() if n > 1), key=lambda g: (-g[0], g[1]))


def _warn_frames_as_subjects(root: Path, own: list[str]) -> None:
    """Warn where frames that are their own subject (no leading subject number) share a name
    but for a trailing number (patientB_001, patientB_002) or tag (BUS-BRA's bus_0001-l,
    bus_0001-r): likely one patient's frames, which a subject-grouped split would then put on
    both sides. The rule that groups more names is said."""
    found = [(_shared_names(own, rule), what, pattern) for rule, what, pattern in
             _SHARED_NAME_RULES]
    shared, what, pattern = max(found, key=lambda f: sum(n for n, _ in f[0]))
    if shared:
        n, prefix = shared[0]
        log.warning("%s: %d frames have no leading subject number (SUBJECT_FRAME), so each is "
                    "its own subject, but %d names differ only in a trailing %s (e.g. %d "
                    "named %r...): if those are one patient's frames, the split can put them "
                    "on both sides; --subject-pattern REGEX takes the subject from the name "
                    "(e.g. '%s')", root, len(own), sum(k for k, _ in shared), what, n, prefix,
                    pattern)


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
            _warn_frames_as_subjects(root, [s.name for s in samples if s.subject == s.name])
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


class Hc18Reader(Reader):
    """HC18 fetal heads: ``NNN_HC.png`` / ``NNN_2HC.png`` + ``..._Annotation.png``, a one-pixel
    ellipse outline that is filled into a solid mask. Subject: the exam NNN. Pixel size (mm) and
    reference head circumference from ``*pixel_size*.csv`` beside the images or one level up.
    The unannotated ``test_set`` (images and ``test_set_pixel_size.csv`` only) is recognised too,
    so ``predict``/``measure`` on it get the pixel sizes."""

    name = "hc18"
    description = "training_set/NNN_HC.png + NNN_HC_Annotation.png (outline), pixel-size CSV"

    @classmethod
    def detect(cls, root: Path) -> bool:
        for d in (root, root / "training_set", root / "test_set"):
            if not d.is_dir():
                continue
            if any(d.glob("*HC_Annotation.png")):
                return True
            if any(d.glob("*HC.png")) and (any(d.glob("*pixel_size*.csv"))
                                           or any(_tables_beside(d))):
                return True
        return False

    def scan(self, root: Path) -> tuple[list[Sample], list[DataError]]:
        folders = [d for d in (root / "training_set", root / "test_set") if d.is_dir()] or [root]
        samples: list[Sample] = []
        problems: list[DataError] = []
        for folder in folders:
            meta = self._read_csvs(folder, problems)
            images, masks = _group(list_images(folder), "_Annotation")
            _warn_unmatched_table(meta, [_nfc(paths[0].name) for paths in images.values()],
                                  folder)
            pairs, found = _pair(images, masks, labelled=bool(masks), folder=folder)
            problems += found
            samples += [Sample(name, image, mask, self.leading_subject(name),
                               dict(meta.get(_nfc(image.name), {})), mask_kind="outline")
                        for name, image, mask in pairs]
        return samples, problems

    @classmethod
    def folder_table(cls, folder: Path) -> dict[str, dict[str, float]]:
        """Pixel size and reference head circumference by image name, where ``folder`` is an
        HC18 set (for its files named on their own: ``measure MODEL
        training_set/000_HC.png``); {} elsewhere. Look a name up with :func:`table_key`."""
        return cls._read_csvs(folder, []) if cls.detect(folder) else {}

    @staticmethod
    def _read_csvs(folder: Path, problems: list[DataError]) -> dict[str, dict[str, float]]:
        """Pixel size and reference head circumference per image name. A value that is no
        positive, finite number is a problem naming its row (a 0, negative or nan pixel size
        would turn every mm figure of that frame into nonsense)."""
        meta: dict[str, dict[str, float]] = {}
        # (not macOS's ._NAME copy of a table: hidden files are no tables)
        for csv_path in [p for p in sorted(folder.glob("*pixel_size*.csv"))
                         + _tables_beside(folder) if not p.name.startswith(".")]:
            try:
                with open(csv_path, newline="", encoding="utf-8-sig") as f:   # Excel's BOM
                    reader = csv.DictReader(f)
                    names = [n for n in reader.fieldnames or []
                             if (n or "").strip().lower() == "filename"]
                    if not names:
                        problems.append(DataError("pixel-size table without a 'filename' column",
                                                  csv_path))
                        continue
                    for row in reader:
                        entry: dict[str, float] = {}
                        for key, value in row.items():
                            k = (key or "").lower()
                            field = ("pixel_size_mm" if "pixel size" in k
                                     else "hc_mm" if "circumference" in k else None)
                            if field is None:
                                continue
                            number = _positive_number(value)
                            if number is None:
                                problems.append(DataError(
                                    f"line {reader.line_num}: {key.strip()} must be a positive "
                                    f"number, got {value!r}", csv_path))
                            else:
                                entry[field] = number
                        meta[_nfc((row.get(names[0]) or "").strip())] = entry
            except (OSError, ValueError, KeyError) as e:
                problems.append(DataError(f"cannot read pixel-size table ({e})", csv_path))
        return meta


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


def _positive_number(value: object) -> float | None:
    """``value`` as a positive, finite float, or None where it is not one."""
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) and number > 0 else None


def _warn_unmatched_table(meta: dict[str, dict[str, float]], names: list[str],
                          folder: Path) -> None:
    """Say when a pixel-size table was found but leaves images without a row: they get no mm
    figures (no pixel size) and no reference head circumference."""
    if not meta or not names:
        return
    missing = [n for n in names if n not in meta]
    if missing:
        log.warning("%s: %d of %d images have no row in the pixel-size table (first: %s): no "
                    "pixel size or reference head circumference from it (for measure and "
                    "evaluate, --pixel-size gives one)", folder, len(missing), len(names),
                    missing[0])


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
    beside ``c0.png``, :data:`OTHER_MASK_SUFFIXES`): masks read as frames of their own."""
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
    """Warn where a folder below ``root`` named as masks (:func:`folder_role`: ``scan-labels/``,
    ``GT/``) holds files named as the images of a folder beside it, at least half of its files,
    directly or one subfolder down: the masks, read as frames of their own (two folders of
    frames named alike, two sites', are no such case: their names say no masks)."""
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
