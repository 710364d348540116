"""What a dataset's file names say, for every layout: which mask pairs with which image
(``NAME_mask``, the suffix in any letter case, names in Unicode's composed form), the one line
for masks named another way (another tool's suffix, a leading word, a second mask, a loop's
frames), the name predict gives a loop's frame, and where frames named alike look like one
patient's, or a leading subject number like a date."""
from __future__ import annotations

import datetime
import logging
import re
import unicodedata
from collections import Counter, defaultdict
from pathlib import Path
from typing import Collection

from ..errors import DataError
from .dicom import dicom_patient_id, is_dicom
from .files import image_stem, natural_key
from .images import frame_count
from .masks import read_mask

#: These warnings keep the name of the logger they were said on before they moved here
#: (:mod:`ultraseg.io.readers`'s), so that a filter or level set on it still reaches them.
log = logging.getLogger("ultraseg.io.readers")


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


def _case_problem(near: dict[str, str], masks: dict[str, list[Path]],
                  images: dict[str, list[Path]]) -> Unpaired:
    """The one line for masks named as an image without a mask but in another letter case
    (:func:`_case_near_matches`: mask name -> image name), as :func:`_misnamed_problem` says
    a common suffix."""
    first = min(near, key=natural_key)
    mask, image = masks[first][0], images[near[first]][0]
    stem, image_stem_ = first.rpartition("/")[2], near[first].rpartition("/")[2]
    renamed = (image_stem_ + _nfc(mask.name)[len(stem):] if _nfc(mask.name).startswith(stem)
               else image.stem + mask.suffix)      # (NAME_mask.png: its suffix kept)
    return Unpaired(f"{len(near)} of the {len(masks)} masks are named as an image without a "
                    f"mask but in another letter case (first: {mask.name} for {image.name}), "
                    f"which pairs with no image: names pair in their exact case; rename them "
                    f"as their images (e.g. {mask.name} -> {renamed})",
                    mask.parent)


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
    if len(near) > 1:   # a systematic case (PatientA_001 for patientA_001): one line
        problems.append(_case_problem(near, masks, images))
        orphans -= set(near)
        told |= set(near.values())
        near = {}
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


def warn_subject_names(root: Path, named: list[tuple[str, str]]) -> None:
    """The warnings about subjects taken from file names (no --subject-pattern), given each
    frame's (name, subject): frames that are their own subject but look like one patient's
    (:func:`_warn_frames_as_subjects`), and leading subject numbers that look like dates or
    precede another identifier (:func:`_warn_leading_subjects`)."""
    _warn_frames_as_subjects(root, [name for name, subject in named if subject == name])
    _warn_leading_subjects(root, [(name, subject) for name, subject in named if subject != name])


def _is_date(digits: str) -> bool:
    """Whether a leading subject number reads as a date, YYYYMMDD in 1900-2099 (a scan's or an
    export's, likely: no patient). Six digits (YYMMDD) are not taken: too many patient numbers
    read as one."""
    if len(digits) != 8 or not digits.isascii() or digits[:2] not in ("19", "20"):
        return False
    try:
        datetime.date(int(digits[:4]), int(digits[4:6]), int(digits[6:]))
    except ValueError:
        return False
    return True


def _repeated_ids(numbered: list[tuple[str, str]], dates: bool
                  ) -> tuple[list[tuple[str, set[str]]], str]:
    """What follows each name's leading subject number, its trailing frame number (or tag)
    stripped (:data:`_SHARED_NAME_RULES`), where the same one follows several subjects: an
    identifier that holds a digit (a letter too, unless the subjects are dates: ``3_1_2``'s
    '1' is likely a sequence), likely the patient. Those under more than half of 3 or more
    subjects, dates or not, are taken for views or levels where they are fewer than the
    subjects (CAMUS's ``1_2CH_ED``, ``1_4CH_ES``: 2 under every patient's number), no
    patients: left out; as many as the subjects or more are patients seen on each (3 visits'
    numbers, ``1_pt1_1``... ``3_pt5_1``: 5 under each), kept. (identifier, its subjects) of
    the rule that finds more names, the most subjects first, and a --subject-pattern taking
    the identifier."""
    subjects = len({subject for _, subject in numbered})
    found = []
    for rule, _, pattern in _SHARED_NAME_RULES:
        under: dict[str, set[str]] = defaultdict(set)
        for name, subject in numbered:
            rest = name[len(subject) + 1:]
            ident = rule.sub("", rest)
            if ident and ident != rest and any(c.isdigit() for c in ident) \
                    and (dates or any(c.isalpha() for c in ident)):
                under[ident].add(subject)
        wide = [k for k, v in under.items() if subjects >= 3 and len(v) > subjects / 2]
        views = set(wide) if len(wide) < subjects else set()    # few, under most: views
        shared = sorted(((k, v) for k, v in under.items() if len(v) > 1 and k not in views),
                        key=lambda kv: (-len(kv[1]), natural_key(kv[0])))
        found.append((shared, "^\\d+_" + pattern[1:]))
    return max(found, key=lambda f: sum(len(v) for _, v in f[0]))


