"""``ultraseg inspect``: decode every sample of a dataset, validate it and summarise it."""
from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from .data import MaskTally, constant_note, inverted_note, union_note
from .duplicates import (NEAR_CORRELATION, THUMB, digest, exact_pairs, first, ids,
                         near_blocks, thumbnail, unit_thumbnail)
from .errors import DataError
from .io import (SUBJECT_RULES, BusiReader, ImagesReader, frame_loop, said_once, scan_dataset,
                 select_label, split_frames, subject_rule)
from .io.files import natural_key
from .io.grey import colour_note, counting_colour
from .preprocess import outline_note

log = logging.getLogger(__name__)

#: Pairs (and constant frames) named in the report; the counts cover all of them.
LISTED = 20
#: Subjects the report names, the most frames first, as examples of how they were found.
SUBJECT_EXAMPLES = 3


@dataclass
class _Frames:
    """What the duplicate checks keep of each decoded frame: name, subject, a hash of the
    pixels, a normalised thumbnail and the mask's foreground (hash and thumbnail)."""

    names: list[str] = field(default_factory=list)
    subjects: list[str] = field(default_factory=list)
    pixels: list[bytes] = field(default_factory=list)
    thumbs: list[np.ndarray] = field(default_factory=list)
    masks: list[tuple[bytes, np.ndarray] | None] = field(default_factory=list)
    constant: list[str] = field(default_factory=list)

    def add(self, name: str, subject: str, image: np.ndarray, fg: np.ndarray | None) -> None:
        self.names.append(name)
        self.subjects.append(subject)
        self.pixels.append(digest(image))
        if image.min() == image.max():
            self.constant.append(name)
        self.thumbs.append(unit_thumbnail(image))
        self.masks.append(None if fg is None else self.of(fg))

    @staticmethod
    def of(fg: np.ndarray) -> tuple[bytes, np.ndarray]:
        """What is kept of a foreground: its hash and thumbnail."""
        return digest(fg), thumbnail(fg) > 127


@dataclass
class _MaskFacts:
    """What the report says of one labelled frame's mask, read with one white."""

    held: list[int]
    fg: np.ndarray
    speckled: list[int]
    tally: MaskTally

    @classmethod
    def of(cls, mask: np.ndarray, label: int | None, like: _MaskFacts | None = None
           ) -> _MaskFacts:
        """The facts of ``mask``; ``like``: those of the same frame under the other white,
        whose tally stands where the foreground is the same (a mask is looked at once)."""
        fg = select_label(mask, label)
        tally = like.tally if like is not None and np.array_equal(fg, like.fg) else \
            MaskTally.of(fg)
        held = [int(v) for v in np.unique(mask) if v]
        return cls(held, fg, specks(mask, label, held), tally)


@dataclass
class _MaskStats:
    """What the report says of the labelled frames' masks, their black-and-white masks' white
    read as one label: :func:`inspect_dataset` keeps one for each and reports the one the set
    has (:func:`ultraseg.io.white_label`), each mask decoded once."""

    labels: Counter[int] = field(default_factory=Counter)
    fractions: list[float] = field(default_factory=list)
    with_specks: list[list[Any]] = field(default_factory=list)   # [name, speck sizes]
    tally: MaskTally = field(default_factory=MaskTally)     # masks: empty, inverted, outlines

    def add(self, name: str, facts: _MaskFacts) -> None:
        self.labels.update(facts.held)
        if facts.speckled:
            self.with_specks.append([name, facts.speckled[:SPECKS_LISTED]])
        self.fractions.append(float(facts.fg.mean()))
        self.tally += facts.tally


class _MasksDiffer:
    """How many pairs of labelled frames (i, j) have foregrounds that disagree: by their bytes
    for identical frames, for near ones (sizes may differ) by a Dice under 0.9 of their
    thumbnails. Unlabelled frames disagree with nothing. Called once a batch of pairs."""

    def __init__(self, frames: _Frames) -> None:
        masks = frames.masks
        self.labelled = np.array([m is not None for m in masks], dtype=bool)
        self.ids = ids([m[0] if m is not None else b"" for m in masks])
        self.thumbs = np.stack([m[1] if m is not None else np.zeros(THUMB * THUMB, bool)
                                for m in masks]) if self.labelled.any() else None

    def __call__(self, i: np.ndarray, j: np.ndarray, exact: bool) -> int:
        both = self.labelled[i] & self.labelled[j] if len(i) else np.zeros(0, bool)
        i, j = i[both], j[both]
        if not len(i) or self.thumbs is None:
            return 0
        if exact:
            return int(np.count_nonzero(self.ids[i] != self.ids[j]))
        differ = 0
        for start in range(0, len(i), 8192):           # 8192 pairs x 1 KiB at a time
            a, b = self.thumbs[i[start:start + 8192]], self.thumbs[j[start:start + 8192]]
            inter = np.count_nonzero(a & b, axis=1)
            size = np.count_nonzero(a, axis=1) + np.count_nonzero(b, axis=1)
            differ += int(np.count_nonzero((size > 0) & (2 * inter < 0.9 * size)))
        return differ


def duplicate_summary(frames: _Frames, threshold: float = NEAR_CORRELATION) -> dict[str, Any]:
    """The report's duplicate keys: the first LISTED pairs by name of each kind (those across
    subjects first), and counts of all pairs, of those across subjects and of those whose masks
    differ; the constant frames (first LISTED, and their count). The near pairs are counted
    as the search hands them over, a batch at a time, and the first LISTED kept: a cine
    loop's frames are n (n - 1) / 2 pairs."""
    out: dict[str, Any] = {}
    subjects = ids([s.encode("utf-8", "surrogatepass") for s in frames.subjects])
    masks_differ = _MasksDiffer(frames)
    n = len(frames.names)
    for kind, batches in (("exact", [exact_pairs(frames.pixels)]),
                          ("near", near_blocks(frames.thumbs, frames.pixels, threshold))):
        count = across_count = differ = 0
        # the first LISTED pairs so far, by the key they are listed by: pairs across
        # subjects first (they are the ones that leak across a split), then by index
        listed = np.zeros(0, np.int64)
        for i, j in batches:
            across = subjects[i] != subjects[j] if len(i) else np.zeros(0, bool)
            count += len(i)
            across_count += int(np.count_nonzero(across))
            differ += masks_differ(i, j, kind == "exact")
            listed = first(np.concatenate(
                [listed, np.ravel_multi_index((~across, i, j), (2, n, n))]), LISTED)
        out[f"duplicates_{kind}"] = [[frames.names[a], frames.names[b]] for a, b in
                                     zip(*np.unravel_index(listed, (2, n, n))[1:])]
        out[f"duplicates_{kind}_count"] = count
        out[f"duplicates_{kind}_across_subjects"] = across_count
        out[f"duplicates_{kind}_masks_differ"] = differ
    out["constant_frames"] = frames.constant[:LISTED]
    out["constant_frames_count"] = len(frames.constant)
    return out


def _empty_duplicates() -> dict[str, Any]:
    return duplicate_summary(_Frames())


def data_warnings(report: dict[str, Any], shown: int = 3) -> list[str]:
    """One warning line per kind of duplicate or constant frame found, for masks with specks,
    with the first few names, and for masks that mostly look inverted: data a user may keep
    knowingly, so warnings, not problems."""
    lines = []
    for kind, what in (("exact", "pixel-identical"),
                       ("near", f"near-duplicate (thumbnail correlation >= {NEAR_CORRELATION})")):
        n = report[f"duplicates_{kind}_count"]
        if n:
            named = ", ".join(f"{a} = {b}" if kind == "exact" else f"{a} ~ {b}"
                              for a, b in report[f"duplicates_{kind}"][:shown])
            across = report[f"duplicates_{kind}_across_subjects"]
            differ = report[f"duplicates_{kind}_masks_differ"]
            lines.append(
                f"{n} {what} frame pair{'s' * (n != 1)} ({across} across subjects, {differ} "
                f"with masks that differ): {named}{', ...' if n > shown else ''}"
                + ("; frames of one scan in two subjects leak across a subject-grouped "
                   "train/val split: remove them or merge their subjects" if across else ""))
    note = constant_note(report["constant_frames"], report["constant_frames_count"], shown)
    if note:
        lines.append(note)
    note = inverted_note(report["masks_inverted_count"], report["pairs"])
    if note:
        lines.append(note)
    n = report["masks_with_specks_count"]
    if n:
        named = ", ".join(f"{name} ({', '.join(map(str, sizes))} px)"
                          for name, sizes in report["masks_with_specks"][:shown])
        lines.append(f"{n} mask{'s' * (n != 1)} with specks, separate regions of at most "
                     f"{SPECK_MAX_PX} px under {SPECK_SHARE:.0%} of the largest of their "
                     f"label: {named}"
                     f"{', ...' if n > shown else ''}; slips of an annotation tool? Training "
                     "learns them as the structure: clean them from the masks, or keep them "
                     "knowingly")
    note = _outline_note(report)
    if note:
        lines.append(note)
    note = colour_note(report.get("colour_frames_count") or 0, report.get("colour_frames") or [],
                       shown)
    if note:
        lines.append(note)
    return lines