def _warn_leading_subjects(root: Path, numbered: list[tuple[str, str]]) -> None:
    """Warn where the frames' subjects, their names' leading numbers (SUBJECT_FRAME), all read
    as dates (20240105_patient1_01: a clinic's export, DATE_PATIENT_FRAME) or precede an
    identifier found under several of them: the split would group a date's patients as one
    subject and put a patient's frames on both sides. The subjects stay as they are (the
    splits of sets named SUBJECT_FRAME must not move); a --subject-pattern is suggested."""
    if not numbered:
        return
    subjects = {subject for _, subject in numbered}
    dates = all(_is_date(s) for s in subjects)
    shared, pattern = _repeated_ids(numbered, dates)
    if not dates and not shared:
        return
    first = min(subjects, key=natural_key)
    said = ("" if not dates else f"the subject found, {first!r}, reads as a date (YYYYMMDD)"
            if len(subjects) == 1 else f"the {len(subjects)} subjects found read as dates "
            f"(YYYYMMDD, the first {first!r})")
    if shared:
        ident, under = shared[0]
        said += (" and " if said else "") + (
            f"{len(shared)} identifier{'s' * (len(shared) != 1)} after it follow several of "
            f"them (e.g. {ident!r} under {len(under)}: "
            f"{', '.join(sorted(under, key=natural_key)[:3])})")
        advice = ("if those identifiers are the patients, the split puts each one's frames on "
                  "both sides; --subject-pattern REGEX takes the subject from the name (e.g. "
                  f"'{pattern}')")
    else:
        advice = ("if those are scan dates, not patients, the split takes each date's "
                  "patients for one and puts a patient scanned on two dates on both sides: "
                  "put each patient's in images/PATIENT/ (the README's layout table), name "
                  "the files N_FRAME, N the patient's number, or use --subject-pattern")
    log.warning("%s: each frame's subject is its name's leading number (SUBJECT_FRAME), but "
                "%s: %s", root, said, advice)


def warn_patient_ids(root: Path, frames: list[tuple[str, str, Path]]) -> None:
    """Warn where DICOM frames (``frames``: each labelled frame's name, subject and image file)
    whose headers name two or more patients (PatientID) put one patient's frames in several
    subjects: the split can put them on both sides (30 files named as 30 subjects, of 3
    PatientIDs). One PatientID for all (an anonymised export) says nothing; nor does a subject
    holding several (coarser, no leak). Files are named, never the PatientID (a patient's
    identifier, kept off the logs and a run's train.log). ultraseg takes no subject from the
    header: the warning says how to lay the files out by patient."""
    subjects: dict[str, set[str]] = defaultdict(set)       # PatientID -> its subjects
    files: dict[str, list[str]] = defaultdict(list)        # PatientID -> its frames' names
    for name, subject, path in frames:
        pid = dicom_patient_id(path) if is_dicom(path) else None
        if pid is not None:
            subjects[pid].add(subject)
            files[pid].append(name)
    split = [pid for pid, held in subjects.items() if len(held) > 1]
    if len(subjects) < 2 or not split:
        return
    pid = max(split, key=lambda k: len(subjects[k]))
    named = sorted(files[pid], key=natural_key)
    log.warning("%s: the DICOM headers of %d frames name %d patients (PatientID), but the frames' "
                "names give %d subjects: the frames of %d patient%s fall in several subjects (e.g. "
                "one patient's %d frames in %d subjects: %s%s), which the split can put on "
                "both sides; ultraseg takes no subject from the header: put each patient's "
                "files in images/PATIENT/ and their masks in masks/PATIENT/ (the README's "
                "per-patient layout), or name them N_FRAME, N the patient's number", root,
                sum(len(v) for v in files.values()), len(subjects),
                len(set().union(*subjects.values())), len(split), "s" * (len(split) != 1),
                len(named), len(subjects[pid]), ", ".join(named[:3]),
                ", ..." if len(named) > 3 else "")