def _outline_note(report: dict[str, Any]) -> str | None:
    """:func:`~ultraseg.preprocess.outline_note` of a report's masks (a report written before
    it counted outlines: None)."""
    return outline_note(report.get("outline_masks_count") or 0,
                        report["pairs"] - report["empty_masks"])


#: A mask's region under this share of the largest region of its label (8-connected), and of
#: at most :data:`SPECK_MAX_PX` pixels, is a speck: BUSI's are 1-3 px beside lesions of
#: thousands; a small second lesion drawn on purpose is larger.
SPECK_SHARE = 0.01
SPECK_MAX_PX = 16
#: Speck sizes listed per mask (the count covers them all).
SPECKS_LISTED = 5


def specks(mask: np.ndarray, label: int | None = None,
           held: list[int] | None = None) -> list[int]:
    """Sizes (px) of a mask's specks, smallest first (none: []): for each label it holds
    (``label`` alone where given), its separate 8-connected regions under
    :data:`SPECK_SHARE` of that label's largest and of at most :data:`SPECK_MAX_PX` pixels. A
    region of another label beside it is no speck of it. ``held``: the labels the mask holds
    (0 aside), where the caller has found them already."""
    found: list[int] = []
    if label is not None:
        values = [label]
    else:
        values = held if held is not None else [int(v) for v in np.unique(mask) if v]
    for value in values:
        regions, n = ndimage.label(mask == value, structure=np.ones((3, 3), bool))
        if n < 2:
            continue
        sizes = np.bincount(regions.ravel())[1:]
        small = sizes[(sizes < SPECK_SHARE * sizes.max()) & (sizes <= SPECK_MAX_PX)]
        found += [int(v) for v in small]
    return sorted(found)


@said_once()
@frame_loop()       # a loop's frames read one after another from one open of its file
def inspect_dataset(path: str | Path, layout: str = "auto", subject_pattern: str | None = None,
                    label: int | None = None, fill_outlines: bool = False
                    ) -> tuple[dict[str, Any], list[DataError]]:
    """Summary of a dataset and every problem found in it (structural and per file).
    ``fill_outlines``: the masks are closed contours, filled as training fills them.

    Sizes are ``[width, height]``; min, median and max are taken per dimension (the widest
    frame and the tallest may be two: no frame need be ``image_size_max``).
    ``foreground_fraction_mean`` is the mean over labelled frames of the mask's share of the frame.
    An unlabelled cine loop counts its frames, as ``predict`` takes them
    (:func:`ultraseg.io.split_frames`); a labelled one is a problem, as in training.
    """
    ds, problems = scan_dataset(path, layout, subject_pattern, fill_outlines)
    widths, heights = [], []
    classes: Counter[str] = Counter()
    pairs = unlabelled = 0
    subjects: Counter[str] = Counter()          # frames of each subject (the pairs')
    unlabelled_subjects: Counter[str] = Counter()
    # the rule that found each file's subject (a loop's frames share it), and their frames:
    # the pairs', the unlabelled frames'
    rules = {s.image_path: subject_rule(s, ds.subject_pattern) for s in ds.samples}
    by_rule: tuple[Counter[str], Counter[str]] = (Counter(), Counter())
    frames = _Frames()
    # a black-and-white mask's white: label 1, or 255 in a set of label masks, known once
    # every mask is read: what the report says under each, and the foregrounds that differ
    stats = {1: _MaskStats(), 255: _MaskStats()}
    as_255: dict[int, tuple[bytes, np.ndarray]] = {}
    label_masks = False
    with counting_colour() as colour:     # one warning for the frames in colour
        for s in (frame for sample in ds.samples for frame in split_frames(sample)):
            try:
                image, decoded = s.load_decoded()
            except DataError as e:
                problems.append(e)
                continue
            widths.append(image.shape[1])
            heights.append(image.shape[0])
            if decoded is None:
                frames.add(s.name, s.subject, image, None)
                unlabelled += 1
                unlabelled_subjects[s.subject] += 1
                by_rule[1][rules[s.image_path]] += 1
                continue
            pairs += 1
            subjects[s.subject] += 1
            by_rule[0][rules[s.image_path]] += 1
            if "class" in s.meta:
                classes[s.meta["class"]] += 1
            label_masks = label_masks or decoded.label_mask
            one = _MaskFacts.of(decoded.mask(1), label)
            other = _MaskFacts.of(decoded.mask(255), label, one) if decoded.has_white else one
            stats[1].add(s.name, one)
            stats[255].add(s.name, other)
            frames.add(s.name, s.subject, image, one.fg)
            if other is not one and not np.array_equal(other.fg, one.fg):
                as_255[len(frames.masks) - 1] = _Frames.of(other.fg)
    if label_masks:
        for i, kept in as_255.items():
            frames.masks[i] = kept
    chosen = stats[255 if label_masks else 1]
    labels, fractions, with_specks, tally = (chosen.labels, chosen.fractions,
                                             chosen.with_specks, chosen.tally)
    if label is not None and pairs and label not in labels:
        problems.append(DataError(f"label {label} occurs in no mask; labels present: "
                                  f"{sorted(labels) or 'none'}", ds.root))

    def dims(fn: Any) -> list[int] | None:
        return [int(fn(widths)), int(fn(heights))] if widths else None

    report: dict[str, Any] = {
        "path": str(ds.root),
        "layout": ds.layout,
        "pairs": pairs,
        "unlabelled": unlabelled,
        "subjects": len(subjects) if pairs else len(unlabelled_subjects),
        **_subject_facts(*((subjects, by_rule[0]) if pairs else
                           (unlabelled_subjects, by_rule[1]))),
        "empty_masks": tally.masks - tally.nonempty,
        "foreground_fraction_mean": float(np.mean(fractions)) if fractions else None,
        "image_size_min": dims(np.min),
        "image_size_median": dims(np.median),
        "image_size_max": dims(np.max),
        "labels": sorted(labels),
        # what training does with several labels and no --label (None: no question)
        "labels_note": union_note(sorted(labels), label),
        "classes": dict(sorted(classes.items())),
        **duplicate_summary(frames),
        "masks_with_specks": with_specks[:LISTED],
        "masks_with_specks_count": len(with_specks),
        "masks_inverted_count": tally.inverted,
        "outline_masks_count": tally.outlined,
        "colour_frames": colour.files[:LISTED],
        "colour_frames_count": colour.n,
        "problems": len(problems),
    }
    for line in data_warnings(report):
        log.warning("%s: %s", ds.root, line)
    return report, problems


def _subject_facts(frames: Counter[str], by_rule: Counter[str]) -> dict[str, Any]:
    """How the subjects counted (``frames``: the frames of each; ``by_rule``: the frames each
    rule of :data:`~ultraseg.io.SUBJECT_RULES` found) were found: ``subject_rule`` (the rule,
    ``mixed`` where frames were found by several, None where there are none),
    ``subject_rule_frames`` (``by_rule``) and ``subject_examples``, the subjects of most
    frames (``[{"subject", "frames"}]``)."""
    rule = None if not by_rule else next(iter(by_rule)) if len(by_rule) == 1 else "mixed"
    largest = sorted(frames.items(), key=lambda kv: (-kv[1], natural_key(kv[0])))
    return {"subject_rule": rule,
            "subject_rule_frames": {k: by_rule[k] for k in SUBJECT_RULES if by_rule[k]},
            "subject_examples": [{"subject": k, "frames": n}
                                 for k, n in largest[:SUBJECT_EXAMPLES]]}


def _subjects_line(report: dict[str, Any]) -> str:
    """The report's subjects line: their count, how they were found, the largest of them."""
    rule = report.get("subject_rule")
    if rule is None:
        return f"subjects    {report['subjects']}"
    if rule == "own" and report.get("layout") == BusiReader.name:   # (reads no names')
        how = ("each frame its own, BUSI names no patients: one patient's frames want "
               "--subject-pattern REGEX")
        return f"subjects    {report['subjects']} ({how})"
    if rule == "own" and report.get("layout") == ImagesReader.name:    # (nothing to split)
        return f"subjects    {report['subjects']} (each frame its own: unlabelled images, " \
               "no split is drawn)"
    if rule == "own":
        how = ("each frame its own, no leading SUBJECT_ integer or subject folder: one "
               "patient's or one video's frames want SUBJECT_FRAME names, images/SUBJECT/ "
               "folders or --subject-pattern REGEX")
        return f"subjects    {report['subjects']} ({how})"
    if rule == "mixed":
        how = "mixed, " + ", ".join(f"{SUBJECT_RULES[k]} {_frames(n)}" for k, n in
                                    report["subject_rule_frames"].items())
    else:
        how = SUBJECT_RULES[rule]
    examples = ", ".join(f"{e['subject']!r} {_frames(e['frames'])}"
                         for e in report["subject_examples"])
    return f"subjects    {report['subjects']} ({how}: {examples})"


def _frames(n: int) -> str:
    return f"{n} frame{'s' * (n != 1)}"


def failed_report(path: str | Path, problem_lines: list[str]) -> dict[str, Any]:
    """The report of a folder that could not be read at all (missing, empty, no layout found):
    every key :func:`inspect_dataset` gives, nothing found, ``layout`` None, and the lines that
    say why, so a script reads one shape either way."""
    return {"path": str(path), "layout": None, "pairs": 0, "unlabelled": 0, "subjects": 0,
            "subject_rule": None, "subject_rule_frames": {}, "subject_examples": [],
            "empty_masks": 0, "foreground_fraction_mean": None, "image_size_min": None,
            "image_size_median": None, "image_size_max": None, "labels": [], "labels_note": None,
            "classes": {}, **_empty_duplicates(), "masks_with_specks": [],
            "masks_with_specks_count": 0, "masks_inverted_count": 0,
            "outline_masks_count": 0, "colour_frames": [], "colour_frames_count": 0,
            "problems": len(problem_lines), "problem_lines": problem_lines}


def format_report(report: dict[str, Any]) -> str:
    """Human-readable lines for the CLI."""
    fg = report["foreground_fraction_mean"]
    lines = [
        f"dataset     {report['path']}  (layout: {report['layout']})",
        f"pairs       {report['pairs']}   unlabelled images: {report['unlabelled']}",
        _subjects_line(report),
        f"empty masks {report['empty_masks']}",
        f"foreground  {'n/a' if fg is None else f'{100 * fg:.2f} % of the frame on average'}",
    ]
    if report["image_size_min"]:    # (per axis: widths and heights apart, no frame's size)
        lo, mid, hi = (report[f"image_size_{k}"] for k in ("min", "median", "max"))
        lines.append("image size  " + (
            f"{lo[0]}x{lo[1]} (width x height), every frame" if lo == hi else ", ".join(
                f"{axis} {lo[i]}..{hi[i]} px (median {mid[i]})"
                for i, axis in enumerate(("width", "height")))))
    if report["labels"]:
        note = report.get("labels_note")
        lines.append(f"labels      {report['labels']}" + (f"   ({note})" if note else ""))
    if report["classes"]:
        lines.append("classes     " + ", ".join(f"{k}: {v}" for k, v in report["classes"].items()))
    if report.get("duplicates_exact_count") is not None:
        lines.append(f"duplicates  {report['duplicates_exact_count']} identical pairs, "
                     f"{report['duplicates_near_count']} near pairs "
                     f"({report['duplicates_exact_across_subjects']} and "
                     f"{report['duplicates_near_across_subjects']} across subjects)")
    if report.get("constant_frames_count"):
        lines.append(f"constant    {report['constant_frames_count']} frames")
    if report.get("masks_with_specks_count"):
        lines.append(f"specks      {report['masks_with_specks_count']} masks")
    if _outline_note(report):
        lines.append(f"outlines    {report['outline_masks_count']} masks look like closed "
                     "contours (--fill-outlines fills them)")
    if report.get("colour_frames_count"):
        lines.append(f"colour      {report['colour_frames_count']} frames partly colour "
                     "(read as their luma)")
    lines.append(f"problems    {report['problems']}")
    return "\n".join(lines)
